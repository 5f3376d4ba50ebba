//! What collection reads from the host, as raw bytes: files, sock_diag
//! datagrams, kernel log records, the host's name and kernel release, and
//! the time. [`Live`] reads the real host (inside whatever network
//! namespace the calling thread is in); tests replay recorded bytes through
//! the same [`Source`] interface, so the `decode` module runs without root.

use std::fs::OpenOptions;
use std::io::{self, ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::OFlag;

use crate::{HostError, sockdiag};

/// At most this many kernel log records are read (the ring buffer is
/// finite anyway; this bounds a log that grows while we read it).
const MAX_KMSG_RECORDS: usize = 500_000;

/// Raw reads. `Sync`: where the kernel refuses one dump of both address
/// families, the two are dumped in parallel.
pub(crate) trait Source: Sync {
    /// A whole file (a `/proc` or `/proc/sys` path).
    fn file(&self, path: &str) -> io::Result<Vec<u8>>;
    /// One sock_diag dump of TCP sockets of `family` in `states`: each
    /// received datagram goes to `datagram` until it returns `false` or the
    /// socket has no more.
    fn dump(
        &self,
        family: u8,
        states: u32,
        datagram: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<(), HostError>;
    /// Each `/dev/kmsg` record, oldest first.
    fn kernel_log(&self, record: &mut dyn FnMut(&[u8])) -> io::Result<()>;
    /// `uname -r`.
    fn kernel_release(&self) -> io::Result<String>;
    /// The host's name.
    fn hostname(&self) -> io::Result<String>;
    /// Now, in Unix milliseconds.
    fn now_unix_ms(&self) -> u64;
}

/// The real host.
pub(crate) struct Live;

impl Source for Live {
    fn file(&self, path: &str) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn dump(
        &self,
        family: u8,
        states: u32,
        datagram: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<(), HostError> {
        sockdiag::receive(family, states, None, datagram)
    }

    fn kernel_log(&self, record: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        let mut f = OpenOptions::new()
            .read(true)
            .custom_flags(OFlag::O_NONBLOCK.bits())
            .open("/dev/kmsg")?;
        let mut buf = vec![0u8; 8192];
        for _ in 0..MAX_KMSG_RECORDS {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => record(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // EPIPE: the record was overwritten while we read; go on.
                Err(e) if e.raw_os_error() == Some(nix::libc::EPIPE) => continue,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn kernel_release(&self) -> io::Result<String> {
        let u = nix::sys::utsname::uname()?;
        Ok(u.release().to_string_lossy().into_owned())
    }

    fn hostname(&self) -> io::Result<String> {
        Ok(nix::unistd::gethostname()?.to_string_lossy().into_owned())
    }

    fn now_unix_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}
