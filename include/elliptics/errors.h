/* elliptics/errors.h - one macro list of Elliptics status codes: the enum and the message table
 * are both generated from it, so a code can never lack its text. */
#ifndef ELLIPTICS_ERRORS_H
#define ELLIPTICS_ERRORS_H

/* Codes travel on the wire (int32 status field), so their values are part of the
 * protocol: append new ones, never renumber. 0 is success; all errors are negative. */
#define DNET_ERRNO_MAP(XX)                                                         \
	XX(NOENT, -1, "object not found")                                          \
	XX(INVAL, -2, "invalid argument")                                          \
	XX(NOMEM, -3, "out of memory")                                             \
	XX(IO, -4, "input/output error")                                           \
	XX(NOSPC, -5, "no space left on device")                                   \
	XX(PROTO, -6, "protocol error (malformed message)")                        \
	XX(TOOBIG, -7, "message or object too large")                              \
	XX(TIMEDOUT, -8, "operation timed out")                                    \
	XX(CONNREFUSED, -9, "connection refused")                                  \
	XX(CONNRESET, -10, "connection reset by peer")                             \
	XX(NOTCONN, -11, "not connected to any node")                              \
	XX(CORRUPT, -12, "stored object is corrupt (checksum mismatch)")           \
	XX(UNSUPP, -13, "operation not supported")                                 \
	XX(SHUTDOWN, -14, "server is shutting down")                               \
	XX(BUSY, -15, "resource busy, try again")                                  \
	XX(EXIST, -16, "already exists")                                           \
	XX(PERM, -17, "permission denied")                                         \
	XX(RANGE, -18, "offset or size out of range")                              \
	XX(AGAIN, -19, "resource temporarily unavailable")                         \
	XX(ADDR, -20, "bad address or host name")                                  \
	XX(SYS, -21, "system call failed")                                         \
	XX(NOTOWNER, -22, "node does not own this ID (reply names the owner)")    \
	XX(NODEDOWN, -23, "the node owning this ID is down")                     \
	XX(QUORUM, -24, "fewer copies than the write quorum acknowledged")        \
	XX(TLSREQUIRED, -25, "the node speaks TLS on this port: connect with --tls-ca FILE") \
	XX(NOTLS, -26, "the node does not speak TLS on this port: connect without --tls-ca") \
	XX(TLSCERT, -27, "TLS: certificate refused (the node's is not signed by --tls-ca, or the node did not accept ours)") \
	XX(TLS, -28, "TLS handshake failed")                                       \
	XX(JOINING, -29, "the node has not joined the ring yet (try again)")

typedef enum {
	DNET_OK = 0,
#define DNET_ERR_ENUM_(name, val, msg) DNET_E##name = (val),
	DNET_ERRNO_MAP(DNET_ERR_ENUM_)
#undef DNET_ERR_ENUM_
	DNET_E_MIN_ = -30
} dnet_status_t;

/* Text for a status code; never NULL (unknown codes get a generic text). */
const char *dnet_strerror(int err);
/* Short symbolic name ("NOENT"), or "UNKNOWN". */
const char *dnet_errname(int err);
/* Map a positive errno (ENOENT, ENOSPC, ...) to a DNET_E* code. */
int dnet_from_errno(int e);

#endif
