/* test_file_backend.c - unit tests of the "file" storage engine (src/storage/file.c):
 * round trips, ranges, updates, chunked uploads, checksums, crash leftovers, group
 * commit under concurrency, and write failures (EFBIG via RLIMIT_FSIZE, real ENOSPC
 * on a tiny tmpfs when we may mount one). Each test gets a fresh mkdtemp directory. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/errors.h"
#include "common/id.h"
#include "common/log.h"
#include "storage/backend.h"
#include "storage_test.h"

extern const struct dnet_backend_ops dnet_file_backend_ops;
static const struct dnet_backend_ops *ops = &dnet_file_backend_ops;

#define HDR 128 /* object file header size, see file.c */

struct fx {
	char dir[64];
	char mnt[96]; /* tmpfs mounted for the ENOSPC test, or "" */
	struct dnet_backend_config cfg;
	struct dnet_backend *b;
};

/* ---- helpers ------------------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static void fill_random(void *p, size_t len)
{
	uint8_t *d = p;
	for (size_t i = 0; i < len; i++) {
		rng_state ^= rng_state << 13;
		rng_state ^= rng_state >> 7;
		rng_state ^= rng_state << 17;
		d[i] = (uint8_t)rng_state;
	}
}

static void *random_buf(size_t len)
{
	void *p = malloc(len ? len : 1);
	assert_non_null(p);
	fill_random(p, len);
	return p;
}

/* id of the key "<prefix>-<n>" */
static void key_id(uint8_t id[DNET_ID_SIZE], const char *prefix, int n)
{
	char key[96];
	snprintf(key, sizeof(key), "%s-%d", prefix, n);
	dnet_id_from_key(id, key, strlen(key));
}

/* Writes and waits for done; returns status, fills info when non-NULL. */
static int do_write_io(struct dnet_backend *b, const uint8_t *id, const struct dnet_io_attr *io,
		       const void *data, struct dnet_obj_info *info)
{
	int calls;
	int st = st_write_io(ops, b, id, io, data, 1234567890123456789ull, info, &calls);
	assert_int_equal(calls, 1);
	return st;
}

static int do_write(struct dnet_backend *b, const uint8_t *id, uint64_t offset, const void *data,
		    uint64_t len)
{
	struct dnet_io_attr io;
	memset(&io, 0, sizeof(io));
	io.offset = offset;
	io.size = len;
	return do_write_io(b, id, &io, data, NULL);
}

static int do_chunk(struct dnet_backend *b, const uint8_t *id, uint32_t flags, uint64_t cookie,
		    uint64_t total, uint64_t offset, const void *data, uint64_t len)
{
	struct dnet_io_attr io;
	memset(&io, 0, sizeof(io));
	io.ioflags = flags;
	io.cookie = cookie;
	io.total_size = total;
	io.offset = offset;
	io.size = len;
	return do_write_io(b, id, &io, data, NULL);
}

/* Reads into a malloc()ed buffer whichever way the engine returned the bytes. */
static int do_read(struct dnet_backend *b, const uint8_t *id, uint64_t off, uint64_t size,
		   uint32_t flags, uint8_t **out, uint64_t *len, struct dnet_obj_info *info)
{
	struct dnet_read_res res;
	int err = ops->read(b, id, off, size, flags, &res);
	*out = NULL;
	*len = 0;
	if (err) {
		assert_int_equal(res.fd, -1);
		assert_null(res.buf);
		return err;
	}
	uint8_t *p = malloc(res.len ? res.len : 1);
	assert_non_null(p);
	if (res.fd >= 0) {
		assert_null(res.buf);
		uint64_t got = 0;
		while (got < res.len) {
			ssize_t n = pread(res.fd, p + got, res.len - got,
					  (off_t)(res.file_offset + got));
			assert_true(n > 0);
			got += (uint64_t)n;
		}
		close(res.fd);
	} else {
		if (res.len)
			assert_non_null(res.buf);
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

static void expect_content(struct dnet_backend *b, const uint8_t *id, const void *data,
			   uint64_t len)
{
	uint8_t *got;
	uint64_t glen;
	struct dnet_obj_info info;
	assert_int_equal(do_read(b, id, 0, 0, 0, &got, &glen, &info), 0);
	assert_int_equal(glen, len);
	assert_int_equal(info.size, len);
	if (len)
		assert_memory_equal(got, data, len);
	free(got);

	uint8_t csum[16];
	dnet_csum(data, len, csum);
	assert_int_equal(ops->lookup(b, id, &info), 0);
	assert_int_equal(info.size, len);
	assert_memory_equal(info.csum, csum, 16);
}

static void obj_path(const struct fx *f, const uint8_t *id, char *out, size_t outlen)
{
	char hex[2 * DNET_ID_SIZE + 1];
	dnet_id_to_hex(hex, id, DNET_ID_SIZE);
	snprintf(out, outlen, "%s/%02x/%s", f->cfg.path, id[0], hex);
}

static void flip_byte(const char *path, off_t off)
{
	int fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	uint8_t c;
	assert_int_equal(pread(fd, &c, 1, off), 1);
	c ^= 0x5a;
	assert_int_equal(pwrite(fd, &c, 1, off), 1);
	close(fd);
}

static int count_dir(const char *path)
{
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "ls -A '%s' | wc -l", path);
	FILE *p = popen(cmd, "r");
	int n = -1;
	if (p) {
		if (fscanf(p, "%d", &n) != 1)
			n = -1;
		pclose(p);
	}
	return n;
}

static void reopen(struct fx *f)
{
	ops->close(f->b);
	f->b = NULL;
	assert_int_equal(ops->open(&f->cfg, &f->b), 0);
}

static int setup_policy(void **state, int policy)
{
	struct fx *f = calloc(1, sizeof(*f));
	if (!f)
		return -1;
	snprintf(f->dir, sizeof(f->dir), "/tmp/dnet-fb-XXXXXX");
	if (!mkdtemp(f->dir))
		return -1;
	dnet_backend_config_defaults(&f->cfg);
	f->cfg.path = f->dir;
	f->cfg.fsync = policy;
	if (ops->open(&f->cfg, &f->b))
		return -1;
	*state = f;
	return 0;
}

static int setup_never(void **state)
{
	return setup_policy(state, DNET_FSYNC_NEVER);
}

static int setup_always(void **state)
{
	return setup_policy(state, DNET_FSYNC_ALWAYS);
}

static int setup_batch(void **state)
{
	return setup_policy(state, DNET_FSYNC_BATCH);
}

static int teardown(void **state)
{
	struct fx *f = *state;
	if (f->b)
		ops->close(f->b);
	if (f->mnt[0]) {
		umount2(f->mnt, MNT_DETACH);
		rmdir(f->mnt);
	}
	st_rm_rf(f->dir);
	free(f);
	return 0;
}

/* ---- tests --------------------------------------------------------------------- */

static void test_roundtrip_sizes(void **state)
{
	struct fx *f = *state;
	static const uint64_t sizes[] = {0,     1,     4095,  4096,  4097,
					 65535, 65536, 65537, 131072, (1u << 20) + 1};
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		uint8_t id[DNET_ID_SIZE];
		key_id(id, "size", (int)i);
		void *data = random_buf(sizes[i]);
		struct dnet_io_attr io;
		struct dnet_obj_info info;
		memset(&io, 0, sizeof(io));
		io.size = sizes[i];
		io.timestamp = 42 + i;
		assert_int_equal(do_write_io(f->b, id, &io, data, &info), 0);
		assert_int_equal(info.size, sizes[i]);
		assert_int_equal(info.timestamp, 42 + i);
		expect_content(f->b, id, data, sizes[i]);
		/* NOCSUM reads return the same bytes */
		uint8_t *got;
		uint64_t glen;
		assert_int_equal(do_read(f->b, id, 0, 0, DNET_FLAG_NOCSUM, &got, &glen, NULL), 0);
		assert_int_equal(glen, sizes[i]);
		if (glen)
			assert_memory_equal(got, data, glen);
		free(got);
		free(data);
	}
	struct dnet_backend_stat st;
	assert_int_equal(ops->stat(f->b, &st), 0);
	assert_int_equal(st.objects, 10);
	assert_true(st.disk_free > 0);
}

