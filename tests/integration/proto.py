"""proto.py - the Elliptics wire format in Python, mirroring src/common/proto.h, for
tests that speak the protocol over raw sockets (pipelining, hostile input, livelock)."""
import hashlib
import socket
import struct
from collections import namedtuple

MAGIC = 0x4C4C4544  # bytes 'D','E','L','L'
VERSION = 1
ID_SIZE = 64
HDR_SIZE = 96
IO_ATTR_SIZE = 48
OBJ_INFO_SIZE = 48
ADDR_WIRE_SIZE = 24
MAX_KEY_SIZE = 4096
DEFAULT_MAX_PAYLOAD = 64 << 20
HARD_MAX_PAYLOAD = 1024 << 20
CHUNK_SIZE = 8 << 20

CMD_PING = 1
CMD_WRITE = 2
CMD_READ = 3
CMD_DEL = 4
CMD_LOOKUP = 5
CMD_STAT = 6
CMD_ROUTES = 7
CMD_JOIN = 8
CMD_LEAVE = 9
CMD_SYNC = 10
CMD_RECOVER = 11
CMD_AUTH = 12
CMD_MAX_ = 13

FLAG_REPLY = 0x0001
FLAG_MORE = 0x0002
FLAG_NEED_ACK = 0x0004
FLAG_NOCSUM = 0x0008
FLAG_DIRECT = 0x0010
FLAG_STREAM_VERIFY = 0x0020
FLAGS_KNOWN = 0x003F

IO_PREPARE = 0x0001
IO_PLAIN = 0x0002
IO_COMMIT = 0x0004

# Status codes, from include/elliptics/errors.h (values travel on the wire).
EOK = 0
ENOENT = -1
EINVAL = -2
ENOMEM = -3
EIO = -4
ENOSPC = -5
EPROTO = -6
ETOOBIG = -7
ETIMEDOUT = -8
ECORRUPT = -12
EUNSUPP = -13
EBUSY = -15
EEXIST = -16
EPERM = -17
ERANGE = -18
ENOTOWNER = -22

# NOTOWNER reply hints (the u32 after the owner's address).
REDIRECT_DIRECT = 0x1

# Route table node states.
NODE_UP = 1
NODE_DOWN = 2
NODE_LEFT = 3
ZONE_MAX = 32

# <: little-endian, no padding. magic u32, version u8, cmd u8, flags u16,
# status i32, reserved u32, trans u64, size u64, id 64s.
_HDR = struct.Struct("<IBBHiIQQ64s")
_IO = struct.Struct("<QQQQQII")
_OBJ = struct.Struct("<QQQ16sII")
_ADDR = struct.Struct("<HH16sI")
assert _HDR.size == HDR_SIZE and _IO.size == IO_ATTR_SIZE
assert _OBJ.size == OBJ_INFO_SIZE and _ADDR.size == ADDR_WIRE_SIZE

Hdr = namedtuple("Hdr", "magic version cmd flags status reserved trans size id")
IoAttr = namedtuple("IoAttr", "offset size total_size timestamp cookie ioflags reserved")
ObjInfo = namedtuple("ObjInfo", "size timestamp version csum flags reserved")
Addr = namedtuple("Addr", "family port addr reserved")


def key_to_id(key):
    if isinstance(key, str):
        key = key.encode()
    return hashlib.sha512(key).digest()


def encode_hdr(cmd, size=0, trans=0, flags=0, id=b"\0" * ID_SIZE, status=0,
               magic=MAGIC, version=VERSION, reserved=0):
    assert len(id) == ID_SIZE
    return _HDR.pack(magic, version, cmd, flags, status, reserved, trans, size, id)


def decode_hdr(buf):
    return Hdr(*_HDR.unpack(buf[:HDR_SIZE]))


def encode_io(offset=0, size=0, total_size=0, timestamp=0, cookie=0, ioflags=0, reserved=0):
    return _IO.pack(offset, size, total_size, timestamp, cookie, ioflags, reserved)


def decode_io(buf):
    return IoAttr(*_IO.unpack(buf[:IO_ATTR_SIZE]))


def decode_obj_info(buf):
    return ObjInfo(*_OBJ.unpack(buf[:OBJ_INFO_SIZE]))


def decode_addr(buf):
    return Addr(*_ADDR.unpack(buf[:ADDR_WIRE_SIZE]))


