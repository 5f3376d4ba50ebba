//! HTTP/1 heads, pure: parsing a request head and writing the head sent
//! upstream; parsing a response head and writing the head sent to the
//! client. The gateway rules applied here (RFC 9110 §7.6, RFC 9112):
//! hop-by-hop headers and those `Connection` names are dropped, so the
//! client's `Connection: close` never reaches the backend; HTTP/1.1 goes
//! upstream; `X-Forwarded-For` gets the client appended; `Expect` is
//! answered here; `Trailer` goes along only with a chunked body; lengths
//! are written once, from the checked value. Tested with byte fixtures.

use std::mem::MaybeUninit;
use std::net::SocketAddr;

use timewait_http::Connection;

use crate::config::MAX_HEADERS_LIMIT;
use crate::headers::{
    ForwardingRules, Name, Refusal, RequestFraming, check_fields, idempotent, tokens,
};
use crate::route::{Route, route};

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// What the request head says, beyond the rewritten bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestInfo {
    pub(crate) framing: Framing,
    pub(crate) client_keep_alive: bool,
    pub(crate) client_http10: bool,
    pub(crate) expect_continue: bool,
    pub(crate) head_method: bool,
    /// Safe or idempotent (RFC 9110 §9.2) and without a body: it may be
    /// sent once more after a backend connection fails under it.
    pub(crate) repeatable: bool,
    pub(crate) upgrade: bool,
}

/// What the response head says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ResponseInfo {
    pub(crate) status: u16,
    pub(crate) framing: Framing,
    pub(crate) upstream_keep_alive: bool,
}

/// A response head as it goes to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientHead {
    pub(crate) info: ResponseInfo,
    /// The body framing toward the client.
    pub(crate) to_client: Framing,
    /// Whether the client connection stays open.
    pub(crate) keep: bool,
}

