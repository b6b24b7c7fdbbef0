/* net.c - network loops: accept, read whole transactions into the IO pool, flush
 * per-connection output queues. One epoll loop per --net-threads; all share one
 * listening socket (EPOLLEXCLUSIVE wakes one loop per connection).
 *
 * Locking: a connection's receive state belongs to its loop thread. Its output
 * queue, flow-control counters and armed epoll events are under conn->lock, and
 * every write to the socket happens under that lock (non-blocking, so it is short).
 * Only the loop thread closes a connection; workers that want it closed arm
 * EPOLLOUT, which fires at once and lets the loop decide. Memory is freed when the
 * last reference (loop registration + one per queued transaction) is dropped. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "common/errors.h"
#include "common/log.h"
#include "common/util.h"
#include "server.h"

#define LOOP_RBUF_SIZE (256u << 10)
#define MAX_OUT_ITEMS 1024u /* queued replies per connection (each may hold an fd) */
#define READS_PER_EVENT 16  /* fairness: yield to other connections after this many */

struct dnet_loop {
	struct dnet_server *s;
	int index;
	int epfd;
	int evfd;
	pthread_t thread;
	struct dnet_conn *conns;
	int nconns;
	int stop_reading; /* set by main, seen after an evfd wakeup */
	int reading_stopped; /* the loop's answer: it will not read (or queue) any more */
	int exiting;
	int thread_started;
	uint64_t exit_deadline_ns;
	uint8_t *rbuf;
	struct dnet_pool_batch *batch; /* this round's requests, handed over after it */
};

static char listener_tag, evfd_tag;

/* ---- references ---------------------------------------------------------- */

void dnet_conn_get(struct dnet_conn *c)
{
	atomic_fetch_add(&c->refs, 1);
}

static void out_free_all(struct dnet_conn *c)
{
	struct dnet_out *o = c->out_head;
	while (o) {
		struct dnet_out *n = o->next;
		dnet_out_free(o);
		o = n;
	}
	c->out_head = c->out_tail = NULL;
	c->out_mem = 0;
	c->out_items = 0;
}

void dnet_conn_put(struct dnet_conn *c)
{
	if (atomic_fetch_sub(&c->refs, 1) != 1)
		return;
	out_free_all(c);
	if (c->cur)
		dnet_trans_free(c->cur);
	if (c->fd >= 0)
		close(c->fd);
	pthread_mutex_destroy(&c->lock);
	free(c);
}

/* ---- flow control and epoll arming (conn->lock held) ---------------------- */

static int do_over_limits(const struct dnet_conn *c, const struct dnet_config *cfg, int low)
{
	uint64_t out_high = low ? cfg->out_high / 2 : cfg->out_high;
	int max_in = low ? cfg->max_inflight / 2 : cfg->max_inflight;
	uint64_t max_in_bytes = low ? cfg->max_inflight_bytes / 2 : cfg->max_inflight_bytes;
	uint32_t max_items = low ? MAX_OUT_ITEMS / 2 : MAX_OUT_ITEMS;
	return c->out_mem > out_high || c->out_items > max_items || c->inflight > max_in ||
	       c->inflight_bytes > max_in_bytes;
}

static void do_arm(struct dnet_conn *c, uint32_t events)
{
	if (c->dead || events == c->events)
		return;
	struct epoll_event ev = {.events = events, .data.ptr = c};
	if (epoll_ctl(c->loop->epfd, EPOLL_CTL_MOD, c->fd, &ev) == 0)
		c->events = events;
}

/* Recompute which events we want: EPOLLIN unless reading is closed or the peer is
 * over its limits; EPOLLOUT while output is queued or the loop must look at a
 * connection that is ready to close. */
static void do_update_events(struct dnet_conn *c)
{
	const struct dnet_config *cfg = &c->loop->s->cfg;
	uint32_t ev = c->events & EPOLLIN;
	if (c->read_closed || __atomic_load_n(&c->loop->stop_reading, __ATOMIC_ACQUIRE)) {
		ev = 0;
	} else if (ev) {
		if (do_over_limits(c, cfg, 0))
			ev = 0;
	} else if (!do_over_limits(c, cfg, 1)) {
		ev = EPOLLIN;
	}
	if (c->out_head || ((c->read_closed || c->close_after_flush) && c->inflight == 0))
		ev |= EPOLLOUT;
	do_arm(c, ev);
}

