"""test_ring.py - the ring as the nodes run it: membership converges, failures are
detected and healed, joins move exactly the objects whose owner changed, reads of
keys still on the move are redirected to the previous owner, and a leaving node
hands everything over. Driven over the raw protocol, so these tests do not depend
on the client library's routing (tested in test_ring_client.py)."""
import bisect
import os
import struct
import time

import pytest

import proto
from conftest import wait_for

# Fast membership for tests; the defaults (1 s / 3 s) are for real networks.
FAST = ("--heartbeat-ms", "200", "--fail-after-ms", "1500", "--ids", "64")
EXIST = -16
ENOTOWNER = -22
REDIRECT_DIRECT = 1


def routes(node):
    """The node's route table: list of (node_id, "HOST:PORT", state, [ring ids])."""
    with proto.Conn(node.addr) as c:
        t = c.next_trans()
        hdr, payload = c.call(proto.simple_request(proto.CMD_ROUTES, b"\0" * 64, t), t)
    assert hdr.status == 0, hdr
    (count, _copies) = struct.unpack_from("<II", payload, 0)
    off = 8
    nodes = []
    for _ in range(count):
        node_id = payload[off:off + 64]
        fam, port = struct.unpack_from("<HH", payload, off + 64)
        ip = payload[off + 68:off + 72]
        off += 64 + 24 + 32
        _inc, state, nids = struct.unpack_from("<QII", payload, off)
        off += 16
        ids = [payload[off + 64 * i:off + 64 * (i + 1)] for i in range(nids)]
        off += 64 * nids
        addr = "%d.%d.%d.%d:%d" % (ip[0], ip[1], ip[2], ip[3], port)
        nodes.append((node_id, addr, state, ids))
    assert off == len(payload)
    return nodes


class Ring:
    """Python model of the ownership rule in src/common/ring.c."""

    def __init__(self, nodes):
        self.entries = sorted((rid, addr) for _nid, addr, state, ids in nodes if state != 3
                              for rid in ids)
        self.keys = [e[0] for e in self.entries]

    def owner(self, id):
        i = bisect.bisect_right(self.keys, id)
        return self.entries[i - 1][1]  # i == 0 wraps to the last entry


def converged(nodes, up):
    st = [n.stat() for n in nodes]
    return all(int(s["ring_up"]) == up for s in st) and len({s["ring_digest"] for s in st}) == 1


def settled(nodes):
    return all(n.istat("move_pending") == 0 for n in nodes)


def write_keys(node, keys, size=1000):
    data = {}
    with proto.Conn(node.addr) as c:
        for k in keys:
            v = os.urandom(size)
            hdr, _ = c.write(k, v)
            assert hdr.status == 0, (k, hdr)
            data[k] = v
    return data


def direct_read(addr, key):
    id = proto.key_to_id(key)
    with proto.Conn(addr) as c:
        t = c.next_trans()
        hdr, payload = c.call(proto.read_request(id, t, flags=proto.FLAG_DIRECT), t)
    if hdr.status != 0:
        return hdr.status, None
    return 0, payload[proto.IO_ATTR_SIZE:]


def test_three_nodes_converge_detect_failure_and_heal(node_factory):
    a = node_factory(*FAST)
    b = node_factory(*FAST, "--join", a.addr)
    c = node_factory(*FAST, "--join", a.addr)
    wait_for(lambda: converged([a, b, c], 3), 30, what="3 nodes to converge")
    tables = [routes(n) for n in (a, b, c)]
    assert all(len(t) == 3 for t in tables)
    assert {x[1] for x in tables[0]} == {a.addr, b.addr, c.addr}
    # Every node sees the same ownership.
    probe = [os.urandom(64) for _ in range(500)]
    owners = [[Ring(t).owner(p) for p in probe] for t in tables]
    assert owners[0] == owners[1] == owners[2]
    assert len(set(owners[0])) == 3

    c.kill()
    t0 = time.monotonic()
    wait_for(lambda: a.istat("ring_down") == 1 and b.istat("ring_down") == 1, 30,
             what="the killed node to be marked down")
    detect = time.monotonic() - t0
    # --fail-after-ms 1.5 s plus a heartbeat and scheduling slack on a loaded box.
    assert detect < 10, "failure detected after %.1f s" % detect

    c.restart()  # no --join: the others find it again
    wait_for(lambda: converged([a, b, c], 3), 30, what="the restarted node to rejoin")
    assert c.istat("ring_nodes") == 3


