//! The lean HTTP/1.1 engine: one task per client connection parses request
//! heads with `httparse` and drives its pooled backend connection itself —
//! no channel, no second task per request. It applies the same gateway
//! rules as the hyper engine (see [`crate::headers`]), and because it sees
//! the raw header lines it can refuse `Content-Length` together with
//! `Transfer-Encoding` outright.
//!
//! Bodies are streamed through fixed buffers: `Content-Length` bodies are
//! copied, chunked bodies are re-framed (chunk extensions and trailers are
//! not forwarded), and a chunked response to an HTTP/1.0 client is
//! de-chunked and closed.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Sleep, timeout};

use crate::config::ProxyConfig;
use crate::file::{Route, route};
use crate::headers::{Refusal, RequestFraming, check_fields, idempotent};
use crate::metrics::Metrics;
use crate::server::{UpstreamState, Upstreams};

/// Largest request or response head accepted.
const HEAD_LIMIT: usize = 64 * 1024;
/// Most headers one message may carry (`--max-headers` can only lower it).
const MAX_HEADERS: usize = 128;
/// Read buffer per connection side.
const BUF: usize = 16 * 1024;
/// How long an idle keep-alive client connection is kept.
const CLIENT_IDLE: Duration = Duration::from_secs(75);
/// The 502 message for a backend connection that broke mid-request.
const BROKE: &str = "bad gateway: the backend connection broke";

/// Bytes read from a socket and not yet used.
struct ReadBuf {
    data: Vec<u8>,
    pos: usize,
    len: usize,
}

impl ReadBuf {
    fn new() -> ReadBuf {
        ReadBuf {
            data: vec![0; BUF],
            pos: 0,
            len: 0,
        }
    }

    fn filled(&self) -> &[u8] {
        &self.data[self.pos..self.len]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos >= self.len {
            self.pos = 0;
            self.len = 0;
        }
    }

    /// Reads more; 0 means the peer closed. Grows up to `HEAD_LIMIT` when full.
    async fn fill(&mut self, s: &mut TcpStream) -> io::Result<usize> {
        if self.pos > 0 && self.len == self.data.len() {
            self.data.copy_within(self.pos..self.len, 0);
            self.len -= self.pos;
            self.pos = 0;
        }
        if self.len == self.data.len() {
            if self.data.len() >= HEAD_LIMIT {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
            }
            self.data.resize((self.data.len() * 2).min(HEAD_LIMIT), 0);
        }
        let n = s.read(&mut self.data[self.len..]).await?;
        self.len += n;
        Ok(n)
    }

    /// [`ReadBuf::fill`] for body bytes: a sender silent for the body
    /// timeout is cut off.
    async fn fill_body(&mut self, s: &mut TcpStream, dl: &mut Deadline) -> io::Result<usize> {
        dl.set(Instant::now() + dl.body);
        match dl.within(self.fill(s)).await {
            Some(r) => r,
            None => Err(io::Error::new(io::ErrorKind::TimedOut, "body stalled")),
        }
    }

    /// One CRLF-terminated line (without the CRLF), reading as needed.
    async fn line(&mut self, s: &mut TcpStream, dl: &mut Deadline) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.filled().windows(2).position(|w| w == b"\r\n") {
                let line = self.filled()[..i].to_vec();
                self.consume(i + 2);
                return Ok(line);
            }
            if self.filled().len() > 4096 {
                return Err(invalid("chunk line too long"));
            }
            if self.fill_body(s, dl).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

/// A client connection's one timer, shared by all its waits (idle, request
/// head, response head, body). Setting a later deadline is a plain store:
/// the armed sleep is never later than any deadline set after it was armed
/// (it is armed at most `step`, the shortest timeout in use, ahead), so it
/// never has to move on the request path. When it fires before the deadline
/// it is re-armed. A busy connection thus costs one timer event per `step`
/// instead of two timer-wheel insertions and removals per request.
struct Deadline {
    sleep: Pin<Box<Sleep>>,
    at: Instant,
    step: Duration,
    /// The body timeout of the exchange under way.
    body: Duration,
}

impl Deadline {
    fn new(step: Duration) -> Deadline {
        let now = Instant::now();
        Deadline {
            sleep: Box::pin(tokio::time::sleep_until((now + step).into())),
            at: now + step,
            step,
            body: step,
        }
    }

    /// The current wait ends at `at`.
    fn set(&mut self, at: Instant) {
        if at < self.sleep.deadline().into_std() {
            self.sleep.as_mut().reset(at.into());
        }
        self.at = at;
    }

    /// Runs `fut` until it finishes (`Some`) or the deadline passes (`None`).
    async fn within<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        loop {
            tokio::select! {
                biased;
                r = &mut fut => return Some(r),
                () = self.sleep.as_mut() => {
                    let now = Instant::now();
                    if now >= self.at {
                        return None;
                    }
                    self.sleep.as_mut().reset(self.at.min(now + self.step).into());
                }
            }
        }
    }
}

/// `write_all`, cut off when the receiver takes no byte for the body timeout
/// (like nginx's `send_timeout`): a client that stops reading cannot hold a
/// backend connection. A write the socket buffer takes at once, the common
/// case, arms nothing.
async fn send(s: &mut TcpStream, mut buf: &[u8], dl: &mut Deadline) -> io::Result<()> {
    while !buf.is_empty() {
        match s.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        dl.set(Instant::now() + dl.body);
        match dl.within(s.writable()).await {
            Some(r) => r?,
            None => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "receiver stalled"));
            }
        }
    }
    Ok(())
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// What the request head says, beyond the rewritten bytes.
struct RequestInfo {
    framing: Framing,
    client_keep_alive: bool,
    client_http10: bool,
    expect_continue: bool,
    head_method: bool,
    repeatable: bool,
    upgrade: bool,
}

