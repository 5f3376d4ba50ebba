//! Connecting to a backend.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::timeout;

/// How a backend connection ends when the proxy closes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Close {
    /// With a reset (`SO_LINGER` 0, as HAProxy closes idle server
    /// connections): a pooled connection is only closed by the proxy when
    /// it is idle, worn out, abandoned or broken, and a FIN would leave a
    /// TIME_WAIT on this host's port toward the backend each time.
    Reset,
    /// Normally, with a FIN: an `Upgrade` tunnel ends with data in flight.
    Fin,
}

/// A connection to `addr` within `within`, with Nagle off.
pub(crate) async fn dial(
    addr: SocketAddr,
    within: Duration,
    close: Close,
) -> io::Result<TcpStream> {
    let stream = match timeout(within, TcpStream::connect(addr)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out after {within:?}"),
            ));
        }
    };
    // Both are optimisations: a connection that refuses them still works.
    let _ = stream.set_nodelay(true);
    if close == Close::Reset {
        let _ = stream.set_zero_linger();
    }
    Ok(stream)
}
