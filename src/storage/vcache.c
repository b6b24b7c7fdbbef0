/* vcache.c - the verified-data cache (see vcache.h).
 *
 * An entry maps one record's data (MAP_SHARED, read-only) and keeps how many of
 * its units, from the first on, are verified and locked (`prefix`). One reader at
 * a time extends the prefix (`claiming`): it locks the next units, hashes them in
 * the mapping and reports. Locked memory is only released by unmapping a whole
 * entry. Keeping to a prefix bounds an entry to two kernel mappings (mlock splits
 * a mapping where the locked part ends), so the process stays far from
 * vm.max_map_count with VC_MAX_ENTRIES entries.
 *
 * Everything is under one mutex, taken once per verification step (1 MiB of a
 * large read); logging, fstat and munmap happen outside it. Reference counts: the
 * table holds one on each entry it lists, each reader one; the cache itself is
 * held by the engine and by every entry not yet destroyed, so a reader that
 * outlives the engine (a reply still draining after close) puts its entry back
 * safely. Only idle entries (no reader) are evicted: one in use would free
 * nothing until its reader is done.
 *
 * (AddressSanitizer's mlock() does nothing: in that build the pages are not
 * actually locked. The ctime check, which the tests exercise, works the same.) */
#include "vcache.h"

#include <errno.h>
#include <linux/capability.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "backend.h"

#define VC_BUCKETS 4096u
#define VC_MAX_ENTRIES 4096u
/* An entry is made only when its file has not changed for this long: a write in
 * the same timestamp tick as the recorded change time would not move it. */
#define VC_SETTLE_NS (50ull * 1000 * 1000)
#define VC_SETTLE_COARSE_NS (2500ull * 1000 * 1000) /* whole-second timestamps */
#define VC_WARN_EVERY_NS (60ull * 1000 * 1000 * 1000)

struct dnet_vpin {
	struct dnet_vcache *c;
	const void *owner;
	uint64_t key;
	struct dnet_vpin *hnext;	 /* hash chain */
	struct dnet_vpin *lprev, *lnext; /* LRU list, most recent first */
	struct dnet_vpin *dnext;	 /* to destroy, after the lock is dropped */
	int ref;
	int dead;     /* no longer listed: trusted by nobody */
	int claiming; /* a reader is extending the prefix: [prefix, cend) */
	unsigned reads;
	struct timespec ctime;
	void *mbase;
	size_t mlen;
	const uint8_t *data;
	uint64_t off, len, nunits, prefix, cend;
	uint32_t unit;
	uint64_t bytes; /* accounted in c->used: the prefix and a claim */
};

struct dnet_vcache {
	pthread_mutex_t lock;
	uint64_t limit, used;
	int refs; /* the engine's, and one per entry not yet destroyed */
	int closed, refused, privileged;
	struct dnet_vpin *lru_head, *lru_tail;
	uint64_t entries, hit_bytes, dropped, evicted, warned_ns;
	char name[96];
	struct dnet_vpin *tab[VC_BUCKETS];
};

static uint32_t bucket(const void *owner, uint64_t key)
{
	uint64_t h = ((uint64_t)(uintptr_t)owner * 0x9E3779B97F4A7C15ull) ^ (key * 0xC2B2AE3D27D4EB4Full);
	return (uint32_t)((h ^ (h >> 29)) % VC_BUCKETS);
}

/* Bytes of units [a, b) of p. */
static uint64_t span(const struct dnet_vpin *p, uint64_t a, uint64_t b)
{
	uint64_t e = b * p->unit < p->len ? b * p->unit : p->len;
	return e - a * p->unit;
}

/* CAP_IPC_LOCK in the effective set: RLIMIT_MEMLOCK does not apply to us. */
static int may_lock_freely(void)
{
	struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3};
	struct __user_cap_data_struct d[_LINUX_CAPABILITY_U32S_3];
	memset(d, 0, sizeof(d));
	if (syscall(SYS_capget, &h, d) != 0)
		return 0;
	return (int)((d[CAP_IPC_LOCK / 32].effective >> (CAP_IPC_LOCK % 32)) & 1);
}

/* Filesystems whose page cache can be refilled from elsewhere without the
 * locked pages' owner knowing (network, FUSE, cluster filesystems). */
