//! What `lab --json` prints: per scenario, its settings, what the kernel did
//! (measured) and what the model predicts, second by second.

use std::collections::BTreeMap;

use serde::Serialize;

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabReport {
    /// Kernel release the scenarios ran on.
    pub kernel_release: String,
    /// Wall time of the whole run.
    pub duration_seconds: f64,
    /// In the order they ran.
    pub scenarios: Vec<ScenarioReport>,
    /// Scenarios that could not run here, and why.
    pub skipped: Vec<Skipped>,
    /// Stopped by Ctrl-C: the scenarios so far.
    pub interrupted: bool,
}

/// A scenario that could not run here.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Skipped {
    /// Its name.
    pub name: String,
    /// Why (what to install).
    pub why: String,
}

/// One scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScenarioReport {
    /// `--scenario NAME`.
    pub name: String,
    /// The claim it shows.
    pub claim: String,
    /// The sysctls set in its namespace and the traffic.
    pub settings: BTreeMap<String, String>,
    /// What the kernel did.
    pub measured: Outcome,
    /// What the model predicts (`source` says which model).
    pub predicted: Outcome,
    /// Who held the TIME_WAIT when the traffic ended (measured).
    pub time_wait_held: Held,
    /// Whether `succeeded` and `failed_eaddrnotavail` agree within 10%.
    pub agrees: bool,
    /// One line: what happened beside what was predicted.
    pub verdict: String,
}

/// TIME_WAIT sockets by the side that closed first.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Held {
    /// On the backend (local port the backend's: it closed first).
    pub by_backend: u64,
    /// Toward the backend (the client or the proxy closed first).
    pub toward_backend: u64,
}

/// Counts of one side (measured or predicted).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// `kernel` for measured; `model simulate` or `model rule` for predicted.
    pub source: String,
    /// Connects (requests) attempted.
    pub attempted: u64,
    /// Succeeded.
    pub succeeded: u64,
    /// Failed with EADDRNOTAVAIL.
    pub failed_eaddrnotavail: u64,
    /// Failed otherwise, by name (measured only).
    pub other_errors: BTreeMap<String, u64>,
    /// The second in which the first EADDRNOTAVAIL came, if any.
    pub first_failure_second: Option<u64>,
    /// Most TIME_WAIT sockets on the side that closed first, sampled each
    /// second (measured) or modelled.
    pub time_wait_peak: Option<u64>,
    /// TIME_WAIT sockets taken over by new connections (TcpExt TWRecycled).
    pub tw_reused: Option<u64>,
    /// Closes that skipped TIME_WAIT (TcpExt TCPTimeWaitOverflow).
    pub tw_overflow: Option<u64>,
    /// Second by second.
    pub series: Vec<Point>,
}

/// One second.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// Seconds since the start (this second is `second`..`second + 1`).
    pub second: u64,
    /// Succeeded in it.
    pub succeeded: u64,
    /// Failed in it (any error).
    pub failed: u64,
    /// TIME_WAIT at its end, if sampled.
    pub time_wait: Option<u64>,
}

/// Within 10% of the larger of the two, or 3 (for counts near zero).
pub fn close_enough(a: u64, b: u64) -> bool {
    let tol = (a.max(b) as f64 * 0.10).max(3.0);
    (a as f64 - b as f64).abs() <= tol
}
