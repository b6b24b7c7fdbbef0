/* server.h - ellipticsd internals: configuration, connections, transactions, the
 * network loops and the IO worker pool, and how they hand work to each other.
 *
 * Threads (the seed's design): one or more network loops read WHOLE transactions
 * (header + payload) from their connections and queue them to the IO pool; IO
 * workers execute them against the storage engine and append replies to the
 * connection's output queue. A network loop never blocks on sending: output goes out
 * when the socket is writable, and reading continues while output is pending (up to
 * bounded limits), so two nodes sending to each other can never livelock. */
#ifndef DNET_SERVER_H
#define DNET_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/socket.h>

#include "common/proto.h"
#include "elliptics/errors.h"
#include "common/ring.h"
#include "storage/backend.h"

struct dnet_server;
struct dnet_loop;
struct dnet_http;

struct dnet_config {
	char listen[256];
	char data[4000];
	char backend[32];
	int fsync;
	int io_threads;
	int net_threads;
	uint64_t max_payload;
	int max_conns;
	int log_level;
	uint32_t batch_delay_us;
	/* Per-connection flow control: stop reading a connection while its queued output
	 * (in memory) exceeds out_high bytes or its requests in the IO pool exceed
	 * max_inflight; resume below half of that. */
	uint64_t out_high;
	int max_inflight;
	uint64_t max_inflight_bytes;
	/* All connections together: payload bytes of requests received or being
	 * received and not yet answered. Above it, connections stop being read (a
	 * request already being received is finished) until it falls to half. */
	uint64_t max_request_memory;
	/* The ring (member.c). */
	char joins[16][256]; /* --join HOST:PORT, repeatable */
	int njoins;
	int ids;             /* ring IDs of this node (created once, then kept) */
	char zone[32];
	char advertise[256]; /* address other nodes and clients use for us */
	int heartbeat_ms;
	int fail_after_ms;
	int handoff_s;        /* how long older rings are consulted for moved objects */
	uint64_t move_rate;   /* bytes/s the mover may send (0 = unlimited) */
	uint64_t verified_cache; /* bytes of verified large-object data kept locked (0 = off) */
	int copies;           /* copies per object (transformation functions) */
	int tombstone_grace_s;
	int recover_interval_s; /* copies > 1: anti-entropy pass at least this often */
	/* Connection timeouts (0 = none): no request and no output for idle_timeout_s;
	 * a request not received whole within request_timeout_s (plus 1 s per 64 KiB
	 * of payload); queued output of which nothing was sent for send_timeout_s. */
	int idle_timeout_s, request_timeout_s, send_timeout_s;
	/* Offline actions instead of serving (main.c): --check, --compact, --export,
	 * --import. */
	int offline;		 /* enum dnet_offline_mode */
	char offline_arg[4096]; /* FILE or "-" of --export / --import */
	char http[256];       /* --http HOST:PORT: S3 gateway, metrics, ring page (empty: off) */
	char s3_access_key[128], s3_secret_key[128]; /* S3 gateway key (also from the env) */
	char s3_keys[256];    /* --s3-keys FILE: "ACCESS SECRET" lines */
	char keys[4096];        /* --keys FILE (empty: clients need no key) */
	char cluster_key[4096]; /* --cluster-key FILE (empty: nodes need no key) */
	/* TLS (docs/security.md): with a certificate the port speaks only TLS. */
	char tls_cert[4096], tls_key[4096], tls_ca[4096];
	int tls_verify_clients; /* with --tls-ca: clients must show a certificate too */
};
enum dnet_offline_mode { DNET_OFFLINE_NONE = 0, DNET_OFFLINE_CHECK, DNET_OFFLINE_COMPACT,
			 DNET_OFFLINE_EXPORT, DNET_OFFLINE_IMPORT };

/* A request the node makes of itself (dnet_local_call): no connection; the
 * result is handed back here. */
struct dnet_local {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int done;
	int status;
	struct dnet_obj_info info;
	int have_info;
};

