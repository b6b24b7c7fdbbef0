/* fault.c - the fault-injection plan and the IO wrappers engines call (fault.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common/log.h"
#include "fault.h"

static atomic_int armed;
static struct dnet_fault_plan plan; /* written only while disarmed */
static atomic_uint_fast64_t calls[DNET_FAULT_NOPS];
static atomic_uint_fast64_t fired;
static _Thread_local uint64_t tl_fired;
/* A short write happened in this thread: its next write call (the retry of the rest)
 * fails. Per thread, so another thread's write cannot take the failure instead. */
static _Thread_local int short_pending;

static const char *const op_names[DNET_FAULT_NOPS] = {"write", "sync", "rename", "space",
						      "commit"};

const char *dnet_fault_op_name(int op)
{
	return op >= 0 && op < DNET_FAULT_NOPS ? op_names[op] : "?";
}

void dnet_fault_arm(const struct dnet_fault_plan *p)
{
	atomic_store(&armed, 0);
	plan = *p;
	if (!plan.err)
		plan.err = EIO;
	for (int i = 0; i < DNET_FAULT_NOPS; i++)
		atomic_store(&calls[i], 0);
	atomic_store(&fired, 0);
	short_pending = 0;
	atomic_store_explicit(&armed, 1, memory_order_release);
}

void dnet_fault_disarm(void)
{
	atomic_store(&armed, 0);
	short_pending = 0;
}

int dnet_fault_armed(void)
{
	return atomic_load(&armed);
}

uint64_t dnet_fault_calls(int op)
{
	return op >= 0 && op < DNET_FAULT_NOPS ? atomic_load(&calls[op]) : 0;
}

uint64_t dnet_fault_fired(void)
{
	return atomic_load(&fired);
}

uint64_t dnet_fault_thread_fired(void)
{
	return tl_fired;
}

static void note_fired(int op, uint64_t n, const char *what)
{
	atomic_fetch_add(&fired, 1);
	tl_fired++;
	dnet_log_debug("fault injected: %s call %llu (%s)", dnet_fault_op_name(op),
		       (unsigned long long)n, what);
}

/* 0: go ahead; 1: make this write short; -1: fail it (errno set). */
static int decide(int op)
{
	if (!atomic_load_explicit(&armed, memory_order_acquire))
		return 0;
	uint64_t n = atomic_fetch_add(&calls[op], 1) + 1;
	if (op == DNET_FAULT_WRITE && short_pending) {
		short_pending = 0;
		note_fired(op, n, "after a short write");
		errno = plan.err;
		return -1;
	}
	if (plan.op != op || n < plan.nth)
		return 0;
	if (plan.short_write) {
		if (n != plan.nth)
			return 0;
		note_fired(op, n, "short write");
		short_pending = 1;
		return 1;
	}
	if (plan.count && n - plan.nth >= plan.count)
		return 0;
	note_fired(op, n, "fail");
	errno = plan.err;
	return -1;
}

int dnet_fault_check(int op)
{
	return decide(op) ? plan.err : 0;
}

ssize_t dnet_f_pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
	int d = decide(DNET_FAULT_WRITE);
	if (d < 0)
		return -1;
	if (d > 0) {
		size_t total = 0;
		for (int i = 0; i < cnt; i++)
			total += iov[i].iov_len;
		size_t want = total / 2, done = 0;
		if (!want) {
			errno = plan.err;
			return -1;
		}
		/* the first half, possibly across iovecs */
		for (int i = 0; i < cnt && done < want; i++) {
			size_t l = iov[i].iov_len < want - done ? iov[i].iov_len : want - done;
			ssize_t n = pwrite(fd, iov[i].iov_base, l, off + (off_t)done);
			if (n <= 0)
				return done ? (ssize_t)done : n;
			done += (size_t)n;
			if ((size_t)n < l)
				break;
		}
		return (ssize_t)done;
	}
	return pwritev(fd, iov, cnt, off);
}

ssize_t dnet_f_pwrite(int fd, const void *buf, size_t len, off_t off)
{
	struct iovec iov = {(void *)buf, len};
	return dnet_f_pwritev(fd, &iov, 1, off);
}

ssize_t dnet_f_copy_file_range(int in, loff_t *inoff, int out, loff_t *outoff, size_t len,
			       unsigned flags)
{
	int d = decide(DNET_FAULT_WRITE);
	if (d < 0)
		return -1;
	if (d > 0) {
		if (len < 2) {
			errno = plan.err;
			return -1;
		}
		len /= 2;
	}
	return copy_file_range(in, inoff, out, outoff, len, flags);
}

