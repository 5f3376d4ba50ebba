//! `timewait proxy -c FILE.toml`: several listeners, routes by host and path
//! prefix to named upstream groups, and header rules whose merging is
//! explicit. Parsing and route matching are pure; errors name `file:line`.
//!
//! ```toml
//! workers = 2
//! admin = "127.0.0.1:9809"
//! access_log = true              # a line per request on stdout
//!
//! [headers]                      # apply to every route unless it says otherwise
//! set = { "X-Proxy" = "edge-1" }
//! remove = ["X-Debug"]
//! via = "edge-1"
//! forwarded_proto = "https"
//!
//! [[listener]]
//! listen = "0.0.0.0:8080"
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
//! For a request, the routes of its listener whose host matches (exact
//! beats wildcard beats none given) and whose path prefix starts its path
//! compete; the most specific host, then the longest prefix, wins. No match
//! is a 404.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde::Deserialize;

use crate::config::{Balance, PoolConfig, ProxyConfig};
use crate::headers::ForwardingRules;

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

/// How a route matches the Host header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// Any host.
    Any,
    /// This host exactly (case-insensitive, port ignored).
    Exact(String),
    /// A subdomain of this domain (`*.example.com` matches `a.example.com`).
    Suffix(String),
}

impl HostMatch {
    fn matches(&self, host: Option<&str>) -> bool {
        let host = host.map(strip_port);
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(e) => host.is_some_and(|h| h.eq_ignore_ascii_case(e)),
            // Bytes, not str slices: a non-ASCII Host must not split a character.
            HostMatch::Suffix(s) => host.is_some_and(|h| {
                let (h, s) = (h.as_bytes(), s.as_bytes());
                h.len() > s.len() + 1
                    && h[h.len() - s.len()..].eq_ignore_ascii_case(s)
                    && h[h.len() - s.len() - 1] == b'.'
            }),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            HostMatch::Exact(_) => 2,
            HostMatch::Suffix(_) => 1,
            HostMatch::Any => 0,
        }
    }
}

/// `name:port` → `name`; `[v6]:port` → `[v6]`; anything else unchanged.
fn strip_port(h: &str) -> &str {
    match h.rsplit_once(':') {
        Some((name, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!name.contains(':') || name.ends_with(']')) =>
        {
            name
        }
        _ => h,
    }
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Host rule.
    pub host: HostMatch,
    /// Path prefix (`/` for all).
    pub path_prefix: String,
    /// Index into [`RoutedConfig::groups`].
    pub group: usize,
}

/// The route for a request, if any (see the module docs for the order).
pub fn route(routes: &[Route], host: Option<&str>, path: &str) -> Option<usize> {
    routes
        .iter()
        .filter(|r| r.host.matches(host) && path.starts_with(r.path_prefix.as_str()))
        .max_by_key(|r| (r.host.rank(), r.path_prefix.len()))
        .map(|r| r.group)
}

/// One listener and its routes.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    /// Address.
    pub listen: SocketAddr,
    /// Routes.
    pub routes: Vec<Route>,
}

/// A whole proxy run from a file.
#[derive(Debug, Clone)]
pub struct RoutedConfig {
    /// Worker threads.
    pub workers: usize,
    /// Admin address.
    pub admin: Option<SocketAddr>,
    /// Write a line per request to stdout.
    pub access_log: bool,
    /// Listeners.
    pub listeners: Vec<ListenerSpec>,
    /// One configuration per (upstream group, header rules) pair; routes
    /// point here.
    pub groups: Vec<ProxyConfig>,
}

