/* conn.c - the client engine: connections, request output queues (writev + sendfile),
 * the reply parser (streamed READ replies, bounded others), timeouts and epoll.
 * TLS connections (dnet_client_set_tls) stage output for SSL_write (files by pread)
 * and read with SSL_read until OpenSSL holds no more bytes (epoll cannot see those). */
#include <errno.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <stdio.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "client_int.h"
#include "common/auth.h"
#include "common/errors.h"
#include "common/tls.h"
#include "common/util.h"

#define DNET_IOV_MAX 64
#define DNET_TLS_STAGE (64u << 10)
#define DNET_REQ_CACHE_MAX 1024

/* --- requests ------------------------------------------------------------ */

struct dnet_req *dnet__req_new(dnet_client *c)
{
	struct dnet_req *r = c->req_cache;
	if (r) {
		c->req_cache = r->out_next;
		c->req_cache_n--;
	} else {
		r = malloc(sizeof(*r));
		if (!r)
			return NULL;
	}
	memset(r, 0, sizeof(*r));
	r->file_fd = -1;
	return r;
}

void dnet__req_free(dnet_client *c, struct dnet_req *r)
{
	if (!r)
		return;
	free(r->rbuf);
	r->rbuf = NULL;
	if (c->req_cache_n < DNET_REQ_CACHE_MAX) {
		r->out_next = c->req_cache;
		c->req_cache = r;
		c->req_cache_n++;
	} else {
		free(r);
	}
}

static size_t id_bucket(const dnet_client *c, const uint8_t *id)
{
	uint64_t h;
	memcpy(&h, id, sizeof(h));
	return (size_t)(h & (c->id_hash_size - 1));
}

static int id_hash_grow(dnet_client *c)
{
	size_t nsize = c->id_hash_size ? c->id_hash_size * 2 : 256;
	struct dnet_req **nh = calloc(nsize, sizeof(*nh));
	if (!nh)
		return DNET_ENOMEM;
	struct dnet_req **old = c->id_hash;
	size_t osize = c->id_hash_size;
	c->id_hash = nh;
	c->id_hash_size = nsize;
	for (size_t i = 0; i < osize; i++) {
		struct dnet_req *r = old[i];
		while (r) {
			struct dnet_req *n = r->id_next;
			size_t b = id_bucket(c, r->id);
			r->id_next = nh[b];
			nh[b] = r;
			r = n;
		}
	}
	free(old);
	return 0;
}

static void id_hash_del(dnet_client *c, struct dnet_req *r)
{
	struct dnet_req **pp = &c->id_hash[id_bucket(c, r->id)];
	while (*pp && *pp != r)
		pp = &(*pp)->id_next;
	if (*pp)
		*pp = r->id_next;
	r->id_next = NULL;
}

static int slot_alloc(dnet_client *c, struct dnet_req *r)
{
	if (!c->nfree) {
		uint32_t n = c->nslots ? c->nslots * 2 : 64;
		struct dnet_req **ns = realloc(c->slots, n * sizeof(*ns));
		if (!ns)
			return DNET_ENOMEM;
		c->slots = ns;
		uint32_t *nf = realloc(c->free_slots, n * sizeof(*nf));
		if (!nf)
			return DNET_ENOMEM;
		c->free_slots = nf;
		for (uint32_t i = n; i > c->nslots; i--) {
			c->slots[i - 1] = NULL;
			c->free_slots[c->nfree++] = i - 1;
		}
		c->nslots = n;
	}
	r->slot = c->free_slots[--c->nfree];
	c->slots[r->slot] = r;
	c->gen++;
	r->trans = ((uint64_t)c->gen << 32) | r->slot;
	return 0;
}

/* Unlink r from everything that indexes it: slot, id hash, connection. */
static void req_detach(dnet_client *c, struct dnet_req *r)
{
	struct dnet_conn *conn = r->conn;
	if (c->slots[r->slot] == r) {
		c->slots[r->slot] = NULL;
		c->free_slots[c->nfree++] = r->slot;
	}
	id_hash_del(c, r);
	if (conn) {
		if (r->prev)
			r->prev->next = r->next;
		else
			conn->reqs = r->next;
		if (r->next)
			r->next->prev = r->prev;
		r->prev = r->next = NULL;
		conn->inflight--;
	}
	c->inflight--;
}

/* "HOST:PORT" of a node's advertised listen address; a wildcard address is replaced
 * by the host we reached it at. */
void dnet__addr_wire_str(const struct dnet_addr_wire *a, const char *via, char *out, size_t len)
{
	static const uint8_t zero[16];
	char host[INET6_ADDRSTRLEN];
	if (!memcmp(a->addr, zero, a->family == 4 ? 4 : 16) && via) {
		const char *colon = strrchr(via, ':');
		int hl = colon ? (int)(colon - via) : (int)strlen(via);
		snprintf(out, len, "%.*s:%u", hl, via, a->port);
		return;
	}
	if (a->family == 4) {
		inet_ntop(AF_INET, a->addr, host, sizeof(host));
		snprintf(out, len, "%s:%u", host, a->port);
	} else {
		inet_ntop(AF_INET6, a->addr, host, sizeof(host));
		snprintf(out, len, "[%s]:%u", host, a->port);
	}
}

/* Is node `to` the node `from`? Ring nodes are one object per advertised address,
 * but the bootstrap node is a second object for the same node when the address it
 * advertises is not the one we dialled (a wildcard one): those share a name. */
static int same_node(const struct dnet_node *to, const struct dnet_node *from)
{
	return to == from || (from && to->name[0] && !strcmp(to->name, from->name));
}

/* Resend r after the next wait of the bounce schedule (DNET_BOUNCE_WAIT_NS,
 * doubling); the caller checked r->bounces < DNET_MAX_BOUNCES. */
static void bounce_wait(struct dnet_req *r)
{
	r->retry_at = dnet_now_mono_ns() + (DNET_BOUNCE_WAIT_NS << r->bounces);
	r->bounces++;
}

/* May r be resent instead of completing with its status? `broken`: the status comes
 * from its connection breaking, not from the node. Sets r->redirect_to for a
 * NOTOWNER redirect, and r->retry_at for one that bounces. */
