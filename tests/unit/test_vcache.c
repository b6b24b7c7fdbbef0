/* test_vcache.c - the verified-data cache (src/storage/vcache.c) on its own:
 * claims and coverage, a claim another reader holds, a changed file, an entry
 * that outlives its cache, and a process without CAP_IPC_LOCK whose
 * RLIMIT_MEMLOCK is smaller than the cache (at start, and lowered later). */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/util.h"
#include "storage/vcache.h"
#include "storage_test.h"

#define UNIT 65536u
#define MiB (1u << 20)

static char root[256];

/* A file of `size` deterministic bytes; returns an fd open for reading. */
static int make_file(const char *name, size_t size, uint64_t seed, char *path, size_t n)
{
	snprintf(path, n, "%s/%s", root, name);
	uint8_t *d = malloc(size);
	if (!d)
		return -1;
	st_fill(d, size, seed);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd >= 0 && dnet_pwrite_full(fd, d, size, 0) != 0) {
		close(fd);
		fd = -1;
	}
	free(d);
	return fd;
}

/* The entry for (owner, key), once the file has settled (50 ms unchanged): waits
 * for that condition, up to 10 s. NULL only on timeout. */
static struct dnet_vpin *get_settled(struct dnet_vcache *c, const void *owner, uint64_t key,
				     int fd, uint64_t off, uint64_t len)
{
	uint64_t t0 = dnet_now_mono_ns();
	struct dnet_vpin *p;
	while (!(p = dnet_vpin_get(c, owner, key, fd, off, len, UNIT)) &&
	       dnet_now_mono_ns() - t0 < 10000000000ull)
		usleep(10000);
	return p;
}

static struct dnet_vcache_stat vstat(struct dnet_vcache *c)
{
	struct dnet_vcache_stat st;
	dnet_vcache_stat(c, &st);
	return st;
}

/* Gets the entry twice (a record is admitted on its second read) and puts the
 * first reference back. */
static struct dnet_vpin *get_admitted(struct dnet_vcache *c, const void *owner, uint64_t key,
				      int fd, uint64_t off, uint64_t len)
{
	struct dnet_vpin *p = get_settled(c, owner, key, fd, off, len);
	if (!p)
		return NULL;
	struct dnet_vpin *q = dnet_vpin_get(c, owner, key, fd, off, len, UNIT);
	dnet_vpin_put(p);
	return q;
}

