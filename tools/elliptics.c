/* elliptics.c - the `elliptics` command-line client: put/get/del/lookup/stat/routes,
 * and the dispatch to check and bench. The CLI contract is in PRODUCT.md. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "common/id.h"
#include "common/util.h"

/* --- shared helpers ------------------------------------------------------ */

void cli_error(const char *fmt, ...)
{
	char buf[16384];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	fprintf(stderr, "elliptics: %s\n", buf);
}

static void usage_main(FILE *f)
{
	fprintf(f,
		"usage: elliptics [-r HOST:PORT]... [-k NAME:SECRET] [--timeout SEC]\n"
		"                 [--tls-ca FILE [--tls-cert FILE --tls-key FILE]] COMMAND [ARGS]\n"
		"\n"
		"commands:\n"
		"  put KEY [FILE|-]        store FILE (default or '-': stdin) as object KEY\n"
		"  get KEY [FILE|-]        fetch object KEY into FILE (default or '-': stdout)\n"
		"  del KEY                 remove object KEY\n"
		"  lookup KEY              which nodes hold KEY: HOST:PORT size= csum= timestamp=\n"
		"                          (one line per copy, with copy=I, when there are copies)\n"
		"  stat [--json] [--all]   per-node counters\n"
		"  routes                  the ring: START_ID END_ID HOST:PORT per range\n"
		"  leave [HOST:PORT]       the -r node leaves the ring (handing its objects over),\n"
		"                          or the member HOST:PORT (a dead node) is removed\n"
		"  recover [--no-wait]     copies > 1: every node compares its copies with its\n"
		"                          peers now and copies what differs; waits for all\n"
		"  check [options]         integrity run: store, read back and verify many objects\n"
		"  bench [options]         throughput and latency: ops/s, MB/s, p50/p99/p999\n"
		"\n"
		"  put/get/del/lookup take --id HEX128 (a raw 64-byte object id) instead of KEY.\n"
		"\n"
		"options:\n"
		"  -r, --remote HOST:PORT  node to talk to (repeatable; default $ELLIPTICS_REMOTE\n"
		"                          or " DNET_DEFAULT_REMOTE ")\n"
		"  -k, --key NAME:SECRET   client credentials (default $ELLIPTICS_KEY)\n"
		"  --w N                   copies that must acknowledge a write or delete\n"
		"                          (default: a majority of the ring's --copies)\n"
		"  --r N                   copies read in parallel, newest wins (default 1:\n"
		"                          one at a time, failing over)\n"
		"  --timeout SEC           per-request timeout (default 30)\n"
		"  --tls-ca FILE           talk TLS to the nodes; their certificates must be signed\n"
		"                          by a CA in FILE (default $ELLIPTICS_TLS_CA)\n"
		"  --tls-cert FILE, --tls-key FILE\n"
		"                          client certificate and key, for nodes that require one\n"
		"                          (default $ELLIPTICS_TLS_CERT, $ELLIPTICS_TLS_KEY)\n"
		"  -h, --help              this text; `elliptics COMMAND --help` for a command\n"
		"\n"
		"exit status: 0 ok, 1 not found, 2 usage error, 3 other failure\n");
}

static void usage_cmd(const char *cmd)
{
	if (!strcmp(cmd, "put"))
		printf("usage: elliptics put KEY [FILE|-]\n"
		       "       elliptics put --id HEX128 [FILE|-]\n"
		       "Store FILE (no FILE or '-': standard input) as the object, replacing it.\n");
	else if (!strcmp(cmd, "get"))
		printf("usage: elliptics get KEY [FILE|-]\n"
		       "       elliptics get --id HEX128 [FILE|-]\n"
		       "Write the object to FILE (no FILE or '-': standard output). FILE appears\n"
		       "only when the whole object has arrived.\n");
	else if (!strcmp(cmd, "del"))
		printf("usage: elliptics del KEY | --id HEX128\nRemove the object.\n");
	else if (!strcmp(cmd, "lookup"))
		printf("usage: elliptics lookup KEY | --id HEX128\n"
		       "One line per copy: HOST:PORT size=N csum=HEX32 timestamp=ISO8601 (NS)\n");
	else if (!strcmp(cmd, "stat"))
		printf("usage: elliptics stat [--json] [--all]\n"
		       "Counters of every -r node: lines `HOST:PORT name value`, or with --json one\n"
		       "object {\"HOST:PORT\": {name: value, ...}}. --all: every node of the ring\n"
		       "(from the route table of the first -r node that answers); a node that does\n"
		       "not answer gets one error line and the exit status is 3.\n");
	else if (!strcmp(cmd, "routes"))
		printf("usage: elliptics routes\n"
		       "The ring as the first -r node that answers sees it: one line per range of\n"
		       "IDs, START_HEX END_HEX HOST:PORT (128 hex digits each, ascending from 00..00\n"
		       "to ff..ff, neighbouring ranges of one owner merged), then \" down\" if the\n"
		       "owner is marked down.\n");
	else if (!strcmp(cmd, "leave"))
		printf("usage: elliptics -r NODE leave [HOST:PORT]\n"
		       "Without HOST:PORT: NODE leaves the ring for good; it hands every object to\n"
		       "the new owners (watch `elliptics -r NODE stat` until move_pending is 0),\n"
		       "then can be stopped. With HOST:PORT: NODE removes that member (a node that\n"
		       "is dead for good); its ranges go to the others.\n");
	else if (!strcmp(cmd, "recover"))
		printf("usage: elliptics recover [--no-wait]\n"
		       "With copies (ellipticsd --copies N > 1): every node of the ring that is up\n"
		       "starts an anti-entropy pass now, comparing its copies with each peer's by\n"
		       "range digests and copying only what differs (newest version wins; deletes\n"
		       "travel as tombstones). Waits until every node has finished and prints per\n"
		       "node: passes, objects pulled (fetched from a peer), bytes, the pass's duration;\n"
		       "then a total line. --no-wait: start the passes and return.\n");
	else if (!strcmp(cmd, "check"))
		usage_check();
	else if (!strcmp(cmd, "bench"))
		usage_bench();
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (cmd)
		fprintf(stderr, "elliptics: %s: %s (see `elliptics %s --help`)\n", cmd, buf, cmd);
	else
		fprintf(stderr, "elliptics: %s (see `elliptics --help`)\n", buf);
	return CLI_EXIT_USAGE;
}

