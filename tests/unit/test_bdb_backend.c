/* test_bdb_backend.c - the bdb engine (src/storage/bdb.c) under real lock conflicts:
 * a transaction of the test's own, in the engine's environment (dnet_bdb_test_handles),
 * takes page locks so that an engine txn is chosen as the victim of a real deadlock
 * by BDB's detector: iterate() reading a batch, and an upload's COMMIT in the cursor
 * close that removes its staged chunk. The victim must give up its txn the way BDB
 * requires (abort it, make no other call in it: BDB refuses any, commit included,
 * with "BDB0102 previous transaction deadlock return not resolved" and EINVAL) and
 * retry: iterate still reports every object exactly once, the COMMIT succeeds, and
 * writes work afterwards. The common behaviour of the engine is tested in
 * test_backend_conformance.c. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/errors.h"
#include "common/id.h"
#include "common/log.h"
#include "storage/backend.h"
#include "storage/bdb.h"
#include "storage_test.h"

static char root[256];
static const struct dnet_backend_ops *ops;

#define NOBJ 200     /* one iterate batch (KV_ITER_BATCH 256): a retry redoes them all */
#define OBJ_SIZE 700 /* inline in objects.db: a few per leaf page, so several leaves */
#define ROUNDS 20    /* tries at making the engine's txn the victim (the detector picks) */

/* ---- helpers -------------------------------------------------------------------- */

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void pause_ms(unsigned ms)
{
	struct timespec ts = {0, (long)ms * 1000000L};
	nanosleep(&ts, NULL);
}

/* Object n: its index in the first two bytes (IDs sort as n does). */
static void mkid(uint8_t id[DNET_ID_SIZE], int n)
{
	memset(id, 0x5a, DNET_ID_SIZE);
	id[0] = (uint8_t)(n >> 8);
	id[1] = (uint8_t)n;
}

static int id_index(const uint8_t *id)
{
	for (int i = 2; i < DNET_ID_SIZE; i++)
		if (id[i] != 0x5a)
			return -1;
	return id[0] << 8 | id[1];
}

static int put(struct dnet_backend *b, int n, uint64_t seed, size_t len)
{
	uint8_t id[DNET_ID_SIZE], *d = malloc(len ? len : 1);
	assert_non_null(d);
	st_fill(d, len, seed);
	mkid(id, n);
	struct dnet_io_attr io;
	memset(&io, 0, sizeof(io));
	io.size = len;
	int calls, st = st_write_io(ops, b, id, &io, d, 1700000000000000000ull, NULL, &calls);
	assert_int_equal(calls, 1);
	free(d);
	return st;
}

static void check_obj(struct dnet_backend *b, int n, uint64_t seed, size_t len)
{
	uint8_t id[DNET_ID_SIZE], *want = malloc(len ? len : 1);
	assert_non_null(want);
	st_fill(want, len, seed);
	mkid(id, n);
	struct dnet_read_res res;
	assert_int_equal(ops->read(b, id, 0, 0, 0, &res), 0);
	assert_int_equal(res.len, len);
	assert_int_equal(res.fd, -1); /* small: a buffer */
	assert_memory_equal(res.buf, want, len);
	free(res.buf);
	free(want);
}

/* What BDB reports through the environment's error callback while the test runs. */
static struct {
	pthread_mutex_t lock;
	int n;
	char first[512];
} bdb_msgs = {PTHREAD_MUTEX_INITIALIZER, 0, ""};

static void capture_errcall(const DB_ENV *env, const char *pfx, const char *msg)
{
	(void)env;
	pthread_mutex_lock(&bdb_msgs.lock);
	if (!bdb_msgs.n++)
		snprintf(bdb_msgs.first, sizeof(bdb_msgs.first), "%s%s%s", pfx ? pfx : "",
			 pfx ? ": " : "", msg);
	pthread_mutex_unlock(&bdb_msgs.lock);
}

static void lock_stats(DB_ENV *env, uintmax_t *waits, uintmax_t *deadlocks)
{
	DB_LOCK_STAT *ls;
	assert_int_equal(env->lock_stat(env, &ls, 0), 0);
	*waits = ls->st_lock_wait;
	*deadlocks = ls->st_ndeadlocks;
	free(ls);
}

