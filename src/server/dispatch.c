/* dispatch.c - executes one transaction on an IO worker: decodes the command's
 * payload, calls the storage engine, and queues the reply on the connection. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/errors.h"
#include "common/log.h"
#include "common/util.h"
#include "server.h"

struct dnet_server *dnet_srv;

struct dnet_out *dnet_out_new(void)
{
	struct dnet_out *o = malloc(sizeof(*o));
	if (!o)
		return NULL;
	o->next = NULL;
	o->inl_len = o->inl_off = 0;
	o->buf = NULL;
	o->buf_len = o->buf_off = 0;
	o->fd = -1;
	o->file_off = o->file_len = 0;
	o->ver = NULL;
	o->ver_end = 0;
	return o;
}

void dnet_out_free(struct dnet_out *o)
{
	if (o->fd >= 0)
		close(o->fd);
	if (o->ver)
		o->ver->free(o->ver);
	free(o->buf);
	free(o);
}

void dnet_trans_free(struct dnet_trans *t)
{
	if (t->charged)
		dnet_net_uncharge(t);
	if (t->conn)
		dnet_conn_put(t->conn);
	free(t);
}

/* Reply header for t with `status` and `payload` bytes to follow, into o->inl. */
static void reply_hdr(struct dnet_out *o, const struct dnet_trans *t, int status,
		      uint64_t payload)
{
	struct dnet_cmd_hdr r = {.magic = DNET_MAGIC,
				 .version = DNET_PROTO_VERSION,
				 .cmd = t->hdr.cmd,
				 .flags = DNET_FLAG_REPLY,
				 .status = status,
				 .trans = t->hdr.trans,
				 .size = payload};
	memcpy(r.id, t->hdr.id, DNET_ID_SIZE);
	dnet_hdr_encode(o->inl, &r);
	o->inl_len = DNET_HDR_SIZE;
}

/* A local call is over: wake its caller (who owns t->local). */
static void finish_local(struct dnet_trans *t, struct dnet_out *o, int status)
{
	struct dnet_local *l = t->local;
	if (o)
		dnet_out_free(o);
	pthread_mutex_lock(&l->lock);
	l->status = status;
	l->done = 1;
	pthread_cond_signal(&l->cond);
	pthread_mutex_unlock(&l->lock);
	free(t);
}

/* Account for, answer (o may be NULL: no reply) and free a transaction. */
static void finish(struct dnet_trans *t, struct dnet_out *o, int status)
{
	struct dnet_server *s = dnet_srv;
	struct dnet_conn *c = t->conn;
	if (t->local) {
		finish_local(t, o, status);
		return;
	}
	unsigned cmd = t->hdr.cmd < DNET_CMD_MAX_ ? t->hdr.cmd : 0;
	dnet_stats_request(&s->stats, cmd, status, dnet_now_mono_ns() - t->recv_ns);
	if (status < 0 && status != DNET_ENOENT && status != DNET_ERANGE)
		dnet_log_debug("%s: %s failed: %s", c->peer, dnet_cmd_name(cmd),
			       dnet_strerror(status));
	if (o)
		dnet_conn_send(c, o);
	dnet_conn_trans_done(c, t->size);
	dnet_trans_free(t);
}

/* A bare reply: header only. Sent for errors always, for success when asked. */
static void finish_status(struct dnet_trans *t, int status)
{
	struct dnet_out *o = NULL;
	if (status < 0 || (t->hdr.flags & DNET_FLAG_NEED_ACK) || t->hdr.cmd == DNET_CMD_PING) {
		o = dnet_out_new();
		if (o)
			reply_hdr(o, t, status, 0);
	}
	finish(t, o, status);
}

static int handoff_redirect(struct dnet_server *s, struct dnet_trans *t);

static void write_done(void *arg, int status, const struct dnet_obj_info *info)
{
	struct dnet_trans *t = arg;
	if (t->local && info && !status) {
		t->local->info = *info;
		t->local->have_info = 1;
	}
	if (t->hdr.cmd == DNET_CMD_DEL) {
		/* A tombstone was written: say whether there was anything to delete. */
		finish_status(t, status ? status : (t->had_live ? 0 : DNET_ENOENT));
		return;
	}
	if (status < 0 || !(t->hdr.flags & DNET_FLAG_NEED_ACK) || !info) {
		finish_status(t, status);
		return;
	}
	struct dnet_out *o = dnet_out_new();
	if (o) {
		reply_hdr(o, t, 0, DNET_OBJ_INFO_SIZE);
		dnet_obj_info_encode(o->inl + DNET_HDR_SIZE, info);
		o->inl_len += DNET_OBJ_INFO_SIZE;
	}
	finish(t, o, status);
}

