/* bench.c - `elliptics bench`: closed-loop load (each connection keeps one request in
 * flight, like redis-benchmark -P 1) from T threads each driving its share of the
 * connections with the async API; objects larger than one chunk use the blocking
 * streaming API, one connection per thread, data generated on the fly. Latencies go
 * into a log-bucketed histogram. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "common/proto.h"
#include "common/util.h"

void usage_bench(void)
{
	printf("usage: elliptics bench --op put|get|mixed --size BYTES --conns N --count N\n"
	       "                       [--json] [--threads T] [--keys K] [--prefix P]\n"
	       "Closed loop: every connection keeps one request in flight. --op get first\n"
	       "stores (untimed) the objects it will read that are missing; mixed is 50/50.\n"
	       "--keys: distinct objects used (default min(count, 10000)); --threads: default\n"
	       "min(conns, nproc). Prints ops/s, MB/s, p50/p99/p999 latency (us), errors;\n"
	       "--json prints one JSON object.\n");
}

enum { OP_PUT, OP_GET, OP_MIXED };

/* Log-bucketed histogram of nanoseconds: 16 linear sub-buckets per power of two
 * (<= 6% error). */
#define HSUB 4
#define HBUCKETS (64 << HSUB)
struct hist {
	uint64_t b[HBUCKETS];
	uint64_t n, max, sum;
};

static unsigned hidx(uint64_t v)
{
	if (v < (1u << HSUB))
		return (unsigned)v;
	unsigned e = 63u - (unsigned)__builtin_clzll(v);
	unsigned sub = (unsigned)(v >> (e - HSUB)) & ((1u << HSUB) - 1);
	return ((e - HSUB + 1) << HSUB) + sub;
}

static uint64_t hval(unsigned i)
{
	if (i < (1u << HSUB))
		return i;
	unsigned e = (i >> HSUB) + HSUB - 1;
	uint64_t sub = i & ((1u << HSUB) - 1);
	uint64_t lo = (1ull << e) | (sub << (e - HSUB));
	return lo + (1ull << (e - HSUB)) / 2; /* bucket middle */
}

static void hadd(struct hist *h, uint64_t v)
{
	h->b[hidx(v)]++;
	h->n++;
	h->sum += v;
	if (v > h->max)
		h->max = v;
}

static void hmerge(struct hist *a, const struct hist *b)
{
	for (int i = 0; i < HBUCKETS; i++)
		a->b[i] += b->b[i];
	a->n += b->n;
	a->sum += b->sum;
	if (b->max > a->max)
		a->max = b->max;
}

static double hpct(const struct hist *h, double p)
{
	if (!h->n)
		return 0;
	uint64_t want = (uint64_t)ceil(p * (double)h->n);
	if (!want)
		want = 1;
	uint64_t acc = 0;
	for (unsigned i = 0; i < HBUCKETS; i++) {
		acc += h->b[i];
		if (acc >= want) {
			uint64_t v = hval(i);
			return (double)(v > h->max ? h->max : v) / 1000.0;
		}
	}
	return (double)h->max / 1000.0;
}

struct bench {
	const struct cli *g;
	int op;
	uint64_t size;
	int conns, threads;
	uint64_t count, keys;
	const char *prefix;
	uint8_t (*ids)[64];
	uint8_t *data; /* one object's bytes (size <= chunk) or a pattern to repeat */
	size_t data_len;
	atomic_uint_fast64_t next; /* ops claimed */
	atomic_uint_fast64_t errors;
	atomic_int first_err;
	char first_err_node[64];
	pthread_mutex_t lock;
};

struct worker {
	struct bench *b;
	pthread_t tid;
	int idx, nconns;
	struct hist h;
	uint64_t rng;
	uint64_t done;
};

struct op_ctx {
	struct worker *w;
	dnet_client *c;
	uint64_t start;
	int kind;
};

static uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static void note_error(struct bench *b, int err, const char *node)
{
	atomic_fetch_add(&b->errors, 1);
	int zero = 0;
	if (atomic_compare_exchange_strong(&b->first_err, &zero, err)) {
		pthread_mutex_lock(&b->lock);
		snprintf(b->first_err_node, sizeof(b->first_err_node), "%s", node ? node : "?");
		pthread_mutex_unlock(&b->lock);
	}
}

static int op_kind(struct worker *w)
{
	if (w->b->op == OP_MIXED)
		return (xorshift(&w->rng) & 1) ? OP_GET : OP_PUT;
	return w->b->op;
}

static void op_done(void *arg, int status, const void *data, size_t len,
		    const struct dnet_object_info *info);

/* Claim the next op and submit it on slot `o`. Returns 0 if nothing is left. */
static int op_submit(struct op_ctx *o)
{
	struct worker *w = o->w;
	struct bench *b = w->b;
	uint64_t n = atomic_fetch_add(&b->next, 1);
	if (n >= b->count)
		return 0;
	const uint8_t *id = b->ids[n % b->keys];
	o->kind = op_kind(w);
	o->start = dnet_now_mono_ns();
	int err = o->kind == OP_PUT
			  ? dnet_submit_write_id(o->c, id, b->data, (size_t)b->size, op_done, o)
			  : dnet_submit_read_id(o->c, id, 0, 0, op_done, o);
	if (err) {
		note_error(b, err, dnet_client_node(o->c));
		w->done++;
		return -1;
	}
	return 1;
}

static void op_done(void *arg, int status, const void *data, size_t len,
		    const struct dnet_object_info *info)
{
	struct op_ctx *o = arg;
	struct worker *w = o->w;
	hadd(&w->h, dnet_now_mono_ns() - o->start);
	w->done++;
	if (!status && o->kind == OP_GET && len != w->b->size)
		status = DNET_EPROTO;
	if (status)
		note_error(w->b, status, info && info->node[0] ? info->node
							      : dnet_client_node(o->c));
	while (op_submit(o) < 0)
		;
}

/* Small objects: one handle with this worker's connections, async closed loop. */
static void *worker_async(void *arg)
{
	struct worker *w = arg;
	struct bench *b = w->b;
	dnet_client *c;
	if (cli_client(b->g, &c)) {
		note_error(b, DNET_EADDR, NULL);
		return NULL;
	}
	int err = dnet_client_set_conns(c, w->nconns);
	struct op_ctx *ops = calloc((size_t)w->nconns, sizeof(*ops));
	if (err || !ops) {
		note_error(b, err ? err : DNET_ENOMEM, NULL);
		free(ops);
		dnet_client_free(c);
		return NULL;
	}
	for (int i = 0; i < w->nconns; i++) {
		ops[i].w = w;
		ops[i].c = c;
		while (op_submit(&ops[i]) < 0)
			;
	}
	while (dnet_inflight(c)) {
		int n = dnet_poll(c, -1);
		if (n < 0) {
			note_error(b, n, dnet_client_node(c));
			break;
		}
	}
	dnet_client_free(c);
	free(ops);
	return NULL;
}

/* Large objects: generated on the fly from a repeating pattern. */
struct pattern_src {
	const uint8_t *pat;
	size_t plen, pos;
	uint64_t left;
};

static int pattern_source(void *arg, void *buf, size_t len, size_t *got)
{
	struct pattern_src *s = arg;
	size_t n = len < s->left ? len : (size_t)s->left;
	size_t done = 0;
	while (done < n) {
		size_t k = s->plen - s->pos;
		if (k > n - done)
			k = n - done;
		memcpy((uint8_t *)buf + done, s->pat + s->pos, k);
		done += k;
		s->pos = (s->pos + k) % s->plen;
	}
	s->left -= n;
	*got = n;
	return 0;
}

static int count_sink(void *arg, const void *data, size_t len)
{
	*(uint64_t *)arg += len;
	return 0;
}

