/* fuzz_kv.h - for the key-value engines (lmdb, bdb), which keep one value layout:
 * "obj" id[64] -> 64-byte header [+ inline data], "chunk" id[64] gen idx -> u64
 * checksum + data, "upload" id[64] cookie -> u64 gen, u64 created. Each container
 * item becomes one record: slot % 3 picks the table; the key is the item's first
 * bytes (64, 80 or 72 of them: its table's key size; with slot bit 0x80, an odd size
 * ((slot >> 2) & 31) * 4 instead), the rest is the value. The target writes the records
 * with the database library itself (so the database files are sound and only our
 * values are hostile), then runs fz_workout(). */
#ifndef FUZZ_KV_H
#define FUZZ_KV_H

#include "fuzz_store.h"

static const size_t kv_klen[3] = {DNET_ID_SIZE, DNET_ID_SIZE + 16, DNET_ID_SIZE + 8};

/* The key and value of item it: key points at a buffer of *kl bytes. */
static inline void kv_split(const struct fz_item *it, uint8_t kbuf[128], size_t *kl,
			    const uint8_t **v, size_t *vl, int *db)
{
	*db = (it->slot & 3) % 3;
	size_t want = (it->slot & 0x80) ? ((size_t)it->slot >> 2 & 31) * 4 : kv_klen[*db];
	if (!want)
		want = 1;
	memset(kbuf, 0, 128);
	size_t take = it->len < want ? it->len : want;
	if (take)
		memcpy(kbuf, it->p, take);
	*kl = want;
	*v = it->p ? it->p + take : kbuf; /* no bytes at all: an empty value */
	*vl = it->len - take;
}

#ifdef DNET_FUZZ_STANDALONE
static inline void kv_seed_item(FILE *f, int db, const void *k, size_t kl, const void *v, size_t vl)
{
	uint8_t *p = malloc(kl + vl + 1);
	if (!p)
		abort();
	memcpy(p, k, kl);
	if (vl)
		memcpy(p + kl, v, vl);
	fz_pack_item(f, (uint8_t)db, p, kl + vl);
	free(p);
}

static inline void kv_fill(const struct dnet_backend_ops *ops, struct dnet_backend *b)
{
	uint8_t id[DNET_ID_SIZE];
	static uint8_t big[300000]; /* chunked: > 256 KiB */
	static const char small[] = "a small inline object";
	fz_known_id(0, id);
	fz_write(ops, b, id, 0, small, sizeof(small));
	fz_known_id(1, id);
	fz_write(ops, b, id, 0, "", 0);
	fz_known_id(2, id);
	fz_write(ops, b, id, 0, big, sizeof(big));
	fz_known_id(3, id);
	fz_write(ops, b, id, 0, small, 5);
	fz_write(ops, b, id, 2, "XY", 2); /* offset update */
}
#endif

#endif