#[inline]
fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn tokens(v: &[u8]) -> impl Iterator<Item = &str> {
    std::str::from_utf8(v)
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The header names the engine acts on, recognised once per header line
/// (by length, then one case-insensitive comparison) instead of comparing
/// every line against every list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    Connection,
    KeepAlive,
    ProxyConnection,
    Te,
    Trailer,
    TransferEncoding,
    Upgrade,
    ContentLength,
    Expect,
    Via,
    XForwardedFor,
    XForwardedProto,
    Other,
}

/// The names [`Name::of`] recognises.
const NAMES: [(&str, Name); 12] = [
    ("te", Name::Te),
    ("via", Name::Via),
    ("expect", Name::Expect),
    ("trailer", Name::Trailer),
    ("upgrade", Name::Upgrade),
    ("connection", Name::Connection),
    ("keep-alive", Name::KeepAlive),
    ("content-length", Name::ContentLength),
    ("x-forwarded-for", Name::XForwardedFor),
    ("proxy-connection", Name::ProxyConnection),
    ("transfer-encoding", Name::TransferEncoding),
    ("x-forwarded-proto", Name::XForwardedProto),
];

impl Name {
    /// `eq_ignore_ascii_case` compares lengths first, so most names are
    /// ruled out without looking at a byte.
    fn of(n: &str) -> Name {
        NAMES
            .iter()
            .find(|(known, _)| n.eq_ignore_ascii_case(known))
            .map_or(Name::Other, |&(_, name)| name)
    }

    /// One of [`crate::headers::HOP_BY_HOP`].
    fn hop_by_hop(self) -> bool {
        matches!(
            self,
            Name::Connection
                | Name::KeepAlive
                | Name::ProxyConnection
                | Name::Te
                | Name::Trailer
                | Name::TransferEncoding
                | Name::Upgrade
        )
    }
}

