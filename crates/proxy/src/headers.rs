//! Gateway header rules (RFC 9110 §7.6.1, RFC 9112 §6, §11), pure.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Version};

/// Headers that describe one hop and are never forwarded (RFC 9110 §7.6.1,
/// plus the non-standard `Keep-Alive` and `Proxy-Connection`).
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Why a request is refused before it reaches a backend (400, and the
/// client connection is closed: its framing can no longer be trusted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Both `Content-Length` and `Transfer-Encoding`: the classic smuggling vector.
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndEncoding,
    /// Several `Content-Length` values that differ.
    #[error("conflicting Content-Length values")]
    ConflictingLength,
    /// A `Content-Length` that is not a number.
    #[error("invalid Content-Length")]
    BadLength,
    /// `Transfer-Encoding` whose last coding is not `chunked`.
    #[error("Transfer-Encoding does not end in chunked")]
    BadEncoding,
    /// More than one `Host`.
    #[error("more than one Host header")]
    DuplicateHost,
    /// No `Host` on an HTTP/1.1 request.
    #[error("HTTP/1.1 request without Host")]
    MissingHost,
}

/// What a request's framing headers say, once checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestFraming {
    /// The one `Content-Length`, if given.
    pub content_length: Option<u64>,
    /// `Transfer-Encoding` ending in `chunked`.
    pub chunked: bool,
    /// Whether a `Host` was given.
    pub has_host: bool,
}

/// Checks a request's framing headers, given as `(name, value)` pairs: the
/// one rule set both engines apply (hyper's `HeaderMap` through
/// [`check_request`], the lean engine's `httparse` headers directly).
pub fn check_fields<'a>(
    http10: bool,
    fields: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> Result<RequestFraming, Refusal> {
    let (mut length, mut encoding, mut last_coding, mut hosts) = (None::<u64>, false, "", 0);
    for (name, value) in fields {
        if name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(value).map_err(|_| Refusal::BadLength)?;
            for part in text.split(',').map(str::trim) {
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(Refusal::BadLength);
                }
                let n: u64 = part.parse().map_err(|_| Refusal::BadLength)?;
                if length.is_some_and(|prev| prev != n) {
                    return Err(Refusal::ConflictingLength);
                }
                length = Some(n);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            encoding = true;
            // The codings of every line form one list; its last one counts.
            if let Some(t) = std::str::from_utf8(value)
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .rfind(|t| !t.is_empty())
            {
                last_coding = t;
            }
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        }
    }
    if encoding && length.is_some() {
        return Err(Refusal::LengthAndEncoding);
    }
    if encoding && (http10 || !last_coding.eq_ignore_ascii_case("chunked")) {
        return Err(Refusal::BadEncoding);
    }
    match hosts {
        0 if !http10 => Err(Refusal::MissingHost),
        0 | 1 => Ok(RequestFraming {
            content_length: length,
            chunked: encoding,
            has_host: hosts == 1,
        }),
        _ => Err(Refusal::DuplicateHost),
    }
}

/// [`check_fields`] over a parsed request's headers. (Whitespace before a
/// colon, obs-fold and bare CR are refused by the HTTP parser before
/// headers reach us.)
pub fn check_request(version: Version, headers: &HeaderMap) -> Result<(), Refusal> {
    let http10 = version < Version::HTTP_11;
    check_fields(
        http10,
        headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
    )
    .map(|_| ())
}

/// Removes hop-by-hop headers and every header named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// How the proxy identifies itself and the client to the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardingRules {
    /// Value of `X-Forwarded-Proto` to set (`None`: leave as received).
    pub forwarded_proto: Option<String>,
    /// Append a `Via` entry (`1.1 <this>`), `None` for none.
    pub via: Option<String>,
    /// Headers to set (replacing any received), applied after the above.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Headers to remove.
    pub remove: Vec<HeaderName>,
}

impl Default for ForwardingRules {
    fn default() -> ForwardingRules {
        ForwardingRules {
            forwarded_proto: Some("http".into()),
            via: None,
            set: Vec::new(),
            remove: Vec::new(),
        }
    }
}

/// Builds the upstream request headers from the client's: hop-by-hop removed
/// (so the client's `Connection: close` never reaches the backend), the
/// client address appended to `X-Forwarded-For`, then the configured rules.
/// The upstream request is always HTTP/1.1 with a persistent connection.
pub fn upstream_request_headers(
    mut headers: HeaderMap,
    client_ip: std::net::IpAddr,
    rules: &ForwardingRules,
) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    headers.remove(header::EXPECT); // answered here: the backend gets the body or nothing
    let xff = HeaderName::from_static("x-forwarded-for");
    let client = client_ip.to_string();
    let value = match headers.get_all(&xff).iter().count() {
        0 => HeaderValue::from_str(&client).ok(),
        _ => {
            let mut list: Vec<&str> = headers
                .get_all(&xff)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            list.push(&client);
            HeaderValue::from_str(&list.join(", ")).ok()
        }
    };
    if let Some(v) = value {
        headers.insert(xff, v);
    }
    if let Some(proto) = &rules.forwarded_proto
        && let Ok(v) = HeaderValue::from_str(proto)
    {
        headers.insert(HeaderName::from_static("x-forwarded-proto"), v);
    }
    if let Some(via) = &rules.via {
        append_via(&mut headers, via);
    }
    for name in &rules.remove {
        headers.remove(name);
    }
    for (name, value) in &rules.set {
        headers.insert(name.clone(), value.clone());
    }
    headers
}

