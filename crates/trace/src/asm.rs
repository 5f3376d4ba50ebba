//! A tiny BPF assembler: the instruction encoding, the opcodes and
//! helpers the programs of this crate use, and jumps to named labels.
//!
//! The encoding is the kernel's (`Documentation/bpf/standardization/
//! instruction-set.rst`); helper numbers are `include/uapi/linux/bpf.h`'s.

use std::collections::HashMap;

/// One instruction, 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub(crate) code: u8,
    pub(crate) dst: u8,
    pub(crate) src: u8,
    pub(crate) off: i16,
    pub(crate) imm: i32,
}

impl Insn {
    /// As the kernel reads it.
    pub fn bytes(&self) -> [u8; 8] {
        let o = self.off.to_le_bytes();
        let i = self.imm.to_le_bytes();
        [
            self.code,
            self.dst | (self.src << 4),
            o[0],
            o[1],
            i[0],
            i[1],
            i[2],
            i[3],
        ]
    }
}

// Classes, sizes, modes, operations, sources.
pub(crate) const LD: u8 = 0x00;
pub(crate) const LDX: u8 = 0x01;
pub(crate) const ST: u8 = 0x02;
pub(crate) const STX: u8 = 0x03;
pub(crate) const JMP: u8 = 0x05;
pub(crate) const JMP32: u8 = 0x06;
pub(crate) const ALU: u8 = 0x04;
pub(crate) const ALU64: u8 = 0x07;
pub(crate) const W: u8 = 0x00;
pub(crate) const H: u8 = 0x08;
pub(crate) const B: u8 = 0x10;
pub(crate) const DW: u8 = 0x18;
pub(crate) const IMM: u8 = 0x00;
pub(crate) const MEM: u8 = 0x60;
pub(crate) const ATOMIC: u8 = 0xc0;
pub(crate) const ADD: u8 = 0x00;
pub(crate) const SUB: u8 = 0x10;
pub(crate) const MOV: u8 = 0xb0;
pub(crate) const RSH: u8 = 0x70;
pub(crate) const AND: u8 = 0x50;
/// Byte swap (`ALU | END | TO_BE`, the width in the immediate).
pub(crate) const END_TO_BE: u8 = 0xd8;
pub(crate) const JA: u8 = 0x00;
pub(crate) const JEQ: u8 = 0x10;
pub(crate) const JNE: u8 = 0x50;
pub(crate) const JGT: u8 = 0x20;
pub(crate) const JLT: u8 = 0xa0;
pub(crate) const CALL: u8 = 0x80;
pub(crate) const EXIT: u8 = 0x90;
pub(crate) const K: u8 = 0x00;
pub(crate) const X: u8 = 0x08;

/// `ld_imm64`'s source register: the immediate is a map's fd / a BTF id.
pub(crate) const PSEUDO_MAP_FD: u8 = 1;

/// Helpers.
pub(crate) const MAP_LOOKUP_ELEM: i32 = 1;
pub(crate) const MAP_UPDATE_ELEM: i32 = 2;
/// `bpf_map_update_elem`'s flag: only if the key is not there yet.
pub(crate) const BPF_NOEXIST: i32 = 1;
pub(crate) const KTIME_GET_NS: i32 = 5;
pub(crate) const GET_CURRENT_PID_TGID: i32 = 14;
pub(crate) const GET_CURRENT_TASK: i32 = 35;
pub(crate) const PROBE_READ_KERNEL: i32 = 113;
pub(crate) const RINGBUF_OUTPUT: i32 = 130;
/// `bpf_ringbuf_output`'s flag: do not wake the reader.
pub(crate) const RB_NO_WAKEUP: i32 = 1;

pub(crate) const R0: u8 = 0;
pub(crate) const R1: u8 = 1;
pub(crate) const R2: u8 = 2;
pub(crate) const R3: u8 = 3;
pub(crate) const R4: u8 = 4;
pub(crate) const R6: u8 = 6;
pub(crate) const R7: u8 = 7;
pub(crate) const R8: u8 = 8;
pub(crate) const R9: u8 = 9;
pub(crate) const FP: u8 = 10;

