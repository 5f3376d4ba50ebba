//! The admin listener: `GET /metrics` (the Prometheus text format, every
//! worker's counters summed) and `GET /healthz`. One request per
//! connection, parsed with `httparse` like the proxy's own.

use std::io;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::accept::AcceptBackoff;
use crate::metrics::Metrics;

/// Time an admin client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the admin listener until the process ends.
pub(crate) async fn serve(listener: TcpListener, metrics: Arc<[Arc<Metrics>]>) {
    let mut backoff = AcceptBackoff::new("admin");
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                backoff.ok();
                let metrics = metrics.clone();
                tokio::task::spawn_local(async move {
                    // A scraper that goes away mid-answer is its own business.
                    let _ = answer(stream, &metrics).await;
                });
            }
            Err(e) => backoff.failed(&e, &metrics[0]).await,
        }
    }
}

/// The status line and body for a request target.
fn route(method: &str, path: &str, metrics: &[Arc<Metrics>]) -> (&'static str, String) {
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", Metrics::sum(metrics).render()),
        ("GET" | "HEAD", "/healthz") => ("200 OK", "ok\n".into()),
        ("GET" | "HEAD", _) => ("404 Not Found", "not found: try /metrics\n".into()),
        _ => ("405 Method Not Allowed", "only GET and HEAD\n".into()),
    }
}

async fn answer(mut s: TcpStream, metrics: &[Arc<Metrics>]) -> io::Result<()> {
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    let head = tokio::time::timeout(REQUEST_TIMEOUT, async {
        loop {
            let n = s.read(&mut buf[len..]).await?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            len += n;
            let mut headers = [const { MaybeUninit::uninit() }; 64];
            let mut req = httparse::Request::new(&mut []);
            match req.parse_with_uninit_headers(&buf[..len], &mut headers) {
                Ok(httparse::Status::Complete(_)) => {
                    return Ok(Some((
                        req.method.unwrap_or("GET").to_string(),
                        req.path.unwrap_or("/").to_string(),
                    )));
                }
                Ok(httparse::Status::Partial) if len < buf.len() => {}
                _ => return Ok(None),
            }
        }
    })
    .await
    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    let (status, body, head_only) = match &head {
        Some((m, p)) => {
            let (status, body) = route(m, p.split('?').next().unwrap_or("/"), metrics);
            (status, body, m == "HEAD")
        }
        None => ("400 Bad Request", "bad request\n".to_string(), false),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        out.push_str(&body);
    }
    s.write_all(out.as_bytes()).await?;
    s.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_metrics_health_and_the_rest() {
        let m: Vec<Arc<Metrics>> = vec![Arc::default(), Arc::default()];
        Metrics::inc(&m[0].requests);
        Metrics::inc(&m[1].requests);
        let (s, body) = route("GET", "/metrics", &m);
        assert_eq!(s, "200 OK");
        assert!(body.contains("timewait_proxy_requests_total 2\n"), "{body}");
        assert_eq!(route("GET", "/healthz", &m).1, "ok\n");
        assert_eq!(route("GET", "/x", &m).0, "404 Not Found");
        assert_eq!(route("POST", "/metrics", &m).0, "405 Method Not Allowed");
    }
}
