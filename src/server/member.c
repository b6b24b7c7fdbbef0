/* member.c - ring membership: this node's IDs, the route table, joining through
 * --join seeds, heartbeats, failure detection and route table exchange.
 *
 * Protocol (docs/architecture.md, "The ring"): every heartbeat a node PINGs each
 * known peer with the digest of its table; a peer whose digest differs gets a JOIN
 * carrying our whole table and answers with its own; both sides merge (a node's own
 * newer incarnation wins; within one incarnation UP < DOWN < LEFT). A peer silent
 * for --fail-after-ms is marked DOWN; the news spreads by the same exchange. A node
 * that finds itself marked DOWN by others bumps its incarnation: alive again. */
#include <errno.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "common/errors.h"
#include "common/id.h"
#include "common/log.h"
#include "common/util.h"
#include "peer.h"
#include "server.h"

#define RING_MAX_REPLY (64u << 20)

/* DATA/ring_ids: one 128-hex-digit ring ID per line, created once. */
static int load_ids(struct dnet_server *s, struct dnet_ring_node *n)
{
	char path[8192];
	snprintf(path, sizeof(path), "%s/ring_ids", s->cfg.data);
	FILE *f = fopen(path, "r");
	if (f) {
		char line[256];
		n->ids = calloc(DNET_RING_MAX_IDS, DNET_ID_SIZE);
		if (!n->ids) {
			fclose(f);
			return DNET_ENOMEM;
		}
		while (fgets(line, sizeof(line), f) && n->nids < DNET_RING_MAX_IDS) {
			line[strcspn(line, "\r\n")] = '\0';
			if (!line[0])
				continue;
			if (dnet_id_from_hex(n->ids[n->nids], line) != 0) {
				dnet_log_error("%s: bad ring ID line '%.20s...'", path, line);
				fclose(f);
				return DNET_EINVAL;
			}
			n->nids++;
		}
		fclose(f);
		if (n->nids == 0) {
			dnet_log_error("%s: no ring IDs", path);
			return DNET_EINVAL;
		}
		if ((int)n->nids != s->cfg.ids)
			dnet_log_info("keeping %u ring IDs from %s (--ids %d applies to new nodes only)",
				      n->nids, path, s->cfg.ids);
		return 0;
	}
	if (errno != ENOENT) {
		dnet_log_error("cannot read %s: %s", path, strerror(errno));
		return dnet_from_errno(errno);
	}
	n->nids = (uint32_t)s->cfg.ids;
	n->ids = calloc(n->nids, DNET_ID_SIZE);
	if (!n->ids)
		return DNET_ENOMEM;
	if (getrandom(n->ids, (size_t)n->nids * DNET_ID_SIZE, 0) != (ssize_t)(n->nids * DNET_ID_SIZE))
		return DNET_ESYS;
	char tmp[8200];
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	f = fopen(tmp, "w");
	if (!f)
		return dnet_from_errno(errno);
	for (uint32_t i = 0; i < n->nids; i++) {
		char hex[2 * DNET_ID_SIZE + 1];
		dnet_id_to_hex(hex, n->ids[i], DNET_ID_SIZE);
		fprintf(f, "%s\n", hex);
	}
	int bad = fflush(f) != 0 || fsync(fileno(f)) != 0;
	bad |= fclose(f) != 0;
	if (bad || rename(tmp, path) != 0) {
		dnet_log_error("cannot write %s: %s", path, strerror(errno));
		return DNET_EIO;
	}
	dnet_log_info("created %u ring IDs in %s", n->nids, path);
	return 0;
}

/* DATA/ring: the last route table, so a restarted node knows its peers at once. */
static void do_save_ring(struct dnet_server *s)
{
	char path[8192], tmp[8200];
	snprintf(path, sizeof(path), "%s/ring", s->cfg.data);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	size_t len = dnet_ring_encoded_size(&s->member.ring);
	uint8_t *buf = malloc(len);
	if (!buf)
		return;
	dnet_ring_encode(&s->member.ring, buf);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || dnet_write_full(fd, buf, len) != 0 || rename(tmp, path) != 0)
		dnet_log_warn("cannot save the route table to %s: %s", path, strerror(errno));
	if (fd >= 0)
		close(fd);
	free(buf);
}

