//! A live count of TIME_WAIT sockets by destination, kept by the kernel
//! as they come and go, so that reading it costs the number of
//! destinations, not the number of sockets (a socket dump walks the
//! host's whole established hash: 650 ms at a million TIME_WAIT sockets,
//! BENCHMARKS.md).
//!
//! Every TIME_WAIT minisocket owns a timer whose function
//! is `tw_timer_handler`. The timer is armed once when the minisocket is
//! created (`timer_start`), and leaves the timer wheel exactly once when
//! the socket goes: at expiry, when `tcp_tw_reuse` or a RST kills it, when
//! its namespace goes (`timer_cancel`, fired by the wheel's
//! `detach_timer`). A re-arm (a retransmitted FIN) is a cancel and a start,
//! or nothing when the new expiry falls in the same wheel bucket. So two
//! programs on the raw tracepoints `timer_start` (+1) and `timer_cancel`
//! (−1) keep an exact count per key in a BPF hash map; neither sees a
//! timer of anything else past its first compare.
//!
//! A minisocket is counted whatever its substate: one made in FIN_WAIT2
//! (an orphan waiting for its peer's FIN, which `ss` shows as FIN-WAIT-2)
//! turns TIME_WAIT in place, its timer re-armed or not, so a key that held
//! the substate could not be taken back exactly. Both hold their port.
//!
//! The key is what the census groups by (`timewait_snapshot`'s
//! aggregator rule, applied in the kernel at the same bounds): a client
//! socket by destination, a server one by its local port ([`TwKey`]). The
//! listening ports are a bitmap map the caller fills before attaching.
//!
//! Sockets that were there before counting began are counted
//! once from a dump, taken while the programs also log every event to a
//! ring ([`Seed`]): the dump is not atomic, and a socket it met may have
//! gone, or come, while it ran; the log says which, exactly.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;

use crate::asm::*;
use crate::btf::Btf;
use crate::tuple::{TupleOffsets, TupleSlots, addr, read_tuple};

/// Where the programs read, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TwOffsets {
    /// `inet_timewait_sock.tw_timer`: the timer's place in its socket.
    pub timer: u32,
    /// `timer_list.function`.
    pub function: u32,
    /// The 4-tuple, in `inet_timewait_sock.__tw_common`.
    pub tuple: TupleOffsets,
    /// `skc_net.net`: the socket's namespace (a pointer).
    pub net: u32,
    /// `net.ns.inum`: the namespace's inode number (u32).
    pub ns_inum: u32,
}

impl TwOffsets {
    /// From the kernel's BTF; `Err` names what this kernel lacks.
    pub fn from_btf(btf: &Btf) -> Result<TwOffsets, String> {
        let missing =
            |s: &str, m: &str| format!("struct {s} has no byte-aligned {m} in this kernel's BTF");
        let tw = |m: &str| {
            btf.offset("inet_timewait_sock", &["__tw_common"], m)
                .ok_or_else(|| missing("inet_timewait_sock", m))
        };
        let net = tw("skc_net")?
            + btf
                .offset("possible_net_t", &[], "net")
                .or_else(|| btf.offset("possible_net", &[], "net"))
                .unwrap_or(0);
        Ok(TwOffsets {
            timer: tw("tw_timer")?,
            function: btf
                .offset("timer_list", &[], "function")
                .ok_or_else(|| missing("timer_list", "function"))?,
            tuple: TupleOffsets::from_btf(btf, "inet_timewait_sock", "__tw_common")?,
            net,
            ns_inum: btf
                .offset("net", &["ns"], "inum")
                .ok_or_else(|| missing("net", "ns.inum"))?,
        })
    }
}

/// What a program is built for: the namespace it counts, the ephemeral
/// range it classifies by, and the handler that marks a TIME_WAIT timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TwParams {
    /// `tw_timer_handler`'s address (`/proc/kallsyms`).
    pub handler: u64,
    /// The namespace's inode number.
    pub netns: u32,
    /// `ip_local_port_range`.
    pub range: (u16, u16),
}

