/* blob.c - the "blob" storage engine: objects appended to large blob files, a
 * compact in-memory index (16-byte ID prefix + packed location), per-blob index
 * files so a restart reads indexes instead of data, group commit, and compaction.
 * docs/storage-blob.md is the prose version of everything below.
 *
 * ON-DISK LAYOUT (under cfg->path; all integers little-endian)
 *   LOCK                 flock()ed while open: one process per directory
 *   blob-NNNNNN.data     blob files, appended to in number order
 *   blob-NNNNNN.index    index of a blob, written when it is sealed (and, as a
 *                        checkpoint, for the active blob at close)
 *   *.tmp, *.compact     unfinished index/compaction output: removed at open
 *
 * BLOB FILE: a 64-byte file header, then records.
 *    0 u32 magic "DBLF"   4 u16 version 1   6 u16 header size 64
 *    8 u32 blob number   12 u32 0           16 u64 generation (+1 per compaction)
 *   24 u64 created (ns)  32..55 zero        56 u64 XXH3-64 of [0, 56)
 *
 * RECORD: a 128-byte header, the data, then padding to 8 bytes. A record starts at
 * an 8-byte boundary; chunked uploads start at a 4 KiB boundary (so the header,
 * rewritten in place at COMMIT, lies inside one disk sector and that rewrite is
 * atomic). The gap before such a record is zeros (never written).
 *    0 u32 magic "DBRC"    4 u16 version 1   6 u16 flags (1 tombstone, 2 uncommitted,
 *                                      4 dead, 8 block table; 1|4 deleted in place)
 *    8 u64 data size      16 u64 reserved (bytes after the header that belong to the
 *                                          record: = size, or with a block table
 *                                          align8(size) + 8 * ceil(size / 64 KiB))
 *   24 u64 timestamp (ns) 32 u64 version (0)  40 u8 csum[16] XXH3-128 of the data
 *   56 u8  id[64]        120 u64 XXH3-64 of header bytes [0, 120)
 *   then the data; with flag 8, at align8(size) after it, the block table: XXH3-64
 *   of each 64 KiB block of the data (records > 64 KiB), so a read verifies only
 *   the blocks it returns, and can do so as it sends them.
 *   record length = align8(128 + reserved)
 *
 * INDEX FILE: 64-byte header, then 32-byte entries sorted by (prefix, offset).
 *    0 u32 magic "DBIX"    4 u16 version 1   8 u32 blob number  16 u64 generation
 *   24 u64 covered: the index describes blob bytes [0, covered); a longer blob has
 *          a tail to scan (a checkpointed active blob that was appended to later)
 *   32 u64 entry count    40 u64 XXH3-64 of all entries   56 u64 XXH3-64 of [0, 56)
 *   entry: 0 u8 id prefix[16]  16 u64 offset | 1 (tombstone) | 2 (block table)
 *          24 u64 data size
 *   Entries: every tombstone of the blob and every live record that was current
 *   (not overwritten or deleted) when the index was written.
 *
 * CRASH SAFETY (the argument in full is in docs/storage-blob.md)
 *   - Small records (<= 64 KiB) are written whole, and every record header is
 *     written, under the append lock, so headers reach the file in offset order:
 *     any fdatasync that acknowledges a record also makes every earlier header
 *     durable. A large record's data is written after its header, outside the lock;
 *     if a crash tears it, its data checksum fails and the scan skips it.
 *   - Restart loads index files, then scans what they do not cover: every header is
 *     validated (magic, checksum, bounds) and every live record's data checksum
 *     verified. A bad-data record is skipped (the older version stays visible); the
 *     first invalid header ends the scan and the tail after the last good record is
 *     truncated. Acknowledged records are before any torn part, so none is lost.
 *   - Deletes append tombstones: a restart cannot resurrect a deleted object.
 *   - Superseded records are marked dead in place (flags + checksum rewritten; a torn
 *     mark still decodes as dead) only after what supersedes them is durable, then
 *     their whole data blocks are punched out (after a sync, and not while a read
 *     lease - an OFD lock of a large read's fd - covers them). See "dead records".
 *   - Compaction writes a complete new file (generation + 1), syncs it and its index,
 *     then renames both over the old names; an index whose generation differs from
 *     its blob's is ignored (the blob is scanned), so any crash point is safe.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "xxh.h"

#include "../common/errors.h"
#include "../common/log.h"
#include "../common/util.h"
#include "backend.h"
#include "fault.h"
#include "blob.h"
#include "vcache.h"

#define BL_ENGINE_MAGIC 0x424c4f42u /* marks a blob engine handle for blob.h calls */
#define BL_MAGIC_OBJ 0x43524244u    /* "DBRC" */
#define BL_MAGIC_BLOB 0x464c4244u   /* "DBLF" */
#define BL_MAGIC_IDX 0x58494244u    /* "DBIX" */
#define BL_VERSION 1
#define BL_RHDR 128u
#define BL_BHDR 64u
#define BL_IHDR 64u
#define BL_IENT 32u
#define BL_F_TOMB 0x1u
#define BL_F_UNCOMMITTED 0x2u
/* Dead: superseded (or, with TOMB, deleted in place); its data is not checked and
 * its whole 4 KiB blocks may be punched out. Set by an in-place rewrite of the
 * header after what supersedes it is durable. */
#define BL_F_DEAD 0x4u
/* A block table follows the data: XXH3-64 of each BL_BLOCK of it (records bigger
 * than BL_SMALL), so a read verifies only the blocks it returns, as it sends them. */
#define BL_F_BTAB 0x8u
#define BL_F_KNOWN 0xfu
#define BL_MAX_OBJECT (1ull << 44) /* 16 TiB: offset sums stay far from overflow */
#define BL_MAX_OFFSET (1ull << 51) /* 48 bits of 8-byte units in a location */
/* Records up to this size are written in one pwritev under the append lock, and
 * returned from reads in a buffer (the verification already read them). */
#define BL_SMALL 65536u
#define BL_BLOCK 65536u /* block of a block table */
#define BL_PREFIX 16
#define BL_SHARDS 1024u
#define BL_MAX_SLOTS 65536u /* slot 0 unused: loc 0 marks an empty table cell */
#define BL_IO_CHUNK (1u << 20)
#define BL_SCAN_BUF (4u << 20)
#define BL_PREALLOC (64ull << 20)
#define BL_UPLOAD_ALIGN 4096u
#define BL_READ_FIRST 4096u	     /* first pread of a read: header + small data in one go */
#define BL_UPDATE_MAX (256ull << 20) /* offset updates rebuild the object in memory */
#define BL_UPLOAD_BUCKETS 64u
#define BL_NAME_MAX 64
#define BL_PUNCH_ALIGN 4096u		 /* holes are punched in whole blocks of this size */
#define BL_DEFAULT_RESERVE (256u << 10) /* kept free in the active blob for tombstones */
#define BL_LEASE_RETRY_NS 200000000ull	 /* deferred punches are retried this often */
/* The maintenance thread reclaims once a second, or at once when this many dead
 * records wait: each round costs a sync or two, shared by the whole batch. (A write
 * short of space does not wait: it reclaims itself.) */
#define BL_RECLAIM_EVERY_NS 1000000000ull
#define BL_RECLAIM_BATCH 4096u

/* ---- small helpers -------------------------------------------------------------- */

static uint64_t align_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) & ~(a - 1);
}

static uint64_t rec_len(uint64_t reserved)
{
	return align_up(BL_RHDR + reserved, 8);
}

/* Block table of a record of `size` data bytes: entries, and where it starts
 * (relative to the data). */
static uint64_t btab_n(uint64_t size)
{
	return (size + BL_BLOCK - 1) / BL_BLOCK;
}

static uint64_t btab_at(uint64_t size)
{
	return align_up(size, 8);
}

/* Low bits of an index entry's (and the pending index's) offset. */
#define BL_IX_TOMB 0x1u
#define BL_IX_BTAB 0x2u

/* Bytes after the header that a record of `size` data bytes owns. */
static uint64_t rec_reserved(uint64_t size, unsigned ixfl)
{
	return (ixfl & BL_IX_BTAB) ? btab_at(size) + 8 * btab_n(size) : size;
}

/* New records bigger than BL_SMALL get a block table. */
static unsigned new_ixfl(uint64_t size)
{
	return size > BL_SMALL ? BL_IX_BTAB : 0;
}

/* File offset of the block table of a new record at `off` (0: it has none). */
static uint64_t new_tab_off(uint64_t off, uint64_t size)
{
	return new_ixfl(size) ? off + BL_RHDR + btab_at(size) : 0;
}

static int bl_errno(void)
{
	return dnet_from_errno(errno);
}

static int bl_fdatasync(int fd)
{
	while (dnet_f_fdatasync(fd) < 0) {
		if (errno != EINTR)
			return bl_errno();
	}
	return 0;
}

/* ---- record header -------------------------------------------------------------- */

struct bl_hdr {
	uint32_t flags;
	uint64_t size;
	uint64_t reserved;
	uint64_t timestamp;
	uint64_t version;
	uint8_t csum[16];
	uint8_t id[DNET_ID_SIZE];
};

static void hdr_encode(uint8_t p[BL_RHDR], const struct bl_hdr *h)
{
	memset(p, 0, BL_RHDR);
	dnet_put_u32(p, BL_MAGIC_OBJ);
	dnet_put_u16(p + 4, BL_VERSION);
	dnet_put_u16(p + 6, (uint16_t)h->flags);
	dnet_put_u64(p + 8, h->size);
	dnet_put_u64(p + 16, h->reserved);
	dnet_put_u64(p + 24, h->timestamp);
	dnet_put_u64(p + 32, h->version);
	memcpy(p + 40, h->csum, 16);
	memcpy(p + 56, h->id, DNET_ID_SIZE);
	dnet_put_u64(p + 120, XXH3_64bits(p, 120));
}

/* Every field is checked before anyone uses it: a corrupt header can never make us
 * allocate or read more than BL_MAX_OBJECT (and callers bound by file size too). */
static int hdr_decode(const uint8_t p[BL_RHDR], struct bl_hdr *h)
{
	if (dnet_get_u32(p) != BL_MAGIC_OBJ || dnet_get_u16(p + 4) != BL_VERSION)
		return -1;
	uint32_t flags = dnet_get_u16(p + 6);
	if (dnet_get_u64(p + 120) != XXH3_64bits(p, 120)) {
		/* A dead-mark (flags |= DEAD, or DEAD|TOMB for an in-place delete) rewrites
		 * only the flags (bytes 6-7) and the checksum (120-127) of a header that may
		 * straddle a sector boundary, so a crash can leave one changed and not the
		 * other. Such a header checks out with those bits toggled: it is the marked
		 * state (the mark is only written once it is allowed to take effect). */
		static const uint16_t marks[2] = {BL_F_DEAD, BL_F_DEAD | BL_F_TOMB};
		uint8_t q[BL_RHDR];
		int ok = 0;
		for (int i = 0; i < 2 && !ok; i++) {
			memcpy(q, p, 120);
			dnet_put_u16(q + 6, (uint16_t)(flags ^ marks[i]));
			if (dnet_get_u64(p + 120) == XXH3_64bits(q, 120)) {
				flags |= marks[i];
				ok = 1;
			}
		}
		if (!ok)
			return -1;
	}
	h->flags = flags;
	h->size = dnet_get_u64(p + 8);
	h->reserved = dnet_get_u64(p + 16);
	h->timestamp = dnet_get_u64(p + 24);
	h->version = dnet_get_u64(p + 32);
	memcpy(h->csum, p + 40, 16);
	memcpy(h->id, p + 56, DNET_ID_SIZE);
	if ((h->flags & ~BL_F_KNOWN) || h->size > h->reserved || h->size > BL_MAX_OBJECT)
		return -1;
	if ((h->flags & BL_F_BTAB) ? h->reserved != rec_reserved(h->size, BL_IX_BTAB)
				   : h->reserved > BL_MAX_OBJECT)
		return -1;
	/* a tombstone has no data, unless it is a record deleted in place (TOMB|DEAD) */
	if ((h->flags & BL_F_TOMB) &&
	    ((h->flags & BL_F_UNCOMMITTED) || (!(h->flags & BL_F_DEAD) && (h->size || h->reserved))))
		return -1;
	return 0;
}

/* The header of a new record of `size` data bytes (checksum still zero): a block
 * table for big ones, its reservation, `timestamp` or now. */
static void hdr_new(struct bl_hdr *h, const uint8_t *id, uint64_t size, uint64_t timestamp,
		    uint32_t flags)
{
	memset(h, 0, sizeof(*h));
	h->flags = flags | (new_ixfl(size) ? BL_F_BTAB : 0);
	h->size = size;
	h->reserved = rec_reserved(size, new_ixfl(size));
	h->timestamp = timestamp ? timestamp : dnet_now_real_ns();
	memcpy(h->id, id, DNET_ID_SIZE);
}

static unsigned ix_flags(const struct bl_hdr *h)
{
	if (h->flags & BL_F_TOMB)
		return BL_IX_TOMB;
	return (h->flags & BL_F_BTAB) ? BL_IX_BTAB : 0;
}

static void info_from_hdr(struct dnet_obj_info *info, const struct bl_hdr *h)
{
	memset(info, 0, sizeof(*info));
	info->size = h->size;
	info->timestamp = h->timestamp;
	info->version = h->version;
	memcpy(info->csum, h->csum, 16);
}

/* ---- blobs ---------------------------------------------------------------------- */

/* One entry of a blob's pending index: what its index file will list. */
struct bl_lrec {
	uint8_t p[BL_PREFIX];
	uint64_t off; /* | BL_IX_TOMB, BL_IX_BTAB */
	uint64_t size;
};

struct blob {
	uint32_t num;
	uint16_t slot;
	uint64_t gen;
	int fd;
	_Atomic uint64_t size; /* append end; changed under alock */
	uint64_t prealloc;     /* fallocate()d up to here (alock) */
	atomic_int ref;	       /* the blob list holds one */
	atomic_int inflight;   /* reserved records not yet published */
	atomic_int uploads;    /* chunked uploads reserved here, not finished */
	_Atomic int64_t live;  /* bytes of current records */
	_Atomic int64_t tomb;  /* bytes of tombstones */
	atomic_int sealed;     /* has an index file covering all of it; read-only */
	_Atomic uint64_t sealed_ns; /* when it was sealed (or found sealed at open) */
	int retired;	       /* replaced by compaction (llock) */
	int seal_wanted;       /* rotated away, index file still to write (llock) */
	struct bl_lrec *log;   /* pending index of an unsealed blob (alock) */
	size_t nlog, caplog;
	struct blob *next; /* the list, by number (llock) */
	/* A read-only shared mapping of the file (NULL if none could be made): record
	 * headers and small objects are copied out of it rather than pread, one system
	 * call less per request. maplen covers the blob's size limit, or its size
	 * when larger; records past it are pread. */
	const uint8_t *map;
	size_t maplen;
	/* automatic compaction's last look at it (compact_pass, under cmp_lock):
	 * live bytes then, when, and how many passes it was left to die; when its
	 * pass for empty blobs last walked the index for it */
	int64_t live_seen;
	uint64_t seen_ns, empty_ns;
	int postponed;
	/* reclaim holds its records for compaction until then (set with the above) */
	_Atomic uint64_t hold_until_ns;
	atomic_int cold; /* sealed because mostly dead and slow: never left to die */
};

/* ---- in-memory index ------------------------------------------------------------ */

/* 24 bytes per cell: the first 16 ID bytes and a location (slot << 48 | offset / 8).
 * Open addressing with linear probing, grown by 1.5x at 85% load, so a cell costs
 * 24 / load bytes per object: 28..42, ~34 on average. The full ID is verified
 * against the record header on every access, so equal prefixes (collisions) are
 * simply several cells probed in turn. */
struct bl_ent {
	uint8_t p[BL_PREFIX];
	uint64_t loc;
};

struct bl_shard {
	pthread_mutex_t lock;
	struct bl_ent *t;
	uint32_t cap, n;
} __attribute__((aligned(64)));

#define LOC_SLOT(l) ((uint16_t)((l) >> 48))
#define LOC_OFF(l) (((l) & ((1ull << 48) - 1)) << 3)
static uint64_t mkloc(uint16_t slot, uint64_t off)
{
	return ((uint64_t)slot << 48) | (off >> 3);
}

/* ---- the engine ----------------------------------------------------------------- */

/* A record superseded (overwritten, deleted, or an abandoned upload reservation)
 * waiting to be marked dead on disk and have its data blocks punched out. Queued
 * only once what supersedes it is durable, or with `sync` set: the blob to sync
 * first (fsync=never, where nothing else syncs it). Holds references. */
struct bl_dead {
	struct bl_dead *next;
	struct blob *B, *sync;
	uint64_t off, reserved;
	uint8_t p[BL_PREFIX];
};

struct bl_pend {
	struct bl_pend *next;
	struct bl_dead *dead;
	struct blob *blob;
	dnet_write_done_fn done;
	void *arg;
	struct dnet_obj_info info;
	int has_info;
	int err; /* the committer's verdict, for the acker */
};

struct bl_upload {
	struct bl_upload *next;
	uint8_t id[DNET_ID_SIZE];
	uint64_t cookie;
	struct blob *blob;
	uint64_t off, total, hwm, timestamp;
	int busy, committed;
	uint64_t active_ns;
	/* Unknown length (PREPARE with total_size 0): chunks go to an unlinked spool
	 * file, copied into a reservation in the active blob at COMMIT, since a record's
	 * space must be reserved whole and its size is not known before then. */
	int spool_fd; /* -1 when the upload writes into its blob reservation */
	uint64_t written;
	uint64_t reserved; /* of the reservation: data and block table */
	/* Chunks that arrive in order are hashed as they come, so COMMIT need not read
	 * the object back; NULL once one did not (then COMMIT reads it back). */
	struct bl_hasher *hx;
};

struct dnet_backend {
	uint32_t magic;
	struct dnet_backend_config cfg;
	char *path;
	int dirfd, lockfd;
	uint64_t blob_limit;
	double compact_ratio;
	uint64_t compact_ns;
	uint64_t reserve;    /* bytes kept allocated past the append end for tombstones */
	int punch_mode;	     /* DNET_BLOB_PUNCH_* */
	atomic_int no_punch; /* the filesystem cannot punch holes */
	int no_falloc;
	atomic_int fail_appends; /* test hook: the next N appends fail with ENOSPC */

	struct bl_shard *sh;

	pthread_mutex_t alock; /* the active blob, appends, logs */
	struct blob *active;

	pthread_mutex_t llock; /* the blob list and slot table */
	struct blob *blobs;
	struct blob **slots;
	uint32_t slot_hint;

	pthread_mutex_t cmp_lock;  /* one compaction at a time */
	pthread_mutex_t seal_lock; /* one sealer at a time (maintenance thread, rotate, close) */

	pthread_mutex_t clock; /* group commit */
	pthread_cond_t ccond;
	struct bl_pend *q, **qtail;
	uint32_t qn;
	uint64_t qfirst_ns;
	int cstop, cthr_on;
	pthread_t cthr;
	/* acks of synced batches: the committer hands them over and syncs again */
	pthread_mutex_t aklock;
	pthread_cond_t akcond;
	struct bl_pend *akq, **aktail;
	int akstop, akthr_on, akwait;
	pthread_t akthr;

	pthread_mutex_t mlock; /* maintenance thread: sealing, sweeps, auto compaction */
	pthread_cond_t mcond, msealed;
	int mstop, mthr_on, mkick;
	pthread_t mthr;

	pthread_mutex_t ulock;
	struct bl_upload *up[BL_UPLOAD_BUCKETS];

	pthread_mutex_t dlock; /* the dead-record queue */
	struct bl_dead *dq, *deferred;
	uint32_t dq_n;
	uint64_t deferred_ns, last_reclaim_ns;
	pthread_mutex_t rlock; /* one reclaimer at a time */
	/* Under rlock: superseded records in the blob that was active when they were
	 * reclaimed; they wait until it is sealed (see reclaim). */
	struct bl_dead *await_seal;
	_Atomic uintptr_t await_for; /* the active blob they wait on (0: none wait) */
	atomic_uint_fast64_t nseals; /* blobs sealed since open: a waiting record's may be */
	/* Under rlock: superseded records of sealed blobs that compaction is about to
	 * drop whole (see reclaim); _Atomic for the maintenance thread's peek. */
	struct bl_dead *_Atomic await_compact;

	_Atomic uint64_t objects, bytes, syncs, synced_writes, corrupt, table_fallbacks;
	_Atomic uint64_t write_groups, grouped_writes; /* held small writes, appended together */
	struct dnet_bad_ring bad; /* found corrupt while sent: by ID and location */
	struct dnet_vcache *vc;	  /* verified data of large records (NULL: off) */
	_Atomic uint64_t compactions, reclaimed;
	_Atomic uint64_t marked, punched, punch_deferred, inplace_dels, active_seals;
	uint64_t open_us, recovered, scanned, torn;
};