static void test_ranges(void **state)
{
	struct fx *f = *state;
	const uint64_t size = 300000; /* 5 blocks, last partial */
	uint8_t id[DNET_ID_SIZE];
	key_id(id, "ranges", 0);
	uint8_t *data = random_buf(size);
	assert_int_equal(do_write(f->b, id, 0, data, size), 0);

	static const struct {
		uint64_t off, size, want;
	} cases[] = {
	    {0, 1, 1},          {1, 10, 10},           {65535, 2, 2},     {65536, 65536, 65536},
	    {100, 200000, 200000}, {299999, 0, 1},     {0, 0, 300000},    {70000, 0, 230000},
	    {299000, 5000, 1000},  {300000, 0, 0},     {300000, 10, 0},   {131072, 1, 1},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint8_t *got;
		uint64_t glen;
		struct dnet_obj_info info;
		assert_int_equal(do_read(f->b, id, cases[i].off, cases[i].size, 0, &got, &glen, &info),
				 0);
		assert_int_equal(glen, cases[i].want);
		assert_int_equal(info.size, size);
		if (glen)
			assert_memory_equal(got, data + cases[i].off, glen);
		free(got);
	}
	uint8_t *got;
	uint64_t glen;
	assert_int_equal(do_read(f->b, id, size + 1, 0, 0, &got, &glen, NULL), DNET_ERANGE);
	assert_int_equal(do_read(f->b, id, UINT64_MAX, 1, 0, &got, &glen, NULL), DNET_ERANGE);

	/* small object: offset == size -> 0 bytes, beyond -> ERANGE */
	key_id(id, "ranges-small", 0);
	assert_int_equal(do_write(f->b, id, 0, data, 100), 0);
	assert_int_equal(do_read(f->b, id, 100, 0, 0, &got, &glen, NULL), 0);
	assert_int_equal(glen, 0);
	free(got);
	assert_int_equal(do_read(f->b, id, 101, 0, 0, &got, &glen, NULL), DNET_ERANGE);
	assert_int_equal(do_read(f->b, id, 40, 20, 0, &got, &glen, NULL), 0);
	assert_int_equal(glen, 20);
	assert_memory_equal(got, data + 40, 20);
	free(got);
	free(data);
}

static void test_update_range(void **state)
{
	struct fx *f = *state;
	uint8_t id[DNET_ID_SIZE];
	key_id(id, "update", 0);
	uint64_t size = 150000;
	uint8_t *model = malloc(1 << 20);
	assert_non_null(model);
	fill_random(model, size);
	assert_int_equal(do_write(f->b, id, 0, model, size), 0);

	/* in the middle, across a block boundary */
	uint8_t patch[3000];
	fill_random(patch, sizeof(patch));
	assert_int_equal(do_write(f->b, id, 64000, patch, sizeof(patch)), 0);
	memcpy(model + 64000, patch, sizeof(patch));
	expect_content(f->b, id, model, size);

	/* append at offset == size */
	uint8_t *more = random_buf(100000);
	assert_int_equal(do_write(f->b, id, size, more, 100000), 0);
	memcpy(model + size, more, 100000);
	size += 100000;
	expect_content(f->b, id, model, size);

	/* overlapping the end: grows */
	assert_int_equal(do_write(f->b, id, size - 10, patch, sizeof(patch)), 0);
	memcpy(model + size - 10, patch, sizeof(patch));
	size += sizeof(patch) - 10;
	expect_content(f->b, id, model, size);

	/* past the end, nonexistent, and offset 0 = replace */
	assert_int_equal(do_write(f->b, id, size + 1, patch, 10), DNET_ERANGE);
	expect_content(f->b, id, model, size);
	uint8_t other[DNET_ID_SIZE];
	key_id(other, "update-missing", 0);
	assert_int_equal(do_write(f->b, other, 10, patch, 10), DNET_ENOENT);
	assert_int_equal(do_write(f->b, id, 0, patch, 10), 0);
	expect_content(f->b, id, patch, 10);

	struct dnet_backend_stat st;
	assert_int_equal(ops->stat(f->b, &st), 0);
	assert_int_equal(st.objects, 1);
	assert_int_equal(st.bytes, 10);
	assert_int_equal(count_dir(f->dir) > 0, 1);
	char tmp[128];
	snprintf(tmp, sizeof(tmp), "%s/tmp", f->dir);
	assert_int_equal(count_dir(tmp), 0);
	free(more);
	free(model);
}

