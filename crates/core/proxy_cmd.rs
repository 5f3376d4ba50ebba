//! `timewait proxy`: flags → validated [`ProxyConfig`] → run.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use timewait_proxy::ProxyConfig;
use timewait_proxy::config::{Balance, Engine, PoolConfig};
use timewait_proxy::file::RoutedConfig;

use crate::Failure;
use crate::cli::{BalanceArg, EngineArg, ProxyArgs};

fn addr(flag: &str, s: &str) -> Result<SocketAddr, Failure> {
    s.to_socket_addrs()
        .map_err(|e| Failure::Usage(format!("{flag} {s}: {e} (expected HOST:PORT)")))?
        .next()
        .ok_or_else(|| Failure::Usage(format!("{flag} {s}: resolves to no address")))
}

fn seconds(flag: &str, v: f64, max: f64) -> Result<Duration, Failure> {
    if v.is_finite() && v > 0.0 && v <= max {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(Failure::Usage(format!(
            "{flag}: must be seconds above 0 and at most {max}, got {v}"
        )))
    }
}

/// Validates the flags into a configuration; does no I/O but name lookups.
pub fn config(a: &ProxyArgs) -> Result<ProxyConfig, Failure> {
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
    if a.workers == 0 || a.workers > 1024 {
        return Err(Failure::Usage(format!(
            "--workers: must be between 1 and 1024, got {}",
            a.workers
        )));
    }
    if a.max_requests == Some(0) {
        return Err(Failure::Usage("--max-requests: must be at least 1".into()));
    }
    if a.max_fails == 0 {
        return Err(Failure::Usage("--max-fails: must be at least 1".into()));
    }
    let mut cfg = ProxyConfig::new(listen, upstreams);
    cfg.workers = a.workers;
    cfg.balance = match a.balance {
        BalanceArg::RoundRobin => Balance::RoundRobin,
        BalanceArg::LeastConn => Balance::LeastConn,
    };
    cfg.max_fails = a.max_fails;
    cfg.engine = match a.engine {
        EngineArg::Hyper => Engine::Hyper,
        EngineArg::Lean => Engine::Lean,
    };
    cfg.fail_timeout = seconds("--fail-timeout", a.fail_timeout, 3600.0)?;
    cfg.admin = a.admin.as_deref().map(|s| addr("--admin", s)).transpose()?;
    cfg.pool = PoolConfig {
        max_idle_per_upstream: a.keepalive,
        idle_timeout: seconds("--idle-timeout", a.idle_timeout, 3600.0)?,
        max_requests_per_connection: a.max_requests,
        max_lifetime: a
            .max_lifetime
            .map(|v| seconds("--max-lifetime", v, 86_400.0))
            .transpose()?,
        shared: a.shared_pool,
    };
    cfg.connect_timeout = seconds("--connect-timeout", a.connect_timeout, 600.0)?;
    cfg.response_header_timeout = seconds("--response-timeout", a.response_timeout, 3600.0)?;
    cfg.client_header_timeout = seconds("--header-timeout", a.header_timeout, 3600.0)?;
    cfg.body_timeout = seconds("--body-timeout", a.body_timeout, 3600.0)?;
    cfg.forwarding.via = a.via.clone();
    if !(1..=128).contains(&a.max_headers) {
        return Err(Failure::Usage(format!(
            "--max-headers: must be between 1 and 128, got {}",
            a.max_headers
        )));
    }
    cfg.max_headers = a.max_headers;
    if a.access_log && a.engine == EngineArg::Hyper {
        return Err(Failure::Usage(
            "--access-log: the access log is written by the lean engine; drop --engine hyper"
                .into(),
        ));
    }
    cfg.access_log = a.access_log;
    if a.shared_pool && a.engine == EngineArg::Hyper {
        return Err(Failure::Usage(
            "--shared-pool: the shared pool is the lean engine's; drop --engine hyper".into(),
        ));
    }
    Ok(cfg)
}

/// Reads `-c FILE`: exit 2 with `file:line` when it is wrong.
fn routed(a: &ProxyArgs, path: &std::path::Path) -> Result<RoutedConfig, Failure> {
    if a.engine == EngineArg::Hyper {
        return Err(Failure::Usage(
            "-c: configuration files run on the lean engine; drop --engine hyper".into(),
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Usage(format!("-c {}: {e}", path.display())))?;
    timewait_proxy::file::parse(&path.display().to_string(), &text)
        .map_err(|e| Failure::Usage(e.to_string()))
}

/// Runs until killed. Prints the bound addresses first (scripts wait for that line).
pub fn run_proxy(a: &ProxyArgs) -> Result<String, Failure> {
    if let Some(path) = &a.config {
        let cfg = routed(a, path)?;
        let groups: Vec<String> = cfg
            .groups
            .iter()
            .flat_map(|g| g.upstreams.iter().map(ToString::to_string))
            .collect();
        let workers = cfg.workers;
        timewait_proxy::server::run_routed(cfg, Some(path.clone()), |b| {
            announce(&b, workers, &groups)
        })
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("proxy: {e}")))?;
        return Ok(String::new());
    }
    let cfg = config(a)?;
    let upstreams: Vec<String> = cfg.upstreams.iter().map(ToString::to_string).collect();
    let workers = cfg.workers;
    timewait_proxy::run(cfg, |b| announce(&b, workers, &upstreams))
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("proxy: {e}")))?;
    Ok(String::new())
}

fn announce(b: &timewait_proxy::server::Bound, workers: usize, upstreams: &[String]) {
    let admin = b
        .admin
        .map_or(String::new(), |a| format!(", admin http://{a}/metrics"));
    let listeners: Vec<String> = b.listeners.iter().map(ToString::to_string).collect();
    let mut seen = upstreams.to_vec();
    seen.sort();
    seen.dedup();
    let _ = crate::render::emit(&format!(
        "timewait proxy: listening on {} ({} worker(s)), upstreams {}{}\n",
        listeners.join(" "),
        workers,
        seen.join(", "),
        admin
    ));
}
