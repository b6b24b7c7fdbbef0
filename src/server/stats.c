/* stats.c - the node's counters: request accounting (lock-free) and their
 * "name value" text lines (STAT command). /metrics (src/http/metrics.c) shows the
 * same counters in the Prometheus format. */
#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/errors.h"
#include "common/id.h"
#include "common/util.h"
#include "server.h"

const uint64_t dnet_lat_bucket_us[DNET_LAT_BUCKETS] = {
	50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
	1000000, 2500000, 10000000};

unsigned dnet_stats_status_slot(int status)
{
	if (status <= 0 && status > -(DNET_STATUS_SLOTS - 1))
		return (unsigned)-status;
	return DNET_STATUS_SLOTS - 1;
}

static char status_labels[DNET_STATUS_SLOTS][16];
static pthread_once_t status_labels_once = PTHREAD_ONCE_INIT;

static void status_labels_init(void)
{
	for (int i = 0; i < DNET_STATUS_SLOTS; i++) {
		const char *n = i == DNET_STATUS_SLOTS - 1 ? "other" : i ? dnet_errname(-i) : "ok";
		size_t k = 0;
		for (; n[k] && k < sizeof(status_labels[i]) - 1; k++)
			status_labels[i][k] = (char)tolower((unsigned char)n[k]);
		status_labels[i][k] = '\0';
	}
}

const char *dnet_stats_status_label(unsigned slot)
{
	pthread_once(&status_labels_once, status_labels_init);
	return status_labels[slot < DNET_STATUS_SLOTS ? slot : DNET_STATUS_SLOTS - 1];
}

void dnet_stats_request(struct dnet_stats *st, unsigned cmd, int status, uint64_t lat_ns)
{
	if (cmd >= DNET_CMD_MAX_)
		cmd = 0;
	atomic_fetch_add_explicit(&st->cmds[cmd], 1, memory_order_relaxed);
	if (status < 0 && status != DNET_ENOENT)
		atomic_fetch_add_explicit(&st->errors[cmd], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&st->lat_ns[cmd], lat_ns, memory_order_relaxed);
	atomic_fetch_add_explicit(&st->status[cmd][dnet_stats_status_slot(status)], 1,
				  memory_order_relaxed);
	uint64_t us = lat_ns / 1000;
	unsigned b = 0;
	while (b < DNET_LAT_BUCKETS && us > dnet_lat_bucket_us[b])
		b++;
	atomic_fetch_add_explicit(&st->lat_hist[cmd][b], 1, memory_order_relaxed);
}

