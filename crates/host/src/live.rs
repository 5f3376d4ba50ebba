//! The live TIME_WAIT count ([`timewait_trace::tw`]) on the host: its maps,
//! its two programs attached to `timer_start` and `timer_cancel`, the
//! seeding dump, and reading the counts.
//!
//! Reading costs one map walk (two `bpf(2)` calls per key: a key per
//! destination and per service port), whatever the number of sockets.
//! The programs and maps are file descriptors: dropping the count detaches
//! everything, and a process killed outright leaves nothing behind.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use timewait_kernel::TcpState;
use timewait_kernel::inet_diag::{self, state_mask};
use timewait_model::ports::PortRange;
use timewait_trace::btf::Btf;
use timewait_trace::tw::{
    self, CONTROL_LEN, COUNTERS, COUNTING, FLAGS, INFLIGHT, KEY_LEN, LISTENING_WORDS, Listening,
    RECORD_LEN, RING_LOST, Seed, TwKey, TwMaps, TwOffsets, TwParams, TwSocket, UNCOUNTED, WINDOW,
};

use crate::bpf::{self, MAP_TYPE_ARRAY, MAP_TYPE_HASH, Ring};
use crate::decode::{self, dump_both_families};
use crate::source::{Live, Source};
use crate::{Target, in_namespace};

/// Keys the count map holds: destinations and service ports together.
/// A change it has no room for is counted ([`LiveTimeWait::read`] then
/// fails), never lost silently.
const MAX_KEYS: u32 = 16_384;
/// The seeding log: 4 MiB holds 75,000 changes (48 bytes and an 8-byte
/// header each), a second of 37,000 connections/s made and expiring
/// while the dump runs.
const RING_BYTES: u32 = 4 << 20;
/// How long the seeding waits for programs still between their window
/// check and their log (microseconds each: the bound is for a stuck CPU).
const SETTLE: Duration = Duration::from_secs(1);

/// A live count of one namespace's TIME_WAIT minisockets.
pub struct LiveTimeWait {
    counts: OwnedFd,
    control: OwnedFd,
    baseline: HashMap<TwKey, i64>,
    range: PortRange,
    listening: Vec<u16>,
    // Held for their lifetime: closing the links detaches the programs.
    _links: Vec<OwnedFd>,
    _programs: Vec<OwnedFd>,
    _listening_map: OwnedFd,
    _ring: Ring,
}

/// The counts at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveCounts {
    /// Minisockets by key (keys at zero left out).
    pub by_key: Vec<(TwKey, u64)>,
}

/// Where a kernel function is (`/proc/kallsyms`, which shows addresses to
/// root unless `kptr_restrict` is 2).
fn kernel_symbol(name: &str) -> Result<u64, String> {
    let text = std::fs::read_to_string("/proc/kallsyms")
        .map_err(|e| format!("reading /proc/kallsyms: {e}"))?;
    let addr = text
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (addr, _kind, sym) = (f.next()?, f.next()?, f.next()?);
            (sym == name).then(|| u64::from_str_radix(addr, 16).ok())?
        })
        .ok_or_else(|| format!("/proc/kallsyms has no {name}"))?;
    if addr == 0 {
        return Err(format!(
            "/proc/kallsyms hides {name}'s address (kernel.kptr_restrict, or not root)"
        ));
    }
    Ok(addr)
}

fn counter(control: &OwnedFd, at: usize) -> Result<u64, String> {
    let mut v = [0u8; CONTROL_LEN];
    bpf::lookup(control, &COUNTERS.to_ne_bytes(), &mut v)
        .map_err(|e| format!("reading the TIME_WAIT count's control map: {}", e.desc()))?;
    let mut word = [0u8; 8];
    word.copy_from_slice(&v[at..at + 8]);
    Ok(u64::from_ne_bytes(word))
}

/// Sets the flags (one entry of their own: the programs' counters are
/// never written here).
fn set_flags(control: &OwnedFd, flags: u64) -> Result<(), String> {
    let mut v = [0u8; CONTROL_LEN];
    v[..8].copy_from_slice(&flags.to_ne_bytes());
    bpf::update(control, &FLAGS.to_ne_bytes(), &v)
        .map_err(|e| format!("setting the TIME_WAIT count's flags: {}", e.desc()))
}

