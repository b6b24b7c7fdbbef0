/* test_blob_backend.c - the blob engine (src/storage/blob.c): round trips of many
 * sizes, ranges, updates, chunked uploads, deletes that survive restarts, index files,
 * torn tails, corruption, group commit under concurrency, compaction, ENOSPC, dead
 * records marked and punched (crash points, torn marks, read leases), deletes in
 * place when not even a tombstone fits, automatic compaction. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <xxhash.h>

#include "common/errors.h"
#include "common/util.h"
#include "storage/backend.h"
#include "storage_test.h"
#include "storage/blob.h"

static char root[256];
static const struct dnet_backend_ops *ops;

/* ---- helpers -------------------------------------------------------------------- */

static void mkid(uint8_t id[DNET_ID_SIZE], uint64_t n)
{
	uint64_t x = n * 0x9E3779B97F4A7C15ull + 0x1234567ull;
	for (int i = 0; i < DNET_ID_SIZE; i += 8) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		memcpy(id + i, &x, 8);
	}
}

static void fill(uint8_t *p, size_t len, uint64_t seed)
{
	uint64_t x = seed * 0x2545F4914F6CDD1Dull + 1;
	for (size_t i = 0; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = (uint8_t)x;
	}
}

static void dir_for(char *out, size_t n, const char *name)
{
	snprintf(out, n, "%s/%s", root, name);
}

static struct dnet_backend *open_be(const char *dir, int fsync)
{
	struct dnet_backend_config cfg;
	struct dnet_backend *b = NULL;
	dnet_backend_config_defaults(&cfg);
	cfg.path = dir;
	cfg.fsync = fsync;
	assert_int_equal(ops->open(&cfg, &b), 0);
	return b;
}

static int wr(struct dnet_backend *b, const uint8_t *id, uint64_t off, const void *data,
	      uint64_t size, uint32_t flags, uint64_t total, uint64_t cookie,
	      struct dnet_obj_info *info)
{
	struct dnet_io_attr io = {.offset = off, .size = size, .total_size = total,
				  .cookie = cookie, .ioflags = flags};
	int calls;
	int st = st_write_io(ops, b, id, &io, data, dnet_now_real_ns(), info, &calls);
	assert_int_equal(calls, 1);
	return st;
}

static int put(struct dnet_backend *b, uint64_t key, const void *data, uint64_t size)
{
	uint8_t id[DNET_ID_SIZE];
	mkid(id, key);
	return wr(b, id, 0, data, size, 0, 0, 0, NULL);
}

/* Reads through either result form into one malloc()ed buffer. */
static int rd(struct dnet_backend *b, const uint8_t *id, uint64_t off, uint64_t size,
	      uint32_t flags, uint8_t **out, uint64_t *len, struct dnet_obj_info *info)
{
	struct dnet_read_res res;
	int err = ops->read(b, id, off, size, flags, &res);
	if (err)
		return err;
	uint8_t *p = malloc(res.len ? res.len : 1);
	assert_non_null(p);
	if (res.fd >= 0) {
		assert_null(res.buf);
		size_t done = 0;
		while (done < res.len) {
			ssize_t r = pread(res.fd, p + done, res.len - done,
					  (off_t)(res.file_offset + done));
			assert_true(r > 0);
			done += (size_t)r;
		}
		close(res.fd);
	} else if (res.len) {
		assert_non_null(res.buf);
		memcpy(p, res.buf, res.len);
	}
	free(res.buf);
	*out = p;
	*len = res.len;
	if (info)
		*info = res.info;
	return 0;
}

static void expect_obj(struct dnet_backend *b, uint64_t key, uint64_t size, uint64_t seed)
{
	uint8_t id[DNET_ID_SIZE];
	uint8_t *got, *want = malloc(size ? size : 1);
	uint64_t len;
	struct dnet_obj_info info;
	assert_non_null(want);
	mkid(id, key);
	fill(want, size, seed);
	int err = rd(b, id, 0, 0, 0, &got, &len, &info);
	if (err)
		fprintf(stderr, "key %llu: %s\n", (unsigned long long)key, dnet_strerror(err));
	assert_int_equal(err, 0);
	assert_int_equal(len, size);
	assert_int_equal(info.size, size);
	assert_memory_equal(got, want, size);
	uint8_t c[16];
	dnet_csum(want, size, c);
	assert_memory_equal(info.csum, c, 16);
	free(got);
	free(want);
}

static void put_seeded(struct dnet_backend *b, uint64_t key, uint64_t size, uint64_t seed)
{
	uint8_t *d = malloc(size ? size : 1);
	assert_non_null(d);
	fill(d, size, seed);
	assert_int_equal(put(b, key, d, size), 0);
	free(d);
}

/* Newest blob-*.data in dir. */
static void last_blob(const char *dir, char *out, size_t n)
{
	for (unsigned i = 999; i > 0; i--) {
		snprintf(out, n, "%s/blob-%06u.data", dir, i);
		if (access(out, F_OK) == 0)
			return;
	}
	fail_msg("no blob file in %s", dir);
}

static uint64_t file_size(const char *p)
{
	struct stat sb;
	assert_int_equal(stat(p, &sb), 0);
	return (uint64_t)sb.st_size;
}

/* ---- tests ---------------------------------------------------------------------- */

static void test_sizes(void **state)
{
	char dir[300];
	dir_for(dir, sizeof(dir), "sizes");
	struct dnet_backend *b = open_be(dir, DNET_FSYNC_NEVER);
	const uint64_t sizes[] = {0, 1, 4095, 4096, 4097, 65535, 65536, 65537, (1u << 20) + 1};
	const size_t n = sizeof(sizes) / sizeof(sizes[0]);
	for (size_t i = 0; i < n; i++)
		put_seeded(b, i, sizes[i], i + 100);
	for (size_t i = 0; i < n; i++)
		expect_obj(b, i, sizes[i], i + 100);
	struct dnet_backend_stat st;
	assert_int_equal(ops->stat(b, &st), 0);
	assert_int_equal(st.objects, n);
	uint64_t total = 0;
	for (size_t i = 0; i < n; i++)
		total += sizes[i];
	assert_int_equal(st.bytes, total);
	assert_true(st.disk_bytes > total);
	assert_true(st.disk_free > 0);
	ops->close(b);
	b = open_be(dir, DNET_FSYNC_NEVER);
	for (size_t i = 0; i < n; i++)
		expect_obj(b, i, sizes[i], i + 100);
	ops->close(b);
}

static void test_ranges(void **state)
{
	char dir[300];
	dir_for(dir, sizeof(dir), "ranges");
	struct dnet_backend *b = open_be(dir, DNET_FSYNC_NEVER);
	const uint64_t sizes[] = {10000, 300000}; /* buffer path and file-range path */
	for (int k = 0; k < 2; k++) {
		uint64_t size = sizes[k];
		uint8_t *want = malloc(size), *got, id[DNET_ID_SIZE];
		uint64_t len;
		fill(want, size, 7 + (uint64_t)k);
		mkid(id, 50 + (uint64_t)k);
		assert_int_equal(wr(b, id, 0, want, size, 0, 0, 0, NULL), 0);
		const uint64_t cases[][3] = {/* off, size, expected len */
					     {0, 0, size},	   {1, 0, size - 1},
					     {size / 2, 100, 100}, {size - 10, 100, 10},
					     {size - 1, 0, 1},	   {size, 0, 0},
					     {size, 5, 0},	   {0, size + 100, size}};
		for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
			assert_int_equal(rd(b, id, cases[c][0], cases[c][1], 0, &got, &len, NULL),
					 0);
			assert_int_equal(len, cases[c][2]);
			assert_memory_equal(got, want + cases[c][0], len);
			free(got);
		}
		assert_int_equal(rd(b, id, size + 1, 0, 0, &got, &len, NULL), DNET_ERANGE);
		free(want);
	}
	uint8_t id[DNET_ID_SIZE];
	uint8_t *got;
	uint64_t len;
	mkid(id, 9999);
	assert_int_equal(rd(b, id, 0, 0, 0, &got, &len, NULL), DNET_ENOENT);
	struct dnet_obj_info info;
	assert_int_equal(ops->lookup(b, id, &info), DNET_ENOENT);
	ops->close(b);
}

static void test_update(void **state)
{
	char dir[300];
	dir_for(dir, sizeof(dir), "update");
	struct dnet_backend *b = open_be(dir, DNET_FSYNC_ALWAYS);
	uint8_t id[DNET_ID_SIZE], a[100], c[100], want[250], *got;
	uint64_t len;
	struct dnet_obj_info info;
	mkid(id, 1);
	memset(a, 'a', sizeof(a));
	memset(c, 'c', sizeof(c));
	assert_int_equal(wr(b, id, 50, c, 100, 0, 0, 0, NULL), DNET_ENOENT);
	assert_int_equal(wr(b, id, 0, a, 100, 0, 0, 0, NULL), 0);
	assert_int_equal(wr(b, id, 50, c, 100, 0, 0, 0, &info), 0);
	assert_int_equal(info.size, 150);
	memcpy(want, a, 50);
	memcpy(want + 50, c, 100);
	assert_int_equal(rd(b, id, 0, 0, 0, &got, &len, &info), 0);
	assert_int_equal(len, 150);
	assert_memory_equal(got, want, 150);
	uint8_t cs[16];
	dnet_csum(want, 150, cs);
	assert_memory_equal(info.csum, cs, 16);
	free(got);
	/* offset == size appends, offset > size is a range error */
	assert_int_equal(wr(b, id, 150, a, 100, 0, 0, 0, NULL), 0);
	memcpy(want + 150, a, 100);
	assert_int_equal(wr(b, id, 251, a, 1, 0, 0, 0, NULL), DNET_ERANGE);
	assert_int_equal(rd(b, id, 0, 0, 0, &got, &len, NULL), 0);
	assert_int_equal(len, 250);
	assert_memory_equal(got, want, 250);
	free(got);
	struct dnet_backend_stat st;
	ops->stat(b, &st);
	assert_int_equal(st.objects, 1);
	assert_int_equal(st.bytes, 250);
	ops->close(b);
}