int cli_exit_code(int err)
{
	if (!err)
		return CLI_EXIT_OK;
	if (err == DNET_ENOENT)
		return CLI_EXIT_NOTFOUND;
	return CLI_EXIT_FAIL;
}

int cli_nproc(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n < 1 ? 1 : (int)n;
}

/* Length of a valid UTF-8 sequence at p (>= 2), or 0. */
static size_t utf8_len(const unsigned char *p, size_t left)
{
	size_t n;
	if (p[0] >= 0xc2 && p[0] <= 0xdf)
		n = 2;
	else if (p[0] >= 0xe0 && p[0] <= 0xef)
		n = 3;
	else if (p[0] >= 0xf0 && p[0] <= 0xf4)
		n = 4;
	else
		return 0;
	if (n > left)
		return 0;
	for (size_t i = 1; i < n; i++)
		if ((p[i] & 0xc0) != 0x80)
			return 0;
	return n;
}

char *cli_escape(const void *key, size_t len)
{
	const unsigned char *p = key;
	char *out = malloc(len * 4 + 3);
	if (!out) {
		fprintf(stderr, "elliptics: out of memory\n");
		exit(CLI_EXIT_FAIL);
	}
	size_t o = 0;
	out[o++] = '"';
	for (size_t i = 0; i < len;) {
		unsigned char ch = p[i];
		size_t u = ch >= 0x80 ? utf8_len(p + i, len - i) : 0;
		if (u) {
			memcpy(out + o, p + i, u);
			o += u;
			i += u;
			continue;
		}
		if (ch == '"' || ch == '\\') {
			out[o++] = '\\';
			out[o++] = (char)ch;
		} else if (ch == '\n') {
			out[o++] = '\\';
			out[o++] = 'n';
		} else if (ch == '\t') {
			out[o++] = '\\';
			out[o++] = 't';
		} else if (ch < 0x20 || ch >= 0x7f) {
			o += (size_t)snprintf(out + o, 5, "\\x%02x", ch);
		} else {
			out[o++] = (char)ch;
		}
		i++;
	}
	out[o++] = '"';
	out[o] = '\0';
	return out;
}

int cli_client_one(const struct cli *g, const char *remote, dnet_client **out)
{
	dnet_client *c;
	int err = dnet_client_new(&c);
	if (err)
		return err;
	dnet_client_set_timeout(c, g->timeout_ms);
	dnet_client_set_quorum(c, g->w, g->r);
	if (g->tls_ca && dnet_client_set_tls(c, g->tls_ca, g->tls_cert, g->tls_key) != 0) {
		cli_error("%s", dnet_client_tls_error(c));
		dnet_client_free(c);
		return DNET_EINVAL;
	}
	if (g->auth && dnet_client_set_key(c, g->auth) != 0) {
		cli_error("-k wants NAME:SECRET (name up to 64 bytes, secret up to 256)");
		dnet_client_free(c);
		return DNET_EINVAL;
	}
	if (remote) {
		err = dnet_client_add_remote(c, remote);
		if (err) {
			cli_error("bad remote address \"%s\": %s", remote, dnet_strerror(err));
			dnet_client_free(c);
			return err;
		}
	}
	*out = c;
	return 0;
}

int cli_client(const struct cli *g, dnet_client **out)
{
	int err = cli_client_one(g, NULL, out);
	if (err)
		return err;
	for (int i = 0; i < g->nremotes; i++) {
		err = dnet_client_add_remote(*out, g->remotes[i]);
		if (err) {
			cli_error("bad remote address \"%s\": %s", g->remotes[i],
				  dnet_strerror(err));
			dnet_client_free(*out);
			*out = NULL;
			return err;
		}
	}
	return 0;
}

const char *cli_node(const struct cli *g, const dnet_client *c)
{
	static char buf[1024];
	const char *n = c ? dnet_client_node(c) : NULL;
	if (n)
		return n;
	size_t o = 0;
	buf[0] = '\0';
	for (int i = 0; i < g->nremotes && o < sizeof(buf) - 1; i++)
		o += (size_t)snprintf(buf + o, sizeof(buf) - o, "%s%s", i ? "," : "", g->remotes[i]);
	return buf;
}

/* --- object commands ----------------------------------------------------- */

