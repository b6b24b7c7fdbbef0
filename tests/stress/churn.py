#!/usr/bin/python3
"""churn.py - hunt for races in ring changes: CLI readers and writers, each
through a random node of the original ring, while the ring changes; then every
acknowledged write must read back. Not part of scripts/test (a run takes 15-30 s
and a race shows up in a few runs in a hundred); run it after changing
membership, data movement or redirects, preferably on the ASan build, where the
windows are wider.

    tests/stress/churn.py                          # every scenario once, build/asan
    tests/stress/churn.py --runs 10 join leave     # chosen scenarios, 10 times each
    ELLIPTICS_BUILD=build tests/stress/churn.py    # the release build

Scenarios: join (a 4th, then a 5th node joins a 3-node ring), join2 (two join at
once), join3 (join with --copies 3), leave (a 4th node of four leaves), churn (two
join at once, then one of them leaves), kill3 (--copies 3: kill -9 a node of four,
restart it, `elliptics recover`). Exit status 1 if any read or write failed or an
acknowledged write did not read back; the failures are printed, and the nodes'
logs are kept in the temporary directory named."""
import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.join(ROOT, os.environ.get("ELLIPTICS_BUILD", os.path.join("build", "asan")))
ELLIPTICSD = os.path.join(BUILD, "ellipticsd")
ELLIPTICS = os.path.join(BUILD, "elliptics")
SCENARIOS = ("join", "join2", "join3", "leave", "churn", "kill3")
FAST = ["--heartbeat-ms", "200", "--fail-after-ms", "3000"]
LOAD_DEADLINE = 180.0  # seconds a run's load may last at most
CLI_TIMEOUT = 60


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(remote, *args, data=None):
    return subprocess.run([ELLIPTICS, "-r", remote] + list(args), input=data,
                          capture_output=True, timeout=CLI_TIMEOUT)


def stat(addr):
    r = cli(addr, "stat")
    out = {}
    for line in r.stdout.decode().splitlines():
        p = line.split()
        if len(p) == 3:
            out[p[1]] = p[2]
    return out


def wait(cond, timeout, what):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise RuntimeError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(0.05)


class Ring:
    def __init__(self, tmp, copies):
        self.tmp = tmp
        self.copies = ["--copies", str(copies)] if copies > 1 else []
        self.procs = {}

    def start(self, *extra, port=None):
        port = port or free_port()
        data = os.path.join(self.tmp, str(port))
        os.makedirs(data, exist_ok=True)
        with open(data + ".log", "ab") as log:
            p = subprocess.Popen([ELLIPTICSD, "--listen", "127.0.0.1:%d" % port, "--data", data] +
                                 FAST + self.copies + list(extra), stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=log)
        addr = "127.0.0.1:%d" % port
        self.procs[addr] = p

        def accepts():
            if p.poll() is not None:
                raise RuntimeError("ellipticsd %s exited with %s" % (addr, p.returncode))
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                return True
            except OSError:
                return False
        wait(accepts, 30, "%s to accept" % addr)
        return addr

    def kill(self, addr):
        self.procs[addr].kill()
        self.procs[addr].wait()

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def converged(nodes):
    st = [stat(n) for n in nodes]
    return all(int(s.get("ring_up", -1)) == len(nodes) for s in st) and \
        len({s.get("ring_digest") for s in st}) == 1


def moved(nodes):
    return all(int(stat(n).get("move_pending", 1)) == 0 for n in nodes)


