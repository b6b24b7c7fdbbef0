/* test_tools.c - the offline tools (src/storage/tools.h): export from every engine and
 * import into every engine keeps bytes, checksums and timestamps exactly; check finds
 * a corrupt object; crafted streams with valid header checksums but hostile lengths,
 * counts or data are refused without large allocations. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <xxhash.h>

#include "common/errors.h"
#include "common/id.h"
#include "common/log.h"
#include "storage/backend.h"
#include "storage_test.h"
#include "storage/tools.h"

static const char *const engines[] = {"file", "blob", "lmdb", "bdb", "mem"};
#define NENG (sizeof(engines) / sizeof(engines[0]))
#define NOBJ 12

struct eng {
	const struct dnet_backend_ops *ops;
	struct dnet_backend *b;
	char dir[64];
	struct dnet_backend_config cfg;
};

static void eng_open(struct eng *e, const char *name)
{
	e->ops = dnet_backend_find(name);
	assert_non_null(e->ops);
	snprintf(e->dir, sizeof(e->dir), "/tmp/dnet-tools-XXXXXX");
	assert_non_null(mkdtemp(e->dir));
	dnet_backend_config_defaults(&e->cfg);
	e->cfg.path = e->dir;
	assert_int_equal(e->ops->open(&e->cfg, &e->b), 0);
}

static void eng_close(struct eng *e)
{
	e->ops->close(e->b);
	st_rm_rf(e->dir);
}

static int put(struct eng *e, const uint8_t *id, const void *data, uint64_t len, uint64_t ts)
{
	struct dnet_io_attr io = {.size = len, .timestamp = ts};
	int calls;
	return st_write_io(e->ops, e->b, id, &io, data, ts, NULL, &calls);
}

static const uint64_t sizes[NOBJ] = {0, 1, 100, 4096, 65537, 300000, 1, 7, (8u << 20) + 5,
				     (8u << 20), 12345, 2};

static void obj(int i, uint8_t id[DNET_ID_SIZE], uint64_t *ts)
{
	char key[32];
	snprintf(key, sizeof(key), "tools-%d", i);
	dnet_id_from_key(id, key, strlen(key));
	/* odd timestamps, all bits in use: carried exactly, never re-stamped */
	*ts = 0x8000000000000001ull ^ ((uint64_t)i * 0x0123456789abcdefull);
}

static void populate(struct eng *e, uint8_t *buf)
{
	for (int i = 0; i < NOBJ; i++) {
		uint8_t id[DNET_ID_SIZE];
		uint64_t ts;
		obj(i, id, &ts);
		st_fill(buf, sizes[i], (uint64_t)i + 1);
		assert_int_equal(put(e, id, buf, sizes[i], ts), 0);
	}
}

static void expect_all(struct eng *e, uint8_t *buf)
{
	for (int i = 0; i < NOBJ; i++) {
		uint8_t id[DNET_ID_SIZE], csum[16];
		uint64_t ts;
		struct dnet_obj_info info;
		obj(i, id, &ts);
		st_fill(buf, sizes[i], (uint64_t)i + 1);
		dnet_csum(buf, sizes[i], csum);
		assert_int_equal(e->ops->lookup(e->b, id, &info), 0);
		assert_int_equal(info.size, sizes[i]);
		assert_true(info.timestamp == ts);
		assert_memory_equal(info.csum, csum, 16);
	}
}

static int tmpfd(void)
{
	char path[] = "/tmp/dnet-tools-stream-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	unlink(path);
	return fd;
}

/* every engine -> every engine */
static void test_roundtrip_all_pairs(void **state)
{
	(void)state;
	uint8_t *buf = malloc((8u << 20) + 64);
	assert_non_null(buf);
	for (size_t s = 0; s < NENG; s++) {
		struct eng src;
		eng_open(&src, engines[s]);
		populate(&src, buf);
		int fd = tmpfd();
		struct dnet_tool_result r;
		FILE *devnull = fopen("/dev/null", "w");
		assert_int_equal(dnet_tool_export(src.ops, src.b, fd, devnull, &r), 0);
		assert_int_equal(r.objects, NOBJ);
		assert_int_equal(r.bad, 0);
		assert_int_equal(dnet_tool_check(src.ops, src.b, devnull, &r), 0);
		assert_int_equal(r.objects, NOBJ);
		assert_int_equal(r.bad, 0);
		for (size_t d = 0; d < NENG; d++) {
			struct eng dst;
			eng_open(&dst, engines[d]);
			assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
			assert_int_equal(dnet_tool_import(dst.ops, dst.b, fd, 1, stderr, &r), 0);
			assert_int_equal(r.objects, NOBJ);
			struct dnet_backend_stat st;
			assert_int_equal(dst.ops->stat(dst.b, &st), 0);
			assert_int_equal(st.objects, 0); /* verify only */
			assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
			assert_int_equal(dnet_tool_import(dst.ops, dst.b, fd, 0, stderr, &r), 0);
			assert_int_equal(r.objects, NOBJ);
			expect_all(&dst, buf);
			/* its export is the same stream, byte for byte */
			int fd2 = tmpfd();
			assert_int_equal(dnet_tool_export(dst.ops, dst.b, fd2, devnull, &r), 0);
			off_t l1 = lseek(fd, 0, SEEK_END), l2 = lseek(fd2, 0, SEEK_END);
			assert_int_equal(l1, l2);
			uint8_t a[65536], b2[65536];
			for (off_t o = 0; o < l1; o += (off_t)sizeof(a)) {
				ssize_t n1 = pread(fd, a, sizeof(a), o), n2 = pread(fd2, b2, sizeof(b2), o);
				assert_int_equal(n1, n2);
				assert_memory_equal(a, b2, (size_t)n1);
			}
			close(fd2);
			eng_close(&dst);
		}
		fclose(devnull);
		close(fd);
		eng_close(&src);
	}
	free(buf);
}

