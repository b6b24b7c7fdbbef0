/* vcache.h - the verified-data cache of an engine: the data of large records
 * whose checksums reads verified, kept locked in memory (mlock() of a shared
 * mapping of the engine's file), so that later reads of hot objects need not
 * hash it again.
 *
 * The guarantee is the one a checksumming filesystem gives for its cache (ZFS's
 * ARC): every byte that comes from the disk is verified before it is served. A
 * locked page cannot be evicted, so it cannot be read back from the disk without
 * being verified again. What locking does not cover is a write into the file
 * through the page cache: an entry trusts its data only while the file's change
 * time (ctime) is what it was when the entry was made, and an entry is made only
 * once the ctime is old enough that a later write must move it (50 ms; 2.5 s on
 * a filesystem with whole-second timestamps). Any change drops the file's entries
 * at their next use. On network and FUSE filesystems, whose page cache can be
 * refilled behind our back, there is no cache.
 *
 * An entry is verified and locked from the record's start on, in order (a
 * prefix), so its mapping is at most two kernel mappings (locked, not yet). A
 * record is admitted on its second read (a one-off scan does not push hot data
 * out). Budget: `limit` bytes locked and at most VC_MAX_ENTRIES entries; the
 * least recently used idle entries are evicted. Entries are keyed by (owner,
 * key): for the blob engine the blob and the record's offset in it. All
 * functions are thread-safe. A cache freed by its engine stays alive until the
 * last reader puts its entry back. */
#ifndef DNET_VCACHE_H
#define DNET_VCACHE_H

#include <stdint.h>

struct dnet_vcache;
struct dnet_vpin;

/* NULL when limit is 0, when the cache cannot work for `path`'s filesystem or
 * within RLIMIT_MEMLOCK (logged), or out of memory: the engine then hashes
 * every read, as without a cache. */
struct dnet_vcache *dnet_vcache_new(uint64_t limit, const char *path);
/* Drops every entry; the memory goes when the last reader puts its entry back. */
void dnet_vcache_free(struct dnet_vcache *c);

/* The entry of record (owner, key), whose data is [off, off + len) of fd's file,
 * verified in units of `unit` bytes. It is created when absent, if the record
 * fits in the cache and the file has settled. Takes a reference for the caller,
 * or returns NULL (then verify the usual way). */
struct dnet_vpin *dnet_vpin_get(struct dnet_vcache *c, const void *owner, uint64_t key, int fd,
				uint64_t off, uint64_t len, uint32_t unit);
void dnet_vpin_put(struct dnet_vpin *p);

/* Are units [first, first + n) verified and locked, with the file unchanged since?
 * 1: yes, the caller may send them unhashed. 0: no. -1: the entry is gone (the
 * file changed, or it was dropped); the caller stops using it (and puts it back
 * when done sending: its locked pages stay locked until then). */
int dnet_vpin_covered(struct dnet_vpin *p, int fd, uint64_t first, uint64_t n);

/* Claims units [first, first + n) for verification, when they reach past the
 * verified prefix and start within it or right at its end: locks the units past
 * the prefix in memory and returns the address of unit `first` in the entry's
 * mapping, where the caller hashes all n. Then it reports with dnet_vpin_done().
 * NULL: not now (not admitted yet, another reader is extending it, no room,
 * locking refused); verify the usual way. */
const uint8_t *dnet_vpin_claim(struct dnet_vpin *p, uint64_t first, uint64_t n);
/* Ends the claim. ok: the claimed units matched their checksums (they join the
 * prefix); else the entry is dropped. */
void dnet_vpin_done(struct dnet_vpin *p, int ok);

/* The record was superseded or removed: its entry goes. */
void dnet_vcache_drop(struct dnet_vcache *c, const void *owner, uint64_t key);
/* The owner (a blob file) goes: all its entries go. */
void dnet_vcache_drop_owner(struct dnet_vcache *c, const void *owner);

struct dnet_vcache_stat {
	uint64_t limit;	    /* bytes that may be locked */
	uint64_t bytes;	    /* bytes locked now */
	uint64_t entries;   /* records in the cache (admitted or not yet) */
	uint64_t hit_bytes; /* bytes served without hashing, since start */
	uint64_t dropped;   /* entries dropped because their file changed */
	uint64_t evicted;   /* entries evicted to make room */
};
/* All zero when c is NULL. */
void dnet_vcache_stat(struct dnet_vcache *c, struct dnet_vcache_stat *st);

#endif
