"""Connection timeouts: idle connections, slow senders (slowloris) and clients that
never read their replies are closed, while everybody else is served; a slow but
steady upload is not. And 2,000 idle connections plus one slowloris client plus
one never-reading client cost a bounded amount of memory while a normal client's
put/get goes on (the RSS is printed).

Timeouts are set to a few seconds by flags; every wait polls against a deadline."""
import os
import resource
import select
import socket
import time

import pytest

import proto
from conftest import sanitized, wait_for
from test_ring_client import stat_values

MiB = 1 << 20


def closed_by_server(s, deadline):
    """Wait until the server closes s (recv gives b"" or a reset); drains replies."""
    s.setblocking(False)
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        r, _, _ = select.select([s], [], [], 0.2)
        if not r:
            continue
        try:
            if not s.recv(1 << 20):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except BlockingIOError:
            continue
    return False


def healthy(node):
    data = os.urandom(5000)
    assert node.cli("put", "healthy", input=data).rc == 0
    r = node.cli("get", "healthy")
    assert r.rc == 0 and r.out == data


@pytest.mark.cost(5)
def test_idle_connection_is_closed_and_an_active_one_is_not(node_factory):
    node = node_factory("--idle-timeout-s", "3")
    idle = proto.connect(node.addr)
    active = proto.Conn(node.addr)
    t0 = time.monotonic()
    # The active one pings four times a second, for longer than the timeout: a
    # stall of this process under load must exceed ~2.7 s to make it look idle.
    while time.monotonic() - t0 < 5:
        t = active.next_trans()
        hdr, _ = active.call(proto.simple_request(proto.CMD_PING, b"\0" * 64, t), t)
        assert hdr.status == 0
        time.sleep(0.25)
    assert closed_by_server(idle, 10), "an idle connection was not closed"
    t = active.next_trans()
    hdr, _ = active.call(proto.simple_request(proto.CMD_PING, b"\0" * 64, t), t)
    assert hdr.status == 0
    active.close()
    assert int(stat_values(node, "conns_idle_closed")) >= 1


def test_slowloris_is_cut_off(node_factory):
    node = node_factory("--request-timeout-s", "2")
    s = proto.connect(node.addr)
    hdr = proto.simple_request(proto.CMD_PING, b"\0" * 64, 1)
    s.sendall(hdr[:10])
    t0 = time.monotonic()
    cut = False
    # One byte every half second: the header alone would take 43 s.
    for i in range(10, len(hdr)):
        try:
            s.sendall(hdr[i:i + 1])
        except (BrokenPipeError, ConnectionResetError):
            cut = True
            break
        healthy(node) if i % 4 == 0 else time.sleep(0.5)
        r, _, _ = select.select([s], [], [], 0)
        if r:
            try:
                if not s.recv(4096):
                    cut = True
                    break
            except ConnectionResetError:
                cut = True
                break
        if time.monotonic() - t0 > 20:
            break
    assert cut or closed_by_server(s, 10), "a slowloris client was not cut off"
    assert time.monotonic() - t0 < 20
    assert int(stat_values(node, "conns_slow_closed")) >= 1
    healthy(node)


def test_slow_but_steady_upload_is_not_cut_off(node_factory):
    node = node_factory("--request-timeout-s", "1")
    data = os.urandom(3 * MiB)
    id = proto.key_to_id("steady")
    body = proto.encode_io(size=len(data), total_size=len(data)) + data
    msg = proto.encode_hdr(proto.CMD_WRITE, len(body), 7, proto.FLAG_NEED_ACK, id) + body
    with proto.Conn(node.addr) as c:
        # About 1 MiB/s: 3 s for a request allowed 1 s + 1 s per 64 KiB.
        for off in range(0, len(msg), 256 * 1024):
            c.sock.sendall(msg[off:off + 256 * 1024])
            time.sleep(0.25)
        hdr, _ = c.recv()
        assert hdr.trans == 7 and hdr.status == 0, hdr
    r = node.cli("get", "--id", id.hex())
    assert r.rc == 0 and r.out == data


def test_never_reading_client_is_cut_off(node_factory):
    node = node_factory("--send-timeout-s", "2")
    data = os.urandom(MiB)
    assert node.cli("put", "popular", input=data).rc == 0
    id = proto.key_to_id("popular")
    s = proto.connect(node.addr, rcvbuf=4096)
    req = b"".join(proto.read_request(id, t) for t in range(1, 201))
    s.setblocking(False)
    sent = 0
    end = time.monotonic() + 30
    cut = False
    while time.monotonic() < end and sent < len(req):
        try:
            sent += s.send(req[sent:])
        except BlockingIOError:
            time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            cut = True
            break
    # It reads nothing; the server gives up on it after the send timeout.
    wait_for(lambda: int(stat_values(node, "conns_stalled_closed")) >= 1, 30,
             what="the never-reading client to be cut off")
    healthy(node)
    s.close()


