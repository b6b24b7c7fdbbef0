/* tls.c - TLS contexts, the client-side blocking handshake, deadline IO over TLS
 * and the mapping of OpenSSL failures to DNET_ETLS* codes (see tls.h). */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <openssl/err.h>
#include <openssl/x509.h>

#include "errors.h"
#include "tls.h"
#include "util.h"

static void last_error(char *err, size_t errlen, const char *what, const char *file)
{
	unsigned long e = ERR_get_error();
	char buf[256] = "";
	if (e)
		ERR_error_string_n(e, buf, sizeof(buf));
	const char *reason = e ? ERR_reason_error_string(e) : NULL;
	snprintf(err, errlen, "%s %s: %s", what, file ? file : "",
		 reason ? reason : (e ? buf : "cannot be loaded"));
	ERR_clear_error();
}

SSL_CTX *dnet_tls_ctx_new(enum dnet_tls_role role, const char *cert, const char *key,
			  const char *ca, int require_peer_cert, char *err, size_t errlen)
{
	ERR_clear_error();
	SSL_CTX *ctx =
	    SSL_CTX_new(role == DNET_TLS_SERVER ? TLS_server_method() : TLS_client_method());
	if (!ctx) {
		last_error(err, errlen, "TLS:", "cannot create a context");
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
	/* AES-128-GCM first: the fastest with AES-NI, and as strong as needed. */
	SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
				      "TLS_CHACHA20_POLY1305_SHA256");
	/* Non-blocking sockets: partial writes, a retried write may come from a moved
	 * buffer, no automatic retries; idle connections keep no buffers. Messages frame
	 * themselves, so an EOF without close_notify is just an EOF. Kernel TLS where the
	 * kernel has it (SSL_sendfile then sends stored files without copying). */
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
				  SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_clear_mode(ctx, SSL_MODE_AUTO_RETRY);
	SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION |
				     SSL_OP_ENABLE_KTLS);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	/* Read what the socket has, not a record header and then its body: half the
	 * read calls or fewer. The bytes this keeps beyond one record are what SSL_has_pending
	 * reports (callers must read on while it says so). */
	SSL_CTX_set_read_ahead(ctx, 1);
	SSL_CTX_set_default_read_buffer_len(ctx, 64u << 10); /* up to four records a read */
	if (role == DNET_TLS_SERVER)
		SSL_CTX_set_num_tickets(ctx,
					0); /* no resumption: nothing to send after the handshake */
	if (cert && *cert) {
		if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
			last_error(err, errlen, "TLS certificate", cert);
			goto fail;
		}
		if (!key || !*key) {
			snprintf(err, errlen, "TLS certificate %s: a key is needed too (--tls-key)",
				 cert);
			goto fail;
		}
		if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
			if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH) {
				snprintf(err, errlen,
					 "TLS key %s does not belong to certificate %s", key, cert);
				ERR_clear_error();
			} else {
				last_error(err, errlen, "TLS key", key);
			}
			goto fail;
		}
		if (SSL_CTX_check_private_key(ctx) != 1) {
			snprintf(err, errlen, "TLS key %s does not belong to certificate %s", key,
				 cert);
			goto fail;
		}
	} else if (role == DNET_TLS_SERVER || (key && *key)) {
		snprintf(err, errlen, "TLS: a certificate (--tls-cert) is needed%s",
			 role == DNET_TLS_SERVER ? "" : " with --tls-key");
		goto fail;
	}
	if (ca && *ca) {
		if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
			last_error(err, errlen, "TLS CA", ca);
			goto fail;
		}
		if (role == DNET_TLS_SERVER) {
			/* Ask every peer for a certificate: nodes show theirs (and must, to act
			 * as nodes); clients may show none unless require_peer_cert. */
			SSL_CTX_set_verify(
			    ctx,
			    SSL_VERIFY_PEER |
				(require_peer_cert ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0),
			    NULL);
			STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca);
			if (names)
				SSL_CTX_set_client_CA_list(ctx, names);
		} else {
			SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
		}
	} else if (role == DNET_TLS_CLIENT) {
		snprintf(err, errlen, "TLS: a CA file (--tls-ca) is needed to verify nodes");
		goto fail;
	}
	ERR_clear_error();
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

