//! Accepting connections: the loop each listener of each worker runs, and
//! what it does when `accept()` fails. Out of file descriptors (EMFILE,
//! ENFILE) or memory, it backs off (10 ms doubling to 1 s) instead of
//! spinning, counts every failure, and says so on stderr once per burst.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::clients::{Clients, Open};
use crate::metrics::Metrics;

const BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The state of one accept loop's error handling.
pub(crate) struct AcceptBackoff {
    what: &'static str,
    next: Duration,
    /// Whether this burst of failures was already reported.
    reported: bool,
}

/// Whether an accept error means the process or system is out of a
/// resource (waiting helps), rather than one connection failing.
fn exhausted(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EMFILE | nix::libc::ENFILE | nix::libc::ENOBUFS | nix::libc::ENOMEM)
    )
}

impl AcceptBackoff {
    pub(crate) fn new(what: &'static str) -> AcceptBackoff {
        AcceptBackoff {
            what,
            next: BACKOFF_FIRST,
            reported: false,
        }
    }

    /// An accept succeeded: the burst, if any, is over.
    pub(crate) fn ok(&mut self) {
        if self.reported {
            eprintln!("timewait proxy: {} listener accepting again", self.what);
        }
        self.next = BACKOFF_FIRST;
        self.reported = false;
    }

    /// An accept failed: counted; for exhaustion, reported once per burst
    /// and waited out.
    pub(crate) async fn failed(&mut self, e: &io::Error, metrics: &Metrics) {
        Metrics::inc(&metrics.accept_errors);
        if !exhausted(e) {
            return;
        }
        if !self.reported {
            self.reported = true;
            eprintln!(
                "timewait proxy: {} listener cannot accept: {e}; backing off (see timewait_proxy_accept_errors_total)",
                self.what
            );
        }
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(BACKOFF_MAX);
    }
}

/// Accepts connections (Nagle off) until shutdown is signalled, admitting
/// each within the worker's connection limit and running what `serve` makes
/// of it and its place (`None`: drop it) as a task.
pub(crate) async fn accept_until_stopped<F, S>(
    listener: TcpListener,
    shutdown: tokio::sync::watch::Receiver<bool>,
    clients: Rc<Clients>,
    metrics: &Metrics,
    serve: S,
) where
    S: Fn(TcpStream, SocketAddr, tokio::sync::watch::Receiver<bool>, Open) -> Option<F>,
    F: Future<Output = ()> + 'static,
{
    let mut stop = shutdown.clone();
    let mut backoff = AcceptBackoff::new("client");
    loop {
        // A slot first: past the limit, clients wait in the accept queue.
        let slot: Open = tokio::select! {
            s = clients.admit(metrics) => s,
            _ = stop.wait_for(|s| *s) => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff.ok();
                a
            }
            Err(e) => {
                backoff.failed(&e, metrics).await;
                continue;
            }
        };
        // Nagle off is an optimisation; a socket that refuses it still works.
        let _ = stream.set_nodelay(true);
        let Some(served) = serve(stream, peer, shutdown.clone(), slot) else {
            continue;
        };
        tokio::task::spawn_local(served);
    }
}
