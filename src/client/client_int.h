/* client_int.h - internals of the client library: the handle, its connections, and
 * requests moving through a connection's output queue and in-flight table. */
#ifndef DNET_CLIENT_INT_H
#define DNET_CLIENT_INT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "elliptics/elliptics.h"
#include "common/proto.h"
#include "common/ring.h"
#include "common/util.h"

/* Non-READ reply payloads (obj_info, stat text, error details) are bounded. */
#define DNET_CLIENT_MAX_REPLY (1u << 20)
/* A ROUTES reply (the whole route table) may be larger. */
#define DNET_CLIENT_MAX_ROUTES (64u << 20)
/* An error reply's payload (NOTOWNER: the owner's address) is kept up to this size. */
#define DNET_CLIENT_MAX_ERRINFO 4096u
/* Routing: a request follows at most this many NOTOWNER redirects. */
#define DNET_MAX_REDIRECTS 5
/* A plain NOTOWNER that sends a request back to the node that redirected it (two
 * rings disagree for a moment while a node joins or leaves) is a bounce: resent
 * after DNET_BOUNCE_WAIT_NS, doubling each time, at most DNET_MAX_BOUNCES times
 * (2.55 s in all), not counted as a redirect. */
#define DNET_BOUNCE_WAIT_NS (10ull * 1000000ull)
#define DNET_MAX_BOUNCES 8
/* The route table is refreshed (in the background) when older than this. */
#define DNET_ROUTES_TTL_NS (5ull * 1000000000ull)
/* After a failed connect to a ring node, requests to it fail at once for this long. */
#define DNET_NODE_BACKOFF_NS (1000ull * 1000000ull)
/* Connect timeout to ring nodes (the -r remotes use the request timeout). */
#define DNET_NODE_CONNECT_MS 5000
#define DNET_CLIENT_IBUF (64u << 10)
#define DNET_CLIENT_SBUF (1u << 20)

enum dnet_req_flags {
	DNET_REQ_SYNC = 1 << 0,    /* a blocking call waits for it: no callback, caller frees */
	DNET_REQ_DONE = 1 << 1,    /* completed; status/info valid */
	DNET_REQ_SENT = 1 << 2,    /* every byte of the request went out */
	DNET_REQ_REPLIED = 1 << 3, /* reply seen before the request was fully sent */
	DNET_REQ_QUEUED = 1 << 4,  /* on the connection's output queue */
	DNET_REQ_RETRY = 1 << 5,   /* on the handle's retry list */
};

/* What the engine may do with a request on its own (r->reroute). */
enum dnet_reroute {
	DNET_RR_REDIRECT = 1 << 0, /* follow NOTOWNER redirects to the named owner */
	DNET_RR_RETRY = 1 << 1,    /* resend (fresh route lookup) when its connection breaks:
				    * reads/lookups always, others only if never sent */
	DNET_RR_KEYED = 1 << 2,    /* routed by id (else: to the bootstrap node) */
};

struct dnet_conn;
struct dnet_req;
typedef void (*dnet_req_hook)(struct dnet_req *r);

struct dnet_req {
	struct dnet_req *out_next;    /* connection output queue */
	struct dnet_req *prev, *next; /* connection's list of live requests */
	struct dnet_req *id_next;     /* handle's hash of live requests by object id */
	struct dnet_req *done_next;   /* completed async requests awaiting callbacks */
	struct dnet_conn *conn;
	uint64_t trans;
	uint32_t slot;
	uint32_t flags;
	uint8_t cmd;
	uint8_t reroute;   /* DNET_RR_* */
	uint8_t redirects; /* NOTOWNER redirects followed */
	uint8_t retries;   /* resends after a broken connection */
	uint16_t hflags;   /* header flags it is sent with */
	uint16_t xflags;   /* and always these (DNET_FLAG_STREAM_VERIFY) */
	uint8_t id[DNET_ID_SIZE];
	uint64_t deadline; /* monotonic ns; pushed forward while its bytes move */
	struct dnet_req *retry_next;
	struct dnet_node *redirect_to;   /* NOTOWNER: where to resend */
	struct dnet_node *redirect_from; /* the node whose NOTOWNER sent it where it is */
	uint8_t bounces;   /* NOTOWNERs that sent it back there (DNET_MAX_BOUNCES) */
	uint64_t retry_at; /* on the retry list: not resent before (mono ns; 0: at once) */
	struct dnet_node *target;      /* copies: this node, whatever the routes say */
	struct dnet_conn **stick;      /* chunked uploads: the connection all chunks use */