/// The maps the programs use, by file descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TwMaps {
    /// Hash map, [`KEY_LEN`]-byte keys, i64 counts.
    pub counts: i32,
    /// Array map of 2,048 u32 words: bit `p` set when port `p` listens.
    pub listening: i32,
    /// Array map of two [`CONTROL_LEN`]-byte values: [`FLAGS`] and
    /// [`COUNTERS`].
    pub control: i32,
    /// Ring buffer of [`RECORD_LEN`]-byte records, written while the
    /// window is open.
    pub ring: i32,
}

/// A key of the count map, in bytes.
pub const KEY_LEN: usize = 40;
/// A record of the ring: the whole 4-tuple (a key before its
/// classification drops a part) and the change.
pub const RECORD_LEN: usize = 48;
/// A control value: four u64 words. The map holds two: [`FLAGS`]
/// (written by the reader) and [`COUNTERS`] (by the programs).
pub const CONTROL_LEN: usize = 32;
/// The control entry the reader writes: one word of flags.
pub const FLAGS: u32 = 0;
/// Flag: count changes. Set with [`WINDOW`] in one write once both
/// programs are attached, so that starts and cancels are counted from the
/// same moment (attaching one and then the other would miss a socket
/// armed before the second attach and killed between them).
pub const COUNTING: u64 = 1;
/// Flag: log every change to the ring (the seeding window).
pub const WINDOW: u64 = 2;
/// The control entry the programs write.
pub const COUNTERS: u32 = 1;
/// Counter: programs between their flag check and their log.
pub const INFLIGHT: usize = 0;
/// Counter: changes the count map had no room for.
pub const UNCOUNTED: usize = 8;
/// Counter: window records the ring had no room for.
pub const RING_LOST: usize = 16;
/// Words in the listening bitmap.
pub const LISTENING_WORDS: u32 = 2048;

// The record (and key) layout.
const FAMILY: usize = 0;
const LPORT: usize = 2;
const RPORT: usize = 4;
const CLASS: usize = 7;
const SADDR: usize = 8;
const DADDR: usize = 24;
const DELTA: usize = 40;

const REC: i16 = -(RECORD_LEN as i16);
const FN: i16 = REC - 8;
const NETP: i16 = FN - 8;
const INUM: i16 = NETP - 8;
const IDX: i16 = INUM + 4;
const ZERO: i16 = INUM - 8;

const CLIENT: u8 = 0;
const SERVER: u8 = 1;
const CLIENT_OUTSIDE: u8 = 2;

