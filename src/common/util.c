/* util.c - time, address parsing, socket options, sizes, full reads/writes. */
#include <errno.h>
#include <stdarg.h>
#include <sys/uio.h>
#include <sys/socket.h>
#include <poll.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include "errors.h"
#include "proto.h"
#include "util.h"

uint64_t dnet_now_mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t dnet_now_real_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void dnet_thread_name(const char *fmt, ...)
{
	char name[16];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(name, sizeof(name), fmt, ap);
	va_end(ap);
	pthread_setname_np(pthread_self(), name);
}

/* The node's request threads (network loops, IO workers) run as SCHED_BATCH: they
 * do not preempt the running thread when woken (a worker woken by the receive
 * thread waits until the round is handed over; a node's threads do not interrupt
 * each other's or another node's). docs/performance.md has the measurements. */
int dnet_thread_batch(void)
{
	struct sched_param sp = {0};
	return pthread_setschedparam(pthread_self(), SCHED_BATCH, &sp);
}

int dnet_parse_addr(const char *s, int default_port, struct sockaddr_storage *ss,
		    socklen_t *len)
{
	char host[256];
	char port[16];
	const char *colon;

	if (!s || !*s)
		return DNET_EADDR;
	if (s[0] == '[') {
		const char *end = strchr(s, ']');
		if (!end || (size_t)(end - s - 1) >= sizeof(host))
			return DNET_EADDR;
		memcpy(host, s + 1, (size_t)(end - s - 1));
		host[end - s - 1] = '\0';
		colon = end[1] == ':' ? end + 1 : NULL;
		if (end[1] && !colon)
			return DNET_EADDR;
	} else {
		colon = strrchr(s, ':');
		size_t hl = colon ? (size_t)(colon - s) : strlen(s);
		if (hl >= sizeof(host))
			return DNET_EADDR;
		memcpy(host, s, hl);
		host[hl] = '\0';
	}
	if (colon) {
		char *endp;
		long p = strtol(colon + 1, &endp, 10);
		if (*endp || endp == colon + 1 || p < 0 || p > 65535)
			return DNET_EADDR;
		snprintf(port, sizeof(port), "%ld", p);
	} else {
		if (default_port <= 0)
			return DNET_EADDR;
		snprintf(port, sizeof(port), "%d", default_port);
	}
	struct addrinfo hints, *res = NULL;
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	if (getaddrinfo(host[0] ? host : "0.0.0.0", port, &hints, &res) != 0 || !res)
		return DNET_EADDR;
	memcpy(ss, res->ai_addr, res->ai_addrlen);
	*len = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

void dnet_addr_str(const struct sockaddr *sa, char *out, size_t outlen)
{
	char host[INET6_ADDRSTRLEN] = "?";
	int port = 0;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		port = ntohs(in->sin_port);
		snprintf(out, outlen, "%s:%d", host, port);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		port = ntohs(in6->sin6_port);
		snprintf(out, outlen, "[%s]:%d", host, port);
	} else {
		snprintf(out, outlen, "?");
	}
}

int dnet_set_nonblock(int fd, int on)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0)
		return -1;
	fl = on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
	return fcntl(fd, F_SETFL, fl);
}

int dnet_set_nodelay(int fd)
{
	int one = 1;
	return setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

int dnet_parse_size(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s)
		return -1;
	uint64_t mul = 1;
	switch (*end) {
	case '\0':
		break;
	case 'k': case 'K':
		mul = 1ull << 10;
		end++;
		break;
	case 'm': case 'M':
		mul = 1ull << 20;
		end++;
		break;
	case 'g': case 'G':
		mul = 1ull << 30;
		end++;
		break;
	default:
		return -1;
	}
	if (*end == 'i' || *end == 'B' || *end == 'b') /* accept KiB, MB, ... */
		end++;
	if (*end == 'B')
		end++;
	if (*end)
		return -1;
	if (v > UINT64_MAX / mul)
		return -1;
	*out = (uint64_t)v * mul;
	return 0;
}

int dnet_write_full(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return dnet_from_errno(errno);
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int dnet_read_full(int fd, void *buf, size_t len)
{
	char *p = buf;
	while (len) {
		ssize_t n = read(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return dnet_from_errno(errno);
		}
		if (n == 0)
			return DNET_ECONNRESET;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int dnet_addr_from_sockaddr(const struct sockaddr_storage *ss, struct dnet_addr_wire *a)
{
	memset(a, 0, sizeof(*a));
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
		a->family = 4;
		a->port = ntohs(in->sin_port);
		memcpy(a->addr, &in->sin_addr, 4);
		return 0;
	}
	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
		a->family = 6;
		a->port = ntohs(in6->sin6_port);
		memcpy(a->addr, &in6->sin6_addr, 16);
		return 0;
	}
	return DNET_EADDR;
}

void dnet_sockaddr_from_addr(const struct dnet_addr_wire *a, struct sockaddr_storage *ss,
			       socklen_t *sl)
{
	memset(ss, 0, sizeof(*ss));
	if (a->family == 6) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(a->port);
		memcpy(&in6->sin6_addr, a->addr, 16);
		*sl = sizeof(*in6);
	} else {
		struct sockaddr_in *in = (struct sockaddr_in *)ss;
		in->sin_family = AF_INET;
		in->sin_port = htons(a->port);
		memcpy(&in->sin_addr, a->addr, 4);
		*sl = sizeof(*in);
	}
}

