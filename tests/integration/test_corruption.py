"""A corrupted object on disk is reported as an error, never served.

Engine-aware: with the file engine the object's own file is damaged; with any other
engine (blob, ...) the object's bytes are found in the engine's files by searching
for its (random, so unique) content, and damaged there."""
import hashlib
import os

import pytest

from conftest import wait_for


def object_file(data_dir, key):
    """Path of the file backend's file for key: 256 dirs by first ID byte, file named
    by the 128-hex ID (searched for, so the exact nesting under DATA may vary)."""
    hexid = hashlib.sha512(key.encode()).hexdigest()
    found = []
    for root, dirs, files in os.walk(data_dir):
        for f in files:
            if f == hexid or (f.startswith(hexid) and not f.endswith((".tmp", ".part"))):
                found.append(os.path.join(root, f))
    assert len(found) == 1, "expected one file named by the ID %s... under %s, found %r" % (
        hexid[:16], data_dir, found)
    assert os.path.basename(os.path.dirname(found[0])) == hexid[:2], \
        "object file should sit in the directory named by the first ID byte: %s" % found[0]
    return found[0]


def find_content(data_dir, data):
    """(path, offset) of the one place under data_dir holding data's bytes: found by
    their first 64 bytes, confirmed by the whole. For engines that store an object's
    bytes verbatim in larger files (blob-*.data of the blob engine)."""
    needle = data[:64]
    found = []
    for root, dirs, files in os.walk(data_dir):
        for f in files:
            path = os.path.join(root, f)
            if os.path.getsize(path) < len(data) or f == "node_id":
                continue
            with open(path, "rb") as fh:
                m = fh.read()
                pos = m.find(needle)
                while pos >= 0:
                    if m[pos:pos + len(data)] == data:
                        found.append((path, pos))
                    pos = m.find(needle, pos + 1)
    assert len(found) == 1, "expected the object's bytes once under %s, found %r" % (
        data_dir, found)
    return found[0]


def locate(data_dir, data, pos):
    """[(path, file offset)] of every on-disk copy of byte `pos` of the object, for
    engines that may split an object into chunks or pages and may hold more than one
    copy (a database file and its log: lmdb, bdb): found by a 64-byte window of the
    object's (random, so unique) bytes around pos, whatever the chunking."""
    for shift in (0, -40, 40, -100, 100):
        lo = max(0, min(len(data) - 64, pos - 32 + shift))
        window = data[lo:lo + 64]
        hits = []
        for root, dirs, files in os.walk(data_dir):
            for f in files:
                path = os.path.join(root, f)
                if f == "node_id" or os.path.getsize(path) < 64:
                    continue
                with open(path, "rb") as fh:  # read, not mmap: engines' region
                    m = fh.read()             # files may be sparse or odd-sized
                    i = m.find(window)
                    while i >= 0:
                        hits.append((path, i + (pos - lo)))
                        i = m.find(window, i + 1)
        # A write-ahead log's copy (bdb's log.NNNNNNNNNN) is the record of a write,
        # not the stored object: damage the stored copies when there are any.
        stored = [h for h in hits if not os.path.basename(h[0]).startswith("log.")]
        if stored or hits:
            return stored or hits
    raise AssertionError("byte %d of the object not found under %s" % (pos, data_dir))


def flip_all(hits):
    for path, off in hits:
        flip(path, off)


def flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x5A]))


def healed(node, r, data):
    """An engine with a write-ahead log (bdb) may replay it at start and rewrite a
    damaged page, and a copy-on-write engine (lmdb) may keep stale copies of the
    bytes in free pages, so the copy we damaged need not be the one served: serving
    the exact original is then correct (never damaged bytes: those always fail).
    Never accepted from file and blob, which keep one copy (the flip must show)."""
    return node.backend not in ("file", "blob") and r.rc == 0 and r.out == data


def corrupt_mentioned(err):
    e = err.lower()
    return "corrupt" in e or "checksum" in e


@pytest.mark.parametrize("size,where", [(1 << 20, "middle"), (65536 + 3, "middle"),
                                        (20 << 20, "middle"), (20 << 20, "near-end")])
