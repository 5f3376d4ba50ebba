//! One line per request, buffered per worker and written to stdout by the
//! worker every 200 ms (or at once past 64 KiB), so logging costs no system
//! call per request: `UNIX_MS CLIENT "REQUEST LINE" STATUS BACKEND MS`.

use std::cell::RefCell;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Past this many buffered bytes the buffer is written at once.
const FLUSH_AT: usize = 64 * 1024;

/// A worker's buffered access log.
#[derive(Default)]
pub(crate) struct AccessLog {
    buf: RefCell<Vec<u8>>,
}

impl AccessLog {
    /// Logs one request: its line, the status (`None`: no answer was
    /// sent), the backend it went to, and how long it took.
    pub(crate) fn request(
        &self,
        client: IpAddr,
        line: &str,
        status: Option<u16>,
        upstream: Option<SocketAddr>,
        took: Duration,
    ) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let status = status.map_or("-".to_string(), |s| s.to_string());
        let upstream = upstream.map_or("-".to_string(), |u| u.to_string());
        let mut buf = self.buf.borrow_mut();
        // Writing into a Vec cannot fail.
        let _ = writeln!(
            buf,
            "{now_ms} {client} \"{line}\" {status} {upstream} {:.3}",
            took.as_secs_f64() * 1000.0
        );
        let full = buf.len() > FLUSH_AT;
        drop(buf);
        if full {
            self.flush();
        }
    }

    /// Writes what is buffered. A closed stdout must not stop the proxy:
    /// the lines are then dropped.
    pub(crate) fn flush(&self) {
        let mut buf = self.buf.borrow_mut();
        if !buf.is_empty() {
            let _ = std::io::stdout().lock().write_all(&buf);
            buf.clear();
        }
    }
}
