//! Lines of `/proc/net/tcp` and `/proc/net/tcp6` (the fallback when netlink
//! sock_diag is unavailable), as `tcp4_seq_show()`/`get_timewait4_sock()` print them.
//!
//! ```text
//!   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
//!    0: 0100007F:9C41 0100007F:1388 06 00000000:00000000 03:00001770 00000000     0        0 0 3 ...
//! ```
//!
//! Addresses are the kernel's 32-bit words printed with `%08X` in host byte
//! order; this decoder reads them as a little-endian host (x86-64, arm64)
//! wrote them. `tm->when` is in USER_HZ ticks (1/100 s on Linux).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{DecodeError, TcpState};

/// One socket line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcTcpEntry {
    /// Local address.
    pub local: IpAddr,
    /// Local port.
    pub local_port: u16,
    /// Remote address.
    pub remote: IpAddr,
    /// Remote port.
    pub remote_port: u16,
    /// The raw state number.
    pub state_raw: u8,
    /// Timer kind (`tr`): 0 none, 1 retransmit, 2 keepalive, 3 TIME_WAIT, 4 probe.
    pub timer: u8,
    /// Ticks (USER_HZ) until the timer fires.
    pub timer_ticks: u64,
    /// Owner uid.
    pub uid: u32,
    /// Inode.
    pub inode: u64,
}

impl ProcTcpEntry {
    /// The state, if known.
    pub fn state(&self) -> Option<TcpState> {
        TcpState::from_kernel(self.state_raw)
    }
}

/// Parses a whole file; the header line is skipped; errors name the line.
pub fn parse(text: &str) -> impl Iterator<Item = Result<ProcTcpEntry, DecodeError>> + '_ {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let t = l.trim_start();
            !t.is_empty() && !t.starts_with("sl")
        })
        .map(|(i, l)| parse_line(l).map_err(|d| DecodeError::new("/proc/net/tcp", Some(i + 1), d)))
}

fn parse_line(line: &str) -> Result<ProcTcpEntry, String> {
    let mut f = line.split_whitespace();
    let mut next = |what: &str| f.next().ok_or_else(|| format!("missing {what}"));
    let sl = next("slot")?;
    if !sl.ends_with(':') {
        return Err(format!("slot {sl:?} does not end with ':'"));
    }
    let (local, local_port) = endpoint(next("local address")?)?;
    let (remote, remote_port) = endpoint(next("remote address")?)?;
    let state_raw =
        u8::from_str_radix(next("state")?, 16).map_err(|_| "state is not hex".to_string())?;
    let _queues = next("queues")?;
    let (tr, when) = next("timer")?
        .split_once(':')
        .ok_or_else(|| "timer is not tr:when".to_string())?;
    let timer = u8::from_str_radix(tr, 16).map_err(|_| "timer kind is not hex".to_string())?;
    let timer_ticks =
        u64::from_str_radix(when, 16).map_err(|_| "timer ticks are not hex".to_string())?;
    let _retrnsmt = next("retransmits")?;
    let uid = next("uid")?
        .parse()
        .map_err(|_| "uid is not a number".to_string())?;
    let _timeout = next("timeout")?;
    let inode = next("inode")?
        .parse()
        .map_err(|_| "inode is not a number".to_string())?;
    Ok(ProcTcpEntry {
        local,
        local_port,
        remote,
        remote_port,
        state_raw,
        timer,
        timer_ticks,
        uid,
        inode,
    })
}

fn endpoint(s: &str) -> Result<(IpAddr, u16), String> {
    let (addr, port) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not ADDR:PORT"))?;
    let port = u16::from_str_radix(port, 16).map_err(|_| format!("port in {s:?} is not hex"))?;
    let word = |i: usize| -> Result<[u8; 4], String> {
        let w = addr
            .get(i * 8..i * 8 + 8)
            .ok_or_else(|| format!("address {addr:?} is short"))?;
        u32::from_str_radix(w, 16)
            .map(u32::to_le_bytes)
            .map_err(|_| format!("address {addr:?} is not hex"))
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut o = [0u8; 16];
            for i in 0..4 {
                o[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
        n => return Err(format!("address {addr:?} has {n} hex digits, not 8 or 32")),
    };
    Ok((ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Recorded on Linux 6.18 (x86-64) in a test namespace: a listener on
    // 127.0.0.1:5000 and a TIME_WAIT socket 127.0.0.1:40001 -> :5000 with
    // 0x1766 = 5990 ticks (59.9 s) left.
    const TCP4: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1388 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 60111 1 00000000a23d12eb 100 0 0 10 0
   1: 0100007F:9C41 0100007F:1388 06 00000000:00000000 03:00001766 00000000     0        0 0 3 00000000070b036c
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1388 00000000000000000000000001000000:9C42 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 0 10 -1
";

    #[test]
    fn decodes_listeners_and_time_wait() {
        let e: Vec<_> = parse(TCP4).collect::<Result<_, _>>().unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].state(), Some(TcpState::Listen));
        assert_eq!((e[0].local_port, e[0].inode), (5000, 60111));
        assert_eq!(e[1].local, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!((e[1].local_port, e[1].remote_port), (40001, 5000));
        assert_eq!(e[1].state(), Some(TcpState::TimeWait));
        assert_eq!((e[1].timer, e[1].timer_ticks), (3, 5990));
    }

    #[test]
    fn decodes_ipv6() {
        let e: Vec<_> = parse(TCP6).collect::<Result<_, _>>().unwrap();
        assert_eq!(e[0].local, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(e[0].inode, 4242);
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let bad = "  sl header\n   0: 0100007F:XYZ 0100007F:1388 06 0:0 03:1 0 0 0 0\n";
        let err = parse(bad).next().unwrap().unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(err.to_string().starts_with("/proc/net/tcp:2: "), "{err}");
        for line in [
            "   0: 0100007F",
            "   0: 0100007F:0001 0100:0001 06 0:0 03:1 0 0 0 0",
            "junk",
        ] {
            assert!(parse(line).next().unwrap().is_err(), "{line}");
        }
    }

    proptest! {
        #[test]
        fn any_text_never_panics(s in "\\PC{0,200}") {
            for r in parse(&s) { let _ = r; }
        }
    }
}
