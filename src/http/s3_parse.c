/* s3_parse.c - the S3 gateway's pure parsers: percent-decoding, query parameters,
 * Range headers, CompleteMultipartUpload bodies, XML escaping. No I/O, no
 * allocation; every input is bounded by its length argument (fuzzed by
 * tests/fuzz/fuzz_http.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "s3.h"
#include "s3_store.h"

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int s3_url_decode(const char *s, size_t n, char *out, size_t cap, size_t *outlen)
{
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		char ch = s[i];
		if (ch == '%') {
			if (n - i < 3)
				return -1;
			int hi = hexval(s[i + 1]), lo = hexval(s[i + 2]);
			if (hi < 0 || lo < 0)
				return -1;
			ch = (char)(hi << 4 | lo);
			i += 2;
		}
		if (o >= cap)
			return -1;
		out[o++] = ch;
	}
	*outlen = o;
	return 0;
}

int s3_query_get(const char *q, size_t qlen, const char *name, char *out, size_t cap,
		 size_t *outlen)
{
	size_t nl = strlen(name);
	size_t i = 0;
	if (!q)
		return 0;
	while (i <= qlen) {
		size_t j = i;
		while (j < qlen && q[j] != '&')
			j++;
		size_t eq = i;
		while (eq < j && q[eq] != '=')
			eq++;
		char dn[128];
		size_t dl;
		if (eq - i < sizeof(dn) && s3_url_decode(q + i, eq - i, dn, sizeof(dn), &dl) == 0 &&
		    dl == nl && !memcmp(dn, name, nl)) {
			if (eq == j) {
				*outlen = 0;
				return 1;
			}
			return s3_url_decode(q + eq + 1, j - eq - 1, out, cap, outlen) == 0 ? 1
											    : -1;
		}
		i = j + 1;
	}
	return 0;
}

static int parse_u64(const char *s, size_t n, uint64_t *v)
{
	uint64_t x = 0;
	if (!n || n > 19)
		return -1;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		x = x * 10 + (uint64_t)(s[i] - '0');
	}
	*v = x;
	return 0;
}

int s3_parse_range(const char *v, size_t n, uint64_t size, uint64_t *off, uint64_t *len)
{
	while (n && (*v == ' ' || *v == '\t'))
		v++, n--;
	while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
		n--;
	if (n < 6 || memcmp(v, "bytes=", 6) != 0)
		return 1;
	v += 6;
	n -= 6;
	const char *dash = memchr(v, '-', n);
	if (!dash || memchr(v, ',', n))
		return 1; /* multiple ranges: serve the whole object, as S3 does */
	size_t a = (size_t)(dash - v), b = n - a - 1;
	uint64_t first, last;
	if (a == 0) { /* suffix: the last b bytes */
		if (parse_u64(dash + 1, b, &last) != 0)
			return 1;
		if (last == 0)
			return -1;
		if (size == 0)
			return -1;
		if (last > size)
			last = size;
		*off = size - last;
		*len = last;
		return 0;
	}
	if (parse_u64(v, a, &first) != 0)
		return 1;
	if (b == 0)
		last = UINT64_MAX;
	else if (parse_u64(dash + 1, b, &last) != 0 || last < first)
		return 1;
	if (first >= size)
		return -1;
	if (last >= size)
		last = size - 1;
	*off = first;
	*len = last - first + 1;
	return 0;
}

/* The content of the next <tag>...</tag> in [p, end), or NULL. */
static const char *find_elem(const char *p, const char *end, const char *tag, size_t *clen,
			     const char **after)
{
	size_t tl = strlen(tag);
	for (const char *q = p; q + tl + 2 <= end; q++) {
		if (q[0] != '<' || memcmp(q + 1, tag, tl) != 0)
			continue;
		const char *c = q + tl + 1;
		if (*c == ' ' || *c == '\t' || *c == '\r' || *c == '\n') { /* attributes */
			while (c < end && *c != '>')
				c++;
			if (c == end)
				return NULL;
		}
		if (*c != '>')
			continue;
		c++;
		for (const char *e = c; e + tl + 3 <= end; e++) {
			if (e[0] == '<' && e[1] == '/' && !memcmp(e + 2, tag, tl) &&
			    e[tl + 2] == '>') {
				*clen = (size_t)(e - c);
				*after = e + tl + 3;
				return c;
			}
		}
		return NULL;
	}
	return NULL;
}

