//! A snapshot as Prometheus metrics, pure: the status analysis and the
//! doctor's findings (not copies of them) turned into a registry of the
//! `prometheus-client` crate and encoded in the Prometheus text format.
//!
//! Series per destination are bounded: the `top` destinations by ports in
//! use, plus one series labelled `other` that carries the rest for the
//! metrics that add up (TIME_WAIT, ESTABLISHED), so sums over a host stay
//! right. A value that could not be read is left out (and counted in
//! `timewait_collection_problems`), never exported as a default.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use timewait_analysis::{GroupBy, Reading, analyse};
use timewait_doctor::DoctorReport;
use timewait_snapshot::Snapshot;
use timewait_trace::TraceReport;

/// What `--trace` has to say: the tracer's report since it started, or why
/// it is not running.
#[derive(Debug, Clone)]
pub enum TraceState {
    /// Started; no report yet.
    Starting,
    /// The running tally.
    Running(TraceReport),
    /// It stopped (tracefs refused, or the process lost its rights).
    Stopped(String),
}

/// The label value of the series that sums the destinations past `top`.
pub const OTHER: &str = "other";

type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Destination {
    local_ip: String,
    remote_ip: String,
    remote_port: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServicePort {
    local_port: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FindingLabels {
    code: String,
    severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessLabels {
    pid: String,
    comm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessErrorLabels {
    pid: String,
    comm: String,
    errno: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProblemLabels {
    what: String,
    cause: String,
}

/// Help text as the registry wants it: it adds the final full stop.
fn help_text(help: &str) -> &str {
    help.strip_suffix('.').unwrap_or(help)
}

/// A family of float gauges, registered.
fn gauges<L>(r: &mut Registry, name: &str, help: &str) -> Family<L, FloatGauge>
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
{
    let f = Family::<L, FloatGauge>::default();
    r.register(name, help_text(help), f.clone());
    f
}

/// One float gauge, registered (with its unit when it has one).
fn gauge(r: &mut Registry, name: &str, help: &str, unit: Option<Unit>, v: f64) {
    let g = FloatGauge::default();
    g.set(v);
    match unit {
        Some(u) => r.register_with_unit(name, help_text(help), u, g),
        None => r.register(name, help_text(help), g),
    }
}

/// A kernel counter (already a running total), registered as a counter.
fn counter(r: &mut Registry, name: &str, help: &str, v: i64) {
    let c = Counter::<u64>::default();
    c.inc_by(u64::try_from(v).unwrap_or(0));
    r.register(name, help_text(help), c);
}

/// Counters of a running total, one family.
fn counters<L>(r: &mut Registry, name: &str, help: &str) -> Family<L, Counter<u64>>
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
{
    let f = Family::<L, Counter<u64>>::default();
    r.register(name, help_text(help), f.clone());
    f
}

/// The tracer's per-process counts (the `top` processes, most errors and
/// first closes first), counted since the exporter started.
fn trace_metrics(r: &mut Registry, state: &TraceState, top: usize) {
    gauge(
        r,
        "trace_running",
        "1 while the connect() and TCP state tracer of --trace runs, 0 if it stopped (the exporter's log says why).",
        None,
        f64::from(u8::from(!matches!(state, TraceState::Stopped(_)))),
    );
    let TraceState::Running(t) = state else {
        return;
    };
    let labels = |p: &timewait_trace::ProcessReport| ProcessLabels {
        pid: p.pid.to_string(),
        comm: p.comm.clone().unwrap_or_default(),
    };
    let connects = counters::<ProcessLabels>(
        r,
        "process_connects",
        "connect() calls on TCP sockets per process, since the exporter started (from tracepoints).",
    );
    let errors = counters::<ProcessErrorLabels>(
        r,
        "process_connect_errors",
        "Failed connects per process by errno (EADDRNOTAVAIL: no free port toward the destination), since the exporter started.",
    );
    let closed = counters::<ProcessLabels>(
        r,
        "process_closed_first",
        "Connections a process opened and closed first, since the exporter started: each left a TIME_WAIT socket on this host.",
    );
    let server = counters::<ProcessLabels>(
        r,
        "process_server_closed_first",
        "Accepted connections a process closed first (server-side TIME_WAIT), since the exporter started.",
    );
    for p in t.processes.iter().take(top) {
        let l = labels(p);
        connects.get_or_create(&l).inc_by(p.connects);
        closed.get_or_create(&l).inc_by(p.closed_first);
        server.get_or_create(&l).inc_by(p.server_closed_first);
        for (errno, n) in &p.errors {
            errors
                .get_or_create(&ProcessErrorLabels {
                    pid: l.pid.clone(),
                    comm: l.comm.clone(),
                    errno: errno.clone(),
                })
                .inc_by(*n);
        }
    }
    let c = |r: &mut Registry, name: &str, help: &str, v: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(v);
        r.register(name, help_text(help), c);
    };
    c(
        r,
        "trace_events",
        "Trace records read since the exporter started.",
        t.events,
    );
    c(
        r,
        "trace_events_lost",
        "Trace records the kernel dropped (buffers full): the per-process counts are short by about this many.",
        t.events_lost,
    );
}

/// The metrics of one snapshot (and, with `--trace`, of the tracer);
/// `top` bounds the per-destination, per-port and per-process series;
/// `scrape_seconds` is what collecting it took.
pub fn render(
    snap: &Snapshot,
    trace: Option<&TraceState>,
    top: usize,
    scrape_seconds: f64,
) -> String {
    let mut r = Registry::with_prefix("timewait");
    if let Some(t) = trace {
        trace_metrics(&mut r, t, top);
    }
    let report = analyse(snap, GroupBy::Destination, usize::MAX);
    let doctor = DoctorReport::new(snap, None, &[], None, None);

    let states = gauges::<State>(
        &mut r,
        "sockets",
        "TCP sockets in the namespace by state, as ss names them.",
    );
    for (state, n) in &report.states {
        states
            .get_or_create(&State {
                state: state.clone(),
            })
            .set(*n as f64);
    }
    if let Reading::Known(tw) = report.settings.sockstat_time_wait {
        gauge(
            &mut r,
            "sockstat_time_wait",
            "TIME_WAIT sockets per /proc/net/sockstat (the count tcp_max_tw_buckets limits).",
            None,
            tw as f64,
        );
    }

    let d = |name: &str, help: &str, r: &mut Registry| gauges::<Destination>(r, name, help);
    let tw = d(
        "destination_time_wait",
        "TIME_WAIT sockets toward a destination (local ip, remote ip, remote port): each holds one of its ephemeral ports for 60 s.",
        &mut r,
    );
    let est = d(
        "destination_established",
        "ESTABLISHED connections toward a destination.",
        &mut r,
    );
    let in_use = d(
        "destination_ports_in_use",
        "Ephemeral ports unavailable toward a destination: its sockets in the range plus ports held by listeners and bind().",
        &mut r,
    );
    let usable = d(
        "destination_usable_ports",
        "Ports one connect() can pick toward a destination (the range minus reserved ports, after the kernel's parity rule).",
        &mut r,
    );
    let headroom = d(
        "port_headroom_ratio",
        "Share of a destination's usable ephemeral ports still free (0 = connect() fails with EADDRNOTAVAIL).",
        &mut r,
    );
    let rate = d(
        "destination_max_new_connections_per_second",
        "Model prediction, not a measurement: sustainable new connections per second toward a destination with the ports its open connections leave free.",
        &mut r,
    );
    let rows = &report.time_wait.by_destination;
    for row in rows.iter().take(top) {
        let l = Destination {
            local_ip: row.local_ip.to_string(),
            remote_ip: row.remote_ip.to_string(),
            remote_port: row.remote_port.to_string(),
        };
        tw.get_or_create(&l).set(row.time_wait as f64);
        est.get_or_create(&l).set(row.established as f64);
        if let Some(v) = row.ports_in_use {
            in_use.get_or_create(&l).set(v as f64);
        }
        if let Some(v) = row.usable_ports {
            usable.get_or_create(&l).set(f64::from(v));
        }
        if let Some(v) = row.headroom_ratio {
            headroom.get_or_create(&l).set(v);
        }
        if let Some(v) = row.max_new_connections_per_second {
            rate.get_or_create(&l).set(v);
        }
    }
    if rows.len() > top {
        let other = Destination {
            local_ip: OTHER.into(),
            remote_ip: OTHER.into(),
            remote_port: OTHER.into(),
        };
        let rest = &rows[top..];
        tw.get_or_create(&other)
            .set(rest.iter().map(|r| r.time_wait).sum::<u64>() as f64);
        est.get_or_create(&other)
            .set(rest.iter().map(|r| r.established).sum::<u64>() as f64);
    }
    gauge(
        &mut r,
        "destinations",
        "Client-side destinations in the census (the per-destination series show the top ones and one 'other').",
        None,
        rows.len() as f64,
    );

    let server = gauges::<ServicePort>(
        &mut r,
        "server_time_wait",
        "TIME_WAIT sockets on a service port: this host closed first as the server (its clients do not keep connections alive).",
    );
    let ports = &report.time_wait.server_side;
    for s in ports.iter().filter(|s| s.time_wait > 0).take(top) {
        server
            .get_or_create(&ServicePort {
                local_port: s.local_port.to_string(),
            })
            .set(s.time_wait as f64);
    }
    let rest: u64 = ports
        .iter()
        .filter(|s| s.time_wait > 0)
        .skip(top)
        .map(|s| s.time_wait)
        .sum();
    if rest > 0 {
        server
            .get_or_create(&ServicePort {
                local_port: OTHER.into(),
            })
            .set(rest as f64);
    }

    for (name, field, help) in [
        (
            "tcp_time_wait_overflow",
            "TCPTimeWaitOverflow",
            "Sockets that skipped TIME_WAIT because tcp_max_tw_buckets was reached (TcpExt TCPTimeWaitOverflow).",
        ),
        (
            "tcp_tw_recycled",
            "TWRecycled",
            "TIME_WAIT sockets taken over by a new connection thanks to tcp_tw_reuse (TcpExt TWRecycled).",
        ),
        (
            "tcp_tw_killed",
            "TWKilled",
            "TIME_WAIT sockets killed early (TcpExt TWKilled).",
        ),
        (
            "tcp_time_wait_entered",
            "TW",
            "Sockets that entered TIME_WAIT after their timer (TcpExt TW).",
        ),
    ] {
        if let Some(v) = snap.counter("TcpExt", field) {
            counter(&mut r, name, help, v);
        }
    }

    let s = &report.settings;
    if let Reading::Known(range) = s.port_range {
        gauge(
            &mut r,
            "sysctl_ip_local_port_range_low",
            "net.ipv4.ip_local_port_range, first port.",
            None,
            f64::from(range.low),
        );
        gauge(
            &mut r,
            "sysctl_ip_local_port_range_high",
            "net.ipv4.ip_local_port_range, last port.",
            None,
            f64::from(range.high),
        );
        if let Reading::Known(reserved) = &s.reserved_ports {
            gauge(
                &mut r,
                "sysctl_ip_local_reserved_ports_in_range",
                "Ports of net.ipv4.ip_local_reserved_ports inside the ephemeral range.",
                None,
                f64::from(reserved.count_in(range)),
            );
        }
    }
    if let Reading::Known(v) = s.tw_reuse {
        gauge(
            &mut r,
            "sysctl_tcp_tw_reuse",
            "net.ipv4.tcp_tw_reuse: 0 off, 1 on, 2 loopback only.",
            None,
            f64::from(v.value()),
        );
    }
    if let Reading::Known(v) = s.timestamps {
        gauge(
            &mut r,
            "sysctl_tcp_timestamps",
            "net.ipv4.tcp_timestamps (reuse needs them).",
            None,
            f64::from(v),
        );
    }
    if let Reading::Known(v) = s.max_tw_buckets {
        gauge(
            &mut r,
            "sysctl_tcp_max_tw_buckets",
            "net.ipv4.tcp_max_tw_buckets: the most TIME_WAIT sockets the namespace keeps.",
            None,
            v as f64,
        );
    }
    if let Reading::Known(v) = s.reuse_delay_ms {
        gauge(
            &mut r,
            "sysctl_tcp_tw_reuse_delay",
            "How long after entering TIME_WAIT a port may be reused (tcp_tw_reuse_delay; 1 s where the kernel has no such sysctl).",
            Some(Unit::Seconds),
            f64::from(v) / 1000.0,
        );
    }
    if let Reading::Known(v) = s.time_wait_seconds {
        gauge(
            &mut r,
            "time_wait_length",
            "How long a socket stays in TIME_WAIT (60 s unless tcp_tw_timeout says otherwise).",
            Some(Unit::Seconds),
            v,
        );
    }

    let findings = gauges::<FindingLabels>(
        &mut r,
        "finding",
        "Findings of timewait doctor, by code and severity (the number of findings).",
    );
    for f in &doctor.findings {
        findings
            .get_or_create(&FindingLabels {
                code: f.code.to_string(),
                severity: f.severity.name().to_string(),
            })
            .inc_by(1.0);
    }
    let problems = gauges::<ProblemLabels>(
        &mut r,
        "collection_problem",
        "Values that could not be read or understood (1 per value); their metrics are left out.",
    );
    for p in &report.problems {
        problems
            .get_or_create(&ProblemLabels {
                what: p.what.clone(),
                cause: format!("{:?}", p.cause).to_ascii_lowercase(),
            })
            .set(1.0);
    }
    gauge(
        &mut r,
        "collection_problems",
        "Values that could not be read or understood in this scrape.",
        None,
        report.problems.len() as f64,
    );
    gauge(
        &mut r,
        "scrape_duration",
        "Time taken to read the namespace for this scrape.",
        Some(Unit::Seconds),
        scrape_seconds,
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &r);
    out
}

/// `# HELP` lines name every metric family: the names this exporter serves.
pub fn names(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use timewait_model::ports::PortRange;
    use timewait_snapshot::snapshot::{FORMAT, VERSION};
    use timewait_snapshot::{Aggregator, CensusSource, SocketView};

    use super::*;

    fn snapshot(destinations: u16, reuse: &str) -> Snapshot {
        let range: PortRange = "40000 49999".parse().unwrap();
        let mut a = Aggregator::new(range, [80]);
        for d in 0..destinations {
            for p in 0..=(d % 3) {
                a.add(&SocketView {
                    state: 6,
                    timewait_timer: true,
                    expires_ms: 30_000,
                    local: "10.0.0.1".parse().unwrap(),
                    local_port: 40_000 + d * 4 + p,
                    remote: "10.0.1.1".parse().unwrap(),
                    remote_port: 1000 + d,
                });
            }
        }
        let sysctls = [
            ("net.ipv4.ip_local_port_range", "40000\t49999"),
            ("net.ipv4.ip_local_reserved_ports", ""),
            ("net.ipv4.tcp_tw_reuse", reuse),
            ("net.ipv4.tcp_timestamps", "1"),
            ("net.ipv4.tcp_max_tw_buckets", "131072"),
            ("net.ipv4.tcp_fin_timeout", "60"),
        ];
        Snapshot {
            format: FORMAT.into(),
            version: VERSION,
            taken_at_unix_ms: 0,
            hostname: "h".into(),
            kernel_release: "6.18.0".into(),
            namespace: "current".into(),
            sysctls: sysctls
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            files: BTreeMap::from([
                (
                    "sockstat".into(),
                    "TCP: inuse 1 orphan 0 tw 600 alloc 1 mem 1\n".into(),
                ),
                (
                    "netstat".into(),
                    "TcpExt: TW TWRecycled TWKilled TCPTimeWaitOverflow\nTcpExt: 9 8 7 6\n".into(),
                ),
            ]),
            census_source: CensusSource::Netlink,
            census: a.finish(),
            kernel_log: vec![],
            problems: vec![],
        }
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn top_bounds_the_destination_series_and_other_keeps_the_sums() {
        let snap = snapshot(300, "1");
        let text = render(&snap, None, 20, 0.001);
        let tw_lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("timewait_destination_time_wait{"))
            .collect();
        assert_eq!(tw_lines.len(), 21, "20 + other");
        let sum: f64 = tw_lines
            .iter()
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(
            sum, snap.census.states["TIME_WAIT"] as f64,
            "sums stay right"
        );
        assert!(text.contains("local_ip=\"other\",remote_ip=\"other\",remote_port=\"other\""));
        assert_eq!(value(&text, "timewait_destinations"), Some(300.0));
        assert_eq!(
            value(&text, "timewait_sockets{state=\"TIME_WAIT\"}"),
            Some(600.0)
        );
    }

    #[test]
    fn kernel_counters_settings_and_findings_are_exported() {
        let text = render(&snapshot(3, "0"), None, 50, 0.25);
        assert_eq!(
            value(&text, "timewait_tcp_time_wait_overflow_total"),
            Some(6.0)
        );
        assert_eq!(value(&text, "timewait_tcp_tw_recycled_total"), Some(8.0));
        assert_eq!(value(&text, "timewait_tcp_tw_killed_total"), Some(7.0));
        assert_eq!(
            value(&text, "timewait_tcp_time_wait_entered_total"),
            Some(9.0)
        );
        assert_eq!(value(&text, "timewait_sysctl_tcp_tw_reuse"), Some(0.0));
        assert_eq!(
            value(&text, "timewait_sysctl_ip_local_port_range_low"),
            Some(40000.0)
        );
        assert_eq!(
            value(&text, "timewait_sysctl_tcp_tw_reuse_delay_seconds"),
            Some(1.0)
        );
        assert_eq!(value(&text, "timewait_scrape_duration_seconds"), Some(0.25));
        assert_eq!(
            value(
                &text,
                "timewait_finding{code=\"tw-reuse-off\",severity=\"info\"}"
            ),
            Some(1.0)
        );
        assert!(
            text.contains("# TYPE timewait_tcp_time_wait_overflow_total counter"),
            "{text}"
        );
    }

    #[test]
    fn a_stopped_tracer_is_shown_as_not_running_and_its_counts_as_unknown() {
        let report = timewait_trace::Tally::new(timewait_trace::Scope::All).report(
            1.0,
            "all namespaces",
            3,
            10,
            &|i| i.to_string(),
        );
        let running = render(
            &snapshot(3, "0"),
            Some(&TraceState::Running(report)),
            50,
            0.0,
        );
        assert_eq!(value(&running, "timewait_trace_running"), Some(1.0));
        assert_eq!(
            value(&running, "timewait_trace_events_lost_total"),
            Some(3.0)
        );
        let stopped = TraceState::Stopped("reading the instance: EIO".into());
        let text = render(&snapshot(3, "0"), Some(&stopped), 50, 0.0);
        assert_eq!(value(&text, "timewait_trace_running"), Some(0.0));
        // Its counts stop being served rather than standing still.
        assert!(!text.contains("timewait_trace_events_lost"), "{text}");
        assert!(!text.contains("timewait_process_"), "{text}");
        // Without --trace, no tracer series at all.
        let none = render(&snapshot(3, "0"), None, 50, 0.0);
        assert!(!none.contains("timewait_trace_"), "{none}");
    }

    #[test]
    fn an_unreadable_value_is_left_out_and_counted() {
        let text = render(&snapshot(3, "7"), None, 50, 0.0);
        assert_eq!(value(&text, "timewait_sysctl_tcp_tw_reuse"), None);
        assert!(
            !text.contains("timewait_destination_max_new_connections_per_second{"),
            "needs tcp_tw_reuse"
        );
        assert_eq!(value(&text, "timewait_collection_problems"), Some(1.0));
        assert_eq!(
            value(
                &text,
                "timewait_collection_problem{what=\"net.ipv4.tcp_tw_reuse\",cause=\"malformed\"}"
            ),
            Some(1.0)
        );
    }
}
