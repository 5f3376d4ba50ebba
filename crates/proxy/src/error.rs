//! What can go wrong with one proxied request: which side failed, and
//! whether sending the request again is safe. The one place that decides
//! the status a failure gets, whether it counts against the backend's
//! health, and whether it is retried.

/// Where a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The backend or the way to it.
    Upstream,
    /// The client.
    Downstream,
}

/// What failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// No backend could be connected to within the connect timeout.
    Connect,
    /// The backend connection broke while the request was written.
    SendRequest,
    /// The backend stopped reading the request body for the body timeout.
    RequestBodyStalled,
    /// The backend closed or reset the connection before a response head.
    NoResponse,
    /// The backend did not start answering within the response timeout.
    ResponseTimeout,
    /// The response head was malformed, or its lengths disagreed.
    BadResponse,
    /// The backend failed, or stalled, in the middle of the response body.
    ResponseBody,
    /// The client's request body ended early, was malformed, or stalled.
    RequestBody,
    /// The client did not send a whole request head within the header
    /// timeout (slowloris), or left in the middle of one.
    RequestHead,
    /// The client went away, or stopped reading, during the response.
    ClientGone,
    /// A tunnel after `101 Switching Protocols` ended with an error.
    Tunnel,
}

impl Kind {
    /// Every kind, in the order of the `/metrics` series.
    pub(crate) const ALL: [Kind; 11] = [
        Kind::Connect,
        Kind::SendRequest,
        Kind::RequestBodyStalled,
        Kind::NoResponse,
        Kind::ResponseTimeout,
        Kind::BadResponse,
        Kind::ResponseBody,
        Kind::RequestBody,
        Kind::RequestHead,
        Kind::ClientGone,
        Kind::Tunnel,
    ];

    /// The `kind` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Connect => "connect",
            Kind::SendRequest => "send_request",
            Kind::RequestBodyStalled => "request_body_stalled",
            Kind::NoResponse => "no_response",
            Kind::ResponseTimeout => "response_timeout",
            Kind::BadResponse => "bad_response",
            Kind::ResponseBody => "response_body",
            Kind::RequestBody => "request_body",
            Kind::RequestHead => "request_head",
            Kind::ClientGone => "client_gone",
            Kind::Tunnel => "tunnel",
        }
    }

    /// The side a kind belongs to.
    pub(crate) fn side(self) -> Side {
        match self {
            Kind::RequestBody | Kind::RequestHead | Kind::ClientGone => Side::Downstream,
            _ => Side::Upstream,
        }
    }

    pub(crate) fn index(self) -> usize {
        Kind::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// One failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProxyError {
    pub(crate) kind: Kind,
    pub(crate) side: Side,
    /// The backend connection had carried a request before this one.
    pub(crate) reused: bool,
    /// Some of the request reached the backend's socket.
    pub(crate) written: bool,
}

impl ProxyError {
    pub(crate) fn new(kind: Kind, reused: bool, written: bool) -> ProxyError {
        ProxyError {
            kind,
            side: kind.side(),
            reused,
            written,
        }
    }

    /// The status the client gets, where a response can still be sent.
    pub(crate) fn status(&self) -> u16 {
        match self.kind {
            Kind::RequestBodyStalled | Kind::ResponseTimeout => 504,
            Kind::RequestBody => 400,
            Kind::RequestHead => 408,
            Kind::Connect
            | Kind::SendRequest
            | Kind::NoResponse
            | Kind::BadResponse
            | Kind::ResponseBody
            | Kind::ClientGone
            | Kind::Tunnel => 502,
        }
    }

