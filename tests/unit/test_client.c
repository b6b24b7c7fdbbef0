/* test_client.c - the client library against scripted fake nodes in threads:
 * malformed replies, out-of-order replies, timeouts, resumed reads after a broken
 * connection, early error replies, reconnects and failover; and ring routing: one
 * hop to the owner, NOTOWNER redirects and their limit, redirects that bounce
 * between two nodes (back-off, its limit, the timeout), down nodes failing fast,
 * chunked uploads following a redirect, resends after a broken connection. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/errors.h"
#include "common/proto.h"
#include "common/ring.h"
#include "common/util.h"
#include "elliptics/elliptics.h"
#include "client/client_int.h"

/* --- the fake node ------------------------------------------------------- */

struct fake;
typedef void (*script_fn)(struct fake *f);

struct fake {
	int lfd;
	int port;
	char addr[64];
	pthread_t tid;
	script_fn script;
	int fd; /* current accepted connection */
	int failures;
	volatile int stop;
	/* ROUTES requests are answered with this table (ring.h wire form) inside
	 * fake_recv, unless raw_routes: then scripts see them. */
	uint8_t *routes;
	size_t routes_len;
	int raw_routes;
	int nroutes; /* ROUTES requests answered */
	/* script_node: what keyed requests get, and counters. */
	int mode;
	struct fake *peer; /* NOTOWNER names this node */
	int keyed, writes, direct_writes, prepares, direct;
	uint64_t wrote;
};

struct msg {
	struct dnet_cmd_hdr h;
	uint8_t *payload;
};

static int fake_accept(struct fake *f)
{
	if (f->fd >= 0)
		close(f->fd);
	f->fd = accept(f->lfd, NULL, NULL);
	return f->fd;
}

static void fake_reply(struct fake *f, const struct msg *req, int status, const void *p, size_t len);

static int fake_recv(struct fake *f, struct msg *m)
{
	uint8_t hb[DNET_HDR_SIZE];
	for (;;) {
		free(m->payload);
		m->payload = NULL;
		if (dnet_read_full(f->fd, hb, sizeof(hb)))
			return -1;
		dnet_hdr_decode(hb, sizeof(hb), &m->h);
		if (m->h.size) {
			m->payload = malloc(m->h.size);
			if (!m->payload || dnet_read_full(f->fd, m->payload, m->h.size))
				return -1;
		}
		if (m->h.cmd != DNET_CMD_ROUTES || f->raw_routes)
			return 0;
		f->nroutes++;
		fake_reply(f, m, 0, f->routes, f->routes_len);
	}
}

static void fake_send_hdr(struct fake *f, const struct msg *req, int status, uint64_t size,
			  uint32_t magic, uint64_t trans)
{
	struct dnet_cmd_hdr h = req->h;
	uint8_t hb[DNET_HDR_SIZE];
	h.magic = magic;
	h.flags = DNET_FLAG_REPLY;
	h.status = status;
	h.trans = trans;
	h.size = size;
	dnet_hdr_encode(hb, &h);
	dnet_write_full(f->fd, hb, sizeof(hb));
}

static void fake_reply(struct fake *f, const struct msg *req, int status, const void *p, size_t len)
{
	fake_send_hdr(f, req, status, len, DNET_MAGIC, req->h.trans);
	if (len)
		dnet_write_full(f->fd, p, len);
}

/* READ reply for [off, off+n) of `obj` (total size `total`), optionally truncated
 * after `cut` data bytes (connection then closed by the caller). */
static void fake_read_reply(struct fake *f, const struct msg *req, const uint8_t *obj,
			    uint64_t total, uint64_t off, uint64_t n, uint64_t claimed)
{
	uint8_t io[DNET_IO_ATTR_SIZE];
	struct dnet_io_attr a = {.offset = off, .size = claimed, .total_size = total,
				 .timestamp = 42};
	dnet_io_attr_encode(io, &a);
	fake_send_hdr(f, req, 0, DNET_IO_ATTR_SIZE + claimed, DNET_MAGIC, req->h.trans);
	dnet_write_full(f->fd, io, sizeof(io));
	dnet_write_full(f->fd, obj + off, n);
}

/* A route table: node i has address addrs[i], one ring id ids[i], state states[i]. */
static void table_build(struct fake *f, int n, struct fake **nodes, uint8_t (*ids)[DNET_ID_SIZE],
			const uint32_t *states)
{
	struct dnet_ring r;
	dnet_ring_init(&r);
	for (int i = 0; i < n; i++) {
		struct dnet_ring_node nd;
		memset(&nd, 0, sizeof(nd));
		memset(nd.node_id, i + 1, DNET_ID_SIZE);
		nd.addr.family = 4;
		nd.addr.port = (uint16_t)nodes[i]->port;
		nd.addr.addr[0] = 127;
		nd.addr.addr[3] = 1;
		nd.incarnation = 1;
		nd.state = states ? states[i] : DNET_NODE_UP;
		nd.nids = 1;
		nd.ids = &ids[i];
		assert_int_equal(dnet_ring_merge_node(&r, &nd), 1);
	}
	free(f->routes);
	f->routes_len = dnet_ring_encoded_size(&r);
	f->routes = malloc(f->routes_len);
	dnet_ring_encode(&r, f->routes);
	dnet_ring_free(&r);
}

static void *fake_main(void *arg)
{
	struct fake *f = arg;
	f->script(f);
	if (f->fd >= 0)
		close(f->fd);
	f->fd = -1;
	return NULL;
}

/* `mode` is set before the thread starts: script_node reads it before its first
 * accept() (setting it afterwards raced: the script sometimes served one connection
 * where the test wanted two, and a resend found nobody listening). */
