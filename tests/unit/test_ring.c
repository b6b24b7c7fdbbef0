/* test_ring.c - route table: ownership against brute force, balance, state
 * changes, merge rules, wire round trip and hostile encodings. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/errors.h"
#include "common/id.h"
#include "common/ring.h"

static void rand_id(uint8_t id[DNET_ID_SIZE], unsigned *seed)
{
	for (int i = 0; i < DNET_ID_SIZE; i++)
		id[i] = (uint8_t)rand_r(seed);
}

static void mk_node(struct dnet_ring_node *n, int i, uint32_t nids, unsigned *seed)
{
	memset(n, 0, sizeof(*n));
	rand_id(n->node_id, seed);
	n->addr.family = 4;
	n->addr.port = (uint16_t)(2000 + i);
	n->addr.addr[0] = 127;
	n->addr.addr[3] = 1;
	snprintf(n->zone, sizeof(n->zone), "z%d", i % 3);
	n->incarnation = 1;
	n->state = DNET_NODE_UP;
	n->nids = nids;
	n->ids = malloc((size_t)nids * DNET_ID_SIZE);
	assert_non_null(n->ids);
	for (uint32_t j = 0; j < nids; j++)
		rand_id(n->ids[j], seed);
}

/* The owner by definition: greatest id <= key over live nodes, else the greatest. */
static int brute_owner(const struct dnet_ring *r, const uint8_t key[DNET_ID_SIZE])
{
	int best = -1, top = -1;
	const uint8_t *best_id = NULL, *top_id = NULL;
	for (size_t i = 0; i < r->nnodes; i++) {
		if (r->nodes[i].state == DNET_NODE_LEFT)
			continue;
		for (uint32_t j = 0; j < r->nodes[i].nids; j++) {
			const uint8_t *id = r->nodes[i].ids[j];
			if (memcmp(id, key, DNET_ID_SIZE) <= 0 &&
			    (!best_id || memcmp(id, best_id, DNET_ID_SIZE) > 0)) {
				best_id = id;
				best = (int)i;
			}
			if (!top_id || memcmp(id, top_id, DNET_ID_SIZE) > 0) {
				top_id = id;
				top = (int)i;
			}
		}
	}
	return best >= 0 ? best : top;
}

static void test_owner_matches_brute_force(void **state)
{
	unsigned seed = 7;
	struct dnet_ring r;
	dnet_ring_init(&r);
	assert_int_equal(dnet_ring_owner(&r, (uint8_t[DNET_ID_SIZE]){0}), -1);
	for (int i = 0; i < 10; i++) {
		struct dnet_ring_node n;
		mk_node(&n, i, 8, &seed);
		assert_int_equal(dnet_ring_merge_node(&r, &n), 1);
		free(n.ids);
	}
	assert_int_equal(r.nentries, 80);
	for (int k = 0; k < 5000; k++) {
		uint8_t key[DNET_ID_SIZE];
		rand_id(key, &seed);
		assert_int_equal(dnet_ring_owner(&r, key), brute_owner(&r, key));
	}
	/* Exact boundaries: an entry's own id belongs to it; id-1 to the previous. */
	for (size_t i = 0; i < r.nentries; i++) {
		uint8_t start[DNET_ID_SIZE], end[DNET_ID_SIZE];
		dnet_ring_range(&r, i, start, end);
		assert_int_equal(dnet_ring_owner(&r, start), (int)r.entries[i].node);
		assert_int_equal(dnet_ring_owner(&r, end), (int)r.entries[i].node);
	}
	/* A node leaving hands its ranges to the others. */
	assert_int_equal(dnet_ring_set_state(&r, 3, DNET_NODE_LEFT), 1);
	assert_int_equal(r.nentries, 72);
	for (int k = 0; k < 2000; k++) {
		uint8_t key[DNET_ID_SIZE];
		rand_id(key, &seed);
		int o = dnet_ring_owner(&r, key);
		assert_int_not_equal(o, 3);
		assert_int_equal(o, brute_owner(&r, key));
	}
	/* DOWN keeps ownership (requests fail fast; data is not moved). */
	assert_int_equal(dnet_ring_set_state(&r, 4, DNET_NODE_DOWN), 1);
	assert_int_equal(r.nentries, 72);
	dnet_ring_free(&r);
}

