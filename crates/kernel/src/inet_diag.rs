//! `struct inet_diag_msg` (include/uapi/linux/inet_diag.h), decoded by hand.
//!
//! Layout, 72 bytes: family, state, timer, retrans (u8 each); the socket id
//! (sport, dport big-endian u16; src, dst 16 bytes each, network order;
//! interface u32; cookie 2×u32); then expires, rqueue, wqueue, uid, inode
//! (u32, host order). For a TIME_WAIT socket the kernel sets `state` to the
//! TIME_WAIT *substate* (so an orphaned FIN_WAIT2 minisocket shows as
//! FIN_WAIT2), `timer` to 3 and `expires` to the milliseconds left; uid and
//! inode are 0. Attributes (rtattrs) may follow the 72 bytes; they are
//! returned untouched.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{DecodeError, TcpState};

/// Length of the fixed part.
pub const MSG_LEN: usize = 72;
/// `AF_INET`.
pub const AF_INET: u8 = 2;
/// `AF_INET6`.
pub const AF_INET6: u8 = 10;
/// `idiag_timer` for a TIME_WAIT timer.
pub const TIMER_TIMEWAIT: u8 = 3;

/// One socket as sock_diag reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InetDiagMsg {
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// The raw state number (see [`InetDiagMsg::state`]).
    pub state_raw: u8,
    /// Which timer runs: 0 off, 1 retransmit, 2 keepalive, 3 TIME_WAIT, 4 probe.
    pub timer: u8,
    /// Retransmits (or probes) so far.
    pub retrans: u8,
    /// Local port.
    pub src_port: u16,
    /// Remote port.
    pub dst_port: u16,
    /// Local address.
    pub src: IpAddr,
    /// Remote address.
    pub dst: IpAddr,
    /// Bound interface index, 0 if none.
    pub interface: u32,
    /// The kernel's socket cookie.
    pub cookie: u64,
    /// Milliseconds until the timer fires (for TIME_WAIT: until the socket goes away).
    pub expires_ms: u32,
    /// Receive queue bytes (or accept backlog for a listener).
    pub rqueue: u32,
    /// Send queue bytes (or backlog limit for a listener).
    pub wqueue: u32,
    /// Owner uid (0 for TIME_WAIT).
    pub uid: u32,
    /// Inode (0 for TIME_WAIT).
    pub inode: u32,
}

impl InetDiagMsg {
    /// The state, if the kernel's number is one we know.
    pub fn state(&self) -> Option<TcpState> {
        TcpState::from_kernel(self.state_raw)
    }

    /// Whether this is a TIME_WAIT minisocket (the timer says so, whatever the substate).
    pub fn is_timewait_sock(&self) -> bool {
        self.timer == TIMER_TIMEWAIT
    }
}

/// Decodes the fixed part of a `SOCK_DIAG_BY_FAMILY` answer; returns the
/// message and the attribute bytes after it.
pub fn decode(payload: &[u8]) -> Result<(InetDiagMsg, &[u8]), DecodeError> {
    let err = |d: String| DecodeError::new("inet_diag_msg", None, d);
    if payload.len() < MSG_LEN {
        return Err(err(format!("{} bytes, need {MSG_LEN}", payload.len())));
    }
    let b = &payload[..MSG_LEN];
    let ne32 = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let be16 = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    let addr = |i: usize| -> Result<IpAddr, DecodeError> {
        match b[0] {
            AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(
                b[i],
                b[i + 1],
                b[i + 2],
                b[i + 3],
            ))),
            AF_INET6 => {
                let mut o = [0u8; 16];
                o.copy_from_slice(&b[i..i + 16]);
                Ok(IpAddr::V6(Ipv6Addr::from(o)))
            }
            f => Err(err(format!(
                "address family {f} is neither AF_INET nor AF_INET6"
            ))),
        }
    };
    let msg = InetDiagMsg {
        family: b[0],
        state_raw: b[1],
        timer: b[2],
        retrans: b[3],
        src_port: be16(4),
        dst_port: be16(6),
        src: addr(8)?,
        dst: addr(24)?,
        interface: ne32(40),
        cookie: u64::from(ne32(44)) | (u64::from(ne32(48)) << 32),
        expires_ms: ne32(52),
        rqueue: ne32(56),
        wqueue: ne32(60),
        uid: ne32(64),
        inode: ne32(68),
    };
    Ok((msg, &payload[MSG_LEN..]))
}

