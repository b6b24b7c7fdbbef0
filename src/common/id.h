/* id.h - object and node IDs: SHA-512 of a key name, hex forms, ring comparison. */
#ifndef DNET_ID_H
#define DNET_ID_H

#include <stddef.h>
#include <stdint.h>

#include "proto.h"

/* id = SHA-512(key[0..len)). */
void dnet_id_from_key(uint8_t id[DNET_ID_SIZE], const void *key, size_t len);
/* Lowercase hex of `n` bytes of id into out (2n+1 bytes, NUL-terminated). */
void dnet_id_to_hex(char *out, const uint8_t *id, size_t n);
/* Parse exactly 128 hex digits. Returns 0 or DNET_EINVAL. */
int dnet_id_from_hex(uint8_t id[DNET_ID_SIZE], const char *hex);
/* memcmp order: the ring's order. */
int dnet_id_cmp(const uint8_t *a, const uint8_t *b);

#endif
