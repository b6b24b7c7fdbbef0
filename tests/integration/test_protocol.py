"""The reply rules of docs/protocol.md, checked over a raw socket: which commands
are answered, with what status and payload, and chunked uploads."""
import socket

import pytest

import proto


@pytest.fixture
def conn(node):
    c = proto.Conn(node.addr, timeout=60)
    yield c
    c.close()


def test_ping(conn):
    h, p = conn.ping()
    assert h.status == 0 and h.cmd == proto.CMD_PING and p == b""


def test_ping_without_need_ack_is_answered(conn):
    conn.send(proto.simple_request(proto.CMD_PING, b"\0" * 64, 42))
    h, p = conn.recv()
    assert h.trans == 42 and h.flags & proto.FLAG_REPLY and h.status == 0


def test_write_reply_is_obj_info(conn):
    id = proto.key_to_id("w")
    h, p = conn.write(id, b"hello")
    assert h.status == 0 and h.cmd == proto.CMD_WRITE
    assert h.id == id, "replies carry the request's object id"
    oi = proto.decode_obj_info(p)
    assert oi.size == 5 and oi.timestamp > 0 and oi.csum != b"\0" * 16


def test_read_missing_is_enoent(conn):
    h, io, data = conn.read("absent")
    assert h.status == proto.ENOENT, h


def test_read_range(conn):
    data = bytes(range(256)) * 40
    conn.write("range", data)
    h, io, got = conn.read("range", offset=100, size=1000)
    assert h.status == 0 and got == data[100:1100]
    assert io.offset == 100 and io.size == 1000 and io.total_size == len(data), io
    h, io, got = conn.read("range", offset=10000)
    assert h.status == 0 and got == data[10000:]
    h, io, got = conn.read("range", offset=len(data))
    assert h.status == 0 and got == b""
    h, io, got = conn.read("range", offset=len(data) + 1)
    assert h.status == proto.ERANGE, h


def test_del_and_lookup(conn, node):
    id = proto.key_to_id("dl")
    conn.write(id, b"x" * 1234)
    t = conn.next_trans()
    h, p = conn.call(proto.simple_request(proto.CMD_LOOKUP, id, t), t)
    assert h.status == 0
    oi = proto.decode_obj_info(p)
    assert oi.size == 1234
    assert len(p) == proto.OBJ_INFO_SIZE + proto.ADDR_WIRE_SIZE, "LOOKUP reply = obj_info + addr"
    a = proto.decode_addr(p[proto.OBJ_INFO_SIZE:])
    assert a.family == 4 and a.port == node.port and a.addr[:4] == socket.inet_aton("127.0.0.1"), a
    t = conn.next_trans()
    h, p = conn.call(proto.simple_request(proto.CMD_DEL, id, t, proto.FLAG_NEED_ACK), t)
    assert h.status == 0
    t = conn.next_trans()
    h, p = conn.call(proto.simple_request(proto.CMD_DEL, id, t), t)
    assert h.status == proto.ENOENT, "DEL of a missing object is answered with an error even without NEED_ACK"
    t = conn.next_trans()
    h, p = conn.call(proto.simple_request(proto.CMD_LOOKUP, id, t), t)
    assert h.status == proto.ENOENT


def test_stat_is_text(conn):
    t = conn.next_trans()
    h, p = conn.call(proto.simple_request(proto.CMD_STAT, b"\0" * 64, t), t)
    assert h.status == 0
    lines = p.decode().splitlines()
    assert lines, "STAT reply is empty"
    for line in lines:
        name, value = line.split(" ", 1)
        assert name and value.strip(), line