    /// The reason phrase for [`ProxyError::status`].
    pub(crate) fn reason(&self) -> &'static str {
        match self.status() {
            504 => "Gateway Timeout",
            408 => "Request Timeout",
            400 => "Bad Request",
            _ => "Bad Gateway",
        }
    }

    /// The message the client gets.
    pub(crate) fn message(&self) -> &'static str {
        match self.kind {
            Kind::Connect => "bad gateway: cannot connect to the backend",
            Kind::SendRequest | Kind::NoResponse => "bad gateway: the backend connection broke",
            Kind::RequestBodyStalled => {
                "gateway timeout: the backend stopped reading the request body"
            }
            Kind::ResponseTimeout => "gateway timeout: the backend did not answer in time",
            Kind::BadResponse => "bad gateway: the backend sent no valid response",
            Kind::ResponseBody => "bad gateway: the backend failed during the response",
            Kind::RequestBody => "bad request: the request body did not arrive whole",
            Kind::RequestHead => "request timeout: the request head did not arrive in time",
            Kind::ClientGone | Kind::Tunnel => "bad gateway",
        }
    }

    /// Whether it counts toward the backend's passive health.
    pub(crate) fn counts_against_backend(&self) -> bool {
        self.side == Side::Upstream
    }

    /// Whether the request may be sent once more, on a fresh connection: a
    /// connection that broke (not a timeout, not a bad answer) before any
    /// of the response arrived, where nothing of the request was written,
    /// or under a request RFC 9110 calls safe or idempotent and without a
    /// body (`repeatable`: §9.2.2 lets it be repeated after a communication
    /// failure). How often: [`Retries`].
    pub(crate) fn retryable(&self, repeatable: bool) -> bool {
        self.side == Side::Upstream
            && matches!(self.kind, Kind::SendRequest | Kind::NoResponse)
            && (repeatable || !self.written)
    }
}

/// What is left of one request's retries. nginx's rule: a reused
/// connection that broke does not use up the retry (the backend most
/// likely closed it idle as the request went out), and the attempt after
/// it is on a fresh connection; a fresh connection that broke uses it up.
/// So a request is sent at most three times, and twice to a backend that
/// breaks fresh connections.
#[derive(Debug, Default)]
pub(crate) struct Retries {
    fresh_only: bool,
    used: bool,
}

impl Retries {
    /// Whether to send the request once more after `e`.
    pub(crate) fn again(&mut self, e: &ProxyError, repeatable: bool) -> bool {
        if !e.retryable(repeatable) || (!e.reused && self.used) {
            return false;
        }
        self.used |= !e.reused;
        self.fresh_only = true;
        true
    }

    /// Whether the next attempt must open a connection.
    pub(crate) fn fresh_only(&self) -> bool {
        self.fresh_only
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_broken_connection_under_a_repeatable_request_is_retried() {
        let broke = |reused, written| ProxyError::new(Kind::NoResponse, reused, written);
        assert!(
            broke(true, true).retryable(true),
            "reused: the idle-close race"
        );
        assert!(broke(false, true).retryable(true), "fresh: RFC 9110 §9.2.2");
        assert!(broke(false, false).retryable(false), "nothing written");
        assert!(!broke(true, true).retryable(false), "POST, or a body");
        assert!(!broke(false, true).retryable(false), "POST, or a body");
        for k in [
            Kind::ResponseTimeout,
            Kind::BadResponse,
            Kind::ResponseBody,
            Kind::Connect,
        ] {
            assert!(!ProxyError::new(k, true, false).retryable(true), "{k:?}");
        }
        assert!(!ProxyError::new(Kind::ClientGone, true, false).retryable(true));
    }

    #[test]
    fn a_reused_connection_breaking_does_not_use_up_the_retry() {
        let reused = ProxyError::new(Kind::NoResponse, true, true);
        let fresh = ProxyError::new(Kind::NoResponse, false, true);
        let mut r = Retries::default();
        assert!(!r.fresh_only());
        assert!(r.again(&reused, true));
        assert!(r.fresh_only(), "the next attempt opens a connection");
        assert!(r.again(&fresh, true), "the one retry");
        assert!(!r.again(&fresh, true), "and no more");
        let mut r = Retries::default();
        assert!(r.again(&fresh, true));
        assert!(!r.again(&fresh, true));
        let mut r = Retries::default();
        assert!(!r.again(&fresh, false), "a POST that went out");
    }

    #[test]
    fn each_failure_has_its_side_and_status() {
        let e = |k| ProxyError::new(k, false, true);
        assert_eq!(e(Kind::RequestBodyStalled).status(), 504);
        assert_eq!(e(Kind::ResponseTimeout).status(), 504);
        assert_eq!(e(Kind::ResponseBody).status(), 502);
        assert_eq!(e(Kind::RequestBody).side, Side::Downstream);
        assert!(!e(Kind::ClientGone).counts_against_backend());
        assert!(e(Kind::RequestBodyStalled).counts_against_backend());
        let labels: std::collections::BTreeSet<_> = Kind::ALL.iter().map(|k| k.label()).collect();
        assert_eq!(labels.len(), Kind::ALL.len());
        assert!(Kind::ALL.iter().enumerate().all(|(i, k)| k.index() == i));
    }
}
