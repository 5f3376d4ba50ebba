//! Benchmark helper: the kernel's own cost of a sock_diag dump. Dumps every
//! TCP socket (IPv4 and IPv6) of the current namespace into one reused
//! buffer and discards it: no decoding, no aggregation. What any tool must
//! at least pay.
//!
//! Usage: raw_dump [STATES_MASK]   (default: every state)
//! Environment: RAW_DUMP_FAMILY=4|6|both, RAW_DUMP_SPLIT=N (see below).
//! Prints the number of sockets on stdout and the dump's own wall time
//! (without the process's start) on stderr as `dump_ms N`.
// A benchmark helper: stopping with a message on any failure is what it should do.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use timewait_kernel::inet_diag::{AF_INET, AF_INET6, AF_UNSPEC};

fn main() {
    let states = std::env::args()
        .nth(1)
        .map(|s| u32::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex mask"))
        .unwrap_or(0x2ffe);
    // RAW_DUMP_FAMILY=4 or 6 dumps one family only; `both`, both families
    // through one request (one walk of the kernel's tables).
    let families: &[u8] = match std::env::var("RAW_DUMP_FAMILY").as_deref() {
        Ok("4") => &[AF_INET],
        Ok("6") => &[AF_INET6],
        Ok("both") => &[AF_UNSPEC],
        _ => &[AF_INET, AF_INET6],
    };
    // RAW_DUMP_SPLIT=N: N threads per family, each dumping 1/N of the local
    // port space through a kernel-side bytecode filter. Without it, one
    // thread dumps the families one after the other (the kernel's baseline).
    let split: u32 = std::env::var("RAW_DUMP_SPLIT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let start = std::time::Instant::now();
    let messages = dump(families, states, split);
    eprintln!("dump_ms {:.3}", start.elapsed().as_secs_f64() * 1000.0);
    println!("{messages}");
}

fn dump(families: &[u8], states: u32, split: u32) -> u64 {
    if split == 0 {
        let mut messages = 0u64;
        for &family in families {
            timewait_host::sockdiag::dump(family, states, |_| messages += 1).expect("dump");
        }
        return messages;
    }
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for &family in families {
            for part in 0..split {
                handles.push(s.spawn(move || {
                    let lo = (65536 * part / split) as u16;
                    let hi = (65536 * (part + 1) / split - 1) as u16;
                    let bc = timewait_kernel::inet_diag::bytecode_local_ports(lo, hi);
                    let mut messages = 0u64;
                    let filter = (split > 1).then_some(bc.as_slice());
                    timewait_host::sockdiag::dump_filtered(family, states, filter, |_| {
                        messages += 1
                    })
                    .expect("dump");
                    messages
                }));
            }
        }
        handles.into_iter().map(|h| h.join().expect("thread")).sum()
    })
}
