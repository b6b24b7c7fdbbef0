/* test_backend_conformance.c - one body of tests run against every storage engine in
 * the registry (file, blob, lmdb, bdb, mem): sizes, ranges, offset updates, overwrite,
 * delete, iterate, restart persistence, chunked uploads of known and unknown length,
 * checksum-mismatch detection, and concurrent writers with group commit. The mem
 * engine skips what needs a disk. Engine-specific behaviour has its own test files. */
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/errors.h"
#include "common/id.h"
#include "common/log.h"
#include "common/util.h"
#include "storage/backend.h"
#include "storage_test.h"

static const char *const engine_names[] = {"file", "blob", "lmdb", "bdb", "mem"};
#define NENGINES (sizeof(engine_names) / sizeof(engine_names[0]))

struct fx {
	const struct dnet_backend_ops *ops;
	int persistent;
	char dir[64];
	struct dnet_backend_config cfg;
	struct dnet_backend *b;
};

/* what a test is run with: the engine and the fsync policy */
struct variant {
	const struct dnet_backend_ops *ops;
	int fsync;
};

/* ---- helpers ------------------------------------------------------------------- */

static uint8_t *pattern(size_t len, uint64_t seed)
{
	uint8_t *p = malloc(len ? len : 1);
	assert_non_null(p);
	st_fill(p, len, seed);
	return p;
}

static void key_id(uint8_t id[DNET_ID_SIZE], const char *prefix, int n)
{
	char key[96];
	snprintf(key, sizeof(key), "%s-%d", prefix, n);
	dnet_id_from_key(id, key, strlen(key));
}

static int write_io(struct fx *f, const uint8_t *id, const struct dnet_io_attr *io,
		    const void *data, struct dnet_obj_info *info)
{
	int calls;
	int st = st_write_io(f->ops, f->b, id, io, data, 1700000000000000000ull, info, &calls);
	assert_int_equal(calls, 1);
	return st;
}

static int put(struct fx *f, const uint8_t *id, uint64_t off, const void *data, uint64_t len)
{
	struct dnet_io_attr io;
	memset(&io, 0, sizeof(io));
	io.offset = off;
	io.size = len;
	return write_io(f, id, &io, data, NULL);
}

static int chunk(struct fx *f, const uint8_t *id, uint32_t flags, uint64_t cookie, uint64_t total,
		 uint64_t off, const void *data, uint64_t len)
{
	struct dnet_io_attr io;
	memset(&io, 0, sizeof(io));
	io.ioflags = flags;
	io.cookie = cookie;
	io.total_size = total;
	io.offset = off;
	io.size = len;
	return write_io(f, id, &io, data, NULL);
}

/* Reads whichever way the engine returns bytes (fd range or buffer). */
static int get(struct fx *f, const uint8_t *id, uint64_t off, uint64_t size, uint32_t flags,
	       uint8_t **out, uint64_t *len, struct dnet_obj_info *info)
{
	struct dnet_read_res res;
	memset(&res, 0xa5, sizeof(res));
	int err = f->ops->read(f->b, id, off, size, flags, &res);
	*out = NULL;
	*len = 0;
	if (err)
		return err; /* res is undefined on error (backend.h) */
	uint8_t *p = malloc(res.len ? res.len : 1);
	assert_non_null(p);
	if (res.fd >= 0) {
		assert_null(res.buf);
		for (uint64_t got = 0; got < res.len;) {
			ssize_t n =
			    pread(res.fd, p + got, res.len - got, (off_t)(res.file_offset + got));
			assert_true(n > 0);
			got += (uint64_t)n;
		}
		close(res.fd);
	} else {
		if (res.len)
			memcpy(p, res.buf, res.len);
		free(res.buf);
	}
	*out = p;
	*len = res.len;
	if (info)
		*info = res.info;
	return 0;
}

static void expect_range(struct fx *f, const uint8_t *id, const uint8_t *model, uint64_t msize,
			 uint64_t off, uint64_t size)
{
	uint8_t *got;
	uint64_t glen;
	struct dnet_obj_info info;
	int err = get(f, id, off, size, 0, &got, &glen, &info);
	if (off > msize) {
		assert_int_equal(err, DNET_ERANGE);
		return;
	}
	assert_int_equal(err, 0);
	uint64_t want = msize - off;
	if (size && size < want)
		want = size;
	assert_int_equal(glen, want);
	assert_int_equal(info.size, msize);
	if (want)
		assert_memory_equal(got, model + off, want);
	free(got);
}

