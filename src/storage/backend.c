/* backend.c - the registry of storage engines and helpers they share. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "xxh.h"

#include "common/errors.h"
#include "backend.h"
#include "fault.h"

extern const struct dnet_backend_ops dnet_blob_backend_ops;
extern const struct dnet_backend_ops dnet_file_backend_ops;
extern const struct dnet_backend_ops dnet_lmdb_backend_ops;
extern const struct dnet_backend_ops dnet_bdb_backend_ops;
extern const struct dnet_backend_ops dnet_mem_backend_ops;

/* nginx-style static module list: add an engine here and it is selectable. */
static const struct dnet_backend_ops *const engines[] = {
	&dnet_file_backend_ops,
	&dnet_blob_backend_ops,
	&dnet_lmdb_backend_ops,
	&dnet_bdb_backend_ops,
	&dnet_mem_backend_ops,
};

const struct dnet_backend_ops *dnet_backend_find(const char *name)
{
	for (size_t i = 0; i < sizeof(engines) / sizeof(engines[0]); i++)
		if (strcmp(engines[i]->name, name) == 0)
			return engines[i];
	return NULL;
}

const char *dnet_backend_names(void)
{
	static char names[256];
	if (!names[0]) {
		size_t off = 0;
		for (size_t i = 0; i < sizeof(engines) / sizeof(engines[0]); i++) {
			size_t l = strlen(engines[i]->name);
			if (off + l + 2 >= sizeof(names))
				break;
			if (off)
				names[off++] = '|';
			memcpy(names + off, engines[i]->name, l);
			off += l;
		}
		names[off] = '\0';
	}
	return names;
}

int dnet_fsync_policy_parse(const char *s)
{
	if (strcmp(s, "never") == 0)
		return DNET_FSYNC_NEVER;
	if (strcmp(s, "always") == 0)
		return DNET_FSYNC_ALWAYS;
	if (strcmp(s, "batch") == 0)
		return DNET_FSYNC_BATCH;
	return -1;
}

const char *dnet_fsync_policy_name(int policy)
{
	switch (policy) {
	case DNET_FSYNC_NEVER:
		return "never";
	case DNET_FSYNC_ALWAYS:
		return "always";
	case DNET_FSYNC_BATCH:
		return "batch";
	default:
		return "?";
	}
}

_Thread_local int dnet_backend_batching;

void dnet_backend_config_defaults(struct dnet_backend_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->fsync = DNET_FSYNC_NEVER;
	cfg->batch_max_delay_us = 0;
	cfg->batch_max_ops = 1024;
	cfg->upload_timeout_s = 3600;
}

void dnet_csum(const void *data, size_t len, uint8_t out[16])
{
	XXH128_hash_t h = XXH3_128bits(data, len);
	XXH128_canonical_t c;
	XXH128_canonicalFromHash(&c, h);
	memcpy(out, c.digest, 16);
}

int64_t dnet_pread_full(int fd, void *buf, size_t len, uint64_t off)
{
	size_t done = 0;
	while (done < len) {
		ssize_t n = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return dnet_from_errno(errno);
		}
		if (n == 0)
			break;
		done += (size_t)n;
	}
	return (int64_t)done;
}

int dnet_pwritev_full(int fd, struct iovec *iov, int cnt, uint64_t off)
{
	while (cnt > 0) {
		ssize_t n = dnet_f_pwritev(fd, iov, cnt, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return dnet_from_errno(errno);
		}
		if (n == 0)
			return DNET_EIO;
		off += (uint64_t)n;
		size_t left = (size_t)n;
		while (cnt > 0 && left >= iov->iov_len) {
			left -= iov->iov_len;
			iov++;
			cnt--;
		}
		if (cnt > 0) {
			iov->iov_base = (char *)iov->iov_base + left;
			iov->iov_len -= left;
		}
	}
	return 0;
}

int dnet_pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
	struct iovec iov = {(void *)buf, len};
	return len ? dnet_pwritev_full(fd, &iov, 1, off) : 0;
}

void dnet_bad_ring_init(struct dnet_bad_ring *r)
{
	memset(r, 0, sizeof(*r));
	pthread_mutex_init(&r->lock, NULL);
}

void dnet_bad_ring_destroy(struct dnet_bad_ring *r)
{
	pthread_mutex_destroy(&r->lock);
}

void dnet_bad_ring_note(struct dnet_bad_ring *r, const uint8_t *id, uint64_t tag)
{
	pthread_mutex_lock(&r->lock);
	unsigned i = r->n++ % DNET_BAD_RING;
	memcpy(r->e[i].id, id, sizeof(r->e[i].id));
	r->e[i].tag = tag;
	pthread_mutex_unlock(&r->lock);
}

