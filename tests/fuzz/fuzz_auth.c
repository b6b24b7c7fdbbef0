/* fuzz_auth.c - the AUTH handshake (common/auth.h) on hostile bytes, both sides:
 *   input[0] even: the node's side. The rest is a sequence of AUTH payloads
 *     {u8 flags, u16 len (LE), payload} fed to dnet_auth_step() on one connection of
 *     a node with client keys and a cluster key. flags bit 1: the harness writes the
 *     right MAC for the payload's name into its last 32 bytes (the fuzzer cannot
 *     compute HMACs), so the success path is reached too.
 *     Checks: a proof is accepted only with the right MAC for a fresh nonce, and then
 *     with the key's permission; replies stay within their buffer; a connection is
 *     closed after 3 failures.
 *   input[0] odd: the client's side. The rest is what a hostile node answers
 *     dnet_auth_handshake() (through a socketpair), and a NAME:SECRET spec for
 *     dnet_auth_split().
 *
 * libFuzzer: make fuzz && build/fuzz/fuzz_auth tests/fuzz/corpus/auth
 * standalone: build/tests/fuzz_auth -n 20000 tests/fuzz/corpus/auth */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/auth.h"
#include "common/errors.h"
#include "common/log.h"
#include "common/proto.h"
#include "common/util.h"
#include "server/server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const struct {
	const char *name, *secret;
	uint32_t perm;
} known[] = {
    {"reader", "reader-secret", DNET_PERM_READ},
    {"writer", "writer-secret-0123456789", DNET_PERM_WRITE},
    {"root", "r", DNET_PERM_ADMIN},
    {DNET_AUTH_CLUSTER_NAME, "the-cluster-key-of-this-ring-0123", DNET_PERM_NODE},
};
#define NKNOWN (sizeof(known) / sizeof(known[0]))

static struct dnet_server srv;

static void fail(const char *what)
{
	fprintf(stderr, "fuzz_auth: contract broken: %s\n", what);
	abort();
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	if (!f || fputs(text, f) < 0)
		abort();
	fclose(f);
	chmod(path, 0600);
}

static void start_once(void)
{
	static int started;
	if (started)
		return;
	started = 1;
	dnet_log_level = -1;
	char dir[] = "/tmp/elliptics-fuzz-auth.XXXXXX";
	if (!mkdtemp(dir))
		abort();
	dnet_config_defaults(&srv.cfg);
	snprintf(srv.cfg.keys, sizeof(srv.cfg.keys), "%s/keys", dir);
	snprintf(srv.cfg.cluster_key, sizeof(srv.cfg.cluster_key), "%s/cluster", dir);
	char text[1024] = "";
	for (size_t i = 0; i + 1 < NKNOWN; i++) {
		static const char *pn[] = {"", "read", "write", "admin"};
		size_t l = strlen(text);
		snprintf(text + l, sizeof(text) - l, "%s %s %s\n", known[i].name, known[i].secret,
			 pn[known[i].perm]);
	}
	write_file(srv.cfg.keys, text);
	write_file(srv.cfg.cluster_key, known[NKNOWN - 1].secret);
	if (dnet_auth_start(&srv) != 0)
		abort();
	unlink(srv.cfg.keys);
	unlink(srv.cfg.cluster_key);
	rmdir(dir);
}

static void node_side(const uint8_t *d, size_t size)
{
	struct dnet_conn *c = calloc(1, sizeof(*c));
	if (!c)
		abort();
	snprintf(c->peer, sizeof(c->peer), "fuzz");
	atomic_store(&c->perm, (int)dnet_auth_initial_perm());
	int closed = 0, failures = 0;
	size_t off = 0;
	while (off + 3 <= size && !closed) {
		uint8_t flags = d[off];
		size_t len = (size_t)d[off + 1] | (size_t)d[off + 2] << 8;
		off += 3;
		if (len > size - off)
			len = size - off;
		/* an exact-size heap copy: ASan sees any read past the payload */
		uint8_t *p = malloc(len ? len : 1);
		if (!p)
			abort();
		memcpy(p, d + off, len);
		off += len;
		int fixed = -1; /* index of the key whose MAC the harness wrote */
		if ((flags & 1) && len >= 6 + DNET_AUTH_MAC && c->have_nonce &&
		    dnet_get_u32(p) == 2) {
			size_t nl = dnet_get_u16(p + 4);
			for (size_t k = 0; k < NKNOWN && nl <= DNET_AUTH_NAME_MAX; k++)
				if (len == 6 + nl + DNET_AUTH_MAC && strlen(known[k].name) == nl &&
				    !memcmp(p + 6, known[k].name, nl)) {
					dnet_auth_mac(known[k].secret, strlen(known[k].secret),
						      c->nonce, known[k].name, nl, p + 6 + nl);
					fixed = (int)k;
				}
		}
		uint8_t reply[64 + 16];
		memset(reply + 64, 0xa5, 16);
		size_t rlen = 12345;
		int had_nonce = c->have_nonce;
		int err = dnet_auth_step(&srv, c, p, len, reply, &rlen, &closed);
		for (int i = 64; i < 80; i++)
			if (reply[i] != 0xa5)
				fail("reply written past 64 bytes");
		if (err == 0 && rlen > 64)
			fail("reply length past the buffer");
		uint32_t step = len >= 4 ? dnet_get_u32(p) : 0;
		if (err == 0 && step == 2) {
			if (fixed < 0 || !had_nonce)
				fail(
				    "a proof without the right MAC for a fresh nonce was accepted");
			if (rlen != 4 || dnet_get_u32(reply) != known[fixed].perm ||
			    (uint32_t)atomic_load(&c->perm) != known[fixed].perm)
				fail("accepted with the wrong permission");
		}
		if (fixed >= 0 && err != 0)
			fail("the right MAC for a fresh nonce was refused");
		if (err == DNET_EPERM)
			failures++;
		if (failures >= 3 && !closed)
			fail("3 failures and the connection stays open");
		free(p);
	}
	free(c);
}

