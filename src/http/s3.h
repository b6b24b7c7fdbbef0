/* s3.h - the S3-compatible gateway of the HTTP endpoint: the gateway's threads
 * (s3.c), its object/bucket/index layout in the store (s3_store.c), and the pure
 * parsing and signing helpers (s3_parse.c, s3_auth.c) that are unit tested and
 * fuzzed on their own. Every length is bounded before use. */
#ifndef DNET_S3_H
#define DNET_S3_H

#include <stddef.h>
#include <stdint.h>

#include "common/util.h"
#include "http.h"

struct dnet_http;
struct dnet_http_conn;

/* s3.c: started and stopped with the HTTP endpoint. */
int dnet_s3_start(struct dnet_http *h);
void dnet_s3_stop(struct dnet_http *h);
/* Is this request for the gateway? fixed_route: the path is one of the endpoint's
 * own (/, /metrics, ...): those stay there unless the request is signed or carries
 * S3 parameters. */
int dnet_s3_wants(struct dnet_http *h, const struct dnet_http_req *r, int fixed_route);
/* Too many requests already wait for a gateway thread (answer 503). */
int dnet_s3_busy(struct dnet_http *h);
/* Loop thread: hand over a detached connection whose request head is parsed. */
void dnet_s3_submit(struct dnet_http *h, struct dnet_http_conn *c);

/* ---- s3_parse.c: pure helpers ---- */

#define S3_MAX_KEY 1024
#define S3_MAX_BUCKET 63
#define S3_MAX_PARTS 10000

/* Percent-decode s[0,n) into out (cap bytes; '+' is kept). Returns 0, or -1 for a
 * bad escape or no room. */
int s3_url_decode(const char *s, size_t n, char *out, size_t cap, size_t *outlen);
/* The decoded value of query parameter name: 1 found (a name without '=' has an
 * empty value), 0 absent, -1 malformed or longer than cap. */
int s3_query_get(const char *q, size_t qlen, const char *name, char *out, size_t cap,
		 size_t *outlen);
/* A Range header value against an object of size bytes: 0 and the byte range
 * [*off, *off + *len), 1 serve the whole object (no usable single range; S3 ignores
 * what it cannot parse), -1 unsatisfiable (416). */
int s3_parse_range(const char *v, size_t n, uint64_t size, uint64_t *off, uint64_t *len);

struct s3_part {
	int num;
	char etag[40]; /* 32 hex digits, no quotes */
};
/* The parts of a CompleteMultipartUpload body: 0 and *nparts, or -1 malformed, -2
 * more than max parts, -3 part numbers not ascending. */
int s3_parse_complete(const char *xml, size_t n, struct s3_part *parts, int max, int *nparts);
/* The keys of a DeleteObjects body (<Delete><Object><Key>..</Key></Object>...): 0,
 * -1 malformed, -2 more than max keys. Entities are decoded. */
struct s3_del_key {
	char key[S3_MAX_KEY];
	size_t len;
};
int s3_parse_delete(const char *xml, size_t n, struct s3_del_key *keys, int max, int *nkeys,
		    int *quiet);
/* Append s as XML character data. */
void s3_xml_escape(struct dnet_hbuf *b, const char *s, size_t n);
/* Bucket names: 3..63 of [a-z0-9.-], starting and ending with a letter or digit. */
int s3_bucket_name_ok(const char *s, size_t n);

/* ---- s3_auth.c: AWS Signature Version 4 ---- */

struct s3_key {
	char access[128];
	char secret[128];
};

enum {
	S3_AUTH_ANON = 0,   /* no signature at all */
	S3_AUTH_OK = 1,	    /* a good signature of a known key */
	S3_AUTH_BADSIG,	    /* 403 SignatureDoesNotMatch */
	S3_AUTH_NOKEY,	    /* 403 InvalidAccessKeyId */
	S3_AUTH_MALFORMED,  /* 400 AuthorizationHeaderMalformed */
	S3_AUTH_SKEWED,	    /* 403 RequestTimeTooSkewed */
	S3_AUTH_EXPIRED,    /* 403 AccessDenied: presigned URL expired */
	S3_AUTH_UNSUPPORTED /* 400: signature version 2 and other schemes */
};

/* Check the request's signature (Authorization header or presigned query) against
 * keys. now_s: the time (Unix seconds) for skew and expiry checks. On S3_AUTH_OK,
 * payload receives what the signature says about the body: a 64-hex SHA-256,
 * "UNSIGNED-PAYLOAD", or a "STREAMING-..." scheme (aws-chunked). */
int s3_auth_check(const struct dnet_http_req *r, const struct s3_key *keys, int nkeys,
		  int64_t now_s, char *payload, size_t payload_cap);

/* Hex helpers over OpenSSL. */
void s3_md5_hex(const uint8_t md[16], char out[33]);

#endif
