//! Workers and the request path.
//!
//! Each worker is a thread with a single-threaded tokio runtime, its own
//! listening socket on the shared address (`SO_REUSEPORT`, so the kernel
//! spreads connections) and its own upstream pool: the request path takes no
//! lock and moves nothing between threads, like nginx's worker model.

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::{Either, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::config::{Balance, Engine, ProxyConfig};
use crate::headers::{
    Refusal, check_request, downstream_response_headers, is_idempotent, upstream_request_headers,
};
use crate::metrics::Metrics;
use crate::pool::{Conn, Pool};

/// A request body on its way upstream: the client's, streamed, or none.
pub type ReqBody = Either<StallLimit<Incoming>, Empty<Bytes>>;

/// Errors of bodies streamed through the proxy.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The timer of a body that may not stall: armed while the body waits for
/// its sender, disarmed by each frame.
struct Stall {
    limit: std::time::Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

impl Stall {
    fn new(limit: std::time::Duration) -> Stall {
        Stall {
            limit,
            timer: None,
            armed: false,
        }
    }

    /// After the body returned `Pending`: whether its sender has now been
    /// silent for the limit.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.armed {
            let at = tokio::time::Instant::now() + self.limit;
            match &mut self.timer {
                Some(t) => t.as_mut().reset(at),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            self.armed = true;
        }
        self.timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }

    /// A frame (or the end) arrived.
    fn progressed(&mut self) {
        self.armed = false;
    }
}

/// A client connection whose writes fail once the client has taken no byte
/// for the body timeout (like nginx's `send_timeout`): a client that stops
/// reading cannot hold an exchange, and its backend connection, forever.
pub struct SendLimit<S> {
    inner: S,
    stall: Stall,
}

impl<S> SendLimit<S> {
    fn new(inner: S, limit: std::time::Duration) -> SendLimit<S> {
        SendLimit {
            inner,
            stall: Stall::new(limit),
        }
    }

    fn check(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(r) => {
                self.stall.progressed();
                Poll::Ready(r)
            }
            Poll::Pending if self.stall.expired(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for SendLimit<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for SendLimit<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.check(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.check(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

fn stalled() -> BoxError {
    Box::new(io::Error::new(
        io::ErrorKind::TimedOut,
        "body stalled past the body timeout",
    ))
}

/// A body that fails when its sender is silent for the body timeout (like
/// nginx's `client_body_timeout`): a stalled client cannot hold a backend
/// connection forever.
pub struct StallLimit<B> {
    inner: B,
    stall: Stall,
}

impl<B> StallLimit<B> {
    fn new(inner: B, limit: std::time::Duration) -> StallLimit<B> {
        StallLimit {
            inner,
            stall: Stall::new(limit),
        }
    }
}

impl<B> Body for StallLimit<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                this.stall.progressed();
                Poll::Ready(r.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending if this.stall.expired(cx) => Poll::Ready(Some(Err(stalled()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

type UpstreamPool = Pool<ReqBody>;

/// A backend's response body on its way to the client. Its connection goes
/// back to the pool only when the body has been read to the end; a body
/// dropped early (client gone) or broken takes its connection with it.
pub struct PooledBody {
    /// Always `Some` until dropped (then taken for draining).
    inner: Option<Incoming>,
    home: Option<(Rc<UpstreamPool>, SocketAddr, Conn<ReqBody>)>,
    /// Counts this exchange as active on its backend until the body ends.
    active: Option<ActiveGuard>,
    /// Cuts off a backend that stops sending mid-body.
    stall: Stall,
}

/// A client that leaves mid-response would cost the backend connection (and
/// a TIME_WAIT); the rest of a response this small is read and dropped
/// instead, and the connection goes back to the pool.
const DRAIN_LIMIT_BYTES: u64 = 256 * 1024;
const DRAIN_LIMIT_TIME: std::time::Duration = std::time::Duration::from_secs(1);

impl PooledBody {
    fn give_back(&mut self) {
        self.active = None;
        if let Some((pool, addr, conn)) = self.home.take() {
            pool.put(addr, conn, Instant::now());
        }
    }
}

/// Keeps a response's exchange counted as active until its body ends.
fn attach(resp: Response<RespBody>, active: ActiveGuard) -> Response<RespBody> {
    let (parts, mut body) = resp.into_parts();
    if let RespBody::Upstream(p) = &mut body
        && p.home.is_some()
    {
        p.active = Some(active);
    }
    Response::from_parts(parts, body)
}

/// One backend as a worker sees it: requests in flight, recent failures.
pub struct UpstreamState {
    pub(crate) addr: SocketAddr,
    active: Cell<u32>,
    fails: Cell<u32>,
    down_until: Cell<Option<Instant>>,
    metrics: Arc<Metrics>,
}

/// Decrements a backend's active count when dropped.
pub struct ActiveGuard(Rc<UpstreamState>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.set(self.0.active.get().saturating_sub(1));
    }
}

impl UpstreamState {
    pub(crate) fn begin(self: &Rc<Self>) -> ActiveGuard {
        self.active.set(self.active.get() + 1);
        ActiveGuard(self.clone())
    }

    pub(crate) fn succeeded(&self) {
        self.fails.set(0);
        self.down_until.set(None);
    }

    /// Passive health: after `max_fails` failures in a row the backend is
    /// left alone for `fail_timeout`, then tried again.
    pub(crate) fn failed(&self, now: Instant, cfg: &ProxyConfig) {
        let n = self.fails.get() + 1;
        if n >= cfg.max_fails {
            self.fails.set(0);
            self.down_until.set(Some(now + cfg.fail_timeout));
            Metrics::inc(&self.metrics.ejections);
        } else {
            self.fails.set(n);
        }
    }

    fn up(&self, now: Instant) -> bool {
        self.down_until.get().is_none_or(|t| now >= t)
    }
}

/// The backends and how to choose among them.
pub struct Upstreams {
    pub(crate) list: Vec<Rc<UpstreamState>>,
    next: Cell<usize>,
    balance: Balance,
}

impl Upstreams {
    /// The backend for the next attempt: not yet tried for this request,
    /// healthy if any is, then by the balancing rule.
    pub(crate) fn pick(&self, tried: &[usize], now: Instant) -> usize {
        let n = self.list.len();
        let start = self.next.get();
        self.next.set(start.wrapping_add(1));
        let order = (0..n)
            .map(|k| (start + k) % n)
            .filter(|i| !tried.contains(i));
        // The healthy ones if any (no allocation: this runs per request).
        let any_healthy = order.clone().any(|i| self.list[i].up(now));
        let mut candidates = order.filter(|&i| !any_healthy || self.list[i].up(now));
        let chosen = match self.balance {
            Balance::RoundRobin => candidates.next(),
            Balance::LeastConn => candidates.min_by_key(|&i| self.list[i].active.get()),
        };
        chosen.unwrap_or(start % n)
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        let Some(home) = self.home.take() else { return };
        let Some(mut body) = self.inner.take() else {
            return;
        };
        let small = body
            .size_hint()
            .upper()
            .is_some_and(|n| n <= DRAIN_LIMIT_BYTES);
        if !small {
            return; // unknown or large: closing is cheaper than reading it
        }
        tokio::task::spawn_local(async move {
            use http_body_util::BodyExt;
            let drained = tokio::time::timeout(DRAIN_LIMIT_TIME, async {
                while let Some(frame) = body.frame().await {
                    if frame.is_err() {
                        return false;
                    }
                }
                true
            })
            .await;
            if drained == Ok(true) {
                let (pool, addr, conn) = home;
                pool.put(addr, conn, Instant::now());
            }
        });
    }
}

type Sending = Pin<
    Box<
        dyn Future<
            Output = Result<
                Response<Incoming>,
                hyper::client::conn::TrySendError<Request<ReqBody>>,
            >,
        >,
    >,
>;

/// An exchange on a backend connection. If the client goes away while it
/// waits (hyper then drops the request's future), the exchange is finished
/// in the background and the connection kept, instead of closing the
/// connection from this side (a TIME_WAIT toward the backend).
struct InFlight {
    sending: Option<Sending>,
    home: Option<(Rc<UpstreamPool>, SocketAddr, Conn<ReqBody>)>,
}

impl InFlight {
    /// Stops guarding: the caller takes the connection back.
    fn land(&mut self) -> Conn<ReqBody> {
        self.sending = None;
        match self.home.take() {
            Some((_, _, conn)) => conn,
            None => unreachable!("an exchange lands once"),
        }
    }

    /// The exchange timed out: the connection is not worth keeping.
    fn abandon(&mut self) {
        self.sending = None;
        self.home = None;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let (Some(sending), Some(home)) = (self.sending.take(), self.home.take()) else {
            return;
        };
        tokio::task::spawn_local(async move {
            if let Ok(Ok(resp)) = tokio::time::timeout(DRAIN_LIMIT_TIME, sending).await {
                // Dropping it drains a small body and returns the connection.
                drop(PooledBody {
                    inner: Some(resp.into_body()),
                    home: Some(home),
                    active: None,
                    stall: Stall::new(DRAIN_LIMIT_TIME),
                });
            }
        });
    }
}

/// What the proxy answers with.
pub enum RespBody {
    /// A backend's body.
    Upstream(PooledBody),
    /// A body made here (errors, metrics).
    Local(Full<Bytes>),
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RespBody::Upstream(p) => {
                let Some(inner) = p.inner.as_mut() else {
                    return Poll::Ready(None);
                };
                let r = Pin::new(&mut *inner).poll_frame(cx);
                let ended = inner.is_end_stream();
                match &r {
                    Poll::Ready(None) => p.give_back(),
                    Poll::Ready(Some(Ok(_))) if ended => p.give_back(),
                    Poll::Ready(Some(Err(_))) => p.home = None,
                    Poll::Ready(Some(Ok(_))) => p.stall.progressed(),
                    Poll::Pending if p.stall.expired(cx) => {
                        // A half-sent body: the connection is not reusable.
                        p.home = None;
                        p.inner = None;
                        return Poll::Ready(Some(Err(stalled())));
                    }
                    Poll::Pending => {}
                }
                r.map(|f| f.map(|f| f.map_err(Into::into)))
            }
            RespBody::Local(f) => Pin::new(f).poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Upstream(p) => p.inner.as_ref().is_none_or(Incoming::is_end_stream),
            RespBody::Local(f) => f.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Upstream(p) => p
                .inner
                .as_ref()
                .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint),
            RespBody::Local(f) => f.size_hint(),
        }
    }
}

type SendOutcome = Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<ReqBody>>>;

/// What trying the pooled connections came to.
enum Pooled {
    Done(Response<RespBody>),
    Failed(ProxyError),
    /// A reused connection died under this (repeatable) request.
    Resend(Request<ReqBody>),
    /// No pooled connection took it; here it is back.
    NoConnection(Request<ReqBody>),
}

/// The request target as sent upstream: path and query only (an
/// absolute-form target's authority is not forwarded in the request line).
fn origin_form(uri: &Uri) -> Uri {
    uri.path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .unwrap_or_else(|_| Uri::from_static("/"))
}

fn build_request(
    method: http::Method,
    uri: Uri,
    headers: http::HeaderMap,
    body: ReqBody,
) -> Request<ReqBody> {
    let mut r = Request::new(body);
    *r.method_mut() = method;
    *r.uri_mut() = uri;
    *r.version_mut() = Version::HTTP_11;
    *r.headers_mut() = headers;
    r
}

/// Why a request got an answer made here.
#[derive(Debug)]
enum ProxyError {
    Refused(Refusal),
    Connect(String),
    Upstream(hyper::Error),
    Timeout,
}

impl ProxyError {
    fn response(&self) -> Response<RespBody> {
        let (status, msg, close) = match self {
            ProxyError::Refused(r) => {
                (StatusCode::BAD_REQUEST, format!("bad request: {r}\n"), true)
            }
            ProxyError::Connect(e) => (
                StatusCode::BAD_GATEWAY,
                format!("bad gateway: cannot connect to the backend: {e}\n"),
                false,
            ),
            ProxyError::Upstream(e) => (
                StatusCode::BAD_GATEWAY,
                format!("bad gateway: {e}\n"),
                false,
            ),
            ProxyError::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "gateway timeout: the backend did not answer in time\n".into(),
                false,
            ),
        };
        local_response(status, msg, close)
    }
}

fn local_response(status: StatusCode, body: String, close: bool) -> Response<RespBody> {
    let mut r = Response::new(RespBody::Local(Full::new(Bytes::from(body))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if close {
        // The framing of this connection can no longer be trusted.
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

struct Worker {
    cfg: Arc<ProxyConfig>,
    metrics: Arc<Metrics>,
    pool: Rc<UpstreamPool>,
    upstreams: Rc<Upstreams>,
}

impl Worker {
    /// A new backend connection; `pooled` unless it is for an `Upgrade`
    /// (see [`dial`]).
    async fn connect(&self, addr: SocketAddr, pooled: bool) -> Result<Conn<ReqBody>, ProxyError> {
        let stream = dial(addr, self.cfg.connect_timeout, pooled)
            .await
            .map_err(|e| {
                Metrics::inc(&self.metrics.connect_errors);
                ProxyError::Connect(e.to_string())
            })?;
        let (sender, conn) = client::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| {
                Metrics::inc(&self.metrics.upstream_errors);
                ProxyError::Upstream(e)
            })?;
        // Drives the connection, and keeps reading it while idle, so a
        // backend's close is noticed before the connection is reused.
        let driver = tokio::task::spawn_local(async move {
            let _ = conn.with_upgrades().await;
        });
        Metrics::inc(&self.metrics.upstream_connections_opened);
        Ok(Conn {
            sender,
            requests: 0,
            born: Instant::now(),
            // An upgraded connection outlives its `Conn`: never stopped.
            driver: pooled.then(|| driver.abort_handle()),
        })
    }

    fn respond(
        self: &Rc<Self>,
        addr: SocketAddr,
        mut conn: Conn<ReqBody>,
        resp: Response<Incoming>,
    ) -> Response<RespBody> {
        conn.requests += 1;
        let (mut parts, body) = resp.into_parts();
        downstream_response_headers(&mut parts.headers, &self.cfg.forwarding);
        let mut pb = PooledBody {
            inner: Some(body),
            home: Some((self.pool.clone(), addr, conn)),
            active: None,
            stall: Stall::new(self.cfg.body_timeout),
        };
        if pb.inner.as_ref().is_some_and(Incoming::is_end_stream) {
            pb.give_back();
        }
        Response::from_parts(parts, RespBody::Upstream(pb))
    }

    async fn proxy(
        self: &Rc<Self>,
        peer: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<Response<RespBody>, ProxyError> {
        let (parts, body) = req.into_parts();
        check_request(parts.version, &parts.headers).map_err(|r| {
            Metrics::inc(&self.metrics.refused);
            ProxyError::Refused(r)
        })?;
        let uri = origin_form(&parts.uri);
        let mut headers = upstream_request_headers(parts.headers, peer.ip(), &self.cfg.forwarding);
        if !headers.contains_key(header::HOST) {
            // An HTTP/1.0 client may send none; HTTP/1.1 upstream needs one.
            let host = parts
                .uri
                .authority()
                .map_or_else(|| self.cfg.upstreams[0].to_string(), |a| a.to_string());
            if let Ok(v) = HeaderValue::from_str(&host) {
                headers.insert(header::HOST, v);
            }
        }
        let has_body = !body.is_end_stream();
        let repeatable = !has_body && is_idempotent(&parts.method);
        let mut req = build_request(
            parts.method,
            uri,
            headers,
            if has_body {
                Either::Left(StallLimit::new(body, self.cfg.body_timeout))
            } else {
                Either::Right(Empty::new())
            },
        );
        // Connect failures send nothing, so any request may go to another
        // backend, and keep trying (backing off) until the connect timeout:
        // a backend that restarts in less than that costs no request.
        let deadline = Instant::now() + self.cfg.connect_timeout;
        let mut tried: Vec<usize> = Vec::new();
        let mut backoff = std::time::Duration::from_millis(10);
        let mut retried = false;
        loop {
            let i = self.upstreams.pick(&tried, Instant::now());
            let up = &self.upstreams.list[i];
            let addr = up.addr;
            let active = up.begin();
            if !retried {
                match self.exchange_pooled(addr, req, repeatable).await {
                    Pooled::Done(resp) => {
                        up.succeeded();
                        return Ok(attach(resp, active));
                    }
                    Pooled::Failed(e) => {
                        up.failed(Instant::now(), &self.cfg);
                        return Err(e);
                    }
                    Pooled::Resend(r) => {
                        // A reused connection died under a request safe to
                        // repeat: once more, on a fresh connection.
                        Metrics::inc(&self.metrics.retries);
                        retried = true;
                        req = r;
                    }
                    Pooled::NoConnection(r) => req = r,
                }
            }
            let conn = match self.connect(addr, true).await {
                Ok(c) => c,
                Err(e) => {
                    up.failed(Instant::now(), &self.cfg);
                    tried.push(i);
                    if tried.len() >= self.upstreams.list.len() {
                        if Instant::now() + backoff >= deadline {
                            return Err(e);
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(std::time::Duration::from_millis(200));
                        tried.clear();
                    }
                    continue;
                }
            };
            Metrics::inc(&self.metrics.upstream_requests);
            let (outcome, conn_back) = self.send(addr, conn, req).await;
            return match outcome {
                None => {
                    Metrics::inc(&self.metrics.upstream_timeouts);
                    up.failed(Instant::now(), &self.cfg);
                    Err(ProxyError::Timeout)
                }
                Some(Err(e)) => {
                    Metrics::inc(&self.metrics.upstream_errors);
                    up.failed(Instant::now(), &self.cfg);
                    Err(ProxyError::Upstream(e.into_error()))
                }
                Some(Ok(resp)) => {
                    up.succeeded();
                    match conn_back {
                        Some(c) => Ok(attach(self.respond(addr, c, resp), active)),
                        None => Err(ProxyError::Timeout),
                    }
                }
            };
        }
    }

    /// Sends `req` on `conn`, guarding the exchange against the client
    /// leaving (see [`InFlight`]). `None` when the backend did not answer in
    /// time (the connection is then dropped).
    async fn send(
        self: &Rc<Self>,
        addr: SocketAddr,
        mut conn: Conn<ReqBody>,
        req: Request<ReqBody>,
    ) -> (Option<SendOutcome>, Option<Conn<ReqBody>>) {
        let mut flight = InFlight {
            sending: Some(Box::pin(conn.sender.try_send_request(req))),
            home: Some((self.pool.clone(), addr, conn)),
        };
        let outcome = match flight.sending.as_mut() {
            Some(sending) => timeout(self.cfg.response_header_timeout, sending).await,
            None => return (None, None),
        };
        match outcome {
            Err(_) => {
                flight.abandon();
                (None, None)
            }
            Ok(o) => (Some(o), Some(flight.land())),
        }
    }

    /// Tries the pool's connections to `addr` in turn.
    async fn exchange_pooled(
        self: &Rc<Self>,
        addr: SocketAddr,
        mut req: Request<ReqBody>,
        repeatable: bool,
    ) -> Pooled {
        while let Some((mut conn, _idle)) = self.pool.take(addr, Instant::now()) {
            if conn.sender.ready().await.is_err() {
                continue; // closed since it was pooled
            }
            // If this connection dies under the request (the backend timed
            // it out, or restarted), a request safe to repeat is sent again:
            // keep a copy (about 1% of a request's cost).
            let copy = repeatable.then(|| {
                (
                    req.method().clone(),
                    req.uri().clone(),
                    req.headers().clone(),
                )
            });
            Metrics::inc(&self.metrics.upstream_requests);
            Metrics::inc(&self.metrics.upstream_reused);
            let (outcome, back) = self.send(addr, conn, req).await;
            match (outcome, back) {
                (None, _) => {
                    Metrics::inc(&self.metrics.upstream_timeouts);
                    return Pooled::Failed(ProxyError::Timeout);
                }
                (Some(Ok(resp)), Some(c)) => return Pooled::Done(self.respond(addr, c, resp)),
                (Some(Ok(_)), None) => return Pooled::Failed(ProxyError::Timeout),
                (Some(Err(mut e)), _) => {
                    if let Some(back) = e.take_message() {
                        // Never written: any method may go on another connection.
                        req = back;
                        continue;
                    }
                    // Written, then the connection died. Repeat only what is
                    // safe to repeat, and never after a malformed answer.
                    let died = connection_died(e.error());
                    return match copy.filter(|_| died) {
                        Some((m, u, h)) => {
                            Pooled::Resend(build_request(m, u, h, Either::Right(Empty::new())))
                        }
                        None => {
                            Metrics::inc(&self.metrics.upstream_errors);
                            Pooled::Failed(ProxyError::Upstream(e.into_error()))
                        }
                    };
                }
            }
        }
        Pooled::NoConnection(req)
    }

    /// `Upgrade` (WebSocket and the like): the request goes to a backend on
    /// a connection of its own; if the backend switches protocols, the two
    /// upgraded connections are joined byte for byte until either side closes.
    async fn upgrade(
        self: &Rc<Self>,
        peer: SocketAddr,
        mut req: Request<Incoming>,
        protocol: HeaderValue,
    ) -> Result<Response<RespBody>, ProxyError> {
        check_request(req.version(), req.headers()).map_err(|r| {
            Metrics::inc(&self.metrics.refused);
            ProxyError::Refused(r)
        })?;
        let client_side = hyper::upgrade::on(&mut req);
        let (parts, body) = req.into_parts();
        let uri = origin_form(&parts.uri);
        let mut headers = upstream_request_headers(parts.headers, peer.ip(), &self.cfg.forwarding);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
        let body = if body.is_end_stream() {
            Either::Right(Empty::new())
        } else {
            Either::Left(StallLimit::new(body, self.cfg.body_timeout))
        };
        let i = self.upstreams.pick(&[], Instant::now());
        let up = &self.upstreams.list[i];
        let mut conn = match self.connect(up.addr, false).await {
            Ok(c) => c,
            Err(e) => {
                up.failed(Instant::now(), &self.cfg);
                return Err(e);
            }
        };
        Metrics::inc(&self.metrics.upstream_requests);
        let sent = conn
            .sender
            .send_request(build_request(parts.method, uri, headers, body));
        let mut resp = match timeout(self.cfg.response_header_timeout, sent).await {
            Err(_) => {
                Metrics::inc(&self.metrics.upstream_timeouts);
                return Err(ProxyError::Timeout);
            }
            Ok(Err(e)) => {
                Metrics::inc(&self.metrics.upstream_errors);
                up.failed(Instant::now(), &self.cfg);
                return Err(ProxyError::Upstream(e));
            }
            Ok(Ok(r)) => r,
        };
        up.succeeded();
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            // The backend declined: an ordinary answer on a connection worth keeping.
            return Ok(self.respond(up.addr, conn, resp));
        }
        let backend_side = hyper::upgrade::on(&mut resp);
        let (mut parts, _) = resp.into_parts();
        let protocol = parts.headers.get(header::UPGRADE).cloned();
        downstream_response_headers(&mut parts.headers, &self.cfg.forwarding);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(p) = protocol {
            parts.headers.insert(header::UPGRADE, p);
        }
        tokio::task::spawn_local(async move {
            if let (Ok(c), Ok(b)) = tokio::join!(client_side, backend_side) {
                let _ =
                    tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(b)).await;
            }
        });
        Ok(Response::from_parts(
            parts,
            RespBody::Local(Full::new(Bytes::new())),
        ))
    }

    async fn handle(
        self: Rc<Self>,
        peer: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<Response<RespBody>, Infallible> {
        Metrics::inc(&self.metrics.requests);
        let upgrade = req.headers().get(header::UPGRADE).cloned().filter(|_| {
            req.version() == Version::HTTP_11
                && req
                    .headers()
                    .get_all(header::CONNECTION)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
        let result = match upgrade {
            Some(protocol) => self.upgrade(peer, req, protocol).await,
            None => self.proxy(peer, req).await,
        };
        let resp = result.unwrap_or_else(|e| e.response());
        self.metrics.response(resp.status().as_u16());
        Ok(resp)
    }
}

/// Whether an upstream error means the connection went away (the stale
/// pooled connection case), as opposed to a backend answering badly.
fn connection_died(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::UnexpectedEof
            );
        }
        source = s.source();
    }
    false
}

fn listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

fn worker(
    cfg: Arc<ProxyConfig>,
    metrics: Arc<Metrics>,
    std_listener: std::net::TcpListener,
    admin: Option<Admin>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> io::Result<()> {
    on_worker_runtime(admin, async move {
        let upstreams = new_upstreams(&cfg, &metrics);
        let w = Rc::new(Worker {
            pool: Rc::new(Pool::new(cfg.pool.clone(), metrics.clone())),
            upstreams,
            cfg: cfg.clone(),
            metrics: metrics.clone(),
        });
        {
            let pool = w.pool.clone();
            let every = (cfg.pool.idle_timeout / 2).max(std::time::Duration::from_millis(100));
            tokio::task::spawn_local(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    pool.sweep(Instant::now());
                }
            });
        }
        let open = Rc::new(Cell::new(0usize));
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        accept_until_stopped(
            listener,
            shutdown,
            open.clone(),
            |stream, peer, mut stop| {
                let w = w.clone();
                Some(async move {
                    let cfg = w.cfg.clone();
                    let metrics = w.metrics.clone();
                    let svc = service_fn(move |req| w.clone().handle(peer, req));
                    let conn = server::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(cfg.client_header_timeout)
                        .max_headers(cfg.max_headers)
                        .serve_connection(
                            TokioIo::new(SendLimit::new(stream, cfg.body_timeout)),
                            svc,
                        )
                        .with_upgrades();
                    tokio::pin!(conn);
                    tokio::select! {
                        served = conn.as_mut() => {
                            if let Err(e) = served {
                                count_parse_refusal(&metrics, &e);
                            }
                        }
                        _ = stop.wait_for(|s| *s) => {
                            // Finish the exchange in progress, then close.
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                })
            },
        )
        .await;
        // Draining: no new connections; wait for the open ones to finish.
        drain(&open).await;
        Ok(())
    })
}

/// One worker's event loop: a current-thread runtime with a `LocalSet`
/// (the worker's state is `Rc`, never shared), serving `/metrics` on
/// `admin` if this worker has it, until `body` ends.
fn on_worker_runtime(
    admin: Option<Admin>,
    body: impl Future<Output = io::Result<()>>,
) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        if let Some((listener, all)) = admin {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tokio::task::spawn_local(serve_admin(listener, all));
        }
        body.await
    })
}

/// Accepts connections (Nagle off) until shutdown is signalled, running
/// what `serve` makes of each (`None`: drop it) as a task counted in `open`.
async fn accept_until_stopped<F, S>(
    listener: tokio::net::TcpListener,
    shutdown: tokio::sync::watch::Receiver<bool>,
    open: Rc<Cell<usize>>,
    serve: S,
) where
    S: Fn(TcpStream, SocketAddr, tokio::sync::watch::Receiver<bool>) -> Option<F>,
    F: Future<Output = ()> + 'static,
{
    let mut stop = shutdown.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => break,
        };
        let Ok((stream, peer)) = accepted else {
            // Out of file descriptors and the like: wait, do not spin.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Some(served) = serve(stream, peer, shutdown.clone()) else {
            continue;
        };
        let open = open.clone();
        open.set(open.get() + 1);
        tokio::task::spawn_local(async move {
            served.await;
            open.set(open.get() - 1);
        });
    }
}

/// A request hyper could not parse gets its answer from hyper itself (431
/// for a head too large, 400 for the rest) and never reaches
/// [`Worker::handle`]: counted here, as the lean engine counts its own.
fn count_parse_refusal(metrics: &Metrics, e: &hyper::Error) {
    if e.is_parse_too_large() {
        metrics.response(431);
    } else if e.is_parse() {
        Metrics::inc(&metrics.refused);
        metrics.response(400);
    }
}

/// How long a shutdown waits for open connections to finish.
const DRAIN_ON_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(30);

/// After the listeners stop: waits for the open connections to finish, at
/// most `DRAIN_ON_SHUTDOWN`.
async fn drain(open: &Cell<usize>) {
    let drained = tokio::time::timeout(DRAIN_ON_SHUTDOWN, async {
        while open.get() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = open.get(),
            "shutdown: connections still open after the drain time; closing them"
        );
    }
}

/// A connection to a backend, within the connect timeout, with Nagle off.
/// A pooled connection (`abortive`) is closed with a
/// reset rather than a FIN (`SO_LINGER` 0, as HAProxy closes idle server
/// connections): the proxy only closes such a connection when it is idle,
/// abandoned or broken, and a FIN would leave a TIME_WAIT on this host's
/// port toward the backend each time. An `Upgrade` connection, which ends
/// with data in flight, closes normally.
pub(crate) async fn dial(
    addr: SocketAddr,
    within: std::time::Duration,
    abortive: bool,
) -> io::Result<TcpStream> {
    let stream = match timeout(within, TcpStream::connect(addr)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out after {within:?}"),
            ));
        }
    };
    let _ = stream.set_nodelay(true);
    if abortive {
        let _ = stream.set_zero_linger();
    }
    Ok(stream)
}

/// The admin listener and every worker's counters, for `/metrics`.
type Admin = (std::net::TcpListener, Arc<[Arc<Metrics>]>);

async fn serve_admin(listener: tokio::net::TcpListener, metrics: Arc<[Arc<Metrics>]>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::task::spawn_local(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let (status, body) = match req.uri().path() {
                        "/metrics" => (StatusCode::OK, Metrics::sum(&metrics).render()),
                        "/healthz" => (StatusCode::OK, "ok\n".to_string()),
                        _ => (
                            StatusCode::NOT_FOUND,
                            "not found: try /metrics\n".to_string(),
                        ),
                    };
                    Ok::<_, Infallible>(local_response(status, body, false))
                }
            });
            let _ = server::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The addresses a started proxy really listens on.