/* iterate() in a thread of its own: how often it reported each object. */
/* Waits (up to 30 s) until a lock request in env waits, i.e. the engine's thread
 * (`who`) blocked on the test's lock; NULL then, else why not. */
static const char *await_lock_wait(DB_ENV *env, uintmax_t waits0, atomic_int *done,
				   const char *who)
{
	static char why[128];
	for (uint64_t end = now_ms() + 30000;;) {
		uintmax_t waits, dl;
		lock_stats(env, &waits, &dl);
		if (waits > waits0)
			return NULL;
		if (atomic_load(done)) {
			snprintf(why, sizeof(why), "%s finished without waiting for the test's lock",
				 who);
			return why;
		}
		if (now_ms() > end) {
			snprintf(why, sizeof(why), "%s never waited for the test's lock", who);
			return why;
		}
		pause_ms(1);
	}
}

struct iter_run {
	struct dnet_backend *b;
	pthread_t th;
	int seen[NOBJ + 64], unknown, ret;
	atomic_int done;
};

static int iter_cb(void *arg, const uint8_t *id, const struct dnet_obj_info *info)
{
	struct iter_run *r = arg;
	int n = id_index(id);
	if (n < 0 || n >= (int)(sizeof(r->seen) / sizeof(r->seen[0])))
		r->unknown++;
	else
		r->seen[n]++;
	(void)info;
	return 0;
}

static void *iter_main(void *arg)
{
	struct iter_run *r = arg;
	r->ret = ops->iterate(r->b, iter_cb, r);
	atomic_store(&r->done, 1);
	return NULL;
}

/* Joins a thread that sets *done as it ends, waiting at most timeout_ms: 0, or -1 if
 * it is still running (it is then left behind: the test fails). */
static int join_within(pthread_t th, atomic_int *done, unsigned timeout_ms)
{
	for (uint64_t end = now_ms() + timeout_ms; !atomic_load(done);) {
		if (now_ms() > end)
			return -1;
		pause_ms(1);
	}
	pthread_join(th, NULL);
	return 0;
}

/* An upload's COMMIT in a thread of its own. */
struct commit_run {
	struct dnet_backend *b;
	pthread_t th;
	uint8_t id[DNET_ID_SIZE];
	struct dnet_io_attr io;
	int status;
	atomic_int done;
};

static void *commit_main(void *arg)
{
	struct commit_run *r = arg;
	int calls;
	r->status = st_write_io(ops, r->b, r->id, &r->io, NULL, 1, NULL, &calls);
	atomic_store(&r->done, 1);
	return NULL;
}

static void check_each_once(const struct iter_run *r, int nobj, int round)
{
	if (r->ret != 0)
		fail_msg("round %d: iterate returned %d (%s)", round, r->ret,
			 dnet_strerror(r->ret));
	if (r->unknown)
		fail_msg("round %d: iterate reported %d unknown IDs", round, r->unknown);
	for (int i = 0; i < nobj; i++)
		if (r->seen[i] != 1)
			fail_msg("round %d: object %d reported %d times, not once", round, i,
				 r->seen[i]);
}

/* ---- tests ---------------------------------------------------------------------- */

/* The cycle: the test's txn T write-locks the last leaf page of objects.db (a DB_RMW
 * cursor at DB_LAST); iterate walks the leaves with read locks and waits for that
 * page while it holds the page before it (BDB couples page locks: the next lock is
 * taken before the current one is let go). T then walks back with DB_PREV | DB_RMW
 * and asks for a write lock on that page: T waits for iterate, iterate for T, and
 * BDB's deadlock detector (DB_LOCK_DEFAULT, run at every conflict) fails one of the
 * two requests with DB_LOCK_DEADLOCK. When it is iterate's, iterate must abort its
 * txn and retry the batch; when it is T's, T aborts and the round is tried again.
 * BDB's messages are captured: a commit of the dead txn shows up there as
 * "previous transaction deadlock return not resolved". */
