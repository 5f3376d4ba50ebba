//! The per-process tally: a state machine over [`Event`]s in time order.
//!
//! - A connect is a CLOSE→SYN_SENT in a thread's own context: that thread
//!   is in connect() (or TCP Fast Open's sendto), and its process owns the
//!   socket. The destination is the event's, so failures have one too.
//! - It fails when the socket goes SYN_SENT→CLOSE. Its errno is, first,
//!   what connect() returned, when that is traced (`--syscalls`) and comes
//!   within [`GRACE_NS`] (a blocking connect); else the error the kernel
//!   set on the socket just before (ECONNREFUSED, EHOSTUNREACH, ETIMEDOUT…);
//!   else inferred: a reset arrived → ECONNREFUSED; no local port was ever
//!   chosen → EADDRNOTAVAIL (the kernel moves the socket to SYN_SENT, finds
//!   no free port and moves it back: no error is set, connect() just
//!   returns it); the owner closed it → `abandoned`; else ETIMEDOUT.
//! - A first close is →FIN_WAIT1 in the closing thread's context: that
//!   socket ends in TIME_WAIT here. It is client-side when this host
//!   connected it during the trace, or when its local port is in the
//!   namespace's ephemeral range (opened before the trace); otherwise it is
//!   an accepted connection: server-side TIME_WAIT.
//! - Interrupt-context events (packets, timers) are never charged to the
//!   thread that happened to run: they are tied to their owner through the
//!   socket address.
//! - A thread is placed (process, name, namespace) from `/proc` when its
//!   first event is applied. One that has exited by then is placed by its
//!   fork: a task made by one in scope, not in a new network namespace,
//!   that has not exec'd since, is in its parent's namespace (it could
//!   only have left by calling setns or unshare itself) under its parent's
//!   name; a thread belongs to its parent's process. One that exec'd may be
//!   another program in another namespace (`ip netns exec` is one): it
//!   stays unplaced (with every namespace in scope, it is named by its new
//!   name, its namespace unknown) — unless setns(2) and unshare(2) are
//!   traced too (`--syscalls`): then only a task seen calling one of them
//!   has left its parent's namespace, and an exec keeps it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;

use timewait_kernel::TcpState;

use crate::event::{Comm, Context, Event, StateChange, Timed};
use crate::report::{DestinationReport, ProcessReport, Totals, TraceReport};

const ECONNREFUSED: i64 = 111;
const EADDRNOTAVAIL: i64 = 99;
const ENETUNREACH: i64 = 101;
/// Socket errors remembered, at most, until their socket closes.
const MAX_REPORTED: usize = 65_536;
/// New tasks remembered until their first event, at most (the oldest go
/// first).
const MAX_FORKED: usize = 65_536;
/// Parents remembered (all forgotten at once past this).
const MAX_PARENTS: usize = 4_096;
const EHOSTUNREACH: i64 = 113;

/// How long (ns of trace time) after a connecting socket closes its
/// connect() may still return the errno; after that, the errno is inferred.
pub const GRACE_NS: u64 = 200_000_000;

/// A process as the host sees it when one of its threads is first met.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Thread group id.
    pub pid: u32,
    /// `/proc/PID/comm`.
    pub comm: Option<String>,
    /// Inode of `/proc/TID/ns/net`.
    pub netns: Option<u64>,
}

/// Which processes count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace.
    All,
    /// The namespace with this inode.
    Netns(u64),
}

/// Why a failed connect failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Failure {
    Errno(i64),
    TimedOut,
    Abandoned,
}

impl Failure {
    fn name(self) -> String {
        match self {
            Failure::Errno(e) => timewait_kernel::errno::name(e as i32),
            Failure::TimedOut => "ETIMEDOUT".into(),
            Failure::Abandoned => "abandoned".into(),
        }
    }
}

type Endpoint = (IpAddr, u16);

