//! The analysis behind `timewait status`, from a [`Snapshot`] alone.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;
use timewait_kernel::sockstat;
use timewait_model::ports::{
    ConnectPorts, DEFAULT_PORT_RANGE, PortRange, ReservedPorts, TwReuse, is_loopback,
};
use timewait_model::rate::{DEFAULT_REUSE_DELAY_MS, LINUX_TIME_WAIT_SECONDS, RateInput, rate};

use crate::aggregate::{DestinationTally, ServerSide};
use crate::snapshot::{Problem, Snapshot};

/// The namespace's settings that bear on ports, read from the snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// `ip_local_port_range`, as `LOW-HIGH`.
    #[serde(serialize_with = "as_display")]
    pub port_range: PortRange,
    /// `ip_local_reserved_ports`, in the kernel's syntax.
    pub reserved_ports: String,
    /// Ports one `connect()` can pick toward one destination.
    pub usable_ports: u32,
    /// Ports in the range held by `bind()` or listeners.
    pub bind_held_in_range: u64,
    /// `tcp_tw_reuse`.
    pub tw_reuse: TwReuse,
    /// `tcp_timestamps`.
    pub timestamps: u8,
    /// `tcp_tw_reuse_delay` (1000 where the kernel has no such sysctl).
    pub reuse_delay_ms: u32,
    /// TIME_WAIT length: 60, or Alibaba's `tcp_tw_timeout`.
    pub time_wait_seconds: f64,
    /// `tcp_max_tw_buckets`.
    pub max_tw_buckets: Option<u64>,
    /// TIME_WAIT sockets in the namespace per `/proc/net/sockstat`.
    pub sockstat_time_wait: Option<u64>,
}

fn as_display<S: serde::Serializer>(v: &PortRange, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Reads the settings, noting each value that is missing or unreadable.
pub fn settings(snap: &Snapshot) -> (Settings, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut get = |name: &str, required: bool| -> Option<String> {
        let v = snap.sysctl(name).map(str::to_string);
        if v.is_none() && required {
            problems.push(Problem {
                what: name.to_string(),
                error: "not in the snapshot; the kernel default is assumed".into(),
            });
        }
        v
    };
    let raw_range = get("net.ipv4.ip_local_port_range", true);
    let raw_reserved = get("net.ipv4.ip_local_reserved_ports", true);
    let raw_reuse = get("net.ipv4.tcp_tw_reuse", true);
    let raw_ts = get("net.ipv4.tcp_timestamps", true);
    let raw_delay = get("net.ipv4.tcp_tw_reuse_delay", false);
    let raw_tw = get("net.ipv4.tcp_tw_timeout", false);
    let raw_max = get("net.ipv4.tcp_max_tw_buckets", true);
    let mut parse = |name: &str, raw: Option<String>| -> Option<String> {
        raw.filter(|r| {
            let ok = !r.trim().is_empty() || name.ends_with("reserved_ports");
            if !ok {
                problems.push(Problem {
                    what: name.into(),
                    error: "empty value".into(),
                });
            }
            ok
        })
    };
    let raw_range = parse("net.ipv4.ip_local_port_range", raw_range);
    let mut bad = Vec::new();
    let port_range = raw_range
        .map(|r| {
            r.parse::<PortRange>().unwrap_or_else(|e| {
                bad.push(("net.ipv4.ip_local_port_range", e.to_string()));
                DEFAULT_PORT_RANGE
            })
        })
        .unwrap_or(DEFAULT_PORT_RANGE);
    let reserved = raw_reserved
        .map(|r| {
            r.parse::<ReservedPorts>().unwrap_or_else(|e| {
                bad.push(("net.ipv4.ip_local_reserved_ports", e.to_string()));
                ReservedPorts::none()
            })
        })
        .unwrap_or_default();
    let tw_reuse = raw_reuse
        .map(|r| {
            r.parse::<TwReuse>().unwrap_or_else(|e| {
                bad.push(("net.ipv4.tcp_tw_reuse", e.to_string()));
                TwReuse::LoopbackOnly
            })
        })
        .unwrap_or(TwReuse::LoopbackOnly);
    let mut number = |name: &'static str, raw: Option<String>| -> Option<u64> {
        raw.and_then(|r| match r.trim().parse::<u64>() {
            Ok(v) => Some(v),
            Err(_) => {
                bad.push((name, format!("{r:?} is not a number")));
                None
            }
        })
    };
    let timestamps = number("net.ipv4.tcp_timestamps", raw_ts).map_or(1, |v| v.min(255) as u8);
    let reuse_delay_ms = number("net.ipv4.tcp_tw_reuse_delay", raw_delay)
        .map_or(DEFAULT_REUSE_DELAY_MS, |v| v.clamp(1, 60_000) as u32);
    let time_wait_seconds = number("net.ipv4.tcp_tw_timeout", raw_tw)
        .filter(|&v| v > 0)
        .map_or(LINUX_TIME_WAIT_SECONDS, |v| v as f64);
    let max_tw_buckets = number("net.ipv4.tcp_max_tw_buckets", raw_max);
    for (what, error) in bad {
        problems.push(Problem {
            what: what.into(),
            error,
        });
    }
    let sockstat_time_wait = match snap.files.get("sockstat").map(|t| sockstat::parse(t)) {
        Some(Ok(t)) => Some(t.tw),
        Some(Err(e)) => {
            problems.push(Problem {
                what: "sockstat".into(),
                error: e.to_string(),
            });
            None
        }
        None => None,
    };
    let ports = ConnectPorts::new(port_range, reserved.clone());
    (
        Settings {
            port_range,
            reserved_ports: reserved.to_string(),
            usable_ports: ports.usable(),
            bind_held_in_range: snap.census.bind_held_in_range,
            tw_reuse,
            timestamps,
            reuse_delay_ms,
            time_wait_seconds,
            max_tw_buckets,
            sockstat_time_wait,
        },
        problems,
    )
}

