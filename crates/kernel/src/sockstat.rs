//! `/proc/net/sockstat` (IPv4 and IPv6 TCP together for `tw`).
//!
//! ```text
//! sockets: used 8
//! TCP: inuse 1 orphan 0 tw 0 alloc 1 mem 219
//! ```
//!
//! `tw` is the netns's TIME_WAIT count, the number `tcp_max_tw_buckets` is
//! checked against (`sockstat_seq_show()` in net/ipv4/proc.c).

use serde::Serialize;

use crate::DecodeError;

/// The TCP line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SockstatTcp {
    /// Sockets in use (not TIME_WAIT).
    pub inuse: u64,
    /// Orphaned sockets (closed by the application, still in the kernel).
    pub orphan: u64,
    /// TIME_WAIT sockets.
    pub tw: u64,
    /// Allocated sockets.
    pub alloc: u64,
    /// Pages of memory.
    pub mem: u64,
}

/// Parses the file; the TCP line is required.
pub fn parse(text: &str) -> Result<SockstatTcp, DecodeError> {
    for (i, line) in text.lines().enumerate() {
        let Some(rest) = line.strip_prefix("TCP:") else {
            continue;
        };
        let err = |d: String| DecodeError::new("/proc/net/sockstat", Some(i + 1), d);
        let mut out = SockstatTcp::default();
        let mut seen = 0;
        let mut it = rest.split_whitespace();
        while let Some(key) = it.next() {
            let value = it
                .next()
                .ok_or_else(|| err(format!("{key} has no value")))?;
            let v: u64 = value
                .parse()
                .map_err(|_| err(format!("{key} value {value:?} is not a number")))?;
            let slot = match key {
                "inuse" => &mut out.inuse,
                "orphan" => &mut out.orphan,
                "tw" => &mut out.tw,
                "alloc" => &mut out.alloc,
                "mem" => &mut out.mem,
                _ => continue, // newer kernels may add fields
            };
            *slot = v;
            seen += 1;
        }
        if seen < 5 {
            return Err(err("TCP line lacks inuse/orphan/tw/alloc/mem".into()));
        }
        return Ok(out);
    }
    Err(DecodeError::new("/proc/net/sockstat", None, "no TCP line"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_tcp_line() {
        let t = parse(
            "sockets: used 8\nTCP: inuse 1 orphan 0 tw 128 alloc 1 mem 219\nUDP: inuse 0 mem 0\n",
        )
        .unwrap();
        assert_eq!(t.tw, 128);
        assert_eq!(t.mem, 219);
    }

    #[test]
    fn refuses_broken_files() {
        assert!(parse("sockets: used 8\n").is_err());
        assert_eq!(parse("x\nTCP: inuse 1 tw\n").unwrap_err().line, Some(2));
        assert!(parse("TCP: inuse 1 orphan 0 tw x alloc 1 mem 2").is_err());
    }
}
