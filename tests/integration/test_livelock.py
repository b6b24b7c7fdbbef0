"""The seed's livelock: two endpoints sending large messages to each other at the
same time through small socket buffers must both finish. The server's receive path
never waits on its sends, so a client that writes a long pipeline of large requests
while (or before) reading the large replies always completes."""
import hashlib
import socket
import threading
import time

import proto

MiB = 1 << 20
N = 50
SIZE = 4 * MiB
SMALL_BUF = 4096
# The client's send buffer is small too (64x smaller than a message), but not a
# single segment: with one segment in flight every send waits for the server's
# delayed ACK (40 ms) while the server has nothing to piggyback ACKs on, which
# turns 200 MiB into minutes without saying anything about livelock.
SMALL_SNDBUF = 65536
DEADLINE = 600.0


def obj(i):
    seed = hashlib.sha512(b"livelock-%d" % i).digest()
    return (seed * (SIZE // len(seed) + 1))[:SIZE]


def requests():
    """WRITE i (NEED_ACK) then READ i, for i in 0..N-1: replies to the READs are as
    large as the WRITEs, so both directions carry 4 MiB messages at once."""
    for i in range(N):
        id = proto.key_to_id("ll-%d" % i)
        yield proto.write_request(id, obj(i), 2 * i + 1, proto.FLAG_NEED_ACK)
        yield proto.read_request(id, 2 * i + 2)


def small_conn(node):
    s = proto.connect(node.addr, timeout=DEADLINE, rcvbuf=SMALL_BUF, sndbuf=SMALL_SNDBUF)
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) <= 4 * SMALL_BUF
    return s


def check_replies(replies):
    assert len(replies) == 2 * N, "got %d of %d replies" % (len(replies), 2 * N)
    for i in range(N):
        h, p = replies[2 * i + 1]
        assert h.status == 0 and h.cmd == proto.CMD_WRITE, h
        h, p = replies[2 * i + 2]
        assert h.status == 0 and h.cmd == proto.CMD_READ, h
        assert p[proto.IO_ATTR_SIZE:] == obj(i), "READ %d returned the wrong bytes" % i


def test_concurrent_writer_and_reader(node):
    s = small_conn(node)
    replies = {}
    errors = []
    go = threading.Event()

    def writer():
        go.wait()
        try:
            for r in requests():
                s.sendall(r)
        except Exception as e:  # noqa: BLE001
            errors.append("writer: %r" % e)

    def reader():
        go.wait()
        try:
            for _ in range(2 * N):
                h, p = proto.recv_msg(s)
                replies[h.trans] = (h, p)
        except Exception as e:  # noqa: BLE001
            errors.append("reader: %r" % e)

    threads = [threading.Thread(target=writer, daemon=True), threading.Thread(target=reader, daemon=True)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    go.set()
    for t in threads:
        t.join(max(1.0, DEADLINE - (time.monotonic() - t0)))
    hung = [t for t in threads if t.is_alive()]
    s.close()
    assert not hung, "livelock: %d of 2 threads still blocked after %.0f s (%d replies)" % (
        len(hung), DEADLINE, len(replies))
    assert not errors, errors
    check_replies(replies)


def test_send_everything_then_read(node):
    """One thread: the whole pipeline is sent before a single reply is read. The server
    has to keep receiving while its replies cannot be sent."""
    s = small_conn(node)
    # sendall() would block forever if the server stopped reading: the socket timeout
    # turns that into a failure instead of a hang.
    s.settimeout(DEADLINE / 2)
    try:
        for r in requests():
            s.sendall(r)
    except socket.timeout:
        raise AssertionError("the server stopped reading requests while its replies were "
                             "blocked: the client could not finish sending")
    replies = {}
    for _ in range(2 * N):
        h, p = proto.recv_msg(s)
        replies[h.trans] = (h, p)
    s.close()
    check_replies(replies)