static void do_load_ring(struct dnet_server *s)
{
	char path[8192];
	snprintf(path, sizeof(path), "%s/ring", s->cfg.data);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	off_t sz = lseek(fd, 0, SEEK_END);
	if (sz <= 0 || sz > (off_t)RING_MAX_REPLY) {
		close(fd);
		return;
	}
	uint8_t *buf = malloc((size_t)sz);
	struct dnet_ring r;
	if (buf && pread(fd, buf, (size_t)sz, 0) == sz && dnet_ring_decode(&r, buf, (size_t)sz) == 0) {
		for (size_t i = 0; i < r.nnodes; i++) {
			if (i == (size_t)s->member.self ||
			    !memcmp(r.nodes[i].node_id, s->node_id, DNET_ID_SIZE))
				continue;
			dnet_ring_merge_node(&s->member.ring, &r.nodes[i]);
		}
		dnet_ring_free(&r);
		dnet_log_info("loaded %zu known nodes from %s", s->member.ring.nnodes - 1, path);
	} else {
		dnet_log_warn("ignoring unreadable route table %s", path);
	}
	free(buf);
	close(fd);
}

/* Per-node arrays follow the ring's node count (indices never change). */
static int do_grow(struct dnet_member *m)
{
	size_t n = m->ring.nnodes;
	if (n <= m->last_seen_cap)
		return 0;
	size_t cap = n * 2;
	uint64_t *ls = realloc(m->last_seen, cap * sizeof(*ls));
	if (!ls)
		return DNET_ENOMEM;
	uint64_t now = dnet_now_mono_ns();
	for (size_t i = m->last_seen_cap; i < cap; i++)
		ls[i] = now; /* a newly learned node gets a full grace period */
	m->last_seen = ls;
	m->last_seen_cap = cap;
	return 0;
}

/* After merging others' news: if they think we are down (or gone), say otherwise
 * with a newer incarnation. Called with the write lock held. Returns 1 if changed. */
static int do_refute(struct dnet_server *s)
{
	struct dnet_ring_node *me = &s->member.ring.nodes[s->member.self];
	if (me->state == DNET_NODE_UP || s->member.leaving)
		return 0;
	uint64_t inc = dnet_now_real_ns();
	if (inc <= me->incarnation)
		inc = me->incarnation + 1;
	dnet_log_info("the ring thinks this node is %s; announcing it is up (incarnation %llu)",
		      me->state == DNET_NODE_DOWN ? "down" : "gone", (unsigned long long)inc);
	struct dnet_ring_node upd = *me;
	upd.incarnation = inc;
	upd.state = DNET_NODE_UP;
	return dnet_ring_merge_node(&s->member.ring, &upd) > 0;
}

/* Keep `before` (taken by the caller) if ownership changed since it. Write lock
 * held; takes ownership of before. */
static void do_remember(struct dnet_server *s, struct dnet_ring *before)
{
	struct dnet_member *m = &s->member;

	dnet_thread_name("ell-member");
	if (!m->met_others && m->ring.nnodes > 1) {
		/* First contact with the ring: our solo view before it is no history. */
		m->met_others = 1;
		m->new_until_ns = dnet_now_mono_ns() + (uint64_t)s->cfg.handoff_s * 1000000000ull;
		dnet_ring_free(before);
		atomic_fetch_add(&m->layout_changes, 1);
		dnet_mover_kick(s);
		return;
	}
	if (before->layout == m->ring.layout) {
		dnet_ring_free(before);
		return;
	}
	int n = (int)(sizeof(m->hist) / sizeof(m->hist[0]));
	if (m->nhist == n)
		dnet_ring_free(&m->hist[--m->nhist].ring);
	memmove(&m->hist[1], &m->hist[0], (size_t)m->nhist * sizeof(m->hist[0]));
	m->hist[0].ring = *before;
	m->hist[0].until_ns = dnet_now_mono_ns() + (uint64_t)s->cfg.handoff_s * 1000000000ull;
	m->nhist++;
	atomic_fetch_add(&m->layout_changes, 1);
	dnet_log_info("ring: ownership changed (%zu nodes, %zu ranges); moving data", m->ring.nnodes,
		      m->ring.nentries);
	dnet_mover_kick(s);
}

/* News others must hear at once (a join through us, a leave): the membership
 * thread exchanges tables with every peer right away. */
