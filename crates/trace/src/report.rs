//! What `trace --json` prints: per process, who connected, who failed and
//! why, and who closed first (and so holds the TIME_WAIT).

use std::collections::BTreeMap;

use serde::Serialize;

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceReport {
    /// How long the trace ran.
    pub duration_seconds: f64,
    /// Which namespaces were traced (`netns NAME`, `pid PID`, `current`, `all`).
    pub scope: String,
    /// Sorted by errors, then first closes (the TIME_WAIT they made).
    pub processes: Vec<ProcessReport>,
    /// Sums over `processes`.
    pub totals: Totals,
    /// Records read from the ring buffers and decoded.
    pub events: u64,
    /// Records that did not decode (shorter than their format says): not
    /// counted anywhere else, so a nonzero count means the numbers are short.
    pub records_undecoded: u64,
    /// Records the kernel dropped because the buffers were full (never
    /// silent: a nonzero count means the numbers above are short).
    pub events_lost: u64,
    /// Events in scope that belonged to no process we could name: with
    /// `--all`, a first close seen in interrupt context on a socket opened
    /// before the trace.
    pub unattributed: u64,
    /// With `--netns`/`--pid`: events that could not be placed in a
    /// namespace, so are left out — of processes that exited before they
    /// could be looked up, or first closes in interrupt context on sockets
    /// opened before the trace. They may be the target's or another
    /// namespace's.
    pub unplaced: u64,
}

/// One process (thread group).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessReport {
    /// Process id (the thread group id).
    pub pid: u32,
    /// Its command name, if it was still running when first seen.
    pub comm: Option<String>,
    /// Its network namespace (name, or `net:[INODE]`), if known.
    pub netns: Option<String>,
    /// connect() calls on TCP sockets: handshakes started, plus calls that
    /// failed for want of a route before one could start.
    pub connects: u64,
    /// Failed connects by errno name (`EADDRNOTAVAIL`, `ECONNREFUSED`, …;
    /// `ETIMEDOUT` for a handshake that ended without a reset, `abandoned`
    /// when the process closed the socket first).
    pub errors: BTreeMap<String, u64>,
    /// Connections this process closed first that it had opened (or that
    /// were opened before the trace on a port that accepted none during it):
    /// each left a TIME_WAIT socket on this host.
    pub closed_first: u64,
    /// Accepted connections this process closed first: server-side
    /// TIME_WAIT (the HTTP/1.0 pattern).
    pub server_closed_first: u64,
    /// Connections ended by a reset (sent by this process, e.g. SO_LINGER 0,
    /// or received on a connection it opened): no TIME_WAIT.
    pub resets: u64,
    /// The remote endpoints it connected to or closed toward, most errors
    /// and first closes first.
    pub destinations: Vec<DestinationReport>,
}

impl ProcessReport {
    /// All failed connects.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// One remote endpoint of one process.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DestinationReport {
    /// Remote address.
    pub remote_ip: String,
    /// Remote port.
    pub remote_port: u16,
    /// Handshakes started toward it.
    pub connects: u64,
    /// Failed connects toward it, by errno name.
    pub errors: BTreeMap<String, u64>,
    /// First closes toward it (TIME_WAIT sockets made).
    pub closed_first: u64,
}

/// Sums over the processes reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    /// connect() calls.
    pub connects: u64,
    /// Failed connects by errno name.
    pub errors: BTreeMap<String, u64>,
    /// Client-side first closes.
    pub closed_first: u64,
    /// Server-side first closes.
    pub server_closed_first: u64,
    /// Resets.
    pub resets: u64,
}
