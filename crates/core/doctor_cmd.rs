//! `timewait doctor` and `timewait tune`: snapshot → pure rules → findings →
//! report (and, for tune, the sysctl changes the findings carry).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use timewait_census::Snapshot;
use timewait_doctor::{DoctorInput, Finding, Severity, SysctlChange, diagnose};
use timewait_host::sysctl::{CONF_NAME, write_conf, write_runtime};
use timewait_host::{Target, collect};

use crate::cli::{DoctorArgs, TuneArgs};
use crate::render::{self, Style, int};
use crate::status_cmd::{read_snapshot, target, via};
use crate::{Done, Failure};

const NGINX_DEFAULT: &str = "/etc/nginx/nginx.conf";

#[derive(Serialize)]
struct Summary {
    sockets: u64,
    states: std::collections::BTreeMap<String, u64>,
    time_wait: u64,
    destinations: usize,
}

#[derive(Serialize)]
struct DoctorReport<'a> {
    hostname: &'a str,
    kernel_release: &'a str,
    namespace: &'a str,
    taken_at_unix_ms: u64,
    interval_seconds: Option<f64>,
    summary: Summary,
    nginx: Option<String>,
    worst_severity: Option<Severity>,
    findings: &'a [Finding],
}

/// Takes the snapshot(s) doctor and tune judge.
fn observe(
    t: &Target,
    via: timewait_host::Via,
    interval: Option<f64>,
) -> Result<(Snapshot, Option<Snapshot>), Failure> {
    let Some(secs) = interval else {
        return Ok((collect(t, via, true)?, None));
    };
    if !(secs.is_finite() && (0.1..=600.0).contains(&secs)) {
        return Err(Failure::Usage(format!(
            "--interval: must be between 0.1 and 600 seconds, got {secs}"
        )));
    }
    // Only the later snapshot's kernel log is judged: read it once.
    let first = collect(t, via, false)?;
    std::thread::sleep(Duration::from_secs_f64(secs));
    Ok((collect(t, via, true)?, Some(first)))
}

/// `timewait doctor`.
pub fn run_doctor(args: &DoctorArgs, style: &Style) -> Result<Done, Failure> {
    let (now, earlier) = match &args.from {
        Some(path) => (read_snapshot(path)?, None),
        None => observe(&target(&args.target), via(&args.target), args.interval)?,
    };
    let findings = diagnose(&DoctorInput {
        now: &now,
        earlier: earlier.as_ref(),
    });
    let nginx = nginx_note(args);
    let worst = findings.iter().map(|f| f.severity).max();
    let interval_seconds = earlier
        .as_ref()
        .map(|e| now.taken_at_unix_ms.saturating_sub(e.taken_at_unix_ms) as f64 / 1000.0);
    let report = DoctorReport {
        hostname: &now.hostname,
        kernel_release: &now.kernel_release,
        namespace: &now.namespace,
        taken_at_unix_ms: now.taken_at_unix_ms,
        interval_seconds,
        summary: Summary {
            sockets: now.census.sockets,
            states: now.census.states.clone(),
            time_wait: now.census.states.get("TIME_WAIT").copied().unwrap_or(0),
            destinations: now.census.destinations.len(),
        },
        nginx,
        worst_severity: worst,
        findings: &findings,
    };
    let text = if args.json {
        render::json(&report)?
    } else {
        render_doctor(&report, &now, style)
    };
    Ok(Done {
        text,
        code: worst.map_or(0, Severity::exit_code),
    })
}

fn nginx_note(args: &DoctorArgs) -> Option<String> {
    let path = match &args.nginx {
        Some(p) => p.clone(),
        None if args.from.is_none() && Path::new(NGINX_DEFAULT).exists() => NGINX_DEFAULT.into(),
        None => return None,
    };
    Some(format!(
        "{} found; the nginx checks (upstream keepalive, HTTP/1.0 upstreams, Connection forwarding, proxy_set_header inheritance) are not built yet",
        path.display()
    ))
}

