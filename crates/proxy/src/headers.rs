//! Gateway header rules (RFC 9110 §7.6.1, RFC 9112 §6, §11), and the one
//! table of the header names the proxy acts on. Pure.

use http::header::{HeaderName, HeaderValue};

/// The header names the proxy acts on, recognised once per header line
/// (by length, then one case-insensitive comparison) instead of comparing
/// every line against every list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Name {
    /// `Connection`.
    Connection,
    /// `Keep-Alive`.
    KeepAlive,
    /// `Proxy-Connection`.
    ProxyConnection,
    /// `TE`.
    Te,
    /// `Trailer`.
    Trailer,
    /// `Transfer-Encoding`.
    TransferEncoding,
    /// `Upgrade`.
    Upgrade,
    /// `Content-Length`.
    ContentLength,
    /// `Expect`.
    Expect,
    /// `Host`.
    Host,
    /// `Via`.
    Via,
    /// `X-Forwarded-For`.
    XForwardedFor,
    /// `X-Forwarded-Proto`.
    XForwardedProto,
    /// Any other.
    Other,
}

/// The names [`Name::of`] recognises.
const NAMES: [(&str, Name); 13] = [
    ("te", Name::Te),
    ("via", Name::Via),
    ("host", Name::Host),
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
    pub fn of(n: &str) -> Name {
        NAMES
            .iter()
            .find(|(known, _)| n.eq_ignore_ascii_case(known))
            .map_or(Name::Other, |&(_, name)| name)
    }

    /// A header that describes one hop and is never forwarded (RFC 9110
    /// §7.6.1, plus the non-standard `Keep-Alive` and `Proxy-Connection`).
    /// `Trailer` is not one: it is forwarded with a chunked body, whose
    /// trailer fields go along.
    pub fn hop_by_hop(self) -> bool {
        matches!(
            self,
            Name::Connection
                | Name::KeepAlive
                | Name::ProxyConnection
                | Name::Te
                | Name::TransferEncoding
                | Name::Upgrade
        )
    }

    /// A field that frames or routes a message and so may not arrive as a
    /// trailer field (RFC 9110 §6.5.1); such trailer lines are dropped.
    pub fn forbidden_in_trailer(self) -> bool {
        self.hop_by_hop()
            || matches!(
                self,
                Name::ContentLength | Name::Host | Name::Trailer | Name::Expect
            )
    }
}

/// The comma-separated tokens of a header value.
pub(crate) fn tokens(v: &[u8]) -> impl Iterator<Item = &str> {
    std::str::from_utf8(v)
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Why a request is refused before it reaches a backend (400, and the
/// client connection is closed: its framing can no longer be trusted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum Refusal {
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
pub(crate) struct RequestFraming {
    /// The one `Content-Length`, if given.
    pub content_length: Option<u64>,
    /// `Transfer-Encoding` ending in `chunked`.
    pub chunked: bool,
    /// Whether a `Host` was given.
    pub has_host: bool,
}

/// Checks a request's framing headers, given as `(name, value)` pairs.
/// (Whitespace before a colon, obs-fold and bare CR are refused by the
/// HTTP parser before headers reach this.)
pub(crate) fn check_fields<'a>(
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

/// Whether RFC 9110 (§9.2.1, §9.2.2) calls a method safe or idempotent:
/// only such a request may be sent again after a failure in which the
/// backend may have seen part of it.
pub(crate) fn idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9110 §7.6.1's list (plus Keep-Alive and Proxy-Connection).
    const HOP_BY_HOP: &[&str] = &[
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
    ];

    fn check(http10: bool, pairs: &[(&str, &str)]) -> Result<RequestFraming, Refusal> {
        check_fields(http10, pairs.iter().map(|(n, v)| (*n, v.as_bytes())))
    }

    #[test]
    fn refuses_smuggling_vectors() {
        let ok = check(false, &[("host", "a"), ("content-length", "5")]).unwrap();
        assert_eq!(
            (ok.content_length, ok.chunked, ok.has_host),
            (Some(5), false, true)
        );
        let both = [
            ("host", "a"),
            ("content-length", "5"),
            ("transfer-encoding", "chunked"),
        ];
        assert_eq!(check(false, &both), Err(Refusal::LengthAndEncoding));
        let differ = [
            ("host", "a"),
            ("content-length", "5"),
            ("content-length", "6"),
        ];
        assert_eq!(check(false, &differ), Err(Refusal::ConflictingLength));
        assert!(check(false, &[("host", "a"), ("content-length", "5, 5")]).is_ok());
        let signed = [("host", "a"), ("content-length", "+5")];
        assert_eq!(check(false, &signed), Err(Refusal::BadLength));
        let te = [("host", "a"), ("transfer-encoding", "chunked, gzip")];
        assert_eq!(check(false, &te), Err(Refusal::BadEncoding));
        let hosts = [("host", "a"), ("host", "b")];
        assert_eq!(check(false, &hosts), Err(Refusal::DuplicateHost));
        assert_eq!(check(false, &[]), Err(Refusal::MissingHost));
        assert!(check(true, &[]).is_ok());
        // Codings on several lines are one list: its last one must be chunked.
        let split = [
            ("host", "a"),
            ("transfer-encoding", "gzip"),
            ("transfer-encoding", "chunked"),
        ];
        assert!(check(false, &split).is_ok());
        let wrong = [
            ("host", "a"),
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "gzip"),
        ];
        assert_eq!(check(false, &wrong), Err(Refusal::BadEncoding));
    }

    #[test]
    fn names_are_recognised_in_any_case_and_hop_by_hop_matches_the_list() {
        for n in HOP_BY_HOP {
            assert!(Name::of(n).hop_by_hop(), "{n}");
            assert!(Name::of(&n.to_ascii_uppercase()).hop_by_hop(), "{n}");
        }
        for (n, k) in [
            ("Content-Length", Name::ContentLength),
            ("X-FORWARDED-FOR", Name::XForwardedFor),
            ("x-forwarded-proto", Name::XForwardedProto),
            ("Via", Name::Via),
            ("Expect", Name::Expect),
            ("Trailer", Name::Trailer),
            ("Content-Lengths", Name::Other),
            ("Connectio", Name::Other),
            ("", Name::Other),
        ] {
            assert_eq!(Name::of(n), k, "{n}");
            assert!(!k.hop_by_hop(), "{n}");
        }
        assert!(Name::Trailer.forbidden_in_trailer() && Name::ContentLength.forbidden_in_trailer());
        assert!(!Name::Other.forbidden_in_trailer());
    }

    #[test]
    fn only_safe_or_idempotent_methods_may_be_repeated() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(idempotent(m), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "get"] {
            assert!(!idempotent(m), "{m}");
        }
    }
}