/// Encodes the fixed part (for test fixtures and round-trip tests).
pub fn encode(m: &InetDiagMsg) -> Vec<u8> {
    let mut b = vec![0u8; MSG_LEN];
    b[0] = m.family;
    b[1] = m.state_raw;
    b[2] = m.timer;
    b[3] = m.retrans;
    b[4..6].copy_from_slice(&m.src_port.to_be_bytes());
    b[6..8].copy_from_slice(&m.dst_port.to_be_bytes());
    let put = |b: &mut [u8], at: usize, a: IpAddr| match a {
        IpAddr::V4(v) => b[at..at + 4].copy_from_slice(&v.octets()),
        IpAddr::V6(v) => b[at..at + 16].copy_from_slice(&v.octets()),
    };
    put(&mut b, 8, m.src);
    put(&mut b, 24, m.dst);
    for (at, v) in [
        (40, m.interface),
        (44, m.cookie as u32),
        (48, (m.cookie >> 32) as u32),
        (52, m.expires_ms),
        (56, m.rqueue),
        (60, m.wqueue),
        (64, m.uid),
        (68, m.inode),
    ] {
        b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tw() -> InetDiagMsg {
        InetDiagMsg {
            family: AF_INET,
            state_raw: 6,
            timer: TIMER_TIMEWAIT,
            retrans: 0,
            src_port: 40_001,
            dst_port: 5000,
            src: "127.0.0.1".parse().unwrap(),
            dst: "198.18.0.1".parse().unwrap(),
            interface: 0,
            cookie: 0x1234_5678_9abc_def0,
            expires_ms: 59_873,
            rqueue: 0,
            wqueue: 0,
            uid: 0,
            inode: 0,
        }
    }

    #[test]
    fn decodes_time_wait_with_its_timer() {
        let mut bytes = encode(&tw());
        bytes.extend_from_slice(&[8, 0, 1, 0, 9, 9, 9, 9]);
        let (m, attrs) = decode(&bytes).unwrap();
        assert_eq!(m, tw());
        assert_eq!(m.state(), Some(TcpState::TimeWait));
        assert!(m.is_timewait_sock());
        assert_eq!(m.expires_ms, 59_873);
        assert_eq!(attrs.len(), 8);
        // Ports are big-endian on the wire: 40001 = 0x9C41.
        assert_eq!(&bytes[4..6], &[0x9C, 0x41]);
    }

    #[test]
    fn short_or_foreign_messages_are_errors() {
        assert!(decode(&encode(&tw())[..71]).is_err());
        let mut b = encode(&tw());
        b[0] = 1; // AF_UNIX
        assert!(decode(&b).unwrap_err().to_string().contains("family 1"));
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(
            v6 in any::<bool>(), state in any::<u8>(), timer in 0u8..6, sp in any::<u16>(), dp in any::<u16>(),
            s4 in any::<[u8; 4]>(), d16 in any::<[u8; 16]>(), cookie in any::<u64>(), expires in any::<u32>(),
            uid in any::<u32>(), inode in any::<u32>(),
        ) {
            let m = InetDiagMsg {
                family: if v6 { AF_INET6 } else { AF_INET },
                state_raw: state, timer, retrans: 1, src_port: sp, dst_port: dp,
                src: if v6 { IpAddr::V6(d16.into()) } else { IpAddr::V4(s4.into()) },
                dst: if v6 { IpAddr::V6(d16.into()) } else { IpAddr::V4(s4.into()) },
                interface: 3, cookie, expires_ms: expires, rqueue: 5, wqueue: 6, uid, inode,
            };
            let bytes = encode(&m);
            let (back, rest) = decode(&bytes).unwrap();
            prop_assert_eq!(back, m);
            prop_assert!(rest.is_empty());
        }

        #[test]
        fn any_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..160)) {
            let _ = decode(&buf);
        }
    }
}

/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u8 = 6;
/// Length of `struct inet_diag_req_v2`.
pub const REQ_V2_LEN: usize = 56;

/// `struct inet_diag_req_v2` for a TCP dump of `family`, with the kernel
/// filtering on `states` (bit `n` = state number `n`, as in `ss`).
pub fn encode_request(family: u8, states: u32) -> [u8; REQ_V2_LEN] {
    let mut b = [0u8; REQ_V2_LEN];
    b[0] = family;
    b[1] = IPPROTO_TCP;
    // b[2] idiag_ext = 0: no extensions, so answers stay 72 bytes each.
    b[4..8].copy_from_slice(&states.to_ne_bytes());
    b
}

/// `AF_UNSPEC`: in a dump request, both families.
pub const AF_UNSPEC: u8 = 0;
/// Length of `struct inet_diag_req`.
pub const REQ_COMPAT_LEN: usize = 60;

