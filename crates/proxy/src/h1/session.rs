//! One client connection, from its first byte to its close: requests are
//! read and checked ([`crate::h1::head`]), routed, and forwarded over a
//! pooled backend connection that this task drives itself (no channel, no
//! second task per request); bodies stream through ([`crate::h1::body`]).
//! Every way an exchange can fail ends in [`GroupRt::fail`] with a
//! [`ProxyError`]: counted by kind, charged to the backend's health when
//! the backend failed, retried only where [`ProxyError::retryable`] says,
//! and answered with its status where a response can still be sent.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use timewait_pool::Pooled;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::access_log::AccessLog;
use crate::clients::Open;
use crate::config::{Group, Listener};
use crate::connect::{Close, dial};
use crate::error::{Kind, ProxyError, Retries};
use crate::h1::body::{BodyError, copy_body};
use crate::h1::head::{
    ClientHead, Framing, ParsedRequest, ParsedResponse, RequestInfo, parse_request, parse_response,
};
use crate::h1::io::{Deadline, ReadBuf, now, send, send_counting};
use crate::headers::ForwardingRules;
use crate::metrics::Metrics;
use crate::pool::{BackendPool, Shared, UpConn};
use crate::upstream::Upstreams;

/// How long an idle keep-alive client connection is kept.
const CLIENT_IDLE: Duration = Duration::from_secs(75);
/// A response body the client left behind is read to its end (so the
/// backend connection can be kept) only if this small…
const DRAIN_LIMIT_BYTES: u64 = 256 * 1024;
/// …and only for this long.
const DRAIN_LIMIT_TIME: Duration = Duration::from_secs(1);

/// One upstream group in one worker: its backends' health, its pool.
/// Shared by every route of every listener that names the group.
pub(crate) struct GroupRt {
    pub(crate) cfg: Arc<Group>,
    pub(crate) upstreams: Upstreams,
    pub(crate) pool: BackendPool,
    metrics: Arc<Metrics>,
}

impl GroupRt {
    pub(crate) fn new(cfg: Arc<Group>, metrics: Arc<Metrics>, shared: Option<Shared>) -> GroupRt {
        GroupRt {
            upstreams: Upstreams::new(&cfg, metrics.clone()),
            pool: BackendPool::new(&cfg.pool, metrics.clone(), shared),
            cfg,
            metrics,
        }
    }
}

/// One listener's routes in one worker, and the loop that serves its
/// client connections.
pub(crate) struct Router {
    /// The worker's groups (shared with its other routers).
    pub(crate) groups: Rc<[Rc<GroupRt>]>,
    pub(crate) listener: Arc<Listener>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) log: Option<Rc<AccessLog>>,
}

enum Exchange {
    /// The client connection may carry another request.
    KeepGoing,
    /// Close the client connection.
    Close,
}

/// One request to forward: its rewritten head, what it says, its rules,
/// and whether the proxy is shutting down.
struct Ask<'a> {
    head: &'a [u8],
    info: &'a RequestInfo,
    rules: &'a ForwardingRules,
    closing: bool,
    /// When its head arrived.
    now: Instant,
}

/// What happened to one request, for the access log.
#[derive(Default)]
struct Outcome {
    status: Option<u16>,
    upstream: Option<SocketAddr>,
}

/// Writes an answer made here. `false`: the client is gone (counted).
async fn answer(
    client: &mut TcpStream,
    metrics: &Metrics,
    status: u16,
    reason: &str,
    msg: &str,
    close: bool,
) -> bool {
    metrics.response(status);
    let body = format!("{msg}\n");
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{}\r\n",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    );
    match client.write_all(format!("{head}{body}").as_bytes()).await {
        Ok(()) => true,
        Err(_) => {
            metrics.failure(&ProxyError::new(Kind::ClientGone, false, false));
            false
        }
    }
}

impl Router {
    /// 431 and close, for a head past the limits.
    async fn too_large(&self, client: &mut TcpStream, why: &str) {
        Metrics::inc(&self.metrics.requests);
        answer(
            client,
            &self.metrics,
            431,
            "Request Header Fields Too Large",
            why,
            true,
        )
        .await;
    }

    /// 400 and close: the framing of this connection can no longer be trusted.
    async fn refuse(&self, client: &mut TcpStream, why: &str) {
        Metrics::inc(&self.metrics.refused);
        answer(
            client,
            &self.metrics,
            400,
            "Bad Request",
            &format!("bad request: {why}"),
            true,
        )
        .await;
    }

