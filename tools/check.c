/* check.c - `elliptics check`: the seed's integrity tool done by machine. Stores
 * objects of awkward sizes under awkward keys, reads each back (whole and a range),
 * compares XXH3-128 digests of what was sent, what came back and what lookup reports,
 * removes each and verifies it is gone. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <xxhash.h>

#include "cli.h"
#include "common/util.h"

#define CHECK_MEM_MAX (1u << 20) /* larger objects are generated and hashed streaming */

void usage_check(void)
{
	printf("usage: elliptics check [--count N] [--max-size BYTES] [--seed N] [--prefix P]\n"
	       "                       [--keep] [--json]\n"
	       "Writes objects of sizes 0, 1, 4095, 4096, 4097, 65535, 65536, 65537, 1048577\n"
	       "and N (default 50) random sizes up to --max-size (default 4M), under keys with\n"
	       "spaces, slashes, unicode, binary bytes and one of 4096 bytes; reads each back\n"
	       "and compares XXH3-128 digests of sent, received and lookup's checksum; then\n"
	       "deletes each (unless --keep) and verifies it is gone. Exit status 3 and one\n"
	       "line per bad key on stderr if anything mismatches.\n");
}

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Deterministic object content: a stream of splitmix words from (seed, index). */
struct gen {
	uint64_t state;
	uint64_t left;
	uint64_t word;
	int wpos; /* bytes of `word` already used; 8 = none left */
	XXH3_state_t *xx;
};

static void gen_init(struct gen *g, uint64_t seed, uint64_t idx, uint64_t size)
{
	g->state = seed * 0x100000001b3ull ^ (idx + 1) * 0x9e3779b97f4a7c15ull;
	g->left = size;
	g->wpos = 8;
	g->word = 0;
}

static void gen_fill(struct gen *g, uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (g->wpos == 8) {
			g->word = splitmix(&g->state);
			g->wpos = 0;
		}
		p[i] = (uint8_t)(g->word >> (8 * g->wpos++));
	}
}

static int gen_source(void *arg, void *buf, size_t len, size_t *got)
{
	struct gen *g = arg;
	size_t n = len < g->left ? len : (size_t)g->left;
	gen_fill(g, buf, n);
	XXH3_128bits_update(g->xx, buf, n);
	g->left -= n;
	*got = n;
	return 0;
}

struct hsink {
	XXH3_state_t *xx;
	uint64_t bytes;
};

static int hash_sink(void *arg, const void *data, size_t len)
{
	struct hsink *h = arg;
	XXH3_128bits_update(h->xx, data, len);
	h->bytes += len;
	return 0;
}

static void canon(XXH128_hash_t h, uint8_t out[16])
{
	XXH128_canonical_t c;
	XXH128_canonicalFromHash(&c, h);
	memcpy(out, c.digest, 16);
}

struct item {
	char *key;
	size_t klen;
	uint64_t size;
	uint8_t sent[16];
	int stored;
};

/* Keys that stress escaping, path handling and length limits. */
static char *make_key(const char *prefix, size_t idx, size_t *klen)
{
	static const char *const shapes[] = {
		"plain-%zu",
		"with spaces %zu",
		"a/b/c/slashes/%zu",
		"../../etc/passwd-%zu",
		("unicode-\xd0\xbf\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82-\xe6\x97\xa5\xe6\x9c\xac-"
		 "\xf0\x9f\x93\xa6-%zu"),
		"quote\"back\\slash'%zu",
		"tab\tnewline\ncr\r%zu",
		"%%percent%%s%%n-%zu",
		"-leading-dash-%zu",
	};
	size_t nshapes = sizeof(shapes) / sizeof(shapes[0]);
	char body[256];
	size_t pl = strlen(prefix);
	char *k;
	if (idx == 3) {
		/* Exactly DNET_KEY_MAX bytes. */
		k = malloc(DNET_KEY_MAX);
		if (!k)
			return NULL;
		memset(k, 'L', DNET_KEY_MAX);
		memcpy(k, prefix, pl < DNET_KEY_MAX ? pl : DNET_KEY_MAX);
		*klen = DNET_KEY_MAX;
		return k;
	}
	if (idx % 7 == 5) {
		/* Binary-ish: control bytes, 0xff, an embedded NUL. */
		size_t n = (size_t)snprintf(body, sizeof(body), "bin-%zu-", idx);
		const uint8_t bin[] = {0x00, 0x01, 0x1b, 0x7f, 0x80, 0xfe, 0xff, '/', ' '};
		memcpy(body + n, bin, sizeof(bin));
		n += sizeof(bin);
		k = malloc(pl + n);
		if (!k)
			return NULL;
		memcpy(k, prefix, pl);
		memcpy(k + pl, body, n);
		*klen = pl + n;
		return k;
	}
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
	int n = snprintf(body, sizeof(body), shapes[idx % nshapes], idx);
#pragma GCC diagnostic pop
	k = malloc(pl + (size_t)n + 1);
	if (!k)
		return NULL;
	memcpy(k, prefix, pl);
	memcpy(k + pl, body, (size_t)n + 1);
	*klen = pl + (size_t)n;
	return k;
}