def test_join_moves_exactly_the_misplaced_objects(node_factory):
    a = node_factory(*FAST)
    keys = ["obj-%d" % i for i in range(1500)]
    data = write_keys(a, keys)
    assert a.istat("objects") == 1500

    b = node_factory(*FAST, "--join", a.addr)
    wait_for(lambda: converged([a, b], 2) and settled([a, b]) and
             a.istat("objects") + b.istat("objects") == 1500, 60, what="the 2nd node's data")
    before = {n.addr: n.istat("objects") for n in (a, b)}
    moved_before = sum(n.istat("move_objects") for n in (a, b))

    c = node_factory(*FAST, "--join", a.addr)
    wait_for(lambda: converged([a, b, c], 3) and settled([a, b, c]) and
             sum(n.istat("objects") for n in (a, b, c)) == 1500, 60, what="the 3rd node's data")
    moved = sum(n.istat("move_objects") for n in (a, b)) - moved_before
    on_c = c.istat("objects")
    # Only what the new node owns moved, each object once: exactly the ideal volume.
    assert moved == on_c, (moved, on_c)
    assert 1500 / 3 * 0.5 < on_c < 1500 / 3 * 1.6, "unbalanced: %d of 1500 on the new node" % on_c
    assert a.istat("objects") <= before[a.addr] and b.istat("objects") <= before[b.addr]

    # Every object now lives exactly on its owner, intact.
    ring = Ring(routes(a))
    for k in keys:
        owner = ring.owner(proto.key_to_id(k))
        st, got = direct_read(owner, k)
        assert st == 0 and got == data[k], (k, owner, st)
        for other in {a.addr, b.addr, c.addr} - {owner}:
            # Not stored there: "not found", or a redirect to where it used to be.
            assert direct_read(other, k)[0] in (proto.ENOENT, ENOTOWNER), (k, other)


def test_read_of_a_key_still_moving_is_redirected_to_its_previous_owner(node_factory):
    # A crawl of a move rate keeps most objects on the old node for the whole test.
    a = node_factory(*FAST, "--move-rate", "2048")
    keys = ["slow-%d" % i for i in range(300)]
    data = write_keys(a, keys, size=4096)
    b = node_factory(*FAST, "--join", a.addr)
    wait_for(lambda: converged([a, b], 2), 30, what="2 nodes to converge")
    ring = Ring(routes(b))
    mine = [k for k in keys if ring.owner(proto.key_to_id(k)) == b.addr]
    assert len(mine) > 30
    redirected = 0
    with proto.Conn(b.addr) as c:
        for k in mine:
            t = c.next_trans()
            hdr, payload = c.call(proto.read_request(proto.key_to_id(k), t), t)
            if hdr.status == 0:
                assert payload[proto.IO_ATTR_SIZE:] == data[k]  # already moved
                continue
            assert hdr.status == ENOTOWNER, hdr
            addr = proto.decode_addr(payload[:proto.ADDR_WIRE_SIZE])
            (hints,) = struct.unpack_from("<I", payload, proto.ADDR_WIRE_SIZE)
            assert hints & REDIRECT_DIRECT
            assert addr.port == a.port
            st, got = direct_read(a.addr, k)
            assert st == 0 and got == data[k]
            redirected += 1
    assert redirected > 0
    # A key that exists nowhere: one redirect to the previous owner, which answers
    # "not found" instead of sending the client back to the owner.
    ghost = next(k for k in ("ghost-%d" % i for i in range(1000))
                 if ring.owner(proto.key_to_id(k)) == b.addr)
    with proto.Conn(b.addr) as c:
        t = c.next_trans()
        hdr, payload = c.call(proto.read_request(proto.key_to_id(ghost), t), t)
        assert hdr.status == ENOTOWNER
        assert proto.decode_addr(payload[:proto.ADDR_WIRE_SIZE]).port == a.port
    assert direct_read(a.addr, ghost)[0] == proto.ENOENT
    # A keyed request without DIRECT at the old node is sent to the owner.
    with proto.Conn(a.addr) as c:
        t = c.next_trans()
        hdr, payload = c.call(proto.read_request(proto.key_to_id(mine[0]), t), t)
        assert hdr.status == ENOTOWNER
        assert proto.decode_addr(payload[:proto.ADDR_WIRE_SIZE]).port == b.port


