"""TLS (--tls-cert/--tls-key/--tls-ca; docs/security.md): objects of 0 B, 1 MiB and
100 MiB round-trip over TLS with their checksums; plaintext clients on a TLS port
and TLS clients on a plaintext port get a clear error; a wrong CA is refused; a
stalled handshake is cut off; a 3-node ring with mutual TLS converges and serves
reads through any node; a node without a certificate from the CA cannot join.
Certificates are made at run time with the openssl CLI (no keys in the repo)."""
import hashlib
import os
import select
import shutil
import socket
import ssl
import subprocess
import time

import pytest

import proto
from conftest import run_cli, wait_for

FAST = ("--heartbeat-ms", "200", "--fail-after-ms", "1500")


def openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, capture_output=True,
                   timeout=60)


class Pki:
    """A CA, a node certificate, a client certificate, and a rogue CA with a node
    certificate of its own, in dir."""

    def __init__(self, d):
        self.dir = str(d)
        os.makedirs(self.dir, exist_ok=True)
        self.ca, self.ca_key = self._ca("ca", "elliptics test CA")
        self.node, self.node_key = self._leaf("node", self.ca, self.ca_key)
        self.client, self.client_key = self._leaf("client", self.ca, self.ca_key)
        self.rogue_ca, rogue_key = self._ca("rogue-ca", "someone else's CA")
        self.rogue, self.rogue_key = self._leaf("rogue", self.rogue_ca, rogue_key)

    def p(self, name):
        return os.path.join(self.dir, name)

    def _ca(self, name, cn):
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", name + ".key", "-out", name + ".pem", "-days", "2",
                "-subj", "/CN=" + cn, cwd=self.dir)
        return self.p(name + ".pem"), self.p(name + ".key")

    def _leaf(self, name, ca, ca_key):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + name,
                cwd=self.dir)
        openssl("x509", "-req", "-in", name + ".csr", "-CA", ca, "-CAkey", ca_key,
                "-CAcreateserial", "-out", name + ".pem", "-days", "2", cwd=self.dir)
        return self.p(name + ".pem"), self.p(name + ".key")

    def node_args(self, cert=None, key=None, ca=True):
        a = ["--tls-cert", cert or self.node, "--tls-key", key or self.node_key]
        return a + (["--tls-ca", self.ca] if ca else [])


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.fail("the openssl CLI is missing (scripts/deps.sh installs it)")
    return Pki(tmp_path_factory.mktemp("pki"))


def tls_cli(pki, node, *args, ca=None, cert=None, key=None, **kw):
    opts = ["--tls-ca", ca or pki.ca]
    if cert:
        opts += ["--tls-cert", cert, "--tls-key", key]
    return run_cli(opts + list(args), remotes=[node.addr], **kw)


def stat(pki, node, name):
    r = tls_cli(pki, node, "stat", timeout=30)
    for line in r.out.decode().splitlines():
        p = line.split()
        if len(p) == 3 and p[1] == name:
            return p[2]
    return None


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


def test_round_trips_0_1m_100m(node_factory, pki, tmp_path):
    node = node_factory(*pki.node_args())
    for size in (0, 1 << 20, 100 << 20):
        src = tmp_path / ("in%d" % size)
        with open(src, "wb") as f:
            left = size
            while left:
                n = min(left, 8 << 20)
                f.write(os.urandom(n))
                left -= n
        r = tls_cli(pki, node, "put", "obj%d" % size, str(src))
        assert r.rc == 0, r.err
        dst = tmp_path / ("out%d" % size)
        r = tls_cli(pki, node, "get", "obj%d" % size, str(dst))
        assert r.rc == 0, r.err
        assert os.path.getsize(dst) == size
        assert sha256_file(dst) == sha256_file(src), size
        # The node's own checksum of what it stored matches too (lookup csum=).
        r = tls_cli(pki, node, "lookup", "obj%d" % size)
        assert r.rc == 0 and ("size=%d" % size) in r.out.decode(), r.out
        os.unlink(src)
        os.unlink(dst)
    # The bench command works over TLS (many small requests, several connections).
    r = tls_cli(pki, node, "bench", "--op", "mixed", "--size", "1024", "--conns", "4",
                "--count", "400", "--json")
    assert r.rc == 0, r.err
    assert '"errors": 0' in r.out.decode().replace('"errors":0', '"errors": 0'), r.out
    assert int(stat(pki, node, "tls_handshakes")) >= 8


