//! Counters shared by all workers (relaxed atomics: they are counts, not
//! synchronisation), rendered in the Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Everything the proxy counts.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests received from clients.
    pub requests: AtomicU64,
    /// Responses by status class: 1xx..5xx.
    pub responses: [AtomicU64; 5],
    /// Upstream connections opened.
    pub upstream_connections_opened: AtomicU64,
    /// Requests sent upstream on a connection that had served one before.
    pub upstream_reused: AtomicU64,
    /// Requests sent upstream.
    pub upstream_requests: AtomicU64,
    /// Requests sent again after a pooled connection turned out closed.
    pub retries: AtomicU64,
    /// Idle pooled connections (all workers).
    pub pool_idle: AtomicI64,
    /// Requests refused as malformed or ambiguous (400).
    pub refused: AtomicU64,
    /// Failures to connect to a backend (502).
    pub connect_errors: AtomicU64,
    /// Backends that broke a connection or sent broken framing (502).
    pub upstream_errors: AtomicU64,
    /// Backends too slow to answer (504).
    pub upstream_timeouts: AtomicU64,
    /// Times a backend was left alone after failing `max_fails` times.
    pub ejections: AtomicU64,
}

impl Metrics {
    /// Adds one.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a response's status.
    pub fn response(&self, status: u16) {
        if let Some(c) = self
            .responses
            .get(usize::from(status / 100).wrapping_sub(1))
        {
            Metrics::inc(c);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut o = String::new();
        let counters: [(&str, &str, &AtomicU64); 10] = [
            (
                "requests_total",
                "Requests received from clients.",
                &self.requests,
            ),
            (
                "upstream_connections_opened_total",
                "Connections opened to backends.",
                &self.upstream_connections_opened,
            ),
            (
                "upstream_requests_total",
                "Requests sent to backends.",
                &self.upstream_requests,
            ),
            (
                "upstream_reused_requests_total",
                "Requests sent on a reused backend connection.",
                &self.upstream_reused,
            ),
            (
                "retries_total",
                "Requests retried after a pooled connection turned out closed.",
                &self.retries,
            ),
            (
                "refused_requests_total",
                "Requests refused with 400.",
                &self.refused,
            ),
            (
                "upstream_connect_errors_total",
                "Failed connects to backends.",
                &self.connect_errors,
            ),
            (
                "upstream_errors_total",
                "Broken backend connections or framing.",
                &self.upstream_errors,
            ),
            (
                "upstream_timeouts_total",
                "Backends that did not answer in time.",
                &self.upstream_timeouts,
            ),
            (
                "upstream_ejections_total",
                "Backends left alone after repeated failures.",
                &self.ejections,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(o, "# HELP timewait_proxy_{name} {help}");
            let _ = writeln!(o, "# TYPE timewait_proxy_{name} counter");
            let _ = writeln!(o, "timewait_proxy_{name} {}", g(value));
        }
        let _ = writeln!(
            o,
            "# HELP timewait_proxy_responses_total Responses sent to clients, by status class."
        );
        let _ = writeln!(o, "# TYPE timewait_proxy_responses_total counter");
        for (i, c) in self.responses.iter().enumerate() {
            let _ = writeln!(
                o,
                "timewait_proxy_responses_total{{class=\"{}xx\"}} {}",
                i + 1,
                g(c)
            );
        }
        let _ = writeln!(
            o,
            "# HELP timewait_proxy_pool_idle_connections Idle backend connections in the pools."
        );
        let _ = writeln!(o, "# TYPE timewait_proxy_pool_idle_connections gauge");
        let _ = writeln!(
            o,
            "timewait_proxy_pool_idle_connections {}",
            self.pool_idle.load(Ordering::Relaxed).max(0)
        );
        o
    }
}
