/* memcload.c - closed-loop load for memcached's text protocol, the same shape as
 * `elliptics bench` and redis-benchmark -P 1: every connection keeps exactly one
 * request in flight. (memaslap keeps a window of requests in flight per
 * connection and counts its prefill sets as operations, so its figures are not
 * comparable with the other tools'.) One thread, one epoll loop, like
 * redis-benchmark. Prints one JSON object.
 *
 * usage: memcload -p PORT [-H HOST] -c CONNS -n COUNT -d SIZE -t set|get [-k KEYS]
 * get first stores (untimed) every key it will read. */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 4096
#define MAX_SIZE (1u << 20)

struct conn {
	int fd;
	char *in;
	size_t in_len, in_cap;
	uint64_t start_ns;
	int busy;
};

static const char *host = "127.0.0.1";
static int port, nconns = 1, is_get;
static long count = 10000, nkeys = 10000, size = 1024;
static char *value;
static long issued, done, errors;
static double *lat; /* microseconds of each timed op */
static long nlat;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
	fprintf(stderr, "memcload: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int dial(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		die("socket");
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
		fprintf(stderr, "memcload: bad host %s\n", host);
		exit(2);
	}
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		die("connect");
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

static void send_all(int fd, const struct iovec *iov, int n)
{
	struct msghdr mh = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)n};
	size_t want = 0;
	for (int i = 0; i < n; i++)
		want += iov[i].iov_len;
	ssize_t w = sendmsg(fd, &mh, MSG_NOSIGNAL);
	if (w < 0)
		die("send");
	if ((size_t)w != want) { /* rare with <= 1 MiB on loopback: finish blocking */
		size_t skip = (size_t)w;
		for (int i = 0; i < n; i++) {
			const char *p = iov[i].iov_base;
			size_t l = iov[i].iov_len;
			if (skip >= l) {
				skip -= l;
				continue;
			}
			p += skip;
			l -= skip;
			skip = 0;
			while (l) {
				ssize_t r = send(fd, p, l, MSG_NOSIGNAL);
				if (r < 0) {
					if (errno == EAGAIN) {
						struct timespec ts = {0, 100000};
						nanosleep(&ts, NULL);
						continue;
					}
					die("send");
				}
				p += r;
				l -= (size_t)r;
			}
		}
	}
}

static void request(struct conn *c, int get, long key)
{
	char hdr[96];
	int hl = get ? snprintf(hdr, sizeof(hdr), "get memcload:%ld\r\n", key)
		     : snprintf(hdr, sizeof(hdr), "set memcload:%ld 0 0 %ld\r\n", key, size);
	struct iovec iov[3] = {{hdr, (size_t)hl}, {value, (size_t)size}, {(void *)"\r\n", 2}};
	c->start_ns = now_ns();
	c->busy = 1;
	send_all(c->fd, iov, get ? 1 : 3);
}

/* Bytes of one whole reply at the start of c->in, 0 if incomplete, -1 if bad. */
static long reply_len(const struct conn *c, int *ok)
{
	const char *p = c->in;
	size_t n = c->in_len;
	const char *nl = memchr(p, '\n', n);
	if (!nl)
		return n > 512 ? -1 : 0;
	size_t line = (size_t)(nl - p) + 1;
	if (!strncmp(p, "STORED", 6) || !strncmp(p, "END", 3)) {
		*ok = p[0] == 'S' || !is_get; /* END alone: a miss */
		return (long)line;
	}
	if (!strncmp(p, "VALUE ", 6)) {
		const char *sp = memrchr(p, ' ', line);
		long len = sp ? strtol(sp + 1, NULL, 10) : -1;
		if (len < 0 || len > (long)MAX_SIZE)
			return -1;
		size_t total = line + (size_t)len + 2 + 5; /* data \r\n END\r\n */
		if (n < total)
			return 0;
		*ok = len == size;
		return (long)total;
	}
	*ok = 0;
	return (long)line; /* an error line */
}

