//! Which local ports `connect()` can pick, counted exactly as the kernel does.
//!
//! Linux picks an ephemeral port for an unbound socket in
//! `__inet_hash_connect()` (net/ipv4/inet_hashtables.c):
//!
//! ```text
//! high++;                      /* [32768, 60999] -> [32768, 61000[ */
//! remaining = high - low;
//! if (remaining > 1) remaining &= ~1U;
//! offset = (table_perturb[index] + (port_offset >> 32)) % remaining;
//! offset &= ~1U;               /* first pass: ports with the parity of low */
//! for (i = 0, port = low + offset; i < remaining; i += 2, port += 2) {
//!     if (port >= high) port -= remaining;
//!     if (inet_is_local_reserved_port(net, port)) continue;
//!     ...
//! }
//! offset++;                    /* second pass: the other parity */
//! ```
//!
//! With an even-sized range every port is visited. With an odd-sized range
//! `remaining` is rounded down, and the wrap-around lands on `low + 2`, so
//! `low` itself is never picked (unless the scan starts exactly at offset 0,
//! in which case `high` is the one missed). The article's `1024 65535` is
//! 64,512 ports, all usable; `1025 65535` is 64,511 ports of which 64,510 are
//! usable.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::Serialize;

use crate::ModelError;

/// The kernel's default `net.ipv4.ip_local_port_range` (since v4.2).
pub const DEFAULT_PORT_RANGE: PortRange = PortRange {
    low: 32768,
    high: 60999,
};

/// An inclusive local port range, as in `net.ipv4.ip_local_port_range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PortRange {
    /// First port of the range.
    pub low: u16,
    /// Last port of the range (inclusive).
    pub high: u16,
}

impl PortRange {
    /// A validated range: `1 <= low <= high`.
    pub fn new(low: u16, high: u16) -> Result<PortRange, ModelError> {
        let input = format!("{low}-{high}");
        if low == 0 {
            return Err(ModelError::PortRange {
                input,
                reason: "port 0 is not a port".into(),
            });
        }
        if low > high {
            return Err(ModelError::PortRange {
                input,
                reason: "LOW is above HIGH".into(),
            });
        }
        Ok(PortRange { low, high })
    }

    /// Number of ports in the range, `high - low + 1`.
    pub fn len(&self) -> u32 {
        u32::from(self.high) - u32::from(self.low) + 1
    }

    /// A range always holds at least one port.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// `remaining` in `__inet_hash_connect()`: the size rounded down to even.
    pub fn connect_slots(&self) -> u32 {
        let n = self.len();
        if n > 1 { n & !1 } else { n }
    }

    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.low, self.high)
    }
}

impl FromStr for PortRange {
    type Err = ModelError;

    /// Accepts `LOW-HIGH` and the kernel's own `LOW<whitespace>HIGH`.
    fn from_str(s: &str) -> Result<PortRange, ModelError> {
        let err = |reason: &str| ModelError::PortRange {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let t = s.trim();
        let (a, b) = match t.split_once('-') {
            Some(parts) => parts,
            None => {
                let mut it = t.split_whitespace();
                match (it.next(), it.next(), it.next()) {
                    (Some(a), Some(b), None) => (a, b),
                    _ => return Err(err("not two ports")),
                }
            }
        };
        let low = parse_port(a.trim()).ok_or_else(|| err("LOW is not a port number"))?;
        let high = parse_port(b.trim()).ok_or_else(|| err("HIGH is not a port number"))?;
        PortRange::new(low, high).map_err(|_| {
            err(if low == 0 {
                "port 0 is not a port"
            } else {
                "LOW is above HIGH"
            })
        })
    }
}

fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok()
}

/// `net.ipv4.ip_local_reserved_ports`: ports `connect()` and `bind(0)` skip.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReservedPorts {
    /// Sorted, merged, inclusive ranges.
    ranges: Vec<(u16, u16)>,
}

impl ReservedPorts {
    /// No reserved ports (the kernel's default).
    pub fn none() -> ReservedPorts {
        ReservedPorts::default()
    }

