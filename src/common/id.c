/* id.c - SHA-512 object IDs (OpenSSL libcrypto) and their hex forms. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

#include "errors.h"
#include "id.h"

/* SHA512() looks the digest up and allocates a context on every call (OpenSSL 3):
 * over half the cost of hashing a short key, and a client hashes every key it
 * sends, once per copy. So the digest is fetched once and each thread keeps a
 * context (freed when the thread exits). */
static EVP_MD *sha512_md;
static pthread_key_t ctx_key;
static int ctx_ok;
static pthread_once_t id_once = PTHREAD_ONCE_INIT;

static void ctx_free(void *p)
{
	EVP_MD_CTX_free(p);
}

static void id_init(void)
{
	sha512_md = EVP_MD_fetch(NULL, "SHA512", NULL);
	ctx_ok = sha512_md && pthread_key_create(&ctx_key, ctx_free) == 0;
}

void dnet_id_from_key(uint8_t id[DNET_ID_SIZE], const void *key, size_t len)
{
	pthread_once(&id_once, id_init);
	EVP_MD_CTX *ctx = ctx_ok ? pthread_getspecific(ctx_key) : NULL;
	if (ctx_ok && !ctx && (ctx = EVP_MD_CTX_new()) && pthread_setspecific(ctx_key, ctx)) {
		EVP_MD_CTX_free(ctx);
		ctx = NULL;
	}
	unsigned int n;
	if (!ctx || !EVP_DigestInit_ex2(ctx, sha512_md, NULL) ||
	    !EVP_DigestUpdate(ctx, key, len) || !EVP_DigestFinal_ex(ctx, id, &n))
		SHA512((const unsigned char *)key, len, id); /* no memory: the slow way */
}

void dnet_id_to_hex(char *out, const uint8_t *id, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = hex[id[i] >> 4];
		out[2 * i + 1] = hex[id[i] & 0xf];
	}
	out[2 * n] = '\0';
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int dnet_id_from_hex(uint8_t id[DNET_ID_SIZE], const char *hex)
{
	if (!hex || strlen(hex) != 2 * DNET_ID_SIZE)
		return DNET_EINVAL;
	for (size_t i = 0; i < DNET_ID_SIZE; i++) {
		int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return DNET_EINVAL;
		id[i] = (uint8_t)((hi << 4) | lo);
	}
	return 0;
}

int dnet_id_cmp(const uint8_t *a, const uint8_t *b)
{
	return memcmp(a, b, DNET_ID_SIZE);
}
