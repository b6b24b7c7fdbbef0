/* fault.h - fault injection for crash-safety tests of the storage engines.
 *
 * Engines do every write, sync, rename and space (truncate/allocate) call through
 * the thin wrappers below (dnet_pwritev_full and friends in backend.c use them too).
 * The wrappers are compiled in always and cost one relaxed atomic load while no
 * plan is armed. A plan is process-global: "fail the Nth call of class OP (and the
 * COUNT-1 after it, or every later one with COUNT 0) with errno ERR", or for writes
 * "make the Nth write short": it moves half its bytes and the next write call of the same
 * thread (the retry of the rest) fails
 * with ERR, as a disk that fills up mid-write does. Counting starts at arming.
 *
 * LMDB and BerkeleyDB write their files themselves; those engines are reached at
 * their commit and sync calls (class COMMIT: the transaction is aborted instead of
 * committed and the commit reports ERR; class SYNC: mdb_env_sync / log_flush).
 *
 * From the environment: ELLIPTICS_FAULT (ellipticsd checks it at start and arms it
 * once the node serves; dnet_fault_env() arms it at once): ELLIPTICS_FAULT="op=write,n=5[,count=1][,err=EIO]" with op one of
 * write|short|sync|rename|space|commit; count=0 means "this call and every later
 * one"; err is EIO (default), ENOSPC, EDQUOT, EROFS or a number. */
#ifndef DNET_FAULT_H
#define DNET_FAULT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum dnet_fault_op {
	DNET_FAULT_WRITE = 0,  /* pwrite, pwritev, copy_file_range */
	DNET_FAULT_SYNC = 1,   /* fsync, fdatasync, syncfs, mdb_env_sync, log_flush */
	DNET_FAULT_RENAME = 2, /* renameat, renameat2 */
	DNET_FAULT_SPACE = 3,  /* ftruncate, fallocate (preallocation, hole punching) */
	DNET_FAULT_COMMIT = 4, /* LMDB / BDB transaction commits */
	DNET_FAULT_NOPS
};

struct dnet_fault_plan {
	int op;		/* enum dnet_fault_op */
	uint64_t nth;	/* 1-based: the first call of op to fail */
	uint64_t count; /* calls failing from nth on; 0 = every later call */
	int err;	/* errno injected (0 = EIO) */
	int short_write; /* op WRITE: the nth write moves half its bytes, the next call fails */
};

/* Arms a plan (replacing any), resetting all counters. */
void dnet_fault_arm(const struct dnet_fault_plan *p);
void dnet_fault_disarm(void);
int dnet_fault_armed(void);
/* Calls of class op seen since arming (counted only while armed). */
uint64_t dnet_fault_calls(int op);
/* Faults injected since arming: in all threads / in the calling thread (ever). */
uint64_t dnet_fault_fired(void);
uint64_t dnet_fault_thread_fired(void);

/* "op=write,n=5,count=1,err=EIO" -> plan; 0 or -1 (with a message in err, errlen). */
int dnet_fault_parse(const char *spec, struct dnet_fault_plan *p, char *err, size_t errlen);
/* Arms the plan in $ELLIPTICS_FAULT if set: 0 (also when unset), -1 if malformed. */
int dnet_fault_env(void);
const char *dnet_fault_op_name(int op);

/* For engines whose IO is inside a library: 0, or the errno to fail this call of
 * class op with (counts the call). */
int dnet_fault_check(int op);

/* The wrappers: the system calls' own conventions (-1 and errno on failure). */
struct iovec;
ssize_t dnet_f_pwritev(int fd, const struct iovec *iov, int cnt, off_t off);
ssize_t dnet_f_pwrite(int fd, const void *buf, size_t len, off_t off);
ssize_t dnet_f_copy_file_range(int in, loff_t *inoff, int out, loff_t *outoff, size_t len,
			       unsigned flags);
int dnet_f_fsync(int fd);
int dnet_f_fdatasync(int fd);
int dnet_f_syncfs(int fd);
int dnet_f_renameat(int olddir, const char *oldname, int newdir, const char *newname);
int dnet_f_renameat2(int olddir, const char *oldname, int newdir, const char *newname,
		     unsigned flags);
int dnet_f_ftruncate(int fd, off_t len);
int dnet_f_fallocate(int fd, int mode, off_t off, off_t len);

#endif
