/* recover.c - anti-entropy between the copies of objects (copies > 1), repair of
 * corrupt copies, and collection of old tombstones.
 *
 * One recovery thread per node. A pass compares this node's objects with each
 * peer's, for the objects both are homes of, without shipping every key:
 *   1. both sides hash (ID, version) of those objects into DNET_SYNC_BUCKETS
 *      buckets by ID prefix (a sum of mixed hashes per bucket: order-free);
 *   2. only buckets whose digests differ are listed (ID, version pairs);
 *   3. what the peer has newer (or we lack) is pulled (READ from it, written
 *      here as a versioned write: an older copy never replaces a newer one).
 *      What we have newer the peer pulls in its own passes: pulling only, an
 *      object crosses the network once however many peers have it.
 * Tombstones are objects too, so deletes travel the same way. Passes run at
 * start, when a node comes (back) up or the layout changes, every
 * --recover-interval-s, and on a RECOVER command; the bytes sent and fetched
 * are throttled by --move-rate.
 *
 * The SYNC command (executed on an IO worker) answers a peer's DIGEST and LIST
 * requests: payload u32 op, u32 nbuckets (== DNET_SYNC_BUCKETS), u8 node_id[64]
 * of the asker, u64 layout of the asker's ring; LIST adds a bitmap of nbuckets
 * bits. Replies: DIGEST u64 layout, then nbuckets u64; LIST u32 count, u32 more
 * (1: truncated), then count x (id[64], u64 version). A peer whose ring layout
 * differs answers DNET_EAGAIN: placements would not agree; the next pass retries. */
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "common/errors.h"
#include "common/id.h"
#include "common/log.h"
#include "common/util.h"
#include "peer.h"
#include "server.h"

#define SYNC_HDR (4 + 4 + DNET_ID_SIZE + 8)
#define SYNC_ENTRY (DNET_ID_SIZE + 8)
#define SYNC_LIST_MAX 200000u /* entries per LIST reply */
#define RECOVER_TIMEOUT_MS 30000
#define REPAIR_SLOTS 1024

enum { SYNC_DIGEST = 1, SYNC_LIST = 2 };

static uint32_t bucket_of(const uint8_t *id)
{
	return ((uint32_t)id[0] << 4 | id[1] >> 4) & (DNET_SYNC_BUCKETS - 1);
}

static uint64_t entry_hash(const uint8_t *id, uint64_t version)
{
	uint64_t a;
	memcpy(&a, id, 8);
	return dnet_mix64(a ^ dnet_mix64(version + 0x9e3779b97f4a7c15ull));
}

/* Do both nodes (indices a, b in ring) hold copies of id? */
static int shared(const struct dnet_ring *r, int copies, const uint8_t *id, int a, int b)
{
	int homes[DNET_MAX_COPIES];
	int n = dnet_ring_placement(r, id, copies, homes), ha = 0, hb = 0;
	for (int i = 0; i < n; i++) {
		ha |= homes[i] == a;
		hb |= homes[i] == b;
	}
	return ha && hb;
}

/* --- what both sides compute --------------------------------------------- */

struct scan {
	const struct dnet_ring *ring;
	int copies, self, peer;
	uint64_t *digest;        /* DIGEST: nbuckets sums */
	const uint8_t *bitmap;   /* LIST: buckets wanted */
	uint8_t *out;            /* LIST: entries */
	size_t n, cap, limit;
	int more, oom;
};

static int scan_cb(void *arg, const uint8_t *id, const struct dnet_obj_info *info)
{
	struct scan *sc = arg;
	uint32_t b = bucket_of(id);
	if (sc->bitmap && !(sc->bitmap[b >> 3] & (1u << (b & 7))))
		return 0;
	if (!shared(sc->ring, sc->copies, id, sc->self, sc->peer))
		return 0;
	if (sc->digest) {
		sc->digest[b] += entry_hash(id, info->timestamp);
		return 0;
	}
	if (sc->n == sc->limit) {
		sc->more = 1;
		return 1;
	}
	if (sc->n == sc->cap) {
		size_t cap = sc->cap ? sc->cap * 2 : 1024;
		uint8_t *no = realloc(sc->out, cap * SYNC_ENTRY);
		if (!no) {
			sc->oom = 1;
			return 1;
		}
		sc->out = no;
		sc->cap = cap;
	}
	uint8_t *e = sc->out + sc->n * SYNC_ENTRY;
	memcpy(e, id, DNET_ID_SIZE);
	dnet_put_u64(e + DNET_ID_SIZE, info->timestamp);
	sc->n++;
	return 0;
}

