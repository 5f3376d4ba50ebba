//! `timewait model rate|wrap|simulate`: flags → validated model input →
//! model call → rendered report. The model is pure; this file only formats.

use std::fmt::Write as _;

use serde::Serialize;
use timewait_model::ports::{ConnectPorts, is_loopback};
use timewait_model::rate::{RateInput, RateReport, rate};
use timewait_model::simulate::{SimInput, SimReport, simulate};
use timewait_model::wrap::{WrapReport, default_links, wrap};

use crate::Failure;
use crate::cli::{KnobArgs, RateArgs, SimulateArgs, WrapArgs};
use crate::render::{Align, Style, Table, duration, int, real};

/// Every model number is a prediction, and JSON says so.
#[derive(Serialize)]
struct Labelled<'a, T: Serialize> {
    source: &'static str,
    #[serde(flatten)]
    report: &'a T,
}

fn labelled<T: Serialize>(report: &T) -> Labelled<'_, T> {
    Labelled {
        source: "model",
        report,
    }
}

fn rate_input(k: &KnobArgs) -> RateInput {
    RateInput {
        ports: ConnectPorts::new(k.port_range, k.reserved.clone()),
        time_wait_seconds: k.time_wait_seconds,
        tw_reuse: k.tw_reuse,
        timestamps: k.timestamps,
        destination: k.destination,
        destinations: k.destinations,
        source_ips: k.source_ips,
        reuse_delay_ms: k.reuse_delay_ms,
    }
}

/// `model rate`.
pub fn run_rate(args: &RateArgs, style: &Style) -> Result<String, Failure> {
    let report = rate(&rate_input(&args.knobs))?;
    if args.json {
        return Ok(crate::render::json(&labelled(&report))?);
    }
    Ok(render_rate(&report, style))
}

fn render_rate(r: &RateReport, st: &Style) -> String {
    let mut o = String::new();
    st.heading(
        &mut o,
        "Ceiling on new outgoing connections to one destination (model)",
    );
    let _ = writeln!(o);
    let mut t = Table::new(&[("", Align::Left), ("", Align::Right), ("", Align::Left)]);
    t.row(vec![
        "port range".into(),
        r.port_range.clone(),
        format!("{} ports", int(r.range_ports.into())),
    ]);
    if r.reserved_in_range > 0 {
        t.row(vec![
            "reserved in range".into(),
            format!("-{}", int(r.reserved_in_range.into())),
            "ip_local_reserved_ports".into(),
        ]);
    }
    if let Some(p) = r.parity_skipped_port {
        t.row(vec![
            "odd-sized range".into(),
            "-1".into(),
            format!("connect() scans an even count; port {p} is left out"),
        ]);
    }
    t.row(vec![
        "usable ports".into(),
        int(r.usable_ports.into()),
        "what connect() can pick toward one ip:port".into(),
    ]);
    t.row(vec![
        "TIME_WAIT".into(),
        format!("{} s", real(r.time_wait_seconds)),
        if r.time_wait_seconds == 60.0 {
            "Linux's TCP_TIMEWAIT_LEN".into()
        } else {
            "as given (upstream Linux is fixed at 60 s)".into()
        },
    ]);
    // The table's empty header row is dropped.
    let body = t.render(st, "  ");
    o.push_str(body.split_once('\n').map_or("", |x| x.1));
    let _ = writeln!(o);
    let _ = writeln!(o, "  max new connections/s = usable ports / TIME_WAIT");
    let _ = writeln!(
        o,
        "                        = {} / {} s",
        int(r.usable_ports.into()),
        real(r.time_wait_seconds)
    );
    let _ = writeln!(
        o,
        "                        = {} per second per destination{}",
        st.bold(&real(r.max_new_connections_per_second)),
        if r.reuse.applies {
            " without reuse"
        } else {
            ""
        }
    );
    let _ = writeln!(o);
    if let Some(with) = r.max_new_connections_per_second_with_reuse {
        let _ = writeln!(
            o,
            "  with reuse            = usable ports / tcp_tw_reuse_delay"
        );
        let _ = writeln!(
            o,
            "                        = {} / {} ms",
            int(r.usable_ports.into()),
            int(r.reuse.reuse_delay_ms.into())
        );
        let _ = writeln!(
            o,
            "                        = {} per second per destination (a ceiling; connect() itself costs CPU)",
            st.bold(&real(with))
        );
        let _ = writeln!(o);
    }
    let _ = writeln!(o, "  reuse: {}", r.reuse.reason);
    if r.destinations > 1 || r.source_ips > 1 {
        let _ = writeln!(
            o,
            "  total over {} destination(s) × {} source address(es): {} per second",
            int(r.destinations.into()),
            int(r.source_ips.into()),
            real(r.total_max_new_connections_per_second)
        );
    }
    if !r.levers.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(o, "{}", st.bold("To at least double the ceiling"));
        let mut t = Table::new(&[
            ("factor", Align::Right),
            ("new ceiling/s", Align::Right),
            ("change", Align::Left),
        ]);
        for l in &r.levers {
            t.row(vec![
                format!("×{:.2}", l.factor),
                real(l.max_new_connections_per_second),
                l.change.clone(),
            ]);
        }
        o.push_str(&t.render(st, "  "));
        let _ = writeln!(
            o,
            "  {}",
            st.dim("The lasting fix is fewer new connections: keep-alive and connection pools.")
        );
    }
    o
}

