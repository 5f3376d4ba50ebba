//! The ceiling on new outgoing connections per second toward one destination.
//!
//! Each outgoing connection that this host closes first leaves its 4-tuple
//! (source ip, source port, destination ip, destination port) in TIME_WAIT
//! for `T` seconds (60 on Linux, `TCP_TIMEWAIT_LEN`). Toward one destination
//! from one source address only the source port varies, so at most `P`
//! usable ports can be in TIME_WAIT at once and the sustained rate is `P / T`:
//! 28,232 / 60 s = 470.5 connections per second with the default range.
//!
//! `tcp_tw_reuse` lets `connect()` take over a TIME_WAIT 4-tuple once it is
//! older than `tcp_tw_reuse_delay` (1,000 ms by default, settable since 6.14;
//! before 6.14, between 0 and 1 s after the last timestamped segment), and
//! only when the old connection used TCP timestamps. The ceiling becomes
//! `P / delay`.

use std::net::IpAddr;

use serde::Serialize;

use crate::ModelError;
use crate::ports::{ConnectPorts, TwReuse, is_loopback};

/// Linux's TIME_WAIT length, `TCP_TIMEWAIT_LEN`, in seconds.
pub const LINUX_TIME_WAIT_SECONDS: f64 = 60.0;

/// The kernel's default `tcp_tw_reuse_delay`, in milliseconds.
pub const DEFAULT_REUSE_DELAY_MS: u32 = 1000;

/// What the rate depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct RateInput {
    /// Usable ports (range and reserved ports).
    pub ports: ConnectPorts,
    /// TIME_WAIT length in seconds (60, or Aliyun's `tcp_tw_timeout`).
    pub time_wait_seconds: f64,
    /// `tcp_tw_reuse`.
    pub tw_reuse: TwReuse,
    /// `tcp_timestamps` (0 off, 1 on, 2 on without random offsets).
    pub timestamps: u8,
    /// The remote address, for the loopback rule of `tcp_tw_reuse=2`.
    pub destination: Option<IpAddr>,
    /// How many distinct destinations (remote ip:port) the traffic spreads over.
    pub destinations: u32,
    /// How many local source addresses are used.
    pub source_ips: u32,
    /// `tcp_tw_reuse_delay` in milliseconds.
    pub reuse_delay_ms: u32,
}

impl RateInput {
    /// The kernel's defaults: 32768-60999, 60 s, reuse 2, timestamps 1.
    pub fn kernel_defaults() -> RateInput {
        RateInput {
            ports: ConnectPorts::new(crate::ports::DEFAULT_PORT_RANGE, Default::default()),
            time_wait_seconds: LINUX_TIME_WAIT_SECONDS,
            tw_reuse: TwReuse::LoopbackOnly,
            timestamps: 1,
            destination: None,
            destinations: 1,
            source_ips: 1,
            reuse_delay_ms: DEFAULT_REUSE_DELAY_MS,
        }
    }

    /// Checks every field against what the kernel (or physics) allows.
    pub fn validate(&self) -> Result<(), ModelError> {
        validate_time_wait(self.time_wait_seconds)?;
        validate_count("destinations", self.destinations)?;
        validate_count("source-ips", self.source_ips)?;
        validate_timestamps(self.timestamps)?;
        validate_reuse_delay(self.reuse_delay_ms)
    }

    /// Why reuse does or does not apply, and whether it does.
    pub fn reuse_status(&self) -> (bool, &'static str) {
        let loopback = self.destination.is_some_and(is_loopback);
        match self.tw_reuse {
            TwReuse::Off => (false, "tcp_tw_reuse=0: TIME_WAIT is never reused"),
            TwReuse::LoopbackOnly if self.destination.is_none() => (
                false,
                "tcp_tw_reuse=2 reuses only toward loopback; no --destination given, so a remote one is assumed",
            ),
            TwReuse::LoopbackOnly if !loopback => (
                false,
                "tcp_tw_reuse=2 reuses only toward loopback, and this destination is not loopback",
            ),
            _ if self.timestamps == 0 => (
                false,
                "tcp_timestamps=0: reuse needs timestamps on the old connection, so it never happens",
            ),
            TwReuse::LoopbackOnly => (true, "tcp_tw_reuse=2 and the destination is loopback"),
            TwReuse::On => (true, "tcp_tw_reuse=1 and timestamps are on"),
        }
    }
}

