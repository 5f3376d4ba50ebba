#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: a
# measure of the proxy's own work that the noise of a shared machine does
# not move (CPU time does; see scripts/bench-proxy.sh for time). The kernel's
# share (the same four system calls per request for every proxy) is not in it.
#
# Usage: scripts/profile-proxy-instructions.sh [SECONDS]   (default 5)
# TIMEWAIT_BIN=path measures another build (e.g. an older commit's).
# One nginx worker answers "ok" as the backend on 127.0.0.1:18180; the proxy
# listens on 127.0.0.1:18181 under valgrind; wrk -c16 loads it. Everything it
# starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-5}"
source scripts/bench-lib.sh
need_packages nginx wrk valgrind callgrind_control:valgrind curl
BIN="${TIMEWAIT_BIN:-target/release/timewait}"
[[ -n "${TIMEWAIT_BIN:-}" ]] || cargo build --release --quiet --bin timewait
bench_dir
start_backend 18180
valgrind --tool=callgrind --callgrind-out-file="$DIR/cg.out" \
    "$BIN" proxy --listen 127.0.0.1:18181 --upstream 127.0.0.1:18180 \
    --workers 1 > /dev/null 2> "$DIR/valgrind.err" & vg=$!; pids+=($vg)
for _ in $(seq 100); do curl -fs http://127.0.0.1:18181/ >/dev/null 2>&1 && break; sleep 0.2; done
# A first load warms up (pool, buffers); each dump zeroes the counters, so
# the second dump holds the second load alone.
run() { wrk -t1 -c16 -d"$1"s http://127.0.0.1:18181/ | awk '/requests in/ {print $1}'; }
dump() {
    callgrind_control --dump >/dev/null 2>&1
    sleep 1
    callgrind_annotate "$(ls -t "$DIR"/cg.out.* | head -1)" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}'
}
run 1 >/dev/null; dump >/dev/null
r2=$(run "$SECS"); i2=$(dump)
kill -INT "$vg"; wait "$vg" || true
echo "$r2 requests; $(( i2 / r2 )) user-space instructions per request"