struct objarg {
	const char *key;
	size_t klen;
	uint8_t id[64];
	int by_id;
	char *shown; /* escaped key or the hex id, for messages */
	const char *file;
};

/* KEY|--id HEX [FILE]; nfiles: how many optional trailing args are allowed. */
static int parse_obj_args(const char *cmd, int argc, char **argv, int nfiles, struct objarg *a)
{
	const char *pos[3];
	int npos = 0, only_pos = 0;
	const char *idhex = NULL;
	memset(a, 0, sizeof(*a));
	for (int i = 0; i < argc; i++) {
		const char *s = argv[i];
		if (!only_pos && !strcmp(s, "--")) {
			only_pos = 1;
		} else if (!only_pos && (!strcmp(s, "--help") || !strcmp(s, "-h"))) {
			usage_cmd(cmd);
			exit(CLI_EXIT_OK);
		} else if (!only_pos && !strcmp(s, "--id")) {
			if (i + 1 >= argc)
				return cli_usage_error(cmd, "--id needs a 128-digit hex id");
			idhex = argv[++i];
		} else if (!only_pos && !strncmp(s, "--id=", 5)) {
			idhex = s + 5;
		} else if (!only_pos && s[0] == '-' && s[1] == '-' && s[2]) {
			return cli_usage_error(cmd, "unknown option %s", s);
		} else {
			if (npos >= 3)
				return cli_usage_error(cmd, "too many arguments");
			pos[npos++] = s;
		}
	}
	int want_key = idhex ? 0 : 1;
	if (npos < want_key)
		return cli_usage_error(cmd, "missing KEY");
	if (npos > want_key + nfiles)
		return cli_usage_error(cmd, "too many arguments");
	if (idhex) {
		if (dnet_id_from_hex(a->id, idhex))
			return cli_usage_error(cmd, "--id wants exactly 128 hex digits");
		a->by_id = 1;
		a->shown = strdup(idhex);
	} else {
		a->key = pos[0];
		a->klen = strlen(pos[0]);
		if (!a->klen || a->klen > DNET_KEY_MAX)
			return cli_usage_error(cmd, "KEY must be 1..%d bytes", DNET_KEY_MAX);
		dnet_key_to_id(a->key, a->klen, a->id);
		a->shown = cli_escape(a->key, a->klen);
	}
	if (npos > want_key)
		a->file = pos[want_key];
	return 0;
}

/* "copy 0 on HOST: ok, copy 1 on HOST: connection refused, ..." of the last call,
 * or "" without copies. */
static void copies_summary(const dnet_client *c, char *out, size_t len)
{
	int n = 0;
	const struct dnet_copy_status *cp = dnet_last_copies(c, &n);
	size_t off = 0;
	out[0] = '\0';
	for (int i = 0; i < n && off < len; i++) {
		int w = snprintf(out + off, len - off, "%scopy %d on %s%s: %s", i ? ", " : "",
				 cp[i].copy, cp[i].node, cp[i].standin ? " (stand-in)" : "",
				 cp[i].status == 0 || cp[i].status == DNET_EEXIST
					 ? "ok" : dnet_strerror(cp[i].status));
		if (w < 0)
			break;
		off += (size_t)w;
	}
}

static int obj_fail(const struct cli *g, dnet_client *c, const char *cmd, const struct objarg *a,
		    int err)
{
	char copies[1024];
	copies_summary(c, copies, sizeof(copies));
	if (copies[0])
		cli_error("%s %s: %s (%s)", cmd, a->shown, dnet_strerror(err), copies);
	else
		cli_error("%s %s: %s (%s)", cmd, a->shown, dnet_strerror(err), cli_node(g, c));
	return cli_exit_code(err);
}

/* Progress line on a terminal for big transfers. */
struct progress {
	const char *what;
	uint64_t start, last;
	int shown;
};

static void fmt_bytes(char *out, size_t len, double b)
{
	const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
	int i = 0;
	while (b >= 1024 && i < 4) {
		b /= 1024;
		i++;
	}
	snprintf(out, len, "%.1f %s", b, u[i]);
}

static void progress_cb(void *arg, uint64_t done, uint64_t total)
{
	struct progress *p = arg;
	uint64_t now = dnet_now_mono_ns();
	if (done < (16u << 20) && total < (16u << 20))
		return;
	if (done != total && now - p->last < 200000000ull)
		return;
	p->last = now;
	double secs = (double)(now - p->start) / 1e9;
	char d[32], t[32];
	fmt_bytes(d, sizeof(d), (double)done);
	fmt_bytes(t, sizeof(t), (double)total);
	if (total)
		fprintf(stderr, "\r%s: %s / %s (%3.0f%%) %.1f MB/s   ", p->what, d, t,
			100.0 * (double)done / (double)total,
			secs > 0 ? (double)done / secs / 1e6 : 0.0);
	else
		fprintf(stderr, "\r%s: %s %.1f MB/s   ", p->what, d,
			secs > 0 ? (double)done / secs / 1e6 : 0.0);
	p->shown = 1;
}

static void progress_start(dnet_client *c, struct progress *p, const char *what)
{
	memset(p, 0, sizeof(*p));
	p->what = what;
	p->start = dnet_now_mono_ns();
	if (isatty(2))
		dnet_client_set_progress(c, progress_cb, p);
}

