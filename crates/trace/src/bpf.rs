//! The state-change filter as a BPF program for the raw tracepoint
//! `inet_sock_set_state`, assembled here (no compiler, no toolchain), and
//! the records it writes, decoded into [`Event`]s.
//!
//! Why: the tracefs event fills every record (addresses, ports, IPv4
//! mapped into IPv6) before its filter can drop it, and `inet_sock_set_state`
//! fires on every state change of both ends of every connection, about ten
//! per loopback connection, of which three are kept (BENCHMARKS.md). A raw
//! tracepoint hands the program the socket pointer and the two states
//! before anything is filled: it drops the seven with two compares and
//! reads the socket only for the three it keeps, into a BPF ring buffer,
//! without waking the reader (which drains on its own clock).
//!
//! The program reads the socket at this kernel's offsets ([`SockOffsets`],
//! from BTF), never assumed ones. An event fired in a softirq or an
//! interrupt (a packet, a timer: the running task is unrelated to the
//! socket) must be known as such, as the tracefs event's `common_flags`
//! say; the per-CPU preemption count that holds this cannot be named
//! without data symbols in `/proc/kallsyms` (`CONFIG_KALLSYMS_ALL`, often
//! off), so the program records where its arguments are and where the
//! running task's stack is: x86-64 runs interrupts and softirqs on the
//! CPU's interrupt stack, so an event whose arguments are not on the
//! task's stack fired in one. Softirqs run by `ksoftirqd` are on a kernel thread's stack,
//! and a kernel thread owns no process's connection: both count as
//! interrupt context. Where any of this is missing the caller uses the
//! tracefs event instead.
//!
//! The encoding is the kernel's (`Documentation/bpf/standardization/
//! instruction-set.rst`); helper numbers are `include/uapi/linux/bpf.h`'s.

use timewait_kernel::TcpState;

pub use crate::asm::Insn;
use crate::asm::*;
use crate::btf::Btf;
use crate::event::{Context, Event, KEPT, StateChange, Timed};
use crate::tuple::{TupleOffsets, TupleSlots, addr, read_tuple};

/// Where `inet_sock_set_state`'s program reads a socket, in bytes from the
/// `struct sock` pointer, and the running task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockOffsets {
    /// `sk_protocol` (u16).
    pub protocol: u32,
    /// The 4-tuple, in `sock.__sk_common`.
    pub tuple: TupleOffsets,
    /// `task_struct`'s `stack`: the lowest address of the task's kernel
    /// stack.
    pub task_stack: u32,
    /// `task_struct`'s `flags` (u32; `PF_KTHREAD`).
    pub task_flags: u32,
    /// The size of a task's kernel stack (`THREAD_SIZE`).
    pub thread_size: u64,
}

impl SockOffsets {
    /// From the kernel's BTF; `Err` names what this kernel lacks.
    pub fn from_btf(btf: &Btf) -> Result<SockOffsets, String> {
        let common = &["__sk_common"];
        let at = |m: &str| {
            btf.offset("sock", common, m)
                .ok_or_else(|| format!("struct sock has no byte-aligned {m} in this kernel's BTF"))
        };
        let task = |m: &str| {
            btf.offset("task_struct", &[], m).ok_or_else(|| {
                format!("struct task_struct has no byte-aligned {m} in this kernel's BTF")
            })
        };
        Ok(SockOffsets {
            protocol: at("sk_protocol")?,
            tuple: TupleOffsets::from_btf(btf, "sock", "__sk_common")?,
            task_stack: task("stack")?,
            task_flags: task("flags")?,
            thread_size: thread_size(btf),
        })
    }
}

/// The size of a task's kernel stack (`THREAD_SIZE`). x86-64: 16 KiB,
/// twice that with KASAN (`KASAN_STACK_ORDER`), whose runtime checks every
/// KASAN kernel has.
pub fn thread_size(btf: &Btf) -> u64 {
    if btf.has_function("__kasan_check_read") {
        32 << 10
    } else {
        16 << 10
    }
}

