//! The binary as a user meets it: exit codes, one-line errors, JSON contracts,
//! colour rules, broken pipes, and snapshots of the human reports.

use std::process::{Command, Output, Stdio};

fn timewait(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_timewait"))
        .args(args)
        .env_remove("NO_COLOR")
        .output()
        .expect("run timewait")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("utf-8 stdout")
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).expect("utf-8 stderr")
}

fn json(args: &[&str]) -> serde_json::Value {
    let o = timewait(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("stdout is JSON and nothing else")
}

#[test]
fn rate_json_has_the_contract_keys_and_the_article_numbers() {
    let v = json(&["model", "rate", "--json"]);
    assert_eq!(v["usable_ports"], 28_232);
    assert_eq!(v["time_wait_seconds"], 60.0);
    assert_eq!(v["source"], "model");
    let r = v["max_new_connections_per_second"].as_f64().unwrap();
    assert!((r - 470.53).abs() < 0.01);
    assert!(v["max_new_connections_per_second_with_reuse"].is_null());

    let v = json(&[
        "model",
        "rate",
        "--json",
        "--port-range",
        "1024-65535",
        "--time-wait-seconds",
        "10",
    ]);
    assert_eq!(v["usable_ports"], 64_512);
    assert_eq!(
        v["max_new_connections_per_second"]
            .as_f64()
            .unwrap()
            .floor(),
        6451.0
    );

    let v = json(&["model", "rate", "--json", "--destination", "127.0.0.1"]);
    assert_eq!(v["max_new_connections_per_second_with_reuse"], 28_232.0);
}

#[test]
fn simulate_json_has_the_contract_keys() {
    let v = json(&[
        "model",
        "simulate",
        "--json",
        "--rate",
        "500",
        "--duration",
        "1",
        "--port-range",
        "40000-40127",
        "--tw-reuse",
        "0",
    ]);
    for key in [
        "attempted",
        "succeeded",
        "failed_eaddrnotavail",
        "first_failure_at_seconds",
        "peak_time_wait",
        "tw_reused",
        "tw_overflow",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert_eq!(v["succeeded"], 128);
    assert_eq!(v["first_failure_at_seconds"], 0.256);
}

#[test]
fn wrap_json_is_a_list_with_the_article_rows() {
    let v = json(&["model", "wrap", "--json"]);
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 8);
    assert_eq!(rows[0]["bandwidth_bits_per_second"], 56_000.0);
    assert_eq!(rows[2]["wrap_seconds"].as_f64().unwrap().round(), 1718.0);
}

/// `proxy` with a valid listener and backend, then `extra`.
fn proxy_with(extra: &[&'static str]) -> Vec<&'static str> {
    [
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:1",
        ][..],
        extra,
    ]
    .concat()
}

#[test]
fn bad_input_is_one_line_naming_the_flag_with_exit_2() {
    for (args, flag) in [
        (
            vec!["model", "rate", "--port-range", "60999-32768"],
            "--port-range",
        ),
        (
            vec!["model", "rate", "--port-range", "0-100"],
            "--port-range",
        ),
        (vec!["model", "rate", "--tw-reuse", "3"], "--tw-reuse"),
        (vec!["model", "rate", "--reserved", "80,,90"], "--reserved"),
        (
            vec!["model", "rate", "--reserved", "9000-8000"],
            "--reserved",
        ),
        (
            vec!["model", "rate", "--time-wait-seconds", "0"],
            "--time-wait-seconds",
        ),
        (vec!["model", "rate", "--timestamps", "7"], "--timestamps"),
        (
            vec!["model", "rate", "--destination", "nowhere"],
            "--destination",
        ),
        (vec!["model", "simulate", "--rate", "-5"], "--rate"),
        (
            vec!["model", "simulate", "--rate", "1e9", "--duration", "100"],
            "--duration",
        ),
        (
            vec!["model", "simulate", "--rate", "10", "--hold-ms", "-1"],
            "--hold-ms",
        ),
        (vec!["model", "wrap", "--bandwidth", "fast"], "--bandwidth"),
        (vec!["proxy", "--upstream", "127.0.0.1:1"], "--listen"),
        (
            vec!["proxy", "-c", "/nonexistent/proxy.toml"],
            "-c /nonexistent/proxy.toml",
        ),
        (vec!["proxy", "--listen", "127.0.0.1:0"], "--upstream"),
        (
            vec!["proxy", "--listen", "nowhere", "--upstream", "127.0.0.1:1"],
            "--listen",
        ),
        (proxy_with(&["--workers", "0"]), "--workers"),
        (proxy_with(&["--idle-timeout", "-1"]), "--idle-timeout"),
        (proxy_with(&["--body-timeout", "0"]), "--body-timeout"),
        (proxy_with(&["--header-timeout", "nan"]), "--header-timeout"),
        (vec!["exporter", "--top", "0"], "--top"),
        (
            vec!["load", "tcp://127.0.0.1:1", "--requests", "0"],
            "--requests",
        ),
        (vec!["load", "tcp://127.0.0.1:1"], "--duration"),
        (
            vec!["load", "tcp://192.0.2.1:1", "--requests", "1"],
            "--allow-remote",
        ),
        (vec!["load", "ftp://x", "--requests", "1"], "TARGET"),
        (vec!["exporter", "--cache-ms", "600000"], "--cache-ms"),
        (vec!["exporter", "--listen", "nowhere"], "--listen"),
        (
            vec!["exporter", "--from", "/nonexistent/snap.json"],
            "--from /nonexistent/snap.json",
        ),
        (proxy_with(&["--max-fails", "0"]), "--max-fails"),
        (proxy_with(&["--max-requests", "0"]), "--max-requests"),
        (proxy_with(&["--max-connections", "0"]), "--max-connections"),
        (proxy_with(&["--max-lifetime", "86401"]), "--max-lifetime"),
        (
            vec!["proxy", "-c", "/nonexistent/proxy.toml", "--keepalive", "8"],
            "--keepalive",
        ),
        (
            vec![
                "proxy",
                "-c",
                "/nonexistent/proxy.toml",
                "--header-timeout",
                "3",
            ],
            "--header-timeout",
        ),
    ] {
        let o = timewait(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = stderr(&o);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?} should name {flag}: {err}");
        assert!(o.stdout.is_empty());
    }
}

#[test]
fn every_subcommand_has_help_that_explains_it() {
    let top = timewait(&["--help"]);
    assert!(top.status.success());
    assert!(stdout(&top).contains("TIME_WAIT"));
    for args in [
        vec!["status", "--help"],
        vec!["doctor", "--help"],
        vec!["snapshot", "--help"],
        vec!["model", "rate", "--help"],
        vec!["model", "wrap", "--help"],
        vec!["model", "simulate", "--help"],
        vec!["load", "--help"],
        vec!["lab", "--help"],
        vec!["nginx", "check", "--help"],
        vec!["proxy", "--help"],
        vec!["exporter", "--help"],
        vec!["tune", "--help"],
    ] {
        let o = timewait(&args);
        assert!(o.status.success(), "{args:?}");
        assert!(stdout(&o).lines().count() > 5, "{args:?}");
    }
}

#[test]
fn colour_only_when_asked_and_never_with_no_color() {
    let plain = timewait(&["model", "rate"]);
    assert!(!stdout(&plain).contains('\x1b'), "piped output is plain");
    let forced = timewait(&["model", "rate", "--color", "always"]);
    assert!(stdout(&forced).contains("\x1b[1m"));
    let no_color = Command::new(env!("CARGO_BIN_EXE_timewait"))
        .args(["model", "rate", "--color", "auto"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!stdout(&no_color).contains('\x1b'));
}

#[test]
fn a_closed_pipe_is_not_an_error() {
    // Like `timewait model simulate … | head -0`: the reader is gone before
    // anything is written.
    let mut child = Command::new(env!("CARGO_BIN_EXE_timewait"))
        .args(["model", "simulate", "--rate", "1000", "--duration", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
}

#[test]
fn human_reports() {
    let cases: [(&str, &[&str]); 5] = [
        ("rate_default", &["model", "rate"]),
        (
            "rate_article_aliyun",
            &[
                "model",
                "rate",
                "--port-range",
                "1024-65535",
                "--time-wait-seconds",
                "10",
            ],
        ),
        (
            "rate_loopback_reuse_reserved",
            &[
                "model",
                "rate",
                "--destination",
                "127.0.0.1",
                "--reserved",
                "32768-32867",
                "--source-ips",
                "2",
            ],
        ),
        ("wrap_default", &["model", "wrap", "--bandwidth", "25Gbit"]),
        (
            "simulate_exhaustion",
            &[
                "model",
                "simulate",
                "--rate",
                "600",
                "--duration",
                "90",
                "--tw-reuse",
                "0",
                "--port-range",
                "40000-59999",
            ],
        ),
    ];
    for (name, args) in cases {
        let o = timewait(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        insta::assert_snapshot!(name, stdout(&o), &args.join(" "));
    }
}
