/* elliptics.h - the public C API of the Elliptics client library.
 *
 * Conventions (after lmdb.h):
 *  - Every function that can fail returns an int status: 0 on success, a negative
 *    DNET_E* code otherwise; dnet_strerror() turns it into text.
 *  - A dnet_client handle is not thread-safe: use one handle per thread (handles are
 *    cheap; each owns its own connections). Handles never share state.
 *  - Keys are arbitrary byte strings of 1..DNET_MAX_KEY_SIZE bytes; the object ID
 *    is SHA-512(key). Functions with an _id suffix take the raw 64-byte ID instead.
 *  - Every request has a timeout (default 30 s, dnet_client_set_timeout). A broken
 *    connection is re-established on the next request; a request that was in
 *    flight when it broke is resent once after a fresh route lookup if that is
 *    safe (reads and lookups; writes and removes only if none of it was sent),
 *    else it fails with DNET_ECONNRESET.
 *  - Ring-aware: on first use the handle fetches the route table (ROUTES) from the
 *    first -r remote that answers and sends each keyed request straight to the
 *    node owning its ID, over connections of its own to each node (made lazily,
 *    dnet_client_set_conns per node). A node answering NOTOWNER names the owner:
 *    the request follows (at most 5 redirects, then DNET_ENOTOWNER) and the table
 *    is refreshed. A NOTOWNER sending it back to the node that redirected it (two
 *    rings disagree during a join or leave) is a bounce, not a redirect: resent
 *    after 10 ms, doubling, at most 8 times (2.55 s). The table is also refreshed
 *    in the background every few seconds. A node the table marks down fails at
 *    once with DNET_ENODEDOWN.
 *    Stat and ping go to the first remote that answers.
 *  - Large objects are streamed in chunks (DNET_CHUNK_SIZE): neither side ever holds
 *    a whole large object in memory.
 */
#ifndef ELLIPTICS_H
#define ELLIPTICS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes (the same values travel on the wire). */
#include "elliptics/errors.h"

#define DNET_KEY_MAX 4096
#define DNET_DEFAULT_PORT 1025
#define DNET_DEFAULT_REMOTE "127.0.0.1:1025"

typedef struct dnet_client dnet_client;

/* What a node says about a stored object. */
struct dnet_object_info {
	uint64_t size;
	uint64_t timestamp; /* ns since epoch of the last write */
	uint64_t version;
	uint8_t csum[16];   /* XXH3-128 of the whole object, canonical (big-endian) bytes */
	char node[64];      /* "HOST:PORT" of the node that answered */
};

/* --- handles ------------------------------------------------------------- */

/* Create a handle with no remotes. */
int dnet_client_new(dnet_client **out);
/* Add a node address "HOST:PORT" (may be called several times; the first that
 * answers is used). Does not connect yet. DNET_EADDR if it cannot be parsed. */
int dnet_client_add_remote(dnet_client *c, const char *hostport);
/* Authenticate every connection with a key from the node's --keys file:
 * "NAME:SECRET" (the secret never travels: an HMAC challenge proves it; see
 * docs/security.md). NULL: no key. DNET_EINVAL if malformed. A node that refuses
 * the key makes requests fail with DNET_EPERM. */
int dnet_client_set_key(dnet_client *c, const char *name_colon_secret);
/* TLS on every connection (docs/security.md): the nodes' certificates must be
 * signed by a CA in ca_file (PEM; host names are not checked: the CA vouches for
 * every node). cert_file and key_file (both or neither; PEM) are shown to nodes
 * that ask for a client certificate. ca_file NULL: plaintext again. Call before
 * the first request. DNET_EINVAL if a file cannot be used: dnet_client_tls_error()
 * says why. A node that does not speak TLS fails requests with DNET_ENOTLS; a
 * plaintext handle talking to a TLS node gets DNET_ETLSREQUIRED; certificates
 * refused either way give DNET_ETLSCERT. */
int dnet_client_set_tls(dnet_client *c, const char *ca_file, const char *cert_file,
			const char *key_file);
const char *dnet_client_tls_error(const dnet_client *c);
/* Per-request timeout in milliseconds (default 30000). */
void dnet_client_set_timeout(dnet_client *c, int timeout_ms);
/* Number of connections per node the handle spreads asynchronous requests over
 * (default 1). */
int dnet_client_set_conns(dnet_client *c, int nconns);
/* Progress of streamed transfers (uploads per acked chunk, streamed reads per piece):
 * bytes done and total (0 if unknown). Called on the calling thread. */
typedef void (*dnet_progress_fn)(void *arg, uint64_t done, uint64_t total);
void dnet_client_set_progress(dnet_client *c, dnet_progress_fn fn, void *arg);
/* Streamed reads (dnet_read_stream*, dnet_read_fd*). Off (the default): the node
 * verifies what a read returns before its first byte is sent, so a corrupt object
 * delivers nothing. On: it verifies block by block as it sends, so a large object
 * starts at once and moves at nearly the network's speed; every byte delivered is
 * still verified, but a corruption found mid-object fails the read (DNET_ECORRUPT,
 * or the next copy resumes it) after the good bytes before it were delivered. For
 * sinks that drop a failed read's output: a temporary file, a sized HTTP body. */
