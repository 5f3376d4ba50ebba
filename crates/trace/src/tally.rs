//! The per-process tally: a state machine over [`Event`]s in time order.
//!
//! - A connect is a CLOSE→SYN_SENT in a thread's own context; the thread's
//!   connect() call (entered just before) owns it. It fails if its
//!   connect() returns an errno other than EINPROGRESS (EADDRNOTAVAIL comes
//!   this way: the kernel moves the socket to SYN_SENT, finds no port and
//!   moves it back), or, for a non-blocking connect, when the socket goes
//!   SYN_SENT→CLOSE later: refused if a reset arrived, else timed out.
//!   The destination is the SYN_SENT event's, so failures have one too.
//! - A first close is ESTABLISHED→FIN_WAIT1 in the closing thread's
//!   context: that socket ends in TIME_WAIT here. It is server-side when the
//!   socket was accepted (its local address and port accepted a connection
//!   during the trace) and was not one this host connected.
//! - Interrupt-context events (packets, timers) are never charged to the
//!   thread that happened to run: they are tied to their owner through the
//!   socket address.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use timewait_kernel::TcpState;

use crate::event::{Context, Event, StateChange, Timed};
use crate::report::{DestinationReport, ProcessReport, Totals, TraceReport};

const EINTR: i64 = 4;
const EALREADY: i64 = 114;
const EINPROGRESS: i64 = 115;
const EISCONN: i64 = 106;
const ENETUNREACH: i64 = 101;
const EHOSTUNREACH: i64 = 113;

/// Accepting endpoints remembered, at most (one per listening address and
/// port, so a real host has few).
const MAX_SERVER_ENDPOINTS: usize = 65_536;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
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
    destinations: HashMap<Endpoint, Counts>,
}

/// Where a connecting socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Its connect() has not returned; `closed` if it already went back to CLOSE.
    InSyscall { closed: bool },
    /// connect() said EINPROGRESS: the outcome comes as a state change.
    Async,
}

struct Client {
    pid: u32,
    remote: Endpoint,
    phase: Phase,
    reset: bool,
}

#[derive(Debug, Clone, Copy)]
enum Who {
    Pid(u32),
    OutOfScope,
    Gone,
}

/// Looks up the process a thread belongs to (the host's job).
pub trait Lookup {
    /// `None` if the thread has exited.
    fn process(&mut self, tid: u32) -> Option<ProcessInfo>;
}

impl<F: FnMut(u32) -> Option<ProcessInfo>> Lookup for F {
    fn process(&mut self, tid: u32) -> Option<ProcessInfo> {
        self(tid)
    }
}

/// The running tally.
pub struct Tally {
    scope: Scope,
    queue: Vec<Timed>,
    tids: HashMap<u32, Who>,
    processes: HashMap<u32, Process>,
    in_connect: HashMap<u32, Option<u64>>,
    clients: HashMap<u64, Client>,
    servers: HashSet<Endpoint>,
    events: u64,
    unattributed: u64,
}

impl Tally {
    /// An empty tally of `scope`.
    pub fn new(scope: Scope) -> Tally {
        Tally {
            scope,
            queue: Vec::new(),
            tids: HashMap::new(),
            processes: HashMap::new(),
            in_connect: HashMap::new(),
            clients: HashMap::new(),
            servers: HashSet::new(),
            events: 0,
            unattributed: 0,
        }
    }

    /// Queues an event (from any CPU's buffer, in any order).
    pub fn push(&mut self, event: Timed) {
        self.events += 1;
        self.queue.push(event);
    }

    /// Applies, in time order, every queued event at or before `watermark`
    /// (a time by which every CPU's buffer has been read); later ones wait,
    /// so events of one CPU read after another's still apply in order.
    pub fn advance(&mut self, watermark: u64, lookup: &mut dyn Lookup) {
        self.queue.sort_by_key(|t| t.ts);
        let n = self.queue.partition_point(|t| t.ts <= watermark);
        let ready: Vec<Timed> = self.queue.drain(..n).collect();
        for t in ready {
            self.apply(t.event, lookup);
        }
    }

    /// Applies everything queued.
    pub fn finish(&mut self, lookup: &mut dyn Lookup) {
        self.advance(u64::MAX, lookup);
    }

