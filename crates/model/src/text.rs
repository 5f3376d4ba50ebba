//! Numbers as people read them, for the sentences the model and the rules
//! write (`28,232 usable ports`). One implementation for every crate.

/// `28232` → `28,232`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn groups_by_three() {
        assert_eq!(super::thousands(0), "0");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(28_232), "28,232");
        assert_eq!(super::thousands(1_234_567), "1,234,567");
    }
}