static void test_upload(void **state)
{
	char dir[300];
	dir_for(dir, sizeof(dir), "upload");
	struct dnet_backend *b = open_be(dir, DNET_FSYNC_BATCH);
	const uint64_t total = 20u << 20, chunk = 8u << 20;
	uint8_t *data = malloc(total), id[DNET_ID_SIZE], *got;
	uint64_t len;
	struct dnet_obj_info info;
	fill(data, total, 3);
	mkid(id, 77);
	/* a small object under the same ID must stay visible until COMMIT */
	assert_int_equal(wr(b, id, 0, "old", 3, 0, 0, 0, NULL), 0);
	assert_int_equal(wr(b, id, 0, data, 10, DNET_IO_PLAIN, total, 42, NULL), DNET_ENOENT);
	assert_int_equal(wr(b, id, 0, data, chunk, DNET_IO_PREPARE, total, 42, &info), 0);
	assert_int_equal(info.size, chunk);
	assert_int_equal(rd(b, id, 0, 0, 0, &got, &len, NULL), 0);
	assert_int_equal(len, 3);
	free(got);
	assert_int_equal(wr(b, id, chunk, data + chunk, chunk, DNET_IO_PLAIN, total, 41, NULL),
			 DNET_ENOENT); /* wrong cookie */
	assert_int_equal(wr(b, id, total - 1, data, 2, DNET_IO_PLAIN, total, 42, NULL),
			 DNET_ERANGE);
	assert_int_equal(wr(b, id, chunk, data + chunk, chunk, DNET_IO_PLAIN, total, 42, NULL), 0);
	/* COMMIT before everything arrived */
	assert_int_equal(wr(b, id, 0, NULL, 0, DNET_IO_COMMIT, total, 42, NULL), DNET_EINVAL);
	assert_int_equal(wr(b, id, 2 * chunk, data + 2 * chunk, total - 2 * chunk, DNET_IO_COMMIT,
			    total, 42, &info),
			 0);
	assert_int_equal(info.size, total);
	uint8_t cs[16];
	dnet_csum(data, total, cs);
	assert_memory_equal(info.csum, cs, 16);
	assert_int_equal(rd(b, id, 0, 0, 0, &got, &len, NULL), 0);
	assert_int_equal(len, total);
	assert_memory_equal(got, data, total);
	free(got);
	/* the cookie is gone once committed */
	assert_int_equal(wr(b, id, 0, data, 1, DNET_IO_PLAIN, total, 42, NULL), DNET_ENOENT);
	/* an abandoned upload: dead space, invisible, and a restart forgets it */
	uint8_t id2[DNET_ID_SIZE];
	mkid(id2, 78);
	assert_int_equal(wr(b, id2, 0, data, 4096, DNET_IO_PREPARE, 1u << 20, 5, NULL), 0);
	assert_int_equal(rd(b, id2, 0, 0, 0, &got, &len, NULL), DNET_ENOENT);
	put_seeded(b, 79, 1000, 79); /* a record after the abandoned reservation */
	ops->close(b);
	b = open_be(dir, DNET_FSYNC_BATCH);
	assert_int_equal(rd(b, id, 0, 0, 0, &got, &len, NULL), 0);
	assert_int_equal(len, total);
	assert_memory_equal(got, data, total);
	free(got);
	assert_int_equal(rd(b, id2, 0, 0, 0, &got, &len, NULL), DNET_ENOENT);
	assert_int_equal(wr(b, id2, 4096, data, 1, DNET_IO_PLAIN, 1u << 20, 5, NULL), DNET_ENOENT);
	expect_obj(b, 79, 1000, 79);
	/* unknown length (a pipe): PREPARE says total 0, COMMIT fixes the size, and the
	 * object survives a restart; a hole is refused at COMMIT */
	uint8_t id3[DNET_ID_SIZE];
	mkid(id3, 80);
	const uint64_t plen = 2 * chunk + 12345;
	assert_int_equal(wr(b, id3, 0, data, chunk, DNET_IO_PREPARE, 0, 60, NULL), 0);
	assert_int_equal(wr(b, id3, chunk, data + chunk, chunk, DNET_IO_PLAIN, 0, 60, NULL), 0);
	assert_int_equal(rd(b, id3, 0, 0, 0, &got, &len, NULL), DNET_ENOENT);
	assert_int_equal(wr(b, id3, 2 * chunk, data + 2 * chunk, 12345, DNET_IO_COMMIT, 0, 60, &info),
			 0);
	assert_int_equal(info.size, plen);
	dnet_csum(data, plen, cs);
	assert_memory_equal(info.csum, cs, 16);
	assert_int_equal(wr(b, id3, 0, data, 1000, DNET_IO_PREPARE, 0, 61, NULL), 0);
	assert_int_equal(wr(b, id3, 2000, data, 1000, DNET_IO_COMMIT, 0, 61, NULL), DNET_EINVAL);
	/* known size, a chunk never sent: the hole is refused at COMMIT */
	assert_int_equal(wr(b, id2, 2000, data, 1000, DNET_IO_PREPARE, 3000, 62, NULL), 0);
	assert_int_equal(wr(b, id2, 0, data, 1000, DNET_IO_COMMIT, 3000, 62, NULL), DNET_EINVAL);
	assert_int_equal(wr(b, id2, 1000, data + 1000, 1000, DNET_IO_COMMIT, 3000, 62, NULL), 0);
	ops->close(b);
	b = open_be(dir, DNET_FSYNC_BATCH);
	assert_int_equal(rd(b, id3, 0, 0, 0, &got, &len, NULL), 0);
	assert_int_equal(len, plen);
	assert_memory_equal(got, data, plen);
	free(got);
	ops->close(b);
	free(data);
}

static void test_overwrite_delete(void **state)
{
	char dir[300];
	dir_for(dir, sizeof(dir), "delete");
	struct dnet_backend *b = open_be(dir, DNET_FSYNC_ALWAYS);
	uint8_t id[DNET_ID_SIZE], *got;
	uint64_t len;
	for (uint64_t k = 0; k < 10; k++)
		put_seeded(b, k, 1000 + k, k);
	put_seeded(b, 3, 5000, 333); /* overwrite */
	mkid(id, 4);
	assert_int_equal(ops->del(b, id), 0);
	assert_int_equal(ops->del(b, id), DNET_ENOENT);
	assert_int_equal(rd(b, id, 0, 0, 0, &got, &len, NULL), DNET_ENOENT);
	struct dnet_backend_stat st;
	ops->stat(b, &st);
	assert_int_equal(st.objects, 9);
	assert_true(st.syncs >= 12);
	ops->close(b);
	b = open_be(dir, DNET_FSYNC_ALWAYS);
	expect_obj(b, 3, 5000, 333);
	assert_int_equal(rd(b, id, 0, 0, 0, &got, &len, NULL), DNET_ENOENT);
	for (uint64_t k = 0; k < 10; k++)
		if (k != 3 && k != 4)
			expect_obj(b, k, 1000 + k, k);
	ops->stat(b, &st);
	assert_int_equal(st.objects, 9);
	/* deleted then written again: the new version wins after a restart */
	put_seeded(b, 4, 10, 44);
	ops->close(b);
	b = open_be(dir, DNET_FSYNC_ALWAYS);
	expect_obj(b, 4, 10, 44);
	ops->close(b);
}

static int count_cb(void *arg, const uint8_t *id, const struct dnet_obj_info *info)
{
	(*(uint64_t *)arg)++;
	return 0;
}

static void test_rotation_reopen(void **state)
{
	char dir[300];
	dir_for(dir, sizeof(dir), "rotate");
	setenv(DNET_BLOB_ENV_SIZE, "64k", 1);
	struct dnet_backend *b = open_be(dir, DNET_FSYNC_NEVER);
	for (uint64_t k = 0; k < 600; k++)
		put_seeded(b, k, 1000 + (k % 50), k);
	for (uint64_t k = 0; k < 600; k += 3)
		put_seeded(b, k, 2000, k + 1000000);
	for (uint64_t k = 1; k < 600; k += 6) {
		uint8_t id[DNET_ID_SIZE];
		mkid(id, k);
		assert_int_equal(ops->del(b, id), 0);
	}
	assert_int_equal(dnet_blob_rotate(b), 0);
	struct dnet_blob_stats bs;
	assert_int_equal(dnet_blob_stats(b, &bs), 0);
	assert_true(bs.blobs > 10);
	assert_int_equal(bs.sealed, bs.blobs - 1);
	ops->close(b);
	b = open_be(dir, DNET_FSYNC_NEVER);
	assert_int_equal(dnet_blob_stats(b, &bs), 0);
	printf("rotation reopen: %llu blobs, %llu objects, %llu recovered, %llu scanned, %llu us\n",
	       (unsigned long long)bs.blobs, (unsigned long long)bs.objects,
	       (unsigned long long)bs.recovered, (unsigned long long)bs.scanned,
	       (unsigned long long)bs.open_us);
	assert_int_equal(bs.scanned, 0); /* everything came from index files */
	uint64_t live = 0;
	for (uint64_t k = 0; k < 600; k++) {
		uint8_t id[DNET_ID_SIZE], *got;
		uint64_t len;
		mkid(id, k);
		if (k % 6 == 1) {
			assert_int_equal(rd(b, id, 0, 0, 0, &got, &len, NULL), DNET_ENOENT);
			continue;
		}
		live++;
		if (k % 3 == 0)
			expect_obj(b, k, 2000, k + 1000000);
		else
			expect_obj(b, k, 1000 + (k % 50), k);
	}
	uint64_t n = 0;
	assert_int_equal(ops->iterate(b, count_cb, &n), 0);
	assert_int_equal(n, live);
	ops->close(b);
	unsetenv(DNET_BLOB_ENV_SIZE);
}

static void test_torn_tail(void **state)
{
	char dir[300], blob[400];
	dir_for(dir, sizeof(dir), "torn");
	/* the overwrite below is torn as if never synced: its reclaim (which syncs it
	 * before marking the old version dead) must not have run */
	setenv(DNET_BLOB_ENV_PUNCH, "manual", 1);
	struct dnet_backend *b = open_be(dir, DNET_FSYNC_NEVER);
	for (uint64_t k = 0; k < 100; k++)
		put_seeded(b, k, 3000, k);
	put_seeded(b, 5, 7000, 555); /* the last record: an overwrite that will be torn */
	ops->close(b);
	unsetenv(DNET_BLOB_ENV_PUNCH);
	last_blob(dir, blob, sizeof(blob));
	uint64_t size = file_size(blob);
	/* cut the last record in half (the checkpoint index then covers more than the
	 * blob holds, so it is ignored and the blob scanned) */
	assert_int_equal(truncate(blob, (off_t)(size - 3500)), 0);
	b = open_be(dir, DNET_FSYNC_NEVER);
	struct dnet_blob_stats bs;
	dnet_blob_stats(b, &bs);
	assert_true(bs.torn_bytes > 0);
	expect_obj(b, 5, 3000, 5); /* the older version is back */
	for (uint64_t k = 0; k < 100; k++)
		if (k != 5)
			expect_obj(b, k, 3000, k);
	put_seeded(b, 200, 100, 200); /* appends after the cut */
	ops->close(b);
	/* garbage after the end, including a well-formed header claiming 8 TiB */
	size = file_size(blob);
	int fd = open(blob, O_WRONLY | O_APPEND);
	assert_true(fd >= 0);
	uint8_t junk[4096];
	fill(junk, sizeof(junk), 9);
	assert_int_equal(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
	close(fd);
	b = open_be(dir, DNET_FSYNC_NEVER);
	dnet_blob_stats(b, &bs);
	assert_int_equal(bs.torn_bytes, 4096);
	assert_int_equal(file_size(blob), size);
	expect_obj(b, 200, 100, 200);
	for (uint64_t k = 0; k < 100; k++)
		if (k != 5)
			expect_obj(b, k, 3000, k);
	ops->close(b);
}

/* A header with a valid checksum but an absurd size must not make open() read or
 * allocate it: it runs past the end of the file, so it is a torn tail. */
static void test_hostile_header(void **state)
{
	char dir[300], blob[400];
	dir_for(dir, sizeof(dir), "hostile");
	struct dnet_backend *b = open_be(dir, DNET_FSYNC_NEVER);
	put_seeded(b, 1, 100, 1);
	ops->close(b);
	last_blob(dir, blob, sizeof(blob));
	uint64_t size = file_size(blob);
	uint8_t h[128];
	memset(h, 0, sizeof(h));
	dnet_put_u32(h, 0x43524244u);
	dnet_put_u16(h + 4, 1);
	dnet_put_u64(h + 8, 1ull << 43);
	dnet_put_u64(h + 16, 1ull << 43);
	dnet_put_u64(h + 120, XXH3_64bits(h, 120));
	int fd = open(blob, O_WRONLY);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, h, sizeof(h), (off_t)((size + 7) & ~7ull)), 128);
	close(fd);
	b = open_be(dir, DNET_FSYNC_NEVER);
	expect_obj(b, 1, 100, 1);
	assert_int_equal(file_size(blob), size);
	ops->close(b);
}