/* The SYNC command, on an IO worker. Returns 0 and a malloc()ed reply, or DNET_E*. */
int dnet_sync_request(struct dnet_server *s, const uint8_t *p, size_t len, uint8_t **out,
		      size_t *outlen)
{
	if (len < SYNC_HDR)
		return DNET_EPROTO;
	uint32_t op = dnet_get_u32(p), nb = dnet_get_u32(p + 4);
	const uint8_t *asker = p + 8;
	uint64_t layout = dnet_get_u64(p + 8 + DNET_ID_SIZE);
	if (nb != DNET_SYNC_BUCKETS || (op != SYNC_DIGEST && op != SYNC_LIST) ||
	    (op == SYNC_DIGEST && len != SYNC_HDR) ||
	    (op == SYNC_LIST && len != SYNC_HDR + DNET_SYNC_BUCKETS / 8))
		return DNET_EPROTO;
	struct dnet_ring ring;
	int self;
	if (dnet_member_snapshot(s, &ring, &self) != 0)
		return DNET_ENOMEM;
	int peer = dnet_ring_find(&ring, asker);
	int err = 0;
	if (peer < 0 || ring.layout != layout) {
		err = DNET_EAGAIN;
		goto out;
	}
	struct scan sc = {.ring = &ring, .copies = s->cfg.copies, .self = self, .peer = peer};
	if (op == SYNC_DIGEST) {
		uint8_t *r = malloc(8 + (size_t)DNET_SYNC_BUCKETS * 8);
		sc.digest = calloc(DNET_SYNC_BUCKETS, sizeof(uint64_t));
		if (!r || !sc.digest) {
			free(r);
			free(sc.digest);
			err = DNET_ENOMEM;
			goto out;
		}
		s->bops->iterate(s->backend, scan_cb, &sc);
		dnet_put_u64(r, ring.layout);
		for (uint32_t i = 0; i < DNET_SYNC_BUCKETS; i++)
			dnet_put_u64(r + 8 + (size_t)i * 8, sc.digest[i]);
		free(sc.digest);
		*out = r;
		*outlen = 8 + (size_t)DNET_SYNC_BUCKETS * 8;
		goto out;
	}
	sc.bitmap = p + SYNC_HDR;
	sc.limit = SYNC_LIST_MAX;
	s->bops->iterate(s->backend, scan_cb, &sc);
	if (sc.oom) {
		free(sc.out);
		err = DNET_ENOMEM;
		goto out;
	}
	uint8_t *r = malloc(8 + sc.n * SYNC_ENTRY);
	if (!r) {
		free(sc.out);
		err = DNET_ENOMEM;
		goto out;
	}
	dnet_put_u32(r, (uint32_t)sc.n);
	dnet_put_u32(r + 4, (uint32_t)sc.more);
	if (sc.n)
		memcpy(r + 8, sc.out, sc.n * SYNC_ENTRY);
	free(sc.out);
	*out = r;
	*outlen = 8 + sc.n * SYNC_ENTRY;
out:
	dnet_ring_free(&ring);
	return err;
}

/* --- the pass ------------------------------------------------------------ */

struct rstate {
	struct dnet_server *s;
	uint64_t start_ns, bytes; /* for the throttle */
	uint8_t *buf;             /* one chunk */
};

static void throttle(struct rstate *st)
{
	dnet_rate_wait(st->s->cfg.move_rate, st->start_ns, st->bytes);
}

static int sync_call(struct dnet_peer *p, const uint8_t *req, size_t len, uint8_t **reply,
		     size_t *rlen, size_t max)
{
	struct dnet_cmd_hdr rh;
	int err = dnet_peer_call(p, DNET_CMD_SYNC, DNET_FLAG_DIRECT, NULL, req, len, NULL, 0,
				 RECOVER_TIMEOUT_MS, &rh, reply, rlen, max);
	if (!err && rh.status) {
		free(*reply);
		*reply = NULL;
		err = rh.status;
	}
	return err;
}

/* Fetch object id (version v) from peer p and store it here (versioned: if we got
 * something as new meanwhile, ours stays). force: replace even the same version
 * (our copy is corrupt). */
