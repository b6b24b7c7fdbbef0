/* move.c - data movement: after the ring changes, push every object this node no
 * longer owns to its owner, and delete the local copy only once the owner has it
 * (durably, per the owner's fsync policy: its acknowledgement says so).
 *
 * One mover thread per node. A pass walks the engine (iterate), collects the IDs
 * whose owner is another node that is up, and sends each with WRITE + DIRECT +
 * DNET_IO_MOVE (the owner keeps its own copy if it is as new or newer). Large
 * objects go in chunks (PREPARE/PLAIN/COMMIT). The send rate is capped by
 * --move-rate so foreground traffic keeps its throughput. Passes run when the
 * ownership layout changes and then every few seconds while anything is left
 * (a down owner, an error), so nothing stays misplaced for long. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "common/errors.h"
#include "common/id.h"
#include "common/log.h"
#include "common/util.h"
#include "peer.h"
#include "server.h"

#define MOVE_CHUNK DNET_CHUNK_SIZE
#define MOVE_TIMEOUT_MS 30000
#define MOVE_RETRY_MS 5000
#define RECENT_SLOTS 65536u

struct misplaced {
	uint8_t id[DNET_ID_SIZE];
	uint64_t timestamp;
	uint16_t nhomes;
	uint16_t homes[DNET_MAX_COPIES]; /* node indices in the pass's ring snapshot */
};

struct collect {
	const struct dnet_ring *ring;
	int self;
	int copies;
	struct misplaced *v;
	size_t n, cap;
	int oom;
};

static uint64_t id_prefix(const uint8_t *id)
{
	uint64_t v;
	memcpy(&v, id, sizeof(v));
	return v | 1; /* never 0, the empty slot */
}

static void remember_moved(struct dnet_mover *mv, const uint8_t *id)
{
	if (!mv->recent_id)
		return;
	uint64_t p = id_prefix(id);
	size_t slot = (size_t)(p % RECENT_SLOTS);
	atomic_store(&mv->recent_ns[slot], dnet_now_mono_ns());
	atomic_store(&mv->recent_id[slot], p);
}

int dnet_mover_moved_recently(struct dnet_server *s, const uint8_t *id)
{
	struct dnet_mover *mv = &s->mover;
	if (!mv->recent_id)
		return 0;
	uint64_t p = id_prefix(id);
	size_t slot = (size_t)(p % RECENT_SLOTS);
	if (atomic_load(&mv->recent_id[slot]) != p)
		return 0;
	uint64_t at = atomic_load(&mv->recent_ns[slot]);
	return dnet_ns_since(dnet_now_mono_ns(), at) < (uint64_t)s->cfg.handoff_s * 1000000000ull;
}

static int collect_cb(void *arg, const uint8_t *id, const struct dnet_obj_info *info)
{
	struct collect *c = arg;
	int homes[DNET_MAX_COPIES];
	int n = dnet_ring_placement(c->ring, id, c->copies, homes);
	if (n <= 0)
		return 0;
	for (int i = 0; i < n; i++)
		if (homes[i] == c->self)
			return 0;
	if (c->n == c->cap) {
		size_t cap = c->cap ? c->cap * 2 : 1024;
		struct misplaced *nv = realloc(c->v, cap * sizeof(*nv));
		if (!nv) {
			c->oom = 1;
			return 1; /* stop: move what we have, the next pass finds the rest */
		}
		c->v = nv;
		c->cap = cap;
	}
	memcpy(c->v[c->n].id, id, DNET_ID_SIZE);
	c->v[c->n].timestamp = info->timestamp;
	c->v[c->n].nhomes = (uint16_t)n;
	for (int i = 0; i < n; i++)
		c->v[c->n].homes[i] = (uint16_t)homes[i];
	c->n++;
	return 0;
}

/* Reads [off, off+len) of a local object into buf. */
static int read_local(struct dnet_server *s, const uint8_t *id, uint64_t off, uint64_t len,
		      uint8_t *buf, uint64_t *got, struct dnet_obj_info *info)
{
	struct dnet_read_res res = {.fd = -1};
	int err = s->bops->read(s->backend, id, off, len, 0, &res);
	if (err)
		return err;
	if (res.len > len) {
		err = DNET_EIO;
	} else if (res.fd >= 0) {
		uint64_t done = 0;
		while (done < res.len) {
			ssize_t n = pread(res.fd, buf + done, (size_t)(res.len - done),
					  (off_t)(res.file_offset + done));
			if (n <= 0) {
				err = DNET_EIO;
				break;
			}
			done += (uint64_t)n;
		}
	} else if (res.len) {
		memcpy(buf, res.buf, (size_t)res.len);
	}
	if (res.fd >= 0)
		close(res.fd);
	free(res.buf);
	*got = res.len;
	*info = res.info;
	return err;
}

