/* backend.h - the storage engine contract: a table of functions every engine
 * (file, blob, lmdb, bdb, ...) implements, in the manner of SQLite's VFS.
 *
 * Threading: the server calls an engine from several IO threads at once, but never
 * with two concurrent operations on the same object ID (requests are sharded by ID
 * to IO threads), except that iterate() and stat() may run concurrently with
 * anything. Engines must therefore be safe for concurrent calls on distinct IDs. */
#ifndef DNET_BACKEND_H
#define DNET_BACKEND_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/proto.h"
#include "vcache.h"

enum dnet_fsync_policy {
	DNET_FSYNC_NEVER = 0,  /* leave it to the kernel; acked writes survive a process crash */
	DNET_FSYNC_ALWAYS = 1, /* sync every write before acking it */
	DNET_FSYNC_BATCH = 2,  /* group commit: writes share one sync; each ack after it */
};
int dnet_fsync_policy_parse(const char *s); /* "never|always|batch" -> policy or -1 */
const char *dnet_fsync_policy_name(int policy);

struct dnet_backend_config {
	const char *path;           /* directory owned by this engine (created if missing) */
	int fsync;                  /* enum dnet_fsync_policy */
	uint32_t batch_max_delay_us; /* group commit: extra wait for company before a sync (default 0) */
	uint32_t batch_max_ops;      /* group commit: sync early after this many writes (default 1024) */
	uint64_t upload_timeout_s;   /* abandoned chunked uploads are removed after this (default 3600) */
	/* Bytes of large objects' verified data kept locked in memory, so that reads
	 * of hot objects skip hashing (vcache.h); 0 = off. Engines that verify
	 * otherwise ignore it. */
	uint64_t verified_cache;
};

struct dnet_backend; /* engine-private state */

/* A write. `data` (io.size bytes) is valid only during the write() call: an engine
 * that completes later must have consumed it before returning.
 * io.timestamp is always filled in by the server (never 0 here). */
struct dnet_write_req {
	const uint8_t *id; /* DNET_ID_SIZE bytes */
	struct dnet_io_attr io;
	const void *data;
};

/* Completion of a write: status 0 or DNET_E*; info (on success) describes the
 * object as now stored (whole-object size, timestamp, checksum). Called exactly once,
 * either inside write() or later from an engine thread (group commit). */
typedef void (*dnet_write_done_fn)(void *arg, int status, const struct dnet_obj_info *info);

/* Result of a read: the requested bytes, either as a range of an open file (so the
 * server can sendfile() it) or as a malloc()ed buffer. The caller owns what is
 * returned: it closes fd (when >= 0) and free()s buf (when non-NULL). */
struct dnet_read_res {
	int fd;               /* >= 0: data is [file_offset, file_offset+len) of fd */
	uint64_t file_offset;
	void *buf;            /* else: data is buf[0..len) */
	uint64_t len;         /* bytes returned (may be 0) */
	struct dnet_obj_info info; /* the whole object's size, timestamp, checksum */
	/* Only with DNET_READ_DEFER_VERIFY, and only for a file range: not verified yet;
	 * the caller passes every byte through it before sending it, and frees it. */
	struct dnet_read_verify *verify;
};

/* read() flag (never on the wire): the caller sends the file range it gets and can
 * verify it as it goes (res->verify), so the engine need not verify it first. */
#define DNET_READ_DEFER_VERIFY 0x80000000u

/* Verification of a file range as it is sent. check() makes sure bytes from file
 * offset `from` on are verified (the ones before were): returns 0 and *end > from,
 * [from, *end) verified; or DNET_ECORRUPT (reported by the engine) or an IO error,
 * after which nothing more of the range may be sent. */
struct dnet_read_verify {
	int (*check)(struct dnet_read_verify *v, int fd, uint64_t from, uint64_t *end);
	void (*free)(struct dnet_read_verify *v);
	uint8_t id[64];
};

/* Objects an engine found corrupt while they were being sent: read again, they are
 * verified before anything is sent, so the reader gets DNET_ECORRUPT instead of a
 * cut connection. The last 16, by ID and an engine tag (a location; 0 if none). */
#define DNET_BAD_RING 16
struct dnet_bad_ring {
	pthread_mutex_t lock;
	struct {
		uint8_t id[64];
		uint64_t tag;
	} e[DNET_BAD_RING];
	unsigned n;
};
void dnet_bad_ring_init(struct dnet_bad_ring *r);
void dnet_bad_ring_destroy(struct dnet_bad_ring *r);
void dnet_bad_ring_note(struct dnet_bad_ring *r, const uint8_t *id, uint64_t tag);
int dnet_bad_ring_known(struct dnet_bad_ring *r, const uint8_t *id, uint64_t tag);