static void flip_in_file(const char *path, const uint8_t *pat, size_t patlen)
{
	int fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	uint64_t size = file_size(path);
	uint8_t *all = malloc(size);
	assert_int_equal(pread(fd, all, size, 0), (ssize_t)size);
	uint8_t *p = memmem(all, size, pat, patlen);
	assert_non_null(p);
	uint8_t v = (uint8_t)(p[patlen / 2] ^ 0x01);
	assert_int_equal(pwrite(fd, &v, 1, (off_t)(p - all) + (off_t)patlen / 2), 1);
	close(fd);
	free(all);
}

static void test_corruption(void **state)
{
	char dir[300], blob[400];
	dir_for(dir, sizeof(dir), "corrupt");
	struct dnet_backend *b = open_be(dir, DNET_FSYNC_NEVER);
	const uint64_t sizes[] = {1000, 500000};
	uint8_t *d[2];
	for (int k = 0; k < 2; k++) {
		d[k] = malloc(sizes[k]);
		fill(d[k], sizes[k], 11 + (uint64_t)k);
		assert_int_equal(put(b, 10 + (uint64_t)k, d[k], sizes[k]), 0);
	}
	put_seeded(b, 12, 100, 12);
	last_blob(dir, blob, sizeof(blob));
	for (int k = 0; k < 2; k++) {
		flip_in_file(blob, d[k] + 200, 64);
		uint8_t id[DNET_ID_SIZE], *got;
		uint64_t len;
		mkid(id, 10 + (uint64_t)k);
		assert_int_equal(rd(b, id, 0, 0, 0, &got, &len, NULL), DNET_ECORRUPT);
		assert_int_equal(rd(b, id, 0, 10, 0, &got, &len, NULL), DNET_ECORRUPT);
		/* tools may still fetch the bytes */
		assert_int_equal(rd(b, id, 0, 0, DNET_FLAG_NOCSUM, &got, &len, NULL), 0);
		assert_int_equal(len, sizes[k]);
		free(got);
	}
	struct dnet_backend_stat st;
	ops->stat(b, &st);
	assert_true(st.corrupt >= 4);
	expect_obj(b, 12, 100, 12);
	ops->close(b);
	free(d[0]);
	free(d[1]);
}

/* Small reads copy records out of a mapping of the blob. A blob file cut short
 * under the running engine (a failing disk, an operator's mistake) makes the
 * records past the cut unreadable: that read fails with an error (SIGBUS caught),
 * the process lives on, and records before the cut are still served. */
static void test_mapped_truncated(void **state)
{
	(void)state;
	char dir[300], blob[400];
	dir_for(dir, sizeof(dir), "maptrunc");
	/* cmocka installs its own SIGBUS handler for every test; ellipticsd has none */
	assert_int_equal(dnet_map_install(), 0);
	struct dnet_backend *b = open_be(dir, DNET_FSYNC_NEVER);
	for (uint64_t k = 0; k < 8; k++)
		put_seeded(b, 100 + k, 3000, 100 + k);
	last_blob(dir, blob, sizeof(blob));
	uint64_t size = file_size(blob);
	/* keep the first half: the first records whole, the last ones gone */
	assert_int_equal(truncate(blob, (off_t)(size / 2)), 0);
	expect_obj(b, 100, 3000, 100);
	int failed = 0;
	for (uint64_t k = 4; k < 8; k++) {
		uint8_t id[DNET_ID_SIZE], *got = NULL;
		uint64_t len;
		mkid(id, 100 + k);
		int err = rd(b, id, 0, 0, 0, &got, &len, NULL);
		if (err) {
			assert_true(err == DNET_EIO || err == DNET_ECORRUPT);
			failed++;
		} else {
			free(got);
		}
	}
	assert_true(failed >= 3); /* records wholly past the cut */
	expect_obj(b, 101, 3000, 101);
	/* the engine still takes writes and serves them */
	put_seeded(b, 200, 1000, 200);
	expect_obj(b, 200, 1000, 200);
	ops->close(b);
}

#define CW_THREADS 8
#define CW_PER 500

struct cw {
	struct dnet_backend *b;
	int t;
	atomic_int *calls;
	atomic_int *fails;
};

static void cw_done(void *arg, int status, const struct dnet_obj_info *info)
{
	struct cw *c = (struct cw *)((uintptr_t)arg & ~(uintptr_t)0xffff);
	unsigned i = (unsigned)((uintptr_t)arg & 0xffff);
	atomic_fetch_add(&c->calls[i], 1);
	if (status)
		atomic_fetch_add(c->fails, 1);
}

static void *cw_run(void *arg)
{
	struct cw *c = arg;
	uint8_t data[1024];
	for (unsigned i = 0; i < CW_PER; i++) {
		uint8_t id[DNET_ID_SIZE];
		uint64_t key = (uint64_t)c->t * 100000 + i;
		mkid(id, key);
		fill(data, sizeof(data), key);
		struct dnet_write_req r = {.id = id, .data = data};
		r.io.size = sizeof(data);
		r.io.timestamp = dnet_now_real_ns();
		ops->write(c->b, &r, cw_done, (void *)((uintptr_t)c | i));
	}
	return NULL;
}

static void test_concurrent_batch(void **state)
{
	char dir[300];
	dir_for(dir, sizeof(dir), "batch");
	struct dnet_backend *b = open_be(dir, DNET_FSYNC_BATCH);
	pthread_t th[CW_THREADS];
	struct cw *c[CW_THREADS];
	atomic_int fails = 0;
	for (int t = 0; t < CW_THREADS; t++) {
		/* 64 KiB aligned so the low 16 bits of the callback arg carry the index */
		assert_int_equal(posix_memalign((void **)&c[t], 65536, sizeof(struct cw)), 0);
		c[t]->b = b;
		c[t]->t = t;
		c[t]->calls = calloc(CW_PER, sizeof(atomic_int));
		c[t]->fails = &fails;
		assert_int_equal(pthread_create(&th[t], NULL, cw_run, c[t]), 0);
	}
	for (int t = 0; t < CW_THREADS; t++)
		pthread_join(th[t], NULL);
	/* every write acknowledged exactly once (wait for the last group commits) */
	for (int t = 0; t < CW_THREADS; t++)
		for (int i = 0; i < CW_PER; i++) {
			for (int spin = 0; spin < 5000 && !atomic_load(&c[t]->calls[i]); spin++)
				usleep(1000);
			assert_int_equal(atomic_load(&c[t]->calls[i]), 1);
		}
	assert_int_equal(atomic_load(&fails), 0);
	struct dnet_backend_stat st;
	ops->stat(b, &st);
	printf("group commit: %llu writes made durable by %llu syncs\n",
	       (unsigned long long)st.synced_writes, (unsigned long long)st.syncs);
	assert_int_equal(st.synced_writes, CW_THREADS * CW_PER);
	assert_true(st.syncs < st.synced_writes);
	for (int t = 0; t < CW_THREADS; t++)
		for (unsigned i = 0; i < CW_PER; i += 7)
			expect_obj(b, (uint64_t)t * 100000 + i, 1024, (uint64_t)t * 100000 + i);
	ops->close(b);
	for (int t = 0; t < CW_THREADS; t++) {
		free(c[t]->calls);
		free(c[t]);
	}
}

/* ---- compaction while reads and writes go on ------------------------------------ */

#define CP_KEYS 3000

struct cp_ctx {
	struct dnet_backend *b;
	atomic_int stop;
	atomic_int errors;
	atomic_long reads, writes;
};

static int cp_live(uint64_t k)
{
	return k % 5 == 0; /* 20% survive; the rest are overwritten away or deleted */
}

static void *cp_reader(void *arg)
{
	struct cp_ctx *c = arg;
	uint8_t want[1500];
	uint64_t k = 0;
	while (!atomic_load(&c->stop)) {
		k = (k + 5) % CP_KEYS;
		uint8_t id[DNET_ID_SIZE], *got;
		uint64_t len;
		mkid(id, k);
		fill(want, 1500, k + 7);
		if (rd(c->b, id, 0, 0, 0, &got, &len, NULL) != 0 || len != 1500 ||
		    memcmp(got, want, 1500) != 0)
			atomic_fetch_add(&c->errors, 1);
		else
			free(got);
		atomic_fetch_add(&c->reads, 1);
	}
	return NULL;
}

static void *cp_writer(void *arg)
{
	struct cp_ctx *c = arg;
	uint64_t k = 1000000;
	while (!atomic_load(&c->stop)) {
		put_seeded(c->b, k, 900, k);
		k++;
		atomic_fetch_add(&c->writes, 1);
	}
	return NULL;
}

