"""The client and CLI across a ring of nodes on loopback: requests go to the owner
whichever node -r names, `lookup` names the owner, `routes` is the same table on
every node, `stat --all` covers the ring, and a node killed with SIGKILL costs only
its own keys, with a prompt, clear error.

Nodes join with --join; convergence is awaited by polling `stat` (ring_up == N on
every node) against a deadline, never by fixed sleeps."""
import concurrent.futures
import hashlib
import os
import time

import pytest

from conftest import run_cli, sanitized, wait_for

CONVERGE_DEADLINE = 60.0 if sanitized() else 30.0
WORKERS = 4


def start_ring(node_factory, n, extra=()):
    first = node_factory(*extra, name="n0")
    nodes = [first]
    for i in range(1, n):
        nodes.append(node_factory(*extra, "--join", first.addr, name="n%d" % i))
    wait_converged(nodes, n)
    return nodes


def stat_values(node, name):
    r = node.cli("stat", timeout=30)
    if r.rc != 0:
        return None
    for line in r.out.decode().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == name:
            return parts[2]
    return None


def wait_converged(nodes, up, what="ring_up"):
    def ok():
        return all(stat_values(n, what) == str(up) for n in nodes)
    wait_for(ok, CONVERGE_DEADLINE, interval=0.1,
             what="%s == %d on %s" % (what, up, ", ".join(n.addr for n in nodes)))


def parse_routes(out):
    """[(start, end, addr, down)] from `routes` output."""
    rows = []
    for line in out.decode().splitlines():
        parts = line.split()
        assert len(parts) in (3, 4), "bad routes line %r" % line
        assert len(parts[0]) == 128 and len(parts[1]) == 128, line
        rows.append((int(parts[0], 16), int(parts[1], 16), parts[2],
                     len(parts) == 4 and parts[3] == "down"))
    return rows


def owner_of(key, routes):
    kid = int.from_bytes(hashlib.sha512(key.encode()).digest(), "big")
    for start, end, addr, _ in routes:
        if start <= kid <= end:
            return addr
    raise AssertionError("no range covers %r" % key)


def check_partition(routes):
    """Ranges cover [0, 2^512) in order with no gaps or overlaps."""
    assert routes[0][0] == 0
    assert routes[-1][1] == (1 << 512) - 1
    for a, b in zip(routes, routes[1:]):
        assert b[0] == a[1] + 1, "gap or overlap between %x and %x" % (a[1], b[0])


def pmap(fn, items):
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as ex:
        return list(ex.map(fn, items))


def value(k):
    return ("value of %s " % k).encode() * 3


def put_get_all(nodes, keys):
    """Write every key through nodes[0], read each back through every other node."""
    writer = nodes[0]

    def put(k):
        r = writer.cli("put", k, input=value(k), timeout=60)
        return k, r
    for k, r in pmap(put, keys):
        assert r.rc == 0, "put %s via %s: %r" % (k, writer.addr, r)
    for reader in nodes[1:]:
        def get(k, reader=reader):
            return k, reader.cli("get", k, timeout=60)
        for k, r in pmap(get, keys):
            assert r.rc == 0, "get %s via %s: %r" % (k, reader.addr, r)
            assert r.out == value(k), "get %s via %s: wrong bytes" % (k, reader.addr)


def lookup_owners(nodes, keys, routes):
    def lookup(i_k):
        i, k = i_k
        return k, nodes[i % len(nodes)].cli("lookup", k, timeout=60)
    owners = {}
    for k, r in pmap(lookup, list(enumerate(keys))):
        assert r.rc == 0, "lookup %s: %r" % (k, r)
        lines = r.out.decode().splitlines()
        assert lines, r
        holder = lines[0].split()[0]
        assert holder == owner_of(k, routes), \
            "%s is held by %s, the ring gives it to %s" % (k, holder, owner_of(k, routes))
        owners[k] = holder
    return owners


@pytest.mark.cost(12, sanitized=50)
def test_three_nodes(node_factory, tmp_path):
    nodes = start_ring(node_factory, 3)
    addrs = {n.addr for n in nodes}

    # routes: every node shows the same table, 3 distinct owners, covering the ring
    tables = []
    for n in nodes:
        r = n.cli("routes")
        assert r.rc == 0, r
        tables.append(r.out)
    assert tables[0] == tables[1] == tables[2], "nodes disagree on the ring"
    routes = parse_routes(tables[0])
    check_partition(routes)
    assert {a for _, _, a, _ in routes} == addrs
    assert not any(d for *_, d in routes)

    # 1000 keys through A, read back through B and C; lookup names each owner
    keys = ["ring key %d/ü" % i for i in range(1000)]
    put_get_all(nodes, keys)
    owners = lookup_owners(nodes, keys, routes)
    per_node = {a: sum(1 for o in owners.values() if o == a) for a in addrs}
    assert all(c > 0 for c in per_node.values()), per_node

    # every node stored only its own keys
    for n in nodes:
        objs = int(stat_values(n, "objects"))
        assert objs == per_node[n.addr], (n.addr, objs, per_node)

    # stat --all: 3 nodes, from any node
    r = nodes[1].cli("stat", "--all")
    assert r.rc == 0, r
    seen = {line.split()[0] for line in r.out.decode().splitlines() if line.strip()}
    assert seen == addrs, seen

    # a chunked object (three 8 MiB chunks) through A, read through C
    big = os.urandom(17 << 20)
    src = tmp_path / "big"
    src.write_bytes(big)
    assert nodes[0].cli("put", "big object", str(src)).rc == 0
    dst = tmp_path / "big.out"
    r = nodes[2].cli("get", "big object", str(dst))
    assert r.rc == 0, r
    assert dst.read_bytes() == big
    r = nodes[1].cli("lookup", "big object")
    assert r.rc == 0 and r.out.split()[0].decode() == owner_of("big object", routes)

    # the integrity tool through B, and deletes through C
    r = nodes[1].cli("check", "--count", "10", "--max-size", "200000", timeout=600)
    assert r.rc == 0, r
    for k in keys[:50]:
        assert nodes[2].cli("del", k).rc == 0
        assert nodes[0].cli("get", k).rc == 1


