//! Turning what a [`Source`] read into a [`Snapshot`]: walking sock_diag
//! datagrams, decoding and aggregating sockets, and every decision about
//! what went wrong — falling back from netlink to `/proc/net/tcp`, a kernel
//! without IPv6, a dump cut short, lines or answers that do not decode
//! (counted, never silently dropped), files and sysctls that cannot be read
//! (a [`Problem`] with its [`Cause`]).
//!
//! Nothing here touches the host: it sees only the bytes and errors the
//! source hands it, so the unit tests below replay recorded bytes without
//! root. The snapshot keeps the aggregated census (memory bounded by the
//! number of destinations), never the raw dump.

use std::collections::BTreeMap;
use std::io;

use nix::errno::Errno;
use timewait_kernel::inet_diag::{self, AF_INET, AF_INET6, AF_UNSPEC, state_mask};
use timewait_kernel::netlink::{
    self, NLMSG_DONE, NLMSG_ERROR, SOCK_DIAG_BY_FAMILY, TCPDIAG_GETSOCK,
};
use timewait_kernel::{TcpState, proc_tcp};
use timewait_model::ports::{DEFAULT_PORT_RANGE, PortRange};
use timewait_snapshot::Census;
use timewait_snapshot::aggregate::{Aggregator, SocketView};
use timewait_snapshot::snapshot::{self, Cause, CensusSource, Problem, Snapshot};

use crate::HostError;
use crate::source::Source;

/// Every state `ss` shows (not the kernel-internal NEW_SYN_RECV).
const ALL_STATES: u32 = ((1 << 14) - 1) & !1 & !(1 << 12);
/// USER_HZ: /proc/net/tcp prints timers in 1/100 s.
const USER_HZ_MS: u64 = 10;
/// At most this many matching kernel log lines are kept (the newest).
const KMSG_KEEP: usize = 50;

/// How to read the sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Via {
    /// Netlink sock_diag, falling back to `/proc/net/tcp{,6}` if it fails.
    #[default]
    Auto,
    /// Netlink sock_diag only.
    Netlink,
    /// `/proc/net/tcp{,6}` only.
    Proc,
}

/// Reads a snapshot of the namespace `source` sees. Fails only when, with
/// [`Via::Netlink`], netlink fails; anything else unreadable becomes a
/// [`Problem`]. `namespace` labels the snapshot.
pub(crate) fn snapshot(
    source: &dyn Source,
    via: Via,
    kernel_log: bool,
    namespace: String,
) -> Result<Snapshot, HostError> {
    snapshot_with(
        source,
        kernel_log,
        namespace,
        &mut |source, range, problems| census(source, via, range, problems),
    )
}

/// How a snapshot's census is taken: from the namespace `source` sees,
/// with the ephemeral range it classifies by; what it cannot read goes to
/// the problems.
pub(crate) type CensusStep<'a> = dyn FnMut(&dyn Source, PortRange, &mut Vec<Problem>) -> Result<(CensusSource, Census), HostError>
    + 'a;