/* ---- output ------------------------------------------------------------- */

/* Write as much queued output as the socket takes. Returns 0, or -1 if the
 * connection failed (marked dead). Called with conn->lock held. */
static int do_flush(struct dnet_conn *c)
{
	struct dnet_stats *st = &c->loop->s->stats;
	while (c->out_head && !c->dead) {
		struct iovec iov[64];
		int n = 0;
		struct dnet_out *o = c->out_head;
		/* Gather inline and heap parts of consecutive replies into one writev;
		 * a file part ends the gather since it goes out with sendfile. */
		for (; o && n < 62; o = o->next) {
			if (o->inl_off < o->inl_len)
				iov[n++] = (struct iovec){o->inl + o->inl_off, o->inl_len - o->inl_off};
			if (o->buf_off < o->buf_len)
				iov[n++] = (struct iovec){o->buf + o->buf_off,
							  (size_t)(o->buf_len - o->buf_off)};
			if (o->file_len)
				break;
		}
		if (n > 0) {
			struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
			ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
			if (w < 0) {
				if (errno == EAGAIN || errno == EWOULDBLOCK)
					return 0;
				if (errno == EINTR)
					continue;
				goto fail;
			}
			atomic_fetch_add(&st->bytes_out, (uint64_t)w);
			if (w > 0)
				c->tx_ns = dnet_now_mono_ns();
			size_t left = (size_t)w;
			/* Advance through the gathered replies, freeing finished ones. */
			while (c->out_head && left) {
				o = c->out_head;
				uint32_t il = o->inl_len - o->inl_off;
				uint32_t ti = left < il ? (uint32_t)left : il;
				o->inl_off += ti;
				left -= ti;
				c->out_mem -= ti;
				uint64_t bl = o->buf_len - o->buf_off;
				uint64_t tb = left < bl ? left : bl;
				o->buf_off += tb;
				left -= tb;
				c->out_mem -= tb;
				if (o->inl_off < o->inl_len || o->buf_off < o->buf_len || o->file_len)
					break;
				c->out_head = o->next;
				if (!c->out_head)
					c->out_tail = NULL;
				c->out_items--;
				dnet_out_free(o);
			}
			if (left == 0 && c->out_head && (c->out_head->inl_off < c->out_head->inl_len ||
							  c->out_head->buf_off < c->out_head->buf_len))
				return 0; /* partial write: the socket is full */
			continue;
		}
		/* Only a file range remains at the head. */
		o = c->out_head;
		size_t chunk = o->file_len > (1u << 30) ? (1u << 30) : (size_t)o->file_len;
		off_t off = (off_t)o->file_off;
		ssize_t w = sendfile(c->fd, o->fd, &off, chunk);
		if (w < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			if (errno == EINTR)
				continue;
			goto fail;
		}
		if (w == 0) { /* file shorter than promised: the reply cannot be completed */
			dnet_log_error("%s: stored file shrank during a read; closing", c->peer);
			goto fail;
		}
		atomic_fetch_add(&st->bytes_out, (uint64_t)w);
		c->tx_ns = dnet_now_mono_ns();
		o->file_off += (uint64_t)w;
		o->file_len -= (uint64_t)w;
		if (o->file_len == 0) {
			c->out_head = o->next;
			if (!c->out_head)
				c->out_tail = NULL;
			c->out_items--;
			dnet_out_free(o);
		}
	}
	return 0;
fail:
	c->dead = 1;
	out_free_all(c);
	return -1;
}

void dnet_conn_send(struct dnet_conn *c, struct dnet_out *o)
{
	o->next = NULL;
	pthread_mutex_lock(&c->lock);
	if (c->dead) {
		pthread_mutex_unlock(&c->lock);
		dnet_out_free(o);
		return;
	}
	if (c->out_tail) {
		c->out_tail->next = o;
	} else {
		c->out_head = o;
		c->tx_ns = dnet_now_mono_ns(); /* the send timeout counts from here */
	}
	c->out_tail = o;
	c->out_items++;
	c->out_mem += (o->inl_len - o->inl_off) + (o->buf_len - o->buf_off);
	/* Send straight away when nothing else is waiting: saves a loop wakeup per
	 * reply. Non-blocking, so a worker never waits on a slow peer. */
	if (c->out_head == o)
		do_flush(c);
	do_update_events(c);
	pthread_mutex_unlock(&c->lock);
}

