//! Change between two snapshots of one namespace, per second. Time comes
//! from the snapshots' own timestamps, never from a clock.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::Serialize;
use timewait_snapshot::Snapshot;

/// Changes between two snapshots, per second.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rates {
    /// Seconds between the two snapshots.
    pub interval_seconds: f64,
    /// Change of the TIME_WAIT census count.
    pub time_wait_per_second: f64,
    /// TcpExt TW: sockets entering TIME_WAIT per second (unknown without
    /// `/proc/net/netstat` in both).
    pub entering_time_wait_per_second: Option<f64>,
    /// Tcp ActiveOpens: `connect()`s per second.
    pub active_opens_per_second: Option<f64>,
    /// Change of TIME_WAIT per destination `(local ip, remote ip, remote
    /// port)`; a destination absent before counts from zero.
    #[serde(skip)]
    pub by_destination: HashMap<(IpAddr, IpAddr, u16), f64>,
}

/// Seconds from `before` to `after`; `None` unless `after` is later.
pub fn interval_seconds(before: &Snapshot, after: &Snapshot) -> Option<f64> {
    let ms = after
        .taken_at_unix_ms
        .checked_sub(before.taken_at_unix_ms)?;
    (ms > 0).then_some(ms as f64 / 1000.0)
}

/// The change from `before` to `after`. Two snapshots taken within the same
/// millisecond count as 1 ms apart.
pub fn rates(before: &Snapshot, after: &Snapshot) -> Rates {
    let dt = interval_seconds(before, after).unwrap_or(1e-3);
    let per_s = |a: i64, b: i64| (b - a) as f64 / dt;
    let delta = |table, name| {
        Some(per_s(
            before.counter(table, name)?,
            after.counter(table, name)?,
        ))
    };
    let prev: HashMap<_, _> = before
        .census
        .destinations
        .iter()
        .map(|d| ((d.local_ip, d.remote_ip, d.remote_port), d.time_wait as i64))
        .collect();
    let by_destination = after
        .census
        .destinations
        .iter()
        .map(|d| {
            let key = (d.local_ip, d.remote_ip, d.remote_port);
            (
                key,
                per_s(prev.get(&key).copied().unwrap_or(0), d.time_wait as i64),
            )
        })
        .collect();
    let tw = |s: &Snapshot| s.census.states.get("TIME_WAIT").copied().unwrap_or(0) as i64;
    Rates {
        interval_seconds: dt,
        time_wait_per_second: per_s(tw(before), tw(after)),
        entering_time_wait_per_second: delta("TcpExt", "TW"),
        active_opens_per_second: delta("Tcp", "ActiveOpens"),
        by_destination,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use timewait_model::ports::DEFAULT_PORT_RANGE;
    use timewait_snapshot::snapshot::{FORMAT, VERSION};
    use timewait_snapshot::{Aggregator, CensusSource, SocketView};

    use super::*;

    fn at(ms: u64, tw: u16, counters: Option<(i64, i64)>) -> Snapshot {
        let mut a = Aggregator::new(DEFAULT_PORT_RANGE, []);
        for p in 0..tw {
            a.add(&SocketView {
                state: 6,
                timewait_timer: true,
                expires_ms: 1_000,
                local: "10.0.0.1".parse().unwrap(),
                local_port: 40_000 + p,
                remote: "10.0.0.2".parse().unwrap(),
                remote_port: 80,
            });
        }
        let mut files = BTreeMap::new();
        if let Some((tw_entered, opens)) = counters {
            files.insert(
                "netstat".into(),
                format!("TcpExt: TW\nTcpExt: {tw_entered}\n"),
            );
            files.insert("snmp".into(), format!("Tcp: ActiveOpens\nTcp: {opens}\n"));
        }
        Snapshot {
            format: FORMAT.into(),
            version: VERSION,
            taken_at_unix_ms: ms,
            hostname: "h".into(),
            kernel_release: "6.18.0".into(),
            namespace: "current".into(),
            sysctls: BTreeMap::new(),
            files,
            census_source: CensusSource::Netlink,
            census: a.finish(),
            kernel_log: vec![],
            problems: vec![],
        }
    }

    #[test]
    fn rates_are_per_second_of_snapshot_time() {
        let r = rates(
            &at(1_000, 10, Some((100, 50))),
            &at(3_000, 30, Some((140, 90))),
        );
        assert_eq!(r.interval_seconds, 2.0);
        assert_eq!(r.time_wait_per_second, 10.0);
        assert_eq!(r.entering_time_wait_per_second, Some(20.0));
        assert_eq!(r.active_opens_per_second, Some(20.0));
        let key = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), 80);
        assert_eq!(r.by_destination[&key], 10.0);
    }

    #[test]
    fn a_counter_missing_from_either_snapshot_is_unknown() {
        let r = rates(&at(0, 0, None), &at(1_000, 0, Some((1, 1))));
        assert_eq!(r.entering_time_wait_per_second, None);
        assert_eq!(r.active_opens_per_second, None);
        assert_eq!(interval_seconds(&at(5, 0, None), &at(5, 0, None)), None);
    }
}
