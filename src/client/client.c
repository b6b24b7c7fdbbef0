/* client.c - the public client API (elliptics.h): handles, blocking calls with retries,
 * chunked uploads (memory, sendfile from files, streamed sources) and async calls. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>


#include <openssl/crypto.h>
#include <openssl/ssl.h>

#include "client_int.h"
#include "common/auth.h"
#include "common/errors.h"
#include "common/id.h"
#include "common/tls.h"
#include "common/util.h"

/* --- handles ------------------------------------------------------------- */

int dnet_client_new(dnet_client **out)
{
	dnet_client *c = calloc(1, sizeof(*c));
	if (!c)
		return DNET_ENOMEM;
	c->timeout_ms = 30000;
	c->nconns = 1;
	dnet_ring_init(&c->ring);
	c->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (c->epfd < 0) {
		free(c);
		return dnet_from_errno(errno);
	}
	*out = c;
	return 0;
}

int dnet_client_add_remote(dnet_client *c, const char *hostport)
{
	struct sockaddr_storage ss;
	socklen_t len;
	if (!hostport || strlen(hostport) > 255)
		return DNET_EADDR;
	int err = dnet_parse_addr(hostport, DNET_DEFAULT_PORT, &ss, &len);
	if (err)
		return err;
	char **nr = realloc(c->remotes, (size_t)(c->nremotes + 1) * sizeof(*nr));
	if (!nr)
		return DNET_ENOMEM;
	c->remotes = nr;
	nr[c->nremotes] = strdup(hostport);
	if (!nr[c->nremotes])
		return DNET_ENOMEM;
	c->nremotes++;
	return 0;
}

int dnet_client_set_key(dnet_client *c, const char *spec)
{
	if (!spec) {
		c->key_name[0] = c->key_secret[0] = '\0';
		return 0;
	}
	char name[DNET_AUTH_NAME_MAX + 1], secret[DNET_AUTH_SECRET_MAX + 1];
	if (dnet_auth_split(spec, name, secret) != 0)
		return DNET_EINVAL;
	snprintf(c->key_name, sizeof(c->key_name), "%s", name);
	snprintf(c->key_secret, sizeof(c->key_secret), "%s", secret);
	return 0;
}

int dnet_client_set_tls(dnet_client *c, const char *ca, const char *cert, const char *key)
{
	c->tls_err[0] = '\0';
	SSL_CTX *ctx = NULL;
	if (ca) {
		ctx = dnet_tls_ctx_new(DNET_TLS_CLIENT, cert, key, ca, 0, c->tls_err,
				       sizeof(c->tls_err));
		if (!ctx)
			return DNET_EINVAL;
	}
	SSL_CTX_free(c->tls);
	c->tls = ctx;
	return 0;
}

const char *dnet_client_tls_error(const dnet_client *c)
{
	return c->tls_err;
}

void dnet_client_set_timeout(dnet_client *c, int timeout_ms)
{
	c->timeout_ms = timeout_ms > 0 ? timeout_ms : 30000;
}

int dnet_client_set_conns(dnet_client *c, int nconns)
{
	if (nconns < 1 || nconns > 65536)
		return DNET_EINVAL;
	if (c->user_inflight)
		return DNET_EBUSY;
	/* Only internal requests (a route refresh) may be in flight: let them end. */
	while (c->inflight || c->retry_head)
		if (dnet__loop_once(c, -1) < 0)
			break;
	if (c->nconns == nconns)
		return 0;
	dnet__conns_free(c);
	c->nconns = nconns;
	return 0;
}

void dnet_client_set_progress(dnet_client *c, dnet_progress_fn fn, void *arg)
{
	c->progress = fn;
	c->progress_arg = arg;
}

void dnet_client_set_stream_verify(dnet_client *c, int on)
{
	c->stream_verify = !!on;
}

const char *dnet_client_node(const dnet_client *c)
{
	if (c->last && c->last->name[0])
		return c->last->name;
	for (size_t i = 0; i < c->nall; i++)
		if (c->all[i]->fd >= 0)
			return c->all[i]->node;
	return NULL;
}

void dnet_client_free(dnet_client *c)
{
	if (!c)
		return;
	dnet__conns_free(c);
	dnet__run_callbacks(c);
	dnet__routes_free(c);
	while (c->req_cache) {
		struct dnet_req *r = c->req_cache;
		c->req_cache = r->out_next;
		free(r);
	}
	for (int i = 0; i < c->nremotes; i++)
		free(c->remotes[i]);
	free(c->remotes);
	free(c->slots);
	free(c->free_slots);
	free(c->id_hash);
	free(c->sbuf);
	free(c->last_copies);
	SSL_CTX_free(c->tls);
	OPENSSL_cleanse(c->key_secret, sizeof(c->key_secret));
	close(c->epfd);
	free(c);
}

void dnet_key_to_id(const void *key, size_t klen, uint8_t id[64])
{
	dnet_id_from_key(id, key, klen);
}

void dnet_csum_to_hex(const uint8_t csum[16], char out[33])
{
	dnet_id_to_hex(out, csum, 16);
}

static int key_id(const void *key, size_t klen, uint8_t id[DNET_ID_SIZE])
{
	if (!key || !klen || klen > DNET_KEY_MAX)
		return DNET_EINVAL;
	dnet_id_from_key(id, key, klen);
	return 0;
}

/* --- blocking plumbing --------------------------------------------------- */

