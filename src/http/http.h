/* http.h - the HTTP/1.1 endpoint of ellipticsd (--http): the request parser, the
 * chunked body decoder, and the server's start/stop. The parser is pure (no I/O,
 * no allocation) so it can be unit tested and fuzzed on its own.
 *
 * Every length is bounded before use: the request head (request line + headers) to
 * DNET_HTTP_MAX_HEAD bytes, the request line to DNET_HTTP_MAX_LINE, the header
 * count to DNET_HTTP_MAX_HEADERS, Content-Length to the caller's max_body, chunk
 * size lines, extensions and trailers to fixed limits. */
#ifndef DNET_HTTP_H
#define DNET_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define DNET_HTTP_MAX_HEAD 16384
#define DNET_HTTP_MAX_LINE 8192
#define DNET_HTTP_MAX_HEADERS 64
#define DNET_HTTP_MAX_METHOD 16

enum dnet_http_method {
	DNET_HTTP_OTHER = 0,
	DNET_HTTP_GET,
	DNET_HTTP_HEAD,
	DNET_HTTP_PUT,
	DNET_HTTP_POST,
	DNET_HTTP_DELETE,
	DNET_HTTP_OPTIONS,
};

struct dnet_http_hdr {
	const char *name, *value; /* not NUL-terminated; point into the parsed buffer */
	uint32_t name_len, value_len;
};

/* A parsed request head. Every pointer points into the buffer given to the parser,
 * which must stay unchanged while the request is used. */
struct dnet_http_req {
	int method;
	const char *method_str;
	uint32_t method_len;
	const char *target; /* origin-form: "/path?query" */
	uint32_t target_len;
	const char *path; /* the target up to '?' */
	uint32_t path_len;
	const char *query; /* after '?' (NULL if none) */
	uint32_t query_len;
	int version_minor; /* HTTP/1.0 or HTTP/1.1 */
	struct dnet_http_hdr hdrs[DNET_HTTP_MAX_HEADERS];
	uint32_t nhdrs;
	int keep_alive; /* the connection may serve another request after this one */
	int chunked;	/* Transfer-Encoding: chunked */
	int has_length; /* Content-Length given */
	uint64_t content_length;
	int expect_continue; /* Expect: 100-continue */
	size_t head_len;     /* bytes of the head, including the final CRLF CRLF */
};

/* Parse a request head from buf[0, len). Returns the head's length (> 0) when it is
 * complete and valid (r is filled), 0 when more bytes are needed, or a negative
 * HTTP status for a request that must be refused: -400 malformed, -413 body over
 * max_body, -414 request line too long, -417 unknown expectation, -431 head too
 * large or too many headers, -501 transfer coding other than chunked, -505 HTTP
 * version other than 1.0/1.1. Garbage is refused as soon as it is seen, without
 * waiting for the rest of a head. */
int dnet_http_parse_head(const char *buf, size_t len, uint64_t max_body, struct dnet_http_req *r);

/* The first header named name (case-insensitive), or NULL. */
const struct dnet_http_hdr *dnet_http_find_hdr(const struct dnet_http_req *r, const char *name);

/* Transfer-Encoding: chunked, decoded incrementally (bytes may arrive one at a time).
 * Chunk extensions and trailers are read and dropped, within bounds. */
struct dnet_http_chunked {
	int state;
	int digits;	  /* hex digits of the current size line */
	uint64_t left;	  /* data bytes left in the current chunk */
	uint64_t total;	  /* data bytes so far */
	uint64_t max;	  /* limit on total (-413 beyond) */
	uint32_t line;	  /* length of the current extension or trailer line */
	uint32_t trailer; /* trailer bytes so far */
};

void dnet_http_chunked_init(struct dnet_http_chunked *c, uint64_t max_total);
/* Decode from in[0, len): chunk data is copied to out (out may equal in: the data
 * never runs ahead of the input), its length to *nout. Returns the input bytes
 * consumed (less than len only once the body has ended), or -400 / -413. */
ssize_t dnet_http_chunked_decode(struct dnet_http_chunked *c, const uint8_t *in, size_t len,
				 uint8_t *out, size_t *nout);
/* The terminating chunk and trailers have been read. */
int dnet_http_chunked_done(const struct dnet_http_chunked *c);

/* Reason phrase of a status code ("Not Found"). */
const char *dnet_http_reason(int status);

/* The server (httpd.c). listen binds cfg.http (sets the server's http_str) so that a
 * busy port fails startup early; start runs its threads; stop closes every
 * connection and joins them. */
struct dnet_server;
int dnet_http_listen(struct dnet_server *s);
int dnet_http_start(struct dnet_server *s);
void dnet_http_stop(struct dnet_server *s);

#endif
