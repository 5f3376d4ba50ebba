//! The analysis behind `timewait status`, from a [`Snapshot`] alone.
//!
//! A number that depends on an unknown setting is `None` (JSON `null`);
//! the setting's problem says why.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;
use timewait_model::ports::is_loopback;
use timewait_model::rate::{RateInput, rate};
use timewait_snapshot::aggregate::{DestinationTally, ServerSide};
use timewait_snapshot::{CensusSource, Problem, Snapshot};

use crate::settings::{Settings, settings};

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
    /// plus ports held by `bind()`/listeners (unknown with the range).
    pub ports_in_use: Option<u64>,
    /// Ports one `connect()` can pick (range minus reserved).
    pub usable_ports: Option<u32>,
    /// Share of usable ports still free toward it (0 = exhausted).
    pub headroom_ratio: Option<f64>,
    /// When its TIME_WAIT timers fire (`None`: unknown, the census was
    /// counted live).
    pub expiring: Option<Expiring>,
    /// Whether `tcp_tw_reuse` applies toward it.
    pub reuse_applies: Option<bool>,
    /// Model: sustainable new connections per second toward it, with the
    /// ports its open connections and binds leave free.
    pub max_new_connections_per_second: Option<f64>,
}

impl DestinationRow {
    /// `(local ip, remote ip, remote port)`.
    pub fn key(&self) -> (IpAddr, IpAddr, u16) {
        (self.local_ip, self.remote_ip, self.remote_port)
    }