static struct bl_shard *shard_of(struct dnet_backend *b, const uint8_t *p)
{
	return &b->sh[(p[0] | ((uint32_t)p[1] << 8)) & (BL_SHARDS - 1)];
}

static uint32_t ix_home(const struct bl_shard *s, const uint8_t *p)
{
	return (uint32_t)(((uint64_t)dnet_get_u32(p + 4) * s->cap) >> 32);
}

static uint32_t ix_next(const struct bl_shard *s, uint32_t i)
{
	return i + 1 == s->cap ? 0 : i + 1;
}

static int ix_grow(struct bl_shard *s)
{
	uint32_t ncap = s->cap < 16 ? 16 : s->cap + s->cap / 2;
	struct bl_ent *nt = calloc(ncap, sizeof(*nt));
	if (!nt)
		return DNET_ENOMEM;
	struct bl_ent *ot = s->t;
	uint32_t ocap = s->cap;
	s->t = nt;
	s->cap = ncap;
	for (uint32_t i = 0; i < ocap; i++) {
		if (!ot[i].loc)
			continue;
		uint32_t k = ix_home(s, ot[i].p);
		while (nt[k].loc)
			k = ix_next(s, k);
		nt[k] = ot[i];
	}
	free(ot);
	return 0;
}

static int ix_insert(struct bl_shard *s, const uint8_t *p, uint64_t loc)
{
	if ((uint64_t)(s->n + 1) * 20 > (uint64_t)s->cap * 17 && ix_grow(s) && s->n + 1 >= s->cap)
		return DNET_ENOMEM;
	uint32_t i = ix_home(s, p);
	while (s->t[i].loc)
		i = ix_next(s, i);
	memcpy(s->t[i].p, p, BL_PREFIX);
	s->t[i].loc = loc;
	s->n++;
	return 0;
}

/* Backward-shift deletion: no tombstones in the table, probe chains stay short. */
static void ix_remove(struct bl_shard *s, uint32_t i)
{
	uint32_t j = i;
	for (;;) {
		j = ix_next(s, j);
		if (!s->t[j].loc)
			break;
		uint32_t k = ix_home(s, s->t[j].p);
		/* may the entry at j move to the hole at i? (k cyclically outside (i, j]) */
		int movable = i <= j ? (k <= i || k > j) : (k <= i && k > j);
		if (movable) {
			s->t[i] = s->t[j];
			i = j;
		}
	}
	s->t[i].loc = 0;
	s->n--;
}

static int64_t ix_find_loc(const struct bl_shard *s, const uint8_t *p, uint64_t loc)
{
	for (uint32_t i = ix_home(s, p); s->t[i].loc; i = ix_next(s, i))
		if (s->t[i].loc == loc && memcmp(s->t[i].p, p, BL_PREFIX) == 0)
			return i;
	return -1;
}

static struct blob *slot_blob(struct dnet_backend *b, uint16_t slot)
{
	return __atomic_load_n(&b->slots[slot], __ATOMIC_ACQUIRE);
}

/* B has an index file covering all of it from now on (read-only). */
static void blob_mark_sealed(struct blob *B)
{
	atomic_store(&B->sealed_ns, dnet_now_mono_ns());
	atomic_store(&B->sealed, 1);
}

/* Frees a blob whose fd the caller closes (or already did). */
static void blob_free(struct blob *B)
{
	if (B->map)
		munmap((void *)B->map, B->maplen);
	free(B->log);
	free(B);
}

/* Reads [off, off + len) of B: out of its mapping when that covers the range,
 * else with pread. Bytes read (short only at the end of the file) or DNET_E*. */
static int64_t blob_pread(const struct blob *B, void *buf, size_t len, uint64_t off)
{
	if (B->map && off <= B->maplen && len <= B->maplen - off &&
	    off + len <= atomic_load_explicit(&B->size, memory_order_acquire)) {
		int err = dnet_map_copy(buf, B->map + off, len);
		return err ? err : (int64_t)len;
	}
	return dnet_pread_full(B->fd, buf, len, off);
}

static void blob_get(struct blob *B)
{
	atomic_fetch_add(&B->ref, 1);
}

static void blob_put(struct dnet_backend *b, struct blob *B)
{
	if (atomic_fetch_sub(&B->ref, 1) != 1)
		return;
	pthread_mutex_lock(&b->llock);
	__atomic_store_n(&b->slots[B->slot], NULL, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&b->llock);
	dnet_vcache_drop_owner(b->vc, B);
	if (B->fd >= 0)
		close(B->fd);
	blob_free(B);
}

static void report_corrupt_num(struct dnet_backend *b, const uint8_t *id, uint32_t num,
			       uint64_t off, const char *what)
{
	char hex[2 * 8 + 1];
	for (int i = 0; i < 8; i++)
		snprintf(hex + 2 * i, 3, "%02x", id ? id[i] : 0);
	atomic_fetch_add(&b->corrupt, 1);
	dnet_log_error("blob backend %s: %s: object %s... in blob %u at offset %llu", b->path, what,
		       hex, num, (unsigned long long)off);
}

static void report_corrupt(struct dnet_backend *b, const uint8_t *id, const struct blob *B,
			   uint64_t off, const char *what)
{
	report_corrupt_num(b, id, B->num, off, what);
}

/* Under s->lock: the cell holding the full `id`. Every candidate sharing the prefix
 * is confirmed by reading its record header (first `want` bytes of the record go to
 * buf, at least BL_RHDR). Returns 0 (found: *pos, *h, *got), DNET_ENOENT, or
 * DNET_ECORRUPT when a candidate's header is unreadable and none matched (*pos is
 * that candidate: with a 16-byte prefix it is ours but for a 2^-128 chance). */
static int ix_resolve(struct dnet_backend *b, struct bl_shard *s, const uint8_t *id, uint32_t *pos,
		      uint8_t *buf, size_t want, size_t *got, struct bl_hdr *h)
{
	int corrupt = 0, ioerr = 0;
	uint32_t cpos = 0;
	for (uint32_t i = ix_home(s, id); s->t[i].loc; i = ix_next(s, i)) {
		if (memcmp(s->t[i].p, id, BL_PREFIX) != 0)
			continue;
		struct blob *B = slot_blob(b, LOC_SLOT(s->t[i].loc));
		uint64_t off = LOC_OFF(s->t[i].loc);
		/* Mapped: the header, then no more of the record than it holds (bytes past
		 * the record may be past the end of the file). pread: all of `want` at once. */
		const int mapped = B->map && off + want <= B->maplen;
		int64_t r = blob_pread(B, buf, mapped ? BL_RHDR : want, off);
		if (r < 0) {
			ioerr = (int)r;
			continue;
		}
		if (r < BL_RHDR || hdr_decode(buf, h) != 0) {
			if (!corrupt)
				report_corrupt(b, id, B, off, "bad record header");
			corrupt = 1;
			cpos = i;
			continue;
		}
		if (memcmp(h->id, id, DNET_ID_SIZE) == 0) {
			if (mapped && want > BL_RHDR && h->size) {
				size_t more = want - BL_RHDR < h->size ? want - BL_RHDR : (size_t)h->size;
				int64_t m = blob_pread(B, buf + BL_RHDR, more, off + BL_RHDR);
				if (m < 0)
					return (int)m;
				r += m;
			}
			*pos = i;
			*got = (size_t)r;
			return 0;
		}
	}
	if (corrupt) {
		*pos = cpos;
		return DNET_ECORRUPT;
	}
	return ioerr ? ioerr : DNET_ENOENT;
}

/* ---- blob files ----------------------------------------------------------------- */

static void blob_name(char *out, uint32_t num, const char *suffix)
{
	snprintf(out, BL_NAME_MAX, "blob-%06u.%s", num, suffix);
}

static int fsync_dir(struct dnet_backend *b)
{
	while (dnet_f_fsync(b->dirfd) < 0) {
		if (errno != EINTR)
			return bl_errno();
	}
	return 0;
}

static void bhdr_encode(uint8_t p[BL_BHDR], uint32_t num, uint64_t gen)
{
	memset(p, 0, BL_BHDR);
	dnet_put_u32(p, BL_MAGIC_BLOB);
	dnet_put_u16(p + 4, BL_VERSION);
	dnet_put_u16(p + 6, BL_BHDR);
	dnet_put_u32(p + 8, num);
	dnet_put_u64(p + 16, gen);
	dnet_put_u64(p + 24, dnet_now_real_ns());
	dnet_put_u64(p + 56, XXH3_64bits(p, 56));
}

static struct blob *blob_alloc(struct dnet_backend *b, uint32_t num, uint64_t gen, int fd,
			       uint64_t size)
{
	struct blob *B = calloc(1, sizeof(*B));
	if (!B)
		return NULL;
	B->num = num;
	B->gen = gen;
	B->fd = fd;
	atomic_store(&B->size, size);
	B->prealloc = size;
	atomic_store(&B->ref, 1);
	/* Only address space: pages come from the page cache as they are touched.
	 * Past the end of the file a touch would raise SIGBUS; readers only copy
	 * published records, which are inside it, and dnet_map_copy catches the rest. */
	uint64_t want = size > b->blob_limit ? size : b->blob_limit;
	if (dnet_map_ready() && want <= (uint64_t)SIZE_MAX / 2) {
		void *m = mmap(NULL, (size_t)want, PROT_READ, MAP_SHARED, fd, 0);
		if (m != MAP_FAILED) {
			B->map = m;
			B->maplen = (size_t)want;
		}
	}
	return B;
}

/* Gives B a slot and puts it in the list in number order (replacing `old` when
 * given, for compaction). Takes llock. */
static int blob_register(struct dnet_backend *b, struct blob *B, struct blob *old)
{
	pthread_mutex_lock(&b->llock);
	uint32_t s = b->slot_hint;
	for (uint32_t n = 0; n < BL_MAX_SLOTS; n++, s++) {
		if (s == 0 || s >= BL_MAX_SLOTS)
			s = 1;
		if (!b->slots[s])
			break;
	}
	if (s >= BL_MAX_SLOTS || b->slots[s]) {
		pthread_mutex_unlock(&b->llock);
		return DNET_EBUSY;
	}
	B->slot = (uint16_t)s;
	b->slot_hint = s + 1;
	__atomic_store_n(&b->slots[s], B, __ATOMIC_RELEASE);
	struct blob **pp = &b->blobs;
	if (old) {
		while (*pp != old)
			pp = &(*pp)->next;
		B->next = old->next;
		old->next = NULL;
		old->retired = 1;
		*pp = B;
	} else {
		while (*pp && (*pp)->num < B->num)
			pp = &(*pp)->next;
		B->next = *pp;
		*pp = B;
	}
	pthread_mutex_unlock(&b->llock);
	return 0;
}

/* Creates blob `num` (header written and, unless fsync=never, durable with its
 * directory entry) and registers it. */
static int blob_create(struct dnet_backend *b, uint32_t num, struct blob **out)
{
	char name[BL_NAME_MAX];
	uint8_t hb[BL_BHDR];
	blob_name(name, num, "data");
	int fd = openat(b->dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0) {
		int err = bl_errno();
		dnet_log_error("blob backend %s: cannot create %s: %s", b->path, name,
			       strerror(errno));
		return err;
	}
	bhdr_encode(hb, num, 0);
	int err = dnet_pwrite_full(fd, hb, BL_BHDR, 0);
	if (!err && b->cfg.fsync != DNET_FSYNC_NEVER && !(err = bl_fdatasync(fd)))
		err = fsync_dir(b);
	struct blob *B = err ? NULL : blob_alloc(b, num, 0, fd, BL_BHDR);
	if (!err && !B)
		err = DNET_ENOMEM;
	if (!err && (err = blob_register(b, B, NULL))) {
		blob_free(B);
		B = NULL;
	}
	if (err) {
		close(fd);
		unlinkat(b->dirfd, name, 0);
		return err;
	}
	*out = B;
	return 0;
}

static void maint_kick(struct dnet_backend *b)
{
	pthread_mutex_lock(&b->mlock);
	b->mkick = 1;
	pthread_cond_signal(&b->mcond);
	pthread_mutex_unlock(&b->mlock);
}

/* Under alock: starts a new active blob; the old one waits to be sealed. */
static int rotate_locked(struct dnet_backend *b)
{
	struct blob *nb, *old = b->active;
	int err = blob_create(b, old->num + 1, &nb);
	if (err)
		return err;
	b->active = nb;
	pthread_mutex_lock(&b->llock);
	old->seal_wanted = 1;
	pthread_mutex_unlock(&b->llock);
	maint_kick(b);
	return 0;
}

/* Under alock: makes sure [.., end) of B is allocated, so writes there cannot hit
 * ENOSPC. Allocates 64 MiB ahead, or exactly what is needed when the disk is nearly
 * full. Filesystems without fallocate() are written optimistically. */
static int prealloc_locked(struct dnet_backend *b, struct blob *B, uint64_t end)
{
	if (end <= B->prealloc || b->no_falloc)
		return 0;
	uint64_t want = end + BL_PREALLOC;
	for (int exact = 0; exact < 2; exact++, want = end) {
		if (dnet_f_fallocate(B->fd, FALLOC_FL_KEEP_SIZE, (off_t)B->prealloc,
			      (off_t)(want - B->prealloc)) == 0) {
			B->prealloc = want;
			return 0;
		}
		if (errno == EOPNOTSUPP || errno == ENOSYS) {
			b->no_falloc = 1;
			return 0;
		}
		if (errno != ENOSPC && errno != EINTR)
			return bl_errno();
	}
	return DNET_ENOSPC;
}

/* Under alock. */
static int log_push(struct blob *B, const uint8_t *id, uint64_t off, uint64_t size, unsigned ixfl)
{
	if (B->nlog == B->caplog) {
		size_t ncap = B->caplog ? B->caplog * 2 : 1024;
		struct bl_lrec *n = realloc(B->log, ncap * sizeof(*n));
		if (!n)
			return DNET_ENOMEM;
		B->log = n;
		B->caplog = ncap;
	}
	struct bl_lrec *r = &B->log[B->nlog++];
	memcpy(r->p, id, BL_PREFIX);
	r->off = off | ixfl;
	r->size = size;
	return 0;
}

/* ---- dead records: mark dead in place, then punch their data out ---------------- */
/* Space of superseded records comes back without compaction, so a full disk can be
 * freed by deleting. Order, for each record R superseded by S (a newer version or a
 * tombstone):
 *   1. S is durable (queued only after its sync; with fsync=never the reclaimer
 *      syncs S's blob first);
 *   2. R's header is rewritten in place with the DEAD flag (flags and checksum only,
 *      so a torn rewrite still decodes: hdr_decode) and R's blob is synced;
 *   3. the whole 4 KiB blocks of R's data are punched out (FALLOC_FL_PUNCH_HOLE),
 *      unless a large read still holds an OFD read lease on R (see lease_fd): then
 *      the punch waits, as an unlinked file's blocks wait for its last reader.
 * A crash anywhere leaves R either live-looking (S, durable and later, wins at
 * recovery), dead (skipped without a data check), or - if the punch reached the
 * disk before the header did - live-looking with zeroed data, which fails its
 * checksum and is skipped like a torn write. Never is S lost or R resurrected. */

static struct bl_dead *dead_new(struct blob *B, uint64_t off, uint64_t reserved,
				const uint8_t *id)
{
	struct bl_dead *d = calloc(1, sizeof(*d));
	if (!d)
		return NULL; /* the record then waits for compaction */
	blob_get(B);
	d->B = B;
	d->off = off;
	d->reserved = reserved;
	memcpy(d->p, id, BL_PREFIX);
	return d;
}

static void dead_free(struct dnet_backend *b, struct bl_dead *d)
{
	while (d) {
		struct bl_dead *n = d->next;
		if (d->sync)
			blob_put(b, d->sync);
		blob_put(b, d->B);
		free(d);
		d = n;
	}
}

/* The whole blocks of a record's data: [*start, *start + *len). */
static int punch_range(const struct bl_dead *d, uint64_t *start, uint64_t *len)
{
	uint64_t s = align_up(d->off + BL_RHDR, BL_PUNCH_ALIGN);
	uint64_t e = (d->off + BL_RHDR + d->reserved) & ~(uint64_t)(BL_PUNCH_ALIGN - 1);
	if (e <= s)
		return 0;
	*start = s;
	*len = e - s;
	return 1;
}

/* Queues d (now allowed to be marked dead) for the reclaimer. `sync`: the blob of
 * the superseding record, to sync first (fsync=never), or NULL. */
static void dead_push(struct dnet_backend *b, struct bl_dead *d, struct blob *sync)
{
	if (!d)
		return;
	if (b->vc && d->reserved > BL_SMALL) /* only records with a block table are cached */
		dnet_vcache_drop(b->vc, d->B, d->off); /* its bytes are no longer read */
	uint64_t ps, pl;
	if (b->punch_mode == DNET_BLOB_PUNCH_OFF || !punch_range(d, &ps, &pl)) {
		/* Nothing to punch (less than one whole block of data: small objects):
		 * marking it would cost a read, a write and a sync for no space back.
		 * Unmarked, it is still dead - the index and later records say so, and
		 * compaction drops it; a crash leaves the safe "before step 2" state. */
		dead_free(b, d);
		return;
	}
	if (sync) {
		blob_get(sync);
		d->sync = sync;
	}
	pthread_mutex_lock(&b->dlock);
	d->next = b->dq;
	b->dq = d;
	int many = ++b->dq_n == BL_RECLAIM_BATCH;
	pthread_mutex_unlock(&b->dlock);
	if (many && b->punch_mode == DNET_BLOB_PUNCH_AUTO)
		maint_kick(b);
}

/* A large read hands out a file range for sendfile() that the server reads after
 * read() returned, maybe while the object is overwritten and its old record punched.
 * So it gets its own open file description of the blob with an OFD read lock on the
 * record: the lock goes away when the server closes the fd, and the reclaimer does
 * not punch a range someone holds a lock on. */
static int lease_fd(struct blob *B, uint64_t start, uint64_t len)
{
	char path[48];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", B->fd);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fcntl(B->fd, F_DUPFD_CLOEXEC, 0); /* no /proc: unprotected */
	struct flock fl = {.l_type = F_RDLCK, .l_whence = SEEK_SET};
	fl.l_start = (off_t)start;
	fl.l_len = (off_t)len;
	if (fcntl(fd, F_OFD_SETLK, &fl) < 0)
		dnet_log_warn("blob: cannot lease a read range of blob %u: %s", B->num,
			      strerror(errno));
	return fd;
}

static int range_leased(struct blob *B, uint64_t start, uint64_t len)
{
	struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
	fl.l_start = (off_t)start;
	fl.l_len = (off_t)len;
	if (fcntl(B->fd, F_OFD_GETLK, &fl) < 0)
		return 0;
	return fl.l_type != F_UNLCK;
}

/* Step 2 for one record: 1 = marked now, 0 = nothing to do (already marked, or not
 * the record we expect), < 0 IO error. */
static int dead_mark(struct dnet_backend *b, struct bl_dead *d)
{
	uint8_t hb[BL_RHDR];
	struct bl_hdr h;
	int64_t r = dnet_pread_full(d->B->fd, hb, BL_RHDR, d->off);
	if (r < 0)
		return (int)r;
	if (r != BL_RHDR || hdr_decode(hb, &h) != 0 || memcmp(h.id, d->p, BL_PREFIX) != 0 ||
	    h.reserved != d->reserved) {
		report_corrupt(b, d->p, d->B, d->off, "superseded record has an unexpected header");
		d->reserved = 0; /* do not punch what we cannot identify */
		return 0;
	}
	if (h.flags & BL_F_DEAD)
		return 0;
	h.flags |= BL_F_DEAD;
	hdr_encode(hb, &h);
	int err = dnet_pwrite_full(d->B->fd, hb, BL_RHDR, d->off);
	if (!err)
		atomic_fetch_add(&b->marked, 1);
	return err ? err : 1;
}

/* Syncs each distinct blob of the list (`field`: offsetof B or sync). */
static int sync_distinct(struct dnet_backend *b, struct bl_dead *list, int of_sync)
{
	int err = 0;
	for (struct bl_dead *d = list; d; d = d->next) {
		struct blob *X = of_sync ? d->sync : d->B;
		if (!X)
			continue;
		int seen = 0;
		for (struct bl_dead *e = list; e != d && !seen; e = e->next)
			seen = (of_sync ? e->sync : e->B) == X;
		if (seen)
			continue;
		int e2 = bl_fdatasync(X->fd);
		atomic_fetch_add(&b->syncs, 1);
		if (e2 && !err)
			err = e2;
	}
	return err;
}

static double dead_ratio(const struct blob *B);

/* Automatic compaction leaves a sealed blob whose live bytes are still falling
 * fast (by a quarter or more between two passes) to die on its own, for at most
 * this many passes: copying hot records only to see them overwritten moments
 * later doubled the writes, and a 95 MB copy (fdatasync'd at once) stalled the
 * durable writes running meanwhile for ~0.6 s. */
#define BL_DIE_PASSES 6