/// TIME_WAIT timers by how soon they fire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expiring {
    /// Within 10 s.
    pub within_10s: u64,
    /// Within 30 s.
    pub within_30s: u64,
    /// Within 60 s.
    pub within_60s: u64,
}

/// One destination, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DestinationRow {
    /// Local address used toward it.
    pub local_ip: IpAddr,
    /// Remote address.
    pub remote_ip: IpAddr,
    /// Remote port.
    pub remote_port: u16,
    /// Sockets in TIME_WAIT.
    pub time_wait: u64,
    /// Sockets in ESTABLISHED.
    pub established: u64,
    /// Sockets in other states.
    pub other: u64,
    /// Ephemeral ports unavailable toward it: its own sockets in the range
    /// plus ports held by `bind()`/listeners.
    pub ports_in_use: u64,
    /// Ports one `connect()` can pick (range minus reserved).
    pub usable_ports: u32,
    /// Share of usable ports still free toward it (0 = exhausted).
    pub headroom_ratio: f64,
    /// When its TIME_WAIT timers fire.
    pub expiring: Expiring,
    /// Whether `tcp_tw_reuse` applies toward it.
    pub reuse_applies: bool,
    /// Model: sustainable new connections per second toward it, with the
    /// ports its open connections and binds leave free.
    pub max_new_connections_per_second: f64,
}

/// Destinations folded by one address.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AddressRow {
    /// The address.
    pub ip: IpAddr,
    /// Destinations (ip:port pairs) folded in.
    pub destinations: u64,
    /// Sockets in TIME_WAIT.
    pub time_wait: u64,
    /// Sockets in ESTABLISHED.
    pub established: u64,
    /// The smallest headroom among its destinations.
    pub min_headroom_ratio: f64,
}

/// How to group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// (local ip, remote ip, remote port).
    Destination,
    /// Remote address.
    RemoteIp,
    /// Local address.
    LocalIp,
    /// State only.
    State,
}

/// The TIME_WAIT section.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimeWaitSection {
    /// TIME_WAIT sockets in the census.
    pub total: u64,
    /// Destinations in the census.
    pub destinations_total: usize,
    /// Client-side destinations, most ports in use first (at most `top`).
    pub by_destination: Vec<DestinationRow>,
    /// With `--by remote-ip`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by_remote_ip: Option<Vec<AddressRow>>,
    /// With `--by local-ip`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by_local_ip: Option<Vec<AddressRow>>,
    /// TIME_WAIT on accepted connections: this host closed first as a server.
    pub server_side: Vec<ServerSide>,
}

/// The whole `status` answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusReport {
    /// Which namespace.
    pub namespace: String,
    /// Host name.
    pub hostname: String,
    /// Kernel release.
    pub kernel_release: String,
    /// `netlink` or `proc`.
    pub census_source: crate::snapshot::CensusSource,
    /// When the snapshot was taken.
    pub taken_at_unix_ms: u64,
    /// Sockets seen.
    pub sockets: u64,
    /// Sockets by state name.
    pub states: BTreeMap<String, u64>,
    /// Port settings.
    pub settings: Settings,
    /// TIME_WAIT by destination and more.
    pub time_wait: TimeWaitSection,
    /// What could not be read or understood.
    pub problems: Vec<Problem>,
}