/// [`snapshot`] with the census taken by `census`.
pub(crate) fn snapshot_with(
    source: &dyn Source,
    kernel_log: bool,
    namespace: String,
    census: &mut CensusStep<'_>,
) -> Result<Snapshot, HostError> {
    let mut problems = Vec::new();
    let mut sysctls = BTreeMap::new();
    for &(name, required) in snapshot::SYSCTLS {
        match read_text(source, &format!("/proc/sys/{}", name.replace('.', "/"))) {
            Ok(v) => {
                sysctls.insert(name.to_string(), v.trim().to_string());
            }
            // An optional sysctl this kernel does not have is information, not a problem.
            Err(e) if e.kind() == io::ErrorKind::NotFound && !required => {}
            Err(e) => problems.push(io_problem(name, &e)),
        }
    }
    let mut files = BTreeMap::new();
    for &name in snapshot::FILES {
        match read_text(source, &format!("/proc/thread-self/net/{name}")) {
            Ok(t) => {
                files.insert(name.to_string(), t);
            }
            // No sockstat6 without IPv6: not a problem.
            Err(e) if e.kind() == io::ErrorKind::NotFound && name == "sockstat6" => {}
            Err(e) => problems.push(io_problem(name, &e)),
        }
    }
    // The aggregator needs a range to tell ephemeral ports from service
    // ports. When the range cannot be read it classifies with the kernel
    // default, and the analysis, which re-reads the raw value, shows every
    // number that depends on the range as unknown.
    let range = sysctls
        .get("net.ipv4.ip_local_port_range")
        .and_then(|r| r.parse::<PortRange>().ok())
        .unwrap_or(DEFAULT_PORT_RANGE);
    let (census_source, census) = census(source, range, &mut problems)?;
    let mut log = Vec::new();
    if kernel_log
        && let Err(e) = matching_kernel_log(source, snapshot::KERNEL_LOG_PATTERNS, &mut log)
    {
        problems.push(io_problem("kernel log (/dev/kmsg)", &e));
    }
    let mut identity = |what: &str, r: io::Result<String>| match r {
        Ok(v) => v,
        Err(e) => {
            problems.push(io_problem(what, &e));
            String::new()
        }
    };
    let kernel_release = identity("kernel release (uname)", source.kernel_release());
    let hostname = identity("hostname", source.hostname());
    Ok(Snapshot {
        format: snapshot::FORMAT.into(),
        version: snapshot::VERSION,
        taken_at_unix_ms: source.now_unix_ms(),
        hostname,
        kernel_release,
        namespace,
        sysctls,
        files,
        census_source,
        census,
        kernel_log: log,
        problems,
    })
}

/// The census by dumps, `via` netlink or `/proc`.
fn census(
    source: &dyn Source,
    via: Via,
    range: PortRange,
    problems: &mut Vec<Problem>,
) -> Result<(CensusSource, Census), HostError> {
    Ok(match via {
        Via::Proc => (CensusSource::Proc, census_proc(source, range, problems)),
        Via::Netlink => (
            CensusSource::Netlink,
            census_netlink(source, range, problems)?,
        ),
        Via::Auto => match census_netlink(source, range, problems) {
            Ok(c) => (CensusSource::Netlink, c),
            Err(e) => {
                problems.push(Problem::new(
                    "netlink sock_diag",
                    cause_of(&e),
                    format!("{e}; the census was read from /proc/net/tcp{{,6}} instead"),
                ));
                (CensusSource::Proc, census_proc(source, range, problems))
            }
        },
    })
}

fn read_text(source: &dyn Source, path: &str) -> io::Result<String> {
    source
        .file(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn io_problem(what: &str, e: &io::Error) -> Problem {
    Problem::new(what, Cause::of(e), e.to_string())
}

fn cause_of(e: &HostError) -> Cause {
    match e {
        HostError::Netlink {
            errno: Errno::EPERM | Errno::EACCES,
            ..
        }
        | HostError::Permission { .. } => Cause::Permission,
        HostError::Netlink {
            errno: Errno::EAFNOSUPPORT | Errno::EPROTONOSUPPORT,
            ..
        } => Cause::Missing,
        _ => Cause::Other,
    }
}

/// Walks the datagrams of one dump: hands each socket payload on, stops at
/// `NLMSG_DONE`, and turns an `NLMSG_ERROR`, a malformed message or a dump
/// that ends without `NLMSG_DONE` into an error.
pub(crate) struct DumpWalk<F> {
    on_message: F,
    done: bool,
    failed: Option<HostError>,
}

impl<F: FnMut(&[u8])> DumpWalk<F> {
    pub(crate) fn new(on_message: F) -> DumpWalk<F> {
        DumpWalk {
            on_message,
            done: false,
            failed: None,
        }
    }

    /// One received datagram; `false` once the walk needs no more.
    pub(crate) fn datagram(&mut self, buf: &[u8]) -> bool {
        for m in netlink::messages(buf) {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    self.failed = Some(HostError::NetlinkMessage(e));
                    return false;
                }
            };
            match m.kind {
                NLMSG_DONE => {
                    self.done = true;
                    return false;
                }
                NLMSG_ERROR => match m.error_code() {
                    Some(0) => {}
                    Some(code) => {
                        self.failed = Some(HostError::Netlink {
                            op: "dump",
                            errno: Errno::from_raw(-code),
                        });
                        return false;
                    }
                    None => {
                        self.failed = Some(HostError::DumpTruncated("an error message"));
                        return false;
                    }
                },
                SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => (self.on_message)(m.payload),
                _ => {}
            }
        }
        true
    }

    /// The outcome, once the source has stopped.
    pub(crate) fn finish(self) -> Result<(), HostError> {
        match self.failed {
            Some(e) => Err(e),
            None if !self.done => Err(HostError::DumpTruncated("the dump before NLMSG_DONE")),
            None => Ok(()),
        }
    }
}