static void *worker_stream(void *arg)
{
	struct worker *w = arg;
	struct bench *b = w->b;
	dnet_client *c;
	if (cli_client(b->g, &c)) {
		note_error(b, DNET_EADDR, NULL);
		return NULL;
	}
	/* reads are discarded: verified as sent, like `get KEY FILE` and the S3 gateway */
	dnet_client_set_stream_verify(c, 1);
	for (;;) {
		uint64_t n = atomic_fetch_add(&b->next, 1);
		if (n >= b->count)
			break;
		const uint8_t *id = b->ids[n % b->keys];
		int kind = op_kind(w);
		uint64_t t = dnet_now_mono_ns();
		int err;
		if (kind == OP_PUT) {
			struct pattern_src s = {.pat = b->data, .plen = b->data_len, .left = b->size};
			err = dnet_write_stream_id(c, id, b->size, pattern_source, &s, NULL);
		} else {
			uint64_t got = 0;
			err = dnet_read_stream_id(c, id, 0, 0, count_sink, &got, NULL);
			if (!err && got != b->size)
				err = DNET_EPROTO;
		}
		hadd(&w->h, dnet_now_mono_ns() - t);
		w->done++;
		if (err)
			note_error(b, err, dnet_client_node(c));
	}
	dnet_client_free(c);
	return NULL;
}

/* --op get/mixed: make sure every key exists (untimed): lookup, write the missing. */
struct prep {
	struct bench *b;
	dnet_client *c;
	uint64_t next, missing, failed;
	int err;
};

static void prep_written(void *arg, int status, const void *data, size_t len,
			 const struct dnet_object_info *info)
{
	struct prep *p = arg;
	if (status) {
		p->failed++;
		p->err = status;
	}
}

static void prep_looked(void *arg, int status, const void *data, size_t len,
			const struct dnet_object_info *info);

static void prep_next(struct prep *p);

struct prep_op {
	struct prep *p;
	uint64_t k;
};

static void prep_looked(void *arg, int status, const void *data, size_t len,
			const struct dnet_object_info *info)
{
	struct prep_op *o = arg;
	struct prep *p = o->p;
	if (status == DNET_ENOENT || (!status && info && info->size != p->b->size)) {
		p->missing++;
		int err = dnet_submit_write_id(p->c, p->b->ids[o->k], p->b->data,
					       (size_t)p->b->size, prep_written, p);
		if (err) {
			p->failed++;
			p->err = err;
		}
	} else if (status) {
		p->failed++;
		p->err = status;
	}
	free(o);
	prep_next(p);
}

static void prep_next(struct prep *p)
{
	if (p->next >= p->b->keys || p->failed)
		return;
	struct prep_op *o = malloc(sizeof(*o));
	if (!o) {
		p->failed++;
		p->err = DNET_ENOMEM;
		return;
	}
	o->p = p;
	o->k = p->next++;
	int err = dnet_submit_lookup_id(p->c, p->b->ids[o->k], prep_looked, o);
	if (err) {
		free(o);
		p->failed++;
		p->err = err;
	}
}

static int prepare(struct bench *b)
{
	struct prep p = {.b = b};
	if (cli_client(b->g, &p.c))
		return DNET_EADDR;
	if (b->size > DNET_CHUNK_SIZE) {
		/* Big objects: one at a time, streamed. */
		for (uint64_t k = 0; k < b->keys && !p.err; k++) {
			struct dnet_object_info info;
			int err = dnet_lookup_id(p.c, b->ids[k], &info);
			if (!err && info.size == b->size)
				continue;
			if (err && err != DNET_ENOENT) {
				p.err = err;
				break;
			}
			struct pattern_src s = {.pat = b->data, .plen = b->data_len, .left = b->size};
			p.err = dnet_write_stream_id(p.c, b->ids[k], b->size, pattern_source, &s, NULL);
			p.missing++;
		}
	} else {
		int conns = b->conns < 32 ? b->conns : 32;
		dnet_client_set_conns(p.c, conns);
		for (int i = 0; i < conns * 4; i++)
			prep_next(&p);
		while (dnet_inflight(p.c)) {
			int n = dnet_poll(p.c, -1);
			if (n < 0) {
				p.err = n;
				break;
			}
		}
	}
	if (p.err)
		cli_error("bench: storing the objects to read: %s (%s)", dnet_strerror(p.err),
			  cli_node(b->g, p.c));
	dnet_client_free(p.c);
	return p.err;
}

