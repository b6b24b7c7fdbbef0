"""test_deploy.py - scripts/deploy, the seed's distributing script, installs and
starts ellipticsd over ssh on several hosts from one command and checks that they
joined. The hosts are network namespaces on this machine, each running its own
sshd on its own address; the tool runs from a fourth namespace, as an operator's
machine would."""
import os
import shutil
import subprocess
import time

import pytest

import netns
from conftest import BUILD, ROOT, wait_for

DEPLOY = os.path.join(ROOT, "scripts", "deploy")


@pytest.fixture
def net():
    why = netns.available()
    if why:
        pytest.skip(why)
    for tool in ("/usr/sbin/sshd", "ssh", "scp", "ssh-keygen"):
        if not shutil.which(tool) and not os.path.exists(tool):
            pytest.skip("needs %s (openssh-server, openssh-client)" % tool)
    n = netns.Net(4)
    try:
        yield n
    finally:
        n.close()


def start_sshd(net, i, d, key_pub):
    os.makedirs("/run/sshd", exist_ok=True)
    hostkey = os.path.join(d, "hostkey%d" % i)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", hostkey], check=True)
    auth = os.path.join(d, "authorized_keys")
    shutil.copy(key_pub, auth)
    os.chmod(auth, 0o600)
    cfg = os.path.join(d, "sshd%d.conf" % i)
    with open(cfg, "w") as f:
        f.write("ListenAddress %s:22\nHostKey %s\nPidFile %s\nAuthorizedKeysFile %s\n"
                "PermitRootLogin yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                "UsePAM no\nStrictModes no\nLogLevel ERROR\n"
                "Subsystem sftp /usr/lib/openssh/sftp-server\n"
                % (net.ip(i), hostkey, os.path.join(d, "sshd%d.pid" % i), auth))
    net.popen(i, ["/usr/sbin/sshd", "-D", "-e", "-f", cfg], stdout=subprocess.DEVNULL,
              stderr=open(os.path.join(d, "sshd%d.log" % i), "wb"))


def tcp_open(net, frm, to, port):
    r = net.run(frm, "bash", "-c", "exec 3<>/dev/tcp/%s/%d" % (net.ip(to), port))
    return r.returncode == 0


@pytest.mark.cost(11)
def test_deploy_three_hosts_from_one_command(net, tmp_path):
    d = str(tmp_path)
    key = os.path.join(d, "id")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    for i in (1, 2, 3):
        start_sshd(net, i, d, key + ".pub")
    for i in (1, 2, 3):
        wait_for(lambda: tcp_open(net, 0, i, 22), 30, what="sshd in host %d" % i)
    hosts = os.path.join(d, "hosts")
    with open(hosts, "w") as f:
        f.write("# three hosts, two zones\n")
        for i, zone in ((1, "a"), (2, "a"), (3, "b")):
            f.write("%s 1025 %s\n" % (net.ip(i), zone))
    inst = os.path.join(d, "inst-%h")  # the hosts share this machine's filesystem
    env = dict(os.environ, ELLIPTICS_BUILD=BUILD)
    base = ["ip", "netns", "exec", net.hosts[0], DEPLOY, "-i", key, "-d", inst]
    try:
        t0 = time.monotonic()
        r = subprocess.run(base + [hosts, "--", "--heartbeat-ms", "300"], capture_output=True,
                           text=True, timeout=300, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "3 nodes running and joined" in r.stdout, r.stdout
        print("\ndeployed 3 hosts in %.1f s: %s" % (time.monotonic() - t0, r.stdout.strip()))
        for i in (1, 2, 3):
            hd = inst.replace("%h", net.ip(i))
            assert os.path.exists(os.path.join(hd, "ellipticsd"))
            conf = open(os.path.join(hd, "ellipticsd.conf")).read()
            assert "listen = %s:1025" % net.ip(i) in conf
            assert ("join = %s:1025" % net.ip(1) in conf) == (i != 1)
        st = subprocess.run(base + ["--status", hosts], capture_output=True, text=True, timeout=120,
                            env=env)
        assert st.returncode == 0, st.stderr
        assert st.stdout.count("ring_up 3") == 3, st.stdout
    finally:
        s = subprocess.run(base + ["--stop", hosts], capture_output=True, text=True, timeout=120,
                           env=env)
    assert s.returncode == 0, s.stdout + s.stderr
    for i in (1, 2, 3):
        hd = inst.replace("%h", net.ip(i))
        assert not os.path.exists(os.path.join(hd, "pid"))
        log = open(os.path.join(hd, "log")).read()
        assert "stopped" in log, log[-2000:]
