/* test_s3.c - the S3 gateway's pure parts: AWS Signature V4 against AWS's own
 * published example (and every way to break it), presigned URLs, query parameters,
 * Range headers, CompleteMultipartUpload bodies, XML escaping, bucket names, and
 * the index shard format. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "http/http.h"
#include "http/s3.h"
#include "http/s3_store.h"

/* AWS's documented example: GET /test.txt with a Range, the secret
 * wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY, signed 2013-05-24. */
static const struct s3_key aws_keys[] = {
    {"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}};
#define T_2013 1369353600 /* 2013-05-24T00:00:00Z */
#define EMPTY_SHA "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define AWS_SIG "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"

static char reqbuf[4096];

static int check_req(const char *method_path, const char *auth_sig, const char *range, int64_t now,
		     char *payload)
{
	snprintf(reqbuf, sizeof(reqbuf),
		 "%s HTTP/1.1\r\nHost: examplebucket.s3.amazonaws.com\r\nRange: %s\r\n"
		 "x-amz-content-sha256: " EMPTY_SHA "\r\nx-amz-date: 20130524T000000Z\r\n"
		 "Authorization: AWS4-HMAC-SHA256 "
		 "Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
		 "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=%s\r\n\r\n",
		 method_path, range, auth_sig);
	struct dnet_http_req r;
	int n = dnet_http_parse_head(reqbuf, strlen(reqbuf), 1u << 20, &r);
	assert_true(n > 0);
	return s3_auth_check(&r, aws_keys, 1, now, payload, 128);
}

static void test_sigv4_aws_example(void **state)
{
	char payload[128];
	assert_int_equal(check_req("GET /test.txt", AWS_SIG, "bytes=0-9", T_2013 + 60, payload),
			 S3_AUTH_OK);
	assert_string_equal(payload, EMPTY_SHA);
	/* upper-case hex is the same signature */
	char up[65];
	for (int i = 0; i < 64; i++)
		up[i] =
		    (char)(AWS_SIG[i] >= 'a' && AWS_SIG[i] <= 'f' ? AWS_SIG[i] - 32 : AWS_SIG[i]);
	up[64] = 0;
	assert_int_equal(check_req("GET /test.txt", up, "bytes=0-9", T_2013, payload), S3_AUTH_OK);
	/* any change breaks it: a header value, the path, the method, one digit */
	assert_int_equal(check_req("GET /test.txt", AWS_SIG, "bytes=0-8", T_2013, payload),
			 S3_AUTH_BADSIG);
	assert_int_equal(check_req("GET /test.tx", AWS_SIG, "bytes=0-9", T_2013, payload),
			 S3_AUTH_BADSIG);
	assert_int_equal(check_req("PUT /test.txt", AWS_SIG, "bytes=0-9", T_2013, payload),
			 S3_AUTH_BADSIG);
	assert_int_equal(check_req("GET /test.txt?a=1", AWS_SIG, "bytes=0-9", T_2013, payload),
			 S3_AUTH_BADSIG);
	char bad[65];
	memcpy(bad, AWS_SIG, 65);
	bad[10] = bad[10] == '0' ? '1' : '0';
	assert_int_equal(check_req("GET /test.txt", bad, "bytes=0-9", T_2013, payload),
			 S3_AUTH_BADSIG);
	/* short signature, clock skew */
	assert_int_equal(check_req("GET /test.txt", "abc", "bytes=0-9", T_2013, payload),
			 S3_AUTH_MALFORMED);
	assert_int_equal(check_req("GET /test.txt", AWS_SIG, "bytes=0-9", T_2013 + 3600, payload),
			 S3_AUTH_SKEWED);
	assert_int_equal(check_req("GET /test.txt", AWS_SIG, "bytes=0-9", T_2013 - 3600, payload),
			 S3_AUTH_SKEWED);
	/* unknown key */
	struct s3_key other = {"SOMEONEELSE", "x"};
	struct dnet_http_req r;
	dnet_http_parse_head(reqbuf, strlen(reqbuf), 1u << 20, &r);
	assert_int_equal(s3_auth_check(&r, &other, 1, T_2013, payload, 128), S3_AUTH_NOKEY);
}

static int auth_of(const char *req, int64_t now)
{
	struct dnet_http_req r;
	char payload[128];
	int n = dnet_http_parse_head(req, strlen(req), 1u << 20, &r);
	assert_true(n > 0);
	return s3_auth_check(&r, aws_keys, 1, now, payload, sizeof(payload));
}

static void test_sigv4_forms(void **state)
{
	assert_int_equal(auth_of("GET / HTTP/1.1\r\nHost: h\r\n\r\n", T_2013), S3_AUTH_ANON);
	assert_int_equal(
	    auth_of("GET / HTTP/1.1\r\nHost: h\r\nAuthorization: AWS AK:sig\r\n\r\n", T_2013),
	    S3_AUTH_UNSUPPORTED);
	assert_int_equal(
	    auth_of("GET /?AWSAccessKeyId=AK&Signature=x&Expires=1 HTTP/1.1\r\nHost: h\r\n\r\n",
		    T_2013),
	    S3_AUTH_UNSUPPORTED);
	/* pieces missing */
	assert_int_equal(
	    auth_of("GET / HTTP/1.1\r\nHost: h\r\nAuthorization: AWS4-HMAC-SHA256 "
		    "Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request\r\n\r\n",
		    T_2013),
	    S3_AUTH_MALFORMED);
	/* a signed header that is not there */
	assert_int_equal(
	    auth_of("GET / HTTP/1.1\r\nHost: h\r\nx-amz-date: 20130524T000000Z\r\n"
		    "x-amz-content-sha256: UNSIGNED-PAYLOAD\r\nAuthorization: AWS4-HMAC-SHA256 "
		    "Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
		    "SignedHeaders=host;x-missing, Signature=" AWS_SIG "\r\n\r\n",
		    T_2013),
	    S3_AUTH_MALFORMED);
	/* credential date differs from x-amz-date */
	assert_int_equal(
	    auth_of("GET / HTTP/1.1\r\nHost: h\r\nx-amz-date: 20130524T000000Z\r\n"
		    "x-amz-content-sha256: UNSIGNED-PAYLOAD\r\nAuthorization: AWS4-HMAC-SHA256 "
		    "Credential=AKIAIOSFODNN7EXAMPLE/20130525/us-east-1/s3/aws4_request, "
		    "SignedHeaders=host, Signature=" AWS_SIG "\r\n\r\n",
		    T_2013),
	    S3_AUTH_MALFORMED);
	/* AWS's presigned URL example (GET /test.txt, 86400 s) */
	const char *pre =
	    "GET /test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential="
	    "AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date="
	    "20130524T000000Z"
	    "&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature="
	    "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404 HTTP/1.1\r\n"
	    "Host: examplebucket.s3.amazonaws.com\r\n\r\n";
	assert_int_equal(auth_of(pre, T_2013 + 100), S3_AUTH_OK);
	assert_int_equal(auth_of(pre, T_2013 + 86401), S3_AUTH_EXPIRED);
	char tampered[1024];
	snprintf(tampered, sizeof(tampered), "%s", pre);
	memcpy(strstr(tampered, "test.txt"), "test.txu", 8);
	assert_int_equal(auth_of(tampered, T_2013 + 100), S3_AUTH_BADSIG);
}

static void test_query_and_decode(void **state)
{
	char out[64];
	size_t l;
	const char *q = "a=1&list-type=2&prefix=a%2Fb%20c&empty=&flag&x=%zz";
	assert_int_equal(s3_query_get(q, strlen(q), "list-type", out, sizeof(out), &l), 1);
	assert_int_equal(l, 1);
	assert_memory_equal(out, "2", 1);
	assert_int_equal(s3_query_get(q, strlen(q), "prefix", out, sizeof(out), &l), 1);
	assert_int_equal(l, 5);
	assert_memory_equal(out, "a/b c", 5);
	assert_int_equal(s3_query_get(q, strlen(q), "empty", out, sizeof(out), &l), 1);
	assert_int_equal(l, 0);
	assert_int_equal(s3_query_get(q, strlen(q), "flag", out, sizeof(out), &l), 1);
	assert_int_equal(l, 0);
	assert_int_equal(s3_query_get(q, strlen(q), "nope", out, sizeof(out), &l), 0);
	assert_int_equal(s3_query_get(q, strlen(q), "x", out, sizeof(out), &l), -1);
	assert_int_equal(s3_query_get(q, strlen(q), "prefix", out, 3, &l), -1); /* too long */
	assert_int_equal(s3_query_get(NULL, 0, "a", out, sizeof(out), &l), 0);
	assert_int_equal(s3_url_decode("%4", 2, out, sizeof(out), &l), -1);
	assert_int_equal(s3_url_decode("%", 1, out, sizeof(out), &l), -1);
	assert_int_equal(s3_url_decode("a+b%2b", 6, out, sizeof(out), &l), 0);
	assert_int_equal(l, 4);
	assert_memory_equal(out, "a+b+", 4);
}

static void test_range(void **state)
{
	uint64_t o, n;
	assert_int_equal(s3_parse_range("bytes=0-9", 9, 100, &o, &n), 0);
	assert_true(o == 0 && n == 10);
	assert_int_equal(s3_parse_range("bytes=90-", 9, 100, &o, &n), 0);
	assert_true(o == 90 && n == 10);
	assert_int_equal(s3_parse_range("bytes=-30", 9, 100, &o, &n), 0);
	assert_true(o == 70 && n == 30);
	assert_int_equal(s3_parse_range("bytes=-300", 10, 100, &o, &n), 0);
	assert_true(o == 0 && n == 100);
	assert_int_equal(s3_parse_range("bytes=50-1000", 13, 100, &o, &n), 0);
	assert_true(o == 50 && n == 50);
	assert_int_equal(s3_parse_range("bytes=100-", 10, 100, &o, &n), -1);
	assert_int_equal(s3_parse_range("bytes=-0", 8, 100, &o, &n), -1);
	assert_int_equal(s3_parse_range("bytes=0-", 8, 0, &o, &n), -1);
	/* not a single usable range: the whole object */
	assert_int_equal(s3_parse_range("bytes=0-1,5-6", 13, 100, &o, &n), 1);
	assert_int_equal(s3_parse_range("bytes=9-1", 9, 100, &o, &n), 1);
	assert_int_equal(s3_parse_range("items=0-1", 9, 100, &o, &n), 1);
	assert_int_equal(s3_parse_range("bytes=a-b", 9, 100, &o, &n), 1);
	assert_int_equal(s3_parse_range("bytes=99999999999999999999-", 27, 100, &o, &n), 1);
}

static void test_complete_xml(void **state)
{
	struct s3_part p[4];
	int n;
	const char *x =
	    "<?xml version=\"1.0\"?>\n<CompleteMultipartUpload xmlns=\"http://s3/\">"
	    "<Part><ETag>\"0123456789abcdef0123456789ABCDEF\"</ETag><PartNumber>1</PartNumber></"
	    "Part>\n"
	    "<Part><PartNumber>3</PartNumber><ETag>&quot;00000000000000000000000000000000&quot;</"
	    "ETag></Part>"
	    "</CompleteMultipartUpload>";
	assert_int_equal(s3_parse_complete(x, strlen(x), p, 4, &n), 0);
	assert_int_equal(n, 2);
	assert_int_equal(p[0].num, 1);
	assert_string_equal(p[0].etag, "0123456789abcdef0123456789abcdef");
	assert_int_equal(p[1].num, 3);
	assert_int_equal(s3_parse_complete(x, strlen(x), p, 1, &n), -2);
	const char *order = "<CompleteMultipartUpload><Part><PartNumber>2</PartNumber><ETag>"
			    "00000000000000000000000000000000</ETag></Part><Part><PartNumber>2"
			    "</PartNumber><ETag>00000000000000000000000000000000</ETag></Part>"
			    "</CompleteMultipartUpload>";
	assert_int_equal(s3_parse_complete(order, strlen(order), p, 4, &n), -3);
	const char *bad[] = {
	    "",
	    "<CompleteMultipartUpload></CompleteMultipartUpload>",
	    "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Part>"
	    "</CompleteMultipartUpload>",
	    "<CompleteMultipartUpload><Part><PartNumber>0</PartNumber><ETag>"
	    "00000000000000000000000000000000</ETag></Part></CompleteMultipartUpload>",
	    "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>xyz"
	    "</ETag></Part></CompleteMultipartUpload>",
	    "<CompleteMultipartUpload><Part><PartNumber>1"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(s3_parse_complete(bad[i], strlen(bad[i]), p, 4, &n), -1);
}

static void test_delete_xml(void **state)
{
	static struct s3_del_key k[3];
	int n, quiet;
	const char *x =
	    "<Delete xmlns=\"x\"><Quiet>true</Quiet><Object><Key>a&amp;b&lt;&#x263A;&#65;</Key>"
	    "</Object><Object><Key>plain/key</Key><VersionId>1</VersionId></Object></Delete>";
	assert_int_equal(s3_parse_delete(x, strlen(x), k, 3, &n, &quiet), 0);
	assert_int_equal(n, 2);
	assert_int_equal(quiet, 1);
	assert_int_equal(k[0].len, 8);
	assert_memory_equal(k[0].key,
			    "a&b<\xe2\x98\xba"
			    "A",
			    8);
	assert_int_equal(k[1].len, 9);
	assert_int_equal(s3_parse_delete(x, strlen(x), k, 1, &n, &quiet), -2);
	const char *bad[] = {"<Delete></Delete>",
			     "<Delete><Object><Key></Key></Object></Delete>",
			     "<Delete><Object><Key>&bogus;</Key></Object></Delete>",
			     "<Delete><Object><Key>&#0;</Key></Object></Delete>",
			     "<Delete><Object><Key>&#xD800;</Key></Object></Delete>",
			     "<Delete><Object><Key>&#x110000;</Key></Object></Delete>",
			     "<Delete><Object><Key>&amp</Key></Object></Delete>",
			     "<Delete><Object></Object></Delete>",
			     "<Delete><Object><Key>a"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(s3_parse_delete(bad[i], strlen(bad[i]), k, 3, &n, &quiet), -1);
}

static void test_xml_escape_and_names(void **state)
{
	struct dnet_hbuf b;
	dnet_hbuf_init(&b, 16);
	s3_xml_escape(&b, "a<b>&\"'\x01z", 9);
	dnet_hbuf_put(&b, "", 1);
	assert_string_equal(b.p, "a&lt;b&gt;&amp;&quot;&apos;&#x1;z");
	free(b.p);
	dnet_hbuf_init(&b, 16);
	s3_url_encode(&b, "a b/c~", 6);
	dnet_hbuf_put(&b, "", 1);
	assert_string_equal(b.p, "a%20b/c~");
	free(b.p);
	assert_true(s3_bucket_name_ok("my-bucket.1", 11));
	assert_false(s3_bucket_name_ok("ab", 2));
	assert_false(s3_bucket_name_ok("-ab", 3));
	assert_false(s3_bucket_name_ok("ab-", 3));
	assert_false(s3_bucket_name_ok("aBc", 3));
	assert_false(s3_bucket_name_ok("a_c", 3));
}

static void test_shard_format(void **state)
{
	/* "S3I1", then u16 klen, key, u64 size, u64 mtime, u8 etag length, etag */
	uint8_t s[64] = "S3I1";
	size_t n = 4;
	s[n++] = 2;
	s[n++] = 0;
	memcpy(s + n, "ab", 2);
	n += 2;
	for (int i = 0; i < 8; i++)
		s[n++] = i == 0 ? 7 : 0;
	for (int i = 0; i < 8; i++)
		s[n++] = i == 1 ? 1 : 0;
	s[n++] = 3;
	memcpy(s + n, "xyz", 3);
	n += 3;
	struct s3_entry *e;
	int c;
	assert_int_equal(s3_shard_parse(s, n, &e, &c), 0);
	assert_int_equal(c, 1);
	assert_int_equal(e[0].klen, 2);
	assert_memory_equal(e[0].key, "ab", 2);
	assert_true(e[0].size == 7 && e[0].mtime_ns == 256 && e[0].elen == 3);
	free(e);
	assert_int_equal(s3_shard_parse(s, 0, &e, &c), 0);
	assert_int_equal(c, 0);
	for (size_t cut = 1; cut < n; cut++)
		assert_int_equal(s3_shard_parse(s, cut, &e, &c), cut == 4 ? 0 : DNET_ECORRUPT);
	s[n - 4] = (uint8_t)255; /* a tombstone: no etag */
	assert_int_equal(s3_shard_parse(s, n - 3, &e, &c), 0);
	assert_int_equal(c, 1);
	assert_true(e[0].dead && e[0].elen == 0);
	free(e);
	assert_int_equal(s3_shard_parse(s, n, &e, &c), DNET_ECORRUPT); /* 3 stray bytes */
	s[n - 4] = 48;						       /* etag too long */
	assert_int_equal(s3_shard_parse(s, n, &e, &c), DNET_ECORRUPT);
	s[n - 4] = 3;
	s[4] = 0; /* empty key */
	s[5] = 0;
	assert_int_equal(s3_shard_parse(s, n, &e, &c), DNET_ECORRUPT);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_sigv4_aws_example), cmocka_unit_test(test_sigv4_forms),
	    cmocka_unit_test(test_query_and_decode),  cmocka_unit_test(test_range),
	    cmocka_unit_test(test_complete_xml),      cmocka_unit_test(test_xml_escape_and_names),
	    cmocka_unit_test(test_shard_format),      cmocka_unit_test(test_delete_xml),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