void dnet_conn_trans_done(struct dnet_conn *c, uint64_t bytes)
{
	pthread_mutex_lock(&c->lock);
	c->inflight--;
	c->inflight_bytes -= bytes;
	do_update_events(c);
	pthread_mutex_unlock(&c->lock);
}

/* ---- connection lifecycle (loop thread) ---------------------------------- */

static void conn_close(struct dnet_loop *l, struct dnet_conn *c)
{
	pthread_mutex_lock(&c->lock);
	c->dead = 1;
	c->read_closed = 1;
	out_free_all(c);
	pthread_mutex_unlock(&c->lock);
	epoll_ctl(l->epfd, EPOLL_CTL_DEL, c->fd, NULL);
	shutdown(c->fd, SHUT_RDWR);
	if (c->prev)
		c->prev->next = c->next;
	else
		l->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	l->nconns--;
	atomic_fetch_sub(&l->s->stats.conns_cur, 1);
	dnet_log_debug("%s: connection closed", c->peer);
	dnet_conn_put(c);
}

static void accept_conns(struct dnet_loop *l)
{
	struct dnet_server *s = l->s;
	for (;;) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		int fd = accept4(s->listen_fd, (struct sockaddr *)&ss, &sl,
				 SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				dnet_log_warn("accept: %s", strerror(errno));
			return;
		}
		if (atomic_load(&s->stats.conns_cur) >= (uint64_t)s->cfg.max_conns) {
			atomic_fetch_add(&s->stats.conns_rejected, 1);
			close(fd);
			continue;
		}
		struct dnet_conn *c = calloc(1, sizeof(*c));
		if (!c) {
			close(fd);
			continue;
		}
		c->fd = fd;
		c->rx_ns = c->tx_ns = dnet_now_mono_ns();
		atomic_init(&c->perm, (int)dnet_auth_initial_perm());
		c->loop = l;
		atomic_init(&c->refs, 1);
		pthread_mutex_init(&c->lock, NULL);
		dnet_set_nodelay(fd);
		dnet_addr_str((struct sockaddr *)&ss, c->peer, sizeof(c->peer));
		struct sockaddr_storage me;
		socklen_t ml = sizeof(me);
		if (getsockname(fd, (struct sockaddr *)&me, &ml) == 0)
			dnet_addr_from_sockaddr(&me, &c->self_addr);
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
		if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
			dnet_log_warn("epoll add: %s", strerror(errno));
			dnet_conn_put(c);
			continue;
		}
		c->events = EPOLLIN;
		c->next = l->conns;
		if (l->conns)
			l->conns->prev = c;
		l->conns = c;
		l->nconns++;
		atomic_fetch_add(&s->stats.conns_total, 1);
		atomic_fetch_add(&s->stats.conns_cur, 1);
		dnet_log_debug("%s: connection accepted", c->peer);
	}
}

/* Reply with an error to a request we could not accept and stop reading: after a
 * malformed header the byte stream cannot be trusted any more. */
static void proto_error(struct dnet_conn *c, const struct dnet_cmd_hdr *h, int status)
{
	struct dnet_server *s = c->loop->s;
	atomic_fetch_add(&s->stats.proto_errors, 1);
	dnet_log_warn("%s: rejecting request (cmd %u, size %llu): %s; closing connection",
		      c->peer, h->cmd, (unsigned long long)h->size, dnet_strerror(status));
	struct dnet_out *o = dnet_out_new();
	pthread_mutex_lock(&c->lock);
	c->read_closed = 1;
	c->close_after_flush = 1;
	pthread_mutex_unlock(&c->lock);
	if (o) {
		struct dnet_cmd_hdr r = {.magic = DNET_MAGIC,
					 .version = DNET_PROTO_VERSION,
					 .cmd = h->cmd,
					 .flags = DNET_FLAG_REPLY,
					 .status = status,
					 .trans = h->trans};
		memcpy(r.id, h->id, DNET_ID_SIZE);
		dnet_hdr_encode(o->inl, &r);
		o->inl_len = DNET_HDR_SIZE;
		dnet_conn_send(c, o);
	} else {
		pthread_mutex_lock(&c->lock);
		do_update_events(c);
		pthread_mutex_unlock(&c->lock);
	}
}

