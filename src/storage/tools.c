/* tools.c - offline check, export and import over the backend.h contract (tools.h). */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "xxh.h"

#include "common/errors.h"
#include "common/id.h"
#include "common/log.h"
#include "common/util.h"
#include "tools.h"

#define PIECE (8u << 20) /* import: objects above this go as chunked uploads */
#define COPY_BUF (1u << 20)

/* ---- every ID, in order ---------------------------------------------------------- */

struct idlist {
	uint8_t (*ids)[DNET_ID_SIZE];
	size_t n, cap;
};

static int collect_cb(void *arg, const uint8_t *id, const struct dnet_obj_info *info)
{
	(void)info;
	struct idlist *l = arg;
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 1024;
		void *p = realloc(l->ids, cap * DNET_ID_SIZE);
		if (!p)
			return DNET_ENOMEM;
		l->ids = p;
		l->cap = cap;
	}
	memcpy(l->ids[l->n++], id, DNET_ID_SIZE);
	return 0;
}

static int id_cmp(const void *a, const void *b)
{
	return memcmp(a, b, DNET_ID_SIZE);
}

static int collect(const struct dnet_backend_ops *ops, struct dnet_backend *b, struct idlist *l)
{
	memset(l, 0, sizeof(*l));
	int err = ops->iterate(b, collect_cb, l);
	if (err) {
		free(l->ids);
		l->ids = NULL;
		return err;
	}
	if (l->n)
		qsort(l->ids, l->n, DNET_ID_SIZE, id_cmp);
	return 0;
}

static void res_release(struct dnet_read_res *res)
{
	if (res->fd >= 0)
		close(res->fd);
	free(res->buf);
}

/* ---- check ------------------------------------------------------------------------ */

int dnet_tool_check(const struct dnet_backend_ops *ops, struct dnet_backend *b, FILE *out,
		    struct dnet_tool_result *r)
{
	memset(r, 0, sizeof(*r));
	struct idlist l;
	int err = collect(ops, b, &l);
	if (err)
		return err;
	for (size_t i = 0; i < l.n; i++) {
		struct dnet_read_res res;
		char hex[2 * DNET_ID_SIZE + 1];
		err = ops->read(b, l.ids[i], 0, 0, 0, &res);
		if (err == DNET_ENOENT) {
			r->vanished++;
			continue;
		}
		if (err) {
			dnet_id_to_hex(hex, l.ids[i], DNET_ID_SIZE);
			fprintf(out, "corrupt %s: %s\n", hex, dnet_strerror(err));
			r->bad++;
			continue;
		}
		r->objects++;
		r->bytes += res.info.size;
		res_release(&res);
	}
	free(l.ids);
	return 0;
}

/* ---- export ----------------------------------------------------------------------- */

static void hdr_sum(uint8_t *p, size_t covered)
{
	dnet_put_u64(p + covered, XXH3_64bits(p, covered));
}

static int hdr_ok(const uint8_t *p, size_t covered)
{
	return dnet_get_u64(p + covered) == XXH3_64bits(p, covered);
}

static void canon128(XXH3_state_t *st, uint8_t out[16])
{
	XXH128_canonical_t c;
	XXH128_canonicalFromHash(&c, XXH3_128bits_digest(st));
	memcpy(out, c.digest, 16);
}

/* Copies one object's bytes to fd, hashing them on the way. */
static int export_data(int fd, const struct dnet_read_res *res, uint8_t *buf, XXH3_state_t *st)
{
	if (res->fd < 0) {
		XXH3_128bits_update(st, res->buf, (size_t)res->len);
		return res->len ? dnet_write_full(fd, res->buf, (size_t)res->len) : 0;
	}
	for (uint64_t done = 0; done < res->len;) {
		size_t want = res->len - done < COPY_BUF ? (size_t)(res->len - done) : COPY_BUF;
		int64_t n = dnet_pread_full(res->fd, buf, want, res->file_offset + done);
		if (n < 0)
			return (int)n;
		if ((size_t)n != want)
			return DNET_EIO; /* the file is shorter than the engine said */
		XXH3_128bits_update(st, buf, want);
		int err = dnet_write_full(fd, buf, want);
		if (err)
			return err;
		done += want;
	}
	return 0;
}

