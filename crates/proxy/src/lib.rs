//! `timewait proxy`: an HTTP/1.1 reverse proxy whose upstream connections are
//! pooled and kept alive by default, so the churn that fills TIME_WAIT (a new
//! connection per request, as nginx does unless told otherwise) never starts.
//!
//! The layout, from the outside in (each policy lives in one module):
//!
//! - [`config`]: the one validated model (server-wide settings, listeners
//!   with routes, upstream groups), its defaults and its limits;
//!   [`config_file`]: TOML into it.
//! - [`route`]: which route a request takes.
//! - `worker`: threads (one single-threaded runtime each, `SO_REUSEPORT`
//!   listeners, no locks on the request path), sweeps, reloads, drain;
//!   `accept` and `clients`: accepting within the connection limit, which
//!   `limits` derives from the raised file-descriptor limit; `signals`.
//! - `h1`: HTTP/1.1 — pure head parsing and rewriting (`h1::head`), body
//!   streaming with trailers (`h1::body`), the per-connection session
//!   (`h1::session`).
//! - `upstream`: balancer and passive health, per group and worker;
//!   `pool`: idle backend connections over the generic `timewait-pool`;
//!   `connect`: dialing, and closing pooled connections with a reset so
//!   that retiring them leaves no TIME_WAIT.
//! - `error`: which side failed and whether a retry is safe; [`headers`]:
//!   the gateway rules and the header-name table; `metrics`, `admin`
//!   (`/metrics`, `/healthz`) and `access_log`.
//!
//! This crate depends on nothing diagnostic.
#![deny(missing_docs)]

mod accept;
mod access_log;
mod admin;
mod clients;
pub mod config;
pub mod config_file;
mod connect;
mod error;
mod h1;
pub mod headers;
mod limits;
mod metrics;
mod pool;
pub mod route;
mod signals;
mod upstream;
mod worker;

pub use config::Config;
pub use worker::{Bound, run};
