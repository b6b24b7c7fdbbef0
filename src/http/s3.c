/* s3.c - the S3-compatible gateway of ellipticsd --http. The event loop (httpd.c)
 * parses a request head and hands the connection to one of a few gateway threads;
 * the thread serves that one request with blocking, deadline-bounded IO (the body
 * is streamed into the store through the client library, GETs streamed out of it),
 * then gives the connection back to the loop for keep-alive. The gateway talks to
 * the ring as any client does (its own node first), so copies, quorum writes,
 * redirects and multi-node rings work as for `elliptics put/get`.
 * The layout of buckets, objects, the name index and multipart uploads in the
 * store is in s3_store.c; docs/http.md describes both. */
#include <errno.h>
#include <openssl/evp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "common/log.h"
#include "elliptics/elliptics.h"
#include "http_int.h"
#include "s3.h"
#include "s3_store.h"

#define GW_THREADS 8
#define GW_QUEUE 64		/* requests waiting for a thread; more get 503 */
#define MIN_RATE 4096		/* bytes/s a body or response must average after IO_MS */
#define IO_MS 30000		/* longest pause of a body or a response */
#define MAX_PUT (5ull << 30)	/* S3's single PUT and part limit */
#define MAX_XML_BODY (2u << 20) /* CompleteMultipartUpload, CreateBucket */
#define MIN_PART (5u << 20)	/* every part but the last */
#define SMALL_PUT (1u << 20)	/* bodies up to this size are written in one piece */

struct s3_worker {
	struct dnet_s3 *g;
	pthread_t th;
	int started;
	struct s3_store st;
	struct dnet_http_conn *cur; /* under g->lock: shut down on stop */
};

struct dnet_s3 {
	struct dnet_http *h;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct dnet_http_conn *qhead, *qtail;
	int qlen;
	int stop;
	struct s3_worker w[GW_THREADS];
	struct s3_key *keys;
	int nkeys;
	struct s3_shared shared;
};

/* One request being served. */
struct s3_req {
	struct dnet_s3 *g;
	struct s3_worker *w;
	struct dnet_http_conn *c;
	const struct dnet_http_req *r;
	char bucket[S3_MAX_BUCKET + 1];
	size_t blen;
	char key[S3_MAX_KEY + 1];
	size_t klen;
	/* body */
	size_t boff;
	uint64_t left;
	int chunked, aws, body_done, body_started, continue_sent;
	struct dnet_http_chunked ch, ach;
	uint64_t body_bytes;
	EVP_MD_CTX *md5, *sha;
	int sha_done; /* the body's SHA-256 was compared: 1 matched, -1 not */
	char payload[128];
	/* response */
	int keep_alive;
	int status;
	int head_sent;
	uint64_t reqid;
	uint64_t start_ns, moved; /* bytes of body in and response out */
};

/* A client that trickles (slowloris on a body, or one that reads a response a
 * byte at a time) must not hold a gateway thread: after IO_MS, the request has to
 * average MIN_RATE. */
static int too_slow(struct s3_req *q)
{
	uint64_t el = dnet_now_mono_ns() - q->start_ns;
	if (el < (uint64_t)IO_MS * 1000000ull)
		return 0;
	return q->moved < el / 1000000000ull * MIN_RATE;
}

/* ---- responses ---- */

static uint64_t deadline(void)
{
	return dnet_now_mono_ns() + (uint64_t)IO_MS * 1000000ull;
}

static int send_all(struct s3_req *q, const void *p, size_t n)
{
	struct iovec iov = {.iov_base = (void *)(uintptr_t)p, .iov_len = n};
	if (!n)
		return 0;
	int err = 0;
	/* In pieces, so a reader that stalls is noticed within a piece. */
	while (!err && iov.iov_len) {
		struct iovec one = iov;
		if (one.iov_len > 262144)
			one.iov_len = 262144;
		size_t l = one.iov_len;
		err = dnet_send_iov_deadline(q->c->fd, &one, 1, deadline());
		q->moved += l;
		iov.iov_base = (char *)iov.iov_base + l;
		iov.iov_len -= l;
		if (!err && too_slow(q))
			err = DNET_ETIMEDOUT;
	}
	if (err)
		q->keep_alive = 0;
	return err;
}

void s3_http_date(uint64_t ns, char *out, size_t cap)
{
	time_t t = (time_t)(ns / 1000000000ull);
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(out, cap, "%a, %d %b %Y %H:%M:%S GMT", &tm);
}

