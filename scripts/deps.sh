#!/usr/bin/env bash
# deps.sh - install the Debian packages Elliptics needs to build, test and benchmark,
# but only those that are missing. Quiet and idempotent when nothing is missing.
#   scripts/deps.sh            build + test packages (prometheus: promtool, chromium: the ring page test,
#                              redis: the peer of the CI benchmark smoke run; awscli, s3cmd, rclone,
#                              python3-boto3: the S3 gateway test)
#   scripts/deps.sh --bench    also the other benchmark peers and tools (memcached, fio, gnuplot, perf,
#                              valgrind, wrk)
set -euo pipefail

BUILD_PKGS=(gcc make pkg-config libssl-dev libxxhash-dev libcmocka-dev liblmdb-dev libdb-dev
	clang libclang-rt-14-dev) # clang + compiler-rt: the libFuzzer targets (make fuzz)
TEST_PKGS=(python3 python3-pytest python3-pytest-timeout python3-xxhash util-linux mount e2fsprogs procps iproute2 iptables iputils-ping openssh-client openssh-server prometheus chromium fonts-dejavu-core redis-server redis-tools awscli s3cmd rclone python3-boto3 openssl)
BENCH_PKGS=(memcached fio gnuplot-nox valgrind linux-perf wrk)

want=("${BUILD_PKGS[@]}" "${TEST_PKGS[@]}")
for arg in "$@"; do
	case "$arg" in
	--bench) want+=("${BENCH_PKGS[@]}") ;;
	-h | --help)
		sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "deps.sh: unknown option '$arg' (try --help)" >&2
		exit 2
		;;
	esac
done

missing=()
for p in "${want[@]}"; do
	status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	[[ "$status" == "install ok installed" ]] || missing+=("$p")
done

[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -ne 0 ]]; then
	echo "deps.sh: missing Debian packages: ${missing[*]}" >&2
	echo "deps.sh: install them as root with: apt-get update && apt-get install -y ${missing[*]}" >&2
	exit 1
fi

echo "deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
	cat "$log" >&2
	rm -f "$log"
	echo "deps.sh: apt-get failed installing ${missing[*]}" >&2
	exit 1
fi
rm -f "$log"
echo "deps.sh: done" >&2