static void run(struct conn *cs, int get, long total, int timed)
{
	int ep = epoll_create1(0);
	if (ep < 0)
		die("epoll_create1");
	long my_issued = 0, my_done = 0;
	for (int i = 0; i < nconns && my_issued < total; i++) {
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &cs[i]};
		epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
		request(&cs[i], get, timed ? random() % nkeys : my_issued);
		my_issued++;
	}
	struct epoll_event evs[256];
	while (my_done < total) {
		int n = epoll_wait(ep, evs, 256, 10000);
		if (n <= 0) {
			fprintf(stderr, "memcload: no reply for 10 s\n");
			exit(1);
		}
		for (int i = 0; i < n; i++) {
			struct conn *c = evs[i].data.ptr;
			if (c->in_cap - c->in_len < 65536) {
				c->in_cap = c->in_cap * 2 + 65536;
				c->in = realloc(c->in, c->in_cap);
				if (!c->in)
					die("realloc");
			}
			ssize_t r = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
			if (r <= 0) {
				fprintf(stderr, "memcload: server closed the connection\n");
				exit(1);
			}
			c->in_len += (size_t)r;
			int ok = 0;
			long l = reply_len(c, &ok);
			if (l < 0) {
				fprintf(stderr, "memcload: bad reply\n");
				exit(1);
			}
			if (l == 0)
				continue;
			memmove(c->in, c->in + l, c->in_len - (size_t)l);
			c->in_len -= (size_t)l;
			my_done++;
			if (timed) {
				lat[nlat++] = (double)(now_ns() - c->start_ns) / 1000.0;
				if (!ok)
					errors++;
			}
			c->busy = 0;
			if (my_issued < total) {
				request(c, get, timed ? random() % nkeys : my_issued);
				my_issued++;
			}
		}
	}
	for (int i = 0; i < nconns; i++)
		epoll_ctl(ep, EPOLL_CTL_DEL, cs[i].fd, NULL);
	close(ep);
	issued += my_issued;
	done += my_done;
}

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	int opt;
	while ((opt = getopt(argc, argv, "H:p:c:n:d:t:k:")) != -1) {
		switch (opt) {
		case 'H': host = optarg; break;
		case 'p': port = atoi(optarg); break;
		case 'c': nconns = atoi(optarg); break;
		case 'n': count = atol(optarg); break;
		case 'd': size = atol(optarg); break;
		case 'k': nkeys = atol(optarg); break;
		case 't': is_get = !strcmp(optarg, "get"); break;
		default:
			fprintf(stderr, "usage: memcload -p PORT [-H HOST] -c CONNS -n COUNT -d SIZE "
					"-t set|get [-k KEYS]\n");
			return 2;
		}
	}
	if (port <= 0 || nconns < 1 || nconns > MAX_CONNS || count < 1 || size < 0 ||
	    size > (long)MAX_SIZE || nkeys < 1) {
		fprintf(stderr, "memcload: bad arguments\n");
		return 2;
	}
	value = malloc((size_t)size + 1);
	lat = malloc(sizeof(*lat) * (size_t)count);
	struct conn *cs = calloc((size_t)nconns, sizeof(*cs));
	if (!value || !lat || !cs)
		die("malloc");
	memset(value, 'x', (size_t)size);
	for (int i = 0; i < nconns; i++)
		cs[i].fd = dial();
	srandom(1);
	if (is_get)
		run(cs, 0, nkeys, 0); /* store every key first, untimed */
	uint64_t t0 = now_ns();
	run(cs, is_get, count, 1);
	double secs = (double)(now_ns() - t0) / 1e9;
	qsort(lat, (size_t)nlat, sizeof(*lat), cmp_d);
	double p50 = lat[(size_t)floor(0.50 * (double)(nlat - 1))];
	double p99 = lat[(size_t)floor(0.99 * (double)(nlat - 1))];
	printf("{\"op\": \"%s\", \"size\": %ld, \"conns\": %d, \"count\": %ld, \"seconds\": %.3f, "
	       "\"ops_per_sec\": %.1f, \"mb_per_sec\": %.2f, \"p50_us\": %.1f, \"p99_us\": %.1f, "
	       "\"errors\": %ld}\n",
	       is_get ? "get" : "set", size, nconns, nlat, secs, (double)nlat / secs,
	       (double)nlat * (double)size / secs / 1e6, p50, p99, errors);
	return errors ? 1 : 0;
}
