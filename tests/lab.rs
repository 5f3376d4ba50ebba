//! `timewait lab` on the real kernel: every scenario's measured counts agree
//! with the model's within 10% and show what the scenario claims; its
//! namespaces are gone afterwards, also after Ctrl-C; the HTML report renders
//! in headless Chromium with its charts drawn.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::harness::netns::SKIP_ENV;

fn lab_namespaces(pid: u32) -> Vec<String> {
    std::fs::read_dir("/var/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with(&format!("twlab-{pid}-")))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits for a lab run: it succeeded, left no namespace, printed JSON.
fn finished(child: std::process::Child) -> Value {
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(lab_namespaces(pid).is_empty(), "{:?}", lab_namespaces(pid));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn scenario<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no scenario {name}: {r:#}"))
}

fn within_10pct(a: &Value, b: &Value) -> bool {
    let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
    (a - b).abs() <= (a.max(b) * 0.10).max(3.0)
}

/// Renders `html` in headless Chromium to a PNG and returns its pixels (RGBA).
fn render_in_chromium(html: &Path, dir: &Path) -> (u32, u32, Vec<u8>) {
    let png = dir.join("lab.png");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=760,2400",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", html.display()))
        .stdout(Stdio::null())
        .output()
        .expect("chromium (Debian package chromium; .ci/run installs it)");
    assert!(
        png.exists(),
        "chromium wrote no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    let rgba = match info.color_type {
        png::ColorType::Rgba => buf,
        png::ColorType::Rgb => buf
            .chunks(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect(),
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    (info.width, info.height, rgba)
}

/// Pixels within a small distance of `rgb`.
fn count_colour(rgba: &[u8], rgb: [u8; 3]) -> usize {
    rgba.chunks(4)
        .filter(|p| (0..3).all(|i| (i32::from(p[i]) - i32::from(rgb[i])).abs() <= 24))
        .count()
}

#[test]
fn every_scenario_agrees_with_the_model_and_the_report_renders_in_chromium() {
    if std::env::var_os(SKIP_ENV).is_some() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("twlab-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let html: PathBuf = dir.join("lab.html");
    // Paced streams: not beside the heaviest tests.
    let _quiet = crate::harness::quiet();
    let child = Command::new(env!("CARGO_BIN_EXE_timewait"))
        .args(["lab", "--json", "--report"])
        .arg(&html)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let r = finished(child);
    // .ci/run installs nginx: its two scenarios run too.
    assert_eq!(r["skipped"], serde_json::json!([]), "{r:#}");
    assert_eq!(r["scenarios"].as_array().unwrap().len(), 8);
    for s in r["scenarios"].as_array().unwrap() {
        let (m, p) = (&s["measured"], &s["predicted"]);
        for k in ["succeeded", "failed_eaddrnotavail"] {
            assert!(within_10pct(&m[k], &p[k]), "{}: {k}: {m} vs {p}", s["name"]);
        }
        assert!(
            within_10pct(&m["time_wait_peak"], &p["time_wait_peak"]),
            "{}: TIME_WAIT {m} vs {p}",
            s["name"]
        );
        assert_eq!(m["attempted"], p["attempted"], "{}", s["name"]);
        assert_eq!(s["agrees"], true, "{s:#}");
        assert_eq!(m["other_errors"], serde_json::json!({}), "{}", s["name"]);
    }
    // Each shows what it claims, on the kernel.
    let m = |name: &str, k: &str| scenario(&r, name)["measured"][k].as_u64().unwrap();
    assert!(m("exhaustion", "failed_eaddrnotavail") > 1000);
    assert!(m("tw-reuse", "tw_reused") > 500);
    assert!(m("tw-reuse", "succeeded") > m("exhaustion", "succeeded"));
    assert_eq!(m("wide-range", "failed_eaddrnotavail"), 0);
    assert!(m("max-tw-buckets", "tw_overflow") > 1000);
    assert!(m("max-tw-buckets", "time_wait_peak") <= 100);
    assert_eq!(m("server-closes", "failed_eaddrnotavail"), 0);
    assert!(m("server-closes", "time_wait_peak") > 0);
    assert_eq!(m("proxy", "failed_eaddrnotavail"), 0);
    assert_eq!(m("proxy", "succeeded"), m("proxy", "attempted"));
    assert_eq!(m("proxy", "time_wait_peak"), 0);
    // nginx's defaults: the backend closes first and holds the TIME_WAIT;
    // with the article's lines, neither does (but for retired connections).
    let held = |name: &str, k: &str| scenario(&r, name)["time_wait_held"][k].as_u64().unwrap();
    assert_eq!(m("nginx", "succeeded"), m("nginx", "attempted"));
    assert!(held("nginx", "by_backend") > 100);
    assert_eq!(held("nginx", "toward_backend"), 0);
    assert_eq!(
        m("nginx-keepalive", "succeeded"),
        m("nginx-keepalive", "attempted")
    );
    assert_eq!(held("nginx-keepalive", "by_backend"), 0);
    assert!(held("nginx-keepalive", "toward_backend") <= 20);

    // The report: two charts per scenario, drawn.
    let text = std::fs::read_to_string(&html).unwrap();
    assert_eq!(text.matches("<svg class=\"chart\"").count(), 16);
    let (w, h, px) = render_in_chromium(&html, &dir);
    assert!(w >= 700 && h >= 2000, "{w}x{h}");
    let total = (w * h) as usize;
    let white = count_colour(&px, [255, 255, 255]);
    assert!(
        white < total * 95 / 100,
        "the page is blank: {white} of {total} white"
    );
    // The lines: succeeded (green), failed (red), TIME_WAIT (blue).
    for (what, rgb) in [
        ("green", [0x1a, 0x7f, 0x37]),
        ("red", [0xcf, 0x22, 0x2e]),
        ("blue", [0x09, 0x69, 0xda]),
    ] {
        let n = count_colour(&px, rgb);
        assert!(n > 500, "{what} lines: {n} pixels");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ctrl_c_stops_the_lab_with_the_scenarios_so_far_and_no_namespace_left() {
    if std::env::var_os(SKIP_ENV).is_some() {
        return;
    }
    let _quiet = crate::harness::quiet();
    let child = Command::new(env!("CARGO_BIN_EXE_timewait"))
        .args(["lab", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Wait (bounded) until its second scenario's namespace exists.
    let second = format!("twlab-{pid}-1");
    for _ in 0..3000 {
        if lab_namespaces(pid).contains(&second) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        lab_namespaces(pid).contains(&second),
        "the lab did not get to its second scenario"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let r = finished(child);
    assert_eq!(r["interrupted"], true);
    let n = r["scenarios"].as_array().unwrap().len();
    assert!((1..8).contains(&n), "{n} scenarios");
}

#[test]
fn lab_flags_and_privileges_are_checked_before_anything_runs() {
    let out = Command::new(env!("CARGO_BIN_EXE_timewait"))
        .args(["lab", "--scenario", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--scenario nope") && err.contains("exhaustion"),
        "{err}"
    );
    if std::env::var_os(SKIP_ENV).is_some() {
        return;
    }
    let out = crate::harness::timewait_as_nobody(&["lab"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("lab needs root"), "{err}");
}

#[test]
fn without_nginx_its_scenarios_are_skipped_and_said_so() {
    if std::env::var_os(SKIP_ENV).is_some() {
        return;
    }
    // A PATH without nginx (/usr/sbin): the scenario is skipped before
    // anything of it runs.
    let out = Command::new(env!("CARGO_BIN_EXE_timewait"))
        .args(["lab", "--scenario", "nginx", "--json"])
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["scenarios"], serde_json::json!([]));
    assert_eq!(r["skipped"][0]["name"], "nginx");
    assert!(
        r["skipped"][0]["why"]
            .as_str()
            .unwrap()
            .contains("nginx-light")
    );
}

#[test]
fn a_scenario_that_fails_leaves_no_namespace_and_says_why_in_one_line() {
    if std::env::var_os(SKIP_ENV).is_some() {
        return;
    }
    // An "nginx" that reports a version but never serves: the scenario
    // fails once its namespace, backend and nginx process exist.
    let dir = std::env::temp_dir().join(format!("twlab-fake-nginx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("nginx");
    std::fs::write(
        &fake,
        "#!/bin/sh\n[ \"$1\" = -v ] && { echo 'nginx version: nginx/1.22.1' >&2; exit 0; }\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let child = Command::new(env!("CARGO_BIN_EXE_timewait"))
        .args(["lab", "--scenario", "nginx", "--json"])
        .env("PATH", path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("nginx: it did not start listening"), "{err}");
    assert!(lab_namespaces(pid).is_empty(), "{:?}", lab_namespaces(pid));
    assert!(
        !std::env::temp_dir()
            .join(format!("twlab-{pid}-0-nginx"))
            .exists(),
        "nginx's files left behind"
    );
}