struct dnet_req *dnet__req_make(dnet_client *c, int cmd, const uint8_t *id)
{
	struct dnet_req *r = dnet__req_new(c);
	if (!r)
		return NULL;
	r->cmd = (uint8_t)cmd;
	memcpy(r->id, id, DNET_ID_SIZE);
	if (cmd == DNET_CMD_WRITE || cmd == DNET_CMD_READ || cmd == DNET_CMD_DEL ||
	    cmd == DNET_CMD_LOOKUP)
		r->reroute = DNET_RR_KEYED | DNET_RR_REDIRECT | DNET_RR_RETRY;
	return r;
}

void dnet__req_set_io(struct dnet_req *r, const struct dnet_io_attr *io)
{
	dnet_io_attr_encode(r->obuf + DNET_HDR_SIZE, io);
	r->olen = DNET_IO_ATTR_SIZE;
}

/* Submit r (marked sync) and wait for it. Returns its status; r stays the caller's. */
static int run_sync(dnet_client *c, struct dnet_req *r)
{
	int err;
	struct dnet_conn *conn = dnet__pick_conn(c, r, &err);
	if (!conn)
		return err;
	r->flags |= DNET_REQ_SYNC;
	err = dnet__submit(c, conn, r, DNET_FLAG_NEED_ACK);
	if (err)
		return err;
	dnet__wait(c, r);
	return r->status;
}

static void copy_info(struct dnet_object_info *info, const struct dnet_req *r)
{
	if (!info)
		return;
	if (r->have_info)
		*info = r->info;
	else
		memset(info, 0, sizeof(*info));
	if (!info->node[0] && r->conn)
		memcpy(info->node, r->conn->node, sizeof(info->node));
}

/* --- writes -------------------------------------------------------------- */

enum { SRC_MEM, SRC_FILE, SRC_STREAM };
#define UPLOAD_BUFS 3

/* One node an upload goes to: the owner, or with copies each copy's node. */
struct upload_target {
	struct dnet_conn *conn;
	struct dnet_node *node; /* copies: the node (DIRECT); NULL: routed (one copy) */
	int status;   /* its first error: this copy is out (DNET_EEXIST: a newer version is there) */
	int prepared; /* its PREPARE was acked: it owns the upload */
	int copy, standin;
};

struct upload {
	dnet_client *c;
	uint8_t id[DNET_ID_SIZE];
	uint64_t cookie;
	uint64_t version; /* copies: every chunk carries it; 0 with one copy */
	int kind;
	const uint8_t *mem;
	int fd;
	uint64_t fd_off;
	dnet_source_fn src;
	void *src_arg;
	uint64_t total; /* UINT64_MAX: unknown until the source ends */
	uint64_t off;   /* next chunk's offset */
	uint64_t acked;
	int inflight, window, last_submitted, status, finished;
	int nt, want; /* targets, and how many must take the whole object */
	struct upload_target t[DNET_PLAN_MAX];
	uint8_t *buf[UPLOAD_BUFS];
	int busy[UPLOAD_BUFS]; /* requests still using the buffer */
	int cur, nxt;
	size_t cur_len, nxt_len;
	int eof;
	struct dnet_object_info info;
	int have_info;
	struct dnet_req *parent; /* async: completed when the upload is */
};

static int stream_fill(struct upload *u, uint8_t *buf, size_t *len)
{
	size_t got = 0;
	while (got < DNET_CHUNK_SIZE) {
		size_t n = 0;
		int err = u->src(u->src_arg, buf + got, DNET_CHUNK_SIZE - got, &n);
		if (err)
			return err;
		if (!n || n > DNET_CHUNK_SIZE - got) {
			u->eof = 1;
			break;
		}
		got += n;
	}
	*len = got;
	return 0;
}

static int free_buf(struct upload *u)
{
	for (int i = 0; i < UPLOAD_BUFS; i++)
		if (!u->busy[i] && i != u->cur && i != u->nxt)
			return i;
	return -1;
}

static int upload_live(const struct upload *u)
{
	int n = 0;
	for (int i = 0; i < u->nt; i++)
		n += !u->t[i].status;
	return n;
}

static int upload_prepared(const struct upload *u)
{
	for (int i = 0; i < u->nt; i++)
		if (!u->t[i].status && !u->t[i].prepared)
			return 0;
	return 1;
}

static void upload_pump(struct upload *u);

static void upload_finish(struct upload *u)
{
	u->finished = 1;
	if (u->t[0].node) {
		/* Copies: the upload stands if enough of them took it whole. */
		struct dnet_copy_status res[DNET_PLAN_MAX];
		int ok = 0, first_err = 0;
		for (int i = 0; i < u->nt; i++) {
			dnet__copy_status(&res[i], u->t[i].copy, u->t[i].standin, u->t[i].status,
					  u->version, u->t[i].node->name);
			res[i].size = u->off;
			if (!u->t[i].status || u->t[i].status == DNET_EEXIST)
				ok++;
			else if (!first_err)
				first_err = u->t[i].status;
		}
		dnet__set_last_copies(u->c, res, u->nt);
		if (!u->status || dnet__unreachable(u->status) || u->status == DNET_EQUORUM)
			u->status = ok >= u->want ? 0
				    : (first_err && !dnet__unreachable(first_err) ? first_err : DNET_EQUORUM);
	}
	if (u->parent) {
		struct dnet_req *p = u->parent;
		if (u->have_info)
			p->info = u->info, p->have_info = 1;
		dnet__req_finish(u->c, p, u->status);
		free(u);
	}
}

