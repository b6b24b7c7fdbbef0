/* auth.c - the client side of the AUTH handshake (see auth.h). */
#include <errno.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "auth.h"
#include "errors.h"
#include "proto.h"
#include "tls.h"
#include "util.h"

void dnet_auth_mac(const char *secret, size_t slen, const uint8_t nonce[DNET_AUTH_NONCE],
		   const char *name, size_t nlen, uint8_t out[DNET_AUTH_MAC])
{
	static const char tag[] = "elliptics-auth-v1";
	uint8_t msg[sizeof(tag) - 1 + DNET_AUTH_NONCE + DNET_AUTH_NAME_MAX];
	if (nlen > DNET_AUTH_NAME_MAX)
		nlen = DNET_AUTH_NAME_MAX;
	memcpy(msg, tag, sizeof(tag) - 1);
	memcpy(msg + sizeof(tag) - 1, nonce, DNET_AUTH_NONCE);
	memcpy(msg + sizeof(tag) - 1 + DNET_AUTH_NONCE, name, nlen);
	unsigned int len = DNET_AUTH_MAC;
	HMAC(EVP_sha256(), secret, (int)slen, msg, sizeof(tag) - 1 + DNET_AUTH_NONCE + nlen, out,
	     &len);
}

int dnet_auth_split(const char *spec, char name[DNET_AUTH_NAME_MAX + 1],
		    char secret[DNET_AUTH_SECRET_MAX + 1])
{
	const char *colon = spec ? strchr(spec, ':') : NULL;
	if (!colon)
		return DNET_EINVAL;
	size_t nl = (size_t)(colon - spec), sl = strlen(colon + 1);
	if (!nl || nl > DNET_AUTH_NAME_MAX || !sl || sl > DNET_AUTH_SECRET_MAX)
		return DNET_EINVAL;
	memcpy(name, spec, nl);
	name[nl] = '\0';
	memcpy(secret, colon + 1, sl + 1);
	return 0;
}

/* One AUTH request and its reply (payload up to `max` bytes into reply). */
static int auth_call(int fd, SSL *ssl, uint64_t trans, const uint8_t *payload, size_t len,
		     uint8_t *reply, size_t max, size_t *rlen, uint64_t deadline)
{
	uint8_t hb[DNET_HDR_SIZE];
	struct dnet_cmd_hdr h = {.magic = DNET_MAGIC,
				 .version = DNET_PROTO_VERSION,
				 .cmd = DNET_CMD_AUTH,
				 .flags = DNET_FLAG_NEED_ACK,
				 .trans = trans,
				 .size = len};
	dnet_hdr_encode(hb, &h);
	struct iovec iov[2] = {{hb, sizeof(hb)}, {(void *)payload, len}};
	int err = dnet_tls_send_iov(fd, ssl, iov, 2, deadline);
	if (!err)
		err = dnet_tls_recv(fd, ssl, hb, sizeof(hb), deadline);
	if (err)
		return err;
	struct dnet_cmd_hdr r;
	if (dnet_hdr_decode(hb, sizeof(hb), &r) || r.magic != DNET_MAGIC ||
	    !(r.flags & DNET_FLAG_REPLY) || r.trans != trans || r.cmd != DNET_CMD_AUTH ||
	    r.size > max)
		return DNET_EPROTO;
	if ((err = dnet_tls_recv(fd, ssl, reply, (size_t)r.size, deadline)))
		return err;
	*rlen = (size_t)r.size;
	return r.status;
}

int dnet_auth_handshake(int fd, SSL *ssl, const char *name, const char *secret,
			uint64_t deadline_ns, uint32_t *perm)
{
	size_t nl = strlen(name);
	if (!nl || nl > DNET_AUTH_NAME_MAX)
		return DNET_EINVAL;
	uint8_t req[4 + 2 + DNET_AUTH_NAME_MAX + DNET_AUTH_MAC], reply[64];
	size_t rlen = 0;
	dnet_put_u32(req, 1);
	dnet_put_u16(req + 4, (uint16_t)nl);
	memcpy(req + 6, name, nl);
	/* trans values far from a client's own (which start at 1) */
	int err = auth_call(fd, ssl, 0xa0000001ull, req, 6 + nl, reply, sizeof(reply), &rlen,
			    deadline_ns);
	if (err)
		return err;
	if (rlen != DNET_AUTH_NONCE)
		return DNET_EPROTO;
	dnet_put_u32(req, 2);
	dnet_auth_mac(secret, strlen(secret), reply, name, nl, req + 6 + nl);
	err = auth_call(fd, ssl, 0xa0000002ull, req, 6 + nl + DNET_AUTH_MAC, reply, sizeof(reply),
			&rlen, deadline_ns);
	if (err)
		return err;
	if (rlen != 4)
		return DNET_EPROTO;
	*perm = dnet_get_u32(reply);
	return 0;
}
