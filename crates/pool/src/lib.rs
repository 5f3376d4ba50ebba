//! A keep-alive connection pool, generic over the key (a backend) and the
//! connection, with no I/O and no clock: every call takes `now`, so the
//! rules are tested with explicit instants.
//!
//! - **LIFO reuse**: [`Pool::take`] returns the most recently returned
//!   connection, whose backend is the least likely to have timed it out.
//! - **Limits** ([`Limits`]): idle connections kept per key (the least
//!   recently used goes first when full), an idle timeout, and optional
//!   limits on requests per connection and on a connection's lifetime.
//! - **Liveness** is the caller's: `take` and `sweep` ask a predicate
//!   whether a candidate is still usable (no FIN arrived, nothing unread),
//!   because only the caller can look at the socket.
//! - **Modes**: a [`Pool`] belongs to one owner (a worker thread, no lock);
//!   a [`SharedPool`] is one pool behind a mutex for every worker.
//!
//! Dropping a connection is how the pool closes it: what the drop does (a
//! reset rather than a FIN, so no TIME_WAIT is left) is the connection
//! type's business.
#![deny(missing_docs)]

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// What a pool keeps, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Idle connections kept per key (like nginx's `keepalive N`); 0 keeps none.
    pub max_idle_per_key: usize,
    /// An idle connection is closed after this long.
    pub idle_timeout: Duration,
    /// A connection is closed after this many requests (`None`: never).
    pub max_requests: Option<u64>,
    /// A connection is closed once this old (`None`: never).
    pub max_lifetime: Option<Duration>,
}

impl Limits {
    fn worn_out<C>(&self, p: &Pooled<C>, now: Instant) -> bool {
        self.max_requests.is_some_and(|m| p.requests >= m)
            || self
                .max_lifetime
                .is_some_and(|l| now.saturating_duration_since(p.born) >= l)
    }

    fn fresh<C>(&self, i: &Idle<C>, now: Instant) -> bool {
        now.saturating_duration_since(i.since) < self.idle_timeout && !self.worn_out(&i.pooled, now)
    }
}

/// A connection with what the pool needs to know about it.
#[derive(Debug)]
pub struct Pooled<C> {
    /// The connection.
    pub conn: C,
    /// When it was opened.
    pub born: Instant,
    /// Requests it has carried.
    pub requests: u64,
}

impl<C> Pooled<C> {
    /// A connection opened at `born`, with no request carried yet.
    pub fn new(conn: C, born: Instant) -> Pooled<C> {
        Pooled {
            conn,
            born,
            requests: 0,
        }
    }
}

/// What became of a connection given back with [`Pool::put`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// Kept for reuse.
    Kept,
    /// Kept, and the least recently used connection of its key was closed
    /// to make room.
    KeptEvicting,
    /// Closed: it carried `max_requests` or reached `max_lifetime`.
    WornOut,
    /// Closed: the pool keeps no idle connections (`max_idle_per_key` 0).
    NotKept,
}

struct Idle<C> {
    pooled: Pooled<C>,
    since: Instant,
}

/// Idle connections by key, for one owner. `S` hashes the keys: a key
/// that is already a small index (a backend's position in a list) can use a
/// cheaper hasher than the default, which resists flooding that a pool's
/// own keys never attempt.
pub struct Pool<K, C, S = RandomState> {
    idle: HashMap<K, Vec<Idle<C>>, S>,
    limits: Limits,
    count: usize,
}

impl<K: Hash + Eq, C> Pool<K, C> {
    /// An empty pool.
    pub fn new(limits: Limits) -> Pool<K, C> {
        Pool::with_hasher(limits, RandomState::new())
    }
}

impl<K: Hash + Eq, C, S: BuildHasher> Pool<K, C, S> {
    /// An empty pool hashing its keys with `hasher`.
    pub fn with_hasher(limits: Limits, hasher: S) -> Pool<K, C, S> {
        Pool {
            idle: HashMap::with_hasher(hasher),
            limits,
            count: 0,
        }
    }

    /// The limits it applies.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Idle connections held, over all keys.
    pub fn idle(&self) -> usize {
        self.count
    }

