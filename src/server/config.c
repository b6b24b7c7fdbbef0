/* config.c - ellipticsd options: one table gives the command-line flags, their
 * config-file names (the same, without dashes) and the --help text. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "server.h"

enum opt_kind { O_STR, O_INT, O_SIZE, O_FSYNC, O_LOG, O_BACKEND, O_JOIN, O_CONFIG, O_HELP,
		O_MODE };

struct opt {
	const char *name;
	enum opt_kind kind;
	const char *arg;
	const char *help;
	size_t off; /* offset in struct dnet_config */
	size_t len; /* O_STR buffer size */
	long min, max;
};

#define DNET_CONFIG_MAX_LINES 10000

#define OFF(f) offsetof(struct dnet_config, f)
#define LEN(f) sizeof(((struct dnet_config *)0)->f)

static const struct opt opts[] = {
	{"listen", O_STR, "HOST:PORT", "address to listen on (default 127.0.0.1:1025)", OFF(listen), LEN(listen), 0, 0},
	{"data", O_STR, "DIR", "data directory (required); keeps the node ID and objects", OFF(data), LEN(data), 0, 0},
	{"backend", O_BACKEND, "NAME", "storage engine", OFF(backend), LEN(backend), 0, 0},
	{"fsync", O_FSYNC, "POLICY", "never|always|batch (default never; batch = group commit)", OFF(fsync), 0, 0, 0},
	{"io-threads", O_INT, "N", "IO worker threads executing requests (default 4)", OFF(io_threads), 0, 1, 1024},
	{"net-threads", O_INT, "N", "network event loops (default 1)", OFF(net_threads), 0, 1, 64},
	{"max-request-memory", O_SIZE, "BYTES", "payload bytes of unanswered requests, all connections together, above which the node stops reading new requests (default 1G)", OFF(max_request_memory), 0, 1 << 20, (long)(1ull << 40)},
	{"max-payload", O_SIZE, "BYTES", "largest request payload accepted (default 64M)", OFF(max_payload), 0, 4096, (long)DNET_HARD_MAX_PAYLOAD},
	{"max-conns", O_INT, "N", "concurrent client connections (default 10000)", OFF(max_conns), 0, 1, 1000000},
	{"batch-delay-us", O_INT, "US", "group commit: extra wait for company before a sync (default 0: sync at once; writes arriving during a sync share the next one)", OFF(batch_delay_us), 0, 0, 1000000},
	{"log-level", O_LOG, "LEVEL", "error|warn|info|debug (default info)", OFF(log_level), 0, 0, 0},
	{"config", O_CONFIG, "FILE", "read options from FILE: 'name = value' lines, # comments", 0, 0, 0, 0},
	{"join", O_JOIN, "HOST:PORT", "join the ring through this node (repeatable; any member will do)", 0, 0, 0, 0},
	{"ids", O_INT, "N", "ring IDs of a new node: more spread load more evenly (default 64)", OFF(ids), 0, 1, DNET_RING_MAX_IDS},
	{"advertise", O_STR, "HOST:PORT", "address other nodes and clients use for this node (default: --listen)", OFF(advertise), LEN(advertise), 0, 0},
	{"heartbeat-ms", O_INT, "MS", "interval of heartbeats to every peer (default 1000)", OFF(heartbeat_ms), 0, 50, 60000},
	{"handoff-s", O_INT, "S", "after an ownership change, look for moved objects at their old node this long (default 300)", OFF(handoff_s), 0, 0, 86400},
	{"verified-cache", O_SIZE, "BYTES", "large objects' data, once its checksums are verified, is kept locked in memory up to this many bytes (least recently read goes first), so that reads of hot objects skip hashing; any change to a data file drops its part (default 1/16 of RAM or of the cgroup's memory.max, at most 4G; 0 = off; needs CAP_IPC_LOCK or as much RLIMIT_MEMLOCK)", OFF(verified_cache), 0, 0, (long)(1ull << 50)},
	{"move-rate", O_SIZE, "BYTES", "bytes per second the node may send when moving data (default 64M; 0 = unlimited)", OFF(move_rate), 0, 0, (long)(1ull << 40)},
	{"fail-after-ms", O_INT, "MS", "a peer silent this long is marked down (default 3000)", OFF(fail_after_ms), 0, 100, 600000},
	{"idle-timeout-s", O_INT, "S", "close a connection with no request and no reply pending for this long (default 600; 0 = never)", OFF(idle_timeout_s), 0, 0, 100000000},
	{"request-timeout-s", O_INT, "S", "close a connection whose request is not received whole within this long, plus 1 s per 64 KiB of payload: slow senders (default 30; 0 = never)", OFF(request_timeout_s), 0, 0, 100000000},
	{"send-timeout-s", O_INT, "S", "close a connection whose queued replies it has not read for this long: clients that never read (default 60; 0 = never)", OFF(send_timeout_s), 0, 0, 100000000},
	{"copies", O_INT, "N", "copies of every object, placed by transformation functions on distinct nodes (and zones); the same on every node of a ring (default 1)", OFF(copies), 0, 1, DNET_MAX_COPIES},
	{"recover-interval-s", O_INT, "S", "copies > 1: compare copies with every peer at least this often (default 300; also at start, when a node comes back, and on `elliptics recover`)", OFF(recover_interval_s), 0, 1, 100000000},
	{"tombstone-grace-s", O_INT, "S", "copies > 1: a deleted object's tombstone is kept this long so a copy that missed the delete cannot bring it back (default 86400)", OFF(tombstone_grace_s), 0, 1, 100000000},
	{"zone", O_STR, "NAME", "zone (rack, room) label of this node, for copy placement", OFF(zone), LEN(zone), 0, 0},
	{"http", O_STR, "HOST:PORT", "HTTP endpoint: the S3 gateway, Prometheus /metrics, the ring page (/ring, /ring.json) (default: off)", OFF(http), LEN(http), 0, 0},
	{"s3-access-key", O_STR, "KEY", "S3 gateway access key (or $ELLIPTICS_S3_ACCESS_KEY); with no S3 key at all the gateway is anonymous and loopback-only", OFF(s3_access_key), LEN(s3_access_key), 0, 0},
	{"s3-secret-key", O_STR, "SECRET", "its secret key (or $ELLIPTICS_S3_SECRET_KEY); prefer the config file or the environment to the command line", OFF(s3_secret_key), LEN(s3_secret_key), 0, 0},
	{"s3-keys", O_STR, "FILE", "more S3 gateway keys, one per line: ACCESS_KEY SECRET_KEY", OFF(s3_keys), LEN(s3_keys), 0, 0},
	{"keys", O_STR, "FILE", "client keys, one per line: NAME SECRET read|write|admin; clients must then authenticate (-k NAME:SECRET); reloaded on SIGHUP (default: no keys, anyone may do anything)", OFF(keys), LEN(keys), 0, 0},
	{"cluster-key", O_STR, "FILE", "the secret every node of the ring shares (first line of FILE); nodes prove it to each other before joining or moving data (default: none)", OFF(cluster_key), LEN(cluster_key), 0, 0},
	{"tls-cert", O_STR, "FILE", "TLS certificate (PEM, chain allowed): the port then speaks only TLS 1.3, and connections to other nodes use TLS (default: plaintext)", OFF(tls_cert), LEN(tls_cert), 0, 0},
	{"tls-key", O_STR, "FILE", "the private key of --tls-cert (PEM)", OFF(tls_key), LEN(tls_key), 0, 0},
	{"tls-ca", O_STR, "FILE", "CA certificate(s) (PEM): mutual TLS between nodes; only a peer showing a certificate it signed may join, sync or move data, and nodes verify each other's certificates against it (default: nodes verify peers against --tls-cert itself)", OFF(tls_ca), LEN(tls_ca), 0, 0},
	{"tls-verify-clients", O_INT, "0|1", "1: every client must show a certificate signed by --tls-ca too (default 0: clients need none)", OFF(tls_verify_clients), 0, 0, 1},
	{"check", O_MODE, NULL, "offline: verify every object in --data (with --backend), print counts and each corrupt ID; exit 1 if any is corrupt", 0, 0, DNET_OFFLINE_CHECK, 0},
	{"compact", O_MODE, NULL, "offline: compact the data directory now (blob engine; others have nothing to compact)", 0, 0, DNET_OFFLINE_COMPACT, 0},
	{"export", O_MODE, "FILE|-", "offline: write every object (ID, timestamp, size, checksum, data) to FILE or stdout", 0, 0, DNET_OFFLINE_EXPORT, 0},
	{"import", O_MODE, "FILE|-", "offline: store every object of an --export stream, timestamps kept; a corrupt stream is refused", 0, 0, DNET_OFFLINE_IMPORT, 0},
	{"help", O_HELP, NULL, "this text", 0, 0, 0, 0},
};

