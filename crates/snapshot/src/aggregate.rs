//! Streaming aggregation of a socket dump.
//!
//! Each socket is classified once:
//! - `LISTEN` (and `BOUND_INACTIVE`): its port is held by `bind()`, so
//!   `connect()` never picks it for any destination;
//! - local port is a listening port, or lies outside the ephemeral range
//!   while the peer's port lies inside it (the listener may be gone; its
//!   TIME_WAIT stays for 60 s): an accepted (server-side) connection; a
//!   TIME_WAIT here means this host closed first as the server;
//! - otherwise an outgoing (client-side) connection, grouped by destination
//!   `(local ip, remote ip, remote port)`: the kernel's 4-tuple rule makes
//!   every socket in a group hold a distinct local port.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use timewait_kernel::TcpState;
use timewait_model::PortRange;

/// What the aggregator needs from one socket (netlink or /proc alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketView {
    /// Kernel state number (TIME_WAIT minisockets report their substate).
    pub state: u8,
    /// Whether this is a TIME_WAIT minisocket (timer 3).
    pub timewait_timer: bool,
    /// Milliseconds until the timer fires.
    pub expires_ms: u64,
    /// Local address.
    pub local: IpAddr,
    /// Local port.
    pub local_port: u16,
    /// Remote address.
    pub remote: IpAddr,
    /// Remote port.
    pub remote_port: u16,
}

/// Counts for one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationTally {
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
    /// Sockets in any other state (SYN_SENT, FIN_WAIT*, CLOSE_WAIT, …).
    pub other: u64,
    /// Sockets whose local port lies in the ephemeral range.
    pub in_range: u64,
    /// TIME_WAIT sockets whose timer fires within 10 s.
    pub expiring_10s: u64,
    /// … within 30 s.
    pub expiring_30s: u64,
    /// … within 60 s.
    pub expiring_60s: u64,
}

/// TIME_WAIT on an accepted connection: this host closed first as the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSide {
    /// The service port (listening now, or until recently).
    pub local_port: u16,
    /// Sockets in TIME_WAIT on it.
    pub time_wait: u64,
    /// Sockets in ESTABLISHED on it.
    pub established: u64,
}

/// The folded dump.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Census {
    /// Sockets seen.
    pub sockets: u64,
    /// Sockets by state name (as `ss` names them).
    pub states: BTreeMap<String, u64>,
    /// Client-side connections by destination, in no particular order.
    pub destinations: Vec<DestinationTally>,
    /// Server-side connections by listening port.
    pub server_side: Vec<ServerSide>,
    /// Ports with a listener.
    pub listening_ports: Vec<u16>,
    /// Ports inside the ephemeral range held by `bind()` or a listener.
    pub bind_held_in_range: u64,
    /// Whether the TIME_WAIT timers are unknown (`expiring_*` are then 0,
    /// not counts): a live count keeps no socket's timer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timers_unknown: bool,
}

/// Sockets counted without being listed (the live count), already
/// classified by the rule [`Aggregator::add`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    /// Their state.
    pub state: TcpState,
    /// Their local address.
    pub local: IpAddr,
    /// Which side they are on.
    pub side: Side,
    /// How many.
    pub n: u64,
}

/// The side of counted sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Outgoing connections toward one destination.
    Client {
        /// The remote address.
        remote: IpAddr,
        /// The remote port.
        remote_port: u16,
        /// Whether their local ports lie in the ephemeral range.
        in_range: bool,
    },
    /// Accepted connections on a service port.
    Server {
        /// The service port.
        port: u16,
    },
}

type Key = (IpAddr, IpAddr, u16);

/// Folds sockets into a [`Census`].
#[derive(Debug)]
pub struct Aggregator {
    range: PortRange,
    listening: PortSet,
    states: [u64; 16],
    unknown_states: BTreeMap<u8, u64>,
    sockets: u64,
    groups: HashMap<Key, DestinationTally>,
    server: BTreeMap<u16, ServerSide>,
    /// Held by bind() or a listener.
    bound: PortSet,
    timers_unknown: bool,
}

impl Aggregator {
    /// An aggregator for a namespace whose ephemeral range is `range` and
    /// whose listening ports are `listening` (dumped first, so accepted
    /// connections can be told from outgoing ones).
    pub fn new(range: PortRange, listening: impl IntoIterator<Item = u16>) -> Aggregator {
        Aggregator {
            range,
            listening: PortSet::of(listening),
            states: [0; 16],
            unknown_states: BTreeMap::new(),
            sockets: 0,
            groups: HashMap::new(),
            server: BTreeMap::new(),
            bound: PortSet::default(),
            timers_unknown: false,
        }
    }

