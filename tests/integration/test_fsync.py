"""The --fsync policies: every mode stores and serves; the sync counters show what
each does, and batch (group commit) shares one sync among many writes."""
import json
import re

import pytest


def counters(node):
    r = node.cli("stat")
    assert r.rc == 0, r
    out = {}
    for line in r.out.decode().splitlines():
        parts = line.split()
        # `elliptics stat` prefixes each "name value" line with the node's HOST:PORT.
        if parts and parts[0] == node.addr:
            parts = parts[1:]
        if len(parts) >= 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                pass
    return out


def pick(c, *names):
    """The first counter whose name ends with one of names (after '.' or '_')."""
    for n in names:
        for k, v in c.items():
            if k == n or re.search(r"[._]" + re.escape(n) + r"$", k):
                return v
    raise AssertionError("no counter named like %r in stat output: %r" % (names, sorted(c)))


def syncs(node):
    return pick(counters(node), "syncs")


def synced_writes(node):
    return pick(counters(node), "synced_writes")


@pytest.mark.parametrize("mode", ["never", "always", "batch"])
def test_mode_stores_and_serves(node_factory, mode):
    node = node_factory("--fsync", mode)
    before = syncs(node)
    for i in range(20):
        assert node.cli("put", "f-%d" % i, input=b"%d" % i * 1000).rc == 0
    for i in range(20):
        r = node.cli("get", "f-%d" % i)
        assert r.rc == 0 and r.out == b"%d" % i * 1000
    delta = syncs(node) - before
    if mode == "never":
        assert delta == 0, "--fsync never made %d syncs" % delta
    else:
        assert delta > 0, "--fsync %s made no syncs for 20 writes" % mode
    if mode == "always":
        assert synced_writes(node) >= 20
    node.restart()
    r = node.cli("get", "f-7")
    assert r.rc == 0 and r.out == b"7" * 1000


def test_batch_shares_syncs(node_factory):
    node = node_factory("--fsync", "batch")
    s0, w0 = syncs(node), synced_writes(node)
    r = node.cli("bench", "--op", "put", "--size", "1024", "--conns", "32", "--count", "3000", "--json")
    assert r.rc == 0, r
    res = json.loads(r.out)
    assert res["errors"] == 0
    s1, w1 = syncs(node), synced_writes(node)
    assert w1 - w0 >= 3000, "every batched write must be counted as synced: %d" % (w1 - w0)
    assert 0 < s1 - s0 < w1 - w0, "group commit did not share syncs: %d syncs for %d writes" % (
        s1 - s0, w1 - w0)


def test_always_syncs_every_write(node_factory):
    node = node_factory("--fsync", "always")
    s0, w0 = syncs(node), synced_writes(node)
    r = node.cli("bench", "--op", "put", "--size", "1024", "--conns", "4", "--count", "200", "--json")
    assert r.rc == 0, r
    assert json.loads(r.out)["errors"] == 0
    assert synced_writes(node) - w0 >= 200
    assert syncs(node) - s0 > 0