/* The memory limit of our cgroup, or 0 if none or unknown: v2's memory.max, or
 * v1's memory.limit_in_bytes (a huge number when unlimited). */
static uint64_t cgroup_memory_max(void)
{
	char line[512], v1[600] = "", v2[600] = "";
	FILE *f = fopen("/proc/self/cgroup", "r");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = 0;
		const char *p = strchr(line, ':'), *q = p ? strchr(p + 1, ':') : NULL;
		if (!q)
			continue;
		const char *dir = strcmp(q + 1, "/") == 0 ? "" : q + 1;
		if (strncmp(line, "0::", 3) == 0)
			snprintf(v2, sizeof(v2), "/sys/fs/cgroup%s/memory.max", dir);
		else if ((size_t)(q - p - 1) == 6 && strncmp(p + 1, "memory", 6) == 0)
			snprintf(v1, sizeof(v1), "/sys/fs/cgroup/memory%s/memory.limit_in_bytes", dir);
	}
	fclose(f);
	uint64_t v = 0;
	for (int i = 0; i < 2 && !v; i++) {
		const char *path = i == 0 ? v2 : v1;
		if (path[0] && (f = fopen(path, "r"))) {
			unsigned long long x;
			if (fscanf(f, "%llu", &x) == 1) /* v2's "max" reads as nothing */
				v = x;
			fclose(f);
		}
	}
	return v;
}

