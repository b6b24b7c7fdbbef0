/* file.c - the "file" storage engine: one checksummed file per object, 256
 * directories by first ID byte, atomic replace by rename, and group commit.
 *
 * ON-DISK LAYOUT (under cfg->path)
 *   LOCK          flock()ed while open: one process per data directory.
 *   tmp/          temp files, same filesystem as the objects so rename() is atomic.
 *                 "<16 hex>.tmp" single-shot writes, "<128 hex id>.<16 hex cookie>.up"
 *                 chunked uploads. Everything here is garbage after a restart.
 *   00/ .. ff/    objects, by the first byte of the ID; file name = 128 hex chars.
 *
 * OBJECT FILE (all integers little-endian)
 *   [0, 128)      header
 *      0 u32 magic "DOBJ"       4 u16 version (1)      6 u16 header size (128)
 *      8 u32 flags (bit 0: upload incomplete - only ever seen in tmp/)
 *     12 u32 block size (65536)
 *     16 u64 data size          24 u64 timestamp (ns since epoch)
 *     32 u8  csum[16]           XXH3-128 of the whole data, canonical form
 *     48 u8  id[64]             the object ID (catches misplaced/renamed files)
 *    112 u64 reserved (0)
 *    120 u64 XXH3-64 of bytes [0, 120) - header checksum
 *   [128, 128+size)             the data, verbatim: a data range is a file range, so
 *                               reads can be handed to sendfile()
 *   [128+size, +8*nblocks)      footer: XXH3-64 of each 64 KiB block of data (last
 *                               block may be short), nblocks = ceil(size / 64 KiB)
 *
 * Block size 64 KiB: a ranged read must read and hash every block it touches, so
 * the block bounds read amplification (a 4 KiB read costs <= 2 blocks = 128 KiB of
 * page cache, ~10 us of XXH3); 1 MiB blocks would make small ranged reads of big
 * objects 16x dearer. The footer costs 8 bytes per 64 KiB (0.012%, 512 KiB for a
 * 4 GiB object), and 64 KiB divides the client's 8 MiB chunk size, so chunked
 * uploads hash whole blocks as they stream in.
 *
 * CRASH SAFETY
 *   An object file is only ever created complete in tmp/ (header, data, footer
 *   written), then rename()d over the final name; rename is atomic, so a reader or a
 *   crash sees the old file or the new one, never a mix. A file is never modified in
 *   place after the rename (range updates copy to a new temp). Temp files are
 *   removed on open, since only the process that created them (holding LOCK) could
 *   finish them.
 *   Write modes: offset 0 without upload flags replaces the object; offset > 0
 *   rewrites a range into a new temp copy (see fb_write_update); chunked uploads
 *   build "<id>.<cookie>.up" in tmp/ and COMMIT renames it like any other write.
 *   Durability: ALWAYS = fdatasync(temp) -> rename -> fsync(dir) -> ack. BATCH = the
 *   temp files of many writes -> syncfs() once (all their data durable) -> rename
 *   them all -> syncfs() again (all renames durable) -> ack each. The first sync
 *   orders data before names: without it a crash could leave a durable name pointing
 *   at an inode whose data never reached the disk. NEVER = rename only; acked
 *   writes survive a process crash (the page cache has them), not a power loss.
 *   If the machine dies anyway (NEVER, disk lying), the header checksum, the ID in
 *   the header and the per-block checksums turn torn or lost data into DNET_ECORRUPT
 *   on read rather than wrong bytes.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "xxh.h"

#include "../common/errors.h"
#include "../common/id.h"
#include "../common/log.h"
#include "../common/util.h"
#include "backend.h"
#include "fault.h"

#define FB_MAGIC 0x4a424f44u /* "DOBJ" */
#define FB_VERSION 1
#define FB_HDR_SIZE 128
#define FB_BLOCK_SIZE 65536u
#define FB_FLAG_INCOMPLETE 0x1u
#define FB_MAX_OBJECT (1ull << 44) /* 16 TiB: keeps every offset sum far from overflow */
/* Objects/ranges up to this many bytes are returned in res->buf: the verification
 * already pulled them into memory, so a copy beats a second trip through the page
 * cache by sendfile() and does not hold an fd across the network send. */
#define FB_SMALL_READ 65536u
#define FB_IO_CHUNK (1u << 20) /* streaming unit for verify/copy/hash loops */
#define FB_SUMS_BATCH 4096u    /* footer entries read/written per syscall */
#define FB_SCRATCH_SIZE (FB_IO_CHUNK + 8u * FB_SUMS_BATCH + FB_HDR_SIZE)
#define FB_HEX_LEN (2 * DNET_ID_SIZE)
#define FB_TMPNAME_MAX (FB_HEX_LEN + 32)
#define FB_UPLOAD_BUCKETS 64
#define FB_PEND_BUCKETS 1024

enum { FB_BE_WRITE, FB_BE_DEL, FB_BE_SYNC };

struct fb_hdr {
	uint32_t flags;
	uint32_t block_size;
	uint64_t size;
	uint64_t timestamp;
	uint8_t csum[16];
	uint8_t id[DNET_ID_SIZE];
};

/* A chunked upload in progress. Its chunks arrive serially on one thread, so only
 * the table (not the entry) needs the lock; `busy` keeps the sweeper off it. */
struct fb_upload {
	struct fb_upload *next;
	uint8_t id[DNET_ID_SIZE];
	uint64_t cookie;
	int fd;
	int busy;
	uint64_t total;
	uint64_t timestamp;
	uint64_t hwm;       /* highest byte written + 1 */
	uint64_t seq_pos;   /* bytes hashed so far, while chunks arrive in order */
	int seq;            /* 0: out-of-order chunk seen, hash the file at COMMIT */
	int unknown;        /* PREPARE said total_size 0: size known only at COMMIT */
	uint64_t written;   /* bytes written (unknown size: COMMIT checks for holes) */
	XXH3_state_t *st;   /* whole-object XXH3-128 while seq */
	uint8_t *carry;     /* partial block not hashed yet (seq) */
	uint32_t carry_len;
	uint64_t active_ns; /* monotonic time of the last chunk */
};

/* A group-commit queue entry. WRITE entries are malloc()ed and owned by the
 * committer; DEL/SYNC entries live on the waiting caller's stack. */
struct fb_bent {
	struct fb_bent *next;
	int kind;
	int status;
	int finished;
	uint8_t id[DNET_ID_SIZE];
	char tmpname[FB_TMPNAME_MAX];
	uint64_t file_size;
	struct dnet_obj_info info;
	dnet_write_done_fn done;
	void *arg;
};

struct dnet_backend {
	char *path;
	int basefd;
	int tmpfd;
	int lockfd;
	int dirfd[256];
	struct dnet_backend_config cfg;

	_Atomic uint64_t objects, bytes, disk_bytes, syncs, synced_writes, corrupt;
	_Atomic uint64_t tmp_seq;
	struct dnet_bad_ring bad; /* found corrupt while sent: by ID */
	atomic_int no_renameat2;

	pthread_mutex_t up_lock;
	struct fb_upload *up[FB_UPLOAD_BUCKETS];
	uint64_t up_last_sweep_ns;

	/* group commit */
	pthread_mutex_t q_lock;
	pthread_cond_t q_cond;    /* wakes the committer */
	pthread_cond_t done_cond; /* a batch completed */
	struct fb_bent *q_head, *q_tail;
	uint32_t q_len;
	uint64_t q_first_ns;
	int q_urgent;
	int q_stop;
	uint32_t pend[FB_PEND_BUCKETS]; /* queued writes per ID bucket */
	pthread_t committer;
	int committer_started;
};

/* ---- small helpers ---------------------------------------------------------- */

static uint64_t fb_nblocks(uint64_t size, uint32_t bs)
{
	return (size + bs - 1) / bs;
}

static uint64_t fb_file_size(uint64_t size)
{
	return FB_HDR_SIZE + size + 8 * fb_nblocks(size, FB_BLOCK_SIZE);
}

/* Inverse of fb_file_size (it is strictly increasing), so the stat counters can
 * be kept from st_size alone without reading headers. */
static uint64_t fb_logical_size(uint64_t fs)
{
	if (fs <= FB_HDR_SIZE)
		return 0;
	uint64_t k = (fs - FB_HDR_SIZE + FB_BLOCK_SIZE + 7) / (FB_BLOCK_SIZE + 8);
	uint64_t over = FB_HDR_SIZE + 8 * k;
	return fs > over ? fs - over : 0;
}

static uint64_t fb_disk_size(uint64_t fs)
{
	return (fs + 4095) & ~4095ull;
}

static void fb_hex(char out[FB_HEX_LEN + 1], const uint8_t *id)
{
	dnet_id_to_hex(out, id, DNET_ID_SIZE);
}

