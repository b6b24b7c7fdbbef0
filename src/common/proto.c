/* proto.c - encode/decode of the wire structures in proto.h, with bounds checks. */
#include <string.h>

#include "errors.h"
#include "proto.h"

void dnet_hdr_encode(uint8_t out[DNET_HDR_SIZE], const struct dnet_cmd_hdr *h)
{
	dnet_put_u32(out + 0, h->magic);
	out[4] = h->version;
	out[5] = h->cmd;
	dnet_put_u16(out + 6, h->flags);
	dnet_put_u32(out + 8, (uint32_t)h->status);
	dnet_put_u32(out + 12, h->reserved);
	dnet_put_u64(out + 16, h->trans);
	dnet_put_u64(out + 24, h->size);
	memcpy(out + 32, h->id, DNET_ID_SIZE);
}

int dnet_hdr_decode(const uint8_t *buf, size_t len, struct dnet_cmd_hdr *h)
{
	if (!buf || len < DNET_HDR_SIZE)
		return DNET_EPROTO;
	h->magic = dnet_get_u32(buf + 0);
	h->version = buf[4];
	h->cmd = buf[5];
	h->flags = dnet_get_u16(buf + 6);
	h->status = (int32_t)dnet_get_u32(buf + 8);
	h->reserved = dnet_get_u32(buf + 12);
	h->trans = dnet_get_u64(buf + 16);
	h->size = dnet_get_u64(buf + 24);
	memcpy(h->id, buf + 32, DNET_ID_SIZE);
	return 0;
}

int dnet_hdr_validate(const struct dnet_cmd_hdr *h, uint64_t max_payload)
{
	if (h->magic != DNET_MAGIC || h->version != DNET_PROTO_VERSION)
		return DNET_EPROTO;
	if (h->cmd == 0 || h->cmd >= DNET_CMD_MAX_)
		return DNET_EPROTO;
	if (h->flags & ~DNET_FLAGS_KNOWN)
		return DNET_EPROTO;
	if (h->reserved != 0)
		return DNET_EPROTO;
	if (h->size > max_payload || h->size > DNET_HARD_MAX_PAYLOAD)
		return DNET_ETOOBIG;
	return 0;
}

void dnet_io_attr_encode(uint8_t out[DNET_IO_ATTR_SIZE], const struct dnet_io_attr *io)
{
	dnet_put_u64(out + 0, io->offset);
	dnet_put_u64(out + 8, io->size);
	dnet_put_u64(out + 16, io->total_size);
	dnet_put_u64(out + 24, io->timestamp);
	dnet_put_u64(out + 32, io->cookie);
	dnet_put_u32(out + 40, io->ioflags);
	dnet_put_u32(out + 44, io->reserved);
}

int dnet_io_attr_decode(const uint8_t *buf, size_t len, struct dnet_io_attr *io)
{
	if (!buf || len < DNET_IO_ATTR_SIZE)
		return DNET_EPROTO;
	io->offset = dnet_get_u64(buf + 0);
	io->size = dnet_get_u64(buf + 8);
	io->total_size = dnet_get_u64(buf + 16);
	io->timestamp = dnet_get_u64(buf + 24);
	io->cookie = dnet_get_u64(buf + 32);
	io->ioflags = dnet_get_u32(buf + 40);
	io->reserved = dnet_get_u32(buf + 44);
	return 0;
}

void dnet_obj_info_encode(uint8_t out[DNET_OBJ_INFO_SIZE], const struct dnet_obj_info *oi)
{
	dnet_put_u64(out + 0, oi->size);
	dnet_put_u64(out + 8, oi->timestamp);
	dnet_put_u64(out + 16, oi->version);
	memcpy(out + 24, oi->csum, 16);
	dnet_put_u32(out + 40, oi->flags);
	dnet_put_u32(out + 44, oi->reserved);
}

int dnet_obj_info_decode(const uint8_t *buf, size_t len, struct dnet_obj_info *oi)
{
	if (!buf || len < DNET_OBJ_INFO_SIZE)
		return DNET_EPROTO;
	oi->size = dnet_get_u64(buf + 0);
	oi->timestamp = dnet_get_u64(buf + 8);
	oi->version = dnet_get_u64(buf + 16);
	memcpy(oi->csum, buf + 24, 16);
	oi->flags = dnet_get_u32(buf + 40);
	oi->reserved = dnet_get_u32(buf + 44);
	return 0;
}

void dnet_addr_encode(uint8_t out[DNET_ADDR_WIRE_SIZE], const struct dnet_addr_wire *a)
{
	memset(out, 0, DNET_ADDR_WIRE_SIZE);
	dnet_put_u16(out + 0, a->family);
	dnet_put_u16(out + 2, a->port);
	memcpy(out + 4, a->addr, 16);
}

int dnet_addr_decode(const uint8_t *buf, size_t len, struct dnet_addr_wire *a)
{
	if (!buf || len < DNET_ADDR_WIRE_SIZE)
		return DNET_EPROTO;
	a->family = dnet_get_u16(buf + 0);
	a->port = dnet_get_u16(buf + 2);
	memcpy(a->addr, buf + 4, 16);
	if (a->family != 4 && a->family != 6)
		return DNET_EPROTO;
	return 0;
}

const char *dnet_cmd_name(int cmd)
{
	switch (cmd) {
	case DNET_CMD_PING:
		return "ping";
	case DNET_CMD_WRITE:
		return "write";
	case DNET_CMD_READ:
		return "read";
	case DNET_CMD_DEL:
		return "del";
	case DNET_CMD_LOOKUP:
		return "lookup";
	case DNET_CMD_STAT:
		return "stat";
	case DNET_CMD_ROUTES:
		return "routes";
	case DNET_CMD_JOIN:
		return "join";
	case DNET_CMD_LEAVE:
		return "leave";
	case DNET_CMD_SYNC:
		return "sync";
	case DNET_CMD_RECOVER:
		return "recover";
	default:
		return "unknown";
	}
}
