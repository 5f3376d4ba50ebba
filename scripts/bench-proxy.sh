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
# Both timewait engines run (--engine hyper and --engine lean).
# Everything listens on 127.0.0.1; everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-5}"; SECS="${2:-10}"; CONNS="${3:-64}"
need=()
for p in nginx haproxy wrk; do command -v "$p" >/dev/null || need+=("$p"); done
command -v ss >/dev/null || need+=(iproute2)
if ((${#need[@]})); then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; fi
cargo build --release --quiet --bin timewait
DIR=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$DIR"; }
trap cleanup EXIT

# Backend: one nginx worker answering "ok" on three ports, one per proxy;
# it never closes a kept-alive connection during a run.
cat > "$DIR/backend.conf" <<CONF
worker_processes 1; daemon off; pid $DIR/backend.pid; error_log $DIR/backend.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000000; keepalive_timeout 300s;
  server { listen 127.0.0.1:18080; listen 127.0.0.1:18090; listen 127.0.0.1:18100; listen 127.0.0.1:18110;
    location / { return 200 "ok"; } } }
CONF
# nginx with the article's fix: keepalive, HTTP/1.1, Connection "".
cat > "$DIR/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $DIR/nginx.pid; error_log $DIR/nginx.err;
events { worker_connections 4096; }
http { access_log off;
  upstream backend { server 127.0.0.1:18080; keepalive 128; }
  server { listen 127.0.0.1:18081;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
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
nginx -c "$DIR/backend.conf" -e "$DIR/backend.err" & pids+=($!)
nginx -c "$DIR/nginx.conf" -e "$DIR/nginx.err" & pids+=($!); pid[nginx]=$!
haproxy -f "$DIR/haproxy.cfg" -q & pids+=($!); pid[haproxy]=$!
target/release/timewait proxy --listen 127.0.0.1:18101 --upstream 127.0.0.1:18100 --workers 1 --engine hyper > "$DIR/tw.out" & pids+=($!); pid[timewait-hyper]=$!
target/release/timewait proxy --listen 127.0.0.1:18111 --upstream 127.0.0.1:18110 --workers 1 --engine lean > "$DIR/tw-lean.out" & pids+=($!); pid[timewait-lean]=$!
sleep 1
for port in 18081 18091 18101 18111; do
    curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1 || { echo "proxy on :$port is not answering" >&2; exit 1; }
done

declare -A rps p99 tw cpu
# CPU ticks (user + system) of a process, its threads and its children
# (nginx's worker is a child of its master).
ticks() {
    local all=("$1" $(pgrep -P "$1" || true))
    cat $(printf '/proc/%s/task/*/stat ' "${all[@]}") 2>/dev/null | awk '{s += $14 + $15} END {print s}'
}
HZ=$(getconf CLK_TCK)
names=(nginx haproxy timewait-hyper timewait-lean)
declare -A front=([nginx]=18081 [haproxy]=18091 [timewait-hyper]=18101 [timewait-lean]=18111)
declare -A back=([nginx]=18080 [haproxy]=18090 [timewait-hyper]=18100 [timewait-lean]=18110)
to_ms() { # wrk latency like 850.00us / 1.20ms / 2.00s -> ms
    python3 -c 'import sys,re; v=sys.argv[1]; m=re.match(r"([0-9.]+)(us|ms|s)",v); f={"us":0.001,"ms":1,"s":1000}[m.group(2)]; print(float(m.group(1))*f)' "$1"
}
for r in $(seq 1 "$ROUNDS"); do
    for n in "${names[@]}"; do
        # TIME_WAIT lasts 60 s, longer than a run: count only the 4-tuples
        # that entered TIME_WAIT during this run (after minus before).
        filter="( dport = :${back[$n]} or sport = :${back[$n]} )"
        ss -Htan state time-wait "$filter" | awk '{print $3, $4}' | sort > "$DIR/tw.before"
        t0=$(ticks "${pid[$n]}")
        out=$(wrk -t1 -c"$CONNS" -d"${SECS}s" --latency "http://127.0.0.1:${front[$n]}/")
        t1=$(ticks "${pid[$n]}")
        reqs=$(awk '/requests in/ {print $1}' <<<"$out")
        cpu[$n]+="$(python3 -c "print(($t1 - $t0) / $HZ / $reqs * 1e6)") "
        ss -Htan state time-wait "$filter" | awk '{print $3, $4}' | sort > "$DIR/tw.after"
        rps[$n]+="$(awk '/Requests\/sec/ {print $2}' <<<"$out") "
        p99[$n]+="$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")") "
        tw[$n]+="$(comm -13 "$DIR/tw.before" "$DIR/tw.after" | wc -l) "
    done
done
median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
echo "| proxy | requests/s (median) | p99 latency ms (median) | proxy CPU µs per request (median) | new TIME_WAIT toward the backend per run (max) | all runs, requests/s |"
echo "|---|---:|---:|---:|---:|---|"
for n in "${names[@]}"; do
    # shellcheck disable=SC2086
    printf "| %s | %.0f | %.2f | %.2f | %s | %s |\n" "$n" "$(median ${rps[$n]})" "$(median ${p99[$n]})" \
        "$(median ${cpu[$n]})" "$(tr ' ' '\n' <<<"${tw[$n]}" | sort -n | tail -1)" "${rps[$n]}"
done
# shellcheck disable=SC2086
python3 - "$(median ${rps[timewait-lean]})" "$(median ${rps[timewait-hyper]})" "$(median ${rps[nginx]})" "$(median ${rps[haproxy]})" \
    "$(median ${cpu[timewait-lean]})" "$(median ${cpu[nginx]})" "$(median ${cpu[haproxy]})" <<'PY'
import sys
lean, hyp, n, h, clean, cn, ch = map(float, sys.argv[1:])
print(f"\nlean engine: {lean/n:.2f}x nginx, {lean/h:.2f}x haproxy; hyper engine: {hyp/n:.2f}x nginx, {hyp/h:.2f}x haproxy (requests/s)")
print(f"CPU per request: lean engine {clean/cn:.2f}x nginx's, {clean/ch:.2f}x haproxy's")
PY