/* The version a write without one gets (copies > 1): newer than what is stored and
 * than the clock, with no tag and no tombstone bit. */
static uint64_t next_version(uint64_t cur)
{
	uint64_t v = dnet_now_real_ns() & ~DNET_VERSION_LOW;
	uint64_t after = (cur & ~DNET_VERSION_LOW) + DNET_VERSION_LOW + 1;
	return v > after ? v : after;
}

/* Versioned writes (copies > 1, data movement, recovery): apply only what is newer
 * than the stored object. Requests for one ID run on one IO worker in order, so
 * nothing slips in between this check and the write. Returns 0 to go on, or the
 * status to answer with (DNET_EEXIST: this write or a newer one is here). */
static int version_check(struct dnet_server *s, struct dnet_trans *t, struct dnet_io_attr *io,
			 int force)
{
	if (io->ioflags & DNET_IO_PLAIN)
		return 0; /* a middle chunk: checked at PREPARE and COMMIT */
	struct dnet_obj_info cur;
	int have = s->bops->lookup(s->backend, t->hdr.id, &cur) == 0;
	if (!io->timestamp) {
		io->timestamp = have ? next_version(cur.timestamp) : next_version(0);
		return 0;
	}
	if (!have)
		return 0;
	if (force)
		return cur.timestamp > io->timestamp ? DNET_EEXIST : 0;
	return cur.timestamp >= io->timestamp ? DNET_EEXIST : 0;
}

/* A client stored a copy here although we are not one of its homes: we stand in
 * for a home that is down; the mover hands it over once that home is back. */
static void hint_standin(struct dnet_server *s, struct dnet_trans *t)
{
	struct dnet_addr_wire home;
	if (!t->local && !dnet_member_owns(s, t->hdr.id, &home))
		dnet_mover_hint(s);
}

static void do_write(struct dnet_server *s, struct dnet_trans *t)
{
	struct dnet_io_attr io;
	uint32_t known = DNET_IO_FLAGS_KNOWN | (t->local ? DNET_IO_FORCE : 0);
	if (dnet_io_attr_decode(t->payload, t->size, &io) != 0 ||
	    io.size != t->size - DNET_IO_ATTR_SIZE || (io.ioflags & ~known) ||
	    io.reserved != 0 || io.offset > UINT64_MAX - io.size) {
		finish_status(t, DNET_EPROTO);
		return;
	}
	/* An odd version is a tombstone: only ever a whole 0-byte object (moved or
	 * recovered from another node). */
	if ((io.timestamp & DNET_VERSION_TOMB) &&
	    (io.size || io.offset || (io.ioflags & (DNET_IO_PREPARE | DNET_IO_PLAIN | DNET_IO_COMMIT)))) {
		finish_status(t, DNET_EPROTO);
		return;
	}
	if ((io.ioflags & DNET_IO_MOVE) && !dnet_auth_allowed(t, 1)) {
		atomic_fetch_add(&s->stats.auth_denied, 1);
		finish_status(t, DNET_EPERM);
		return;
	}
	int versioned = (io.ioflags & (DNET_IO_MOVE | DNET_IO_FORCE)) || s->cfg.copies > 1;
	int force = !!(io.ioflags & DNET_IO_FORCE);
	io.ioflags &= ~(DNET_IO_MOVE | DNET_IO_FORCE);
	if (versioned) {
		int err = version_check(s, t, &io, force);
		if (err) {
			finish_status(t, err);
			return;
		}
	} else if (io.timestamp == 0) {
		io.timestamp = dnet_now_real_ns() & ~DNET_VERSION_TOMB;
	}
	if (s->cfg.copies > 1 && !(io.ioflags & DNET_IO_PLAIN))
		hint_standin(s, t);
	struct dnet_write_req req = {.id = t->hdr.id, .io = io, .data = t->payload + DNET_IO_ATTR_SIZE};
	/* write_done may run inside this call or later on an engine thread; either
	 * way it frees t, so t is not touched after this line. */
	s->bops->write(s->backend, &req, write_done, t);
}