static void fake_start_with(struct fake *f, script_fn script, int mode)
{
	memset(f, 0, sizeof(*f));
	f->fd = -1;
	f->script = script;
	f->mode = mode;
	f->lfd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(f->lfd >= 0);
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
	assert_int_equal(bind(f->lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	socklen_t sl = sizeof(sin);
	getsockname(f->lfd, (struct sockaddr *)&sin, &sl);
	f->port = ntohs(sin.sin_port);
	snprintf(f->addr, sizeof(f->addr), "127.0.0.1:%d", f->port);
	assert_int_equal(listen(f->lfd, 16), 0);
	/* By default the fake is a ring of its own: one node, one range. */
	uint8_t id[1][DNET_ID_SIZE];
	memset(id, 0, sizeof(id));
	struct fake *self[1] = {f};
	table_build(f, 1, self, id, NULL);
	assert_int_equal(pthread_create(&f->tid, NULL, fake_main, f), 0);
}

static void fake_start(struct fake *f, script_fn script)
{
	fake_start_with(f, script, 0);
}

static void fake_stop(struct fake *f)
{
	pthread_join(f->tid, NULL);
	close(f->lfd);
	free(f->routes);
	f->routes = NULL;
}

static dnet_client *client_for(const struct fake *f, int timeout_ms)
{
	dnet_client *c;
	assert_int_equal(dnet_client_new(&c), 0);
	assert_int_equal(dnet_client_add_remote(c, f->addr), 0);
	dnet_client_set_timeout(c, timeout_ms);
	return c;
}

static uint8_t object[1 << 20];

static void fill_object(void)
{
	uint64_t s = 88172645463325252ull;
	for (size_t i = 0; i < sizeof(object); i++) {
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		object[i] = (uint8_t)s;
	}
}

/* --- malformed replies --------------------------------------------------- */

static int bad_kind;

static void script_bad_reply(struct fake *f)
{
	struct msg m = {0};
	fake_accept(f);
	if (fake_recv(f, &m))
		return;
	uint8_t junk[64] = {0};
	switch (bad_kind) {
	case 0: /* bad magic */
		fake_send_hdr(f, &m, 0, 48, 0x12345678, m.h.trans);
		break;
	case 1: /* unknown transaction */
		fake_send_hdr(f, &m, 0, 48, DNET_MAGIC, m.h.trans ^ 0x5555);
		break;
	case 2: /* oversized non-READ reply */
		fake_send_hdr(f, &m, 0, 64u << 20, DNET_MAGIC, m.h.trans);
		break;
	case 3: /* positive status */
		fake_send_hdr(f, &m, 5, 0, DNET_MAGIC, m.h.trans);
		break;
	}
	dnet_write_full(f->fd, junk, sizeof(junk));
	/* The client must close: wait for EOF. */
	while (read(f->fd, junk, sizeof(junk)) > 0)
		;
	free(m.payload);
}

static void test_malformed_replies(void **state)
{
	(void)state;
	for (bad_kind = 0; bad_kind < 4; bad_kind++) {
		struct fake f;
		fake_start(&f, script_bad_reply);
		dnet_client *c = client_for(&f, 5000);
		struct dnet_object_info info;
		assert_int_equal(dnet_lookup(c, "k", 1, &info), DNET_EPROTO);
		dnet_client_free(c);
		fake_stop(&f);
	}
}

static int read_bad_kind;

static void script_bad_read(struct fake *f)
{
	struct msg m = {0};
	fake_accept(f);
	if (fake_recv(f, &m))
		return;
	struct dnet_io_attr a;
	dnet_io_attr_decode(m.payload, m.h.size, &a);
	if (read_bad_kind == 0) {
		/* io.size disagrees with the payload size */
		uint8_t io[DNET_IO_ATTR_SIZE];
		struct dnet_io_attr r = {.size = 100, .total_size = 100};
		dnet_io_attr_encode(io, &r);
		fake_send_hdr(f, &m, 0, DNET_IO_ATTR_SIZE + 50, DNET_MAGIC, m.h.trans);
		dnet_write_full(f->fd, io, sizeof(io));
		dnet_write_full(f->fd, object, 50);
	} else if (read_bad_kind == 1) {
		/* more than asked for */
		fake_read_reply(f, &m, object, sizeof(object), 0, a.size + 10, a.size + 10);
	} else {
		/* READ reply shorter than an io_attr */
		fake_send_hdr(f, &m, 0, 10, DNET_MAGIC, m.h.trans);
		dnet_write_full(f->fd, object, 10);
	}
	uint8_t junk[64];
	while (read(f->fd, junk, sizeof(junk)) > 0)
		;
	free(m.payload);
}

static void test_malformed_read_replies(void **state)
{
	(void)state;
	for (read_bad_kind = 0; read_bad_kind < 3; read_bad_kind++) {
		struct fake f;
		fake_start(&f, script_bad_read);
		dnet_client *c = client_for(&f, 5000);
		void *data = NULL;
		size_t len = 0;
		assert_int_equal(dnet_read(c, "k", 1, 0, 100, &data, &len, NULL), DNET_EPROTO);
		assert_null(data);
		dnet_client_free(c);
		fake_stop(&f);
	}
}

/* --- out of order -------------------------------------------------------- */

static void script_reverse(struct fake *f)
{
	struct msg m[3];
	memset(m, 0, sizeof(m));
	fake_accept(f);
	for (int i = 0; i < 3; i++)
		if (fake_recv(f, &m[i]))
			return;
	for (int i = 2; i >= 0; i--) {
		struct dnet_io_attr a;
		dnet_io_attr_decode(m[i].payload, m[i].h.size, &a);
		fake_read_reply(f, &m[i], object, sizeof(object), a.offset, a.size, a.size);
	}
	struct msg x = {0};
	fake_recv(f, &x); /* until the client closes */
	for (int i = 0; i < 3; i++)
		free(m[i].payload);
}

struct got {
	int calls, status;
	uint64_t off;
	size_t len;
	int same;
};

static void on_read(void *arg, int status, const void *data, size_t len,
		    const struct dnet_object_info *info)
{
	struct got *g = arg;
	g->calls++;
	g->status = status;
	g->len = len;
	g->same = data && !memcmp(data, object + g->off, len);
}

static void test_out_of_order(void **state)
{
	(void)state;
	struct fake f;
	fake_start(&f, script_reverse);
	dnet_client *c = client_for(&f, 5000);
	uint8_t id[64];
	struct got g[3] = {{.off = 0}, {.off = 1000}, {.off = 300000}};
	size_t lens[3] = {10, 200000, 5};
	for (int i = 0; i < 3; i++) {
		dnet_key_to_id(&i, sizeof(i), id);
		assert_int_equal(dnet_submit_read_id(c, id, g[i].off, lens[i], on_read, &g[i]), 0);
	}
	assert_int_equal(dnet_inflight(c), 3);
	while (dnet_inflight(c))
		assert_true(dnet_poll(c, -1) >= 0);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(g[i].calls, 1);
		assert_int_equal(g[i].status, 0);
		assert_int_equal(g[i].len, lens[i]);
		assert_true(g[i].same);
	}
	dnet_client_free(c);
	fake_stop(&f);
}

/* --- timeouts ------------------------------------------------------------ */

static void script_silent(struct fake *f)
{
	struct msg m = {0};
	fake_accept(f);
	fake_recv(f, &m);
	uint8_t junk[64];
	while (read(f->fd, junk, sizeof(junk)) > 0)
		;
	free(m.payload);
}

static void test_timeout(void **state)
{
	(void)state;
	struct fake f;
	fake_start(&f, script_silent);
	dnet_client *c = client_for(&f, 300);
	uint64_t t = dnet_now_mono_ns();
	struct dnet_object_info info;
	assert_int_equal(dnet_lookup(c, "k", 1, &info), DNET_ETIMEDOUT);
	uint64_t ms = (dnet_now_mono_ns() - t) / 1000000;
	assert_true(ms >= 250 && ms < 2000);
	dnet_client_free(c);
	fake_stop(&f);
}

/* --- a broken READ is resumed on a new connection ------------------------ */

static void script_cut_read(struct fake *f)
{
	struct msg m = {0};
	struct dnet_io_attr a;
	fake_accept(f);
	if (fake_recv(f, &m))
		return;
	dnet_io_attr_decode(m.payload, m.h.size, &a);
	/* claim the whole object, send 300000 bytes, hang up */
	fake_read_reply(f, &m, object, sizeof(object), 0, 300000, sizeof(object));
	fake_accept(f);
	if (fake_recv(f, &m))
		return;
	dnet_io_attr_decode(m.payload, m.h.size, &a);
	if (a.offset != 300000 || a.size != 0)
		f->failures++;
	fake_read_reply(f, &m, object, sizeof(object), a.offset, sizeof(object) - a.offset,
			sizeof(object) - a.offset);
	fake_recv(f, &m);
	free(m.payload);
}

struct sinkbuf {
	uint8_t *p;
	size_t len, cap;
};

static int to_buf(void *arg, const void *data, size_t len)
{
	struct sinkbuf *s = arg;
	if (s->len + len > s->cap)
		return DNET_ETOOBIG;
	memcpy(s->p + s->len, data, len);
	s->len += len;
	return 0;
}

static void test_read_resumes(void **state)
{
	(void)state;
	struct fake f;
	fake_start(&f, script_cut_read);
	dnet_client *c = client_for(&f, 5000);
	struct sinkbuf s = {.p = malloc(sizeof(object)), .cap = sizeof(object)};
	struct dnet_object_info info;
	assert_int_equal(dnet_read_stream(c, "k", 1, 0, 0, to_buf, &s, &info), 0);
	assert_int_equal(s.len, sizeof(object));
	assert_memory_equal(s.p, object, sizeof(object));
	assert_int_equal(info.size, sizeof(object));
	dnet_client_free(c);
	fake_stop(&f);
	assert_int_equal(f.failures, 0);
	free(s.p);
}

static void script_full_read(struct fake *f)
{
	struct msg m = {0};
	fake_accept(f);
	if (fake_recv(f, &m))
		return;
	fake_read_reply(f, &m, object, sizeof(object), 0, sizeof(object), sizeof(object));
	fake_recv(f, &m);
	free(m.payload);
}

/* A sink's error aborts the read and is what the caller gets. */
static void test_sink_abort(void **state)
{
	(void)state;
	struct fake f;
	fake_start(&f, script_full_read);
	dnet_client *c = client_for(&f, 5000);
	struct sinkbuf s = {.p = malloc(1000), .cap = 1000};
	assert_int_equal(dnet_read_stream(c, "k", 1, 0, 0, to_buf, &s, NULL), DNET_ETOOBIG);
	dnet_client_free(c);
	fake_stop(&f);
	free(s.p);
}

/* --- early error reply to a write; reconnect; failover ------------------- */

static void script_early_error(struct fake *f)
{
	uint8_t hb[DNET_HDR_SIZE];
	struct msg m = {0};
	fake_accept(f);
	/* the route table first, then the write's header alone */
	do {
		if (dnet_read_full(f->fd, hb, sizeof(hb)))
			return;
		dnet_hdr_decode(hb, sizeof(hb), &m.h);
		if (m.h.cmd == DNET_CMD_ROUTES)
			fake_reply(f, &m, 0, f->routes, f->routes_len);
	} while (m.h.cmd == DNET_CMD_ROUTES);
	/* refuse before reading the payload, then drain it */
	fake_reply(f, &m, DNET_ENOSPC, NULL, 0);
	uint8_t *sink = malloc(m.h.size);
	dnet_read_full(f->fd, sink, m.h.size);
	free(sink);
	/* next request on the same connection still works */
	if (fake_recv(f, &m))
		return;
	uint8_t oi[DNET_OBJ_INFO_SIZE];
	struct dnet_obj_info o = {.size = 7, .timestamp = 9};
	dnet_obj_info_encode(oi, &o);
	fake_reply(f, &m, 0, oi, sizeof(oi));
	/* the peer closes the idle connection ... */
	close(f->fd);
	f->fd = -1;
	/* ... and the client comes back on a new one */
	fake_accept(f);
	if (fake_recv(f, &m))
		return;
	fake_reply(f, &m, 0, oi, sizeof(oi));
	fake_recv(f, &m);
	free(m.payload);
}

static void test_early_error_and_reconnect(void **state)
{
	(void)state;
	struct fake f;
	fake_start(&f, script_early_error);
	dnet_client *c = client_for(&f, 5000);
	struct dnet_object_info info;
	assert_int_equal(dnet_write(c, "k", 1, object, 500000, &info), DNET_ENOSPC);
	assert_int_equal(dnet_lookup(c, "k", 1, &info), 0);
	assert_int_equal(info.size, 7);
	usleep(1200 * 1000); /* idle long enough to be probed before reuse */
	assert_int_equal(dnet_write(c, "k", 1, object, 7, &info), 0);
	assert_int_equal(info.size, 7);
	dnet_client_free(c);
	fake_stop(&f);
}

static void script_ping(struct fake *f)
{
	struct msg m = {0};
	fake_accept(f);
	if (fake_recv(f, &m))
		return;
	fake_reply(f, &m, 0, NULL, 0);
	fake_recv(f, &m);
	free(m.payload);
}

static void test_failover(void **state)
{
	(void)state;
	struct fake f;
	fake_start(&f, script_ping);
	/* a port nobody listens on (bound, not listening) comes first */
	int dead = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
	bind(dead, (struct sockaddr *)&sin, sizeof(sin));
	socklen_t sl = sizeof(sin);
	getsockname(dead, (struct sockaddr *)&sin, &sl);
	char daddr[64];
	snprintf(daddr, sizeof(daddr), "127.0.0.1:%d", ntohs(sin.sin_port));
	dnet_client *c;
	assert_int_equal(dnet_client_new(&c), 0);
	assert_int_equal(dnet_client_add_remote(c, daddr), 0);
	assert_int_equal(dnet_client_add_remote(c, f.addr), 0);
	char node[64];
	assert_int_equal(dnet_ping(c, node), 0);
	assert_string_equal(node, f.addr);
	dnet_client_free(c);
	fake_stop(&f);
	close(dead);

	assert_int_equal(dnet_client_new(&c), 0);
	assert_int_equal(dnet_client_add_remote(c, "not a host:x"), DNET_EADDR);
	assert_int_equal(dnet_ping(c, node), DNET_ENOTCONN);
	dnet_client_free(c);
}

/* --- structured random replies: never a crash, always a status ---------- */

#ifndef RANDOM_ROUNDS
#define RANDOM_ROUNDS 400
#endif
static uint64_t rnd_state = 0x243f6a8885a308d3ull;

static uint64_t rnd(void)
{
	uint64_t x = rnd_state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return rnd_state = x;
}

static void script_random(struct fake *f)
{
	struct msg m = {0};
	while (!f->stop) {
		if (fake_accept(f) < 0)
			break;
		if (f->stop || fake_recv(f, &m))
			continue;
		uint8_t buf[4096];
		struct dnet_cmd_hdr h = m.h;
		h.flags = (rnd() % 8) ? DNET_FLAG_REPLY : (uint16_t)rnd();
		h.status = (rnd() % 4) ? 0 : -(int32_t)(rnd() % 30);
		if (rnd() % 8 == 0)
			h.cmd = (uint8_t)rnd();
		if (rnd() % 16 == 0)
			h.trans = rnd();
		uint64_t body = rnd() % 300;
		h.size = (rnd() % 8) ? body : rnd();
		dnet_hdr_encode(buf, &h);
		if (rnd() % 16 == 0)
			buf[rnd() % DNET_HDR_SIZE] ^= (uint8_t)(1u << (rnd() % 8));
		for (size_t i = 0; i < body; i++)
			buf[DNET_HDR_SIZE + i] = (uint8_t)rnd();
		/* a plausible io_attr for READ replies, sometimes */
		if (m.h.cmd == DNET_CMD_READ && body >= DNET_IO_ATTR_SIZE && rnd() % 2) {
			struct dnet_io_attr io = {.size = body - DNET_IO_ATTR_SIZE,
						  .total_size = rnd() % 1000};
			dnet_io_attr_encode(buf + DNET_HDR_SIZE, &io);
		}
		size_t len = DNET_HDR_SIZE + body;
		if (rnd() % 4 == 0)
			len = rnd() % len; /* truncated */
		dnet_write_full(f->fd, buf, len);
		close(f->fd);
		f->fd = -1;
	}
	free(m.payload);
}

static void test_random_replies(void **state)
{
	(void)state;
	struct fake f;
	fake_start(&f, script_random);
	for (int round = 0; round < RANDOM_ROUNDS; round++) {
		dnet_client *c = client_for(&f, 2000);
		int err;
		void *data = NULL;
		size_t len = 0;
		char *text = NULL;
		struct dnet_object_info info;
		switch (round % 4) {
		case 0:
			err = dnet_lookup(c, "k", 1, &info);
			break;
		case 1:
			err = dnet_read(c, "k", 1, 0, (uint64_t)(round % 3) * 100, &data, &len, &info);
			break;
		case 2:
			err = dnet_stat(c, &text, NULL);
			break;
		default:
			err = dnet_remove(c, "k", 1);
			break;
		}
		/* any status the node sends through (newer nodes may add codes), never > 0 */
		assert_true(err <= 0);
		free(data);
		free(text);
		dnet_client_free(c);
	}
	/* stop the script: flag, then wake its accept() */
	f.stop = 1;
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)f.port),
				  .sin_addr.s_addr = htonl(0x7f000001)};
	connect(fd, (struct sockaddr *)&sin, sizeof(sin));
	fake_stop(&f);
	close(fd);
}

