"""test_partition.py - a ring split by a network partition (network namespaces and
iptables DROP between them) marks the other side down on each side, and once the
partition heals both sides converge to one route table with every node up."""
import os
import subprocess

import pytest

import netns
from conftest import ELLIPTICS, ELLIPTICSD, wait_for

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
    out = {}
    for line in r.stdout.decode().splitlines():
        p = line.split()
        if len(p) == 3:
            out[p[1]] = p[2]
    return out


def view(net, i):
    s = stat(net, i)
    return (int(s.get("ring_up", -1)), int(s.get("ring_down", -1)), s.get("ring_digest"))


def test_partition_then_heal_converges(net, tmp_path):
    for i in range(1, 4):
        assert net.wait_reachable(0, i), "namespace %d unreachable" % i
    logs = []
    for i in range(4):
        data = tmp_path / ("n%d" % i)
        data.mkdir()
        log = open(tmp_path / ("n%d.log" % i), "wb")
        logs.append(log)
        args = [ELLIPTICSD, "--listen", "%s:%d" % (net.ip(i), PORT), "--data", str(data)] + FAST
        if i:
            args += ["--join", "%s:%d" % (net.ip(0), PORT)]
        net.popen(i, args, stdout=log, stderr=log)
    try:
        wait_for(lambda: all(view(net, i)[0] == 4 for i in range(4)) and
                 len({view(net, i)[2] for i in range(4)}) == 1, 60, what="4 nodes to converge")

        net.partition([0, 1], [2, 3])
        # Each side sees its own two nodes up and the other two down.
        wait_for(lambda: all(view(net, i)[:2] == (2, 2) for i in range(4)), 60,
                 what="both sides to mark the other down")
        side_a = {view(net, i)[2] for i in (0, 1)}
        side_b = {view(net, i)[2] for i in (2, 3)}
        assert len(side_a) == 1 and len(side_b) == 1 and side_a != side_b

        net.heal()
        wait_for(lambda: all(view(net, i)[:2] == (4, 0) for i in range(4)) and
                 len({view(net, i)[2] for i in range(4)}) == 1, 60,
                 what="one route table with every node up after the heal")
    finally:
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