/* Will automatic compaction soon drop sealed blob B whole? (see reclaim) */
static int compaction_takes(const struct dnet_backend *b, struct blob *B, uint64_t now)
{
	if (b->compact_ratio <= 0 || B->retired || !atomic_load(&B->sealed) ||
	    dead_ratio(B) < b->compact_ratio)
		return 0;
	/* from the seal for as long as passes may leave it to die, and for as long
	 * as the last pass said it would come back (passes can run late) */
	return dnet_ns_since(now, atomic_load(&B->sealed_ns)) <
		   (BL_DIE_PASSES + 3) * b->compact_ns ||
	       now < atomic_load(&B->hold_until_ns);
}

/* Runs steps 2 and 3 for everything queued (and deferred punches whose lease may
 * be gone). Returns the number of records punched or marked (or, of blobs that
 * compaction retired, freed), or a DNET_E* code. */
static int reclaim(struct dnet_backend *b, int steps)
{
	pthread_mutex_lock(&b->rlock);
	pthread_mutex_lock(&b->dlock);
	struct bl_dead *list = b->dq;
	b->dq = NULL;
	b->dq_n = 0;
	uint64_t now = dnet_now_mono_ns();
	b->last_reclaim_ns = now;
	if (b->deferred && ((steps & DNET_BLOB_RECLAIM_FORCE) ||
			    now - b->deferred_ns >= BL_LEASE_RETRY_NS)) {
		struct bl_dead **tail = &list;
		while (*tail)
			tail = &(*tail)->next;
		*tail = b->deferred;
		b->deferred = NULL;
	}
	pthread_mutex_unlock(&b->dlock);
	/* Records in the active blob wait until it is sealed: marking and punching
	 * there take the file's inode lock against every append (ext4), and with
	 * fsync=never step 1 would fdatasync the blob being written. Measured on
	 * 10 KiB overwrites at 32 connections: 2-3.5x the throughput and a p99 of
	 * ~4 ms instead of 16-35 ms.
	 * Records of a sealed blob that automatic compaction will take (dead ratio at
	 * or past the threshold) wait for it (compaction_takes: up to nine compaction
	 * intervals after the seal, longer while it is left to die): compaction drops
	 * the blob whole, where marking and punching
	 * cost a write and an extent split per record (~70-90 us each on ext4; 120,000
	 * of them after a 1 GiB blob of 10 KiB overwrites took 12 s and halved the
	 * durable writes running meanwhile). Once the blob is retired, its records
	 * are just freed. A forced pass (ENOSPC, close, tests) takes them all at once. */
	{
		const int all = !!(steps & DNET_BLOB_RECLAIM_FORCE);
		pthread_mutex_lock(&b->alock);
		const struct blob *A = b->active;
		pthread_mutex_unlock(&b->alock);
		struct bl_dead *go = NULL, *wait = NULL, *held = NULL, *d;
		for (int pass = 0; pass < 3; pass++) {
			d = pass == 0 ? list : pass == 1 ? b->await_seal : atomic_load(&b->await_compact);
			while (d) {
				struct bl_dead *n = d->next;
				struct bl_dead **to = &go;
				/* the active blob, or one rotated out and not sealed yet
				 * (a record still being published in it holds its seal) */
				if (!all && (d->B == A || !atomic_load(&d->B->sealed)))
					to = &wait;
				else if (!all && compaction_takes(b, d->B, now))
					to = &held;
				d->next = *to;
				*to = d;
				d = n;
			}
		}
		list = go;
		b->await_seal = wait;
		atomic_store(&b->await_compact, held);
		atomic_store(&b->await_for, wait ? (uintptr_t)A : 0);
	}
	int err = 0, done = 0;
	if (!list)
		goto out;
	/* 1. what supersedes them is durable (fsync=never queues them unsynced) */
	if ((err = sync_distinct(b, list, 1)))
		goto requeue;
	for (struct bl_dead *d = list; d; d = d->next) {
		if (d->sync) {
			blob_put(b, d->sync);
			d->sync = NULL;
		}
	}
	if (!(steps & DNET_BLOB_RECLAIM_MARK))
		goto requeue;
	/* 2. mark dead in place (records of retired blobs: compaction dropped them) */
	int marked = 0;
	for (struct bl_dead *d = list; d && !err; d = d->next) {
		if (d->B->retired)
			continue;
		int r = dead_mark(b, d);
		if (r < 0)
			err = r;
		marked += r > 0;
	}
	if (!err && marked && b->cfg.fsync != DNET_FSYNC_NEVER)
		err = sync_distinct(b, list, 0);
	if (err)
		goto requeue;
	done = marked;
	if (!(steps & DNET_BLOB_RECLAIM_PUNCH))
		goto requeue;
	/* 3. punch, unless a reader still holds the range */
	struct bl_dead *keep = NULL;
	while (list) {
		struct bl_dead *d = list;
		list = d->next;
		d->next = NULL;
		uint64_t s, l;
		if (d->B->retired) { /* compaction dropped it: freeing lets the old file go */
			dead_free(b, d);
			done++;
			continue;
		}
		if (atomic_load(&b->no_punch) || !punch_range(d, &s, &l)) {
			dead_free(b, d);
			continue;
		}
		if (range_leased(d->B, d->off, BL_RHDR + d->reserved)) {
			atomic_fetch_add(&b->punch_deferred, 1);
			d->next = keep;
			keep = d;
			continue;
		}
		if (dnet_f_fallocate(d->B->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)s,
			      (off_t)l) == 0) {
			atomic_fetch_add(&b->punched, l);
			done++;
		} else if (errno == EOPNOTSUPP || errno == ENOSYS) {
			atomic_store(&b->no_punch, 1);
			dnet_log_warn("blob backend %s: the filesystem cannot punch holes; dead "
				      "records wait for compaction", b->path);
		} else {
			dnet_log_warn("blob backend %s: punching blob %u at %llu: %s", b->path,
				      d->B->num, (unsigned long long)s, strerror(errno));
		}
		dead_free(b, d);
	}
	if (keep) {
		pthread_mutex_lock(&b->dlock);
		struct bl_dead **tail = &keep;
		while (*tail)
			tail = &(*tail)->next;
		*tail = b->deferred;
		b->deferred = keep;
		b->deferred_ns = dnet_now_mono_ns();
		pthread_mutex_unlock(&b->dlock);
	}
	goto out;
requeue:
	if (err)
		dnet_log_error("blob backend %s: reclaiming dead records: %s", b->path,
			       dnet_strerror(err));
	pthread_mutex_lock(&b->dlock);
	{
		struct bl_dead **tail = &list;
		while (*tail) {
			tail = &(*tail)->next;
			b->dq_n++;
		}
		*tail = b->dq;
		b->dq = list;
	}
	pthread_mutex_unlock(&b->dlock);
out:
	pthread_mutex_unlock(&b->rlock);
	return err ? err : done;
}

int dnet_blob_reclaim(struct dnet_backend *b, int steps)
{
	if (!b || b->magic != BL_ENGINE_MAGIC)
		return DNET_EINVAL;
	return reclaim(b, steps);
}

int dnet_blob_test_fail_appends(struct dnet_backend *b, int n)
{
	if (!b || b->magic != BL_ENGINE_MAGIC)
		return DNET_EINVAL;
	atomic_store(&b->fail_appends, n);
	return 0;
}

#define AP_UPLOAD 1 /* a chunked upload's reservation */
#define AP_TOMB 2   /* a tombstone: may use the reserve, never rotates */

/* Reserves `len` bytes at the end of the active blob (start aligned to `align`) for
 * `nrec` records and writes `iov` (at most `len` bytes: a header, or a whole group of
 * records) there, all under the append lock. Returns the blob with `nrec`
 * references, its inflight count raised by `nrec` (and its upload count, for
 * uploads).
 * Every record but a tombstone must leave b->reserve bytes allocated after it, so
 * that deletes work on a full disk. On ENOSPC the dead-record queue is reclaimed
 * (punching frees space) and the append tried once more. */
static int append_iov(struct dnet_backend *b, struct iovec *iov, int iovcnt, uint64_t len,
		      uint32_t nrec, uint32_t align, int kind, struct blob **out, uint64_t *offp)
{
	int err;
	const int upload = kind == AP_UPLOAD, tomb = kind == AP_TOMB;
	if (atomic_load(&b->fail_appends) > 0 && atomic_fetch_sub(&b->fail_appends, 1) > 0)
		return DNET_ENOSPC;
	for (int attempt = 0;; attempt++) {
		pthread_mutex_lock(&b->alock);
		struct blob *B = b->active;
		if (!tomb && atomic_load(&B->size) >= b->blob_limit && (err = rotate_locked(b))) {
			pthread_mutex_unlock(&b->alock);
			if (err == DNET_ENOSPC && attempt == 0 &&
			    b->punch_mode != DNET_BLOB_PUNCH_OFF &&
			    reclaim(b, DNET_BLOB_RECLAIM_ALL | DNET_BLOB_RECLAIM_FORCE) > 0)
				continue;
			return err;
		}
		break;
	}
	struct blob *B = b->active;
	uint64_t off = align_up(atomic_load(&B->size), align);
	uint64_t end = off + len;
	if (end > BL_MAX_OFFSET) {
		pthread_mutex_unlock(&b->alock);
		return DNET_ETOOBIG;
	}
	if ((err = prealloc_locked(b, B, tomb ? end : end + b->reserve)) == DNET_ENOSPC &&
	    b->punch_mode != DNET_BLOB_PUNCH_OFF) {
		pthread_mutex_unlock(&b->alock);
		if (reclaim(b, DNET_BLOB_RECLAIM_ALL | DNET_BLOB_RECLAIM_FORCE) <= 0)
			return DNET_ENOSPC;
		return append_iov(b, iov, iovcnt, len, nrec, align, kind, out, offp);
	}
	if (err) {
		pthread_mutex_unlock(&b->alock);
		return err;
	}
	if ((err = dnet_pwritev_full(B->fd, iov, iovcnt, off))) {
		/* nothing after us yet: the next record simply overwrites this spot */
		pthread_mutex_unlock(&b->alock);
		return err;
	}
	atomic_store(&B->size, end);
	atomic_fetch_add(&B->inflight, nrec);
	if (upload)
		atomic_fetch_add(&B->uploads, 1);
	atomic_fetch_add(&B->ref, nrec);
	pthread_mutex_unlock(&b->alock);
	*out = B;
	*offp = off;
	return 0;
}

/* One record: header `hb`, `inl_len` bytes of inline data, `reserved` bytes after
 * the header in all. */
static int append(struct dnet_backend *b, const uint8_t *hb, const void *inl, size_t inl_len,
		  uint64_t reserved, uint32_t align, int kind, struct blob **out, uint64_t *offp)
{
	struct iovec iov[2] = {{(void *)hb, BL_RHDR}, {(void *)inl, inl_len}};
	return append_iov(b, iov, inl_len ? 2 : 1, BL_RHDR + reserved, 1, align, kind, out, offp);
}

static void record_done(struct dnet_backend *b, struct blob *B)
{
	if (atomic_fetch_sub(&B->inflight, 1) == 1 && B != b->active)
		maint_kick(b);
}

/* Accounting for the record a cell pointed to before it was replaced or removed. */
static void unaccount(struct dnet_backend *b, uint64_t oldloc, const struct bl_hdr *oh)
{
	struct blob *O = slot_blob(b, LOC_SLOT(oldloc));
	if (oh) {
		atomic_fetch_sub(&O->live, (int64_t)rec_len(oh->reserved));
		atomic_fetch_sub(&b->bytes, oh->size);
	}
}

static int publish_index(struct dnet_backend *b, struct blob *B, uint64_t off,
			 const struct bl_hdr *h, struct bl_dead **old);

/* Makes a written record the current version of its ID (or, for a tombstone,
 * removes the ID): adds it to its blob's pending index, then flips the index cell.
 * *old (when old is given) gets the record it superseded, to be marked dead and
 * punched once this one is durable (NULL if none). */
static int publish(struct dnet_backend *b, struct blob *B, uint64_t off, const struct bl_hdr *h,
		   struct bl_dead **old)
{
	pthread_mutex_lock(&b->alock);
	int err = log_push(B, h->id, off, h->size, ix_flags(h));
	pthread_mutex_unlock(&b->alock);
	return err ? err : publish_index(b, B, off, h, old);
}

/* publish() once the record is in its blob's pending index. */
static int publish_index(struct dnet_backend *b, struct blob *B, uint64_t off,
			 const struct bl_hdr *h, struct bl_dead **old)
{
	const int tomb = !!(h->flags & BL_F_TOMB);
	int err = 0;

	struct bl_shard *s = shard_of(b, h->id);
	uint8_t ob[BL_RHDR];
	struct bl_hdr oh;
	size_t got;
	uint32_t pos;
	uint64_t loc = mkloc(B->slot, off);
	if (old)
		*old = NULL;
	pthread_mutex_lock(&s->lock);
	int r = ix_resolve(b, s, h->id, &pos, ob, BL_RHDR, &got, &oh);
	if (r == 0 || r == DNET_ECORRUPT) {
		if (old && r == 0 && !(oh.flags & BL_F_DEAD))
			*old = dead_new(slot_blob(b, LOC_SLOT(s->t[pos].loc)),
					LOC_OFF(s->t[pos].loc), oh.reserved, h->id);
		unaccount(b, s->t[pos].loc, r == 0 ? &oh : NULL);
		if (tomb) {
			ix_remove(s, pos);
			atomic_fetch_sub(&b->objects, 1);
		} else {
			s->t[pos].loc = loc;
		}
	} else if (r == DNET_ENOENT) {
		if (!tomb && (err = ix_insert(s, h->id, loc)) == 0)
			atomic_fetch_add(&b->objects, 1);
	} else {
		err = r;
	}
	pthread_mutex_unlock(&s->lock);
	if (err) {
		if (old) {
			dead_free(b, *old);
			*old = NULL;
		}
		return err;
	}
	if (tomb) {
		atomic_fetch_add(&B->tomb, (int64_t)rec_len(0));
	} else {
		atomic_fetch_add(&B->live, (int64_t)rec_len(h->reserved));
		atomic_fetch_add(&b->bytes, h->size);
	}
	return 0;
}

/* ---- durability: never / always / group commit ---------------------------------- */

/* Acknowledges a published record per the fsync policy; consumes the blob ref.
 * `dead` (may be NULL): the record it superseded, queued for reclaim once this one
 * is durable. */
static void durable_done(struct dnet_backend *b, struct blob *B, dnet_write_done_fn done,
			 void *arg, const struct dnet_obj_info *info, struct bl_dead *dead, int err)
{
	if (err)
		dead_free(b, dead);
	else
		dead_push(b, dead, b->cfg.fsync == DNET_FSYNC_NEVER ? B : NULL);
	blob_put(b, B);
	done(arg, err, err ? NULL : info);
}

static void durable(struct dnet_backend *b, struct blob *B, dnet_write_done_fn done, void *arg,
		    const struct dnet_obj_info *info, struct bl_dead *dead)
{
	if (b->cfg.fsync == DNET_FSYNC_BATCH) {
		struct bl_pend *p = malloc(sizeof(*p));
		if (p) {
			p->next = NULL;
			p->dead = dead;
			p->blob = B;
			p->done = done;
			p->arg = arg;
			p->has_info = info != NULL;
			if (info)
				p->info = *info;
			pthread_mutex_lock(&b->clock);
			if (!b->q)
				b->qfirst_ns = dnet_now_mono_ns();
			*b->qtail = p;
			b->qtail = &p->next;
			if (++b->qn == 1 || b->qn >= b->cfg.batch_max_ops)
				pthread_cond_signal(&b->ccond);
			pthread_mutex_unlock(&b->clock);
			return;
		}
		/* no memory for a queue entry: sync this one alone */
	}
	int err = 0;
	if (b->cfg.fsync != DNET_FSYNC_NEVER) {
		err = bl_fdatasync(B->fd);
		atomic_fetch_add(&b->syncs, 1);
		if (!err)
			atomic_fetch_add(&b->synced_writes, 1);
	}
	durable_done(b, B, done, arg, info, dead, err);
}

static void *committer(void *arg)
{
	struct dnet_backend *b = arg;
	dnet_thread_name("ell-blob-sync");
	pthread_mutex_lock(&b->clock);
	for (;;) {
		while (!b->q && !b->cstop)
			pthread_cond_wait(&b->ccond, &b->clock);
		if (!b->q)
			break;
		/* wait for company, up to batch_max_delay_us after the first write */
		uint64_t deadline = b->qfirst_ns + (uint64_t)b->cfg.batch_max_delay_us * 1000;
		while (!b->cstop && b->qn < b->cfg.batch_max_ops) {
			uint64_t now = dnet_now_mono_ns();
			if (now >= deadline)
				break;
			struct timespec ts;
			clock_gettime(CLOCK_MONOTONIC, &ts);
			uint64_t left = deadline - now;
			ts.tv_sec += (time_t)(left / 1000000000ull);
			ts.tv_nsec += (long)(left % 1000000000ull);
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&b->ccond, &b->clock, &ts);
		}
		struct bl_pend *batch = b->q;
		b->q = NULL;
		b->qtail = &b->q;
		b->qn = 0;
		pthread_mutex_unlock(&b->clock);

		/* one fdatasync per distinct blob in the batch (almost always one) */
		struct blob *done_blobs[8];
		int done_err[8], nd = 0;
		uint64_t ok = 0;
		struct bl_pend *last = NULL;
		for (struct bl_pend *p = batch; p; last = p, p = p->next) {
			int k;
			for (k = 0; k < nd && done_blobs[k] != p->blob; k++)
				;
			if (k < nd) {
				p->err = done_err[k];
			} else {
				p->err = bl_fdatasync(p->blob->fd); /* > 8 blobs: one each */
				atomic_fetch_add(&b->syncs, 1);
				if (p->err)
					dnet_log_error("blob backend %s: fdatasync of blob %u: %s",
						       b->path, p->blob->num, dnet_strerror(p->err));
				if (nd < 8) {
					done_blobs[nd] = p->blob;
					done_err[nd++] = p->err;
				}
			}
			ok += !p->err;
		}
		atomic_fetch_add(&b->synced_writes, ok);
		/* The acks go out on the acker thread: sending them here (a sendmsg
		 * each, waking each client) kept the disk idle for as long as the
		 * sync took. Writes queued meanwhile are synced at once instead. */
		pthread_mutex_lock(&b->aklock);
		*b->aktail = batch;
		b->aktail = &last->next;
		if (b->akwait)
			pthread_cond_signal(&b->akcond);
		pthread_mutex_unlock(&b->aklock);
		pthread_mutex_lock(&b->clock);
	}
	pthread_mutex_unlock(&b->clock);
	return NULL;
}

/* Completes the writes the committer synced: reclaim bookkeeping, the blob ref,
 * the caller's callback (which sends the reply). */
static void *acker(void *arg)
{
	struct dnet_backend *b = arg;
	dnet_thread_name("ell-blob-ack");
	pthread_mutex_lock(&b->aklock);
	for (;;) {
		while (!b->akq && !b->akstop) {
			b->akwait = 1;
			pthread_cond_wait(&b->akcond, &b->aklock);
			b->akwait = 0;
		}
		struct bl_pend *batch = b->akq;
		if (!batch)
			break; /* stop requested and every ack sent */
		b->akq = NULL;
		b->aktail = &b->akq;
		pthread_mutex_unlock(&b->aklock);
		while (batch) {
			struct bl_pend *p = batch;
			batch = p->next;
			if (p->err)
				dead_free(b, p->dead);
			else
				dead_push(b, p->dead, NULL);
			blob_put(b, p->blob);
			p->done(p->arg, p->err, p->err || !p->has_info ? NULL : &p->info);
			free(p);
		}
		pthread_mutex_lock(&b->aklock);
	}
	pthread_mutex_unlock(&b->aklock);
	return NULL;
}

/* Stops a thread of the engine that waits on cv under m for *stop (if *on). */
static void thread_stop(pthread_mutex_t *m, pthread_cond_t *cv, int *stop, pthread_t t, int *on)
{
	if (!*on)
		return;
	pthread_mutex_lock(m);
	*stop = 1;
	pthread_cond_signal(cv);
	pthread_mutex_unlock(m);
	pthread_join(t, NULL);
	*on = 0;
}

/* Stops the committer (it syncs every queued write first), then the acker once it
 * has sent every ack the committer handed it. */
static void stop_committer(struct dnet_backend *b)
{
	thread_stop(&b->clock, &b->ccond, &b->cstop, b->cthr, &b->cthr_on);
	thread_stop(&b->aklock, &b->akcond, &b->akstop, b->akthr, &b->akthr_on);
}

/* A synchronous wait for durable() (deletes). */
struct bl_waiter {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int finished, status;
};