pub(crate) fn validate_time_wait(t: f64) -> Result<(), ModelError> {
    if t.is_finite() && t > 0.0 && t <= 600.0 {
        Ok(())
    } else {
        Err(ModelError::OutOfRange {
            name: "time-wait-seconds",
            allowed: "a number of seconds above 0 and at most 600",
            value: t.to_string(),
        })
    }
}

pub(crate) fn validate_count(name: &'static str, n: u32) -> Result<(), ModelError> {
    if n >= 1 {
        Ok(())
    } else {
        Err(ModelError::OutOfRange {
            name,
            allowed: "a whole number of at least 1",
            value: n.to_string(),
        })
    }
}

pub(crate) fn validate_timestamps(ts: u8) -> Result<(), ModelError> {
    if ts <= 2 {
        Ok(())
    } else {
        Err(ModelError::OutOfRange {
            name: "timestamps",
            allowed: "0 (off), 1 (on) or 2 (on, no random offset)",
            value: ts.to_string(),
        })
    }
}

pub(crate) fn validate_reuse_delay(ms: u32) -> Result<(), ModelError> {
    if (1..=60_000).contains(&ms) {
        Ok(())
    } else {
        Err(ModelError::OutOfRange {
            name: "reuse-delay-ms",
            allowed: "between 1 and 60000 milliseconds (the kernel's range)",
            value: ms.to_string(),
        })
    }
}

/// How `tcp_tw_reuse` bears on this destination.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReuseReport {
    /// `tcp_tw_reuse` as given.
    pub tw_reuse: TwReuse,
    /// `tcp_timestamps` as given.
    pub timestamps: u8,
    /// Whether the destination counts as loopback (`None` if not given).
    pub destination_is_loopback: Option<bool>,
    /// Whether reuse happens toward this destination.
    pub applies: bool,
    /// Why (one sentence).
    pub reason: String,
    /// `tcp_tw_reuse_delay` in milliseconds.
    pub reuse_delay_ms: u32,
}

/// One thing the user could change, and what the ceiling would become.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lever {
    /// What to change, in words a sysadmin would type or do.
    pub change: String,
    /// The per-destination ceiling after the change.
    pub max_new_connections_per_second: f64,
    /// New ceiling divided by the current one.
    pub factor: f64,
}

/// The answer of `model rate`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RateReport {
    /// `ip_local_port_range` as `LOW-HIGH`.
    pub port_range: String,
    /// Ports in the range.
    pub range_ports: u32,
    /// Reserved ports inside the range.
    pub reserved_in_range: u32,
    /// The port an odd-sized range never offers to `connect()`.
    pub parity_skipped_port: Option<u16>,
    /// Ports `connect()` can pick toward one destination.
    pub usable_ports: u32,
    /// TIME_WAIT length in seconds.
    pub time_wait_seconds: f64,
    /// Sustained ceiling without reuse, per destination (one 4-tuple space).
    pub max_new_connections_per_second: f64,
    /// Ceiling with reuse, per destination, when reuse applies.
    pub max_new_connections_per_second_with_reuse: Option<f64>,
    /// Destinations the traffic spreads over.
    pub destinations: u32,
    /// Source addresses in use.
    pub source_ips: u32,
    /// Ceiling over all destinations and source addresses (reuse included when it applies).
    pub total_max_new_connections_per_second: f64,
    /// Reuse details.
    pub reuse: ReuseReport,
    /// Changes that at least double the ceiling, best first.
    pub levers: Vec<Lever>,
}

