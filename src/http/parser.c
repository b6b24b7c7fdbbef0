/* parser.c - HTTP/1.1 request heads and chunked bodies (RFC 9112), strictly: what a
 * real client sends is accepted, anything ambiguous (request smuggling material
 * such as Content-Length with Transfer-Encoding, obs-fold, bare LF) is refused. */
#include <string.h>
#include <strings.h>

#include "http.h"

/* tchar of RFC 9110: token characters. */
static int is_tchar(unsigned char c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return 1;
	return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int is_hex(unsigned char c, unsigned *v)
{
	if (c >= '0' && c <= '9')
		*v = c - '0';
	else if (c >= 'a' && c <= 'f')
		*v = (unsigned)(c - 'a' + 10);
	else if (c >= 'A' && c <= 'F')
		*v = (unsigned)(c - 'A' + 10);
	else
		return 0;
	return 1;
}

static int eq_nocase(const char *a, size_t alen, const char *lit)
{
	size_t l = strlen(lit);
	return alen == l && strncasecmp(a, lit, l) == 0;
}

const struct dnet_http_hdr *dnet_http_find_hdr(const struct dnet_http_req *r, const char *name)
{
	for (uint32_t i = 0; i < r->nhdrs; i++)
		if (eq_nocase(r->hdrs[i].name, r->hdrs[i].name_len, name))
			return &r->hdrs[i];
	return NULL;
}

/* Is the start of an incomplete head already wrong? Checks the request line as far
 * as it has arrived (method, target, version), so garbage is refused at once
 * instead of when a head limit or deadline is reached. */
static int check_prefix(const char *buf, size_t len)
{
	const char *nl = memchr(buf, '\n', len);
	size_t end = nl ? (size_t)(nl - buf) : len;
	if (nl && (nl == buf || nl[-1] != '\r'))
		return -400;
	if (nl)
		end--; /* the CR */
	size_t i = 0;
	while (i < end && i <= DNET_HTTP_MAX_METHOD && is_tchar((unsigned char)buf[i]))
		i++;
	if (i < end && (buf[i] != ' ' || i == 0 || i > DNET_HTTP_MAX_METHOD))
		return -400;
	if (i < end)
		i++;
	while (i < end && buf[i] != ' ') {
		unsigned char c = (unsigned char)buf[i++];
		if (c <= 0x20 || c >= 0x7f)
			return -400;
	}
	if (i < end)
		i++;
	/* "HTTP/" digit "." digit, then CR (already cut off when the LF is here). */
	static const char proto[] = "HTTP/9.9\r";
	for (size_t k = 0; i < end && k < sizeof(proto) - 1; k++, i++) {
		char c = buf[i];
		if (proto[k] == '9' ? (c < '0' || c > '9') : c != proto[k])
			return -400;
	}
	if (i < end)
		return -400;
	if (!nl)
		return len > DNET_HTTP_MAX_LINE ? -414 : 0;
	if (end > DNET_HTTP_MAX_LINE)
		return -414;
	return 0;
}

/* Content-Length: 1*DIGIT, without sign, spaces or lists; at most 19 digits. */
static int parse_length(const char *v, size_t n, uint64_t *out)
{
	if (n == 0 || n > 19)
		return -1;
	uint64_t x = 0;
	for (size_t i = 0; i < n; i++) {
		if (v[i] < '0' || v[i] > '9')
			return -1;
		x = x * 10 + (uint64_t)(v[i] - '0');
	}
	*out = x;
	return 0;
}

/* Does a comma-separated header value contain token tok (case-insensitive)? */
static int has_token(const char *v, size_t n, const char *tok)
{
	size_t i = 0;
	while (i < n) {
		while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
			i++;
		size_t s = i;
		while (i < n && v[i] != ',')
			i++;
		size_t e = i;
		while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
			e--;
		if (e > s && eq_nocase(v + s, e - s, tok))
			return 1;
	}
	return 0;
}

static int parse_request_line(const char *p, size_t n, struct dnet_http_req *r)
{
	size_t i = 0;
	while (i < n && is_tchar((unsigned char)p[i]))
		i++;
	if (i == 0 || i > DNET_HTTP_MAX_METHOD || i >= n || p[i] != ' ')
		return -400;
	r->method_str = p;
	r->method_len = (uint32_t)i;
	static const struct {
		const char *name;
		int m;
	} methods[] = {{"GET", DNET_HTTP_GET},	     {"HEAD", DNET_HTTP_HEAD},
		       {"PUT", DNET_HTTP_PUT},	     {"POST", DNET_HTTP_POST},
		       {"DELETE", DNET_HTTP_DELETE}, {"OPTIONS", DNET_HTTP_OPTIONS}};
	r->method = DNET_HTTP_OTHER;
	for (size_t k = 0; k < sizeof(methods) / sizeof(methods[0]); k++)
		if (i == strlen(methods[k].name) && !memcmp(p, methods[k].name, i))
			r->method = methods[k].m;
	size_t ts = ++i;
	while (i < n && p[i] != ' ') {
		unsigned char c = (unsigned char)p[i];
		if (c <= 0x20 || c >= 0x7f)
			return -400;
		i++;
	}
	if (i == ts || i >= n)
		return -400;
	r->target = p + ts;
	r->target_len = (uint32_t)(i - ts);
	if (r->target[0] != '/' &&
	    !(r->target_len == 1 && r->target[0] == '*' && r->method == DNET_HTTP_OPTIONS))
		return -400;
	const char *q = memchr(r->target, '?', r->target_len);
	r->path = r->target;
	r->path_len = q ? (uint32_t)(q - r->target) : r->target_len;
	r->query = q ? q + 1 : NULL;
	r->query_len = q ? r->target_len - r->path_len - 1 : 0;
	i++;
	const char *v = p + i;
	size_t vl = n - i;
	if (vl != 8 || memcmp(v, "HTTP/", 5) != 0 || v[6] != '.' || v[5] < '0' || v[5] > '9' ||
	    v[7] < '0' || v[7] > '9')
		return -400;
	if (v[5] != '1' || (v[7] != '0' && v[7] != '1'))
		return -505;
	r->version_minor = v[7] - '0';
	return 0;
}

int dnet_http_parse_head(const char *buf, size_t len, uint64_t max_body, struct dnet_http_req *r)
{
	size_t window = len < DNET_HTTP_MAX_HEAD ? len : DNET_HTTP_MAX_HEAD;
	const char *end = NULL;
	for (size_t i = 3; i < window; i++) {
		if (buf[i] == '\n' && buf[i - 1] == '\r' && buf[i - 2] == '\n' &&
		    buf[i - 3] == '\r') {
			end = buf + i + 1;
			break;
		}
	}
	int err = check_prefix(buf, window);
	if (err)
		return err;
	if (!end)
		return len >= DNET_HTTP_MAX_HEAD ? -431 : 0;

	memset(r, 0, sizeof(*r));
	r->head_len = (size_t)(end - buf);
	const char *p = buf;
	const char *nl = memchr(p, '\n', r->head_len);
	if ((err = parse_request_line(p, (size_t)(nl - 1 - p), r)))
		return err;
	p = nl + 1;

	int te = 0, hosts = 0;
	for (;;) {
		nl = memchr(p, '\n', (size_t)(end - p));
		if (!nl || nl == p || nl[-1] != '\r')
			return -400;
		size_t ll = (size_t)(nl - 1 - p);
		if (ll == 0)
			break; /* the empty line ending the head */
		if (r->nhdrs == DNET_HTTP_MAX_HEADERS)
			return -431;
		size_t i = 0;
		while (i < ll && is_tchar((unsigned char)p[i]))
			i++;
		/* No name (this also refuses obs-fold: a line starting with SP/HTAB), or
		 * whitespace before the colon. */
		if (i == 0 || i >= ll || p[i] != ':')
			return -400;
		struct dnet_http_hdr *h = &r->hdrs[r->nhdrs++];
		h->name = p;
		h->name_len = (uint32_t)i;
		size_t vs = i + 1, ve = ll;
		while (vs < ve && (p[vs] == ' ' || p[vs] == '\t'))
			vs++;
		while (ve > vs && (p[ve - 1] == ' ' || p[ve - 1] == '\t'))
			ve--;
		for (size_t k = vs; k < ve; k++) {
			unsigned char c = (unsigned char)p[k];
			if ((c < 0x20 && c != '\t') || c == 0x7f)
				return -400;
		}
		h->value = p + vs;
		h->value_len = (uint32_t)(ve - vs);

		if (eq_nocase(h->name, h->name_len, "content-length")) {
			uint64_t cl;
			if (parse_length(h->value, h->value_len, &cl) != 0)
				return -400;
			if (r->has_length && cl != r->content_length)
				return -400;
			r->has_length = 1;
			r->content_length = cl;
		} else if (eq_nocase(h->name, h->name_len, "transfer-encoding")) {
			if (te++)
				return -400;
			if (!eq_nocase(h->value, h->value_len, "chunked"))
				return has_token(h->value, h->value_len, "chunked") ? -400 : -501;
			r->chunked = 1;
		} else if (eq_nocase(h->name, h->name_len, "host")) {
			hosts++;
		} else if (eq_nocase(h->name, h->name_len, "expect")) {
			if (!eq_nocase(h->value, h->value_len, "100-continue"))
				return -417;
			r->expect_continue = 1;
		}
		p = nl + 1;
	}
	/* Both framings at once is how requests are smuggled past proxies. */
	if (r->chunked && (r->has_length || r->version_minor == 0))
		return -400;
	if (r->version_minor == 1 && hosts != 1)
		return -400;
	if (hosts > 1)
		return -400;
	if (r->has_length && r->content_length > max_body)
		return -413;
	const struct dnet_http_hdr *conn = dnet_http_find_hdr(r, "connection");
	if (r->version_minor == 1)
		r->keep_alive = !(conn && has_token(conn->value, conn->value_len, "close"));
	else
		r->keep_alive = conn && has_token(conn->value, conn->value_len, "keep-alive");
	return (int)r->head_len;
}

enum {
	CH_SIZE,
	CH_EXT,
	CH_SIZE_LF,
	CH_DATA,
	CH_DATA_CR,
	CH_DATA_LF,
	CH_TRAILER,
	CH_TRAILER_LINE,
	CH_TRAILER_LF,
	CH_END_LF,
	CH_DONE,
};

#define CH_MAX_LINE 4096
#define CH_MAX_TRAILER 16384

void dnet_http_chunked_init(struct dnet_http_chunked *c, uint64_t max_total)
{
	memset(c, 0, sizeof(*c));
	c->state = CH_SIZE;
	c->max = max_total;
}

int dnet_http_chunked_done(const struct dnet_http_chunked *c)
{
	return c->state == CH_DONE;
}

ssize_t dnet_http_chunked_decode(struct dnet_http_chunked *c, const uint8_t *in, size_t len,
				 uint8_t *out, size_t *nout)
{
	size_t i = 0, o = 0;
	*nout = 0;
	while (i < len && c->state != CH_DONE) {
		uint8_t ch = in[i];
		unsigned v;
		switch (c->state) {
		case CH_SIZE:
			if (is_hex(ch, &v)) {
				if (c->digits == 16)
					return -413;
				c->left = c->left << 4 | v;
				c->digits++;
			} else if (c->digits && ch == ';') {
				c->state = CH_EXT;
				c->line = 0;
			} else if (c->digits && ch == '\r') {
				c->state = CH_SIZE_LF;
			} else {
				return -400;
			}
			i++;
			break;
		case CH_EXT:
			if (ch == '\r')
				c->state = CH_SIZE_LF;
			else if ((ch < 0x20 && ch != '\t') || ch == 0x7f || ++c->line > CH_MAX_LINE)
				return -400;
			i++;
			break;
		case CH_SIZE_LF:
			if (ch != '\n')
				return -400;
			i++;
			if (c->left > c->max - c->total)
				return -413;
			c->state = c->left ? CH_DATA : CH_TRAILER;
			break;
		case CH_DATA: {
			size_t n = len - i;
			if (n > c->left)
				n = (size_t)c->left;
			memmove(out + o, in + i, n);
			o += n;
			i += n;
			c->left -= n;
			c->total += n;
			if (!c->left)
				c->state = CH_DATA_CR;
			break;
		}
		case CH_DATA_CR:
			if (ch != '\r')
				return -400;
			c->state = CH_DATA_LF;
			i++;
			break;
		case CH_DATA_LF:
			if (ch != '\n')
				return -400;
			c->state = CH_SIZE;
			c->digits = 0;
			c->left = 0;
			i++;
			break;
		case CH_TRAILER:
			if (ch == '\r') {
				c->state = CH_END_LF;
			} else {
				c->state = CH_TRAILER_LINE;
				c->line = 0;
				continue; /* the same byte starts the line */
			}
			i++;
			break;
		case CH_TRAILER_LINE:
			if (ch == '\r')
				c->state = CH_TRAILER_LF;
			else if ((ch < 0x20 && ch != '\t') || ch == 0x7f ||
				 ++c->line > CH_MAX_LINE || ++c->trailer > CH_MAX_TRAILER)
				return -400;
			i++;
			break;
		case CH_TRAILER_LF:
			if (ch != '\n')
				return -400;
			c->state = CH_TRAILER;
			i++;
			break;
		case CH_END_LF:
			if (ch != '\n')
				return -400;
			c->state = CH_DONE;
			i++;
			break;
		default:
			return -400;
		}
	}
	*nout = o;
	return (ssize_t)i;
}

const char *dnet_http_reason(int status)
{
	switch (status) {
	case 100:
		return "Continue";
	case 200:
		return "OK";
	case 204:
		return "No Content";
	case 400:
		return "Bad Request";
	case 403:
		return "Forbidden";
	case 404:
		return "Not Found";
	case 405:
		return "Method Not Allowed";
	case 408:
		return "Request Timeout";
	case 411:
		return "Length Required";
	case 413:
		return "Content Too Large";
	case 414:
		return "URI Too Long";
	case 417:
		return "Expectation Failed";
	case 431:
		return "Request Header Fields Too Large";
	case 500:
		return "Internal Server Error";
	case 501:
		return "Not Implemented";
	case 503:
		return "Service Unavailable";
	case 505:
		return "HTTP Version Not Supported";
	default:
		return "Unknown";
	}
}
