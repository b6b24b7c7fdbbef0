"""A full disk: writes fail with a clear "no space" error, everything stored before
still reads back, and deleting objects makes room again."""
import os
import subprocess

import pytest

from conftest import is_root

KiB = 1 << 10
OBJ = 256 * KiB


@pytest.fixture
def small_fs(tmp_path):
    """An 8 MiB tmpfs (requested before node_factory so that it is unmounted after
    the node has stopped)."""
    if not is_root():
        pytest.skip("mounting a size-limited tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip("cannot mount tmpfs here: %s" % p.stderr.strip())
    yield mnt
    if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def obj(i):
    return (b"%08d" % i) * (OBJ // 8)


def test_enospc(small_fs, node_factory):
    node = node_factory(data=small_fs / "data")
    stored = []
    failure = None
    for i in range(200):  # 8 MiB / 256 KiB = 32: the disk is full long before 200
        r = node.cli("put", "full-%d" % i, input=obj(i))
        if r.rc != 0:
            failure = r
            break
        stored.append(i)
    assert failure is not None, "200 x 256 KiB fitted into an 8 MiB filesystem?"
    assert failure.rc == 3, "a full disk is an 'other' failure (exit 3), got %r" % (failure,)
    assert "space" in failure.err.lower(), "the error must say there is no space: %r" % failure.err
    assert len([l for l in failure.err.splitlines() if l.strip()]) == 1, failure.err
    assert len(stored) >= 10, "only %d objects fitted: the engine wastes space" % len(stored)
    assert node.alive()

    # A failed write leaves no object behind.
    assert node.cli("get", "full-%d" % (stored[-1] + 1)).rc == 1

    # Everything stored before still reads back.
    for i in stored:
        r = node.cli("get", "full-%d" % i)
        assert r.rc == 0 and r.out == obj(i), "object %d damaged by the full disk" % i

    # More failures do not hurt either.
    for j in range(3):
        assert node.cli("put", "extra-%d" % j, input=obj(1000 + j)).rc == 3

    # Deleting makes room: writes succeed again.
    for i in stored[: len(stored) // 2]:
        assert node.cli("del", "full-%d" % i).rc == 0
    for j in range(3):
        r = node.cli("put", "again-%d" % j, input=obj(2000 + j))
        assert r.rc == 0, "writes still fail after deleting half the objects: %r" % (r,)
        r = node.cli("get", "again-%d" % j)
        assert r.rc == 0 and r.out == obj(2000 + j)
    for i in stored[len(stored) // 2:]:
        r = node.cli("get", "full-%d" % i)
        assert r.rc == 0 and r.out == obj(i)

    # A restart on the full-then-freed disk is fine.
    node.restart()
    r = node.cli("get", "again-0")
    assert r.rc == 0 and r.out == obj(2000)


def test_enospc_large_object(small_fs, node_factory):
    """A chunked upload bigger than the disk fails cleanly and leaves no debris."""
    node = node_factory(data=small_fs / "data")
    assert node.cli("put", "small", input=b"s" * 1000).rc == 0
    r = node.cli("put", "huge", input=os.urandom(12 << 20))
    assert r.rc == 3 and "space" in r.err.lower(), r
    assert node.cli("get", "huge").rc == 1
    # The space the failed upload took is given back.
    r = node.cli("put", "after", input=b"a" * (4 << 20))
    assert r.rc == 0, "a failed upload kept its space: %r" % (r,)
    r = node.cli("get", "small")
    assert r.rc == 0 and r.out == b"s" * 1000