    /// Whether `port` is reserved.
    pub fn contains(&self, port: u16) -> bool {
        // Few ranges in practice; a binary search keeps big lists fast too.
        let i = self.ranges.partition_point(|&(lo, _)| lo <= port);
        i > 0 && self.ranges[i - 1].1 >= port
    }

    /// How many reserved ports fall inside `range`.
    pub fn count_in(&self, range: PortRange) -> u32 {
        self.ranges
            .iter()
            .map(|&(lo, hi)| {
                let lo = lo.max(range.low);
                let hi = hi.min(range.high);
                if lo <= hi {
                    u32::from(hi) - u32::from(lo) + 1
                } else {
                    0
                }
            })
            .sum()
    }

    /// Whether no port is reserved.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

impl fmt::Display for ReservedPorts {
    /// The kernel's own format: `8080,9000-9100`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(lo, hi)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for ReservedPorts {
    type Err = ModelError;

    /// Parses the syntax of `/proc/sys/net/ipv4/ip_local_reserved_ports`:
    /// comma-separated ports and `LOW-HIGH` ranges; empty means none.
    fn from_str(s: &str) -> Result<ReservedPorts, ModelError> {
        let err = |reason: String| ModelError::ReservedPorts {
            input: s.to_string(),
            reason,
        };
        let t = s.trim();
        let mut ranges = Vec::new();
        if t.is_empty() {
            return Ok(ReservedPorts { ranges });
        }
        for item in t.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err(err("empty item between commas".into()));
            }
            let (lo, hi) = match item.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (item, item),
            };
            let lo =
                parse_port(lo).ok_or_else(|| err(format!("{item:?} is not a port or range")))?;
            let hi =
                parse_port(hi).ok_or_else(|| err(format!("{item:?} is not a port or range")))?;
            if lo > hi {
                return Err(err(format!("{item:?} is a reversed range")));
            }
            ranges.push((lo, hi));
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        Ok(ReservedPorts { ranges: merged })
    }
}

/// `net.ipv4.tcp_tw_reuse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "u8")]
pub enum TwReuse {
    /// 0: never reuse a TIME_WAIT 4-tuple for a new outgoing connection.
    Off,
    /// 1: reuse for any destination (needs timestamps; after the reuse delay).
    On,
    /// 2: reuse only for loopback traffic (the default since v4.18).
    LoopbackOnly,
}

impl TwReuse {
    /// The sysctl value.
    pub fn value(self) -> u8 {
        match self {
            TwReuse::Off => 0,
            TwReuse::On => 1,
            TwReuse::LoopbackOnly => 2,
        }
    }

    /// Whether reuse is enabled toward a destination, before the timestamp
    /// and delay conditions (`tcp_twsk_unique()`).
    pub fn enabled_for(self, destination_is_loopback: bool) -> bool {
        match self {
            TwReuse::Off => false,
            TwReuse::On => true,
            TwReuse::LoopbackOnly => destination_is_loopback,
        }
    }
}

impl fmt::Display for TwReuse {
    /// The sysctl value (`0`, `1` or `2`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value().fmt(f)
    }
}

impl From<TwReuse> for u8 {
    fn from(r: TwReuse) -> u8 {
        r.value()
    }
}

impl FromStr for TwReuse {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<TwReuse, ModelError> {
        match s.trim() {
            "0" => Ok(TwReuse::Off),
            "1" => Ok(TwReuse::On),
            "2" => Ok(TwReuse::LoopbackOnly),
            _ => Err(ModelError::TwReuse(s.to_string())),
        }
    }
}