/* One request read whole from the network, on its way through the IO pool. */
struct dnet_trans {
	struct dnet_trans *next;
	struct dnet_conn *conn; /* holds a reference; NULL for a local call */
	struct dnet_local *local;
	int had_live;           /* DEL with tombstones: a live object was there */
	struct dnet_cmd_hdr hdr;
	uint64_t recv_ns; /* monotonic time the header arrived */
	uint64_t size;    /* payload bytes (== hdr.size) */
	uint8_t *payload; /* points just past this struct */
	struct dnet_server *charged; /* counted in its req_mem (from the network) */
};

/* One queued reply (or part of one): inline bytes, then a heap buffer, then a file
 * range sent with sendfile(). Sent in that order. */
struct dnet_out {
	struct dnet_out *next;
	uint32_t inl_len, inl_off;
	uint8_t inl[DNET_HDR_SIZE + DNET_IO_ATTR_SIZE + DNET_OBJ_INFO_SIZE + DNET_ADDR_WIRE_SIZE];
	uint8_t *buf;
	uint64_t buf_len, buf_off;
	int fd;
	uint64_t file_off, file_len; /* file_off advances as bytes go out */
	struct dnet_read_verify *ver; /* file bytes are checked before they go out */
	uint64_t ver_end;	       /* verified up to this file offset */
};

struct dnet_conn {
	int fd;
	struct dnet_loop *loop;
	struct dnet_conn *prev, *next; /* the loop's list; loop thread only */
	atomic_int refs;
	char peer[64];
	struct dnet_addr_wire self_addr; /* our address as this peer reached it */

	/* Receive state: only the owning loop thread touches these. Bytes are read
	 * into the loop's shared buffer; only a partial header is kept per connection,
	 * and a partial payload is read straight into its transaction, so an idle
	 * connection costs a few hundred bytes. */
	uint8_t hpart[DNET_HDR_SIZE];
	uint32_t hpart_len;
	struct dnet_trans *cur; /* transaction whose payload is being read */
	uint64_t cur_have;
	uint64_t rx_ns;      /* monotonic: last bytes received */
	uint64_t partial_ns; /* when the request being received began (0: none) */
	uint64_t nsubmitted; /* requests received whole */

	/* Output and flow control, under lock. */
	pthread_mutex_t lock;
	struct dnet_out *out_head, *out_tail;
	uint64_t out_mem;    /* bytes of queued inline+heap output */
	uint32_t out_items;
	int inflight;        /* transactions handed to the pool, not yet replied */
	uint64_t inflight_bytes; /* their payload bytes */
	int read_closed;     /* EOF, protocol error or shutdown: read nothing more */
	int mem_paused;      /* not reading: the node's request memory is over its limit */
	uint32_t events;     /* epoll events currently armed */
	int dead;            /* socket failed or closed: drop all output */
	int close_after_flush;
	uint64_t tx_ns;      /* last bytes sent, or output queued after none was */
	/* Authentication (auth.c): what this connection may do, and the handshake. */
	atomic_int perm;     /* enum dnet_perm */
	uint8_t nonce[32];
	int have_nonce, auth_failures;
	/* TLS (NULL: plaintext). Every SSL call on it is made under lock. */
	struct ssl_st *ssl;
	int tls_hs;	   /* the handshake has not finished (loop thread only) */
	int tls_plain;	   /* ... and the peer speaks plaintext: refuse it */
	int tls_started;   /* ... and its first byte said TLS */
	int tls_want_out;  /* the last SSL call needs the socket writable to go on */
	int tls_reading;   /* the loop is reading it now (and will look at what is left) */
	int tls_node;	   /* the peer showed a certificate our CA verified */
	int ktls_tx;	   /* kernel TLS sends: files go with SSL_sendfile */
	uint8_t *tls_wbuf; /* output staged for SSL_write (retried from the same bytes) */
	uint32_t tls_wlen, tls_woff;
	uint64_t accept_ns;
};