int dnet_recover_pull(struct dnet_server *s, struct dnet_peer *p, const uint8_t *id, uint64_t v,
		      int force, uint8_t *buf, uint64_t *bytes)
{
	uint64_t cookie = 0;
	if (getrandom(&cookie, sizeof(cookie), 0) != sizeof(cookie))
		cookie = dnet_now_real_ns();
	uint32_t move = force ? DNET_IO_FORCE : DNET_IO_MOVE;
	for (uint64_t off = 0;;) {
		uint8_t ib[DNET_IO_ATTR_SIZE];
		struct dnet_io_attr rq = {.offset = off, .size = DNET_CHUNK_SIZE};
		dnet_io_attr_encode(ib, &rq);
		struct dnet_cmd_hdr rh;
		uint8_t *reply = NULL;
		size_t rlen = 0;
		int err = dnet_peer_call(p, DNET_CMD_READ, DNET_FLAG_DIRECT, id, ib, sizeof(ib), NULL, 0,
					 RECOVER_TIMEOUT_MS, &rh, &reply, &rlen,
					 DNET_CHUNK_SIZE + DNET_IO_ATTR_SIZE);
		if (err)
			return err;
		struct dnet_io_attr io;
		if (rh.status == DNET_ENOENT && rlen >= DNET_OBJ_INFO_SIZE) {
			/* A tombstone: store it as one. */
			struct dnet_obj_info oi;
			err = dnet_obj_info_decode(reply, rlen, &oi);
			free(reply);
			if (err || !(oi.timestamp & DNET_VERSION_TOMB))
				return DNET_EPROTO;
			struct dnet_io_attr tio = {.timestamp = oi.timestamp, .ioflags = move};
			err = dnet_local_call(s, DNET_CMD_WRITE, id, &tio, NULL, NULL);
			return err == DNET_EEXIST ? 0 : err;
		}
		if (rh.status) {
			free(reply);
			return rh.status;
		}
		if (dnet_io_attr_decode(reply, rlen, &io) || io.size != rlen - DNET_IO_ATTR_SIZE ||
		    io.size > DNET_CHUNK_SIZE || (off && io.timestamp != v)) {
			free(reply);
			return off ? DNET_EAGAIN : DNET_EPROTO; /* replaced under us: next pass */
		}
		if (!off)
			v = io.timestamp;
		memcpy(buf, reply + DNET_IO_ATTR_SIZE, (size_t)io.size);
		free(reply);
		*bytes += io.size;
		uint64_t total = io.total_size;
		int single = off == 0 && io.size == total;
		int last = off + io.size >= total;
		struct dnet_io_attr w = {
			.offset = off,
			.size = io.size,
			.total_size = total,
			.timestamp = v,
			.cookie = cookie,
			.ioflags = move | (single ? 0 : off == 0 ? DNET_IO_PREPARE
						  : last ? DNET_IO_COMMIT : DNET_IO_PLAIN),
		};
		err = dnet_local_call(s, DNET_CMD_WRITE, id, &w, buf, NULL);
		if (err == DNET_EEXIST)
			return 0; /* we have it (or newer) already */
		if (err || last)
			return err;
		off += io.size;
	}
}

static int entry_cmp(const void *a, const void *b)
{
	return memcmp(a, b, DNET_ID_SIZE);
}

