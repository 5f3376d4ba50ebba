//! The lab report as one self-contained HTML page (no scripts, no network):
//! per scenario its claim, settings, verdict, and two SVG charts —
//! succeeded and failed connects per second, and TIME_WAIT over time —
//! measured (solid) against predicted (dashed).

use std::fmt::Write as _;

use crate::report::{LabReport, Outcome, Point, ScenarioReport};

const W: f64 = 640.0;
const H: f64 = 220.0;
const PAD_L: f64 = 56.0;
const PAD_R: f64 = 16.0;
const PAD_T: f64 = 16.0;
const PAD_B: f64 = 36.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A line: its class, colour, dash, and values per second.
struct Line<'a> {
    class: &'a str,
    colour: &'a str,
    dashed: bool,
    values: Vec<(f64, f64)>,
}

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn chart(o: &mut String, title: &str, scenario: &str, kind: &str, seconds: f64, lines: &[Line]) {
    let ymax = nice_max(
        lines
            .iter()
            .flat_map(|l| l.values.iter().map(|v| v.1))
            .fold(0.0, f64::max),
    );
    let x = |t: f64| PAD_L + t / seconds.max(1.0) * (W - PAD_L - PAD_R);
    let y = |v: f64| H - PAD_B - v / ymax * (H - PAD_T - PAD_B);
    let _ = write!(
        o,
        r##"<svg class="chart" data-scenario="{scenario}" data-kind="{kind}" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{t}"><title>{t}</title>"##,
        t = esc(title)
    );
    let _ = write!(
        o,
        r##"<rect x="{PAD_L}" y="{PAD_T}" width="{}" height="{}" fill="#fafafa" stroke="#ccc"/>"##,
        W - PAD_L - PAD_R,
        H - PAD_T - PAD_B
    );
    for i in 0..=4 {
        let v = ymax * f64::from(i) / 4.0;
        let _ = write!(
            o,
            r##"<line x1="{PAD_L}" x2="{}" y1="{y0:.1}" y2="{y0:.1}" stroke="#e4e4e4"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end" fill="#555">{}</text>"##,
            W - PAD_R,
            PAD_L - 6.0,
            y(v) + 4.0,
            v.round(),
            y0 = y(v)
        );
    }
    for s in 0..=(seconds.ceil() as u64) {
        let _ = write!(
            o,
            r##"<text x="{:.1}" y="{}" font-size="11" text-anchor="middle" fill="#555">{s}s</text>"##,
            x(s as f64),
            H - PAD_B + 16.0
        );
    }
    for l in lines {
        if l.values.is_empty() {
            continue;
        }
        let pts: Vec<String> = l
            .values
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
            .collect();
        let _ = write!(
            o,
            r##"<polyline class="{}" fill="none" stroke="{}" stroke-width="2.5"{} points="{}"/>"##,
            l.class,
            l.colour,
            if l.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            },
            pts.join(" ")
        );
    }
    o.push_str("</svg>");
}

/// Per-second values, plotted at the middle of their second.
fn rate(series: &[Point], f: impl Fn(&Point) -> u64) -> Vec<(f64, f64)> {
    series
        .iter()
        .map(|p| (p.second as f64 + 0.5, f(p) as f64))
        .collect()
}

/// TIME_WAIT at the end of each second (and 0 at the start).
fn level(series: &[Point]) -> Vec<(f64, f64)> {
    let mut v = vec![(0.0, 0.0)];
    v.extend(
        series
            .iter()
            .filter_map(|p| Some(((p.second + 1) as f64, p.time_wait? as f64))),
    );
    v
}

fn counts(o: &Outcome) -> String {
    format!(
        "{} of {} succeeded, {} EADDRNOTAVAIL",
        o.succeeded, o.attempted, o.failed_eaddrnotavail
    )
}