static void expect_object(struct fx *f, const uint8_t *id, const uint8_t *model, uint64_t msize)
{
	struct dnet_obj_info info;
	uint8_t csum[16];
	expect_range(f, id, model, msize, 0, 0);
	assert_int_equal(f->ops->lookup(f->b, id, &info), 0);
	assert_int_equal(info.size, msize);
	dnet_csum(model, msize, csum);
	assert_memory_equal(info.csum, csum, 16);
}

static void expect_absent(struct fx *f, const uint8_t *id)
{
	struct dnet_obj_info info;
	uint8_t *got;
	uint64_t glen;
	assert_int_equal(f->ops->lookup(f->b, id, &info), DNET_ENOENT);
	assert_int_equal(get(f, id, 0, 0, 0, &got, &glen, NULL), DNET_ENOENT);
}

static void reopen(struct fx *f)
{
	f->ops->close(f->b);
	f->b = NULL;
	assert_int_equal(f->ops->open(&f->cfg, &f->b), 0);
}

static int setup(void **state)
{
	const struct variant *v = *state;
	struct fx *f = calloc(1, sizeof(*f));
	if (!f)
		return -1;
	f->ops = v->ops;
	f->persistent = strcmp(v->ops->name, "mem") != 0;
	snprintf(f->dir, sizeof(f->dir), "/tmp/dnet-conf-XXXXXX");
	if (!mkdtemp(f->dir))
		return -1;
	dnet_backend_config_defaults(&f->cfg);
	f->cfg.path = f->dir;
	f->cfg.fsync = v->fsync;
	if (f->ops->open(&f->cfg, &f->b))
		return -1;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	if (f->b)
		f->ops->close(f->b);
	st_rm_rf(f->dir);
	free(f);
	return 0;
}

/* ---- tests --------------------------------------------------------------------- */

static const uint64_t sizes[] = {0,	1,     4095,  4096,	      4097,
				 65535, 65536, 65537, (1u << 20) + 1, 20u << 20};
#define NSIZES (sizeof(sizes) / sizeof(sizes[0]))

/* Every size round-trips, with ranges around every interesting boundary, and
 * survives close + reopen; stat counts them. */
static void test_sizes(void **state)
{
	struct fx *f = *state;
	uint8_t *data[NSIZES];
	uint8_t id[NSIZES][DNET_ID_SIZE];
	uint64_t total = 0;
	for (size_t i = 0; i < NSIZES; i++) {
		key_id(id[i], "size", (int)i);
		data[i] = pattern(sizes[i], i + 1);
		struct dnet_io_attr io;
		struct dnet_obj_info info;
		uint8_t csum[16];
		memset(&io, 0, sizeof(io));
		io.size = sizes[i];
		io.timestamp = 42 + i;
		assert_int_equal(write_io(f, id[i], &io, data[i], &info), 0);
		assert_int_equal(info.size, sizes[i]);
		assert_int_equal(info.timestamp, 42 + i);
		dnet_csum(data[i], sizes[i], csum);
		assert_memory_equal(info.csum, csum, 16);
		total += sizes[i];
	}
	for (int pass = 0; pass < 2; pass++) {
		for (size_t i = 0; i < NSIZES; i++) {
			uint64_t s = sizes[i];
			expect_object(f, id[i], data[i], s);
			const uint64_t offs[] = {0,	 1,	 s / 2, s > 0 ? s - 1 : 0,
						 s,	 s + 1,	 4096,	65536,
						 262143, 262144, 262145};
			const uint64_t lens[] = {0, 1, 3, 4096, 65537, 300000};
			for (size_t o = 0; o < sizeof(offs) / sizeof(offs[0]); o++)
				for (size_t l = 0; l < sizeof(lens) / sizeof(lens[0]); l++)
					if (offs[o] <= s + 1)
						expect_range(f, id[i], data[i], s, offs[o],
							     lens[l]);
		}
		struct dnet_backend_stat st;
		assert_int_equal(f->ops->stat(f->b, &st), 0);
		assert_int_equal(st.objects, NSIZES);
		assert_int_equal(st.bytes, total);
		if (!f->persistent)
			break;
		reopen(f);
	}
	for (size_t i = 0; i < NSIZES; i++)
		free(data[i]);
}

/* Offset updates against a model: inside, across chunk boundaries, appends, growth
 * from small to large; errors for a gap and for an absent object. */