/* ---- crafted streams ------------------------------------------------------------- */

static void sum(uint8_t *p, size_t covered)
{
	dnet_put_u64(p + covered, XXH3_64bits(p, covered));
}

static void stream_hdr(int fd)
{
	uint8_t h[DNET_EXPORT_HDR] = {0};
	memcpy(h, DNET_EXPORT_MAGIC, 8);
	dnet_put_u32(h + 8, DNET_EXPORT_VERSION);
	sum(h, 24);
	assert_int_equal(write(fd, h, sizeof(h)), (ssize_t)sizeof(h));
}

static void rec_hdr(int fd, uint64_t size, uint64_t ts, const void *data)
{
	uint8_t r[DNET_EXPORT_REC] = {0};
	memcpy(r, "DXOB", 4);
	dnet_id_from_key(r + 8, "crafted", 7);
	dnet_put_u64(r + 72, ts);
	dnet_put_u64(r + 80, size);
	if (data)
		dnet_csum(data, (size_t)size, r + 88);
	sum(r, 120);
	assert_int_equal(write(fd, r, sizeof(r)), (ssize_t)sizeof(r));
}

static void end_rec(int fd, uint64_t count, uint64_t bytes)
{
	uint8_t r[DNET_EXPORT_REC] = {0};
	memcpy(r, "DXND", 4);
	dnet_put_u64(r + 8, count);
	dnet_put_u64(r + 16, bytes);
	sum(r, 120);
	assert_int_equal(write(fd, r, sizeof(r)), (ssize_t)sizeof(r));
}

static int import_fd(struct eng *e, int fd, int verify_only)
{
	struct dnet_tool_result r;
	assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
	FILE *devnull = fopen("/dev/null", "w");
	int err = dnet_tool_import(e->ops, e->b, fd, verify_only, devnull, &r);
	fclose(devnull);
	return err;
}

