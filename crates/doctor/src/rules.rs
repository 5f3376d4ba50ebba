//! The rules. Each is a pure function of the context and returns zero or
//! more findings; `diagnose` runs them all and sorts by severity.

use timewait_analysis::rates::interval_seconds;
use timewait_analysis::status::DestinationRow;
use timewait_analysis::{GroupBy, StatusReport, analyse};
use timewait_model::ports::{ConnectPorts, PortRange, ReservedPorts, TwReuse, is_loopback};
use timewait_model::wrap::{Bandwidth, wrap_seconds};
use timewait_snapshot::{Cause, Problem, Snapshot};

use crate::finding::{Finding, SYSCTL_DOCS, Severity, SysctlChange};
use crate::kernel_version::KernelVersion;

/// What the doctor looks at.
#[derive(Debug, Clone, Copy)]
pub struct DoctorInput<'a> {
    /// The snapshot to judge.
    pub now: &'a Snapshot,
    /// An earlier snapshot of the same namespace (`--interval`), for rates.
    pub earlier: Option<&'a Snapshot>,
    /// nginx configurations in use there, to check and tie to the census.
    pub nginx: &'a [crate::nginx::NginxInput],
    /// With `--trace`: what the processes there did meanwhile.
    pub trace: Option<&'a timewait_trace::TraceReport>,
}

/// Port use at or above this share of usable ports is a warning…
pub const EXHAUSTION_WARNING: f64 = 0.70;
/// …and at or above this, critical.
pub const EXHAUSTION_CRITICAL: f64 = 0.90;
/// TIME_WAIT toward one destination above this share of usable ports is "pressure".
pub const TW_PRESSURE: f64 = 0.10;
/// TIME_WAIT table use at or above this share of `tcp_max_tw_buckets` is a warning.
pub const TW_TABLE_WARNING: f64 = 0.80;
/// Server-side TIME_WAIT at or above this is a warning.
pub const SERVER_SIDE_WARNING: u64 = 1_000;
/// The default range's usable ports (32768-60999).
const DEFAULT_USABLE: u32 = 28_232;
const WIDE_RANGE: (u16, u16) = (1024, 65535);
const NGINX_KEEPALIVE_DOCS: &str =
    "https://nginx.org/en/docs/http/ngx_http_upstream_module.html#keepalive";

struct Ctx<'a> {
    snap: &'a Snapshot,
    report: StatusReport,
    earlier: Option<(StatusReport, &'a Snapshot)>,
    version: Option<KernelVersion>,
}

