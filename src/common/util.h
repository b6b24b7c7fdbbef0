/* util.h - small helpers shared by server, client and tools: time, sockets, sizes. */
#ifndef DNET_UTIL_H
#define DNET_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Monotonic and wall clocks in nanoseconds. */
uint64_t dnet_now_mono_ns(void);
uint64_t dnet_now_real_ns(void);
/* Nanoseconds from `then` to `now`, 0 if `then` is later: a stamp written by another
 * thread after `now` was read (or a time read since a cached clock) is "just now",
 * not a wrap to "idle for 584 years". */
static inline uint64_t dnet_ns_since(uint64_t now, uint64_t then)
{
	return now > then ? now - then : 0;
}

/* Name the calling thread (shown by top -H, ps -L, perf), cut to 15 bytes. */
void dnet_thread_name(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* This thread as SCHED_BATCH (no wake-up preemption); 0 or an errno value. */
int dnet_thread_batch(void);

/* Parse "HOST:PORT", "[V6]:PORT" or "HOST" (port = default_port) into a socket
 * address, resolving names. Returns 0 or DNET_EADDR. */
int dnet_parse_addr(const char *s, int default_port, struct sockaddr_storage *ss,
		    socklen_t *len);
/* "HOST:PORT" text of a socket address. */
void dnet_addr_str(const struct sockaddr *sa, char *out, size_t outlen);

/* Socket address <-> the protocol's 24-byte node address (IPv4 and IPv6). */
struct dnet_addr_wire;
int dnet_addr_from_sockaddr(const struct sockaddr_storage *ss, struct dnet_addr_wire *a);
void dnet_sockaddr_from_addr(const struct dnet_addr_wire *a, struct sockaddr_storage *ss,
			     socklen_t *sl);

int dnet_set_nonblock(int fd, int on);
int dnet_set_nodelay(int fd);

/* Parse sizes like "1024", "10k", "4M", "1G" (powers of 1024). Returns 0 or -1. */
int dnet_parse_size(const char *s, uint64_t *out);

/* write()/read() whole buffers on blocking fds, retrying EINTR and short counts.
 * Return 0 or a DNET_E* code (read_full: DNET_ECONNRESET on early EOF). */
int dnet_write_full(int fd, const void *buf, size_t len);
int dnet_read_full(int fd, void *buf, size_t len);

/* Does "HOST:PORT" name a loopback address (127.0.0.0/8, ::1, localhost)? */
int dnet_addr_is_loopback(const char *hostport);

/* Sleep as needed to keep `bytes` sent since start_ns (monotonic) at or under
 * `rate` bytes/s on average (0: no cap). */
void dnet_rate_wait(uint64_t rate, uint64_t start_ns, uint64_t bytes);

/* Blocking IO on a (possibly non-blocking) socket, polled until `deadline`
 * (monotonic ns): 0, DNET_ETIMEDOUT, DNET_ECONNRESET on EOF, or DNET_E*. */
struct iovec;
int dnet_wait_fd(int fd, short events, uint64_t deadline);
/* Advances through (modifies) iov. */
int dnet_send_iov_deadline(int fd, struct iovec *iov, int n, uint64_t deadline);
int dnet_recv_deadline(int fd, void *buf, size_t len, uint64_t deadline);

/* A growing text buffer; after an allocation failure p is NULL and stays so. */
struct dnet_hbuf {
	char *p;
	size_t len, cap;
};
void dnet_hbuf_init(struct dnet_hbuf *b, size_t cap);
void dnet_hbuf_add(struct dnet_hbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void dnet_hbuf_put(struct dnet_hbuf *b, const char *s, size_t n);
/* s as a JSON string literal (quotes included). */
void dnet_hbuf_json_str(struct dnet_hbuf *b, const char *s, size_t n);

#endif
