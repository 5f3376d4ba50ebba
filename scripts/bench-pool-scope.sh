#!/usr/bin/env bash
# Benchmark: per-worker pools (the default) against one pool shared by all
# workers (--shared-pool), with two workers, in front of the same nginx
# backend, under the same wrk load, in alternated runs. Reports requests/s,
# p99 latency, the proxy's CPU time per request, and the backend connections
# each proxy holds open after its runs.
#
# Usage: scripts/bench-pool-scope.sh [ROUNDS] [SECONDS] [CONNECTIONS]   (default 5 10 64)
# Everything listens on 127.0.0.1; everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-5}"; SECS="${2:-10}"; CONNS="${3:-64}"
source scripts/bench-lib.sh
need_packages nginx wrk curl ss:iproute2
cargo build --release --quiet --bin timewait
bench_dir
start_backend 18200 18210
declare -A pid front back
names=(per-worker shared)
front=([per-worker]=18201 [shared]=18211); back=([per-worker]=18200 [shared]=18210)
target/release/timewait proxy --listen 127.0.0.1:18201 --upstream 127.0.0.1:18200 --workers 2 > /dev/null & pids+=($!); pid[per-worker]=$!
target/release/timewait proxy --listen 127.0.0.1:18211 --upstream 127.0.0.1:18210 --workers 2 --shared-pool > /dev/null & pids+=($!); pid[shared]=$!
sleep 1
for n in "${names[@]}"; do
    curl -fsS "http://127.0.0.1:${front[$n]}/" >/dev/null || { echo "$n proxy is not answering" >&2; exit 1; }
done

declare -A rps p99 cpu conns
for _ in $(seq 1 "$ROUNDS"); do
    for n in "${names[@]}"; do
        read -r r p c _ < <(measure "${pid[$n]}" "http://127.0.0.1:${front[$n]}/" 2 "$CONNS" "$SECS")
        rps[$n]+="$r "; p99[$n]+="$p "; cpu[$n]+="$c "
        conns[$n]=$(ss -Htn state established "( dport = :${back[$n]} )" | wc -l)
    done
done
echo "| pools (--workers 2) | requests/s (median) | p99 latency ms (median) | proxy CPU µs per request (median) | backend connections open after the runs | all runs, requests/s |"
echo "|---|---:|---:|---:|---:|---|"
for n in "${names[@]}"; do
    # shellcheck disable=SC2086
    printf "| %s | %.0f | %.2f | %.2f | %s | %s |\n" "$n" "$(median ${rps[$n]})" "$(median ${p99[$n]})" \
        "$(median ${cpu[$n]})" "${conns[$n]}" "${rps[$n]}"
done
