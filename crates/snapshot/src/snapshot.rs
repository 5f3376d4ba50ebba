//! The versioned snapshot: everything the analysis reads, as one JSON
//! document. Raw sysctl values and `/proc/net` files are kept as text, so the
//! analysis of a snapshot re-parses exactly what the live run parsed and
//! gives identical results on another machine. The sockets are kept as the
//! aggregated [`Census`] (memory bounded by destinations), not as the dump.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Census;

/// The `format` field.
pub const FORMAT: &str = "timewait-snapshot";
/// The version this build writes and the newest it reads.
pub const VERSION: u32 = 1;

/// Sysctls the analysis reads, and whether their absence is worth reporting
/// (some exist only on some kernels: their absence is itself information).
pub const SYSCTLS: &[(&str, bool)] = &[
    ("net.ipv4.ip_local_port_range", true),
    ("net.ipv4.ip_local_reserved_ports", true),
    ("net.ipv4.tcp_tw_reuse", true),
    ("net.ipv4.tcp_timestamps", true),
    ("net.ipv4.tcp_max_tw_buckets", true),
    ("net.ipv4.tcp_fin_timeout", true),
    ("net.ipv4.ip_autobind_reuse", false),
    ("net.ipv4.tcp_rfc1337", false),
    ("net.ipv4.tcp_max_orphans", false),
    ("net.ipv4.ip_unprivileged_port_start", false),
    // 6.14+ only.
    ("net.ipv4.tcp_tw_reuse_delay", false),
    // Alibaba Cloud Linux 2/3 only.
    ("net.ipv4.tcp_tw_timeout", false),
    // Removed in 4.12.
    ("net.ipv4.tcp_tw_recycle", false),
    // Only with nf_conntrack loaded.
    ("net.netfilter.nf_conntrack_tcp_timeout_time_wait", false),
];

/// `/proc/net` files kept verbatim, by the name used in [`Snapshot::files`].
pub const FILES: &[&str] = &["sockstat", "sockstat6", "netstat", "snmp"];

/// Kernel log lines worth keeping (substring match).
pub const KERNEL_LOG_PATTERNS: &[&str] = &[
    "time wait bucket table overflow",
    "ip_local_port_range",
    "TCP established hash table entries",
    "Possible SYN flooding",
    "nf_conntrack: table full",
    "Out of socket memory",
    "too many orphaned sockets",
];

/// Something that could not be collected or understood: it is reported,
/// never dropped, and never replaced by a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// What was being read (a sysctl's dotted name, a `/proc/net` file, …).
    pub what: String,
    /// Why it failed, or what was read and what was expected.
    pub error: String,
    /// The kind of failure, which decides the advice given for it.
    /// (Snapshots written before this field existed read as `other`.)
    #[serde(default)]
    pub cause: Cause,
}

impl Problem {
    /// A problem of `cause` with `what` and `error`.
    pub fn new(what: impl Into<String>, cause: Cause, error: impl Into<String>) -> Problem {
        Problem {
            what: what.into(),
            error: error.into(),
            cause,
        }
    }
}

/// Why something could not be read or understood.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Cause {
    /// Not allowed to read it (needs root or a capability).
    Permission,
    /// It does not exist (on this kernel, or in this snapshot).
    Missing,
    /// It was read, but its value is not what the kernel prints.
    Malformed,
    /// Any other failure (an I/O error, an unexpected answer).
    #[default]
    Other,
}

impl Cause {
    /// The cause of an I/O error.
    pub fn of(e: &std::io::Error) -> Cause {
        match e.kind() {
            std::io::ErrorKind::PermissionDenied => Cause::Permission,
            std::io::ErrorKind::NotFound => Cause::Missing,
            _ => Cause::Other,
        }
    }
}

/// Where the socket census came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CensusSource {
    /// NETLINK_SOCK_DIAG dumps.
    Netlink,
    /// `/proc/net/tcp` and `/proc/net/tcp6` (netlink was unavailable).
    Proc,
    /// Counted live by BPF programs on the state and timer tracepoints
    /// (`exporter --live`): no socket's timer is known, nor SYN_RECV.
    Live,
}