static void progress_end(struct progress *p)
{
	if (p->shown)
		fprintf(stderr, "\n");
}

static int cmd_put(const struct cli *g, int argc, char **argv)
{
	struct objarg a;
	int rc = parse_obj_args("put", argc, argv, 1, &a);
	if (rc)
		return rc;
	int fd = 0;
	if (a.file && strcmp(a.file, "-")) {
		fd = open(a.file, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			cli_error("put %s: cannot open \"%s\": %s", a.shown, a.file, strerror(errno));
			free(a.shown);
			return CLI_EXIT_FAIL;
		}
	}
	struct stat st;
	if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
		cli_error("put %s: \"%s\" is a directory", a.shown, a.file ? a.file : "-");
		if (fd > 0)
			close(fd);
		free(a.shown);
		return CLI_EXIT_FAIL;
	}
	dnet_client *c;
	int err = cli_client(g, &c);
	if (err) {
		free(a.shown);
		return CLI_EXIT_FAIL;
	}
	struct progress p;
	progress_start(c, &p, "put");
	struct dnet_object_info info;
	err = dnet_write_fd_id(c, a.id, fd, UINT64_MAX, &info);
	progress_end(&p);
	rc = err ? obj_fail(g, c, "put", &a, err) : 0;
	if (!err) {
		/* Stored by a quorum, but not on every home: say so (not an error). */
		int n = 0, bad = 0;
		const struct dnet_copy_status *cp = dnet_last_copies(c, &n);
		for (int i = 0; i < n; i++)
			bad |= cp[i].standin || (cp[i].status && cp[i].status != DNET_EEXIST);
		if (bad) {
			char copies[1024];
			copies_summary(c, copies, sizeof(copies));
			fprintf(stderr, "elliptics: put %s: stored, but not on every home node: %s\n",
				a.shown, copies);
		}
	}
	if (fd > 0)
		close(fd);
	dnet_client_free(c);
	free(a.shown);
	return rc;
}

/* Writes to the local output, remembering why they failed (a full disk or a closed
 * pipe is our side's problem, not the node's). */
struct out_sink {
	int fd;
	int err; /* errno */
};

#define SINK_FAILED (-1000)

