//! A fixed-size bitset with a summary level, so "first set bit in [a, b)"
//! costs a few word operations instead of a scan over every port.
//!
//! The simulator asks this question once per simulated `connect()`; a plain
//! linear scan would make a nearly exhausted port range cost O(range) per
//! call, which is exactly when a simulation has the most calls to make.

/// Bits `0..len`, all clear at first.
#[derive(Debug, Clone)]
pub(crate) struct Bitset {
    words: Vec<u64>,
    /// Bit `w` is set when `words[w] != 0`.
    summary: Vec<u64>,
}

impl Bitset {
    pub(crate) fn new(len: usize) -> Bitset {
        let words = len.div_ceil(64);
        Bitset {
            words: vec![0; words],
            summary: vec![0; words.div_ceil(64)],
        }
    }

    pub(crate) fn set(&mut self, i: usize) {
        let w = i / 64;
        self.words[w] |= 1 << (i % 64);
        self.summary[w / 64] |= 1 << (w % 64);
    }

    pub(crate) fn clear(&mut self, i: usize) {
        let w = i / 64;
        self.words[w] &= !(1 << (i % 64));
        if self.words[w] == 0 {
            self.summary[w / 64] &= !(1 << (w % 64));
        }
    }

    #[cfg(test)]
    pub(crate) fn get(&self, i: usize) -> bool {
        self.words[i / 64] & (1 << (i % 64)) != 0
    }

    /// The first set bit `i` with `a <= i < b`.
    pub(crate) fn first_in(&self, a: usize, b: usize) -> Option<usize> {
        if a >= b {
            return None;
        }
        let w = a / 64;
        let here = self.words[w] & (u64::MAX << (a % 64));
        if here != 0 {
            let i = w * 64 + here.trailing_zeros() as usize;
            return (i < b).then_some(i);
        }
        let next = self.next_nonzero_word(w + 1)?;
        let i = next * 64 + self.words[next].trailing_zeros() as usize;
        (i < b).then_some(i)
    }

    /// The first non-zero word at index `>= w`.
    fn next_nonzero_word(&self, w: usize) -> Option<usize> {
        let mut s = w / 64;
        if s >= self.summary.len() {
            return None;
        }
        let mut bits = self.summary[s] & (u64::MAX.checked_shl((w % 64) as u32).unwrap_or(0));
        loop {
            if bits != 0 {
                return Some(s * 64 + bits.trailing_zeros() as usize);
            }
            s += 1;
            if s >= self.summary.len() {
                return None;
            }
            bits = self.summary[s];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn first_in_agrees_with_a_linear_scan(
            len in 1usize..9000,
            ops in proptest::collection::vec((any::<bool>(), 0usize..9000), 0..400),
            queries in proptest::collection::vec((0usize..9100, 0usize..9100), 1..50),
        ) {
            let mut b = Bitset::new(len);
            let mut model = vec![false; len];
            for (on, i) in ops {
                let i = i % len;
                if on { b.set(i); model[i] = true } else { b.clear(i); model[i] = false }
            }
            for (x, y) in queries {
                let (a, e) = (x.min(len), y.min(len));
                let want = (a..e).find(|&i| model[i]);
                prop_assert_eq!(b.first_in(a, e), want);
                if let Some(i) = want { prop_assert!(b.get(i)); }
            }
        }
    }
}
