//! The arithmetic of TCP TIME_WAIT on Linux, exact and explained.
//!
//! This crate is pure: no I/O, no clocks, no globals. Everything that depends
//! on time takes it as an argument, so results are deterministic and the same
//! inputs always give the same numbers.
//!
//! - [`ports`]: the ephemeral port range and `ip_local_reserved_ports`, and
//!   which ports `connect()` can really pick (the kernel's parity rule).
//! - [`rate`]: the ceiling on new outgoing connections per second toward one
//!   destination, with and without `tcp_tw_reuse`.
//! - [`wrap`]: how long a TCP sequence number takes to wrap at a bandwidth,
//!   against the TIME_WAIT length (why PAWS and timestamps exist).
//! - [`simulate`]: an event-driven model of the kernel's port search,
//!   TIME_WAIT entry and expiry, reuse and `tcp_max_tw_buckets`.
#![deny(missing_docs)]

mod bitset;
pub mod error;
pub mod ports;
pub mod rate;
pub mod simulate;
pub mod text;
pub mod wrap;

pub use error::ModelError;
pub use ports::{PortRange, ReservedPorts, TwReuse};
