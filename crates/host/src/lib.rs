//! The only crate that touches the host. It reads raw bytes (netlink
//! answers, `/proc` and `/proc/sys` files, the kernel log) and hands them to
//! the pure decoders and the census; it interprets nothing itself.
//!
//! Everything is read from inside the target network namespace: a thread
//! enters it with `setns(CLONE_NEWNET)`, so its netlink socket dumps that
//! namespace's sockets and `/proc/sys/net` and `/proc/thread-self/net` show
//! that namespace's sysctls and counters. No `ip netns exec` is needed.
#![deny(missing_docs)]

mod collect;
mod kmsg;
mod netns;
pub mod sockdiag;
pub mod sysctl;

pub use collect::{Via, collect};
pub use netns::{Target, in_namespace};

/// Why the host could not be read at all. (Partial failures are recorded as
/// problems in the snapshot instead.)
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// `--netns NAME` names no namespace.
    #[error(
        "--netns {0}: no such network namespace (looked for /var/run/netns/{0}; see `ip netns list`)"
    )]
    NoSuchNetns(String),
    /// A namespace name that cannot be a file name.
    #[error("--netns {0:?}: not a namespace name")]
    BadNetnsName(String),
    /// `--pid PID` names no process.
    #[error("--pid {0}: no such process")]
    NoSuchPid(u32),
    /// Not allowed to enter the namespace.
    #[error(
        "{what}: permission denied (entering another network namespace needs root or CAP_SYS_ADMIN)"
    )]
    Permission {
        /// What was refused.
        what: String,
    },
    /// Netlink sock_diag failed.
    #[error("netlink sock_diag: {0}")]
    Netlink(String),
    /// Other I/O.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}
