"""The `ellipticsd` command line: flags, --help, the config file, startup log line,
bad arguments."""
import os
import subprocess

import pytest

from conftest import ELLIPTICSD, free_port, port_accepts, wait_for

FLAGS = ["--listen", "--data", "--backend", "--fsync", "--io-threads", "--net-threads",
         "--max-payload", "--max-conns", "--log-level", "--config", "--verified-cache"]


def run_server(args, timeout=30):
    return subprocess.run([ELLIPTICSD] + args, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_help_lists_every_flag():
    r = run_server(["--help"])
    assert r.returncode == 0, r
    text = r.stdout + r.stderr
    for f in FLAGS:
        assert f in text, "--help does not list %s" % f


@pytest.mark.parametrize("args", [
    ["--no-such-flag"],
    ["--fsync", "sometimes"],
    ["--backend", "nonexistent"],
    ["--io-threads", "0"],
    ["--io-threads", "lots"],
    ["--listen", "not-an-address:xx"],
    ["--max-payload", "-1"],
    ["--verified-cache", "lots"],
    ["--verified-cache", "-1"],
    ["--log-level", "chatty"],
])
def test_bad_arguments(tmp_path, args):
    base = ["--listen", "127.0.0.1:%d" % free_port(), "--data", str(tmp_path / "d")]
    r = run_server(base + args)
    assert r.returncode != 0, "%r was accepted" % (args,)
    assert r.stderr.strip(), "%r: no error message" % (args,)


def test_listening_log_line(node):
    wait_for(lambda: ("listening on %s" % node.addr) in node.log(), 10,
             what="'listening on %s' in the log" % node.addr)


@pytest.mark.parametrize("extra", [
    ["--backend", "file"],
    ["--io-threads", "1", "--net-threads", "1"],
    ["--io-threads", "8", "--net-threads", "2"],
    ["--log-level", "debug"],
    ["--log-level", "error"],
    ["--max-conns", "64"],
    ["--verified-cache", "64M"],
])
def test_flags_accepted(node_factory, extra):
    node = node_factory(*extra)
    assert node.cli("put", "k", input=b"v").rc == 0
    r = node.cli("get", "k")
    assert r.rc == 0 and r.out == b"v"


def test_config_file(node_factory, tmp_path):
    port = free_port()
    data = tmp_path / "cfgdata"
    cfg = tmp_path / "node.conf"
    cfg.write_text(
        "# a comment line\n"
        "\n"
        "listen = 127.0.0.1:%d\n"
        "data = %s\n"
        "fsync = batch   \n"
        "io-threads = 2\n"
        "log-level = info\n" % (port, data))
    node = node_factory(start=False, port=port, data=data)
    # The config file provides --listen and --data: start with only --config.
    node.cmdline = lambda: [ELLIPTICSD, "--config", str(cfg)]
    node.start()
    assert node.cli("put", "c", input=b"cfg").rc == 0
    r = node.cli("get", "c")
    assert r.rc == 0 and r.out == b"cfg"
    assert any(f.startswith("node_id") for f in os.listdir(data)), "data dir from config not used"


def test_config_file_bad_line(tmp_path):
    cfg = tmp_path / "bad.conf"
    cfg.write_text("listen = 127.0.0.1:%d\nno-such-setting = 1\n" % free_port())
    r = run_server(["--config", str(cfg), "--data", str(tmp_path / "d")])
    assert r.returncode != 0
    assert "no-such-setting" in r.stderr, r.stderr


def test_port_in_use(node, tmp_path):
    r = run_server(["--listen", node.addr, "--data", str(tmp_path / "other")])
    assert r.returncode != 0
    assert r.stderr.strip()
    assert node.alive()


def test_data_dir_locked(node):
    """Two daemons on one data dir would corrupt it: the second must refuse."""
    r = run_server(["--listen", "127.0.0.1:%d" % free_port(), "--data", node.data])
    assert r.returncode != 0, "a second ellipticsd started on a data dir in use"
    assert node.alive()