/// The program for one tracepoint: `delta` is +1 for `timer_start`, −1
/// for `timer_cancel` (both take the timer as their first argument).
pub fn tw_program(o: &TwOffsets, p: &TwParams, m: &TwMaps, delta: i32) -> Vec<Insn> {
    let at = |field: usize| REC + field as i16;
    let (lo, hi) = (i32::from(p.range.0), i32::from(p.range.1));
    let mut a = Asm::default();
    a.load(DW, R6, R1, 0);
    a.read(FN, 8, R6, o.function);
    a.load(DW, R1, FP, FN);
    a.ld_u64(R2, p.handler);
    a.jump_reg(JMP | JNE, R1, R2, "out");
    // The socket, and its namespace.
    a.mov(R7, R6);
    a.add_imm(R7, -(o.timer as i32));
    a.read(NETP, 8, R7, o.net);
    a.load(DW, R8, FP, NETP);
    a.read(INUM, 4, R8, o.ns_inum);
    a.load(W, R1, FP, INUM);
    a.jump(JMP32 | JNE, R1, p.netns as i32, "out");

    for off in (REC..0).step_by(8) {
        a.store_imm(DW, FP, off, 0);
    }
    let slots = TupleSlots {
        family: at(FAMILY),
        sport: at(LPORT),
        dport: at(RPORT),
        saddr: at(SADDR),
        daddr: at(DADDR),
    };
    read_tuple(&mut a, &o.tuple, R7, &slots);
    a.store_imm(W, FP, at(DELTA), delta);

    // The aggregator's rule: a listening local port, or one outside the
    // range toward a peer port inside it, is the server side.
    a.load(H, R8, FP, at(LPORT));
    a.mov(R1, R8);
    a.op(ALU64 | RSH | K, R1, 0, 0, 5);
    a.store(W, FP, IDX, R1);
    a.lookup(m.listening, IDX);
    a.jump(JMP | JEQ, R0, 0, "not_listening");
    a.load(W, R1, R0, 0);
    a.mov(R2, R8);
    a.op(ALU64 | AND | K, R2, 0, 0, 31);
    a.op(ALU64 | RSH | X, R1, R2, 0, 0);
    a.op(ALU64 | AND | K, R1, 0, 0, 1);
    a.jump(JMP | JNE, R1, 0, "server");
    a.label("not_listening");
    a.jump(JMP | JLT, R8, lo, "outside");
    a.jump(JMP | JGT, R8, hi, "outside");
    a.goto("classified");
    a.label("outside");
    a.load(H, R1, FP, at(RPORT));
    a.op(ALU | END_TO_BE, R1, 0, 0, 16);
    a.jump(JMP | JLT, R1, lo, "client_outside");
    a.jump(JMP | JGT, R1, hi, "client_outside");
    a.label("server");
    a.store_imm(B, FP, at(CLASS), i32::from(SERVER));
    a.goto("classified");
    a.label("client_outside");
    a.store_imm(B, FP, at(CLASS), i32::from(CLIENT_OUTSIDE));
    a.label("classified");

    // The flags, read while counted in flight: the reader closes the
    // window, then waits for no program to be between here and its log.
    a.store_imm(W, FP, IDX, COUNTERS as i32);
    a.lookup(m.control, IDX);
    a.jump(JMP | JEQ, R0, 0, "out");
    a.mov(R9, R0);
    a.mov_imm(R1, 1);
    a.atomic_add(R9, INFLIGHT as i16, R1);
    a.store_imm(W, FP, IDX, FLAGS as i32);
    a.lookup(m.control, IDX);
    a.jump(JMP | JEQ, R0, 0, "idle");
    a.load(DW, R8, R0, 0);
    a.mov(R1, R8);
    a.op(ALU64 | AND | K, R1, 0, 0, COUNTING as i32);
    a.jump(JMP | JEQ, R1, 0, "idle");
    a.op(ALU64 | AND | K, R8, 0, 0, WINDOW as i32);
    a.jump(JMP | JEQ, R8, 0, "logged");
    a.ld_imm64(R1, PSEUDO_MAP_FD, m.ring);
    a.mov(R2, FP);
    a.add_imm(R2, i32::from(REC));
    a.mov_imm(R3, RECORD_LEN as i32);
    a.mov_imm(R4, RB_NO_WAKEUP);
    a.call(RINGBUF_OUTPUT);
    a.jump(JMP | JEQ, R0, 0, "logged");
    a.mov_imm(R1, 1);
    a.atomic_add(R9, RING_LOST as i16, R1);
    a.label("logged");
    a.mov_imm(R1, -1);
    a.atomic_add(R9, INFLIGHT as i16, R1);

    // The key: the tuple without what the class groups over.
    a.load(B, R1, FP, at(CLASS));
    a.jump(JMP | JEQ, R1, i32::from(SERVER), "server_key");
    a.store_imm(H, FP, at(LPORT), 0);
    a.goto("count");
    a.label("server_key");
    a.store_imm(H, FP, at(RPORT), 0);
    a.store_imm(DW, FP, at(DADDR), 0);
    a.store_imm(DW, FP, at(DADDR) + 8, 0);
    a.label("count");
    for attempt in 0..2 {
        a.lookup(m.counts, REC);
        a.jump(JMP | JNE, R0, 0, "add");
        if attempt == 0 {
            a.store_imm(DW, FP, ZERO, 0);
            a.ld_imm64(R1, PSEUDO_MAP_FD, m.counts);
            a.mov(R2, FP);
            a.add_imm(R2, i32::from(REC));
            a.mov(R3, FP);
            a.add_imm(R3, i32::from(ZERO));
            a.mov_imm(R4, BPF_NOEXIST);
            a.call(MAP_UPDATE_ELEM);
        }
    }
    // The map is full: say so, the counts are no longer whole.
    a.mov_imm(R1, 1);
    a.atomic_add(R9, UNCOUNTED as i16, R1);
    a.goto("out");
    a.label("add");
    a.mov_imm(R1, delta);
    a.atomic_add(R0, 0, R1);
    a.goto("out");

    // Not counting yet: out of flight, and out.
    a.label("idle");
    a.mov_imm(R1, -1);
    a.atomic_add(R9, INFLIGHT as i16, R1);

    a.label("out");
    a.mov_imm(R0, 0);
    a.exit();
    a.finish()
}

