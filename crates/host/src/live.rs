//! The live count of sockets ([`timewait_trace::live`]) on the host: its
//! maps, its programs attached to `inet_sock_set_state`, `timer_start` and
//! `timer_cancel`, the seeding dump, and reading the counts.
//!
//! Reading costs one map walk (two `bpf(2)` calls per key: a key per
//! state of each destination and service port), whatever the number of
//! sockets.
//! The programs and maps are file descriptors: dropping the count detaches
//! everything, and a process killed outright leaves nothing behind.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use timewait_kernel::TcpState;
use timewait_kernel::inet_diag::{self, state_mask};
use timewait_model::ports::PortRange;
use timewait_snapshot::Census;
use timewait_snapshot::aggregate::{Aggregator, Counted, Side, SocketView};
use timewait_snapshot::snapshot::{Cause, CensusSource, Problem, Snapshot};
use timewait_trace::live::{
    self, CONTROL_LEN, COUNTED, COUNTERS, COUNTING, COVERED, FLAGS, Group, INFLIGHT, KEY_LEN,
    LISTENING_WORDS, Listening, LiveKey, LiveMaps, LiveParams, RING_LOST, Role, Seed, StateOffsets,
    Tuple, TwOffsets, UNCOUNTED, WINDOW,
};

use crate::bpf::{self, MAP_TYPE_ARRAY, MAP_TYPE_HASH, MAP_TYPE_PERCPU_ARRAY, Ring};
use crate::decode::{self, dump_both_families};
use crate::source::{Live, Source};
use crate::{HostError, Target, in_namespace};

/// Keys the count map holds: the states of destinations and service
/// ports together.
/// A change it has no room for is counted ([`LiveCensus::read`] then
/// fails), never lost silently.
const MAX_KEYS: u32 = 16_384;
/// The seeding log: 2 MiB holds 32,000 changes (56 bytes and an 8-byte
/// header each), read after every dumped socket. What it must hold is what
/// happens while the kernel walks the host-wide tables between two of our
/// sockets (the whole walk, for a namespace of few sockets on a busy
/// host): about 3,000 loopback connections opened and closed (five state
/// changes and a TIME_WAIT at each end). A log that overflows anyway
/// makes the start begin again.
const RING_BYTES: u32 = 2 << 20;
/// How long the seeding waits for programs still between their window
/// check and their log (microseconds each: the bound is for a stuck CPU).
const SETTLE: Duration = Duration::from_secs(1);

/// A live count of one namespace's connections and TIME_WAIT minisockets.
pub struct LiveCensus {
    counts: OwnedFd,
    max_keys: u32,
    control: OwnedFd,
    baseline: HashMap<LiveKey, i64>,
    range: PortRange,
    listening: Vec<u16>,
    // Held for their lifetime: closing the links detaches the programs.
    _links: Vec<OwnedFd>,
    programs: Vec<OwnedFd>,
    _listening_map: OwnedFd,
    _taken: OwnedFd,
}

/// The counts at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveCounts {
    /// Sockets by key (keys at zero left out).
    pub by_key: Vec<(LiveKey, u64)>,
}

/// Where a kernel function is (`/proc/kallsyms`, which shows addresses to
/// root unless `kptr_restrict` is 2).
fn kernel_symbol(name: &str) -> Result<u64, String> {
    use std::io::BufRead;
    // Megabytes of text: read a line at a time.
    let file = std::fs::File::open("/proc/kallsyms")
        .map_err(|e| format!("reading /proc/kallsyms: {e}"))?;
    let mut found = None;
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(|e| format!("reading /proc/kallsyms: {e}"))?;
        let mut f = line.split_whitespace();
        if let (Some(addr), Some(_kind), Some(sym)) = (f.next(), f.next(), f.next())
            && sym == name
        {
            found = u64::from_str_radix(addr, 16).ok();
            break;
        }
    }
    match found {
        None => Err(format!("/proc/kallsyms has no {name}")),
        Some(0) => Err(format!(
            "/proc/kallsyms hides {name}'s address (kernel.kptr_restrict, or not root)"
        )),
        Some(addr) => Ok(addr),
    }
}

