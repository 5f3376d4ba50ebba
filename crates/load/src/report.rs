//! What a run did, with what each error means for ports.

use std::collections::BTreeMap;

use serde::Serialize;

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// One second of the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Second {
    /// Seconds since the start.
    pub second: u64,
    /// Requests that succeeded in it.
    pub completed: u64,
    /// Requests that failed in it.
    pub failed: u64,
    /// TIME_WAIT sockets toward the target at its end (sampled with the
    /// census, in this namespace), if sampled.
    pub time_wait: Option<u64>,
    /// Share of ephemeral ports toward the target still free, if sampled.
    pub port_headroom: Option<f64>,
}

/// The whole report (`load --json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// What was loaded.
    pub target: String,
    /// `close` or `keepalive`.
    pub mode: &'static str,
    /// Connections or requests in flight at once.
    pub concurrency: usize,
    /// The paced rate, if open loop.
    pub rate: Option<f64>,
    /// How long it ran.
    pub duration_seconds: f64,
    /// Requests started.
    pub attempted: u64,
    /// Requests answered (HTTP 1xx-3xx, or a TCP connect that worked).
    pub succeeded: u64,
    /// Failures by errno name (`EADDRNOTAVAIL`…), `timeout`,
    /// `bad_response`, or HTTP status class (`http_5xx`).
    pub errors: BTreeMap<String, u64>,
    /// What each error in `errors` means.
    pub error_meanings: BTreeMap<String, &'static str>,
    /// Connections opened.
    pub connections_opened: u64,
    /// Succeeded requests per second.
    pub requests_per_second: f64,
    /// From the intended send time (open loop) or the start of the request
    /// (closed loop) to the end of the answer; `null` with none answered.
    pub latency_ms: Option<Percentiles>,
    /// connect() alone (slower as the kernel's port search gets longer).
    pub connect_latency_ms: Option<Percentiles>,
    /// Second by second.
    pub series: Vec<Second>,
    /// The most TIME_WAIT toward the target seen, if sampled.
    pub time_wait_peak: Option<u64>,
    /// Stopped early by Ctrl-C: the numbers so far.
    pub interrupted: bool,
}

pub use timewait_kernel::errno::meaning;