	/* Output: obuf[0..olen) then data_len bytes from `data` or from file_fd. */
	uint8_t obuf[DNET_HDR_SIZE + DNET_IO_ATTR_SIZE];
	uint32_t olen;
	const uint8_t *data;
	int file_fd;
	uint64_t file_off;
	uint64_t file_off0; /* file_off when first submitted (a resend starts over) */
	uint64_t data_len;
	uint64_t out_done;

	/* Reply. */
	int status;
	uint64_t rd_size;            /* READ: size asked for (0 = to the end) */
	struct dnet_io_attr rio;     /* READ: reply io_attr */
	int have_rio;
	uint8_t *rbuf;               /* reply payload (non-READ) or data (READ to memory) */
	size_t rlen, rgot;
	dnet_sink_fn sink;           /* READ: stream data here instead of rbuf */
	void *sink_arg;
	uint64_t delivered;          /* READ: data bytes received so far */
	struct dnet_object_info info;
	int have_info;

	dnet_done_fn done;
	void *done_arg;
	dnet_req_hook hook; /* internal completion (chunked uploads); runs inside the loop */
	void *hook_arg;
	void *hook_arg2;
	uint64_t hook_val;
};

enum dnet_in_state {
	DNET_IN_HDR = 0,
	DNET_IN_BUF,      /* non-READ payload into r->rbuf */
	DNET_IN_READ_IO,  /* READ reply: its io_attr */
	DNET_IN_READ_DATA,
	DNET_IN_DISCARD,  /* payload of an error reply */
};

/* A node the handle talks to: the bootstrap node (the first -r remote that
 * answers) or a ring node (by its advertised address), each with its own
 * connections (c->nconns of them, made lazily). */
struct dnet_node {
	struct dnet_addr_wire addr; /* ring nodes; the bootstrap's once connected */
	int have_addr;
	int is_boot;
	char name[64]; /* HOST:PORT */
	struct dnet_conn **conns; /* c->nconns slots, NULL until used */
	int rr;
	uint64_t fail_until; /* ring nodes: a connect failed; fail fast until then */
	int fail_err;
};

struct dnet_conn {
	int fd;
	struct ssl_st *ssl; /* TLS session (NULL: plaintext) */
	uint8_t *tls_wbuf;  /* output staged for SSL_write (retried from the same bytes) */
	size_t tls_wlen, tls_woff;
	int tls_rd_want_out; /* SSL_read must send before it can go on */
	int tls_required;    /* a plaintext connection the node told to use TLS */
	int tls_status;	     /* a TLS failure the last read saw (DNET_ETLSCERT) */
	int dropping;
	struct dnet_node *owner_node;
	char node[64]; /* HOST:PORT we connected to */
	struct dnet_req *out_head, *out_tail;
	int pollout;  /* EPOLLOUT armed */
	int flushing; /* on the handle's flush list */
	struct dnet_req *reqs; /* live requests (queued or awaiting reply) */
	size_t inflight;
	uint64_t last_active;

	uint8_t *ibuf;
	size_t istart, iend;
	int in_state;
	struct dnet_cmd_hdr in_hdr;
	struct dnet_req *in_req;
	uint64_t in_left;
	uint8_t in_io[DNET_IO_ATTR_SIZE];
	size_t in_io_got;
	int lowat; /* SO_RCVLOWAT set on fd (0: the default, 1 byte) */
};

struct dnet_client {
	char **remotes;
	int nremotes;
	int cur_remote;
	int timeout_ms;
	int epfd;

	int nconns; /* per node */
	struct dnet_node **nodes;
	int nnodes;
	struct dnet_node *boot;
	struct dnet_conn **all; /* every connection made, for expiry and teardown */
	size_t nall, all_cap;