/// Computes the ceiling. Validates first.
pub fn rate(input: &RateInput) -> Result<RateReport, ModelError> {
    input.validate()?;
    let usable = input.ports.usable();
    let base = f64::from(usable) / input.time_wait_seconds;
    let (applies, reason) = input.reuse_status();
    let with_reuse = applies.then(|| reuse_ceiling(usable, input.reuse_delay_ms));
    let per_destination = with_reuse.unwrap_or(base);
    let total = per_destination * f64::from(input.destinations) * f64::from(input.source_ips);
    Ok(RateReport {
        port_range: input.ports.range().to_string(),
        range_ports: input.ports.range().len(),
        reserved_in_range: input.ports.reserved_in_range(),
        parity_skipped_port: input.ports.skipped_by_parity(),
        usable_ports: usable,
        time_wait_seconds: input.time_wait_seconds,
        max_new_connections_per_second: base,
        max_new_connections_per_second_with_reuse: with_reuse,
        destinations: input.destinations,
        source_ips: input.source_ips,
        total_max_new_connections_per_second: total,
        reuse: ReuseReport {
            tw_reuse: input.tw_reuse,
            timestamps: input.timestamps,
            destination_is_loopback: input.destination.map(is_loopback),
            applies,
            reason: reason.to_string(),
            reuse_delay_ms: input.reuse_delay_ms,
        },
        levers: levers(input, usable, per_destination, applies),
    })
}

/// Ports cycle once per reuse delay.
fn reuse_ceiling(usable: u32, delay_ms: u32) -> f64 {
    f64::from(usable) * 1000.0 / f64::from(delay_ms)
}

/// The widest range the kernel accepts by default (`ip_unprivileged_port_start`).
const WIDEST: (u16, u16) = (1024, 65535);

