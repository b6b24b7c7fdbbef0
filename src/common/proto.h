/* proto.h - the Elliptics wire format: command header, per-command payloads, and
 * their bounds-checked encoders/decoders. docs/protocol.md is the prose version. */
#ifndef DNET_PROTO_H
#define DNET_PROTO_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define DNET_MAGIC 0x4c4c4544u /* "DELL" read as little-endian bytes 'D','E','L','L' */
#define DNET_PROTO_VERSION 1
#define DNET_ID_SIZE 64 /* SHA-512 */
#define DNET_HDR_SIZE 96
#define DNET_MAX_KEY_SIZE 4096
/* Default and hard ceiling for a request payload the server accepts whole. Larger
 * objects travel as several WRITE chunks (PREPARE .. COMMIT). */
#define DNET_DEFAULT_MAX_PAYLOAD (64u << 20)
#define DNET_HARD_MAX_PAYLOAD (1024u << 20)
/* Chunk size the client uses to stream large objects. */
#define DNET_CHUNK_SIZE (8u << 20)

enum dnet_cmd {
	DNET_CMD_PING = 1,   /* no payload; reply with no payload */
	DNET_CMD_WRITE = 2,  /* io_attr + data; reply: obj_info */
	DNET_CMD_READ = 3,   /* io_attr; reply: io_attr + data */
	DNET_CMD_DEL = 4,    /* no payload, or an io_attr whose timestamp is the delete's
			      * version (copies > 1: a tombstone); reply: none */
	DNET_CMD_LOOKUP = 5, /* no payload; reply: obj_info (+ node addr) */
	DNET_CMD_STAT = 6,   /* no payload; reply: "name value\n" text lines */
	DNET_CMD_ROUTES = 7, /* no payload; reply: the node's route table (ring.h wire form) */
	DNET_CMD_JOIN = 8,   /* route table of the sender; reply: the receiver's, after merging */
	DNET_CMD_LEAVE = 9,  /* no payload: this node leaves the ring (moving its data out);
			      * a dnet_addr_wire: remove the member with that address */
	DNET_CMD_SYNC = 10,  /* anti-entropy between copies (node to node): a u32 op, then
			      * op data; see docs/replication.md */
	DNET_CMD_RECOVER = 11, /* no payload: start a recovery pass now; reply: none */
	DNET_CMD_AUTH = 12,  /* the key handshake (common/auth.h, docs/security.md) */
	DNET_CMD_MAX_ = 13   /* first unused; the server answers PROTO/UNSUPP above */
};

/* Header flags. */
#define DNET_FLAG_REPLY 0x0001u    /* this message answers transaction `trans` */
#define DNET_FLAG_MORE 0x0002u     /* more replies for this transaction follow */
#define DNET_FLAG_NEED_ACK 0x0004u /* send a final (possibly empty) reply even when none needed */
#define DNET_FLAG_NOCSUM 0x0008u   /* READ: skip checksum verification (tools only) */
#define DNET_FLAG_DIRECT 0x0010u   /* execute on this node even if it does not own the ID */
/* READ: verify the data as it is sent instead of before: a corruption found after
 * the reply began ends it by closing the connection (every byte sent was verified);
 * the next read of that object is refused with DNET_ECORRUPT before anything is sent. */
#define DNET_FLAG_STREAM_VERIFY 0x0020u
#define DNET_FLAGS_KNOWN 0x003fu

/* Fixed 96-byte command header, little-endian on the wire:
 *   0  u32 magic       DNET_MAGIC
 *   4  u8  version     DNET_PROTO_VERSION
 *   5  u8  cmd         enum dnet_cmd
 *   6  u16 flags       DNET_FLAG_*
 *   8  i32 status      0 or DNET_E* (replies)
 *  12  u32 reserved    must be 0
 *  16  u64 trans       transaction id, chosen by the sender of the request
 *  24  u64 size        payload bytes that follow the header
 *  32  u8  id[64]      object id
 */
struct dnet_cmd_hdr {
	uint32_t magic;
	uint8_t version;
	uint8_t cmd;
	uint16_t flags;
	int32_t status;
	uint32_t reserved;
	uint64_t trans;
	uint64_t size;
	uint8_t id[DNET_ID_SIZE];
};

/* IO attributes, 48 bytes, first in WRITE and READ requests and READ replies:
 *   0 u64 offset      byte offset in the object
 *   8 u64 size        bytes of data (READ request: 0 = to the end)
 *  16 u64 total_size  WRITE+PREPARE: final object size; READ reply: object size
 *  24 u64 timestamp   ns since epoch; WRITE: 0 = server time; READ reply: object's
 *  32 u64 cookie      WRITE: upload id pairing PREPARE/chunks/COMMIT
 *  40 u32 ioflags     DNET_IO_*
 *  44 u32 reserved    must be 0
 */
struct dnet_io_attr {
	uint64_t offset;
	uint64_t size;
	uint64_t total_size;
	uint64_t timestamp;
	uint64_t cookie;
	uint32_t ioflags;
	uint32_t reserved;
};
#define DNET_IO_ATTR_SIZE 48

/* WRITE io flags. A write without PREPARE/PLAIN/COMMIT and with offset 0 replaces the
 * object atomically; with offset > 0 it updates a range of the existing object
 * (atomically: readers see the old or the new object, never a mix). */
