#!/usr/bin/env python3
"""Paired overhead of a tracer: while a paced workload runs, switch the
tracer on and off every SLICE seconds (default 2) and take the machine's
busy CPU time in each slice: CPUs × elapsed minus idle, iowait and steal
from /proc/stat (idle is measured exactly under NO_HZ, where user and
system are only sampled at each tick). Neighbouring slices see the same
neighbours' load, so the ratio of an "on" slice to the "off" slice before
it is steadier than any two runs.

Usage: toggle_cpu.py SECONDS tracefs-instance-dir
       toggle_cpu.py SECONDS perf CTL-FIFO ACK-FIFO
Prints: "mean-off-cpu-s mean-on-cpu-s median% mean% low% high% pairs"
"""
import math
import os
import statistics
import sys
import time

EVENTS = ["sock/inet_sock_set_state", "tcp/tcp_receive_reset", "sock/inet_sk_error_report"]


HZ = os.sysconf("SC_CLK_TCK")
CPUS = os.cpu_count()
SLICE = float(os.environ.get("SLICE", "2"))


def busy():
    """Busy CPU seconds of all CPUs since boot, as of now."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    t = time.clock_gettime(time.CLOCK_BOOTTIME)
    return CPUS * t - (v[3] + v[4] + v[7]) / HZ


def instance_switch(inst):
    # The events the tracer enabled (with its BPF filter, state changes are
    # not the instance's event), and tracing_on, which the BPF filter
    # follows (attached or detached within the tracer's 20 ms poll).
    names = EVENTS + [f"syscalls/{e}" for e in ("sys_exit_connect", "sys_enter_setns", "sys_enter_unshare")]
    files = []
    for e in names:
        with open(f"{inst}/events/{e}/enable") as f:
            if f.read().strip() == "1":
                files.append(f"{inst}/events/{e}/enable")
    files.append(f"{inst}/tracing_on")

    def switch(on):
        for p in files:
            with open(p, "w") as f:
                f.write("1" if on else "0")

    return switch


def perf_switch(ctl, ack):
    c = os.open(ctl, os.O_WRONLY)
    a = os.open(ack, os.O_RDONLY)

    def switch(on):
        os.write(c, b"enable\n" if on else b"disable\n")
        os.read(a, 16)

    return switch


def main():
    secs = int(sys.argv[1])
    if sys.argv[2] == "perf":
        switch = perf_switch(sys.argv[3], sys.argv[4])
    else:
        switch = instance_switch(sys.argv[2])
    on, off, state = [], [], False
    switch(False)
    t, b = time.monotonic(), busy()
    for _ in range(int(secs / SLICE) // 2 * 2):
        t += SLICE
        time.sleep(max(0.0, t - time.monotonic()))
        nb = busy()
        (on if state else off).append(nb - b)
        b = nb
        state = not state
        switch(state)
    switch(False)
    r = [x / y - 1 for x, y in zip(on, off) if y > 0]
    m, sd = statistics.mean(r), statistics.stdev(r)
    half = 1.96 * sd / math.sqrt(len(r))
    print(f"{statistics.mean(off):.3f} {statistics.mean(on):.3f} "
          f"{100 * statistics.median(r):.2f} {100 * m:.2f} {100 * (m - half):.2f} {100 * (m + half):.2f} {len(r)}")


main()
