/* net.c - network loops: accept, read whole transactions into the IO pool, flush
 * per-connection output queues. One epoll loop per --net-threads; all share one
 * listening socket (EPOLLEXCLUSIVE wakes one loop per connection).
 *
 * Locking: a connection's receive state belongs to its loop thread. Its output
 * queue, flow-control counters and armed epoll events are under conn->lock, and
 * every write to the socket happens under that lock (non-blocking, so it is short).
 * Only the loop thread closes a connection; workers that want it closed arm
 * EPOLLOUT, which fires at once and lets the loop decide. Memory is freed when the
 * last reference (loop registration + one per queued transaction) is dropped.
 *
 * TLS (--tls-cert): the whole port speaks TLS. A connection starts in the handshake
 * state (driven here, non-blocking, cut off by the sweep if it stalls); a peer
 * whose first bytes are a plaintext request header gets one plaintext error reply
 * (DNET_ETLSREQUIRED) and is closed. Afterwards reads use SSL_read and writes go
 * through a small staging buffer (many small replies in one record; a write that
 * would block is retried from the same bytes), files through SSL_sendfile when the
 * kernel does TLS, else pread + SSL_write. The SSL object is shared by the loop
 * (reading) and workers (writing), so every SSL call is made under conn->lock.
 * Bytes OpenSSL already decrypted do not wake epoll: while there are any, EPOLLOUT
 * is armed too (it fires at once) and the loop reads them. */
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

#include <openssl/err.h>

#include "common/errors.h"
#include "common/log.h"
#include "common/tls.h"
#include "common/util.h"
#include "peer.h"
#include "server.h"

#define LOOP_RBUF_SIZE (256u << 10)
#define MAX_OUT_ITEMS 1024u /* queued replies per connection (each may hold an fd) */
#define READS_PER_EVENT 16  /* fairness: yield to other connections after this many */
#define TLS_STAGE (64u << 10) /* staged TLS output (four full records) */
#define TLS_HS_TIMEOUT_S 30   /* a handshake without --request-timeout-s */

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
	unsigned mem_gen; /* the last request-memory relief this loop acted on */
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
	free(c->tls_wbuf);
	c->tls_wbuf = NULL;
	c->tls_wlen = c->tls_woff = 0;
}

/* Output not yet handed to the socket: queued replies or staged TLS bytes. */
static int do_out_pending(const struct dnet_conn *c)
{
	return c->out_head || c->tls_woff < c->tls_wlen;
}

