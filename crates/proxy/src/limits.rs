//! File descriptors: the proxy raises its soft `RLIMIT_NOFILE` to the hard
//! limit at start (as nginx's `worker_rlimit_nofile` and Go's runtime do),
//! and derives how many client connections a worker may serve at once from
//! it, leaving room for a backend connection per client, the pools' idle
//! connections and the listeners. Past that, clients wait in the kernel's
//! accept queue instead of failing mid-request on EMFILE.

use std::io;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

use crate::config::Config;

/// Descriptors kept for everything that is neither a client nor a backend
/// connection (stdio, epoll, the signal thread, admin connections).
const RESERVED: u64 = 64;

/// Raises the soft limit on open files to the hard limit; returns the
/// limit now in force.
pub(crate) fn raise_nofile() -> io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(getrlimit(Resource::RLIMIT_NOFILE)?.0)
}

/// Client connections per worker when the configuration does not say:
/// each client may hold one backend connection, and each worker's pools
/// may hold up to `keepalive` idle connections per backend.
pub(crate) fn max_connections(cfg: &Config, nofile: u64) -> usize {
    let workers = cfg.workers.max(1) as u64;
    let idle: u64 = cfg
        .groups
        .iter()
        .map(|g| {
            let per_worker = g.pool.max_idle_per_upstream as u64 * g.servers.len() as u64;
            if g.pool.shared {
                per_worker
            } else {
                per_worker * workers
            }
        })
        .sum();
    let listeners = cfg.listeners.len() as u64 * workers;
    let left = nofile.saturating_sub(RESERVED + idle + listeners);
    usize::try_from((left / 2 / workers).max(1)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_left_for_a_backend_connection_per_client_and_the_idle_pool() {
        let mut c = Config::single(
            "127.0.0.1:1".parse().unwrap(),
            vec!["127.0.0.1:2".parse().unwrap()],
        );
        // 1024 - 64 reserved - 128 idle - 1 listener = 831, half of it.
        assert_eq!(max_connections(&c, 1024), 415);
        c.workers = 2;
        assert_eq!(max_connections(&c, 1024), (1024 - 64 - 256 - 2) / 2 / 2);
        assert_eq!(max_connections(&c, 100), 1, "never zero");
    }
}
