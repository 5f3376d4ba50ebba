#!/usr/bin/env bash
# System calls per proxied request, nginx (the article's keepalive fix)
# against timewait, counted by `strace -c -f` while wrk sends
# a few seconds of requests through each. Backs the claim in BENCHMARKS.md
# that both make the minimum of one read and one write per side.
#
# Usage: scripts/syscalls-per-request.sh [SECONDS]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-3}"
source scripts/bench-lib.sh
need_packages nginx wrk strace curl
cargo build --release --quiet --bin timewait
bench_dir
start_backend 18280 18290
start_nginx_proxy 18281 18280
target/release/timewait proxy --listen 127.0.0.1:18291 --upstream 127.0.0.1:18290 --workers 1 > /dev/null & pids+=($!); tw_pid=$!
sleep 1
for port in 18281 18291; do curl -fsS "http://127.0.0.1:$port/" >/dev/null; done
count() { # PID PORT NAME
    local pid=$1 port=$2 name=$3 reqs
    # nginx's worker is the master's child; timewait is one process.
    local target; target=$(pgrep -P "$pid" | head -1 || true); target=${target:-$pid}
    strace -c -f -p "$target" -o "$DIR/strace.$name" 2>/dev/null & local st=$!
    sleep 0.5
    reqs=$(wrk -t1 -c16 -d"${SECS}s" "http://127.0.0.1:$port/" | awk '/requests in/ {print $1}')
    kill -INT "$st"; wait "$st" || true
    echo "$name: $reqs requests"
    awk -v n="$reqs" '$NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ && $NF != "total" { if ($4 / n >= 0.005) printf "  %-14s %6.2f per request\n", $NF, $4 / n }' "$DIR/strace.$name"
}
count "$nginx_pid" 18281 nginx
count "$tw_pid" 18291 timewait
