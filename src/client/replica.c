/* replica.c - copies (docs/replication.md): versions, and the fan-out of writes,
 * removes, reads and lookups to an object's copies.
 *
 * The handle computes where the copies live from the route table (the ring's
 * transformation functions, common/ring.c) and talks to each copy's node itself,
 * with DNET_FLAG_DIRECT. A fan is one user request spread over several
 * sub-requests; sub-requests complete through hooks inside the IO loop, and the
 * fan completes (a blocking caller returns, or an async parent's callback is
 * queued) when the last one is in. */
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "client_int.h"
#include "common/errors.h"
#include "common/util.h"

/* --- versions ------------------------------------------------------------ */

void dnet__hlc_observe(dnet_client *c, uint64_t v)
{
	v &= ~DNET_VERSION_LOW;
	if (v > c->hlc && v < dnet_now_real_ns() + 3600ull * 1000000000ull)
		c->hlc = v; /* a version from an hour ahead is a broken clock: not followed */
}

uint64_t dnet__hlc_next(dnet_client *c, int tomb)
{
	if (!c->tag) {
		uint16_t t = 0;
		if (getrandom(&t, sizeof(t), 0) != (ssize_t)sizeof(t))
			t = (uint16_t)dnet_now_mono_ns();
		c->tag = (uint16_t)(t % 2047u + 1u);
	}
	uint64_t now = dnet_now_real_ns() & ~DNET_VERSION_LOW;
	if (now <= c->hlc)
		now = c->hlc + DNET_VERSION_LOW + 1;
	c->hlc = now;
	return now | ((uint64_t)c->tag << 1) | (tomb ? DNET_VERSION_TOMB : 0);
}

int dnet_client_set_quorum(dnet_client *c, int w, int r)
{
	if (w < 0 || w > DNET_MAX_COPIES || r < 0 || r > DNET_MAX_COPIES)
		return DNET_EINVAL;
	c->w = w;
	c->r = r;
	return 0;
}

const struct dnet_copy_status *dnet_last_copies(const dnet_client *c, int *n)
{
	*n = c->nlast_copies;
	return c->last_copies;
}

int dnet__next_standin(const struct dnet_plan *p, const int *used)
{
	for (int ti = p->homes; ti < p->n; ti++)
		if (!used[ti] && !p->down[ti])
			return ti;
	return -1;
}

void dnet__copy_status(struct dnet_copy_status *st, int copy, int standin, int status,
		       uint64_t version, const char *node)
{
	memset(st, 0, sizeof(*st));
	st->copy = copy;
	st->standin = standin;
	st->status = status;
	st->version = version;
	memcpy(st->node, node, sizeof(st->node));
}

int dnet__quorum(const dnet_client *c, int homes)
{
	int w = c->w ? c->w : homes / 2 + 1;
	return w > homes ? homes : w;
}

/* The node could not be asked (as opposed to: it answered with an error). */
int dnet__unreachable(int st)
{
	return st == DNET_ENODEDOWN || st == DNET_ECONNRESET || st == DNET_ECONNREFUSED ||
	       st == DNET_ETIMEDOUT || st == DNET_ENOTCONN || st == DNET_ESHUTDOWN ||
	       st == DNET_EADDR || st == DNET_ESYS;
}

void dnet__set_last_copies(dnet_client *c, const struct dnet_copy_status *res, int n)
{
	free(c->last_copies);
	c->last_copies = NULL;
	c->nlast_copies = 0;
	if (n <= 0 || !(c->last_copies = malloc((size_t)n * sizeof(*res))))
		return;
	memcpy(c->last_copies, res, (size_t)n * sizeof(*res));
	c->nlast_copies = n;
}

/* --- the fan ------------------------------------------------------------- */

enum { FAN_WRITE = 1, FAN_DEL, FAN_READ, FAN_LOOKUP };

