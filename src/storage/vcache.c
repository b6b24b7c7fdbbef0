/* vcache.c - the verified-data cache (see vcache.h).
 *
 * An entry maps one record's data (MAP_SHARED, read-only) and keeps two bitmaps
 * over its units: `set` (verified and locked) and `busy` (claimed by a reader that
 * is locking and hashing them). Locked memory is only ever released by unmapping
 * a whole entry: a unit's first and last pages may be shared with its neighbours,
 * so unlocking one unit could unlock a page another one relies on.
 *
 * Everything is under one mutex, taken once per verification step (1 MiB of a
 * large read), so contention is not a concern. Reference counts: the table holds
 * one on each entry it lists, each reader one; the cache itself is held by the
 * engine and by every entry not yet destroyed, so a reader that outlives the
 * engine (a reply still draining after close) puts its entry back safely.
 *
 * (AddressSanitizer's mlock() does nothing: in that build the pages are not
 * actually locked. The ctime check, which the tests exercise, works the same.) */
#include "vcache.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "backend.h"

#define VC_BUCKETS 4096u
/* An entry is made only when its file has not changed for this long: a write in
 * the same timestamp tick as the recorded change time would not move it. */
#define VC_SETTLE_NS (50ull * 1000 * 1000)

struct dnet_vpin {
	struct dnet_vcache *c;
	const void *owner;
	uint64_t key;
	struct dnet_vpin *hnext;	 /* hash chain */
	struct dnet_vpin *lprev, *lnext; /* LRU list, most recent first */
	struct dnet_vpin *dnext;	 /* to destroy, after the lock is dropped */
	int ref;
	int dead; /* no longer listed: trusted by nobody */
	struct timespec ctime;
	void *mbase;
	size_t mlen;
	const uint8_t *data;
	uint64_t len, nunits;
	uint32_t unit;
	uint64_t bytes; /* accounted in c->used */
	uint64_t *set, *busy;
};

struct dnet_vcache {
	pthread_mutex_t lock;
	uint64_t limit, used;
	int refs; /* the engine's, and one per entry not yet destroyed */
	int closed, refused;
	struct dnet_vpin *lru_head, *lru_tail;
	uint64_t entries, hit_bytes, dropped, evicted;
	char name[96];
	struct dnet_vpin *tab[VC_BUCKETS];
};

static uint32_t bucket(const void *owner, uint64_t key)
{
	uint64_t h = ((uint64_t)(uintptr_t)owner * 0x9E3779B97F4A7C15ull) ^ (key * 0xC2B2AE3D27D4EB4Full);
	return (uint32_t)((h ^ (h >> 29)) % VC_BUCKETS);
}

static int bit(const uint64_t *m, uint64_t u)
{
	return (int)((m[u / 64] >> (u % 64)) & 1);
}

static void bit_set(uint64_t *m, uint64_t u)
{
	m[u / 64] |= 1ull << (u % 64);
}

static void bit_clear(uint64_t *m, uint64_t u)
{
	m[u / 64] &= ~(1ull << (u % 64));
}