static int req_may_retry(dnet_client *c, struct dnet_req *r, int broken)
{
	if (r->status == DNET_ENOTOWNER && (r->reroute & DNET_RR_REDIRECT)) {
		struct dnet_addr_wire aw;
		if (!r->rbuf || dnet_addr_decode(r->rbuf, r->rgot, &aw) || !aw.port)
			return 0;
		/* Hints after the address: DIRECT names the object's previous owner while
		 * objects move (our table is right; the object is not there yet). */
		uint32_t hints = r->rgot >= DNET_ADDR_WIRE_SIZE + 4
					 ? dnet_get_u32(r->rbuf + DNET_ADDR_WIRE_SIZE)
					 : 0;
		const char *via = r->conn ? r->conn->node : NULL;
		struct dnet_node *from = r->conn ? r->conn->owner_node : NULL;
		struct dnet_node *to = dnet__node_by_addr(c, &aw, via);
		if (!to)
			return 0;
		/* A says B, B says A: their rings disagree for a moment (a node joins or
		 * leaves) and would use up the redirects in milliseconds. Such a bounce
		 * waits for them to agree instead: DNET_BOUNCE_WAIT_NS, doubling, at most
		 * DNET_MAX_BOUNCES times, not counted as a redirect. Hand-offs (a previous
		 * owner named with the DIRECT hint, or one sending a DIRECT request back
		 * to the owner) go back and forth by design: they stay redirects. */
		int bounce = r->redirect_from && same_node(to, r->redirect_from) &&
			     !(hints & DNET_REDIRECT_DIRECT) && !(r->hflags & DNET_FLAG_DIRECT);
		if (bounce) {
			if (r->bounces >= DNET_MAX_BOUNCES)
				return 0;
		} else if (r->redirects >= DNET_MAX_REDIRECTS) {
			/* Sent to a previous owner and told to try another: neither the owner
			 * nor the previous owners asked have the object. */
			if ((r->hflags & DNET_FLAG_DIRECT) && (hints & DNET_REDIRECT_DIRECT))
				r->status = DNET_ENOENT;
			return 0;
		}
		if (hints & DNET_REDIRECT_DIRECT) {
			r->hflags |= DNET_FLAG_DIRECT;
		} else {
			r->hflags &= (uint16_t)~DNET_FLAG_DIRECT;
			/* Our table sent us to the wrong node: the one that said so knows
			 * better. */
			dnet__routes_refresh(c, from);
		}
		if (bounce)
			bounce_wait(r);
		else
			r->redirects++;
		r->redirect_from = from;
		r->redirect_to = to;
		return 1;
	}
	if (r->status == DNET_EJOINING && (r->reroute & DNET_RR_REDIRECT) && r->conn &&
	    r->conn->owner_node) {
		/* The node lacks the key and has not reached the ring yet (it answered
		 * before its first exchange landed): ask it again in a moment, when it
		 * knows the owner and where the data was. Waits like a bounce. */
		if (r->bounces >= DNET_MAX_BOUNCES)
			return 0;
		bounce_wait(r);
		r->redirect_to = r->conn->owner_node;
		return 1;
	}
	if (broken && r->status == DNET_ECONNRESET && (r->reroute & DNET_RR_RETRY) &&
	    !r->retries && !r->delivered) {
		int idempotent = r->cmd == DNET_CMD_READ || r->cmd == DNET_CMD_LOOKUP;
		if (!idempotent && r->out_done)
			return 0;
		/* Routed afresh: no node sent it where it goes now. */
		r->redirect_to = r->redirect_from = NULL;
		r->retry_at = 0;
		r->hflags &= (uint16_t)~DNET_FLAG_DIRECT;
		r->retries++;
		if (r->conn && r->conn->owner_node && !r->conn->owner_node->is_boot)
			dnet__routes_refresh(c, NULL);
		return 1;
	}
	return 0;
}

/* When a request on the retry list needs the loop: 1 (at once) unless it waits
 * out a bounce; then when that wait ends, or its deadline if that comes first. */
static uint64_t retry_due(const struct dnet_req *r)
{
	if (!r->retry_at)
		return 1;
	return r->deadline && r->deadline < r->retry_at ? r->deadline : r->retry_at;
}

/* Put r (detached) on the retry list, its reply state reset. */
static void req_queue_retry(dnet_client *c, struct dnet_req *r)
{
	r->status = 0;
	free(r->rbuf);
	r->rbuf = NULL;
	r->rlen = r->rgot = 0;
	r->have_info = r->have_rio = 0;
	r->flags &= ~(uint32_t)(DNET_REQ_SENT | DNET_REQ_REPLIED | DNET_REQ_QUEUED);
	r->flags |= DNET_REQ_RETRY;
	r->olen -= DNET_HDR_SIZE;
	r->out_done = 0;
	if (r->file_fd >= 0)
		r->file_off = r->file_off0;
	r->conn = NULL;
	r->retry_next = NULL;
	if (c->retry_tail)
		c->retry_tail->retry_next = r;
	else
		c->retry_head = r;
	c->retry_tail = r;
	/* The loop must come round for it: at once, or when its wait ends. */
	uint64_t due = retry_due(r);
	if (!c->retry_wake || due < c->retry_wake)
		c->retry_wake = due;
}

static void req_complete2(dnet_client *c, struct dnet_req *r, int status, int broken);

static void req_complete(dnet_client *c, struct dnet_req *r, int status)
{
	req_complete2(c, r, status, 0);
}

static void req_finish_detached(dnet_client *c, struct dnet_req *r)
{
	r->flags |= DNET_REQ_DONE;
	c->ncompleted++;
	if (r->hook) {
		r->hook(r);
		return;
	}
	if (r->flags & DNET_REQ_SYNC)
		return;
	r->done_next = NULL;
	if (c->done_tail)
		c->done_tail->done_next = r;
	else
		c->done_head = r;
	c->done_tail = r;
}

void dnet__run_retries(dnet_client *c)
{
	/* Requests still waiting out a bounce go back on the list, in order. */
	struct dnet_req *later = NULL, *later_last = NULL;
	uint64_t now = 0, wake = 0;
	while (c->retry_head) {
		struct dnet_req *r = c->retry_head;
		c->retry_head = r->retry_next;
		if (!c->retry_head)
			c->retry_tail = NULL;
		r->retry_next = NULL;
		if (r->retry_at) {
			if (!now)
				now = dnet_now_mono_ns();
			uint64_t due = retry_due(r);
			if (due > now) {
				if (later_last)
					later_last->retry_next = r;
				else
					later = r;
				later_last = r;
				if (!wake || due < wake)
					wake = due;
				continue;
			}
			if (due < r->retry_at) {
				/* Its deadline came while it waited: it times out like a request
				 * whose node does not answer. */
				r->retry_at = 0;
				r->redirect_to = NULL;
				r->flags &= ~(uint32_t)DNET_REQ_RETRY;
				r->status = DNET_ETIMEDOUT;
				req_finish_detached(c, r);
				continue;
			}
			r->retry_at = 0;
		}
		r->flags &= ~(uint32_t)DNET_REQ_RETRY;
		int err = 0;
		struct dnet_conn *conn;
		if (r->redirect_to) {
			conn = dnet__node_conn(c, r->redirect_to, r->id, &err);
			r->redirect_to = NULL;
		} else {
			conn = dnet__pick_conn(c, r, &err);
		}
		if (conn && r->stick)
			*r->stick = conn;
		if (conn)
			err = dnet__submit(c, conn, r, r->hflags);
		if (err) {
			r->status = err;
			req_finish_detached(c, r);
		}
	}
	/* The loop ran until the list was empty (requests queued meanwhile, by a
	 * connection dropped under a resend, included): these are all that is left. */
	c->retry_head = later;
	c->retry_tail = later_last;
	c->retry_wake = wake;
}