static void waiter_done(void *arg, int status, const struct dnet_obj_info *info)
{
	struct bl_waiter *w = arg;
	pthread_mutex_lock(&w->lock);
	w->finished = 1;
	w->status = status;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

static int durable_wait(struct dnet_backend *b, struct blob *B, struct bl_dead *dead)
{
	struct bl_waiter w = {.finished = 0};
	pthread_mutex_init(&w.lock, NULL);
	pthread_cond_init(&w.cond, NULL);
	durable(b, B, waiter_done, &w, NULL, dead);
	pthread_mutex_lock(&w.lock);
	while (!w.finished)
		pthread_cond_wait(&w.cond, &w.lock);
	pthread_mutex_unlock(&w.lock);
	pthread_mutex_destroy(&w.lock);
	pthread_cond_destroy(&w.cond);
	return w.status;
}

/* ---- record checksums: the whole-data XXH3-128 and the block table -------------- */

#define BL_TBUF 512u /* block table entries written per pwrite */

/* Hashes a record's data in order, in pieces of any size; with tab_off set it also
 * writes the block table (at that file offset) as blocks complete. */
struct bl_hasher {
	XXH3_state_t *whole, *blk;
	uint64_t pos, size;
	uint32_t blk_fill;
	int fd;
	uint64_t tab_off, tab_next; /* 0: no table; next entry to write */
	uint32_t tn;
	uint8_t tbuf[8 * BL_TBUF];
};

static struct bl_hasher *hasher_new(uint64_t size, int fd, uint64_t tab_off)
{
	struct bl_hasher *x = calloc(1, sizeof(*x));
	if (!x)
		return NULL;
	x->whole = XXH3_createState();
	x->blk = XXH3_createState();
	if (!x->whole || !x->blk || XXH3_128bits_reset(x->whole) != XXH_OK) {
		XXH3_freeState(x->whole);
		XXH3_freeState(x->blk);
		free(x);
		return NULL;
	}
	x->size = size;
	x->fd = fd;
	x->tab_off = tab_off;
	return x;
}

static void hasher_free(struct bl_hasher *x)
{
	if (!x)
		return;
	XXH3_freeState(x->whole);
	XXH3_freeState(x->blk);
	free(x);
}

static int hasher_flush(struct bl_hasher *x)
{
	if (!x->tn)
		return 0;
	int err = dnet_pwrite_full(x->fd, x->tbuf, 8u * x->tn, x->tab_off + 8 * x->tab_next);
	x->tab_next += x->tn;
	x->tn = 0;
	return err;
}

static int hasher_entry(struct bl_hasher *x, uint64_t v)
{
	dnet_put_u64(x->tbuf + 8 * x->tn++, v);
	return x->tn == BL_TBUF ? hasher_flush(x) : 0;
}

static int hasher_update(struct bl_hasher *x, const uint8_t *d, size_t n)
{
	XXH3_128bits_update(x->whole, d, n);
	x->pos += n;
	if (!x->tab_off)
		return 0;
	while (n) {
		if (!x->blk_fill && n >= BL_BLOCK) {
			int err = hasher_entry(x, XXH3_64bits(d, BL_BLOCK));
			if (err)
				return err;
			d += BL_BLOCK;
			n -= BL_BLOCK;
			continue;
		}
		if (!x->blk_fill)
			XXH3_64bits_reset(x->blk);
		size_t k = BL_BLOCK - x->blk_fill < n ? BL_BLOCK - x->blk_fill : n;
		XXH3_64bits_update(x->blk, d, k);
		x->blk_fill += (uint32_t)k;
		d += k;
		n -= k;
		if (x->blk_fill == BL_BLOCK) {
			x->blk_fill = 0;
			int err = hasher_entry(x, XXH3_64bits_digest(x->blk));
			if (err)
				return err;
		}
	}
	return 0;
}

/* Feeds the `size` data bytes of the record at `off` to x, read back through fd:
 * 0, DNET_ECORRUPT (the file is shorter), an IO error, or the table's write error. */
static int hash_back(int fd, uint64_t off, uint64_t size, struct bl_hasher *x)
{
	uint8_t *buf = malloc(BL_IO_CHUNK);
	int err = buf ? 0 : DNET_ENOMEM;
	for (uint64_t p = 0; p < size && !err;) {
		size_t n = size - p < BL_IO_CHUNK ? (size_t)(size - p) : BL_IO_CHUNK;
		int64_t r = dnet_pread_full(fd, buf, n, off + BL_RHDR + p);
		if (r < 0)
			err = (int)r;
		else if ((size_t)r != n)
			err = DNET_ECORRUPT;
		else
			err = hasher_update(x, buf, n);
		p += n;
	}
	free(buf);
	return err;
}

/* All `size` bytes seen: the last block's entry, the table out, the checksum. */
static int hasher_finish(struct bl_hasher *x, uint8_t csum[16])
{
	int err = 0;
	if (x->pos != x->size)
		return DNET_EIO;
	if (x->tab_off && x->blk_fill) {
		x->blk_fill = 0;
		err = hasher_entry(x, XXH3_64bits_digest(x->blk));
	}
	if (!err && x->tab_off)
		err = hasher_flush(x);
	XXH128_canonical_t c;
	XXH128_canonicalFromHash(&c, XXH3_128bits_digest(x->whole));
	memcpy(csum, c.digest, 16);
	return err;
}

/* ---- writes --------------------------------------------------------------------- */

/* Appends a whole object (header with its checksum, then the data) and publishes it. */
static void write_record(struct dnet_backend *b, const uint8_t *id, const void *data, uint64_t size,
			 uint64_t timestamp, dnet_write_done_fn done, void *arg)
{
	struct bl_hdr h;
	uint8_t hb[BL_RHDR];
	struct blob *B;
	uint64_t off;
	hdr_new(&h, id, size, timestamp, 0);
	const int small = !(h.flags & BL_F_BTAB);
	struct bl_hasher *x = NULL;
	int err = 0;
	/* the checksum goes in the header, written first; the table after the data */
	dnet_csum(data, (size_t)size, h.csum);
	if (!small && !(x = hasher_new(0, -1, 0)))
		err = DNET_ENOMEM;
	hdr_encode(hb, &h);
	if (!err)
		err = append(b, hb, data, small ? (size_t)size : 0, h.reserved, 8, 0, &B, &off);
	if (err) {
		hasher_free(x);
		done(arg, err, NULL);
		return;
	}
	if (!small) {
		x->fd = B->fd;
		x->tab_off = new_tab_off(off, size); /* only its table writer is used */
		err = dnet_pwrite_full(B->fd, data, (size_t)size, off + BL_RHDR);
		for (uint64_t p = 0; !err && p < size; p += BL_BLOCK) {
			size_t k = size - p < BL_BLOCK ? (size_t)(size - p) : BL_BLOCK;
			err = hasher_entry(x, XXH3_64bits((const uint8_t *)data + p, k));
		}
		if (!err)
			err = hasher_flush(x);
		hasher_free(x);
	}
	if (err) {
		/* The header is already in the blob (records after it may be too), its data
		 * is not: mark it dead in place (flags and checksum only, torn-safe), so a
		 * recovery scan steps over it as dead space instead of reporting a corrupt
		 * record for a write that was never acknowledged. Best effort: if this
		 * write fails too, the scan skips it as a bad checksum. */
		struct bl_hdr dh = h;
		uint8_t dhb[BL_RHDR];
		dh.flags |= BL_F_DEAD;
		hdr_encode(dhb, &dh);
		(void)dnet_pwrite_full(B->fd, dhb, BL_RHDR, off);
	}
	struct bl_dead *dead = NULL;
	if (!err)
		err = publish(b, B, off, &h, &dead);
	record_done(b, B);
	if (err) {
		blob_put(b, B);
		done(arg, err, NULL);
		return;
	}
	struct dnet_obj_info info;
	info_from_hdr(&info, &h);
	durable(b, B, done, arg, &info, dead);
}

/* Reads and verifies the whole data of the record at (B, off) into a new buffer. */
static int read_verified(struct dnet_backend *b, struct blob *B, uint64_t off,
			 const struct bl_hdr *h, uint8_t **out)
{
	uint8_t *d = malloc(h->size ? (size_t)h->size : 1);
	if (!d)
		return DNET_ENOMEM;
	int64_t r = dnet_pread_full(B->fd, d, (size_t)h->size, off + BL_RHDR);
	uint8_t c[16];
	if (r >= 0 && (uint64_t)r == h->size)
		dnet_csum(d, (size_t)h->size, c);
	if (r < 0 || (uint64_t)r != h->size || memcmp(c, h->csum, 16) != 0) {
		free(d);
		if (r < 0)
			return (int)r;
		report_corrupt(b, h->id, B, off,
			       (uint64_t)r != h->size ? "truncated record"
						      : "data checksum mismatch");
		return DNET_ECORRUPT;
	}
	*out = d;
	return 0;
}

/* offset > 0: the object rebuilt in memory with the new bytes laid over it, then
 * appended whole - atomic by construction. The old data is verified first so a
 * corrupt object is never laundered under a fresh checksum. */
static void write_update(struct dnet_backend *b, const struct dnet_write_req *req,
			 dnet_write_done_fn done, void *arg)
{
	struct bl_shard *s = shard_of(b, req->id);
	uint8_t hb[BL_RHDR];
	struct bl_hdr h;
	size_t got;
	uint32_t pos;
	pthread_mutex_lock(&s->lock);
	int err = ix_resolve(b, s, req->id, &pos, hb, BL_RHDR, &got, &h);
	struct blob *B = NULL;
	uint64_t off = 0;
	if (!err) {
		B = slot_blob(b, LOC_SLOT(s->t[pos].loc));
		off = LOC_OFF(s->t[pos].loc);
		blob_get(B);
	}
	pthread_mutex_unlock(&s->lock);
	if (err) {
		done(arg, err, NULL);
		return;
	}
	const uint64_t o = req->io.offset, len = req->io.size;
	uint8_t *d = NULL;
	if (h.flags & BL_F_DEAD)
		err = DNET_ENOENT;
	else if (o > h.size)
		err = DNET_ERANGE;
	else if (len > BL_UPDATE_MAX || o + len > BL_UPDATE_MAX || h.size > BL_UPDATE_MAX)
		err = DNET_ETOOBIG;
	else
		err = read_verified(b, B, off, &h, &d);
	blob_put(b, B);
	if (err) {
		done(arg, err, NULL);
		return;
	}
	uint64_t nsize = o + len > h.size ? o + len : h.size;
	if (nsize > h.size) {
		uint8_t *n = realloc(d, (size_t)nsize);
		if (!n) {
			free(d);
			done(arg, DNET_ENOMEM, NULL);
			return;
		}
		d = n;
	}
	if (len)
		memcpy(d + o, req->data, (size_t)len);
	write_record(b, req->id, d, nsize, req->io.timestamp, done, arg);
	free(d);
}

/* ---- chunked uploads ------------------------------------------------------------ */
/* PREPARE reserves the whole object in the active blob behind an "uncommitted"
 * header; chunks are written in place; COMMIT reads the data back for its checksum
 * and rewrites the header as live. Upload state is in memory only: after a restart
 * the reservation is dead space and the next chunk gets DNET_ENOENT. A blob is not
 * sealed while it holds an unfinished upload (its index would miss the commit). */

static uint32_t up_bucket(const uint8_t *id, uint64_t cookie)
{
	return (uint32_t)((id[3] ^ cookie ^ (cookie >> 17)) % BL_UPLOAD_BUCKETS);
}

/* Under ulock. */
static struct bl_upload **up_slot(struct dnet_backend *b, const uint8_t *id, uint64_t cookie)
{
	struct bl_upload **pp = &b->up[up_bucket(id, cookie)];
	while (*pp && ((*pp)->cookie != cookie || memcmp((*pp)->id, id, DNET_ID_SIZE) != 0))
		pp = &(*pp)->next;
	return pp;
}

static void up_free(struct dnet_backend *b, struct bl_upload *u)
{
	struct blob *B = u->blob;
	if (u->spool_fd >= 0)
		close(u->spool_fd);
	if (B && !u->committed) {
		/* an abandoned reservation: nothing supersedes it, mark and punch it now */
		uint8_t id[DNET_ID_SIZE];
		memcpy(id, u->id, DNET_ID_SIZE);
		dead_push(b, dead_new(B, u->off, u->reserved, id), NULL);
	}
	hasher_free(u->hx);
	free(u);
	if (!B)
		return; /* a spooled upload that never reserved blob space */
	if (atomic_fetch_sub(&B->uploads, 1) == 1 && B != b->active)
		maint_kick(b);
	blob_put(b, B);
}

/* Drops uploads idle for longer than upload_timeout_s: their space becomes dead. */
static void up_sweep(struct dnet_backend *b, int all)
{
	uint64_t now = dnet_now_mono_ns(), limit = b->cfg.upload_timeout_s * 1000000000ull;
	struct bl_upload *gone = NULL;
	pthread_mutex_lock(&b->ulock);
	for (uint32_t k = 0; k < BL_UPLOAD_BUCKETS; k++) {
		struct bl_upload **pp = &b->up[k];
		while (*pp) {
			struct bl_upload *u = *pp;
			if (!u->busy && (all || dnet_ns_since(now, u->active_ns) > limit)) {
				*pp = u->next;
				u->next = gone;
				gone = u;
			} else {
				pp = &u->next;
			}
		}
	}
	pthread_mutex_unlock(&b->ulock);
	while (gone) {
		struct bl_upload *u = gone;
		gone = u->next;
		if (!all)
			dnet_log_info("blob backend %s: dropping abandoned upload cookie %llx",
				      b->path, (unsigned long long)u->cookie);
		up_free(b, u);
	}
}

static int up_prepare(struct dnet_backend *b, const struct dnet_write_req *req,
		      struct bl_upload **out)
{
	const struct dnet_io_attr *io = &req->io;
	if (io->total_size > BL_MAX_OBJECT)
		return DNET_ETOOBIG;
	/* a repeated PREPARE (client retry) restarts the upload */
	pthread_mutex_lock(&b->ulock);
	struct bl_upload **pp = up_slot(b, req->id, io->cookie), *old = NULL;
	if (*pp && !(*pp)->busy) {
		old = *pp;
		*pp = old->next;
	}
	pthread_mutex_unlock(&b->ulock);
	if (old)
		up_free(b, old);

	struct bl_upload *u = calloc(1, sizeof(*u));
	if (!u)
		return DNET_ENOMEM;
	u->spool_fd = -1;
	if (io->total_size == 0) {
		u->spool_fd = openat(b->dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
		if (u->spool_fd < 0) {
			int e = dnet_from_errno(errno);
			free(u);
			return e;
		}
		memcpy(u->id, req->id, DNET_ID_SIZE);
		u->cookie = io->cookie;
		u->total = BL_MAX_OBJECT;
		u->timestamp = io->timestamp ? io->timestamp : dnet_now_real_ns();
		goto out_register;
	}
	struct bl_hdr h;
	uint8_t hb[BL_RHDR];
	hdr_new(&h, req->id, io->total_size, io->timestamp, BL_F_UNCOMMITTED);
	hdr_encode(hb, &h);
	int err = append(b, hb, NULL, 0, h.reserved, BL_UPLOAD_ALIGN, AP_UPLOAD, &u->blob,
			 &u->off);
	if (err) {
		free(u);
		return err;
	}
	record_done(b, u->blob); /* the reservation itself is complete */
	u->reserved = h.reserved;
	/* no memory for it: COMMIT reads the object back */
	u->hx = hasher_new(io->total_size, u->blob->fd, new_tab_off(u->off, io->total_size));
	memcpy(u->id, req->id, DNET_ID_SIZE);
	u->cookie = io->cookie;
	u->total = io->total_size;
	u->timestamp = h.timestamp;
out_register:
	u->busy = 1;
	pthread_mutex_lock(&b->ulock);
	pp = &b->up[up_bucket(u->id, u->cookie)];
	u->next = *pp;
	*pp = u;
	pthread_mutex_unlock(&b->ulock);
	*out = u;
	return 0;
}

static void up_release(struct dnet_backend *b, struct bl_upload *u, int destroy)
{
	pthread_mutex_lock(&b->ulock);
	u->busy = 0;
	u->active_ns = dnet_now_mono_ns();
	if (destroy) {
		struct bl_upload **pp = up_slot(b, u->id, u->cookie);
		while (*pp && *pp != u)
			pp = &(*pp)->next;
		if (*pp)
			*pp = u->next;
	}
	pthread_mutex_unlock(&b->ulock);
	if (destroy)
		up_free(b, u);
}

/* The checksum of a complete upload and its block table: from the in-order hashing,
 * or by reading the object back. */
static int up_checksum(struct bl_upload *u, uint8_t csum[16])
{
	if (u->hx && u->hx->pos == u->total)
		return hasher_finish(u->hx, csum);
	struct bl_hasher *x = hasher_new(u->total, u->blob->fd, new_tab_off(u->off, u->total));
	if (!x)
		return DNET_ENOMEM;
	int err = hash_back(u->blob->fd, u->off, u->total, x);
	if (err == DNET_ECORRUPT)
		err = DNET_EIO; /* our own reservation came back short */
	if (!err)
		err = hasher_finish(x, csum);
	hasher_free(x);
	return err;
}

/* COMMIT of an upload of unknown length: reserve its now-known size in the active
 * blob and copy the spooled bytes there (in the kernel, no user-space copy). */
static int up_unspool(struct dnet_backend *b, struct bl_upload *u)
{
	struct bl_hdr h;
	uint8_t hb[BL_RHDR];
	hdr_new(&h, u->id, u->hwm, u->timestamp, BL_F_UNCOMMITTED);
	hdr_encode(hb, &h);
	int err = append(b, hb, NULL, 0, h.reserved, BL_UPLOAD_ALIGN, AP_UPLOAD, &u->blob, &u->off);
	if (err)
		return err;
	u->total = u->hwm; /* the reservation's size, should the copy fail */
	u->reserved = h.reserved;
	record_done(b, u->blob);
	loff_t in = 0, out = (loff_t)(u->off + BL_RHDR);
	while ((uint64_t)in < u->hwm) {
		ssize_t n = dnet_f_copy_file_range(u->spool_fd, &in, u->blob->fd, &out,
					    (size_t)(u->hwm - (uint64_t)in), 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? dnet_from_errno(errno) : DNET_EIO;
	}
	close(u->spool_fd);
	u->spool_fd = -1;
	u->total = u->hwm;
	return 0;
}

/* Errors about the request (range, incomplete COMMIT) leave the upload alive; IO
 * errors abort it. COMMIT with fewer than total_size bytes written is DNET_EINVAL. */
static void write_upload(struct dnet_backend *b, const struct dnet_write_req *req,
			 dnet_write_done_fn done, void *arg)
{
	const struct dnet_io_attr *io = &req->io;
	struct bl_upload *u = NULL;
	int err;
	if (io->ioflags & DNET_IO_PREPARE) {
		if ((err = up_prepare(b, req, &u))) {
			done(arg, err, NULL);
			return;
		}
	} else {
		pthread_mutex_lock(&b->ulock);
		u = *up_slot(b, req->id, io->cookie);
		if (u && u->busy)
			u = NULL;
		if (u)
			u->busy = 1;
		pthread_mutex_unlock(&b->ulock);
		if (!u) {
			done(arg, DNET_ENOENT, NULL);
			return;
		}
	}
	if (io->offset > u->total || io->size > u->total - io->offset) {
		up_release(b, u, 0);
		done(arg, DNET_ERANGE, NULL);
		return;
	}
	if (io->size) {
		if (u->spool_fd >= 0)
			err = dnet_pwrite_full(u->spool_fd, req->data, (size_t)io->size, io->offset);
		else
			err = dnet_pwrite_full(u->blob->fd, req->data, (size_t)io->size,
					u->off + BL_RHDR + io->offset);
		if (err) {
			up_release(b, u, 1);
			done(arg, err, NULL);
			return;
		}
		if (u->hx && u->spool_fd < 0 && io->offset == u->hx->pos) {
			if (hasher_update(u->hx, req->data, (size_t)io->size)) {
				hasher_free(u->hx); /* COMMIT reads back and reports it */
				u->hx = NULL;
			}
		} else if (u->hx) {
			hasher_free(u->hx); /* out of order (or resent) */
			u->hx = NULL;
		}
		if (io->offset + io->size > u->hwm)
			u->hwm = io->offset + io->size;
		u->written += io->size;
	}
	if (!(io->ioflags & DNET_IO_COMMIT)) {
		struct dnet_obj_info info;
		memset(&info, 0, sizeof(info));
		info.size = u->hwm;
		info.timestamp = u->timestamp;
		up_release(b, u, 0);
		done(arg, 0, &info);
		return;
	}
	if (u->spool_fd >= 0) {
		/* Each chunk is sent once, so bytes written == end means no holes. */
		if (u->written != u->hwm) {
			up_release(b, u, 0);
			done(arg, DNET_EINVAL, NULL);
			return;
		}
		if ((err = up_unspool(b, u))) {
			up_release(b, u, 1);
			done(arg, err, NULL);
			return;
		}
	}
	/* Fewer bytes written than the size means a hole (each chunk is sent once). */
	if (u->hwm != u->total || u->written < u->total) {
		up_release(b, u, 0);
		done(arg, DNET_EINVAL, NULL);
		return;
	}
	struct bl_hdr h;
	uint8_t hb[BL_RHDR];
	hdr_new(&h, u->id, u->total, u->timestamp, 0);
	if ((err = up_checksum(u, h.csum))) {
		up_release(b, u, 1);
		done(arg, err, NULL);
		return;
	}
	hdr_encode(hb, &h);
	struct blob *B = u->blob;
	blob_get(B);
	atomic_fetch_add(&B->inflight, 1);
	/* 4 KiB-aligned: the 128-byte header lies in one sector, so this rewrite lands
	 * whole or not at all. */
	struct bl_dead *dead = NULL;
	if (!(err = dnet_pwrite_full(B->fd, hb, BL_RHDR, u->off)))
		err = publish(b, B, u->off, &h, &dead);
	u->committed = !err;
	record_done(b, B);
	up_release(b, u, 1);
	if (err) {
		blob_put(b, B);
		done(arg, err, NULL);
		return;
	}
	struct dnet_obj_info info;
	info_from_hdr(&info, &h);
	durable(b, B, done, arg, &info, dead);
}

/* ---- write groups --------------------------------------------------------------- */

/* An IO worker runs its queue in batches (dnet_backend_batching is set on its
 * thread). Its small whole-object writes are held here and appended together when
 * the batch ends (bl_flush): one append-lock round trip and one pwritev for the
 * group instead of one each per write, and with --fsync always one fdatasync for
 * the group (what redis does per event-loop round). A write is answered (done)
 * only once its group is written, published and durable per the policy. Any other
 * call of this thread into the engine first writes the group, so a read, lookup or
 * delete that follows a write in the same batch sees it (requests for one ID run
 * in order on one worker); other threads see a held write as one not yet made. */
#define BL_GROUP_MAX 64
#define BL_GROUP_BYTES (1u << 20)

struct bl_gent {
	struct bl_hdr h;
	uint8_t hb[BL_RHDR];
	const void *data;
	dnet_write_done_fn done;
	void *arg;
};

struct bl_group {
	struct dnet_backend *b;
	uint32_t n;
	int writing; /* in group_write: a write from a done callback is not held */
	uint64_t bytes;
	struct bl_gent e[BL_GROUP_MAX];
};

static _Thread_local struct bl_group tl_group;

static void group_write(struct bl_group *g)
{
	static const uint8_t zeros[8];
	struct dnet_backend *b = g->b;
	const uint32_t n = g->n;
	struct iovec iov[3 * BL_GROUP_MAX];
	int cnt = 0;
	uint64_t len = 0;
	g->writing = 1;
	for (uint32_t i = 0; i < n; i++) {
		struct bl_gent *e = &g->e[i];
		uint64_t rl = rec_len(e->h.reserved);
		iov[cnt++] = (struct iovec){e->hb, BL_RHDR};
		if (e->h.size)
			iov[cnt++] = (struct iovec){(void *)e->data, (size_t)e->h.size};
		if (rl > BL_RHDR + e->h.size) /* to the next record's 8-byte alignment */
			iov[cnt++] = (struct iovec){(void *)zeros, (size_t)(rl - BL_RHDR - e->h.size)};
		len += rl;
	}
	struct blob *B;
	uint64_t off;
	int err = append_iov(b, iov, cnt, len, n, 8, 0, &B, &off);
	if (err) {
		for (uint32_t i = 0; i < n; i++)
			g->e[i].done(g->e[i].arg, err, NULL);
		goto out;
	}
	int perr[BL_GROUP_MAX];
	struct bl_dead *dead[BL_GROUP_MAX];
	uint64_t ok = 0, o = off;
	pthread_mutex_lock(&b->alock); /* publish(), its pending-index part for all at once */
	for (uint32_t i = 0; i < n; i++) {
		const struct bl_hdr *h = &g->e[i].h;
		perr[i] = log_push(B, h->id, o, h->size, ix_flags(h));
		o += rec_len(h->reserved);
	}
	pthread_mutex_unlock(&b->alock);
	for (uint32_t i = 0; i < n; i++) {
		dead[i] = NULL;
		if (!perr[i])
			perr[i] = publish_index(b, B, off, &g->e[i].h, &dead[i]);
		record_done(b, B);
		ok += !perr[i];
		off += rec_len(g->e[i].h.reserved);
	}
	const int always = b->cfg.fsync == DNET_FSYNC_ALWAYS;
	int serr = 0;
	if (always && ok) {
		serr = bl_fdatasync(B->fd);
		atomic_fetch_add(&b->syncs, 1);
		if (!serr)
			atomic_fetch_add(&b->synced_writes, ok);
	}
	atomic_fetch_add(&b->grouped_writes, n);
	atomic_fetch_add(&b->write_groups, 1);
	for (uint32_t i = 0; i < n; i++) {
		struct bl_gent *e = &g->e[i];
		if (perr[i]) {
			blob_put(b, B);
			e->done(e->arg, perr[i], NULL);
			continue;
		}
		struct dnet_obj_info info;
		info_from_hdr(&info, &e->h);
		if (always)
			durable_done(b, B, e->done, e->arg, &info, dead[i], serr);
		else
			durable(b, B, e->done, e->arg, &info, dead[i]);
	}
out:
	g->n = 0;
	g->bytes = 0;
	g->b = NULL;
	g->writing = 0;
}

/* Writes this thread's held group, if any (see above). */
static void group_flush(void)
{
	if (tl_group.n && !tl_group.writing)
		group_write(&tl_group);
}

/* Holds a small whole-object write for this thread's group; 0 if it cannot be. */
static int group_add(struct dnet_backend *b, const struct dnet_write_req *req,
		     dnet_write_done_fn done, void *arg)
{
	struct bl_group *g = &tl_group;
	const uint64_t size = req->io.size;
	if (!dnet_backend_batching || g->writing || new_ixfl(size))
		return 0;
	if (g->n && (g->b != b || g->n == BL_GROUP_MAX || g->bytes + size > BL_GROUP_BYTES))
		group_write(g);
	struct bl_gent *e = &g->e[g->n];
	hdr_new(&e->h, req->id, size, req->io.timestamp, 0);
	dnet_csum(req->data, (size_t)size, e->h.csum);
	hdr_encode(e->hb, &e->h);
	e->data = req->data;
	e->done = done;
	e->arg = arg;
	g->b = b;
	g->bytes += size;
	g->n++;
	return 1;
}

static void bl_flush(struct dnet_backend *b)
{
	(void)b;
	group_flush();
}

static void bl_write(struct dnet_backend *b, const struct dnet_write_req *req,
		     dnet_write_done_fn done, void *arg)
{
	const uint32_t fl = req->io.ioflags;
	if ((fl & ~DNET_IO_ENGINE_FLAGS) || (req->io.size && !req->data)) {
		done(arg, DNET_EINVAL, NULL);
		return;
	}
	if (req->io.size > BL_MAX_OBJECT) {
		done(arg, DNET_ETOOBIG, NULL);
		return;
	}
	const int upload = !!(fl & (DNET_IO_PREPARE | DNET_IO_PLAIN | DNET_IO_COMMIT));
	if (!upload && req->io.offset == 0 && group_add(b, req, done, arg))
		return;
	group_flush();
	if (upload)
		write_upload(b, req, done, arg);
	else if (req->io.offset == 0)
		write_record(b, req->id, req->data, req->io.size, req->io.timestamp, done, arg);
	else
		write_update(b, req, done, arg);
}

/* ---- reads, deletes, lookups ---------------------------------------------------- */

/* ---- reads of block-table records: verified block by block ------------------------ */

#define BL_VER_STEP 16u /* blocks verified per check: 1 MiB */
#define BL_ZAP_EVERY (8u << 20)

/* The blocks a read covers are checked against the table as the bytes go out (or
 * all of them before the read returns). A block that disagrees with its entry sends
 * the check to the whole-data checksum: if that holds, the table is what is damaged
 * (logged; the rest of the read trusts the whole checksum), else the data is. */
struct bl_ver {
	struct dnet_read_verify v;
	struct dnet_backend *b;
	struct dnet_vpin *pin;	 /* the record in the verified cache, or NULL */
	int pin_gone;		 /* ...which was dropped: held (its locked pages with
				  * it) until the read is done, but not used */
	uint32_t num;		 /* blob number, for reports */
	uint64_t loc;		 /* of the record, for the list of bad ones */
	uint64_t off;		 /* record offset */
	uint64_t size;		 /* data size */
	uint8_t csum[16];	 /* whole-data checksum */
	uint64_t next, last;	 /* blocks still to check: [next, last] */
	uint64_t tw0;		 /* first block of the loaded table window */
	uint32_t tn;		 /* entries in it */
	int whole_ok;		 /* table damaged, data verified whole */
	/* The record's data mapped once for the whole read: per-step mappings cost
	 * an mmap, a populate, an munmap and a TLB shootdown every MiB (about a
	 * third of a large GET's time). */
	const uint8_t *map; /* its data's first byte, or NULL */
	void *mbase;	    /* the mapping (page aligned) */
	size_t mlen;
	size_t zapped;		 /* [mbase, mbase + zapped) dropped from our page tables */
	size_t pgmask;		 /* page size - 1 */
	int nomap;		 /* mapping not possible here: the per-step way */
	uint8_t *buf;		 /* BL_BLOCK */
	uint8_t tab[8 * BL_TBUF]; /* table window */
};

/* The whole-data checksum of the record at `off` (of `size` data bytes) read
 * through fd: 0, DNET_ECORRUPT (mismatch or short), or an IO error. */
static int verify_whole(int fd, uint64_t off, uint64_t size, const uint8_t csum[16])
{
	struct bl_hasher *x = hasher_new(size, -1, 0);
	if (!x)
		return DNET_ENOMEM;
	uint8_t c[16];
	int err = hash_back(fd, off, size, x);
	if (!err && !(err = hasher_finish(x, c)) && memcmp(c, csum, 16) != 0)
		err = DNET_ECORRUPT;
	hasher_free(x);
	return err;
}

/* Maps the record's data for the verifier's life: 0, or 1 where that cannot be
 * done (then each step maps its own bytes, or reads them). */
static int ver_map(struct bl_ver *x, int fd)
{
	if (x->map)
		return 0;
	if (x->nomap)
		return 1;
	x->nomap = 1;
	struct stat sb;
	const uint64_t data = x->off + BL_RHDR, pg = (uint64_t)sysconf(_SC_PAGESIZE);
	const uint64_t moff = data & ~(pg - 1);
	if (!dnet_map_ready() || fstat(fd, &sb) < 0 || data + x->size > (uint64_t)sb.st_size ||
	    data + x->size - moff > (uint64_t)SIZE_MAX / 2)
		return 1;
	size_t mlen = (size_t)(data + x->size - moff);
	void *m = mmap(NULL, mlen, PROT_READ, MAP_SHARED, fd, (off_t)moff);
	if (m == MAP_FAILED)
		return 1;
	x->mbase = m;
	x->mlen = mlen;
	x->map = (const uint8_t *)m + (data - moff);
	/* a ranged read starts here: nothing before it is ever touched */
	x->zapped = (size_t)((data + x->next * BL_BLOCK - moff) & ~(pg - 1));
	x->pgmask = (size_t)(pg - 1);
	x->nomap = 0;
	return 0;
}

static int ver_check(struct dnet_read_verify *v, int fd, uint64_t from, uint64_t *end)
{
	struct bl_ver *x = (struct bl_ver *)v;
	const uint64_t data = x->off + BL_RHDR, dend = data + x->size;
	uint64_t vend = x->whole_ok || x->next > x->last ? dend : data + x->next * BL_BLOCK;
	if (from < vend || x->whole_ok || x->next > x->last) {
		*end = vend;
		return 0;
	}
	int err = 0;
	/* this step's blocks hashed where they lie in the page cache */
	uint64_t mh[BL_VER_STEP];
	const uint64_t step = x->last - x->next + 1 < BL_VER_STEP ? x->last - x->next + 1 : BL_VER_STEP;
	const uint64_t ms = x->next * BL_BLOCK, me = (x->next + step) * BL_BLOCK;
	/* 0: mh[] holds this step's digests; 1: no mapping here, pread each block */
	const uint64_t mn = (me < x->size ? me : x->size) - ms;
	int by_pread;
	const uint8_t *pm = NULL; /* the step locked in the verified cache */
	if (x->pin && !x->pin_gone) {
		int cv = dnet_vpin_covered(x->pin, fd, x->next, step);
		if (cv > 0) { /* verified before, locked since, the file unchanged */
			x->next += step;
			*end = x->next > x->last ? dend : data + x->next * BL_BLOCK;
			return 0;
		}
		if (cv < 0)
			x->pin_gone = 1;
		else
			pm = dnet_vpin_claim(x->pin, x->next, step);
	}
	if (pm) {
		by_pread = dnet_hash_blocks_in(pm, mn, BL_BLOCK, mh);
	} else if (ver_map(x, fd) == 0) {
		by_pread = dnet_hash_blocks_in(x->map + ms, mn, BL_BLOCK, mh);
		/* Hashed pages leave our page tables every BL_ZAP_EVERY bytes, so a
		 * large read does not count the object in the process's RSS (and one
		 * TLB flush per 8 MiB instead of one per step). */
		size_t done = (size_t)((x->map + ms + mn) - (const uint8_t *)x->mbase) & ~x->pgmask;
		if (done - x->zapped >= BL_ZAP_EVERY) { /* the rest goes with the munmap */
			madvise((uint8_t *)x->mbase + x->zapped, done - x->zapped, MADV_DONTNEED);
			x->zapped = done;
		}
	} else {
		by_pread = dnet_hash_blocks_mapped(fd, data + ms, mn, BL_BLOCK, mh);
	}
	if (by_pread < 0) {
		if (pm)
			dnet_vpin_done(x->pin, 0);
		return by_pread;
	}
	const uint64_t first = x->next;
	if (by_pread && !x->buf && !(x->buf = malloc(BL_BLOCK))) {
		if (pm)
			dnet_vpin_done(x->pin, 0);
		return DNET_ENOMEM;
	}
	for (uint32_t k = 0; k < BL_VER_STEP && x->next <= x->last && !err; k++, x->next++) {
		if (x->next < x->tw0 || x->next >= x->tw0 + x->tn) {
			uint64_t n = btab_n(x->size) - x->next;
			x->tn = n < BL_TBUF ? (uint32_t)n : BL_TBUF;
			x->tw0 = x->next;
			int64_t r = dnet_pread_full(fd, x->tab, 8u * x->tn,
						    data + btab_at(x->size) + 8 * x->next);
			if (r != (int64_t)(8u * x->tn)) {
				x->tn = 0;
				err = r < 0 ? (int)r : DNET_ECORRUPT;
				break;
			}
		}
		const uint64_t want = dnet_get_u64(x->tab + 8 * (x->next - x->tw0));
		if (!by_pread) {
			if (mh[x->next - first] != want)
				err = DNET_ECORRUPT;
			continue;
		}
		uint64_t bs = x->next * BL_BLOCK;
		size_t n = x->size - bs < BL_BLOCK ? (size_t)(x->size - bs) : BL_BLOCK;
		int64_t r = dnet_pread_full(fd, x->buf, n, data + bs);
		if (r < 0)
			err = (int)r;
		else if ((size_t)r != n || XXH3_64bits(x->buf, n) != want)
			err = DNET_ECORRUPT;
	}
	if (pm)
		dnet_vpin_done(x->pin, !err);
	if (err == DNET_ECORRUPT) {
		/* the data, or only its table? the whole checksum decides */
		err = verify_whole(fd, x->off, x->size, x->csum);
		if (!err) {
			dnet_log_warn("blob backend %s: the block table of a record in blob %u at "
				      "offset %llu is damaged (its data is intact); reads of it "
				      "verify the whole object; compaction or a rewrite mends it",
				      x->b->path, x->num, (unsigned long long)x->off);
			x->whole_ok = 1;
			atomic_fetch_add(&x->b->table_fallbacks, 1);
		} else if (err == DNET_ECORRUPT) {
			report_corrupt_num(x->b, x->v.id, x->num, x->off, "data checksum mismatch");
			dnet_bad_ring_note(&x->b->bad, x->v.id, x->loc);
		}
	}
	if (err)
		return err;
	*end = x->whole_ok || x->next > x->last ? dend : data + x->next * BL_BLOCK;
	return 0;
}

static void ver_free(struct dnet_read_verify *v)
{
	struct bl_ver *x = (struct bl_ver *)v;
	dnet_vpin_put(x->pin);
	if (x->mbase)
		munmap(x->mbase, x->mlen);
	free(x->buf);
	free(x);
}

static int bl_read(struct dnet_backend *b, const uint8_t *id, uint64_t offset, uint64_t size,
		   uint32_t flags, struct dnet_read_res *res)
{
	group_flush();
	uint8_t first[BL_READ_FIRST];
	struct bl_shard *s = shard_of(b, id);
	struct bl_hdr h;
	size_t got;
	uint32_t pos;
	int err;

	memset(res, 0, sizeof(*res));
	res->fd = -1;
	pthread_mutex_lock(&s->lock);
	err = ix_resolve(b, s, id, &pos, first, sizeof(first), &got, &h);
	struct blob *B = NULL;
	uint64_t off = 0;
	if (!err) {
		B = slot_blob(b, LOC_SLOT(s->t[pos].loc));
		off = LOC_OFF(s->t[pos].loc);
		blob_get(B);
	}
	pthread_mutex_unlock(&s->lock);
	if (err)
		return err;
	if (h.flags & BL_F_DEAD) { /* never current; defensive */
		err = DNET_ENOENT;
		goto out;
	}
	if (offset > h.size) {
		err = DNET_ERANGE;
		goto out;
	}
	uint64_t len = h.size - offset;
	if (size && size < len)
		len = size;
	info_from_hdr(&res->info, &h);
	const int verify = !(flags & DNET_FLAG_NOCSUM);

	if (h.size <= BL_SMALL) {
		/* one pread usually brought the whole record: verify and serve from memory */
		uint8_t *d = NULL;
		const uint8_t *data;
		if (got - BL_RHDR >= h.size) {
			data = first + BL_RHDR;
		} else {
			if (!(d = malloc((size_t)h.size))) {
				err = DNET_ENOMEM;
				goto out;
			}
			memcpy(d, first + BL_RHDR, got - BL_RHDR);
			int64_t r = blob_pread(B, d + (got - BL_RHDR),
					       (size_t)(h.size - (got - BL_RHDR)), off + got);
			if (r < 0 || (uint64_t)r != h.size - (got - BL_RHDR)) {
				free(d);
				if (r < 0) {
					err = (int)r;
				} else {
					err = DNET_ECORRUPT;
					report_corrupt(b, id, B, off, "truncated record");
				}
				goto out;
			}
			data = d;
		}
		if (verify) {
			uint8_t c[16];
			dnet_csum(data, (size_t)h.size, c);
			if (memcmp(c, h.csum, 16) != 0) {
				free(d);
				report_corrupt(b, id, B, off, "data checksum mismatch");
				err = DNET_ECORRUPT;
				goto out;
			}
		}
		if (len) {
			if (d && offset == 0 && len == h.size) {
				res->buf = d;
				d = NULL;
			} else if ((res->buf = malloc((size_t)len))) {
				memcpy(res->buf, data + offset, (size_t)len);
			} else {
				err = DNET_ENOMEM;
			}
		}
		free(d);
		res->len = err ? 0 : len;
		goto out;
	}

	/* large, with a block table: the blocks the read covers, as they are sent or now */
	if (verify && (h.flags & BL_F_BTAB) && len) {
		struct bl_ver *x = calloc(1, sizeof(*x));
		int fd = x ? lease_fd(B, off, BL_RHDR + h.reserved) : -1;
		if (!x || fd < 0) {
			err = x ? bl_errno() : DNET_ENOMEM;
			free(x);
			goto out;
		}
		x->v.check = ver_check;
		x->v.free = ver_free;
		memcpy(x->v.id, id, DNET_ID_SIZE);
		x->b = b;
		x->num = B->num;
		x->loc = mkloc(B->slot, off);
		x->off = off;
		x->size = h.size;
		memcpy(x->csum, h.csum, 16);
		x->next = offset / BL_BLOCK;
		x->last = (offset + len - 1) / BL_BLOCK;
		/* under our reference to B: its entries are dropped before it is freed */
		x->pin = dnet_vpin_get(b->vc, B, off, fd, off + BL_RHDR, h.size, BL_BLOCK);
		res->fd = fd;
		res->file_offset = off + BL_RHDR + offset;
		res->len = len;
		if ((flags & DNET_READ_DEFER_VERIFY) && !dnet_bad_ring_known(&b->bad, id, x->loc)) {
			res->verify = &x->v;
			goto out;
		}
		for (uint64_t at = res->file_offset, e; at < res->file_offset + len && !err; at = e)
			err = ver_check(&x->v, fd, at, &e);
		ver_free(&x->v);
		if (err) {
			close(fd);
			res->fd = -1;
			res->len = 0;
		}
		goto out;
	}

	/* large: verify the whole record by streaming it, then hand out a file range */
	if (verify && (err = verify_whole(B->fd, off, h.size, h.csum))) {
		if (err == DNET_ECORRUPT)
			report_corrupt(b, id, B, off, "data checksum mismatch");
		goto out;
	}
	if (len) {
		int fd = lease_fd(B, off, BL_RHDR + h.size);
		if (fd < 0) {
			err = bl_errno();
			goto out;
		}
		res->fd = fd;
		res->file_offset = off + BL_RHDR + offset;
	}
	res->len = len;
out:
	blob_put(b, B);
	return err;
}

static int bl_lookup(struct dnet_backend *b, const uint8_t *id, struct dnet_obj_info *info)
{
	group_flush();
	struct bl_shard *s = shard_of(b, id);
	uint8_t hb[BL_RHDR];
	struct bl_hdr h;
	size_t got;
	uint32_t pos;
	pthread_mutex_lock(&s->lock);
	int err = ix_resolve(b, s, id, &pos, hb, BL_RHDR, &got, &h);
	pthread_mutex_unlock(&s->lock);
	if (!err && (h.flags & BL_F_DEAD))
		err = DNET_ENOENT;
	if (!err)
		info_from_hdr(info, &h);
	return err;
}

/* A delete when not even a tombstone fits (the reserve is used up): the current
 * record's header is rewritten in place as TOMB|DEAD - a tombstone that still spans
 * the old record - changing only flags and checksum, like a dead-mark. Its blob's
 * index file (which lists it as live) is removed first, so a restart scans that blob
 * and sees the tombstone; compaction later writes a plain tombstone and a new index.
 * Durable per the fsync policy before it returns; then the data is punched. */
static int del_in_place(struct dnet_backend *b, const uint8_t *id)
{
	struct bl_shard *s = shard_of(b, id);
	uint8_t hb[BL_RHDR];
	struct bl_hdr h;
	size_t got;
	uint32_t pos;
	/* no compaction may copy, and no seal may index, the record while we change it */
	pthread_mutex_lock(&b->cmp_lock);
	pthread_mutex_lock(&b->seal_lock);
	pthread_mutex_lock(&s->lock);
	int err = ix_resolve(b, s, id, &pos, hb, BL_RHDR, &got, &h);
	struct blob *O = NULL;
	uint64_t loc = 0;
	if (!err) {
		loc = s->t[pos].loc;
		O = slot_blob(b, LOC_SLOT(loc));
		blob_get(O);
	}
	pthread_mutex_unlock(&s->lock);
	if (err) {
		pthread_mutex_unlock(&b->seal_lock);
		pthread_mutex_unlock(&b->cmp_lock);
		return err == DNET_ENOENT ? err : DNET_ENOSPC;
	}
	const uint64_t off = LOC_OFF(loc);
	char name[BL_NAME_MAX];
	blob_name(name, O->num, "index");
	if (unlinkat(b->dirfd, name, 0) == 0)
		err = fsync_dir(b);
	else if (errno != ENOENT)
		err = bl_errno();
	struct bl_hdr nh = h;
	nh.flags |= BL_F_TOMB | BL_F_DEAD;
	hdr_encode(hb, &nh);
	if (!err)
		err = dnet_pwrite_full(O->fd, hb, BL_RHDR, off);
	if (!err && b->cfg.fsync != DNET_FSYNC_NEVER)
		err = bl_fdatasync(O->fd);
	if (err) {
		pthread_mutex_unlock(&b->seal_lock);
		pthread_mutex_unlock(&b->cmp_lock);
		blob_put(b, O);
		return err;
	}
	/* an unsealed blob's next index must list the tombstone */
	pthread_mutex_lock(&b->alock);
	if (!atomic_load(&O->sealed))
		log_push(O, id, off, 0, BL_IX_TOMB);
	pthread_mutex_unlock(&b->alock);
	/* the tombstone is counted before the cell goes: compaction (which finds a
	 * blob with no live bytes, no tombstone and no cell empty) must not take
	 * O for empty in between */
	atomic_fetch_add(&O->tomb, (int64_t)rec_len(0));
	pthread_mutex_lock(&s->lock);
	int64_t p = ix_find_loc(s, id, loc);
	if (p >= 0) {
		unaccount(b, loc, &h);
		ix_remove(s, (uint32_t)p);
		atomic_fetch_sub(&b->objects, 1);
	}
	pthread_mutex_unlock(&s->lock);
	pthread_mutex_unlock(&b->seal_lock);
	pthread_mutex_unlock(&b->cmp_lock);
	atomic_fetch_add(&b->inplace_dels, 1);
	dnet_log_warn("blob backend %s: no space for a tombstone: deleted in place in blob %u",
		      b->path, O->num);
	dead_push(b, dead_new(O, off, h.reserved, id), NULL);
	blob_put(b, O);
	if (b->punch_mode != DNET_BLOB_PUNCH_MANUAL)
		reclaim(b, DNET_BLOB_RECLAIM_ALL | DNET_BLOB_RECLAIM_FORCE);
	return 0;
}

static int bl_del(struct dnet_backend *b, const uint8_t *id)
{
	group_flush();
	struct bl_shard *s = shard_of(b, id);
	uint8_t hb[BL_RHDR];
	struct bl_hdr h;
	size_t got;
	uint32_t pos;
	pthread_mutex_lock(&s->lock);
	int err = ix_resolve(b, s, id, &pos, hb, BL_RHDR, &got, &h);
	pthread_mutex_unlock(&s->lock);
	if (err && err != DNET_ECORRUPT)
		return err;
	hdr_new(&h, id, 0, 0, BL_F_TOMB);
	dnet_csum("", 0, h.csum);
	hdr_encode(hb, &h);
	struct blob *B;
	uint64_t off;
	if ((err = append(b, hb, NULL, 0, 0, 8, AP_TOMB, &B, &off)))
		return err == DNET_ENOSPC ? del_in_place(b, id) : err;
	struct bl_dead *dead = NULL;
	err = publish(b, B, off, &h, &dead);
	record_done(b, B);
	if (err) {
		blob_put(b, B);
		return err;
	}
	return durable_wait(b, B, dead);
}

/* Snapshot of one shard at a time; each entry's header is read after the lock is
 * dropped (the blob is held by a reference), so callbacks may call the engine. */
static int bl_iterate(struct dnet_backend *b, dnet_iterate_fn fn, void *arg)
{
	group_flush();
	struct bl_ent *snap = NULL;
	size_t cap = 0;
	int rc = 0;
	for (uint32_t k = 0; k < BL_SHARDS && !rc; k++) {
		struct bl_shard *s = &b->sh[k];
		pthread_mutex_lock(&s->lock);
		if (s->n > cap) {
			struct bl_ent *n = realloc(snap, s->n * sizeof(*n));
			if (!n) {
				pthread_mutex_unlock(&s->lock);
				free(snap);
				return DNET_ENOMEM;
			}
			snap = n;
			cap = s->n;
		}
		size_t n = 0;
		for (uint32_t i = 0; i < s->cap; i++) {
			if (s->t[i].loc) {
				snap[n++] = s->t[i];
				blob_get(slot_blob(b, LOC_SLOT(s->t[i].loc)));
			}
		}
		pthread_mutex_unlock(&s->lock);
		for (size_t i = 0; i < n; i++) {
			struct blob *B = slot_blob(b, LOC_SLOT(snap[i].loc));
			uint8_t hb[BL_RHDR];
			struct bl_hdr h;
			if (!rc && dnet_pread_full(B->fd, hb, BL_RHDR, LOC_OFF(snap[i].loc)) == BL_RHDR &&
			    hdr_decode(hb, &h) == 0 && !(h.flags & BL_F_DEAD) &&
			    memcmp(h.id, snap[i].p, BL_PREFIX) == 0) {
				struct dnet_obj_info info;
				info_from_hdr(&info, &h);
				rc = fn(arg, h.id, &info);
			}
			blob_put(b, B);
		}
	}
	free(snap);
	return rc;
}

static int bl_sync(struct dnet_backend *b)
{
	group_flush();
	struct blob *list[64];
	int n = 0, err = 0;
	pthread_mutex_lock(&b->llock);
	for (struct blob *B = b->blobs; B && n < 64; B = B->next) {
		if (!atomic_load(&B->sealed)) {
			blob_get(B);
			list[n++] = B;
		}
	}
	pthread_mutex_unlock(&b->llock);
	for (int i = 0; i < n; i++) {
		int e = bl_fdatasync(list[i]->fd);
		atomic_fetch_add(&b->syncs, 1);
		if (e && !err)
			err = e;
		blob_put(b, list[i]);
	}
	return err;
}

static int bl_stat(struct dnet_backend *b, struct dnet_backend_stat *st)
{
	memset(st, 0, sizeof(*st));
	st->objects = atomic_load(&b->objects);
	st->bytes = atomic_load(&b->bytes);
	pthread_mutex_lock(&b->llock);
	for (struct blob *B = b->blobs; B; B = B->next)
		st->disk_bytes += atomic_load(&B->size);
	pthread_mutex_unlock(&b->llock);
	struct statvfs sv;
	if (fstatvfs(b->dirfd, &sv) == 0)
		st->disk_free = (uint64_t)sv.f_bavail * sv.f_frsize;
	st->syncs = atomic_load(&b->syncs);
	st->synced_writes = atomic_load(&b->synced_writes);
	st->write_groups = atomic_load(&b->write_groups);
	st->grouped_writes = atomic_load(&b->grouped_writes);
	st->corrupt = atomic_load(&b->corrupt);
	dnet_vcache_stat(b->vc, &st->vcache);
	return 0;
}

/* ---- index files ---------------------------------------------------------------- */

static int lrec_cmp(const void *a, const void *b)
{
	const struct bl_lrec *x = a, *y = b;
	int c = memcmp(x->p, y->p, BL_PREFIX);
	if (c)
		return c;
	uint64_t ox = x->off & ~7ull, oy = y->off & ~7ull;
	return ox < oy ? -1 : ox > oy;
}

/* The entries B's index file lists: all tombstones, and live records still current.
 * B must be quiescent (no inflight records, no uploads). */
static int index_build(struct dnet_backend *b, struct blob *B, struct bl_lrec **out, size_t *nout)
{
	struct bl_lrec *e = malloc((B->nlog ? B->nlog : 1) * sizeof(*e));
	if (!e)
		return DNET_ENOMEM;
	size_t n = 0;
	for (size_t i = 0; i < B->nlog; i++) {
		const struct bl_lrec *r = &B->log[i];
		if (!(r->off & BL_IX_TOMB)) {
			struct bl_shard *s = shard_of(b, r->p);
			pthread_mutex_lock(&s->lock);
			int64_t pos = ix_find_loc(s, r->p, mkloc(B->slot, r->off));
			pthread_mutex_unlock(&s->lock);
			if (pos < 0)
				continue;
		}
		e[n++] = *r;
	}
	qsort(e, n, sizeof(*e), lrec_cmp);
	*out = e;
	*nout = n;
	return 0;
}

/* Writes the index of [0, covered) of blob (num, gen) as `name` (blob-N.index, or
 * blob-N.index.compact during compaction): temp file, sync, rename. */
static int index_write(struct dnet_backend *b, const char *name, uint32_t num, uint64_t gen,
		       uint64_t covered, const struct bl_lrec *e, size_t n)
{
	char tmp[BL_NAME_MAX + 8];
	snprintf(tmp, sizeof(tmp), "%s.tmp", name);
	int fd = openat(b->dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return bl_errno();
	uint8_t *buf = malloc(BL_IO_CHUNK);
	XXH3_state_t *st = XXH3_createState();
	int err = 0;
	if (!buf || !st || XXH3_64bits_reset(st) != XXH_OK) {
		err = DNET_ENOMEM;
		goto out;
	}
	uint64_t pos = BL_IHDR;
	size_t fill = 0;
	for (size_t i = 0; i < n && !err; i++) {
		uint8_t *p = buf + fill;
		memcpy(p, e[i].p, BL_PREFIX);
		dnet_put_u64(p + 16, e[i].off);
		dnet_put_u64(p + 24, e[i].size);
		fill += BL_IENT;
		if (fill + BL_IENT > BL_IO_CHUNK || i + 1 == n) {
			XXH3_64bits_update(st, buf, fill);
			err = dnet_pwrite_full(fd, buf, fill, pos);
			pos += fill;
			fill = 0;
		}
	}
	if (err)
		goto out;
	uint8_t h[BL_IHDR];
	memset(h, 0, sizeof(h));
	dnet_put_u32(h, BL_MAGIC_IDX);
	dnet_put_u16(h + 4, BL_VERSION);
	dnet_put_u32(h + 8, num);
	dnet_put_u64(h + 16, gen);
	dnet_put_u64(h + 24, covered);
	dnet_put_u64(h + 32, n);
	dnet_put_u64(h + 40, XXH3_64bits_digest(st));
	dnet_put_u64(h + 56, XXH3_64bits(h, 56));
	if ((err = dnet_pwrite_full(fd, h, BL_IHDR, 0)) || (err = bl_fdatasync(fd)))
		goto out;
	if (dnet_f_renameat(b->dirfd, tmp, b->dirfd, name) < 0) {
		err = bl_errno();
		goto out;
	}
	err = fsync_dir(b);
out:
	XXH3_freeState(st);
	free(buf);
	close(fd);
	if (err) {
		unlinkat(b->dirfd, tmp, 0);
		dnet_log_error("blob backend %s: writing %s: %s", b->path, name,
			       dnet_strerror(err));
	}
	return err;
}

/* Seals B: durable, preallocation trimmed, index file written. 1 = not yet
 * (records or uploads in flight), 0 = done, < 0 error. */
static int seal(struct dnet_backend *b, struct blob *B)
{
	pthread_mutex_lock(&b->alock);
	int busy = atomic_load(&B->inflight) || atomic_load(&B->uploads);
	pthread_mutex_unlock(&b->alock);
	if (busy)
		return 1;
	struct bl_lrec *e;
	size_t n;
	uint64_t size = atomic_load(&B->size);
	int err = bl_fdatasync(B->fd);
	if (!err && dnet_f_ftruncate(B->fd, (off_t)size) < 0)
		err = bl_errno();
	if (!err)
		err = index_build(b, B, &e, &n);
	if (err)
		return err;
	char name[BL_NAME_MAX];
	blob_name(name, B->num, "index");
	err = index_write(b, name, B->num, B->gen, size, e, n);
	free(e);
	if (err)
		return err;
	pthread_mutex_lock(&b->alock);
	free(B->log);
	B->log = NULL;
	B->nlog = B->caplog = 0;
	pthread_mutex_unlock(&b->alock);
	blob_mark_sealed(B);
	atomic_fetch_add(&b->nseals, 1);
	return 0;
}

/* Seals every blob waiting for it; returns how many still wait. */
static int seal_pending(struct dnet_backend *b)
{
	int left = 0;
	pthread_mutex_lock(&b->seal_lock);
	for (;;) {
		struct blob *B = NULL;
		pthread_mutex_lock(&b->llock);
		int skipped = 0;
		for (struct blob *x = b->blobs; x; x = x->next) {
			if (x->seal_wanted && !atomic_load(&x->sealed)) {
				if (skipped++ < left)
					continue;
				B = x;
				blob_get(B);
				break;
			}
		}
		pthread_mutex_unlock(&b->llock);
		if (!B)
			break;
		int r = seal(b, B);
		if (r == 0) {
			pthread_mutex_lock(&b->llock);
			B->seal_wanted = 0;
			pthread_mutex_unlock(&b->llock);
		} else {
			left++;
		}
		blob_put(b, B);
	}
	pthread_mutex_unlock(&b->seal_lock);
	return left;
}

/* ---- loading at open ------------------------------------------------------------ */

/* Applies one record found at (B, off) - from an index file (id = prefix only, full
 * = NULL) or a scan (full ID known) - on top of what older records built. */
static int apply(struct dnet_backend *b, struct blob *B, const uint8_t *p, const uint8_t *full,
		 uint64_t off, uint64_t size, unsigned ixfl, int to_log)
{
	const int tomb = !!(ixfl & BL_IX_TOMB);
	struct bl_shard *s = shard_of(b, p);
	uint8_t hb[BL_RHDR], fid[DNET_ID_SIZE];
	struct bl_hdr h;
	size_t got;
	uint32_t pos;
	int err = 0;

	if (to_log && (err = log_push(B, p, off, size, ixfl)))
		return err;
	if (tomb)
		atomic_fetch_add(&B->tomb, (int64_t)rec_len(0));
	int cand = 0;
	for (uint32_t i = ix_home(s, p); s->t[i].loc && !cand; i = ix_next(s, i))
		cand = memcmp(s->t[i].p, p, BL_PREFIX) == 0;
	if (cand) {
		/* an older version, or (2^-128) a prefix twin: full IDs decide */
		if (!full) {
			if (dnet_pread_full(B->fd, hb, BL_RHDR, off) != BL_RHDR ||
			    hdr_decode(hb, &h) != 0 || memcmp(h.id, p, BL_PREFIX) != 0) {
				report_corrupt(b, p, B, off, "index entry points at a bad header");
				return 0;
			}
			memcpy(fid, h.id, DNET_ID_SIZE);
			full = fid;
		}
		int r = ix_resolve(b, s, full, &pos, hb, BL_RHDR, &got, &h);
		if (r == 0 || r == DNET_ECORRUPT) {
			unaccount(b, s->t[pos].loc, r == 0 ? &h : NULL);
			if (tomb) {
				ix_remove(s, pos);
				atomic_fetch_sub(&b->objects, 1);
			} else {
				s->t[pos].loc = mkloc(B->slot, off);
				atomic_fetch_add(&B->live, (int64_t)rec_len(rec_reserved(size, ixfl)));
				atomic_fetch_add(&b->bytes, size);
			}
			return 0;
		}
	}
	if (tomb)
		return 0;
	if ((err = ix_insert(s, p, mkloc(B->slot, off))))
		return err;
	atomic_fetch_add(&b->objects, 1);
	atomic_fetch_add(&B->live, (int64_t)rec_len(rec_reserved(size, ixfl)));
	atomic_fetch_add(&b->bytes, size);
	return 0;
}

/* Checks blob-N.index against blob B of `fsize` bytes and applies it. Returns the
 * bytes it covers, or 0 when there is no usable index (then the blob is scanned). */
static uint64_t index_load(struct dnet_backend *b, struct blob *B, uint64_t fsize, int last,
			   int *sealed, int *err)
{
	char name[BL_NAME_MAX];
	blob_name(name, B->num, "index");
	*err = 0;
	int fd = openat(b->dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	uint8_t h[BL_IHDR];
	uint8_t *buf = NULL;
	struct stat sb;
	uint64_t covered = 0, n = 0;
	const char *why = NULL;
	if (fstat(fd, &sb) < 0 || dnet_pread_full(fd, h, BL_IHDR, 0) != BL_IHDR) {
		why = "unreadable";
		goto out;
	}
	covered = dnet_get_u64(h + 24);
	n = dnet_get_u64(h + 32);
	if (dnet_get_u32(h) != BL_MAGIC_IDX || dnet_get_u16(h + 4) != BL_VERSION ||
	    dnet_get_u64(h + 56) != XXH3_64bits(h, 56) || dnet_get_u32(h + 8) != B->num) {
		why = "bad header";
		goto out;
	}
	if (dnet_get_u64(h + 16) != B->gen || covered > fsize || covered < BL_BHDR ||
	    n > covered / BL_RHDR + 1 || (uint64_t)sb.st_size != BL_IHDR + n * BL_IENT) {
		why = "does not match its blob";
		goto out;
	}
	if (!(buf = malloc(BL_IO_CHUNK))) {
		*err = DNET_ENOMEM;
		goto out;
	}
	/* pass 1: checksum and bounds of every entry; pass 2: apply */
	for (int pass = 0; pass < 2 && !why; pass++) {
		XXH3_state_t *st = XXH3_createState();
		if (!st || XXH3_64bits_reset(st) != XXH_OK) {
			XXH3_freeState(st);
			*err = DNET_ENOMEM;
			goto out;
		}
		uint8_t prev[BL_PREFIX];
		memset(prev, 0, sizeof(prev));
		for (uint64_t i = 0; i < n && !why && !*err;) {
			size_t k =
			    n - i < BL_IO_CHUNK / BL_IENT ? (size_t)(n - i) : BL_IO_CHUNK / BL_IENT;
			if (dnet_pread_full(fd, buf, k * BL_IENT, BL_IHDR + i * BL_IENT) !=
			    (int64_t)(k * BL_IENT)) {
				if (pass)
					*err =
					    DNET_EIO; /* half applied: cannot fall back to a scan */
				else
					why = "short read";
				break;
			}
			XXH3_64bits_update(st, buf, k * BL_IENT);
			for (size_t j = 0; j < k && !why && !*err; j++) {
				const uint8_t *e = buf + j * BL_IENT;
				uint64_t off = dnet_get_u64(e + 16) & ~7ull,
					 size = dnet_get_u64(e + 24);
				unsigned fl = (unsigned)(dnet_get_u64(e + 16) & 7);
				int tomb = !!(fl & BL_IX_TOMB);
				if (pass == 0) {
					if ((fl & ~(BL_IX_TOMB | BL_IX_BTAB)) || off < BL_BHDR ||
					    size > BL_MAX_OBJECT ||
					    off + rec_len(rec_reserved(size, fl)) > align_up(covered, 8) ||
					    (tomb && (size || (fl & BL_IX_BTAB))) ||
					    memcmp(prev, e, BL_PREFIX) > 0)
						why = "bad entry";
					memcpy(prev, e, BL_PREFIX);
				} else {
					*err = apply(b, B, e, NULL, off, size, fl, !*sealed);
				}
			}
			i += k;
		}
		if (pass == 0 && !why && XXH3_64bits_digest(st) != dnet_get_u64(h + 40))
			why = "checksum mismatch";
		XXH3_freeState(st);
		if (pass == 0 && !why)
			*sealed = covered == fsize && !last;
	}
out:
	free(buf);
	close(fd);
	if (why) {
		dnet_log_warn("blob backend %s: ignoring %s (%s); scanning the blob", b->path, name,
			      why);
		return 0;
	}
	b->recovered += n;
	return covered;
}

/* Sequential reader over a blob with a large buffer (restart scans, compaction). */
struct reader {
	int fd;
	uint8_t *buf;
	uint64_t boff, fsize;
	size_t blen;
};

/* [off, off+len) of the file (len <= BL_SCAN_BUF), or NULL past the end / on error. */
static const uint8_t *rd_get(struct reader *r, uint64_t off, size_t len)
{
	if (off >= r->boff && off + len <= r->boff + r->blen)
		return r->buf + (off - r->boff);
	if (off + len > r->fsize)
		return NULL;
	size_t n = r->fsize - off < BL_SCAN_BUF ? (size_t)(r->fsize - off) : BL_SCAN_BUF;
	int64_t got = dnet_pread_full(r->fd, r->buf, n, off);
	if (got < (int64_t)len)
		return NULL;
	r->boff = off;
	r->blen = (size_t)got;
	return r->buf;
}

/* Verifies the data checksum of a record through the reader: 1 good, 0 bad. */
static int rd_verify(struct reader *r, uint64_t off, const struct bl_hdr *h)
{
	XXH3_state_t *st = XXH3_createState();
	int ok = st && XXH3_128bits_reset(st) == XXH_OK;
	for (uint64_t p = 0; p < h->size && ok;) {
		size_t n = h->size - p < BL_IO_CHUNK ? (size_t)(h->size - p) : BL_IO_CHUNK;
		const uint8_t *d = rd_get(r, off + BL_RHDR + p, n);
		if (!d)
			ok = 0;
		else
			XXH3_128bits_update(st, d, n);
		p += n;
	}
	if (ok) {
		XXH128_canonical_t c;
		XXH128_canonicalFromHash(&c, XXH3_128bits_digest(st));
		ok = memcmp(c.digest, h->csum, 16) == 0;
	}
	XXH3_freeState(st);
	return ok;
}

/* Walks the records of B from `start` to `fsize`. Returns the end of the last good
 * record (where a torn tail starts) via *valid_end. For each record with a valid
 * header, calls cb (data verified when `verify`; *good = 0 if it failed). */
typedef int (*scan_fn)(struct dnet_backend *b, struct blob *B, struct reader *r, uint64_t off,
		       const struct bl_hdr *h, int good, void *arg);

static int scan(struct dnet_backend *b, struct blob *B, uint64_t start, uint64_t fsize, int verify,
		scan_fn cb, void *arg, uint64_t *valid_end)
{
	struct reader r = {.fd = B->fd, .fsize = fsize};
	if (!(r.buf = malloc(BL_SCAN_BUF)))
		return DNET_ENOMEM;
	uint64_t off = start, good_end = start;
	int err = 0;
	while (!err) {
		off = align_up(off, 8);
		struct bl_hdr h;
		const uint8_t *p = rd_get(&r, off, BL_RHDR);
		if (!p || hdr_decode(p, &h) != 0) {
			/* an upload starts at the next 4 KiB boundary after a zero gap */
			uint64_t a = align_up(off, BL_UPLOAD_ALIGN);
			const uint8_t *z = a > off ? rd_get(&r, off, (size_t)(a - off)) : NULL;
			size_t i = 0;
			while (z && i < a - off && z[i] == 0)
				i++;
			if (z && i == a - off && a + BL_RHDR <= fsize) {
				off = a;
				continue;
			}
			break;
		}
		if (off + BL_RHDR + h.reserved > fsize)
			break; /* torn: runs past the end */
		int good = 1;
		if (h.flags & BL_F_UNCOMMITTED) {
			good = 0; /* an abandoned upload: dead space, not a reason to stop */
		} else if (h.flags & BL_F_DEAD) {
			/* superseded (maybe punched): valid, but its data is not checked */
		} else if (verify && !(h.flags & BL_F_TOMB) && !rd_verify(&r, off, &h)) {
			good = 0;
			report_corrupt(b, h.id, B, off, "skipping record with bad data checksum");
		}
		err = cb(b, B, &r, off, &h, good, arg);
		off += BL_RHDR + h.reserved;
		if (good)
			good_end = off;
	}
	free(r.buf);
	*valid_end = good_end;
	return err;
}

static int scan_apply_cb(struct dnet_backend *b, struct blob *B, struct reader *r, uint64_t off,
			 const struct bl_hdr *h, int good, void *arg)
{
	const int tomb = !!(h->flags & BL_F_TOMB);
	if (!good || ((h->flags & BL_F_DEAD) && !tomb))
		return 0;
	b->scanned++;
	b->recovered++;
	return apply(b, B, h->id, h->id, off, tomb ? 0 : h->size, ix_flags(h), 1);
}

/* Opens and loads blob `num`: its index file, then a scan of what it does not cover
 * (the torn tail cut off). `last`: the newest blob, which may become active. */
static int load_blob(struct dnet_backend *b, uint32_t num, int last, struct blob **out)
{
	char name[BL_NAME_MAX];
	uint8_t hb[BL_BHDR];
	struct stat sb;
	blob_name(name, num, "data");
	int fd = openat(b->dirfd, name, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return bl_errno();
	if (fstat(fd, &sb) < 0) {
		int err = bl_errno();
		close(fd);
		return err;
	}
	uint64_t fsize = (uint64_t)sb.st_size;
	if (dnet_pread_full(fd, hb, BL_BHDR, 0) != BL_BHDR || dnet_get_u32(hb) != BL_MAGIC_BLOB ||
	    dnet_get_u64(hb + 56) != XXH3_64bits(hb, 56) || dnet_get_u32(hb + 8) != num) {
		close(fd);
		if (last && fsize <= BL_BHDR) {
			/* crashed while creating it: nothing was ever acknowledged in it */
			unlinkat(b->dirfd, name, 0);
			return 1;
		}
		char bad[BL_NAME_MAX];
		blob_name(bad, num, "data.bad");
		dnet_log_error("blob backend %s: %s has a bad file header; moved to %s", b->path,
			       name, bad);
		dnet_f_renameat(b->dirfd, name, b->dirfd, bad);
		return 1;
	}
	struct blob *B = blob_alloc(b, num, dnet_get_u64(hb + 16), fd, fsize);
	int err;
	if (!B) {
		close(fd);
		return DNET_ENOMEM;
	}
	if ((err = blob_register(b, B, NULL))) {
		close(fd);
		blob_free(B);
		return err;
	}
	int sealed = 0;
	uint64_t covered = index_load(b, B, fsize, last, &sealed, &err);
	if (err)
		return err;
	if (covered < fsize) {
		uint64_t valid_end;
		uint64_t start = covered ? covered : BL_BHDR;
		if ((err = scan(b, B, start, fsize, 1, scan_apply_cb, NULL, &valid_end)))
			return err;
		if (valid_end < fsize) {
			dnet_log_warn(
			    "blob backend %s: %s: dropping %llu bytes of torn tail at %llu",
			    b->path, name, (unsigned long long)(fsize - valid_end),
			    (unsigned long long)valid_end);
			b->torn += fsize - valid_end;
			if (dnet_f_ftruncate(fd, (off_t)valid_end) < 0)
				return bl_errno();
			fsize = valid_end;
		}
	}
	atomic_store(&B->size, fsize);
	B->prealloc = fsize;
	if (sealed) {
		blob_mark_sealed(B);
		free(B->log);
		B->log = NULL;
		B->nlog = B->caplog = 0;
	} else if (!last) {
		B->seal_wanted = 1;
	}
	*out = B;
	return 0;
}

static int num_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

static int load_all(struct dnet_backend *b)
{
	DIR *d = fdopendir(dup(b->dirfd));
	if (!d)
		return bl_errno();
	uint32_t *nums = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;
	int err = 0;
	while ((de = readdir(d))) {
		const char *nm = de->d_name;
		size_t l = strlen(nm);
		unsigned num;
		char tail[16];
		if ((l > 4 && strcmp(nm + l - 4, ".tmp") == 0) ||
		    (l > 8 && strcmp(nm + l - 8, ".compact") == 0)) {
			unlinkat(b->dirfd, nm, 0);
			continue;
		}
		if (sscanf(nm, "blob-%u.%15s", &num, tail) != 2 || strcmp(tail, "data") != 0 ||
		    num == 0 || num >= UINT32_MAX)
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			uint32_t *x = realloc(nums, cap * sizeof(*x));
			if (!x) {
				err = DNET_ENOMEM;
				break;
			}
			nums = x;
		}
		nums[n++] = num;
	}
	closedir(d);
	if (!err && n)
		qsort(nums, n, sizeof(*nums), num_cmp);
	struct blob *lastb = NULL;
	for (size_t i = 0; i < n && !err; i++) {
		struct blob *B = NULL;
		int r = load_blob(b, nums[i], i + 1 == n, &B);
		if (r < 0)
			err = r;
		else if (r == 0)
			lastb = B;
	}
	uint32_t maxnum = n ? nums[n - 1] : 0;
	free(nums);
	if (err)
		return err;
	if (lastb && !atomic_load(&lastb->sealed) && atomic_load(&lastb->size) < b->blob_limit &&
	    lastb->num == maxnum) {
		b->active = lastb;
		return 0;
	}
	if (lastb && !atomic_load(&lastb->sealed))
		lastb->seal_wanted = 1;
	return blob_create(b, maxnum + 1, &b->active);
}

/* ---- compaction ----------------------------------------------------------------- */

struct moved {
	uint8_t p[BL_PREFIX];
	uint64_t old_off, new_off, size;
	unsigned ixfl; /* BL_IX_TOMB: a tombstone */
};

struct compact_ctx {
	int fd;	      /* the new file */
	uint64_t pos; /* its append end (aligned) */
	uint64_t end; /* its file size */
	int older;    /* a blob older than the one compacted exists */
	struct moved *m;
	size_t n, cap;
	uint64_t live;
	int err;
};

static int compact_cb(struct dnet_backend *b, struct blob *B, struct reader *r, uint64_t off,
		      const struct bl_hdr *h, int good, void *arg)
{
	struct compact_ctx *c = arg;
	const int tomb = !!(h->flags & BL_F_TOMB);
	if ((h->flags & BL_F_UNCOMMITTED) || ((h->flags & BL_F_DEAD) && !tomb))
		return 0; /* abandoned or superseded */
	struct bl_shard *s = shard_of(b, h->id);
	int keep;
	pthread_mutex_lock(&s->lock);
	if (tomb) {
		/* needed only while an older blob may hold a version it hides */
		uint8_t hb[BL_RHDR];
		struct bl_hdr oh;
		size_t got;
		uint32_t pos;
		keep = c->older &&
		       ix_resolve(b, s, h->id, &pos, hb, BL_RHDR, &got, &oh) == DNET_ENOENT;
	} else {
		keep = ix_find_loc(s, h->id, mkloc(B->slot, off)) >= 0;
	}
	pthread_mutex_unlock(&s->lock);
	if (!keep)
		return 0;
	if (c->n == c->cap) {
		size_t ncap = c->cap ? c->cap * 2 : 1024;
		struct moved *x = realloc(c->m, ncap * sizeof(*x));
		if (!x)
			return DNET_ENOMEM;
		c->m = x;
		c->cap = ncap;
	}
	/* copy the record verbatim (a corrupt one stays detectably corrupt); a record
	 * deleted in place becomes a plain tombstone */
	uint64_t len = BL_RHDR + h->reserved;
	if (tomb && h->reserved) {
		struct bl_hdr th;
		uint8_t tb[BL_RHDR];
		memset(&th, 0, sizeof(th));
		th.flags = BL_F_TOMB;
		th.timestamp = h->timestamp;
		dnet_csum("", 0, th.csum);
		memcpy(th.id, h->id, DNET_ID_SIZE);
		hdr_encode(tb, &th);
		len = 0;
		int err = dnet_pwrite_full(c->fd, tb, BL_RHDR, c->pos);
		if (err)
			return err;
		len = BL_RHDR;
		goto copied;
	}
	for (uint64_t p = 0; p < len;) {
		size_t k = len - p < BL_IO_CHUNK ? (size_t)(len - p) : BL_IO_CHUNK;
		const uint8_t *d = rd_get(r, off + p, k);
		if (!d)
			return DNET_EIO;
		int err = dnet_pwrite_full(c->fd, d, k, c->pos + p);
		if (err)
			return err;
		p += k;
	}
copied:;
	struct moved *m = &c->m[c->n++];
	memcpy(m->p, h->id, BL_PREFIX);
	m->old_off = off;
	m->new_off = c->pos;
	m->size = tomb ? 0 : h->size;
	m->ixfl = tomb ? BL_IX_TOMB : ix_flags(h);
	if (!tomb)
		c->live += rec_len(h->reserved);
	c->end = c->pos + len;
	c->pos = align_up(c->end, 8);
	return 0;
}

/* Does any index cell point into blob slot `slot`? (a walk of the whole index,
 * shard by shard: ~24 bytes a object, in memory) */
static int index_uses_slot(struct dnet_backend *b, uint16_t slot)
{
	int used = 0;
	for (uint32_t k = 0; k < BL_SHARDS && !used; k++) {
		struct bl_shard *s = &b->sh[k];
		pthread_mutex_lock(&s->lock);
		for (uint32_t i = 0; i < s->cap && !used; i++)
			used = s->t[i].loc && LOC_SLOT(s->t[i].loc) == slot;
		pthread_mutex_unlock(&s->lock);
	}
	return used;
}

static int compact_blob(struct dnet_backend *b, struct blob *B)
{
	char tmp[BL_NAME_MAX], name[BL_NAME_MAX], itmp[BL_NAME_MAX], iname[BL_NAME_MAX];
	struct compact_ctx c = {.fd = -1, .pos = BL_BHDR, .end = BL_BHDR};
	uint8_t hb[BL_BHDR];
	uint64_t t0 = dnet_now_mono_ns(), old_size = atomic_load(&B->size);
	int err;

	pthread_mutex_lock(&b->llock);
	c.older = b->blobs != B;
	pthread_mutex_unlock(&b->llock);
	blob_name(tmp, B->num, "data.compact");
	blob_name(name, B->num, "data");
	c.fd = openat(b->dirfd, tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (c.fd < 0)
		return bl_errno();
	bhdr_encode(hb, B->num, B->gen + 1);
	uint64_t valid_end;
	/* A sealed blob with no live record and no tombstone (no index cell points
	 * into it: nothing new can, as appends go to the active blob) becomes an
	 * empty one without reading it: scanning a dead 1 GiB blob took a core for
	 * ~200 ms, a dip in every write running meanwhile. */
	int empty = atomic_load(&B->live) == 0 && atomic_load(&B->tomb) == 0 &&
		    !index_uses_slot(b, B->slot);
	if ((err = dnet_pwrite_full(c.fd, hb, BL_BHDR, 0)) ||
	    (!empty && (err = scan(b, B, BL_BHDR, old_size, 0, compact_cb, &c, &valid_end))) ||
	    (err = bl_fdatasync(c.fd)))
		goto out_unlink;
	/* the new blob's index: moved entries are in offset order, sort them */
	struct bl_lrec *e = malloc((c.n ? c.n : 1) * sizeof(*e));
	if (!e) {
		err = DNET_ENOMEM;
		goto out_unlink;
	}
	for (size_t i = 0; i < c.n; i++) {
		memcpy(e[i].p, c.m[i].p, BL_PREFIX);
		e[i].off = c.m[i].new_off | c.m[i].ixfl;
		e[i].size = c.m[i].size;
	}
	qsort(e, c.n, sizeof(*e), lrec_cmp);
	/* written under a temp name first, then both renamed: a crash between the two
	 * renames leaves generations that differ, so that blob is simply scanned */
	blob_name(itmp, B->num, "index.compact");
	blob_name(iname, B->num, "index");
	err = index_write(b, itmp, B->num, B->gen + 1, c.end, e, c.n);
	free(e);
	if (err)
		goto out_unlink;

	struct blob *NB = blob_alloc(b, B->num, B->gen + 1, c.fd, c.end);
	if (!NB) {
		err = DNET_ENOMEM;
		goto out_unlink_idx;
	}
	blob_mark_sealed(NB);
	atomic_store(&NB->live, (int64_t)c.live);
	atomic_store(&NB->tomb, atomic_load(&B->tomb));
	if ((err = blob_register(b, NB, B))) {
		blob_free(NB);
		goto out_unlink_idx;
	}
	c.fd = -1; /* NB owns it */
	/* tombstone bytes of the new blob: the ones kept */
	int64_t tb = 0;
	for (size_t i = 0; i < c.n; i++)
		tb += (c.m[i].ixfl & BL_IX_TOMB) ? (int64_t)rec_len(0) : 0;
	atomic_store(&NB->tomb, tb);
	/* flip every cell still pointing into the old blob */
	for (size_t i = 0; i < c.n; i++) {
		if (c.m[i].ixfl & BL_IX_TOMB)
			continue;
		struct bl_shard *s = shard_of(b, c.m[i].p);
		pthread_mutex_lock(&s->lock);
		int64_t pos = ix_find_loc(s, c.m[i].p, mkloc(B->slot, c.m[i].old_off));
		if (pos >= 0)
			s->t[pos].loc = mkloc(NB->slot, c.m[i].new_off);
		else /* overwritten or deleted since: the copy is dead already */
			atomic_fetch_sub(&NB->live,
					 (int64_t)rec_len(rec_reserved(c.m[i].size, c.m[i].ixfl)));
		pthread_mutex_unlock(&s->lock);
	}
	if (dnet_f_renameat(b->dirfd, tmp, b->dirfd, name) < 0 ||
	    dnet_f_renameat(b->dirfd, itmp, b->dirfd, iname) < 0) {
		/* both files are complete; the next open scans if generations differ */
		err = bl_errno();
		dnet_log_error("blob backend %s: compaction rename of blob %u: %s", b->path, B->num,
			       strerror(errno));
	} else {
		err = fsync_dir(b);
	}
	atomic_fetch_add(&b->compactions, 1);
	atomic_fetch_add(&b->reclaimed, old_size > c.end ? old_size - c.end : 0);
	dnet_log_info("blob backend %s: compacted blob %u: %llu -> %llu bytes, %zu records kept, "
		      "%.1f ms",
		      b->path, B->num, (unsigned long long)old_size, (unsigned long long)c.end, c.n,
		      (double)(dnet_now_mono_ns() - t0) / 1e6);
	free(c.m);
	blob_put(b, B); /* the list's reference: the old file closes with its last reader */
	return err;

out_unlink_idx:
	unlinkat(b->dirfd, itmp, 0);
out_unlink:
	if (c.fd >= 0)
		close(c.fd);
	unlinkat(b->dirfd, tmp, 0);
	free(c.m);
	return err;
}

static double dead_ratio(const struct blob *B)
{
	uint64_t size = atomic_load(&B->size);
	int64_t live = atomic_load(&B->live), tomb = atomic_load(&B->tomb);
	if (size <= BL_BHDR)
		return 0;
	int64_t dead = (int64_t)(size - BL_BHDR) - live - tomb;
	return dead <= 0 ? 0 : (double)dead / (double)(size - BL_BHDR);
}

static struct dnet_backend *blob_handle(struct dnet_backend *b)
{
	return b && b->magic == BL_ENGINE_MAGIC ? b : NULL;
}

/* What a compaction pass takes: every blob at or past the ratio (a call from
 * outside), the same minus blobs still dying fast (the maintenance thread's
 * periodic pass), or only blobs with nothing live (its pass between those). */
enum { CP_ALL, CP_AUTO, CP_EMPTY };

/* Is sealed blob B an empty one (no live record, no tombstone)? Counters only;
 * compact_blob() confirms with a walk of the index. */
static int blob_looks_empty(const struct blob *B)
{
	return atomic_load(&B->size) > BL_BHDR && atomic_load(&B->live) == 0 &&
	       atomic_load(&B->tomb) == 0;
}

/* Has blob x dead bytes, at or past the ratio? */
static int past_ratio(const struct blob *x, double ratio)
{
	double r = dead_ratio(x);
	return r > 0 && r >= ratio;
}

/* CP_AUTO: should the pass leave blob x (at or past the ratio) for later? Called
 * under cmp_lock and llock (the seen fields are only touched there). */
static int still_dying(const struct dnet_backend *b, struct blob *x, uint64_t now)
{
	int64_t live = atomic_load(&x->live);
	if (blob_looks_empty(x) || atomic_load(&x->cold))
		return 0;
	int dying;
	if (!x->seen_ns) /* first look: no trend yet; left one pass unless old */
		dying = dnet_ns_since(now, atomic_load(&x->sealed_ns)) < b->compact_ns;
	else
		dying = live < x->live_seen - x->live_seen / 4 && x->postponed < BL_DIE_PASSES;
	x->seen_ns = now;
	x->live_seen = live;
	x->postponed += dying;
	if (dying) /* reclaim keeps holding its records for the pass after next */
		atomic_store(&x->hold_until_ns, now + 3 * b->compact_ns);
	return dying;
}

/* The seen fields are read and written only here, under cmp_lock and llock. */
static int compact_pass(struct dnet_backend *b, double min_dead_ratio, int mode)
{
	int done = 0, err = 0;
	uint32_t after = 0;
	pthread_mutex_lock(&b->cmp_lock);
	uint64_t now = dnet_now_mono_ns();
	if (mode == CP_AUTO) { /* the trend of every sealed blob, so one that crosses
				* the ratio later is judged by it too */
		pthread_mutex_lock(&b->llock);
		for (struct blob *x = b->blobs; x; x = x->next) {
			if (atomic_load(&x->sealed) && !x->retired &&
			    !past_ratio(x, min_dead_ratio)) {
				x->seen_ns = now;
				x->live_seen = atomic_load(&x->live);
			}
		}
		pthread_mutex_unlock(&b->llock);
	}
	for (;;) {
		struct blob *B = NULL;
		pthread_mutex_lock(&b->llock);
		for (struct blob *x = b->blobs; x; x = x->next) {
			if (x->num <= after || !atomic_load(&x->sealed) || x->retired)
				continue;
			int want = mode == CP_EMPTY
				       ? blob_looks_empty(x) &&
					     (!x->empty_ns || now - x->empty_ns >= b->compact_ns)
				       : past_ratio(x, min_dead_ratio);
			if (!want)
				continue;
			if (mode == CP_EMPTY)
				x->empty_ns = now; /* one index walk per interval at most */
			else if (mode == CP_AUTO && still_dying(b, x, now))
				continue;
			B = x;
			blob_get(B);
			break;
		}
		pthread_mutex_unlock(&b->llock);
		if (!B)
			break;
		after = B->num;
		err = compact_blob(b, B);
		blob_put(b, B);
		if (err)
			break;
		done++;
	}
	pthread_mutex_unlock(&b->cmp_lock);
	return err ? err : done;
}

int dnet_blob_compact(struct dnet_backend *b, double min_dead_ratio)
{
	if (!blob_handle(b))
		return DNET_EINVAL;
	return compact_pass(b, min_dead_ratio, CP_ALL);
}

int dnet_blob_compact_auto(struct dnet_backend *b)
{
	if (!blob_handle(b))
		return DNET_EINVAL;
	return b->compact_ratio > 0 ? compact_pass(b, b->compact_ratio, CP_AUTO) : 0;
}

int dnet_blob_rotate(struct dnet_backend *b)
{
	if (!blob_handle(b))
		return DNET_EINVAL;
	pthread_mutex_lock(&b->alock);
	int err = atomic_load(&b->active->size) > BL_BHDR ? rotate_locked(b) : 0;
	pthread_mutex_unlock(&b->alock);
	if (err)
		return err;
	/* seal here rather than wait for the maintenance thread */
	for (int i = 0; i < 10000 && seal_pending(b); i++) {
		struct timespec ts = {0, 1000000};
		nanosleep(&ts, NULL);
	}
	return seal_pending(b) ? DNET_EBUSY : 0;
}

int dnet_blob_stats(struct dnet_backend *b, struct dnet_blob_stats *st)
{
	if (!blob_handle(b))
		return DNET_EINVAL;
	memset(st, 0, sizeof(*st));
	for (uint32_t k = 0; k < BL_SHARDS; k++) {
		struct bl_shard *s = &b->sh[k];
		pthread_mutex_lock(&s->lock);
		st->objects += s->n;
		st->index_bytes += (uint64_t)s->cap * sizeof(struct bl_ent);
		pthread_mutex_unlock(&s->lock);
	}
	st->index_bytes += BL_SHARDS * sizeof(struct bl_shard);
	st->index_bytes_per_object =
	    st->objects ? (double)st->index_bytes / (double)st->objects : 0;
	pthread_mutex_lock(&b->alock);
	pthread_mutex_lock(&b->llock);
	for (struct blob *B = b->blobs; B; B = B->next) {
		uint64_t size = atomic_load(&B->size);
		st->blobs++;
		st->sealed += atomic_load(&B->sealed) != 0;
		st->log_bytes += B->caplog * sizeof(struct bl_lrec);
		st->disk_bytes += size;
		struct stat sb;
		if (fstat(B->fd, &sb) == 0)
			st->alloc_bytes += (uint64_t)sb.st_blocks * 512;
		int64_t dead = (int64_t)(size - BL_BHDR) - atomic_load(&B->live);
		st->dead_bytes += dead > 0 ? (uint64_t)dead : 0;
		st->tomb_bytes += (uint64_t)atomic_load(&B->tomb);
	}
	pthread_mutex_unlock(&b->llock);
	pthread_mutex_unlock(&b->alock);
	st->compactions = atomic_load(&b->compactions);
	st->reclaimed_bytes = atomic_load(&b->reclaimed);
	st->dead_marked = atomic_load(&b->marked);
	st->punched_bytes = atomic_load(&b->punched);
	st->punch_deferred = atomic_load(&b->punch_deferred);
	st->table_fallbacks = atomic_load(&b->table_fallbacks);
	st->inplace_deletes = atomic_load(&b->inplace_dels);
	st->active_seals = atomic_load(&b->active_seals);
	st->reserve_bytes = b->reserve;
	st->open_us = b->open_us;
	st->recovered = b->recovered;
	st->scanned = b->scanned;
	st->torn_bytes = b->torn;
	return 0;
}

/* ---- maintenance thread, open, close -------------------------------------------- */

static void *maint(void *arg)
{
	struct dnet_backend *b = arg;
	dnet_thread_name("ell-blob-maint");
	uint64_t last_compact = dnet_now_mono_ns(), last_empty = last_compact, seen_seals = 0;
	uint32_t active_seen = 0; /* the active blob at the last pass, and its size */
	uint64_t active_seen_size = 0;
	pthread_mutex_lock(&b->mlock);
	while (!b->mstop) {
		if (!b->mkick) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += 200000000L;
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&b->mcond, &b->mlock, &ts);
		}
		b->mkick = 0;
		if (b->mstop)
			break;
		pthread_mutex_unlock(&b->mlock);
		/* Seal first: a blob that just stopped being active must be sealed
		 * before reclaim looks at its records, or compaction_takes() (which
		 * wants it sealed) lets reclaim mark and punch every one of them. */
		seal_pending(b);
		if (b->punch_mode == DNET_BLOB_PUNCH_AUTO) {
			pthread_mutex_lock(&b->dlock);
			/* a writer short of space may have reclaimed since (under dlock) */
			int stale = dnet_ns_since(dnet_now_mono_ns(), b->last_reclaim_ns) >=
				    BL_RECLAIM_EVERY_NS;
			int due = (b->dq || b->deferred) && (b->dq_n >= BL_RECLAIM_BATCH || stale);
			pthread_mutex_unlock(&b->dlock);
			/* records wait for compaction: freed once it took their blobs */
			if (!due && atomic_load(&b->await_compact))
				due = stale;
			uintptr_t aw = atomic_load(&b->await_for);
			if (!due && aw) { /* records waited for a blob that is now sealed */
				pthread_mutex_lock(&b->alock);
				due = (uintptr_t)b->active != aw;
				pthread_mutex_unlock(&b->alock);
				due = due || atomic_load(&b->nseals) != seen_seals;
			}
			if (due) {
				seen_seals = atomic_load(&b->nseals);
				reclaim(b, DNET_BLOB_RECLAIM_ALL);
			}
		}
		up_sweep(b, 0);
		uint64_t now = dnet_now_mono_ns();
		int r = 0;
		if (b->compact_ratio > 0 && now - last_compact >= b->compact_ns) {
			/* An active blob that is mostly dead is sealed so it can be compacted
			 * (only past 1/8 of the blob size, so blobs do not get tiny), unless
			 * it grows fast enough to fill up within the next interval anyway:
			 * its records are being overwritten, and copying them now would only
			 * copy what is about to die. A full one (rotation waits for the next
			 * append) or one that stopped growing is sealed. */
			pthread_mutex_lock(&b->alock);
			struct blob *A = b->active;
			uint64_t asize = atomic_load(&A->size);
			/* appended since the last pass: blobs rotated meanwhile filled up */
			uint64_t grew = asize;
			if (A->num == active_seen && asize >= active_seen_size)
				grew = asize - active_seen_size;
			else if (active_seen && A->num > active_seen)
				grew += (uint64_t)(A->num - active_seen) * b->blob_limit -
					(active_seen_size < b->blob_limit ? active_seen_size
									  : b->blob_limit);
			active_seen = A->num;
			active_seen_size = asize;
			if (asize - BL_BHDR >= b->blob_limit / 8 && !atomic_load(&A->uploads) &&
			    dead_ratio(A) >= b->compact_ratio &&
			    (asize >= b->blob_limit || grew == 0 || asize + grew < b->blob_limit)) {
				dnet_log_info("blob backend %s: active blob %u is %.0f%% dead: sealing "
					      "it for compaction", b->path, A->num,
					      100 * dead_ratio(A));
				if (rotate_locked(b) == 0) {
					atomic_fetch_add(&b->active_seals, 1);
					atomic_store(&A->cold, 1); /* not left to die */
				}
			}
			pthread_mutex_unlock(&b->alock);
			seal_pending(b);
			r = compact_pass(b, b->compact_ratio, CP_AUTO);
			last_compact = dnet_now_mono_ns();
		} else if (b->compact_ratio > 0 && now - last_empty >= b->compact_ns / 10) {
			/* in between, blobs with nothing live left go ten times as often:
			 * that takes no copy, and gives their disk space (and page cache)
			 * back seconds sooner under overwrites */
			r = compact_pass(b, b->compact_ratio, CP_EMPTY);
			last_empty = dnet_now_mono_ns();
		}
		if (r < 0)
			dnet_log_error("blob backend %s: compaction: %s", b->path, dnet_strerror(r));
		/* records that waited for it still hold the retired blobs' files */
		if (r > 0 && atomic_load(&b->await_compact) && b->punch_mode == DNET_BLOB_PUNCH_AUTO)
			reclaim(b, DNET_BLOB_RECLAIM_ALL);
		pthread_mutex_lock(&b->mlock);
	}
	pthread_mutex_unlock(&b->mlock);
	return NULL;
}

static void bl_free(struct dnet_backend *b)
{
	dnet_vcache_free(b->vc); /* readers still sending hold their entries */
	if (b->blobs || b->slots) {
		struct blob *B = b->blobs;
		while (B) {
			struct blob *n = B->next;
			if (B->fd >= 0)
				close(B->fd);
			blob_free(B);
			B = n;
		}
	}
	if (b->sh) {
		for (uint32_t k = 0; k < BL_SHARDS; k++) {
			free(b->sh[k].t);
			pthread_mutex_destroy(&b->sh[k].lock);
		}
		free(b->sh);
	}
	free(b->slots);
	if (b->lockfd >= 0)
		close(b->lockfd);
	if (b->dirfd >= 0)
		close(b->dirfd);
	pthread_mutex_destroy(&b->alock);
	dnet_bad_ring_destroy(&b->bad);
	pthread_mutex_destroy(&b->llock);
	pthread_mutex_destroy(&b->cmp_lock);
	pthread_mutex_destroy(&b->seal_lock);
	pthread_mutex_destroy(&b->clock);
	pthread_cond_destroy(&b->ccond);
	pthread_mutex_destroy(&b->aklock);
	pthread_cond_destroy(&b->akcond);
	pthread_mutex_destroy(&b->mlock);
	pthread_cond_destroy(&b->mcond);
	pthread_cond_destroy(&b->msealed);
	pthread_mutex_destroy(&b->ulock);
	pthread_mutex_destroy(&b->dlock);
	pthread_mutex_destroy(&b->rlock);
	free(b->path);
	free(b);
}

static void read_tunables(struct dnet_backend *b)
{
	const char *v;
	b->blob_limit = DNET_BLOB_DEFAULT_SIZE;
	b->compact_ratio = DNET_BLOB_DEFAULT_COMPACT_RATIO;
	b->compact_ns = 10ull * 1000000000ull;
	uint64_t x;
	if ((v = getenv(DNET_BLOB_ENV_SIZE)) && dnet_parse_size(v, &x) == 0 && x >= 4096)
		b->blob_limit = x;
	if ((v = getenv(DNET_BLOB_ENV_COMPACT))) {
		char *end;
		double r = strtod(v, &end);
		if (end != v && r >= 0 && r <= 1)
			b->compact_ratio = r;
	}
	if ((v = getenv(DNET_BLOB_ENV_COMPACT_MS)) && dnet_parse_size(v, &x) == 0 && x > 0)
		b->compact_ns = x * 1000000ull;
	b->reserve = BL_DEFAULT_RESERVE;
	if ((v = getenv(DNET_BLOB_ENV_RESERVE)) && dnet_parse_size(v, &x) == 0)
		b->reserve = x;
	b->punch_mode = DNET_BLOB_PUNCH_AUTO;
	if ((v = getenv(DNET_BLOB_ENV_PUNCH))) {
		if (strcmp(v, "0") == 0 || strcmp(v, "off") == 0)
			b->punch_mode = DNET_BLOB_PUNCH_OFF;
		else if (strcmp(v, "manual") == 0)
			b->punch_mode = DNET_BLOB_PUNCH_MANUAL;
	}
}

static int bl_open(const struct dnet_backend_config *cfg, struct dnet_backend **out)
{
	uint64_t t0 = dnet_now_mono_ns();
	struct dnet_backend *b = calloc(1, sizeof(*b));
	if (!b)
		return DNET_ENOMEM;
	b->magic = BL_ENGINE_MAGIC;
	b->cfg = *cfg;
	b->dirfd = b->lockfd = -1;
	if (!b->cfg.batch_max_ops)
		b->cfg.batch_max_ops = 1024;
	if (!b->cfg.upload_timeout_s)
		b->cfg.upload_timeout_s = 3600;
	b->qtail = &b->q;
	b->aktail = &b->akq;
	pthread_mutex_init(&b->aklock, NULL);
	pthread_cond_init(&b->akcond, NULL);
	pthread_mutex_init(&b->alock, NULL);
	dnet_bad_ring_init(&b->bad);
	pthread_mutex_init(&b->llock, NULL);
	pthread_mutex_init(&b->cmp_lock, NULL);
	pthread_mutex_init(&b->seal_lock, NULL);
	pthread_mutex_init(&b->clock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&b->ccond, &ca);
	pthread_condattr_destroy(&ca);
	pthread_mutex_init(&b->mlock, NULL);
	pthread_cond_init(&b->mcond, NULL);
	pthread_cond_init(&b->msealed, NULL);
	pthread_mutex_init(&b->ulock, NULL);
	pthread_mutex_init(&b->dlock, NULL);
	pthread_mutex_init(&b->rlock, NULL);
	read_tunables(b);
	int err = DNET_ENOMEM;
	if (!cfg->path || !(b->path = strdup(cfg->path))) {
		err = cfg->path ? DNET_ENOMEM : DNET_EINVAL;
		goto out_free;
	}
	if (!(b->slots = calloc(BL_MAX_SLOTS, sizeof(*b->slots))) ||
	    posix_memalign((void **)&b->sh, 64, BL_SHARDS * sizeof(*b->sh)))
		goto out_free;
	memset(b->sh, 0, BL_SHARDS * sizeof(*b->sh));
	for (uint32_t k = 0; k < BL_SHARDS; k++) {
		pthread_mutex_init(&b->sh[k].lock, NULL);
		b->sh[k].cap = 16;
		if (!(b->sh[k].t = calloc(16, sizeof(struct bl_ent))))
			goto out_free;
	}
	if (mkdir(b->path, 0755) < 0 && errno != EEXIST) {
		err = bl_errno();
		dnet_log_error("blob backend: cannot create %s: %s", b->path, strerror(errno));
		goto out_free;
	}
	/* NULL when off, or when it cannot work here (logged): reads then hash */
	b->vc = dnet_vcache_new(cfg->verified_cache, b->path);
	if ((b->dirfd = open(b->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 ||
	    (b->lockfd = openat(b->dirfd, "LOCK", O_RDWR | O_CREAT | O_CLOEXEC, 0644)) < 0) {
		err = bl_errno();
		dnet_log_error("blob backend: cannot open %s: %s", b->path, strerror(errno));
		goto out_free;
	}
	if (flock(b->lockfd, LOCK_EX | LOCK_NB) < 0) {
		err = errno == EWOULDBLOCK ? DNET_EBUSY : bl_errno();
		dnet_log_error("blob backend %s: in use by another process", b->path);
		goto out_free;
	}
	if ((err = load_all(b))) {
		dnet_log_error("blob backend %s: open failed: %s", b->path, dnet_strerror(err));
		goto out_free;
	}
	if (b->cfg.fsync == DNET_FSYNC_BATCH) {
		if (pthread_create(&b->akthr, NULL, acker, b)) {
			err = DNET_ENOMEM;
			goto out_free;
		}
		b->akthr_on = 1;
		if (pthread_create(&b->cthr, NULL, committer, b)) {
			err = DNET_ENOMEM;
			goto out_stop;
		}
		b->cthr_on = 1;
	}
	if (pthread_create(&b->mthr, NULL, maint, b)) {
		err = DNET_ENOMEM;
		goto out_stop;
	}
	b->mthr_on = 1;
	b->open_us = (dnet_now_mono_ns() - t0) / 1000;
	dnet_log_info("blob backend %s: opened in %.1f ms: %llu objects, %llu records recovered "
		      "(%llu by scanning), %llu torn bytes dropped, active blob %u",
		      b->path, (double)b->open_us / 1000,
		      (unsigned long long)atomic_load(&b->objects),
		      (unsigned long long)b->recovered, (unsigned long long)b->scanned,
		      (unsigned long long)b->torn, b->active->num);
	maint_kick(b);
	*out = b;
	return 0;

out_stop:
	stop_committer(b);
out_free:
	bl_free(b);
	return err;
}

static void bl_close(struct dnet_backend *b)
{
	group_flush();
	thread_stop(&b->mlock, &b->mcond, &b->mstop, b->mthr, &b->mthr_on);
	stop_committer(b); /* every queued write is synced and acknowledged first */
	up_sweep(b, 1);
	/* records left to compaction stay unmarked (safe: the index and later records
	 * say they are dead); compaction after the next open takes their blobs.
	 * Marking and punching them all here would make closing take seconds. */
	pthread_mutex_lock(&b->rlock);
	dead_free(b, atomic_exchange(&b->await_compact, NULL));
	pthread_mutex_unlock(&b->rlock);
	if (b->punch_mode == DNET_BLOB_PUNCH_AUTO)
		reclaim(b, DNET_BLOB_RECLAIM_ALL | DNET_BLOB_RECLAIM_FORCE);
	/* what is left (leased, or manual mode) stays dead space until compaction */
	dead_free(b, b->dq);
	dead_free(b, b->deferred);
	dead_free(b, b->await_seal);
	b->dq = b->deferred = b->await_seal = NULL;
	seal_pending(b);
	/* checkpoint the active blob: a clean restart then scans nothing */
	struct blob *A = b->active;
	if (A && !atomic_load(&A->inflight)) {
		struct bl_lrec *e;
		size_t n;
		uint64_t size = atomic_load(&A->size);
		if (bl_fdatasync(A->fd) == 0 && dnet_f_ftruncate(A->fd, (off_t)size) == 0 &&
		    index_build(b, A, &e, &n) == 0) {
			char name[BL_NAME_MAX];
			blob_name(name, A->num, "index");
			index_write(b, name, A->num, A->gen, size, e, n);
			free(e);
		}
	}
	bl_free(b);
}

const struct dnet_backend_ops dnet_blob_backend_ops = {
    .name = "blob",
    .open = bl_open,
    .close = bl_close,
    .write = bl_write,
    .read = bl_read,
    .del = bl_del,
    .lookup = bl_lookup,
    .iterate = bl_iterate,
    .sync = bl_sync,
    .stat = bl_stat,
    .flush = bl_flush,
};
