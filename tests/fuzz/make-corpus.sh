#!/usr/bin/env bash
# make-corpus.sh - (re)write the generated seed corpus of every fuzz target under
# tests/fuzz/corpus/NAME/ with the targets' standalone drivers (`--seeds DIR`): the
# storage targets build real stores with the engines and pack their files/records,
# auth and config write handshakes and option texts, and a Python part writes
# protocol messages and HTTP requests for server, http and httpd. Files named
# regress-* (inputs that once found a bug) are kept as they are.
#   tests/fuzz/make-corpus.sh          (builds the drivers with make first)
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
targets="auth config blob file lmdb bdb"
make -s -j"$(nproc 2>/dev/null || echo 2)" $(for t in $targets; do echo "$BUILD/tests/fuzz_$t"; done)
for t in $targets; do
	d=tests/fuzz/corpus/$t
	mkdir -p "$d"
	find "$d" -type f ! -name 'regress-*' -delete
	"$BUILD/tests/fuzz_$t" --seeds "$d"
	echo "$d: $(ls "$d" | wc -l) files, $(du -sk "$d" | cut -f1) KiB"
done

# The receive-path targets: protocol messages and HTTP requests, from the tests'
# own encoder of the wire format (tests/integration/proto.py).
/usr/bin/python3 - <<'PY'
import os, sys
sys.path.insert(0, "tests/integration")
import proto

def seed(target, name, data):
    d = os.path.join("tests/fuzz/corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

idk = proto.key_to_id("fuzz-key")
A = proto.FLAG_NEED_ACK
seed("server", "ping", proto.simple_request(proto.CMD_PING, idk, 1, A))
seed("server", "write-read-lookup-del",
     proto.write_request(idk, b"hello fuzz", 2) + proto.read_request(idk, 3) +
     proto.read_request(idk, 4, offset=2, size=3) +
     proto.simple_request(proto.CMD_LOOKUP, idk, 5, A) +
     proto.simple_request(proto.CMD_DEL, idk, 6, A) + proto.read_request(idk, 7))
seed("server", "chunked-upload",
     proto.encode_hdr(proto.CMD_WRITE, proto.IO_ATTR_SIZE + 4, 8, A, idk) +
     proto.encode_io(size=4, total_size=8, cookie=9, ioflags=proto.IO_PREPARE) + b"abcd" +
     proto.encode_hdr(proto.CMD_WRITE, proto.IO_ATTR_SIZE + 4, 9, A, idk) +
     proto.encode_io(offset=4, size=4, total_size=8, cookie=9, ioflags=proto.IO_COMMIT) + b"efgh")
seed("server", "stat-routes", proto.simple_request(proto.CMD_STAT, idk, 10, A) +
     proto.simple_request(proto.CMD_ROUTES, idk, 11, A))
auth1 = (1).to_bytes(4, "little") + (5).to_bytes(2, "little") + b"alice"
seed("server", "auth", proto.encode_hdr(proto.CMD_AUTH, len(auth1), 12, A) + auth1)
seed("server", "bad-magic", b"\xff" * proto.HDR_SIZE)

seed("http", "get", b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
seed("http", "put-length", b"PUT /b/k HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
seed("http", "chunked", b"PUT /b/k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nTrailer: x\r\n\r\n")
seed("httpd", "metrics", b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
seed("httpd", "ring", b"GET / HTTP/1.1\r\n\r\nGET /ring.json HTTP/1.1\r\n\r\n"
     b"HEAD /metrics HTTP/1.0\r\n\r\n")
seed("httpd", "bad", b"GET /" + b"a" * 300 + b" HTTP/9.9\r\nX: \x00\r\n\r\n")
seed("httpd", "put-chunked", b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
     b"Connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
for t in ("server", "http", "httpd"):
    d = os.path.join("tests/fuzz/corpus", t)
    print("%s: %d files" % (d, len(os.listdir(d))))
PY
