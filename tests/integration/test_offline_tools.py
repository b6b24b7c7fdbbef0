"""Offline backend tools of the real ellipticsd: --check, --compact, --export and
--import on a stopped node's data directory (they refuse a live one), migration
from the file engine to the blob engine through an export stream, refusal of
corrupt streams; and ELLIPTICS_FAULT: a node with injected IO faults gives the
client clean errors and stays up.

Engine-aware through $ELLIPTICS_BACKEND (the suite's engine) where a test is not
about a fixed pair of engines."""
import hashlib
import os
import random
import subprocess

import pytest

from conftest import BACKEND, ELLIPTICSD, wait_for
from test_corruption import flip_all, locate

TIMEOUT = 300


def offline(data, *args, backend=None, input=None, stdout=None):
    """Run `ellipticsd --data DATA --backend B ARGS`; (rc, stdout bytes, stderr str)."""
    cmd = [ELLIPTICSD, "--data", str(data), "--backend", backend or BACKEND] + list(args)
    p = subprocess.run(cmd, input=input, stdout=stdout or subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=TIMEOUT,
                       stdin=None if input is not None else subprocess.DEVNULL)
    return p.returncode, p.stdout if p.stdout is not None else b"", p.stderr.decode("utf-8", "replace")


def stop(node):
    """SIGTERM, assert a clean exit, and mark the node as not running (the offline
    tools need the data directory unlocked; teardown then leaves it alone)."""
    node.stop_clean()
    node.proc = None


def hexid(key):
    return hashlib.sha512(key.encode()).hexdigest()


def put_all(node, objs):
    for k, v in objs.items():
        r = node.cli("put", "--", k, "-", input=v)
        assert r.rc == 0, (k, r.err)


def lookup(node, key):
    r = node.cli("lookup", "--", key)
    assert r.rc == 0, r.err
    fields = dict(f.split("=", 1) for f in r.out.decode().split()[1:] if "=" in f)
    return fields["size"], fields["csum"], fields["timestamp"]


def assert_served(node, objs, meta=None):
    for k, v in objs.items():
        r = node.cli("get", "--", k, "-")
        assert r.rc == 0, (k, r.err)
        assert r.out == v, "object %r differs (%d vs %d bytes)" % (k, len(r.out), len(v))
        if meta is not None:
            assert lookup(node, k) == meta[k], "size/checksum/timestamp of %r changed" % k


def sample_objects(seed=1, big=True):
    rnd = random.Random(seed)
    objs = {
        "empty": b"",
        "one": b"x",
        "key with spaces/and/slashes": rnd.randbytes(4097),
        "unicode-\u00e9\u4e2d": rnd.randbytes(65537),
        "-dash": rnd.randbytes(100),
    }
    for i in range(20):
        objs["small-%d" % i] = rnd.randbytes(rnd.randint(1, 20000))
    if big:
        objs["big"] = rnd.randbytes((9 << 20) + 123)  # > 8 MiB: a chunked upload at import
    return objs


def test_check_clean_then_corrupt(node):
    objs = sample_objects(2, big=False)
    objs["victim"] = random.Random(3).randbytes(300000)
    put_all(node, objs)
    stop(node)
    rc, out, err = offline(node.data, "--check")
    assert rc == 0, err
    assert ("checked %d objects" % len(objs)) in out.decode(), out
    assert ("%d ok, 0 corrupt" % len(objs)) in out.decode(), out

    flip_all(locate(node.data, objs["victim"], 150000))
    rc, out, err = offline(node.data, "--check")
    text = out.decode()
    assert rc == 1, (rc, text, err)
    assert hexid("victim") in text, text
    assert "1 corrupt" in text, text
    # nothing else is reported
    bad = [l for l in text.splitlines() if l.startswith("corrupt ")]
    assert len(bad) == 1, text


def test_tools_refuse_a_live_directory(node):
    put_all(node, {"k": b"v"})
    for args in (["--check"], ["--compact"], ["--export", "-"], ["--import", "-"]):
        rc, out, err = offline(node.data, *args, input=b"" if "--import" in args else None)
        assert rc == 3, (args, rc, err)
        assert "in use" in err, err
        assert out == b""
    r = node.cli("get", "k", "-")
    assert r.rc == 0 and r.out == b"v"


def test_tools_usage(tmp_path):
    rc, out, err = offline(tmp_path / "nothing", "--check")
    assert rc == 3 and "no such data directory" in err, err
    (tmp_path / "d").mkdir()
    rc, out, err = offline(tmp_path / "d", "--check")
    assert rc == 3 and "wrong --backend" in err, err
    rc, out, err = offline(tmp_path / "d", "--check", "--compact")
    assert rc == 2 and "only one of" in err, err
    cfg = tmp_path / "c.conf"
    cfg.write_text("check = 1\n")
    rc, out, err = offline(tmp_path / "d", "--config", str(cfg))
    assert rc == 2 and "command line" in err, err
    h = subprocess.run([ELLIPTICSD, "--help"], capture_output=True, text=True, timeout=30).stdout
    for flag in ("--check", "--compact", "--export FILE|-", "--import FILE|-"):
        assert flag in h, flag