/* --- ring routing -------------------------------------------------------- */

enum { NODE_SERVE = 0, NODE_NOTOWNER, NODE_CLOSE_ONCE, NODE_HANDOFF };

/* NOTOWNER naming f->peer; NODE_HANDOFF adds the hint DIRECT (a previous owner),
 * plain NOTOWNER sends the address alone (older nodes) or with zero hints. */
static void notowner(struct fake *f, const struct msg *m)
{
	uint8_t aw[DNET_ADDR_WIRE_SIZE + 4];
	struct dnet_addr_wire a = {.family = 4, .port = (uint16_t)f->peer->port};
	a.addr[0] = 127;
	a.addr[3] = 1;
	dnet_addr_encode(aw, &a);
	dnet_put_u32(aw + DNET_ADDR_WIRE_SIZE, f->mode == NODE_HANDOFF ? DNET_REDIRECT_DIRECT : 0);
	fake_reply(f, m, DNET_ENOTOWNER, aw,
		   f->mode == NODE_HANDOFF || f->keyed % 2 ? sizeof(aw) : DNET_ADDR_WIRE_SIZE);
}

/* A node: serves one connection until EOF (one more if mode is NODE_CLOSE_ONCE).
 * NODE_SERVE answers keyed requests as a store would (LOOKUP, READ of `object`,
 * WRITE acks); NODE_NOTOWNER redirects every keyed request to f->peer. */
