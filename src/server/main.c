/* main.c - ellipticsd: parse options, start the node, stop it in order on
 * SIGTERM/SIGINT; or run an offline action (--check, --compact, --export,
 * --import) on a data directory no daemon is using, and exit. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/errors.h"
#include "common/log.h"
#include "server.h"
#include "storage/blob.h"
#include "storage/fault.h"
#include "storage/tools.h"

/* Exit codes of the offline actions: 0 done, 1 corrupt objects found, 3 failure. */
static int offline_compact(const struct dnet_backend_ops *ops, struct dnet_backend *b)
{
	if (strcmp(ops->name, "blob") != 0) {
		printf("the %s engine has no compaction: nothing to do%s\n", ops->name,
		       strcmp(ops->name, "lmdb") == 0
			   ? " (LMDB reuses freed pages; `mdb_copy -c` shrinks data.mdb offline)"
		       : strcmp(ops->name, "file") == 0 ? " (a deleted object's file is removed at once)"
							 : "");
		return 0;
	}
	struct dnet_blob_stats before, after;
	int err = dnet_blob_stats(b, &before);
	if (!err && !before.dead_bytes) {
		printf("nothing to compact: no dead records (%llu objects, %llu bytes on disk)\n",
		       (unsigned long long)before.objects, (unsigned long long)before.disk_bytes);
		return 0;
	}
	if (!err)
		err = dnet_blob_rotate(b); /* seal the active blob: it becomes compactable */
	int n = err ? err : dnet_blob_compact(b, 1e-9); /* any blob with dead records */
	if (n < 0 || (err = dnet_blob_stats(b, &after))) {
		fprintf(stderr, "ellipticsd: compaction failed: %s\n", dnet_strerror(n < 0 ? n : err));
		return 3;
	}
	printf("compacted %d blobs: %llu -> %llu bytes on disk (dead %llu -> %llu), %llu objects\n", n,
	       (unsigned long long)before.disk_bytes, (unsigned long long)after.disk_bytes,
	       (unsigned long long)before.dead_bytes, (unsigned long long)after.dead_bytes,
	       (unsigned long long)after.objects);
	return 0;
}

static int offline_check(const struct dnet_backend_ops *ops, struct dnet_backend *b)
{
	struct dnet_backend_stat st0, st1;
	struct dnet_tool_result r;
	int err = ops->stat(b, &st0);
	if (!err)
		err = dnet_tool_check(ops, b, stdout, &r);
	if (!err)
		err = ops->stat(b, &st1);
	if (err) {
		fprintf(stderr, "ellipticsd: check failed: %s\n", dnet_strerror(err));
		return 3;
	}
	/* corrupt objects an engine cannot even list (e.g. a file engine object whose
	 * header is damaged) are counted by it while listing; the log names them */
	uint64_t seen = st1.corrupt - st0.corrupt, unlisted = seen > r.bad ? seen - r.bad : 0;
	if (unlisted)
		printf("corrupt: %llu more objects could not be listed (named in the log above)\n",
		       (unsigned long long)unlisted);
	printf("checked %llu objects, %llu bytes: %llu ok, %llu corrupt\n",
	       (unsigned long long)(r.objects + r.bad), (unsigned long long)r.bytes,
	       (unsigned long long)r.objects, (unsigned long long)(r.bad + unlisted));
	if (st0.corrupt)
		printf("note: %llu damaged or torn records were skipped when the engine opened "
		       "(a torn record is an unacknowledged write cut by a crash; see the log)\n",
		       (unsigned long long)st0.corrupt);
	return r.bad + unlisted ? 1 : 0;
}