static void test_upload(void **state)
{
	struct fx *f = *state;
	const uint64_t total = 20u << 20, chunk = 8u << 20;
	uint8_t id[DNET_ID_SIZE];
	key_id(id, "upload", 0);
	uint8_t *data = random_buf(total);

	/* in order: PREPARE, PLAIN, COMMIT with the last bytes */
	assert_int_equal(do_chunk(f->b, id, DNET_IO_PREPARE, 7, total, 0, data, chunk), 0);
	assert_int_equal(ops->lookup(f->b, id, &(struct dnet_obj_info){0}), DNET_ENOENT);
	assert_int_equal(do_chunk(f->b, id, DNET_IO_PLAIN, 7, total, chunk, data + chunk, chunk), 0);
	assert_int_equal(do_chunk(f->b, id, DNET_IO_PLAIN, 8, total, chunk, data, 1), DNET_ENOENT);
	assert_int_equal(do_chunk(f->b, id, DNET_IO_PLAIN, 7, total, total - 1, data, 2),
			 DNET_ERANGE);
	assert_int_equal(do_chunk(f->b, id, DNET_IO_COMMIT, 7, total, 2 * chunk, data + 2 * chunk,
				  total - 2 * chunk),
			 0);
	expect_content(f->b, id, data, total);
	/* the upload is gone after COMMIT */
	assert_int_equal(do_chunk(f->b, id, DNET_IO_PLAIN, 7, total, 0, data, 1), DNET_ENOENT);

	/* out of order, odd chunk sizes, empty COMMIT; the old object stays until COMMIT */
	uint8_t *data2 = random_buf(total);
	const uint64_t c2 = 3000001;
	assert_int_equal(do_chunk(f->b, id, DNET_IO_PREPARE, 9, total, total - c2, data2 + total - c2,
				  c2),
			 0);
	for (uint64_t off = 0; off < total - c2; off += c2) {
		uint64_t n = total - c2 - off < c2 ? total - c2 - off : c2;
		assert_int_equal(do_chunk(f->b, id, DNET_IO_PLAIN, 9, total, off, data2 + off, n), 0);
	}
	expect_content(f->b, id, data, total);
	assert_int_equal(do_chunk(f->b, id, DNET_IO_COMMIT, 9, total, 0, NULL, 0), 0);
	expect_content(f->b, id, data2, total);

	/* incomplete COMMIT is refused and the upload survives; PREPARE+COMMIT at once */
	uint8_t small[DNET_ID_SIZE];
	key_id(small, "upload-small", 0);
	assert_int_equal(do_chunk(f->b, small, DNET_IO_PREPARE, 1, 1000, 0, data, 500), 0);
	assert_int_equal(do_chunk(f->b, small, DNET_IO_COMMIT, 1, 1000, 0, NULL, 0), DNET_EINVAL);
	assert_int_equal(do_chunk(f->b, small, DNET_IO_COMMIT, 1, 1000, 500, data + 500, 500), 0);
	expect_content(f->b, small, data, 1000);
	assert_int_equal(do_chunk(f->b, small, DNET_IO_PREPARE | DNET_IO_COMMIT, 2, 0, 0, NULL, 0),
			 0);
	expect_content(f->b, small, data, 0);
	assert_int_equal(do_chunk(f->b, small, DNET_IO_COMMIT, 3, 0, 0, NULL, 0), DNET_ENOENT);

	/* unknown length (a pipe): PREPARE says total 0, COMMIT fixes the size; a hole
	 * (a chunk never sent) is refused at COMMIT */
	uint8_t pipe_id[DNET_ID_SIZE];
	key_id(pipe_id, "upload-pipe", 0);
	assert_int_equal(do_chunk(f->b, pipe_id, DNET_IO_PREPARE, 20, 0, 0, data, chunk), 0);
	assert_int_equal(do_chunk(f->b, pipe_id, DNET_IO_PLAIN, 20, 0, chunk, data + chunk, chunk), 0);
	assert_int_equal(do_chunk(f->b, pipe_id, DNET_IO_COMMIT, 20, 0, 2 * chunk, data + 2 * chunk,
				  12345),
			 0);
	expect_content(f->b, pipe_id, data, 2 * chunk + 12345);
	assert_int_equal(do_chunk(f->b, pipe_id, DNET_IO_PREPARE, 21, 0, 0, data, 1000), 0);
	assert_int_equal(do_chunk(f->b, pipe_id, DNET_IO_COMMIT, 21, 0, 2000, data + 2000, 1000),
			 DNET_EINVAL);
	expect_content(f->b, pipe_id, data, 2 * chunk + 12345);

	/* known size, out of order, a chunk never sent: the hole is refused at COMMIT */
	assert_int_equal(do_chunk(f->b, pipe_id, DNET_IO_PREPARE, 22, 3000, 2000, data, 1000), 0);
	assert_int_equal(do_chunk(f->b, pipe_id, DNET_IO_COMMIT, 22, 3000, 0, data, 1000), DNET_EINVAL);
	assert_int_equal(do_chunk(f->b, pipe_id, DNET_IO_COMMIT, 22, 3000, 1000, data + 1000, 1000), 0);

	/* two uploads of one key interleaved: distinct temp files */
	assert_int_equal(do_chunk(f->b, small, DNET_IO_PREPARE, 10, 200000, 0, data, 100000), 0);
	assert_int_equal(do_chunk(f->b, small, DNET_IO_PREPARE, 11, 200000, 0, data2, 100000), 0);
	assert_int_equal(
	    do_chunk(f->b, small, DNET_IO_COMMIT, 10, 200000, 100000, data + 100000, 100000), 0);
	expect_content(f->b, small, data, 200000);
	assert_int_equal(
	    do_chunk(f->b, small, DNET_IO_COMMIT, 11, 200000, 100000, data2 + 100000, 100000), 0);
	expect_content(f->b, small, data2, 200000);

	/* an upload in flight at close is discarded */
	assert_int_equal(do_chunk(f->b, small, DNET_IO_PREPARE, 12, 200000, 0, data, 100000), 0);
	reopen(f);
	assert_int_equal(do_chunk(f->b, small, DNET_IO_COMMIT, 12, 200000, 100000, data, 100000),
			 DNET_ENOENT);
	expect_content(f->b, small, data2, 200000);
	free(data);
	free(data2);
}

