/* route.c - the client's view of the ring: the route table fetched from a node
 * (ROUTES), the nodes it names (each with its own connections), and the choice of
 * where a request goes: keyed requests to the owner of their ID (one hop), the rest
 * to the bootstrap node (the first -r remote that answers).
 *
 * Staleness: the table is refreshed in the background when older than
 * DNET_ROUTES_TTL_NS (on the next request), when a node answers NOTOWNER (from
 * that node), and when a ring node's connection breaks. A node the table marks
 * DOWN fails at once (DNET_ENODEDOWN) while the table is fresh; with an old table
 * it is tried. A ring whose only owner is the bootstrap node is routed exactly as
 * without a ring: everything to the bootstrap node's connections. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_int.h"
#include "common/errors.h"
#include "common/util.h"

static const uint8_t zero_id[DNET_ID_SIZE];

/* --- nodes --------------------------------------------------------------- */

static struct dnet_node *node_add(dnet_client *c)
{
	struct dnet_node **nn = realloc(c->nodes, (size_t)(c->nnodes + 1) * sizeof(*nn));
	if (!nn)
		return NULL;
	c->nodes = nn;
	struct dnet_node *n = calloc(1, sizeof(*n));
	if (!n)
		return NULL;
	nn[c->nnodes++] = n;
	return n;
}

struct dnet_node *dnet__boot_node(dnet_client *c)
{
	if (c->boot)
		return c->boot;
	struct dnet_node *n = node_add(c);
	if (!n)
		return NULL;
	n->is_boot = 1;
	snprintf(n->name, sizeof(n->name), "%s", c->nremotes ? c->remotes[c->cur_remote] : "");
	c->boot = n;
	return n;
}

static int addr_eq(const struct dnet_addr_wire *a, const struct dnet_addr_wire *b)
{
	return a->family == b->family && a->port == b->port &&
	       !memcmp(a->addr, b->addr, a->family == 4 ? 4 : 16);
}

struct dnet_node *dnet__node_by_addr(dnet_client *c, const struct dnet_addr_wire *a,
				     const char *via)
{
	for (int i = 0; i < c->nnodes; i++) {
		struct dnet_node *n = c->nodes[i];
		if (n->have_addr && addr_eq(&n->addr, a))
			return n;
	}
	struct dnet_node *n = node_add(c);
	if (!n)
		return NULL;
	n->addr = *a;
	n->have_addr = 1;
	dnet__addr_wire_str(a, via, n->name, sizeof(n->name));
	return n;
}

/* --- the table ----------------------------------------------------------- */

void dnet__routes_free(dnet_client *c)
{
	dnet_ring_free(&c->ring);
	free(c->ring_map);
	c->ring_map = NULL;
	for (int i = 0; i < c->nnodes; i++) {
		free(c->nodes[i]->conns);
		free(c->nodes[i]);
	}
	free(c->nodes);
	c->nodes = NULL;
	c->nnodes = 0;
	c->boot = NULL;
}

/* Install a table received from node `src`. */
static int routes_install(dnet_client *c, const uint8_t *buf, size_t len, struct dnet_node *src)
{
	struct dnet_ring nr;
	if (!buf || dnet_ring_decode(&nr, buf, len))
		return DNET_EPROTO;
	if (!nr.nentries) {
		dnet_ring_free(&nr);
		return DNET_EPROTO;
	}
	struct dnet_node **map = calloc(nr.nnodes, sizeof(*map));
	if (!map) {
		dnet_ring_free(&nr);
		return DNET_ENOMEM;
	}
	int single = 1;
	for (size_t i = 1; i < nr.nentries; i++)
		if (nr.entries[i].node != nr.entries[0].node)
			single = 0;
	dnet_ring_free(&c->ring);
	free(c->ring_map);
	c->ring = nr;
	c->ring_map = map;
	/* One owner, and we asked the bootstrap node: that owner is the node we talk to
	 * (whatever address it advertises). */
	c->ring_single = single && src && src->is_boot;
	if (single && src && src->is_boot)
		map[c->ring.entries[0].node] = src;
	c->ring_state = DNET_RING_HAVE;
	c->ring_time = dnet_now_mono_ns();
	return 0;
}

static struct dnet_node *ring_node(dnet_client *c, int o)
{
	struct dnet_node *n = c->ring_map[o];
	if (!n) {
		const char *via = c->boot ? c->boot->name : NULL;
		n = c->ring_map[o] = dnet__node_by_addr(c, &c->ring.nodes[o].addr, via);
	}
	return n;
}

