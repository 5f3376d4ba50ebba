#!/usr/bin/env bash
# Benchmark: `timewait nginx check` (parse + every check, JSON out) against
# crossplane's parse alone, on a generated configuration of 100 included
# files with 100 locations each (10,000 locations, 100 upstreams), in
# alternated runs; medians of wall time.
# Usage: scripts/bench-nginx.sh [RUNS]   (default 7)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-7}"
[[ -x .venv/bin/crossplane ]] || { python3 -m venv .venv && .venv/bin/pip install --quiet crossplane; }
cargo build --release --quiet --bin timewait
DIR=$(mktemp -d); trap 'rm -rf "$DIR"' EXIT
python3 - "$DIR" <<'PY'
import os, sys
d = sys.argv[1]
os.makedirs(f"{d}/sites")
with open(f"{d}/nginx.conf", "w") as f:
    f.write("events { worker_connections 1024; }\nhttp {\n    proxy_set_header X-Real-IP $remote_addr;\n    include sites/*.conf;\n}\n")
for i in range(100):
    with open(f"{d}/sites/site{i:03}.conf", "w") as f:
        ka = "keepalive 32;" if i % 2 else ""
        f.write(f"upstream app{i} {{\n    server 10.0.{i}.1:8080;\n    server 10.0.{i}.2:8080;\n    {ka}\n}}\n")
        f.write(f"server {{\n    listen 80;\n    server_name site{i}.example.com;\n")
        for j in range(100):
            extra = '        proxy_set_header X-Loc "{}";\n'.format(j) if j % 3 == 0 else ""
            f.write(f"    location /p{j}/ {{\n{extra}        proxy_http_version 1.1;\n        proxy_pass http://app{i};\n    }}\n")
        f.write("}\n")
PY
python3 - "$DIR" "$RUNS" "$PWD" <<'PY'
import statistics, subprocess, sys, time
d, runs, root = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cmds = {
    "timewait nginx check --json": [f"{root}/target/release/timewait", "nginx", "check", f"{d}/nginx.conf", "--nginx-version", "1.22.1", "--json"],
    "timewait nginx parse --json": [f"{root}/target/release/timewait", "nginx", "parse", f"{d}/nginx.conf", "--json"],
    "crossplane parse": [f"{root}/.venv/bin/crossplane", "parse", f"{d}/nginx.conf"],
}
t = {k: [] for k in cmds}
findings = None
for _ in range(runs):
    for k, c in cmds.items():
        t0 = time.perf_counter()
        r = subprocess.run(c, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        t[k].append((time.perf_counter() - t0) * 1000)
        if k.startswith("timewait nginx check"):
            import json
            findings = len(json.loads(r.stdout)["findings"])
m = {k: statistics.median(v) for k, v in t.items()}
print("| command | median (ms) | vs crossplane parse |")
print("|---|---:|---:|")
for k in cmds:
    print(f"| {k} | {m[k]:.0f} | {m['crossplane parse'] / m[k]:.1f}x faster |" if k != "crossplane parse" else f"| {k} | {m[k]:.0f} | 1.0x |")
print(f"({runs} alternated runs; 101 files, 10,000 locations, 100 upstreams; {findings} findings)")
PY