    /// Share of usable ports in use, when known.
    pub fn used_ratio(&self) -> Option<f64> {
        self.headroom_ratio.map(|h| 1.0 - h)
    }
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
    /// The smallest headroom among its destinations (unknown when no
    /// destination's is known).
    pub min_headroom_ratio: Option<f64>,
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
    pub census_source: CensusSource,
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
    let mut rows: Vec<(u64, DestinationRow)> = snap
        .census
        .destinations
        .iter()
        .map(|d| {
            let row = row(d, &settings, &ceilings, !snap.census.timers_unknown);
            (d.in_range, row)
        })
        .collect();
    // Ports in use differ from `in_range` by the same bound-port count for
    // every destination, so this order holds even when that count is unknown.
    rows.sort_by(|(ia, a), (ib, b)| {
        ib.cmp(ia).then(b.time_wait.cmp(&a.time_wait)).then(
            (a.local_ip, a.remote_ip, a.remote_port).cmp(&(b.local_ip, b.remote_ip, b.remote_port)),
        )
    });
    let mut rows: Vec<DestinationRow> = rows.into_iter().map(|(_, r)| r).collect();
    let fold = |key: fn(&DestinationRow) -> IpAddr| -> Vec<AddressRow> {
        let mut m: BTreeMap<IpAddr, AddressRow> = BTreeMap::new();
        for r in &rows {
            let e = m.entry(key(r)).or_insert(AddressRow {
                ip: key(r),
                destinations: 0,
                time_wait: 0,
                established: 0,
                min_headroom_ratio: None,
            });
            e.destinations += 1;
            e.time_wait += r.time_wait;
            e.established += r.established;
            e.min_headroom_ratio = match (e.min_headroom_ratio, r.headroom_ratio) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
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
/// not once per destination. `None` where a setting it needs is unknown.
struct Ceilings {
    remote: Option<(bool, f64)>,
    loopback: Option<(bool, f64)>,
}

impl Ceilings {
    fn new(s: &Settings) -> Ceilings {
        let at = |destination: IpAddr| {
            let input = RateInput {
                ports: s.connect_ports()?,
                time_wait_seconds: *s.time_wait_seconds.known()?,
                tw_reuse: *s.tw_reuse.known()?,
                timestamps: *s.timestamps.known()?,
                destination: Some(destination),
                destinations: 1,
                source_ips: 1,
                reuse_delay_ms: *s.reuse_delay_ms.known()?,
            };
            let r = rate(&input).ok()?;
            Some((
                r.reuse.applies,
                r.max_new_connections_per_second_with_reuse
                    .unwrap_or(r.max_new_connections_per_second),
            ))
        };
        Ceilings {
            remote: at(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            loopback: at(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
        }
    }
}

fn row(d: &DestinationTally, s: &Settings, ceilings: &Ceilings, timers: bool) -> DestinationRow {
    let usable = s.usable_ports.known().copied();
    let bound = s.bind_held_in_range.known().copied();
    let ports_in_use = bound.map(|b| d.in_range + b);
    let headroom_ratio = usable.zip(ports_in_use).map(|(usable, used)| {
        let usable = u64::from(usable);
        if usable == 0 {
            0.0
        } else {
            usable.saturating_sub(used) as f64 / usable as f64
        }
    });
    let ceiling = if is_loopback(d.remote_ip) {
        ceilings.loopback
    } else {
        ceilings.remote
    };
    // Ports held by open connections and binds do not cycle through TIME_WAIT.
    let max_new = usable
        .zip(bound)
        .zip(ceiling)
        .map(|((usable, bound), (_, c))| {
            let usable = u64::from(usable);
            let cycling = usable.saturating_sub(d.established + d.other + bound);
            if usable == 0 {
                0.0
            } else {
                c / usable as f64 * cycling as f64
            }
        });
    DestinationRow {
        local_ip: d.local_ip,
        remote_ip: d.remote_ip,
        remote_port: d.remote_port,
        time_wait: d.time_wait,
        established: d.established,
        other: d.other,
        ports_in_use,
        usable_ports: usable,
        headroom_ratio,
        expiring: timers.then_some(Expiring {
            within_10s: d.expiring_10s,
            within_30s: d.expiring_30s,
            within_60s: d.expiring_60s,
        }),
        reuse_applies: ceiling.map(|(applies, _)| applies),
        max_new_connections_per_second: max_new,
    }
}

#[cfg(test)]
mod tests {
    use timewait_model::ports::{DEFAULT_PORT_RANGE, PortRange};
    use timewait_snapshot::snapshot::{FORMAT, VERSION};
    use timewait_snapshot::{Aggregator, SocketView};

    use super::*;
    use crate::settings::Reading;

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
            ("net.ipv4.tcp_fin_timeout", "60".into()),
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
        assert_eq!(d.usable_ports, Some(100));
        assert_eq!(d.ports_in_use, Some(42)); // 41 sockets + the listener's port
        assert!((d.headroom_ratio.unwrap() - 0.58).abs() < 1e-9);
        // 100 usable - 1 established - 1 bound = 98 ports cycling every 60 s.
        assert!((d.max_new_connections_per_second.unwrap() - 98.0 / 60.0).abs() < 1e-9);
        assert_eq!(r.settings.sockstat_time_wait, Reading::Known(3));
    }

    #[test]
    fn missing_and_broken_values_become_problems() {
        let snap = snap_with(&[("net.ipv4.ip_local_port_range", "banana")], &[]);
        let r = analyse(&snap, GroupBy::Destination, 20);
        let whats: Vec<&str> = r.problems.iter().map(|p| p.what.as_str()).collect();
        assert!(whats.contains(&"net.ipv4.ip_local_port_range"));
        assert!(whats.contains(&"net.ipv4.tcp_tw_reuse"));
        assert!(r.settings.port_range.known().is_none());
    }

    #[test]
    fn numbers_that_need_an_unknown_setting_are_unknown() {
        let sys = all_sysctls("32768\t60999", "9");
        let sys: Vec<(&str, &str)> = sys.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = analyse(
            &snap_with(&sys, &[(6, 33000, "10.0.0.1", 80)]),
            GroupBy::Destination,
            20,
        );
        let d = &r.time_wait.by_destination[0];
        // The range is known, so ports and headroom are; the rate needs tcp_tw_reuse.
        assert_eq!(d.ports_in_use, Some(1));
        assert!(d.headroom_ratio.is_some());
        assert_eq!(d.max_new_connections_per_second, None);
        assert_eq!(d.reuse_applies, None);
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert_eq!(r.problems[0].what, "net.ipv4.tcp_tw_reuse");
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
            r.time_wait.by_destination[0].reuse_applies == Some(true),
            "loopback with tcp_tw_reuse=2"
        );
        assert_eq!(r.time_wait.by_destination[1].reuse_applies, Some(false));
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