fn scenario(o: &mut String, s: &ScenarioReport) {
    let seconds = s.measured.series.len().max(s.predicted.series.len()).max(1) as f64;
    let _ = write!(
        o,
        r#"<section class="scenario" id="{n}"><h2>{n} <span class="{c}">{v}</span></h2><p class="claim">{claim}</p>"#,
        n = esc(&s.name),
        c = if s.agrees { "agree" } else { "disagree" },
        v = if s.agrees {
            "measured agrees with predicted"
        } else {
            "measured differs from predicted"
        },
        claim = esc(&s.claim)
    );
    o.push_str("<table class=\"settings\">");
    for (k, v) in &s.settings {
        let _ = write!(o, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
    }
    let _ = write!(
        o,
        "<tr><th>measured (kernel)</th><td>{}</td></tr><tr><th>predicted ({})</th><td>{}</td></tr></table><p class=\"verdict\">{}</p>",
        esc(&counts(&s.measured)),
        esc(&s.predicted.source),
        esc(&counts(&s.predicted)),
        esc(&s.verdict)
    );
    let (m, p) = (&s.measured.series, &s.predicted.series);
    chart(
        o,
        &format!("{}: connects per second", s.name),
        &s.name,
        "rate",
        seconds,
        &[
            Line {
                class: "measured succeeded",
                colour: "#1a7f37",
                dashed: false,
                values: rate(m, |p| p.succeeded),
            },
            Line {
                class: "predicted succeeded",
                colour: "#1a7f37",
                dashed: true,
                values: rate(p, |p| p.succeeded),
            },
            Line {
                class: "measured failed",
                colour: "#cf222e",
                dashed: false,
                values: rate(m, |p| p.failed),
            },
            Line {
                class: "predicted failed",
                colour: "#cf222e",
                dashed: true,
                values: rate(p, |p| p.failed),
            },
        ],
    );
    chart(
        o,
        &format!("{}: TIME_WAIT sockets", s.name),
        &s.name,
        "time-wait",
        seconds,
        &[
            Line {
                class: "measured time-wait",
                colour: "#0969da",
                dashed: false,
                values: level(m),
            },
            Line {
                class: "predicted time-wait",
                colour: "#0969da",
                dashed: true,
                values: level(p),
            },
        ],
    );
    o.push_str("</section>");
}

/// The page.
pub fn render(r: &LabReport) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>timewait lab</title><style>
body{{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1f2328;max-width:720px}}
h1{{font-size:22px}} h2{{font-size:17px;margin-top:28px}} .agree{{color:#1a7f37;font-size:13px}} .disagree{{color:#cf222e;font-size:13px}}
table{{border-collapse:collapse;margin:6px 0}} th,td{{text-align:left;padding:2px 10px 2px 0;vertical-align:top}} th{{font-weight:600;color:#555}}
.legend span{{margin-right:14px}} svg{{display:block;margin:8px 0}}
</style></head><body><h1>timewait lab</h1><p>Linux {k}; {n} scenario(s) in {d:.1} s{i}. Solid lines: what the kernel did; dashed: what the model predicts for the same stream.</p>
<p class="legend"><span style="color:#1a7f37">■ succeeded/s</span><span style="color:#cf222e">■ failed/s</span><span style="color:#0969da">■ TIME_WAIT</span></p>"#,
        k = esc(&r.kernel_release),
        n = r.scenarios.len(),
        d = r.duration_seconds,
        i = if r.interrupted { " (interrupted)" } else { "" }
    );
    for s in &r.scenarios {
        scenario(&mut o, s);
    }
    for s in &r.skipped {
        let _ = write!(
            o,
            "<h2>{}</h2><p>Skipped: {}</p>",
            esc(&s.name),
            esc(&s.why)
        );
    }
    o.push_str("</body></html>\n");
    o
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn outcome(source: &str, ok: u64, failed: u64) -> Outcome {
        Outcome {
            source: source.into(),
            attempted: ok + failed,
            succeeded: ok,
            failed_eaddrnotavail: failed,
            other_errors: BTreeMap::new(),
            first_failure_second: Some(0),
            time_wait_peak: Some(ok),
            tw_reused: Some(0),
            tw_overflow: Some(0),
            series: (0..4)
                .map(|s| Point {
                    second: s,
                    succeeded: ok / 4,
                    failed: failed / 4,
                    time_wait: Some(ok / 4 * (s + 1)),
                })
                .collect(),
        }
    }

    #[test]
    fn each_scenario_gets_two_charts_with_both_sides_and_text_is_escaped() {
        let r = LabReport {
            kernel_release: "6.18".into(),
            duration_seconds: 5.0,
            interrupted: false,
            skipped: vec![],
            scenarios: vec![ScenarioReport {
                name: "exhaustion".into(),
                claim: "ports <run> out & fail".into(),
                settings: BTreeMap::new(),
                measured: outcome("kernel", 300, 1300),
                predicted: outcome("model simulate", 300, 1300),
                time_wait_held: crate::report::Held {
                    by_backend: 0,
                    toward_backend: 300,
                },
                agrees: true,
                verdict: "ok".into(),
            }],
        };
        let html = render(&r);
        assert_eq!(html.matches("<svg class=\"chart\"").count(), 2);
        for class in [
            "measured succeeded",
            "predicted succeeded",
            "measured failed",
            "predicted failed",
            "measured time-wait",
            "predicted time-wait",
        ] {
            assert!(html.contains(&format!("class=\"{class}\"")), "{class}");
        }
        assert!(html.contains("ports &lt;run&gt; out &amp; fail"));
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "self-contained"
        );
    }
}
