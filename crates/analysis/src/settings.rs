//! The namespace's settings that bear on ports and TIME_WAIT, parsed once
//! from a snapshot's raw sysctl text into typed values.
//!
//! A value that is missing where the kernel always has it, or that is not
//! what the kernel prints, is [`Reading::Unknown`] with the reason, and a
//! [`Problem`] says which value and what was expected. It is never replaced
//! by the kernel default: the analysis shows it as unknown and the rules
//! that need it say what they could not check. Only a sysctl that this
//! kernel does not have at all (`tcp_tw_reuse_delay` before 6.14,
//! `tcp_tw_timeout` outside Alibaba Cloud Linux) stands for the behaviour
//! the kernel hard-codes instead, because that is what the kernel does.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};
use timewait_kernel::sockstat;
use timewait_model::ports::{ConnectPorts, PortRange, ReservedPorts, TwReuse};
use timewait_model::rate::{DEFAULT_REUSE_DELAY_MS, LINUX_TIME_WAIT_SECONDS};
use timewait_snapshot::{Cause, Problem, Snapshot};

/// A value as read from the host: known, or unknown with the reason.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading<T> {
    /// Read and understood.
    Known(T),
    /// Not read, or not understood; the reason names the value.
    Unknown(String),
}

impl<T> Reading<T> {
    /// The value, if known.
    pub fn known(&self) -> Option<&T> {
        match self {
            Reading::Known(v) => Some(v),
            Reading::Unknown(_) => None,
        }
    }

    /// Whether the value is known and equal to `v`.
    pub fn is(&self, v: &T) -> bool
    where
        T: PartialEq,
    {
        self.known() == Some(v)
    }

    /// Maps a known value.
    pub fn map<U>(&self, f: impl FnOnce(&T) -> U) -> Reading<U> {
        match self {
            Reading::Known(v) => Reading::Known(f(v)),
            Reading::Unknown(r) => Reading::Unknown(r.clone()),
        }
    }
}

impl<T: fmt::Display> fmt::Display for Reading<T> {
    /// The value, or `unknown (reason)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reading::Known(v) => v.fmt(f),
            Reading::Unknown(reason) => write!(f, "unknown ({reason})"),
        }
    }
}

/// JSON: the value, or `null` (the reason is in `problems`).
impl<T: Serialize> Serialize for Reading<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Reading::Known(v) => v.serialize(s),
            Reading::Unknown(_) => s.serialize_none(),
        }
    }
}

/// Serializes a known value by its `Display` form (`32768-60999`).
fn as_display<T: fmt::Display, S: Serializer>(v: &Reading<T>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Reading::Known(v) => s.collect_str(v),
        Reading::Unknown(_) => s.serialize_none(),
    }
}

/// The namespace's settings that bear on ports, read from the snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// `ip_local_port_range`, as `LOW-HIGH`.
    #[serde(serialize_with = "as_display")]
    pub port_range: Reading<PortRange>,
    /// `ip_local_reserved_ports`, in the kernel's syntax.
    #[serde(serialize_with = "as_display")]
    pub reserved_ports: Reading<ReservedPorts>,
    /// Ports one `connect()` can pick toward one destination.
    pub usable_ports: Reading<u32>,
    /// Ports in the range held by `bind()` or listeners.
    pub bind_held_in_range: Reading<u64>,
    /// `tcp_tw_reuse`.
    pub tw_reuse: Reading<TwReuse>,
    /// `tcp_timestamps` (0, 1, or 2: on without random offsets).
    pub timestamps: Reading<u8>,
    /// `tcp_tw_reuse_delay` (1000 where the kernel has no such sysctl: the
    /// one-second rule it hard-codes).
    pub reuse_delay_ms: Reading<u32>,
    /// TIME_WAIT length: 60 (`TCP_TIMEWAIT_LEN`), or Alibaba's
    /// `tcp_tw_timeout` where the kernel has it.
    pub time_wait_seconds: Reading<f64>,
    /// Whether the kernel has Alibaba's `tcp_tw_timeout` (so the TIME_WAIT
    /// length is a setting here).
    pub tw_timeout_sysctl: bool,
    /// `tcp_max_tw_buckets`.
    pub max_tw_buckets: Reading<u64>,
    /// `tcp_fin_timeout`, seconds.
    pub fin_timeout_seconds: Reading<u64>,
    /// `tcp_tw_recycle`; absent from kernels since 4.12.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tw_recycle: Option<Reading<u8>>,
    /// TIME_WAIT sockets in the namespace per `/proc/net/sockstat`.
    pub sockstat_time_wait: Reading<u64>,
}

