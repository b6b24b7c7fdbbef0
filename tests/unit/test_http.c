/* test_http.c - the HTTP request parser and chunked decoder (src/http/parser.c):
 * valid requests, byte-at-a-time arrival, and hostile input (oversized and
 * malformed heads, smuggling attempts, bad lengths, bad chunk framing) refused
 * with the right status. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "http/http.h"
#include "server/server.h"

#define MAXB (1u << 20)

static int parse(const char *s, struct dnet_http_req *r)
{
	return dnet_http_parse_head(s, strlen(s), MAXB, r);
}

static void test_simple_get(void **state)
{
	struct dnet_http_req r;
	const char *s = "GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\nNEXT";
	int n = parse(s, &r);
	assert_int_equal(n, (int)(strlen(s) - 4));
	assert_int_equal(r.method, DNET_HTTP_GET);
	assert_int_equal(r.path_len, 8);
	assert_memory_equal(r.path, "/metrics", 8);
	assert_int_equal(r.query_len, 3);
	assert_memory_equal(r.query, "x=1", 3);
	assert_int_equal(r.version_minor, 1);
	assert_int_equal(r.nhdrs, 2);
	assert_true(r.keep_alive);
	assert_false(r.has_length);
	assert_false(r.chunked);
	const struct dnet_http_hdr *h = dnet_http_find_hdr(&r, "ACCEPT");
	assert_non_null(h);
	assert_int_equal(h->value_len, 3);
	assert_memory_equal(h->value, "*/*", 3);
}