    /// Serves one client connection until it closes.
    pub(crate) async fn serve(
        self: Rc<Self>,
        mut client: TcpStream,
        peer: SocketAddr,
        stop: tokio::sync::watch::Receiver<bool>,
        open: Open,
    ) {
        let mut crb = ReadBuf::new();
        let peer_ip = peer.ip().to_string();
        let mut head_out = Vec::with_capacity(1024);
        let mut resp_out = Vec::with_capacity(1024);
        let header_timeout = self.listener.header_timeout;
        let step = self
            .groups
            .iter()
            .flat_map(|g| [g.cfg.response_timeout, g.cfg.body_timeout])
            .chain([header_timeout, CLIENT_IDLE])
            .min()
            .unwrap_or(CLIENT_IDLE);
        let mut dl = Deadline::new(step);
        // Made once per connection, not once per request.
        let mut stop_rx = stop.clone();
        let mut stopped = std::pin::pin!(async move {
            // An error means the sender is gone: the proxy is ending too.
            let _ = stop_rx.wait_for(|s| *s).await;
        });
        // The Host of a request that has none (HTTP/1.0): its group's first
        // backend. Made once per connection, not per request.
        let groups = self.groups.clone();
        let default_host = |g: usize| groups.get(g).map_or(peer, |g| g.cfg.servers[0]);
        let mut at = now();
        loop {
            // Wait for a request: the first byte within the idle time, the
            // whole head within the header timeout (slowloris). Idle, the
            // connection gives up its slot when the worker needs it.
            if crb.filled().is_empty() {
                dl.set(at + CLIENT_IDLE);
                open.idle(at);
                let first = tokio::select! {
                    biased;
                    r = dl.within(crb.fill(&mut client)) => r,
                    () = &mut stopped => return,
                    () = open.evicted() => return,
                };
                open.busy();
                match first {
                    Some(Ok(n)) if n > 0 => {}
                    _ => return,
                }
                at = now();
            }
            dl.set(at + header_timeout);
            let parsed = loop {
                match parse_request(
                    crb.filled(),
                    self.listener.max_headers,
                    &peer_ip,
                    &self.listener.routes,
                    default_host,
                    self.log.is_some(),
                    &mut head_out,
                ) {
                    ParsedRequest::Head(n, checked) => break Some((n, checked)),
                    ParsedRequest::Partial => {}
                    ParsedRequest::Malformed => break None,
                    ParsedRequest::TooManyHeaders => {
                        self.too_large(&mut client, "too many request headers")
                            .await;
                        return;
                    }
                }
                match dl.within(crb.fill(&mut client)).await {
                    Some(Ok(n)) if n > 0 => {}
                    Some(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
                        self.too_large(&mut client, "request head too large").await;
                        return;
                    }
                    // Too slow (slowloris): a 408 and close, as nginx does.
                    None => {
                        let e = ProxyError::new(Kind::RequestHead, false, false);
                        self.metrics.failure(&e);
                        answer(
                            &mut client,
                            &self.metrics,
                            e.status(),
                            e.reason(),
                            e.message(),
                            true,
                        )
                        .await;
                        return;
                    }
                    // Closed, or broken, mid-head: there is nobody to answer.
                    Some(_) => {
                        self.metrics
                            .failure(&ProxyError::new(Kind::RequestHead, false, false));
                        return;
                    }
                }
            };
            Metrics::inc(&self.metrics.requests);
            let Some((n, checked)) = parsed else {
                self.refuse(&mut client, "malformed request head").await;
                return;
            };
            crb.consume(n);
            let req = match checked {
                Ok(r) => r,
                Err(r) => {
                    self.refuse(&mut client, &r.to_string()).await;
                    return;
                }
            };
            let info = req.info;
            let closing = *stop.borrow();
            let Some(route) = req.route else {
                let close = !info.client_keep_alive || info.framing != Framing::None || closing;
                let msg = "not found: no route for this host and path";
                let sent = answer(&mut client, &self.metrics, 404, "Not Found", msg, close).await;
                self.log(
                    peer,
                    req.line.as_deref(),
                    at,
                    &Outcome {
                        status: Some(404),
                        upstream: None,
                    },
                );
                if close || !sent {
                    return;
                }
                continue;
            };
            let mut outcome = Outcome::default();
            let line = req.line;
            let done = self.groups[route.group]
                .exchange(
                    &mut client,
                    &mut crb,
                    Ask {
                        head: &head_out,
                        info: &info,
                        rules: &route.forwarding,
                        closing,
                        now: at,
                    },
                    &mut resp_out,
                    &mut outcome,
                    &mut dl,
                )
                .await;
            self.log(peer, line.as_deref(), at, &outcome);
            at = now();
            match done {
                Exchange::KeepGoing if !closing => {}
                _ => {
                    // The client may already be gone; the socket closes either way.
                    let _ = client.shutdown().await;
                    return;
                }
            }
        }
    }