/* Request latency histogram buckets (upper bounds, microseconds); one more slot
 * counts everything above the last bound (+Inf). Shared by /metrics and STAT. */
#define DNET_LAT_BUCKETS 16
extern const uint64_t dnet_lat_bucket_us[DNET_LAT_BUCKETS];
/* Request outcomes per command: slot 0 = success, slot -status = that DNET_E*
 * code, the last slot any status outside the table. */
#define DNET_STATUS_SLOTS (1 - DNET_E_MIN_)

struct dnet_stats {
	atomic_uint_fast64_t cmds[DNET_CMD_MAX_];
	atomic_uint_fast64_t errors[DNET_CMD_MAX_];
	atomic_uint_fast64_t lat_ns[DNET_CMD_MAX_];
	atomic_uint_fast64_t bytes_in, bytes_out;
	atomic_uint_fast64_t conns_total, conns_cur, conns_rejected;
	atomic_uint_fast64_t conns_idle_closed, conns_slow_closed, conns_stalled_closed;
	/* Payload bytes of requests received (or being received) and not yet answered,
	 * all connections together; reading pauses above --max-request-memory. */
	atomic_uint_fast64_t req_mem, req_mem_pauses;
	atomic_uint_fast64_t auth_ok, auth_failed, auth_denied;
	atomic_uint_fast64_t proto_errors;
	atomic_uint_fast64_t tls_handshakes, tls_failed; /* TLS port: done / refused or cut off */
	atomic_uint_fast64_t redirects;   /* NOTOWNER replies: requests that were not one hop */
	atomic_uint_fast64_t handoff_redirects; /* of which: to a previous owner */
	atomic_uint_fast64_t joining_refused;   /* misses answered DNET_EJOINING */
	atomic_uint_fast64_t queued;      /* transactions waiting in IO queues */
	atomic_uint_fast64_t busy_ns;     /* time IO workers spent executing */
	/* Lock-free: each slot is an independent relaxed counter. */
	atomic_uint_fast64_t lat_hist[DNET_CMD_MAX_][DNET_LAT_BUCKETS + 1];
	atomic_uint_fast64_t status[DNET_CMD_MAX_][DNET_STATUS_SLOTS];
	/* The HTTP endpoint (src/http). */
	atomic_uint_fast64_t http_requests, http_errors; /* errors: 4xx/5xx answers */
	atomic_uint_fast64_t http_conns_cur, http_conns_total, http_conns_rejected;
	atomic_uint_fast64_t http_conns_evicted; /* idle/slow ones closed for new ones */
};

/* stats.c: count one finished request (dispatch.c's finish()). */
void dnet_stats_request(struct dnet_stats *st, unsigned cmd, int status, uint64_t lat_ns);
/* Slot of a status in dnet_stats.status, and the label it is shown with. */
unsigned dnet_stats_status_slot(int status);
const char *dnet_stats_status_label(unsigned slot);

/* IO pool: one FIFO per worker; transactions are sharded by object ID so the
 * requests for one object execute in arrival order on one worker. */
struct dnet_pool;
typedef void (*dnet_pool_fn)(void *ctx, struct dnet_trans *t);
/* A worker takes its whole queue at once and runs fn on each transaction, then
 * flush (may be NULL) once: the storage engine writes what it held back during the
 * batch (dnet_backend_batching is set on the workers). */
typedef void (*dnet_pool_flush_fn)(void *ctx);
int dnet_pool_start(struct dnet_pool **out, int nthreads, dnet_pool_fn fn,
		    dnet_pool_flush_fn flush, void *ctx, atomic_uint_fast64_t *queued);
void dnet_pool_push(struct dnet_pool *p, struct dnet_trans *t);
/* Batched hand-off (one per network loop): add() keeps transactions aside, commit()
 * queues them all, waking each worker at most once. Order per object is kept. */