/// `model wrap`.
pub fn run_wrap(args: &WrapArgs, style: &Style) -> Result<String, Failure> {
    let mut links = if args.only {
        Vec::new()
    } else {
        default_links()
    };
    links.extend(
        args.bandwidth
            .iter()
            .map(|b| (crate::render::bits(b.bits_per_second), *b)),
    );
    let report = wrap(links, args.time_wait_seconds)?;
    if args.json {
        // The contract is a list of rows; each row says it is arithmetic.
        let rows: Vec<_> = report.rows.iter().map(labelled).collect();
        return Ok(crate::render::json(&rows)?);
    }
    Ok(render_wrap(&report, style))
}

fn render_wrap(r: &WrapReport, st: &Style) -> String {
    let mut o = String::new();
    st.heading(&mut o, "Sequence-number wrap time: 2^31 bytes / bandwidth");
    let _ = writeln!(o);
    let mut t = Table::new(&[
        ("link", Align::Left),
        ("bits/s", Align::Right),
        ("bytes/s", Align::Right),
        ("wrap (s)", Align::Right),
        ("wrap", Align::Right),
        ("< 2·MSL?", Align::Left),
    ]);
    for row in &r.rows {
        t.row(vec![
            row.label.clone(),
            real(row.bandwidth_bits_per_second),
            real(row.bandwidth_bits_per_second / 8.0),
            real(row.wrap_seconds),
            duration(row.wrap_seconds),
            if row.shorter_than_2msl {
                st.red("yes: only PAWS (timestamps) protects")
            } else {
                "no".to_string()
            },
        ]);
    }
    o.push_str(&t.render(st, "  "));
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "  2·MSL = {} s. Above {} bit/s a connection wraps faster than an old segment can die,",
        real(r.two_msl_seconds),
        real(r.crossover_bits_per_second)
    );
    let _ = writeln!(
        o,
        "  so TIME_WAIT alone cannot keep old duplicates out: tcp_timestamps must stay on."
    );
    o
}

/// `model simulate`.
pub fn run_simulate(args: &SimulateArgs, style: &Style) -> Result<String, Failure> {
    let k = &args.knobs;
    let input = SimInput {
        rate: args.rate,
        duration_seconds: args.duration,
        ports: ConnectPorts::new(k.port_range, k.reserved.clone()),
        time_wait_seconds: k.time_wait_seconds,
        tw_reuse: k.tw_reuse,
        timestamps: k.timestamps,
        destination_is_loopback: k.destination.is_some_and(is_loopback),
        reuse_delay_ms: k.reuse_delay_ms,
        max_tw_buckets: args.max_tw_buckets,
        destinations: k.destinations,
        source_ips: k.source_ips,
        hold_ms: args.hold_ms,
        seed: args.seed,
    };
    let report = simulate(&input)?;
    if args.json {
        return Ok(crate::render::json(&labelled(&report))?);
    }
    Ok(render_simulate(&input, &report, style))
}