#define DNET_IO_PREPARE 0x0001u /* start a chunked upload of total_size bytes (0 = unknown until COMMIT) */
#define DNET_IO_PLAIN 0x0002u   /* a middle chunk of a chunked upload */
#define DNET_IO_COMMIT 0x0004u  /* last chunk: make the upload visible atomically */
/* Node-to-node data movement: apply only if the node has no copy with a timestamp
 * >= io.timestamp (else DNET_EEXIST), so an old copy never replaces a newer write.
 * Handled by the server; engines never see it. */
#define DNET_IO_MOVE 0x0008u
#define DNET_IO_FLAGS_KNOWN 0x000fu
#define DNET_IO_ENGINE_FLAGS 0x0007u /* the flags passed on to storage engines */
/* Server-internal (never accepted from the network): a DEL that removes the object
 * for good only if its stored version is exactly io.timestamp (the data mover after
 * a hand-off, tombstone collection). */
#define DNET_IO_IFVERSION 0x0100u
/* Server-internal: a versioned WRITE that also replaces the same version (the
 * stored copy is corrupt). */
#define DNET_IO_FORCE 0x0200u

/* Versions (docs/replication.md). An object's timestamp is its version: ns since
 * the epoch whose low 12 bits are replaced by the writer's tag (bits 1..11, random
 * per client handle) and a tombstone bit (bit 0: the object was deleted; a
 * tombstone is stored as a 0-byte object). With copies > 1 a WRITE or DEL carrying
 * version v is applied only if the stored version is < v, else DNET_EEXIST (the
 * node has this write or a newer one): every copy keeps the greatest version. */
#define DNET_VERSION_TOMB 0x1ull
#define DNET_VERSION_LOW 0xfffull

/* DNET_ENOTOWNER replies carry a dnet_addr_wire (the node to ask) and then a u32 of
 * hints: */
#define DNET_REDIRECT_DIRECT 0x0001u /* resend there with DNET_FLAG_DIRECT (a previous owner) */

/* Object info, 48 bytes: WRITE and LOOKUP replies.
 *   0 u64 size
 *   8 u64 timestamp   ns since epoch
 *  16 u64 version     reserved (0); the timestamp is the version
 *  24 u8  csum[16]    XXH3-128 of the whole object, canonical (big-endian) form
 *  40 u32 flags       reserved
 *  44 u32 reserved
 * A LOOKUP reply may append a node address (struct dnet_addr_wire, 24 bytes). */
struct dnet_obj_info {
	uint64_t size;
	uint64_t timestamp;
	uint64_t version;
	uint8_t csum[16];
	uint32_t flags;
	uint32_t reserved;
};
#define DNET_OBJ_INFO_SIZE 48

/* Node address on the wire, 24 bytes: u16 family (4 or 6), u16 port, u8 addr[16]
 * (IPv4 in the first 4 bytes), u32 reserved. */
struct dnet_addr_wire {
	uint16_t family;
	uint16_t port;
	uint8_t addr[16];
};
#define DNET_ADDR_WIRE_SIZE 24

/* Encoders write exactly *_SIZE bytes. Decoders return 0 or DNET_EPROTO and never
 * read past `len`. */
void dnet_hdr_encode(uint8_t out[DNET_HDR_SIZE], const struct dnet_cmd_hdr *h);
int dnet_hdr_decode(const uint8_t *buf, size_t len, struct dnet_cmd_hdr *h);
/* Full validation of a decoded header received from an untrusted peer: magic,
 * version, known cmd and flags, reserved zero, size <= max_payload (replies to READ
 * are checked by the caller, since they stream). Returns 0, DNET_EPROTO or DNET_ETOOBIG. */
int dnet_hdr_validate(const struct dnet_cmd_hdr *h, uint64_t max_payload);

void dnet_io_attr_encode(uint8_t out[DNET_IO_ATTR_SIZE], const struct dnet_io_attr *io);
int dnet_io_attr_decode(const uint8_t *buf, size_t len, struct dnet_io_attr *io);
void dnet_obj_info_encode(uint8_t out[DNET_OBJ_INFO_SIZE], const struct dnet_obj_info *oi);
int dnet_obj_info_decode(const uint8_t *buf, size_t len, struct dnet_obj_info *oi);
void dnet_addr_encode(uint8_t out[DNET_ADDR_WIRE_SIZE], const struct dnet_addr_wire *a);
int dnet_addr_decode(const uint8_t *buf, size_t len, struct dnet_addr_wire *a);

const char *dnet_cmd_name(int cmd);

/* Little-endian helpers: one unaligned load or store each (memcpy) on little-endian
 * hosts; byte by byte elsewhere. (GCC -O2 did not merge the byte loops: they were
 * 13% of the server's user-space instructions per request.) */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define DNET_LE_HOST 1
#else
#define DNET_LE_HOST 0
#endif
static inline void dnet_put_u16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}
static inline void dnet_put_u32(uint8_t *p, uint32_t v)
{
	if (DNET_LE_HOST) {
		memcpy(p, &v, 4);
		return;
	}
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
static inline void dnet_put_u64(uint8_t *p, uint64_t v)
{
	if (DNET_LE_HOST) {
		memcpy(p, &v, 8);
		return;
	}
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint16_t dnet_get_u16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}
static inline uint32_t dnet_get_u32(const uint8_t *p)
{
	uint32_t v = 0;
	if (DNET_LE_HOST) {
		memcpy(&v, p, 4);
		return v;
	}
	for (int i = 3; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}
static inline uint64_t dnet_get_u64(const uint8_t *p)
{
	uint64_t v = 0;
	if (DNET_LE_HOST) {
		memcpy(&v, p, 8);
		return v;
	}
	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

#endif
