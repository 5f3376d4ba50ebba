//! Idle upstream connections, per upstream address, for one worker.
//!
//! One worker's pool is used by one thread only, so it needs no lock
//! (`RefCell`). Taking returns the most recently used connection (its
//! backend is the least likely to have timed it out). Closed connections
//! are skipped: hyper's connection task keeps reading an idle connection,
//! so a backend's FIN marks it closed before anyone tries to reuse it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use hyper::client::conn::http1::SendRequest;

use crate::config::PoolConfig;
use crate::metrics::Metrics;

/// One upstream connection, between requests.
pub struct Conn<B> {
    /// Sends requests on it.
    pub sender: SendRequest<B>,
    /// Requests it has carried.
    pub requests: u64,
    /// When it was opened.
    pub born: Instant,
    /// The task driving a pooled connection, stopped when the connection is
    /// dropped: hyper would otherwise end it with a FIN (`shutdown`) before
    /// closing, and the reset `dial` arranged would come too late to spare
    /// this host a TIME_WAIT.
    pub driver: Option<tokio::task::AbortHandle>,
}

impl<B> Drop for Conn<B> {
    fn drop(&mut self) {
        if let Some(task) = self.driver.take() {
            task.abort();
        }
    }
}

struct Idle<B> {
    conn: Conn<B>,
    since: Instant,
}

/// Idle connections by upstream address.
pub struct Pool<B> {
    idle: RefCell<HashMap<SocketAddr, Vec<Idle<B>>>>,
    cfg: PoolConfig,
    metrics: Arc<Metrics>,
}

impl<B> Pool<B> {
    /// An empty pool.
    pub fn new(cfg: PoolConfig, metrics: Arc<Metrics>) -> Pool<B> {
        Pool {
            idle: RefCell::new(HashMap::new()),
            cfg,
            metrics,
        }
    }

    fn usable(&self, c: &Conn<B>, since: Instant, now: Instant) -> bool {
        !c.sender.is_closed()
            && now.duration_since(since) < self.cfg.idle_timeout
            && self
                .cfg
                .max_lifetime
                .is_none_or(|l| now.duration_since(c.born) < l)
    }

    /// The most recently used live connection to `addr`, if any, and how
    /// long it was idle.
    pub fn take(&self, addr: SocketAddr, now: Instant) -> Option<(Conn<B>, std::time::Duration)> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        while let Some(i) = list.pop() {
            self.metrics.pool_idle.fetch_sub(1, Ordering::Relaxed);
            if self.usable(&i.conn, i.since, now) {
                return Some((i.conn, now.duration_since(i.since)));
            }
            // Dropping the sender closes the connection.
        }
        None
    }

    /// Gives a connection back after a complete exchange. It is closed
    /// instead if it is dead, worn out, or the pool for `addr` is full (then
    /// the least recently used one goes).
    pub fn put(&self, addr: SocketAddr, conn: Conn<B>, now: Instant) {
        if conn.sender.is_closed()
            || self
                .cfg
                .max_requests_per_connection
                .is_some_and(|m| conn.requests >= m)
            || self
                .cfg
                .max_lifetime
                .is_some_and(|l| now.duration_since(conn.born) >= l)
            || self.cfg.max_idle_per_upstream == 0
        {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(addr).or_default();
        if list.len() >= self.cfg.max_idle_per_upstream {
            list.remove(0);
            self.metrics.pool_idle.fetch_sub(1, Ordering::Relaxed);
        }
        list.push(Idle { conn, since: now });
        self.metrics.pool_idle.fetch_add(1, Ordering::Relaxed);
    }

    /// Closes connections idle for too long or closed by their backend.
    pub fn sweep(&self, now: Instant) {
        let mut idle = self.idle.borrow_mut();
        for list in idle.values_mut() {
            let before = list.len();
            list.retain(|i| self.usable(&i.conn, i.since, now));
            self.metrics
                .pool_idle
                .fetch_sub((before - list.len()) as i64, Ordering::Relaxed);
        }
    }
}
