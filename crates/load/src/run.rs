//! The load: `concurrency` tasks on a multi-thread runtime, each taking
//! request numbers from one counter. Closed loop, each task sends when its
//! previous answer came; open loop (`rate`), request `i` is due at
//! `start + i / rate` and its latency counts from then, so a stalled
//! target shows as latency, not as fewer samples.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use socket2::{Domain, Protocol, Socket, Type};
use timewait_http::Connection;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::plan::{MAX_DURATION, Mode, Plan, Target};
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

/// A run's counters while it runs, readable from any thread (a progress
/// display polls them). Its size is fixed by the plan's length, not by how
/// many requests are made.
pub struct Live {
    /// (completed, failed) per second since the start.
    seconds: Box<[[AtomicU64; 2]]>,
    /// One past the last second with an event.
    len: AtomicUsize,
    attempted: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    /// The last sample's TIME_WAIT, `u64::MAX` while none.
    time_wait: AtomicU64,
    started: OnceLock<Instant>,
}

impl Live {
    /// Counters for a run of `plan`.
    pub fn new(plan: &Plan) -> Live {
        let secs = run_limit(plan).as_secs() + plan.timeout.as_secs() + 2;
        Live {
            seconds: (0..secs)
                .map(|_| [AtomicU64::new(0), AtomicU64::new(0)])
                .collect(),
            len: AtomicUsize::new(0),
            attempted: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            time_wait: AtomicU64::new(u64::MAX),
            started: OnceLock::new(),
        }
    }

