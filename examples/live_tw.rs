//! Benchmark helper: the live TIME_WAIT count of the current namespace.
//!
//! Usage: live_tw read [READS]   starts the count (the seeding dump), reads
//!                               it READS times (default 9); prints
//!                               `start_ms S read_ms R keys K total T`, R
//!                               the median read
//!        live_tw hold           starts it and keeps it attached until
//!                               stdin closes (to measure what the
//!                               programs cost the connections they count);
//!                               prints `attached` once counting
// A benchmark helper: stopping with a message on any failure is what it should do.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::time::Instant;

use timewait_host::Target;
use timewait_host::live::LiveCensus;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let t0 = Instant::now();
    let live = LiveCensus::start(&Target::Current).expect("the live count starts");
    let start_ms = t0.elapsed().as_secs_f64() * 1000.0;
    match args.first().map(String::as_str) {
        Some("hold") => {
            println!("attached");
            std::io::stdout().flush().unwrap();
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            let c = live.read().expect("whole counts");
            let total: u64 = c.by_key.iter().map(|(_, n)| n).sum();
            println!("total {total}");
        }
        Some("read") => {
            let reads: usize = args.get(1).map_or(9, |n| n.parse().expect("READS"));
            let mut times = Vec::new();
            let mut last = None;
            for _ in 0..reads.max(1) {
                let t = Instant::now();
                let c = live.read().expect("whole counts");
                times.push(t.elapsed().as_secs_f64() * 1000.0);
                last = Some(c);
            }
            times.sort_by(f64::total_cmp);
            let c = last.unwrap();
            let total: u64 = c.by_key.iter().map(|(_, n)| n).sum();
            println!(
                "start_ms {start_ms:.1} read_ms {:.3} keys {} total {total}",
                times[times.len() / 2],
                c.by_key.len()
            );
        }
        _ => panic!("usage: live_tw read [READS] | live_tw hold"),
    }
}