static void urgent_kick(struct dnet_server *s)
{
	struct dnet_member *m = &s->member;
	atomic_store(&m->urgent, 1);
	pthread_mutex_lock(&m->wait_lock);
	pthread_cond_signal(&m->wait_cond);
	pthread_mutex_unlock(&m->wait_lock);
}

static size_t count_up(const struct dnet_ring *r)
{
	size_t n = 0;
	for (size_t i = 0; i < r->nnodes; i++)
		n += r->nodes[i].state == DNET_NODE_UP;
	return n;
}

/* Merge a received table; returns 1 if ours changed. Write lock held. */
static int do_merge(struct dnet_server *s, const struct dnet_ring *r)
{
	int changed = 0;
	struct dnet_ring before;
	if (dnet_ring_copy(&before, &s->member.ring) != 0)
		dnet_ring_init(&before);
	size_t ups_before = count_up(&s->member.ring);
	for (size_t i = 0; i < r->nnodes; i++) {
		const struct dnet_ring_node *n = &r->nodes[i];
		int rc = dnet_ring_merge_node(&s->member.ring, n);
		if (rc > 0) {
			changed = 1;
			int j = dnet_ring_find(&s->member.ring, n->node_id);
			if (j >= 0 && j != s->member.self && do_grow(&s->member) == 0)
				s->member.last_seen[j] = dnet_now_mono_ns();
		}
	}
	changed |= do_refute(s);
	do_grow(&s->member);
	if (count_up(&s->member.ring) > ups_before) {
		/* A node came (back): copies it missed can be compared now. */
		atomic_fetch_add(&s->member.node_ups, 1);
		dnet_recover_kick(s);
	}
	do_remember(s, &before);
	return changed;
}

static uint8_t *encode_ring(const struct dnet_ring *r, size_t *len)
{
	*len = dnet_ring_encoded_size(r);
	uint8_t *buf = malloc(*len);
	if (buf)
		dnet_ring_encode(r, buf);
	return buf;
}

uint8_t *dnet_member_routes(struct dnet_server *s, size_t *len)
{
	pthread_rwlock_rdlock(&s->member.lock);
	uint8_t *buf = encode_ring(&s->member.ring, len);
	pthread_rwlock_unlock(&s->member.lock);
	return buf;
}

uint64_t dnet_member_digest(struct dnet_server *s)
{
	pthread_rwlock_rdlock(&s->member.lock);
	uint64_t d = s->member.ring.digest;
	pthread_rwlock_unlock(&s->member.lock);
	return d;
}

/* Every node of a ring must force the same number of copies, or they would
 * disagree on where objects live. */
static int copies_match(struct dnet_server *s, const struct dnet_ring *r, const char *who)
{
	if (!r->copies || (int)r->copies == s->cfg.copies)
		return 1;
	static atomic_int warned;
	if (!atomic_exchange(&warned, 1))
		dnet_log_error("ring: %s has --copies %u but this node has --copies %d; refusing to "
			       "share a ring with it (every node must use the same value)",
			       who, r->copies, s->cfg.copies);
	return 0;
}

int dnet_member_join(struct dnet_server *s, const uint8_t *buf, size_t len, uint8_t **out,
		     size_t *outlen)
{
	struct dnet_ring r;
	int err = dnet_ring_decode(&r, buf, len);
	if (err)
		return err;
	if (!copies_match(s, &r, "a joining node")) {
		dnet_ring_free(&r);
		return DNET_EINVAL;
	}
	pthread_rwlock_wrlock(&s->member.lock);
	size_t before = s->member.ring.nnodes;
	int changed = do_merge(s, &r);
	if (changed)
		do_save_ring(s);
	*out = encode_ring(&s->member.ring, outlen);
	size_t after = s->member.ring.nnodes;
	pthread_rwlock_unlock(&s->member.lock);
	dnet_ring_free(&r);
	if (after > before) {
		dnet_log_info("ring: %zu node(s) joined; %zu known", after - before, after);
		urgent_kick(s);
	}
	return *out ? 0 : DNET_ENOMEM;
}

int dnet_member_joining(struct dnet_server *s)
{
	struct dnet_member *m = &s->member;
	pthread_rwlock_rdlock(&m->lock);
	int joining = s->cfg.njoins > 0 && !m->met_others && !atomic_load(&m->only_self_seeds);
	pthread_rwlock_unlock(&m->lock);
	return joining;
}

