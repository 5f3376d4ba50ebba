//! `timewait status` and `snapshot` against sockets the test made itself in
//! its own namespace: counts must equal what was made and what `ss` says,
//! whether the namespace is named (`--netns`), reached through a process
//! (`--pid`), entered by `ip netns exec`, or analysed offline (`--from`).

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::Command;

use serde_json::Value;

use crate::harness::netns::Netns;
use crate::harness::traffic::{client_closes_first, server_closes_first};

const OTHER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// Sockets the test holds open while timewait looks.
struct Made {
    _held: Vec<TcpStream>,
    _listeners: Vec<TcpListener>,
}

/// In the namespace: 30 TIME_WAIT toward 127.0.0.1:5000, 20 toward
/// 127.0.0.1:5001 plus 5 established, 10 toward 198.18.0.1:5000, 4 toward
/// [::1]:5003, and 7 server-side TIME_WAIT on the listening port 5002.
fn make_sockets() -> Made {
    let l5000 = TcpListener::bind(("0.0.0.0", 5000)).unwrap();
    let l5001 = TcpListener::bind(("0.0.0.0", 5001)).unwrap();
    let l5002 = TcpListener::bind(("0.0.0.0", 5002)).unwrap();
    let l5003 = TcpListener::bind(("::1", 5003)).unwrap();
    client_closes_first(&l5000, (Ipv4Addr::LOCALHOST, 5000).into(), 30);
    client_closes_first(&l5001, (Ipv4Addr::LOCALHOST, 5001).into(), 20);
    client_closes_first(&l5000, (OTHER, 5000).into(), 10);
    client_closes_first(&l5003, "[::1]:5003".parse().unwrap(), 4);
    server_closes_first(&l5002, (Ipv4Addr::LOCALHOST, 5002).into(), 7);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect((Ipv4Addr::LOCALHOST, 5001)).unwrap());
        held.push(l5001.accept().unwrap().0);
    }
    // Let the last FIN/ACK exchanges settle.
    std::thread::sleep(std::time::Duration::from_millis(100));
    Made {
        _held: held,
        _listeners: vec![l5000, l5001, l5002, l5003],
    }
}

/// Runs timewait and requires success.
fn timewait_ok(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_timewait"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn status_json(args: &[&str]) -> Value {
    serde_json::from_slice(&timewait_ok(args).stdout).unwrap()
}

fn destination<'a>(v: &'a Value, local: &str, remote: &str, port: u64) -> &'a Value {
    v["time_wait"]["by_destination"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["local_ip"] == local && d["remote_ip"] == remote && d["remote_port"] == port)
        .unwrap_or_else(|| panic!("no destination {local} -> {remote}:{port} in {v:#}"))
}

/// The parts of a status report that describe the namespace, not the run.
fn census_part(v: &Value) -> Value {
    let mut v = v.clone();
    for k in ["taken_at_unix_ms", "namespace"] {
        v.as_object_mut().unwrap().remove(k);
    }
    v
}

/// TIME_WAIT per destination as `ss` reports it.
fn ss_time_wait(ns: &Netns) -> std::collections::BTreeMap<String, u64> {
    let mut m = std::collections::BTreeMap::new();
    for line in ns.ss_time_wait() {
        // Recv-Q Send-Q Local:Port Peer:Port
        let f: Vec<&str> = line.split_whitespace().collect();
        *m.entry(f[3].to_string()).or_default() += 1;
    }
    m
}

