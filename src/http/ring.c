/* ring.c - GET /ring.json for the ring page: the members of the ring as this node
 * sees them (state, zone, ID ranges, share of the ring) and each one's load and disk
 * use. The figures of other nodes come from their STAT, fetched over the native
 * protocol by a collector thread of its own (never the HTTP loop: a slow or dead
 * node must not stall the page) once a second while the page is being looked at,
 * with a short timeout; a node marked down in the ring is not asked. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/id.h"
#include "common/log.h"
#include "common/util.h"
#include "http_int.h"

#define SAMPLE_MS 1000
#define PEER_TIMEOUT_MS 500
#define WANTED_NS (15ull * 1000000000ull) /* keep sampling this long after a request */
#define MAX_STAT_REPLY (1u << 20)

static uint64_t stat_value(const char *text, size_t len, const char *name)
{
	size_t nl = strlen(name);
	const char *p = text, *end = text + len;
	while (p < end) {
		const char *eol = memchr(p, '\n', (size_t)(end - p));
		if (!eol)
			eol = end;
		if ((size_t)(eol - p) > nl + 1 && !memcmp(p, name, nl) && p[nl] == ' ') {
			uint64_t v = 0;
			for (const char *q = p + nl + 1; q < eol && *q >= '0' && *q <= '9'; q++)
				v = v * 10 + (uint64_t)(*q - '0');
			return v;
		}
		p = eol + 1;
	}
	return 0;
}

void dnet_http_load_parse(struct dnet_http_load *l, const char *text, size_t len, uint64_t now_ns)
{
	uint64_t total = stat_value(text, len, "requests_total");
	if (l->have && now_ns > l->sample_ns && total >= l->req_total)
		l->ops = (double)(total - l->req_total) / ((double)(now_ns - l->sample_ns) / 1e9);
	else
		l->ops = -1;
	l->req_total = total;
	l->sample_ns = now_ns;
	l->objects = stat_value(text, len, "objects");
	l->object_bytes = stat_value(text, len, "object_bytes");
	l->disk_bytes = stat_value(text, len, "disk_bytes");
	l->disk_free = stat_value(text, len, "disk_free");
	l->have = 1;
	l->reachable = 1;
}

/* The record of a node (created if new); under h->lock. */
static struct dnet_http_load *load_of(struct dnet_http *h, const uint8_t *node_id)
{
	for (size_t i = 0; i < h->nloads; i++)
		if (!memcmp(h->loads[i].node_id, node_id, DNET_ID_SIZE))
			return &h->loads[i];
	if (h->nloads == h->loads_cap) {
		size_t cap = h->loads_cap ? h->loads_cap * 2 : 8;
		struct dnet_http_load *n = realloc(h->loads, cap * sizeof(*n));
		if (!n)
			return NULL;
		h->loads = n;
		h->loads_cap = cap;
	}
	struct dnet_http_load *l = &h->loads[h->nloads++];
	memset(l, 0, sizeof(*l));
	memcpy(l->node_id, node_id, DNET_ID_SIZE);
	l->ops = -1;
	return l;
}

/* Connections of the collector thread, one per node (only it touches them). */
struct cpeer {
	uint8_t node_id[DNET_ID_SIZE];
	struct dnet_addr_wire addr;
	struct dnet_peer peer;
};

static struct dnet_peer *cpeer_get(struct cpeer **ps, size_t *n, const struct dnet_ring_node *rn)
{
	for (size_t i = 0; i < *n; i++) {
		struct cpeer *p = &(*ps)[i];
		if (memcmp(p->node_id, rn->node_id, DNET_ID_SIZE))
			continue;
		if (memcmp(&p->addr, &rn->addr, sizeof(p->addr))) { /* it moved */
			struct sockaddr_storage ss;
			socklen_t sl;
			dnet_peer_close(&p->peer);
			dnet_sockaddr_from_addr(&rn->addr, &ss, &sl);
			dnet_peer_init(&p->peer, &ss, sl);
			p->addr = rn->addr;
		}
		return &p->peer;
	}
	struct cpeer *np = realloc(*ps, (*n + 1) * sizeof(**ps));
	if (!np)
		return NULL;
	*ps = np;
	struct cpeer *p = &np[(*n)++];
	memcpy(p->node_id, rn->node_id, DNET_ID_SIZE);
	p->addr = rn->addr;
	struct sockaddr_storage ss;
	socklen_t sl;
	dnet_sockaddr_from_addr(&rn->addr, &ss, &sl);
	dnet_peer_init(&p->peer, &ss, sl);
	return &p->peer;
}