#[derive(Debug, Clone)]
pub struct Bound {
    /// Every client listener.
    pub listeners: Vec<SocketAddr>,
    /// The admin listener.
    pub admin: Option<SocketAddr>,
}

/// Binds every listener (so address errors surface here), calls `ready`
/// with the bound addresses, then runs the workers until they fail.
pub fn run(cfg: ProxyConfig, ready: impl FnOnce(Bound)) -> io::Result<()> {
    if cfg.engine == Engine::Lean {
        return run_routed(crate::file::RoutedConfig::single(cfg), None, ready);
    }
    let first = listener(cfg.listen)?;
    let listen = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..cfg.workers.max(1) {
        listeners.push(listener(listen)?);
    }
    let admin = bind_admin(cfg.admin)?;
    // Signal handlers first: a SIGTERM sent once `ready` has announced the
    // listeners must find them installed.
    let rx = on_signals()?;
    ready(Bound {
        listeners: vec![listen],
        admin: admin.as_ref().map(|a| a.local_addr()).transpose()?,
    });
    let cfg = Arc::new(cfg);
    run_workers(listeners, admin, move |l, metrics, admin| {
        worker(cfg.clone(), metrics, l, admin, rx.clone())
    })
}

/// One named thread per worker, each with its own listening socket(s); the
/// first also serves the admin listener. Returns when all have ended.
fn run_workers<L: Send + 'static>(
    listeners: Vec<L>,
    mut admin: Option<std::net::TcpListener>,
    work: impl Fn(L, Arc<Metrics>, Option<Admin>) -> io::Result<()> + Clone + Send + 'static,
) -> io::Result<()> {
    let all: Arc<[Arc<Metrics>]> = listeners.iter().map(|_| Arc::default()).collect();
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let work = work.clone();
            let (metrics, admin) = (all[i].clone(), admin.take().map(|a| (a, all.clone())));
            std::thread::Builder::new()
                .name(format!("proxy-worker-{i}"))
                .spawn(move || work(l, metrics, admin))
        })
        .collect::<io::Result<_>>()?;
    join_all(handles)
}