static void chunk_done(struct dnet_req *r)
{
	struct upload *u = r->hook_arg;
	dnet_client *c = u->c;
	struct upload_target *t = &u->t[(r->hook_val >> 16) & 0xff];
	u->inflight--;
	if (r->status && !t->status) {
		t->status = r->status;
		/* One copy: its error is the upload's. Copies: the upload goes on while
		 * enough of them are left. */
		if (!t->node || upload_live(u) + (r->status == DNET_EEXIST) < u->want) {
			if (!u->status)
				u->status = t->node ? DNET_EQUORUM : r->status;
		}
	}
	if (!r->status) {
		t->prepared = 1;
		/* Progress follows the first copy still going. */
		int first = 0;
		while (first < u->nt && u->t[first].status)
			first++;
		if (t == &u->t[first]) {
			u->acked += r->data_len;
			if (c->progress)
				c->progress(c->progress_arg, u->acked,
					    u->total == UINT64_MAX ? 0 : u->total);
		}
		if (r->have_info && (r->hook_val & 0x100) && !u->have_info) {
			u->info = r->info;
			u->have_info = 1;
		}
	}
	if (u->kind == SRC_STREAM)
		u->busy[r->hook_val & 0xff]--;
	dnet__req_free(c, r);
	upload_pump(u);
}

static int upload_submit_chunk(struct upload *u)
{
	dnet_client *c = u->c;
	uint64_t len;
	int last, bi = 0;
	if (u->kind == SRC_STREAM) {
		if (!u->eof && u->nxt < 0) {
			int b = free_buf(u);
			if (b < 0)
				return DNET_EINVAL; /* cannot happen: window < UPLOAD_BUFS - 1 */
			if (!u->buf[b] && !(u->buf[b] = malloc(DNET_CHUNK_SIZE)))
				return DNET_ENOMEM;
			int err = stream_fill(u, u->buf[b], &u->nxt_len);
			if (err)
				return err;
			u->nxt = b;
		}
		bi = u->cur;
		len = u->cur_len;
		last = u->nxt < 0 || !u->nxt_len;
	} else {
		len = u->total - u->off;
		if (len > DNET_CHUNK_SIZE)
			len = DNET_CHUNK_SIZE;
		last = u->off + len == u->total;
	}
	struct dnet_io_attr io = {
		.offset = u->off,
		.size = len,
		.total_size = last ? u->off + len : (u->total == UINT64_MAX ? 0 : u->total),
		.timestamp = u->version,
		.cookie = u->cookie,
		.ioflags = u->off == 0 ? DNET_IO_PREPARE : (last ? DNET_IO_COMMIT : DNET_IO_PLAIN),
	};
	int sent = 0, first_err = 0;
	for (int ti = 0; ti < u->nt; ti++) {
		struct upload_target *t = &u->t[ti];
		if (t->status)
			continue;
		int err = 0;
		struct dnet_req *r = dnet__req_make(c, DNET_CMD_WRITE, u->id);
		if (!r) {
			err = DNET_ENOMEM;
			goto fail;
		}
		dnet__req_set_io(r, &io);
		r->data_len = len;
		if (u->kind == SRC_MEM) {
			r->data = u->mem + u->off;
		} else if (u->kind == SRC_FILE) {
			r->file_fd = u->fd;
			r->file_off = u->fd_off + u->off;
		} else {
			r->data = u->buf[bi];
		}
		r->hook = chunk_done;
		r->hook_arg = u;
		r->hook_val = (uint64_t)bi | (last ? 0x100u : 0u) | ((uint64_t)ti << 16);
		uint16_t hflags = DNET_FLAG_NEED_ACK;
		if (t->node) {
			/* A copy: that node, whatever its routes say. */
			r->reroute = 0;
			r->target = t->node;
			hflags |= DNET_FLAG_DIRECT;
			if (!t->conn || t->conn->fd < 0)
				t->conn = dnet__pick_conn(c, r, &err);
		} else if (io.ioflags & DNET_IO_PREPARE) {
			/* The PREPARE is routed (and follows redirects, taking the upload
			 * along); the node that accepted it keeps the upload's state, so the
			 * other chunks go to it whatever its routes say by then. */
			r->reroute = DNET_RR_KEYED | DNET_RR_REDIRECT;
			r->stick = &t->conn;
		} else {
			r->reroute = 0;
			hflags |= DNET_FLAG_DIRECT;
		}
		if (!err && (!t->conn || t->conn->fd < 0))
			err = DNET_ECONNRESET;
		if (!err)
			err = dnet__submit(c, t->conn, r, hflags);
		if (err) {
			dnet__req_free(c, r);
		fail:
			t->status = err;
			if (!first_err)
				first_err = err;
			continue;
		}
		sent++;
		u->inflight++;
		if (u->kind == SRC_STREAM)
			u->busy[bi]++;
	}
	if (!sent || upload_live(u) < u->want)
		return first_err ? first_err : DNET_EQUORUM;
	if (u->kind == SRC_STREAM) {
		u->cur = u->nxt;
		u->cur_len = u->nxt_len;
		u->nxt = -1;
		u->nxt_len = 0;
	}
	u->off += len;
	if (last)
		u->last_submitted = 1;
	return 0;
}

