/* metrics.c - GET /metrics: the node's counters (struct dnet_stats, the engine's
 * stat, the ring, the mover) in the Prometheus text exposition format 0.0.4. The
 * same numbers are in the STAT text (src/server/stats.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/errors.h"
#include "common/id.h"
#include "common/util.h"
#include "http_int.h"


static void head(struct dnet_hbuf *b, const char *name, const char *type, const char *help)
{
	dnet_hbuf_add(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void one(struct dnet_hbuf *b, const char *name, const char *type, const char *help, double v)
{
	head(b, name, type, help);
	dnet_hbuf_add(b, "%s %.17g\n", name, v);
}

static void one_u(struct dnet_hbuf *b, const char *name, const char *type, const char *help,
		  uint64_t v)
{
	head(b, name, type, help);
	dnet_hbuf_add(b, "%s %llu\n", name, (unsigned long long)v);
}

/* Label values are our own names and addresses, but escape them all the same. */
static void label_value(struct dnet_hbuf *b, const char *v)
{
	for (; *v; v++) {
		if (*v == '\\' || *v == '"')
			dnet_hbuf_add(b, "\\%c", *v);
		else if (*v == '\n')
			dnet_hbuf_put(b, "\\n", 2);
		else
			dnet_hbuf_put(b, v, 1);
	}
}

