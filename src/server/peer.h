/* peer.h - blocking request/reply to another node, for the membership and data
 * movement threads (never the network loops or IO workers: those must not block
 * on other nodes). One persistent connection per peer, re-established on error. */
#ifndef DNET_PEER_H
#define DNET_PEER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "common/proto.h"

struct dnet_peer {
	struct sockaddr_storage ss;
	socklen_t sl;
	char name[64]; /* "HOST:PORT" for logs */
	int fd;        /* -1 while not connected */
	struct ssl_st *ssl; /* the TLS session when the node uses TLS */
	uint64_t trans;
};

void dnet_peer_init(struct dnet_peer *p, const struct sockaddr_storage *ss, socklen_t sl);
int dnet_peer_init_str(struct dnet_peer *p, const char *hostport);
void dnet_peer_close(struct dnet_peer *p);
/* Every peer connection made from now on authenticates with name and secret
 * (the cluster key) before its first request. */
void dnet_peer_set_auth(const char *name, const char *secret);
/* Every peer connection made from now on speaks TLS with this (client) context;
 * NULL: plaintext. Set once at startup, before any peer connects. */
struct ssl_ctx_st;
void dnet_peer_set_tls(struct ssl_ctx_st *ctx);

/* Send one request (header + payload parts a and b) and wait for its reply, all
 * within timeout_ms. The reply header goes to *rh; a reply payload (at most
 * max_reply bytes, else DNET_ETOOBIG) into a malloc()ed *reply (NULL if empty).
 * Returns 0 when a reply arrived (its status is rh->status) or a transport error
 * (the connection is then closed). */
int dnet_peer_call(struct dnet_peer *p, uint8_t cmd, uint16_t flags, const uint8_t *id,
		   const void *a, size_t alen, const void *b, size_t blen, int timeout_ms,
		   struct dnet_cmd_hdr *rh, uint8_t **reply, size_t *rlen, size_t max_reply);

#endif
