/* fuzz_httpd.c - feeds arbitrary bytes to the HTTP endpoint of a real in-process
 * ellipticsd (mem engine) over a loopback connection: the connection state machine
 * (heads, bodies, chunked decoding, pipelining, keep-alive, 100-continue, error and
 * linger paths) must survive anything without a crash, leak or hang, and always
 * close the connection once the client has half-closed its side.
 *
 * Built with clang -fsanitize=fuzzer (make fuzz), or as a plain program
 * (DNET_FUZZ_STANDALONE) replaying files, or generating N structured random
 * inputs: `fuzz_httpd -n 3000`. */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "fuzz_talk.h"
#include "server/server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct dnet_server srv;
static struct sockaddr_storage http_addr;
static socklen_t http_len;

static void start_once(void)
{
	static int started;
	if (started)
		return;
	started = 1;
	dnet_log_level = DNET_LOG_ERROR;
	dnet_config_defaults(&srv.cfg);
	snprintf(srv.cfg.data, sizeof(srv.cfg.data), "%s", fz_scratch_dir("elliptics-fuzz-http"));
	snprintf(srv.cfg.listen, sizeof(srv.cfg.listen), "127.0.0.1:0");
	snprintf(srv.cfg.http, sizeof(srv.cfg.http), "127.0.0.1:0");
	snprintf(srv.cfg.backend, sizeof(srv.cfg.backend), "mem");
	srv.cfg.io_threads = 1;
	if (dnet_server_start(&srv) != 0)
		abort();
	if (dnet_parse_addr(srv.http_str, 0, &http_addr, &http_len) != 0)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	start_once();
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return 0;
	if (connect(fd, (struct sockaddr *)&http_addr, http_len) != 0) {
		close(fd);
		return 0;
	}
	fz_talk(fd, data, size, "fuzz_httpd", "fuzz-http-hang.bin");
	/* Close with a reset: hundreds of thousands of runs must not fill the loopback
	 * with TIME_WAIT connections whose ports new runs would then collide with. */
	struct linger lg = {.l_onoff = 1, .l_linger = 0};
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(fd);
	return 0;
}