static int send_chunk(struct dnet_peer *p, const uint8_t *id, const struct dnet_io_attr *io,
		      const uint8_t *data)
{
	uint8_t ib[DNET_IO_ATTR_SIZE];
	dnet_io_attr_encode(ib, io);
	struct dnet_cmd_hdr rh;
	uint8_t *reply;
	size_t rlen;
	int err = dnet_peer_call(p, DNET_CMD_WRITE, DNET_FLAG_DIRECT, id, ib, sizeof(ib), data,
				 (size_t)io->size, MOVE_TIMEOUT_MS, &rh, &reply, &rlen, 4096);
	free(reply);
	return err ? err : rh.status;
}

/* Push one object; 0 when the owner has it (sent now, or it already had one as
 * new), else an error. */
static int push_one(struct dnet_server *s, struct dnet_peer *p, const struct misplaced *m,
		    uint8_t *buf, uint64_t *sent)
{
	struct dnet_obj_info info;
	uint64_t got;
	int err = read_local(s, m->id, 0, MOVE_CHUNK, buf, &got, &info);
	if (err)
		return err;
	struct dnet_io_attr io = {.size = got, .timestamp = info.timestamp, .ioflags = DNET_IO_MOVE};
	if (info.size <= MOVE_CHUNK) {
		err = send_chunk(p, m->id, &io, buf);
		*sent += got;
		return err == DNET_EEXIST ? 0 : err;
	}
	uint64_t cookie;
	if (getrandom(&cookie, sizeof(cookie), 0) != sizeof(cookie))
		cookie = dnet_now_real_ns();
	io.ioflags = DNET_IO_MOVE | DNET_IO_PREPARE;
	io.total_size = info.size;
	io.cookie = cookie;
	for (uint64_t off = 0;;) {
		err = send_chunk(p, m->id, &io, buf);
		if (err)
			return err == DNET_EEXIST ? 0 : err;
		*sent += got;
		off += got;
		if (off >= info.size)
			return 0;
		struct dnet_obj_info again;
		err = read_local(s, m->id, off, MOVE_CHUNK, buf, &got, &again);
		if (err)
			return err;
		if (again.timestamp != info.timestamp || again.size != info.size)
			return DNET_EAGAIN; /* replaced under us: the next pass sends the new one */
		io.offset = off;
		io.size = got;
		io.ioflags = off + got >= info.size ? DNET_IO_COMMIT : DNET_IO_PLAIN;
	}
}

/* One pass; returns the number of objects still misplaced. */
static size_t move_pass(struct dnet_server *s)
{
	struct dnet_mover *mv = &s->mover;
	struct dnet_ring ring;
	int self;
	if (dnet_member_snapshot(s, &ring, &self) != 0)
		return 1;
	struct collect c = {.ring = &ring, .self = self, .copies = s->cfg.copies};
	if (ring.nnodes > 1)
		s->bops->iterate(s->backend, collect_cb, &c);
	size_t left = c.oom ? 1 : 0;
	atomic_store(&mv->pending, c.n);
	uint8_t *buf = c.n ? malloc(MOVE_CHUNK) : NULL;
	struct dnet_peer *peers = c.n ? calloc(ring.nnodes, sizeof(*peers)) : NULL;
	if (c.n && (!buf || !peers)) {
		left += c.n;
		c.n = 0;
	}
	for (size_t i = 0; peers && i < ring.nnodes; i++)
		peers[i].fd = -1;
	uint64_t start = dnet_now_mono_ns(), sent = 0, moved = 0;
	for (size_t i = 0; i < c.n; i++) {
		pthread_mutex_lock(&mv->lock);
		int stop = mv->stop;
		pthread_mutex_unlock(&mv->lock);
		if (stop) {
			left += c.n - i;
			break;
		}
		const struct misplaced *m = &c.v[i];
		/* Hand it to every home node once they are all up, then drop it. While
		 * one is down we are its stand-in and keep the copy; the homes that are
		 * up got the write from the client itself (pushing to them now would
		 * only race with the client's own requests). */
		uint64_t before = sent;
		int err = 0, waiting = 0;
		struct dnet_peer *p = NULL;
		for (int h = 0; h < m->nhomes; h++)
			if (ring.nodes[m->homes[h]].state != DNET_NODE_UP)
				waiting = 1;
		for (int h = 0; h < m->nhomes && !err && !waiting; h++) {
			const struct dnet_ring_node *home = &ring.nodes[m->homes[h]];
			p = &peers[m->homes[h]];
			if (p->fd < 0 && !p->sl) {
				struct sockaddr_storage ss;
				socklen_t sl;
				dnet_sockaddr_from_addr(&home->addr, &ss, &sl);
				dnet_peer_init(p, &ss, sl);
			}
			err = push_one(s, p, m, buf, &sent);
		}
		if (!err && waiting) {
			left++;
		} else if (!err) {
			/* Delete only the version we sent, in order with the ID's other
			 * requests: if it was rewritten meanwhile (a client with old routes),
			 * the next pass sends the new one. */
			struct dnet_io_attr dio = {.timestamp = m->timestamp, .ioflags = DNET_IO_IFVERSION};
			/* Remembered first: a request sent here as to the previous owner
			 * that finds the copy gone must always be sent back to the owner,
			 * never answered "not found" in the moment between the two. */
			remember_moved(mv, m->id);
			if (mv->pause_ms) {
				struct timespec ts = {mv->pause_ms / 1000,
						      (long)(mv->pause_ms % 1000) * 1000000L};
				nanosleep(&ts, NULL);
			}
			dnet_local_call(s, DNET_CMD_DEL, m->id, &dio, NULL, NULL);
			moved++;
			atomic_fetch_add(&mv->moved, 1);
			atomic_fetch_add(&mv->moved_bytes, sent - before);
		} else if (err == DNET_ENOENT) {
			atomic_fetch_add(&mv->skipped, 1); /* deleted under us */
		} else {
			left++;
			atomic_fetch_add(&mv->errors, 1);
			char hex[17];
			dnet_id_to_hex(hex, m->id, 8);
			dnet_log_warn("move: %s... to %s failed: %s; will retry", hex, p ? p->name : "?",
				      dnet_strerror(err));
		}
		atomic_store(&mv->pending, c.n - i - 1);
		dnet_rate_wait(s->cfg.move_rate, start, sent);
	}
	for (size_t i = 0; peers && i < ring.nnodes; i++)
		dnet_peer_close(&peers[i]);
	if (moved)
		dnet_log_info("move: %llu objects (%llu bytes) handed to their owners in %.1f s, %zu left",
			      (unsigned long long)moved, (unsigned long long)sent,
			      (double)(dnet_now_mono_ns() - start) / 1e9, left);
	free(peers);
	free(buf);
	free(c.v);
	dnet_ring_free(&ring);
	atomic_fetch_add(&mv->passes, 1);
	atomic_store(&mv->pending, left);
	return left;
}