static void req_complete2(dnet_client *c, struct dnet_req *r, int status, int broken)
{
	if (r->flags & DNET_REQ_DONE)
		return;
	if (!r->status)
		r->status = status;
	else
		broken = 0;
	if (r->reroute && req_may_retry(c, r, broken)) {
		req_detach(c, r);
		req_queue_retry(c, r);
		return;
	}
	r->flags |= DNET_REQ_DONE;
	c->ncompleted++;
	req_detach(c, r);
	if (r->hook) {
		r->hook(r);
		return;
	}
	if (r->flags & DNET_REQ_SYNC)
		return;
	r->done_next = NULL;
	if (c->done_tail)
		c->done_tail->done_next = r;
	else
		c->done_head = r;
	c->done_tail = r;
}

void dnet__req_finish(dnet_client *c, struct dnet_req *r, int status)
{
	r->status = status;
	r->flags |= DNET_REQ_DONE;
	c->ncompleted++;
	r->done_next = NULL;
	if (c->done_tail)
		c->done_tail->done_next = r;
	else
		c->done_head = r;
	c->done_tail = r;
}

int dnet__run_callbacks(dnet_client *c)
{
	int n = 0;
	while (c->done_head) {
		struct dnet_req *r = c->done_head;
		c->done_head = r->done_next;
		if (!c->done_head)
			c->done_tail = NULL;
		if (r->done) {
			const void *data = NULL;
			size_t len = 0;
			/* the round's clock, fresh for what this callback submits: the
			 * callbacks before it may have taken a while */
			if (c->now_ok)
				c->now_ns = dnet_now_mono_ns();
			if (r->cmd == DNET_CMD_READ && !r->status) {
				data = r->rbuf;
				len = r->rgot;
			}
			r->done(r->done_arg, r->status, data, len, r->have_info ? &r->info : NULL);
		}
		dnet__req_free(c, r);
		c->user_inflight--;
		n++;
	}
	return n;
}

/* --- connections --------------------------------------------------------- */

static struct dnet_conn *conn_new(dnet_client *c, struct dnet_node *n)
{
	if (c->nall == c->all_cap) {
		size_t cap = c->all_cap ? c->all_cap * 2 : 8;
		struct dnet_conn **na = realloc(c->all, cap * sizeof(*na));
		if (!na)
			return NULL;
		c->all = na;
		struct dnet_conn **nf = realloc(c->flush_list, cap * sizeof(*nf));
		if (!nf)
			return NULL;
		c->flush_list = nf;
		c->all_cap = cap;
	}
	struct dnet_conn *conn = calloc(1, sizeof(*conn));
	if (!conn)
		return NULL;
	conn->fd = -1;
	conn->owner_node = n;
	c->all[c->nall++] = conn;
	return conn;
}

void dnet__conns_free(dnet_client *c)
{
	for (size_t i = 0; i < c->nall; i++)
		if (c->all[i]->fd >= 0 || c->all[i]->reqs)
			dnet__conn_drop(c, c->all[i], DNET_ESHUTDOWN);
	/* Requests waiting for a resend (at once or after a bounce) have nowhere to go
	 * now. */
	while (c->retry_head) {
		struct dnet_req *r = c->retry_head;
		c->retry_head = r->retry_next;
		r->retry_next = NULL;
		r->retry_at = 0;
		r->redirect_to = NULL;
		r->flags &= ~(uint32_t)DNET_REQ_RETRY;
		r->status = DNET_ESHUTDOWN;
		req_finish_detached(c, r);
	}
	c->retry_tail = NULL;
	c->retry_wake = 0;
	for (size_t i = 0; i < c->nall; i++) {
		free(c->all[i]->ibuf);
		free(c->all[i]->tls_wbuf);
		free(c->all[i]);
	}
	for (int i = 0; i < c->nnodes; i++) {
		free(c->nodes[i]->conns);
		c->nodes[i]->conns = NULL;
	}
	free(c->all);
	free(c->flush_list);
	c->all = NULL;
	c->flush_list = NULL;
	c->nall = c->all_cap = 0;
	c->nflush = 0;
}

static void in_reset(struct dnet_conn *conn)
{
	conn->istart = conn->iend = 0;
	conn->in_state = DNET_IN_HDR;
	conn->in_req = NULL;
	conn->in_left = 0;
	conn->in_io_got = 0;
}

/* Close the socket and fail every request on it. `culprit` (may be NULL) gets
 * DNET_ETIMEDOUT; the others get `status`. */
static void conn_drop2(dnet_client *c, struct dnet_conn *conn, int status, struct dnet_req *culprit)
{
	/* A TLS node answers a plaintext request with DNET_ETLSREQUIRED and hangs up: the
	 * other requests on the connection fail for the same reason (and are not resent). */
	if (conn->tls_required && status == DNET_ECONNRESET)
		status = DNET_ETLSREQUIRED;
	conn->tls_required = 0;
	if (conn->fd >= 0) {
		epoll_ctl(c->epfd, EPOLL_CTL_DEL, conn->fd, NULL);
		close(conn->fd);
		conn->fd = -1;
	}
	if (conn->ssl) {
		SSL_free(conn->ssl);
		conn->ssl = NULL;
	}
	conn->tls_wlen = conn->tls_woff = 0;
	conn->tls_rd_want_out = 0;
	conn->pollout = 0;
	in_reset(conn);
	struct dnet_req *r = conn->out_head;
	while (r) {
		struct dnet_req *n = r->out_next;
		r->out_next = NULL;
		r->flags &= ~(uint32_t)DNET_REQ_QUEUED;
		r = n;
	}
	conn->out_head = conn->out_tail = NULL;
	/* Requests that may be resent go to the retry list (run after the connection is
	 * reset, so a resend may even reconnect it). */
	conn->dropping = 1;
	while (conn->reqs) {
		r = conn->reqs;
		/* A status already known (error reply, sink abort) is kept. */
		req_complete2(c, r, r == culprit ? DNET_ETIMEDOUT : status, r != culprit);
	}
	conn->dropping = 0;
	if (status != DNET_ESHUTDOWN && status != DNET_ESYS)
		dnet__run_retries(c);
}

void dnet__conn_drop(dnet_client *c, struct dnet_conn *conn, int status)
{
	conn_drop2(c, conn, status, NULL);
}