void dnet_rate_wait(uint64_t rate, uint64_t start_ns, uint64_t bytes)
{
	if (!rate)
		return;
	uint64_t should_ns = bytes * 1000000000ull / rate;
	uint64_t spent = dnet_now_mono_ns() - start_ns;
	if (should_ns > spent) {
		uint64_t d = should_ns - spent;
		struct timespec ts = {.tv_sec = (time_t)(d / 1000000000ull),
				      .tv_nsec = (long)(d % 1000000000ull)};
		nanosleep(&ts, NULL);
	}
}

int dnet_addr_is_loopback(const char *hostport)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	if (dnet_parse_addr(hostport, 1025, &ss, &sl) != 0)
		return 0;
	if (ss.ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)&ss;
		return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
	}
	if (ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&ss;
		return IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
	}
	return 0;
}

/* --- blocking IO against a deadline (node-to-node calls, handshakes) --- */

static int remaining_ms(uint64_t deadline)
{
	uint64_t now = dnet_now_mono_ns();
	return now >= deadline ? 0 : (int)((deadline - now) / 1000000) + 1;
}

int dnet_wait_fd(int fd, short ev, uint64_t deadline)
{
	for (;;) {
		struct pollfd pf = {.fd = fd, .events = ev};
		int ms = remaining_ms(deadline);
		if (ms == 0)
			return DNET_ETIMEDOUT;
		int n = poll(&pf, 1, ms);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return dnet_from_errno(errno);
		if (n == 0)
			return DNET_ETIMEDOUT;
		return 0;
	}
}

int dnet_send_iov_deadline(int fd, struct iovec *iov, int n, uint64_t deadline)
{
	while (n > 0) {
		struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
		ssize_t w = sendmsg(fd, &mh, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				int err = dnet_wait_fd(fd, POLLOUT, deadline);
				if (err)
					return err;
				continue;
			}
			return dnet_from_errno(errno);
		}
		size_t left = (size_t)w;
		while (n > 0 && left >= iov->iov_len) {
			left -= iov->iov_len;
			iov++;
			n--;
		}
		if (n > 0) {
			iov->iov_base = (char *)iov->iov_base + left;
			iov->iov_len -= left;
		}
	}
	return 0;
}

int dnet_recv_deadline(int fd, void *buf, size_t len, uint64_t deadline)
{
	char *p = buf;
	while (len) {
		ssize_t r = recv(fd, p, len, 0);
		if (r > 0) {
			p += r;
			len -= (size_t)r;
			continue;
		}
		if (r == 0)
			return DNET_ECONNRESET;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return dnet_from_errno(errno);
		int err = dnet_wait_fd(fd, POLLIN, deadline);
		if (err)
			return err;
	}
	return 0;
}


/* --- a growing text buffer (stat text, /metrics, JSON) --- */

void dnet_hbuf_init(struct dnet_hbuf *b, size_t cap)
{
	b->p = malloc(cap);
	b->len = 0;
	b->cap = b->p ? cap : 0;
}

static int hbuf_reserve(struct dnet_hbuf *b, size_t n)
{
	if (!b->p)
		return -1;
	if (b->cap - b->len > n)
		return 0;
	size_t cap = b->cap;
	while (cap - b->len <= n)
		cap *= 2;
	char *np = realloc(b->p, cap);
	if (!np) {
		free(b->p);
		b->p = NULL;
		return -1;
	}
	b->p = np;
	b->cap = cap;
	return 0;
}

void dnet_hbuf_add(struct dnet_hbuf *b, const char *fmt, ...)
{
	for (;;) {
		if (!b->p)
			return;
		va_list ap;
		va_start(ap, fmt);
		int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
		va_end(ap);
		if (n < 0)
			return;
		if ((size_t)n < b->cap - b->len) {
			b->len += (size_t)n;
			return;
		}
		if (hbuf_reserve(b, (size_t)n + 1) != 0)
			return;
	}
}

void dnet_hbuf_put(struct dnet_hbuf *b, const char *s, size_t n)
{
	if (hbuf_reserve(b, n + 1) != 0)
		return;
	memcpy(b->p + b->len, s, n);
	b->len += n;
}

void dnet_hbuf_json_str(struct dnet_hbuf *b, const char *s, size_t n)
{
	dnet_hbuf_put(b, "\"", 1);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '"' || c == '\\')
			dnet_hbuf_add(b, "\\%c", c);
		else if (c < 0x20 || c >= 0x7f)
			dnet_hbuf_add(b, "\\u%04x", c); /* bytes, not UTF-8: keep JSON valid */
		else
			dnet_hbuf_put(b, (const char *)&c, 1);
	}
	dnet_hbuf_put(b, "\"", 1);
}