struct dnet_pool_batch;
struct dnet_pool_batch *dnet_pool_batch_new(struct dnet_pool *p);
void dnet_pool_batch_free(struct dnet_pool_batch *b);
void dnet_pool_batch_add(struct dnet_pool_batch *b, struct dnet_trans *t);
void dnet_pool_batch_commit(struct dnet_pool_batch *b);
/* Finish every queued transaction, then join the workers and free. */
void dnet_pool_stop(struct dnet_pool *p);
int dnet_pool_threads(const struct dnet_pool *p);

/* Connections (net.c). */
void dnet_conn_get(struct dnet_conn *c);
void dnet_conn_put(struct dnet_conn *c);
/* Close the connection once its queued replies are out; read nothing more. */
void dnet_conn_shut(struct dnet_conn *c);
/* Queue a reply built by a worker (takes ownership of o) and try to send it. */
void dnet_conn_send(struct dnet_conn *c, struct dnet_out *o);
/* A transaction handed to the pool has been answered (or needs no answer). */
void dnet_conn_trans_done(struct dnet_conn *c, uint64_t bytes);

/* Replies (dispatch.c). */
struct dnet_out *dnet_out_new(void);
void dnet_out_free(struct dnet_out *o);
void dnet_dispatch(void *ctx, struct dnet_trans *t);
/* The end of an IO worker's batch: the engine writes the writes it held. */
void dnet_dispatch_flush(void *ctx);
/* Free a transaction and drop its connection reference. */
void dnet_trans_free(struct dnet_trans *t);
/* net.c: t's payload is no longer held (t came from a connection). */
void dnet_net_uncharge(struct dnet_trans *t);

/* Run one request (WRITE, DEL, LOOKUP) on this node's IO pool, in order with the
 * requests for the same ID, and wait for it. Flags DIRECT. Returns its status;
 * info (may be NULL) gets the object info a WRITE or LOOKUP returns. */
int dnet_local_call(struct dnet_server *s, uint8_t cmd, const uint8_t *id,
		    const struct dnet_io_attr *io, const void *data, struct dnet_obj_info *info);

/* Membership: this node's view of the ring and the thread keeping it current. */
struct dnet_peer;
struct dnet_member {
	pthread_rwlock_t lock; /* guards ring, self, last_seen */
	struct dnet_ring ring;
	int self;              /* our index in ring.nodes (indices never change) */
	uint64_t *last_seen;   /* per node: monotonic ns of the last sign of life */
	size_t last_seen_cap;
	struct dnet_peer *peers; /* per node; membership thread only */
	size_t npeers;
	/* Per --join seed (membership thread only): DNET_SEED_WAIT until it answers,
	 * then DNET_SEED_OTHER, or DNET_SEED_SELF if it turned out to be this node. */
	enum { DNET_SEED_WAIT, DNET_SEED_OTHER, DNET_SEED_SELF } seed[16];
	/* Rings from before the last ownership changes (newest first), consulted while
	 * objects move: a key missing at its new owner is looked for at its old one. */
	struct {
		struct dnet_ring ring;
		uint64_t until_ns;
	} hist[4];
	int nhist;
	int leaving; /* we announced LEFT: do not refute it */
	atomic_int urgent; /* tell every peer now, not at the next digest mismatch */
	/* Until then we count as newly joined: keys we own but lack may still be at the
	 * node that owned them before we came (the ring without us). */
	uint64_t new_until_ns;
	int met_others;
	atomic_int only_self_seeds; /* every --join seed answered and was this node */
	atomic_uint_fast64_t layout_changes; /* wakes the mover */
	atomic_uint_fast64_t node_ups;       /* nodes seen coming (back) up */
	pthread_t thread;
	pthread_mutex_t wait_lock;
	pthread_cond_t wait_cond;
	int stop;
	int started;
};