struct fan {
	dnet_client *c;
	int kind;
	uint8_t id[DNET_ID_SIZE];
	struct dnet_plan plan;
	int used[DNET_PLAN_MAX];
	int want;      /* writes: acks needed; reads: answers wanted */
	int nout;      /* sub-requests in flight */
	int acks;      /* writes: copies that took it; reads: definitive answers */
	int live;      /* DEL: some copy had the object */
	int first_err;
	int need_fallbacks; /* reads: a home could not answer */
	int nres;
	struct dnet_copy_status res[DNET_PLAN_MAX * 2];
	int res_target[DNET_PLAN_MAX * 2]; /* plan index of each result */
	/* writes */
	struct dnet_io_attr io;
	const uint8_t *data;
	int fd;
	uint64_t fd_off, len;
	/* reads */
	uint64_t rd_off, rd_size;
	struct dnet_req *best; /* the newest data seen (READ) or info (LOOKUP) */
	uint64_t best_v, tomb_v;
	int all; /* LOOKUP: ask every home at once */

	struct dnet_object_info info;
	int have_info;
	struct dnet_req *parent; /* async: completed with the fan */
	int finished, status;
};

static void fan_sub_done(struct dnet_req *r);

static int fan_copy_of(const struct fan *f, int ti)
{
	return ti < f->plan.homes ? ti : -1;
}

/* Send the fan's request to plan target ti, for copy `copy` (-1: extra). */
static int fan_send(struct fan *f, int ti, int copy, int standin)
{
	dnet_client *c = f->c;
	if (f->nres >= (int)(sizeof(f->res) / sizeof(f->res[0])))
		return DNET_EINVAL;
	int slot = f->nres++;
	struct dnet_copy_status *st = &f->res[slot];
	dnet__copy_status(st, copy, standin, 0, f->io.timestamp, f->plan.node[ti]->name);
	f->res_target[slot] = ti;
	f->used[ti] = 1;
	int cmd = f->kind == FAN_WRITE ? DNET_CMD_WRITE
		  : f->kind == FAN_DEL ? DNET_CMD_DEL
		  : f->kind == FAN_READ ? DNET_CMD_READ : DNET_CMD_LOOKUP;
	struct dnet_req *r = dnet__req_make(c, cmd, f->id);
	if (!r) {
		st->status = DNET_ENOMEM;
		return DNET_ENOMEM;
	}
	r->reroute = 0;
	r->target = f->plan.node[ti];
	if (f->kind == FAN_WRITE || f->kind == FAN_DEL) {
		dnet__req_set_io(r, &f->io);
		if (f->kind == FAN_WRITE) {
			r->data_len = f->len;
			if (f->fd >= 0) {
				r->file_fd = f->fd;
				r->file_off = r->file_off0 = f->fd_off;
			} else {
				r->data = f->data;
			}
		}
	} else if (f->kind == FAN_READ) {
		struct dnet_io_attr io = {.offset = f->rd_off, .size = f->rd_size};
		dnet__req_set_io(r, &io);
		r->rd_size = f->rd_size;
	}
	r->hook = fan_sub_done;
	r->hook_arg = f;
	r->hook_val = (uint64_t)slot;
	int err;
	struct dnet_conn *conn = dnet__pick_conn(c, r, &err);
	if (conn)
		err = dnet__submit(c, conn, r, DNET_FLAG_NEED_ACK | DNET_FLAG_DIRECT);
	if (err) {
		st->status = err;
		dnet__req_free(c, r);
		return err;
	}
	f->nout++;
	return 0;
}

/* A stand-in for a home that is down: the next unused fallback not down. */
static int fan_standin(struct fan *f, int copy)
{
	int ti;
	/* fan_send marks ti used even when it fails: the loop ends. */
	while ((ti = dnet__next_standin(&f->plan, f->used)) >= 0)
		if (fan_send(f, ti, copy, 1) == 0)
			return 0;
	return DNET_ENODEDOWN;
}