/// FxHash's multiply-rotate: the keys are kernel addresses, thread ids and
/// endpoints, not attacker-chosen strings, and SipHash was a third of the
/// time spent per event.
#[derive(Default, Clone, Copy)]
struct Fast(u64);

impl Hasher for Fast {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

type Map<K, V> = HashMap<K, V, BuildHasherDefault<Fast>>;

#[derive(Default)]
struct Counts {
    connects: u64,
    errors: BTreeMap<Failure, u64>,
    closed_first: u64,
}

struct Process {
    info: ProcessInfo,
    own: Counts,
    server_closed_first: u64,
    resets: u64,
    /// Failed connects with no route fail before SYN_SENT, so they have
    /// no destination: `own.errors` counts them, no destination does.
    destinations: Map<Endpoint, Counts>,
}

struct Client {
    pid: u32,
    remote: Endpoint,
    reset: bool,
    /// Went back to CLOSE while connecting, at this time, with this
    /// inferred reason (connect()'s errno, if it comes, wins).
    closed: Option<(u64, Failure)>,
}

#[derive(Debug, Clone, Copy)]
enum Who {
    Pid(u32),
    OutOfScope,
    Gone,
}

/// What the tally asks the host.
pub trait Lookup {
    /// The process of a thread; `None` if the thread has exited.
    fn process(&mut self, tid: u32) -> Option<ProcessInfo>;
    /// The ephemeral port range (`ip_local_port_range`) of the network
    /// namespace thread `tid` is in, if it can be read.
    fn port_range(&mut self, tid: u32) -> Option<(u16, u16)>;
}

/// The running tally.
pub struct Tally {
    scope: Scope,
    /// connect()'s failures are traced: wait for their errno.
    syscalls: bool,
    queue: Vec<Timed>,
    tids: Map<u32, Who>,
    processes: Map<u32, Process>,
    /// The socket each thread last began a handshake on.
    connecting: Map<u32, u64>,
    clients: Map<u64, Client>,
    /// Connecting sockets that closed, awaiting connect()'s errno.
    closing: VecDeque<(u64, u64)>,
    port_ranges: Map<u64, Option<(u16, u16)>>,
    /// Errors reported on sockets, by (local, remote), until their socket
    /// goes back to CLOSE.
    reported: Map<(Endpoint, Endpoint), i64>,
    /// Tasks made by processes in scope, as their fork (and any exec
    /// since) places them, until their first event.
    /// (info, the how-manieth fork it was).
    forked: Map<u32, (ProcessInfo, u64)>,
    /// `forked`'s keys and forks, oldest first (some may be gone from it).
    forked_order: VecDeque<(u32, u64)>,
    forks: u64,
    /// Threads in scope that forked but have no event of their own (a
    /// shell, a pre-forking server's master), as last looked up: one
    /// `/proc` read per parent, not per fork. Forgotten when the thread
    /// execs, switches namespace, or its id is given to a new task.
    parents: Map<u32, ProcessInfo>,
    events: u64,
    undecoded: u64,
    unattributed: u64,
    unplaced: u64,
}

impl Tally {
    /// An empty tally of `scope`.
    pub fn new(scope: Scope) -> Tally {
        Tally {
            scope,
            syscalls: false,
            queue: Vec::new(),
            tids: Map::default(),
            processes: Map::default(),
            connecting: Map::default(),
            clients: Map::default(),
            closing: VecDeque::new(),
            port_ranges: Map::default(),
            reported: Map::default(),
            forked: Map::default(),
            forked_order: VecDeque::new(),
            forks: 0,
            parents: Map::default(),
            events: 0,
            undecoded: 0,
            unattributed: 0,
            unplaced: 0,
        }
    }

    /// connect()'s failures are traced too (`--syscalls`): a connecting
    /// socket that closes waits [`GRACE_NS`] for its errno.
    pub fn with_syscalls(mut self, syscalls: bool) -> Tally {
        self.syscalls = syscalls;
        self
    }

    /// Counts a record of a traced event that did not decode (too short
    /// for its fields): reported, never guessed at.
    pub fn undecoded(&mut self) {
        self.undecoded += 1;
    }

