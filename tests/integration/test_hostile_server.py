"""The client facing a broken or hostile server: malformed, oversized, mismatched,
truncated or missing replies. The CLI must fail with exit 3 and one error line,
promptly, without crashing, hanging or allocating what the server claims."""
import os
import socket
import struct
import threading

import pytest

import proto
from conftest import RssSampler, run_cli, sanitized, ELLIPTICS

MiB = 1 << 20


class FakeServer:
    """Accepts connections on a free loopback port and answers every request with
    respond(hdr, payload) -> bytes (or None: close without answering; or ... : stay
    silent)."""

    def __init__(self, respond):
        self.respond = respond
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.conns = []
        self.t = threading.Thread(target=self._accept, daemon=True)
        self.t.start()

    def _accept(self):
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(30)
        try:
            while not self.stop.is_set():
                h, p = proto.recv_msg(c)
                out = self.respond(h, p)
                if out is None:
                    c.close()
                    return
                if out is Ellipsis:
                    continue
                c.sendall(out)
        except (OSError, proto.Closed, AssertionError):
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass

    def close(self):
        self.stop.set()
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass
        self.t.join(5)


def reply(h, status=0, payload=b"", trans=None, size=None, flags=proto.FLAG_REPLY, magic=proto.MAGIC,
          cmd=None):
    return proto.encode_hdr(h.cmd if cmd is None else cmd, len(payload) if size is None else size,
                            h.trans if trans is None else trans, flags, h.id, status, magic) + payload


def good_or(h, p, bad_for):
    """A correct answer to PING (connection set-up), the bad one for `bad_for` cmds."""
    if h.cmd == proto.CMD_PING:
        return reply(h)
    return bad_for(h, p)


SCENARIOS = {
    "close-at-once": lambda h, p: None,
    "bad-magic": lambda h, p: reply(h, magic=0xDEADBEEF),
    "wrong-trans": lambda h, p: good_or(h, p, lambda h, p: reply(h, trans=h.trans + 1000) + b""),
    "no-reply-flag": lambda h, p: good_or(h, p, lambda h, p: reply(h, flags=0)),
    "huge-read-reply": lambda h, p: good_or(h, p, lambda h, p: reply(h, size=1 << 63) + b"\0" * 100),
    "huge-stat-reply": lambda h, p: good_or(h, p, lambda h, p: reply(h, size=1 << 40) + b"x 1\n"),
    "truncated-reply": lambda h, p: good_or(h, p, lambda h, p: reply(h)[:50]),
    "short-io-attr": lambda h, p: good_or(h, p, lambda h, p: reply(h, payload=b"\0" * 20)),
    "io-size-lies": lambda h, p: good_or(h, p, lambda h, p: reply(
        h, payload=proto.encode_io(size=1 << 40, total_size=1 << 40) + b"abc")),
    "short-obj-info": lambda h, p: good_or(h, p, lambda h, p: reply(h, payload=b"\1" * 30)),
    "unknown-status": lambda h, p: good_or(h, p, lambda h, p: reply(h, status=-9999)),
    "positive-status": lambda h, p: good_or(h, p, lambda h, p: reply(h, status=12345)),
    "silent": lambda h, p: good_or(h, p, lambda h, p: Ellipsis),
}

# Scenarios where only the payload's shape is wrong (the framing is fine).
PAYLOAD_SHAPE = {"short-io-attr", "io-size-lies", "short-obj-info"}

COMMANDS = {
    "get": (["get", "k"], None),
    "put": (["put", "k", "-"], b"data" * 100),
    "del": (["del", "k"], None),
    "lookup": (["lookup", "k"], None),
    "stat": (["stat"], None),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_cli_against_hostile_server(scenario, command):
    srv = FakeServer(SCENARIOS[scenario])
    try:
        args, stdin = COMMANDS[command]
        r = run_cli(["--timeout", "1"] + args, remotes=[srv.addr], input=stdin, timeout=60)
    finally:
        srv.close()
    assert r.rc >= 0, "the CLI died of signal %d: %s" % (-r.rc, r.err[-2000:])
    if scenario in PAYLOAD_SHAPE and command != "get":
        # A status-0 reply whose payload this command does not use (DEL, STAT text,
        # a WRITE ack's obj_info, a LOOKUP's trailing address) may be accepted; it
        # must not crash or hang, and an error must still be one line.
        assert r.rc in (0, 3), "%s/%s: rc %d, stderr %r" % (scenario, command, r.rc, r.err)
    else:
        assert r.rc == 3, "%s/%s: rc %d, stderr %r" % (scenario, command, r.rc, r.err)
    if r.rc != 0:
        lines = [l for l in r.err.splitlines() if l.strip()]
        assert len(lines) == 1, "one error line expected: %r" % r.err
    if command == "get" and r.rc != 0:
        assert r.out == b"" or scenario in ("huge-read-reply", "io-size-lies"), \
            "bytes of a broken reply went to stdout"


def test_client_memory_bounded_by_claims():
    """A READ reply claiming 2^40 bytes and then trickling must not make the client
    allocate the claim."""
    def respond(h, p):
        if h.cmd == proto.CMD_PING:
            return reply(h)
        return reply(h, size=proto.IO_ATTR_SIZE + (1 << 40)) + proto.encode_io(size=1 << 40, total_size=1 << 40) \
            + b"z" * MiB
    srv = FakeServer(respond)
    import subprocess
    try:
        p = subprocess.Popen([ELLIPTICS, "--timeout", "1", "-r", srv.addr, "get", "k", "-"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        with RssSampler(p.pid) as s:
            err = p.stderr.read()
            p.wait(60)
    finally:
        srv.close()
    assert p.returncode == 3, (p.returncode, err)
    if not sanitized():
        assert s.peak < 64 * MiB, "client RSS %d MiB" % (s.peak // MiB)