static int connect_one(dnet_client *c, const char *remote, struct dnet_conn *conn, int tmo_ms)
{
	struct sockaddr_storage ss;
	socklen_t slen;
	int err = dnet_parse_addr(remote, DNET_DEFAULT_PORT, &ss, &slen);
	if (err)
		return err;
	int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return dnet_from_errno(errno);
	SSL *ssl = NULL;
	if (connect(fd, (struct sockaddr *)&ss, slen) < 0) {
		if (errno != EINPROGRESS) {
			err = dnet_from_errno(errno);
			goto out_close;
		}
		struct pollfd pfd = {.fd = fd, .events = POLLOUT};
		int pr;
		do {
			pr = poll(&pfd, 1, tmo_ms);
		} while (pr < 0 && errno == EINTR);
		if (pr == 0) {
			err = DNET_ETIMEDOUT;
			goto out_close;
		}
		int soerr = 0;
		socklen_t sl = sizeof(soerr);
		if (pr < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0) {
			err = dnet_from_errno(errno);
			goto out_close;
		}
		if (soerr) {
			err = dnet_from_errno(soerr);
			goto out_close;
		}
	}
	dnet_set_nodelay(fd);
	uint64_t deadline = dnet_now_mono_ns() + (uint64_t)tmo_ms * 1000000ull;
	if (c->tls && (err = dnet_tls_connect(c->tls, fd, deadline, &ssl)))
		goto out_close;
	if (c->key_name[0]) {
		/* A key: prove it before anything else goes on this connection. */
		uint32_t perm;
		err = dnet_auth_handshake(fd, ssl, c->key_name, c->key_secret, deadline, &perm);
		if (err)
			goto out_close;
	}
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = conn};
	if (epoll_ctl(c->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		err = dnet_from_errno(errno);
		goto out_close;
	}
	if (!conn->ibuf) {
		conn->ibuf = malloc(DNET_CLIENT_IBUF);
		if (!conn->ibuf) {
			epoll_ctl(c->epfd, EPOLL_CTL_DEL, fd, NULL);
			err = DNET_ENOMEM;
			goto out_close;
		}
	}
	conn->fd = fd;
	conn->ssl = ssl;
	dnet_addr_str((struct sockaddr *)&ss, conn->node, sizeof(conn->node));
	struct dnet_node *n = conn->owner_node;
	if (n && n->is_boot) {
		/* The bootstrap node is whichever remote answered: remember its address, so
		 * the route table's entry for it is recognised. */
		struct dnet_addr_wire aw;
		memset(&aw, 0, sizeof(aw));
		if (ss.ss_family == AF_INET) {
			const struct sockaddr_in *in = (const struct sockaddr_in *)&ss;
			aw.family = 4;
			aw.port = ntohs(in->sin_port);
			memcpy(aw.addr, &in->sin_addr, 4);
		} else {
			const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&ss;
			aw.family = 6;
			aw.port = ntohs(in6->sin6_port);
			memcpy(aw.addr, &in6->sin6_addr, 16);
		}
		n->addr = aw;
		n->have_addr = 1;
		memcpy(n->name, conn->node, sizeof(n->name));
	}
	in_reset(conn);
	conn->last_active = dnet_now_mono_ns();
	return 0;

out_close:
	if (ssl)
		SSL_free(ssl);
	close(fd);
	return err;
}

static int conn_connect(dnet_client *c, struct dnet_conn *conn);

int dnet__conn_connect(dnet_client *c, struct dnet_conn *conn)
{
	int err = conn_connect(c, conn);
	/* a connect blocks (up to the timeout per address): a deadline set after it
	 * from the round's clock would be short by that long */
	if (c->now_ok)
		c->now_ns = dnet_now_mono_ns();
	return err;
}

static int conn_connect(dnet_client *c, struct dnet_conn *conn)
{
	struct dnet_node *n = conn->owner_node;
	if (!n->is_boot) {
		uint64_t now = dnet_now_mono_ns();
		if (n->fail_until > now)
			return n->fail_err;
		int tmo = c->timeout_ms < DNET_NODE_CONNECT_MS ? c->timeout_ms : DNET_NODE_CONNECT_MS;
		int err = connect_one(c, n->name, conn, tmo);
		if (err) {
			n->fail_until = dnet_now_mono_ns() + DNET_NODE_BACKOFF_NS;
			n->fail_err = err;
		}
		return err;
	}
	if (!c->nremotes)
		return DNET_ENOTCONN;
	int err = DNET_ENOTCONN;
	for (int k = 0; k < c->nremotes; k++) {
		int i = (c->cur_remote + k) % c->nremotes;
		err = connect_one(c, c->remotes[i], conn, c->timeout_ms);
		if (!err) {
			c->cur_remote = i;
			return 0;
		}
	}
	return err;
}

/* An idle connection may have been closed by the peer (restart): notice before
 * handing it a non-idempotent request. */
