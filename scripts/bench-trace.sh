#!/usr/bin/env bash
# Benchmark: what `timewait trace` costs a connect-heavy workload, beside
# perf_event_open ring buffers (`perf record` of the same tracepoints with
# the same kernel-side filters) in the same run.
#
# In a throw-away namespace, nginx (one worker) accepts on loopback and
# `timewait load tcp://… --mode close` connects and closes (3 trace records
# per connection). Runs alternate: no tracer, `timewait trace --netns` (state
# changes through its BPF filter), the same with `--no-bpf` (every event from
# its tracefs instance), with `--syscalls`, `perf record -a`. Medians of connects/s
# (saturated) and of CPU µs per connect at a paced rate (the number to
# read on noisy machines). For timewait trace also: events per connect, the
# event rate at saturation, events lost, and its own CPU per event.
# Usage: scripts/bench-trace.sh [RUNS] [SECS] [CONCURRENCY]   (default 5 5 32)
# The order of the conditions turns every run; the overhead is also given
# paired by run (mean and 95% interval of the per-run ratios).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-5}"; SECS="${2:-5}"; CONC="${3:-32}"
source scripts/bench-lib.sh
need_packages nginx:nginx-light perf:linux-perf
cargo build --release --quiet --bin timewait
BIN=$PWD/target/release/timewait
bench_dir
# Ports must not be what limits the rate of short connections.
bench_netns trace
# nginx accepts; the client closes first (a TIME_WAIT on its side each time).
bench_nginx 7000

FILTER=$(python3 - <<'PY'
import re
src = open("crates/trace/src/event.rs").read()
print(re.search(r'name: "inet_sock_set_state",\s*filter: "([^"]*)"', src).group(1))
PY
)