void dnet_conn_put(struct dnet_conn *c)
{
	if (atomic_fetch_sub(&c->refs, 1) != 1)
		return;
	out_free_all(c);
	if (c->cur)
		dnet_trans_free(c->cur);
	if (c->ssl)
		SSL_free(c->ssl);
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

/* ---- request memory, all connections together ----------------------------------
 * Every request's payload is charged from the moment its header is read until it
 * is answered. Over --max-request-memory, connections stop being read (one in the
 * middle of a request finishes it first, so memory can always come back); they
 * resume when it falls to half. The pause is a store of mem_pressure followed by a
 * re-check, the relief a decrement followed by a load of it: one of the two always
 * sees the other, so no connection stays paused. */

static int mem_over(struct dnet_server *s, int low)
{
	uint64_t lim = s->cfg.max_request_memory;
	return lim && atomic_load(&s->stats.req_mem) > (low ? lim / 2 : lim);
}

/* EPOLLIN is on: must c pause for memory? (conn->lock held) */
static int do_mem_pause(struct dnet_conn *c)
{
	struct dnet_server *s = c->loop->s;
	if (c->cur || !mem_over(s, 0))
		return 0;
	atomic_store(&s->mem_pressure, 1);
	if (!mem_over(s, 1))
		return 0; /* fell to half meanwhile: nobody might wake us */
	c->mem_paused = 1;
	atomic_fetch_add(&s->stats.req_mem_pauses, 1);
	return 1;
}

/* EPOLLIN is off: does c stay paused for memory? (conn->lock held) */
static int do_mem_paused(struct dnet_conn *c)
{
	if (!c->mem_paused)
		return 0;
	if (mem_over(c->loop->s, 1))
		return 1;
	c->mem_paused = 0;
	return 0;
}

static void loop_wake(struct dnet_loop *l);
static void do_update_events(struct dnet_conn *c);

void dnet_net_uncharge(struct dnet_trans *t)
{
	struct dnet_server *s = t->charged;
	t->charged = NULL;
	uint64_t left = atomic_fetch_sub(&s->stats.req_mem, t->size) - t->size;
	uint64_t lim = s->cfg.max_request_memory;
	if (left <= lim / 2 && atomic_load(&s->mem_pressure) &&
	    atomic_exchange(&s->mem_pressure, 0)) {
		atomic_fetch_add(&s->mem_relief_gen, 1);
		for (int i = 0; i < s->nloops; i++)
			loop_wake(s->loops[i]);
	}
}

/* A loop woken by a relief re-arms its connections paused for memory. */
static void loop_mem_relief(struct dnet_loop *l)
{
	unsigned gen = atomic_load(&l->s->mem_relief_gen);
	if (gen == l->mem_gen)
		return;
	l->mem_gen = gen;
	for (struct dnet_conn *c = l->conns; c; c = c->next) {
		if (!c->mem_paused)
			continue;
		pthread_mutex_lock(&c->lock);
		do_update_events(c);
		pthread_mutex_unlock(&c->lock);
	}
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
		if (do_over_limits(c, cfg, 0) || do_mem_pause(c))
			ev = 0;
	} else if (!do_mem_paused(c) && !do_over_limits(c, cfg, 1)) {
		ev = EPOLLIN;
	}
	if (do_out_pending(c) || ((c->read_closed || c->close_after_flush) && c->inflight == 0))
		ev |= EPOLLOUT;
	/* TLS: the loop must come back for a handshake or read that waits to write,
	 * and for bytes OpenSSL holds decrypted (epoll does not see them). */
	if (c->ssl && (c->tls_want_out || ((ev & EPOLLIN) && !c->tls_hs && !c->tls_reading &&
					   SSL_has_pending(c->ssl))))
		ev |= EPOLLOUT;
	do_arm(c, ev);
}

/* ---- output ------------------------------------------------------------- */

static void do_out_pop(struct dnet_conn *c, struct dnet_out *o)
{
	c->out_head = o->next;
	if (!c->out_head)
		c->out_tail = NULL;
	c->out_items--;
	dnet_out_free(o);
}

/* Sending failed: the connection is dead. Shut the socket down too, so its loop
 * gets an event and closes it now (a worker's direct send failing, the peer
 * waiting for the rest of a reply, would otherwise leave both idle). */
static void conn_fail(struct dnet_conn *c)
{
	c->dead = 1;
	out_free_all(c);
	shutdown(c->fd, SHUT_RDWR);
}

/* Verifies o's file part from `from` on (the bytes before are verified), moving
 * o->ver_end. -1: they failed verification; the reply cannot be completed, so the
 * connection must close (a copy gets a repair). Called with conn->lock held. */
static int verify_from(struct dnet_conn *c, struct dnet_out *o, uint64_t from)
{
	struct dnet_server *s = c->loop->s;
	int err = DNET_ESHUTDOWN;
	pthread_rwlock_rdlock(&s->verify_lock);
	if (!s->engine_closed) {
		err = o->ver->check(o->ver, o->fd, from, &o->ver_end);
		if (!err && o->ver_end <= from)
			err = DNET_EIO;
	}
	pthread_rwlock_unlock(&s->verify_lock);
	if (!err)
		return 0;
	if (err == DNET_ESHUTDOWN) {
		dnet_log_info("%s: a reply not yet verified is cut off: the node is stopping",
			      c->peer);
		return -1;
	}
	dnet_log_error("%s: a reply's data failed verification as it was sent: %s; closing",
		       c->peer, dnet_strerror(err));
	if (err == DNET_ECORRUPT)
		dnet_recover_corrupt(c->loop->s, o->ver->id);
	return -1;
}

