//! A worker's client connections: how many are open, which of them are
//! idle (waiting for their next request), and the limit. At the limit the
//! accept loop closes the longest-idle connection to admit a new client (as
//! nginx reuses idle keep-alive connections when it runs out), and with none
//! idle it stops accepting until one closes, so new clients wait in the
//! kernel's accept queue rather than fail on a missing file descriptor.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use tokio::sync::Notify;

use crate::metrics::Metrics;

/// Open and idle client connections of one worker.
pub(crate) struct Clients {
    open: Cell<usize>,
    max: usize,
    /// Idle connections by when they went idle (oldest first), each with
    /// the signal that closes it.
    idle: RefCell<BTreeMap<u64, Rc<Notify>>>,
    next: Cell<u64>,
    /// A connection closed, or went idle (so one can be made to close).
    changed: Notify,
}

/// An open client connection; dropping it counts it closed.
pub(crate) struct Open(Rc<Clients>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get() - 1);
        self.0.changed.notify_one();
    }
}

/// A connection registered as idle until dropped; [`Idle::evicted`]
/// completes when the worker needs its slot.
pub(crate) struct Idle {
    clients: Rc<Clients>,
    id: u64,
    signal: Rc<Notify>,
}

impl Idle {
    /// Completes when this connection should close to make room.
    pub(crate) async fn evicted(&self) {
        self.signal.notified().await;
    }
}

impl Drop for Idle {
    fn drop(&mut self) {
        self.clients.idle.borrow_mut().remove(&self.id);
    }
}

impl Clients {
    pub(crate) fn new(max: usize) -> Rc<Clients> {
        Rc::new(Clients {
            open: Cell::new(0),
            max,
            idle: RefCell::new(BTreeMap::new()),
            next: Cell::new(0),
            changed: Notify::new(),
        })
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.get()
    }

    /// Waits for a free slot: at the limit, closes the longest-idle
    /// connection (counted), or waits until one closes or goes idle.
    pub(crate) async fn admit(self: &Rc<Self>, metrics: &Metrics) -> Open {
        while self.open.get() >= self.max {
            let oldest = self.idle.borrow_mut().pop_first();
            if let Some((_, signal)) = oldest {
                // A stored permit: the connection closes even if it is not
                // waiting on the signal at this instant.
                signal.notify_one();
                Metrics::inc(&metrics.idle_clients_closed);
            }
            self.changed.notified().await;
        }
        self.open.set(self.open.get() + 1);
        Open(self.clone())
    }

    /// Registers a connection as idle while the guard lives.
    pub(crate) fn idle(self: &Rc<Self>) -> Idle {
        let id = self.next.get();
        self.next.set(id + 1);
        let signal = Rc::new(Notify::new());
        self.idle.borrow_mut().insert(id, signal.clone());
        if self.open.get() >= self.max {
            // The accept loop may be waiting for room that this one can give.
            self.changed.notify_one();
        }
        Idle {
            clients: self.clone(),
            id,
            signal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn at_the_limit_the_longest_idle_connection_makes_room() {
        let clients = Clients::new(2);
        let m = Metrics::default();
        let a = clients.admit(&m).await;
        let b = clients.admit(&m).await;
        let idle_a = clients.idle();
        let _idle_b = clients.idle();
        let third = tokio::task::LocalSet::new();
        let c2 = clients.clone();
        let admitted = third
            .run_until(async move {
                let waiting = tokio::task::spawn_local(async move {
                    let m = Metrics::default();
                    c2.admit(&m).await
                });
                // The oldest idle connection is told to go, and goes.
                idle_a.evicted().await;
                drop(idle_a);
                drop(a);
                waiting.await.unwrap()
            })
            .await;
        assert_eq!(clients.open(), 2);
        drop((admitted, b));
        assert_eq!(clients.open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_going_idle_at_the_limit_makes_room() {
        let clients = Clients::new(1);
        let m = Metrics::default();
        let first = clients.admit(&m).await;
        let c2 = clients.clone();
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async move {
                let waiting = tokio::task::spawn_local(async move {
                    let m = Metrics::default();
                    c2.admit(&m).await
                });
                tokio::task::yield_now().await;
                // The first connection goes idle after the accept loop
                // started waiting: it is told to go, and goes.
                let idle = clients.idle();
                idle.evicted().await;
                drop((idle, first));
                let _second = waiting.await.unwrap();
                assert_eq!(clients.open(), 1);
            })
            .await;
    }

    #[tokio::test(start_paused = true)]
    async fn with_none_idle_a_new_client_waits_for_a_close() {
        let clients = Clients::new(1);
        let m = Metrics::default();
        let busy = clients.admit(&m).await;
        let c2 = clients.clone();
        let order = Rc::new(RefCell::new(Vec::new()));
        let local = tokio::task::LocalSet::new();
        let o = order.clone();
        let seen = order.clone();
        local
            .run_until(async move {
                let waiting = tokio::task::spawn_local(async move {
                    let m = Metrics::default();
                    let open = c2.admit(&m).await;
                    o.borrow_mut().push("admitted");
                    open
                });
                tokio::task::yield_now().await;
                seen.borrow_mut().push("closing");
                drop(busy);
                let _open = waiting.await.unwrap();
            })
            .await;
        assert_eq!(*order.borrow(), ["closing", "admitted"]);
        assert_eq!(
            m.idle_clients_closed
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }
}