static void test_update_overwrite(void **state)
{
	struct fx *f = *state;
	uint8_t id[DNET_ID_SIZE], none[DNET_ID_SIZE];
	key_id(id, "upd", 0);
	key_id(none, "upd-none", 0);
	uint64_t cap = 2u << 20, msize = 3000;
	uint8_t *model = pattern(cap, 7), *tmp = pattern(cap, 8);
	assert_int_equal(put(f, id, 0, model, msize), 0);
	struct {
		uint64_t off, len;
	} steps[] = {
	    {1000, 100},       /* inside a small object */
	    {3000, 500},       /* append at the end */
	    {3500, 300000},    /* grow past 256 KiB */
	    {262100, 100},     /* across a 256 KiB boundary */
	    {0 + 1, 0},	       /* empty update: touches nothing but the timestamp */
	    {303500, 1000000}, /* append 1 MB */
	    {65530, 12},       /* across a 64 KiB block */
	    {1303499, 1},      /* last byte */
	};
	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		uint64_t off = steps[i].off, len = steps[i].len;
		st_fill(tmp, len, 100 + i);
		assert_int_equal(put(f, id, off, tmp, len), 0);
		memcpy(model + off, tmp, len);
		if (off + len > msize)
			msize = off + len;
		expect_object(f, id, model, msize);
	}
	assert_int_equal(put(f, id, msize + 1, tmp, 10), DNET_ERANGE);
	assert_int_equal(put(f, none, 5, tmp, 10), DNET_ENOENT);
	expect_object(f, id, model, msize);
	/* overwrite: large -> tiny -> large -> empty */
	const uint64_t ov[] = {10, 700000, 0, 5000};
	for (size_t i = 0; i < 4; i++) {
		st_fill(model, ov[i], 200 + i);
		assert_int_equal(put(f, id, 0, model, ov[i]), 0);
		expect_object(f, id, model, ov[i]);
	}
	if (f->persistent) {
		reopen(f);
		expect_object(f, id, model, 5000);
	}
	struct dnet_backend_stat st;
	assert_int_equal(f->ops->stat(f->b, &st), 0);
	assert_int_equal(st.objects, 1);
	assert_int_equal(st.bytes, 5000);
	free(model);
	free(tmp);
}

static void test_delete(void **state)
{
	struct fx *f = *state;
	uint8_t a[DNET_ID_SIZE], b[DNET_ID_SIZE];
	key_id(a, "del", 0);
	key_id(b, "del", 1);
	uint8_t *d = pattern(600000, 3);
	assert_int_equal(put(f, a, 0, d, 100), 0);
	assert_int_equal(put(f, b, 0, d, 600000), 0);
	assert_int_equal(f->ops->del(f->b, a), 0);
	assert_int_equal(f->ops->del(f->b, b), 0);
	expect_absent(f, a);
	expect_absent(f, b);
	assert_int_equal(f->ops->del(f->b, a), DNET_ENOENT);
	assert_int_equal(put(f, b, 0, d, 1234), 0); /* re-create after delete */
	if (f->persistent)
		reopen(f);
	expect_absent(f, a);
	expect_object(f, b, d, 1234);
	struct dnet_backend_stat st;
	assert_int_equal(f->ops->stat(f->b, &st), 0);
	assert_int_equal(st.objects, 1);
	assert_int_equal(st.bytes, 1234);
	free(d);
}

#define NITER 300

struct seen {
	uint8_t ids[NITER][DNET_ID_SIZE];
	int hits[NITER];
	int extra, calls;
};

static int iter_cb(void *arg, const uint8_t *id, const struct dnet_obj_info *info)
{
	struct seen *s = arg;
	s->calls++;
	for (int i = 0; i < NITER; i++) {
		if (!memcmp(s->ids[i], id, DNET_ID_SIZE)) {
			s->hits[i]++;
			if (info->size != (uint64_t)(i % 7) * 1000)
				s->extra += 1000;
			return 0;
		}
	}
	s->extra++;
	return 0;
}

static int iter_stop(void *arg, const uint8_t *id, const struct dnet_obj_info *info)
{
	(void)id;
	(void)info;
	return ++*(int *)arg == 5 ? 77 : 0;
}

static void test_iterate(void **state)
{
	struct fx *f = *state;
	struct seen *s = calloc(1, sizeof(*s));
	uint8_t *d = pattern(7000, 4);
	assert_non_null(s);
	for (int i = 0; i < NITER; i++) {
		key_id(s->ids[i], "iter", i);
		assert_int_equal(put(f, s->ids[i], 0, d, (uint64_t)(i % 7) * 1000), 0);
	}
	for (int i = 0; i < NITER; i += 3)
		assert_int_equal(f->ops->del(f->b, s->ids[i]), 0);
	for (int pass = 0; pass < 2; pass++) {
		memset(s->hits, 0, sizeof(s->hits));
		s->extra = s->calls = 0;
		assert_int_equal(f->ops->iterate(f->b, iter_cb, s), 0);
		assert_int_equal(s->extra, 0);
		for (int i = 0; i < NITER; i++)
			assert_int_equal(s->hits[i], i % 3 ? 1 : 0);
		if (!f->persistent)
			break;
		reopen(f);
	}
	int n = 0;
	assert_int_equal(f->ops->iterate(f->b, iter_stop, &n), 77);
	assert_int_equal(n, 5);
	free(d);
	free(s);
}

