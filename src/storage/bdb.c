/* bdb.c - the "bdb" storage engine (the seed's plan): objects in Berkeley DB btrees
 * inside a transactional environment, recovered on every open; the same value
 * layout and 256 KiB chunking as the lmdb engine. docs/storage-kv.md has the prose.
 *
 * ON-DISK LAYOUT (under cfg->path): LOCK (flock()ed: one process), the BDB
 * environment (log.NNNNNNNNNN write-ahead logs, removed automatically once a
 * checkpoint no longer needs them) and three btree databases:
 *   objects.db  key id[64]                      -> 64-byte header [+ data if inline]
 *   chunks.db   key id[64] gen(be64) idx(be64)  -> u64 XXH3-64(data) + data
 *   uploads.db  key id[64] cookie(be64)         -> u64 gen, u64 created (ns)
 * The header is the lmdb engine's ("DKVO", size, timestamp, gen, XXH3-128 of the
 * object, XXH3-64 of the header); an object is chunked iff size > 256 KiB.
 *
 * CONCURRENCY: BDB lets many write txns run at once with page locks; every write
 * is one txn in the caller's thread, retried after DB_LOCK_DEADLOCK (the lock
 * detector picks a victim on every conflict). Reads run without a txn: the contract
 * never runs a write concurrently with a read of the same ID, and a read that spans
 * several calls re-checks the header.
 * fsync: never = DB_TXN_WRITE_NOSYNC (log written to the OS at commit: survives a
 * process crash; recovery keeps the DB consistent after a power loss, losing only
 * the last txns); always = DB_TXN_SYNC per commit; batch = commit with WRITE_NOSYNC,
 * then a syncer thread runs one log_flush for every commit that queued meanwhile
 * and acks them all (group commit: the log is the only thing that must be durable).
 * A maintenance thread checkpoints every few seconds so logs can be removed and
 * recovery at open stays short. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <db.h>
#include "xxh.h"

#include "../common/errors.h"
#include "../common/id.h"
#include "../common/log.h"
#include "../common/util.h"
#include "backend.h"
#include "bdb.h"
#include "fault.h"

#define KV_MAGIC 0x4f564b44u /* "DKVO" */
#define KV_VERSION 1
#define KV_HDR 64u
#define KV_F_CHUNKED 0x1u
#define KV_CHUNK (256u << 10)
#define KV_MAX_OBJECT (1ull << 44)
#define KV_CKEY (DNET_ID_SIZE + 16)
#define KV_UKEY (DNET_ID_SIZE + 8)
#define KV_BUF_MAX (1ull << 20) /* larger reads: a temp file, sent as a file range */
#define KV_PIECE (8ull << 20)	/* bytes per read txn when spooling (bounds RSS) */
#define KV_ITER_BATCH 256
#define KV_UP_BUCKETS 64
#define BD_RETRIES 200
#define BD_CKPT_S 5
#define BD_CACHE (8ull << 20) /* ELLIPTICS_BDB_CACHE overrides */
#define BD_LG_BSIZE (1u << 20)
#define BD_AGAIN 1 /* internal: deadlock victim, retry the txn */
/* get_chunk's BD_AGAIN: its results >= 0 are lengths, so a deadlock is negative. */
#define BD_AGAIN_LEN ((int64_t)-1000000)

struct kv_hdr {
	uint16_t flags;
	uint64_t size, timestamp, gen;
	uint8_t csum[16];
};

struct bd_upload {
	struct bd_upload *next;
	uint8_t id[DNET_ID_SIZE];
	uint64_t cookie, gen, total, timestamp;
	uint64_t hwm, written, seq_pos;
	int unknown, seq, busy;
	XXH3_state_t *st;
	uint64_t active_ns;
};

struct bd_op {
	uint8_t id[DNET_ID_SIZE];
	struct dnet_io_attr io;
	const uint8_t *data;
	uint8_t csum[16];
	struct bd_upload *up;
	struct dnet_obj_info info;
	int64_t d_obj, d_bytes;
	uint8_t *scratch; /* 8 + KV_CHUNK + KV_HDR */
	int nosync;        /* a txn whose durability a later one provides */
	uint64_t staged;   /* apply_whole: chunks already staged under this generation */
	uint64_t gc_gen;   /* after the commit: chunks of this generation are garbage */
	uint64_t gc_cookie; /* apply_gc_step: the uploads.db record covering gc_gen */
	uint64_t first, n; /* apply_stage: chunks [first, first + n) */
	int more;          /* apply_gc_step: chunks left */
};

/* A commit waiting for the group log flush. */
struct bd_wait {
	struct bd_wait *next;
	int status, finished;
	struct dnet_obj_info info;
	dnet_write_done_fn done; /* NULL: a caller blocks on `finished` */
	void *arg;
};

struct dnet_backend {
	char *path;
	int lockfd;
	uint64_t reserve;      /* size of DIR/RESERVE: disk kept for deletes (0: none) */
	uint32_t lg_max;       /* log file size */
	uint32_t txn_chunks;   /* chunks written or deleted per txn at most */
	atomic_int reserve_held;
	struct dnet_backend_config cfg;
	DB_ENV *env;
	DB *obj, *chunk, *upl;
	_Atomic uint64_t objects, bytes, syncs, synced_writes, corrupt, gen_seq;

	pthread_mutex_t up_lock;
	struct bd_upload *up[KV_UP_BUCKETS];
	uint64_t up_last_sweep_ns;

	pthread_mutex_t q_lock;
	pthread_cond_t q_cond, done_cond;
	struct bd_wait *q_head, *q_tail;
	uint32_t q_len;
	int q_stop, syncer_started, maint_started;
	pthread_t syncer, maint;
};

/* ---- encoding (shared with lmdb.c by design, see docs/storage-kv.md) ------------ */

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

/* len = SIZE_MAX: only the header was fetched, skip the value-length check. */
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
		if ((len != KV_HDR && len != SIZE_MAX) || h->size <= KV_CHUNK ||
		    dnet_get_u32(in + 48) != KV_CHUNK)
			return DNET_ECORRUPT;
	} else if (h->size > KV_CHUNK || (len != SIZE_MAX && len != KV_HDR + h->size) ||
		   dnet_get_u32(in + 48)) {
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
	dnet_log_error("bdb backend %s: object %s is corrupt: %s", b->path, hex, what);
}

static int bd_err(struct dnet_backend *b, int rc, const char *what)
{
	switch (rc) {
	case 0:
		return 0;
	case DB_NOTFOUND:
	case DB_KEYEMPTY:
		return DNET_ENOENT;
	case DB_LOCK_DEADLOCK:
	case DB_LOCK_NOTGRANTED:
		return BD_AGAIN;
	case ENOSPC:
	case EDQUOT:
		dnet_log_error("bdb backend %s: %s: disk full", b->path, what);
		return DNET_ENOSPC;
	case ENOMEM:
		return DNET_ENOMEM;
	default:
		dnet_log_error("bdb backend %s: %s: %s", b->path, what, db_strerror(rc));
		return rc > 0 ? dnet_from_errno(rc) : DNET_EIO;
	}
}

static uint64_t new_gen(struct dnet_backend *b, uint64_t avoid)
{
	uint64_t g = atomic_fetch_add(&b->gen_seq, 1);
	return g == avoid || g == 0 ? atomic_fetch_add(&b->gen_seq, 1) : g;
}

/* ---- DBT helpers ------------------------------------------------------------------ */

static void dbt_in(DBT *d, const void *p, size_t len)
{
	memset(d, 0, sizeof(*d));
	d->data = (void *)p;
	d->size = (u_int32_t)len;
}

static void dbt_out(DBT *d, void *buf, size_t cap)
{
	memset(d, 0, sizeof(*d));
	d->data = buf;
	d->ulen = (u_int32_t)cap;
	d->flags = DB_DBT_USERMEM;
}

/* c->get(op) for cursor walks over keys the caller sizes for (*key is USERMEM): a
 * record whose key does not fit is not ours and is stepped over. (Retrying with
 * the same buffer never moves the cursor: an open looped forever on one such key -
 * found by fuzz_bdb.) With DB_SET_RANGE, *key holds the search key. */
static int get_fit(DBC *c, DBT *key, DBT *val, u_int32_t op)
{
	u_int32_t in_size = key->size; /* a failed get overwrites it with the size needed */
	int rc = c->get(c, key, val, op);
	while (rc == DB_BUFFER_SMALL) {
		DBT k, v;
		memset(&k, 0, sizeof(k));
		memset(&v, 0, sizeof(v));
		k.data = key->data; /* read for DB_SET_RANGE; replaced by a malloc()ed copy */
		k.size = in_size;
		k.flags = DB_DBT_MALLOC;
		v.flags = DB_DBT_MALLOC | DB_DBT_PARTIAL; /* dlen 0: no value bytes */
		rc = c->get(c, &k, &v, op);
		if (k.data != key->data)
			free(k.data);
		free(v.data);
		if (rc)
			return rc;
		op = DB_NEXT;
		rc = c->get(c, key, val, DB_NEXT);
	}
	return rc;
}