/// Whether the kernel's `tcp_tw_reuse=2` treats this address as loopback:
/// 127.0.0.0/8, `::1`, or an IPv4-mapped 127.0.0.0/8 (`tcp_twsk_unique()`).
pub fn is_loopback(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The ports `connect()` can pick from a range, minus reserved ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectPorts {
    range: PortRange,
    reserved: ReservedPorts,
}

impl ConnectPorts {
    /// The candidate set for a range and its reserved ports.
    pub fn new(range: PortRange, reserved: ReservedPorts) -> ConnectPorts {
        ConnectPorts { range, reserved }
    }

    /// The range.
    pub fn range(&self) -> PortRange {
        self.range
    }

    /// The reserved ports.
    pub fn reserved(&self) -> &ReservedPorts {
        &self.reserved
    }

    /// The port an odd-sized range does not offer to `connect()` (on every
    /// scan but those starting at offset 0; see the module docs), if any.
    pub fn skipped_by_parity(&self) -> Option<u16> {
        let n = self.range.len();
        (n > 1 && !n.is_multiple_of(2)).then_some(self.range.low)
    }

    /// Ports reserved inside the range.
    pub fn reserved_in_range(&self) -> u32 {
        self.reserved.count_in(self.range)
    }

    /// Non-reserved ports in the range: the most that can ever be in use
    /// toward one destination at once.
    pub fn pickable(&self) -> u32 {
        self.range.len() - self.reserved_in_range()
    }

    /// Usable ports for one destination: what one `connect()` considers.
    pub fn usable(&self) -> u32 {
        let mut usable = self.range.connect_slots() - self.reserved_in_range();
        // The parity-skipped port was already subtracted by connect_slots();
        // if it is also reserved it was subtracted twice.
        if let Some(p) = self.skipped_by_parity()
            && self.reserved.contains(p)
        {
            usable += 1;
        }
        usable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usable(range: &str, reserved: &str) -> u32 {
        ConnectPorts::new(range.parse().unwrap(), reserved.parse().unwrap()).usable()
    }

    #[test]
    fn default_range_has_28232_ports() {
        assert_eq!(usable("32768-60999", ""), 28_232);
    }

    #[test]
    fn article_wide_range_is_64512_not_64511() {
        assert_eq!(usable("1024-65535", ""), 64_512);
    }

    #[test]
    fn odd_range_loses_one_port() {
        assert_eq!(usable("1025-65535", ""), 64_510);
        assert_eq!(usable("40000-40128", ""), 128);
    }

    #[test]
    fn reserved_ports_are_subtracted_once() {
        assert_eq!(usable("32768-60999", "32768-32777,40000"), 28_232 - 11);
        // 40000 is the parity-skipped port of this odd range: not counted twice.
        assert_eq!(usable("40000-40128", "40000"), 128);
        // Reserved ports outside the range do not matter.
        assert_eq!(usable("32768-60999", "80,443,61000-65535"), 28_232);
    }

    #[test]
    fn single_port_range() {
        assert_eq!(usable("5000-5000", ""), 1);
    }

    #[test]
    fn parses_kernel_format_and_rejects_bad_ranges() {
        assert_eq!(
            "32768\t60999".parse::<PortRange>().unwrap(),
            DEFAULT_PORT_RANGE
        );
        assert_eq!(
            " 1024 - 65535 ".parse::<PortRange>().unwrap(),
            PortRange {
                low: 1024,
                high: 65535
            }
        );
        for bad in [
            "60999-32768",
            "0-10",
            "1-65536",
            "abc",
            "1-",
            "-5",
            "1 2 3",
            "",
            "+1-5",
        ] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn reserved_list_merges_and_rejects() {
        let r: ReservedPorts = "9000-9100, 8080,9050-9200,8081".parse().unwrap();
        assert_eq!(r.to_string(), "8080-8081,9000-9200");
        assert!(r.contains(9200) && r.contains(8080) && !r.contains(9201) && !r.contains(8079));
        for bad in ["8080,", "a", "9100-9000", "70000", "1,,2"] {
            assert!(bad.parse::<ReservedPorts>().is_err(), "{bad}");
        }
        assert!("".parse::<ReservedPorts>().unwrap().is_empty());
    }

    #[test]
    fn loopback_rule_matches_kernel() {
        assert!(is_loopback("127.0.0.1".parse().unwrap()));
        assert!(is_loopback("127.5.6.7".parse().unwrap()));
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("198.18.0.1".parse().unwrap()));
        assert!(!is_loopback("::ffff:10.0.0.1".parse().unwrap()));
    }
}
