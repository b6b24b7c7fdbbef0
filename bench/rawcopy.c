/* rawcopy.c - the ceiling for a large GET: one file copied over a loopback TCP
 * connection with nothing else, the way a well-written server and client would.
 * The sender sendfile()s the file (in page cache) to the socket; the receiver,
 * another thread, recv()s into one 1 MiB buffer and drops the bytes - what the
 * Elliptics client does with a streamed read whose sink discards. Both ends
 * run in this process, as threads. Prints one JSON object.
 *
 * A receiver that blocks in recv() wakes for every few segments (~10^4 wakeups
 * per GiB here, costly in a VM); --lowat sets SO_RCVLOWAT so it wakes once that
 * many bytes wait. bench/compare takes the best of both as the ceiling.
 *
 * usage: rawcopy [--lowat BYTES] FILE */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BUF (1u << 20)

static int lfd, lowat;
static uint64_t received;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *reader(void *arg)
{
	(void)arg;
	int c = accept(lfd, NULL, NULL);
	char *buf = malloc(BUF);
	if (c < 0 || !buf) {
		perror("rawcopy: accept");
		exit(1);
	}
	if (lowat && setsockopt(c, SOL_SOCKET, SO_RCVLOWAT, &lowat, sizeof(lowat)) < 0)
		perror("rawcopy: SO_RCVLOWAT");
	for (;;) {
		ssize_t n = recv(c, buf, BUF, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		received += (uint64_t)n;
	}
	close(c);
	free(buf);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc == 4 && !strcmp(argv[1], "--lowat")) {
		lowat = atoi(argv[2]);
		argv += 2;
		argc -= 2;
	}
	if (argc != 2 || lowat < 0) {
		fprintf(stderr, "usage: rawcopy [--lowat BYTES] FILE\n");
		return 2;
	}
	int fd = open(argv[1], O_RDONLY);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		perror(argv[1]);
		return 1;
	}
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof(a);
	lfd = socket(AF_INET, SOCK_STREAM, 0);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(lfd, 1) < 0 ||
	    getsockname(lfd, (struct sockaddr *)&a, &al) < 0) {
		perror("rawcopy: listen");
		return 1;
	}
	pthread_t t;
	if (pthread_create(&t, NULL, reader, NULL) != 0)
		return 1;
	int s = socket(AF_INET, SOCK_STREAM, 0);
	if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof(a)) < 0) {
		perror("rawcopy: connect");
		return 1;
	}
	uint64_t t0 = now_ns();
	off_t off = 0;
	while (off < st.st_size) {
		ssize_t w = sendfile(s, fd, &off, (size_t)(st.st_size - off));
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			perror("rawcopy: sendfile");
			return 1;
		}
	}
	close(s);
	pthread_join(t, NULL);
	double sec = (double)(now_ns() - t0) / 1e9;
	if (received != (uint64_t)st.st_size) {
		fprintf(stderr, "rawcopy: moved %llu of %llu bytes\n", (unsigned long long)received,
			(unsigned long long)st.st_size);
		return 1;
	}
	printf("{\"bytes\": %llu, \"lowat\": %d, \"seconds\": %.6f, \"mb_per_sec\": %.1f}\n",
	       (unsigned long long)received, lowat, sec, (double)received / sec / 1e6);
	return 0;
}