static void test_iterate_deadlock_victim(void **state)
{
	(void)state;
	char dir[512];
	snprintf(dir, sizeof(dir), "%s/iterate-deadlock", root);
	struct dnet_backend_config cfg;
	dnet_backend_config_defaults(&cfg);
	cfg.path = dir;
	cfg.fsync = DNET_FSYNC_NEVER;
	struct dnet_backend *b;
	assert_int_equal(ops->open(&cfg, &b), 0);
	for (int i = 0; i < NOBJ; i++)
		assert_int_equal(put(b, i, (uint64_t)i, OBJ_SIZE), 0);

	DB_ENV *env;
	DB *objdb, *chunkdb;
	dnet_bdb_test_handles(b, &env, &objdb, &chunkdb);
	DB_BTREE_STAT *bs;
	assert_int_equal(objdb->stat(objdb, NULL, &bs, 0), 0);
	const unsigned leaves = bs->bt_leaf_pg;
	free(bs);
	if (leaves < 3)
		fail_msg("objects.db has %u leaf pages: the cycle needs at least 3", leaves);

	void (*old_errcall)(const DB_ENV *, const char *, const char *) = NULL;
	env->get_errcall(env, &old_errcall);
	env->set_errcall(env, capture_errcall);
	bdb_msgs.n = 0;

	int iterate_victim = 0, test_victim = 0;
	for (int round = 0; round < ROUNDS && !iterate_victim; round++) {
		uintmax_t waits0, dl0, waits, dl;
		DB_TXN *t;
		DBC *c;
		uint8_t kb[DNET_ID_SIZE + 8], vb[64];
		DBT key, val;
		memset(&key, 0, sizeof(key));
		memset(&val, 0, sizeof(val));
		key.data = kb;
		key.ulen = sizeof(kb);
		key.flags = DB_DBT_USERMEM;
		val.data = vb;
		val.ulen = sizeof(vb);
		val.dlen = sizeof(vb);
		val.flags = DB_DBT_USERMEM | DB_DBT_PARTIAL;

		lock_stats(env, &waits0, &dl0);
		assert_int_equal(env->txn_begin(env, NULL, &t, 0), 0);
		assert_int_equal(objdb->cursor(objdb, t, &c, 0), 0);
		assert_int_equal(c->get(c, &key, &val, DB_LAST | DB_RMW), 0);

		struct iter_run *r = calloc(1, sizeof(*r));
		assert_non_null(r);
		r->b = b;
		assert_int_equal(pthread_create(&r->th, NULL, iter_main, r), 0);

		/* until iterate waits for the last page (bounded) */
		const char *why = await_lock_wait(env, waits0, &r->done, "iterate");
		/* walk back until the page iterate holds: one of the two loses */
		int rc = 0, steps = 0;
		while (!why) {
			rc = c->get(c, &key, &val, DB_PREV | DB_RMW);
			if (rc == DB_LOCK_DEADLOCK) {
				test_victim++;
				break;
			}
			if (rc) {
				why = "the test's walk back ended without a deadlock";
				break;
			}
			steps++;
			lock_stats(env, &waits, &dl);
			if (dl > dl0) {
				iterate_victim = 1; /* our lock came once iterate gave up its own */
				break;
			}
		}
		assert_int_equal(c->close(c), 0);
		assert_int_equal(t->abort(t), 0);
		if (join_within(r->th, &r->done, 10000))
			fail_msg("round %d: iterate still running 10 s after the test's txn ended",
				 round);
		if (why)
			fail_msg("round %d: %s (rc %d, %d steps)", round, why, rc, steps);
		check_each_once(r, NOBJ, round);
		free(r);
	}
	env->set_errcall(env, old_errcall);
	if (bdb_msgs.n)
		fail_msg("BDB reported %d error(s), the first: %s", bdb_msgs.n, bdb_msgs.first);
	if (!iterate_victim)
		fail_msg("iterate was never the deadlock victim in %d rounds (the test was %d "
			 "times)",
			 ROUNDS, test_victim);

	/* writes work afterwards: overwrites and new objects, then one more iterate */
	for (int i = 0; i < NOBJ; i += 10)
		assert_int_equal(put(b, i, 1000u + (uint64_t)i, OBJ_SIZE / 2), 0);
	for (int i = NOBJ; i < NOBJ + 20; i++)
		assert_int_equal(put(b, i, (uint64_t)i, OBJ_SIZE), 0);
	check_obj(b, 0, 1000, OBJ_SIZE / 2);
	check_obj(b, 1, 1, OBJ_SIZE);
	check_obj(b, NOBJ + 19, NOBJ + 19, OBJ_SIZE);
	struct iter_run *r = calloc(1, sizeof(*r));
	assert_non_null(r);
	r->b = b;
	r->ret = ops->iterate(b, iter_cb, r);
	check_each_once(r, NOBJ + 20, -1);
	free(r);
	ops->close(b);
}

