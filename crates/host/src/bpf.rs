//! `trace`'s BPF state filter on the host: the `bpf(2)` system calls that
//! create its two maps, load the program [`timewait_trace::bpf`] assembles
//! and attach it to the raw tracepoint `inet_sock_set_state`, and the
//! reading of its ring buffer.
//!
//! The only unsafe code of the project is here, each block for one reason:
//! `bpf(2)` has no wrapper in the crates we use (it takes a pointer to a
//! union the caller fills), and a BPF ring buffer is read through `mmap`
//! (the kernel writes records and the producer position into pages shared
//! with us; we write the consumer position back), as libbpf does. Nothing
//! else here is unsafe: the maps, the program and the attachment are file
//! descriptors, closed (and so detached) on drop, whatever happens, and a
//! process killed outright leaves nothing behind.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use nix::errno::Errno;
use nix::libc;
use timewait_trace::Timed;
use timewait_trace::bpf::{SockOffsets, decode, state_program};
use timewait_trace::btf::Btf;

const MAP_CREATE: libc::c_long = 0;
const MAP_LOOKUP_ELEM: libc::c_long = 1;
const MAP_UPDATE_ELEM: libc::c_long = 2;
const MAP_GET_NEXT_KEY: libc::c_long = 4;
const PROG_LOAD: libc::c_long = 5;
const RAW_TRACEPOINT_OPEN: libc::c_long = 17;
pub(crate) const MAP_TYPE_HASH: u32 = 1;
pub(crate) const MAP_TYPE_ARRAY: u32 = 2;
pub(crate) const MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const MAP_TYPE_RINGBUF: u32 = 27;
const PROG_TYPE_RAW_TRACEPOINT: u32 = 17;

/// The ring: 4 MiB holds 40,000 records (96 bytes and an 8-byte header
/// each): over half a second of the highest rate measured here (66,000
/// records/s, BENCHMARKS.md), thirty times the 20 ms between two reads.
const RING_BYTES: u32 = 4 << 20;
/// A record's header in the ring (`BPF_RINGBUF_HDR_SZ`) and its bits.
const HDR: u64 = 8;
const BUSY: u32 = 1 << 31;
const DISCARD: u32 = 1 << 30;

const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
const TRACEPOINT: &str = "inet_sock_set_state";

/// Calls `f` with this kernel's BTF (read, parsed and let go here).
///
/// The file (megabytes) is mapped, not read into the heap: a buffer that
/// size, once freed, would raise the allocator's thresholds and stay in
/// the process's memory for good. Kernels since 6.16 map it in place;
/// older ones are read into an anonymous mapping.
pub(crate) fn with_kernel_btf<R>(f: impl FnOnce(&Btf) -> Result<R, String>) -> Result<R, String> {
    let err = |e: std::io::Error| format!("reading {BTF_PATH}: {e}");
    let mut file = std::fs::File::open(BTF_PATH).map_err(err)?;
    let len = file.metadata().map_err(err)?.len() as usize;
    let blob = Mapping::of_file(&mut file, len).map_err(err)?;
    let btf = Btf::parse(&blob.bytes()[..len]).map_err(|e| format!("{BTF_PATH}: {e}"))?;
    f(&btf)
}