static void fb_hdr_encode(uint8_t out[FB_HDR_SIZE], const struct fb_hdr *h)
{
	memset(out, 0, FB_HDR_SIZE);
	dnet_put_u32(out + 0, FB_MAGIC);
	dnet_put_u16(out + 4, FB_VERSION);
	dnet_put_u16(out + 6, FB_HDR_SIZE);
	dnet_put_u32(out + 8, h->flags);
	dnet_put_u32(out + 12, h->block_size);
	dnet_put_u64(out + 16, h->size);
	dnet_put_u64(out + 24, h->timestamp);
	memcpy(out + 32, h->csum, 16);
	memcpy(out + 48, h->id, DNET_ID_SIZE);
	dnet_put_u64(out + 120, XXH3_64bits(out, 120));
}

/* Every field that later drives an offset or a length is checked here. */
static int fb_hdr_decode(const uint8_t *in, struct fb_hdr *h)
{
	if (dnet_get_u32(in) != FB_MAGIC || dnet_get_u16(in + 4) != FB_VERSION ||
	    dnet_get_u16(in + 6) != FB_HDR_SIZE)
		return DNET_ECORRUPT;
	if (dnet_get_u64(in + 120) != XXH3_64bits(in, 120))
		return DNET_ECORRUPT;
	h->flags = dnet_get_u32(in + 8);
	h->block_size = dnet_get_u32(in + 12);
	h->size = dnet_get_u64(in + 16);
	h->timestamp = dnet_get_u64(in + 24);
	memcpy(h->csum, in + 32, 16);
	memcpy(h->id, in + 48, DNET_ID_SIZE);
	/* other block sizes would be readable, but 64 KiB is all we write */
	if (h->block_size != FB_BLOCK_SIZE || h->size > FB_MAX_OBJECT ||
	    dnet_get_u64(in + 112) != 0)
		return DNET_ECORRUPT;
	return 0;
}

static void fb_info_from_hdr(struct dnet_obj_info *info, const struct fb_hdr *h)
{
	memset(info, 0, sizeof(*info));
	info->size = h->size;
	info->timestamp = h->timestamp;
	memcpy(info->csum, h->csum, 16);
}

static int fb_errno(void)
{
	return dnet_from_errno(errno);
}

/* Per-thread scratch (1 MiB + change) for verify/copy loops: IO threads live long,
 * so one allocation per thread instead of one per read. */
static pthread_key_t fb_scratch_key;
static pthread_once_t fb_scratch_once = PTHREAD_ONCE_INIT;
static _Thread_local uint8_t *fb_scratch_tls;

static void fb_scratch_free(void *p)
{
	free(p);
	fb_scratch_tls = NULL;
}

static void fb_scratch_init(void)
{
	if (pthread_key_create(&fb_scratch_key, fb_scratch_free) != 0)
		abort(); /* only fails when the process is out of keys: a bug */
}

static uint8_t *fb_scratch(void)
{
	if (fb_scratch_tls)
		return fb_scratch_tls;
	pthread_once(&fb_scratch_once, fb_scratch_init);
	uint8_t *p = malloc(FB_SCRATCH_SIZE);
	if (!p)
		return NULL;
	if (pthread_setspecific(fb_scratch_key, p) != 0) {
		free(p);
		return NULL;
	}
	fb_scratch_tls = p;
	return p;
}

static void fb_report_corrupt(struct dnet_backend *b, const uint8_t *id, const char *what)
{
	char hex[FB_HEX_LEN + 1];
	fb_hex(hex, id);
	atomic_fetch_add(&b->corrupt, 1);
	dnet_log_error("file backend %s: object %s is corrupt: %s", b->path, hex, what);
}

/* Checks blocks [b0, b1) held in memory: data points at block b0's first byte,
 * sums at footer entry b0. Returns 0 or DNET_ECORRUPT. */
static int fb_check_blocks(const uint8_t *data, const uint8_t *sums, uint64_t b0, uint64_t b1,
			   uint64_t size, uint32_t bs)
{
	for (uint64_t i = b0; i < b1; i++) {
		uint64_t start = i * bs;
		size_t len = (size_t)(size - start < bs ? size - start : bs);
		if (XXH3_64bits(data + (start - b0 * bs), len) != dnet_get_u64(sums + 8 * (i - b0)))
			return DNET_ECORRUPT;
	}
	return 0;
}

/* Verifies the blocks covering [off, off+len) of an object read from fd, streaming
 * through the scratch buffer; copies the range into out when out != NULL. */
static int fb_verify_range(int fd, const struct fb_hdr *h, uint64_t off, uint64_t len,
			   uint8_t *scratch, uint8_t *out)
{
	const uint32_t bs = h->block_size;
	const uint64_t per = FB_IO_CHUNK / bs;
	uint64_t b = off / bs, bend = fb_nblocks(off + len, bs);
	uint8_t *sums = scratch + FB_IO_CHUNK;

	while (b < bend) {
		uint64_t n = bend - b < per ? bend - b : per;
		uint64_t dstart = b * bs;
		uint64_t dend = (b + n) * bs < h->size ? (b + n) * bs : h->size;
		size_t dlen = (size_t)(dend - dstart);
		int64_t r = dnet_pread_full(fd, scratch, dlen, FB_HDR_SIZE + dstart);
		if (r < 0)
			return (int)r;
		if ((uint64_t)r != dlen)
			return DNET_ECORRUPT; /* truncated */
		r = dnet_pread_full(fd, sums, (size_t)(8 * n), FB_HDR_SIZE + h->size + 8 * b);
		if (r < 0)
			return (int)r;
		if ((uint64_t)r != 8 * n)
			return DNET_ECORRUPT;
		if (fb_check_blocks(scratch, sums, b, b + n, h->size, bs))
			return DNET_ECORRUPT;
		if (out) {
			uint64_t cs = dstart > off ? dstart : off;
			uint64_t ce = dend < off + len ? dend : off + len;
			if (ce > cs)
				memcpy(out + (cs - off), scratch + (cs - dstart), (size_t)(ce - cs));
		}
		b += n;
	}
	return 0;
}

/* Opens an object and decodes its header; pre-reads up to `want` bytes of the file
 * into buf (>= FB_HDR_SIZE). Returns fd >= 0 with *got set, or a DNET_E* code. */
