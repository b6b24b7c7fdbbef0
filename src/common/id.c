/* id.c - SHA-512 object IDs (OpenSSL libcrypto) and their hex forms. */
#include <string.h>

#include <openssl/sha.h>

#include "errors.h"
#include "id.h"

void dnet_id_from_key(uint8_t id[DNET_ID_SIZE], const void *key, size_t len)
{
	SHA512((const unsigned char *)key, len, id);
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
