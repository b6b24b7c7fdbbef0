/* pool.c - the IO worker pool: per-worker FIFO queues, transactions sharded by
 * object ID so that requests for one object run in arrival order. */
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "storage/backend.h"
#include "server.h"

struct dnet_worker {
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct dnet_trans *head, *tail;
	int stop;
	int waiting; /* asleep on cond: a push must signal */
	struct dnet_pool *pool;
};

struct dnet_pool {
	int n;
	dnet_pool_fn fn;
	dnet_pool_flush_fn flush;
	void *ctx;
	atomic_uint_fast64_t *queued;
	struct dnet_worker *w;
};

static void *worker_main(void *arg)
{
	struct dnet_worker *w = arg;
	struct dnet_pool *p = w->pool;

	dnet_thread_name("ell-io/%d", (int)(w - p->w));
	/* SCHED_BATCH (dnet_thread_batch): woken by the receive thread, a worker does
	 * not preempt it mid-round. */
	if (dnet_thread_batch() != 0)
		dnet_log_debug("IO thread: SCHED_BATCH refused; running as SCHED_OTHER");
	dnet_backend_batching = p->flush != NULL;
	pthread_mutex_lock(&w->lock);
	for (;;) {
		while (!w->head && !w->stop) {
			w->waiting = 1;
			pthread_cond_wait(&w->cond, &w->lock);
			w->waiting = 0;
		}
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
		if (p->flush)
			p->flush(p->ctx);
		pthread_mutex_lock(&w->lock);
	}
	pthread_mutex_unlock(&w->lock);
	return NULL;
}

int dnet_pool_start(struct dnet_pool **out, int nthreads, dnet_pool_fn fn,
		    dnet_pool_flush_fn flush, void *ctx, atomic_uint_fast64_t *queued)
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
	p->flush = flush;
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

/* Append the list first..last (count items) to w's queue; wake w if it sleeps. */
static void worker_append(struct dnet_worker *w, struct dnet_trans *first, struct dnet_trans *last)
{
	pthread_mutex_lock(&w->lock);
	if (w->tail)
		w->tail->next = first;
	else
		w->head = first;
	w->tail = last;
	int wake = w->waiting;
	pthread_mutex_unlock(&w->lock);
	if (wake)
		pthread_cond_signal(&w->cond);
}

void dnet_pool_push(struct dnet_pool *p, struct dnet_trans *t)
{
	t->next = NULL;
	if (p->queued)
		atomic_fetch_add(p->queued, 1);
	worker_append(&p->w[shard_of(p, t)], t, t);
}

/* A network loop collects the transactions of one epoll round here and hands them
 * over in one go: one lock round-trip and at most one wakeup per worker per round
 * instead of one per request (the wakeups were most of the CPU time of small
 * requests on a 2-core machine). */
struct dnet_pool_batch {
	struct dnet_pool *pool;
	int ntouched;
	int *touched; /* workers with a non-empty list, in first-touch order */
	struct dnet_trans **head, **tail;
};

struct dnet_pool_batch *dnet_pool_batch_new(struct dnet_pool *p)
{
	struct dnet_pool_batch *b = calloc(1, sizeof(*b));
	if (!b)
		return NULL;
	b->pool = p;
	b->touched = calloc((size_t)p->n, sizeof(*b->touched));
	b->head = calloc((size_t)p->n, sizeof(*b->head));
	b->tail = calloc((size_t)p->n, sizeof(*b->tail));
	if (!b->touched || !b->head || !b->tail) {
		dnet_pool_batch_free(b);
		return NULL;
	}
	return b;
}

void dnet_pool_batch_free(struct dnet_pool_batch *b)
{
	if (!b)
		return;
	free(b->touched);
	free(b->head);
	free(b->tail);
	free(b);
}

void dnet_pool_batch_add(struct dnet_pool_batch *b, struct dnet_trans *t)
{
	struct dnet_pool *p = b->pool;
	unsigned i = shard_of(p, t);
	t->next = NULL;
	if (p->queued)
		atomic_fetch_add(p->queued, 1);
	if (b->tail[i]) {
		b->tail[i]->next = t;
	} else {
		b->head[i] = t;
		b->touched[b->ntouched++] = (int)i;
	}
	b->tail[i] = t;
}

void dnet_pool_batch_commit(struct dnet_pool_batch *b)
{
	for (int k = 0; k < b->ntouched; k++) {
		int i = b->touched[k];
		worker_append(&b->pool->w[i], b->head[i], b->tail[i]);
		b->head[i] = b->tail[i] = NULL;
	}
	b->ntouched = 0;
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