/* Gets a value into buf (cap bytes); *len = its size. DB_BUFFER_SMALL = a value
 * longer than anything we store: corrupt. */
static int kv_get(struct dnet_backend *b, DB_TXN *txn, DB *db, const void *key, size_t klen,
		  void *buf, size_t cap, size_t *len, u_int32_t flags)
{
	DBT k, v;
	dbt_in(&k, key, klen);
	dbt_out(&v, buf, cap);
	int rc = db->get(db, txn, &k, &v, flags);
	if (rc == DB_BUFFER_SMALL)
		return DNET_ECORRUPT;
	if (rc)
		return bd_err(b, rc, "get");
	*len = v.size;
	return 0;
}

static int kv_put(struct dnet_backend *b, DB_TXN *txn, DB *db, const void *key, size_t klen,
		  const void *val, size_t vlen)
{
	DBT k, v;
	dbt_in(&k, key, klen);
	dbt_in(&v, val, vlen);
	return bd_err(b, db->put(db, txn, &k, &v, 0), "put");
}

static int kv_del(struct dnet_backend *b, DB_TXN *txn, DB *db, const void *key, size_t klen)
{
	DBT k;
	dbt_in(&k, key, klen);
	int rc = db->del(db, txn, &k, 0);
	return rc == DB_NOTFOUND ? 0 : bd_err(b, rc, "del");
}

/* ---- object helpers (inside a txn, or txn NULL for reads) ---------------------- */

/* Header (and inline data) of id into buf (KV_HDR + KV_CHUNK bytes). */
static int get_obj(struct dnet_backend *b, DB_TXN *txn, const uint8_t *id, uint8_t *buf,
		   struct kv_hdr *h, u_int32_t flags)
{
	size_t len;
	int err = kv_get(b, txn, b->obj, id, DNET_ID_SIZE, buf, KV_HDR + KV_CHUNK, &len, flags);
	if (err == DNET_ECORRUPT || (!err && hdr_decode(buf, len, h))) {
		report_corrupt(b, id, "bad header");
		return DNET_ECORRUPT;
	}
	return err;
}

static int put_obj(struct dnet_backend *b, DB_TXN *txn, const uint8_t *id, const struct kv_hdr *h,
		   const uint8_t *inl, uint8_t *scratch)
{
	size_t len = KV_HDR + ((h->flags & KV_F_CHUNKED) ? 0 : h->size);
	hdr_encode(scratch, h);
	if (len > KV_HDR)
		memmove(scratch + KV_HDR, inl, len - KV_HDR);
	return kv_put(b, txn, b->obj, id, DNET_ID_SIZE, scratch, len);
}

/* Verified chunk idx into out; returns its length or < 0. */
static int64_t get_chunk(struct dnet_backend *b, DB_TXN *txn, const uint8_t *id,
			 const struct kv_hdr *h, uint64_t idx, uint8_t *out, int verify,
			 uint8_t *scratch)
{
	uint8_t k[KV_CKEY];
	size_t len;
	ckey(k, id, h->gen, idx);
	uint32_t want = chunk_len(h->size, idx);
	int err = kv_get(b, txn, b->chunk, k, KV_CKEY, scratch, 8 + KV_CHUNK, &len, 0);
	if (err == DNET_ENOENT || err == DNET_ECORRUPT || (!err && len != 8u + want)) {
		report_corrupt(b, id, err ? "missing chunk" : "chunk of wrong length");
		return DNET_ECORRUPT;
	}
	if (err)
		return err == BD_AGAIN ? BD_AGAIN_LEN : err; /* BD_AGAIN (> 0) read as a length
							      * went on in a dead txn: EINVAL */
	if (verify && XXH3_64bits(scratch + 8, want) != dnet_get_u64(scratch)) {
		report_corrupt(b, id, "chunk checksum mismatch");
		return DNET_ECORRUPT;
	}
	memmove(out, scratch + 8, want);
	return want;
}

/* data may point into scratch + 8 (then it is not copied). */
static int put_chunk(struct dnet_backend *b, DB_TXN *txn, const uint8_t *id, uint64_t gen,
		     uint64_t idx, const uint8_t *data, uint32_t len, uint8_t *scratch)
{
	uint8_t k[KV_CKEY];
	ckey(k, id, gen, idx);
	if (data != scratch + 8)
		memcpy(scratch + 8, data, len);
	dnet_put_u64(scratch, XXH3_64bits(scratch + 8, len));
	return kv_put(b, txn, b->chunk, k, KV_CKEY, scratch, 8u + len);
}

/* Deletes the chunks of generation gen, at most max of them (0: all); *more (if
 * not NULL) tells whether some may be left. */
static int del_chunks(struct dnet_backend *b, DB_TXN *txn, const uint8_t *id, uint64_t gen,
		      uint64_t max, int *more)
{
	DBC *c;
	uint64_t done = 0;
	if (more)
		*more = 0;
	uint8_t k[KV_CKEY], kb[KV_CKEY];
	int rc = b->chunk->cursor(b->chunk, txn, &c, 0);
	if (rc)
		return bd_err(b, rc, "cursor");
	ckey(k, id, gen, 0);
	for (;;) {
		DBT key, val;
		dbt_out(&key, kb, sizeof(kb));
		memcpy(kb, k, KV_CKEY);
		key.size = KV_CKEY;
		memset(&val, 0, sizeof(val));
		val.flags = DB_DBT_PARTIAL | DB_DBT_USERMEM; /* keys only */
		val.data = kb;
		rc = c->get(c, &key, &val, DB_SET_RANGE | DB_RMW);
		if (rc == DB_NOTFOUND || rc == DB_BUFFER_SMALL ||
		    (!rc && (key.size != KV_CKEY || memcmp(kb, k, KV_CKEY - 8) != 0))) {
			rc = 0;
			break;
		}
		if (max && done == max) {
			if (more)
				*more = 1;
			break;
		}
		if (rc || (rc = c->del(c, 0)))
			break;
		done++;
	}
	/* A record deleted through a cursor is removed for good (its overflow pages
	 * freed, an emptied page unlinked) when the cursor moves off it or closes, so
	 * the close takes locks and can lose a deadlock: the txn is dead then. Its
	 * result was ignored, and the caller's next call in the txn failed with
	 * "BDB0102 previous transaction deadlock return not resolved" (EINVAL): a
	 * write failed with "put: Invalid argument", an upload's COMMIT with "del". */
	int crc = c->close(c);
	if (!rc)
		rc = crc;
	return rc ? bd_err(b, rc, "delete chunks") : 0;
}

/* ---- write operations --------------------------------------------------------- */
/* Each runs inside one txn; errors abort it. Counters and upload state change only
 * after the commit. */

typedef int (*apply_fn)(struct dnet_backend *b, DB_TXN *txn, struct bd_op *op);

/* ---- bounded transactions ------------------------------------------------------
 * BDB logs every byte a txn writes and every byte it deletes (for undo), and a log
 * file can go only after a checkpoint that follows the commit (or abort) of every
 * txn in it. A txn as large as the object would need that much free disk for its
 * log on top of the data (a 4 MiB object could not be stored on an 8 MiB disk, a
 * failed 8 MiB upload piece filled a small disk with log that no checkpoint could
 * free), and would hold that much in BDB's cache. So objects larger than
 * txn_chunks chunks are written and removed a few chunks per txn:
 *  - a whole write stages its chunks under a fresh generation first, covered by a
 *    record in uploads.db (ID + cookie = the generation), so that after a crash the
 *    next open removes them (as for an upload); the last txn points the header at
 *    them and drops the record;
 *  - the chunks of a replaced or deleted object stay behind, covered by such a
 *    record written in the txn that replaced or deleted the object, and are then
 *    removed txn_chunks at a time (drop_gen), as are the staged chunks of a dropped
 *    upload. Upload pieces are written txn_chunks at a time too. */

static int rec_put(struct dnet_backend *b, DB_TXN *txn, const uint8_t *id, uint64_t cookie,
		   uint64_t gen)
{
	uint8_t k[KV_UKEY], v[16];
	ukey(k, id, cookie);
	dnet_put_u64(v, gen);
	dnet_put_u64(v + 8, dnet_now_real_ns());
	return kv_put(b, txn, b->upl, k, KV_UKEY, v, 16);
}