static void upload_pump(struct upload *u)
{
	/* One chunk at a time until the PREPAREs are acked: a redirect moves it alone. */
	for (;;) {
		int live = upload_live(u);
		int lim = (upload_prepared(u) ? u->window : 1) * (live ? live : 1);
		if (u->status || u->last_submitted || u->inflight >= lim)
			break;
		/* A slow copy holds its chunks' buffers: wait for one to refill. */
		if (u->kind == SRC_STREAM && u->nxt < 0 && !u->eof && free_buf(u) < 0)
			break;
		int err = upload_submit_chunk(u);
		if (err)
			u->status = err;
	}
	if (!u->inflight && !u->finished)
		upload_finish(u);
}

static uint64_t new_cookie(void)
{
	uint64_t v = 0;
	if (getrandom(&v, sizeof(v), 0) != (ssize_t)sizeof(v))
		v = dnet_now_mono_ns() ^ ((uint64_t)getpid() << 32);
	return v ? v : 1;
}

static int upload_init(dnet_client *c, struct upload *u, const uint8_t *id)
{
	int err;
	memset(u, 0, sizeof(*u));
	u->c = c;
	memcpy(u->id, id, DNET_ID_SIZE);
	u->cookie = new_cookie();
	u->window = 4;
	u->cur = u->nxt = -1;
	u->fd = -1;
	struct dnet_plan plan;
	if (dnet__plan(c, id, &plan)) {
		/* Copies: every home that is up, a stand-in for each one that is down. */
		int used[DNET_PLAN_MAX] = {0}, nmiss = 0;
		struct dnet_copy_status miss[DNET_PLAN_MAX];
		u->version = dnet__hlc_next(c, 0);
		u->want = dnet__quorum(c, plan.homes);
		for (int i = 0; i < plan.homes; i++) {
			int ti = i;
			if (plan.down[i] && (ti = dnet__next_standin(&plan, used)) < 0) {
				/* Down, and nobody to stand in. */
				dnet__copy_status(&miss[nmiss++], i, 0, DNET_ENODEDOWN, 0,
						  plan.node[i]->name);
				continue;
			}
			used[ti] = 1;
			struct upload_target *t = &u->t[u->nt++];
			t->node = plan.node[ti];
			t->copy = i;
			t->standin = ti != i;
		}
		if (u->nt < u->want) {
			/* Nothing was sent: the copies that cannot be written say why. */
			dnet__set_last_copies(c, miss, nmiss);
			return DNET_EQUORUM;
		}
		return 0;
	}
	struct dnet_req probe;
	memset(&probe, 0, sizeof(probe));
	probe.cmd = DNET_CMD_WRITE;
	probe.reroute = DNET_RR_KEYED;
	memcpy(probe.id, id, DNET_ID_SIZE);
	u->nt = u->want = 1;
	u->t[0].conn = dnet__pick_conn(c, &probe, &err);
	return u->t[0].conn ? 0 : err;
}

static void upload_wait(dnet_client *c, struct upload *u)
{
	while (!u->finished)
		if (dnet__loop_once(c, -1) < 0) {
			for (size_t i = 0; i < c->nall; i++)
				dnet__conn_drop(c, c->all[i], DNET_ESYS);
		}
}

/* One WRITE of the whole object (<= DNET_CHUNK_SIZE): atomic replace. */
static int write_single(dnet_client *c, const uint8_t *id, const void *data, int fd,
			uint64_t fd_off, uint64_t len, struct dnet_object_info *info)
{
	struct dnet_plan plan;
	if (dnet__plan(c, id, &plan))
		return dnet__rep_write(c, &plan, id, data, fd, fd_off, len, info, NULL);
	struct dnet_req *r = dnet__req_make(c, DNET_CMD_WRITE, id);
	if (!r)
		return DNET_ENOMEM;
	struct dnet_io_attr io = {.size = len, .total_size = len};
	dnet__req_set_io(r, &io);
	r->data_len = len;
	if (fd >= 0) {
		r->file_fd = fd;
		r->file_off = fd_off;
	} else {
		r->data = data;
	}
	int err = run_sync(c, r);
	if (!err) {
		copy_info(info, r);
		if (info && !r->have_info)
			info->size = len;
	}
	dnet__req_free(c, r);
	return err;
}

static void upload_free_bufs(struct upload *u)
{
	for (int i = 0; i < UPLOAD_BUFS; i++)
		free(u->buf[i]);
}

static int upload_result(struct upload *u, struct dnet_object_info *info)
{
	if (!u->status && info) {
		if (u->have_info)
			*info = u->info;
		else {
			memset(info, 0, sizeof(*info));
			info->size = u->off;
		}
		if (!info->node[0] && u->t[0].conn)
			memcpy(info->node, u->t[0].conn->node, sizeof(info->node));
	}
	upload_free_bufs(u);
	return u->status;
}

int dnet_write_id(dnet_client *c, const uint8_t id[64], const void *data, size_t len,
		  struct dnet_object_info *info)
{
	if (len && !data)
		return DNET_EINVAL;
	if (len <= DNET_CHUNK_SIZE)
		return write_single(c, id, data, -1, 0, len, info);
	struct upload u;
	int err = upload_init(c, &u, id);
	if (err)
		return err;
	u.kind = SRC_MEM;
	u.mem = data;
	u.total = len;
	upload_pump(&u);
	upload_wait(c, &u);
	return upload_result(&u, info);
}

int dnet_write(dnet_client *c, const void *key, size_t klen, const void *data, size_t len,
	       struct dnet_object_info *info)
{
	uint8_t id[DNET_ID_SIZE];
	int err = key_id(key, klen, id);
	return err ? err : dnet_write_id(c, id, data, len, info);
}