/* Chunked uploads: known and unknown total size, in and out of order, invisible
 * until COMMIT, replacing an existing object; unknown cookie; incomplete COMMIT. */
static void test_upload(void **state)
{
	struct fx *f = *state;
	uint8_t id[DNET_ID_SIZE], id2[DNET_ID_SIZE];
	key_id(id, "up", 0);
	key_id(id2, "up", 1);
	const uint64_t total = 20u << 20, piece = 8u << 20;
	uint8_t *d = pattern(total, 9), *old = pattern(5000, 10);
	assert_int_equal(put(f, id, 0, old, 5000), 0);

	/* known size, in order */
	assert_int_equal(chunk(f, id, DNET_IO_PREPARE, 11, total, 0, d, piece), 0);
	assert_int_equal(chunk(f, id, DNET_IO_PLAIN, 11, 0, piece, d + piece, piece), 0);
	expect_object(f, id, old, 5000); /* not visible yet */
	assert_int_equal(chunk(f, id, DNET_IO_PLAIN, 999, 0, 0, d, 10), DNET_ENOENT);
	assert_int_equal(chunk(f, id2, DNET_IO_COMMIT, 11, 0, 0, d, 10), DNET_ENOENT);
	assert_int_equal(
	    chunk(f, id, DNET_IO_COMMIT, 11, 0, 2 * piece, d + 2 * piece, total - 2 * piece), 0);
	expect_object(f, id, d, total);
	expect_range(f, id, d, total, 262140, 10);
	/* the cookie is gone after COMMIT */
	assert_int_equal(chunk(f, id, DNET_IO_PLAIN, 11, 0, 0, d, 10), DNET_ENOENT);

	/* The mem engine has no uploads of unknown length (total_size 0): it allocates
	 * total_size at PREPARE. Reported; skipped here rather than papered over. */
	const int unknown_ok = strcmp(f->ops->name, "mem") != 0;
	if (unknown_ok) {
		/* unknown size (total 0 = known at COMMIT), odd piece sizes */
		const uint64_t usize = 3000001, up = 1000003;
		st_fill(d, usize, 12);
		assert_int_equal(chunk(f, id2, DNET_IO_PREPARE, 22, 0, 0, d, up), 0);
		assert_int_equal(chunk(f, id2, DNET_IO_PLAIN, 22, 0, up, d + up, up), 0);
		expect_absent(f, id2);
		assert_int_equal(
		    chunk(f, id2, DNET_IO_COMMIT, 22, 0, 2 * up, d + 2 * up, usize - 2 * up), 0);
		expect_object(f, id2, d, usize);

		/* unknown size, pieces out of order, small object */
		st_fill(d, 1000, 13);
		assert_int_equal(chunk(f, id2, DNET_IO_PREPARE, 33, 0, 600, d + 600, 400), 0);
		assert_int_equal(chunk(f, id2, DNET_IO_PLAIN, 33, 0, 0, d, 300), 0);
		/* COMMIT with a hole [300, 600) is refused; the upload stays usable */
		assert_int_equal(chunk(f, id2, DNET_IO_COMMIT, 33, 0, 0, NULL, 0), DNET_EINVAL);
		assert_int_equal(chunk(f, id2, DNET_IO_COMMIT, 33, 0, 300, d + 300, 300), 0);
		expect_object(f, id2, d, 1000);
	} else {
		st_fill(d, 1000, 13);
		assert_int_equal(
		    chunk(f, id2, DNET_IO_PREPARE | DNET_IO_COMMIT, 33, 1000, 0, d, 1000), 0);
	}
	/* known size, pieces out of order */
	st_fill(d, 700000, 14);
	assert_int_equal(chunk(f, id, DNET_IO_PREPARE, 34, 700000, 300000, d + 300000, 400000), 0);
	assert_int_equal(chunk(f, id, DNET_IO_PLAIN, 34, 0, 0, d, 100000), 0);
	assert_int_equal(chunk(f, id, DNET_IO_COMMIT, 34, 0, 100000, d + 100000, 200000), 0);
	expect_object(f, id, d, 700000);
	st_fill(d, 1000, 13);
	/* writing past the announced size */
	assert_int_equal(chunk(f, id2, DNET_IO_PREPARE, 44, 100, 0, d, 50), 0);
	assert_int_equal(chunk(f, id2, DNET_IO_PLAIN, 44, 0, 90, d, 20), DNET_ERANGE);

	if (f->persistent) {
		/* an upload in flight does not survive a restart; committed ones do */
		assert_int_equal(chunk(f, id, DNET_IO_PREPARE, 55, total, 0, d, piece), 0);
		reopen(f);
		assert_int_equal(chunk(f, id, DNET_IO_PLAIN, 55, 0, piece, d, 10), DNET_ENOENT);
		assert_int_equal(chunk(f, id2, DNET_IO_COMMIT, 44, 0, 50, d, 50), DNET_ENOENT);
		expect_object(f, id2, d, 1000);
		uint8_t *d2 = pattern(700000, 0);
		st_fill(d2, 700000, 14);
		expect_object(f, id, d2, 700000);
		free(d2);
	}
	struct dnet_backend_stat st;
	assert_int_equal(f->ops->stat(f->b, &st), 0);
	assert_int_equal(st.objects, 2);
	assert_int_equal(st.bytes, 700000 + 1000);
	free(d);
	free(old);
}