static int rec_del(struct dnet_backend *b, DB_TXN *txn, const uint8_t *id, uint64_t cookie)
{
	uint8_t k[KV_UKEY];
	ukey(k, id, cookie);
	return kv_del(b, txn, b->upl, k, KV_UKEY);
}

/* In the txn that makes the chunks of generation gen garbage: removes them now if
 * they are few, else records them for drop_gen after the commit. */
static int gc_chunks(struct dnet_backend *b, DB_TXN *txn, struct bd_op *op, uint64_t size,
		     uint64_t gen)
{
	if (nchunks(size) <= b->txn_chunks)
		return del_chunks(b, txn, op->id, gen, 0, NULL);
	op->gc_gen = op->gc_cookie = gen;
	return rec_put(b, txn, op->id, gen, gen);
}

/* Up to txn_chunks chunks of op->gc_gen; the record goes with the last of them. */
static int apply_gc_step(struct dnet_backend *b, DB_TXN *txn, struct bd_op *op)
{
	int err = del_chunks(b, txn, op->id, op->gc_gen, b->txn_chunks, &op->more);
	if (!err && !op->more)
		err = rec_del(b, txn, op->id, op->gc_cookie);
	return err == DNET_ENOENT ? 0 : err;
}

/* Chunks [first, first + n) of a whole write, staged under op->staged. */
static int apply_stage(struct dnet_backend *b, DB_TXN *txn, struct bd_op *op)
{
	int err = 0;
	if (op->first == 0)
		err = rec_put(b, txn, op->id, op->staged, op->staged);
	for (uint64_t i = op->first; !err && i < op->first + op->n; i++)
		err = put_chunk(b, txn, op->id, op->staged, i, op->data + i * KV_CHUNK,
				chunk_len(op->io.size, i), op->scratch);
	return err;
}

static int apply_whole(struct dnet_backend *b, DB_TXN *txn, struct bd_op *op)
{
	struct kv_hdr oh, h;
	uint8_t *s = op->scratch;
	int err = get_obj(b, txn, op->id, s, &oh, DB_RMW);
	int existed = !err;
	if (err && err != DNET_ENOENT && err != DNET_ECORRUPT)
		return err;
	memset(&h, 0, sizeof(h));
	h.size = op->io.size;
	h.timestamp = op->io.timestamp;
	memcpy(h.csum, op->csum, 16);
	if (h.size > KV_CHUNK && op->staged) {
		h.flags = KV_F_CHUNKED;
		h.gen = op->staged;
		if ((err = rec_del(b, txn, op->id, op->staged)))
			return err;
	} else if (h.size > KV_CHUNK) {
		h.flags = KV_F_CHUNKED;
		h.gen = new_gen(b, existed ? oh.gen : 0);
		for (uint64_t i = 0; i < nchunks(h.size); i++)
			if ((err = put_chunk(b, txn, op->id, h.gen, i, op->data + i * KV_CHUNK,
					     chunk_len(h.size, i), s)))
				return err;
	}
	op->gc_gen = 0;
	if (existed && (oh.flags & KV_F_CHUNKED) && (err = gc_chunks(b, txn, op, oh.size, oh.gen)))
		return err;
	if ((err = put_obj(b, txn, op->id, &h, op->data, s)))
		return err;
	op->d_obj = existed ? 0 : 1;
	op->d_bytes = (int64_t)h.size - (existed ? (int64_t)oh.size : 0);
	info_from_hdr(&op->info, &h);
	return 0;
}

static int apply_update(struct dnet_backend *b, DB_TXN *txn, struct bd_op *op)
{
	struct kv_hdr oh, h;
	uint8_t *s = op->scratch, *buf = NULL, *old = NULL;
	XXH3_state_t *st = NULL;
	int err = get_obj(b, txn, op->id, s, &oh, DB_RMW);
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
		memcpy(old, s + KV_HDR, oh.size);
		uint8_t c[16];
		dnet_csum(old, oh.size, c);
		if (memcmp(c, oh.csum, 16)) {
			report_corrupt(b, op->id, "object checksum mismatch");
			err = DNET_ECORRUPT;
			goto out;
		}
	}
	if (!(buf = malloc(KV_CHUNK))) {
		err = DNET_ENOMEM;
		goto out;
	}
	if (h.size <= KV_CHUNK) {
		memcpy(buf, old, oh.size);
		memcpy(buf + off, op->data, len);
		dnet_csum(buf, h.size, h.csum);
		err = put_obj(b, txn, op->id, &h, buf, s);
		goto out_ok;
	}
	h.flags = KV_F_CHUNKED;
	h.gen = (oh.flags & KV_F_CHUNKED) ? oh.gen : new_gen(b, 0);
	if (!(st = XXH3_createState()) || XXH3_128bits_reset(st) != XXH_OK) {
		err = DNET_ENOMEM;
		goto out;
	}
	for (uint64_t i = 0; i < nchunks(h.size); i++) {
		uint64_t cs = i * KV_CHUNK;
		uint32_t cl = chunk_len(h.size, i), ol = 0;
		if (cs < oh.size) {
			if (oh.flags & KV_F_CHUNKED) {
				int64_t r = get_chunk(b, txn, op->id, &oh, i, buf, 1, s);
				if (r < 0) {
					err = r == BD_AGAIN_LEN ? BD_AGAIN : (int)r;
					goto out;
				}
				ol = (uint32_t)r;
			} else {
				ol = (uint32_t)oh.size;
				memcpy(buf, old, ol);
			}
		}
		uint64_t ws = off > cs ? off : cs, we = off + len < cs + cl ? off + len : cs + cl;
		if (we > ws)
			memcpy(buf + (ws - cs), op->data + (ws - off), we - ws);
		XXH3_128bits_update(st, buf, cl);
		if (we > ws || ol != cl || !(oh.flags & KV_F_CHUNKED))
			if ((err = put_chunk(b, txn, op->id, h.gen, i, buf, cl, s)))
				goto out;
	}
	XXH128_canonical_t c;
	XXH128_canonicalFromHash(&c, XXH3_128bits_digest(st));
	memcpy(h.csum, c.digest, 16);
	err = put_obj(b, txn, op->id, &h, NULL, s);
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

static int apply_write(struct dnet_backend *b, DB_TXN *txn, struct bd_op *op)
{
	return op->io.offset ? apply_update(b, txn, op) : apply_whole(b, txn, op);
}

static int apply_del(struct dnet_backend *b, DB_TXN *txn, struct bd_op *op)
{
	struct kv_hdr h;
	int err = get_obj(b, txn, op->id, op->scratch, &h, DB_RMW);
	if (err && err != DNET_ECORRUPT)
		return err;
	int bad = err;
	if ((err = kv_del(b, txn, b->obj, op->id, DNET_ID_SIZE)))
		return err;
	op->gc_gen = 0;
	if (!bad && (h.flags & KV_F_CHUNKED) && (err = gc_chunks(b, txn, op, h.size, h.gen)))
		return err;
	op->d_obj = -1;
	op->d_bytes = bad ? 0 : -(int64_t)h.size;
	return 0;
}

static int apply_up_data(struct dnet_backend *b, DB_TXN *txn, struct bd_op *op)
{
	const struct bd_upload *u = op->up;
	const uint64_t off = op->io.offset, len = op->io.size;
	uint8_t *s = op->scratch;
	int err;
	if ((op->io.ioflags & DNET_IO_PREPARE) && (err = rec_put(b, txn, u->id, u->cookie, u->gen)))
		return err;
	for (uint64_t i = off / KV_CHUNK; len && i < nchunks(off + len); i++) {
		uint64_t cs = i * KV_CHUNK;
		uint64_t ws = off > cs ? off : cs;
		uint64_t we = off + len < cs + KV_CHUNK ? off + len : cs + KV_CHUNK;
		uint8_t k[KV_CKEY];
		size_t have = 0;
		ckey(k, u->id, u->gen, i);
		if (!(ws == cs && we - cs == KV_CHUNK)) {
			err = kv_get(b, txn, b->chunk, k, KV_CKEY, s, 8 + KV_CHUNK, &have, DB_RMW);
			if (err == DNET_ENOENT)
				have = 0;
			else if (err)
				return err;
			else if (have < 8)
				return DNET_ECORRUPT;
			else
				have -= 8;
			if (have < ws - cs)
				memset(s + 8 + have, 0, ws - cs - have);
		}
		memcpy(s + 8 + (ws - cs), op->data + (ws - off), we - ws);
		uint32_t nl = (uint32_t)(we - cs > have ? we - cs : have);
		if ((err = put_chunk(b, txn, u->id, u->gen, i, s + 8, nl, s)))
			return err;
	}
	return 0;
}

