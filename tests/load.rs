//! `timewait load` against targets whose behaviour is known: a namespace
//! with N ephemeral ports (EADDRNOTAVAIL counted exactly), a keep-alive
//! backend (no more connections than the concurrency), a paced schedule,
//! and a stalling target (latency includes the queueing).

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::Ordering;

use serde_json::Value;
use timewait_model::ports::{ConnectPorts, ReservedPorts};

use crate::harness::backend::Backend;
use crate::harness::netns::Netns;

fn load(prefix: &[&str], args: &[&str]) -> Value {
    let bin = env!("CARGO_BIN_EXE_timewait");
    let mut cmd = match prefix.split_first() {
        Some((p, rest)) => {
            let mut c = Command::new(p);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let o = cmd.arg("load").args(args).arg("--json").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn eaddrnotavail_is_counted_exactly_against_the_ports_a_namespace_has() {
    let Some(ns) = Netns::new("load") else {
        return;
    };
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40099");
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0");
    // A TIME_WAIT that receives an RST is dropped and its port freed (RFC
    // 1337's "assassination", allowed by default). Under the parallel
    // suite a stray RST in the namespace (TcpOutRsts 1) did that, and one
    // or two more connects succeeded than the ports allow; with
    // tcp_rfc1337=1 TIME_WAIT ignores RSTs and the count is exact.
    ns.sysctl("net.ipv4.tcp_rfc1337", "1");
    // A server that closes after the client: every connection leaves a
    // client-side TIME_WAIT holding its port.
    let listener = ns.run(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 5000)).unwrap());
    std::thread::spawn(move || {
        for s in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut b = [0u8; 64];
                let _ = (&s).read(&mut b);
            });
        }
    });
    let v = load(
        &["ip", "netns", "exec", ns.name()],
        &["tcp://127.0.0.1:5000", "--requests", "300"],
    );
    let usable = u64::from(
        ConnectPorts::new("40000 40099".parse().unwrap(), ReservedPorts::none()).usable(),
    );
    let succeeded = v["succeeded"].as_u64().unwrap();
    assert_eq!(v["attempted"], 300);
    // Every attempt is accounted for: a success (a connection opened) or
    // EADDRNOTAVAIL, nothing else.
    assert_eq!(
        v["errors"]["EADDRNOTAVAIL"].as_u64(),
        Some(300 - succeeded),
        "{v}"
    );
    assert_eq!(v["connections_opened"].as_u64(), Some(succeeded));
    // And exactly what the namespace's 100 ports allow.
    assert_eq!(succeeded, usable, "{v}");
    assert!(
        v["error_meanings"]["EADDRNOTAVAIL"]
            .as_str()
            .unwrap()
            .contains("4-tuple")
    );
}

/// A port nothing listens on: every connect is refused and counted as
/// ECONNREFUSED, whether the request would have been written at once
/// (HTTP, a TCP payload) or there is nothing to write (bare TCP).
#[test]
fn refused_connects_are_counted_by_errno_whatever_is_sent() {
    let Some(ns) = Netns::new("load-refused") else {
        return;
    };
    for target in [
        &["http://127.0.0.1:5999/"][..],
        &["tcp://127.0.0.1:5999", "--payload", "hello"],
        &["tcp://127.0.0.1:5999"],
    ] {
        let mut args = target.to_vec();
        args.extend(["--requests", "20", "--concurrency", "2"]);
        let v = load(&["ip", "netns", "exec", ns.name()], &args);
        assert_eq!(
            (v["succeeded"].as_u64(), v["connections_opened"].as_u64()),
            (Some(0), Some(0)),
            "{target:?}: {v}"
        );
        assert_eq!(
            v["errors"],
            serde_json::json!({"ECONNREFUSED": 20}),
            "{target:?}"
        );
    }
}