int dnet_member_owns(struct dnet_server *s, const uint8_t *id, struct dnet_addr_wire *owner)
{
	struct dnet_member *m = &s->member;
	pthread_rwlock_rdlock(&m->lock);
	int homes[DNET_MAX_COPIES];
	int n = dnet_ring_placement(&m->ring, id, s->cfg.copies, homes);
	int mine = n == 0;
	for (int i = 0; i < n; i++)
		mine |= homes[i] == m->self;
	if (!mine)
		*owner = m->ring.nodes[homes[0]].addr;
	pthread_rwlock_unlock(&m->lock);
	return mine;
}

/* One exchange with a peer: send our table, merge theirs. */
static int exchange(struct dnet_server *s, struct dnet_peer *p)
{
	size_t len;
	uint8_t *mine = dnet_member_routes(s, &len);
	if (!mine)
		return DNET_ENOMEM;
	struct dnet_cmd_hdr rh;
	uint8_t *reply;
	size_t rlen;
	int err = dnet_peer_call(p, DNET_CMD_JOIN, 0, NULL, mine, len, NULL, 0, 2000, &rh, &reply,
				 &rlen, RING_MAX_REPLY);
	free(mine);
	if (err)
		return err;
	if (rh.status) {
		free(reply);
		return rh.status;
	}
	struct dnet_ring r;
	err = dnet_ring_decode(&r, reply, rlen);
	free(reply);
	if (err)
		return err;
	if (!copies_match(s, &r, p->name)) {
		dnet_ring_free(&r);
		return DNET_EINVAL;
	}
	pthread_rwlock_wrlock(&s->member.lock);
	if (do_merge(s, &r))
		do_save_ring(s);
	pthread_rwlock_unlock(&s->member.lock);
	dnet_ring_free(&r);
	return 0;
}

/* Make sure peers[i] exists for every node; called from the membership thread. */
static int sync_peers(struct dnet_server *s)
{
	struct dnet_member *m = &s->member;
	pthread_rwlock_rdlock(&m->lock);
	size_t n = m->ring.nnodes;
	pthread_rwlock_unlock(&m->lock);
	if (n <= m->npeers)
		return 0;
	struct dnet_peer *np = realloc(m->peers, n * sizeof(*np));
	if (!np)
		return DNET_ENOMEM;
	m->peers = np;
	pthread_rwlock_rdlock(&m->lock);
	for (size_t i = m->npeers; i < n; i++) {
		struct sockaddr_storage ss;
		socklen_t sl;
		dnet_sockaddr_from_addr(&m->ring.nodes[i].addr, &ss, &sl);
		dnet_peer_init(&m->peers[i], &ss, sl);
	}
	pthread_rwlock_unlock(&m->lock);
	m->npeers = n;
	return 0;
}

