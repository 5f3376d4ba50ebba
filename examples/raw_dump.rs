//! Benchmark helper: the kernel's own cost of a sock_diag dump. Dumps every
//! TCP socket (IPv4 and IPv6) of the current namespace into one reused
//! buffer and discards it: no decoding, no aggregation. What any tool must
//! at least pay.
//!
//! Usage: raw_dump [STATES_MASK]   (default: every state)

use timewait_kernel::inet_diag::{AF_INET, AF_INET6};

fn main() {
    let states = std::env::args()
        .nth(1)
        .map(|s| u32::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex mask"))
        .unwrap_or(0x2ffe);
    // RAW_DUMP_FAMILY=4 or 6 dumps one family only.
    let families: &[u8] = match std::env::var("RAW_DUMP_FAMILY").as_deref() {
        Ok("4") => &[AF_INET],
        Ok("6") => &[AF_INET6],
        _ => &[AF_INET, AF_INET6],
    };
    let mut messages = 0u64;
    for &family in families {
        timewait_host::sockdiag::dump(family, states, |_| messages += 1).expect("dump");
    }
    println!("{messages}");
}