struct check_state {
	int json;
	size_t bad;
	const struct item **bad_items; /* for --json */
	const struct cli *g;
	dnet_client *c;
};

static void bad(struct check_state *st, const struct item *it, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void bad(struct check_state *st, const struct item *it, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	char *k = cli_escape(it->key, it->klen);
	fprintf(stderr, "%selliptics: check %s (size %llu): %s (%s)\n", isatty(2) ? "\r" : "", k,
		(unsigned long long)it->size, msg, cli_node(st->g, st->c));
	free(k);
	const struct item **nb = realloc(st->bad_items, (st->bad + 1) * sizeof(*nb));
	if (nb) {
		st->bad_items = nb;
		nb[st->bad] = it;
	}
	st->bad++;
}

static void hex16(const uint8_t *d, char out[33])
{
	dnet_csum_to_hex(d, out);
}

/* Store, read back, compare. Returns 0 if the object is good. */
static int check_one(dnet_client *c, struct check_state *st, struct item *it, uint64_t seed,
		     size_t idx)
{
	struct dnet_object_info winfo, linfo, rinfo;
	int err;
	XXH3_state_t *xx = XXH3_createState();
	uint8_t got[16];
	uint8_t *buf = NULL;
	int rc = -1;
	if (!xx) {
		bad(st, it, "out of memory");
		return -1;
	}
	struct gen g;
	gen_init(&g, seed, idx, it->size);
	g.xx = xx;
	XXH3_128bits_reset(xx);
	if (it->size <= CHECK_MEM_MAX) {
		buf = malloc(it->size ? it->size : 1);
		if (!buf) {
			bad(st, it, "out of memory");
			goto out;
		}
		gen_fill(&g, buf, it->size);
		canon(XXH3_128bits(buf, it->size), it->sent);
		err = dnet_write(c, it->key, it->klen, buf, it->size, &winfo);
	} else {
		err = dnet_write_stream(c, it->key, it->klen, it->size, gen_source, &g, &winfo);
		canon(XXH3_128bits_digest(xx), it->sent);
	}
	if (err) {
		bad(st, it, "write: %s", dnet_strerror(err));
		goto out;
	}
	it->stored = 1;
	char a[33], b[33];
	if (winfo.size != it->size || memcmp(winfo.csum, it->sent, 16)) {
		hex16(it->sent, a);
		hex16(winfo.csum, b);
		bad(st, it, "write reply: size %llu csum %s, sent %s",
		    (unsigned long long)winfo.size, b, a);
		goto out;
	}
	err = dnet_lookup(c, it->key, it->klen, &linfo);
	if (err) {
		bad(st, it, "lookup: %s", dnet_strerror(err));
		goto out;
	}
	if (linfo.size != it->size || memcmp(linfo.csum, it->sent, 16)) {
		hex16(it->sent, a);
		hex16(linfo.csum, b);
		bad(st, it, "lookup: size %llu csum %s, sent %s", (unsigned long long)linfo.size, b,
		    a);
		goto out;
	}
	if (buf) {
		void *data = NULL;
		size_t len = 0;
		err = dnet_read(c, it->key, it->klen, 0, 0, &data, &len, &rinfo);
		if (err) {
			bad(st, it, "read: %s", dnet_strerror(err));
			goto out;
		}
		canon(XXH3_128bits(data, len), got);
		int same = len == it->size && !memcmp(got, it->sent, 16);
		free(data);
		if (!same) {
			hex16(it->sent, a);
			hex16(got, b);
			bad(st, it, "read back %zu bytes, digest %s, sent %s", len, b, a);
			goto out;
		}
		/* A middle range must match the same bytes. */
		if (it->size >= 3) {
			uint64_t off = it->size / 3, n = it->size / 3;
			err = dnet_read(c, it->key, it->klen, off, n, &data, &len, &rinfo);
			if (err) {
				bad(st, it, "range read [%llu,+%llu): %s", (unsigned long long)off,
				    (unsigned long long)n, dnet_strerror(err));
				goto out;
			}
			same = len == n && !memcmp(data, buf + off, n);
			free(data);
			if (!same || rinfo.size != it->size) {
				bad(st, it, "range read [%llu,+%llu): %zu bytes, %s",
				    (unsigned long long)off, (unsigned long long)n, len,
				    same ? "wrong total size" : "content differs");
				goto out;
			}
		}
	} else {
		struct hsink h = {.xx = xx};
		XXH3_128bits_reset(xx);
		err = dnet_read_stream(c, it->key, it->klen, 0, 0, hash_sink, &h, &rinfo);
		if (err) {
			bad(st, it, "streamed read: %s", dnet_strerror(err));
			goto out;
		}
		canon(XXH3_128bits_digest(xx), got);
		if (h.bytes != it->size || memcmp(got, it->sent, 16)) {
			hex16(it->sent, a);
			hex16(got, b);
			bad(st, it, "streamed read %llu bytes, digest %s, sent %s",
			    (unsigned long long)h.bytes, b, a);
			goto out;
		}
	}
	rc = 0;
out:
	free(buf);
	XXH3_freeState(xx);
	return rc;
}

static int parse_u64(const char *s, uint64_t *v)
{
	return dnet_parse_size(s, v);
}

int cmd_check(const struct cli *g, int argc, char **argv)
{
	uint64_t count = 50, max_size = 4u << 20, seed = 0;
	int keep = 0, have_seed = 0;
	char prefix_buf[128];
	const char *prefix = NULL;
	struct check_state st = {0};
	for (int i = 0; i < argc; i++) {
		const char *o = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(o, "--help") || !strcmp(o, "-h")) {
			usage_check();
			return 0;
		} else if (!strcmp(o, "--keep")) {
			keep = 1;
		} else if (!strcmp(o, "--json")) {
			st.json = 1;
		} else if (!strcmp(o, "--count") || !strcmp(o, "--max-size") || !strcmp(o, "--seed") ||
			   !strcmp(o, "--prefix")) {
			if (!v)
				return cli_usage_error("check", "%s needs a value", o);
			i++;
			if (!strcmp(o, "--prefix")) {
				prefix = v;
				continue;
			}
			uint64_t x;
			if (parse_u64(v, &x))
				return cli_usage_error("check", "%s: bad number \"%s\"", o, v);
			if (!strcmp(o, "--count"))
				count = x;
			else if (!strcmp(o, "--max-size"))
				max_size = x;
			else {
				seed = x;
				have_seed = 1;
			}
		} else {
			return cli_usage_error("check", "unknown argument %s", o);
		}
	}
	if (count > 10000000)
		return cli_usage_error("check", "--count too large");
	if (!have_seed)
		seed = dnet_now_real_ns() ^ (uint64_t)getpid();
	if (!prefix) {
		snprintf(prefix_buf, sizeof(prefix_buf), "check-%d-%llx/", (int)getpid(),
			 (unsigned long long)(dnet_now_real_ns() & 0xffffffffffull));
		prefix = prefix_buf;
	}
	if (strlen(prefix) > 3000)
		return cli_usage_error("check", "--prefix too long");

	static const uint64_t fixed[] = {0, 1, 4095, 4096, 4097, 65535, 65536, 65537, 1048577};
	size_t nfixed = sizeof(fixed) / sizeof(fixed[0]);
	size_t n = nfixed + (size_t)count;
	struct item *items = calloc(n, sizeof(*items));
	if (!items) {
		cli_error("check: out of memory");
		return CLI_EXIT_FAIL;
	}
	uint64_t rng = seed;
	for (size_t i = 0; i < n; i++) {
		items[i].size = i < nfixed ? fixed[i] : (max_size ? splitmix(&rng) % (max_size + 1) : 0);
		items[i].key = make_key(prefix, i, &items[i].klen);
		if (!items[i].key) {
			cli_error("check: out of memory");
			return CLI_EXIT_FAIL;
		}
	}

	dnet_client *c;
	if (cli_client(g, &c))
		return CLI_EXIT_FAIL;
	st.g = g;
	st.c = c;
	int tty = isatty(2);
	uint64_t t0 = dnet_now_mono_ns(), bytes = 0;
	size_t good = 0, deleted = 0;
	int fatal = 0;
	for (size_t i = 0; i < n; i++) {
		struct item *it = &items[i];
		if (!check_one(c, &st, it, seed, i))
			good++;
		bytes += it->size;
		if (tty)
			fprintf(stderr, "\rcheck: %zu/%zu objects, %zu bad, %.1f MiB", i + 1, n, st.bad,
				(double)bytes / 1048576.0);
		if (st.bad == i + 1 && i >= 2 && !it->stored) {
			/* Nothing works at all (node down?): don't grind through the rest. */
			fatal = 1;
			break;
		}
	}
	if (!keep) {
		for (size_t i = 0; i < n; i++) {
			struct item *it = &items[i];
			if (!it->stored)
				continue;
			int err = dnet_remove(c, it->key, it->klen);
			if (err) {
				bad(&st, it, "delete: %s", dnet_strerror(err));
				continue;
			}
			struct dnet_object_info info;
			err = dnet_lookup(c, it->key, it->klen, &info);
			if (err != DNET_ENOENT) {
				bad(&st, it, "after delete, lookup says %s",
				    err ? dnet_strerror(err) : "still there");
				continue;
			}
			void *data = NULL;
			size_t len;
			err = dnet_read(c, it->key, it->klen, 0, 0, &data, &len, NULL);
			free(data);
			if (err != DNET_ENOENT) {
				bad(&st, it, "after delete, read says %s",
				    err ? dnet_strerror(err) : "still there");
				continue;
			}
			deleted++;
		}
	}
	double secs = (double)(dnet_now_mono_ns() - t0) / 1e9;
	if (tty)
		fprintf(stderr, "\n");
	if (st.json) {
		printf("{\"objects\": %zu, \"good\": %zu, \"bad\": %zu, \"deleted\": %zu, "
		       "\"bytes\": %llu, \"seconds\": %.3f, \"seed\": %llu, \"node\": ",
		       n, good, st.bad, deleted, (unsigned long long)bytes, secs,
		       (unsigned long long)seed);
		const char *node = cli_node(g, c);
		cli_json_str(stdout, node, strlen(node));
		printf(", \"bad_keys\": [");
		for (size_t i = 0; i < st.bad && st.bad_items; i++) {
			printf("%s", i ? ", " : "");
			cli_json_str(stdout, st.bad_items[i]->key, st.bad_items[i]->klen);
		}
		printf("]}\n");
	} else {
		printf("check: %zu objects, %zu good, %zu bad, %zu deleted, %.1f MiB in %.2f s "
		       "(seed %llu, %s)\n",
		       n, good, st.bad, deleted, (double)bytes / 1048576.0, secs,
		       (unsigned long long)seed, cli_node(g, c));
	}
	if (fatal)
		cli_error("check: every operation fails, stopped early (%s)", cli_node(g, c));
	dnet_client_free(c);
	for (size_t i = 0; i < n; i++)
		free(items[i].key);
	free(items);
	free(st.bad_items);
	return st.bad ? CLI_EXIT_FAIL : 0;
}
