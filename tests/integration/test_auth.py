"""Authentication (--keys, --cluster-key; docs/security.md): clients without a key,
with a wrong one, or with too little permission are refused with a clear error and
nothing is stored; nodes prove the cluster key to join; keys reload on SIGHUP; the
secret never travels on the wire."""
import os
import signal
import socket
import struct
import time

import proto
from conftest import run_cli, wait_for
from test_ring_client import stat_values

KEYS = "ro ro-secret-1 read\nrw rw-secret-2 write\nboss boss-secret-3 admin\n"
FAST = ("--heartbeat-ms", "200", "--fail-after-ms", "1500")


def write_file(path, text):
    path.write_text(text)
    os.chmod(path, 0o600)
    return str(path)


def secured(node_factory, tmp_path, extra=(), name=None):
    keys = write_file(tmp_path / "keys", KEYS)
    ck = write_file(tmp_path / "cluster.key", "cluster-key-0123456789abcdef-xyz\n")
    return node_factory("--keys", keys, "--cluster-key", ck, *extra, name=name)


def cli(node, key, *args, **kw):
    opts = ["-k", key] if key else []
    return run_cli(opts + list(args), remotes=[node.addr], **kw)


def test_no_key_wrong_key_and_read_only_key_cannot_write(node_factory, tmp_path):
    node = secured(node_factory, tmp_path)
    for key in (None, "rw:wrong-secret", "nobody:rw-secret-2", "ro:ro-secret-1"):
        r = cli(node, key, "put", "k", input=b"data")
        assert r.rc == 3, (key, r.rc, r.err)
        assert "permission denied" in r.err, (key, r.err)
        assert len(r.err.strip().splitlines()) == 1, r.err
    # Nothing was stored: the admin sees no object.
    r = cli(node, "boss:boss-secret-3", "get", "k")
    assert r.rc == 1, r.err
    assert stat_values(node, "objects") is None  # stat itself needs a key
    r = cli(node, "ro:ro-secret-1", "stat")
    assert r.rc == 0 and " objects 0" in r.out.decode()


def test_permissions_per_key(node_factory, tmp_path):
    node = secured(node_factory, tmp_path)
    assert cli(node, "rw:rw-secret-2", "put", "k", input=b"v1").rc == 0
    r = cli(node, "ro:ro-secret-1", "get", "k")
    assert r.rc == 0 and r.out == b"v1"
    assert cli(node, "ro:ro-secret-1", "del", "k").rc == 3
    assert cli(node, None, "get", "k").rc == 3
    # Ring changes and recovery need admin.
    r = cli(node, "rw:rw-secret-2", "leave", "127.0.0.1:1")
    assert r.rc == 3 and "permission denied" in r.err, r.err
    r = cli(node, "boss:boss-secret-3", "leave", "127.0.0.1:1")
    assert r.rc == 1, r.err  # allowed; no such member
    assert cli(node, "rw:rw-secret-2", "del", "k").rc == 0
    # $ELLIPTICS_KEY works like -k.
    r = run_cli(["get", "k"], remotes=[node.addr], env={"ELLIPTICS_KEY": "ro:ro-secret-1"})
    assert r.rc == 1, r.err


def test_node_needs_the_cluster_key_to_join(node_factory, tmp_path):
    a = secured(node_factory, tmp_path, FAST, name="a")
    good = tmp_path / "good"
    good.mkdir()
    b = secured(node_factory, good, FAST + ("--join", a.addr), name="b")
    wait_for(lambda: stat_values_k(a, "ring_up") == "2", 30, what="the right key to join")
    bad = tmp_path / "bad"
    bad.mkdir()
    ck = write_file(bad / "cluster.key", "a-different-cluster-key-000000000\n")
    c = node_factory("--cluster-key", ck, *FAST, "--join", a.addr, name="c")
    wait_for(lambda: "refused this node's cluster key" in c.log_tail(100), 30,
             what="the wrong key to be refused")
    time.sleep(0)  # the join attempt above has been made and refused
    assert stat_values_k(a, "ring_nodes") == "2"
    assert int(stat_values_k(a, "auth_failed")) >= 1
    # Data moves between the two nodes that share the key.
    for i in range(20):
        assert cli(a, "rw:rw-secret-2", "put", "x%d" % i, input=b"v%d" % i).rc == 0
    for i in range(20):
        r = cli(b, "ro:ro-secret-1", "get", "x%d" % i)
        assert r.rc == 0 and r.out == b"v%d" % i


def stat_values_k(node, name):
    r = cli(node, "ro:ro-secret-1", "stat", timeout=30)
    for line in r.out.decode().splitlines():
        p = line.split()
        if len(p) == 3 and p[1] == name:
            return p[2]
    return None


