"""Redirects that bounce: while a node joins or leaves, two nodes can have different
rings for a moment and send a request back and forth (A: "B owns it", B: "A owns
it") far faster than they converge. The client backs off between such bounces
(10 ms, doubling, at most 8 of them, not counted against the 5 redirects a request
may follow), so the request succeeds once the nodes agree and gives up with
NOTOWNER after about 2.5 s if they never do.

Two fake nodes on loopback (FakeServer from test_hostile_server.py): both answer
ROUTES with a table that gives every ID but ff..ff to A; A answers the READ or
WRITE with NOTOWNER naming B a set number of times (or always), B always names A.
The real `elliptics` CLI is the client, bootstrapped from A. Each node logs when a
keyed request arrived and when its reply was handed to the socket, so the time
the client waited between a NOTOWNER and its resend is bounded from below."""
import resource
import struct
import threading
import time
from collections import namedtuple

import pytest

import proto
from conftest import run_cli
from test_hostile_server import FakeServer, reply

KEY = "bounce key"
DATA = b"an object that two nodes each say the other owns\n" * 40
BOUNCE_WAIT = 0.010  # the first back-off; each next one doubles
MAX_BOUNCES = 8
MAX_REDIRECTS = 5

Hit = namedtuple("Hit", "node cmd t_recv t_sent")


class Pair:
    """Fake nodes A and B. A owns the key by the table; it answers NOTOWNER (naming
    B) to its first `a_refuses` keyed requests (None: to all), then serves them as a
    store would; B always answers NOTOWNER naming A."""

    def __init__(self, a_refuses):
        self.a_refuses = a_refuses
        self.lock = threading.Lock()
        self.hits = []  # keyed requests, in arrival order
        self.stored = None
        self.a = FakeServer(lambda h, p: self._respond("A", h, p))
        self.b = FakeServer(lambda h, p: self._respond("B", h, p))
        zero, top = b"\0" * proto.ID_SIZE, b"\xff" * proto.ID_SIZE
        assert proto.key_to_id(KEY) != top
        # A's one ring ID is 00..00 and B's ff..ff: A owns every ID but the last.
        self.table = proto.encode_ring([(b"\1" * proto.ID_SIZE, self.a.addr, [zero]),
                                        (b"\2" * proto.ID_SIZE, self.b.addr, [top])])

    def close(self):
        self.a.close()
        self.b.close()

    def _respond(self, node, h, p):
        t_recv = time.monotonic()
        if h.cmd == proto.CMD_ROUTES:
            return reply(h, payload=self.table)
        if h.cmd not in (proto.CMD_READ, proto.CMD_WRITE):
            return reply(h)
        with self.lock:
            refused = sum(1 for x in self.hits if x.node == "A")
            if node == "B" or self.a_refuses is None or refused < self.a_refuses:
                peer = self.a.addr if node == "B" else self.b.addr
                out = reply(h, status=proto.ENOTOWNER, payload=proto.notowner_payload(peer))
            elif h.cmd == proto.CMD_WRITE:
                io = proto.decode_io(p)
                self.stored = p[proto.IO_ATTR_SIZE:proto.IO_ATTR_SIZE + io.size]
                info = struct.pack("<QQQ16sII", len(self.stored), 12345, 0, b"\0" * 16, 0, 0)
                out = reply(h, payload=info)
            else:
                io = proto.encode_io(size=len(DATA), total_size=len(DATA), timestamp=12345)
                out = reply(h, payload=io + DATA)
            # Taken before the reply goes out: the client cannot have seen it earlier.
            self.hits.append(Hit(node, h.cmd, t_recv, time.monotonic()))
        return out

    def keyed(self):
        with self.lock:
            return list(self.hits)


def run(pair, command, timeout_s=30):
    """The CLI's get (to stdout) or put (from stdin) of KEY, bootstrapped from A.
    Returns (CliResult, wall seconds, CPU seconds the CLI used)."""
    args = ["--timeout", str(timeout_s)]
    args += ["get", KEY] if command == "get" else ["put", KEY, "-"]
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    r = run_cli(args, remotes=[pair.a.addr], input=DATA if command == "put" else None,
                timeout=120)
    wall = time.monotonic() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return r, wall, cpu