def test_pipelined_requests_over_tls(node_factory, pki):
    """Thousands of requests in a few big TLS records: the node reads them in
    pieces, pauses at its in-flight limit with decrypted bytes still held by
    OpenSSL (which epoll cannot see), and must still answer every one."""
    node = node_factory(*pki.node_args())
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca)
    ctx.check_hostname = False
    n = 3000
    val = b"v" * 300
    with socket.create_connection(("127.0.0.1", node.port), timeout=60) as raw:
        with ctx.wrap_socket(raw) as s:
            s.sendall(proto.write_request(proto.key_to_id("pipelined"), val, 1))
            h, _ = proto.recv_msg(s)
            assert h.status == 0, h
            reqs = b"".join(proto.read_request(proto.key_to_id("pipelined"), 10 + i)
                            for i in range(n))
            # One thread, non-blocking: send while reading, so neither side waits
            # for the other's buffers.
            s.setblocking(False)
            off, buf, seen = 0, b"", set()
            deadline = time.monotonic() + 60
            while len(seen) < n:
                assert time.monotonic() < deadline, "only %d replies" % len(seen)
                want_w = off < len(reqs)
                select.select([s], [s] if want_w else [], [], 1.0)
                if want_w:
                    try:
                        off += s.send(reqs[off:off + 65536])
                    except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                        pass
                try:
                    buf += s.recv(1 << 20)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
                while len(buf) >= proto.HDR_SIZE:
                    h = proto.decode_hdr(buf)
                    if len(buf) < proto.HDR_SIZE + h.size:
                        break
                    payload = buf[proto.HDR_SIZE:proto.HDR_SIZE + h.size]
                    buf = buf[proto.HDR_SIZE + h.size:]
                    assert h.status == 0 and payload[proto.IO_ATTR_SIZE:] == val, h
                    seen.add(h.trans)
            assert seen == set(range(10, 10 + n))


def test_plaintext_client_on_tls_port_is_refused_cleanly(node_factory, pki):
    node = node_factory(*pki.node_args(), "--request-timeout-s", "2")
    r = node.cli("put", "k", input=b"data")
    assert r.rc == 3, r
    assert "speaks TLS" in r.err and "--tls-ca" in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1, r.err
    assert "plaintext client on the TLS port" in node.log_tail(20)
    # A raw request gets one plaintext error reply, then the connection closes.
    with proto.connect(node.addr, timeout=30) as s:
        s.sendall(proto.simple_request(proto.CMD_PING, b"\0" * 64, 7))
        h, _ = proto.recv_msg(s)
        assert h.status == -25 and h.trans == 7 and h.flags & proto.FLAG_REPLY, h
        assert s.recv(1) == b""
    # Neither TLS nor Elliptics: closed at once.
    with proto.connect(node.addr, timeout=30) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert s.recv(1) == b""
    # A handshake that never completes (half a ClientHello) is cut off by the sweep.
    t0 = time.monotonic()
    with proto.connect(node.addr, timeout=30) as s:
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        assert s.recv(1) == b""
    assert time.monotonic() - t0 < 20
    # Nothing was stored, and the node serves TLS clients as before.
    r = tls_cli(pki, node, "get", "k")
    assert r.rc == 1, r.err
    assert int(stat(pki, node, "tls_failed")) >= 3
    assert int(stat(pki, node, "conns_slow_closed")) >= 1


def test_tls_client_on_plaintext_port_gets_a_clear_error(node_factory, pki):
    node = node_factory()
    r = tls_cli(pki, node, "put", "k", input=b"data")
    assert r.rc == 3, r
    assert "does not speak TLS" in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1, r.err
    assert node.cli("get", "k").rc == 1  # nothing stored, node fine
    wait_for(lambda: "looks like a TLS client" in node.log_tail(20), 30, what="the log line")


