#!/usr/bin/env bash
# Benchmark: timewait proxy against nginx (upstream keepalive as the article
# configures it) and HAProxy (http-reuse always), one worker each, in front
# of the same nginx backend, under the same wrk load, in alternated runs.
# Reports requests/s, p99 latency, the proxy's own CPU time per request
# (user + system, from /proc, all its processes and threads), and the
# TIME_WAIT sockets left toward the backend (each proxy gets its own backend
# port, so they can be told apart).
#
# Usage: scripts/bench-proxy.sh [ROUNDS] [SECONDS] [CONNECTIONS]   (default 5 10 64)
# PROXY_CPU=0.3 limits each proxy to 0.3 CPU (its own cgroup): the proxy, not
# the cores it shares with wrk and the backend, then limits requests/s.
# Everything listens on 127.0.0.1; everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-5}"; SECS="${2:-10}"; CONNS="${3:-64}"
source scripts/bench-lib.sh
need_packages nginx haproxy wrk curl ss:iproute2
cargo build --release --quiet --bin timewait
bench_dir
# The backend, one port per proxy.
start_backend 18080 18090 18100
cat > "$DIR/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend f
  bind 127.0.0.1:18091
  default_backend b
backend b
  server s1 127.0.0.1:18090
CONF
declare -A pid
start_nginx_proxy 18081 18080; pid[nginx]=$nginx_pid
haproxy -f "$DIR/haproxy.cfg" -q & pids+=($!); pid[haproxy]=$!
target/release/timewait proxy --listen 127.0.0.1:18101 --upstream 127.0.0.1:18100 --workers 1 > "$DIR/tw.out" & pids+=($!); pid[timewait]=$!
sleep 1
if [[ -n "${PROXY_CPU:-}" ]]; then
    for n in nginx haproxy timewait; do cpu_limit "$n" "${pid[$n]}"; done
fi
for port in 18081 18091 18101; do
    curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1 || { echo "proxy on :$port is not answering" >&2; exit 1; }
done

declare -A rps p99 tw cpu sys
names=(nginx haproxy timewait)
declare -A front=([nginx]=18081 [haproxy]=18091 [timewait]=18101)
declare -A back=([nginx]=18080 [haproxy]=18090 [timewait]=18100)
# Every TIME_WAIT 4-tuple toward each backend port seen at any sample: runs
# are shorter than TIME_WAIT's 60 s, so none escapes. This also counts the
# idle connections a proxy closes between its runs (its idle timeout).
sample_all() {
    local m
    for m in "${names[@]}"; do
        ss -Htan state time-wait "( dport = :${back[$m]} or sport = :${back[$m]} )" | awk '{print $3, $4}' >> "$DIR/tw-all.$m"
    done
}
for _ in $(seq 1 "$ROUNDS"); do
    for n in "${names[@]}"; do
        # TIME_WAIT lasts 60 s, longer than a run: count only the 4-tuples
        # that entered TIME_WAIT during this run (after minus before).
        filter="( dport = :${back[$n]} or sport = :${back[$n]} )"
        ss -Htan state time-wait "$filter" | awk '{print $3, $4}' | sort > "$DIR/tw.before"
        read -r r p c k < <(measure "${pid[$n]}" "http://127.0.0.1:${front[$n]}/" 1 "$CONNS" "$SECS")
        ss -Htan state time-wait "$filter" | awk '{print $3, $4}' | sort > "$DIR/tw.after"
        rps[$n]+="$r "; p99[$n]+="$p "; cpu[$n]+="$c "; sys[$n]+="$k "
        tw[$n]+="$(comm -13 "$DIR/tw.before" "$DIR/tw.after" | wc -l) "
        sample_all
    done
done
sleep 10 # the idle timeouts after the last runs (timewait 4 s, HAProxy's purge 5 s)
sample_all
# What the backend made of the proxies' closes (resets included), at
# nginx's default error_log level.
echo "backend error log: $(wc -l < "$DIR/backend.err") lines"

echo "| proxy | requests/s (median) | p99 latency ms (median) | proxy CPU µs per request (median) | of which system (median) | new TIME_WAIT toward the backend during a run (max) | TIME_WAIT toward the backend, whole benchmark | all runs, requests/s |"
echo "|---|---:|---:|---:|---:|---:|---:|---|"
for n in "${names[@]}"; do
    # shellcheck disable=SC2086
    printf "| %s | %.0f | %.2f | %.2f | %.2f | %s | %s | %s |\n" "$n" "$(median ${rps[$n]})" "$(median ${p99[$n]})" \
        "$(median ${cpu[$n]})" "$(median ${sys[$n]})" "$(tr ' ' '\n' <<<"${tw[$n]}" | sort -n | tail -1)" \
        "$(sort -u "$DIR/tw-all.$n" | wc -l)" "${rps[$n]}"
done
# shellcheck disable=SC2086
python3 - "$(median ${rps[timewait]})" "$(median ${rps[nginx]})" "$(median ${rps[haproxy]})" \
    "$(median ${cpu[timewait]})" "$(median ${cpu[nginx]})" "$(median ${cpu[haproxy]})" <<'PY'
import sys
tw, n, h, ctw, cn, ch = map(float, sys.argv[1:])
print(f"\ntimewait: {tw/n:.2f}x nginx, {tw/h:.2f}x haproxy (requests/s)")
print(f"CPU per request: nginx spends {cn/ctw:.2f}x timewait's, haproxy {ch/ctw:.2f}x")
PY