@pytest.mark.cost(4, sanitized=9)
def test_kill_one_node(node_factory):
    nodes = start_ring(node_factory, 3)
    routes = parse_routes(nodes[0].cli("routes").out)
    keys = ["kill test %d" % i for i in range(150)]
    for k in keys:
        assert nodes[0].cli("put", k, input=value(k)).rc == 0
    victim = nodes[2]
    victim.kill()
    alive = nodes[:2]
    dead_keys = [k for k in keys if owner_of(k, routes) == victim.addr]
    live_keys = [k for k in keys if owner_of(k, routes) != victim.addr]
    assert dead_keys and live_keys

    # at once (before the ring notices): the others' keys work, the dead node's fail
    # promptly with an error naming it
    for i, k in enumerate(live_keys[:30]):
        r = alive[i % 2].cli("get", k, timeout=30)
        assert r.rc == 0 and r.out == value(k), (k, r)
    for k in dead_keys[:10]:
        t = time.monotonic()
        r = alive[0].cli("get", k, timeout=30)
        took = time.monotonic() - t
        assert r.rc == 3, (k, r)
        lines = [l for l in r.err.splitlines() if l.strip()]
        assert len(lines) == 1 and victim.addr in lines[0], r.err
        assert took < 5, "failing %s took %.1f s" % (k, took)

    # once the ring marks it down: routes say so, requests fail fast as "down"
    wait_converged(alive, 1, what="ring_down")
    for n in alive:
        rows = parse_routes(n.cli("routes").out)
        assert {a for _, _, a, d in rows if d} == {victim.addr}
    for k in dead_keys[:10]:
        t = time.monotonic()
        r = alive[1].cli("get", k, timeout=30)
        assert r.rc == 3 and "down" in r.err and victim.addr in r.err, r
        assert time.monotonic() - t < 5
    for i, k in enumerate(live_keys):
        r = alive[i % 2].cli("get", k, timeout=30)
        assert r.rc == 0 and r.out == value(k), (k, r)
        if i % 10 == 0:
            assert alive[i % 2].cli("put", k, input=value(k)).rc == 0

    # stat --all: the live nodes' counters and one error line for the dead one
    r = alive[0].cli("stat", "--all")
    assert r.rc == 3
    seen = {line.split()[0] for line in r.out.decode().splitlines() if line.strip()}
    assert seen == {n.addr for n in alive}
    err = [l for l in r.err.splitlines() if l.strip()]
    assert len(err) == 1 and victim.addr in err[0], r.err


@pytest.mark.cost(60)
@pytest.mark.skipif(sanitized(), reason="10 sanitized nodes on 2 cores: too slow to be useful")
def test_ten_nodes(node_factory):
    """10k keys written through one node of ten and read back through the nine
    others in turn (each key through one of them: 90k CLI runs would take minutes);
    every node stores exactly the keys the ring gives it (its object count), and
    lookup names the owner (a sample of 1000)."""
    nodes = start_ring(node_factory, 10)
    routes = parse_routes(nodes[3].cli("routes").out)
    check_partition(routes)
    assert len({a for _, _, a, _ in routes}) == 10
    keys = ["ten %d" % i for i in range(int(os.environ.get("RING_TEN_KEYS", "10000")))]
    t = time.monotonic()
    writer, readers = nodes[0], nodes[1:]
    for k, r in pmap(lambda k: (k, writer.cli("put", k, input=value(k), timeout=60)), keys):
        assert r.rc == 0, "put %s via %s: %r" % (k, writer.addr, r)

    def get(i_k):
        i, k = i_k
        n = readers[i % len(readers)]
        return k, n, n.cli("get", k, timeout=60)
    for k, n, r in pmap(get, list(enumerate(keys))):
        assert r.rc == 0 and r.out == value(k), "get %s via %s: %r" % (k, n.addr, r)
    expect = {n.addr: 0 for n in nodes}
    for k in keys:
        expect[owner_of(k, routes)] += 1
    for n in nodes:
        assert int(stat_values(n, "objects")) == expect[n.addr], (n.addr, expect)
    lookup_owners(nodes, keys[::max(1, len(keys) // 1000)], routes)
    print("10 nodes, %d keys: put, get, 1000 lookups in %.1f s"
          % (len(keys), time.monotonic() - t))
