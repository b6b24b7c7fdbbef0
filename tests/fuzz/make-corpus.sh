#!/usr/bin/env bash
# make-corpus.sh - (re)write the generated seed corpus of every fuzz target under
# tests/fuzz/corpus/NAME/ with the targets' standalone drivers (`--seeds DIR`): the
# storage targets build real stores with the engines and pack their files/records,
# auth and config write handshakes and option texts. Files named regress-* (inputs
# that once found a bug) and the server/http/httpd seeds are kept as they are.
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