def test_corrupted_object_is_not_served(node, tmp_path, size, where):
    """20 MiB: a chunked upload, and a read whose bad byte is far from its start."""
    key = "victim-%d" % size
    data = os.urandom(size)
    assert node.cli("put", key, input=data).rc == 0
    assert node.cli("put", "bystander", input=b"fine").rc == 0
    node.stop_clean()
    if node.backend == "file":
        path = object_file(node.data, key)
        fsize = os.path.getsize(path)
        assert fsize >= size, "the object file is smaller than the object"
        # near-end: file offset size-20 lies in the data area (data is [h, h+size) for
        # a small header h), within h+20 bytes of the data's end, whatever the layout.
        flip(path, fsize // 2 if where == "middle" else size - 20)
    elif node.backend == "blob":
        path, start = find_content(node.data, data)
        flip(path, start + (size // 2 if where == "middle" else size - 20))
    else:
        flip_all(locate(node.data, data, size // 2 if where == "middle" else size - 20))
    node.start()

    r = node.cli("get", key)
    if healed(node, r, data):
        r = node.cli("get", "bystander")
        assert r.rc == 0 and r.out == b"fine"
        return
    assert r.rc not in (0, 1), "a corrupted object was served (rc %d)" % r.rc
    assert corrupt_mentioned(r.err), "the error must say the object is corrupt: %r" % r.err
    assert len([l for l in r.err.splitlines() if l.strip()]) == 1, r.err
    assert r.out == b"", "%d bytes of a corrupted object went to stdout" % len(r.out)

    dst = tmp_path / "out"
    r = node.cli("get", key, str(dst))
    assert r.rc not in (0, 1), r
    assert not dst.exists() or dst.stat().st_size == 0, \
        "%d bytes of a corrupted object were written to the output file" % dst.stat().st_size

    # The rest of the store is untouched and the server is fine.
    r = node.cli("get", "bystander")
    assert r.rc == 0 and r.out == b"fine"
    # Overwriting repairs it.
    assert node.cli("put", key, input=data).rc == 0
    r = node.cli("get", key)
    assert r.rc == 0 and r.out == data


def test_corruption_at_end_of_data(node):
    """Flip the last data byte (just before any footer): found by flipping bytes from
    the end until the object no longer reads back, which must then be an error."""
    key = "tail"
    data = os.urandom(200000)
    assert node.cli("put", key, input=data).rc == 0
    node.stop_clean()
    if node.backend == "file":
        path = object_file(node.data, key)
        fsize = os.path.getsize(path)
        overhead = fsize - len(data)
        assert overhead >= 0
        # Data ends at most `overhead` bytes before the end of the file; flip every
        # byte of that possible footer range plus the last data byte.
        for off in range(fsize - overhead - 1, fsize):
            flip(path, off)
    else:
        flip_all(locate(node.data, data, len(data) - 1))  # the very last data byte
    node.start()
    r = node.cli("get", key)
    if healed(node, r, data):
        return
    assert r.rc not in (0, 1), "corrupted tail served"
    assert corrupt_mentioned(r.err), r.err
    assert r.out == b""


def test_truncated_object_file_is_an_error(node):
    if node.backend not in ("file", "blob"):
        pytest.skip("engine %s keeps objects in a shared database file: cutting it is "
                    "not an object truncation (its own recovery tests cover torn files)"
                    % node.backend)
    key = "short"
    data = os.urandom(100000)
    assert node.cli("put", "before", input=b"b" * 3000).rc == 0
    assert node.cli("put", key, input=data).rc == 0
    node.stop_clean()
    if node.backend == "file":
        path = object_file(node.data, key)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) - 5000)
    else:
        # The file holding the object is cut 5000 bytes before the object's end.
        path, start = find_content(node.data, data)
        with open(path, "r+b") as f:
            f.truncate(start + len(data) - 5000)
    node.start()
    r = node.cli("get", key)
    if node.backend == "file":
        assert r.rc not in (0, 1), "a truncated object file was served"
    else:
        # An append-only engine cannot tell a cut file from a torn write at a crash:
        # recovery drops the torn tail record, so the object is gone - never served.
        assert r.rc != 0, "a truncated object was served"
        assert r.rc == 1 or corrupt_mentioned(r.err), r
    assert r.out == b""
    assert node.alive()
    # what lay before the cut is intact
    r = node.cli("get", "before")
    assert r.rc == 0 and r.out == b"b" * 3000


def test_stream_verified_get_stops_at_the_bad_block(node, tmp_path):
    """`get KEY FILE` has the node verify as it sends (the temporary file drops a
    failed read's bytes). A bad byte near the end of a large object: the good blocks
    before it go out, the bad one never does; the connection is cut, the retry is
    refused up front, and the user sees a corrupt object and no file. The blob and
    file engines check their block checksums as they send (logged); the others
    verify first."""
    key, size = "late-damage", 24 << 20
    data = os.urandom(size)
    assert node.cli("put", key, input=data).rc == 0
    assert node.cli("put", "bystander", input=b"fine").rc == 0
    node.stop_clean()
    if node.backend == "file":
        flip(object_file(node.data, key), size - 20)
    elif node.backend == "blob":
        path, start = find_content(node.data, data)
        flip(path, start + size - 20)
    else:
        flip_all(locate(node.data, data, size - 20))
    node.start()
    dst = tmp_path / "out"
    for attempt in range(2):
        r = node.cli("get", key, str(dst))
        if healed(node, r, data):
            return
        assert r.rc not in (0, 1), "attempt %d: a corrupted object was served" % attempt
        assert corrupt_mentioned(r.err), "attempt %d: %r" % (attempt, r.err)
        assert not dst.exists(), "attempt %d: the output file was created" % attempt
        assert not [f for f in os.listdir(tmp_path) if f.startswith(".out.")], \
            "attempt %d: a temporary file was left behind" % attempt
    if node.backend in ("blob", "file"):
        assert "failed verification as it was sent" in node.log(), node.log_tail()
    assert node.alive()
    r = node.cli("get", "bystander")
    assert r.rc == 0 and r.out == b"fine"
    assert node.cli("put", key, input=data).rc == 0
    assert node.cli("get", key, str(dst)).rc == 0
    assert dst.read_bytes() == data