/* Sync with one peer; returns 0, or an error (the pass counts it, the next retries). */
static int sync_peer(struct rstate *st, const struct dnet_ring *ring, int self, int peer)
{
	struct dnet_server *s = st->s;
	struct dnet_recover *rc = &s->recover;

	dnet_thread_name("ell-recover");
	const struct dnet_ring_node *pn = &ring->nodes[peer];
	struct dnet_peer p;
	struct sockaddr_storage ss;
	socklen_t sl;
	dnet_sockaddr_from_addr(&pn->addr, &ss, &sl);
	dnet_peer_init(&p, &ss, sl);

	uint8_t req[SYNC_HDR + DNET_SYNC_BUCKETS / 8];
	dnet_put_u32(req, SYNC_DIGEST);
	dnet_put_u32(req + 4, DNET_SYNC_BUCKETS);
	memcpy(req + 8, ring->nodes[self].node_id, DNET_ID_SIZE);
	dnet_put_u64(req + 8 + DNET_ID_SIZE, ring->layout);
	uint8_t *reply = NULL;
	size_t rlen = 0;
	struct scan mine = {.ring = ring, .copies = s->cfg.copies, .self = self, .peer = peer};
	struct scan list = mine;
	uint8_t *bitmap = NULL;
	int err = sync_call(&p, req, SYNC_HDR, &reply, &rlen, 8 + (size_t)DNET_SYNC_BUCKETS * 8);
	if (err)
		goto out;
	if (rlen != 8 + (size_t)DNET_SYNC_BUCKETS * 8) {
		err = DNET_EPROTO;
		goto out;
	}
	mine.digest = calloc(DNET_SYNC_BUCKETS, sizeof(uint64_t));
	bitmap = calloc(1, DNET_SYNC_BUCKETS / 8);
	if (!mine.digest || !bitmap) {
		err = DNET_ENOMEM;
		goto out;
	}
	s->bops->iterate(s->backend, scan_cb, &mine);
	uint32_t ndiff = 0;
	for (uint32_t b = 0; b < DNET_SYNC_BUCKETS; b++)
		if (dnet_get_u64(reply + 8 + (size_t)b * 8) != mine.digest[b]) {
			bitmap[b >> 3] |= (uint8_t)(1u << (b & 7));
			ndiff++;
		}
	free(reply);
	reply = NULL;
	atomic_fetch_add(&rc->buckets_checked, DNET_SYNC_BUCKETS);
	atomic_fetch_add(&rc->buckets_differ, ndiff);
	if (!ndiff)
		goto out;

	/* Both lists of the differing buckets, merged by ID. */
	dnet_put_u32(req, SYNC_LIST);
	memcpy(req + SYNC_HDR, bitmap, DNET_SYNC_BUCKETS / 8);
	err = sync_call(&p, req, sizeof(req), &reply, &rlen, 8 + (size_t)SYNC_LIST_MAX * SYNC_ENTRY);
	if (err)
		goto out;
	uint32_t rn = rlen >= 8 ? dnet_get_u32(reply) : 0;
	if (rlen < 8 || rn > SYNC_LIST_MAX || rlen != 8 + (size_t)rn * SYNC_ENTRY) {
		err = DNET_EPROTO;
		goto out;
	}
	int truncated = dnet_get_u32(reply + 4) != 0;
	list.bitmap = bitmap;
	list.limit = SIZE_MAX;
	s->bops->iterate(s->backend, scan_cb, &list);
	if (list.oom) {
		err = DNET_ENOMEM;
		goto out;
	}
	const uint8_t *theirs = reply + 8;
	qsort((void *)theirs, rn, SYNC_ENTRY, entry_cmp);
	if (list.n)
		qsort(list.out, list.n, SYNC_ENTRY, entry_cmp);
	size_t i = 0, j = 0;
	while ((i < list.n || j < rn) && !atomic_load(&rc->stop_flag)) {
		const uint8_t *a = i < list.n ? list.out + i * SYNC_ENTRY : NULL;
		const uint8_t *b = j < rn ? theirs + j * SYNC_ENTRY : NULL;
		int c = !a ? 1 : !b ? -1 : memcmp(a, b, DNET_ID_SIZE);
		uint64_t va = c <= 0 ? dnet_get_u64(a + DNET_ID_SIZE) : 0;
		uint64_t vb = c >= 0 ? dnet_get_u64(b + DNET_ID_SIZE) : 0;
		const uint8_t *id = c <= 0 ? a : b;
		i += c <= 0;
		j += c >= 0;
		/* Each node pulls what it lacks (every node runs passes), so an object
		 * crosses the network once, not once per peer that has it. */
		if (vb <= va)
			continue;
		uint64_t before = st->bytes;
		int e = dnet_recover_pull(s, &p, id, vb, 0, st->buf, &st->bytes);
		if (!e)
			atomic_fetch_add(&rc->pulled, 1);
		atomic_fetch_add(&rc->bytes, st->bytes - before);
		if (e && e != DNET_ENOENT) {
			atomic_fetch_add(&rc->errors, 1);
			if (!err)
				err = e;
			if (e == DNET_ECONNRESET || e == DNET_ECONNREFUSED || e == DNET_ETIMEDOUT)
				break; /* the peer is gone: the next pass */
		}
		throttle(st);
	}
	if (truncated && !err)
		err = DNET_EAGAIN; /* more next pass */
out:
	free(reply);
	free(mine.digest);
	free(list.out);
	free(bitmap);
	dnet_peer_close(&p);
	return err;
}