int s3_parse_complete(const char *xml, size_t n, struct s3_part *parts, int max, int *nparts)
{
	const char *p = xml, *end = xml + n;
	int np = 0;
	size_t cl;
	const char *after;
	if (!find_elem(p, end, "CompleteMultipartUpload", &cl, &after))
		return -1;
	const char *c;
	while ((c = find_elem(p, end, "Part", &cl, &after)) != NULL) {
		const char *pend = c + cl, *a2;
		size_t nl, el;
		const char *num = find_elem(c, pend, "PartNumber", &nl, &a2);
		const char *et = find_elem(c, pend, "ETag", &el, &a2);
		uint64_t v;
		if (!num || !et || parse_u64(num, nl, &v) != 0 || v < 1 || v > S3_MAX_PARTS)
			return -1;
		if (np == max)
			return -2;
		if (np && (int)v <= parts[np - 1].num)
			return DNET_ENOMEM;
		/* The ETag as sent: "hex", &quot;hex&quot; or hex. */
		if (el >= 6 && !memcmp(et, "&quot;", 6)) {
			et += 6;
			el -= 6;
		} else if (el && et[0] == '"') {
			et++;
			el--;
		}
		if (el >= 6 && !memcmp(et + el - 6, "&quot;", 6))
			el -= 6;
		else if (el && et[el - 1] == '"')
			el--;
		if (el != 32)
			return -1;
		for (size_t i = 0; i < 32; i++)
			if (hexval(et[i]) < 0)
				return -1;
		parts[np].num = (int)v;
		for (size_t i = 0; i < 32; i++)
			parts[np].etag[i] =
			    (char)(et[i] >= 'A' && et[i] <= 'F' ? et[i] + 32 : et[i]);
		parts[np].etag[32] = 0;
		np++;
		p = after;
	}
	if (!np)
		return -1;
	*nparts = np;
	return 0;
}

void s3_xml_escape(struct dnet_hbuf *b, const char *s, size_t n)
{
	size_t run = 0;
	for (size_t i = 0; i < n; i++) {
		const char *rep = NULL;
		char num[16];
		unsigned char ch = (unsigned char)s[i];
		switch (ch) {
		case '&':
			rep = "&amp;";
			break;
		case '<':
			rep = "&lt;";
			break;
		case '>':
			rep = "&gt;";
			break;
		case '"':
			rep = "&quot;";
			break;
		case '\'':
			rep = "&apos;";
			break;
		default:
			if (ch < 0x20 || ch == 0x7f) {
				snprintf(num, sizeof(num), "&#x%X;", ch);
				rep = num;
			}
		}
		if (!rep)
			continue;
		dnet_hbuf_put(b, s + run, i - run);
		dnet_hbuf_put(b, rep, strlen(rep));
		run = i + 1;
	}
	dnet_hbuf_put(b, s + run, n - run);
}

int s3_bucket_name_ok(const char *s, size_t n)
{
	if (n < 3 || n > S3_MAX_BUCKET)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		int alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
		if (!alnum && c != '-' && c != '.')
			return 0;
		if (!alnum && (i == 0 || i == n - 1))
			return 0;
	}
	return 1;
}

void s3_url_encode(struct dnet_hbuf *b, const char *s, size_t n)
{
	static const char hx[] = "0123456789ABCDEF";
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		    c == '-' || c == '_' || c == '.' || c == '~' || c == '/') {
			dnet_hbuf_put(b, (const char *)&c, 1);
		} else {
			char e[3] = {'%', hx[c >> 4], hx[c & 15]};
			dnet_hbuf_put(b, e, 3);
		}
	}
}

/* A shard: "S3I1" then entries sorted by key: u16 klen, key, u64 size, u64 mtime,
 * u8 etag length, etag (little-endian). */
int s3_shard_parse(const uint8_t *p, size_t n, struct s3_entry **out, int *count)
{
	*out = NULL;
	*count = 0;
	if (n == 0)
		return 0;
	if (n < 4 || memcmp(p, "S3I1", 4))
		return DNET_ECORRUPT;
	size_t cap = 0;
	struct s3_entry *e = NULL;
	int c = 0;
	for (size_t i = 4; i < n;) {
		if (n - i < 2)
			goto bad;
		size_t kl = (size_t)p[i] | (size_t)p[i + 1] << 8;
		i += 2;
		if (kl == 0 || kl > S3_MAX_KEY || n - i < kl + 17)
			goto bad;
		if ((size_t)c == cap) {
			cap = cap ? cap * 2 : 64;
			struct s3_entry *ne = realloc(e, cap * sizeof(*e));
			if (!ne) {
				free(e);
				return DNET_ENOMEM;
			}
			e = ne;
		}
		struct s3_entry *x = &e[c++];
		x->key = (const char *)p + i;
		x->klen = kl;
		i += kl;
		x->size = x->mtime_ns = 0;
		for (int b = 7; b >= 0; b--)
			x->size = x->size << 8 | p[i + (size_t)b];
		for (int b = 7; b >= 0; b--)
			x->mtime_ns = x->mtime_ns << 8 | p[i + 8 + (size_t)b];
		x->elen = p[i + 16];
		x->dead = x->elen == 255;
		x->writer = 0;
		i += 17;
		if (x->dead)
			x->elen = 0;
		else if (x->elen > 47)
			goto bad;
		if (n - i < x->elen)
			goto bad;
		x->etag = (const char *)p + i;
		i += x->elen;
	}
	*out = e;
	*count = c;
	return 0;
bad:
	free(e);
	return DNET_ECORRUPT;
}