/* Flip one byte of stored data on disk: reads must say DNET_ECORRUPT (NOCSUM reads
 * still return bytes) and stat.corrupt must count it. The data is found by content
 * in whichever file the engine keeps it (write-ahead logs excluded: recovery reads
 * them, not reads). */
static int flip_in_dir(const char *dir, const uint8_t *needle, size_t nlen)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	int found = 0;
	assert_non_null(d);
	while (!found && (de = readdir(d))) {
		char p[512];
		struct stat st;
		if (de->d_name[0] == '.' || !strncmp(de->d_name, "log.", 4))
			continue;
		snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
		if (lstat(p, &st) < 0)
			continue;
		if (S_ISDIR(st.st_mode)) {
			found = flip_in_dir(p, needle, nlen);
			continue;
		}
		if (!S_ISREG(st.st_mode) || st.st_size < (off_t)nlen)
			continue;
		int fd = open(p, O_RDWR);
		assert_true(fd >= 0);
		uint8_t *m = malloc((size_t)st.st_size);
		assert_non_null(m);
		assert_int_equal(pread(fd, m, (size_t)st.st_size, 0), st.st_size);
		uint8_t *hit = memmem(m, (size_t)st.st_size, needle, nlen);
		if (hit) {
			uint8_t c = (uint8_t)(hit[nlen / 2] ^ 0x5a);
			assert_int_equal(pwrite(fd, &c, 1, (off_t)(hit - m) + (off_t)nlen / 2), 1);
			found = 1;
		}
		free(m);
		close(fd);
	}
	closedir(d);
	return found;
}

static void test_corruption(void **state)
{
	struct fx *f = *state;
	if (!f->persistent)
		skip();
	const uint64_t sizes2[] = {3000, 700000};
	uint8_t id[2][DNET_ID_SIZE];
	uint8_t *d[2];
	for (int i = 0; i < 2; i++) {
		key_id(id[i], "corrupt", i);
		d[i] = pattern(sizes2[i], 300 + (uint64_t)i);
		assert_int_equal(put(f, id[i], 0, d[i], sizes2[i]), 0);
	}
	f->ops->close(f->b);
	f->b = NULL;
	for (int i = 0; i < 2; i++)
		assert_true(flip_in_dir(f->dir, d[i] + sizes2[i] / 2, 64));
	assert_int_equal(f->ops->open(&f->cfg, &f->b), 0);
	for (int i = 0; i < 2; i++) {
		uint8_t *got;
		uint64_t glen;
		assert_int_equal(get(f, id[i], 0, 0, 0, &got, &glen, NULL), DNET_ECORRUPT);
		/* a range that contains the flipped byte */
		assert_int_equal(get(f, id[i], sizes2[i] / 2, 64, 0, &got, &glen, NULL),
				 DNET_ECORRUPT);
		assert_int_equal(get(f, id[i], 0, 0, DNET_FLAG_NOCSUM, &got, &glen, NULL), 0);
		assert_int_equal(glen, sizes2[i]);
		assert_memory_not_equal(got, d[i], sizes2[i]);
		free(got);
	}
	struct dnet_backend_stat st;
	assert_int_equal(f->ops->stat(f->b, &st), 0);
	assert_true(st.corrupt >= 2);
	for (int i = 0; i < 2; i++)
		free(d[i]);
}

/* 8 threads; each writes its own keys with a window of writes in flight, and all
 * take turns (serialized, as the server serializes one ID) on one shared key.
 * Every done() is called exactly once; everything reads back. */
#define CW_THREADS 8
#define CW_KEYS 150
#define CW_WINDOW 16

struct cw_arg {
	struct fx *f;
	int t;
	pthread_mutex_t *shared_lock;
	uint64_t *shared_seq;
};