/* Corrupt copies found by reads: fetch a good copy from another home. */
static void repair_pending(struct rstate *st, const struct dnet_ring *ring, int self)
{
	struct dnet_server *s = st->s;
	struct dnet_recover *rc = &s->recover;
	for (;;) {
		uint8_t id[DNET_ID_SIZE];
		pthread_mutex_lock(&rc->lock);
		if (!rc->nrepair) {
			pthread_mutex_unlock(&rc->lock);
			return;
		}
		memcpy(id, rc->repair[--rc->nrepair], DNET_ID_SIZE);
		pthread_mutex_unlock(&rc->lock);
		int homes[DNET_MAX_COPIES];
		int n = dnet_ring_placement(ring, id, s->cfg.copies, homes), done = 0;
		for (int h = 0; h < n && !done; h++) {
			if (homes[h] == self || ring->nodes[homes[h]].state != DNET_NODE_UP)
				continue;
			struct dnet_peer p;
			struct sockaddr_storage ss;
			socklen_t sl;
			dnet_sockaddr_from_addr(&ring->nodes[homes[h]].addr, &ss, &sl);
			dnet_peer_init(&p, &ss, sl);
			int err = dnet_recover_pull(s, &p, id, 0, 1, st->buf, &st->bytes);
			dnet_peer_close(&p);
			done = !err;
		}
		atomic_fetch_add(done ? &rc->repaired : &rc->errors, 1);
		char hex[17];
		dnet_id_to_hex(hex, id, 8);
		if (done)
			dnet_log_info("recover: corrupt copy of %s... replaced from another copy", hex);
		else
			dnet_log_warn("recover: corrupt copy of %s... could not be repaired yet", hex);
	}
}

/* Tombstones older than the grace period are removed for good. */
struct gc {
	uint64_t cutoff;
	uint8_t *ids;
	size_t n, cap;
};

static int gc_cb(void *arg, const uint8_t *id, const struct dnet_obj_info *info)
{
	struct gc *g = arg;
	if (!(info->timestamp & DNET_VERSION_TOMB) || info->timestamp >= g->cutoff)
		return 0;
	if (g->n == g->cap) {
		size_t cap = g->cap ? g->cap * 2 : 256;
		uint8_t *ni = realloc(g->ids, cap * SYNC_ENTRY);
		if (!ni)
			return 1;
		g->ids = ni;
		g->cap = cap;
	}
	memcpy(g->ids + g->n * SYNC_ENTRY, id, DNET_ID_SIZE);
	dnet_put_u64(g->ids + g->n * SYNC_ENTRY + DNET_ID_SIZE, info->timestamp);
	g->n++;
	return 0;
}

static void collect_tombstones(struct dnet_server *s)
{
	struct gc g = {.cutoff = dnet_now_real_ns() -
				 (uint64_t)s->cfg.tombstone_grace_s * 1000000000ull};
	s->bops->iterate(s->backend, gc_cb, &g);
	for (size_t i = 0; i < g.n; i++) {
		const uint8_t *e = g.ids + i * SYNC_ENTRY;
		struct dnet_io_attr io = {.timestamp = dnet_get_u64(e + DNET_ID_SIZE),
					  .ioflags = DNET_IO_IFVERSION};
		if (dnet_local_call(s, DNET_CMD_DEL, e, &io, NULL, NULL) == 0)
			atomic_fetch_add(&s->recover.tombstones_collected, 1);
	}
	free(g.ids);
}

static int pass(struct rstate *st)
{
	struct dnet_server *s = st->s;
	struct dnet_recover *rc = &s->recover;
	struct dnet_ring ring;
	int self;
	if (dnet_member_snapshot(s, &ring, &self) != 0)
		return 1;
	atomic_store(&rc->running, 1);
	uint64_t t0 = dnet_now_mono_ns();
	st->start_ns = t0;
	st->bytes = 0;
	int left = 0;
	repair_pending(st, &ring, self);
	for (size_t i = 0; i < ring.nnodes && !atomic_load(&rc->stop_flag); i++) {
		if ((int)i == self || ring.nodes[i].state == DNET_NODE_LEFT)
			continue;
		if (ring.nodes[i].state != DNET_NODE_UP) {
			left = 1; /* it missed things: compare once it is back */
			continue;
		}
		int err = sync_peer(st, &ring, self, (int)i);
		if (err) {
			left = 1;
			if (err != DNET_EAGAIN) {
				char a[64];
				struct sockaddr_storage ss;
				socklen_t sl;
				dnet_sockaddr_from_addr(&ring.nodes[i].addr, &ss, &sl);
				dnet_addr_str((struct sockaddr *)&ss, a, sizeof(a));
				dnet_log_debug("recover: with %s: %s", a, dnet_strerror(err));
			}
		}
	}
	collect_tombstones(s);
	dnet_ring_free(&ring);
	atomic_store(&rc->last_ms, (dnet_now_mono_ns() - t0) / 1000000ull);
	atomic_fetch_add(&rc->passes, 1);
	atomic_store(&rc->running, 0);
	return left;
}