struct dnet_backend_stat {
	uint64_t objects;     /* live objects */
	uint64_t bytes;       /* logical bytes of live objects */
	uint64_t disk_bytes;  /* bytes used on disk, including overhead and dead space */
	uint64_t disk_free;   /* free bytes on the engine's filesystem */
	uint64_t syncs;       /* sync calls made (group commit effectiveness) */
	uint64_t synced_writes; /* writes made durable by those syncs */
	uint64_t corrupt;     /* checksum mismatches detected */
	uint64_t write_groups;   /* groups of held writes appended together (flush) */
	uint64_t grouped_writes; /* writes in those groups */
	struct dnet_vcache_stat vcache; /* the verified-data cache (all 0 without one) */
};

/* Called by iterate() once per live object; return non-zero to stop early
 * (iterate then returns that value). */
typedef int (*dnet_iterate_fn)(void *arg, const uint8_t *id, const struct dnet_obj_info *info);

struct dnet_backend_ops {
	const char *name;
	int (*open)(const struct dnet_backend_config *cfg, struct dnet_backend **out);
	/* Completes or fails every pending write (calling its done), then frees. */
	void (*close)(struct dnet_backend *b);
	void (*write)(struct dnet_backend *b, const struct dnet_write_req *req,
		      dnet_write_done_fn done, void *arg);
	/* size 0 = to the end. offset > object size -> DNET_ERANGE. Verifies checksums of
	 * the bytes returned unless `flags` has DNET_FLAG_NOCSUM: -> DNET_ECORRUPT. */
	int (*read)(struct dnet_backend *b, const uint8_t *id, uint64_t offset, uint64_t size,
		    uint32_t flags, struct dnet_read_res *res);
	/* Durable per the fsync policy when it returns. DNET_ENOENT if absent. */
	int (*del)(struct dnet_backend *b, const uint8_t *id);
	int (*lookup)(struct dnet_backend *b, const uint8_t *id, struct dnet_obj_info *info);
	int (*iterate)(struct dnet_backend *b, dnet_iterate_fn fn, void *arg);
	/* Make everything written so far durable. */
	int (*sync)(struct dnet_backend *b);
	int (*stat)(struct dnet_backend *b, struct dnet_backend_stat *st);
	/* Optional. On a thread that set dnet_backend_batching, write() may hold a
	 * write back (its done not called yet) to write it together with the next
	 * ones; flush() writes what this thread holds and calls their done. Every
	 * other call of that thread into the engine flushes first. */
	void (*flush)(struct dnet_backend *b);
};

/* Set by a thread that runs requests in batches and calls flush() after each
 * (the IO workers); writes are never held on other threads. */
extern _Thread_local int dnet_backend_batching;

/* The registry of engines compiled in (backend.c); NULL if unknown. */
const struct dnet_backend_ops *dnet_backend_find(const char *name);
/* Comma-separated names of all engines, for --help. */
const char *dnet_backend_names(void);
/* The engine used when --backend is not given. */
#define DNET_DEFAULT_BACKEND "blob"

/* Fill cfg with defaults (path and fsync must still be set). */
void dnet_backend_config_defaults(struct dnet_backend_config *cfg);

/* Whole-buffer positional IO shared by engines, retrying EINTR and short
 * transfers. pread returns the bytes read (short only at end of file) or a negative
 * DNET_E* code; the writes return 0 or DNET_E* (DNET_EIO if nothing moves). */
struct iovec;
int64_t dnet_pread_full(int fd, void *buf, size_t len, uint64_t off);
int dnet_pwrite_full(int fd, const void *buf, size_t len, uint64_t off);
/* Advances through (modifies) iov on short writes. */
int dnet_pwritev_full(int fd, struct iovec *iov, int cnt, uint64_t off);

/* XXH3-64 of each `block`-byte piece of fd's [off, off + len) (the last may be
 * shorter) into out[], read through a mapping of the page cache instead of copied
 * out of it: the copy was a third of the CPU time of a large verified read.
 * 0; DNET_EIO if the bytes could not be read (SIGBUS, caught); 1 if this way is
 * not available here (range past the end of the file, no mapping): use pread. */
int dnet_hash_blocks_mapped(int fd, uint64_t off, uint64_t len, uint32_t block, uint64_t *out);
/* The same out of a mapping the caller holds (p: its bytes for the range): 0, or
 * DNET_EIO if they could not be read (SIGBUS, caught). Only valid once
 * dnet_map_ready() returned 1. */
int dnet_hash_blocks_in(const void *p, uint64_t len, uint32_t block, uint64_t *out);

/* Copies len bytes out of a read-only file mapping; a disk error or a range past
 * the end of the file (SIGBUS) becomes DNET_EIO instead of killing the process.
 * Only valid once dnet_map_ready() returned 1 (the SIGBUS handler is installed). */
int dnet_map_ready(void);
/* (Re)installs that handler; for a process where something else (a test harness)
 * replaced it. 0 or -1. */
int dnet_map_install(void);
int dnet_map_copy(void *dst, const void *src, size_t len);

/* XXH3-128 helpers shared by engines: canonical 16-byte form. */
void dnet_csum(const void *data, size_t len, uint8_t out[16]);

#endif