int dnet_write_stream_id(dnet_client *c, const uint8_t id[64], uint64_t size, dnet_source_fn src,
			 void *arg, struct dnet_object_info *info)
{
	struct upload u;
	int err = upload_init(c, &u, id);
	if (err)
		return err;
	u.kind = SRC_STREAM;
	u.src = src;
	u.src_arg = arg;
	u.total = size;
	u.window = UPLOAD_BUFS - 1;
	/* Fill one chunk, and the next one unless the source ended: an object that
	 * fits one chunk goes as a single atomic write. */
	if (!(u.buf[0] = malloc(DNET_CHUNK_SIZE)))
		return DNET_ENOMEM;
	err = stream_fill(&u, u.buf[0], &u.cur_len);
	if (err)
		goto out_free;
	u.cur = 0;
	if (!u.eof) {
		if (!(u.buf[1] = malloc(DNET_CHUNK_SIZE))) {
			err = DNET_ENOMEM;
			goto out_free;
		}
		err = stream_fill(&u, u.buf[1], &u.nxt_len);
		if (err)
			goto out_free;
		u.nxt = 1;
	}
	if (u.nxt < 0 || !u.nxt_len) {
		err = write_single(c, id, u.buf[0], -1, 0, u.cur_len, info);
		goto out_free;
	}
	/* size UINT64_MAX: PREPARE says total_size 0 (unknown) and the server takes
	 * the size from COMMIT, so a pipe streams with no spooling. */
	upload_pump(&u);
	upload_wait(c, &u);
	return upload_result(&u, info);

out_free:
	upload_free_bufs(&u);
	return err;
}

int dnet_write_stream(dnet_client *c, const void *key, size_t klen, uint64_t size,
		      dnet_source_fn src, void *arg, struct dnet_object_info *info)
{
	uint8_t id[DNET_ID_SIZE];
	int err = key_id(key, klen, id);
	return err ? err : dnet_write_stream_id(c, id, size, src, arg, info);
}

static int upload_file(dnet_client *c, const uint8_t *id, int fd, uint64_t off, uint64_t size,
		       struct dnet_object_info *info)
{
	if (size <= DNET_CHUNK_SIZE)
		return write_single(c, id, NULL, fd, off, size, info);
	struct upload u;
	int err = upload_init(c, &u, id);
	if (err)
		return err;
	u.kind = SRC_FILE;
	u.fd = fd;
	u.fd_off = off;
	u.total = size;
	upload_pump(&u);
	upload_wait(c, &u);
	return upload_result(&u, info);
}

struct fd_source {
	int fd;
	uint64_t left; /* UINT64_MAX: until EOF */
};

static int fd_source(void *arg, void *buf, size_t len, size_t *got)
{
	struct fd_source *s = arg;
	if (s->left != UINT64_MAX && len > s->left)
		len = (size_t)s->left;
	if (!len) {
		*got = 0;
		return 0;
	}
	for (;;) {
		ssize_t n = read(s->fd, buf, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return dnet_from_errno(errno);
		}
		*got = (size_t)n;
		if (s->left != UINT64_MAX)
			s->left -= (uint64_t)n;
		return 0;
	}
}

int dnet_write_fd_id(dnet_client *c, const uint8_t id[64], int fd, uint64_t size,
		     struct dnet_object_info *info)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return dnet_from_errno(errno);
	if (!S_ISREG(st.st_mode)) {
		struct fd_source s = {.fd = fd, .left = size};
		int err = dnet_write_stream_id(c, id, size, fd_source, &s, info);
		if (!err && size != UINT64_MAX && s.left)
			err = DNET_ERANGE; /* the stream ended early */
		return err;
	}
	off_t pos = lseek(fd, 0, SEEK_CUR);
	if (pos < 0)
		pos = 0;
	uint64_t avail = (uint64_t)st.st_size > (uint64_t)pos ? (uint64_t)st.st_size - (uint64_t)pos
							      : 0;
	if (size == UINT64_MAX)
		size = avail;
	else if (size > avail)
		return DNET_ERANGE;
	int err = upload_file(c, id, fd, (uint64_t)pos, size, info);
	if (!err)
		lseek(fd, pos + (off_t)size, SEEK_SET);
	return err;
}

int dnet_write_fd(dnet_client *c, const void *key, size_t klen, int fd, uint64_t size,
		  struct dnet_object_info *info)
{
	uint8_t id[DNET_ID_SIZE];
	int err = key_id(key, klen, id);
	return err ? err : dnet_write_fd_id(c, id, fd, size, info);
}

/* --- reads --------------------------------------------------------------- */

static void read_info(struct dnet_object_info *info, const struct dnet_req *r)
{
	if (!info)
		return;
	memset(info, 0, sizeof(*info));
	info->size = r->rio.total_size;
	info->timestamp = r->rio.timestamp;
	if (r->conn)
		memcpy(info->node, r->conn->node, sizeof(info->node));
}

