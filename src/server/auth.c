/* auth.c - who may do what on this node (docs/security.md): the client keys of
 * --keys FILE, the cluster key of --cluster-key FILE, the AUTH handshake's server
 * side, and the permission check every request passes.
 *
 * Without --keys, clients need no key (anything goes); without --cluster-key,
 * node-to-node commands need none. The tables are replaced whole on SIGHUP (a
 * reload that fails keeps the old ones); connections keep the permission they
 * authenticated with. */
#include <ctype.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/auth.h"
#include "common/errors.h"
#include "common/log.h"
#include "common/util.h"
#include "peer.h"
#include "server.h"

#define AUTH_MAX_FAILURES 3
#define AUTH_MAX_LINES 100000 /* of a --keys or --cluster-key file */

struct dnet_key {
	char name[DNET_AUTH_NAME_MAX + 1];
	char secret[DNET_AUTH_SECRET_MAX + 1];
	uint32_t perm;
};

struct dnet_keys {
	struct dnet_key *v;
	size_t n;
	int have_keys; /* --keys given: clients must authenticate */
	char cluster[DNET_AUTH_SECRET_MAX + 1];
	int have_cluster;
};

static pthread_rwlock_t keys_lock = PTHREAD_RWLOCK_INITIALIZER;
static struct dnet_keys keys;
/* keys.have_keys and keys.have_cluster, read by every request without the lock
 * (set under it). */
static atomic_int need_client_key, need_node_key;
static atomic_int need_node_cert; /* set once at startup */

void dnet_auth_require_node_cert(int on)
{
	atomic_store(&need_node_cert, on);
}

static void publish(void)
{
	atomic_store(&need_client_key, keys.have_keys);
	atomic_store(&need_node_key, keys.have_cluster);
}

static int perm_parse(const char *s, uint32_t *perm)
{
	if (!strcmp(s, "read"))
		*perm = DNET_PERM_READ;
	else if (!strcmp(s, "write"))
		*perm = DNET_PERM_WRITE;
	else if (!strcmp(s, "admin"))
		*perm = DNET_PERM_ADMIN;
	else
		return -1;
	return 0;
}

static void warn_mode(const char *path)
{
	struct stat st;
	if (stat(path, &st) == 0 && (st.st_mode & 077))
		dnet_log_warn("%s is readable by other users (mode %03o): chmod 600 it", path,
			      (unsigned)(st.st_mode & 0777));
}

/* NAME SECRET read|write|admin per line; '#' comments, blank lines. */
static int load_keys(const char *path, struct dnet_keys *k)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		dnet_log_error("--keys %s: %s", path, strerror(errno));
		return DNET_EINVAL;
	}
	warn_mode(path);
	char line[1024];
	int lineno = 0, err = 0;
	while (fgets(line, sizeof(line), f)) {
		/* bounded: a path naming an endless device (/dev/zero) must not hang us */
		if (++lineno > AUTH_MAX_LINES) {
			dnet_log_error("--keys %s: more than %d lines", path, AUTH_MAX_LINES);
			err = DNET_EINVAL;
			break;
		}
		if (!strchr(line, '\n') && !feof(f)) {
			dnet_log_error("--keys %s:%d: line too long", path, lineno);
			err = DNET_EINVAL;
			break;
		}
		char *hash = strchr(line, '#');
		if (hash)
			*hash = '\0';
		char name[256], secret[512], perm[64], extra[8];
		int n = sscanf(line, "%255s %511s %63s %7s", name, secret, perm, extra);
		if (n <= 0)
			continue;
		struct dnet_key key;
		memset(&key, 0, sizeof(key));
		if (n != 3 || strlen(name) > DNET_AUTH_NAME_MAX || strlen(secret) > DNET_AUTH_SECRET_MAX ||
		    name[0] == '@' || perm_parse(perm, &key.perm)) {
			dnet_log_error("--keys %s:%d: want `NAME SECRET read|write|admin` (name up to "
				       "%d bytes, not starting with @; secret up to %d)",
				       path, lineno, DNET_AUTH_NAME_MAX, DNET_AUTH_SECRET_MAX);
			err = DNET_EINVAL;
			break;
		}
		for (size_t i = 0; i < k->n; i++)
			if (!strcmp(k->v[i].name, name)) {
				dnet_log_error("--keys %s:%d: key %s given twice", path, lineno, name);
				err = DNET_EINVAL;
			}
		if (err)
			break;
		snprintf(key.name, sizeof(key.name), "%s", name);
		snprintf(key.secret, sizeof(key.secret), "%s", secret);
		struct dnet_key *nv = realloc(k->v, (k->n + 1) * sizeof(*nv));
		if (!nv) {
			err = DNET_ENOMEM;
			break;
		}
		k->v = nv;
		k->v[k->n++] = key;
	}
	fclose(f);
	if (!err && !k->n) {
		dnet_log_error("--keys %s: no keys in the file", path);
		err = DNET_EINVAL;
	}
	if (!err)
		k->have_keys = 1;
	return err;
}