static int conn_stale(struct dnet_conn *conn)
{
	char b;
	ssize_t n = recv(conn->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
	if (n == 0)
		return 1;
	if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
		return 1;
	return 0;
}

struct dnet_conn *dnet__node_conn(dnet_client *c, struct dnet_node *n, const uint8_t *id, int *err)
{
	struct dnet_conn *conn = NULL;
	int nc = c->nconns < 1 ? 1 : c->nconns;
	if (!n->conns && !(n->conns = calloc((size_t)nc, sizeof(*n->conns)))) {
		*err = DNET_ENOMEM;
		return NULL;
	}
	if (nc == 1) {
		conn = n->conns[0];
	} else {
		/* Requests for one id stay on one connection: the server runs them in order. */
		if (c->id_hash_size) {
			for (struct dnet_req *r = c->id_hash[id_bucket(c, id)]; r; r = r->id_next)
				if (r->conn && r->conn->owner_node == n &&
				    !memcmp(r->id, id, DNET_ID_SIZE)) {
					conn = r->conn;
					break;
				}
		}
		if (!conn) {
			/* Least loaded (a connection not made yet counts as idle), ties broken
			 * round-robin. */
			int best = -1;
			size_t bl = SIZE_MAX;
			for (int k = 0; k < nc; k++) {
				int i = (n->rr + k) % nc;
				size_t l = n->conns[i] ? n->conns[i]->inflight : 0;
				if (l < bl) {
					bl = l;
					best = i;
					if (!l)
						break;
				}
			}
			n->rr = (best + 1) % nc;
			conn = n->conns[best];
			if (!conn)
				n->rr = best; /* made below */
		}
	}
	if (!conn) {
		int i = nc == 1 ? 0 : n->rr;
		conn = n->conns[i] = conn_new(c, n);
		if (nc > 1)
			n->rr = (i + 1) % nc;
		if (!conn) {
			*err = DNET_ENOMEM;
			return NULL;
		}
	}
	uint64_t now;
	if (conn->fd >= 0 && !conn->inflight && (now = dnet__now(c)) > conn->last_active &&
	    now - conn->last_active > 1000000000ull && conn_stale(conn))
		dnet__conn_drop(c, conn, DNET_ECONNRESET);
	if (conn->dropping) {
		*err = DNET_ECONNRESET;
		return NULL;
	}
	if (conn->fd < 0) {
		*err = dnet__conn_connect(c, conn);
		if (*err)
			return NULL;
	}
	*err = 0;
	return conn;
}

static void deadline_note(dnet_client *c, uint64_t d)
{
	if (!c->next_deadline || d < c->next_deadline)
		c->next_deadline = d;
}

static uint64_t timeout_ns(const dnet_client *c)
{
	return (uint64_t)c->timeout_ms * 1000000ull;
}

int dnet__submit(dnet_client *c, struct dnet_conn *conn, struct dnet_req *r, uint16_t flags)
{
	struct dnet_cmd_hdr h;
	memset(&h, 0, sizeof(h));
	if (c->inflight + 1 > c->id_hash_size && id_hash_grow(c))
		return DNET_ENOMEM;
	if (slot_alloc(c, r))
		return DNET_ENOMEM;
	r->conn = conn;
	flags |= r->xflags;
	r->hflags = flags;
	if (!r->out_done && !(r->flags & DNET_REQ_SENT))
		r->file_off0 = r->file_off;
	h.magic = DNET_MAGIC;
	h.version = DNET_PROTO_VERSION;
	h.cmd = r->cmd;
	h.flags = flags;
	h.trans = r->trans;
	h.size = r->olen + r->data_len;
	memcpy(h.id, r->id, DNET_ID_SIZE);
	dnet_hdr_encode(r->obuf, &h);
	r->olen += DNET_HDR_SIZE;
	r->out_done = 0;

	size_t b = id_bucket(c, r->id);
	r->id_next = c->id_hash[b];
	c->id_hash[b] = r;
	r->prev = NULL;
	r->next = conn->reqs;
	if (conn->reqs)
		conn->reqs->prev = r;
	conn->reqs = r;
	conn->inflight++;
	c->inflight++;

	r->out_next = NULL;
	r->flags |= DNET_REQ_QUEUED;
	if (conn->out_tail)
		conn->out_tail->out_next = r;
	else
		conn->out_head = r;
	conn->out_tail = r;
	if (!conn->flushing) {
		conn->flushing = 1;
		c->flush_list[c->nflush++] = conn;
	}
	r->deadline = dnet__now(c) + timeout_ns(c);
	deadline_note(c, r->deadline);
	return 0;
}

/* --- output -------------------------------------------------------------- */

static void set_pollout(dnet_client *c, struct dnet_conn *conn, int on)
{
	if (conn->pollout == on || conn->fd < 0)
		return;
	struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0u), .data.ptr = conn};
	epoll_ctl(c->epfd, EPOLL_CTL_MOD, conn->fd, &ev);
	conn->pollout = on;
}

static void req_sent(dnet_client *c, struct dnet_conn *conn, struct dnet_req *r)
{
	conn->out_head = r->out_next;
	if (!conn->out_head)
		conn->out_tail = NULL;
	else /* its clock starts when it can move */
		conn->out_head->deadline = dnet__now(c) + timeout_ns(c);
	r->out_next = NULL;
	r->flags &= ~(uint32_t)DNET_REQ_QUEUED;
	r->flags |= DNET_REQ_SENT;
	if (r->flags & DNET_REQ_REPLIED)
		req_complete(c, r, r->status);
}

/* sendfile() to a socket raises SIGPIPE on a closed peer and has no MSG_NOSIGNAL:
 * block the signal around it and swallow one we caused. */