static int offline_export(const struct dnet_backend_ops *ops, struct dnet_backend *b,
			  const char *path)
{
	int to_stdout = strcmp(path, "-") == 0;
	int fd = to_stdout ? STDOUT_FILENO
			   : open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		fprintf(stderr, "ellipticsd: cannot create %s: %s\n", path, strerror(errno));
		return 3;
	}
	struct dnet_tool_result r;
	int err = dnet_tool_export(ops, b, fd, stderr, &r);
	if (!err && !to_stdout && fsync(fd) < 0)
		err = dnet_from_errno(errno);
	if (!to_stdout) {
		close(fd);
		if (err)
			unlink(path); /* no half streams left behind */
	}
	if (err) {
		fprintf(stderr, "ellipticsd: export failed: %s\n", dnet_strerror(err));
		return 3;
	}
	fprintf(stderr, "exported %llu objects, %llu bytes%s\n", (unsigned long long)r.objects,
		(unsigned long long)r.bytes, r.bad ? "; corrupt objects left out (named above)" : "");
	return r.bad ? 1 : 0;
}

static int offline_import(const struct dnet_backend_ops *ops, struct dnet_backend *b,
			  const char *path)
{
	int from_stdin = strcmp(path, "-") == 0;
	int fd = from_stdin ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "ellipticsd: cannot open %s: %s\n", path, strerror(errno));
		return 3;
	}
	struct dnet_tool_result r;
	struct stat sb;
	int err = 0;
	/* A file is verified whole first, so a corrupt one imports nothing; a pipe is
	 * verified object by object (nothing unverified is ever stored). */
	if (fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode)) {
		err = dnet_tool_import(ops, b, fd, 1, stderr, &r);
		if (!err && lseek(fd, 0, SEEK_SET) != 0)
			err = dnet_from_errno(errno);
	}
	if (!err)
		err = dnet_tool_import(ops, b, fd, 0, stderr, &r);
	if (!err)
		err = ops->sync(b);
	if (!from_stdin)
		close(fd);
	if (err) {
		fprintf(stderr, "ellipticsd: import failed: %s\n", dnet_strerror(err));
		return 3;
	}
	fprintf(stderr, "imported %llu objects, %llu bytes\n", (unsigned long long)r.objects,
		(unsigned long long)r.bytes);
	return 0;
}

