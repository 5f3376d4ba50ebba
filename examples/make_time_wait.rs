//! Benchmark helper: makes COUNT client-side TIME_WAIT sockets in the
//! current network namespace, as fast as loopback allows, toward
//! 127.0.0.1:5000..5000+PORTS. Run it inside a throw-away namespace
//! (`ip netns exec NAME …`) with `tcp_tw_reuse=0`, a wide
//! `ip_local_port_range` and `tcp_max_tw_buckets` above COUNT.
//!
//! Usage: make_time_wait COUNT [PORTS] [THREADS]
// A benchmark helper: stopping with a message on any failure is what it should do.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::Instant;

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap_or_else(|_| panic!("not a number: {a}")))
        .collect();
    let count = *args
        .first()
        .expect("usage: make_time_wait COUNT [PORTS] [THREADS]");
    let ports = args.get(1).copied().unwrap_or(32).max(1);
    let threads = args.get(2).copied().unwrap_or(2).clamp(1, ports);
    let start = Instant::now();
    let made: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    // Each thread owns its listeners, so accept() returns its own connections.
                    let mine: Vec<(u16, TcpListener)> = (0..ports)
                        .filter(|p| p % threads == t)
                        .map(|p| {
                            let port = 5000 + p as u16;
                            (
                                port,
                                TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("bind"),
                            )
                        })
                        .collect();
                    let quota = count / threads + u64::from(t < count % threads);
                    let mut buf = [0u8; 1];
                    let mut made = 0;
                    while made < quota {
                        let (port, l) = &mine[(made % mine.len() as u64) as usize];
                        let c = match TcpStream::connect((Ipv4Addr::LOCALHOST, *port)) {
                            Ok(c) => c,
                            Err(e) => panic!("connect after {made} sockets: {e}"),
                        };
                        let (mut srv, _) = l.accept().expect("accept");
                        drop(c); // the client closes first: its side goes to TIME_WAIT
                        let _ = srv.read(&mut buf);
                        drop(srv);
                        made += 1;
                    }
                    made
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).sum()
    });
    let secs = start.elapsed().as_secs_f64();
    println!(
        "made {made} TIME_WAIT sockets in {secs:.1} s ({:.0}/s)",
        made as f64 / secs
    );
}