static int remote_fs(long type)
{
	static const long magic[] = {
	    0x6969,	 /* NFS */	   0x517B,	/* SMB */     (long)0xFE534D42, /* SMB2 */
	    (long)0xFF534D42, /* CIFS */ 0x65735546, /* FUSE */ 0x00C36400, /* Ceph */
	    0x01021997, /* 9p */	   0x5346414F, /* AFS */ 0x73757245, /* Coda */
	    0x7461636F, /* OCFS2 */	   0x01161970, /* GFS2 */
	};
	for (size_t i = 0; i < sizeof(magic) / sizeof(magic[0]); i++)
		if (type == magic[i])
			return 1;
	return 0;
}

struct dnet_vcache *dnet_vcache_new(uint64_t limit, const char *path)
{
	if (!limit)
		return NULL;
	const char *name = path ? path : "";
	struct statfs sf;
	if (path && statfs(path, &sf) == 0 && remote_fs((long)sf.f_type)) {
		dnet_log_info("verified cache %s: off (a network or FUSE filesystem: its pages can "
			      "change behind a lock); large reads are hashed every time", name);
		return NULL;
	}
	const int privileged = may_lock_freely();
	struct rlimit rl;
	if (!privileged && getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
	    rl.rlim_cur < limit) {
		/* what we may lock, less a margin for page rounding */
		uint64_t can = (uint64_t)rl.rlim_cur - (uint64_t)rl.rlim_cur / 8;
		if (can < (1u << 20)) {
			dnet_log_info("verified cache %s: off (RLIMIT_MEMLOCK is %llu bytes and no "
				      "CAP_IPC_LOCK); large reads are hashed every time",
				      name, (unsigned long long)rl.rlim_cur);
			return NULL;
		}
		dnet_log_info("verified cache %s: %llu bytes, not %llu: RLIMIT_MEMLOCK is %llu and "
			      "no CAP_IPC_LOCK (LimitMEMLOCK= in systemd raises it)", name,
			      (unsigned long long)can, (unsigned long long)limit,
			      (unsigned long long)rl.rlim_cur);
		limit = can;
	}
	struct dnet_vcache *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	pthread_mutex_init(&c->lock, NULL);
	c->limit = limit;
	c->refs = 1;
	c->privileged = privileged;
	snprintf(c->name, sizeof(c->name), "%s", name);
	return c;
}

static void cache_unref(struct dnet_vcache *c)
{
	pthread_mutex_lock(&c->lock);
	int last = --c->refs == 0;
	pthread_mutex_unlock(&c->lock);
	if (last) {
		pthread_mutex_destroy(&c->lock);
		free(c);
	}
}

/* Frees entries unlinked and unreferenced under the lock (chained by dnext). */
static void destroy(struct dnet_vpin *p)
{
	while (p) {
		struct dnet_vpin *n = p->dnext;
		struct dnet_vcache *c = p->c;
		munmap(p->mbase, p->mlen); /* unlocks its pages */
		free(p);
		cache_unref(c);
		p = n;
	}
}

/* Drops a reference (lock held); the last one returns the entry's bytes to the
 * budget and queues it on *gone for destroy(). */
static void unref_locked(struct dnet_vpin *p, struct dnet_vpin **gone)
{
	if (--p->ref > 0)
		return;
	p->c->used -= p->bytes;
	p->bytes = 0;
	p->dnext = *gone;
	*gone = p;
}

static void lru_unlink(struct dnet_vcache *c, struct dnet_vpin *p)
{
	if (p->lprev)
		p->lprev->lnext = p->lnext;
	else
		c->lru_head = p->lnext;
	if (p->lnext)
		p->lnext->lprev = p->lprev;
	else
		c->lru_tail = p->lprev;
	p->lprev = p->lnext = NULL;
}

/* Moves p (listed, or new) to the front. */
static void lru_front(struct dnet_vcache *c, struct dnet_vpin *p)
{
	if (c->lru_head == p)
		return;
	if (p->lprev) /* listed and not the head */
		lru_unlink(c, p);
	p->lnext = c->lru_head;
	if (c->lru_head)
		c->lru_head->lprev = p;
	c->lru_head = p;
	if (!c->lru_tail)
		c->lru_tail = p;
}

