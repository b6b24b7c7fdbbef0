"""The verified cache (--verified-cache): a large object's data, once verified, is
kept locked in memory and read again without hashing; a change to the data file,
even through the page cache while the node runs, is still found and never served;
the cache keeps to its budget; 0 turns it off. Blob engine (the default) only: the
other engines verify their own way and report a cache of 0."""
import hashlib
import os

import pytest

from conftest import BACKEND, wait_for
from test_corruption import corrupt_mentioned, find_content, flip

MiB = 1 << 20

pytestmark = pytest.mark.skipif(BACKEND != "blob", reason="the blob engine's cache")


def get_ok(node, key, data):
    r = node.cli("get", key)
    assert r.rc == 0, r
    assert len(r.out) == len(data) and hashlib.sha256(r.out).digest() == \
        hashlib.sha256(data).digest(), "%s came back different" % key


def read_until_cached(node, key, data):
    """Reads key until one read is served whole from the cache (a record is taken
    only once its file has been unchanged for 50 ms, so the first reads may not
    be); every read must return the object."""
    def cached_read():
        before = node.istat("verified_cache_hit_bytes")
        get_ok(node, key, data)
        return node.istat("verified_cache_hit_bytes") - before == len(data)
    wait_for(cached_read, timeout=30, what="a read of %s served from the verified cache" % key)


def test_hot_object_is_read_from_the_cache(node):
    data = os.urandom(20 * MiB + 7)
    assert node.cli("put", "hot", input=data).rc == 0
    st = node.stat()
    assert int(st["verified_cache_limit"]) > 0, "on by default"
    assert int(st["verified_cache_bytes"]) == 0
    read_until_cached(node, "hot", data)
    st = node.stat()
    assert int(st["verified_cache_bytes"]) == len(data)
    assert int(st["verified_cache_objects"]) == 1
    # and again: every byte from the cache
    before = node.istat("verified_cache_hit_bytes")
    get_ok(node, "hot", data)
    assert node.istat("verified_cache_hit_bytes") - before == len(data)


@pytest.mark.parametrize("where", ["middle", "near-end"])
def test_a_change_to_a_cached_object_is_found(node, where):
    """The cached pages are locked, so the disk cannot change them unseen; a write
    into the data file (here through the page cache, while the node runs) changes
    its ctime, which drops the file's entries: the next read hashes again."""
    size = 20 * MiB
    data = os.urandom(size)
    assert node.cli("put", "victim", input=data).rc == 0
    assert node.cli("put", "bystander", input=b"fine").rc == 0
    read_until_cached(node, "victim", data)
    path, start = find_content(node.data, data)
    flip(path, start + (size // 2 if where == "middle" else size - 20))

    for attempt in range(2):
        r = node.cli("get", "victim")
        assert r.rc not in (0, 1), "attempt %d: a corrupted object was served" % attempt
        assert corrupt_mentioned(r.err), "attempt %d: %r" % (attempt, r.err)
        assert len(r.out) < size, "attempt %d: the whole corrupted object went out" % attempt
    st = node.stat()
    assert int(st["verified_cache_dropped"]) >= 1
    # Nothing of it stays locked. (The second read may have made a new entry if
    # 50 ms passed since the flip, but an entry locks nothing before its second
    # read, and then its check fails and it goes.)
    assert int(st["verified_cache_bytes"]) == 0
    assert node.cli("get", "bystander").out == b"fine"
    # an overwrite repairs it, and the new record is cached again
    assert node.cli("put", "victim", input=data).rc == 0
    read_until_cached(node, "victim", data)


def test_the_cache_keeps_to_its_budget(node_factory):
    """8 MiB: an object larger than that is never cached (it would only push out
    everything else); of two 5 MiB objects, the one read least recently goes."""
    node = node_factory("--verified-cache", "8M")
    big, one, two = os.urandom(20 * MiB), os.urandom(5 * MiB), os.urandom(5 * MiB)
    for k, v in (("big", big), ("one", one), ("two", two)):
        assert node.cli("put", k, input=v).rc == 0
    assert node.istat("verified_cache_limit") == 8 * MiB
    read_until_cached(node, "one", one)
    for _ in range(3):
        get_ok(node, "big", big)
    st = node.stat()
    assert int(st["verified_cache_bytes"]) == len(one), "'big' is larger than the cache"
    assert int(st["verified_cache_evicted"]) == 0
    read_until_cached(node, "two", two)
    st = node.stat()
    assert int(st["verified_cache_evicted"]) == 1
    assert int(st["verified_cache_bytes"]) == len(two)
    assert int(st["verified_cache_objects"]) == 1
    get_ok(node, "one", one)  # hashed again: its entry went, a new one waits for a second read
    assert node.istat("verified_cache_bytes") <= 8 * MiB


def test_zero_turns_the_cache_off(node_factory):
    node = node_factory("--verified-cache", "0")
    data = os.urandom(5 * MiB)
    assert node.cli("put", "k", input=data).rc == 0
    for _ in range(4):
        get_ok(node, "k", data)
    st = node.stat()
    assert int(st["verified_cache_limit"]) == 0
    assert int(st["verified_cache_bytes"]) == 0
    assert int(st["verified_cache_hit_bytes"]) == 0

