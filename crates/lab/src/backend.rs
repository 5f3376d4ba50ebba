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

fn read_head(conn: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..i + 4);
            return Ok(true);
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Ok(false);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn handle(mut conn: TcpStream, traffic: Traffic) -> std::io::Result<()> {
    match traffic {
        Traffic::ClientCloses => {
            // The client's FIN, then close: the client closed first.
            let mut b = [0u8; 256];
            while conn.read(&mut b)? > 0 {}
        }
        Traffic::ServerCloses => {
            let mut buf = Vec::new();
            if read_head(&mut conn, &mut buf)? {
                // HTTP/1.0, no length: the close ends the body, and the
                // server closes first.
                conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nok")?;
            }
        }
        Traffic::Proxy => {
            let mut buf = Vec::new();
            while read_head(&mut conn, &mut buf)? {
                conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok",
                )?;
            }
        }
    }
    Ok(())
}
