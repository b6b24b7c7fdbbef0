/* test_id.c - unit tests of object IDs (src/common/id.c) and status codes
 * (src/common/errors.c): SHA-512 vectors, hex forms, the error tables. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/errors.h"
#include "common/id.h"

/* FIPS 180-2 test vectors */
static const char sha512_empty[] =
    "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
    "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e";
static const char sha512_abc[] =
    "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
    "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f";

static void test_sha512_vectors(void **state)
{
	(void)state;
	uint8_t id[DNET_ID_SIZE];
	char hex[2 * DNET_ID_SIZE + 1];
	dnet_id_from_key(id, "", 0);
	dnet_id_to_hex(hex, id, DNET_ID_SIZE);
	assert_string_equal(hex, sha512_empty);
	dnet_id_from_key(id, "abc", 3);
	dnet_id_to_hex(hex, id, DNET_ID_SIZE);
	assert_string_equal(hex, sha512_abc);
	/* a key with a NUL byte inside is hashed whole */
	uint8_t id2[DNET_ID_SIZE];
	dnet_id_from_key(id2, "abc\0d", 5);
	assert_memory_not_equal(id, id2, DNET_ID_SIZE);
}

/* Each thread hashes with its own context (id.c): threads hashing at once all get
 * the right IDs, and thread exit frees the context (ASan would see a leak). */
static void *hash_many(void *arg)
{
	uint8_t id[DNET_ID_SIZE];
	char hex[2 * DNET_ID_SIZE + 1];
	long bad = 0;
	for (int i = 0; i < 2000; i++) {
		dnet_id_from_key(id, i & 1 ? "abc" : "", i & 1 ? 3 : 0);
		dnet_id_to_hex(hex, id, DNET_ID_SIZE);
		bad += strcmp(hex, i & 1 ? sha512_abc : sha512_empty) != 0;
	}
	return (void *)bad;
}

static void test_sha512_threads(void **state)
{
	(void)state;
	pthread_t t[4];
	for (int i = 0; i < 4; i++)
		assert_int_equal(pthread_create(&t[i], NULL, hash_many, NULL), 0);
	for (int i = 0; i < 4; i++) {
		void *bad;
		assert_int_equal(pthread_join(t[i], &bad), 0);
		assert_int_equal((long)bad, 0);
	}
}

static void test_hex_roundtrip(void **state)
{
	(void)state;
	uint8_t id[DNET_ID_SIZE], back[DNET_ID_SIZE];
	char hex[2 * DNET_ID_SIZE + 1];
	for (int i = 0; i < DNET_ID_SIZE; i++)
		id[i] = (uint8_t)(i * 37 + 11);
	dnet_id_to_hex(hex, id, DNET_ID_SIZE);
	assert_int_equal(strlen(hex), 2 * DNET_ID_SIZE);
	assert_int_equal(dnet_id_from_hex(back, hex), 0);
	assert_memory_equal(id, back, DNET_ID_SIZE);
	/* upper case is accepted */
	for (char *p = hex; *p; p++)
		if (*p >= 'a' && *p <= 'f')
			*p = (char)(*p - 'a' + 'A');
	assert_int_equal(dnet_id_from_hex(back, hex), 0);
	assert_memory_equal(id, back, DNET_ID_SIZE);
	/* prefix form */
	char shorthex[9];
	dnet_id_to_hex(shorthex, id, 4);
	assert_int_equal(strlen(shorthex), 8);
	assert_memory_equal(shorthex, "0b30557a", 8);
}

