//! A live count of TCP sockets by state and destination, kept by the
//! kernel as they come and go, so that reading it costs the number of
//! destinations, not the number of sockets (a socket dump walks the
//! host's whole established hash: 650 ms at a million TIME_WAIT sockets,
//! BENCHMARKS.md).
//!
//! Full sockets: a program on the raw tracepoint `inet_sock_set_state`
//! takes one from its old state's count and adds it to its new one's. It
//! counts the states a connection holds a port in ([`COUNTED`]); not
//! LISTEN (listeners are dumped: that dump does not walk the connections),
//! not SYN_RECV: a passive open's child changes LISTEN→SYN_RECV before its
//! addresses are set (`inet_csk_clone_lock`), so its SYN_RECV could not be
//! taken back from the right key, and a request socket (what `ss` shows in
//! SYN-RECV) has no tracepoint at all. A connect's SYN_SENT comes before
//! its port is picked (`inet_hash_connect`): a local port of 0 is an
//! ephemeral one, in the range and never a listener's (the kernel skips
//! ports held by `bind()` when it picks one), which is what the socket is
//! counted as when its port is known.
//!
//! TIME_WAIT minisockets: every one owns a timer whose function
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
//! aggregator rule, applied in the kernel at the same bounds) and the
//! state: a client socket by destination, a server one by its local port
//! ([`LiveKey`]). The listening ports are a bitmap map the caller fills
//! before attaching.
//!
//! Sockets that were there before counting began are counted
//! once from a dump, taken while the programs also log every event to a
//! ring ([`Seed`]): the dump is not atomic, and a socket it met may have
//! gone, or come, while it ran; the log says which, exactly.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;

use timewait_kernel::TcpState;

use crate::asm::*;
use crate::bpf::SockOffsets;
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
        let net = tw("skc_net")? + net_pointer(btf);
        Ok(TwOffsets {
            timer: tw("tw_timer")?,
            function: btf
                .offset("timer_list", &[], "function")
                .ok_or_else(|| missing("timer_list", "function"))?,
            tuple: TupleOffsets::from_btf(btf, "inet_timewait_sock", "__tw_common")?,
            net,
            ns_inum: ns_inum(btf)?,
        })
    }
}

/// What the programs are built for: the namespace they count, the
/// ephemeral range they classify by, and the handler that marks a
/// TIME_WAIT timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveParams {
    /// `tw_timer_handler`'s address (`/proc/kallsyms`).
    pub handler: u64,
    /// The namespace's inode number.
    pub netns: u32,
    /// `ip_local_port_range`.
    pub range: (u16, u16),
}

/// Where `inet_sock_set_state`'s program reads a socket: what the trace
/// filter reads ([`crate::bpf::SockOffsets`]) and more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateOffsets {
    /// The protocol, the 4-tuple and the running task's stack.
    pub sock: SockOffsets,
    /// `inet_sock.inet_sport`: the local port, network order (u16). The
    /// program reads it, not `skc_num`: a change to CLOSE gives the port
    /// back (`inet_put_port` zeroes `skc_num`) before the tracepoint.
    pub sport: u32,
    /// `skc_net.net`.
    pub net: u32,
    /// `net.ns.inum`.
    pub ns_inum: u32,
}

impl StateOffsets {
    /// From the kernel's BTF; `Err` names what this kernel lacks.
    pub fn from_btf(btf: &Btf) -> Result<StateOffsets, String> {
        let missing =
            |s: &str, m: &str| format!("struct {s} has no byte-aligned {m} in this kernel's BTF");
        Ok(StateOffsets {
            sock: SockOffsets::from_btf(btf)?,
            sport: btf
                .offset("inet_sock", &[], "inet_sport")
                .ok_or_else(|| missing("inet_sock", "inet_sport"))?,
            net: btf
                .offset("sock", &["__sk_common"], "skc_net")
                .ok_or_else(|| missing("sock", "skc_net"))?
                + net_pointer(btf),
            ns_inum: ns_inum(btf)?,
        })
    }
}

/// `possible_net_t`'s pointer, inside it.
fn net_pointer(btf: &Btf) -> u32 {
    btf.offset("possible_net_t", &[], "net")
        .or_else(|| btf.offset("possible_net", &[], "net"))
        .unwrap_or(0)
}