static void submit(struct dnet_conn *c, struct dnet_trans *t)
{
	struct dnet_server *s = c->loop->s;
	atomic_fetch_add(&s->stats.bytes_in, DNET_HDR_SIZE + t->size);
	c->nsubmitted++;
	pthread_mutex_lock(&c->lock);
	c->inflight++;
	c->inflight_bytes += t->size;
	pthread_mutex_unlock(&c->lock);
	dnet_conn_get(c);
	t->conn = c;
	if (c->loop->batch)
		dnet_pool_batch_add(c->loop->batch, t);
	else
		dnet_pool_push(s->pool, t);
}

/* A complete header is in hdr; start its transaction, taking up to `avail` payload
 * bytes from p. Returns bytes consumed, or -1 after a protocol error. */
static ssize_t start_trans(struct dnet_conn *c, const uint8_t *hbytes, const uint8_t *p,
			   size_t avail)
{
	struct dnet_server *s = c->loop->s;
	struct dnet_cmd_hdr h;
	dnet_hdr_decode(hbytes, DNET_HDR_SIZE, &h);
	int err = dnet_hdr_validate(&h, s->cfg.max_payload);
	if (!err && (h.flags & DNET_FLAG_REPLY))
		err = DNET_EPROTO; /* clients send requests only */
	if (err) {
		proto_error(c, &h, err);
		return -1;
	}
	/* Size was bounded by dnet_hdr_validate, so this cannot overflow. */
	struct dnet_trans *t = malloc(sizeof(*t) + (size_t)h.size);
	if (!t) {
		proto_error(c, &h, DNET_ENOMEM);
		return -1;
	}
	memset(t, 0, sizeof(*t));
	t->hdr = h;
	t->size = h.size;
	t->payload = (uint8_t *)(t + 1);
	t->recv_ns = dnet_now_mono_ns();
	size_t take = avail < h.size ? avail : (size_t)h.size;
	if (take)
		memcpy(t->payload, p, take);
	if (take == h.size) {
		submit(c, t);
	} else {
		c->cur = t;
		c->cur_have = take;
	}
	return (ssize_t)take;
}

/* Parse whole messages out of buf. Returns 0, or -1 if the connection must stop. */
static int parse_buf(struct dnet_conn *c, const uint8_t *buf, size_t len)
{
	size_t off = 0;
	while (off < len) {
		if (c->cur) { /* can only happen for the tail of a short read */
			struct dnet_trans *t = c->cur;
			size_t take = len - off;
			if (take > t->size - c->cur_have)
				take = (size_t)(t->size - c->cur_have);
			memcpy(t->payload + c->cur_have, buf + off, take);
			c->cur_have += take;
			off += take;
			if (c->cur_have == t->size) {
				c->cur = NULL;
				submit(c, t);
			}
			continue;
		}
		if (c->hpart_len || len - off < DNET_HDR_SIZE) {
			size_t need = DNET_HDR_SIZE - c->hpart_len;
			size_t take = len - off < need ? len - off : need;
			memcpy(c->hpart + c->hpart_len, buf + off, take);
			c->hpart_len += (uint32_t)take;
			off += take;
			if (c->hpart_len < DNET_HDR_SIZE)
				return 0;
			c->hpart_len = 0;
			ssize_t used = start_trans(c, c->hpart, buf + off, len - off);
			if (used < 0)
				return -1;
			off += (size_t)used;
			continue;
		}
		ssize_t used = start_trans(c, buf + off, buf + off + DNET_HDR_SIZE,
					   len - off - DNET_HDR_SIZE);
		if (used < 0)
			return -1;
		off += DNET_HDR_SIZE + (size_t)used;
	}
	return 0;
}