/* The first non-empty line of the file, whitespace trimmed. */
static int load_cluster_key(const char *path, struct dnet_keys *k)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		dnet_log_error("--cluster-key %s: %s", path, strerror(errno));
		return DNET_EINVAL;
	}
	warn_mode(path);
	char line[1024];
	int err = DNET_EINVAL, lines = 0;
	while (fgets(line, sizeof(line), f) && ++lines <= AUTH_MAX_LINES) {
		char *p = line, *e;
		while (isspace((unsigned char)*p))
			p++;
		e = p + strlen(p);
		while (e > p && isspace((unsigned char)e[-1]))
			*--e = '\0';
		if (!*p)
			continue;
		if (strlen(p) > DNET_AUTH_SECRET_MAX) {
			dnet_log_error("--cluster-key %s: longer than %d bytes", path, DNET_AUTH_SECRET_MAX);
			break;
		}
		if (strlen(p) < 16)
			dnet_log_warn("--cluster-key %s: a key of %zu bytes is easy to guess; use 32 "
				      "random characters or more", path, strlen(p));
		snprintf(k->cluster, sizeof(k->cluster), "%s", p);
		k->have_cluster = 1;
		err = 0;
		break;
	}
	fclose(f);
	if (err && !k->have_cluster)
		dnet_log_error("--cluster-key %s: no key in the file", path);
	return err;
}

static int load(const struct dnet_config *cfg, struct dnet_keys *k)
{
	memset(k, 0, sizeof(*k));
	int err = 0;
	if (cfg->keys[0])
		err = load_keys(cfg->keys, k);
	if (!err && cfg->cluster_key[0])
		err = load_cluster_key(cfg->cluster_key, k);
	if (err)
		free(k->v);
	return err;
}

int dnet_auth_start(struct dnet_server *s)
{
	struct dnet_keys k;
	int err = load(&s->cfg, &k);
	if (err)
		return err;
	pthread_rwlock_wrlock(&keys_lock);
	keys = k;
	publish();
	pthread_rwlock_unlock(&keys_lock);
	if (k.have_cluster)
		dnet_peer_set_auth(DNET_AUTH_CLUSTER_NAME, k.cluster);
	if (k.have_keys)
		dnet_log_info("%zu client keys loaded from %s", k.n, s->cfg.keys);
	else if (!dnet_addr_is_loopback(s->cfg.listen))
		dnet_log_warn("no --keys: anyone who can reach %s can read, write and delete "
			      "objects; give --keys FILE (docs/security.md)", s->cfg.listen);
	if (!k.have_cluster && s->cfg.listen[0] && !dnet_addr_is_loopback(s->cfg.listen))
		dnet_log_warn("no --cluster-key: anyone who can reach %s can join the ring and "
			      "move data; give --cluster-key FILE (docs/security.md)", s->cfg.listen);
	return 0;
}

void dnet_auth_reload(struct dnet_server *s)
{
	struct dnet_keys k;
	if (load(&s->cfg, &k) != 0) {
		dnet_log_error("SIGHUP: keys not reloaded (the old ones stay in force)");
		return;
	}
	pthread_rwlock_wrlock(&keys_lock);
	struct dnet_keys old = keys;
	int toggled = old.have_cluster != k.have_cluster;
	if (toggled) {
		/* This node's own peer connections would not match: keep the old state. */
		k.have_cluster = old.have_cluster;
		memcpy(k.cluster, old.cluster, sizeof(k.cluster));
	}
	keys = k;
	publish();
	pthread_rwlock_unlock(&keys_lock);
	if (toggled)
		dnet_log_warn("SIGHUP: turning the cluster key on or off needs a restart");
	else if (k.have_cluster)
		dnet_peer_set_auth(DNET_AUTH_CLUSTER_NAME, k.cluster);
	free(old.v);
	OPENSSL_cleanse(&old, sizeof(old));
	dnet_log_info("SIGHUP: %zu client keys%s reloaded", k.n, k.have_cluster ? " and the cluster key" : "");
}

void dnet_auth_stop(void)
{
	pthread_rwlock_wrlock(&keys_lock);
	free(keys.v);
	OPENSSL_cleanse(&keys, sizeof(keys));
	memset(&keys, 0, sizeof(keys));
	publish();
	pthread_rwlock_unlock(&keys_lock);
}

uint32_t dnet_auth_initial_perm(void)
{
	return atomic_load(&need_client_key) ? DNET_PERM_NONE : DNET_PERM_ADMIN;
}