fn badge(st: &Style, s: Severity) -> String {
    let label = format!("[{}]", s.name().to_uppercase());
    match s {
        Severity::Critical => st.red(&st.bold(&label)),
        Severity::Warning => st.bold(&label),
        Severity::Info => st.dim(&label),
    }
}

fn render_doctor(r: &DoctorReport, snap: &Snapshot, st: &Style) -> String {
    let mut o = String::new();
    st.heading(
        &mut o,
        &format!(
            "timewait doctor — {} (Linux {}), namespace {}",
            r.hostname, r.kernel_release, r.namespace
        ),
    );
    let _ = writeln!(o, "  sockets: {}", render::state_list(&r.summary.states));
    let busiest = snap
        .census
        .destinations
        .iter()
        .max_by_key(|d| d.in_range)
        .map(|d| {
            format!(
                "{} → {}:{} holds {} ports",
                d.local_ip,
                d.remote_ip,
                d.remote_port,
                int(d.in_range)
            )
        });
    if let Some(b) = busiest {
        let _ = writeln!(o, "  busiest destination: {b}");
    }
    if let Some(dt) = r.interval_seconds {
        let _ = writeln!(o, "  sampled twice, {dt:.1} s apart");
    }
    if let Some(n) = &r.nginx {
        let _ = writeln!(o, "  nginx: {n}");
    }
    let _ = writeln!(o);
    if r.findings.is_empty() {
        let _ = writeln!(
            o,
            "{}",
            st.green("No TIME_WAIT or ephemeral-port trouble found.")
        );
        return o;
    }
    let count = |s| r.findings.iter().filter(|f| f.severity == s).count();
    let _ = writeln!(
        o,
        "{} finding(s): {} critical, {} warning, {} info",
        r.findings.len(),
        count(Severity::Critical),
        count(Severity::Warning),
        count(Severity::Info)
    );
    for f in r.findings {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{} {} — {}",
            badge(st, f.severity),
            st.bold(f.code),
            f.title
        );
        let _ = writeln!(o, "  {}", st.bold("Evidence"));
        for l in f.evidence.lines() {
            let _ = writeln!(o, "    {l}");
        }
        let _ = writeln!(o, "  {}", st.bold("Fix"));
        for l in f.fix.lines() {
            let _ = writeln!(o, "    {l}");
        }
        for c in &f.sysctl_changes {
            let now = match c.current.as_deref() {
                Some("") => "empty".to_string(),
                Some(v) => v.to_string(),
                None => "unknown".to_string(),
            };
            let _ = writeln!(o, "    {}", st.dim(&format!("now: {} = {now}", c.name)));
        }
        let _ = writeln!(o, "  {} {}", st.dim("Docs:"), st.dim(f.docs));
    }
    if let Some(first) = r.findings.first().filter(|f| f.severity > Severity::Info) {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{} {}",
            st.bold("What to do first:"),
            first.fix.lines().next().unwrap_or_default()
        );
        if r.findings.iter().any(|f| !f.sysctl_changes.is_empty()) {
            let _ = writeln!(
                o,
                "  `timewait tune` shows the sysctl changes as a diff; `timewait tune --apply` sets them."
            );
        }
    }
    o
}

/// The changes all findings recommend, one per sysctl, leaving out those
/// already in effect. For the same sysctl the most severe finding's value
/// wins (findings come sorted by severity).
pub fn planned_changes(findings: &[Finding]) -> Vec<(SysctlChange, Vec<&'static str>)> {
    let mut out: Vec<(SysctlChange, Vec<&'static str>)> = Vec::new();
    for f in findings {
        for c in &f.sysctl_changes {
            if c.current.as_deref() == Some(c.recommended.as_str()) {
                continue;
            }
            match out.iter_mut().find(|(x, _)| x.name == c.name) {
                Some((_, why)) => {
                    if !why.contains(&f.code) {
                        why.push(f.code);
                    }
                }
                None => out.push((c.clone(), vec![f.code])),
            }
        }
    }
    out
}

#[derive(Serialize)]
struct TuneReport<'a> {
    namespace: &'a str,
    applied: bool,
    changes: Vec<TuneChange>,
    persisted_to: Option<String>,
}