    fn count(&self, at: Duration, ok: bool) {
        let s = (at.as_secs() as usize).min(self.seconds.len() - 1);
        self.seconds[s][usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
        self.len.fetch_max(s + 1, Ordering::Relaxed);
        if ok { &self.succeeded } else { &self.failed }.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests started so far.
    pub fn attempted(&self) -> u64 {
        self.attempted.load(Ordering::Relaxed)
    }

    /// Requests that succeeded so far.
    pub fn succeeded(&self) -> u64 {
        self.succeeded.load(Ordering::Relaxed)
    }

    /// Requests that failed so far.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// TIME_WAIT toward the target at the last sample, if one was read.
    pub fn time_wait(&self) -> Option<u64> {
        Some(self.time_wait.load(Ordering::Relaxed)).filter(|&v| v != u64::MAX)
    }

    /// Time since the load started, once it has.
    pub fn elapsed(&self) -> Option<Duration> {
        self.started.get().map(Instant::elapsed)
    }

    /// (completed, failed) per second, up to the last second with an event.
    fn series(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.seconds[..self.len.load(Ordering::Relaxed)]
            .iter()
            .map(|[c, f]| (c.load(Ordering::Relaxed), f.load(Ordering::Relaxed)))
    }
}

/// The longest a run may last: its duration, and never more than
/// [`MAX_DURATION`] (a run bounded by `--requests` alone included).
fn run_limit(plan: &Plan) -> Duration {
    plan.duration.map_or(MAX_DURATION, |d| d.min(MAX_DURATION))
}

/// Histograms and error counts, shared by the tasks of one shard: a few
/// per worker thread, so their locks are seldom contended and memory does
/// not grow with the concurrency.
struct Shard {
    latency: Histogram<u64>,
    connect: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    opened: u64,
}

impl Shard {
    fn new() -> Shard {
        Shard {
            latency: hist(),
            connect: hist(),
            errors: BTreeMap::new(),
            opened: 0,
        }
    }

    fn merge(&mut self, o: &Shard) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency.add(&o.latency);
        let _ = self.connect.add(&o.connect);
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.opened += o.opened;
    }
}

/// What one request did, recorded in its shard once it ends.
#[derive(Default)]
struct Request {
    /// connect() times, µs, of the connections it opened (at most two: a
    /// kept connection the server had closed is retried once).
    connects: [Option<u64>; 2],
}

impl Request {
    fn connected(&mut self, us: u64) {
        let slot = usize::from(self.connects[0].is_some());
        self.connects[slot] = Some(us);
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

/// The least a read asks for: a typical response head fits, and ten
/// thousand idle connections hold 10 MB of buffers, not 100.
const READ_SIZE: usize = 1024;

/// Reads more of the connection into `buf`; end of stream is an error
/// (the response was not complete).
async fn fill<R: AsyncRead + Unpin>(s: &mut R, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.reserve(READ_SIZE);
    if s.read_buf(buf).await? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Reads and discards `n` bytes after `buf[at..]` has been consumed;
/// returns where the unread rest of `buf` starts.
async fn skip<R: AsyncRead + Unpin>(
    s: &mut R,
    buf: &mut Vec<u8>,
    at: usize,
    n: usize,
) -> io::Result<usize> {
    let mut want = at + n;
    while buf.len() < want {
        want -= buf.len();
        buf.clear();
        fill(s, buf).await?;
    }
    Ok(want)
}

/// A chunked body, from `buf[at..]` on (RFC 9112 §7.1, trailers skipped);
/// where what follows it starts.
async fn read_chunked<R: AsyncRead + Unpin>(
    s: &mut R,
    buf: &mut Vec<u8>,
    mut at: usize,
) -> io::Result<usize> {
    let bad = || io::Error::from(io::ErrorKind::InvalidData);
    loop {
        let size = loop {
            match httparse::parse_chunk_size(&buf[at..]) {
                Ok(httparse::Status::Complete((used, size))) => {
                    at += used;
                    break size;
                }
                Ok(httparse::Status::Partial) if buf.len() - at < 1024 => {
                    buf.drain(..at);
                    at = 0;
                    fill(s, buf).await?;
                }
                _ => return Err(bad()),
            }
        };
        if size == 0 {
            // Trailer fields, then the empty line.
            loop {
                match buf[at..].windows(2).position(|w| w == b"\r\n") {
                    Some(0) => return Ok(at + 2),
                    Some(i) => at += i + 2,
                    None if buf.len() - at < 8192 => {
                        buf.drain(..at);
                        at = 0;
                        fill(s, buf).await?;
                    }
                    None => return Err(bad()),
                }
            }
        }
        let size = usize::try_from(size).map_err(|_| bad())?;
        // The data and its CRLF.
        at = skip(s, buf, at, size.checked_add(2).ok_or_else(bad)?).await?;
    }
}

/// What a response's head says about its body and connection.
#[derive(Debug, PartialEq)]
struct Head {
    /// Bytes of the head.
    len: usize,
    status: u16,
    /// Whether the connection can carry another request.
    reusable: bool,
    body: Body,
}

#[derive(Debug, PartialEq)]
enum Body {
    Length(usize),
    Chunked,
    /// Delimited by the end of the connection.
    UntilClose,
    /// 1xx, 204 and 304 have none.
    None,
}

/// The head at the start of `buf`, once it is all there.
fn parse_head(buf: &[u8]) -> io::Result<Option<Head>> {
    let bad = || io::Error::from(io::ErrorKind::InvalidData);
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(h)) => h,
        Ok(httparse::Status::Partial) if buf.len() < 64 * 1024 => return Ok(None),
        _ => return Err(bad()),
    };
    let status = resp.code.unwrap_or(0);
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
    };
    let keep = Connection::of(resp.headers.iter().map(|h| (h.name, h.value)))
        .persists(resp.version == Some(0));
    let body = if status == 204 || status == 304 || (100..200).contains(&status) {
        Body::None
    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        Body::Chunked
    } else {
        match header("content-length") {
            Some(v) => Body::Length(v.trim().parse().map_err(|_| bad())?),
            None => Body::UntilClose,
        }
    };
    Ok(Some(Head {
        len,
        status,
        reusable: keep && body != Body::UntilClose,
        body,
    }))
}

/// Reads one HTTP response; its status, and whether the connection can
/// carry another request. `buf` may start with bytes already read and
/// keeps any that follow the response. Memory per connection stays at the
/// size of the response head: bodies are read and dropped.
async fn read_response<R: AsyncRead + Unpin>(
    s: &mut R,
    buf: &mut Vec<u8>,
) -> io::Result<(u16, bool)> {
    let head = loop {
        if let Some(h) = parse_head(buf)? {
            break h;
        }
        fill(s, buf).await?;
    };
    let end = match head.body {
        Body::None => head.len,
        Body::Length(n) => skip(s, buf, head.len, n).await?,
        Body::Chunked => read_chunked(s, buf, head.len).await?,
        Body::UntilClose => loop {
            buf.clear();
            buf.reserve(READ_SIZE);
            if s.read_buf(buf).await? == 0 {
                break 0;
            }
        },
    };
    buf.drain(..end);
    Ok((head.status, head.reusable))
}

/// Runs the plan; `sample` is called once a second; `stop` (or Ctrl-C)
/// ends it early, with the numbers so far.
pub fn run(plan: &Plan, sample: Option<Sampler>, stop: Arc<AtomicBool>) -> io::Result<Report> {
    run_with(plan, sample, stop, Arc::new(Live::new(plan)))
}

/// [`run`], counting into `live` (made by [`Live::new`] for this plan)
/// so that another thread can show the progress.
pub fn run_with(
    plan: &Plan,
    sample: Option<Sampler>,
    stop: Arc<AtomicBool>,
    live: Arc<Live>,
) -> io::Result<Report> {
    let mut rt = if plan.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(plan.threads);
        b
    };
    let rt = rt.enable_all().build()?;
    rt.block_on(drive(plan, sample, stop, live))
}