char *dnet_http_metrics(struct dnet_server *s, size_t *len)
{
	struct dnet_hbuf b;
	struct dnet_stats *st = &s->stats;
	dnet_hbuf_init(&b, 16384);

	char hex[2 * DNET_ID_SIZE + 1];
	dnet_id_to_hex(hex, s->node_id, DNET_ID_SIZE);
	head(&b, "elliptics_node_info", "gauge",
	     "This node: ID, address, engine and zone (value 1).");
	dnet_hbuf_add(&b, "elliptics_node_info{node_id=\"%.16s\",listen=\"", hex);
	label_value(&b, s->listen_str);
	dnet_hbuf_add(&b, "\",backend=\"%s\",fsync=\"%s\",zone=\"", s->bops->name,
		      dnet_fsync_policy_name(s->cfg.fsync));
	label_value(&b, s->cfg.zone);
	dnet_hbuf_add(&b, "\"} 1\n");
	one(&b, "elliptics_uptime_seconds", "gauge", "Seconds since the node started.",
	    (double)(dnet_now_mono_ns() - s->start_ns) / 1e9);

	head(&b, "elliptics_requests_total", "counter",
	     "Requests executed, by command and result status (ok or the error name).");
	for (int c = 1; c < DNET_CMD_MAX_; c++)
		for (unsigned k = 0; k < DNET_STATUS_SLOTS; k++) {
			uint64_t v = atomic_load(&st->status[c][k]);
			if (v || k == 0)
				dnet_hbuf_add(
				    &b, "elliptics_requests_total{cmd=\"%s\",status=\"%s\"} %llu\n",
				    dnet_cmd_name(c), dnet_stats_status_label(k),
				    (unsigned long long)v);
		}
	head(&b, "elliptics_request_duration_seconds", "histogram",
	     "Time from a request's arrival to its reply, by command.");
	for (int c = 1; c < DNET_CMD_MAX_; c++) {
		uint64_t cum = 0;
		for (int k = 0; k <= DNET_LAT_BUCKETS; k++) {
			cum += atomic_load(&st->lat_hist[c][k]);
			if (k < DNET_LAT_BUCKETS)
				dnet_hbuf_add(&b,
					      "elliptics_request_duration_seconds_bucket{cmd=\"%"
					      "s\",le=\"%g\"} %llu\n",
					      dnet_cmd_name(c), (double)dnet_lat_bucket_us[k] / 1e6,
					      (unsigned long long)cum);
			else
				dnet_hbuf_add(&b,
					      "elliptics_request_duration_seconds_bucket{cmd=\"%"
					      "s\",le=\"+Inf\"} %llu\n",
					      dnet_cmd_name(c), (unsigned long long)cum);
		}
		/* _count is the +Inf bucket, so the histogram is consistent even while
		 * workers update it; _sum comes from the separate total. */
		dnet_hbuf_add(&b, "elliptics_request_duration_seconds_sum{cmd=\"%s\"} %.9f\n",
			      dnet_cmd_name(c), (double)atomic_load(&st->lat_ns[c]) / 1e9);
		dnet_hbuf_add(&b, "elliptics_request_duration_seconds_count{cmd=\"%s\"} %llu\n",
			      dnet_cmd_name(c), (unsigned long long)cum);
	}

	one_u(&b, "elliptics_received_bytes_total", "counter",
	      "Request bytes read from clients and peers (headers and payloads).",
	      atomic_load(&st->bytes_in));
	one_u(&b, "elliptics_sent_bytes_total", "counter", "Reply bytes sent.",
	      atomic_load(&st->bytes_out));
	one_u(&b, "elliptics_request_memory_bytes", "gauge",
	      "Payload bytes of requests received or being received and not yet answered.",
	      atomic_load(&st->req_mem));
	one_u(&b, "elliptics_request_memory_pauses_total", "counter",
	      "Times a connection stopped being read because of --max-request-memory.",
	      atomic_load(&st->req_mem_pauses));
	one_u(&b, "elliptics_connections", "gauge", "Open connections of the storage protocol.",
	      atomic_load(&st->conns_cur));
	one_u(&b, "elliptics_connections_accepted_total", "counter",
	      "Storage protocol connections accepted.", atomic_load(&st->conns_total));
	one_u(&b, "elliptics_connections_rejected_total", "counter",
	      "Connections closed at once because --max-conns was reached.",
	      atomic_load(&st->conns_rejected));
	head(&b, "elliptics_connections_timed_out_total", "counter",
	     "Storage protocol connections closed by a timeout: idle (no request), slow (a "
	     "request not received whole in time), stalled (output not read).");
	dnet_hbuf_add(&b, "elliptics_connections_timed_out_total{reason=\"idle\"} %llu\n",
		      (unsigned long long)atomic_load(&st->conns_idle_closed));
	dnet_hbuf_add(&b, "elliptics_connections_timed_out_total{reason=\"slow\"} %llu\n",
		      (unsigned long long)atomic_load(&st->conns_slow_closed));
	dnet_hbuf_add(&b, "elliptics_connections_timed_out_total{reason=\"stalled\"} %llu\n",
		      (unsigned long long)atomic_load(&st->conns_stalled_closed));
	head(&b, "elliptics_auth_total", "counter",
	     "Key handshakes (AUTH) by result, and requests refused for lack of permission.");
	dnet_hbuf_add(&b, "elliptics_auth_total{result=\"ok\"} %llu\n",
		      (unsigned long long)atomic_load(&st->auth_ok));
	dnet_hbuf_add(&b, "elliptics_auth_total{result=\"failed\"} %llu\n",
		      (unsigned long long)atomic_load(&st->auth_failed));
	dnet_hbuf_add(&b, "elliptics_auth_total{result=\"denied\"} %llu\n",
		      (unsigned long long)atomic_load(&st->auth_denied));
	one_u(&b, "elliptics_protocol_errors_total", "counter",
	      "Connections closed for violating the protocol.", atomic_load(&st->proto_errors));
	one_u(&b, "elliptics_redirects_total", "counter",
	      "Requests answered with a redirect to the owning node.", atomic_load(&st->redirects));
	one_u(&b, "elliptics_handoff_redirects_total", "counter",
	      "Redirects to a key's previous owner while data moves.",
	      atomic_load(&st->handoff_redirects));
	one_u(&b, "elliptics_joining_refused_total", "counter",
	      "Misses answered 'not joined the ring yet' before the first exchange.",
	      atomic_load(&st->joining_refused));
	one_u(&b, "elliptics_io_queue_depth", "gauge", "Requests waiting in the IO worker queues.",
	      atomic_load(&st->queued));
	one_u(&b, "elliptics_io_threads", "gauge", "IO worker threads.",
	      (uint64_t)s->cfg.io_threads);
	one(&b, "elliptics_io_busy_seconds_total", "counter",
	    "Time IO workers spent executing requests (divide by io_threads for utilisation).",
	    (double)atomic_load(&st->busy_ns) / 1e9);

	struct dnet_backend_stat bs = {0};
	if (s->bops->stat(s->backend, &bs) == 0) {
		one_u(&b, "elliptics_backend_objects", "gauge",
		      "Live objects in the storage engine.", bs.objects);
		one_u(&b, "elliptics_backend_object_bytes", "gauge",
		      "Logical bytes of the live objects.", bs.bytes);
		one_u(&b, "elliptics_backend_disk_bytes", "gauge",
		      "Bytes the engine uses on disk, with overhead and dead space.",
		      bs.disk_bytes);
		one_u(&b, "elliptics_backend_disk_free_bytes", "gauge",
		      "Free bytes on the engine's filesystem.", bs.disk_free);
		one_u(&b, "elliptics_backend_syncs_total", "counter",
		      "Sync calls made by the engine.", bs.syncs);
		one_u(&b, "elliptics_backend_synced_writes_total", "counter",
		      "Writes made durable by those syncs.", bs.synced_writes);
		one_u(&b, "elliptics_backend_corrupt_objects_total", "counter",
		      "Checksum mismatches detected on reads.", bs.corrupt);
		one_u(&b, "elliptics_verified_cache_limit_bytes", "gauge",
		      "Bytes of verified large-object data that may be kept locked in memory.",
		      bs.vcache.limit);
		one_u(&b, "elliptics_verified_cache_bytes", "gauge",
		      "Bytes of verified large-object data locked in memory now.", bs.vcache.bytes);
		one_u(&b, "elliptics_verified_cache_objects", "gauge",
		      "Objects with verified data locked in memory now.", bs.vcache.entries);
		one_u(&b, "elliptics_verified_cache_hit_bytes_total", "counter",
		      "Bytes read out of the verified cache without hashing them again.",
		      bs.vcache.hit_bytes);
		one_u(&b, "elliptics_verified_cache_dropped_total", "counter",
		      "Cached objects dropped because their data file changed.", bs.vcache.dropped);
		one_u(&b, "elliptics_verified_cache_evicted_total", "counter",
		      "Cached objects evicted to make room.", bs.vcache.evicted);
	}

	size_t rn, ru, rd, rl;
	dnet_member_counts(s, &rn, &ru, &rd, &rl);
	head(&b, "elliptics_ring_members", "gauge",
	     "Ring members as this node sees them, by state.");
	dnet_hbuf_add(&b, "elliptics_ring_members{state=\"up\"} %zu\n", ru);
	dnet_hbuf_add(&b, "elliptics_ring_members{state=\"down\"} %zu\n", rd);
	dnet_hbuf_add(&b, "elliptics_ring_members{state=\"left\"} %zu\n", rl);

	one_u(&b, "elliptics_move_passes_total", "counter", "Data movement passes over the engine.",
	      atomic_load(&s->mover.passes));
	one_u(&b, "elliptics_move_objects_total", "counter", "Objects handed to their new owner.",
	      atomic_load(&s->mover.moved));
	one_u(&b, "elliptics_move_bytes_total", "counter", "Bytes handed to new owners.",
	      atomic_load(&s->mover.moved_bytes));
	one_u(&b, "elliptics_move_skipped_total", "counter",
	      "Objects not moved because the owner had a copy at least as new.",
	      atomic_load(&s->mover.skipped));
	one_u(&b, "elliptics_move_errors_total", "counter", "Failed object moves (retried).",
	      atomic_load(&s->mover.errors));
	one_u(&b, "elliptics_move_pending", "gauge",
	      "Objects left to move after the last pass (0: settled).",
	      atomic_load(&s->mover.pending));

	struct dnet_recover *rc = &s->recover;
	one_u(&b, "elliptics_copies", "gauge", "Copies kept of every object (--copies).",
	      (uint64_t)s->cfg.copies);
	one_u(&b, "elliptics_recover_passes_total", "counter",
	      "Anti-entropy recovery passes completed.", atomic_load(&rc->passes));
	one_u(&b, "elliptics_recover_running", "gauge", "1 while a recovery pass runs.",
	      atomic_load(&rc->running));
	one(&b, "elliptics_recover_last_pass_seconds", "gauge",
	    "Duration of the last recovery pass.", (double)atomic_load(&rc->last_ms) / 1e3);
	one_u(&b, "elliptics_recover_buckets_checked_total", "counter",
	      "Range digests compared with other copies.", atomic_load(&rc->buckets_checked));
	one_u(&b, "elliptics_recover_buckets_differ_total", "counter",
	      "Range digests that differed (and were walked).", atomic_load(&rc->buckets_differ));
	one_u(&b, "elliptics_recover_pulled_objects_total", "counter",
	      "Objects pulled from other copies by recovery.", atomic_load(&rc->pulled));
	one_u(&b, "elliptics_recover_pulled_bytes_total", "counter", "Bytes pulled by recovery.",
	      atomic_load(&rc->bytes));
	one_u(&b, "elliptics_recover_errors_total", "counter", "Recovery errors (retried).",
	      atomic_load(&rc->errors));
	one_u(&b, "elliptics_recover_repaired_total", "counter",
	      "Corrupt copies replaced from a good copy.", atomic_load(&rc->repaired));
	one_u(&b, "elliptics_tombstones_collected_total", "counter",
	      "Delete tombstones removed after their grace period.",
	      atomic_load(&rc->tombstones_collected));

	one_u(&b, "elliptics_http_requests_total", "counter", "HTTP requests answered.",
	      atomic_load(&st->http_requests));
	one_u(&b, "elliptics_http_errors_total", "counter",
	      "HTTP requests answered with a 4xx or 5xx status.", atomic_load(&st->http_errors));
	one_u(&b, "elliptics_http_connections", "gauge", "Open HTTP connections.",
	      atomic_load(&st->http_conns_cur));
	one_u(&b, "elliptics_http_connections_accepted_total", "counter",
	      "HTTP connections accepted.", atomic_load(&st->http_conns_total));
	one_u(&b, "elliptics_http_connections_rejected_total", "counter",
	      "HTTP connections refused (503) at the connection limit.",
	      atomic_load(&st->http_conns_rejected));
	one_u(&b, "elliptics_http_connections_evicted_total", "counter",
	      "Idle or slow HTTP connections closed at the limit to admit new ones.",
	      atomic_load(&st->http_conns_evicted));

	if (b.p)
		*len = b.len;
	return b.p;
}