static ssize_t sendfile_nosig(int out, int in, off_t *off, size_t len)
{
	sigset_t pipe_set, old, pending;
	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	sigpending(&pending);
	int was_pending = sigismember(&pending, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
	ssize_t n = sendfile(out, in, off, len);
	int e = errno;
	if (n < 0 && e == EPIPE && !was_pending) {
		struct timespec zero = {0, 0};
		while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
			;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	errno = e;
	return n;
}

/* conn_flush over TLS: requests (header, payload from memory or read from their
 * file) are copied into the stage, which SSL_write sends; a write that would block
 * is retried from the same bytes. A request counts as sent once it is staged. */
static int conn_flush_tls(dnet_client *c, struct dnet_conn *conn)
{
	for (;;) {
		uint64_t now = dnet_now_mono_ns();
		if (conn->tls_woff < conn->tls_wlen) {
			long w = dnet_tls_write_nb(conn->ssl, conn->tls_wbuf + conn->tls_woff,
						   conn->tls_wlen - conn->tls_woff);
			if (w < 0)
				return (int)w;
			if (w == 0) {
				set_pollout(c, conn, 1);
				return 0;
			}
			conn->tls_woff += (size_t)w;
			conn->last_active = now;
			if (conn->tls_woff == conn->tls_wlen)
				conn->tls_woff = conn->tls_wlen = 0;
			continue;
		}
		struct dnet_req *r = conn->out_head;
		if (!r)
			break;
		if (!conn->tls_wbuf && !(conn->tls_wbuf = malloc(DNET_TLS_STAGE)))
			return DNET_ENOMEM;
		size_t len = 0;
		while (r && len < DNET_TLS_STAGE) {
			uint64_t total = r->olen + r->data_len, d = r->out_done;
			size_t room = DNET_TLS_STAGE - len, n;
			if (d < r->olen) {
				n = r->olen - (size_t)d < room ? r->olen - (size_t)d : room;
				memcpy(conn->tls_wbuf + len, r->obuf + d, n);
			} else if (r->file_fd >= 0) {
				n = total - d < room ? (size_t)(total - d) : room;
				ssize_t got =
				    pread(r->file_fd, conn->tls_wbuf + len, n, (off_t)r->file_off);
				if (got < 0 && errno == EINTR)
					continue;
				if (got < 0)
					return dnet_from_errno(errno);
				if (got == 0) /* the file shrank under us */
					return DNET_EIO;
				n = (size_t)got;
				r->file_off += n;
			} else {
				n = total - d < room ? (size_t)(total - d) : room;
				memcpy(conn->tls_wbuf + len, r->data + (d - r->olen), n);
			}
			len += n;
			r->out_done += n;
			if (r->data_len > 4096)
				r->deadline = now + timeout_ns(c);
			if (r->out_done < total) {
				if (len == DNET_TLS_STAGE)
					break; /* the stage is full */
				continue; /* header done: now its payload, in the same record */
			}
			req_sent(c, conn, r);
			r = conn->out_head;
		}
		conn->tls_wlen = len;
		conn->tls_woff = 0;
	}
	conn->last_active = dnet_now_mono_ns();
	set_pollout(c, conn, 0);
	return 0;
}

/* Returns 0 (all sent or would block) or an error after which the conn is dropped. */
static int conn_flush(dnet_client *c, struct dnet_conn *conn)
{
	if (conn->ssl)
		return conn_flush_tls(c, conn);
	while (conn->out_head) {
		struct iovec iov[DNET_IOV_MAX];
		int n = 0;
		struct dnet_req *r = conn->out_head;
		/* A file-backed head whose header is out: its bytes go by sendfile. */
		if (r->file_fd >= 0 && r->out_done >= r->olen) {
			uint64_t left = r->olen + r->data_len - r->out_done;
			off_t off = (off_t)r->file_off;
			size_t want = left > (1u << 30) ? (1u << 30) : (size_t)left;
			ssize_t s = sendfile_nosig(conn->fd, r->file_fd, &off, want);
			if (s < 0) {
				if (errno == EINTR)
					continue;
				if (errno == EAGAIN || errno == EWOULDBLOCK) {
					set_pollout(c, conn, 1);
					return 0;
				}
				return errno == EPIPE || errno == ECONNRESET ? DNET_ECONNRESET
									     : dnet_from_errno(errno);
			}
			if (s == 0) /* the file shrank under us */
				return DNET_EIO;
			r->file_off += (uint64_t)s;
			r->out_done += (uint64_t)s;
			conn->last_active = dnet_now_mono_ns();
			r->deadline = conn->last_active + timeout_ns(c);
			if (r->out_done == r->olen + r->data_len)
				req_sent(c, conn, r);
			continue;
		}
		for (; r && n < DNET_IOV_MAX - 1; r = r->out_next) {
			uint64_t d = r->out_done;
			if (d < r->olen) {
				iov[n].iov_base = r->obuf + d;
				iov[n].iov_len = r->olen - d;
				n++;
				d = r->olen;
			}
			if (r->file_fd >= 0)
				break;
			if (r->data_len && d < r->olen + r->data_len) {
				iov[n].iov_base = (void *)(uintptr_t)(r->data + (d - r->olen));
				iov[n].iov_len = (size_t)(r->olen + r->data_len - d);
				n++;
			}
		}
		if (!n)
			break;
		struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
		ssize_t s = sendmsg(conn->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (s < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				set_pollout(c, conn, 1);
				return 0;
			}
			return errno == EPIPE || errno == ECONNRESET ? DNET_ECONNRESET
								     : dnet_from_errno(errno);
		}
		uint64_t left = (uint64_t)s;
		uint64_t now = dnet__now(c);
		conn->last_active = now;
		while (left && conn->out_head) {
			r = conn->out_head;
			uint64_t total = r->olen + r->data_len;
			uint64_t need = (r->file_fd >= 0 ? r->olen : total) - r->out_done;
			uint64_t take = left < need ? left : need;
			r->out_done += take;
			left -= take;
			if (r->data_len > 4096)
				r->deadline = now + timeout_ns(c);
			if (r->out_done == total)
				req_sent(c, conn, r);
			else
				break;
		}
	}
	conn->last_active = dnet__now(c);
	set_pollout(c, conn, 0);
	return 0;
}

void dnet__flush_all(dnet_client *c)
{
	/* A stack: a connection is on it at most once (conn->flushing), and one that a
	 * resend marks again while we work is simply pushed again. */
	while (c->nflush) {
		struct dnet_conn *conn = c->flush_list[--c->nflush];
		conn->flushing = 0;
		if (conn->fd < 0 || conn->pollout)
			continue;
		int err = conn_flush(c, conn);
		if (err)
			dnet__conn_drop(c, conn, err);
	}
}

/* --- input --------------------------------------------------------------- */

static int reply_header(dnet_client *c, struct dnet_conn *conn, const struct dnet_cmd_hdr *h)
{
	if (h->magic != DNET_MAGIC || h->version != DNET_PROTO_VERSION || h->reserved ||
	    (h->flags & ~DNET_FLAGS_KNOWN) || !(h->flags & DNET_FLAG_REPLY))
		return DNET_EPROTO;
	uint32_t slot = (uint32_t)h->trans;
	struct dnet_req *r = slot < c->nslots ? c->slots[slot] : NULL;
	if (!r || r->trans != h->trans || r->conn != conn || r->cmd != h->cmd ||
	    (r->flags & (DNET_REQ_DONE | DNET_REQ_REPLIED)))
		return DNET_EPROTO;
	conn->in_req = r;
	conn->in_left = h->size;
	r->deadline = dnet__now(c) + timeout_ns(c);
	if (h->status) {
		if (h->status > 0 || h->size > DNET_CLIENT_MAX_REPLY)
			return DNET_EPROTO;
		if (h->status == DNET_ETLSREQUIRED)
			conn->tls_required = 1;
		r->status = h->status;
		/* Small error payloads are kept (NOTOWNER names the owner). */
		if (h->size && h->size <= DNET_CLIENT_MAX_ERRINFO) {
			r->rbuf = malloc(h->size + 1);
			if (!r->rbuf)
				return DNET_ENOMEM;
			r->rlen = (size_t)h->size;
			r->rgot = 0;
			conn->in_state = DNET_IN_BUF;
			return 0;
		}
		conn->in_state = DNET_IN_DISCARD;
		return 0;
	}
	if (h->cmd == DNET_CMD_READ) {
		if (h->size < DNET_IO_ATTR_SIZE)
			return DNET_EPROTO;
		conn->in_state = DNET_IN_READ_IO;
		conn->in_io_got = 0;
		return 0;
	}
	if (h->size > (h->cmd == DNET_CMD_ROUTES ? DNET_CLIENT_MAX_ROUTES : DNET_CLIENT_MAX_REPLY))
		return DNET_EPROTO;
	if (h->size) {
		r->rbuf = malloc(h->size + 1); /* +1: stat text gets a NUL */
		if (!r->rbuf)
			return DNET_ENOMEM;
		r->rlen = (size_t)h->size;
		r->rgot = 0;
	}
	conn->in_state = DNET_IN_BUF;
	return 0;
}

static void reply_info(struct dnet_conn *conn, struct dnet_req *r)
{
	struct dnet_obj_info oi;
	struct dnet_addr_wire aw;
	if (dnet_obj_info_decode(r->rbuf, r->rgot, &oi))
		return;
	r->info.size = oi.size;
	r->info.timestamp = oi.timestamp;
	r->info.version = oi.version;
	memcpy(r->info.csum, oi.csum, sizeof(oi.csum));
	if (r->rgot >= DNET_OBJ_INFO_SIZE + DNET_ADDR_WIRE_SIZE &&
	    !dnet_addr_decode(r->rbuf + DNET_OBJ_INFO_SIZE, r->rgot - DNET_OBJ_INFO_SIZE, &aw))
		dnet__addr_wire_str(&aw, conn->node, r->info.node, sizeof(r->info.node));
	else
		memcpy(r->info.node, conn->node, sizeof(r->info.node));
	r->have_info = 1;
}

/* The whole reply of conn->in_req has been read. */
static void reply_done(dnet_client *c, struct dnet_conn *conn)
{
	struct dnet_req *r = conn->in_req;
	conn->in_req = NULL;
	conn->in_state = DNET_IN_HDR;
	conn->last_active = dnet__now(c);
	if (!r->status && r->rbuf && r->cmd != DNET_CMD_READ)
		r->rbuf[r->rlen] = '\0';
	if (!r->status && (r->cmd == DNET_CMD_WRITE || r->cmd == DNET_CMD_LOOKUP))
		reply_info(conn, r);
	/* Not found, but a tombstone: its info says which delete (version). */
	if (r->status == DNET_ENOENT && r->rbuf && r->rgot >= DNET_OBJ_INFO_SIZE)
		reply_info(conn, r);
	if (r->flags & DNET_REQ_SENT) {
		req_complete(c, r, r->status);
	} else {
		/* Replied before we finished sending (an early error): finish sending first,
		 * the caller's buffer must outlive our use of it. */
		r->flags |= DNET_REQ_REPLIED;
	}
}

static int read_io_done(struct dnet_conn *conn)
{
	struct dnet_req *r = conn->in_req;
	struct dnet_io_attr io;
	dnet_io_attr_decode(conn->in_io, DNET_IO_ATTR_SIZE, &io);
	if (io.size != conn->in_left)
		return DNET_EPROTO;
	if (r->rd_size && io.size > r->rd_size)
		return DNET_EPROTO;
	if (r->delivered && r->have_rio && io.total_size != r->rio.total_size)
		return DNET_EPROTO;
	r->rio = io;
	r->have_rio = 1;
	r->info.size = io.total_size;
	r->info.timestamp = io.timestamp;
	memcpy(r->info.node, conn->node, sizeof(r->info.node));
	r->have_info = 1;
	if (!r->sink) {
		if (io.size > SIZE_MAX - 1)
			return DNET_ENOMEM;
		r->rbuf = malloc(io.size ? (size_t)io.size : 1);
		if (!r->rbuf)
			return DNET_ENOMEM;
		r->rlen = (size_t)io.size;
		r->rgot = 0;
	}
	conn->in_state = DNET_IN_READ_DATA;
	return 0;
}

/* Consume bytes from p[0..len) into the current reply. Returns bytes used or an error. */
static long long consume(dnet_client *c, struct dnet_conn *conn, const uint8_t *p, size_t len)
{
	size_t used = 0;
	while (used < len) {
		struct dnet_req *r = conn->in_req;
		size_t avail = len - used;
		switch (conn->in_state) {
		case DNET_IN_HDR: {
			if (avail < DNET_HDR_SIZE)
				return (long long)used;
			struct dnet_cmd_hdr h;
			dnet_hdr_decode(p + used, DNET_HDR_SIZE, &h);
			used += DNET_HDR_SIZE;
			int err = reply_header(c, conn, &h);
			if (err)
				return err;
			if (!conn->in_left && conn->in_state != DNET_IN_READ_IO)
				reply_done(c, conn);
			break;
		}
		case DNET_IN_BUF: {
			size_t n = avail < conn->in_left ? avail : (size_t)conn->in_left;
			memcpy(r->rbuf + r->rgot, p + used, n);
			r->rgot += n;
			used += n;
			conn->in_left -= n;
			if (!conn->in_left)
				reply_done(c, conn);
			break;
		}
		case DNET_IN_DISCARD: {
			size_t n = avail < conn->in_left ? avail : (size_t)conn->in_left;
			used += n;
			conn->in_left -= n;
			if (!conn->in_left)
				reply_done(c, conn);
			break;
		}
		case DNET_IN_READ_IO: {
			size_t n = DNET_IO_ATTR_SIZE - conn->in_io_got;
			if (n > avail)
				n = avail;
			memcpy(conn->in_io + conn->in_io_got, p + used, n);
			conn->in_io_got += n;
			used += n;
			conn->in_left -= n;
			if (conn->in_io_got < DNET_IO_ATTR_SIZE)
				return (long long)used;
			int err = read_io_done(conn);
			if (err)
				return err;
			if (!conn->in_left)
				reply_done(c, conn);
			break;
		}
		case DNET_IN_READ_DATA: {
			size_t n = avail < conn->in_left ? avail : (size_t)conn->in_left;
			if (r->sink) {
				if (n) {
					int err = r->sink(r->sink_arg, p + used, n);
					if (err) {
						r->status = err;
						return DNET_ECONNRESET;
					}
				}
			} else {
				memcpy(r->rbuf + r->rgot, p + used, n);
				r->rgot += n;
			}
			r->delivered += n;
			used += n;
			conn->in_left -= n;
			if (n > 4096)
				r->deadline = dnet__now(c) + timeout_ns(c);
			if (!conn->in_left)
				reply_done(c, conn);
			break;
		}
		}
	}
	return (long long)used;
}

static ssize_t conn_recv(dnet_client *c, struct dnet_conn *conn, void *dst, size_t room)
{
	if (!conn->ssl)
		return recv(conn->fd, dst, room, MSG_DONTWAIT);
	int want_write;
	long n = dnet_tls_read_nb(conn->ssl, dst, room, &want_write, &conn->tls_status);
	if (want_write) {
		conn->tls_rd_want_out = 1;
		set_pollout(c, conn, 1);
	}
	return n;
}

/* While a big body streams in, EPOLLIN fires once DNET_CLIENT_LOWAT bytes wait
 * instead of for every few segments (thousands of wakeups per GiB fewer); set back
 * to 1 byte before the body's last 2 x LOWAT, so its end, and the next header,
 * always wake us. Plaintext only (TLS reads whole records). */
#define DNET_CLIENT_LOWAT (256 << 10)
static void conn_lowat(struct dnet_conn *conn)
{
	if (conn->ssl)
		return;
	int want = 1;
	if (conn->in_req && conn->in_state == DNET_IN_READ_DATA && conn->istart == conn->iend &&
	    conn->in_left >= 2 * DNET_CLIENT_LOWAT)
		want = DNET_CLIENT_LOWAT;
	if (want != (conn->lowat ? conn->lowat : 1) &&
	    setsockopt(conn->fd, SOL_SOCKET, SO_RCVLOWAT, &want, sizeof(want)) == 0)
		conn->lowat = want;
}

/* Where to recv() into: straight into the destination for big bodies. TLS: bytes
 * OpenSSL has already taken from the socket must be read before epoll waits. */
static int conn_read(dnet_client *c, struct dnet_conn *conn)
{
	for (int rounds = 0; rounds < 16 || (conn->ssl && SSL_has_pending(conn->ssl)); rounds++) {
		uint8_t *dst;
		size_t room;
		int direct = 0;
		struct dnet_req *r = conn->in_req;
		if (conn->istart == conn->iend)
			conn->istart = conn->iend = 0;
		if (conn->istart == conn->iend && r && conn->in_left >= 16384 &&
		    (conn->in_state == DNET_IN_BUF ||
		     (conn->in_state == DNET_IN_READ_DATA && !r->sink))) {
			dst = r->rbuf + r->rgot;
			room = conn->in_left;
			direct = 1;
		} else if (conn->istart == conn->iend && r && conn->in_left >= 16384 &&
			   conn->in_state == DNET_IN_READ_DATA && c->sbuf) {
			dst = c->sbuf;
			room = conn->in_left < DNET_CLIENT_SBUF ? (size_t)conn->in_left
								 : DNET_CLIENT_SBUF;
			direct = 2;
		} else {
			if (conn->istart && DNET_CLIENT_IBUF - conn->iend < DNET_HDR_SIZE * 2) {
				memmove(conn->ibuf, conn->ibuf + conn->istart,
					conn->iend - conn->istart);
				conn->iend -= conn->istart;
				conn->istart = 0;
			}
			dst = conn->ibuf + conn->iend;
			room = DNET_CLIENT_IBUF - conn->iend;
		}
		ssize_t n = conn_recv(c, conn, dst, room);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				conn_lowat(conn);
				return 0;
			}
			return conn->tls_status ? conn->tls_status : DNET_ECONNRESET;
		}
		if (n == 0)
			return DNET_ECONNRESET;
		conn->last_active = dnet__now(c);
		if (direct == 1) {
			r->rgot += (size_t)n;
			conn->in_left -= (uint64_t)n;
			if (conn->in_state == DNET_IN_READ_DATA)
				r->delivered += (uint64_t)n;
			r->deadline = conn->last_active + timeout_ns(c);
			if (!conn->in_left)
				reply_done(c, conn);
			continue;
		}
		if (direct == 2) {
			long long u = consume(c, conn, dst, (size_t)n);
			if (u < 0)
				return (int)u;
			continue;
		}
		conn->iend += (size_t)n;
		long long u = consume(c, conn, conn->ibuf + conn->istart, conn->iend - conn->istart);
		if (u < 0)
			return (int)u;
		conn->istart += (size_t)u;
		if ((size_t)n < room && !(conn->ssl && SSL_has_pending(conn->ssl))) {
			conn_lowat(conn);
			return 0;
		}
	}
	conn_lowat(conn);
	return 0;
}