static struct dnet_req *routes_req(dnet_client *c)
{
	struct dnet_req *r = dnet__req_new(c);
	if (!r)
		return NULL;
	r->cmd = DNET_CMD_ROUTES;
	memcpy(r->id, zero_id, DNET_ID_SIZE);
	return r;
}

int dnet__routes_fetch(dnet_client *c)
{
	c->ring_time = dnet_now_mono_ns();
	struct dnet_node *b = dnet__boot_node(c);
	int err;
	struct dnet_req *r = b ? routes_req(c) : NULL;
	if (!r) {
		err = DNET_ENOMEM;
		goto out;
	}
	struct dnet_conn *conn = dnet__node_conn(c, b, zero_id, &err);
	if (conn) {
		r->flags |= DNET_REQ_SYNC;
		err = dnet__submit(c, conn, r, DNET_FLAG_NEED_ACK);
		if (!err) {
			dnet__wait(c, r);
			err = r->status;
			if (!err)
				err = routes_install(c, r->rbuf, r->rgot, b);
		}
	}
	dnet__req_free(c, r);
out:
	/* No table (an old node, a broken reply): requests go to the bootstrap node,
	 * and NOTOWNER redirects still lead to owners. Tried again after the TTL. */
	if (err && c->ring_state == DNET_RING_UNKNOWN)
		c->ring_state = DNET_RING_NONE;
	return err;
}

static void routes_done(struct dnet_req *r)
{
	dnet_client *c = r->hook_arg;
	if (c->ring_req == r)
		c->ring_req = NULL;
	int err = r->status;
	if (!err)
		err = routes_install(c, r->rbuf, r->rgot, r->conn ? r->conn->owner_node : NULL);
	if (err)
		c->ring_src++; /* ask someone else next time */
	dnet__req_free(c, r);
}

/* A node to refresh the table from: the bootstrap node, or after it failed, the
 * ring's UP nodes in turn. */
static struct dnet_node *refresh_source(dnet_client *c)
{
	if (!c->ring_src || c->ring_state != DNET_RING_HAVE || !c->ring.nnodes)
		return dnet__boot_node(c);
	size_t nn = c->ring.nnodes;
	for (size_t k = 0; k < nn; k++) {
		size_t o = (c->ring_src + k) % nn;
		if (c->ring.nodes[o].state == DNET_NODE_UP)
			return ring_node(c, (int)o);
	}
	return dnet__boot_node(c);
}

void dnet__routes_refresh(dnet_client *c, struct dnet_node *from)
{
	if (c->ring_req || c->ring_state == DNET_RING_UNKNOWN)
		return;
	uint64_t now = dnet_now_mono_ns();
	/* Never more than ten a second, whatever triggers them. */
	if (now - c->ring_time < 100000000ull)
		return;
	c->ring_time = now;
	if (!from)
		from = refresh_source(c);
	if (!from)
		return;
	struct dnet_req *r = routes_req(c);
	if (!r)
		return;
	int err;
	struct dnet_conn *conn = dnet__node_conn(c, from, zero_id, &err);
	r->hook = routes_done;
	r->hook_arg = c;
	if (!conn || dnet__submit(c, conn, r, DNET_FLAG_NEED_ACK)) {
		c->ring_src++;
		dnet__req_free(c, r);
		return;
	}
	c->ring_req = r;
}

/* --- where requests go --------------------------------------------------- */

static struct dnet_node *route(dnet_client *c, const uint8_t *id, int *err)
{
	uint64_t now = 0;
	if (c->ring_state == DNET_RING_UNKNOWN) {
		dnet__routes_fetch(c);
	} else if (!c->ring_req) {
		now = dnet__now(c);
		if (dnet_ns_since(now, c->ring_time) > DNET_ROUTES_TTL_NS)
			dnet__routes_refresh(c, NULL);
	}
	if (c->ring_state != DNET_RING_HAVE || c->ring_single)
		return dnet__boot_node(c);
	int o = dnet_ring_owner(&c->ring, id);
	if (o < 0)
		return dnet__boot_node(c);
	struct dnet_node *n = ring_node(c, o);
	if (!n) {
		*err = DNET_ENOMEM;
		return NULL;
	}
	if (c->ring.nodes[o].state == DNET_NODE_DOWN) {
		if (!now)
			now = dnet__now(c);
		/* A fresh table says it is down: don't wait for a connect to time out. */
		if (dnet_ns_since(now, c->ring_time) <= DNET_ROUTES_TTL_NS) {
			c->last = n;
			*err = DNET_ENODEDOWN;
			return NULL;
		}
	}
	return n;
}

