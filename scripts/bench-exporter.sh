#!/usr/bin/env bash
# Benchmark: a scrape of `timewait exporter` (per-destination metrics from a
# full socket census, and with --live from counts BPF programs keep as
# sockets come and go) against node_exporter in the same run — its sockstat
# collector alone (the host's TIME_WAIT total, one line of /proc), its tcpstat
# collector alone (per-state counts from a sock_diag dump of every socket: the
# same kernel walk the census makes) and its default collectors — at 100k
# and 1M TIME_WAIT sockets in a throw-away network namespace. Both
# exporters run inside the namespace on its loopback; scrapes alternate;
# medians of wall time per scrape; peak RSS (VmHWM) of each exporter after.
#
# Beside them, the kernel's own dump of the same sockets (examples/raw_dump.rs,
# timed by its own clock, no process start): one request for both families,
# as the census reads them, the floor under any census that dumps; one
# request per family, the two in parallel (how the census read them before);
# and the one request asked for listeners only, for sockets held by bind()
# alone, and for ESTABLISHED only, to show which requests the kernel answers
# without walking the table of connections.
#
# TIME_WAIT lasts 60 s: each size is generated and measured inside that
# window (the count is printed before and after). Size 0 measures the floor
# of an empty namespace; size 0e the same in a namespace created with its
# own 1024-bucket established hash (tcp_child_ehash_entries, set in a parent
# namespace of its own), which shows how much of that floor is the walk of
# the host-wide hash table.
# Usage: scripts/bench-exporter.sh [SCRAPES] [SIZES...]   (default 9; 0 0e 100000 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-9}"; shift || true
SIZES=("${@:-0 0e 100000 1000000}")
# shellcheck disable=SC2206
SIZES=(${SIZES[*]})
command -v prometheus-node-exporter >/dev/null || { apt-get update -qq && apt-get install -y -qq prometheus-node-exporter >/dev/null; }
command -v sysctl >/dev/null || { apt-get update -qq && apt-get install -y -qq procps >/dev/null; }
cargo build --release --quiet --bin timewait --examples
BIN=$PWD/target/release
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    ip netns delete "$ns" 2>/dev/null || true
    ip netns delete "$ns-parent" 2>/dev/null || true
}

echo "| TIME_WAIT sockets | timewait exporter --live scrape (ms) | --live / sockstat | --live CPU per scrape (ms) | --live peak RSS (MB) | --live RSS after (MB) | --live TIME_WAIT counted | timewait exporter scrape (ms) | node_exporter sockstat only (ms) | node_exporter tcpstat only (ms) | node_exporter default collectors (ms) | kernel dump alone (ms) | dump, per family in parallel (ms) | dump: LISTEN only | dump: bind() only | dump: ESTABLISHED only | timewait / sockstat | timewait / tcpstat | timewait CPU per scrape (ms) | sockstat CPU per scrape (ms) | tcpstat CPU per scrape (ms) | dump CPU, one request (ms) | dump CPU, per family (ms) | timewait peak RSS (MB) | node_exporter peak RSS (MB, default) | timewait series |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for n in "${SIZES[@]}"; do
    ns="twexp-$$-$n"
    trap cleanup EXIT
    note=""
    if [[ $n == 0e ]]; then
        # A namespace's own established hash is sized by its creator's namespace.
        ip netns add "$ns-parent"
        ip netns exec "$ns-parent" sysctl -qw net.ipv4.tcp_child_ehash_entries=1024
        # nsenter, not ip netns exec: the new name must be mounted in our mount namespace.
        nsenter --net=/run/netns/"$ns-parent" ip netns add "$ns"
        n=0 note=" (own 1024-bucket established hash)"
    else
        ip netns add "$ns"
    fi
    ip -n "$ns" link set lo up
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=0 \
        net.ipv4.tcp_max_tw_buckets=4000000
    ip netns exec "$ns" "$BIN/timewait" exporter --listen 127.0.0.1:19809 --cache-ms 0 > /dev/null & pids+=($!); tw=$!
    # Started before the sockets are made: it counts them as they come.
    ip netns exec "$ns" "$BIN/timewait" exporter --live --listen 127.0.0.1:19810 --cache-ms 0 > /dev/null & pids+=($!); lw=$!
    ip netns exec "$ns" prometheus-node-exporter --web.listen-address=127.0.0.1:19100 \
        --collector.disable-defaults --collector.sockstat > /dev/null 2>&1 & pids+=($!); ne1=$!
    ip netns exec "$ns" prometheus-node-exporter --web.listen-address=127.0.0.1:19101 > /dev/null 2>&1 & pids+=($!); ne2=$!
    ip netns exec "$ns" prometheus-node-exporter --web.listen-address=127.0.0.1:19102 \
        --collector.disable-defaults --collector.tcpstat > /dev/null 2>&1 & pids+=($!); ne3=$!
    sleep 1
    ((n == 0)) || ip netns exec "$ns" "$BIN/examples/make_time_wait" "$n" 64 2 >&2
    ip netns exec "$ns" python3 - "$RUNS" "$n" "$tw" "$ne2" "$BIN/examples/raw_dump" "$note" "$ne1" "$ne3" "$lw" <<'PY'
