"""put/get/del/lookup round trips through the real CLI: the object sizes around
page and chunk boundaries, stdin/stdout and files, odd key names, raw IDs, and the
exit codes and error lines of the command-line contract."""
import hashlib
import os
import re

import pytest

SIZES = [0, 1, 4095, 4096, 4097, 65535, 65536, 65537, (1 << 20) + 1]
LOOKUP_RE = re.compile(r"^(\S+:\d+)\b.*\bsize=(\d+)\b.*\bcsum=([0-9a-fA-F]+)\b")


def rand(n, seed):
    # Deterministic "random" binary data: every byte value, no pattern that
    # would hide an off-by-one or a truncated copy.
    out = bytearray()
    h = hashlib.sha512(b"seed-%d" % seed).digest()
    while len(out) < n:
        h = hashlib.sha512(h).digest()
        out += h
    return bytes(out[:n])


def lookup(node, key):
    r = node.cli("lookup", key)
    assert r.rc == 0, r
    lines = [l for l in r.out.decode().splitlines() if l.strip()]
    assert len(lines) == 1, "one node, one copy expected: %r" % lines
    m = LOOKUP_RE.match(lines[0])
    assert m, "lookup line does not match 'HOST:PORT ... size=N csum=HEX': %r" % lines[0]
    return m.group(1), int(m.group(2)), m.group(3).lower()


def one_error_line(err):
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, "expected exactly one stderr line, got %r" % err
    return lines[0]


@pytest.mark.parametrize("size", SIZES)
def test_put_get_files(node, tmp_path, size):
    data = rand(size, size)
    src = tmp_path / "in"
    dst = tmp_path / "out"
    src.write_bytes(data)
    key = "obj-%d" % size
    r = node.cli("put", key, str(src))
    assert r.rc == 0, r
    r = node.cli("get", key, str(dst))
    assert r.rc == 0, r
    assert dst.read_bytes() == data
    holder, lsize, csum = lookup(node, key)
    assert holder == node.addr
    assert lsize == size
    assert len(csum) == 32
    r = node.cli("del", key)
    assert r.rc == 0, r
    r = node.cli("get", key, str(tmp_path / "out2"))
    assert r.rc == 1, r


@pytest.mark.parametrize("size", SIZES)
def test_put_get_stdio(node, size):
    data = rand(size, size + 1)
    key = "stdio-%d" % size
    r = node.cli("put", key, "-", input=data)
    assert r.rc == 0, r
    r = node.cli("get", key, "-")
    assert r.rc == 0, r
    assert r.out == data
    # No FILE argument means stdin / stdout too.
    r = node.cli("put", key + "-implicit", input=data)
    assert r.rc == 0, r
    r = node.cli("get", key + "-implicit")
    assert r.rc == 0, r
    assert r.out == data


def test_overwrite_replaces_whole_object(node, tmp_path):
    key = "overwrite"
    big, small = rand(100000, 1), rand(10, 2)
    assert node.cli("put", key, input=big).rc == 0
    assert node.cli("put", key, input=small).rc == 0
    r = node.cli("get", key)
    assert r.rc == 0 and r.out == small, "a shorter overwrite must not leave old bytes behind"


@pytest.mark.parametrize("name", [
    "k" * 4096,
    "ключ/ユニコード/🔑",
    "key with  spaces ",
    "a/b/c/../d//e/",
    "\t\u00e9\u00e8",
], ids=["4096-bytes", "unicode", "spaces", "slashes", "tab-accents"])
def test_key_names(node, name):
    data = rand(777, len(name))
    r = node.cli("put", name, "-", input=data)
    assert r.rc == 0, r
    r = node.cli("get", name, "-")
    assert r.rc == 0, r
    assert r.out == data
    # A different key (same length, last character changed) must not alias this one.
    r = node.cli("get", name[:-1] + ("y" if name[-1] != "y" else "z"), "-")
    assert r.rc == 1, r


def test_key_with_leading_dash_after_double_dash(node):
    # Conventional: `--` ends the options, so a key may start with '-'.
    r = node.cli("put", "--", "-dash-key", "-", input=b"dash")
    assert r.rc == 0, r
    r = node.cli("get", "--", "-dash-key", "-")
    assert r.rc == 0 and r.out == b"dash", r


