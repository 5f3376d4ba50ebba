//! The load: `concurrency` tasks on a multi-thread runtime, each taking
//! request numbers from one counter. Closed loop, each task sends when its
//! previous answer came; open loop (`rate`), request `i` is due at
//! `start + i / rate` and its latency counts from then, so a stalled
//! target shows as latency, not as fewer samples.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::plan::{Mode, Plan, Target};
use crate::report::{Percentiles, Report, Second, meaning};

/// What the caller samples once a second: TIME_WAIT toward the target and
/// its port headroom.
pub type Sampler = Box<dyn Fn() -> Option<(u64, f64)> + Send + Sync>;

/// One second's sample, if the census could be read.
type Sample = Option<(u64, f64)>;

/// Why one request failed.
fn error_name(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::TimedOut {
        return "timeout".into();
    }
    match e.raw_os_error() {
        Some(code) => timewait_kernel::errno::name(code),
        None if e.kind() == io::ErrorKind::InvalidData
            || e.kind() == io::ErrorKind::UnexpectedEof =>
        {
            "bad_response".into()
        }
        None => format!("{:?}", e.kind()),
    }
}

/// One task's tallies, merged at the end.
struct Tally {
    latency: Histogram<u64>,
    connect: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    /// (completed, failed) per second.
    seconds: Vec<(u64, u64)>,
    succeeded: u64,
    attempted: u64,
    opened: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latency: hist(),
            connect: hist(),
            errors: BTreeMap::new(),
            seconds: Vec::new(),
            succeeded: 0,
            attempted: 0,
            opened: 0,
        }
    }

    fn second(&mut self, at: Duration) -> &mut (u64, u64) {
        let s = at.as_secs() as usize;
        if self.seconds.len() <= s {
            self.seconds.resize(s + 1, (0, 0));
        }
        &mut self.seconds[s]
    }

    fn merge(&mut self, o: Tally) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency.add(&o.latency);
        let _ = self.connect.add(&o.connect);
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        if self.seconds.len() < o.seconds.len() {
            self.seconds.resize(o.seconds.len(), (0, 0));
        }
        for (a, b) in self.seconds.iter_mut().zip(o.seconds) {
            a.0 += b.0;
            a.1 += b.1;
        }
        self.succeeded += o.succeeded;
        self.attempted += o.attempted;
        self.opened += o.opened;
    }
}

/// Microseconds from 1 µs to an hour, 3 significant digits.
fn hist() -> Histogram<u64> {
    // Constant, valid bounds: this cannot fail.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(|e| unreachable!("{e}"))
}

fn percentiles(h: &Histogram<u64>) -> Option<Percentiles> {
    (!h.is_empty()).then(|| {
        let ms = |v: u64| v as f64 / 1000.0;
        Percentiles {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    })
}

/// The request bytes, built once.
fn request_bytes(plan: &Plan) -> Vec<u8> {
    match &plan.target {
        Target::Tcp { .. } => plan.body.clone(),
        Target::Http { host, path, .. } => {
            let mut r = format!("{} {path} HTTP/1.1\r\nHost: {host}\r\n", plan.method);
            for h in &plan.headers {
                r.push_str(h);
                r.push_str("\r\n");
            }
            if !plan.body.is_empty() {
                r.push_str(&format!("Content-Length: {}\r\n", plan.body.len()));
            }
            r.push_str("\r\n");
            let mut b = r.into_bytes();
            b.extend_from_slice(&plan.body);
            b
        }
    }
}

/// Reads one HTTP response; its status, and whether the connection can
/// carry another request.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<(u16, bool)> {
    buf.clear();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let head = match resp.parse(buf) {
            Ok(httparse::Status::Complete(h)) => h,
            Ok(httparse::Status::Partial) if buf.len() < 64 * 1024 => continue,
            _ => return Err(io::ErrorKind::InvalidData.into()),
        };
        let status = resp.code.unwrap_or(0);
        let header = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
        };
        let connection = header("connection");
        // HTTP/1.0 keeps a connection only when asked; 1.1 unless told to close.
        let close = if resp.version == Some(0) {
            !connection
                .as_deref()
                .is_some_and(|v| v.contains("keep-alive"))
        } else {
            connection.is_some_and(|v| v.contains("close"))
        };
        let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let length = header("content-length").and_then(|v| v.trim().parse::<usize>().ok());
        let mut body = buf.split_off(head);
        if chunked {
            while !body.windows(5).any(|w| w == b"0\r\n\r\n") {
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                body.extend_from_slice(&chunk[..n]);
            }
            return Ok((status, !close));
        }
        match length {
            Some(len) => {
                while body.len() < len {
                    let n = s.read(&mut chunk).await?;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
                return Ok((status, !close));
            }
            None if status == 204 || status == 304 || (100..200).contains(&status) => {
                return Ok((status, !close));
            }
            None => {
                // Delimited by the close.
                while s.read(&mut chunk).await? > 0 {}
                return Ok((status, false));
            }
        }
    }
}

