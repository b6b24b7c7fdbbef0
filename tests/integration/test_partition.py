"""test_partition.py - a ring split by a network partition (network namespaces and
iptables DROP between them) marks the other side down on each side, and once the
partition heals both sides converge to one route table with every node up."""
import os
import subprocess

import pytest

import netns
from conftest import ELLIPTICS, ELLIPTICSD, parse_stat, wait_for

PORT = 1025
FAST = ["--heartbeat-ms", "200", "--fail-after-ms", "1500"]


@pytest.fixture
def net():
    why = netns.available()
    if why:
        pytest.skip(why)
    if not os.path.exists("/usr/sbin/iptables") and not os.path.exists("/sbin/iptables"):
        pytest.skip("needs iptables")
    n = netns.Net(4)
    try:
        yield n
    finally:
        n.close()


def stat(net, i):
    r = net.run(i, ELLIPTICS, "-r", "%s:%d" % (net.ip(i), PORT), "--timeout", "3", "stat")
    if r.returncode != 0:
        return {}
    return parse_stat(r.stdout)


def view(net, i):
    s = stat(net, i)
    return (int(s.get("ring_up", -1)), int(s.get("ring_down", -1)), s.get("ring_digest"))


def start_nodes(net, tmp_path, extra=()):
    """One node per namespace, all joining node 0; returns their log files."""
    for i in range(1, 4):
        assert net.wait_reachable(0, i), "namespace %d unreachable" % i
    logs = []
    for i in range(4):
        data = tmp_path / ("n%d" % i)
        data.mkdir()
        log = open(tmp_path / ("n%d.log" % i), "wb")
        logs.append(log)
        args = [ELLIPTICSD, "--listen", "%s:%d" % (net.ip(i), PORT), "--data", str(data)]
        args += FAST + list(extra)
        if i:
            args += ["--join", "%s:%d" % (net.ip(0), PORT)]
        net.popen(i, args, stdout=log, stderr=log)
    return logs


def stop_nodes(net, logs):
    for p in net.procs:
        if p.poll() is None:
            p.terminate()
    for p in net.procs:
        try:
            assert p.wait(30) == 0, "a node did not exit cleanly"
        except subprocess.TimeoutExpired:
            p.kill()
    for log in logs:
        log.close()


def converged_all(net):
    return all(view(net, i)[0] == 4 for i in range(4)) and \
        len({view(net, i)[2] for i in range(4)}) == 1


def test_partition_then_heal_converges(net, tmp_path):
    logs = start_nodes(net, tmp_path)
    try:
        wait_for(lambda: converged_all(net), 60, what="4 nodes to converge")

        net.partition([0, 1], [2, 3])
        # Each side sees its own two nodes up and the other two down.
        wait_for(lambda: all(view(net, i)[:2] == (2, 2) for i in range(4)), 60,
                 what="both sides to mark the other down")
        side_a = {view(net, i)[2] for i in (0, 1)}
        side_b = {view(net, i)[2] for i in (2, 3)}
        assert len(side_a) == 1 and len(side_b) == 1 and side_a != side_b

        net.heal()
        wait_for(lambda: all(view(net, i)[:2] == (4, 0) for i in range(4)) and converged_all(net),
                 60, what="one route table with every node up after the heal")
    finally:
        stop_nodes(net, logs)


def lookup_copies(net, i, key):
    """[(addr, csum, version)] of the copies of key, asked from inside namespace i."""
    r = net.run(i, ELLIPTICS, "-r", "%s:%d" % (net.ip(i), PORT), "--timeout", "10", "lookup", key)
    out = []
    for line in r.stdout.decode().splitlines():
        parts = line.split()
        fields = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        out.append((parts[0], fields["csum"], int(line.split("(")[1].split(")")[0])))
    return out


@pytest.mark.cost(5, sanitized=12)
def test_partition_with_copies_then_heal_converges_by_version(net, tmp_path):
    """Copies (N=3) on 4 nodes split 2/2; both sides take writes (their homes and
    stand-ins on their side), some keys on both sides. After the heal, every key's
    three copies agree on the greatest version (last writer wins)."""
    import xxhash
    logs = start_nodes(net, tmp_path, ("--copies", "3"))

    def put(i, key, data):
        r = net.run(i, ELLIPTICS, "-r", "%s:%d" % (net.ip(i), PORT), "--timeout", "10",
                    "put", key, input=data)
        assert r.returncode == 0, (key, r.stderr.decode())

    try:
        wait_for(lambda: converged_all(net), 60, what="4 nodes to converge")
        keys_a = ["side-a-%d" % k for k in range(30)]
        keys_b = ["side-b-%d" % k for k in range(30)]
        both = ["both-%d" % k for k in range(30)]
        want = {}
        for k in both:                      # before the split: everywhere
            put(0, k, b"before " + k.encode())
        net.partition([0, 1], [2, 3])
        wait_for(lambda: all(view(net, i)[:2] == (2, 2) for i in range(4)), 60,
                 what="both sides to mark the other down")
        for k in keys_a:
            want[k] = os.urandom(100)
            put(0, k, want[k])
        for k in keys_b:
            want[k] = os.urandom(100)
            put(2, k, want[k])
        # Keys written on both sides: side A first, then side B (a later clock):
        # side B's versions must win everywhere.
        for k in both:
            put(1, k, b"side a " + k.encode())
        for k in both:
            want[k] = b"side b " + k.encode()
            put(3, k, want[k])

        net.heal()
        wait_for(lambda: all(view(net, i)[:2] == (4, 0) for i in range(4)) and converged_all(net),
                 60, what="one route table with every node up after the heal")
        r = net.run(0, ELLIPTICS, "-r", "%s:%d" % (net.ip(0), PORT), "recover", timeout=300)
        assert r.returncode == 0, r.stderr.decode()

        def converged():
            for k, v in want.items():
                copies = lookup_copies(net, k.startswith("side-b") and 2 or 0, k)
                if len(copies) != 3 or {c[1] for c in copies} != {xxhash.xxh3_128_hexdigest(v)}:
                    return False
                if len({c[2] for c in copies}) != 1:
                    return False
            return True
        wait_for(converged, 120, interval=1.0,
                 what="three copies of every key agreeing on the newest version")
        for k, v in want.items():
            r = net.run(1, ELLIPTICS, "-r", "%s:%d" % (net.ip(1), PORT), "get", k)
            assert r.returncode == 0 and r.stdout == v, (k, r.stderr.decode())
    finally:
        stop_nodes(net, logs)