/* 1/16 of the memory we may use (physical, or our cgroup's limit if lower), at
 * most 4 GiB: room for the hot large objects of a node without taking memory a
 * busy node needs for anything else (locked pages cannot be reclaimed). */
static uint64_t dnet_default_verified_cache(void)
{
	long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGESIZE);
	if (pages <= 0 || psize <= 0)
		return 0;
	uint64_t mem = (uint64_t)pages * (uint64_t)psize, cg = cgroup_memory_max();
	if (cg && cg < mem)
		mem = cg;
	uint64_t v = mem / 16;
	return v < (4ull << 30) ? v : 4ull << 30;
}

void dnet_config_defaults(struct dnet_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	snprintf(cfg->listen, sizeof(cfg->listen), "127.0.0.1:1025");
	snprintf(cfg->backend, sizeof(cfg->backend), "%s", DNET_DEFAULT_BACKEND);
	cfg->fsync = DNET_FSYNC_NEVER;
	cfg->io_threads = 4;
	cfg->net_threads = 1;
	cfg->max_payload = DNET_DEFAULT_MAX_PAYLOAD;
	cfg->max_conns = 10000;
	cfg->log_level = DNET_LOG_INFO;
	cfg->batch_delay_us = 0;
	cfg->out_high = 16u << 20;
	cfg->max_inflight = 128;
	cfg->max_inflight_bytes = 256u << 20;
	cfg->max_request_memory = 1ull << 30;
	cfg->ids = 64;
	cfg->heartbeat_ms = 1000;
	cfg->fail_after_ms = 3000;
	cfg->handoff_s = 300;
	cfg->move_rate = 64u << 20;
	cfg->verified_cache = dnet_default_verified_cache();
	cfg->copies = 1;
	cfg->tombstone_grace_s = 86400;
	cfg->recover_interval_s = 300;
	cfg->idle_timeout_s = 600;
	cfg->request_timeout_s = 30;
	cfg->send_timeout_s = 60;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: ellipticsd --data DIR [options]\n\n"
		   "Elliptics storage node: stores objects and serves them over the Elliptics protocol.\n"
		   "Runs in the foreground, logs to stderr, stops cleanly on SIGTERM/SIGINT.\n\n");
	for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
		char left[64];
		snprintf(left, sizeof(left), "--%s%s%s", opts[i].name, opts[i].arg ? " " : "",
			 opts[i].arg ? opts[i].arg : "");
		fprintf(f, "  %-26s %s", left, opts[i].help);
		if (opts[i].kind == O_BACKEND)
			fprintf(f, ": %s (default %s)", dnet_backend_names(), DNET_DEFAULT_BACKEND);
		fputc('\n', f);
	}
	fprintf(f, "\nEvery option can also be set in the --config file by its name without the dashes,\n"
		   "except the offline actions --check, --compact, --export and --import: they are\n"
		   "given on the command line, run against --data with --backend while no ellipticsd\n"
		   "uses the directory (they take its lock), and exit: 0 done, 1 corrupt objects found,\n"
		   "2 usage, 3 failure.\n");
}