static int apply_up_commit(struct dnet_backend *b, DB_TXN *txn, struct bd_op *op)
{
	struct bd_upload *u = op->up;
	struct kv_hdr oh, h;
	uint8_t *s = op->scratch, *buf = NULL;
	XXH3_state_t *st = NULL;
	int err = apply_up_data(b, txn, op);
	if (err)
		return err;
	uint64_t end = op->io.offset + op->io.size;
	uint64_t size = u->unknown ? (u->hwm > end ? u->hwm : end) : u->total;
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
		size_t len;
		ckey(k, u->id, u->gen, i);
		err = kv_get(b, txn, b->chunk, k, KV_CKEY, s, 8 + KV_CHUNK, &len, 0);
		if (err == DNET_ENOENT || (!err && len != 8u + chunk_len(size, i))) {
			err = DNET_EINVAL; /* a hole: a piece never arrived */
			goto out;
		}
		if (err)
			goto out;
		if (XXH3_64bits(s + 8, len - 8) != dnet_get_u64(s)) {
			err = DNET_EIO;
			goto out;
		}
		XXH3_128bits_update(st, s + 8, len - 8);
		if (size <= KV_CHUNK)
			memcpy(buf, s + 8, len - 8);
	}
	XXH128_canonical_t c;
	XXH128_canonicalFromHash(&c, XXH3_128bits_digest(st));
	memcpy(h.csum, c.digest, 16);
	err = get_obj(b, txn, u->id, s, &oh, DB_RMW);
	int existed = !err;
	if (err && err != DNET_ENOENT && err != DNET_ECORRUPT)
		goto out;
	op->gc_gen = 0;
	if (existed && (oh.flags & KV_F_CHUNKED) && oh.gen != u->gen &&
	    (err = gc_chunks(b, txn, op, oh.size, oh.gen)))
		goto out;
	if (size <= KV_CHUNK) {
		h.gen = 0;
		if ((err = put_obj(b, txn, u->id, &h, buf, s)) ||
		    (err = del_chunks(b, txn, u->id, u->gen, 0, NULL)))
			goto out;
	} else {
		h.flags = KV_F_CHUNKED;
		if ((err = put_obj(b, txn, u->id, &h, NULL, s)))
			goto out;
	}
	uint8_t k[KV_UKEY];
	ukey(k, u->id, u->cookie);
	if ((err = kv_del(b, txn, b->upl, k, KV_UKEY)))
		goto out;
	op->d_obj = existed ? 0 : 1;
	op->d_bytes = (int64_t)size - (existed ? (int64_t)oh.size : 0);
	info_from_hdr(&op->info, &h);
out:
	XXH3_freeState(st);
	free(buf);
	return err;
}


/* ---- a full disk ------------------------------------------------------------------
 * BDB writes every change to its log before the database, and a delete logs the
 * bytes it removes (for undo), so on a full disk even deletes fail, and the space
 * that deleted pages free stays inside the database files for reuse. Two things
 * make room: a forced checkpoint (log files no longer needed are then removed,
 * DB_LOG_AUTO_REMOVE; log files are small on small filesystems, see bd_open), and
 * DIR/RESERVE, a file of allocated space given up only so that deletes can go
 * through, and taken again once there is room. */
static void reserve_take(struct dnet_backend *b)
{
	if (!b->reserve || atomic_load(&b->reserve_held))
		return;
	char p[4200];
	snprintf(p, sizeof(p), "%s/RESERVE", b->path);
	struct statvfs vfs;
	if (statvfs(b->path, &vfs) != 0 ||
	    (uint64_t)vfs.f_bavail * vfs.f_frsize < 3 * b->reserve)
		return;
	int fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return;
	if (dnet_f_fallocate(fd, 0, 0, (off_t)b->reserve) == 0)
		atomic_store(&b->reserve_held, 1);
	else
		(void)dnet_f_ftruncate(fd, 0);
	close(fd);
}

static void reserve_give(struct dnet_backend *b)
{
	char p[4200];
	snprintf(p, sizeof(p), "%s/RESERVE", b->path);
	if (atomic_exchange(&b->reserve_held, 0) && unlink(p) == 0)
		dnet_log_warn("bdb backend %s: disk full: reserve given up for a delete", b->path);
}

static void make_room(struct dnet_backend *b)
{
	int rc = b->env->txn_checkpoint(b->env, 0, 0, DB_FORCE);
	if (rc)
		bd_err(b, rc, "checkpoint");
}

static int run_txn1(struct dnet_backend *b, struct bd_op *op, apply_fn fn);
static int run_txn(struct dnet_backend *b, struct bd_op *op, apply_fn fn)
{
	int err = run_txn1(b, op, fn);
	if (err != DNET_ENOSPC)
		goto out;
	make_room(b);
	err = run_txn1(b, op, fn);
	if (err == DNET_ENOSPC && (fn == apply_del || fn == apply_gc_step) &&
	    atomic_load(&b->reserve_held)) {
		reserve_give(b);
		make_room(b);
		err = run_txn1(b, op, fn);
	}
out:
	if (!err && b->reserve) {
		/* small filesystem: checkpoint after every log file's worth of changes,
		 * so that what is only in the log (and must reach the database files
		 * before the log can go) stays small when the disk fills up */
		int rc = b->env->txn_checkpoint(b->env, b->lg_max >> 10, 0, 0);
		if (rc)
			bd_err(b, rc, "checkpoint");
		if (!atomic_load(&b->reserve_held))
			reserve_take(b);
	}
	return err;
}

/* One op in its own txn, retried while it is chosen as a deadlock victim. */
static int run_txn1(struct dnet_backend *b, struct bd_op *op, apply_fn fn)
{
	uint8_t *own = NULL;
	int err = BD_AGAIN;
	if (!op->scratch && !(op->scratch = own = malloc(8 + KV_CHUNK + KV_HDR)))
		return DNET_ENOMEM;
	for (int tries = 0; tries < BD_RETRIES && err == BD_AGAIN; tries++) {
		DB_TXN *txn;
		if (tries > 2)
			usleep((useconds_t)(tries * 100));
		int rc = b->env->txn_begin(b->env, NULL, &txn, 0);
		if (rc) {
			err = bd_err(b, rc, "txn begin");
			continue;
		}
		op->d_obj = op->d_bytes = 0;
		err = fn(b, txn, op);
		if (err) {
			txn->abort(txn);
			continue;
		}
		if ((rc = dnet_fault_check(DNET_FAULT_COMMIT)))
			txn->abort(txn); /* fault injection: this commit fails */
		else
			rc = txn->commit(txn, op->nosync ? DB_TXN_WRITE_NOSYNC
						 : b->cfg.fsync == DNET_FSYNC_ALWAYS ? DB_TXN_SYNC : 0);
		err = bd_err(b, rc, "commit");
	}
	if (err == BD_AGAIN) {
		dnet_log_error("bdb backend %s: txn still deadlocked after %d tries", b->path,
			       BD_RETRIES);
		err = DNET_EBUSY;
	}
	if (own) {
		free(own);
		op->scratch = NULL;
	}
	return err;
}

/* Removes the chunks of generation gen and then the uploads.db record (ID,
 * cookie) that covers them, a few chunks per txn. On failure the record stays
 * and the next open finishes the job. */
static int drop_gen(struct dnet_backend *b, const uint8_t *id, uint64_t gen, uint64_t cookie)
{
	struct bd_op op;
	int err;
	memset(&op, 0, sizeof(op));
	memcpy(op.id, id, DNET_ID_SIZE);
	op.gc_gen = gen;
	op.gc_cookie = cookie;
	op.nosync = 1; /* after a crash the record makes the next open redo it */
	do
		err = run_txn(b, &op, apply_gc_step);
	while (!err && op.more);
	if (err)
		dnet_log_warn("bdb backend %s: cannot remove %s chunks (the next open will): %s",
			      b->path, cookie == gen ? "unused" : "staged upload",
			      dnet_strerror(err));
	return err;
}

/* A whole write of op->io.size bytes at offset 0: stage its chunks (if more than
 * one txn's worth), then switch the header to them in one txn. */
static int write_whole(struct dnet_backend *b, struct bd_op *op)
{
	uint64_t n = op->io.size > KV_CHUNK ? nchunks(op->io.size) : 0;
	int err = 0;
	if (n > b->txn_chunks) {
		op->staged = new_gen(b, 0);
		op->nosync = 1;
		for (op->first = 0; !err && op->first < n; op->first += op->n) {
			op->n = n - op->first < b->txn_chunks ? n - op->first : b->txn_chunks;
			err = run_txn(b, op, apply_stage);
		}
		op->nosync = 0;
	}
	if (!err)
		err = run_txn(b, op, apply_write);
	if (err && op->staged)
		drop_gen(b, op->id, op->staged, op->staged);
	else if (!err && op->gc_gen)
		drop_gen(b, op->id, op->gc_gen, op->gc_cookie);
	return err;
}