/* Reads: the next target to ask, homes the table says are up first. */
static int fan_next_read(struct fan *f)
{
	for (int pass = 0; pass < 2; pass++) {
		int lim = f->need_fallbacks ? f->plan.n : f->plan.homes;
		for (int ti = 0; ti < lim; ti++) {
			if (f->used[ti] || (pass == 0 && f->plan.down[ti]))
				continue;
			if (fan_send(f, ti, fan_copy_of(f, ti), ti >= f->plan.homes) == 0)
				return 0;
		}
	}
	return -1;
}

/* Background repair of a stale or missing home copy: fire and forget. */
static void repair_done(struct dnet_req *r)
{
	void *buf = (void *)r->hook_arg;
	dnet__req_free(r->hook_arg2, r);
	free(buf);
}

static void fan_repair(struct fan *f)
{
	dnet_client *c = f->c;
	if (f->kind != FAN_READ)
		return;
	int tomb = f->tomb_v > f->best_v;
	uint64_t v = tomb ? f->tomb_v : f->best_v;
	if (!v)
		return;
	/* Data repair needs the whole object in hand. */
	if (!tomb && (!f->best || f->rd_off || f->best->rio.total_size != f->best->rgot ||
		      f->best->rgot > DNET_CHUNK_SIZE))
		return;
	for (int i = 0; i < f->nres; i++) {
		struct dnet_copy_status *st = &f->res[i];
		if (st->copy < 0)
			continue;
		int stale = (st->status == 0 && st->version < v) ||
			    (st->status == DNET_ENOENT && st->version < v) ||
			    st->status == DNET_ECORRUPT;
		if (!stale)
			continue;
		struct dnet_req *r = dnet__req_make(c, tomb ? DNET_CMD_DEL : DNET_CMD_WRITE, f->id);
		if (!r)
			return;
		uint8_t *copy = NULL;
		struct dnet_io_attr io = {.timestamp = v};
		if (!tomb) {
			size_t len = f->best->rgot;
			copy = malloc(len ? len : 1);
			if (!copy) {
				dnet__req_free(c, r);
				return;
			}
			memcpy(copy, f->best->rbuf, len);
			io.size = io.total_size = len;
			r->data = copy;
			r->data_len = len;
		}
		dnet__req_set_io(r, &io);
		r->reroute = 0;
		r->target = f->plan.node[f->res_target[i]];
		r->hook = repair_done;
		r->hook_arg = copy;
		r->hook_arg2 = c;
		int err;
		struct dnet_conn *conn = dnet__pick_conn(c, r, &err);
		if (!conn || dnet__submit(c, conn, r, DNET_FLAG_NEED_ACK | DNET_FLAG_DIRECT)) {
			dnet__req_free(c, r);
			free(copy);
			continue;
		}
		c->repairs++;
	}
}

static void fan_finish(struct fan *f)
{
	dnet_client *c = f->c;
	if (f->kind == FAN_WRITE || f->kind == FAN_DEL) {
		if (f->acks >= f->want)
			f->status = f->kind == FAN_DEL && !f->live ? DNET_ENOENT : 0;
		else
			f->status = f->first_err && !dnet__unreachable(f->first_err) ? f->first_err
											: DNET_EQUORUM;
	} else if (f->best && f->best_v > f->tomb_v) {
		f->status = 0;
	} else if (f->acks || f->tomb_v) {
		f->status = DNET_ENOENT;
	} else {
		f->status = f->first_err ? f->first_err : DNET_ENOENT;
	}
	if (!f->status && f->kind == FAN_READ)
		fan_repair(f);
	dnet__set_last_copies(c, f->res, f->nres);
	f->finished = 1;
	if (f->parent) {
		struct dnet_req *p = f->parent;
		if (f->best && !f->status) {
			p->info = f->best->info;
			p->have_info = f->best->have_info;
			if (f->kind == FAN_READ) {
				p->rbuf = f->best->rbuf;
				p->rgot = f->best->rgot;
				p->rio = f->best->rio;
				p->have_rio = 1;
				f->best->rbuf = NULL;
			}
		} else if (f->have_info) {
			p->info = f->info;
			p->have_info = 1;
		}
		if (f->best)
			dnet__req_free(c, f->best);
		dnet__req_finish(c, p, f->status);
		free(f);
	}
}

