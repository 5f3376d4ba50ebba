//! `timewait doctor` and `timewait tune`: snapshot → pure rules → findings →
//! report (and, for tune, the sysctl changes the findings carry).

use std::fmt::Write as _;
use std::time::Duration;

use timewait_doctor::NginxInput;
use timewait_doctor::{DoctorReport, Severity, TuneReport, plan};
use timewait_host::nginx_files::{NginxFiles, installed_version, masters};
use timewait_host::sysctl::{CONF_DIR, CONF_NAME, apply};
use timewait_host::tracefs::{TraceOptions, TraceTarget};
use timewait_host::{Target, collect, default_nginx_config};
use timewait_nginx::check::Version;
use timewait_nginx::parse_file;
use timewait_snapshot::Snapshot;

use crate::cli::{DoctorArgs, TuneArgs};
use crate::render::{self, Style, int};
use crate::status_cmd::{read_snapshot, target, via};
use crate::{Done, Failure};

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
    // The trace first: the snapshot then shows what the traced traffic left.
    let traced = match args.trace {
        Some(secs) => {
            let options = TraceOptions {
                duration: crate::trace_cmd::seconds("trace", secs)?,
                top: 5,
                syscalls: false,
                bpf: true,
            };
            let stop = crate::trace_cmd::stop_on_signals()?;
            let t = TraceTarget::One(target(&args.target));
            Some(crate::trace_cmd::traced(&t, &options, &stop, &mut |_| {})?.report)
        }
        None => None,
    };
    let (now, earlier) = match &args.from {
        Some(path) => (read_snapshot(path)?, None),
        None => observe(&target(&args.target), via(&args.target), args.interval)?,
    };
    let (configs, note) = nginx_configs(args);
    let report = DoctorReport::new(&now, earlier.as_ref(), &configs, note, traced);
    let text = if args.json {
        render::json(&report)?
    } else {
        render_doctor(&report, style)
    };
    Ok(Done {
        text,
        code: report.exit_code(),
    })
}

/// The nginx configurations to check: `--nginx PATH`, and those of the
/// nginx masters running in the target namespace (or, on this host's own
/// namespace with none running, /etc/nginx/nginx.conf if present). Also the
/// header line saying what was found; a configuration that does not parse
/// is said there, and its checks are skipped.
fn nginx_configs(args: &DoctorArgs) -> (Vec<NginxInput>, Option<String>) {
    let mut paths: Vec<(std::path::PathBuf, String)> = Vec::new();
    if let Some(p) = &args.nginx {
        paths.push((p.clone(), "--nginx".into()));
    }
    if args.from.is_none() {
        let t = target(&args.target);
        for m in masters(&t) {
            paths.push((m.config, format!("master pid {}", m.pid)));
        }
        if paths.is_empty() && t == Target::Current {
            paths.extend(default_nginx_config().map(|p| (p, "default path".to_string())));
        }
    }
    paths.sort();
    paths.dedup_by(|a, b| a.0 == b.0);
    if paths.is_empty() {
        return (vec![], None);
    }
    let version = installed_version().and_then(|v| Version::parse(&v));
    let mut configs = Vec::new();
    let mut notes = Vec::new();
    for (path, how) in paths {
        match parse_file(&NginxFiles, &path) {
            Ok(config) => {
                notes.push(format!("{} ({how}), checked", path.display()));
                configs.push(NginxInput { config, version });
            }
            Err(e) => notes.push(format!("{} ({how}) not checked: {e}", path.display())),
        }
    }
    let defaults = match version {
        Some(v) => format!("defaults of nginx {v}"),
        None => "no nginx -v: defaults before 1.29.7".into(),
    };
    (configs, Some(format!("{}; {defaults}", notes.join("; "))))
}

fn badge(st: &Style, s: Severity) -> String {
    let label = format!("[{}]", s.name().to_uppercase());
    match s {
        Severity::Critical => st.red(&st.bold(&label)),
        Severity::Warning => st.bold(&label),
        Severity::Info => st.dim(&label),
    }
}

fn render_doctor(r: &DoctorReport, st: &Style) -> String {
    let mut o = String::new();
    st.heading(
        &mut o,
        &format!(
            "timewait doctor — {} (Linux {}), namespace {}",
            r.hostname, r.kernel_release, r.namespace
        ),
    );
    let _ = writeln!(o, "  sockets: {}", render::state_list(&r.summary.states));
    if let Some(b) = &r.summary.busiest {
        let _ = writeln!(
            o,
            "  busiest destination: {} → {}:{} holds {} ports",
            b.local_ip,
            b.remote_ip,
            b.remote_port,
            int(b.ports)
        );
    }
    if let Some(dt) = r.interval_seconds {
        let _ = writeln!(o, "  sampled twice, {dt:.1} s apart");
    }
    if let Some(n) = &r.nginx {
        let _ = writeln!(o, "  nginx: {n}");
    }
    if let Some(t) = &r.trace {
        let _ = writeln!(
            o,
            "  traced {:.1} s: {} processes connected or closed, {} events, {} lost",
            t.duration_seconds,
            t.processes.len(),
            int(t.events),
            int(t.events_lost)
        );
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
    for f in &r.findings {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{} {} — {}",
            badge(st, f.severity),
            st.bold(f.code),
            f.title
        );
        if let Some(l) = &f.location {
            let _ = writeln!(o, "  {}", st.dim(&format!("at {}:{}", l.file, l.line)));
        }
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

/// `timewait tune`.
pub fn run_tune(args: &TuneArgs, st: &Style) -> Result<String, Failure> {
    let t = target(&args.target);
    let snap = collect(&t, via(&args.target), true)?;
    let mut changes = plan(&DoctorReport::new(&snap, None, &[], None, None).findings);
    let mut persisted_to = None;
    if args.apply {
        let pairs: Vec<(String, String)> = changes
            .iter()
            .map(|c| (c.name.clone(), c.recommended.clone()))
            .collect();
        let applied = apply(&t, &pairs)?;
        for (c, (_, now)) in changes.iter_mut().zip(applied.after) {
            c.after = Some(now);
        }
        persisted_to = applied.persisted_to.map(|p| p.display().to_string());
    }
    let report = TuneReport {
        namespace: snap.namespace.clone(),
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
            let _ = writeln!(o, "  {}", c.sysctl().command());
        }
        let _ = writeln!(o, "To keep them across reboots, {CONF_DIR}/{CONF_NAME}:");
        for c in &r.changes {
            let _ = writeln!(o, "  {}", c.sysctl().conf_line());
        }
    }
    o
}