static int set_opt(struct dnet_config *cfg, const struct opt *o, const char *val, const char *where,
		   int depth);

static int load_config(struct dnet_config *cfg, const char *path, int depth)
{
	if (depth > 4) {
		fprintf(stderr, "ellipticsd: %s: config files nest too deeply\n", path);
		return 2;
	}
	FILE *f = fopen(path, "r");
	if (!f) {
		fprintf(stderr, "ellipticsd: cannot open config file %s: %s\n", path, strerror(errno));
		return 2;
	}
	char line[8192];
	int lineno = 0, rc = 0;
	while (!rc && fgets(line, sizeof(line), f)) {
		/* bounded: a path naming an endless device (/dev/zero) must not hang us */
		if (++lineno > DNET_CONFIG_MAX_LINES) {
			fprintf(stderr, "ellipticsd: %s: more than %d lines: not a config file\n", path,
				DNET_CONFIG_MAX_LINES);
			rc = 2;
			break;
		}
		char *p = line;
		char *hash = strchr(p, '#');
		if (hash)
			*hash = '\0';
		while (isspace((unsigned char)*p))
			p++;
		size_t l = strlen(p);
		while (l && isspace((unsigned char)p[l - 1]))
			p[--l] = '\0';
		if (!*p)
			continue;
		char *name = p;
		while (*p && !isspace((unsigned char)*p) && *p != '=')
			p++;
		char *name_end = p;
		while (isspace((unsigned char)*p))
			p++;
		if (*p == '=')
			p++;
		while (isspace((unsigned char)*p))
			p++;
		*name_end = '\0';
		char where[4200];
		snprintf(where, sizeof(where), "%s:%d", path, lineno);
		const struct opt *o = NULL;
		for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++)
			if (strcmp(opts[i].name, name) == 0)
				o = &opts[i];
		if (!o || o->kind == O_HELP) {
			fprintf(stderr, "ellipticsd: %s: unknown option '%s'\n", where, name);
			rc = 2;
			break;
		}
		rc = set_opt(cfg, o, p, where, depth + 1);
	}
	fclose(f);
	return rc;
}