static void test_claim_and_cover(void **state)
{
	(void)state;
	char path[400];
	const size_t N = 3 * MiB + 5100, OFF = 100;
	int fd = make_file("a", N, 1, path, sizeof(path));
	assert_true(fd >= 0);
	uint8_t *want = malloc(N);
	st_fill(want, N, 1);
	struct dnet_vcache *c = dnet_vcache_new(16 * MiB, root);
	assert_non_null(c);
	const uint64_t len = N - OFF; /* data of a "record" at OFF: 48 units and a bit */
	struct dnet_vpin *p = get_settled(c, &root, 7, fd, OFF, len);
	assert_non_null(p);
	/* first read: not admitted (a one-off read does not push hot data out) */
	assert_null(dnet_vpin_claim(p, 0, 16));
	struct dnet_vpin *q = dnet_vpin_get(c, &root, 7, fd, OFF, len, UNIT);
	assert_ptr_equal(q, p); /* the same entry, read twice */
	assert_int_equal(dnet_vpin_covered(p, fd, 0, 16), 0);
	const uint8_t *m = dnet_vpin_claim(p, 0, 16);
	assert_non_null(m);
	assert_memory_equal(m, want + OFF, 16 * UNIT); /* the record's bytes, locked */
	/* another reader: not while the prefix is being extended */
	assert_null(dnet_vpin_claim(q, 8, 16));
	assert_int_equal(dnet_vpin_covered(q, fd, 0, 1), 0); /* claimed is not verified */
	dnet_vpin_done(p, 1);
	assert_int_equal(dnet_vpin_covered(q, fd, 0, 16), 1);
	assert_int_equal(dnet_vpin_covered(q, fd, 8, 16), 0);
	/* only the prefix grows: a claim past it is refused, one straddling it locks
	 * the rest of its units */
	assert_null(dnet_vpin_claim(q, 20, 16));
	m = dnet_vpin_claim(q, 8, 16);
	assert_non_null(m);
	assert_null(dnet_vpin_claim(p, 24, 1)); /* busy */
	assert_memory_equal(m, want + OFF + 8 * UNIT, 16 * UNIT);
	dnet_vpin_done(q, 1);
	assert_int_equal(dnet_vpin_covered(q, fd, 8, 16), 1);
	/* to the end, the short last unit among them */
	for (uint64_t u = 24; u < 49; u += 16) {
		uint64_t n = 49 - u < 16 ? 49 - u : 16;
		m = dnet_vpin_claim(p, u, n);
		assert_non_null(m);
		dnet_vpin_done(p, 1);
	}
	assert_int_equal(dnet_vpin_covered(p, fd, 40, 9), 1);
	assert_memory_equal(m, want + OFF + 40 * UNIT, len - 40 * UNIT);
	/* nothing past the record is ever "covered" */
	assert_int_equal(dnet_vpin_covered(p, fd, 49, 1), 0);
	assert_int_equal(dnet_vpin_covered(p, fd, 40, 16), 0);
	assert_int_equal(dnet_vpin_covered(p, fd, 0, 0), 0);
	struct dnet_vcache_stat st = vstat(c);
	assert_int_equal(st.bytes, len);
	assert_int_equal(st.entries, 1);
	assert_int_equal(st.hit_bytes, 16 * UNIT + 16 * UNIT + (len - 40 * UNIT));
	/* the same key for another record (other size): the stale entry goes */
	dnet_vpin_put(q);
	q = dnet_vpin_get(c, &root, 7, fd, OFF, len - 1, UNIT);
	assert_int_equal(dnet_vpin_covered(p, fd, 0, 16), -1);
	assert_non_null(q);
	assert_true(q != p);
	dnet_vpin_put(q);
	dnet_vcache_drop(c, &root, 7);
	dnet_vpin_put(p);
	st = vstat(c);
	assert_int_equal(st.bytes, 0); /* unmapped with its last reader */
	assert_int_equal(st.entries, 0);

	/* a failed check drops the entry: nobody trusts it any more */
	p = get_admitted(c, &root, 8, fd, OFF, len);
	assert_non_null(p);
	assert_non_null(dnet_vpin_claim(p, 0, 16));
	dnet_vpin_done(p, 0);
	assert_int_equal(dnet_vpin_covered(p, fd, 0, 16), -1);
	assert_int_equal(vstat(c).entries, 0);
	dnet_vpin_put(p);

	/* a write to the file drops its entries at their next look */
	p = get_admitted(c, &root, 9, fd, OFF, len);
	assert_non_null(p);
	assert_non_null(dnet_vpin_claim(p, 0, 16));
	dnet_vpin_done(p, 1);
	assert_int_equal(dnet_vpin_covered(p, fd, 0, 16), 1);
	uint8_t x = 0x5a;
	assert_int_equal(pwrite(fd, &x, 1, (off_t)(OFF + 5)), 1);
	assert_int_equal(dnet_vpin_covered(p, fd, 0, 16), -1);
	st = vstat(c);
	assert_int_equal(st.dropped, 1);
	assert_int_equal(st.entries, 0);
	dnet_vpin_put(p);

	/* an entry outlives its cache: usable as "gone", freed with its last put */
	p = get_admitted(c, &root, 10, fd, OFF, len);
	assert_non_null(p);
	assert_non_null(dnet_vpin_claim(p, 0, 16));
	dnet_vcache_free(c);
	dnet_vpin_done(p, 1);
	assert_int_equal(dnet_vpin_covered(p, fd, 0, 16), -1);
	dnet_vpin_put(p);
	close(fd);
	free(want);
}

/* LRU: the least recently used idle entry goes to make room; an entry a reader
 * holds is never evicted (it would free nothing), so a claim that only busy
 * entries could make room for is refused without evicting anything; one larger
 * than the whole cache is never made. */