static void script_node(struct fake *f)
{
	struct msg m = {0};
	int conns = f->mode == NODE_CLOSE_ONCE ? 2 : 1;
	for (int k = 0; k < conns; k++) {
		if (fake_accept(f) < 0)
			break;
		while (!fake_recv(f, &m)) {
			int keyed = m.h.cmd == DNET_CMD_WRITE || m.h.cmd == DNET_CMD_READ ||
				    m.h.cmd == DNET_CMD_DEL || m.h.cmd == DNET_CMD_LOOKUP;
			if (!keyed) {
				fake_reply(f, &m, 0, NULL, 0);
				continue;
			}
			f->keyed++;
			if (m.h.flags & DNET_FLAG_DIRECT)
				f->direct++;
			if (f->mode == NODE_NOTOWNER || f->mode == NODE_HANDOFF) {
				notowner(f, &m);
				continue;
			}
			if (f->mode == NODE_CLOSE_ONCE && k == 0)
				break; /* hang up on the first request */
			if (m.h.cmd == DNET_CMD_WRITE) {
				struct dnet_io_attr io;
				dnet_io_attr_decode(m.payload, m.h.size, &io);
				f->writes++;
				f->wrote += io.size;
				if (m.h.flags & DNET_FLAG_DIRECT)
					f->direct_writes++;
				if (io.ioflags & DNET_IO_PREPARE)
					f->prepares++;
				uint8_t oi[DNET_OBJ_INFO_SIZE];
				struct dnet_obj_info o = {.size = io.offset + io.size, .timestamp = 5};
				dnet_obj_info_encode(oi, &o);
				fake_reply(f, &m, 0, oi, sizeof(oi));
			} else if (m.h.cmd == DNET_CMD_READ) {
				struct dnet_io_attr io;
				dnet_io_attr_decode(m.payload, m.h.size, &io);
				uint64_t n = io.size && io.size < 1000 ? io.size : 1000;
				fake_read_reply(f, &m, object, 1000, 0, n, n);
			} else if (m.h.cmd == DNET_CMD_LOOKUP) {
				uint8_t oi[DNET_OBJ_INFO_SIZE];
				struct dnet_obj_info o = {.size = 77, .timestamp = 5};
				dnet_obj_info_encode(oi, &o);
				fake_reply(f, &m, 0, oi, sizeof(oi));
			} else {
				fake_reply(f, &m, 0, NULL, 0);
			}
		}
	}
	free(m.payload);
}