# Saturated: as many connects/s as the machine gives (noisy here: the
# neighbours' load moves it by tens of percent). Counted: N connects at
# RATE/s, and the CPU time they cost: the load generator's (rusage of the
# child, which includes the loopback softirq work done in its context),
# nginx's worker's and the tracer's own; a tracer's cost shows as more CPU
# per connect.
RATE="${RATE:-10000}"
load() { ip netns exec "$ns" "$BIN" load tcp://127.0.0.1:7000 --mode close --concurrency "$CONC" --json "$@"; }
rate() {
    python3 -c '
import json, sys
r = json.load(sys.stdin)
if r["errors"]: print("load errors:", r["errors"], file=sys.stderr)
print(r["succeeded"] / r["duration_seconds"], r["succeeded"])'
}
# "cpu-seconds-of-children" after running the command.
child_cpu() {
    python3 -c '
import resource, subprocess, sys
out = subprocess.run(sys.argv[1:], check=True, capture_output=True).stdout
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
sys.stdout.buffer.write(out)
print(ru.ru_utime + ru.ru_stime, file=sys.stderr)' "$@"
}
# One condition: "connects/s cpu-µs-per-connect"; $1 is the tracer's pid (or 0).
measure() {
    local sat sn n c t0 t1 w0 w1 cpu
    read -r sat sn < <(load --duration "$SECS" | rate)
    read -r w0 w1 < <(ticks "$worker"); t0=$((w0 + w1))
    if [[ "$1" != 0 ]]; then read -r a b < <(ticks "$1"); tr0=$((a + b)); fi
    read -r _ n < <(child_cpu ip netns exec "$ns" "$BIN" load tcp://127.0.0.1:7000 --mode close \
        --concurrency "$CONC" --rate "$RATE" --requests "$((RATE * SECS))" --json 2>"$DIR/cpu" | rate)
    c=$(cat "$DIR/cpu")
    read -r w0 w1 < <(ticks "$worker"); t1=$((w0 + w1))
    tr=0; if [[ "$1" != 0 ]]; then read -r a b < <(ticks "$1"); tr=$((a + b - tr0)); fi
    cpu=$(python3 -c "print(($c + ($t1 - $t0 + $tr) / $HZ) / $n * 1e6)")
    echo "$sat $cpu $((sn + n))"
}
start_trace() {
    "$BIN" trace --netns "$ns" --duration 600 --json "$@" > "$DIR/trace.json" & tp=$!
    # Recording once its last event is enabled and tracing is on (a new
    # instance starts with tracing_on 1, turned off while it is set up).
    local d=/sys/kernel/tracing/instances/timewait-$tp-0
    for _ in $(seq 200); do
        [[ "$(cat $d/events/sock/inet_sk_error_report/enable 2>/dev/null)" == 1 && "$(cat $d/tracing_on 2>/dev/null)" == 1 ]] && break
        sleep 0.02
    done
}
start_perf() {
    perf record -q -a -o "$DIR/perf.data" \
        -e sock:inet_sock_set_state --filter "$FILTER" -e tcp:tcp_receive_reset \
        -e sock:inet_sk_error_report --filter 'protocol == 6' 2>/dev/null & pp=$!
    sleep 1
}

none=(); none_cpu=(); traced=(); traced_cpu=(); nobpf=(); nobpf_cpu=(); sys=(); sys_cpu=(); perfed=(); perfed_cpu=(); eps=(); lost=(); cpu=()
cond_none() { read -r a b _ < <(measure 0); none+=("$a"); none_cpu+=("$b"); }
cond_trace() {
    start_trace
    read -r u0 s0 < <(ticks "$tp")
    read -r a b conns < <(measure "$tp"); traced+=("$a"); traced_cpu+=("$b")
    read -r u1 s1 < <(ticks "$tp")
    kill -INT "$tp"; wait "$tp"
    read -r ev lo secs < <(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["events"], r["events_lost"], r["duration_seconds"])' "$DIR/trace.json")
    # Peak event rate: the saturated phase's connects/s times events per connect.
    eps+=("$(python3 -c "print($ev / $conns * $a)")"); epc=$(python3 -c "print(round($ev / $conns, 2))"); lost+=("$lo")
    cpu+=("$(python3 -c "print(($u1 + $s1 - $u0 - $s0) / $HZ / max($ev, 1) * 1e9)")")
}
cond_nobpf() {
    start_trace --no-bpf
    read -r a b _ < <(measure "$tp"); nobpf+=("$a"); nobpf_cpu+=("$b")
    kill -INT "$tp"; wait "$tp"
}
cond_sys() {
    start_trace --syscalls
    read -r a b _ < <(measure "$tp"); sys+=("$a"); sys_cpu+=("$b")
    kill -INT "$tp"; wait "$tp"
}
cond_perf() {
    start_perf
    read -r a b _ < <(measure "$pp"); perfed+=("$a"); perfed_cpu+=("$b")
    kill -INT "$pp"; wait "$pp" || true
}
# The order turns every run, so that no condition always comes first
# (the namespace's TIME_WAIT grows during a run) or always after another.
conds=(cond_none cond_trace cond_nobpf cond_sys cond_perf)
for i in $(seq 0 $((RUNS - 1))); do
    for k in 0 1 2 3 4; do "${conds[$(((i + k) % 5))]}"; done
done
echo "| tracer | connects/s, saturated | vs none | CPU µs per connect at ${RATE}/s (client + nginx + tracer) | vs none |"
echo "|---|---:|---:|---:|---:|"
row() {
    python3 - "$@" <<'PY'
import statistics, sys
name, base_s, base_c = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
sat = statistics.median(map(float, sys.argv[4].split()))
cpu = statistics.median(map(float, sys.argv[5].split()))
rel = lambda x, b: "" if b == 0 else f"{100 * (x / b - 1):+.1f}%"
print(f"| {name} | {sat:,.0f} | {rel(sat, base_s)} | {cpu:.2f} | {rel(cpu, base_c)} |")
PY
}
bs=$(median "${none[@]}"); bc=$(median "${none_cpu[@]}")
row "none" "$bs" "$bc" "${none[*]}" "${none_cpu[*]}"
row "timewait trace (BPF filter of state changes)" "$bs" "$bc" "${traced[*]}" "${traced_cpu[*]}"
row "timewait trace --no-bpf (every event from the tracefs instance)" "$bs" "$bc" "${nobpf[*]}" "${nobpf_cpu[*]}"
row "timewait trace --syscalls" "$bs" "$bc" "${sys[*]}" "${sys_cpu[*]}"
row "perf record (perf_event_open rings, same tracepoints as timewait trace)" "$bs" "$bc" "${perfed[*]}" "${perfed_cpu[*]}"
echo
# Each run's conditions ran minutes apart at most, so the neighbours' load
# moves them together: the ratio within a run is steadier than either.
paired() {
    python3 - "$@" <<'PY'
import math, statistics, sys
name, base, other = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
r = [float(o) / float(b) - 1 for b, o in zip(base, other)]
m, sd = statistics.mean(r), statistics.stdev(r)
half = 1.96 * sd / math.sqrt(len(r))
print(f"{name}: CPU per connect vs none, paired by run: median {100 * statistics.median(r):+.1f}%, "
      f"mean {100 * m:+.1f}% (95% interval {100 * (m - half):+.1f}% to {100 * (m + half):+.1f}%, {len(r)} runs)")
PY
}
paired "timewait trace" "${none_cpu[*]}" "${traced_cpu[*]}"
paired "timewait trace --no-bpf" "${none_cpu[*]}" "${nobpf_cpu[*]}"
paired "timewait trace --syscalls" "${none_cpu[*]}" "${sys_cpu[*]}"
paired "perf record" "${none_cpu[*]}" "${perfed_cpu[*]}"
# Paired by the slice: one paced load of $TOGGLE s per tracer, which is
# switched on and off every $SLICE s (default 2; its instance's events, or perf's
# --control fifo); the machine's busy CPU time of each "on" slice against
# the "off" slice before it (scripts/toggle_cpu.py).
TOGGLE="${TOGGLE:-60}"
toggled() {
    ip netns exec "$ns" "$BIN" load tcp://127.0.0.1:7000 --mode close --concurrency "$CONC" \
        --rate "$RATE" --requests "$((RATE * (TOGGLE + 3)))" --json > /dev/null & lp=$!
    sleep 1
    python3 scripts/toggle_cpu.py "$TOGGLE" "$@"
    wait "$lp"
}
tog_row() {
    read -r off on med mean lo hi n <<<"$2"
    echo "$1: busy CPU on vs off at ${RATE} connects/s, paired by the slice (${SLICE:-2} s): median ${med}%, mean ${mean}% (95% interval ${lo}% to ${hi}%, $n pairs; ${off} → ${on} CPU-s per slice)"
}
start_trace; tog_trace=$(toggled "/sys/kernel/tracing/instances/timewait-$tp-0"); kill -INT "$tp"; wait "$tp"
start_trace --no-bpf; tog_nobpf=$(toggled "/sys/kernel/tracing/instances/timewait-$tp-0"); kill -INT "$tp"; wait "$tp"
start_trace --syscalls; tog_sys=$(toggled "/sys/kernel/tracing/instances/timewait-$tp-0"); kill -INT "$tp"; wait "$tp"
mkfifo "$DIR/ctl" "$DIR/ack"
perf record -q -a -o "$DIR/perf.data" --control "fifo:$DIR/ctl,$DIR/ack" \
    -e sock:inet_sock_set_state --filter "$FILTER" -e tcp:tcp_receive_reset \
    -e sock:inet_sk_error_report --filter 'protocol == 6' 2>/dev/null & pp=$!
sleep 1
tog_perf=$(toggled perf "$DIR/ctl" "$DIR/ack"); kill -INT "$pp"; wait "$pp" || true
tog_row "timewait trace" "$tog_trace"
tog_row "timewait trace --no-bpf" "$tog_nobpf"
tog_row "timewait trace --syscalls" "$tog_sys"
tog_row "perf record" "$tog_perf"
echo "timewait trace: $epc events per connect; at the saturated rate $(median "${eps[@]}" | xargs printf '%.0f') events/s (median of runs), events lost in all runs: $(IFS=+; echo $((${lost[*]}))); its own CPU $(median "${cpu[@]}" | xargs printf '%.0f') ns per event."
echo "runs: none ${none[*]} / ${none_cpu[*]}; trace ${traced[*]} / ${traced_cpu[*]}; --no-bpf ${nobpf[*]} / ${nobpf_cpu[*]}; --syscalls ${sys[*]} / ${sys_cpu[*]}; perf ${perfed[*]} / ${perfed_cpu[*]}" >&2