/// Runs the plan; `sample` is called once a second; `stop` (or Ctrl-C)
/// ends it early, with the numbers so far.
pub fn run(plan: &Plan, sample: Option<Sampler>, stop: Arc<AtomicBool>) -> io::Result<Report> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(plan.threads)
        .enable_all()
        .build()?;
    rt.block_on(drive(plan, sample, stop))
}

async fn drive(plan: &Plan, sample: Option<Sampler>, stop: Arc<AtomicBool>) -> io::Result<Report> {
    let plan = Arc::new(plan.clone());
    let request = Arc::new(request_bytes(&plan));
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let ctrl_c = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.store(true, Ordering::Relaxed);
            }
        })
    };
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let sampling = sample.map(|f| {
        let (samples, stop) = (samples.clone(), stop.clone());
        tokio::spawn(async move {
            let f = Arc::new(f);
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + Duration::from_secs(1),
                Duration::from_secs(1),
            );
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let f = f.clone();
                // The census reads the kernel: off the runtime's threads.
                let s = tokio::task::spawn_blocking(move || f())
                    .await
                    .ok()
                    .flatten();
                samples
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(s);
            }
        })
    });
    let tasks: Vec<_> = (0..plan.concurrency)
        .map(|_| {
            let (plan, request, next, stop) =
                (plan.clone(), request.clone(), next.clone(), stop.clone());
            tokio::spawn(async move { worker(&plan, &request, &next, &stop, start).await })
        })
        .collect();
    let mut total = Tally::new();
    for t in tasks {
        if let Ok(t) = t.await {
            total.merge(t);
        }
    }
    let elapsed = start.elapsed();
    let interrupted = stop.swap(true, Ordering::Relaxed);
    ctrl_c.abort();
    if let Some(s) = sampling {
        s.abort();
    }
    let samples = samples
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let series = total
        .seconds
        .iter()
        .enumerate()
        .map(|(i, (c, f))| Second {
            second: i as u64,
            completed: *c,
            failed: *f,
            time_wait: samples.get(i).copied().flatten().map(|s| s.0),
            port_headroom: samples.get(i).copied().flatten().map(|s| s.1),
        })
        .collect();
    let time_wait_peak = samples.iter().flatten().map(|s| s.0).max();
    let error_meanings = total
        .errors
        .keys()
        .map(|k| (k.clone(), meaning(k)))
        .collect();
    Ok(Report {
        target: match &plan.target {
            Target::Http { host, path, .. } => format!("http://{host}{path}"),
            Target::Tcp { addr } => format!("tcp://{addr}"),
        },
        mode: match plan.mode {
            Mode::Close => "close",
            Mode::KeepAlive => "keepalive",
        },
        concurrency: plan.concurrency,
        rate: plan.rate,
        duration_seconds: elapsed.as_secs_f64(),
        attempted: total.attempted,
        succeeded: total.succeeded,
        errors: total.errors,
        error_meanings,
        connections_opened: total.opened,
        requests_per_second: total.succeeded as f64 / elapsed.as_secs_f64().max(1e-9),
        latency_ms: percentiles(&total.latency),
        connect_latency_ms: percentiles(&total.connect),
        series,
        time_wait_peak,
        interrupted,
    })
}

