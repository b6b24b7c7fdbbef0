/* mem.c - an in-memory engine (--backend mem): objects in a striped hash table.
 * Nothing survives a restart; it exists to measure the network path without disk
 * and as the simplest reference implementation of backend.h. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

#include "common/errors.h"
#include "backend.h"

#define MEM_STRIPES 64
#define MEM_BUCKETS 4096 /* per stripe, grows by doubling */
#define MEM_MAX_HOLE (1ull << 20) /* of a chunked upload, see do_write() */

struct mem_obj {
	struct mem_obj *next;
	uint8_t id[DNET_ID_SIZE];
	struct dnet_obj_info info;
	uint8_t *data;
	/* A chunked upload in progress (cookie != 0) lives beside the visible object. */
	uint64_t cookie;
	uint8_t *up_data;
	uint64_t up_size, up_total;
	uint64_t up_cap; /* bytes allocated at up_data: grown as pieces arrive */
};

struct mem_stripe {
	pthread_mutex_t lock;
	struct mem_obj **b;
	size_t nb, n;
};

struct dnet_backend {
	struct mem_stripe s[MEM_STRIPES];
	uint64_t objects, bytes; /* under their own lock */
	pthread_mutex_t cnt_lock;
};

static uint64_t h64(const uint8_t *id)
{
	uint64_t h;
	memcpy(&h, id + 8, sizeof(h));
	return h;
}

static struct mem_stripe *stripe(struct dnet_backend *b, const uint8_t *id)
{
	return &b->s[id[0] % MEM_STRIPES];
}

static struct mem_obj **slot(struct mem_stripe *st, const uint8_t *id)
{
	struct mem_obj **p = &st->b[h64(id) & (st->nb - 1)];
	while (*p && memcmp((*p)->id, id, DNET_ID_SIZE) != 0)
		p = &(*p)->next;
	return p;
}

static void grow(struct mem_stripe *st)
{
	size_t nb = st->nb * 2;
	struct mem_obj **nbk = calloc(nb, sizeof(*nbk));
	if (!nbk)
		return; /* keep the longer chains */
	for (size_t i = 0; i < st->nb; i++) {
		struct mem_obj *o = st->b[i];
		while (o) {
			struct mem_obj *n = o->next;
			size_t k = h64(o->id) & (nb - 1);
			o->next = nbk[k];
			nbk[k] = o;
			o = n;
		}
	}
	free(st->b);
	st->b = nbk;
	st->nb = nb;
}

static int mem_open(const struct dnet_backend_config *cfg, struct dnet_backend **out)
{
	struct dnet_backend *b = calloc(1, sizeof(*b));
	if (!b)
		return DNET_ENOMEM;
	pthread_mutex_init(&b->cnt_lock, NULL);
	for (int i = 0; i < MEM_STRIPES; i++) {
		pthread_mutex_init(&b->s[i].lock, NULL);
		b->s[i].nb = MEM_BUCKETS;
		b->s[i].b = calloc(MEM_BUCKETS, sizeof(struct mem_obj *));
		if (!b->s[i].b)
			return DNET_ENOMEM;
	}
	*out = b;
	return 0;
}

static void mem_close(struct dnet_backend *b)
{
	for (int i = 0; i < MEM_STRIPES; i++) {
		for (size_t k = 0; k < b->s[i].nb; k++) {
			struct mem_obj *o = b->s[i].b[k];
			while (o) {
				struct mem_obj *n = o->next;
				free(o->data);
				free(o->up_data);
				free(o);
				o = n;
			}
		}
		free(b->s[i].b);
		pthread_mutex_destroy(&b->s[i].lock);
	}
	free(b);
}

static void count(struct dnet_backend *b, int64_t dobj, int64_t dbytes)
{
	pthread_mutex_lock(&b->cnt_lock);
	b->objects = (uint64_t)((int64_t)b->objects + dobj);
	b->bytes = (uint64_t)((int64_t)b->bytes + dbytes);
	pthread_mutex_unlock(&b->cnt_lock);
}

static int do_write(struct dnet_backend *b, struct mem_stripe *st, const struct dnet_write_req *r,
		    struct dnet_obj_info *info)
{
	const struct dnet_io_attr *io = &r->io;
	struct mem_obj **p = slot(st, r->id);
	struct mem_obj *o = *p;
	uint32_t f = io->ioflags & (DNET_IO_PREPARE | DNET_IO_PLAIN | DNET_IO_COMMIT);