static uint64_t unit_bytes(const struct dnet_vpin *p, uint64_t u)
{
	uint64_t s = u * p->unit;
	return p->len - s < p->unit ? p->len - s : p->unit;
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

struct dnet_vcache *dnet_vcache_new(uint64_t limit, const char *name)
{
	if (!limit)
		return NULL;
	struct rlimit rl;
	if (!may_lock_freely() && getrlimit(RLIMIT_MEMLOCK, &rl) == 0 &&
	    rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < limit) {
		/* what we may lock, less a margin for page rounding */
		uint64_t can = (uint64_t)rl.rlim_cur - (uint64_t)rl.rlim_cur / 8;
		if (can < (1u << 20)) {
			dnet_log_info("verified cache %s: off (RLIMIT_MEMLOCK is %llu bytes and no "
				      "CAP_IPC_LOCK); large reads are hashed every time",
				      name ? name : "", (unsigned long long)rl.rlim_cur);
			return NULL;
		}
		dnet_log_info("verified cache %s: %llu bytes, not %llu: RLIMIT_MEMLOCK is %llu and "
			      "no CAP_IPC_LOCK (LimitMEMLOCK= in systemd raises it)", name ? name : "",
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
	snprintf(c->name, sizeof(c->name), "%s", name ? name : "");
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
		if (p->mbase)
			munmap(p->mbase, p->mlen); /* unlocks its pages */
		free(p->set);
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

struct dnet_vpin *dnet_vpin_get(struct dnet_vcache *c, const void *owner, uint64_t key, int fd,
				uint64_t off, uint64_t len, uint32_t unit)
{
	if (!c || !len || !unit || !dnet_map_ready())
		return NULL;
	pthread_mutex_lock(&c->lock);
	struct dnet_vpin *p = c->closed || c->refused ? NULL : find_locked(c, owner, key);
	int off_now = c->closed || c->refused || len > c->limit;
	if (p) {
		p->ref++;
		lru_front(c, p);
	}
	pthread_mutex_unlock(&c->lock);
	if (p || off_now)
		return p;

	struct stat sb;
	if (fstat(fd, &sb) < 0 || off + len > (uint64_t)sb.st_size)
		return NULL;
	uint64_t ct = (uint64_t)sb.st_ctim.tv_sec * 1000000000ull + (uint64_t)sb.st_ctim.tv_nsec;
	uint64_t now = dnet_now_real_ns();
	if (now < ct + VC_SETTLE_NS)
		return NULL; /* written just now: a later read will cache it */
	const uint64_t pg = (uint64_t)sysconf(_SC_PAGESIZE), moff = off & ~(pg - 1);
	if (off + len - moff > (uint64_t)SIZE_MAX / 2)
		return NULL;
	p = calloc(1, sizeof(*p));
	uint64_t nunits = (len + unit - 1) / unit, words = (nunits + 63) / 64;
	if (!p || !(p->set = calloc(2 * words, sizeof(uint64_t)))) {
		free(p);
		return NULL;
	}
	p->busy = p->set + words;
	p->mlen = (size_t)(off + len - moff);
	p->mbase = mmap(NULL, p->mlen, PROT_READ, MAP_SHARED, fd, (off_t)moff);
	if (p->mbase == MAP_FAILED) {
		free(p->set);
		free(p);
		return NULL;
	}
	p->c = c;
	p->owner = owner;
	p->key = key;
	p->ctime = sb.st_ctim;
	p->data = (const uint8_t *)p->mbase + (off - moff);
	p->len = len;
	p->unit = unit;
	p->nunits = nunits;

	struct dnet_vpin *gone = NULL, *q;
	pthread_mutex_lock(&c->lock);
	if (c->closed || c->refused) {
		q = NULL;
	} else if ((q = find_locked(c, owner, key))) { /* another reader made it first */
		q->ref++;
		lru_front(c, q);
	} else {
		p->ref = 2; /* the table's and the caller's */
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
	if (p) {
		munmap(p->mbase, p->mlen);
		free(p->set);
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
	struct dnet_vcache *c = p->c;
	struct stat sb;
	int changed = fstat(fd, &sb) < 0 || !ts_eq(&sb.st_ctim, &p->ctime);
	struct dnet_vpin *gone = NULL;
	int r = 1, dropped = 0;
	pthread_mutex_lock(&c->lock);
	if (changed && !p->dead) {
		c->dropped++;
		unlink_locked(p, &gone);
		dropped = 1;
	}
	if (p->dead) {
		r = -1;
	} else {
		uint64_t e = first + n < p->nunits ? first + n : p->nunits, bytes = 0;
		for (uint64_t u = first; u < e && r; u++) {
			if (!bit(p->set, u))
				r = 0;
			else
				bytes += unit_bytes(p, u);
		}
		if (r) {
			c->hit_bytes += bytes;
			lru_front(c, p);
		}
	}
	pthread_mutex_unlock(&c->lock);
	destroy(gone);
	if (dropped)
		dnet_log_debug("verified cache %s: a file changed; its data is verified again",
			       c->name);
	return r;
}

/* Returns the claim on units [first, e) that are busy (lock held): their bytes
 * leave the budget, or become verified (ok). */
static void settle_locked(struct dnet_vpin *p, uint64_t first, uint64_t e, int ok)
{
	for (uint64_t u = first; u < e; u++) {
		if (!bit(p->busy, u))
			continue;
		bit_clear(p->busy, u);
		if (ok) {
			bit_set(p->set, u);
		} else {
			uint64_t b = unit_bytes(p, u);
			p->bytes -= b;
			p->c->used -= b;
		}
	}
}

const uint8_t *dnet_vpin_claim(struct dnet_vpin *p, uint64_t first, uint64_t n)
{
	struct dnet_vcache *c = p->c;
	if (first >= p->nunits || !n)
		return NULL;
	const uint64_t e = first + n < p->nunits ? first + n : p->nunits;
	struct dnet_vpin *gone = NULL;
	const uint8_t *at = NULL;
	pthread_mutex_lock(&c->lock);
	uint64_t need = 0;
	int free_run = !p->dead && !c->refused;
	for (uint64_t u = first; u < e && free_run; u++) {
		if (bit(p->busy, u))
			free_run = 0; /* another reader is on them: it will cache them */
		else if (!bit(p->set, u))
			need += unit_bytes(p, u);
	}
	if (free_run) {
		/* make room: least recently used entries first, never p itself */
		for (struct dnet_vpin *v = c->lru_tail; v && c->used + need > c->limit;) {
			struct dnet_vpin *prev = v->lprev;
			if (v != p) {
				c->evicted++;
				unlink_locked(v, &gone);
			}
			v = prev;
		}
		if (c->used + need <= c->limit) {
			for (uint64_t u = first; u < e; u++)
				if (!bit(p->set, u))
					bit_set(p->busy, u);
			c->used += need;
			p->bytes += need;
			at = p->data + first * p->unit;
		}
	}
	pthread_mutex_unlock(&c->lock);
	destroy(gone);
	gone = NULL;
	if (!at)
		return NULL;

	const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
	uintptr_t lo = (uintptr_t)at & ~(pg - 1);
	uintptr_t hi = ((uintptr_t)(p->data + (e * p->unit < p->len ? e * p->unit : p->len)) + pg - 1) &
		       ~(pg - 1);
	if (mlock((void *)lo, hi - lo) == 0)
		return at;
	/* Whatever got locked stays so until the entry is unmapped (unlocking part
	 * of a unit could unlock a neighbour's page): at most this claim's bytes. */
	int e0 = errno;
	pthread_mutex_lock(&c->lock);
	settle_locked(p, first, e, 0);
	int refused_now = 0, shrunk = 0;
	uint64_t used = c->used;
	if (!c->refused && (e0 == EPERM || used == 0)) {
		c->refused = refused_now = 1;
	} else if (!c->refused && c->limit > used) {
		c->limit = used; /* what the kernel let us lock (RLIMIT_MEMLOCK) */
		shrunk = 1;
	}
	/* p, locked in part, goes: its room is for entries that fit whole */
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
	return NULL;
}

void dnet_vpin_done(struct dnet_vpin *p, uint64_t first, uint64_t n, int ok)
{
	struct dnet_vcache *c = p->c;
	const uint64_t e = first + n < p->nunits ? first + n : p->nunits;
	struct dnet_vpin *gone = NULL;
	pthread_mutex_lock(&c->lock);
	settle_locked(p, first, e, ok);
	if (!ok)
		unlink_locked(p, &gone);
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