/* --- the loop ------------------------------------------------------------ */

/* A connection in the middle of moving a big message (a GiB READ reply, a chunk
 * going out by sendfile) delays the replies queued behind it: while it keeps making
 * progress, its requests are not expired. */
static int conn_busy(const dnet_client *c, const struct dnet_conn *conn, uint64_t now)
{
	int mid = conn->in_req || (conn->out_head && conn->out_head->out_done);
	return mid && dnet_ns_since(now, conn->last_active) < timeout_ns(c);
}

static void expire(dnet_client *c, uint64_t now)
{
	for (size_t i = 0; i < c->nall; i++) {
		struct dnet_conn *conn = c->all[i];
		if (conn_busy(c, conn, now))
			continue;
		for (struct dnet_req *r = conn->reqs; r; r = r->next)
			if (r->deadline <= now) {
				conn_drop2(c, conn, DNET_ECONNRESET, r);
				break;
			}
	}
	c->next_deadline = 0;
	for (size_t i = 0; i < c->nall; i++) {
		struct dnet_conn *conn = c->all[i];
		int busy = conn_busy(c, conn, now);
		for (struct dnet_req *r = conn->reqs; r; r = r->next) {
			uint64_t d = r->deadline;
			if (busy && d <= now)
				d = conn->last_active + timeout_ns(c);
			deadline_note(c, d);
		}
	}
}

