"""The suite's parts (conftest.py --shard=K/N, how scripts/test runs it side by
side) together hold every test exactly once, for the whole suite and for the
engine modules, and a bad --shard is refused."""
import subprocess
import sys

import pytest

from conftest import ROOT


def collect(*args):
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only",
                        "-q"] + list(args), capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
    ids = [l for l in r.stdout.splitlines() if "::" in l]
    return r, ids


@pytest.mark.cost(4)
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("what", [["tests/integration"],
                                  ["tests/integration/test_large.py",
                                   "tests/integration/test_crashloop.py"]])
def test_parts_hold_every_test_once(n, what):
    r, whole = collect(*what)
    assert r.returncode == 0 and whole, r.stdout + r.stderr
    seen = []
    for k in range(1, n + 1):
        r, part = collect("--shard=%d/%d" % (k, n), *what)
        assert r.returncode in (0, 5), r.stdout + r.stderr  # 5: an empty part
        seen += part
    assert sorted(seen) == sorted(whole)


@pytest.mark.parametrize("bad", ["3/2", "0/2", "1", "a/b"])
def test_bad_shard_is_refused(bad):
    r, ids = collect("--shard=%s" % bad, "tests/integration/test_shards.py")
    assert r.returncode != 0 and not ids
    assert "--shard" in r.stdout + r.stderr
