//! A small HTTP/1.1 backend for proxy tests that records what a proxy does
//! to it: every accepted connection (with the peer's port) and every request
//! head, raw. Keep-alive, with an optional idle timeout after which it
//! closes a connection first (like Node's 5 s, or nginx's keepalive_timeout).
//!
//! Paths: `/` answers "ok"; `/sleep?ms=N` answers "ok" after N ms; `/big?n=N` streams N bytes chunked; `/count`
//! reads the request body and answers its length; `/early` sends 103 Early Hints before its answer; `/twolengths` answers with two different Content-Lengths; `/broken` answers with a
//! malformed status line; `/headers` echoes the request head; anything else
//! answers "ok". Responses carry `Keep-Alive` and a `Connection` header
//! naming `X-Internal`, to check that the proxy strips them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running backend; stops accepting when dropped.
pub struct Backend {
    pub addr: SocketAddr,
    pub accepts: Arc<AtomicUsize>,
    pub peer_ports: Arc<Mutex<Vec<u16>>>,
    pub heads: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    /// Starts on an ephemeral loopback port.
    pub fn start(idle_timeout: Option<Duration>) -> Backend {
        Backend::start_on(TcpListener::bind("127.0.0.1:0").unwrap(), idle_timeout)
    }

    /// Starts on a given listener.
    pub fn start_on(listener: TcpListener, idle_timeout: Option<Duration>) -> Backend {
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut b = Backend {
            addr,
            accepts: Arc::default(),
            peer_ports: Arc::default(),
            heads: Arc::default(),
            stop: Arc::default(),
            conns: Arc::default(),
            acceptor: None,
        };
        let (accepts, ports, heads, stop, conns) = (
            b.accepts.clone(),
            b.peer_ports.clone(),
            b.heads.clone(),
            b.stop.clone(),
            b.conns.clone(),
        );
        b.acceptor = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, peer)) => {
                        accepts.fetch_add(1, Ordering::SeqCst);
                        ports.lock().unwrap().push(peer.port());
                        conns.lock().unwrap().push(s.try_clone().unwrap());
                        let heads = heads.clone();
                        std::thread::spawn(move || serve(s, idle_timeout, heads));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        }));
        b
    }

    /// Dies like a crashed process: stops listening (the port is free when
    /// this returns) and cuts every open connection.
    pub fn kill(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.acceptor.take() {
            t.join().unwrap();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Request heads seen so far.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Serves one connection, then really closes it: a clone kept for
/// [`Backend::kill`] must not keep it open after this thread is done.
fn serve(s: TcpStream, idle: Option<Duration>, heads: Arc<Mutex<Vec<String>>>) {
    let closer = s.try_clone().unwrap();
    serve_until_done(s, idle, heads);
    let _ = closer.shutdown(std::net::Shutdown::Both);
}

fn serve_until_done(s: TcpStream, idle: Option<Duration>, heads: Arc<Mutex<Vec<String>>>) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(idle.unwrap_or(Duration::from_secs(30))))
        .unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return, // closed, or idle too long: close first
                Ok(_) => {}
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        heads.lock().unwrap().push(head.clone());
        let lower = head.to_ascii_lowercase();
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut body_len = 0u64;
        if let Some(cl) = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
        {
            let n: u64 = cl.trim().parse().unwrap_or(0);
            body_len = std::io::copy(&mut (&mut r).take(n), &mut std::io::sink()).unwrap_or(0);
        } else if lower.contains("transfer-encoding: chunked") {
            loop {
                let mut size = String::new();
                if r.read_line(&mut size).unwrap_or(0) == 0 {
                    return;
                }
                let n = u64::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                    .unwrap_or(0);
                if n == 0 {
                    let mut end = String::new();
                    let _ = r.read_line(&mut end);
                    break;
                }
                body_len += std::io::copy(&mut (&mut r).take(n), &mut std::io::sink()).unwrap_or(0);
                let mut crlf = String::new();
                let _ = r.read_line(&mut crlf);
            }
        }
        if path == "/hangup" {
            // Every other request for it: read, then hang up without a word,
            // as a backend restarting under a reused connection does.
            let seen = heads.lock().unwrap();
            if seen.iter().filter(|h| h.contains(" /hangup ")).count() % 2 == 1 {
                return;
            }
        }
        if path == "/ws" && lower.contains("upgrade: echo") {
            // Switch to an echo protocol for the rest of the connection.
            if w.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
            )
            .is_err()
            {
                return;
            }
            let mut buf = [0u8; 4096];
            loop {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if w.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        let extra =
            "Keep-Alive: timeout=5\r\nConnection: keep-alive, X-Internal\r\nX-Internal: secret\r\n";
        let ok = if path == "/early" {
            w.write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .is_ok()
        } else if path == "/twolengths" {
            let _ = w.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\nokxyz",
            );
            return;
        } else if path == "/stall" {
            // Two bytes of ten, then silence, the connection held open
            // longer than a test waits: whatever closes it first is not us.
            let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok");
            std::thread::sleep(Duration::from_secs(60));
            return;
        } else if path == "/broken" {
            let _ = w.write_all(b"HTTP/1.1 2x0 Nope\r\nContent-Length: 2\r\n\r\nno");
            return;
        } else if let Some(n) = path.strip_prefix("/big?n=") {
            let n: usize = n.parse().unwrap_or(0);
            let mut ok = w
                .write_all(
                    format!("HTTP/1.1 200 OK\r\n{extra}Transfer-Encoding: chunked\r\n\r\n")
                        .as_bytes(),
                )
                .is_ok();
            let chunk = vec![b'x'; 64 * 1024];
            let mut left = n;
            while ok && left > 0 {
                let k = left.min(chunk.len());
                ok = w.write_all(format!("{k:x}\r\n").as_bytes()).is_ok()
                    && w.write_all(&chunk[..k]).is_ok()
                    && w.write_all(b"\r\n").is_ok();
                left -= k;
            }
            ok && w.write_all(b"0\r\n\r\n").is_ok()
        } else {
            if let Some(ms) = path.strip_prefix("/sleep?ms=") {
                std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
            }
            let body = match path.as_str() {
                "/count" => body_len.to_string(),
                "/headers" => head.clone(),
                _ => "ok".to_string(),
            };
            w.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\n{extra}Content-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .is_ok()
        };
        if !ok {
            return;
        }
    }
}