    /// Adds one socket.
    pub fn add(&mut self, s: &SocketView) {
        self.sockets += 1;
        let state = TcpState::from_kernel(s.state);
        match state {
            // Known states are 1..=13, so the index is in bounds.
            Some(_) => self.states[usize::from(s.state)] += 1,
            None => *self.unknown_states.entry(s.state).or_default() += 1,
        }
        if matches!(state, Some(TcpState::Listen | TcpState::BoundInactive)) {
            self.bound.insert(s.local_port);
            return;
        }
        let tw = s.timewait_timer && state == Some(TcpState::TimeWait);
        let server_side = self.listening.contains(s.local_port)
            || (!self.range.contains(s.local_port) && self.range.contains(s.remote_port));
        let side = if server_side {
            Side::Server { port: s.local_port }
        } else {
            Side::Client {
                remote: s.remote,
                remote_port: s.remote_port,
                in_range: self.range.contains(s.local_port),
            }
        };
        if let Some(g) = self.fold(s.local, side, tw, state, 1)
            && tw
        {
            g.expiring_10s += u64::from(s.expires_ms <= 10_000);
            g.expiring_30s += u64::from(s.expires_ms <= 30_000);
            g.expiring_60s += u64::from(s.expires_ms <= 60_000);
        }
    }

    /// Adds sockets counted, not listed: their timers are unknown.
    pub fn add_counted(&mut self, c: &Counted) {
        self.sockets += c.n;
        // Known states are 1..=13, so the index is in bounds.
        self.states[usize::from(c.state.kernel())] += c.n;
        self.timers_unknown = true;
        let tw = c.state == TcpState::TimeWait;
        self.fold(c.local, c.side, tw, Some(c.state), c.n);
    }

    /// Adds `n` classified sockets to their side's counts; the
    /// destination's, for a client side.
    fn fold(
        &mut self,
        local: IpAddr,
        side: Side,
        tw: bool,
        state: Option<TcpState>,
        n: u64,
    ) -> Option<&mut DestinationTally> {
        let (remote, remote_port, in_range) = match side {
            Side::Server { port } => {
                let e = self.server.entry(port).or_insert(ServerSide {
                    local_port: port,
                    time_wait: 0,
                    established: 0,
                });
                if tw {
                    e.time_wait += n;
                } else if state == Some(TcpState::Established) {
                    e.established += n;
                }
                return None;
            }
            Side::Client {
                remote,
                remote_port,
                in_range,
            } => (remote, remote_port, in_range),
        };
        let g = self
            .groups
            .entry((local, remote, remote_port))
            .or_insert_with(|| DestinationTally {
                local_ip: local,
                remote_ip: remote,
                remote_port,
                time_wait: 0,
                established: 0,
                other: 0,
                in_range: 0,
                expiring_10s: 0,
                expiring_30s: 0,
                expiring_60s: 0,
            });
        if tw {
            g.time_wait += n;
        } else if state == Some(TcpState::Established) {
            g.established += n;
        } else {
            g.other += n;
        }
        if in_range {
            g.in_range += n;
        }
        Some(g)
    }

    /// Folds in another aggregator's sockets (one per dump thread); the
    /// result is the same as if one aggregator had seen them all.
    pub fn merge(&mut self, other: Aggregator) {
        self.sockets += other.sockets;
        for (a, b) in self.states.iter_mut().zip(other.states) {
            *a += b;
        }
        for (k, v) in other.unknown_states {
            *self.unknown_states.entry(k).or_default() += v;
        }
        for (key, t) in other.groups {
            match self.groups.get_mut(&key) {
                None => {
                    self.groups.insert(key, t);
                }
                Some(g) => {
                    g.time_wait += t.time_wait;
                    g.established += t.established;
                    g.other += t.other;
                    g.in_range += t.in_range;
                    g.expiring_10s += t.expiring_10s;
                    g.expiring_30s += t.expiring_30s;
                    g.expiring_60s += t.expiring_60s;
                }
            }
        }
        for (port, s) in other.server {
            let e = self.server.entry(port).or_insert(ServerSide {
                local_port: port,
                time_wait: 0,
                established: 0,
            });
            e.time_wait += s.time_wait;
            e.established += s.established;
        }
        self.bound.union(&other.bound);
        self.timers_unknown |= other.timers_unknown;
    }