/// One side of a connection.
pub type End = (IpAddr, u16);

/// A minisocket's identity and what it is (the record's, or a dumped
/// socket's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TwSocket {
    /// Local address and port (IPv4-mapped IPv6 as IPv4).
    pub local: End,
    /// Remote address and port.
    pub remote: End,
}

impl TwSocket {
    /// A 64-bit digest of the 4-tuple (the identity the seeding compares).
    fn identity(&self) -> u64 {
        let mut h = DefaultHasher::new();
        (self.local, self.remote).hash(&mut h);
        h.finish()
    }
}

/// What the count map groups by: the aggregator's classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TwGroup {
    /// An outgoing connection's destination, and whether its local port
    /// lies in the ephemeral range.
    Client {
        /// The remote address and port.
        remote: End,
        /// Whether the local port lies in the ephemeral range.
        in_range: bool,
    },
    /// An accepted connection's local (service) port.
    Server {
        /// The local port.
        port: u16,
    },
}

/// A key of the count map, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TwKey {
    /// The local address.
    pub local: IpAddr,
    /// The group.
    pub group: TwGroup,
}

/// The listening ports, as the programs' bitmap holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening(Vec<u32>);

impl Listening {
    /// The bitmap of `ports`.
    pub fn of(ports: impl IntoIterator<Item = u16>) -> Listening {
        let mut words = vec![0u32; LISTENING_WORDS as usize];
        for p in ports {
            words[usize::from(p >> 5)] |= 1 << (p & 31);
        }
        Listening(words)
    }
    /// The words, index by index (what the array map holds).
    pub fn words(&self) -> &[u32] {
        &self.0
    }
    fn contains(&self, port: u16) -> bool {
        self.0[usize::from(port >> 5)] & (1 << (port & 31)) != 0
    }
}