/// Analyses a snapshot.
pub fn analyse(snap: &Snapshot, by: GroupBy, top: usize) -> StatusReport {
    let (settings, mut problems) = settings(snap);
    let ceilings = Ceilings::new(&settings);
    problems.splice(0..0, snap.problems.iter().cloned());
    let mut rows: Vec<DestinationRow> = snap
        .census
        .destinations
        .iter()
        .map(|d| row(d, &settings, &ceilings))
        .collect();
    rows.sort_by(|a, b| {
        b.ports_in_use
            .cmp(&a.ports_in_use)
            .then(b.time_wait.cmp(&a.time_wait))
            .then((a.local_ip, a.remote_ip, a.remote_port).cmp(&(
                b.local_ip,
                b.remote_ip,
                b.remote_port,
            )))
    });
    let fold = |key: fn(&DestinationRow) -> IpAddr| -> Vec<AddressRow> {
        let mut m: BTreeMap<IpAddr, AddressRow> = BTreeMap::new();
        for r in &rows {
            let e = m.entry(key(r)).or_insert(AddressRow {
                ip: key(r),
                destinations: 0,
                time_wait: 0,
                established: 0,
                min_headroom_ratio: 1.0,
            });
            e.destinations += 1;
            e.time_wait += r.time_wait;
            e.established += r.established;
            e.min_headroom_ratio = e.min_headroom_ratio.min(r.headroom_ratio);
        }
        let mut v: Vec<AddressRow> = m.into_values().collect();
        v.sort_by(|a, b| b.time_wait.cmp(&a.time_wait).then(a.ip.cmp(&b.ip)));
        v.truncate(top);
        v
    };
    let by_remote_ip = (by == GroupBy::RemoteIp).then(|| fold(|r| r.remote_ip));
    let by_local_ip = (by == GroupBy::LocalIp).then(|| fold(|r| r.local_ip));
    let destinations_total = rows.len();
    rows.truncate(top);
    let mut server_side = snap.census.server_side.clone();
    server_side.sort_by(|a, b| {
        b.time_wait
            .cmp(&a.time_wait)
            .then(a.local_port.cmp(&b.local_port))
    });
    StatusReport {
        namespace: snap.namespace.clone(),
        hostname: snap.hostname.clone(),
        kernel_release: snap.kernel_release.clone(),
        census_source: snap.census_source,
        taken_at_unix_ms: snap.taken_at_unix_ms,
        sockets: snap.census.sockets,
        states: snap.census.states.clone(),
        time_wait: TimeWaitSection {
            total: snap.census.states.get("TIME_WAIT").copied().unwrap_or(0),
            destinations_total,
            by_destination: rows,
            by_remote_ip,
            by_local_ip,
            server_side,
        },
        settings,
        problems,
    }
}

/// The model's ceiling per destination depends on the destination only
/// through the loopback rule of `tcp_tw_reuse=2`: computed once per analysis,
/// not once per destination.
struct Ceilings {
    remote: (bool, f64),
    loopback: (bool, f64),
}

