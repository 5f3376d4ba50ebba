//! The two-line tables of `/proc/net/netstat` and `/proc/net/snmp`:
//! a line of names and a line of values, both starting with `Table:`.
//!
//! ```text
//! TcpExt: SyncookiesSent ... TW TWRecycled TWKilled ... TCPTimeWaitOverflow ...
//! TcpExt: 0 ... 12345 678 0 ... 0 ...
//! ```

use std::collections::BTreeMap;

use crate::DecodeError;

/// Every counter, by table (`TcpExt`, `Tcp`, `IpExt`, …) and name. Values are
/// signed: `Tcp: MaxConn` is -1.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    tables: BTreeMap<String, BTreeMap<String, i64>>,
}

impl Counters {
    /// One counter.
    pub fn get(&self, table: &str, name: &str) -> Option<i64> {
        self.tables.get(table)?.get(name).copied()
    }

    /// One table.
    pub fn table(&self, table: &str) -> Option<&BTreeMap<String, i64>> {
        self.tables.get(table)
    }

    /// Adds another file's tables (netstat and snmp together).
    pub fn merge(&mut self, other: Counters) {
        for (t, values) in other.tables {
            self.tables.entry(t).or_default().extend(values);
        }
    }
}

/// Parses one file. `source_name` is used in errors (`/proc/net/netstat`).
pub fn parse(source_name: &'static str, text: &str) -> Result<Counters, DecodeError> {
    let mut out = Counters::default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    for (pair_index, pair) in lines.chunks(2).enumerate() {
        let line_no = pair_index * 2 + 1;
        let err = |n: usize, d: String| DecodeError::new(source_name, Some(n), d);
        let [names, values] = pair else {
            return Err(err(
                line_no,
                "a line of names without its line of values".into(),
            ));
        };
        let (t1, names) = names
            .split_once(':')
            .ok_or_else(|| err(line_no, "no 'Table:' prefix".into()))?;
        let (t2, values) = values
            .split_once(':')
            .ok_or_else(|| err(line_no + 1, "no 'Table:' prefix".into()))?;
        if t1 != t2 {
            return Err(err(
                line_no + 1,
                format!("values for {t2:?} follow names for {t1:?}"),
            ));
        }
        let names: Vec<&str> = names.split_whitespace().collect();
        let values: Vec<&str> = values.split_whitespace().collect();
        if names.len() != values.len() {
            return Err(err(
                line_no + 1,
                format!("{t1}: {} names but {} values", names.len(), values.len()),
            ));
        }
        let table = out.tables.entry(t1.to_string()).or_default();
        for (n, v) in names.into_iter().zip(values) {
            let v: i64 = v
                .parse()
                .map_err(|_| err(line_no + 1, format!("{t1} {n} value {v:?} is not a number")))?;
            table.insert(n.to_string(), v);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_tcpext_and_snmp() {
        let netstat = "TcpExt: TW TWRecycled TWKilled TCPTimeWaitOverflow\nTcpExt: 12345 678 0 3\nIpExt: InOctets\nIpExt: 99\n";
        let snmp = "Tcp: RtoAlgorithm MaxConn ActiveOpens\nTcp: 1 -1 18\n";
        let mut c = parse("/proc/net/netstat", netstat).unwrap();
        c.merge(parse("/proc/net/snmp", snmp).unwrap());
        assert_eq!(c.get("TcpExt", "TWRecycled"), Some(678));
        assert_eq!(c.get("TcpExt", "TCPTimeWaitOverflow"), Some(3));
        assert_eq!(c.get("Tcp", "MaxConn"), Some(-1));
        assert_eq!(c.get("Tcp", "Nope"), None);
    }

    #[test]
    fn mismatches_name_the_line() {
        let e = parse("/proc/net/netstat", "TcpExt: A B\nTcpExt: 1\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/proc/net/netstat:2: TcpExt: 2 names but 1 values"
        );
        assert!(parse("/proc/net/netstat", "TcpExt: A\nIpExt: 1\n").is_err());
        assert!(parse("/proc/net/netstat", "TcpExt: A\n").is_err());
        assert!(parse("/proc/net/netstat", "TcpExt: A\nTcpExt: x\n").is_err());
    }

    proptest! {
        #[test]
        fn any_text_never_panics(s in "\\PC{0,300}") {
            let _ = parse("/proc/net/netstat", &s);
        }
    }
}