/// Strips a response's hop-by-hop headers (and adds `Via` if configured).
pub fn downstream_response_headers(headers: &mut HeaderMap, rules: &ForwardingRules) {
    strip_hop_by_hop(headers);
    if let Some(via) = &rules.via {
        append_via(headers, via);
    }
}

fn append_via(headers: &mut HeaderMap, via: &str) {
    let prior: Vec<String> = headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect();
    let mut list = prior.join(", ");
    if !list.is_empty() {
        list.push_str(", ");
    }
    list.push_str("1.1 ");
    list.push_str(via);
    if let Ok(v) = HeaderValue::from_str(&list) {
        headers.insert(header::VIA, v);
    }
}

/// Whether a request may be sent again after a failure in which the backend
/// may have seen part of it (RFC 9110 §9.2.2), provided it has no body.
pub fn is_idempotent(method: &Method) -> bool {
    idempotent(method.as_str())
}

/// [`is_idempotent`] by method name, for the lean engine's parsed heads.
pub fn idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn refuses_smuggling_vectors() {
        let v = Version::HTTP_11;
        let ok = map(&[("host", "a"), ("content-length", "5")]);
        assert_eq!(check_request(v, &ok), Ok(()));
        let both = map(&[
            ("host", "a"),
            ("content-length", "5"),
            ("transfer-encoding", "chunked"),
        ]);
        assert_eq!(check_request(v, &both), Err(Refusal::LengthAndEncoding));
        let differ = map(&[
            ("host", "a"),
            ("content-length", "5"),
            ("content-length", "6"),
        ]);
        assert_eq!(check_request(v, &differ), Err(Refusal::ConflictingLength));
        let same = map(&[("host", "a"), ("content-length", "5, 5")]);
        assert_eq!(check_request(v, &same), Ok(()));
        let signed = map(&[("host", "a"), ("content-length", "+5")]);
        assert_eq!(check_request(v, &signed), Err(Refusal::BadLength));
        let te = map(&[("host", "a"), ("transfer-encoding", "chunked, gzip")]);
        assert_eq!(check_request(v, &te), Err(Refusal::BadEncoding));
        let hosts = map(&[("host", "a"), ("host", "b")]);
        assert_eq!(check_request(v, &hosts), Err(Refusal::DuplicateHost));
        assert_eq!(check_request(v, &map(&[])), Err(Refusal::MissingHost));
        assert_eq!(check_request(Version::HTTP_10, &map(&[])), Ok(()));
        // Codings on several lines are one list: its last one must be chunked.
        let split = map(&[
            ("host", "a"),
            ("transfer-encoding", "gzip"),
            ("transfer-encoding", "chunked"),
        ]);
        assert_eq!(check_request(v, &split), Ok(()));
        let wrong = map(&[
            ("host", "a"),
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "gzip"),
        ]);
        assert_eq!(check_request(v, &wrong), Err(Refusal::BadEncoding));
        let fields = [("Host", &b"a"[..]), ("Content-Length", b"7")];
        let f = check_fields(false, fields.iter().copied()).unwrap();
        assert_eq!(
            (f.content_length, f.chunked, f.has_host),
            (Some(7), false, true)
        );
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "close, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn builds_upstream_headers() {
        let h = map(&[
            ("host", "example.com"),
            ("connection", "close"),
            ("x-forwarded-for", "203.0.113.9"),
            ("expect", "100-continue"),
        ]);
        let rules = ForwardingRules {
            via: Some("timewait".into()),
            set: vec![(
                HeaderName::from_static("x-real-ip"),
                HeaderValue::from_static("set"),
            )],
            remove: vec![HeaderName::from_static("x-drop")],
            ..ForwardingRules::default()
        };
        let out = upstream_request_headers(h, "192.0.2.1".parse().unwrap(), &rules);
        assert!(
            out.get("connection").is_none(),
            "the client's close is not forwarded"
        );
        assert!(out.get("expect").is_none());
        assert_eq!(out["x-forwarded-for"], "203.0.113.9, 192.0.2.1");
        assert_eq!(out["x-forwarded-proto"], "http");
        assert_eq!(out["via"], "1.1 timewait");
        assert_eq!(out["host"], "example.com");
        assert_eq!(out["x-real-ip"], "set");
    }
}