fn bind_admin(addr: Option<SocketAddr>) -> io::Result<Option<std::net::TcpListener>> {
    let admin = addr.map(std::net::TcpListener::bind).transpose()?;
    if let Some(a) = &admin {
        a.set_nonblocking(true)?;
    }
    Ok(admin)
}

fn join_all(handles: Vec<std::thread::JoinHandle<io::Result<()>>>) -> io::Result<()> {
    for h in handles {
        h.join()
            .map_err(|_| io::Error::other("a worker panicked"))??;
    }
    Ok(())
}

/// SIGTERM or SIGINT: the returned channel turns true (stop accepting,
/// finish what is in flight, exit).
fn on_signals() -> io::Result<tokio::sync::watch::Receiver<bool>> {
    on_signals_with_reload(None).map(|(stop, _)| stop)
}

type Reloads = tokio::sync::watch::Receiver<Option<Arc<crate::file::RoutedConfig>>>;

/// Like [`on_signals`]; with a file, SIGHUP also re-reads it and, if it is
/// valid and keeps the same listener addresses, publishes it to the workers.
/// A file that does not parse is reported on stderr and the running
/// configuration stays.
fn on_signals_with_reload(
    file: Option<(std::path::PathBuf, Vec<SocketAddr>)>,
) -> io::Result<(tokio::sync::watch::Receiver<bool>, Reloads)> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = tokio::sync::watch::channel(false);
    let (reload_tx, reload_rx) = tokio::sync::watch::channel(None);
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut term, mut hup) = signals.block_on(async {
        Ok::<_, io::Error>((
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        ))
    })?;
    std::thread::Builder::new().name("proxy-signals".into()).spawn(move || {
        signals.block_on(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = tokio::signal::ctrl_c() => break,
                    _ = hup.recv() => {
                        let Some((path, listening)) = &file else { continue };
                        match reread(path, listening) {
                            Ok(cfg) => {
                                let _ = reload_tx.send(Some(Arc::new(cfg)));
                                eprintln!("timewait proxy: reloaded {}", path.display());
                            }
                            Err(e) => eprintln!("timewait proxy: reload refused, keeping the running configuration: {e}"),
                        }
                    }
                }
            }
            let _ = tx.send(true);
        });
    })?;
    Ok((rx, reload_rx))
}

