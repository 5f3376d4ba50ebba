//! Counters, one set per worker (relaxed atomics: they are counts, not
//! synchronisation), summed over the workers when rendered in the
//! Prometheus text format. Per worker, so that counting a request never
//! moves a cache line between cores.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::error::{Kind, ProxyError, Side};

/// Everything one worker counts (aligned so that two workers' counters
/// never share a cache line).
#[derive(Debug, Default)]
#[repr(align(128))]
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
    /// Idle pooled connections: this worker's puts minus takes (summed over
    /// the workers, the pools' size; one worker's share of a shared pool can
    /// be negative).
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
    /// Failed requests by kind (see [`crate::error::Kind`]).
    pub(crate) failures: [AtomicU64; Kind::ALL.len()],
    /// `accept()` failures (out of file descriptors and the like).
    pub accept_errors: AtomicU64,
    /// Idle keep-alive client connections closed to make room for new
    /// clients at `max_connections`.
    pub idle_clients_closed: AtomicU64,
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

    /// Counts a request that failed for good (a retried attempt is counted
    /// in `retries` instead).
    pub(crate) fn failure(&self, e: &ProxyError) {
        Metrics::inc(&self.failures[e.kind.index()]);
        match e.kind {
            Kind::ResponseTimeout | Kind::RequestBodyStalled => {
                Metrics::inc(&self.upstream_timeouts)
            }
            Kind::SendRequest | Kind::NoResponse | Kind::BadResponse | Kind::ResponseBody => {
                Metrics::inc(&self.upstream_errors)
            }
            _ => {}
        }
    }

    /// The workers' counters added up.
    pub fn sum(all: &[std::sync::Arc<Metrics>]) -> Metrics {
        let total = Metrics::default();
        let add = |to: &AtomicU64, from: &AtomicU64| {
            to.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
        };
        for m in all {
            // Every field named: a counter added later cannot be left out.
            let Metrics {
                requests,
                responses,
                upstream_connections_opened,
                upstream_reused,
                upstream_requests,
                retries,
                pool_idle,
                refused,
                connect_errors,
                upstream_errors,
                upstream_timeouts,
                ejections,
                failures,
                accept_errors,
                idle_clients_closed,
            } = &**m;
            add(&total.requests, requests);
            for (to, from) in total.responses.iter().zip(responses) {
                add(to, from);
            }
            add(
                &total.upstream_connections_opened,
                upstream_connections_opened,
            );
            add(&total.upstream_reused, upstream_reused);
            add(&total.upstream_requests, upstream_requests);
            add(&total.retries, retries);
            total
                .pool_idle
                .fetch_add(pool_idle.load(Ordering::Relaxed), Ordering::Relaxed);
            add(&total.refused, refused);
            add(&total.connect_errors, connect_errors);
            add(&total.upstream_errors, upstream_errors);
            add(&total.upstream_timeouts, upstream_timeouts);
            add(&total.ejections, ejections);
            for (to, from) in total.failures.iter().zip(failures) {
                add(to, from);
            }
            add(&total.accept_errors, accept_errors);
            add(&total.idle_clients_closed, idle_clients_closed);
        }
        total
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut o = String::new();
        let counters: [(&str, &str, &AtomicU64); 12] = [
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
                "Requests sent once more after their backend connection broke before any answer.",
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
            (
                "accept_errors_total",
                "Failed accepts (such as running out of file descriptors).",
                &self.accept_errors,
            ),
            (
                "idle_clients_closed_total",
                "Idle keep-alive client connections closed to admit new clients at max_connections.",
                &self.idle_clients_closed,
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
            "# HELP timewait_proxy_failures_total Requests that failed, by the side that failed and what failed."
        );
        let _ = writeln!(o, "# TYPE timewait_proxy_failures_total counter");
        for (k, c) in Kind::ALL.iter().zip(&self.failures) {
            let side = match k.side() {
                Side::Upstream => "upstream",
                Side::Downstream => "downstream",
            };
            let _ = writeln!(
                o,
                "timewait_proxy_failures_total{{side=\"{side}\",kind=\"{}\"}} {}",
                k.label(),
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