async fn drive(
    plan: &Plan,
    sample: Option<Sampler>,
    stop: Arc<AtomicBool>,
    live: Arc<Live>,
) -> io::Result<Report> {
    let plan = Arc::new(plan.clone());
    let request = Arc::new(request_bytes(&plan));
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let _ = live.started.set(start);
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
        let (samples, stop, live) = (samples.clone(), stop.clone(), live.clone());
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
                live.time_wait
                    .store(s.map_or(u64::MAX, |s| s.0), Ordering::Relaxed);
                samples
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(s);
            }
        })
    });
    let shards: Arc<[Mutex<Shard>]> = (0..(plan.threads.max(1) * 4).min(plan.concurrency))
        .map(|_| Mutex::new(Shard::new()))
        .collect();
    let tasks: Vec<_> = (0..plan.concurrency)
        .map(|i| {
            let (plan, request, next, stop, live, shards) = (
                plan.clone(),
                request.clone(),
                next.clone(),
                stop.clone(),
                live.clone(),
                shards.clone(),
            );
            tokio::spawn(async move {
                let shard = &shards[i % shards.len()];
                worker(&plan, &request, &next, &stop, &live, shard, start).await;
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed();
    let interrupted = stop.swap(true, Ordering::Relaxed);
    ctrl_c.abort();
    if let Some(s) = sampling {
        s.abort();
    }
    let mut total = Shard::new();
    for s in shards.iter() {
        total.merge(&s.lock().unwrap_or_else(PoisonError::into_inner));
    }
    let samples = samples
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let series = live
        .series()
        .enumerate()
        .map(|(i, (c, f))| Second {
            second: i as u64,
            completed: c,
            failed: f,
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
    let succeeded = live.succeeded();
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
        attempted: live.attempted(),
        succeeded,
        errors: total.errors,
        error_meanings,
        connections_opened: total.opened,
        requests_per_second: succeeded as f64 / elapsed.as_secs_f64().max(1e-9),
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
    live: &Live,
    shard: &Mutex<Shard>,
    start: Instant,
) {
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::new();
    let deadline = start + run_limit(plan);
    loop {
        // Open loop: every request due before the end is sent, however
        // late (its lateness is latency); closed loop: stop at the end.
        if stop.load(Ordering::Relaxed) || (plan.rate.is_none() && Instant::now() >= deadline) {
            break;
        }
        let i = next.fetch_add(1, Ordering::Relaxed);
        if plan.requests.is_some_and(|n| i >= n) {
            break;
        }
        let due = match plan.rate {
            Some(r) => {
                let at = start + Duration::from_secs_f64(i as f64 / r);
                if at >= deadline {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                at
            }
            None => Instant::now(),
        };
        live.attempted.fetch_add(1, Ordering::Relaxed);
        let mut r = Request::default();
        let outcome = tokio::time::timeout(
            plan.timeout,
            one(plan, request, &mut conn, &mut buf, &mut r),
        )
        .await;
        let done = Instant::now();
        let error = match outcome {
            Ok(Ok(status)) if status < 400 => None,
            Ok(Ok(status)) => Some(format!("http_{}xx", status / 100)),
            Ok(Err(e)) => {
                conn = None;
                Some(error_name(&e))
            }
            Err(_) => {
                conn = None;
                Some("timeout".into())
            }
        };
        live.count(done.saturating_duration_since(start), error.is_none());
        let mut t = shard.lock().unwrap_or_else(PoisonError::into_inner);
        for us in r.connects.into_iter().flatten() {
            let _ = t.connect.record(us);
            t.opened += 1;
        }
        match error {
            None => {
                let _ = t
                    .latency
                    .record(done.saturating_duration_since(due).as_micros().max(1) as u64);
            }
            Some(e) => *t.errors.entry(e).or_default() += 1,
        }
    }
}

/// One request: a connection (new, or the kept one), the exchange; the
/// status (200 for TCP).
async fn one(
    plan: &Plan,
    request: &[u8],
    conn: &mut Option<TcpStream>,
    buf: &mut Vec<u8>,
    t: &mut Request,
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

/// A new connection to `addr` with `first` written on it, and how long
/// the handshake took to be seen done. The write is tried as soon as
/// connect() returns: on loopback the handshake is over by then, so the
/// request goes at once, without the wait for the runtime to report the
/// socket writable and the `SO_ERROR` read that tokio's connect makes;
/// otherwise it waits for the handshake. A handshake that fails gives its
/// errno either way: the write, or the `SO_ERROR` read where there is
/// nothing to write, returns the socket's error (ECONNREFUSED in the
/// tests); one that cannot start (EADDRNOTAVAIL) is connect()'s.
async fn open(addr: SocketAddr, first: &[u8]) -> io::Result<(TcpStream, Duration)> {
    let c0 = Instant::now();
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    match socket.connect(&addr.into()) {
        Err(e) if e.raw_os_error() != Some(libc::EINPROGRESS) => return Err(e),
        _ => {}
    }
    // A send that does not block was made on an established connection:
    // the handshake was done before it.
    let mut up = c0.elapsed();
    let sent = match first {
        [] => 0,
        _ => match socket.send(first) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            r => r?,
        },
    };
    let mut s = TcpStream::from_std(socket.into())?;
    if sent == 0 {
        // Not up yet, or nothing to send that would say so.
        s.writable().await?;
        if let Some(e) = s.take_error()? {
            return Err(e);
        }
        up = c0.elapsed();
    }
    s.write_all(&first[sent..]).await?;
    Ok((s, up))
}

async fn exchange(
    plan: &Plan,
    request: &[u8],
    conn: &mut Option<TcpStream>,
    buf: &mut Vec<u8>,
    t: &mut Request,
) -> io::Result<u16> {
    let mut s = match conn.take() {
        Some(mut s) => {
            s.write_all(request).await?;
            s
        }
        None => {
            // Nothing read from an earlier connection belongs to this one.
            buf.clear();
            let (s, up) = open(plan.target.addr(), request).await?;
            t.connected(up.as_micros().max(1) as u64);
            // Nagle off where a connection carries more than one request
            // (a request is one write: the first segment of a connection
            // is never held back, so a short connection needs no syscall).
            if plan.mode == Mode::KeepAlive {
                let _ = s.set_nodelay(true);
            }
            s
        }
    };
    let status = match plan.target {
        Target::Tcp { .. } => 200,
        Target::Http { .. } => {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Every response of `wire`, read through a pipe that hands over at
    /// most `piece` bytes per read (so every boundary is crossed).
    async fn responses(
        wire: &'static [u8],
        piece: usize,
        n: usize,
    ) -> Vec<io::Result<(u16, bool)>> {
        let (mut client, mut server) = tokio::io::duplex(piece);
        let writer = tokio::spawn(async move {
            let _ = server.write_all(wire).await;
        });
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for _ in 0..n {
            let r = read_response(&mut client, &mut buf).await;
            let stop = r.is_err();
            out.push(r);
            if stop {
                break;
            }
        }
        // The writer may still be blocked on bytes nobody will read.
        drop(client);
        let _ = writer.await;
        out
    }

    fn ok(v: &[io::Result<(u16, bool)>]) -> Vec<(u16, bool)> {
        v.iter().map(|r| *r.as_ref().unwrap()).collect()
    }

    const KEPT: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello\
HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: t\r\n\r\n\
HTTP/1.1 204 No Content\r\n\r\n\
HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

    #[tokio::test]
    async fn responses_on_one_connection_are_read_one_after_another_at_any_read_size() {
        for piece in [1, 2, 3, 7, 64, 4096] {
            let got = responses(KEPT, piece, 4).await;
            assert_eq!(
                ok(&got),
                [(200, true), (404, true), (204, true), (200, false)],
                "read {piece} bytes at a time"
            );
        }
    }

    #[tokio::test]
    async fn a_body_delimited_by_the_close_ends_the_connection() {
        let got = responses(b"HTTP/1.0 200 OK\r\n\r\nsome body", 3, 1).await;
        assert_eq!(ok(&got), [(200, false)]);
        let got = responses(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            5,
            1,
        )
        .await;
        assert_eq!(ok(&got), [(200, true)]);
    }

    #[tokio::test]
    async fn a_cut_or_malformed_response_is_an_error_not_a_hang() {
        let cases: [(&'static [u8], io::ErrorKind); 4] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
                io::ErrorKind::UnexpectedEof,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                io::ErrorKind::InvalidData,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                io::ErrorKind::InvalidData,
            ),
            (b"SSH-2.0-OpenSSH\r\n\r\n", io::ErrorKind::InvalidData),
        ];
        for (wire, kind) in cases {
            let got = responses(wire, 4, 1).await;
            assert_eq!(
                got[0].as_ref().unwrap_err().kind(),
                kind,
                "{}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[test]
    fn every_run_is_capped_at_the_longest_a_run_may_last() {
        // --requests alone: still at most MAX_DURATION.
        let p = crate::plan::tests::plan();
        assert_eq!(run_limit(&p), MAX_DURATION);
        let p = Plan {
            duration: Some(Duration::from_secs(5)),
            ..p
        };
        assert_eq!(run_limit(&p), Duration::from_secs(5));
    }

    #[test]
    fn live_counters_are_sized_by_the_plan_and_never_index_past_it() {
        let p = Plan {
            duration: Some(Duration::from_secs(3)),
            ..crate::plan::tests::plan()
        };
        let live = Live::new(&p);
        assert_eq!(live.seconds.len() as u64, 3 + p.timeout.as_secs() + 2);
        live.count(Duration::from_secs(1), true);
        // Later than planned (a late answer): counted in the last slot.
        live.count(Duration::from_secs(10_000), false);
        assert_eq!((live.succeeded(), live.failed()), (1, 1));
        let series: Vec<_> = live.series().collect();
        assert_eq!(series.len(), live.seconds.len());
        assert_eq!((series[1], *series.last().unwrap()), ((1, 0), (0, 1)));
    }
}