static void test_balance(void **state)
{
	unsigned seed = 99;
	struct dnet_ring r;
	dnet_ring_init(&r);
	for (int i = 0; i < 3; i++) {
		struct dnet_ring_node n;
		mk_node(&n, i, 64, &seed);
		dnet_ring_merge_node(&r, &n);
		free(n.ids);
	}
	double share[3], sum = 0;
	dnet_ring_shares(&r, share);
	for (int i = 0; i < 3; i++) {
		sum += share[i];
		/* 64 random IDs per node: each share within 1/3 +- 0.12 with this seed. */
		assert_true(share[i] > 0.21 && share[i] < 0.45);
	}
	assert_true(sum > 0.999 && sum < 1.001);
	dnet_ring_free(&r);
}

static void test_merge_rules(void **state)
{
	unsigned seed = 3;
	struct dnet_ring r;
	dnet_ring_init(&r);
	struct dnet_ring_node n;
	mk_node(&n, 0, 4, &seed);
	assert_int_equal(dnet_ring_merge_node(&r, &n), 1);
	uint64_t d0 = r.digest;
	assert_int_equal(dnet_ring_merge_node(&r, &n), 0); /* same news: no change */
	n.state = DNET_NODE_DOWN; /* a failure within the same incarnation spreads */
	assert_int_equal(dnet_ring_merge_node(&r, &n), 1);
	assert_true(r.digest != d0);
	n.state = DNET_NODE_UP; /* but cannot be undone by stale news */
	assert_int_equal(dnet_ring_merge_node(&r, &n), 0);
	n.incarnation = 2; /* the node restarted: its own newer word wins */
	assert_int_equal(dnet_ring_merge_node(&r, &n), 1);
	assert_int_equal(r.nodes[0].state, DNET_NODE_UP);
	n.state = 9;
	assert_int_equal(dnet_ring_merge_node(&r, &n), DNET_EINVAL);
	n.state = DNET_NODE_UP;
	n.nids = DNET_RING_MAX_IDS + 1;
	assert_int_equal(dnet_ring_merge_node(&r, &n), DNET_EINVAL);
	free(n.ids);
	dnet_ring_free(&r);
}

/* Two sides of a partition see mirror-image states: their digests must differ, or
 * the heal would go unnoticed. Many random node sets, every one must differ. */
static void test_digest_mirror_states(void **state)
{
	unsigned seed = 5;
	for (int trial = 0; trial < 2000; trial++) {
		struct dnet_ring a, b;
		dnet_ring_init(&a);
		dnet_ring_init(&b);
		for (int i = 0; i < 4; i++) {
			struct dnet_ring_node n;
			mk_node(&n, i, 1, &seed);
			n.state = i < 2 ? DNET_NODE_UP : DNET_NODE_DOWN;
			dnet_ring_merge_node(&a, &n);
			n.state = i < 2 ? DNET_NODE_DOWN : DNET_NODE_UP;
			dnet_ring_merge_node(&b, &n);
			free(n.ids);
		}
		assert_true(a.digest != b.digest);
		dnet_ring_free(&a);
		dnet_ring_free(&b);
	}
}