	if (!o) {
		if (f && !(f & DNET_IO_PREPARE))
			return DNET_ENOENT;
		o = calloc(1, sizeof(*o));
		if (!o)
			return DNET_ENOMEM;
		memcpy(o->id, r->id, DNET_ID_SIZE);
		o->info.size = UINT64_MAX; /* not visible until written */
		*p = o;
		if (++st->n > st->nb * 2)
			grow(st);
	}
	if (f) {
		if (f & DNET_IO_PREPARE) {
			if (io->total_size > (1ull << 40))
				return DNET_ETOOBIG;
			free(o->up_data);
			/* grown as pieces arrive: a PREPARE declaring a huge total must not
			 * allocate it up front (found by fuzz_server) */
			o->up_cap = io->total_size < 4096 ? (io->total_size ? io->total_size : 1) : 4096;
			o->up_data = calloc(1, (size_t)o->up_cap);
			if (!o->up_data) {
				o->up_cap = 0;
				return DNET_ENOMEM;
			}
			o->cookie = io->cookie;
			o->up_total = io->total_size;
			o->up_size = 0;
		} else if (!o->up_data || o->cookie != io->cookie) {
			return DNET_ENOENT;
		}
		if (io->offset > o->up_total || io->size > o->up_total - io->offset)
			return DNET_ERANGE;
		/* Pieces may come out of order, but memory follows the bytes received: a
		 * piece may open a hole of at most MEM_MAX_HOLE past the furthest byte so
		 * far (else one tiny request could claim gigabytes: found by fuzz_server) */
		if (io->offset > o->up_size + MEM_MAX_HOLE)
			return DNET_ERANGE;
		if (io->offset + io->size > o->up_cap) {
			uint64_t cap = o->up_cap;
			while (cap < io->offset + io->size)
				cap *= 2;
			if (cap > o->up_total)
				cap = o->up_total;
			uint8_t *nd = realloc(o->up_data, (size_t)cap);
			if (!nd)
				return DNET_ENOMEM;
			memset(nd + o->up_cap, 0, (size_t)(cap - o->up_cap));
			o->up_data = nd;
			o->up_cap = cap;
		}
		memcpy(o->up_data + io->offset, r->data, io->size);
		if (io->offset + io->size > o->up_size)
			o->up_size = io->offset + io->size;
		if (!(f & DNET_IO_COMMIT)) {
			info->size = o->up_total;
			info->timestamp = io->timestamp;
			memset(info->csum, 0, sizeof(info->csum));
			return 0;
		}
		if (o->up_size != o->up_total)
			return DNET_EINVAL;
		int existed = o->info.size != UINT64_MAX;
		count(b, existed ? 0 : 1, (int64_t)o->up_total - (existed ? (int64_t)o->info.size : 0));
		free(o->data);
		o->data = o->up_data;
		o->up_data = NULL;
		o->cookie = 0;
		o->info.size = o->up_total;
	} else {
		int existed = o->info.size != UINT64_MAX;
		uint64_t old = existed ? o->info.size : 0;
		if (io->offset > old)
			return existed ? DNET_ERANGE : DNET_ENOENT;
		uint64_t nsize = io->offset == 0 ? io->size
			       : (io->offset + io->size > old ? io->offset + io->size : old);
		uint8_t *nd = malloc(nsize ? nsize : 1);
		if (!nd)
			return DNET_ENOMEM;
		if (io->offset)
			memcpy(nd, o->data, old < nsize ? old : nsize);
		memcpy(nd + io->offset, r->data, io->size);
		free(o->data);
		o->data = nd;
		count(b, existed ? 0 : 1, (int64_t)nsize - (int64_t)old);
		o->info.size = nsize;
	}
	o->info.timestamp = io->timestamp;
	dnet_csum(o->data, o->info.size, o->info.csum);
	*info = o->info;
	return 0;
}

