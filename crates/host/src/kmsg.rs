//! Kernel log lines of interest, read from `/dev/kmsg` without blocking.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;

use nix::fcntl::OFlag;

/// At most this many records are read (the ring buffer is finite anyway).
const MAX_RECORDS: usize = 500_000;
/// At most this many matching lines are kept (the newest).
const KEEP: usize = 50;

/// Lines whose message contains one of `patterns`.
pub fn matching_lines(patterns: &[&str]) -> std::io::Result<Vec<String>> {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NONBLOCK.bits())
        .open("/dev/kmsg")?;
    let mut out = Vec::new();
    let mut record = vec![0u8; 8192];
    for _ in 0..MAX_RECORDS {
        let n = match f.read(&mut record) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            // EPIPE: the record was overwritten while we read; go on.
            Err(e) if e.raw_os_error() == Some(nix::libc::EPIPE) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let text = String::from_utf8_lossy(&record[..n]);
        // "prio,seq,usec,flags;message\n continuation..."
        let message = text.split_once(';').map_or(text.as_ref(), |(_, m)| m);
        let first = message.lines().next().unwrap_or_default();
        if patterns.iter().any(|p| first.contains(p)) {
            out.push(first.to_string());
            if out.len() > KEEP {
                out.remove(0);
            }
        }
    }
    Ok(out)
}