static void test_wire_roundtrip_and_hostile(void **state)
{
	unsigned seed = 11;
	struct dnet_ring r, d;
	dnet_ring_init(&r);
	for (int i = 0; i < 5; i++) {
		struct dnet_ring_node n;
		mk_node(&n, i, (uint32_t)(i + 1), &seed);
		dnet_ring_merge_node(&r, &n);
		free(n.ids);
	}
	size_t len = dnet_ring_encoded_size(&r);
	uint8_t *buf = malloc(len + 1);
	dnet_ring_encode(&r, buf);
	assert_int_equal(dnet_ring_decode(&d, buf, len), 0);
	assert_int_equal(d.nnodes, 5);
	assert_int_equal(d.nentries, r.nentries);
	assert_true(d.digest == r.digest);
	/* The same nodes learned in another order have the same digest. */
	struct dnet_ring rev;
	dnet_ring_init(&rev);
	for (size_t i = r.nnodes; i-- > 0;)
		dnet_ring_merge_node(&rev, &r.nodes[i]);
	assert_true(rev.digest == r.digest);
	dnet_ring_free(&rev);
	assert_string_equal(d.nodes[2].zone, "z2");
	dnet_ring_free(&d);
	/* Every truncation is rejected, never read past. */
	for (size_t cut = 0; cut < len; cut += 7)
		assert_int_equal(dnet_ring_decode(&d, buf, cut), DNET_EPROTO);
	/* Trailing garbage, a huge node count, a huge id count. */
	assert_int_equal(dnet_ring_decode(&d, buf, len + 1), DNET_EPROTO);
	uint8_t save[4];
	memcpy(save, buf, 4);
	dnet_put_u32(buf, 0xffffffffu);
	assert_int_equal(dnet_ring_decode(&d, buf, len), DNET_EPROTO);
	memcpy(buf, save, 4);
	dnet_put_u32(buf + 4, DNET_MAX_COPIES + 1); /* copies out of range */
	assert_int_equal(dnet_ring_decode(&d, buf, len), DNET_EPROTO);
	memcpy(buf + 4, save, 4);
	dnet_put_u32(buf + 4, 0);
	dnet_put_u32(buf + 8 + DNET_ID_SIZE + DNET_ADDR_WIRE_SIZE + DNET_ZONE_MAX + 12, 0x7fffffffu);
	assert_int_equal(dnet_ring_decode(&d, buf, len), DNET_EPROTO);
	free(buf);
	dnet_ring_free(&r);
}

/* A ring of n nodes with 32 IDs each; zones "z<i % nz>" (nz 0: no zone labels). */
static void mk_ring(struct dnet_ring *r, int n, int nz, unsigned *seed)
{
	dnet_ring_init(r);
	for (int i = 0; i < n; i++) {
		struct dnet_ring_node nd;
		mk_node(&nd, i, 32, seed);
		if (nz)
			snprintf(nd.zone, sizeof(nd.zone), "z%d", i % nz);
		else
			nd.zone[0] = '\0';
		assert_int_equal(dnet_ring_merge_node(r, &nd), 1);
		free(nd.ids);
	}
}

static void test_placement_distinct_nodes(void **state)
{
	(void)state;
	unsigned seed = 11;
	struct dnet_ring r;
	mk_ring(&r, 5, 0, &seed);
	int count[5] = {0};
	for (int k = 0; k < 20000; k++) {
		uint8_t key[DNET_ID_SIZE];
		int out[5], more[5];
		rand_id(key, &seed);
		assert_int_equal(dnet_ring_placement(&r, key, 3, out), 3);
		assert_int_equal(out[0], dnet_ring_owner(&r, key)); /* copy 0: the owner */
		assert_true(out[0] != out[1] && out[0] != out[2] && out[1] != out[2]);
		/* Asking for more gives the same homes, then fallbacks, all distinct. */
		assert_int_equal(dnet_ring_placement(&r, key, 5, more), 5);
		assert_memory_equal(out, more, sizeof(int) * 3);
		for (int i = 0; i < 5; i++)
			for (int j = i + 1; j < 5; j++)
				assert_true(more[i] != more[j]);
		/* More copies than nodes: every node once. */
		int all[8];
		assert_int_equal(dnet_ring_placement(&r, key, 8, all), 5);
		for (int i = 0; i < 3; i++)
			count[out[i]]++;
	}
	/* Copies spread evenly: each node holds about 3/5 of the objects. */
	for (int i = 0; i < 5; i++)
		assert_true(count[i] > 20000 * 3 / 5 * 0.7 && count[i] < 20000 * 3 / 5 * 1.3);
	dnet_ring_free(&r);
}