void dnet_client_set_stream_verify(dnet_client *c, int on);
/* "HOST:PORT" of the node the handle's last request went to (or tried to), else
 * of a node it is connected to, or NULL. */
const char *dnet_client_node(const dnet_client *c);
/* Closes connections, fails pending async requests with DNET_ESHUTDOWN (callbacks
 * run), frees the handle. NULL is a no-op. */
void dnet_client_free(dnet_client *c);

/* --- copies -------------------------------------------------------------- */
/* When the ring forces several copies (ellipticsd --copies N), the handle learns N
 * with the route table and talks to the copies itself (docs/replication.md):
 *  - writes and removes go to every copy in parallel, each with a version (a
 *    hybrid logical clock: the greatest version wins on every copy); a copy whose
 *    node is down or unreachable is written to a stand-in node instead, which
 *    hands it over when the node is back. The call succeeds when w copies
 *    acknowledged (default: a majority of N).
 *  - reads go to the copies in turn (the ones the table says are up first) until
 *    one has the object, or to r copies at once (newest version wins); copies
 *    found stale or missing are repaired in the background.
 * With one copy (or one node) everything goes to the ID's owner as before. */
/* w: copies that must acknowledge a write or remove (0: a majority); r: copies
 * read in parallel (0 or 1: one at a time, failing over). */
int dnet_client_set_quorum(dnet_client *c, int w, int r);

/* Outcome per copy of the last call on the handle (write, remove, read, lookup). */
struct dnet_copy_status {
	int copy;        /* copy index (transform); -1: not a home of the object */
	int status;      /* 0 or DNET_E* (DNET_EEXIST on a write: a newer version is there) */
	int standin;     /* written to a stand-in node for a home that was down */
	uint64_t version;/* the version seen or written (0 if none): the object's timestamp */
	uint64_t size;   /* reads, lookups: the object's size there */
	uint8_t csum[16];/* lookups: its checksum there */
	char node[64];
};
/* Pointer to n results, valid until the next call on the handle. */
const struct dnet_copy_status *dnet_last_copies(const dnet_client *c, int *n);

/* --- blocking calls ------------------------------------------------------ */

/* Store data[0..len) as the whole object `key`, replacing any previous one atomically. */
int dnet_write(dnet_client *c, const void *key, size_t klen, const void *data, size_t len,
	       struct dnet_object_info *info /* may be NULL */);
int dnet_write_id(dnet_client *c, const uint8_t id[64], const void *data, size_t len,
		  struct dnet_object_info *info);
/* Store `size` bytes read from fd (at its current position; regular files are sent
 * with sendfile(2), pipes are read in chunks) as the whole object `key`. size
 * UINT64_MAX = until EOF (required for pipes of unknown length). */
int dnet_write_fd(dnet_client *c, const void *key, size_t klen, int fd, uint64_t size,
		  struct dnet_object_info *info);

int dnet_write_fd_id(dnet_client *c, const uint8_t id[64], int fd, uint64_t size,
		     struct dnet_object_info *info);
/* Store `size` bytes (UINT64_MAX = until the source ends) pulled from a source: it
 * fills buf with up to len bytes and sets *got (0 = end of data); a non-zero return
 * aborts the write and is returned. Memory use is a few chunks whatever the size;
 * a source of unknown length is streamed as it comes (the upload's size is fixed at
 * its COMMIT). */
typedef int (*dnet_source_fn)(void *arg, void *buf, size_t len, size_t *got);
int dnet_write_stream(dnet_client *c, const void *key, size_t klen, uint64_t size,
		      dnet_source_fn src, void *arg, struct dnet_object_info *info);
int dnet_write_stream_id(dnet_client *c, const uint8_t id[64], uint64_t size, dnet_source_fn src,
			 void *arg, struct dnet_object_info *info);

/* Read `size` bytes at `offset` of object `key` (size 0 = to the end) into a
 * malloc()ed buffer the caller frees. For objects that may be large, prefer
 * dnet_read_stream. */
int dnet_read(dnet_client *c, const void *key, size_t klen, uint64_t offset, uint64_t size,
	      void **data, size_t *len, struct dnet_object_info *info);
int dnet_read_id(dnet_client *c, const uint8_t id[64], uint64_t offset, uint64_t size,
		 void **data, size_t *len, struct dnet_object_info *info);
/* Streamed read: sink is called with consecutive pieces; a non-zero return from
 * sink aborts the read and is returned. */
typedef int (*dnet_sink_fn)(void *arg, const void *data, size_t len);
int dnet_read_stream(dnet_client *c, const void *key, size_t klen, uint64_t offset,
		     uint64_t size, dnet_sink_fn sink, void *arg, struct dnet_object_info *info);