static int set_opt(struct dnet_config *cfg, const struct opt *o, const char *val, const char *where,
		   int depth)
{
	char *base = (char *)cfg;
	if (o->arg && (!val || !*val)) {
		fprintf(stderr, "ellipticsd: %s: --%s needs a value (%s)\n", where, o->name, o->arg);
		return 2;
	}
	switch (o->kind) {
	case O_STR:
	case O_BACKEND:
		if (strlen(val) >= o->len) {
			fprintf(stderr, "ellipticsd: %s: --%s value too long\n", where, o->name);
			return 2;
		}
		if (o->kind == O_BACKEND && !dnet_backend_find(val)) {
			fprintf(stderr, "ellipticsd: %s: unknown backend '%s' (available: %s)\n", where, val,
				dnet_backend_names());
			return 2;
		}
		snprintf(base + o->off, o->len, "%s", val);
		return 0;
	case O_INT: {
		char *end;
		errno = 0;
		long v = strtol(val, &end, 10);
		if (errno || *end || v < o->min || v > o->max) {
			fprintf(stderr, "ellipticsd: %s: --%s wants an integer in %ld..%ld, got '%s'\n",
				where, o->name, o->min, o->max, val);
			return 2;
		}
		if (o->off == OFF(batch_delay_us))
			cfg->batch_delay_us = (uint32_t)v;
		else
			*(int *)(void *)(base + o->off) = (int)v;
		return 0;
	}
	case O_SIZE: {
		uint64_t v;
		if (dnet_parse_size(val, &v) != 0 || v < (uint64_t)o->min || v > (uint64_t)o->max) {
			fprintf(stderr, "ellipticsd: %s: --%s wants a size in %ld..%ld bytes, got '%s'\n",
				where, o->name, o->min, o->max, val);
			return 2;
		}
		*(uint64_t *)(void *)(base + o->off) = v;
		return 0;
	}
	case O_FSYNC: {
		int p = dnet_fsync_policy_parse(val);
		if (p < 0) {
			fprintf(stderr, "ellipticsd: %s: --fsync wants never|always|batch, got '%s'\n",
				where, val);
			return 2;
		}
		cfg->fsync = p;
		return 0;
	}
	case O_LOG: {
		int l = dnet_log_level_parse(val);
		if (l < 0) {
			fprintf(stderr, "ellipticsd: %s: --log-level wants error|warn|info|debug, got '%s'\n",
				where, val);
			return 2;
		}
		cfg->log_level = l;
		return 0;
	}
	case O_JOIN:
		if (cfg->njoins >= (int)(sizeof(cfg->joins) / sizeof(cfg->joins[0]))) {
			fprintf(stderr, "ellipticsd: %s: at most %zu --join addresses\n", where,
				sizeof(cfg->joins) / sizeof(cfg->joins[0]));
			return 2;
		}
		if (strlen(val) >= sizeof(cfg->joins[0])) {
			fprintf(stderr, "ellipticsd: %s: --join value too long\n", where);
			return 2;
		}
		snprintf(cfg->joins[cfg->njoins++], sizeof(cfg->joins[0]), "%s", val);
		return 0;
	case O_CONFIG:
		return load_config(cfg, val, depth);
	case O_HELP:
		usage(stdout);
		return 1;
	case O_MODE:
		if (depth > 0) {
			fprintf(stderr, "ellipticsd: %s: --%s is an action for the command line, not a config option\n",
				where, o->name);
			return 2;
		}
		if (cfg->offline) {
			fprintf(stderr, "ellipticsd: only one of --check, --compact, --export, --import\n");
			return 2;
		}
		if (o->arg && strlen(val) >= sizeof(cfg->offline_arg)) {
			fprintf(stderr, "ellipticsd: %s: --%s value too long\n", where, o->name);
			return 2;
		}
		cfg->offline = (int)o->min;
		if (o->arg)
			snprintf(cfg->offline_arg, sizeof(cfg->offline_arg), "%s", val);
		return 0;
	}
	return 2;
}

int dnet_config_parse(struct dnet_config *cfg, int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "-h") == 0)
			a = "--help";
		if (strncmp(a, "--", 2) != 0) {
			fprintf(stderr, "ellipticsd: unexpected argument '%s' (try --help)\n", a);
			return 2;
		}
		const char *name = a + 2;
		const char *eq = strchr(name, '=');
		size_t nl = eq ? (size_t)(eq - name) : strlen(name);
		const struct opt *o = NULL;
		for (size_t k = 0; k < sizeof(opts) / sizeof(opts[0]); k++)
			if (strlen(opts[k].name) == nl && strncmp(opts[k].name, name, nl) == 0)
				o = &opts[k];
		if (!o) {
			fprintf(stderr, "ellipticsd: unknown option '%s' (try --help)\n", a);
			return 2;
		}
		const char *val = NULL;
		if (o->arg) {
			if (eq)
				val = eq + 1;
			else if (i + 1 < argc)
				val = argv[++i];
		}
		int rc = set_opt(cfg, o, val, "command line", 0);
		if (rc)
			return rc;
	}
	if (!cfg->data[0]) {
		fprintf(stderr, "ellipticsd: --data DIR is required (try --help)\n");
		return 2;
	}
	return 0;
}