static void fake_start_mode(struct fake *f, int mode)
{
	fake_start_with(f, script_node, mode);
}

/* Ring ids that give key "k" to node `owner` (0 or 1) of two. */
static void ids_for_k(uint8_t ids[2][DNET_ID_SIZE], int owner)
{
	uint8_t k[DNET_ID_SIZE], k1[DNET_ID_SIZE];
	dnet_key_to_id("k", 1, k);
	memcpy(k1, k, sizeof(k1));
	for (int i = DNET_ID_SIZE - 1; i >= 0; i--)
		if (++k1[i] != 0)
			break;
	memcpy(ids[owner], k, DNET_ID_SIZE);      /* greatest id <= k */
	memcpy(ids[1 - owner], k1, DNET_ID_SIZE); /* just above k */
}

static int pending_connection(const struct fake *f)
{
	struct pollfd p = {.fd = f->lfd, .events = POLLIN};
	return poll(&p, 1, 0) > 0;
}

/* The table sends the request straight to the owner; the node we asked for the
 * table sees only ROUTES. */
static void test_route_one_hop(void **state)
{
	(void)state;
	struct fake a, b;
	fake_start_mode(&a, NODE_NOTOWNER);
	fake_start_mode(&b, NODE_SERVE);
	a.peer = &b;
	b.peer = &a;
	uint8_t ids[2][DNET_ID_SIZE];
	ids_for_k(ids, 1);
	struct fake *nodes[2] = {&a, &b};
	table_build(&a, 2, nodes, ids, NULL);
	dnet_client *c = client_for(&a, 5000);
	struct dnet_object_info info;
	assert_int_equal(dnet_lookup(c, "k", 1, &info), 0);
	assert_int_equal(info.size, 77);
	assert_string_equal(info.node, b.addr);
	void *data = NULL;
	size_t len = 0;
	assert_int_equal(dnet_read(c, "k", 1, 0, 0, &data, &len, &info), 0);
	assert_int_equal(len, 1000);
	assert_memory_equal(data, object, 1000);
	free(data);
	assert_int_equal(dnet_write(c, "k", 1, object, 100, &info), 0);
	/* stat goes to the node we were given */
	char *text = NULL, node[64];
	assert_int_equal(dnet_stat(c, &text, node), 0);
	assert_string_equal(node, a.addr);
	free(text);
	struct dnet_route *rt;
	size_t n;
	assert_int_equal(dnet_routes(c, &rt, &n), 0);
	assert_int_equal(n, 3); /* [0, k) a, [k, k] b, (k, max] a */
	assert_string_equal(rt[0].node, a.addr);
	assert_string_equal(rt[1].node, b.addr);
	assert_memory_equal(rt[1].start, ids[1], DNET_ID_SIZE);
	assert_memory_equal(rt[1].end, ids[1], DNET_ID_SIZE);
	assert_string_equal(rt[2].node, a.addr);
	free(rt);
	dnet_client_free(c);
	fake_stop(&a);
	fake_stop(&b);
	assert_int_equal(a.keyed, 0);
	assert_int_equal(b.keyed, 3);
	assert_true(a.nroutes >= 2);
}