int dnet_read_id(dnet_client *c, const uint8_t id[64], uint64_t offset, uint64_t size,
		 void **data, size_t *len, struct dnet_object_info *info)
{
	struct dnet_plan plan;
	if (dnet__plan(c, id, &plan))
		return dnet__rep_read(c, &plan, id, offset, size, data, len, info, NULL);
	int err = DNET_ECONNRESET;
	for (int attempt = 0; attempt < 2 && err == DNET_ECONNRESET; attempt++) {
		struct dnet_req *r = dnet__req_make(c, DNET_CMD_READ, id);
		if (!r)
			return DNET_ENOMEM;
		struct dnet_io_attr io = {.offset = offset, .size = size};
		dnet__req_set_io(r, &io);
		r->rd_size = size;
		err = run_sync(c, r);
		if (!err) {
			*data = r->rbuf;
			*len = r->rgot;
			r->rbuf = NULL;
			read_info(info, r);
		}
		dnet__req_free(c, r);
	}
	return err;
}

int dnet_read(dnet_client *c, const void *key, size_t klen, uint64_t offset, uint64_t size,
	      void **data, size_t *len, struct dnet_object_info *info)
{
	uint8_t id[DNET_ID_SIZE];
	int err = key_id(key, klen, id);
	return err ? err : dnet_read_id(c, id, offset, size, data, len, info);
}

struct stream_ctx {
	dnet_client *c;
	struct dnet_req *r;
	dnet_sink_fn sink;
	void *arg;
	uint64_t delivered;
	uint64_t total;
	uint64_t timestamp; /* of the first attempt: a retry must see the same object */
	uint64_t tomb_v;    /* copies: a tombstone seen; older data is not served */
	int attempt, started;
};

static int stream_sink(void *arg, const void *data, size_t len)
{
	struct stream_ctx *s = arg;
	if (!s->started) {
		s->started = 1;
		if (s->tomb_v && s->r->rio.timestamp < s->tomb_v)
			return DNET_ENOENT; /* deleted after this copy was written */
		if (s->delivered && s->r->rio.timestamp != s->timestamp)
			return DNET_EAGAIN; /* the object changed between attempts */
		s->timestamp = s->r->rio.timestamp;
		s->total = s->r->rio.size + s->delivered;
	}
	int err = s->sink(s->arg, data, len);
	if (err)
		return err;
	s->delivered += len;
	if (s->c->progress)
		s->c->progress(s->c->progress_arg, s->delivered, s->total);
	return 0;
}

/* One streamed READ attempt (from `target`, or routed when NULL). */
static int stream_attempt(dnet_client *c, struct stream_ctx *s, const uint8_t *id,
			  uint64_t offset, uint64_t size, struct dnet_node *target,
			  struct dnet_object_info *info, uint64_t *tomb_v)
{
	struct dnet_req *r = dnet__req_make(c, DNET_CMD_READ, id);
	if (!r)
		return DNET_ENOMEM;
	/* A retry resumes where the broken reply stopped. */
	struct dnet_io_attr io = {.offset = offset + s->delivered,
				  .size = size ? size - s->delivered : 0};
	dnet__req_set_io(r, &io);
	r->rd_size = io.size;
	if (c->stream_verify)
		r->xflags = DNET_FLAG_STREAM_VERIFY;
	r->sink = stream_sink;
	r->sink_arg = s;
	s->r = r;
	s->started = 0;
	int err;
	if (target) {
		r->target = target;
		r->reroute = 0;
		struct dnet_conn *conn = dnet__pick_conn(c, r, &err);
		r->flags |= DNET_REQ_SYNC;
		if (conn && !(err = dnet__submit(c, conn, r, DNET_FLAG_NEED_ACK | DNET_FLAG_DIRECT))) {
			dnet__wait(c, r);
			err = r->status;
		}
	} else {
		err = run_sync(c, r);
	}
	if (err == DNET_ENOENT && r->have_info && tomb_v && r->info.timestamp > *tomb_v)
		*tomb_v = r->info.timestamp;
	if (!err && r->have_rio) {
		if (s->delivered && r->rio.timestamp != s->timestamp)
			err = DNET_EAGAIN;
		else if (s->tomb_v && r->rio.timestamp < s->tomb_v)
			err = DNET_ENOENT; /* an empty object older than a delete */
		else
			read_info(info, r);
	}
	dnet__req_free(c, r);
	return err;
}

int dnet_read_stream_id(dnet_client *c, const uint8_t id[64], uint64_t offset, uint64_t size,
			dnet_sink_fn sink, void *arg, struct dnet_object_info *info)
{
	struct stream_ctx s = {.c = c, .sink = sink, .arg = arg};
	int err = DNET_ECONNRESET;
	if (!sink)
		return DNET_EINVAL;
	if (!c->sbuf && !(c->sbuf = malloc(DNET_CLIENT_SBUF)))
		return DNET_ENOMEM;
	struct dnet_plan plan;
	if (dnet__plan(c, id, &plan)) {
		/* Copies: one after the other, the ones the table says are up first; a
		 * copy that breaks off mid-stream is resumed from the next one if it
		 * holds the same version. A tombstone newer than a copy's data wins. */
		uint64_t tomb_v = 0;
		int first_err = 0, tried[DNET_PLAN_MAX] = {0};
		for (int pass = 0; pass < 2; pass++) {
			for (int ti = 0; ti < plan.n; ti++) {
				if (tried[ti] || (pass == 0 && plan.down[ti]))
					continue;
				tried[ti] = 1;
				s.tomb_v = tomb_v;
				err = stream_attempt(c, &s, id, offset, size, plan.node[ti], info, &tomb_v);
				s.attempt++;
				if (!err)
					return 0;
				if (err != DNET_ENOENT && err != DNET_ECORRUPT && !dnet__unreachable(err))
					return err; /* the sink failed, or the object changed */
				if (!first_err || first_err == DNET_ENOENT)
					first_err = err;
				if (err == DNET_ENOENT && tomb_v)
					return DNET_ENOENT;
			}
		}
		return first_err ? first_err : DNET_ENOENT;
	}
	for (s.attempt = 0; s.attempt < 2 && err == DNET_ECONNRESET; s.attempt++) {
		if (size && s.delivered >= size)
			break;
		err = stream_attempt(c, &s, id, offset, size, NULL, info, NULL);
	}
	return err;
}