static void test_compaction(void **state)
{
	char dir[300];
	dir_for(dir, sizeof(dir), "compact");
	setenv(DNET_BLOB_ENV_SIZE, "256k", 1);
	struct dnet_backend *b = open_be(dir, DNET_FSYNC_NEVER);
	for (uint64_t k = 0; k < CP_KEYS; k++)
		put_seeded(b, k, cp_live(k) ? 1500 : 1000, k + 7);
	for (uint64_t k = 0; k < CP_KEYS; k++) {
		if (cp_live(k))
			continue;
		uint8_t id[DNET_ID_SIZE];
		mkid(id, k);
		if (k % 2) {
			assert_int_equal(ops->del(b, id), 0);
		} else {
			put_seeded(b, k, 600, k + 8);
			assert_int_equal(ops->del(b, id), 0);
		}
	}
	assert_int_equal(dnet_blob_rotate(b), 0);
	struct dnet_backend_stat before, after;
	ops->stat(b, &before);

	struct cp_ctx c = {.b = b};
	pthread_t rt, wt;
	assert_int_equal(pthread_create(&rt, NULL, cp_reader, &c), 0);
	assert_int_equal(pthread_create(&wt, NULL, cp_writer, &c), 0);
	uint64_t t0 = dnet_now_mono_ns();
	int n = dnet_blob_compact(b, 0.5);
	uint64_t t1 = dnet_now_mono_ns();
	usleep(20000);
	atomic_store(&c.stop, 1);
	pthread_join(rt, NULL);
	pthread_join(wt, NULL);
	assert_true(n > 0);
	assert_int_equal(atomic_load(&c.errors), 0);
	ops->stat(b, &after);
	struct dnet_blob_stats bs;
	dnet_blob_stats(b, &bs);
	printf("compaction: %d blobs in %.1f ms, disk %llu -> %llu bytes (%llu reclaimed), "
	       "%ld reads and %ld writes meanwhile\n",
	       n, (double)(t1 - t0) / 1e6, (unsigned long long)before.disk_bytes,
	       (unsigned long long)after.disk_bytes, (unsigned long long)bs.reclaimed_bytes,
	       atomic_load(&c.reads), atomic_load(&c.writes));
	assert_true(bs.reclaimed_bytes > before.disk_bytes / 2);
	for (uint64_t k = 0; k < CP_KEYS; k++) {
		if (cp_live(k)) {
			expect_obj(b, k, 1500, k + 7);
		} else {
			uint8_t id[DNET_ID_SIZE], *got;
			uint64_t len;
			mkid(id, k);
			assert_int_equal(rd(b, id, 0, 0, 0, &got, &len, NULL), DNET_ENOENT);
		}
	}
	long writes = atomic_load(&c.writes);
	ops->close(b);
	/* after a restart: compacted blobs load from their new index files, and what was
	 * deleted stays deleted */
	b = open_be(dir, DNET_FSYNC_NEVER);
	dnet_blob_stats(b, &bs);
	assert_int_equal(bs.scanned, 0);
	for (uint64_t k = 0; k < CP_KEYS; k++) {
		if (cp_live(k)) {
			expect_obj(b, k, 1500, k + 7);
		} else {
			uint8_t id[DNET_ID_SIZE], *got;
			uint64_t len;
			mkid(id, k);
			assert_int_equal(rd(b, id, 0, 0, 0, &got, &len, NULL), DNET_ENOENT);
		}
	}
	for (long k = 0; k < writes; k++)
		expect_obj(b, 1000000 + (uint64_t)k, 900, 1000000 + (uint64_t)k);
	ops->stat(b, &after);
	assert_int_equal(after.objects, CP_KEYS / 5 + (uint64_t)writes);
	ops->close(b);
	unsetenv(DNET_BLOB_ENV_SIZE);
}

/* Two IDs that share the 16-byte prefix kept in memory are still two objects. */
static void test_prefix_twins(void **state)
{
	char dir[300];
	dir_for(dir, sizeof(dir), "twins");
	struct dnet_backend *b = open_be(dir, DNET_FSYNC_NEVER);
	uint8_t a[DNET_ID_SIZE], t[DNET_ID_SIZE], *got;
	uint64_t len;
	mkid(a, 1);
	memcpy(t, a, DNET_ID_SIZE);
	t[40] ^= 0xff;
	assert_int_equal(wr(b, a, 0, "first", 5, 0, 0, 0, NULL), 0);
	assert_int_equal(rd(b, t, 0, 0, 0, &got, &len, NULL), DNET_ENOENT);
	assert_int_equal(wr(b, t, 0, "second!", 7, 0, 0, 0, NULL), 0);
	for (int round = 0; round < 2; round++) {
		assert_int_equal(rd(b, a, 0, 0, 0, &got, &len, NULL), 0);
		assert_int_equal(len, 5);
		assert_memory_equal(got, "first", 5);
		free(got);
		assert_int_equal(rd(b, t, 0, 0, 0, &got, &len, NULL), 0);
		assert_int_equal(len, 7);
		assert_memory_equal(got, "second!", 7);
		free(got);
		ops->close(b);
		b = open_be(dir, DNET_FSYNC_NEVER);
	}
	assert_int_equal(ops->del(b, a), 0);
	assert_int_equal(rd(b, a, 0, 0, 0, &got, &len, NULL), DNET_ENOENT);
	assert_int_equal(rd(b, t, 0, 0, 0, &got, &len, NULL), 0);
	free(got);
	ops->close(b);
	b = open_be(dir, DNET_FSYNC_NEVER);
	assert_int_equal(rd(b, a, 0, 0, 0, &got, &len, NULL), DNET_ENOENT);
	assert_int_equal(rd(b, t, 0, 0, 0, &got, &len, NULL), 0);
	free(got);
	struct dnet_backend_stat st;
	ops->stat(b, &st);
	assert_int_equal(st.objects, 1);
	ops->close(b);
}

static void test_index_ram(void **state)
{
	char dir[300];
	dir_for(dir, sizeof(dir), "ram");
	struct dnet_backend *b = open_be(dir, DNET_FSYNC_NEVER);
	const uint64_t n = 200000;
	uint8_t d[16];
	for (uint64_t k = 0; k < n; k++) {
		fill(d, sizeof(d), k);
		assert_int_equal(put(b, k, d, sizeof(d)), 0);
	}
	struct dnet_blob_stats bs;
	dnet_blob_stats(b, &bs);
	printf("index RAM: %llu objects, %llu bytes, %.1f bytes/object\n",
	       (unsigned long long)bs.objects, (unsigned long long)bs.index_bytes,
	       bs.index_bytes_per_object);
	assert_int_equal(bs.objects, n);
	assert_true(bs.index_bytes_per_object <= 45.0);
	ops->close(b);
	b = open_be(dir, DNET_FSYNC_NEVER);
	dnet_blob_stats(b, &bs);
	printf("reopen with %llu objects: %.1f ms (%llu records scanned)\n",
	       (unsigned long long)bs.objects, (double)bs.open_us / 1000,
	       (unsigned long long)bs.scanned);
	assert_int_equal(bs.objects, n);
	assert_int_equal(bs.scanned, 0);
	ops->close(b);
}

/* ---- dead records: marking, punching, crash points, leases, full disks ----------- */

/* Offsets of every record header of `id` in a blob file, in file order. */
static int find_headers(const char *path, const uint8_t *id, uint64_t *offs, int max)
{
	uint64_t size = file_size(path);
	uint8_t *all = malloc(size ? size : 1);
	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, all, size, 0), (ssize_t)size);
	close(fd);
	int n = 0;
	for (uint64_t o = 0; o + 128 <= size && n < max; o += 8) {
		if (memcmp(all + o, "DBRC", 4) == 0 && memcmp(all + o + 56, id, DNET_ID_SIZE) == 0)
			offs[n++] = o;
	}
	free(all);
	return n;
}

static uint16_t hdr_flags_at(const char *path, uint64_t off)
{
	uint8_t h[128];
	int fd = open(path, O_RDONLY);
	assert_int_equal(pread(fd, h, 128, (off_t)off), 128);
	close(fd);
	return (uint16_t)(h[6] | h[7] << 8);
}

static void remove_indexes(const char *dir)
{
	char p[500];
	for (unsigned i = 1; i < 999; i++) {
		snprintf(p, sizeof(p), "%s/blob-%06u.index", dir, i);
		unlink(p);
	}
}

/* Tests of compaction set the blob size, the automatic compaction ratio and its
 * interval; compact_env_reset() puts back the suite's defaults (no automatic
 * compaction: main() sets the ratio to 0). */
static void compact_env(const char *size, const char *ratio, const char *interval_ms)
{
	setenv(DNET_BLOB_ENV_SIZE, size, 1);
	setenv(DNET_BLOB_ENV_COMPACT, ratio, 1);
	setenv(DNET_BLOB_ENV_COMPACT_MS, interval_ms, 1);
}

static void compact_env_reset(void)
{
	unsetenv(DNET_BLOB_ENV_SIZE);
	setenv(DNET_BLOB_ENV_COMPACT, "0", 1);
	unsetenv(DNET_BLOB_ENV_COMPACT_MS);
}

static struct dnet_blob_stats bstats(struct dnet_backend *b)
{
	struct dnet_blob_stats bs;
	assert_int_equal(dnet_blob_stats(b, &bs), 0);
	return bs;
}

static void expect_gone(struct dnet_backend *b, uint64_t key)
{
	uint8_t id[DNET_ID_SIZE], *got;
	uint64_t len;
	mkid(id, key);
	assert_int_equal(rd(b, id, 0, 0, 0, &got, &len, NULL), DNET_ENOENT);
}

static void del_key(struct dnet_backend *b, uint64_t key)
{
	uint8_t id[DNET_ID_SIZE];
	mkid(id, key);
	assert_int_equal(ops->del(b, id), 0);
}

/* Overwritten and deleted 1 MiB objects: marked dead in place, their blocks punched
 * out; the store reads the same before and after restarts, with and without index
 * files, and no record is reported corrupt. */
static void test_punch(void **state)
{
	char dir[300], blob[400];
	dir_for(dir, sizeof(dir), "punch");
	const uint64_t M = 1 << 20;
	struct dnet_backend *b = open_be(dir, DNET_FSYNC_ALWAYS);
	for (uint64_t k = 0; k < 8; k++)
		put_seeded(b, k, M, k);
	struct dnet_blob_stats before = bstats(b);
	for (uint64_t k = 0; k < 4; k++)
		put_seeded(b, k, M, 100 + k);
	del_key(b, 4);
	del_key(b, 5);
	assert_true(dnet_blob_reclaim(b, DNET_BLOB_RECLAIM_ALL | DNET_BLOB_RECLAIM_FORCE) >= 0);
	struct dnet_blob_stats bs = bstats(b);
	fprintf(stderr, "punch: %llu bytes punched, %llu records marked, alloc %llu of %llu\n",
		(unsigned long long)bs.punched_bytes, (unsigned long long)bs.dead_marked,
		(unsigned long long)bs.alloc_bytes, (unsigned long long)bs.disk_bytes);
	assert_int_equal(bs.dead_marked, 6);
	assert_true(bs.punched_bytes >= 6 * (M - 8192));
	/* 4 new versions written, 6 old ones punched: less allocated than before them */
	assert_true(bs.alloc_bytes < before.alloc_bytes);
	for (uint64_t k = 0; k < 8; k++) {
		if (k == 4 || k == 5)
			expect_gone(b, k);
		else
			expect_obj(b, k, M, k < 4 ? 100 + k : k);
	}
	ops->close(b);
	last_blob(dir, blob, sizeof(blob));
	uint8_t id[DNET_ID_SIZE];
	uint64_t offs[4];
	mkid(id, 0);
	assert_int_equal(find_headers(blob, id, offs, 4), 2);
	assert_true(hdr_flags_at(blob, offs[0]) & 4);	 /* the old one: dead */
	assert_false(hdr_flags_at(blob, offs[1]) & 4); /* the current one */
	for (int pass = 0; pass < 2; pass++) {
		if (pass)
			remove_indexes(dir); /* a full scan: dead records skipped unchecked */
		b = open_be(dir, DNET_FSYNC_ALWAYS);
		for (uint64_t k = 0; k < 8; k++) {
			if (k == 4 || k == 5)
				expect_gone(b, k);
			else
				expect_obj(b, k, M, k < 4 ? 100 + k : k);
		}
		struct dnet_backend_stat st;
		ops->stat(b, &st);
		assert_int_equal(st.corrupt, 0);
		assert_int_equal(st.objects, 6);
		bs = bstats(b);
		if (pass)
			assert_true(bs.scanned > 0);
		assert_int_equal(bs.torn_bytes, 0);
		/* compaction drops the dead records */
		assert_int_equal(dnet_blob_rotate(b), 0);
		assert_true(dnet_blob_compact(b, 0.01) >= (pass ? 0 : 1));
		for (uint64_t k = 0; k < 8; k++)
			if (k != 4 && k != 5)
				expect_obj(b, k, M, k < 4 ? 100 + k : k);
		ops->close(b);
	}
}

