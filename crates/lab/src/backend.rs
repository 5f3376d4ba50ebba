//! The lab's built-in backend, on a thread inside the scenario's namespace:
//! it waits for the client's FIN and closes second, or answers HTTP/1.0 and
//! closes first, or answers HTTP/1.1 keep-alive requests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use timewait_host::scratch::ScratchNetns;
use timewait_http::Connection;

use crate::LabError;
use crate::scenario::Traffic;

/// A running backend; stopped when dropped.
pub struct Backend {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Option<()>>>,
}

impl Backend {
    /// Listens on `addr` inside `ns` (bound before this returns).
    pub fn start(
        ns: &ScratchNetns,
        addr: SocketAddr,
        traffic: Traffic,
    ) -> Result<Backend, LabError> {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let (s, a) = (stop.clone(), accepted.clone());
        let thread = ns.spawn(move || {
            let listener = match bind(addr) {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            serve(&listener, traffic, &s, &a);
        })?;
        rx.recv()
            .map_err(|_| LabError::Backend("its thread ended".into()))?
            .map_err(|e| LabError::Backend(format!("binding {addr}: {e}")))?;
        Ok(Backend {
            stop,
            accepted,
            thread: Some(thread),
        })
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    // Deep enough that a burst never overflows it (an overflow ends
    // connections with a reset: no TIME_WAIT, a port freed early).
    s.listen(4096)?;
    // accept() honours SO_RCVTIMEO: the loop sees the stop flag.
    s.set_read_timeout(Some(Duration::from_millis(20)))?;
    Ok(s)
}

fn serve(listener: &Socket, traffic: Traffic, stop: &AtomicBool, accepted: &AtomicU64) {
    while !stop.load(Ordering::Relaxed) {
        let Ok((conn, _)) = listener.accept() else {
            continue;
        };
        accepted.fetch_add(1, Ordering::Relaxed);
        let conn: TcpStream = conn.into();
        std::thread::spawn(move || {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = handle(conn, traffic);
        });
    }
}

/// The next request's head (lower-cased), or `None` at the end of the
/// connection.
fn read_head(conn: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Option<String>> {
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
            buf.drain(..i + 4);
            return Ok(Some(head));
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Whether the client asked for the connection to end with this request:
/// HTTP/1.0 unless it asked to keep it, or `Connection: close` (what nginx
/// sends its upstream by default).
fn wants_close(head: &str) -> bool {
    let http10 = head.lines().next().is_some_and(|l| l.ends_with("http/1.0"));
    let fields = head.lines().skip(1).filter_map(|l| {
        let (name, value) = l.split_once(':')?;
        Some((name.trim(), value.as_bytes()))
    });
    !Connection::of(fields).persists(http10)
}

/// HTTP/1.0, no length: the close ends the body, and the server closes
/// first.
const ANSWER_THEN_CLOSE: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nok";

fn handle(mut conn: TcpStream, traffic: Traffic) -> std::io::Result<()> {
    match traffic {
        Traffic::ClientCloses => {
            // The client's FIN, then close: the client closed first.
            let mut b = [0u8; 256];
            while conn.read(&mut b)? > 0 {}
        }
        Traffic::ServerCloses => {
            let mut buf = Vec::new();
            if read_head(&mut conn, &mut buf)?.is_some() {
                conn.write_all(ANSWER_THEN_CLOSE)?;
            }
        }
        Traffic::Proxy | Traffic::Nginx { .. } => {
            let mut buf = Vec::new();
            while let Some(head) = read_head(&mut conn, &mut buf)? {
                if wants_close(&head) {
                    // As a server does: the backend closes first.
                    conn.write_all(ANSWER_THEN_CLOSE)?;
                    return Ok(());
                }
                conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok",
                )?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::wants_close;

    #[test]
    fn a_request_ends_its_connection_as_http_says() {
        // nginx's default request to an upstream.
        assert!(wants_close(
            "get / http/1.0\r\nhost: backend\r\nconnection: close"
        ));
        assert!(wants_close("get / http/1.0\r\nhost: x"));
        assert!(!wants_close("get / http/1.0\r\nconnection: keep-alive"));
        // The article's fix: HTTP/1.1, `Connection ""` (no header sent).
        assert!(!wants_close("get / http/1.1\r\nhost: backend"));
        assert!(wants_close("get / http/1.1\r\nconnection: close"));
    }
}
