//! A socket's 4-tuple as the BPF programs read it: where `struct
//! sock_common` keeps it (the same fields in a full socket and in a
//! TIME_WAIT minisocket, at this kernel's offsets, from BTF), and the
//! instructions that copy it into a record.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::asm::*;
use crate::btf::Btf;

/// Where the 4-tuple is, in bytes from the start of the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TupleOffsets {
    /// `skc_family` (u16).
    pub family: u32,
    /// `skc_num`: the local port, host order (u16).
    pub num: u32,
    /// `skc_dport`: the remote port, network order (u16).
    pub dport: u32,
    /// `skc_rcv_saddr` (4 bytes).
    pub saddr: u32,
    /// `skc_daddr` (4 bytes).
    pub daddr: u32,
    /// `skc_v6_rcv_saddr` (16 bytes).
    pub saddr_v6: u32,
    /// `skc_v6_daddr` (16 bytes).
    pub daddr_v6: u32,
}

impl TupleOffsets {
    /// In `struct name`, whose `sock_common` is its member `common`.
    pub fn from_btf(btf: &Btf, name: &str, common: &str) -> Result<TupleOffsets, String> {
        let at = |m: &str| {
            btf.offset(name, &[common], m).ok_or_else(|| {
                format!("struct {name} has no byte-aligned {m} in this kernel's BTF")
            })
        };
        Ok(TupleOffsets {
            family: at("skc_family")?,
            num: at("skc_num")?,
            dport: at("skc_dport")?,
            saddr: at("skc_rcv_saddr")?,
            daddr: at("skc_daddr")?,
            saddr_v6: at("skc_v6_rcv_saddr")?,
            daddr_v6: at("skc_v6_daddr")?,
        })
    }
}

/// Where a record on the program's stack keeps the tuple (frame offsets).
pub(crate) struct TupleSlots {
    pub(crate) family: i16,
    pub(crate) sport: i16,
    pub(crate) dport: i16,
    /// 16 bytes; an IPv4 address in the first 4.
    pub(crate) saddr: i16,
    /// 16 bytes; an IPv4 address in the first 4.
    pub(crate) daddr: i16,
}

/// `AF_INET6`.
pub(crate) const AF_INET6: i32 = 10;

/// Copies the tuple of the socket at `base` into `at` (the slots zeroed
/// before), the local port from `skc_num`, or, given `sport`, from
/// `inet_sock.inet_sport` (network order, turned to host order here).
/// Uses the labels `v6` and `filled`; clobbers r1-r5.
pub(crate) fn read_tuple(
    a: &mut Asm,
    o: &TupleOffsets,
    sport: Option<u32>,
    base: u8,
    at: &TupleSlots,
) {
    a.read(at.family, 2, base, o.family);
    match sport {
        None => a.read(at.sport, 2, base, o.num),
        Some(sport) => {
            a.read(at.sport, 2, base, sport);
            a.load(H, R1, FP, at.sport);
            a.op(ALU | END_TO_BE, R1, 0, 0, 16);
            a.store(H, FP, at.sport, R1);
        }
    }
    a.read(at.dport, 2, base, o.dport);
    a.load(H, R1, FP, at.family);
    a.jump(JMP | JEQ, R1, AF_INET6, "v6");
    a.read(at.saddr, 4, base, o.saddr);
    a.read(at.daddr, 4, base, o.daddr);
    a.goto("filled");
    a.label("v6");
    a.read(at.saddr, 16, base, o.saddr_v6);
    a.read(at.daddr, 16, base, o.daddr_v6);
    a.label("filled");
}

/// An address a program copied (16 bytes, or 4 for IPv4), IPv4-mapped
/// IPv6 as IPv4; `None` if `b` is short.
pub(crate) fn addr(family: u16, b: &[u8]) -> Option<IpAddr> {
    if i32::from(family) == AF_INET6 {
        let a = Ipv6Addr::from(<[u8; 16]>::try_from(b.get(..16)?).ok()?);
        Some(a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4))
    } else {
        Some(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(b.get(..4)?).ok()?,
        )))
    }
}

/// Offsets for the programs' tests.
#[cfg(test)]
pub(crate) fn sample() -> TupleOffsets {
    TupleOffsets {
        family: 16,
        num: 14,
        dport: 12,
        saddr: 4,
        daddr: 0,
        saddr_v6: 72,
        daddr_v6: 56,
    }
}