fn reread(
    path: &std::path::Path,
    listening: &[SocketAddr],
) -> Result<crate::file::RoutedConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let cfg = crate::file::parse(&path.display().to_string(), &text).map_err(|e| e.to_string())?;
    let wanted: Vec<SocketAddr> = cfg.listeners.iter().map(|l| l.listen).collect();
    let same = wanted.len() == listening.len()
        && wanted
            .iter()
            .zip(listening)
            .all(|(w, l)| w == l || (w.port() == 0 && w.ip() == l.ip()));
    if !same {
        return Err("listener addresses changed; that needs a restart".into());
    }
    Ok(cfg)
}

/// Runs the lean engine over any number of listeners with routes (what `-c
/// FILE` describes; the flags are the one-listener, one-route case).
pub fn run_routed(
    cfg: crate::file::RoutedConfig,
    reload_from: Option<std::path::PathBuf>,
    ready: impl FnOnce(Bound),
) -> io::Result<()> {
    let workers = cfg.workers.max(1);
    // listeners[w][l]: worker w's socket for listener l (SO_REUSEPORT).
    let mut listeners: Vec<Vec<std::net::TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for spec in &cfg.listeners {
        let first = listener(spec.listen)?;
        let addr = first.local_addr()?;
        bound.push(addr);
        listeners[0].push(first);
        for w in listeners.iter_mut().skip(1) {
            w.push(listener(addr)?);
        }
    }
    let admin = bind_admin(cfg.admin)?;
    let (rx, reloads) = on_signals_with_reload(reload_from.map(|p| (p, bound.clone())))?;
    ready(Bound {
        listeners: bound,
        admin: admin.as_ref().map(|a| a.local_addr()).transpose()?,
    });
    let cfg = Arc::new(cfg);
    let shared = Arc::new(crate::lean::SharedPool::default());
    run_workers(listeners, admin, move |ls, metrics, admin| {
        let (cfg, shared) = (cfg.clone(), shared.clone());
        lean_worker(cfg, metrics, shared, ls, admin, rx.clone(), reloads.clone())
    })
}

