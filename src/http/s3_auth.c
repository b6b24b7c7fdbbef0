/* s3_auth.c - AWS Signature Version 4 for the S3 gateway: the Authorization header
 * and presigned query forms, checked with OpenSSL's SHA-256 and HMAC. Pure: the
 * request head in, a verdict out; bounded by the head's limits (16 KiB, 64
 * headers), so it is fuzzed with the parser. */
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "s3.h"

#define MAX_QPARAMS 64
#define SKEW_S 900

void s3_md5_hex(const uint8_t md[16], char out[33])
{
	static const char hx[] = "0123456789abcdef";
	for (int i = 0; i < 16; i++) {
		out[2 * i] = hx[md[i] >> 4];
		out[2 * i + 1] = hx[md[i] & 15];
	}
	out[32] = 0;
}

static void hex_n(const uint8_t *md, size_t n, char *out)
{
	static const char hx[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = hx[md[i] >> 4];
		out[2 * i + 1] = hx[md[i] & 15];
	}
	out[2 * n] = 0;
}

static void sha256_hex(const void *d, size_t n, char out[65])
{
	uint8_t md[32];
	unsigned int l = 0;
	EVP_Digest(d, n, md, &l, EVP_sha256(), NULL);
	hex_n(md, 32, out);
}

static void hmac(const uint8_t *key, size_t kl, const void *d, size_t n, uint8_t out[32])
{
	unsigned int l = 32;
	HMAC(EVP_sha256(), key, (int)kl, d, n, out, &l);
}

/* AWS's URI encoding: unreserved characters as they are, the rest %XX (upper). */
static void uri_encode(struct dnet_hbuf *b, const char *s, size_t n)
{
	static const char hx[] = "0123456789ABCDEF";
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		    c == '-' || c == '_' || c == '.' || c == '~') {
			dnet_hbuf_put(b, (const char *)&c, 1);
		} else {
			char e[3] = {'%', hx[c >> 4], hx[c & 15]};
			dnet_hbuf_put(b, e, 3);
		}
	}
}

struct qparam {
	size_t name_off, name_len, val_off, val_len; /* in the encoded buffer */
};

static int qparam_cmp(const void *a, const void *b, void *arg)
{
	const char *qsort_base = arg;
	const struct qparam *x = a, *y = b;
	size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
	int c = memcmp(qsort_base + x->name_off, qsort_base + y->name_off, n);
	if (c || x->name_len != y->name_len)
		return c ? c : (x->name_len < y->name_len ? -1 : 1);
	n = x->val_len < y->val_len ? x->val_len : y->val_len;
	c = memcmp(qsort_base + x->val_off, qsort_base + y->val_off, n);
	if (c || x->val_len == y->val_len)
		return c;
	return x->val_len < y->val_len ? -1 : 1;
}

/* The canonical query string (names and values re-encoded, sorted), without
 * X-Amz-Signature. -1 if malformed. */
static int canonical_query(const struct dnet_http_req *r, struct dnet_hbuf *out)
{
	struct qparam qp[MAX_QPARAMS];
	int nq = 0;
	struct dnet_hbuf enc;
	const char *q = r->query;
	size_t qlen = r->query_len;
	if (!q || !qlen)
		return 0;
	dnet_hbuf_init(&enc, qlen * 3 + 16);
	char *tmp = malloc(qlen + 1);
	int rc = -1;
	if (!enc.p || !tmp)
		goto out;
	for (size_t i = 0; i <= qlen;) {
		size_t j = i;
		while (j < qlen && q[j] != '&')
			j++;
		if (j > i) {
			size_t eq = i, dl;
			while (eq < j && q[eq] != '=')
				eq++;
			if (nq == MAX_QPARAMS || s3_url_decode(q + i, eq - i, tmp, qlen, &dl) != 0)
				goto out;
			if (dl == 15 && !memcmp(tmp, "X-Amz-Signature", 15)) {
				i = j + 1;
				continue;
			}
			qp[nq].name_off = enc.len;
			uri_encode(&enc, tmp, dl);
			qp[nq].name_len = enc.len - qp[nq].name_off;
			dl = 0;
			if (eq < j && s3_url_decode(q + eq + 1, j - eq - 1, tmp, qlen, &dl) != 0)
				goto out;
			qp[nq].val_off = enc.len;
			uri_encode(&enc, tmp, dl);
			qp[nq].val_len = enc.len - qp[nq].val_off;
			nq++;
		}
		i = j + 1;
	}
	if (!enc.p)
		goto out;
	qsort_r(qp, (size_t)nq, sizeof(qp[0]), qparam_cmp, enc.p);
	for (int k = 0; k < nq; k++) {
		if (k)
			dnet_hbuf_put(out, "&", 1);
		dnet_hbuf_put(out, enc.p + qp[k].name_off, qp[k].name_len);
		dnet_hbuf_put(out, "=", 1);
		dnet_hbuf_put(out, enc.p + qp[k].val_off, qp[k].val_len);
	}
	rc = 0;
out:
	free(tmp);
	free(enc.p);
	return rc;
}

