//! Taking a snapshot of one namespace.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::time::{SystemTime, UNIX_EPOCH};

use timewait_census::Census;
use timewait_census::aggregate::{Aggregator, SocketView};
use timewait_census::snapshot::{self, CensusSource, Problem, Snapshot};
use timewait_kernel::inet_diag::{self, AF_INET, AF_INET6, state_mask};
use timewait_kernel::{TcpState, proc_tcp};
use timewait_model::ports::{DEFAULT_PORT_RANGE, PortRange};

use crate::netns::{Target, in_namespace};
use crate::{HostError, kmsg, sockdiag};

/// Every state `ss` shows (not the kernel-internal NEW_SYN_RECV).
const ALL_STATES: u32 = ((1 << 14) - 1) & !1 & !(1 << 12);
/// USER_HZ: /proc/net/tcp prints timers in 1/100 s.
const USER_HZ_MS: u64 = 10;

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

/// Reads everything the analysis needs from `target`. Fails only when the
/// namespace cannot be entered (or, with [`Via::Netlink`], when netlink
/// fails); anything else unreadable becomes a [`Problem`] in the snapshot.
///
/// `kernel_log` says whether to read the kernel log: a scan of the whole
/// ring buffer, which `doctor` and `snapshot` need and `status` (and each of
/// its `--watch` refreshes) does not.
pub fn collect(target: &Target, via: Via, kernel_log: bool) -> Result<Snapshot, HostError> {
    let (mut snap, mut problems) = in_namespace(target, || collect_here(via))??;
    if kernel_log {
        match kmsg::matching_lines(snapshot::KERNEL_LOG_PATTERNS) {
            Ok(lines) => snap.kernel_log = lines,
            Err(e) => problems.push(problem("kernel log (/dev/kmsg)", &e.to_string())),
        }
    }
    let uts = nix::sys::utsname::uname();
    snap.kernel_release = uts
        .as_ref()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    snap.hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    snap.namespace = target.label();
    snap.problems = problems;
    Ok(snap)
}

fn problem(what: &str, error: &str) -> Problem {
    Problem {
        what: what.to_string(),
        error: error.to_string(),
    }
}

fn read_text(path: &std::path::Path) -> std::io::Result<String> {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Runs inside the namespace.
fn collect_here(via: Via) -> Result<(Snapshot, Vec<Problem>), HostError> {
    let mut problems = Vec::new();
    let mut sysctls = BTreeMap::new();
    for &(name, required) in snapshot::SYSCTLS {
        let path = format!("/proc/sys/{}", name.replace('.', "/"));
        match read_text(path.as_ref()) {
            Ok(v) => {
                sysctls.insert(name.to_string(), v.trim().to_string());
            }
            Err(e) if e.kind() == ErrorKind::NotFound && !required => {}
            Err(e) => problems.push(problem(name, &e.to_string())),
        }
    }
    let mut files = BTreeMap::new();
    for &name in snapshot::FILES {
        match read_text(format!("/proc/thread-self/net/{name}").as_ref()) {
            Ok(t) => {
                files.insert(name.to_string(), t);
            }
            // No sockstat6 without IPv6: not a problem.
            Err(e) if e.kind() == ErrorKind::NotFound && name == "sockstat6" => {}
            Err(e) => problems.push(problem(name, &e.to_string())),
        }
    }
    let range = sysctls
        .get("net.ipv4.ip_local_port_range")
        .and_then(|r| r.parse::<PortRange>().ok())
        .unwrap_or(DEFAULT_PORT_RANGE);
    let netlink = match via {
        Via::Proc => None,
        Via::Auto | Via::Netlink => Some(census_netlink(range, &mut problems)),
    };
    let (census_source, census) = match netlink {
        Some(Ok(c)) => (CensusSource::Netlink, c),
        Some(Err(e)) if via == Via::Netlink => return Err(e),
        None => (CensusSource::Proc, census_proc(range, &mut problems)),
        Some(Err(e)) => {
            problems.push(problem(
                "netlink sock_diag",
                &format!("{e}; the census was read from /proc/net/tcp{{,6}} instead"),
            ));
            (CensusSource::Proc, census_proc(range, &mut problems))
        }
    };
    let taken_at_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let snap = Snapshot {
        format: snapshot::FORMAT.into(),
        version: snapshot::VERSION,
        taken_at_unix_ms,
        hostname: String::new(),
        kernel_release: String::new(),
        namespace: String::new(),
        sysctls,
        files,
        census_source,
        census,
        kernel_log: Vec::new(),
        problems: Vec::new(),
    };
    Ok((snap, problems))
}

/// Listeners first (so accepted connections are recognised), then everything.
fn census_netlink(range: PortRange, problems: &mut Vec<Problem>) -> Result<Census, HostError> {
    let mut listening = Vec::new();
    let mut bad = 0u64;
    for family in [AF_INET, AF_INET6] {
        let r = sockdiag::dump(family, state_mask(&[TcpState::Listen]), |payload| {
            match inet_diag::decode(payload) {
                Ok((m, _)) => listening.push(m.src_port),
                Err(_) => bad += 1,
            }
        });
        skip_missing_ipv6(family, r)?;
    }
    // Each family's dump walks the whole socket table, so the two run in
    // parallel, each folding into its own aggregator (threads spawned here
    // inherit this thread's network namespace).
    let template = Aggregator::new(range, listening);
    let results: Vec<Result<(Aggregator, u64), HostError>> = std::thread::scope(|s| {
        let handles: Vec<_> = [AF_INET, AF_INET6]
            .into_iter()
            .map(|family| {
                let mut agg = template.empty_like();
                s.spawn(move || {
                    let mut bad = 0u64;
                    let r = sockdiag::dump(family, ALL_STATES, |payload| {
                        match inet_diag::decode(payload) {
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
                        }
                    });
                    skip_missing_ipv6(family, r).map(|()| (agg, bad))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut agg = template;
    for r in results {
        let (part, b) = r?;
        agg.merge(part);
        bad += b;
    }
    if bad > 0 {
        problems.push(problem(
            "netlink sock_diag",
            &format!("{bad} answers could not be decoded and were skipped"),
        ));
    }
    Ok(agg.finish())
}

/// A kernel without IPv6 answers the AF_INET6 dump with an error; that is
/// not a failure of the census.
fn skip_missing_ipv6(family: u8, r: Result<(), HostError>) -> Result<(), HostError> {
    match r {
        Err(HostError::Netlink(m)) if family == AF_INET6 && m.contains("No such file") => Ok(()),
        other => other,
    }
}

fn census_proc(range: PortRange, problems: &mut Vec<Problem>) -> Census {
    let mut texts = Vec::new();
    for name in ["tcp", "tcp6"] {
        match read_text(format!("/proc/thread-self/net/{name}").as_ref()) {
            Ok(t) => texts.push(t),
            Err(e) if e.kind() == ErrorKind::NotFound && name == "tcp6" => {}
            Err(e) => problems.push(problem(name, &e.to_string())),
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
        problems.push(problem(
            "/proc/net/tcp",
            &format!("{} lines skipped; first: {first}", bad.len()),
        ));
    }
    agg.finish()
}