/// `struct inet_diag_req`, the request before `inet_diag_req_v2`, for a
/// TCP dump (netlink type [`crate::netlink::TCPDIAG_GETSOCK`]) of sockets in
/// `states`. The kernel answers it with family `AF_UNSPEC`
/// (`inet_diag_dump_compat()`), so one walk of its tables returns IPv4 and
/// IPv6 sockets alike, where a v2 request per family walks them once per
/// family. The answers are `inet_diag_msg`s, as for v2.
pub fn encode_request_both_families(states: u32) -> [u8; REQ_COMPAT_LEN] {
    let mut b = [0u8; REQ_COMPAT_LEN];
    // b[0..4]: idiag_family (the kernel does not read it), src_len,
    // dst_len, ext = 0; b[4..52]: the socket id, zero: every socket.
    b[52..56].copy_from_slice(&states.to_ne_bytes());
    // b[56..60] idiag_dbs: unused.
    b
}

/// The `idiag_states` mask for some states.
pub fn state_mask(states: &[TcpState]) -> u32 {
    states.iter().fold(0, |m, s| m | (1 << s.kernel()))
}

#[cfg(test)]
mod request_tests {
    use super::*;

    #[test]
    fn request_carries_family_protocol_and_states() {
        let r = encode_request(
            AF_INET6,
            state_mask(&[TcpState::TimeWait, TcpState::Listen]),
        );
        assert_eq!((r[0], r[1]), (AF_INET6, IPPROTO_TCP));
        assert_eq!(
            u32::from_ne_bytes([r[4], r[5], r[6], r[7]]),
            (1 << 6) | (1 << 10)
        );
    }

    #[test]
    fn both_families_request_carries_the_states_after_the_socket_id() {
        let r = encode_request_both_families(state_mask(&[TcpState::TimeWait]));
        // struct inet_diag_req: 4 bytes, then the 48-byte inet_diag_sockid.
        assert_eq!(u32::from_ne_bytes([r[52], r[53], r[54], r[55]]), 1 << 6);
        assert!(r[..52].iter().chain(&r[56..]).all(|&b| b == 0));
    }
}

/// `INET_DIAG_REQ_BYTECODE`: the request attribute carrying a filter program.
pub const INET_DIAG_REQ_BYTECODE: u16 = 1;
const BC_S_GE: u8 = 2;
const BC_S_LE: u8 = 3;

/// A filter program accepting sockets whose local port is in `lo..=hi`
/// (the kernel runs it per socket, so each dump only carries its share).
/// Layout as `ss` builds it: an op `{code, yes, no}` followed by an op
/// holding the port; `yes` jumps to the next test, `no` jumps past the end
/// (`len + 4`), which rejects.
pub fn bytecode_local_ports(lo: u16, hi: u16) -> Vec<u8> {
    let op = |code: u8, yes: u8, no: u16| {
        let mut v = vec![code, yes];
        v.extend_from_slice(&no.to_ne_bytes());
        v
    };
    let mut b = Vec::with_capacity(16);
    b.extend(op(BC_S_GE, 8, 20));
    b.extend(op(0, 0, lo));
    b.extend(op(BC_S_LE, 8, 12));
    b.extend(op(0, 0, hi));
    b
}

/// A request with a filter program attached as an rtattr.
pub fn encode_request_with_bytecode(family: u8, states: u32, bytecode: &[u8]) -> Vec<u8> {
    with_bytecode(&encode_request(family, states), bytecode)
}

/// Any request (v2, or [`encode_request_both_families`]'s, which the
/// kernel reads its filter after as well) followed by a filter program as
/// an rtattr.
pub fn with_bytecode(request: &[u8], bytecode: &[u8]) -> Vec<u8> {
    let mut out = request.to_vec();
    let len = 4 + bytecode.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
    out.extend_from_slice(bytecode);
    out.resize(out.len().next_multiple_of(4), 0);
    out
}

#[cfg(test)]
mod bytecode_tests {
    use super::*;

    #[test]
    fn port_range_program_has_the_ss_layout() {
        let b = bytecode_local_ports(1024, 32767);
        assert_eq!(b.len(), 16);
        assert_eq!(&b[0..2], &[BC_S_GE, 8]);
        assert_eq!(u16::from_ne_bytes([b[2], b[3]]), 20);
        assert_eq!(u16::from_ne_bytes([b[6], b[7]]), 1024);
        assert_eq!(&b[8..10], &[BC_S_LE, 8]);
        assert_eq!(u16::from_ne_bytes([b[14], b[15]]), 32767);
        let r = encode_request_with_bytecode(AF_INET, 1 << 6, &b);
        assert_eq!(r.len(), REQ_V2_LEN + 4 + 16);
        assert_eq!(u16::from_ne_bytes([r[56], r[57]]), 20);
    }
}