/* A crash (the process exits without closing, as with kill -9) between the steps:
 * superseding record durable -> old record marked dead -> punched. Every point
 * leaves the newest versions readable and nothing resurrected. */
static void crash_child(const char *dir, int fsync, int steps)
{
	setenv(DNET_BLOB_ENV_PUNCH, "manual", 1);
	struct dnet_backend *b = open_be(dir, fsync);
	const uint64_t M = 1 << 20;
	for (uint64_t k = 0; k < 4; k++)
		put_seeded(b, k, M, k);
	put_seeded(b, 0, M, 50);   /* overwrite */
	del_key(b, 1);		   /* delete */
	put_seeded(b, 2, 100, 52); /* overwrite with a small one */
	if (steps >= 0)
		dnet_blob_reclaim(b, steps);
	_exit(0); /* no close: no checkpoint, nothing flushed or marked beyond this */
}

static void check_crashed(const char *dir)
{
	for (int pass = 0; pass < 2; pass++) {
		struct dnet_backend *b = open_be(dir, DNET_FSYNC_ALWAYS);
		expect_obj(b, 0, 1 << 20, 50);
		expect_gone(b, 1);
		expect_obj(b, 2, 100, 52);
		expect_obj(b, 3, 1 << 20, 3);
		struct dnet_backend_stat st;
		ops->stat(b, &st);
		assert_int_equal(st.objects, 3);
		assert_int_equal(st.corrupt, 0);
		ops->close(b);
		remove_indexes(dir);
	}
}

static void test_punch_crash_points(void **state)
{
	static const int points[] = {-1, 0, DNET_BLOB_RECLAIM_MARK, DNET_BLOB_RECLAIM_ALL};
	for (int f = 0; f < 2; f++) {
		for (size_t i = 0; i < sizeof(points) / sizeof(points[0]); i++) {
			char dir[400], name[32];
			snprintf(name, sizeof(name), "crash-%d-%zu", f, i);
			dir_for(dir, sizeof(dir), name);
			fflush(NULL);
			pid_t pid = fork();
			assert_true(pid >= 0);
			if (pid == 0)
				crash_child(dir, f ? DNET_FSYNC_NEVER : DNET_FSYNC_ALWAYS, points[i]);
			int status;
			assert_int_equal(waitpid(pid, &status, 0), pid);
			assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
			check_crashed(dir);
		}
	}
}

/* Power loss can leave a dead-mark torn (flags written, checksum not, or the other
 * way round: the header straddles a sector boundary), or the punch on disk before
 * the mark. Recovery must take all of them in stride. */
static void test_torn_mark(void **state)
{
	char dir[300], blob[400];
	dir_for(dir, sizeof(dir), "tornmark");
	setenv(DNET_BLOB_ENV_PUNCH, "manual", 1);
	struct dnet_backend *b = open_be(dir, DNET_FSYNC_NEVER);
	put_seeded(b, 0, 300000, 1);
	put_seeded(b, 0, 300000, 2); /* supersedes the first; never marked (manual) */
	put_seeded(b, 1, 5000, 3);   /* so the old record is in the middle */
	ops->close(b);
	unsetenv(DNET_BLOB_ENV_PUNCH);
	last_blob(dir, blob, sizeof(blob));
	uint8_t id[DNET_ID_SIZE], orig[128], h[128];
	uint64_t offs[4];
	mkid(id, 0);
	assert_int_equal(find_headers(blob, id, offs, 4), 2);
	int fd = open(blob, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, orig, 128, (off_t)offs[0]), 128);
	for (int c = 0; c < 4; c++) {
		memcpy(h, orig, 128);
		uint16_t fl = (uint16_t)(orig[6] | orig[7] << 8);
		uint16_t marked = (uint16_t)(fl | (c == 2 ? 5 : 4)); /* DEAD, or DEAD|TOMB */
		uint8_t m[128];
		memcpy(m, orig, 128);
		m[6] = (uint8_t)marked;
		m[7] = (uint8_t)(marked >> 8);
		uint64_t sum = XXH3_64bits(m, 120);
		if (c == 0 || c == 2) { /* new flags, old checksum */
			h[6] = m[6];
			h[7] = m[7];
		} else if (c == 1) { /* old flags, new checksum */
			memcpy(h + 120, &sum, 8);
		} /* c == 3: header untouched, data punched */
		assert_int_equal(pwrite(fd, h, 128, (off_t)offs[0]), 128);
		if (c == 3)
			assert_int_equal(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
						   (off_t)((offs[0] + 128 + 4095) & ~4095ull), 65536),
					 0);
		remove_indexes(dir);
		b = open_be(dir, DNET_FSYNC_NEVER);
		expect_obj(b, 0, 300000, 2);
		expect_obj(b, 1, 5000, 3);
		struct dnet_blob_stats bs = bstats(b);
		assert_int_equal(bs.torn_bytes, 0);
		assert_int_equal(bs.objects, 2);
		struct dnet_backend_stat st;
		ops->stat(b, &st);
		/* punched-before-marked looks like a torn write: skipped and reported */
		assert_int_equal(st.corrupt, c == 3 ? 1 : 0);
		ops->close(b);
	}
	close(fd);
}

/* A large read hands out a file range; punching it before the reader closed its fd
 * would feed zeros to sendfile(). The punch waits for the lease to go. */
static void test_read_lease(void **state)
{
	char dir[300];
	dir_for(dir, sizeof(dir), "lease");
	const uint64_t size = 2 << 20;
	struct dnet_backend *b = open_be(dir, DNET_FSYNC_NEVER);
	put_seeded(b, 0, size, 1);
	uint8_t id[DNET_ID_SIZE];
	mkid(id, 0);
	struct dnet_read_res res;
	assert_int_equal(ops->read(b, id, 0, 0, 0, &res), 0);
	assert_true(res.fd >= 0);
	put_seeded(b, 0, size, 2);
	dnet_blob_reclaim(b, DNET_BLOB_RECLAIM_ALL | DNET_BLOB_RECLAIM_FORCE);
	struct dnet_blob_stats bs = bstats(b);
	assert_int_equal(bs.punched_bytes, 0);
	assert_true(bs.punch_deferred >= 1);
	uint8_t *want = malloc(size), *got = malloc(size);
	fill(want, size, 1);
	assert_int_equal(pread(res.fd, got, size, (off_t)res.file_offset), (ssize_t)size);
	assert_memory_equal(got, want, size);
	close(res.fd);
	dnet_blob_reclaim(b, DNET_BLOB_RECLAIM_ALL | DNET_BLOB_RECLAIM_FORCE);
	bs = bstats(b);
	assert_true(bs.punched_bytes >= size - 8192);
	expect_obj(b, 0, size, 2);
	free(want);
	free(got);
	ops->close(b);
}

/* No room even for a tombstone: the record is deleted in place. The delete
 * survives restarts, hides an older version still listed live by an older blob's
 * index, and compaction turns it into a plain tombstone. */
static void test_delete_in_place(void **state)
{
	char dir[300];
	dir_for(dir, sizeof(dir), "inplace");
	setenv(DNET_BLOB_ENV_PUNCH, "manual", 1); /* the old version stays unmarked */
	struct dnet_backend *b = open_be(dir, DNET_FSYNC_ALWAYS);
	for (uint64_t k = 0; k < 10; k++)
		put_seeded(b, k, 5000, k);
	put_seeded(b, 20, 9000, 20);
	assert_int_equal(dnet_blob_rotate(b), 0); /* blob 1 sealed: its index lists 20 */
	put_seeded(b, 20, 9000, 21);
	put_seeded(b, 11, 5000, 11);
	assert_int_equal(dnet_blob_rotate(b), 0); /* blob 2 sealed */
	put_seeded(b, 12, 70000, 12);		  /* in the active blob 3 */
	put_seeded(b, 13, 100, 13);
	for (uint64_t k = 3; k < 4; k++) {
		dnet_blob_test_fail_appends(b, 1);
		del_key(b, k); /* blob 1 */
	}
	dnet_blob_test_fail_appends(b, 1);
	del_key(b, 20); /* blob 2, while blob 1's index still lists the old version */
	dnet_blob_test_fail_appends(b, 1);
	del_key(b, 12); /* the active blob */
	dnet_blob_test_fail_appends(b, 1);
	uint8_t id[DNET_ID_SIZE];
	mkid(id, 99);
	assert_int_equal(ops->del(b, id), DNET_ENOENT);
	struct dnet_blob_stats bs = bstats(b);
	assert_int_equal(bs.inplace_deletes, 3);
	dnet_blob_reclaim(b, DNET_BLOB_RECLAIM_ALL | DNET_BLOB_RECLAIM_FORCE);
	expect_gone(b, 3);
	expect_gone(b, 20);
	expect_gone(b, 12);
	ops->close(b);
	unsetenv(DNET_BLOB_ENV_PUNCH);
	for (int pass = 0; pass < 3; pass++) {
		b = open_be(dir, DNET_FSYNC_ALWAYS);
		expect_gone(b, 3);
		expect_gone(b, 20);
		expect_gone(b, 12);
		for (uint64_t k = 0; k < 10; k++)
			if (k != 3)
				expect_obj(b, k, 5000, k);
		expect_obj(b, 11, 5000, 11);
		expect_obj(b, 13, 100, 13);
		struct dnet_backend_stat st;
		ops->stat(b, &st);
		assert_int_equal(st.objects, 11);
		assert_int_equal(st.corrupt, 0);
		if (pass == 1) { /* compaction writes plain tombstones and new indexes */
			assert_int_equal(dnet_blob_rotate(b), 0);
			assert_true(dnet_blob_compact(b, 0.0001) >= 1);
			expect_gone(b, 20);
		}
		ops->close(b);
		if (pass == 0)
			remove_indexes(dir);
	}
}

/* Automatic compaction: an active blob that is mostly dead is sealed and compacted
 * by the maintenance thread, with no call from outside. */
static void test_auto_compact(void **state)
{
	char dir[300];
	dir_for(dir, sizeof(dir), "autocompact");
	compact_env("256k", "0.5", "50");
	struct dnet_backend *b = open_be(dir, DNET_FSYNC_NEVER);
	for (uint64_t k = 0; k < 100; k++)
		put_seeded(b, k, 2000, k);
	for (uint64_t k = 0; k < 80; k++)
		del_key(b, k);
	struct dnet_blob_stats bs;
	for (int i = 0; i < 200; i++) {
		bs = bstats(b);
		if (bs.compactions >= 1 && bs.active_seals >= 1)
			break;
		usleep(20000);
	}
	assert_true(bs.active_seals >= 1);
	assert_true(bs.compactions >= 1);
	assert_true(bs.reclaimed_bytes > 100000);
	for (uint64_t k = 0; k < 100; k++) {
		if (k < 80)
			expect_gone(b, k);
		else
			expect_obj(b, k, 2000, k);
	}
	/* and sealed blobs, by dead ratio */
	for (uint64_t k = 200; k < 400; k++)
		put_seeded(b, k, 2000, k);
	uint64_t before = bstats(b).compactions;
	for (uint64_t k = 200; k < 380; k++)
		del_key(b, k);
	assert_int_equal(dnet_blob_rotate(b), 0);
	for (int i = 0; i < 200 && bstats(b).compactions == before; i++)
		usleep(20000);
	assert_true(bstats(b).compactions > before);
	ops->close(b);
	compact_env_reset();
	b = open_be(dir, DNET_FSYNC_NEVER);
	for (uint64_t k = 0; k < 400; k++) {
		if (k < 80 || (k >= 200 && k < 380))
			expect_gone(b, k);
		else if (k < 100 || k >= 380)
			expect_obj(b, k, 2000, k);
	}
	ops->close(b);
}