def run(scenario, readers, writers):
    tmp = tempfile.mkdtemp(prefix="churn-")
    ring = Ring(tmp, 3 if scenario in ("join3", "kill3") else 1)
    failures, lost = [], []
    try:
        first = ring.start()
        nodes = [first] + [ring.start("--join", first)
                           for _ in range(3 if scenario in ("leave", "kill3") else 2)]
        wait(lambda: converged(nodes), 60, "the ring to converge")
        entry = list(nodes[:3])  # clients bootstrap through the first three only
        acked, lock = {}, threading.Lock()
        for i in range(300):
            k, v = "pre-%d" % i, os.urandom(512)
            r = cli(random.choice(nodes), "put", k, "-", data=v)
            if r.returncode != 0:
                raise RuntimeError("put %s before the change: %s" % (k, r.stderr.decode()))
            acked[k] = v
        stop = threading.Event()
        deadline = time.monotonic() + LOAD_DEADLINE
        ops = [0, 0]

        def reader():
            while not stop.is_set() and time.monotonic() < deadline:
                with lock:
                    k, v = random.choice(list(acked.items()))
                r = cli(random.choice(entry), "get", k, "-")
                ops[0] += 1
                if r.returncode != 0 or r.stdout != v:
                    failures.append(("get", k, r.returncode, r.stderr.decode().strip()))

        def writer(w):
            i = 0
            while not stop.is_set() and time.monotonic() < deadline:
                k, v = "live-%d-%d" % (w, i), os.urandom(512)
                i += 1
                r = cli(random.choice(entry), "put", k, "-", data=v)
                ops[1] += 1
                if r.returncode != 0:
                    failures.append(("put", k, r.returncode, r.stderr.decode().strip()))
                else:
                    with lock:
                        acked[k] = v

        threads = [threading.Thread(target=reader) for _ in range(readers)] + \
                  [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        try:
            wait(lambda: ops[0] >= 20 and ops[1] >= 10, 60, "load before the change")
            change(scenario, ring, nodes, first)
            wait(lambda: moved(nodes), 120, "data movement to finish")
            at = list(ops)
            wait(lambda: ops[0] >= at[0] + 20 and ops[1] >= at[1] + 10, 60, "load after the change")
        finally:
            stop.set()
            for t in threads:
                t.join(CLI_TIMEOUT + 10)
        for k, v in acked.items():
            r = cli(random.choice(nodes), "get", k, "-")
            if r.returncode != 0 or r.stdout != v:
                lost.append((k, r.returncode, r.stderr.decode().strip()))
        print("%-6s %4d gets %4d puts, %d failed, %d lost%s" %
              (scenario, ops[0], ops[1], len(failures), len(lost),
               "  (logs in %s)" % tmp if failures or lost else ""), flush=True)
        for f in failures[:5]:
            print("   failed:", f)
        for f in lost[:5]:
            print("   lost:", f)
        return not failures and not lost
    finally:
        ring.stop()
        if not failures and not lost:
            shutil.rmtree(tmp, ignore_errors=True)


def change(scenario, ring, nodes, first):
    if scenario in ("join", "join3"):
        nodes.append(ring.start("--join", first))
        wait(lambda: converged(nodes), 60, "the 4th node to converge")
        nodes.append(ring.start("--join", nodes[1]))
        wait(lambda: converged(nodes), 60, "the 5th node to converge")
    elif scenario in ("join2", "churn"):
        new = []
        ts = [threading.Thread(target=lambda s=seed: new.append(ring.start("--join", s)))
              for seed in (first, nodes[1])]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if len(new) != 2:
            raise RuntimeError("a joining node did not start")
        nodes.extend(new)
        wait(lambda: converged(nodes), 60, "both new nodes to converge")
        if scenario == "churn":
            wait(lambda: moved(nodes), 120, "the joins' data movement")
            leave(nodes, nodes[-1])
    elif scenario == "leave":
        leave(nodes, nodes[3])
    elif scenario == "kill3":
        victim = nodes[3]
        ring.kill(victim)
        wait(lambda: int(stat(first).get("ring_down", 0)) == 1, 60, "the node to be marked down")
        ring.start("--join", first, port=int(victim.rsplit(":", 1)[1]))
        wait(lambda: converged(nodes), 60, "the node to come back")
        r = cli(first, "recover")
        if r.returncode != 0:
            raise RuntimeError("recover: %s" % r.stderr.decode())


def leave(nodes, who):
    r = cli(who, "leave")
    if r.returncode != 0:
        raise RuntimeError("leave: %s" % r.stderr.decode())
    nodes.remove(who)
    wait(lambda: int(stat(who).get("objects", 1)) == 0 and
         all(int(stat(n).get("ring_left", 0)) == 1 for n in nodes), 120, "the node to hand over")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                    help="of: " + " ".join(SCENARIOS) + " (default: all)")
    ap.add_argument("--runs", type=int, default=1, help="runs of each scenario (default 1)")
    ap.add_argument("--readers", type=int, default=4)
    ap.add_argument("--writers", type=int, default=2)
    a = ap.parse_args()
    if not os.access(ELLIPTICSD, os.X_OK):
        sys.exit("churn: no %s (make%s first)" % (ELLIPTICSD, " SAN=1" if "asan" in BUILD else ""))
    unknown = [x for x in a.scenarios if x not in SCENARIOS]
    if unknown:
        ap.error("unknown scenario %s (of: %s)" % (", ".join(unknown), " ".join(SCENARIOS)))
    if a.runs < 1 or a.readers < 1 or a.writers < 1:
        sys.exit("churn: --runs, --readers and --writers must be at least 1")
    if "asan" in BUILD:
        os.environ.setdefault("ASAN_OPTIONS", "detect_leaks=0")
    bad = 0
    for _ in range(a.runs):
        for s in a.scenarios or SCENARIOS:
            bad += not run(s, a.readers, a.writers)
    total = a.runs * len(a.scenarios or SCENARIOS)
    print("churn: %d of %d runs clean" % (total - bad, total))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
