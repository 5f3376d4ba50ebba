//! Pure decoders for what the Linux kernel reports about TCP sockets.
//!
//! Everything here takes bytes or text and returns values or a
//! [`DecodeError`]; nothing opens a file or a socket, reads a clock or
//! panics on malformed input. The host-facing code (a separate crate) hands
//! in raw bytes, so a recorded host replays byte for byte.
//!
//! - [`netlink`]: walk a buffer of netlink messages (`nlmsghdr`).
//! - [`inet_diag`]: `struct inet_diag_msg`, including the TIME_WAIT timer
//!   (`idiag_expires`) that `netlink-packet-sock-diag` drops.
//! - [`proc_tcp`]: lines of `/proc/net/tcp` and `/proc/net/tcp6`.
//! - [`sockstat`]: `/proc/net/sockstat` (the `tw` count is the one
//!   `tcp_max_tw_buckets` is checked against).
//! - [`errno`]: errno names and what each means for ports.
//! - [`counters`]: the two-line tables of `/proc/net/netstat` and
//!   `/proc/net/snmp` (`TcpExt: TWRecycled`, `TCPTimeWaitOverflow`, …).
#![deny(missing_docs)]

pub mod counters;
pub mod errno;
pub mod inet_diag;
pub mod netlink;
pub mod proc_tcp;
pub mod sockstat;
pub mod state;

pub use state::TcpState;

/// Why some kernel output could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
#[error("{source_name}{}: {detail}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct DecodeError {
    /// What was being decoded (e.g. `/proc/net/tcp`, `inet_diag_msg`).
    pub source_name: &'static str,
    /// The 1-based line, for text sources.
    pub line: Option<usize>,
    /// What was wrong.
    pub detail: String,
}

impl DecodeError {
    pub(crate) fn new(
        source_name: &'static str,
        line: Option<usize>,
        detail: impl Into<String>,
    ) -> DecodeError {
        DecodeError {
            source_name,
            line,
            detail: detail.into(),
        }
    }
}
