"""test_http.py - the HTTP endpoint of ellipticsd (--http): /metrics checked by
promtool and by a strict parser of the Prometheus text format here, counters that
move with traffic and agree with `elliptics stat`, the ring page rendered by headless
Chromium against a 3-node cluster before and after a node is killed, and hostile
HTTP clients (oversized heads, bad lengths, garbage, slow clients, too many
connections) refused with an error and a closed connection while the node stays up."""
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from conftest import free_port, port_accepts, sanitized, wait_for

FAST = ("--heartbeat-ms", "200", "--fail-after-ms", "1500")
DEADLINE = 90 if sanitized() else 45


def http_node(node_factory, *extra, name=None):
    """A node with --http on a free port; returns (node, "127.0.0.1:PORT")."""
    for _ in range(5):
        port = free_port()
        addr = "127.0.0.1:%d" % port
        try:
            n = node_factory("--http", addr, *extra, name=name)
        except AssertionError as e:
            if "in use" in str(e).lower():
                continue
            raise
        wait_for(lambda: port_accepts(port), DEADLINE, what="the HTTP port to open")
        return n, addr
    raise AssertionError("no free HTTP port")


def get(addr, path, timeout=30):
    """(status, headers, body bytes) of GET http://addr/path."""
    try:
        with urllib.request.urlopen("http://%s%s" % (addr, path), timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


# ---- a strict parser of the Prometheus text exposition format 0.0.4 ----

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
SAMPLE = re.compile(r"^(%s)(?:\{((?:%s)(?:,%s)*)?\})? (\S+)(?: (-?\d+))?$" % (NAME, LABEL, LABEL))


def parse_value(v):
    if v in ("+Inf", "-Inf", "NaN"):
        return float(v.replace("Inf", "inf").replace("NaN", "nan"))
    assert re.match(r"^-?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$", v), "bad sample value %r" % v
    return float(v)


def parse_metrics(text):
    """{family: {"type", "help", "samples": [(name, {labels}, value)]}}, asserting
    every rule of the format a scraper relies on."""
    assert text.endswith("\n"), "exposition must end with a newline"
    fams = {}
    cur = None
    seen_series = set()
    for ln, line in enumerate(text.split("\n")[:-1], 1):
        assert line, "line %d: empty line" % ln
        if line.startswith("#"):
            m = re.match(r"^# (HELP|TYPE) (%s) (.+)$" % NAME, line)
            assert m, "line %d: bad comment %r" % (ln, line)
            kind, name, rest = m.groups()
            f = fams.setdefault(name, {"type": None, "help": None, "samples": []})
            if kind == "HELP":
                assert f["help"] is None, "line %d: second HELP for %s" % (ln, name)
                assert not f["samples"], "line %d: HELP after samples of %s" % (ln, name)
                f["help"] = rest
            else:
                assert f["type"] is None, "line %d: second TYPE for %s" % (ln, name)
                assert not f["samples"], "line %d: TYPE after samples of %s" % (ln, name)
                assert rest in ("counter", "gauge", "histogram", "summary", "untyped"), rest
                f["type"] = rest
            cur = name
            continue
        m = SAMPLE.match(line)
        assert m, "line %d: bad sample %r" % (ln, line)
        name, labels_s, value = m.group(1), m.group(2), m.group(len(m.groups()) - 1)
        labels = {}
        if labels_s:
            for k, v in re.findall(LABEL, labels_s):
                assert k not in labels, "line %d: label %s twice" % (ln, k)
                labels[k] = v
        fam = cur
        assert fam is not None and name in (fam, fam + "_bucket", fam + "_sum", fam + "_count",
                                             fam + "_total"), \
            "line %d: sample %s outside its family (%s)" % (ln, name, fam)
        f = fams[fam]
        assert f["type"] and f["help"], "line %d: %s has no TYPE/HELP before samples" % (ln, fam)
        if f["type"] in ("counter", "gauge"):
            assert name == fam, "line %d: %s in %s family %s" % (ln, name, f["type"], fam)
        key = (name, tuple(sorted(labels.items())))
        assert key not in seen_series, "line %d: duplicate series %s" % (ln, key)
        seen_series.add(key)
        f["samples"].append((name, labels, parse_value(value)))
    for name, f in fams.items():
        assert f["type"] and f["help"], "%s lacks TYPE or HELP" % name
        if f["type"] == "counter":
            assert name.endswith("_total"), "counter %s must end in _total" % name
            assert all(v >= 0 for _, _, v in f["samples"]), name
        else:
            assert not name.endswith("_total"), "%s %s must not end in _total" % (f["type"], name)
        if f["type"] == "histogram":
            check_histogram(name, f["samples"])
    return fams


def check_histogram(name, samples):
    groups = {}
    for n, labels, v in samples:
        rest = tuple(sorted((k, x) for k, x in labels.items() if k != "le"))
        g = groups.setdefault(rest, {"buckets": [], "sum": None, "count": None})
        if n == name + "_bucket":
            assert "le" in labels, "%s bucket without le" % name
            g["buckets"].append((parse_value(labels["le"]), v))
        elif n == name + "_sum":
            g["sum"] = v
        elif n == name + "_count":
            g["count"] = v
        else:
            raise AssertionError("%s: unexpected sample %s" % (name, n))
    for rest, g in groups.items():
        b = g["buckets"]
        assert b and b[-1][0] == math.inf, "%s%s: last bucket must be +Inf" % (name, rest)
        les = [x[0] for x in b]
        assert les == sorted(les) and len(set(les)) == len(les), "%s: le not increasing" % name
        counts = [x[1] for x in b]
        assert counts == sorted(counts), "%s%s: buckets not cumulative: %s" % (name, rest, counts)
        assert g["count"] == b[-1][1], "%s%s: _count != +Inf bucket" % (name, rest)
        assert g["sum"] is not None and g["sum"] >= 0, "%s%s: no _sum" % (name, rest)


def value(fams, name, **labels):
    fam = fams[name]
    for n, l, v in fam["samples"]:
        if n == name and all(l.get(k) == x for k, x in labels.items()):
            return v
    return None


def hist_count(fams, name, **labels):
    for n, l, v in fams[name]["samples"]:
        if n == name + "_count" and all(l.get(k) == x for k, x in labels.items()):
            return v
    return None


def scrape(addr):
    status, headers, body = get(addr, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4"), headers
    return body.decode("utf-8")


def promtool():
    p = shutil.which("promtool")
    if not p:
        pytest.skip("promtool is not installed: run scripts/deps.sh (Debian package prometheus)")
    return p


# ---- /metrics ----

def test_metrics_pass_promtool_and_strict_parser(node_factory, tmp_path):
    node, http = http_node(node_factory)
    src = tmp_path / "x.bin"
    src.write_bytes(os.urandom(3000))
    assert node.cli("put", "k", str(src)).rc == 0
    assert node.cli("get", "k", str(tmp_path / "out")).rc == 0
    assert node.cli("get", "missing", str(tmp_path / "out2")).rc == 1
    text = scrape(http)
    (tmp_path / "metrics.txt").write_text(text)
    p = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, "promtool check metrics:\n%s%s" % (p.stdout, p.stderr)
    assert not (p.stdout + p.stderr).strip(), "promtool lint findings:\n%s%s" % (p.stdout, p.stderr)
    fams = parse_metrics(text)
    for name in ("elliptics_requests_total", "elliptics_request_duration_seconds",
                 "elliptics_received_bytes_total", "elliptics_sent_bytes_total",
                 "elliptics_connections", "elliptics_io_queue_depth",
                 "elliptics_io_busy_seconds_total", "elliptics_backend_objects",
                 "elliptics_backend_object_bytes", "elliptics_backend_disk_bytes",
                 "elliptics_backend_disk_free_bytes", "elliptics_ring_members",
                 "elliptics_move_objects_total", "elliptics_move_bytes_total",
                 "elliptics_move_pending", "elliptics_http_requests_total"):
        assert name in fams, "missing metric %s" % name
    assert fams["elliptics_request_duration_seconds"]["type"] == "histogram"
    assert value(fams, "elliptics_requests_total", cmd="read", status="noent") == 1
    assert value(fams, "elliptics_ring_members", state="up") == 1
    assert value(fams, "elliptics_backend_objects") == 1


def test_real_prometheus_scrapes_the_node(node_factory, tmp_path):
    """A real Prometheus server, started here, scrapes /metrics: the target is up
    with no scrape error, and the series can be queried (histograms included)."""
    prom = shutil.which("prometheus")
    if not prom:
        pytest.skip("prometheus is not installed: run scripts/deps.sh (Debian package prometheus)")
    node, http = http_node(node_factory)
    for i in range(5):
        assert node.cli("put", "p%d" % i, input=b"x" * 100).rc == 0
    conf = tmp_path / "prometheus.yml"
    conf.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n"
                    "scrape_configs:\n  - job_name: elliptics\n    static_configs:\n"
                    "      - targets: ['%s']\n" % http)
    web = "127.0.0.1:%d" % free_port()
    log = open(tmp_path / "prometheus.log", "wb")
    p = subprocess.Popen([prom, "--config.file=" + str(conf),
                          "--storage.tsdb.path=" + str(tmp_path / "tsdb"),
                          "--web.listen-address=" + web], stdout=log, stderr=log,
                         stdin=subprocess.DEVNULL)

    def query(q):
        st, _, body = get(web, "/api/v1/query?query=" + urllib.request.quote(q), timeout=10)
        if st != 200:
            return None
        return json.loads(body)["data"]["result"]

    def target_up():
        try:
            st, _, body = get(web, "/api/v1/targets", timeout=10)
        except OSError:
            return False
        if st != 200:
            return False
        ts = json.loads(body)["data"]["activeTargets"]
        return ts and ts[0]["health"] == "up" and not ts[0]["lastError"] and ts[0]

    try:
        wait_for(target_up, 120, interval=0.5, what="Prometheus to scrape the node")
        r = wait_for(lambda: query('elliptics_requests_total{cmd="write",status="ok"}'), 60,
                     interval=0.5, what="the write counter in Prometheus")
        assert float(r[0]["value"][1]) == 5
        r = query('histogram_quantile(0.5, elliptics_request_duration_seconds_bucket{cmd="write"})')
        assert r and 0 < float(r[0]["value"][1]) <= 10
        r = query('elliptics_ring_members{state="up"}')
        assert r and float(r[0]["value"][1]) == 1
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(30)
        log.close()


def test_counters_move_with_traffic_and_match_stat(node_factory, tmp_path):
    node, http = http_node(node_factory)
    before = parse_metrics(scrape(http))
    n = 20
    src = tmp_path / "obj"
    src.write_bytes(os.urandom(10000))
    for i in range(n):
        assert node.cli("put", "key-%d" % i, str(src)).rc == 0
        assert node.cli("get", "key-%d" % i, str(tmp_path / "back")).rc == 0
    after = parse_metrics(scrape(http))

    def delta(name, **labels):
        return (value(after, name, **labels) or 0) - (value(before, name, **labels) or 0)

    assert delta("elliptics_requests_total", cmd="write", status="ok") == n
    assert delta("elliptics_requests_total", cmd="read", status="ok") == n
    assert hist_count(after, "elliptics_request_duration_seconds", cmd="write") - \
        hist_count(before, "elliptics_request_duration_seconds", cmd="write") == n
    assert delta("elliptics_received_bytes_total") >= n * 10000
    assert delta("elliptics_sent_bytes_total") >= n * 10000
    assert delta("elliptics_backend_objects") == n
    assert delta("elliptics_backend_object_bytes") == n * 10000
    assert delta("elliptics_connections_accepted_total") >= 2 * n
    assert delta("elliptics_io_busy_seconds_total") > 0
    assert delta("elliptics_http_requests_total") >= 1

    # `elliptics stat` shows the same numbers (nothing but STAT runs in between; the
    # STAT request itself is counted only after its reply is built).
    st = node.stat()
    now = parse_metrics(scrape(http))
    assert int(st["cmd_write"]) == value(now, "elliptics_requests_total", cmd="write", status="ok")
    assert int(st["cmd_read"]) == value(now, "elliptics_requests_total", cmd="read", status="ok")
    assert int(st["objects"]) == value(now, "elliptics_backend_objects")
    assert int(st["object_bytes"]) == value(now, "elliptics_backend_object_bytes")
    assert int(st["ring_up"]) == value(now, "elliptics_ring_members", state="up")
    hist = dict(kv.split("=") for kv in st["cmd_write_hist_us"].split(","))
    assert int(hist["inf"]) == hist_count(now, "elliptics_request_duration_seconds", cmd="write")
    assert int(st["http_requests"]) <= value(now, "elliptics_http_requests_total")
    assert st["http_listen"] == http


def test_http_flag_in_config_file_and_port_in_use(node_factory, tmp_path):
    port = free_port()
    conf = tmp_path / "node.conf"
    conf.write_text("http = 127.0.0.1:%d\n" % port)
    node = node_factory("--config", str(conf))
    wait_for(lambda: port_accepts(port), DEADLINE, what="the HTTP port from the config file")
    assert get("127.0.0.1:%d" % port, "/metrics")[0] == 200
    # A second node asked to serve HTTP on the same port refuses to start.
    other = node_factory("--http", "127.0.0.1:%d" % port, start=False, port=free_port())
    with pytest.raises(AssertionError):
        other.start()
    other.killed = True  # it was meant to fail
    assert other.proc.returncode == 3, other.log_tail()
    assert "cannot listen for HTTP on 127.0.0.1:%d" % port in other.log()
    assert node.alive()


# ---- the ring page ----

def chromium():
    for name in ("chromium", "chromium-browser"):
        p = shutil.which(name)
        if p:
            return p
    pytest.skip("chromium is not installed: run scripts/deps.sh (Debian package chromium)")


def browse(url, tmp_path, shot):
    """Render url in headless Chromium: the DOM after the page's scripts ran (the
    virtual time budget lets its fetch of ring.json complete), and a screenshot."""
    out = {}
    for mode in ("dom", "shot"):
        profile = tempfile.mkdtemp(prefix="chromium-", dir=str(tmp_path))
        cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--user-data-dir=" + profile, "--virtual-time-budget=5000",
               "--hide-scrollbars", "--window-size=1280,800"]
        cmd += ["--dump-dom"] if mode == "dom" else ["--screenshot=" + str(shot)]
        p = subprocess.run(cmd + [url], capture_output=True, timeout=120, cwd=str(tmp_path))
        assert p.returncode == 0, "chromium failed: %s" % p.stderr.decode(errors="replace")[-2000:]
        out[mode] = p.stdout.decode("utf-8", "replace")
        shutil.rmtree(profile, ignore_errors=True)
    assert shot.exists() and shot.stat().st_size > 1000, "no screenshot"
    print("ring page screenshot: %s" % shot)
    return out["dom"]