/* Takes p out of the table and the LRU list (lock held): nobody trusts it from
 * now on; the table's reference goes. */
static void unlink_locked(struct dnet_vpin *p, struct dnet_vpin **gone)
{
	struct dnet_vcache *c = p->c;
	if (p->dead)
		return;
	p->dead = 1;
	struct dnet_vpin **pp = &c->tab[bucket(p->owner, p->key)];
	while (*pp && *pp != p)
		pp = &(*pp)->hnext;
	if (*pp)
		*pp = p->hnext;
	lru_unlink(c, p);
	c->entries--;
	unref_locked(p, gone);
}

/* Evicts idle entries (held by the table only), least recently used first and
 * never `keep`, so that `need` more bytes fit in the budget and, with `slot`, one
 * more entry fits in the table. All or nothing: 1 if it made the room. */
static int make_room_locked(struct dnet_vcache *c, const struct dnet_vpin *keep, uint64_t need,
			    int slot, struct dnet_vpin **gone)
{
	uint64_t freed = 0, n = 0;
	struct dnet_vpin *v = c->lru_tail, *upto = NULL;
	while (c->used - freed + need > c->limit || (slot && c->entries - n >= VC_MAX_ENTRIES)) {
		while (v && (v == keep || v->ref > 1))
			v = v->lprev;
		if (!v)
			return 0;
		freed += v->bytes;
		n++;
		upto = v;
		v = v->lprev;
	}
	for (v = c->lru_tail; upto;) {
		struct dnet_vpin *prev = v->lprev;
		if (v != keep && v->ref == 1) {
			c->evicted++;
			int last = v == upto;
			unlink_locked(v, gone);
			if (last)
				break;
		}
		v = prev;
	}
	return 1;
}

static struct dnet_vpin *find_locked(struct dnet_vcache *c, const void *owner, uint64_t key)
{
	for (struct dnet_vpin *p = c->tab[bucket(owner, key)]; p; p = p->hnext)
		if (p->owner == owner && p->key == key)
			return p;
	return NULL;
}

void dnet_vcache_free(struct dnet_vcache *c)
{
	if (!c)
		return;
	struct dnet_vpin *gone = NULL;
	pthread_mutex_lock(&c->lock);
	c->closed = 1;
	while (c->lru_head)
		unlink_locked(c->lru_head, &gone);
	pthread_mutex_unlock(&c->lock);
	destroy(gone);
	cache_unref(c);
}

static int ts_eq(const struct timespec *a, const struct timespec *b)
{
	return a->tv_sec == b->tv_sec && a->tv_nsec == b->tv_nsec;
}

/* The listed entry for (owner, key) describing this record, with a reference
 * and a read counted; a stale one (another record at the key) goes. */
static struct dnet_vpin *take_locked(struct dnet_vcache *c, const void *owner, uint64_t key,
				     uint64_t off, uint64_t len, uint32_t unit,
				     struct dnet_vpin **gone)
{
	struct dnet_vpin *p = find_locked(c, owner, key);
	if (p && (p->off != off || p->len != len || p->unit != unit)) {
		unlink_locked(p, gone);
		p = NULL;
	}
	if (p) {
		p->ref++;
		if (p->reads < 1000000)
			p->reads++;
		lru_front(c, p);
	}
	return p;
}

