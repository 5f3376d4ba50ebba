//! What to load, how hard, and for how long; validated before anything
//! runs.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// The most a run may last, whatever the flags say.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// The most requests a run may make.
pub const MAX_REQUESTS: u64 = 100_000_000;
/// The most connections at once.
pub const MAX_CONCURRENCY: usize = 65_536;

/// What to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `http://host:port/path`: one GET (or `method`) per request.
    Http {
        /// Where.
        addr: SocketAddr,
        /// `Host` header.
        host: String,
        /// Path and query.
        path: String,
    },
    /// `tcp://host:port`: connect, send the payload if any, close.
    Tcp {
        /// Where.
        addr: SocketAddr,
    },
}

impl Target {
    /// Parses `http://…` or `tcp://host:port`.
    pub fn parse(s: &str) -> Result<Target, String> {
        let (http, rest) = if let Some(r) = s.strip_prefix("http://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("tcp://") {
            (false, r)
        } else {
            return Err(format!(
                "{s:?}: expected http://HOST:PORT/PATH or tcp://HOST:PORT"
            ));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) if http => (&rest[..i], &rest[i..]),
            Some(_) => return Err(format!("{s:?}: a tcp:// target has no path")),
            None => (rest, "/"),
        };
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else if http {
            format!("{authority}:80")
        } else {
            return Err(format!("{s:?}: a tcp:// target needs a port"));
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("{s:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("{s:?}: resolves to no address"))?;
        Ok(if http {
            Target::Http {
                addr,
                host: authority.to_string(),
                path: path.to_string(),
            }
        } else {
            Target::Tcp { addr }
        })
    }

    /// The address connected to.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Target::Http { addr, .. } | Target::Tcp { addr } => *addr,
        }
    }
}

/// One request per connection, or many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A new connection per request, closed by this side first (as an
    /// HTTP/1.0 proxy does): each leaves a TIME_WAIT here.
    Close,
    /// Connections kept and reused.
    KeepAlive,
}

/// A validated run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What to load.
    pub target: Target,
    /// How connections are used.
    pub mode: Mode,
    /// Requests in flight at once (closed loop) or the most in flight (open loop).
    pub concurrency: usize,
    /// Requests per second, paced (open loop); `None`: as fast as answers come.
    pub rate: Option<f64>,
    /// Stop after this long…
    pub duration: Option<Duration>,
    /// …or after this many requests.
    pub requests: Option<u64>,
    /// Time for one connect plus exchange.
    pub timeout: Duration,
    /// Runtime threads.
    pub threads: usize,
    /// HTTP method.
    pub method: String,
    /// Extra HTTP headers, `Name: value`.
    pub headers: Vec<String>,
    /// Request body (HTTP), or the bytes sent (TCP).
    pub body: Vec<u8>,
}

/// Whether a target is on this host's loopback (the only place load goes
/// without `--allow-remote`).
pub fn is_local(addr: SocketAddr) -> bool {
    match addr.ip() {
        IpAddr::V4(v) => v.is_loopback(),
        IpAddr::V6(v) => v.is_loopback() || v.to_ipv4_mapped().is_some_and(|v| v.is_loopback()),
    }
}

impl Plan {
    /// Checks the limits; `allow_remote` lifts the loopback-only rule.
    pub fn validate(&self, allow_remote: bool) -> Result<(), (&'static str, String)> {
        if !allow_remote && !is_local(self.target.addr()) {
            return Err((
                "TARGET",
                format!(
                    "{} is not on loopback: load goes only to 127.0.0.0/8 and ::1 (or the namespaces timewait lab makes) unless --allow-remote",
                    self.target.addr()
                ),
            ));
        }
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            return Err((
                "concurrency",
                format!(
                    "must be between 1 and {MAX_CONCURRENCY}, got {}",
                    self.concurrency
                ),
            ));
        }
        if let Some(r) = self.rate
            && !(r.is_finite() && r > 0.0 && r <= 10_000_000.0)
        {
            return Err((
                "rate",
                format!("must be requests per second above 0 and at most 10000000, got {r}"),
            ));
        }
        match (self.duration, self.requests) {
            (None, None) => return Err(("duration", "give --duration S or --requests N".into())),
            (Some(d), _) if d.is_zero() || d > MAX_DURATION => {
                return Err((
                    "duration",
                    format!("must be above 0 and at most {} s", MAX_DURATION.as_secs()),
                ));
            }
            (_, Some(n)) if n == 0 || n > MAX_REQUESTS => {
                return Err((
                    "requests",
                    format!("must be between 1 and {MAX_REQUESTS}, got {n}"),
                ));
            }
            _ => {}
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(600) {
            return Err(("timeout", "must be above 0 and at most 600 s".into()));
        }
        if self.threads == 0 || self.threads > 256 {
            return Err((
                "threads",
                format!("must be between 1 and 256, got {}", self.threads),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid plan toward a remote address, one request.
    pub(crate) fn plan() -> Plan {
        Plan {
            target: Target::Tcp {
                addr: "192.0.2.1:80".parse().unwrap(),
            },
            mode: Mode::Close,
            concurrency: 1,
            rate: None,
            duration: None,
            requests: Some(1),
            timeout: Duration::from_secs(1),
            threads: 1,
            method: "GET".into(),
            headers: vec![],
            body: vec![],
        }
    }

    #[test]
    fn targets_parse() {
        assert_eq!(
            Target::parse("http://127.0.0.1:8080/a?b").unwrap(),
            Target::Http {
                addr: "127.0.0.1:8080".parse().unwrap(),
                host: "127.0.0.1:8080".into(),
                path: "/a?b".into()
            }
        );
        assert_eq!(Target::parse("http://127.0.0.1").unwrap().addr().port(), 80);
        assert_eq!(
            Target::parse("tcp://127.0.0.1:5000").unwrap(),
            Target::Tcp {
                addr: "127.0.0.1:5000".parse().unwrap()
            }
        );
        assert!(Target::parse("tcp://127.0.0.1").is_err());
        assert!(Target::parse("ftp://x").is_err());
        assert!(Target::parse("tcp://127.0.0.1:1/x").is_err());
    }

    #[test]
    fn remote_targets_need_the_flag() {
        let plan = plan();
        assert_eq!(plan.validate(false).unwrap_err().0, "TARGET");
        assert!(plan.validate(true).is_ok());
        let mut p = plan.clone();
        p.requests = None;
        assert_eq!(p.validate(true).unwrap_err().0, "duration");
        assert!(is_local("[::1]:1".parse().unwrap()));
    }
}