/// The range and the listening ports, read in the target namespace.
fn range_of(source: &dyn Source) -> Result<PortRange, String> {
    let path = "/proc/sys/net/ipv4/ip_local_port_range";
    let text = source
        .file(path)
        .map_err(|e| format!("reading {path}: {e}"))?;
    String::from_utf8_lossy(&text)
        .parse::<PortRange>()
        .map_err(|e| format!("{path}: {e}"))
}

/// A dumped socket as the programs see it.
fn minisocket(m: &inet_diag::InetDiagMsg) -> TwSocket {
    TwSocket {
        local: (m.src, m.src_port),
        remote: (m.dst, m.dst_port),
    }
}

impl LiveTimeWait {
    /// Attaches the programs to count `target`'s minisockets, and counts
    /// those already there. `Err` says why this kernel or this process
    /// cannot (the caller keeps to dumps).
    pub fn start(target: &Target) -> Result<LiveTimeWait, String> {
        let handler = kernel_symbol("tw_timer_handler")?;
        let blob =
            std::fs::read(bpf::BTF_PATH).map_err(|e| format!("reading {}: {e}", bpf::BTF_PATH))?;
        let btf = Btf::parse(&blob).map_err(|e| format!("{}: {e}", bpf::BTF_PATH))?;
        let offsets = TwOffsets::from_btf(&btf)?;
        drop((blob, btf));
        let netns = target.netns_inode().map_err(|e| e.to_string())?;
        let netns = u32::try_from(netns).map_err(|_| "a namespace inode above 2^32".to_string())?;
        let (range, listening) = in_namespace(target, || {
            let range = range_of(&Live)?;
            let mut listening = decode::listening(&Live).map_err(|e| e.to_string())?;
            listening.sort_unstable();
            listening.dedup();
            Ok::<_, String>((range, listening))
        })
        .map_err(|e| e.to_string())??;

        let counts = bpf::map(MAP_TYPE_HASH, KEY_LEN as u32, 8, MAX_KEYS, "timewait_tw")?;
        let control = bpf::map(MAP_TYPE_ARRAY, 4, CONTROL_LEN as u32, 2, "timewait_twctl")?;
        let listening_map = bpf::map(MAP_TYPE_ARRAY, 4, 4, LISTENING_WORDS, "timewait_twlst")?;
        let bitmap = Listening::of(listening.iter().copied());
        for (i, w) in bitmap.words().iter().enumerate().filter(|(_, w)| **w != 0) {
            bpf::update(&listening_map, &(i as u32).to_ne_bytes(), &w.to_ne_bytes())
                .map_err(|e| format!("filling the listening-port map: {}", e.desc()))?;
        }
        let mut ring = Ring::new(RING_BYTES)?;
        let params = TwParams {
            handler,
            netns,
            range: (range.low, range.high),
        };
        let maps = TwMaps {
            counts: counts.as_raw_fd(),
            listening: listening_map.as_raw_fd(),
            control: control.as_raw_fd(),
            ring: ring.fd.as_raw_fd(),
        };
        let mut programs = Vec::new();
        let mut links = Vec::new();
        for (tracepoint, delta) in [("timer_start", 1), ("timer_cancel", -1)] {
            let insns: Vec<u8> = tw::tw_program(&offsets, &params, &maps, delta)
                .iter()
                .flat_map(|i| i.bytes())
                .collect();
            let prog = bpf::load(&insns, "timewait_tw")?;
            links.push(bpf::attach(&prog, tracepoint)?);
            programs.push(prog);
        }
        // Both attached, idle: counting and logging begin together.
        set_flags(&control, COUNTING | WINDOW)?;

        // Every minisocket there now, while the programs log each change.
        let mut seed = Seed::new();
        let mut bad = 0u64;
        let states = state_mask(&[TcpState::TimeWait, TcpState::FinWait2]);
        let listening_after = in_namespace(target, || {
            dump_both_families(&Live, states, |payload| match inet_diag::decode(payload) {
                Ok((m, _)) if m.is_timewait_sock() => {
                    let s = minisocket(&m);
                    seed.dumped(&s, tw::classify(&s, params.range, &bitmap));
                }
                Ok(_) => {}
                Err(_) => bad += 1,
            })
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        set_flags(&control, COUNTING)?;
        let deadline = Instant::now() + SETTLE;
        loop {
            let n = counter(&control, INFLIGHT)?;
            if n == 0 {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "a TIME_WAIT count program did not finish its log ({n} in flight)"
                ));
            }
            std::thread::yield_now();
        }
        let mut window = Vec::new();
        ring.drain(&mut |r| {
            if r.len() >= RECORD_LEN
                && let Some((s, delta)) = tw::decode_record(r)
            {
                window.push((s, delta, tw::classify(&s, params.range, &bitmap)));
            }
        });
        if counter(&control, RING_LOST)? > 0 {
            return Err(
                "the seeding log overflowed: too many TIME_WAIT changes during the dump".into(),
            );
        }
        if bad > 0 {
            return Err(format!("{bad} sock_diag answers did not decode"));
        }
        let mut after = listening_after;
        after.sort_unstable();
        after.dedup();
        if after != listening {
            return Err("the listening ports changed during the seeding dump".into());
        }
        Ok(LiveTimeWait {
            counts,
            control,
            baseline: seed.finish(window),
            range,
            listening,
            _links: links,
            _programs: programs,
            _listening_map: listening_map,
            _ring: ring,
        })
    }

