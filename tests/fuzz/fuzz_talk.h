/* fuzz_talk.h - the client side of the network fuzz harnesses (fuzz_server,
 * fuzz_httpd): send an input to an in-process server over a connected socket while
 * draining its replies, half-close, and read until the server closes. A server
 * that makes no progress for 20 s is a finding: the input is saved and we abort.
 *
 * The 20 s are measured on the clock, not by one poll() timeout: libFuzzer's
 * -timeout runs a SIGALRM every timeout/2 + 1 s (13 s for scripts/fuzz's 25), and a
 * poll() it interrupts returns EINTR, which is not a hang. (Treating it as one made
 * both harnesses abort "after 20 s without progress" 13 or 26 s into a run.) */
#ifndef DNET_FUZZ_TALK_H
#define DNET_FUZZ_TALK_H

#include <errno.h>
#include <ftw.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "common/util.h"

/* The in-process server's data directory, removed with what the server wrote
 * into it when the run ends (one per run was left behind in /tmp). */
static char fz_scratch[64];

static inline int fz_rm_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static inline void fz_scratch_remove(void)
{
	nftw(fz_scratch, fz_rm_cb, 8, FTW_DEPTH | FTW_PHYS);
}

static inline const char *fz_scratch_dir(const char *name)
{
	snprintf(fz_scratch, sizeof(fz_scratch), "/tmp/%s.XXXXXX", name);
	if (!mkdtemp(fz_scratch))
		abort();
	atexit(fz_scratch_remove);
	return fz_scratch;
}

#define FZ_HANG_NS (20ull * 1000000000ull) /* a loaded machine with ASan: 40 ms inputs took 5 s */

static inline void fz_talk(int fd, const uint8_t *data, size_t size, const char *who,
			   const char *hang_file)
{
	struct pollfd p = {.fd = fd};
	size_t off = 0;
	char sink[65536];
	uint64_t progress = dnet_now_mono_ns();
	if (size == 0)
		shutdown(fd, SHUT_WR);
	for (;;) {
		p.events = POLLIN | (off < size ? POLLOUT : 0);
		int r = poll(&p, 1, 1000);
		if (r < 0 && errno != EINTR) {
			perror("fuzz: poll");
			abort();
		}
		if (r <= 0) {
			if (dnet_now_mono_ns() - progress < FZ_HANG_NS)
				continue;
			FILE *f = fopen(hang_file, "wb");
			if (f) {
				fwrite(data, 1, size, f);
				fclose(f);
			}
			fprintf(stderr, "%s: no progress for 20 s on a %zu-byte input (saved as %s)\n",
				who, size, hang_file);
			abort();
		}
		if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
			ssize_t n = recv(fd, sink, sizeof(sink), MSG_DONTWAIT);
			if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN))
				break;
			if (n > 0)
				progress = dnet_now_mono_ns();
		}
		if (off < size && (p.revents & POLLOUT)) {
			ssize_t n = send(fd, data + off, size - off, MSG_NOSIGNAL | MSG_DONTWAIT);
			if (n < 0 && errno != EINTR && errno != EAGAIN)
				break;
			if (n > 0) {
				off += (size_t)n;
				progress = dnet_now_mono_ns();
				if (off == size)
					shutdown(fd, SHUT_WR);
			}
		}
	}
}

#endif