int dnet_tool_export(const struct dnet_backend_ops *ops, struct dnet_backend *b, int fd,
		     FILE *log, struct dnet_tool_result *r)
{
	memset(r, 0, sizeof(*r));
	uint8_t h[DNET_EXPORT_HDR];
	memset(h, 0, sizeof(h));
	memcpy(h, DNET_EXPORT_MAGIC, 8);
	dnet_put_u32(h + 8, DNET_EXPORT_VERSION);
	hdr_sum(h, 24);
	int err = dnet_write_full(fd, h, sizeof(h));
	if (err)
		return err;
	struct idlist l;
	if ((err = collect(ops, b, &l)))
		return err;
	uint8_t *buf = malloc(COPY_BUF);
	XXH3_state_t *st = XXH3_createState();
	if (!buf || !st) {
		err = DNET_ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < l.n; i++) {
		struct dnet_read_res res;
		char hex[2 * DNET_ID_SIZE + 1];
		err = ops->read(b, l.ids[i], 0, 0, 0, &res);
		if (err == DNET_ENOENT) {
			r->vanished++;
			continue;
		}
		if (err) {
			dnet_id_to_hex(hex, l.ids[i], DNET_ID_SIZE);
			fprintf(log, "corrupt %s: %s (left out of the export)\n", hex, dnet_strerror(err));
			r->bad++;
			err = 0;
			continue;
		}
		if (res.len != res.info.size || res.info.size > DNET_EXPORT_MAX_SIZE) {
			res_release(&res);
			dnet_id_to_hex(hex, l.ids[i], DNET_ID_SIZE);
			fprintf(log, "%s: engine returned %llu of %llu bytes\n", hex,
				(unsigned long long)res.len, (unsigned long long)res.info.size);
			err = DNET_EIO;
			goto out;
		}
		uint8_t rec[DNET_EXPORT_REC];
		memset(rec, 0, sizeof(rec));
		memcpy(rec, "DXOB", 4);
		memcpy(rec + 8, l.ids[i], DNET_ID_SIZE);
		dnet_put_u64(rec + 72, res.info.timestamp);
		dnet_put_u64(rec + 80, res.info.size);
		memcpy(rec + 88, res.info.csum, 16);
		hdr_sum(rec, 120);
		XXH3_128bits_reset(st);
		err = dnet_write_full(fd, rec, sizeof(rec));
		if (!err)
			err = export_data(fd, &res, buf, st);
		res_release(&res);
		if (err)
			goto out;
		uint8_t sum[16];
		canon128(st, sum);
		if (memcmp(sum, rec + 88, 16) != 0) {
			/* verified by the engine a moment ago: the disk changed under us */
			dnet_id_to_hex(hex, l.ids[i], DNET_ID_SIZE);
			fprintf(log, "%s: data changed while exported; export abandoned\n", hex);
			err = DNET_ECORRUPT;
			goto out;
		}
		r->objects++;
		r->bytes += res.info.size;
	}
	uint8_t end[DNET_EXPORT_REC];
	memset(end, 0, sizeof(end));
	memcpy(end, "DXND", 4);
	dnet_put_u64(end + 8, r->objects);
	dnet_put_u64(end + 16, r->bytes);
	hdr_sum(end, 120);
	err = dnet_write_full(fd, end, sizeof(end));
out:
	XXH3_freeState(st);
	free(buf);
	free(l.ids);
	return err;
}

/* ---- import ----------------------------------------------------------------------- */

/* Reads up to len bytes; returns the count (short only at EOF) or DNET_E*. */
static int64_t read_some(int fd, void *buf, size_t len)
{
	size_t done = 0;
	while (done < len) {
		ssize_t n = read(fd, (char *)buf + done, len - done);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return dnet_from_errno(errno);
		}
		if (n == 0)
			break;
		done += (size_t)n;
	}
	return (int64_t)done;
}

struct wait {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int calls, status;
	struct dnet_obj_info info;
};