static int out_write(void *arg, const void *data, size_t len)
{
	struct out_sink *o = arg;
	const char *p = data;
	while (len) {
		ssize_t n = write(o->fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			o->err = errno;
			return SINK_FAILED;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int get_fail(const struct cli *g, dnet_client *c, const struct objarg *a,
		    const struct out_sink *o, const char *where, int err)
{
	if (err == SINK_FAILED) {
		cli_error("get %s: writing %s: %s", a->shown, where, strerror(o->err));
		return CLI_EXIT_FAIL;
	}
	return obj_fail(g, c, "get", a, err);
}

static int cmd_get(const struct cli *g, int argc, char **argv)
{
	struct objarg a;
	int rc = parse_obj_args("get", argc, argv, 1, &a);
	if (rc)
		return rc;
	dnet_client *c;
	int err = cli_client(g, &c);
	if (err) {
		free(a.shown);
		return CLI_EXIT_FAIL;
	}
	struct progress p;
	progress_start(c, &p, "get");
	struct out_sink o = {.fd = 1};
	if (!a.file || !strcmp(a.file, "-")) {
		err = dnet_read_stream_id(c, a.id, 0, 0, out_write, &o, NULL);
		progress_end(&p);
		rc = err ? get_fail(g, c, &a, &o, "standard output", err) : 0;
		goto out;
	}
	/* A device, FIFO or socket is written in place: there is nothing to replace. */
	struct stat st;
	if (stat(a.file, &st) == 0 && S_ISDIR(st.st_mode)) {
		cli_error("get %s: \"%s\" is a directory", a.shown, a.file);
		rc = CLI_EXIT_FAIL;
		goto out;
	}
	if (stat(a.file, &st) == 0 && !S_ISREG(st.st_mode)) {
		o.fd = open(a.file, O_WRONLY | O_CLOEXEC);
		if (o.fd < 0) {
			cli_error("get %s: cannot open \"%s\": %s", a.shown, a.file, strerror(errno));
			rc = CLI_EXIT_FAIL;
			goto out;
		}
		err = dnet_read_stream_id(c, a.id, 0, 0, out_write, &o, NULL);
		progress_end(&p);
		if (close(o.fd) < 0 && !err) {
			o.err = errno;
			err = SINK_FAILED;
		}
		rc = err ? get_fail(g, c, &a, &o, a.file, err) : 0;
		goto out;
	}
	/* Temp file next to FILE, renamed into place only when complete. */
	char *d1 = strdup(a.file), *d2 = strdup(a.file);
	size_t tl = strlen(a.file) + 32;
	char *tmp = malloc(tl);
	if (!d1 || !d2 || !tmp) {
		cli_error("out of memory");
		rc = CLI_EXIT_FAIL;
		goto out_free;
	}
	snprintf(tmp, tl, "%s/.%s.XXXXXX", dirname(d1), basename(d2));
	int fd = mkstemp(tmp);
	if (fd < 0) {
		cli_error("get %s: cannot create a temporary file next to \"%s\": %s", a.shown,
			  a.file, strerror(errno));
		rc = CLI_EXIT_FAIL;
		goto out_free;
	}
	mode_t um = umask(0);
	umask(um);
	fchmod(fd, 0666 & ~um);
	o.fd = fd;
	/* a failed read's bytes are dropped with the temporary file: verified as sent */
	dnet_client_set_stream_verify(c, 1);
	err = dnet_read_stream_id(c, a.id, 0, 0, out_write, &o, NULL);
	progress_end(&p);
	if (close(fd) < 0 && !err) {
		o.err = errno;
		err = SINK_FAILED;
	}
	if (!err && rename(tmp, a.file) < 0) {
		cli_error("get %s: cannot rename into \"%s\": %s", a.shown, a.file, strerror(errno));
		unlink(tmp);
		rc = CLI_EXIT_FAIL;
		goto out_free;
	}
	if (err) {
		unlink(tmp);
		rc = get_fail(g, c, &a, &o, a.file, err);
	}
out_free:
	free(d1);
	free(d2);
	free(tmp);
out:
	dnet_client_free(c);
	free(a.shown);
	return rc;
}

static int cmd_del(const struct cli *g, int argc, char **argv)
{
	struct objarg a;
	int rc = parse_obj_args("del", argc, argv, 0, &a);
	if (rc)
		return rc;
	dnet_client *c;
	int err = cli_client(g, &c);
	if (err) {
		free(a.shown);
		return CLI_EXIT_FAIL;
	}
	err = dnet_remove_id(c, a.id);
	rc = err ? obj_fail(g, c, "del", &a, err) : 0;
	dnet_client_free(c);
	free(a.shown);
	return rc;
}

static void fmt_time(uint64_t ns, char *out, size_t len)
{
	time_t s = (time_t)(ns / 1000000000ull);
	struct tm tm;
	gmtime_r(&s, &tm);
	char b[32];
	strftime(b, sizeof(b), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(out, len, "%s.%09lluZ", b, (unsigned long long)(ns % 1000000000ull));
}

static int cmd_lookup(const struct cli *g, int argc, char **argv)
{
	struct objarg a;
	int rc = parse_obj_args("lookup", argc, argv, 0, &a);
	if (rc)
		return rc;
	dnet_client *c;
	int err = cli_client(g, &c);
	if (err) {
		free(a.shown);
		return CLI_EXIT_FAIL;
	}
	struct dnet_object_info info;
	err = dnet_lookup_id(c, a.id, &info);
	int ncopies = 0;
	const struct dnet_copy_status *cp = dnet_last_copies(c, &ncopies);
	if (!err && ncopies) {
		/* Copies: one line per copy that holds the object; the others on stderr. */
		for (int i = 0; i < ncopies; i++) {
			char cs[33], ts[64];
			if (cp[i].status) {
				fprintf(stderr, "elliptics: lookup: copy %d on %s: %s\n", cp[i].copy,
					cp[i].node, dnet_strerror(cp[i].status));
				continue;
			}
			dnet_csum_to_hex(cp[i].csum, cs);
			fmt_time(cp[i].version, ts, sizeof(ts));
			printf("%s size=%llu csum=%s timestamp=%s (%llu) copy=%d\n", cp[i].node,
			       (unsigned long long)cp[i].size, cs, ts,
			       (unsigned long long)cp[i].version, cp[i].copy);
		}
	} else if (err) {
		rc = obj_fail(g, c, "lookup", &a, err);
	} else {
		char cs[33], ts[64];
		dnet_csum_to_hex(info.csum, cs);
		fmt_time(info.timestamp, ts, sizeof(ts));
		printf("%s size=%llu csum=%s timestamp=%s (%llu)\n", info.node,
		       (unsigned long long)info.size, cs, ts, (unsigned long long)info.timestamp);
	}
	dnet_client_free(c);
	free(a.shown);
	return rc;
}

/* --- node commands ------------------------------------------------------- */

void cli_json_str(FILE *f, const void *data, size_t n)
{
	const unsigned char *s = data;
	fputc('"', f);
	for (size_t i = 0; i < n;) {
		unsigned char ch = s[i];
		size_t u = ch >= 0x80 ? utf8_len(s + i, n - i) : 0;
		if (u) {
			fwrite(s + i, 1, u, f);
			i += u;
			continue;
		}
		if (ch == '"' || ch == '\\')
			fprintf(f, "\\%c", ch);
		else if (ch < 0x20 || ch >= 0x7f)
			fprintf(f, "\\u%04x", ch);
		else
			fputc(ch, f);
		i++;
	}
	fputc('"', f);
}

static int is_json_number(const char *s, size_t n)
{
	if (!n || n > 40)
		return 0;
	char buf[48];
	memcpy(buf, s, n);
	buf[n] = '\0';
	char *end;
	strtod(buf, &end);
	if (*end)
		return 0;
	/* JSON forbids leading '+', '.5', 'inf', 'nan', hex. */
	size_t i = buf[0] == '-';
	if (buf[i] < '0' || buf[i] > '9')
		return 0;
	if (buf[i] == '0' && buf[i + 1] >= '0' && buf[i + 1] <= '9')
		return 0;
	for (; buf[i]; i++)
		if (!strchr("0123456789.eE+-", buf[i]))
			return 0;
	return 1;
}

/* Print one node's counters: text lines, or one member of the JSON object. */
static void stat_print(int json, int *first, const char *node, const char *text)
{
	if (json) {
		printf("%s\n  ", *first ? "" : ",");
		cli_json_str(stdout, node, strlen(node));
		printf(": {");
	}
	int firstkv = 1;
	for (const char *line = text; *line;) {
		const char *nl = strchr(line, '\n');
		size_t ll = nl ? (size_t)(nl - line) : strlen(line);
		const char *sp = memchr(line, ' ', ll);
		if (ll) {
			size_t nlen = sp ? (size_t)(sp - line) : ll;
			const char *val = sp ? sp + 1 : "";
			size_t vlen = sp ? ll - nlen - 1 : 0;
			if (json) {
				printf("%s\n    ", firstkv ? "" : ",");
				cli_json_str(stdout, line, nlen);
				printf(": ");
				if (is_json_number(val, vlen))
					fwrite(val, 1, vlen, stdout);
				else
					cli_json_str(stdout, val, vlen);
			} else {
				printf("%s %.*s %.*s\n", node, (int)nlen, line, (int)vlen, val);
			}
			firstkv = 0;
		}
		line += ll + (nl ? 1 : 0);
	}
	if (json)
		printf("%s}", firstkv ? "" : "\n  ");
	*first = 0;
}

/* STAT of one node; an error is one line naming it. Returns 0 or 1 (failed). */
static int stat_one(const struct cli *g, const char *addr, const char *note, int json, int *first)
{
	dnet_client *c;
	if (cli_client_one(g, addr, &c))
		return 1;
	char *text = NULL, node[64];
	int err = dnet_stat(c, &text, node);
	dnet_client_free(c);
	if (err) {
		cli_error("stat: %s: %s%s", addr, dnet_strerror(err), note);
		return 1;
	}
	stat_print(json, first, node, text);
	free(text);
	return 0;
}

static int cmd_stat(const struct cli *g, int argc, char **argv)
{
	int json = 0, all = 0;
	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--json"))
			json = 1;
		else if (!strcmp(argv[i], "--all"))
			all = 1;
		else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage_cmd("stat");
			return 0;
		} else
			return cli_usage_error("stat", "unknown argument %s", argv[i]);
	}
	int failed = 0, first = 1;
	struct dnet_ring_member *m = NULL;
	size_t nm = 0;
	if (all) {
		/* Every node of the ring, as the first remote that answers sees it. */
		dnet_client *c;
		if (cli_client(g, &c))
			return CLI_EXIT_FAIL;
		int err = dnet_ring_members(c, &m, &nm);
		if (err) {
			cli_error("stat --all: cannot fetch the route table: %s (%s)",
				  dnet_strerror(err), cli_node(g, c));
			dnet_client_free(c);
			return CLI_EXIT_FAIL;
		}
		dnet_client_free(c);
	}
	if (json)
		printf("{");
	if (all) {
		for (size_t i = 0; i < nm; i++)
			failed |= stat_one(g, m[i].node,
					   m[i].state == DNET_ROUTE_DOWN ? " (marked down in the ring)"
									  : "",
					   json, &first);
		free(m);
	} else {
		for (int i = 0; i < g->nremotes; i++)
			failed |= stat_one(g, g->remotes[i], "", json, &first);
	}
	if (json)
		printf("%s}\n", first ? "" : "\n");
	return failed ? CLI_EXIT_FAIL : 0;
}

static int cmd_routes(const struct cli *g, int argc, char **argv)
{
	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage_cmd("routes");
			return 0;
		}
		return cli_usage_error("routes", "unknown argument %s", argv[i]);
	}
	dnet_client *c;
	if (cli_client(g, &c))
		return CLI_EXIT_FAIL;
	struct dnet_route *rt = NULL;
	size_t n = 0;
	int err = dnet_routes(c, &rt, &n);
	if (err) {
		cli_error("routes: %s (%s)", dnet_strerror(err), cli_node(g, c));
		dnet_client_free(c);
		return CLI_EXIT_FAIL;
	}
	for (size_t i = 0; i < n; i++) {
		char lo[129], hi[129];
		dnet_id_to_hex(lo, rt[i].start, 64);
		dnet_id_to_hex(hi, rt[i].end, 64);
		printf("%s %s %s%s\n", lo, hi, rt[i].node,
		       rt[i].state == DNET_ROUTE_DOWN ? " down" : "");
	}
	free(rt);
	dnet_client_free(c);
	return 0;
}

