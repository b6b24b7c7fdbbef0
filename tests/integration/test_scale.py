"""Scale of connections: 10,000 mostly idle client connections held open while a
steady load runs through the same node. Every request of the load succeeds, the
idle connections stay open, and the node's memory stays bounded (the RSS before
and after, and the load's throughput with and without the crowd, are printed for
docs/performance.md)."""
import json
import resource

import proto
from conftest import sanitized, wait_for
from test_ring_client import stat_values

MiB = 1 << 20
IDLE = 10000


def bench(node, op, count):
    r = node.cli("bench", "--op", op, "--size", "1024", "--conns", "16", "--count", str(count),
                 "--keys", "2000", "--json")
    assert r.rc == 0, r.err
    return json.loads(r.out)


def test_ten_thousand_connections_with_steady_load(node_factory):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = IDLE + 500
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
        except (ValueError, OSError):
            raise AssertionError("this test needs %d open files; the hard limit is %d and cannot "
                                 "be raised (run as root or raise it)" % (want, hard))
    node = node_factory("--max-conns", str(IDLE + 100))
    alone = bench(node, "mixed", 20000)
    base = node.rss()
    socks = []
    try:
        for _ in range(IDLE):
            socks.append(proto.connect(node.addr))
        wait_for(lambda: int(stat_values(node, "conns_current")) >= IDLE, 120,
                 what="%d connections accepted" % IDLE)
        crowded = bench(node, "mixed", 20000)
        assert crowded["errors"] == 0, crowded
        assert alone["errors"] == 0, alone
        rss = node.rss()
        assert int(stat_values(node, "conns_current")) >= IDLE  # nobody was dropped
        # The idle ones still work: a request on a few of them is answered.
        for s in socks[:: IDLE // 10]:
            s.sendall(proto.simple_request(proto.CMD_PING, b"\0" * 64, 7))
            hdr, _ = proto.recv_msg(s)
            assert hdr.trans == 7 and hdr.status == 0, hdr
        print("%d idle connections: RSS %.1f MiB (%.1f MiB before, %.0f bytes per connection); "
              "1 KiB mixed load at 16 conns: %.0f ops/s alone, %.0f ops/s with the crowd "
              "(p99 %.0f / %.0f us)"
              % (IDLE, rss / MiB, base / MiB, (rss - base) / IDLE, alone["ops_per_sec"],
                 crowded["ops_per_sec"], alone["p99_us"], crowded["p99_us"]))
        if not sanitized():
            assert rss - base < 64 * MiB, "RSS grew by %.1f MiB" % ((rss - base) / MiB)
    finally:
        for s in socks:
            s.close()