    /// The most recently returned connection for `key` that is fresh (idle
    /// less than the timeout, not worn out) and `alive`. Stale or dead
    /// candidates met on the way are dropped (closed).
    pub fn take(
        &mut self,
        key: &K,
        now: Instant,
        mut alive: impl FnMut(&C) -> bool,
    ) -> Option<Pooled<C>> {
        let list = self.idle.get_mut(key)?;
        while let Some(i) = list.pop() {
            self.count -= 1;
            let fresh = now.saturating_duration_since(i.since) < self.limits.idle_timeout
                && !(self
                    .limits
                    .max_requests
                    .is_some_and(|m| i.pooled.requests >= m)
                    || self
                        .limits
                        .max_lifetime
                        .is_some_and(|l| now.saturating_duration_since(i.pooled.born) >= l));
            if fresh && alive(&i.pooled.conn) {
                return Some(i.pooled);
            }
        }
        None
    }

    /// Gives a connection back after a complete exchange (the caller counts
    /// the request in `requests` first).
    pub fn put(&mut self, key: K, pooled: Pooled<C>, now: Instant) -> Put {
        if self.limits.worn_out(&pooled, now) {
            return Put::WornOut;
        }
        if self.limits.max_idle_per_key == 0 {
            return Put::NotKept;
        }
        let max = self.limits.max_idle_per_key;
        let list = self.idle.entry(key).or_default();
        let evicted = list.len() >= max;
        if evicted {
            list.remove(0);
            self.count -= 1;
        }
        list.push(Idle { pooled, since: now });
        self.count += 1;
        if evicted {
            Put::KeptEvicting
        } else {
            Put::Kept
        }
    }

    /// Closes every connection that is stale at `now` or no longer `alive`;
    /// returns how many.
    pub fn sweep(&mut self, now: Instant, mut alive: impl FnMut(&C) -> bool) -> usize {
        let before = self.count;
        let limits = self.limits;
        for list in self.idle.values_mut() {
            list.retain(|i| limits.fresh(i, now) && alive(&i.pooled.conn));
        }
        self.idle.retain(|_, l| !l.is_empty());
        self.count = self.idle.values().map(Vec::len).sum();
        before - self.count
    }
}

/// One [`Pool`] for every worker, behind a mutex.
pub struct SharedPool<K, C> {
    inner: Mutex<Pool<K, C>>,
}

impl<K: Hash + Eq, C> SharedPool<K, C> {
    /// An empty shared pool.
    pub fn new(limits: Limits) -> SharedPool<K, C> {
        SharedPool {
            inner: Mutex::new(Pool::new(limits)),
        }
    }