int dnet_f_fsync(int fd)
{
	return decide(DNET_FAULT_SYNC) ? -1 : fsync(fd);
}

int dnet_f_fdatasync(int fd)
{
	return decide(DNET_FAULT_SYNC) ? -1 : fdatasync(fd);
}

int dnet_f_syncfs(int fd)
{
	return decide(DNET_FAULT_SYNC) ? -1 : syncfs(fd);
}

int dnet_f_renameat(int olddir, const char *oldname, int newdir, const char *newname)
{
	return decide(DNET_FAULT_RENAME) ? -1 : renameat(olddir, oldname, newdir, newname);
}

int dnet_f_renameat2(int olddir, const char *oldname, int newdir, const char *newname,
		     unsigned flags)
{
	return decide(DNET_FAULT_RENAME) ? -1
					 : renameat2(olddir, oldname, newdir, newname, flags);
}

int dnet_f_ftruncate(int fd, off_t len)
{
	return decide(DNET_FAULT_SPACE) ? -1 : ftruncate(fd, len);
}

int dnet_f_fallocate(int fd, int mode, off_t off, off_t len)
{
	return decide(DNET_FAULT_SPACE) ? -1 : fallocate(fd, mode, off, len);
}

static int parse_err(const char *v)
{
	static const struct {
		const char *name;
		int e;
	} names[] = {{"EIO", EIO}, {"ENOSPC", ENOSPC}, {"EDQUOT", EDQUOT}, {"EROFS", EROFS}};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strcmp(v, names[i].name) == 0)
			return names[i].e;
	char *end;
	long e = strtol(v, &end, 10);
	return *v && !*end && e > 0 && e < 4096 ? (int)e : -1;
}

int dnet_fault_parse(const char *spec, struct dnet_fault_plan *p, char *err, size_t errlen)
{
	memset(p, 0, sizeof(*p));
	p->op = -1;
	p->count = 1;
	p->err = EIO;
	char buf[256];
	if (strlen(spec) >= sizeof(buf)) {
		snprintf(err, errlen, "fault spec too long");
		return -1;
	}
	snprintf(buf, sizeof(buf), "%s", spec);
	char *save = NULL;
	for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(tok, '=');
		if (!eq) {
			snprintf(err, errlen, "'%s': want name=value", tok);
			return -1;
		}
		*eq = '\0';
		const char *v = eq + 1;
		char *end;
		if (strcmp(tok, "op") == 0) {
			p->op = -1;
			if (strcmp(v, "short") == 0) {
				p->op = DNET_FAULT_WRITE;
				p->short_write = 1;
			}
			for (int i = 0; i < DNET_FAULT_NOPS; i++)
				if (strcmp(v, op_names[i]) == 0)
					p->op = i;
			if (p->op < 0) {
				snprintf(err, errlen,
					 "op '%s': want write|short|sync|rename|space|commit", v);
				return -1;
			}
		} else if (strcmp(tok, "n") == 0 || strcmp(tok, "count") == 0) {
			errno = 0;
			unsigned long long x = strtoull(v, &end, 10);
			if (errno || !*v || *end || *v == '-' || (tok[0] == 'n' && x == 0)) {
				snprintf(err, errlen, "%s '%s': want a%s integer", tok, v,
					 tok[0] == 'n' ? " positive" : "n");
				return -1;
			}
			if (tok[0] == 'n')
				p->nth = x;
			else
				p->count = x;
		} else if (strcmp(tok, "err") == 0) {
			if ((p->err = parse_err(v)) < 0) {
				snprintf(err, errlen, "err '%s': want EIO|ENOSPC|EDQUOT|EROFS|number", v);
				return -1;
			}
		} else {
			snprintf(err, errlen, "unknown field '%s' (op, n, count, err)", tok);
			return -1;
		}
	}
	if (p->op < 0 || !p->nth) {
		snprintf(err, errlen, "op= and n= are required");
		return -1;
	}
	return 0;
}

int dnet_fault_env(void)
{
	const char *s = getenv("ELLIPTICS_FAULT");
	if (!s || !*s)
		return 0;
	struct dnet_fault_plan p;
	char err[256];
	if (dnet_fault_parse(s, &p, err, sizeof(err)) != 0) {
		dnet_log_error("ELLIPTICS_FAULT=%s: %s", s, err);
		return -1;
	}
	dnet_fault_arm(&p);
	dnet_log_warn("fault injection armed: %s call %llu%s, %s, count %llu", dnet_fault_op_name(p.op),
		      (unsigned long long)p.nth, p.short_write ? " (short write)" : "",
		      strerror(p.err), (unsigned long long)p.count);
	return 0;
}