int dnet_read_stream(dnet_client *c, const void *key, size_t klen, uint64_t offset,
		     uint64_t size, dnet_sink_fn sink, void *arg, struct dnet_object_info *info)
{
	uint8_t id[DNET_ID_SIZE];
	int err = key_id(key, klen, id);
	return err ? err : dnet_read_stream_id(c, id, offset, size, sink, arg, info);
}

static int fd_sink(void *arg, const void *data, size_t len)
{
	int fd = *(int *)arg;
	int err = dnet_write_full(fd, data, len);
	/* The output side failing is not a network problem: don't let it look like
	 * one (and trigger a retry). */
	if (err == DNET_ECONNRESET)
		err = DNET_EIO;
	return err;
}

int dnet_read_fd_id(dnet_client *c, const uint8_t id[64], int fd, struct dnet_object_info *info)
{
	return dnet_read_stream_id(c, id, 0, 0, fd_sink, &fd, info);
}

int dnet_read_fd(dnet_client *c, const void *key, size_t klen, int fd,
		 struct dnet_object_info *info)
{
	uint8_t id[DNET_ID_SIZE];
	int err = key_id(key, klen, id);
	return err ? err : dnet_read_fd_id(c, id, fd, info);
}

/* --- remove, lookup, stat, ping ------------------------------------------ */

int dnet_remove_id(dnet_client *c, const uint8_t id[64])
{
	struct dnet_plan plan;
	if (dnet__plan(c, id, &plan))
		return dnet__rep_remove(c, &plan, id, NULL);
	struct dnet_req *r = dnet__req_make(c, DNET_CMD_DEL, id);
	if (!r)
		return DNET_ENOMEM;
	int err = run_sync(c, r);
	dnet__req_free(c, r);
	return err;
}

int dnet_remove(dnet_client *c, const void *key, size_t klen)
{
	uint8_t id[DNET_ID_SIZE];
	int err = key_id(key, klen, id);
	return err ? err : dnet_remove_id(c, id);
}

/* Idempotent no-payload request, retried once on a broken connection. */
static int simple_retry(dnet_client *c, int cmd, const uint8_t *id, struct dnet_req **out)
{
	int err = DNET_ECONNRESET;
	for (int attempt = 0; attempt < 2 && err == DNET_ECONNRESET; attempt++) {
		if (*out)
			dnet__req_free(c, *out);
		*out = dnet__req_make(c, cmd, id);
		if (!*out)
			return DNET_ENOMEM;
		err = run_sync(c, *out);
	}
	return err;
}

int dnet_lookup_id(dnet_client *c, const uint8_t id[64], struct dnet_object_info *info)
{
	struct dnet_plan plan;
	if (dnet__plan(c, id, &plan))
		return dnet__rep_lookup(c, &plan, id, 1, info, NULL);
	struct dnet_req *r = NULL;
	int err = simple_retry(c, DNET_CMD_LOOKUP, id, &r);
	if (!err && !r->have_info)
		err = DNET_EPROTO;
	if (!err)
		copy_info(info, r);
	dnet__req_free(c, r);
	return err;
}

int dnet_lookup(dnet_client *c, const void *key, size_t klen, struct dnet_object_info *info)
{
	uint8_t id[DNET_ID_SIZE];
	int err = key_id(key, klen, id);
	return err ? err : dnet_lookup_id(c, id, info);
}

static const uint8_t zero_id[DNET_ID_SIZE];

int dnet_stat(dnet_client *c, char **text, char node[64])
{
	struct dnet_req *r = NULL;
	int err = simple_retry(c, DNET_CMD_STAT, zero_id, &r);
	if (!err) {
		if (r->rbuf) {
			*text = (char *)r->rbuf;
			r->rbuf = NULL;
		} else if (!(*text = strdup(""))) {
			err = DNET_ENOMEM;
		}
		if (node)
			memcpy(node, r->conn->node, 64);
	}
	if (r)
		dnet__req_free(c, r);
	return err;
}

int dnet_ping(dnet_client *c, char node[64])
{
	struct dnet_req *r = NULL;
	int err = simple_retry(c, DNET_CMD_PING, zero_id, &r);
	if (!err && node)
		memcpy(node, r->conn->node, 64);
	if (r)
		dnet__req_free(c, r);
	return err;
}

int dnet_leave(dnet_client *c, const char *member)
{
	uint8_t payload[DNET_ADDR_WIRE_SIZE];
	if (member) {
		struct sockaddr_storage ss;
		socklen_t sl;
		struct dnet_addr_wire a;
		memset(&a, 0, sizeof(a));
		if (dnet_parse_addr(member, DNET_DEFAULT_PORT, &ss, &sl) != 0)
			return DNET_EADDR;
		if (dnet_addr_from_sockaddr(&ss, &a) != 0)
			return DNET_EADDR;
		dnet_addr_encode(payload, &a);
	}
	struct dnet_req *r = dnet__req_make(c, DNET_CMD_LEAVE, zero_id);
	if (!r)
		return DNET_ENOMEM;
	if (member) {
		r->data = payload;
		r->data_len = DNET_ADDR_WIRE_SIZE;
	}
	int err = run_sync(c, r);
	dnet__req_free(c, r);
	return err;
}