def test_migration_file_to_blob(node_factory, tmp_path):
    src = node_factory("--backend", "file", name="src")
    objs = sample_objects(4)
    put_all(src, objs)
    meta = {k: lookup(src, k) for k in objs}
    stop(src)

    stream = tmp_path / "all.exp"
    rc, out, err = offline(src.data, "--export", str(stream), backend="file")
    assert rc == 0, err
    assert "exported %d objects" % len(objs) in err, err

    dst_data = tmp_path / "dst-data"
    rc, out, err = offline(dst_data, "--import", str(stream), backend="blob")
    assert rc == 0, err
    assert "imported %d objects" % len(objs) in err, err
    rc, out, err = offline(dst_data, "--check", backend="blob")
    assert rc == 0 and ("%d ok, 0 corrupt" % len(objs)) in out.decode(), (out, err)

    dst = node_factory("--backend", "blob", name="dst", data=dst_data)
    assert_served(dst, objs, meta)  # bytes, checksums and timestamps all identical
    stop(dst)

    # the same through a pipe: export - | import -
    pipe_data = tmp_path / "pipe-data"
    exp = subprocess.Popen([ELLIPTICSD, "--data", src.data, "--backend", "file", "--export", "-"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    imp = subprocess.run([ELLIPTICSD, "--data", str(pipe_data), "--backend", "blob", "--import", "-"],
                         stdin=exp.stdout, capture_output=True, timeout=TIMEOUT)
    exp.stdout.close()
    assert exp.wait(TIMEOUT) == 0, exp.stderr.read()
    exp.stderr.close()
    assert imp.returncode == 0, imp.stderr
    # a stream from the imported copy is byte-identical to the original's
    rc, out, err = offline(pipe_data, "--export", "-", backend="blob")
    assert rc == 0, err
    assert out == stream.read_bytes()


def test_import_refuses_corrupt_streams(node, tmp_path):
    objs = sample_objects(5, big=False)
    put_all(node, objs)
    stop(node)
    good = tmp_path / "good.exp"
    rc, out, err = offline(node.data, "--export", str(good))
    assert rc == 0, err
    data = good.read_bytes()
    target = objs["unicode-\u00e9\u4e2d"]
    pos = data.find(target)
    assert pos > 0
    variants = {
        "flipped data byte": data[:pos + 1000] + bytes([data[pos + 1000] ^ 1]) + data[pos + 1001:],
        "flipped header byte": data[:pos - 50] + bytes([data[pos - 50] ^ 1]) + data[pos - 49:],
        "truncated": data[:len(data) - 200],
        "no end record": data[:len(data) - 128],
        "trailing bytes": data + b"\0",
        "bad magic": b"X" + data[1:],
        "empty": b"",
    }
    for name, bad in variants.items():
        f = tmp_path / "bad.exp"
        f.write_bytes(bad)
        d = tmp_path / ("dst-" + name.replace(" ", "-"))
        rc, out, err = offline(d, "--import", str(f))
        assert rc == 3, (name, rc, err)
        assert "corrupt stream" in err or "not an ellipticsd export" in err, (name, err)
        # a file is verified whole before anything is written: nothing imported
        rc, out, err = offline(d, "--check")
        assert rc == 0 and b"checked 0 objects" in out, (name, out, err)

        # through a pipe: refused too; whatever got in before the damage is intact
        d2 = tmp_path / ("pipe-" + name.replace(" ", "-"))
        rc, out, err = offline(d2, "--import", "-", input=bad)
        assert rc == 3, (name, rc, err)
        rc, out, err = offline(d2, "--check")
        assert rc == 0 and b", 0 corrupt" in out, (name, out, err)
    # the damaged object itself never got in through the pipe
    d2 = tmp_path / "pipe-flipped-data-byte"
    n = node_factory_like(node, tmp_path, d2)
    try:
        r = n.cli("get", "--", "unicode-\u00e9\u4e2d", "-")
        assert r.rc == 1, r
    finally:
        stop(n)


def node_factory_like(node, tmp_path, data):
    from conftest import Node
    n = Node(tmp_path, name="verify-" + os.path.basename(str(data)), data=data)
    return n.start()


@pytest.mark.skipif(BACKEND != "blob", reason="compaction is the blob engine's")
def test_compact_blob(node_factory, monkeypatch):
    monkeypatch.setenv("ELLIPTICS_BLOB_COMPACT_RATIO", "0")  # only on demand
    monkeypatch.setenv("ELLIPTICS_BLOB_PUNCH", "0")          # no hole punching either
    n = node_factory("--backend", "blob")
    rnd = random.Random(6)
    objs = {}
    for i in range(60):
        objs["k%d" % i] = rnd.randbytes(20000)
    put_all(n, objs)
    for i in range(0, 60, 2):  # half overwritten, a quarter deleted
        objs["k%d" % i] = rnd.randbytes(20000)
        put_all(n, {"k%d" % i: objs["k%d" % i]})
    for i in range(1, 60, 4):
        assert n.cli("del", "k%d" % i).rc == 0
        del objs["k%d" % i]
    stop(n)

    def blob_bytes():
        d = os.path.join(n.data, "blob")
        return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".data"))

    before = blob_bytes()
    rc, out, err = offline(n.data, "--compact", backend="blob")
    assert rc == 0, err
    assert b"compacted" in out, out
    after = blob_bytes()
    assert after < before * 0.75, (before, after, out)
    rc, out, err = offline(n.data, "--compact", backend="blob")
    assert rc == 0 and b"nothing to compact" in out, out
    rc, out, err = offline(n.data, "--check", backend="blob")
    assert rc == 0 and ("%d ok, 0 corrupt" % len(objs)).encode() in out, out
    n.start()
    assert_served(n, objs)
    for i in range(1, 60, 4):
        assert n.cli("get", "k%d" % i, "-").rc == 1


