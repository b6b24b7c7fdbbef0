/* test_proto.c - unit tests of the wire encoders/decoders in src/common/proto.c:
 * round trips, byte layout, truncated input, and header validation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/errors.h"
#include "common/proto.h"

static struct dnet_cmd_hdr sample_hdr(void)
{
	struct dnet_cmd_hdr h;
	memset(&h, 0, sizeof(h));
	h.magic = DNET_MAGIC;
	h.version = DNET_PROTO_VERSION;
	h.cmd = DNET_CMD_WRITE;
	h.flags = DNET_FLAG_NEED_ACK | DNET_FLAG_MORE;
	h.status = DNET_ECORRUPT;
	h.trans = 0x0102030405060708ull;
	h.size = 12345;
	for (int i = 0; i < DNET_ID_SIZE; i++)
		h.id[i] = (uint8_t)(i * 7 + 1);
	return h;
}

static void test_hdr_roundtrip(void **state)
{
	(void)state;
	struct dnet_cmd_hdr h = sample_hdr(), d;
	uint8_t buf[DNET_HDR_SIZE];
	dnet_hdr_encode(buf, &h);
	/* little-endian on the wire: "DELL" magic bytes, trans LSB first */
	assert_memory_equal(buf, "DELL", 4);
	assert_int_equal(buf[16], 0x08);
	assert_int_equal(buf[23], 0x01);
	memset(&d, 0xaa, sizeof(d));
	assert_int_equal(dnet_hdr_decode(buf, sizeof(buf), &d), 0);
	assert_int_equal(d.magic, h.magic);
	assert_int_equal(d.version, h.version);
	assert_int_equal(d.cmd, h.cmd);
	assert_int_equal(d.flags, h.flags);
	assert_int_equal(d.status, h.status);
	assert_int_equal(d.reserved, 0);
	assert_int_equal(d.trans, h.trans);
	assert_int_equal(d.size, h.size);
	assert_memory_equal(d.id, h.id, DNET_ID_SIZE);
	assert_int_equal(dnet_hdr_validate(&d, DNET_DEFAULT_MAX_PAYLOAD), 0);
}

static void test_hdr_truncated(void **state)
{
	(void)state;
	struct dnet_cmd_hdr h = sample_hdr(), d;
	uint8_t buf[DNET_HDR_SIZE];
	dnet_hdr_encode(buf, &h);
	for (size_t len = 0; len < DNET_HDR_SIZE; len++)
		assert_int_equal(dnet_hdr_decode(buf, len, &d), DNET_EPROTO);
	assert_int_equal(dnet_hdr_decode(NULL, DNET_HDR_SIZE, &d), DNET_EPROTO);
}

static void test_hdr_validate(void **state)
{
	(void)state;
	const uint64_t max = 1 << 20;
	struct dnet_cmd_hdr h = sample_hdr();
	assert_int_equal(dnet_hdr_validate(&h, max), 0);

	h = sample_hdr();
	h.magic ^= 1;
	assert_int_equal(dnet_hdr_validate(&h, max), DNET_EPROTO);
	h = sample_hdr();
	h.version = DNET_PROTO_VERSION + 1;
	assert_int_equal(dnet_hdr_validate(&h, max), DNET_EPROTO);
	h = sample_hdr();
	h.cmd = 0;
	assert_int_equal(dnet_hdr_validate(&h, max), DNET_EPROTO);
	for (int c = DNET_CMD_MAX_; c < 256; c++) {
		h.cmd = (uint8_t)c;
		assert_int_equal(dnet_hdr_validate(&h, max), DNET_EPROTO);
	}
	for (int c = 1; c < DNET_CMD_MAX_; c++) {
		h.cmd = (uint8_t)c;
		assert_int_equal(dnet_hdr_validate(&h, max), 0);
	}
	h = sample_hdr();
	for (int bit = 0; bit < 16; bit++) {
		h.flags = (uint16_t)(1u << bit);
		assert_int_equal(dnet_hdr_validate(&h, max),
				 (h.flags & ~DNET_FLAGS_KNOWN) ? DNET_EPROTO : 0);
	}
	h = sample_hdr();
	h.reserved = 1;
	assert_int_equal(dnet_hdr_validate(&h, max), DNET_EPROTO);
	h = sample_hdr();
	h.size = max;
	assert_int_equal(dnet_hdr_validate(&h, max), 0);
	h.size = max + 1;
	assert_int_equal(dnet_hdr_validate(&h, max), DNET_ETOOBIG);
	/* the hard ceiling holds whatever the configured maximum */
	h.size = (uint64_t)DNET_HARD_MAX_PAYLOAD + 1;
	assert_int_equal(dnet_hdr_validate(&h, UINT64_MAX), DNET_ETOOBIG);
	h.size = UINT64_MAX;
	assert_int_equal(dnet_hdr_validate(&h, UINT64_MAX), DNET_ETOOBIG);

	/* validation of decoded garbage never crashes and mostly rejects */
	uint8_t buf[DNET_HDR_SIZE];
	memset(buf, 0xff, sizeof(buf));
	assert_int_equal(dnet_hdr_decode(buf, sizeof(buf), &h), 0);
	assert_int_not_equal(dnet_hdr_validate(&h, max), 0);
}

