/* fuzz_config.c - ellipticsd's option parsers on hostile text:
 *   input[0] % 3 == 0: the command line: the rest split at NUL bytes into argv for
 *                      dnet_config_parse() (an argument "c.conf" names a scratch
 *                      file holding the same bytes);
 *   input[0] % 3 == 1: a --config file with those bytes (nested config lines too);
 *   input[0] % 3 == 2: a --keys file and a --cluster-key file (split at the first
 *                      NUL), loaded as ellipticsd does at start and on SIGHUP.
 * Checks: every string option stays NUL-terminated within its buffer, integers
 * within their ranges; a keys file either loads or is refused, never half.
 *
 * libFuzzer: make fuzz && build/fuzz/fuzz_config tests/fuzz/corpus/config
 * standalone: build/tests/fuzz_config -n 20000 tests/fuzz/corpus/config */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/auth.h"
#include "common/log.h"
#include "server/server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[64], conf[128], keys[128], ckey[128];

static void fail(const char *what)
{
	dprintf(2, "fuzz_config: contract broken: %s\n", what); /* stderr is /dev/null */
	abort();
}

/* The scratch directory goes when the run ends (it was left behind, one per run). */
static void remove_scratch(void)
{
	unlink(conf);
	unlink(keys);
	unlink(ckey);
	rmdir(dir);
}

static void init_once(void)
{
	if (dir[0])
		return;
	dnet_log_level = -1;
	snprintf(dir, sizeof(dir), "/tmp/elliptics-fuzz-config.XXXXXX");
	if (!mkdtemp(dir))
		abort();
	atexit(remove_scratch);
	snprintf(conf, sizeof(conf), "%s/c.conf", dir);
	snprintf(keys, sizeof(keys), "%s/keys", dir);
	snprintf(ckey, sizeof(ckey), "%s/cluster", dir);
	/* the parsers print usage errors with fprintf(stderr): silence those (the
	 * sanitizers and libFuzzer write to fd 2 directly) */
	FILE *null = fopen("/dev/null", "w");
	if (!null)
		abort();
	stderr = null;
	stdout = null;
}

static void write_file(const char *path, const uint8_t *p, size_t len)
{
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(p, 1, len, f) != len)
		abort();
	fclose(f);
	chmod(path, 0600);
}

#define STRS(X) X(listen) X(data) X(backend) X(advertise) X(zone) X(http) X(keys) X(cluster_key)

