//! The model against the real kernel: the same paced stream of `connect()`s
//! runs on loopback in a fresh network namespace and through
//! `timewait_model::simulate`, and what succeeded must agree within 5%.
//!
//! The port range is narrowed to ~128 ports so exhaustion happens in a
//! fraction of a second; `tcp_tw_reuse_delay` is lowered to 200 ms so reuse
//! shows within a short test. Each scenario also checks the kernel really
//! behaved as the scenario intends (e.g. reuse happened), so a broken setup
//! cannot pass by agreeing on nothing.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use timewait_model::ports::{ConnectPorts, TwReuse, is_loopback};
use timewait_model::simulate::{SimInput, SimReport, simulate};

use crate::harness::netns::{Netns, tcp_ext_here, time_wait_here};

const SERVER_PORT: u16 = 5000;

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// An address on the namespace's own `lo` that is not 127/8 (RFC 2544 range).
const NON_LOOPBACK: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

#[derive(Clone)]
struct Scenario {
    range: &'static str,
    reserved: &'static str,
    tw_reuse: u8,
    reuse_delay_ms: u32,
    timestamps: u8,
    max_tw_buckets: Option<u64>,
    destination: Ipv4Addr,
    rate: f64,
    duration: f64,
}

impl Default for Scenario {
    fn default() -> Scenario {
        Scenario {
            range: "40000-40127",
            reserved: "",
            tw_reuse: 0,
            reuse_delay_ms: 200,
            timestamps: 1,
            max_tw_buckets: None,
            destination: LOOPBACK,
            rate: 500.0,
            duration: 1.0,
        }
    }
}

#[derive(Debug, Default)]
struct Measured {
    attempted: u64,
    succeeded: u64,
    failed_eaddrnotavail: u64,
    other_errors: Vec<String>,
    tw_recycled: u64,
    tw_overflow: u64,
    time_wait_at_end: u64,
}

fn predict(s: &Scenario) -> SimReport {
    simulate(&SimInput {
        rate: s.rate,
        duration_seconds: s.duration,
        ports: ConnectPorts::new(s.range.parse().unwrap(), s.reserved.parse().unwrap()),
        time_wait_seconds: 60.0,
        tw_reuse: s.tw_reuse.to_string().parse::<TwReuse>().unwrap(),
        timestamps: s.timestamps,
        destination_is_loopback: is_loopback(IpAddr::V4(s.destination)),
        reuse_delay_ms: s.reuse_delay_ms,
        max_tw_buckets: s.max_tw_buckets,
        destinations: 1,
        source_ips: 1,
        hold_ms: 0.0,
        seed: 7,
    })
    .unwrap()
}

/// Runs the scenario against the kernel in its own namespace.
fn measure(tag: &str, s: &Scenario) -> Option<Measured> {
    let ns = Netns::new(tag)?;
    let (lo, hi) = s.range.split_once('-').unwrap();
    ns.sysctl("net.ipv4.ip_local_port_range", &format!("{lo} {hi}"));
    if !s.reserved.is_empty() {
        ns.sysctl("net.ipv4.ip_local_reserved_ports", s.reserved);
    }
    ns.sysctl("net.ipv4.tcp_tw_reuse", &s.tw_reuse.to_string());
    // No TIME_WAIT is killed by a stray RST (RFC 1337): the model does not
    // simulate those, and the load test saw one free a port under the
    // parallel suite.
    ns.sysctl("net.ipv4.tcp_rfc1337", "1");
    // The model follows 6.14+ (millisecond reuse delay, tcp_tw_reuse_delay);
    // older kernels reuse after a whole-second timestamp tick instead.
    assert!(
        std::path::Path::new("/proc/sys/net/ipv4/tcp_tw_reuse_delay").exists(),
        "these tests need Linux 6.14 or later (net.ipv4.tcp_tw_reuse_delay)"
    );
    ns.sysctl("net.ipv4.tcp_tw_reuse_delay", &s.reuse_delay_ms.to_string());
    ns.sysctl("net.ipv4.tcp_timestamps", &s.timestamps.to_string());
    if let Some(n) = s.max_tw_buckets {
        ns.sysctl("net.ipv4.tcp_max_tw_buckets", &n.to_string());
    }
    if s.destination != LOOPBACK {
        ns.ip(&["addr", "add", &format!("{}/32", s.destination), "dev", "lo"]);
    }
    // One paced stream at a time, and never beside the heaviest proxy tests:
    // on 2 cores they would delay connects and blur the timing.
    let _quiet = crate::harness::quiet();
    Some(ns.run(|| traffic(s)))
}

/// Inside the namespace: a server that closes second, and a paced client
/// that connects and closes first (so the client side holds TIME_WAIT).
fn traffic(s: &Scenario) -> Measured {
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener.set_reuse_address(true).unwrap();
    listener
        .bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, SERVER_PORT)).into())
        .unwrap();
    listener.listen(4096).unwrap();
    // accept() honours SO_RCVTIMEO, so the server can notice the stop flag.
    listener
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let before = tcp_ext_here();
    let server = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((conn, _)) = listener.accept() {
                    let mut conn: TcpStream = conn.into();
                    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    // Wait for the client's FIN, then close: the client is
                    // the side that closed first.
                    while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
                }
            }
        })
    };
    let dest = SocketAddr::from((s.destination, SERVER_PORT));
    let mut m = Measured::default();
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / s.rate);
    let attempts = (s.rate * s.duration).ceil() as u32;
    for k in 0..attempts {
        let due = start + period * k;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        m.attempted += 1;
        match TcpStream::connect(dest) {
            Ok(conn) => {
                m.succeeded += 1;
                drop(conn);
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::EADDRNOTAVAIL) => {
                m.failed_eaddrnotavail += 1
            }
            Err(e) => m.other_errors.push(e.to_string()),
        }
    }
    // Let the last closes finish their handshakes before counting.
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    let after = tcp_ext_here();
    let delta = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    m.tw_recycled = delta("TWRecycled");
    m.tw_overflow = delta("TCPTimeWaitOverflow");
    m.time_wait_at_end = time_wait_here();
    m
}

