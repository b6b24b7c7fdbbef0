"""conftest.py - fixtures that run the real ellipticsd on free loopback ports in
temporary data dirs and drive the real `elliptics` CLI, as a user would.

Binaries come from $ELLIPTICS_BUILD (default build/, relative to the repo root).
Nodes run the storage engine named by $ELLIPTICS_BACKEND (default: the build's
default engine, as `ellipticsd --help` reports it); a test that passes its own
--backend keeps it. BACKEND is the engine in use, for engine-aware tests. Tests
that launch ellipticsd without Node (a config file only, scripts/cluster, network
namespaces) run the build's default engine.
Every node a test starts is stopped at teardown (SIGTERM, wait, SIGKILL), and a
node the test did not kill must exit 0 on SIGTERM. Its stderr log is attached
to the report of a failed test."""
import os
import signal
import socket
import subprocess
import sys
import time
from collections import namedtuple

import pytest

sys.path.insert(0, os.path.dirname(__file__))

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.abspath(os.path.join(ROOT, os.environ.get("ELLIPTICS_BUILD", "build")))
ELLIPTICSD = os.path.join(BUILD, "ellipticsd")
ELLIPTICS = os.path.join(BUILD, "elliptics")



def _default_backend():
    """The engine ellipticsd uses without --backend: '(default NAME)' in --help."""
    import re
    try:
        out = subprocess.run([ELLIPTICSD, "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"--backend NAME.*\(default (\w+)\)", out.stdout + out.stderr)
    return m.group(1) if m else None


# The engine nodes run: $ELLIPTICS_BACKEND, else the build's default. Passed as
# --backend only when set explicitly, so an unset variable tests the real default.
BACKEND_ENV = os.environ.get("ELLIPTICS_BACKEND") or None
BACKEND = BACKEND_ENV or _default_backend() or "file"

STARTUP_DEADLINE = 30.0  # a loaded 2-core machine running an ASan build can be slow
STOP_DEADLINE = 30.0
CLI_TIMEOUT = 300.0


def sanitized():
    """True when the binaries are an ASan/UBSan build (memory figures mean little)."""
    if "asan" in BUILD.split(os.sep):
        return True
    try:
        with open(ELLIPTICSD, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


def is_root():
    return os.geteuid() == 0


def wait_for(cond, timeout, interval=0.05, what="condition"):
    """Poll cond() until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


def parse_stat(out):
    """`elliptics stat` output (bytes) as {name: text value}: one "HOST:PORT name
    value" line per counter."""
    stats = {}
    for line in out.decode().splitlines():
        parts = line.split()
        if len(parts) == 3:
            stats[parts[1]] = parts[2]
    return stats


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def read_rss(pid):
    """(VmRSS, VmHWM) of a process in bytes, or None if it is gone."""
    vals = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    vals[k] = int(v.split()[0]) * 1024
    except (OSError, ValueError):
        return None
    return vals.get("VmRSS", 0), vals.get("VmHWM", 0)


def rss(pid):
    """Current resident set size in bytes (0 if the process is gone)."""
    r = read_rss(pid)
    return r[0] if r else 0


class RssSampler:
    """Samples a process's RSS in a background thread; .peak is the maximum of
    VmRSS and VmHWM seen (VmHWM catches peaks between samples)."""

    def __init__(self, pid, interval=0.02):
        import threading

        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            r = read_rss(self.pid)
            if r is None:
                return
            self.peak = max(self.peak, r[0], r[1])
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(10)


CliResult = namedtuple("CliResult", "rc out err")


def run_cli(args, remotes=(), input=None, timeout=CLI_TIMEOUT, env=None, stdout_file=None):
    """Run `elliptics [-r R]... ARGS`; returns CliResult(rc, stdout bytes, stderr str).
    input: bytes for stdin (None: stdin is /dev/null)."""
    cmd = [ELLIPTICS]
    for r in remotes:
        cmd += ["-r", r]
    cmd += [a if isinstance(a, (bytes, str)) else str(a) for a in args]
    e = dict(os.environ)
    e.pop("ELLIPTICS_REMOTE", None)
    if env:
        e.update(env)
    p = subprocess.run(
        cmd,
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        stdout=stdout_file if stdout_file is not None else subprocess.PIPE,
        stderr=subprocess.PIPE,
        timeout=timeout,
        env=e,
    )
    return CliResult(p.returncode, p.stdout if p.stdout is not None else b"",
                     p.stderr.decode("utf-8", "replace"))


class Node:
    """One ellipticsd process on a loopback port with its own data dir."""

    def __init__(self, tmp_path, name="node", extra=(), data=None, port=None, env=None):
        self.dir = tmp_path / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data = str(data) if data else str(self.dir / "data")
        os.makedirs(self.data, exist_ok=True)
        self.log_path = str(self.dir / "ellipticsd.log")
        self.extra = list(extra)
        self.port = port
        self.env = dict(os.environ, **env) if env else None  # e.g. test hooks
        self.proc = None
        self.killed = False  # the test killed it on purpose: no clean-exit check
        self.exit_codes = []

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    @property
    def pid(self):
        return self.proc.pid

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n=60):
        return "\n".join(self.log().splitlines()[-n:])

    @property
    def backend(self):
        """The engine this node runs (its own --backend, else the suite's)."""
        for i, a in enumerate(self.extra):
            if a == "--backend" and i + 1 < len(self.extra):
                return self.extra[i + 1]
        return BACKEND

    def cmdline(self):
        engine = []
        if BACKEND_ENV and "--backend" not in self.extra:
            engine = ["--backend", BACKEND_ENV]
        return [ELLIPTICSD, "--listen", self.addr, "--data", self.data] + engine + self.extra

    def start(self, extra=None):
        assert self.proc is None or self.proc.poll() is not None, "node already running"
        if extra is not None:
            self.extra = list(extra)
        # A free port can be taken by someone else between our probe and the bind:
        # try a few ports before giving up (only when the test did not fix one).
        fixed = self.port is not None
        for attempt in range(5):
            if not fixed:
                self.port = free_port()
            with open(self.log_path, "ab") as logf:
                logf.write(("--- start %s\n" % " ".join(self.cmdline())).encode())
                logf.flush()
                self.proc = subprocess.Popen(self.cmdline(), stdin=subprocess.DEVNULL,
                                             stdout=logf, stderr=logf, env=self.env)
            self.killed = False
            if self._wait_ready():
                return self
            if not fixed and "in use" in self.log_tail(5).lower():
                continue
            break
        raise AssertionError("ellipticsd failed to start (exit %s); log:\n%s"
                             % (self.proc.poll(), self.log_tail()))

    def _wait_ready(self):
        deadline = time.monotonic() + STARTUP_DEADLINE
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.exit_codes.append(self.proc.returncode)
                return False
            if port_accepts(self.port):
                return True
            time.sleep(0.05)
        self.kill()
        raise AssertionError("ellipticsd did not accept connections on %s within %.0f s; log:\n%s"
                             % (self.addr, STARTUP_DEADLINE, self.log_tail()))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, deadline=STOP_DEADLINE):
        """Stop with sig, wait; SIGKILL if it does not exit in time. Returns exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
                self.proc.wait(deadline)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
                self.exit_codes.append("hung")
                raise AssertionError("ellipticsd did not exit within %.0f s of signal %d; log:\n%s"
                                     % (deadline, sig, self.log_tail()))
        rc = self.proc.returncode
        self.exit_codes.append(rc)
        return rc

    def stop_clean(self):
        """SIGTERM and assert a clean exit (status 0)."""
        rc = self.stop(signal.SIGTERM)
        assert rc == 0, "ellipticsd exited with %s after SIGTERM; log:\n%s" % (rc, self.log_tail())
        return rc

    def kill(self, sig=signal.SIGKILL):
        """Kill on purpose (the test wants a crash)."""
        self.killed = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(STOP_DEADLINE)

    def restart(self, extra=None):
        if self.alive():
            self.stop_clean()
        return self.start(extra)

    def rss(self):
        return rss(self.pid)

    def cli(self, *args, **kw):
        return run_cli(args, remotes=[self.addr], **kw)

    def stat(self):
        """The node's `elliptics stat` counters, {name: text value}."""
        r = self.cli("stat")
        assert r.rc == 0, r
        return parse_stat(r.out)

    def istat(self, name):
        return int(self.stat()[name])


class NodeFactory:
    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.nodes = []

    def __call__(self, *extra, name=None, start=True, data=None, port=None, env=None):
        n = Node(self.tmp_path, name or "node%d" % len(self.nodes), extra, data=data, port=port,
                 env=env)
        self.nodes.append(n)
        return n.start() if start else n

    def teardown(self):
        errors = []
        for n in self.nodes:
            if n.proc is None:
                continue
            was_alive = n.alive()
            try:
                rc = n.stop(signal.SIGTERM)
            except AssertionError as e:
                errors.append(str(e))
                continue
            if n.killed:
                continue
            if was_alive and rc != 0:
                errors.append("ellipticsd %s exited with %s after SIGTERM (expected 0); log:\n%s"
                              % (n.addr, rc, n.log_tail()))
            elif not was_alive:
                errors.append("ellipticsd %s died during the test (exit %s); log:\n%s"
                              % (n.addr, rc, n.log_tail()))
        return errors


def _require_binaries():
    missing = [b for b in (ELLIPTICSD, ELLIPTICS) if not os.access(b, os.X_OK)]
    if missing:
        pytest.fail("binaries not built: %s (run make, or set ELLIPTICS_BUILD)" % ", ".join(missing))


@pytest.fixture
def node_factory(request, tmp_path):
    """Start nodes: node_factory('--fsync', 'always') -> started Node."""
    _require_binaries()
    f = NodeFactory(tmp_path)
    request.node._elliptics_nodes = f.nodes
    yield f
    errors = f.teardown()
    if errors:
        pytest.fail("\n\n".join(errors), pytrace=False)


@pytest.fixture
def node(node_factory):
    """A running node with the default backend and settings."""
    return node_factory()


@pytest.fixture
def cli(node):
    """cli('put', 'key', path) -> CliResult against the default node."""
    return node.cli


def pytest_report_header(config):
    return "elliptics: build %s, engine %s%s" % (
        BUILD, BACKEND, "" if BACKEND_ENV else " (the build's default)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for n in getattr(item, "_elliptics_nodes", []):
            rep.sections.append(("ellipticsd %s log (%s)" % (n.addr if n.port else "?", rep.when),
                                 n.log_tail(200)))


# ---- shards: the suite split over several pytest processes run side by side ------
#
# `--shard=K/N` runs the K-th of N parts (1-based). Tests go to the part with the
# least cost so far, costliest first (a test's cost is its @pytest.mark.cost(SECONDS),
# else DEFAULT_COST), and each part keeps the collection order. scripts/test runs one
# part per core: most of a test's time is waiting on daemons and sockets, so two
# parts on two cores finish in about 60% of the time of one.
DEFAULT_COST = 0.5  # the median test: a node or two started, a few CLI runs


def pytest_addoption(parser):
    parser.addoption("--shard", default=None, metavar="K/N",
                     help="run only part K of N of the collected tests (balanced by cost)")


def _sigterm(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def pytest_configure(config):
    config.addinivalue_line("markers", "cost(seconds, sanitized=seconds): the test's usual "
                            "run time (and under ASan), for --shard")
    # scripts/test stops the parts it runs in the background with SIGTERM: end the
    # run as Ctrl-C would, so every fixture's teardown still stops its nodes.
    signal.signal(signal.SIGTERM, _sigterm)
    config._elliptics_shard = None
    spec = config.getoption("--shard")
    if spec:  # checked before anything is collected
        try:
            k, n = (int(x) for x in spec.split("/"))
        except ValueError:
            raise pytest.UsageError("--shard wants K/N (e.g. 1/2), not %r" % spec)
        if not 1 <= k <= n:
            raise pytest.UsageError("--shard %s: K must be between 1 and N" % spec)
        config._elliptics_shard = (k, n)


def _cost(item):
    """@pytest.mark.cost(SECONDS, sanitized=SECONDS): the usual seconds of the test
    (under ASan when the build is sanitized and the mark says); 0 if it is skipped
    here (a skipif whose condition is already True)."""
    for m in item.iter_markers("skipif"):
        if m.args and m.args[0] is True:
            return 0.0
    m = item.get_closest_marker("cost")
    if not m or not m.args:
        return DEFAULT_COST
    if sanitized() and "sanitized" in m.kwargs:
        return float(m.kwargs["sanitized"])
    return float(m.args[0])


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected theirs
def pytest_collection_modifyitems(config, items):
    if not config._elliptics_shard:
        return
    k, n = config._elliptics_shard
    cost = [_cost(it) for it in items]
    load = [0.0] * n
    part = {}
    for i in sorted(range(len(items)), key=lambda i: -cost[i]):  # stable
        p = min(range(n), key=lambda j: load[j])
        part[i] = p
        load[p] += cost[i]
    keep = [it for i, it in enumerate(items) if part[i] == k - 1]
    drop = [it for i, it in enumerate(items) if part[i] != k - 1]
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
