#!/usr/bin/env bash
# Benchmark: `timewait status --json` against `ss | awk` aggregating TIME_WAIT
# per destination, and the raw netlink dump (receive and discard), at 100k
# and 1M TIME_WAIT sockets in a throw-away network namespace.
#
# TIME_WAIT lasts 60 s, so each size is generated (~90k sockets/s here) and
# measured inside that window; the TIME_WAIT count is checked before and
# after. Runs are alternated (ss, timewait, raw, ss, …); medians reported.
# Usage: scripts/bench-status.sh [RUNS] [SIZES...]   (default 5 runs; 100000 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-5}"; shift || true
SIZES=("${@:-100000 1000000}")
# shellcheck disable=SC2206
SIZES=(${SIZES[*]})

command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
command -v ss >/dev/null || { apt-get update -qq && apt-get install -y -qq iproute2 >/dev/null; }
command -v sysctl >/dev/null || { apt-get update -qq && apt-get install -y -qq procps >/dev/null; }
cargo build --release --quiet --bin timewait --examples
BIN=$PWD/target/release

echo "| TIME_WAIT sockets | ss \| awk (ms) | timewait status --json (ms) | speed-up | raw dump (ms) | timewait peak RSS (MB) | ss \| awk peak RSS (MB) |"
echo "|---:|---:|---:|---:|---:|---:|---:|"
for n in "${SIZES[@]}"; do
    ns="twbench-$$-$n"
    ip netns add "$ns"
    trap 'ip netns delete "$ns" 2>/dev/null || true' EXIT
    ip -n "$ns" link set lo up
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=0 \
        net.ipv4.tcp_max_tw_buckets=4000000
    ip netns exec "$ns" "$BIN/examples/make_time_wait" "$n" 64 2 >&2
    python3 scripts/bench_status.py "$ns" "$n" "$RUNS" "$BIN"
    ip netns delete "$ns"
    trap - EXIT
done