    /// Runs `f` on the pool under the lock. A worker that panicked while
    /// holding it left the pool consistent (every change completes before
    /// anything can panic), so a poisoned lock is used as it is.
    pub fn with<R>(&self, f: impl FnOnce(&mut Pool<K, C>) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn limits() -> Limits {
        Limits {
            max_idle_per_key: 2,
            idle_timeout: 4 * S,
            max_requests: None,
            max_lifetime: None,
        }
    }

    fn conn(id: u32, born: Instant) -> Pooled<u32> {
        Pooled::new(id, born)
    }

    #[test]
    fn the_most_recently_returned_connection_is_taken_first() {
        let t0 = Instant::now();
        let mut p = Pool::new(limits());
        assert_eq!(p.put("a", conn(1, t0), t0), Put::Kept);
        assert_eq!(p.put("a", conn(2, t0), t0 + S), Put::Kept);
        assert_eq!(p.idle(), 2);
        assert_eq!(p.take(&"a", t0 + 2 * S, |_| true).map(|c| c.conn), Some(2));
        assert_eq!(p.take(&"a", t0 + 2 * S, |_| true).map(|c| c.conn), Some(1));
        assert!(p.take(&"a", t0 + 2 * S, |_| true).is_none());
        assert!(p.take(&"b", t0, |_| true).is_none(), "keys are apart");
        assert_eq!(p.idle(), 0);
    }

    #[test]
    fn a_full_key_closes_its_least_recently_used_connection() {
        let t0 = Instant::now();
        let mut p = Pool::new(limits());
        p.put("a", conn(1, t0), t0);
        p.put("a", conn(2, t0), t0);
        assert_eq!(p.put("a", conn(3, t0), t0), Put::KeptEvicting);
        assert_eq!(p.put("b", conn(4, t0), t0), Put::Kept, "per key");
        let mut got = vec![];
        while let Some(c) = p.take(&"a", t0, |_| true) {
            got.push(c.conn);
        }
        assert_eq!(got, [3, 2]);
    }

    #[test]
    fn idle_connections_expire_at_the_idle_timeout_exactly() {
        let t0 = Instant::now();
        let mut p = Pool::new(limits());
        p.put("a", conn(1, t0), t0);
        assert!(
            p.take(&"a", t0 + 4 * S, |_| true).is_none(),
            "4 s idle: gone"
        );
        p.put("a", conn(2, t0), t0);
        assert_eq!(
            p.take(&"a", t0 + 4 * S - Duration::from_nanos(1), |_| true)
                .map(|c| c.conn),
            Some(2)
        );
    }

    #[test]
    fn dead_candidates_are_dropped_on_the_way_to_a_live_one() {
        let t0 = Instant::now();
        let mut p = Pool::new(limits());
        p.put("a", conn(1, t0), t0);
        p.put("a", conn(2, t0), t0);
        let mut asked = vec![];
        let got = p.take(&"a", t0, |c| {
            asked.push(*c);
            *c == 1
        });
        assert_eq!(got.map(|c| c.conn), Some(1));
        assert_eq!(asked, [2, 1]);
        assert_eq!(p.idle(), 0, "the dead one was closed, not kept");
    }

    #[test]
    fn worn_out_connections_are_not_kept_or_taken() {
        let t0 = Instant::now();
        let mut p = Pool::new(Limits {
            max_requests: Some(3),
            max_lifetime: Some(10 * S),
            ..limits()
        });
        let mut c = conn(1, t0);
        c.requests = 3;
        assert_eq!(p.put("a", c, t0), Put::WornOut);
        let mut c = conn(2, t0);
        c.requests = 2;
        assert_eq!(p.put("a", c, t0 + 9 * S), Put::Kept);
        // Still fresh as idle, but now past its lifetime.
        assert!(p.take(&"a", t0 + 10 * S, |_| true).is_none());
        assert_eq!(p.put("a", conn(3, t0), t0 + 10 * S), Put::WornOut);
    }

    #[test]
    fn a_pool_of_zero_keeps_nothing() {
        let t0 = Instant::now();
        let mut p = Pool::new(Limits {
            max_idle_per_key: 0,
            ..limits()
        });
        assert_eq!(p.put("a", conn(1, t0), t0), Put::NotKept);
        assert_eq!(p.idle(), 0);
    }

    #[test]
    fn sweep_closes_the_stale_and_the_dead_and_keeps_the_rest() {
        let t0 = Instant::now();
        let mut p = Pool::new(limits());
        p.put("a", conn(1, t0), t0);
        p.put("a", conn(2, t0), t0 + 3 * S);
        p.put("b", conn(3, t0), t0 + 3 * S);
        assert_eq!(p.sweep(t0 + 4 * S, |c| *c != 3), 2);
        assert_eq!(p.idle(), 1);
        assert_eq!(p.take(&"a", t0 + 4 * S, |_| true).map(|c| c.conn), Some(2));
        assert_eq!(p.sweep(t0 + 100 * S, |_| true), 0, "nothing left");
    }

    #[test]
    fn the_shared_pool_serves_any_thread() {
        let t0 = Instant::now();
        let shared = std::sync::Arc::new(SharedPool::new(limits()));
        let s = shared.clone();
        std::thread::spawn(move || s.with(|p| p.put(9, conn(1, t0), t0)))
            .join()
            .unwrap();
        assert_eq!(
            shared
                .with(|p| p.take(&9, t0 + S, |_| true))
                .map(|c| c.conn),
            Some(1)
        );
    }
}
