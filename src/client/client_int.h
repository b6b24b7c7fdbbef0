/* client_int.h - internals of the client library: the handle, its connections, and
 * requests moving through a connection's output queue and in-flight table. */
#ifndef DNET_CLIENT_INT_H
#define DNET_CLIENT_INT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "elliptics/elliptics.h"
#include "common/proto.h"

/* Non-READ reply payloads (obj_info, stat text, error details) are bounded. */
#define DNET_CLIENT_MAX_REPLY (1u << 20)
#define DNET_CLIENT_IBUF (64u << 10)
#define DNET_CLIENT_SBUF (1u << 20)

enum dnet_req_flags {
	DNET_REQ_SYNC = 1 << 0,    /* a blocking call waits for it: no callback, caller frees */
	DNET_REQ_DONE = 1 << 1,    /* completed; status/info valid */
	DNET_REQ_SENT = 1 << 2,    /* every byte of the request went out */
	DNET_REQ_REPLIED = 1 << 3, /* reply seen before the request was fully sent */
	DNET_REQ_QUEUED = 1 << 4,  /* on the connection's output queue */
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
	uint8_t id[DNET_ID_SIZE];
	uint64_t deadline; /* monotonic ns; pushed forward while its bytes move */

	/* Output: obuf[0..olen) then data_len bytes from `data` or from file_fd. */
	uint8_t obuf[DNET_HDR_SIZE + DNET_IO_ATTR_SIZE];
	uint32_t olen;
	const uint8_t *data;
	int file_fd;
	uint64_t file_off;
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
	uint64_t hook_val;
};

enum dnet_in_state {
	DNET_IN_HDR = 0,
	DNET_IN_BUF,      /* non-READ payload into r->rbuf */
	DNET_IN_READ_IO,  /* READ reply: its io_attr */
	DNET_IN_READ_DATA,
	DNET_IN_DISCARD,  /* payload of an error reply */
};

struct dnet_conn {
	int fd;
	int idx;
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
};

struct dnet_client {
	char **remotes;
	int nremotes;
	int cur_remote;
	int timeout_ms;
	int epfd;

	struct dnet_conn *conns;
	int nconns;
	int rr;

	int *flush_list;
	int nflush;

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
	uint8_t *sbuf; /* streaming read scratch */

	void (*progress)(void *arg, uint64_t done, uint64_t total);
	void *progress_arg;
};

/* conn.c: the engine. */
struct dnet_req *dnet__req_new(dnet_client *c);
void dnet__req_free(dnet_client *c, struct dnet_req *r);
/* Pick (and connect) a connection for `id`; NULL with *err set on failure. */
struct dnet_conn *dnet__pick_conn(dnet_client *c, const uint8_t *id, int *err);
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
int dnet__conns_init(dnet_client *c, int n);
void dnet__conns_free(dnet_client *c);

#endif