static void count(struct dnet_backend *b, const struct bd_op *op)
{
	if (op->d_obj)
		atomic_fetch_add(&b->objects, (uint64_t)op->d_obj);
	if (op->d_bytes)
		atomic_fetch_add(&b->bytes, (uint64_t)op->d_bytes);
}

/* ---- group commit: one log flush for every commit queued meanwhile ------------ */

static void *syncer(void *arg)
{
	struct dnet_backend *b = arg;
	dnet_thread_name("ell-bdb-sync");
	pthread_mutex_lock(&b->q_lock);
	for (;;) {
		while (!b->q_head && !b->q_stop)
			pthread_cond_wait(&b->q_cond, &b->q_lock);
		if (!b->q_head)
			break;
		if (b->cfg.batch_max_delay_us && !b->q_stop && b->q_len < b->cfg.batch_max_ops) {
			pthread_mutex_unlock(&b->q_lock);
			usleep(b->cfg.batch_max_delay_us);
			pthread_mutex_lock(&b->q_lock);
		}
		struct bd_wait *batch = b->q_head;
		b->q_head = b->q_tail = NULL;
		b->q_len = 0;
		pthread_mutex_unlock(&b->q_lock);

		/* every commit before this point is in the log buffer or the OS */
		int rc = dnet_fault_check(DNET_FAULT_SYNC);
		if (!rc)
			rc = b->env->log_flush(b->env, NULL);
		int err = bd_err(b, rc, "log flush");
		atomic_fetch_add(&b->syncs, 1);
		uint64_t n = 0;
		struct bd_wait *waiters = NULL;
		for (struct bd_wait *w = batch, *next; w; w = next) {
			next = w->next;
			w->status = err;
			if (w->done) {
				n += !err;
				w->done(w->arg, err, err ? NULL : &w->info);
				free(w);
			} else {
				w->next = waiters;
				waiters = w;
			}
		}
		atomic_fetch_add(&b->synced_writes, n);
		pthread_mutex_lock(&b->q_lock);
		for (struct bd_wait *w = waiters, *next; w; w = next) {
			next = w->next;
			w->finished = 1; /* w may vanish once the lock drops */
		}
		pthread_cond_broadcast(&b->done_cond);
	}
	pthread_mutex_unlock(&b->q_lock);
	return NULL;
}

static int enqueue(struct dnet_backend *b, struct bd_wait *w)
{
	pthread_mutex_lock(&b->q_lock);
	if (b->q_stop) {
		pthread_mutex_unlock(&b->q_lock);
		return DNET_ESHUTDOWN;
	}
	w->next = NULL;
	if (b->q_tail)
		b->q_tail->next = w;
	else
		b->q_head = w;
	b->q_tail = w;
	b->q_len++;
	pthread_cond_signal(&b->q_cond);
	pthread_mutex_unlock(&b->q_lock);
	return 0;
}

static int wait_durable(struct dnet_backend *b)
{
	struct bd_wait w;
	memset(&w, 0, sizeof(w));
	int err = enqueue(b, &w);
	if (err)
		return err;
	pthread_mutex_lock(&b->q_lock);
	while (!w.finished)
		pthread_cond_wait(&b->done_cond, &b->q_lock);
	pthread_mutex_unlock(&b->q_lock);
	return w.status;
}

/* After a commit: ack now (never/always) or after the next group log flush. */
static void finish(struct dnet_backend *b, struct bd_op *op, int err, dnet_write_done_fn done,
		   void *arg)
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
	struct bd_wait *w = calloc(1, sizeof(*w));
	if (!w) {
		done(arg, DNET_ENOMEM, NULL);
		return;
	}
	w->info = op->info;
	w->done = done;
	w->arg = arg;
	if ((err = enqueue(b, w))) {
		free(w);
		done(arg, err, NULL);
	}
}

/* ---- chunked uploads (state in memory, staged chunks in chunks.db) ------------- */

static uint32_t up_bucket(const uint8_t *id, uint64_t cookie)
{
	return (uint32_t)((id[3] ^ cookie ^ (cookie >> 17)) % KV_UP_BUCKETS);
}

static struct bd_upload **up_slot(struct dnet_backend *b, const uint8_t *id, uint64_t cookie)
{
	struct bd_upload **pp = &b->up[up_bucket(id, cookie)];
	while (*pp && ((*pp)->cookie != cookie || memcmp((*pp)->id, id, DNET_ID_SIZE) != 0))
		pp = &(*pp)->next;
	return pp;
}

static void up_destroy(struct dnet_backend *b, struct bd_upload *u, int drop_chunks)
{
	if (drop_chunks)
		drop_gen(b, u->id, u->gen, u->cookie);
	XXH3_freeState(u->st);
	free(u);
}

/* destroy: 0 keep, 1 remove with its staged chunks, 2 remove (committed). */
static void up_release(struct dnet_backend *b, struct bd_upload *u, int destroy)
{
	pthread_mutex_lock(&b->up_lock);
	u->busy = 0;
	u->active_ns = dnet_now_mono_ns();
	if (destroy) {
		struct bd_upload **pp = up_slot(b, u->id, u->cookie);
		if (*pp == u)
			*pp = u->next;
	}
	pthread_mutex_unlock(&b->up_lock);
	if (destroy)
		up_destroy(b, u, destroy == 1);
}

