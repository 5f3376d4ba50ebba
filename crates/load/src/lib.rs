//! `timewait load`: a load generator that says what failed and why.
//!
//! - [`plan`]: the validated plan (target, mode, concurrency, rate, stop
//!   condition, timeouts, safety limits); parsing does no I/O.
//! - [`run()`]: the load itself on tokio — closed loop, or open loop at a
//!   fixed rate where latency is measured from each request's intended
//!   send time (no coordinated omission, as wrk2 does) — counting every
//!   failure by errno name (`EADDRNOTAVAIL`, `ECONNREFUSED`, …) or HTTP
//!   status class, with latency and connect-latency histograms and a
//!   per-second series.
//! - [`report`]: the result, with what each error means for ports.
#![deny(missing_docs)]

pub mod plan;
pub mod report;
pub mod run;

pub use plan::{Mode, Plan, Target};
pub use report::Report;
pub use run::run;
