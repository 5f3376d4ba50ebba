//! Benchmark helper: the live count of the current namespace, attached
//! until stdin closes (to measure what the programs cost the connections
//! they count: `scripts/bench-live.sh`). Prints `attached` once counting,
//! and `total N`, the sockets it counts, at the end.
//!
//! Usage: live_tw hold
// A benchmark helper: stopping with a message on any failure is what it should do.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::{Read, Write};

use timewait_host::Target;
use timewait_host::live::LiveCensus;

fn main() {
    let arg = std::env::args().nth(1);
    assert_eq!(arg.as_deref(), Some("hold"), "usage: live_tw hold");
    let live = LiveCensus::start(&Target::Current).expect("the live count starts");
    println!("attached");
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    let c = live.read().expect("whole counts");
    let total: u64 = c.by_key.iter().map(|(_, n)| n).sum();
    println!("total {total}");
}