    /// The ephemeral range and the listening ports the count classifies
    /// by: when the namespace's differ, the count must be started again.
    pub fn classified_by(&self) -> (PortRange, &[u16]) {
        (self.range, &self.listening)
    }

    /// Times a program could not run because it was already running on
    /// that CPU (an interrupt's timer change inside a task's): the kernel
    /// skips such a nested run and counts it (`recursion_misses`).
    fn missed(&self) -> Result<u64, String> {
        let mut n = 0;
        for p in &self._programs {
            let path = format!("/proc/self/fdinfo/{}", p.as_raw_fd());
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
            n += text
                .lines()
                .find_map(|l| l.strip_prefix("recursion_misses:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| format!("{path} has no recursion_misses"))?;
        }
        Ok(n)
    }

    /// The counts now. `Err` when they are no longer whole: the map was
    /// full at some change, the kernel skipped a nested run, or a count
    /// went below zero.
    pub fn read(&self) -> Result<LiveCounts, String> {
        let uncounted = counter(&self.control, UNCOUNTED)?;
        if uncounted > 0 {
            return Err(format!(
                "{uncounted} TIME_WAIT changes found the count map full ({MAX_KEYS} keys)"
            ));
        }
        let missed = self.missed()?;
        if missed > 0 {
            return Err(format!(
                "{missed} timer changes went unseen (a program's run nested in its own)"
            ));
        }
        let mut totals = self.baseline.clone();
        let mut key = [0u8; KEY_LEN];
        let mut prev: Option<[u8; KEY_LEN]> = None;
        loop {
            let more = bpf::next_key(&self.counts, prev.as_ref().map(|k| &k[..]), &mut key)
                .map_err(|e| format!("walking the TIME_WAIT count map: {}", e.desc()))?;
            if !more {
                break;
            }
            let mut value = [0u8; 8];
            match bpf::lookup(&self.counts, &key, &mut value) {
                Ok(()) => {}
                // Keys are never deleted; a missing one would be a bug.
                Err(e) => return Err(format!("reading the TIME_WAIT count map: {}", e.desc())),
            }
            let k = tw::decode_key(&key).ok_or("a key no program writes")?;
            *totals.entry(k).or_default() += i64::from_ne_bytes(value);
            prev = Some(key);
        }
        let mut by_key = Vec::with_capacity(totals.len());
        for (k, n) in totals {
            match u64::try_from(n) {
                Ok(0) => {}
                Ok(n) => by_key.push((k, n)),
                Err(_) => {
                    return Err(format!(
                        "the TIME_WAIT count for {k:?} went below zero ({n})"
                    ));
                }
            }
        }
        by_key.sort_unstable();
        Ok(LiveCounts { by_key })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use timewait_trace::tw::TwGroup;

    use super::*;
    use crate::Via;
    use crate::scratch::ScratchNetns;

    /// One connection: the client closes first (a TIME_WAIT on its
    /// ephemeral port) or the server does (one on the service port).
    fn connection(to: SocketAddr, listener: &TcpListener, client_first: bool) -> bool {
        let Ok(client) = TcpStream::connect(to) else {
            // EADDRNOTAVAIL in the narrow range: the reuse delay not yet up.
            return false;
        };
        let (server, _) = listener.accept().unwrap();
        let (first, mut second) = if client_first {
            (client, server)
        } else {
            (server, client)
        };
        drop(first);
        // The FIN read: the second close makes the first end TIME_WAIT.
        let _ = second.read(&mut [0u8; 1]);
        true
    }

    /// TIME_WAIT on both sides of two services (one on a port inside the
    /// ephemeral range, listening), then connections made and closed all
    /// through the seeding and after it, in a 50-port range with
    /// `tcp_tw_reuse` killing TIME_WAIT sockets a millisecond old: once
    /// all is quiet, the live count is the dump's, key by key.
    #[test]
    fn the_live_count_is_the_dumps_through_churn_and_reuse_kills() {
        if std::env::var_os("TIMEWAIT_SKIP_KERNEL_TESTS").is_some() {
            return;
        }
        let ns = ScratchNetns::create().expect("kernel tests need root");
        ns.sysctl("net.ipv4.ip_local_port_range", "40000 40049")
            .unwrap();
        ns.sysctl("net.ipv4.tcp_tw_reuse", "1").unwrap();
        ns.sysctl("net.ipv4.tcp_tw_reuse_delay", "1").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let made = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        // The listeners outlive the churn: the dump at the end must see
        // the service ports the count was classified by.
        let listeners = ns
            .spawn(|| {
                let outside = TcpListener::bind("127.0.0.1:8080").unwrap();
                let inside = TcpListener::bind("127.0.0.1:40020").unwrap();
                (Arc::new(outside), Arc::new(inside))
            })
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        let churn = {
            let (stop, made) = (stop.clone(), made.clone());
            let (outside, inside) = listeners.clone();
            ns.spawn(move || {
                let (a, b) = (outside.local_addr().unwrap(), inside.local_addr().unwrap());
                for i in 0..30 {
                    connection(a, &outside, i % 3 != 0);
                    connection(b, &inside, i % 2 == 0);
                }
                ready_tx.send(()).unwrap();
                // Bounded: 20,000 connections at most.
                for i in 0..20_000u32 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (to, l) = if i % 4 == 0 {
                        (b, &inside)
                    } else {
                        (a, &outside)
                    };
                    if connection(to, l, i % 5 != 0) {
                        made.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .unwrap()
        };
        ready_rx.recv().unwrap();
        let before = made.load(Ordering::Relaxed);
        let live = LiveTimeWait::start(&ns.target()).expect("the live count starts");
        let during = made.load(Ordering::Relaxed) - before;
        // The map's own changes: connections after the seeding.
        let seeded = made.load(Ordering::Relaxed);
        while made.load(Ordering::Relaxed) < seeded + 300 && !churn.is_finished() {
            std::thread::yield_now();
        }
        stop.store(true, Ordering::Relaxed);
        assert!(churn.join().unwrap().is_some());
        assert!(during > 0, "no connection was made while the seeding ran");

        let counts = live.read().expect("whole counts");
        let census = crate::collect(&ns.target(), Via::Netlink, false)
            .unwrap()
            .census;
        let mut clients = HashMap::new();
        let mut servers = HashMap::new();
        for (k, n) in &counts.by_key {
            match k.group {
                TwGroup::Client { remote, .. } => {
                    *clients.entry((k.local, remote.0, remote.1)).or_insert(0) += n
                }
                TwGroup::Server { port } => *servers.entry(port).or_insert(0) += n,
            }
        }
        let want_clients: HashMap<_, _> = census
            .destinations
            .iter()
            .filter(|d| d.time_wait > 0)
            .map(|d| ((d.local_ip, d.remote_ip, d.remote_port), d.time_wait))
            .collect();
        let want_servers: HashMap<_, _> = census
            .server_side
            .iter()
            .filter(|s| s.time_wait > 0)
            .map(|s| (s.local_port, s.time_wait))
            .collect();
        assert_eq!(census.states.get("FIN_WAIT2"), None, "{census:?}");
        assert_eq!(clients, want_clients);
        assert_eq!(servers, want_servers);
        // Both classes, both services.
        assert_eq!(clients.len(), 2, "{clients:?}");
        assert!(!servers.is_empty());
        let total: u64 = counts.by_key.iter().map(|(_, n)| n).sum();
        assert_eq!(Some(&total), census.states.get("TIME_WAIT"));
        // Reuse (a client's, or a SYN met by the server's TIME_WAIT)
        // killed TIME_WAIT sockets while they were counted: far more were
        // made than are left.
        let made = made.load(Ordering::Relaxed);
        assert!(made >= seeded + 300, "{made} connections");
        assert!(total + 200 < made, "{total} left of {made}");
        drop(listeners);
    }
}