#[inline]
fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Each header line's [`Name`], on the stack.
fn classify(headers: &[httparse::Header<'_>]) -> [Name; MAX_HEADERS_LIMIT] {
    let mut kinds = [Name::Other; MAX_HEADERS_LIMIT];
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

/// `Content-Length: N`, without allocating.
pub(crate) fn push_length(out: &mut Vec<u8>, n: u64) {
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

pub(crate) fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The request target as sent upstream: an absolute-form target
/// (`http://host/path`) loses its scheme and authority.
pub(crate) fn origin_form(target: &str) -> &str {
    let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    else {
        return target;
    };
    rest.find('/').map_or("/", |i| &rest[i..])
}

/// Checks a parsed request and writes the upstream head into `out`, with
/// `rules` and, for a request without `Host` (HTTP/1.0), `default_host`.
fn upstream_head(
    req: &httparse::Request<'_, '_>,
    peer: &str,
    rules: &ForwardingRules,
    default_host: SocketAddr,
    out: &mut Vec<u8>,
) -> Result<RequestInfo, Refusal> {
    let method = req.method.unwrap_or("GET");
    let path = origin_form(req.path.unwrap_or("/"));
    let http10 = req.version == Some(0);
    let checked = check_fields(http10, req.headers.iter().map(|h| (h.name, h.value)))?;
    let kinds = classify(req.headers);
    let mut connection = Connection::default();
    let (mut expect, mut upgrade_header) = (false, false);
    for (h, kind) in req.headers.iter().zip(kinds) {
        match kind {
            Name::Connection => connection.add(h.value),
            Name::Expect => {
                expect |= std::str::from_utf8(h.value).is_ok_and(|v| eq(v.trim(), "100-continue"));
            }
            Name::Upgrade => upgrade_header = true,
            _ => {}
        }
    }
    let upgrade = connection.upgrade && upgrade_header && !http10;
    // Whether Connection lists a name other than the hop-by-hop ones.
    let named = connection.names_other;
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
    for (h, kind) in req.headers.iter().zip(kinds) {
        let n = h.name;
        let dropped = kind.hop_by_hop() || (named && listed_in_connection(req.headers, &kinds, n));
        if (dropped && !(upgrade && kind == Name::Upgrade))
            || kind == Name::ContentLength
            || kind == Name::Expect
            || (kind == Name::Trailer && framing != Framing::Chunked)
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
        push_header(out, b"Host", default_host.to_string().as_bytes());
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    for v in received(req.headers, &kinds, Name::XForwardedFor) {
        out.extend_from_slice(v);
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
    let client_keep_alive = connection.persists(http10);
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

/// A request head that passed the checks.
#[derive(Debug)]
pub(crate) struct Request<'r> {
    pub(crate) info: RequestInfo,
    /// `None`: no route for its host and path (404).
    pub(crate) route: Option<&'r Route>,
    /// `METHOD TARGET HTTP/1.x`, when logging.
    pub(crate) line: Option<String>,
}

/// What one parse of the buffered request bytes came to.
#[derive(Debug)]
pub(crate) enum ParsedRequest<'r> {
    /// A whole head of this many bytes, and whether it passed the checks.
    Head(usize, Result<Request<'r>, Refusal>),
    /// More bytes needed.
    Partial,
    /// More headers than allowed.
    TooManyHeaders,
    /// Not HTTP/1.x.
    Malformed,
}

/// Parses the request head in `buf` (at most `max_headers` headers) and,
/// if whole and acceptable, routes it and writes its upstream head into
/// `out`; `default_host(group)` is the `Host` for a request without one.
/// Not async on purpose: the header array lives on the stack for this call
/// only, not in the connection's future (where it would be copied with it).
pub(crate) fn parse_request<'r>(
    buf: &[u8],
    max_headers: usize,
    peer_ip: &str,
    routes: &'r [Route],
    default_host: impl Fn(usize) -> SocketAddr,
    log: bool,
    out: &mut Vec<u8>,
) -> ParsedRequest<'r> {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS_LIMIT];
    let limit = max_headers.min(MAX_HEADERS_LIMIT);
    let mut req = httparse::Request::new(&mut []);
    let n = match req.parse_with_uninit_headers(buf, &mut headers[..limit]) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return ParsedRequest::Partial,
        Err(httparse::Error::TooManyHeaders) => return ParsedRequest::TooManyHeaders,
        Err(_) => return ParsedRequest::Malformed,
    };
    let host = req
        .headers
        .iter()
        .find(|h| eq(h.name, "host"))
        .and_then(|h| std::str::from_utf8(h.value).ok());
    let chosen = route(routes, host, origin_form(req.path.unwrap_or("/")));
    let info = match chosen {
        Some(r) => upstream_head(&req, peer_ip, &r.forwarding, default_host(r.group), out),
        // A request with no route is still checked first (with default rules).
        None => upstream_head(
            &req,
            peer_ip,
            &ForwardingRules::default(),
            default_host(0),
            out,
        ),
    };
    let line = log.then(|| {
        let (m, t) = (req.method.unwrap_or("-"), req.path.unwrap_or("-"));
        format!("{m} {t} HTTP/1.{}", req.version.unwrap_or(1))
    });
    ParsedRequest::Head(
        n,
        info.map(|info| Request {
            info,
            route: chosen,
            line,
        }),
    )
}

/// Writes the client's response head into `out`; `None` for a head whose
/// lengths disagree or are not numbers (the client and this proxy could
/// then disagree on where the answer ends).
fn client_head(
    resp: &httparse::Response<'_, '_>,
    req: &RequestInfo,
    rules: &ForwardingRules,
    closing: bool,
    out: &mut Vec<u8>,
) -> Option<ClientHead> {
    let status = resp.code.unwrap_or(502);
    let http10_upstream = resp.version == Some(0);
    let kinds = classify(resp.headers);
    let (mut cl, mut te) = (None::<u64>, false);
    let mut connection = Connection::default();
    for (h, kind) in resp.headers.iter().zip(kinds) {
        if kind == Name::ContentLength {
            for part in tokens(h.value) {
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
            connection.add(h.value);
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
        framing != Framing::UntilClose && connection.persists(http10_upstream);
    let named = connection.names_other;
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
    for (h, kind) in resp.headers.iter().zip(kinds) {
        let n = h.name;
        let dropped = kind.hop_by_hop() || (named && listed_in_connection(resp.headers, &kinds, n));
        if (dropped && !(switching && kind == Name::Upgrade))
            || (rules.via.is_some() && kind == Name::Via)
            // Trailer fields reach the client only in a chunked body.
            || (kind == Name::Trailer && to_client != Framing::Chunked)
            // Content-Length is written once below, from the value checked above.
            || kind == Name::ContentLength
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
    Some(ClientHead {
        info: ResponseInfo {
            status,
            framing,
            upstream_keep_alive,
        },
        to_client,
        keep,
    })
}

/// What one parse of the buffered response bytes came to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ParsedResponse {
    /// An interim (1xx, not 101) head of this many bytes, not forwarded.
    Interim(usize),
    /// A final head of this many bytes, and what [`client_head`] made of it.
    Final(usize, Option<ClientHead>),
    /// More bytes needed.
    Partial,
    /// Not an HTTP/1.x response head.
    Malformed,
}

/// Parses the response head in `buf` (synchronously, so the header array
/// stays on the stack; see [`parse_request`]).
pub(crate) fn parse_response(
    buf: &[u8],
    req: &RequestInfo,
    rules: &ForwardingRules,
    closing: bool,
    out: &mut Vec<u8>,
) -> ParsedResponse {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS_LIMIT];
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
            ParsedResponse::Interim(n)
        }
        Ok(httparse::Status::Complete(n)) => {
            ParsedResponse::Final(n, client_head(&resp, req, rules, closing, out))
        }
        Ok(httparse::Status::Partial) => ParsedResponse::Partial,
        Err(_) => ParsedResponse::Malformed,
    }
}

#[cfg(test)]
mod tests;
