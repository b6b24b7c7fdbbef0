"""The documents stay true to the code: the status-code table in docs/protocol.md is
the one generated from errors.h, tests/integration/proto.py mirrors proto.h, and
docs/operations.md describes every flag `ellipticsd --help` lists."""
import os
import re
import subprocess

import proto
from conftest import ELLIPTICSD, ROOT


def read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def test_error_table_is_generated_from_errors_h():
    table = subprocess.run([os.path.join(ROOT, "scripts", "gen-error-table")], capture_output=True,
                           text=True, check=True).stdout
    assert table.strip() in read("docs/protocol.md"), \
        "docs/protocol.md's status table is stale: run scripts/gen-error-table --update"


def test_proto_py_mirrors_proto_h():
    h = read("src/common/proto.h")
    defines = {m.group(1): int(m.group(2), 0)
               for m in re.finditer(r"#define DNET_(\w+)\s+\(?(0x[0-9a-fA-F]+|\d+)", h)}
    assert defines["MAGIC"] == proto.MAGIC
    for name in ("PROTO_VERSION", "ID_SIZE", "HDR_SIZE", "MAX_KEY_SIZE", "IO_ATTR_SIZE",
                 "OBJ_INFO_SIZE", "ADDR_WIRE_SIZE"):
        ours = getattr(proto, name.replace("PROTO_", ""))
        assert defines[name] == ours, name
    for name in ("FLAG_REPLY", "FLAG_MORE", "FLAG_NEED_ACK", "FLAG_NOCSUM", "FLAGS_KNOWN",
                 "IO_PREPARE", "IO_PLAIN", "IO_COMMIT"):
        assert defines[name] == getattr(proto, name), name
    cmds = dict(re.findall(r"DNET_CMD_(\w+?)_? = (\d+)", h))
    for name, val in cmds.items():
        assert getattr(proto, "CMD_" + name if name != "MAX" else "CMD_MAX_") == int(val), name
    errs = dict(re.findall(r"XX\((\w+), (-?\d+),", read("include/elliptics/errors.h")))
    for name, val in errs.items():
        if hasattr(proto, "E" + name):
            assert getattr(proto, "E" + name) == int(val), name


def test_operations_doc_covers_every_flag():
    if not os.access(ELLIPTICSD, os.X_OK):
        import pytest
        pytest.fail("ellipticsd not built")
    out = subprocess.run([ELLIPTICSD, "--help"], capture_output=True, text=True, timeout=30)
    flags = set(re.findall(r"^\s+(--[a-z][a-z0-9-]+)", out.stdout + out.stderr, re.M))
    assert flags, "no flags found in ellipticsd --help"
    doc = read("docs/operations.md")
    missing = sorted(f for f in flags if f not in doc)
    assert not missing, "docs/operations.md does not describe %s" % ", ".join(missing)