static void sample(struct dnet_http *h, struct cpeer **peers, size_t *npeers)
{
	struct dnet_server *s = h->s;
	struct dnet_ring ring;
	int self;
	if (dnet_member_snapshot(s, &ring, &self) != 0)
		return;
	for (size_t i = 0; i < ring.nnodes; i++) {
		const struct dnet_ring_node *rn = &ring.nodes[i];
		char *text = NULL;
		size_t len = 0;
		int ok = 0;
		if ((int)i == self) {
			text = dnet_stats_text(s, &len);
			ok = text != NULL;
		} else if (rn->state == DNET_NODE_UP) {
			struct dnet_peer *p = cpeer_get(peers, npeers, rn);
			struct dnet_cmd_hdr rh;
			uint8_t *reply = NULL;
			size_t rlen = 0;
			if (p &&
			    dnet_peer_call(p, DNET_CMD_STAT, 0, NULL, NULL, 0, NULL, 0,
					   PEER_TIMEOUT_MS, &rh, &reply, &rlen,
					   MAX_STAT_REPLY) == 0 &&
			    rh.status == 0) {
				text = (char *)reply;
				len = rlen;
				ok = 1;
			} else {
				free(reply);
			}
		}
		uint64_t now = dnet_now_mono_ns();
		pthread_mutex_lock(&h->lock);
		struct dnet_http_load *l = load_of(h, rn->node_id);
		if (l) {
			if (ok)
				dnet_http_load_parse(l, text, len, now);
			else
				l->reachable = 0;
		}
		pthread_mutex_unlock(&h->lock);
		free(text);
	}
	dnet_ring_free(&ring);
}

static void *collector(void *arg)
{
	struct dnet_http *h = arg;
	struct cpeer *peers = NULL;

	dnet_thread_name("ell-http-ring");
	size_t npeers = 0;
	pthread_mutex_lock(&h->lock);
	while (!h->coll_stop) {
		uint64_t now = dnet_now_mono_ns();
		if (h->wanted_ns && now - h->wanted_ns < WANTED_NS) {
			pthread_mutex_unlock(&h->lock);
			sample(h, &peers, &npeers);
			pthread_mutex_lock(&h->lock);
		}
		if (h->coll_stop)
			break;
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += SAMPLE_MS / 1000;
		pthread_cond_timedwait(&h->cond, &h->lock, &ts);
	}
	pthread_mutex_unlock(&h->lock);
	for (size_t i = 0; i < npeers; i++)
		dnet_peer_close(&peers[i].peer);
	free(peers);
	return NULL;
}

int dnet_http_ring_start(struct dnet_http *h)
{
	if (pthread_create(&h->coll_thread, NULL, collector, h) != 0) {
		dnet_log_error("http: cannot start the ring page collector");
		return -1;
	}
	h->coll_started = 1;
	return 0;
}

void dnet_http_ring_stop(struct dnet_http *h)
{
	if (!h->coll_started)
		return;
	pthread_mutex_lock(&h->lock);
	h->coll_stop = 1;
	pthread_cond_signal(&h->cond);
	pthread_mutex_unlock(&h->lock);
	pthread_join(h->coll_thread, NULL);
	h->coll_started = 0;
}

static const char *state_name(uint32_t st)
{
	return st == DNET_NODE_UP     ? "up"
	       : st == DNET_NODE_DOWN ? "down"
	       : st == DNET_NODE_LEFT ? "left"
				      : "unknown";
}

