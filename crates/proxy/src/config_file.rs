//! `timewait proxy -c FILE.toml` → the one [`Config`]: several listeners,
//! routes by host and path prefix to named upstream groups, and header
//! rules whose merging is explicit. TOML only: the values go through the
//! same defaults, ranges and [`Config::validate`] as the flags. Pure;
//! errors name `file:line`.
//!
//! ```toml
//! workers = 2
//! admin = "127.0.0.1:9809"
//! access_log = true              # a line per request on stdout
//! max_connections = 10000        # per worker; default from the fd limit
//!
//! [headers]                      # apply to every route unless it says otherwise
//! set = { "X-Proxy" = "edge-1" }
//! remove = ["X-Debug"]
//! via = "edge-1"
//! forwarded_proto = "https"
//!
//! [[listener]]
//! listen = "0.0.0.0:8080"
//! header_timeout = 10.0          # seconds for a whole request head
//! max_headers = 100              # more: 431
//!
//! [[listener.route]]
//! path_prefix = "/api/"
//! upstream = "api"
//! headers = { set = { "X-Route" = "api" } }   # added to the global rules
//!
//! [[listener.route]]
//! host = "static.example.com"    # exact, or "*.example.com"
//! upstream = "static"
//! headers = { inherit = false }  # only this route's rules (here: none)
//!
//! [upstream.api]
//! servers = ["10.0.0.5:9000", "10.0.0.6:9000"]
//! balance = "least-conn"
//! keepalive = 64
//! idle_timeout = 4.0
//! # also: max_requests, max_lifetime, max_fails, fail_timeout,
//! # connect_timeout, response_timeout, body_timeout (seconds), shared_pool
//!
//! [upstream.static]
//! servers = ["10.0.0.7:8000"]
//! ```
//!
//! Routes that name the same upstream share its pool and its health state;
//! each route has its own header rules. See [`crate::route`] for which
//! route a request takes.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use serde::Deserialize;

use crate::config::{self, Balance, Config, Group, Invalid, Listener, PoolConfig, defaults};
use crate::headers::ForwardingRules;
use crate::route::{HostMatch, Route};

