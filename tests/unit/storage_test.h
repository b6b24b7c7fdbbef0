/* storage_test.h - helpers shared by the storage engine unit tests (conformance,
 * file, blob, fault injection, offline tools): test data, removing a test
 * directory, and a synchronous write through an engine's asynchronous write(). */
#ifndef DNET_STORAGE_TEST_H
#define DNET_STORAGE_TEST_H

#include <ftw.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "storage/backend.h"

/* Deterministic bytes for (len, seed): xorshift64. */
static inline void st_fill(void *p, size_t len, uint64_t seed)
{
	uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
	uint8_t *d = p;
	for (size_t i = 0; i < len; i++) {
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		d[i] = (uint8_t)s;
	}
}

static inline int st_rm_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

/* rm -rf path (errors ignored: test cleanup). */
static inline void st_rm_rf(const char *path)
{
	nftw(path, st_rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* The completion of one write, which may come from an engine thread. */
struct st_wres {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	atomic_int calls; /* read outside the lock to catch a late second call */
	int status;
	struct dnet_obj_info info;
};

static inline void st_wres_init(struct st_wres *w)
{
	memset(w, 0, sizeof(*w));
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->cond, NULL);
}

static inline void st_wres_destroy(struct st_wres *w)
{
	pthread_mutex_destroy(&w->lock);
	pthread_cond_destroy(&w->cond);
}

static inline void st_wres_done(void *arg, int status, const struct dnet_obj_info *info)
{
	struct st_wres *w = arg;
	pthread_mutex_lock(&w->lock);
	w->calls++;
	w->status = status;
	if (info)
		w->info = *info;
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

static inline void st_wres_wait(struct st_wres *w)
{
	pthread_mutex_lock(&w->lock);
	while (!atomic_load(&w->calls))
		pthread_cond_wait(&w->cond, &w->lock);
	pthread_mutex_unlock(&w->lock);
}

/* Writes and waits for done(): returns its status (and info when non-NULL) and
 * how often done() was called in *calls (it must be exactly once). io->timestamp
 * 0 is sent as default_ts. */
static inline int st_write_io(const struct dnet_backend_ops *ops, struct dnet_backend *b,
			      const uint8_t *id, const struct dnet_io_attr *io, const void *data,
			      uint64_t default_ts, struct dnet_obj_info *info, int *calls)
{
	struct dnet_write_req req;
	struct st_wres w;
	st_wres_init(&w);
	memset(&req, 0, sizeof(req));
	req.id = id;
	req.io = *io;
	if (!req.io.timestamp)
		req.io.timestamp = default_ts;
	req.data = data;
	ops->write(b, &req, st_wres_done, &w);
	st_wres_wait(&w);
	if (info)
		*info = w.info;
	*calls = w.calls;
	int st = w.status;
	st_wres_destroy(&w);
	return st;
}

#endif