def test_wrong_ca_and_client_certificates(node_factory, pki):
    node = node_factory(*pki.node_args(), "--tls-verify-clients", "1")
    # Our CA did not sign the node's certificate.
    r = tls_cli(pki, node, "put", "k", input=b"x", ca=pki.rogue_ca)
    assert r.rc == 3 and "certificate" in r.err, r.err
    # The node requires a client certificate: none, or one from another CA, is refused.
    r = tls_cli(pki, node, "put", "k", input=b"x")
    assert r.rc == 3 and "certificate" in r.err, r.err
    r = tls_cli(pki, node, "put", "k", input=b"x", cert=pki.rogue, key=pki.rogue_key)
    assert r.rc == 3 and "certificate" in r.err, r.err
    r = tls_cli(pki, node, "get", "k", cert=pki.client, key=pki.client_key)
    assert r.rc == 1, r.err  # nothing was stored by the refused ones
    r = tls_cli(pki, node, "put", "k", input=b"x", cert=pki.client, key=pki.client_key)
    assert r.rc == 0, r.err
    # Bad files are refused at start with one clear line.
    r = subprocess.run([node.cmdline()[0], "--data", str(node.dir / "other"), "--tls-cert",
                        pki.node, "--tls-key", pki.rogue_key], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 3 and "does not belong to certificate" in r.stderr, r.stderr
    r = run_cli(["--tls-ca", "/nonexistent", "get", "k"], remotes=[node.addr])
    assert r.rc == 3 and "/nonexistent" in r.err, r.err


def test_ring_with_mutual_tls(node_factory, pki, tmp_path):
    a = node_factory(*pki.node_args(), *FAST, name="a")
    # Stored before the others join: their share moves to them, node to node, over TLS.
    vals = {"k%d" % i: os.urandom(100 + i * 997) for i in range(24)}
    for k, v in vals.items():
        r = tls_cli(pki, a, "put", k, input=v)
        assert r.rc == 0, r.err
    b = node_factory(*pki.node_args(), *FAST, "--join", a.addr, name="b")
    c = node_factory(*pki.node_args(), *FAST, "--join", a.addr, name="c")
    for n in (a, b, c):
        wait_for(lambda: stat(pki, n, "ring_up") == "3", 60, what="3 nodes up at %s" % n.addr)
    wait_for(lambda: int(stat(pki, a, "move_objects") or 0) > 0 and
             stat(pki, a, "move_pending") == "0", 60, what="objects moved from a")
    for n in (a, b, c):
        for k, v in vals.items():
            r = tls_cli(pki, n, "get", k)
            assert r.rc == 0 and r.out == v, (n.addr, k, r.err)
    # A TLS connection without a certificate from the CA may not act as a node.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca)
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", a.port), timeout=30) as raw:
        with ctx.wrap_socket(raw) as s:
            s.sendall(proto.encode_hdr(proto.CMD_JOIN, 0, 5, proto.FLAG_NEED_ACK))
            h, _ = proto.recv_msg(s)
            assert h.status == proto.EPERM, h
    # Nodes whose certificate the CA did not sign, or with no TLS at all, cannot join.
    d = node_factory("--tls-cert", pki.rogue, "--tls-key", pki.rogue_key, "--tls-ca", pki.ca,
                     *FAST, "--join", a.addr, name="rogue")
    e = node_factory(*FAST, "--join", a.addr, name="plain")
    wait_for(lambda: "certificate refused" in d.log_tail(50), 30, what="the rogue refused")
    wait_for(lambda: "speaks TLS" in e.log_tail(50), 30, what="the plaintext node refused")
    for n in (a, b, c):
        assert stat(pki, n, "ring_nodes") == "3", n.addr
    r = tls_cli(pki, a, "routes")
    assert r.rc == 0
    routes = r.out.decode()
    assert d.addr not in routes and e.addr not in routes


def test_s3_gateway_on_a_tls_node(node_factory, pki):
    """The gateway inside a TLS node reaches the ring through TLS (its client
    handles verify the node like other nodes do): anonymous S3 PUT/GET on
    loopback round-trip, also with client certificates required."""
    import http.client
    from conftest import free_port
    for verify in ("0", "1"):
        port = free_port()
        node = node_factory(*pki.node_args(), "--tls-verify-clients", verify,
                            "--http", "127.0.0.1:%d" % port)
        body = os.urandom(70000)

        def req(method, path, data=None):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            try:
                c.request(method, path, body=data)
                r = c.getresponse()
                return r.status, r.read()
            finally:
                c.close()

        st, out = req("PUT", "/tlsbucket")
        assert st == 200, out
        st, out = req("PUT", "/tlsbucket/obj", body)
        assert st == 200, out
        st, out = req("GET", "/tlsbucket/obj")
        assert st == 200 and out == body, (st, len(out))
        # the gateway's handles did TLS handshakes with the node
        r = tls_cli(pki, node, "stat", cert=pki.client, key=pki.client_key, timeout=30)
        hs = [line.split()[2] for line in r.out.decode().splitlines()
              if len(line.split()) == 3 and line.split()[1] == "tls_handshakes"]
        assert hs and int(hs[0]) >= 2, r.out