def check_backoff(hits):
    """hits[0] -> hits[1] is a plain redirect (A names B); every later NOTOWNER sends
    the request back to the node that redirected it: the client waits 10 ms before
    the first resend, then twice as long each time."""
    gaps = [hits[i + 1].t_recv - hits[i].t_sent for i in range(len(hits) - 1)]
    for i, g in enumerate(gaps[1:]):
        want = BOUNCE_WAIT * (2 ** i)
        assert g >= want, ("bounce %d was resent %.1f ms after the NOTOWNER, expected a "
                           "back-off of at least %.0f ms; gaps (ms): %s"
                           % (i + 1, g * 1000, want * 1000,
                              ", ".join("%.1f" % (x * 1000) for x in gaps)))
    return gaps


@pytest.mark.parametrize("command", ["get", "put"])
def test_bouncing_redirect_backs_off_until_the_owner_answers(command):
    """A refuses 4 times: A B A B A B A B A, one redirect and 7 bounces (more than
    the 5 redirects a request may follow), then A serves it."""
    pair = Pair(a_refuses=4)
    try:
        r, wall, cpu = run(pair, command)
        hits = pair.keyed()
    finally:
        pair.close()
    assert r.rc == 0, "rc %d, stderr %r; requests %s" % (r.rc, r.err, [h.node for h in hits])
    if command == "get":
        assert r.out == DATA
    else:
        assert pair.stored == DATA
    want_cmd = proto.CMD_READ if command == "get" else proto.CMD_WRITE
    assert all(h.cmd == want_cmd for h in hits)
    assert [h.node for h in hits] == ["A", "B"] * 4 + ["A"]
    check_backoff(hits)
    # 10 + 20 + ... + 640 ms of back-off in all
    assert wall >= 1.27


@pytest.mark.parametrize("command", ["get", "put"])
def test_endless_bounces_end_in_notowner(command):
    """The nodes never agree: after one redirect and 8 bounces (10 requests, 2.55 s
    of back-off) the client gives up with NOTOWNER, sleeping while it waits."""
    pair = Pair(a_refuses=None)
    try:
        r, wall, cpu = run(pair, command)
        hits = pair.keyed()
    finally:
        pair.close()
    assert r.rc == 3, "rc %d, stderr %r" % (r.rc, r.err)
    assert "does not own this ID" in r.err, r.err
    lines = [l for l in r.err.splitlines() if l.strip()]
    assert len(lines) == 1, r.err
    assert [h.node for h in hits] == ["A", "B"] * ((2 + MAX_BOUNCES) // 2)
    check_backoff(hits)
    assert wall >= 2.55
    # Not spinning through the waits (a busy loop would burn ~2.5 s of CPU).
    assert cpu < 1.0, "the CLI used %.2f s of CPU in %.2f s" % (cpu, wall)


def test_bounce_waits_within_the_request_timeout():
    """A wait that would outlast the request's timeout ends in the usual timeout error
    at the deadline. --timeout 1: the waits of 10 .. 640 ms fit (9 requests), the
    next one (1280 ms) does not."""
    pair = Pair(a_refuses=None)
    try:
        r, wall, cpu = run(pair, "get", timeout_s=1)
        hits = pair.keyed()
    finally:
        pair.close()
    assert r.rc == 3, "rc %d, stderr %r" % (r.rc, r.err)
    assert "timed out" in r.err, r.err
    assert [h.node for h in hits] == ["A", "B"] * 4 + ["A"]
    check_backoff(hits)
    # 1.27 s of waits, then the last NOTOWNER's timeout (1 s) runs out.
    assert wall >= 2.27
    assert cpu < 1.0, "the CLI used %.2f s of CPU in %.2f s" % (cpu, wall)