fn new_upstreams(cfg: &ProxyConfig, metrics: &Arc<Metrics>) -> Rc<Upstreams> {
    Rc::new(Upstreams {
        list: cfg
            .upstreams
            .iter()
            .map(|&addr| {
                Rc::new(UpstreamState {
                    addr,
                    active: Cell::new(0),
                    fails: Cell::new(0),
                    down_until: Cell::new(None),
                    metrics: metrics.clone(),
                })
            })
            .collect(),
        next: Cell::new(0),
        balance: cfg.balance,
    })
}

/// The routers of one worker, one per listener, built from a configuration.
fn build_routers(
    cfg: &crate::file::RoutedConfig,
    metrics: &Arc<Metrics>,
    shared: &Arc<crate::lean::SharedPool>,
    log: &Option<Rc<crate::lean::AccessLog>>,
) -> Vec<Rc<crate::lean::Router>> {
    use crate::lean::{Lean, LeanPool, Router};
    let groups: Vec<Rc<Lean>> = cfg
        .groups
        .iter()
        .map(|g| {
            let g = Arc::new(g.clone());
            let shared = g.pool.shared.then(|| shared.clone());
            Rc::new(Lean {
                pool: Rc::new(LeanPool::new(g.clone(), metrics.clone(), shared)),
                upstreams: new_upstreams(&g, metrics),
                cfg: g,
                metrics: metrics.clone(),
            })
        })
        .collect();
    cfg.listeners
        .iter()
        .map(|spec| {
            let first = &cfg.groups[spec.routes.first().map_or(0, |r| r.group)];
            Rc::new(Router {
                groups: groups.clone(),
                routes: spec.routes.clone(),
                header_timeout: first.client_header_timeout,
                max_headers: first.max_headers,
                metrics: metrics.clone(),
                log: log.clone(),
            })
        })
        .collect()
}