/* A full disk: DNET_ENOSPC, the index untouched, everything stored before readable;
 * deletes work (the tombstone reserve) and give their space back (punched), so
 * writes work again - without compaction. */
static void test_enospc(void **state)
{
	char dir[400], mnt[300];
	dir_for(mnt, sizeof(mnt), "small");
	assert_int_equal(mkdir(mnt, 0755), 0);
	if (geteuid() != 0 || mount("tmpfs", mnt, "tmpfs", 0, "size=4m") != 0) {
		rmdir(mnt);
		skip();
	}
	snprintf(dir, sizeof(dir), "%s/data", mnt);
	for (int f = 0; f < 3; f++) {
		static const int pol[] = {DNET_FSYNC_ALWAYS, DNET_FSYNC_BATCH, DNET_FSYNC_NEVER};
		struct dnet_backend *b = open_be(dir, pol[f]);
		const uint64_t size = 256u << 10;
		uint64_t stored = 0;
		int err = 0;
		for (uint64_t k = 0; k < 64 && !err; k++) {
			uint8_t *d = malloc(size);
			fill(d, size, k);
			err = put(b, k, d, size);
			free(d);
			if (!err)
				stored++;
		}
		assert_int_equal(err, DNET_ENOSPC);
		assert_true(stored > 4);
		struct dnet_backend_stat st;
		ops->stat(b, &st);
		assert_int_equal(st.objects, stored);
		for (uint64_t k = 0; k < stored; k++)
			expect_obj(b, k, size, k);
		/* more failures change nothing */
		for (int i = 0; i < 3; i++) {
			uint8_t *d = malloc(size);
			fill(d, size, 999);
			assert_int_equal(put(b, 999, d, size), DNET_ENOSPC);
			free(d);
		}
		/* delete half: every delete works, and the space comes back */
		for (uint64_t k = 0; k < stored / 2; k++)
			del_key(b, k);
		for (uint64_t k = 100; k < 100 + stored / 2 - 1; k++)
			put_seeded(b, k, size, k);
		for (uint64_t k = 0; k < stored; k++) {
			if (k < stored / 2)
				expect_gone(b, k);
			else
				expect_obj(b, k, size, k);
		}
		ops->close(b);
		b = open_be(dir, pol[f]);
		for (uint64_t k = stored / 2; k < stored; k++)
			expect_obj(b, k, size, k);
		for (uint64_t k = 100; k < 100 + stored / 2 - 1; k++)
			expect_obj(b, k, size, k);
		/* empty the store for the next round: delete everything on the full disk */
		for (uint64_t k = stored / 2; k < stored; k++)
			del_key(b, k);
		for (uint64_t k = 100; k < 100 + stored / 2 - 1; k++)
			del_key(b, k);
		ops->stat(b, &st);
		assert_int_equal(st.objects, 0);
		assert_int_equal(st.corrupt, 0);
		ops->close(b);
		st_rm_rf(dir);
	}
	umount2(mnt, MNT_DETACH);
	rmdir(mnt);
}

/* Superseded records of a sealed blob that automatic compaction is about to take
 * whole are left to it: not marked, not punched (a write and an extent split per
 * record), and freed once compaction retired the blob. A forced pass, or automatic
 * compaction turned off, marks and punches them as before. */
static void test_punch_leaves_to_compaction(void **state)
{
	const uint64_t K = 100 << 10;
	for (int mode = 0; mode < 3; mode++) { /* 0: held, 1: forced, 2: no auto compaction */
		char dir[300], name[32];
		snprintf(name, sizeof(name), "punchcompact%d", mode);
		dir_for(dir, sizeof(dir), name);
		setenv(DNET_BLOB_ENV_PUNCH, "manual", 1);
		setenv(DNET_BLOB_ENV_COMPACT, mode == 2 ? "0" : "0.5", 1);
		setenv(DNET_BLOB_ENV_COMPACT_MS, "600000", 1); /* the test compacts by hand */
		struct dnet_backend *b = open_be(dir, DNET_FSYNC_ALWAYS);
		for (uint64_t k = 0; k < 8; k++)
			put_seeded(b, k, K, k);
		assert_int_equal(dnet_blob_rotate(b), 0); /* blob 1 sealed */
		for (uint64_t k = 0; k < 8; k++)
			put_seeded(b, k, K, 100 + k); /* blob 1 is now all dead */
		int steps = DNET_BLOB_RECLAIM_ALL | (mode == 1 ? DNET_BLOB_RECLAIM_FORCE : 0);
		assert_true(dnet_blob_reclaim(b, steps) >= 0);
		struct dnet_blob_stats bs = bstats(b);
		if (mode == 0) {
			assert_int_equal(bs.dead_marked, 0);
			assert_int_equal(bs.punched_bytes, 0);
			uint64_t disk = bs.disk_bytes;
			assert_true(dnet_blob_compact(b, 0.5) >= 1);
			assert_true(dnet_blob_reclaim(b, DNET_BLOB_RECLAIM_ALL) >= 0);
			bs = bstats(b);
			assert_int_equal(bs.dead_marked, 0); /* freed, never marked */
			assert_int_equal(bs.punched_bytes, 0);
			assert_true(bs.disk_bytes + 8 * K <= disk);
		} else {
			assert_int_equal(bs.dead_marked, 8);
			assert_true(bs.punched_bytes >= 8 * (K - 8192));
		}
		for (uint64_t k = 0; k < 8; k++)
			expect_obj(b, k, K, 100 + k);
		ops->close(b);
		b = open_be(dir, DNET_FSYNC_ALWAYS); /* and after a restart */
		for (uint64_t k = 0; k < 8; k++)
			expect_obj(b, k, K, 100 + k);
		ops->close(b);
	}
	unsetenv(DNET_BLOB_ENV_PUNCH);
	compact_env_reset();
}

/* The maintenance thread, on its own: when appends fill the active blob and it is
 * rotated, the thread seals it before it reclaims, so the superseded records of
 * that mostly-dead blob are left to compaction, not marked and punched one by one
 * (reclaim used to run first, when the blob was not yet sealed: after each 1 GiB
 * rotation under 10 KiB overwrites it marked and punched ~100,000 records while
 * durable writes halved). */
static void test_rotation_leaves_to_compaction(void **state)
{
	char dir[300];
	dir_for(dir, sizeof(dir), "rotatecompact");
	const uint64_t K = 16 << 10;
	compact_env("1M", "0.5", "600000"); /* no compaction during the test */
	struct dnet_backend *b = open_be(dir, DNET_FSYNC_ALWAYS);
	uint64_t v = 0;
	for (; v < 10; v++) /* 640 KiB of overwrites in blob 1 */
		for (uint64_t k = 0; k < 4; k++)
			put_seeded(b, k, K, 100 * v + k);
	/* the superseded records wait for blob 1's seal */
	assert_true(dnet_blob_reclaim(b, DNET_BLOB_RECLAIM_ALL) >= 0);
	assert_int_equal(bstats(b).dead_marked, 0);
	for (; bstats(b).blobs < 2 && v < 40; v++) /* until blob 1 is full and rotated */
		for (uint64_t k = 0; k < 4; k++)
			put_seeded(b, k, K, 100 * v + k);
	assert_true(bstats(b).blobs >= 2);
	struct dnet_blob_stats bs = bstats(b);
	for (int i = 0; i < 500 && bs.sealed < 1; i++) { /* up to 10 s */
		usleep(20000);
		bs = bstats(b);
	}
	assert_true(bs.sealed >= 1);
	assert_int_equal(bs.dead_marked, 0);
	assert_int_equal(bs.punched_bytes, 0);
	for (uint64_t k = 0; k < 4; k++)
		expect_obj(b, k, K, 100 * (v - 1) + k);
	/* compaction then takes blob 1 whole */
	uint64_t disk = bs.disk_bytes;
	assert_true(dnet_blob_compact(b, 0.5) >= 1);
	bs = bstats(b);
	assert_int_equal(bs.dead_marked, 0);
	assert_true(bs.disk_bytes + (512 << 10) <= disk);
	for (uint64_t k = 0; k < 4; k++)
		expect_obj(b, k, K, 100 * (v - 1) + k);
	ops->close(b);
	compact_env_reset();
}

/* A sealed blob whose records were all overwritten is dropped (no copy) by the
 * maintenance thread within a tenth of the compaction interval, not at the next
 * periodic pass. */
static void test_empty_blob_goes_at_once(void **state)
{
	char dir[300];
	dir_for(dir, sizeof(dir), "emptygoes");
	compact_env("16M", "0.5", "30000"); /* periodic pass: after 30 s */
	struct dnet_backend *b = open_be(dir, DNET_FSYNC_NEVER);
	for (uint64_t k = 0; k < 50; k++)
		put_seeded(b, k, 2000, k);
	assert_int_equal(dnet_blob_rotate(b), 0);
	for (uint64_t k = 0; k < 50; k++)
		put_seeded(b, k, 2000, 1000 + k);
	struct dnet_blob_stats bs = bstats(b);
	for (int i = 0; i < 1000 && bs.compactions < 1; i++) { /* up to 20 s */
		usleep(20000);
		bs = bstats(b);
	}
	assert_int_equal(bs.compactions, 1);
	assert_true(bs.reclaimed_bytes >= 50 * 2000);
	for (uint64_t k = 0; k < 50; k++)
		expect_obj(b, k, 2000, 1000 + k);
	ops->close(b);
	compact_env_reset();
}

/* A full active blob (rotation waits for the next append) that gets no more writes
 * is still sealed and compacted by the maintenance thread: "it will fill up within
 * the next interval anyway" must not keep it active for good. */
static void test_full_idle_blob_is_compacted(void **state)
{
	char dir[300];
	dir_for(dir, sizeof(dir), "fullidle");
	/* the first pass comes 2 s after open: the writes below are done by then */
	compact_env("256k", "0.5", "2000");
	struct dnet_backend *b = open_be(dir, DNET_FSYNC_NEVER);
	struct dnet_blob_stats bs = bstats(b);
	uint64_t v = 0;
	for (; v < 1000 && bs.disk_bytes < (256 << 10); v++) { /* 4 keys overwritten */
		put_seeded(b, v % 4, 2000, v);
		bs = bstats(b);
	}
	assert_int_equal(bs.blobs, 1); /* full, not rotated: no append came after */
	assert_true(bs.disk_bytes >= (256 << 10));
	for (int i = 0; i < 500 && (bs.active_seals < 1 || bs.compactions < 1); i++) {
		usleep(20000); /* up to 10 s */
		bs = bstats(b);
	}
	assert_true(bs.active_seals >= 1);
	assert_true(bs.compactions >= 1);
	for (uint64_t k = 0; k < 4; k++) {
		uint64_t last = v - 1; /* the newest seed written for key k */
		while (last % 4 != k)
			last--;
		expect_obj(b, k, 2000, last);
	}
	ops->close(b);
	compact_env_reset();
}

