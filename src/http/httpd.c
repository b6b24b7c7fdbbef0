/* httpd.c - the HTTP/1.1 server of ellipticsd (--http): one epoll thread of its own
 * (never the storage network loops or IO workers), connections as an explicit state
 * machine (head -> body -> write -> head again on keep-alive, or linger -> close),
 * bounded buffers and deadlines, and a static route table. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "http_int.h"
#include "s3.h"

#define MAX_CONNS 256
#define BUF_CAP DNET_HTTP_BUF_CAP
/* Bodies sent to routes that take none are read and dropped up to this size. */
#define SMALL_BODY 65536
#define IDLE_MS 60000	  /* keep-alive connection with no request */
#define HEAD_MS 10000	  /* from the first byte of a head to its end (slowloris) */
#define PROGRESS_MS 30000 /* body or response: longest pause between bytes */
#define LINGER_MS 2000	  /* reading what is left after an error, before close */

static uint64_t ms_from_now(int ms)
{
	return dnet_now_mono_ns() + (uint64_t)ms * UINT64_C(1000000);
}

/* ---- routes ---- */

static const struct dnet_http_asset *find_asset(const char *path, size_t n)
{
	for (size_t i = 0; i < dnet_http_nassets; i++)
		if (strlen(dnet_http_assets[i].path) == n &&
		    !memcmp(dnet_http_assets[i].path, path, n))
			return &dnet_http_assets[i];
	return NULL;
}

static void serve_asset(struct dnet_http_resp *resp, const struct dnet_http_asset *a)
{
	resp->status = 200;
	resp->ctype = a->ctype;
	resp->body = (char *)(uintptr_t)a->data;
	resp->len = a->len;
	resp->static_body = 1;
}

static void h_page(struct dnet_http *h, const struct dnet_http_req *req,
		   struct dnet_http_resp *resp)
{
	const struct dnet_http_asset *a = find_asset("/index.html", 11);
	if (a)
		serve_asset(resp, a);
}

static void h_metrics(struct dnet_http *h, const struct dnet_http_req *req,
		      struct dnet_http_resp *resp)
{
	resp->body = dnet_http_metrics(h->s, &resp->len);
	if (!resp->body)
		return;
	resp->status = 200;
	resp->ctype = "text/plain; version=0.0.4; charset=utf-8";
}

static void h_ring_json(struct dnet_http *h, const struct dnet_http_req *req,
			struct dnet_http_resp *resp)
{
	resp->body = dnet_http_ring_json(h, &resp->len);
	if (!resp->body)
		return;
	resp->status = 200;
	resp->ctype = "application/json";
}

#define GET_HEAD ((1u << DNET_HTTP_GET) | (1u << DNET_HTTP_HEAD))

static const struct dnet_http_route routes[] = {
    {"/", GET_HEAD, "GET, HEAD", h_page, NULL, 0},
    {"/ring", GET_HEAD, "GET, HEAD", h_page, NULL, 0},
    {"/ring.json", GET_HEAD, "GET, HEAD", h_ring_json, NULL, 0},
    {"/metrics", GET_HEAD, "GET, HEAD", h_metrics, NULL, 0},
};

static const struct dnet_http_route asset_route = {NULL, GET_HEAD, "GET, HEAD", NULL, NULL, 0};

static const struct dnet_http_route *find_route(const struct dnet_http_req *r)
{
	for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++)
		if (strlen(routes[i].path) == r->path_len &&
		    !memcmp(routes[i].path, r->path, r->path_len))
			return &routes[i];
	if (find_asset(r->path, r->path_len))
		return &asset_route;
	return NULL;
}

/* ---- connections ---- */

