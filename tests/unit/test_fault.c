/* test_fault.c - crash safety under injected IO faults (src/storage/fault.h), for
 * every engine that touches a disk (file, blob, lmdb, bdb; mem has no IO to fail).
 *
 * One run: a forked child opens the engine, arms a plan ("fail the Nth write / sync /
 * rename / space call / KV commit", once or from then on, or "make the Nth write
 * short"), and runs a fixed workload of writes of many sizes, offset updates,
 * chunked uploads, deletes, syncs (and, for blob, rotation, reclaim and compaction).
 * Along the way it keeps, per key, the set of contents a later read may legally
 * return: an acked write narrows it to exactly that content; a failed one adds the
 * new content to the old ones (old or new, never anything else); a failed delete
 * adds "absent". It checks that
 *   - an operation during which an EIO fault fired in its own thread is not acked
 *     (fsync never/always; with batch the sync runs on the engine's thread; an
 *     ENOSPC may be absorbed by a fallback such as blob's delete in place),
 *   - every read in between returns one of the legal contents, never ECORRUPT.
 * Then it either closes the engine cleanly (plan disarmed) or _exit()s without
 * closing, as kill -9 would. The parent reopens the directory and checks that every
 * key reads back as one of its legal contents (an acked write exactly), that lookup
 * and iterate agree, that nothing is corrupt, and that the engine takes new writes.
 *
 * For each engine, class and fsync policy, a dry run counts the calls the workload
 * makes; the Nth call is then failed for N = 1..10 and 6 more spread to the end
 * (1..6 and 3 more under ASan)
 * (N odd: crash without close; N & 2: the fault stays on from N; N % 5 == 0: ENOSPC).
 * FAULT_TEST_SCALE=k multiplies the number of N tried (default 1);
 * FAULT_TEST_ENGINES=blob,lmdb runs only those engines. */
#include <errno.h>
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
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/errors.h"
#include "common/id.h"
#include "common/log.h"
#include "storage/backend.h"
#include "storage_test.h"
#include "storage/blob.h"
#include "storage/fault.h"

#define NKEYS 6
#define MAXV 64
#define NOPS 44
#define SHM_SIZE (256u << 20)
/* N = 1..FIRST_N, then SPREAD_N more spread to the end (x FAULT_TEST_SCALE);
 * fewer under ASan, whose runs are several times slower */
#if defined(__SANITIZE_ADDRESS__)
#define FIRST_N 6u
#define SPREAD_N 3u
#else
#define FIRST_N 10u
#define SPREAD_N 6u
#endif

/* ---- shared result area (child -> parent) -------------------------------------- */

struct shm {
	int failed;		  /* the child found a violation */
	char msg[1024];		  /* ... which one */
	uint64_t calls[DNET_FAULT_NOPS]; /* calls seen (dry run) */
	uint64_t fired;
	uint64_t model_len; /* serialized model bytes after this header */
	uint8_t model[];
};
static struct shm *shm;

/* ---- model ------------------------------------------------------------------- */

struct val {
	int present;
	uint64_t len;
	uint8_t *data;
};
struct accset {
	int n;
	struct val v[MAXV];
};

static int val_eq(const struct val *a, int present, const uint8_t *data, uint64_t len)
{
	if (a->present != present)
		return 0;
	if (!present)
		return 1;
	return a->len == len && (!len || memcmp(a->data, data, len) == 0);
}

static int acc_has(const struct accset *s, int present, const uint8_t *data, uint64_t len)
{
	for (int i = 0; i < s->n; i++)
		if (val_eq(&s->v[i], present, data, len))
			return 1;
	return 0;
}

static void acc_clear(struct accset *s)
{
	for (int i = 0; i < s->n; i++)
		free(s->v[i].data);
	s->n = 0;
}