/* A node that does not own the key names the owner: the request follows. */
static void test_redirect(void **state)
{
	(void)state;
	struct fake a, b;
	fake_start_mode(&a, NODE_NOTOWNER);
	fake_start_mode(&b, NODE_SERVE);
	a.peer = &b;
	dnet_client *c = client_for(&a, 5000);
	struct dnet_object_info info;
	assert_int_equal(dnet_lookup(c, "k", 1, &info), 0);
	assert_string_equal(info.node, b.addr);
	void *data = NULL;
	size_t len = 0;
	assert_int_equal(dnet_read(c, "k", 1, 0, 0, &data, &len, &info), 0);
	assert_int_equal(len, 1000);
	free(data);
	/* async, several in flight */
	struct got g[4];
	memset(g, 0, sizeof(g));
	uint8_t id[64];
	dnet_key_to_id("k", 1, id);
	for (int i = 0; i < 4; i++)
		assert_int_equal(dnet_submit_read_id(c, id, 0, 10, on_read, &g[i]), 0);
	while (dnet_inflight(c))
		assert_true(dnet_poll(c, -1) >= 0);
	for (int i = 0; i < 4; i++) {
		assert_int_equal(g[i].calls, 1);
		assert_int_equal(g[i].status, 0);
		assert_true(g[i].same);
	}
	dnet_client_free(c);
	fake_stop(&a);
	fake_stop(&b);
	assert_int_equal(a.keyed, 6);
	assert_int_equal(b.keyed, 6);
}

/* Nodes naming one another round a cycle (A -> B -> X -> A ...): no NOTOWNER sends
 * a request back to the node that sent it there, so the client gives up after
 * DNET_MAX_REDIRECTS (5). */
static void test_redirect_limit(void **state)
{
	(void)state;
	struct fake a, b, x;
	fake_start_mode(&a, NODE_NOTOWNER);
	fake_start_mode(&b, NODE_NOTOWNER);
	fake_start_mode(&x, NODE_NOTOWNER);
	a.peer = &b;
	b.peer = &x;
	x.peer = &a;
	dnet_client *c = client_for(&a, 5000);
	struct dnet_object_info info;
	assert_int_equal(dnet_lookup(c, "k", 1, &info), DNET_ENOTOWNER);
	assert_int_equal(dnet_write(c, "k", 1, object, 10, &info), DNET_ENOTOWNER);
	dnet_client_free(c);
	fake_stop(&a);
	fake_stop(&b);
	fake_stop(&x);
	/* twice: 1 + 5 redirects */
	assert_int_equal(a.keyed + b.keyed + x.keyed, 2 * (1 + DNET_MAX_REDIRECTS));
	assert_int_equal(DNET_MAX_REDIRECTS, 5);
}

/* Two nodes naming each other (their rings disagree): after the first redirect each
 * NOTOWNER sends the request back to the node that sent it there. Such bounces are
 * not redirects: the client waits 10 ms, 20 ms, ... before each resend, at most
 * DNET_MAX_BOUNCES times (2.55 s in all), then gives up with NOTOWNER. A blocking
 * call and an async request (dnet_poll) wait out the bounces together. */