impl Ceilings {
    fn new(s: &Settings) -> Ceilings {
        let at = |destination: IpAddr| {
            let input = RateInput {
                ports: ConnectPorts::new(
                    s.port_range,
                    s.reserved_ports.parse().unwrap_or_default(),
                ),
                time_wait_seconds: s.time_wait_seconds,
                tw_reuse: s.tw_reuse,
                timestamps: s.timestamps.min(2),
                destination: Some(destination),
                destinations: 1,
                source_ips: 1,
                reuse_delay_ms: s.reuse_delay_ms,
            };
            match rate(&input) {
                Ok(r) => (
                    r.reuse.applies,
                    r.max_new_connections_per_second_with_reuse
                        .unwrap_or(r.max_new_connections_per_second),
                ),
                Err(_) => (false, 0.0),
            }
        };
        Ceilings {
            remote: at(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            loopback: at(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
        }
    }
}

fn row(d: &DestinationTally, s: &Settings, ceilings: &Ceilings) -> DestinationRow {
    let usable = u64::from(s.usable_ports);
    let ports_in_use = d.in_range + s.bind_held_in_range;
    let free = usable.saturating_sub(ports_in_use);
    let headroom_ratio = if usable == 0 {
        0.0
    } else {
        free as f64 / usable as f64
    };
    let (reuse_applies, ceiling) = if is_loopback(d.remote_ip) {
        ceilings.loopback
    } else {
        ceilings.remote
    };
    // Ports held by open connections and binds do not cycle through TIME_WAIT.
    let cycling = usable.saturating_sub(d.established + d.other + s.bind_held_in_range);
    let per_port = if usable == 0 {
        0.0
    } else {
        ceiling / usable as f64
    };
    DestinationRow {
        local_ip: d.local_ip,
        remote_ip: d.remote_ip,
        remote_port: d.remote_port,
        time_wait: d.time_wait,
        established: d.established,
        other: d.other,
        ports_in_use,
        usable_ports: s.usable_ports,
        headroom_ratio,
        expiring: Expiring {
            within_10s: d.expiring_10s,
            within_30s: d.expiring_30s,
            within_60s: d.expiring_60s,
        },
        reuse_applies,
        max_new_connections_per_second: per_port * cycling as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{Aggregator, SocketView};
    use crate::snapshot::{CensusSource, FORMAT, VERSION};

    fn snap_with(sysctls: &[(&str, &str)], sockets: &[(u8, u16, &str, u16)]) -> Snapshot {
        let range: PortRange = sysctls
            .iter()
            .find(|(k, _)| *k == "net.ipv4.ip_local_port_range")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(DEFAULT_PORT_RANGE);
        let mut a = Aggregator::new(range, [5000]);
        for &(state, lp, remote, rp) in sockets {
            a.add(&SocketView {
                state,
                timewait_timer: state == 6,
                expires_ms: 30_000,
                local: "127.0.0.1".parse().unwrap(),
                local_port: lp,
                remote: remote.parse().unwrap(),
                remote_port: rp,
            });
        }
        Snapshot {
            format: FORMAT.into(),
            version: VERSION,
            taken_at_unix_ms: 0,
            hostname: "test".into(),
            kernel_release: "6.18.0".into(),
            namespace: "host".into(),
            sysctls: sysctls
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            files: BTreeMap::from([(
                "sockstat".to_string(),
                "TCP: inuse 1 orphan 0 tw 3 alloc 1 mem 1\n".to_string(),
            )]),
            census_source: CensusSource::Netlink,
            census: a.finish(),
            kernel_log: vec![],
            problems: vec![],
        }
    }

    fn all_sysctls(range: &str, reuse: &str) -> Vec<(&'static str, String)> {
        vec![
            ("net.ipv4.ip_local_port_range", range.to_string()),
            ("net.ipv4.ip_local_reserved_ports", String::new()),
            ("net.ipv4.tcp_tw_reuse", reuse.to_string()),
            ("net.ipv4.tcp_timestamps", "1".into()),
            ("net.ipv4.tcp_max_tw_buckets", "131072".into()),
        ]
    }

    #[test]
    fn headroom_follows_the_namespace_range_and_binds() {
        let sys = all_sysctls("40000\t40099", "0");
        let sys: Vec<(&str, &str)> = sys.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut socks = vec![(10, 40050, "0.0.0.0", 0)]; // a listener inside the range
        for p in 40000..40040 {
            socks.push((6, p, "10.9.9.9", 80));
        }
        socks.push((1, 40041, "10.9.9.9", 80));
        let snap = snap_with(&sys, &socks);
        let r = analyse(&snap, GroupBy::Destination, 20);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        let d = &r.time_wait.by_destination[0];
        assert_eq!((d.time_wait, d.established), (40, 1));
        assert_eq!(d.usable_ports, 100);
        assert_eq!(d.ports_in_use, 42); // 41 sockets + the listener's port
        assert!((d.headroom_ratio - 0.58).abs() < 1e-9);
        // 100 usable - 1 established - 1 bound = 98 ports cycling every 60 s.
        assert!((d.max_new_connections_per_second - 98.0 / 60.0).abs() < 1e-9);
        assert_eq!(r.settings.sockstat_time_wait, Some(3));
    }

    #[test]
    fn missing_and_broken_values_become_problems() {
        let snap = snap_with(&[("net.ipv4.ip_local_port_range", "banana")], &[]);
        let r = analyse(&snap, GroupBy::Destination, 20);
        let whats: Vec<&str> = r.problems.iter().map(|p| p.what.as_str()).collect();
        assert!(whats.contains(&"net.ipv4.ip_local_port_range"));
        assert!(whats.contains(&"net.ipv4.tcp_tw_reuse"));
        assert_eq!(r.settings.port_range, DEFAULT_PORT_RANGE);
    }

    #[test]
    fn groups_by_remote_ip_and_orders_by_ports_in_use() {
        let sys = all_sysctls("32768\t60999", "2");
        let sys: Vec<(&str, &str)> = sys.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut socks = vec![];
        for p in 0..3 {
            socks.push((6, 33000 + p, "10.0.0.1", 80));
            socks.push((6, 34000 + p, "10.0.0.1", 81));
        }
        for p in 0..5 {
            socks.push((6, 35000 + p, "127.0.0.1", 6379));
        }
        let r = analyse(&snap_with(&sys, &socks), GroupBy::RemoteIp, 20);
        assert_eq!(r.time_wait.by_destination[0].remote_port, 6379);
        assert!(
            r.time_wait.by_destination[0].reuse_applies,
            "loopback with tcp_tw_reuse=2"
        );
        assert!(!r.time_wait.by_destination[1].reuse_applies);
        let by_ip = r.time_wait.by_remote_ip.unwrap();
        assert_eq!(
            (
                by_ip[0].ip.to_string(),
                by_ip[0].destinations,
                by_ip[0].time_wait
            ),
            ("10.0.0.1".into(), 2, 6)
        );
    }
}