char *dnet_stats_text(struct dnet_server *s, size_t *len)
{
	struct dnet_hbuf b;
	dnet_hbuf_init(&b, 4096);
	struct dnet_stats *st = &s->stats;
	char hex[2 * DNET_ID_SIZE + 1];

	dnet_id_to_hex(hex, s->node_id, DNET_ID_SIZE);
	dnet_hbuf_add(&b, "node_id %s\n", hex);
	dnet_hbuf_add(&b, "listen %s\n", s->listen_str);
	dnet_hbuf_add(&b, "uptime_s %.3f\n", (double)(dnet_now_mono_ns() - s->start_ns) / 1e9);
	dnet_hbuf_add(&b, "backend %s\n", s->bops->name);
	dnet_hbuf_add(&b, "fsync %s\n", dnet_fsync_policy_name(s->cfg.fsync));
	dnet_hbuf_add(&b, "io_threads %d\n", s->cfg.io_threads);
	dnet_hbuf_add(&b, "net_threads %d\n", s->cfg.net_threads);
	dnet_hbuf_add(&b, "conns_current %llu\n", (unsigned long long)atomic_load(&st->conns_cur));
	dnet_hbuf_add(&b, "conns_total %llu\n", (unsigned long long)atomic_load(&st->conns_total));
	dnet_hbuf_add(&b, "conns_rejected %llu\n", (unsigned long long)atomic_load(&st->conns_rejected));
	dnet_hbuf_add(&b, "conns_idle_closed %llu\n", (unsigned long long)atomic_load(&st->conns_idle_closed));
	dnet_hbuf_add(&b, "conns_slow_closed %llu\n", (unsigned long long)atomic_load(&st->conns_slow_closed));
	dnet_hbuf_add(&b, "req_mem %llu\n", (unsigned long long)atomic_load(&st->req_mem));
	dnet_hbuf_add(&b, "req_mem_pauses %llu\n",
		      (unsigned long long)atomic_load(&st->req_mem_pauses));
	dnet_hbuf_add(&b, "conns_stalled_closed %llu\n",
	    (unsigned long long)atomic_load(&st->conns_stalled_closed));
	dnet_hbuf_add(&b, "auth_ok %llu\n", (unsigned long long)atomic_load(&st->auth_ok));
	dnet_hbuf_add(&b, "auth_failed %llu\n", (unsigned long long)atomic_load(&st->auth_failed));
	dnet_hbuf_add(&b, "auth_denied %llu\n", (unsigned long long)atomic_load(&st->auth_denied));
	dnet_hbuf_add(&b, "proto_errors %llu\n", (unsigned long long)atomic_load(&st->proto_errors));
	dnet_hbuf_add(&b, "tls_handshakes %llu\n",
		      (unsigned long long)atomic_load(&st->tls_handshakes));
	dnet_hbuf_add(&b, "tls_failed %llu\n", (unsigned long long)atomic_load(&st->tls_failed));
	dnet_hbuf_add(&b, "redirects %llu\n", (unsigned long long)atomic_load(&st->redirects));
	dnet_hbuf_add(&b, "handoff_redirects %llu\n", (unsigned long long)atomic_load(&st->handoff_redirects));
	dnet_hbuf_add(&b, "joining_refused %llu\n", (unsigned long long)atomic_load(&st->joining_refused));
	dnet_hbuf_add(&b, "bytes_in %llu\n", (unsigned long long)atomic_load(&st->bytes_in));
	dnet_hbuf_add(&b, "bytes_out %llu\n", (unsigned long long)atomic_load(&st->bytes_out));
	dnet_hbuf_add(&b, "io_queue_depth %llu\n", (unsigned long long)atomic_load(&st->queued));
	dnet_hbuf_add(&b, "io_busy_s %.3f\n", (double)atomic_load(&st->busy_ns) / 1e9);
	uint64_t req_total = 0;
	for (int c = 0; c < DNET_CMD_MAX_; c++)
		req_total += atomic_load(&st->cmds[c]);
	dnet_hbuf_add(&b, "requests_total %llu\n", (unsigned long long)req_total);
	for (int c = 1; c < DNET_CMD_MAX_; c++) {
		uint64_t n = atomic_load(&st->cmds[c]);
		dnet_hbuf_add(&b, "cmd_%s %llu\n", dnet_cmd_name(c), (unsigned long long)n);
		dnet_hbuf_add(&b, "cmd_%s_errors %llu\n", dnet_cmd_name(c),
		    (unsigned long long)atomic_load(&st->errors[c]));
		dnet_hbuf_add(&b, "cmd_%s_avg_us %.1f\n", dnet_cmd_name(c),
		    n ? (double)atomic_load(&st->lat_ns[c]) / (double)n / 1e3 : 0.0);
		if (!n)
			continue;
		/* Outcomes other than success, and the latency histogram (cumulative
		 * counts at each bound, as /metrics shows them). */
		for (unsigned k = 1; k < DNET_STATUS_SLOTS; k++) {
			uint64_t v = atomic_load(&st->status[c][k]);
			if (v)
				dnet_hbuf_add(&b, "cmd_%s_status_%s %llu\n", dnet_cmd_name(c),
				    dnet_stats_status_label(k), (unsigned long long)v);
		}
		dnet_hbuf_add(&b, "cmd_%s_hist_us ", dnet_cmd_name(c));
		uint64_t cum = 0;
		for (int k = 0; k <= DNET_LAT_BUCKETS; k++) {
			cum += atomic_load(&st->lat_hist[c][k]);
			if (k < DNET_LAT_BUCKETS)
				dnet_hbuf_add(&b, "%llu=%llu,", (unsigned long long)dnet_lat_bucket_us[k],
				    (unsigned long long)cum);
			else
				dnet_hbuf_add(&b, "inf=%llu\n", (unsigned long long)cum);
		}
	}
	size_t rn, ru, rd, rl;
	dnet_member_counts(s, &rn, &ru, &rd, &rl);
	dnet_hbuf_add(&b, "ring_nodes %zu\n", rn);
	dnet_hbuf_add(&b, "ring_up %zu\n", ru);
	dnet_hbuf_add(&b, "ring_down %zu\n", rd);
	dnet_hbuf_add(&b, "ring_left %zu\n", rl);
	dnet_hbuf_add(&b, "ring_digest %016llx\n", (unsigned long long)dnet_member_digest(s));
	dnet_hbuf_add(&b, "move_passes %llu\n", (unsigned long long)atomic_load(&s->mover.passes));
	dnet_hbuf_add(&b, "move_objects %llu\n", (unsigned long long)atomic_load(&s->mover.moved));
	dnet_hbuf_add(&b, "move_bytes %llu\n", (unsigned long long)atomic_load(&s->mover.moved_bytes));
	dnet_hbuf_add(&b, "move_pending %llu\n", (unsigned long long)atomic_load(&s->mover.pending));
	dnet_hbuf_add(&b, "move_errors %llu\n", (unsigned long long)atomic_load(&s->mover.errors));
	struct dnet_recover *rc = &s->recover;
	dnet_hbuf_add(&b, "copies %d\n", s->cfg.copies);
	dnet_hbuf_add(&b, "transforms ");
	for (int i = 0; i < s->cfg.copies; i++) {
		char name[32];
		dnet_copy_name(i, name, sizeof(name));
		dnet_hbuf_add(&b, "%s%s", i ? "," : "", name);
	}
	dnet_hbuf_add(&b, "\n");
	dnet_hbuf_add(&b, "recover_passes %llu\n", (unsigned long long)atomic_load(&rc->passes));
	dnet_hbuf_add(&b, "recover_running %llu\n", (unsigned long long)atomic_load(&rc->running));
	dnet_hbuf_add(&b, "recover_last_ms %llu\n", (unsigned long long)atomic_load(&rc->last_ms));
	dnet_hbuf_add(&b, "recover_buckets_checked %llu\n", (unsigned long long)atomic_load(&rc->buckets_checked));
	dnet_hbuf_add(&b, "recover_buckets_differ %llu\n", (unsigned long long)atomic_load(&rc->buckets_differ));
	dnet_hbuf_add(&b, "recover_pulled %llu\n", (unsigned long long)atomic_load(&rc->pulled));
	dnet_hbuf_add(&b, "recover_bytes %llu\n", (unsigned long long)atomic_load(&rc->bytes));
	dnet_hbuf_add(&b, "recover_errors %llu\n", (unsigned long long)atomic_load(&rc->errors));
	dnet_hbuf_add(&b, "recover_repaired %llu\n", (unsigned long long)atomic_load(&rc->repaired));
	dnet_hbuf_add(&b, "tombstones_collected %llu\n", (unsigned long long)atomic_load(&rc->tombstones_collected));
	dnet_hbuf_add(&b, "move_skipped %llu\n", (unsigned long long)atomic_load(&s->mover.skipped));
	if (s->http_str[0])
		dnet_hbuf_add(&b, "http_listen %s\n", s->http_str);
	dnet_hbuf_add(&b, "http_requests %llu\n", (unsigned long long)atomic_load(&st->http_requests));
	dnet_hbuf_add(&b, "http_errors %llu\n", (unsigned long long)atomic_load(&st->http_errors));
	dnet_hbuf_add(&b, "http_conns_current %llu\n", (unsigned long long)atomic_load(&st->http_conns_cur));
	dnet_hbuf_add(&b, "http_conns_total %llu\n", (unsigned long long)atomic_load(&st->http_conns_total));
	dnet_hbuf_add(&b, "http_conns_rejected %llu\n",
	    (unsigned long long)atomic_load(&st->http_conns_rejected));
	dnet_hbuf_add(&b, "http_conns_evicted %llu\n",
	    (unsigned long long)atomic_load(&st->http_conns_evicted));
	struct dnet_backend_stat bs = {0};
	if (s->bops->stat(s->backend, &bs) == 0) {
		dnet_hbuf_add(&b, "objects %llu\n", (unsigned long long)bs.objects);
		dnet_hbuf_add(&b, "object_bytes %llu\n", (unsigned long long)bs.bytes);
		dnet_hbuf_add(&b, "disk_bytes %llu\n", (unsigned long long)bs.disk_bytes);
		dnet_hbuf_add(&b, "disk_free %llu\n", (unsigned long long)bs.disk_free);
		dnet_hbuf_add(&b, "syncs %llu\n", (unsigned long long)bs.syncs);
		dnet_hbuf_add(&b, "synced_writes %llu\n", (unsigned long long)bs.synced_writes);
		dnet_hbuf_add(&b, "corrupt_objects %llu\n", (unsigned long long)bs.corrupt);
		dnet_hbuf_add(&b, "write_groups %llu\n", (unsigned long long)bs.write_groups);
		dnet_hbuf_add(&b, "grouped_writes %llu\n", (unsigned long long)bs.grouped_writes);
		dnet_hbuf_add(&b, "verified_cache_limit %llu\n", (unsigned long long)bs.vcache.limit);
		dnet_hbuf_add(&b, "verified_cache_bytes %llu\n", (unsigned long long)bs.vcache.bytes);
		dnet_hbuf_add(&b, "verified_cache_objects %llu\n", (unsigned long long)bs.vcache.entries);
		dnet_hbuf_add(&b, "verified_cache_hit_bytes %llu\n", (unsigned long long)bs.vcache.hit_bytes);
		dnet_hbuf_add(&b, "verified_cache_dropped %llu\n", (unsigned long long)bs.vcache.dropped);
		dnet_hbuf_add(&b, "verified_cache_evicted %llu\n", (unsigned long long)bs.vcache.evicted);
	}
	if (b.p)
		*len = b.len;
	return b.p;
}
