//! The scenarios: the article's claims, each with the settings that show it.
//!
//! Every scenario runs the same paced stream of short connections
//! ([`RATE`] per second for [`DURATION_SECONDS`]) toward a backend on an
//! address of the namespace's `lo` that is not a loopback address
//! ([`BACKEND_IP`]: `tcp_tw_reuse=2`, the default, does not apply to it, as
//! to a real remote host). The port range is scaled down (300 ports) so that
//! what takes a busy server minutes takes a second here.

use std::net::Ipv4Addr;

/// New connections per second.
pub const RATE: f64 = 400.0;
/// How long each scenario's traffic runs (a whole number of the model's
/// half-second timeline slices, so its seconds line up with the kernel's).
pub const DURATION_SECONDS: f64 = 5.0;
/// The backend's address: RFC 2544's benchmarking range, on `lo`.
pub const BACKEND_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The backend's port.
pub const BACKEND_PORT: u16 = 9000;
/// The proxy's port (scenario `proxy`), on 127.0.0.1.
pub const PROXY_PORT: u16 = 8080;
/// nginx's port (scenarios `nginx` and `nginx-keepalive`), on 127.0.0.1.
pub const NGINX_PORT: u16 = 8081;
/// nginx's `keepalive` (idle upstream connections kept per worker): the
/// article's 500, scaled down with the port range.
pub const NGINX_KEEPALIVE: u32 = 32;
/// The scaled-down port range: 300 ports.
pub const NARROW: (u16, u16) = (40000, 40299);

/// Who closes first, and what carries the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    /// connect, close: the client closes first and holds the TIME_WAIT.
    ClientCloses,
    /// HTTP/1.0 style: the backend answers and closes first.
    ServerCloses,
    /// Short client requests through `timewait proxy`, which keeps its
    /// backend connections alive.
    Proxy,
    /// The same requests through nginx (where it is installed): with its
    /// defaults (HTTP/1.0 and `Connection: close` to the upstream), or with
    /// the article's keep-alive lines.
    Nginx {
        /// `keepalive N`, `proxy_http_version 1.1`, `proxy_set_header
        /// Connection ""`.
        keepalive: bool,
    },
}

/// One scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Its name (`--scenario NAME`).
    pub name: &'static str,
    /// The article's claim it shows.
    pub claim: &'static str,
    /// `ip_local_port_range`.
    pub port_range: (u16, u16),
    /// `tcp_tw_reuse`.
    pub tw_reuse: u8,
    /// `tcp_tw_reuse_delay`, ms (kernels from 6.14; 1000 is the default).
    pub tw_reuse_delay_ms: u32,
    /// `tcp_max_tw_buckets`, if set.
    pub max_tw_buckets: Option<u64>,
    /// The traffic.
    pub traffic: Traffic,
}

const BASE: Scenario = Scenario {
    name: "",
    claim: "",
    port_range: NARROW,
    tw_reuse: 0,
    tw_reuse_delay_ms: 1000,
    max_tw_buckets: None,
    traffic: Traffic::ClientCloses,
};

/// Every scenario, in the order the lab runs them.
pub fn all() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "exhaustion",
            claim: "Short connections toward one destination use each port once per 60 s of TIME_WAIT: when the range is used up, connect() fails with EADDRNOTAVAIL.",
            ..BASE
        },
        Scenario {
            name: "tw-reuse",
            claim: "tcp_tw_reuse=1 (with timestamps) lets connect() take over a TIME_WAIT port once it is tcp_tw_reuse_delay old: the rate is then limited by ports / delay.",
            tw_reuse: 1,
            ..BASE
        },
        Scenario {
            name: "wide-range",
            claim: "A wider ip_local_port_range gives more ports per destination: the same traffic no longer runs out.",
            port_range: (40000, 41999),
            ..BASE
        },
        Scenario {
            name: "max-tw-buckets",
            claim: "A tiny tcp_max_tw_buckets caps TIME_WAIT: past it, closing sockets skip TIME_WAIT (TCPTimeWaitOverflow rises) and their ports are free at once.",
            max_tw_buckets: Some(100),
            ..BASE
        },
        Scenario {
            name: "server-closes",
            claim: "The side that closes first holds the TIME_WAIT: when the backend closes (HTTP/1.0 style), the TIME_WAIT is on the server side and the client's ports stay free.",
            traffic: Traffic::ServerCloses,
            ..BASE
        },
        Scenario {
            name: "proxy",
            claim: "The fix: the same requests through a keep-alive proxy (timewait proxy) reuse a few backend connections: no failures, no TIME_WAIT toward the backend.",
            traffic: Traffic::Proxy,
            ..BASE
        },
        Scenario {
            name: "nginx",
            claim: "nginx's defaults talk to the backend with HTTP/1.0 and Connection: close: every request is a new connection that the backend closes first, so the TIME_WAIT is on the backend and nginx holds none.",
            traffic: Traffic::Nginx { keepalive: false },
            ..BASE
        },
        Scenario {
            name: "nginx-keepalive",
            claim: "The article's nginx fix (upstream keepalive, proxy_http_version 1.1, proxy_set_header Connection \"\"): a few kept-alive backend connections; a TIME_WAIT only when nginx retires one after its keepalive_requests-th request.",
            traffic: Traffic::Nginx { keepalive: true },
            ..BASE
        },
    ]
}

/// The scenario called `name`.
pub fn find(name: &str) -> Option<Scenario> {
    all().into_iter().find(|s| s.name == name)
}
