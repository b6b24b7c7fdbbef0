"""netns.py - test hosts as Linux network namespaces on one machine.

Net(n) makes n "hosts" (namespaces) joined by a bridge that lives in a switch
namespace of its own, so the root namespace's network is never touched. Each host
gets 10.231.S.(i+1)/24 on eth0 (S random per Net, to keep parallel runs apart) and
its own loopback. Traffic stays inside these namespaces. Everything is removed by
close(), which also kills what still runs inside. Needs root and iproute2;
partition() also needs iptables."""
import os
import random
import shutil
import subprocess
import time


def available():
    """Why namespaces cannot be used here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if not shutil.which("ip"):
        return "needs iproute2"
    tag = "ellprobe%d" % os.getpid()
    r = subprocess.run(["ip", "netns", "add", tag], capture_output=True, text=True)
    if r.returncode != 0:
        return "cannot create network namespaces: %s" % r.stderr.strip()
    subprocess.run(["ip", "netns", "del", tag], capture_output=True)
    return None


def sh(*args, check=True, **kw):
    r = subprocess.run(list(args), capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(args), r.stderr.strip()))
    return r


class Net:
    def __init__(self, n):
        self.tag = "ell%d%d" % (os.getpid() % 10000, random.randrange(1000))
        self.subnet = random.randrange(1, 250)
        self.sw = self.tag + "sw"
        self.hosts = ["%sh%d" % (self.tag, i) for i in range(n)]
        self.procs = []
        try:
            sh("ip", "netns", "add", self.sw)
            self.ns(self.sw, "ip", "link", "add", "br0", "type", "bridge")
            self.ns(self.sw, "ip", "link", "set", "br0", "up")
            for i, h in enumerate(self.hosts):
                sh("ip", "netns", "add", h)
                a, b = "%sa%d" % (self.tag, i), "%sb%d" % (self.tag, i)
                sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
                sh("ip", "link", "set", a, "netns", h)
                sh("ip", "link", "set", b, "netns", self.sw)
                self.ns(h, "ip", "link", "set", a, "name", "eth0")
                self.ns(h, "ip", "addr", "add", self.ip(i) + "/24", "dev", "eth0")
                self.ns(h, "ip", "link", "set", "eth0", "up")
                self.ns(h, "ip", "link", "set", "lo", "up")
                self.ns(self.sw, "ip", "link", "set", b, "master", "br0")
                self.ns(self.sw, "ip", "link", "set", b, "up")
        except Exception:
            self.close()
            raise

    def ip(self, i):
        return "10.231.%d.%d" % (self.subnet, i + 1)

    def ns(self, name, *cmd, check=True):
        return sh("ip", "netns", "exec", name, *cmd, check=check)

    def run(self, i, *cmd, check=False, timeout=120, input=None):
        return subprocess.run(["ip", "netns", "exec", self.hosts[i]] + list(cmd),
                              capture_output=True, timeout=timeout, check=check, input=input)

    def popen(self, i, cmd, **kw):
        p = subprocess.Popen(["ip", "netns", "exec", self.hosts[i]] + list(cmd), **kw)
        self.procs.append(p)
        return p

    def wait_reachable(self, i, j, deadline=30):
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.run(i, "ping", "-c", "1", "-W", "1", self.ip(j)).returncode == 0:
                return True
        return False

    def partition(self, side_a, side_b):
        """Drop all traffic between the two groups of hosts (both directions)."""
        for a in side_a:
            for b in side_b:
                for x, y in ((a, b), (b, a)):
                    self.ns(self.hosts[x], "iptables", "-A", "INPUT", "-s", self.ip(y), "-j", "DROP")
                    self.ns(self.hosts[x], "iptables", "-A", "OUTPUT", "-d", self.ip(y), "-j", "DROP")

    def heal(self):
        for h in self.hosts:
            self.ns(h, "iptables", "-F", "INPUT", check=False)
            self.ns(h, "iptables", "-F", "OUTPUT", check=False)

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        for h in self.hosts + [self.sw]:
            # Anything still inside (a daemon a tool started) goes with it.
            r = sh("ip", "netns", "pids", h, check=False)
            for pid in r.stdout.split():
                try:
                    os.kill(int(pid), 9)
                except (OSError, ValueError):
                    pass
            sh("ip", "netns", "del", h, check=False)