@pytest.mark.parametrize("engine", ["file", "lmdb", "bdb"])
def test_compact_other_engines_is_a_noop(node_factory, engine):
    n = node_factory("--backend", engine)
    put_all(n, {"a": b"1"})
    stop(n)
    rc, out, err = offline(n.data, "--compact", backend=engine)
    assert rc == 0, err
    assert b"no compaction" in out, out


# ---- ELLIPTICS_FAULT: a node with failing IO answers cleanly and stays up ------------

def fault_plans(engine):
    if engine in ("lmdb", "bdb"):
        return ["op=commit,n=1,count=0", "op=commit,n=1,count=0,err=ENOSPC"]
    return ["op=write,n=1,count=0", "op=short,n=1", "op=write,n=1,count=0,err=ENOSPC"]


@pytest.mark.parametrize("plan_idx", [0, 1])
def test_fault_env_clean_errors(node_factory, monkeypatch, plan_idx):
    plans = fault_plans(BACKEND)
    plan = plans[plan_idx]
    monkeypatch.setenv("ELLIPTICS_FAULT", plan)
    n = node_factory()
    monkeypatch.delenv("ELLIPTICS_FAULT")
    assert "fault injection armed" in n.log()
    data = random.Random(7).randbytes(70000)
    r = n.cli("put", "victim", "-", input=data)
    assert r.rc == 3, (plan, r)
    lines = [l for l in r.err.splitlines() if l.strip()]
    assert len(lines) == 1, r.err  # one clear line
    assert n.alive()
    assert n.cli("stat").rc == 0
    # a failed write is old or new content after all, never garbage or corrupt
    g = n.cli("get", "victim", "-")
    assert g.rc == 1 or (g.rc == 0 and g.out == data), g
    if "count=0" not in plan:  # a one-off fault: the node writes again
        ok = random.Random(8).randbytes(5000)
        assert n.cli("put", "after", "-", input=ok).rc == 0
        assert n.cli("get", "after", "-").out == ok
    stop(n)
    n.start()  # restarted without faults: readable, writable, nothing corrupt
    g = n.cli("get", "victim", "-")
    assert g.rc == 1 or (g.rc == 0 and g.out == data), g
    assert n.cli("put", "victim", "-", input=b"fresh").rc == 0
    assert n.cli("get", "victim", "-").out == b"fresh"
    stop(n)
    rc, out, err = offline(n.data, "--check")
    assert rc == 0, (out, err)


def test_fault_env_sync_always(node_factory, monkeypatch):
    """With --fsync always a failing sync fails the write (lmdb/bdb sync inside their
    commit, reached through the commit class)."""
    plan = "op=commit,n=1,count=0" if BACKEND in ("lmdb", "bdb") else "op=sync,n=1,count=0"
    monkeypatch.setenv("ELLIPTICS_FAULT", plan)
    n = node_factory("--fsync", "always")
    monkeypatch.delenv("ELLIPTICS_FAULT")
    r = n.cli("put", "k", "-", input=b"data")
    assert r.rc == 3, r
    assert n.alive() and n.cli("stat").rc == 0
    stop(n)


def test_fault_env_malformed(tmp_path):
    env = dict(os.environ, ELLIPTICS_FAULT="op=nothing,n=1")
    p = subprocess.run([ELLIPTICSD, "--data", str(tmp_path / "d"), "--listen", "127.0.0.1:1"],
                       env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "ELLIPTICS_FAULT" in p.stderr, p.stderr