/// The record the program writes (bytes): what [`decode`] reads.
pub const RECORD_LEN: usize = 96;
const TS: usize = 0;
const PID_TGID: usize = 8;
const SK: usize = 16;
const OLD: usize = 24;
const NEW: usize = 28;
/// Where the tracepoint's arguments are (on the stack the event fired on),
/// and the running task's stack base.
const FRAME: usize = 32;
const TASK_STACK: usize = 40;
const TASK_FLAGS: usize = 48;
const FAMILY: usize = 52;
const SPORT: usize = 54;
const DPORT: usize = 56;
const PROTOCOL: usize = 58;
const SADDR: usize = 64;
const DADDR: usize = 80;

/// The record's place on the program's stack, and a word for the map key.
const REC: i16 = -(RECORD_LEN as i16);
const KEY: i16 = REC - 8;

const IPPROTO_TCP: i32 = 6;

/// `task_struct.flags`: a kernel thread (`include/linux/sched.h`).
const PF_KTHREAD: u32 = 0x0020_0000;

/// The program: keeps the [`KEPT`] transitions of TCP sockets, writes each
/// as a [`RECORD_LEN`]-byte record to the ring buffer map `ring`, and
/// counts the records the ring had no room for in slot 0 of the array map
/// `lost`.
pub fn state_program(o: &SockOffsets, ring: i32, lost: i32) -> Vec<Insn> {
    let mut a = Asm::default();
    // r1 is the context: the tracepoint's arguments as u64s (sk, oldstate,
    // newstate).
    a.mov(R6, R1);
    a.load(DW, R7, R6, 8);
    a.load(DW, R8, R6, 16);
    for (old, new) in KEPT {
        if let Some(old) = old {
            // Another old state: skip the next test.
            a.op(JMP32 | JNE | K, R7, 0, 1, i32::from(old.kernel()));
        }
        a.jump(JMP32 | JEQ, R8, i32::from(new.kernel()), "keep");
    }
    a.goto("out");

    a.label("keep");
    a.load(DW, R9, R6, 0);
    for at in (REC..0).step_by(8) {
        a.store_imm(DW, FP, at, 0);
    }
    let at = |field: usize| REC + field as i16;
    a.read(at(PROTOCOL), 2, R9, o.protocol);
    a.load(H, R1, FP, at(PROTOCOL));
    a.jump(JMP | JNE, R1, IPPROTO_TCP, "out");
    let slots = TupleSlots {
        family: at(FAMILY),
        sport: at(SPORT),
        dport: at(DPORT),
        saddr: at(SADDR),
        daddr: at(DADDR),
    };
    read_tuple(&mut a, &o.tuple, None, R9, &slots);
    a.store(DW, FP, at(SK), R9);
    a.store(W, FP, at(OLD), R7);
    a.store(W, FP, at(NEW), R8);
    a.call(KTIME_GET_NS);
    a.store(DW, FP, at(TS), R0);
    a.call(GET_CURRENT_PID_TGID);
    a.store(DW, FP, at(PID_TGID), R0);
    // Where this runs: the context's address (the tracepoint's arguments,
    // an array on the kernel stack of whatever fired it; the program's own
    // stack may be a per-CPU one, 6.13+), which root may record, and the
    // running task's stack and flags.
    a.store(DW, FP, at(FRAME), R6);
    a.call(GET_CURRENT_TASK);
    a.mov(R9, R0);
    a.read(at(TASK_STACK), 8, R9, o.task_stack);
    a.read(at(TASK_FLAGS), 4, R9, o.task_flags);

    a.ringbuf_output(ring, REC, RECORD_LEN);
    a.jump(JMP | JEQ, R0, 0, "out");
    // The ring was full: count it.
    a.store_imm(W, FP, KEY, 0);
    a.lookup(lost, KEY);
    a.jump(JMP | JEQ, R0, 0, "out");
    a.mov_imm(R1, 1);
    a.atomic_add(R0, 0, R1);

    a.label("out");
    a.mov_imm(R0, 0);
    a.exit();
    a.finish()
}