#[test]
fn status_counts_what_was_made_in_every_way_of_looking() {
    let Some(ns) = Netns::new("status") else {
        return;
    };
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40999");
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0");
    ns.ip(&["addr", "add", &format!("{OTHER}/32"), "dev", "lo"]);
    let _made = ns.run(make_sockets);

    let v = status_json(&["status", "--netns", ns.name(), "--json"]);
    assert_eq!(v["census_source"], "netlink");
    assert_eq!(v["states"]["TIME_WAIT"], 71);
    assert_eq!(v["states"]["ESTABLISHED"], 10, "5 connections, both ends");
    assert_eq!(v["states"]["LISTEN"], 4);
    assert_eq!(v["settings"]["port_range"], "40000-40999");
    assert_eq!(v["settings"]["sockstat_time_wait"], 71);

    let d = destination(&v, "127.0.0.1", "127.0.0.1", 5000);
    assert_eq!(
        (d["time_wait"].as_u64(), d["established"].as_u64()),
        (Some(30), Some(0))
    );
    assert_eq!(
        d["usable_ports"], 1000,
        "usable ports follow the namespace's range"
    );
    assert_eq!(d["expiring"]["within_60s"], 30);
    assert_eq!(d["expiring"]["within_10s"], 0);
    let d = destination(&v, "127.0.0.1", "127.0.0.1", 5001);
    assert_eq!(
        (d["time_wait"].as_u64(), d["established"].as_u64()),
        (Some(20), Some(5))
    );
    assert_eq!(d["ports_in_use"], 25);
    assert!((d["headroom_ratio"].as_f64().unwrap() - 0.975).abs() < 1e-9);
    let d = destination(&v, "198.18.0.1", "198.18.0.1", 5000);
    assert_eq!(d["time_wait"], 10);
    let d = destination(&v, "::1", "::1", 5003);
    assert_eq!(d["time_wait"], 4);
    let server = &v["time_wait"]["server_side"];
    assert_eq!(server[0]["local_port"], 5002);
    assert_eq!(server[0]["time_wait"], 7);
    assert_eq!(v["time_wait"]["destinations_total"], 4);

    // What ss says, destination by destination (server-side ones have the
    // client's ephemeral port as peer, so they are summed).
    let ss = ss_time_wait(&ns);
    assert_eq!(ss.get("127.0.0.1:5000"), Some(&30));
    assert_eq!(ss.get("127.0.0.1:5001"), Some(&20));
    assert_eq!(ss.get("198.18.0.1:5000"), Some(&10));
    assert_eq!(ss.get("[::1]:5003"), Some(&4));
    assert_eq!(ss.values().sum::<u64>(), 71);

    // The /proc/net/tcp fallback sees the same sockets (its timers are in
    // 1/100 s, so compare counts, not the timer buckets' exact edges).
    let proc = status_json(&["status", "--netns", ns.name(), "--via", "proc", "--json"]);
    assert_eq!(proc["census_source"], "proc");
    assert_eq!(proc["states"], v["states"]);
    assert_eq!(
        proc["time_wait"]["server_side"],
        v["time_wait"]["server_side"]
    );
    let counts = |x: &Value| -> Vec<(String, u64, u64, u64)> {
        let mut r: Vec<_> = x["time_wait"]["by_destination"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    format!("{}>{}:{}", d["local_ip"], d["remote_ip"], d["remote_port"]),
                    d["time_wait"].as_u64().unwrap(),
                    d["established"].as_u64().unwrap(),
                    d["ports_in_use"].as_u64().unwrap(),
                )
            })
            .collect();
        r.sort();
        r
    };
    assert_eq!(counts(&proc), counts(&v));

    // The same namespace reached through a process in it.
    let mut sleeper = Command::new("ip")
        .args(["netns", "exec", ns.name(), "sleep", "30"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let by_pid = status_json(&["status", "--pid", &sleeper.id().to_string(), "--json"]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(census_part(&by_pid), census_part(&v));
    assert_eq!(by_pid["namespace"], format!("pid {}", sleeper.id()));

    // And from inside, as `ip netns exec` runs it.
    let inside = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            env!("CARGO_BIN_EXE_timewait"),
            "status",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(inside.status.success());
    let inside: Value = serde_json::from_slice(&inside.stdout).unwrap();
    assert_eq!(census_part(&inside), census_part(&v));

    // A snapshot analysed offline gives the same answer.
    let dir = std::env::temp_dir().join(format!("timewait-snap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("snap.json");
    timewait_ok(&[
        "snapshot",
        "--netns",
        ns.name(),
        "-o",
        file.to_str().unwrap(),
    ]);
    let offline = status_json(&["status", "--from", file.to_str().unwrap(), "--json"]);
    assert_eq!(census_part(&offline), census_part(&v));
    // TIMEWAIT_RECORD_FIXTURES=1 refreshes the recorded host used by the
    // report snapshots below.
    if std::env::var_os("TIMEWAIT_RECORD_FIXTURES").is_some() {
        let to = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/hosts/netns-mixed/snapshot.json"
        );
        std::fs::create_dir_all(std::path::Path::new(to).parent().unwrap()).unwrap();
        std::fs::copy(&file, to).unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_targets_and_snapshot_files_are_one_line_errors() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_timewait"))
            .args(args)
            .output()
            .unwrap()
    };
    for (args, needle) in [
        (
            vec!["status", "--netns", "timewait-no-such-ns"],
            "no such network namespace",
        ),
        (vec!["status", "--netns", "../etc"], "not a namespace name"),
        (vec!["status", "--pid", "4294967295"], "no such process"),
        (
            vec!["status", "--from", "/nonexistent/snap.json"],
            "--from /nonexistent/snap.json",
        ),
        (vec!["status", "--top", "0"], "--top"),
        (vec!["status", "--watch", "0"], "--watch"),
    ] {
        let o = run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let dir = std::env::temp_dir().join(format!("timewait-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("x.json");
    std::fs::write(&f, "{\"format\": \"something-else\", \"version\": 1}").unwrap();
    let o = run(&["status", "--from", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a timewait snapshot"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn watch_refreshes_with_rates_and_stops_after_count() {
    let Some(ns) = Netns::new("watch") else {
        return;
    };
    let listener = ns.run(|| TcpListener::bind(("127.0.0.1", 5000)).unwrap());
    let name = ns.name().to_string();
    let watch = std::thread::spawn(move || {
        timewait_ok(&[
            "status", "--netns", &name, "--watch", "0.5", "--count", "4", "--json",
        ])
    });
    // Traffic after the first refresh: 40 new TIME_WAIT sockets.
    std::thread::sleep(std::time::Duration::from_millis(250));
    ns.run(|| client_closes_first(&listener, (Ipv4Addr::LOCALHOST, 5000).into(), 40));
    let out = watch.join().unwrap();
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "--count stops it");
    assert!(
        lines[0].get("rates").is_none(),
        "no rate before a second sample"
    );
    assert!(lines[3]["rates"]["interval_seconds"].as_f64().unwrap() > 0.4);
    // Some refresh saw the 40 arrive, in the census and in the kernel's counter.
    let rising = lines[1..].iter().any(|l| {
        l["rates"]["time_wait_per_second"].as_f64().unwrap() > 0.0
            && l["rates"]["entering_time_wait_per_second"]
                .as_f64()
                .unwrap()
                > 0.0
    });
    assert!(
        rising,
        "{:?}",
        lines.iter().map(|l| &l["rates"]).collect::<Vec<_>>()
    );
    assert_eq!(lines[3]["states"]["TIME_WAIT"], 40);
}

/// Human reports over a recorded host (a namespace made by the test above,
/// on Linux 6.18): the layout users read, pinned by insta.
#[test]
fn human_reports_over_a_recorded_host() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/hosts/netns-mixed/snapshot.json"
    );
    for (name, extra) in [
        ("status_recorded_by_destination", vec![]),
        ("status_recorded_by_remote_ip", vec!["--by", "remote-ip"]),
        ("status_recorded_top_1", vec!["--top", "1"]),
    ] {
        let mut args = vec!["status", "--from", fixture];
        args.extend(extra);
        let out = timewait_ok(&args);
        insta::assert_snapshot!(
            name,
            String::from_utf8(out.stdout).unwrap(),
            &args[3..].join(" ")
        );
    }
}

#[test]
fn entering_a_namespace_without_privileges_is_a_clear_error() {
    let Some(ns) = Netns::new("noperm") else {
        return;
    };
    let o = crate::harness::timewait_as_nobody(&["status", "--netns", ns.name()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("permission denied") && err.contains("root"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}