fn render_simulate(i: &SimInput, r: &SimReport, st: &Style) -> String {
    let mut o = String::new();
    st.heading(
        &mut o,
        &format!(
            "Simulated {} connect()/s for {} s (model prediction, not a measurement)",
            real(i.rate),
            real(i.duration_seconds)
        ),
    );
    let _ = writeln!(
        o,
        "  ports {} ({} usable), TIME_WAIT {} s, tcp_tw_reuse={} ({}), tcp_max_tw_buckets={}",
        i.ports.range(),
        int(r.usable_ports.into()),
        real(i.time_wait_seconds),
        i.tw_reuse.value(),
        if r.reuse_applies {
            format!("applies after {} ms", int(i.reuse_delay_ms.into()))
        } else {
            "does not apply".to_string()
        },
        i.max_tw_buckets.map_or("unlimited".to_string(), int),
    );
    let _ = writeln!(o);
    let mut t = Table::new(&[("", Align::Left), ("", Align::Right)]);
    t.row(vec!["attempted".into(), int(r.attempted)]);
    t.row(vec!["succeeded".into(), st.green(&int(r.succeeded))]);
    let failed = int(r.failed_eaddrnotavail);
    t.row(vec![
        "failed (EADDRNOTAVAIL)".into(),
        if r.failed_eaddrnotavail > 0 {
            st.red(&failed)
        } else {
            failed
        },
    ]);
    t.row(vec![
        "first failure at".into(),
        r.first_failure_at_seconds
            .map_or("never".to_string(), |s| format!("{} s", trim_secs(s))),
    ]);
    t.row(vec!["peak TIME_WAIT".into(), int(r.peak_time_wait)]);
    t.row(vec!["TIME_WAIT reused".into(), int(r.tw_reused)]);
    t.row(vec!["TIME_WAIT overflow".into(), int(r.tw_overflow)]);
    let body = t.render(st, "  ");
    o.push_str(body.split_once('\n').map_or("", |x| x.1));
    let _ = writeln!(o);
    let _ = writeln!(o, "{}", st.bold("Timeline"));
    let peak = r
        .timeline
        .iter()
        .map(|b| b.time_wait)
        .max()
        .unwrap_or(0)
        .max(1);
    let mut t = Table::new(&[
        ("until", Align::Right),
        ("attempted", Align::Right),
        ("ok", Align::Right),
        ("failed", Align::Right),
        ("TIME_WAIT", Align::Right),
        ("", Align::Left),
    ]);
    for b in &r.timeline {
        let bar = "#".repeat(((b.time_wait as f64 / peak as f64) * 30.0).round() as usize);
        t.row(vec![
            format!("{} s", trim_secs(b.end_seconds)),
            int(b.attempted),
            int(b.succeeded),
            if b.failed > 0 {
                st.red(&int(b.failed))
            } else {
                "0".into()
            },
            int(b.time_wait),
            st.dim(&bar),
        ]);
    }
    o.push_str(&t.render(st, "  "));
    o
}

fn trim_secs(s: f64) -> String {
    let v = format!("{s:.3}");
    v.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn run(args: &[&str]) -> String {
        let cli = crate::cli::Cli::try_parse_from(args).unwrap();
        let st = Style::plain();
        match cli.command {
            crate::cli::Command::Model(crate::cli::ModelCommand::Rate(a)) => run_rate(&a, &st),
            crate::cli::Command::Model(crate::cli::ModelCommand::Wrap(a)) => run_wrap(&a, &st),
            crate::cli::Command::Model(crate::cli::ModelCommand::Simulate(a)) => {
                run_simulate(&a, &st)
            }
            _ => unreachable!(),
        }
        .unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn rate_shows_the_formula_with_numbers() {
        let s = run(&["timewait", "model", "rate"]);
        assert!(s.contains("= 28,232 / 60 s"), "{s}");
        assert!(s.contains("= 470.5 per second per destination"), "{s}");
    }

    #[test]
    fn wrap_json_is_a_list_of_rows() {
        let s = run(&[
            "timewait",
            "model",
            "wrap",
            "--json",
            "--bandwidth",
            "25Gbit",
            "--only",
        ]);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v[0]["bandwidth_bits_per_second"], 25e9);
        assert!((v[0]["wrap_seconds"].as_f64().unwrap() - 0.687).abs() < 0.001);
    }
}