static void test_hostile_streams(void **state)
{
	(void)state;
	struct eng e;
	eng_open(&e, "blob");
	uint8_t data[1000];
	st_fill(data, sizeof(data), 5);
	int fd;

	/* a good one, for contrast */
	fd = tmpfd();
	stream_hdr(fd);
	rec_hdr(fd, sizeof(data), 42, data);
	assert_int_equal(write(fd, data, sizeof(data)), (ssize_t)sizeof(data));
	end_rec(fd, 1, sizeof(data));
	assert_int_equal(import_fd(&e, fd, 1), 0);
	close(fd);

	/* size over 2^44 with a valid header checksum */
	fd = tmpfd();
	stream_hdr(fd);
	rec_hdr(fd, 1ull << 50, 42, NULL);
	assert_int_equal(import_fd(&e, fd, 0), DNET_ECORRUPT);
	close(fd);

	/* 1 TiB claimed, 1000 bytes present: truncated, found reading 8 MiB at a time */
	fd = tmpfd();
	stream_hdr(fd);
	rec_hdr(fd, 1ull << 40, 42, NULL);
	assert_int_equal(write(fd, data, sizeof(data)), (ssize_t)sizeof(data));
	assert_int_equal(import_fd(&e, fd, 0), DNET_ECORRUPT);
	close(fd);

	/* data does not match its checksum: nothing stored */
	fd = tmpfd();
	stream_hdr(fd);
	rec_hdr(fd, sizeof(data), 42, data);
	data[500] ^= 1;
	assert_int_equal(write(fd, data, sizeof(data)), (ssize_t)sizeof(data));
	data[500] ^= 1;
	end_rec(fd, 1, sizeof(data));
	assert_int_equal(import_fd(&e, fd, 0), DNET_ECORRUPT);
	close(fd);

	/* a large object (chunked upload) whose last piece is wrong is never committed */
	size_t big = (8u << 20) * 2 + 10;
	uint8_t *bd = malloc(big);
	assert_non_null(bd);
	st_fill(bd, big, 6);
	fd = tmpfd();
	stream_hdr(fd);
	rec_hdr(fd, big, 42, bd);
	bd[big - 1] ^= 1;
	assert_int_equal(write(fd, bd, big), (ssize_t)big);
	end_rec(fd, 1, big);
	assert_int_equal(import_fd(&e, fd, 0), DNET_ECORRUPT);
	close(fd);
	free(bd);
	uint8_t id[DNET_ID_SIZE];
	struct dnet_obj_info info;
	dnet_id_from_key(id, "crafted", 7);
	assert_int_equal(e.ops->lookup(e.b, id, &info), DNET_ENOENT);

	/* wrong counts, missing end, trailing bytes, timestamp 0, unknown version */
	for (int v = 0; v < 6; v++) {
		fd = tmpfd();
		if (v == 5) {
			uint8_t h[DNET_EXPORT_HDR] = {0};
			memcpy(h, DNET_EXPORT_MAGIC, 8);
			dnet_put_u32(h + 8, 2);
			sum(h, 24);
			assert_int_equal(write(fd, h, sizeof(h)), (ssize_t)sizeof(h));
		} else {
			stream_hdr(fd);
		}
		rec_hdr(fd, sizeof(data), v == 4 ? 0 : 42, data);
		assert_int_equal(write(fd, data, sizeof(data)), (ssize_t)sizeof(data));
		if (v == 0)
			end_rec(fd, 2, sizeof(data));
		else if (v == 1)
			end_rec(fd, 1, sizeof(data) + 1);
		else if (v == 3 || v == 4 || v == 5)
			end_rec(fd, 1, sizeof(data));
		if (v == 3)
			assert_int_equal(write(fd, "x", 1), 1);
		assert_int_equal(import_fd(&e, fd, 1), DNET_ECORRUPT);
		close(fd);
	}
	struct dnet_backend_stat st;
	assert_int_equal(e.ops->stat(e.b, &st), 0);
	assert_int_equal(st.objects, 0);
	eng_close(&e);
}

/* check names a corrupt object; export leaves it out and stays a valid stream */
static void test_check_finds_corruption(void **state)
{
	(void)state;
	struct eng e;
	eng_open(&e, "file");
	uint8_t *buf = malloc((8u << 20) + 64);
	assert_non_null(buf);
	populate(&e, buf);
	/* damage object 4's data byte on disk: file engine, DIR/xx/HEX, data at 128 */
	uint8_t id[DNET_ID_SIZE];
	uint64_t ts;
	obj(4, id, &ts);
	char hex[2 * DNET_ID_SIZE + 1], path[512];
	dnet_id_to_hex(hex, id, DNET_ID_SIZE);
	snprintf(path, sizeof(path), "%s/%.2s/%s", e.dir, hex, hex);
	int ofd = open(path, O_RDWR);
	assert_true(ofd >= 0);
	uint8_t c;
	assert_int_equal(pread(ofd, &c, 1, 128 + 1000), 1);
	c ^= 0x40;
	assert_int_equal(pwrite(ofd, &c, 1, 128 + 1000), 1);
	close(ofd);

	char *out = NULL;
	size_t outlen = 0;
	FILE *mem = open_memstream(&out, &outlen);
	struct dnet_tool_result r;
	assert_int_equal(dnet_tool_check(e.ops, e.b, mem, &r), 0);
	fclose(mem);
	assert_int_equal(r.bad, 1);
	assert_int_equal(r.objects, NOBJ - 1);
	assert_non_null(strstr(out, hex));
	free(out);

	int fd = tmpfd();
	FILE *devnull = fopen("/dev/null", "w");
	assert_int_equal(dnet_tool_export(e.ops, e.b, fd, devnull, &r), 0);
	fclose(devnull);
	assert_int_equal(r.bad, 1);
	assert_int_equal(r.objects, NOBJ - 1);
	struct eng d;
	eng_open(&d, "blob");
	assert_int_equal(import_fd(&d, fd, 0), 0);
	struct dnet_backend_stat st;
	assert_int_equal(d.ops->stat(d.b, &st), 0);
	assert_int_equal(st.objects, NOBJ - 1);
	close(fd);
	eng_close(&d);
	eng_close(&e);
	free(buf);
}

int main(void)
{
	const char *lvl = getenv("DNET_TEST_LOG");
	dnet_log_level = lvl ? dnet_log_level_parse(lvl) : -1;
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_roundtrip_all_pairs),
	    cmocka_unit_test(test_hostile_streams),
	    cmocka_unit_test(test_check_finds_corruption),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
