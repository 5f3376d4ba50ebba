//! `timewait lab`: the scenarios, run in throw-away namespaces, printed as
//! measured beside predicted, and optionally an HTML report.

use std::fmt::Write as _;
use std::io::Write as _;

use timewait_lab::{ScenarioReport, run_all, scenario};

use crate::Failure;
use crate::cli::LabArgs;
use crate::render::{self, Align, Style, Table, int};

fn opt(v: Option<u64>) -> String {
    v.map_or("unknown".into(), int)
}

fn human(s: &ScenarioReport, st: &Style) -> String {
    let mut o = String::new();
    st.heading(&mut o, &format!("{} — {}", s.name, s.claim));
    for (k, v) in &s.settings {
        let _ = writeln!(o, "  {k} = {v}");
    }
    let mut t = Table::new(&[
        ("", Align::Left),
        ("attempted", Align::Right),
        ("succeeded", Align::Right),
        ("EADDRNOTAVAIL", Align::Right),
        ("TIME_WAIT peak", Align::Right),
        ("overflow", Align::Right),
        ("reused", Align::Right),
    ]);
    for (label, x) in [
        ("measured (kernel)", &s.measured),
        ("predicted", &s.predicted),
    ] {
        t.row(vec![
            label.into(),
            int(x.attempted),
            int(x.succeeded),
            int(x.failed_eaddrnotavail),
            opt(x.time_wait_peak),
            opt(x.tw_overflow),
            opt(x.tw_reused),
        ]);
    }
    o.push_str(&t.render(st, "  "));
    let _ = writeln!(o, "  predicted by: {}", s.predicted.source);
    let _ = writeln!(
        o,
        "  TIME_WAIT at the end: {} on the backend, {} toward it",
        int(s.time_wait_held.by_backend),
        int(s.time_wait_held.toward_backend)
    );
    if !s.measured.other_errors.is_empty() {
        let e: Vec<String> = s
            .measured
            .other_errors
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(o, "  other errors: {}", e.join(", "));
    }
    let mark = if s.agrees {
        st.green("agrees within 10%")
    } else {
        st.red("differs by more than 10%")
    };
    let _ = writeln!(o, "  {mark}: {}", s.verdict);
    o
}

/// `timewait lab`.
pub fn run_lab(a: &LabArgs, st: &Style) -> Result<String, Failure> {
    let scenarios = match &a.scenario {
        Some(name) => vec![scenario::find(name).ok_or_else(|| {
            let names: Vec<&str> = scenario::all().iter().map(|s| s.name).collect();
            Failure::Usage(format!(
                "--scenario {name}: no such scenario (one of {})",
                names.join(", ")
            ))
        })?],
        None => scenario::all(),
    };
    timewait_lab::check_root().map_err(|e| Failure::Runtime(anyhow::anyhow!("{e}")))?;
    let exe = std::env::current_exe().map_err(anyhow::Error::from)?;
    let stop = crate::trace_cmd::stop_on_signals()?;
    let json = a.json;
    let mut each = |s: &ScenarioReport| {
        if !json {
            // Each scenario as it finishes: the run takes half a minute.
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", human(s, st));
            let _ = out.flush();
        }
    };
    let report = run_all(&scenarios, &exe, &stop, &mut each)
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("{e}")))?;
    if let Some(path) = &a.report {
        std::fs::write(path, timewait_lab::html::render(&report))
            .map_err(|e| Failure::Runtime(anyhow::anyhow!("--report {}: {e}", path.display())))?;
    }
    if json {
        return Ok(render::json(&report)?);
    }
    let agree = report.scenarios.iter().filter(|s| s.agrees).count();
    let mut o = format!(
        "{} of {} scenarios agree with the model within 10%, in {:.1} s",
        agree,
        report.scenarios.len(),
        report.duration_seconds
    );
    if report.interrupted {
        o.push_str(" (interrupted: the scenarios so far; their namespaces are removed)");
    }
    if let Some(p) = &a.report {
        let _ = write!(o, "; report written to {}", p.display());
    }
    o.push('\n');
    for s in &report.skipped {
        let _ = writeln!(o, "skipped {}: {}", s.name, s.why);
    }
    Ok(o)
}
