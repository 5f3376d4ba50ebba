//! `timewait exporter`: flags → the exporter crate, collecting with the
//! host crate at scrape time.

use std::net::{TcpListener, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use std::sync::Mutex;

use timewait_exporter::{Exporter, TraceState, metrics, serve};
use timewait_host::live::LiveCollector;
use timewait_host::tracefs::{TraceOptions, TraceTarget};
use timewait_host::{Target, collect};

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
        return Ok(metrics::render(&read_snapshot(path)?, None, a.top, 0.0));
    }
    let addr = a
        .listen
        .to_socket_addrs()
        .map_err(|e| Failure::Usage(format!("--listen {}: {e} (expected HOST:PORT)", a.listen)))?
        .next()
        .ok_or_else(|| Failure::Usage(format!("--listen {}: resolves to no address", a.listen)))?;
    let (t, v) = (target(&a.target), via(&a.target));
    // Fail now, not at the first scrape, if the namespace cannot be read
    // (or counted live).
    let live = if a.live {
        let c = LiveCollector::start(&t)
            .map_err(|e| Failure::Runtime(anyhow::anyhow!("--live: {e}")))?;
        c.collect()?;
        Some(c)
    } else {
        collect(&t, v, false)?;
        None
    };
    let listener = TcpListener::bind(addr)
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("--listen {addr}: {e}")))?;
    let bound = listener.local_addr().map_err(anyhow::Error::from)?;
    let label = t.label();
    let tracer = a
        .trace
        .then(|| start_tracer(t.clone(), a.top))
        .transpose()?;
    let mut exporter = Exporter::new(
        // Without the kernel log: a scan of the whole ring buffer per scrape
        // costs more than the one finding it adds on kernels before 4.10.
        move || {
            match &live {
                Some(c) => c.collect(),
                None => collect(&t, v, false),
            }
            .map_err(|e| e.to_string())
        },
        a.top,
        Duration::from_millis(a.cache_ms),
    );
    if let Some(state) = tracer {
        exporter = exporter.with_trace(state);
    }
    let exporter = Arc::new(exporter);
    crate::render::emit(&format!(
        "timewait exporter: serving http://{bound}/metrics for namespace {label}\n"
    ))
    .map_err(|e| Failure::Runtime(e.into()))?;
    serve(listener, exporter).map_err(|e| Failure::Runtime(e.into()))?;
    Ok(String::new())
}

/// The tracer of `--trace`, on a thread of its own: its report each second
/// goes to the returned state. SIGINT and SIGTERM stop it (its tracefs
/// instance removed) and then end the exporter.
fn start_tracer(target: Target, top: usize) -> Result<Arc<Mutex<TraceState>>, Failure> {
    let state = Arc::new(Mutex::new(TraceState::Starting));
    let stop = crate::trace_cmd::stop_on_signals()?;
    let shared = Arc::clone(&state);
    std::thread::spawn(move || {
        let set = |s: TraceState| {
            *shared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = s;
        };
        let options = TraceOptions {
            // Ten years: until stopped.
            duration: Duration::from_secs(10 * 365 * 24 * 3600),
            top,
            syscalls: false,
            bpf: true,
        };
        let r = crate::trace_cmd::traced(&TraceTarget::One(target), &options, &stop, &mut |r| {
            set(TraceState::Running(r.clone()));
        });
        match r {
            Ok(_) if stop.load(std::sync::atomic::Ordering::Relaxed) => std::process::exit(0),
            Ok(_) => set(TraceState::Stopped("the trace ended".into())),
            Err(e) => {
                let why = match e {
                    Failure::Usage(m) => m,
                    Failure::Runtime(e) => format!("{e:#}"),
                };
                let serving = matches!(
                    *shared
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                    TraceState::Running(_)
                );
                if serving {
                    eprintln!("timewait exporter: --trace stopped: {why}");
                }
                set(TraceState::Stopped(why));
                // The signals are still ours: honour them.
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                std::process::exit(0);
            }
        }
    });
    // Serve only once it records (its first report comes then), or fail
    // now if it cannot start.
    loop {
        match &*state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            TraceState::Starting => {}
            TraceState::Running(_) => break,
            TraceState::Stopped(why) => {
                return Err(Failure::Runtime(anyhow::anyhow!("--trace: {why}")));
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(state)
}