/* DEL. With one copy the object is removed. With more, a tombstone (a 0-byte
 * object with the delete's version, odd) replaces it, so a copy that missed the
 * delete cannot bring it back; tombstones are collected after a grace period. */
static void do_del(struct dnet_server *s, struct dnet_trans *t)
{
	struct dnet_io_attr io = {0};
	if (t->size && (t->size != DNET_IO_ATTR_SIZE ||
			dnet_io_attr_decode(t->payload, t->size, &io) != 0 || io.reserved ||
			(io.ioflags & ~DNET_IO_IFVERSION) || (io.ioflags && !t->local))) {
		finish_status(t, DNET_EPROTO);
		return;
	}
	struct dnet_obj_info cur;
	if (io.ioflags & DNET_IO_IFVERSION) {
		int err = s->bops->lookup(s->backend, t->hdr.id, &cur);
		if (!err && cur.timestamp != io.timestamp)
			err = DNET_EEXIST;
		finish_status(t, err ? err : s->bops->del(s->backend, t->hdr.id));
		return;
	}
	if (s->cfg.copies <= 1) {
		int err = s->bops->del(s->backend, t->hdr.id);
		if (err != DNET_ENOENT || !handoff_redirect(s, t))
			finish_status(t, err);
		return;
	}
	int have = s->bops->lookup(s->backend, t->hdr.id, &cur) == 0;
	t->had_live = have && !(cur.timestamp & DNET_VERSION_TOMB);
	if (!io.timestamp)
		io.timestamp = next_version(have ? cur.timestamp : 0);
	io.timestamp |= DNET_VERSION_TOMB;
	if (have && cur.timestamp >= io.timestamp) {
		/* A newer write (or this delete) is here already. */
		finish_status(t, t->had_live ? DNET_EEXIST : DNET_ENOENT);
		return;
	}
	hint_standin(s, t);
	struct dnet_io_attr tio = {.timestamp = io.timestamp};
	struct dnet_write_req req = {.id = t->hdr.id, .io = tio, .data = NULL};
	s->bops->write(s->backend, &req, write_done, t);
}

/* Not found, but a tombstone is here: the reply carries its info (version), so a
 * client comparing copies knows the delete is newer than what others may have. */
static void finish_tomb(struct dnet_trans *t, const struct dnet_obj_info *info)
{
	struct dnet_out *o = dnet_out_new();
	if (o) {
		reply_hdr(o, t, DNET_ENOENT, DNET_OBJ_INFO_SIZE);
		dnet_obj_info_encode(o->inl + DNET_HDR_SIZE, info);
		o->inl_len += DNET_OBJ_INFO_SIZE;
	}
	finish(t, o, DNET_ENOENT);
}

/* What a read returned and nobody will send. */
static void read_res_release(struct dnet_read_res *res)
{
	if (res->fd >= 0)
		close(res->fd);
	if (res->verify)
		res->verify->free(res->verify);
	free(res->buf);
}

