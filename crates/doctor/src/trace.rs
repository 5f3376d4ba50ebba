//! `doctor --trace`'s findings: the processes behind the TIME_WAIT and the
//! failed connects, from what `trace` counted, tied to the census.
//!
//! - `process-connect-errors`: a process whose connects failed (critical
//!   for EADDRNOTAVAIL: it is out of ports now).
//! - `process-closes-first`: a process that opens and closes connections
//!   toward one destination (it closes first, so each leaves a TIME_WAIT
//!   here); its rate times the TIME_WAIT length is the TIME_WAIT it keeps
//!   (a model prediction, said so), judged against the usable ports.
//! - `process-server-closes-first`: a server that closes accepted
//!   connections first (server-side TIME_WAIT; no ports, but buckets).

use std::net::IpAddr;

use timewait_analysis::StatusReport;
use timewait_kernel::errno::meaning;
use timewait_model::text::thousands as int;
use timewait_trace::{DestinationReport, ProcessReport, TraceReport};

use crate::finding::{Finding, Severity};
use crate::rules::EXHAUSTION_CRITICAL;

/// Processes named per code, at most.
const MAX_PER_CODE: usize = 5;
/// A process whose steady-state TIME_WAIT toward a destination would hold
/// this share of its usable ports is worth a warning.
const CLOSES_WARNING: f64 = 0.10;
const DOCS: &str = "https://docs.kernel.org/networking/ip-sysctl.html";

fn who(p: &ProcessReport) -> String {
    format!("pid {} ({})", p.pid, p.comm.as_deref().unwrap_or("exited"))
}

fn endpoint(d: &DestinationReport) -> String {
    match d.remote_ip.parse::<IpAddr>() {
        Ok(IpAddr::V6(v)) => format!("[{v}]:{}", d.remote_port),
        _ => format!("{}:{}", d.remote_ip, d.remote_port),
    }
}

fn secs(x: f64) -> String {
    format!("{x:.1}")
}

/// TIME_WAIT the census holds toward a destination now.
fn census_time_wait(report: &StatusReport, d: &DestinationReport) -> Option<u64> {
    let ip: IpAddr = d.remote_ip.parse().ok()?;
    let n: u64 = report
        .time_wait
        .by_destination
        .iter()
        .filter(|r| r.remote_ip == ip && r.remote_port == d.remote_port)
        .map(|r| r.time_wait)
        .sum();
    Some(n)
}