/* An upload's COMMIT of a small object (one staged chunk, an overflow item) removes
 * that chunk with a cursor; when the chunk is the last record of chunks.db, BDB
 * removes it for good only when the cursor is closed, and frees its overflow pages
 * then, under a write lock on the metadata page of chunks.db. That close can lose a
 * deadlock like any other call, and the txn is dead after it: a later call in it
 * fails with "BDB0102 previous transaction deadlock return not resolved" (EINVAL).
 * The test's txn T holds that metadata page lock (taken with lock_get for T's own
 * locker), so the COMMIT's txn waits at the close; T then asks for the object's page
 * of objects.db, which the COMMIT's txn has written: a cycle. When the COMMIT's txn
 * is the victim the engine must retry it, and the COMMIT succeeds. */
static void test_close_deadlock_victim(void **state)
{
	(void)state;
	char dir[512];
	snprintf(dir, sizeof(dir), "%s/close-deadlock", root);
	struct dnet_backend_config cfg;
	dnet_backend_config_defaults(&cfg);
	cfg.path = dir;
	cfg.fsync = DNET_FSYNC_NEVER;
	struct dnet_backend *b;
	assert_int_equal(ops->open(&cfg, &b), 0);
	for (int i = 0; i < 20; i++) /* other objects, all before X */
		assert_int_equal(put(b, i, (uint64_t)i, 300000), 0);

	DB_ENV *env;
	DB *objdb, *chunkdb;
	dnet_bdb_test_handles(b, &env, &objdb, &chunkdb);
	DB_LOCK_ILOCK meta; /* the lock object BDB uses for page 0 (metadata) of chunks.db */
	memset(&meta, 0, sizeof(meta));
	meta.pgno = 0;
	meta.type = DB_PAGE_LOCK;
	DB_MPOOLFILE *mpf = chunkdb->get_mpf(chunkdb);
	assert_int_equal(mpf->get_fileid(mpf, meta.fileid), 0);

	void (*old_errcall)(const DB_ENV *, const char *, const char *) = NULL;
	env->get_errcall(env, &old_errcall);
	env->set_errcall(env, capture_errcall);
	bdb_msgs.n = 0;

	uint8_t x[DNET_ID_SIZE]; /* the largest ID: its chunks are the last records */
	memset(x, 0xff, sizeof(x));
	const size_t size = 200000;
	uint8_t *d = malloc(size);
	assert_non_null(d);
	int commit_victim = 0, test_victim = 0;
	for (int round = 0; round < ROUNDS && !commit_victim; round++) {
		st_fill(d, size, 500u + (uint64_t)round);
		struct dnet_io_attr io;
		memset(&io, 0, sizeof(io));
		io.ioflags = DNET_IO_PREPARE;
		io.cookie = 100u + (uint64_t)round;
		io.total_size = size;
		io.size = size;
		int calls;
		assert_int_equal(st_write_io(ops, b, x, &io, d, 1, NULL, &calls), 0);

		uintmax_t waits0, dl0, waits, dl;
		lock_stats(env, &waits0, &dl0);
		DB_TXN *t;
		assert_int_equal(env->txn_begin(env, NULL, &t, 0), 0);
		DBT obj;
		memset(&obj, 0, sizeof(obj));
		obj.data = &meta;
		obj.size = sizeof(meta);
		DB_LOCK lk;
		assert_int_equal(env->lock_get(env, t->id(t), 0, &obj, DB_LOCK_WRITE, &lk), 0);

		struct commit_run *cr = calloc(1, sizeof(*cr));
		assert_non_null(cr);
		cr->b = b;
		memcpy(cr->id, x, sizeof(x));
		cr->io.ioflags = DNET_IO_COMMIT;
		cr->io.cookie = io.cookie;
		cr->io.offset = size; /* every byte came with the PREPARE */
		assert_int_equal(pthread_create(&cr->th, NULL, commit_main, cr), 0);

		/* until the COMMIT waits for T */
		const char *why = await_lock_wait(env, waits0, &cr->done, "the COMMIT");
		int rc = 0;
		if (!why) {
			uint8_t vb[64];
			DBT key, val;
			memset(&key, 0, sizeof(key));
			memset(&val, 0, sizeof(val));
			key.data = x;
			key.size = sizeof(x);
			val.data = vb;
			val.ulen = sizeof(vb);
			val.dlen = sizeof(vb);
			val.flags = DB_DBT_USERMEM | DB_DBT_PARTIAL;
			rc = objdb->get(objdb, t, &key, &val, DB_RMW);
			lock_stats(env, &waits, &dl);
			if (rc == DB_LOCK_DEADLOCK)
				test_victim++;
			else if ((rc == 0 || rc == DB_NOTFOUND) && dl > dl0)
				commit_victim = 1; /* our lock came once the COMMIT's txn gave up
						    * (X is not there in round 0) */
			else
				why = "the test's request on objects.db did not meet a deadlock";
		}
		assert_int_equal(t->abort(t), 0); /* and with it the metadata page lock */
		if (join_within(cr->th, &cr->done, 10000))
			fail_msg("round %d: COMMIT still running 10 s after the test's txn ended",
				 round);
		if (why)
			fail_msg("round %d: %s (rc %d)", round, why, rc);
		if (cr->status != 0)
			fail_msg("round %d: COMMIT failed: %d (%s)", round, cr->status,
				 dnet_strerror(cr->status));
		free(cr);
		struct dnet_read_res res;
		assert_int_equal(ops->read(b, x, 0, 0, 0, &res), 0);
		assert_int_equal(res.len, size);
		assert_memory_equal(res.buf, d, size);
		free(res.buf);
	}
	env->set_errcall(env, old_errcall);
	if (bdb_msgs.n)
		fail_msg("BDB reported %d error(s), the first: %s", bdb_msgs.n, bdb_msgs.first);
	if (!commit_victim)
		fail_msg("the COMMIT was never the deadlock victim in %d rounds (the test was %d "
			 "times)",
			 ROUNDS, test_victim);
	/* writes work afterwards, and every staged chunk is gone */
	st_fill(d, size, 999);
	struct dnet_io_attr io;
	memset(&io, 0, sizeof(io));
	io.size = size;
	int calls;
	assert_int_equal(st_write_io(ops, b, x, &io, d, 1, NULL, &calls), 0);
	for (int i = 0; i < 20; i++)
		check_obj(b, i, (uint64_t)i, 300000);
	DB_BTREE_STAT *bs;
	assert_int_equal(chunkdb->stat(chunkdb, NULL, &bs, 0), 0);
	assert_int_equal(bs->bt_nkeys, 20 * 2); /* the 20 objects' chunks, no staged one */
	free(bs);
	free(d);
	ops->close(b);
}

int main(void)
{
	snprintf(root, sizeof(root), "/tmp/test_bdb_XXXXXX");
	if (!mkdtemp(root)) {
		perror("mkdtemp");
		return 1;
	}
	const char *lvl = getenv("DNET_TEST_LOG");
	dnet_log_level = lvl ? dnet_log_level_parse(lvl) : -1;
	ops = dnet_backend_find("bdb");
	if (!ops) {
		fprintf(stderr, "bdb engine not registered\n");
		return 1;
	}
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_iterate_deadlock_victim),
	    cmocka_unit_test(test_close_deadlock_victim),
	};
	int rc = cmocka_run_group_tests_name("bdb_backend", tests, NULL, NULL);
	st_rm_rf(root);
	return rc;
}