struct dnet_vpin *dnet_vpin_get(struct dnet_vcache *c, const void *owner, uint64_t key, int fd,
				uint64_t off, uint64_t len, uint32_t unit)
{
	if (!c || !len || !unit || !dnet_map_ready())
		return NULL;
	struct dnet_vpin *gone = NULL, *p = NULL;
	pthread_mutex_lock(&c->lock);
	int off_now = c->closed || c->refused || len > c->limit;
	if (!off_now)
		p = take_locked(c, owner, key, off, len, unit, &gone);
	pthread_mutex_unlock(&c->lock);
	destroy(gone);
	gone = NULL;
	if (p || off_now)
		return p;

	struct stat sb;
	if (fstat(fd, &sb) < 0 || off + len > (uint64_t)sb.st_size)
		return NULL;
	uint64_t ct = (uint64_t)sb.st_ctim.tv_sec * 1000000000ull + (uint64_t)sb.st_ctim.tv_nsec;
	uint64_t settle = sb.st_ctim.tv_nsec == 0 ? VC_SETTLE_COARSE_NS : VC_SETTLE_NS;
	if (dnet_now_real_ns() < ct + settle)
		return NULL; /* changed just now: a later read will cache it */
	const uint64_t pg = (uint64_t)sysconf(_SC_PAGESIZE), moff = off & ~(pg - 1);
	if (off + len - moff > (uint64_t)SIZE_MAX / 2 || !(p = calloc(1, sizeof(*p))))
		return NULL;
	p->mlen = (size_t)(off + len - moff);
	p->mbase = mmap(NULL, p->mlen, PROT_READ, MAP_SHARED, fd, (off_t)moff);
	if (p->mbase == MAP_FAILED) {
		free(p);
		return NULL;
	}
	p->c = c;
	p->owner = owner;
	p->key = key;
	p->ctime = sb.st_ctim;
	p->data = (const uint8_t *)p->mbase + (off - moff);
	p->off = off;
	p->len = len;
	p->unit = unit;
	p->nunits = (len + unit - 1) / unit;

	struct dnet_vpin *q = NULL;
	pthread_mutex_lock(&c->lock);
	if (!c->closed && !c->refused && !(q = take_locked(c, owner, key, off, len, unit, &gone)) &&
	    make_room_locked(c, NULL, 0, 1, &gone)) {
		p->ref = 2; /* the table's and the caller's */
		p->reads = 1;
		c->refs++;
		uint32_t h = bucket(owner, key);
		p->hnext = c->tab[h];
		c->tab[h] = p;
		lru_front(c, p);
		c->entries++;
		q = p;
		p = NULL;
	}
	pthread_mutex_unlock(&c->lock);
	destroy(gone);
	if (p) { /* another reader made it first, or no room */
		munmap(p->mbase, p->mlen);
		free(p);
	}
	return q;
}

void dnet_vpin_put(struct dnet_vpin *p)
{
	if (!p)
		return;
	struct dnet_vpin *gone = NULL;
	pthread_mutex_lock(&p->c->lock);
	unref_locked(p, &gone);
	pthread_mutex_unlock(&p->c->lock);
	destroy(gone);
}

int dnet_vpin_covered(struct dnet_vpin *p, int fd, uint64_t first, uint64_t n)
{
	if (!n || first >= p->nunits || n > p->nunits - first)
		return 0;
	struct dnet_vcache *c = p->c;
	struct stat sb;
	int changed = fstat(fd, &sb) < 0 || !ts_eq(&sb.st_ctim, &p->ctime);
	struct dnet_vpin *gone = NULL;
	int r, dropped = 0;
	pthread_mutex_lock(&c->lock);
	if (changed && !p->dead) {
		c->dropped++;
		unlink_locked(p, &gone);
		dropped = 1;
	}
	if (p->dead) {
		r = -1;
	} else if (first + n <= p->prefix) {
		r = 1;
		c->hit_bytes += span(p, first, first + n);
		lru_front(c, p);
	} else {
		r = 0;
	}
	pthread_mutex_unlock(&c->lock);
	destroy(gone);
	if (dropped)
		dnet_log_debug("verified cache %s: a file changed; its data is verified again",
			       c->name);
	return r;
}