    /// A fresh aggregator with the same range and listening ports.
    pub fn empty_like(&self) -> Aggregator {
        Aggregator::new(self.range, self.listening.iter())
    }

    /// The result.
    pub fn finish(self) -> Census {
        let mut states: BTreeMap<String, u64> = BTreeMap::new();
        for (n, count) in self.states.iter().enumerate() {
            if let Some(st) = TcpState::from_kernel(n as u8)
                && *count > 0
            {
                states.insert(st.name().to_string(), *count);
            }
        }
        for (n, count) in self.unknown_states {
            states.insert(format!("UNKNOWN_{n}"), count);
        }
        let bind_held_in_range = (self.range.low..=self.range.high)
            .filter(|&p| self.bound.contains(p))
            .count() as u64;
        let listening_ports: Vec<u16> = self.listening.iter().collect();
        Census {
            sockets: self.sockets,
            states,
            destinations: self.groups.into_values().collect(),
            server_side: self.server.into_values().collect(),
            listening_ports,
            bind_held_in_range,
            timers_unknown: self.timers_unknown,
        }
    }
}

/// A set of ports, one bit each: the census asks it once per socket, so
/// membership is a shift and a mask, not a hash.
#[derive(Debug, Clone)]
struct PortSet(Box<[u64; 1024]>);

impl Default for PortSet {
    fn default() -> PortSet {
        PortSet(Box::new([0; 1024]))
    }
}

impl PortSet {
    fn of(ports: impl IntoIterator<Item = u16>) -> PortSet {
        let mut set = PortSet::default();
        for p in ports {
            set.insert(p);
        }
        set
    }

    fn insert(&mut self, p: u16) {
        self.0[usize::from(p / 64)] |= 1 << (p % 64);
    }

    fn contains(&self, p: u16) -> bool {
        self.0[usize::from(p / 64)] & (1 << (p % 64)) != 0
    }

