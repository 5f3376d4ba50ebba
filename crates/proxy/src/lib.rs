//! `timewait proxy`: an HTTP/1.1 reverse proxy whose upstream connections are
//! pooled and kept alive by default, so the churn that fills TIME_WAIT (a new
//! connection per request, as nginx does unless told otherwise) never starts.
//!
//! - [`headers`]: the gateway rules of RFC 9110/9112 — which headers are
//!   hop-by-hop, what is forwarded, which requests are refused.
//! - [`pool`]: idle upstream connections per address, most recently used
//!   first, bounded, expired after an idle timeout, dropped when the backend
//!   closes them.
//! - [`server`]: workers (one single-threaded runtime per core, each with its
//!   own listener via `SO_REUSEPORT` and its own pool: no locks on the request
//!   path), backend choice and health, the hyper engine, shutdown and the
//!   admin endpoint.
//! - [`lean`]: the default engine — `httparse` heads, one task per client
//!   connection driving its pooled backend connection directly.
//!
//! This crate depends on nothing diagnostic.
#![deny(missing_docs)]

pub mod config;
pub mod file;
pub mod headers;
pub mod lean;
pub mod metrics;
pub mod pool;
pub mod server;

pub use config::ProxyConfig;
pub use server::run;