	struct dnet_conn **flush_list; /* all_cap entries */
	size_t nflush;

	/* Route table (ring.h) as fetched from a node. */
	int ring_state;   /* DNET_RING_* */
	struct dnet_ring ring;
	struct dnet_node **ring_map; /* ring node index -> our node (lazily) */
	int ring_single;  /* one node owns the whole ring: it is the bootstrap node */
	uint64_t ring_time;          /* mono ns of the last fetch attempt */
	struct dnet_req *ring_req;   /* background refresh in flight */
	unsigned ring_src;           /* rotates refresh sources when the bootstrap fails */
	struct dnet_req *retry_head, *retry_tail; /* requests to resend */
	uint64_t ncompleted; /* requests completed (any way) since the start */
	uint64_t retry_wake; /* the retry list needs the loop by then (mono ns; 0: empty) */
	struct dnet_node *last; /* where the last request went (for messages) */

	struct dnet_req **slots;
	uint32_t nslots;
	uint32_t *free_slots;
	uint32_t nfree;
	uint32_t gen;
	size_t inflight;      /* requests on the wire (chunks count one each) */
	size_t user_inflight; /* async submissions whose callback has not run */

	struct dnet_req **id_hash;
	size_t id_hash_size;

	struct dnet_req *done_head, *done_tail;
	struct dnet_req *req_cache;
	size_t req_cache_n;

	uint64_t next_deadline;
	/* The clock read once per loop round, right after epoll_wait, for deadlines and
	 * idle times set while the round's events and then its callbacks run (a request
	 * submitted from a callback): one clock_gettime a round instead of several per
	 * request. Valid only while now_ok; any other time reads the clock. */
	uint64_t now_ns;
	int now_ok;
	uint8_t *sbuf; /* streaming read scratch */

	void (*progress)(void *arg, uint64_t done, uint64_t total);
	void *progress_arg;
	int stream_verify; /* streamed reads are verified as they are sent */

	/* Copies (replica.c). */
	int w, r;       /* write quorum and read copies asked for (0: defaults) */
	uint64_t hlc;   /* last version made or seen, low bits clear */
	uint16_t tag;   /* this handle's writer tag (version bits 1..11) */
	struct dnet_copy_status *last_copies; /* per-copy results of the last call */
	int nlast_copies;
	uint64_t repairs; /* read repairs sent */
	char key_name[65], key_secret[257]; /* dnet_client_set_key (empty: none) */
	struct ssl_ctx_st *tls;		    /* dnet_client_set_tls (NULL: plaintext) */
	char tls_err[512];
};

/* Where an object's copies go: the home nodes (copy 0..homes-1), then fallback
 * nodes that stand in for homes that are down. */
#define DNET_PLAN_MAX (DNET_MAX_COPIES + 4)
struct dnet_plan {
	int n, homes;
	struct dnet_node *node[DNET_PLAN_MAX];
	int down[DNET_PLAN_MAX]; /* the (fresh) table says it is down */
};
/* 1 and the plan when the ring forces more than one copy on more than one node;
 * 0 when requests go the one-owner way. */
int dnet__plan(dnet_client *c, const uint8_t *id, struct dnet_plan *p);
/* The first fallback of p neither used nor down (a stand-in for a down home), or -1. */
int dnet__next_standin(const struct dnet_plan *p, const int *used);
/* One copy's outcome, for dnet_last_copies(). */
void dnet__copy_status(struct dnet_copy_status *st, int copy, int standin, int status,
		       uint64_t version, const char *node);
/* client.c */
struct dnet_req *dnet__req_make(dnet_client *c, int cmd, const uint8_t *id);
void dnet__req_set_io(struct dnet_req *r, const struct dnet_io_attr *io);
/* replica.c */
uint64_t dnet__hlc_next(dnet_client *c, int tomb);
void dnet__hlc_observe(dnet_client *c, uint64_t v);
int dnet__quorum(const dnet_client *c, int homes);
int dnet__unreachable(int status);
void dnet__set_last_copies(dnet_client *c, const struct dnet_copy_status *res, int n);
/* Replicated operations: blocking (parent NULL) or completing an async parent. */
int dnet__rep_write(dnet_client *c, const struct dnet_plan *plan, const uint8_t *id,
		    const void *data, int fd, uint64_t fd_off, uint64_t len,
		    struct dnet_object_info *info, struct dnet_req *parent);
