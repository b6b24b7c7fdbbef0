/* fuzz_store.h - what the storage-engine fuzz targets (fuzz_blob.c, fuzz_file.c,
 * fuzz_lmdb.c, fuzz_bdb.c) share: the input container, a scratch data directory in
 * a tmpfs, the engine workout run on whatever the input put on disk, and the
 * standalone driver (replay files, random mutations of the corpus, seed writing).
 *
 * INPUT CONTAINER: entries of {u8 slot, u8 mode, u16 len (LE), [len bytes]}.
 *   mode bit 1 (0x01): no bytes follow; append len*16 zero bytes instead (so a seed
 *                      can hold a 256 KiB chunk in 4 bytes)
 *   mode bit 2 (0x02): start a new item (the first entry always does)
 * An item is (slot, bytes). File engines append each item to file slot % nfiles;
 * the key-value engines store each item as one record (db slot % 3, key, value).
 * Everything is bounded: at most FZ_MAX_ITEMS items of FZ_MAX_TOTAL bytes in all.
 *
 * The workout opens the engine on that directory, then: iterate, lookup and read
 * (verified, unverified, a range) every object found and every known ID, an offset
 * update, a fresh write read back, a delete, stat, close; then reopens and checks
 * that the fresh write and the delete survived. Crashes, leaks and sanitizer reports
 * are findings; so is a fresh write read back wrong or a delete undone. */
#ifndef FUZZ_STORE_H
#define FUZZ_STORE_H

#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/errors.h"
#include "common/log.h"
#include "storage/backend.h"

#define FZ_MAX_ITEMS 64
#define FZ_MAX_TOTAL (2u << 20)
#define FZ_NKNOWN 4

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct fz_item {
	uint8_t slot;
	uint8_t *p;
	size_t len, cap;
};

struct fz_input {
	struct fz_item it[FZ_MAX_ITEMS];
	size_t n, total;
};

static inline int fz_append(struct fz_item *it, const uint8_t *src, size_t len)
{
	if (!len)
		return 0;
	if (it->len + len > it->cap) {
		size_t cap = it->cap ? it->cap : 256;
		while (cap < it->len + len)
			cap *= 2;
		uint8_t *p = realloc(it->p, cap);
		if (!p)
			return -1;
		it->p = p;
		it->cap = cap;
	}
	if (src)
		memcpy(it->p + it->len, src, len);
	else
		memset(it->p + it->len, 0, len);
	it->len += len;
	return 0;
}

static inline void fz_free(struct fz_input *in)
{
	for (size_t i = 0; i < in->n; i++)
		free(in->it[i].p);
	in->n = 0;
}

static inline void fz_parse(const uint8_t *d, size_t size, struct fz_input *in)
{
	memset(in, 0, sizeof(*in));
	size_t off = 0;
	while (off + 4 <= size) {
		uint8_t slot = d[off], mode = d[off + 1];
		size_t len = (size_t)d[off + 2] | (size_t)d[off + 3] << 8;
		off += 4;
		const uint8_t *src = NULL;
		if (mode & 1) {
			len *= 16;
		} else {
			if (len > size - off)
				len = size - off;
			src = d + off;
			off += len;
		}
		if ((mode & 2) || !in->n) {
			if (in->n == FZ_MAX_ITEMS)
				break;
			in->it[in->n++].slot = slot;
		}
		if (in->total + len > FZ_MAX_TOTAL)
			break;
		if (fz_append(&in->it[in->n - 1], src, len))
			break;
		in->total += len;
	}
}

/* The inverse, for seeds: items -> container bytes (zero runs of 64+ bytes packed). */
static inline void fz_put_entry(FILE *f, uint8_t slot, uint8_t mode, size_t len, const uint8_t *p)
{
	uint8_t h[4] = {slot, mode, (uint8_t)len, (uint8_t)(len >> 8)};
	fwrite(h, 1, 4, f);
	if (p)
		fwrite(p, 1, len, f);
}

static inline void fz_pack_item(FILE *f, uint8_t slot, const uint8_t *p, size_t len)
{
	uint8_t mode = 2;
	size_t i = 0;
	if (!len)
		fz_put_entry(f, slot, mode, 0, p);
	while (i < len) {
		size_t z = 0;
		while (i + z < len && p[i + z] == 0 && z < 65535u * 16)
			z++;
		if (z >= 64) {
			z &= ~(size_t)15;
			fz_put_entry(f, slot, (uint8_t)(mode | 1), z / 16, NULL);
			i += z;
			mode = 0;
			continue;
		}
		/* raw up to the next long zero run */
		size_t r = 0;
		while (i + r < len && r < 65535) {
			size_t zz = 0;
			while (i + r + zz < len && p[i + r + zz] == 0 && zz < 64)
				zz++;
			if (zz >= 64)
				break;
			r += zz ? zz : 1;
		}
		if (r > 65535)
			r = 65535;
		fz_put_entry(f, slot, mode, r, p + i);
		i += r;
		mode = 0;
	}
}

