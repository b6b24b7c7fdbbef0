/* tools.h - offline operations on an open engine, for `ellipticsd --check`,
 * `--export` and `--import` (src/server/main.c) and for tests. Any engine works:
 * they use only the backend.h contract.
 *
 * The export stream (all integers little-endian; XXH3 as in backend.h):
 *
 *   stream header, 32 bytes
 *     0 u8[8]  magic "DNETEXP\0"     8 u32 version (1)     12 u32 flags (0)
 *    16 u64    reserved (0)         24 u64 XXH3-64 of bytes [0, 24)
 *   then one record per object, 128 bytes + data
 *     0 u32    magic "DXOB"          4 u32 reserved (0)
 *     8 u8[64] object ID            72 u64 timestamp (ns; carried bit-exactly)
 *    80 u64    data size (<= 2^44)  88 u8[16] XXH3-128 of the data (= dnet_obj_info.csum)
 *   104 u64    reserved (0)        112 u64 reserved (0)
 *   120 u64    XXH3-64 of bytes [0, 120)
 *   128        the data, `size` bytes
 *   then the end record, 128 bytes
 *     0 u32    magic "DXND"          4 u32 reserved (0)
 *     8 u64    objects in the stream  16 u64 data bytes in the stream
 *    24 ...    zeros                120 u64 XXH3-64 of bytes [0, 120)
 *   and nothing after it.
 *
 * Objects are written in ID order. A stream without its end record, with trailing
 * bytes, a bad header checksum, an unknown magic or version, a size over 2^44, or
 * data that does not match its checksum is refused. */
#ifndef DNET_TOOLS_H
#define DNET_TOOLS_H

#include <stdint.h>
#include <stdio.h>

#include "backend.h"

#define DNET_EXPORT_MAGIC "DNETEXP\0"
#define DNET_EXPORT_VERSION 1
#define DNET_EXPORT_HDR 32
#define DNET_EXPORT_REC 128
#define DNET_EXPORT_MAX_SIZE (1ull << 44)

struct dnet_tool_result {
	uint64_t objects; /* objects checked / exported / imported */
	uint64_t bytes;	  /* their data bytes */
	uint64_t bad;	  /* corrupt objects found (check, export) */
	uint64_t vanished; /* listed by iterate but gone when read */
};

/* Reads and verifies every object; names each corrupt one on `out`
 * ("corrupt HEXID: reason"). Returns 0 when it could run (r->bad may be > 0), or a
 * DNET_E* code. */
int dnet_tool_check(const struct dnet_backend_ops *ops, struct dnet_backend *b, FILE *out,
		    struct dnet_tool_result *r);

/* Writes every object to fd in the stream format. A corrupt object is named on
 * `log` and left out (counted in r->bad); the stream stays valid. Returns 0 or a
 * DNET_E* code (the stream is then incomplete: it has no end record). */
int dnet_tool_export(const struct dnet_backend_ops *ops, struct dnet_backend *b, int fd,
		     FILE *log, struct dnet_tool_result *r);

/* Verifies a stream read from fd, writing nothing (verify_only), or imports it:
 * every object is written with its timestamp, and only after its data matched its
 * checksum (a large object is sent as a chunked upload whose COMMIT is withheld
 * until then). The first problem stops it, named on `log`, with a DNET_E* code
 * (DNET_ECORRUPT for a bad stream); objects imported before stay. */
int dnet_tool_import(const struct dnet_backend_ops *ops, struct dnet_backend *b, int fd,
		     int verify_only, FILE *log, struct dnet_tool_result *r);

#endif
