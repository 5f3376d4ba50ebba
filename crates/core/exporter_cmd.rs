//! `timewait exporter`: flags → the exporter crate, collecting with the
//! host crate at scrape time.

use std::net::{TcpListener, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use timewait_exporter::{Exporter, metrics, serve};
use timewait_host::collect;

use crate::Failure;
use crate::cli::ExporterArgs;
use crate::status_cmd::{read_snapshot, target, via};

/// Serves until killed (or, with `--from`, prints one snapshot's metrics).
pub fn run_exporter(a: &ExporterArgs) -> Result<String, Failure> {
    if a.top == 0 {
        return Err(Failure::Usage("--top: must be at least 1".into()));
    }
    if a.cache_ms > 60_000 {
        return Err(Failure::Usage(format!(
            "--cache-ms: must be at most 60000 (a minute), got {}",
            a.cache_ms
        )));
    }
    if let Some(path) = &a.from {
        return Ok(metrics::render(&read_snapshot(path)?, a.top, 0.0));
    }
    let addr = a
        .listen
        .to_socket_addrs()
        .map_err(|e| Failure::Usage(format!("--listen {}: {e} (expected HOST:PORT)", a.listen)))?
        .next()
        .ok_or_else(|| Failure::Usage(format!("--listen {}: resolves to no address", a.listen)))?;
    let (t, v) = (target(&a.target), via(&a.target));
    // Fail now, not at the first scrape, if the namespace cannot be read.
    collect(&t, v, false)?;
    let listener = TcpListener::bind(addr)
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("--listen {addr}: {e}")))?;
    let bound = listener.local_addr().map_err(anyhow::Error::from)?;
    let label = t.label();
    let exporter = Arc::new(Exporter::new(
        // Without the kernel log: a scan of the whole ring buffer per scrape
        // costs more than the one finding it adds on kernels before 4.10.
        move || collect(&t, v, false).map_err(|e| e.to_string()),
        a.top,
        Duration::from_millis(a.cache_ms),
    ));
    crate::render::emit(&format!(
        "timewait exporter: serving http://{bound}/metrics for namespace {label}\n"
    ))
    .map_err(|e| Failure::Runtime(e.into()))?;
    serve(listener, exporter).map_err(|e| Failure::Runtime(e.into()))?;
    Ok(String::new())
}