static void fan_sub_done(struct dnet_req *r)
{
	struct fan *f = r->hook_arg;
	dnet_client *c = f->c;
	int slot = (int)r->hook_val;
	struct dnet_copy_status *st = &f->res[slot];
	int st_copy = st->copy;
	int status = r->status;
	f->nout--;
	st->status = status;
	if (r->have_info) {
		st->version = r->info.timestamp;
		st->size = r->info.size;
		memcpy(st->csum, r->info.csum, sizeof(st->csum));
		dnet__hlc_observe(c, r->info.timestamp);
	}
	int keep = 0;
	switch (f->kind) {
	case FAN_WRITE:
	case FAN_DEL:
		if (status == 0 || status == DNET_EEXIST ||
		    (f->kind == FAN_DEL && status == DNET_ENOENT)) {
			f->acks++;
			if (f->kind == FAN_DEL && status == 0)
				f->live = 1;
			if (f->kind == FAN_WRITE && status == 0 && r->have_info && !f->have_info) {
				f->info = r->info;
				f->have_info = 1;
			}
		} else {
			if (!f->first_err)
				f->first_err = status;
			/* A home that cannot be reached: a stand-in keeps its copy. */
			if (dnet__unreachable(status) && st_copy >= 0 && !st->standin)
				fan_standin(f, st_copy);
		}
		break;
	case FAN_READ:
	case FAN_LOOKUP:
		if (status == 0) {
			f->acks++;
			uint64_t v = r->have_info ? r->info.timestamp : 0;
			if (!f->best || v > f->best_v) {
				if (f->best)
					dnet__req_free(c, f->best);
				f->best = r;
				f->best_v = v;
				keep = 1;
			}
		} else if (status == DNET_ENOENT) {
			f->acks++;
			if (r->have_info && r->info.timestamp > f->tomb_v)
				f->tomb_v = r->info.timestamp;
		} else {
			if (!f->first_err)
				f->first_err = status;
			if (st_copy >= 0)
				f->need_fallbacks = 1;
		}
		/* One at a time until a copy has the object (or r answers are in). */
		if (!f->all) {
			int enough = f->best && f->acks >= f->want;
			while (!enough && f->nout < f->want && fan_next_read(f) == 0)
				;
		}
		break;
	}
	if (!keep)
		dnet__req_free(c, r);
	if (!f->nout && !f->finished)
		fan_finish(f);
}

static struct fan *fan_new(dnet_client *c, int kind, const uint8_t *id, const struct dnet_plan *plan)
{
	struct fan *f = calloc(1, sizeof(*f));
	if (!f)
		return NULL;
	f->c = c;
	f->kind = kind;
	f->fd = -1;
	memcpy(f->id, id, DNET_ID_SIZE);
	f->plan = *plan;
	return f;
}

static void fan_start(struct fan *f)
{
	if (f->kind == FAN_WRITE || f->kind == FAN_DEL) {
		f->want = dnet__quorum(f->c, f->plan.homes);
		for (int i = 0; i < f->plan.homes; i++) {
			int err = f->plan.down[i] ? DNET_ENODEDOWN : fan_send(f, i, i, 0);
			if (err) {
				if (!f->first_err)
					f->first_err = err;
				if (!f->plan.down[i])
					continue; /* could not even be queued (memory) */
				/* Down: recorded, and a stand-in takes the copy. */
				int slot = f->nres++;
				dnet__copy_status(&f->res[slot], i, 0, DNET_ENODEDOWN, 0,
						  f->plan.node[i]->name);
				f->res_target[slot] = i;
				f->used[i] = 1;
				fan_standin(f, i);
			}
		}
	} else if (f->all) {
		for (int i = 0; i < f->plan.homes; i++)
			fan_send(f, i, i, 0);
	} else {
		int r = f->c->r > 1 ? f->c->r : 1;
		f->want = r > f->plan.homes ? f->plan.homes : r;
		for (int i = 0; i < f->want; i++)
			if (fan_next_read(f) != 0)
				break;
	}
	if (!f->nout && !f->finished)
		fan_finish(f);
}

