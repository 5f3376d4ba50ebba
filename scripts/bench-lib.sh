# Helpers shared by the proxy benchmarks (sourced, not run).

# Installs what is missing of the Debian packages named.
need_packages() {
    local need=() p
    for p in "$@"; do command -v "${p%%:*}" >/dev/null || need+=("${p##*:}"); done
    if ((${#need[@]})); then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; fi
}

# CPU ticks of a process, its threads and its children (nginx's worker is
# a child of its master): "user system".
ticks() {
    local all=("$1" $(pgrep -P "$1" || true))
    # shellcheck disable=SC2046
    cat $(printf '/proc/%s/task/*/stat ' "${all[@]}") 2>/dev/null | awk '{u += $14; s += $15} END {print u, s}'
}
HZ=$(getconf CLK_TCK)

# wrk's latency (850.00us, 1.20ms, 2.00s) in ms.
to_ms() {
    python3 -c 'import sys,re; v=sys.argv[1]; m=re.match(r"([0-9.]+)(us|ms|s)",v); f={"us":0.001,"ms":1,"s":1000}[m.group(2)]; print(float(m.group(1))*f)' "$1"
}

median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

# One wrk run against URL while measuring PID's CPU: prints
# "requests/s p99-ms cpu-µs-per-request system-cpu-µs-per-request".
measure() {
    local pid=$1 url=$2 threads=$3 conns=$4 secs=$5 u0 s0 u1 s1 out reqs
    read -r u0 s0 < <(ticks "$pid")
    out=$(wrk -t"$threads" -c"$conns" -d"${secs}s" --latency "$url")
    read -r u1 s1 < <(ticks "$pid")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    echo "$(awk '/Requests\/sec/ {print $2}' <<<"$out") $(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")" \
        "$(python3 -c "print(($u1 + $s1 - $u0 - $s0) / $HZ / $reqs * 1e6, ($s1 - $s0) / $HZ / $reqs * 1e6)")"
}

# A temporary directory ($DIR) and a list of started processes ($pids), both
# cleaned up on exit.
bench_dir() {
    DIR=$(mktemp -d)
    pids=()
    trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; cpu_unlimit; rm -rf "$DIR"' EXIT
}

# The backend: one nginx worker answering "ok" on the given ports; it never
# closes a kept-alive connection during a run.
start_backend() {
    local listens="" port
    for port in "$@"; do listens+="listen 127.0.0.1:$port; "; done
    cat > "$DIR/backend.conf" <<CONF
worker_processes 1; daemon off; pid $DIR/backend.pid; error_log $DIR/backend.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000000; keepalive_timeout 300s;
  server { $listens location / { return 200 "ok"; } } }
CONF
    nginx -c "$DIR/backend.conf" -e "$DIR/backend.err" & pids+=($!)
}

# Puts a process and its children in a cgroup of their own limited to
# $PROXY_CPU CPUs (cgroup v2 cpu.max or v1 cfs quota, 10 ms periods), so
# that the proxy, not the shared cores, is what limits requests/s. The
# cgroups are removed on exit (bench_dir's trap runs cpu_unlimit).
cpu_limit() {
    local name=$1 pid=$2 period=10000 quota dir p
    quota=$(python3 -c "print(int($PROXY_CPU * $period))")
    if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
        grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control || echo +cpu > /sys/fs/cgroup/cgroup.subtree_control
        dir=/sys/fs/cgroup/twbench-$name
        mkdir -p "$dir"
        echo "$quota $period" > "$dir/cpu.max"
    else
        dir=/sys/fs/cgroup/cpu/twbench-$name
        mkdir -p "$dir"
        echo "$period" > "$dir/cpu.cfs_period_us"
        echo "$quota" > "$dir/cpu.cfs_quota_us"
    fi
    for p in "$pid" $(pgrep -P "$pid" || true); do echo "$p" > "$dir/cgroup.procs"; done
    cgroups+=("$dir")
}
cgroups=()
cpu_unlimit() {
    local d
    for d in "${cgroups[@]}"; do
        # Emptied when its processes are killed; wait for that, then remove it.
        for _ in 1 2 3 4 5 6 7 8 9 10; do rmdir "$d" 2>/dev/null && break; sleep 0.2; done
    done
}

# nginx as the article fixes it (upstream keepalive, HTTP/1.1, Connection
# ""), one worker, listening on port $1 in front of the backend on port $2;
# its master's pid in $nginx_pid.
start_nginx_proxy() {
    cat > "$DIR/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $DIR/nginx.pid; error_log $DIR/nginx.err;
events { worker_connections 4096; }
http { access_log off;
  upstream backend { server 127.0.0.1:$2; keepalive 128; }
  server { listen 127.0.0.1:$1;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
    nginx -c "$DIR/nginx.conf" -e "$DIR/nginx.err" & pids+=($!)
    nginx_pid=$!
}

# A throw-away namespace $ns ("twbench-$1-PID") with its loopback up and
# ports that do not limit short connections (the whole range, TIME_WAIT
# ports reused after 1 ms where the kernel allows: 6.14+); deleted on exit
# with everything bench_dir cleans up.
bench_netns() {
    ns="twbench-$1-$$"
    ip netns add "$ns"
    trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; ip netns delete "$ns" 2>/dev/null || true; rm -rf "$DIR"' EXIT
    ip -n "$ns" link set lo up
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=1
    ip netns exec "$ns" sysctl -qw net.ipv4.tcp_tw_reuse_delay=1 2>/dev/null || true
}

# One nginx worker in the namespace $ns answering 200 (with BODY, e.g.
# ' "ok"') on 127.0.0.1:PORT; EXTRA goes into its http block. Sets
# $worker to the worker's pid once it is up (bounded wait).
bench_nginx() {
    local port=$1 body=${2:-} extra=${3:-}
    cat > "$DIR/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $DIR/nginx.pid; error_log $DIR/nginx.err;
events { worker_connections 8192; }
http { access_log off; $extra
  server { listen 127.0.0.1:$port backlog=8192; location / { return 200$body; } } }
CONF
    ip netns exec "$ns" nginx -c "$DIR/nginx.conf" -e "$DIR/nginx.err" & pids+=($!)
    worker=""
    for _ in $(seq 100); do
        [[ -s "$DIR/nginx.pid" ]] && worker=$(pgrep -P "$(cat "$DIR/nginx.pid")" || true)
        [[ -n "$worker" ]] && return
        sleep 0.05
    done
    echo "nginx did not start: $(cat "$DIR/nginx.err")" >&2
    return 1
}
