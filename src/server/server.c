/* server.c - bring a node up and down: data directory lock, node ID, storage
 * engine, IO pool, network loops; used by main() and by in-process tests/fuzzers. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/errors.h"
#include "common/id.h"
#include "common/log.h"
#include "common/util.h"
#include "http/http.h"
#include "server.h"

/* Load DATA/node_id, or create it (random, written atomically). */
static int node_id_load(const char *dir, uint8_t id[DNET_ID_SIZE])
{
	char path[8192], tmp[8200], hex[2 * DNET_ID_SIZE + 2];
	snprintf(path, sizeof(path), "%s/node_id", dir);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		ssize_t n = read(fd, hex, sizeof(hex) - 1);
		close(fd);
		if (n < 2 * DNET_ID_SIZE) {
			dnet_log_error("%s: truncated node ID file", path);
			return -1;
		}
		hex[2 * DNET_ID_SIZE] = '\0';
		if (dnet_id_from_hex(id, hex) != 0) {
			dnet_log_error("%s: not a 128-hex-digit node ID", path);
			return -1;
		}
		return 0;
	}
	if (errno != ENOENT) {
		dnet_log_error("cannot read %s: %s", path, strerror(errno));
		return -1;
	}
	if (getrandom(id, DNET_ID_SIZE, 0) != DNET_ID_SIZE) {
		dnet_log_error("getrandom: %s", strerror(errno));
		return -1;
	}
	dnet_id_to_hex(hex, id, DNET_ID_SIZE);
	hex[2 * DNET_ID_SIZE] = '\n';
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || dnet_write_full(fd, hex, 2 * DNET_ID_SIZE + 1) != 0 || fsync(fd) != 0 ||
	    rename(tmp, path) != 0) {
		dnet_log_error("cannot write %s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	close(fd);
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) {
		fsync(dfd);
		close(dfd);
	}
	dnet_log_info("created node ID %.16s... in %s", hex, path);
	return 0;
}

/* One daemon per data directory: a second one would corrupt the first's state. */
static int lock_data_dir(const char *dir)
{
	char path[8192];
	snprintf(path, sizeof(path), "%s/lock", dir);
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0) {
		dnet_log_error("cannot open %s: %s", path, strerror(errno));
		return -1;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
		dnet_log_error("data directory %s is in use by another ellipticsd", dir);
		close(fd);
		return -1;
	}
	return fd; /* held until exit */
}

int dnet_server_start(struct dnet_server *s)
{
	dnet_srv = s;
	s->start_ns = dnet_now_mono_ns();
	/* Writer first: the stop is not held off by loops verifying back to back
	 * (nothing takes the read lock twice). */
	pthread_rwlockattr_t ra;
	pthread_rwlockattr_init(&ra);
	pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&s->verify_lock, &ra);
	pthread_rwlockattr_destroy(&ra);
	s->listen_fd = -1;
	s->lock_fd = -1;
	if (mkdir(s->cfg.data, 0755) != 0 && errno != EEXIST) {
		dnet_log_error("cannot create data directory %s: %s", s->cfg.data, strerror(errno));
		return 3;
	}
	s->lock_fd = lock_data_dir(s->cfg.data);
	if (s->lock_fd < 0)
		return 3;
	if (node_id_load(s->cfg.data, s->node_id) != 0)
		goto out_unlock;
	if (dnet_net_tls_setup(s) != 0)
		goto out_unlock;

	s->bops = dnet_backend_find(s->cfg.backend);
	if (!s->bops) {
		dnet_log_error("unknown backend %s", s->cfg.backend);
		goto out_unlock;
	}
	char bpath[8192];
	snprintf(bpath, sizeof(bpath), "%s/%s", s->cfg.data, s->bops->name);
	struct dnet_backend_config bcfg;
	dnet_backend_config_defaults(&bcfg);
	bcfg.path = bpath;
	bcfg.fsync = s->cfg.fsync;
	bcfg.batch_max_delay_us = s->cfg.batch_delay_us;
	bcfg.verified_cache = s->cfg.verified_cache;
	int err = s->bops->open(&bcfg, &s->backend);
	if (err) {
		dnet_log_error("cannot open %s backend in %s: %s", s->bops->name, bpath,
			       dnet_strerror(err));
		goto out_unlock;
	}
	if (dnet_auth_start(s) != 0)
		goto out_close_backend;
	dnet_member_init(s);
	if (dnet_pool_start(&s->pool, s->cfg.io_threads, dnet_dispatch, dnet_dispatch_flush, s, &s->stats.queued) != 0) {
		dnet_log_error("cannot start the IO pool");
		goto out_close_backend;
	}
	/* Listen first (our address is part of our ring entry), put ourselves in the
	 * ring, and only then serve: a ROUTES asked the moment the port opens must
	 * already see this node. */
	if (dnet_net_listen(s) != 0)
		goto out_stop_pool;
	/* Bind the HTTP port now too, so a busy one stops the start before anything
	 * runs; it serves once the node does. */
	if (dnet_http_listen(s) != 0) {
		close(s->listen_fd);
		goto out_stop_pool;
	}
	if (dnet_member_start(s) != 0 || dnet_mover_start(s) != 0 || dnet_recover_start(s) != 0 ||
	    dnet_net_start(s) != 0 || dnet_http_start(s) != 0) {
		dnet_http_stop(s);
		dnet_recover_stop(s);
		dnet_mover_stop(s);
		dnet_member_stop(s);
		if (s->loops)
			dnet_net_stop(s, 0);
		else
			close(s->listen_fd);
		dnet_mover_free(s);
		dnet_member_free(s);
		goto out_stop_pool;
	}
	dnet_log_info("ellipticsd ready: data %s, backend %s, fsync %s, %d IO threads, %d net threads",
		      s->cfg.data, s->bops->name, dnet_fsync_policy_name(s->cfg.fsync),
		      s->cfg.io_threads, s->cfg.net_threads);
	return 0;

out_stop_pool:
	dnet_pool_stop(s->pool);
out_close_backend:
	s->bops->close(s->backend);
out_unlock:
	dnet_net_tls_free(s);
	close(s->lock_fd);
	s->lock_fd = -1;
	return 3;
}

void dnet_server_stop(struct dnet_server *s)
{
	/* Order matters: stop reading, finish what is queued, let the engine complete
	 * its pending (group commit) writes, flush replies, close. An object is only
	 * ever renamed into place whole, so nothing half-written can be left behind. */
	atomic_store(&s->stopping, 1);
	dnet_http_stop(s); /* first: it reads the ring and the stats of everything below */
	dnet_recover_stop(s);
	dnet_mover_stop(s);
	dnet_member_stop(s);
	dnet_net_stop_reading(s);
	dnet_pool_stop(s->pool);
	dnet_net_verify_close(s); /* replies still to verify against it are cut off */
	s->bops->close(s->backend);
	dnet_net_stop(s, 5000);
	dnet_mover_free(s);
	dnet_member_free(s);
	dnet_auth_stop();
	dnet_net_tls_free(s);
	close(s->lock_fd);
	s->lock_fd = -1;
}