static void do_read(struct dnet_server *s, struct dnet_trans *t)
{
	struct dnet_io_attr io;
	if (dnet_io_attr_decode(t->payload, t->size, &io) != 0 || io.reserved != 0) {
		finish_status(t, DNET_EPROTO);
		return;
	}
	struct dnet_read_res res = {.fd = -1};
	uint32_t rfl = t->hdr.flags & DNET_FLAG_NOCSUM;
	if ((t->hdr.flags & DNET_FLAG_STREAM_VERIFY) && !t->local)
		rfl |= DNET_READ_DEFER_VERIFY;
	int err = s->bops->read(s->backend, t->hdr.id, io.offset, io.size, rfl, &res);
	if (!err && res.verify && res.fd < 0) { /* an engine bug: nothing to check */
		res.verify->free(res.verify);
		res.verify = NULL;
	}
	if (err == DNET_ENOENT && handoff_redirect(s, t))
		return;
	if (err == DNET_ECORRUPT && s->cfg.copies > 1)
		dnet_recover_corrupt(s, t->hdr.id);
	if (err) {
		finish_status(t, err);
		return;
	}
	if (res.info.timestamp & DNET_VERSION_TOMB) {
		read_res_release(&res);
		finish_tomb(t, &res.info);
		return;
	}
	struct dnet_out *o = dnet_out_new();
	if (!o) {
		read_res_release(&res);
		finish_status(t, DNET_ENOMEM);
		return;
	}
	reply_hdr(o, t, 0, DNET_IO_ATTR_SIZE + res.len);
	struct dnet_io_attr rio = {.offset = io.offset,
				   .size = res.len,
				   .total_size = res.info.size,
				   .timestamp = res.info.timestamp};
	dnet_io_attr_encode(o->inl + DNET_HDR_SIZE, &rio);
	o->inl_len += DNET_IO_ATTR_SIZE;
	if (res.fd >= 0) {
		o->fd = res.fd;
		o->file_off = res.file_offset;
		o->file_len = res.len;
		o->ver = res.verify;
		o->ver_end = res.file_offset;
		free(res.buf);
	} else {
		o->buf = res.buf;
		o->buf_len = res.len;
	}
	finish(t, o, 0);
}

static void do_lookup(struct dnet_server *s, struct dnet_trans *t)
{
	struct dnet_obj_info info;
	int err = s->bops->lookup(s->backend, t->hdr.id, &info);
	if (err == DNET_ENOENT && handoff_redirect(s, t))
		return;
	if (err) {
		finish_status(t, err);
		return;
	}
	if (info.timestamp & DNET_VERSION_TOMB) {
		finish_tomb(t, &info);
		return;
	}
	if (t->local) {
		t->local->info = info;
		t->local->have_info = 1;
		finish(t, NULL, 0);
		return;
	}
	struct dnet_out *o = dnet_out_new();
	if (o) {
		reply_hdr(o, t, 0, DNET_OBJ_INFO_SIZE + DNET_ADDR_WIRE_SIZE);
		dnet_obj_info_encode(o->inl + DNET_HDR_SIZE, &info);
		dnet_addr_encode(o->inl + DNET_HDR_SIZE + DNET_OBJ_INFO_SIZE, &t->conn->self_addr);
		o->inl_len += DNET_OBJ_INFO_SIZE + DNET_ADDR_WIRE_SIZE;
	}
	finish(t, o, 0);
}

static void do_stat(struct dnet_server *s, struct dnet_trans *t)
{
	size_t len = 0;
	char *text = dnet_stats_text(s, &len);
	struct dnet_out *o = text ? dnet_out_new() : NULL;
	if (!o) {
		free(text);
		finish_status(t, DNET_ENOMEM);
		return;
	}
	reply_hdr(o, t, 0, len);
	o->buf = (uint8_t *)text;
	o->buf_len = len;
	finish(t, o, 0);
}

/* A reply carrying a malloc()ed payload. */
static void finish_payload(struct dnet_trans *t, uint8_t *buf, size_t len)
{
	struct dnet_out *o = buf ? dnet_out_new() : NULL;
	if (!o) {
		free(buf);
		finish_status(t, DNET_ENOMEM);
		return;
	}
	reply_hdr(o, t, 0, len);
	o->buf = buf;
	o->buf_len = len;
	finish(t, o, 0);
}

/* Redirect: this node does not own the ID; the reply names the owner so the client
 * can go there (and refresh its routes). The payload is the address, then a u32 of
 * hints: DNET_REDIRECT_DIRECT asks the client to resend with DNET_FLAG_DIRECT (the
 * named node is the object's previous owner, which may still hold it). */
static void finish_notowner(struct dnet_trans *t, const struct dnet_addr_wire *owner, uint32_t hints)
{
	atomic_fetch_add(&dnet_srv->stats.redirects, 1);
	if (hints & DNET_REDIRECT_DIRECT)
		atomic_fetch_add(&dnet_srv->stats.handoff_redirects, 1);
	struct dnet_out *o = dnet_out_new();
	if (o) {
		reply_hdr(o, t, DNET_ENOTOWNER, DNET_ADDR_WIRE_SIZE + 4);
		dnet_addr_encode(o->inl + DNET_HDR_SIZE, owner);
		dnet_put_u32(o->inl + DNET_HDR_SIZE + DNET_ADDR_WIRE_SIZE, hints);
		o->inl_len += DNET_ADDR_WIRE_SIZE + 4;
	}
	finish(t, o, DNET_ENOTOWNER);
}