/// Why a configuration file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// 1-based line (1 when the error is about the file as a whole).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    workers: Option<usize>,
    admin: Option<String>,
    #[serde(default)]
    access_log: bool,
    max_connections: Option<usize>,
    #[serde(default)]
    headers: HeaderRules,
    #[serde(default)]
    listener: Vec<FileListener>,
    #[serde(default)]
    upstream: BTreeMap<String, FileUpstream>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct HeaderRules {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
    via: Option<String>,
    forwarded_proto: Option<String>,
    /// On a route: whether the global rules apply too (default true).
    inherit: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileListener {
    listen: String,
    header_timeout: Option<f64>,
    max_headers: Option<usize>,
    #[serde(default)]
    route: Vec<FileRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    host: Option<String>,
    path_prefix: Option<String>,
    upstream: String,
    #[serde(default)]
    headers: HeaderRules,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUpstream {
    servers: Vec<String>,
    balance: Option<String>,
    keepalive: Option<usize>,
    idle_timeout: Option<f64>,
    max_requests: Option<u64>,
    max_lifetime: Option<f64>,
    max_fails: Option<u32>,
    fail_timeout: Option<f64>,
    connect_timeout: Option<f64>,
    response_timeout: Option<f64>,
    body_timeout: Option<f64>,
    shared_pool: Option<bool>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// Parses a configuration file's text. `file` is used in errors.
pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
    let err = |line: usize, message: String| ConfigError {
        file: file.to_string(),
        line,
        message,
    };
    // Line of the first occurrence of a needle, for errors found after parsing.
    let find = |needle: &str| text.find(needle).map_or(1, |o| line_of(text, o));
    let invalid = |e: Invalid| err(find(e.field), e.to_string());
    let raw: FileConfig = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(text, s.start));
        err(line, e.message().to_string())
    })?;
    if raw.listener.is_empty() {
        return Err(err(1, "no [[listener]]: at least one is needed".into()));
    }
    let addr = |s: &str| -> Result<SocketAddr, ConfigError> {
        s.to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| err(find(s), format!("{s:?} is not a HOST:PORT address")))
    };
    let secs = |field: &'static str, v: Option<f64>, default: f64| {
        config::seconds(field, v.unwrap_or(default)).map_err(invalid)
    };
    // Groups by name, in the order routes first name them.
    let mut names: Vec<&str> = Vec::new();
    let mut groups: Vec<Group> = Vec::new();
    let mut group_of = |name: &str| -> Result<usize, ConfigError> {
        if let Some(i) = names.iter().position(|n| *n == name) {
            return Ok(i);
        }
        let Some((key, up)) = raw.upstream.get_key_value(name) else {
            return Err(err(
                find(&format!("\"{name}\"")),
                format!("route names upstream {name:?}, which has no [upstream.{name}] section"),
            ));
        };
        let servers = up
            .servers
            .iter()
            .map(|s| addr(s))
            .collect::<Result<_, _>>()?;
        let mut g = Group::new(name, servers);
        g.balance = match up.balance.as_deref() {
            None | Some("round-robin") => Balance::RoundRobin,
            Some("least-conn") => Balance::LeastConn,
            Some(b) => {
                return Err(err(
                    find(b),
                    format!("balance {b:?}: expected \"round-robin\" or \"least-conn\""),
                ));
            }
        };
        g.pool = PoolConfig {
            max_idle_per_upstream: up.keepalive.unwrap_or(defaults::KEEPALIVE),
            idle_timeout: secs("idle_timeout", up.idle_timeout, defaults::IDLE_TIMEOUT)?,
            max_requests_per_connection: up.max_requests,
            max_lifetime: up
                .max_lifetime
                .map(|v| config::seconds("max_lifetime", v).map_err(invalid))
                .transpose()?,
            shared: up.shared_pool.unwrap_or(false),
        };
        g.max_fails = up.max_fails.unwrap_or(defaults::MAX_FAILS);
        g.fail_timeout = secs("fail_timeout", up.fail_timeout, defaults::FAIL_TIMEOUT)?;
        g.connect_timeout = secs(
            "connect_timeout",
            up.connect_timeout,
            defaults::CONNECT_TIMEOUT,
        )?;
        g.response_timeout = secs(
            "response_timeout",
            up.response_timeout,
            defaults::RESPONSE_TIMEOUT,
        )?;
        g.body_timeout = secs("body_timeout", up.body_timeout, defaults::BODY_TIMEOUT)?;
        names.push(key);
        groups.push(g);
        Ok(groups.len() - 1)
    };
    let mut listeners = Vec::new();
    for l in &raw.listener {
        let listen = addr(&l.listen)?;
        let mut routes = Vec::new();
        for r in &l.route {
            let group = group_of(&r.upstream)?;
            let forwarding =
                merge_rules(&raw.headers, &r.headers).map_err(|m| err(find(&r.upstream), m))?;
            let host = HostMatch::parse(r.host.as_deref())
                .map_err(|m| err(r.host.as_deref().map_or(1, &find), m))?;
            let path_prefix = r.path_prefix.clone().unwrap_or_else(|| "/".into());
            if !path_prefix.starts_with('/') {
                return Err(err(
                    find(&path_prefix),
                    format!("path_prefix {path_prefix:?} must start with /"),
                ));
            }
            routes.push(Route {
                host,
                path_prefix,
                group,
                forwarding: Arc::new(forwarding),
            });
        }
        if routes.is_empty() {
            return Err(err(
                find(&l.listen),
                format!("listener {} has no [[listener.route]]", l.listen),
            ));
        }
        listeners.push(Listener {
            listen,
            routes,
            header_timeout: secs("header_timeout", l.header_timeout, defaults::HEADER_TIMEOUT)?,
            max_headers: l.max_headers.unwrap_or(defaults::MAX_HEADERS),
        });
    }
    let cfg = Config {
        workers: raw.workers.unwrap_or(defaults::WORKERS),
        admin: raw.admin.as_deref().map(addr).transpose()?,
        access_log: raw.access_log,
        max_connections: raw.max_connections,
        listeners,
        groups,
    };
    cfg.validate().map_err(invalid)?;
    Ok(cfg)
}

