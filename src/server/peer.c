/* peer.c - blocking request/reply over a non-blocking socket with poll() deadlines. */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <stdatomic.h>
#include <stdio.h>

#include "common/auth.h"
#include "common/errors.h"
#include "common/log.h"
#include "common/tls.h"
#include "common/util.h"
#include "peer.h"

void dnet_peer_init(struct dnet_peer *p, const struct sockaddr_storage *ss, socklen_t sl)
{
	memset(p, 0, sizeof(*p));
	p->ss = *ss;
	p->sl = sl;
	p->fd = -1;
	dnet_addr_str((const struct sockaddr *)ss, p->name, sizeof(p->name));
}

int dnet_peer_init_str(struct dnet_peer *p, const char *hostport)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	int err = dnet_parse_addr(hostport, 1025, &ss, &sl);
	if (err)
		return err;
	dnet_peer_init(p, &ss, sl);
	return 0;
}

void dnet_peer_close(struct dnet_peer *p)
{
	if (p->ssl)
		SSL_free(p->ssl);
	p->ssl = NULL;
	if (p->fd >= 0)
		close(p->fd);
	p->fd = -1;
}

static pthread_mutex_t auth_lock = PTHREAD_MUTEX_INITIALIZER;
static char auth_name[DNET_AUTH_NAME_MAX + 1], auth_secret[DNET_AUTH_SECRET_MAX + 1];

void dnet_peer_set_auth(const char *name, const char *secret)
{
	pthread_mutex_lock(&auth_lock);
	snprintf(auth_name, sizeof(auth_name), "%s", name);
	snprintf(auth_secret, sizeof(auth_secret), "%s", secret);
	pthread_mutex_unlock(&auth_lock);
}

static SSL_CTX *tls_ctx;

void dnet_peer_set_tls(SSL_CTX *ctx)
{
	tls_ctx = ctx;
}

/* The cluster key handshake on a fresh connection, if one is set. */
static int peer_auth(int fd, SSL *ssl, uint64_t deadline)
{
	char name[sizeof(auth_name)], secret[sizeof(auth_secret)];
	pthread_mutex_lock(&auth_lock);
	memcpy(name, auth_name, sizeof(name));
	memcpy(secret, auth_secret, sizeof(secret));
	pthread_mutex_unlock(&auth_lock);
	if (!name[0])
		return 0;
	uint32_t perm;
	int err = dnet_auth_handshake(fd, ssl, name, secret, deadline, &perm);
	OPENSSL_cleanse(secret, sizeof(secret));
	return err;
}

static int do_connect(struct dnet_peer *p, uint64_t deadline)
{
	int fd = socket(p->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return dnet_from_errno(errno);
	if (connect(fd, (struct sockaddr *)&p->ss, p->sl) < 0) {
		if (errno != EINPROGRESS) {
			int e = dnet_from_errno(errno);
			close(fd);
			return e;
		}
		int err = dnet_wait_fd(fd, POLLOUT, deadline);
		int so = 0;
		socklen_t sol = sizeof(so);
		if (!err && getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &sol) == 0 && so)
			err = dnet_from_errno(so);
		if (err) {
			close(fd);
			return err;
		}
	}
	dnet_set_nodelay(fd);
	SSL *ssl = NULL;
	int err = tls_ctx ? dnet_tls_connect(tls_ctx, fd, deadline, &ssl) : 0;
	if (err) {
		/* At most one line a second: a peer refusing us is retried often. */
		static _Atomic uint64_t last_log;
		uint64_t now = dnet_now_mono_ns(), prev = atomic_load(&last_log);
		if (err != DNET_ETIMEDOUT && err != DNET_ECONNREFUSED &&
		    dnet_ns_since(now, prev) > 1000000000ull &&
		    atomic_compare_exchange_strong(&last_log, &prev, now))
			dnet_log_error("%s: TLS to this node failed: %s", p->name,
				       dnet_strerror(err));
		close(fd);
		return err;
	}
	err = peer_auth(fd, ssl, deadline);
	if (err) {
		static atomic_int warned;
		if (err == DNET_EPERM && !atomic_exchange(&warned, 1))
			dnet_log_error("%s refused this node's cluster key: is --cluster-key the same "
				       "on every node?", p->name);
		if (err == DNET_ETLSREQUIRED)
			dnet_log_error("%s: %s (this node has no --tls-cert)", p->name,
				       dnet_strerror(err));
		if (ssl)
			SSL_free(ssl);
		close(fd);
		return err;
	}
	p->fd = fd;
	p->ssl = ssl;
	return 0;
}

int dnet_peer_call(struct dnet_peer *p, uint8_t cmd, uint16_t flags, const uint8_t *id,
		   const void *a, size_t alen, const void *b, size_t blen, int timeout_ms,
		   struct dnet_cmd_hdr *rh, uint8_t **reply, size_t *rlen, size_t max_reply)
{
	uint64_t deadline = dnet_now_mono_ns() + (uint64_t)timeout_ms * 1000000ull;
	uint8_t hb[DNET_HDR_SIZE];
	int err;

	*reply = NULL;
	*rlen = 0;
	if (p->fd < 0 && (err = do_connect(p, deadline)))
		return err;
	struct dnet_cmd_hdr h = {.magic = DNET_MAGIC,
				 .version = DNET_PROTO_VERSION,
				 .cmd = cmd,
				 .flags = (uint16_t)(flags | DNET_FLAG_NEED_ACK),
				 .trans = ++p->trans,
				 .size = alen + blen};
	if (id)
		memcpy(h.id, id, DNET_ID_SIZE);
	dnet_hdr_encode(hb, &h);
	struct iovec iov[3] = {{hb, sizeof(hb)}, {(void *)a, alen}, {(void *)b, blen}};
	if ((err = dnet_tls_send_iov(p->fd, p->ssl, iov, 3, deadline)))
		goto fail;
	/* Replies to earlier, timed-out calls on this connection are skipped. */
	for (;;) {
		if ((err = dnet_tls_recv(p->fd, p->ssl, hb, sizeof(hb), deadline)))
			goto fail;
		dnet_hdr_decode(hb, sizeof(hb), rh);
		if (rh->magic != DNET_MAGIC || rh->version != DNET_PROTO_VERSION ||
		    !(rh->flags & DNET_FLAG_REPLY) || rh->size > max_reply) {
			err = rh->size > max_reply ? DNET_ETOOBIG : DNET_EPROTO;
			goto fail;
		}
		uint8_t *buf = NULL;
		if (rh->size) {
			buf = malloc((size_t)rh->size);
			if (!buf) {
				err = DNET_ENOMEM;
				goto fail;
			}
			if ((err = dnet_tls_recv(p->fd, p->ssl, buf, (size_t)rh->size, deadline))) {
				free(buf);
				goto fail;
			}
		}
		if (rh->trans != h.trans) {
			free(buf);
			continue;
		}
		*reply = buf;
		*rlen = (size_t)rh->size;
		return 0;
	}
fail:
	dnet_peer_close(p);
	return err;
}
