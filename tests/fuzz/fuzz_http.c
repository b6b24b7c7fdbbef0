/* fuzz_http.c - the HTTP request head parser and the chunked body decoder on
 * arbitrary bytes: no crash, no read outside the input, and the results obey their
 * contracts (a head length within the input, decoded data never longer than its
 * input, the same result however the input is split). Also the S3 gateway's
 * parsers: the Signature V4 check of every parsed head, query parameters, Range
 * headers, CompleteMultipartUpload bodies, percent-decoding and index shards.
 *
 * Built with clang -fsanitize=fuzzer (make fuzz), or as a plain program
 * (DNET_FUZZ_STANDALONE) replaying files, or generating N structured random
 * inputs: `fuzz_http -n 200000`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/http.h"
#include "http/s3.h"
#include "http/s3_store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond, const char *what)
{
	if (!cond) {
		fprintf(stderr, "fuzz_http: contract broken: %s\n", what);
		abort();
	}
}

/* The S3 parsers on the same bytes (buf is an exact-size heap copy). */
static void s3_checks(const char *buf, size_t size, const struct dnet_http_req *r)
{
	static const struct s3_key keys[] = {{"AK", "secret"}};
	char payload[128], out[256];
	size_t l;
	if (r) {
		int a = s3_auth_check(r, keys, 1, 1369353600, payload, sizeof(payload));
		check(a >= S3_AUTH_ANON && a <= S3_AUTH_UNSUPPORTED, "auth verdict in range");
		if (a == S3_AUTH_OK)
			check(strlen(payload) < sizeof(payload), "payload bounded");
		static const char *names[] = {"list-type", "prefix", "X-Amz-Credential", "uploadId"};
		for (int i = 0; i < 4; i++) {
			int q = s3_query_get(r->query, r->query_len, names[i], out, sizeof(out), &l);
			check(q < 1 || l <= sizeof(out), "query value bounded");
		}
		const struct dnet_http_hdr *rg = dnet_http_find_hdr(r, "range");
		uint64_t off, len;
		if (rg && s3_parse_range(rg->value, rg->value_len, 1000, &off, &len) == 0)
			check(len >= 1 && off + len <= 1000, "range inside the object");
	}
	uint64_t off, len;
	for (uint64_t objsz = 0; objsz < 3; objsz++)
		if (s3_parse_range(buf, size, objsz * 500, &off, &len) == 0)
			check(len >= 1 && off + len <= objsz * 500, "range inside the object");
	if (s3_url_decode(buf, size, out, sizeof(out), &l) == 0)
		check(l <= size && l <= sizeof(out), "decoded length bounded");
	static struct s3_part parts[16];
	int np = 0;
	if (s3_parse_complete(buf, size, parts, 16, &np) == 0) {
		check(np >= 1 && np <= 16, "part count bounded");
		for (int i = 0; i < np; i++)
			check(parts[i].num >= 1 && parts[i].num <= S3_MAX_PARTS &&
				  strlen(parts[i].etag) == 32 && (i == 0 || parts[i].num > parts[i - 1].num),
			      "parts valid and ascending");
	}
	static struct s3_del_key dk[4];
	int nd, quiet;
	if (s3_parse_delete(buf, size, dk, 4, &nd, &quiet) == 0) {
		check(nd >= 1 && nd <= 4, "delete count bounded");
		for (int i = 0; i < nd; i++)
			check(dk[i].len >= 1 && dk[i].len <= S3_MAX_KEY, "delete key bounded");
	}
	struct s3_entry *e;
	int c;
	if (s3_shard_parse((const uint8_t *)buf, size, &e, &c) == 0) {
		for (int i = 0; i < c; i++)
			check(e[i].key >= buf && e[i].key + e[i].klen <= buf + size &&
				  e[i].etag + e[i].elen <= buf + size,
			      "shard entries inside the input");
		free(e);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* The parser gets an exact-size heap copy, so ASan sees any overread. */
	char *buf = malloc(size ? size : 1);
	if (!buf)
		return 0;
	memcpy(buf, data, size);
	struct dnet_http_req r;
	int n = dnet_http_parse_head(buf, size, 1u << 20, &r);
	check(n <= 0 || (size_t)n <= size, "head length within the input");
	if (n > 0) {
		check(r.nhdrs <= DNET_HTTP_MAX_HEADERS, "header count bounded");
		check(r.target >= buf && r.target + r.target_len <= buf + n,
		      "target inside the head");
		for (uint32_t i = 0; i < r.nhdrs; i++)
			check(r.hdrs[i].value >= buf &&
				  r.hdrs[i].value + r.hdrs[i].value_len <= buf + n,
			      "header inside the head");
		check(!(r.chunked && r.has_length), "never both framings");
		check(!r.has_length || r.content_length <= (1u << 20), "Content-Length bounded");
	}
	/* A prefix of a valid head is never refused (bytes arrive in pieces). */
	if (n > 0) {
		struct dnet_http_req r2;
		for (size_t cut = 0; cut < (size_t)n; cut += 1 + cut / 3)
			check(dnet_http_parse_head(buf, cut, 1u << 20, &r2) == 0,
			      "a prefix of a valid head needs more bytes");
	}

	/* Chunked: whole, and split at every few bytes, must agree. */
	uint8_t *out1 = malloc(size ? size : 1), *in2 = malloc(size ? size : 1);
	if (out1 && in2) {
		struct dnet_http_chunked c1, c2;
		dnet_http_chunked_init(&c1, 1u << 20);
		dnet_http_chunked_init(&c2, 1u << 20);
		size_t o1 = 0, o2 = 0;
		ssize_t u1 = dnet_http_chunked_decode(&c1, data, size, out1, &o1);
		check(u1 < 0 || (size_t)u1 <= size, "consumed within the input");
		check(u1 < 0 || o1 <= (size_t)u1, "data not longer than input");
		memcpy(in2, data, size);
		size_t off = 0, total = 0;
		ssize_t u2 = 0;
		while (off < size) {
			size_t step = 1 + (size_t)data[off] % 7;
			if (step > size - off)
				step = size - off;
			size_t got;
			u2 = dnet_http_chunked_decode(&c2, in2 + off, step, in2 + off, &got);
			if (u2 < 0)
				break;
			check(!memcmp(in2 + off, out1 + total, got) || u1 < 0,
			      "split decode equals whole");
			total += got;
			off += (size_t)u2;
			if (dnet_http_chunked_done(&c2) || (size_t)u2 < step)
				break;
		}
		o2 = total;
		check((u1 < 0) == (u2 < 0), "split and whole decode agree on errors");
		if (u1 >= 0)
			check(o1 == o2 &&
				  dnet_http_chunked_done(&c1) == dnet_http_chunked_done(&c2),
			      "split and whole decode agree");
	}
	free(out1);
	free(in2);
	s3_checks(buf, size, n > 0 ? &r : NULL);
	free(buf);
	return 0;
}

#ifdef DNET_FUZZ_STANDALONE
static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static const char *pieces[] = {
    "GET ",
    "PUT ",
    "POST ",
    "HEAD ",
    "/",
    "/metrics",
    "/ring.json",
    "?a=b",
    " HTTP/1.1",
    " HTTP/1.0",
    " HTTP/2.0",
    "\r\n",
    "\n",
    "\r",
    "Host: x",
    "Content-Length: ",
    "0",
    "12",
    "99999999999999999999",
    "-1",
    "Transfer-Encoding: chunked",
    "Transfer-Encoding: gzip",
    "Connection: close",
    "Expect: 100-continue",
    " ",
    "\t",
    ":",
    "X-A: b",
    "\r\n\r\n",
    "5\r\nhello\r\n",
    "0\r\n\r\n",
    "ffffffffffffffffff\r\n",
    "1;ext=1\r\n",
    "Trailer: x\r\n",
    "/bkt/key",
    "?list-type=2&prefix=a%2F&delimiter=%2",
    "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Signature=",
    "Authorization: AWS4-HMAC-SHA256 Credential=AK/20130524/us-east-1/s3/aws4_request, "
    "SignedHeaders=host;range;x-amz-date, Signature=",
    "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
    "x-amz-date: 20130524T000000Z",
    "x-amz-content-sha256: UNSIGNED-PAYLOAD",
    "Range: bytes=",
    "bytes=0-9",
    "-5",
    "<CompleteMultipartUpload xmlns=\"x\">",
    "<Part><PartNumber>2</PartNumber><ETag>\"0123456789abcdef0123456789abcdef\"</ETag></Part>",
    "</CompleteMultipartUpload>",
    "<Delete>",
    "<Object><Key>a&amp;&#x263A;&#1114112;&#</Key></Object>",
    "<Quiet>true</Quiet>",
    "</Delete>",
    "S3I1\x02\x00ab",
    "\x00",
    "\x7f",
    "\xff",
};

int main(int argc, char **argv)
{
	long n = 0;
	if (argc == 3 && !strcmp(argv[1], "-n")) {
		n = atol(argv[2]);
	} else {
		for (int i = 1; i < argc; i++) {
			FILE *f = fopen(argv[i], "rb");
			if (!f) {
				perror(argv[i]);
				return 1;
			}
			static uint8_t b[1 << 20];
			size_t l = fread(b, 1, sizeof(b), f);
			fclose(f);
			LLVMFuzzerTestOneInput(b, l);
		}
		return 0;
	}
	uint8_t buf[4096];
	for (long i = 0; i < n; i++) {
		size_t len = 0, parts = 1 + next() % 24;
		for (size_t k = 0; k < parts; k++) {
			if (next() % 8 == 0) {
				size_t r = next() % 16;
				for (size_t j = 0; j < r && len < sizeof(buf); j++)
					buf[len++] = (uint8_t)next();
				continue;
			}
			const char *p = pieces[next() % (sizeof(pieces) / sizeof(pieces[0]))];
			size_t pl = p[0] ? strlen(p) : 1;
			if (len + pl > sizeof(buf))
				break;
			memcpy(buf + len, p, pl);
			len += pl;
		}
		LLVMFuzzerTestOneInput(buf, len);
	}
	printf("fuzz_http: %ld inputs, no failure\n", n);
	return 0;
}
#endif