static void heartbeat_round(struct dnet_server *s, uint64_t round)
{
	struct dnet_member *m = &s->member;
	const struct dnet_config *cfg = &s->cfg;

	/* Seeds first: until one answers, we are a ring of one. */
	int selves = 0;
	for (int j = 0; j < cfg->njoins; j++) {
		if (m->seed[j] != DNET_SEED_WAIT) {
			selves += m->seed[j] == DNET_SEED_SELF;
			continue;
		}
		struct dnet_peer p;
		if (dnet_peer_init_str(&p, cfg->joins[j]) != 0)
			continue; /* resolved at startup: a passing failure, try again */
		int err = exchange(s, &p);
		dnet_peer_close(&p);
		if (!err) {
			/* Every node's table holds the node itself: a seed that leaves us
			 * alone in ours is this very node (one config for all nodes). */
			pthread_rwlock_rdlock(&m->lock);
			int alone = m->ring.nnodes == 1;
			pthread_rwlock_unlock(&m->lock);
			m->seed[j] = alone ? DNET_SEED_SELF : DNET_SEED_OTHER;
			selves += alone;
			if (alone)
				dnet_log_info("--join %s is this node", cfg->joins[j]);
			else
				dnet_log_info("joined the ring through %s", cfg->joins[j]);
		} else if (round % 10 == 0) {
			dnet_log_warn("cannot join through %s yet: %s", cfg->joins[j],
				      dnet_strerror(err));
		}
	}
	if (cfg->njoins && selves == cfg->njoins)
		atomic_store(&m->only_self_seeds, 1);
	if (sync_peers(s) != 0)
		return;
	if (atomic_exchange(&m->urgent, 0)) {
		for (size_t i = 0; i < m->npeers; i++) {
			pthread_rwlock_rdlock(&m->lock);
			uint32_t state = m->ring.nodes[i].state;
			pthread_rwlock_unlock(&m->lock);
			if ((int)i != m->self && state == DNET_NODE_UP)
				exchange(s, &m->peers[i]);
		}
	}
	for (size_t i = 0; i < m->npeers; i++) {
		if ((int)i == m->self)
			continue;
		pthread_rwlock_rdlock(&m->lock);
		uint32_t state = m->ring.nodes[i].state;
		uint64_t digest = m->ring.digest;
		pthread_rwlock_unlock(&m->lock);
		/* Down nodes are probed less often, so they cost little. A node that left
		 * is probed while it still answers: it may be handing its objects over,
		 * and reads are sent to it meanwhile. */
		if (state == DNET_NODE_DOWN && round % 3 != i % 3)
			continue;
		if (state == DNET_NODE_LEFT) {
			pthread_rwlock_rdlock(&m->lock);
			uint64_t silent = dnet_now_mono_ns() - m->last_seen[i];
			pthread_rwlock_unlock(&m->lock);
			if (silent > 60ull * 1000000000ull && round % 10 != i % 10)
				continue;
		}
		uint8_t dg[8];
		dnet_put_u64(dg, digest);
		struct dnet_cmd_hdr rh;
		uint8_t *reply;
		size_t rlen;
		int timeout = cfg->heartbeat_ms < 1000 ? cfg->heartbeat_ms : 1000;
		int err = dnet_peer_call(&m->peers[i], DNET_CMD_PING, 0, NULL, dg, sizeof(dg), NULL, 0,
					 timeout, &rh, &reply, &rlen, 4096);
		uint64_t now = dnet_now_mono_ns();
		if (!err && rh.status == 0) {
			uint64_t theirs = rlen >= 8 ? dnet_get_u64(reply) : 0;
			pthread_rwlock_wrlock(&m->lock);
			m->last_seen[i] = now;
			pthread_rwlock_unlock(&m->lock);
			if (theirs != digest)
				exchange(s, &m->peers[i]);
		} else {
			pthread_rwlock_wrlock(&m->lock);
			if (m->ring.nodes[i].state == DNET_NODE_UP &&
			    dnet_ns_since(now, m->last_seen[i]) >
				(uint64_t)cfg->fail_after_ms * 1000000ull) {
				char a[64];
				snprintf(a, sizeof(a), "%s", m->peers[i].name);
				dnet_ring_set_state(&m->ring, (int)i, DNET_NODE_DOWN);
				do_save_ring(s);
				dnet_log_warn("ring: node %s is down (silent for %d ms: %s)", a,
					      cfg->fail_after_ms, dnet_strerror(err));
			}
			pthread_rwlock_unlock(&m->lock);
		}
		free(reply);
	}
}

static void *member_main(void *arg)
{
	struct dnet_server *s = arg;
	struct dnet_member *m = &s->member;
	for (uint64_t round = 0;; round++) {
		heartbeat_round(s, round);
		pthread_mutex_lock(&m->wait_lock);
		if (!m->stop && !atomic_load(&m->urgent)) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			uint64_t ns = (uint64_t)ts.tv_nsec + (uint64_t)s->cfg.heartbeat_ms * 1000000ull;
			ts.tv_sec += (time_t)(ns / 1000000000ull);
			ts.tv_nsec = (long)(ns % 1000000000ull);
			pthread_cond_timedwait(&m->wait_cond, &m->wait_lock, &ts);
		}
		int stop = m->stop;
		pthread_mutex_unlock(&m->wait_lock);
		if (stop)
			break;
	}
	return NULL;
}

void dnet_member_init(struct dnet_server *s)
{
	struct dnet_member *m = &s->member;
	pthread_rwlock_init(&m->lock, NULL);
	pthread_mutex_init(&m->wait_lock, NULL);
	pthread_cond_init(&m->wait_cond, NULL);
	dnet_ring_init(&m->ring);
}