/* A read, lookup or delete found nothing here: while objects are moving after an
 * ownership change, send the client to the previous owner. */
static int handoff_redirect(struct dnet_server *s, struct dnet_trans *t)
{
	struct dnet_addr_wire prev, owner;
	/* With several copies the client tries the others itself; local calls ask
	 * about this node only. */
	if (s->cfg.copies > 1 || t->local)
		return 0;
	/* Not in the ring yet: the key's owner and its data are elsewhere. The client
	 * asks again shortly (by then we know the ring) instead of hearing "not found". */
	if (dnet_member_joining(s)) {
		atomic_fetch_add(&s->stats.joining_refused, 1);
		finish_status(t, DNET_EJOINING);
		return 1;
	}
	/* Asked as the previous owner for a key we have just handed over: it moved
	 * between the client's two hops; send it back to the owner, which has it. */
	if ((t->hdr.flags & DNET_FLAG_DIRECT) && dnet_mover_moved_recently(s, t->hdr.id) &&
	    !dnet_member_owns(s, t->hdr.id, &owner)) {
		finish_notowner(t, &owner, 0);
		return 1;
	}
	if (!dnet_member_prev_owner(s, t->hdr.id, !!(t->hdr.flags & DNET_FLAG_DIRECT), &prev))
		return 0;
	finish_notowner(t, &prev, DNET_REDIRECT_DIRECT);
	return 1;
}

static void do_ping(struct dnet_server *s, struct dnet_trans *t)
{
	/* A ping may carry the sender's route table digest (8 bytes); the reply then
	 * carries ours, so nodes notice when their views differ. */
	if (t->size == 0) {
		finish_status(t, 0);
		return;
	}
	if (t->size != 8) {
		finish_status(t, DNET_EPROTO);
		return;
	}
	uint8_t *d = malloc(8);
	if (d)
		dnet_put_u64(d, dnet_member_digest(s));
	finish_payload(t, d, 8);
}

static void do_join(struct dnet_server *s, struct dnet_trans *t)
{
	uint8_t *out = NULL;
	size_t len = 0;
	int err = dnet_member_join(s, t->payload, (size_t)t->size, &out, &len);
	if (err)
		finish_status(t, err);
	else
		finish_payload(t, out, len);
}

static int is_keyed(int cmd)
{
	return cmd == DNET_CMD_WRITE || cmd == DNET_CMD_READ || cmd == DNET_CMD_DEL ||
	       cmd == DNET_CMD_LOOKUP;
}