static void conn_free(struct dnet_http *h, struct dnet_http_conn *c)
{
	epoll_ctl(h->epfd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	if (c->prev)
		c->prev->next = c->next;
	else
		h->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	h->nconns--;
	if (c->evicted)
		h->nevicted--;
	atomic_fetch_sub(&h->s->stats.http_conns_cur, 1);
	free(c->out);
	free(c->buf);
	free(c);
}

/* The S3 gateway takes the connection (state H_GW): out of the loop's list and
 * epoll set until it comes back through dnet_http_conn_back. */
static void handoff(struct dnet_http *h, struct dnet_http_conn *c)
{
	epoll_ctl(h->epfd, EPOLL_CTL_DEL, c->fd, NULL);
	if (c->prev)
		c->prev->next = c->next;
	else
		h->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->prev = c->next = NULL;
	h->nconns--;
	dnet_s3_submit(h, c);
}

void dnet_http_conn_release(struct dnet_http *h, struct dnet_http_conn *c)
{
	close(c->fd);
	atomic_fetch_sub(&h->s->stats.http_conns_cur, 1);
	free(c->out);
	free(c->buf);
	free(c);
}

void dnet_http_conn_back(struct dnet_http *h, struct dnet_http_conn *c)
{
	pthread_mutex_lock(&h->back_lock);
	c->next = h->back;
	h->back = c;
	pthread_mutex_unlock(&h->back_lock);
	uint64_t one = 1;
	ssize_t w = write(h->back_fd, &one, sizeof(one));
	(void)w;
}

static void conn_events(struct dnet_http *h, struct dnet_http_conn *c)
{
	struct epoll_event ev = {.events = c->state == H_WRITE ? EPOLLOUT : EPOLLIN, .data.ptr = c};
	epoll_ctl(h->epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Queue a response (head, then body unless HEAD) and switch to writing. */
static void respond(struct dnet_http *h, struct dnet_http_conn *c, struct dnet_http_resp *r,
		    int head_only)
{
	char head[1024];
	int close_it = !c->keep_alive;
	int hl = snprintf(head, sizeof(head),
			  "HTTP/1.1 %d %s\r\nServer: ellipticsd\r\nContent-Type: %s\r\n"
			  "Content-Length: %zu\r\nCache-Control: no-store\r\n"
			  "X-Content-Type-Options: nosniff\r\n%s%s\r\n",
			  r->status, dnet_http_reason(r->status),
			  r->ctype ? r->ctype : "text/plain", r->len, r->extra ? r->extra : "",
			  close_it		      ? "Connection: close\r\n"
			  : c->req.version_minor == 0 ? "Connection: keep-alive\r\n"
						      : "");
	if (hl < 0 || (size_t)hl >= sizeof(head))
		hl = 0;
	size_t blen = head_only ? 0 : r->len;
	free(c->out);
	c->out = malloc((size_t)hl + blen);
	if (c->out) {
		memcpy(c->out, head, (size_t)hl);
		if (blen)
			memcpy(c->out + hl, r->body, blen);
		c->out_len = (size_t)hl + blen;
	} else {
		c->out_len = 0;
		close_it = 1;
	}
	if (!r->static_body)
		free(r->body);
	r->body = NULL;
	c->out_off = 0;
	atomic_fetch_add(&h->s->stats.http_requests, 1);
	if (r->status >= 400)
		atomic_fetch_add(&h->s->stats.http_errors, 1);
	c->state = H_WRITE;
	c->after_write = close_it ? H_LINGER : H_HEAD;
	c->keep_alive = !close_it;
	c->deadline_ns = ms_from_now(PROGRESS_MS);
}

/* An error answer. fatal: the request could not be read whole (malformed, too
 * large, timed out, a body we will not read): close after it. Otherwise (404, 405
 * of a complete request) the connection stays usable. */
static void respond_error(struct dnet_http *h, struct dnet_http_conn *c, int status, int fatal)
{
	char *body = malloc(128);
	struct dnet_http_resp r = {.status = status, .ctype = "text/plain; charset=utf-8"};
	if (body) {
		int n = snprintf(body, 128, "%d %s\n", status, dnet_http_reason(status));
		r.body = body;
		r.len = n > 0 ? (size_t)n : 0;
	}
	if (status == 405 && c->route && c->route->allow) {
		snprintf(c->extra, sizeof(c->extra), "Allow: %s\r\n", c->route->allow);
		r.extra = c->extra;
	}
	if (fatal) {
		c->keep_alive = 0;
		dnet_log_debug("http %s: refused with %d", c->peer, status);
	}
	/* A complete HEAD request gets the head of the error only. */
	respond(h, c, &r, !fatal && c->req.method == DNET_HTTP_HEAD);
}

/* The whole request (head and body) is in: run its handler. */
static void run_request(struct dnet_http *h, struct dnet_http_conn *c)
{
	if (c->status_pending) {
		respond_error(h, c, c->status_pending, 0);
		return;
	}
	struct dnet_http_resp r = {.status = 500};
	const struct dnet_http_route *rt = c->route;
	if (rt->handler)
		rt->handler(h, &c->req, &r);
	else {
		const struct dnet_http_asset *a = find_asset(c->req.path, c->req.path_len);
		if (a)
			serve_asset(&r, a);
	}
	if (r.status >= 400 && !r.body) {
		respond_error(h, c, r.status, 0);
		return;
	}
	respond(h, c, &r, c->req.method == DNET_HTTP_HEAD);
}

/* Feed body bytes buf[off, len) to the request; returns the bytes consumed, or -1
 * after queuing an error response. Sets *done when the body has ended. */
static ssize_t body_feed(struct dnet_http *h, struct dnet_http_conn *c, size_t off, int *done)
{
	uint8_t *p = (uint8_t *)c->buf + off;
	size_t n = c->len - off, data_len;
	ssize_t used;
	*done = 0;
	if (c->req.chunked) {
		used = dnet_http_chunked_decode(&c->ch, p, n, p, &data_len);
		if (used < 0) {
			respond_error(h, c, (int)-used, 1);
			return -1;
		}
		*done = dnet_http_chunked_done(&c->ch);
	} else {
		data_len = n < c->body_left ? n : (size_t)c->body_left;
		used = (ssize_t)data_len;
		c->body_left -= data_len;
		*done = c->body_left == 0;
	}
	c->body_got += data_len;
	if (data_len && !c->status_pending && c->route && c->route->body &&
	    c->route->body(h, p, data_len) != 0) {
		respond_error(h, c, 500, 1);
		return -1;
	}
	return used;
}

/* A complete head is in buf: pick the route, then read the body, or answer. */
static void start_request(struct dnet_http *h, struct dnet_http_conn *c)
{
	struct dnet_http_req *r = &c->req;
	c->keep_alive = r->keep_alive;
	c->route = find_route(r);
	c->status_pending = 0;
	uint64_t max_body = c->route && c->route->body ? c->route->max_body : SMALL_BODY;
	if (!c->route)
		c->status_pending = 404;
	else if (!(c->route->methods & (1u << r->method)))
		c->status_pending = 405;
	int has_body = r->chunked || (r->has_length && r->content_length > 0);
	if (c->status_pending && has_body) {
		/* Do not read a body nobody wants: answer and close. */
		respond_error(h, c, c->status_pending, 1);
		return;
	}
	if (r->has_length && r->content_length > max_body) {
		respond_error(h, c, 413, 1);
		return;
	}
	if (!has_body) {
		run_request(h, c);
		return;
	}
	c->body_left = r->has_length ? r->content_length : 0;
	c->body_got = 0;
	dnet_http_chunked_init(&c->ch, max_body);
	c->state = H_BODY;
	c->deadline_ns = ms_from_now(PROGRESS_MS);
	if (r->expect_continue && c->len == r->head_len) {
		static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
		free(c->out);
		c->out = malloc(sizeof(cont) - 1);
		if (!c->out) {
			c->state = H_LINGER;
			return;
		}
		memcpy(c->out, cont, sizeof(cont) - 1);
		c->out_len = sizeof(cont) - 1;
		c->out_off = 0;
		c->state = H_WRITE;
		c->after_write = H_BODY;
	}
}

/* Feed the body bytes after the head; when the body is complete, run the request
 * and keep only what follows it (a pipelined request). */
static void body_step(struct dnet_http *h, struct dnet_http_conn *c)
{
	size_t hl = c->req.head_len;
	if (c->len == hl)
		return;
	int done;
	ssize_t used = body_feed(h, c, hl, &done);
	if (used < 0)
		return;
	if (!done) {
		c->len = hl; /* all consumed: read more right after the head */
		return;
	}
	size_t rest = hl + (size_t)used;
	run_request(h, c);
	memmove(c->buf, c->buf + rest, c->len - rest);
	c->len -= rest;
	c->checked = 0;
}

/* Act on what is in buf. new_nl: the bytes just read contain a line end. */
static void conn_process(struct dnet_http *h, struct dnet_http_conn *c, int new_nl)
{
	if (c->state == H_BODY) {
		body_step(h, c);
		return;
	}
	if (c->state != H_HEAD || !c->len)
		return;
	/* Parse when a line may have ended (a slow client costs one parse per line,
	 * not per byte), and on the first bytes, to refuse garbage at once. */
	if (!new_nl && c->checked >= 32 && c->len < DNET_HTTP_MAX_HEAD)
		return;
	c->checked = c->len;
	c->route = NULL;
	int n = dnet_http_parse_head(c->buf, c->len, UINT64_MAX, &c->req);
	if (n == 0)
		return;
	if (n < 0) {
		respond_error(h, c, -n, 1);
		return;
	}
	if (h->s3 && dnet_s3_wants(h, &c->req, find_route(&c->req) != NULL)) {
		if (dnet_s3_busy(h)) {
			/* Every gateway thread is busy and enough wait: the client retries. */
			int has_body =
			    c->req.chunked || (c->req.has_length && c->req.content_length);
			respond_error(h, c, 503, has_body);
			if (!has_body) {
				memmove(c->buf, c->buf + c->req.head_len, c->len - c->req.head_len);
				c->len -= c->req.head_len;
				c->checked = 0;
			}
			return;
		}
		c->state = H_GW; /* the caller hands it over: the last thing it does */
		return;
	}
	start_request(h, c);
	if (c->state == H_BODY) {
		body_step(h, c);
	} else if (c->state == H_WRITE && c->after_write != H_BODY) {
		/* Answered without a body: keep what follows the head. */
		memmove(c->buf, c->buf + c->req.head_len, c->len - c->req.head_len);
		c->len -= c->req.head_len;
		c->checked = 0;
	}
}

/* Send what is queued, then go on to the next state (and to requests already
 * pipelined behind this one); returns -1 to close. */
static int conn_write(struct dnet_http *h, struct dnet_http_conn *c)
{
	for (;;) {
		while (c->out_off < c->out_len) {
			ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off,
					 MSG_NOSIGNAL | MSG_DONTWAIT);
			if (w < 0) {
				if (errno == EINTR)
					continue;
				if (errno == EAGAIN || errno == EWOULDBLOCK) {
					conn_events(h, c);
					return 0;
				}
				return -1;
			}
			c->out_off += (size_t)w;
			c->deadline_ns = ms_from_now(PROGRESS_MS);
		}
		free(c->out);
		c->out = NULL;
		c->out_len = c->out_off = 0;
		c->state = c->after_write;
		if (c->state == H_LINGER) {
			/* Half-close and read what the client still sends, so that closing
			 * with unread bytes does not reset the connection before the client
			 * has read the error. */
			shutdown(c->fd, SHUT_WR);
			c->deadline_ns = ms_from_now(LINGER_MS);
			c->len = 0;
		} else if (c->state == H_HEAD) {
			c->deadline_ns = ms_from_now(c->len ? HEAD_MS : IDLE_MS);
			c->checked = 0;
			if (c->len) { /* pipelined requests already read */
				conn_process(h, c, 1);
				if (c->state == H_GW) {
					handoff(h, c);
					return 0;
				}
				if (c->state == H_WRITE)
					continue;
			}
		} else if (c->state == H_BODY) {
			c->deadline_ns = ms_from_now(PROGRESS_MS);
		}
		break;
	}
	conn_events(h, c);
	return 0;
}

/* Read what the socket has; returns -1 to close. */
static int conn_read(struct dnet_http *h, struct dnet_http_conn *c)
{
	for (int rounds = 0;
	     rounds < 16 && (c->state == H_HEAD || c->state == H_BODY || c->state == H_LINGER);
	     rounds++) {
		if (c->state == H_LINGER) {
			char junk[4096];
			ssize_t r = recv(c->fd, junk, sizeof(junk), MSG_DONTWAIT);
			if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
				return -1;
			if (r < 0)
				break;
			continue;
		}
		size_t room = BUF_CAP - c->len;
		if (c->state == H_HEAD && c->len >= DNET_HTTP_MAX_HEAD) {
			/* Only reachable with a pipelined head after a body: parse it. */
			conn_process(h, c, 1);
			if (c->state == H_GW) {
				handoff(h, c);
				return 0;
			}
			break;
		}
		if (room == 0)
			break;
		ssize_t r = recv(c->fd, c->buf + c->len, room, MSG_DONTWAIT);
		if (r == 0) {
			if (c->state == H_HEAD && c->len)
				dnet_log_debug("http %s: closed inside a request head", c->peer);
			return -1;
		}
		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			return -1;
		}
		if (c->state == H_HEAD && c->len == 0)
			c->deadline_ns = ms_from_now(HEAD_MS); /* the head's clock starts now */
		else if (c->state == H_BODY)
			c->deadline_ns = ms_from_now(PROGRESS_MS);
		int nl = memchr(c->buf + c->len, '\n', (size_t)r) != NULL;
		c->len += (size_t)r;
		conn_process(h, c, nl);
		if (c->state == H_GW) {
			handoff(h, c);
			return 0;
		}
		if (c->state == H_WRITE)
			return conn_write(h, c);
	}
	conn_events(h, c);
	return 0;
}

/* At the connection limit, make room for a new client by closing the oldest
 * connection that is idle or still sending its head: slow or idle clients cannot
 * hold every slot and lock out a scraper. The victim is only marked here (an event
 * for it may be pending in the current batch); it is freed by the deadline check. */
static int evict_one(struct dnet_http *h)
{
	struct dnet_http_conn *victim = NULL;
	for (struct dnet_http_conn *c = h->conns; c; c = c->next)
		if (c->state == H_HEAD && !c->evicted)
			victim = c; /* the list is newest first: keep the last one */
	if (!victim)
		return 0;
	victim->evicted = 1;
	h->nevicted++;
	shutdown(victim->fd, SHUT_RDWR);
	victim->state = H_LINGER;
	victim->deadline_ns = 0;
	atomic_fetch_add(&h->s->stats.http_conns_evicted, 1);
	return 1;
}

static void do_accept(struct dnet_http *h)
{
	for (;;) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		int fd = accept4(h->listen_fd, (struct sockaddr *)&ss, &sl,
				 SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				dnet_log_warn("http accept: %s", strerror(errno));
			return;
		}
		if (h->nconns - h->nevicted >= MAX_CONNS && !evict_one(h)) {
			static const char busy[] =
			    "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
			    "Connection: close\r\n\r\n";
			ssize_t w = send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
			(void)w;
			close(fd);
			atomic_fetch_add(&h->s->stats.http_conns_rejected, 1);
			continue;
		}
		struct dnet_http_conn *c = calloc(1, sizeof(*c));
		char *buf = c ? malloc(BUF_CAP) : NULL;
		if (!buf) {
			free(c);
			close(fd);
			continue;
		}
		c->fd = fd;
		c->buf = buf;
		c->state = H_HEAD;
		c->deadline_ns = ms_from_now(IDLE_MS);
		dnet_addr_str((struct sockaddr *)&ss, c->peer, sizeof(c->peer));
		dnet_set_nodelay(fd);
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
		if (epoll_ctl(h->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
			free(buf);
			free(c);
			close(fd);
			continue;
		}
		c->next = h->conns;
		if (h->conns)
			h->conns->prev = c;
		h->conns = c;
		h->nconns++;
		atomic_fetch_add(&h->s->stats.http_conns_cur, 1);
		atomic_fetch_add(&h->s->stats.http_conns_total, 1);
	}
}

/* Deadlines: a head that does not complete in time gets 408; an idle keep-alive
 * connection, a stalled body or write, or a finished linger is just closed. */
static void check_deadlines(struct dnet_http *h)
{
	uint64_t now = dnet_now_mono_ns();
	struct dnet_http_conn *next;
	for (struct dnet_http_conn *c = h->conns; c; c = next) {
		next = c->next;
		if (now < c->deadline_ns)
			continue;
		if (c->state == H_HEAD && c->len) {
			respond_error(h, c, 408, 1);
			if (conn_write(h, c) == 0)
				continue;
		}
		conn_free(h, c);
	}
}

/* Connections the gateway has finished with come back to the loop (keep-alive),
 * with any pipelined bytes already read in buf. */
static void take_back(struct dnet_http *h)
{
	uint64_t v;
	ssize_t r = read(h->back_fd, &v, sizeof(v));
	(void)r;
	pthread_mutex_lock(&h->back_lock);
	struct dnet_http_conn *list = h->back;
	h->back = NULL;
	pthread_mutex_unlock(&h->back_lock);
	while (list) {
		struct dnet_http_conn *c = list;
		list = c->next;
		c->prev = NULL;
		c->next = h->conns;
		if (h->conns)
			h->conns->prev = c;
		h->conns = c;
		h->nconns++;
		c->state = H_HEAD;
		c->checked = 0;
		c->deadline_ns = ms_from_now(c->len ? HEAD_MS : IDLE_MS);
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
		if (epoll_ctl(h->epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
			c->state = H_LINGER;
			c->deadline_ns = 0; /* freed by the deadline check */
			continue;
		}
		if (c->len) {
			conn_process(h, c, 1);
			if (c->state == H_GW)
				handoff(h, c);
			else if (c->state == H_WRITE && conn_write(h, c) < 0)
				conn_free(h, c);
		}
	}
}

static void *http_loop(void *arg)
{
	struct dnet_http *h = arg;
	struct epoll_event evs[64];

	dnet_thread_name("ell-http");
	uint64_t last_check = 0;
	for (;;) {
		int n = epoll_wait(h->epfd, evs, 64, 250);
		if (n < 0 && errno != EINTR) {
			dnet_log_error("http epoll_wait: %s", strerror(errno));
			break;
		}
		int stop = 0;
		for (int i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;
			if (p == &h->listen_fd) {
				do_accept(h);
				continue;
			}
			if (p == &h->stop_fd) {
				stop = 1;
				continue;
			}
			if (p == &h->back_fd) {
				take_back(h);
				continue;
			}
			struct dnet_http_conn *c = p;
			int rc;
			if (c->state == H_WRITE)
				rc = (evs[i].events & (EPOLLERR)) ? -1 : conn_write(h, c);
			else
				rc = conn_read(h, c);
			if (rc < 0)
				conn_free(h, c);
		}
		if (stop)
			break;
		uint64_t now = dnet_now_mono_ns();
		if (h->nevicted || now - last_check > 100000000ull) {
			check_deadlines(h);
			last_check = now;
		}
	}
	while (h->conns)
		conn_free(h, h->conns);
	return NULL;
}

int dnet_http_listen(struct dnet_server *s)
{
	if (!s->cfg.http[0])
		return 0;
	struct sockaddr_storage ss;
	socklen_t sl;
	if (dnet_parse_addr(s->cfg.http, 8080, &ss, &sl) != 0) {
		dnet_log_error("--http %s: not a usable HOST:PORT", s->cfg.http);
		return -1;
	}
	struct dnet_http *h = calloc(1, sizeof(*h));
	if (!h)
		return -1;
	h->s = s;
	h->epfd = h->stop_fd = h->back_fd = -1;
	h->listen_fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	if (h->listen_fd < 0 ||
	    setsockopt(h->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
	    bind(h->listen_fd, (struct sockaddr *)&ss, sl) != 0 || listen(h->listen_fd, 128) != 0) {
		dnet_log_error("cannot listen for HTTP on %s: %s", s->cfg.http, strerror(errno));
		if (h->listen_fd >= 0)
			close(h->listen_fd);
		free(h);
		return -1;
	}
	struct sockaddr_storage bound;
	socklen_t bl = sizeof(bound);
	if (getsockname(h->listen_fd, (struct sockaddr *)&bound, &bl) == 0)
		dnet_addr_str((struct sockaddr *)&bound, s->http_str, sizeof(s->http_str));
	pthread_mutex_init(&h->lock, NULL);
	pthread_cond_init(&h->cond, NULL);
	pthread_mutex_init(&h->back_lock, NULL);
	s->http = h;
	return 0;
}

static void http_free(struct dnet_server *s)
{
	struct dnet_http *h = s->http;
	if (h->epfd >= 0)
		close(h->epfd);
	if (h->stop_fd >= 0)
		close(h->stop_fd);
	if (h->back_fd >= 0)
		close(h->back_fd);
	while (h->back) {
		struct dnet_http_conn *c = h->back;
		h->back = c->next;
		dnet_http_conn_release(h, c);
	}
	pthread_mutex_destroy(&h->back_lock);
	close(h->listen_fd);
	pthread_mutex_destroy(&h->lock);
	pthread_cond_destroy(&h->cond);
	free(h->loads);
	free(h);
	s->http = NULL;
}

int dnet_http_start(struct dnet_server *s)
{
	struct dnet_http *h = s->http;
	if (!h)
		return 0;
	h->epfd = epoll_create1(EPOLL_CLOEXEC);
	h->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	h->back_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	struct epoll_event le = {.events = EPOLLIN, .data.ptr = &h->listen_fd};
	struct epoll_event se = {.events = EPOLLIN, .data.ptr = &h->stop_fd};
	struct epoll_event be = {.events = EPOLLIN, .data.ptr = &h->back_fd};
	if (h->epfd < 0 || h->stop_fd < 0 || h->back_fd < 0 ||
	    epoll_ctl(h->epfd, EPOLL_CTL_ADD, h->listen_fd, &le) ||
	    epoll_ctl(h->epfd, EPOLL_CTL_ADD, h->stop_fd, &se) ||
	    epoll_ctl(h->epfd, EPOLL_CTL_ADD, h->back_fd, &be)) {
		dnet_log_error("http: cannot set up epoll: %s", strerror(errno));
		goto out_free;
	}
	if (dnet_http_ring_start(h) != 0)
		goto out_free;
	if (dnet_s3_start(h) != 0) {
		dnet_http_ring_stop(h);
		goto out_free;
	}
	if (pthread_create(&h->thread, NULL, http_loop, h) != 0) {
		dnet_log_error("http: cannot start its thread");
		dnet_s3_stop(h);
		dnet_http_ring_stop(h);
		goto out_free;
	}
	h->started = 1;
	dnet_log_info("http listening on %s (S3 gateway, /metrics, /ring.json, ring page at /)",
		      s->http_str);
	return 0;
out_free:
	http_free(s);
	return -1;
}

void dnet_http_stop(struct dnet_server *s)
{
	struct dnet_http *h = s->http;
	if (!h)
		return;
	if (h->started) {
		uint64_t one = 1;
		ssize_t w = write(h->stop_fd, &one, sizeof(one));
		(void)w;
		pthread_join(h->thread, NULL);
		dnet_s3_stop(h);
		dnet_http_ring_stop(h);
		h->started = 0;
	}
	http_free(s);
}