def test_keys_reload_on_sighup(node_factory, tmp_path):
    node = secured(node_factory, tmp_path)
    assert cli(node, "new:new-secret-4", "put", "k", input=b"x").rc == 3
    write_file(tmp_path / "keys", KEYS + "new new-secret-4 write\n")
    os.kill(node.pid, signal.SIGHUP)
    wait_for(lambda: cli(node, "new:new-secret-4", "put", "k", input=b"x").rc == 0, 30,
             what="the new key to work after SIGHUP")
    # A key removed from the file stops working for new connections.
    write_file(tmp_path / "keys", "new new-secret-4 write\n")
    os.kill(node.pid, signal.SIGHUP)
    wait_for(lambda: cli(node, "rw:rw-secret-2", "get", "k").rc == 3, 30,
             what="the removed key to be refused")
    # A broken file keeps the keys in force.
    write_file(tmp_path / "keys", "this line is wrong\n")
    os.kill(node.pid, signal.SIGHUP)
    wait_for(lambda: "keys not reloaded" in node.log_tail(50), 30, what="the reload error")
    assert cli(node, "new:new-secret-4", "get", "k").rc == 0


def test_secret_never_on_the_wire_and_bad_handshakes(node_factory, tmp_path):
    node = secured(node_factory, tmp_path)
    host, port = node.addr.rsplit(":", 1)
    # Step 1 answers a fresh 32-byte nonce; a proof for another nonce fails.
    name = b"rw"
    with proto.Conn(node.addr) as c:
        body = struct.pack("<IH", 1, len(name)) + name
        t = c.next_trans()
        hdr, nonce = c.call(proto.encode_hdr(proto.CMD_AUTH, len(body), t,
                                             proto.FLAG_NEED_ACK) + body, t)
        assert hdr.status == 0 and len(nonce) == 32
        import hashlib
        import hmac
        mac = hmac.new(b"rw-secret-2", b"elliptics-auth-v1" + os.urandom(32) + name,
                       hashlib.sha256).digest()
        body2 = struct.pack("<IH", 2, len(name)) + name + mac
        t = c.next_trans()
        hdr, _ = c.call(proto.encode_hdr(proto.CMD_AUTH, len(body2), t,
                                         proto.FLAG_NEED_ACK) + body2, t)
        assert hdr.status == proto.EPERM
        # The right proof for the current nonce: needs a new nonce (one proof each).
        t = c.next_trans()
        hdr, nonce = c.call(proto.encode_hdr(proto.CMD_AUTH, len(body), t,
                                             proto.FLAG_NEED_ACK) + body, t)
        mac = hmac.new(b"rw-secret-2", b"elliptics-auth-v1" + nonce + name,
                       hashlib.sha256).digest()
        body2 = struct.pack("<IH", 2, len(name)) + name + mac
        t = c.next_trans()
        hdr, perm = c.call(proto.encode_hdr(proto.CMD_AUTH, len(body2), t,
                                            proto.FLAG_NEED_ACK) + body2, t)
        assert hdr.status == 0 and struct.unpack("<I", perm)[0] == 2
        hdr, _ = c.write("after-auth", b"ok")
        assert hdr.status == 0
    # Three wrong proofs close the connection.
    s = socket.create_connection((host, int(port)))
    for i in range(3):
        body = struct.pack("<IH", 1, 2) + b"rw"
        s.sendall(proto.encode_hdr(proto.CMD_AUTH, len(body), 10 + i, proto.FLAG_NEED_ACK) + body)
        proto.recv_msg(s)
        body2 = struct.pack("<IH", 2, 2) + b"rw" + b"\0" * 32
        s.sendall(proto.encode_hdr(proto.CMD_AUTH, len(body2), 20 + i, proto.FLAG_NEED_ACK) + body2)
        h, _ = proto.recv_msg(s)
        assert h.status == proto.EPERM
    s.settimeout(10)
    assert s.recv(1) == b"", "the connection should be closed after 3 failures"
    s.close()
    # Malformed AUTH payloads are protocol errors, the node stays up.
    with proto.Conn(node.addr) as c:
        for body in (b"", b"\1\0\0\0", struct.pack("<IH", 1, 200) + b"x", struct.pack("<IH", 9, 2) + b"rw"):
            t = c.next_trans()
            hdr, _ = c.call(proto.encode_hdr(proto.CMD_AUTH, len(body), t, proto.FLAG_NEED_ACK) + body, t)
            assert hdr.status == proto.EPROTO, body
    assert cli(node, "rw:rw-secret-2", "get", "after-auth").rc == 0


def test_bad_key_files_are_refused_at_start(tmp_path):
    import subprocess
    from conftest import ELLIPTICSD, free_port
    cases = [("alice secret superuser\n", "read|write|admin"),
             ("@cluster secret read\n", "not starting with @"),
             ("a s read\na t write\n", "given twice"),
             ("# only a comment\n", "no keys")]
    for i, (text, why) in enumerate(cases):
        keys = write_file(tmp_path / ("keys%d" % i), text)
        p = subprocess.run([ELLIPTICSD, "--listen", "127.0.0.1:%d" % free_port(), "--data",
                            str(tmp_path / ("d%d" % i)), "--keys", keys],
                           capture_output=True, timeout=60)
        assert p.returncode == 3, (text, p.returncode)
        assert why in p.stderr.decode(), (text, p.stderr.decode())
    p = subprocess.run([ELLIPTICSD, "--listen", "127.0.0.1:%d" % free_port(), "--data",
                        str(tmp_path / "dx"), "--cluster-key", str(tmp_path / "missing")],
                       capture_output=True, timeout=60)
    assert p.returncode == 3 and "--cluster-key" in p.stderr.decode()