static void check_cfg(const struct dnet_config *c)
{
#define CHECK_STR(f)                                                                               \
	if (!memchr(c->f, 0, sizeof(c->f)))                                                        \
		fail(#f " not terminated");
	STRS(CHECK_STR)
	if (!memchr(c->offline_arg, 0, sizeof(c->offline_arg)))
		fail("offline_arg not terminated");
	if (c->io_threads < 1 || c->io_threads > 1024 || c->net_threads < 1 || c->net_threads > 64)
		fail("thread counts out of range");
	if (c->ids < 1 || c->ids > DNET_RING_MAX_IDS || c->copies < 1 ||
	    c->copies > DNET_MAX_COPIES)
		fail("ids or copies out of range");
	if (c->max_payload < 4096 || c->max_payload > DNET_HARD_MAX_PAYLOAD)
		fail("max-payload out of range");
	if (c->njoins < 0 || c->njoins > (int)(sizeof(c->joins) / sizeof(c->joins[0])))
		fail("join count out of range");
}

static void run_argv(const uint8_t *d, size_t size)
{
	char *buf = malloc(size + 1);
	if (!buf)
		abort();
	memcpy(buf, d, size);
	buf[size] = '\0';
	char *argv[65];
	int argc = 0;
	argv[argc++] = "ellipticsd";
	for (char *p = buf; argc < 64 && p <= buf + size; p += strlen(p) + 1)
		argv[argc++] = strcmp(p, "c.conf") ? p : conf; /* the file written below */
	argv[argc] = NULL;
	write_file(conf, d, size);
	struct dnet_config cfg;
	dnet_config_defaults(&cfg);
	if (dnet_config_parse(&cfg, argc, argv) == 0)
		check_cfg(&cfg);
	free(buf);
}

static void run_config_file(const uint8_t *d, size_t size)
{
	write_file(conf, d, size);
	char *argv[] = {"ellipticsd", "--config", conf, NULL};
	struct dnet_config cfg;
	dnet_config_defaults(&cfg);
	if (dnet_config_parse(&cfg, 3, argv) == 0)
		check_cfg(&cfg);
}

static void run_keys(const uint8_t *d, size_t size)
{
	const uint8_t *nul = memchr(d, 0, size);
	size_t kl = nul ? (size_t)(nul - d) : size;
	write_file(keys, d, kl);
	if (nul)
		write_file(ckey, nul + 1, size - kl - 1);
	static struct dnet_server srv;
	dnet_config_defaults(&srv.cfg);
	snprintf(srv.cfg.keys, sizeof(srv.cfg.keys), "%s", keys);
	if (nul)
		snprintf(srv.cfg.cluster_key, sizeof(srv.cfg.cluster_key), "%s", ckey);
	else
		srv.cfg.cluster_key[0] = '\0';
	if (dnet_auth_start(&srv) == 0) {
		if (dnet_auth_initial_perm() != DNET_PERM_NONE)
			fail("keys loaded, yet clients need none");
		dnet_auth_reload(&srv); /* SIGHUP: the same files again */
		dnet_auth_stop();
	}
	unlink(ckey);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	init_once();
	if (size < 1)
		return 0;
	switch (data[0] % 3) {
	case 0:
		run_argv(data + 1, size - 1);
		break;
	case 1:
		run_config_file(data + 1, size - 1);
		break;
	default:
		run_keys(data + 1, size - 1);
		break;
	}
	return 0;
}

#ifdef DNET_FUZZ_STANDALONE
#include "fuzz_main.h"

static void seed(const char *dir_, const char *name, int mode, const char *text, size_t len)
{
	FILE *f = fz_seed_open(dir_, "%s", name);
	fputc(mode, f);
	fwrite(text, 1, len, f);
	fclose(f);
}
#define SEED(name, mode, lit) seed(out, name, mode, lit, sizeof(lit) - 1)

static void fz_make_seeds(const char *out)
{
	SEED("argv-basic", 0,
	     "--listen\0"
	     "127.0.0.1:1025\0--data\0d\0--backend\0blob\0--fsync\0batch");
	SEED("argv-eq", 0,
	     "--data=d\0--io-threads=8\0--max-payload=1M\0--join=10.0.0.1:1025\0"
	     "--join\0[::1]:1026\0--copies\0"
	     "3\0--zone\0a\0--log-level=debug");
	SEED("argv-config", 0, "--data\0d\0--config\0c.conf");
	SEED("argv-offline", 0, "--data\0d\0--export\0-\0--backend\0file");
	SEED("argv-help", 0, "-h");
	SEED("config-all", 1,
	     "# a config file\nlisten = 0.0.0.0:1025\ndata=/var/lib/elliptics\nbackend lmdb\n"
	     "fsync = always\nio-threads = 16\nnet-threads = 2\nmax-payload = 64M\n"
	     "max-conns = 100\nbatch-delay-us = 100\nlog-level = warn\nids = 128\n"
	     "advertise = 10.1.1.1:1025\nheartbeat-ms = 500\nhandoff-s = 60\nmove-rate = 0\n"
	     "fail-after-ms = 2000\nidle-timeout-s = 0\nrequest-timeout-s = 5\n"
	     "send-timeout-s = 9\ncopies = 2\nrecover-interval-s = 30\n"
	     "tombstone-grace-s = 10\nzone = rack1\nhttp = 127.0.0.1:8080\nkeys = k\n"
	     "cluster-key = c\njoin = 10.0.0.2:1025 # trailing comment\n");
	SEED("config-nested", 1, "data = d\nconfig = c.conf\n");
	SEED("config-bad", 1, "unknown = 1\n");
	SEED("keys-good", 2,
	     "# name secret perm\nalice s3cret read\nbob  t0ps3cret write\n"
	     "root rootpw admin # comment\n\0the-cluster-key-of-this-ring-0123\n");
	SEED("keys-bad", 2, "alice s3cret read extra\n@cluster x admin\n");
	SEED("keys-dup", 2, "a b read\na c write\n");
	/* regression: a --config, --keys or --cluster-key naming a device that never
	 * ends (/dev/zero) made the loaders loop forever */
	SEED("regress-devzero-config", 1, "config = /dev/zero\n");
	SEED("regress-devzero-argv", 0, "--data\0d\0--config\0/dev/zero");
}

int main(int argc, char **argv)
{
	return fz_main("fuzz_config", argc, argv);
}
#endif