void dnet_net_verify_close(struct dnet_server *s)
{
	pthread_rwlock_wrlock(&s->verify_lock);
	__atomic_store_n(&s->engine_closed, 1, __ATOMIC_RELEASE);
	pthread_rwlock_unlock(&s->verify_lock);
}

/* Bytes of o's file part that may go out now: the verified ones (all without a
 * verifier); -1 if they failed verification. */
static int64_t file_avail(struct dnet_conn *c, struct dnet_out *o)
{
	if (!o->ver)
		return (int64_t)o->file_len;
	if (o->file_off >= o->ver_end && verify_from(c, o, o->file_off) < 0)
		return -1;
	uint64_t a = o->ver_end - o->file_off;
	return (int64_t)(a < o->file_len ? a : o->file_len);
}

/* The socket is full and o's file part waits for EPOLLOUT: verify its next bytes
 * now, while the peer drains the socket, instead of after the wake-up while the
 * socket runs dry (up to DNET_VERIFY_AHEAD beyond what is sent). -1 as above. */
#define DNET_VERIFY_AHEAD (4u << 20)
static int verify_ahead(struct dnet_conn *c, struct dnet_out *o)
{
	if (!o->ver || o->ver_end >= o->file_off + o->file_len ||
	    o->ver_end - o->file_off >= DNET_VERIFY_AHEAD ||
	    __atomic_load_n(&c->loop->s->engine_closed, __ATOMIC_ACQUIRE))
		return 0; /* closed: the verified bytes still go out first */
	return verify_from(c, o, o->ver_end);
}

/* do_flush over TLS. Staged bytes go first; a big heap part goes from where it is;
 * a file part by SSL_sendfile (kernel TLS) or read into the stage. */
