"""Driver for bench-status.sh: alternates the commands inside one namespace,
times each run (wall clock, perf_counter), measures peak RSS with
/usr/bin/time, and prints one Markdown row of medians."""
import statistics
import subprocess
import sys
import time

ns, n, runs, bindir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
AWK = r"""awk '{l=$3; sub(/:[^:]*$/, "", l); c[l" "$4]++} END {for (k in c) print k, c[k]}'"""
cmds = {
    "ss": f"ss -Htan state time-wait | {AWK}",
    "timewait": f"{bindir}/timewait status --json --top 1000000",
    "raw": f"{bindir}/examples/raw_dump",
}


def inside(cmd):
    return ["ip", "netns", "exec", ns, "sh", "-c", cmd]


def tw_count():
    out = subprocess.run(inside("cat /proc/net/sockstat"), capture_output=True, text=True, check=True).stdout
    fields = next(l for l in out.splitlines() if l.startswith("TCP:")).split()
    return int(fields[fields.index("tw") + 1])


def rss_mb(cmd):
    # The measured program's own peak RSS (the shell and awk are separate processes).
    r = subprocess.run(inside(f"/usr/bin/time -f %M {cmd} > /dev/null"), capture_output=True, text=True, check=True)
    return int(r.stderr.strip().splitlines()[-1]) / 1024


before = tw_count()
times = {k: [] for k in cmds}
for _ in range(runs):
    for k, c in cmds.items():
        t0 = time.perf_counter()
        subprocess.run(inside(c + " > /dev/null"), check=True)
        times[k].append((time.perf_counter() - t0) * 1000)
after = tw_count()
rss_tw = rss_mb(cmds["timewait"])
rss_ss = rss_mb("ss -Htan state time-wait")
# `ip netns exec` itself costs a few ms in every command; measure it to subtract.
base = []
for _ in range(runs):
    t0 = time.perf_counter()
    subprocess.run(inside("true"), check=True)
    base.append((time.perf_counter() - t0) * 1000)
b = statistics.median(base)
med = {k: statistics.median(v) - b for k, v in times.items()}
print(
    f"| {before:,} → {after:,} | {med['ss']:.0f} | {med['timewait']:.0f} | "
    f"{med['ss'] / med['timewait']:.1f}× | {med['raw']:.0f} | {rss_tw:.1f} | {rss_ss:.1f} |",
    flush=True,
)
print(f"(ip netns exec overhead {b:.0f} ms subtracted; {runs} alternated runs each; target {n:,})", file=sys.stderr)
