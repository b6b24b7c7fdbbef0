/* fuzz_server.c - feeds arbitrary bytes to a real in-process ellipticsd (mem engine)
 * over a loopback connection: the whole receive path (header validation, payload
 * reads, dispatch) must survive anything without a crash, leak or hang.
 *
 * Built two ways: with clang -fsanitize=fuzzer as a libFuzzer target (make fuzz),
 * or as a plain program (DNET_FUZZ_STANDALONE) that replays files given on the
 * command line, or generates N structured random inputs: `fuzz_server -n 2000`. */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/log.h"
#include "common/proto.h"
#include "common/util.h"
#include "fuzz_talk.h"
#include "server/server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct dnet_server srv;
static struct sockaddr_storage srv_addr;
static socklen_t srv_len;

static void start_once(void)
{
	static int started;
	if (started)
		return;
	started = 1;
	dnet_log_level = DNET_LOG_ERROR;
	dnet_config_defaults(&srv.cfg);
	snprintf(srv.cfg.data, sizeof(srv.cfg.data), "%s", fz_scratch_dir("elliptics-fuzz"));
	snprintf(srv.cfg.listen, sizeof(srv.cfg.listen), "127.0.0.1:0");
	snprintf(srv.cfg.backend, sizeof(srv.cfg.backend), "mem");
	srv.cfg.max_payload = 1u << 20;
	srv.cfg.io_threads = 2;
	if (dnet_server_start(&srv) != 0)
		abort();
	if (dnet_parse_addr(srv.listen_str, 0, &srv_addr, &srv_len) != 0)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	start_once();
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return 0;
	if (connect(fd, (struct sockaddr *)&srv_addr, srv_len) != 0) {
		close(fd);
		return 0;
	}
	fz_talk(fd, data, size, "fuzz_server", "fuzz-hang.bin");
	close(fd);
	return 0;
}

#ifdef DNET_FUZZ_STANDALONE
/* Structured random inputs: valid-looking headers with mutated fields, so the
 * generator reaches past magic checks into payload and dispatch code. */
static size_t gen(uint8_t *buf, size_t cap, unsigned *seed)
{
	size_t len = 0;
	int msgs = 1 + rand_r(seed) % 4;
	for (int m = 0; m < msgs && len + DNET_HDR_SIZE + 64 < cap; m++) {
		struct dnet_cmd_hdr h = {.magic = DNET_MAGIC, .version = DNET_PROTO_VERSION};
		h.cmd = (uint8_t)(rand_r(seed) % 9);
		h.flags = (uint16_t)(rand_r(seed) % 3 == 0 ? (unsigned)rand_r(seed) : DNET_FLAG_NEED_ACK);
		h.trans = (uint64_t)rand_r(seed);
		uint64_t plen = (uint64_t)(rand_r(seed) % 200);
		h.size = rand_r(seed) % 10 == 0 ? (uint64_t)rand_r(seed) << (rand_r(seed) % 40) : plen;
		for (int i = 0; i < DNET_ID_SIZE; i++)
			h.id[i] = (uint8_t)(rand_r(seed) % 4);
		dnet_hdr_encode(buf + len, &h);
		len += DNET_HDR_SIZE;
		if (plen >= DNET_IO_ATTR_SIZE && rand_r(seed) % 2) {
			struct dnet_io_attr io = {.offset = (uint64_t)(rand_r(seed) % 64),
						  .size = plen - DNET_IO_ATTR_SIZE,
						  .total_size = (uint64_t)(rand_r(seed) % 300),
						  .cookie = (uint64_t)(rand_r(seed) % 3),
						  .ioflags = (uint32_t)(rand_r(seed) % 8)};
			dnet_io_attr_encode(buf + len, &io);
			len += DNET_IO_ATTR_SIZE;
			plen -= DNET_IO_ATTR_SIZE;
		}
		for (uint64_t i = 0; i < plen && len < cap; i++)
			buf[len++] = (uint8_t)rand_r(seed);
		if (rand_r(seed) % 8 == 0 && len > 0)
			buf[rand_r(seed) % len] ^= (uint8_t)(1u << (rand_r(seed) % 8));
	}
	if (rand_r(seed) % 6 == 0 && len > 1)
		len = (size_t)rand_r(seed) % len; /* truncated */
	return len;
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "-n") == 0) {
		long n = strtol(argv[2], NULL, 10);
		unsigned seed = 12345;
		static uint8_t buf[8192];
		for (long i = 0; i < n; i++) {
			size_t len = gen(buf, sizeof(buf), &seed);
			LLVMFuzzerTestOneInput(buf, len);
		}
		printf("fuzz_server: %ld generated inputs survived\n", n);
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
		printf("fuzz_server: %d files survived\n", argc - 1);
	}
	uint64_t cmds = 0;
	for (int c = 0; c < DNET_CMD_MAX_; c++)
		cmds += atomic_load(&srv.stats.cmds[c]);
	printf("fuzz_server: %llu commands executed, %llu protocol errors, %llu connections\n",
	       (unsigned long long)cmds, (unsigned long long)atomic_load(&srv.stats.proto_errors),
	       (unsigned long long)atomic_load(&srv.stats.conns_total));
	dnet_server_stop(&srv);
	/* A run that never got past header validation tested nothing. */
	return cmds > 0 ? 0 : 1;
}
#endif