/// One task: take request numbers until the plan or `stop` says enough.
async fn worker(
    plan: &Plan,
    request: &[u8],
    next: &AtomicU64,
    stop: &AtomicBool,
    start: Instant,
) -> Tally {
    let mut t = Tally::new();
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(16 * 1024);
    let deadline = plan.duration.map(|d| start + d);
    loop {
        // Open loop: every request due before the end is sent, however
        // late (its lateness is latency); closed loop: stop at the end.
        if stop.load(Ordering::Relaxed)
            || (plan.rate.is_none() && deadline.is_some_and(|d| Instant::now() >= d))
        {
            break;
        }
        let i = next.fetch_add(1, Ordering::Relaxed);
        if plan.requests.is_some_and(|n| i >= n) {
            break;
        }
        let due = match plan.rate {
            Some(r) => {
                let at = start + Duration::from_secs_f64(i as f64 / r);
                if deadline.is_some_and(|d| at >= d) {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                at
            }
            None => Instant::now(),
        };
        t.attempted += 1;
        let outcome = tokio::time::timeout(
            plan.timeout,
            one(plan, request, &mut conn, &mut buf, &mut t),
        )
        .await;
        let done = Instant::now();
        let at = done.saturating_duration_since(start);
        match outcome {
            Ok(Ok(status)) if status < 400 => {
                t.succeeded += 1;
                let _ = t
                    .latency
                    .record(done.saturating_duration_since(due).as_micros().max(1) as u64);
                t.second(at).0 += 1;
            }
            Ok(Ok(status)) => {
                *t.errors
                    .entry(format!("http_{}xx", status / 100))
                    .or_default() += 1;
                t.second(at).1 += 1;
            }
            Ok(Err(e)) => {
                conn = None;
                *t.errors.entry(error_name(&e)).or_default() += 1;
                t.second(at).1 += 1;
            }
            Err(_) => {
                conn = None;
                *t.errors.entry("timeout".into()).or_default() += 1;
                t.second(at).1 += 1;
            }
        }
    }
    t
}

/// One request: a connection (new, or the kept one), the exchange; the
/// status (200 for TCP).
async fn one(
    plan: &Plan,
    request: &[u8],
    conn: &mut Option<TcpStream>,
    buf: &mut Vec<u8>,
    t: &mut Tally,
) -> io::Result<u16> {
    let reused = conn.is_some();
    match exchange(plan, request, conn, buf, t).await {
        // A kept connection the server closed while idle: once more, fresh
        // (what every keep-alive client does).
        Err(e)
            if reused
                && matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::BrokenPipe
                ) =>
        {
            *conn = None;
            exchange(plan, request, conn, buf, t).await
        }
        r => r,
    }
}

async fn exchange(
    plan: &Plan,
    request: &[u8],
    conn: &mut Option<TcpStream>,
    buf: &mut Vec<u8>,
    t: &mut Tally,
) -> io::Result<u16> {
    let mut s = match conn.take() {
        Some(s) => s,
        None => {
            let c0 = Instant::now();
            let s = TcpStream::connect(plan.target.addr()).await?;
            let _ = t.connect.record(c0.elapsed().as_micros().max(1) as u64);
            t.opened += 1;
            // Nagle off: requests are small and latency matters.
            let _ = s.set_nodelay(true);
            s
        }
    };
    let status = match plan.target {
        Target::Tcp { .. } => {
            if !request.is_empty() {
                s.write_all(request).await?;
            }
            200
        }
        Target::Http { .. } => {
            s.write_all(request).await?;
            let (status, reusable) = read_response(&mut s, buf).await?;
            if plan.mode == Mode::KeepAlive && reusable {
                *conn = Some(s);
                return Ok(status);
            }
            status
        }
    };
    // Close mode (or a connection that cannot be reused): this side
    // closes first, as an HTTP/1.0 proxy does, and keeps the TIME_WAIT.
    drop(s);
    Ok(status)
}