int dnet_member_start(struct dnet_server *s)
{
	struct dnet_member *m = &s->member;

	struct dnet_ring_node me;
	memset(&me, 0, sizeof(me));
	memcpy(me.node_id, s->node_id, DNET_ID_SIZE);
	const char *adv = s->cfg.advertise[0] ? s->cfg.advertise : s->listen_str;
	struct sockaddr_storage ss;
	socklen_t sl;
	if (dnet_parse_addr(adv, 1025, &ss, &sl) != 0 || dnet_addr_from_sockaddr(&ss, &me.addr) != 0) {
		dnet_log_error("cannot use %s as this node's address", adv);
		return DNET_EADDR;
	}
	static const uint8_t any6[16];
	if ((me.addr.family == 4 && !memcmp(me.addr.addr, any6, 4)) ||
	    (me.addr.family == 6 && !memcmp(me.addr.addr, any6, 16))) {
		dnet_log_error("listening on a wildcard address: give --advertise HOST:PORT, the "
			       "address other nodes and clients should use");
		return DNET_EADDR;
	}
	snprintf(me.zone, sizeof(me.zone), "%s", s->cfg.zone);
	me.incarnation = dnet_now_real_ns();
	me.state = DNET_NODE_UP;
	int err = load_ids(s, &me);
	if (err) {
		free(me.ids);
		return err;
	}
	pthread_rwlock_wrlock(&m->lock);
	err = dnet_ring_merge_node(&m->ring, &me);
	free(me.ids);
	if (err < 0) {
		pthread_rwlock_unlock(&m->lock);
		return err;
	}
	m->self = 0;
	m->ring.copies = (uint32_t)s->cfg.copies;
	do_load_ring(s);
	err = do_grow(m);
	pthread_rwlock_unlock(&m->lock);
	if (err)
		return err;
	for (int j = 0; j < s->cfg.njoins; j++) {
		struct sockaddr_storage js;
		socklen_t jl;
		if (dnet_parse_addr(s->cfg.joins[j], 1025, &js, &jl) != 0) {
			dnet_log_error("--join %s: cannot parse or resolve the address", s->cfg.joins[j]);
			return DNET_EADDR;
		}
	}
	pthread_rwlock_wrlock(&m->lock);
	do_save_ring(s);
	pthread_rwlock_unlock(&m->lock);
	if (pthread_create(&m->thread, NULL, member_main, s) != 0)
		return DNET_ESYS;
	m->started = 1;
	return 0;
}

void dnet_member_stop(struct dnet_server *s)
{
	struct dnet_member *m = &s->member;
	if (!m->started)
		return;
	pthread_mutex_lock(&m->wait_lock);
	m->stop = 1;
	pthread_cond_signal(&m->wait_cond);
	pthread_mutex_unlock(&m->wait_lock);
	pthread_join(m->thread, NULL);
	for (size_t i = 0; i < m->npeers; i++)
		dnet_peer_close(&m->peers[i]);
	free(m->peers);
	m->peers = NULL;
	m->npeers = 0;
	m->started = 0;
}

void dnet_member_free(struct dnet_server *s)
{
	struct dnet_member *m = &s->member;
	free(m->last_seen);
	m->last_seen = NULL;
	dnet_ring_free(&m->ring);
	for (int i = 0; i < m->nhist; i++)
		dnet_ring_free(&m->hist[i].ring);
	m->nhist = 0;
}

void dnet_member_counts(struct dnet_server *s, size_t *nodes, size_t *up, size_t *down,
			size_t *left)
{
	struct dnet_member *m = &s->member;
	*nodes = *up = *down = *left = 0;
	pthread_rwlock_rdlock(&m->lock);
	for (size_t i = 0; i < m->ring.nnodes; i++) {
		(*nodes)++;
		uint32_t st = m->ring.nodes[i].state;
		*up += st == DNET_NODE_UP;
		*down += st == DNET_NODE_DOWN;
		*left += st == DNET_NODE_LEFT;
	}
	pthread_rwlock_unlock(&m->lock);
}

/* Where else a key we lack may still be, while objects move. Candidates, newest
 * first: the key's owner in each remembered ring (for a ring in which we already
 * owned it while we were new, the node that owned it without us), then, while we
 * are new, its owner in the current ring without us. A DIRECT request came from a
 * redirect by the current owner, so never send it back there: that is what keeps
 * the owner and a previous owner from bouncing a missing key between them. */