fn lean_worker(
    cfg: Arc<crate::file::RoutedConfig>,
    metrics: Arc<Metrics>,
    shared: Arc<crate::lean::SharedPool>,
    std_listeners: Vec<std::net::TcpListener>,
    admin: Option<Admin>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    mut reloads: Reloads,
) -> io::Result<()> {
    on_worker_runtime(admin, async move {
        let log = cfg
            .access_log
            .then(|| Rc::new(crate::lean::AccessLog::default()));
        if let Some(log) = log.clone() {
            tokio::task::spawn_local(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
                loop {
                    tick.tick().await;
                    log.flush();
                }
            });
        }
        // The routers new connections get; a reload replaces them, while
        // connections already open keep the one they started with.
        let routers: Rc<std::cell::RefCell<Vec<Rc<crate::lean::Router>>>> = Rc::new(
            std::cell::RefCell::new(build_routers(&cfg, &metrics, &shared, &log)),
        );
        {
            // Sweep the current routers' pools (a reload brings new ones).
            let routers = routers.clone();
            tokio::task::spawn_local(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
                loop {
                    tick.tick().await;
                    let now = Instant::now();
                    if let Some(r) = routers.borrow().first() {
                        for g in &r.groups {
                            g.pool.sweep(now);
                        }
                    }
                }
            });
        }
        {
            let (routers, metrics, log) = (routers.clone(), metrics.clone(), log.clone());
            let shared = shared.clone();
            tokio::task::spawn_local(async move {
                while reloads.changed().await.is_ok() {
                    let next = reloads.borrow_and_update().clone();
                    if let Some(next) = next {
                        *routers.borrow_mut() = build_routers(&next, &metrics, &shared, &log);
                    }
                }
            });
        }
        let open = Rc::new(Cell::new(0usize));
        let mut accepting = Vec::new();
        for (index, l) in std_listeners.into_iter().enumerate() {
            let listener = tokio::net::TcpListener::from_std(l)?;
            let routers = routers.clone();
            accepting.push(tokio::task::spawn_local(accept_until_stopped(
                listener,
                shutdown.clone(),
                open.clone(),
                move |stream, peer, stop| {
                    let router = routers.borrow().get(index).cloned()?;
                    Some(router.serve(stream, peer, stop))
                },
            )));
        }
        for a in accepting {
            let _ = a.await;
        }
        drain(&open).await;
        if let Some(log) = &log {
            log.flush();
        }
        Ok(())
    })
}