    fn log(&self, peer: SocketAddr, line: Option<&str>, start: Instant, o: &Outcome) {
        if let (Some(log), Some(line)) = (&self.log, line) {
            log.request(
                peer.ip(),
                line,
                o.status,
                o.upstream,
                now().saturating_duration_since(start),
            );
        }
    }
}

impl GroupRt {
    /// A new backend connection: for the pool (closed with a reset), or for
    /// an `Upgrade` tunnel (closed normally).
    async fn connect(&self, addr: SocketAddr, close: Close) -> io::Result<Pooled<UpConn>> {
        let stream = dial(addr, self.cfg.connect_timeout, close).await?;
        Metrics::inc(&self.metrics.upstream_connections_opened);
        Ok(Pooled::new(
            UpConn {
                stream,
                rb: ReadBuf::new(),
            },
            now(),
        ))
    }

    /// Forwards one request and its response.
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        client: &mut TcpStream,
        crb: &mut ReadBuf,
        ask: Ask<'_>,
        out: &mut Vec<u8>,
        outcome: &mut Outcome,
        dl: &mut Deadline,
    ) -> Exchange {
        let Ask {
            head,
            info,
            rules,
            closing,
            now: mut at,
        } = ask;
        dl.body = self.cfg.body_timeout;
        let deadline = at + self.cfg.connect_timeout;
        let mut tried: Vec<usize> = Vec::new();
        let mut backoff = Duration::from_millis(10);
        let mut retries = Retries::default();
        let mut continued = false;
        loop {
            let i = self.upstreams.pick(&tried, at);
            let addr = self.upstreams.list[i].addr;
            let active = self.upstreams.begin(i);
            outcome.upstream = Some(addr);
            let pooled = if retries.fresh_only() || info.upgrade {
                None
            } else {
                self.pool.take(i, addr, at)
            };
            let reused = pooled.is_some();
            let mut conn = match pooled {
                Some(c) => c,
                None => {
                    let close = if info.upgrade {
                        Close::Fin
                    } else {
                        Close::Reset
                    };
                    match self.connect(addr, close).await {
                        Ok(c) => c,
                        Err(_) => {
                            Metrics::inc(&self.metrics.connect_errors);
                            self.upstreams.failed(i, now());
                            tried.push(i);
                            if tried.len() >= self.upstreams.list.len() {
                                if now() + backoff >= deadline {
                                    let e = ProxyError::new(Kind::Connect, false, false);
                                    return self.fail(client, None, info, e, outcome).await;
                                }
                                tokio::time::sleep(backoff).await;
                                backoff = (backoff * 2).min(Duration::from_millis(200));
                                tried.clear();
                            }
                            at = now();
                            continue;
                        }
                    }
                }
            };
            if reused {
                Metrics::inc(&self.metrics.upstream_reused);
            }
            Metrics::inc(&self.metrics.upstream_requests);
            if info.expect_continue && !continued {
                continued = true;
                if client
                    .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    .await
                    .is_err()
                {
                    let e = ProxyError::new(Kind::ClientGone, reused, false);
                    return self.fail(client, None, info, e, outcome).await;
                }
            }
            // The head, then the body, if any.
            let mut written = 0;
            if send_counting(&mut conn.conn.stream, head, dl, &mut written)
                .await
                .is_err()
            {
                let e = ProxyError::new(Kind::SendRequest, reused, written > 0);
                if self.retry(&mut retries, &e, info, i, &mut tried) {
                    at = now();
                    continue;
                }
                return self.fail(client, Some(i), info, e, outcome).await;
            }
            let sent = copy_body(
                crb,
                client,
                &mut conn.conn.stream,
                info.framing,
                info.framing,
                out,
                dl,
            )
            .await;
            match sent {
                Ok(()) => {}
                // The client's body failed to arrive: the client left
                // (nobody to answer), or it was malformed or stalled past
                // the body timeout (400).
                Err(BodyError::Read(r)) => {
                    let kind = if r.kind() == io::ErrorKind::UnexpectedEof {
                        Kind::ClientGone
                    } else {
                        Kind::RequestBody
                    };
                    let e = ProxyError::new(kind, reused, true);
                    return self.fail(client, Some(i), info, e, outcome).await;
                }
                // The backend stopped taking the body, or broke.
                Err(BodyError::Write(w)) => {
                    let kind = if w.kind() == io::ErrorKind::TimedOut {
                        Kind::RequestBodyStalled
                    } else {
                        Kind::SendRequest
                    };
                    let e = ProxyError::new(kind, reused, true);
                    if self.retry(&mut retries, &e, info, i, &mut tried) {
                        at = now();
                        continue;
                    }
                    return self.fail(client, Some(i), info, e, outcome).await;
                }
            }
            // Read the response head, skipping interim answers. The wait
            // starts when the request is sent: on arrival of its head for a
            // bodiless request on a pooled connection, after a connect or a
            // body now.
            let sent_at = if reused && info.framing == Framing::None {
                at
            } else {
                now()
            };
            dl.set(sent_at + self.cfg.response_timeout);
            let got = dl
                .within(self.response_head(&mut conn.conn, info, rules, closing, out))
                .await;
            let (head_len, head) = match got {
                None => {
                    let e = ProxyError::new(Kind::ResponseTimeout, reused, true);
                    return self.fail(client, Some(i), info, e, outcome).await;
                }
                Some(Err(err)) => {
                    let kind = if err.kind() == io::ErrorKind::InvalidData {
                        Kind::BadResponse
                    } else {
                        Kind::NoResponse
                    };
                    let e = ProxyError::new(kind, reused, true);
                    if self.retry(&mut retries, &e, info, i, &mut tried) {
                        at = now();
                        continue;
                    }
                    return self.fail(client, Some(i), info, e, outcome).await;
                }
                Some(Ok(parsed)) => parsed,
            };
            let Some(ClientHead {
                info: rinfo,
                to_client,
                keep,
            }) = head
            else {
                let e = ProxyError::new(Kind::BadResponse, reused, true);
                return self.fail(client, Some(i), info, e, outcome).await;
            };
            self.upstreams.succeeded(i);
            conn.conn.rb.consume(head_len);
            self.metrics.response(rinfo.status);
            outcome.status = Some(rinfo.status);
            if info.upgrade && rinfo.status == 101 {
                drop(active);
                return self.tunnel(client, crb, conn.conn, out).await;
            }
            conn.requests += 1;
            // A small body already read goes out with the head, in one write.
            let mut framing = rinfo.framing;
            if let Framing::Length(n) = framing
                && n as usize <= conn.conn.rb.filled().len()
                && to_client == framing
            {
                out.extend_from_slice(&conn.conn.rb.filled()[..n as usize]);
                conn.conn.rb.consume(n as usize);
                framing = Framing::None;
            }
            if send(client, out, dl).await.is_err() {
                self.metrics
                    .failure(&ProxyError::new(Kind::ClientGone, reused, true));
                // Finish reading a small answer so the backend connection
                // can be kept rather than closed.
                if self.drain(&mut conn.conn, framing).await && rinfo.upstream_keep_alive {
                    self.pool.put(i, addr, conn, now());
                }
                return Exchange::Close;
            }
            let body = copy_body(
                &mut conn.conn.rb,
                &mut conn.conn.stream,
                client,
                framing,
                to_client,
                out,
                dl,
            )
            .await;
            drop(active);
            return match body {
                Ok(()) => {
                    if rinfo.upstream_keep_alive {
                        self.pool.put(i, addr, conn, now());
                    }
                    if keep {
                        Exchange::KeepGoing
                    } else {
                        Exchange::Close
                    }
                }
                // The head went out: closing is the only way left to tell
                // the client the answer is incomplete.
                Err(BodyError::Read(_)) => {
                    let e = ProxyError::new(Kind::ResponseBody, reused, true);
                    self.fail(client, Some(i), info, e, outcome).await
                }
                Err(BodyError::Write(_)) => {
                    let e = ProxyError::new(Kind::ClientGone, reused, true);
                    self.fail(client, Some(i), info, e, outcome).await
                }
            };
        }
    }

    /// Whether to send the request once more after `e` (see
    /// [`Retries`]; counted). A fresh connection that broke is the
    /// backend's failure: charged to its health, and the next attempt goes
    /// to another backend if there is one.
    fn retry(
        &self,
        retries: &mut Retries,
        e: &ProxyError,
        info: &RequestInfo,
        i: usize,
        tried: &mut Vec<usize>,
    ) -> bool {
        if !retries.again(e, info.repeatable) {
            return false;
        }
        Metrics::inc(&self.metrics.retries);
        if !e.reused {
            self.upstreams.failed(i, now());
            tried.push(i);
            if tried.len() >= self.upstreams.list.len() {
                tried.clear();
            }
        }
        true
    }

    /// A request that failed for good: counted, charged to backend
    /// `backend` if the backend failed, and answered with the error's
    /// status where a response can still be sent (no response head has
    /// gone out and the client is still there).
    async fn fail(
        &self,
        client: &mut TcpStream,
        backend: Option<usize>,
        info: &RequestInfo,
        e: ProxyError,
        outcome: &mut Outcome,
    ) -> Exchange {
        self.metrics.failure(&e);
        if let Some(i) = backend
            && e.counts_against_backend()
        {
            self.upstreams.failed(i, now());
        }
        let answerable = outcome.status.is_none()
            && !matches!(e.kind, Kind::ClientGone | Kind::ResponseBody | Kind::Tunnel);
        if !answerable {
            return Exchange::Close;
        }
        let status = e.status();
        outcome.status = Some(status);
        // The client connection stays open only if the client wants it and
        // no request body is left half-read on it.
        let close =
            !info.client_keep_alive || info.framing != Framing::None || e.kind == Kind::RequestBody;
        let sent = answer(
            client,
            &self.metrics,
            status,
            e.reason(),
            e.message(),
            close,
        )
        .await;
        if close || !sent {
            Exchange::Close
        } else {
            Exchange::KeepGoing
        }
    }

    /// Reads and drops the rest of a response body of known, small length.
    async fn drain(&self, conn: &mut UpConn, framing: Framing) -> bool {
        let Framing::Length(n) = framing else {
            return framing == Framing::None;
        };
        if n > DRAIN_LIMIT_BYTES {
            return false;
        }
        let mut left = n as usize;
        let done = tokio::time::timeout(DRAIN_LIMIT_TIME, async {
            while left > 0 {
                let have = conn.rb.filled().len().min(left);
                conn.rb.consume(have);
                left -= have;
                if left > 0 && conn.rb.fill(&mut conn.stream).await.ok()? == 0 {
                    return None;
                }
            }
            Some(())
        })
        .await;
        matches!(done, Ok(Some(())))
    }

    /// Reads until a complete final response head is buffered (interim 1xx
    /// skipped) and, from that one parse, writes the client's head into
    /// `out`. Returns the head's length, and `None` for a head whose
    /// lengths disagree. A malformed head is `InvalidData`.
    async fn response_head(
        &self,
        conn: &mut UpConn,
        req: &RequestInfo,
        rules: &ForwardingRules,
        closing: bool,
        out: &mut Vec<u8>,
    ) -> io::Result<(usize, Option<ClientHead>)> {
        loop {
            match parse_response(conn.rb.filled(), req, rules, closing, out) {
                ParsedResponse::Interim(n) => {
                    conn.rb.consume(n);
                    continue;
                }
                ParsedResponse::Final(n, head) => return Ok((n, head)),
                ParsedResponse::Malformed => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "malformed response head",
                    ));
                }
                ParsedResponse::Partial => {}
            }
            if conn.rb.fill(&mut conn.stream).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// After a 101: joins the two connections byte for byte until either
    /// ends; an error ending it is counted.
    async fn tunnel(
        &self,
        client: &mut TcpStream,
        crb: &mut ReadBuf,
        mut conn: UpConn,
        out: &[u8],
    ) -> Exchange {
        let joined = async {
            client.write_all(out).await?;
            client.write_all(conn.rb.filled()).await?;
            conn.stream.write_all(crb.filled()).await?;
            tokio::io::copy_bidirectional(client, &mut conn.stream).await
        }
        .await;
        if joined.is_err() {
            self.metrics
                .failure(&ProxyError::new(Kind::Tunnel, false, true));
        }
        Exchange::Close
    }
}