static void test_eviction(void **state)
{
	(void)state;
	char pa[400], pb[400], pc[400];
	int fa = make_file("ea", 2 * MiB, 2, pa, sizeof(pa)), fb = make_file("eb", 2 * MiB, 3, pb, sizeof(pb));
	int fc = make_file("ec", 4 * MiB, 6, pc, sizeof(pc));
	assert_true(fa >= 0 && fb >= 0 && fc >= 0);
	struct dnet_vcache *c = dnet_vcache_new(3 * MiB, root);
	struct dnet_vpin *a = get_admitted(c, &root, 1, fa, 0, 2 * MiB);
	struct dnet_vpin *b = get_admitted(c, &root, 2, fb, 0, 2 * MiB);
	assert_non_null(a);
	assert_non_null(b);
	assert_null(dnet_vpin_get(c, &root, 3, fc, 0, 4 * MiB, UNIT)); /* larger than the cache */
	assert_non_null(dnet_vpin_claim(a, 0, 32));
	dnet_vpin_done(a, 1);
	assert_non_null(dnet_vpin_claim(b, 0, 16));
	dnet_vpin_done(b, 1);
	assert_int_equal(vstat(c).bytes, 3 * MiB);
	/* a is held by its reader: no room for b's second MiB, and a stays */
	assert_null(dnet_vpin_claim(b, 16, 16));
	struct dnet_vcache_stat st = vstat(c);
	assert_int_equal(st.evicted, 0);
	assert_int_equal(st.entries, 2);
	assert_int_equal(dnet_vpin_covered(a, fa, 0, 32), 1);
	dnet_vpin_put(a); /* idle now: it goes for b */
	assert_non_null(dnet_vpin_claim(b, 16, 16));
	dnet_vpin_done(b, 1);
	st = vstat(c);
	assert_int_equal(st.evicted, 1);
	assert_int_equal(st.entries, 1);
	assert_int_equal(st.bytes, 2 * MiB);
	dnet_vpin_put(b);
	dnet_vcache_drop(c, &root, 2);
	assert_int_equal(vstat(c).bytes, 0);

	/* at most 4096 entries: a new one evicts the least recently used idle one;
	 * with every entry held, none is made */
	static struct dnet_vpin *held[4096];
	for (uint64_t k = 0; k < 4096; k++) {
		held[k] = dnet_vpin_get(c, &root, 100 + k, fa, 0, 2 * MiB, UNIT);
		assert_non_null(held[k]);
	}
	assert_int_equal(vstat(c).entries, 4096);
	assert_null(dnet_vpin_get(c, &root, 99, fa, 0, 2 * MiB, UNIT));
	dnet_vpin_put(held[0]);
	struct dnet_vpin *one = dnet_vpin_get(c, &root, 99, fa, 0, 2 * MiB, UNIT);
	assert_non_null(one);
	st = vstat(c);
	assert_int_equal(st.entries, 4096);
	assert_int_equal(st.evicted, 2);
	dnet_vpin_put(one);
	for (uint64_t k = 1; k < 4096; k++)
		dnet_vpin_put(held[k]);
	dnet_vcache_free(c);
	close(fa);
	close(fb);
	close(fc);
}

/* Runs in a child that has given up root (and so CAP_IPC_LOCK): 0 if all held. */
static int unprivileged_child(void)
{
	struct rlimit rl = {2 * MiB, 2 * MiB};
	if (setrlimit(RLIMIT_MEMLOCK, &rl) != 0 || setgid(65534) != 0 || setuid(65534) != 0)
		return 10;
	char pa[400], pb[400];
	int fa = make_file("ua", MiB, 4, pa, sizeof(pa)), fb = make_file("ub", MiB, 5, pb, sizeof(pb));
	if (fa < 0 || fb < 0)
		return 11;
	struct dnet_vcache *c = dnet_vcache_new(64 * MiB, root);
	if (!c)
		return 12;
	/* at start: limited to the rlimit, less an eighth for page rounding */
	if (vstat(c).limit != 2 * MiB - 2 * MiB / 8)
		return 13;
	struct dnet_vpin *a = get_admitted(c, &root, 1, fa, 0, MiB);
	if (!a || !dnet_vpin_claim(a, 0, 16))
		return 14;
	dnet_vpin_done(a, 1);
	/* the rlimit lowered to what is locked: the next lock fails; the cache keeps
	 * to what it has, and the entry that failed goes */
	rl.rlim_cur = rl.rlim_max = MiB;
	if (setrlimit(RLIMIT_MEMLOCK, &rl) != 0)
		return 15;
	struct dnet_vpin *b = get_admitted(c, &root, 2, fb, 0, MiB);
	if (!b)
		return 16;
	if (dnet_vpin_claim(b, 0, 8) != NULL)
		return 17;
	struct dnet_vcache_stat st = vstat(c);
	if (st.limit != MiB || st.bytes != MiB || st.entries != 1)
		return 18;
	if (dnet_vpin_covered(b, fb, 0, 8) != -1 || dnet_vpin_covered(a, fa, 0, 16) != 1)
		return 19;
	dnet_vpin_put(b);
	dnet_vpin_put(a);
	dnet_vcache_free(c);
	return 0;
}

static void test_without_cap_ipc_lock(void **state)
{
	(void)state;
	if (geteuid() != 0) {
		skip(); /* needs root to give root up */
		return;
	}
#if defined(__SANITIZE_ADDRESS__)
	/* AddressSanitizer's mlock() does nothing and succeeds: no limit to hit */
	skip();
	return;
#endif
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(unprivileged_child());
	int status = 0;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
}

int main(void)
{
	snprintf(root, sizeof(root), "/tmp/test_vcache_XXXXXX");
	if (!mkdtemp(root) || chmod(root, 0777) != 0) {
		perror("mkdtemp");
		return 1;
	}
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_claim_and_cover),
	    cmocka_unit_test(test_eviction),
	    cmocka_unit_test(test_without_cap_ipc_lock),
	};
	int r = cmocka_run_group_tests(tests, NULL, NULL);
	st_rm_rf(root);
	return r;
}