#ifdef DNET_FUZZ_STANDALONE
static const char *methods[] = {"GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "G\x01T", ""};
static const char *paths[] = {"/metrics",  "/ring.json", "/", "/ring",	"/ring.js",
			      "/ring.css", "/nope",	 "*", "/a?b=c", "x",
			      /* the S3 gateway (anonymous: the node has no S3 keys) */
			      "/bkt", "/bkt/k", "/bkt/a%2Fb", "/bkt?list-type=2&prefix=a&delimiter=/",
			      "/bkt/k?uploads", "/bkt/k?uploadId=00000000000000000000000000000000",
			      "/bkt/k?partNumber=1&uploadId=0", "/bkt?location", "/bkt/%zz",
			      "/bkt?list-type=2&continuation-token=6b&max-keys=1", "/?x"};
#define NPATHS (sizeof(paths) / sizeof(paths[0]))
static const char *good_headers[] = {
    "Connection: close", "Connection: keep-alive", "Expect: 100-continue", "Accept: */*",
    "X-Empty:",		 "User-Agent: fuzz/1.0", "Range: bytes=1-3", "x-amz-copy-source: /bkt/k",
    "Content-Encoding: aws-chunked", "x-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
    "x-amz-meta-a: b", "Authorization: AWS4-HMAC-SHA256 Credential=x"};
#define NGOOD (sizeof(good_headers) / sizeof(good_headers[0]))
static const char *bad_headers[] = {
    " folded", "Bad Header: x", "Transfer-Encoding: gzip", "Content-Length: abc",
    "Host: y", "X: \x01"};

static size_t gen(char *buf, size_t cap, unsigned *seed)
{
	size_t len = 0;
	int reqs = 1 + rand_r(seed) % 4;
	for (int r = 0; r < reqs && len + 600 < cap; r++) {
		int m = rand_r(seed) % 10;
		const char *meth = m < 5 ? methods[m % 2] : methods[rand_r(seed) % 8];
		len +=
		    (size_t)snprintf(buf + len, cap - len, "%s %s HTTP/1.%d\r\n", meth,
				     paths[rand_r(seed) % 3 ? rand_r(seed) % 6
							    : rand_r(seed) % (int)NPATHS],
				     rand_r(seed) % 8 ? 1 : 0);
		if (rand_r(seed) % 8)
			len += (size_t)snprintf(buf + len, cap - len, "Host: h\r\n");
		int nh = rand_r(seed) % 3;
		for (int i = 0; i < nh; i++)
			len += (size_t)snprintf(buf + len, cap - len, "%s\r\n",
						rand_r(seed) % 5 ? good_headers[rand_r(seed) % (int)NGOOD]
								 : bad_headers[rand_r(seed) % 6]);
		int body = rand_r(seed) % 4;
		size_t blen = (size_t)(rand_r(seed) % 300);
		if (body == 1) {
			len += (size_t)snprintf(buf + len, cap - len, "Content-Length: %zu\r\n\r\n",
						blen);
			for (size_t i = 0; i < blen && len < cap; i++)
				buf[len++] = (char)('a' + rand_r(seed) % 26);
		} else if (body == 2) {
			len += (size_t)snprintf(buf + len, cap - len,
						"Transfer-Encoding: chunked\r\n\r\n");
			int chunks = rand_r(seed) % 4;
			for (int c = 0; c < chunks && len + 200 < cap; c++) {
				size_t cl = (size_t)(1 + rand_r(seed) % 100);
				len += (size_t)snprintf(buf + len, cap - len, "%zx%s\r\n", cl,
							rand_r(seed) % 5 ? "" : ";e=1");
				for (size_t i = 0; i < cl; i++)
					buf[len++] = 'z';
				len += (size_t)snprintf(buf + len, cap - len, "\r\n");
			}
			len += (size_t)snprintf(buf + len, cap - len, "0\r\n%s\r\n",
						rand_r(seed) % 4 ? "" : "T: v\r\n");
		} else {
			len += (size_t)snprintf(buf + len, cap - len, "\r\n");
		}
		if (rand_r(seed) % 10 == 0 && len > 0)
			buf[rand_r(seed) % len] ^= (char)(1u << (rand_r(seed) % 8));
	}
	if (rand_r(seed) % 6 == 0 && len > 1)
		len = (size_t)rand_r(seed) % len; /* truncated */
	return len;
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "-n") == 0) {
		long n = strtol(argv[2], NULL, 10);
		unsigned seed = 4242;
		static char buf[8192];
		for (long i = 0; i < n; i++) {
			size_t len = gen(buf, sizeof(buf), &seed);
			LLVMFuzzerTestOneInput((const uint8_t *)buf, len);
		}
		printf("fuzz_httpd: %ld generated inputs survived\n", n);
	} else {
		for (int i = 1; i < argc; i++) {
			FILE *f = fopen(argv[i], "rb");
			if (!f)
				continue;
			static uint8_t buf[1 << 20];
			size_t len = fread(buf, 1, sizeof(buf), f);
			fclose(f);
			LLVMFuzzerTestOneInput(buf, len);
		}
		printf("fuzz_httpd: %d files survived\n", argc - 1);
	}
	uint64_t ok = atomic_load(&srv.stats.http_requests),
		 err = atomic_load(&srv.stats.http_errors);
	printf("fuzz_httpd: %llu HTTP answers, %llu of them errors, %llu connections\n",
	       (unsigned long long)ok, (unsigned long long)err,
	       (unsigned long long)atomic_load(&srv.stats.http_conns_total));
	dnet_server_stop(&srv);
	/* A run that was never answered, or never refused, reached too little. */
	return argc == 3 && (ok == err || err == 0) ? 1 : 0;
}
#endif