/* XML character data to bytes: the five named entities and numeric references
 * (as UTF-8). -1 if malformed or longer than cap. */
static int xml_unescape(const char *s, size_t n, char *out, size_t cap, size_t *ol)
{
	size_t o = 0;
	for (size_t i = 0; i < n;) {
		char tmp[4];
		size_t tl = 1;
		tmp[0] = s[i];
		if (s[i] == '&') {
			const char *semi = memchr(s + i, ';', n - i < 12 ? n - i : 12);
			if (!semi)
				return -1;
			size_t el = (size_t)(semi - s - i) + 1;
			const char *e = s + i;
			if (el == 5 && !memcmp(e, "&amp;", 5))
				tmp[0] = '&';
			else if (el == 4 && !memcmp(e, "&lt;", 4))
				tmp[0] = '<';
			else if (el == 4 && !memcmp(e, "&gt;", 4))
				tmp[0] = '>';
			else if (el == 6 && !memcmp(e, "&quot;", 6))
				tmp[0] = '"';
			else if (el == 6 && !memcmp(e, "&apos;", 6))
				tmp[0] = '\'';
			else if (el > 3 && e[1] == '#') {
				unsigned long cp = 0;
				int hex = e[2] == 'x';
				size_t k = hex ? 3 : 2;
				if (k >= el - 1)
					return -1;
				for (; k < el - 1; k++) {
					int v =
					    hex ? hexval(e[k])
						: (e[k] >= '0' && e[k] <= '9' ? e[k] - '0' : -1);
					if (v < 0)
						return -1;
					cp = cp * (hex ? 16 : 10) + (unsigned long)v;
					if (cp > 0x10FFFF)
						return -1;
				}
				if (cp == 0 || (cp >= 0xD800 && cp <= 0xDFFF))
					return -1;
				if (cp < 0x80) {
					tmp[0] = (char)cp;
				} else if (cp < 0x800) {
					tmp[0] = (char)(0xC0 | cp >> 6);
					tmp[1] = (char)(0x80 | (cp & 0x3F));
					tl = 2;
				} else if (cp < 0x10000) {
					tmp[0] = (char)(0xE0 | cp >> 12);
					tmp[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
					tmp[2] = (char)(0x80 | (cp & 0x3F));
					tl = 3;
				} else {
					tmp[0] = (char)(0xF0 | cp >> 18);
					tmp[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
					tmp[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
					tmp[3] = (char)(0x80 | (cp & 0x3F));
					tl = 4;
				}
			} else {
				return -1;
			}
			i += el;
		} else {
			i++;
		}
		if (o + tl > cap)
			return -1;
		memcpy(out + o, tmp, tl);
		o += tl;
	}
	*ol = o;
	return 0;
}

int s3_parse_delete(const char *xml, size_t n, struct s3_del_key *keys, int max, int *nkeys,
		    int *quiet)
{
	const char *p = xml, *end = xml + n, *after, *c;
	size_t cl;
	int nk = 0;
	*quiet = 0;
	const char *d = find_elem(p, end, "Delete", &cl, &after);
	if (!d)
		return -1;
	end = d + cl;
	const char *qv = find_elem(d, end, "Quiet", &cl, &after);
	if (qv && cl == 4 && !memcmp(qv, "true", 4))
		*quiet = 1;
	p = d;
	while ((c = find_elem(p, end, "Object", &cl, &after)) != NULL) {
		const char *a2;
		size_t kl;
		const char *k = find_elem(c, c + cl, "Key", &kl, &a2);
		if (!k)
			return -1;
		if (nk == max)
			return -2;
		if (xml_unescape(k, kl, keys[nk].key, S3_MAX_KEY, &keys[nk].len) != 0 ||
		    keys[nk].len == 0)
			return -1;
		nk++;
		p = after;
	}
	if (!nk)
		return -1;
	*nkeys = nk;
	return 0;
}