static void client_side(const uint8_t *d, size_t size)
{
	/* d = hostile node's bytes, '\0', NAME:SECRET spec */
	const uint8_t *nul = memchr(d, 0, size);
	size_t srv_len = nul ? (size_t)(nul - d) : size;
	if (srv_len > 32768)
		srv_len = 32768;
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
		abort();
	int sz = 1 << 17;
	setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
	fcntl(sv[0], F_SETFL, O_NONBLOCK);
	size_t off = 0;
	while (off < srv_len) {
		ssize_t w = send(sv[0], d + off, srv_len - off, MSG_NOSIGNAL);
		if (w <= 0)
			break; /* the rest does not fit: the handshake sees a short stream */
		off += (size_t)w;
	}
	shutdown(sv[0], SHUT_WR);
	uint32_t perm = 0xdeadbeef;
	int err = dnet_auth_handshake(sv[1], NULL, "writer", known[1].secret,
				      dnet_now_mono_ns() + 2000000000ull, &perm);
	if (err == 0 && perm == 0xdeadbeef)
		fail("a handshake succeeded without a permission");
	close(sv[0]);
	close(sv[1]);
	if (nul) {
		size_t sl = size - srv_len - 1;
		char *spec = malloc(sl + 1);
		if (!spec)
			abort();
		memcpy(spec, nul + 1, sl);
		spec[sl] = '\0';
		char name[DNET_AUTH_NAME_MAX + 1], secret[DNET_AUTH_SECRET_MAX + 1];
		if (dnet_auth_split(spec, name, secret) == 0 &&
		    (!name[0] || strlen(name) > DNET_AUTH_NAME_MAX || !secret[0] ||
		     strlen(secret) > DNET_AUTH_SECRET_MAX))
			fail("dnet_auth_split accepted an empty or overlong part");
		free(spec);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	start_once();
	if (size < 1)
		return 0;
	if (data[0] & 1)
		client_side(data + 1, size - 1);
	else
		node_side(data + 1, size - 1);
	return 0;
}

#ifdef DNET_FUZZ_STANDALONE
#include "fuzz_main.h"

static void put_entry(FILE *f, uint8_t flags, const uint8_t *p, size_t len)
{
	uint8_t h[3] = {flags, (uint8_t)len, (uint8_t)(len >> 8)};
	fwrite(h, 1, 3, f);
	fwrite(p, 1, len, f);
}

static size_t auth_payload(uint8_t *p, uint32_t step, const char *name, int mac)
{
	size_t nl = strlen(name);
	dnet_put_u32(p, step);
	dnet_put_u16(p + 4, (uint16_t)nl);
	memcpy(p + 6, name, nl);
	if (mac)
		memset(p + 6 + nl, 0x5a, DNET_AUTH_MAC);
	return 6 + nl + (mac ? DNET_AUTH_MAC : 0);
}

static void fz_make_seeds(const char *dir)
{
	uint8_t p[256];
	for (size_t k = 0; k < NKNOWN; k++) {
		/* node side: a full good exchange, then a wrong proof and a replay */
		FILE *f = fz_seed_open(dir, "node-%s",
				       known[k].name[0] == '@' ? "cluster" : known[k].name);
		fputc(0, f);
		put_entry(f, 0, p, auth_payload(p, 1, known[k].name, 0));
		put_entry(f, 1, p, auth_payload(p, 2, known[k].name, 1));
		put_entry(f, 0, p, auth_payload(p, 1, known[k].name, 0));
		put_entry(f, 0, p, auth_payload(p, 2, known[k].name, 1));
		put_entry(f, 1, p, auth_payload(p, 2, known[k].name, 1));
		fclose(f);
	}
	FILE *f = fz_seed_open(dir, "node-unknown-3-failures");
	fputc(0, f);
	for (int i = 0; i < 4; i++) {
		put_entry(f, 0, p, auth_payload(p, 1, "nobody", 0));
		put_entry(f, 1, p, auth_payload(p, 2, "nobody", 1));
	}
	fclose(f);
	/* client side: a node that answers a nonce then a permission */
	f = fz_seed_open(dir, "client-good");
	fputc(1, f);
	for (uint64_t t = 1; t <= 2; t++) {
		struct dnet_cmd_hdr h = {.magic = DNET_MAGIC,
					 .version = DNET_PROTO_VERSION,
					 .cmd = DNET_CMD_AUTH,
					 .flags = DNET_FLAG_REPLY,
					 .trans = 0xa0000000ull + t,
					 .size = t == 1 ? DNET_AUTH_NONCE : 4};
		uint8_t hb[DNET_HDR_SIZE];
		dnet_hdr_encode(hb, &h);
		fwrite(hb, 1, sizeof(hb), f);
		memset(p, (int)t, DNET_AUTH_NONCE);
		fwrite(p, 1, (size_t)h.size, f);
	}
	fputc(0, f);
	fputs("name:secret", f);
	fclose(f);
}

int main(int argc, char **argv)
{
	return fz_main("fuzz_auth", argc, argv);
}
#endif