fn dump(
    source: &dyn Source,
    family: u8,
    states: u32,
    on_message: impl FnMut(&[u8]),
) -> Result<(), HostError> {
    let mut walk = DumpWalk::new(on_message);
    let r = source.dump(family, states, &mut |d| walk.datagram(d));
    // A failed syscall says more than the walk's "no NLMSG_DONE".
    r?;
    skip_missing_ipv6(family, walk.finish())
}

/// A kernel without IPv6 answers the AF_INET6 dump with ENOENT; that is
/// not a failure of the census.
fn skip_missing_ipv6(family: u8, r: Result<(), HostError>) -> Result<(), HostError> {
    match r {
        Err(HostError::Netlink {
            errno: Errno::ENOENT | Errno::EAFNOSUPPORT,
            ..
        }) if family == AF_INET6 => Ok(()),
        other => other,
    }
}

/// Listeners first (so accepted connections are recognised), then everything.
///
/// One request for both families where the kernel takes it (the
/// `TCPDIAG_GETSOCK` request answers IPv4 and IPv6 sockets from one walk of
/// its tables); where it refuses that request, one request per family, the
/// two dumped in parallel.
fn census_netlink(
    source: &dyn Source,
    range: PortRange,
    problems: &mut Vec<Problem>,
) -> Result<Census, HostError> {
    let mut bad = 0u64;
    let (families, listening) = families_and_listening(source, &mut bad)?;
    // Each dump walks the whole socket table; several run in parallel, each
    // folding into its own aggregator (threads spawned here inherit this
    // thread's network namespace); one runs here.
    let template = Aggregator::new(range, listening);
    let results: Vec<Result<(Aggregator, u64), HostError>> = match families {
        &[family] => vec![fold_dump(source, family, template.empty_like())],
        _ => std::thread::scope(|s| {
            let handles: Vec<_> = families
                .iter()
                .map(|&family| {
                    let agg = template.empty_like();
                    s.spawn(move || fold_dump(source, family, agg))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        }),
    };
    let mut agg = template;
    for r in results {
        let (part, b) = r?;
        agg.merge(part);
        bad += b;
    }
    if bad > 0 {
        problems.push(Problem::new(
            "netlink sock_diag",
            Cause::Malformed,
            format!("{bad} answers could not be decoded and were skipped"),
        ));
    }
    Ok(agg.finish())
}

/// One dump of every state of `family`, folded into `agg`; with the count
/// of answers that could not be decoded.
fn fold_dump(
    source: &dyn Source,
    family: u8,
    mut agg: Aggregator,
) -> Result<(Aggregator, u64), HostError> {
    let mut bad = 0u64;
    dump(
        source,
        family,
        ALL_STATES,
        |payload| match inet_diag::decode(payload) {
            Ok((m, _)) => agg.add(&SocketView {
                state: m.state_raw,
                timewait_timer: m.is_timewait_sock(),
                expires_ms: u64::from(m.expires_ms),
                local: m.src,
                local_port: m.src_port,
                remote: m.dst,
                remote_port: m.dst_port,
            }),
            Err(_) => bad += 1,
        },
    )?;
    Ok((agg, bad))
}

/// The listening ports of `families`, one dump each; undecodable answers
/// are counted in `bad`.
fn listening_ports(
    source: &dyn Source,
    families: &[u8],
    bad: &mut u64,
) -> Result<Vec<u16>, HostError> {
    let mut listening = Vec::new();
    for &family in families {
        dump(
            source,
            family,
            state_mask(&[TcpState::Listen]),
            |payload| match inet_diag::decode(payload) {
                Ok((m, _)) => listening.push(m.src_port),
                Err(_) => *bad += 1,
            },
        )?;
    }
    Ok(listening)
}

/// The requests that dump both families (one where the kernel takes the
/// both-families request, one per family where it refuses it), and the
/// listening ports, dumped with them.
fn families_and_listening(
    source: &dyn Source,
    bad: &mut u64,
) -> Result<(&'static [u8], Vec<u16>), HostError> {
    match listening_ports(source, &[AF_UNSPEC], bad) {
        Ok(l) => Ok((&[AF_UNSPEC], l)),
        Err(e) if both_families_refused(&e) => {
            let families = &[AF_INET, AF_INET6];
            Ok((families, listening_ports(source, families, bad)?))
        }
        Err(e) => Err(e),
    }
}

/// The listening ports of both families.
pub(crate) fn listening(source: &dyn Source) -> Result<Vec<u16>, HostError> {
    let mut bad = 0u64;
    families_and_listening(source, &mut bad).map(|(_, l)| l)
}

/// Dumps `states` of both families, in one request where the kernel takes
/// it and one per family where it refuses that request; with the
/// listening ports, dumped first the same way.
pub(crate) fn dump_both_families(
    source: &dyn Source,
    states: u32,
    mut on_message: impl FnMut(&[u8]),
) -> Result<Vec<u16>, HostError> {
    // Undecodable listener answers are the caller's to see in its own dump.
    let mut bad = 0u64;
    let (families, listening) = families_and_listening(source, &mut bad)?;
    for &family in families {
        dump(source, family, states, &mut on_message)?;
    }
    Ok(listening)
}

/// How a kernel without the both-families request answers it
/// (`sock_diag_rcv_msg()`): an unknown request type (`EINVAL`), or no
/// handler for it (`EOPNOTSUPP`).
fn both_families_refused(e: &HostError) -> bool {
    matches!(
        e,
        HostError::Netlink {
            op: "dump",
            errno: Errno::EINVAL | Errno::EOPNOTSUPP,
        }
    )
}

fn census_proc(source: &dyn Source, range: PortRange, problems: &mut Vec<Problem>) -> Census {
    let mut texts = Vec::new();
    for name in ["tcp", "tcp6"] {
        match read_text(source, &format!("/proc/thread-self/net/{name}")) {
            Ok(t) => texts.push(t),
            // No tcp6 without IPv6.
            Err(e) if e.kind() == io::ErrorKind::NotFound && name == "tcp6" => {}
            Err(e) => problems.push(io_problem(name, &e)),
        }
    }
    let listening: Vec<u16> = texts
        .iter()
        .flat_map(|t| proc_tcp::parse(t))
        .filter_map(Result::ok)
        .filter(|e| e.state() == Some(TcpState::Listen))
        .map(|e| e.local_port)
        .collect();
    let mut agg = Aggregator::new(range, listening);
    let mut bad = Vec::new();
    for t in &texts {
        for e in proc_tcp::parse(t) {
            match e {
                Ok(e) => agg.add(&SocketView {
                    state: e.state_raw,
                    timewait_timer: e.timer == inet_diag::TIMER_TIMEWAIT,
                    expires_ms: e.timer_ticks * USER_HZ_MS,
                    local: e.local,
                    local_port: e.local_port,
                    remote: e.remote,
                    remote_port: e.remote_port,
                }),
                Err(err) => bad.push(err),
            }
        }
    }
    if let Some(first) = bad.first() {
        problems.push(Problem::new(
            "/proc/net/tcp",
            Cause::Malformed,
            format!("{} lines skipped; first: {first}", bad.len()),
        ));
    }
    agg.finish()
}

/// The newest kernel log lines whose message contains one of `patterns`.
fn matching_kernel_log(
    source: &dyn Source,
    patterns: &[&str],
    out: &mut Vec<String>,
) -> io::Result<()> {
    source.kernel_log(&mut |record| {
        let text = String::from_utf8_lossy(record);
        // "prio,seq,usec,flags;message\n continuation..."
        let message = text.split_once(';').map_or(text.as_ref(), |(_, m)| m);
        let first = message.lines().next().unwrap_or_default();
        if patterns.iter().any(|p| first.contains(p)) {
            out.push(first.to_string());
            if out.len() > KMSG_KEEP {
                out.remove(0);
            }
        }
    })
}

#[cfg(test)]
mod tests;
