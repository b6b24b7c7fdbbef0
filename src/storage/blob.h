/* blob.h - extras of the "blob" engine (blob.c) beyond backend.h: compaction on
 * demand and engine-specific counters, for tools and tests.
 *
 * Every function takes a handle returned by the blob engine's open() (the ops
 * found by dnet_backend_find("blob")); any other engine's handle is rejected with
 * DNET_EINVAL. All are safe to call concurrently with any backend operation. */
#ifndef DNET_BLOB_H
#define DNET_BLOB_H

#include <stdint.h>

#include "backend.h"

/* Tunables until struct dnet_backend_config grows fields for them (read at open). */
#define DNET_BLOB_ENV_SIZE "ELLIPTICS_BLOB_SIZE"	     /* e.g. "1G", "64M" */
#define DNET_BLOB_ENV_COMPACT "ELLIPTICS_BLOB_COMPACT_RATIO" /* e.g. "0.5"; "0" = no auto */
#define DNET_BLOB_ENV_COMPACT_MS "ELLIPTICS_BLOB_COMPACT_INTERVAL_MS"
#define DNET_BLOB_ENV_RESERVE "ELLIPTICS_BLOB_RESERVE" /* kept free for tombstones: "256K" */
/* Dead records: "1" (default) marked dead and punched as soon as what supersedes them
 * is durable; "0" never (compaction only); "manual": only dnet_blob_reclaim() (tests). */
#define DNET_BLOB_ENV_PUNCH "ELLIPTICS_BLOB_PUNCH"
enum { DNET_BLOB_PUNCH_AUTO = 0, DNET_BLOB_PUNCH_OFF = 1, DNET_BLOB_PUNCH_MANUAL = 2 };
#define DNET_BLOB_DEFAULT_SIZE (1ull << 30)
#define DNET_BLOB_DEFAULT_COMPACT_RATIO 0.5

struct dnet_blob_stats {
	uint64_t blobs;	      /* blob files in use */
	uint64_t sealed;      /* of which sealed (index file written) */
	uint64_t objects;     /* live objects (index entries) */
	uint64_t index_bytes; /* RAM of the in-memory index (hash tables) */
	double index_bytes_per_object;
	uint64_t log_bytes;	  /* RAM of the pending per-blob index logs (unsealed blobs) */
	uint64_t disk_bytes;	  /* sum of blob file sizes */
	uint64_t dead_bytes;	  /* overwritten, deleted and abandoned bytes in all blobs */
	uint64_t tomb_bytes;	  /* of dead_bytes: tombstones (kept while they still shadow) */
	uint64_t compactions;	  /* blobs rewritten by compaction since open */
	uint64_t reclaimed_bytes; /* disk bytes given back by those */
	uint64_t alloc_bytes;	  /* blocks allocated to blob files (st_blocks) */
	uint64_t dead_marked;	  /* records marked dead in place since open */
	uint64_t punched_bytes;	  /* bytes of dead data punched out since open */
	uint64_t punch_deferred;  /* punches put off because a read still held the range */
	uint64_t inplace_deletes; /* deletes done in place: no room even for a tombstone */
	uint64_t active_seals;	  /* active blobs sealed early because mostly dead */
	uint64_t reserve_bytes;	  /* the tombstone reserve */
	uint64_t table_fallbacks; /* reads whose block table disagreed with intact data */
	/* The last open(): */
	uint64_t open_us;
	uint64_t recovered;  /* index entries loaded from index files + records scanned */
	uint64_t scanned;    /* records read by scanning blob tails */
	uint64_t torn_bytes; /* bytes cut off torn blob tails */
};

int dnet_blob_stats(struct dnet_backend *b, struct dnet_blob_stats *st);

/* Rewrites every sealed blob whose reclaimable dead ratio is >= min_dead_ratio into a
 * new file without dead records, while reads and writes go on; returns the number of
 * blobs compacted (>= 0) or a DNET_E* code. One compaction runs at a time. */
int dnet_blob_compact(struct dnet_backend *b, double min_dead_ratio);

/* One pass of automatic compaction now, as the maintenance thread runs one every
 * interval: dnet_blob_compact() at the configured ratio, except that a blob whose
 * live bytes fell by a quarter or more since the previous pass (or that was sealed
 * less than an interval ago and is seen for the first time) is left to die on its
 * own, for up to 6 passes. Returns what dnet_blob_compact() does (0 when automatic
 * compaction is off). */
int dnet_blob_compact_auto(struct dnet_backend *b);

/* Seals the active blob now (starts a new one) and waits until every blob waiting to
 * be sealed has its index file: makes blobs compactable, and restart fast. */
int dnet_blob_rotate(struct dnet_backend *b);

/* Processes the dead-record queue now (normally the maintenance thread does, and a
 * write that hits ENOSPC): syncs what superseded them if needed, then with MARK
 * rewrites their headers as dead (and syncs), then with PUNCH punches their whole
 * data blocks out. Steps not run leave the records queued: tests use that to stop
 * between the steps. Returns the number of records marked or punched, or DNET_E*. */
#define DNET_BLOB_RECLAIM_MARK 1
#define DNET_BLOB_RECLAIM_PUNCH 2
#define DNET_BLOB_RECLAIM_ALL 3
#define DNET_BLOB_RECLAIM_FORCE 4 /* retry deferred punches now, not after 200 ms */
int dnet_blob_reclaim(struct dnet_backend *b, int steps);

/* Test hook: the next n appends (writes, tombstones, reservations) fail with
 * DNET_ENOSPC before touching the disk, as on a full filesystem. */
int dnet_blob_test_fail_appends(struct dnet_backend *b, int n);

#endif