/// One observation of one network namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Always `timewait-snapshot`.
    pub format: String,
    /// Format version.
    pub version: u32,
    /// When it was taken (Unix time, ms).
    pub taken_at_unix_ms: u64,
    /// The host's name.
    pub hostname: String,
    /// `uname -r`.
    pub kernel_release: String,
    /// Which namespace: `host`, `netns NAME` or `pid PID`.
    pub namespace: String,
    /// Sysctl values as the kernel printed them (trimmed), by dotted name.
    pub sysctls: BTreeMap<String, String>,
    /// `/proc/net` files verbatim, by name (see [`FILES`]).
    pub files: BTreeMap<String, String>,
    /// How the census was taken.
    pub census_source: CensusSource,
    /// The socket census.
    pub census: Census,
    /// Kernel log lines that matter here.
    pub kernel_log: Vec<String>,
    /// What could not be read.
    pub problems: Vec<Problem>,
}

/// Why a snapshot file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Not JSON, or not the expected shape.
    #[error("not a timewait snapshot: {0}")]
    Json(#[from] serde_json::Error),
    /// Some other document.
    #[error("not a timewait snapshot (format is {0:?})")]
    Format(String),
    /// Written by a newer timewait.
    #[error("snapshot version {0} is newer than this timewait reads ({VERSION}); upgrade timewait")]
    Version(u32),
}

impl Snapshot {
    /// Reads a snapshot, refusing other documents and newer versions.
    pub fn from_json(text: &str) -> Result<Snapshot, SnapshotError> {
        #[derive(Deserialize)]
        struct Head {
            format: String,
            version: u32,
        }
        let head: Head = serde_json::from_str(text)?;
        if head.format != FORMAT {
            return Err(SnapshotError::Format(head.format));
        }
        if head.version > VERSION {
            return Err(SnapshotError::Version(head.version));
        }
        Ok(serde_json::from_str(text)?)
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// A sysctl's raw value.
    pub fn sysctl(&self, name: &str) -> Option<&str> {
        self.sysctls.get(name).map(String::as_str)
    }

    /// A counter of `/proc/net/netstat` or `/proc/net/snmp` (`TcpExt`
    /// `TCPTimeWaitOverflow`, `Tcp` `ActiveOpens`, …): `None` when neither
    /// file was read or holds it.
    pub fn counter(&self, table: &str, name: &str) -> Option<i64> {
        ["netstat", "snmp"].into_iter().find_map(|f| {
            timewait_kernel::counters::parse(f, self.files.get(f)?)
                .ok()?
                .get(table, name)
        })
    }

    /// The collection problem recorded for `what`, if any.
    pub fn problem(&self, what: &str) -> Option<&Problem> {
        self.problems.iter().find(|p| p.what == what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> Snapshot {
        Snapshot {
            format: FORMAT.into(),
            version: VERSION,
            taken_at_unix_ms: 1,
            hostname: "h".into(),
            kernel_release: "6.18.0".into(),
            namespace: "host".into(),
            sysctls: BTreeMap::new(),
            files: BTreeMap::new(),
            census_source: CensusSource::Netlink,
            census: Census::default(),
            kernel_log: vec![],
            problems: vec![],
        }
    }

    #[test]
    fn round_trips_and_refuses_strangers() {
        let s = minimal();
        assert_eq!(Snapshot::from_json(&s.to_json()).unwrap(), s);
        assert!(matches!(
            Snapshot::from_json("{\"format\":\"x\",\"version\":1}"),
            Err(SnapshotError::Format(_))
        ));
        let newer = s.to_json().replace("\"version\": 1", "\"version\": 99");
        assert!(matches!(
            Snapshot::from_json(&newer),
            Err(SnapshotError::Version(99))
        ));
        assert!(Snapshot::from_json("not json").is_err());
    }

    #[test]
    fn problems_without_a_cause_read_as_other() {
        let mut s = minimal();
        s.problems
            .push(Problem::new("sockstat", Cause::Permission, "denied"));
        let old = s
            .to_json()
            .replace(",\n      \"cause\": \"permission\"", "");
        assert!(!old.contains("cause"), "{old}");
        let back = Snapshot::from_json(&old).unwrap();
        assert_eq!(back.problems[0].cause, Cause::Other);
        assert_eq!(Snapshot::from_json(&s.to_json()).unwrap(), s);
    }

    #[test]
    fn counters_come_from_netstat_or_snmp() {
        let mut s = minimal();
        s.files.insert(
            "netstat".into(),
            "TcpExt: TW TCPTimeWaitOverflow\nTcpExt: 5 7\n".into(),
        );
        s.files
            .insert("snmp".into(), "Tcp: ActiveOpens\nTcp: 11\n".into());
        assert_eq!(s.counter("TcpExt", "TCPTimeWaitOverflow"), Some(7));
        assert_eq!(s.counter("Tcp", "ActiveOpens"), Some(11));
        assert_eq!(s.counter("Tcp", "PassiveOpens"), None);
    }
}