static int do_flush_tls(struct dnet_conn *c)
{
	struct dnet_stats *st = &c->loop->s->stats;
	while (!c->dead) {
		long w;
		if (c->tls_woff < c->tls_wlen) {
			w = dnet_tls_write_nb(c->ssl, c->tls_wbuf + c->tls_woff,
					      c->tls_wlen - c->tls_woff);
			if (w < 0)
				goto fail;
			if (w == 0)
				return 0;
			c->tls_woff += (uint32_t)w;
			if (c->tls_woff == c->tls_wlen)
				c->tls_woff = c->tls_wlen = 0;
			goto sent;
		}
		struct dnet_out *o = c->out_head;
		if (!o)
			break;
		if (o->inl_off == o->inl_len && o->buf_len - o->buf_off >= TLS_STAGE) {
			w = dnet_tls_write_nb(c->ssl, o->buf + o->buf_off,
					      (size_t)(o->buf_len - o->buf_off));
			if (w < 0)
				goto fail;
			if (w == 0)
				return 0;
			o->buf_off += (uint64_t)w;
			c->out_mem -= (uint64_t)w;
			if (o->buf_off == o->buf_len && !o->file_len)
				do_out_pop(c, o);
			goto sent;
		}
		if (c->ktls_tx && o->inl_off == o->inl_len && o->buf_off == o->buf_len &&
		    o->file_len) {
			int64_t av = file_avail(c, o);
			if (av < 0)
				goto fail;
			size_t chunk = av > (1 << 30) ? (1u << 30) : (size_t)av;
			ERR_clear_error();
			ossl_ssize_t sw = SSL_sendfile(c->ssl, o->fd, (off_t)o->file_off, chunk, 0);
			if (sw < 0) {
				int e = SSL_get_error(c->ssl, (int)sw);
				ERR_clear_error();
				if (e == SSL_ERROR_WANT_WRITE)
					return 0;
				goto fail;
			}
			if (sw == 0) {
				dnet_log_error("%s: stored file shrank during a read; closing",
					       c->peer);
				goto fail;
			}
			w = (long)sw;
			o->file_off += (uint64_t)w;
			o->file_len -= (uint64_t)w;
			if (!o->file_len)
				do_out_pop(c, o);
			goto sent;
		}
		if (!c->tls_wbuf && !(c->tls_wbuf = malloc(TLS_STAGE)))
			goto fail;
		uint32_t len = 0;
		while (o && len < TLS_STAGE) {
			uint32_t n = o->inl_len - o->inl_off;
			if (n > TLS_STAGE - len)
				n = TLS_STAGE - len;
			memcpy(c->tls_wbuf + len, o->inl + o->inl_off, n);
			o->inl_off += n;
			len += n;
			c->out_mem -= n;
			uint64_t b = o->buf_len - o->buf_off;
			if (b > TLS_STAGE - len)
				b = TLS_STAGE - len;
			if (b)
				memcpy(c->tls_wbuf + len, o->buf + o->buf_off, (size_t)b);
			o->buf_off += b;
			len += (uint32_t)b;
			c->out_mem -= b;
			if (o->inl_off < o->inl_len || o->buf_off < o->buf_len)
				break; /* the stage is full */
			if (o->file_len) {
				if (c->ktls_tx || len == TLS_STAGE)
					break;
				int64_t av = file_avail(c, o);
				if (av < 0)
					goto fail;
				size_t want = TLS_STAGE - len;
				if ((uint64_t)want > (uint64_t)av)
					want = (size_t)av;
				ssize_t r =
				    pread(o->fd, c->tls_wbuf + len, want, (off_t)o->file_off);
				if (r < 0 && errno == EINTR)
					continue;
				if (r <= 0) {
					dnet_log_error(
					    "%s: reading a stored file for a reply: %s; closing",
					    c->peer, r < 0 ? strerror(errno) : "it shrank");
					goto fail;
				}
				o->file_off += (uint64_t)r;
				o->file_len -= (uint64_t)r;
				len += (uint32_t)r;
				if (o->file_len)
					break;
			}
			do_out_pop(c, o);
			o = c->out_head;
		}
		c->tls_wlen = len;
		c->tls_woff = 0;
		continue;
	sent:
		atomic_fetch_add(&st->bytes_out, (uint64_t)w);
		c->tx_ns = dnet_now_mono_ns();
	}
	return 0;
fail:
	conn_fail(c);
	return -1;
}

/* Write as much queued output as the socket takes. Returns 0, or -1 if the
 * connection failed (marked dead). Called with conn->lock held. */