def page_state(dom):
    m = re.search(r'<div id="summary" data-nodes="(\d+)" data-up="(\d+)" data-down="(\d+)" '
                  r'data-left="(\d+)"', dom)
    assert m, "no summary in the rendered page:\n%s" % dom[:3000]
    rows = re.findall(r'<tr class="node [a-z]+" data-addr="([^"]+)" data-state="([a-z]+)"', dom)
    return tuple(int(x) for x in m.groups()), dict(rows)


def ring_json(http):
    status, headers, body = get(http, "/ring.json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    return json.loads(body)


@pytest.mark.cost(7)
def test_ring_page_in_chromium_three_nodes_then_one_killed(node_factory, tmp_path):
    a, ha = http_node(node_factory, *FAST, name="a")
    b, hb = http_node(node_factory, *FAST, "--join", a.addr, name="b")
    c, hc = http_node(node_factory, *FAST, "--join", a.addr, "--zone", "rack-3", name="c")

    def ring_up(n):
        j = ring_json(ha)
        return j["counts"]["up"] == n and j

    j = wait_for(lambda: ring_up(3), DEADLINE, what="3 nodes up in a's ring.json")
    assert {n["addr"] for n in j["nodes"]} == {a.addr, b.addr, c.addr}
    assert abs(sum(n["share"] for n in j["nodes"]) - 1.0) < 1e-3
    assert all(len(n["ranges"]) == n["ids"] == 64 for n in j["nodes"])
    assert [n["zone"] for n in j["nodes"] if n["addr"] == c.addr] == ["rack-3"]
    # Per-node load and disk of every member, fetched by a from each over STAT.
    wait_for(lambda: all(n.get("reachable") and n.get("ops") is not None
                         for n in ring_json(ha)["nodes"]), DEADLINE,
             what="load figures of all 3 nodes")

    dom = browse("http://%s/" % ha, tmp_path, tmp_path / "ring-3-up.png")
    counts, rows = page_state(dom)
    assert counts == (3, 3, 0, 0), counts
    assert rows == {a.addr: "up", b.addr: "up", c.addr: "up"}, rows

    c.kill()
    wait_for(lambda: ring_json(ha)["counts"]["down"] == 1, DEADLINE,
             what="a to mark the killed node down")
    dom = browse("http://%s/ring" % ha, tmp_path, tmp_path / "ring-2-up-1-down.png")
    counts, rows = page_state(dom)
    assert counts == (3, 2, 1, 0), counts
    assert rows == {a.addr: "up", b.addr: "up", c.addr: "down"}, rows
    j = ring_json(ha)
    dead = [n for n in j["nodes"] if n["addr"] == c.addr][0]
    assert dead["state"] == "down" and dead["ops"] is None
    # The page's files are served from the binary, with the right types.
    for path, ctype in (("/ring.js", "text/javascript"), ("/ring.css", "text/css"),
                        ("/", "text/html")):
        status, headers, body = get(hb, path)
        assert status == 200 and headers["Content-Type"].startswith(ctype) and body


# ---- hostile and unusual clients ----

def raw(addr, data, timeout=20, shut=False):
    """Send bytes on a fresh connection; return everything read until the server
    closes it (raises if it does not close within timeout)."""
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=timeout)
    try:
        if data:
            s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
    finally:
        s.close()


