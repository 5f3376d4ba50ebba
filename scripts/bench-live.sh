#!/usr/bin/env bash
# Benchmark: what the live count's BPF programs (exporter --live) cost the
# connections they count. make_time_wait opens and closes COUNT loopback
# connections (each a TIME_WAIT) in a throw-away namespace, alternately
# with the programs attached and counting that namespace (examples/live_tw
# hold) and without them; median connection rate of RUNS runs each, and
# the count the programs kept beside the kernel's own (sockstat).
# Usage: scripts/bench-live.sh [RUNS] [COUNT]   (default 5 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-5}"; COUNT="${2:-100000}"
cargo build --release --quiet --examples
BIN=$PWD/target/release/examples
ns=""; hold=""
cleanup() {
    [[ -n $hold ]] && kill "$hold" 2>/dev/null || true
    [[ -n $ns ]] && ip netns delete "$ns" 2>/dev/null || true
}
trap cleanup EXIT
rate() { sed -n 's/.*(\([0-9]*\)\/s).*/\1/p'; }
off=(); on=(); counted=()
for i in $(seq 1 "$RUNS"); do
    for mode in off on; do
        ns="twlive-$$-$i-$mode"
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        # The range leaves out make_time_wait's service ports (5000-5063):
        # the count, started first, sees no listener, and a port outside
        # the range toward an ephemeral one is a service port all the same.
        ip netns exec "$ns" sysctl -qw net.ipv4.ip_local_port_range="10000 65535" \
            net.ipv4.tcp_tw_reuse=0 net.ipv4.tcp_max_tw_buckets=4000000
        if [[ $mode == on ]]; then
            fifo=$(mktemp -u); mkfifo "$fifo"
            ip netns exec "$ns" "$BIN/live_tw" hold < "$fifo" > "$fifo.out" & hold=$!
            exec 7>"$fifo"
            until grep -q attached "$fifo.out" 2>/dev/null; do sleep 0.05; done
        fi
        r=$(ip netns exec "$ns" "$BIN/make_time_wait" "$COUNT" 64 2 | rate)
        if [[ $mode == on ]]; then
            # The last closes finish in softirqs after make_time_wait exits:
            # both counts are read once they have.
            sleep 1
            exec 7>&-; wait "$hold"; hold=""
            counted+=("$(sed -n 's/^total //p' "$fifo.out") of $(ip netns exec "$ns" awk '/^TCP:/ {for (i=1;i<NF;i++) if ($i=="tw") print $(i+1)}' /proc/net/sockstat)")
            rm -f "$fifo" "$fifo.out"
            on+=("$r")
        else
            off+=("$r")
        fi
        ip netns delete "$ns"; ns=""
    done
done
python3 - "${off[*]}" "${on[*]}" <<'PY'
import statistics, sys
off = [int(x) for x in sys.argv[1].split()]
on = [int(x) for x in sys.argv[2].split()]
mo, mi = statistics.median(off), statistics.median(on)
print("| connections/s without the programs (median) | with them, counting (median) | with / without |")
print("|---:|---:|---:|")
print(f"| {mo:,.0f} | {mi:,.0f} | {mi/mo:.2f}× |")
print(f"runs without: {off}; with: {on}")
PY
printf 'TIME_WAIT counted by the programs, of the kernel'"'"'s: %s\n' "${counted[@]}"