static void mem_write(struct dnet_backend *b, const struct dnet_write_req *r, dnet_write_done_fn done,
		      void *arg)
{
	struct mem_stripe *st = stripe(b, r->id);
	struct dnet_obj_info info;
	pthread_mutex_lock(&st->lock);
	int err = do_write(b, st, r, &info);
	/* Drop a placeholder a failed first write left behind. */
	struct mem_obj **p = slot(st, r->id);
	if (*p && (*p)->info.size == UINT64_MAX && !(*p)->up_data) {
		struct mem_obj *o = *p;
		*p = o->next;
		st->n--;
		free(o);
	}
	pthread_mutex_unlock(&st->lock);
	done(arg, err, err ? NULL : &info);
}

static int mem_read(struct dnet_backend *b, const uint8_t *id, uint64_t offset, uint64_t size,
		    uint32_t flags, struct dnet_read_res *res)
{
	struct mem_stripe *st = stripe(b, id);
	pthread_mutex_lock(&st->lock);
	struct mem_obj *o = *slot(st, id);
	if (!o || o->info.size == UINT64_MAX) {
		pthread_mutex_unlock(&st->lock);
		return DNET_ENOENT;
	}
	if (offset > o->info.size) {
		pthread_mutex_unlock(&st->lock);
		return DNET_ERANGE;
	}
	uint64_t len = o->info.size - offset;
	if (size && size < len)
		len = size;
	res->fd = -1;
	res->verify = NULL;
	res->buf = malloc(len ? len : 1);
	if (!res->buf) {
		pthread_mutex_unlock(&st->lock);
		return DNET_ENOMEM;
	}
	memcpy(res->buf, o->data + offset, len);
	res->len = len;
	res->info = o->info;
	pthread_mutex_unlock(&st->lock);
	return 0;
}

static int mem_del(struct dnet_backend *b, const uint8_t *id)
{
	struct mem_stripe *st = stripe(b, id);
	pthread_mutex_lock(&st->lock);
	struct mem_obj **p = slot(st, id);
	struct mem_obj *o = *p;
	if (!o || o->info.size == UINT64_MAX) {
		pthread_mutex_unlock(&st->lock);
		return DNET_ENOENT;
	}
	*p = o->next;
	st->n--;
	count(b, -1, -(int64_t)o->info.size);
	pthread_mutex_unlock(&st->lock);
	free(o->data);
	free(o->up_data);
	free(o);
	return 0;
}

static int mem_lookup(struct dnet_backend *b, const uint8_t *id, struct dnet_obj_info *info)
{
	struct mem_stripe *st = stripe(b, id);
	pthread_mutex_lock(&st->lock);
	struct mem_obj *o = *slot(st, id);
	int err = (!o || o->info.size == UINT64_MAX) ? DNET_ENOENT : 0;
	if (!err)
		*info = o->info;
	pthread_mutex_unlock(&st->lock);
	return err;
}

static int mem_iterate(struct dnet_backend *b, dnet_iterate_fn fn, void *arg)
{
	for (int i = 0; i < MEM_STRIPES; i++) {
		struct mem_stripe *st = &b->s[i];
		pthread_mutex_lock(&st->lock);
		for (size_t k = 0; k < st->nb; k++) {
			for (struct mem_obj *o = st->b[k]; o; o = o->next) {
				if (o->info.size == UINT64_MAX)
					continue;
				int rc = fn(arg, o->id, &o->info);
				if (rc) {
					pthread_mutex_unlock(&st->lock);
					return rc;
				}
			}
		}
		pthread_mutex_unlock(&st->lock);
	}
	return 0;
}

static int mem_sync(struct dnet_backend *b)
{
	return 0;
}

static int mem_stat(struct dnet_backend *b, struct dnet_backend_stat *st)
{
	memset(st, 0, sizeof(*st));
	pthread_mutex_lock(&b->cnt_lock);
	st->objects = b->objects;
	st->bytes = b->bytes;
	pthread_mutex_unlock(&b->cnt_lock);
	st->disk_bytes = st->bytes;
	return 0;
}

const struct dnet_backend_ops dnet_mem_backend_ops = {
	.name = "mem",
	.open = mem_open,
	.close = mem_close,
	.write = mem_write,
	.read = mem_read,
	.del = mem_del,
	.lookup = mem_lookup,
	.iterate = mem_iterate,
	.sync = mem_sync,
	.stat = mem_stat,
};