/* returns -1 when the set is full (the workload is too uncertain: a test bug) */
static int acc_add(struct accset *s, int present, const uint8_t *data, uint64_t len)
{
	if (acc_has(s, present, data, len))
		return 0;
	if (s->n == MAXV)
		return -1;
	struct val *v = &s->v[s->n++];
	v->present = present;
	v->len = present ? len : 0;
	v->data = NULL;
	if (present && len) {
		v->data = malloc(len);
		if (!v->data)
			abort();
		memcpy(v->data, data, len);
	}
	return 0;
}

static int acc_set(struct accset *s, int present, const uint8_t *data, uint64_t len)
{
	acc_clear(s);
	return acc_add(s, present, data, len);
}

static void model_save(struct accset *acc)
{
	uint8_t *p = shm->model, *end = (uint8_t *)shm + SHM_SIZE;
	for (int k = 0; k < NKEYS; k++) {
		if (p + 4 > end)
			abort();
		memcpy(p, &acc[k].n, 4);
		p += 4;
		for (int i = 0; i < acc[k].n; i++) {
			const struct val *v = &acc[k].v[i];
			if (p + 12 + v->len > end)
				abort();
			memcpy(p, &v->present, 4);
			memcpy(p + 4, &v->len, 8);
			if (v->len)
				memcpy(p + 12, v->data, v->len);
			p += 12 + v->len;
		}
	}
	shm->model_len = (uint64_t)(p - shm->model);
}

/* the parent's view: pointers into shm */
static void model_load(struct accset *acc)
{
	const uint8_t *p = shm->model;
	for (int k = 0; k < NKEYS; k++) {
		memcpy(&acc[k].n, p, 4);
		p += 4;
		assert_true(acc[k].n >= 1 && acc[k].n <= MAXV);
		for (int i = 0; i < acc[k].n; i++) {
			struct val *v = &acc[k].v[i];
			memcpy(&v->present, p, 4);
			memcpy(&v->len, p + 4, 8);
			v->data = (uint8_t *)p + 12;
			p += 12 + v->len;
		}
	}
}

/* ---- engine helpers ---------------------------------------------------------- */

static int do_write(const struct dnet_backend_ops *ops, struct dnet_backend *b, const uint8_t *id,
		    uint32_t flags, uint64_t cookie, uint64_t total, uint64_t off, const void *data,
		    uint64_t len)
{
	struct dnet_io_attr io;
	int calls;
	memset(&io, 0, sizeof(io));
	io.ioflags = flags;
	io.cookie = cookie;
	io.total_size = total;
	io.offset = off;
	io.size = len;
	io.timestamp = 1700000000000000000ull + off;
	return st_write_io(ops, b, id, &io, data, 0, NULL, &calls);
}