/* Returns -1 if the connection should be closed now. */
static int conn_read(struct dnet_loop *l, struct dnet_conn *c)
{
	if (__atomic_load_n(&l->stop_reading, __ATOMIC_ACQUIRE))
		return 0; /* shutting down: bytes still arriving stay in the socket */
	for (int i = 0; i < READS_PER_EVENT; i++) {
		ssize_t n;
		uint64_t submitted = c->nsubmitted;
		if (c->cur && c->cur->size - c->cur_have >= LOOP_RBUF_SIZE / 4) {
			/* Large payload: read straight into the transaction, no copy. */
			struct dnet_trans *t = c->cur;
			n = read(c->fd, t->payload + c->cur_have, (size_t)(t->size - c->cur_have));
			if (n > 0) {
				c->cur_have += (uint64_t)n;
				if (c->cur_have == t->size) {
					c->cur = NULL;
					submit(c, t);
				}
			}
		} else {
			/* Every request is at least a header long, so reading no more than
			 * budget * header bytes can start at most `budget` transactions: the
			 * per-connection bound on queued work (and so on reply memory) holds
			 * even for a client that pipelines without reading replies. */
			pthread_mutex_lock(&c->lock);
			int budget = l->s->cfg.max_inflight - c->inflight;
			pthread_mutex_unlock(&c->lock);
			if (budget < 1)
				budget = 1;
			size_t want = (size_t)budget * DNET_HDR_SIZE;
			if (want > LOOP_RBUF_SIZE)
				want = LOOP_RBUF_SIZE;
			n = read(c->fd, l->rbuf, want);
			if (n > 0 && parse_buf(c, l->rbuf, (size_t)n) < 0)
				return 0; /* protocol error: reply queued, close after flush */
		}
		if (n > 0) {
			/* The request now being received: when its first byte came. */
			c->rx_ns = dnet_now_mono_ns();
			if (!c->hpart_len && !c->cur)
				c->partial_ns = 0;
			else if (!c->partial_ns || c->nsubmitted != submitted)
				c->partial_ns = c->rx_ns;
		}
		if (n == 0) {
			pthread_mutex_lock(&c->lock);
			c->read_closed = 1;
			int idle = c->inflight == 0 && !c->out_head;
			do_update_events(c);
			pthread_mutex_unlock(&c->lock);
			return idle ? -1 : 0;
		}
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			return -1;
		}
		pthread_mutex_lock(&c->lock);
		do_update_events(c);
		int paused = !(c->events & EPOLLIN);
		pthread_mutex_unlock(&c->lock);
		if (paused)
			break;
		if (n < 4096 && !c->cur)
			break; /* most likely drained the socket */
	}
	return 0;
}

static void conn_event(struct dnet_loop *l, struct dnet_conn *c, uint32_t ev)
{
	if (ev & EPOLLIN) {
		if (conn_read(l, c) < 0) {
			conn_close(l, c);
			return;
		}
	}
	if (ev & (EPOLLERR | EPOLLHUP)) {
		/* Both directions are gone: nothing more can be delivered. Workers still
		 * holding references see the connection dead and drop their replies. */
		conn_close(l, c);
		return;
	}
	pthread_mutex_lock(&c->lock);
	if (ev & EPOLLOUT)
		do_flush(c);
	int done = c->dead ||
		   ((c->read_closed || c->close_after_flush) && c->inflight == 0 && !c->out_head);
	if (!done)
		do_update_events(c);
	pthread_mutex_unlock(&c->lock);
	if (done)
		conn_close(l, c);
}

/* Once a second: close connections that are idle too long, that dribble a request
 * (slowloris), or that never read their replies. */