impl Settings {
    /// What `connect()` can pick, when both the range and the reserved
    /// ports are known.
    pub fn connect_ports(&self) -> Option<ConnectPorts> {
        Some(ConnectPorts::new(
            *self.port_range.known()?,
            self.reserved_ports.known()?.clone(),
        ))
    }
}

/// A sysctl: its dotted name, whether every kernel the analysis supports
/// has it, and what a valid value is.
struct Sysctl<T> {
    name: &'static str,
    always_present: bool,
    expected: &'static str,
    parse: fn(&str) -> Option<T>,
}

fn number<T: FromStr + PartialOrd>(low: T, high: T) -> impl Fn(&str) -> Option<T> {
    move |s| {
        let v: T = s.trim().parse().ok()?;
        (v >= low && v <= high).then_some(v)
    }
}

const PORT_RANGE: Sysctl<PortRange> = Sysctl {
    name: "net.ipv4.ip_local_port_range",
    always_present: true,
    expected: "two ports \"LOW HIGH\" with 1 <= LOW <= HIGH <= 65535",
    parse: |s| s.parse().ok(),
};
const RESERVED: Sysctl<ReservedPorts> = Sysctl {
    name: "net.ipv4.ip_local_reserved_ports",
    always_present: true,
    expected: "a comma-separated list of ports and LOW-HIGH ranges, or nothing",
    parse: |s| s.parse().ok(),
};
const TW_REUSE: Sysctl<TwReuse> = Sysctl {
    name: "net.ipv4.tcp_tw_reuse",
    always_present: true,
    expected: "0, 1 or 2",
    parse: |s| s.parse().ok(),
};
const TIMESTAMPS: Sysctl<u8> = Sysctl {
    name: "net.ipv4.tcp_timestamps",
    always_present: true,
    expected: "0, 1 or 2",
    parse: |s| number(0, 2)(s),
};
const REUSE_DELAY: Sysctl<u32> = Sysctl {
    name: "net.ipv4.tcp_tw_reuse_delay",
    always_present: false,
    expected: "milliseconds from 1 to 60000",
    parse: |s| number(1, 60_000)(s),
};
const TW_TIMEOUT: Sysctl<u32> = Sysctl {
    name: "net.ipv4.tcp_tw_timeout",
    always_present: false,
    expected: "seconds from 1 to 600",
    parse: |s| number(1, 600)(s),
};
const MAX_TW_BUCKETS: Sysctl<u64> = Sysctl {
    name: "net.ipv4.tcp_max_tw_buckets",
    always_present: true,
    expected: "a count from 0 to 2147483647",
    parse: |s| number(0, i32::MAX as u64)(s),
};
const FIN_TIMEOUT: Sysctl<u64> = Sysctl {
    name: "net.ipv4.tcp_fin_timeout",
    always_present: true,
    expected: "seconds from 0 to 2147483647",
    parse: |s| number(0, i32::MAX as u64)(s),
};
const TW_RECYCLE: Sysctl<u8> = Sysctl {
    name: "net.ipv4.tcp_tw_recycle",
    always_present: false,
    expected: "0 or 1",
    parse: |s| number(0, 1)(s),
};

/// Reads sysctls from a snapshot, collecting a problem for each value that
/// is unknown (unless collection already recorded one for it).
struct Reader<'a> {
    snap: &'a Snapshot,
    problems: Vec<Problem>,
}

impl Reader<'_> {
    /// `None`: the kernel has no such sysctl (only for optional ones).
    fn read<T>(&mut self, s: &Sysctl<T>) -> Option<Reading<T>> {
        let Some(raw) = self.snap.sysctl(s.name) else {
            if let Some(p) = self.snap.problem(s.name) {
                return Some(Reading::Unknown(p.error.clone()));
            }
            if !s.always_present {
                return None;
            }
            let reason = "not in the snapshot".to_string();
            self.problems
                .push(Problem::new(s.name, Cause::Missing, reason.clone()));
            return Some(Reading::Unknown(reason));
        };
        Some(match (s.parse)(raw) {
            Some(v) => Reading::Known(v),
            None => {
                let reason = format!("{raw:?} is not {}", s.expected);
                self.problems
                    .push(Problem::new(s.name, Cause::Malformed, reason.clone()));
                Reading::Unknown(reason)
            }
        })
    }

    fn required<T>(&mut self, s: &Sysctl<T>) -> Reading<T> {
        self.read(s)
            .unwrap_or_else(|| Reading::Unknown("not in the snapshot".into()))
    }
}