@pytest.mark.cost(7)
def test_previous_owner_never_says_not_found_mid_hand_over(node_factory):
    # Each hand-over pauses between its steps (the test hook), so reads at the
    # previous owner land in that moment: a DIRECT read there (a client sent back
    # by the owner's redirect) gets the object or a redirect to the owner, never
    # "not found". The hand-over used to delete the copy before it remembered the
    # ID as moved, and a read in between got "not found" for a stored object.
    a = node_factory(*FAST, env={"ELLIPTICS_TEST_MOVE_PAUSE_MS": "250"})
    keys = ["handover-%d" % i for i in range(60)]
    data = write_keys(a, keys)
    b = node_factory(*FAST, "--join", a.addr)
    wait_for(lambda: converged([a, b], 2), 30, what="2 nodes to converge")
    ring = Ring(routes(b))
    mine = [k for k in keys if ring.owner(proto.key_to_id(k)) == b.addr]
    assert len(mine) >= 6, len(mine)
    seen = {"served": 0, "sent back": 0}
    deadline = time.monotonic() + 120
    with proto.Conn(a.addr) as c:
        while time.monotonic() < deadline:
            for k in mine:
                t = c.next_trans()
                hdr, payload = c.call(
                    proto.read_request(proto.key_to_id(k), t, flags=proto.FLAG_DIRECT), t)
                if hdr.status == 0:
                    assert payload[proto.IO_ATTR_SIZE:] == data[k]
                    seen["served"] += 1
                    continue
                assert hdr.status == ENOTOWNER, (k, hdr.status, seen)
                assert proto.decode_addr(payload[:proto.ADDR_WIRE_SIZE]).port == b.port
                seen["sent back"] += 1
            if seen["sent back"] >= 3 * len(mine) and settled([a, b]):
                break
    assert seen["served"] > 0 and seen["sent back"] >= 3 * len(mine), seen
    for k in mine:
        st, got = direct_read(b.addr, k)
        assert st == 0 and got == data[k], (k, st)


def test_move_never_replaces_a_newer_write(node_factory):
    a = node_factory(*FAST)
    id = proto.key_to_id("newer")
    with proto.Conn(a.addr) as c:
        hdr, _ = c.write(id, b"new content")
        assert hdr.status == 0
        # An older copy arriving by data movement is refused...
        t = c.next_trans()
        body = proto.encode_io(size=3, timestamp=2, ioflags=0x8) + b"old"
        msg = proto.encode_hdr(proto.CMD_WRITE, len(body), t,
                               proto.FLAG_NEED_ACK | proto.FLAG_DIRECT, id) + body
        hdr, _ = c.call(msg, t)
        assert hdr.status == EXIST
        # ...and a newer one is taken.
        t = c.next_trans()
        body = proto.encode_io(size=5, timestamp=(1 << 62), ioflags=0x8) + b"newer"
        msg = proto.encode_hdr(proto.CMD_WRITE, len(body), t,
                               proto.FLAG_NEED_ACK | proto.FLAG_DIRECT, id) + body
        hdr, _ = c.call(msg, t)
        assert hdr.status == 0
    assert direct_read(a.addr, "newer") == (0, b"newer")


