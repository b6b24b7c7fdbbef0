"""The `elliptics` command line: usage errors, --help, stat, routes, check, bench,
and how it reports an unreachable node."""
import json
import os
import re

import pytest

from conftest import ELLIPTICS, free_port, run_cli

BENCH_FIELDS = ("ops_per_sec", "mb_per_sec", "p50_us", "p99_us", "p999_us", "errors")


@pytest.mark.parametrize("args", [
    [],
    ["frobnicate"],
    ["put"],
    ["get"],
    ["del"],
    ["lookup"],
    ["del", "a", "b"],
    ["lookup", "a", "b"],
    ["get", "a", "b", "c"],
    ["put", "a", "b", "c"],
    ["stat", "--bogus"],
    ["bench", "--op", "nope"],
    ["bench", "--size", "abc"],
    ["bench", "--conns", "0"],
    ["check", "--count", "-5"],
    ["-r"],
    ["--no-such-option", "stat"],
])
def test_usage_errors(node, args):
    r = node.cli(*args)
    assert r.rc == 2, "%r: rc %d, stderr %r" % (args, r.rc, r.err)
    assert r.err.strip(), "%r: a usage error must print a message" % (args,)
    assert "usage" in r.err.lower() or "elliptics" in r.err.lower(), r.err


def test_help():
    r = run_cli(["--help"])
    assert r.rc == 0, r
    text = (r.out.decode() + r.err).lower()
    for word in ("put", "get", "del", "lookup", "stat", "routes", "check", "bench", "-r"):
        assert word in text, "--help does not mention %r" % word


def test_stat(node):
    r = node.cli("stat")
    assert r.rc == 0, r
    lines = [l for l in r.out.decode().splitlines() if l.strip()]
    assert lines
    assert any(node.addr in l for l in lines), "stat should name the node it describes"


def test_stat_json(node):
    assert node.cli("put", "s", input=b"x").rc == 0
    r = node.cli("stat", "--json")
    assert r.rc == 0, r
    doc = json.loads(r.out)
    assert isinstance(doc, (dict, list)) and doc
    assert node.addr in r.out.decode()


def test_routes(node):
    r = node.cli("routes")
    assert r.rc == 0, r
    lines = [l for l in r.out.decode().splitlines() if l.strip()]
    assert len(lines) == 1, "a single node owns one range: %r" % lines
    assert node.addr in lines[0]


def test_check(node):
    r = node.cli("check", timeout=600)
    assert r.rc == 0, r


def test_check_options(node):
    r = node.cli("check", "--count", "20", "--max-size", "100000", "--seed", "5", timeout=600)
    assert r.rc == 0, r


def test_check_fails_against_dead_node():
    r = run_cli(["check"], remotes=["127.0.0.1:%d" % free_port()])
    assert r.rc not in (0, 1, 2), r


@pytest.mark.parametrize("op", ["put", "get", "mixed"])
def test_bench_json(node, op):
    r = node.cli("bench", "--op", op, "--size", "1024", "--conns", "8", "--count", "500", "--json",
                 timeout=600)
    assert r.rc == 0, r
    doc = json.loads(r.out)
    for f in BENCH_FIELDS:
        assert f in doc, "bench --json lacks %r: %r" % (f, doc)
        assert isinstance(doc[f], (int, float)), (f, doc[f])
    assert doc["errors"] == 0
    assert doc["ops_per_sec"] > 0 and doc["mb_per_sec"] > 0
    assert 0 < doc["p50_us"] <= doc["p99_us"] <= doc["p999_us"]


def test_bench_text(node):
    r = node.cli("bench", "--op", "put", "--size", "1024", "--conns", "4", "--count", "200")
    assert r.rc == 0, r
    text = r.out.decode().lower()
    for w in ("ops", "mb/s", "p50", "p99", "p999"):
        assert w in text, "bench output lacks %r: %r" % (w, text)


def test_unreachable_node(tmp_path):
    port = free_port()
    r = run_cli(["get", "k"], remotes=["127.0.0.1:%d" % port], timeout=120)
    assert r.rc == 3, r
    assert len([l for l in r.err.splitlines() if l.strip()]) == 1, r.err
    r = run_cli(["put", "k", "-"], remotes=["127.0.0.1:%d" % port], input=b"x", timeout=120)
    assert r.rc == 3, r


def test_second_remote_used_when_first_is_down(node):
    dead = "127.0.0.1:%d" % free_port()
    r = run_cli(["put", "failover", "-"], remotes=[dead, node.addr], input=b"ok")
    assert r.rc == 0, r
    r = run_cli(["get", "failover"], remotes=[dead, node.addr])
    assert r.rc == 0 and r.out == b"ok", r


def test_remote_from_environment(node):
    r = run_cli(["put", "envkey", "-"], input=b"env", env={"ELLIPTICS_REMOTE": node.addr})
    assert r.rc == 0, r
    r = run_cli(["get", "envkey"], env={"ELLIPTICS_REMOTE": node.addr})
    assert r.rc == 0 and r.out == b"env"


def test_bad_remote_address(node):
    r = run_cli(["stat"], remotes=["not an address::"])
    assert r.rc in (2, 3), r
    assert r.err.strip()
