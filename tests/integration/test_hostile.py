"""Hostile and broken clients over raw sockets: garbage, truncated and oversized
headers, bad magic/version/command, clients that vanish mid-payload or never read
their replies. After each, the server is alive and a normal client still works."""
import os
import random
import select
import socket
import threading
import time

import pytest

import proto
from conftest import RssSampler, sanitized, wait_for

MiB = 1 << 20


def healthy(node):
    """The server process is up and serves a normal client, via CLI and raw socket."""
    assert node.alive(), "ellipticsd died; log:\n" + node.log_tail()
    data = os.urandom(3000)
    r = node.cli("put", "health-check", input=data)
    assert r.rc == 0, r
    r = node.cli("get", "health-check")
    assert r.rc == 0 and r.out == data, r
    with proto.Conn(node.addr, timeout=30) as c:
        h, _ = c.ping()
        assert h.status == 0


def read_until_closed(sock, deadline=30.0):
    """Read everything the server sends until it closes; returns the bytes.
    Fails if the connection stays open past the deadline."""
    sock.settimeout(1.0)
    out = bytearray()
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            b = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return bytes(out)
        if not b:
            return bytes(out)
        out += b
    raise AssertionError("the server kept a broken connection open for %.0f s" % deadline)


def error_reply_then_close(node, raw, trans, allowed):
    """Send raw bytes; expect an error reply (status in allowed, trans echoed) and
    the connection closed (docs/protocol.md: bad headers are answered, then closed)."""
    s = proto.connect(node.addr, timeout=30)
    try:
        s.sendall(raw)
    except (BrokenPipeError, ConnectionResetError):
        pass
    got = read_until_closed(s)
    s.close()
    assert len(got) >= proto.HDR_SIZE, "no error reply before the close (got %d bytes)" % len(got)
    h = proto.decode_hdr(got)
    assert h.magic == proto.MAGIC and h.flags & proto.FLAG_REPLY, h
    assert h.status in allowed, "status %d, expected one of %r" % (h.status, allowed)
    assert h.trans == trans, "error reply must echo the request's trans"
    return h


def test_random_bytes(node):
    rnd = random.Random(7)
    for i in range(20):
        s = proto.connect(node.addr, timeout=30)
        junk = bytes(rnd.getrandbits(8) for _ in range(rnd.choice([1, 95, 96, 97, 500, 4096])))
        try:
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR) if i % 2 else None
        except OSError:
            pass
        if len(junk) >= proto.HDR_SIZE:
            read_until_closed(s)  # garbage with a full header's worth: must be closed
        s.close()
    healthy(node)


def test_truncated_header_then_close(node):
    for n in (1, 10, 50, 95):
        s = proto.connect(node.addr)
        s.sendall(proto.simple_request(proto.CMD_PING, b"\0" * 64, 1)[:n])
        s.close()
    healthy(node)


def test_truncated_header_then_idle(node):
    """Half a header and silence must not block the server for anyone else."""
    s = proto.connect(node.addr)
    s.sendall(proto.simple_request(proto.CMD_PING, b"\0" * 64, 1)[:40])
    healthy(node)
    s.close()


@pytest.mark.parametrize("size", [1 << 63, (1 << 64) - 1, proto.HARD_MAX_PAYLOAD + 1,
                                  proto.DEFAULT_MAX_PAYLOAD + 1])
def test_huge_declared_size(node, size):
    raw = proto.encode_hdr(proto.CMD_WRITE, size, 77, proto.FLAG_NEED_ACK, proto.key_to_id("huge"))
    error_reply_then_close(node, raw + b"\0" * 48, 77, (proto.ETOOBIG,))
    healthy(node)
    assert node.cli("get", "huge").rc == 1


def test_max_payload_flag(node_factory):
    node = node_factory("--max-payload", "65536")
    ok = proto.write_request(proto.key_to_id("fits"), b"z" * (65536 - proto.IO_ATTR_SIZE), 1)
    with proto.Conn(node.addr) as c:
        c.send(ok)
        h, _ = c.recv()
        assert h.status == 0, h
    big = proto.write_request(proto.key_to_id("too-big"), b"z" * (65536 - proto.IO_ATTR_SIZE + 1), 2)
    error_reply_then_close(node, big, 2, (proto.ETOOBIG,))
    healthy(node)