import os, resource, statistics, subprocess, sys, time, urllib.request
runs, n, tw_pid, ne_pid, raw, note = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
ne1_pid, ne3_pid, lw_pid = sys.argv[7], sys.argv[8], sys.argv[9]
def cpu_ms(pid):
    # utime + stime of the whole process, in clock ticks.
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) * 1000 / os.sysconf("SC_CLK_TCK")
urls = {"lw": "http://127.0.0.1:19810/metrics", "tw": "http://127.0.0.1:19809/metrics", "ne1": "http://127.0.0.1:19100/metrics", "ne2": "http://127.0.0.1:19101/metrics", "ne3": "http://127.0.0.1:19102/metrics"}
def tw_count():
    f = next(l for l in open("/proc/net/sockstat") if l.startswith("TCP:")).split()
    return int(f[f.index("tw") + 1])
def hwm(pid, field="VmHWM:"):
    # `ip netns exec` execs the exporter, so the pid is the exporter's.
    for l in open(f"/proc/{pid}/status"):
        if l.startswith(field):
            return int(l.split()[1]) / 1024
before = tw_count()
t = {k: [] for k in urls}
# State masks (a bit per kernel state number): every state the census asks
# for, LISTEN (10), BOUND_INACTIVE (13), ESTABLISHED (1); and how the
# families are asked for.
both, split = {"RAW_DUMP_FAMILY": "both"}, {"RAW_DUMP_SPLIT": "1"}
dumps = {"raw": ("2ffe", both), "raw2": ("2ffe", split), "listen": ("0400", both),
         "bound": ("2000", both), "est": ("0002", both)}
for k in dumps:
    t[k] = []
# CPU time (user + system, the kernel's walk included: it runs in the
# reader's system calls) over all scrapes or dumps, per scrape or dump.
cpu = {"lw": 0.0, "tw": 0.0, "ne1": 0.0, "ne3": 0.0, "raw": 0.0, "raw2": 0.0}
pid_of = {"lw": lw_pid, "tw": tw_pid, "ne1": ne1_pid, "ne3": ne3_pid}
body = live_body = ""
def raw_dump_ms(k, mask, env):
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run([raw, mask], env=dict(os.environ, **env), capture_output=True, text=True, check=True)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if k in cpu:
        cpu[k] += (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) * 1000
    return float(p.stderr.split()[1])
# One unmeasured scrape each first: the live exporter starts its count
# again when the service ports change (the other exporters' listeners came
# up after it), and dumps the ports held by bind() alone once a minute
# (the "dump: bind() only" column is that cost).
for u in urls.values():
    urllib.request.urlopen(u, timeout=60).read()
for _ in range(runs):
    for k, (mask, env) in dumps.items():
        t[k].append(raw_dump_ms(k, mask, env))
    for k, u in urls.items():
        c0 = cpu_ms(pid_of[k]) if k in pid_of else 0
        t0 = time.perf_counter()
        b = urllib.request.urlopen(u, timeout=60).read().decode()
        t[k].append((time.perf_counter() - t0) * 1000)
        if k in pid_of:
            cpu[k] += cpu_ms(pid_of[k]) - c0
        if k == "tw":
            body = b
        if k == "lw":
            live_body = b
after = tw_count()
live_tw = next((l.split()[-1] for l in live_body.splitlines() if l.startswith('timewait_sockets{state="TIME_WAIT"}')), "0")
series = sum(1 for l in body.splitlines() if l and not l.startswith("#"))
m = {k: statistics.median(v) for k, v in t.items()}
print(f"| {before:,} → {after:,}{note} | {m['lw']:.2f} | {m['lw']/m['ne1']:.2f}× | {cpu['lw']/runs:.2f} | {hwm(lw_pid):.1f} | {hwm(lw_pid, 'VmRSS:'):.1f} | {float(live_tw):,.0f} | {m['tw']:.1f} | {m['ne1']:.1f} | {m['ne3']:.1f} | {m['ne2']:.1f} | {m['raw']:.1f} | {m['raw2']:.1f} | {m['listen']:.2f} | {m['bound']:.1f} | {m['est']:.1f} | {m['tw']/m['ne1']:.1f}× | {m['tw']/m['ne3']:.2f}× | {cpu['tw']/runs:.1f} | {cpu['ne1']/runs:.1f} | {cpu['ne3']/runs:.1f} | {cpu['raw']/runs:.1f} | {cpu['raw2']/runs:.1f} | {hwm(tw_pid):.1f} | {hwm(ne_pid):.1f} | {series} |", flush=True)
PY
    cleanup; pids=()
    trap - EXIT
done
