//! `timewait trace`: flags → a traced report → a table or JSON.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use timewait_host::tracefs::{StateSource, TraceOptions, TraceTarget, Traced, trace};
use timewait_trace::{ProcessReport, TraceReport};

use crate::Failure;
use crate::cli::TraceArgs;
use crate::render::{self, Align, Style, Table, int, real};
use crate::status_cmd::target_of;

/// The longest a trace runs, with --watch and no --duration.
const WATCH_LIMIT: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_DURATION: f64 = 10.0;

/// SIGINT and SIGTERM set this instead of killing the process, so the
/// instance is removed and the report so far is printed.
pub fn stop_on_signals() -> Result<Arc<AtomicBool>, Failure> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| Failure::Runtime(anyhow::anyhow!("installing a signal handler: {e}")))?;
    }
    Ok(stop)
}

/// Seconds from a flag, or a usage error naming it.
pub fn seconds(flag: &str, v: f64) -> Result<Duration, Failure> {
    if v.is_finite() && v > 0.0 && v <= WATCH_LIMIT.as_secs_f64() {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(Failure::Usage(format!(
            "--{flag}: must be seconds above 0 and at most {}, got {v}",
            WATCH_LIMIT.as_secs()
        )))
    }
}

/// Traces and tells the user what it did to tracefs.
pub fn traced(
    target: &TraceTarget,
    options: &TraceOptions,
    stop: &AtomicBool,
    each_second: &mut dyn FnMut(&TraceReport),
) -> Result<Traced, Failure> {
    let t = trace(target, options, stop, each_second)?;
    if t.tracefs.mounted_now {
        eprintln!(
            "timewait: mounted tracefs at {} (it was not mounted; left mounted)",
            t.tracefs.root.display()
        );
    }
    if let StateSource::Tracefs { why: Some(why) } = &t.state_source {
        eprintln!(
            "timewait: TCP state changes read from the tracefs event, which costs the traced workload more (the BPF filter could not be used: {why})"
        );
    }
    Ok(t)
}

/// `timewait trace`.
pub fn run_trace(a: &TraceArgs, st: &Style) -> Result<String, Failure> {
    let target = if a.all {
        TraceTarget::All
    } else {
        TraceTarget::One(target_of(a.netns.as_deref(), a.pid))
    };
    let watch = a.watch && std::io::stdout().is_terminal();
    if a.watch && !watch {
        eprintln!("timewait: --watch redraws only on a terminal; printing the report at the end");
    }
    let duration = match a.duration {
        Some(d) => seconds("duration", d)?,
        None if a.watch => WATCH_LIMIT,
        None => Duration::from_secs_f64(DEFAULT_DURATION),
    };
    let stop = stop_on_signals()?;
    let mut redraw = |r: &TraceReport| {
        if watch {
            let _ = render::emit(&format!("\x1b[H\x1b[2J{}", human(r, st)));
        }
    };
    let options = TraceOptions {
        duration,
        top: a.top,
        syscalls: a.syscalls,
        bpf: !a.no_bpf,
    };
    let t = traced(&target, &options, &stop, &mut redraw)?;
    if a.json {
        return Ok(render::json(&t.report)?);
    }
    let mut o = human(&t.report, st);
    if t.interrupted {
        let _ = writeln!(o, "  {}", st.red("interrupted: the numbers so far"));
    }
    Ok(o)
}

fn errors(m: &std::collections::BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {}", int(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn top_destination(p: &ProcessReport) -> String {
    p.destinations.first().map_or(String::new(), |d| {
        let mut parts = Vec::new();
        let failed: u64 = d.errors.values().sum();
        if failed > 0 {
            parts.push(format!("{} failed", int(failed)));
        }
        if d.closed_first > 0 {
            parts.push(format!("{} closed first", int(d.closed_first)));
        }
        if parts.is_empty() {
            parts.push(format!("{} connects", int(d.connects)));
        }
        let host = if d.remote_ip.contains(':') {
            format!("[{}]", d.remote_ip)
        } else {
            d.remote_ip.clone()
        };
        format!("{host}:{} ({})", d.remote_port, parts.join(", "))
    })
}

/// The report as a table, one row per process.
pub fn human(r: &TraceReport, st: &Style) -> String {
    let mut o = String::new();
    st.heading(
        &mut o,
        &format!(
            "timewait trace of {} for {} s: {} events, {} lost",
            r.scope,
            real(r.duration_seconds),
            int(r.events),
            int(r.events_lost)
        ),
    );
    if r.records_undecoded > 0 {
        let _ = writeln!(
            o,
            "  {}",
            st.red(&format!(
                "{} records did not decode (shorter than this kernel's format says): the counts below are short",
                int(r.records_undecoded)
            ))
        );
    }
    if r.events_lost > 0 {
        let _ = writeln!(
            o,
            "  {}",
            st.red("the kernel dropped events (buffers full): the counts below are short")
        );
    }
    if r.processes.is_empty() {
        let _ = writeln!(o, "  no TCP connects or closes by processes in scope");
    } else {
        let mut t = Table::new(&[
            ("pid", Align::Right),
            ("comm", Align::Left),
            ("netns", Align::Left),
            ("connects", Align::Right),
            ("failed", Align::Left),
            ("closed first", Align::Right),
            ("server closed first", Align::Right),
            ("resets", Align::Right),
            ("top destination", Align::Left),
        ]);
        for p in &r.processes {
            t.row(vec![
                p.pid.to_string(),
                p.comm.clone().unwrap_or_else(|| "?".into()),
                p.netns.clone().unwrap_or_else(|| "?".into()),
                int(p.connects),
                errors(&p.errors),
                int(p.closed_first),
                int(p.server_closed_first),
                int(p.resets),
                top_destination(p),
            ]);
        }
        o.push_str(&t.render(st, "  "));
    }
    let _ = writeln!(
        o,
        "  total: {} connects, {} failed, {} closed first (TIME_WAIT made here), {} server-side",
        int(r.totals.connects),
        int(r.totals.errors.values().sum()),
        int(r.totals.closed_first),
        int(r.totals.server_closed_first)
    );
    for k in r.totals.errors.keys() {
        let _ = writeln!(o, "  {k}: {}", timewait_kernel::errno::meaning(k));
    }
    for (n, what) in [
        (
            r.unattributed,
            "events in scope belonged to no process that could be named",
        ),
        (
            r.unplaced,
            "events were left out: their process exited (or the socket was older than the trace) before its namespace could be read",
        ),
    ] {
        if n > 0 {
            let _ = writeln!(o, "  {}", st.dim(&format!("{} {what}", int(n))));
        }
    }
    o
}