/* name:value lines of the signed headers (values trimmed, inner runs of spaces
 * collapsed, repeated headers joined with ','). -1 if one is missing. */
static int canonical_headers(const struct dnet_http_req *r, const char *sh, size_t shl,
			     struct dnet_hbuf *out)
{
	size_t i = 0;
	while (i < shl) {
		size_t j = i;
		while (j < shl && sh[j] != ';')
			j++;
		if (j == i)
			return -1;
		dnet_hbuf_put(out, sh + i, j - i);
		dnet_hbuf_put(out, ":", 1);
		int found = 0;
		for (uint32_t k = 0; k < r->nhdrs; k++) {
			const struct dnet_http_hdr *hd = &r->hdrs[k];
			if (hd->name_len != j - i || strncasecmp(hd->name, sh + i, j - i) != 0)
				continue;
			if (found++)
				dnet_hbuf_put(out, ",", 1);
			const char *v = hd->value;
			size_t vl = hd->value_len;
			while (vl && (*v == ' ' || *v == '\t'))
				v++, vl--;
			while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
				vl--;
			int sp = 0;
			for (size_t x = 0; x < vl; x++) {
				if (v[x] == ' ' || v[x] == '\t') {
					if (!sp)
						dnet_hbuf_put(out, " ", 1);
					sp = 1;
				} else {
					dnet_hbuf_put(out, v + x, 1);
					sp = 0;
				}
			}
		}
		if (!found)
			return -1;
		dnet_hbuf_put(out, "\n", 1);
		i = j + 1;
	}
	return 0;
}

static int dig(const char *s, int o, int l)
{
	int v = 0;
	for (int i = 0; i < l; i++)
		v = v * 10 + (s[o + i] - '0');
	return v;
}
#define D(o, l) dig(s, o, l)

/* "20130524T000000Z" -> Unix seconds; -1 if malformed. */
static int64_t parse_amz_date(const char *s, size_t n)
{
	if (n != 16 || s[8] != 'T' || s[15] != 'Z')
		return -1;
	for (int i = 0; i < 15; i++)
		if (i != 8 && (s[i] < '0' || s[i] > '9'))
			return -1;
	struct tm tm = {0};
	tm.tm_year = D(0, 4) - 1900;
	tm.tm_mon = D(4, 2) - 1;
	tm.tm_mday = D(6, 2);
	tm.tm_hour = D(9, 2);
	tm.tm_min = D(11, 2);
	tm.tm_sec = D(13, 2);
	if (tm.tm_mon < 0 || tm.tm_mon > 11 || tm.tm_mday < 1 || tm.tm_mday > 31 ||
	    tm.tm_hour > 23 || tm.tm_min > 59 || tm.tm_sec > 60)
		return -1;
	return (int64_t)timegm(&tm);
}

/* A "Name=value" item of the Authorization header's list. */
static int auth_item(const char *s, size_t n, const char *name, const char **v, size_t *vl)
{
	size_t nl = strlen(name);
	size_t i = 0;
	while (i < n) {
		while (i < n && (s[i] == ' ' || s[i] == ','))
			i++;
		size_t j = i;
		while (j < n && s[j] != ',')
			j++;
		if (j - i > nl && !memcmp(s + i, name, nl) && s[i + nl] == '=') {
			*v = s + i + nl + 1;
			*vl = j - i - nl - 1;
			return 0;
		}
		i = j;
	}
	return -1;
}