fn ns_inum(btf: &Btf) -> Result<u32, String> {
    btf.offset("net", &["ns"], "inum")
        .ok_or_else(|| "struct net has no byte-aligned ns.inum in this kernel's BTF".to_string())
}

/// The maps the programs use, by file descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveMaps {
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
    /// Per-CPU array of two u64s: the state change the primary state
    /// program took, at task level and at interrupt level ([`Role`]).
    pub taken: i32,
}

/// A key of the count map, in bytes.
pub const KEY_LEN: usize = 40;
/// A record of the ring: the whole 4-tuple (a key before its
/// classification drops a part), the change and the socket's address.
pub const RECORD_LEN: usize = 56;
/// A control value: four u64 words. The map holds two: [`FLAGS`]
/// (written by the reader) and [`COUNTERS`] (by the programs).
pub const CONTROL_LEN: usize = 32;
/// The control entry the reader writes: one word of flags.
pub const FLAGS: u32 = 0;
/// Flag: count changes. Set with [`WINDOW`] in one write once every
/// program is attached, so that all count from the same moment
/// (attaching one and then another would miss, say, a socket armed
/// before the second attach and killed between them).
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
/// Counter: state changes the cover program counted because the primary
/// could not run ([`Role`]).
pub const COVERED: usize = 24;
/// Words in the listening bitmap.
pub const LISTENING_WORDS: u32 = 2048;

// The record (and key) layout.
const FAMILY: usize = 0;
const LPORT: usize = 2;
const RPORT: usize = 4;
const STATE: usize = 6;
const CLASS: usize = 7;
const SADDR: usize = 8;
const DADDR: usize = 24;
const OLD: usize = 40;
const NEW: usize = 41;
const OBJ: usize = 48;

const REC: i16 = -(RECORD_LEN as i16);
const FN: i16 = REC - 8;
const NETP: i16 = FN - 8;
const INUM: i16 = NETP - 8;
const IDX: i16 = INUM + 4;
const ZERO: i16 = INUM - 8;
const CTX: i16 = ZERO - 8;
const TSTACK: i16 = CTX - 8;
const CTXP: i16 = TSTACK - 8;

const CLIENT: u8 = 0;
const SERVER: u8 = 1;
const CLIENT_OUTSIDE: u8 = 2;

const IPPROTO_TCP: i32 = 6;

/// The states a full socket is counted in: those of a connection holding
/// its port, but SYN_RECV (see the module's text). TIME_WAIT is the
/// minisockets'; LISTEN is dumped.
pub const COUNTED: [TcpState; 7] = [
    TcpState::SynSent,
    TcpState::Established,
    TcpState::FinWait1,
    TcpState::FinWait2,
    TcpState::CloseWait,
    TcpState::LastAck,
    TcpState::Closing,
];

/// [`COUNTED`] as a bit per state number.
fn counted_mask() -> i32 {
    COUNTED.iter().map(|s| 1 << s.kernel()).sum()
}

/// `r1 = 1` if the state in `reg` is [`COUNTED`], else 0.
fn counted_bit(a: &mut Asm, reg: u8) {
    a.mov_imm(R1, counted_mask());
    a.op(ALU64 | RSH | X, R1, reg, 0, 0);
    a.op(ALU64 | AND | K, R1, 0, 0, 1);
}

/// Whether a record's state is one a count holds.
fn counted(state: u8) -> bool {
    state == TcpState::TimeWait.kernel() || (state < 16 && (counted_mask() >> state) & 1 == 1)
}