static uint64_t cw_size(int t, int k)
{
	return (k % 2) ? 1024 : 10240 + (uint64_t)t;
}

static void *cw_thread(void *p)
{
	struct cw_arg *a = p;
	struct fx *f = a->f;
	struct st_wres *w = calloc(CW_WINDOW, sizeof(*w));
	uint8_t *buf = malloc(CW_WINDOW * 10300);
	uint8_t shared[DNET_ID_SIZE];
	uint8_t sbuf[2048];
	key_id(shared, "cw-shared", 0);
	if (!w || !buf)
		abort();
	for (int k0 = 0; k0 < CW_KEYS; k0 += CW_WINDOW) {
		int n = CW_KEYS - k0 < CW_WINDOW ? CW_KEYS - k0 : CW_WINDOW;
		uint8_t ids[CW_WINDOW][DNET_ID_SIZE];
		for (int j = 0; j < n; j++) {
			int k = k0 + j;
			struct dnet_write_req req;
			memset(&req, 0, sizeof(req));
			key_id(ids[j], "cw", a->t * 10000 + k);
			st_fill(buf + (size_t)j * 10300, cw_size(a->t, k),
			     (uint64_t)(a->t * 10000 + k));
			req.id = ids[j];
			req.io.size = cw_size(a->t, k);
			req.io.timestamp = 1;
			req.data = buf + (size_t)j * 10300;
			st_wres_init(&w[j]);
			f->ops->write(f->b, &req, st_wres_done, &w[j]);
		}
		for (int j = 0; j < n; j++) {
			st_wres_wait(&w[j]);
			if (w[j].status || atomic_load(&w[j].calls) != 1)
				abort();
		}
		for (int j = 0; j < n; j++) {
			if (atomic_load(&w[j].calls) != 1) /* no late second call */
				abort();
			st_wres_destroy(&w[j]);
		}
		/* the shared key, one writer at a time */
		pthread_mutex_lock(a->shared_lock);
		uint64_t seq = ++*a->shared_seq;
		st_fill(sbuf, sizeof(sbuf), 1000000 + seq);
		struct dnet_io_attr io;
		memset(&io, 0, sizeof(io));
		io.size = sizeof(sbuf);
		if (write_io(f, shared, &io, sbuf, NULL))
			abort();
		pthread_mutex_unlock(a->shared_lock);
	}
	free(w);
	free(buf);
	return NULL;
}

static void test_concurrent(void **state)
{
	struct fx *f = *state;
	pthread_t th[CW_THREADS];
	struct cw_arg args[CW_THREADS];
	pthread_mutex_t shared_lock = PTHREAD_MUTEX_INITIALIZER;
	uint64_t shared_seq = 0;
	for (int t = 0; t < CW_THREADS; t++) {
		args[t] = (struct cw_arg){f, t, &shared_lock, &shared_seq};
		assert_int_equal(pthread_create(&th[t], NULL, cw_thread, &args[t]), 0);
	}
	for (int t = 0; t < CW_THREADS; t++)
		pthread_join(th[t], NULL);
	uint8_t *model = malloc(10300);
	assert_non_null(model);
	for (int pass = 0; pass < 2; pass++) {
		for (int t = 0; t < CW_THREADS; t++) {
			for (int k = 0; k < CW_KEYS; k++) {
				uint8_t id[DNET_ID_SIZE];
				key_id(id, "cw", t * 10000 + k);
				st_fill(model, cw_size(t, k), (uint64_t)(t * 10000 + k));
				expect_object(f, id, model, cw_size(t, k));
			}
		}
		uint8_t shared[DNET_ID_SIZE];
		key_id(shared, "cw-shared", 0);
		st_fill(model, 2048, 1000000 + shared_seq);
		expect_object(f, shared, model, 2048);
		struct dnet_backend_stat st;
		assert_int_equal(f->ops->stat(f->b, &st), 0);
		assert_int_equal(st.objects, CW_THREADS * CW_KEYS + 1);
		if (f->cfg.fsync == DNET_FSYNC_BATCH && pass == 0 && f->persistent) {
			assert_true(st.synced_writes >= CW_THREADS * CW_KEYS);
			assert_true(st.syncs > 0);
		}
		if (!f->persistent)
			break;
		reopen(f);
	}
	free(model);
}

/* Many small chunked uploads on several threads while the engine sweeps abandoned
 * ones: an upload whose last chunk finished while a sweep was starting is not idle
 * (its stamp can be newer than the sweep's clock), so no chunk or COMMIT of an
 * upload in progress ever gets DNET_ENOENT. */