    fn union(&mut self, other: &PortSet) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a |= b;
        }
    }

    /// The ports in the set, in ascending order.
    fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (0..=u16::MAX).filter(|&p| self.contains(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(state: u8, lp: u16, remote: &str, rp: u16, expires_ms: u64) -> SocketView {
        SocketView {
            state,
            timewait_timer: state == 6,
            expires_ms,
            local: "10.0.0.1".parse().unwrap(),
            local_port: lp,
            remote: remote.parse().unwrap(),
            remote_port: rp,
        }
    }

    /// The same sockets listed one by one and counted by class fold into
    /// the same census, but for the timers the counts do not know.
    #[test]
    fn counted_sockets_fold_as_the_listed_ones_without_their_timers() {
        let range = PortRange::new(32768, 60999).unwrap();
        let socks = [
            sock(6, 80, "192.0.2.9", 51000, 5_000),
            sock(1, 80, "192.0.2.9", 51001, 0),
            sock(6, 33000, "192.0.2.1", 443, 1_000),
            sock(6, 33001, "192.0.2.1", 443, 1_000),
            sock(1, 33002, "192.0.2.1", 443, 0),
            sock(8, 1000, "192.0.2.1", 443, 0),
        ];
        let mut listed = Aggregator::new(range, [80]);
        for s in &socks {
            listed.add(s);
        }
        let mut counted = Aggregator::new(range, [80]);
        let local = "10.0.0.1".parse().unwrap();
        let client = |in_range| Side::Client {
            remote: "192.0.2.1".parse().unwrap(),
            remote_port: 443,
            in_range,
        };
        for (state, side, n) in [
            (TcpState::TimeWait, Side::Server { port: 80 }, 1),
            (TcpState::Established, Side::Server { port: 80 }, 1),
            (TcpState::TimeWait, client(true), 2),
            (TcpState::Established, client(true), 1),
            (TcpState::CloseWait, client(false), 1),
        ] {
            counted.add_counted(&Counted {
                state,
                local,
                side,
                n,
            });
        }
        let (mut want, got) = (listed.finish(), counted.finish());
        assert!(got.timers_unknown && !want.timers_unknown);
        want.timers_unknown = true;
        for d in &mut want.destinations {
            (d.expiring_10s, d.expiring_30s, d.expiring_60s) = (0, 0, 0);
        }
        assert_eq!(got, want);
    }

    #[test]
    fn classifies_listeners_servers_and_destinations() {
        let mut a = Aggregator::new(PortRange::new(32768, 60999).unwrap(), [80, 40000]);
        a.add(&sock(10, 80, "0.0.0.0", 0, 0)); // listener outside the range
        a.add(&sock(10, 40000, "0.0.0.0", 0, 0)); // listener inside the range
        a.add(&sock(6, 80, "192.0.2.9", 51000, 5_000)); // server-side TIME_WAIT
        a.add(&sock(1, 80, "192.0.2.9", 51001, 0));
        for i in 0..5 {
            a.add(&sock(
                6,
                33000 + i,
                "192.0.2.1",
                443,
                1_000 * 12 * u64::from(i),
            ));
        }
        a.add(&sock(1, 33100, "192.0.2.1", 443, 0));
        a.add(&sock(2, 33101, "192.0.2.1", 443, 0));
        a.add(&sock(6, 1000, "192.0.2.2", 443, 59_000)); // explicitly bound below the range
        let c = a.finish();
        assert_eq!(c.sockets, 12);
        assert_eq!(c.states["TIME_WAIT"], 7);
        assert_eq!(c.states["LISTEN"], 2);
        assert_eq!(c.bind_held_in_range, 1);
        assert_eq!(
            c.server_side,
            vec![ServerSide {
                local_port: 80,
                time_wait: 1,
                established: 1
            }]
        );
        let d = c
            .destinations
            .iter()
            .find(|d| d.remote_port == 443 && d.remote_ip.to_string() == "192.0.2.1")
            .unwrap();
        assert_eq!(
            (d.time_wait, d.established, d.other, d.in_range),
            (5, 1, 1, 7)
        );
        // expires 0, 12, 24, 36, 48 s
        assert_eq!((d.expiring_10s, d.expiring_30s, d.expiring_60s), (1, 3, 5));
        let d2 = c
            .destinations
            .iter()
            .find(|d| d.remote_ip.to_string() == "192.0.2.2")
            .unwrap();
        assert_eq!(d2.in_range, 0);
    }

    proptest::proptest! {
        #[test]
        fn merging_split_dumps_equals_one_dump(
            socks in proptest::collection::vec((1u8..14, 32760u16..33000, 0u8..3, 0u16..3, 0u64..70_000), 0..200),
            split in proptest::collection::vec(proptest::bool::ANY, 200),
        ) {
            let range = PortRange::new(32768, 60999).unwrap();
            let mut whole = Aggregator::new(range, [32770]);
            let mut a = Aggregator::new(range, [32770]);
            let mut b = a.empty_like();
            for (i, &(state, lp, r, rp, exp)) in socks.iter().enumerate() {
                let s = sock(state, lp, &format!("192.0.2.{r}"), rp, exp);
                whole.add(&s);
                if split[i] { a.add(&s) } else { b.add(&s) }
            }
            a.merge(b);
            let (mut x, mut y) = (whole.finish(), a.finish());
            x.destinations.sort_by_key(|d| (d.local_ip, d.remote_ip, d.remote_port));
            y.destinations.sort_by_key(|d| (d.local_ip, d.remote_ip, d.remote_port));
            proptest::prop_assert_eq!(x, y);
        }
    }

    #[test]
    fn server_side_time_wait_of_a_listener_that_is_gone() {
        // A benchmark's server closed first on :18080 and exited: no listener,
        // but a non-ephemeral local port facing an ephemeral peer port.
        let mut a = Aggregator::new(PortRange::new(32768, 60999).unwrap(), []);
        for i in 0..3 {
            a.add(&sock(6, 18080, "127.0.0.1", 40000 + i, 1_000));
        }
        let c = a.finish();
        assert!(c.destinations.is_empty(), "{:?}", c.destinations);
        assert_eq!(
            c.server_side,
            vec![ServerSide {
                local_port: 18080,
                time_wait: 3,
                established: 0
            }]
        );
    }

    #[test]
    fn unknown_states_are_counted_not_dropped() {
        let mut a = Aggregator::new(PortRange::new(32768, 60999).unwrap(), []);
        a.add(&sock(42, 33000, "192.0.2.1", 1, 0));
        assert_eq!(a.finish().states["UNKNOWN_42"], 1);
    }
}