static int cmd_leave(const struct cli *g, int argc, char **argv)
{
	const char *member = NULL;
	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage_cmd("leave");
			return 0;
		}
		if (argv[i][0] == '-' || member)
			return cli_usage_error("leave", "unexpected argument %s", argv[i]);
		member = argv[i];
	}
	dnet_client *c;
	if (cli_client(g, &c))
		return CLI_EXIT_FAIL;
	int err = dnet_leave(c, member);
	if (err) {
		if (err == DNET_ENOENT)
			cli_error("leave: %s is not a member of the ring (%s)", member ? member : "?",
				  cli_node(g, c));
		else
			cli_error("leave: %s (%s)", dnet_strerror(err), cli_node(g, c));
		dnet_client_free(c);
		return err == DNET_ENOENT ? CLI_EXIT_NOTFOUND : CLI_EXIT_FAIL;
	}
	dnet_client_free(c);
	return 0;
}

/* A counter from a node's stat text, or -1. */
static long long stat_value(const char *text, const char *name)
{
	size_t n = strlen(name);
	for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
		if (!strncmp(p, name, n) && p[n] == ' ')
			return strtoll(p + n + 1, NULL, 10);
	return -1;
}

static int node_stat(const struct cli *g, const char *node, char **text)
{
	dnet_client *c;
	if (cli_client_one(g, node, &c))
		return DNET_EINVAL;
	char where[64];
	int err = dnet_stat(c, text, where);
	dnet_client_free(c);
	return err;
}