#[derive(Serialize)]
struct TuneChange {
    name: String,
    current: Option<String>,
    recommended: String,
    because: Vec<&'static str>,
    after: Option<String>,
}

/// `timewait tune`.
pub fn run_tune(args: &TuneArgs, st: &Style) -> Result<String, Failure> {
    if args.apply && !nix::unistd::geteuid().is_root() {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "tune --apply needs root (it writes /proc/sys and /etc/sysctl.d); nothing was changed. `timewait tune` without --apply shows the changes"
        )));
    }
    let t = target(&args.target);
    let snap = collect(&t, via(&args.target), true)?;
    let findings = diagnose(&DoctorInput {
        now: &snap,
        earlier: None,
    });
    let plan = planned_changes(&findings);
    let mut changes: Vec<TuneChange> = plan
        .iter()
        .map(|(c, why)| TuneChange {
            name: c.name.clone(),
            current: c.current.clone(),
            recommended: c.recommended.clone(),
            because: why.clone(),
            after: None,
        })
        .collect();
    let mut persisted_to = None;
    if args.apply && !changes.is_empty() {
        let pairs: Vec<(String, String)> = changes
            .iter()
            .map(|c| (c.name.clone(), c.recommended.clone()))
            .collect();
        let after = write_runtime(&t, &pairs)?;
        for (c, (_, now)) in changes.iter_mut().zip(after) {
            c.after = Some(now);
        }
        if t == Target::Current {
            let path = write_conf(Path::new("/etc/sysctl.d"), &pairs)
                .map_err(|e| Failure::Runtime(anyhow::anyhow!("/etc/sysctl.d/{CONF_NAME}: {e}")))?;
            persisted_to = Some(path.display().to_string());
        }
    }
    let report = TuneReport {
        namespace: &snap.namespace,
        applied: args.apply,
        changes,
        persisted_to,
    };
    if args.json {
        return Ok(render::json(&report)?);
    }
    Ok(render_tune(&report, &t, st))
}

fn render_tune(r: &TuneReport, t: &Target, st: &Style) -> String {
    let mut o = String::new();
    if r.changes.is_empty() {
        let _ = writeln!(
            o,
            "No sysctl changes recommended for namespace {}.",
            r.namespace
        );
        return o;
    }
    st.heading(
        &mut o,
        &format!(
            "Sysctl changes doctor recommends for namespace {}{}",
            r.namespace,
            if r.applied {
                " (applied)"
            } else {
                " (dry run; --apply sets them)"
            }
        ),
    );
    for c in &r.changes {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "  {}   {}",
            st.bold(&c.name),
            st.dim(&format!("because: {}", c.because.join(", ")))
        );
        let _ = writeln!(
            o,
            "  {}",
            st.red(&format!(
                "- {}",
                c.current.as_deref().unwrap_or("(unknown)")
            ))
        );
        let _ = writeln!(o, "  {}", st.green(&format!("+ {}", c.recommended)));
        if let Some(a) = &c.after {
            let _ = writeln!(o, "  {}", st.dim(&format!("  now reads {a}")));
        }
    }
    let _ = writeln!(o);
    if r.applied {
        match (&r.persisted_to, t) {
            (Some(p), _) => {
                let _ = writeln!(
                    o,
                    "Set at runtime and written to {p} (the previous file kept as {p}.bak)."
                );
            }
            (None, _) => {
                let _ = writeln!(
                    o,
                    "Set at runtime in namespace {} only (a namespace's sysctls are not read from /etc/sysctl.d).",
                    r.namespace
                );
            }
        }
    } else {
        let _ = writeln!(o, "As commands:");
        for c in &r.changes {
            let sc = SysctlChange {
                name: c.name.clone(),
                current: None,
                recommended: c.recommended.clone(),
            };
            let _ = writeln!(o, "  {}", sc.command());
        }
        let _ = writeln!(o, "To keep them across reboots, /etc/sysctl.d/{CONF_NAME}:");
        for c in &r.changes {
            let _ = writeln!(o, "  {} = {}", c.name, c.recommended);
        }
    }
    o
}