@pytest.mark.cost(6)
def test_idle_crowd_slowloris_and_never_reader_with_bounded_memory(node_factory):
    want = 2000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, want + 1000), hard))
    node = node_factory("--request-timeout-s", "3", "--send-timeout-s", "3")
    data = os.urandom(MiB)
    assert node.cli("put", "popular", input=data).rc == 0
    base = node.rss()
    socks = []
    try:
        for _ in range(want):
            socks.append(proto.connect(node.addr))
        wait_for(lambda: int(stat_values(node, "conns_current")) >= want, 60,
                 what="%d connections accepted" % want)
        slow = proto.connect(node.addr)
        slow.sendall(proto.simple_request(proto.CMD_PING, b"\0" * 64, 1)[:20])
        reader = proto.connect(node.addr, rcvbuf=4096)
        reader.setblocking(False)
        req = b"".join(proto.read_request(proto.key_to_id("popular"), t) for t in range(1, 101))
        try:
            reader.send(req)
        except (BlockingIOError, BrokenPipeError, ConnectionResetError):
            pass
        t0 = time.monotonic()
        ops = 0
        while time.monotonic() - t0 < 6:
            healthy(node)
            ops += 1
        wait_for(lambda: int(stat_values(node, "conns_slow_closed")) >= 1 and
                 int(stat_values(node, "conns_stalled_closed")) >= 1, 30,
                 what="the slowloris and never-reading clients to be cut off")
        rss = node.rss()
        print("%d idle connections + slowloris + never-reader: RSS %.1f MiB (%.1f MiB before), "
              "%d put/get rounds by a normal client meanwhile"
              % (want, rss / MiB, base / MiB, ops))
        assert ops >= 3
        if not sanitized():
            assert rss - base < 128 * MiB, "RSS grew by %d MiB" % ((rss - base) // MiB)
        assert int(stat_values(node, "conns_current")) >= want  # the idle ones stay
    finally:
        for s in socks:
            s.close()


def test_request_memory_is_bounded_across_connections(node_factory, tmp_path):
    """12 connections each start a 4 MiB WRITE and stall after 64 KiB: the node
    charges request payloads against --max-request-memory (16 MiB) and stops
    reading connections once over it, so it holds the limit plus at most one more
    request; when the senders go on, memory comes back and every paused connection
    is read again: all 12 writes complete, byte for byte."""
    import threading
    import urllib.request
    from conftest import free_port
    MiB = 1 << 20
    hport = free_port()
    node = node_factory("--max-request-memory", "16M", "--max-payload", "5M",
                        "--http", "127.0.0.1:%d" % hport)

    def metric(name):
        body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % hport, timeout=30).read()
        for line in body.decode().splitlines():
            if line.startswith(name + " "):
                return int(float(line.split()[1]))
        raise AssertionError("no %s in /metrics" % name)

    datas = [os.urandom(4 * MiB) for _ in range(12)]
    conns = []
    try:
        for i, d in enumerate(datas):
            s = proto.connect(node.addr)
            req = proto.write_request(proto.key_to_id("mem%d" % i), d, i + 1)
            s.sendall(req[:proto.HDR_SIZE + proto.IO_ATTR_SIZE + 64 * 1024])
            conns.append((s, req))
        wait_for(lambda: metric("elliptics_request_memory_pauses_total") >= 1, 60,
                 what="connections paused for request memory")
        held = metric("elliptics_request_memory_bytes")
        print("request memory held with 12 stalled 4 MiB writes: %.1f MiB (limit 16 MiB)"
              % (held / MiB))
        assert 16 * MiB <= held <= 16 * MiB + 4 * MiB + 4096, held
        # The senders go on: the paused connections must all be read again.
        errs = []

        def finish(s, req):
            try:
                s.sendall(req[proto.HDR_SIZE + proto.IO_ATTR_SIZE + 64 * 1024:])
                hdr, _ = proto.recv_msg(s)
                if hdr.status != 0:
                    errs.append(hdr.status)
            except Exception as e:  # noqa: BLE001 - reported below
                errs.append(repr(e))

        ts = [threading.Thread(target=finish, args=c) for c in conns]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        assert not any(t.is_alive() for t in ts), "a write never completed"
        assert not errs, errs
        wait_for(lambda: metric("elliptics_request_memory_bytes") == 0, 30,
                 what="request memory back to 0")
    finally:
        for s, _ in conns:
            s.close()
    for i, d in enumerate(datas):
        r = node.cli("get", "mem%d" % i)
        assert r.rc == 0 and r.out == d, "mem%d" % i