/// Reads the settings, noting each value that is missing or malformed.
pub fn settings(snap: &Snapshot) -> (Settings, Vec<Problem>) {
    let mut r = Reader {
        snap,
        problems: Vec::new(),
    };
    let port_range = r.required(&PORT_RANGE);
    let reserved_ports = r.required(&RESERVED);
    let tw_reuse = r.required(&TW_REUSE);
    let timestamps = r.required(&TIMESTAMPS);
    let reuse_delay_ms = r
        .read(&REUSE_DELAY)
        .unwrap_or(Reading::Known(DEFAULT_REUSE_DELAY_MS));
    let tw_timeout = r.read(&TW_TIMEOUT);
    let tw_timeout_sysctl = tw_timeout.is_some();
    let time_wait_seconds = tw_timeout.map_or(Reading::Known(LINUX_TIME_WAIT_SECONDS), |t| {
        t.map(|&v| f64::from(v))
    });
    let max_tw_buckets = r.required(&MAX_TW_BUCKETS);
    let fin_timeout_seconds = r.required(&FIN_TIMEOUT);
    let tw_recycle = r.read(&TW_RECYCLE);
    let sockstat_time_wait = match snap.files.get("sockstat").map(|t| sockstat::parse(t)) {
        Some(Ok(t)) => Reading::Known(t.tw),
        Some(Err(e)) => {
            r.problems
                .push(Problem::new("sockstat", Cause::Malformed, e.to_string()));
            Reading::Unknown(e.to_string())
        }
        None => Reading::Unknown(snap.problem("sockstat").map_or_else(
            || "/proc/net/sockstat is not in the snapshot".to_string(),
            |p| p.error.clone(),
        )),
    };
    let problems = r.problems;
    let ports = match (&port_range, &reserved_ports) {
        (Reading::Known(range), Reading::Known(reserved)) => {
            Reading::Known(ConnectPorts::new(*range, reserved.clone()).usable())
        }
        _ => Reading::Unknown("needs ip_local_port_range and ip_local_reserved_ports".into()),
    };
    // The census counts bound ports against the range the collector read;
    // with that range unknown, so is the count.
    let bind_held_in_range = port_range.map(|_| snap.census.bind_held_in_range);
    (
        Settings {
            port_range,
            reserved_ports,
            usable_ports: ports,
            bind_held_in_range,
            tw_reuse,
            timestamps,
            reuse_delay_ms,
            time_wait_seconds,
            tw_timeout_sysctl,
            max_tw_buckets,
            fin_timeout_seconds,
            tw_recycle,
            sockstat_time_wait,
        },
        problems,
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use timewait_snapshot::snapshot::{FORMAT, VERSION};
    use timewait_snapshot::{Census, CensusSource};

    use super::*;

    fn snap(sysctls: &[(&str, &str)]) -> Snapshot {
        Snapshot {
            format: FORMAT.into(),
            version: VERSION,
            taken_at_unix_ms: 0,
            hostname: "h".into(),
            kernel_release: "6.18.0".into(),
            namespace: "current".into(),
            sysctls: sysctls
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            files: BTreeMap::from([(
                "sockstat".into(),
                "TCP: inuse 1 orphan 0 tw 3 alloc 1 mem 1\n".into(),
            )]),
            census_source: CensusSource::Netlink,
            census: Census::default(),
            kernel_log: vec![],
            problems: vec![],
        }
    }

    const GOOD: &[(&str, &str)] = &[
        ("net.ipv4.ip_local_port_range", "32768\t60999"),
        ("net.ipv4.ip_local_reserved_ports", ""),
        ("net.ipv4.tcp_tw_reuse", "2"),
        ("net.ipv4.tcp_timestamps", "1"),
        ("net.ipv4.tcp_max_tw_buckets", "131072"),
        ("net.ipv4.tcp_fin_timeout", "60"),
    ];

    fn with(changes: &[(&'static str, &'static str)]) -> Snapshot {
        let mut all: BTreeMap<&str, &str> = GOOD.iter().copied().collect();
        all.extend(changes.iter().copied());
        snap(&all.into_iter().collect::<Vec<_>>())
    }

    #[test]
    fn a_fresh_namespace_is_all_known() {
        let (s, problems) = settings(&with(&[]));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(s.usable_ports, Reading::Known(28_232));
        assert_eq!(s.tw_reuse, Reading::Known(TwReuse::LoopbackOnly));
        // No tcp_tw_reuse_delay before 6.14: the kernel's one-second rule.
        assert_eq!(s.reuse_delay_ms, Reading::Known(1000));
        assert_eq!(s.time_wait_seconds, Reading::Known(60.0));
        assert_eq!(s.tw_recycle, None);
        assert_eq!(s.sockstat_time_wait, Reading::Known(3));
    }

    #[test]
    fn a_malformed_value_is_unknown_and_named_not_defaulted() {
        let (s, problems) = settings(&with(&[("net.ipv4.tcp_tw_reuse", "7")]));
        assert!(s.tw_reuse.known().is_none(), "{:?}", s.tw_reuse);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].what, "net.ipv4.tcp_tw_reuse");
        assert_eq!(problems[0].cause, Cause::Malformed);
        assert_eq!(problems[0].error, "\"7\" is not 0, 1 or 2");
        assert_eq!(s.tw_reuse.to_string(), "unknown (\"7\" is not 0, 1 or 2)");
        let json = serde_json::to_value(&s).unwrap();
        assert!(json["tw_reuse"].is_null());
        assert_eq!(json["port_range"], "32768-60999");
    }

    #[test]
    fn unparsable_reserved_ports_make_usable_ports_unknown_not_none_reserved() {
        let (s, problems) = settings(&with(&[("net.ipv4.ip_local_reserved_ports", "80-x")]));
        assert!(s.reserved_ports.known().is_none());
        assert!(s.usable_ports.known().is_none());
        assert_eq!(problems[0].what, "net.ipv4.ip_local_reserved_ports");
        let json = serde_json::to_value(&s).unwrap();
        assert!(json["reserved_ports"].is_null() && json["usable_ports"].is_null());
    }

    #[test]
    fn out_of_range_numbers_are_malformed() {
        let (s, problems) = settings(&with(&[
            ("net.ipv4.tcp_timestamps", "3"),
            ("net.ipv4.tcp_tw_reuse_delay", "0"),
            ("net.ipv4.tcp_max_tw_buckets", "-1"),
        ]));
        assert!(s.timestamps.known().is_none());
        assert!(s.reuse_delay_ms.known().is_none());
        assert!(s.max_tw_buckets.known().is_none());
        let whats: Vec<&str> = problems.iter().map(|p| p.what.as_str()).collect();
        assert_eq!(
            whats,
            [
                "net.ipv4.tcp_timestamps",
                "net.ipv4.tcp_tw_reuse_delay",
                "net.ipv4.tcp_max_tw_buckets"
            ]
        );
    }

    #[test]
    fn a_missing_required_sysctl_is_unknown_but_a_missing_optional_one_is_absent() {
        let (s, problems) = settings(&snap(&[("net.ipv4.tcp_tw_reuse", "1")]));
        assert!(s.port_range.known().is_none());
        assert_eq!(s.tw_reuse, Reading::Known(TwReuse::On));
        assert!(problems.iter().all(|p| p.cause == Cause::Missing));
        assert!(
            problems
                .iter()
                .any(|p| p.what == "net.ipv4.ip_local_port_range")
        );
        assert!(!problems.iter().any(|p| p.what.contains("reuse_delay")));
    }

    #[test]
    fn a_value_collection_could_not_read_keeps_collections_reason() {
        let mut sn = with(&[]);
        sn.sysctls.remove("net.ipv4.tcp_tw_reuse");
        sn.problems.push(Problem::new(
            "net.ipv4.tcp_tw_reuse",
            Cause::Permission,
            "Permission denied (os error 13)",
        ));
        let (s, problems) = settings(&sn);
        assert_eq!(
            s.tw_reuse,
            Reading::Unknown("Permission denied (os error 13)".into())
        );
        assert!(problems.is_empty(), "reported once, by collection");
    }

    #[test]
    fn alibaba_tw_timeout_sets_the_time_wait_length() {
        let (s, _) = settings(&with(&[("net.ipv4.tcp_tw_timeout", "10")]));
        assert!(s.tw_timeout_sysctl);
        assert_eq!(s.time_wait_seconds, Reading::Known(10.0));
        let (s, p) = settings(&with(&[("net.ipv4.tcp_tw_timeout", "0")]));
        assert!(s.time_wait_seconds.known().is_none());
        assert_eq!(p[0].what, "net.ipv4.tcp_tw_timeout");
    }
}
