//! `timewait proxy`: flags or `-c FILE` → the one validated
//! [`Config`] → run.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use timewait_proxy::config::{self, Balance, Config, Invalid, PoolConfig};
use timewait_proxy::headers::ForwardingRules;

use crate::Failure;
use crate::cli::{BalanceArg, ProxyArgs};

fn addr(flag: &str, s: &str) -> Result<SocketAddr, Failure> {
    s.to_socket_addrs()
        .map_err(|e| Failure::Usage(format!("{flag} {s}: {e} (expected HOST:PORT)")))?
        .next()
        .ok_or_else(|| Failure::Usage(format!("{flag} {s}: resolves to no address")))
}

/// A setting out of range, named as the flag (`idle_timeout` → `--idle-timeout`).
fn flag_error(e: Invalid) -> Failure {
    Failure::Usage(format!("--{}: {}", e.field.replace('_', "-"), e.message))
}

fn seconds(field: &'static str, v: f64) -> Result<Duration, Failure> {
    config::seconds(field, v).map_err(flag_error)
}

/// Validates the flags into a configuration; does no I/O but name lookups.
pub fn config(a: &ProxyArgs) -> Result<Config, Failure> {
    let listen = a
        .listen
        .as_deref()
        .ok_or_else(|| Failure::Usage("--listen: required (e.g. --listen 127.0.0.1:8080)".into()))
        .and_then(|s| addr("--listen", s))?;
    if a.upstream.is_empty() {
        return Err(Failure::Usage(
            "--upstream: at least one backend is required (e.g. --upstream 127.0.0.1:9000)".into(),
        ));
    }
    let upstreams = a
        .upstream
        .iter()
        .map(|u| addr("--upstream", u))
        .collect::<Result<Vec<_>, _>>()?;
    let mut cfg = Config::single(listen, upstreams);
    cfg.workers = a.workers;
    cfg.admin = a.admin.as_deref().map(|s| addr("--admin", s)).transpose()?;
    cfg.access_log = a.access_log;
    cfg.max_connections = a.max_connections;
    let l = &mut cfg.listeners[0];
    l.header_timeout = seconds("header_timeout", a.header_timeout)?;
    l.max_headers = a.max_headers;
    l.routes[0].forwarding = std::sync::Arc::new(ForwardingRules {
        via: a.via.clone(),
        ..ForwardingRules::default()
    });
    let g = &mut cfg.groups[0];
    g.balance = match a.balance {
        BalanceArg::RoundRobin => Balance::RoundRobin,
        BalanceArg::LeastConn => Balance::LeastConn,
    };
    g.max_fails = a.max_fails;
    g.fail_timeout = seconds("fail_timeout", a.fail_timeout)?;
    g.pool = PoolConfig {
        max_idle_per_upstream: a.keepalive,
        idle_timeout: seconds("idle_timeout", a.idle_timeout)?,
        max_requests_per_connection: a.max_requests,
        max_lifetime: a
            .max_lifetime
            .map(|v| seconds("max_lifetime", v))
            .transpose()?,
        shared: a.shared_pool,
    };
    g.connect_timeout = seconds("connect_timeout", a.connect_timeout)?;
    g.response_timeout = seconds("response_timeout", a.response_timeout)?;
    g.body_timeout = seconds("body_timeout", a.body_timeout)?;
    cfg.validate().map_err(flag_error)?;
    Ok(cfg)
}

/// Reads `-c FILE`: exit 2 with `file:line` when it is wrong.
fn from_file(path: &std::path::Path) -> Result<Config, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Usage(format!("-c {}: {e}", path.display())))?;
    timewait_proxy::config_file::parse(&path.display().to_string(), &text)
        .map_err(|e| Failure::Usage(e.to_string()))
}

/// Runs until stopped. Prints the bound addresses first (scripts wait for that line).
pub fn run_proxy(a: &ProxyArgs) -> Result<String, Failure> {
    let (cfg, reload_from) = match &a.config {
        Some(path) => (from_file(path)?, Some(path.clone())),
        None => (config(a)?, None),
    };
    let upstreams: Vec<String> = cfg
        .groups
        .iter()
        .flat_map(|g| g.servers.iter().map(ToString::to_string))
        .collect();
    let workers = cfg.workers;
    timewait_proxy::run(cfg, reload_from, |b| announce(&b, workers, &upstreams))
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("proxy: {e}")))?;
    Ok(String::new())
}

fn announce(b: &timewait_proxy::Bound, workers: usize, upstreams: &[String]) {
    let admin = b
        .admin
        .map_or(String::new(), |a| format!(", admin http://{a}/metrics"));
    let listeners: Vec<String> = b.listeners.iter().map(ToString::to_string).collect();
    let mut seen = upstreams.to_vec();
    seen.sort();
    seen.dedup();
    let _ = crate::render::emit(&format!(
        "timewait proxy: listening on {} ({} worker(s), up to {} connections each; open files {}), upstreams {}{}\n",
        listeners.join(" "),
        workers,
        b.max_connections,
        b.nofile,
        seen.join(", "),
        admin
    ));
}