static void test_upload_timeout(void **state)
{
	struct fx *f = *state;
	ops->close(f->b);
	f->cfg.upload_timeout_s = 1;
	assert_int_equal(ops->open(&f->cfg, &f->b), 0);
	uint8_t id[DNET_ID_SIZE], id2[DNET_ID_SIZE];
	uint8_t data[100] = {1};
	key_id(id, "abandoned", 0);
	key_id(id2, "fresh", 0);
	assert_int_equal(do_chunk(f->b, id, DNET_IO_PREPARE, 1, 200, 0, data, 100), 0);
	usleep(2100000);
	/* any PREPARE sweeps (at most once per min(timeout, 60 s)) */
	assert_int_equal(do_chunk(f->b, id2, DNET_IO_PREPARE, 1, 200, 0, data, 100), 0);
	assert_int_equal(do_chunk(f->b, id, DNET_IO_COMMIT, 1, 200, 100, data, 100), DNET_ENOENT);
	assert_int_equal(do_chunk(f->b, id2, DNET_IO_COMMIT, 1, 200, 100, data, 100), 0);
	char tmp[128];
	snprintf(tmp, sizeof(tmp), "%s/tmp", f->dir);
	assert_int_equal(count_dir(tmp), 0);
}

static void test_overwrite_delete(void **state)
{
	struct fx *f = *state;
	uint8_t id[DNET_ID_SIZE];
	key_id(id, "ow", 0);
	uint8_t *a = random_buf(70000), *b2 = random_buf(5000);
	assert_int_equal(do_write(f->b, id, 0, a, 70000), 0);
	assert_int_equal(do_write(f->b, id, 0, b2, 5000), 0);
	expect_content(f->b, id, b2, 5000);
	struct dnet_backend_stat st;
	assert_int_equal(ops->stat(f->b, &st), 0);
	assert_int_equal(st.objects, 1);
	assert_int_equal(st.bytes, 5000);
	assert_int_equal(ops->del(f->b, id), 0);
	uint8_t *got;
	uint64_t glen;
	struct dnet_obj_info info;
	assert_int_equal(do_read(f->b, id, 0, 0, 0, &got, &glen, NULL), DNET_ENOENT);
	assert_int_equal(ops->lookup(f->b, id, &info), DNET_ENOENT);
	assert_int_equal(ops->del(f->b, id), DNET_ENOENT);
	assert_int_equal(ops->stat(f->b, &st), 0);
	assert_int_equal(st.objects, 0);
	assert_int_equal(st.bytes, 0);
	assert_int_equal(st.disk_bytes, 0);
	free(a);
	free(b2);
}

struct iter_ctx {
	uint8_t ids[64][DNET_ID_SIZE];
	int seen[64];
	int n;
	int unknown;
	int calls;
	int stop_after;
};

static int iter_cb(void *arg, const uint8_t *id, const struct dnet_obj_info *info)
{
	struct iter_ctx *c = arg;
	int found = 0;
	for (int i = 0; i < c->n; i++) {
		if (!memcmp(c->ids[i], id, DNET_ID_SIZE)) {
			c->seen[i]++;
			found = 1;
			if (info->size != (uint64_t)i * 1000)
				c->unknown++;
		}
	}
	if (!found)
		c->unknown++;
	c->calls++;
	return c->stop_after && c->calls == c->stop_after ? 77 : 0;
}