static void loop_sweep(struct dnet_loop *l, uint64_t now)
{
	const struct dnet_config *cfg = &l->s->cfg;
	struct dnet_stats *st = &l->s->stats;
	const uint64_t sec = 1000000000ull;
	struct dnet_conn *c = l->conns;
	while (c) {
		struct dnet_conn *next = c->next;
		const char *why = NULL;
		pthread_mutex_lock(&c->lock);
		int busy = c->inflight || c->out_head;
		int stalled = c->out_head && cfg->send_timeout_s &&
			      now - c->tx_ns > (uint64_t)cfg->send_timeout_s * sec;
		pthread_mutex_unlock(&c->lock);
		int partial = c->hpart_len || c->cur;
		if (stalled) {
			why = "it has not read its replies";
			atomic_fetch_add(&st->conns_stalled_closed, 1);
		} else if (partial && cfg->request_timeout_s && c->partial_ns) {
			uint64_t allow = (uint64_t)cfg->request_timeout_s * sec +
					 (c->cur ? c->cur->size / 65536 * sec : 0);
			if (now - c->partial_ns > allow) {
				why = "its request did not arrive in time";
				atomic_fetch_add(&st->conns_slow_closed, 1);
			}
		} else if (!partial && !busy && cfg->idle_timeout_s &&
			   now - c->rx_ns > (uint64_t)cfg->idle_timeout_s * sec) {
			why = "idle";
			atomic_fetch_add(&st->conns_idle_closed, 1);
		}
		if (why) {
			dnet_log_info("%s: closing the connection: %s", c->peer, why);
			conn_close(l, c);
		}
		c = next;
	}
}

void dnet_conn_shut(struct dnet_conn *c)
{
	pthread_mutex_lock(&c->lock);
	c->close_after_flush = 1;
	c->read_closed = 1;
	do_update_events(c);
	pthread_mutex_unlock(&c->lock);
}

static void loop_stop_reading(struct dnet_loop *l)
{
	epoll_ctl(l->epfd, EPOLL_CTL_DEL, l->s->listen_fd, NULL);
	for (struct dnet_conn *c = l->conns; c; c = c->next) {
		pthread_mutex_lock(&c->lock);
		do_update_events(c);
		pthread_mutex_unlock(&c->lock);
	}
}

static void *loop_main(void *arg)
{
	struct dnet_loop *l = arg;
	struct epoll_event evs[256];
	int reading = 1;
	uint64_t last_sweep = dnet_now_mono_ns();
	const struct dnet_config *cfg = &l->s->cfg;
	int sweeping = cfg->idle_timeout_s || cfg->request_timeout_s || cfg->send_timeout_s;

	l->batch = dnet_pool_batch_new(l->s->pool); /* NULL: hand over one at a time */
	for (;;) {
		int timeout = __atomic_load_n(&l->exiting, __ATOMIC_ACQUIRE) ? 50 : sweeping ? 1000 : -1;
		int n = epoll_wait(l->epfd, evs, 256, timeout);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			dnet_log_error("epoll_wait: %s", strerror(errno));
			break;
		}
		for (int i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;
			if (p == &listener_tag) {
				if (reading)
					accept_conns(l);
			} else if (p == &evfd_tag) {
				uint64_t v;
				ssize_t r = read(l->evfd, &v, sizeof(v));
				(void)r;
			} else {
				conn_event(l, p, evs[i].events);
			}
		}
		if (l->batch)
			dnet_pool_batch_commit(l->batch);
		if (sweeping && reading) {
			uint64_t now = dnet_now_mono_ns();
			if (now - last_sweep >= 1000000000ull) {
				last_sweep = now;
				loop_sweep(l, now);
			}
		}
		if (reading && __atomic_load_n(&l->stop_reading, __ATOMIC_ACQUIRE)) {
			reading = 0;
			loop_stop_reading(l);
			__atomic_store_n(&l->reading_stopped, 1, __ATOMIC_RELEASE);
		}
		if (__atomic_load_n(&l->exiting, __ATOMIC_ACQUIRE)) {
			int pending = 0;
			for (struct dnet_conn *c = l->conns; c; c = c->next) {
				pthread_mutex_lock(&c->lock);
				pending |= c->out_head != NULL && !c->dead;
				pthread_mutex_unlock(&c->lock);
			}
			if (!pending || dnet_now_mono_ns() > l->exit_deadline_ns)
				break;
		}
	}
	while (l->conns)
		conn_close(l, l->conns);
	dnet_pool_batch_free(l->batch);
	l->batch = NULL;
	return NULL;
}

