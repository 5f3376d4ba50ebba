//! `timewait doctor` and `tune` against namespaces set up on purpose: a bad
//! one (reuse off, timestamps off, a narrow range, a tiny TIME_WAIT table that
//! really overflows, one destination nearly out of ports) and a fresh one.

use std::net::{Ipv4Addr, TcpListener};
use std::process::{Command, Output};

use serde_json::Value;

use crate::harness::netns::{Netns, tcp_ext_here};
use crate::harness::traffic::client_closes_first;

fn timewait(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_timewait"))
        .args(args)
        .output()
        .unwrap()
}

fn doctor_json(args: &[&str]) -> (Option<i32>, Value) {
    let o = timewait(args);
    let v = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&o.stderr)));
    (o.status.code(), v)
}

fn codes(v: &Value) -> Vec<String> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            format!(
                "{}:{}",
                f["code"].as_str().unwrap(),
                f["severity"].as_str().unwrap()
            )
        })
        .collect()
}

fn has(v: &Value, code: &str) -> bool {
    codes(v).iter().any(|c| c.starts_with(&format!("{code}:")))
}

#[test]
fn a_badly_set_up_namespace_is_diagnosed_and_tune_fixes_it() {
    let Some(ns) = Netns::new("doctor") else {
        return;
    };
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40099");
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0");
    ns.sysctl("net.ipv4.tcp_timestamps", "0");
    ns.sysctl("net.ipv4.tcp_max_tw_buckets", "150");
    let (_listeners, overflow) = ns.run(|| {
        let l5000 = TcpListener::bind(("127.0.0.1", 5000)).unwrap();
        let l5001 = TcpListener::bind(("127.0.0.1", 5001)).unwrap();
        // 95 of 100 ports toward :5000, then 100 more toward :5001 of which
        // only 55 fit in the 150-socket TIME_WAIT table: 45 overflow.
        client_closes_first(&l5000, (Ipv4Addr::LOCALHOST, 5000).into(), 95);
        client_closes_first(&l5001, (Ipv4Addr::LOCALHOST, 5001).into(), 100);
        std::thread::sleep(std::time::Duration::from_millis(100));
        let overflow = tcp_ext_here()["TCPTimeWaitOverflow"];
        ((l5000, l5001), overflow)
    });
    assert_eq!(overflow, 45, "the kernel really overflowed");

    let (code, v) = doctor_json(&["doctor", "--netns", ns.name(), "--json"]);
    assert_eq!(code, Some(3), "{:?}", codes(&v));
    assert_eq!(v["worst_severity"], "critical");
    for expected in [
        "port-exhaustion-risk:critical",
        "tw-reuse-off:warning",
        "timestamps-off:warning",
        "port-range-narrow:warning",
        "tw-bucket-overflow:warning",
        "tw-buckets-near-limit:critical",
    ] {
        assert!(
            codes(&v).contains(&expected.to_string()),
            "{expected} missing from {:?}",
            codes(&v)
        );
    }
    let exhaustion = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "port-exhaustion-risk")
        .unwrap();
    assert!(
        exhaustion["title"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1 → 127.0.0.1:5000")
    );
    assert!(
        exhaustion["evidence"]
            .as_str()
            .unwrap()
            .contains("95 of 100 usable ports")
    );
    let overflow_f = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "tw-bucket-overflow")
        .unwrap();
    assert!(
        overflow_f["evidence"]
            .as_str()
            .unwrap()
            .contains("TCPTimeWaitOverflow = 45")
    );

    // Offline: the same findings from a snapshot.
    let dir = std::env::temp_dir().join(format!("timewait-doctor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("snap.json");
    assert!(
        timewait(&[
            "snapshot",
            "--netns",
            ns.name(),
            "-o",
            file.to_str().unwrap()
        ])
        .status
        .success()
    );
    let (code_off, offline) = doctor_json(&["doctor", "--from", file.to_str().unwrap(), "--json"]);
    assert_eq!(code_off, Some(3));
    assert_eq!(offline["findings"], v["findings"]);
    // TIMEWAIT_RECORD_FIXTURES=1 refreshes the recorded bad host.
    if std::env::var_os("TIMEWAIT_RECORD_FIXTURES").is_some() {
        let to = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/hosts/netns-bad/snapshot.json"
        );
        std::fs::create_dir_all(std::path::Path::new(to).parent().unwrap()).unwrap();
        std::fs::copy(&file, to).unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);

    // A dry run changes nothing.
    let dry = timewait(&["tune", "--netns", ns.name()]);
    assert!(dry.status.success());
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(
        text.contains("- 0") && text.contains("+ 1") && text.contains("dry run"),
        "{text}"
    );
    assert_eq!(ns.read_sysctl("net.ipv4.tcp_tw_reuse"), "0");

    // --apply sets exactly the recommended values in this namespace only.
    let applied = timewait(&["tune", "--netns", ns.name(), "--apply", "--json"]);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let applied: Value = serde_json::from_slice(&applied.stdout).unwrap();
    assert_eq!(
        applied["persisted_to"],
        Value::Null,
        "a namespace is runtime only"
    );
    assert_eq!(ns.read_sysctl("net.ipv4.tcp_tw_reuse"), "1");
    assert_eq!(ns.read_sysctl("net.ipv4.tcp_timestamps"), "1");
    assert_eq!(
        ns.read_sysctl("net.ipv4.ip_local_port_range"),
        "1024\t65535"
    );
    assert_eq!(
        ns.read_sysctl("net.ipv4.ip_local_reserved_ports"),
        "5000-5001"
    );
    assert_eq!(ns.read_sysctl("net.ipv4.tcp_max_tw_buckets"), "1024");
    assert_eq!(
        ns.read_sysctl("net.ipv4.tcp_fin_timeout"),
        "60",
        "untouched"
    );
    let other = Netns::new("doctor-other").unwrap();
    assert_eq!(
        other.read_sysctl("net.ipv4.tcp_tw_reuse"),
        "2",
        "other namespaces untouched"
    );

    let (code, after) = doctor_json(&["doctor", "--netns", ns.name(), "--json"]);
    for gone in [
        "port-exhaustion-risk",
        "tw-reuse-off",
        "timestamps-off",
        "port-range-narrow",
        "tw-buckets-near-limit",
    ] {
        assert!(
            !has(&after, gone),
            "{gone} still reported: {:?}",
            codes(&after)
        );
    }
    // The overflow happened and the counter says so, but the table is far from full now.
    assert!(codes(&after).contains(&"tw-bucket-overflow:info".to_string()));
    assert_eq!(code, Some(0), "{:?}", codes(&after));
    // And tune has nothing left to do.
    let again = timewait(&["tune", "--netns", ns.name()]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("No sysctl changes recommended"));
}

