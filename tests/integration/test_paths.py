"""test_paths.py - keys are names, never paths, and no command runs a program
(docs/security.md): on every engine, keys such as ../../etc/passwd are stored and
read back as plain names, and nothing is created, changed or removed outside the
node's data directory. The node binary does not even link a way to start a program.
"""
import os
import subprocess

import pytest

import proto
from conftest import ELLIPTICSD

ENGINES = ["file", "blob", "lmdb", "bdb"]


def _tree(root):
    """{relative path: (size, mtime_ns)} of every file and directory under root."""
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


def _traversal_keys(outside):
    # The data directory is jail/1/2/3/4/5/6/data, so every relative escape below
    # stays inside the test's temp dir even if one ever worked; the absolute names
    # point into the jail too (never at real system files).
    return [
        "../../etc/passwd",
        "../../../../../../../../../../../../etc/passwd",
        "../escape",
        "..",
        ".",
        "./",
        "a/../../../../b",
        "..\\..\\windows\\win.ini",
        "%2e%2e/%2e%2e/x",
        str(outside / "absolute-target"),
        str(outside) + "/",
        "LOCK",
        "tmp/../../LOCK",
        "00/" + "0" * 128,
        "blob-000001.data",
        "data.mdb",
        "objects.db",
        "/dev/null",
    ]


@pytest.mark.parametrize("engine", ENGINES)
def test_path_keys_stay_names_inside_the_data_dir(node_factory, tmp_path, engine):
    jail = tmp_path / "jail"
    data = jail / "1" / "2" / "3" / "4" / "5" / "6" / "data"
    data.mkdir(parents=True)
    outside = jail / "outside"
    outside.mkdir()
    (outside / "sentinel").write_bytes(b"must stay as it is")
    passwd = os.stat("/etc/passwd")
    node = node_factory("--backend", engine, data=data)
    before = {k: v for k, v in _tree(jail).items() if not k.startswith(os.path.relpath(data, jail))}

    keys = _traversal_keys(outside)
    for i, key in enumerate(keys):
        body = ("object %d for key %r\n" % (i, key)).encode()
        r = node.cli("put", key, "-", input=body)
        assert r.rc == 0, (key, r)
    for i, key in enumerate(keys):
        body = ("object %d for key %r\n" % (i, key)).encode()
        r = node.cli("get", key, "-")
        assert r.rc == 0 and r.out == body, (key, r)
        assert node.cli("lookup", key).rc == 0, key
    # Deleting a path-like key removes that object only.
    assert node.cli("del", "../../etc/passwd").rc == 0
    assert node.cli("get", "../../etc/passwd", "-").rc == 1
    assert node.cli("get", "../escape", "-").rc == 0

    after = {k: v for k, v in _tree(jail).items() if not k.startswith(os.path.relpath(data, jail))}
    assert after == before, "files outside the data directory changed: %s" % (
        set(after.items()) ^ set(before.items()))
    assert (outside / "sentinel").read_bytes() == b"must stay as it is"
    st = os.stat("/etc/passwd")
    assert (st.st_size, st.st_mtime_ns, st.st_ino) == (passwd.st_size, passwd.st_mtime_ns,
                                                       passwd.st_ino)
    # Inside the data directory, no name is built from a key's text.
    for rel in _tree(str(data)):
        for part in rel.split(os.sep):
            assert part not in ("passwd", "escape", "absolute-target", "win.ini", "b"), rel
    # The node restarts on what it wrote and still has the objects under those names.
    node.stop_clean()
    node.start()
    r = node.cli("get", "../escape", "-")
    assert r.rc == 0 and r.out.startswith(b"object 2 "), r


def test_node_binary_cannot_start_programs():
    """No command runs a program on a node: the daemon links none of the calls that
    could (the 2009 EXEC command is gone for good, not just unreachable)."""
    r = subprocess.run(["nm", "-D", "--undefined-only", ELLIPTICSD], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    imported = {line.split()[-1].split("@")[0] for line in r.stdout.splitlines() if line.strip()}
    assert "write" in imported and ("open" in imported or "open64" in imported), \
        "nm output does not look like an import list: %r" % r.stdout[:200]
    spawners = {"system", "popen", "execl", "execle", "execlp", "execv", "execve", "execvp",
                "execvpe", "fexecve", "posix_spawn", "posix_spawnp", "fork", "vfork", "clone",
                "clone3", "wordexp"}
    assert not (imported & spawners), "ellipticsd imports %s" % sorted(imported & spawners)


def test_every_undefined_command_is_refused(node):
    """Every command number the protocol does not define (the 2009 EXEC slot among
    them) gets an error reply or a closed connection, never an execution; the node
    keeps serving."""
    undefined = [0] + list(range(proto.CMD_MAX_, 256))
    for cmd in undefined:
        trans = 5000 + cmd
        s = proto.connect(node.addr, timeout=30)
        try:
            s.sendall(proto.encode_hdr(cmd, 0, trans, proto.FLAG_NEED_ACK, proto.key_to_id("x")))
            try:
                h, _ = proto.recv_msg(s)
            except (proto.Closed, ConnectionError):
                continue
            assert h.trans == trans and h.status in (proto.EPROTO, proto.EUNSUPP), (cmd, h)
        finally:
            s.close()
    r = node.cli("put", "still-serving", "-", input=b"yes")
    assert r.rc == 0, r