/* Data movement (move.c): pushes objects this node no longer owns to their owner. */
struct dnet_mover {
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int stop, kick;
	atomic_int started; /* read by kickers on other threads */
	atomic_uint_fast64_t passes, moved, moved_bytes, skipped, errors, pending;
	atomic_int hinted; /* a stand-in write arrived since the last pass began */
	/* IDs handed over recently (direct-mapped by ID prefix; a collision just
	 * forgets one): a read that reaches us for one of them, as the previous owner,
	 * is sent back to the owner instead of "not found". */
	_Atomic uint64_t *recent_id, *recent_ns;
	/* Test hook (ELLIPTICS_TEST_MOVE_PAUSE_MS): a pause in the middle of each
	 * hand-over, so tests can look at a previous owner in that moment. */
	unsigned pause_ms;
};

/* Anti-entropy between copies (recover.c). */
#define DNET_SYNC_BUCKETS 4096u
struct dnet_recover {
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int stop, kick;
	atomic_int started;
	atomic_int stop_flag;
	uint64_t last_pass_ns;
	uint8_t (*repair)[DNET_ID_SIZE]; /* corrupt copies to replace (under lock) */
	int nrepair;
	atomic_uint_fast64_t passes, running, buckets_checked, buckets_differ, pulled,
		bytes, errors, repaired, tombstones_collected, last_ms;
};

struct dnet_server {
	struct dnet_config cfg;
	/* Request memory (net.c): set when a connection paused for it, cleared (and
	 * every loop woken to resume its paused connections) once it fell to half. */
	atomic_int mem_pressure;
	atomic_uint mem_relief_gen;
	const struct dnet_backend_ops *bops;
	struct dnet_backend *backend;
	struct dnet_pool *pool;
	struct dnet_loop **loops;
	int nloops;
	int listen_fd;
	int lock_fd;
	char listen_str[64];
	uint8_t node_id[DNET_ID_SIZE];
	uint64_t start_ns;
	atomic_int stopping;
	struct dnet_stats stats;
	struct dnet_member member;
	struct dnet_mover mover;
	struct dnet_recover recover;
	struct dnet_http *http; /* src/http: NULL when --http is not given */
	struct ssl_ctx_st *tls_srv, *tls_cli; /* --tls-cert: accepting, connecting out */
	char http_str[64];      /* its bound address */
	/* Replies verify their file bytes against the engine as they go out (net.c):
	 * each step read-holds verify_lock; the engine's close write-holds it to set
	 * engine_closed, after which what is left to verify is cut off. */
	pthread_rwlock_t verify_lock;
	int engine_closed;
};

/* The one server of this process (set by main). */
extern struct dnet_server *dnet_srv;

/* server.c: returns 0 or an exit status (3) after logging why. */
int dnet_server_start(struct dnet_server *s);
void dnet_server_stop(struct dnet_server *s);

/* net.c: bind and listen (sets listen_str; connections wait in the backlog), then
 * start the loops that accept and serve them. */
int dnet_net_listen(struct dnet_server *s);
/* Load the TLS certificate, key and CA (before listening); free them at the end. */
int dnet_net_tls_setup(struct dnet_server *s);
void dnet_net_tls_free(struct dnet_server *s);
int dnet_net_start(struct dnet_server *s);
/* Stop accepting and reading; returns when loops have exited after flushing output
 * (bounded by timeout_ms). */
void dnet_net_stop(struct dnet_server *s, int timeout_ms);
/* Before the storage engine closes: replies still to verify against it are cut
 * off (their connections close) instead of reading a closed engine. */
void dnet_net_verify_close(struct dnet_server *s);
void dnet_net_stop_reading(struct dnet_server *s);

/* member.c: init before the network starts, start after it (needs our address). */
void dnet_member_init(struct dnet_server *s);
int dnet_member_start(struct dnet_server *s);
void dnet_member_stop(struct dnet_server *s);
/* After the IO pool and network have stopped: nothing reads the ring any more. */
void dnet_member_free(struct dnet_server *s);
/* 1 if this node holds one of id's copies (its home nodes; with one copy: owns
 * it), or the ring has only us; else 0 and *owner is set (the first home). */
