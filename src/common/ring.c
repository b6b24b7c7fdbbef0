/* ring.c - route table: nodes, their IDs, ownership lookups, wire encoding. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "id.h"
#include "ring.h"

void dnet_ring_init(struct dnet_ring *r)
{
	memset(r, 0, sizeof(*r));
}

void dnet_ring_free(struct dnet_ring *r)
{
	for (size_t i = 0; i < r->nnodes; i++)
		free(r->nodes[i].ids);
	free(r->nodes);
	free(r->entries);
	memset(r, 0, sizeof(*r));
}

static int entry_cmp(const void *a, const void *b)
{
	return memcmp(((const struct dnet_ring_entry *)a)->id, ((const struct dnet_ring_entry *)b)->id,
		      DNET_ID_SIZE);
}

/* FNV-1a over what routing depends on; cheap and good enough to detect change. */
static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
	const uint8_t *b = p;
	for (size_t i = 0; i < n; i++) {
		h ^= b[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

/* murmur3's 64-bit finalizer: a sum of raw FNV values lets small differences
 * cancel out (two nodes flipping state could leave the sum unchanged), a sum of
 * well-mixed values does not. */
uint64_t dnet_mix64(uint64_t h)
{
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdull;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ull;
	h ^= h >> 33;
	return h;
}

static int rebuild(struct dnet_ring *r)
{
	size_t n = 0;
	for (size_t i = 0; i < r->nnodes; i++)
		if (r->nodes[i].state != DNET_NODE_LEFT)
			n += r->nodes[i].nids;
	struct dnet_ring_entry *e = n ? malloc(n * sizeof(*e)) : NULL;
	if (n && !e)
		return DNET_ENOMEM;
	size_t k = 0;
	/* The digest must not depend on the order nodes were learned in, which differs
	 * from node to node: a sum of per-node hashes. */
	uint64_t h = 0, lay = 0;
	for (size_t i = 0; i < r->nnodes; i++) {
		const struct dnet_ring_node *nd = &r->nodes[i];
		uint64_t nh = 0xcbf29ce484222325ull;
		nh = fnv(nh, nd->node_id, DNET_ID_SIZE);
		nh = fnv(nh, &nd->incarnation, sizeof(nd->incarnation));
		nh = fnv(nh, &nd->state, sizeof(nd->state));
		h += dnet_mix64(nh);
		if (nd->state == DNET_NODE_LEFT)
			continue;
		lay += dnet_mix64(fnv(0xcbf29ce484222325ull, nd->node_id, DNET_ID_SIZE));
		for (uint32_t j = 0; j < nd->nids; j++) {
			memcpy(e[k].id, nd->ids[j], DNET_ID_SIZE);
			e[k].node = (uint32_t)i;
			k++;
		}
	}
	if (n)
		qsort(e, n, sizeof(*e), entry_cmp);
	free(r->entries);
	r->entries = e;
	r->nentries = n;
	r->digest = h;
	r->layout = lay;
	return 0;
}

int dnet_ring_find(const struct dnet_ring *r, const uint8_t node_id[DNET_ID_SIZE])
{
	for (size_t i = 0; i < r->nnodes; i++)
		if (memcmp(r->nodes[i].node_id, node_id, DNET_ID_SIZE) == 0)
			return (int)i;
	return -1;
}

static int copy_node(struct dnet_ring_node *dst, const struct dnet_ring_node *src)
{
	uint8_t(*ids)[DNET_ID_SIZE] = NULL;
	if (src->nids) {
		ids = malloc((size_t)src->nids * DNET_ID_SIZE);
		if (!ids)
			return DNET_ENOMEM;
		memcpy(ids, src->ids, (size_t)src->nids * DNET_ID_SIZE);
	}
	*dst = *src;
	dst->ids = ids;
	dst->zone[DNET_ZONE_MAX - 1] = '\0';
	return 0;
}

/* Merge without rebuilding the sorted entries; returns 1 if changed. */
static int merge(struct dnet_ring *r, const struct dnet_ring_node *n)
{
	if (n->nids > DNET_RING_MAX_IDS || n->state < DNET_NODE_UP || n->state > DNET_NODE_LEFT)
		return DNET_EINVAL;
	int idx = dnet_ring_find(r, n->node_id);
	if (idx >= 0) {
		struct dnet_ring_node *cur = &r->nodes[idx];
		int newer = n->incarnation > cur->incarnation ||
			    (n->incarnation == cur->incarnation && n->state > cur->state);
		if (!newer)
			return 0;
		struct dnet_ring_node tmp;
		int err = copy_node(&tmp, n);
		if (err)
			return err;
		free(cur->ids);
		*cur = tmp;
	} else {
		if (r->nnodes >= DNET_RING_MAX_NODES)
			return DNET_ETOOBIG;
		if (r->nnodes == r->cap) {
			size_t cap = r->cap ? r->cap * 2 : 8;
			struct dnet_ring_node *nn = realloc(r->nodes, cap * sizeof(*nn));
			if (!nn)
				return DNET_ENOMEM;
			r->nodes = nn;
			r->cap = cap;
		}
		int err = copy_node(&r->nodes[r->nnodes], n);
		if (err)
			return err;
		r->nnodes++;
	}
	return 1;
}

int dnet_ring_merge_node(struct dnet_ring *r, const struct dnet_ring_node *n)
{
	int changed = merge(r, n);
	if (changed <= 0)
		return changed;
	int err = rebuild(r);
	return err ? err : 1;
}

int dnet_ring_set_state(struct dnet_ring *r, int idx, uint32_t state)
{
	if (idx < 0 || (size_t)idx >= r->nnodes || r->nodes[idx].state == state)
		return 0;
	r->nodes[idx].state = state;
	int err = rebuild(r);
	return err ? err : 1;
}

int dnet_ring_copy(struct dnet_ring *dst, const struct dnet_ring *src)
{
	dnet_ring_init(dst);
	for (size_t i = 0; i < src->nnodes; i++) {
		int err = merge(dst, &src->nodes[i]);
		if (err < 0) {
			dnet_ring_free(dst);
			return err;
		}
	}
	int err = rebuild(dst);
	if (err)
		dnet_ring_free(dst);
	else
		dst->copies = src->copies;
	return err;
}

/* The owning entry of key: the greatest id <= key, found by binary search for the
 * first id > key (index 0 wraps around to the last entry). nentries must be > 0. */
static size_t owning_entry(const struct dnet_ring *r, const uint8_t key[DNET_ID_SIZE])
{
	size_t lo = 0, hi = r->nentries;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (memcmp(r->entries[mid].id, key, DNET_ID_SIZE) <= 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo == 0 ? r->nentries - 1 : lo - 1;
}

int dnet_ring_owner_without(const struct dnet_ring *r, const uint8_t key[DNET_ID_SIZE], int skip)
{
	if (!r->nentries)
		return -1;
	/* Walk down (wrapping) from the owning entry to the first one not skip's. */
	size_t i = owning_entry(r, key);
	for (size_t n = 0; n < r->nentries; n++) {
		if ((int)r->entries[i].node != skip)
			return (int)r->entries[i].node;
		i = i == 0 ? r->nentries - 1 : i - 1;
	}
	return -1;
}

int dnet_ring_owner(const struct dnet_ring *r, const uint8_t key[DNET_ID_SIZE])
{
	return dnet_ring_owner_without(r, key, -1);
}

void dnet_copy_id(const uint8_t id[DNET_ID_SIZE], int copy, uint8_t out[DNET_ID_SIZE])
{
	if (copy == 0) {
		memcpy(out, id, DNET_ID_SIZE);
		return;
	}
	uint8_t buf[DNET_ID_SIZE + 5];
	memcpy(buf, id, DNET_ID_SIZE);
	memcpy(buf + DNET_ID_SIZE, "copy", 4);
	buf[DNET_ID_SIZE + 4] = (uint8_t)copy;
	dnet_id_from_key(out, buf, sizeof(buf));
}

void dnet_copy_name(int copy, char *out, size_t len)
{
	if (copy == 0)
		snprintf(out, len, "sha512");
	else
		snprintf(out, len, "sha512+copy%d", copy);
}

static int zone_taken(const struct dnet_ring *r, const int *chosen, int k, uint32_t node)
{
	const char *z = r->nodes[node].zone;
	if (!z[0])
		return 0;
	for (int j = 0; j < k; j++)
		if (!strcmp(r->nodes[chosen[j]].zone, z))
			return 1;
	return 0;
}

static int node_taken(const int *chosen, int k, uint32_t node)
{
	for (int j = 0; j < k; j++)
		if (chosen[j] == (int)node)
			return 1;
	return 0;
}

int dnet_ring_placement(const struct dnet_ring *r, const uint8_t id[DNET_ID_SIZE], int n,
			int *out)
{
	int k = 0;
	if (!r->nentries || n <= 0)
		return 0;
	if (n > DNET_MAX_COPIES)
		n = DNET_MAX_COPIES;
	for (int copy = 0; copy < n; copy++) {
		uint8_t cid[DNET_ID_SIZE];
		dnet_copy_id(id, copy, cid);
		size_t i = owning_entry(r, cid);
		int pick = -1, spare = -1;
		for (size_t step = 0; step < r->nentries; step++) {
			uint32_t node = r->entries[i].node;
			if (!node_taken(out, k, node)) {
				if (!zone_taken(r, out, k, node)) {
					pick = (int)node;
					break;
				}
				if (spare < 0)
					spare = (int)node;
			}
			i = i == 0 ? r->nentries - 1 : i - 1;
		}
		if (pick < 0)
			pick = spare;
		if (pick < 0)
			break; /* every node holds a copy already */
		out[k++] = pick;
	}
	return k;
}

/* out = id - 1 (mod 2^512). */
static void id_dec(uint8_t out[DNET_ID_SIZE], const uint8_t id[DNET_ID_SIZE])
{
	memcpy(out, id, DNET_ID_SIZE);
	for (int i = DNET_ID_SIZE - 1; i >= 0; i--)
		if (out[i]-- != 0)
			break;
}

void dnet_ring_range(const struct dnet_ring *r, size_t i, uint8_t start[DNET_ID_SIZE],
		     uint8_t end[DNET_ID_SIZE])
{
	memcpy(start, r->entries[i].id, DNET_ID_SIZE);
	id_dec(end, r->entries[(i + 1) % r->nentries].id);
}

/* The first 8 bytes of an ID as a fraction of the ring: plenty of precision. */
static double id_pos(const uint8_t id[DNET_ID_SIZE])
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = (v << 8) | id[i];
	return (double)v / 18446744073709551616.0;
}

void dnet_ring_shares(const struct dnet_ring *r, double *share)
{
	for (size_t i = 0; i < r->nnodes; i++)
		share[i] = 0;
	for (size_t i = 0; i < r->nentries; i++) {
		double a = id_pos(r->entries[i].id);
		double b = id_pos(r->entries[(i + 1) % r->nentries].id);
		double len = b - a;
		if (len <= 0)
			len += 1.0;
		if (r->nentries == 1)
			len = 1.0;
		share[r->entries[i].node] += len;
	}
}

#define NODE_FIXED (DNET_ID_SIZE + DNET_ADDR_WIRE_SIZE + DNET_ZONE_MAX + 8 + 4 + 4)

size_t dnet_ring_encoded_size(const struct dnet_ring *r)
{
	size_t n = 8;
	for (size_t i = 0; i < r->nnodes; i++)
		n += NODE_FIXED + (size_t)r->nodes[i].nids * DNET_ID_SIZE;
	return n;
}

void dnet_ring_encode(const struct dnet_ring *r, uint8_t *out)
{
	uint8_t *p = out;
	dnet_put_u32(p, (uint32_t)r->nnodes);
	dnet_put_u32(p + 4, r->copies);
	p += 8;
	for (size_t i = 0; i < r->nnodes; i++) {
		const struct dnet_ring_node *n = &r->nodes[i];
		memcpy(p, n->node_id, DNET_ID_SIZE);
		p += DNET_ID_SIZE;
		dnet_addr_encode(p, &n->addr);
		p += DNET_ADDR_WIRE_SIZE;
		memset(p, 0, DNET_ZONE_MAX);
		memcpy(p, n->zone, strnlen(n->zone, DNET_ZONE_MAX - 1));
		p += DNET_ZONE_MAX;
		dnet_put_u64(p, n->incarnation);
		dnet_put_u32(p + 8, n->state);
		dnet_put_u32(p + 12, n->nids);
		p += 16;
		memcpy(p, n->ids, (size_t)n->nids * DNET_ID_SIZE);
		p += (size_t)n->nids * DNET_ID_SIZE;
	}
}

int dnet_ring_decode(struct dnet_ring *r, const uint8_t *buf, size_t len)
{
	dnet_ring_init(r);
	if (len < 8)
		return DNET_EPROTO;
	uint32_t count = dnet_get_u32(buf);
	uint32_t copies = dnet_get_u32(buf + 4);
	if (count > DNET_RING_MAX_NODES || copies > DNET_MAX_COPIES)
		return DNET_EPROTO;
	size_t off = 8;
	for (uint32_t i = 0; i < count; i++) {
		if (len - off < NODE_FIXED)
			goto bad;
		struct dnet_ring_node n;
		memset(&n, 0, sizeof(n));
		const uint8_t *p = buf + off;
		memcpy(n.node_id, p, DNET_ID_SIZE);
		p += DNET_ID_SIZE;
		if (dnet_addr_decode(p, DNET_ADDR_WIRE_SIZE, &n.addr) != 0)
			goto bad;
		p += DNET_ADDR_WIRE_SIZE;
		memcpy(n.zone, p, DNET_ZONE_MAX);
		n.zone[DNET_ZONE_MAX - 1] = '\0';
		p += DNET_ZONE_MAX;
		n.incarnation = dnet_get_u64(p);
		n.state = dnet_get_u32(p + 8);
		n.nids = dnet_get_u32(p + 12);
		off += NODE_FIXED;
		if (n.nids > DNET_RING_MAX_IDS || (len - off) / DNET_ID_SIZE < n.nids)
			goto bad;
		n.ids = (uint8_t(*)[DNET_ID_SIZE])(uintptr_t)(buf + off);
		off += (size_t)n.nids * DNET_ID_SIZE;
		if (merge(r, &n) < 0)
			goto bad;
	}
	if (off != len || rebuild(r) != 0)
		goto bad;
	r->copies = copies;
	return 0;
bad:
	dnet_ring_free(r);
	return DNET_EPROTO;
}
