//! `timewait status` and `timewait snapshot`: observe (host crate) →
//! snapshot → analyse (analysis crate) → render. `--from` skips the first step,
//! so an offline analysis runs exactly the code a live one does.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use timewait_analysis::rates::{Rates, rates};
use timewait_analysis::{GroupBy, Reading, StatusReport, analyse};
use timewait_host::{HostError, Target, Via, collect};
use timewait_snapshot::{CensusSource, Snapshot};

use crate::Failure;
use crate::cli::{GroupByArg, SnapshotArgs, StatusArgs, TargetArgs, ViaArg};
use crate::render::{self, Align, Style, Table, int, real};

pub fn via(t: &TargetArgs) -> Via {
    match t.via {
        ViaArg::Auto => Via::Auto,
        ViaArg::Netlink => Via::Netlink,
        ViaArg::Proc => Via::Proc,
    }
}

pub fn target(t: &TargetArgs) -> Target {
    target_of(t.netns.as_deref(), t.pid)
}

/// `--netns NAME` or `--pid PID` (clap makes them exclusive), or here.
pub fn target_of(netns: Option<&str>, pid: Option<u32>) -> Target {
    match (netns, pid) {
        (Some(n), _) => Target::Netns(n.to_string()),
        (None, Some(p)) => Target::Pid(p),
        (None, None) => Target::Current,
    }
}

impl From<HostError> for Failure {
    fn from(e: HostError) -> Failure {
        match e {
            HostError::NoSuchNetns(_) | HostError::NoSuchPid(_) | HostError::BadNetnsName(_) => {
                Failure::Usage(e.to_string())
            }
            HostError::NotRoot(_) => Failure::Runtime(anyhow::anyhow!(
                "{e}. `timewait tune` without --apply shows the changes"
            )),
            other => Failure::Runtime(other.into()),
        }
    }
}

/// Reads a snapshot file; a bad file is bad input (exit 2) naming the file.
pub fn read_snapshot(path: &Path) -> Result<Snapshot, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Usage(format!("--from {}: {e}", path.display())))?;
    Snapshot::from_json(&text)
        .map_err(|e| Failure::Usage(format!("--from {}: {e}", path.display())))
}

fn group_by(b: GroupByArg) -> GroupBy {
    match b {
        GroupByArg::Destination => GroupBy::Destination,
        GroupByArg::RemoteIp => GroupBy::RemoteIp,
        GroupByArg::LocalIp => GroupBy::LocalIp,
        GroupByArg::State => GroupBy::State,
    }
}

/// `timewait snapshot`.
pub fn run_snapshot(args: &SnapshotArgs) -> Result<String, Failure> {
    let snap = collect(&target(&args.target), via(&args.target), true)?;
    let json = snap.to_json();
    match &args.output {
        None => Ok(json),
        Some(path) => {
            // Write beside the target, then rename: a reader never sees half a file.
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, &json)
                .and_then(|()| std::fs::rename(&tmp, path))
                .map_err(|e| Failure::Runtime(anyhow::anyhow!("{}: {e}", path.display())))?;
            Ok(String::new())
        }
    }
}

/// `timewait status`.
pub fn run_status(args: &StatusArgs, style: &Style) -> Result<String, Failure> {
    if args.top == 0 {
        return Err(Failure::Usage("--top: must be at least 1".into()));
    }
    let by = group_by(args.by);
    if let Some(path) = &args.from {
        let report = analyse(&read_snapshot(path)?, by, args.top);
        return render_once(&report, args, style, None);
    }
    let t = target(&args.target);
    let v = via(&args.target);
    let Some(secs) = args.watch else {
        // status shows no kernel log: it does not pay for reading it.
        let snap = collect(&t, v, false)?;
        return render_once(&analyse(&snap, by, args.top), args, style, None);
    };
    if !(secs.is_finite() && (0.1..=3600.0).contains(&secs)) {
        return Err(Failure::Usage(format!(
            "--watch: must be between 0.1 and 3600 seconds, got {secs}"
        )));
    }
    watch(&t, v, by, secs, args, style)
}