int dnet_recover(dnet_client *c)
{
	struct dnet_req *r = dnet__req_make(c, DNET_CMD_RECOVER, zero_id);
	if (!r)
		return DNET_ENOMEM;
	int err = run_sync(c, r);
	dnet__req_free(c, r);
	return err;
}

/* --- async --------------------------------------------------------------- */

static int submit_async(dnet_client *c, struct dnet_req *r, dnet_done_fn done, void *arg)
{
	int err;
	struct dnet_conn *conn = dnet__pick_conn(c, r, &err);
	if (!conn)
		goto out_free;
	r->done = done;
	r->done_arg = arg;
	err = dnet__submit(c, conn, r, DNET_FLAG_NEED_ACK);
	if (err)
		goto out_free;
	c->user_inflight++;
	return 0;

out_free:
	dnet__req_free(c, r);
	return err;
}

int dnet_submit_write_id(dnet_client *c, const uint8_t id[64], const void *data, size_t len,
			 dnet_done_fn done, void *arg)
{
	if (len && !data)
		return DNET_EINVAL;
	struct dnet_req *r = dnet__req_make(c, DNET_CMD_WRITE, id);
	if (!r)
		return DNET_ENOMEM;
	struct dnet_plan plan;
	if (len <= DNET_CHUNK_SIZE && dnet__plan(c, id, &plan)) {
		r->done = done;
		r->done_arg = arg;
		return dnet__rep_write(c, &plan, id, data, -1, 0, len, NULL, r);
	}
	if (len <= DNET_CHUNK_SIZE) {
		struct dnet_io_attr io = {.size = len, .total_size = len};
		dnet__req_set_io(r, &io);
		r->data = data;
		r->data_len = len;
		return submit_async(c, r, done, arg);
	}
	/* Larger: a chunked upload whose completion completes r. */
	struct upload *u = malloc(sizeof(*u));
	int err = u ? upload_init(c, u, id) : DNET_ENOMEM;
	if (err) {
		free(u);
		dnet__req_free(c, r);
		return err;
	}
	r->done = done;
	r->done_arg = arg;
	u->kind = SRC_MEM;
	u->mem = data;
	u->total = len;
	u->parent = r;
	c->user_inflight++;
	upload_pump(u); /* may finish (and free u) at once on error */
	return 0;
}

int dnet_submit_read_id(dnet_client *c, const uint8_t id[64], uint64_t offset, uint64_t size,
			dnet_done_fn done, void *arg)
{
	struct dnet_req *r = dnet__req_make(c, DNET_CMD_READ, id);
	if (!r)
		return DNET_ENOMEM;
	struct dnet_plan plan;
	if (dnet__plan(c, id, &plan)) {
		r->done = done;
		r->done_arg = arg;
		return dnet__rep_read(c, &plan, id, offset, size, NULL, NULL, NULL, r);
	}
	struct dnet_io_attr io = {.offset = offset, .size = size};
	dnet__req_set_io(r, &io);
	r->rd_size = size;
	return submit_async(c, r, done, arg);
}

int dnet_submit_remove_id(dnet_client *c, const uint8_t id[64], dnet_done_fn done, void *arg)
{
	struct dnet_req *r = dnet__req_make(c, DNET_CMD_DEL, id);
	if (!r)
		return DNET_ENOMEM;
	struct dnet_plan plan;
	if (dnet__plan(c, id, &plan)) {
		r->done = done;
		r->done_arg = arg;
		return dnet__rep_remove(c, &plan, id, r);
	}
	return submit_async(c, r, done, arg);
}

int dnet_submit_lookup_id(dnet_client *c, const uint8_t id[64], dnet_done_fn done, void *arg)
{
	struct dnet_req *r = dnet__req_make(c, DNET_CMD_LOOKUP, id);
	if (!r)
		return DNET_ENOMEM;
	struct dnet_plan plan;
	if (dnet__plan(c, id, &plan)) {
		r->done = done;
		r->done_arg = arg;
		return dnet__rep_lookup(c, &plan, id, 0, NULL, r);
	}
	return submit_async(c, r, done, arg);
}

int dnet_poll(dnet_client *c, int timeout_ms)
{
	uint64_t end = timeout_ms > 0 ? dnet_now_mono_ns() + (uint64_t)timeout_ms * 1000000ull : 0;
	for (;;) {
		int n = dnet__run_callbacks(c);
		if (n)
			return n;
		if (!c->user_inflight)
			return 0;
		int wait = timeout_ms;
		if (timeout_ms > 0) {
			uint64_t now = dnet_now_mono_ns();
			if (now >= end)
				wait = 0;
			else
				wait = (int)((end - now + 999999) / 1000000);
		}
		int err = dnet__loop_once(c, wait);
		if (err)
			return err;
		c->now_ok = 1; /* the round's clock (now_ns) for what its callbacks submit */
		n = dnet__run_callbacks(c);
		dnet__flush_all(c); /* and send that now, while the clock is fresh */
		c->now_ok = 0;
		if (n || !timeout_ms || (timeout_ms > 0 && dnet_now_mono_ns() >= end))
			return n;
	}
}

size_t dnet_inflight(const dnet_client *c)
{
	return c->user_inflight;
}