/// A tiny assembler: instructions, and jumps to named labels resolved at
/// the end.
#[derive(Default)]
pub(crate) struct Asm {
    insns: Vec<Insn>,
    labels: HashMap<&'static str, usize>,
    jumps: Vec<(usize, &'static str)>,
}

impl Asm {
    pub(crate) fn op(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.insns.push(Insn {
            code,
            dst,
            src,
            off,
            imm,
        });
    }
    pub(crate) fn mov(&mut self, dst: u8, src: u8) {
        self.op(ALU64 | MOV | X, dst, src, 0, 0);
    }
    pub(crate) fn mov_imm(&mut self, dst: u8, imm: i32) {
        self.op(ALU64 | MOV | K, dst, 0, 0, imm);
    }
    pub(crate) fn add_imm(&mut self, dst: u8, imm: i32) {
        self.op(ALU64 | ADD | K, dst, 0, 0, imm);
    }
    pub(crate) fn load(&mut self, size: u8, dst: u8, src: u8, off: i16) {
        self.op(LDX | MEM | size, dst, src, off, 0);
    }
    pub(crate) fn store(&mut self, size: u8, dst: u8, off: i16, src: u8) {
        self.op(STX | MEM | size, dst, src, off, 0);
    }
    pub(crate) fn store_imm(&mut self, size: u8, dst: u8, off: i16, imm: i32) {
        self.op(ST | MEM | size, dst, 0, off, imm);
    }
    pub(crate) fn ld_imm64(&mut self, dst: u8, pseudo: u8, imm: i32) {
        self.op(LD | IMM | DW, dst, pseudo, 0, imm);
        self.op(0, 0, 0, 0, 0);
    }
    /// `dst = imm` for a full 64-bit immediate.
    pub(crate) fn ld_u64(&mut self, dst: u8, imm: u64) {
        self.op(LD | IMM | DW, dst, 0, 0, imm as u32 as i32);
        self.op(0, 0, 0, 0, (imm >> 32) as u32 as i32);
    }
    /// `*(u64 *)(dst + off) += src`, atomically.
    pub(crate) fn atomic_add(&mut self, dst: u8, off: i16, src: u8) {
        self.op(STX | ATOMIC | DW, dst, src, off, i32::from(ADD));
    }
    pub(crate) fn call(&mut self, helper: i32) {
        self.op(JMP | CALL, 0, 0, 0, helper);
    }
    pub(crate) fn exit(&mut self) {
        self.op(JMP | EXIT, 0, 0, 0, 0);
    }
    /// `if dst <op> imm goto label` (`class_op`: `JMP` or `JMP32` and the
    /// comparison).
    pub(crate) fn jump(&mut self, class_op: u8, dst: u8, imm: i32, label: &'static str) {
        self.jumps.push((self.insns.len(), label));
        self.op(class_op | K, dst, 0, 0, imm);
    }
    /// `if dst <op> src goto label`.
    pub(crate) fn jump_reg(&mut self, class_op: u8, dst: u8, src: u8, label: &'static str) {
        self.jumps.push((self.insns.len(), label));
        self.op(class_op | X, dst, src, 0, 0);
    }
    pub(crate) fn goto(&mut self, label: &'static str) {
        self.jumps.push((self.insns.len(), label));
        self.op(JMP | JA, 0, 0, 0, 0);
    }
    pub(crate) fn label(&mut self, name: &'static str) {
        self.labels.insert(name, self.insns.len());
    }
    /// `r0 = bpf_map_lookup_elem(map, fp + key)`.
    pub(crate) fn lookup(&mut self, map: i32, key: i16) {
        self.ld_imm64(R1, PSEUDO_MAP_FD, map);
        self.mov(R2, FP);
        self.add_imm(R2, i32::from(key));
        self.call(MAP_LOOKUP_ELEM);
    }
    /// `r0 = bpf_ringbuf_output(ring, fp + at, len, no wakeup)`: the
    /// reader drains on its own clock.
    pub(crate) fn ringbuf_output(&mut self, ring: i32, at: i16, len: usize) {
        self.ld_imm64(R1, PSEUDO_MAP_FD, ring);
        self.mov(R2, FP);
        self.add_imm(R2, i32::from(at));
        self.mov_imm(R3, len as i32);
        self.mov_imm(R4, RB_NO_WAKEUP);
        self.call(RINGBUF_OUTPUT);
    }
    /// `bpf_probe_read_kernel(fp + at, len, base + from)`.
    pub(crate) fn read(&mut self, at: i16, len: i32, base: u8, from: u32) {
        // The helper's arguments are set in r1-r3 first: a base there
        // would be overwritten before it is used.
        assert!(
            base > R3,
            "a read based on r{base}, which its arguments clobber"
        );
        self.mov(R1, FP);
        self.add_imm(R1, i32::from(at));
        self.mov_imm(R2, len);
        self.mov(R3, base);
        self.add_imm(R3, from as i32);
        self.call(PROBE_READ_KERNEL);
    }
    pub(crate) fn finish(mut self) -> Vec<Insn> {
        for (at, label) in self.jumps {
            let to = self.labels[label];
            self.insns[at].off = (to as i64 - at as i64 - 1) as i16;
        }
        self.insns
    }
}

/// Checks shared by the programs' tests.
#[cfg(test)]
pub(crate) mod check {
    use super::*;

    /// Every jump lands inside the program, which ends in `exit`; returns
    /// the map fds its `ld_imm64`s name, in order.
    pub(crate) fn well_formed(p: &[Insn]) -> Vec<i32> {
        let n = p.len() as i64;
        for (i, insn) in p.iter().enumerate() {
            let class = insn.code & 0x07;
            let op = insn.code & 0xf0;
            if (class == JMP || class == JMP32) && op != CALL && op != EXIT {
                let to = i as i64 + 1 + i64::from(insn.off);
                assert!((0..n).contains(&to), "insn {i} jumps to {to}");
            }
        }
        assert_eq!(p.last().map(|i| i.code), Some(JMP | EXIT));
        p.iter()
            .filter(|i| i.code == LD | IMM | DW && i.src == PSEUDO_MAP_FD)
            .map(|i| i.imm)
            .collect()
    }
}