static void test_iterate_reopen(void **state)
{
	struct fx *f = *state;
	struct iter_ctx *c = calloc(1, sizeof(*c));
	assert_non_null(c);
	uint8_t *data = random_buf(64000);
	c->n = 64;
	for (int i = 0; i < c->n; i++) {
		key_id(c->ids[i], "iter", i);
		assert_int_equal(do_write(f->b, c->ids[i], 0, data, (uint64_t)i * 1000), 0);
	}
	/* junk the iterator must skip */
	char p[256];
	snprintf(p, sizeof(p), "%s/00/not-an-object", f->dir);
	close(open(p, O_CREAT | O_WRONLY, 0644));
	snprintf(p, sizeof(p), "%s/tmp/%s", f->dir, "0000000000000001.tmp");
	close(open(p, O_CREAT | O_WRONLY, 0644));

	assert_int_equal(ops->iterate(f->b, iter_cb, c), 0);
	assert_int_equal(c->calls, c->n);
	assert_int_equal(c->unknown, 0);
	for (int i = 0; i < c->n; i++)
		assert_int_equal(c->seen[i], 1);

	memset(c->seen, 0, sizeof(c->seen));
	c->calls = 0;
	c->stop_after = 5;
	assert_int_equal(ops->iterate(f->b, iter_cb, c), 77);
	assert_int_equal(c->calls, 5);

	struct dnet_backend_stat st1, st2;
	assert_int_equal(ops->stat(f->b, &st1), 0);
	reopen(f);
	assert_int_equal(ops->stat(f->b, &st2), 0);
	assert_int_equal(st1.objects, st2.objects);
	assert_int_equal(st1.bytes, st2.bytes);
	assert_int_equal(st1.disk_bytes, st2.disk_bytes);
	assert_int_equal(st2.objects, 64);
	for (int i = 0; i < c->n; i++)
		expect_content(f->b, c->ids[i], data, (uint64_t)i * 1000);
	memset(c->seen, 0, sizeof(c->seen));
	c->calls = 0;
	c->stop_after = 0;
	assert_int_equal(ops->iterate(f->b, iter_cb, c), 0);
	assert_int_equal(c->calls, c->n);
	free(c);
	free(data);
}

static void test_corruption(void **state)
{
	struct fx *f = *state;
	uint8_t id[DNET_ID_SIZE], big[DNET_ID_SIZE];
	char path[512], bpath[512];
	uint8_t *got;
	uint64_t glen;
	struct dnet_obj_info info;
	struct dnet_backend_stat st;

	/* small object, one byte of data flipped */
	key_id(id, "corrupt", 0);
	uint8_t *data = random_buf(10000);
	assert_int_equal(do_write(f->b, id, 0, data, 10000), 0);
	obj_path(f, id, path, sizeof(path));
	flip_byte(path, HDR + 5000);
	assert_int_equal(do_read(f->b, id, 0, 0, 0, &got, &glen, NULL), DNET_ECORRUPT);
	assert_int_equal(do_read(f->b, id, 9000, 10, 0, &got, &glen, NULL), DNET_ECORRUPT);
	assert_int_equal(ops->stat(f->b, &st), 0);
	assert_int_equal(st.corrupt, 2);
	/* tools may still fetch the bytes */
	assert_int_equal(do_read(f->b, id, 0, 0, DNET_FLAG_NOCSUM, &got, &glen, NULL), 0);
	assert_int_equal(glen, 10000);
	assert_int_equal(got[5000], data[5000] ^ 0x5a);
	free(got);
	/* a range update must not launder the bad block... */
	assert_int_equal(do_write(f->b, id, 9000, data, 10), DNET_ECORRUPT);
	/* ...but may overwrite it entirely, and a replace always works */
	assert_int_equal(do_write(f->b, id, 0, data, 10000), 0);
	expect_content(f->b, id, data, 10000);

	/* header byte flipped: read and lookup refuse */
	flip_byte(path, 20);
	assert_int_equal(do_read(f->b, id, 0, 0, 0, &got, &glen, NULL), DNET_ECORRUPT);
	assert_int_equal(do_read(f->b, id, 0, 0, DNET_FLAG_NOCSUM, &got, &glen, NULL),
			 DNET_ECORRUPT);
	assert_int_equal(ops->lookup(f->b, id, &info), DNET_ECORRUPT);

	/* large object (fd path): only touched blocks are verified */
	key_id(big, "corrupt-big", 0);
	uint8_t *bdata = random_buf(1 << 20);
	assert_int_equal(do_write(f->b, big, 0, bdata, 1 << 20), 0);
	obj_path(f, big, bpath, sizeof(bpath));
	flip_byte(bpath, HDR + 3 * 65536 + 17); /* block 3 */
	assert_int_equal(do_read(f->b, big, 0, 0, 0, &got, &glen, NULL), DNET_ECORRUPT);
	assert_int_equal(do_read(f->b, big, 3 * 65536, 1, 0, &got, &glen, NULL), DNET_ECORRUPT);
	assert_int_equal(do_read(f->b, big, 0, 3 * 65536, 0, &got, &glen, NULL), 0);
	assert_memory_equal(got, bdata, 3 * 65536);
	free(got);
	assert_int_equal(do_read(f->b, big, 4 * 65536, 0, 0, &got, &glen, NULL), 0);
	assert_int_equal(glen, (1 << 20) - 4 * 65536);
	free(got);
	/* a damaged footer entry is caught too */
	flip_byte(bpath, HDR + (1 << 20) + 8 * 10 + 2);
	assert_int_equal(do_read(f->b, big, 10 * 65536 + 5, 100, 0, &got, &glen, NULL),
			 DNET_ECORRUPT);
	/* a truncated file */
	assert_int_equal(truncate(bpath, HDR + (1 << 20) - 1), 0);
	assert_int_equal(do_read(f->b, big, (1 << 20) - 10, 0, 0, &got, &glen, NULL),
			 DNET_ECORRUPT);
	assert_int_equal(do_read(f->b, big, 0, 10, 0, &got, &glen, NULL), DNET_ECORRUPT);
	free(data);
	free(bdata);
}