pub(crate) fn findings(trace: &TraceReport, report: &StatusReport) -> Vec<Finding> {
    let mut out = Vec::new();
    let t = trace.duration_seconds.max(f64::MIN_POSITIVE);
    let lost = if trace.events_lost > 0 {
        format!(
            "\nThe kernel dropped {} trace events: the counts are short.",
            int(trace.events_lost)
        )
    } else {
        String::new()
    };
    for p in trace
        .processes
        .iter()
        .filter(|p| p.error_count() > 0)
        .take(MAX_PER_CODE)
    {
        let exhausted = p.errors.contains_key("EADDRNOTAVAIL");
        let errors: Vec<String> = p
            .errors
            .iter()
            .map(|(k, v)| format!("{} {k}", int(*v)))
            .collect();
        let mut evidence = format!(
            "In {} s of tracing, {} made {} connects; {} failed: {}.",
            secs(t),
            who(p),
            int(p.connects),
            int(p.error_count()),
            errors.join(", ")
        );
        for k in p.errors.keys() {
            evidence.push_str(&format!("\n{k}: {}.", meaning(k)));
        }
        for d in p
            .destinations
            .iter()
            .filter(|d| !d.errors.is_empty())
            .take(3)
        {
            let n: u64 = d.errors.values().sum();
            evidence.push_str(&format!(
                "\nToward {}: {} failed of {} connects{}.",
                endpoint(d),
                int(n),
                int(d.connects),
                census_time_wait(report, d).filter(|&tw| tw > 0).map_or(
                    String::new(),
                    |tw| format!("; the census counts {} TIME_WAIT toward it now", int(tw))
                )
            ));
        }
        evidence.push_str(&lost);
        let fix = if exhausted {
            format!(
                "{} is out of ephemeral ports toward its destination: make it reuse connections (HTTP keep-alive, a connection pool, or `timewait proxy` in front of the backend). The sysctl findings buy headroom meanwhile.",
                who(p)
            )
        } else {
            "Check the destination named above: the errors are the service's (nothing listening, or no route), not the port range's.".into()
        };
        let top = p
            .destinations
            .iter()
            .find(|d| !d.errors.is_empty())
            .map_or(String::new(), |d| format!(" toward {}", endpoint(d)));
        out.push(Finding {
            code: "process-connect-errors",
            severity: if exhausted {
                Severity::Critical
            } else {
                Severity::Warning
            },
            title: format!(
                "{} failed {} connects{top} in {} s ({})",
                who(p),
                int(p.error_count()),
                secs(t),
                errors.join(", ")
            ),
            evidence,
            fix,
            docs: DOCS,
            sysctl_changes: vec![],
            location: None,
        });
    }
    let usable = report
        .settings
        .connect_ports()
        .map(|c| u64::from(c.usable()));
    let tw_seconds = report.settings.time_wait_seconds.known().copied();
    let mut closers: Vec<(&ProcessReport, &DestinationReport)> = trace
        .processes
        .iter()
        .filter_map(|p| Some((p, p.destinations.iter().max_by_key(|d| d.closed_first)?)))
        .filter(|(_, d)| d.closed_first > 0)
        .collect();
    closers.sort_by_key(|(_, d)| std::cmp::Reverse(d.closed_first));
    for (p, d) in closers.into_iter().take(MAX_PER_CODE) {
        let rate = d.closed_first as f64 / t;
        let held = tw_seconds.map(|s| rate * s);
        let share = held.zip(usable).map(|(h, u)| h / u.max(1) as f64);
        let severity = match share {
            Some(s) if s >= EXHAUSTION_CRITICAL => Severity::Critical,
            Some(s) if s >= CLOSES_WARNING => Severity::Warning,
            _ => Severity::Info,
        };
        let mut evidence = format!(
            "In {} s of tracing, {} connected {} times toward {} and closed first {} times: each first close left a TIME_WAIT socket on this host, holding its local port.",
            secs(t),
            who(p),
            int(d.connects),
            endpoint(d),
            int(d.closed_first)
        );
        match (held, usable, share) {
            (Some(h), Some(u), Some(s)) => evidence.push_str(&format!(
                "\nModel: {:.1} closes/s × {} s of TIME_WAIT = {} sockets held at steady state, {}.",
                rate,
                tw_seconds.unwrap_or_default(),
                int(h.round() as u64),
                if s > 1.0 {
                    format!("more than the {} usable ports toward it: at this rate its connects must fail (EADDRNOTAVAIL)", int(u))
                } else {
                    format!("{:.1}% of the {} usable ports toward it", s * 100.0, int(u))
                }
            )),
            _ => evidence.push_str(
                "\nThe port range or TIME_WAIT length is unknown, so the share of ports it holds is unknown.",
            ),
        }
        if let Some(tw) = census_time_wait(report, d).filter(|&tw| tw > 0) {
            evidence.push_str(&format!(
                "\nThe census counts {} TIME_WAIT toward it now.",
                int(tw)
            ));
        }
        evidence.push_str(&lost);
        out.push(Finding {
            code: "process-closes-first",
            severity,
            title: format!(
                "{} closed first {} times toward {} in {} s: it does not reuse connections",
                who(p),
                int(d.closed_first),
                endpoint(d),
                secs(t)
            ),
            evidence,
            fix: format!(
                "Make {} keep connections to {} open and reuse them (HTTP/1.1 keep-alive, a connection pool), or put `timewait proxy` between them; a port held in TIME_WAIT is then never needed.",
                who(p),
                endpoint(d)
            ),
            docs: DOCS,
            sysctl_changes: vec![],
            location: None,
        });
    }
    for p in trace
        .processes
        .iter()
        .filter(|p| p.server_closed_first > 0)
        .take(MAX_PER_CODE)
    {
        out.push(Finding {
            code: "process-server-closes-first",
            severity: Severity::Info,
            title: format!(
                "{} closed {} accepted connections first in {} s: server-side TIME_WAIT",
                who(p),
                int(p.server_closed_first),
                secs(t)
            ),
            evidence: format!(
                "A server that closes first keeps the TIME_WAIT ({:.1}/s from {}). It uses no ephemeral ports, but each socket counts toward tcp_max_tw_buckets.{lost}",
                p.server_closed_first as f64 / t,
                who(p)
            ),
            fix: "Let clients close first: keep connections alive (HTTP/1.1), and do not answer with `Connection: close` unless asked.".into(),
            docs: DOCS,
            sysctl_changes: vec![],
            location: None,
        });
    }
    out
}