def test_key_4096_bytes_utf8(node):
    # 4096 *bytes* (1365 three-byte characters + 1 byte), not characters.
    name = "€" * 1365 + "x"
    assert len(name.encode()) == 4096
    assert node.cli("put", name, input=b"euro").rc == 0
    r = node.cli("get", name)
    assert r.rc == 0 and r.out == b"euro"


def test_key_too_long_is_usage_error(node):
    r = node.cli("put", "k" * 4097, "-", input=b"x")
    assert r.rc == 2, r
    assert r.err.strip(), "a usage error must say what is wrong"
    r = node.cli("get", "k" * 4097)
    assert r.rc == 2, r
    r = node.cli("get", "€" * 1366)  # 4098 bytes
    assert r.rc == 2, r


def test_missing_key(node):
    r = node.cli("get", "no-such-key")
    assert r.rc == 1, r
    assert r.out == b"", "nothing may be written to stdout for a missing object"
    one_error_line(r.err)
    r = node.cli("del", "no-such-key")
    assert r.rc == 1, r
    one_error_line(r.err)
    r = node.cli("lookup", "no-such-key")
    assert r.rc == 1, r
    one_error_line(r.err)


def test_missing_key_to_file_leaves_no_partial_file(node, tmp_path):
    dst = tmp_path / "out"
    r = node.cli("get", "no-such-key", str(dst))
    assert r.rc == 1, r
    assert not dst.exists() or dst.stat().st_size == 0


def test_lookup_checksum(node):
    key = "csum"
    data = rand(5000, 3)
    assert node.cli("put", key, input=data).rc == 0
    a = lookup(node, key)
    b = lookup(node, key)
    assert a == b, "lookup must be stable across calls"
    assert a[1] == 5000
    assert node.cli("put", key, input=data[:-1] + bytes([data[-1] ^ 1])).rc == 0
    c = lookup(node, key)
    assert c[1] == 5000
    assert c[2] != a[2], "checksum must change when one bit of the object changes"
    # The same content under another key has the same checksum.
    assert node.cli("put", key + "2", input=data).rc == 0
    assert lookup(node, key + "2")[2] == a[2]


def test_lookup_checksum_is_xxh3_128(node):
    xxhash = pytest.importorskip("xxhash")
    data = rand(12345, 4)
    assert node.cli("put", "xxh", input=data).rc == 0
    assert lookup(node, "xxh")[2] == xxhash.xxh3_128_hexdigest(data)


def test_id_addressing(node, tmp_path):
    key = "addressed-by-id"
    data = rand(3000, 5)
    hexid = hashlib.sha512(key.encode()).hexdigest()
    # Written by key, read by ID.
    assert node.cli("put", key, input=data).rc == 0
    r = node.cli("get", "--id", hexid, "-")
    assert r.rc == 0, r
    assert r.out == data
    r = node.cli("lookup", "--id", hexid)
    assert r.rc == 0, r
    assert "size=3000" in r.out.decode()
    # Written by ID, read by key.
    data2 = rand(10, 6)
    assert node.cli("put", "--id", hexid, "-", input=data2).rc == 0
    r = node.cli("get", key)
    assert r.rc == 0 and r.out == data2
    # Deleted by ID.
    assert node.cli("del", "--id", hexid).rc == 0
    assert node.cli("get", key).rc == 1
    # A raw ID with no key behind it.
    raw = "ab" * 64
    assert node.cli("put", "--id", raw, input=b"raw").rc == 0
    r = node.cli("get", "--id", raw)
    assert r.rc == 0 and r.out == b"raw"


@pytest.mark.parametrize("bad", ["abc", "zz" * 64, "ab" * 63, "ab" * 65])
def test_bad_id_is_usage_error(node, bad):
    r = node.cli("get", "--id", bad)
    assert r.rc == 2, r


def test_put_missing_file_is_error(node, tmp_path):
    r = node.cli("put", "k", str(tmp_path / "does-not-exist"))
    assert r.rc not in (0, 1), r
    one_error_line(r.err)
    assert node.cli("get", "k").rc == 1, "a failed put must not create the object"


def test_many_objects_independent(node):
    datas = {("many-%d" % i): rand(i * 37, i) for i in range(40)}
    for k, v in datas.items():
        assert node.cli("put", k, input=v).rc == 0
    for k, v in datas.items():
        r = node.cli("get", k)
        assert r.rc == 0 and r.out == v, k