fn word<const N: usize>(r: &[u8], at: usize) -> Option<[u8; N]> {
    r.get(at..at + N)?.try_into().ok()
}

/// One record of [`state_program`]'s, from a kernel whose task stacks are
/// `thread_size` bytes, or `None` if it is too short or holds a state this
/// crate does not know.
pub fn decode(r: &[u8], thread_size: u64) -> Option<Timed> {
    let r = r.get(..RECORD_LEN)?;
    let u64_at = |at| word::<8>(r, at).map(u64::from_ne_bytes);
    let u32_at = |at| word::<4>(r, at).map(u32::from_ne_bytes);
    let u16_at = |at| word::<2>(r, at).map(u16::from_ne_bytes);
    let state = |at| TcpState::from_kernel(u8::try_from(u32_at(at)?).ok()?);
    let family = u16_at(FAMILY)?;
    let (saddr, daddr) = (addr(family, &r[SADDR..])?, addr(family, &r[DADDR..])?);
    let on_task_stack = u64_at(FRAME)?.wrapping_sub(u64_at(TASK_STACK)?) < thread_size;
    let context = if on_task_stack && u32_at(TASK_FLAGS)? & PF_KTHREAD == 0 {
        Context::Task
    } else {
        Context::Interrupt
    };
    Some(Timed {
        ts: u64_at(TS)?,
        event: Event::State(StateChange {
            context,
            tid: u64_at(PID_TGID)? as u32,
            sk: u64_at(SK)?,
            old: state(OLD)?,
            new: state(NEW)?,
            local: (saddr, u16_at(SPORT)?),
            remote: (daddr, u16::from_be(u16_at(DPORT)?)),
        }),
    })
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::asm::check;

    fn offsets() -> SockOffsets {
        SockOffsets {
            protocol: 522,
            tuple: crate::tuple::sample(),
            task_stack: 32,
            task_flags: 44,
            thread_size: 16 << 10,
        }
    }

    #[test]
    fn every_jump_lands_inside_the_program_and_it_ends_in_exit() {
        let p = state_program(&offsets(), 3, 4);
        // The maps are named by fd in ld_imm64 (two slots each).
        assert_eq!(check::well_formed(&p), [3, 4]);
    }

    /// Runs the filter part of the program (up to `keep` or `out`) on a
    /// transition: the program and [`KEPT`] agree on every pair.
    #[test]
    fn the_program_keeps_exactly_the_kept_transitions() {
        let p = state_program(&offsets(), 3, 4);
        let keep = p
            .iter()
            .position(|i| i.code == LDX | MEM | DW && i.dst == R9)
            .unwrap();
        for old in 1..=12u32 {
            for new in 1..=12u32 {
                let (mut pc, regs) = (3usize, [old, new]);
                let kept = loop {
                    if pc == keep {
                        break true;
                    }
                    let i = p[pc];
                    let class = i.code & 0x07;
                    assert!(class == JMP32 || class == JMP, "filter leaves at {pc}");
                    if i.code & 0xf0 == JA && class == JMP {
                        pc = (pc as i64 + 1 + i64::from(i.off)) as usize;
                        if pc > keep {
                            break false;
                        }
                        continue;
                    }
                    let v = regs[usize::from(i.dst - R7)];
                    let taken = match i.code & 0xf0 {
                        JEQ => v == i.imm as u32,
                        JNE => v != i.imm as u32,
                        other => panic!("unexpected op {other:#x}"),
                    };
                    pc = if taken {
                        (pc as i64 + 1 + i64::from(i.off)) as usize
                    } else {
                        pc + 1
                    };
                };
                let want = KEPT.iter().any(|&(o, n)| {
                    o.is_none_or(|o| u32::from(o.kernel()) == old) && u32::from(n.kernel()) == new
                });
                assert_eq!(kept, want, "{old} -> {new}");
            }
        }
    }

    /// A record from a task's own call (`frame` 0x3f00 above its stack)
    /// or elsewhere.
    fn record(family: u16, frame: u64, flags: u32) -> Vec<u8> {
        let mut r = vec![0u8; RECORD_LEN];
        r[TS..TS + 8].copy_from_slice(&77u64.to_ne_bytes());
        r[PID_TGID..PID_TGID + 8].copy_from_slice(&((41u64 << 32) | 42).to_ne_bytes());
        r[SK..SK + 8].copy_from_slice(&0xffff_8880_dead_beefu64.to_ne_bytes());
        r[OLD..OLD + 4].copy_from_slice(&7u32.to_ne_bytes());
        r[NEW..NEW + 4].copy_from_slice(&2u32.to_ne_bytes());
        let stack = 0xffff_c900_0010_0000u64;
        r[FRAME..FRAME + 8].copy_from_slice(&stack.wrapping_add(frame).to_ne_bytes());
        r[TASK_STACK..TASK_STACK + 8].copy_from_slice(&stack.to_ne_bytes());
        r[TASK_FLAGS..TASK_FLAGS + 4].copy_from_slice(&flags.to_ne_bytes());
        r[FAMILY..FAMILY + 2].copy_from_slice(&family.to_ne_bytes());
        r[SPORT..SPORT + 2].copy_from_slice(&40000u16.to_ne_bytes());
        r[DPORT..DPORT + 2].copy_from_slice(&8080u16.to_be_bytes());
        r[PROTOCOL..PROTOCOL + 2].copy_from_slice(&6u16.to_ne_bytes());
        if family == 2 {
            r[SADDR..SADDR + 4].copy_from_slice(&[127, 0, 0, 1]);
            r[DADDR..DADDR + 4].copy_from_slice(&[10, 0, 0, 5]);
        } else {
            r[SADDR + 15] = 1;
            let mapped = Ipv4Addr::new(10, 0, 0, 5).to_ipv6_mapped().octets();
            r[DADDR..DADDR + 16].copy_from_slice(&mapped);
        }
        r
    }

    fn decode16(r: &[u8]) -> Option<Timed> {
        decode(r, 16 << 10)
    }

    #[test]
    fn records_decode_with_ports_in_host_order_and_the_context_from_the_stack() {
        let t = decode16(&record(2, 0x3f00, 0x40)).unwrap();
        assert_eq!(t.ts, 77);
        let Event::State(s) = t.event else {
            panic!("{t:?}")
        };
        assert_eq!(s.tid, 42);
        assert_eq!(s.context, Context::Task);
        assert_eq!((s.old, s.new), (TcpState::Close, TcpState::SynSent));
        assert_eq!(s.local, ("127.0.0.1".parse().unwrap(), 40000));
        assert_eq!(s.remote, ("10.0.0.5".parse().unwrap(), 8080));
        assert_eq!(s.sk, 0xffff_8880_dead_beef);
        // On another stack (an interrupt's), below the task's, or a kernel
        // thread's (ksoftirqd).
        for (frame, flags) in [
            (0x10_0000, 0),
            (0x4008, 0),
            (u64::MAX - 8, 0),
            (0x3f00, PF_KTHREAD),
        ] {
            let Event::State(s) = decode16(&record(2, frame, flags)).unwrap().event else {
                panic!()
            };
            assert_eq!(s.context, Context::Interrupt, "{frame:#x} {flags:#x}");
        }
        // IPv6, the peer v4-mapped.
        let Event::State(s) = decode16(&record(10, 8, 0)).unwrap().event else {
            panic!()
        };
        assert_eq!(s.local.0, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(s.remote.0, "10.0.0.5".parse::<IpAddr>().unwrap());
        for n in 0..RECORD_LEN {
            assert_eq!(decode16(&record(2, 8, 0)[..n]), None);
        }
    }
}
