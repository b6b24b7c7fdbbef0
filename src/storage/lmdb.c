/* lmdb.c - the "lmdb" storage engine: objects in an LMDB environment, small ones
 * inline in one value, large ones as 256 KiB checksummed chunks; group commit by
 * one committer thread that applies many writes in one write transaction.
 * docs/storage-kv.md is the prose version (layout, limits, map size, fsync).
 *
 * ON-DISK LAYOUT (under cfg->path): LOCK (flock()ed: one process), data.mdb and
 * lock.mdb of one LMDB environment with three named databases:
 *   "obj"    key id[64]                -> 64-byte header [+ data if inline]
 *   "chunk"  key id[64] gen(be64) idx(be64) -> u64 XXH3-64(data) + data
 *   "upload" key id[64] cookie(be64)  -> u64 gen, u64 created (ns): staged uploads
 * HEADER (little-endian)
 *    0 u32 magic "DKVO"   4 u16 version 1   6 u16 flags (1 = chunked)
 *    8 u64 size          16 u64 timestamp  24 u64 gen (chunked; 0 inline)
 *   32 u8 csum[16] XXH3-128 of the whole object
 *   48 u32 chunk size (chunked) / 0       52 u32 0
 *   56 u64 XXH3-64 of [0, 56)
 * An object is chunked iff size > KV_CHUNK; chunk i holds bytes [i*KV_CHUNK, ..)
 * and has exactly min(KV_CHUNK, size - i*KV_CHUNK) bytes.
 *
 * CONCURRENCY: LMDB allows one write txn at a time; readers never block. Every
 * txn (read or write) holds `maplock` shared, so the map can be grown (which needs
 * no txn active in the process) under it exclusively after MDB_MAP_FULL.
 * fsync: never = MDB_NOSYNC|MDB_NOMETASYNC, each caller commits its own txn;
 * always = default LMDB sync commits; batch = MDB_NOMETASYNC (integrity kept,
 * meta made durable by an explicit mdb_env_sync) and a committer thread that
 * applies queued small writes/deletes in ONE txn, commits, syncs, then acks all.
 * Large writes and upload pieces commit in the caller's thread (after queued
 * writes of the same ID bucket have landed) and only wait for the shared sync. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include <lmdb.h>
#include "xxh.h"

#include "../common/errors.h"
#include "../common/id.h"
#include "../common/log.h"
#include "../common/util.h"
#include "backend.h"
#include "fault.h"

#define KV_MAGIC 0x4f564b44u /* "DKVO" */
#define KV_VERSION 1
#define KV_HDR 64u
#define KV_F_CHUNKED 0x1u
#define KV_CHUNK (256u << 10)
#define KV_MAX_OBJECT (1ull << 44)
#define KV_CKEY (DNET_ID_SIZE + 16)
#define KV_UKEY (DNET_ID_SIZE + 8)
#define KV_BUF_MAX (1ull << 20) /* larger reads are spooled to an unlinked temp file: a file
				 * range reply, not memory queued on the connection */
#define KV_PIECE (8ull << 20)	 /* bytes read per read txn when spooling (bounds RSS) */
#define KV_QUEUE_MAX (1ull << 20) /* batch mode: writes up to this go through the committer */
#define KV_ITER_BATCH 256
#define KV_PEND_BUCKETS 1024
#define KV_UP_BUCKETS 64
#define LM_MAPFULL 1 /* internal: retry after growing the map */

struct kv_hdr {
	uint16_t flags;
	uint64_t size, timestamp, gen;
	uint8_t csum[16];
};

enum { OP_WRITE, OP_DEL, OP_SYNC, OP_SYNCONLY };

struct lm_upload {
	struct lm_upload *next;
	uint8_t id[DNET_ID_SIZE];
	uint64_t cookie, gen, total, timestamp;
	uint64_t hwm, written, seq_pos;
	int unknown, seq, busy;
	XXH3_state_t *st;
	uint64_t active_ns;
};

struct lm_op {
	struct lm_op *next;
	int kind, status, finished;
	uint8_t id[DNET_ID_SIZE];
	struct dnet_io_attr io;
	const uint8_t *data;
	uint8_t *owned;	  /* queued copy of data */
	uint8_t csum[16]; /* whole writes: precomputed */
	struct lm_upload *up;
	struct dnet_obj_info info;
	int64_t d_obj, d_bytes;
	dnet_write_done_fn done;
	void *arg;
};

struct dnet_backend {
	char *path;
	int lockfd;
	struct dnet_backend_config cfg;
	MDB_env *env;
	MDB_dbi obj, chunk, upl;
	pthread_rwlock_t maplock;
	uint64_t mapsize; /* under maplock */
	char *mapaddr;    /* where the map is (moves when it grows), under maplock */
	uint64_t maplen;  /* its length */
	_Atomic uint64_t objects, bytes, syncs, synced_writes, corrupt, gen_seq;

	pthread_mutex_t up_lock;
	struct lm_upload *up[KV_UP_BUCKETS];
	uint64_t up_last_sweep_ns;

	pthread_mutex_t q_lock;
	pthread_cond_t q_cond, done_cond;
	struct lm_op *q_head, *q_tail;
	uint32_t q_len;
	uint64_t q_first_ns;
	int q_urgent, q_stop, committer_started;
	uint32_t pend[KV_PEND_BUCKETS];
	pthread_t committer;
};

/* ---- encoding ----------------------------------------------------------------- */

static void hdr_encode(uint8_t *out, const struct kv_hdr *h)
{
	memset(out, 0, KV_HDR);
	dnet_put_u32(out, KV_MAGIC);
	dnet_put_u16(out + 4, KV_VERSION);
	dnet_put_u16(out + 6, h->flags);
	dnet_put_u64(out + 8, h->size);
	dnet_put_u64(out + 16, h->timestamp);
	dnet_put_u64(out + 24, h->gen);
	memcpy(out + 32, h->csum, 16);
	dnet_put_u32(out + 48, (h->flags & KV_F_CHUNKED) ? KV_CHUNK : 0);
	dnet_put_u64(out + 56, XXH3_64bits(out, 56));
}

/* Validates everything that later drives a length: value size vs. header size. */
static int hdr_decode(const uint8_t *in, size_t len, struct kv_hdr *h)
{
	if (len < KV_HDR || dnet_get_u32(in) != KV_MAGIC || dnet_get_u16(in + 4) != KV_VERSION ||
	    dnet_get_u64(in + 56) != XXH3_64bits(in, 56))
		return DNET_ECORRUPT;
	h->flags = dnet_get_u16(in + 6);
	h->size = dnet_get_u64(in + 8);
	h->timestamp = dnet_get_u64(in + 16);
	h->gen = dnet_get_u64(in + 24);
	memcpy(h->csum, in + 32, 16);
	if ((h->flags & ~KV_F_CHUNKED) || h->size > KV_MAX_OBJECT || dnet_get_u32(in + 52))
		return DNET_ECORRUPT;
	if (h->flags & KV_F_CHUNKED) {
		if (len != KV_HDR || h->size <= KV_CHUNK || dnet_get_u32(in + 48) != KV_CHUNK)
			return DNET_ECORRUPT;
	} else if (h->size > KV_CHUNK || len != KV_HDR + h->size || dnet_get_u32(in + 48)) {
		return DNET_ECORRUPT;
	}
	return 0;
}

static void info_from_hdr(struct dnet_obj_info *info, const struct kv_hdr *h)
{
	memset(info, 0, sizeof(*info));
	info->size = h->size;
	info->timestamp = h->timestamp;
	memcpy(info->csum, h->csum, 16);
}

static void be64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static void ckey(uint8_t *k, const uint8_t *id, uint64_t gen, uint64_t idx)
{
	memcpy(k, id, DNET_ID_SIZE);
	be64(k + DNET_ID_SIZE, gen);
	be64(k + DNET_ID_SIZE + 8, idx);
}

static void ukey(uint8_t *k, const uint8_t *id, uint64_t cookie)
{
	memcpy(k, id, DNET_ID_SIZE);
	be64(k + DNET_ID_SIZE, cookie);
}

static uint64_t nchunks(uint64_t size)
{
	return (size + KV_CHUNK - 1) / KV_CHUNK;
}

static uint32_t chunk_len(uint64_t size, uint64_t idx)
{
	uint64_t s = idx * KV_CHUNK;
	return (uint32_t)(size - s < KV_CHUNK ? size - s : KV_CHUNK);
}

static void report_corrupt(struct dnet_backend *b, const uint8_t *id, const char *what)
{
	char hex[2 * DNET_ID_SIZE + 1];
	dnet_id_to_hex(hex, id, DNET_ID_SIZE);
	atomic_fetch_add(&b->corrupt, 1);
	dnet_log_error("lmdb backend %s: object %s is corrupt: %s", b->path, hex, what);
}

static int disk_nearly_full(struct dnet_backend *b);

