//! Sequence-number wrap time per bandwidth (RFC 1185, RFC 7323).
//!
//! TCP sequence numbers are 32 bits; a segment is acceptable if it is within
//! half the space (2^31 bytes) of what is expected. At `B` bytes per second a
//! connection walks through that half in `2^31 / B` seconds. When that is
//! shorter than 2·MSL (how long an old duplicate can survive, and why
//! TIME_WAIT lasts 60 s on Linux), an old segment could land inside a new
//! window: only timestamps (PAWS) tell them apart.

use std::str::FromStr;

use serde::Serialize;

use crate::ModelError;

/// Half the sequence space, the RFC 1185 convention for "wrap".
pub const HALF_SEQUENCE_SPACE_BYTES: f64 = 2_147_483_648.0;

/// A bandwidth in bits per second.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize)]
pub struct Bandwidth {
    /// Bits per second.
    pub bits_per_second: f64,
}

impl FromStr for Bandwidth {
    type Err = ModelError;

    /// Reads `56k`, `56kbit`, `1.5Mbit/s`, `10Gbps`, `100 Mb/s`, `125MB/s`
    /// (capital B means bytes), or a bare number of bits per second.
    /// Prefixes are decimal (k = 1000), as links are sold.
    fn from_str(s: &str) -> Result<Bandwidth, ModelError> {
        let err = |reason: &str| ModelError::Bandwidth {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let value: f64 = num.parse().map_err(|_| err("no number at the start"))?;
        let unit = unit.trim();
        let (scale, rest) = match unit.chars().next() {
            Some('k' | 'K') => (1e3, &unit[1..]),
            Some('M') => (1e6, &unit[1..]),
            Some('G' | 'g') => (1e9, &unit[1..]),
            Some('T' | 't') => (1e12, &unit[1..]),
            _ => (1.0, unit),
        };
        let per_unit = match rest {
            "" | "b" | "bit" | "bits" | "bps" | "b/s" | "bit/s" | "bits/s" => 1.0,
            "B" | "Bps" | "B/s" | "byte/s" | "bytes/s" => 8.0,
            _ => return Err(err("unknown unit")),
        };
        let bits_per_second = value * scale * per_unit;
        if !(bits_per_second.is_finite() && bits_per_second > 0.0) {
            return Err(err("must be above zero"));
        }
        Ok(Bandwidth { bits_per_second })
    }
}

/// One row of the wrap table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WrapRow {
    /// A name for the link ("Ethernet", "10 Gbit/s", or the user's input).
    pub label: String,
    /// Bits per second.
    pub bandwidth_bits_per_second: f64,
    /// Seconds to walk 2^31 bytes of sequence space.
    pub wrap_seconds: f64,
    /// Whether the wrap is faster than 2·MSL, so PAWS (timestamps) is what
    /// protects the connection against old duplicates.
    pub shorter_than_2msl: bool,
}

/// The answer of `model wrap`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WrapReport {
    /// 2·MSL in seconds used for the comparison (60 on Linux).
    pub two_msl_seconds: f64,
    /// Bandwidth at which the wrap equals 2·MSL.
    pub crossover_bits_per_second: f64,
    /// Rows, slowest link first.
    pub rows: Vec<WrapRow>,
}

/// The article's rows (RFC 1185's table) and today's links.
pub fn default_links() -> Vec<(String, Bandwidth)> {
    [
        ("ARPANET 56 kbit/s", 56e3),
        ("DS1 1.5 Mbit/s", 1.5e6),
        ("Ethernet 10 Mbit/s", 10e6),
        ("DS3 45 Mbit/s", 45e6),
        ("FDDI 100 Mbit/s", 100e6),
        ("1 Gbit/s", 1e9),
        ("10 Gbit/s", 10e9),
        ("100 Gbit/s", 100e9),
    ]
    .into_iter()
    .map(|(l, b)| (l.to_string(), Bandwidth { bits_per_second: b }))
    .collect()
}

/// Seconds to wrap at a bandwidth.
pub fn wrap_seconds(b: Bandwidth) -> f64 {
    HALF_SEQUENCE_SPACE_BYTES / (b.bits_per_second / 8.0)
}

/// Builds the table for the given links, sorted slowest first.
pub fn wrap(
    links: Vec<(String, Bandwidth)>,
    two_msl_seconds: f64,
) -> Result<WrapReport, ModelError> {
    if !(two_msl_seconds.is_finite() && two_msl_seconds > 0.0) {
        return Err(ModelError::OutOfRange {
            name: "time-wait-seconds",
            allowed: "a number of seconds above 0",
            value: two_msl_seconds.to_string(),
        });
    }
    let mut rows: Vec<WrapRow> = links
        .into_iter()
        .map(|(label, b)| {
            let w = wrap_seconds(b);
            WrapRow {
                label,
                bandwidth_bits_per_second: b.bits_per_second,
                wrap_seconds: w,
                shorter_than_2msl: w < two_msl_seconds,
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        a.bandwidth_bits_per_second
            .total_cmp(&b.bandwidth_bits_per_second)
    });
    Ok(WrapReport {
        two_msl_seconds,
        crossover_bits_per_second: HALF_SEQUENCE_SPACE_BYTES * 8.0 / two_msl_seconds,
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bw(s: &str) -> f64 {
        s.parse::<Bandwidth>().unwrap().bits_per_second
    }

    #[test]
    fn reproduces_rfc1185_table() {
        let r = wrap(default_links(), 60.0).unwrap();
        let w: Vec<f64> = r.rows.iter().map(|r| r.wrap_seconds.round()).collect();
        // ARPANET ~3.6 days, DS1 ~3 h, Ethernet 1718 s, DS3 382 s, FDDI 172 s.
        assert_eq!(w[..5], [306_783.0, 11_453.0, 1_718.0, 382.0, 172.0]);
        assert!((r.rows[5].wrap_seconds - 17.18).abs() < 0.01);
        let fast: Vec<bool> = r.rows.iter().map(|r| r.shorter_than_2msl).collect();
        assert_eq!(fast, [false, false, false, false, false, true, true, true]);
        // 2^31 bytes in 60 s is about 286 Mbit/s.
        assert_eq!((r.crossover_bits_per_second / 1e6).round(), 286.0);
    }

    #[test]
    fn parses_units() {
        assert_eq!(bw("56k"), 56e3);
        assert_eq!(bw("56kbit"), 56e3);
        assert_eq!(bw("1.5Mbit/s"), 1.5e6);
        assert_eq!(bw("10Gbps"), 10e9);
        assert_eq!(bw("100 Mb/s"), 100e6);
        assert_eq!(bw("125MB/s"), 1e9);
        assert_eq!(bw("9600"), 9600.0);
        for bad in ["", "fast", "0", "-5M", "10 parsecs", "1..5M", "NaNk"] {
            assert!(bad.parse::<Bandwidth>().is_err(), "{bad}");
        }
    }
}