    /// Queues an event (from any CPU's buffer, in any order).
    pub fn push(&mut self, event: Timed) {
        self.events += 1;
        self.queue.push(event);
    }

    /// Applies, in time order, every queued event at or before `watermark`
    /// (a time by which every CPU's buffer has been read); later ones wait,
    /// so events of one CPU read after another's still apply in order.
    /// Then settles the failed connects whose errno did not come in time.
    pub fn advance(&mut self, watermark: u64, lookup: &mut dyn Lookup) {
        // Each CPU's records are in order: the sort merges runs.
        self.queue.sort_by_key(|t| t.ts);
        let n = self.queue.partition_point(|t| t.ts <= watermark);
        let ready: Vec<Timed> = self.queue.drain(..n).collect();
        for t in ready {
            self.apply(t, lookup);
        }
        while let Some(&(at, sk)) = self.closing.front() {
            if at.saturating_add(GRACE_NS) > watermark {
                break;
            }
            self.closing.pop_front();
            if let Some((_, inferred)) = self.clients.get(&sk).and_then(|c| c.closed) {
                self.fail(sk, inferred);
            }
        }
    }

    /// Applies everything queued and settles every failed connect.
    pub fn finish(&mut self, lookup: &mut dyn Lookup) {
        self.advance(u64::MAX, lookup);
    }

    fn who(&mut self, tid: u32, lookup: &mut dyn Lookup) -> Who {
        if let Some(w) = self.tids.get(&tid) {
            return *w;
        }
        let info = self.place(tid, lookup);
        self.forked.remove(&tid);
        self.admit(tid, info)
    }

    /// A thread's process as `/proc` has it, or as its fork left it if it
    /// has exited (gone, or a zombie whose namespace cannot be read).
    fn place(&self, tid: u32, lookup: &mut dyn Lookup) -> Option<ProcessInfo> {
        let forked = self.forked.get(&tid).map(|(info, _)| info);
        match (lookup.process(tid), forked) {
            (Some(mut info), Some(f)) if info.netns.is_none() => {
                info.netns = f.netns;
                Some(info)
            }
            (Some(info), _) => Some(info),
            (None, f) => f.cloned(),
        }
    }

    /// Remembers where a new task is, if its parent is in scope (see the
    /// module docs).
    fn forked(
        &mut self,
        parent: u32,
        child: u32,
        thread: bool,
        comm: Comm,
        lookup: &mut dyn Lookup,
    ) {
        let Some(p) = self.in_scope(parent, lookup) else {
            return;
        };
        let info = if thread {
            p
        } else {
            ProcessInfo {
                pid: child,
                comm: Some(comm.name()),
                netns: p.netns,
            }
        };
        self.forks += 1;
        self.forked.insert(child, (info, self.forks));
        self.forked_order.push_back((child, self.forks));
        while self.forked_order.len() > MAX_FORKED {
            // Not a later task that got the same id.
            if let Some((old, n)) = self.forked_order.pop_front()
                && self.forked.get(&old).is_some_and(|(_, m)| *m == n)
            {
                self.forked.remove(&old);
            }
        }
    }

    /// A thread's process if it is in scope, without admitting it (a
    /// process that only forks is not reported, nor kept).
    fn in_scope(&mut self, tid: u32, lookup: &mut dyn Lookup) -> Option<ProcessInfo> {
        match self.tids.get(&tid) {
            Some(Who::Pid(p)) => return self.processes.get(p).map(|p| p.info.clone()),
            Some(_) => return None,
            None => {}
        }
        if let Some(info) = self.parents.get(&tid) {
            return Some(info.clone());
        }
        let info = self.place(tid, lookup)?;
        let keep = |me: &mut Tally, info: ProcessInfo| {
            if me.parents.len() >= MAX_PARENTS {
                me.parents.clear();
            }
            me.parents.insert(tid, info.clone());
            Some(info)
        };
        match self.scope {
            Scope::All => keep(self, info),
            Scope::Netns(ns) if info.netns == Some(ns) => keep(self, info),
            Scope::Netns(_) => {
                // Remembered as admitting it would: most forks on a host
                // are of processes out of scope.
                if info.netns.is_some() {
                    self.tids.insert(tid, Who::OutOfScope);
                }
                None
            }
        }
    }