#define UR_THREADS 4
#define UR_CHUNKS 24
#define UR_CHUNK 256

struct ur_arg {
	struct fx *f;
	int t;
	uint64_t until_ns;
	int uploads, err, at;
};

static void *ur_thread(void *p)
{
	struct ur_arg *a = p;
	uint8_t d[UR_CHUNKS * UR_CHUNK];
	st_fill(d, sizeof(d), (uint64_t)a->t);
	for (int n = 0; n < 20000 && !a->err && dnet_now_mono_ns() < a->until_ns; n++) {
		uint8_t id[DNET_ID_SIZE];
		key_id(id, "ur", a->t * 100 + n % 100);
		uint64_t cookie = (uint64_t)a->t << 32 | (uint64_t)n;
		for (int c = 0; c < UR_CHUNKS && !a->err; c++) {
			uint32_t fl = c == 0		   ? DNET_IO_PREPARE
				      : c == UR_CHUNKS - 1 ? DNET_IO_COMMIT
							   : DNET_IO_PLAIN;
			a->err = chunk(a->f, id, fl, cookie, c == 0 ? sizeof(d) : 0,
				       (uint64_t)c * UR_CHUNK, d + c * UR_CHUNK, UR_CHUNK);
			a->at = c;
		}
		a->uploads += !a->err;
	}
	return NULL;
}

static void test_upload_sweep_race(void **state)
{
	struct fx *f = *state;
	/* The blob engine sweeps every 200 ms whatever the timeout: it is the one this
	 * run really exercises. The others sweep at most once per timeout (here at the
	 * first request); the timeout is long enough that a thread held off the CPU
	 * on a loaded machine is not "idle". */
	f->cfg.upload_timeout_s = 3;
	reopen(f);
	pthread_t th[UR_THREADS];
	struct ur_arg args[UR_THREADS];
	uint64_t until = dnet_now_mono_ns() + 1500000000ull;
	for (int t = 0; t < UR_THREADS; t++) {
		args[t] = (struct ur_arg){f, t, until, 0, 0, 0};
		assert_int_equal(pthread_create(&th[t], NULL, ur_thread, &args[t]), 0);
	}
	int total = 0;
	for (int t = 0; t < UR_THREADS; t++) {
		pthread_join(th[t], NULL);
		if (args[t].err)
			fail_msg("thread %d: upload %d, chunk %d: %s", t, args[t].uploads,
				 args[t].at, dnet_strerror(args[t].err));
		total += args[t].uploads;
	}
	assert_true(total >= UR_THREADS);
	uint8_t id[DNET_ID_SIZE], d[UR_CHUNKS * UR_CHUNK];
	key_id(id, "ur", 0);
	st_fill(d, sizeof(d), 0);
	expect_object(f, id, d, sizeof(d));
}

/* A sync after writes; stat fields are sane. */
static void test_sync_stat(void **state)
{
	struct fx *f = *state;
	uint8_t id[DNET_ID_SIZE];
	key_id(id, "sync", 0);
	uint8_t *d = pattern(5000, 5);
	assert_int_equal(put(f, id, 0, d, 5000), 0);
	assert_int_equal(f->ops->sync(f->b), 0);
	struct dnet_backend_stat st;
	assert_int_equal(f->ops->stat(f->b, &st), 0);
	assert_int_equal(st.objects, 1);
	assert_int_equal(st.bytes, 5000);
	assert_int_equal(st.corrupt, 0);
	if (f->persistent) {
		assert_true(st.disk_bytes >= 5000);
		assert_true(st.disk_free > 0);
	}
	free(d);
}

/* DNET_READ_DEFER_VERIFY: an engine may hand back an unverified file range with a
 * verifier (blob and file do, for large reads), which checks the range in steps
 * that cover it exactly, from any step boundary on; else what it returns is
 * verified as usual. Either way the bytes are the object's. */
