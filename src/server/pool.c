/* pool.c - the IO worker pool: per-worker FIFO queues, transactions sharded by
 * object ID so that requests for one object run in arrival order. */
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "server.h"

struct dnet_worker {
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct dnet_trans *head, *tail;
	int stop;
	struct dnet_pool *pool;
};

struct dnet_pool {
	int n;
	dnet_pool_fn fn;
	void *ctx;
	atomic_uint_fast64_t *queued;
	struct dnet_worker *w;
};

static void *worker_main(void *arg)
{
	struct dnet_worker *w = arg;
	struct dnet_pool *p = w->pool;

	pthread_mutex_lock(&w->lock);
	for (;;) {
		while (!w->head && !w->stop)
			pthread_cond_wait(&w->cond, &w->lock);
		if (!w->head)
			break; /* stop requested and queue drained */
		/* Take the whole queue at once: one lock round-trip per burst. */
		struct dnet_trans *batch = w->head;
		w->head = w->tail = NULL;
		pthread_mutex_unlock(&w->lock);
		while (batch) {
			struct dnet_trans *t = batch;
			batch = t->next;
			t->next = NULL;
			if (p->queued)
				atomic_fetch_sub(p->queued, 1);
			p->fn(p->ctx, t);
		}
		pthread_mutex_lock(&w->lock);
	}
	pthread_mutex_unlock(&w->lock);
	return NULL;
}

int dnet_pool_start(struct dnet_pool **out, int nthreads, dnet_pool_fn fn, void *ctx,
		    atomic_uint_fast64_t *queued)
{
	if (nthreads < 1 || nthreads > 1024)
		return -1;
	struct dnet_pool *p = calloc(1, sizeof(*p));
	if (!p)
		return -1;
	p->w = calloc((size_t)nthreads, sizeof(*p->w));
	if (!p->w) {
		free(p);
		return -1;
	}
	p->fn = fn;
	p->ctx = ctx;
	p->queued = queued;
	for (int i = 0; i < nthreads; i++) {
		struct dnet_worker *w = &p->w[i];
		w->pool = p;
		pthread_mutex_init(&w->lock, NULL);
		pthread_cond_init(&w->cond, NULL);
		if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
			dnet_log_error("cannot start IO thread %d", i);
			p->n = i;
			dnet_pool_stop(p);
			return -1;
		}
		p->n = i + 1;
	}
	*out = p;
	return 0;
}

static unsigned shard_of(const struct dnet_pool *p, const struct dnet_trans *t)
{
	uint64_t h;
	memcpy(&h, t->hdr.id, sizeof(h));
	return (unsigned)(h % (uint64_t)p->n);
}

void dnet_pool_push(struct dnet_pool *p, struct dnet_trans *t)
{
	struct dnet_worker *w = &p->w[shard_of(p, t)];
	t->next = NULL;
	if (p->queued)
		atomic_fetch_add(p->queued, 1);
	pthread_mutex_lock(&w->lock);
	int was_empty = w->head == NULL;
	if (w->tail)
		w->tail->next = t;
	else
		w->head = t;
	w->tail = t;
	pthread_mutex_unlock(&w->lock);
	if (was_empty)
		pthread_cond_signal(&w->cond);
}

void dnet_pool_stop(struct dnet_pool *p)
{
	if (!p)
		return;
	for (int i = 0; i < p->n; i++) {
		pthread_mutex_lock(&p->w[i].lock);
		p->w[i].stop = 1;
		pthread_cond_signal(&p->w[i].cond);
		pthread_mutex_unlock(&p->w[i].lock);
	}
	for (int i = 0; i < p->n; i++) {
		pthread_join(p->w[i].thread, NULL);
		pthread_mutex_destroy(&p->w[i].lock);
		pthread_cond_destroy(&p->w[i].cond);
	}
	free(p->w);
	free(p);
}

int dnet_pool_threads(const struct dnet_pool *p)
{
	return p->n;
}