/* recover: every node that is up starts an anti-entropy pass; wait for all. */
static int cmd_recover(const struct cli *g, int argc, char **argv)
{
	int wait = 1;
	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage_cmd("recover");
			return 0;
		}
		if (!strcmp(argv[i], "--no-wait"))
			wait = 0;
		else
			return cli_usage_error("recover", "unexpected argument %s", argv[i]);
	}
	dnet_client *c;
	if (cli_client(g, &c))
		return CLI_EXIT_FAIL;
	struct dnet_ring_member *m = NULL;
	size_t n = 0;
	int err = dnet_ring_members(c, &m, &n);
	dnet_client_free(c);
	if (err) {
		cli_error("recover: cannot get the ring: %s", dnet_strerror(err));
		return CLI_EXIT_FAIL;
	}
	long long *before = calloc(n + 1, sizeof(*before));
	int *done = calloc(n + 1, sizeof(*done));
	int rc = 0, asked = 0;
	for (size_t i = 0; before && done && i < n; i++) {
		char *text = NULL;
		done[i] = 1;
		if (m[i].state != DNET_ROUTE_UP) {
			fprintf(stderr, "elliptics: recover: %s is down: skipped (it is brought up to "
					"date when it comes back)\n", m[i].node);
			continue;
		}
		if (node_stat(g, m[i].node, &text) == 0)
			before[i] = stat_value(text, "recover_passes");
		free(text);
		dnet_client *one;
		if (cli_client_one(g, m[i].node, &one))
			continue;
		err = dnet_recover(one);
		dnet_client_free(one);
		if (err) {
			cli_error("recover: %s: %s", m[i].node,
				  err == DNET_EUNSUPP ? "the ring keeps one copy: nothing to recover"
						      : dnet_strerror(err));
			rc = CLI_EXIT_FAIL;
			continue;
		}
		done[i] = 0;
		asked++;
	}
	uint64_t t0 = dnet_now_mono_ns();
	long long tp = 0, tb = 0;
	while (wait && asked && before && done) {
		int left = 0;
		for (size_t i = 0; i < n; i++) {
			if (done[i])
				continue;
			char *text = NULL;
			if (node_stat(g, m[i].node, &text) != 0) {
				free(text);
				left++;
				continue;
			}
			/* A pass that began after we asked, and has ended. */
			if (stat_value(text, "recover_passes") >= before[i] + 2 ||
			    (stat_value(text, "recover_passes") > before[i] &&
			     stat_value(text, "recover_running") == 0)) {
				done[i] = 1;
				long long p = stat_value(text, "recover_pulled");
				long long b = stat_value(text, "recover_bytes");
				printf("%s passes=%lld pulled=%lld bytes=%lld last_ms=%lld\n",
				       m[i].node, stat_value(text, "recover_passes"), p, b,
				       stat_value(text, "recover_last_ms"));
				tp += p, tb += b;
			} else {
				left++;
			}
			free(text);
		}
		if (!left)
			break;
		if (dnet_now_mono_ns() - t0 > (uint64_t)g->timeout_ms * 1000000ull * 20) {
			cli_error("recover: not finished after %d s; see `elliptics stat` "
				  "(recover_*)", g->timeout_ms / 1000 * 20);
			rc = CLI_EXIT_FAIL;
			break;
		}
		struct timespec ts = {0, 100 * 1000000L};
		nanosleep(&ts, NULL);
	}
	if (wait && asked && !rc)
		printf("total pulled=%lld bytes=%lld in %.3f s\n", tp, tb,
		       (double)(dnet_now_mono_ns() - t0) / 1e9);
	free(before);
	free(done);
	free(m);
	return rc;
}

/* --- main ---------------------------------------------------------------- */