/* Automatic compaction leaves a sealed blob whose live bytes are still falling fast
 * to die on its own (copying records about to be overwritten doubles the writes),
 * compacts it once they stop falling, and compacts one that keeps dying after 6
 * passes anyway. */
static void test_hot_blob_left_to_die(void **state)
{
	char dir[300];
	const uint64_t S = 2000;
	compact_env("16M", "0.5", "600000"); /* passes only when the test asks */

	dir_for(dir, sizeof(dir), "hotdie");
	struct dnet_backend *b = open_be(dir, DNET_FSYNC_NEVER);
	for (uint64_t k = 0; k < 100; k++)
		put_seeded(b, k, S, k);
	assert_int_equal(dnet_blob_rotate(b), 0);
	for (uint64_t k = 0; k < 60; k++) /* 60% dead: past the ratio */
		put_seeded(b, k, S, 1000 + k);
	/* first look, sealed just now: no trend yet */
	assert_int_equal(dnet_blob_compact_auto(b), 0);
	for (uint64_t k = 60; k < 80; k++) /* live 40 -> 20 records */
		put_seeded(b, k, S, 1000 + k);
	assert_int_equal(dnet_blob_compact_auto(b), 0);
	assert_int_equal(bstats(b).compactions, 0);
	/* no longer falling: compacted, the 20 live records copied */
	uint64_t disk = bstats(b).disk_bytes;
	assert_int_equal(dnet_blob_compact_auto(b), 1);
	struct dnet_blob_stats bs = bstats(b);
	assert_int_equal(bs.compactions, 1);
	assert_true(bs.disk_bytes + 75 * S <= disk);
	for (uint64_t k = 0; k < 100; k++)
		expect_obj(b, k, S, k < 80 ? 1000 + k : k);
	ops->close(b);

	dir_for(dir, sizeof(dir), "hotdiecap");
	b = open_be(dir, DNET_FSYNC_NEVER);
	for (uint64_t k = 0; k < 200; k++)
		put_seeded(b, k, S, k);
	assert_int_equal(dnet_blob_rotate(b), 0);
	uint64_t next = 0, live = 200;
	for (; next < 110; next++, live--)
		put_seeded(b, next, S, 1000 + next);
	int pass = 1;
	for (; pass <= 7; pass++) {
		if (pass > 1) /* a third of what is live dies before each pass */
			for (uint64_t n = live / 3 + 1; n; n--, next++, live--)
				put_seeded(b, next, S, 1000 + next);
		int r = dnet_blob_compact_auto(b);
		assert_true(r >= 0);
		if (r == 1)
			break;
	}
	assert_int_equal(pass, 7); /* 1 first look + 5 while dying, then taken */
	assert_int_equal(bstats(b).compactions, 1);
	for (uint64_t k = 0; k < 200; k++)
		expect_obj(b, k, S, k < next ? 1000 + k : k);
	ops->close(b);
	compact_env_reset();
}

/* Superseded records in the blob being appended to are not marked or punched until
 * that blob is sealed (that would take the inode lock against every append and,
 * with fsync=never, sync the blob being written); a forced pass still takes them. */
static void test_punch_waits_for_seal(void **state)
{
	char dir[300];
	dir_for(dir, sizeof(dir), "punchseal");
	const uint64_t K = 16 << 10;
	setenv(DNET_BLOB_ENV_PUNCH, "manual", 1);
	setenv(DNET_BLOB_ENV_SIZE, "1M", 1);
	struct dnet_backend *b = open_be(dir, DNET_FSYNC_NEVER);
	for (uint64_t k = 0; k < 4; k++)
		put_seeded(b, k, K, k);
	for (uint64_t k = 0; k < 4; k++)
		put_seeded(b, k, K, 10 + k);
	assert_true(dnet_blob_reclaim(b, DNET_BLOB_RECLAIM_ALL) >= 0);
	assert_int_equal(bstats(b).dead_marked, 0); /* all in the active blob: they wait */
	assert_int_equal(bstats(b).blobs, 1);
	for (uint64_t k = 100; k < 180; k++) /* 1.25 MiB more: the first blob rotates out */
		put_seeded(b, k, K, k);
	assert_true(bstats(b).blobs >= 2);
	/* its records wait until the maintenance thread has sealed it (up to 10 s) */
	for (int i = 0; i < 500 && bstats(b).sealed < 1; i++)
		usleep(20000);
	assert_true(bstats(b).sealed >= 1);
	assert_true(dnet_blob_reclaim(b, DNET_BLOB_RECLAIM_ALL) >= 0);
	struct dnet_blob_stats bs = bstats(b);
	assert_int_equal(bs.dead_marked, 4);
	assert_true(bs.punched_bytes >= 4 * (K - 8192));
	/* superseded in the new active blob (the last keys written), then forced */
	for (uint64_t k = 178; k < 180; k++)
		put_seeded(b, k, K, 1000 + k);
	assert_true(dnet_blob_reclaim(b, DNET_BLOB_RECLAIM_ALL) >= 0);
	assert_int_equal(bstats(b).dead_marked, 4);
	assert_true(dnet_blob_reclaim(b, DNET_BLOB_RECLAIM_ALL | DNET_BLOB_RECLAIM_FORCE) >= 0);
	assert_int_equal(bstats(b).dead_marked, 6);
	for (uint64_t k = 0; k < 4; k++)
		expect_obj(b, k, K, 10 + k);
	for (uint64_t k = 100; k < 180; k++)
		expect_obj(b, k, K, k >= 178 ? 1000 + k : k);
	ops->close(b);
	unsetenv(DNET_BLOB_ENV_PUNCH);
	unsetenv(DNET_BLOB_ENV_SIZE);
	(void)state;
}

/* Records over 64 KiB carry a table of per-64 KiB-block checksums: written by whole
 * writes, by uploads hashed in order, read back out of order, or spooled; a read
 * verifies only the blocks it returns, before returning or (deferred) as the caller
 * sends them; a damaged table falls back to the whole checksum; found corruption is
 * refused up front the next time. */
#define BT_BLOCK 65536u
static void bt_expect_range(struct dnet_backend *b, const uint8_t *id, const uint8_t *want,
			    uint64_t off, uint64_t size)
{
	uint8_t *got;
	uint64_t len;
	assert_int_equal(rd(b, id, off, size, 0, &got, &len, NULL), 0);
	assert_int_equal(len, size);
	assert_memory_equal(got, want + off, size);
	free(got);
}

/* dnet_hash_blocks_mapped: the same digests as hashing what pread returns, for an
 * unaligned start and a short last block; a range past the end of the file is
 * declined (1: the caller reads instead), never a SIGBUS. */
static void test_hash_blocks_mapped(void **state)
{
	(void)state;
	char dir[300], path[400];
	dir_for(dir, sizeof(dir), "hashmap");
	assert_int_equal(mkdir(dir, 0700), 0);
	snprintf(path, sizeof(path), "%s/f", dir);
	const size_t N = 300000, off = 4196, len = 200000, blk = 65536;
	uint8_t *d = malloc(N);
	fill(d, N, 77);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(dnet_pwrite_full(fd, d, N, 0), 0);
	uint64_t h[4], want;
	memset(h, 0, sizeof(h));
	assert_int_equal(dnet_hash_blocks_mapped(fd, off, len, blk, h), 0);
	for (size_t i = 0, o = 0; o < len; i++, o += blk) {
		want = XXH3_64bits(d + off + o, len - o < blk ? len - o : blk);
		assert_true(h[i] == want);
	}
	/* flip one byte of the second block: only its digest changes */
	d[off + blk + 5] ^= 1;
	assert_int_equal(dnet_pwrite_full(fd, d + off + blk + 5, 1, off + blk + 5), 0);
	uint64_t h2[4];
	assert_int_equal(dnet_hash_blocks_mapped(fd, off, len, blk, h2), 0);
	assert_true(h2[0] == h[0] && h2[1] != h[1] && h2[2] == h[2] && h2[3] == h[3]);
	assert_int_equal(dnet_hash_blocks_mapped(fd, N - 10, 11, blk, h2), 1);
	assert_int_equal(dnet_hash_blocks_mapped(fd, N + 4096, 10, blk, h2), 1);
	close(fd);
	free(d);
	st_rm_rf(dir);
}