static void test_tmp_cleanup(void **state)
{
	struct fx *f = *state;
	uint8_t id[DNET_ID_SIZE];
	key_id(id, "tmp-victim", 0);
	uint8_t data[1000];
	fill_random(data, sizeof(data));
	assert_int_equal(do_write(f->b, id, 0, data, sizeof(data)), 0);

	/* crash leftovers: a half-written replacement of the object and an upload */
	char hex[2 * DNET_ID_SIZE + 1], p[512];
	dnet_id_to_hex(hex, id, DNET_ID_SIZE);
	snprintf(p, sizeof(p), "%s/tmp/00000000000000aa.tmp", f->dir);
	int fd = open(p, O_CREAT | O_WRONLY, 0644);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "garbage", 7), 7);
	close(fd);
	snprintf(p, sizeof(p), "%s/tmp/%s.0000000000000001.up", f->dir, hex);
	close(open(p, O_CREAT | O_WRONLY, 0644));

	expect_content(f->b, id, data, sizeof(data)); /* never visible */
	reopen(f);
	snprintf(p, sizeof(p), "%s/tmp", f->dir);
	assert_int_equal(count_dir(p), 0);
	expect_content(f->b, id, data, sizeof(data));
	struct dnet_backend_stat st;
	assert_int_equal(ops->stat(f->b, &st), 0);
	assert_int_equal(st.objects, 1);

	/* the directory is locked against a second engine */
	struct dnet_backend *b2 = NULL;
	assert_int_equal(ops->open(&f->cfg, &b2), DNET_EBUSY);
	assert_null(b2);
}

/* ---- concurrency ---------------------------------------------------------------- */

#define NTHREADS 8
#define NWRITES 200
#define WSIZE 10240

struct wctx {
	struct fx *f;
	int t;
	int errors;
	struct wslot {
		int calls;
		int status;
	} slot[NWRITES];
};

static void mt_done(void *arg, int status, const struct dnet_obj_info *info)
{
	struct wslot *s = arg;
	(void)info;
	if (status)
		__atomic_store_n(&s->status, status, __ATOMIC_SEQ_CST);
	__atomic_fetch_add(&s->calls, 1, __ATOMIC_SEQ_CST);
}

static void make_payload(uint8_t *buf, int t, int i)
{
	uint64_t s = ((uint64_t)t << 32) | (uint64_t)i;
	for (int k = 0; k < WSIZE; k += 8) {
		s = s * 6364136223846793005ull + 1442695040888963407ull;
		memcpy(buf + k, &s, 8);
	}
}

static void *writer(void *arg)
{
	struct wctx *c = arg;
	uint8_t *buf = malloc(WSIZE);
	if (!buf) {
		c->errors++;
		return NULL;
	}
	for (int i = 0; i < NWRITES; i++) {
		uint8_t id[DNET_ID_SIZE];
		char key[64];
		snprintf(key, sizeof(key), "mt-%d-%d", c->t, i % (NWRITES / 2));
		dnet_id_from_key(id, key, strlen(key));
		make_payload(buf, c->t, i);
		struct dnet_write_req req;
		memset(&req, 0, sizeof(req));
		req.id = id;
		req.io.size = WSIZE;
		req.io.timestamp = (uint64_t)i + 1;
		req.data = buf;
		ops->write(c->f->b, &req, mt_done, &c->slot[i]);
		/* the engine consumed buf before returning: scribble on it */
		memset(buf, 0xee, WSIZE);
		/* like a client, wait for the ack of every 4th write before going on */
		if (i % 4 == 3)
			while (!__atomic_load_n(&c->slot[i].calls, __ATOMIC_SEQ_CST))
				usleep(50);
	}
	free(buf);
	return NULL;
}

struct bg_ctx {
	struct fx *f;
	int stop;
	int errors;
	int rounds;
};

static int bg_iter_cb(void *arg, const uint8_t *id, const struct dnet_obj_info *info)
{
	(void)arg;
	(void)id;
	(void)info;
	return 0;
}

static void *background(void *arg)
{
	struct bg_ctx *c = arg;
	while (!__atomic_load_n(&c->stop, __ATOMIC_SEQ_CST)) {
		struct dnet_backend_stat st;
		if (ops->stat(c->f->b, &st) || ops->iterate(c->f->b, bg_iter_cb, NULL))
			c->errors++;
		c->rounds++;
	}
	return NULL;
}

static void run_concurrent(struct fx *f, int policy)
{
	struct wctx *c = calloc(NTHREADS, sizeof(*c));
	pthread_t th[NTHREADS], bg;
	struct bg_ctx bgc = {.f = f};
	assert_non_null(c);
	assert_int_equal(pthread_create(&bg, NULL, background, &bgc), 0);
	for (int t = 0; t < NTHREADS; t++) {
		c[t].f = f;
		c[t].t = t;
		assert_int_equal(pthread_create(&th[t], NULL, writer, &c[t]), 0);
	}
	for (int t = 0; t < NTHREADS; t++)
		pthread_join(th[t], NULL);
	/* let the last batch land */
	for (int t = 0; t < NTHREADS; t++)
		for (int i = 0; i < NWRITES; i++)
			while (!__atomic_load_n(&c[t].slot[i].calls, __ATOMIC_SEQ_CST))
				usleep(100);
	__atomic_store_n(&bgc.stop, 1, __ATOMIC_SEQ_CST);
	pthread_join(bg, NULL);
	assert_int_equal(bgc.errors, 0);

	uint8_t *want = malloc(WSIZE);
	assert_non_null(want);
	for (int t = 0; t < NTHREADS; t++) {
		assert_int_equal(c[t].errors, 0);
		for (int i = 0; i < NWRITES; i++) {
			assert_int_equal(c[t].slot[i].calls, 1);
			assert_int_equal(c[t].slot[i].status, 0);
		}
		/* keys were written twice: the second write (i + NWRITES/2) wins */
		for (int i = NWRITES / 2; i < NWRITES; i++) {
			uint8_t id[DNET_ID_SIZE];
			char key[64];
			snprintf(key, sizeof(key), "mt-%d-%d", t, i - NWRITES / 2);
			dnet_id_from_key(id, key, strlen(key));
			make_payload(want, t, i);
			expect_content(f->b, id, want, WSIZE);
		}
	}
	struct dnet_backend_stat st;
	assert_int_equal(ops->stat(f->b, &st), 0);
	assert_int_equal(st.objects, NTHREADS * NWRITES / 2);
	assert_int_equal(st.bytes, (uint64_t)NTHREADS * NWRITES / 2 * WSIZE);
	assert_int_equal(st.synced_writes, NTHREADS * NWRITES);
	if (policy == DNET_FSYNC_BATCH) {
		print_message("batch: %llu writes made durable by %llu syncs\n",
			      (unsigned long long)st.synced_writes, (unsigned long long)st.syncs);
		assert_true(st.syncs < st.synced_writes);
	} else {
		assert_int_equal(st.syncs, 2 * NTHREADS * NWRITES);
	}
	free(want);
	free(c);
}

