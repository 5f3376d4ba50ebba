//! Idle backend connections of one upstream group, over the generic
//! `timewait-pool`: this worker's own (no lock), or the process's shared
//! pool (`shared_pool`), where a parked connection leaves every worker's
//! event loop so that any worker can take it. The idle gauge in `/metrics`
//! follows every change.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use rustc_hash::FxBuildHasher;
use timewait_pool::{Limits, Pool, Pooled, SharedPool};
use tokio::net::TcpStream;

use crate::config::PoolConfig;
use crate::h1::io::ReadBuf;
use crate::metrics::Metrics;

/// A backend connection between requests.
pub(crate) struct UpConn {
    pub(crate) stream: TcpStream,
    pub(crate) rb: ReadBuf,
}

/// A connection parked in the shared pool, out of any event loop.
pub(crate) struct Parked {
    stream: std::net::TcpStream,
    rb: ReadBuf,
}

/// The shared pools of a process, one per upstream group, keyed by backend.
pub(crate) type Shared = Arc<SharedPool<SocketAddr, Parked>>;

/// Whether an idle backend connection still looks usable: nothing unread,
/// and not readable (nothing, not even a FIN, arrived since it went idle).
/// No system call unless the runtime saw it become readable.
fn looks_alive(c: &UpConn) -> bool {
    if !c.rb.filled().is_empty() {
        return false;
    }
    let mut cx = Context::from_waker(Waker::noop());
    match c.stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut b = [0u8; 1];
            matches!(c.stream.try_read(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}

/// A parked connection: nothing may have arrived while it was parked.
fn parked_alive(p: &Parked) -> bool {
    p.rb.filled().is_empty()
        && matches!(p.stream.peek(&mut [0u8; 1]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// The pool limits of a group.
pub(crate) fn limits(p: &PoolConfig) -> Limits {
    Limits {
        max_idle_per_key: p.max_idle_per_upstream,
        idle_timeout: p.idle_timeout,
        max_requests: p.max_requests_per_connection,
        max_lifetime: p.max_lifetime,
    }
}

enum Store {
    /// By backend index in the group (a small integer: Fx hashing is enough).
    Local(RefCell<Pool<usize, UpConn, FxBuildHasher>>),
    Shared(Shared),
}

/// One group's idle backend connections, for one worker.
pub(crate) struct BackendPool {
    store: Store,
    metrics: Arc<Metrics>,
}

impl BackendPool {
    /// This worker's own pool, or a view of `shared`.
    pub(crate) fn new(
        cfg: &PoolConfig,
        metrics: Arc<Metrics>,
        shared: Option<Shared>,
    ) -> BackendPool {
        let store = match shared {
            Some(s) => Store::Shared(s),
            None => Store::Local(RefCell::new(Pool::with_hasher(limits(cfg), FxBuildHasher))),
        };
        BackendPool { store, metrics }
    }

    /// Runs `f` on the pool and moves the idle gauge by what it changed.
    fn counted<K: std::hash::Hash + Eq, C, S: std::hash::BuildHasher, R>(
        &self,
        pool: &mut Pool<K, C, S>,
        f: impl FnOnce(&mut Pool<K, C, S>) -> R,
    ) -> R {
        let before = pool.idle() as i64;
        let r = f(pool);
        self.metrics
            .pool_idle
            .fetch_add(pool.idle() as i64 - before, Ordering::Relaxed);
        r
    }

    /// The most recently used live connection to backend `i` (`addr`).
    pub(crate) fn take(&self, i: usize, addr: SocketAddr, now: Instant) -> Option<Pooled<UpConn>> {
        match &self.store {
            Store::Local(p) => self.counted(&mut p.borrow_mut(), |p| p.take(&i, now, looks_alive)),
            Store::Shared(s) => {
                let p = s.with(|p| self.counted(p, |p| p.take(&addr, now, parked_alive)))?;
                let Pooled {
                    conn: Parked { stream, rb },
                    born,
                    requests,
                } = p;
                // A socket that cannot join this worker's event loop is
                // closed (dropped) like any dead connection.
                let stream = TcpStream::from_std(stream).ok()?;
                Some(Pooled {
                    conn: UpConn { stream, rb },
                    born,
                    requests,
                })
            }
        }
    }

    /// Gives back a connection after a complete exchange (its request
    /// already counted); the pool closes it if it is worn out or not kept.
    pub(crate) fn put(&self, i: usize, addr: SocketAddr, c: Pooled<UpConn>, now: Instant) {
        match &self.store {
            Store::Local(p) => {
                self.counted(&mut p.borrow_mut(), |p| p.put(i, c, now));
            }
            Store::Shared(s) => {
                let Pooled {
                    conn: UpConn { stream, rb },
                    born,
                    requests,
                } = c;
                // Out of this worker's event loop; one that cannot leave it
                // is closed instead.
                let Ok(stream) = stream.into_std() else {
                    return;
                };
                let parked = Pooled {
                    conn: Parked { stream, rb },
                    born,
                    requests,
                };
                s.with(|p| self.counted(p, |p| p.put(addr, parked, now)));
            }
        }
    }

    /// Closes connections idle too long, worn out, or closed by their
    /// backend.
    pub(crate) fn sweep(&self, now: Instant) {
        match &self.store {
            Store::Local(p) => {
                self.counted(&mut p.borrow_mut(), |p| p.sweep(now, looks_alive));
            }
            Store::Shared(s) => {
                s.with(|p| self.counted(p, |p| p.sweep(now, parked_alive)));
            }
        }
    }
}