    /// Tells the tally a thread's process before any event of it arrives
    /// (threads that exist when the trace starts, so that one which exits
    /// early is still placed in its namespace).
    pub fn seed(&mut self, tid: u32, info: ProcessInfo) {
        self.admit(tid, Some(info));
    }

    fn admit(&mut self, tid: u32, info: Option<ProcessInfo>) -> Who {
        let who = match (info, self.scope) {
            (Some(info), Scope::All) => self.add(info),
            (Some(info), Scope::Netns(ns)) => match info.netns {
                Some(n) if n == ns => self.add(info),
                Some(_) => Who::OutOfScope,
                // An exited (zombie) process's namespace cannot be read.
                None => Who::Gone,
            },
            (None, Scope::All) => self.add(ProcessInfo {
                pid: tid,
                comm: None,
                netns: None,
            }),
            (None, Scope::Netns(_)) => Who::Gone,
        };
        self.tids.insert(tid, who);
        who
    }

    fn add(&mut self, info: ProcessInfo) -> Who {
        let pid = info.pid;
        self.processes
            .entry(pid)
            .or_insert_with(|| Process::new(info));
        Who::Pid(pid)
    }

    /// The process of a thread's own action, counting what cannot be named.
    fn owner(&mut self, tid: u32, lookup: &mut dyn Lookup) -> Option<u32> {
        match self.who(tid, lookup) {
            Who::Pid(p) => Some(p),
            Who::OutOfScope => None,
            // Only with a namespace scope: its namespace is unknown.
            Who::Gone => {
                self.unplaced += 1;
                None
            }
        }
    }

    fn apply(&mut self, t: Timed, lookup: &mut dyn Lookup) {
        match t.event {
            Event::NewTask {
                parent,
                child,
                thread,
                new_netns,
                comm,
            } => {
                // The id is a new task's now.
                self.parents.remove(&child);
                if !new_netns {
                    self.forked(parent, child, thread, comm, lookup);
                }
            }
            Event::Renamed { tid, comm } => {
                // Another program now, which may have moved it to another
                // namespace (`ip netns exec`): where setns and unshare are
                // traced, an exec alone does not.
                let known = self.syscalls;
                self.parents.remove(&tid);
                if let Some((info, _)) = self.forked.get_mut(&tid) {
                    if info.pid == tid {
                        info.comm = Some(comm.name());
                    }
                    if !known {
                        info.netns = None;
                    }
                }
            }
            Event::LeavesNetns { tid } => {
                // Its namespace is unknown from now on: looked up again at
                // its next event, never taken from its fork.
                if let Some((info, _)) = self.forked.get_mut(&tid) {
                    info.netns = None;
                }
                self.parents.remove(&tid);
                self.tids.remove(&tid);
            }
            Event::ConnectExit { tid, ret } => self.connect_failed(tid, -ret, lookup),
            Event::Reset { sk } => {
                if let Some(c) = self.clients.get_mut(&sk) {
                    c.reset = true;
                }
            }
            Event::Error {
                errno,
                local,
                remote,
            } => {
                // Bounded: errors on sockets that were not connecting are
                // never looked up.
                if self.reported.len() >= MAX_REPORTED {
                    self.reported.clear();
                }
                self.reported.insert((local, remote), errno);
            }
            Event::State(s) => self.state_changed(t.ts, s, lookup),
        }
    }

