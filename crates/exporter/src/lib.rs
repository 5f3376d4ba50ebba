//! `timewait exporter`: Prometheus metrics of one network namespace.
//!
//! - [`metrics`]: a snapshot as metrics, pure (the status analysis and the
//!   doctor's findings, reused, not copied);
//! - [`http`]: `/metrics` and `/healthz` over HTTP, collecting at scrape
//!   time through a function the caller gives (the binary passes the host
//!   crate's collection), with a short cache so that several scrapers cost
//!   one collection.
#![deny(missing_docs)]

pub mod http;
pub mod metrics;

pub use http::{Exporter, serve};
pub use metrics::TraceState;