/// Within 5% of the larger value (and 2 sockets, for tiny counts).
fn assert_close(what: &str, kernel: u64, model: u64) {
    let tol = (kernel.max(model) as f64 * 0.05).max(2.0);
    assert!(
        (kernel as f64 - model as f64).abs() <= tol,
        "{what}: kernel {kernel}, model {model} (tolerance {tol:.1})"
    );
}

/// Within 5% of the attempts: for counts that move one-for-one with the
/// successes (each reuse or overflow is one more success), so they are held
/// to the same absolute tolerance as the successes.
fn assert_within_attempts(what: &str, attempted: u64, kernel: u64, model: u64) {
    let tol = (attempted as f64 * 0.05).max(2.0);
    assert!(
        (kernel as f64 - model as f64).abs() <= tol,
        "{what}: kernel {kernel}, model {model} (tolerance {tol:.1}, 5% of {attempted} attempts)"
    );
}

fn compare(tag: &str, s: Scenario) -> Option<(Measured, SimReport)> {
    let k = measure(tag, &s)?;
    let p = predict(&s);
    eprintln!(
        "{tag}: kernel {k:?}\n{tag}: model succeeded {} failed {} reused {} overflow {} tw_end {}",
        p.succeeded, p.failed_eaddrnotavail, p.tw_reused, p.tw_overflow, p.time_wait_at_end
    );
    assert!(
        k.other_errors.is_empty(),
        "unexpected connect errors: {:?}",
        k.other_errors
    );
    assert_eq!(
        k.attempted, p.attempted,
        "both sides must attempt the same stream"
    );
    assert_close("succeeded", k.succeeded, p.succeeded);
    // Failures are attempts minus successes: the same information.
    assert_within_attempts(
        "failed with EADDRNOTAVAIL",
        k.attempted,
        k.failed_eaddrnotavail,
        p.failed_eaddrnotavail,
    );
    assert_within_attempts(
        "TIME_WAIT reused (TcpExt TWRecycled)",
        k.attempted,
        k.tw_recycled,
        p.tw_reused,
    );
    assert_within_attempts(
        "TIME_WAIT overflow (TcpExt TCPTimeWaitOverflow)",
        k.attempted,
        k.tw_overflow,
        p.tw_overflow,
    );
    assert_close(
        "TIME_WAIT at the end (sockstat tw)",
        k.time_wait_at_end,
        p.time_wait_at_end,
    );
    Some((k, p))
}

#[test]
fn without_reuse_the_range_is_used_once_then_eaddrnotavail() {
    let Some((k, _)) = compare("noreuse", Scenario::default()) else {
        return;
    };
    // Every port of 40000-40127 once. Under load the real kernel now and
    // then frees one port without TIME_WAIT (seen once in CI: 129), so the
    // band is narrow rather than exact; the model comparison above is the proof.
    assert!((128..=130).contains(&k.succeeded), "{}", k.succeeded);
    assert!(k.failed_eaddrnotavail > 300);
}

#[test]
fn reuse_1_takes_over_time_wait_after_the_delay() {
    let s = Scenario {
        tw_reuse: 1,
        rate: 1000.0,
        duration: 1.5,
        ..Default::default()
    };
    let Some((k, _)) = compare("reuse1", s) else {
        return;
    };
    assert!(k.tw_recycled > 300, "the kernel really reused TIME_WAIT");
    assert!(
        k.failed_eaddrnotavail > 100,
        "and the 200 ms delay still limited the rate"
    );
}

#[test]
fn reuse_2_applies_to_loopback_destinations() {
    let s = Scenario {
        tw_reuse: 2,
        rate: 1000.0,
        duration: 1.5,
        ..Default::default()
    };
    let Some((k, _)) = compare("reuse2lo", s) else {
        return;
    };
    assert!(k.tw_recycled > 300);
}

#[test]
fn reuse_2_does_not_apply_to_other_addresses_even_on_lo() {
    let s = Scenario {
        tw_reuse: 2,
        rate: 1000.0,
        duration: 1.5,
        destination: NON_LOOPBACK,
        ..Default::default()
    };
    let Some((k, _)) = compare("reuse2remote", s) else {
        return;
    };
    assert_eq!(k.tw_recycled, 0);
    assert!((128..=130).contains(&k.succeeded), "{}", k.succeeded);
}

#[test]
fn timestamps_off_disable_reuse() {
    let s = Scenario {
        tw_reuse: 1,
        timestamps: 0,
        rate: 1000.0,
        duration: 1.5,
        ..Default::default()
    };
    let Some((k, _)) = compare("nots", s) else {
        return;
    };
    assert_eq!(k.tw_recycled, 0);
}

#[test]
fn odd_range_and_reserved_ports() {
    let s = Scenario {
        range: "40000-40128",
        reserved: "40010-40019",
        ..Default::default()
    };
    let Some((k, _)) = compare("oddres", s) else {
        return;
    };
    assert!((118..=119).contains(&k.succeeded), "{}", k.succeeded);
}

#[test]
fn full_time_wait_table_overflows_and_frees_ports() {
    let s = Scenario {
        max_tw_buckets: Some(40),
        ..Default::default()
    };
    let Some((k, _)) = compare("overflow", s) else {
        return;
    };
    assert_eq!(k.failed_eaddrnotavail, 0);
    assert!(k.tw_overflow > 400);
    assert_eq!(k.time_wait_at_end, 40);
}
