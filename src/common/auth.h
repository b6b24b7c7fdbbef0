/* auth.h - the AUTH handshake (docs/security.md), shared by the client library,
 * node-to-node connections and the server.
 *
 * A connection proves it knows a named secret without sending it:
 *   1. client: AUTH {u32 step = 1, u16 name_len, name}
 *      node:   reply {nonce[32]} (random, per connection)
 *   2. client: AUTH {u32 step = 2, u16 name_len, name, mac[32]} with
 *      mac = HMAC-SHA256(secret, "elliptics-auth-v1" || nonce || name)
 *      node:   reply {u32 permission} or DNET_EPERM (an unknown name and a wrong
 *      secret look the same); after 3 failures the node closes the connection.
 * Nodes of a ring authenticate to each other as DNET_AUTH_CLUSTER_NAME with the
 * cluster key. */
#ifndef DNET_AUTH_H
#define DNET_AUTH_H

#include <stddef.h>
#include <stdint.h>

#define DNET_AUTH_NONCE 32
#define DNET_AUTH_MAC 32
#define DNET_AUTH_NAME_MAX 64
#define DNET_AUTH_SECRET_MAX 256
#define DNET_AUTH_CLUSTER_NAME "@cluster"

enum dnet_perm {
	DNET_PERM_NONE = 0,
	DNET_PERM_READ = 1,  /* READ, LOOKUP, STAT, ROUTES */
	DNET_PERM_WRITE = 2, /* and WRITE, DEL */
	DNET_PERM_ADMIN = 3, /* and LEAVE, RECOVER */
	DNET_PERM_NODE = 4,  /* and JOIN, SYNC, data movement: the cluster key only */
};

void dnet_auth_mac(const char *secret, size_t slen, const uint8_t nonce[DNET_AUTH_NONCE],
		   const char *name, size_t nlen, uint8_t out[DNET_AUTH_MAC]);

/* Run the handshake on a connected socket (blocking, non-blocking fds are polled)
 * before anything else is sent on it; over ssl when not NULL (a TLS link). Returns 0 and *perm,
 * DNET_EPERM if refused, or a transport error. */
struct ssl_st;
int dnet_auth_handshake(int fd, struct ssl_st *ssl, const char *name, const char *secret,
			uint64_t deadline_ns, uint32_t *perm);

/* "NAME:SECRET" -> name, secret (NUL-terminated copies). DNET_EINVAL if malformed. */
int dnet_auth_split(const char *spec, char name[DNET_AUTH_NAME_MAX + 1],
		    char secret[DNET_AUTH_SECRET_MAX + 1]);

#endif