int dnet_read_stream_id(dnet_client *c, const uint8_t id[64], uint64_t offset, uint64_t size,
			dnet_sink_fn sink, void *arg, struct dnet_object_info *info);
/* Streamed read into a file descriptor (file, pipe or socket). */
int dnet_read_fd(dnet_client *c, const void *key, size_t klen, int fd,
		 struct dnet_object_info *info);
int dnet_read_fd_id(dnet_client *c, const uint8_t id[64], int fd, struct dnet_object_info *info);

/* Remove an object. DNET_ENOENT if it did not exist. */
int dnet_remove(dnet_client *c, const void *key, size_t klen);
int dnet_remove_id(dnet_client *c, const uint8_t id[64]);
/* Size, timestamp and checksum of an object, and which node holds it. */
int dnet_lookup(dnet_client *c, const void *key, size_t klen, struct dnet_object_info *info);
int dnet_lookup_id(dnet_client *c, const uint8_t id[64], struct dnet_object_info *info);
/* Counters of the node(s) this handle talks to, as "name value\n" lines, in a
 * malloc()ed NUL-terminated string. node receives "HOST:PORT" (64 bytes). */
int dnet_stat(dnet_client *c, char **text, char node[64]);
/* Round trip to a node; node receives its "HOST:PORT". */
int dnet_ping(dnet_client *c, char node[64]);
/* Make a node leave the ring for good. member NULL: the first remote that answers
 * leaves, handing all its objects to the others first (it keeps running; stop it
 * once its move_pending stat is 0). member "HOST:PORT": that ring member (usually a
 * dead one) is removed by the remote; its ranges go to the others. */
int dnet_leave(dnet_client *c, const char *member);

/* Ask the first remote that answers to start an anti-entropy pass now (copies >
 * 1): it compares its copies with every peer and copies what differs. Returns at
 * once; its recover_* stat counters show progress. DNET_EUNSUPP with one copy. */
int dnet_recover(dnet_client *c);

/* --- the ring ------------------------------------------------------------- */

enum { DNET_ROUTE_UP = 1, DNET_ROUTE_DOWN = 2, DNET_ROUTE_LEFT = 3 };

/* One range of the ID ring: IDs start..end (inclusive, big-endian) belong to node. */
struct dnet_route {
	uint8_t start[64];
	uint8_t end[64];
	char node[64]; /* owner's HOST:PORT */
	int state;     /* DNET_ROUTE_UP or DNET_ROUTE_DOWN */
};
/* The ring as the first remote that answers sees it, fetched now: the ID space
 * cut into ranges in ascending order from 00..00 to ff..ff, neighbouring ranges of
 * one owner merged (a single node: one range). *routes is malloc()ed. */
int dnet_routes(dnet_client *c, struct dnet_route **routes, size_t *n);

/* A node of the ring (fetched as for dnet_routes; nodes that left are omitted). */
struct dnet_ring_member {
	char node[64]; /* HOST:PORT */
	int state;     /* DNET_ROUTE_UP or DNET_ROUTE_DOWN */
	char zone[32];
};
int dnet_ring_members(dnet_client *c, struct dnet_ring_member **members, size_t *n);

/* --- asynchronous calls -------------------------------------------------- */
/* Submit requests without waiting; callbacks run inside dnet_poll() on the calling
 * thread. Many requests may be in flight on each connection (pipelining).
 * A read's data pointer is valid only during its callback. */
typedef void (*dnet_done_fn)(void *arg, int status, const void *data, size_t len,
			     const struct dnet_object_info *info);
/* data must stay valid until the callback has run. */
int dnet_submit_write_id(dnet_client *c, const uint8_t id[64], const void *data, size_t len,
			 dnet_done_fn done, void *arg);
int dnet_submit_read_id(dnet_client *c, const uint8_t id[64], uint64_t offset, uint64_t size,
			dnet_done_fn done, void *arg);
int dnet_submit_remove_id(dnet_client *c, const uint8_t id[64], dnet_done_fn done, void *arg);
/* info in the callback describes the object (size, timestamp, csum, node). */
int dnet_submit_lookup_id(dnet_client *c, const uint8_t id[64], dnet_done_fn done, void *arg);
/* A submit that returns 0 runs its callback exactly once; one that fails never does.
 * Writes larger than DNET_CHUNK_SIZE go as a chunked upload, still one callback. */
/* Drive IO for up to timeout_ms (0 = don't block, -1 = until at least one completes
 * or nothing is in flight). Returns the number of callbacks run, or DNET_E*. */
int dnet_poll(dnet_client *c, int timeout_ms);
/* Requests submitted and not yet completed. */
size_t dnet_inflight(const dnet_client *c);

/* --- helpers ------------------------------------------------------------- */

/* id = SHA-512(key). */
void dnet_key_to_id(const void *key, size_t klen, uint8_t id[64]);
/* Lowercase hex of a checksum (33 bytes out). */
void dnet_csum_to_hex(const uint8_t csum[16], char out[33]);

#ifdef __cplusplus
}
#endif
#endif