/// A route's header rules over the global ones: the route's `set` adds to
/// (and overrides by name) the global `set`, `remove` lists are joined, and
/// `inherit = false` starts from nothing instead. Nothing is dropped silently.
fn merge_rules(global: &HeaderRules, route: &HeaderRules) -> Result<ForwardingRules, String> {
    let base = if route.inherit.unwrap_or(true) {
        global.clone()
    } else {
        HeaderRules::default()
    };
    let mut set = base.set.clone();
    set.extend(route.set.clone());
    let mut remove = base.remove.clone();
    remove.extend(route.remove.iter().cloned());
    let name = |n: &str| {
        HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("{n:?} is not a header name"))
    };
    Ok(ForwardingRules {
        forwarded_proto: route
            .forwarded_proto
            .clone()
            .or(base.forwarded_proto.clone())
            .or(Some("http".into())),
        via: route.via.clone().or(base.via.clone()),
        set: set
            .iter()
            .map(|(n, v)| {
                Ok((
                    name(n)?,
                    HeaderValue::from_str(v).map_err(|_| format!("{v:?} is not a header value"))?,
                ))
            })
            .collect::<Result<_, String>>()?,
        remove: remove.iter().map(|n| name(n)).collect::<Result<_, _>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
workers = 2

[headers]
set = { "X-Proxy" = "edge" }
remove = ["X-Debug"]

[[listener]]
listen = "127.0.0.1:8080"
header_timeout = 3
max_headers = 50

[[listener.route]]
path_prefix = "/api/"
upstream = "api"
headers = { set = { "X-Route" = "api" } }

[[listener.route]]
path_prefix = "/api/v2/"
upstream = "api"

[[listener.route]]
host = "static.example.com"
upstream = "static"
headers = { inherit = false }

[[listener.route]]
host = "*.example.com"
upstream = "static"

[[listener.route]]
upstream = "web"

[upstream.api]
servers = ["127.0.0.1:9000", "127.0.0.1:9001"]
balance = "least-conn"
keepalive = 64
max_lifetime = 30
body_timeout = 5

[upstream.static]
servers = ["127.0.0.1:9100"]

[upstream.web]
servers = ["127.0.0.1:9200"]
"#;

    fn route_of<'c>(c: &'c Config, host: Option<&str>, path: &str) -> Option<&'c Route> {
        crate::route::route(&c.listeners[0].routes, host, path)
    }

    #[test]
    fn parses_and_routes() {
        let c = parse("proxy.toml", SAMPLE).unwrap();
        assert_eq!(c.workers, 2);
        let g = |host: Option<&str>, path: &str| {
            route_of(&c, host, path).map(|r| c.groups[r.group].servers[0].port())
        };
        assert_eq!(g(Some("x"), "/api/users"), Some(9000));
        assert_eq!(g(Some("x"), "/api/v2/users"), Some(9000), "longest prefix");
        assert_eq!(
            g(Some("static.example.com:8080"), "/api/x"),
            Some(9100),
            "host beats path"
        );
        assert_eq!(g(Some("img.example.com"), "/"), Some(9100), "wildcard");
        assert_eq!(
            g(Some("example.com"), "/"),
            Some(9200),
            "*.example.com is only subdomains"
        );
        assert_eq!(g(None, "/anything"), Some(9200));
        assert_eq!(
            g(Some("ünïcode.éxample.com"), "/"),
            Some(9200),
            "no panic on non-ASCII hosts"
        );
        assert_eq!(g(Some("[::1]:8080"), "/"), Some(9200));
        let api_route = route_of(&c, None, "/api/").unwrap();
        let api = &c.groups[api_route.group];
        assert_eq!(api.balance, Balance::LeastConn);
        assert_eq!(api.pool.max_idle_per_upstream, 64);
        assert_eq!(
            api.pool.max_lifetime,
            Some(std::time::Duration::from_secs(30))
        );
        assert_eq!(api.body_timeout, std::time::Duration::from_secs(5));
        let names: Vec<&str> = api_route
            .forwarding
            .set
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(
            names,
            ["x-proxy", "x-route"],
            "route rules add to the global ones"
        );
        let stat = route_of(&c, Some("static.example.com"), "/").unwrap();
        assert!(
            stat.forwarding.set.is_empty() && stat.forwarding.remove.is_empty(),
            "inherit = false"
        );
        // Two routes to one upstream: one group (one pool, one health state).
        let v2 = route_of(&c, None, "/api/v2/x").unwrap();
        assert_eq!(v2.group, api_route.group);
        assert_eq!(c.groups.len(), 3);
        assert_eq!(
            c.listeners[0].header_timeout,
            std::time::Duration::from_secs(3)
        );
        assert_eq!(c.listeners[0].max_headers, 50);
    }

    #[test]
    fn values_out_of_range_are_refused_as_the_flags_refuse_them() {
        for (from, to, field) in [
            (
                "keepalive = 64",
                "keepalive = 64\nmax_fails = 0",
                "max_fails",
            ),
            (
                "keepalive = 64",
                "keepalive = 64\nmax_requests = 0",
                "max_requests",
            ),
            ("max_lifetime = 30", "max_lifetime = 86401", "max_lifetime"),
            ("body_timeout = 5", "body_timeout = 0", "body_timeout"),
            ("max_headers = 50", "max_headers = 129", "max_headers"),
            (
                "header_timeout = 3",
                "header_timeout = -1",
                "header_timeout",
            ),
            ("workers = 2", "workers = 0", "workers"),
        ] {
            let text = SAMPLE.replace(from, to);
            let e = parse("p.toml", &text).unwrap_err();
            assert!(e.message.starts_with(field), "{field}: {e}");
            assert_eq!(e.line, line_of(&text, text.find(field).unwrap()), "{e}");
        }
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse(
            "p.toml",
            "[[listener]]\nlisten = \"127.0.0.1:1\"\n[[listener.route]]\nupstream = \"nope\"\n",
        )
        .unwrap_err();
        assert_eq!((e.line, e.file.as_str()), (4, "p.toml"), "{e}");
        assert!(e.message.contains("[upstream.nope]"), "{e}");
        let e = parse("p.toml", "workers = 2\nbogus = 1\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        let e = parse("p.toml", "workers = \n").unwrap_err();
        assert_eq!(e.line, 1, "{e}");
        assert!(
            parse("p.toml", "")
                .unwrap_err()
                .message
                .contains("listener")
        );
        let bad_host = SAMPLE.replace("*.example.com", "a*b.example.com");
        assert!(
            parse("p.toml", &bad_host)
                .unwrap_err()
                .message
                .contains("host")
        );
    }
}