static void *mover_main(void *arg)
{
	struct dnet_server *s = arg;
	struct dnet_mover *mv = &s->mover;
	size_t left = 1; /* a first pass at start: data may be misplaced from before */
	dnet_thread_name("ell-mover");
	for (;;) {
		pthread_mutex_lock(&mv->lock);
		if (!mv->stop && !mv->kick) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			/* Idle: a slow safety pass; something left: retry soon. */
			uint64_t wait_ms = left ? MOVE_RETRY_MS : 60000;
			uint64_t ns = (uint64_t)ts.tv_nsec + wait_ms * 1000000ull;
			ts.tv_sec += (time_t)(ns / 1000000000ull);
			ts.tv_nsec = (long)(ns % 1000000000ull);
			pthread_cond_timedwait(&mv->cond, &mv->lock, &ts);
		}
		int stop = mv->stop;
		mv->kick = 0;
		pthread_mutex_unlock(&mv->lock);
		if (stop)
			break;
		atomic_store(&mv->hinted, 0);
		left = move_pass(s);
	}
	return NULL;
}

int dnet_mover_start(struct dnet_server *s)
{
	struct dnet_mover *mv = &s->mover;
	pthread_mutex_init(&mv->lock, NULL);
	pthread_cond_init(&mv->cond, NULL);
	mv->recent_id = calloc(RECENT_SLOTS, sizeof(*mv->recent_id));
	mv->recent_ns = calloc(RECENT_SLOTS, sizeof(*mv->recent_ns));
	if (!mv->recent_id || !mv->recent_ns)
		return DNET_ENOMEM;
	const char *pause = getenv("ELLIPTICS_TEST_MOVE_PAUSE_MS");
	if (pause)
		mv->pause_ms = (unsigned)strtoul(pause, NULL, 10) % 60000u;
	if (pthread_create(&mv->thread, NULL, mover_main, s) != 0)
		return DNET_ESYS;
	mv->started = 1;
	return 0;
}

void dnet_mover_hint(struct dnet_server *s)
{
	/* At most one wake-up per pass, however many stand-in writes arrive. */
	if (!atomic_exchange(&s->mover.hinted, 1))
		dnet_mover_kick(s);
}

void dnet_mover_kick(struct dnet_server *s)
{
	struct dnet_mover *mv = &s->mover;
	if (!mv->started)
		return;
	pthread_mutex_lock(&mv->lock);
	mv->kick = 1;
	pthread_cond_signal(&mv->cond);
	pthread_mutex_unlock(&mv->lock);
}

void dnet_mover_stop(struct dnet_server *s)
{
	struct dnet_mover *mv = &s->mover;
	if (!mv->started)
		return;
	pthread_mutex_lock(&mv->lock);
	mv->stop = 1;
	pthread_cond_signal(&mv->cond);
	pthread_mutex_unlock(&mv->lock);
	pthread_join(mv->thread, NULL);
	mv->started = 0;
}

void dnet_mover_free(struct dnet_server *s)
{
	struct dnet_mover *mv = &s->mover;
	free((void *)mv->recent_id);
	free((void *)mv->recent_ns);
	mv->recent_id = mv->recent_ns = NULL;
}