fn levers(input: &RateInput, usable: u32, current: f64, reuse_applies: bool) -> Vec<Lever> {
    let mut out = Vec::new();
    let per_port_cycle = if reuse_applies {
        f64::from(input.reuse_delay_ms) / 1000.0
    } else {
        input.time_wait_seconds
    };
    let mut push = |change: String, new: f64| {
        if current > 0.0 && new / current >= 1.999 {
            out.push(Lever {
                change,
                max_new_connections_per_second: new,
                factor: new / current,
            });
        }
    };
    if !reuse_applies && input.timestamps != 0 {
        push(
            "sysctl -w net.ipv4.tcp_tw_reuse=1 (outgoing connections only; needs timestamps at both ends)".into(),
            reuse_ceiling(usable, input.reuse_delay_ms),
        );
    }
    if !reuse_applies && input.timestamps == 0 && input.tw_reuse != TwReuse::Off {
        push(
            "sysctl -w net.ipv4.tcp_timestamps=1 (reuse cannot work without them)".into(),
            reuse_ceiling(usable, input.reuse_delay_ms),
        );
    }
    let range = input.ports.range();
    if (range.low, range.high) != WIDEST {
        let wide = ConnectPorts::new(
            crate::PortRange {
                low: WIDEST.0,
                high: WIDEST.1,
            },
            input.ports.reserved().clone(),
        );
        push(
            format!(
                "sysctl -w net.ipv4.ip_local_port_range=\"{} {}\" ({} usable ports; keep listening ports out of it or reserve them)",
                WIDEST.0,
                WIDEST.1,
                crate::text::thousands(wide.usable().into())
            ),
            f64::from(wide.usable()) / per_port_cycle,
        );
    }
    push(
        "add a second source address (bind(addr, 0) with IP_BIND_ADDRESS_NO_PORT before connect)"
            .into(),
        current * 2.0,
    );
    push(
        "spread traffic over a second destination address or port (each has its own 4-tuple space)"
            .into(),
        current * 2.0,
    );
    if !reuse_applies {
        push(
            format!(
                "shorten TIME_WAIT to {:.0} s (only Alibaba Cloud Linux's tcp_tw_timeout can; upstream Linux is fixed at 60 s)",
                input.time_wait_seconds / 2.0
            ),
            current * 2.0,
        );
    }
    out.sort_by(|a, b| b.factor.total_cmp(&a.factor));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PortRange;

    fn with(range: &str, tw: f64) -> RateReport {
        let mut input = RateInput::kernel_defaults();
        input.ports = ConnectPorts::new(range.parse().unwrap(), Default::default());
        input.time_wait_seconds = tw;
        rate(&input).unwrap()
    }

    #[test]
    fn article_default_range_gives_470_5_per_second() {
        let r = with("32768-60999", 60.0);
        assert_eq!(r.usable_ports, 28_232);
        assert!((r.max_new_connections_per_second - 470.533).abs() < 0.001);
        assert_eq!(r.max_new_connections_per_second_with_reuse, None);
    }

    #[test]
    fn article_wide_range_gives_1075_per_second() {
        let r = with("1024-65535", 60.0);
        assert_eq!(r.usable_ports, 64_512);
        assert_eq!(r.max_new_connections_per_second.floor(), 1075.0);
    }

    #[test]
    fn article_aliyun_10s_gives_6451_per_second() {
        let r = with("1024-65535", 10.0);
        assert_eq!(r.max_new_connections_per_second.floor(), 6451.0);
    }

    #[test]
    fn reuse_two_applies_only_to_loopback() {
        let mut input = RateInput::kernel_defaults();
        input.destination = Some("10.1.2.3".parse().unwrap());
        assert!(!rate(&input).unwrap().reuse.applies);
        input.destination = Some("127.0.0.1".parse().unwrap());
        let r = rate(&input).unwrap();
        assert!(r.reuse.applies);
        assert_eq!(r.max_new_connections_per_second_with_reuse, Some(28_232.0));
        input.timestamps = 0;
        assert!(!rate(&input).unwrap().reuse.applies);
    }

    #[test]
    fn reuse_delay_scales_the_reuse_ceiling() {
        let mut input = RateInput::kernel_defaults();
        input.tw_reuse = TwReuse::On;
        input.reuse_delay_ms = 100;
        let r = rate(&input).unwrap();
        assert_eq!(r.max_new_connections_per_second_with_reuse, Some(282_320.0));
    }

    #[test]
    fn destinations_and_sources_multiply_the_total() {
        let mut input = RateInput::kernel_defaults();
        input.destinations = 3;
        input.source_ips = 2;
        let r = rate(&input).unwrap();
        assert!((r.total_max_new_connections_per_second - 6.0 * 28_232.0 / 60.0).abs() < 1e-9);
    }

    #[test]
    fn every_lever_at_least_doubles() {
        let r = with("32768-60999", 60.0);
        assert!(!r.levers.is_empty());
        assert!(r.levers.iter().all(|l| l.factor >= 1.999));
        assert!(r.levers.iter().any(|l| l.change.contains("tcp_tw_reuse=1")));
        assert!(r.levers.iter().any(|l| l.change.contains("1024 65535")));
    }

    #[test]
    fn bad_inputs_are_refused() {
        let mut input = RateInput::kernel_defaults();
        input.time_wait_seconds = -1.0;
        assert_eq!(
            rate(&input).unwrap_err().parameter(),
            Some("time-wait-seconds")
        );
        let mut input = RateInput::kernel_defaults();
        input.reuse_delay_ms = 0;
        assert_eq!(
            rate(&input).unwrap_err().parameter(),
            Some("reuse-delay-ms")
        );
        let mut input = RateInput::kernel_defaults();
        input.destinations = 0;
        assert_eq!(rate(&input).unwrap_err().parameter(), Some("destinations"));
        let _ = PortRange::new(1, 1).unwrap();
    }
}
