//! The kernel's own type information (`/sys/kernel/btf/vmlinux`, BTF):
//! where a field sits in a kernel structure and the id of a kernel
//! variable, for the BPF filter ([`crate::bpf`]), whose reads of a socket
//! must use this kernel's offsets, never assumed ones.
//!
//! Only what the filter needs is read: struct and union members (through
//! anonymous members, as C allows `sk->skc_daddr` inside unions) and
//! function names. The encoding is `include/uapi/linux/btf.h`.

use crate::TraceError;

const MAGIC: u16 = 0xeb9f;

/// BTF kinds (`BTF_KIND_*`).
const STRUCT: u8 = 4;
const UNION: u8 = 5;
const FUNC: u8 = 12;

/// Bytes each kind adds after the common 12-byte header: fixed, plus per
/// `vlen` entry.
fn trailing(kind: u8, vlen: usize) -> Option<usize> {
    Some(match kind {
        // INT, ARRAY, VAR, DECL_TAG
        1 | 14 | 17 => 4,
        3 => 12,
        // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
        2 | 7..=12 | 16 | 18 => 0,
        // STRUCT, UNION, DATASEC, ENUM64
        4 | 5 | 15 | 19 => 12 * vlen,
        // ENUM, FUNC_PROTO
        6 | 13 => 8 * vlen,
        _ => return None,
    })
}

struct Member {
    name: u32,
    ty: u32,
    /// Bits from the start of the enclosing type.
    bits: u32,
    bitfield: bool,
}

/// Parsed BTF, borrowing the blob: where each type starts (id 0 is
/// `void`), read in place when asked. The kernel's BTF is megabytes of
/// types; nothing of it is copied.
pub struct Btf<'a> {
    /// The type section.
    types: &'a [u8],
    /// Each type's byte offset in `types` (index: id − 1).
    starts: Vec<u32>,
    strings: &'a [u8],
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn bad(at: usize, detail: &str) -> TraceError {
    TraceError::Btf {
        offset: at,
        detail: detail.to_string(),
    }
}

impl<'a> Btf<'a> {
    /// Parses a BTF blob (this machine's byte order is little-endian; a
    /// big-endian blob is refused).
    pub fn parse(b: &'a [u8]) -> Result<Btf<'a>, TraceError> {
        if u16_at(b, 0) != Some(MAGIC) {
            return Err(bad(0, "not BTF (bad magic)"));
        }
        let word = |at| u32_at(b, at).ok_or_else(|| bad(at, "header cut short"));
        let hdr_len = word(4)? as usize;
        let (type_off, type_len) = (word(8)? as usize, word(12)? as usize);
        let (str_off, str_len) = (word(16)? as usize, word(20)? as usize);
        let section = |off: usize, len: usize| {
            b.get(hdr_len + off..hdr_len + off + len)
                .ok_or_else(|| bad(hdr_len + off, "section past the end"))
        };
        let types = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?;
        let mut starts = Vec::new();
        let mut p = 0;
        while p < types.len() {
            let at = hdr_len + type_off + p;
            let info = u32_at(types, p + 4).ok_or_else(|| bad(at, "type cut short"))?;
            u32_at(types, p + 8).ok_or_else(|| bad(at, "type cut short"))?;
            let kind = ((info >> 24) & 0x1f) as u8;
            let vlen = (info & 0xffff) as usize;
            let extra = trailing(kind, vlen).ok_or_else(|| bad(at, "unknown type kind"))?;
            if p + 12 + extra > types.len() {
                return Err(bad(at, "type cut short"));
            }
            starts.push(u32::try_from(p).map_err(|_| bad(at, "type section too long"))?);
            p += 12 + extra;
        }
        Ok(Btf {
            types,
            starts,
            strings,
        })
    }

    /// The header of type `id`: (kind, name, size or referred type), and
    /// where its trailing data starts; `None` for `void` or a bad id.
    fn header(&self, id: u32) -> Option<(u8, u32, u32, usize)> {
        let p = *self.starts.get((id as usize).checked_sub(1)?)? as usize;
        let name = u32_at(self.types, p)?;
        let info = u32_at(self.types, p + 4)?;
        let size_or_type = u32_at(self.types, p + 8)?;
        Some((((info >> 24) & 0x1f) as u8, name, size_or_type, p))
    }

    /// The members of struct or union `id` (empty for other kinds).
    fn members(&self, id: u32) -> impl Iterator<Item = Member> + '_ {
        let (kind, p, info) = match self.header(id) {
            Some((k, _, _, p)) => (k, p, u32_at(self.types, p + 4).unwrap_or(0)),
            None => (0, 0, 0),
        };
        let vlen = if kind == STRUCT || kind == UNION {
            (info & 0xffff) as usize
        } else {
            0
        };
        let kflag = info >> 31 == 1;
        (0..vlen).filter_map(move |i| {
            let m = p + 12 + 12 * i;
            let off = u32_at(self.types, m + 8)?;
            Some(Member {
                name: u32_at(self.types, m)?,
                ty: u32_at(self.types, m + 4)?,
                bits: if kflag { off & 0xff_ffff } else { off },
                bitfield: kflag && off >> 24 != 0,
            })
        })
    }

    fn name(&self, off: u32) -> &[u8] {
        let s = self.strings.get(off as usize..).unwrap_or_default();
        &s[..s.iter().position(|&c| c == 0).unwrap_or(s.len())]
    }

    fn named(&self, kind: u8, name: &str) -> Option<u32> {
        (1..=self.starts.len() as u32).find(|&id| {
            self.header(id)
                .is_some_and(|(k, n, _, _)| k == kind && self.name(n) == name.as_bytes())
        })
    }

