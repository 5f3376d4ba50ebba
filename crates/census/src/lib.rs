//! The census of TCP sockets and what it means, with no I/O.
//!
//! - [`aggregate`]: folds sockets, one at a time as a dump streams in, into
//!   counts per state and per destination; memory grows with destinations,
//!   not sockets.
//! - [`snapshot`]: the versioned document that separates observing a host
//!   from analysing it (`timewait snapshot`, `--from FILE`).
//! - [`status`]: the analysis behind `timewait status`: headroom, timers and
//!   the sustainable rate per destination, from a snapshot alone.
#![deny(missing_docs)]

pub mod aggregate;
pub mod snapshot;
pub mod status;

pub use aggregate::{Aggregator, Census, SocketView};
pub use snapshot::Snapshot;