/// A mapping of `len` bytes into this process, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    /// `mmap(len, prot, flags, fd, offset)` (`fd` −1 for an anonymous one).
    fn new(
        len: usize,
        prot: libc::c_int,
        flags: libc::c_int,
        fd: libc::c_int,
        offset: usize,
    ) -> std::io::Result<Mapping> {
        let len = len.max(1);
        // SAFETY: a fresh mapping the kernel places; the result is checked,
        // and `Drop` unmaps it once.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                flags,
                fd,
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        NonNull::new(p.cast::<u8>())
            .map(|ptr| Mapping { ptr, len })
            .ok_or_else(|| std::io::Error::other("mmap returned null"))
    }

    /// A private read-only mapping of `file`, or else an anonymous one
    /// `file` is read into.
    fn of_file(file: &mut std::fs::File, len: usize) -> std::io::Result<Mapping> {
        let fd = file.as_raw_fd();
        Mapping::new(len, libc::PROT_READ, libc::MAP_PRIVATE, fd, 0).or_else(|_| {
            let rw = libc::PROT_READ | libc::PROT_WRITE;
            let m = Mapping::new(len, rw, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)?;
            // SAFETY: the anonymous mapping just made: `len` writable bytes
            // (or 1 for an empty file) that only `m` refers to.
            let bytes = unsafe { std::slice::from_raw_parts_mut(m.ptr.as_ptr(), m.len) };
            std::io::Read::read_exact(file, &mut bytes[..len])?;
            Ok(m)
        })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `len` mapped, readable bytes, alive while `self` is.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; the slices and
        // pointers it lent do not outlive `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

// SAFETY: a mapping is valid in every thread of the process; moving its
// owner to another thread shares nothing.
unsafe impl Send for Mapping {}

/// `union bpf_attr`, as bytes: each command fills the fields it reads and
/// the kernel checks that the rest is zero.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }
    fn u32(mut self, at: usize, v: u32) -> Attr {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(mut self, at: usize, v: u64) -> Attr {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn name(mut self, at: usize, name: &str) -> Attr {
        let n = name.len().min(15);
        self.0[at..at + n].copy_from_slice(&name.as_bytes()[..n]);
        self
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> Result<libc::c_int, Errno> {
    // SAFETY: `attr` is a live, writable 128-byte buffer, the size passed
    // with it; every pointer inside it (set by the callers) points to memory
    // that outlives this call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            std::mem::size_of::<Attr>(),
        )
    };
    if r < 0 {
        Err(Errno::last())
    } else {
        // A new file descriptor, or 0.
        Ok(r as libc::c_int)
    }
}

fn owned(fd: libc::c_int) -> OwnedFd {
    // SAFETY: `fd` was just returned by bpf(2) as a new descriptor that
    // nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

pub(crate) fn map(
    kind: u32,
    key: u32,
    value: u32,
    entries: u32,
    name: &str,
) -> Result<OwnedFd, String> {
    let mut a = Attr::new()
        .u32(0, kind)
        .u32(4, key)
        .u32(8, value)
        .u32(12, entries)
        .name(28, name);
    bpf(MAP_CREATE, &mut a)
        .map(owned)
        .map_err(|e| format!("creating the BPF map {name}: {}", e.desc()))
}

/// Sets `key` to `value` in the map `fd`.
pub(crate) fn update(fd: &OwnedFd, key: &[u8], value: &[u8]) -> Result<(), Errno> {
    let mut a = Attr::new()
        .u32(0, fd.as_raw_fd() as u32)
        .u64(8, key.as_ptr() as u64)
        .u64(16, value.as_ptr() as u64);
    bpf(MAP_UPDATE_ELEM, &mut a).map(drop)
}

/// Reads `key`'s value of the map `fd` into `value` (its size).
pub(crate) fn lookup(fd: &OwnedFd, key: &[u8], value: &mut [u8]) -> Result<(), Errno> {
    let mut a = Attr::new()
        .u32(0, fd.as_raw_fd() as u32)
        .u64(8, key.as_ptr() as u64)
        .u64(16, value.as_mut_ptr() as u64);
    bpf(MAP_LOOKUP_ELEM, &mut a).map(drop)
}

/// The key after `key` (the first one for `None`) of the map `fd`, into
/// `next`; `false` after the last.
pub(crate) fn next_key(fd: &OwnedFd, key: Option<&[u8]>, next: &mut [u8]) -> Result<bool, Errno> {
    let mut a = Attr::new()
        .u32(0, fd.as_raw_fd() as u32)
        .u64(8, key.map_or(0, |k| k.as_ptr() as u64))
        .u64(16, next.as_mut_ptr() as u64);
    match bpf(MAP_GET_NEXT_KEY, &mut a) {
        Ok(_) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Loads `insns` as a raw-tracepoint program named `name`; on refusal,
/// the verifier's last words.
pub(crate) fn load(insns: &[u8], name: &str) -> Result<OwnedFd, String> {
    let license = c"GPL";
    let attempt = |log: &mut Vec<u8>| {
        let mut a = Attr::new()
            .u32(0, PROG_TYPE_RAW_TRACEPOINT)
            .u32(4, (insns.len() / 8) as u32)
            .u64(8, insns.as_ptr() as u64)
            .u64(16, license.as_ptr() as u64)
            .name(48, name);
        if !log.is_empty() {
            a = a
                .u32(24, 1)
                .u32(28, log.len() as u32)
                .u64(32, log.as_mut_ptr() as u64);
        }
        bpf(PROG_LOAD, &mut a).map(owned)
    };
    attempt(&mut Vec::new()).or_else(|e| {
        let mut log = vec![0u8; 1 << 20];
        let detail = match attempt(&mut log) {
            Ok(fd) => return Ok(fd),
            Err(_) => {
                let n = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                let text = String::from_utf8_lossy(&log[..n]);
                let last: Vec<&str> = text.lines().rev().take(3).collect();
                last.into_iter().rev().collect::<Vec<_>>().join(" / ")
            }
        };
        Err(format!(
            "the kernel refused the BPF program: {} ({detail})",
            e.desc()
        ))
    })
}

/// Attaches `prog` to the raw tracepoint `tracepoint`; detached when the
/// link is closed.
pub(crate) fn attach(prog: &OwnedFd, tracepoint: &str) -> Result<OwnedFd, String> {
    let name = CString::new(tracepoint).map_err(|e| e.to_string())?;
    let mut a = Attr::new()
        .u64(0, name.as_ptr() as u64)
        .u32(8, prog.as_raw_fd() as u32);
    bpf(RAW_TRACEPOINT_OPEN, &mut a)
        .map(owned)
        .map_err(|e| format!("attaching to the raw tracepoint {tracepoint}: {}", e.desc()))
}

/// A BPF ring buffer mapped into this process.
pub(crate) struct Ring {
    pub(crate) fd: OwnedFd,
    /// The consumer position's page, writable.
    consumer: Mapping,
    /// The producer position's page, then the data pages twice, read-only.
    producer: Mapping,
    page: usize,
    mask: u64,
}

impl Ring {
    pub(crate) fn new(bytes: u32) -> Result<Ring, String> {
        let fd = map(MAP_TYPE_RINGBUF, 0, 0, bytes, "timewait_ring")?;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        // The offsets and protections the kernel gives ring buffers: one
        // writable consumer page; the producer page and the data, mapped
        // twice, read-only.
        let mapping = |len: usize, prot: libc::c_int, offset: usize| {
            Mapping::new(len, prot, libc::MAP_SHARED, fd.as_raw_fd(), offset)
                .map_err(|e| format!("mapping the BPF ring buffer: {e}"))
        };
        let consumer = mapping(page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = mapping(page + 2 * bytes as usize, libc::PROT_READ, page)?;
        Ok(Ring {
            fd,
            consumer,
            producer,
            page,
            mask: u64::from(bytes) - 1,
        })
    }

    /// Hands every committed record to `f`, oldest first, and gives their
    /// room back to the kernel.
    pub(crate) fn drain(&mut self, f: &mut dyn FnMut(&[u8])) {
        // SAFETY: both positions are 8-byte aligned words at the start of
        // their pages, which stay mapped while `self` lives; the kernel and
        // we access them atomically (it with smp_load_acquire and
        // smp_store_release).
        let (consumer, producer) = unsafe {
            (
                &*self.consumer.ptr.as_ptr().cast::<AtomicU64>(),
                &*self.producer.ptr.as_ptr().cast::<AtomicU64>(),
            )
        };
        // SAFETY: the data pages follow the producer page in its mapping.
        let data = unsafe { self.producer.ptr.as_ptr().add(self.page) };
        let mut at = consumer.load(Ordering::Acquire);
        loop {
            let end = producer.load(Ordering::Acquire);
            if at >= end {
                return;
            }
            while at < end {
                let off = (at & self.mask) as usize;
                // SAFETY: `off` is below the ring's size and 8-aligned (the
                // kernel keeps records 8-aligned), so the header is inside
                // the first copy of the data pages.
                let len = unsafe { &*data.add(off).cast::<AtomicU32>() }.load(Ordering::Acquire);
                if len & BUSY != 0 {
                    // Reserved, not yet written: the next drain reads it.
                    return;
                }
                let n = len & !(BUSY | DISCARD);
                if len & DISCARD == 0 {
                    // SAFETY: a committed record of `n` bytes follows its
                    // header; the data is mapped twice in a row, so a
                    // record that wraps is contiguous here; the kernel does
                    // not write it again until we move the consumer
                    // position past it, which we do only after `f`.
                    let record = unsafe {
                        std::slice::from_raw_parts(data.add(off + HDR as usize), n as usize)
                    };
                    f(record);
                }
                at += (u64::from(n) + HDR + 7) & !7;
                consumer.store(at, Ordering::Release);
            }
        }
    }
}

/// The filter loaded: attached while recording, its records read with
/// [`StateFilter::drain`].
pub struct StateFilter {
    ring: Ring,
    thread_size: u64,
    lost: OwnedFd,
    prog: OwnedFd,
    link: Option<OwnedFd>,
}

impl StateFilter {
    /// Reads this kernel's offsets from its BTF, creates the maps, loads
    /// the program and sees that it attaches (it is left detached). `Err`
    /// says why this kernel or this process cannot (the caller falls back
    /// to the tracefs event).
    pub fn load() -> Result<StateFilter, String> {
        StateFilter::load_sized(RING_BYTES)
    }

    /// [`StateFilter::load`] with a ring of `ring_bytes` (a power of two,
    /// whole pages).
    fn load_sized(ring_bytes: u32) -> Result<StateFilter, String> {
        if !cfg!(target_arch = "x86_64") {
            return Err("its test for interrupt context knows x86-64's stacks only".to_string());
        }
        let offsets = with_kernel_btf(SockOffsets::from_btf)?;
        let ring = Ring::new(ring_bytes)?;
        let lost = map(MAP_TYPE_ARRAY, 4, 8, 1, "timewait_lost")?;
        let insns: Vec<u8> = state_program(&offsets, ring.fd.as_raw_fd(), lost.as_raw_fd())
            .iter()
            .flat_map(|i| i.bytes())
            .collect();
        let prog = load(&insns, "timewait_state")?;
        // Attached once and let go: a kernel that loads the program but
        // will not attach it is known now, while the caller can still fall
        // back, not when recording starts.
        drop(attach(&prog, TRACEPOINT)?);
        Ok(StateFilter {
            ring,
            thread_size: offsets.thread_size,
            lost,
            prog,
            link: None,
        })
    }

    /// Starts (or resumes) filtering.
    pub fn attach(&mut self) -> Result<(), String> {
        if self.link.is_none() {
            self.link = Some(attach(&self.prog, TRACEPOINT)?);
        }
        Ok(())
    }

    /// Stops filtering (what is in the ring stays to be read).
    pub fn detach(&mut self) {
        self.link = None;
    }

    /// Whether it is attached.
    pub fn attached(&self) -> bool {
        self.link.is_some()
    }

    /// Every record written so far, decoded (`None`: one that did not
    /// decode), to `f`.
    pub fn drain(&mut self, f: &mut dyn FnMut(Option<Timed>)) {
        let thread_size = self.thread_size;
        self.ring.drain(&mut |r| f(decode(r, thread_size)));
    }

    /// Records the ring had no room for.
    pub fn lost(&self) -> Result<u64, String> {
        let mut value = [0u8; 8];
        lookup(&self.lost, &0u32.to_ne_bytes(), &mut value)
            .map_err(|e| format!("reading the BPF filter's lost count: {}", e.desc()))?;
        Ok(u64::from_ne_bytes(value))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    use super::*;
    use crate::scratch::ScratchNetns;

    /// A ring of one page (39 records), not read while 200 connections
    /// open and close in a namespace of the test's: what the ring had no
    /// room for is counted, and what it kept is read back whole.
    #[test]
    fn records_the_ring_has_no_room_for_are_counted_not_dropped_silently() {
        if std::env::var_os("TIMEWAIT_SKIP_KERNEL_TESTS").is_some() {
            return;
        }
        let ns = ScratchNetns::create().expect("kernel tests need root");
        let mut filter = StateFilter::load_sized(4096).expect("loads");
        filter.attach().expect("attaches");
        const N: u64 = 200;
        let done = ns
            .spawn(|| {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                for _ in 0..N {
                    let client = TcpStream::connect(addr).unwrap();
                    let (mut server, _) = listener.accept().unwrap();
                    // The client closes first; the server reads its FIN.
                    drop(client);
                    let _ = server.read(&mut [0u8; 1]);
                }
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(done.is_some());
        filter.detach();
        let (mut kept, mut undecoded) = (0u64, 0u64);
        filter.drain(&mut |t| match t {
            Some(_) => kept += 1,
            None => undecoded += 1,
        });
        let lost = filter.lost().unwrap();
        assert_eq!(undecoded, 0);
        assert!((1..=4096 / 104).contains(&kept), "{kept} kept");
        // Three kept changes per connection (its connect, its first close,
        // the server's CLOSE_WAIT): each one stored or counted (the rest of
        // the host can only add).
        assert!(kept + lost >= 3 * N, "{kept} kept + {lost} lost");
        assert!(lost > 0);
    }
}