def test_chunked_upload_visible_at_commit(conn):
    id = proto.key_to_id("chunked")
    conn.write(id, b"old version")
    parts = [b"A" * 100000, b"B" * 100000, b"C" * 12345]
    total = sum(map(len, parts))
    cookie = 0xC0FFEE
    flags = [proto.IO_PREPARE, proto.IO_PLAIN, proto.IO_COMMIT]
    off = 0
    for i, (part, fl) in enumerate(zip(parts, flags)):
        io = proto.encode_io(offset=off, size=len(part), total_size=total, cookie=cookie, ioflags=fl)
        t = conn.next_trans()
        h, p = conn.call(proto.encode_hdr(proto.CMD_WRITE, len(io) + len(part), t,
                                          proto.FLAG_NEED_ACK, id) + io + part, t)
        assert h.status == 0, (i, h)
        off += len(part)
        if fl != proto.IO_COMMIT:
            # Not visible before COMMIT: readers still see the old object.
            rh, rio, got = conn.read(id)
            assert rh.status == 0 and got == b"old version", "upload visible before COMMIT"
    rh, rio, got = conn.read(id)
    assert rh.status == 0 and got == b"".join(parts)


def test_chunk_without_prepare_is_rejected(conn):
    id = proto.key_to_id("orphan-chunk")
    io = proto.encode_io(offset=100, size=10, total_size=1000, cookie=12345, ioflags=proto.IO_PLAIN)
    t = conn.next_trans()
    h, p = conn.call(proto.encode_hdr(proto.CMD_WRITE, len(io) + 10, t, proto.FLAG_NEED_ACK, id)
                     + io + b"x" * 10, t)
    assert h.status != 0, "a PLAIN chunk of an upload that was never prepared must fail"
    rh, _, _ = conn.read(id)
    assert rh.status == proto.ENOENT


def test_write_io_size_mismatch_is_rejected(conn):
    """io_attr.size larger than the data that follows must not be trusted."""
    id = proto.key_to_id("liar")
    io = proto.encode_io(size=1 << 30, total_size=1 << 30)
    t = conn.next_trans()
    conn.send(proto.encode_hdr(proto.CMD_WRITE, len(io) + 10, t, proto.FLAG_NEED_ACK, id) + io + b"y" * 10)
    try:
        h, p = conn.recv()
        assert h.trans == t and h.status != 0, h
    except (proto.Closed, ConnectionError):
        pass  # closing the connection is also acceptable
    with proto.Conn(conn.sock.getpeername()[0] + ":%d" % conn.sock.getpeername()[1]) as c2:
        rh, _, _ = c2.read(id)
        assert rh.status == proto.ENOENT


@pytest.mark.parametrize("case", ["size-mismatch", "no-io-attr", "read-no-io-attr", "del-payload",
                                  "io-reserved", "io-unknown-flag"])
def test_malformed_payload_is_eproto_and_connection_survives(conn, node, case):
    id = proto.key_to_id("malformed-" + case)
    t = conn.next_trans()
    W, R, D = proto.CMD_WRITE, proto.CMD_READ, proto.CMD_DEL
    ack = proto.FLAG_NEED_ACK
    if case == "size-mismatch":
        io = proto.encode_io(size=1 << 30, total_size=1 << 30)
        msg = proto.encode_hdr(W, len(io) + 10, t, ack, id) + io + b"y" * 10
    elif case == "no-io-attr":
        msg = proto.encode_hdr(W, 10, t, ack, id) + b"y" * 10
    elif case == "read-no-io-attr":
        msg = proto.encode_hdr(R, 0, t, 0, id)
    elif case == "del-payload":
        msg = proto.encode_hdr(D, 5, t, ack, id) + b"abcde"
    elif case == "io-reserved":
        io = proto.encode_io(size=3, total_size=3, reserved=1)
        msg = proto.encode_hdr(W, len(io) + 3, t, ack, id) + io + b"abc"
    else:
        io = proto.encode_io(size=3, total_size=3, ioflags=0x100)
        msg = proto.encode_hdr(W, len(io) + 3, t, ack, id) + io + b"abc"
    h, p = conn.call(msg, t)
    assert h.status == proto.EPROTO, h
    assert p == b"", "error replies carry no payload"
    # Framing is intact: the same connection keeps working, and nothing was stored.
    h, _ = conn.ping()
    assert h.status == 0
    rh, _, _ = conn.read(id)
    assert rh.status == proto.ENOENT