def encode_addr(hostport):
    """An IPv4 "HOST:PORT" as a 24-byte dnet_addr_wire."""
    host, port = hostport.rsplit(":", 1)
    return _ADDR.pack(4, int(port), socket.inet_aton(host) + b"\0" * 12, 0)


def notowner_payload(owner, hints=0):
    """A DNET_ENOTOWNER reply's payload: the owner's address, then u32 hints."""
    return encode_addr(owner) + struct.pack("<I", hints)


def encode_ring(nodes, copies=0):
    """A route table (ROUTES reply) as src/common/ring.c encodes it. nodes: a list of
    (node_id 64 bytes, "HOST:PORT", [ring ids of 64 bytes]); every node is UP, zone "",
    incarnation 1."""
    out = [struct.pack("<II", len(nodes), copies)]
    for node_id, addr, ids in nodes:
        assert len(node_id) == ID_SIZE and all(len(i) == ID_SIZE for i in ids)
        out.append(node_id + encode_addr(addr) + b"\0" * ZONE_MAX
                   + struct.pack("<QII", 1, NODE_UP, len(ids)) + b"".join(ids))
    return b"".join(out)


def write_request(id, data, trans, flags=FLAG_NEED_ACK, offset=0):
    """A whole-object WRITE request (header + io_attr + data), as bytes."""
    io = encode_io(offset=offset, size=len(data), total_size=len(data))
    return encode_hdr(CMD_WRITE, IO_ATTR_SIZE + len(data), trans, flags, id) + io + data


def read_request(id, trans, offset=0, size=0, flags=0):
    io = encode_io(offset=offset, size=size)
    return encode_hdr(CMD_READ, IO_ATTR_SIZE, trans, flags, id) + io


def simple_request(cmd, id, trans, flags=0):
    return encode_hdr(cmd, 0, trans, flags, id)


class Closed(Exception):
    """The peer closed the connection."""


def recv_exact(sock, n):
    parts = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise Closed("connection closed with %d bytes still expected" % n)
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def recv_msg(sock, max_payload=HARD_MAX_PAYLOAD):
    """One whole message: (Hdr, payload bytes). Raises Closed on EOF."""
    hdr = decode_hdr(recv_exact(sock, HDR_SIZE))
    if hdr.magic != MAGIC or hdr.version != VERSION:
        raise AssertionError("reply with bad magic/version: %r" % (hdr,))
    if hdr.size > max_payload:
        raise AssertionError("reply declares %d payload bytes" % hdr.size)
    return hdr, recv_exact(sock, hdr.size)


def connect(addr, timeout=60.0, rcvbuf=None, sndbuf=None):
    host, port = addr.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Buffer sizes must be set before connect() to shape the TCP window.
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if sndbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(timeout)
    s.connect((host, int(port)))
    return s


class Conn:
    """A blocking protocol connection with trans-id bookkeeping."""

    def __init__(self, addr, timeout=60.0, **kw):
        self.sock = connect(addr, timeout, **kw)
        self.trans = 0

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def next_trans(self):
        self.trans += 1
        return self.trans

    def send(self, data):
        self.sock.sendall(data)

    def recv(self):
        return recv_msg(self.sock)

    def call(self, msg_bytes, trans):
        """Send one request and return its (final) reply."""
        self.send(msg_bytes)
        hdr, payload = self.recv()
        assert hdr.flags & FLAG_REPLY, hdr
        assert hdr.trans == trans, (hdr.trans, trans)
        return hdr, payload

    def ping(self):
        t = self.next_trans()
        return self.call(simple_request(CMD_PING, b"\0" * ID_SIZE, t, FLAG_NEED_ACK), t)

    def write(self, key_or_id, data, flags=FLAG_NEED_ACK):
        id = key_or_id if isinstance(key_or_id, bytes) and len(key_or_id) == ID_SIZE else key_to_id(key_or_id)
        t = self.next_trans()
        return self.call(write_request(id, data, t, flags), t)

    def read(self, key_or_id, offset=0, size=0):
        id = key_or_id if isinstance(key_or_id, bytes) and len(key_or_id) == ID_SIZE else key_to_id(key_or_id)
        t = self.next_trans()
        hdr, payload = self.call(read_request(id, t, offset, size), t)
        if hdr.status != 0:
            return hdr, None, None
        return hdr, decode_io(payload), payload[IO_ATTR_SIZE:]