int dnet_member_prev_owner(struct dnet_server *s, const uint8_t *id, int direct,
			   struct dnet_addr_wire *addr)
{
	struct dnet_member *m = &s->member;
	uint64_t now = dnet_now_mono_ns();
	int found = 0;
	pthread_rwlock_rdlock(&m->lock);
	int is_new = now < m->new_until_ns;
	int cur_owner = dnet_ring_owner(&m->ring, id);
	for (int i = 0; i <= m->nhist && !found; i++) {
		const struct dnet_ring *h;
		if (i < m->nhist) {
			if (m->hist[i].until_ns < now)
				continue;
			h = &m->hist[i].ring;
		} else {
			if (!is_new)
				break;
			h = &m->ring;
		}
		int o = dnet_ring_owner(h, id);
		int me_there = dnet_ring_find(h, m->ring.nodes[m->self].node_id);
		if (o >= 0 && o == me_there) {
			if (!is_new)
				continue;
			o = dnet_ring_owner_without(h, id, me_there);
		}
		if (o < 0)
			continue;
		int cur = dnet_ring_find(&m->ring, h->nodes[o].node_id);
		if (cur < 0 || cur == m->self)
			continue;
		/* A node that left may still hold objects it is handing over: ask it while
		 * it answers heartbeats. */
		uint32_t st = m->ring.nodes[cur].state;
		if (st != DNET_NODE_UP &&
		    !(st == DNET_NODE_LEFT && dnet_ns_since(now, m->last_seen[cur]) <
						  (uint64_t)s->cfg.fail_after_ms * 1000000ull))
			continue;
		if (direct && cur == cur_owner)
			continue;
		*addr = m->ring.nodes[cur].addr;
		found = 1;
	}
	pthread_rwlock_unlock(&m->lock);
	return found;
}

int dnet_member_snapshot(struct dnet_server *s, struct dnet_ring *out, int *self)
{
	pthread_rwlock_rdlock(&s->member.lock);
	int err = dnet_ring_copy(out, &s->member.ring);
	*self = s->member.self;
	pthread_rwlock_unlock(&s->member.lock);
	return err;
}

int dnet_member_leave(struct dnet_server *s, const struct dnet_addr_wire *addr)
{
	struct dnet_member *m = &s->member;
	pthread_rwlock_wrlock(&m->lock);
	int idx = addr ? -1 : m->self;
	for (size_t i = 0; addr && i < m->ring.nnodes; i++) {
		const struct dnet_addr_wire *na = &m->ring.nodes[i].addr;
		if (na->family == addr->family && na->port == addr->port &&
		    !memcmp(na->addr, addr->addr, addr->family == 6 ? 16 : 4) &&
		    m->ring.nodes[i].state != DNET_NODE_LEFT)
			idx = (int)i;
	}
	if (idx < 0) {
		pthread_rwlock_unlock(&m->lock);
		return DNET_ENOENT;
	}
	struct dnet_ring before;
	if (dnet_ring_copy(&before, &m->ring) != 0)
		dnet_ring_init(&before);
	struct dnet_ring_node upd = m->ring.nodes[idx];
	if (idx == m->self) {
		/* Our own word, so a newer incarnation: it overrides anything. */
		m->leaving = 1;
		upd.incarnation = dnet_now_real_ns();
		if (upd.incarnation <= m->ring.nodes[idx].incarnation)
			upd.incarnation = m->ring.nodes[idx].incarnation + 1;
	}
	/* For another node: LEFT in its current incarnation (worse state wins), so it
	 * spreads; if that node comes back it announces a newer incarnation. */
	upd.state = DNET_NODE_LEFT;
	int rc = dnet_ring_merge_node(&m->ring, &upd);
	char name[64];
	snprintf(name, sizeof(name), "%u", upd.addr.port);
	if (rc > 0)
		do_save_ring(s);
	do_remember(s, &before);
	pthread_rwlock_unlock(&m->lock);
	if (rc < 0)
		return rc;
	dnet_log_info("ring: %s leaves the ring (port %s); its ranges go to the others",
		      idx == m->self ? "this node" : "a node", name);
	urgent_kick(s);
	return 0;
}