static void test_io_attr(void **state)
{
	(void)state;
	struct dnet_io_attr io = {.offset = 1,
				  .size = 0xfedcba9876543210ull,
				  .total_size = 3,
				  .timestamp = 1700000000123456789ull,
				  .cookie = 0xdeadbeefcafef00dull,
				  .ioflags = DNET_IO_PREPARE | DNET_IO_COMMIT,
				  .reserved = 0};
	struct dnet_io_attr d;
	uint8_t buf[DNET_IO_ATTR_SIZE];
	dnet_io_attr_encode(buf, &io);
	assert_int_equal(buf[8], 0x10);
	assert_int_equal(buf[15], 0xfe);
	assert_int_equal(dnet_io_attr_decode(buf, sizeof(buf), &d), 0);
	assert_memory_equal(&d, &io, sizeof(io));
	for (size_t len = 0; len < DNET_IO_ATTR_SIZE; len++)
		assert_int_equal(dnet_io_attr_decode(buf, len, &d), DNET_EPROTO);
	assert_int_equal(dnet_io_attr_decode(NULL, 100, &d), DNET_EPROTO);
}

static void test_obj_info(void **state)
{
	(void)state;
	struct dnet_obj_info oi, d;
	memset(&oi, 0, sizeof(oi));
	oi.size = 4ull << 30;
	oi.timestamp = 99;
	oi.version = 7;
	for (int i = 0; i < 16; i++)
		oi.csum[i] = (uint8_t)(0xf0 + i);
	oi.flags = 0x11223344;
	uint8_t buf[DNET_OBJ_INFO_SIZE];
	dnet_obj_info_encode(buf, &oi);
	assert_memory_equal(buf + 24, oi.csum, 16);
	assert_int_equal(dnet_obj_info_decode(buf, sizeof(buf), &d), 0);
	assert_memory_equal(&d, &oi, sizeof(oi));
	for (size_t len = 0; len < DNET_OBJ_INFO_SIZE; len++)
		assert_int_equal(dnet_obj_info_decode(buf, len, &d), DNET_EPROTO);
}

static void test_addr(void **state)
{
	(void)state;
	struct dnet_addr_wire a, d;
	uint8_t buf[DNET_ADDR_WIRE_SIZE];
	memset(&a, 0, sizeof(a));
	a.family = 4;
	a.port = 1025;
	a.addr[0] = 127;
	a.addr[3] = 1;
	dnet_addr_encode(buf, &a);
	assert_int_equal(dnet_addr_decode(buf, sizeof(buf), &d), 0);
	assert_memory_equal(&d, &a, sizeof(a));
	assert_int_equal(buf[20] | buf[21] | buf[22] | buf[23], 0); /* reserved */

	a.family = 6;
	for (int i = 0; i < 16; i++)
		a.addr[i] = (uint8_t)(0x20 + i);
	a.port = 65535;
	dnet_addr_encode(buf, &a);
	assert_int_equal(dnet_addr_decode(buf, sizeof(buf), &d), 0);
	assert_memory_equal(&d, &a, sizeof(a));

	for (size_t len = 0; len < DNET_ADDR_WIRE_SIZE; len++)
		assert_int_equal(dnet_addr_decode(buf, len, &d), DNET_EPROTO);
	a.family = 5;
	dnet_addr_encode(buf, &a);
	assert_int_equal(dnet_addr_decode(buf, sizeof(buf), &d), DNET_EPROTO);
}

static void test_cmd_names(void **state)
{
	(void)state;
	for (int c = 1; c < DNET_CMD_MAX_; c++) {
		assert_non_null(dnet_cmd_name(c));
		assert_string_not_equal(dnet_cmd_name(c), "unknown");
	}
	assert_string_equal(dnet_cmd_name(0), "unknown");
	assert_string_equal(dnet_cmd_name(DNET_CMD_MAX_), "unknown");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_hdr_roundtrip), cmocka_unit_test(test_hdr_truncated),
	    cmocka_unit_test(test_hdr_validate),  cmocka_unit_test(test_io_attr),
	    cmocka_unit_test(test_obj_info),      cmocka_unit_test(test_addr),
	    cmocka_unit_test(test_cmd_names),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