const uint8_t *dnet_vpin_claim(struct dnet_vpin *p, uint64_t first, uint64_t n)
{
	struct dnet_vcache *c = p->c;
	if (!n || first >= p->nunits)
		return NULL;
	const uint64_t e = n < p->nunits - first ? first + n : p->nunits;
	struct dnet_vpin *gone = NULL;
	uint64_t from = 0, need = 0;
	pthread_mutex_lock(&c->lock);
	int ok = !p->dead && !c->refused && !p->claiming && p->reads >= 2 && first <= p->prefix &&
		 e > p->prefix;
	if (ok) {
		from = p->prefix;
		need = span(p, from, e);
		ok = make_room_locked(c, p, need, 0, &gone);
	}
	if (ok) {
		p->claiming = 1;
		p->cend = e;
		c->used += need;
		p->bytes += need;
	}
	pthread_mutex_unlock(&c->lock);
	destroy(gone);
	gone = NULL;
	if (!ok)
		return NULL;

	const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
	uintptr_t lo = (uintptr_t)(p->data + from * p->unit) & ~(pg - 1);
	uintptr_t hi = ((uintptr_t)(p->data + from * p->unit + need) + pg - 1) & ~(pg - 1);
	if (mlock((void *)lo, hi - lo) == 0)
		return p->data + first * p->unit;

	/* Whatever got locked stays so until the entry is unmapped: it goes now. */
	int e0 = errno;
	const uint64_t now = dnet_now_mono_ns();
	pthread_mutex_lock(&c->lock);
	p->claiming = 0;
	p->bytes -= need;
	c->used -= need;
	int refused_now = 0, shrunk = 0, warn = 0;
	uint64_t used = c->used;
	if (!c->refused && (e0 == EPERM || (!c->privileged && used == 0))) {
		c->refused = refused_now = 1;
	} else if (!c->refused && !c->privileged && c->limit > used) {
		c->limit = used; /* what RLIMIT_MEMLOCK let us lock */
		shrunk = 1;
	} else if (c->privileged && now - c->warned_ns >= VC_WARN_EVERY_NS) {
		c->warned_ns = now; /* out of memory or mappings: try again later */
		warn = 1;
	}
	unlink_locked(p, &gone);
	pthread_mutex_unlock(&c->lock);
	destroy(gone);
	if (refused_now)
		dnet_log_warn("verified cache %s: cannot lock memory (%s); large reads are hashed "
			      "every time. Raise RLIMIT_MEMLOCK (LimitMEMLOCK= in systemd) or set "
			      "--verified-cache 0 to silence this", c->name, strerror(e0));
	if (shrunk)
		dnet_log_warn("verified cache %s: the kernel refused to lock more than %llu bytes "
			      "(%s): the cache is limited to that; raise RLIMIT_MEMLOCK for more",
			      c->name, (unsigned long long)used, strerror(e0));
	if (warn)
		dnet_log_warn("verified cache %s: locking %llu bytes failed (%s) with %llu locked; "
			      "that object is hashed on every read for now", c->name,
			      (unsigned long long)need, strerror(e0), (unsigned long long)used);
	return NULL;
}

void dnet_vpin_done(struct dnet_vpin *p, int ok)
{
	struct dnet_vcache *c = p->c;
	struct dnet_vpin *gone = NULL;
	pthread_mutex_lock(&c->lock);
	if (p->claiming) {
		p->claiming = 0;
		if (ok) {
			p->prefix = p->cend;
		} else { /* the claimed bytes leave the budget; the entry goes */
			uint64_t b = span(p, p->prefix, p->cend);
			p->bytes -= b;
			c->used -= b;
			unlink_locked(p, &gone);
		}
	}
	pthread_mutex_unlock(&c->lock);
	destroy(gone);
}

void dnet_vcache_drop(struct dnet_vcache *c, const void *owner, uint64_t key)
{
	if (!c)
		return;
	struct dnet_vpin *gone = NULL;
	pthread_mutex_lock(&c->lock);
	struct dnet_vpin *p = find_locked(c, owner, key);
	if (p)
		unlink_locked(p, &gone);
	pthread_mutex_unlock(&c->lock);
	destroy(gone);
}

void dnet_vcache_drop_owner(struct dnet_vcache *c, const void *owner)
{
	if (!c)
		return;
	struct dnet_vpin *gone = NULL;
	pthread_mutex_lock(&c->lock);
	for (struct dnet_vpin *p = c->lru_head; p;) {
		struct dnet_vpin *n = p->lnext;
		if (p->owner == owner)
			unlink_locked(p, &gone);
		p = n;
	}
	pthread_mutex_unlock(&c->lock);
	destroy(gone);
}

void dnet_vcache_stat(struct dnet_vcache *c, struct dnet_vcache_stat *st)
{
	memset(st, 0, sizeof(*st));
	if (!c)
		return;
	pthread_mutex_lock(&c->lock);
	st->limit = c->refused ? 0 : c->limit;
	st->bytes = c->used;
	st->entries = c->entries;
	st->hit_bytes = c->hit_bytes;
	st->dropped = c->dropped;
	st->evicted = c->evicted;
	pthread_mutex_unlock(&c->lock);
}
