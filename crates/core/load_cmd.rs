//! `timewait load`: flags → a validated plan → the load crate, with the
//! census sampling TIME_WAIT toward the target once a second.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use timewait_analysis::{GroupBy, analyse};
use timewait_host::{Target as HostTarget, Via, collect};
use timewait_load::Report;
use timewait_load::plan::{Mode, Plan, Target};
use timewait_load::run::{Live, run_with};

use crate::Failure;
use crate::cli::{LoadArgs, LoadMode};
use crate::render::{self, Align, Style, Table, int, millis, real};

fn plan(a: &LoadArgs) -> Result<Plan, Failure> {
    let target = Target::parse(&a.target).map_err(|e| Failure::Usage(format!("TARGET {e}")))?;
    let secs = |flag: &str, v: f64| {
        if v.is_finite() && v > 0.0 {
            Ok(Duration::from_secs_f64(v))
        } else {
            Err(Failure::Usage(format!(
                "--{flag}: must be seconds above 0, got {v}"
            )))
        }
    };
    let p = Plan {
        target,
        mode: match a.mode {
            LoadMode::Close => Mode::Close,
            LoadMode::Keepalive => Mode::KeepAlive,
        },
        concurrency: a.concurrency,
        rate: a.rate,
        duration: a.duration.map(|d| secs("duration", d)).transpose()?,
        requests: a.requests,
        timeout: secs("timeout", a.timeout)?,
        threads: a
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        method: a.method.clone(),
        headers: a.headers.clone(),
        body: a.body.clone().unwrap_or_default().into_bytes(),
    };
    p.validate(a.allow_remote).map_err(|(flag, msg)| {
        Failure::Usage(if flag == "TARGET" {
            msg
        } else {
            format!("--{flag}: {msg}")
        })
    })?;
    Ok(p)
}

/// TIME_WAIT toward the target and its headroom, from the census of this
/// namespace (`None` when it cannot be read).
fn sampler(target: std::net::SocketAddr) -> timewait_load::run::Sampler {
    Box::new(move || {
        let snap = collect(&HostTarget::Current, Via::Auto, false).ok()?;
        let report = analyse(&snap, GroupBy::Destination, usize::MAX);
        let d = report
            .time_wait
            .by_destination
            .iter()
            .filter(|d| d.remote_ip == target.ip() && d.remote_port == target.port());
        let (tw, headroom) = d.fold((0u64, None::<f64>), |(tw, h), d| {
            (
                tw + d.time_wait,
                match (h, d.headroom_ratio) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                },
            )
        });
        Some((tw, headroom.unwrap_or(1.0)))
    })
}

fn human(r: &Report, st: &Style) -> String {
    let mut o = String::new();
    st.heading(
        &mut o,
        &format!(
            "timewait load {} ({} mode, {} at once{})",
            r.target,
            r.mode,
            r.concurrency,
            r.rate
                .map_or(String::new(), |x| format!(", {} req/s paced", real(x)))
        ),
    );
    if r.interrupted {
        let _ = writeln!(o, "  {}", st.red("interrupted: the numbers so far"));
    }
    let _ = writeln!(
        o,
        "  {} attempted, {} succeeded in {} s ({} req/s); {} connections opened",
        int(r.attempted),
        int(r.succeeded),
        real(r.duration_seconds),
        real(r.requests_per_second),
        int(r.connections_opened)
    );
    for (name, p) in [
        ("latency", &r.latency_ms),
        ("connect", &r.connect_latency_ms),
    ] {
        if let Some(p) = p {
            let _ = writeln!(
                o,
                "  {name} ms: p50 {} p90 {} p99 {} max {}",
                millis(p.p50),
                millis(p.p90),
                millis(p.p99),
                millis(p.max)
            );
        }
    }
    if let Some(tw) = r.time_wait_peak {
        let _ = writeln!(o, "  TIME_WAIT toward the target, peak: {}", int(tw));
    }
    if !r.errors.is_empty() {
        let _ = writeln!(o);
        st.heading(&mut o, "Errors");
        let mut t = Table::new(&[
            ("error", Align::Left),
            ("count", Align::Right),
            ("what it means", Align::Left),
        ]);
        for (k, v) in &r.errors {
            t.row(vec![
                k.clone(),
                int(*v),
                r.error_meanings.get(k).copied().unwrap_or("").to_string(),
            ]);
        }
        o.push_str(&t.render(st, "  "));
    }
    o
}

/// A progress bar on standard error while the load runs (rate, errors,
/// TIME_WAIT toward the target); cleared when it ends. Only on a terminal
/// and never with `--json`: nothing of it reaches a pipe or a log.
fn progress(p: &Plan, live: Arc<Live>, done: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let (len, by_time) = match (p.duration, p.requests) {
        (Some(d), _) => (d.as_secs().max(1), true),
        (None, Some(n)) => (n, false),
        (None, None) => (1, true),
    };
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(4));
    bar.set_style(
        ProgressStyle::with_template("{bar:20} {pos}/{len}{wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    std::thread::spawn(move || {
        let unit = if by_time { " s" } else { " requests" };
        let (mut last_ok, mut last_at) = (0u64, Duration::ZERO);
        let mut rate = 0.0;
        while !done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(250));
            let elapsed = live.elapsed().unwrap_or_default();
            let ok = live.succeeded();
            if elapsed.saturating_sub(last_at) >= Duration::from_secs(1) {
                rate = (ok - last_ok) as f64 / (elapsed - last_at).as_secs_f64();
                (last_ok, last_at) = (ok, elapsed);
            }
            bar.set_position(if by_time {
                elapsed.as_secs().min(len)
            } else {
                live.attempted().min(len)
            });
            let tw = live.time_wait().map_or("unknown".to_string(), int);
            bar.set_message(format!(
                "{unit}  {} req/s  {} ok  {} failed  TIME_WAIT {tw}",
                int(rate.round() as u64),
                int(ok),
                int(live.failed()),
            ));
        }
        bar.finish_and_clear();
    })
}

/// `timewait load`.
pub fn run_load(a: &LoadArgs, st: &Style) -> Result<String, Failure> {
    let p = plan(a)?;
    let stop = Arc::new(AtomicBool::new(false));
    let live = Arc::new(Live::new(&p));
    let done = Arc::new(AtomicBool::new(false));
    let bar = (!a.json && std::io::stderr().is_terminal())
        .then(|| progress(&p, live.clone(), done.clone()));
    let report = run_with(&p, Some(sampler(p.target.addr())), stop, live);
    done.store(true, Ordering::Relaxed);
    if let Some(b) = bar {
        let _ = b.join();
    }
    let report = report.map_err(|e| Failure::Runtime(e.into()))?;
    if a.json {
        return Ok(render::json(&report)?);
    }
    Ok(human(&report, st))
}