static int do_flush(struct dnet_conn *c)
{
	struct dnet_stats *st = &c->loop->s->stats;
	if (c->ssl)
		return c->tls_hs ? 0 : do_flush_tls(c);
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
		int64_t av = file_avail(c, o);
		if (av < 0)
			goto fail;
		size_t chunk = av > (1 << 30) ? (1u << 30) : (size_t)av;
		off_t off = (off_t)o->file_off;
		ssize_t w = sendfile(c->fd, o->fd, &off, chunk);
		if (w < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				if (verify_ahead(c, o) < 0)
					goto fail;
				return 0;
			}
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
	conn_fail(c);
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
		c->rx_ns = c->tx_ns = c->accept_ns = dnet_now_mono_ns();
		if (s->tls_srv) {
			c->ssl = SSL_new(s->tls_srv);
			if (!c->ssl || SSL_set_fd(c->ssl, fd) != 1) {
				if (c->ssl)
					SSL_free(c->ssl);
				free(c);
				close(fd);
				continue;
			}
			SSL_set_accept_state(c->ssl);
			c->tls_hs = 1;
		}
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
	if (!s->tls_srv && !c->nsubmitted && (h->magic & 0xff) == 0x16)
		dnet_log_warn("%s: this looks like a TLS client, but this node has no --tls-cert",
			      c->peer);
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
	t->charged = s;
	atomic_fetch_add(&s->stats.req_mem, h.size);
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

/* read() or, on a TLS connection, SSL_read (under the lock: workers write). */
static ssize_t conn_recv(struct dnet_conn *c, void *buf, size_t len)
{
	if (!c->ssl)
		return read(c->fd, buf, len);
	int want_write, status;
	pthread_mutex_lock(&c->lock);
	long n = dnet_tls_read_nb(c->ssl, buf, len, &want_write, &status);
	int e = errno;
	if (want_write) {
		c->tls_want_out = 1;
		do_update_events(c);
	}
	pthread_mutex_unlock(&c->lock);
	errno = e;
	return n;
}

static int tls_has_pending(struct dnet_conn *c)
{
	pthread_mutex_lock(&c->lock);
	int p = SSL_has_pending(c->ssl);
	pthread_mutex_unlock(&c->lock);
	return p;
}

/* A TLS port got a plaintext peer. One that sent an Elliptics request header gets
 * a plaintext error reply saying so and our end is shut; what it sends after that
 * is read and dropped until it closes (or the handshake timeout), so that closing
 * does not reset the connection before it has read the reply. */
static int tls_refuse_plain(struct dnet_conn *c)
{
	if (c->tls_plain == 2) {
		ssize_t d = read(c->fd, c->loop->rbuf, LOOP_RBUF_SIZE);
		if (d < 0)
			return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
		return d > 0 ? 0 : -1;
	}
	ssize_t n = read(c->fd, c->hpart + c->hpart_len, DNET_HDR_SIZE - c->hpart_len);
	if (n < 0)
		return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
	if (n == 0)
		return -1;
	c->hpart_len += (uint32_t)n;
	if (c->hpart_len < DNET_HDR_SIZE)
		return 0;
	struct dnet_cmd_hdr h;
	dnet_hdr_decode(c->hpart, DNET_HDR_SIZE, &h);
	c->hpart_len = 0;
	atomic_fetch_add(&c->loop->s->stats.tls_failed, 1);
	if (h.magic != DNET_MAGIC)
		return -1;
	static _Atomic uint64_t last_log; /* at most one line a second */
	uint64_t now = dnet_now_mono_ns(), prev = atomic_load(&last_log);
	if (dnet_ns_since(now, prev) > 1000000000ull &&
	    atomic_compare_exchange_strong(&last_log, &prev, now))
		dnet_log_warn("%s: a plaintext client on the TLS port: told it to use TLS; "
			      "closing (tls_failed in stat counts them all)", c->peer);
	struct dnet_cmd_hdr r = {.magic = DNET_MAGIC,
				 .version = DNET_PROTO_VERSION,
				 .cmd = h.cmd,
				 .flags = DNET_FLAG_REPLY,
				 .status = DNET_ETLSREQUIRED,
				 .trans = h.trans};
	memcpy(r.id, h.id, DNET_ID_SIZE);
	uint8_t out[DNET_HDR_SIZE];
	dnet_hdr_encode(out, &r);
	/* The first bytes on a fresh socket: they fit in its send buffer. */
	if (send(c->fd, out, sizeof(out), MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t)sizeof(out))
		return -1;
	shutdown(c->fd, SHUT_WR);
	c->tls_plain = 2;
	return 0;
}

/* Drive the TLS handshake. Returns -1 if the connection should be closed now. */
static int conn_handshake(struct dnet_loop *l, struct dnet_conn *c)
{
	if (c->tls_plain)
		return tls_refuse_plain(c);
	if (!c->tls_started) {
		/* Which protocol? A TLS record starts with 0x16 (handshake). */
		uint8_t b;
		ssize_t n = recv(c->fd, &b, 1, MSG_PEEK);
		if (n == 0)
			return -1;
		if (n < 0)
			return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
		if (b != 0x16) {
			if (b != (DNET_MAGIC & 0xff)) {
				static _Atomic uint64_t last_log; /* at most one line a second */
				uint64_t now = dnet_now_mono_ns(), prev = atomic_load(&last_log);
				if (dnet_ns_since(now, prev) > 1000000000ull &&
				    atomic_compare_exchange_strong(&last_log, &prev, now))
					dnet_log_info("%s: neither TLS nor Elliptics on the TLS port "
						      "(first byte 0x%02x); closing",
						      c->peer, b);
				atomic_fetch_add(&l->s->stats.tls_failed, 1);
				return -1;
			}
			c->tls_plain = 1;
			return tls_refuse_plain(c);
		}
		c->tls_started = 1;
	}
	pthread_mutex_lock(&c->lock);
	c->tls_want_out = 0;
	ERR_clear_error();
	int r = SSL_do_handshake(c->ssl);
	if (r == 1) {
		c->tls_hs = 0;
		X509 *pc = SSL_get0_peer_certificate(c->ssl);
		c->tls_node = pc && SSL_get_verify_result(c->ssl) == X509_V_OK;
		c->ktls_tx = dnet_tls_ktls_send(c->ssl);
		pthread_mutex_unlock(&c->lock);
		atomic_fetch_add(&l->s->stats.tls_handshakes, 1);
		c->rx_ns = dnet_now_mono_ns();
		dnet_log_debug("%s: TLS %s%s%s", c->peer, SSL_get_cipher_name(c->ssl),
			       c->tls_node ? ", peer certificate verified" : "",
			       c->ktls_tx ? ", kernel TLS" : "");
		return 0;
	}
	int e = SSL_get_error(c->ssl, r);
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
		c->tls_want_out = e == SSL_ERROR_WANT_WRITE;
		pthread_mutex_unlock(&c->lock);
		return 0;
	}
	char why[256];
	if (e == SSL_ERROR_SSL)
		dnet_tls_handshake_error(c->ssl, 0, why, sizeof(why));
	else
		snprintf(why, sizeof(why), "%s", "the peer hung up");
	ERR_clear_error();
	pthread_mutex_unlock(&c->lock);
	atomic_fetch_add(&l->s->stats.tls_failed, 1);
	/* At most one line a second: refused handshakes must not flood the log. */
	static _Atomic uint64_t last_log;
	uint64_t now = dnet_now_mono_ns(), prev = atomic_load(&last_log);
	if (dnet_ns_since(now, prev) > 1000000000ull &&
	    atomic_compare_exchange_strong(&last_log, &prev, now))
		dnet_log_warn("%s: TLS handshake failed: %s; closing (tls_failed in stat counts "
			      "them all)",
			      c->peer, why);
	if (e != SSL_ERROR_SSL)
		return -1;
	/* OpenSSL has sent the peer an alert saying why. With TLS 1.3 a client whose
	 * certificate we refuse has already sent its first request: closing now would
	 * reset the connection before it reads the alert. Shut our end and drop what
	 * it sends until it closes (or the handshake timeout). */
	shutdown(c->fd, SHUT_WR);
	c->tls_plain = 2;
	return 0;
}