static void test_hex_bad(void **state)
{
	(void)state;
	uint8_t id[DNET_ID_SIZE];
	char hex[2 * DNET_ID_SIZE + 2];
	memset(hex, 'a', 2 * DNET_ID_SIZE);
	hex[2 * DNET_ID_SIZE] = '\0';
	assert_int_equal(dnet_id_from_hex(id, hex), 0);
	hex[5] = 'g';
	assert_int_equal(dnet_id_from_hex(id, hex), DNET_EINVAL);
	hex[5] = ' ';
	assert_int_equal(dnet_id_from_hex(id, hex), DNET_EINVAL);
	hex[5] = 'a';
	hex[2 * DNET_ID_SIZE - 1] = '\0'; /* too short */
	assert_int_equal(dnet_id_from_hex(id, hex), DNET_EINVAL);
	hex[2 * DNET_ID_SIZE - 1] = 'a';
	hex[2 * DNET_ID_SIZE] = 'a'; /* too long */
	hex[2 * DNET_ID_SIZE + 1] = '\0';
	assert_int_equal(dnet_id_from_hex(id, hex), DNET_EINVAL);
	assert_int_equal(dnet_id_from_hex(id, ""), DNET_EINVAL);
	assert_int_equal(dnet_id_from_hex(id, NULL), DNET_EINVAL);
}

static void test_id_cmp(void **state)
{
	(void)state;
	uint8_t a[DNET_ID_SIZE], b[DNET_ID_SIZE];
	memset(a, 0, sizeof(a));
	memset(b, 0, sizeof(b));
	assert_int_equal(dnet_id_cmp(a, b), 0);
	b[DNET_ID_SIZE - 1] = 1;
	assert_true(dnet_id_cmp(a, b) < 0);
	a[0] = 1;
	assert_true(dnet_id_cmp(a, b) > 0);
}

static void test_error_tables(void **state)
{
	(void)state;
	int codes[64], n = 0;
#define COLLECT_(name, val, msg) codes[n++] = DNET_E##name;
	DNET_ERRNO_MAP(COLLECT_)
#undef COLLECT_
	assert_true(n > 10);
	for (int i = 0; i < n; i++) {
		assert_true(codes[i] < 0 && codes[i] > DNET_E_MIN_);
		const char *s = dnet_strerror(codes[i]), *name = dnet_errname(codes[i]);
		assert_non_null(s);
		assert_non_null(name);
		assert_string_not_equal(s, "unknown error");
		assert_string_not_equal(name, "UNKNOWN");
		for (int j = 0; j < i; j++) {
			assert_int_not_equal(codes[i], codes[j]);
			assert_string_not_equal(s, dnet_strerror(codes[j]));
			assert_string_not_equal(name, dnet_errname(codes[j]));
		}
	}
	assert_string_equal(dnet_errname(DNET_ENOENT), "NOENT");
	assert_string_equal(dnet_errname(0), "OK");
	assert_non_null(dnet_strerror(0));
	assert_string_equal(dnet_errname(-1000), "UNKNOWN");
	assert_non_null(dnet_strerror(-1000));
	assert_non_null(dnet_strerror(12345));
}

static void test_from_errno(void **state)
{
	(void)state;
	assert_int_equal(dnet_from_errno(0), DNET_OK);
	assert_int_equal(dnet_from_errno(ENOENT), DNET_ENOENT);
	assert_int_equal(dnet_from_errno(ENOSPC), DNET_ENOSPC);
	assert_int_equal(dnet_from_errno(EDQUOT), DNET_ENOSPC);
	assert_int_equal(dnet_from_errno(EFBIG), DNET_ETOOBIG);
	assert_int_equal(dnet_from_errno(EIO), DNET_EIO);
	assert_int_equal(dnet_from_errno(EROFS), DNET_EPERM);
	assert_int_equal(dnet_from_errno(ENOTDIR), DNET_ESYS);
	for (int e = 0; e < 200; e++) {
		int c = dnet_from_errno(e);
		assert_true(c <= 0 && c > DNET_E_MIN_);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_sha512_vectors), cmocka_unit_test(test_sha512_threads),
	    cmocka_unit_test(test_hex_roundtrip),
	    cmocka_unit_test(test_hex_bad),        cmocka_unit_test(test_id_cmp),
	    cmocka_unit_test(test_error_tables),   cmocka_unit_test(test_from_errno),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