static void *recover_main(void *arg)
{
	struct dnet_server *s = arg;
	struct dnet_recover *rc = &s->recover;
	struct rstate st = {.s = s, .buf = malloc(DNET_CHUNK_SIZE)};
	if (!st.buf)
		return NULL;
	uint64_t seen_layout = atomic_load(&s->member.layout_changes);
	uint64_t seen_ups = atomic_load(&s->member.node_ups);
	int left = 1; /* a first pass soon after start: we may have missed writes */
	uint64_t wait_ms = 2000;
	for (;;) {
		pthread_mutex_lock(&rc->lock);
		if (!rc->stop && !rc->kick) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			uint64_t ns = (uint64_t)ts.tv_nsec + wait_ms * 1000000ull;
			ts.tv_sec += (time_t)(ns / 1000000000ull);
			ts.tv_nsec = (long)(ns % 1000000000ull);
			pthread_cond_timedwait(&rc->cond, &rc->lock, &ts);
		}
		int stop = rc->stop, kick = rc->kick;
		rc->kick = 0;
		pthread_mutex_unlock(&rc->lock);
		if (stop)
			break;
		uint64_t lay = atomic_load(&s->member.layout_changes);
		uint64_t ups = atomic_load(&s->member.node_ups);
		int changed = lay != seen_layout || ups != seen_ups;
		seen_layout = lay;
		seen_ups = ups;
		uint64_t now = dnet_now_mono_ns();
		int due = now - rc->last_pass_ns >= (uint64_t)s->cfg.recover_interval_s * 1000000000ull;
		if (kick || changed || due || left || rc->nrepair) {
			rc->last_pass_ns = now;
			left = pass(&st);
		}
		/* Something left (a peer down or behind): look again soon. */
		wait_ms = left ? 5000 : 1000;
	}
	free(st.buf);
	return NULL;
}

/* Both may be called by network threads while the node stops: `started` and
 * `repair` are read under the lock that dnet_recover_stop() clears them under. */
void dnet_recover_kick(struct dnet_server *s)
{
	struct dnet_recover *rc = &s->recover;
	pthread_mutex_lock(&rc->lock);
	if (rc->started) {
		rc->kick = 1;
		pthread_cond_signal(&rc->cond);
	}
	pthread_mutex_unlock(&rc->lock);
}

void dnet_recover_corrupt(struct dnet_server *s, const uint8_t *id)
{
	struct dnet_recover *rc = &s->recover;
	pthread_mutex_lock(&rc->lock);
	if (!rc->started) { /* started: repair is allocated */
		pthread_mutex_unlock(&rc->lock);
		return;
	}
	int dup = 0;
	for (int i = 0; i < rc->nrepair; i++)
		dup |= !memcmp(rc->repair[i], id, DNET_ID_SIZE);
	if (!dup && rc->nrepair < REPAIR_SLOTS) {
		memcpy(rc->repair[rc->nrepair++], id, DNET_ID_SIZE);
		rc->kick = 1;
		pthread_cond_signal(&rc->cond);
	}
	pthread_mutex_unlock(&rc->lock);
}

int dnet_recover_start(struct dnet_server *s)
{
	struct dnet_recover *rc = &s->recover;
	pthread_mutex_init(&rc->lock, NULL);
	pthread_cond_init(&rc->cond, NULL);
	if (s->cfg.copies <= 1)
		return 0; /* nothing to compare: the mover keeps the one copy in place */
	rc->repair = calloc(REPAIR_SLOTS, sizeof(*rc->repair));
	if (!rc->repair)
		return DNET_ENOMEM;
	if (pthread_create(&rc->thread, NULL, recover_main, s) != 0)
		return DNET_ESYS;
	pthread_mutex_lock(&rc->lock);
	rc->started = 1;
	pthread_mutex_unlock(&rc->lock);
	return 0;
}

void dnet_recover_stop(struct dnet_server *s)
{
	struct dnet_recover *rc = &s->recover;
	if (!rc->started)
		return;
	pthread_mutex_lock(&rc->lock);
	rc->stop = 1;
	atomic_store(&rc->stop_flag, 1);
	pthread_cond_signal(&rc->cond);
	pthread_mutex_unlock(&rc->lock);
	pthread_join(rc->thread, NULL);
	pthread_mutex_lock(&rc->lock);
	rc->started = 0;
	free(rc->repair);
	rc->repair = NULL;
	pthread_mutex_unlock(&rc->lock);
}