    /// Whether the kernel has a function `name` (BTF lists every global
    /// one: a way to tell build options apart).
    pub fn has_function(&self, name: &str) -> bool {
        self.named(FUNC, name).is_some()
    }

    /// Byte offset of `member` in struct `name`, found through embedded
    /// anonymous structs and unions and through members named in `via`
    /// (`sock`'s `__sk_common`), or `None` (also for a bitfield or a
    /// member not on a byte boundary).
    pub fn offset(&self, name: &str, via: &[&str], member: &str) -> Option<u32> {
        let id = self.named(STRUCT, name)?;
        let bits = self.find(id, via, member, 0)?;
        (bits % 8 == 0).then_some(bits / 8)
    }

    fn find(&self, id: u32, via: &[&str], member: &str, depth: u32) -> Option<u32> {
        let (kind, ..) = self.header(id)?;
        if depth > 8 || !(kind == STRUCT || kind == UNION) {
            return None;
        }
        for m in self.members(id) {
            let name = self.name(m.name);
            if name == member.as_bytes() {
                return (!m.bitfield).then_some(m.bits);
            }
            if name.is_empty() || via.iter().any(|v| v.as_bytes() == name) {
                let inner = self.resolve(m.ty);
                if let Some(b) = self.find(inner, via, member, depth + 1) {
                    return Some(m.bits + b);
                }
            }
        }
        None
    }

    /// Through typedefs and qualifiers to the type itself.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..16 {
            match self.header(id) {
                // TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG
                Some((8..=11 | 18, _, referred, _)) => id = referred,
                _ => break,
            }
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob with `struct outer { int a; union { struct { short x; short
    /// y; }; int z; }; struct inner in; }`, `struct inner { int deep; }`
    /// and a variable `v`.
    fn blob() -> Vec<u8> {
        let strings = b"\0outer\0a\0x\0y\0z\0inner\0deep\0v\0in\0int\0".to_vec();
        let s = |n: &str| {
            let pat = format!("\0{n}\0");
            strings
                .windows(pat.len())
                .position(|w| w == pat.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t = Vec::new();
        let ty = |t: &mut Vec<u8>, name: u32, kind: u32, vlen: u32, st: u32| {
            t.extend(name.to_le_bytes());
            t.extend(((kind << 24) | vlen).to_le_bytes());
            t.extend(st.to_le_bytes());
        };
        let member = |t: &mut Vec<u8>, name: u32, ty: u32, bits: u32| {
            t.extend(name.to_le_bytes());
            t.extend(ty.to_le_bytes());
            t.extend(bits.to_le_bytes());
        };
        // 1: int
        ty(&mut t, s("int"), 1, 0, 4);
        t.extend(32u32.to_le_bytes());
        // 2: anonymous struct { short x; short y; } (ints stand in)
        ty(&mut t, 0, 4, 2, 4);
        member(&mut t, s("x"), 1, 0);
        member(&mut t, s("y"), 1, 16);
        // 3: anonymous union { struct 2; int z; }
        ty(&mut t, 0, 5, 2, 4);
        member(&mut t, 0, 2, 0);
        member(&mut t, s("z"), 1, 0);
        // 4: struct inner { int deep; }
        ty(&mut t, s("inner"), 4, 1, 4);
        member(&mut t, s("deep"), 1, 0);
        // 5: const struct inner (a qualifier to see through)
        ty(&mut t, 0, 10, 0, 4);
        // 6: struct outer
        ty(&mut t, s("outer"), 4, 3, 12);
        member(&mut t, s("a"), 1, 0);
        member(&mut t, 0, 3, 32);
        member(&mut t, s("in"), 5, 64);
        // 7: var v
        ty(&mut t, s("v"), 14, 0, 1);
        t.extend(1u32.to_le_bytes());
        // 8: func deep (a name shared with a member)
        ty(&mut t, s("deep"), 12, 0, 0);
        let mut b = Vec::new();
        b.extend(MAGIC.to_le_bytes());
        b.extend([1, 0]);
        b.extend(24u32.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend((t.len() as u32).to_le_bytes());
        b.extend((t.len() as u32).to_le_bytes());
        b.extend((strings.len() as u32).to_le_bytes());
        b.extend(t);
        b.extend(strings);
        b
    }

    #[test]
    fn members_are_found_through_anonymous_unions_and_named_paths() {
        let b = blob();
        let btf = Btf::parse(&b).unwrap();
        assert_eq!(btf.offset("outer", &[], "a"), Some(0));
        assert_eq!(btf.offset("outer", &[], "z"), Some(4));
        assert_eq!(btf.offset("outer", &[], "y"), Some(6));
        assert_eq!(btf.offset("outer", &[], "deep"), None);
        assert_eq!(btf.offset("outer", &["in"], "deep"), Some(8));
        assert_eq!(btf.offset("outer", &[], "nothing"), None);
        assert_eq!(btf.offset("inner", &[], "deep"), Some(0));
        assert!(btf.has_function("deep"));
        assert!(!btf.has_function("v"));
    }

    #[test]
    fn a_cut_or_foreign_blob_is_an_error_not_a_panic() {
        let b = blob();
        for n in 0..b.len() {
            let _ = Btf::parse(&b[..n]);
        }
        assert!(Btf::parse(b"\x9f\xeb rest").is_err());
        let mut bad_kind = b.clone();
        bad_kind[24 + 7] = 31;
        assert!(Btf::parse(&bad_kind).is_err());
    }
}