def status_of(resp):
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", resp)
    assert m, "not an HTTP response: %r" % resp[:200]
    return int(m.group(1))


def test_hostile_requests_get_an_error_and_a_closed_connection(node_factory):
    node, http = http_node(node_factory)
    cases = [
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n", 431),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"PUT /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
        (b"PUT /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", 413),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"GET /metrics HTTP/3.0\r\nHost: x\r\n\r\n", 505),
        (b"GET /metrics HTTP/1.1\r\n\r\n", 400),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + os.urandom(64), 400),
        (b"\xfe" + random.Random(8).randbytes(3000), 400),
        (b"GET /metrics?" + random.Random(9).randbytes(3000), 400),
        (b"\x00" * 100, 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\n folded: y\r\n\r\n", 400),
        (b"PUT /ring.json HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789", 405),
        # Other paths are the S3 gateway's (anonymous from loopback here): a PUT into
        # a bucket that does not exist is refused before its body is read.
        (b"PUT /nowhere/key HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789", 404),
    ]
    for data, want in cases:
        resp = raw(http, data)
        assert status_of(resp) == want, (data[:80], resp[:200])
        assert b"Connection: close" in resp
    # Garbage on the first line is refused at once, not after a timeout.
    t0 = time.monotonic()
    resp = raw(http, b"\x01\x02\x03 garbage")
    assert status_of(resp) == 400 and time.monotonic() - t0 < 5
    # A client that sends half a head and closes: nothing to answer.
    assert raw(http, b"GET /metrics HTTP/1.1\r\nHo", shut=True) == b""
    # Still serving, both protocols.
    assert get(http, "/metrics")[0] == 200
    assert node.cli("stat").rc == 0
    fams = parse_metrics(scrape(http))
    assert value(fams, "elliptics_http_errors_total") >= len(cases)