fn render_once(
    report: &StatusReport,
    args: &StatusArgs,
    style: &Style,
    rates: Option<&Rates>,
) -> Result<String, Failure> {
    if args.json {
        #[derive(serde::Serialize)]
        struct WithRates<'a> {
            #[serde(flatten)]
            report: &'a StatusReport,
            #[serde(skip_serializing_if = "Option::is_none")]
            rates: Option<&'a Rates>,
        }
        let v = WithRates { report, rates };
        return Ok(if args.watch.is_some() {
            let mut s = serde_json::to_string(&v).map_err(anyhow::Error::from)?;
            s.push('\n');
            s
        } else {
            render::json(&v)?
        });
    }
    Ok(render_status(report, args.by, style, rates))
}

fn watch(
    t: &Target,
    v: Via,
    by: GroupBy,
    secs: f64,
    args: &StatusArgs,
    style: &Style,
) -> Result<String, Failure> {
    let interval = Duration::from_secs_f64(secs);
    let clear = std::io::IsTerminal::is_terminal(&std::io::stdout()) && !args.json;
    let mut prev: Option<Snapshot> = None;
    let mut n = 0u64;
    loop {
        let started = Instant::now();
        let snap = collect(t, v, false)?;
        let report = analyse(&snap, by, args.top);
        let r = prev.as_ref().map(|p| rates(p, &snap));
        let mut frame = render_once(&report, args, style, r.as_ref())?;
        if clear {
            frame.insert_str(0, "\x1b[2J\x1b[H");
        }
        render::emit(&frame).map_err(|e| Failure::Runtime(e.into()))?;
        if render::stdout_closed() {
            return Ok(String::new());
        }
        prev = Some(snap);
        n += 1;
        if args.count.is_some_and(|c| n >= c) {
            return Ok(String::new());
        }
        std::thread::sleep(interval.saturating_sub(started.elapsed()));
    }
}

fn pct(r: f64) -> String {
    format!("{}%", real(r * 100.0))
}

