/* tls.h - TLS (OpenSSL, TLS 1.3 only) for client and node links: contexts, the
 * blocking handshake and deadline IO of the client side, and error mapping.
 * docs/security.md says what is protected and how to set it up.
 *
 * Threads: an SSL_CTX may be shared; one SSL object must never be used by two
 * threads at once (callers serialize: the server under conn->lock). */
#ifndef DNET_TLS_H
#define DNET_TLS_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

struct iovec;

/* What a context is for. */
enum dnet_tls_role {
	DNET_TLS_SERVER = 0, /* accepts: cert + key required */
	DNET_TLS_CLIENT = 1, /* connects: ca required (the peer's cert is verified) */
};

/* Build a context. Server: cert + key; with ca, peers are asked for a certificate
 * and one they show must verify against ca; require_peer_cert refuses peers that
 * show none. Client: ca (peers' certificates must verify against it); cert + key
 * optional (presented when the peer asks). NULL with a one-line reason in err. */
SSL_CTX *dnet_tls_ctx_new(enum dnet_tls_role role, const char *cert, const char *key,
			  const char *ca, int require_peer_cert, char *err, size_t errlen);

/* Client handshake on a connected (non-blocking) socket, polled until deadline
 * (monotonic ns). 0 and *out, or DNET_ETLS* / DNET_ETIMEDOUT / a transport error. */
int dnet_tls_connect(SSL_CTX *ctx, int fd, uint64_t deadline, SSL **out);

/* After a failed handshake (SSL_ERROR_SSL on ssl): which DNET_ETLS* code fits best.
 * Reads (and clears) this thread's OpenSSL error queue; the text goes to why. */
int dnet_tls_handshake_error(SSL *ssl, int client, char *why, size_t whylen);

/* Blocking-with-deadline IO over ssl, or over the plain socket when ssl is NULL
 * (then the same as dnet_send_iov_deadline / dnet_recv_deadline). */
int dnet_tls_send_iov(int fd, SSL *ssl, struct iovec *iov, int n, uint64_t deadline);
int dnet_tls_recv(int fd, SSL *ssl, void *buf, size_t len, uint64_t deadline);

/* Non-blocking write of buf over ssl: bytes written (> 0), 0 when the socket is
 * full (try again with the same buf and len when writable), or a DNET_E* code. */
long dnet_tls_write_nb(SSL *ssl, const void *buf, size_t len);
/* Non-blocking read: bytes (> 0), 0 on EOF, -1 with errno EAGAIN when nothing is
 * there (*want_write set if the TLS layer must send first), or -1 with errno set
 * (and *status a DNET_E* code for a TLS failure, e.g. DNET_ETLSCERT). */
long dnet_tls_read_nb(SSL *ssl, void *buf, size_t len, int *want_write, int *status);

/* The process ignores SIGPIPE: TLS writes need not block it around each write. */
void dnet_tls_sigpipe_ignored(void);

/* Is kernel TLS sending on for ssl (then SSL_sendfile works)? */
int dnet_tls_ktls_send(SSL *ssl);

#endif
