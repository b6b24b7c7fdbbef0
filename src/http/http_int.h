/* http_int.h - internals shared by the files of src/http: the server object, the
 * route table, responses, and the ring page's load collector. */
#ifndef DNET_HTTP_INT_H
#define DNET_HTTP_INT_H

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "common/util.h"
#include "http.h"
#include "server/peer.h"
#include "server/server.h"

/* A response built by a route handler. body is malloc()ed (owned by the response)
 * unless static_body is set. */
struct dnet_http_resp {
	int status;
	const char *ctype;
	char *body;
	size_t len;
	int static_body;
	const char *extra; /* extra header lines ("Name: value\r\n"), or NULL */
};

struct dnet_http;
typedef void (*dnet_http_handler_fn)(struct dnet_http *h, const struct dnet_http_req *req,
				     struct dnet_http_resp *resp);

/* A route: a path and the methods it answers (others get 405 with Allow). A route
 * with a body callback receives the request body as it arrives (decoded if
 * chunked), up to max_body bytes; routes without one accept only small bodies,
 * which are read and dropped. The S3 gateway registers its routes here. */
struct dnet_http_route {
	const char *path;
	unsigned methods; /* bit (1 << DNET_HTTP_*) */
	const char *allow;
	dnet_http_handler_fn handler;
	int (*body)(struct dnet_http *h, const uint8_t *data, size_t len);
	uint64_t max_body;
};

/* Embedded static files (generated from www/ at build time by src/http/embed.c). */
struct dnet_http_asset {
	const char *path;
	const char *ctype;
	const unsigned char *data;
	size_t len;
};
extern const struct dnet_http_asset dnet_http_assets[];
extern const size_t dnet_http_nassets;

/* Per-node load and disk figures for the ring page, fetched with STAT. */
struct dnet_http_load {
	uint8_t node_id[DNET_ID_SIZE];
	int have;      /* at least one sample */
	int reachable; /* the last attempt answered */
	uint64_t sample_ns;
	uint64_t req_total;
	double ops; /* requests/s between the last two samples; < 0 unknown */
	uint64_t objects, object_bytes, disk_bytes, disk_free;
};

/* One HTTP connection (httpd.c; the S3 gateway borrows it while it serves a
 * request: fd, buf/len, req). */
/* Connection states; H_GW: handed to the S3 gateway's threads (s3.c). */
enum { H_HEAD, H_BODY, H_WRITE, H_LINGER, H_GW };

struct dnet_http_conn {
	struct dnet_http_conn *prev, *next;
	int fd;
	int state;
	int after_write; /* H_HEAD, H_BODY (after 100 Continue) or H_LINGER */
	int keep_alive;
	char peer[64];
	char *buf;
	size_t len;	/* bytes in buf */
	size_t checked; /* bytes of buf already looked at for the end of a head */
	struct dnet_http_req req;
	const struct dnet_http_route *route;
	int status_pending; /* > 0: answer with this error once the body is read */
	uint64_t body_left;
	uint64_t body_got;
	struct dnet_http_chunked ch;
	char *out;
	size_t out_len, out_off;
	uint64_t deadline_ns;
	char extra[128]; /* extra response header lines */
	int evicted;	 /* closed to make room; freed by the deadline check */
};


/* Room for a whole head plus at least this much body per read. */
#define DNET_HTTP_BUF_CAP (DNET_HTTP_MAX_HEAD + 16384)

struct dnet_s3;

struct dnet_http {
	struct dnet_server *s;
	int listen_fd, epfd, stop_fd;
	/* The S3 gateway (s3.c) and the connections it hands back (keep-alive). */
	struct dnet_s3 *s3;
	int back_fd;
	pthread_mutex_t back_lock;
	struct dnet_http_conn *back;
	pthread_t thread;
	int started;
	struct dnet_http_conn *conns; /* newest first */
	int nconns;
	int nevicted; /* of which: marked for closing to make room */

	/* Ring page load collector: a thread of its own, so the event loop never waits
	 * on another node. Runs only while the page is being looked at. */
	pthread_t coll_thread;
	int coll_started;
	pthread_mutex_t lock; /* guards the fields below */
	pthread_cond_t cond;
	int coll_stop;
	uint64_t wanted_ns; /* last ring.json request */
	struct dnet_http_load *loads;
	size_t nloads, loads_cap;
};

/* httpd.c, for the gateway: give a connection back to the loop (buf holds only
 * bytes after the finished request), or close and free it. */
void dnet_http_conn_back(struct dnet_http *h, struct dnet_http_conn *c);
void dnet_http_conn_release(struct dnet_http *h, struct dnet_http_conn *c);

/* metrics.c */
char *dnet_http_metrics(struct dnet_server *s, size_t *len);
/* ring.c */
int dnet_http_ring_start(struct dnet_http *h);
void dnet_http_ring_stop(struct dnet_http *h);
char *dnet_http_ring_json(struct dnet_http *h, size_t *len);
/* Parse the STAT text into a load record (sets have, reachable, sample_ns). */
void dnet_http_load_parse(struct dnet_http_load *l, const char *text, size_t len, uint64_t now_ns);

#endif