/// The programs' counters, read in one lookup; indexed by their byte
/// offsets ([`INFLIGHT`], [`UNCOUNTED`], …).
struct Counters([u8; CONTROL_LEN]);

impl Counters {
    fn read(control: &OwnedFd) -> Result<Counters, String> {
        let mut v = [0u8; CONTROL_LEN];
        bpf::lookup(control, &COUNTERS.to_ne_bytes(), &mut v)
            .map_err(|e| format!("reading the live count's control map: {}", e.desc()))?;
        Ok(Counters(v))
    }

    fn at(&self, at: usize) -> u64 {
        let mut word = [0u8; 8];
        word.copy_from_slice(&self.0[at..at + 8]);
        u64::from_ne_bytes(word)
    }
}

/// Sets the flags (one entry of their own: the programs' counters are
/// never written here).
fn set_flags(control: &OwnedFd, flags: u64) -> Result<(), String> {
    let mut v = [0u8; CONTROL_LEN];
    v[..8].copy_from_slice(&flags.to_ne_bytes());
    bpf::update(control, &FLAGS.to_ne_bytes(), &v)
        .map_err(|e| format!("setting the live count's flags: {}", e.desc()))
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

/// A dumped socket as the programs see it, and the state it is counted
/// in (`None`: one no count holds).
///
/// A local port of 0 is a socket the dump met while it closed: the dump
/// fills its answer after letting go of the hash chain's lock, and
/// `tcp_set_state()` gives the port back (`inet_put_port` zeroes
/// `skc_num`, what the answer reports) before it stores CLOSE, so the
/// answer holds the old state and no port. Its change to CLOSE comes after
/// the dump took it, so after counting began: the count has it, and the
/// log too (the tracepoint follows `inet_put_port` by a few instructions;
/// the window closes only after the whole dump).
fn counted(m: &inet_diag::InetDiagMsg) -> Option<(Tuple, TcpState)> {
    if m.src_port == 0 {
        return None;
    }
    let state = if m.is_timewait_sock() {
        TcpState::TimeWait
    } else {
        m.state().filter(|s| COUNTED.contains(s))?
    };
    let t = Tuple {
        local: (m.src, m.src_port),
        remote: (m.dst, m.dst_port),
    };
    Some((t, state))
}

/// What the programs are built from: where this kernel keeps what they
/// read (its BTF, read once) and its TIME_WAIT timers' handler.
#[derive(Debug, Clone, Copy)]
pub struct LiveKernel {
    handler: u64,
    tw_offsets: TwOffsets,
    sock_offsets: StateOffsets,
}

impl LiveKernel {
    /// Reads them; `Err` says what this kernel or this process lacks.
    pub fn read() -> Result<LiveKernel, String> {
        let handler = kernel_symbol("tw_timer_handler")?;
        let (tw_offsets, sock_offsets) = bpf::with_kernel_btf(|btf| {
            Ok((TwOffsets::from_btf(btf)?, StateOffsets::from_btf(btf)?))
        })?;
        Ok(LiveKernel {
            handler,
            tw_offsets,
            sock_offsets,
        })
    }
}

impl LiveCensus {
    /// Attaches the programs to count `target`'s sockets, and counts those
    /// already there. `Err` says why this kernel or this process cannot
    /// (the caller keeps to dumps).
    pub fn start(target: &Target) -> Result<LiveCensus, String> {
        LiveCensus::start_on(target, &LiveKernel::read()?)
    }

    /// [`LiveCensus::start`] with the kernel's facts read before.
    pub fn start_on(target: &Target, kernel: &LiveKernel) -> Result<LiveCensus, String> {
        LiveCensus::start_sized(target, kernel, MAX_KEYS)
    }

    /// [`LiveCensus::start_on`] with a count map of `max_keys` keys. A
    /// listener that comes or goes while the seeding dump runs (a service
    /// starting beside the exporter) leaves keys classified by the wrong
    /// ports, and a seeding log that overflowed leaves changes unknown:
    /// either way the count is started again, a few times at most.
    fn start_sized(
        target: &Target,
        kernel: &LiveKernel,
        max_keys: u32,
    ) -> Result<LiveCensus, String> {
        for _ in 0..5 {
            if let Some(live) = LiveCensus::attempt(target, kernel, max_keys)? {
                return Ok(live);
            }
        }
        Err("the listening ports kept changing, or the seeding log kept overflowing, during the seeding dump".into())
    }

    /// One start; `None` when the listening ports changed while it ran,
    /// or its log had no room for some change.
    fn attempt(
        target: &Target,
        kernel: &LiveKernel,
        max_keys: u32,
    ) -> Result<Option<LiveCensus>, String> {
        let LiveKernel {
            handler,
            tw_offsets,
            sock_offsets,
        } = *kernel;
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

        let counts = bpf::map(MAP_TYPE_HASH, KEY_LEN as u32, 8, max_keys, "timewait_live")?;
        let control = bpf::map(MAP_TYPE_ARRAY, 4, CONTROL_LEN as u32, 2, "timewait_lvctl")?;
        let listening_map = bpf::map(MAP_TYPE_ARRAY, 4, 4, LISTENING_WORDS, "timewait_lvlst")?;
        let bitmap = Listening::of(listening.iter().copied());
        for (i, w) in bitmap.words().iter().enumerate().filter(|(_, w)| **w != 0) {
            bpf::update(&listening_map, &(i as u32).to_ne_bytes(), &w.to_ne_bytes())
                .map_err(|e| format!("filling the listening-port map: {}", e.desc()))?;
        }
        let mut ring = Ring::new(RING_BYTES)?;
        let taken = bpf::map(MAP_TYPE_PERCPU_ARRAY, 4, 8, 2, "timewait_lvtkn")?;
        let params = LiveParams {
            handler,
            netns,
            range: (range.low, range.high),
        };
        let maps = LiveMaps {
            counts: counts.as_raw_fd(),
            listening: listening_map.as_raw_fd(),
            control: control.as_raw_fd(),
            ring: ring.fd.as_raw_fd(),
            taken: taken.as_raw_fd(),
        };
        let mut programs = Vec::new();
        let mut links = Vec::new();
        for (tracepoint, insns) in [
            (
                "timer_start",
                live::tw_program(&tw_offsets, &params, &maps, 1),
            ),
            (
                "timer_cancel",
                live::tw_program(&tw_offsets, &params, &maps, -1),
            ),
            // The primary first: a tracepoint runs its programs in the
            // order they were attached.
            (
                "inet_sock_set_state",
                live::state_program(&sock_offsets, &params, &maps, Role::Primary),
            ),
            (
                "inet_sock_set_state",
                live::state_program(&sock_offsets, &params, &maps, Role::Cover),
            ),
        ] {
            let bytes: Vec<u8> = insns.iter().flat_map(|i| i.bytes()).collect();
            let prog = bpf::load(&bytes, "timewait_live")?;
            links.push(bpf::attach(&prog, tracepoint)?);
            programs.push(prog);
        }
        // All attached, idle: counting and logging begin together.
        set_flags(&control, COUNTING | WINDOW)?;

        // Every socket there now, while the programs log each change.
        let key = |t: &Tuple, s: TcpState| live::classify(t, s, params.range, &bitmap);
        let mut seed = Seed::new();
        let mut bad = 0u64;
        let mut full = None;
        let mut states: Vec<TcpState> = COUNTED.to_vec();
        states.push(TcpState::TimeWait);
        let mut window = Vec::new();
        let mut undecoded = 0u64;
        let mut log = |ring: &mut Ring| {
            ring.drain(&mut |r| match live::decode_record(r) {
                Some(c) => window.push(c),
                None => undecoded += 1,
            })
        };
        let listening_after = in_namespace(target, || {
            dump_both_families(&Live, state_mask(&states), |payload| {
                match inet_diag::decode(payload) {
                    Ok((m, _)) => {
                        if let Some((t, s)) = counted(&m)
                            && let Err(e) = seed.dumped(&t, key(&t, s))
                        {
                            full = Some(e);
                        }
                    }
                    Err(_) => bad += 1,
                }
                // Two atomic loads when there is nothing to read.
                log(&mut ring);
            })
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        if let Some(e) = full {
            return Err(e);
        }
        set_flags(&control, COUNTING)?;
        let deadline = Instant::now() + SETTLE;
        loop {
            let n = Counters::read(&control)?.at(INFLIGHT);
            if n == 0 {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "a live count program did not finish its log ({n} in flight)"
                ));
            }
            std::thread::yield_now();
        }
        log(&mut ring);
        if undecoded > 0 {
            return Err(format!("{undecoded} seeding records did not decode"));
        }
        // Read only while seeding: its mapping (twice its size in this
        // process's memory: the ring is mapped twice) goes; the programs
        // hold the map itself.
        drop(ring);
        if Counters::read(&control)?.at(RING_LOST) > 0 {
            return Ok(None);
        }
        if bad > 0 {
            return Err(format!("{bad} sock_diag answers did not decode"));
        }
        let mut after = listening_after;
        after.sort_unstable();
        after.dedup();
        if after != listening {
            return Ok(None);
        }
        let baseline = seed.finish(&window, key);
        Ok(Some(LiveCensus {
            counts,
            max_keys,
            control,
            baseline,
            range,
            listening,
            _links: links,
            programs,
            _listening_map: listening_map,
            _taken: taken,
        }))
    }

    /// The ephemeral range and the listening ports the count classifies
    /// by: when the namespace's differ, the count must be started again.
    pub fn classified_by(&self) -> (PortRange, &[u16]) {
        (self.range, &self.listening)
    }

    /// Times a program could not run because it was already running on
    /// that CPU (an interrupt's timer change inside a task's): the kernel
    /// skips such a nested run and counts it (`recursion_misses`).
    ///
    /// The timer programs never nest (the timer wheel runs them under its
    /// lock, interrupts off); the primary state program's misses must all
    /// be the cover's ([`timewait_trace::live::Role`]); the cover's own
    /// misses are changes the primary took. Returns the changes no program
    /// counted.
    fn missed(&self, counters: &Counters) -> Result<u64, String> {
        let misses = |p: &OwnedFd| {
            let path = format!("/proc/self/fdinfo/{}", p.as_raw_fd());
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
            text.lines()
                .find_map(|l| l.strip_prefix("recursion_misses:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| format!("{path} has no recursion_misses"))
        };
        let [start, cancel, primary, _cover] = &self.programs[..] else {
            return Err("the live count lost a program".into());
        };
        let covered = counters.at(COVERED);
        Ok(misses(start)? + misses(cancel)? + misses(primary)?.saturating_sub(covered))
    }

    /// The counts now. `Err` when they are no longer whole: the map was
    /// full at some change, the kernel skipped a nested run, or a count
    /// went below zero.
    pub fn read(&self) -> Result<LiveCounts, String> {
        let counters = Counters::read(&self.control)?;
        let uncounted = counters.at(UNCOUNTED);
        if uncounted > 0 {
            return Err(format!(
                "{uncounted} changes found the count map full ({} keys)",
                self.max_keys
            ));
        }
        let missed = self.missed(&counters)?;
        if missed > 0 {
            return Err(format!(
                "{missed} changes went uncounted (a program's run nested in its own, not covered)"
            ));
        }
        let mut totals = self.baseline.clone();
        let mut key = [0u8; KEY_LEN];
        let mut prev: Option<[u8; KEY_LEN]> = None;
        loop {
            let more = bpf::next_key(&self.counts, prev.as_ref().map(|k| &k[..]), &mut key)
                .map_err(|e| format!("walking the count map: {}", e.desc()))?;
            if !more {
                break;
            }
            let mut value = [0u8; 8];
            match bpf::lookup(&self.counts, &key, &mut value) {
                Ok(()) => {}
                // Keys are never deleted; a missing one would be a bug.
                Err(e) => return Err(format!("reading the count map: {}", e.desc())),
            }
            let k = live::decode_key(&key).ok_or("a key no program writes")?;
            *totals.entry(k).or_default() += i64::from_ne_bytes(value);
            prev = Some(key);
        }
        let mut by_key = Vec::with_capacity(totals.len());
        for (k, n) in totals {
            match u64::try_from(n) {
                Ok(0) => {}
                Ok(n) => by_key.push((k, n)),
                Err(_) => {
                    return Err(format!("the count for {k:?} went below zero ({n})"));
                }
            }
        }
        by_key.sort_unstable();
        Ok(LiveCounts { by_key })
    }
}

/// How long ports held by `bind()` alone are taken from one dump: the
/// kernel answers that dump with a walk of its bind table (tens of ms per
/// 100,000 TIME_WAIT sockets: BENCHMARKS.md), the cost the live count is
/// there to avoid at every scrape. Such ports are rare and short-lived (a
/// socket bound before its connect or listen).
pub const BOUND_REFRESH: Duration = Duration::from_secs(60);

/// A namespace's snapshots with a live census: the count kept across
/// snapshots, started again when what it classifies by changes (the
/// ephemeral range, the listening ports) or when it is no longer whole.
pub struct LiveCollector {
    target: Target,
    kernel: LiveKernel,
    live: Mutex<Option<LiveCensus>>,
    bound: Mutex<Option<(Instant, Vec<u16>)>>,
}

impl LiveCollector {
    /// Starts the count now: `Err` says why it cannot run here.
    pub fn start(target: &Target) -> Result<LiveCollector, String> {
        let kernel = LiveKernel::read()?;
        let live = LiveCensus::start_on(target, &kernel)?;
        Ok(LiveCollector {
            target: target.clone(),
            kernel,
            live: Mutex::new(Some(live)),
            bound: Mutex::new(None),
        })
    }

    /// A snapshot (without the kernel log), its census from the live count.
    pub fn collect(&self) -> Result<Snapshot, HostError> {
        in_namespace(&self.target, || {
            decode::snapshot_with(
                &Live,
                false,
                self.target.label(),
                &mut |source, range, problems| self.census(source, range, problems),
            )
        })?
    }

    fn census(
        &self,
        source: &dyn Source,
        range: PortRange,
        problems: &mut Vec<Problem>,
    ) -> Result<(CensusSource, Census), HostError> {
        let failed = |e: String| HostError::Live(e);
        let listeners = decode::listening(source)?;
        let mut listening = listeners.clone();
        listening.sort_unstable();
        listening.dedup();
        let mut live = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let stale = live
            .as_ref()
            .is_none_or(|l| l.classified_by() != (range, &listening[..]));
        if stale {
            *live = None;
            *live = Some(LiveCensus::start_on(&self.target, &self.kernel).map_err(failed)?);
        }
        let counts = match live.as_ref().map(LiveCensus::read) {
            Some(Ok(c)) => c,
            Some(Err(why)) => {
                problems.push(Problem::new(
                    "live count",
                    Cause::Other,
                    format!("{why}; counted again from a dump"),
                ));
                *live = None;
                let again = LiveCensus::start_on(&self.target, &self.kernel).map_err(failed)?;
                let c = again.read().map_err(failed)?;
                *live = Some(again);
                c
            }
            None => return Err(failed("no live count".into())),
        };
        drop(live);
        let bound = self.bound_ports(source)?;
        let mut agg = Aggregator::new(range, listening.iter().copied());
        let unspecified = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
        let view = |state: TcpState, port: u16| SocketView {
            state: state.kernel(),
            timewait_timer: false,
            expires_ms: 0,
            local: unspecified,
            local_port: port,
            remote: unspecified,
            remote_port: 0,
        };
        for &p in &listeners {
            agg.add(&view(TcpState::Listen, p));
        }
        for &p in &bound {
            agg.add(&view(TcpState::BoundInactive, p));
        }
        for (k, n) in &counts.by_key {
            let side = match k.group {
                Group::Client { remote, in_range } => Side::Client {
                    remote: remote.0,
                    remote_port: remote.1,
                    in_range,
                },
                Group::Server { port } => Side::Server { port },
            };
            agg.add_counted(&Counted {
                state: k.state,
                local: k.local,
                side,
                n: *n,
            });
        }
        problems.push(Problem::new(
            "SYN_RECV sockets",
            Cause::Other,
            "not counted live: a passive open's request sockets have no tracepoint",
        ));
        Ok((CensusSource::Live, agg.finish()))
    }

    /// The ports held by `bind()` alone, dumped at most every
    /// [`BOUND_REFRESH`].
    fn bound_ports(&self, source: &dyn Source) -> Result<Vec<u16>, HostError> {
        let mut bound = self
            .bound
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, ports)) = bound.as_ref()
            && at.elapsed() < BOUND_REFRESH
        {
            return Ok(ports.clone());
        }
        let mut ports = Vec::new();
        dump_both_families(source, state_mask(&[TcpState::BoundInactive]), |payload| {
            if let Ok((m, _)) = inet_diag::decode(payload) {
                ports.push(m.src_port);
            }
        })?;
        *bound = Some((Instant::now(), ports.clone()));
        Ok(ports)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use timewait_snapshot::Census;
    use timewait_trace::live::Group;

    use super::*;
    use crate::Via;
    use crate::scratch::ScratchNetns;

    /// What one connection leaves.
    #[derive(Clone, Copy)]
    enum Ending {
        /// The client closes first: a TIME_WAIT on its ephemeral port.
        ClientFirst,
        /// The server does: one on the service port.
        ServerFirst,
        /// Both ends stay ESTABLISHED.
        Open,
        /// The client shuts down its side: FIN_WAIT2 and CLOSE_WAIT stay.
        HalfClosed,
    }

    /// One connection; the ends kept open, or `None` if connect() failed
    /// (EADDRNOTAVAIL in the narrow range: the reuse delay not yet up).
    fn connection(
        to: SocketAddr,
        listener: &TcpListener,
        ending: Ending,
    ) -> Option<Vec<TcpStream>> {
        let client = TcpStream::connect(to).ok()?;
        let (server, _) = listener.accept().unwrap();
        let (first, mut second) = match ending {
            Ending::ClientFirst => (client, server),
            Ending::ServerFirst => (server, client),
            Ending::Open => return Some(vec![client, server]),
            Ending::HalfClosed => {
                client.shutdown(Shutdown::Write).unwrap();
                let mut server = server;
                let _ = server.read(&mut [0u8; 1]);
                return Some(vec![client, server]);
            }
        };
        drop(first);
        // The FIN read: the second close makes the first end TIME_WAIT.
        let _ = second.read(&mut [0u8; 1]);
        Some(Vec::new())
    }

    /// The live counts folded as the census folds a dump: (TIME_WAIT,
    /// ESTABLISHED, other) per destination and per service port, and
    /// sockets per state.
    type Folded = (
        HashMap<(IpAddr, IpAddr, u16), (u64, u64, u64)>,
        HashMap<u16, (u64, u64)>,
        HashMap<String, u64>,
    );

    fn fold(counts: &LiveCounts) -> Folded {
        let (mut clients, mut servers, mut states) = Folded::default();
        for (k, n) in &counts.by_key {
            *states.entry(k.state.name().to_string()).or_insert(0) += n;
            let (tw, est) = (
                k.state == TcpState::TimeWait,
                k.state == TcpState::Established,
            );
            match k.group {
                Group::Client { remote, .. } => {
                    let e: &mut (u64, u64, u64) =
                        clients.entry((k.local, remote.0, remote.1)).or_default();
                    match (tw, est) {
                        (true, _) => e.0 += n,
                        (_, true) => e.1 += n,
                        _ => e.2 += n,
                    }
                }
                Group::Server { port } => {
                    let e: &mut (u64, u64) = servers.entry(port).or_default();
                    e.0 += if tw { *n } else { 0 };
                    e.1 += if est { *n } else { 0 };
                }
            }
        }
        (clients, servers, states)
    }

    fn census_fold(c: &Census) -> Folded {
        let clients = c
            .destinations
            .iter()
            .map(|d| {
                let k = (d.local_ip, d.remote_ip, d.remote_port);
                (k, (d.time_wait, d.established, d.other))
            })
            .filter(|(_, v)| *v != (0, 0, 0))
            .collect();
        let servers = c
            .server_side
            .iter()
            .map(|s| (s.local_port, (s.time_wait, s.established)))
            .filter(|(_, v)| *v != (0, 0))
            .collect();
        let states = c
            .states
            .iter()
            .filter(|(s, n)| **n > 0 && *s != "LISTEN")
            .map(|(s, n)| (s.clone(), *n))
            .collect();
        (clients, servers, states)
    }

    /// A count map with room for three keys, and connections to three
    /// services (each a key per state it passes through at both ends): the
    /// changes that found no room are counted, and the count says it is no
    /// longer whole instead of being read short.
    #[test]
    fn a_full_count_map_makes_the_count_fail_not_read_short() {
        if std::env::var_os("TIMEWAIT_SKIP_KERNEL_TESTS").is_some() {
            return;
        }
        let ns = ScratchNetns::create().expect("kernel tests need root");
        let listeners = ns
            .spawn(|| {
                (8080..8083)
                    .map(|p| TcpListener::bind(("127.0.0.1", p)).unwrap())
                    .collect::<Vec<_>>()
            })
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        let kernel = LiveKernel::read().expect("this kernel can count live");
        let live = LiveCensus::start_sized(&ns.target(), &kernel, 3).expect("starts");
        assert_eq!(live.read().expect("empty, whole").by_key, []);
        ns.spawn(move || {
            for l in &listeners {
                connection(l.local_addr().unwrap(), l, Ending::ClientFirst);
            }
        })
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
        let why = live.read().expect_err("the map overflowed");
        assert!(why.contains("found the count map full (3 keys)"), "{why}");
    }

    /// Counted from the start: every socket is the programs' to count.
    #[test]
    fn the_live_count_is_the_dumps_through_churn_and_reuse_kills() {
        churn_and_compare(When::Before);
    }

    /// Seeded while connections come and go: the dump and its log meet.
    #[test]
    fn the_seeded_live_count_is_the_dumps_through_churn_and_reuse_kills() {
        churn_and_compare(When::During);
    }

    /// When the count starts: before any connection, or while they churn.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum When {
        Before,
        During,
    }

    /// Connections on two services (one on a port inside the ephemeral
    /// range, listening) left in TIME_WAIT at either end, ESTABLISHED, and
    /// half closed (FIN_WAIT2 and CLOSE_WAIT), then more made after the
    /// count started, in a 50-port range with `tcp_tw_reuse` killing
    /// TIME_WAIT sockets a millisecond old: once all is quiet, the live
    /// count is the dump's, state by state and key by key.
    fn churn_and_compare(when: When) {
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
        let ending = |i: u32| match i % 13 {
            0 => Ending::Open,
            5 => Ending::HalfClosed,
            n if n % 3 == 0 => Ending::ServerFirst,
            _ => Ending::ClientFirst,
        };
        let early = (when == When::Before)
            .then(|| LiveCensus::start(&ns.target()).expect("the live count starts"));
        let churn = {
            let (stop, made) = (stop.clone(), made.clone());
            let (outside, inside) = listeners.clone();
            ns.spawn(move || {
                let (a, b) = (outside.local_addr().unwrap(), inside.local_addr().unwrap());
                let mut kept = Vec::new();
                for i in 0..30 {
                    kept.extend(connection(a, &outside, ending(i)).unwrap_or_default());
                    kept.extend(connection(b, &inside, ending(i + 1)).unwrap_or_default());
                }
                ready_tx.send(()).unwrap();
                // Bounded: 200,000 connections at most (a few seconds),
                // 40 kept open.
                for i in 0..200_000u32 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (to, l) = if i % 4 == 0 {
                        (b, &inside)
                    } else {
                        (a, &outside)
                    };
                    let e = if kept.len() < 40 {
                        ending(i)
                    } else {
                        Ending::ClientFirst
                    };
                    if let Some(k) = connection(to, l, e) {
                        kept.extend(k);
                        made.fetch_add(1, Ordering::Relaxed);
                    }
                }
                kept
            })
            .unwrap()
        };
        ready_rx.recv().unwrap();
        let before = made.load(Ordering::Relaxed);
        let live = match early {
            Some(l) => l,
            None => LiveCensus::start(&ns.target()).expect("the live count starts"),
        };
        let during = made.load(Ordering::Relaxed) - before;
        // The map's own changes: connections after the seeding.
        let seeded = made.load(Ordering::Relaxed);
        while made.load(Ordering::Relaxed) < seeded + 300 && !churn.is_finished() {
            std::thread::yield_now();
        }
        stop.store(true, Ordering::Relaxed);
        let kept = churn.join().unwrap().expect("the churn ran");
        if when == When::During {
            assert!(during > 0, "no connection was made while the seeding ran");
        }

        // Quiet: the last closes may still be finishing in a softirq (or
        // ksoftirqd); the dump is compared when the count is the same
        // before and after it.
        let (counts, census) = (0..100)
            .find_map(|_| {
                let before = live.read().expect("whole counts");
                let census = crate::collect(&ns.target(), Via::Netlink, false)
                    .unwrap()
                    .census;
                let after = live.read().expect("whole counts");
                if before == after {
                    return Some((after, census));
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
                None
            })
            .expect("the namespace goes quiet");
        let (clients, servers, states) = fold(&counts);
        let (want_clients, want_servers, want_states) = census_fold(&census);
        assert_eq!(states, want_states);
        assert_eq!(clients, want_clients);
        assert_eq!(servers, want_servers);
        // Every kind of socket was there to count: both services, both
        // sides, and the states the connections were left in.
        assert_eq!(clients.len(), 2, "{clients:?}");
        assert!(!servers.is_empty());
        for s in ["TIME_WAIT", "ESTABLISHED", "FIN_WAIT2", "CLOSE_WAIT"] {
            assert!(states.get(s).is_some_and(|&n| n > 0), "no {s}: {states:?}");
        }
        // Reuse (a client's, or a SYN met by the server's TIME_WAIT)
        // killed TIME_WAIT sockets while they were counted: far more were
        // made than are left.
        let made = made.load(Ordering::Relaxed);
        assert!(made >= seeded + 300, "{made} connections");
        assert!(
            states["TIME_WAIT"] + 200 < made,
            "{states:?} left of {made}"
        );
        drop((kept, listeners));
    }
}