static void wait_done(void *arg, int status, const struct dnet_obj_info *info)
{
	struct wait *w = arg;
	pthread_mutex_lock(&w->lock);
	w->calls = 1;
	w->status = status;
	if (info)
		w->info = *info;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

static int write_wait(const struct dnet_backend_ops *ops, struct dnet_backend *b,
		      const struct dnet_write_req *req, struct dnet_obj_info *info)
{
	struct wait w;
	memset(&w, 0, sizeof(w));
	pthread_mutex_init(&w.lock, NULL);
	pthread_cond_init(&w.cond, NULL);
	ops->write(b, req, wait_done, &w);
	pthread_mutex_lock(&w.lock);
	while (!w.calls)
		pthread_cond_wait(&w.cond, &w.lock);
	pthread_mutex_unlock(&w.lock);
	pthread_mutex_destroy(&w.lock);
	pthread_cond_destroy(&w.cond);
	if (info)
		*info = w.info;
	return w.status;
}

static int bad_stream(FILE *log, uint64_t recno, const char *what)
{
	fprintf(log, "import: corrupt stream at object %llu: %s\n", (unsigned long long)recno,
		what);
	return DNET_ECORRUPT;
}

int dnet_tool_import(const struct dnet_backend_ops *ops, struct dnet_backend *b, int fd,
		     int verify_only, FILE *log, struct dnet_tool_result *r)
{
	memset(r, 0, sizeof(*r));
	uint8_t h[DNET_EXPORT_HDR];
	int64_t n = read_some(fd, h, sizeof(h));
	if (n < 0)
		return (int)n;
	if (n != (int64_t)sizeof(h) || memcmp(h, DNET_EXPORT_MAGIC, 8) != 0 || !hdr_ok(h, 24))
		return bad_stream(log, 0, "not an ellipticsd export stream (bad header)");
	if (dnet_get_u32(h + 8) != DNET_EXPORT_VERSION || dnet_get_u32(h + 12) != 0 ||
	    dnet_get_u64(h + 16) != 0)
		return bad_stream(log, 0, "unsupported stream version or flags");

	uint8_t *buf = malloc(PIECE);
	XXH3_state_t *st = XXH3_createState();
	int err = 0;
	if (!buf || !st) {
		err = DNET_ENOMEM;
		goto out;
	}
	static const uint8_t zeros[120];
	for (uint64_t recno = 1;; recno++) {
		uint8_t rec[DNET_EXPORT_REC];
		n = read_some(fd, rec, sizeof(rec));
		if (n < 0) {
			err = (int)n;
			goto out;
		}
		if (n != (int64_t)sizeof(rec) || !hdr_ok(rec, 120)) {
			err = bad_stream(log, recno, n ? "bad record header" : "truncated: no end record");
			goto out;
		}
		if (memcmp(rec, "DXND", 4) == 0) {
			if (memcmp(rec + 4, zeros, 4) || memcmp(rec + 24, zeros, 96)) {
				err = bad_stream(log, recno, "bad end record");
				goto out;
			}
			if (dnet_get_u64(rec + 8) != r->objects || dnet_get_u64(rec + 16) != r->bytes) {
				err = bad_stream(log, recno, "object count or byte count do not match the end record");
				goto out;
			}
			uint8_t extra;
			n = read_some(fd, &extra, 1);
			if (n != 0)
				err = n < 0 ? (int)n : bad_stream(log, recno, "bytes after the end record");
			goto out;
		}
		if (memcmp(rec, "DXOB", 4) != 0 || memcmp(rec + 4, zeros, 4) ||
		    memcmp(rec + 104, zeros, 16)) {
			err = bad_stream(log, recno, "unknown record");
			goto out;
		}
		const uint8_t *id = rec + 8;
		uint64_t ts = dnet_get_u64(rec + 72), size = dnet_get_u64(rec + 80);
		char hex[2 * DNET_ID_SIZE + 1];
		dnet_id_to_hex(hex, id, DNET_ID_SIZE);
		if (size > DNET_EXPORT_MAX_SIZE) {
			err = bad_stream(log, recno, "object size over 2^44");
			goto out;
		}
		if (ts == 0) { /* engines would stamp "now": it could not be carried exactly */
			err = bad_stream(log, recno, "timestamp 0");
			goto out;
		}
		XXH3_128bits_reset(st);
		struct dnet_write_req req;
		memset(&req, 0, sizeof(req));
		req.id = id;
		req.io.timestamp = ts;
		const uint64_t cookie = 0x696d706f7274ull ^ recno; /* "import" */
		struct dnet_obj_info info;
		memset(&info, 0, sizeof(info));
		for (uint64_t off = 0;;) {
			size_t want = size - off < PIECE ? (size_t)(size - off) : PIECE;
			n = read_some(fd, buf, want);
			if (n < 0) {
				err = (int)n;
				goto out;
			}
			if ((size_t)n != want) {
				err = bad_stream(log, recno, "truncated object data");
				goto out;
			}
			XXH3_128bits_update(st, buf, want);
			int last = off + want == size;
			if (last) {
				uint8_t sum[16];
				canon128(st, sum);
				if (memcmp(sum, rec + 88, 16) != 0) {
					/* nothing of it was committed: an unfinished upload is
					 * dropped by the engine */
					fprintf(log, "import: object %s: data does not match its checksum\n",
						hex);
					err = bad_stream(log, recno, "checksum mismatch");
					goto out;
				}
			}
			if (!verify_only) {
				req.data = buf;
				req.io.offset = off;
				req.io.size = want;
				req.io.ioflags = 0;
				if (size > PIECE) {
					req.io.cookie = cookie;
					req.io.total_size = off == 0 ? size : 0;
					req.io.ioflags = off == 0 ? DNET_IO_PREPARE
						       : last	 ? DNET_IO_COMMIT
								 : DNET_IO_PLAIN;
				}
				if ((err = write_wait(ops, b, &req, &info))) {
					fprintf(log, "import: object %s: %s\n", hex, dnet_strerror(err));
					goto out;
				}
			}
			off += want;
			if (last)
				break;
		}
		if (!verify_only &&
		    (info.size != size || info.timestamp != ts || memcmp(info.csum, rec + 88, 16))) {
			fprintf(log, "import: object %s: stored as size %llu timestamp %llu, not as sent\n",
				hex, (unsigned long long)info.size, (unsigned long long)info.timestamp);
			err = DNET_EIO;
			goto out;
		}
		r->objects++;
		r->bytes += size;
	}
out:
	XXH3_freeState(st);
	free(buf);
	return err;
}