static int fb_open_obj(struct dnet_backend *b, const uint8_t *id, uint8_t *buf, size_t want,
		       struct fb_hdr *h, int64_t *got)
{
	char hex[FB_HEX_LEN + 1];
	fb_hex(hex, id);
	int fd = openat(b->dirfd[id[0]], hex, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fb_errno();
	/* One pread: for a small object this is the whole file. */
	ssize_t n;
	do {
		n = pread(fd, buf, want, 0);
	} while (n < 0 && errno == EINTR);
	if (n < 0) {
		int err = fb_errno();
		close(fd);
		return err;
	}
	if (n < FB_HDR_SIZE) {
		int64_t r = dnet_pread_full(fd, buf, FB_HDR_SIZE, 0);
		if (r < 0) {
			close(fd);
			return (int)r;
		}
		n = (ssize_t)r;
	}
	int err = n < FB_HDR_SIZE ? DNET_ECORRUPT : fb_hdr_decode(buf, h);
	if (!err && (memcmp(h->id, id, DNET_ID_SIZE) != 0 || (h->flags & FB_FLAG_INCOMPLETE)))
		err = DNET_ECORRUPT;
	if (err) {
		close(fd);
		if (err == DNET_ECORRUPT)
			fb_report_corrupt(b, id, "bad header");
		return err;
	}
	*got = n;
	return fd;
}

/* ---- publishing (rename into place) and counters ----------------------------- */

static int fb_tmp_create(struct dnet_backend *b, char *name, int flags)
{
	for (int tries = 0; tries < 100; tries++) {
		uint64_t seq = atomic_fetch_add(&b->tmp_seq, 1);
		snprintf(name, FB_TMPNAME_MAX, "%016llx.tmp", (unsigned long long)seq);
		int fd = openat(b->tmpfd, name, flags | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
		if (fd >= 0 || errno != EEXIST)
			return fd >= 0 ? fd : fb_errno();
	}
	return DNET_EEXIST;
}

static void fb_tmp_unlink(struct dnet_backend *b, const char *name)
{
	if (unlinkat(b->tmpfd, name, 0) < 0 && errno != ENOENT)
		dnet_log_warn("file backend %s: unlink tmp/%s: %s", b->path, name,
			      strerror(errno));
}

static void fb_count_add(struct dnet_backend *b, uint64_t fs)
{
	atomic_fetch_add(&b->bytes, fb_logical_size(fs));
	atomic_fetch_add(&b->disk_bytes, fb_disk_size(fs));
}

static void fb_count_sub(struct dnet_backend *b, uint64_t fs)
{
	atomic_fetch_sub(&b->bytes, fb_logical_size(fs));
	atomic_fetch_sub(&b->disk_bytes, fb_disk_size(fs));
}

/* Renames tmp/<tmpname> over the object; removes the temp file on failure.
 * RENAME_NOREPLACE first: most puts create new keys, and then one syscall tells
 * us whether the object count changes. */
static int fb_publish(struct dnet_backend *b, const uint8_t *id, const char *tmpname,
		      uint64_t file_size)
{
	char hex[FB_HEX_LEN + 1];
	int dfd = b->dirfd[id[0]];
	fb_hex(hex, id);
	if (!atomic_load(&b->no_renameat2)) {
		if (dnet_f_renameat2(b->tmpfd, tmpname, dfd, hex, RENAME_NOREPLACE) == 0) {
			atomic_fetch_add(&b->objects, 1);
			fb_count_add(b, file_size);
			return 0;
		}
		if (errno == EINVAL || errno == ENOSYS)
			atomic_store(&b->no_renameat2, 1);
		else if (errno != EEXIST)
			goto out_err;
	}
	struct stat st;
	int had_old = fstatat(dfd, hex, &st, AT_SYMLINK_NOFOLLOW) == 0;
	if (dnet_f_renameat(b->tmpfd, tmpname, dfd, hex) < 0)
		goto out_err;
	if (had_old)
		fb_count_sub(b, (uint64_t)st.st_size);
	else
		atomic_fetch_add(&b->objects, 1);
	fb_count_add(b, file_size);
	return 0;

out_err:;
	int err = fb_errno();
	dnet_log_error("file backend %s: rename tmp/%s -> %02x/%s: %s", b->path, tmpname, id[0],
		       hex, strerror(errno));
	fb_tmp_unlink(b, tmpname);
	return err;
}

static int fb_unlink_obj(struct dnet_backend *b, const uint8_t *id)
{
	char hex[FB_HEX_LEN + 1];
	int dfd = b->dirfd[id[0]];
	struct stat st;
	fb_hex(hex, id);
	if (fstatat(dfd, hex, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return fb_errno();
	if (unlinkat(dfd, hex, 0) < 0)
		return fb_errno();
	atomic_fetch_sub(&b->objects, 1);
	fb_count_sub(b, (uint64_t)st.st_size);
	return 0;
}

static int fb_sync_fd(struct dnet_backend *b, int fd, int data_only)
{
	int r = data_only ? dnet_f_fdatasync(fd) : dnet_f_fsync(fd);
	atomic_fetch_add(&b->syncs, 1);
	return r < 0 ? fb_errno() : 0;
}

/* ---- group commit ------------------------------------------------------------ */

static uint32_t fb_pend_bucket(const uint8_t *id)
{
	return (uint32_t)(id[1] | (id[2] << 8)) % FB_PEND_BUCKETS;
}

/* Runs one batch. Order matters: all data durable, then all renames/unlinks in
 * arrival order (two writes of one ID: the later wins), then the names durable.
 * syncfs() rather than fdatasync() per file: sequential fdatasyncs each wait for
 * their own journal commit (measured on ext4 here: ~0.3 ms per file, 2-4k writes/s
 * whatever the batch), while one syncfs covers the batch in one commit (up to
 * ~12k writes/s at 32 per batch). Its cost: it also flushes other dirty data on the
 * same filesystem, so give the data directory its own filesystem. */
static void fb_commit_batch(struct dnet_backend *b, struct fb_bent *batch)
{
	int need_sync = 0, applied = 0;
	uint64_t nwrites = 0;
	for (struct fb_bent *e = batch; e; e = e->next)
		if (e->kind != FB_BE_DEL)
			need_sync = 1;

	int err = 0;
	if (need_sync) {
		if (dnet_f_syncfs(b->basefd) < 0)
			err = fb_errno();
		atomic_fetch_add(&b->syncs, 1);
	}
	for (struct fb_bent *e = batch; e; e = e->next) {
		switch (e->kind) {
		case FB_BE_WRITE:
			if (err) {
				fb_tmp_unlink(b, e->tmpname);
				e->status = err;
			} else {
				e->status = fb_publish(b, e->id, e->tmpname, e->file_size);
				applied |= !e->status;
			}
			break;
		case FB_BE_DEL:
			e->status = fb_unlink_obj(b, e->id);
			applied |= !e->status;
			break;
		default:
			e->status = err;
			break;
		}
	}
	if (applied || need_sync) {
		int err2 = dnet_f_syncfs(b->basefd) < 0 ? fb_errno() : 0;
		atomic_fetch_add(&b->syncs, 1);
		if (err2) {
			dnet_log_error("file backend %s: syncfs: %s", b->path, dnet_strerror(err2));
			for (struct fb_bent *e = batch; e; e = e->next)
				if (!e->status || e->kind == FB_BE_SYNC)
					e->status = err2;
		}
	}
	if (err)
		dnet_log_error("file backend %s: syncfs: %s", b->path, dnet_strerror(err));
	for (struct fb_bent *e = batch; e; e = e->next)
		if (e->kind == FB_BE_WRITE && !e->status)
			nwrites++;
	atomic_fetch_add(&b->synced_writes, nwrites);
}

static void *fb_committer(void *arg)
{
	struct dnet_backend *b = arg;
	dnet_thread_name("ell-file-sync");
	pthread_mutex_lock(&b->q_lock);
	for (;;) {
		while (!b->q_head && !b->q_stop)
			pthread_cond_wait(&b->q_cond, &b->q_lock);
		if (!b->q_head)
			break; /* stopping and drained */
		uint64_t deadline = b->q_first_ns + (uint64_t)b->cfg.batch_max_delay_us * 1000;
		while (!b->q_stop && !b->q_urgent && b->q_len < b->cfg.batch_max_ops) {
			uint64_t now = dnet_now_mono_ns();
			if (now >= deadline)
				break;
			struct timespec ts = {.tv_sec = (time_t)(deadline / 1000000000ull),
					      .tv_nsec = (long)(deadline % 1000000000ull)};
			pthread_cond_timedwait(&b->q_cond, &b->q_lock, &ts);
		}
		struct fb_bent *batch = b->q_head;
		b->q_head = b->q_tail = NULL;
		b->q_len = 0;
		b->q_urgent = 0;
		pthread_mutex_unlock(&b->q_lock);

		fb_commit_batch(b, batch);

		/* Acks of writes go out before the bucket counts drop; a waiter for the
		 * same ID then sees the renamed object. */
		struct fb_bent *waiters = NULL;
		for (struct fb_bent *e = batch, *next; e; e = next) {
			next = e->next;
			if (e->kind == FB_BE_WRITE) {
				e->done(e->arg, e->status, e->status ? NULL : &e->info);
			} else {
				e->next = waiters;
				waiters = e;
			}
		}
		pthread_mutex_lock(&b->q_lock);
		for (struct fb_bent *e = batch, *next; e; e = next) {
			next = e->next;
			if (e->kind == FB_BE_WRITE) {
				b->pend[fb_pend_bucket(e->id)]--;
				free(e);
			}
		}
		for (struct fb_bent *e = waiters, *next; e; e = next) {
			next = e->next;
			e->finished = 1; /* e may vanish once the lock drops */
		}
		pthread_cond_broadcast(&b->done_cond);
	}
	pthread_mutex_unlock(&b->q_lock);
	return NULL;
}

static int fb_enqueue(struct dnet_backend *b, struct fb_bent *e)
{
	pthread_mutex_lock(&b->q_lock);
	if (b->q_stop) {
		pthread_mutex_unlock(&b->q_lock);
		return DNET_ESHUTDOWN;
	}
	e->next = NULL;
	if (b->q_tail)
		b->q_tail->next = e;
	else
		b->q_head = e;
	b->q_tail = e;
	if (b->q_len++ == 0) {
		b->q_first_ns = dnet_now_mono_ns();
		pthread_cond_signal(&b->q_cond);
	} else if (b->q_len >= b->cfg.batch_max_ops) {
		pthread_cond_signal(&b->q_cond);
	}
	if (e->kind == FB_BE_WRITE)
		b->pend[fb_pend_bucket(e->id)]++;
	else
		b->q_urgent = 1; /* a caller blocks on it: no point waiting for company */
	pthread_mutex_unlock(&b->q_lock);
	return 0;
}

/* DEL/SYNC through the committer: ordered after queued writes, sharing their syncs. */
static int fb_enqueue_wait(struct dnet_backend *b, int kind, const uint8_t *id)
{
	struct fb_bent e;
	memset(&e, 0, sizeof(e));
	e.kind = kind;
	if (id)
		memcpy(e.id, id, DNET_ID_SIZE);
	int err = fb_enqueue(b, &e);
	if (err)
		return err;
	pthread_mutex_lock(&b->q_lock);
	while (!e.finished)
		pthread_cond_wait(&b->done_cond, &b->q_lock);
	pthread_mutex_unlock(&b->q_lock);
	return e.status;
}

/* A range update reads the current object: first let queued writes of this ID land. */
static void fb_wait_pending(struct dnet_backend *b, const uint8_t *id)
{
	if (b->cfg.fsync != DNET_FSYNC_BATCH)
		return;
	uint32_t k = fb_pend_bucket(id);
	pthread_mutex_lock(&b->q_lock);
	while (b->pend[k]) {
		b->q_urgent = 1;
		pthread_cond_signal(&b->q_cond);
		pthread_cond_wait(&b->done_cond, &b->q_lock);
	}
	pthread_mutex_unlock(&b->q_lock);
}

/* Makes a complete temp file the object, per the fsync policy, and reports to done.
 * Takes ownership of fd and of the temp file. */
static void fb_commit(struct dnet_backend *b, const uint8_t *id, int fd, const char *tmpname,
		      uint64_t file_size, const struct dnet_obj_info *info,
		      dnet_write_done_fn done, void *arg)
{
	int err = 0;
	if (b->cfg.fsync == DNET_FSYNC_ALWAYS)
		err = fb_sync_fd(b, fd, 1);
	if (close(fd) < 0 && !err)
		err = fb_errno();
	if (err) {
		fb_tmp_unlink(b, tmpname);
		done(arg, err, NULL);
		return;
	}
	if (b->cfg.fsync == DNET_FSYNC_BATCH) {
		struct fb_bent *e = calloc(1, sizeof(*e));
		if (!e) {
			fb_tmp_unlink(b, tmpname);
			done(arg, DNET_ENOMEM, NULL);
			return;
		}
		e->kind = FB_BE_WRITE;
		memcpy(e->id, id, DNET_ID_SIZE);
		snprintf(e->tmpname, sizeof(e->tmpname), "%s", tmpname);
		e->file_size = file_size;
		e->info = *info;
		e->done = done;
		e->arg = arg;
		err = fb_enqueue(b, e);
		if (err) {
			free(e);
			fb_tmp_unlink(b, tmpname);
			done(arg, err, NULL);
		}
		return;
	}
	err = fb_publish(b, id, tmpname, file_size);
	if (!err && b->cfg.fsync == DNET_FSYNC_ALWAYS) {
		err = fb_sync_fd(b, b->dirfd[id[0]], 0);
		if (!err)
			atomic_fetch_add(&b->synced_writes, 1);
	}
	done(arg, err, err ? NULL : info);
}

/* ---- writes ------------------------------------------------------------------ */

/* Mode (a): offset 0, no upload flags - the data is the whole new object. */
static void fb_write_whole(struct dnet_backend *b, const struct dnet_write_req *req,
			   dnet_write_done_fn done, void *arg)
{
	const uint8_t *data = req->data;
	uint64_t size = req->io.size;
	uint64_t nb = fb_nblocks(size, FB_BLOCK_SIZE);
	uint8_t sums_small[8 * 16], *sums = sums_small;
	struct fb_hdr h;
	uint8_t hb[FB_HDR_SIZE];
	char tmpname[FB_TMPNAME_MAX];
	struct dnet_obj_info info;
	int err;

	if (nb > 16 && !(sums = malloc((size_t)(8 * nb)))) {
		done(arg, DNET_ENOMEM, NULL);
		return;
	}
	for (uint64_t i = 0; i < nb; i++) {
		uint64_t start = i * FB_BLOCK_SIZE;
		size_t len = (size_t)(size - start < FB_BLOCK_SIZE ? size - start : FB_BLOCK_SIZE);
		dnet_put_u64(sums + 8 * i, XXH3_64bits(data + start, len));
	}
	memset(&h, 0, sizeof(h));
	h.block_size = FB_BLOCK_SIZE;
	h.size = size;
	h.timestamp = req->io.timestamp ? req->io.timestamp : dnet_now_real_ns();
	dnet_csum(data, (size_t)size, h.csum);
	memcpy(h.id, req->id, DNET_ID_SIZE);
	fb_hdr_encode(hb, &h);
	fb_info_from_hdr(&info, &h);

	int fd = fb_tmp_create(b, tmpname, O_WRONLY);
	if (fd < 0) {
		err = fd;
		goto out_free;
	}
	struct iovec iov[3] = {{hb, FB_HDR_SIZE}, {(void *)data, (size_t)size},
			       {sums, (size_t)(8 * nb)}};
	err = dnet_pwritev_full(fd, iov, 3, 0);
	if (err) {
		close(fd);
		fb_tmp_unlink(b, tmpname);
		goto out_free;
	}
	if (sums != sums_small)
		free(sums);
	fb_commit(b, req->id, fd, tmpname, fb_file_size(size), &info, done, arg);
	return;

out_free:
	if (sums != sums_small)
		free(sums);
	done(arg, err, NULL);
}

/* Mode (b): offset > 0 - update [offset, offset+size) of an existing object.
 * A nonexistent object is DNET_ENOENT (we do not invent zero-filled holes), and
 * offset > size is DNET_ERANGE; offset == size appends.
 * The old object is streamed through memory rather than copy_file_range()d: we must
 * read every byte anyway, to verify the old blocks (a corrupt block must not be
 * laundered under a fresh checksum) and to compute the new whole-object checksum,
 * so a kernel-side copy would only add a pass. Cost is O(object size): large
 * objects should be rewritten by chunked upload instead. */
static void fb_write_update(struct dnet_backend *b, const struct dnet_write_req *req,
			    dnet_write_done_fn done, void *arg)
{
	const uint32_t bs = FB_BLOCK_SIZE;
	const uint64_t per = FB_IO_CHUNK / bs;
	uint8_t *scratch = fb_scratch();
	uint8_t *sums = scratch + FB_IO_CHUNK;
	struct fb_hdr oh, h;
	int64_t got;
	char tmpname[FB_TMPNAME_MAX];
	int err = 0, ofd, tfd = -1;
	XXH3_state_t *st = NULL;

	if (!scratch) {
		done(arg, DNET_ENOMEM, NULL);
		return;
	}
	fb_wait_pending(b, req->id);
	ofd = fb_open_obj(b, req->id, scratch, FB_HDR_SIZE, &oh, &got);
	if (ofd < 0) {
		done(arg, ofd, NULL);
		return;
	}
	const uint64_t off = req->io.offset, len = req->io.size;
	if (off > oh.size) {
		err = DNET_ERANGE;
		goto out_close;
	}
	if (len > FB_MAX_OBJECT - off) {
		err = DNET_ETOOBIG;
		goto out_close;
	}
	const uint64_t osize = oh.size, nsize = off + len > osize ? off + len : osize;
	const uint64_t nb = fb_nblocks(nsize, bs), onb = fb_nblocks(osize, bs);
	if (!(st = XXH3_createState()) || XXH3_128bits_reset(st) != XXH_OK) {
		err = DNET_ENOMEM;
		goto out_close;
	}
	tfd = fb_tmp_create(b, tmpname, O_WRONLY);
	if (tfd < 0) {
		err = tfd;
		tfd = -1;
		goto out_close;
	}
	for (uint64_t blk = 0; blk < nb; blk += per) {
		uint64_t n = nb - blk < per ? nb - blk : per;
		uint64_t cs = blk * bs, ce = (blk + n) * bs < nsize ? (blk + n) * bs : nsize;
		/* old bytes of this chunk, verified block by block */
		if (cs < osize) {
			uint64_t oe = ce < osize ? ce : osize;
			uint64_t on = fb_nblocks(oe, bs) - blk;
			int64_t r = dnet_pread_full(ofd, scratch, (size_t)(oe - cs), FB_HDR_SIZE + cs);
			int64_t r2 = r < 0 ? r
					   : dnet_pread_full(ofd, sums, (size_t)(8 * on),
							   FB_HDR_SIZE + osize + 8 * blk);
			if (r < 0 || r2 < 0) {
				err = (int)(r < 0 ? r : r2);
				goto out_unlink;
			}
			if ((uint64_t)r != oe - cs || (uint64_t)r2 != 8 * on) {
				err = DNET_ECORRUPT;
				fb_report_corrupt(b, req->id, "truncated file");
				goto out_unlink;
			}
			for (uint64_t i = blk; i < blk + on && i < onb; i++) {
				uint64_t s = i * bs, e = s + bs < osize ? s + bs : osize;
				if (s >= off && e <= off + len)
					continue; /* entirely overwritten: its old state is moot */
				if (XXH3_64bits(scratch + (s - cs), (size_t)(e - s)) !=
				    dnet_get_u64(sums + 8 * (i - blk))) {
					err = DNET_ECORRUPT;
					fb_report_corrupt(b, req->id, "block checksum mismatch");
					goto out_unlink;
				}
			}
		}
		/* overlay the new bytes */
		uint64_t ws = off > cs ? off : cs, we = off + len < ce ? off + len : ce;
		if (we > ws)
			memcpy(scratch + (ws - cs), (const uint8_t *)req->data + (ws - off),
			       (size_t)(we - ws));
		for (uint64_t i = 0; i < n; i++) {
			uint64_t s = (blk + i) * bs, e = s + bs < nsize ? s + bs : nsize;
			dnet_put_u64(sums + 8 * i, XXH3_64bits(scratch + (s - cs), (size_t)(e - s)));
		}
		XXH3_128bits_update(st, scratch, (size_t)(ce - cs));
		if ((err = dnet_pwrite_full(tfd, scratch, (size_t)(ce - cs), FB_HDR_SIZE + cs)) ||
		    (err = dnet_pwrite_full(tfd, sums, (size_t)(8 * n), FB_HDR_SIZE + nsize + 8 * blk)))
			goto out_unlink;
	}
	memset(&h, 0, sizeof(h));
	h.block_size = bs;
	h.size = nsize;
	h.timestamp = req->io.timestamp ? req->io.timestamp : dnet_now_real_ns();
	XXH128_canonical_t c;
	XXH128_canonicalFromHash(&c, XXH3_128bits_digest(st));
	memcpy(h.csum, c.digest, 16);
	memcpy(h.id, req->id, DNET_ID_SIZE);
	fb_hdr_encode(scratch, &h);
	if ((err = dnet_pwrite_full(tfd, scratch, FB_HDR_SIZE, 0)))
		goto out_unlink;
	XXH3_freeState(st);
	close(ofd);
	struct dnet_obj_info info;
	fb_info_from_hdr(&info, &h);
	fb_commit(b, req->id, tfd, tmpname, fb_file_size(nsize), &info, done, arg);
	return;

out_unlink:
	close(tfd);
	fb_tmp_unlink(b, tmpname);
out_close:
	XXH3_freeState(st);
	close(ofd);
	done(arg, err, NULL);
}

/* ---- chunked uploads ---------------------------------------------------------- */
/* Upload state is in memory only; a restart aborts uploads in flight (their temp
 * files are removed on open) and the client's next chunk gets DNET_ENOENT. Resuming
 * from the temp file would be unsafe: after a power loss its unsynced chunks may
 * read back as zeros and we would checksum garbage as good data. */

static void fb_upload_name(char *out, const uint8_t *id, uint64_t cookie)
{
	char hex[FB_HEX_LEN + 1];
	fb_hex(hex, id);
	snprintf(out, FB_TMPNAME_MAX, "%s.%016llx.up", hex, (unsigned long long)cookie);
}

static uint32_t fb_upload_bucket(const uint8_t *id, uint64_t cookie)
{
	return (uint32_t)((id[3] ^ cookie ^ (cookie >> 17)) % FB_UPLOAD_BUCKETS);
}

static void fb_upload_free(struct dnet_backend *b, struct fb_upload *u, int unlink_file)
{
	if (u->fd >= 0)
		close(u->fd);
	if (unlink_file) {
		char name[FB_TMPNAME_MAX];
		fb_upload_name(name, u->id, u->cookie);
		fb_tmp_unlink(b, name);
	}
	XXH3_freeState(u->st);
	free(u->carry);
	free(u);
}

/* Unlinks u from the table; caller holds up_lock. */
static void fb_upload_detach(struct dnet_backend *b, struct fb_upload *u)
{
	struct fb_upload **pp = &b->up[fb_upload_bucket(u->id, u->cookie)];
	while (*pp && *pp != u)
		pp = &(*pp)->next;
	if (*pp)
		*pp = u->next;
}

static void fb_upload_sweep(struct dnet_backend *b)
{
	uint64_t now = dnet_now_mono_ns();
	uint64_t limit = b->cfg.upload_timeout_s * 1000000000ull;
	uint64_t every = limit < 60000000000ull ? limit : 60000000000ull;
	struct fb_upload *dead = NULL;

	pthread_mutex_lock(&b->up_lock);
	if (dnet_ns_since(now, b->up_last_sweep_ns) < every) {
		pthread_mutex_unlock(&b->up_lock);
		return;
	}
	b->up_last_sweep_ns = now;
	for (int i = 0; i < FB_UPLOAD_BUCKETS; i++) {
		for (struct fb_upload **pp = &b->up[i]; *pp;) {
			struct fb_upload *u = *pp;
			if (!u->busy && dnet_ns_since(now, u->active_ns) > limit) {
				*pp = u->next;
				u->next = dead;
				dead = u;
			} else {
				pp = &u->next;
			}
		}
	}
	pthread_mutex_unlock(&b->up_lock);
	for (struct fb_upload *u = dead, *next; u; u = next) {
		next = u->next;
		char hex[FB_HEX_LEN + 1];
		fb_hex(hex, u->id);
		dnet_log_info("file backend %s: removing abandoned upload %s cookie %llx", b->path,
			      hex, (unsigned long long)u->cookie);
		fb_upload_free(b, u, 1);
	}
}

/* Finds and marks busy; NULL if unknown. */
static struct fb_upload *fb_upload_get(struct dnet_backend *b, const uint8_t *id, uint64_t cookie)
{
	pthread_mutex_lock(&b->up_lock);
	struct fb_upload *u = b->up[fb_upload_bucket(id, cookie)];
	while (u && (u->cookie != cookie || memcmp(u->id, id, DNET_ID_SIZE) != 0))
		u = u->next;
	if (u && u->busy)
		u = NULL; /* the contract serializes an ID; a second user is a bug upstream */
	if (u)
		u->busy = 1;
	pthread_mutex_unlock(&b->up_lock);
	return u;
}

static void fb_upload_put(struct dnet_backend *b, struct fb_upload *u)
{
	pthread_mutex_lock(&b->up_lock);
	u->busy = 0;
	u->active_ns = dnet_now_mono_ns();
	pthread_mutex_unlock(&b->up_lock);
}

/* Detaches (and with `destroy` frees + unlinks) a busy upload. */
static void fb_upload_drop(struct dnet_backend *b, struct fb_upload *u, int destroy)
{
	pthread_mutex_lock(&b->up_lock);
	fb_upload_detach(b, u);
	pthread_mutex_unlock(&b->up_lock);
	if (destroy)
		fb_upload_free(b, u, 1);
}

static int fb_upload_prepare(struct dnet_backend *b, const struct dnet_write_req *req,
			     struct fb_upload **out)
{
	char name[FB_TMPNAME_MAX];
	uint8_t hb[FB_HDR_SIZE];
	struct fb_hdr h;
	int err;

	if (req->io.total_size > FB_MAX_OBJECT)
		return DNET_ETOOBIG;
	fb_upload_sweep(b);
	/* a repeated PREPARE (client retry) restarts the upload */
	struct fb_upload *old = fb_upload_get(b, req->id, req->io.cookie);
	if (old) {
		fb_upload_drop(b, old, 0);
		fb_upload_free(b, old, 0);
	}
	struct fb_upload *u = calloc(1, sizeof(*u));
	if (!u)
		return DNET_ENOMEM;
	memcpy(u->id, req->id, DNET_ID_SIZE);
	u->cookie = req->io.cookie;
	u->total = req->io.total_size;
	u->timestamp = req->io.timestamp ? req->io.timestamp : dnet_now_real_ns();
	u->seq = 1;
	if (u->total == 0) {
		/* Streams of unknown length (a pipe): the footer position is known only at
		 * COMMIT, so checksums are computed then, by reading the data back. */
		u->unknown = 1;
		u->total = FB_MAX_OBJECT;
		u->seq = 0;
	}
	u->busy = 1;
	u->fd = -1;
	if (!(u->st = XXH3_createState()) || XXH3_128bits_reset(u->st) != XXH_OK) {
		err = DNET_ENOMEM;
		goto out_free;
	}
	fb_upload_name(name, u->id, u->cookie);
	u->fd = openat(b->tmpfd, name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (u->fd < 0) {
		err = fb_errno();
		goto out_free;
	}
	/* Reserve the space now: ENOSPC at PREPARE, not after gigabytes of chunks. */
	if (!u->unknown && u->total > FB_BLOCK_SIZE &&
	    dnet_f_fallocate(u->fd, FALLOC_FL_KEEP_SIZE, 0, (off_t)fb_file_size(u->total)) < 0 &&
	    errno != EOPNOTSUPP && errno != ENOSYS) {
		err = fb_errno();
		goto out_unlink;
	}
	memset(&h, 0, sizeof(h));
	h.flags = FB_FLAG_INCOMPLETE;
	h.block_size = FB_BLOCK_SIZE;
	h.size = u->total;
	h.timestamp = u->timestamp;
	memcpy(h.id, u->id, DNET_ID_SIZE);
	fb_hdr_encode(hb, &h);
	if ((err = dnet_pwrite_full(u->fd, hb, FB_HDR_SIZE, 0)))
		goto out_unlink;
	pthread_mutex_lock(&b->up_lock);
	uint32_t k = fb_upload_bucket(u->id, u->cookie);
	u->next = b->up[k];
	b->up[k] = u;
	pthread_mutex_unlock(&b->up_lock);
	*out = u;
	return 0;

out_unlink:
	fb_upload_free(b, u, 1);
	return err;
out_free:
	fb_upload_free(b, u, 0);
	return err;
}

/* Writes footer entries [first, first+n) from sums. */
static int fb_upload_put_sums(struct fb_upload *u, const uint8_t *sums, uint64_t first,
			      uint64_t n)
{
	return n ? dnet_pwrite_full(u->fd, sums, (size_t)(8 * n), FB_HDR_SIZE + u->total + 8 * first)
		 : 0;
}

/* Hashes an in-order chunk: whole blocks go straight to the footer, a partial
 * tail waits in `carry` for the next chunk. */
static int fb_upload_hash(struct fb_upload *u, const uint8_t *p, uint64_t len)
{
	const uint32_t bs = FB_BLOCK_SIZE;
	uint8_t sums[8 * 256];
	uint64_t first = u->seq_pos / bs, n = 0;
	int err;

	if (XXH3_128bits_update(u->st, p, (size_t)len) != XXH_OK)
		return DNET_EINVAL;
	u->seq_pos += len;
	while (len) {
		if (u->carry_len || len < bs) {
			if (!u->carry && !(u->carry = malloc(bs)))
				return DNET_ENOMEM;
			uint32_t take = (uint32_t)(len < bs - u->carry_len ? len : bs - u->carry_len);
			memcpy(u->carry + u->carry_len, p, take);
			u->carry_len += take;
			p += take;
			len -= take;
			if (u->carry_len < bs)
				break;
			dnet_put_u64(sums + 8 * n++, XXH3_64bits(u->carry, bs));
			u->carry_len = 0;
		} else {
			dnet_put_u64(sums + 8 * n++, XXH3_64bits(p, bs));
			p += bs;
			len -= bs;
		}
		if (n == 256) {
			if ((err = fb_upload_put_sums(u, sums, first, n)))
				return err;
			first += n;
			n = 0;
		}
	}
	return fb_upload_put_sums(u, sums, first, n);
}

/* Finishes the checksums: from the streaming state, or by reading the temp file
 * back when chunks came out of order. Fills h. */
static int fb_upload_finish(struct fb_upload *u, struct fb_hdr *h)
{
	const uint32_t bs = FB_BLOCK_SIZE;
	int err;

	if (u->seq) {
		if (u->carry_len) {
			uint8_t s[8];
			dnet_put_u64(s, XXH3_64bits(u->carry, u->carry_len));
			if ((err = fb_upload_put_sums(u, s, u->total / bs, 1)))
				return err;
		}
	} else {
		uint8_t *scratch = fb_scratch();
		if (!scratch)
			return DNET_ENOMEM;
		uint8_t *sums = scratch + FB_IO_CHUNK;
		const uint64_t per = FB_IO_CHUNK / bs;
		if (XXH3_128bits_reset(u->st) != XXH_OK)
			return DNET_EINVAL;
		for (uint64_t blk = 0; blk * bs < u->total; blk += per) {
			uint64_t cs = blk * bs;
			uint64_t ce = cs + FB_IO_CHUNK < u->total ? cs + FB_IO_CHUNK : u->total;
			int64_t r = dnet_pread_full(u->fd, scratch, (size_t)(ce - cs), FB_HDR_SIZE + cs);
			if (r < 0)
				return (int)r;
			if ((uint64_t)r != ce - cs)
				return DNET_EIO;
			uint64_t n = fb_nblocks(ce - cs, bs);
			for (uint64_t i = 0; i < n; i++) {
				uint64_t s = i * bs, e = s + bs < ce - cs ? s + bs : ce - cs;
				dnet_put_u64(sums + 8 * i, XXH3_64bits(scratch + s, (size_t)(e - s)));
			}
			XXH3_128bits_update(u->st, scratch, (size_t)(ce - cs));
			if ((err = fb_upload_put_sums(u, sums, blk, n)))
				return err;
		}
	}
	memset(h, 0, sizeof(*h));
	h->block_size = bs;
	h->size = u->total;
	h->timestamp = u->timestamp;
	XXH128_canonical_t c;
	XXH128_canonicalFromHash(&c, XXH3_128bits_digest(u->st));
	memcpy(h->csum, c.digest, 16);
	memcpy(h->id, u->id, DNET_ID_SIZE);
	return 0;
}

/* Mode (c): PREPARE / PLAIN / COMMIT. Errors that only concern the request (range,
 * incomplete COMMIT) leave the upload alive; IO errors abort it and remove its temp
 * file. COMMIT with fewer than total_size bytes written is DNET_EINVAL. */
static void fb_write_upload(struct dnet_backend *b, const struct dnet_write_req *req,
			    dnet_write_done_fn done, void *arg)
{
	const struct dnet_io_attr *io = &req->io;
	struct fb_upload *u = NULL;
	int err;

	if (io->ioflags & DNET_IO_PREPARE) {
		if ((err = fb_upload_prepare(b, req, &u))) {
			done(arg, err, NULL);
			return;
		}
	} else if (!(u = fb_upload_get(b, req->id, io->cookie))) {
		done(arg, DNET_ENOENT, NULL);
		return;
	}
	if (io->offset > u->total || io->size > u->total - io->offset) {
		fb_upload_put(b, u);
		done(arg, DNET_ERANGE, NULL);
		return;
	}
	if (io->size) {
		err = dnet_pwrite_full(u->fd, req->data, (size_t)io->size, FB_HDR_SIZE + io->offset);
		if (!err && u->seq && io->offset == u->seq_pos)
			err = fb_upload_hash(u, req->data, io->size);
		else if (!err && u->seq)
			u->seq = 0; /* out of order: hash at COMMIT */
		if (err)
			goto out_abort;
		if (io->offset + io->size > u->hwm)
			u->hwm = io->offset + io->size;
		u->written += io->size;
	}
	if (!(io->ioflags & DNET_IO_COMMIT)) {
		struct dnet_obj_info info;
		memset(&info, 0, sizeof(info));
		info.size = u->hwm;
		info.timestamp = u->timestamp;
		fb_upload_put(b, u);
		done(arg, 0, &info);
		return;
	}
	if (u->unknown) {
		/* Each chunk is sent once, so bytes written == end means no holes. */
		if (u->written != u->hwm) {
			fb_upload_put(b, u);
			done(arg, DNET_EINVAL, NULL);
			return;
		}
		u->total = u->hwm;
	}
	/* Out of order, the end alone cannot show a hole: fewer bytes written than the
	 * size means one (each chunk is sent once). */
	if ((u->seq ? u->seq_pos : u->hwm) != u->total || u->written < u->total) {
		fb_upload_put(b, u);
		done(arg, DNET_EINVAL, NULL);
		return;
	}
	struct fb_hdr h;
	uint8_t hb[FB_HDR_SIZE];
	if ((err = fb_upload_finish(u, &h)))
		goto out_abort;
	fb_hdr_encode(hb, &h);
	if ((err = dnet_pwrite_full(u->fd, hb, FB_HDR_SIZE, 0)))
		goto out_abort;
	struct dnet_obj_info info;
	char name[FB_TMPNAME_MAX];
	fb_info_from_hdr(&info, &h);
	fb_upload_name(name, u->id, u->cookie);
	fb_upload_drop(b, u, 0);
	int fd = u->fd;
	u->fd = -1;
	fb_upload_free(b, u, 0);
	fb_commit(b, req->id, fd, name, fb_file_size(h.size), &info, done, arg);
	return;

out_abort:
	fb_upload_drop(b, u, 1);
	done(arg, err, NULL);
}

static void fb_write(struct dnet_backend *b, const struct dnet_write_req *req,
		     dnet_write_done_fn done, void *arg)
{
	const uint32_t fl = req->io.ioflags;
	if ((fl & ~DNET_IO_ENGINE_FLAGS) || (req->io.size && !req->data)) {
		done(arg, DNET_EINVAL, NULL);
		return;
	}
	if (req->io.size > FB_MAX_OBJECT) {
		done(arg, DNET_ETOOBIG, NULL);
		return;
	}
	if (fl & (DNET_IO_PREPARE | DNET_IO_PLAIN | DNET_IO_COMMIT))
		fb_write_upload(b, req, done, arg);
	else if (req->io.offset == 0)
		fb_write_whole(b, req, done, arg);
	else
		fb_write_update(b, req, done, arg);
}

/* ---- reads and the rest ------------------------------------------------------- */

/* size 0 = to the end; a range running past the end is clipped to it. */
/* Verification of a read's blocks as they are sent (DNET_READ_DEFER_VERIFY): the
 * sender checks FB_IO_CHUNK of blocks at a time before they may go out. */
struct fb_ver {
	struct dnet_read_verify v;
	struct dnet_backend *b;
	struct fb_hdr h;
	uint64_t next, end; /* data offsets: verified up to next; the read ends at end */
};

static int fbv_check(struct dnet_read_verify *v, int fd, uint64_t from, uint64_t *end)
{
	struct fb_ver *x = (struct fb_ver *)v;
	const uint64_t d = from - FB_HDR_SIZE, bs = x->h.block_size;
	if (from < FB_HDR_SIZE || d >= x->end)
		return DNET_EINVAL;
	if (d < x->next) {
		*end = FB_HDR_SIZE + x->next;
		return 0;
	}
	uint8_t *scratch = fb_scratch();
	if (!scratch)
		return DNET_ENOMEM;
	uint64_t start = d / bs * bs, stop = start + FB_IO_CHUNK;
	if (stop > x->end)
		stop = x->end;
	int err = fb_verify_range(fd, &x->h, start, stop - start, scratch, NULL);
	if (err == DNET_ECORRUPT) {
		fb_report_corrupt(x->b, x->v.id, "data block checksum mismatch");
		dnet_bad_ring_note(&x->b->bad, x->v.id, 0);
	}
	if (err)
		return err;
	x->next = fb_nblocks(stop, bs) * bs;
	if (x->next > x->h.size)
		x->next = x->h.size;
	*end = FB_HDR_SIZE + x->next;
	return 0;
}

static void fbv_free(struct dnet_read_verify *v)
{
	free(v);
}

static int fb_read(struct dnet_backend *b, const uint8_t *id, uint64_t offset, uint64_t size,
		   uint32_t flags, struct dnet_read_res *res)
{
	uint8_t *scratch = fb_scratch();
	struct fb_hdr h;
	int64_t got;
	int err = 0;

	memset(res, 0, sizeof(*res));
	res->fd = -1;
	if (!scratch)
		return DNET_ENOMEM;
	int fd = fb_open_obj(b, id, scratch, FB_HDR_SIZE + FB_SMALL_READ + 8, &h, &got);
	if (fd < 0)
		return fd;
	if (offset > h.size) {
		err = DNET_ERANGE;
		goto out_close;
	}
	uint64_t len = h.size - offset;
	if (size && size < len)
		len = size;
	fb_info_from_hdr(&res->info, &h);
	const int verify = !(flags & DNET_FLAG_NOCSUM);
	const uint64_t fs = fb_file_size(h.size);

	if (len == 0)
		goto out_close;
	if (fs <= (uint64_t)got) {
		/* whole file in hand from the first pread */
		uint64_t b0 = offset / h.block_size, b1 = fb_nblocks(offset + len, h.block_size);
		if (verify && fb_check_blocks(scratch + FB_HDR_SIZE + b0 * h.block_size,
					      scratch + FB_HDR_SIZE + h.size + 8 * b0, b0, b1,
					      h.size, h.block_size)) {
			err = DNET_ECORRUPT;
			goto out_corrupt;
		}
		if (!(res->buf = malloc((size_t)len))) {
			err = DNET_ENOMEM;
			goto out_close;
		}
		memcpy(res->buf, scratch + FB_HDR_SIZE + offset, (size_t)len);
		res->len = len;
		goto out_close;
	}
	if (len <= FB_SMALL_READ) {
		if (!(res->buf = malloc((size_t)len))) {
			err = DNET_ENOMEM;
			goto out_close;
		}
		if (verify) {
			err = fb_verify_range(fd, &h, offset, len, scratch, res->buf);
		} else {
			int64_t r = dnet_pread_full(fd, res->buf, (size_t)len, FB_HDR_SIZE + offset);
			err = r < 0 ? (int)r : (uint64_t)r != len ? DNET_ECORRUPT : 0;
		}
		if (err) {
			free(res->buf);
			res->buf = NULL;
			if (err == DNET_ECORRUPT)
				goto out_corrupt;
			goto out_close;
		}
		res->len = len;
		goto out_close;
	}
	if (verify && (flags & DNET_READ_DEFER_VERIFY) && !dnet_bad_ring_known(&b->bad, id, 0)) {
		struct fb_ver *x = calloc(1, sizeof(*x));
		if (!x) {
			err = DNET_ENOMEM;
			goto out_close;
		}
		x->v.check = fbv_check;
		x->v.free = fbv_free;
		memcpy(x->v.id, id, DNET_ID_SIZE);
		x->b = b;
		x->h = h;
		x->next = offset; /* nothing verified: the first check starts at offset */
		x->end = offset + len;
		res->verify = &x->v;
	} else if (verify && (err = fb_verify_range(fd, &h, offset, len, scratch, NULL))) {
		if (err == DNET_ECORRUPT)
			goto out_corrupt;
		goto out_close;
	}
	if (!verify) {
		/* unverified, yet the file must hold the range: a truncated file would cut
		 * the reply short in the middle of its stream (found by fuzz_file) */
		struct stat st;
		if (fstat(fd, &st) < 0) {
			err = fb_errno();
			goto out_close;
		}
		if ((uint64_t)st.st_size < FB_HDR_SIZE + offset + len) {
			err = DNET_ECORRUPT;
			goto out_corrupt;
		}
	}
	res->fd = fd;
	res->file_offset = FB_HDR_SIZE + offset;
	res->len = len;
	return 0;

out_corrupt:
	fb_report_corrupt(b, id, "data block checksum mismatch");
out_close:
	close(fd);
	if (err)
		memset(&res->info, 0, sizeof(res->info));
	return err;
}

static int fb_lookup(struct dnet_backend *b, const uint8_t *id, struct dnet_obj_info *info)
{
	uint8_t hb[FB_HDR_SIZE];
	struct fb_hdr h;
	int64_t got;
	int fd = fb_open_obj(b, id, hb, sizeof(hb), &h, &got);
	if (fd < 0)
		return fd;
	close(fd);
	fb_info_from_hdr(info, &h);
	return 0;
}

static int fb_del(struct dnet_backend *b, const uint8_t *id)
{
	if (b->cfg.fsync == DNET_FSYNC_BATCH)
		return fb_enqueue_wait(b, FB_BE_DEL, id);
	int err = fb_unlink_obj(b, id);
	if (!err && b->cfg.fsync == DNET_FSYNC_ALWAYS)
		err = fb_sync_fd(b, b->dirfd[id[0]], 0);
	return err;
}

static int fb_sync(struct dnet_backend *b)
{
	if (b->cfg.fsync == DNET_FSYNC_BATCH)
		return fb_enqueue_wait(b, FB_BE_SYNC, NULL);
	atomic_fetch_add(&b->syncs, 1);
	return dnet_f_syncfs(b->basefd) < 0 ? fb_errno() : 0;
}

static int fb_is_obj_name(const char *name, int dir, uint8_t *id)
{
	return strlen(name) == FB_HEX_LEN && dnet_id_from_hex(id, name) == 0 && id[0] == dir;
}

static int fb_iterate(struct dnet_backend *b, dnet_iterate_fn fn, void *arg)
{
	for (int i = 0; i < 256; i++) {
		/* a fresh open file description: readdir position is not shared */
		int dfd = openat(b->dirfd[i], ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd < 0)
			return fb_errno();
		DIR *d = fdopendir(dfd);
		if (!d) {
			int err = fb_errno();
			close(dfd);
			return err;
		}
		int ret = 0;
		for (;;) {
			uint8_t id[DNET_ID_SIZE];
			struct dnet_obj_info info;
			errno = 0;
			struct dirent *de = readdir(d);
			if (!de) {
				if (errno)
					ret = fb_errno();
				break;
			}
			if (!fb_is_obj_name(de->d_name, i, id))
				continue;
			int err = fb_lookup(b, id, &info);
			if (err == DNET_ENOENT || err == DNET_ECORRUPT)
				continue; /* deleted meanwhile / already reported */
			if (err) {
				ret = err;
				break;
			}
			if ((ret = fn(arg, id, &info)))
				break;
		}
		closedir(d);
		if (ret)
			return ret;
	}
	return 0;
}

static int fb_stat(struct dnet_backend *b, struct dnet_backend_stat *st)
{
	struct statvfs vfs;
	memset(st, 0, sizeof(*st));
	st->objects = atomic_load(&b->objects);
	st->bytes = atomic_load(&b->bytes);
	st->disk_bytes = atomic_load(&b->disk_bytes);
	st->syncs = atomic_load(&b->syncs);
	st->synced_writes = atomic_load(&b->synced_writes);
	st->corrupt = atomic_load(&b->corrupt);
	if (fstatvfs(b->basefd, &vfs) < 0)
		return fb_errno();
	st->disk_free = (uint64_t)vfs.f_bavail * vfs.f_frsize;
	return 0;
}

/* ---- open / close ------------------------------------------------------------- */

static int fb_mkdir_p(const char *path)
{
	char buf[4096];
	size_t len = strlen(path);
	if (len == 0 || len >= sizeof(buf))
		return DNET_EINVAL;
	memcpy(buf, path, len + 1);
	for (size_t i = 1; i <= len; i++) {
		if (buf[i] != '/' && buf[i] != '\0')
			continue;
		char c = buf[i];
		buf[i] = '\0';
		if (mkdir(buf, 0755) < 0 && errno != EEXIST)
			return fb_errno();
		buf[i] = c;
	}
	return 0;
}

/* Every temp file belongs to a previous incarnation (we hold LOCK): remove all. */
static int fb_clean_tmp(struct dnet_backend *b)
{
	int dfd = openat(b->tmpfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return fb_errno();
	DIR *d = fdopendir(dfd);
	if (!d) {
		close(dfd);
		return fb_errno();
	}
	struct dirent *de;
	uint64_t removed = 0;
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (unlinkat(b->tmpfd, de->d_name, 0) == 0)
			removed++;
		else
			dnet_log_warn("file backend %s: cannot remove tmp/%s: %s", b->path,
				      de->d_name, strerror(errno));
	}
	closedir(d);
	dnet_log_info("file backend %s: removed %llu stale temp files", b->path,
		      (unsigned long long)removed);
	return 0;
}

static int fb_scan(struct dnet_backend *b)
{
	uint64_t t0 = dnet_now_mono_ns();
	for (int i = 0; i < 256; i++) {
		int dfd = openat(b->dirfd[i], ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd < 0)
			return fb_errno();
		DIR *d = fdopendir(dfd);
		if (!d) {
			close(dfd);
			return fb_errno();
		}
		struct dirent *de;
		while ((de = readdir(d))) {
			uint8_t id[DNET_ID_SIZE];
			struct stat st;
			if (!fb_is_obj_name(de->d_name, i, id) ||
			    fstatat(b->dirfd[i], de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
			    !S_ISREG(st.st_mode))
				continue;
			atomic_fetch_add(&b->objects, 1);
			fb_count_add(b, (uint64_t)st.st_size);
		}
		closedir(d);
	}
	dnet_log_info("file backend %s: %llu objects, %llu bytes, scanned in %.3f s", b->path,
		      (unsigned long long)atomic_load(&b->objects),
		      (unsigned long long)atomic_load(&b->bytes),
		      (double)(dnet_now_mono_ns() - t0) / 1e9);
	return 0;
}

static void fb_free(struct dnet_backend *b)
{
	for (int i = 0; i < FB_UPLOAD_BUCKETS; i++) {
		for (struct fb_upload *u = b->up[i], *next; u; u = next) {
			next = u->next;
			fb_upload_free(b, u, 1);
		}
	}
	for (int i = 0; i < 256; i++)
		if (b->dirfd[i] >= 0)
			close(b->dirfd[i]);
	if (b->tmpfd >= 0)
		close(b->tmpfd);
	if (b->basefd >= 0)
		close(b->basefd);
	if (b->lockfd >= 0)
		close(b->lockfd); /* drops the flock */
	pthread_mutex_destroy(&b->up_lock);
	dnet_bad_ring_destroy(&b->bad);
	pthread_mutex_destroy(&b->q_lock);
	pthread_cond_destroy(&b->q_cond);
	pthread_cond_destroy(&b->done_cond);
	free(b->path);
	free(b);
}

static int fb_opendir_at(int at, const char *name, int *created)
{
	if (mkdirat(at, name, 0755) == 0)
		*created = 1;
	else if (errno != EEXIST)
		return fb_errno();
	int fd = openat(at, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	return fd < 0 ? fb_errno() : fd;
}

static int fb_open(const struct dnet_backend_config *cfg, struct dnet_backend **out)
{
	struct dnet_backend *b;
	int err, created = 0;

	if (!cfg || !cfg->path || !cfg->path[0] || cfg->fsync < DNET_FSYNC_NEVER ||
	    cfg->fsync > DNET_FSYNC_BATCH)
		return DNET_EINVAL;
	if (!(b = calloc(1, sizeof(*b))))
		return DNET_ENOMEM;
	b->basefd = b->tmpfd = b->lockfd = -1;
	for (int i = 0; i < 256; i++)
		b->dirfd[i] = -1;
	b->cfg = *cfg;
	if (!b->cfg.batch_max_ops)
		b->cfg.batch_max_ops = 1;
	if (!b->cfg.upload_timeout_s)
		b->cfg.upload_timeout_s = 3600;
	b->up_last_sweep_ns = dnet_now_mono_ns();
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_mutex_init(&b->up_lock, NULL);
	dnet_bad_ring_init(&b->bad);
	pthread_mutex_init(&b->q_lock, NULL);
	pthread_cond_init(&b->q_cond, &ca);
	pthread_cond_init(&b->done_cond, NULL);
	pthread_condattr_destroy(&ca);
	if (!(b->path = strdup(cfg->path))) {
		err = DNET_ENOMEM;
		goto out_free;
	}
	b->cfg.path = b->path;

	if ((err = fb_mkdir_p(b->path)))
		goto out_log;
	if ((b->basefd = open(b->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
		err = fb_errno();
		goto out_log;
	}
	b->lockfd = openat(b->basefd, "LOCK", O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (b->lockfd < 0) {
		err = fb_errno();
		goto out_log;
	}
	if (flock(b->lockfd, LOCK_EX | LOCK_NB) < 0) {
		err = errno == EWOULDBLOCK ? DNET_EBUSY : fb_errno();
		dnet_log_error("file backend %s: data directory is in use by another process",
			       b->path);
		goto out_free;
	}
	if ((b->tmpfd = fb_opendir_at(b->basefd, "tmp", &created)) < 0) {
		err = b->tmpfd;
		goto out_log;
	}
	for (int i = 0; i < 256; i++) {
		char name[3];
		snprintf(name, sizeof(name), "%02x", i);
		if ((b->dirfd[i] = fb_opendir_at(b->basefd, name, &created)) < 0) {
			err = b->dirfd[i];
			goto out_log;
		}
	}
	if (created && cfg->fsync != DNET_FSYNC_NEVER && dnet_f_fsync(b->basefd) < 0) {
		err = fb_errno();
		goto out_log;
	}
	if ((err = fb_clean_tmp(b)) || (err = fb_scan(b)))
		goto out_log;
	if (cfg->fsync == DNET_FSYNC_BATCH) {
		if (pthread_create(&b->committer, NULL, fb_committer, b) != 0) {
			err = DNET_ENOMEM;
			goto out_log;
		}
		b->committer_started = 1;
	}
	dnet_log_info("file backend %s: open, fsync=%s", b->path,
		      dnet_fsync_policy_name(cfg->fsync));
	*out = b;
	return 0;

out_log:
	dnet_log_error("file backend %s: open failed: %s", cfg->path, dnet_strerror(err));
out_free:
	fb_free(b);
	return err;
}

static void fb_close(struct dnet_backend *b)
{
	if (!b)
		return;
	if (b->committer_started) {
		pthread_mutex_lock(&b->q_lock);
		b->q_stop = 1;
		pthread_cond_signal(&b->q_cond);
		pthread_mutex_unlock(&b->q_lock);
		pthread_join(b->committer, NULL); /* it drains the queue first */
	}
	fb_free(b);
}

const struct dnet_backend_ops dnet_file_backend_ops = {
	.name = "file",
	.open = fb_open,
	.close = fb_close,
	.write = fb_write,
	.read = fb_read,
	.del = fb_del,
	.lookup = fb_lookup,
	.iterate = fb_iterate,
	.sync = fb_sync,
	.stat = fb_stat,
};