void s3_iso_date(uint64_t ns, char *out, size_t cap)
{
	time_t t = (time_t)(ns / 1000000000ull);
	struct tm tm;
	gmtime_r(&t, &tm);
	char b[32];
	strftime(b, sizeof(b), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(out, cap, "%s.%03uZ", b, (unsigned)(ns / 1000000ull % 1000));
}

/* The status line and headers. clen < 0: no Content-Length (never used: every
 * answer has one). extra: header lines. */
static int send_head(struct s3_req *q, int status, const char *ctype, int64_t clen,
		     const char *extra)
{
	char date[64], head[4096 + 512];
	s3_http_date(dnet_now_real_ns(), date, sizeof(date));
	q->status = status;
	/* "Expect: 100-continue" with an empty body (a 0-byte file): answer 100 first.
	 * A final answer alone is legal, but botocore (awscli, boto3) then keeps that
	 * status for its next request on the connection and misreads the response. With
	 * a body we did not read, the connection is closed after the answer anyway. */
	if (q->r->expect_continue && !q->continue_sent && q->body_done) {
		static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
		q->continue_sent = 1;
		if (send_all(q, cont, sizeof(cont) - 1) != 0)
			return DNET_ECONNRESET;
	}
	int n = snprintf(head, sizeof(head),
			 "HTTP/1.1 %d %s\r\nServer: ellipticsd\r\nDate: %s\r\n"
			 "x-amz-request-id: %016llx\r\n%s%s%sContent-Length: %lld\r\n%s%s\r\n",
			 status, dnet_http_reason(status), date, (unsigned long long)q->reqid,
			 ctype ? "Content-Type: " : "", ctype ? ctype : "", ctype ? "\r\n" : "",
			 (long long)clen, extra ? extra : "",
			 !q->keep_alive		    ? "Connection: close\r\n"
			 : q->r->version_minor == 0 ? "Connection: keep-alive\r\n"
						    : "");
	if (n < 0 || (size_t)n >= sizeof(head))
		return DNET_EINVAL;
	q->head_sent = 1;
	atomic_fetch_add(&q->g->h->s->stats.http_requests, 1);
	if (status >= 400)
		atomic_fetch_add(&q->g->h->s->stats.http_errors, 1);
	return send_all(q, head, (size_t)n);
}

static void send_body_resp(struct s3_req *q, int status, const char *ctype, const char *body,
			   size_t len, const char *extra)
{
	if (send_head(q, status, ctype, (int64_t)len, extra) == 0 && q->r->method != DNET_HTTP_HEAD)
		send_all(q, body, len);
}

static void send_xml(struct s3_req *q, int status, struct dnet_hbuf *b, const char *extra)
{
	if (!b->p) {
		q->keep_alive = 0;
		send_body_resp(q, 500, NULL, NULL, 0, NULL);
		return;
	}
	send_body_resp(q, status, "application/xml", b->p, b->len, extra);
	free(b->p);
	b->p = NULL;
}

static void send_error(struct s3_req *q, int status, const char *code, const char *msg)
{
	struct dnet_hbuf b;
	dnet_hbuf_init(&b, 512);
	dnet_hbuf_add(&b,
		      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>%s</Code>"
		      "<Message>",
		      code);
	s3_xml_escape(&b, msg, strlen(msg));
	dnet_hbuf_add(&b, "</Message>");
	if (q->blen) {
		dnet_hbuf_add(&b, "<BucketName>");
		s3_xml_escape(&b, q->bucket, q->blen);
		dnet_hbuf_add(&b, "</BucketName>");
	}
	if (q->klen) {
		dnet_hbuf_add(&b, "<Key>");
		s3_xml_escape(&b, q->key, q->klen);
		dnet_hbuf_add(&b, "</Key>");
	}
	dnet_hbuf_add(&b, "<RequestId>%016llx</RequestId></Error>", (unsigned long long)q->reqid);
	/* An error before the body was read: do not read it; close after. */
	if (!q->body_done && (q->r->chunked || q->r->content_length))
		q->keep_alive = 0;
	send_xml(q, status, &b, NULL);
}

/* A store error as an S3 error. */
static void send_store_error(struct s3_req *q, int err)
{
	if (err == DNET_ENOENT)
		send_error(q, 404, "NoSuchKey", "The specified key does not exist.");
	else if (err == DNET_ENOSPC)
		send_error(q, 507, "InsufficientStorage", dnet_strerror(err));
	else if (err == DNET_ETIMEDOUT || err == DNET_ENODEDOWN || err == DNET_EQUORUM ||
		 err == DNET_EJOINING)
		send_error(q, 503, "ServiceUnavailable", dnet_strerror(err));
	else if (err <= -400 && err >= -599) /* an HTTP status from the body reader */
		send_error(q, -err, err == -413 ? "EntityTooLarge" : "IncompleteBody",
			   "The request body is malformed or too large.");
	else if (err == S3_EBADDIGEST)
		send_error(q, 400, "BadDigest", "The body does not match its checksum.");
	else
		send_error(q, 500, "InternalError", dnet_strerror(err));
}

/* ---- request bodies: Content-Length or chunked, then optionally aws-chunked ---- */

static int body_init(struct s3_req *q)
{
	const struct dnet_http_req *r = q->r;
	q->boff = r->head_len;
	q->chunked = r->chunked;
	q->left = r->has_length ? r->content_length : 0;
	q->body_done = !r->chunked && q->left == 0;
	dnet_http_chunked_init(&q->ch, UINT64_MAX / 2);
	q->aws = !strncmp(q->payload, "STREAMING-", 10);
	const struct dnet_http_hdr *ce = dnet_http_find_hdr(r, "content-encoding");
	if (ce && ce->value_len >= 11 && !strncasecmp(ce->value, "aws-chunked", 11))
		q->aws = 1;
	dnet_http_chunked_init(&q->ach, UINT64_MAX / 2);
	return 0;
}

/* The size the body decodes to, or UINT64_MAX if unknown. */
static uint64_t body_size(struct s3_req *q)
{
	if (q->aws) {
		const struct dnet_http_hdr *d =
		    dnet_http_find_hdr(q->r, "x-amz-decoded-content-length");
		uint64_t v = 0;
		if (!d || !d->value_len || d->value_len > 19)
			return UINT64_MAX;
		for (uint32_t i = 0; i < d->value_len; i++) {
			if (d->value[i] < '0' || d->value[i] > '9')
				return UINT64_MAX;
			v = v * 10 + (uint64_t)(d->value[i] - '0');
		}
		return v;
	}
	return q->chunked ? UINT64_MAX : q->left;
}

static void maybe_continue(struct s3_req *q)
{
	if (q->continue_sent || !q->r->expect_continue || q->body_done)
		return;
	q->continue_sent = 1;
	static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
	send_all(q, cont, sizeof(cont) - 1);
}

/* The next piece of the decoded body (a pointer into the connection's buffer,
 * valid until the next call); *n = 0 at its end. Returns 0 or an error (DNET_E*,
 * or -400/-413). */
static int body_next(struct s3_req *q, uint8_t **pp, size_t *pn)
{
	struct dnet_http_conn *c = q->c;
	size_t hl = q->r->head_len;
	maybe_continue(q);
	q->body_started = 1;
	for (;;) {
		*pn = 0;
		if (q->body_done)
			return 0;
		if (q->boff == c->len) {
			c->len = q->boff = hl; /* the head stays: req points into it */
			for (;;) {
				ssize_t r =
				    recv(c->fd, c->buf + c->len, DNET_HTTP_BUF_CAP - c->len, 0);
				if (r > 0) {
					c->len += (size_t)r;
					q->moved += (size_t)r;
					break;
				}
				if (r == 0)
					return DNET_ECONNRESET;
				if (errno == EINTR)
					continue;
				if (errno != EAGAIN && errno != EWOULDBLOCK)
					return dnet_from_errno(errno);
				int err = too_slow(q) ? DNET_ETIMEDOUT
						      : dnet_wait_fd(c->fd, POLLIN, deadline());
				if (err)
					return err;
			}
		}
		uint8_t *p = (uint8_t *)c->buf + q->boff;
		size_t avail = c->len - q->boff, dl;
		int http_done;
		if (q->chunked) {
			ssize_t used = dnet_http_chunked_decode(&q->ch, p, avail, p, &dl);
			if (used < 0)
				return (int)used;
			q->boff += (size_t)used;
			http_done = dnet_http_chunked_done(&q->ch);
		} else {
			dl = avail < q->left ? avail : (size_t)q->left;
			q->left -= dl;
			q->boff += dl;
			http_done = q->left == 0;
		}
		if (q->aws && dl) {
			size_t d2;
			if (dnet_http_chunked_done(&q->ach))
				return -400; /* bytes after the last aws-chunk */
			ssize_t used = dnet_http_chunked_decode(&q->ach, p, dl, p, &d2);
			if (used < 0)
				return (int)used;
			if ((size_t)used != dl)
				return -400;
			dl = d2;
		}
		if (http_done) {
			q->body_done = 1;
			if (q->aws && !dnet_http_chunked_done(&q->ach))
				return -400;
		}
		if (dl) {
			q->body_bytes += dl;
			if (q->md5)
				EVP_DigestUpdate(q->md5, p, dl);
			if (q->sha)
				EVP_DigestUpdate(q->sha, p, dl);
			*pp = p;
			*pn = dl;
			return 0;
		}
	}
}

/* Read and drop the rest of the body (after an answer that did not need it,
 * bounded); 0 if it was read whole. */
static int body_drain(struct s3_req *q, uint64_t max)
{
	uint8_t *p;
	size_t n;
	while (!q->body_done) {
		if (body_next(q, &p, &n) != 0 || q->body_bytes > max)
			return -1;
	}
	return 0;
}

/* Read a small body whole (XML), NUL-terminated; *out malloc()ed. */
static int body_small(struct s3_req *q, size_t max, char **out, size_t *len)
{
	struct dnet_hbuf b;
	dnet_hbuf_init(&b, 1024);
	uint8_t *p;
	size_t n;
	for (;;) {
		int err = body_next(q, &p, &n);
		if (err) {
			free(b.p);
			return err;
		}
		if (!n)
			break;
		if (b.len + n > max) {
			free(b.p);
			return -413;
		}
		dnet_hbuf_put(&b, (const char *)p, n);
	}
	dnet_hbuf_put(&b, "", 1);
	if (!b.p)
		return DNET_ENOMEM;
	*out = b.p;
	*len = b.len - 1;
	return 0;
}

/* Start the digests of a body that is stored: MD5 (the ETag) and SHA-256 when the
 * signature names the payload's hash. */
static int digests_start(struct s3_req *q)
{
	q->md5 = EVP_MD_CTX_new();
	if (!q->md5 || !EVP_DigestInit_ex(q->md5, EVP_md5(), NULL))
		return DNET_ENOMEM;
	if (strlen(q->payload) == 64) {
		q->sha = EVP_MD_CTX_new();
		if (!q->sha || !EVP_DigestInit_ex(q->sha, EVP_sha256(), NULL))
			return DNET_ENOMEM;
	}
	return 0;
}

/* The body's SHA-256 matches the signed one (or none was signed). */
static int payload_ok(struct s3_req *q)
{
	if (!q->sha)
		return 1;
	if (q->sha_done)
		return q->sha_done > 0;
	uint8_t md[32];
	unsigned l = 0;
	char hx[65];
	EVP_DigestFinal_ex(q->sha, md, &l);
	static const char d[] = "0123456789abcdef";
	for (int i = 0; i < 32; i++) {
		hx[2 * i] = d[md[i] >> 4];
		hx[2 * i + 1] = d[md[i] & 15];
	}
	hx[64] = 0;
	q->sha_done = strcasecmp(hx, q->payload) ? -1 : 1;
	return q->sha_done > 0;
}

/* dnet_source_fn over the request body. */
struct body_src {
	struct s3_req *q;
	uint8_t *pend;
	size_t npend;
	uint64_t limit;
	int err;
};

static int body_source(void *arg, void *buf, size_t len, size_t *got)
{
	struct body_src *bs = arg;
	size_t o = 0;
	while (o < len) {
		if (!bs->npend) {
			int err = body_next(bs->q, &bs->pend, &bs->npend);
			if (err) {
				bs->err = err;
				return err;
			}
			if (!bs->npend)
				break;
			if (bs->q->body_bytes > bs->limit) {
				bs->err = -413;
				return -413;
			}
		}
		size_t n = bs->npend < len - o ? bs->npend : len - o;
		memcpy((uint8_t *)buf + o, bs->pend, n);
		bs->pend += n;
		bs->npend -= n;
		o += n;
	}
	*got = o;
	return 0;
}

/* Stream the body into data object dkey; fills the MD5 hex. */
static int store_body(struct s3_req *q, const char *dkey, size_t dklen, uint64_t *size,
		      char md5hex[33])
{
	int err = digests_start(q);
	if (err)
		return err;
	struct body_src bs = {.q = q, .limit = MAX_PUT};
	uint64_t sz = body_size(q);
	if (sz != UINT64_MAX && sz > MAX_PUT)
		return -413;
	if (sz <= SMALL_PUT) {
		/* Small bodies in one buffer and one write: no chunked-upload machinery
		 * (and its 8 MiB buffers) for a 1 KiB object. */
		uint8_t *buf = malloc(sz ? (size_t)sz : 1), *p;
		size_t got = 0, n;
		if (!buf)
			return DNET_ENOMEM;
		err = body_source(&bs, buf, (size_t)sz, &got);
		/* The body must end here (a chunked one may still have its last chunk). */
		while (!err && !q->body_done) {
			err = body_next(q, &p, &n);
			if (!err && n)
				err = -400;
		}
		if (!err && got != sz)
			err = -400;
		if (!err && payload_ok(q))
			err = dnet_write(q->w->st.cl, dkey, dklen, buf, (size_t)sz, NULL);
		free(buf);
	} else {
		err = dnet_write_stream(q->w->st.cl, dkey, dklen, sz, body_source, &bs, NULL);
	}
	if (bs.err)
		err = bs.err;
	if (!err && !q->body_done)
		err = -400;
	if (!err && sz != UINT64_MAX && q->body_bytes != sz)
		err = -400;
	if (!err && !payload_ok(q))
		err = S3_EBADDIGEST;
	if (err) {
		dnet_remove(q->w->st.cl, dkey, dklen);
		return err;
	}
	uint8_t md[16];
	unsigned l = 0;
	EVP_DigestFinal_ex(q->md5, md, &l);
	s3_md5_hex(md, md5hex);
	*size = q->body_bytes;
	return 0;
}

/* ---- request parsing helpers ---- */

static int qget(struct s3_req *q, const char *name, char *out, size_t cap, size_t *len)
{
	size_t l;
	int rc = s3_query_get(q->r->query, q->r->query_len, name, out, cap - 1, len ? len : &l);
	if (rc == 1)
		out[len ? *len : l] = 0;
	return rc;
}

static int qhas(struct s3_req *q, const char *name)
{
	char tmp[8];
	size_t l;
	return s3_query_get(q->r->query, q->r->query_len, name, tmp, sizeof(tmp), &l) != 0;
}

static const char *hdr(struct s3_req *q, const char *name, size_t *len)
{
	const struct dnet_http_hdr *h = dnet_http_find_hdr(q->r, name);
	if (!h)
		return NULL;
	*len = h->value_len;
	return h->value;
}

/* Content-Type and x-amz-meta-* headers of a PUT, for the object's record. */
static void collect_meta(struct s3_req *q, struct s3_meta *m)
{
	size_t l;
	const char *ct = hdr(q, "content-type", &l);
	if (ct && l < sizeof(m->ctype)) {
		memcpy(m->ctype, ct, l);
		m->ctype[l] = 0;
	} else {
		snprintf(m->ctype, sizeof(m->ctype), "binary/octet-stream");
	}
	m->umeta_len = 0;
	for (uint32_t i = 0; i < q->r->nhdrs; i++) {
		const struct dnet_http_hdr *h = &q->r->hdrs[i];
		if (h->name_len <= 11 || strncasecmp(h->name, "x-amz-meta-", 11) != 0)
			continue;
		if (m->umeta_len + h->name_len + h->value_len + 4 > sizeof(m->umeta))
			break;
		for (uint32_t k = 0; k < h->name_len; k++) {
			char ch = h->name[k];
			m->umeta[m->umeta_len++] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
		}
		memcpy(m->umeta + m->umeta_len, ": ", 2);
		m->umeta_len += 2;
		memcpy(m->umeta + m->umeta_len, h->value, h->value_len);
		m->umeta_len += h->value_len;
		memcpy(m->umeta + m->umeta_len, "\r\n", 2);
		m->umeta_len += 2;
	}
}

static int bucket_exists_or_404(struct s3_req *q)
{
	int err = s3_bucket_exists(&q->w->st, q->bucket, q->blen);
	if (err == 0)
		return 0;
	if (err == DNET_ENOENT)
		send_error(q, 404, "NoSuchBucket", "The specified bucket does not exist.");
	else
		send_store_error(q, err);
	return -1;
}

/* ---- object operations ---- */

static void etag_hdr(char *out, size_t cap, const struct s3_meta *m, const char *more)
{
	char lm[64];
	s3_http_date(m->mtime_ns, lm, sizeof(lm));
	snprintf(out, cap, "ETag: \"%s\"\r\nLast-Modified: %s\r\n%s", m->etag, lm,
		 more ? more : "");
}

static void put_object(struct s3_req *q)
{
	if (bucket_exists_or_404(q))
		return;
	struct s3_meta m;
	memset(&m, 0, sizeof(m));
	s3_new_id(m.id);
	char dkey[80];
	size_t dkl = s3_data_key(dkey, sizeof(dkey), m.id, 0);
	int err = store_body(q, dkey, dkl, &m.size, m.etag);
	if (err) {
		send_store_error(q, err);
		return;
	}
	collect_meta(q, &m);
	m.mtime_ns = dnet_now_real_ns();
	err = s3_object_commit(&q->w->st, q->bucket, q->blen, q->key, q->klen, &m);
	if (err) {
		s3_data_remove(&q->w->st, &m);
		send_store_error(q, err);
		return;
	}
	char extra[256];
	snprintf(extra, sizeof(extra), "ETag: \"%s\"\r\n", m.etag);
	send_body_resp(q, 200, NULL, NULL, 0, extra);
}

struct sock_sink {
	struct s3_req *q;
	int err;
};

static int sock_sink(void *arg, const void *data, size_t len)
{
	struct sock_sink *ss = arg;
	int err = send_all(ss->q, data, len);
	if (err)
		ss->err = err;
	return err;
}

/* Stream bytes [off, off+len) of the object to the client. */
static int stream_object(struct s3_req *q, const struct s3_meta *m, uint64_t off, uint64_t len)
{
	struct sock_sink ss = {.q = q};
	char dkey[80];
	if (!m->nparts) {
		if (!len)
			return 0;
		size_t dkl = s3_data_key(dkey, sizeof(dkey), m->id, 0);
		return dnet_read_stream(q->w->st.cl2, dkey, dkl, off, len, sock_sink, &ss, NULL);
	}
	uint64_t pos = 0;
	for (int i = 0; i < m->nparts && len; i++) {
		uint64_t ps = m->parts[i].size;
		if (off < pos + ps) {
			uint64_t o = off - pos, n = ps - o;
			if (n > len)
				n = len;
			size_t dkl = s3_data_key(dkey, sizeof(dkey), m->id, m->parts[i].num);
			int err =
			    dnet_read_stream(q->w->st.cl2, dkey, dkl, o, n, sock_sink, &ss, NULL);
			if (err)
				return err;
			off += n;
			len -= n;
		}
		pos += ps;
	}
	return len ? DNET_EIO : 0;
}

static void get_object(struct s3_req *q, int head)
{
	struct s3_meta m;
	int err = s3_meta_read(&q->w->st, q->bucket, q->blen, q->key, q->klen, &m);
	if (err) {
		if (err == DNET_ENOENT &&
		    s3_bucket_exists(&q->w->st, q->bucket, q->blen) == DNET_ENOENT)
			send_error(q, 404, "NoSuchBucket", "The specified bucket does not exist.");
		else
			send_store_error(q, err);
		return;
	}
	uint64_t off = 0, len = m.size;
	int status = 200;
	char cr[128] = "";
	size_t rl;
	const char *rv = hdr(q, "range", &rl);
	if (rv) {
		int rc = s3_parse_range(rv, rl, m.size, &off, &len);
		if (rc < 0) {
			char ex[96];
			snprintf(ex, sizeof(ex), "Content-Range: bytes */%llu\r\n",
				 (unsigned long long)m.size);
			s3_meta_free(&m);
			struct dnet_hbuf b;
			dnet_hbuf_init(&b, 256);
			dnet_hbuf_add(&b,
				      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>"
				      "InvalidRange</Code><Message>The requested range is not "
				      "satisfiable</Message></Error>");
			send_xml(q, 416, &b, ex);
			return;
		}
		if (rc == 0) {
			status = 206;
			snprintf(cr, sizeof(cr), "Content-Range: bytes %llu-%llu/%llu\r\n",
				 (unsigned long long)off, (unsigned long long)(off + len - 1),
				 (unsigned long long)m.size);
		}
	}
	/* If-None-Match / If-Match on the ETag (rclone, caches). */
	size_t il;
	const char *inm = hdr(q, "if-none-match", &il);
	char quoted[64];
	int ql = snprintf(quoted, sizeof(quoted), "\"%s\"", m.etag);
	if (inm && ((size_t)ql == il && !memcmp(inm, quoted, il))) {
		char ex[256];
		etag_hdr(ex, sizeof(ex), &m, NULL);
		s3_meta_free(&m);
		send_head(q, 304, NULL, 0, ex);
		return;
	}
	const char *im = hdr(q, "if-match", &il);
	if (im && !(il == 1 && im[0] == '*') && !((size_t)ql == il && !memcmp(im, quoted, il))) {
		s3_meta_free(&m);
		send_error(q, 412, "PreconditionFailed",
			   "At least one of the preconditions failed.");
		return;
	}
	char *ex = malloc(sizeof(m.umeta) + 512);
	if (!ex) {
		s3_meta_free(&m);
		send_store_error(q, DNET_ENOMEM);
		return;
	}
	char lm[64];
	s3_http_date(m.mtime_ns, lm, sizeof(lm));
	snprintf(ex, sizeof(m.umeta) + 512,
		 "ETag: \"%s\"\r\nLast-Modified: %s\r\n"
		 "Accept-Ranges: bytes\r\n%s%.*s",
		 m.etag, lm, cr, (int)m.umeta_len, m.umeta);
	err = send_head(q, status, m.ctype, (int64_t)len, ex);
	free(ex);
	if (!err && !head) {
		err = stream_object(q, &m, off, len);
		if (err) {
			/* The head is out: the only way to say so is to cut the connection. */
			dnet_log_warn("s3 GET %.*s/%.*s: %s after the head was sent", (int)q->blen,
				      q->bucket, (int)q->klen, q->key, dnet_strerror(err));
			q->keep_alive = 0;
		}
	}
	s3_meta_free(&m);
}

static void delete_object(struct s3_req *q)
{
	if (bucket_exists_or_404(q))
		return;
	int err = s3_object_delete(&q->w->st, q->bucket, q->blen, q->key, q->klen);
	if (err && err != DNET_ENOENT) {
		send_store_error(q, err);
		return;
	}
	send_body_resp(q, 204, NULL, NULL, 0, NULL);
}

/* dnet_source_fn reading another object through the worker's second handle. */
struct copy_src {
	struct s3_req *q;
	const struct s3_meta *m;
	uint64_t pos, end; /* bytes [pos, end) of the source are still to come */
	EVP_MD_CTX *md5;
	void *buf;
	size_t blen, boff;
};

static int copy_source(void *arg, void *out, size_t len, size_t *got)
{
	struct copy_src *cs = arg;
	size_t o = 0;
	while (o < len) {
		if (cs->boff == cs->blen) {
			free(cs->buf);
			cs->buf = NULL;
			cs->blen = cs->boff = 0;
			if (cs->pos >= cs->end)
				break;
			/* Which data object holds pos. */
			uint64_t base = 0, part_size = cs->m->size;
			int num = 0;
			for (int i = 0; i < cs->m->nparts; i++) {
				if (cs->pos < base + cs->m->parts[i].size) {
					num = cs->m->parts[i].num;
					part_size = cs->m->parts[i].size;
					break;
				}
				base += cs->m->parts[i].size;
			}
			uint64_t in = cs->pos - base, want = part_size - in;
			if (want > cs->end - cs->pos)
				want = cs->end - cs->pos;
			if (want > (4u << 20))
				want = 4u << 20;
			char dkey[80];
			size_t dkl = s3_data_key(dkey, sizeof(dkey), cs->m->id, num);
			int err = dnet_read(cs->q->w->st.cl2, dkey, dkl, in, want, &cs->buf,
					    &cs->blen, NULL);
			if (err)
				return err;
			if (cs->blen != want)
				return DNET_EIO;
			EVP_DigestUpdate(cs->md5, cs->buf, cs->blen);
			cs->pos += cs->blen;
		}
		size_t n = cs->blen - cs->boff < len - o ? cs->blen - cs->boff : len - o;
		memcpy((uint8_t *)out + o, (uint8_t *)cs->buf + cs->boff, n);
		cs->boff += n;
		o += n;
	}
	*got = o;
	return 0;
}

/* The record of the x-amz-copy-source object ("/bucket/key" or "bucket/key",
 * URL-encoded, maybe "?versionId=..."); -1 after answering an error. */
static int copy_source_meta(struct s3_req *q, const char *src, size_t srclen, struct s3_meta *sm)
{
	char dec[S3_MAX_BUCKET + S3_MAX_KEY + 8];
	size_t dl;
	const char *qm = memchr(src, '?', srclen);
	if (qm)
		srclen = (size_t)(qm - src);
	if (s3_url_decode(src, srclen, dec, sizeof(dec), &dl) != 0) {
		send_error(q, 400, "InvalidArgument", "Bad x-amz-copy-source.");
		return -1;
	}
	const char *p = dec;
	if (dl && *p == '/')
		p++, dl--;
	const char *sl = memchr(p, '/', dl);
	if (!sl || sl == p || (size_t)(sl - p) > S3_MAX_BUCKET || dl - (size_t)(sl - p) - 1 == 0) {
		send_error(q, 400, "InvalidArgument", "Bad x-amz-copy-source.");
		return -1;
	}
	size_t sbl = (size_t)(sl - p), skl = dl - sbl - 1;
	int err = s3_meta_read(&q->w->st, p, sbl, sl + 1, skl, sm);
	if (err) {
		send_store_error(q, err);
		return -1;
	}
	return 0;
}

/* Copy bytes [off, off+len) of the source into the data object dkey, streamed
 * (4 MiB reads through the second handle); fills their MD5. */
static int copy_range(struct s3_req *q, const struct s3_meta *sm, uint64_t off, uint64_t len,
		      const char *dkey, size_t dkl, char md5hex[33])
{
	struct copy_src cs = {
	    .q = q, .m = sm, .pos = off, .end = off + len, .md5 = EVP_MD_CTX_new()};
	if (!cs.md5 || !EVP_DigestInit_ex(cs.md5, EVP_md5(), NULL)) {
		EVP_MD_CTX_free(cs.md5);
		return DNET_ENOMEM;
	}
	int err = dnet_write_stream(q->w->st.cl, dkey, dkl, len, copy_source, &cs, NULL);
	free(cs.buf);
	uint8_t md[16];
	unsigned ml = 0;
	EVP_DigestFinal_ex(cs.md5, md, &ml);
	EVP_MD_CTX_free(cs.md5);
	if (!err && cs.pos != off + len)
		err = DNET_EIO;
	if (err) {
		dnet_remove(q->w->st.cl, dkey, dkl);
		return err;
	}
	s3_md5_hex(md, md5hex);
	return 0;
}

static void copy_object(struct s3_req *q, const char *src, size_t srclen)
{
	if (bucket_exists_or_404(q))
		return;
	struct s3_meta sm;
	if (copy_source_meta(q, src, srclen, &sm))
		return;
	struct s3_meta m;
	memset(&m, 0, sizeof(m));
	s3_new_id(m.id);
	size_t l;
	const char *dir = hdr(q, "x-amz-metadata-directive", &l);
	if (dir && l == 7 && !memcmp(dir, "REPLACE", 7)) {
		collect_meta(q, &m);
	} else {
		memcpy(m.ctype, sm.ctype, sizeof(m.ctype));
		memcpy(m.umeta, sm.umeta, sm.umeta_len);
		m.umeta_len = sm.umeta_len;
	}
	char dkey[80];
	size_t dkl = s3_data_key(dkey, sizeof(dkey), m.id, 0);
	m.size = sm.size;
	int err = copy_range(q, &sm, 0, sm.size, dkey, dkl, m.etag);
	s3_meta_free(&sm);
	if (err) {
		send_store_error(q, err);
		return;
	}
	m.mtime_ns = dnet_now_real_ns();
	err = s3_object_commit(&q->w->st, q->bucket, q->blen, q->key, q->klen, &m);
	if (err) {
		s3_data_remove(&q->w->st, &m);
		send_store_error(q, err);
		return;
	}
	char iso[40];
	s3_iso_date(m.mtime_ns, iso, sizeof(iso));
	struct dnet_hbuf b;
	dnet_hbuf_init(&b, 256);
	dnet_hbuf_add(&b,
		      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CopyObjectResult>"
		      "<LastModified>%s</LastModified><ETag>&quot;%s&quot;</ETag>"
		      "</CopyObjectResult>",
		      iso, m.etag);
	send_xml(q, 200, &b, NULL);
}

/* ---- multipart uploads ---- */

static int upload_id_ok(const char *id, size_t l)
{
	if (l != 32)
		return 0;
	for (size_t i = 0; i < l; i++)
		if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
			return 0;
	return 1;
}

static void create_multipart(struct s3_req *q)
{
	if (bucket_exists_or_404(q))
		return;
	struct s3_meta m;
	memset(&m, 0, sizeof(m));
	collect_meta(q, &m);
	char id[33];
	s3_new_id(id);
	int err = s3_upload_create(&q->w->st, id, q->bucket, q->blen, q->key, q->klen, &m);
	if (err) {
		send_store_error(q, err);
		return;
	}
	struct dnet_hbuf b;
	dnet_hbuf_init(&b, 512);
	dnet_hbuf_add(&b,
		      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<InitiateMultipartUploadResult>"
		      "<Bucket>");
	s3_xml_escape(&b, q->bucket, q->blen);
	dnet_hbuf_add(&b, "</Bucket><Key>");
	s3_xml_escape(&b, q->key, q->klen);
	dnet_hbuf_add(&b, "</Key><UploadId>%s</UploadId></InitiateMultipartUploadResult>", id);
	send_xml(q, 200, &b, NULL);
}

/* The upload named by ?uploadId, checked against the request's bucket and key. */
static int upload_get(struct s3_req *q, char id[40], struct s3_meta *um)
{
	size_t l;
	if (qget(q, "uploadId", id, 40, &l) != 1 || !upload_id_ok(id, l)) {
		send_error(q, 404, "NoSuchUpload", "The specified upload does not exist.");
		return -1;
	}
	int err = s3_upload_read(&q->w->st, id, q->bucket, q->blen, q->key, q->klen, um);
	if (err == DNET_ENOENT) {
		send_error(q, 404, "NoSuchUpload", "The specified upload does not exist.");
		return -1;
	}
	if (err) {
		send_store_error(q, err);
		return -1;
	}
	return 0;
}

static void upload_part(struct s3_req *q)
{
	char id[40], num[16];
	size_t nl;
	struct s3_meta um;
	if (qget(q, "partNumber", num, sizeof(num), &nl) != 1) {
		send_error(q, 400, "InvalidArgument", "Bad partNumber.");
		return;
	}
	int n = atoi(num);
	if (n < 1 || n > S3_MAX_PARTS || nl > 5) {
		send_error(q, 400, "InvalidArgument",
			   "Part number must be an integer between 1 and 10000.");
		return;
	}
	if (upload_get(q, id, &um))
		return;
	s3_meta_free(&um);
	char dkey[80];
	size_t dkl = s3_data_key(dkey, sizeof(dkey), id, n);
	uint64_t size;
	char md5[33];
	size_t csl;
	const char *cs = hdr(q, "x-amz-copy-source", &csl);
	int err;
	if (cs) {
		/* UploadPartCopy: the part is (a range of) another object. */
		struct s3_meta sm;
		if (copy_source_meta(q, cs, csl, &sm))
			return;
		uint64_t off = 0, len = sm.size;
		size_t rl;
		const char *rv = hdr(q, "x-amz-copy-source-range", &rl);
		/* only "bytes=first-last" inside the object */
		if (rv && (rl < 9 || rv[6] == '-' || rv[rl - 1] == '-' ||
			   s3_parse_range(rv, rl, sm.size, &off, &len) != 0)) {
			s3_meta_free(&sm);
			send_error(q, 400, "InvalidArgument", "Bad x-amz-copy-source-range.");
			return;
		}
		size = len;
		err = copy_range(q, &sm, off, len, dkey, dkl, md5);
		s3_meta_free(&sm);
		if (!err)
			err = s3_part_record(&q->w->st, id, n, size, md5);
		if (err) {
			send_store_error(q, err);
			return;
		}
		char iso[40];
		s3_iso_date(dnet_now_real_ns(), iso, sizeof(iso));
		struct dnet_hbuf b;
		dnet_hbuf_init(&b, 256);
		dnet_hbuf_add(&b,
			      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CopyPartResult>"
			      "<LastModified>%s</LastModified><ETag>&quot;%s&quot;</ETag>"
			      "</CopyPartResult>",
			      iso, md5);
		send_xml(q, 200, &b, NULL);
		return;
	}
	err = store_body(q, dkey, dkl, &size, md5);
	if (!err)
		err = s3_part_record(&q->w->st, id, n, size, md5);
	if (err) {
		send_store_error(q, err);
		return;
	}
	char extra[128];
	snprintf(extra, sizeof(extra), "ETag: \"%s\"\r\n", md5);
	send_body_resp(q, 200, NULL, NULL, 0, extra);
}

static void complete_multipart(struct s3_req *q)
{
	char id[40];
	struct s3_meta um;
	if (upload_get(q, id, &um))
		return;
	char *xml = NULL;
	size_t xl;
	int err = body_small(q, MAX_XML_BODY, &xml, &xl);
	struct s3_part *parts = err ? NULL : malloc(sizeof(*parts) * S3_MAX_PARTS);
	int np = 0;
	if (err || !parts) {
		s3_meta_free(&um);
		free(xml);
		send_store_error(q, err ? err : DNET_ENOMEM);
		return;
	}
	int rc = s3_parse_complete(xml, xl, parts, S3_MAX_PARTS, &np);
	free(xml);
	if (rc != 0) {
		s3_meta_free(&um);
		free(parts);
		send_error(q, 400, rc == -3 ? "InvalidPartOrder" : "MalformedXML",
			   rc == -3 ? "The list of parts was not in ascending order."
				    : "The XML you provided was not well-formed.");
		return;
	}
	struct s3_meta m;
	memset(&m, 0, sizeof(m));
	memcpy(m.id, id, 33);
	memcpy(m.ctype, um.ctype, sizeof(m.ctype));
	memcpy(m.umeta, um.umeta, um.umeta_len);
	m.umeta_len = um.umeta_len;
	s3_meta_free(&um);
	m.parts = calloc((size_t)np, sizeof(*m.parts));
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	if (!m.parts || !md || !EVP_DigestInit_ex(md, EVP_md5(), NULL)) {
		free(parts);
		free(m.parts);
		EVP_MD_CTX_free(md);
		send_store_error(q, DNET_ENOMEM);
		return;
	}
	m.nparts = np;
	const char *bad = NULL;
	for (int i = 0; i < np && !bad; i++) {
		uint64_t size;
		char md5[33];
		err = s3_part_read(&q->w->st, id, parts[i].num, &size, md5);
		if (err == DNET_ENOENT || (!err && strcmp(md5, parts[i].etag)))
			bad = "InvalidPart";
		else if (err)
			break;
		else if (i < np - 1 && size < MIN_PART)
			bad = "EntityTooSmall";
		m.parts[i].num = parts[i].num;
		m.parts[i].size = size;
		m.size += size;
		uint8_t raw[16];
		for (int k = 0; k < 16; k++) {
			unsigned v;
			sscanf(parts[i].etag + 2 * k, "%2x", &v);
			raw[k] = (uint8_t)v;
		}
		EVP_DigestUpdate(md, raw, 16);
	}
	free(parts);
	uint8_t fin[16];
	unsigned fl = 0;
	EVP_DigestFinal_ex(md, fin, &fl);
	EVP_MD_CTX_free(md);
	if (bad || err) {
		free(m.parts);
		if (bad)
			send_error(
			    q, 400, bad,
			    !strcmp(bad, "InvalidPart")
				? "One or more of the specified parts could not be found or "
				  "its ETag did not match."
				: "Your proposed upload is smaller than the minimum allowed size.");
		else
			send_store_error(q, err);
		return;
	}
	char hex[33];
	s3_md5_hex(fin, hex);
	snprintf(m.etag, sizeof(m.etag), "%s-%d", hex, np);
	m.mtime_ns = dnet_now_real_ns();
	err = s3_object_commit(&q->w->st, q->bucket, q->blen, q->key, q->klen, &m);
	if (!err)
		s3_upload_finish(&q->w->st, id, &m); /* drops unused parts and the records */
	free(m.parts);
	if (err) {
		send_store_error(q, err);
		return;
	}
	struct dnet_hbuf b;
	dnet_hbuf_init(&b, 512);
	dnet_hbuf_add(&b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
			  "<CompleteMultipartUploadResult><Location>/");
	s3_xml_escape(&b, q->bucket, q->blen);
	dnet_hbuf_add(&b, "/");
	s3_xml_escape(&b, q->key, q->klen);
	dnet_hbuf_add(&b, "</Location><Bucket>");
	s3_xml_escape(&b, q->bucket, q->blen);
	dnet_hbuf_add(&b, "</Bucket><Key>");
	s3_xml_escape(&b, q->key, q->klen);
	dnet_hbuf_add(&b, "</Key><ETag>&quot;%s&quot;</ETag></CompleteMultipartUploadResult>",
		      m.etag);
	send_xml(q, 200, &b, NULL);
}

static void abort_multipart(struct s3_req *q)
{
	char id[40];
	struct s3_meta um;
	if (upload_get(q, id, &um))
		return;
	s3_meta_free(&um);
	s3_upload_finish(&q->w->st, id, NULL);
	send_body_resp(q, 204, NULL, NULL, 0, NULL);
}

/* ---- buckets ---- */

static void list_buckets(struct s3_req *q)
{
	char *names = NULL;
	size_t nl = 0;
	int err = s3_bucket_list(&q->w->st, &names, &nl);
	if (err) {
		send_store_error(q, err);
		return;
	}
	struct dnet_hbuf b;
	dnet_hbuf_init(&b, 1024);
	dnet_hbuf_add(&b,
		      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListAllMyBucketsResult "
		      "xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Owner><ID>elliptics</ID>"
		      "<DisplayName>elliptics</DisplayName></Owner><Buckets>");
	/* lines "NAME CTIME_NS" */
	for (size_t i = 0; i < nl;) {
		size_t j = i;
		while (j < nl && names[j] != '\n')
			j++;
		const char *sp = memchr(names + i, ' ', j - i);
		if (sp) {
			char iso[40];
			s3_iso_date(strtoull(sp + 1, NULL, 10), iso, sizeof(iso));
			dnet_hbuf_add(&b, "<Bucket><Name>");
			s3_xml_escape(&b, names + i, (size_t)(sp - names - i));
			dnet_hbuf_add(&b, "</Name><CreationDate>%s</CreationDate></Bucket>", iso);
		}
		i = j + 1;
	}
	free(names);
	dnet_hbuf_add(&b, "</Buckets></ListAllMyBucketsResult>");
	send_xml(q, 200, &b, NULL);
}

static void create_bucket(struct s3_req *q)
{
	if (!s3_bucket_name_ok(q->bucket, q->blen)) {
		send_error(q, 400, "InvalidBucketName", "The specified bucket is not valid.");
		return;
	}
	if (body_drain(q, 65536) != 0) {
		q->keep_alive = 0;
		send_error(q, 400, "MalformedXML", "The XML you provided was not well-formed.");
		return;
	}
	int err = s3_bucket_create(&q->w->st, q->bucket, q->blen);
	if (err == DNET_EEXIST) {
		send_error(q, 409, "BucketAlreadyOwnedByYou",
			   "Your previous request to create the named bucket succeeded and you "
			   "already own it.");
		return;
	}
	if (err) {
		send_store_error(q, err);
		return;
	}
	char extra[128];
	snprintf(extra, sizeof(extra), "Location: /%.*s\r\n", (int)q->blen, q->bucket);
	send_body_resp(q, 200, NULL, NULL, 0, extra);
}

static void delete_bucket(struct s3_req *q)
{
	int err = s3_bucket_delete(&q->w->st, q->bucket, q->blen);
	if (err == DNET_ENOENT)
		send_error(q, 404, "NoSuchBucket", "The specified bucket does not exist.");
	else if (err == S3_ENOTEMPTY)
		send_error(q, 409, "BucketNotEmpty",
			   "The bucket you tried to delete is not empty.");
	else if (err)
		send_store_error(q, err);
	else
		send_body_resp(q, 204, NULL, NULL, 0, NULL);
}

static void list_objects(struct s3_req *q)
{
	if (bucket_exists_or_404(q))
		return;
	char lt[8], prefix[S3_MAX_KEY + 1], delim[16], mk[16], start[2 * S3_MAX_KEY + 8];
	char enc[16];
	size_t pl = 0, dl = 0, sl = 0;
	int v2 = qget(q, "list-type", lt, sizeof(lt), NULL) == 1 && !strcmp(lt, "2");
	if (qget(q, "prefix", prefix, sizeof(prefix), &pl) < 0 ||
	    qget(q, "delimiter", delim, sizeof(delim), &dl) < 0) {
		send_error(q, 400, "InvalidArgument", "Bad prefix or delimiter.");
		return;
	}
	int url = qget(q, "encoding-type", enc, sizeof(enc), NULL) == 1 && !strcmp(enc, "url");
	int max = 1000;
	if (qget(q, "max-keys", mk, sizeof(mk), NULL) == 1) {
		char *e;
		long v = strtol(mk, &e, 10);
		if (*e || v < 0) {
			send_error(q, 400, "InvalidArgument", "Bad max-keys.");
			return;
		}
		max = v > 1000 ? 1000 : (int)v;
	}
	/* Where to start: after the continuation token (the last name of the previous
	 * page, hex) or start-after (v2), or marker (v1). */
	char tok[2 * S3_MAX_KEY + 8];
	size_t tl = 0;
	int have_tok = 0;
	if (v2 && qget(q, "continuation-token", tok, sizeof(tok), &tl) == 1) {
		if (tl % 2 || tl / 2 > S3_MAX_KEY) {
			send_error(q, 400, "InvalidArgument",
				   "The continuation token is not valid.");
			return;
		}
		for (size_t i = 0; i < tl / 2; i++) {
			unsigned v;
			if (sscanf(tok + 2 * i, "%2x", &v) != 1) {
				send_error(q, 400, "InvalidArgument",
					   "The continuation token is not valid.");
				return;
			}
			start[i] = (char)v;
		}
		sl = tl / 2;
		have_tok = 1;
	} else if (qget(q, v2 ? "start-after" : "marker", start, S3_MAX_KEY + 1, &sl) < 0) {
		send_error(q, 400, "InvalidArgument", "Bad marker.");
		return;
	}
	struct s3_listing ls;
	int err =
	    s3_list(&q->w->st, q->bucket, q->blen, prefix, pl, delim, dl, start, sl, max, &ls);
	if (err) {
		send_store_error(q, err);
		return;
	}
	struct dnet_hbuf b;
	dnet_hbuf_init(&b, 4096);
	dnet_hbuf_add(&b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult "
			  "xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>");
	s3_xml_escape(&b, q->bucket, q->blen);
	dnet_hbuf_add(&b, "</Name><Prefix>");
	s3_xml_escape(&b, prefix, pl);
	dnet_hbuf_add(&b, "</Prefix>");
	if (v2) {
		dnet_hbuf_add(&b, "<KeyCount>%d</KeyCount>", ls.n + ls.nprefixes);
		if (have_tok) {
			dnet_hbuf_add(&b, "<ContinuationToken>");
			s3_xml_escape(&b, tok, tl);
			dnet_hbuf_add(&b, "</ContinuationToken>");
		}
		if (!have_tok && sl) {
			dnet_hbuf_add(&b, "<StartAfter>");
			s3_xml_escape(&b, start, sl);
			dnet_hbuf_add(&b, "</StartAfter>");
		}
	} else {
		dnet_hbuf_add(&b, "<Marker>");
		s3_xml_escape(&b, start, sl);
		dnet_hbuf_add(&b, "</Marker>");
	}
	dnet_hbuf_add(&b, "<MaxKeys>%d</MaxKeys>", max);
	if (dl) {
		dnet_hbuf_add(&b, "<Delimiter>");
		s3_xml_escape(&b, delim, dl);
		dnet_hbuf_add(&b, "</Delimiter>");
	}
	if (url)
		dnet_hbuf_add(&b, "<EncodingType>url</EncodingType>");
	dnet_hbuf_add(&b, "<IsTruncated>%s</IsTruncated>", ls.truncated ? "true" : "false");
	if (ls.truncated) {
		if (v2) {
			dnet_hbuf_add(&b, "<NextContinuationToken>");
			for (size_t i = 0; i < ls.last_len; i++)
				dnet_hbuf_add(&b, "%02x", (unsigned char)ls.last[i]);
			dnet_hbuf_add(&b, "</NextContinuationToken>");
		} else {
			dnet_hbuf_add(&b, "<NextMarker>");
			s3_xml_escape(&b, ls.last, ls.last_len);
			dnet_hbuf_add(&b, "</NextMarker>");
		}
	}
	struct dnet_hbuf eb; /* url-encoded names */
	for (int i = 0; i < ls.n; i++) {
		const struct s3_entry *e = &ls.e[i];
		char iso[40];
		s3_iso_date(e->mtime_ns, iso, sizeof(iso));
		dnet_hbuf_add(&b, "<Contents><Key>");
		if (url) {
			dnet_hbuf_init(&eb, e->klen * 3 + 1);
			s3_url_encode(&eb, e->key, e->klen);
			if (eb.p)
				s3_xml_escape(&b, eb.p, eb.len);
			free(eb.p);
		} else {
			s3_xml_escape(&b, e->key, e->klen);
		}
		dnet_hbuf_add(&b,
			      "</Key><LastModified>%s</LastModified><ETag>&quot;%.*s&quot;</ETag>"
			      "<Size>%llu</Size><StorageClass>STANDARD</StorageClass></Contents>",
			      iso, (int)e->elen, e->etag, (unsigned long long)e->size);
	}
	for (int i = 0; i < ls.nprefixes; i++) {
		dnet_hbuf_add(&b, "<CommonPrefixes><Prefix>");
		if (url) {
			dnet_hbuf_init(&eb, ls.prefixes[i].len * 3 + 1);
			s3_url_encode(&eb, ls.prefixes[i].p, ls.prefixes[i].len);
			if (eb.p)
				s3_xml_escape(&b, eb.p, eb.len);
			free(eb.p);
		} else {
			s3_xml_escape(&b, ls.prefixes[i].p, ls.prefixes[i].len);
		}
		dnet_hbuf_add(&b, "</Prefix></CommonPrefixes>");
	}
	dnet_hbuf_add(&b, "</ListBucketResult>");
	s3_listing_free(&ls);
	send_xml(q, 200, &b, NULL);
}

/* DeleteObjects (POST /bucket?delete): up to 1000 keys. */
static void delete_objects(struct s3_req *q)
{
	if (bucket_exists_or_404(q))
		return;
	char *xml = NULL;
	size_t xl;
	int err = body_small(q, MAX_XML_BODY, &xml, &xl);
	struct s3_del_key *keys = err ? NULL : malloc(sizeof(*keys) * 1000);
	if (err || !keys) {
		free(xml);
		send_store_error(q, err ? err : DNET_ENOMEM);
		return;
	}
	int nk = 0, quiet = 0;
	int rc = s3_parse_delete(xml, xl, keys, 1000, &nk, &quiet);
	free(xml);
	if (rc) {
		free(keys);
		send_error(q, 400, "MalformedXML", "The XML you provided was not well-formed.");
		return;
	}
	struct dnet_hbuf b;
	dnet_hbuf_init(&b, 4096);
	dnet_hbuf_add(&b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DeleteResult "
			  "xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
	for (int i = 0; i < nk; i++) {
		err = s3_object_delete(&q->w->st, q->bucket, q->blen, keys[i].key, keys[i].len);
		if (err && err != DNET_ENOENT) {
			dnet_hbuf_add(&b, "<Error><Key>");
			s3_xml_escape(&b, keys[i].key, keys[i].len);
			dnet_hbuf_add(
			    &b, "</Key><Code>InternalError</Code><Message>%s</Message></Error>",
			    dnet_strerror(err));
		} else if (!quiet) {
			dnet_hbuf_add(&b, "<Deleted><Key>");
			s3_xml_escape(&b, keys[i].key, keys[i].len);
			dnet_hbuf_add(&b, "</Key></Deleted>");
		}
	}
	free(keys);
	dnet_hbuf_add(&b, "</DeleteResult>");
	send_xml(q, 200, &b, NULL);
}

static void bucket_op(struct s3_req *q)
{
	int m = q->r->method;
	if (m == DNET_HTTP_PUT) {
		if (q->r->query_len) {
			send_error(q, 501, "NotImplemented",
				   "This bucket operation is not implemented.");
			return;
		}
		create_bucket(q);
	} else if (m == DNET_HTTP_DELETE) {
		delete_bucket(q);
	} else if (m == DNET_HTTP_POST && qhas(q, "delete")) {
		delete_objects(q);
	} else if (m == DNET_HTTP_HEAD) {
		if (!bucket_exists_or_404(q))
			send_body_resp(q, 200, NULL, NULL, 0, NULL);
	} else if (m == DNET_HTTP_GET) {
		if (qhas(q, "location")) {
			if (bucket_exists_or_404(q))
				return;
			struct dnet_hbuf b;
			dnet_hbuf_init(&b, 256);
			dnet_hbuf_add(
			    &b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<LocationConstraint "
				"xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"></"
				"LocationConstraint>");
			send_xml(q, 200, &b, NULL);
		} else if (qhas(q, "versioning")) {
			if (bucket_exists_or_404(q))
				return;
			struct dnet_hbuf b;
			dnet_hbuf_init(&b, 256);
			dnet_hbuf_add(
			    &b,
			    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<VersioningConfiguration "
			    "xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"/>");
			send_xml(q, 200, &b, NULL);
		} else if (qhas(q, "uploads")) {
			if (bucket_exists_or_404(q))
				return;
			struct dnet_hbuf b;
			dnet_hbuf_init(&b, 512);
			dnet_hbuf_add(&b,
				      "<?xml version=\"1.0\" "
				      "encoding=\"UTF-8\"?>\n<ListMultipartUploadsResult "
				      "xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>");
			s3_xml_escape(&b, q->bucket, q->blen);
			dnet_hbuf_add(&b, "</Bucket><IsTruncated>false</IsTruncated></"
					  "ListMultipartUploadsResult>");
			send_xml(q, 200, &b, NULL);
		} else if (qhas(q, "acl") || qhas(q, "policy") || qhas(q, "cors") ||
			   qhas(q, "lifecycle") || qhas(q, "tagging") || qhas(q, "website") ||
			   qhas(q, "logging") || qhas(q, "versions") || qhas(q, "object-lock") ||
			   qhas(q, "encryption") || qhas(q, "notification") ||
			   qhas(q, "replication")) {
			send_error(q, 501, "NotImplemented",
				   "This bucket operation is not implemented.");
		} else {
			list_objects(q);
		}
	} else {
		send_error(q, 501, "NotImplemented", "This bucket operation is not implemented.");
	}
}

/* Objects have no tags: an empty set (awscli asks before a multipart copy). */
static void get_object_tagging(struct s3_req *q)
{
	struct s3_meta m;
	int err = s3_meta_read(&q->w->st, q->bucket, q->blen, q->key, q->klen, &m);
	if (err) {
		send_store_error(q, err);
		return;
	}
	s3_meta_free(&m);
	struct dnet_hbuf b;
	dnet_hbuf_init(&b, 256);
	dnet_hbuf_add(
	    &b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Tagging "
		"xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><TagSet></TagSet></Tagging>");
	send_xml(q, 200, &b, NULL);
}

static void object_op(struct s3_req *q)
{
	int m = q->r->method;
	size_t l;
	if (m == DNET_HTTP_PUT) {
		const char *cs = hdr(q, "x-amz-copy-source", &l);
		if (qhas(q, "uploadId") && qhas(q, "partNumber")) {
			upload_part(q);
		} else if (q->r->query_len && !qhas(q, "x-id") && !qhas(q, "X-Amz-Algorithm")) {
			send_error(q, 501, "NotImplemented",
				   "This object operation is not implemented.");
		} else if (cs) {
			copy_object(q, cs, l);
		} else {
			put_object(q);
		}
	} else if (m == DNET_HTTP_GET || m == DNET_HTTP_HEAD) {
		if (qhas(q, "tagging") && m == DNET_HTTP_GET)
			get_object_tagging(q);
		else if (qhas(q, "uploadId") || qhas(q, "acl") || qhas(q, "tagging") ||
			 qhas(q, "attributes"))
			send_error(q, 501, "NotImplemented",
				   "This object operation is not implemented.");
		else
			get_object(q, m == DNET_HTTP_HEAD);
	} else if (m == DNET_HTTP_DELETE) {
		if (qhas(q, "uploadId"))
			abort_multipart(q);
		else
			delete_object(q);
	} else if (m == DNET_HTTP_POST) {
		if (qhas(q, "uploads"))
			create_multipart(q);
		else if (qhas(q, "uploadId"))
			complete_multipart(q);
		else
			send_error(q, 501, "NotImplemented",
				   "This object operation is not implemented.");
	} else {
		send_error(q, 501, "NotImplemented", "This object operation is not implemented.");
	}
}

/* Authenticate, split the path into bucket and key, run the operation. */
static void serve(struct s3_req *q)
{
	const struct dnet_http_req *r = q->r;
	int rc =
	    s3_auth_check(r, q->g->keys, q->g->nkeys, (int64_t)(dnet_now_real_ns() / 1000000000ull),
			  q->payload, sizeof(q->payload));
	if (!q->g->nkeys) {
		/* Anonymous mode: no keys configured. Loopback clients only. What the
		 * client says of its body still counts: a hash is checked, a STREAMING-*
		 * body decoded. */
		q->payload[0] = 0;
		size_t pl;
		const char *ph = hdr(q, "x-amz-content-sha256", &pl);
		if (ph && pl < sizeof(q->payload)) {
			memcpy(q->payload, ph, pl);
			q->payload[pl] = 0;
		}
		if (!dnet_addr_is_loopback(q->c->peer)) {
			send_error(
			    q, 403, "AccessDenied",
			    "Anonymous access is allowed from loopback only; configure S3 keys.");
			return;
		}
	} else if (rc != S3_AUTH_OK) {
		static const struct {
			int status;
			const char *code, *msg;
		} e[] = {
		    [S3_AUTH_ANON] = {403, "AccessDenied", "Access Denied"},
		    [S3_AUTH_BADSIG] = {403, "SignatureDoesNotMatch",
					"The request signature we calculated does not match the "
					"signature you provided."},
		    [S3_AUTH_NOKEY] =
			{403, "InvalidAccessKeyId",
			 "The AWS Access Key Id you provided does not exist in our records."},
		    [S3_AUTH_MALFORMED] = {400, "AuthorizationHeaderMalformed",
					   "The authorization header is malformed."},
		    [S3_AUTH_SKEWED] = {403, "RequestTimeTooSkewed",
					"The difference between the request time and the current "
					"time is too large."},
		    [S3_AUTH_EXPIRED] = {403, "AccessDenied", "Request has expired"},
		    [S3_AUTH_UNSUPPORTED] = {400, "InvalidRequest",
					     "Only AWS Signature Version 4 is supported."},
		};
		send_error(q, e[rc].status, e[rc].code, e[rc].msg);
		return;
	}
	/* aws-chunked bodies (payload "STREAMING-..."): decoded by body_next; the chunk
	 * signatures are not checked (the seed signature is): see docs/http.md. */
	body_init(q);
	/* The path: "/", "/bucket[/]", "/bucket/key". */
	const char *p = r->path + 1;
	size_t pl = r->path_len - 1;
	const char *sl = memchr(p, '/', pl);
	size_t bl = sl ? (size_t)(sl - p) : pl;
	char tmp[S3_MAX_BUCKET + 1];
	if (bl && (s3_url_decode(p, bl, tmp, sizeof(tmp) - 1, &q->blen) != 0 || !q->blen)) {
		q->blen = 0;
		send_error(q, 400, "InvalidBucketName", "The specified bucket is not valid.");
		return;
	}
	memcpy(q->bucket, tmp, q->blen);
	q->bucket[q->blen] = 0;
	if (sl && (size_t)(sl - p) + 1 < pl) {
		const char *k = sl + 1;
		size_t kl = pl - (size_t)(k - p);
		if (s3_url_decode(k, kl, q->key, S3_MAX_KEY, &q->klen) != 0) {
			send_error(q, 400, "KeyTooLongError", "Your key is too long or malformed.");
			return;
		}
		q->key[q->klen] = 0;
	}
	if (!q->blen) {
		if (r->method == DNET_HTTP_GET || r->method == DNET_HTTP_HEAD)
			list_buckets(q);
		else
			send_error(q, 405, "MethodNotAllowed",
				   "The specified method is not allowed.");
	} else if (!q->klen) {
		bucket_op(q);
	} else {
		object_op(q);
	}
}

/* ---- threads ---- */

static void serve_conn(struct s3_worker *w, struct dnet_http_conn *c)
{
	struct s3_req q;
	memset(&q, 0, sizeof(q));
	q.g = w->g;
	q.w = w;
	q.c = c;
	q.r = &c->req;
	q.keep_alive = c->req.keep_alive;
	q.start_ns = dnet_now_mono_ns();
	uint64_t rnd = dnet_now_real_ns() ^ ((uint64_t)(uintptr_t)&q << 16);
	q.reqid = rnd * 0x9E3779B97F4A7C15ull;
	serve(&q);
	dnet_log_debug("s3 %s: %.*s %.*s -> %d (%llu body bytes%s)", c->peer,
		       (int)c->req.method_len, c->req.method_str, (int)c->req.target_len,
		       c->req.target, q.status, (unsigned long long)q.body_bytes,
		       q.keep_alive ? "" : ", closing");
	EVP_MD_CTX_free(q.md5);
	EVP_MD_CTX_free(q.sha);
	if (!q.head_sent)
		q.keep_alive = 0;
	/* A body we did not read (an early error) cannot be skipped safely: close. */
	if (!q.body_done && !q.body_started && (c->req.chunked || c->req.content_length))
		q.keep_alive = 0;
	if (!q.body_done)
		q.keep_alive = 0;
	if (!q.keep_alive) {
		shutdown(c->fd, SHUT_WR);
		dnet_http_conn_release(w->g->h, c);
		return;
	}
	/* Keep what follows the request (a pipelined one) and go back to the loop. */
	size_t end = q.body_started ? q.boff : c->req.head_len;
	if (end > c->len)
		end = c->len;
	memmove(c->buf, c->buf + end, c->len - end);
	c->len -= end;
	dnet_http_conn_back(w->g->h, c);
}

static void *worker(void *arg)
{
	struct s3_worker *w = arg;
	struct dnet_s3 *g = w->g;

	dnet_thread_name("ell-s3/%d", (int)(w - g->w));
	pthread_mutex_lock(&g->lock);
	for (;;) {
		while (!g->stop && !g->qhead)
			pthread_cond_wait(&g->cond, &g->lock);
		if (g->stop)
			break;
		struct dnet_http_conn *c = g->qhead;
		g->qhead = c->next;
		if (!g->qhead)
			g->qtail = NULL;
		g->qlen--;
		c->next = NULL;
		w->cur = c;
		pthread_mutex_unlock(&g->lock);
		serve_conn(w, c);
		pthread_mutex_lock(&g->lock);
		w->cur = NULL;
	}
	pthread_mutex_unlock(&g->lock);
	return NULL;
}

void dnet_s3_submit(struct dnet_http *h, struct dnet_http_conn *c)
{
	struct dnet_s3 *g = h->s3;
	pthread_mutex_lock(&g->lock);
	c->next = NULL;
	if (g->qtail)
		g->qtail->next = c;
	else
		g->qhead = c;
	g->qtail = c;
	g->qlen++;
	pthread_cond_signal(&g->cond);
	pthread_mutex_unlock(&g->lock);
}

int dnet_s3_busy(struct dnet_http *h)
{
	struct dnet_s3 *g = h->s3;
	pthread_mutex_lock(&g->lock);
	int busy = g->qlen >= GW_QUEUE;
	pthread_mutex_unlock(&g->lock);
	return busy;
}

int dnet_s3_wants(struct dnet_http *h, const struct dnet_http_req *r, int fixed_route)
{
	if (r->path_len < 1 || r->path[0] != '/')
		return 0;
	if (!fixed_route)
		return 1;
	/* "/", "/metrics", "/ring" ... stay the endpoint's own unless the request is
	 * an S3 one: signed, or with S3 headers or parameters. */
	if (r->query_len || dnet_http_find_hdr(r, "authorization"))
		return 1;
	for (uint32_t i = 0; i < r->nhdrs; i++)
		if (r->hdrs[i].name_len > 6 && !strncasecmp(r->hdrs[i].name, "x-amz-", 6))
			return 1;
	return 0;
}

/* Keys: ELLIPTICS_S3_ACCESS_KEY / ELLIPTICS_S3_SECRET_KEY, the config's
 * s3-access-key / s3-secret-key, and the lines "ACCESS SECRET" of --s3-keys FILE. */
static int load_keys(struct dnet_s3 *g)
{
	struct dnet_config *cfg = &g->h->s->cfg;
	const char *ak = getenv("ELLIPTICS_S3_ACCESS_KEY"), *sk = getenv("ELLIPTICS_S3_SECRET_KEY");
	int cap = 4;
	g->keys = calloc((size_t)cap, sizeof(*g->keys));
	if (!g->keys)
		return -1;
	const char *pairs[2][2] = {{ak, sk}, {cfg->s3_access_key, cfg->s3_secret_key}};
	for (int i = 0; i < 2; i++) {
		const char *a = pairs[i][0], *s = pairs[i][1];
		if ((a && *a) != (s && *s)) {
			dnet_log_error(
			    "S3 keys: an access key needs its secret key and the other way round");
			return -1;
		}
		if (!a || !*a)
			continue;
		if (strlen(a) >= sizeof(g->keys[0].access) ||
		    strlen(s) >= sizeof(g->keys[0].secret)) {
			dnet_log_error("S3 keys: too long");
			return -1;
		}
		snprintf(g->keys[g->nkeys].access, sizeof(g->keys[0].access), "%s", a);
		snprintf(g->keys[g->nkeys].secret, sizeof(g->keys[0].secret), "%s", s);
		g->nkeys++;
	}
	if (cfg->s3_keys[0]) {
		FILE *f = fopen(cfg->s3_keys, "r");
		if (!f) {
			dnet_log_error("--s3-keys %s: %s", cfg->s3_keys, strerror(errno));
			return -1;
		}
		char line[512];
		int ln = 0;
		while (fgets(line, sizeof(line), f)) {
			ln++;
			char a[256], s[256];
			if (line[0] == '#' || line[0] == '\n')
				continue;
			if (sscanf(line, "%255s %255s", a, s) != 2 ||
			    strlen(a) >= sizeof(g->keys[0].access) ||
			    strlen(s) >= sizeof(g->keys[0].secret)) {
				dnet_log_error("--s3-keys %s:%d: expected 'ACCESS_KEY SECRET_KEY'",
					       cfg->s3_keys, ln);
				fclose(f);
				return -1;
			}
			if (g->nkeys == cap) {
				struct s3_key *nk = realloc(g->keys, sizeof(*nk) * (size_t)cap * 2);
				if (!nk) {
					fclose(f);
					return -1;
				}
				g->keys = nk;
				cap *= 2;
			}
			snprintf(g->keys[g->nkeys].access, sizeof(g->keys[0].access), "%s", a);
			snprintf(g->keys[g->nkeys].secret, sizeof(g->keys[0].secret), "%s", s);
			g->nkeys++;
		}
		fclose(f);
	}
	return 0;
}

static void s3_free(struct dnet_s3 *g)
{
	for (int i = 0; i < GW_THREADS; i++)
		s3_store_close(&g->w[i].st);
	s3_shared_destroy(&g->shared);
	if (g->keys)
		OPENSSL_cleanse(g->keys, sizeof(*g->keys) * (size_t)g->nkeys);
	free(g->keys);
	pthread_mutex_destroy(&g->lock);
	pthread_cond_destroy(&g->cond);
	free(g);
}

int dnet_s3_start(struct dnet_http *h)
{
	struct dnet_s3 *g = calloc(1, sizeof(*g));
	if (!g)
		return -1;
	g->h = h;
	pthread_mutex_init(&g->lock, NULL);
	pthread_cond_init(&g->cond, NULL);
	s3_shared_init(&g->shared);
	if (load_keys(g) != 0) {
		s3_free(g);
		return -1;
	}
	/* The gateway is a client of the ring, entering through this node. */
	char remote[80];
	const char *ls = h->s->listen_str;
	const char *colon = strrchr(ls, ':');
	if (!strncmp(ls, "0.0.0.0:", 8) && colon)
		snprintf(remote, sizeof(remote), "127.0.0.1%s", colon);
	else if (!strncmp(ls, "[::]:", 5) && colon)
		snprintf(remote, sizeof(remote), "[::1]%s", colon);
	else
		snprintf(remote, sizeof(remote), "%s", ls);
	char writer[17];
	for (int i = 0; i < 8; i++)
		snprintf(writer + 2 * i, 3, "%02x", h->s->node_id[i]);
	/* A TLS node: the gateway's handles speak TLS to it, verifying it as other
	 * nodes do (against --tls-ca, or its own certificate when there is none) and
	 * showing its certificate if clients must have one. */
	const struct dnet_config *cfg = &h->s->cfg;
	const char *tca = cfg->tls_cert[0] ? (cfg->tls_ca[0] ? cfg->tls_ca : cfg->tls_cert) : NULL;
	for (int i = 0; i < GW_THREADS; i++) {
		g->w[i].g = g;
		if (s3_store_open(&g->w[i].st, remote, getenv("ELLIPTICS_KEY"), tca,
				  tca ? cfg->tls_cert : NULL, tca ? cfg->tls_key : NULL, writer,
				  &g->shared) != 0) {
			dnet_log_error("S3 gateway: cannot create its client handles");
			s3_free(g);
			return -1;
		}
	}
	for (int i = 0; i < GW_THREADS; i++) {
		if (pthread_create(&g->w[i].th, NULL, worker, &g->w[i]) != 0)
			break;
		g->w[i].started = 1;
	}
	h->s3 = g;
	if (!g->w[0].started) {
		dnet_s3_stop(h);
		return -1;
	}
	if (g->nkeys)
		dnet_log_info("S3 gateway: %d access key(s), Signature V4 required", g->nkeys);
	else
		dnet_log_info(
		    "S3 gateway: no S3 keys configured: anonymous access, loopback clients only");
	return 0;
}

void dnet_s3_stop(struct dnet_http *h)
{
	struct dnet_s3 *g = h->s3;
	if (!g)
		return;
	pthread_mutex_lock(&g->lock);
	g->stop = 1;
	for (int i = 0; i < GW_THREADS; i++)
		if (g->w[i].cur)
			shutdown(g->w[i].cur->fd, SHUT_RDWR);
	pthread_cond_broadcast(&g->cond);
	pthread_mutex_unlock(&g->lock);
	for (int i = 0; i < GW_THREADS; i++)
		if (g->w[i].started)
			pthread_join(g->w[i].th, NULL);
	while (g->qhead) {
		struct dnet_http_conn *c = g->qhead;
		g->qhead = c->next;
		dnet_http_conn_release(h, c);
	}
	h->s3 = NULL;
	s3_free(g);
}