#[test]
fn a_fresh_namespace_is_healthy() {
    let Some(ns) = Netns::new("healthy") else {
        return;
    };
    let (code, v) = doctor_json(&["doctor", "--netns", ns.name(), "--json"]);
    assert_eq!(code, Some(0));
    assert_eq!(v["findings"], Value::Array(vec![]), "{:?}", codes(&v));
    let human = timewait(&["doctor", "--netns", ns.name()]);
    assert_eq!(human.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&human.stdout)
            .contains("No TIME_WAIT or ephemeral-port trouble found.")
    );
}

#[test]
fn interval_sampling_sees_the_overflow_grow() {
    let Some(ns) = Netns::new("interval") else {
        return;
    };
    ns.sysctl("net.ipv4.tcp_max_tw_buckets", "10");
    let listener = ns.run(|| TcpListener::bind(("127.0.0.1", 5000)).unwrap());
    let ns_name = ns.name().to_string();
    let doctor = std::thread::spawn(move || {
        doctor_json(&["doctor", "--netns", &ns_name, "--interval", "2", "--json"])
    });
    // Overflow while doctor waits between its two samples (it takes the
    // first within milliseconds of starting; 700 ms leaves room on a busy machine).
    std::thread::sleep(std::time::Duration::from_millis(700));
    ns.run(|| client_closes_first(&listener, (Ipv4Addr::LOCALHOST, 5000).into(), 50));
    let (code, v) = doctor.join().unwrap();
    assert_eq!(code, Some(3), "{:?}", codes(&v));
    assert!(
        codes(&v).contains(&"tw-bucket-overflow:critical".to_string()),
        "{:?}",
        codes(&v)
    );
    assert!(
        v["interval_seconds"].as_f64().unwrap() >= 2.0,
        "{}",
        v["interval_seconds"]
    );
}

/// The human report over recorded hosts (namespaces the tests above made,
/// on Linux 6.18), pinned by insta; the exit status says the worst finding.
#[test]
fn human_reports_over_recorded_hosts() {
    for (name, host, exit) in [
        ("doctor_recorded_bad", "netns-bad", 3),
        ("doctor_recorded_mixed", "netns-mixed", 1),
    ] {
        let path = format!(
            "{}/testdata/hosts/{host}/snapshot.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let o = timewait(&["doctor", "--from", &path]);
        assert_eq!(o.status.code(), Some(exit), "{host}");
        insta::assert_snapshot!(name, String::from_utf8(o.stdout).unwrap(), host);
    }
}

#[test]
fn tune_apply_refuses_without_root() {
    let Some(_ns) = Netns::new("noroot") else {
        return;
    };
    let o = crate::harness::timewait_as_nobody(&["tune", "--apply"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("tune --apply needs root") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}