static void test_placement_zones(void **state)
{
	(void)state;
	unsigned seed = 12;
	struct dnet_ring r;
	/* 6 nodes in 3 zones: 3 copies always in 3 zones. */
	mk_ring(&r, 6, 3, &seed);
	for (int k = 0; k < 5000; k++) {
		uint8_t key[DNET_ID_SIZE];
		int out[3];
		rand_id(key, &seed);
		assert_int_equal(dnet_ring_placement(&r, key, 3, out), 3);
		assert_string_not_equal(r.nodes[out[0]].zone, r.nodes[out[1]].zone);
		assert_string_not_equal(r.nodes[out[0]].zone, r.nodes[out[2]].zone);
		assert_string_not_equal(r.nodes[out[1]].zone, r.nodes[out[2]].zone);
	}
	dnet_ring_free(&r);
	/* 4 nodes in 2 zones: 3 copies on 3 nodes, both zones used. */
	mk_ring(&r, 4, 2, &seed);
	for (int k = 0; k < 5000; k++) {
		uint8_t key[DNET_ID_SIZE];
		int out[3];
		rand_id(key, &seed);
		assert_int_equal(dnet_ring_placement(&r, key, 3, out), 3);
		assert_true(out[0] != out[1] && out[0] != out[2] && out[1] != out[2]);
		assert_string_not_equal(r.nodes[out[0]].zone, r.nodes[out[1]].zone);
	}
	dnet_ring_free(&r);
}

/* A node leaving moves only the copies it held: every object whose copies were all
 * elsewhere keeps exactly its placement. DOWN nodes keep theirs. */
static void test_placement_stability(void **state)
{
	(void)state;
	unsigned seed = 13;
	struct dnet_ring r, down, left;
	mk_ring(&r, 7, 0, &seed);
	assert_int_equal(dnet_ring_copy(&down, &r), 0);
	assert_int_equal(dnet_ring_copy(&left, &r), 0);
	assert_int_equal(dnet_ring_set_state(&down, 2, DNET_NODE_DOWN), 1);
	assert_int_equal(dnet_ring_set_state(&left, 2, DNET_NODE_LEFT), 1);
	int moved = 0, had = 0;
	for (int k = 0; k < 20000; k++) {
		uint8_t key[DNET_ID_SIZE];
		int a[3], b[3], c[3];
		rand_id(key, &seed);
		dnet_ring_placement(&r, key, 3, a);
		dnet_ring_placement(&down, key, 3, b);
		assert_memory_equal(a, b, sizeof(a));
		assert_int_equal(dnet_ring_placement(&left, key, 3, c), 3);
		int held = a[0] == 2 || a[1] == 2 || a[2] == 2;
		assert_true(c[0] != 2 && c[1] != 2 && c[2] != 2);
		if (!held)
			assert_memory_equal(a, c, sizeof(a));
		had += held;
		for (int i = 0; i < 3; i++)
			moved += a[i] != c[i];
	}
	/* About 3/7 of the objects had a copy there; most of those move one copy. */
	assert_true(had > 20000 * 3 / 7 * 0.8 && had < 20000 * 3 / 7 * 1.2);
	assert_true(moved < had * 2);
	dnet_ring_free(&r);
	dnet_ring_free(&down);
	dnet_ring_free(&left);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_owner_matches_brute_force),
		cmocka_unit_test(test_balance),
		cmocka_unit_test(test_merge_rules),
		cmocka_unit_test(test_digest_mirror_states),
		cmocka_unit_test(test_wire_roundtrip_and_hostile),
		cmocka_unit_test(test_placement_distinct_nodes),
		cmocka_unit_test(test_placement_zones),
		cmocka_unit_test(test_placement_stability),
	};
	return cmocka_run_group_tests_name("ring", tests, NULL, NULL);
}