def test_keep_alive_pipelining_and_bodies(node_factory):
    node, http = http_node(node_factory)
    host, port = http.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=20) as s:
        f = s.makefile("rb")

        def response():
            line = f.readline()
            status = int(line.split()[1])
            headers = {}
            while True:
                h = f.readline()
                if h in (b"\r\n", b""):
                    break
                k, v = h.decode().split(":", 1)
                headers[k.strip().lower()] = v.strip()
            body = f.read(int(headers.get("content-length", "0")))
            return status, headers, body

        # Several requests on one connection, some pipelined in one send, a 404 and
        # a 405 among them (they keep the connection), a body sent with GET (read
        # and dropped), chunked included.
        s.sendall(b"GET /ring.json HTTP/1.1\r\nHost: x\r\n\r\n")
        st, hd, body = response()
        assert st == 200 and json.loads(body)["counts"]["nodes"] == 1
        s.sendall(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                  b"GET /ring.json HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"5\r\nhello\r\n0\r\n\r\n")
        st, hd, body = response()
        assert st == 404 and hd.get("connection") != "close"
        st, hd, _ = response()
        assert st == 405 and hd["allow"] == "GET, HEAD"
        # HEAD: the length of the body it would have, and no body.
        line = f.readline()
        assert line.startswith(b"HTTP/1.1 200")
        while f.readline() not in (b"\r\n", b""):
            pass
        st, hd, body = response()
        assert st == 200 and body.startswith(b"# HELP")
        st, hd, body = response()
        assert st == 200 and b'"counts"' in body
        # HEAD of an unknown path: the 404's head, no body; the connection goes on.
        s.sendall(b"HEAD /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        assert f.readline().startswith(b"HTTP/1.1 404")
        while f.readline() not in (b"\r\n", b""):
            pass
        # Expect: 100-continue gets its interim answer before the body is sent.
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        assert f.readline() == b"HTTP/1.1 100 Continue\r\n" and f.readline() == b"\r\n"
        s.sendall(b"abc")
        st, hd, body = response()
        assert st == 200
        # Connection: close is honoured.
        s.sendall(b"GET /ring.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        st, hd, body = response()
        assert st == 200 and hd["connection"] == "close"
        assert f.read() == b""


@pytest.mark.cost(13)
def test_slow_clients_are_bounded(node_factory):
    node, http = http_node(node_factory)
    host, port = http.rsplit(":", 1)
    # A slow but honest client (a byte every 50 ms, well within the 10 s head
    # deadline) is served.
    req = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=30) as s:
        for i in range(len(req)):
            s.sendall(req[i:i + 1])
            time.sleep(0.05)
        resp = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            resp += chunk
        assert status_of(resp) == 200
    # Slowloris: many connections that start a head and stall. Others are served
    # meanwhile; the stalled ones get 408 and are closed after the head deadline.
    stalled = []
    for _ in range(40):
        s = socket.create_connection((host, int(port)), timeout=60)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        stalled.append(s)
    t0 = time.monotonic()
    assert get(http, "/metrics", timeout=10)[0] == 200
    assert time.monotonic() - t0 < 5
    for s in stalled:
        resp = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            resp += chunk
        assert status_of(resp) == 408
        s.close()
    assert time.monotonic() - t0 < 45
    # More stalled connections than the limit (256): the oldest stalled ones are
    # closed to admit new clients, so a scraper still gets through while they are
    # all held open.
    many = []
    try:
        for _ in range(300):
            s = socket.create_connection((host, int(port)), timeout=30)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            many.append(s)
        t0 = time.monotonic()
        fams = parse_metrics(scrape(http))
        assert time.monotonic() - t0 < 10
        assert value(fams, "elliptics_http_connections_evicted_total") >= 300 - 256
        assert value(fams, "elliptics_http_connections") <= 256
    finally:
        for s in many:
            s.close()
    wait_for(lambda: get(http, "/metrics")[0] == 200, DEADLINE, what="the endpoint after the flood")
    assert node.cli("stat").rc == 0


def test_sigterm_with_http_clients_connected(node_factory):
    node, http = http_node(node_factory)
    host, port = http.rsplit(":", 1)
    idle = socket.create_connection((host, int(port)), timeout=10)
    partial = socket.create_connection((host, int(port)), timeout=10)
    partial.sendall(b"GET /metrics HTTP/1.1\r\nHo")
    assert get(http, "/ring.json")[0] == 200  # the ring collector is running too
    t0 = time.monotonic()
    assert node.stop(signal.SIGTERM) == 0, node.log_tail()
    node.killed = True  # stopped here on purpose, and checked
    assert time.monotonic() - t0 < 15
    for s in (idle, partial):
        assert s.recv(100) == b""
        s.close()
