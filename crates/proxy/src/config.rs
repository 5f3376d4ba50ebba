//! What a proxy run is told. Validated by the caller (the binary) before
//! [`crate::run`] is called.

use std::net::SocketAddr;
use std::time::Duration;

use crate::headers::ForwardingRules;

/// The upstream connection pool's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Idle connections kept per upstream address, per worker (like nginx's `keepalive N`).
    pub max_idle_per_upstream: usize,
    /// An idle connection is closed after this long. Keep it below the
    /// backends' keep-alive timeout, so the proxy never sends on a
    /// connection the backend is closing (Node and Apache: 5 s).
    pub idle_timeout: Duration,
    /// Close a connection after this many requests (`None`: never — every
    /// close means a new connection, and a TIME_WAIT where a peer closes
    /// with a FIN).
    pub max_requests_per_connection: Option<u64>,
    /// Close a connection after this long (`None`: never).
    pub max_lifetime: Option<Duration>,
    /// One pool for all workers (lean engine) instead of one per worker:
    /// `max_idle_per_upstream` then bounds the idle connections per backend
    /// in all, at the cost of moving sockets between workers.
    pub shared: bool,
}

impl Default for PoolConfig {
    fn default() -> PoolConfig {
        PoolConfig {
            max_idle_per_upstream: 128,
            idle_timeout: Duration::from_secs(4),
            max_requests_per_connection: None,
            max_lifetime: None,
            shared: false,
        }
    }
}

/// Which HTTP/1.1 implementation carries requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// hyper for both sides.
    Hyper,
    /// The lean path: httparse, one task per client connection driving its
    /// backend connection directly. Faster (see BENCHMARKS.md), and it can
    /// refuse Content-Length with Transfer-Encoding outright.
    #[default]
    Lean,
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

/// A proxy run.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// Backends.
    pub upstreams: Vec<SocketAddr>,
    /// How to choose among them.
    pub balance: Balance,
    /// Failures in a row after which a backend is left alone (like nginx's `max_fails`).
    pub max_fails: u32,
    /// How long a failed backend is left alone (like nginx's `fail_timeout`).
    pub fail_timeout: Duration,
    /// The HTTP/1.1 implementation.
    pub engine: Engine,
    /// Worker threads, each with its own listener (`SO_REUSEPORT`) and pool.
    pub workers: usize,
    /// Where `/metrics` is served, if anywhere.
    pub admin: Option<SocketAddr>,
    /// Write a line per request to stdout (lean engine).
    pub access_log: bool,
    /// Pool limits.
    pub pool: PoolConfig,
    /// Time to connect to a backend before answering 502.
    pub connect_timeout: Duration,
    /// Time for a backend to start answering before 504.
    pub response_header_timeout: Duration,
    /// Time a client has to send a request's headers (slowloris protection).
    pub client_header_timeout: Duration,
    /// Time a request or response body may stall (no byte sent, or none
    /// taken by the receiver) before the exchange is cut off.
    pub body_timeout: Duration,
    /// Most request headers accepted.
    pub max_headers: usize,
    /// Header rewriting.
    pub forwarding: ForwardingRules,
}

impl ProxyConfig {
    /// A configuration with the defaults for everything but addresses.
    pub fn new(listen: SocketAddr, upstreams: Vec<SocketAddr>) -> ProxyConfig {
        ProxyConfig {
            listen,
            upstreams,
            balance: Balance::RoundRobin,
            max_fails: 3,
            fail_timeout: Duration::from_secs(10),
            engine: Engine::default(),
            workers: 1,
            admin: None,
            access_log: false,
            pool: PoolConfig::default(),
            connect_timeout: Duration::from_secs(2),
            response_header_timeout: Duration::from_secs(60),
            client_header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            max_headers: 100,
            forwarding: ForwardingRules::default(),
        }
    }
}
