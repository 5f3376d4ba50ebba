#!/usr/bin/env bash
# Benchmark: `timewait load` against wrk, one thread each, against the same
# nginx (one worker), in alternated runs inside a throw-away namespace.
#
#   keepalive:   wrk -t1 -cC          vs  timewait load --mode keepalive --threads 1
#   close:       wrk -t1 -cC -H 'Connection: close'
#                                     vs  timewait load --mode close -H 'Connection: close' --threads 1
#   close-first: wrk -t1 -cC -H 'Connection: close'
#                                     vs  timewait load --mode close --threads 1
#
# keepalive and close put the same bytes on the wire (in close mode nginx
# is told to close, as wrk's users do, and holds the TIME_WAIT).
# close-first is each tool's own way of making short connections: wrk can
# only ask the server to close; timewait load's close mode is the client
# closing first, as an HTTP/1.0 proxy does (issue #12), so the client holds
# the TIME_WAIT and reuses its ports. Reports the median of requests/s each tool
# printed and of its own CPU (user + system) per request: the load
# generator shares two cores with nginx, so requests/s is mostly nginx's
# limit and CPU per request is the generator's own cost; its user part,
# with nginx's worker's CPU per request, bounds what any generator could
# gain on this target.
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
bench_nginx 7100 ' "ok"' 'keepalive_requests 100000000; keepalive_timeout 300s;'
URL=http://127.0.0.1:7100/
inns() { ip netns exec "$ns" "$@"; }

# One run: "requests/s cpu-µs-per-request user-µs-per-request
# nginx-µs-per-request" of the tool named, in a mode.
run() {
    local tool=$1 mode=$2 out cpu user reqs rps hdr=() w0 w1 n0 n1
    [[ $mode == close || ($mode == close-first && $tool == wrk) ]] && hdr=(-H 'Connection: close')
    read -r w0 w1 < <(ticks "$worker"); n0=$((w0 + w1))
    if [[ $tool == wrk ]]; then
        out=$(inns /usr/bin/time -f 'cpu %U %S' wrk -t1 -c"$CONNS" -d"${SECS}s" "${hdr[@]}" "$URL" 2>&1)
        reqs=$(awk '/requests in/ {print $1}' <<<"$out")
        rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
        if grep -q 'Socket errors' <<<"$out"; then echo "wrk: $(grep 'Socket errors' <<<"$out")" >&2; fi
    else
        out=$(inns /usr/bin/time -f 'cpu %U %S' "$BIN" load "$URL" --mode "${mode%-first}" "${hdr[@]}" \
            --threads 1 --concurrency "$CONNS" --duration "$SECS" --json 2>&1)
        reqs=$(python3 -c 'import json,sys; t=sys.stdin.read(); d=json.loads(t[:t.rindex("}")+1]); print(d["succeeded"]); e=d["errors"]; e and print(e, file=sys.stderr)' <<<"$out")
        rps=$(python3 -c "print($reqs / $SECS)")
    fi
    read -r w0 w1 < <(ticks "$worker"); n1=$((w0 + w1))
    cpu=$(awk '/^cpu / {print $2 + $3}' <<<"$out")
    user=$(awk '/^cpu / {print $2}' <<<"$out")
    python3 -c "print($rps, $cpu / $reqs * 1e6, $user / $reqs * 1e6, ($n1 - $n0) / $HZ / $reqs * 1e6)"
}

declare -A rps cpu user ngx
for ((r = 1; r <= ROUNDS; r++)); do
    for mode in keepalive close close-first; do
        # Alternate which tool goes first.
        if ((r % 2)); then order=(wrk timewait); else order=(timewait wrk); fi
        for tool in "${order[@]}"; do
            read -r a b c d < <(run "$tool" "$mode")
            rps[$tool.$mode]+="$a "; cpu[$tool.$mode]+="$b "; user[$tool.$mode]+="$c "; ngx[$tool.$mode]+="$d "
            echo "round $r $mode $tool: $a req/s, $b µs CPU/request ($c user), nginx $d µs/request" >&2
        done
    done
done

echo
echo "| mode | tool | requests/s (median) | generator CPU µs/request (median) | timewait ÷ wrk, requests/s | wrk ÷ timewait, CPU/request |"
echo "|---|---|---:|---:|---:|---:|"
bounds=()
for mode in keepalive close close-first; do
    # shellcheck disable=SC2086
    wr=$(median ${rps[wrk.$mode]}); tr=$(median ${rps[timewait.$mode]})
    # shellcheck disable=SC2086
    wc=$(median ${cpu[wrk.$mode]}); tc=$(median ${cpu[timewait.$mode]})
    # shellcheck disable=SC2086
    wu=$(median ${user[wrk.$mode]}); tu=$(median ${user[timewait.$mode]}); wn=$(median ${ngx[wrk.$mode]})
    printf '| %s | wrk -t1 | %.0f | %.2f (%.2f user) | | |\n' "$mode" "$wr" "$wc" "$wu"
    printf '| %s | timewait load --threads 1 | %.0f | %.2f (%.2f user) | %.2f× | %.2f× |\n' "$mode" "$tr" "$tc" "$tu" \
        "$(python3 -c "print($tr / $wr)")" "$(python3 -c "print($wc / $tc)")"
    # A one-thread generator that keeps its core busy is limited by its
    # own CPU per request; one doing the same kernel work with no user
    # time at all would save only wrk's user time per request.
    # Only where both put the same traffic on the wire.
    [[ $mode == close-first ]] || bounds+=("$(python3 -c "print(f'$mode: wrk -t1 kept {$wr * $wc / 1e6:.2f} of a core busy at {$wc:.2f} µs/request, {$wu:.2f} of it user time (nginx {$wn:.2f} µs/request): a one-thread generator with the same kernel work and no user time at all would reach at most {$wc / ($wc - $wu):.2f}× wrk')")")
done
echo
printf '%s\n' "${bounds[@]}"

echo
echo "| timewait load, 1,000 keep-alive connections | peak RSS |"
echo "|---|---:|"
for secs in "$SECS" $((SECS * 6)); do
    rss=$(inns /usr/bin/time -f 'rss %M' "$BIN" load "$URL" --mode keepalive --concurrency 1000 \
        --duration "$secs" --json 2>&1 >/dev/null | awk '/^rss / {print $2}')
    echo "| ${secs} s | $((rss / 1024)) MB |"
done
