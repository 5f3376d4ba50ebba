//! A worker's client connections: how many are open, which of them are
//! idle (waiting for their next request) and since when, and the limit. At
//! the limit the accept loop closes the longest-idle connection to admit a
//! new client (as nginx reuses idle keep-alive connections when it runs
//! out), and with none idle it stops accepting until one closes or goes
//! idle, so new clients wait in the kernel's accept queue rather than fail
//! on a missing file descriptor.
//!
//! Marking a connection idle or busy is two stores into its own slot, so
//! the request path pays nothing for this; only an admission at the limit
//! looks through the slots.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::Instant;

use tokio::sync::Notify;

use crate::metrics::Metrics;

/// One connection's idle state. The eviction signal is a flag and a waker
/// of its own rather than a `Notify`, whose waiter list takes a lock on
/// every wait: this one is waited on once per request.
struct Slot {
    idle_since: Cell<Option<Instant>>,
    evicted: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Slot {
    fn evict(&self) {
        self.idle_since.set(None);
        self.evicted.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// Open client connections of one worker.
pub(crate) struct Clients {
    open: Cell<usize>,
    max: usize,
    slots: RefCell<Vec<Weak<Slot>>>,
    /// A connection closed, or went idle at the limit.
    changed: Notify,
}

/// An open client connection's place; dropping it counts it closed.
pub(crate) struct Open {
    clients: Rc<Clients>,
    slot: Rc<Slot>,
}

impl Open {
    /// The connection waits for its next request from `at` on.
    pub(crate) fn idle(&self, at: Instant) {
        self.slot.idle_since.set(Some(at));
        if self.clients.open.get() >= self.clients.max {
            // The accept loop may be waiting for room this one can give.
            self.clients.changed.notify_one();
        }
    }

    /// A request arrived.
    pub(crate) fn busy(&self) {
        self.slot.idle_since.set(None);
    }

    /// Completes when the worker needs this idle connection's place.
    pub(crate) async fn evicted(&self) {
        std::future::poll_fn(|cx| {
            if self.slot.evicted.get() {
                return Poll::Ready(());
            }
            let mut w = self.slot.waker.borrow_mut();
            match &*w {
                Some(old) if old.will_wake(cx.waker()) => {}
                _ => *w = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await;
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.clients.open.set(self.clients.open.get() - 1);
        self.clients.changed.notify_one();
    }
}

impl Clients {
    pub(crate) fn new(max: usize) -> Rc<Clients> {
        Rc::new(Clients {
            open: Cell::new(0),
            max,
            slots: RefCell::new(Vec::new()),
            changed: Notify::new(),
        })
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.get()
    }

    /// Tells the longest-idle connection to close; which one, if any.
    fn evict_longest_idle(&self) -> Option<Weak<Slot>> {
        let mut slots = self.slots.borrow_mut();
        slots.retain(|w| w.strong_count() > 0);
        let oldest = slots
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|s| s.idle_since.get().map(|t| (t, s)))
            .min_by_key(|(t, _)| *t);
        let (_, slot) = oldest?;
        // A flag: it closes even if not waiting at this instant.
        slot.evict();
        Some(Rc::downgrade(&slot))
    }

    /// Waits for a place: at the limit, closes the longest-idle connection
    /// (counted; one at a time: the next only once it has closed), or
    /// waits until one closes or goes idle.
    pub(crate) async fn admit(self: &Rc<Self>, metrics: &Metrics) -> Open {
        let mut closing: Option<Weak<Slot>> = None;
        while self.open.get() >= self.max {
            if closing.as_ref().is_none_or(|w| w.strong_count() == 0) {
                closing = self.evict_longest_idle();
                if closing.is_some() {
                    Metrics::inc(&metrics.idle_clients_closed);
                }
            }
            self.changed.notified().await;
        }
        self.open.set(self.open.get() + 1);
        let slot = Rc::new(Slot {
            idle_since: Cell::new(None),
            evicted: Cell::new(false),
            waker: RefCell::new(None),
        });
        let mut slots = self.slots.borrow_mut();
        // A closed connection leaves a dead entry (which keeps its slot's
        // memory): dropped once they outnumber the open ones, so the list
        // stays within twice the open connections, at O(1) amortised.
        if slots.len() > 2 * self.open.get() + 64 {
            slots.retain(|w| w.strong_count() > 0);
        }
        slots.push(Rc::downgrade(&slot));
        drop(slots);
        Open {
            clients: self.clone(),
            slot,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn at_the_limit_the_longest_idle_connection_makes_room() {
        let clients = Clients::new(2);
        let m = Metrics::default();
        let t = Instant::now();
        let a = clients.admit(&m).await;
        let b = clients.admit(&m).await;
        a.idle(t);
        b.idle(t + Duration::from_secs(1));
        let local = tokio::task::LocalSet::new();
        let c2 = clients.clone();
        let admitted = local
            .run_until(async move {
                let waiting = tokio::task::spawn_local(async move {
                    let m = Metrics::default();
                    let open = c2.admit(&m).await;
                    (open, m.idle_clients_closed.into_inner())
                });
                // The longest idle is told to go, and goes.
                a.evicted().await;
                drop(a);
                waiting.await.unwrap()
            })
            .await;
        assert_eq!(admitted.1, 1);
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
                // Busy when the accept loop started waiting; idle now.
                first.idle(Instant::now());
                first.evicted().await;
                drop(first);
                let _second = waiting.await.unwrap();
                assert_eq!(clients.open(), 1);
            })
            .await;
    }

    #[tokio::test(start_paused = true)]
    async fn closed_connections_do_not_accumulate() {
        let clients = Clients::new(10);
        let m = Metrics::default();
        for _ in 0..10_000 {
            drop(clients.admit(&m).await);
        }
        assert!(
            clients.slots.borrow().len() <= 65,
            "{}",
            clients.slots.borrow().len()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn with_none_idle_a_new_client_waits_for_a_close() {
        let clients = Clients::new(1);
        let m = Metrics::default();
        let busy = clients.admit(&m).await;
        busy.idle(Instant::now());
        busy.busy();
        let c2 = clients.clone();
        let order = Rc::new(RefCell::new(Vec::new()));
        let (o, seen) = (order.clone(), order.clone());
        let local = tokio::task::LocalSet::new();
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