int s3_auth_check(const struct dnet_http_req *r, const struct s3_key *keys, int nkeys,
		  int64_t now_s, char *payload, size_t payload_cap)
{
	char cred[256], shdrs[1024], sig[80], date[32], algo[32], expires[16];
	size_t credl, shl, sigl, datel, algol, expl;
	int presigned = 0;
	const struct dnet_http_hdr *ah = dnet_http_find_hdr(r, "authorization");
	int qa =
	    s3_query_get(r->query, r->query_len, "X-Amz-Algorithm", algo, sizeof(algo), &algol);
	if (qa < 0)
		return S3_AUTH_MALFORMED;
	if (qa == 1) {
		presigned = 1;
		if (algol != 16 || memcmp(algo, "AWS4-HMAC-SHA256", 16) != 0)
			return S3_AUTH_UNSUPPORTED;
		if (s3_query_get(r->query, r->query_len, "X-Amz-Credential", cred, sizeof(cred) - 1,
				 &credl) != 1 ||
		    s3_query_get(r->query, r->query_len, "X-Amz-SignedHeaders", shdrs,
				 sizeof(shdrs) - 1, &shl) != 1 ||
		    s3_query_get(r->query, r->query_len, "X-Amz-Signature", sig, sizeof(sig) - 1,
				 &sigl) != 1 ||
		    s3_query_get(r->query, r->query_len, "X-Amz-Date", date, sizeof(date) - 1,
				 &datel) != 1 ||
		    s3_query_get(r->query, r->query_len, "X-Amz-Expires", expires,
				 sizeof(expires) - 1, &expl) != 1)
			return S3_AUTH_MALFORMED;
	} else if (ah) {
		const char *a = ah->value, *v;
		size_t al = ah->value_len, vl;
		if (al < 17 || memcmp(a, "AWS4-HMAC-SHA256 ", 17) != 0)
			return S3_AUTH_UNSUPPORTED;
		a += 17;
		al -= 17;
		if (auth_item(a, al, "Credential", &v, &vl) || vl >= sizeof(cred))
			return S3_AUTH_MALFORMED;
		memcpy(cred, v, vl);
		credl = vl;
		if (auth_item(a, al, "SignedHeaders", &v, &vl) || vl >= sizeof(shdrs))
			return S3_AUTH_MALFORMED;
		memcpy(shdrs, v, vl);
		shl = vl;
		if (auth_item(a, al, "Signature", &v, &vl) || vl >= sizeof(sig))
			return S3_AUTH_MALFORMED;
		memcpy(sig, v, vl);
		sigl = vl;
		const struct dnet_http_hdr *dh = dnet_http_find_hdr(r, "x-amz-date");
		if (!dh || dh->value_len >= sizeof(date))
			return S3_AUTH_MALFORMED;
		memcpy(date, dh->value, dh->value_len);
		datel = dh->value_len;
	} else {
		char v2[8];
		size_t v2l;
		/* Signature version 2 query authentication: refused, not taken as anonymous. */
		if (s3_query_get(r->query, r->query_len, "AWSAccessKeyId", v2, sizeof(v2), &v2l) !=
		    0)
			return S3_AUTH_UNSUPPORTED;
		return S3_AUTH_ANON;
	}
	cred[credl] = shdrs[shl] = sig[sigl] = date[datel] = 0;
	int64_t t = parse_amz_date(date, datel);
	if (t < 0 || sigl != 64)
		return S3_AUTH_MALFORMED;
	if (presigned) {
		expires[expl] = 0;
		uint64_t ex = 0;
		for (size_t i = 0; i < expl; i++) {
			if (expires[i] < '0' || expires[i] > '9' || ex > 604800)
				return S3_AUTH_MALFORMED;
			ex = ex * 10 + (uint64_t)(expires[i] - '0');
		}
		if (!expl || ex > 604800)
			return S3_AUTH_MALFORMED;
		if (now_s > t + (int64_t)ex)
			return S3_AUTH_EXPIRED;
		if (t > now_s + SKEW_S)
			return S3_AUTH_SKEWED;
	} else if (t > now_s + SKEW_S || t < now_s - SKEW_S) {
		return S3_AUTH_SKEWED;
	}
	/* Credential = ACCESS/DATE/REGION/SERVICE/aws4_request */
	char *parts[5];
	int np = 0;
	char *p = cred;
	parts[np++] = p;
	for (; *p && np < 5; p++)
		if (*p == '/') {
			*p = 0;
			parts[np++] = p + 1;
		}
	if (np != 5 || strchr(parts[4], '/') || strcmp(parts[4], "aws4_request") != 0 ||
	    strlen(parts[1]) != 8 || memcmp(parts[1], date, 8) != 0)
		return S3_AUTH_MALFORMED;
	const struct s3_key *key = NULL;
	for (int i = 0; i < nkeys; i++)
		if (!strcmp(keys[i].access, parts[0]))
			key = &keys[i];
	if (!key)
		return S3_AUTH_NOKEY;

	const struct dnet_http_hdr *ph = dnet_http_find_hdr(r, "x-amz-content-sha256");
	const char *pl;
	size_t pll;
	if (ph) {
		pl = ph->value;
		pll = ph->value_len;
	} else if (presigned) {
		pl = "UNSIGNED-PAYLOAD";
		pll = 16;
	} else {
		return S3_AUTH_MALFORMED;
	}
	if (pll >= payload_cap)
		return S3_AUTH_MALFORMED;

	struct dnet_hbuf cr;
	dnet_hbuf_init(&cr, 1024);
	dnet_hbuf_put(&cr, r->method_str, r->method_len);
	dnet_hbuf_put(&cr, "\n", 1);
	dnet_hbuf_put(&cr, r->path, r->path_len);
	dnet_hbuf_put(&cr, "\n", 1);
	int bad = canonical_query(r, &cr);
	dnet_hbuf_put(&cr, "\n", 1);
	if (!bad)
		bad = canonical_headers(r, shdrs, shl, &cr);
	dnet_hbuf_put(&cr, "\n", 1);
	dnet_hbuf_put(&cr, shdrs, shl);
	dnet_hbuf_put(&cr, "\n", 1);
	dnet_hbuf_put(&cr, pl, pll);
	if (bad || !cr.p) {
		free(cr.p);
		return S3_AUTH_MALFORMED;
	}
	char crh[65];
	sha256_hex(cr.p, cr.len, crh);
	free(cr.p);

	char sts[512];
	int stl = snprintf(sts, sizeof(sts), "AWS4-HMAC-SHA256\n%s\n%s/%s/%s/aws4_request\n%s",
			   date, parts[1], parts[2], parts[3], crh);
	if (stl < 0 || (size_t)stl >= sizeof(sts))
		return S3_AUTH_MALFORMED;
	uint8_t k[32], k2[32];
	char ks[160];
	int ksl = snprintf(ks, sizeof(ks), "AWS4%s", key->secret);
	if (ksl < 0 || (size_t)ksl >= sizeof(ks))
		return S3_AUTH_MALFORMED;
	hmac((const uint8_t *)ks, (size_t)ksl, parts[1], strlen(parts[1]), k);
	hmac(k, 32, parts[2], strlen(parts[2]), k2);
	hmac(k2, 32, parts[3], strlen(parts[3]), k);
	hmac(k, 32, "aws4_request", 12, k2);
	hmac(k2, 32, sts, (size_t)stl, k);
	OPENSSL_cleanse(ks, sizeof(ks));
	char want[65];
	hex_n(k, 32, want);
	for (int i = 0; i < 64; i++)
		if (sig[i] >= 'A' && sig[i] <= 'F')
			sig[i] = (char)(sig[i] + 32);
	if (CRYPTO_memcmp(want, sig, 64) != 0)
		return S3_AUTH_BADSIG;
	memcpy(payload, pl, pll);
	payload[pll] = 0;
	return S3_AUTH_OK;
}