int dnet__plan(dnet_client *c, const uint8_t *id, struct dnet_plan *p)
{
	int err = 0;
	c->nlast_copies = 0;
	route(c, id, &err); /* fetches or refreshes the table as needed */
	if (c->ring_state != DNET_RING_HAVE || c->ring_single || c->ring.copies <= 1)
		return 0;
	int idx[DNET_PLAN_MAX];
	int homes = (int)c->ring.copies;
	int n = dnet_ring_placement(&c->ring, id, homes + 4, idx);
	if (n < 2)
		return 0;
	int fresh = dnet_ns_since(dnet__now(c), c->ring_time) <= DNET_ROUTES_TTL_NS;
	p->n = 0;
	p->homes = homes < n ? homes : n;
	for (int i = 0; i < n; i++) {
		struct dnet_node *nd = ring_node(c, idx[i]);
		if (!nd)
			return 0;
		p->node[p->n] = nd;
		p->down[p->n] = fresh && c->ring.nodes[idx[i]].state == DNET_NODE_DOWN;
		p->n++;
	}
	return 1;
}

struct dnet_conn *dnet__pick_conn(dnet_client *c, struct dnet_req *r, int *err)
{
	struct dnet_node *n;
	if (r->target)
		n = r->target;
	else if (r->reroute & DNET_RR_KEYED)
		n = route(c, r->id, err);
	else if (!(n = dnet__boot_node(c)))
		*err = DNET_ENOMEM;
	if (!n)
		return NULL;
	c->last = n;
	return dnet__node_conn(c, n, r->id, err);
}

/* --- public: the table for tools ----------------------------------------- */

static void id_dec(uint8_t out[DNET_ID_SIZE], const uint8_t id[DNET_ID_SIZE])
{
	memcpy(out, id, DNET_ID_SIZE);
	for (int i = DNET_ID_SIZE - 1; i >= 0; i--)
		if (out[i]-- != 0)
			break;
}

int dnet_routes(dnet_client *c, struct dnet_route **routes, size_t *count)
{
	*routes = NULL;
	*count = 0;
	int err = dnet__routes_fetch(c);
	if (err)
		return err;
	const struct dnet_ring *g = &c->ring;
	size_t m = g->nentries;
	struct dnet_route *out = calloc(m + 1, sizeof(*out));
	if (!out)
		return DNET_ENOMEM;
	const char *via = c->boot ? c->boot->name : NULL;
	size_t k = 0;
	/* [0, first id) belongs to the owner of the last id (the ring wraps). */
	for (size_t i = 0; i <= m; i++) {
		const uint8_t *start;
		uint32_t node;
		if (i == 0) {
			if (!memcmp(g->entries[0].id, zero_id, DNET_ID_SIZE))
				continue;
			start = zero_id;
			node = g->entries[m - 1].node;
		} else {
			start = g->entries[i - 1].id;
			node = g->entries[i - 1].node;
		}
		if (k && out[k - 1].state == (int)node) /* same owner: one range */
			continue;
		memcpy(out[k].start, start, DNET_ID_SIZE);
		out[k].state = (int)node; /* node index for now */
		k++;
	}
	for (size_t i = 0; i < k; i++) {
		if (i + 1 < k)
			id_dec(out[i].end, out[i + 1].start);
		else
			memset(out[i].end, 0xff, DNET_ID_SIZE);
		const struct dnet_ring_node *nd = &g->nodes[out[i].state];
		dnet__addr_wire_str(&nd->addr, via, out[i].node, sizeof(out[i].node));
		out[i].state = (int)nd->state;
	}
	*routes = out;
	*count = k;
	return 0;
}

int dnet_ring_members(dnet_client *c, struct dnet_ring_member **members, size_t *count)
{
	*members = NULL;
	*count = 0;
	int err = dnet__routes_fetch(c);
	if (err)
		return err;
	const struct dnet_ring *g = &c->ring;
	struct dnet_ring_member *out = calloc(g->nnodes + 1, sizeof(*out));
	if (!out)
		return DNET_ENOMEM;
	const char *via = c->boot ? c->boot->name : NULL;
	size_t k = 0;
	for (size_t i = 0; i < g->nnodes; i++) {
		if (g->nodes[i].state == DNET_NODE_LEFT)
			continue;
		dnet__addr_wire_str(&g->nodes[i].addr, via, out[k].node, sizeof(out[k].node));
		out[k].state = (int)g->nodes[i].state;
		snprintf(out[k].zone, sizeof(out[k].zone), "%s", g->nodes[i].zone);
		k++;
	}
	*members = out;
	*count = k;
	return 0;
}
