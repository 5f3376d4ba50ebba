//! The one validated model of a proxy run: server-wide settings, listeners
//! with their routes, and upstream groups. The flags (`timewait proxy
//! --listen … --upstream …`) and a `-c FILE.toml` both build a [`Config`]
//! from the same [`defaults`], convert seconds with the same [`seconds`],
//! and pass the same [`Config::validate`]; so flag and file accept the same
//! values and name the same limits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::headers::ForwardingRules;
use crate::route::{HostMatch, Route};

/// The defaults, shared by the flags (shown in `--help`), the file and
/// [`Config::single`].
pub mod defaults {
    /// Worker threads.
    pub const WORKERS: usize = 1;
    /// Idle connections kept per backend and worker (nginx's `keepalive N`).
    pub const KEEPALIVE: usize = 128;
    /// Seconds before an idle backend connection is closed: below the
    /// backends' own keep-alive timeout (Node and Apache: 5 s), so the proxy
    /// never sends on a connection the backend is closing.
    pub const IDLE_TIMEOUT: f64 = 4.0;
    /// Failures in a row after which a backend is left alone.
    pub const MAX_FAILS: u32 = 3;
    /// Seconds a failing backend is left alone.
    pub const FAIL_TIMEOUT: f64 = 10.0;
    /// Seconds to connect to a backend.
    pub const CONNECT_TIMEOUT: f64 = 2.0;
    /// Seconds for a backend to start answering.
    pub const RESPONSE_TIMEOUT: f64 = 60.0;
    /// Seconds a client has to send a request head.
    pub const HEADER_TIMEOUT: f64 = 10.0;
    /// Seconds a body may stall.
    pub const BODY_TIMEOUT: f64 = 60.0;
    /// Most request headers.
    pub const MAX_HEADERS: usize = 100;
}

/// The most headers a message may carry (`max_headers` can only lower it).
pub const MAX_HEADERS_LIMIT: usize = 128;

/// A value out of range, named by its key in the file (`idle_timeout`);
/// the flag is the same name with dashes (`--idle-timeout`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {message}")]
pub struct Invalid {
    /// The setting's name, as in the file.
    pub field: &'static str,
    /// What is wrong, with the accepted range.
    pub message: String,
}

fn invalid(field: &'static str, message: String) -> Invalid {
    Invalid { field, message }
}

/// The largest value each duration setting accepts, in seconds.
fn max_seconds(field: &str) -> f64 {
    match field {
        "max_lifetime" => 86_400.0,
        "connect_timeout" => 600.0,
        _ => 3600.0,
    }
}

/// Seconds → a duration, within the one range each setting accepts.
pub fn seconds(field: &'static str, v: f64) -> Result<Duration, Invalid> {
    let max = max_seconds(field);
    if v.is_finite() && v > 0.0 && v <= max {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(invalid(
            field,
            format!("must be seconds above 0 and at most {max}, got {v}"),
        ))
    }
}

/// How to choose a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// In turn.
    #[default]
    RoundRobin,
    /// The one with the fewest requests in flight (in turn among equals).
    LeastConn,
}

/// A group's connection pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Idle connections kept per backend, per worker (like nginx's `keepalive N`).
    pub max_idle_per_upstream: usize,
    /// An idle connection is closed after this long.
    pub idle_timeout: Duration,
    /// Close a connection after this many requests (`None`: never — every
    /// close means a new connection).
    pub max_requests_per_connection: Option<u64>,
    /// Close a connection after this long (`None`: never).
    pub max_lifetime: Option<Duration>,
    /// One pool for all workers instead of one per worker:
    /// `max_idle_per_upstream` then bounds the idle connections per backend
    /// in all, at the cost of moving sockets between workers.
    pub shared: bool,
}

impl Default for PoolConfig {
    fn default() -> PoolConfig {
        PoolConfig {
            max_idle_per_upstream: defaults::KEEPALIVE,
            idle_timeout: Duration::from_secs_f64(defaults::IDLE_TIMEOUT),
            max_requests_per_connection: None,
            max_lifetime: None,
            shared: false,
        }
    }
}

/// Backends that routes send requests to, with their pool, balancing,
/// health and timeouts. Every route naming a group shares its pool and its
/// health state.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Its name (`[upstream.NAME]`; `default` for the flags).
    pub name: String,
    /// Backends.
    pub servers: Vec<SocketAddr>,
    /// How to choose among them.
    pub balance: Balance,
    /// Failures in a row after which a backend is left alone (nginx's `max_fails`).
    pub max_fails: u32,
    /// How long a failed backend is left alone (nginx's `fail_timeout`).
    pub fail_timeout: Duration,
    /// The pool.
    pub pool: PoolConfig,
    /// Time to connect to a backend before answering 502.
    pub connect_timeout: Duration,
    /// Time for a backend to start answering before 504.
    pub response_timeout: Duration,
    /// Time a request or response body may stall (no byte sent, or none
    /// taken by the receiver) before the exchange is cut off.
    pub body_timeout: Duration,
}