/* Returns -1 if the connection should be closed now. */
static int conn_read(struct dnet_loop *l, struct dnet_conn *c)
{
	if (__atomic_load_n(&l->stop_reading, __ATOMIC_ACQUIRE))
		return 0; /* shutting down: bytes still arriving stay in the socket */
	if (!c->cur && mem_over(l->s, 0)) {
		/* Checked before reading: a new connection's first request would otherwise
		 * be charged after the limit was reached. */
		pthread_mutex_lock(&c->lock);
		do_update_events(c);
		int paused = !(c->events & EPOLLIN);
		pthread_mutex_unlock(&c->lock);
		if (paused)
			return 0;
	}
	for (int i = 0; i < READS_PER_EVENT; i++) {
		ssize_t n;
		uint64_t submitted = c->nsubmitted;
		if (c->cur && c->cur->size - c->cur_have >= LOOP_RBUF_SIZE / 4) {
			/* Large payload: read straight into the transaction, no copy. */
			struct dnet_trans *t = c->cur;
			n = conn_recv(c, t->payload + c->cur_have, (size_t)(t->size - c->cur_have));
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
			/* Over the memory limit: finish the request being received, start
			 * no new one. */
			if (c->cur && want > c->cur->size - c->cur_have && mem_over(l->s, 0))
				want = (size_t)(c->cur->size - c->cur_have);
			n = conn_recv(c, l->rbuf, want);
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
			int idle = c->inflight == 0 && !do_out_pending(c);
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
		if (!c->cur && (c->ssl ? !tls_has_pending(c) : n < 4096))
			break; /* most likely drained the socket (TLS reads ahead: all it could) */
	}
	return 0;
}

static void conn_event(struct dnet_loop *l, struct dnet_conn *c, uint32_t ev)
{
	if (c->tls_hs) {
		if (!(ev & (EPOLLIN | EPOLLOUT)) || conn_handshake(l, c) < 0) {
			conn_close(l, c);
			return;
		}
		if (c->tls_hs) { /* still going, or a plaintext peer being refused */
			pthread_mutex_lock(&c->lock);
			do_update_events(c);
			pthread_mutex_unlock(&c->lock);
			return;
		}
		ev |= EPOLLIN; /* requests may have come with the last handshake bytes */
	} else if (c->ssl && (ev & EPOLLOUT)) {
		/* EPOLLOUT may stand for "a read can go on" (see do_update_events). */
		pthread_mutex_lock(&c->lock);
		if (c->tls_want_out || ((c->events & EPOLLIN) && SSL_has_pending(c->ssl)))
			ev |= EPOLLIN;
		c->tls_want_out = 0;
		pthread_mutex_unlock(&c->lock);
	}
	if (ev & EPOLLIN) {
		if (c->ssl) {
			pthread_mutex_lock(&c->lock);
			c->tls_reading = 1;
			pthread_mutex_unlock(&c->lock);
		}
		int rc = conn_read(l, c);
		if (c->ssl) {
			pthread_mutex_lock(&c->lock);
			c->tls_reading = 0;
			pthread_mutex_unlock(&c->lock);
		}
		if (rc < 0) {
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
	int done = c->dead || ((c->read_closed || c->close_after_flush) && c->inflight == 0 &&
			       !do_out_pending(c));
	if (!done)
		do_update_events(c);
	pthread_mutex_unlock(&c->lock);
	if (done)
		conn_close(l, c);
}

/* Once a second: close connections that are idle too long, that dribble a request
 * (slowloris), or that never read their replies. `now` is read once for the whole
 * walk, and IO workers stamp tx_ns as they queue replies: a stamp newer than `now`
 * is "just now", not an unsigned wrap that made a healthy connection look stalled. */
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
		int busy = c->inflight || do_out_pending(c);
		if (c->tls_wbuf && !do_out_pending(c) && dnet_ns_since(now, c->tx_ns) > sec) {
			free(c->tls_wbuf); /* connections idle for a second keep no stage */
			c->tls_wbuf = NULL;
			c->tls_wlen = c->tls_woff = 0;
		}
		int stalled = do_out_pending(c) && cfg->send_timeout_s &&
			      dnet_ns_since(now, c->tx_ns) > (uint64_t)cfg->send_timeout_s * sec;
		pthread_mutex_unlock(&c->lock);
		int partial = c->hpart_len || c->cur;
		uint64_t hs_allow =
		    (uint64_t)(cfg->request_timeout_s ? cfg->request_timeout_s : TLS_HS_TIMEOUT_S) *
		    sec;
		if (c->tls_hs && dnet_ns_since(now, c->accept_ns) > hs_allow) {
			why = "its TLS handshake did not finish in time";
			atomic_fetch_add(&st->conns_slow_closed, 1);
			if (!c->tls_plain)
				atomic_fetch_add(&st->tls_failed, 1);
		} else if (stalled) {
			why = "it has not read its replies";
			atomic_fetch_add(&st->conns_stalled_closed, 1);
		} else if (partial && cfg->request_timeout_s && c->partial_ns) {
			uint64_t allow = (uint64_t)cfg->request_timeout_s * sec +
					 (c->cur ? c->cur->size / 65536 * sec : 0);
			if (dnet_ns_since(now, c->partial_ns) > allow) {
				why = "its request did not arrive in time";
				atomic_fetch_add(&st->conns_slow_closed, 1);
			}
		} else if (!partial && !busy && cfg->idle_timeout_s &&
			   dnet_ns_since(now, c->rx_ns) > (uint64_t)cfg->idle_timeout_s * sec) {
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

	dnet_thread_name("ell-net/%d", l->index);
	if (dnet_thread_batch() != 0) /* see dnet_thread_batch */
		dnet_log_debug("network loop: SCHED_BATCH refused; running as SCHED_OTHER");
	int reading = 1;
	uint64_t last_sweep = dnet_now_mono_ns();
	const struct dnet_config *cfg = &l->s->cfg;
	int sweeping =
	    cfg->idle_timeout_s || cfg->request_timeout_s || cfg->send_timeout_s || l->s->tls_srv;

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
				loop_mem_relief(l);
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
				pending |= do_out_pending(c) && !c->dead;
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

int dnet_net_tls_setup(struct dnet_server *s)
{
	const struct dnet_config *cfg = &s->cfg;
	if (!cfg->tls_cert[0]) {
		if (cfg->tls_key[0] || cfg->tls_ca[0] || cfg->tls_verify_clients) {
			dnet_log_error(
			    "--tls-key, --tls-ca and --tls-verify-clients need --tls-cert");
			return -1;
		}
		return 0;
	}
	if (cfg->tls_verify_clients && !cfg->tls_ca[0]) {
		dnet_log_error(
		    "--tls-verify-clients needs --tls-ca (the CA client certificates come from)");
		return -1;
	}
	char err[512];
	s->tls_srv = dnet_tls_ctx_new(DNET_TLS_SERVER, cfg->tls_cert, cfg->tls_key, cfg->tls_ca,
				      cfg->tls_verify_clients, err, sizeof(err));
	if (!s->tls_srv) {
		dnet_log_error("%s", err);
		return -1;
	}
	/* Connections to other nodes present our certificate and verify theirs: against
	 * --tls-ca, or without one against our own certificate (a ring sharing one
	 * self-signed certificate). */
	s->tls_cli =
	    dnet_tls_ctx_new(DNET_TLS_CLIENT, cfg->tls_cert, cfg->tls_key,
			     cfg->tls_ca[0] ? cfg->tls_ca : cfg->tls_cert, 0, err, sizeof(err));
	if (!s->tls_cli) {
		dnet_log_error("%s", err);
		SSL_CTX_free(s->tls_srv);
		s->tls_srv = NULL;
		return -1;
	}
	dnet_peer_set_tls(s->tls_cli);
	dnet_tls_sigpipe_ignored(); /* main() ignores SIGPIPE */
	dnet_auth_require_node_cert(cfg->tls_ca[0] != 0);
	dnet_log_info("TLS on: certificate %s%s%s", cfg->tls_cert,
		      cfg->tls_ca[0] ? "; nodes must show a certificate signed by " : "",
		      cfg->tls_ca[0] ? cfg->tls_ca : "");
	if (cfg->tls_verify_clients)
		dnet_log_info("TLS: clients must show a certificate signed by %s", cfg->tls_ca);
	return 0;
}

void dnet_net_tls_free(struct dnet_server *s)
{
	dnet_peer_set_tls(NULL);
	dnet_auth_require_node_cert(0);
	SSL_CTX_free(s->tls_srv);
	SSL_CTX_free(s->tls_cli);
	s->tls_srv = s->tls_cli = NULL;
}
