//! The exporter's HTTP side: `GET /metrics` (collected at scrape time,
//! cached for `cache`), `GET /healthz`; anything else 404, other methods
//! 405. Read-only, no shell-outs. Each connection is served on a thread of
//! its own, at most [`MAX_CLIENTS`] at once, each with a read timeout.

use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
use timewait_snapshot::Snapshot;

use crate::metrics::{TraceState, render};

/// Scrapers served at once; more are answered 503.
pub const MAX_CLIENTS: usize = 16;
/// Time a client has to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What to export and how.
pub struct Exporter<F> {
    collect: F,
    top: usize,
    cache: Duration,
    cached: Mutex<Option<(Instant, String)>>,
    clients: AtomicUsize,
    trace: Option<Arc<Mutex<TraceState>>>,
}

impl<F: Fn() -> Result<Snapshot, String> + Send + Sync> Exporter<F> {
    /// Exports what `collect` reads, with `top` destination series, each
    /// collection reused for `cache`.
    pub fn new(collect: F, top: usize, cache: Duration) -> Exporter<F> {
        Exporter {
            collect,
            top,
            cache,
            cached: Mutex::new(None),
            clients: AtomicUsize::new(0),
            trace: None,
        }
    }

    /// Also exports what a tracer running beside the exporter counted.
    pub fn with_trace(mut self, trace: Arc<Mutex<TraceState>>) -> Exporter<F> {
        self.trace = Some(trace);
        self
    }

    /// The metrics text: cached if fresh, else collected now. Holding the
    /// lock while collecting makes concurrent scrapes share one collection.
    pub fn metrics(&self) -> Result<String, String> {
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, text)) = &*cached
            && at.elapsed() < self.cache
        {
            return Ok(text.clone());
        }
        let start = Instant::now();
        let snap = (self.collect)()?;
        let trace = self
            .trace
            .as_ref()
            .map(|t| t.lock().unwrap_or_else(PoisonError::into_inner).clone());
        let text = render(
            &snap,
            trace.as_ref(),
            self.top,
            start.elapsed().as_secs_f64(),
        );
        *cached = Some((Instant::now(), text.clone()));
        Ok(text)
    }

    fn answer(&self, mut s: TcpStream) -> io::Result<()> {
        s.set_read_timeout(Some(READ_TIMEOUT))?;
        let mut buf = vec![0u8; 8192];
        let mut len = 0;
        let target = loop {
            let n = s.read(&mut buf[len..])?;
            if n == 0 {
                return Ok(());
            }
            len += n;
            let mut headers = [const { MaybeUninit::uninit() }; 64];
            let mut req = httparse::Request::new(&mut []);
            match req.parse_with_uninit_headers(&buf[..len], &mut headers) {
                Ok(httparse::Status::Complete(_)) => {
                    break Some((
                        req.method.unwrap_or("GET").to_string(),
                        req.path.unwrap_or("/").to_string(),
                    ));
                }
                Ok(httparse::Status::Partial) if len < buf.len() => {}
                _ => break None,
            }
        };
        let (status, ctype, body) = match &target {
            None => ("400 Bad Request", "text/plain", "bad request\n".to_string()),
            Some((m, _)) if m != "GET" && m != "HEAD" => (
                "405 Method Not Allowed",
                "text/plain",
                "only GET and HEAD\n".into(),
            ),
            Some((_, p)) => match p.split('?').next().unwrap_or("/") {
                "/metrics" => match self.metrics() {
                    Ok(text) => ("200 OK", CONTENT_TYPE, text),
                    Err(e) => ("503 Service Unavailable", "text/plain", format!("{e}\n")),
                },
                "/healthz" => ("200 OK", "text/plain", "ok\n".into()),
                _ => (
                    "404 Not Found",
                    "text/plain",
                    "not found: try /metrics\n".into(),
                ),
            },
        };
        let head_only = target.as_ref().is_some_and(|(m, _)| m == "HEAD");
        let mut out = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        if !head_only {
            out.push_str(&body);
        }
        s.write_all(out.as_bytes())
    }
}

/// Serves `exporter` on `listener` until the process ends. Accept errors
/// (out of file descriptors) are waited out, not spun on.
pub fn serve<F>(listener: TcpListener, exporter: Arc<Exporter<F>>) -> io::Result<()>
where
    F: Fn() -> Result<Snapshot, String> + Send + Sync + 'static,
{
    for conn in listener.incoming() {
        let s = match conn {
            Ok(s) => s,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if exporter.clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
            exporter.clients.fetch_sub(1, Ordering::SeqCst);
            let mut s = s;
            // A scraper we cannot serve now is told so; if it is gone, so be it.
            let _ = s.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            continue;
        }
        let e = exporter.clone();
        std::thread::spawn(move || {
            // A scraper that goes away mid-answer is its own business.
            let _ = e.answer(s);
            e.clients.fetch_sub(1, Ordering::SeqCst);
        });
    }
    Ok(())
}