static int listen_on(struct dnet_server *s)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	if (dnet_parse_addr(s->cfg.listen, 1025, &ss, &sl) != 0) {
		dnet_log_error("--listen %s: cannot parse or resolve the address", s->cfg.listen);
		return -1;
	}
	int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		dnet_log_error("socket: %s", strerror(errno));
		return -1;
	}
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, sl) < 0) {
		dnet_log_error("cannot listen on %s: %s", s->cfg.listen, strerror(errno));
		close(fd);
		return -1;
	}
	if (listen(fd, 4096) < 0) {
		dnet_log_error("listen %s: %s", s->cfg.listen, strerror(errno));
		close(fd);
		return -1;
	}
	struct sockaddr_storage me;
	socklen_t ml = sizeof(me);
	getsockname(fd, (struct sockaddr *)&me, &ml);
	dnet_addr_str((struct sockaddr *)&me, s->listen_str, sizeof(s->listen_str));
	s->listen_fd = fd;
	return 0;
}

int dnet_net_listen(struct dnet_server *s)
{
	return listen_on(s);
}

int dnet_net_start(struct dnet_server *s)
{
	s->nloops = s->cfg.net_threads;
	s->loops = calloc((size_t)s->nloops, sizeof(*s->loops));
	if (!s->loops)
		return -1;
	for (int i = 0; i < s->nloops; i++) {
		struct dnet_loop *l = calloc(1, sizeof(*l));
		if (!l)
			return -1;
		s->loops[i] = l;
		l->s = s;
		l->index = i;
		l->rbuf = malloc(LOOP_RBUF_SIZE);
		l->epfd = epoll_create1(EPOLL_CLOEXEC);
		l->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (!l->rbuf || l->epfd < 0 || l->evfd < 0) {
			dnet_log_error("cannot create network loop %d: %s", i, strerror(errno));
			return -1;
		}
		struct epoll_event ev = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.ptr = &listener_tag};
		if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, s->listen_fd, &ev) < 0)
			return -1;
		struct epoll_event ev2 = {.events = EPOLLIN, .data.ptr = &evfd_tag};
		if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->evfd, &ev2) < 0)
			return -1;
		if (pthread_create(&l->thread, NULL, loop_main, l) != 0)
			return -1;
		l->thread_started = 1;
	}
	dnet_log_info("listening on %s", s->listen_str);
	return 0;
}

static void loop_wake(struct dnet_loop *l)
{
	uint64_t one = 1;
	ssize_t w = write(l->evfd, &one, sizeof(one));
	(void)w;
}

void dnet_net_stop_reading(struct dnet_server *s)
{
	for (int i = 0; i < s->nloops; i++) {
		__atomic_store_n(&s->loops[i]->stop_reading, 1, __ATOMIC_RELEASE);
		loop_wake(s->loops[i]);
	}
	/* Wait until every loop has seen it: after this no loop queues work, so the
	 * IO pool can be drained and stopped. */
	for (int i = 0; i < s->nloops; i++) {
		while (!__atomic_load_n(&s->loops[i]->reading_stopped, __ATOMIC_ACQUIRE)) {
			struct timespec ts = {0, 1000000};
			nanosleep(&ts, NULL);
		}
	}
}

void dnet_net_stop(struct dnet_server *s, int timeout_ms)
{
	uint64_t deadline = dnet_now_mono_ns() + (uint64_t)timeout_ms * 1000000ull;
	for (int i = 0; i < s->nloops; i++) {
		if (!s->loops[i] || !s->loops[i]->thread_started)
			continue;
		s->loops[i]->exit_deadline_ns = deadline;
		__atomic_store_n(&s->loops[i]->exiting, 1, __ATOMIC_RELEASE);
		loop_wake(s->loops[i]);
	}
	for (int i = 0; i < s->nloops; i++) {
		struct dnet_loop *l = s->loops[i];
		if (!l)
			continue;
		if (l->thread_started)
			pthread_join(l->thread, NULL);
		if (l->epfd >= 0)
			close(l->epfd);
		if (l->evfd >= 0)
			close(l->evfd);
		free(l->rbuf);
		free(l);
	}
	free(s->loops);
	s->loops = NULL;
	close(s->listen_fd);
}