int dnet_bad_ring_known(struct dnet_bad_ring *r, const uint8_t *id, uint64_t tag)
{
	int found = 0;
	pthread_mutex_lock(&r->lock);
	for (unsigned i = 0; i < DNET_BAD_RING && i < r->n && !found; i++)
		found = r->e[i].tag == tag && memcmp(r->e[i].id, id, sizeof(r->e[i].id)) == 0;
	pthread_mutex_unlock(&r->lock);
	return found;
}

/* ---- hashing stored bytes in place ------------------------------------------------ */

/* A read through a mapping raises SIGBUS where pread would return EIO (a disk
 * error) or a short count (past the end of the file). The handler turns it into
 * DNET_EIO for the thread that was hashing; anywhere else SIGBUS stays fatal. */
/* volatile: only the signal handler reads it, so without it the compiler may drop
 * or move the stores around a memcpy it knows does not look at it */
static _Thread_local sigjmp_buf *volatile tl_bus;
static pthread_once_t bus_once = PTHREAD_ONCE_INIT;
static int bus_ready;

static void bus_handler(int sig, siginfo_t *si, void *uc)
{
	(void)si;
	(void)uc;
	if (tl_bus)
		siglongjmp(*tl_bus, 1);
	signal(sig, SIG_DFL);
	raise(sig);
}

static void bus_install(void)
{
	dnet_map_install();
}

int dnet_map_install(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = bus_handler;
	/* SA_NODEFER: the handler leaves by siglongjmp to a sigsetjmp(env, 0), which
	 * does not restore the signal mask, so SIGBUS must not be blocked in it */
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	bus_ready = sigaction(SIGBUS, &sa, NULL) == 0;
	return bus_ready ? 0 : -1;
}

int dnet_map_ready(void)
{
	pthread_once(&bus_once, bus_install);
	return bus_ready;
}

/* Runs fn(arg), which reads through a file mapping, with SIGBUS caught: 0, or
 * DNET_EIO if a read faulted (fn stopped there). */
static int bus_guarded(void (*fn)(void *), void *arg)
{
	sigjmp_buf env;
	int err = 0;
	if (sigsetjmp(env, 0) == 0) {
		tl_bus = &env;
		atomic_signal_fence(memory_order_seq_cst); /* armed before the first touch */
		fn(arg);
		atomic_signal_fence(memory_order_seq_cst); /* disarmed after the last */
	} else {
		err = DNET_EIO;
	}
	tl_bus = NULL;
	return err;
}

struct hash_blocks {
	const uint8_t *p;
	uint64_t len;
	uint32_t block;
	uint64_t *out;
};

static void hash_blocks(void *arg)
{
	const struct hash_blocks *h = arg;
	for (uint64_t o = 0, i = 0; o < h->len; o += h->block, i++)
		h->out[i] = XXH3_64bits(h->p + o, h->len - o < h->block ? (size_t)(h->len - o)
									  : h->block);
}

int dnet_hash_blocks_in(const void *p, uint64_t len, uint32_t block, uint64_t *out)
{
	struct hash_blocks h = {(const uint8_t *)p, len, block, out};
	return bus_guarded(hash_blocks, &h);
}

int dnet_hash_blocks_mapped(int fd, uint64_t off, uint64_t len, uint32_t block, uint64_t *out)
{
	struct stat sb;
	if (!dnet_map_ready() || !len || !block || fstat(fd, &sb) < 0 ||
	    off + len > (uint64_t)sb.st_size)
		return 1;
	const uint64_t pg = (uint64_t)sysconf(_SC_PAGESIZE);
	const uint64_t moff = off & ~(pg - 1);
	const size_t mlen = (size_t)(off + len - moff);
	void *m = mmap(NULL, mlen, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, (off_t)moff);
	if (m == MAP_FAILED)
		return 1;
	int err = dnet_hash_blocks_in((const uint8_t *)m + (off - moff), len, block, out);
	munmap(m, mlen);
	return err;
}

struct map_copy {
	void *dst;
	const void *src;
	size_t len;
};

static void map_copy(void *arg)
{
	const struct map_copy *c = arg;
	memcpy(c->dst, c->src, c->len);
}

int dnet_map_copy(void *dst, const void *src, size_t len)
{
	struct map_copy c = {dst, src, len};
	return bus_guarded(map_copy, &c);
}