int dnet_tls_handshake_error(SSL *ssl, int client, char *why, size_t whylen)
{
	unsigned long e = ERR_peek_last_error();
	int reason = ERR_GET_REASON(e);
	const char *rs = e ? ERR_reason_error_string(e) : NULL;
	long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
	int code = DNET_ETLS;
	if (vr != X509_V_OK) {
		code = DNET_ETLSCERT;
		rs = X509_verify_cert_error_string(vr);
	} else if (ERR_GET_LIB(e) == ERR_LIB_SSL) {
		switch (reason) {
		case SSL_R_WRONG_VERSION_NUMBER:
		case SSL_R_PACKET_LENGTH_TOO_LONG:
		case SSL_R_UNKNOWN_PROTOCOL:
		case SSL_R_HTTP_REQUEST:
		case SSL_R_UNSUPPORTED_PROTOCOL:
			/* Not TLS at all on the other side (or an old TLS). */
			code = client ? DNET_ENOTLS : DNET_ETLSREQUIRED;
			break;
		case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
		case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
		case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
		case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
		case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
		case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
		case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
		case SSL_R_TLSV1_ALERT_DECRYPT_ERROR:
		case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
		case SSL_R_CERTIFICATE_VERIFY_FAILED:
			code = DNET_ETLSCERT;
			break;
		default:
			break;
		}
	}
	if (why)
		snprintf(why, whylen, "%s", rs ? rs : "the peer closed the connection");
	ERR_clear_error();
	return code;
}

static atomic_int sigpipe_ignored;

void dnet_tls_sigpipe_ignored(void)
{
	atomic_store(&sigpipe_ignored, 1);
}

/* SSL_write goes through write(2), which raises SIGPIPE on a closed peer: a library
 * must not kill its caller for that. Block the signal around the write and swallow
 * one we caused (unless the process ignores SIGPIPE anyway, as ellipticsd does). */