static void test_redirect_bounce_limit(void **state)
{
	(void)state;
	struct fake a, b;
	fake_start_mode(&a, NODE_NOTOWNER);
	fake_start_mode(&b, NODE_NOTOWNER);
	a.peer = &b;
	b.peer = &a;
	dnet_client *c = client_for(&a, 5000);
	uint8_t id[64];
	dnet_key_to_id("k", 1, id);
	struct got g = {0};
	uint64_t t0 = dnet_now_mono_ns();
	assert_int_equal(dnet_submit_read_id(c, id, 0, 10, on_read, &g), 0);
	struct dnet_object_info info;
	assert_int_equal(dnet_lookup(c, "k", 1, &info), DNET_ENOTOWNER);
	while (dnet_inflight(c))
		assert_true(dnet_poll(c, -1) >= 0);
	uint64_t took = dnet_now_mono_ns() - t0;
	assert_int_equal(g.calls, 1);
	assert_int_equal(g.status, DNET_ENOTOWNER);
	assert_true(took >= DNET_BOUNCE_WAIT_NS * ((1u << DNET_MAX_BOUNCES) - 1));
	assert_true(took < 20000000000ull);
	dnet_client_free(c);
	fake_stop(&a);
	fake_stop(&b);
	/* each: the first request, 1 redirect, 8 bounces */
	assert_int_equal(a.keyed + b.keyed, 2 * (2 + DNET_MAX_BOUNCES));
	assert_int_equal(DNET_MAX_BOUNCES, 8);
}

/* A bounce's wait that would outlast the request's timeout: the request times out
 * (DNET_ETIMEDOUT) at its deadline, as one whose node does not answer would. With
 * 600 ms, the waits of 10 .. 320 ms fit (with 280 ms to spare for the fake node's
 * answer on a loaded machine), the next (640 ms) never does. */
static void test_redirect_bounce_timeout(void **state)
{
	(void)state;
	struct fake a, b;
	fake_start_mode(&a, NODE_NOTOWNER);
	fake_start_mode(&b, NODE_NOTOWNER);
	a.peer = &b;
	b.peer = &a;
	dnet_client *c = client_for(&a, 600);
	struct dnet_object_info info;
	uint64_t t0 = dnet_now_mono_ns();
	assert_int_equal(dnet_lookup(c, "k", 1, &info), DNET_ETIMEDOUT);
	/* 630 ms of waits, then the last NOTOWNER's 600 ms */
	assert_true(dnet_now_mono_ns() - t0 >= 1230000000ull);
	dnet_client_free(c);
	fake_stop(&a);
	fake_stop(&b);
	assert_int_equal(a.keyed + b.keyed, 2 + 6); /* 1 request, 1 redirect, 6 bounces */
}

/* An async request's callback is due (its reply came while a blocking call waited)
 * and the next blocking call waits for a node that does not answer: it sleeps until
 * its timeout instead of spinning because a callback is due. */
static void test_wait_with_callback_due(void **state)
{
	(void)state;
	struct fake a, b;
	fake_start_mode(&a, NODE_SERVE);
	fake_start(&b, script_silent);
	uint8_t ids[2][DNET_ID_SIZE];
	ids_for_k(ids, 1); /* "k" to b (silent), every other key to a */
	struct fake *nodes[2] = {&a, &b};
	table_build(&a, 2, nodes, ids, NULL);
	dnet_client *c = client_for(&a, 500);
	uint8_t id[64];
	dnet_key_to_id("other", 5, id);
	struct got g = {0};
	assert_int_equal(dnet_submit_read_id(c, id, 0, 10, on_read, &g), 0);
	struct dnet_object_info info;
	/* answered after the read, on the same connection: the read is done */
	assert_int_equal(dnet_lookup(c, "other", 5, &info), 0);
	assert_int_equal(g.calls, 0);
	struct rusage ru0, ru1;
	getrusage(RUSAGE_SELF, &ru0);
	assert_int_equal(dnet_lookup(c, "k", 1, &info), DNET_ETIMEDOUT);
	getrusage(RUSAGE_SELF, &ru1);
	double cpu = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) +
		     (double)(ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
		     (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6 +
		     (double)(ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
	assert_true(cpu < 0.2); /* spinning: about the 0.5 s it waited */
	assert_int_equal(dnet_poll(c, 0), 1);
	assert_int_equal(g.calls, 1);
	assert_int_equal(g.status, 0);
	dnet_client_free(c);
	fake_stop(&a);
	fake_stop(&b);
}

/* While objects move, the owner sends reads to the previous owner with the hint
 * DIRECT: the client resends there with DNET_FLAG_DIRECT. */
static void test_handoff_direct(void **state)
{
	(void)state;
	struct fake a, b;
	fake_start_mode(&a, NODE_HANDOFF);
	fake_start_mode(&b, NODE_SERVE);
	a.peer = &b;
	dnet_client *c = client_for(&a, 5000);
	struct dnet_object_info info;
	assert_int_equal(dnet_lookup(c, "k", 1, &info), 0);
	assert_string_equal(info.node, b.addr);
	/* the next request is routed as before (not DIRECT) */
	assert_int_equal(dnet_remove(c, "k", 1), 0);
	dnet_client_free(c);
	fake_stop(&a);
	fake_stop(&b);
	assert_int_equal(a.keyed, 2);
	assert_int_equal(a.direct, 0);
	assert_int_equal(b.keyed, 2);
	assert_int_equal(b.direct, 2);

	/* previous owners that send us on and on: the object is nowhere */
	fake_start_mode(&a, NODE_HANDOFF);
	fake_start_mode(&b, NODE_HANDOFF);
	a.peer = &b;
	b.peer = &a;
	c = client_for(&a, 5000);
	assert_int_equal(dnet_lookup(c, "k", 1, &info), DNET_ENOENT);
	dnet_client_free(c);
	fake_stop(&a);
	fake_stop(&b);
	assert_int_equal(a.keyed + b.keyed, 1 + DNET_MAX_REDIRECTS);
}

/* A node the table marks down fails at once, and is not even connected to. */
static void test_down_fails_fast(void **state)
{
	(void)state;
	struct fake a, b;
	fake_start_mode(&a, NODE_SERVE);
	fake_start_mode(&b, NODE_SERVE);
	uint8_t ids[2][DNET_ID_SIZE];
	ids_for_k(ids, 1);
	struct fake *nodes[2] = {&a, &b};
	uint32_t states[2] = {DNET_NODE_UP, DNET_NODE_DOWN};
	table_build(&a, 2, nodes, ids, states);
	dnet_client *c = client_for(&a, 5000);
	uint64_t t = dnet_now_mono_ns();
	struct dnet_object_info info;
	assert_int_equal(dnet_lookup(c, "k", 1, &info), DNET_ENODEDOWN);
	assert_true(dnet_now_mono_ns() - t < 1000000000ull);
	assert_string_equal(dnet_client_node(c), b.addr);
	assert_false(pending_connection(&b));
	/* other keys still work */
	assert_int_equal(dnet_lookup(c, "other key", 9, &info), 0);
	assert_string_equal(info.node, a.addr);
	struct dnet_route *rt;
	size_t n;
	assert_int_equal(dnet_routes(c, &rt, &n), 0);
	assert_int_equal(n, 3);
	assert_int_equal(rt[1].state, DNET_ROUTE_DOWN);
	assert_int_equal(rt[0].state, DNET_ROUTE_UP);
	free(rt);
	dnet_client_free(c);
	/* b's thread waits in accept(): wake it */
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)b.port),
				  .sin_addr.s_addr = htonl(0x7f000001)};
	connect(fd, (struct sockaddr *)&sin, sizeof(sin));
	close(fd);
	fake_stop(&a);
	fake_stop(&b);
}

