//! The contract between observing a host and analysing it, with no I/O.
//!
//! - [`aggregate`]: folds sockets, one at a time as a dump streams in, into
//!   counts per state and per destination; memory grows with destinations,
//!   not sockets.
//! - [`snapshot`]: the versioned document that `timewait snapshot` writes
//!   and `--from FILE` reads. It stores the aggregated census (bounded by
//!   the number of destinations), never the raw socket dump, so a snapshot
//!   of a host with a million TIME_WAIT sockets stays small; raw sysctl
//!   values and `/proc/net` files are kept verbatim, so the analysis of a
//!   snapshot re-parses exactly what a live run parses.
//!
//! What the values mean (settings, headroom, rates) is `timewait-analysis`;
//! reading them from a host is `timewait-host`.
#![deny(missing_docs)]

pub mod aggregate;
pub mod snapshot;

pub use aggregate::{Aggregator, Census, SocketView};
pub use snapshot::{Cause, CensusSource, Problem, Snapshot};
