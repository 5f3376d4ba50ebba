#!/usr/bin/env bash
# Benchmark: `timewait load` against wrk, one thread each, against the same
# nginx (one worker), in alternated runs inside a throw-away namespace.
#
#   keepalive: wrk -t1 -cC            vs  timewait load --mode keepalive --threads 1
#   close:     wrk -t1 -cC -H 'Connection: close'
#                                     vs  timewait load --mode close -H 'Connection: close' --threads 1
#
# The same bytes go on the wire in both (in close mode nginx is told to
# close, as wrk's users do). Reports the median of requests/s each tool
# printed and of its own CPU (user + system) per request: the load
# generator shares two cores with nginx, so requests/s is mostly nginx's
# limit and CPU per request is the generator's own cost.
# Then memory: timewait load's peak RSS at 1,000 keep-alive connections
# for SECS and for 6 × SECS (flat if it does not grow with the run).
# Usage: scripts/bench-load.sh [ROUNDS] [SECS] [CONNECTIONS]   (default 5 5 32)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-5}"; SECS="${2:-5}"; CONNS="${3:-32}"
source scripts/bench-lib.sh
need_packages nginx:nginx-light wrk /usr/bin/time:time
cargo build --release --quiet --bin timewait
BIN=$PWD/target/release/timewait
bench_dir
# Ports must not be what limits the rate of short connections.
bench_netns load
cat > "$DIR/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $DIR/nginx.pid; error_log $DIR/nginx.err;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 100000000; keepalive_timeout 300s;
  server { listen 127.0.0.1:7100 backlog=8192; location / { return 200 "ok"; } } }
CONF
ip netns exec "$ns" nginx -c "$DIR/nginx.conf" -e "$DIR/nginx.err" & pids+=($!)
sleep 0.5
URL=http://127.0.0.1:7100/
inns() { ip netns exec "$ns" "$@"; }

# One run: "requests/s cpu-µs-per-request" of the tool named, in a mode.
run() {
    local tool=$1 mode=$2 out cpu reqs rps hdr=()
    [[ $mode == close ]] && hdr=(-H 'Connection: close')
    if [[ $tool == wrk ]]; then
        out=$(inns /usr/bin/time -f 'cpu %U %S' wrk -t1 -c"$CONNS" -d"${SECS}s" "${hdr[@]}" "$URL" 2>&1)
        reqs=$(awk '/requests in/ {print $1}' <<<"$out")
        rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
        if grep -q 'Socket errors' <<<"$out"; then echo "wrk: $(grep 'Socket errors' <<<"$out")" >&2; fi
    else
        out=$(inns /usr/bin/time -f 'cpu %U %S' "$BIN" load "$URL" --mode "$mode" "${hdr[@]}" \
            --threads 1 --concurrency "$CONNS" --duration "$SECS" --json 2>&1)
        reqs=$(python3 -c 'import json,sys; t=sys.stdin.read(); d=json.loads(t[:t.rindex("}")+1]); print(d["succeeded"]); e=d["errors"]; e and print(e, file=sys.stderr)' <<<"$out")
        rps=$(python3 -c "print($reqs / $SECS)")
    fi
    cpu=$(awk '/^cpu / {print $2 + $3}' <<<"$out")
    echo "$rps $(python3 -c "print($cpu / $reqs * 1e6)")"
}

declare -A rps cpu
for ((r = 1; r <= ROUNDS; r++)); do
    for mode in keepalive close; do
        # Alternate which tool goes first.
        if ((r % 2)); then order=(wrk timewait); else order=(timewait wrk); fi
        for tool in "${order[@]}"; do
            read -r a b < <(run "$tool" "$mode")
            rps[$tool.$mode]+="$a "; cpu[$tool.$mode]+="$b "
            echo "round $r $mode $tool: $a req/s, $b µs CPU/request" >&2
        done
    done
done

echo
echo "| mode | tool | requests/s (median) | generator CPU µs/request (median) | timewait ÷ wrk, requests/s | wrk ÷ timewait, CPU/request |"
echo "|---|---|---:|---:|---:|---:|"
for mode in keepalive close; do
    # shellcheck disable=SC2086
    wr=$(median ${rps[wrk.$mode]}); tr=$(median ${rps[timewait.$mode]})
    # shellcheck disable=SC2086
    wc=$(median ${cpu[wrk.$mode]}); tc=$(median ${cpu[timewait.$mode]})
    printf '| %s | wrk -t1 | %.0f | %.2f | | |\n' "$mode" "$wr" "$wc"
    printf '| %s | timewait load --threads 1 | %.0f | %.2f | %.2f× | %.2f× |\n' "$mode" "$tr" "$tc" \
        "$(python3 -c "print($tr / $wr)")" "$(python3 -c "print($wc / $tc)")"
done

echo
echo "| timewait load, 1,000 keep-alive connections | peak RSS |"
echo "|---|---:|"
for secs in "$SECS" $((SECS * 6)); do
    rss=$(inns /usr/bin/time -f 'rss %M' "$BIN" load "$URL" --mode keepalive --concurrency 1000 \
        --duration "$secs" --json 2>&1 >/dev/null | awk '/^rss / {print $2}')
    echo "| ${secs} s | $((rss / 1024)) MB |"
done