/* ---- the scratch directory ------------------------------------------------------ */

static char fz_root[256], fz_dir[300];

static inline int fz_rm_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	if (ftw->level > 0)
		remove(path);
	return 0;
}

static inline void fz_clean(void)
{
	nftw(fz_dir, fz_rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static inline void fz_cleanup_root(void)
{
	nftw(fz_root, fz_rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	rmdir(fz_root);
}

/* A private directory in a tmpfs (FUZZ_TMPDIR, else /dev/shm, else /tmp), emptied
 * before every input; fz_dir is the engine's data directory inside it. */
static inline void fz_init_dir(void)
{
	if (fz_root[0])
		return;
	const char *base = getenv("FUZZ_TMPDIR");
	struct stat st;
	if (!base || !*base)
		base = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm" : "/tmp";
	snprintf(fz_root, sizeof(fz_root), "%s/elliptics-fuzz.XXXXXX", base);
	if (!mkdtemp(fz_root))
		abort();
	snprintf(fz_dir, sizeof(fz_dir), "%s/d", fz_root);
	atexit(fz_cleanup_root);
	/* engines complain loudly about corrupt data: silent unless FUZZ_VERBOSE=1 */
	dnet_log_level = getenv("FUZZ_VERBOSE") ? DNET_LOG_INFO : DNET_LOG_ERROR - 1;
}

/* ---- the workout ---------------------------------------------------------------- */

/* IDs the seeds use: the container cannot carry IDs of its own for the file engine
 * (names are IDs), and known IDs let mutations keep hitting the same objects. */
static inline void fz_known_id(int k, uint8_t id[DNET_ID_SIZE])
{
	for (int i = 0; i < DNET_ID_SIZE; i++)
		id[i] = (uint8_t)(0x11 * (k + 1) + i * 7);
}

struct fz_wait {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int done, status;
};

static inline void fz_done(void *arg, int status, const struct dnet_obj_info *info)
{
	(void)info;
	struct fz_wait *w = arg;
	pthread_mutex_lock(&w->lock);
	w->status = status;
	w->done = 1;
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

static inline int fz_write(const struct dnet_backend_ops *ops, struct dnet_backend *b,
			   const uint8_t *id, uint64_t off, const void *data, uint64_t len)
{
	struct fz_wait w = {.done = 0};
	pthread_mutex_init(&w.lock, NULL);
	pthread_cond_init(&w.cond, NULL);
	struct dnet_write_req req;
	memset(&req, 0, sizeof(req));
	req.id = id;
	req.io.offset = off;
	req.io.size = len;
	req.io.timestamp = 1900000000000000000ull; /* newer than anything a seed wrote */
	req.data = data;
	ops->write(b, &req, fz_done, &w);
	pthread_mutex_lock(&w.lock);
	while (!w.done)
		pthread_cond_wait(&w.cond, &w.lock);
	pthread_mutex_unlock(&w.lock);
	pthread_mutex_destroy(&w.lock);
	pthread_cond_destroy(&w.cond);
	return w.status;
}

static inline void fz_fail(const char *what)
{
	fprintf(stderr, "fuzz_store: contract broken: %s\n", what);
	abort();
}

/* Reads; returns the status and, when want != NULL, whether the bytes equal it. */
static inline int fz_read(const struct dnet_backend_ops *ops, struct dnet_backend *b,
			  const uint8_t *id, uint64_t off, uint64_t size, uint32_t flags,
			  const void *want, uint64_t wlen)
{
	struct dnet_read_res res;
	memset(&res, 0, sizeof(res));
	res.fd = -1;
	int err = ops->read(b, id, off, size, flags, &res);
	if (err) {
		if (res.buf || res.fd >= 0)
			fz_fail("a failed read returned data");
		return err;
	}
	if (res.verify) {
		/* deferred verification: steps that move forward, cover the range, and
		 * may stop at a corrupt block (then nothing more of it may be used) */
		if (res.fd < 0)
			fz_fail("a verifier without a file range");
		uint64_t at = res.file_offset, e = 0;
		int verr = 0;
		while (at < res.file_offset + res.len &&
		       !(verr = res.verify->check(res.verify, res.fd, at, &e))) {
			if (e <= at)
				fz_fail("a verification step did not move forward");
			at = e;
		}
		res.verify->free(res.verify);
		res.verify = NULL;
		if (verr) {
			close(res.fd);
			return verr;
		}
	}
	if (size && res.len > size)
		fz_fail("read returned more than asked");
	if (res.len > res.info.size)
		fz_fail("read returned more than the object holds");
	uint8_t *got = NULL;
	if (res.len <= (1u << 22)) {
		got = malloc(res.len ? (size_t)res.len : 1);
		if (!got)
			abort();
		if (res.fd >= 0) {
			int64_t n = dnet_pread_full(res.fd, got, (size_t)res.len, res.file_offset);
			if (n != (int64_t)res.len)
				fz_fail("a file-range read is shorter than its length");
		} else if (res.len) {
			if (!res.buf)
				fz_fail("a read returned neither fd nor buffer");
			memcpy(got, res.buf, (size_t)res.len);
		}
	}
	if (want && (!got || res.len != wlen || memcmp(got, want, (size_t)wlen) != 0))
		err = -1000;
	free(got);
	if (res.fd >= 0)
		close(res.fd);
	free(res.buf);
	return err;
}

struct fz_ids {
	uint8_t id[32][DNET_ID_SIZE];
	int n, calls;
};

static inline int fz_iter_cb(void *arg, const uint8_t *id, const struct dnet_obj_info *info)
{
	(void)info;
	struct fz_ids *s = arg;
	s->calls++;
	if (s->n < 32)
		memcpy(s->id[s->n++], id, DNET_ID_SIZE);
	return s->calls > 100000; /* bounded */
}

static inline void fz_workout(const char *engine, int fsync)
{
	const struct dnet_backend_ops *ops = dnet_backend_find(engine);
	if (!ops)
		abort();
	struct dnet_backend_config cfg;
	dnet_backend_config_defaults(&cfg);
	cfg.path = fz_dir;
	cfg.fsync = fsync;
	struct dnet_backend *b = NULL;
	if (ops->open(&cfg, &b) != 0)
		return; /* refusing a hostile directory is fine */

	struct fz_ids ids = {.n = 0};
	ops->iterate(b, fz_iter_cb, &ids);
	for (int k = 0; k < FZ_NKNOWN && ids.n < 32; k++)
		fz_known_id(k, ids.id[ids.n++]);
	for (int i = 0; i < ids.n; i++) {
		struct dnet_obj_info info;
		ops->lookup(b, ids.id[i], &info);
		fz_read(ops, b, ids.id[i], 0, 0, 0, NULL, 0);
		fz_read(ops, b, ids.id[i], 0, 0, DNET_FLAG_NOCSUM, NULL, 0);
		fz_read(ops, b, ids.id[i], 3, 70000, 0, NULL, 0);
		fz_read(ops, b, ids.id[i], 0, 0, DNET_READ_DEFER_VERIFY, NULL, 0);
		fz_read(ops, b, ids.id[i], 65537, 70000, DNET_READ_DEFER_VERIFY, NULL, 0);
	}
	uint8_t k0[DNET_ID_SIZE], k1[DNET_ID_SIZE], k2[DNET_ID_SIZE];
	fz_known_id(0, k0);
	fz_known_id(1, k1);
	fz_known_id(2, k2);
	static const char fresh[] = "written by the fuzz target";
	fz_write(ops, b, k2, 2, "upd", 3); /* offset update of whatever is there */
	int wrote = fz_write(ops, b, k0, 0, fresh, sizeof(fresh)) == 0;
	if (wrote && fz_read(ops, b, k0, 0, 0, 0, fresh, sizeof(fresh)) != 0)
		fz_fail("a fresh write does not read back");
	int deleted = ops->del(b, k1) == 0;
	struct dnet_obj_info info;
	if (deleted && ops->lookup(b, k1, &info) != DNET_ENOENT)
		fz_fail("a deleted object is still there");
	struct dnet_backend_stat st;
	ops->stat(b, &st);
	ops->sync(b);
	ops->close(b);

	b = NULL;
	if (ops->open(&cfg, &b) != 0)
		fz_fail("a directory the engine opened and closed cleanly does not reopen");
	ids.n = ids.calls = 0;
	ops->iterate(b, fz_iter_cb, &ids);
	if (wrote && fz_read(ops, b, k0, 0, 0, 0, fresh, sizeof(fresh)) != 0)
		fz_fail("a fresh write is lost or wrong after a clean restart");
	if (deleted && ops->lookup(b, k1, &info) != DNET_ENOENT)
		fz_fail("a delete is undone by a clean restart");
	ops->close(b);
}

/* ---- seed helpers (standalone builds: make unit) ----------------------------- */
#ifdef DNET_FUZZ_STANDALONE
#include "fuzz_main.h"

/* Seed helpers: build a store with the engine itself, then pack its files. */
static inline void fz_seed_write(const char *engine, void (*fill)(const struct dnet_backend_ops *,
								  struct dnet_backend *))
{
	const struct dnet_backend_ops *ops = dnet_backend_find(engine);
	struct dnet_backend_config cfg;
	dnet_backend_config_defaults(&cfg);
	cfg.path = fz_dir;
	struct dnet_backend *b;
	if (!ops || ops->open(&cfg, &b) != 0) {
		fprintf(stderr, "seed: cannot open a %s store in %s\n", engine, fz_dir);
		exit(1);
	}
	fill(ops, b);
	ops->close(b);
}
#endif

#endif