impl Ctx<'_> {
    fn interval_seconds(&self) -> Option<f64> {
        let (_, e) = self.earlier.as_ref()?;
        interval_seconds(e, self.snap)
    }

    fn change(&self, name: &str, recommended: impl Into<String>) -> SysctlChange {
        SysctlChange {
            name: name.to_string(),
            current: self
                .snap
                .sysctl(name)
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" ")),
            recommended: recommended.into(),
        }
    }

    fn reuse_delay_sentence(&self) -> String {
        match self.version {
            Some(v) if v.at_least(6, 14) => format!(
                "On this kernel ({v}) a TIME_WAIT port is reused {} ms after it entered TIME_WAIT (net.ipv4.tcp_tw_reuse_delay).",
                self.report.settings.reuse_delay_ms
            ),
            Some(v) => format!(
                "On this kernel ({v}) a TIME_WAIT port is reused once a second has ticked since its last timestamped segment (Linux 6.14 made this tcp_tw_reuse_delay, in ms)."
            ),
            None => "Reuse happens about 1 s after TIME_WAIT began (tcp_tw_reuse_delay on 6.14+)."
                .into(),
        }
    }

    /// Widening the range to 1024-65535, reserving the listening ports
    /// inside it; nothing when the range or the reserved list is unknown
    /// (widening blindly could hand a service's port to connect()).
    fn wide_range_changes(&self) -> Vec<SysctlChange> {
        let s = &self.report.settings;
        let (Some(range), Some(current)) = (s.port_range.known(), s.reserved_ports.known()) else {
            return vec![];
        };
        if (range.low, range.high) == WIDE_RANGE {
            return vec![];
        }
        let mut v = vec![self.change(
            "net.ipv4.ip_local_port_range",
            format!("{} {}", WIDE_RANGE.0, WIDE_RANGE.1),
        )];
        // Services listening inside the new range keep their ports across restarts.
        let mut listening: Vec<u16> = self
            .snap
            .census
            .listening_ports
            .iter()
            .copied()
            .filter(|&p| p >= WIDE_RANGE.0 && !current.contains(p))
            .collect();
        listening.dedup();
        if !listening.is_empty() {
            let mut list = current.to_string();
            for p in listening {
                if !list.is_empty() {
                    list.push(',');
                }
                list.push_str(&p.to_string());
            }
            let normalized = list
                .parse::<ReservedPorts>()
                .map(|r| r.to_string())
                .unwrap_or(list);
            v.push(self.change("net.ipv4.ip_local_reserved_ports", normalized));
        }
        v
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

use timewait_model::text::thousands as int;

fn dest(d: &DestinationRow) -> String {
    let remote = match d.remote_ip {
        std::net::IpAddr::V6(v) => format!("[{v}]:{}", d.remote_port),
        v4 => format!("{v4}:{}", d.remote_port),
    };
    format!("{} → {remote}", d.local_ip)
}

/// Runs every rule. Findings come sorted: most severe first.
pub fn diagnose(input: &DoctorInput) -> Vec<Finding> {
    let ctx = Ctx {
        snap: input.now,
        report: analyse(input.now, GroupBy::Destination, usize::MAX),
        earlier: input
            .earlier
            .map(|e| (analyse(e, GroupBy::Destination, usize::MAX), e)),
        version: KernelVersion::parse(&input.now.kernel_release),
    };
    let rules: [fn(&Ctx) -> Vec<Finding>; 12] = [
        port_exhaustion_risk,
        tw_reuse_off,
        tw_reuse_loopback_only,
        timestamps_off,
        port_range_narrow,
        tw_bucket_overflow,
        tw_buckets_near_limit,
        tw_recycle_enabled,
        fin_timeout_misread,
        server_side_time_wait,
        tw_timeout_available,
        collection_problems,
    ];
    let mut out: Vec<Finding> = rules.iter().flat_map(|r| r(&ctx)).collect();
    for f in &mut out {
        if !f.sysctl_changes.is_empty() {
            let lines: Vec<String> = f
                .sysctl_changes
                .iter()
                .map(|c| format!("`{}`", c.conf_line()))
                .collect();
            f.fix.push_str(&format!(
                "\nTo keep it across reboots, put {} in /etc/sysctl.d/90-timewait.conf (or run `timewait tune --apply`).",
                lines.join(" and ")
            ));
        }
    }
    // nginx's findings, tied to what the census counted: a matched one
    // comes first within its severity (its fix is the real one).
    if let Some(t) = input.trace {
        out.extend(crate::trace::findings(t, &ctx.report));
    }
    let nginx = crate::nginx::findings(input.nginx, &ctx.report, &out);
    let mut all: Vec<(Finding, bool)> = nginx;
    all.extend(out.into_iter().map(|f| (f, false)));
    all.sort_by_key(|(f, matched)| (std::cmp::Reverse(f.severity), !matched));
    all.into_iter().map(|(f, _)| f).collect()
}

fn port_exhaustion_risk(ctx: &Ctx) -> Vec<Finding> {
    let s = &ctx.report.settings;
    let mut out = Vec::new();
    for d in &ctx.report.time_wait.by_destination {
        let (Some(usable), Some(ports_in_use)) = (d.usable_ports, d.ports_in_use) else {
            continue;
        };
        let usable = u64::from(usable);
        if usable == 0 {
            continue;
        }
        let used = ports_in_use as f64 / usable as f64;
        let severity = if used >= EXHAUSTION_CRITICAL {
            Severity::Critical
        } else if used >= EXHAUSTION_WARNING {
            Severity::Warning
        } else {
            continue;
        };
        let free = usable.saturating_sub(ports_in_use);
        let sustainable = match (d.max_new_connections_per_second, d.reuse_applies) {
            (Some(r), Some(true)) => format!("{r:.1}/s with tcp_tw_reuse"),
            (Some(r), _) => format!("{r:.1}/s (no reuse)"),
            (None, _) => {
                "unknown (it needs tcp_tw_reuse, tcp_timestamps and the TIME_WAIT length)".into()
            }
        };
        let timers = match &d.expiring {
            Some(e) => format!(
                "TIME_WAIT timers free {} ports within 10 s and {} within 60 s.",
                int(e.within_10s),
                int(e.within_60s)
            ),
            None => {
                "When TIME_WAIT timers free ports: unknown (a live count keeps no socket's timer)."
                    .into()
            }
        };
        let mut evidence = format!(
            "{}: {} of {} usable ports in use ({}): {} TIME_WAIT, {} ESTABLISHED, {} other, {} held by listeners/bind() in {}.\n\
             {timers}\n\
             Sustainable rate of new connections toward it (model): {sustainable}.",
            dest(d),
            int(ports_in_use),
            int(usable),
            pct(used),
            int(d.time_wait),
            int(d.established),
            int(d.other),
            s.bind_held_in_range.map(|&b| int(b)),
            s.port_range,
        );
        if free == 0 {
            evidence.push_str("\nExhausted now: connect() toward it fails with EADDRNOTAVAIL (\"Cannot assign requested address\").");
        }
        if let (Some(dt), Some((before, _))) = (ctx.interval_seconds(), ctx.earlier.as_ref()) {
            let prev = before
                .time_wait
                .by_destination
                .iter()
                .find(|p| {
                    (p.local_ip, p.remote_ip, p.remote_port)
                        == (d.local_ip, d.remote_ip, d.remote_port)
                })
                .and_then(|p| p.ports_in_use)
                .unwrap_or(0);
            let growth = (ports_in_use as f64 - prev as f64) / dt;
            if growth > 0.0 && free > 0 {
                evidence.push_str(&format!(
                    "\nPorts in use grew {growth:.1}/s over the last {dt:.1} s: at that rate the {} free ports last about {:.0} s.",
                    int(free),
                    free as f64 / growth
                ));
            } else {
                evidence.push_str(&format!(
                    "\nPorts in use changed {growth:+.1}/s over the last {dt:.1} s."
                ));
            }
        }
        let mut changes = Vec::new();
        let mut fix = format!(
            "Open fewer connections toward {}: reuse them (HTTP keep-alive, a client connection pool; for nginx: \
             `keepalive N;` in the upstream, `proxy_http_version 1.1;` and `proxy_set_header Connection \"\";`).",
            d.remote_ip
        );
        if d.reuse_applies == Some(false) && s.timestamps.known().is_some_and(|&t| t != 0) {
            fix.push_str("\nMeanwhile let connect() reuse TIME_WAIT ports: sysctl -w net.ipv4.tcp_tw_reuse=1.");
            changes.push(ctx.change("net.ipv4.tcp_tw_reuse", "1"));
        }
        let wide = ctx.wide_range_changes();
        if !wide.is_empty() {
            fix.push_str(&format!(
                "\nWiden the port range:\n{}",
                wide.iter()
                    .map(SysctlChange::command)
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
            changes.extend(wide);
        }
        fix.push_str(&spread_advice(ctx.version));
        out.push(Finding {
            code: "port-exhaustion-risk",
            severity,
            title: format!(
                "{} has {} of its ephemeral ports in use",
                dest(d),
                pct(used)
            ),
            evidence,
            fix,
            docs: SYSCTL_DOCS,
            sysctl_changes: changes,
            location: None,
        });
    }
    out
}

/// How to get more 4-tuples, for the kernel at hand.
fn spread_advice(version: Option<KernelVersion>) -> String {
    let mut s = String::from("\nOr spread over more 4-tuples: more destination addresses or ports");
    match version {
        Some(v) if !v.at_least(4, 2) => s.push_str(
            ", or more source addresses (this kernel predates IP_BIND_ADDRESS_NO_PORT, so bind(addr, 0) reserves a port for every destination)",
        ),
        _ => s.push_str(", or more source addresses (bind(addr, 0) with IP_BIND_ADDRESS_NO_PORT so the port is chosen per 4-tuple at connect())"),
    }
    s.push('.');
    if version.is_some_and(|v| v.at_least(6, 3)) {
        s.push_str(" Processes sharing the range can each get their own slice with the IP_LOCAL_PORT_RANGE socket option (Linux 6.3+).");
    }
    s
}

/// The busiest client-side destination by TIME_WAIT share of usable ports.
fn busiest<'a>(
    ctx: &'a Ctx,
    filter: impl Fn(&DestinationRow) -> bool,
) -> Option<(&'a DestinationRow, f64)> {
    ctx.report
        .time_wait
        .by_destination
        .iter()
        .filter_map(|d| Some((d, d.usable_ports.filter(|&u| u > 0)?)))
        .filter(|(d, _)| filter(d))
        .map(|(d, usable)| (d, d.time_wait as f64 / f64::from(usable)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

fn tw_reuse_off(ctx: &Ctx) -> Vec<Finding> {
    let s = &ctx.report.settings;
    if !s.tw_reuse.is(&TwReuse::Off) {
        return vec![];
    }
    let top = busiest(ctx, |_| true);
    let pressure = top.is_some_and(|(_, r)| r >= TW_PRESSURE);
    let mut evidence = format!(
        "net.ipv4.tcp_tw_reuse = 0: connect() never takes over a TIME_WAIT 4-tuple, so each port toward a destination waits the full {} s.",
        s.time_wait_seconds
    );
    if let Some((d, r)) = top {
        evidence.push_str(&format!(
            "\nBusiest destination: {} with {} TIME_WAIT ({} of {} usable ports).",
            dest(d),
            int(d.time_wait),
            pct(r),
            d.usable_ports.map_or("unknown".into(), |u| int(u.into()))
        ));
    }
    let mut fix = "sysctl -w net.ipv4.tcp_tw_reuse=1 — reuse applies only to outgoing connections and only when both ends use TCP timestamps, which keep old segments out of the new connection.".to_string();
    fix.push(' ');
    fix.push_str(&ctx.reuse_delay_sentence());
    vec![Finding {
        code: "tw-reuse-off",
        severity: if pressure {
            Severity::Warning
        } else {
            Severity::Info
        },
        title: "tcp_tw_reuse is off: outgoing connections cannot reuse TIME_WAIT ports".into(),
        evidence,
        fix,
        docs: SYSCTL_DOCS,
        sysctl_changes: vec![ctx.change("net.ipv4.tcp_tw_reuse", "1")],
        location: None,
    }]
}

fn tw_reuse_loopback_only(ctx: &Ctx) -> Vec<Finding> {
    let s = &ctx.report.settings;
    if !s.tw_reuse.is(&TwReuse::LoopbackOnly) {
        return vec![];
    }
    let Some((d, r)) = busiest(ctx, |d| !is_loopback(d.remote_ip)) else {
        return vec![];
    };
    if r < TW_PRESSURE {
        return vec![];
    }
    vec![Finding {
        code: "tw-reuse-loopback-only",
        severity: Severity::Warning,
        title: "tcp_tw_reuse=2 reuses TIME_WAIT only toward loopback, and remote destinations pile it up".into(),
        evidence: format!(
            "net.ipv4.tcp_tw_reuse = 2 (the default since 4.18): reuse only toward 127.0.0.0/8 and ::1.\n\
             {} holds {} TIME_WAIT ({} of {} usable ports) and cannot reuse them.",
            dest(d),
            int(d.time_wait),
            pct(r),
            d.usable_ports.map_or("unknown".into(), |u| int(u.into()))
        ),
        fix: format!(
            "sysctl -w net.ipv4.tcp_tw_reuse=1 (outgoing connections only; needs timestamps at both ends). {}",
            ctx.reuse_delay_sentence()
        ),
        docs: SYSCTL_DOCS,
        sysctl_changes: vec![ctx.change("net.ipv4.tcp_tw_reuse", "1")],
        location: None,
    }]
}

fn timestamps_off(ctx: &Ctx) -> Vec<Finding> {
    if !ctx.report.settings.timestamps.is(&0) {
        return vec![];
    }
    let gig = wrap_seconds(Bandwidth {
        bits_per_second: 1e9,
    });
    vec![Finding {
        code: "timestamps-off",
        severity: Severity::Warning,
        title: "tcp_timestamps is off: TIME_WAIT reuse and PAWS cannot work".into(),
        evidence: format!(
            "net.ipv4.tcp_timestamps = 0.\n\
             tcp_tw_reuse needs the old connection's timestamps, so no TIME_WAIT port is ever reused, whatever tcp_tw_reuse says.\n\
             PAWS needs them too: at 1 Gbit/s the sequence space wraps in {gig:.1} s (2^31 bytes / 125 MB/s), faster than the {} s TIME_WAIT, so only timestamps tell an old segment from a new one.",
            ctx.report.settings.time_wait_seconds
        ),
        fix: "sysctl -w net.ipv4.tcp_timestamps=1".into(),
        docs: SYSCTL_DOCS,
        sysctl_changes: vec![ctx.change("net.ipv4.tcp_timestamps", "1")],
        location: None,
    }]
}

fn port_range_narrow(ctx: &Ctx) -> Vec<Finding> {
    let s = &ctx.report.settings;
    let (Some(&range), Some(reserved), Some(&usable)) = (
        s.port_range.known(),
        s.reserved_ports.known(),
        s.usable_ports.known(),
    ) else {
        return vec![];
    };
    let range: PortRange = range;
    let reserved: ReservedPorts = reserved.clone();
    let in_range = reserved.count_in(range);
    let narrow = usable < DEFAULT_USABLE;
    let reserved_heavy = f64::from(in_range) > 0.10 * f64::from(range.len());
    if !narrow && !reserved_heavy {
        return vec![];
    }
    let wide = ConnectPorts::new(
        PortRange {
            low: WIDE_RANGE.0,
            high: WIDE_RANGE.1,
        },
        reserved.clone(),
    )
    .usable();
    let mut evidence = format!(
        "net.ipv4.ip_local_port_range = {range}: {} ports, of which {} are reserved (ip_local_reserved_ports), leaving {} usable per destination",
        int(range.len().into()),
        int(in_range.into()),
        int(usable.into())
    );
    let per_second = match s.time_wait_seconds.known() {
        Some(t) => format!("{:.1}", f64::from(usable) / t),
        None => "unknown".into(),
    };
    evidence.push_str(&format!(
        " — {per_second} new connections/s per destination at most without reuse ({} / {} s); the kernel default gives {} usable, {} to {} would give {}.",
        int(usable.into()),
        s.time_wait_seconds,
        int(DEFAULT_USABLE.into()),
        WIDE_RANGE.0,
        WIDE_RANGE.1,
        int(wide.into())
    ));
    let changes = ctx.wide_range_changes();
    vec![Finding {
        code: "port-range-narrow",
        severity: Severity::Warning,
        title: format!(
            "Only {} usable ephemeral ports per destination",
            int(usable.into())
        ),
        evidence,
        fix: if changes.is_empty() {
            "Reserve fewer ports inside the range (net.ipv4.ip_local_reserved_ports).".into()
        } else {
            format!(
                "{}\nListening ports inside the new range are reserved so services keep them across restarts.",
                changes
                    .iter()
                    .map(SysctlChange::command)
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        },
        docs: SYSCTL_DOCS,
        sysctl_changes: changes,
        location: None,
    }]
}

fn raised_buckets(ctx: &Ctx) -> Option<SysctlChange> {
    let s = &ctx.report.settings;
    let max = *s.max_tw_buckets.known()?;
    let tw = s
        .sockstat_time_wait
        .known()
        .copied()
        .unwrap_or(ctx.report.time_wait.total);
    let target = (max.max(tw) * 2).max(1024).next_multiple_of(1024);
    Some(ctx.change("net.ipv4.tcp_max_tw_buckets", target.to_string()))
}

fn tw_bucket_overflow(ctx: &Ctx) -> Vec<Finding> {
    // Without /proc/net/netstat the counter is unknown: only the kernel log
    // can show an overflow then (the collection problem says so).
    let now = ctx
        .snap
        .counter("TcpExt", "TCPTimeWaitOverflow")
        .unwrap_or(0);
    let logged: Vec<&String> = ctx
        .snap
        .kernel_log
        .iter()
        .filter(|l| l.contains("time wait bucket table overflow"))
        .collect();
    if now <= 0 && logged.is_empty() {
        return vec![];
    }
    let s = &ctx.report.settings;
    let tw = s
        .sockstat_time_wait
        .known()
        .copied()
        .unwrap_or(ctx.report.time_wait.total);
    let fill = s
        .max_tw_buckets
        .known()
        .filter(|&&m| m > 0)
        .map(|&m| tw as f64 / m as f64);
    let growing = ctx.interval_seconds().and_then(|dt| {
        let before = ctx
            .earlier
            .as_ref()?
            .1
            .counter("TcpExt", "TCPTimeWaitOverflow")?;
        Some(((now - before) as f64 / dt, dt))
    });
    let severity = match (growing, fill) {
        (Some((rate, _)), _) if rate > 0.0 => Severity::Critical,
        (_, Some(f)) if f >= 0.5 => Severity::Warning,
        _ => Severity::Info,
    };
    let mut evidence = format!(
        "TcpExt TCPTimeWaitOverflow = {}: that many closing sockets found the TIME_WAIT table full and skipped TIME_WAIT, \
         so a late FIN or a retransmission can hit a new connection on the same 4-tuple, or be answered with RST.",
        int(now.max(0) as u64)
    );
    if let Some(f) = fill {
        evidence.push_str(&format!(
            "\nThe table now holds {} of tcp_max_tw_buckets {} ({}).",
            int(tw),
            s.max_tw_buckets.map(|&m| int(m)),
            pct(f)
        ));
    }
    match growing {
        Some((rate, dt)) if rate > 0.0 => {
            evidence.push_str(&format!("\nOverflowing now: {rate:.1}/s over the last {dt:.1} s."))
        }
        Some((_, dt)) => evidence.push_str(&format!("\nNo overflow during the last {dt:.1} s.")),
        None if severity == Severity::Info => evidence.push_str(
            "\nThe counter counts since the namespace was created; the table is far from full now (use --interval to see whether it still grows).",
        ),
        None => {}
    }
    for l in logged.iter().take(3) {
        evidence.push_str(&format!("\nKernel log: {l}"));
    }
    let changes: Vec<SysctlChange> = if severity >= Severity::Warning {
        raised_buckets(ctx).into_iter().collect()
    } else {
        vec![]
    };
    vec![Finding {
        code: "tw-bucket-overflow",
        severity,
        title: "TIME_WAIT sockets were dropped because the table was full".into(),
        evidence,
        fix: format!(
            "{}Raise, never lower, net.ipv4.tcp_max_tw_buckets (each TIME_WAIT socket costs a few hundred bytes), and cut the churn with keep-alive.",
            changes
                .first()
                .map(|c| format!("{}. ", c.command()))
                .unwrap_or_default()
        ),
        docs: SYSCTL_DOCS,
        sysctl_changes: changes,
        location: None,
    }]
}

fn tw_buckets_near_limit(ctx: &Ctx) -> Vec<Finding> {
    let s = &ctx.report.settings;
    let (Some(&max), Some(&tw)) = (s.max_tw_buckets.known(), s.sockstat_time_wait.known()) else {
        return vec![];
    };
    let fill = if max == 0 {
        1.0
    } else {
        tw as f64 / max as f64
    };
    if fill < TW_TABLE_WARNING {
        return vec![];
    }
    let change = raised_buckets(ctx);
    vec![Finding {
        code: "tw-buckets-near-limit",
        severity: if fill >= 1.0 {
            Severity::Critical
        } else {
            Severity::Warning
        },
        title: format!("The TIME_WAIT table is {} full", pct(fill)),
        evidence: format!(
            "/proc/net/sockstat tw = {} of net.ipv4.tcp_max_tw_buckets = {} ({}); past the limit, closing sockets skip TIME_WAIT (TCPTimeWaitOverflow).",
            int(tw),
            int(max),
            pct(fill)
        ),
        fix: format!(
            "{}Raise, never lower, the limit; and reduce the churn that fills it (keep-alive).",
            change
                .as_ref()
                .map(|c| format!("{}. ", c.command()))
                .unwrap_or_default()
        ),
        docs: SYSCTL_DOCS,
        sysctl_changes: change.into_iter().collect(),
        location: None,
    }]
}

fn tw_recycle_enabled(ctx: &Ctx) -> Vec<Finding> {
    let Some(&v) = ctx
        .report
        .settings
        .tw_recycle
        .as_ref()
        .and_then(|r| r.known())
    else {
        return vec![];
    };
    if v == 0 {
        return vec![];
    }
    vec![Finding {
        code: "tw-recycle-enabled",
        severity: Severity::Critical,
        title: "tcp_tw_recycle is on: clients behind NAT lose connections".into(),
        evidence: format!(
            "net.ipv4.tcp_tw_recycle = {} (kernel {}). It drops SYNs whose timestamp is older than the last one seen from the same address; \
             clients behind one NAT have unrelated clocks, so their connections fail at random. Random per-connection timestamp offsets \
             (4.10) broke it for everyone, and Linux 4.12 removed it.",
            v,
            ctx.snap.kernel_release
        ),
        fix: "sysctl -w net.ipv4.tcp_tw_recycle=0 — use tcp_tw_reuse=1 (outgoing only) and keep-alive instead.".into(),
        docs: SYSCTL_DOCS,
        sysctl_changes: vec![ctx.change("net.ipv4.tcp_tw_recycle", "0")],
        location: None,
    }]
}

fn fin_timeout_misread(ctx: &Ctx) -> Vec<Finding> {
    let Some(&v) = ctx.report.settings.fin_timeout_seconds.known() else {
        return vec![];
    };
    if v >= 60 {
        return vec![];
    }
    vec![Finding {
        code: "fin-timeout-misread",
        severity: Severity::Info,
        title: "tcp_fin_timeout was lowered, but it does not shorten TIME_WAIT".into(),
        evidence: format!(
            "net.ipv4.tcp_fin_timeout = {v} s. It limits how long an orphaned connection waits in FIN_WAIT2 for the peer's FIN; \
             TIME_WAIT stays {} s (TCP_TIMEWAIT_LEN, fixed at build time in upstream Linux).",
            ctx.report.settings.time_wait_seconds
        ),
        fix: "Nothing to change for TIME_WAIT here; to relieve it, reuse connections (keep-alive) or enable tcp_tw_reuse=1 for outgoing ones.".into(),
        docs: SYSCTL_DOCS,
        sysctl_changes: vec![],
        location: None,
    }]
}

fn server_side_time_wait(ctx: &Ctx) -> Vec<Finding> {
    let server = &ctx.report.time_wait.server_side;
    let total: u64 = server.iter().map(|s| s.time_wait).sum();
    if total == 0 {
        return vec![];
    }
    let ports: Vec<String> = server
        .iter()
        .filter(|s| s.time_wait > 0)
        .take(5)
        .map(|s| format!("port {}: {}", s.local_port, int(s.time_wait)))
        .collect();
    // With the table size unknown, only the absolute threshold applies.
    let max = ctx
        .report
        .settings
        .max_tw_buckets
        .known()
        .copied()
        .unwrap_or(u64::MAX);
    let heavy = total >= SERVER_SIDE_WARNING || total as f64 >= 0.1 * max as f64;
    vec![Finding {
        code: "server-side-time-wait",
        severity: if heavy { Severity::Warning } else { Severity::Info },
        title: format!("{} TIME_WAIT sockets on service ports: this host closes first as a server", int(total)),
        evidence: format!(
            "{}.\nThey use no ephemeral ports (they share the service port) but fill the TIME_WAIT table, and show that the clients \
             (often a proxy speaking HTTP/1.0 or sending `Connection: close`) make a new connection per request.",
            ports.join(", ")
        ),
        fix: "Make the clients keep connections alive. Behind nginx: `keepalive N;` in the upstream block, `proxy_http_version 1.1;` \
              and `proxy_set_header Connection \"\";` where it proxies (a location that sets any proxy_set_header must repeat the inherited ones)."
            .into(),
        docs: NGINX_KEEPALIVE_DOCS,
        sysctl_changes: vec![],
        location: None,
    }]
}

fn tw_timeout_available(ctx: &Ctx) -> Vec<Finding> {
    let s = &ctx.report.settings;
    if !s.tw_timeout_sysctl {
        return vec![];
    }
    vec![Finding {
        code: "tw-timeout-available",
        severity: Severity::Info,
        title: "This kernel can change the TIME_WAIT length (tcp_tw_timeout)".into(),
        evidence: format!(
            "net.ipv4.tcp_tw_timeout = {} s exists here (Alibaba Cloud Linux 2/3; not upstream). TIME_WAIT lasts that long, and the rates in this report use it.",
            s.time_wait_seconds
        ),
        fix: "Shortening TIME_WAIT trades away the protection against late segments; prefer keep-alive and tcp_tw_reuse=1. If you lower it, keep it well above the longest RTT.".into(),
        docs: "https://www.alibabacloud.com/help/en/ecs/user-guide/change-the-tcp-time-wait-timeout-period",
        sysctl_changes: vec![],
        location: None,
    }]
}

/// What each value that can be unreadable is needed for: the one place
/// that says which checks a missing value leaves undone.
const NEEDED_BY: &[(&str, &[&str])] = &[
    (
        "net.ipv4.ip_local_port_range",
        &[
            "port-exhaustion-risk",
            "port-range-narrow",
            "the sustainable rates",
        ],
    ),
    (
        "net.ipv4.ip_local_reserved_ports",
        &[
            "port-exhaustion-risk",
            "port-range-narrow",
            "the sustainable rates",
        ],
    ),
    (
        "net.ipv4.tcp_tw_reuse",
        &[
            "tw-reuse-off",
            "tw-reuse-loopback-only",
            "the sustainable rates",
        ],
    ),
    (
        "net.ipv4.tcp_timestamps",
        &["timestamps-off", "the sustainable rates"],
    ),
    (
        "net.ipv4.tcp_tw_reuse_delay",
        &["the sustainable rates with reuse"],
    ),
    ("net.ipv4.tcp_tw_timeout", &["the sustainable rates"]),
    (
        "net.ipv4.tcp_max_tw_buckets",
        &[
            "tw-buckets-near-limit",
            "how full the table is for tw-bucket-overflow",
        ],
    ),
    ("net.ipv4.tcp_fin_timeout", &["fin-timeout-misread"]),
    ("net.ipv4.tcp_tw_recycle", &["tw-recycle-enabled"]),
    ("sockstat", &["tw-buckets-near-limit"]),
    ("netstat", &["tw-bucket-overflow (TCPTimeWaitOverflow)"]),
    (
        "kernel log (/dev/kmsg)",
        &["tw-bucket-overflow's kernel log lines (the only sign on kernels before 4.10)"],
    ),
    (
        "tcp",
        &["the IPv4 sockets of the /proc census: port-exhaustion-risk, server-side-time-wait"],
    ),
    (
        "tcp6",
        &["the IPv6 sockets of the /proc census: port-exhaustion-risk, server-side-time-wait"],
    ),
];

/// The advice for a problem, by its cause: "run as root" only where
/// permission was refused.
fn problem_fix(p: &Problem) -> String {
    match p.cause {
        Cause::Permission if p.what.starts_with("kernel log") => {
            "Run as root (reading /dev/kmsg needs CAP_SYSLOG) to see kernel log lines such as \"time wait bucket table overflow\".".into()
        }
        Cause::Permission => format!("Run as root to read {}.", p.what),
        Cause::Malformed => format!(
            "{} does not hold what the kernel prints, so it is shown as unknown rather than guessed. \
             If the snapshot was edited or comes from a patched kernel, take it again with `timewait snapshot` on that host.",
            p.what
        ),
        Cause::Missing => format!(
            "{} was not there: check that /proc is mounted for this namespace, or take the snapshot again with this version of `timewait snapshot`.",
            p.what
        ),
        _ => "Check that /proc is mounted for this namespace and readable.".into(),
    }
}

fn collection_problems(ctx: &Ctx) -> Vec<Finding> {
    ctx.report
        .problems
        .iter()
        .map(|p| {
            let minor = p.what.starts_with("kernel log")
                || (p.what == "netlink sock_diag" && p.error.contains("instead"));
            let mut evidence = format!("{}: {}", p.what, p.error);
            if let Some((_, checks)) = NEEDED_BY.iter().find(|(w, _)| *w == p.what) {
                evidence.push_str(&format!("\nNot checked without it: {}.", checks.join(", ")));
            }
            Finding {
                code: "collection-problem",
                severity: if minor {
                    Severity::Info
                } else {
                    Severity::Warning
                },
                title: match p.cause {
                    Cause::Malformed => format!("Could not understand {}", p.what),
                    _ => format!("Could not read {}", p.what),
                },
                evidence,
                fix: problem_fix(p),
                docs: SYSCTL_DOCS,
                sysctl_changes: vec![],
                location: None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