static void up_sweep(struct dnet_backend *b, int all)
{
	uint64_t now = dnet_now_mono_ns(), limit = b->cfg.upload_timeout_s * 1000000000ull;
	struct bd_upload *gone = NULL;
	pthread_mutex_lock(&b->up_lock);
	if (!all && dnet_ns_since(now, b->up_last_sweep_ns) <
			(limit < 60000000000ull ? limit : 60000000000ull)) {
		pthread_mutex_unlock(&b->up_lock);
		return;
	}
	b->up_last_sweep_ns = now;
	for (int k = 0; k < KV_UP_BUCKETS; k++) {
		for (struct bd_upload **pp = &b->up[k]; *pp;) {
			struct bd_upload *u = *pp;
			if (!u->busy && (all || dnet_ns_since(now, u->active_ns) > limit)) {
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
		struct bd_upload *u = gone;
		gone = u->next;
		if (!all)
			dnet_log_info("bdb backend %s: dropping abandoned upload cookie %llx",
				      b->path, (unsigned long long)u->cookie);
		up_destroy(b, u, !all); /* at close: the next open removes them */
	}
}

/* Writes the data of an upload piece txn_chunks chunks per txn (the first one
 * records the upload if it is a PREPARE). keep_last: the last part is left in op,
 * for the COMMIT txn. */
static int up_split(struct dnet_backend *b, struct bd_op *op, int keep_last)
{
	const uint64_t step = (uint64_t)b->txn_chunks * KV_CHUNK;
	for (;;) {
		const uint64_t off = op->io.offset, len = op->io.size;
		const uint64_t cut = (off / step + 1) * step - off; /* to the next boundary */
		if (len <= cut)
			return keep_last || !(len || (op->io.ioflags & DNET_IO_PREPARE))
				   ? 0
				   : run_txn(b, op, apply_up_data);
		op->io.size = cut;
		int err = run_txn(b, op, apply_up_data);
		if (err)
			return err;
		op->io.offset += cut;
		op->io.size = len - cut;
		op->data += cut;
		op->io.ioflags &= ~(uint32_t)DNET_IO_PREPARE;
	}
}

static void write_upload(struct dnet_backend *b, const struct dnet_write_req *req,
			 dnet_write_done_fn done, void *arg)
{
	const struct dnet_io_attr *io = &req->io;
	struct bd_upload *u = NULL;
	int err;
	if (io->ioflags & DNET_IO_PREPARE) {
		if (io->total_size > KV_MAX_OBJECT) {
			done(arg, DNET_ETOOBIG, NULL);
			return;
		}
		up_sweep(b, 0);
		pthread_mutex_lock(&b->up_lock);
		struct bd_upload **pp = up_slot(b, req->id, io->cookie), *old = NULL;
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
	struct bd_op op;
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
		if (!(err = up_split(b, &op, 1)))
			err = run_txn(b, &op, apply_up_commit);
		if (err == DNET_EINVAL) {
			up_release(b, u, 0);
			done(arg, err, NULL);
			return;
		}
		up_release(b, u, err ? 1 : 2);
		if (!err && op.gc_gen)
			drop_gen(b, op.id, op.gc_gen, op.gc_cookie);
		finish(b, &op, err, done, arg);
		return;
	}
	if ((err = up_split(b, &op, 0))) {
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

/* ---- backend ops ------------------------------------------------------------------ */

static void bd_write(struct dnet_backend *b, const struct dnet_write_req *req,
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
	struct bd_op op;
	memset(&op, 0, sizeof(op));
	memcpy(op.id, req->id, DNET_ID_SIZE);
	op.io = req->io;
	if (!op.io.timestamp)
		op.io.timestamp = dnet_now_real_ns();
	op.data = req->data ? req->data : (const uint8_t *)"";
	if (!req->io.offset)
		dnet_csum(op.data, req->io.size, op.csum);
	int err = op.io.offset ? run_txn(b, &op, apply_write) : write_whole(b, &op);
	finish(b, &op, err, done, arg);
}

static int check_whole(struct dnet_backend *b, const uint8_t *id, const struct kv_hdr *h,
		       XXH3_state_t *st)
{
	XXH128_canonical_t c;
	XXH128_canonicalFromHash(&c, XXH3_128bits_digest(st));
	if (memcmp(c.digest, h->csum, 16)) {
		report_corrupt(b, id, "object checksum mismatch");
		return DNET_ECORRUPT;
	}
	return 0;
}

/* [off, off+len) of the object described by h (inline data in s + KV_HDR). */
static int read_into(struct dnet_backend *b, const uint8_t *id, const struct kv_hdr *h, uint8_t *s,
		     uint64_t off, uint64_t len, uint8_t *out, int verify, XXH3_state_t *st)
{
	if (!(h->flags & KV_F_CHUNKED)) {
		if (verify) {
			uint8_t c[16];
			dnet_csum(s + KV_HDR, h->size, c);
			if (memcmp(c, h->csum, 16)) {
				report_corrupt(b, id, "object checksum mismatch");
				return DNET_ECORRUPT;
			}
		}
		memcpy(out, s + KV_HDR + off, len);
		return 0;
	}
	for (uint64_t i = off / KV_CHUNK; len && i < nchunks(off + len); i++) {
		uint64_t cs = i * KV_CHUNK;
		uint64_t a = off > cs ? off : cs,
			 e = off + len < cs + KV_CHUNK ? off + len : cs + KV_CHUNK;
		int64_t r = get_chunk(b, NULL, id, h, i, s, verify, s);
		if (r < 0)
			return r == BD_AGAIN_LEN ? BD_AGAIN : (int)r;
		if (st)
			XXH3_128bits_update(st, s, (size_t)r);
		memcpy(out + (a - off), s + (a - cs), e - a);
	}
	return 0;
}

static int same_obj(const struct kv_hdr *a, const struct kv_hdr *c)
{
	return a->gen == c->gen && a->size == c->size && a->timestamp == c->timestamp &&
	       !memcmp(a->csum, c->csum, 16);
}

static int do_read(struct dnet_backend *b, const uint8_t *id, uint64_t offset, uint64_t size,
		   uint32_t flags, struct dnet_read_res *res)
{
	struct kv_hdr h, h2;
	const int verify = !(flags & DNET_FLAG_NOCSUM);
	int err;
	memset(res, 0, sizeof(*res));
	res->fd = -1;
	uint8_t *s = malloc(8 + KV_CHUNK + KV_HDR);
	if (!s)
		return DNET_ENOMEM;
	if ((err = get_obj(b, NULL, id, s, &h, 0)))
		goto out;
	if (offset > h.size) {
		err = DNET_ERANGE;
		goto out;
	}
	uint64_t len = h.size - offset;
	if (size && size < len)
		len = size;
	XXH3_state_t *st = NULL;
	if (verify && (h.flags & KV_F_CHUNKED) && !offset && len == h.size) {
		if (!(st = XXH3_createState()) || XXH3_128bits_reset(st) != XXH_OK) {
			XXH3_freeState(st);
			err = DNET_ENOMEM;
			goto out;
		}
	}
	if (len <= KV_BUF_MAX) {
		if (!(res->buf = malloc(len ? len : 1)))
			err = DNET_ENOMEM;
		else
			err = read_into(b, id, &h, s, offset, len, res->buf, verify, st);
	} else {
		/* too big for memory: an unlinked temp file, piece by piece */
		uint8_t *buf = malloc(KV_PIECE);
		int fd = open(b->path, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
		err = !buf ? DNET_ENOMEM : fd < 0 ? dnet_from_errno(errno) : 0;
		for (uint64_t done = 0; !err && done < len;) {
			uint64_t n = len - done < KV_PIECE ? len - done : KV_PIECE;
			if ((err = get_obj(b, NULL, id, s, &h2, 0)))
				break;
			if (!same_obj(&h, &h2)) {
				err = DNET_EAGAIN;
				break;
			}
			if ((err = read_into(b, id, &h, s, offset + done, n, buf, verify, st)))
				break;
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
		free(buf);
		if (!err)
			res->fd = fd;
		else if (fd >= 0)
			close(fd);
	}
	if (!err && st)
		err = check_whole(b, id, &h, st);
	XXH3_freeState(st);
	if (err) {
		free(res->buf);
		res->buf = NULL;
		if (res->fd >= 0)
			close(res->fd);
		res->fd = -1;
		goto out;
	}
	res->len = len;
	info_from_hdr(&res->info, &h);
out:
	free(s);
	return err;
}

/* Reads run without a txn and may still lose a deadlock: retry them too. */
static int bd_read(struct dnet_backend *b, const uint8_t *id, uint64_t offset, uint64_t size,
		   uint32_t flags, struct dnet_read_res *res)
{
	int err = BD_AGAIN;
	for (int i = 0; i < BD_RETRIES && (err == BD_AGAIN || err == DNET_EAGAIN); i++)
		err = do_read(b, id, offset, size, flags, res);
	return err == BD_AGAIN ? DNET_EBUSY : err;
}

/* Header only: a partial get of the first 64 bytes. */
static int get_hdr_only(struct dnet_backend *b, DB_TXN *txn, DBT *key, struct kv_hdr *h)
{
	uint8_t hb[KV_HDR];
	DBT v;
	dbt_out(&v, hb, sizeof(hb));
	v.flags |= DB_DBT_PARTIAL;
	v.dlen = KV_HDR;
	int rc = b->obj->get(b->obj, txn, key, &v, 0);
	if (rc)
		return bd_err(b, rc, "get");
	if (v.size != KV_HDR || hdr_decode(hb, SIZE_MAX, h)) {
		report_corrupt(b, key->data, "bad header");
		return DNET_ECORRUPT;
	}
	return 0;
}

static int bd_lookup(struct dnet_backend *b, const uint8_t *id, struct dnet_obj_info *info)
{
	struct kv_hdr h;
	DBT k;
	int err = BD_AGAIN;
	dbt_in(&k, id, DNET_ID_SIZE);
	for (int i = 0; i < BD_RETRIES && err == BD_AGAIN; i++)
		err = get_hdr_only(b, NULL, &k, &h);
	if (!err)
		info_from_hdr(info, &h);
	return err == BD_AGAIN ? DNET_EBUSY : err;
}

static int bd_del(struct dnet_backend *b, const uint8_t *id)
{
	struct bd_op op;
	memset(&op, 0, sizeof(op));
	memcpy(op.id, id, DNET_ID_SIZE);
	int err = run_txn(b, &op, apply_del);
	if (err)
		return err;
	if (op.gc_gen)
		drop_gen(b, op.id, op.gc_gen, op.gc_cookie);
	count(b, &op);
	if (b->cfg.fsync == DNET_FSYNC_ALWAYS)
		atomic_fetch_add(&b->syncs, 1);
	return b->cfg.fsync == DNET_FSYNC_BATCH ? wait_durable(b) : 0;
}

static int bd_sync(struct dnet_backend *b)
{
	if (b->cfg.fsync == DNET_FSYNC_BATCH)
		return wait_durable(b);
	atomic_fetch_add(&b->syncs, 1);
	int rc = dnet_fault_check(DNET_FAULT_SYNC);
	return bd_err(b, rc ? rc : b->env->log_flush(b->env, NULL), "log flush");
}

/* Batches of keys, each batch in its own read-committed txn; fn runs outside. A
 * batch whose txn loses a deadlock is read again in a new txn. */
static int bd_iterate(struct dnet_backend *b, dnet_iterate_fn fn, void *arg)
{
	struct it {
		uint8_t id[DNET_ID_SIZE];
		struct dnet_obj_info info;
	} *batch = malloc(KV_ITER_BATCH * sizeof(*batch));
	uint8_t last[DNET_ID_SIZE];
	int have_last = 0, ret = 0, tries = 0;
	if (!batch)
		return DNET_ENOMEM;
	for (;;) {
		DB_TXN *txn;
		DBC *c;
		int n = 0, end = 0;
		uint8_t last0[DNET_ID_SIZE];
		int have_last0 = have_last;
		memcpy(last0, last, sizeof(last));
		int rc = b->env->txn_begin(b->env, NULL, &txn, DB_READ_COMMITTED);
		if (!rc && (rc = b->obj->cursor(b->obj, txn, &c, DB_READ_COMMITTED)))
			txn->abort(txn);
		if (rc) {
			ret = bd_err(b, rc, "iterate");
			break;
		}
		uint8_t kb[DNET_ID_SIZE + 8], hb[KV_HDR];
		DBT key, val;
		dbt_out(&key, kb, sizeof(kb));
		dbt_out(&val, hb, sizeof(hb));
		val.flags |= DB_DBT_PARTIAL;
		val.dlen = KV_HDR;
		if (have_last) {
			memcpy(kb, last, DNET_ID_SIZE);
			key.size = DNET_ID_SIZE;
			rc = get_fit(c, &key, &val, DB_SET_RANGE);
			if (!rc && key.size == DNET_ID_SIZE && !memcmp(kb, last, DNET_ID_SIZE))
				rc = get_fit(c, &key, &val, DB_NEXT);
		} else {
			rc = get_fit(c, &key, &val, DB_FIRST);
		}
		while (!rc && n < KV_ITER_BATCH) {
			struct kv_hdr h;
			if (key.size == DNET_ID_SIZE) {
				if (val.size == KV_HDR && !hdr_decode(hb, SIZE_MAX, &h)) {
					memcpy(batch[n].id, kb, DNET_ID_SIZE);
					info_from_hdr(&batch[n].info, &h);
					n++;
				}
				memcpy(last, kb, DNET_ID_SIZE);
				have_last = 1;
			}
			if (n < KV_ITER_BATCH)
				rc = get_fit(c, &key, &val, DB_NEXT);
		}
		/* The cursor first (its close may fail too), then the txn: a txn in which
		 * a call failed is aborted. BDB refuses to commit a deadlock victim
		 * ("BDB0102 previous transaction deadlock return not resolved", EINVAL;
		 * the commit aborts it then), and the commit of this one used to be
		 * made whatever rc was. */
		int crc = c->close(c);
		if (!rc || rc == DB_NOTFOUND)
			rc = crc ? crc : rc;
		if (rc && rc != DB_NOTFOUND)
			txn->abort(txn);
		else if ((crc = txn->commit(txn, 0)))
			rc = crc;
		if (rc == DB_LOCK_DEADLOCK || rc == DB_LOCK_NOTGRANTED) {
			if (++tries < BD_RETRIES) {
				memcpy(last, last0, sizeof(last)); /* redo this batch */
				have_last = have_last0;
				if (tries > 2)
					usleep((useconds_t)(tries * 100));
				continue;
			}
			dnet_log_error("bdb backend %s: iterate still deadlocked after %d tries",
				       b->path, BD_RETRIES);
			ret = DNET_EBUSY;
			break;
		}
		tries = 0; /* the retries are per batch */
		if (rc == DB_NOTFOUND)
			end = 1;
		else if (rc)
			ret = bd_err(b, rc, "iterate");
		for (int i = 0; i < n && !ret; i++)
			ret = fn(arg, batch[i].id, &batch[i].info);
		if (ret || end)
			break;
	}
	free(batch);
	return ret;
}

static int bd_stat(struct dnet_backend *b, struct dnet_backend_stat *st)
{
	struct statvfs vfs;
	memset(st, 0, sizeof(*st));
	st->objects = atomic_load(&b->objects);
	st->bytes = atomic_load(&b->bytes);
	st->syncs = atomic_load(&b->syncs);
	st->synced_writes = atomic_load(&b->synced_writes);
	st->corrupt = atomic_load(&b->corrupt);
	DIR *d = opendir(b->path);
	if (d) {
		struct dirent *de;
		while ((de = readdir(d))) {
			struct stat fs;
			if (fstatat(dirfd(d), de->d_name, &fs, AT_SYMLINK_NOFOLLOW) == 0 &&
			    S_ISREG(fs.st_mode))
				st->disk_bytes += (uint64_t)fs.st_blocks * 512;
		}
		closedir(d);
	}
	if (statvfs(b->path, &vfs) < 0)
		return dnet_from_errno(errno);
	st->disk_free = (uint64_t)vfs.f_bavail * vfs.f_frsize;
	return 0;
}

/* ---- open / close --------------------------------------------------------------- */

static void *maint(void *arg)
{
	struct dnet_backend *b = arg;
	dnet_thread_name("ell-bdb-maint");
	pthread_mutex_lock(&b->q_lock);
	while (!b->q_stop) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += BD_CKPT_S;
		pthread_cond_timedwait(&b->done_cond, &b->q_lock, &ts);
		if (b->q_stop)
			break;
		pthread_mutex_unlock(&b->q_lock);
		/* checkpoint when 16 MiB of log or a minute has passed: logs get removed
		 * (DB_LOG_AUTO_REMOVE) and recovery at open stays short */
		int rc = b->env->txn_checkpoint(b->env, 16 * 1024, 1, 0);
		if (rc)
			bd_err(b, rc, "checkpoint");
		up_sweep(b, 0);
		pthread_mutex_lock(&b->q_lock);
	}
	pthread_mutex_unlock(&b->q_lock);
	return NULL;
}

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

/* Removes the first record of uploads.db, whatever its key (a malformed one). */
static int del_first_upl(struct dnet_backend *b)
{
	DB_TXN *txn;
	DBC *c;
	uint8_t kb[KV_UKEY];
	int rc = b->env->txn_begin(b->env, NULL, &txn, 0);
	if (rc)
		return bd_err(b, rc, "txn begin");
	if (!(rc = b->upl->cursor(b->upl, txn, &c, 0))) {
		DBT key, val;
		memset(&key, 0, sizeof(key));
		memset(&val, 0, sizeof(val));
		key.flags = val.flags = DB_DBT_PARTIAL | DB_DBT_USERMEM; /* no bytes wanted */
		key.data = val.data = kb;
		rc = c->get(c, &key, &val, DB_FIRST | DB_RMW);
		if (!rc)
			rc = c->del(c, 0);
		int crc = c->close(c); /* removes the record: can fail (see del_chunks) */
		if (!rc || rc == DB_NOTFOUND)
			rc = crc ? crc : rc;
	}
	if (rc && rc != DB_NOTFOUND) {
		txn->abort(txn);
		return bd_err(b, rc, "remove upload record");
	}
	return bd_err(b, txn->commit(txn, 0), "commit");
}

/* Uploads a previous run left unfinished are removed; objects and bytes counted. */
static int recover(struct dnet_backend *b)
{
	uint64_t dropped = 0, objs = 0, bytes = 0, t0 = dnet_now_mono_ns();
	DBC *c;
	int rc;
	for (;;) {
		uint8_t kb[KV_UKEY], vb[16];
		DBT key, val;
		dbt_out(&key, kb, sizeof(kb));
		dbt_out(&val, vb, sizeof(vb));
		if ((rc = b->upl->cursor(b->upl, NULL, &c, 0)))
			return bd_err(b, rc, "cursor");
		rc = c->get(c, &key, &val, DB_FIRST);
		c->close(c);
		if (rc == DB_NOTFOUND)
			break;
		if (rc && rc != DB_BUFFER_SMALL)
			return bd_err(b, rc, "recover uploads");
		if (rc || key.size != KV_UKEY || val.size != 16) {
			dnet_log_warn("bdb backend %s: odd upload record, removed", b->path);
			int err = del_first_upl(b);
			if (err)
				return err;
			continue;
		}
		uint64_t cookie = 0;
		for (int i = 0; i < 8; i++)
			cookie = (cookie << 8) | kb[DNET_ID_SIZE + i];
		int err = drop_gen(b, kb, dnet_get_u64(vb), cookie);
		if (err)
			return err;
		dropped++;
	}
	if ((rc = b->obj->cursor(b->obj, NULL, &c, 0)))
		return bd_err(b, rc, "cursor");
	for (;;) {
		uint8_t kb[DNET_ID_SIZE + 8], hb[KV_HDR];
		DBT key, val;
		struct kv_hdr h;
		dbt_out(&key, kb, sizeof(kb));
		dbt_out(&val, hb, sizeof(hb));
		val.flags |= DB_DBT_PARTIAL;
		val.dlen = KV_HDR;
		rc = get_fit(c, &key, &val, DB_NEXT);
		if (rc)
			break;
		if (key.size == DNET_ID_SIZE && val.size == KV_HDR &&
		    !hdr_decode(hb, SIZE_MAX, &h)) {
			objs++;
			bytes += h.size;
		}
	}
	c->close(c);
	if (rc != DB_NOTFOUND)
		return bd_err(b, rc, "scan");
	atomic_store(&b->objects, objs);
	atomic_store(&b->bytes, bytes);
	dnet_log_info("bdb backend %s: %llu objects, %llu bytes, %llu stale uploads removed, "
		      "%.3f s",
		      b->path, (unsigned long long)objs, (unsigned long long)bytes,
		      (unsigned long long)dropped, (double)(dnet_now_mono_ns() - t0) / 1e9);
	return 0;
}

static void bd_errcall(const DB_ENV *env, const char *pfx, const char *msg)
{
	(void)env;
	dnet_log_error("bdb: %s%s%s", pfx ? pfx : "", pfx ? ": " : "", msg);
}

static int open_db(struct dnet_backend *b, DB **out, const char *name)
{
	DB *db;
	int rc = db_create(&db, b->env, 0);
	if (rc)
		return bd_err(b, rc, "db_create");
	rc = db->open(db, NULL, name, NULL, DB_BTREE, DB_CREATE | DB_AUTO_COMMIT | DB_THREAD, 0644);
	if (rc) {
		db->close(db, 0);
		return bd_err(b, rc, name);
	}
	*out = db;
	return 0;
}

static void bd_free(struct dnet_backend *b)
{
	up_sweep(b, 1);
	if (b->obj)
		b->obj->close(b->obj, 0);
	if (b->chunk)
		b->chunk->close(b->chunk, 0);
	if (b->upl)
		b->upl->close(b->upl, 0);
	if (b->env)
		b->env->close(b->env, 0);
	if (b->lockfd >= 0)
		close(b->lockfd);
	pthread_mutex_destroy(&b->up_lock);
	pthread_mutex_destroy(&b->q_lock);
	pthread_cond_destroy(&b->q_cond);
	pthread_cond_destroy(&b->done_cond);
	free(b->path);
	free(b);
}

static int bd_open(const struct dnet_backend_config *cfg, struct dnet_backend **out)
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
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&b->done_cond, &ca);
	pthread_condattr_destroy(&ca);
	pthread_cond_init(&b->q_cond, NULL);
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
		dnet_log_error("bdb backend %s: data directory is in use by another process",
			       b->path);
		goto out_free;
	}
	if ((rc = db_env_create(&b->env, 0))) {
		err = bd_err(b, rc, "db_env_create");
		goto out_log;
	}
	b->env->set_errcall(b->env, bd_errcall);
	u_int32_t lk = 200000;
	/* Log files of 64 MiB (8 MiB buffer), but on a small filesystem 1/32 of it
	 * (at least 256 KiB): a log file is removed only whole, once a checkpoint no
	 * longer needs it, so a big one would pin most of a small disk. */
	uint32_t lg_max = 64u << 20;
	struct statvfs fsv;
	if (statvfs(b->path, &fsv) == 0) {
		uint64_t fs = (uint64_t)fsv.f_blocks * fsv.f_frsize;
		while (lg_max > (256u << 10) && lg_max > fs / 32)
			lg_max /= 2;
	}
	uint32_t lg_bsize = lg_max / 8 < BD_LG_BSIZE ? lg_max / 8 : BD_LG_BSIZE;
	uint64_t cache = BD_CACHE;
	const char *cv = getenv("ELLIPTICS_BDB_CACHE");
	if (cv && (dnet_parse_size(cv, &cache) != 0 || cache < (1u << 20) || cache > (1ull << 31))) {
		dnet_log_warn("bdb backend %s: ELLIPTICS_BDB_CACHE=%s ignored (1M..2G)", b->path, cv);
		cache = BD_CACHE;
	}
	b->reserve = lg_max < (64u << 20) ? 2ull * lg_max : 0;
	b->lg_max = lg_max;
	/* at most a quarter of a log file per txn (1 to 16 chunks): see "bounded txns" */
	b->txn_chunks = lg_max / (4 * KV_CHUNK);
	b->txn_chunks = b->txn_chunks < 1 ? 1 : b->txn_chunks > 16 ? 16 : b->txn_chunks;
	if ((rc = b->env->set_cachesize(b->env, 0, (u_int32_t)cache, 1)) ||
	    (rc = b->env->set_lg_bsize(b->env, lg_bsize)) ||
	    (rc = b->env->set_lg_max(b->env, lg_max)) ||
	    (rc = b->env->set_lk_detect(b->env, DB_LOCK_DEFAULT)) ||
	    (rc = b->env->set_lk_max_locks(b->env, lk)) ||
	    (rc = b->env->set_lk_max_objects(b->env, lk)) ||
	    (rc = b->env->set_lk_max_lockers(b->env, 10000)) ||
	    (rc = b->env->set_tx_max(b->env, 1000)) ||
	    (rc = b->env->log_set_config(b->env, DB_LOG_AUTO_REMOVE, 1)) ||
	    (cfg->fsync != DNET_FSYNC_ALWAYS &&
	     (rc = b->env->set_flags(b->env, DB_TXN_WRITE_NOSYNC, 1)))) {
		err = bd_err(b, rc, "env config");
		goto out_log;
	}
	/* DB_RECOVER: normal recovery on every open (cheap after a clean close, which
	 * checkpoints); DB_PRIVATE: regions in our heap, LOCK keeps other processes out */
	rc = b->env->open(b->env, b->path,
			  DB_CREATE | DB_INIT_TXN | DB_INIT_LOG | DB_INIT_LOCK | DB_INIT_MPOOL |
			      DB_RECOVER | DB_THREAD | DB_PRIVATE,
			  0644);
	if (rc) {
		err = bd_err(b, rc, "env open");
		goto out_log;
	}
	reserve_take(b);
	if ((err = open_db(b, &b->obj, "objects.db")) ||
	    (err = open_db(b, &b->chunk, "chunks.db")) ||
	    (err = open_db(b, &b->upl, "uploads.db")) || (err = recover(b)))
		goto out_log;
	if (cfg->fsync == DNET_FSYNC_BATCH) {
		if (pthread_create(&b->syncer, NULL, syncer, b)) {
			err = DNET_ENOMEM;
			goto out_log;
		}
		b->syncer_started = 1;
	}
	if (pthread_create(&b->maint, NULL, maint, b)) {
		err = DNET_ENOMEM;
		goto out_stop;
	}
	b->maint_started = 1;
	dnet_log_info("bdb backend %s: open, fsync=%s", b->path,
		      dnet_fsync_policy_name(cfg->fsync));
	*out = b;
	return 0;
out_stop:
	pthread_mutex_lock(&b->q_lock);
	b->q_stop = 1;
	pthread_cond_broadcast(&b->q_cond);
	pthread_mutex_unlock(&b->q_lock);
	if (b->syncer_started)
		pthread_join(b->syncer, NULL);
out_log:
	dnet_log_error("bdb backend %s: open failed: %s", cfg->path, dnet_strerror(err));
out_free:
	bd_free(b);
	return err;
}

static void bd_close(struct dnet_backend *b)
{
	if (!b)
		return;
	pthread_mutex_lock(&b->q_lock);
	b->q_stop = 1;
	pthread_cond_broadcast(&b->q_cond);
	pthread_cond_broadcast(&b->done_cond);
	pthread_mutex_unlock(&b->q_lock);
	if (b->syncer_started)
		pthread_join(b->syncer, NULL); /* drains the queue first */
	if (b->maint_started)
		pthread_join(b->maint, NULL);
	b->env->log_flush(b->env, NULL);
	int rc = b->env->txn_checkpoint(b->env, 0, 0, DB_FORCE);
	if (rc)
		bd_err(b, rc, "checkpoint");
	bd_free(b);
}

void dnet_bdb_test_handles(struct dnet_backend *b, DB_ENV **env, DB **objects, DB **chunks)
{
	*env = b->env;
	*objects = b->obj;
	*chunks = b->chunk;
}

const struct dnet_backend_ops dnet_bdb_backend_ops = {
    .name = "bdb",
    .open = bd_open,
    .close = bd_close,
    .write = bd_write,
    .read = bd_read,
    .del = bd_del,
    .lookup = bd_lookup,
    .iterate = bd_iterate,
    .sync = bd_sync,
    .stat = bd_stat,
};