/// A handshake not done when connect() returns is waited for: the
/// listener's accept queue is full (backlog 0 and one connection of the
/// test's waiting in it), so the load's SYN is dropped and sent again
/// after the kernel's initial retransmission timeout (1 s). The request
/// still goes, and the connect latency is the handshake's, not connect()'s
/// return.
#[test]
fn a_handshake_still_under_way_is_waited_for_and_timed() {
    let Some(ns) = Netns::new("load-syn") else {
        return;
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 5001));
    let (listener, filler) = ns.run(|| {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&addr.into()).unwrap();
        s.listen(0).unwrap();
        (TcpListener::from(s), TcpStream::connect(addr).unwrap())
    });
    let (v, got) = std::thread::scope(|scope| {
        let server = scope.spawn(|| {
            // Make room only once the load's connect waits on its SYN.
            let waiting = (0..1000).any(|_| {
                std::thread::sleep(std::time::Duration::from_millis(10));
                !ns.ss_in_state("syn-sent").is_empty()
            });
            assert!(waiting, "no connect waited on its handshake");
            drop(listener.accept().unwrap());
            drop(filler);
            let (mut s, _) = listener.accept().unwrap();
            let mut got = String::new();
            s.read_to_string(&mut got).unwrap();
            got
        });
        let v = load(
            &["ip", "netns", "exec", ns.name()],
            &[
                "tcp://127.0.0.1:5001",
                "--payload",
                "hello",
                "--requests",
                "1",
                "--timeout",
                "30",
            ],
        );
        (v, server.join().unwrap())
    });
    assert_eq!(v["succeeded"], 1, "{v}");
    assert_eq!(got, "hello");
    assert!(
        v["connect_latency_ms"]["max"].as_f64().unwrap() >= 900.0,
        "{v}"
    );
}

#[test]
fn keepalive_opens_no_more_connections_than_the_concurrency() {
    let backend = Backend::start(None);
    let target = format!("http://{}/", backend.addr);
    let v = load(
        &[],
        &[
            &target,
            "--mode",
            "keepalive",
            "--concurrency",
            "4",
            "--requests",
            "400",
        ],
    );
    assert_eq!(v["succeeded"], 400, "{v}");
    assert_eq!(v["connections_opened"], 4);
    assert_eq!(backend.accepts.load(Ordering::SeqCst), 4);
    // Close mode: one per request.
    let v = load(&[], &[&target, "--concurrency", "2", "--requests", "50"]);
    assert_eq!(
        (v["succeeded"].as_u64(), v["connections_opened"].as_u64()),
        (Some(50), Some(50))
    );
}

#[test]
fn the_rate_schedule_is_kept_and_latency_includes_the_queueing() {
    let backend = Backend::start(None);
    // 200/s for 1 s: exactly the 200 requests due before the end.
    let v = load(
        &[],
        &[
            &format!("http://{}/", backend.addr),
            "--rate",
            "200",
            "--duration",
            "1",
            "--concurrency",
            "8",
            "--mode",
            "keepalive",
        ],
    );
    assert_eq!(v["attempted"], 200, "{v}");
    assert_eq!(v["succeeded"], 200);
    // A target taking 200 ms per request, paced at 10/s through one
    // connection: request i waits for the i before it. The last one is
    // due at 0.9 s and cannot finish before 10 × 0.2 s = 2 s, so its
    // latency, counted from when it was due, is at least 1.1 s.
    let v = load(
        &[],
        &[
            &format!("http://{}/sleep?ms=200", backend.addr),
            "--rate",
            "10",
            "--duration",
            "1",
            "--mode",
            "keepalive",
            "--timeout",
            "30",
        ],
    );
    assert_eq!(v["succeeded"], 10, "{v}");
    assert!(v["latency_ms"]["max"].as_f64().unwrap() >= 1100.0, "{v}");
}

#[test]
fn the_progress_bar_is_drawn_on_a_terminal_and_nowhere_else() {
    let Some(ns) = Netns::new("loadbar") else {
        return;
    };
    let backend = Backend::start_on(
        ns.run(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap()),
        None,
    );
    let target = format!("http://{}/", backend.addr);
    let args = ["load", &target, "--duration", "2", "--concurrency", "2"];
    let bin = env!("CARGO_BIN_EXE_timewait");
    // On a terminal (script(1) gives it one): the bar, redrawn, with the
    // live counts, then the report.
    let line = std::iter::once(bin)
        .chain(args)
        .collect::<Vec<_>>()
        .join(" ");
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "script",
            "-qec",
            &line,
            "/dev/null",
        ])
        .output()
        .unwrap();
    let tty = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{tty}");
    assert!(
        tty.contains(" req/s ") && tty.contains(" ok ") && tty.contains("TIME_WAIT"),
        "{tty}"
    );
    assert!(tty.contains("/2 s"), "{tty}");
    assert!(tty.contains("attempted"), "{tty}");
    // Not a terminal: the report alone, nothing on standard error.
    let o = Command::new("ip")
        .args(["netns", "exec", ns.name(), bin])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stderr), "");
    assert!(!String::from_utf8_lossy(&o.stdout).contains("req/s  "));
}