static int cli_main(struct cli *gp, int argc, char **argv)
{
	struct cli g = *gp;
	int i = 1;
	for (; i < argc; i++) {
		const char *s = argv[i];
		const char *val = NULL;
		if (!strcmp(s, "-h") || !strcmp(s, "--help")) {
			usage_main(stdout);
			return 0;
		}
		if (!strcmp(s, "--w") || !strcmp(s, "--r")) {
			if (i + 1 >= argc)
				return cli_usage_error(NULL, "%s needs a value", s);
			char *end;
			long v = strtol(argv[++i], &end, 10);
			if (*end || v < 1 || v > 16)
				return cli_usage_error(NULL, "%s wants a number of copies 1..16, got \"%s\"",
						       s, argv[i]);
			if (s[2] == 'w')
				g.w = (int)v;
			else
				g.r = (int)v;
			continue;
		}
		if (!strncmp(s, "--tls-", 6)) {
			const char **dst = !strcmp(s, "--tls-ca") ? &g.tls_ca
					   : !strcmp(s, "--tls-cert") ? &g.tls_cert
					   : !strcmp(s, "--tls-key") ? &g.tls_key
								  : NULL;
			if (!dst)
				return cli_usage_error(NULL, "unknown option %s", s);
			if (i + 1 >= argc || !argv[i + 1][0])
				return cli_usage_error(NULL, "%s needs a FILE", s);
			*dst = argv[++i];
			continue;
		}
		if (!strcmp(s, "-r") || !strcmp(s, "--remote") || !strcmp(s, "-k") ||
		    !strcmp(s, "--key") || !strcmp(s, "--timeout")) {
			if (i + 1 >= argc)
				return cli_usage_error(NULL, "%s needs a value", s);
			val = argv[++i];
		} else if (!strncmp(s, "--remote=", 9) || !strncmp(s, "--key=", 6) ||
			   !strncmp(s, "--timeout=", 10)) {
			val = strchr(s, '=') + 1;
		} else if (s[0] == '-' && s[1] == 'r' && s[2]) {
			val = s + 2;
		} else if (s[0] == '-' && s[1]) {
			return cli_usage_error(NULL, "unknown option %s", s);
		} else {
			break;
		}
		if (s[1] == 'r' || !strncmp(s, "--remote", 8)) {
			g.remotes[g.nremotes++] = val;
		} else if (s[1] == 'k' || !strncmp(s, "--key", 5)) {
			if (!strchr(val, ':'))
				return cli_usage_error(NULL, "-k wants NAME:SECRET");
			g.auth = val;
		} else {
			char *end;
			double t = strtod(val, &end);
			if (*end || !(t > 0) || t > 86400 * 365)
				return cli_usage_error(NULL, "--timeout wants seconds > 0, got \"%s\"",
						       val);
			g.timeout_ms = t * 1000 < 1 ? 1 : (int)(t * 1000);
		}
	}
	if (!g.nremotes) {
		const char *env = getenv("ELLIPTICS_REMOTE");
		g.remotes[g.nremotes++] = env && *env ? env : DNET_DEFAULT_REMOTE;
	}
	if (!g.auth) {
		const char *env = getenv("ELLIPTICS_KEY");
		if (env && *env)
			g.auth = env;
	}
	const char *tenv;
	if (!g.tls_ca && (tenv = getenv("ELLIPTICS_TLS_CA")) && *tenv)
		g.tls_ca = tenv;
	if (!g.tls_cert && (tenv = getenv("ELLIPTICS_TLS_CERT")) && *tenv)
		g.tls_cert = tenv;
	if (!g.tls_key && (tenv = getenv("ELLIPTICS_TLS_KEY")) && *tenv)
		g.tls_key = tenv;
	if ((g.tls_cert || g.tls_key) && !g.tls_ca)
		return cli_usage_error(NULL, "--tls-cert/--tls-key need --tls-ca (the CA the nodes' certificates come from)");
	if (!g.tls_cert != !g.tls_key)
		return cli_usage_error(NULL, "--tls-cert and --tls-key go together");
	if (i >= argc) {
		usage_main(stderr);
		return CLI_EXIT_USAGE;
	}
	const char *cmd = argv[i++];
	int cargc = argc - i;
	char **cargv = argv + i;
	int rc;
	if (!strcmp(cmd, "put"))
		rc = cmd_put(&g, cargc, cargv);
	else if (!strcmp(cmd, "get"))
		rc = cmd_get(&g, cargc, cargv);
	else if (!strcmp(cmd, "del") || !strcmp(cmd, "rm") || !strcmp(cmd, "delete"))
		rc = cmd_del(&g, cargc, cargv);
	else if (!strcmp(cmd, "lookup"))
		rc = cmd_lookup(&g, cargc, cargv);
	else if (!strcmp(cmd, "stat"))
		rc = cmd_stat(&g, cargc, cargv);
	else if (!strcmp(cmd, "routes"))
		rc = cmd_routes(&g, cargc, cargv);
	else if (!strcmp(cmd, "leave"))
		rc = cmd_leave(&g, cargc, cargv);
	else if (!strcmp(cmd, "recover"))
		rc = cmd_recover(&g, cargc, cargv);
	else if (!strcmp(cmd, "check"))
		rc = cmd_check(&g, cargc, cargv);
	else if (!strcmp(cmd, "bench"))
		rc = cmd_bench(&g, cargc, cargv);
	else if (!strcmp(cmd, "help")) {
		if (cargc)
			usage_cmd(cargv[0]);
		else
			usage_main(stdout);
		rc = 0;
	} else
		rc = cli_usage_error(NULL, "unknown command \"%s\"", cmd);
	if (fflush(stdout) != 0 && !rc) {
		cli_error("writing standard output: %s", strerror(errno));
		rc = CLI_EXIT_FAIL;
	}
	return rc;
}

int main(int argc, char **argv)
{
	struct cli g = {.timeout_ms = 30000};
	/* Every early return (help, usage errors) goes through here, so the remote list
	 * is always freed. */
	const char **remotes = calloc((size_t)argc + 1, sizeof(*remotes));
	if (!remotes)
		return CLI_EXIT_FAIL;
	g.remotes = remotes;
	signal(SIGPIPE, SIG_IGN);
	int rc = cli_main(&g, argc, argv);
	free(remotes);
	return rc;
}
