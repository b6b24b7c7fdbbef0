"""Copies (ellipticsd --copies N): placement on distinct nodes and zones, writes
acknowledged by a quorum with stand-ins for down nodes, failover reads, tombstones,
hand-over and anti-entropy recovery, repair of a corrupt copy.

Every wait polls a condition against a deadline; every load loop is bounded in
count. Figures (recovery speed, bytes moved) are printed for the closing notes."""
import concurrent.futures
import hashlib
import os
import threading
import time

import pytest

import proto
from conftest import run_cli, sanitized, wait_for
from test_ring_client import stat_values, wait_converged

FAST = ("--heartbeat-ms", "200", "--fail-after-ms", "1500")
DEADLINE = 120.0 if sanitized() else 60.0


def start_ring(node_factory, n, copies=3, zones=None, extra=()):
    nodes = []
    for i in range(n):
        args = list(FAST) + ["--copies", str(copies)] + list(extra)
        if zones:
            args += ["--zone", zones[i]]
        if nodes:
            args += ["--join", nodes[0].addr]
        nodes.append(node_factory(*args, name="n%d" % i))
    wait_converged(nodes, n)
    return nodes


def remotes(nodes):
    return [n.addr for n in nodes if n.alive()]


def lookup(nodes, key, *opts):
    """[(addr, csum, version, copy)] of the copies holding key."""
    r = run_cli(list(opts) + ["lookup", key], remotes=remotes(nodes), timeout=60)
    out = []
    for line in r.out.decode().splitlines():
        parts = line.split()
        fields = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        version = int(line.split("(")[1].split(")")[0])
        out.append((parts[0], fields["csum"], version, int(fields["copy"])))
    return out, r


def put(nodes, key, data, *opts):
    return run_cli(list(opts) + ["put", key], remotes=remotes(nodes), input=data, timeout=60)


def get(nodes, key, *opts):
    return run_cli(list(opts) + ["get", key], remotes=remotes(nodes), timeout=60)


def csum(data):
    import xxhash
    return xxhash.xxh3_128_hexdigest(data)


def recover(nodes):
    r = run_cli(["recover"], remotes=remotes(nodes), timeout=600)
    assert r.rc == 0, r.err
    return r.out.decode()


def test_three_copies_on_distinct_nodes_and_zones(node_factory):
    zones = ["za", "zb", "zc", "za", "zb"]
    nodes = start_ring(node_factory, 5, copies=3, zones=zones)
    zone_of = {n.addr: z for n, z in zip(nodes, zones)}
    per_node = {n.addr: 0 for n in nodes}
    for i in range(40):
        key = "placed-%d" % i
        data = os.urandom(100 + i)
        r = put(nodes, key, data)
        assert r.rc == 0, r.err
        copies, lr = lookup(nodes, key)
        assert lr.rc == 0, lr.err
        assert len(copies) == 3, copies
        assert sorted(c[3] for c in copies) == [0, 1, 2]
        addrs = [c[0] for c in copies]
        assert len(set(addrs)) == 3, "two copies on one node: %r" % copies
        assert len({zone_of[a] for a in addrs}) == 3, "two copies in one zone: %r" % copies
        assert {c[1] for c in copies} == {csum(data)}
        assert len({c[2] for c in copies}) == 1, "copies disagree on the version"
        for a in addrs:
            per_node[a] += 1
    # Every node holds some copies: placement spreads them.
    assert all(v > 0 for v in per_node.values()), per_node
    # Each node's own store agrees: 40 objects x 3 copies in all.
    total = sum(int(stat_values(n, "objects")) for n in nodes)
    assert total == 120, total


def test_node_with_other_copies_is_refused(node_factory):
    a = node_factory(*FAST, "--copies", "3", name="a")
    b = node_factory(*FAST, "--copies", "2", "--join", a.addr, name="b")
    wait_for(lambda: "--copies" in b.log_tail(200) or "--copies" in a.log_tail(200), DEADLINE,
             what="a log line about the --copies mismatch")
    assert stat_values(a, "ring_nodes") == "1"
    assert stat_values(b, "ring_nodes") == "1"