/// Zeroes the record, copies the tuple of the socket at `base` (its local
/// port from `sport`, `inet_sport`, where given) and sets the class byte (the aggregator's rule: a listening local port, or one
/// outside the range toward a peer port inside it, is the server side; a
/// local port of 0, a connect's before its port is picked, is an
/// ephemeral one). Clobbers r0-r6.
fn read_and_classify(
    a: &mut Asm,
    t: &TupleOffsets,
    sport: Option<u32>,
    base: u8,
    m: &LiveMaps,
    p: &LiveParams,
) {
    let at = |field: usize| REC + field as i16;
    let (lo, hi) = (i32::from(p.range.0), i32::from(p.range.1));
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
    read_tuple(a, t, sport, base, &slots);
    a.load(H, R6, FP, at(LPORT));
    a.jump(JMP | JEQ, R6, 0, "classified");
    a.mov(R1, R6);
    a.op(ALU64 | RSH | K, R1, 0, 0, 5);
    a.store(W, FP, IDX, R1);
    a.lookup(m.listening, IDX);
    a.jump(JMP | JEQ, R0, 0, "not_listening");
    a.load(W, R1, R0, 0);
    a.mov(R2, R6);
    a.op(ALU64 | AND | K, R2, 0, 0, 31);
    a.op(ALU64 | RSH | X, R1, R2, 0, 0);
    a.op(ALU64 | AND | K, R1, 0, 0, 1);
    a.jump(JMP | JNE, R1, 0, "server");
    a.label("not_listening");
    a.jump(JMP | JLT, R6, lo, "outside");
    a.jump(JMP | JGT, R6, hi, "outside");
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
}

/// Reads the flags while counted in flight (the reader closes the window,
/// then waits for no program to be between here and its log), logs the
/// record while the window is open, and leaves the key: the tuple without
/// what the class groups over. Leaves the counters' address in r9; goes to
/// `out` when there is nothing to count yet. Clobbers r0-r5, r8.
fn log_and_key(a: &mut Asm, m: &LiveMaps) {
    let at = |field: usize| REC + field as i16;
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
    a.ringbuf_output(m.ring, REC, RECORD_LEN);
    a.jump(JMP | JEQ, R0, 0, "logged");
    a.mov_imm(R1, 1);
    a.atomic_add(R9, RING_LOST as i16, R1);
    a.goto("logged");
    // Not counting yet: out of flight, and out.
    a.label("idle");
    a.mov_imm(R1, -1);
    a.atomic_add(R9, INFLIGHT as i16, R1);
    a.goto("out");
    a.label("logged");
    a.mov_imm(R1, -1);
    a.atomic_add(R9, INFLIGHT as i16, R1);

    a.load(B, R1, FP, at(CLASS));
    a.jump(JMP | JEQ, R1, i32::from(SERVER), "server_key");
    a.store_imm(H, FP, at(LPORT), 0);
    a.goto("keyed");
    a.label("server_key");
    a.store_imm(H, FP, at(RPORT), 0);
    a.store_imm(DW, FP, at(DADDR), 0);
    a.store_imm(DW, FP, at(DADDR) + 8, 0);
    a.label("keyed");
}

/// Adds `delta` to the key's count (the key's state byte set before),
/// making the key if it is new; a full map is counted in the counters
/// (r9). Then goes to `next`. `add` names this use's own label.
fn count(a: &mut Asm, m: &LiveMaps, delta: i32, add: &'static str, next: &'static str) {
    for attempt in 0..2 {
        a.lookup(m.counts, REC);
        a.jump(JMP | JNE, R0, 0, add);
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
    a.goto(next);
    a.label(add);
    a.mov_imm(R1, delta);
    a.atomic_add(R0, 0, R1);
    a.goto(next);
}

/// The TIME_WAIT program for one timer tracepoint: `delta` is +1 for
/// `timer_start`, −1 for `timer_cancel` (both take the timer as their
/// first argument).
pub fn tw_program(o: &TwOffsets, p: &LiveParams, m: &LiveMaps, delta: i32) -> Vec<Insn> {
    let at = |field: usize| REC + field as i16;
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

    read_and_classify(&mut a, &o.tuple, None, R7, m, p);
    let (old, new) = if delta > 0 {
        (TcpState::Close, TcpState::TimeWait)
    } else {
        (TcpState::TimeWait, TcpState::Close)
    };
    a.store_imm(B, FP, at(OLD), i32::from(old.kernel()));
    a.store_imm(B, FP, at(NEW), i32::from(new.kernel()));
    a.store(DW, FP, at(OBJ), R7);
    log_and_key(&mut a, m);
    a.store_imm(B, FP, at(STATE), i32::from(TcpState::TimeWait.kernel()));
    count(&mut a, m, delta, "add", "out");

    a.label("out");
    a.mov_imm(R0, 0);
    a.exit();
    a.finish()
}

/// Which of the two state programs: both are attached, the cover after
/// the primary.
///
/// The kernel does not run a program inside its own run on the same CPU
/// (it counts a `recursion_misses` instead), and a state change made in a
/// task (connect, close) can be interrupted by a softirq that changes
/// another socket's state: the nested run of the primary is skipped. The
/// cover runs after the primary for each change and counts it only if the
/// primary did not: the primary marks the change it takes (the address of
/// the tracepoint's arguments, unique while it runs) in a per-CPU slot
/// for its level (task or interrupt, told by the stack the arguments are
/// on), and the cover reads and clears it. A change nested in the
/// primary's run finds the interrupt level's slot clear; one nested in
/// the cover's own run was taken by the primary. So every change is
/// counted once as long as the primary's misses equal the cover's
/// [`COVERED`] count, which the reader checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Counts every change it runs for, and marks it.
    Primary,
    /// Counts the changes the primary did not mark.
    Cover,
}

