//! An upstream group's backends as one worker sees them: the balancer
//! (round-robin or least-connections) and passive health (after
//! `max_fails` failures in a row a backend is left alone for
//! `fail_timeout`, then tried again, like nginx's `max_fails`). One per
//! group and worker, shared by every route that names the group.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Balance, Group};
use crate::metrics::Metrics;

/// One backend: requests in flight, recent failures.
pub(crate) struct Backend {
    pub(crate) addr: SocketAddr,
    active: Cell<u32>,
    fails: Cell<u32>,
    down_until: Cell<Option<Instant>>,
}

/// Counts a request in flight on a backend until dropped.
pub(crate) struct Active(Rc<Backend>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.set(self.0.active.get().saturating_sub(1));
    }
}

impl Backend {
    fn up(&self, now: Instant) -> bool {
        self.down_until.get().is_none_or(|t| now >= t)
    }
}

/// The backends of one group and how to choose among them.
pub(crate) struct Upstreams {
    pub(crate) list: Vec<Rc<Backend>>,
    next: Cell<usize>,
    balance: Balance,
    max_fails: u32,
    fail_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Upstreams {
    pub(crate) fn new(g: &Group, metrics: Arc<Metrics>) -> Upstreams {
        Upstreams {
            list: g
                .servers
                .iter()
                .map(|&addr| {
                    Rc::new(Backend {
                        addr,
                        active: Cell::new(0),
                        fails: Cell::new(0),
                        down_until: Cell::new(None),
                    })
                })
                .collect(),
            next: Cell::new(0),
            balance: g.balance,
            max_fails: g.max_fails,
            fail_timeout: g.fail_timeout,
            metrics,
        }
    }

    /// The backend for the next attempt: not yet tried for this request,
    /// healthy if any is, then by the balancing rule.
    pub(crate) fn pick(&self, tried: &[usize], now: Instant) -> usize {
        let n = self.list.len();
        let start = self.next.get();
        self.next.set(start.wrapping_add(1));
        let order = (0..n)
            .map(|k| (start + k) % n)
            .filter(|i| !tried.contains(i));
        // The healthy ones if any (no allocation: this runs per request).
        let any_healthy = order.clone().any(|i| self.list[i].up(now));
        let mut candidates = order.filter(|&i| !any_healthy || self.list[i].up(now));
        let chosen = match self.balance {
            Balance::RoundRobin => candidates.next(),
            Balance::LeastConn => candidates.min_by_key(|&i| self.list[i].active.get()),
        };
        chosen.unwrap_or(start % n)
    }

    /// Counts a request in flight on backend `i`.
    pub(crate) fn begin(&self, i: usize) -> Active {
        let b = &self.list[i];
        b.active.set(b.active.get() + 1);
        Active(b.clone())
    }

    /// Backend `i` answered.
    pub(crate) fn succeeded(&self, i: usize) {
        let b = &self.list[i];
        b.fails.set(0);
        b.down_until.set(None);
    }

    /// Backend `i` failed a request (see the module docs).
    pub(crate) fn failed(&self, i: usize, now: Instant) {
        let b = &self.list[i];
        let n = b.fails.get() + 1;
        if n >= self.max_fails {
            b.fails.set(0);
            b.down_until.set(Some(now + self.fail_timeout));
            Metrics::inc(&self.metrics.ejections);
        } else {
            b.fails.set(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(n: u16, balance: Balance) -> Upstreams {
        let mut g = Group::new(
            "g",
            (0..n)
                .map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i)))
                .collect(),
        );
        g.balance = balance;
        g.max_fails = 2;
        g.fail_timeout = Duration::from_secs(10);
        Upstreams::new(&g, Arc::default())
    }

    #[test]
    fn round_robin_takes_turns_and_skips_what_was_tried() {
        let u = group(3, Balance::RoundRobin);
        let t = Instant::now();
        assert_eq!([u.pick(&[], t), u.pick(&[], t), u.pick(&[], t)], [0, 1, 2]);
        assert_eq!(u.pick(&[0], t), 1);
    }

    #[test]
    fn a_backend_failing_max_fails_times_is_left_alone_for_fail_timeout() {
        let u = group(2, Balance::RoundRobin);
        let t = Instant::now();
        u.failed(0, t);
        u.failed(0, t);
        for _ in 0..4 {
            assert_eq!(u.pick(&[], t), 1, "ejected");
        }
        let later = t + Duration::from_secs(10);
        assert!(
            [u.pick(&[], later), u.pick(&[], later)].contains(&0),
            "back after fail_timeout"
        );
        assert_eq!(
            u.metrics
                .ejections
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // With every backend down, one is still tried.
        u.failed(1, t);
        u.failed(1, t);
        u.failed(0, t);
        u.failed(0, t);
        assert!(u.pick(&[], t) < 2);
    }

    #[test]
    fn least_connections_prefers_the_idle_backend() {
        let u = group(2, Balance::LeastConn);
        let t = Instant::now();
        let _busy = u.begin(0);
        for _ in 0..4 {
            assert_eq!(u.pick(&[], t), 1);
        }
    }
}