static int offline(const struct dnet_config *cfg)
{
	const struct dnet_backend_ops *ops = dnet_backend_find(cfg->backend);
	char path[8192];
	struct stat sb;
	if (!ops)
		return 2;
	if (cfg->offline == DNET_OFFLINE_IMPORT && mkdir(cfg->data, 0755) != 0 && errno != EEXIST) {
		fprintf(stderr, "ellipticsd: cannot create %s: %s\n", cfg->data, strerror(errno));
		return 3;
	}
	if (stat(cfg->data, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
		fprintf(stderr, "ellipticsd: %s: no such data directory\n", cfg->data);
		return 3;
	}
	/* the daemon's lock: refuse a directory a running ellipticsd uses */
	snprintf(path, sizeof(path), "%s/lock", cfg->data);
	int lock = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (lock < 0) {
		fprintf(stderr, "ellipticsd: cannot open %s: %s\n", path, strerror(errno));
		return 3;
	}
	if (flock(lock, LOCK_EX | LOCK_NB) != 0) {
		fprintf(stderr, "ellipticsd: data directory %s is in use by a running ellipticsd; "
				"stop it first\n", cfg->data);
		close(lock);
		return 3;
	}
	snprintf(path, sizeof(path), "%s/%s", cfg->data, ops->name);
	if (cfg->offline != DNET_OFFLINE_IMPORT && stat(path, &sb) != 0) {
		fprintf(stderr, "ellipticsd: %s holds no %s engine data (%s missing; wrong --backend?)\n",
			cfg->data, ops->name, path);
		close(lock);
		return 3;
	}
	struct dnet_backend_config bcfg;
	dnet_backend_config_defaults(&bcfg);
	bcfg.path = path;
	bcfg.fsync = cfg->fsync;
	struct dnet_backend *b;
	int err = ops->open(&bcfg, &b);
	if (err) {
		fprintf(stderr, "ellipticsd: cannot open the %s engine in %s: %s\n", ops->name, path,
			dnet_strerror(err));
		close(lock);
		return 3;
	}
	int rc;
	switch (cfg->offline) {
	case DNET_OFFLINE_CHECK:
		rc = offline_check(ops, b);
		break;
	case DNET_OFFLINE_COMPACT:
		rc = offline_compact(ops, b);
		break;
	case DNET_OFFLINE_EXPORT:
		rc = offline_export(ops, b, cfg->offline_arg);
		break;
	default:
		rc = offline_import(ops, b, cfg->offline_arg);
		break;
	}
	fflush(stdout);
	ops->close(b);
	close(lock);
	return rc;
}

/* Every connection is a descriptor, and so is every open blob, log, peer link and
 * large read in flight: raise the soft limit to fit --max-conns plus that
 * headroom (as far as the hard limit allows; root may raise the hard one too),
 * and say so if it still falls short - otherwise accept() fails at random later. */
static void raise_fd_limit(const struct dnet_config *cfg)
{
	const rlim_t headroom = 1024;
	rlim_t want = (rlim_t)cfg->max_conns + headroom;
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want)
		return;
	struct rlimit nrl = {want, rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want ? rl.rlim_max : want};
	if (setrlimit(RLIMIT_NOFILE, &nrl) != 0) {
		nrl.rlim_cur = rl.rlim_max;
		nrl.rlim_max = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &nrl) != 0)
			nrl.rlim_cur = rl.rlim_cur;
	}
	if (nrl.rlim_cur < want)
		dnet_log_warn("open files limit is %llu: fewer than --max-conns %d + %llu; raise it "
			      "(ulimit -n, LimitNOFILE=) or lower --max-conns",
			      (unsigned long long)nrl.rlim_cur, cfg->max_conns,
			      (unsigned long long)headroom);
}

int main(int argc, char **argv)
{
	static struct dnet_server srv;
	struct dnet_server *s = &srv;
	dnet_srv = s;

	dnet_config_defaults(&s->cfg);
	int rc = dnet_config_parse(&s->cfg, argc, argv);
	if (rc == 1)
		return 0;
	if (rc)
		return 2;
	dnet_log_level = s->cfg.log_level;
	/* ELLIPTICS_FAULT: fault injection for crash-safety tests (storage/fault.h),
	 * checked now, armed once the node serves (so calls count from the first
	 * request, not from the engine's open). Offline actions ignore it. */
	struct dnet_fault_plan fault;
	const char *fault_spec = getenv("ELLIPTICS_FAULT");
	char fault_err[256];
	if (fault_spec && *fault_spec &&
	    dnet_fault_parse(fault_spec, &fault, fault_err, sizeof(fault_err)) != 0) {
		fprintf(stderr, "ellipticsd: ELLIPTICS_FAULT=%s: %s\n", fault_spec, fault_err);
		return 2;
	}
	if (s->cfg.offline)
		return offline(&s->cfg);

	/* Signals are taken synchronously by main via sigwait; every thread created
	 * from here on inherits the mask. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	raise_fd_limit(&s->cfg);

	rc = dnet_server_start(s);
	if (rc)
		return rc;
	if (fault_spec && *fault_spec) {
		dnet_fault_arm(&fault);
		dnet_log_warn("fault injection armed (ELLIPTICS_FAULT=%s)", fault_spec);
	}

	int sig = 0;
	for (;;) {
		if (sigwait(&set, &sig) != 0)
			continue;
		if (sig == SIGHUP) {
			dnet_auth_reload(s);
			continue;
		}
		break;
	}
	dnet_log_info("%s received: stopping (no new requests; finishing queued ones)",
		      sig == SIGINT ? "SIGINT" : "SIGTERM");
	dnet_server_stop(s);
	dnet_log_info("stopped");
	return 0;
}