impl Group {
    /// A group of `servers` with the defaults.
    pub fn new(name: impl Into<String>, servers: Vec<SocketAddr>) -> Group {
        Group {
            name: name.into(),
            servers,
            balance: Balance::RoundRobin,
            max_fails: defaults::MAX_FAILS,
            fail_timeout: Duration::from_secs_f64(defaults::FAIL_TIMEOUT),
            pool: PoolConfig::default(),
            connect_timeout: Duration::from_secs_f64(defaults::CONNECT_TIMEOUT),
            response_timeout: Duration::from_secs_f64(defaults::RESPONSE_TIMEOUT),
            body_timeout: Duration::from_secs_f64(defaults::BODY_TIMEOUT),
        }
    }
}

/// Where clients connect, and what a request there goes to.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    /// Address.
    pub listen: SocketAddr,
    /// Routes (see [`crate::route`] for the order).
    pub routes: Vec<Route>,
    /// Time a client has to send a whole request head (slowloris protection).
    pub header_timeout: Duration,
    /// Most request headers accepted (more: 431).
    pub max_headers: usize,
}

/// A whole proxy run.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Worker threads, each with its own listeners (`SO_REUSEPORT`) and pools.
    pub workers: usize,
    /// Where `/metrics` and `/healthz` are served, if anywhere.
    pub admin: Option<SocketAddr>,
    /// Write a line per request to stdout.
    pub access_log: bool,
    /// Client connections each worker serves at once (`None`: derived from
    /// the file descriptor limit, which the proxy raises to its hard limit). Past it, the
    /// oldest idle keep-alive connection is closed to make room, and with
    /// none idle new clients wait in the kernel's accept queue.
    pub max_connections: Option<usize>,
    /// Listeners.
    pub listeners: Vec<Listener>,
    /// Upstream groups; routes point here by index.
    pub groups: Vec<Group>,
}

impl Config {
    /// One listener sending every request to one group: what the flags
    /// describe. Defaults for everything else.
    pub fn single(listen: SocketAddr, servers: Vec<SocketAddr>) -> Config {
        Config {
            workers: defaults::WORKERS,
            admin: None,
            access_log: false,
            max_connections: None,
            listeners: vec![Listener {
                listen,
                routes: vec![Route {
                    host: HostMatch::Any,
                    path_prefix: "/".into(),
                    group: 0,
                    forwarding: Arc::new(ForwardingRules::default()),
                }],
                header_timeout: Duration::from_secs_f64(defaults::HEADER_TIMEOUT),
                max_headers: defaults::MAX_HEADERS,
            }],
            groups: vec![Group::new("default", servers)],
        }
    }

    /// Checks every value against the one set of limits.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !(1..=1024).contains(&self.workers) {
            return Err(invalid(
                "workers",
                format!("must be between 1 and 1024, got {}", self.workers),
            ));
        }
        if self.max_connections == Some(0) {
            return Err(invalid("max_connections", "must be at least 1".into()));
        }
        if self.listeners.is_empty() {
            return Err(invalid("listener", "at least one is needed".into()));
        }
        for l in &self.listeners {
            if l.routes.is_empty() {
                return Err(invalid(
                    "route",
                    format!("listener {} has no route", l.listen),
                ));
            }
            if !(1..=MAX_HEADERS_LIMIT).contains(&l.max_headers) {
                return Err(invalid(
                    "max_headers",
                    format!(
                        "must be between 1 and {MAX_HEADERS_LIMIT}, got {}",
                        l.max_headers
                    ),
                ));
            }
            if let Some(r) = l.routes.iter().find(|r| r.group >= self.groups.len()) {
                return Err(invalid(
                    "route",
                    format!("names group {} of {}", r.group, self.groups.len()),
                ));
            }
        }
        for g in &self.groups {
            if g.servers.is_empty() {
                return Err(invalid(
                    "servers",
                    format!("upstream {:?} has no servers", g.name),
                ));
            }
            if g.max_fails == 0 {
                return Err(invalid("max_fails", "must be at least 1".into()));
            }
            if g.pool.max_requests_per_connection == Some(0) {
                return Err(invalid("max_requests", "must be at least 1".into()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_flag_case_is_valid_and_each_limit_is_named() {
        let ok = Config::single(addr("127.0.0.1:1"), vec![addr("127.0.0.1:2")]);
        assert_eq!(ok.validate(), Ok(()));
        let mut c = ok.clone();
        c.workers = 0;
        assert_eq!(c.validate().unwrap_err().field, "workers");
        let mut c = ok.clone();
        c.groups[0].max_fails = 0;
        assert_eq!(c.validate().unwrap_err().field, "max_fails");
        let mut c = ok.clone();
        c.groups[0].pool.max_requests_per_connection = Some(0);
        assert_eq!(c.validate().unwrap_err().field, "max_requests");
        let mut c = ok.clone();
        c.listeners[0].max_headers = 129;
        assert_eq!(c.validate().unwrap_err().field, "max_headers");
        let mut c = ok;
        c.groups[0].servers.clear();
        assert_eq!(c.validate().unwrap_err().field, "servers");
    }

    #[test]
    fn seconds_have_one_range_per_setting() {
        assert!(seconds("idle_timeout", 3600.0).is_ok());
        assert!(seconds("idle_timeout", 3600.5).is_err());
        assert!(seconds("max_lifetime", 86_400.0).is_ok());
        assert!(seconds("connect_timeout", 601.0).is_err());
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = seconds("body_timeout", bad).unwrap_err();
            assert_eq!(e.field, "body_timeout");
            assert!(
                e.to_string().starts_with("body_timeout must be seconds"),
                "{e}"
            );
        }
    }
}
