"""test_join_under_load.py - a 4th and a 5th node join a 3-node ring while a client
keeps writing and reading through the real CLI: no read fails, no acknowledged
write is lost, the data ends up balanced, and only about 1/N of it moved."""
import os
import random
import threading

import pytest

from conftest import run_cli, wait_for

FAST = ("--heartbeat-ms", "200", "--fail-after-ms", "3000")


def converged(nodes):
    st = [n.stat() for n in nodes]
    return all(int(s["ring_up"]) == len(nodes) for s in st) and len({s["ring_digest"] for s in st}) == 1


@pytest.mark.cost(7, sanitized=18)
def test_join_under_load(node_factory):
    first = node_factory(*FAST)
    ring = [first] + [node_factory(*FAST, "--join", first.addr) for _ in range(2)]
    wait_for(lambda: converged(ring), 60, what="3 nodes to converge")
    remotes = [n.addr for n in ring]

    # Some data before the joins, so there is something to move.
    acked = {}
    for i in range(300):
        v = os.urandom(512)
        r = run_cli(["put", "pre-%d" % i, "-"], remotes=[random.choice(remotes)], input=v)
        assert r.rc == 0, r
        acked["pre-%d" % i] = v

    lock = threading.Lock()
    stop = threading.Event()
    errors = []
    counts = {"writes": 0, "reads": 0}

    def writer():
        i = 0
        while not stop.is_set() and i < 3000:
            k, v = "live-%d" % i, os.urandom(512)
            r = run_cli(["put", k, "-"], remotes=[random.choice(remotes)], input=v)
            if r.rc == 0:
                with lock:
                    acked[k] = v
                    counts["writes"] += 1
            else:
                errors.append(("put", k, r.rc, r.err))
            i += 1

    def reader():
        n = 0
        while not stop.is_set() and n < 3000:
            with lock:
                k, v = random.choice(list(acked.items()))
            r = run_cli(["get", k, "-"], remotes=[random.choice(remotes)])
            if r.rc != 0 or r.out != v:
                errors.append(("get", k, r.rc, r.err))
            with lock:
                counts["reads"] += 1
            n += 1

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    def ops():
        with lock:
            return counts["writes"], counts["reads"]

    def ran(since, n):
        # Both the writer and the reader finished n operations since `since`.
        w, r = ops()
        return w - since[0] >= n and r - since[1] >= n

    try:
        # Load running before the first join, during both, and after the move.
        wait_for(lambda: ran((0, 0), 25), 120, what="25 writes and reads before the joins")
        at_join = ops()
        moved_before = sum(n.istat("move_objects") for n in ring)
        ring.append(node_factory(*FAST, "--join", first.addr))
        wait_for(lambda: converged(ring), 60, what="the 4th node to converge")
        ring.append(node_factory(*FAST, "--join", ring[1].addr))
        wait_for(lambda: converged(ring), 60, what="the 5th node to converge")
        wait_for(lambda: all(n.istat("move_pending") == 0 for n in ring), 120,
                 what="data movement to finish")
        at_moved = ops()
        wait_for(lambda: ran(at_moved, 25), 120, what="25 writes and reads after the move")
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert not errors, "%d failed operations during the joins, e.g. %r" % (len(errors), errors[:5])
    # Some of the load overlapped the joins and the move itself.
    assert at_moved[0] > at_join[0] and at_moved[1] > at_join[1], \
        (at_join, at_moved, ops())

    # Every acknowledged write reads back, through any node.
    for k, v in acked.items():
        r = run_cli(["get", k, "-"], remotes=[random.choice(remotes)])
        assert r.rc == 0 and r.out == v, (k, r.rc, r.err)

    objs = [n.istat("objects") for n in ring]
    total = len(acked)
    assert sum(objs) == total, (objs, total)
    # Balanced: 64 ring IDs per node keep every share well within 0.4x..1.8x of 1/5.
    avg = total / len(ring)
    assert all(0.4 * avg <= o <= 1.8 * avg for o in objs), objs
    # Moved volume: objects only move to the nodes that joined, so what moved is at
    # most what those two nodes hold (the rest of their data was written to them).
    # An object that reached the 4th node before the 5th joined may move on to the
    # 5th: a second hop, counted by the 4th node's own move_objects.
    moved = sum(n.istat("move_objects") for n in ring) - moved_before
    second_hops = ring[3].istat("move_objects")
    assert moved <= objs[3] + objs[4] + second_hops + 5, (moved, objs, second_hops)
    print("\njoin under load: %d writes, %d reads, 0 errors; objects per node %s; moved %d "
          "(new nodes hold %d)" % (counts["writes"], counts["reads"], objs, moved, objs[3] + objs[4]))
