/* test_pool.c - the IO worker pool: every transaction runs exactly once, requests
 * for one object run in arrival order, every transaction is followed by a flush on
 * its worker, and stop drains the queues. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "server/server.h"
#include "storage/backend.h"

#define NKEYS 16
#define PER_KEY 2000

struct ctx {
	pthread_mutex_t lock;
	uint64_t last_seq[NKEYS]; /* per key: last sequence number seen */
	int out_of_order;
	int runs;
	atomic_int concurrent, max_concurrent;
	atomic_int unflushed; /* runs not yet followed by a flush on their worker */
	atomic_int flushes, not_batching;
};

static _Thread_local int tl_unflushed;

static void run(void *arg, struct dnet_trans *t)
{
	struct ctx *c = arg;
	int now = atomic_fetch_add(&c->concurrent, 1) + 1;
	int m = atomic_load(&c->max_concurrent);
	while (now > m && !atomic_compare_exchange_weak(&c->max_concurrent, &m, now))
		;
	unsigned key = t->hdr.id[8];
	uint64_t seq = t->hdr.trans;
	pthread_mutex_lock(&c->lock);
	if (seq != c->last_seq[key] + 1)
		c->out_of_order++;
	c->last_seq[key] = seq;
	c->runs++;
	pthread_mutex_unlock(&c->lock);
	atomic_fetch_sub(&c->concurrent, 1);
	if (!dnet_backend_batching)
		atomic_fetch_add(&c->not_batching, 1);
	tl_unflushed++;
	atomic_fetch_add(&c->unflushed, 1);
	free(t);
}

static void flush(void *arg)
{
	struct ctx *c = arg;
	atomic_fetch_sub(&c->unflushed, tl_unflushed);
	tl_unflushed = 0;
	atomic_fetch_add(&c->flushes, 1);
}

static struct dnet_trans *mk(unsigned key, uint64_t seq)
{
	struct dnet_trans *t = calloc(1, sizeof(*t));
	assert_non_null(t);
	/* The shard is chosen from the first 8 ID bytes: spread keys over them. */
	for (int i = 0; i < 8; i++)
		t->hdr.id[i] = (uint8_t)(key * 37 + (unsigned)i);
	t->hdr.id[8] = (uint8_t)key;
	t->hdr.trans = seq;
	return t;
}

static void test_order_and_exactly_once(void **state)
{
	struct ctx c;
	memset(&c, 0, sizeof(c));
	pthread_mutex_init(&c.lock, NULL);
	atomic_uint_fast64_t queued = 0;
	struct dnet_pool *p;
	assert_int_equal(dnet_pool_start(&p, 4, run, flush, &c, &queued), 0);
	assert_int_equal(dnet_pool_threads(p), 4);
	for (uint64_t seq = 1; seq <= PER_KEY; seq++)
		for (unsigned k = 0; k < NKEYS; k++)
			dnet_pool_push(p, mk(k, seq));
	dnet_pool_stop(p); /* drains everything queued */
	assert_int_equal(c.runs, NKEYS * PER_KEY);
	assert_int_equal(c.out_of_order, 0);
	for (unsigned k = 0; k < NKEYS; k++)
		assert_int_equal(c.last_seq[k], PER_KEY);
	assert_int_equal(atomic_load(&queued), 0);
	/* Workers run with batching on and flush after every batch: nothing run is
	 * left unflushed, and there were between 1 and `runs` batches. */
	assert_int_equal(atomic_load(&c.not_batching), 0);
	assert_int_equal(atomic_load(&c.unflushed), 0);
	assert_true(atomic_load(&c.flushes) >= 1);
	assert_true(atomic_load(&c.flushes) <= c.runs);
	/* With 16 keys over 4 workers, work really ran in parallel at some point on a
	 * multi-core machine; on one core this can legitimately be 1. */
	assert_true(atomic_load(&c.max_concurrent) >= 1);
	pthread_mutex_destroy(&c.lock);
}

static void test_bad_thread_counts(void **state)
{
	struct dnet_pool *p = NULL;
	assert_int_not_equal(dnet_pool_start(&p, 0, run, NULL, NULL, NULL), 0);
	assert_int_not_equal(dnet_pool_start(&p, 100000, run, NULL, NULL, NULL), 0);
	assert_null(p);
}

static void test_stop_empty(void **state)
{
	struct dnet_pool *p;
	assert_int_equal(dnet_pool_start(&p, 2, run, NULL, NULL, NULL), 0);
	dnet_pool_stop(p);
	dnet_pool_stop(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_order_and_exactly_once),
		cmocka_unit_test(test_bad_thread_counts),
		cmocka_unit_test(test_stop_empty),
	};
	return cmocka_run_group_tests_name("pool", tests, NULL, NULL);
}