    fn connect_failed(&mut self, tid: u32, errno: i64, lookup: &mut dyn Lookup) {
        if let Some(sk) = self.connecting.remove(&tid)
            && self.clients.get(&sk).is_some_and(|c| c.closed.is_some())
        {
            self.fail(sk, Failure::Errno(errno));
            return;
        }
        // No handshake of this thread failed: a failure before one could
        // start (no route), or not TCP at all (a UNIX or UDP socket's
        // connect(), an EALREADY or EINTR): only the first kind counts.
        if matches!(errno, ENETUNREACH | EHOSTUNREACH)
            && let Some(pid) = self.owner(tid, lookup)
            && let Some(p) = self.processes.get_mut(&pid)
        {
            p.own.connects += 1;
            *p.own.errors.entry(Failure::Errno(errno)).or_default() += 1;
        }
    }

    /// Charges a failed connect to its owner and destination.
    fn fail(&mut self, sk: u64, failure: Failure) {
        let Some(c) = self.clients.remove(&sk) else {
            return;
        };
        if let Some(p) = self.processes.get_mut(&c.pid) {
            *p.own.errors.entry(failure).or_default() += 1;
            let d = p.destinations.entry(c.remote).or_default();
            *d.errors.entry(failure).or_default() += 1;
        }
    }

    /// Whether a local port is in the ephemeral range of `tid`'s namespace
    /// (unknown: taken as yes, the client side).
    fn ephemeral(&mut self, tid: u32, port: u16, lookup: &mut dyn Lookup) -> bool {
        let netns = match self.tids.get(&tid) {
            Some(Who::Pid(pid)) => self.processes.get(pid).and_then(|p| p.info.netns),
            _ => None,
        };
        let range = match netns {
            Some(ns) => *self
                .port_ranges
                .entry(ns)
                .or_insert_with(|| lookup.port_range(tid)),
            None => lookup.port_range(tid),
        };
        range.is_none_or(|(lo, hi)| (lo..=hi).contains(&port))
    }

    fn state_changed(&mut self, ts: u64, s: StateChange, lookup: &mut dyn Lookup) {
        use TcpState::*;
        match (s.old, s.new, s.context) {
            (Close, SynSent, Context::Task) => {
                let Some(pid) = self.owner(s.tid, lookup) else {
                    return;
                };
                self.connecting.insert(s.tid, s.sk);
                // The kernel reuses a freed socket's address: settle the
                // failure of the socket that had it.
                if let Some((_, inferred)) = self.clients.get(&s.sk).and_then(|c| c.closed) {
                    self.fail(s.sk, inferred);
                }
                self.clients.insert(
                    s.sk,
                    Client {
                        pid,
                        remote: s.remote,
                        reset: false,
                        closed: None,
                    },
                );
                if let Some(p) = self.processes.get_mut(&pid) {
                    p.own.connects += 1;
                    p.destinations.entry(s.remote).or_default().connects += 1;
                }
            }
            (SynSent, Close, context) => {
                let Some(c) = self.clients.get(&s.sk) else {
                    return;
                };
                let owner = c.pid;
                let reported = self.reported.remove(&(s.local, s.remote));
                let inferred = if let Some(errno) = reported {
                    Failure::Errno(errno)
                } else if c.reset {
                    Failure::Errno(ECONNREFUSED)
                } else if context == Context::Task && s.local.1 == 0 {
                    Failure::Errno(EADDRNOTAVAIL)
                } else if context == Context::Task
                    && matches!(self.who(s.tid, lookup), Who::Pid(p) if p == owner)
                {
                    Failure::Abandoned
                } else {
                    Failure::TimedOut
                };
                if !self.syscalls {
                    self.fail(s.sk, inferred);
                } else if let Some(c) = self.clients.get_mut(&s.sk) {
                    c.closed = Some((ts, inferred));
                    self.closing.push_back((ts, s.sk));
                }
            }
            (_, FinWait1, Context::Task) => {
                let client = self.clients.remove(&s.sk);
                let Some(pid) = self.owner(s.tid, lookup) else {
                    return;
                };
                let server = client.is_none() && !self.ephemeral(s.tid, s.local.1, lookup);
                if let Some(p) = self.processes.get_mut(&pid) {
                    if server {
                        p.server_closed_first += 1;
                    } else {
                        p.own.closed_first += 1;
                        p.destinations.entry(s.remote).or_default().closed_first += 1;
                    }
                }
            }
            (_, FinWait1, Context::Interrupt) => {
                let unknown = u64::from(self.clients.remove(&s.sk).is_none());
                match self.scope {
                    Scope::All => self.unattributed += unknown,
                    Scope::Netns(_) => self.unplaced += unknown,
                }
            }
            (Established, CloseWait, _) => {
                // The peer closed first: no TIME_WAIT on this side.
                self.clients.remove(&s.sk);
            }
            (Established | CloseWait, Close, context) => {
                let client = self.clients.remove(&s.sk);
                let pid = match context {
                    Context::Task => self.owner(s.tid, lookup),
                    Context::Interrupt => client.map(|c| c.pid),
                };
                if let Some(p) = pid.and_then(|pid| self.processes.get_mut(&pid)) {
                    p.resets += 1;
                }
            }
            _ => {}
        }
    }