static int lm_err(struct dnet_backend *b, int rc, const char *what)
{
	switch (rc) {
	case 0:
		return 0;
	case EIO:
		/* LMDB reports a short page write as EIO ("short write, filesystem
		 * full?"): a write that ran out of space stops short, so the disk is then
		 * full to the last block. The txn was aborted, nothing committed. */
		if (strcmp(what, "commit") == 0 && disk_nearly_full(b)) {
			dnet_log_error("lmdb backend %s: commit: disk full", b->path);
			return DNET_ENOSPC;
		}
		dnet_log_error("lmdb backend %s: %s: %s", b->path, what, mdb_strerror(rc));
		return DNET_EIO;
	case MDB_NOTFOUND:
		return DNET_ENOENT;
	case MDB_MAP_FULL:
		return LM_MAPFULL;
	case ENOSPC:
	case EDQUOT:
		return DNET_ENOSPC;
	case ENOMEM:
		return DNET_ENOMEM;
	default:
		dnet_log_error("lmdb backend %s: %s: %s", b->path, what, mdb_strerror(rc));
		return rc > 0 ? dnet_from_errno(rc) : DNET_EIO;
	}
}

/* Less free space than one chunk's pages plus slack: what a write that stopped
 * short for lack of space leaves behind. */
static int disk_nearly_full(struct dnet_backend *b)
{
	struct statvfs vfs;
	if (statvfs(b->path, &vfs) != 0)
		return 0;
	return (uint64_t)vfs.f_bavail * vfs.f_frsize < KV_CHUNK + (64u << 10);
}

static uint64_t new_gen(struct dnet_backend *b, uint64_t avoid)
{
	uint64_t g = atomic_fetch_add(&b->gen_seq, 1);
	return g == avoid || g == 0 ? atomic_fetch_add(&b->gen_seq, 1) : g;
}

/* ---- map size ------------------------------------------------------------------ */

static uint64_t file_bytes(struct dnet_backend *b, int allocated)
{
	char p[4096];
	struct stat st;
	snprintf(p, sizeof(p), "%s/data.mdb", b->path);
	if (stat(p, &st) < 0)
		return 0;
	return allocated ? (uint64_t)st.st_blocks * 512 : (uint64_t)st.st_size;
}

/* After MDB_MAP_FULL: double the map (at most +4 GiB a step), but never past what
 * the filesystem could hold; when it cannot grow, the disk is full: DNET_ENOSPC. */
/* Finds the map of data.mdb in /proc/self/maps (LMDB does not tell where it is:
 * me_mapaddr is only set with MDB_FIXEDMAP). Under maplock held exclusively, or
 * before any other thread uses b. Not found: map_drop() does nothing. */
static void map_locate(struct dnet_backend *b)
{
	b->mapaddr = NULL;
	b->maplen = 0;
	int fd;
	struct stat st;
	if (mdb_env_get_fd(b->env, &fd) || fstat(fd, &st) != 0)
		return;
	FILE *f = fopen("/proc/self/maps", "r");
	if (!f)
		return;
	char line[8192];
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, hi, off, ino;
		char perms[8];
		unsigned maj, mn;
		if (sscanf(line, "%lx-%lx %7s %lx %x:%x %lu", &lo, &hi, perms, &off, &maj, &mn,
			   &ino) != 7)
			continue;
		if (ino == (unsigned long)st.st_ino && off == 0 && makedev(maj, mn) == st.st_dev) {
			b->mapaddr = (char *)lo;
			b->maplen = hi - lo;
			break;
		}
	}
	fclose(f);
}

static int grow_map(struct dnet_backend *b, uint64_t seen)
{
	struct statvfs vfs;
	int err = 0;
	pthread_rwlock_wrlock(&b->maplock);
	if (b->mapsize != seen)
		goto out; /* someone else grew it meanwhile */
	uint64_t step = seen < (4ull << 30) ? seen : (4ull << 30);
	if (step < (16ull << 20))
		step = 16ull << 20;
	uint64_t want = seen + step;
	if (statvfs(b->path, &vfs) == 0) {
		uint64_t cap = file_bytes(b, 0) + (uint64_t)vfs.f_bavail * vfs.f_frsize;
		if (want > cap)
			want = cap;
	}
	if (want <= seen + (1u << 20)) {
		dnet_log_error("lmdb backend %s: map full at %llu bytes and the disk is full",
			       b->path, (unsigned long long)seen);
		err = DNET_ENOSPC;
		goto out;
	}
	int rc = mdb_env_set_mapsize(b->env, (size_t)want);
	if (rc) {
		err = lm_err(b, rc, "mdb_env_set_mapsize");
		goto out;
	}
	dnet_log_info("lmdb backend %s: map grown %llu -> %llu MiB", b->path,
		      (unsigned long long)(seen >> 20), (unsigned long long)(want >> 20));
	b->mapsize = want;
	map_locate(b);
out:
	pthread_rwlock_unlock(&b->maplock);
	return err;
}

/* Done with a value read through the map (under maplock, inside its txn): take its
 * pages out of this process's page tables. The data stays in the page cache (and
 * comes back on the next touch), but the process's RSS does not grow by every
 * byte of a large object read, written back at COMMIT or verified: a 100 MiB
 * object would otherwise add 100 MiB of file-backed RSS. Only ranges inside the
 * read-only map are dropped (a value in a dirty page of a write txn is heap).
 * After a txn of 1 MiB or more (an upload piece, a spooled read piece) the whole
 * map is dropped: the B-tree pages it walked, and the neighbours the kernel maps
 * around each fault, add up to tens of MiB over a 4 GiB object otherwise. */