void dnet_dispatch(void *ctx, struct dnet_trans *t)
{
	struct dnet_server *s = ctx;
	uint64_t t0 = dnet_now_mono_ns();
	if (atomic_load(&s->stopping) > 1) {
		finish_status(t, DNET_ESHUTDOWN);
		return;
	}
	if (!dnet_auth_allowed(t, 0)) {
		atomic_fetch_add(&s->stats.auth_denied, 1);
		finish_status(t, DNET_EPERM);
		atomic_fetch_add(&s->stats.busy_ns, dnet_now_mono_ns() - t0);
		return;
	}
	struct dnet_addr_wire owner;
	if (is_keyed(t->hdr.cmd) && !(t->hdr.flags & DNET_FLAG_DIRECT) &&
	    !dnet_member_owns(s, t->hdr.id, &owner)) {
		finish_notowner(t, &owner, 0);
		atomic_fetch_add(&s->stats.busy_ns, dnet_now_mono_ns() - t0);
		return;
	}
	switch (t->hdr.cmd) {
	case DNET_CMD_PING:
		do_ping(s, t);
		break;
	case DNET_CMD_ROUTES: {
		size_t len = 0;
		uint8_t *buf = dnet_member_routes(s, &len);
		finish_payload(t, buf, len);
		break;
	}
	case DNET_CMD_JOIN:
		do_join(s, t);
		break;
	case DNET_CMD_LEAVE: {
		struct dnet_addr_wire a;
		if (t->size == 0)
			finish_status(t, dnet_member_leave(s, NULL));
		else if (t->size != DNET_ADDR_WIRE_SIZE || dnet_addr_decode(t->payload, t->size, &a))
			finish_status(t, DNET_EPROTO);
		else
			finish_status(t, dnet_member_leave(s, &a));
		break;
	}
	case DNET_CMD_WRITE:
		do_write(s, t);
		break;
	case DNET_CMD_READ:
		do_read(s, t);
		break;
	case DNET_CMD_DEL:
		do_del(s, t);
		break;
	case DNET_CMD_LOOKUP:
		do_lookup(s, t);
		break;
	case DNET_CMD_STAT:
		do_stat(s, t);
		break;
	case DNET_CMD_SYNC: {
		uint8_t *out = NULL;
		size_t len = 0;
		int err = dnet_sync_request(s, t->payload, (size_t)t->size, &out, &len);
		if (err)
			finish_status(t, err);
		else
			finish_payload(t, out, len);
		break;
	}
	case DNET_CMD_AUTH: {
		uint8_t reply[64];
		size_t len = 0;
		int close_conn = 0;
		int err = dnet_auth_step(s, t->conn, t->payload, (size_t)t->size, reply, &len,
					 &close_conn);
		struct dnet_conn *c = t->conn;
		if (close_conn)
			dnet_conn_get(c);
		if (err) {
			finish_status(t, err);
		} else {
			uint8_t *buf = malloc(len ? len : 1);
			if (buf)
				memcpy(buf, reply, len);
			finish_payload(t, buf, len);
		}
		if (close_conn) {
			dnet_conn_shut(c);
			dnet_conn_put(c);
		}
		break;
	}
	case DNET_CMD_RECOVER:
		if (t->size) {
			finish_status(t, DNET_EPROTO);
		} else if (s->cfg.copies <= 1) {
			finish_status(t, DNET_EUNSUPP);
		} else {
			dnet_recover_kick(s);
			finish_status(t, 0);
		}
		break;
	default:
		finish_status(t, DNET_EUNSUPP);
		break;
	}
	atomic_fetch_add(&s->stats.busy_ns, dnet_now_mono_ns() - t0);
}

void dnet_dispatch_flush(void *ctx)
{
	struct dnet_server *s = ctx;
	if (!s->bops->flush)
		return;
	uint64_t t0 = dnet_now_mono_ns(); /* held writes are written here: worker time too */
	s->bops->flush(s->backend);
	atomic_fetch_add(&s->stats.busy_ns, dnet_now_mono_ns() - t0);
}

int dnet_local_call(struct dnet_server *s, uint8_t cmd, const uint8_t *id,
		    const struct dnet_io_attr *io, const void *data, struct dnet_obj_info *info)
{
	uint64_t dlen = io ? io->size : 0;
	size_t plen = io ? DNET_IO_ATTR_SIZE + (size_t)dlen : 0;
	struct dnet_trans *t = malloc(sizeof(*t) + plen);
	if (!t)
		return DNET_ENOMEM;
	memset(t, 0, sizeof(*t));
	struct dnet_local l;
	memset(&l, 0, sizeof(l));
	pthread_mutex_init(&l.lock, NULL);
	pthread_cond_init(&l.cond, NULL);
	t->local = &l;
	t->hdr.magic = DNET_MAGIC;
	t->hdr.version = DNET_PROTO_VERSION;
	t->hdr.cmd = cmd;
	t->hdr.flags = DNET_FLAG_DIRECT | DNET_FLAG_NEED_ACK;
	t->hdr.size = plen;
	memcpy(t->hdr.id, id, DNET_ID_SIZE);
	t->recv_ns = dnet_now_mono_ns();
	t->size = plen;
	t->payload = (uint8_t *)(t + 1);
	if (io) {
		dnet_io_attr_encode(t->payload, io);
		if (dlen)
			memcpy(t->payload + DNET_IO_ATTR_SIZE, data, (size_t)dlen);
	}
	dnet_pool_push(s->pool, t);
	pthread_mutex_lock(&l.lock);
	while (!l.done)
		pthread_cond_wait(&l.cond, &l.lock);
	pthread_mutex_unlock(&l.lock);
	pthread_mutex_destroy(&l.lock);
	pthread_cond_destroy(&l.cond);
	if (info && l.have_info)
		*info = l.info;
	return l.status;
}