int dnet__rep_remove(dnet_client *c, const struct dnet_plan *plan, const uint8_t *id,
		     struct dnet_req *parent);
int dnet__rep_read(dnet_client *c, const struct dnet_plan *plan, const uint8_t *id,
		   uint64_t offset, uint64_t size, void **data, size_t *len,
		   struct dnet_object_info *info, struct dnet_req *parent);
/* all: ask every home at once (dnet_last_copies then lists each). */
int dnet__rep_lookup(dnet_client *c, const struct dnet_plan *plan, const uint8_t *id, int all,
		     struct dnet_object_info *info, struct dnet_req *parent);

enum { DNET_RING_UNKNOWN = 0, DNET_RING_HAVE, DNET_RING_NONE };

/* conn.c: the engine. */
struct dnet_req *dnet__req_new(dnet_client *c);
void dnet__req_free(dnet_client *c, struct dnet_req *r);
/* route.c: pick (and connect) a connection for r: keyed requests go to the owner
 * of r->id, others to the bootstrap node. NULL with *err set on failure. */
struct dnet_conn *dnet__pick_conn(dnet_client *c, struct dnet_req *r, int *err);
/* A connection to node n (made if needed); `id` keeps one object's requests on one
 * connection. */
struct dnet_conn *dnet__node_conn(dnet_client *c, struct dnet_node *n, const uint8_t *id, int *err);
/* Node by wire address (created if new); NULL on ENOMEM. via: address a wildcard
 * address is taken relative to. */
struct dnet_node *dnet__node_by_addr(dnet_client *c, const struct dnet_addr_wire *a,
				     const char *via);
struct dnet_node *dnet__boot_node(dnet_client *c);
/* Fetch the route table from the bootstrap node now (blocking). */
int dnet__routes_fetch(dnet_client *c);
/* Start a background refresh (from `from`, or a source of our choosing) unless one runs. */
void dnet__routes_refresh(dnet_client *c, struct dnet_node *from);
void dnet__routes_free(dnet_client *c);
/* Connect conn (of node n): the bootstrap node tries the remotes in turn. */
int dnet__conn_connect(dnet_client *c, struct dnet_conn *conn);
/* Encode the header for r (cmd, id; size = olen + data_len) and queue it on conn.
 * obuf must hold the payload prefix at offset DNET_HDR_SIZE, olen counting only it. */
int dnet__submit(dnet_client *c, struct dnet_conn *conn, struct dnet_req *r, uint16_t flags);
/* One round of IO: flush, wait up to timeout_ms (-1: until the nearest deadline), read,
 * expire. Returns 0 or DNET_ESYS. */
int dnet__loop_once(dnet_client *c, int timeout_ms);
/* Wait until r is DONE. */
void dnet__wait(dnet_client *c, struct dnet_req *r);
int dnet__run_callbacks(dnet_client *c);
/* Queue an async request that never went on the wire (e.g. an upload's parent) for
 * its callback. */
void dnet__req_finish(dnet_client *c, struct dnet_req *r, int status);
void dnet__conn_drop(dnet_client *c, struct dnet_conn *conn, int status);
/* Drop every connection (status to their requests) and forget them; nodes stay. */
void dnet__conns_free(dnet_client *c);
/* Resend requests waiting on the retry list (redirects, broken connections). */
void dnet__run_retries(dnet_client *c);
void dnet__addr_wire_str(const struct dnet_addr_wire *a, const char *via, char *out, size_t len);

/* Now, for deadlines and idle times: see dnet_client.now_ns. */
static inline uint64_t dnet__now(const dnet_client *c)
{
	return c->now_ok ? c->now_ns : dnet_now_mono_ns();
}

/* Sends what is queued on every connection (requests submitted since). */
void dnet__flush_all(dnet_client *c);

#endif