/* What a command needs. */
static uint32_t needed(const struct dnet_trans *t)
{
	switch (t->hdr.cmd) {
	case DNET_CMD_PING:
	case DNET_CMD_AUTH:
		return DNET_PERM_NONE;
	case DNET_CMD_READ:
	case DNET_CMD_LOOKUP:
	case DNET_CMD_STAT:
	case DNET_CMD_ROUTES:
		return DNET_PERM_READ;
	case DNET_CMD_WRITE:
	case DNET_CMD_DEL:
		return DNET_PERM_WRITE;
	case DNET_CMD_LEAVE:
	case DNET_CMD_RECOVER:
		return DNET_PERM_ADMIN;
	default: /* JOIN, SYNC */
		return DNET_PERM_NODE;
	}
}

int dnet_auth_allowed(const struct dnet_trans *t, int node_op)
{
	if (t->local)
		return 1;
	uint32_t need = node_op ? DNET_PERM_NODE : needed(t);
	uint32_t have = (uint32_t)atomic_load(&t->conn->perm);
	if (need == DNET_PERM_NONE)
		return 1;
	if (need == DNET_PERM_NODE)
		return (!atomic_load(&need_node_cert) || t->conn->tls_node) &&
		       (!atomic_load(&need_node_key) || have == DNET_PERM_NODE);
	return !atomic_load(&need_client_key) || have >= need;
}

/* The AUTH command (see common/auth.h). Returns 0 with a reply payload, or
 * DNET_E*; *close_conn asks for the connection to be closed after the reply. */
int dnet_auth_step(struct dnet_server *s, struct dnet_conn *c, const uint8_t *p, size_t len,
		   uint8_t *reply, size_t *rlen, int *close_conn)
{
	*close_conn = 0;
	*rlen = 0;
	if (!c || len < 6)
		return DNET_EPROTO;
	uint32_t step = dnet_get_u32(p);
	size_t nl = dnet_get_u16(p + 4);
	if (!nl || nl > DNET_AUTH_NAME_MAX || len < 6 + nl)
		return DNET_EPROTO;
	char name[DNET_AUTH_NAME_MAX + 1];
	memcpy(name, p + 6, nl);
	name[nl] = '\0';
	if (step == 1) {
		if (len != 6 + nl)
			return DNET_EPROTO;
		if (RAND_bytes(c->nonce, DNET_AUTH_NONCE) != 1)
			return DNET_ESYS;
		c->have_nonce = 1;
		memcpy(reply, c->nonce, DNET_AUTH_NONCE);
		*rlen = DNET_AUTH_NONCE;
		return 0;
	}
	if (step != 2 || len != 6 + nl + DNET_AUTH_MAC)
		return DNET_EPROTO;
	if (!c->have_nonce)
		return DNET_EPROTO;
	c->have_nonce = 0; /* a nonce answers one proof */
	uint8_t want[DNET_AUTH_MAC];
	uint32_t perm = DNET_PERM_NONE;
	int found = 0;
	pthread_rwlock_rdlock(&keys_lock);
	if (!strcmp(name, DNET_AUTH_CLUSTER_NAME)) {
		if (keys.have_cluster) {
			dnet_auth_mac(keys.cluster, strlen(keys.cluster), c->nonce, name, nl, want);
			found = 1;
			perm = DNET_PERM_NODE;
		}
	} else {
		for (size_t i = 0; i < keys.n; i++)
			if (!strcmp(keys.v[i].name, name)) {
				dnet_auth_mac(keys.v[i].secret, strlen(keys.v[i].secret), c->nonce, name,
					      nl, want);
				found = 1;
				perm = keys.v[i].perm;
			}
	}
	pthread_rwlock_unlock(&keys_lock);
	if (!found) /* compare anyway: unknown names take as long as wrong secrets */
		memset(want, 0, sizeof(want));
	if (!found || CRYPTO_memcmp(want, p + 6 + nl, DNET_AUTH_MAC) != 0) {
		atomic_fetch_add(&s->stats.auth_failed, 1);
		/* At most one line a second: refused attempts must not flood the log. */
		static _Atomic uint64_t last_log;
		uint64_t now = dnet_now_mono_ns(), prev = atomic_load(&last_log);
		if (dnet_ns_since(now, prev) > 1000000000ull &&
		    atomic_compare_exchange_strong(&last_log, &prev, now))
			dnet_log_warn("%s: authentication as %s refused (auth_failed in stat counts "
				      "them all)", c->peer, name);
		if (++c->auth_failures >= AUTH_MAX_FAILURES)
			*close_conn = 1;
		return DNET_EPERM;
	}
	atomic_store(&c->perm, (int)perm);
	atomic_fetch_add(&s->stats.auth_ok, 1);
	dnet_log_debug("%s: authenticated as %s", c->peer, name);
	dnet_put_u32(reply, perm);
	*rlen = 4;
	return 0;
}
