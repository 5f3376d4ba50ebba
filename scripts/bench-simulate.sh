#!/usr/bin/env bash
# Benchmark: simulated connect()s per second of `timewait model simulate`.
#
# Runs each scenario with hyperfine (warm-up + several runs), takes the
# median wall time, and divides the connects the model reports by it.
# Usage: scripts/bench-simulate.sh [RUNS]   (default 5). Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-5}"

if ! command -v hyperfine >/dev/null; then
    apt-get update -qq && apt-get install -y -qq hyperfine >/dev/null
fi
cargo build --release --quiet
BIN=target/release/timewait
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

scenarios=(
    "exhaustion, no reuse|--rate 10000000 --duration 10 --tw-reuse 0"
    "reuse=1, 1 ms delay, all succeed|--rate 10000000 --duration 10 --tw-reuse 1 --reuse-delay-ms 1"
    "reuse=2 loopback, wide range, 1 s delay|--rate 1000000 --duration 60 --port-range 1024-65535 --destination 127.0.0.1"
    "tw_max_buckets=10000 overflow|--rate 5000000 --duration 20 --tw-reuse 0 --max-tw-buckets 10000"
    "16 destinations x 2 source IPs|--rate 5000000 --duration 20 --tw-reuse 0 --destinations 16 --source-ips 2"
)

echo "| scenario | simulated connects | median wall time (s) | simulated connects/s |"
echo "|---|---:|---:|---:|"
i=0
for s in "${scenarios[@]}"; do
    name="${s%%|*}"; args="${s#*|}"
    attempted=$($BIN model simulate $args --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["attempted"])')
    hyperfine --warmup 1 --runs "$RUNS" --style none --export-json "$OUT/$i.json" \
        "$BIN model simulate $args --json" >/dev/null
    median=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][0]["median"])' "$OUT/$i.json")
    python3 - "$name" "$attempted" "$median" <<'PY'
import sys
name, n, t = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
print(f"| {name} | {n:,} | {t:.2f} | {n / t / 1e6:.1f} M |")
PY
    i=$((i + 1))
done