int cmd_bench(const struct cli *g, int argc, char **argv)
{
	struct bench b;
	memset(&b, 0, sizeof(b));
	b.g = g;
	b.op = -1;
	b.conns = 1;
	b.count = 10000;
	uint64_t size = 1024, keys = 0, threads = 0;
	int json = 0, have_size = 0;
	b.prefix = "bench/";
	for (int i = 0; i < argc; i++) {
		const char *o = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(o, "--help") || !strcmp(o, "-h")) {
			usage_bench();
			return 0;
		}
		if (!strcmp(o, "--json")) {
			json = 1;
			continue;
		}
		if (strncmp(o, "--", 2) || !v)
			return cli_usage_error("bench", v ? "unknown argument %s" : "%s needs a value",
					       o);
		i++;
		uint64_t x = 0;
		if (!strcmp(o, "--op")) {
			if (!strcmp(v, "put") || !strcmp(v, "write"))
				b.op = OP_PUT;
			else if (!strcmp(v, "get") || !strcmp(v, "read"))
				b.op = OP_GET;
			else if (!strcmp(v, "mixed"))
				b.op = OP_MIXED;
			else
				return cli_usage_error("bench", "--op wants put, get or mixed");
			continue;
		}
		if (!strcmp(o, "--prefix")) {
			b.prefix = v;
			continue;
		}
		if (dnet_parse_size(v, &x))
			return cli_usage_error("bench", "%s: bad number \"%s\"", o, v);
		if (!strcmp(o, "--size")) {
			size = x;
			have_size = 1;
		} else if (!strcmp(o, "--conns")) {
			if (x < 1 || x > 65536)
				return cli_usage_error("bench", "--conns wants 1..65536");
			b.conns = (int)x;
		} else if (!strcmp(o, "--count")) {
			if (x < 1)
				return cli_usage_error("bench", "--count wants >= 1");
			b.count = x;
		} else if (!strcmp(o, "--threads")) {
			if (x < 1 || x > 4096)
				return cli_usage_error("bench", "--threads wants 1..4096");
			threads = x;
		} else if (!strcmp(o, "--keys")) {
			if (x < 1 || x > 100000000)
				return cli_usage_error("bench", "--keys wants 1..1e8");
			keys = x;
		} else {
			return cli_usage_error("bench", "unknown argument %s", o);
		}
	}
	(void)have_size;
	if (b.op < 0)
		return cli_usage_error("bench", "--op put|get|mixed is required");
	if (size > (1ull << 40))
		return cli_usage_error("bench", "--size too large");
	b.size = size;
	b.keys = keys ? keys : (b.count < 10000 ? b.count : 10000);
	int stream = size > DNET_CHUNK_SIZE;
	if (stream)
		b.threads = b.conns; /* blocking streaming API: a connection per thread */
	else {
		int np = cli_nproc();
		b.threads = threads ? (int)threads : (b.conns < np ? b.conns : np);
		if (b.threads > b.conns)
			b.threads = b.conns;
	}
	pthread_mutex_init(&b.lock, NULL);

	b.ids = malloc(b.keys * sizeof(*b.ids));
	b.data_len = stream ? (1u << 20) + 4093 : (size_t)size; /* odd length: no aligned repeats */
	b.data = malloc(b.data_len ? b.data_len : 1);
	if (!b.ids || !b.data) {
		cli_error("bench: out of memory");
		return CLI_EXIT_FAIL;
	}
	uint64_t rng = dnet_now_real_ns() | 1;
	for (size_t i = 0; i < b.data_len; i++)
		b.data[i] = (uint8_t)xorshift(&rng);
	size_t pl = strlen(b.prefix);
	char *kb = malloc(pl + 64);
	if (!kb) {
		cli_error("bench: out of memory");
		return CLI_EXIT_FAIL;
	}
	for (uint64_t k = 0; k < b.keys; k++) {
		int n = snprintf(kb, pl + 64, "%s%llu-%llu", b.prefix, (unsigned long long)size,
				 (unsigned long long)k);
		dnet_key_to_id(kb, (size_t)n, b.ids[k]);
	}
	free(kb);

	if (b.op != OP_PUT && prepare(&b)) {
		free(b.ids);
		free(b.data);
		return CLI_EXIT_FAIL;
	}

	struct worker *ws = calloc((size_t)b.threads, sizeof(*ws));
	if (!ws) {
		cli_error("bench: out of memory");
		return CLI_EXIT_FAIL;
	}
	uint64_t t0 = dnet_now_mono_ns();
	int started = 0;
	for (int i = 0; i < b.threads; i++) {
		ws[i].b = &b;
		ws[i].idx = i;
		ws[i].nconns = b.conns / b.threads + (i < b.conns % b.threads ? 1 : 0);
		ws[i].rng = (rng ^ (uint64_t)(i + 1) * 0x9e3779b97f4a7c15ull) | 1;
		if (pthread_create(&ws[i].tid, NULL, stream ? worker_stream : worker_async, &ws[i])) {
			cli_error("bench: cannot start thread %d", i);
			break;
		}
		started++;
	}
	struct hist h;
	memset(&h, 0, sizeof(h));
	for (int i = 0; i < started; i++) {
		pthread_join(ws[i].tid, NULL);
		hmerge(&h, &ws[i].h);
	}
	double secs = (double)(dnet_now_mono_ns() - t0) / 1e9;
	if (secs <= 0)
		secs = 1e-9;
	uint64_t errors = atomic_load(&b.errors);
	uint64_t ok = h.n > errors ? h.n - errors : 0;
	double ops = (double)h.n / secs;
	double mbs = (double)ok * (double)size / secs / 1e6;
	const char *opn = b.op == OP_PUT ? "put" : b.op == OP_GET ? "get" : "mixed";
	if (json) {
		printf("{\"op\": \"%s\", \"size\": %llu, \"conns\": %d, \"threads\": %d, "
		       "\"count\": %llu, \"keys\": %llu, \"seconds\": %.6f, \"ops_per_sec\": %.1f, "
		       "\"mb_per_sec\": %.3f, \"p50_us\": %.1f, \"p99_us\": %.1f, "
		       "\"p999_us\": %.1f, \"max_us\": %.1f, \"mean_us\": %.1f, \"errors\": %llu}\n",
		       opn, (unsigned long long)size, b.conns, b.threads,
		       (unsigned long long)b.count, (unsigned long long)b.keys, secs, ops, mbs,
		       hpct(&h, 0.50), hpct(&h, 0.99), hpct(&h, 0.999), (double)h.max / 1000.0,
		       h.n ? (double)h.sum / (double)h.n / 1000.0 : 0.0,
		       (unsigned long long)errors);
	} else {
		printf("bench %s: size=%llu conns=%d threads=%d count=%llu keys=%llu\n", opn,
		       (unsigned long long)size, b.conns, b.threads, (unsigned long long)b.count,
		       (unsigned long long)b.keys);
		printf("  %llu ops in %.3f s: %.0f ops/s, %.1f MB/s\n", (unsigned long long)h.n,
		       secs, ops, mbs);
		printf("  latency us: p50 %.1f  p99 %.1f  p999 %.1f  max %.1f\n", hpct(&h, 0.50),
		       hpct(&h, 0.99), hpct(&h, 0.999), (double)h.max / 1000.0);
		printf("  errors: %llu\n", (unsigned long long)errors);
	}
	int fe = atomic_load(&b.first_err);
	if (errors)
		cli_error("bench: %llu of %llu operations failed, first: %s (%s)",
			  (unsigned long long)errors, (unsigned long long)b.count,
			  dnet_strerror(fe), b.first_err_node);
	free(ws);
	free(b.ids);
	free(b.data);
	pthread_mutex_destroy(&b.lock);
	return errors ? CLI_EXIT_FAIL : 0;
}