/// Each header line's [`Name`], on the stack.
fn classify(headers: &[httparse::Header<'_>]) -> [Name; MAX_HEADERS] {
    let mut kinds = [Name::Other; MAX_HEADERS];
    for (h, k) in headers.iter().zip(kinds.iter_mut()) {
        *k = Name::of(h.name);
    }
    kinds
}

/// Whether `name` is listed in one of the message's `Connection` lines (a
/// header so named must not be forwarded, RFC 9110 section 7.6.1).
fn listed_in_connection(headers: &[httparse::Header<'_>], kinds: &[Name], name: &str) -> bool {
    headers
        .iter()
        .zip(kinds)
        .filter(|(_, k)| **k == Name::Connection)
        .flat_map(|(h, _)| tokens(h.value))
        .any(|t| eq(t, name))
}

/// `Content-Length: N`, without allocating.
fn push_length(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    push_header(out, b"Content-Length", &digits[i..]);
}

/// `Via:` with the received entries and ours appended (`1.1 NAME`).
fn push_via<'h>(out: &mut Vec<u8>, received: impl Iterator<Item = &'h [u8]>, name: &str) {
    out.extend_from_slice(b"Via: ");
    for v in received {
        out.extend_from_slice(v);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(b"1.1 ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The request target as sent upstream: an absolute-form target
/// (`http://host/path`) loses its scheme and authority.
fn origin_form(target: &str) -> &str {
    let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    else {
        return target;
    };
    rest.find('/').map_or("/", |i| &rest[i..])
}

/// Checks a parsed request and writes the upstream head into `out`.
fn upstream_head(
    req: &httparse::Request<'_, '_>,
    peer: &str,
    cfg: &ProxyConfig,
    out: &mut Vec<u8>,
) -> Result<RequestInfo, Refusal> {
    let method = req.method.unwrap_or("GET");
    let path = origin_form(req.path.unwrap_or("/"));
    let http10 = req.version == Some(0);
    let checked = check_fields(http10, req.headers.iter().map(|h| (h.name, h.value)))?;
    let kinds = classify(req.headers);
    let (mut close, mut keep_alive, mut expect, mut upgrade_token) = (false, false, false, false);
    // Whether Connection lists a name other than the hop-by-hop ones.
    let (mut upgrade_header, mut named) = (false, false);
    for (h, kind) in req.headers.iter().zip(kinds) {
        match kind {
            Name::Connection => {
                for t in tokens(h.value) {
                    let (k, u) = (eq(t, "keep-alive"), eq(t, "upgrade"));
                    close |= eq(t, "close");
                    keep_alive |= k;
                    upgrade_token |= u;
                    named |= !(k || u);
                }
            }
            Name::Expect => {
                expect |= std::str::from_utf8(h.value).is_ok_and(|v| eq(v.trim(), "100-continue"));
            }
            Name::Upgrade => upgrade_header = true,
            _ => {}
        }
    }
    let upgrade = upgrade_token && upgrade_header && !http10;
    let framing = match checked {
        RequestFraming { chunked: true, .. } => Framing::Chunked,
        RequestFraming {
            content_length: Some(n),
            ..
        } if n > 0 => Framing::Length(n),
        _ => Framing::None,
    };
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let rules = &cfg.forwarding;
    for (h, kind) in req.headers.iter().zip(kinds) {
        let n = h.name;
        let dropped = kind.hop_by_hop() || (named && listed_in_connection(req.headers, &kinds, n));
        if (dropped && !(upgrade && kind == Name::Upgrade))
            || kind == Name::ContentLength
            || kind == Name::Expect
            || kind == Name::XForwardedFor // rewritten below, with the client appended
            || rules.remove.iter().any(|x| eq(n, x.as_str()))
            || rules.set.iter().any(|(x, _)| eq(n, x.as_str()))
            || (rules.forwarded_proto.is_some() && kind == Name::XForwardedProto)
            || (rules.via.is_some() && kind == Name::Via)
        {
            continue;
        }
        push_header(out, n.as_bytes(), h.value);
    }
    if !checked.has_host {
        push_header(out, b"Host", cfg.upstreams[0].to_string().as_bytes());
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    for (h, _) in req
        .headers
        .iter()
        .zip(kinds)
        .filter(|(_, k)| *k == Name::XForwardedFor)
    {
        out.extend_from_slice(h.value);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(peer.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(p) = &rules.forwarded_proto {
        push_header(out, b"X-Forwarded-Proto", p.as_bytes());
    }
    if let Some(v) = &rules.via {
        push_via(out, received(req.headers, &kinds, Name::Via), v);
    }
    for (n, v) in &rules.set {
        push_header(out, n.as_str().as_bytes(), v.as_bytes());
    }
    match framing {
        Framing::Length(n) => push_length(out, n),
        Framing::Chunked => push_header(out, b"Transfer-Encoding", b"chunked"),
        _ => {}
    }
    if upgrade {
        push_header(out, b"Connection", b"upgrade");
    }
    out.extend_from_slice(b"\r\n");
    let client_keep_alive = if http10 { keep_alive } else { !close };
    Ok(RequestInfo {
        framing,
        client_keep_alive,
        client_http10: http10,
        expect_continue: expect && framing != Framing::None,
        head_method: method == "HEAD",
        repeatable: framing == Framing::None && idempotent(method),
        upgrade,
    })
}

/// The values of the lines of one kind.
fn received<'h>(
    headers: &'h [httparse::Header<'h>],
    kinds: &'h [Name],
    kind: Name,
) -> impl Iterator<Item = &'h [u8]> {
    headers
        .iter()
        .zip(kinds)
        .filter(move |(_, k)| **k == kind)
        .map(|(h, _)| h.value)
}

/// What the response head says.
struct ResponseInfo {
    status: u16,
    framing: Framing,
    upstream_keep_alive: bool,
}

/// Writes the client's response head into `out`; returns the body framing
/// toward the client and whether the client connection stays open.
fn client_head(
    resp: &httparse::Response<'_, '_>,
    req: &RequestInfo,
    cfg: &ProxyConfig,
    closing: bool,
    out: &mut Vec<u8>,
) -> Option<(ResponseInfo, Framing, bool)> {
    let status = resp.code.unwrap_or(502);
    let http10_upstream = resp.version == Some(0);
    let kinds = classify(resp.headers);
    let (mut cl, mut te, mut close, mut keep_alive) = (None::<u64>, false, false, false);
    let mut named = false;
    for (h, kind) in resp.headers.iter().zip(kinds) {
        if kind == Name::ContentLength {
            for part in tokens(h.value) {
                // A length that is not a number, or two that differ, would
                // let the client and this proxy disagree on where the
                // answer ends.
                if !part.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let v: u64 = part.parse().ok()?;
                if cl.is_some_and(|c| c != v) {
                    return None;
                }
                cl = Some(v);
            }
        } else if kind == Name::TransferEncoding {
            te = tokens(h.value).last().is_some_and(|t| eq(t, "chunked"));
        } else if kind == Name::Connection {
            for t in tokens(h.value) {
                let (k, u) = (eq(t, "keep-alive"), eq(t, "upgrade"));
                close |= eq(t, "close");
                keep_alive |= k;
                named |= !(k || u);
            }
        }
    }
    let framing =
        if req.head_method || status == 204 || status == 304 || (100..200).contains(&status) {
            Framing::None
        } else if te {
            Framing::Chunked
        } else if let Some(n) = cl {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        };
    let upstream_keep_alive =
        framing != Framing::UntilClose && if http10_upstream { keep_alive } else { !close };
    // Toward the client: chunked only to HTTP/1.1; otherwise close-delimited.
    let to_client = match framing {
        Framing::Chunked if req.client_http10 => Framing::UntilClose,
        f => f,
    };
    let switching = status == 101 && req.upgrade;
    let keep = req.client_keep_alive && to_client != Framing::UntilClose && !closing;
    out.clear();
    out.extend_from_slice(if req.client_http10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    let digits = [
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ];
    out.extend_from_slice(&digits);
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let rules = &cfg.forwarding;
    for (h, kind) in resp.headers.iter().zip(kinds) {
        let n = h.name;
        let dropped = kind.hop_by_hop() || (named && listed_in_connection(resp.headers, &kinds, n));
        if (dropped && !(switching && kind == Name::Upgrade))
            || (rules.via.is_some() && kind == Name::Via)
            || kind == Name::ContentLength
        // Content-Length is written once below, from the value checked above.
        {
            continue;
        }
        push_header(out, n.as_bytes(), h.value);
    }
    if let Some(v) = &rules.via {
        push_via(out, received(resp.headers, &kinds, Name::Via), v);
    }
    match (to_client, cl) {
        (Framing::Length(n), _) => push_length(out, n),
        // HEAD (and 304) answers keep the length they describe.
        (Framing::None, Some(n)) if !te && (req.head_method || status == 304) => {
            push_length(out, n)
        }
        (Framing::Chunked, _) => push_header(out, b"Transfer-Encoding", b"chunked"),
        _ => {}
    }
    if switching {
        push_header(out, b"Connection", b"upgrade");
    } else if !keep {
        push_header(out, b"Connection", b"close");
    } else if req.client_http10 {
        push_header(out, b"Connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
    Some((
        ResponseInfo {
            status,
            framing,
            upstream_keep_alive,
        },
        to_client,
        keep,
    ))
}

/// What one parse of the buffered response bytes came to.
enum ParsedResponse {
    /// An interim (1xx, not 101) head of this many bytes, not forwarded.
    Interim(usize),
    /// A final head of this many bytes, and what [`client_head`] made of it.
    Final(usize, Option<(ResponseInfo, Framing, bool)>),
    /// More bytes needed.
    Partial,
}

/// Parses the response head in `buf` (synchronously, so the header array
/// stays on the stack; see [`Router::parse_request`]).
fn parse_response(
    buf: &[u8],
    req: &RequestInfo,
    cfg: &ProxyConfig,
    closing: bool,
    out: &mut Vec<u8>,
) -> io::Result<ParsedResponse> {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    );
    match parsed {
        // Interim answers (100 Continue, 103 Early Hints) are not
        // forwarded; 101 is the switch itself.
        Ok(httparse::Status::Complete(n))
            if resp
                .code
                .is_some_and(|c| (100..200).contains(&c) && c != 101) =>
        {
            Ok(ParsedResponse::Interim(n))
        }
        Ok(httparse::Status::Complete(n)) => Ok(ParsedResponse::Final(
            n,
            client_head(&resp, req, cfg, closing, out),
        )),
        Ok(httparse::Status::Partial) => Ok(ParsedResponse::Partial),
        Err(_) => Err(invalid("malformed response head")),
    }
}

/// Copies exactly `n` bytes from `src` (buffered bytes first) to `dst`.
async fn copy_exact(
    rb: &mut ReadBuf,
    src: &mut TcpStream,
    dst: &mut TcpStream,
    n: u64,
    dl: &mut Deadline,
) -> io::Result<()> {
    let mut left = n;
    while left > 0 {
        if rb.filled().is_empty() && rb.fill_body(src, dl).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let take = rb
            .filled()
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        send(dst, &rb.filled()[..take], dl).await?;
        rb.consume(take);
        left -= take as u64;
    }
    Ok(())
}

/// Copies a body from `src` (buffered bytes first) to `dst`, turning the
/// `from` framing into the `to` framing.
async fn copy_body(
    rb: &mut ReadBuf,
    src: &mut TcpStream,
    dst: &mut TcpStream,
    from: Framing,
    to: Framing,
    out: &mut Vec<u8>,
    dl: &mut Deadline,
) -> io::Result<()> {
    match from {
        Framing::None => Ok(()),
        Framing::Length(n) => copy_exact(rb, src, dst, n, dl).await,
        Framing::UntilClose => loop {
            if rb.filled().is_empty() && rb.fill_body(src, dl).await? == 0 {
                return Ok(());
            }
            send(dst, rb.filled(), dl).await?;
            let n = rb.filled().len();
            rb.consume(n);
        },
        Framing::Chunked => {
            loop {
                let line = rb.line(src, dl).await?;
                let size_text = std::str::from_utf8(&line)
                    .map_err(|_| invalid("chunk size"))?
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim();
                // Hex digits only: no sign, no spaces inside (smuggling vectors).
                if size_text.is_empty()
                    || size_text.len() > 15
                    || !size_text.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    return Err(invalid("chunk size"));
                }
                let size = u64::from_str_radix(size_text, 16).map_err(|_| invalid("chunk size"))?;
                if size == 0 {
                    // Trailers are not forwarded.
                    while !rb.line(src, dl).await?.is_empty() {}
                    if to == Framing::Chunked {
                        send(dst, b"0\r\n\r\n", dl).await?;
                    }
                    return Ok(());
                }
                if to == Framing::Chunked {
                    out.clear();
                    out.extend_from_slice(format!("{size:x}\r\n").as_bytes());
                    send(dst, out, dl).await?;
                }
                copy_exact(rb, src, dst, size, dl).await?;
                if !rb.line(src, dl).await?.is_empty() {
                    return Err(invalid("chunk data longer than its size"));
                }
                if to == Framing::Chunked {
                    send(dst, b"\r\n", dl).await?;
                }
            }
        }
    }
}

/// A backend connection between requests.
pub struct UpConn {
    stream: TcpStream,
    rb: ReadBuf,
    requests: u64,
    born: Instant,
}

/// Whether an idle backend connection still looks usable: not readable
/// (nothing, not even a FIN, arrived since it went idle). No system call
/// unless the runtime saw it become readable.
fn looks_alive(s: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match s.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut b = [0u8; 1];
            matches!(s.try_read(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}

/// A backend connection parked in the [`SharedPool`]: out of every worker's
/// event loop, so that any worker can take it.
struct Parked {
    stream: std::net::TcpStream,
    rb: ReadBuf,
    requests: u64,
    born: Instant,
    since: Instant,
}

/// The pool all workers share (`--shared-pool`): idle backend connections by
/// backend address. Each reuse costs a lock, a `recv(MSG_PEEK)` to see that
/// the backend did not close the connection meanwhile, and moving the socket
/// out of one worker's epoll set and into another's.
#[derive(Default)]
pub struct SharedPool {
    idle: std::sync::Mutex<std::collections::HashMap<SocketAddr, Vec<Parked>>>,
}

impl SharedPool {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<SocketAddr, Vec<Parked>>> {
        // A worker that panicked holding the lock left the map consistent
        // (every change is one push, pop or retain).
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Idle backend connections per backend (by its index in the group's
/// upstream list), for one worker; or, with `--shared-pool`, the process's
/// [`SharedPool`].
pub struct LeanPool {
    idle: RefCell<Vec<Vec<(UpConn, Instant)>>>,
    shared: Option<Arc<SharedPool>>,
    cfg: Arc<ProxyConfig>,
    metrics: Arc<Metrics>,
}

impl LeanPool {
    /// An empty pool: this worker's own, or a view of `shared`.
    pub fn new(
        cfg: Arc<ProxyConfig>,
        metrics: Arc<Metrics>,
        shared: Option<Arc<SharedPool>>,
    ) -> LeanPool {
        LeanPool {
            idle: RefCell::new((0..cfg.upstreams.len()).map(|_| Vec::new()).collect()),
            shared,
            cfg,
            metrics,
        }
    }

    fn fresh(&self, born: Instant, since: Instant, now: Instant) -> bool {
        now.duration_since(since) < self.cfg.pool.idle_timeout
            && self
                .cfg
                .pool
                .max_lifetime
                .is_none_or(|l| now.duration_since(born) < l)
    }

    fn usable(&self, c: &UpConn, since: Instant, now: Instant) -> bool {
        self.fresh(c.born, since, now) && c.rb.filled().is_empty()
    }

    fn idle_changed(&self, by: i64) {
        self.metrics
            .pool_idle
            .fetch_add(by, std::sync::atomic::Ordering::Relaxed);
    }

    fn take(&self, upstream: usize, now: Instant) -> Option<UpConn> {
        if let Some(shared) = &self.shared {
            return self.take_shared(shared, *self.cfg.upstreams.get(upstream)?, now);
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(upstream)?;
        while let Some((c, since)) = list.pop() {
            self.metrics
                .pool_idle
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            if self.usable(&c, since, now) && looks_alive(&c.stream) {
                return Some(c);
            }
        }
        None
    }

    fn take_shared(&self, shared: &SharedPool, addr: SocketAddr, now: Instant) -> Option<UpConn> {
        loop {
            let p = shared.lock().get_mut(&addr)?.pop()?;
            self.idle_changed(-1);
            // Nothing, not even a FIN, may have arrived while it was parked.
            let quiet = matches!(p.stream.peek(&mut [0u8; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock);
            if !quiet || !self.fresh(p.born, p.since, now) {
                continue;
            }
            if let Ok(stream) = TcpStream::from_std(p.stream) {
                return Some(UpConn {
                    stream,
                    rb: p.rb,
                    requests: p.requests,
                    born: p.born,
                });
            }
        }
    }

    fn put(&self, upstream: usize, c: UpConn, now: Instant) {
        let p = &self.cfg.pool;
        if p.max_requests_per_connection
            .is_some_and(|m| c.requests >= m)
            || p.max_idle_per_upstream == 0
        {
            return;
        }
        if let Some(shared) = &self.shared {
            let Some(&addr) = self.cfg.upstreams.get(upstream) else {
                return;
            };
            if !c.rb.filled().is_empty() {
                return;
            }
            let Ok(stream) = c.stream.into_std() else {
                return;
            };
            let mut idle = shared.lock();
            let list = idle.entry(addr).or_default();
            if list.len() >= p.max_idle_per_upstream {
                list.remove(0);
                self.idle_changed(-1);
            }
            list.push(Parked {
                stream,
                rb: c.rb,
                requests: c.requests,
                born: c.born,
                since: now,
            });
            self.idle_changed(1);
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let Some(list) = idle.get_mut(upstream) else {
            return;
        };
        if list.len() >= p.max_idle_per_upstream {
            list.remove(0);
            self.metrics
                .pool_idle
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        list.push((c, now));
        self.metrics
            .pool_idle
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Closes connections idle too long or closed by their backend (in
    /// the shared pool: idle too long; a closed one is found when taken).
    pub fn sweep(&self, now: Instant) {
        if let Some(shared) = &self.shared {
            let mut idle = shared.lock();
            for addr in &self.cfg.upstreams {
                if let Some(list) = idle.get_mut(addr) {
                    let before = list.len();
                    list.retain(|p| self.fresh(p.born, p.since, now));
                    self.idle_changed(list.len() as i64 - before as i64);
                }
            }
            return;
        }
        let mut idle = self.idle.borrow_mut();
        for list in idle.iter_mut() {
            let before = list.len();
            list.retain(|(c, since)| self.usable(c, *since, now) && looks_alive(&c.stream));
            self.metrics.pool_idle.fetch_sub(
                (before - list.len()) as i64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }
}

/// One worker's shared state for the lean engine.
pub struct Lean {
    /// Configuration.
    pub cfg: Arc<ProxyConfig>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Backend connections.
    pub pool: Rc<LeanPool>,
    /// Backends and their health.
    pub upstreams: Rc<Upstreams>,
}

async fn write_error(
    client: &mut TcpStream,
    status: u16,
    reason: &str,
    msg: &str,
    close: bool,
) -> io::Result<()> {
    let body = format!("{msg}\n");
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{}\r\n",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    );
    client.write_all(format!("{head}{body}").as_bytes()).await
}

enum Exchange {
    /// The client connection may carry another request.
    KeepGoing,
    /// Close the client connection.
    Close,
}

/// One line per request, buffered per worker and written to stdout by the
/// worker every 200 ms (or at once past 64 KiB), so logging costs no system
/// call per request.
#[derive(Default)]
pub struct AccessLog {
    buf: std::cell::RefCell<Vec<u8>>,
}

impl AccessLog {
    fn line(&self, args: std::fmt::Arguments<'_>) {
        use std::io::Write as _;
        let mut buf = self.buf.borrow_mut();
        let _ = buf.write_fmt(args);
        buf.push(b'\n');
        let full = buf.len() > 64 * 1024;
        drop(buf);
        if full {
            self.flush();
        }
    }

    /// Writes what is buffered.
    pub fn flush(&self) {
        use std::io::Write as _;
        let mut buf = self.buf.borrow_mut();
        if !buf.is_empty() {
            // A closed stdout must not stop the proxy.
            let _ = std::io::stdout().lock().write_all(&buf);
            buf.clear();
        }
    }
}

/// One request to forward: its rewritten head, what it says, and whether
/// the proxy is shutting down.
struct Ask<'a> {
    head: &'a [u8],
    info: &'a RequestInfo,
    closing: bool,
    /// When its head arrived.
    now: Instant,
}

/// What happened to one request, for the access log.
#[derive(Default)]
struct Outcome {
    status: u16,
    upstream: Option<SocketAddr>,
}

/// One listener's routes to upstream groups, and the loop that serves its
/// client connections.
pub struct Router {
    /// The groups, each with its own backends, pool and rules.
    pub groups: Vec<Rc<Lean>>,
    /// The listener's routes (indices into `groups`).
    pub routes: Vec<Route>,
    /// Time a client has to send a whole request head.
    pub header_timeout: Duration,
    /// Most request headers accepted.
    pub max_headers: usize,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Where request lines go, if logging.
    pub log: Option<Rc<AccessLog>>,
}

/// What one parse of the buffered request bytes came to.
enum Parsed {
    /// A whole head of this many bytes; if it passed the checks, what it
    /// says, its route (`None`: no route), and its access-log line.
    Head(usize, Result<Checked, Refusal>),
    /// More bytes needed.
    Partial,
    /// More headers than allowed.
    TooManyHeaders,
    /// Not HTTP/1.x.
    Malformed,
}

/// A request that passed the checks: what it says, its route, its log line.
type Checked = (RequestInfo, Option<usize>, Option<(String, Instant)>);

impl Router {
    /// Parses the request head in `buf` and, if whole and acceptable, writes
    /// its upstream head into `out`. Not async on purpose: the header array
    /// lives on the stack for this call only, not in the connection's future
    /// (where it would be copied with it).
    fn parse_request(&self, buf: &[u8], peer_ip: &str, out: &mut Vec<u8>) -> Parsed {
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let limit = self.max_headers.min(MAX_HEADERS);
        let mut req = httparse::Request::new(&mut []);
        let n = match req.parse_with_uninit_headers(buf, &mut headers[..limit]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(httparse::Error::TooManyHeaders) => return Parsed::TooManyHeaders,
            Err(_) => return Parsed::Malformed,
        };
        Metrics::inc(&self.metrics.requests);
        let host = req
            .headers
            .iter()
            .find(|h| eq(h.name, "host"))
            .and_then(|h| std::str::from_utf8(h.value).ok());
        let group = route(&self.routes, host, origin_form(req.path.unwrap_or("/")));
        // Checked (and rewritten) with the group's rules; a request with no
        // route is still checked first.
        let cfg = &self.groups[group.unwrap_or(0)].cfg;
        let info = upstream_head(&req, peer_ip, cfg, out);
        let logged = self.log.as_ref().map(|_| {
            let (m, t) = (req.method.unwrap_or("-"), req.path.unwrap_or("-"));
            (
                format!("{m} {t} HTTP/1.{}", req.version.unwrap_or(1)),
                Instant::now(),
            )
        });
        Parsed::Head(n, info.map(|i| (i, group, logged)))
    }

    fn log_line(&self, peer: SocketAddr, logged: Option<(String, Instant)>, o: &Outcome) {
        let (Some(log), Some((request, start))) = (&self.log, logged) else {
            return;
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let status = if o.status == 0 {
            "-".to_string()
        } else {
            o.status.to_string()
        };
        let upstream = o.upstream.map_or("-".to_string(), |u| u.to_string());
        log.line(format_args!(
            "{now_ms} {} \"{request}\" {status} {upstream} {:.3}",
            peer.ip(),
            start.elapsed().as_secs_f64() * 1000.0
        ));
    }

    /// 400 and close: the framing of this connection can no longer be trusted.
    async fn refuse(&self, client: &mut TcpStream, why: &str) {
        Metrics::inc(&self.metrics.refused);
        self.metrics.response(400);
        let _ = write_error(
            client,
            400,
            "Bad Request",
            &format!("bad request: {why}"),
            true,
        )
        .await;
    }

    /// Serves one client connection until it closes.
    pub async fn serve(
        self: Rc<Self>,
        mut client: TcpStream,
        peer: SocketAddr,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut crb = ReadBuf::new();
        let peer_ip = peer.ip().to_string();
        let mut head_out = Vec::with_capacity(1024);
        let mut resp_out = Vec::with_capacity(1024);
        let step = self
            .groups
            .iter()
            .flat_map(|g| [g.cfg.response_header_timeout, g.cfg.body_timeout])
            .chain([self.header_timeout, CLIENT_IDLE])
            .min()
            .unwrap_or(CLIENT_IDLE);
        let mut dl = Deadline::new(step);
        // Made once per connection, not once per request.
        let mut stop_rx = stop.clone();
        let mut stopped = std::pin::pin!(async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        });
        let mut now = Instant::now();
        loop {
            // Wait for a request: the first byte within the idle time, the
            // whole head within the header timeout (slowloris).
            if crb.filled().is_empty() {
                dl.set(now + CLIENT_IDLE);
                let first = tokio::select! {
                    biased;
                    r = dl.within(crb.fill(&mut client)) => r,
                    () = &mut stopped => return,
                };
                match first {
                    Some(Ok(n)) if n > 0 => {}
                    _ => return,
                }
                now = Instant::now();
            }
            dl.set(now + self.header_timeout);
            let parsed = loop {
                match self.parse_request(crb.filled(), &peer_ip, &mut head_out) {
                    Parsed::Head(n, checked) => break Some((n, checked)),
                    Parsed::Partial => {}
                    Parsed::Malformed => break None,
                    Parsed::TooManyHeaders => {
                        Metrics::inc(&self.metrics.requests);
                        self.metrics.response(431);
                        let msg = "too many request headers";
                        let _ = write_error(
                            &mut client,
                            431,
                            "Request Header Fields Too Large",
                            msg,
                            true,
                        )
                        .await;
                        return;
                    }
                }
                match dl.within(crb.fill(&mut client)).await {
                    Some(Ok(n)) if n > 0 => {}
                    Some(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
                        let _ = write_error(
                            &mut client,
                            431,
                            "Request Header Fields Too Large",
                            "request head too large",
                            true,
                        )
                        .await;
                        self.metrics.response(431);
                        return;
                    }
                    _ => return, // closed, or too slow
                }
            };
            let Some((n, info)) = parsed else {
                Metrics::inc(&self.metrics.requests);
                self.refuse(&mut client, "malformed request head").await;
                return;
            };
            crb.consume(n);
            let (info, group, logged) = match info {
                Ok(i) => i,
                Err(r) => {
                    self.refuse(&mut client, &r.to_string()).await;
                    return;
                }
            };
            let closing = *stop.borrow();
            let Some(group) = group else {
                self.metrics.response(404);
                let close = !info.client_keep_alive || info.framing != Framing::None || closing;
                let msg = "not found: no route for this host and path";
                let _ = write_error(&mut client, 404, "Not Found", msg, close).await;
                self.log_line(
                    peer,
                    logged,
                    &Outcome {
                        status: 404,
                        upstream: None,
                    },
                );
                if close {
                    return;
                }
                continue;
            };
            let mut outcome = Outcome::default();
            let done = self.groups[group]
                .exchange(
                    &mut client,
                    &mut crb,
                    Ask {
                        head: &head_out,
                        info: &info,
                        closing,
                        now,
                    },
                    &mut resp_out,
                    &mut outcome,
                    &mut dl,
                )
                .await;
            now = Instant::now();
            self.log_line(peer, logged, &outcome);
            match done {
                Exchange::KeepGoing if !closing => {}
                _ => {
                    let _ = client.shutdown().await;
                    return;
                }
            }
        }
    }
}

impl Lean {
    /// A new backend connection: for the pool, or for an `Upgrade` (which
    /// closes normally, see [`crate::server::dial`]).
    async fn connect(&self, addr: SocketAddr, pooled: bool) -> io::Result<UpConn> {
        let stream = crate::server::dial(addr, self.cfg.connect_timeout, pooled).await?;
        Metrics::inc(&self.metrics.upstream_connections_opened);
        Ok(UpConn {
            stream,
            rb: ReadBuf::new(),
            requests: 0,
            born: Instant::now(),
        })
    }

    /// Forwards one request and its response.
    async fn exchange(
        self: &Rc<Self>,
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
            closing,
            mut now,
        } = ask;
        dl.body = self.cfg.body_timeout;
        let deadline = now + self.cfg.connect_timeout;
        let mut tried: Vec<usize> = Vec::new();
        let mut backoff = Duration::from_millis(10);
        let mut retried = false;
        let mut continued = false;
        loop {
            let i = self.upstreams.pick(&tried, now);
            let up = self.upstreams.list[i].clone();
            let active = up.begin();
            let addr = up.addr;
            outcome.upstream = Some(addr);
            let pooled = if retried || info.upgrade {
                None
            } else {
                self.pool.take(i, now)
            };
            let reused = pooled.is_some();
            let mut conn = match pooled {
                Some(c) => c,
                None => match self.connect(addr, !info.upgrade).await {
                    Ok(c) => c,
                    Err(e) => {
                        Metrics::inc(&self.metrics.connect_errors);
                        up.failed(Instant::now(), &self.cfg);
                        tried.push(i);
                        if tried.len() >= self.upstreams.list.len() {
                            if Instant::now() + backoff >= deadline {
                                let msg =
                                    format!("bad gateway: cannot connect to the backend: {e}");
                                return self
                                    .answer_error(client, info, 502, "Bad Gateway", &msg, outcome)
                                    .await;
                            }
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_millis(200));
                            tried.clear();
                        }
                        now = Instant::now();
                        continue;
                    }
                },
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
                    return Exchange::Close;
                }
            }
            // Send the head (and the body, if any). If the head cannot be
            // written, the backend never got a whole request and no body
            // byte was taken from the client: any request may go again.
            if send(&mut conn.stream, head, dl).await.is_err() {
                if self.retry_once(&mut retried, true) {
                    now = Instant::now();
                    continue;
                }
                return self.fail(client, &up, info, BROKE, outcome).await;
            }
            let sent = copy_body(
                crb,
                client,
                &mut conn.stream,
                info.framing,
                info.framing,
                out,
                dl,
            )
            .await;
            if let Err(e) = sent {
                // A client body that failed to arrive (ended early, malformed,
                // or stalled past the body timeout) ends the exchange.
                if matches!(
                    e.kind(),
                    io::ErrorKind::InvalidData
                        | io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::TimedOut
                ) {
                    return Exchange::Close;
                }
                if self.retry_once(&mut retried, info.repeatable) {
                    now = Instant::now();
                    continue;
                }
                return self.fail(client, &up, info, BROKE, outcome).await;
            }
            // Read the response head, skipping interim answers. The wait
            // starts when the request is sent: on arrival of its head for a
            // bodiless request on a pooled connection, after a connect or a
            // body now.
            let sent_at = if reused && info.framing == Framing::None {
                now
            } else {
                Instant::now()
            };
            dl.set(sent_at + self.cfg.response_header_timeout);
            let got = dl
                .within(self.response_head(&mut conn, info, closing, out))
                .await;
            let (head_len, head) = match got {
                None => {
                    Metrics::inc(&self.metrics.upstream_timeouts);
                    up.failed(Instant::now(), &self.cfg);
                    let msg = "gateway timeout: the backend did not answer in time";
                    return self
                        .answer_error(client, info, 504, "Gateway Timeout", msg, outcome)
                        .await;
                }
                Some(Err(e)) => {
                    let died = e.kind() != io::ErrorKind::InvalidData;
                    // The backend closed the connection under us (a reused
                    // one timing out, or a restart): safe to repeat.
                    if self.retry_once(&mut retried, died && info.repeatable) {
                        now = Instant::now();
                        continue;
                    }
                    Metrics::inc(&self.metrics.upstream_errors);
                    return self
                        .fail(
                            client,
                            &up,
                            info,
                            "bad gateway: the backend sent no valid response",
                            outcome,
                        )
                        .await;
                }
                Some(Ok(parsed)) => parsed,
            };
            up.succeeded();
            let Some((rinfo, to_client, keep)) = head else {
                Metrics::inc(&self.metrics.upstream_errors);
                return self
                    .fail(
                        client,
                        &up,
                        info,
                        "bad gateway: conflicting Content-Length from the backend",
                        outcome,
                    )
                    .await;
            };
            conn.rb.consume(head_len);
            self.metrics.response(rinfo.status);
            outcome.status = rinfo.status;
            if info.upgrade && rinfo.status == 101 {
                return self.splice(client, crb, conn, out).await;
            }
            conn.requests += 1;
            // A small body already read goes out with the head, in one write.
            let mut framing = rinfo.framing;
            if let Framing::Length(n) = framing
                && n as usize <= conn.rb.filled().len()
                && to_client == framing
            {
                out.extend_from_slice(&conn.rb.filled()[..n as usize]);
                conn.rb.consume(n as usize);
                framing = Framing::None;
            }
            if send(client, out, dl).await.is_err() {
                // The client left: finish reading a small answer so the
                // backend connection can be kept rather than closed.
                if self.drain(&mut conn, framing).await && rinfo.upstream_keep_alive {
                    self.pool.put(i, conn, Instant::now());
                }
                return Exchange::Close;
            }
            let body = copy_body(
                &mut conn.rb,
                &mut conn.stream,
                client,
                framing,
                to_client,
                out,
                dl,
            )
            .await;
            drop(active);
            match body {
                Ok(()) => {
                    if rinfo.upstream_keep_alive && !info.upgrade {
                        self.pool.put(i, conn, Instant::now());
                    }
                    return if keep {
                        Exchange::KeepGoing
                    } else {
                        Exchange::Close
                    };
                }
                Err(_) => return Exchange::Close,
            }
        }
    }

    /// Reads and drops the rest of a response body of known, small length.
    async fn drain(&self, conn: &mut UpConn, framing: Framing) -> bool {
        let Framing::Length(n) = framing else {
            return framing == Framing::None;
        };
        if n > 256 * 1024 {
            return false;
        }
        let mut left = n as usize;
        let done = timeout(Duration::from_secs(1), async {
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
    /// lengths disagree (see [`client_head`]).
    async fn response_head(
        &self,
        conn: &mut UpConn,
        req: &RequestInfo,
        closing: bool,
        out: &mut Vec<u8>,
    ) -> io::Result<(usize, Option<(ResponseInfo, Framing, bool)>)> {
        loop {
            match parse_response(conn.rb.filled(), req, &self.cfg, closing, out)? {
                ParsedResponse::Interim(n) => {
                    conn.rb.consume(n);
                    continue;
                }
                ParsedResponse::Final(n, head) => return Ok((n, head)),
                ParsedResponse::Partial => {}
            }
            if conn.rb.fill(&mut conn.stream).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Whether to send the request once more, after a broken backend
    /// connection: only if `allowed` and not done already (counted).
    fn retry_once(&self, retried: &mut bool, allowed: bool) -> bool {
        if !allowed || *retried {
            return false;
        }
        Metrics::inc(&self.metrics.retries);
        *retried = true;
        true
    }

    /// Answers 502 for a backend that failed.
    async fn fail(
        &self,
        client: &mut TcpStream,
        up: &UpstreamState,
        info: &RequestInfo,
        msg: &str,
        outcome: &mut Outcome,
    ) -> Exchange {
        up.failed(Instant::now(), &self.cfg);
        self.answer_error(client, info, 502, "Bad Gateway", msg, outcome)
            .await
    }

    /// An answer made here. The client connection stays open only if the
    /// client wants it and no request body is left half-read on it.
    async fn answer_error(
        &self,
        client: &mut TcpStream,
        info: &RequestInfo,
        status: u16,
        reason: &str,
        msg: &str,
        outcome: &mut Outcome,
    ) -> Exchange {
        outcome.status = status;
        self.metrics.response(status);
        let close = !info.client_keep_alive || info.framing != Framing::None;
        let _ = write_error(client, status, reason, msg, close).await;
        if close {
            Exchange::Close
        } else {
            Exchange::KeepGoing
        }
    }

    /// After a 101: joins the two connections byte for byte.
    async fn splice(
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
        let _ = joined;
        Exchange::Close
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_recognised_in_any_case_and_hop_by_hop_matches_the_list() {
        for n in crate::headers::HOP_BY_HOP {
            assert!(Name::of(n).hop_by_hop(), "{n}");
            assert!(Name::of(&n.to_ascii_uppercase()).hop_by_hop(), "{n}");
        }
        for (n, k) in [
            ("Content-Length", Name::ContentLength),
            ("X-FORWARDED-FOR", Name::XForwardedFor),
            ("x-forwarded-proto", Name::XForwardedProto),
            ("Via", Name::Via),
            ("Expect", Name::Expect),
            ("Content-Lengths", Name::Other),
            ("Connectio", Name::Other),
            ("", Name::Other),
        ] {
            assert_eq!(Name::of(n), k, "{n}");
            assert!(!k.hop_by_hop(), "{n}");
        }
    }

    #[test]
    fn lengths_are_written_in_decimal() {
        for n in [0u64, 7, 10, 1234567890, u64::MAX] {
            let mut out = Vec::new();
            push_length(&mut out, n);
            assert_eq!(out, format!("Content-Length: {n}\r\n").into_bytes());
        }
    }

    #[tokio::test]
    async fn the_deadline_fires_at_the_latest_deadline_set_not_before() {
        let mut dl = Deadline::new(Duration::from_millis(50));
        let start = Instant::now();
        // Later than the armed sleep: no reset; the sleep re-arms itself.
        dl.set(start + Duration::from_millis(175));
        assert_eq!(dl.within(std::future::pending::<()>()).await, None);
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(175) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        // Earlier than the armed sleep: the sleep moves.
        let mut dl = Deadline::new(Duration::from_secs(30));
        let start = Instant::now();
        dl.set(start + Duration::from_millis(20));
        assert_eq!(dl.within(std::future::pending::<()>()).await, None);
        assert!(start.elapsed() < Duration::from_secs(5));
        // A future that finishes first wins.
        dl.set(Instant::now() + Duration::from_secs(5));
        assert_eq!(dl.within(async { 7 }).await, Some(7));
    }
}
