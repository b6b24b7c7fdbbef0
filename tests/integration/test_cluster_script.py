"""test_cluster_script.py - scripts/cluster brings up an N-node ring on this machine
and it converges: 10 nodes, and 50 nodes (time to converge and per-node memory are
printed for the record)."""
import os
import random
import re
import socket
import subprocess

import pytest

from conftest import BUILD, ROOT, sanitized

SCRIPT = os.path.join(ROOT, "scripts", "cluster")


def free_range(n):
    """A base port with n free ports after it, below the kernel's ephemeral range
    (32768 and up), where free_port() of a test running alongside picks its own."""
    for _ in range(50):
        base = random.randrange(20000, 32000 - n)
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    pytest.fail("no free port range of %d" % n)


def run(*args, timeout=300):
    env = dict(os.environ, ELLIPTICS_BUILD=BUILD)
    return subprocess.run([SCRIPT] + list(args), capture_output=True, text=True, timeout=timeout,
                          env=env)


@pytest.mark.parametrize("n", [10, 50])
def test_cluster_forms_and_converges(tmp_path, n):
    if n == 50 and sanitized():
        n = 20  # 50 sanitized daemons on 2 cores measure the sanitizer, not the ring
    d = str(tmp_path / "cluster")
    base = free_range(n)
    try:
        r = run("start", str(n), "-d", d, "-p", str(base), "--", "--heartbeat-ms", "500")
        assert r.returncode == 0, r.stderr + r.stdout
        m = re.search(r"(\d+) nodes up in .*, converged in ([0-9.]+) s", r.stdout)
        assert m and int(m.group(1)) == n, r.stdout
        st = run("status", "-d", d)
        assert st.returncode == 0, st.stderr
        lines = [l for l in st.stdout.splitlines() if l.startswith("node")]
        assert len(lines) == n
        assert all(l.split()[2] == "up" and l.split()[-1] == str(n) for l in lines), st.stdout
        rss = [int(l.split()[6]) for l in lines]
        print("\n%d-node ring converged in %s s; RSS per node: mean %.1f MiB, max %.1f MiB"
              % (n, m.group(2), sum(rss) / len(rss) / 1024, max(rss) / 1024))
    finally:
        s = run("stop", "-d", d)
        assert s.returncode == 0, s.stderr