fn render_status(r: &StatusReport, by: GroupByArg, st: &Style, rates: Option<&Rates>) -> String {
    let mut o = String::new();
    st.heading(
        &mut o,
        &format!(
            "TCP sockets in namespace {} on {}, Linux {} (read via {})",
            r.namespace,
            r.hostname,
            r.kernel_release,
            match r.census_source {
                CensusSource::Netlink => "netlink sock_diag",
                CensusSource::Proc => "/proc/net/tcp: netlink was unavailable",
                CensusSource::Live => "a live count by BPF programs",
            }
        ),
    );
    let _ = writeln!(o, "  states: {}", render::state_list(&r.states));
    let s = &r.settings;
    let _ = writeln!(
        o,
        "  ports: ip_local_port_range {} → {} usable per destination; {} held by bind()/listeners; tcp_tw_reuse={}, tcp_timestamps={}, TIME_WAIT {} s",
        s.port_range,
        s.usable_ports.map(|&u| int(u.into())),
        s.bind_held_in_range.map(|&b| int(b)),
        s.tw_reuse,
        s.timestamps,
        s.time_wait_seconds.map(|&t| real(t)),
    );
    if let (Reading::Known(tw), Reading::Known(max)) = (&s.sockstat_time_wait, &s.max_tw_buckets) {
        let (tw, max) = (*tw, *max);
        let _ = writeln!(
            o,
            "  TIME_WAIT table: {} of tcp_max_tw_buckets {} ({})",
            int(tw),
            int(max),
            pct(if max == 0 {
                1.0
            } else {
                tw as f64 / max as f64
            })
        );
    }
    if let Some(rt) = rates {
        let _ = writeln!(
            o,
            "  change over {} s: TIME_WAIT {}/s{}{}",
            real(rt.interval_seconds),
            signed(rt.time_wait_per_second),
            rt.entering_time_wait_per_second
                .map_or(String::new(), |v| format!(
                    ", entering TIME_WAIT {}/s",
                    real(v)
                )),
            rt.active_opens_per_second
                .map_or(String::new(), |v| format!(", connect() {}/s", real(v))),
        );
    }
    let tw = &r.time_wait;
    match by {
        GroupByArg::State => {}
        GroupByArg::RemoteIp | GroupByArg::LocalIp => {
            let rows = tw.by_remote_ip.as_ref().or(tw.by_local_ip.as_ref());
            let _ = writeln!(o);
            st.heading(
                &mut o,
                if by == GroupByArg::RemoteIp {
                    "By remote address"
                } else {
                    "By local address"
                },
            );
            let mut t = Table::new(&[
                ("address", Align::Left),
                ("destinations", Align::Right),
                ("TIME_WAIT", Align::Right),
                ("ESTAB", Align::Right),
                ("lowest headroom", Align::Right),
            ]);
            for a in rows.into_iter().flatten() {
                t.row(vec![
                    a.ip.to_string(),
                    int(a.destinations),
                    int(a.time_wait),
                    int(a.established),
                    a.min_headroom_ratio.map_or_else(unknown, pct),
                ]);
            }
            o.push_str(&t.render(st, "  "));
        }
        GroupByArg::Destination => {
            let _ = writeln!(o);
            st.heading(
                &mut o,
                &format!(
                    "Outgoing connections by destination ({} of {}, most ports in use first)",
                    int(tw.by_destination.len() as u64),
                    int(tw.destinations_total as u64)
                ),
            );
            if tw.by_destination.is_empty() {
                let _ = writeln!(o, "  none");
            } else {
                let mut cols = vec![
                    ("local", Align::Left),
                    ("remote", Align::Left),
                    ("TIME_WAIT", Align::Right),
                    ("ESTAB", Align::Right),
                    ("ports in use", Align::Right),
                    ("headroom", Align::Right),
                    ("expire ≤10s", Align::Right),
                    ("≤30s", Align::Right),
                    ("≤60s", Align::Right),
                    ("max new/s (model)", Align::Right),
                ];
                if rates.is_some() {
                    cols.push(("TIME_WAIT Δ/s", Align::Right));
                }
                let mut t = Table::new(&cols);
                for d in &tw.by_destination {
                    let headroom = d.headroom_ratio.map_or_else(unknown, pct);
                    let mut row = vec![
                        d.local_ip.to_string(),
                        remote(d.remote_ip, d.remote_port),
                        int(d.time_wait),
                        int(d.established),
                        format!(
                            "{} / {}",
                            d.ports_in_use.map_or_else(unknown, int),
                            d.usable_ports.map_or_else(unknown, |u| int(u.into()))
                        ),
                        if d.headroom_ratio.is_some_and(|h| h < 0.1) {
                            st.red(&headroom)
                        } else {
                            headroom
                        },
                        d.expiring
                            .as_ref()
                            .map_or_else(unknown, |e| int(e.within_10s)),
                        d.expiring
                            .as_ref()
                            .map_or_else(unknown, |e| int(e.within_30s)),
                        d.expiring
                            .as_ref()
                            .map_or_else(unknown, |e| int(e.within_60s)),
                        match d.max_new_connections_per_second {
                            Some(r) => format!(
                                "{}{}",
                                real(r),
                                if d.reuse_applies == Some(true) {
                                    " (reuse)"
                                } else {
                                    ""
                                }
                            ),
                            None => unknown(),
                        },
                    ];
                    if let Some(rt) = rates {
                        let key = (d.local_ip, d.remote_ip, d.remote_port);
                        row.push(signed(rt.by_destination.get(&key).copied().unwrap_or(0.0)));
                    }
                    t.row(row);
                }
                o.push_str(&t.render(st, "  "));
            }
        }
    }
    if tw.server_side.iter().any(|s| s.time_wait > 0) {
        let _ = writeln!(o);
        st.heading(
            &mut o,
            "Server-side TIME_WAIT (this host closed first, as the server)",
        );
        let mut t = Table::new(&[
            ("local port", Align::Right),
            ("TIME_WAIT", Align::Right),
            ("ESTAB", Align::Right),
        ]);
        for s in tw.server_side.iter().filter(|s| s.time_wait > 0) {
            t.row(vec![
                s.local_port.to_string(),
                int(s.time_wait),
                int(s.established),
            ]);
        }
        o.push_str(&t.render(st, "  "));
        let _ = writeln!(
            o,
            "  {}",
            st.dim("Clients (or the proxy in front) that keep connections alive remove these.")
        );
    }
    if !r.problems.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{}",
            st.bold("Could not read or understand (shown as unknown)")
        );
        for p in &r.problems {
            let _ = writeln!(o, "  {}: {}", p.what, p.error);
        }
    }
    o
}

/// A number that depends on a value that could not be read.
fn unknown() -> String {
    "unknown".into()
}

fn remote(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v) => format!("{v}:{port}"),
        IpAddr::V6(v) => format!("[{v}]:{port}"),
    }
}

fn signed(x: f64) -> String {
    if x > 0.0 {
        format!("+{}", real(x))
    } else {
        real(x)
    }
}