static void test_concurrent_always(void **state)
{
	run_concurrent(*state, DNET_FSYNC_ALWAYS);
}

static void test_concurrent_batch(void **state)
{
	run_concurrent(*state, DNET_FSYNC_BATCH);
}

/* Group commit keeps per-ID order: replace, replace, range update, delete. */
static void test_batch_ordering(void **state)
{
	struct fx *f = *state;
	uint8_t id[DNET_ID_SIZE];
	key_id(id, "order", 0);
	uint8_t v1[1000], v2[2000], patch[10];
	fill_random(v1, sizeof(v1));
	fill_random(v2, sizeof(v2));
	fill_random(patch, sizeof(patch));
	struct st_wres w1, w2;
	struct dnet_write_req r;
	st_wres_init(&w1);
	st_wres_init(&w2);
	memset(&r, 0, sizeof(r));
	r.id = id;
	r.io.timestamp = 1;
	r.io.size = sizeof(v1);
	r.data = v1;
	ops->write(f->b, &r, st_wres_done, &w1);
	r.io.size = sizeof(v2);
	r.data = v2;
	ops->write(f->b, &r, st_wres_done, &w2);
	/* the update waits for both queued writes, then applies on top of v2 */
	assert_int_equal(do_write(f->b, id, 500, patch, sizeof(patch)), 0);
	assert_int_equal(w1.calls, 1);
	assert_int_equal(w2.calls, 1);
	assert_int_equal(w1.status, 0);
	assert_int_equal(w2.status, 0);
	memcpy(v2 + 500, patch, sizeof(patch));
	expect_content(f->b, id, v2, sizeof(v2));

	/* a delete queued behind a write removes that write's object */
	struct st_wres w3;
	st_wres_init(&w3);
	r.io.size = sizeof(v1);
	r.data = v1;
	ops->write(f->b, &r, st_wres_done, &w3);
	assert_int_equal(ops->del(f->b, id), 0);
	assert_int_equal(w3.calls, 1);
	struct dnet_obj_info info;
	assert_int_equal(ops->lookup(f->b, id, &info), DNET_ENOENT);
	assert_int_equal(ops->sync(f->b), 0);
	st_wres_destroy(&w1);
	st_wres_destroy(&w2);
	st_wres_destroy(&w3);
}

/* close() completes writes still waiting for their batch. */
static void test_batch_close_drains(void **state)
{
	struct fx *f = *state;
	ops->close(f->b);
	f->cfg.batch_max_delay_us = 5000000; /* nothing would commit for 5 s */
	f->cfg.batch_max_ops = 100000;
	assert_int_equal(ops->open(&f->cfg, &f->b), 0);
	enum { N = 50 };
	struct st_wres w[N];
	uint8_t ids[N][DNET_ID_SIZE];
	uint8_t data[N][100];
	for (int i = 0; i < N; i++) {
		st_wres_init(&w[i]);
		key_id(ids[i], "drain", i);
		fill_random(data[i], sizeof(data[i]));
		struct dnet_write_req r;
		memset(&r, 0, sizeof(r));
		r.id = ids[i];
		r.io.size = sizeof(data[i]);
		r.io.timestamp = 5;
		r.data = data[i];
		ops->write(f->b, &r, st_wres_done, &w[i]);
	}
	ops->close(f->b);
	f->b = NULL;
	for (int i = 0; i < N; i++) {
		assert_int_equal(w[i].calls, 1);
		assert_int_equal(w[i].status, 0);
		st_wres_destroy(&w[i]);
	}
	f->cfg.batch_max_delay_us = 2000;
	assert_int_equal(ops->open(&f->cfg, &f->b), 0);
	for (int i = 0; i < N; i++)
		expect_content(f->b, ids[i], data[i], sizeof(data[i]));
}

/* ---- failures -------------------------------------------------------------------- */

/* As root we cannot use a read-only directory; RLIMIT_FSIZE makes writes fail with
 * EFBIG instead (SIGXFSZ ignored), which the engine reports as DNET_ETOOBIG. */
static void test_write_fails_efbig(void **state)
{
	struct fx *f = *state;
	uint8_t id[DNET_ID_SIZE];
	key_id(id, "efbig", 0);
	uint8_t *old = random_buf(10000), *big = random_buf(1 << 20);
	assert_int_equal(do_write(f->b, id, 0, old, 10000), 0);

	struct rlimit saved, lim;
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &saved), 0);
	void (*oldsig)(int) = signal(SIGXFSZ, SIG_IGN);
	lim = saved;
	lim.rlim_cur = 200000;
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
	int e1 = do_write(f->b, id, 0, big, 1 << 20);
	int e2 = do_write(f->b, id, 10000, big, 500000);
	int e3 = do_chunk(f->b, id, DNET_IO_PREPARE, 1, 4 << 20, 0, big, 1 << 20);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &saved), 0);
	signal(SIGXFSZ, oldsig);

	assert_int_equal(e1, DNET_ETOOBIG);
	assert_int_equal(e2, DNET_ETOOBIG);
	assert_int_equal(e3, DNET_ETOOBIG);
	expect_content(f->b, id, old, 10000);
	char p[128];
	snprintf(p, sizeof(p), "%s/tmp", f->dir);
	assert_int_equal(count_dir(p), 0);
	free(old);
	free(big);
}