    fn who(&mut self, tid: u32, lookup: &mut dyn Lookup) -> Who {
        if let Some(w) = self.tids.get(&tid) {
            return *w;
        }
        let info = lookup.process(tid);
        self.admit(tid, info)
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
            Who::Gone => {
                self.unattributed += 1;
                None
            }
        }
    }

    fn apply(&mut self, event: Event, lookup: &mut dyn Lookup) {
        match event {
            Event::ConnectEnter { tid } => {
                self.in_connect.insert(tid, None);
            }
            Event::ConnectExit { tid, ret } => self.connect_returned(tid, ret, lookup),
            Event::Reset { sk } => {
                if let Some(c) = self.clients.get_mut(&sk) {
                    c.reset = true;
                }
            }
            Event::State(s) => self.state_changed(s, lookup),
        }
    }

    fn connect_returned(&mut self, tid: u32, ret: i64, lookup: &mut dyn Lookup) {
        let errno = -ret;
        let sk = self.in_connect.remove(&tid).flatten();
        let Some(sk) = sk else {
            // No handshake started in this call: a failure before one
            // could (no route), or not TCP (a UNIX or UDP socket), or a
            // second call on a socket already connecting.
            if matches!(errno, ENETUNREACH | EHOSTUNREACH)
                && let Some(pid) = self.owner(tid, lookup)
                && let Some(p) = self.processes.get_mut(&pid)
            {
                p.own.connects += 1;
                *p.own.errors.entry(Failure::Errno(errno)).or_default() += 1;
            }
            return;
        };
        let Some(c) = self.clients.get_mut(&sk) else {
            return;
        };
        let closed = matches!(c.phase, Phase::InSyscall { closed: true });
        match errno {
            EINPROGRESS | EINTR | EALREADY | EISCONN if !closed => c.phase = Phase::Async,
            EINPROGRESS | EINTR | EALREADY | EISCONN => {
                let failure = if c.reset {
                    Failure::Errno(111)
                } else {
                    Failure::TimedOut
                };
                self.fail(sk, failure);
            }
            e => self.fail(sk, Failure::Errno(e)),
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

    fn state_changed(&mut self, s: StateChange, lookup: &mut dyn Lookup) {
        use TcpState::*;
        match (s.old, s.new, s.context) {
            (Close, SynSent, Context::Task) => {
                let Some(pid) = self.owner(s.tid, lookup) else {
                    self.in_connect.remove(&s.tid);
                    return;
                };
                let phase = match self.in_connect.get_mut(&s.tid) {
                    Some(slot) => {
                        *slot = Some(s.sk);
                        Phase::InSyscall { closed: false }
                    }
                    // A handshake begun outside connect() (TCP Fast Open's sendto).
                    None => Phase::Async,
                };
                self.clients.insert(
                    s.sk,
                    Client {
                        pid,
                        remote: s.remote,
                        phase,
                        reset: false,
                    },
                );
                if let Some(p) = self.processes.get_mut(&pid) {
                    p.own.connects += 1;
                    p.destinations.entry(s.remote).or_default().connects += 1;
                }
            }
            (SynSent, Close, context) => {
                if !self.clients.contains_key(&s.sk) {
                    return;
                }
                let closer = match context {
                    Context::Task => self.who(s.tid, lookup),
                    Context::Interrupt => Who::OutOfScope,
                };
                let Some(c) = self.clients.get_mut(&s.sk) else {
                    return;
                };
                match c.phase {
                    Phase::InSyscall { .. } => c.phase = Phase::InSyscall { closed: true },
                    Phase::Async => {
                        let failure = match closer {
                            _ if c.reset => Failure::Errno(111),
                            Who::Pid(p) if p == c.pid => Failure::Abandoned,
                            _ => Failure::TimedOut,
                        };
                        self.fail(s.sk, failure);
                    }
                }
            }
            (SynRecv, Established, _) if self.servers.len() < MAX_SERVER_ENDPOINTS => {
                self.servers.insert(s.local);
            }
            (_, FinWait1, Context::Task) => {
                let client = self.clients.remove(&s.sk);
                let Some(pid) = self.owner(s.tid, lookup) else {
                    return;
                };
                let server = client.is_none() && self.servers.contains(&s.local);
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
                let known = self.clients.remove(&s.sk).is_some();
                self.unattributed += u64::from(!known);
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
            events_lost,
            unattributed: self.unattributed,
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
            destinations: HashMap::new(),
        }
    }
}