/* A chunked upload redirected at its PREPARE moves whole to the owner; its later
 * chunks go there with DIRECT (the owner keeps the upload's state). */
static void test_upload_follows_redirect(void **state)
{
	(void)state;
	struct fake a, b;
	fake_start_mode(&a, NODE_NOTOWNER);
	fake_start_mode(&b, NODE_SERVE);
	a.peer = &b;
	size_t size = 2 * DNET_CHUNK_SIZE + 12345;
	uint8_t *big = calloc(1, size);
	dnet_client *c = client_for(&a, 10000);
	struct dnet_object_info info;
	assert_int_equal(dnet_write(c, "k", 1, big, size, &info), 0);
	assert_int_equal(info.size, size);
	assert_string_equal(info.node, b.addr);
	dnet_client_free(c);
	fake_stop(&a);
	fake_stop(&b);
	free(big);
	assert_int_equal(a.keyed, 1); /* only the PREPARE went there */
	assert_int_equal(b.writes, 3);
	assert_int_equal(b.prepares, 1);
	assert_int_equal(b.direct_writes, 2);
	assert_int_equal(b.wrote, size);
}

/* A connection breaking under a read: resent (fresh route lookup) on a new one.
 * Under a write that was sent: not resent. */
static void test_resend_after_break(void **state)
{
	(void)state;
	struct fake a;
	fake_start_mode(&a, NODE_CLOSE_ONCE);
	dnet_client *c = client_for(&a, 5000);
	void *data = NULL;
	size_t len = 0;
	assert_int_equal(dnet_read(c, "k", 1, 0, 0, &data, &len, NULL), 0);
	assert_int_equal(len, 1000);
	free(data);
	dnet_client_free(c);
	fake_stop(&a);
	assert_int_equal(a.keyed, 2);

	uint8_t id[64];
	dnet_key_to_id("k", 1, id);
	struct got g = {0};
	fake_start_mode(&a, NODE_CLOSE_ONCE);
	c = client_for(&a, 5000);
	assert_int_equal(dnet_submit_write_id(c, id, object, 100, on_read, &g), 0);
	while (dnet_inflight(c))
		assert_true(dnet_poll(c, -1) >= 0);
	assert_int_equal(g.calls, 1);
	assert_int_equal(g.status, DNET_ECONNRESET);
	dnet_client_free(c);
	/* wake the script's second accept() */
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)a.port),
				  .sin_addr.s_addr = htonl(0x7f000001)};
	connect(fd, (struct sockaddr *)&sin, sizeof(sin));
	close(fd);
	fake_stop(&a);
	assert_int_equal(a.keyed, 1);
	assert_int_equal(a.writes, 0);
}

int main(void)
{
	/* The fakes write into sockets the client may close on purpose. */
	signal(SIGPIPE, SIG_IGN);
	fill_object();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_malformed_replies),
		cmocka_unit_test(test_malformed_read_replies),
		cmocka_unit_test(test_out_of_order),
		cmocka_unit_test(test_timeout),
		cmocka_unit_test(test_read_resumes),
		cmocka_unit_test(test_sink_abort),
		cmocka_unit_test(test_early_error_and_reconnect),
		cmocka_unit_test(test_failover),
		cmocka_unit_test(test_random_replies),
		cmocka_unit_test(test_route_one_hop),
		cmocka_unit_test(test_redirect),
		cmocka_unit_test(test_redirect_limit),
		cmocka_unit_test(test_redirect_bounce_limit),
		cmocka_unit_test(test_redirect_bounce_timeout),
		cmocka_unit_test(test_wait_with_callback_due),
		cmocka_unit_test(test_handoff_direct),
		cmocka_unit_test(test_down_fails_fast),
		cmocka_unit_test(test_upload_follows_redirect),
		cmocka_unit_test(test_resend_after_break),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
