"""Many clients at once and many requests in flight on one connection."""
import threading
from concurrent.futures import ThreadPoolExecutor

import proto
from conftest import wait_for

N_CLIENTS = 200


def payload(tag, n):
    b = (tag.encode() + b"|") * (n // (len(tag) + 1) + 1)
    return b[:n]


def test_200_concurrent_cli_clients(node):
    def one(i):
        key = "client-%d" % i
        data = payload(key, 1000 + i * 97)
        r = node.cli("put", key, input=data)
        if r.rc != 0:
            return "put %s: rc=%d %s" % (key, r.rc, r.err.strip())
        r = node.cli("get", key)
        if r.rc != 0:
            return "get %s: rc=%d %s" % (key, r.rc, r.err.strip())
        if r.out != data:
            return "get %s: wrong data (%d bytes, want %d)" % (key, len(r.out), len(data))
        return None

    with ThreadPoolExecutor(max_workers=N_CLIENTS) as ex:
        errors = [e for e in ex.map(one, range(N_CLIENTS)) if e]
    assert not errors, "%d of %d clients failed, e.g. %s" % (len(errors), N_CLIENTS, errors[:5])


def test_200_simultaneous_connections(node):
    """200 connections open at the same time, each writing and reading its own keys."""
    conns = [proto.Conn(node.addr, timeout=120) for _ in range(N_CLIENTS)]
    barrier = threading.Barrier(N_CLIENTS)
    errors = []

    def worker(i, c):
        try:
            barrier.wait(60)
            for j in range(5):
                key = "conn-%d-%d" % (i, j)
                data = payload(key, 100 + 613 * j + i)
                h, _ = c.write(key, data)
                assert h.status == 0, ("write", key, h.status)
                h, io, got = c.read(key)
                assert h.status == 0, ("read", key, h.status)
                assert got == data, ("data", key)
                assert io.total_size == len(data), ("io", key, io)
        except Exception as e:  # noqa: BLE001 - collected and reported below
            errors.append("%d: %r" % (i, e))

    threads = [threading.Thread(target=worker, args=(i, c)) for i, c in enumerate(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for c in conns:
        c.close()
    assert not any(t.is_alive() for t in threads), "some clients hung"
    assert not errors, "%d clients failed, e.g. %s" % (len(errors), errors[:5])


def test_pipelined_writes_then_reads(node):
    n = 100
    keys = ["pipe-%d" % i for i in range(n)]
    datas = [payload(k, 5000 + 131 * i) for i, k in enumerate(keys)]
    with proto.Conn(node.addr, timeout=120) as c:
        # 100 WRITEs back to back, no reads in between.
        trans = {}
        out = bytearray()
        for i, k in enumerate(keys):
            t = 1000 + i
            trans[t] = i
            out += proto.write_request(proto.key_to_id(k), datas[i], t, proto.FLAG_NEED_ACK)
        c.send(bytes(out))
        seen = set()
        for _ in range(n):
            h, p = c.recv()
            assert h.flags & proto.FLAG_REPLY, h
            assert h.trans in trans and h.trans not in seen, "unexpected trans %d" % h.trans
            assert h.status == 0, "write %d failed: %d" % (h.trans, h.status)
            assert h.cmd == proto.CMD_WRITE, h
            assert len(p) >= proto.OBJ_INFO_SIZE, len(p)
            oi = proto.decode_obj_info(p)
            assert oi.size == len(datas[trans[h.trans]])
            seen.add(h.trans)
        assert seen == set(trans)

        # 100 READs back to back.
        out = bytearray()
        rtrans = {}
        for i, k in enumerate(keys):
            t = 5000 + i
            rtrans[t] = i
            out += proto.read_request(proto.key_to_id(k), t)
        c.send(bytes(out))
        seen = set()
        for _ in range(n):
            h, p = c.recv()
            assert h.flags & proto.FLAG_REPLY and h.cmd == proto.CMD_READ, h
            assert h.trans in rtrans and h.trans not in seen, h.trans
            assert h.status == 0, h
            io = proto.decode_io(p)
            data = p[proto.IO_ATTR_SIZE:]
            assert data == datas[rtrans[h.trans]], "READ %d returned the wrong object" % h.trans
            assert io.size == len(data) and io.total_size == len(data), io
            seen.add(h.trans)
        assert seen == set(rtrans)


def test_same_id_requests_execute_in_arrival_order(node):
    """WRITE v1, READ, WRITE v2, READ, ... for one ID pipelined on one connection:
    every READ sees the WRITE just before it."""
    n = 50
    id = proto.key_to_id("ordered")
    out = bytearray()
    for i in range(n):
        out += proto.write_request(id, payload("v%d" % i, 3000 + i), 2 * i + 1, proto.FLAG_NEED_ACK)
        out += proto.read_request(id, 2 * i + 2)
    with proto.Conn(node.addr, timeout=120) as c:
        c.send(bytes(out))
        replies = {}
        for _ in range(2 * n):
            h, p = c.recv()
            assert h.status == 0, h
            replies[h.trans] = p
    for i in range(n):
        got = replies[2 * i + 2][proto.IO_ATTR_SIZE:]
        assert got == payload("v%d" % i, 3000 + i), "READ #%d did not see the WRITE before it" % i


def test_write_without_ack_gets_no_reply_on_success(node):
    with proto.Conn(node.addr, timeout=60) as c:
        id = proto.key_to_id("noack")
        c.send(proto.write_request(id, b"quiet", 7, flags=0))
        c.send(proto.read_request(id, 8))
        h, p = c.recv()
        assert h.trans == 8, "a successful WRITE without NEED_ACK must not be answered: %r" % (h,)
        assert h.status == 0 and p[proto.IO_ATTR_SIZE:] == b"quiet"


def test_concurrent_overwrites_are_atomic(node):
    """Writers replace one object with whole versions while readers read it: every
    read returns exactly one complete version, never a mix of two."""
    size = 1 << 20
    versions = {}
    for w in range(4):
        for j in range(8):
            tag = "w%d-v%d" % (w, j)
            versions[tag] = payload(tag, size)
    known = set(versions.values())
    id = proto.key_to_id("contended")
    with proto.Conn(node.addr) as c:
        h, _ = c.write(id, versions["w0-v0"])
        assert h.status == 0
    errors = []
    stop = threading.Event()
    reads = [0]

    def writer(w):
        try:
            with proto.Conn(node.addr, timeout=120) as c:
                for j in range(8):
                    h, _ = c.write(id, versions["w%d-v%d" % (w, j)])
                    assert h.status == 0, h
        except Exception as e:  # noqa: BLE001
            errors.append("writer %d: %r" % (w, e))

    def reader():
        try:
            with proto.Conn(node.addr, timeout=120) as c:
                while not stop.is_set():
                    h, io, got = c.read(id)
                    assert h.status == 0, h
                    assert got in known, "read a mix of versions (%d bytes)" % len(got)
                    reads[0] += 1
        except Exception as e:  # noqa: BLE001
            errors.append("reader: %r" % e)

    writers = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    readers = [threading.Thread(target=reader) for _ in range(3)]
    for t in writers + readers:
        t.start()
    for t in writers:
        t.join(300)
    stop.set()
    for t in readers:
        t.join(60)
    assert not any(t.is_alive() for t in writers + readers), "a client hung"
    assert not errors, errors[:5]
    assert reads[0] > 0


def test_max_conns(node_factory):
    """Connections above --max-conns are closed at once; the ones inside are served,
    and a slot freed is usable again."""
    node = node_factory("--max-conns", "8")

    def open_served():
        # The startup probe's connection (or a just-closed one) may still count
        # until the server has seen it close: retry until a connection is served.
        try:
            c = proto.Conn(node.addr, timeout=5)
            if c.ping()[0].status == 0:
                return c
            c.close()
        except (OSError, proto.Closed):
            pass
        return None

    held = []
    try:
        for _ in range(8):
            held.append(wait_for(open_served, 30, what="a connection within --max-conns"))
        extra = proto.connect(node.addr, timeout=30)
        extra.sendall(proto.simple_request(proto.CMD_PING, b"\0" * 64, 1, proto.FLAG_NEED_ACK))
        try:
            got = extra.recv(4096)
        except ConnectionResetError:
            got = b""
        assert got == b"", "a connection above --max-conns was served"
        extra.close()
        held.pop().close()

        held.append(wait_for(open_served, 30, what="a freed connection slot to be reusable"))
    finally:
        for c in held:
            c.close()