/* Run a fan to completion (blocking) or hand it to an async parent. */
static int fan_run(struct fan *f, struct dnet_req *parent)
{
	dnet_client *c = f->c;
	f->parent = parent;
	if (parent) {
		c->user_inflight++;
		fan_start(f); /* may finish (and free f) at once */
		return 0;
	}
	fan_start(f);
	while (!f->finished)
		if (dnet__loop_once(c, -1) < 0)
			for (size_t i = 0; i < c->nall; i++)
				dnet__conn_drop(c, c->all[i], DNET_ESYS);
	return f->status;
}

/* --- entry points (client.c calls these when dnet__plan says copies) ----- */

int dnet__rep_write(dnet_client *c, const struct dnet_plan *plan, const uint8_t *id,
		    const void *data, int fd, uint64_t fd_off, uint64_t len,
		    struct dnet_object_info *info, struct dnet_req *parent)
{
	struct fan *f = fan_new(c, FAN_WRITE, id, plan);
	if (!f)
		return DNET_ENOMEM;
	f->io.size = f->io.total_size = len;
	f->io.timestamp = dnet__hlc_next(c, 0);
	f->data = data;
	f->fd = fd;
	f->fd_off = fd_off;
	f->len = len;
	if (parent)
		return fan_run(f, parent);
	int err = fan_run(f, NULL);
	if (!err && info) {
		if (f->have_info)
			*info = f->info;
		else {
			memset(info, 0, sizeof(*info));
			info->size = len;
			info->timestamp = f->io.timestamp;
		}
	}
	free(f);
	return err;
}

int dnet__rep_remove(dnet_client *c, const struct dnet_plan *plan, const uint8_t *id,
		     struct dnet_req *parent)
{
	struct fan *f = fan_new(c, FAN_DEL, id, plan);
	if (!f)
		return DNET_ENOMEM;
	f->io.timestamp = dnet__hlc_next(c, 1);
	if (parent)
		return fan_run(f, parent);
	int err = fan_run(f, NULL);
	free(f);
	return err;
}

/* Blocking read into a malloc()ed buffer, or async (parent). */
int dnet__rep_read(dnet_client *c, const struct dnet_plan *plan, const uint8_t *id,
		   uint64_t offset, uint64_t size, void **data, size_t *len,
		   struct dnet_object_info *info, struct dnet_req *parent)
{
	struct fan *f = fan_new(c, FAN_READ, id, plan);
	if (!f)
		return DNET_ENOMEM;
	f->rd_off = offset;
	f->rd_size = size;
	if (parent)
		return fan_run(f, parent);
	int err = fan_run(f, NULL);
	if (!err) {
		*data = f->best->rbuf;
		*len = f->best->rgot;
		f->best->rbuf = NULL;
		if (info) {
			memset(info, 0, sizeof(*info));
			info->size = f->best->rio.total_size;
			info->timestamp = f->best->rio.timestamp;
			memcpy(info->node, f->best->info.node, sizeof(info->node));
		}
	}
	if (f->best)
		dnet__req_free(c, f->best);
	free(f);
	return err;
}

int dnet__rep_lookup(dnet_client *c, const struct dnet_plan *plan, const uint8_t *id, int all,
		     struct dnet_object_info *info, struct dnet_req *parent)
{
	struct fan *f = fan_new(c, FAN_LOOKUP, id, plan);
	if (!f)
		return DNET_ENOMEM;
	f->all = all;
	if (parent)
		return fan_run(f, parent);
	int err = fan_run(f, NULL);
	if (!err && info) {
		*info = f->best->info;
	}
	if (f->best)
		dnet__req_free(c, f->best);
	free(f);
	return err;
}