class Load(threading.Thread):
    """Writes versions of its own keys (bounded count) through the CLI, and reads
    back acknowledged ones; records what was acknowledged and every error."""

    def __init__(self, nodes, prefix, count, opts=()):
        super().__init__(daemon=True)
        self.nodes, self.prefix, self.count, self.opts = nodes, prefix, count, list(opts)
        self.acked = {}        # key -> bytes of the last acknowledged write
        self.write_errors = []
        self.read_errors = []
        self.reads = 0
        self.done_writes = 0
        self.lock = threading.Lock()

    def run(self):
        for i in range(self.count):
            key = "%s-%d" % (self.prefix, i % 40)
            data = ("%s@%d;" % (key, i)).encode() + os.urandom(64 + i % 500)
            r = put(self.nodes, key, data, *self.opts)
            if r.rc == 0:
                with self.lock:
                    self.acked[key] = data
            else:
                self.write_errors.append(r.err.strip())
            self.done_writes += 1
            # Read back an acknowledged key (not the one in flight).
            with self.lock:
                items = list(self.acked.items())
            if items:
                k, v = items[i % len(items)]
                g = get(self.nodes, k, *self.opts)
                self.reads += 1
                with self.lock:
                    cur = self.acked.get(k)
                if g.rc != 0 or g.out != cur:
                    self.read_errors.append((k, g.rc, g.err.strip()))


def check_all(nodes, acked, label):
    lost = []
    for k, v in acked.items():
        g = get(nodes, k)
        if g.rc != 0 or g.out != v:
            lost.append((k, g.rc, g.err.strip()))
    assert not lost, "%s: acknowledged writes lost: %r" % (label, lost[:5])


def copies_agree(nodes, keys, n=3):
    bad = []
    for k in keys:
        copies, r = lookup(nodes, k)
        if len(copies) != n or len({(c[1], c[2]) for c in copies}) != 1:
            bad.append((k, copies, r.err.strip()))
    return bad