def test_leave_hands_every_object_over_while_reads_go_on(node_factory):
    a = node_factory(*FAST)
    b = node_factory(*FAST, "--join", a.addr, "--move-rate", "200k")
    c = node_factory(*FAST, "--join", a.addr)
    wait_for(lambda: converged([a, b, c], 3), 30, what="3 nodes to converge")
    keys = ["leave-%d" % i for i in range(900)]
    ring = Ring(routes(a))
    data = {}
    for addr in {a.addr, b.addr, c.addr}:
        node = [n for n in (a, b, c) if n.addr == addr][0]
        data.update(write_keys(node, [k for k in keys if ring.owner(proto.key_to_id(k)) == addr]))
    assert b.istat("objects") > 0

    # Reads through the CLI (which routes) go on during the whole handover.
    import random
    import threading
    from conftest import run_cli
    stop = threading.Event()
    failures, reads = [], [0]

    def reader():
        while not stop.is_set() and reads[0] < 2000:
            k = random.choice(keys)
            r = run_cli(["get", k, "-"], remotes=[a.addr])
            if r.rc != 0 or r.out != data[k]:
                failures.append((k, r.rc, r.err))
            reads[0] += 1

    t = threading.Thread(target=reader)
    t.start()
    try:
        r = b.cli("leave")
        assert r.rc == 0, r
        wait_for(lambda: b.istat("objects") == 0 and a.istat("ring_left") == 1 and
                 c.istat("ring_left") == 1 and settled([a, b, c]), 120,
                 what="the node to hand over")
    finally:
        stop.set()
        t.join(60)
    assert not failures, "%d of %d reads failed during the leave: %r" % (len(failures), reads[0], failures[:3])
    assert reads[0] > 10
    assert a.istat("objects") + c.istat("objects") == 900
    ring = Ring(routes(a))
    for k in keys:
        owner = ring.owner(proto.key_to_id(k))
        assert owner != b.addr
        assert direct_read(owner, k) == (0, data[k])


@pytest.mark.cost(4, sanitized=12)
def test_dead_node_removed_by_address(node_factory):
    a = node_factory(*FAST)
    b = node_factory(*FAST, "--join", a.addr)
    c = node_factory(*FAST, "--join", a.addr)
    wait_for(lambda: converged([a, b, c], 3), 30, what="3 nodes to converge")
    c.kill()
    wait_for(lambda: a.istat("ring_down") == 1, 30, what="the dead node to be marked down")
    r = a.cli("leave", c.addr)
    assert r.rc == 0, r
    wait_for(lambda: a.istat("ring_left") == 1 and b.istat("ring_left") == 1, 30,
             what="the removal to spread")
    owners = {x[1] for x in routes(b) if x[2] != 3}
    assert owners == {a.addr, b.addr}
    # Every key is writable and readable again, including the dead node's ranges.
    for i in range(200):
        r = a.cli("put", "after-%d" % i, "-", input=b"x%d" % i)
        assert r.rc == 0, r
        assert b.cli("get", "after-%d" % i, "-").out == b"x%d" % i
    r = a.cli("leave", "127.0.0.1:1")
    assert r.rc == 1 and "not a member" in r.err, r


def test_join_with_garbage_is_refused(node_factory):
    a = node_factory(*FAST)
    with proto.Conn(a.addr) as c:
        for body in (b"", b"\xff\xff\xff\xff", struct.pack("<I", 1) + os.urandom(100)):
            t = c.next_trans()
            msg = proto.encode_hdr(proto.CMD_JOIN, len(body), t, proto.FLAG_NEED_ACK) + body
            hdr, _ = c.call(msg, t)
            assert hdr.status == proto.EPROTO, hdr
    assert a.istat("ring_nodes") == 1
    assert a.alive()