static int ssl_write_nosig(SSL *ssl, const void *buf, int len)
{
	if (atomic_load_explicit(&sigpipe_ignored, memory_order_relaxed))
		return SSL_write(ssl, buf, len);
	sigset_t pipe_set, old, pending;
	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	sigpending(&pending);
	int was_pending = sigismember(&pending, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
	int w = SSL_write(ssl, buf, len);
	int e = errno;
	if (w <= 0 && e == EPIPE && !was_pending) {
		struct timespec zero = {0, 0};
		while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
			;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	errno = e;
	return w;
}

/* A TLS failure after the handshake: with TLS 1.3 a server refusing our client
 * certificate says so (an alert) only when we first read. Clears the error queue. */
static int io_error(SSL *ssl)
{
	int code = dnet_tls_handshake_error(ssl, 1, NULL, 0);
	return code == DNET_ETLSCERT ? code : DNET_ECONNRESET;
}

/* Wait for what the last SSL call on ssl said it needs. */
static int wait_ssl(int fd, SSL *ssl, int ret, uint64_t deadline, int *hs_code, int client)
{
	int e = SSL_get_error(ssl, ret);
	switch (e) {
	case SSL_ERROR_WANT_READ:
		return dnet_wait_fd(fd, POLLIN, deadline);
	case SSL_ERROR_WANT_WRITE:
		return dnet_wait_fd(fd, POLLOUT, deadline);
	case SSL_ERROR_ZERO_RETURN:
		return DNET_ECONNRESET;
	case SSL_ERROR_SYSCALL:
		if (hs_code && !ERR_peek_error()) {
			/* The peer hung up mid-handshake: a TLS node refusing our certificate
			 * closes; a plaintext node answers an error and closes. */
			*hs_code = 1;
			return client ? DNET_ENOTLS : DNET_ECONNRESET;
		}
		ERR_clear_error();
		return errno ? dnet_from_errno(errno) : DNET_ECONNRESET;
	default:
		if (hs_code) {
			*hs_code = 1;
			return dnet_tls_handshake_error(ssl, client, NULL, 0);
		}
		return io_error(ssl);
	}
}

int dnet_tls_connect(SSL_CTX *ctx, int fd, uint64_t deadline, SSL **out)
{
	ERR_clear_error();
	SSL *ssl = SSL_new(ctx);
	if (!ssl)
		return DNET_ENOMEM;
	if (SSL_set_fd(ssl, fd) != 1) {
		SSL_free(ssl);
		return DNET_ENOMEM;
	}
	SSL_set_connect_state(ssl);
	for (;;) {
		ERR_clear_error();
		int r = SSL_do_handshake(ssl);
		if (r == 1)
			break;
		int hs = 0;
		int err = wait_ssl(fd, ssl, r, deadline, &hs, 1);
		if (err) {
			SSL_free(ssl);
			return err;
		}
	}
	*out = ssl;
	return 0;
}

int dnet_tls_send_iov(int fd, SSL *ssl, struct iovec *iov, int n, uint64_t deadline)
{
	if (!ssl)
		return dnet_send_iov_deadline(fd, iov, n, deadline);
	for (int i = 0; i < n; i++) {
		const char *p = iov[i].iov_base;
		size_t len = iov[i].iov_len;
		while (len) {
			int chunk = len > INT_MAX ? INT_MAX : (int)len;
			ERR_clear_error();
			errno = 0;
			int w = ssl_write_nosig(ssl, p, chunk);
			if (w > 0) {
				p += w;
				len -= (size_t)w;
				continue;
			}
			int err = wait_ssl(fd, ssl, w, deadline, NULL, 1);
			if (err)
				return err;
		}
	}
	return 0;
}

int dnet_tls_recv(int fd, SSL *ssl, void *buf, size_t len, uint64_t deadline)
{
	if (!ssl)
		return dnet_recv_deadline(fd, buf, len, deadline);
	char *p = buf;
	while (len) {
		int chunk = len > INT_MAX ? INT_MAX : (int)len;
		ERR_clear_error();
		int r = SSL_read(ssl, p, chunk);
		if (r > 0) {
			p += r;
			len -= (size_t)r;
			continue;
		}
		int err = wait_ssl(fd, ssl, r, deadline, NULL, 1);
		if (err)
			return err;
	}
	return 0;
}

long dnet_tls_write_nb(SSL *ssl, const void *buf, size_t len)
{
	int chunk = len > (1u << 30) ? (1 << 30) : (int)len;
	ERR_clear_error();
	errno = 0;
	int w = ssl_write_nosig(ssl, buf, chunk);
	if (w > 0)
		return w;
	switch (SSL_get_error(ssl, w)) {
	case SSL_ERROR_WANT_WRITE:
	case SSL_ERROR_WANT_READ: /* TLS 1.3 without renegotiation: only a full socket */
		return 0;
	case SSL_ERROR_SYSCALL:
		ERR_clear_error();
		return errno == EPIPE || errno == ECONNRESET || !errno ? DNET_ECONNRESET
								       : dnet_from_errno(errno);
	default:
		return io_error(ssl);
	}
}

long dnet_tls_read_nb(SSL *ssl, void *buf, size_t len, int *want_write, int *status)
{
	*status = 0;
	int chunk = len > (1u << 30) ? (1 << 30) : (int)len;
	*want_write = 0;
	ERR_clear_error();
	errno = 0;
	int r = SSL_read(ssl, buf, chunk);
	if (r > 0)
		return r;
	switch (SSL_get_error(ssl, r)) {
	case SSL_ERROR_WANT_WRITE:
		*want_write = 1;
		/* fall through */
	case SSL_ERROR_WANT_READ:
		errno = EAGAIN;
		return -1;
	case SSL_ERROR_ZERO_RETURN:
		return 0;
	case SSL_ERROR_SYSCALL:
		ERR_clear_error();
		if (!errno)
			return 0; /* EOF without close_notify */
		return -1;
	default:
		*status = io_error(ssl);
		errno = EPROTO;
		return -1;
	}
}

int dnet_tls_ktls_send(SSL *ssl)
{
	return BIO_get_ktls_send(SSL_get_wbio(ssl)) ? 1 : 0;
}