static void test_keep_alive_rules(void **state)
{
	struct dnet_http_req r;
	assert_true(parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", &r) > 0);
	assert_false(r.keep_alive);
	assert_true(parse("GET / HTTP/1.0\r\n\r\n", &r) > 0);
	assert_false(r.keep_alive);
	assert_true(parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", &r) > 0);
	assert_true(r.keep_alive);
	assert_true(parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, close\r\n\r\n", &r) > 0);
	assert_false(r.keep_alive);
}

static void test_bodies(void **state)
{
	struct dnet_http_req r;
	assert_true(parse("PUT /k HTTP/1.1\r\nHost: a\r\nContent-Length: 42\r\n\r\n", &r) > 0);
	assert_true(r.has_length);
	assert_int_equal(r.content_length, 42);
	assert_true(
	    parse("PUT /k HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
		  &r) > 0);
	assert_true(parse("PUT /k HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
			  "Expect: 100-continue\r\n\r\n",
			  &r) > 0);
	assert_true(r.chunked);
	assert_true(r.expect_continue);
}

/* A head that arrives one byte at a time needs more bytes until its last byte. */
static void test_incremental(void **state)
{
	const char *s = "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nX: y\r\n\r\n";
	size_t l = strlen(s);
	struct dnet_http_req r;
	for (size_t i = 0; i < l; i++)
		assert_int_equal(dnet_http_parse_head(s, i, MAXB, &r), 0);
	assert_int_equal(dnet_http_parse_head(s, l, MAXB, &r), (int)l);
}

static void test_hostile_heads(void **state)
{
	struct dnet_http_req r;
	static const struct {
		const char *req;
		int status;
	} cases[] = {
	    {"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", -400}, /* a TLS hello: at once */
	    {"GET\t/ HTTP/1.1\r\n", -400},
	    {"GET / HTTP/1.1\n\n", -400}, /* bare LF */
	    {"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", -400},
	    {"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", -400},
	    {"GET http://x/ HTTP/1.1\r\nHost: a\r\n\r\n", -400},
	    {"GET / HTTP/2.0\r\nHost: a\r\n\r\n", -505},
	    {"GET / HTTP/1.2\r\nHost: a\r\n\r\n", -505},
	    {"GET / FTP/1.1\r\nHost: a\r\n\r\n", -400},
	    {"GET / HTTP/1.1\r\n\r\n", -400}, /* no Host */
	    {"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", -400},
	    {"GET / HTTP/1.1\r\nHost: a\r\nX : y\r\n\r\n", -400},   /* space before colon */
	    {"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", -400}, /* obs-fold */
	    {"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", -400},
	    {"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", -400},
	    {"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", -400},
	    {"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n", -400},
	    {"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", -400},
	    {"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", -400},
	    {"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", -400},
	    {"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", -400},
	    {"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", -400},
	    {"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", -400},
	    {"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551615\r\n\r\n", -400},
	    {"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", -400},
	    {"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 1048577\r\n\r\n", -413},
	    {"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
	     -400},
	    {"PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", -400},
	    {"PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", -501},
	    {"PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: "
	     "chunked\r\n\r\n",
	     -400},
	    {"PUT / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", -400},
	    {"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", -417},
	    {"AVERYVERYLONGMETHODNAME / HTTP/1.1\r\n", -400},
	    {" GET / HTTP/1.1\r\n", -400},
	    {"GET /a\x01", -400}, /* incomplete, but already wrong */
	    {"GET /a XTTP", -400},
	    {"GET /a HTTP/1.1\rX", -400},
	    {"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", -400},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int n = parse(cases[i].req, &r);
		if (n != cases[i].status)
			fail_msg("case %zu (%s): got %d, want %d", i, cases[i].req, n,
				 cases[i].status);
	}
}

static void test_oversized(void **state)
{
	struct dnet_http_req r;
	size_t cap = 3 * DNET_HTTP_MAX_HEAD;
	char *b = malloc(cap);
	assert_non_null(b);
	/* A request line that never ends. */
	memset(b, 'a', cap);
	memcpy(b, "GET /", 5);
	assert_int_equal(dnet_http_parse_head(b, DNET_HTTP_MAX_LINE + 10, MAXB, &r), -414);
	/* Headers that never end: refused once the head limit is reached, not before. */
	size_t l = (size_t)snprintf(b, cap, "GET / HTTP/1.1\r\nHost: a\r\n");
	while (l + 20 < cap) {
		memcpy(b + l, "X-Filler: 0123456\r\n", 19);
		l += 19;
	}
	assert_int_equal(dnet_http_parse_head(b, DNET_HTTP_MAX_HEAD - 1, MAXB, &r), 0);
	assert_int_equal(dnet_http_parse_head(b, l, MAXB, &r), -431);
	/* Too many (small) headers. */
	l = (size_t)snprintf(b, cap, "GET / HTTP/1.1\r\nHost: a\r\n");
	for (int i = 0; i < DNET_HTTP_MAX_HEADERS; i++)
		l += (size_t)snprintf(b + l, cap - l, "X%d: y\r\n", i);
	l += (size_t)snprintf(b + l, cap - l, "\r\n");
	assert_int_equal(dnet_http_parse_head(b, l, MAXB, &r), -431);
	/* A long but legal target. */
	l = (size_t)snprintf(b, cap, "GET /");
	memset(b + l, 'k', 4000);
	l += 4000;
	l += (size_t)snprintf(b + l, cap - l, " HTTP/1.1\r\nHost: a\r\n\r\n");
	assert_int_equal(dnet_http_parse_head(b, l, MAXB, &r), (int)l);
	assert_int_equal(r.path_len, 4001);
	free(b);
}

static ssize_t decode_all(const char *in, size_t max, char *out, size_t *outl, int *done)
{
	struct dnet_http_chunked c;
	dnet_http_chunked_init(&c, max);
	size_t len = strlen(in);
	uint8_t *buf = malloc(len + 1);
	memcpy(buf, in, len);
	/* One byte at a time: the hardest split. */
	size_t total = 0, used = 0;
	ssize_t rc = 0;
	for (size_t i = 0; i < len; i++) {
		size_t n;
		rc = dnet_http_chunked_decode(&c, buf + i, 1, buf + i, &n);
		if (rc < 0)
			break;
		memcpy(out + total, buf + i, n);
		total += n;
		used += (size_t)rc;
		if (rc == 0)
			break;
	}
	*outl = total;
	*done = dnet_http_chunked_done(&c);
	free(buf);
	return rc < 0 ? rc : (ssize_t)used;
}

static void test_chunked(void **state)
{
	char out[256];
	size_t ol;
	int done;
	const char *ok =
	    "5\r\nhello\r\n1;ext=\"v\"\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\nGET";
	ssize_t used = decode_all(ok, 1000, out, &ol, &done);
	assert_int_equal(used, (ssize_t)strlen(ok) - 3);
	assert_true(done);
	assert_int_equal(ol, 16);
	assert_memory_equal(out, "hello 0123456789", 16);

	static const struct {
		const char *in;
		ssize_t rc;
	} bad[] = {
	    {"x\r\n", -400},
	    {"\r\n", -400},
	    {"5\nhello\r\n", -400},
	    {"5\r\nhelloX\r\n", -400},
	    {"-5\r\n", -400},
	    {" 5\r\n", -400},
	    {"11111111111111111\r\n", -413}, /* 17 hex digits */
	    {"ffffffffffffffff\r\n", -413},  /* over the limit */
	    {"401\r\n", -413},		     /* 1025 > 1000 */
	    {"1;\x01\r\n", -400},
	    {"0\r\nX: \x01\r\n\r\n", -400},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ssize_t rc = decode_all(bad[i].in, 1000, out, &ol, &done);
		if (rc != bad[i].rc)
			fail_msg("bad chunked case %zu: got %zd, want %zd", i, rc, bad[i].rc);
	}
	/* Total over the limit across chunks. */
	char big[64];
	snprintf(big, sizeof(big), "200\r\n");
	struct dnet_http_chunked c;
	dnet_http_chunked_init(&c, 1000);
	size_t n;
	uint8_t data[600];
	memset(data, 'a', sizeof(data));
	assert_int_equal(dnet_http_chunked_decode(&c, (const uint8_t *)big, strlen(big), data, &n),
			 5);
	assert_int_equal(dnet_http_chunked_decode(&c, data, 512, data, &n), 512);
	assert_int_equal(dnet_http_chunked_decode(&c, (const uint8_t *)"\r\n", 2, data, &n), 2);
	assert_int_equal(dnet_http_chunked_decode(&c, (const uint8_t *)"1ff\r\n", 5, data, &n),
			 -413);
	/* A long extension is refused, not buffered. */
	char *ext = malloc(6000);
	memset(ext, 'e', 6000);
	memcpy(ext, "1;", 2);
	dnet_http_chunked_init(&c, 1000);
	assert_int_equal(
	    dnet_http_chunked_decode(&c, (const uint8_t *)ext, 6000, (uint8_t *)ext, &n), -400);
	free(ext);
}

/* /metrics labels request results by status: every code has its own name. */
static void test_status_labels(void **state)
{
	assert_string_equal(dnet_stats_status_label(dnet_stats_status_slot(0)), "ok");
	assert_string_equal(dnet_stats_status_label(dnet_stats_status_slot(DNET_ENOENT)), "noent");
	for (int e = -1; e > DNET_E_MIN_; e--) {
		const char *l = dnet_stats_status_label(dnet_stats_status_slot(e));
		assert_string_not_equal(l, "other");
		assert_string_not_equal(l, "unknown");
	}
	assert_string_equal(dnet_stats_status_label(dnet_stats_status_slot(DNET_E_MIN_)), "other");
	assert_string_equal(dnet_stats_status_label(dnet_stats_status_slot(1)), "other");
	assert_string_equal(dnet_stats_status_label(dnet_stats_status_slot(-100000)), "other");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_simple_get),	  cmocka_unit_test(test_keep_alive_rules),
	    cmocka_unit_test(test_bodies),	  cmocka_unit_test(test_incremental),
	    cmocka_unit_test(test_hostile_heads), cmocka_unit_test(test_oversized),
	    cmocka_unit_test(test_chunked),	  cmocka_unit_test(test_status_labels),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