int dnet_member_owns(struct dnet_server *s, const uint8_t *id, struct dnet_addr_wire *owner);
/* ROUTES reply payload (malloc()ed). */
uint8_t *dnet_member_routes(struct dnet_server *s, size_t *len);
/* JOIN: merge the sender's table; returns our table after merging (malloc()ed). */
int dnet_member_join(struct dnet_server *s, const uint8_t *buf, size_t len, uint8_t **out,
		     size_t *outlen);
uint64_t dnet_member_digest(struct dnet_server *s);
/* Started with --join and no other node has answered yet (unless every seed is this
 * very node: then we are a ring of one): our ring is only ourselves, so
 * "we own it and do not have it" means nothing (clients that already know us from
 * the ring may ask before our first exchange lands). */
int dnet_member_joining(struct dnet_server *s);
/* While older rings are remembered: the node that owned id before (UP, not us), if
 * any. Returns 1 and sets *addr, else 0. */
int dnet_member_prev_owner(struct dnet_server *s, const uint8_t *id, int direct,
			   struct dnet_addr_wire *addr);
/* LEAVE: addr NULL = this node leaves; else remove the node with that address.
 * 0 or DNET_E* (DNET_ENOENT: no such member). */
int dnet_member_leave(struct dnet_server *s, const struct dnet_addr_wire *addr);
/* A consistent copy of the current ring and our index in it. */
int dnet_member_snapshot(struct dnet_server *s, struct dnet_ring *out, int *self);

/* move.c */
int dnet_mover_start(struct dnet_server *s);
void dnet_mover_kick(struct dnet_server *s);
/* We stored a copy we are not a home of (standing in for a down node). */
void dnet_mover_hint(struct dnet_server *s);
void dnet_mover_stop(struct dnet_server *s);
/* After the IO pool has stopped (workers consult the recent-moves table). */
void dnet_mover_free(struct dnet_server *s);
/* Did we hand id to its owner within the handoff window? */
int dnet_mover_moved_recently(struct dnet_server *s, const uint8_t *id);
void dnet_member_counts(struct dnet_server *s, size_t *nodes, size_t *up, size_t *down,
			size_t *left);

/* recover.c */
int dnet_recover_start(struct dnet_server *s);
void dnet_recover_stop(struct dnet_server *s);
/* Start a pass now (RECOVER command, a node back up). */
void dnet_recover_kick(struct dnet_server *s);
/* A read found our copy of id corrupt: replace it from another copy. */
void dnet_recover_corrupt(struct dnet_server *s, const uint8_t *id);
/* The SYNC command. */
int dnet_sync_request(struct dnet_server *s, const uint8_t *p, size_t len, uint8_t **out,
		      size_t *outlen);
int dnet_recover_pull(struct dnet_server *s, struct dnet_peer *p, const uint8_t *id, uint64_t v,
		      int force, uint8_t *buf, uint64_t *bytes);

/* auth.c */
int dnet_auth_start(struct dnet_server *s);
void dnet_auth_reload(struct dnet_server *s);
void dnet_auth_stop(void);
uint32_t dnet_auth_initial_perm(void);
/* --tls-ca: node-to-node operations need a peer certificate the CA verified. */
void dnet_auth_require_node_cert(int on);
/* May t's connection do t (node_op: a node-to-node operation such as a data move)? */
int dnet_auth_allowed(const struct dnet_trans *t, int node_op);
int dnet_auth_step(struct dnet_server *s, struct dnet_conn *c, const uint8_t *p, size_t len,
		   uint8_t *reply, size_t *rlen, int *close_conn);

/* stats.c: "name value\n" lines in a malloc()ed buffer. */
char *dnet_stats_text(struct dnet_server *s, size_t *len);

/* config.c */
void dnet_config_defaults(struct dnet_config *cfg);
/* Parse argv (and any --config file). Returns 0, or 2 after printing a usage error,
 * or 1 after printing help (exit 0 then). */
int dnet_config_parse(struct dnet_config *cfg, int argc, char **argv);

#endif
