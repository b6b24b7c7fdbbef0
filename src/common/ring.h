/* ring.h - the ID ring and its route table: which node owns which range of object
 * IDs. Shared by the server (membership, forwarding, data movement) and the client
 * (one-hop routing). Pure data structure: no I/O, no locking (callers lock).
 *
 * Ownership rule: every node has several IDs on the ring; an ID starts a range
 * that runs up to (not including) the next ID on the ring. A key belongs to the
 * node whose ID is the greatest one <= the key's ID; keys below the smallest ID
 * wrap around to the greatest. */
#ifndef DNET_RING_H
#define DNET_RING_H

#include <stddef.h>
#include <stdint.h>

#include "proto.h"

#define DNET_RING_MAX_NODES 4096
#define DNET_RING_MAX_IDS 256 /* per node */
#define DNET_ZONE_MAX 32

enum dnet_node_state {
	DNET_NODE_UP = 1,
	DNET_NODE_DOWN = 2, /* unreachable: keeps its ranges, requests to it fail fast */
	DNET_NODE_LEFT = 3, /* removed for good: its ranges go to the others */
};

struct dnet_ring_node {
	uint8_t node_id[DNET_ID_SIZE];
	struct dnet_addr_wire addr;
	char zone[DNET_ZONE_MAX]; /* NUL-terminated, may be empty */
	uint64_t incarnation;     /* the node's own version of its entry: newest wins */
	uint32_t state;
	uint32_t nids;
	uint8_t (*ids)[DNET_ID_SIZE];
};

struct dnet_ring_entry {
	uint8_t id[DNET_ID_SIZE];
	uint32_t node; /* index into nodes */
};

struct dnet_ring {
	struct dnet_ring_node *nodes;
	size_t nnodes, cap;
	struct dnet_ring_entry *entries; /* sorted by id; nodes that are not LEFT */
	size_t nentries;
	uint64_t digest; /* changes whenever membership or a state changes */
	uint64_t layout; /* changes only when ownership can change (a node added or LEFT) */
	uint32_t copies; /* copies per object the sender is configured for (0: not said) */
};

/* murmur3's 64-bit finalizer: a well-mixed hash of v (sums of them stay order-free
 * digests without small differences cancelling out). */
uint64_t dnet_mix64(uint64_t v);

void dnet_ring_init(struct dnet_ring *r);
void dnet_ring_free(struct dnet_ring *r);
/* Deep copy (for handing a consistent snapshot to another thread). */
int dnet_ring_copy(struct dnet_ring *dst, const struct dnet_ring *src);

/* Insert a node, or update it if it is known (by node_id) and n->incarnation is
 * newer, or equal with a "worse" state (UP < DOWN < LEFT: news of a failure
 * spreads within one incarnation). Copies n. Returns 1 if the ring changed, 0 if
 * not, or DNET_E*. */
int dnet_ring_merge_node(struct dnet_ring *r, const struct dnet_ring_node *n);
/* Index of a node by node_id, or -1. */
int dnet_ring_find(const struct dnet_ring *r, const uint8_t node_id[DNET_ID_SIZE]);
/* Set a node's state locally (does not bump incarnation). Returns 1 if changed. */
int dnet_ring_set_state(struct dnet_ring *r, int idx, uint32_t state);

/* Node index owning key, or -1 if the ring is empty. */
int dnet_ring_owner(const struct dnet_ring *r, const uint8_t key[DNET_ID_SIZE]);
/* Owner of key if node `skip` had no IDs (the node that would own it without
 * skip), or -1 if no other node has IDs. skip -1: the owner, as dnet_ring_owner. */
int dnet_ring_owner_without(const struct dnet_ring *r, const uint8_t key[DNET_ID_SIZE], int skip);
/* The range [start, end] (inclusive) of entry i: start = its id, end = next id - 1. */
void dnet_ring_range(const struct dnet_ring *r, size_t i, uint8_t start[DNET_ID_SIZE],
		     uint8_t end[DNET_ID_SIZE]);
/* Fraction of the ID space each node owns, into share[nnodes] (sums to 1). */
void dnet_ring_shares(const struct dnet_ring *r, double *share);

/* Copies: the transformation functions. Copy i of an object lives at the owner of
 * transform i of its ID: T0 is the ID itself ("sha512"), Ti = SHA-512(ID || "copy"
 * || i) ("sha512+copy<i>"). Copies must sit on distinct nodes, and on distinct zones
 * while unused zones remain (nodes without a zone label count as zones of their
 * own): when the owner is taken, the walk goes on to the owners of the ranges
 * below it, as ranges pass on when a node leaves. Nodes that are DOWN keep their
 * place (their copies wait for them; see docs/replication.md); LEFT ones do not. */
#define DNET_MAX_COPIES 16
void dnet_copy_id(const uint8_t id[DNET_ID_SIZE], int copy, uint8_t out[DNET_ID_SIZE]);
/* Name of transform i ("sha512", "sha512+copy1", ...) into out. */
void dnet_copy_name(int copy, char *out, size_t len);
/* The nodes holding copies 0..n-1 of id, into out[n] (node indices); returns how
 * many there are: n, or fewer when the ring has fewer nodes (not LEFT). Asking for
 * more than the configured copies gives the fallback nodes, in order, after the
 * homes (the first ones do not depend on n). */
int dnet_ring_placement(const struct dnet_ring *r, const uint8_t id[DNET_ID_SIZE], int n,
			int *out);

/* Wire form: u32 count, u32 copies, then per node: node_id[64], addr[24], zone[32],
 * u64 incarnation, u32 state, u32 nids, ids[nids][64]. Decode bounds every count
 * and length against the buffer and the limits above. */
size_t dnet_ring_encoded_size(const struct dnet_ring *r);
void dnet_ring_encode(const struct dnet_ring *r, uint8_t *out);
/* Decodes into an empty ring (merge_node per node). Returns 0 or DNET_EPROTO. */
int dnet_ring_decode(struct dnet_ring *r, const uint8_t *buf, size_t len);

#endif
