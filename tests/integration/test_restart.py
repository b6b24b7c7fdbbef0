"""Restarts and crashes: data and node ID survive SIGTERM; SIGKILL in the middle of
writes never leaves a torn or wrong object and never loses an acknowledged write."""
import hashlib
import os
import random
import threading
import time

import proto
from conftest import wait_for


def content(key, version, size):
    """Self-describing object bytes: which (key, version) they are can be checked."""
    head = ("%s@%d;" % (key, version)).encode()
    body = hashlib.sha512(head).digest()
    out = (head + body * (size // len(body) + 1))[:max(size, len(head))]
    return out


def test_data_survives_sigterm_restart(node, tmp_path):
    objs = {"restart-%d" % i: os.urandom(i * 1000) for i in range(20)}
    for k, v in objs.items():
        assert node.cli("put", k, input=v).rc == 0
    assert node.cli("del", "restart-3").rc == 0
    node_id_path = os.path.join(node.data, "node_id")
    assert os.path.isfile(node_id_path), "the node must persist its ID in DATA/node_id"
    with open(node_id_path, "rb") as f:
        node_id = f.read()
    assert node_id.strip(), "node_id is empty"

    for _ in range(2):
        node.restart()
        with open(node_id_path, "rb") as f:
            assert f.read() == node_id, "node_id changed across a restart"
        for k, v in objs.items():
            r = node.cli("get", k)
            if k == "restart-3":
                assert r.rc == 1, "a deleted object came back after restart"
            else:
                assert r.rc == 0 and r.out == v, k


def test_sigint_is_clean_too(node):
    assert node.cli("put", "sigint", input=b"data").rc == 0
    import signal
    rc = node.stop(signal.SIGINT)
    assert rc == 0, "ellipticsd exited %s on SIGINT" % rc
    node.start()
    r = node.cli("get", "sigint")
    assert r.rc == 0 and r.out == b"data"


class Writer(threading.Thread):
    """Overwrites its own keys in a loop over one connection, one request in flight,
    recording for each key the last acknowledged version and the one in flight."""

    def __init__(self, addr, wid, nkeys, sizes):
        super().__init__(daemon=True)
        self.addr, self.wid, self.sizes = addr, wid, sizes
        self.keys = ["crash-%d-%d" % (wid, i) for i in range(nkeys)]
        self.acked = {}     # key -> (version, size) last acknowledged
        self.inflight = {}  # key -> (version, size) sent, not acknowledged
        self.version = 0
        self.error = None
        self.stop_flag = threading.Event()

    def run(self):
        rnd = random.Random(self.wid)
        try:
            c = proto.Conn(self.addr, timeout=60)
        except OSError as e:
            self.error = e
            return
        try:
            while not self.stop_flag.is_set():
                key = rnd.choice(self.keys)
                self.version += 1
                size = rnd.choice(self.sizes)
                self.inflight[key] = (self.version, size)
                t = c.next_trans()
                c.send(proto.write_request(proto.key_to_id(key), content(key, self.version, size), t))
                h, _ = c.recv()
                if h.trans != t or h.status != 0:
                    self.error = "write %s v%d: trans %d status %d" % (key, self.version, h.trans, h.status)
                    return
                self.acked[key] = self.inflight.pop(key)
        except (OSError, proto.Closed):
            pass  # the server was killed under us: expected
        finally:
            c.close()


def test_sigkill_during_writes_never_tears_or_loses(node_factory):
    node = node_factory("--fsync", "never")
    rnd = random.Random(1234)
    sizes = [1, 4096, 70000, 300000, 1 << 20]
    writers_state = []
    for rnd_i in range(5):
        writers = [Writer(node.addr, w + 10 * rnd_i, 6, sizes) for w in range(4)]
        for w in writers:
            w.start()
        # Let some writes through, then kill at a random moment.
        wait_for(lambda: all(len(w.acked) > 0 for w in writers) or any(w.error for w in writers),
                 60, what="first acknowledged writes")
        time.sleep(rnd.uniform(0.0, 0.5))
        node.kill()
        for w in writers:
            w.join(60)
            assert not w.error, w.error
        writers_state.extend(writers)
        node.start()
        # Check every key written so far, in every round.
        with proto.Conn(node.addr, timeout=60) as c:
            for w in writers_state:
                for key in w.keys:
                    allowed = {}
                    if key in w.acked:
                        allowed[w.acked[key][0]] = w.acked[key][1]
                    if key in w.inflight:
                        allowed[w.inflight[key][0]] = w.inflight[key][1]
                    h, io, got = c.read(key)
                    if h.status == proto.ENOENT:
                        assert key not in w.acked, (
                            "round %d: acknowledged write of %s v%d lost" % (rnd_i, key, w.acked[key][0]))
                        continue
                    assert h.status == 0, "round %d: read %s: status %d" % (rnd_i, key, h.status)
                    ok = [v for v, s in allowed.items() if got == content(key, v, s)]
                    assert ok, ("round %d: %s holds %d bytes that are neither the acknowledged "
                                "version %s nor the in-flight one %s: torn or wrong object"
                                % (rnd_i, key, len(got), w.acked.get(key), w.inflight.get(key)))
                    if key in w.acked:
                        assert ok[0] >= w.acked[key][0], "%s went back before an acked write" % key
        # Re-write this round's keys so the next round starts from a known,
        # acknowledged state (an in-flight version may or may not have landed).
        with proto.Conn(node.addr, timeout=60) as c:
            for w in writers:
                for key in w.keys:
                    w.version += 1
                    size = 100
                    h, _ = c.write(key, content(key, w.version, size))
                    assert h.status == 0
                    w.acked[key] = (w.version, size)
                    w.inflight.pop(key, None)


def test_sigkill_during_large_cli_overwrite(node_factory, tmp_path):
    """A chunked (> 8 MiB) upload killed part-way: after restart the object is the
    old one or the new one, whole."""
    from conftest import ELLIPTICS
    import subprocess

    node = node_factory("--fsync", "never")
    old = os.urandom(9 << 20)
    src = tmp_path / "new"
    new = os.urandom(20 << 20)
    src.write_bytes(new)
    assert node.cli("put", "big-crash", input=old).rc == 0
    rnd = random.Random(99)
    for round_ in range(3):
        p = subprocess.Popen([ELLIPTICS, "-r", node.addr, "put", "big-crash", str(src)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rnd.uniform(0.01, 0.3))
        node.kill()
        p.communicate(timeout=120)
        node.start()
        r = node.cli("get", "big-crash")
        assert r.rc == 0, r.err
        assert r.out in (old, new), "round %d: torn object of %d bytes" % (round_, len(r.out))
        if p.returncode == 0:
            assert r.out == new, "the put was acknowledged but the old object is back"
        # Reset to the old object for the next round.
        assert node.cli("put", "big-crash", input=old).rc == 0


def test_sigterm_during_writes_is_clean(node_factory):
    """SIGTERM while clients write: the node exits 0 in time, and after a restart
    every acknowledged write is there and nothing is torn."""
    node = node_factory("--fsync", "batch")
    writers = [Writer(node.addr, 100 + w, 5, [10, 5000, 200000]) for w in range(4)]
    for w in writers:
        w.start()
    wait_for(lambda: all(len(w.acked) >= 3 for w in writers) or any(w.error for w in writers),
             60, what="acknowledged writes")
    rc = node.stop()
    assert rc == 0, "ellipticsd exited %s on SIGTERM under load; log:\n%s" % (rc, node.log_tail())
    for w in writers:
        w.join(60)
        assert not w.error, w.error
    node.start()
    with proto.Conn(node.addr, timeout=60) as c:
        for w in writers:
            for key in w.keys:
                h, io, got = c.read(key)
                if key not in w.acked:
                    assert h.status in (0, proto.ENOENT)
                    continue
                assert h.status == 0, "acknowledged %s lost over a clean stop" % key
                allowed = [w.acked[key]] + ([w.inflight[key]] if key in w.inflight else [])
                assert any(got == content(key, v, s) for v, s in allowed), "%s torn" % key