/// The full sockets' program, for `inet_sock_set_state` (the socket, its
/// old state and its new one).
pub fn state_program(o: &StateOffsets, p: &LiveParams, m: &LiveMaps, role: Role) -> Vec<Insn> {
    let at = |field: usize| REC + field as i16;
    let mut a = Asm::default();
    a.store(DW, FP, CTXP, R1);
    a.load(DW, R7, R1, 8);
    a.load(DW, R8, R1, 16);
    a.load(DW, R9, R1, 0);

    // First, for every change (the primary's misses are of any change,
    // of any socket): the arguments' address as a number (the verifier
    // allows no arithmetic on the context pointer; a copy of it is a
    // number), and the level: task if they are on the running task's
    // stack.
    a.read(CTX, 8, FP, CTXP as i32 as u32);
    a.call(GET_CURRENT_TASK);
    a.mov(R6, R0);
    a.read(TSTACK, 8, R6, o.sock.task_stack);
    a.load(DW, R1, FP, CTX);
    a.load(DW, R2, FP, TSTACK);
    a.op(ALU64 | SUB | X, R1, R2, 0, 0);
    a.store_imm(W, FP, IDX, 0);
    a.jump(JMP | JLT, R1, o.sock.thread_size as i32, "level");
    a.store_imm(W, FP, IDX, 1);
    a.label("level");
    a.lookup(m.taken, IDX);
    a.jump(JMP | JEQ, R0, 0, "out");
    a.load(DW, R1, FP, CTX);
    match role {
        Role::Primary => a.store(DW, R0, 0, R1),
        Role::Cover => {
            a.load(DW, R2, R0, 0);
            a.store_imm(DW, R0, 0, 0);
            a.jump_reg(JMP | JEQ, R1, R2, "out");
            // The primary did not run for this change: cover it.
            a.store_imm(W, FP, IDX, COUNTERS as i32);
            a.lookup(m.control, IDX);
            a.jump(JMP | JEQ, R0, 0, "out");
            a.mov_imm(R1, 1);
            a.atomic_add(R0, COVERED as i16, R1);
        }
    }

    // Neither state counted: out, on two shifts.
    counted_bit(&mut a, R7);
    a.jump(JMP | JNE, R1, 0, "relevant");
    counted_bit(&mut a, R8);
    a.jump(JMP | JEQ, R1, 0, "out");
    a.label("relevant");
    a.read(FN, 2, R9, o.sock.protocol);
    a.load(H, R1, FP, FN);
    a.jump(JMP | JNE, R1, IPPROTO_TCP, "out");
    a.read(NETP, 8, R9, o.net);
    a.load(DW, R6, FP, NETP);
    a.read(INUM, 4, R6, o.ns_inum);
    a.load(W, R1, FP, INUM);
    a.jump(JMP32 | JNE, R1, p.netns as i32, "out");

    read_and_classify(&mut a, &o.sock.tuple, Some(o.sport), R9, m, p);
    a.store(B, FP, at(OLD), R7);
    a.store(B, FP, at(NEW), R8);
    a.store(DW, FP, at(OBJ), R9);
    log_and_key(&mut a, m);
    // From the old state's count (if it is one) to the new one's.
    for (field, delta, add, next) in [(OLD, -1, "add_old", "new"), (NEW, 1, "add_new", "out")] {
        a.load(B, R7, FP, at(field));
        counted_bit(&mut a, R7);
        a.jump(JMP | JEQ, R1, 0, next);
        a.store(B, FP, at(STATE), R7);
        count(&mut a, m, delta, add, next);
        if field == OLD {
            a.label("new");
        }
    }

    a.label("out");
    a.mov_imm(R0, 0);
    a.exit();
    a.finish()
}

