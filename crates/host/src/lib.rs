//! The only crate that touches the host. It reads raw bytes (netlink
//! answers, `/proc` and `/proc/sys` files, the kernel log) and writes
//! sysctls; what the bytes mean is decided by pure code.
//!
//! - `source` (private): the raw reads, behind one small
//!   trait so that recorded bytes can stand in for the host in tests.
//! - `decode` (private): bytes to a
//!   [`Snapshot`], with every fallback and
//!   every problem decided there, unit-tested without root.
//! - [`scratch`]: throw-away network namespaces for `lab`.
//! - [`tracefs`]: a tracefs instance of our own, for `trace`, and [`bpf`]:
//!   its BPF filter of TCP state changes (the only unsafe code).
//! - [`live`]: a live count of sockets by state and destination, kept by
//!   BPF programs on the state and timer tracepoints, read without a
//!   dump (`exporter --live`).
//! - [`sysctl`]: `tune --apply`'s effects (runtime values and the
//!   persistent `/etc/sysctl.d` file).
//!
//! Everything is read from inside the target network namespace: a thread
//! enters it with `setns(CLONE_NEWNET)`, so its netlink socket dumps that
//! namespace's sockets and `/proc/sys/net` and `/proc/thread-self/net` show
//! that namespace's sysctls and counters. No `ip netns exec` is needed.
#![deny(missing_docs)]

pub mod bpf;
mod decode;
pub mod live;
mod netns;
pub mod nginx_files;
mod process;
pub mod scratch;
pub mod sockdiag;
mod source;
pub mod sysctl;
pub mod tracefs;

use nix::errno::Errno;
use timewait_kernel::DecodeError;
use timewait_snapshot::Snapshot;

pub use decode::Via;
pub use netns::{Target, in_namespace};
pub use process::{netns_names, process_netns, thread_process};

/// Reads everything the analysis needs from `target`. Fails only when the
/// namespace cannot be entered (or, with [`Via::Netlink`], when netlink
/// fails); anything else unreadable becomes a problem in the snapshot.
///
/// `kernel_log` says whether to read the kernel log: a scan of the whole
/// ring buffer, which `doctor` and `snapshot` need and `status` (and each of
/// its `--watch` refreshes) does not.
pub fn collect(target: &Target, via: Via, kernel_log: bool) -> Result<Snapshot, HostError> {
    in_namespace(target, || {
        decode::snapshot(&source::Live, via, kernel_log, target.label())
    })?
}

/// Where nginx keeps its main configuration on Debian and most packages.
pub const NGINX_DEFAULT_CONFIG: &str = "/etc/nginx/nginx.conf";

/// The default nginx configuration, if this host has one.
pub fn default_nginx_config() -> Option<std::path::PathBuf> {
    let p = std::path::Path::new(NGINX_DEFAULT_CONFIG);
    p.exists().then(|| p.to_path_buf())
}

/// Why the host could not be read (or written) at all. Partial failures of
/// a read are recorded as problems in the snapshot instead.
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
    /// Not allowed to enter the namespace or write a sysctl.
    #[error(
        "{what}: permission denied (entering another network namespace or writing sysctls needs root or CAP_SYS_ADMIN)"
    )]
    Permission {
        /// What was refused.
        what: String,
    },
    /// A change to the host was asked for without root.
    #[error("{0} needs root (it writes /proc/sys and /etc/sysctl.d); nothing was changed")]
    NotRoot(&'static str),
    /// A netlink sock_diag system call, or the kernel's answer to the dump,
    /// failed with `errno`.
    #[error("netlink sock_diag {op}: {}", errno.desc())]
    Netlink {
        /// `socket`, `send`, `recv` or `dump` (an `NLMSG_ERROR` answer).
        op: &'static str,
        /// The error number.
        errno: Errno,
    },
    /// The kernel's answer did not decode as netlink messages.
    #[error("netlink sock_diag: {0}")]
    NetlinkMessage(DecodeError),
    /// The answer ended early: the socket closed before `NLMSG_DONE`, or an
    /// error message was cut short.
    #[error("netlink sock_diag: the kernel ended {0}")]
    DumpTruncated(&'static str),
    /// Not allowed to use tracefs.
    #[error(
        "{what}: permission denied (trace needs root: it mounts tracefs and creates a tracing instance)"
    )]
    TracePermission {
        /// What was refused.
        what: String,
    },
    /// tracefs is missing, or refused what `trace` needs.
    #[error("{0}")]
    Tracefs(String),
    /// tracefs text that did not parse.
    #[error("tracefs: {0}")]
    Trace(timewait_trace::TraceError),
    /// The live count could not start or be read.
    #[error("live count: {0}")]
    Live(String),
    /// A command the host crate runs (iproute2's `ip`) failed.
    #[error("{0}")]
    Command(String),
    /// Other I/O.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}