/* 0 and *out (malloc()ed) / *len, or DNET_E* */
static int do_read(const struct dnet_backend_ops *ops, struct dnet_backend *b, const uint8_t *id,
		   uint8_t **out, uint64_t *len, struct dnet_obj_info *info)
{
	struct dnet_read_res res;
	*out = NULL;
	*len = 0;
	int err = ops->read(b, id, 0, 0, 0, &res);
	if (err)
		return err;
	uint8_t *p = malloc(res.len ? res.len : 1);
	if (!p)
		abort();
	if (res.fd >= 0) {
		for (uint64_t got = 0; got < res.len;) {
			ssize_t n = pread(res.fd, p + got, res.len - got, (off_t)(res.file_offset + got));
			if (n <= 0) {
				close(res.fd);
				free(p);
				return DNET_EIO;
			}
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

static void key_id(uint8_t id[DNET_ID_SIZE], int k)
{
	char key[32];
	snprintf(key, sizeof(key), "fault-key-%d", k);
	dnet_id_from_key(id, key, strlen(key));
}

/* ---- the child: workload under a plan ------------------------------------------ */

struct run {
	const struct dnet_backend_ops *ops;
	const char *dir;
	int fsync;
	int armed;   /* 0: dry run, counting calls */
	struct dnet_fault_plan plan;
	int crash;   /* _exit() without close */
};

#define CHILD_FAIL(...)                                                                    \
	do {                                                                               \
		snprintf(shm->msg, sizeof(shm->msg), __VA_ARGS__);                        \
		shm->failed = 1;                                                           \
		_exit(1);                                                                  \
	} while (0)

static const uint64_t wsizes[] = {0, 1, 100, 4095, 4096, 70000, 300000, 600001};
#define NWSIZES (sizeof(wsizes) / sizeof(wsizes[0]))

static void child_check_read(const struct run *r, struct dnet_backend *b, struct accset *acc,
			     int k, int op)
{
	uint8_t id[DNET_ID_SIZE], *got;
	uint64_t len;
	key_id(id, k);
	int err = do_read(r->ops, b, id, &got, &len, NULL);
	if (err == DNET_ENOENT) {
		if (!acc_has(&acc[k], 0, NULL, 0))
			CHILD_FAIL("op %d: key %d reads as absent, not a legal state", op, k);
		return;
	}
	if (err)
		CHILD_FAIL("op %d: key %d read failed: %s", op, k, dnet_strerror(err));
	if (!acc_has(&acc[k], 1, got, len))
		CHILD_FAIL("op %d: key %d reads %llu bytes that are no legal content", op, k,
			   (unsigned long long)len);
	free(got);
}

static void child(const struct run *r)
{
	struct dnet_backend_config cfg;
	dnet_backend_config_defaults(&cfg);
	cfg.path = r->dir;
	cfg.fsync = r->fsync;
	struct dnet_backend *b;
	int err = r->ops->open(&cfg, &b);
	if (err)
		CHILD_FAIL("open: %s", dnet_strerror(err));
	static struct accset acc[NKEYS];
	for (int k = 0; k < NKEYS; k++)
		acc_set(&acc[k], 0, NULL, 0);
	int is_blob = strcmp(r->ops->name, "blob") == 0;
	/* A fault on the engine's own thread (batch commits) cannot be pinned on a call.
	 * ENOSPC may be absorbed by a designed fallback (blob: reclaim and retry the
	 * append; a delete in place when no tombstone fits), so only EIO must fail the
	 * operation it hit. */
	int attribute = r->fsync != DNET_FSYNC_BATCH && r->plan.err == EIO;

	if (r->armed) {
		dnet_fault_arm(&r->plan);
	} else {
		struct dnet_fault_plan p = {.op = 0, .nth = UINT64_MAX, .count = 1};
		dnet_fault_arm(&p);
	}
	uint64_t rng = 12345;
	uint8_t *buf = malloc(1u << 20), *nbuf = malloc(1u << 20);
	if (!buf || !nbuf)
		abort();
	for (int op = 0; op < NOPS; op++) {
		rng ^= rng << 13;
		rng ^= rng >> 7;
		rng ^= rng << 17;
		int k = (int)(rng % NKEYS);
		int kind = (int)((rng >> 8) % 20);
		uint8_t id[DNET_ID_SIZE];
		key_id(id, k);
		uint64_t f0 = dnet_fault_thread_fired();
		int st = 0, fail_ok = 0;
		if (kind < 10) { /* whole write */
			uint64_t len = wsizes[(rng >> 16) % NWSIZES];
			st_fill(buf, len, (uint64_t)op * 7 + 1);
			st = do_write(r->ops, b, id, 0, 0, 0, 0, buf, len);
			if (st == 0 ? acc_set(&acc[k], 1, buf, len) : acc_add(&acc[k], 1, buf, len))
				CHILD_FAIL("model overflow");
		} else if (kind < 13) { /* delete */
			st = r->ops->del(b, id);
			if (st == DNET_ENOENT) {
				if (!acc_has(&acc[k], 0, NULL, 0))
					CHILD_FAIL("op %d: delete of key %d says absent", op, k);
				st = 0;
			}
			if (st == 0 ? acc_set(&acc[k], 0, NULL, 0) : acc_add(&acc[k], 0, NULL, 0))
				CHILD_FAIL("model overflow");
		} else if (kind < 15) { /* offset update of what is there now */
			uint8_t *cur;
			uint64_t clen;
			if (do_read(r->ops, b, id, &cur, &clen, NULL) != 0 || !clen ||
			    clen > (1u << 20) / 2) {
				free(cur);
				continue;
			}
			uint64_t off = clen / 2, len = 1 + (rng >> 20) % 5000;
			memcpy(nbuf, cur, clen);
			st_fill(nbuf + off, len, (uint64_t)op * 7 + 2);
			uint64_t nlen = off + len > clen ? off + len : clen;
			free(cur);
			st = do_write(r->ops, b, id, 0, 0, 0, off, nbuf + off, len);
			if (st == 0 ? acc_set(&acc[k], 1, nbuf, nlen) : acc_add(&acc[k], 1, nbuf, nlen))
				CHILD_FAIL("model overflow");
		} else if (kind < 18) { /* chunked upload, 3 pieces, known or unknown size */
			uint64_t len = kind == 17 ? 5000 : 700001, p = len / 3;
			uint64_t total = kind == 16 ? 0 : len;
			uint64_t cookie = 100 + (uint64_t)op;
			st_fill(buf, len, (uint64_t)op * 7 + 3);
			st = do_write(r->ops, b, id, DNET_IO_PREPARE, cookie, total, 0, buf, p);
			if (!st)
				st = do_write(r->ops, b, id, DNET_IO_PLAIN, cookie, 0, p, buf + p, p);
			if (!st) {
				uint64_t f1 = dnet_fault_thread_fired();
				st = do_write(r->ops, b, id, DNET_IO_COMMIT, cookie, 0, 2 * p,
					      buf + 2 * p, len - 2 * p);
				if (st == 0 ? acc_set(&acc[k], 1, buf, len)
					    : acc_add(&acc[k], 1, buf, len))
					CHILD_FAIL("model overflow");
				if (attribute && st == 0 && dnet_fault_thread_fired() != f1)
					CHILD_FAIL("op %d: upload COMMIT acked although a fault hit it", op);
			}
			/* an upload whose PREPARE or PLAIN failed is abandoned: never visible */
		} else if (kind == 18) {
			st = r->ops->sync(b);
		} else if (is_blob) {
			int which = (int)((rng >> 24) % 3);
			if (which == 0)
				st = dnet_blob_rotate(b);
			else if (which == 1)
				st = dnet_blob_reclaim(b, DNET_BLOB_RECLAIM_ALL | DNET_BLOB_RECLAIM_FORCE);
			else
				st = dnet_blob_compact(b, 0.01);
			fail_ok = 1; /* maintenance: an error here loses nothing */
			if (st > 0)
				st = 0;
		} else {
			continue;
		}
		if (getenv("FAULT_TEST_DEBUG"))
			fprintf(stderr, "op %d kind %d key %d: %s, fired %llu here, %llu all\n", op,
				kind, k, dnet_strerror(st),
				(unsigned long long)(dnet_fault_thread_fired() - f0),
				(unsigned long long)dnet_fault_fired());
		if (attribute && !fail_ok && st == 0 && dnet_fault_thread_fired() != f0)
			CHILD_FAIL("op %d (kind %d, key %d): acked although a fault hit it", op, kind,
				   k);
		child_check_read(r, b, acc, k, op);
	}
	for (int k = 0; k < NKEYS; k++)
		child_check_read(r, b, acc, k, NOPS);
	free(buf);
	free(nbuf);
	for (int i = 0; i < DNET_FAULT_NOPS; i++)
		shm->calls[i] = dnet_fault_calls(i);
	shm->fired = dnet_fault_fired();
	model_save(acc);
	if (r->crash)
		_exit(0); /* no close: like kill -9 */
	dnet_fault_disarm();
	r->ops->close(b);
	_exit(0);
}

/* ---- the parent: run a child, reopen, verify ------------------------------------ */

static void verify_reopen(const struct run *r)
{
	struct accset acc[NKEYS];
	model_load(acc);
	struct dnet_backend_config cfg;
	dnet_backend_config_defaults(&cfg);
	cfg.path = r->dir;
	cfg.fsync = r->fsync;
	struct dnet_backend *b;
	int err = r->ops->open(&cfg, &b);
	if (err)
		fail_msg("%s: reopen after the fault failed: %s", r->ops->name, dnet_strerror(err));
	int present = 0;
	for (int k = 0; k < NKEYS; k++) {
		uint8_t id[DNET_ID_SIZE], *got;
		uint64_t len;
		struct dnet_obj_info info, li;
		key_id(id, k);
		err = do_read(r->ops, b, id, &got, &len, &info);
		if (err == DNET_ENOENT) {
			if (!acc_has(&acc[k], 0, NULL, 0))
				fail_msg("key %d is gone after reopen (acked content lost)", k);
			assert_int_equal(r->ops->lookup(b, id, &li), DNET_ENOENT);
			continue;
		}
		if (err)
			fail_msg("key %d: read after reopen: %s", k, dnet_strerror(err));
		if (!acc_has(&acc[k], 1, got, len))
			fail_msg("key %d: %llu bytes after reopen that are neither the old nor the new "
				 "content (%d legal states, first %s %llu bytes)",
				 k, (unsigned long long)len, acc[k].n,
				 acc[k].v[0].present ? "present" : "absent",
				 (unsigned long long)acc[k].v[0].len);
		uint8_t csum[16];
		dnet_csum(got, len, csum);
		assert_int_equal(r->ops->lookup(b, id, &li), 0);
		assert_int_equal(li.size, len);
		assert_memory_equal(li.csum, csum, 16);
		assert_int_equal(info.size, len);
		free(got);
		present++;
	}
	struct dnet_backend_stat st;
	assert_int_equal(r->ops->stat(b, &st), 0);
	assert_int_equal(st.objects, (uint64_t)present);
	assert_int_equal(st.corrupt, 0);
	/* the engine still works */
	uint8_t id[DNET_ID_SIZE], data[5000], *got;
	uint64_t len;
	st_fill(data, sizeof(data), 99);
	for (int k = 0; k < NKEYS; k++) {
		key_id(id, k);
		assert_int_equal(do_write(r->ops, b, id, 0, 0, 0, 0, data, sizeof(data)), 0);
		assert_int_equal(do_read(r->ops, b, id, &got, &len, NULL), 0);
		assert_int_equal(len, sizeof(data));
		assert_memory_equal(got, data, sizeof(data));
		free(got);
	}
	r->ops->close(b);
}

static void one_run(const struct run *r)
{
	memset(shm, 0, sizeof(*shm));
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		child(r);
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	if (shm->failed || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail_msg("%s fsync=%s fault %s%s n=%llu count=%llu err=%d %s: %s", r->ops->name,
			 dnet_fsync_policy_name(r->fsync), dnet_fault_op_name(r->plan.op),
			 r->plan.short_write ? "(short)" : "", (unsigned long long)r->plan.nth,
			 (unsigned long long)r->plan.count, r->plan.err,
			 r->crash ? "crash" : "close",
			 shm->failed ? shm->msg : "child died");
	if (r->armed)
		verify_reopen(r);
}

struct variant {
	const char *engine;
	int fsync;
};

static void run_engine(const struct variant *v)
{
	const struct dnet_backend_ops *ops = dnet_backend_find(v->engine);
	assert_non_null(ops);
	const char *only = getenv("FAULT_TEST_ENGINES"); /* e.g. "blob,lmdb" */
	if (only && !strstr(only, v->engine))
		skip();
	int kv = strcmp(v->engine, "lmdb") == 0 || strcmp(v->engine, "bdb") == 0;
	/* the classes this engine's calls go through; -1 = short write */
	static const int file_kinds[] = {DNET_FAULT_WRITE, -1, DNET_FAULT_SYNC, DNET_FAULT_RENAME,
					 DNET_FAULT_SPACE};
	static const int kv_kinds[] = {DNET_FAULT_COMMIT, DNET_FAULT_SYNC};
	const int *kinds = kv ? kv_kinds : file_kinds;
	int nkinds = kv ? 2 : 5;
	int scale = getenv("FAULT_TEST_SCALE") ? atoi(getenv("FAULT_TEST_SCALE")) : 1;
	if (scale < 1)
		scale = 1;
	char dir[64];
	unsigned runs = 0, fired_runs = 0;

	for (int ki = 0; ki < nkinds; ki++) {
		int op = kinds[ki] < 0 ? DNET_FAULT_WRITE : kinds[ki];
		/* dry run: how many calls of this class does the workload make? */
		snprintf(dir, sizeof(dir), "/tmp/dnet-fault-XXXXXX");
		assert_non_null(mkdtemp(dir));
		struct run r = {.ops = ops, .dir = dir, .fsync = v->fsync};
		one_run(&r);
		uint64_t total = shm->calls[op];
		st_rm_rf(dir);
		if (!total)
			continue; /* e.g. no syncs with fsync never */
		uint64_t ns[64];
		int nn = 0;
		for (uint64_t n = 1; n <= total && n <= FIRST_N * (unsigned)scale && nn < 48; n++)
			ns[nn++] = n;
		for (unsigned i = 1; i <= SPREAD_N * (unsigned)scale && nn < 64; i++) {
			uint64_t n = FIRST_N * (unsigned)scale +
				     (total * (uint64_t)i) / (SPREAD_N * (unsigned)scale);
			if (n <= total && n > ns[nn - 1])
				ns[nn++] = n;
		}
		for (int i = 0; i < nn; i++) {
			uint64_t n = ns[i];
			snprintf(dir, sizeof(dir), "/tmp/dnet-fault-XXXXXX");
			assert_non_null(mkdtemp(dir));
			r.armed = 1;
			memset(&r.plan, 0, sizeof(r.plan));
			r.plan.op = op;
			r.plan.nth = n;
			r.plan.short_write = kinds[ki] < 0;
			r.plan.count = (n & 2) ? 0 : 1; /* once, or every call from n on */
			r.plan.err = n % 5 == 0 ? ENOSPC : EIO;
			r.crash = (int)(n & 1);
			one_run(&r);
			runs++;
			fired_runs += shm->fired > 0;
			st_rm_rf(dir);
		}
	}
	print_message("%s fsync=%s: %u runs, faults fired in %u\n", v->engine,
		      dnet_fsync_policy_name(v->fsync), runs, fired_runs);
	assert_true(fired_runs > 0);
}

static void test_engine(void **state)
{
	run_engine(*state);
}

#define V(e, f)                                                                             \
	static struct variant v_##e##_##f = {#e, DNET_FSYNC_##f}
V(file, NEVER);
V(file, ALWAYS);
V(file, BATCH);
V(blob, NEVER);
V(blob, ALWAYS);
V(blob, BATCH);
V(lmdb, NEVER);
V(lmdb, ALWAYS);
V(lmdb, BATCH);
V(bdb, NEVER);
V(bdb, ALWAYS);
V(bdb, BATCH);

/* The env form and the parser. */
static void test_parse(void **state)
{
	(void)state;
	struct dnet_fault_plan p;
	char err[128];
	assert_int_equal(dnet_fault_parse("op=write,n=5", &p, err, sizeof(err)), 0);
	assert_int_equal(p.op, DNET_FAULT_WRITE);
	assert_int_equal(p.nth, 5);
	assert_int_equal(p.count, 1);
	assert_int_equal(p.err, EIO);
	assert_int_equal(dnet_fault_parse("op=short,n=2,err=ENOSPC", &p, err, sizeof(err)), 0);
	assert_true(p.short_write);
	assert_int_equal(p.err, ENOSPC);
	assert_int_equal(dnet_fault_parse("op=sync,n=1,count=0,err=28", &p, err, sizeof(err)), 0);
	assert_int_equal(p.op, DNET_FAULT_SYNC);
	assert_int_equal(p.count, 0);
	assert_int_equal(p.err, 28);
	const char *bad[] = {"", "op=write", "n=3", "op=nope,n=1", "op=write,n=0",
			     "op=write,n=-1", "op=write,n=1,err=EWHAT", "op=write,n=1,x=2",
			     "op=write,n=1x", "op=rename,n=1,count=-3"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(dnet_fault_parse(bad[i], &p, err, sizeof(err)), -1);

	/* wrappers: inert when disarmed; the nth call fails; counters */
	char path[] = "/tmp/dnet-fault-file-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	unlink(path);
	assert_int_equal(dnet_f_pwrite(fd, "abcd", 4, 0), 4);
	assert_int_equal(dnet_pwrite_full(fd, "abcd", 4, 0), 0);
	setenv("ELLIPTICS_FAULT", "op=write,n=2", 1);
	assert_int_equal(dnet_fault_env(), 0);
	unsetenv("ELLIPTICS_FAULT");
	assert_true(dnet_fault_armed());
	assert_int_equal(dnet_f_pwrite(fd, "abcd", 4, 0), 4);
	errno = 0;
	assert_int_equal(dnet_f_pwrite(fd, "abcd", 4, 0), -1);
	assert_int_equal(errno, EIO);
	assert_int_equal(dnet_f_pwrite(fd, "abcd", 4, 0), 4);
	assert_int_equal(dnet_fault_calls(DNET_FAULT_WRITE), 3);
	assert_int_equal(dnet_fault_fired(), 1);
	/* a short write moves half, then the rest fails */
	p = (struct dnet_fault_plan){.op = DNET_FAULT_WRITE, .nth = 1, .short_write = 1,
				     .err = ENOSPC};
	dnet_fault_arm(&p);
	assert_int_equal(dnet_pwrite_full(fd, "ZZZZZZZZ", 8, 0), DNET_ENOSPC);
	char back[8];
	assert_int_equal(pread(fd, back, 8, 0), 4);
	assert_memory_equal(back, "ZZZZ", 4);
	/* sync and rename classes */
	p = (struct dnet_fault_plan){.op = DNET_FAULT_SYNC, .nth = 1, .count = 0};
	dnet_fault_arm(&p);
	assert_int_equal(dnet_f_fsync(fd), -1);
	assert_int_equal(dnet_f_fdatasync(fd), -1);
	assert_int_equal(dnet_f_pwrite(fd, "x", 1, 0), 1);
	dnet_fault_disarm();
	assert_int_equal(dnet_f_fsync(fd), 0);
	assert_int_equal(dnet_fault_check(DNET_FAULT_COMMIT), 0);
	close(fd);
}

int main(void)
{
	const char *lvl = getenv("DNET_TEST_LOG");
	dnet_log_level = lvl ? dnet_log_level_parse(lvl) : -1; /* injected errors are noise */
	setenv(DNET_BLOB_ENV_SIZE, "256k", 1); /* rotations and seals inside the workload */
	setenv(DNET_BLOB_ENV_PUNCH, "manual", 1);
	setenv(DNET_BLOB_ENV_COMPACT, "0", 1);
	setenv("ELLIPTICS_LMDB_MAPSIZE", "1048576", 1); /* map growth inside the workload */
	shm = mmap(NULL, SHM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (shm == MAP_FAILED)
		return 1;
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_parse),
#define T(e, f) cmocka_unit_test_prestate(test_engine, &v_##e##_##f)
	    T(file, NEVER), T(file, ALWAYS), T(file, BATCH), T(blob, NEVER), T(blob, ALWAYS),
	    T(blob, BATCH), T(lmdb, NEVER), T(lmdb, ALWAYS), T(lmdb, BATCH), T(bdb, NEVER),
	    T(bdb, ALWAYS), T(bdb, BATCH),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