    /// The report so far; `label` names a namespace inode, `top` bounds
    /// each process's destinations.
    pub fn report(
        &self,
        duration_seconds: f64,
        scope: &str,
        events_lost: u64,
        top: usize,
        label: &dyn Fn(u64) -> String,
    ) -> TraceReport {
        let names = |m: &BTreeMap<Failure, u64>| -> BTreeMap<String, u64> {
            let mut out = BTreeMap::new();
            for (f, n) in m {
                *out.entry(f.name()).or_default() += n;
            }
            out
        };
        let mut processes: Vec<ProcessReport> = self
            .processes
            .values()
            .filter(|p| p.own.connects + p.own.closed_first + p.server_closed_first + p.resets > 0)
            .map(|p| {
                let mut destinations: Vec<DestinationReport> = p
                    .destinations
                    .iter()
                    .map(|((ip, port), c)| DestinationReport {
                        remote_ip: ip.to_string(),
                        remote_port: *port,
                        connects: c.connects,
                        errors: names(&c.errors),
                        closed_first: c.closed_first,
                    })
                    .collect();
                destinations.sort_by(|a, b| {
                    let key = |d: &DestinationReport| {
                        (d.errors.values().sum::<u64>(), d.closed_first, d.connects)
                    };
                    key(b).cmp(&key(a)).then_with(|| {
                        (&a.remote_ip, a.remote_port).cmp(&(&b.remote_ip, b.remote_port))
                    })
                });
                destinations.truncate(top);
                ProcessReport {
                    pid: p.info.pid,
                    comm: p.info.comm.clone(),
                    netns: p.info.netns.map(label),
                    connects: p.own.connects,
                    errors: names(&p.own.errors),
                    closed_first: p.own.closed_first,
                    server_closed_first: p.server_closed_first,
                    resets: p.resets,
                    destinations,
                }
            })
            .collect();
        processes.sort_by(|a, b| {
            (b.error_count(), b.closed_first + b.server_closed_first)
                .cmp(&(a.error_count(), a.closed_first + a.server_closed_first))
                .then(a.pid.cmp(&b.pid))
        });
        let mut totals = Totals::default();
        for p in &processes {
            totals.connects += p.connects;
            for (k, v) in &p.errors {
                *totals.errors.entry(k.clone()).or_default() += v;
            }
            totals.closed_first += p.closed_first;
            totals.server_closed_first += p.server_closed_first;
            totals.resets += p.resets;
        }
        TraceReport {
            duration_seconds,
            scope: scope.to_string(),
            processes,
            totals,
            events: self.events,
            records_undecoded: self.undecoded,
            events_lost,
            unattributed: self.unattributed,
            unplaced: self.unplaced,
        }
    }
}

impl Process {
    fn new(info: ProcessInfo) -> Process {
        Process {
            info,
            own: Counts::default(),
            server_closed_first: 0,
            resets: 0,
            destinations: Map::default(),
        }
    }
}