/// The key the programs give `s` (the same rule, in Rust, for the
/// dumped sockets).
pub fn classify(s: &TwSocket, range: (u16, u16), listening: &Listening) -> TwKey {
    let inside = |p: u16| (range.0..=range.1).contains(&p);
    let group = if listening.contains(s.local.1) || (!inside(s.local.1) && inside(s.remote.1)) {
        TwGroup::Server { port: s.local.1 }
    } else {
        TwGroup::Client {
            remote: s.remote,
            in_range: inside(s.local.1),
        }
    };
    TwKey {
        local: s.local.0,
        group,
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// A ring record: the socket and its change (+1 armed, −1 gone), or
/// `None` if it is cut short.
pub fn decode_record(r: &[u8]) -> Option<(TwSocket, i32)> {
    let r = r.get(..RECORD_LEN)?;
    let family = u16_at(r, FAMILY)?;
    let s = TwSocket {
        local: (addr(family, &r[SADDR..])?, u16_at(r, LPORT)?),
        remote: (addr(family, &r[DADDR..])?, u16::from_be(u16_at(r, RPORT)?)),
    };
    let delta = i32::from_ne_bytes(r[DELTA..DELTA + 4].try_into().ok()?);
    Some((s, delta))
}

/// A key of the count map, or `None` for bytes no program writes.
pub fn decode_key(k: &[u8]) -> Option<TwKey> {
    let k = k.get(..KEY_LEN)?;
    let family = u16_at(k, FAMILY)?;
    let local = addr(family, &k[SADDR..])?;
    let group = match k[CLASS] {
        SERVER => TwGroup::Server {
            port: u16_at(k, LPORT)?,
        },
        c @ (CLIENT | CLIENT_OUTSIDE) => TwGroup::Client {
            remote: (addr(family, &k[DADDR..])?, u16::from_be(u16_at(k, RPORT)?)),
            in_range: c == CLIENT,
        },
        _ => return None,
    };
    Some(TwKey { local, group })
}

/// The count of minisockets that were there before the programs were
/// attached, from a dump taken while they logged every change.
///
/// With `D` the dump's count and `M` the map's (changes since attaching),
/// `D + M` counts right every socket without a change while the dump ran.
/// A socket that had changes is counted by the dump if it met it
/// (`seen`), and existed before attaching if its first logged change
/// took it away (−1); the right count is `existed + changes`, so the
/// baseline is corrected by `existed − seen` for each such socket. The
/// log must cover the whole dump (it may run longer: later changes are
/// in `M`, and only each socket's first one is read).
#[derive(Debug, Default)]
pub struct Seed {
    counts: HashMap<TwKey, i64>,
    seen: Vec<u64>,
}

impl Seed {
    /// An empty seed.
    pub fn new() -> Seed {
        Seed::default()
    }

    /// One dumped minisocket, with its key.
    pub fn dumped(&mut self, s: &TwSocket, key: TwKey) {
        *self.counts.entry(key).or_default() += 1;
        self.seen.push(s.identity());
    }

    /// The baseline, given the window's records in the order the ring
    /// held them, each with its key.
    pub fn finish(
        mut self,
        window: impl IntoIterator<Item = (TwSocket, i32, TwKey)>,
    ) -> HashMap<TwKey, i64> {
        self.seen.sort_unstable();
        let mut first = HashSet::new();
        for (s, delta, key) in window {
            let id = s.identity();
            if !first.insert(id) {
                continue;
            }
            let existed = i64::from(delta < 0);
            let seen = i64::from(self.seen.binary_search(&id).is_ok());
            *self.counts.entry(key).or_default() += existed - seen;
        }
        self.counts.retain(|_, n| *n != 0);
        self.counts
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::asm::check;

    fn offsets() -> TwOffsets {
        TwOffsets {
            timer: 112,
            function: 24,
            tuple: crate::tuple::sample(),
            net: 48,
            ns_inum: 200,
        }
    }

    const PARAMS: TwParams = TwParams {
        handler: 0xffff_ffff_8206_4f30,
        netns: 4_026_532_000,
        range: (32768, 60999),
    };
    const MAPS: TwMaps = TwMaps {
        counts: 3,
        listening: 4,
        control: 5,
        ring: 6,
    };

    #[test]
    fn every_jump_lands_inside_the_program_and_the_handler_is_one_64_bit_immediate() {
        for delta in [1, -1] {
            let p = tw_program(&offsets(), &PARAMS, &MAPS, delta);
            assert_eq!(check::well_formed(&p), [4, 5, 5, 6, 3, 3, 3]);
            let imm = p.iter().position(|i| i.code == LD | IMM | DW).unwrap();
            let value = u64::from(p[imm].imm as u32) | (u64::from(p[imm + 1].imm as u32) << 32);
            assert_eq!(value, PARAMS.handler);
            // The change is the program's: one immediate for the log, one
            // for the count.
            let deltas = p
                .iter()
                .filter(|i| (i.code == ALU64 | MOV | K || i.code == ST | MEM | W) && i.imm == delta)
                .count();
            assert!(deltas >= 2, "{deltas}");
        }
    }

    /// Every path through the program (it has no loops: the verifier
    /// allows none), with what it adds to the in-flight counter and how
    /// many counts it changes: each path leaves no program in flight and
    /// changes at most one count.
    #[test]
    fn every_path_leaves_nothing_in_flight_and_counts_at_most_once() {
        let p = tw_program(&offsets(), &PARAMS, &MAPS, -1);
        let mut seen = HashSet::new();
        // (pc, in flight, counts changed, r1's constant)
        let mut todo = vec![(0usize, 0i64, 0u32, None::<i32>)];
        let (mut exits, mut counted) = (0, 0);
        while let Some((pc, flight, counts, r1)) = todo.pop() {
            if !seen.insert((pc, flight, counts, r1)) {
                continue;
            }
            let i = p[pc];
            let (class, op) = (i.code & 0x07, i.code & 0xf0);
            let next = pc + 1;
            let target = (pc as i64 + 1 + i64::from(i.off)) as usize;
            if i.code == JMP | EXIT {
                assert_eq!(flight, 0, "a path exits at {pc} with a program in flight");
                assert!(counts <= 1, "a path counts {counts} times");
                exits += 1;
                counted += counts;
                continue;
            }
            if i.code == LD | IMM | DW {
                todo.push((pc + 2, flight, counts, r1));
                continue;
            }
            if class == JMP || class == JMP32 {
                match op {
                    JA => todo.push((target, flight, counts, r1)),
                    // Helpers clobber r1.
                    CALL => todo.push((next, flight, counts, None)),
                    _ => {
                        todo.push((target, flight, counts, r1));
                        todo.push((next, flight, counts, r1));
                    }
                }
                continue;
            }
            let (mut flight, mut counts, mut r1) = (flight, counts, r1);
            if i.code == ALU64 | MOV | K && i.dst == R1 {
                r1 = Some(i.imm);
            } else if i.dst == R1 {
                r1 = None;
            }
            if i.code == STX | ATOMIC | DW {
                let by = i64::from(r1.expect("an atomic add of a known constant"));
                match (i.dst, i.off) {
                    (R9, off) if off == INFLIGHT as i16 => flight += by,
                    (R9, off) if off == RING_LOST as i16 => {}
                    // A change counted, or counted as not counted.
                    (R9, off) if off == UNCOUNTED as i16 => counts += 1,
                    (R0, 0) => counts += 1,
                    other => panic!("an atomic add to {other:?}"),
                }
            }
            todo.push((next, flight, counts, r1));
        }
        // Paths that count and paths that leave early (states merged).
        assert!(exits >= 2 && counted > 0, "{exits} exits");
    }

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sock(lport: u16, remote: &str, rport: u16) -> TwSocket {
        TwSocket {
            local: (v4("10.0.0.1"), lport),
            remote: (v4(remote), rport),
        }
    }

    #[test]
    fn classes_follow_the_aggregator_rule() {
        let range = (32768, 60999);
        let listening = Listening::of([8080, 40000]);
        let key = |s: &TwSocket| classify(s, range, &listening).group;
        let client = |r: &str, p, in_range| TwGroup::Client {
            remote: (v4(r), p),
            in_range,
        };
        // An outgoing connection from an ephemeral port.
        assert_eq!(
            key(&sock(41000, "10.0.0.9", 80)),
            client("10.0.0.9", 80, true)
        );
        // From a port bound outside the range to a service port.
        assert_eq!(
            key(&sock(1000, "10.0.0.9", 80)),
            client("10.0.0.9", 80, false)
        );
        // Accepted on a listening port, in the range or not.
        assert_eq!(
            key(&sock(40000, "10.0.0.9", 41000)),
            TwGroup::Server { port: 40000 }
        );
        assert_eq!(
            key(&sock(8080, "10.0.0.9", 1000)),
            TwGroup::Server { port: 8080 }
        );
        // A service port no longer listening, toward an ephemeral peer.
        assert_eq!(
            key(&sock(9090, "10.0.0.9", 50000)),
            TwGroup::Server { port: 9090 }
        );
    }

    /// A record as the program writes it.
    fn record(family: u16, lport: u16, rport: u16, delta: i32) -> Vec<u8> {
        let mut r = vec![0u8; RECORD_LEN];
        r[FAMILY..FAMILY + 2].copy_from_slice(&family.to_ne_bytes());
        r[LPORT..LPORT + 2].copy_from_slice(&lport.to_ne_bytes());
        r[RPORT..RPORT + 2].copy_from_slice(&rport.to_be_bytes());
        if family == 2 {
            r[SADDR..SADDR + 4].copy_from_slice(&[10, 0, 0, 1]);
            r[DADDR..DADDR + 4].copy_from_slice(&[10, 0, 0, 9]);
        } else {
            r[SADDR + 15] = 1;
            let mapped = Ipv4Addr::new(10, 0, 0, 9).to_ipv6_mapped().octets();
            r[DADDR..DADDR + 16].copy_from_slice(&mapped);
        }
        r[DELTA..DELTA + 4].copy_from_slice(&delta.to_ne_bytes());
        r
    }

    #[test]
    fn records_and_keys_decode_with_ports_in_host_order() {
        let (s, d) = decode_record(&record(2, 41000, 80, -1)).unwrap();
        assert_eq!((s, d), (sock(41000, "10.0.0.9", 80), -1));
        let (s, d) = decode_record(&record(10, 41000, 80, 1)).unwrap();
        assert_eq!(s.local.0, "::1".parse::<IpAddr>().unwrap());
        assert_eq!((s.remote, d), ((v4("10.0.0.9"), 80), 1));
        for n in 0..RECORD_LEN {
            assert_eq!(decode_record(&record(2, 1, 2, 1)[..n]), None);
        }
        // A client key (its local port zeroed), a server key (the remote
        // end zeroed), and a class no program writes.
        let mut k = record(2, 0, 80, 0);
        k.truncate(KEY_LEN);
        assert_eq!(
            decode_key(&k).unwrap().group,
            TwGroup::Client {
                remote: (v4("10.0.0.9"), 80),
                in_range: true
            }
        );
        k[CLASS] = CLIENT_OUTSIDE;
        assert!(matches!(
            decode_key(&k).unwrap().group,
            TwGroup::Client {
                in_range: false,
                ..
            }
        ));
        let mut k = record(2, 8080, 0, 0);
        k[DADDR..DADDR + 16].fill(0);
        k[CLASS] = SERVER;
        assert_eq!(
            decode_key(&k[..KEY_LEN]).unwrap().group,
            TwGroup::Server { port: 8080 }
        );
        k[CLASS] = 7;
        assert_eq!(decode_key(&k[..KEY_LEN]), None);
    }

    /// Sockets a (there before, gone during the dump, met by it), b (there
    /// before, gone, not met), c (new, met), d (new, not met), e (there
    /// before, killed and made again by tcp_tw_reuse, met), f (untouched,
    /// met): the baseline plus the map's changes counts what is there now.
    #[test]
    fn the_seed_counts_each_socket_once_whatever_the_dump_met() {
        let range = (32768, 60999);
        let listening = Listening::of([]);
        let s = |p| sock(p, "10.0.0.9", 80);
        let (a, b, c, d, e, f) = (s(40001), s(40002), s(40003), s(40004), s(40005), s(40006));
        let key = classify(&a, range, &listening);
        let mut seed = Seed::new();
        for x in [a, c, e, f] {
            seed.dumped(&x, key);
        }
        let window = [(a, -1), (b, -1), (c, 1), (d, 1), (e, -1), (e, 1), (d, -1)];
        let map: i64 = window.iter().map(|&(_, n)| i64::from(n)).sum();
        let base = seed.finish(window.iter().map(|&(x, n)| (x, n, key)));
        // Now: c, e (again), f.
        assert_eq!(base[&key] + map, 3);
    }
}