impl RoutedConfig {
    /// One listener, one group, every request to it: what the flags describe.
    pub fn single(cfg: ProxyConfig) -> RoutedConfig {
        RoutedConfig {
            workers: cfg.workers,
            admin: cfg.admin,
            access_log: cfg.access_log,
            listeners: vec![ListenerSpec {
                listen: cfg.listen,
                routes: vec![Route {
                    host: HostMatch::Any,
                    path_prefix: "/".into(),
                    group: 0,
                }],
            }],
            groups: vec![cfg],
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// Parses a configuration file's text. `file` is used in errors.
pub fn parse(file: &str, text: &str) -> Result<RoutedConfig, ConfigError> {
    let err = |line: usize, message: String| ConfigError {
        file: file.to_string(),
        line,
        message,
    };
    // Line of the first occurrence of a needle, for errors found after parsing.
    let find = |needle: &str| text.find(needle).map_or(1, |o| line_of(text, o));
    let raw: FileConfig = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(text, s.start));
        err(line, e.message().to_string())
    })?;
    if raw.listener.is_empty() {
        return Err(err(1, "no [[listener]]: at least one is needed".into()));
    }
    let workers = raw.workers.unwrap_or(1);
    if !(1..=1024).contains(&workers) {
        return Err(err(
            find("workers"),
            format!("workers must be between 1 and 1024, got {workers}"),
        ));
    }
    let addr = |s: &str| -> Result<SocketAddr, ConfigError> {
        s.to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| err(find(s), format!("{s:?} is not a HOST:PORT address")))
    };
    let admin = raw.admin.as_deref().map(addr).transpose()?;
    let secs = |name: &str, v: Option<f64>, default: Duration| -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(v) if v.is_finite() && v > 0.0 && v <= 3600.0 => Ok(Duration::from_secs_f64(v)),
            Some(v) => Err(err(
                find(name),
                format!("{name} must be seconds above 0 and at most 3600, got {v}"),
            )),
        }
    };
    let mut groups: Vec<ProxyConfig> = Vec::new();
    let mut listeners = Vec::new();
    for l in &raw.listener {
        let listen = addr(&l.listen)?;
        if l.route.is_empty() {
            return Err(err(
                find(&l.listen),
                format!("listener {} has no [[listener.route]]", l.listen),
            ));
        }
        let mut routes = Vec::new();
        for r in &l.route {
            let Some(up) = raw.upstream.get(&r.upstream) else {
                return Err(err(
                    find(&format!("\"{}\"", r.upstream)),
                    format!(
                        "route names upstream {:?}, which has no [upstream.{}] section",
                        r.upstream, r.upstream
                    ),
                ));
            };
            if up.servers.is_empty() {
                return Err(err(
                    find(&format!("[upstream.{}]", r.upstream)),
                    format!("upstream {:?} has no servers", r.upstream),
                ));
            }
            let mut cfg = ProxyConfig::new(
                listen,
                up.servers
                    .iter()
                    .map(|s| addr(s))
                    .collect::<Result<_, _>>()?,
            );
            cfg.balance = match up.balance.as_deref() {
                None | Some("round-robin") => Balance::RoundRobin,
                Some("least-conn") => Balance::LeastConn,
                Some(b) => {
                    return Err(err(
                        find(b),
                        format!("balance {b:?}: expected \"round-robin\" or \"least-conn\""),
                    ));
                }
            };
            let defaults = PoolConfig::default();
            cfg.pool = PoolConfig {
                max_idle_per_upstream: up.keepalive.unwrap_or(defaults.max_idle_per_upstream),
                idle_timeout: secs("idle_timeout", up.idle_timeout, defaults.idle_timeout)?,
                max_requests_per_connection: up.max_requests.filter(|&n| n > 0),
                max_lifetime: up
                    .max_lifetime
                    .map(|v| secs("max_lifetime", Some(v), Duration::ZERO))
                    .transpose()?,
                shared: up.shared_pool.unwrap_or(false),
            };
            cfg.max_fails = up.max_fails.unwrap_or(cfg.max_fails).max(1);
            cfg.fail_timeout = secs("fail_timeout", up.fail_timeout, cfg.fail_timeout)?;
            cfg.connect_timeout = secs("connect_timeout", up.connect_timeout, cfg.connect_timeout)?;
            cfg.response_header_timeout = secs(
                "response_timeout",
                up.response_timeout,
                cfg.response_header_timeout,
            )?;
            cfg.body_timeout = secs("body_timeout", up.body_timeout, cfg.body_timeout)?;
            cfg.forwarding =
                merge_rules(&raw.headers, &r.headers).map_err(|m| err(find(&r.upstream), m))?;
            let host = match r.host.as_deref() {
                None => HostMatch::Any,
                Some(h) => match h.strip_prefix("*.") {
                    Some(d) if !d.is_empty() => HostMatch::Suffix(d.to_string()),
                    _ if h.contains('*') || h.is_empty() => {
                        return Err(err(
                            find(h),
                            format!("host {h:?}: expected a name or *.domain"),
                        ));
                    }
                    _ => HostMatch::Exact(h.to_string()),
                },
            };
            let path_prefix = r.path_prefix.clone().unwrap_or_else(|| "/".into());
            if !path_prefix.starts_with('/') {
                return Err(err(
                    find(&path_prefix),
                    format!("path_prefix {path_prefix:?} must start with /"),
                ));
            }
            groups.push(cfg);
            routes.push(Route {
                host,
                path_prefix,
                group: groups.len() - 1,
            });
        }
        listeners.push(ListenerSpec { listen, routes });
    }
    Ok(RoutedConfig {
        workers,
        admin,
        access_log: raw.access_log,
        listeners,
        groups,
    })
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

    #[test]
    fn parses_and_routes() {
        let c = parse("proxy.toml", SAMPLE).unwrap();
        assert_eq!(c.workers, 2);
        let r = &c.listeners[0].routes;
        let g = |host: Option<&str>, path: &str| {
            route(r, host, path).map(|i| c.groups[i].upstreams[0].port())
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
        let api = &c.groups[route(r, None, "/api/").unwrap()];
        assert_eq!(api.balance, Balance::LeastConn);
        assert_eq!(api.pool.max_idle_per_upstream, 64);
        assert_eq!(
            api.pool.max_lifetime,
            Some(std::time::Duration::from_secs(30))
        );
        assert_eq!(api.body_timeout, std::time::Duration::from_secs(5));
        let names: Vec<&str> = api.forwarding.set.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["x-proxy", "x-route"],
            "route rules add to the global ones"
        );
        let stat = &c.groups[route(r, Some("static.example.com"), "/").unwrap()];
        assert!(
            stat.forwarding.set.is_empty() && stat.forwarding.remove.is_empty(),
            "inherit = false"
        );
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