@pytest.mark.parametrize("field", ["magic", "version", "reserved", "flags", "cmd0", "cmd99", "cmd255"])
def test_bad_header_fields(node, field):
    kw = dict(cmd=proto.CMD_PING, size=0, trans=31337, flags=proto.FLAG_NEED_ACK)
    allowed = (proto.EPROTO,)
    if field == "magic":
        kw["magic"] = 0x12345678
    elif field == "version":
        kw["version"] = 2
    elif field == "reserved":
        kw["reserved"] = 1
    elif field == "flags":
        kw["flags"] = 0x8000
    else:
        kw["cmd"] = int(field[3:])
        allowed = (proto.EPROTO, proto.EUNSUPP)
    error_reply_then_close(node, proto.encode_hdr(**kw), 31337, allowed)
    healthy(node)


def test_request_with_reply_flag_is_not_executed(node):
    """A 'reply' sent to the server is not a request: it must not write anything."""
    id = proto.key_to_id("fake-reply")
    raw = proto.write_request(id, b"data", 5, proto.FLAG_REPLY)
    s = proto.connect(node.addr)
    s.sendall(raw)
    s.sendall(proto.read_request(id, 6))
    s.settimeout(10)
    try:
        while True:
            h, p = proto.recv_msg(s)
            if h.trans == 6:
                assert h.status == proto.ENOENT, "a message flagged REPLY was executed as a WRITE"
                break
    except (proto.Closed, ConnectionError):
        pass  # closing the connection is fine too
    s.close()
    assert node.cli("get", "fake-reply").rc == 1
    healthy(node)


def test_disconnect_mid_payload(node):
    id = proto.key_to_id("half")
    for cut in (proto.HDR_SIZE + 10, proto.HDR_SIZE + proto.IO_ATTR_SIZE + 1000,
                proto.HDR_SIZE + proto.IO_ATTR_SIZE + 500000):
        s = proto.connect(node.addr)
        raw = proto.write_request(id, os.urandom(MiB), 9)
        s.sendall(raw[:cut])
        s.close()
    healthy(node)
    assert node.cli("get", "half").rc == 1, "a write cut short must not leave an object"


def test_disconnect_mid_chunked_upload(node):
    """PREPARE and one chunk, then the client vanishes: nothing becomes visible."""
    id = proto.key_to_id("abandoned")
    with proto.Conn(node.addr) as c:
        part = b"p" * 100000
        io = proto.encode_io(offset=0, size=len(part), total_size=10 * len(part), cookie=99,
                             ioflags=proto.IO_PREPARE)
        t = c.next_trans()
        h, _ = c.call(proto.encode_hdr(proto.CMD_WRITE, len(io) + len(part), t,
                                       proto.FLAG_NEED_ACK, id) + io + part, t)
        assert h.status == 0, h
    healthy(node)
    with proto.Conn(node.addr) as c:
        h, _, _ = c.read(id)
        assert h.status == proto.ENOENT


@pytest.mark.cost(8)
def test_never_reading_client_is_bounded(node):
    """A client floods READs of a 1 MiB object and never reads a reply. The server
    must stop reading from it (bounded memory) and keep serving everybody else."""
    data = os.urandom(MiB)
    assert node.cli("put", "popular", input=data).rc == 0
    base = node.rss()
    id = proto.key_to_id("popular")
    req = b"".join(proto.read_request(id, t) for t in range(1, 1001))  # 1000 x 1 MiB replies
    s = proto.connect(node.addr)
    s.setblocking(False)
    pos = 0
    with RssSampler(node.pid) as sampler:
        end = time.monotonic() + 8.0
        while time.monotonic() < end:
            _, w, _ = select.select([], [s], [], 0.2)
            if not w:
                continue
            try:
                pos = (pos + s.send(req[pos:pos + 65536])) % len(req)
            except BlockingIOError:
                continue
        # Everybody else is still served while the flood sits unread.
        healthy(node)
        with proto.Conn(node.addr) as c:
            h, io, got = c.read("popular")
            assert h.status == 0 and got == data
    s.close()
    if not sanitized():
        growth = sampler.peak - base
        # Unbounded buffering would be ~1 GiB per 1000 queued replies.
        assert growth < 256 * MiB, "server RSS grew by %d MiB for one unread client" % (growth // MiB)
    healthy(node)


def test_many_idle_connections(node):
    socks = []
    try:
        for _ in range(300):
            socks.append(proto.connect(node.addr))
        healthy(node)
    finally:
        for s in socks:
            s.close()
    healthy(node)