@pytest.mark.cost(8, sanitized=13)
def test_kill9_during_load_loses_no_acknowledged_write(node_factory):
    nodes = start_ring(node_factory, 5, copies=3)
    count = 90 if sanitized() else 150
    load = Load(nodes[:1] + nodes[2:], "load", count)
    load.start()
    # One node dies (kill -9) a third of the way in: the default quorum (2 of 3)
    # is still met, with a stand-in for its copies.
    wait_for(lambda: load.done_writes >= count // 3, DEADLINE * 2, what="a third of the writes")
    victim = nodes[1]
    victim.kill()
    load.join(DEADLINE * 10)
    assert not load.is_alive()
    print("one node down: %d writes, %d write errors, %d reads, %d read errors"
          % (count, len(load.write_errors), load.reads, len(load.read_errors)))
    assert not load.read_errors, load.read_errors[:5]
    assert not load.write_errors, load.write_errors[:5]
    check_all(nodes, load.acked, "one node down")

    # A second node dies: with W=1 writes still succeed, reads fail over.
    load2 = Load(nodes[:1] + nodes[3:], "load2", count // 2, opts=("--w", "1"))
    load2.start()
    wait_for(lambda: load2.done_writes >= count // 6, DEADLINE * 2, what="writes with W=1")
    nodes[2].kill()
    load2.join(DEADLINE * 10)
    assert not load2.is_alive()
    print("two nodes down (W=1): %d writes, %d write errors, %d reads, %d read errors"
          % (count // 2, len(load2.write_errors), load2.reads, len(load2.read_errors)))
    assert not load2.read_errors, load2.read_errors[:5]
    assert not load2.write_errors, load2.write_errors[:5]
    check_all(nodes, load2.acked, "two nodes down")

    # Both come back: hand-over and recovery restore three agreeing copies.
    victim.start()
    nodes[2].start()
    wait_converged(nodes, 5)
    recover(nodes)
    keys = list(load.acked) + list(load2.acked)
    wait_for(lambda: not copies_agree(nodes, keys), DEADLINE * 2, interval=1.0,
             what="three agreeing copies of every key")
    check_all(nodes, load.acked, "after recovery")
    check_all(nodes, load2.acked, "after recovery")
    # Stand-ins handed their copies over: exactly 3 per key in all the stores.
    wait_for(lambda: sum(int(stat_values(n, "objects")) for n in nodes) == 3 * len(keys),
             DEADLINE, interval=0.5, what="stand-in copies handed over and dropped")


@pytest.mark.cost(3, sanitized=7)
def test_node_down_during_writes_and_deletes_then_recovery(node_factory):
    nodes = start_ring(node_factory, 4, copies=3)
    live = nodes[:3]
    keys = ["dd-%d" % i for i in range(60)]
    first = {}
    for k in keys:
        first[k] = os.urandom(200)
        assert put(nodes, k, first[k]).rc == 0
    down = nodes[3]
    down.kill()
    wait_for(lambda: stat_values(nodes[0], "ring_down") == "1", DEADLINE,
             what="the ring to mark the node down")
    final = dict(first)
    for k in keys[:20]:              # overwritten while it is down
        final[k] = os.urandom(300)
        assert put(live, k, final[k]).rc == 0
    for k in keys[20:40]:            # deleted while it is down
        r = run_cli(["del", k], remotes=remotes(live))
        assert r.rc == 0, r.err
        del final[k]
    down.start()
    wait_converged(nodes, 4)
    recover(nodes)

    def settled():
        return not copies_agree(nodes, list(final)) and all(
            not lookup(nodes, k)[0] for k in keys[20:40])
    wait_for(settled, DEADLINE * 2, interval=1.0, what="copies to agree after recovery")
    for k in keys:
        g = get(nodes, k)
        if k in final:
            assert g.rc == 0 and g.out == final[k], (k, g.rc, g.err)
        else:
            assert g.rc == 1, "deleted %s came back: %r" % (k, g.err)
    # Reading each copy directly: the node that was down serves the new versions and
    # no deleted object.
    for k in keys:
        st, data = direct_read(down.addr, k)
        if k in final and st == 0:
            assert data == final[k], k
        if k not in final:
            assert st == proto.ENOENT, (k, st)


def direct_read(addr, key):
    with proto.Conn(addr) as c:
        t = c.next_trans()
        body = proto.encode_io()
        msg = proto.encode_hdr(proto.CMD_READ, len(body), t,
                               proto.FLAG_NEED_ACK | proto.FLAG_DIRECT, proto.key_to_id(key)) + body
        hdr, payload = c.call(msg, t)
    return hdr.status, payload[proto.IO_ATTR_SIZE:] if hdr.status == 0 else b""


def test_corrupt_copy_is_not_served_and_is_repaired(node_factory):
    from test_corruption import locate, flip_all
    nodes = start_ring(node_factory, 3, copies=3)
    key = "bitflip"
    data = os.urandom(200000)
    assert put(nodes, key, data).rc == 0
    victim = nodes[1]
    victim.stop_clean()
    flip_all(locate(victim.data, data, 150000))
    victim.start()
    wait_converged(nodes, 3)
    # The damaged copy is detected by its checksum and never served...
    st, _ = direct_read(victim.addr, key)
    assert st == proto.ECORRUPT, st
    # ...clients fail over to a good copy...
    for n in nodes:
        g = run_cli(["get", key], remotes=[n.addr])
        assert g.rc == 0 and g.out == data, g.err
    # ...and the node replaces its copy from another one.
    wait_for(lambda: direct_read(victim.addr, key) == (0, data), DEADLINE, interval=0.2,
             what="the corrupt copy to be repaired")
    assert int(stat_values(victim, "recover_repaired")) >= 1


def test_stream_verified_read_resumes_from_another_copy(node_factory, tmp_path):
    """`get KEY FILE` has nodes verify as they send. Two of three copies are
    damaged, at different places near the end; whichever copy the client reads
    first, a damaged one is cut off mid-reply (its good blocks delivered, the bad
    one never) and the read resumes at that offset from the next copy: the file is
    exact. Each round spares another node; the damaged copies are repaired."""
    from test_corruption import locate, flip_all
    nodes = start_ring(node_factory, 3, copies=3)
    key, size = "late-bitflip", 12 << 20
    data = os.urandom(size)
    assert put(nodes, key, data).rc == 0
    for spared in range(3):
        damaged = [n for i, n in enumerate(nodes) if i != spared]
        for k, victim in enumerate(damaged):
            victim.stop_clean()
            flip_all(locate(victim.data, data, size - 1000 - k * (3 << 20)))
            victim.start()
        wait_converged(nodes, 3)
        dst = tmp_path / ("out-%d" % spared)
        g = run_cli(["get", key, str(dst)], remotes=[nodes[spared].addr])
        assert g.rc == 0, g.err
        assert dst.read_bytes() == data, "the resumed read is not the object"
        for victim in damaged:
            wait_for(lambda: direct_read(victim.addr, key) == (0, data), DEADLINE, interval=0.2,
                     what="the corrupt copy to be repaired")
    assert sum(int(stat_values(n, "recover_repaired")) for n in nodes) >= 3
    if nodes[0].backend in ("blob", "file"):
        # in two rounds of three the first copy read was a damaged one, cut off
        cut = [n for n in nodes if "failed verification as it was sent" in n.log()]
        assert cut, "no read was cut off mid-reply: " + nodes[0].log_tail()


@pytest.mark.cost(15, sanitized=5)
def test_recovery_copies_only_what_differs(node_factory):
    """A node misses many writes; recovery brings it up to date, moving only the
    objects it missed. Figures: objects/s and MB/s."""
    missed = int(os.environ.get("ELLIPTICS_RECOVER_OBJECTS", "10000" if sanitized() else "100000"))
    size = int(os.environ.get("ELLIPTICS_RECOVER_SIZE", "100"))
    nodes = start_ring(node_factory, 3, copies=3, extra=("--recover-interval-s", "100000"))
    # Objects all copies have, before.
    r = run_cli(["bench", "--op", "put", "--size", str(size), "--count", "2000", "--keys", "2000", "--conns", "8",
                 "--json", "--prefix", "old-"], remotes=remotes(nodes), timeout=600)
    assert r.rc == 0, r.err
    down = nodes[2]
    down.kill()
    wait_for(lambda: stat_values(nodes[0], "ring_down") == "1", DEADLINE,
             what="the ring to mark the node down")
    r = run_cli(["--w", "2", "bench", "--op", "put", "--size", str(size), "--count", str(missed), "--keys", str(missed),
                 "--conns", "16", "--json", "--prefix", "new-"], remotes=remotes(nodes[:2]),
                timeout=1800)
    assert r.rc == 0, r.err
    # Nothing stands in with 3 nodes: the missed copies exist only on the 2 others.
    down.start()
    wait_converged(nodes, 3)
    t0 = time.monotonic()
    out = recover(nodes)
    wait_for(lambda: int(stat_values(down, "objects")) == 2000 + missed, DEADLINE * 20,
             interval=0.5, what="the node to get every missed object")
    took = time.monotonic() - t0
    pulled = sum(int(stat_values(n, "recover_pulled")) for n in nodes)
    moved = sum(int(stat_values(n, "recover_bytes")) for n in nodes)
    print("recovery of %d missed objects (%d B each): %.2f s, %.0f objects/s, %.2f MB/s; "
          "pulled %d, %d bytes moved\n%s"
          % (missed, size, took, missed / took, moved / took / 1e6, pulled, moved, out))
    # Only what differed moved, once: the 2000 objects it had were not sent again,
    # and each missed one was fetched from one peer only.
    assert missed <= pulled <= missed + 100, pulled
    assert moved <= (missed + 100) * size, moved


def test_quorum_not_met_is_an_error_naming_the_copies(node_factory):
    nodes = start_ring(node_factory, 3, copies=3)
    nodes[2].kill()
    wait_for(lambda: stat_values(nodes[0], "ring_down") == "1", DEADLINE,
             what="the ring to mark the node down")
    live = nodes[:2]
    # W=3 cannot be met with a node down and no node to stand in.
    r = put(live, "needs-three", b"x" * 100, "--w", "3")
    assert r.rc == 3, (r.rc, r.err)
    assert "write quorum" in r.err and nodes[2].addr in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1, r.err
    # The default quorum (2 of 3) is met; the put says which copy is missing.
    r = put(live, "two-of-three", b"y" * 100)
    assert r.rc == 0, r.err
    assert "not on every home" in r.err and nodes[2].addr in r.err, r.err
    g = get(live, "two-of-three")
    assert g.rc == 0 and g.out == b"y" * 100
    # The transforms are visible in stat.
    assert stat_values(nodes[0], "transforms") == "sha512,sha512+copy1,sha512+copy2"


def test_tombstones_are_collected_after_the_grace_period(node_factory):
    nodes = start_ring(node_factory, 3, copies=3, extra=("--tombstone-grace-s", "1"))
    for i in range(10):
        assert put(nodes, "gc-%d" % i, b"z" * 10).rc == 0
    for i in range(10):
        assert run_cli(["del", "gc-%d" % i], remotes=remotes(nodes)).rc == 0
    # Deleted: not found, while the tombstones keep their place.
    assert get(nodes, "gc-3").rc == 1
    assert sum(int(stat_values(n, "objects")) for n in nodes) == 30

    def collected():
        recover(nodes)
        return sum(int(stat_values(n, "objects")) for n in nodes) == 0
    wait_for(collected, DEADLINE, interval=0.5, what="tombstones to be collected")
    assert sum(int(stat_values(n, "tombstones_collected")) for n in nodes) == 30
    assert get(nodes, "gc-3").rc == 1
