//! `timewait proxy` observed from outside, on loopback: the backend's accept
//! count and the source ports it sees prove reuse; raw requests prove the
//! gateway rules and the refusals.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::harness::backend::Backend;

/// A running `timewait proxy`, killed when dropped.
struct Proxy {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    /// What the proxy prints after its first line (the access log).
    lines: std::sync::mpsc::Receiver<String>,
}

impl Proxy {
    fn start(upstreams: &[SocketAddr], extra: &[&str]) -> Proxy {
        let mut args = vec!["proxy".to_string(), "--listen".into(), "127.0.0.1:0".into()];
        for u in upstreams {
            args.push("--upstream".into());
            args.push(u.to_string());
        }
        args.extend(["--admin".into(), "127.0.0.1:0".into()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        Proxy::spawn(args)
    }

    /// `timewait proxy -c FILE`.
    fn start_config(file: &std::path::Path) -> Proxy {
        Proxy::spawn(vec![
            "proxy".into(),
            "-c".into(),
            file.display().to_string(),
        ])
    }

    fn spawn(args: Vec<String>) -> Proxy {
        Proxy::spawn_under(&[], args)
    }

    /// Runs the proxy under `wrapper` (e.g. `prlimit --nofile=256:256 --`).
    fn spawn_under(wrapper: &[&str], args: Vec<String>) -> Proxy {
        let bin = env!("CARGO_BIN_EXE_timewait");
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        if line.is_empty() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("proxy did not start: {err}");
        }
        // "timewait proxy: listening on ADDR (N worker(s)), upstreams …, admin http://ADDR/metrics"
        let addr = line
            .split("listening on ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let admin = line
            .split("admin http://")
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        Proxy {
            child,
            addr,
            admin,
            lines,
        }
    }

    fn metric(&self, name: &str) -> u64 {
        let (status, _, body) = exchange(
            self.admin,
            b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status, 200);
        let text = String::from_utf8(body).unwrap();
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    }

    fn get(&self, path: &str) -> (u16, String, Vec<u8>) {
        exchange(
            self.addr,
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends raw bytes on a new connection and reads the response until the
/// server closes: (status, head, body with chunking removed).
fn exchange(addr: SocketAddr, raw: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(raw).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&all[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut body = all[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, head, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

#[test]
fn clients_that_close_do_not_make_the_proxy_open_new_backend_connections() {
    let backend = Backend::start(None);
    let proxy = Proxy::start(&[backend.addr], &[]);
    for _ in 0..50 {
        // A new client connection each time, asking to close: the article's
        // browser -> nginx -> backend chain with the fix applied.
        let (status, _, body) = proxy.get("/");
        assert_eq!((status, body.as_slice()), (200, b"ok".as_slice()));
    }
    assert_eq!(
        backend.accepts.load(Ordering::SeqCst),
        1,
        "one backend connection for 50 requests"
    );
    let ports = backend.peer_ports.lock().unwrap().clone();
    assert_eq!(
        ports.len(),
        1,
        "same source port across requests: {ports:?}"
    );
    for head in backend.heads() {
        let lower = head.to_ascii_lowercase();
        assert!(head.starts_with("GET / HTTP/1.1\r\n"), "{head}");
        assert!(
            !lower.contains("connection: close"),
            "the client's close was forwarded: {head}"
        );
        assert!(lower.contains("x-forwarded-for: 127.0.0.1"), "{head}");
    }
    assert_eq!(
        proxy.metric("timewait_proxy_upstream_connections_opened_total"),
        1
    );
    assert_eq!(
        proxy.metric("timewait_proxy_upstream_reused_requests_total"),
        49
    );
    assert_eq!(proxy.metric("timewait_proxy_requests_total"), 50);
    assert_eq!(proxy.metric("timewait_proxy_upstream_requests_total"), 50);
    assert_eq!(
        proxy.metric("timewait_proxy_responses_total{class=\"2xx\"}"),
        50
    );
    // The one backend connection is back in the pool, idle.
    assert_eq!(proxy.metric("timewait_proxy_pool_idle_connections"), 1);
}

#[test]
fn hop_by_hop_headers_are_stripped_both_ways() {
    let backend = Backend::start(None);
    let proxy = Proxy::start(&[backend.addr], &["--via", "timewait-test"]);
    let (status, head, body) = exchange(
        proxy.addr,
        b"GET /headers HTTP/1.1\r\nHost: test\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=9\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nX-Forwarded-For: 203.0.113.7\r\nX-Kept: yes\r\n\r\n",
    );
    assert_eq!(status, 200);
    let seen = String::from_utf8(body).unwrap().to_ascii_lowercase();
    for gone in [
        "x-secret",
        "keep-alive",
        "te:",
        "proxy-connection",
        "connection: close",
    ] {
        assert!(!seen.contains(gone), "{gone} reached the backend:\n{seen}");
    }
    assert!(seen.contains("x-kept: yes"));
    assert!(
        seen.contains("x-forwarded-for: 203.0.113.7, 127.0.0.1"),
        "{seen}"
    );
    assert!(seen.contains("x-forwarded-proto: http"));
    assert!(seen.contains("via: 1.1 timewait-test"));
    // The backend's Keep-Alive and the header its Connection names never reach the client.
    let head = head.to_ascii_lowercase();
    assert!(!head.contains("keep-alive: timeout=5"), "{head}");
    assert!(!head.contains("x-internal"), "{head}");
    assert!(head.contains("via: 1.1 timewait-test"));
}

#[test]
fn http10_clients_get_http11_keepalive_upstream() {
    let backend = Backend::start(None);
    let proxy = Proxy::start(&[backend.addr], &[]);
    for _ in 0..3 {
        let (status, _, body) = exchange(proxy.addr, b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!((status, body.as_slice()), (200, b"ok".as_slice()));
    }
    assert_eq!(backend.accepts.load(Ordering::SeqCst), 1);
    let head = &backend.heads()[0];
    assert!(head.starts_with("GET / HTTP/1.1\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("host: "),
        "a Host is added for HTTP/1.1: {head}"
    );
    // An absolute-form target reaches the backend in origin form.
    let (status, _, _) = exchange(
        proxy.addr,
        b"GET http://example.com/x?y=1 HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    let last = backend.heads().last().cloned().unwrap();
    assert!(last.starts_with("GET /x?y=1 HTTP/1.1\r\n"), "{last}");
}

#[test]
fn smuggling_vectors_are_refused_with_400_and_never_reach_the_backend() {
    let backend = Backend::start(None);
    let proxy = Proxy::start(&[backend.addr], &[]);
    let vectors: [(&str, &[u8]); 6] = [
        (
            "differing Content-Length",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        (
            "whitespace before the colon",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        ),
        (
            "obs-fold",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Fold: a\r\n b\r\n\r\n",
        ),
        (
            "bare CR",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Bad: a\rb\r\n\r\n",
        ),
        (
            "duplicate Host",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ),
        (
            "Transfer-Encoding not ending in chunked",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        ),
    ];
    let mut vectors = vectors.to_vec();
    vectors.push((
        "Content-Length with Transfer-Encoding",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ));
    let n = vectors.len() as u64;
    for (name, raw) in vectors {
        let (status, head, _) = exchange(proxy.addr, raw);
        assert_eq!(status, 400, "{name}: {head}");
    }
    assert!(backend.heads().is_empty(), "{:?}", backend.heads());
    assert_eq!(proxy.metric("timewait_proxy_refused_requests_total"), n);
    assert_eq!(
        proxy.metric("timewait_proxy_responses_total{class=\"4xx\"}"),
        n
    );
}

/// Content-Length together with Transfer-Encoding, followed by a request
/// hidden in the body: refused outright (400, connection closed), so the
/// backend sees nothing, smuggled or not.
#[test]
fn content_length_with_transfer_encoding_cannot_desync_the_backend() {
    let backend = Backend::start(None);
    let proxy = Proxy::start(&[backend.addr], &[]);
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // If the 5-byte Content-Length were believed, "0\r\n\r\nGET /smuggled…" would split differently.
    s.write_all(
        b"POST /count HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap(); // ends: the proxy closed the connection
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(text.matches("HTTP/1.1").count(), 1, "one answer: {text}");
    assert!(backend.heads().is_empty(), "{:?}", backend.heads());
}

#[test]
fn a_backend_closing_idle_connections_causes_no_errors() {
    // The backend closes connections idle for 1 s; the proxy would keep them
    // 30 s. Requests timed around the backend's close must all succeed.
    let backend = Backend::start(Some(Duration::from_secs(1)));
    let proxy = Proxy::start(&[backend.addr], &["--idle-timeout", "30"]);
    assert_eq!(proxy.get("/").0, 200);
    for pause_ms in [1200, 980, 1000, 1020, 1050] {
        std::thread::sleep(Duration::from_millis(pause_ms));
        let (status, _, body) = proxy.get("/");
        assert_eq!(
            (status, body.as_slice()),
            (200, b"ok".as_slice()),
            "after {pause_ms} ms"
        );
    }
    let bad = proxy.metric("timewait_proxy_upstream_errors_total");
    assert_eq!(bad, 0);
}

#[test]
fn a_dead_backend_gets_502_and_recovery_is_seen() {
    let reserved = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = reserved.local_addr().unwrap();
    drop(reserved); // nothing listens there now
    let proxy = Proxy::start(&[addr], &["--connect-timeout", "1"]);
    let (status, _, body) = proxy.get("/");
    assert_eq!(status, 502);
    assert!(
        String::from_utf8_lossy(&body).contains("cannot connect"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    // It kept trying (backing off) for the whole connect timeout before giving up.
    assert!(proxy.metric("timewait_proxy_upstream_connect_errors_total") >= 2);
    let backend = Backend::start_on(TcpListener::bind(addr).unwrap(), None);
    assert_eq!(proxy.get("/").0, 200);
    assert_eq!(backend.accepts.load(Ordering::SeqCst), 1);
}

#[test]
fn broken_backend_framing_is_502_and_that_connection_is_dropped() {
    let backend = Backend::start(None);
    let proxy = Proxy::start(&[backend.addr], &[]);
    assert_eq!(proxy.get("/").0, 200);
    assert_eq!(proxy.get("/broken").0, 502);
    assert_eq!(proxy.get("/").0, 200);
    assert_eq!(
        backend.accepts.load(Ordering::SeqCst),
        2,
        "a fresh connection after the broken one"
    );
}

/// Peak resident memory of a process, from /proc (VmHWM).
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn large_bodies_stream_both_ways_in_flat_memory() {
    let _quiet = crate::harness::quiet();
    const MB: usize = 1024 * 1024;
    let backend = Backend::start(None);
    let proxy = Proxy::start(&[backend.addr], &[]);
    // 256 MiB down, chunked by the backend.
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.write_all(
        format!(
            "GET /big?n={} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            256 * MB
        )
        .as_bytes(),
    )
    .unwrap();
    let received = std::io::copy(&mut s, &mut std::io::sink()).unwrap();
    assert!(received > (256 * MB) as u64, "{received}");
    // 128 MiB up, with Content-Length; the backend answers what it counted.
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.write_all(
        format!(
            "POST /count HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            128 * MB
        )
        .as_bytes(),
    )
    .unwrap();
    let chunk = vec![b'y'; MB];
    for _ in 0..128 {
        s.write_all(&chunk).unwrap();
    }
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.ends_with(&(128 * MB).to_string()), "{resp}");
    let peak = peak_rss_kb(proxy.child.id());
    assert!(
        peak < 48 * 1024,
        "proxy peak RSS {peak} kB for 384 MiB streamed"
    );
}

#[test]
fn a_dead_backend_is_left_alone_and_no_request_fails() {
    let alive = Backend::start(None);
    let reserved = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = reserved.local_addr().unwrap();
    drop(reserved);
    let proxy = Proxy::start(
        &[dead, alive.addr],
        &["--max-fails", "2", "--fail-timeout", "30"],
    );
    for i in 0..30 {
        let (status, _, body) = proxy.get("/");
        assert_eq!(
            (status, body.as_slice()),
            (200, b"ok".as_slice()),
            "request {i}"
        );
    }
    // Connect failures send nothing, so each went on to the live backend;
    // after 2 the dead one was left alone.
    assert_eq!(
        proxy.metric("timewait_proxy_upstream_connect_errors_total"),
        2
    );
    assert_eq!(proxy.metric("timewait_proxy_upstream_ejections_total"), 1);
    assert_eq!(alive.heads().len(), 30);
}

#[test]
fn least_connections_avoids_the_busy_backend() {
    let (a, b) = (Backend::start(None), Backend::start(None));
    let proxy = Proxy::start(&[a.addr, b.addr], &["--balance", "least-conn"]);
    let addr = proxy.addr;
    let slow = std::thread::spawn(move || {
        exchange(
            addr,
            b"GET /sleep?ms=1500 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .0
    });
    // Wait until one backend holds the slow request.
    while a.heads().len() + b.heads().len() == 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (busy, idle) = if a.heads().is_empty() {
        (&b, &a)
    } else {
        (&a, &b)
    };
    for _ in 0..6 {
        assert_eq!(proxy.get("/").0, 200);
    }
    assert_eq!(slow.join().unwrap(), 200);
    assert_eq!(busy.heads().len(), 1, "the busy backend got nothing more");
    assert_eq!(idle.heads().len(), 6);
}

#[test]
fn sigterm_finishes_requests_in_flight_then_exits() {
    let backend = Backend::start(None);
    let mut proxy = Proxy::start(&[backend.addr], &[]);
    let addr = proxy.addr;
    let slow = std::thread::spawn(move || {
        exchange(
            addr,
            b"GET /sleep?ms=800 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
    });
    while backend.heads().is_empty() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = nix::unistd::Pid::from_raw(proxy.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let (status, _, body) = slow.join().unwrap();
    assert_eq!(
        (status, body.as_slice()),
        (200, b"ok".as_slice()),
        "the request in flight finished"
    );
    let exit = proxy.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(TcpStream::connect(addr).is_err(), "no longer accepting");
}

/// Soak: steady GET traffic from 4 clients while the backend is killed and
/// restarted twice on the same port. Idempotent requests must never fail,
/// and the proxy's memory must not grow. TIMEWAIT_SOAK_SECS sets the length
/// (the default keeps CI short; scripts/soak-proxy.sh runs it for minutes).
#[test]
fn soak_with_backend_restarts_loses_no_request() {
    let _quiet = crate::harness::quiet();
    let secs: u64 = std::env::var("TIMEWAIT_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let mut backend = Some(Backend::start(None));
    let addr = backend.as_ref().unwrap().addr;
    let proxy = Proxy::start(&[addr], &["--connect-timeout", "3"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, paddr) = (stop.clone(), proxy.addr);
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u64, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let (status, _, body) = exchange(
                        paddr,
                        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                    );
                    if status == 200 && body == b"ok" {
                        ok += 1;
                    } else {
                        failed.push(status);
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let rss = |p: &Proxy| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", p.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let third = Duration::from_secs(secs) / 3;
    std::thread::sleep(third);
    let rss_early = rss(&proxy);
    for _ in 0..2 {
        backend.take().unwrap().kill();
        std::thread::sleep(Duration::from_millis(300));
        backend = Some(Backend::start_on(TcpListener::bind(addr).unwrap(), None));
        std::thread::sleep(third);
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        let (ok, failed) = c.join().unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        total += ok;
    }
    assert!(total > 100, "{total} requests");
    let rss_late = rss(&proxy);
    assert!(
        rss_late < rss_early + 8 * 1024,
        "RSS grew from {rss_early} kB to {rss_late} kB"
    );
}

/// A reused backend connection dies after the request went out and before
/// any answer. A GET goes once more on a fresh connection (counted in
/// retries_total); a POST, which the backend may have acted on, gets 502.
#[test]
fn a_backend_hanging_up_is_retried_once_for_safe_requests_only() {
    let backend = Backend::start(None);
    let proxy = Proxy::start(&[backend.addr], &[]);
    assert_eq!(proxy.get("/").0, 200, "a connection to reuse");
    let (status, _, body) = proxy.get("/hangup");
    assert_eq!((status, body.as_slice()), (200, b"ok".as_slice()));
    assert_eq!(proxy.metric("timewait_proxy_retries_total"), 1);
    let (status, _, _) = exchange(
        proxy.addr,
        b"POST /hangup HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    );
    assert_eq!(status, 502, "a POST is not sent twice");
    assert_eq!(proxy.metric("timewait_proxy_retries_total"), 1);
    let posts = backend
        .heads()
        .iter()
        .filter(|h| h.starts_with("POST"))
        .count();
    assert_eq!(posts, 1);
    assert_eq!(proxy.get("/").0, 200, "and the proxy carries on");
}

/// A fresh backend connection dies after the request went out (a backend
/// restarting with it in its accept queue). A GET goes once more (RFC 9110
/// §9.2.2), to another backend if there is one; only once.
#[test]
fn a_fresh_connection_hung_up_on_is_retried_once_elsewhere_for_safe_requests() {
    let backend = Backend::start(None);
    let proxy = Proxy::start(&[backend.addr], &[]);
    let (status, _, body) = proxy.get("/hangup");
    assert_eq!((status, body.as_slice()), (200, b"ok".as_slice()));
    assert_eq!(proxy.metric("timewait_proxy_retries_total"), 1);
    assert_eq!(
        proxy.metric("timewait_proxy_upstream_connections_opened_total"),
        2
    );

    // Two backends that each hang up on their first /hangup: the retry
    // goes to the other one, and there is no third attempt.
    let (a, b) = (Backend::start(None), Backend::start(None));
    let proxy = Proxy::start(&[a.addr, b.addr], &[]);
    assert_eq!(proxy.get("/hangup").0, 502);
    assert_eq!(proxy.metric("timewait_proxy_retries_total"), 1);
    assert_eq!((a.heads().len(), b.heads().len()), (1, 1));
}

#[test]
fn upgrade_requests_are_passed_through_both_ways() {
    let backend = Backend::start(None);
    let proxy = Proxy::start(&[backend.addr], &[]);
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("upgrade: echo") && head.contains("connection: upgrade"),
        "{head}"
    );
    for msg in [&b"hello"[..], b"through the proxy", &[0u8, 159, 255, 10]] {
        s.write_all(msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
    }
    let seen = backend.heads()[0].to_ascii_lowercase();
    assert!(
        seen.contains("upgrade: echo") && seen.contains("connection: upgrade"),
        "{seen}"
    );
}

#[test]
fn interim_answers_are_skipped_and_ambiguous_lengths_refused() {
    let backend = Backend::start(None);
    let proxy = Proxy::start(&[backend.addr], &[]);
    let (status, head, body) = proxy.get("/early");
    assert_eq!((status, body.as_slice()), (200, b"ok".as_slice()), "{head}");
    // Two different lengths: the client must not be left guessing where the answer ends.
    let (status, _, _) = proxy.get("/twolengths");
    assert_eq!(status, 502);
    assert_eq!(proxy.get("/").0, 200, "and the proxy carries on");
}

#[test]
fn expect_continue_is_answered_here_and_not_forwarded() {
    let backend = Backend::start(None);
    let proxy = Proxy::start(&[backend.addr], &[]);
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /count HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .unwrap();
    // The client waits for the go-ahead before sending its body.
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert!(
        rest.starts_with("HTTP/1.1 200") && rest.ends_with("\r\n\r\n5"),
        "{rest}"
    );
    let head = backend.heads()[0].to_ascii_lowercase();
    assert!(!head.contains("expect"), "{head}");
}

#[test]
fn oversized_heads_get_431() {
    let backend = Backend::start(None);
    let proxy = Proxy::start(&[backend.addr], &["--max-headers", "20"]);
    let mut many = String::from("GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
    for i in 0..30 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(exchange(proxy.addr, many.as_bytes()).0, 431);
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The proxy may answer and close before reading it all.
    let _ = s.write_all(huge.as_bytes());
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    assert!(
        String::from_utf8_lossy(&resp).starts_with("HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&resp[..resp.len().min(200)])
    );
    assert!(backend.heads().is_empty());
    // Counted as answers, not as malformed requests.
    assert_eq!(
        proxy.metric("timewait_proxy_responses_total{class=\"4xx\"}"),
        2
    );
    assert_eq!(proxy.metric("timewait_proxy_refused_requests_total"), 0);
}

/// A client that stops reading a large answer (a slow-read attack) is cut
/// off after the body timeout instead of holding the exchange and its
/// backend connection.
#[test]
fn a_client_that_stops_reading_is_cut_off_after_the_body_timeout() {
    // Bulk data until the buffers fill: not beside the paced kernel tests.
    let _quiet = crate::harness::quiet();
    let backend = Backend::start(None);
    let proxy = Proxy::start(&[backend.addr], &["--body-timeout", "0.3"]);
    let n = 200 * 1024 * 1024;
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.write_all(format!("GET /big?n={n} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .unwrap();
    // Read nothing while the buffers fill and the timeout passes.
    std::thread::sleep(Duration::from_secs(3));
    let (got, _) = read_until_closed(&mut s);
    assert!(
        got.len() < n / 2,
        "{} of {n} bytes: the proxy kept sending to a client that did not read",
        got.len()
    );
    assert_eq!(proxy.get("/").0, 200, "and the proxy goes on");
}

/// Two workers; new client connections land on either (`SO_REUSEPORT`).
/// Per-worker pools hold a backend connection each; the shared pool one in
/// all, which every worker reuses.
#[test]
fn a_shared_pool_serves_every_worker_from_one_backend_connection() {
    for (flags, connections) in [
        (&["--workers", "2"][..], 2),
        (&["--workers", "2", "--shared-pool"], 1),
    ] {
        let backend = Backend::start(None);
        let proxy = Proxy::start(&[backend.addr], flags);
        for _ in 0..40 {
            assert_eq!(proxy.get("/").0, 200);
        }
        assert_eq!(
            backend.accepts.load(Ordering::SeqCst),
            connections,
            "{flags:?}"
        );
        assert_eq!(
            proxy.metric("timewait_proxy_upstream_reused_requests_total"),
            40 - connections as u64
        );
        assert_eq!(
            proxy.metric("timewait_proxy_pool_idle_connections"),
            connections as u64
        );
    }
    // A backend that closes idle connections after 300 ms: a parked
    // connection found closed is not used, and no request fails.
    let backend = Backend::start(Some(Duration::from_millis(300)));
    let proxy = Proxy::start(&[backend.addr], &["--workers", "2", "--shared-pool"]);
    for _ in 0..3 {
        assert_eq!(proxy.get("/").0, 200);
        std::thread::sleep(Duration::from_millis(600));
    }
    assert_eq!(proxy.metric("timewait_proxy_retries_total"), 0);
    assert_eq!(backend.accepts.load(Ordering::SeqCst), 3);
}

#[test]
fn a_config_file_routes_by_host_and_path_with_explicit_header_rules() {
    let (api, stat, web) = (
        Backend::start(None),
        Backend::start(None),
        Backend::start(None),
    );
    let dir = std::env::temp_dir().join(format!("timewait-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("proxy.toml");
    std::fs::write(
        &file,
        format!(
            r#"
admin = "127.0.0.1:0"

[headers]
set = {{ "X-Proxy" = "edge" }}

[[listener]]
listen = "127.0.0.1:0"

[[listener.route]]
path_prefix = "/api/"
upstream = "api"
headers = {{ set = {{ "X-Route" = "api" }} }}

[[listener.route]]
host = "static.test"
upstream = "static"
headers = {{ inherit = false }}

[[listener.route]]
path_prefix = "/web/"
upstream = "web"

[upstream.api]
servers = ["{}"]
balance = "least-conn"

[upstream.static]
servers = ["{}"]

[upstream.web]
servers = ["{}"]
"#,
            api.addr, stat.addr, web.addr
        ),
    )
    .unwrap();
    let proxy = Proxy::start_config(&file);
    let get = |host: &str, path: &str| {
        exchange(
            proxy.addr,
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .0
    };
    assert_eq!(get("a.test", "/api/users"), 200);
    assert_eq!(get("static.test", "/api/users"), 200, "the host rule wins");
    assert_eq!(get("a.test", "/web/index"), 200);
    assert_eq!(get("a.test", "/elsewhere"), 404, "no route");
    assert_eq!(
        (api.heads().len(), stat.heads().len(), web.heads().len()),
        (1, 1, 1)
    );
    let api_head = api.heads()[0].to_ascii_lowercase();
    assert!(
        api_head.contains("x-proxy: edge") && api_head.contains("x-route: api"),
        "{api_head}"
    );
    let static_head = stat.heads()[0].to_ascii_lowercase();
    assert!(
        !static_head.contains("x-proxy"),
        "inherit = false: {static_head}"
    );
    assert!(
        web.heads()[0]
            .to_ascii_lowercase()
            .contains("x-proxy: edge")
    );

    // A wrong file: one line naming the file and the line, exit 2.
    std::fs::write(
        &file,
        "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[listener.route]]\nupstream = \"nope\"\n",
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_timewait"))
        .args(["proxy", "-c", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("{}:4:", file.display())) && err.trim_end().lines().count() == 1,
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sighup_reloads_the_routes_without_dropping_connections() {
    let (one, two) = (Backend::start(None), Backend::start(None));
    let dir = std::env::temp_dir().join(format!("timewait-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("proxy.toml");
    let config = |to: SocketAddr| {
        format!(
            "admin = \"127.0.0.1:0\"\n[[listener]]\nlisten = \"127.0.0.1:0\"\n[[listener.route]]\nupstream = \"b\"\n[upstream.b]\nservers = [\"{to}\"]\n"
        )
    };
    std::fs::write(&file, config(one.addr)).unwrap();
    let proxy = Proxy::start_config(&file);
    // A client that keeps its connection open across the reload.
    let mut kept = TcpStream::connect(proxy.addr).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let ask = |s: &mut TcpStream| {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    assert!(ask(&mut kept).starts_with("HTTP/1.1 200"));
    assert_eq!(one.heads().len(), 1);

    std::fs::write(&file, config(two.addr)).unwrap();
    let pid = nix::unistd::Pid::from_raw(proxy.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    // New connections follow the new routes (give the workers a moment).
    let mut moved = false;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(proxy.get("/").0, 200);
        if !two.heads().is_empty() {
            moved = true;
            break;
        }
    }
    assert!(moved, "new connections go to the new upstream");
    // The connection opened before the reload was not dropped.
    assert!(ask(&mut kept).starts_with("HTTP/1.1 200"));

    // A broken file is refused and the running configuration stays.
    std::fs::write(&file, "this is not toml [").unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let before = two.heads().len();
    assert_eq!(proxy.get("/").0, 200);
    assert_eq!(two.heads().len(), before + 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_access_log_has_a_line_per_request() {
    let backend = Backend::start(None);
    let proxy = Proxy::start(&[backend.addr], &["--access-log"]);
    assert_eq!(proxy.get("/first?x=1").0, 200);
    assert_eq!(proxy.get("/broken").0, 502);
    let next = || {
        proxy
            .lines
            .recv_timeout(Duration::from_secs(5))
            .expect("an access log line")
    };
    let (a, b) = (next(), next());
    // "<unix ms> <client> \"<request line>\" <status> <backend> <ms>"
    let f: Vec<&str> = a.split(' ').collect();
    assert!(f[0].parse::<u128>().is_ok() && f[1] == "127.0.0.1", "{a}");
    assert!(a.contains("\"GET /first?x=1 HTTP/1.1\" 200 "), "{a}");
    assert!(a.contains(&backend.addr.to_string()), "{a}");
    assert!(b.contains("\"GET /broken HTTP/1.1\" 502 "), "{b}");
}

#[test]
fn a_backend_too_slow_to_answer_gets_504() {
    let backend = Backend::start(None);
    let proxy = Proxy::start(&[backend.addr], &["--response-timeout", "0.3"]);
    assert_eq!(proxy.get("/sleep?ms=1500").0, 504);
    assert_eq!(proxy.metric("timewait_proxy_upstream_timeouts_total"), 1);
    assert_eq!(proxy.get("/").0, 200, "and the next request is served");
}

/// Reads until the proxy closes. The read timeout (20 s) is only a guard:
/// tests make the proxy's own close the first thing that can end the read
/// (the peer on the other side holds its end open longer), so returning at
/// all is the proof, not how long it took.
fn read_until_closed(s: &mut TcpStream) -> (Vec<u8>, ()) {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the proxy kept a stalled exchange open: {e}"),
        }
    }
    (all, ())
}

#[test]
fn stalled_bodies_are_cut_off_after_the_body_timeout() {
    let backend = Backend::start(None);
    let proxy = Proxy::start(&[backend.addr], &["--body-timeout", "0.3"]);
    // A backend that stops mid-body (it holds the connection for 6 s): the
    // client gets what was sent, then the connection ends.
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.write_all(b"GET /stall HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let (got, ()) = read_until_closed(&mut s);
    let got = String::from_utf8_lossy(&got).to_string();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert_eq!(
        proxy.metric("timewait_proxy_failures_total{side=\"upstream\",kind=\"response_body\"}"),
        1,
        "cut off by the proxy, while the backend still holds it"
    );
    // A client that stops mid-body (it sends 10 bytes of 100, keeps the
    // connection open, and waits).
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.write_all(b"POST /count HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
        .unwrap();
    let (got, ()) = read_until_closed(&mut s);
    let got = String::from_utf8_lossy(&got).to_string();
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    assert_eq!(
        proxy.metric("timewait_proxy_failures_total{side=\"downstream\",kind=\"request_body\"}"),
        1
    );
    assert_eq!(proxy.get("/").0, 200, "and the proxy goes on");
}

#[test]
fn a_request_head_sent_slowly_is_cut_off_after_the_header_timeout() {
    let backend = Backend::start(None);
    let proxy = Proxy::start(&[backend.addr], &["--header-timeout", "0.3"]);
    // Slowloris: a head that never ends, one header line at a time.
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let _ = s.write_all(b"X-One: 1\r\n");
    let (got, ()) = read_until_closed(&mut s);
    let got = String::from_utf8_lossy(&got).to_string();
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert_eq!(
        proxy.metric("timewait_proxy_failures_total{side=\"downstream\",kind=\"request_head\"}"),
        1
    );
    assert!(backend.heads().is_empty(), "{:?}", backend.heads());
    assert_eq!(proxy.get("/").0, 200, "and the proxy goes on");
}

/// TIME_WAIT sockets on this host with `addr` at either end. The test gives
/// its backend an address of its own in 127.0.0.0/8, so no other test's
/// sockets can match (a port number alone could be another test's client
/// port).
fn time_wait_with(addr: SocketAddr) -> usize {
    let SocketAddr::V4(v4) = addr else {
        panic!("an IPv4 address: {addr}");
    };
    let needle = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap();
    text.lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 3 && f[3] == "06" && (f[1] == needle || f[2] == needle))
        .count()
}

/// A backend on an address of 127.0.0.0/8 that no other test uses.
fn backend_on_own_address() -> Backend {
    let n = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
    for k in 0..64u32 {
        let v = n.wrapping_add(k.wrapping_mul(7919));
        let ip = std::net::Ipv4Addr::new(
            127,
            100 + (v % 100) as u8,
            (v >> 8) as u8,
            1 + (v >> 16) as u8 % 250,
        );
        if let Ok(l) = TcpListener::bind((ip, 0)) {
            return Backend::start_on(l, None);
        }
    }
    panic!("no free loopback address");
}

/// The proxy closes pooled backend connections only when they are idle (or
/// broken), and does so with a reset: no TIME_WAIT toward the backend on
/// either side, whether they are retired by `--max-requests` or by the idle
/// timeout.
#[test]
fn retired_backend_connections_leave_no_time_wait() {
    let backend = backend_on_own_address();
    let proxy = Proxy::start(&[backend.addr], &["--max-requests", "1"]);
    for _ in 0..10 {
        assert_eq!(proxy.get("/").0, 200);
    }
    assert_eq!(
        backend.accepts.load(Ordering::SeqCst),
        10,
        "one connection per request"
    );
    let proxy = Proxy::start(&[backend.addr], &["--idle-timeout", "0.2"]);
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let addr = proxy.addr;
            std::thread::spawn(move || {
                exchange(
                    addr,
                    b"GET /sleep?ms=100 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                )
                .0
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), 200);
    }
    assert!(
        backend.accepts.load(Ordering::SeqCst) > 11,
        "several pooled connections"
    );
    // Swept within a second or so of going idle.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while proxy.metric("timewait_proxy_pool_idle_connections") > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the idle connections were never closed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(time_wait_with(backend.addr), 0);
}

#[test]
fn max_lifetime_retires_old_connections() {
    let backend = Backend::start(None);
    let proxy = Proxy::start(&[backend.addr], &["--max-lifetime", "0.3"]);
    assert_eq!(proxy.get("/").0, 200);
    assert_eq!(proxy.get("/").0, 200);
    assert_eq!(backend.accepts.load(Ordering::SeqCst), 1, "young: reused");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(proxy.get("/").0, 200);
    assert_eq!(
        backend.accepts.load(Ordering::SeqCst),
        2,
        "past its lifetime: replaced"
    );
}

/// A backend that runs `handle` on each connection it accepts, on its own
/// thread: for the failures the ordinary backend does not make.
fn raw_backend(handle: fn(TcpStream)) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || handle(s));
        }
    });
    addr
}

/// Reads a request head (up to the blank line) from `s`.
fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[test]
fn a_backend_that_stops_reading_the_request_body_gets_504_and_is_charged_for_it() {
    // Reads the head, then never reads again (held open past the test).
    let backend = raw_backend(|mut s| {
        read_head(&mut s);
        std::thread::sleep(Duration::from_secs(60));
    });
    let proxy = Proxy::start(&[backend], &["--body-timeout", "0.3", "--max-fails", "1"]);
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    let total = 256 << 20;
    s.write_all(
        format!("POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {total}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut w = s.try_clone().unwrap();
    // The client keeps sending; the proxy takes what the backend's socket
    // buffers hold, then the backend's silence runs out the body timeout.
    std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..256 {
            if w.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let (got, _) = read_until_closed(&mut s);
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 504 "), "{got}");
    assert!(
        got.contains("the backend stopped reading the request body"),
        "{got}"
    );
    assert_eq!(
        proxy.metric(
            "timewait_proxy_failures_total{side=\"upstream\",kind=\"request_body_stalled\"}"
        ),
        1
    );
    assert_eq!(proxy.metric("timewait_proxy_upstream_timeouts_total"), 1);
    assert_eq!(
        proxy.metric("timewait_proxy_upstream_ejections_total"),
        1,
        "counts toward health"
    );
    assert_eq!(
        proxy.metric("timewait_proxy_failures_total{side=\"downstream\",kind=\"request_body\"}"),
        0,
        "not the client's failure"
    );
}

#[test]
fn a_backend_failing_mid_response_is_an_upstream_failure() {
    // A head promising 100 bytes, 10 of them, then the connection ends.
    let backend = raw_backend(|mut s| {
        read_head(&mut s);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789");
    });
    let proxy = Proxy::start(&[backend], &["--max-fails", "1"]);
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let (got, _) = read_until_closed(&mut s);
    let got = String::from_utf8_lossy(&got);
    // The head went out, so closing is the client's only signal.
    assert!(
        got.starts_with("HTTP/1.1 200 ") && got.ends_with("\r\n\r\n0123456789"),
        "{got}"
    );
    assert_eq!(
        proxy.metric("timewait_proxy_failures_total{side=\"upstream\",kind=\"response_body\"}"),
        1
    );
    assert_eq!(proxy.metric("timewait_proxy_upstream_errors_total"), 1);
    assert_eq!(
        proxy.metric("timewait_proxy_upstream_ejections_total"),
        1,
        "counts toward health"
    );
}

#[test]
fn two_routes_naming_one_upstream_share_its_pool() {
    let backend = Backend::start(None);
    let dir = std::env::temp_dir().join(format!("timewait-shared-group-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("proxy.toml");
    std::fs::write(
        &file,
        format!(
            r#"
admin = "127.0.0.1:0"

[[listener]]
listen = "127.0.0.1:0"

[[listener.route]]
path_prefix = "/a/"
upstream = "app"

[[listener.route]]
path_prefix = "/b/"
upstream = "app"
headers = {{ set = {{ "X-Route" = "b" }} }}

[upstream.app]
servers = ["{}"]
"#,
            backend.addr
        ),
    )
    .unwrap();
    let proxy = Proxy::start_config(&file);
    for i in 0..10 {
        let path = if i % 2 == 0 { "/a/x" } else { "/b/x" };
        assert_eq!(proxy.get(path).0, 200, "{path}");
    }
    assert_eq!(
        backend.accepts.load(Ordering::SeqCst),
        1,
        "one pool for both routes"
    );
    assert_eq!(
        proxy.metric("timewait_proxy_upstream_reused_requests_total"),
        9
    );
    // Each route keeps its own header rules.
    let heads = backend.heads();
    let lower: Vec<String> = heads.iter().map(|h| h.to_ascii_lowercase()).collect();
    assert!(
        lower[1].contains("x-route: b") && !lower[0].contains("x-route"),
        "{heads:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn trailers_reach_http11_clients_and_are_dropped_for_http10_ones() {
    let backend = raw_backend(|mut s| {
        loop {
            if read_head(&mut s).is_empty() {
                return;
            }
            let answer =
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n\
                5\r\nhello\r\n0\r\nX-Checksum: 42\r\n\r\n";
            if s.write_all(answer).is_err() {
                return;
            }
        }
    });
    let proxy = Proxy::start(&[backend], &[]);
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (got, _) = read_until_closed(&mut s);
    let got = String::from_utf8_lossy(&got);
    assert!(got.contains("\r\nTrailer: X-Checksum\r\n"), "{got}");
    assert!(
        got.ends_with("\r\n\r\n5\r\nhello\r\n0\r\nX-Checksum: 42\r\n\r\n"),
        "{got}"
    );
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let (got, _) = read_until_closed(&mut s);
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.0 200 ") && got.ends_with("\r\n\r\nhello"),
        "{got}"
    );
    assert!(!got.contains("X-Checksum"), "{got}");
}

/// The issue's case: far more idle client connections than the proxy has
/// file descriptors. New requests are served (the longest-idle connections
/// make room, as nginx does) and no accept() fails for want of a descriptor.
#[test]
fn idle_clients_past_the_fd_limit_make_room_and_no_request_hangs() {
    let backend = Backend::start(None);
    let proxy = Proxy::spawn_under(
        &["prlimit", "--nofile=256:256", "--"],
        vec![
            "proxy".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--upstream".into(),
            backend.addr.to_string(),
            "--admin".into(),
            "127.0.0.1:0".into(),
        ],
    );
    let idle: Vec<TcpStream> = (0..600)
        .map(|_| TcpStream::connect(proxy.addr).unwrap())
        .collect();
    for _ in 0..3 {
        assert_eq!(proxy.get("/").0, 200);
    }
    assert!(proxy.metric("timewait_proxy_idle_clients_closed_total") > 0);
    assert_eq!(proxy.metric("timewait_proxy_accept_errors_total"), 0);
    drop(idle);
}