int dnet__loop_once(dnet_client *c, int timeout_ms)
{
	struct epoll_event evs[64];
	uint64_t completed = c->ncompleted;
	if (c->retry_head)
		dnet__run_retries(c);
	dnet__flush_all(c);
	/* Something completed just now (a resend that failed at once, a send that
	 * broke; a blocking call's own request, a fan's part or a callback's): back
	 * to the caller. Callbacks already due before do not count: a blocking call
	 * waits for its own request and would spin on them. */
	if (c->ncompleted != completed)
		timeout_ms = 0;
	uint64_t now = dnet_now_mono_ns();
	if (c->next_deadline) {
		int64_t left = (int64_t)(c->next_deadline - now);
		int lm = left <= 0 ? 0 : (int)((left + 999999) / 1000000);
		if (timeout_ms < 0 || lm < timeout_ms)
			timeout_ms = lm;
	} else if (timeout_ms < 0) {
		timeout_ms = c->inflight || c->retry_head ? c->timeout_ms : 0;
	}
	if (c->retry_head && c->retry_wake) {
		/* A resend is due then (a bounce's wait ends, or its deadline comes). */
		int64_t left = (int64_t)(c->retry_wake - now);
		int lm = left <= 0 ? 0 : (int)((left + 999999) / 1000000);
		if (timeout_ms < 0 || lm < timeout_ms)
			timeout_ms = lm;
	}
	int n = epoll_wait(c->epfd, evs, 64, timeout_ms);
	/* the round's clock, also when interrupted: dnet_poll's callbacks use it */
	c->now_ns = dnet_now_mono_ns();
	if (n < 0) {
		if (errno == EINTR)
			return 0;
		return DNET_ESYS;
	}
	c->now_ok = 1;
	for (int i = 0; i < n; i++) {
		struct dnet_conn *conn = evs[i].data.ptr;
		if (!conn || conn->fd < 0)
			continue;
		int err = 0;
		if ((evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) ||
		    (conn->tls_rd_want_out && (evs[i].events & EPOLLOUT))) {
			conn->tls_rd_want_out = 0;
			err = conn_read(c, conn);
		}
		if (!err && conn->fd >= 0 && (evs[i].events & EPOLLOUT))
			err = conn_flush(c, conn);
		if (err)
			dnet__conn_drop(c, conn, err);
	}
	now = c->now_ns;
	if (c->next_deadline && now >= c->next_deadline)
		expire(c, now);
	if (c->retry_head)
		dnet__run_retries(c);
	c->now_ok = 0;
	return 0;
}

void dnet__wait(dnet_client *c, struct dnet_req *r)
{
	while (!(r->flags & DNET_REQ_DONE)) {
		if (dnet__loop_once(c, -1) < 0) {
			/* epoll itself failed: nothing more can move on this handle. */
			for (size_t i = 0; i < c->nall; i++)
				dnet__conn_drop(c, c->all[i], DNET_ESYS);
		}
	}
}