/* A real ENOSPC on a 2 MiB tmpfs (needs CAP_SYS_ADMIN; skipped otherwise). */
static void test_write_fails_enospc(void **state)
{
	struct fx *f = *state;
	snprintf(f->mnt, sizeof(f->mnt), "%s-mnt", f->dir);
	if (mkdir(f->mnt, 0755) < 0 || mount("dnet-test", f->mnt, "tmpfs", 0, "size=2m") < 0) {
		rmdir(f->mnt);
		f->mnt[0] = '\0';
		skip();
	}
	ops->close(f->b);
	f->b = NULL;
	char path[128];
	snprintf(path, sizeof(path), "%s/data", f->mnt);
	f->cfg.path = path;
	for (int policy = DNET_FSYNC_NEVER; policy <= DNET_FSYNC_BATCH; policy++) {
		f->cfg.fsync = policy;
		assert_int_equal(ops->open(&f->cfg, &f->b), 0);
		uint8_t ids[64][DNET_ID_SIZE];
		uint8_t *data = random_buf(100000);
		int stored = 0, err = 0;
		for (; stored < 64; stored++) {
			key_id(ids[stored], "full", stored);
			err = do_write(f->b, ids[stored], 0, data, 100000);
			if (err)
				break;
		}
		assert_int_equal(err, DNET_ENOSPC);
		assert_true(stored > 2);
		/* an overwrite that does not fit fails, the old object survives */
		uint8_t *big = random_buf(1 << 20);
		assert_int_equal(do_write(f->b, ids[0], 0, big, 1 << 20), DNET_ENOSPC);
		assert_int_equal(do_chunk(f->b, ids[1], DNET_IO_PREPARE, 5, 1 << 20, 0, big, 1000),
				 DNET_ENOSPC);
		for (int i = 0; i < stored; i++)
			expect_content(f->b, ids[i], data, 100000);
		char p[160];
		snprintf(p, sizeof(p), "%s/tmp", path);
		assert_int_equal(count_dir(p), 0);
		/* deleting frees space for new writes */
		assert_int_equal(ops->del(f->b, ids[0]), 0);
		assert_int_equal(do_write(f->b, ids[stored], 0, data, 100000), 0);
		ops->close(f->b);
		f->b = NULL;
		st_rm_rf(path);
		free(big);
		free(data);
	}
	f->cfg.path = f->dir;
	assert_int_equal(ops->open(&f->cfg, &f->b), 0);
}

static void test_bad_requests(void **state)
{
	struct fx *f = *state;
	uint8_t id[DNET_ID_SIZE];
	key_id(id, "bad", 0);
	struct dnet_io_attr io;
	memset(&io, 0, sizeof(io));
	io.ioflags = 0x100;
	assert_int_equal(do_write_io(f->b, id, &io, "x", NULL), DNET_EINVAL);
	memset(&io, 0, sizeof(io));
	io.size = 10;
	assert_int_equal(do_write_io(f->b, id, &io, NULL, NULL), DNET_EINVAL);
	memset(&io, 0, sizeof(io));
	io.ioflags = DNET_IO_PREPARE;
	io.total_size = UINT64_MAX;
	assert_int_equal(do_write_io(f->b, id, &io, NULL, NULL), DNET_ETOOBIG);
	assert_int_equal(do_chunk(f->b, id, DNET_IO_PREPARE, 1, 10, 5, "0123456789", 10),
			 DNET_ERANGE);

	struct dnet_backend *b2 = NULL;
	struct dnet_backend_config cfg;
	dnet_backend_config_defaults(&cfg);
	assert_int_equal(ops->open(&cfg, &b2), DNET_EINVAL);
	cfg.path = "/proc/version/nope";
	assert_true(ops->open(&cfg, &b2) < 0);
	assert_null(b2);
}

int main(void)
{
	const char *lvl = getenv("DNET_TEST_LOG");
	dnet_log_level = lvl ? dnet_log_level_parse(lvl) : -1; /* expected errors are noise */
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_roundtrip_sizes, setup_never, teardown),
	    cmocka_unit_test_setup_teardown(test_roundtrip_sizes, setup_batch, teardown),
	    cmocka_unit_test_setup_teardown(test_ranges, setup_never, teardown),
	    cmocka_unit_test_setup_teardown(test_update_range, setup_never, teardown),
	    cmocka_unit_test_setup_teardown(test_update_range, setup_batch, teardown),
	    cmocka_unit_test_setup_teardown(test_upload, setup_never, teardown),
	    cmocka_unit_test_setup_teardown(test_upload, setup_always, teardown),
	    cmocka_unit_test_setup_teardown(test_upload_timeout, setup_never, teardown),
	    cmocka_unit_test_setup_teardown(test_overwrite_delete, setup_never, teardown),
	    cmocka_unit_test_setup_teardown(test_overwrite_delete, setup_always, teardown),
	    cmocka_unit_test_setup_teardown(test_overwrite_delete, setup_batch, teardown),
	    cmocka_unit_test_setup_teardown(test_iterate_reopen, setup_never, teardown),
	    cmocka_unit_test_setup_teardown(test_corruption, setup_never, teardown),
	    cmocka_unit_test_setup_teardown(test_tmp_cleanup, setup_never, teardown),
	    cmocka_unit_test_setup_teardown(test_concurrent_always, setup_always, teardown),
	    cmocka_unit_test_setup_teardown(test_concurrent_batch, setup_batch, teardown),
	    cmocka_unit_test_setup_teardown(test_batch_ordering, setup_batch, teardown),
	    cmocka_unit_test_setup_teardown(test_batch_close_drains, setup_batch, teardown),
	    cmocka_unit_test_setup_teardown(test_write_fails_efbig, setup_never, teardown),
	    cmocka_unit_test_setup_teardown(test_write_fails_enospc, setup_never, teardown),
	    cmocka_unit_test_setup_teardown(test_bad_requests, setup_never, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