static void test_block_table(void **state)
{
	char dir[300], blob[400];
	dir_for(dir, sizeof(dir), "btab");
	struct dnet_backend *b = open_be(dir, DNET_FSYNC_NEVER);
	const uint64_t W = (1u << 20) + 100, U = 900000, C = 300000;
	uint8_t *w = malloc(W), *u = malloc(U), id[4][DNET_ID_SIZE];
	fill(w, W, 31);
	fill(u, U, 32);
	for (int k = 0; k < 4; k++)
		mkid(id[k], 40 + (uint64_t)k);
	/* 0: whole write; 1: upload in order; 2: out of order; 3: unknown length */
	assert_int_equal(wr(b, id[0], 0, w, W, 0, 0, 0, NULL), 0);
	for (uint64_t o = 0; o < U; o += C)
		assert_int_equal(wr(b, id[1], o, u + o, C,
				    o == 0 ? DNET_IO_PREPARE : o + C == U ? DNET_IO_COMMIT : DNET_IO_PLAIN,
				    U, 7, NULL), 0);
	assert_int_equal(wr(b, id[2], C, u + C, C, DNET_IO_PREPARE, U, 8, NULL), 0);
	assert_int_equal(wr(b, id[2], 0, u, C, DNET_IO_PLAIN, U, 8, NULL), 0);
	assert_int_equal(wr(b, id[2], 2 * C, u + 2 * C, C, DNET_IO_COMMIT, U, 8, NULL), 0);
	for (uint64_t o = 0; o < U; o += C)
		assert_int_equal(wr(b, id[3], o, u + o, C,
				    o == 0 ? DNET_IO_PREPARE : o + C == U ? DNET_IO_COMMIT : DNET_IO_PLAIN,
				    0, 9, NULL), 0);
	for (int pass = 0; pass < 2; pass++) {
		bt_expect_range(b, id[0], w, 0, W);
		bt_expect_range(b, id[0], w, W - 7, 7);
		bt_expect_range(b, id[0], w, BT_BLOCK - 3, 6);
		for (int k = 1; k < 4; k++) {
			bt_expect_range(b, id[k], u, 0, U);
			bt_expect_range(b, id[k], u, 5 * BT_BLOCK + 1, 2 * BT_BLOCK);
		}
		struct dnet_blob_stats bs = bstats(b);
		assert_int_equal(bs.table_fallbacks, 0); /* every table was right */
		struct dnet_backend_stat st;
		ops->stat(b, &st);
		assert_int_equal(st.corrupt, 0);
		ops->close(b); /* and the same from the index files */
		b = open_be(dir, DNET_FSYNC_NEVER);
	}

	/* a bad byte in block 16, the last, of object 0 */
	last_blob(dir, blob, sizeof(blob));
	flip_in_file(blob, w + 16 * BT_BLOCK + 10, 64);
	/* deferred: the good blocks before it pass, then the check fails */
	struct dnet_read_res res;
	assert_int_equal(ops->read(b, id[0], 0, 0, DNET_READ_DEFER_VERIFY, &res), 0);
	assert_non_null(res.verify);
	assert_true(res.fd >= 0);
	assert_int_equal(res.len, W);
	uint64_t at = res.file_offset, end = 0;
	int err = 0;
	while (at < res.file_offset + res.len && !(err = res.verify->check(res.verify, res.fd, at, &end))) {
		assert_true(end > at);
		at = end;
	}
	assert_int_equal(err, DNET_ECORRUPT);
	/* released in steps: the good blocks before it were, the bad one never */
	assert_true(at <= res.file_offset + 16 * BT_BLOCK);
	assert_true(at >= res.file_offset + BT_BLOCK);
	res.verify->free(res.verify);
	close(res.fd);
	uint8_t *got;
	uint64_t len;
	bt_expect_range(b, id[0], w, 0, 16 * BT_BLOCK); /* blocks 0..15 are fine */
	bt_expect_range(b, id[0], w, 3 * BT_BLOCK + 1, BT_BLOCK);
	assert_int_equal(rd(b, id[0], 16 * BT_BLOCK + 5, 1, 0, &got, &len, NULL), DNET_ECORRUPT);
	assert_int_equal(rd(b, id[0], 0, 0, 0, &got, &len, NULL), DNET_ECORRUPT);
	/* found once: the next deferred read is verified before it returns */
	assert_int_equal(ops->read(b, id[0], 0, 0, DNET_READ_DEFER_VERIFY, &res), DNET_ECORRUPT);
	assert_int_equal(ops->read(b, id[1], 0, 0, DNET_READ_DEFER_VERIFY, &res), 0);
	assert_non_null(res.verify); /* others are not */
	res.verify->free(res.verify);
	close(res.fd);

	/* a damaged table entry (block 3 of object 1): the data is served, noted */
	uint8_t ent[8];
	uint64_t h3 = XXH3_64bits(u + 3 * BT_BLOCK, BT_BLOCK);
	for (int i = 0; i < 8; i++)
		ent[i] = (uint8_t)(h3 >> (8 * i));
	flip_in_file(blob, ent, 8);
	bt_expect_range(b, id[1], u, 3 * BT_BLOCK + 10, 100);
	bt_expect_range(b, id[1], u, 0, U);
	assert_true(bstats(b).table_fallbacks >= 2);
	struct dnet_backend_stat st;
	ops->stat(b, &st);
	assert_int_equal(st.corrupt, 4); /* object 0 only: 2 deferred, the ranged and whole reads */
	ops->close(b);
	free(w);
	free(u);
	(void)state;
}

/* ---- the verified-data cache ------------------------------------------------------ */

static struct dnet_backend_stat bestat(struct dnet_backend *b)
{
	struct dnet_backend_stat st;
	assert_int_equal(ops->stat(b, &st), 0);
	return st;
}

/* Reads id whole until a read finds its data already verified (the cache takes a
 * record only once its file has not changed for 50 ms): waits for that
 * condition, for up to 10 s. Every read must return want. */
static void read_until_cached(struct dnet_backend *b, const uint8_t *id, const uint8_t *want,
			      uint64_t size)
{
	uint64_t t0 = dnet_now_mono_ns();
	for (;;) {
		uint64_t hits = bestat(b).vcache.hit_bytes;
		bt_expect_range(b, id, want, 0, size);
		if (bestat(b).vcache.hit_bytes - hits == size)
			return;
		assert_true(dnet_now_mono_ns() - t0 < 10000000000ull);
		usleep(10000);
	}
}

/* Verified data of large records is kept locked and read again without hashing:
 * ranged and deferred reads are served from it; a byte changed in the file
 * through the page cache is still found (the change drops the file's entries);
 * the budget evicts the least recently read; an overwrite drops the old record's
 * entry; a deferred read still held when the engine closes is safe to free. */
static void test_verified_cache(void **state)
{
	(void)state;
	char dir[300], blob[400];
	dir_for(dir, sizeof(dir), "vcache");
	struct dnet_backend_config cfg;
	struct dnet_backend *b = NULL;
	dnet_backend_config_defaults(&cfg);
	cfg.path = dir;
	cfg.verified_cache = 8u << 20;
	assert_int_equal(ops->open(&cfg, &b), 0);
	const uint64_t A = (3u << 20) + 12345, B = 6u << 20;
	uint8_t *a = malloc(A), *bb = malloc(B), ida[DNET_ID_SIZE], idb[DNET_ID_SIZE];
	fill(a, A, 91);
	fill(bb, B, 92);
	mkid(ida, 91);
	mkid(idb, 92);
	assert_int_equal(put(b, 91, a, A), 0);
	assert_int_equal(put(b, 92, bb, B), 0);
	struct dnet_backend_stat st = bestat(b);
	assert_int_equal(st.vcache.limit, 8u << 20);
	assert_int_equal(st.vcache.bytes, 0);

	read_until_cached(b, ida, a, A);
	st = bestat(b);
	assert_int_equal(st.vcache.bytes, A);
	assert_int_equal(st.vcache.entries, 1);
	/* ranges, unaligned, from the cache */
	uint64_t hits = st.vcache.hit_bytes;
	bt_expect_range(b, ida, a, BT_BLOCK - 3, 6);
	bt_expect_range(b, ida, a, A - 7, 7);
	bt_expect_range(b, ida, a, 17 * BT_BLOCK + 1, 2 * BT_BLOCK);
	assert_true(bestat(b).vcache.hit_bytes > hits);
	/* a deferred read: every step is a hit */
	struct dnet_read_res res;
	hits = bestat(b).vcache.hit_bytes;
	assert_int_equal(ops->read(b, ida, 0, 0, DNET_READ_DEFER_VERIFY, &res), 0);
	assert_non_null(res.verify);
	uint64_t at = res.file_offset, end = 0;
	while (at < res.file_offset + res.len) {
		assert_int_equal(res.verify->check(res.verify, res.fd, at, &end), 0);
		assert_true(end > at);
		at = end;
	}
	res.verify->free(res.verify);
	close(res.fd);
	assert_int_equal(bestat(b).vcache.hit_bytes - hits, A);

	/* B does not fit beside A in 8 MiB: A, read least recently, goes */
	read_until_cached(b, idb, bb, B);
	st = bestat(b);
	assert_int_equal(st.vcache.bytes, B);
	assert_int_equal(st.vcache.entries, 1);
	assert_int_equal(st.vcache.evicted, 1);

	/* a byte of B changed through the page cache (its pages are locked, so this is
	 * the only way they can change): found, never served */
	last_blob(dir, blob, sizeof(blob));
	flip_in_file(blob, bb + 4 * BT_BLOCK + 100, 64);
	uint8_t *got;
	uint64_t len;
	assert_int_equal(rd(b, idb, 0, 0, 0, &got, &len, NULL), DNET_ECORRUPT);
	st = bestat(b);
	assert_int_equal(st.vcache.dropped, 1);
	assert_int_equal(st.vcache.bytes, 0);
	assert_int_equal(st.vcache.entries, 0);
	assert_int_equal(rd(b, idb, 4 * BT_BLOCK, 10, 0, &got, &len, NULL), DNET_ECORRUPT);
	/* A, in the same (changed) file, is verified again before it is cached again */
	read_until_cached(b, ida, a, A);

	/* an overwrite drops the old record's entry; the new one is cached anew
	 * (B may have a new, empty entry by now: its read above came more than
	 * 50 ms after the change, or not) */
	uint64_t entries = bestat(b).vcache.entries;
	fill(a, A, 93);
	assert_int_equal(put(b, 91, a, A), 0);
	assert_int_equal(bestat(b).vcache.entries, entries - 1);
	read_until_cached(b, ida, a, A);
	st = bestat(b);
	assert_int_equal(st.vcache.entries, entries);
	assert_int_equal(st.vcache.bytes, A);

	/* a deferred read outlives the engine: its entry is put back after close */
	assert_int_equal(ops->read(b, ida, 0, 0, DNET_READ_DEFER_VERIFY, &res), 0);
	assert_non_null(res.verify);
	assert_int_equal(res.verify->check(res.verify, res.fd, res.file_offset, &end), 0);
	ops->close(b);
	res.verify->free(res.verify);
	close(res.fd);

	/* off: nothing is cached, reads are verified as before */
	cfg.verified_cache = 0;
	assert_int_equal(ops->open(&cfg, &b), 0);
	for (int k = 0; k < 3; k++)
		bt_expect_range(b, ida, a, 0, A);
	st = bestat(b);
	assert_int_equal(st.vcache.limit, 0);
	assert_int_equal(st.vcache.hit_bytes, 0);
	assert_int_equal(rd(b, idb, 0, 0, 0, &got, &len, NULL), DNET_ECORRUPT);
	ops->close(b);
	free(a);
	free(bb);
	st_rm_rf(dir);
}

int main(void)
{
	snprintf(root, sizeof(root), "/tmp/test_blob_XXXXXX");
	if (!mkdtemp(root)) {
		perror("mkdtemp");
		return 1;
	}
	setenv(DNET_BLOB_ENV_COMPACT, "0", 1); /* compaction only when a test asks */
	ops = dnet_backend_find("blob");
	if (!ops) {
		fprintf(stderr, "blob engine not registered\n");
		return 1;
	}
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_sizes),
	    cmocka_unit_test(test_verified_cache),
	    cmocka_unit_test(test_ranges),
	    cmocka_unit_test(test_update),
	    cmocka_unit_test(test_upload),
	    cmocka_unit_test(test_overwrite_delete),
	    cmocka_unit_test(test_rotation_reopen),
	    cmocka_unit_test(test_torn_tail),
	    cmocka_unit_test(test_hostile_header),
	    cmocka_unit_test(test_corruption),
	    cmocka_unit_test(test_mapped_truncated),
	    cmocka_unit_test(test_hash_blocks_mapped),
	    cmocka_unit_test(test_block_table),
	    cmocka_unit_test(test_concurrent_batch),
	    cmocka_unit_test(test_compaction),
	    cmocka_unit_test(test_prefix_twins),
	    cmocka_unit_test(test_index_ram),
	    cmocka_unit_test(test_enospc),
	    cmocka_unit_test(test_punch),
	    cmocka_unit_test(test_punch_waits_for_seal),
	    cmocka_unit_test(test_punch_leaves_to_compaction),
	    cmocka_unit_test(test_rotation_leaves_to_compaction),
	    cmocka_unit_test(test_empty_blob_goes_at_once),
	    cmocka_unit_test(test_full_idle_blob_is_compacted),
	    cmocka_unit_test(test_hot_blob_left_to_die),
	    cmocka_unit_test(test_punch_crash_points),
	    cmocka_unit_test(test_torn_mark),
	    cmocka_unit_test(test_read_lease),
	    cmocka_unit_test(test_delete_in_place),
	    cmocka_unit_test(test_auto_compact),
	};
	int rc = cmocka_run_group_tests(tests, NULL, NULL);
	st_rm_rf(root);
	return rc;
}