static void test_deferred(void **state)
{
	struct fx *f = *state;
	static const uint64_t dsizes[] = {0, 100, 65537, (1u << 20) + 1, 5u << 20};
	for (size_t i = 0; i < sizeof(dsizes) / sizeof(dsizes[0]); i++) {
		const uint64_t s = dsizes[i];
		uint8_t id[DNET_ID_SIZE];
		key_id(id, "deferred", (int)i);
		uint8_t *d = pattern(s, 70 + i);
		assert_int_equal(put(f, id, 0, d, s), 0);
		const uint64_t offs[] = {0, 1, 65536, 65537, s / 2, s};
		const uint64_t lens[] = {0, 1, 70000, 3u << 20};
		for (size_t o = 0; o < sizeof(offs) / sizeof(offs[0]); o++) {
			for (size_t l = 0; l < sizeof(lens) / sizeof(lens[0]); l++) {
				if (offs[o] > s)
					continue;
				uint64_t want = s - offs[o];
				if (lens[l] && lens[l] < want)
					want = lens[l];
				struct dnet_read_res res;
				memset(&res, 0xa5, sizeof(res));
				assert_int_equal(f->ops->read(f->b, id, offs[o], lens[l],
							      DNET_READ_DEFER_VERIFY, &res), 0);
				assert_int_equal(res.len, want);
				uint8_t *p = malloc(want ? want : 1);
				assert_non_null(p);
				if (res.fd >= 0) {
					assert_null(res.buf);
					if (res.verify) {
						uint64_t at = res.file_offset, e = 0;
						while (at < res.file_offset + want) {
							assert_int_equal(res.verify->check(res.verify, res.fd, at, &e), 0);
							assert_true(e > at);
							at = e;
						}
						res.verify->free(res.verify);
					}
					for (uint64_t got = 0; got < want;) {
						ssize_t n = pread(res.fd, p + got, want - got,
								  (off_t)(res.file_offset + got));
						assert_true(n > 0);
						got += (uint64_t)n;
					}
					close(res.fd);
				} else {
					if (want)
						memcpy(p, res.buf, want);
					free(res.buf);
				}
				assert_memory_equal(p, d + offs[o], want);
				free(p);
			}
		}
		free(d);
	}
	struct dnet_backend_stat st;
	assert_int_equal(f->ops->stat(f->b, &st), 0);
	assert_int_equal(st.corrupt, 0);
}

/* ---- registry-driven main ------------------------------------------------------ */

struct tdef {
	const char *name;
	CMUnitTestFunction fn;
	int fsync;
};

int main(void)
{
	static const struct tdef defs[] = {
	    {"sizes", test_sizes, DNET_FSYNC_NEVER},
	    {"sizes/batch", test_sizes, DNET_FSYNC_BATCH},
	    {"update_overwrite", test_update_overwrite, DNET_FSYNC_NEVER},
	    {"update_overwrite/batch", test_update_overwrite, DNET_FSYNC_BATCH},
	    {"delete/always", test_delete, DNET_FSYNC_ALWAYS},
	    {"delete/batch", test_delete, DNET_FSYNC_BATCH},
	    {"iterate", test_iterate, DNET_FSYNC_NEVER},
	    {"upload", test_upload, DNET_FSYNC_NEVER},
	    {"upload/batch", test_upload, DNET_FSYNC_BATCH},
	    {"upload_sweep_race", test_upload_sweep_race, DNET_FSYNC_NEVER},
	    {"corruption", test_corruption, DNET_FSYNC_NEVER},
	    {"deferred", test_deferred, DNET_FSYNC_NEVER},
	    {"concurrent/never", test_concurrent, DNET_FSYNC_NEVER},
	    {"concurrent/batch", test_concurrent, DNET_FSYNC_BATCH},
	    {"sync_stat/always", test_sync_stat, DNET_FSYNC_ALWAYS},
	    {"sync_stat/batch", test_sync_stat, DNET_FSYNC_BATCH},
	};
	const size_t ndefs = sizeof(defs) / sizeof(defs[0]);
	static struct variant vars[NENGINES * 3];
	static struct CMUnitTest tests[NENGINES * sizeof(defs) / sizeof(defs[0])];
	static char names[NENGINES * sizeof(defs) / sizeof(defs[0])][64];
	size_t n = 0;
	const char *only = getenv("DNET_CONFORMANCE_ENGINES"); /* e.g. "lmdb,bdb" */
	const char *lvl = getenv("DNET_TEST_LOG");
	dnet_log_level = lvl ? dnet_log_level_parse(lvl) : -1; /* expected errors are noise */

	for (size_t e = 0; e < NENGINES; e++) {
		if (only && !strstr(only, engine_names[e]))
			continue;
		const struct dnet_backend_ops *ops = dnet_backend_find(engine_names[e]);
		if (!ops) {
			fprintf(stderr, "conformance: engine %s not in the registry\n",
				engine_names[e]);
			return 1;
		}
		for (int p = 0; p < 3; p++)
			vars[e * 3 + (size_t)p] = (struct variant){ops, p};
		for (size_t i = 0; i < ndefs; i++) {
			snprintf(names[n], sizeof(names[n]), "%s/%s", engine_names[e],
				 defs[i].name);
			tests[n] = (struct CMUnitTest){names[n], defs[i].fn, setup, teardown,
						       &vars[e * 3 + (size_t)defs[i].fsync]};
			n++;
		}
	}
	return _cmocka_run_group_tests("backend_conformance", tests, n, NULL, NULL);
}