static void map_drop(struct dnet_backend *b, const void *p, size_t len)
{
	uintptr_t lo = (uintptr_t)p, hi = lo + len, mlo = (uintptr_t)b->mapaddr;
	if (!b->mapaddr || len < (64u << 10) || lo < mlo || hi > mlo + b->maplen)
		return;
	/* every page touched, including the first one (it holds the overflow page's
	 * header): any page of a read-only file map may go */
	const uintptr_t pg = 4096;
	lo &= ~(pg - 1);
	hi = (hi + pg - 1) & ~(pg - 1);
	if (lo < mlo)
		lo = mlo;
	if (hi > mlo + b->maplen)
		hi = mlo + b->maplen;
	if (hi > lo)
		madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

/* ---- chunk helpers (inside a txn) --------------------------------------------- */

/* Copies verified chunk `idx` of an object into out; returns its length or < 0. */
static int64_t get_chunk(struct dnet_backend *b, MDB_txn *txn, const uint8_t *id,
			 const struct kv_hdr *h, uint64_t idx, uint8_t *out, int verify)
{
	uint8_t k[KV_CKEY];
	MDB_val key = {KV_CKEY, k}, val;
	ckey(k, id, h->gen, idx);
	int rc = mdb_get(txn, b->chunk, &key, &val);
	uint32_t want = chunk_len(h->size, idx);
	if (rc == MDB_NOTFOUND || (!rc && val.mv_size != 8u + want)) {
		report_corrupt(b, id, rc ? "missing chunk" : "chunk of wrong length");
		return DNET_ECORRUPT;
	}
	if (rc)
		return lm_err(b, rc, "get chunk");
	const uint8_t *v = val.mv_data;
	if (verify && XXH3_64bits(v + 8, want) != dnet_get_u64(v)) {
		report_corrupt(b, id, "chunk checksum mismatch");
		return DNET_ECORRUPT;
	}
	memcpy(out, v + 8, want);
	map_drop(b, v, val.mv_size);
	return want;
}

static int put_chunk(struct dnet_backend *b, MDB_txn *txn, const uint8_t *id, uint64_t gen,
		     uint64_t idx, const uint8_t *data, uint32_t len)
{
	uint8_t k[KV_CKEY];
	MDB_val key = {KV_CKEY, k}, val = {8u + len, NULL};
	ckey(k, id, gen, idx);
	int rc = mdb_put(txn, b->chunk, &key, &val, MDB_RESERVE);
	if (rc)
		return lm_err(b, rc, "put chunk");
	dnet_put_u64(val.mv_data, XXH3_64bits(data, len));
	memcpy((uint8_t *)val.mv_data + 8, data, len);
	return 0;
}

/* Deletes every chunk of (id, gen). */
static int del_chunks(struct dnet_backend *b, MDB_txn *txn, const uint8_t *id, uint64_t gen)
{
	MDB_cursor *c;
	uint8_t k[KV_CKEY];
	int rc = mdb_cursor_open(txn, b->chunk, &c);
	if (rc)
		return lm_err(b, rc, "cursor");
	ckey(k, id, gen, 0);
	for (;;) {
		MDB_val key = {KV_CKEY, k}, val;
		rc = mdb_cursor_get(c, &key, &val, MDB_SET_RANGE);
		if (rc == MDB_NOTFOUND ||
		    (!rc && (key.mv_size != KV_CKEY || memcmp(key.mv_data, k, KV_CKEY - 8) != 0))) {
			rc = 0;
			break;
		}
		if (rc || (rc = mdb_cursor_del(c, 0)))
			break;
	}
	mdb_cursor_close(c);
	return rc ? lm_err(b, rc, "delete chunks") : 0;
}

/* Fetches and decodes the header of id; *val gets the raw value (valid in txn). */
static int get_hdr(struct dnet_backend *b, MDB_txn *txn, const uint8_t *id, struct kv_hdr *h,
		   MDB_val *val)
{
	MDB_val key = {DNET_ID_SIZE, (void *)id};
	int rc = mdb_get(txn, b->obj, &key, val);
	if (rc)
		return rc == MDB_NOTFOUND ? DNET_ENOENT : lm_err(b, rc, "get");
	if (hdr_decode(val->mv_data, val->mv_size, h)) {
		report_corrupt(b, id, "bad header");
		return DNET_ECORRUPT;
	}
	return 0;
}

static int put_obj(struct dnet_backend *b, MDB_txn *txn, const uint8_t *id, const struct kv_hdr *h,
		   const uint8_t *inl)
{
	MDB_val key = {DNET_ID_SIZE, (void *)id};
	MDB_val val = {KV_HDR + ((h->flags & KV_F_CHUNKED) ? 0 : h->size), NULL};
	int rc = mdb_put(txn, b->obj, &key, &val, MDB_RESERVE);
	if (rc)
		return lm_err(b, rc, "put");
	hdr_encode(val.mv_data, h);
	if (!(h->flags & KV_F_CHUNKED) && h->size)
		memcpy((uint8_t *)val.mv_data + KV_HDR, inl, h->size);
	return 0;
}

/* ---- write operations (txn appliers) ----------------------------------------- */
/* Each returns 0 or an error; *mut is set once the txn was modified, after which
 * any error means the txn must be aborted. Side effects outside the txn (counters,
 * upload state) are left to the caller after a successful commit. */

typedef int (*apply_fn)(struct dnet_backend *b, MDB_txn *txn, struct lm_op *op, int *mut);

static int apply_whole(struct dnet_backend *b, MDB_txn *txn, struct lm_op *op, int *mut)
{
	struct kv_hdr oh, h;
	MDB_val ov;
	int err = get_hdr(b, txn, op->id, &oh, &ov);
	int existed = !err;
	if (err && err != DNET_ENOENT && err != DNET_ECORRUPT)
		return err;
	memset(&h, 0, sizeof(h));
	h.size = op->io.size;
	h.timestamp = op->io.timestamp;
	memcpy(h.csum, op->csum, 16);
	*mut = 1;
	if (h.size > KV_CHUNK) {
		h.flags = KV_F_CHUNKED;
		h.gen = new_gen(b, existed ? oh.gen : 0);
		for (uint64_t i = 0; i < nchunks(h.size); i++)
			if ((err = put_chunk(b, txn, op->id, h.gen, i, op->data + i * KV_CHUNK,
					     chunk_len(h.size, i))))
				return err;
	}
	if ((err = put_obj(b, txn, op->id, &h, op->data)))
		return err;
	if (existed && (oh.flags & KV_F_CHUNKED) && (err = del_chunks(b, txn, op->id, oh.gen)))
		return err;
	op->d_obj = existed ? 0 : 1;
	op->d_bytes = (int64_t)h.size - (existed ? (int64_t)oh.size : 0);
	info_from_hdr(&op->info, &h);
	return 0;
}

/* offset > 0: rebuild the object chunk by chunk (old chunks verified, so corruption
 * is never laundered under a fresh checksum); O(object size). */
static int apply_update(struct dnet_backend *b, MDB_txn *txn, struct lm_op *op, int *mut)
{
	struct kv_hdr oh, h;
	MDB_val ov;
	uint8_t *buf = NULL, *old = NULL;
	XXH3_state_t *st = NULL;
	int err = get_hdr(b, txn, op->id, &oh, &ov);
	if (err)
		return err;
	const uint64_t off = op->io.offset, len = op->io.size;
	if (off > oh.size)
		return DNET_ERANGE;
	if (len > KV_MAX_OBJECT - off)
		return DNET_ETOOBIG;
	memset(&h, 0, sizeof(h));
	h.size = off + len > oh.size ? off + len : oh.size;
	h.timestamp = op->io.timestamp;
	if (!(oh.flags & KV_F_CHUNKED)) {
		if (!(old = malloc(oh.size ? oh.size : 1)))
			return DNET_ENOMEM;
		memcpy(old, (uint8_t *)ov.mv_data + KV_HDR, oh.size);
		uint8_t c[16];
		dnet_csum(old, oh.size, c);
		if (memcmp(c, oh.csum, 16)) {
			report_corrupt(b, op->id, "object checksum mismatch");
			err = DNET_ECORRUPT;
			goto out;
		}
	}
	if (h.size <= KV_CHUNK) { /* old was inline too */
		if (!(buf = malloc(h.size ? h.size : 1))) {
			err = DNET_ENOMEM;
			goto out;
		}
		memcpy(buf, old, oh.size);
		memcpy(buf + off, op->data, len);
		dnet_csum(buf, h.size, h.csum);
		*mut = 1;
		err = put_obj(b, txn, op->id, &h, buf);
		goto out_ok;
	}
	h.flags = KV_F_CHUNKED;
	h.gen = (oh.flags & KV_F_CHUNKED) ? oh.gen : new_gen(b, 0);
	if (!(buf = malloc(KV_CHUNK)) || !(st = XXH3_createState()) ||
	    XXH3_128bits_reset(st) != XXH_OK) {
		err = DNET_ENOMEM;
		goto out;
	}
	for (uint64_t i = 0; i < nchunks(h.size); i++) {
		uint64_t cs = i * KV_CHUNK;
		uint32_t cl = chunk_len(h.size, i), ol = 0;
		if (cs < oh.size) {
			if (oh.flags & KV_F_CHUNKED) {
				int64_t r = get_chunk(b, txn, op->id, &oh, i, buf, 1);
				if (r < 0) {
					err = (int)r;
					goto out;
				}
				ol = (uint32_t)r;
			} else {
				ol = (uint32_t)oh.size; /* inline: one chunk at most */
				memcpy(buf, old, ol);
			}
		}
		uint64_t ws = off > cs ? off : cs, we = off + len < cs + cl ? off + len : cs + cl;
		int touched = we > ws || ol != cl;
		if (we > ws)
			memcpy(buf + (ws - cs), op->data + (ws - off), we - ws);
		XXH3_128bits_update(st, buf, cl);
		if (touched || !(oh.flags & KV_F_CHUNKED)) {
			*mut = 1;
			if ((err = put_chunk(b, txn, op->id, h.gen, i, buf, cl)))
				goto out;
		}
	}
	XXH128_canonical_t c;
	XXH128_canonicalFromHash(&c, XXH3_128bits_digest(st));
	memcpy(h.csum, c.digest, 16);
	*mut = 1;
	err = put_obj(b, txn, op->id, &h, NULL);
out_ok:
	if (!err) {
		op->d_bytes = (int64_t)h.size - (int64_t)oh.size;
		info_from_hdr(&op->info, &h);
	}
out:
	XXH3_freeState(st);
	free(buf);
	free(old);
	return err;
}

static int apply_del(struct dnet_backend *b, MDB_txn *txn, struct lm_op *op, int *mut)
{
	struct kv_hdr h;
	MDB_val v, key = {DNET_ID_SIZE, op->id};
	int err = get_hdr(b, txn, op->id, &h, &v);
	if (err && err != DNET_ECORRUPT)
		return err;
	*mut = 1;
	int rc = mdb_del(txn, b->obj, &key, NULL);
	if (rc)
		return lm_err(b, rc, "del");
	if (!err && (h.flags & KV_F_CHUNKED) && (err = del_chunks(b, txn, op->id, h.gen)))
		return err;
	op->d_obj = -1;
	op->d_bytes = err ? 0 : -(int64_t)h.size;
	return 0;
}

static int apply_write(struct dnet_backend *b, MDB_txn *txn, struct lm_op *op, int *mut)
{
	return op->io.offset ? apply_update(b, txn, op, mut) : apply_whole(b, txn, op, mut);
}

/* Upload piece: stage [offset, offset+size) into chunks of the upload's generation;
 * partial chunks are read, patched and rewritten. */
static int apply_up_data(struct dnet_backend *b, MDB_txn *txn, struct lm_op *op, int *mut)
{
	const struct lm_upload *u = op->up;
	const uint64_t off = op->io.offset, len = op->io.size;
	uint8_t *buf = NULL;
	int err = 0;
	if (op->io.ioflags & DNET_IO_PREPARE) {
		uint8_t k[KV_UKEY], v[16];
		ukey(k, u->id, u->cookie);
		dnet_put_u64(v, u->gen);
		dnet_put_u64(v + 8, dnet_now_real_ns());
		MDB_val key = {KV_UKEY, k}, val = {16, v};
		*mut = 1;
		int rc = mdb_put(txn, b->upl, &key, &val, 0);
		if (rc)
			return lm_err(b, rc, "put upload");
	}
	for (uint64_t i = off / KV_CHUNK; len && i < nchunks(off + len); i++) {
		uint64_t cs = i * KV_CHUNK;
		uint64_t ws = off > cs ? off : cs;
		uint64_t we = off + len < cs + KV_CHUNK ? off + len : cs + KV_CHUNK;
		uint8_t k[KV_CKEY];
		MDB_val key = {KV_CKEY, k}, val;
		ckey(k, u->id, u->gen, i);
		int rc = mdb_get(txn, b->chunk, &key, &val);
		if (rc && rc != MDB_NOTFOUND)
			return lm_err(b, rc, "get staged chunk");
		uint32_t have = rc ? 0 : (uint32_t)(val.mv_size - 8);
		if (!rc && (val.mv_size < 8 || val.mv_size > 8u + KV_CHUNK)) {
			err = DNET_ECORRUPT;
			break;
		}
		if (ws == cs && we - cs >= have) {
			*mut = 1;
			if ((err = put_chunk(b, txn, u->id, u->gen, i, op->data + (ws - off),
					     (uint32_t)(we - ws))))
				break;
			continue;
		}
		if (!buf && !(buf = calloc(1, KV_CHUNK))) {
			err = DNET_ENOMEM;
			break;
		}
		memset(buf, 0, KV_CHUNK);
		if (have) {
			memcpy(buf, (uint8_t *)val.mv_data + 8, have);
			map_drop(b, val.mv_data, val.mv_size);
		}
		memcpy(buf + (ws - cs), op->data + (ws - off), we - ws);
		uint32_t nl = (uint32_t)(we - cs > have ? we - cs : have);
		*mut = 1;
		if ((err = put_chunk(b, txn, u->id, u->gen, i, buf, nl)))
			break;
	}
	free(buf);
	return err;
}

/* COMMIT: checksum (streamed, or read back when pieces came out of order), verify
 * every staged chunk is present and whole, and flip the object to the new
 * generation in this one txn; the old generation's chunks go in the same txn. */
static int apply_up_commit(struct dnet_backend *b, MDB_txn *txn, struct lm_op *op, int *mut)
{
	struct lm_upload *u = op->up;
	struct kv_hdr oh, h;
	MDB_val ov;
	uint8_t *buf = NULL;
	XXH3_state_t *st = NULL;
	int err = apply_up_data(b, txn, op, mut);
	if (err)
		return err;
	uint64_t size =
	    u->unknown
		? (u->hwm > op->io.offset + op->io.size ? u->hwm : op->io.offset + op->io.size)
		: u->total;
	memset(&h, 0, sizeof(h));
	h.size = size;
	h.timestamp = u->timestamp;
	h.gen = u->gen;
	if (!(buf = malloc(KV_CHUNK)) || !(st = XXH3_createState()) ||
	    XXH3_128bits_reset(st) != XXH_OK) {
		err = DNET_ENOMEM;
		goto out;
	}
	for (uint64_t i = 0; i < nchunks(size); i++) {
		uint8_t k[KV_CKEY];
		MDB_val key = {KV_CKEY, k}, val;
		ckey(k, u->id, u->gen, i);
		int rc = mdb_get(txn, b->chunk, &key, &val);
		if (rc == MDB_NOTFOUND || (!rc && val.mv_size != 8u + chunk_len(size, i))) {
			err = DNET_EINVAL; /* a hole: a piece never arrived */
			goto out;
		}
		if (rc) {
			err = lm_err(b, rc, "get staged chunk");
			goto out;
		}
		const uint8_t *v = val.mv_data;
		if (XXH3_64bits(v + 8, val.mv_size - 8) != dnet_get_u64(v)) {
			err = DNET_EIO;
			goto out;
		}
		XXH3_128bits_update(st, v + 8, val.mv_size - 8);
		if (size <= KV_CHUNK)
			memcpy(buf, v + 8, val.mv_size - 8);
		map_drop(b, v, val.mv_size);
		if (i % 32 == 31)
			map_drop(b, b->mapaddr, b->maplen);
	}
	XXH128_canonical_t c;
	XXH128_canonicalFromHash(&c, XXH3_128bits_digest(st));
	memcpy(h.csum, c.digest, 16);
	err = get_hdr(b, txn, u->id, &oh, &ov);
	int existed = !err;
	if (err && err != DNET_ENOENT && err != DNET_ECORRUPT)
		goto out;
	*mut = 1;
	if (size <= KV_CHUNK) {
		h.gen = 0;
		if ((err = put_obj(b, txn, u->id, &h, buf)) ||
		    (err = del_chunks(b, txn, u->id, u->gen)))
			goto out;
	} else {
		h.flags = KV_F_CHUNKED;
		if ((err = put_obj(b, txn, u->id, &h, NULL)))
			goto out;
	}
	if (existed && (oh.flags & KV_F_CHUNKED) && oh.gen != u->gen &&
	    (err = del_chunks(b, txn, u->id, oh.gen)))
		goto out;
	uint8_t k[KV_UKEY];
	ukey(k, u->id, u->cookie);
	MDB_val key = {KV_UKEY, k};
	int rc = mdb_del(txn, b->upl, &key, NULL);
	if (rc && rc != MDB_NOTFOUND) {
		err = lm_err(b, rc, "del upload");
		goto out;
	}
	op->d_obj = existed ? 0 : 1;
	op->d_bytes = (int64_t)size - (existed ? (int64_t)oh.size : 0);
	info_from_hdr(&op->info, &h);
	err = 0;
out:
	XXH3_freeState(st);
	free(buf);
	return err;
}

/* Removes a staged upload: its chunks and its record. */
static int apply_up_drop(struct dnet_backend *b, MDB_txn *txn, struct lm_op *op, int *mut)
{
	uint8_t k[KV_UKEY];
	ukey(k, op->up->id, op->up->cookie);
	MDB_val key = {KV_UKEY, k};
	*mut = 1;
	int rc = mdb_del(txn, b->upl, &key, NULL);
	if (rc && rc != MDB_NOTFOUND)
		return lm_err(b, rc, "del upload");
	return del_chunks(b, txn, op->up->id, op->up->gen);
}

/* Commits txn, or aborts it when fault injection (fault.h) fails this commit. */
static int lm_commit(MDB_txn *txn)
{
	int fe = dnet_fault_check(DNET_FAULT_COMMIT);
	if (fe) {
		mdb_txn_abort(txn);
		return fe;
	}
	return mdb_txn_commit(txn);
}

/* One op in its own write txn; grows the map and retries on MDB_MAP_FULL. */
static int run_txn(struct dnet_backend *b, struct lm_op *op, apply_fn fn)
{
	for (;;) {
		MDB_txn *txn;
		int mut = 0;
		pthread_rwlock_rdlock(&b->maplock);
		uint64_t seen = b->mapsize;
		int rc = mdb_txn_begin(b->env, NULL, 0, &txn);
		int err = lm_err(b, rc, "txn begin");
		if (!err) {
			op->d_obj = op->d_bytes = 0;
			err = fn(b, txn, op, &mut);
			if (err) {
				mdb_txn_abort(txn);
			} else {
				rc = lm_commit(txn);
				err = lm_err(b, rc, "commit");
			}
		}
		if (op->io.size >= (1u << 20))
			map_drop(b, b->mapaddr, b->maplen); /* see map_drop */
		pthread_rwlock_unlock(&b->maplock);
		if (err != LM_MAPFULL)
			return err;
		if ((err = grow_map(b, seen)))
			return err;
	}
}

static void count(struct dnet_backend *b, const struct lm_op *op)
{
	if (op->d_obj)
		atomic_fetch_add(&b->objects, (uint64_t)op->d_obj);
	if (op->d_bytes)
		atomic_fetch_add(&b->bytes, (uint64_t)op->d_bytes);
}

static int env_sync(struct dnet_backend *b)
{
	atomic_fetch_add(&b->syncs, 1);
	int rc = dnet_fault_check(DNET_FAULT_SYNC);
	if (!rc)
		rc = mdb_env_sync(b->env, 1);
	return rc ? lm_err(b, rc, "sync") : 0;
}

/* ---- group commit ------------------------------------------------------------ */

static uint32_t pend_bucket(const uint8_t *id)
{
	return (uint32_t)(id[1] | (id[2] << 8)) % KV_PEND_BUCKETS;
}

static void op_free(struct lm_op *op)
{
	free(op->owned);
	free(op);
}

/* Applies a batch in one txn; on any txn-level failure, op by op instead. */
static void commit_batch(struct dnet_backend *b, struct lm_op *batch)
{
	int need_sync = 0;
	for (;;) {
		MDB_txn *txn;
		int broken = 0, any = 0;
		pthread_rwlock_rdlock(&b->maplock);
		uint64_t seen = b->mapsize;
		int rc = mdb_txn_begin(b->env, NULL, 0, &txn);
		if (rc) {
			broken = lm_err(b, rc, "txn begin");
		} else {
			for (struct lm_op *e = batch; e; e = e->next) {
				int mut = 0;
				e->d_obj = e->d_bytes = 0;
				if (e->kind == OP_WRITE)
					e->status = apply_write(b, txn, e, &mut);
				else if (e->kind == OP_DEL)
					e->status = apply_del(b, txn, e, &mut);
				else
					continue;
				if (e->status && mut) {
					broken = e->status;
					break;
				}
				any |= !e->status;
			}
			if (broken) {
				mdb_txn_abort(txn);
			} else if (!any) {
				mdb_txn_abort(txn);
			} else if ((rc = lm_commit(txn))) {
				broken = lm_err(b, rc, "commit");
			}
		}
		pthread_rwlock_unlock(&b->maplock);
		if (broken == LM_MAPFULL && !grow_map(b, seen))
			continue;
		if (broken) {
			for (struct lm_op *e = batch; e; e = e->next) {
				if (e->kind == OP_WRITE)
					e->status = run_txn(b, e, apply_write);
				else if (e->kind == OP_DEL)
					e->status = run_txn(b, e, apply_del);
			}
		}
		break;
	}
	for (struct lm_op *e = batch; e; e = e->next)
		need_sync |= e->kind != OP_WRITE || !e->status;
	if (need_sync) {
		int err = env_sync(b);
		for (struct lm_op *e = batch; e; e = e->next)
			if (err && (!e->status || e->kind == OP_SYNC))
				e->status = err;
	}
	uint64_t n = 0;
	for (struct lm_op *e = batch; e; e = e->next) {
		if (!e->status && (e->kind == OP_WRITE || e->kind == OP_DEL))
			count(b, e);
		if (!e->status && (e->kind == OP_WRITE || e->kind == OP_SYNCONLY))
			n++;
	}
	atomic_fetch_add(&b->synced_writes, n);
}

static void *committer(void *arg)
{
	struct dnet_backend *b = arg;
	dnet_thread_name("ell-lmdb-sync");
	pthread_mutex_lock(&b->q_lock);
	for (;;) {
		while (!b->q_head && !b->q_stop)
			pthread_cond_wait(&b->q_cond, &b->q_lock);
		if (!b->q_head)
			break;
		uint64_t deadline = b->q_first_ns + (uint64_t)b->cfg.batch_max_delay_us * 1000;
		while (!b->q_stop && !b->q_urgent && b->q_len < b->cfg.batch_max_ops) {
			uint64_t now = dnet_now_mono_ns();
			if (now >= deadline)
				break;
			struct timespec ts = {.tv_sec = (time_t)(deadline / 1000000000ull),
					      .tv_nsec = (long)(deadline % 1000000000ull)};
			pthread_cond_timedwait(&b->q_cond, &b->q_lock, &ts);
		}
		struct lm_op *batch = b->q_head;
		b->q_head = b->q_tail = NULL;
		b->q_len = 0;
		b->q_urgent = 0;
		pthread_mutex_unlock(&b->q_lock);

		commit_batch(b, batch);

		struct lm_op *waiters = NULL;
		for (struct lm_op *e = batch, *next; e; e = next) {
			next = e->next;
			if (e->done)
				e->done(e->arg, e->status, e->status ? NULL : &e->info);
			else {
				e->next = waiters;
				waiters = e;
			}
		}
		pthread_mutex_lock(&b->q_lock);
		for (struct lm_op *e = batch, *next; e; e = next) {
			next = e->next;
			if (e->done) {
				if (e->kind == OP_WRITE)
					b->pend[pend_bucket(e->id)]--;
				op_free(e);
			}
		}
		for (struct lm_op *e = waiters, *next; e; e = next) {
			next = e->next;
			e->finished = 1;
		}
		pthread_cond_broadcast(&b->done_cond);
	}
	pthread_mutex_unlock(&b->q_lock);
	return NULL;
}

static int enqueue(struct dnet_backend *b, struct lm_op *e)
{
	pthread_mutex_lock(&b->q_lock);
	if (b->q_stop) {
		pthread_mutex_unlock(&b->q_lock);
		return DNET_ESHUTDOWN;
	}
	e->next = NULL;
	if (b->q_tail)
		b->q_tail->next = e;
	else
		b->q_head = e;
	b->q_tail = e;
	if (b->q_len++ == 0) {
		b->q_first_ns = dnet_now_mono_ns();
		pthread_cond_signal(&b->q_cond);
	} else if (b->q_len >= b->cfg.batch_max_ops) {
		pthread_cond_signal(&b->q_cond);
	}
	if (e->kind == OP_WRITE && e->done)
		b->pend[pend_bucket(e->id)]++;
	if (!e->done)
		b->q_urgent = 1;
	pthread_mutex_unlock(&b->q_lock);
	return 0;
}

/* Enqueues a stack op whose caller blocks until it is committed and synced. */
static int enqueue_wait(struct dnet_backend *b, struct lm_op *e)
{
	int err = enqueue(b, e);
	if (err)
		return err;
	pthread_mutex_lock(&b->q_lock);
	while (!e->finished)
		pthread_cond_wait(&b->done_cond, &b->q_lock);
	pthread_mutex_unlock(&b->q_lock);
	return e->status;
}

/* A direct txn on id must not overtake queued writes of the same ID. */
static void wait_pending(struct dnet_backend *b, const uint8_t *id)
{
	if (b->cfg.fsync != DNET_FSYNC_BATCH)
		return;
	uint32_t k = pend_bucket(id);
	pthread_mutex_lock(&b->q_lock);
	while (b->pend[k]) {
		b->q_urgent = 1;
		pthread_cond_signal(&b->q_cond);
		pthread_cond_wait(&b->done_cond, &b->q_lock);
	}
	pthread_mutex_unlock(&b->q_lock);
}

/* After a direct commit: ack now (never/always) or after the next group sync. */
static void finish_direct(struct dnet_backend *b, struct lm_op *op, int err,
			  dnet_write_done_fn done, void *arg)
{
	if (err) {
		done(arg, err, NULL);
		return;
	}
	count(b, op);
	if (b->cfg.fsync == DNET_FSYNC_ALWAYS) {
		atomic_fetch_add(&b->syncs, 1);
		atomic_fetch_add(&b->synced_writes, 1);
	}
	if (b->cfg.fsync != DNET_FSYNC_BATCH) {
		done(arg, 0, &op->info);
		return;
	}
	struct lm_op *e = calloc(1, sizeof(*e));
	if (!e) {
		done(arg, DNET_ENOMEM, NULL);
		return;
	}
	e->kind = OP_SYNCONLY;
	e->info = op->info;
	e->done = done;
	e->arg = arg;
	if ((err = enqueue(b, e))) {
		free(e);
		done(arg, err, NULL);
	}
}

/* ---- chunked uploads ------------------------------------------------------------ */
/* Upload state lives in memory; staged chunks live in the DB under the upload's own
 * generation, recorded in "upload" so open() can remove what a crash left behind. */

static uint32_t up_bucket(const uint8_t *id, uint64_t cookie)
{
	return (uint32_t)((id[3] ^ cookie ^ (cookie >> 17)) % KV_UP_BUCKETS);
}

static struct lm_upload **up_slot(struct dnet_backend *b, const uint8_t *id, uint64_t cookie)
{
	struct lm_upload **pp = &b->up[up_bucket(id, cookie)];
	while (*pp && ((*pp)->cookie != cookie || memcmp((*pp)->id, id, DNET_ID_SIZE) != 0))
		pp = &(*pp)->next;
	return pp;
}

static void up_destroy(struct dnet_backend *b, struct lm_upload *u, int drop_chunks)
{
	if (drop_chunks) {
		struct lm_op op;
		memset(&op, 0, sizeof(op));
		op.up = u;
		int err = run_txn(b, &op, apply_up_drop);
		if (err)
			dnet_log_warn("lmdb backend %s: cannot drop staged upload: %s", b->path,
				      dnet_strerror(err));
	}
	XXH3_freeState(u->st);
	free(u);
}

/* destroy: 0 keep the upload, 1 remove it and its staged chunks, 2 remove it
 * (committed: the chunks now belong to the object). */
static void up_release(struct dnet_backend *b, struct lm_upload *u, int destroy)
{
	pthread_mutex_lock(&b->up_lock);
	u->busy = 0;
	u->active_ns = dnet_now_mono_ns();
	if (destroy) {
		struct lm_upload **pp = up_slot(b, u->id, u->cookie);
		if (*pp == u)
			*pp = u->next;
	}
	pthread_mutex_unlock(&b->up_lock);
	if (destroy)
		up_destroy(b, u, destroy == 1);
}

static void up_sweep(struct dnet_backend *b)
{
	uint64_t now = dnet_now_mono_ns(), limit = b->cfg.upload_timeout_s * 1000000000ull;
	struct lm_upload *gone = NULL;
	pthread_mutex_lock(&b->up_lock);
	if (dnet_ns_since(now, b->up_last_sweep_ns) <
	    (limit < 60000000000ull ? limit : 60000000000ull)) {
		pthread_mutex_unlock(&b->up_lock);
		return;
	}
	b->up_last_sweep_ns = now;
	for (int k = 0; k < KV_UP_BUCKETS; k++) {
		for (struct lm_upload **pp = &b->up[k]; *pp;) {
			struct lm_upload *u = *pp;
			if (!u->busy && dnet_ns_since(now, u->active_ns) > limit) {
				*pp = u->next;
				u->next = gone;
				gone = u;
			} else {
				pp = &u->next;
			}
		}
	}
	pthread_mutex_unlock(&b->up_lock);
	while (gone) {
		struct lm_upload *u = gone;
		gone = u->next;
		dnet_log_info("lmdb backend %s: dropping abandoned upload cookie %llx", b->path,
			      (unsigned long long)u->cookie);
		up_destroy(b, u, 1);
	}
}

static void write_upload(struct dnet_backend *b, const struct dnet_write_req *req,
			 dnet_write_done_fn done, void *arg)
{
	const struct dnet_io_attr *io = &req->io;
	struct lm_upload *u = NULL;
	int err;
	if (io->ioflags & DNET_IO_PREPARE) {
		if (io->total_size > KV_MAX_OBJECT) {
			done(arg, DNET_ETOOBIG, NULL);
			return;
		}
		up_sweep(b);
		pthread_mutex_lock(&b->up_lock);
		struct lm_upload **pp = up_slot(b, req->id, io->cookie), *old = NULL;
		if (*pp && !(*pp)->busy) { /* a repeated PREPARE restarts the upload */
			old = *pp;
			*pp = old->next;
		}
		pthread_mutex_unlock(&b->up_lock);
		if (old)
			up_destroy(b, old, 1);
		if (!(u = calloc(1, sizeof(*u))) || !(u->st = XXH3_createState()) ||
		    XXH3_128bits_reset(u->st) != XXH_OK) {
			if (u)
				XXH3_freeState(u->st);
			free(u);
			done(arg, DNET_ENOMEM, NULL);
			return;
		}
		memcpy(u->id, req->id, DNET_ID_SIZE);
		u->cookie = io->cookie;
		u->gen = new_gen(b, 0);
		u->total = io->total_size ? io->total_size : KV_MAX_OBJECT;
		u->unknown = !io->total_size;
		u->seq = 1;
		u->timestamp = io->timestamp ? io->timestamp : dnet_now_real_ns();
		u->busy = 1;
		pthread_mutex_lock(&b->up_lock);
		pp = &b->up[up_bucket(u->id, u->cookie)];
		u->next = *pp;
		*pp = u;
		pthread_mutex_unlock(&b->up_lock);
	} else {
		pthread_mutex_lock(&b->up_lock);
		u = *up_slot(b, req->id, io->cookie);
		if (u && u->busy)
			u = NULL;
		if (u)
			u->busy = 1;
		pthread_mutex_unlock(&b->up_lock);
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
	struct lm_op op;
	memset(&op, 0, sizeof(op));
	memcpy(op.id, req->id, DNET_ID_SIZE);
	op.io = *io;
	op.data = req->data;
	op.up = u;
	const uint64_t end = io->offset + io->size;
	if (io->ioflags & DNET_IO_COMMIT) {
		uint64_t hwm = end > u->hwm ? end : u->hwm, written = u->written + io->size;
		uint64_t seq_pos = u->seq && io->offset == u->seq_pos ? end : 0;
		/* each byte is sent once, so written == end means no holes */
		int complete = written == hwm && (u->unknown || hwm == u->total);
		if (!complete && !(u->seq && seq_pos == u->total)) {
			up_release(b, u, 0);
			done(arg, DNET_EINVAL, NULL);
			return;
		}
		wait_pending(b, req->id);
		err = run_txn(b, &op, apply_up_commit);
		if (err == DNET_EINVAL) {
			up_release(b, u, 0); /* a hole: the client may still send it */
			done(arg, err, NULL);
			return;
		}
		up_release(b, u, err ? 1 : 2);
		finish_direct(b, &op, err, done, arg);
		return;
	}
	err = io->size || (io->ioflags & DNET_IO_PREPARE) ? run_txn(b, &op, apply_up_data) : 0;
	if (err) {
		up_release(b, u, 1);
		done(arg, err, NULL);
		return;
	}
	if (io->size) {
		if (u->seq && io->offset == u->seq_pos) {
			XXH3_128bits_update(u->st, req->data, io->size);
			u->seq_pos = end;
		} else {
			u->seq = 0;
		}
		if (end > u->hwm)
			u->hwm = end;
		u->written += io->size;
	}
	struct dnet_obj_info info;
	memset(&info, 0, sizeof(info));
	info.size = u->hwm;
	info.timestamp = u->timestamp;
	up_release(b, u, 0);
	done(arg, 0, &info);
}

/* ---- backend ops ----------------------------------------------------------------- */

static void lm_write(struct dnet_backend *b, const struct dnet_write_req *req,
		     dnet_write_done_fn done, void *arg)
{
	const uint32_t fl = req->io.ioflags;
	if ((fl & ~DNET_IO_FLAGS_KNOWN) || (req->io.size && !req->data)) {
		done(arg, DNET_EINVAL, NULL);
		return;
	}
	if (req->io.size > KV_MAX_OBJECT || req->io.offset > KV_MAX_OBJECT) {
		done(arg, DNET_ETOOBIG, NULL);
		return;
	}
	if (fl & (DNET_IO_PREPARE | DNET_IO_PLAIN | DNET_IO_COMMIT)) {
		write_upload(b, req, done, arg);
		return;
	}
	struct lm_op *op = calloc(1, sizeof(*op));
	if (!op) {
		done(arg, DNET_ENOMEM, NULL);
		return;
	}
	op->kind = OP_WRITE;
	memcpy(op->id, req->id, DNET_ID_SIZE);
	op->io = req->io;
	if (!op->io.timestamp)
		op->io.timestamp = dnet_now_real_ns();
	op->data = req->data ? req->data : (const uint8_t *)"";
	if (!req->io.offset)
		dnet_csum(op->data, req->io.size, op->csum);
	if (b->cfg.fsync == DNET_FSYNC_BATCH && req->io.size <= KV_QUEUE_MAX) {
		if (req->io.size) {
			if (!(op->owned = malloc(req->io.size))) {
				free(op);
				done(arg, DNET_ENOMEM, NULL);
				return;
			}
			memcpy(op->owned, req->data, req->io.size);
			op->data = op->owned;
		}
		op->done = done;
		op->arg = arg;
		int err = enqueue(b, op);
		if (err) {
			op_free(op);
			done(arg, err, NULL);
		}
		return;
	}
	wait_pending(b, req->id);
	int err = run_txn(b, op, apply_write);
	finish_direct(b, op, err, done, arg);
	op_free(op);
}

/* Reads [off, off+len) of an object whose header is h (raw value v) into out;
 * feeds the bytes to st when non-NULL. Inline objects are verified whole. */
static int read_into(struct dnet_backend *b, MDB_txn *txn, const uint8_t *id,
		     const struct kv_hdr *h, const MDB_val *v, uint64_t off, uint64_t len,
		     uint8_t *out, int verify, uint8_t *scratch)
{
	if (!(h->flags & KV_F_CHUNKED)) {
		const uint8_t *d = (const uint8_t *)v->mv_data + KV_HDR;
		if (verify) {
			uint8_t c[16];
			dnet_csum(d, h->size, c);
			if (memcmp(c, h->csum, 16)) {
				report_corrupt(b, id, "object checksum mismatch");
				return DNET_ECORRUPT;
			}
		}
		memcpy(out, d + off, len);
		return 0;
	}
	for (uint64_t i = off / KV_CHUNK; len && i < nchunks(off + len); i++) {
		uint64_t cs = i * KV_CHUNK;
		uint64_t s = off > cs ? off : cs,
			 e = off + len < cs + KV_CHUNK ? off + len : cs + KV_CHUNK;
		if (s == cs && e - cs == chunk_len(h->size, i)) {
			int64_t r = get_chunk(b, txn, id, h, i, out + (s - off), verify);
			if (r < 0)
				return (int)r;
		} else {
			int64_t r = get_chunk(b, txn, id, h, i, scratch, verify);
			if (r < 0)
				return (int)r;
			memcpy(out + (s - off), scratch + (s - cs), e - s);
		}
	}
	return 0;
}

/* One read txn: the header, compared with *want (spooling: same object still?),
 * and [off, off+len) into out. */
static int read_piece(struct dnet_backend *b, const uint8_t *id, const struct kv_hdr *want,
		      uint64_t off, uint64_t len, uint8_t *out, int verify, uint8_t *scratch)
{
	MDB_txn *txn;
	MDB_val v;
	struct kv_hdr h;
	pthread_rwlock_rdlock(&b->maplock);
	int rc = mdb_txn_begin(b->env, NULL, MDB_RDONLY, &txn);
	int err = rc ? lm_err(b, rc, "read txn") : get_hdr(b, txn, id, &h, &v);
	if (!err && (h.gen != want->gen || h.size != want->size || memcmp(h.csum, want->csum, 16) ||
		     h.timestamp != want->timestamp))
		err = DNET_EAGAIN; /* replaced while we streamed it */
	if (!err)
		err = read_into(b, txn, id, &h, &v, off, len, out, verify, scratch);
	if (!rc)
		mdb_txn_abort(txn);
	if (len >= (1u << 20))
		map_drop(b, b->mapaddr, b->maplen);
	pthread_rwlock_unlock(&b->maplock);
	return err;
}

static int check_whole(struct dnet_backend *b, const uint8_t *id, const struct kv_hdr *h,
		       const void *data, uint64_t len, XXH3_state_t *st)
{
	XXH128_canonical_t c;
	if (data)
		XXH128_canonicalFromHash(&c, XXH3_128bits(data, len));
	else
		XXH128_canonicalFromHash(&c, XXH3_128bits_digest(st));
	if (memcmp(c.digest, h->csum, 16)) {
		report_corrupt(b, id, "object checksum mismatch");
		return DNET_ECORRUPT;
	}
	return 0;
}

/* Reads beyond KV_BUF_MAX go to an unlinked temp file, piece by piece, each piece
 * in its own short read txn (a long txn would pin pages and block map growth). */
static int read_spool(struct dnet_backend *b, const uint8_t *id, const struct kv_hdr *h,
		      uint64_t off, uint64_t len, int verify, uint8_t *scratch,
		      struct dnet_read_res *res)
{
	int fd = open(b->path, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd < 0)
		return dnet_from_errno(errno);
	uint8_t *buf = malloc(KV_PIECE);
	XXH3_state_t *st = verify && !off && len == h->size ? XXH3_createState() : NULL;
	int err = !buf ? DNET_ENOMEM : 0;
	if (st)
		XXH3_128bits_reset(st);
	for (uint64_t done = 0; !err && done < len;) {
		uint64_t n = len - done < KV_PIECE ? len - done : KV_PIECE;
		if ((err = read_piece(b, id, h, off + done, n, buf, verify, scratch)))
			break;
		if (st)
			XXH3_128bits_update(st, buf, n);
		for (uint64_t w = 0; w < n;) {
			ssize_t r = pwrite(fd, buf + w, n - w, (off_t)(done + w));
			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0) {
				err = r < 0 ? dnet_from_errno(errno) : DNET_EIO;
				break;
			}
			w += (uint64_t)r;
		}
		done += n;
	}
	if (!err && st)
		err = check_whole(b, id, h, NULL, 0, st);
	XXH3_freeState(st);
	free(buf);
	if (err) {
		close(fd);
		return err;
	}
	res->fd = fd;
	res->file_offset = 0;
	res->len = len;
	return 0;
}

#define LM_SPOOL 2 /* internal: too big for a buffer */

/* The common case: header and bytes in one read txn, into a malloc()ed buffer. */
static int read_buf(struct dnet_backend *b, const uint8_t *id, uint64_t off, uint64_t size,
		    int verify, uint8_t *scratch, struct kv_hdr *h, struct dnet_read_res *res)
{
	MDB_txn *txn;
	MDB_val v;
	pthread_rwlock_rdlock(&b->maplock);
	int rc = mdb_txn_begin(b->env, NULL, MDB_RDONLY, &txn);
	int err = rc ? lm_err(b, rc, "read txn") : get_hdr(b, txn, id, h, &v);
	if (err)
		goto out;
	if (off > h->size) {
		err = DNET_ERANGE;
		goto out;
	}
	uint64_t len = h->size - off;
	if (size && size < len)
		len = size;
	res->len = len;
	if (len > KV_BUF_MAX) {
		err = LM_SPOOL;
		goto out;
	}
	if (!(res->buf = malloc(len ? len : 1))) {
		err = DNET_ENOMEM;
		goto out;
	}
	err = read_into(b, txn, id, h, &v, off, len, res->buf, verify, scratch);
	if (!err && verify && (h->flags & KV_F_CHUNKED) && !off && len == h->size)
		err = check_whole(b, id, h, res->buf, len, NULL);
out:
	if (!rc)
		mdb_txn_abort(txn);
	pthread_rwlock_unlock(&b->maplock);
	return err;
}

static int lm_read(struct dnet_backend *b, const uint8_t *id, uint64_t offset, uint64_t size,
		   uint32_t flags, struct dnet_read_res *res)
{
	struct kv_hdr h;
	const int verify = !(flags & DNET_FLAG_NOCSUM);
	int err = DNET_EAGAIN;
	memset(res, 0, sizeof(*res));
	res->fd = -1;
	uint8_t *scratch = malloc(KV_CHUNK);
	if (!scratch)
		return DNET_ENOMEM;
	for (int attempt = 0; attempt < 3 && err == DNET_EAGAIN; attempt++) {
		err = read_buf(b, id, offset, size, verify, scratch, &h, res);
		if (err == LM_SPOOL) {
			uint64_t len = res->len;
			res->len = 0;
			err = read_spool(b, id, &h, offset, len, verify, scratch, res);
		}
		if (err) {
			free(res->buf);
			res->buf = NULL;
			res->len = 0;
		}
	}
	if (!err)
		info_from_hdr(&res->info, &h);
	free(scratch);
	return err;
}

static int lm_lookup(struct dnet_backend *b, const uint8_t *id, struct dnet_obj_info *info)
{
	MDB_txn *txn;
	MDB_val v;
	struct kv_hdr h;
	pthread_rwlock_rdlock(&b->maplock);
	int rc = mdb_txn_begin(b->env, NULL, MDB_RDONLY, &txn);
	int err = rc ? lm_err(b, rc, "read txn") : get_hdr(b, txn, id, &h, &v);
	if (!rc)
		mdb_txn_abort(txn);
	pthread_rwlock_unlock(&b->maplock);
	if (!err)
		info_from_hdr(info, &h);
	return err;
}

static int lm_del(struct dnet_backend *b, const uint8_t *id)
{
	struct lm_op op;
	memset(&op, 0, sizeof(op));
	op.kind = OP_DEL;
	memcpy(op.id, id, DNET_ID_SIZE);
	if (b->cfg.fsync == DNET_FSYNC_BATCH)
		return enqueue_wait(b, &op);
	int err = run_txn(b, &op, apply_del);
	if (!err) {
		count(b, &op);
		if (b->cfg.fsync == DNET_FSYNC_ALWAYS)
			atomic_fetch_add(&b->syncs, 1);
	}
	return err;
}

static int lm_sync(struct dnet_backend *b)
{
	if (b->cfg.fsync == DNET_FSYNC_BATCH) {
		struct lm_op op;
		memset(&op, 0, sizeof(op));
		op.kind = OP_SYNC;
		return enqueue_wait(b, &op);
	}
	return env_sync(b);
}

/* Walks "obj" in batches of keys, each batch in its own short read txn, calling fn
 * outside any txn: safe with concurrent writes, never pins the map for long. */
static int lm_iterate(struct dnet_backend *b, dnet_iterate_fn fn, void *arg)
{
	struct {
		uint8_t id[DNET_ID_SIZE];
		struct dnet_obj_info info;
	} *batch = malloc(KV_ITER_BATCH * sizeof(*batch));
	uint8_t last[DNET_ID_SIZE];
	int have_last = 0, ret = 0;
	if (!batch)
		return DNET_ENOMEM;
	for (;;) {
		MDB_txn *txn;
		MDB_cursor *c;
		int n = 0, end = 0;
		pthread_rwlock_rdlock(&b->maplock);
		int rc = mdb_txn_begin(b->env, NULL, MDB_RDONLY, &txn);
		if (!rc && (rc = mdb_cursor_open(txn, b->obj, &c)))
			mdb_txn_abort(txn);
		if (rc) {
			pthread_rwlock_unlock(&b->maplock);
			ret = lm_err(b, rc, "iterate");
			break;
		}
		MDB_val key = {DNET_ID_SIZE, last}, val;
		rc = have_last ? mdb_cursor_get(c, &key, &val, MDB_SET_RANGE)
			       : mdb_cursor_get(c, &key, &val, MDB_FIRST);
		if (!rc && have_last && key.mv_size == DNET_ID_SIZE &&
		    !memcmp(key.mv_data, last, DNET_ID_SIZE))
			rc = mdb_cursor_get(c, &key, &val, MDB_NEXT);
		while (!rc && n < KV_ITER_BATCH) {
			struct kv_hdr h;
			if (key.mv_size == DNET_ID_SIZE) {
				if (hdr_decode(val.mv_data, val.mv_size, &h) == 0) {
					memcpy(batch[n].id, key.mv_data, DNET_ID_SIZE);
					info_from_hdr(&batch[n].info, &h);
					n++;
				}
				memcpy(last, key.mv_data, DNET_ID_SIZE);
				have_last = 1;
			}
			if (n < KV_ITER_BATCH)
				rc = mdb_cursor_get(c, &key, &val, MDB_NEXT);
		}
		if (rc == MDB_NOTFOUND)
			end = 1;
		else if (rc)
			ret = lm_err(b, rc, "iterate");
		mdb_cursor_close(c);
		mdb_txn_abort(txn);
		pthread_rwlock_unlock(&b->maplock);
		for (int i = 0; i < n && !ret; i++)
			ret = fn(arg, batch[i].id, &batch[i].info);
		if (ret || end)
			break;
	}
	free(batch);
	return ret;
}

static int lm_stat(struct dnet_backend *b, struct dnet_backend_stat *st)
{
	struct statvfs vfs;
	memset(st, 0, sizeof(*st));
	st->objects = atomic_load(&b->objects);
	st->bytes = atomic_load(&b->bytes);
	st->disk_bytes = file_bytes(b, 1);
	st->syncs = atomic_load(&b->syncs);
	st->synced_writes = atomic_load(&b->synced_writes);
	st->corrupt = atomic_load(&b->corrupt);
	if (statvfs(b->path, &vfs) < 0)
		return dnet_from_errno(errno);
	st->disk_free = (uint64_t)vfs.f_bavail * vfs.f_frsize;
	return 0;
}

/* ---- open / close ------------------------------------------------------------- */

static int mkdir_p(const char *path)
{
	char buf[4096];
	size_t len = strlen(path);
	if (len == 0 || len >= sizeof(buf))
		return DNET_EINVAL;
	memcpy(buf, path, len + 1);
	for (size_t i = 1; i <= len; i++) {
		if (buf[i] != '/' && buf[i] != '\0')
			continue;
		char c = buf[i];
		buf[i] = '\0';
		if (mkdir(buf, 0755) < 0 && errno != EEXIST)
			return dnet_from_errno(errno);
		buf[i] = c;
	}
	return 0;
}

/* At open: drop uploads a previous run left unfinished, count objects and bytes. */
static int recover(struct dnet_backend *b)
{
	MDB_txn *txn;
	MDB_cursor *c;
	MDB_val key, val;
	uint64_t dropped = 0, objs = 0, bytes = 0, t0 = dnet_now_mono_ns();
	int rc = mdb_txn_begin(b->env, NULL, 0, &txn);
	if (rc)
		return lm_err(b, rc, "txn begin");
	if ((rc = mdb_cursor_open(txn, b->upl, &c)))
		goto out_abort;
	while ((rc = mdb_cursor_get(c, &key, &val, MDB_FIRST)) == 0) {
		uint8_t id[DNET_ID_SIZE];
		if (key.mv_size != KV_UKEY || val.mv_size != 16) {
			if ((rc = mdb_cursor_del(c, 0)))
				break;
			continue;
		}
		memcpy(id, key.mv_data, DNET_ID_SIZE);
		uint64_t gen = dnet_get_u64(val.mv_data);
		if ((rc = mdb_cursor_del(c, 0)))
			break;
		if (del_chunks(b, txn, id, gen)) {
			rc = EIO;
			break;
		}
		dropped++;
	}
	mdb_cursor_close(c);
	if (rc != MDB_NOTFOUND)
		goto out_abort;
	if ((rc = mdb_txn_commit(txn)))
		return lm_err(b, rc, "commit");
	if ((rc = mdb_txn_begin(b->env, NULL, MDB_RDONLY, &txn)))
		return lm_err(b, rc, "txn begin");
	if ((rc = mdb_cursor_open(txn, b->obj, &c)))
		goto out_abort;
	for (rc = mdb_cursor_get(c, &key, &val, MDB_FIRST); !rc;
	     rc = mdb_cursor_get(c, &key, &val, MDB_NEXT)) {
		struct kv_hdr h;
		if (key.mv_size == DNET_ID_SIZE && !hdr_decode(val.mv_data, val.mv_size, &h)) {
			objs++;
			bytes += h.size;
		}
	}
	mdb_cursor_close(c);
	mdb_txn_abort(txn);
	if (rc != MDB_NOTFOUND)
		return lm_err(b, rc, "scan");
	atomic_store(&b->objects, objs);
	atomic_store(&b->bytes, bytes);
	dnet_log_info("lmdb backend %s: %llu objects, %llu bytes, %llu stale uploads removed, "
		      "%.3f s",
		      b->path, (unsigned long long)objs, (unsigned long long)bytes,
		      (unsigned long long)dropped, (double)(dnet_now_mono_ns() - t0) / 1e9);
	return 0;
out_abort:
	mdb_txn_abort(txn);
	return lm_err(b, rc, "recover");
}

static void lm_free(struct dnet_backend *b)
{
	for (int i = 0; i < KV_UP_BUCKETS; i++) {
		for (struct lm_upload *u = b->up[i], *n; u; u = n) {
			n = u->next;
			up_destroy(b, u, 0); /* staged chunks are removed at the next open */
		}
	}
	if (b->env)
		mdb_env_close(b->env);
	if (b->lockfd >= 0)
		close(b->lockfd);
	pthread_rwlock_destroy(&b->maplock);
	pthread_mutex_destroy(&b->up_lock);
	pthread_mutex_destroy(&b->q_lock);
	pthread_cond_destroy(&b->q_cond);
	pthread_cond_destroy(&b->done_cond);
	free(b->path);
	free(b);
}

static int lm_open(const struct dnet_backend_config *cfg, struct dnet_backend **out)
{
	struct dnet_backend *b;
	char p[4096];
	int err, rc;
	if (!cfg || !cfg->path || !cfg->path[0] || cfg->fsync < DNET_FSYNC_NEVER ||
	    cfg->fsync > DNET_FSYNC_BATCH || strlen(cfg->path) > 4000)
		return DNET_EINVAL;
	if (!(b = calloc(1, sizeof(*b))))
		return DNET_ENOMEM;
	b->lockfd = -1;
	b->cfg = *cfg;
	if (!b->cfg.batch_max_ops)
		b->cfg.batch_max_ops = 1;
	if (!b->cfg.upload_timeout_s)
		b->cfg.upload_timeout_s = 3600;
	b->up_last_sweep_ns = dnet_now_mono_ns();
	atomic_store(&b->gen_seq, dnet_now_real_ns());
	pthread_rwlockattr_t ra;
	pthread_rwlockattr_init(&ra);
	/* growth must not starve behind a stream of readers */
	pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&b->maplock, &ra);
	pthread_rwlockattr_destroy(&ra);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&b->q_cond, &ca);
	pthread_condattr_destroy(&ca);
	pthread_cond_init(&b->done_cond, NULL);
	pthread_mutex_init(&b->q_lock, NULL);
	pthread_mutex_init(&b->up_lock, NULL);
	if (!(b->path = strdup(cfg->path))) {
		err = DNET_ENOMEM;
		goto out_free;
	}
	b->cfg.path = b->path;
	if ((err = mkdir_p(b->path)))
		goto out_log;
	snprintf(p, sizeof(p), "%s/LOCK", b->path);
	if ((b->lockfd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644)) < 0) {
		err = dnet_from_errno(errno);
		goto out_log;
	}
	if (flock(b->lockfd, LOCK_EX | LOCK_NB) < 0) {
		err = errno == EWOULDBLOCK ? DNET_EBUSY : dnet_from_errno(errno);
		dnet_log_error("lmdb backend %s: data directory is in use by another process",
			       b->path);
		goto out_free;
	}
	/* Initial map: 1 GiB or twice the existing file (env ELLIPTICS_LMDB_MAPSIZE, in
	 * bytes, overrides: tests use it to exercise growth). */
	b->mapsize = 1ull << 30;
	if (file_bytes(b, 0) * 2 > b->mapsize)
		b->mapsize = file_bytes(b, 0) * 2;
	const char *ms = getenv("ELLIPTICS_LMDB_MAPSIZE");
	uint64_t msv;
	if (ms && !dnet_parse_size(ms, &msv) && msv >= (1u << 20))
		b->mapsize = msv > file_bytes(b, 0) ? msv : file_bytes(b, 0);
	unsigned flags = MDB_NORDAHEAD;
	if (cfg->fsync == DNET_FSYNC_NEVER)
		flags |= MDB_NOSYNC | MDB_NOMETASYNC;
	else if (cfg->fsync == DNET_FSYNC_BATCH)
		flags |= MDB_NOMETASYNC;
	if ((rc = mdb_env_create(&b->env)) || (rc = mdb_env_set_maxdbs(b->env, 4)) ||
	    (rc = mdb_env_set_maxreaders(b->env, 1024)) ||
	    (rc = mdb_env_set_mapsize(b->env, (size_t)b->mapsize)) ||
	    (rc = mdb_env_open(b->env, b->path, flags, 0644))) {
		err = lm_err(b, rc, "env open");
		if (err == LM_MAPFULL)
			err = DNET_EIO;
		if (b->env && rc) {
			mdb_env_close(b->env);
			b->env = NULL;
		}
		goto out_log;
	}
	MDB_envinfo ei;
	if (!mdb_env_info(b->env, &ei))
		b->mapsize = ei.me_mapsize;
	map_locate(b);
	MDB_txn *txn;
	if ((rc = mdb_txn_begin(b->env, NULL, 0, &txn))) {
		err = lm_err(b, rc, "txn begin");
		goto out_log;
	}
	if ((rc = mdb_dbi_open(txn, "obj", MDB_CREATE, &b->obj)) ||
	    (rc = mdb_dbi_open(txn, "chunk", MDB_CREATE, &b->chunk)) ||
	    (rc = mdb_dbi_open(txn, "upload", MDB_CREATE, &b->upl)) || (rc = mdb_txn_commit(txn))) {
		if (rc && txn)
			mdb_txn_abort(txn);
		err = lm_err(b, rc, "open databases");
		if (err == LM_MAPFULL)
			err = DNET_ENOSPC;
		goto out_log;
	}
	if ((err = recover(b)))
		goto out_log;
	if (cfg->fsync == DNET_FSYNC_BATCH) {
		if (pthread_create(&b->committer, NULL, committer, b)) {
			err = DNET_ENOMEM;
			goto out_log;
		}
		b->committer_started = 1;
	}
	dnet_log_info("lmdb backend %s: open, fsync=%s, map %llu MiB", b->path,
		      dnet_fsync_policy_name(cfg->fsync), (unsigned long long)(b->mapsize >> 20));
	*out = b;
	return 0;
out_log:
	dnet_log_error("lmdb backend %s: open failed: %s", cfg->path, dnet_strerror(err));
out_free:
	lm_free(b);
	return err;
}

static void lm_close(struct dnet_backend *b)
{
	if (!b)
		return;
	if (b->committer_started) {
		pthread_mutex_lock(&b->q_lock);
		b->q_stop = 1;
		pthread_cond_signal(&b->q_cond);
		pthread_mutex_unlock(&b->q_lock);
		pthread_join(b->committer, NULL); /* drains the queue first */
	}
	if (b->cfg.fsync != DNET_FSYNC_ALWAYS)
		mdb_env_sync(b->env, 1);
	lm_free(b);
}

const struct dnet_backend_ops dnet_lmdb_backend_ops = {
    .name = "lmdb",
    .open = lm_open,
    .close = lm_close,
    .write = lm_write,
    .read = lm_read,
    .del = lm_del,
    .lookup = lm_lookup,
    .iterate = lm_iterate,
    .sync = lm_sync,
    .stat = lm_stat,
};