/// One side of a connection.
pub type End = (IpAddr, u16);

/// A socket's 4-tuple (IPv4-mapped IPv6 as IPv4), as a record or the dump
/// gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// Local address and port.
    pub local: End,
    /// Remote address and port.
    pub remote: End,
}

impl Tuple {
    /// A 48-bit digest (the identity the seeding compares).
    fn digest(&self) -> u64 {
        let mut h = DefaultHasher::new();
        (self.local, self.remote).hash(&mut h);
        h.finish() >> 16
    }
}

/// What the count map groups by: the aggregator's classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
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
pub struct LiveKey {
    /// The state (TIME_WAIT for every minisocket).
    pub state: TcpState,
    /// The local address.
    pub local: IpAddr,
    /// The group.
    pub group: Group,
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

/// The key the programs give a socket in `state` (the same rule, in Rust,
/// for the dumped sockets and the logged changes).
pub fn classify(t: &Tuple, state: TcpState, range: (u16, u16), listening: &Listening) -> LiveKey {
    let inside = |p: u16| (range.0..=range.1).contains(&p);
    let port = t.local.1;
    let group = if port != 0 && (listening.contains(port) || (!inside(port) && inside(t.remote.1)))
    {
        Group::Server { port }
    } else {
        Group::Client {
            remote: t.remote,
            in_range: port == 0 || inside(port),
        }
    };
    LiveKey {
        state,
        local: t.local.0,
        group,
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// One logged change: a socket (by its kernel address, the minisocket's
/// for TIME_WAIT) went from `old` to `new` (kernel state numbers; CLOSE
/// before a minisocket is armed and after it is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The socket's address in the kernel.
    pub obj: u64,
    /// Its 4-tuple then.
    pub tuple: Tuple,
    /// The state it left.
    pub old: u8,
    /// The state it entered.
    pub new: u8,
}

/// A ring record, or `None` if it is cut short.
pub fn decode_record(r: &[u8]) -> Option<Change> {
    let r = r.get(..RECORD_LEN)?;
    let family = u16_at(r, FAMILY)?;
    Some(Change {
        obj: u64::from_ne_bytes(r[OBJ..OBJ + 8].try_into().ok()?),
        tuple: Tuple {
            local: (addr(family, &r[SADDR..])?, u16_at(r, LPORT)?),
            remote: (addr(family, &r[DADDR..])?, u16::from_be(u16_at(r, RPORT)?)),
        },
        old: r[OLD],
        new: r[NEW],
    })
}

/// A key of the count map, or `None` for bytes no program writes.
pub fn decode_key(k: &[u8]) -> Option<LiveKey> {
    let k = k.get(..KEY_LEN)?;
    let family = u16_at(k, FAMILY)?;
    let local = addr(family, &k[SADDR..])?;
    let state = TcpState::from_kernel(k[STATE]).filter(|s| counted(s.kernel()))?;
    let group = match k[CLASS] {
        SERVER => Group::Server {
            port: u16_at(k, LPORT)?,
        },
        c @ (CLIENT | CLIENT_OUTSIDE) => Group::Client {
            remote: (addr(family, &k[DADDR..])?, u16::from_be(u16_at(k, RPORT)?)),
            in_range: c == CLIENT,
        },
        _ => return None,
    };
    Some(LiveKey {
        state,
        local,
        group,
    })
}

/// The count of the sockets that were there before counting began, from
/// a dump taken while the programs logged every change.
///
/// With `D` the dump's count and `M` the map's (changes since counting
/// began), a socket without a change while the dump ran is counted right
/// in `D + M`. For one with changes, `M` holds its last state less its
/// first old one (each change takes from the key the previous one added
/// to), and `D` whatever the dump met under its 4-tuple. So the baseline
/// is `D`, less every dumped socket whose 4-tuple a change names, plus the
/// first old state of each socket that changed (a socket is known by its
/// kernel address; one freed and made again there ends and starts in
/// CLOSE, which no count holds). The log must cover the whole dump (it may
/// run longer).
#[derive(Debug, Default)]
pub struct Seed {
    keys: Vec<LiveKey>,
    ids: HashMap<LiveKey, u16>,
    /// Per dumped socket: its tuple's digest, then its key's index.
    dumped: Vec<u64>,
}

impl Seed {
    /// An empty seed.
    pub fn new() -> Seed {
        Seed::default()
    }

    /// One dumped socket, with its key; `Err` past [`MAX_SEED_KEYS`]
    /// keys.
    pub fn dumped(&mut self, t: &Tuple, key: LiveKey) -> Result<(), String> {
        let id = match self.ids.get(&key) {
            Some(&id) => id,
            None => {
                let id = u16::try_from(self.keys.len())
                    .ok()
                    .filter(|&id| usize::from(id) < MAX_SEED_KEYS)
                    .ok_or_else(|| format!("the dump holds more than {MAX_SEED_KEYS} keys"))?;
                self.keys.push(key);
                self.ids.insert(key, id);
                id
            }
        };
        self.dumped.push((t.digest() << 16) | u64::from(id));
        Ok(())
    }

    /// The baseline, given the window's changes in the order the ring held
    /// them, and the rule that keys a tuple in a state.
    pub fn finish(
        self,
        window: &[Change],
        key: impl Fn(&Tuple, TcpState) -> LiveKey,
    ) -> HashMap<LiveKey, i64> {
        let mut counts: HashMap<LiveKey, i64> = HashMap::new();
        let touched: HashSet<u64> = window.iter().map(|c| c.tuple.digest()).collect();
        for d in &self.dumped {
            let k = self.keys[(*d & 0xffff) as usize];
            let n = counts.entry(k).or_default();
            if !touched.contains(&(d >> 16)) {
                *n += 1;
            }
        }
        let mut first = HashSet::new();
        for c in window {
            if first.insert(c.obj)
                && counted(c.old)
                && let Some(old) = TcpState::from_kernel(c.old)
            {
                *counts.entry(key(&c.tuple, old)).or_default() += 1;
            }
        }
        counts.retain(|_, n| *n != 0);
        counts
    }
}

/// Keys the seeding can hold (the map holds fewer).
pub const MAX_SEED_KEYS: usize = 1 << 16;

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

    fn sock_offsets() -> StateOffsets {
        StateOffsets {
            sock: SockOffsets {
                protocol: 522,
                tuple: crate::tuple::sample(),
                task_stack: 32,
                task_flags: 44,
                thread_size: 16 << 10,
            },
            sport: 782,
            net: 48,
            ns_inum: 200,
        }
    }

    const PARAMS: LiveParams = LiveParams {
        handler: 0xffff_ffff_8206_4f30,
        netns: 4_026_532_000,
        range: (32768, 60999),
    };
    const MAPS: LiveMaps = LiveMaps {
        counts: 3,
        listening: 4,
        control: 5,
        ring: 6,
        taken: 7,
    };

    #[test]
    fn every_jump_lands_inside_the_programs_and_the_handler_is_one_64_bit_immediate() {
        for delta in [1, -1] {
            let p = tw_program(&offsets(), &PARAMS, &MAPS, delta);
            assert_eq!(check::well_formed(&p), [4, 5, 5, 6, 3, 3, 3]);
            let imm = p.iter().position(|i| i.code == LD | IMM | DW).unwrap();
            let value = u64::from(p[imm].imm as u32) | (u64::from(p[imm + 1].imm as u32) << 32);
            assert_eq!(value, PARAMS.handler);
            // The change is the program's.
            assert!(
                p.iter()
                    .any(|i| i.code == ALU64 | MOV | K && i.dst == R1 && i.imm == delta)
            );
        }
        for role in [Role::Primary, Role::Cover] {
            let p = state_program(&sock_offsets(), &PARAMS, &MAPS, role);
            let maps = check::well_formed(&p);
            let want: &[i32] = match role {
                Role::Primary => &[7, 4, 5, 5, 6, 3, 3, 3, 3, 3, 3],
                Role::Cover => &[7, 5, 4, 5, 5, 6, 3, 3, 3, 3, 3, 3],
            };
            assert_eq!(maps, want);
        }
    }

    /// Walks every path through a program (they have no loops: the
    /// verifier allows none), with what it adds to the in-flight counter
    /// and to counts; returns the most counts one path changes.
    fn most_counts_on_a_path(p: &[Insn]) -> u32 {
        let mut seen = HashSet::new();
        // (pc, in flight, counts changed, r1's constant)
        let mut todo = vec![(0usize, 0i64, 0u32, None::<i32>)];
        let mut most = 0;
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
                most = most.max(counts);
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
                    (R0, off) if off == COVERED as i16 => {}
                    // A change counted, or counted as not counted.
                    (R9, off) if off == UNCOUNTED as i16 => counts += 1,
                    (R0, 0) => counts += 1,
                    other => panic!("an atomic add to {other:?}"),
                }
            }
            todo.push((next, flight, counts, r1));
        }
        most
    }

    /// No path leaves a program in flight; a timer change counts once at
    /// most, a state change twice (its old state's and its new one's).
    #[test]
    fn every_path_leaves_nothing_in_flight_and_counts_each_change_once() {
        for delta in [1, -1] {
            assert_eq!(
                most_counts_on_a_path(&tw_program(&offsets(), &PARAMS, &MAPS, delta)),
                1
            );
        }
        for role in [Role::Primary, Role::Cover] {
            let p = state_program(&sock_offsets(), &PARAMS, &MAPS, role);
            assert_eq!(most_counts_on_a_path(&p), 2);
        }
    }

    #[test]
    fn the_counted_states_are_the_ones_holding_a_port_in_a_connection() {
        for s in 0..16u8 {
            let want = matches!(s, 1 | 2 | 4 | 5 | 6 | 8 | 9 | 11);
            assert_eq!(counted(s), want, "state {s}");
        }
        assert!(!counted(200));
    }

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sock(lport: u16, remote: &str, rport: u16) -> Tuple {
        Tuple {
            local: (v4("10.0.0.1"), lport),
            remote: (v4(remote), rport),
        }
    }

    #[test]
    fn classes_follow_the_aggregator_rule() {
        let range = (32768, 60999);
        let listening = Listening::of([8080, 40000]);
        let key = |s: &Tuple| classify(s, TcpState::TimeWait, range, &listening).group;
        let client = |r: &str, p, in_range| Group::Client {
            remote: (v4(r), p),
            in_range,
        };
        // An outgoing connection from an ephemeral port, and one whose
        // port is not picked yet.
        assert_eq!(
            key(&sock(41000, "10.0.0.9", 80)),
            client("10.0.0.9", 80, true)
        );
        assert_eq!(key(&sock(0, "10.0.0.9", 80)), client("10.0.0.9", 80, true));
        // From a port bound outside the range to a service port.
        assert_eq!(
            key(&sock(1000, "10.0.0.9", 80)),
            client("10.0.0.9", 80, false)
        );
        // Accepted on a listening port, in the range or not.
        assert_eq!(
            key(&sock(40000, "10.0.0.9", 41000)),
            Group::Server { port: 40000 }
        );
        assert_eq!(
            key(&sock(8080, "10.0.0.9", 1000)),
            Group::Server { port: 8080 }
        );
        // A service port no longer listening, toward an ephemeral peer.
        assert_eq!(
            key(&sock(9090, "10.0.0.9", 50000)),
            Group::Server { port: 9090 }
        );
    }

    /// A record as the programs write it.
    fn record(family: u16, lport: u16, rport: u16, old: u8, new: u8) -> Vec<u8> {
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
        r[OLD] = old;
        r[NEW] = new;
        r[OBJ..OBJ + 8].copy_from_slice(&0xffff_8880_0000_1000u64.to_ne_bytes());
        r
    }

    #[test]
    fn records_and_keys_decode_with_ports_in_host_order() {
        let c = decode_record(&record(2, 41000, 80, 6, 7)).unwrap();
        assert_eq!(c.tuple, sock(41000, "10.0.0.9", 80));
        assert_eq!((c.old, c.new, c.obj), (6, 7, 0xffff_8880_0000_1000));
        let c = decode_record(&record(10, 41000, 80, 1, 4)).unwrap();
        assert_eq!(c.tuple.local.0, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(c.tuple.remote, (v4("10.0.0.9"), 80));
        for n in 0..RECORD_LEN {
            assert_eq!(decode_record(&record(2, 1, 2, 1, 2)[..n]), None);
        }
        // A client key (its local port zeroed), a server key (the remote
        // end zeroed), and bytes no program writes.
        let mut k = record(2, 0, 80, 0, 0);
        k[STATE] = 1;
        let key = decode_key(&k[..KEY_LEN]).unwrap();
        assert_eq!(key.state, TcpState::Established);
        assert_eq!(
            key.group,
            Group::Client {
                remote: (v4("10.0.0.9"), 80),
                in_range: true
            }
        );
        k[CLASS] = CLIENT_OUTSIDE;
        assert!(matches!(
            decode_key(&k[..KEY_LEN]).unwrap().group,
            Group::Client {
                in_range: false,
                ..
            }
        ));
        let mut k = record(2, 8080, 0, 0, 0);
        k[DADDR..DADDR + 16].fill(0);
        k[CLASS] = SERVER;
        k[STATE] = 6;
        assert_eq!(
            decode_key(&k[..KEY_LEN]).unwrap().group,
            Group::Server { port: 8080 }
        );
        k[CLASS] = 7;
        assert_eq!(decode_key(&k[..KEY_LEN]), None);
        k[CLASS] = SERVER;
        for state in [0, 7, 10, 12, 99] {
            k[STATE] = state;
            assert_eq!(decode_key(&k[..KEY_LEN]), None, "state {state}");
        }
    }

    /// Minisockets a (there before, gone during the dump, met by it), b
    /// (there before, gone, not met), c (new, met), d (new, not met), e
    /// (there before, killed and made again by tcp_tw_reuse, met), f
    /// (untouched, met); and a connection g (established before, met, then
    /// closing through FIN_WAIT1 while the dump ran), h (connecting while
    /// the dump ran: SYN_SENT with no port yet, then ESTABLISHED, met):
    /// the baseline plus the map's changes counts what is there now.
    #[test]
    fn the_seed_counts_each_socket_once_whatever_the_dump_met() {
        let range = (32768, 60999);
        let listening = Listening::of([]);
        let key = |t: &Tuple, s: TcpState| classify(t, s, range, &listening);
        let s = |p| sock(p, "10.0.0.9", 80);
        let (a, b, c, d, e, f, g, h) = (
            s(40001),
            s(40002),
            s(40003),
            s(40004),
            s(40005),
            s(40006),
            s(40007),
            s(40008),
        );
        let tw = TcpState::TimeWait;
        let mut seed = Seed::new();
        for x in [a, c, e, f] {
            seed.dumped(&x, key(&x, tw)).unwrap();
        }
        seed.dumped(&g, key(&g, TcpState::Established)).unwrap();
        seed.dumped(&h, key(&h, TcpState::Established)).unwrap();
        let change = |obj, tuple, old: TcpState, new: TcpState| Change {
            obj,
            tuple,
            old: old.kernel(),
            new: new.kernel(),
        };
        let close = TcpState::Close;
        let h0 = Tuple {
            local: (h.local.0, 0),
            ..h
        };
        let window = [
            change(1, a, tw, close),
            change(2, b, tw, close),
            change(3, c, close, tw),
            change(4, d, close, tw),
            change(5, e, tw, close),
            change(6, e, close, tw),
            change(4, d, tw, close),
            change(7, g, TcpState::Established, TcpState::FinWait1),
            change(8, h0, close, TcpState::SynSent),
            change(8, h, TcpState::SynSent, TcpState::Established),
        ];
        // What the map holds: each change, from its old state's key to its
        // new one's.
        let mut map: HashMap<LiveKey, i64> = HashMap::new();
        for ch in &window {
            for (state, by) in [(ch.old, -1), (ch.new, 1)] {
                if let Some(st) = TcpState::from_kernel(state).filter(|_| counted(state)) {
                    *map.entry(key(&ch.tuple, st)).or_default() += by;
                }
            }
        }
        let mut now = seed.finish(&window, key);
        for (k, n) in map {
            *now.entry(k).or_default() += n;
        }
        now.retain(|_, n| *n != 0);
        let want = HashMap::from([
            // c, e (again), f.
            (key(&a, tw), 3),
            (key(&g, TcpState::FinWait1), 1),
            (key(&h, TcpState::Established), 1),
        ]);
        assert_eq!(now, want);
    }
}