char *dnet_http_ring_json(struct dnet_http *h, size_t *len)
{
	struct dnet_server *s = h->s;
	struct dnet_ring ring;
	int self;
	if (dnet_member_snapshot(s, &ring, &self) != 0)
		return NULL;
	double *share = calloc(ring.nnodes ? ring.nnodes : 1, sizeof(*share));
	if (!share) {
		dnet_ring_free(&ring);
		return NULL;
	}
	dnet_ring_shares(&ring, share);

	uint64_t now = dnet_now_mono_ns();
	pthread_mutex_lock(&h->lock);
	int first = !h->wanted_ns || dnet_ns_since(now, h->wanted_ns) >= WANTED_NS;
	h->wanted_ns = now;
	if (first)
		pthread_cond_signal(&h->cond); /* sample now, not at the next tick */
	pthread_mutex_unlock(&h->lock);

	struct dnet_hbuf b;
	dnet_hbuf_init(&b, 8192);
	char hex[2 * DNET_ID_SIZE + 1];
	dnet_id_to_hex(hex, s->node_id, DNET_ID_SIZE);
	size_t up = 0, down = 0, left = 0;
	for (size_t i = 0; i < ring.nnodes; i++) {
		up += ring.nodes[i].state == DNET_NODE_UP;
		down += ring.nodes[i].state == DNET_NODE_DOWN;
		left += ring.nodes[i].state == DNET_NODE_LEFT;
	}
	dnet_hbuf_add(&b, "{\"self\":\"%.16s\",\"listen\":", hex);
	dnet_hbuf_json_str(&b, s->listen_str, strlen(s->listen_str));
	dnet_hbuf_add(
	    &b,
	    ",\"digest\":\"%016llx\",\"uptime_s\":%.1f,\"counts\":{\"nodes\":%zu,\"up\":%zu,"
	    "\"down\":%zu,\"left\":%zu},\"nodes\":[",
	    (unsigned long long)ring.digest, (double)(now - s->start_ns) / 1e9, ring.nnodes, up,
	    down, left);
	for (size_t i = 0; i < ring.nnodes; i++) {
		const struct dnet_ring_node *rn = &ring.nodes[i];
		struct sockaddr_storage ss;
		socklen_t sl;
		char addr[64];
		dnet_sockaddr_from_addr(&rn->addr, &ss, &sl);
		dnet_addr_str((struct sockaddr *)&ss, addr, sizeof(addr));
		dnet_id_to_hex(hex, rn->node_id, DNET_ID_SIZE);
		size_t zl = strnlen(rn->zone, sizeof(rn->zone));
		dnet_hbuf_add(&b, "%s{\"id\":\"%.16s\",\"addr\":", i ? "," : "", hex);
		dnet_hbuf_json_str(&b, addr, strlen(addr));
		dnet_hbuf_add(&b, ",\"zone\":");
		dnet_hbuf_json_str(&b, rn->zone, zl);
		dnet_hbuf_add(&b,
			      ",\"state\":\"%s\",\"self\":%s,\"incarnation\":%llu,\"ids\":%u,"
			      "\"share\":%.6f,\"ranges\":[",
			      state_name(rn->state), (int)i == self ? "true" : "false",
			      (unsigned long long)rn->incarnation, rn->nids, share[i]);
		int firstr = 1;
		for (size_t e = 0; e < ring.nentries; e++) {
			if (ring.entries[e].node != i)
				continue;
			uint8_t start[DNET_ID_SIZE], end[DNET_ID_SIZE];
			char hs[17], he[17];
			dnet_ring_range(&ring, e, start, end);
			dnet_id_to_hex(hs, start, 8);
			dnet_id_to_hex(he, end, 8);
			dnet_hbuf_add(&b, "%s[\"%.16s\",\"%.16s\"]", firstr ? "" : ",", hs, he);
			firstr = 0;
		}
		dnet_hbuf_add(&b, "]");
		pthread_mutex_lock(&h->lock);
		struct dnet_http_load l = {0};
		int have = 0;
		for (size_t k = 0; k < h->nloads; k++)
			if (!memcmp(h->loads[k].node_id, rn->node_id, DNET_ID_SIZE)) {
				l = h->loads[k];
				have = l.have;
			}
		pthread_mutex_unlock(&h->lock);
		if (have) {
			dnet_hbuf_add(
			    &b,
			    ",\"reachable\":%s,\"stats_age_s\":%.1f,\"objects\":%llu,"
			    "\"object_bytes\":%llu,\"disk_bytes\":%llu,\"disk_free\":%llu",
			    l.reachable ? "true" : "false",
			    (double)dnet_ns_since(now, l.sample_ns) / 1e9,
			    (unsigned long long)l.objects, (unsigned long long)l.object_bytes,
			    (unsigned long long)l.disk_bytes, (unsigned long long)l.disk_free);
			if (l.ops >= 0 && l.reachable)
				dnet_hbuf_add(&b, ",\"ops\":%.1f", l.ops);
			else
				dnet_hbuf_add(&b, ",\"ops\":null");
		} else {
			dnet_hbuf_add(&b, ",\"reachable\":null,\"ops\":null");
		}
		dnet_hbuf_add(&b, "}");
	}
	dnet_hbuf_add(&b, "]}\n");
	free(share);
	dnet_ring_free(&ring);
	if (b.p)
		*len = b.len;
	return b.p;
}
