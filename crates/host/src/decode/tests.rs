//! Collection decisions replayed from recorded bytes: no root, no kernel.

use std::collections::BTreeMap;
use std::net::IpAddr;

use timewait_kernel::inet_diag::{InetDiagMsg, TIMER_TIMEWAIT, encode};
use timewait_kernel::netlink;

use super::*;

/// A dump as recorded: its datagrams, or the errno of the socket call.
type RecordedDump = Result<Vec<Vec<u8>>, Errno>;

/// A host as recorded: file contents (or the error reading them), the
/// datagrams of each dump (or the errno of the socket call), kernel log
/// records.
#[derive(Default)]
struct Recorded {
    files: BTreeMap<String, Result<Vec<u8>, io::ErrorKind>>,
    dumps: BTreeMap<(u8, u32), RecordedDump>,
    kmsg: Option<Result<Vec<Vec<u8>>, io::ErrorKind>>,
}

impl Source for Recorded {
    fn file(&self, path: &str) -> io::Result<Vec<u8>> {
        match self.files.get(path) {
            Some(Ok(b)) => Ok(b.clone()),
            Some(Err(kind)) => Err(io::Error::from(*kind)),
            None => Err(io::Error::from(io::ErrorKind::NotFound)),
        }
    }

    fn dump(
        &self,
        family: u8,
        states: u32,
        datagram: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<(), HostError> {
        match self.dumps.get(&(family, states)) {
            Some(Ok(ds)) => {
                for d in ds {
                    if !datagram(d) {
                        break;
                    }
                }
                Ok(())
            }
            Some(Err(errno)) => Err(HostError::Netlink {
                op: "socket",
                errno: *errno,
            }),
            None => panic!("no dump recorded for family {family} states {states:#x}"),
        }
    }

    fn kernel_log(&self, record: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        match &self.kmsg {
            Some(Ok(rs)) => {
                rs.iter().for_each(|r| record(r));
                Ok(())
            }
            Some(Err(kind)) => Err(io::Error::from(*kind)),
            None => Ok(()),
        }
    }

    fn kernel_release(&self) -> io::Result<String> {
        Ok("6.18.0-test".into())
    }

    fn hostname(&self) -> io::Result<String> {
        Ok("recorded".into())
    }

    fn now_unix_ms(&self) -> u64 {
        1_700_000_000_000
    }
}

const LISTEN: u32 = 1 << 10;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// One `SOCK_DIAG_BY_FAMILY` answer.
fn sock(state: u8, local: (&str, u16), remote: (&str, u16)) -> Vec<u8> {
    let (src, dst) = (ip(local.0), ip(remote.0));
    let msg = InetDiagMsg {
        family: if src.is_ipv4() { AF_INET } else { AF_INET6 },
        state_raw: state,
        timer: if state == 6 { TIMER_TIMEWAIT } else { 0 },
        retrans: 0,
        src_port: local.1,
        dst_port: remote.1,
        src,
        dst,
        interface: 0,
        cookie: 1,
        expires_ms: 30_000,
        rqueue: 0,
        wqueue: 0,
        uid: 0,
        inode: 0,
    };
    netlink::encode(SOCK_DIAG_BY_FAMILY, 2, 1, &encode(&msg))
}

fn done() -> Vec<u8> {
    netlink::encode(NLMSG_DONE, 2, 1, &0i32.to_ne_bytes())
}

fn error(errno: Errno) -> Vec<u8> {
    let mut payload = (-(errno as i32)).to_ne_bytes().to_vec();
    payload.extend_from_slice(&[0u8; 16]);
    netlink::encode(NLMSG_ERROR, 0, 1, &payload)
}

/// The datagrams of a dump: all messages in one, then `NLMSG_DONE`.
fn answers(msgs: &[Vec<u8>]) -> Vec<Vec<u8>> {
    vec![msgs.concat(), done()]
}

const TCP4: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1388 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 60111 1 00000000a23d12eb 100 0 0 10 0
   1: 0100007F:9C41 0100007F:1388 06 00000000:00000000 03:00001766 00000000     0        0 0 3 00000000070b036c
";

/// A healthy namespace: every sysctl and file readable, one listener on
/// :5000 and one TIME_WAIT toward it, IPv4 only in the dumps, whether
/// asked for both families in one request or one family per request.
fn healthy() -> Recorded {
    let mut h = Recorded::default();
    for (name, v) in [
        ("net/ipv4/ip_local_port_range", "32768\t60999\n"),
        ("net/ipv4/ip_local_reserved_ports", "\n"),
        ("net/ipv4/tcp_tw_reuse", "2\n"),
        ("net/ipv4/tcp_timestamps", "1\n"),
        ("net/ipv4/tcp_max_tw_buckets", "131072\n"),
        ("net/ipv4/tcp_fin_timeout", "60\n"),
    ] {
        h.files
            .insert(format!("/proc/sys/{name}"), Ok(v.as_bytes().to_vec()));
    }
    for (name, v) in [
        ("sockstat", "TCP: inuse 1 orphan 0 tw 1 alloc 1 mem 1\n"),
        ("netstat", "TcpExt: TW\nTcpExt: 1\n"),
        ("snmp", "Tcp: ActiveOpens\nTcp: 1\n"),
        ("tcp", TCP4),
    ] {
        h.files.insert(
            format!("/proc/thread-self/net/{name}"),
            Ok(v.as_bytes().to_vec()),
        );
    }
    let listener = sock(10, ("127.0.0.1", 5000), ("0.0.0.0", 0));
    let tw = sock(6, ("127.0.0.1", 40001), ("127.0.0.1", 5000));
    h.dumps.insert(
        (AF_INET, LISTEN),
        Ok(answers(std::slice::from_ref(&listener))),
    );
    h.dumps.insert(
        (AF_INET, ALL_STATES),
        Ok(answers(&[listener.clone(), tw.clone()])),
    );
    h.dumps.insert((AF_INET6, LISTEN), Ok(answers(&[])));
    h.dumps.insert((AF_INET6, ALL_STATES), Ok(answers(&[])));
    h.dumps.insert(
        (AF_UNSPEC, LISTEN),
        Ok(answers(&[both_families(&listener)])),
    );
    h.dumps.insert(
        (AF_UNSPEC, ALL_STATES),
        Ok(answers(&[both_families(&listener), both_families(&tw)])),
    );
    h
}

/// An answer as the both-families request gets it: the same
/// `inet_diag_msg`, under that request's message type.
fn both_families(answer: &[u8]) -> Vec<u8> {
    let mut a = answer.to_vec();
    a[4..6].copy_from_slice(&TCPDIAG_GETSOCK.to_ne_bytes());
    a
}

/// [`healthy`] on a kernel that refuses the both-families request with
/// `errno` (as an error answer).
fn per_family_only(errno: Errno) -> Recorded {
    let mut h = healthy();
    h.dumps.insert((AF_UNSPEC, LISTEN), Ok(vec![error(errno)]));
    h.dumps.remove(&(AF_UNSPEC, ALL_STATES));
    h
}

fn take(h: &Recorded, via: Via) -> Result<Snapshot, HostError> {
    snapshot(h, via, true, "test".into())
}

fn whats(s: &Snapshot) -> Vec<&str> {
    s.problems.iter().map(|p| p.what.as_str()).collect()
}

#[test]
fn a_healthy_host_reads_cleanly_over_netlink() {
    let s = take(&healthy(), Via::Auto).unwrap();
    assert!(s.problems.is_empty(), "{:?}", s.problems);
    assert_eq!(s.census_source, CensusSource::Netlink);
    assert_eq!(s.census.states.get("TIME_WAIT"), Some(&1));
    assert_eq!(s.census.listening_ports, [5000]);
    assert_eq!(
        s.sysctl("net.ipv4.ip_local_port_range"),
        Some("32768\t60999")
    );
    assert_eq!(
        (s.hostname.as_str(), s.namespace.as_str()),
        ("recorded", "test")
    );
    assert_eq!(s.taken_at_unix_ms, 1_700_000_000_000);
}

#[test]
fn one_request_reads_both_families() {
    let mut h = healthy();
    // Only the both-families requests are answered (the recording panics
    // at any other), and their answers mix the families.
    h.dumps.retain(|&(family, _), _| family == AF_UNSPEC);
    let listener = sock(10, ("127.0.0.1", 5000), ("0.0.0.0", 0));
    let tw4 = sock(6, ("127.0.0.1", 40001), ("127.0.0.1", 5000));
    let tw6 = sock(6, ("::1", 40002), ("::1", 6000));
    h.dumps.insert(
        (AF_UNSPEC, ALL_STATES),
        Ok(answers(&[listener, tw4, tw6].map(|a| both_families(&a)))),
    );
    let s = take(&h, Via::Netlink).unwrap();
    assert!(s.problems.is_empty(), "{:?}", s.problems);
    assert_eq!(s.census.states.get("TIME_WAIT"), Some(&2));
    let mut remotes: Vec<String> = s
        .census
        .destinations
        .iter()
        .map(|d| format!("{}:{}", d.remote_ip, d.remote_port))
        .collect();
    remotes.sort();
    assert_eq!(remotes, ["127.0.0.1:5000", "::1:6000"]);
}

#[test]
fn a_kernel_refusing_the_both_families_request_is_read_one_family_at_a_time() {
    let both = take(&healthy(), Via::Netlink).unwrap();
    // An unknown request type (EINVAL), no handler for it (EOPNOTSUPP).
    for errno in [Errno::EINVAL, Errno::EOPNOTSUPP] {
        let s = take(&per_family_only(errno), Via::Netlink).unwrap();
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        assert_eq!(s.census, both.census);
    }
    // Any other answer to it is the census's failure, not a reason to retry.
    let mut h = healthy();
    h.dumps
        .insert((AF_UNSPEC, LISTEN), Ok(vec![error(Errno::ENOBUFS)]));
    assert!(matches!(
        take(&h, Via::Netlink),
        Err(HostError::Netlink {
            errno: Errno::ENOBUFS,
            ..
        })
    ));
}

#[test]
fn netlink_refused_falls_back_to_proc_and_says_so() {
    let mut h = healthy();
    h.dumps.insert((AF_UNSPEC, LISTEN), Err(Errno::EPERM));
    let s = take(&h, Via::Auto).unwrap();
    assert_eq!(s.census_source, CensusSource::Proc);
    assert_eq!(s.census.states.get("TIME_WAIT"), Some(&1));
    let p = s.problem("netlink sock_diag").unwrap();
    assert_eq!(p.cause, Cause::Permission);
    assert!(p.error.contains("/proc/net/tcp"), "{}", p.error);
    // No tcp6 file (no IPv6) is not a problem.
    assert_eq!(whats(&s), ["netlink sock_diag"]);
}

#[test]
fn netlink_only_reports_the_errno_instead_of_falling_back() {
    let mut h = healthy();
    h.dumps.insert((AF_UNSPEC, LISTEN), Err(Errno::EPERM));
    match take(&h, Via::Netlink) {
        Err(HostError::Netlink { op, errno }) => assert_eq!((op, errno), ("socket", Errno::EPERM)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_kernel_without_ipv6_is_not_a_failure() {
    let mut h = per_family_only(Errno::EOPNOTSUPP);
    // What a kernel without IPv6 answers to an AF_INET6 dump.
    h.dumps
        .insert((AF_INET6, LISTEN), Ok(vec![error(Errno::ENOENT)]));
    h.dumps
        .insert((AF_INET6, ALL_STATES), Ok(vec![error(Errno::ENOENT)]));
    let s = take(&h, Via::Netlink).unwrap();
    assert!(s.problems.is_empty(), "{:?}", s.problems);
    assert_eq!(s.census.states.get("TIME_WAIT"), Some(&1));
}

#[test]
fn an_error_answer_to_the_dump_keeps_its_errno() {
    let mut h = healthy();
    h.dumps
        .insert((AF_UNSPEC, ALL_STATES), Ok(vec![error(Errno::ENOBUFS)]));
    match take(&h, Via::Netlink) {
        Err(HostError::Netlink { op, errno }) => assert_eq!((op, errno), ("dump", Errno::ENOBUFS)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_dump_cut_short_is_not_taken_for_a_complete_census() {
    let mut h = healthy();
    let tw = sock(6, ("127.0.0.1", 40001), ("127.0.0.1", 5000));
    // Sockets, then the socket closes: no NLMSG_DONE.
    h.dumps.insert((AF_UNSPEC, ALL_STATES), Ok(vec![tw]));
    assert!(matches!(
        take(&h, Via::Netlink),
        Err(HostError::DumpTruncated(_))
    ));
    let s = take(&h, Via::Auto).unwrap();
    assert_eq!(s.census_source, CensusSource::Proc);
    assert!(
        s.problem("netlink sock_diag")
            .unwrap()
            .error
            .contains("NLMSG_DONE")
    );
}

#[test]
fn a_truncated_message_is_a_decode_error_not_a_panic() {
    let mut h = healthy();
    let mut bytes = sock(6, ("127.0.0.1", 40001), ("127.0.0.1", 5000));
    bytes.truncate(30);
    h.dumps.insert((AF_UNSPEC, ALL_STATES), Ok(vec![bytes]));
    assert!(matches!(
        take(&h, Via::Netlink),
        Err(HostError::NetlinkMessage(_))
    ));
}

#[test]
fn undecodable_answers_are_counted() {
    let mut h = healthy();
    let short = netlink::encode(SOCK_DIAG_BY_FAMILY, 2, 1, &[0u8; 20]);
    let tw = sock(6, ("127.0.0.1", 40002), ("127.0.0.1", 5000));
    h.dumps.insert(
        (AF_UNSPEC, ALL_STATES),
        Ok(answers(&[short.clone(), tw, short])),
    );
    let s = take(&h, Via::Netlink).unwrap();
    assert_eq!(s.census.states.get("TIME_WAIT"), Some(&1));
    let p = s.problem("netlink sock_diag").unwrap();
    assert_eq!(p.cause, Cause::Malformed);
    assert!(p.error.starts_with("2 answers"), "{}", p.error);
}

#[test]
fn a_malformed_proc_line_is_counted_and_the_rest_kept() {
    let mut h = healthy();
    let text = format!("{TCP4}   2: garbage\n");
    h.files
        .insert("/proc/thread-self/net/tcp".into(), Ok(text.into_bytes()));
    let s = take(&h, Via::Proc).unwrap();
    assert_eq!(s.census.states.get("TIME_WAIT"), Some(&1));
    let p = s.problem("/proc/net/tcp").unwrap();
    assert_eq!(p.cause, Cause::Malformed);
    assert!(
        p.error.starts_with("1 lines skipped; first:"),
        "{}",
        p.error
    );
}

#[test]
fn an_unreadable_sysctl_is_a_permission_problem_and_a_missing_optional_one_is_not() {
    let mut h = healthy();
    h.files.insert(
        "/proc/sys/net/ipv4/tcp_tw_reuse".into(),
        Err(io::ErrorKind::PermissionDenied),
    );
    let s = take(&h, Via::Auto).unwrap();
    assert_eq!(s.sysctl("net.ipv4.tcp_tw_reuse"), None);
    assert_eq!(whats(&s), ["net.ipv4.tcp_tw_reuse"]);
    assert_eq!(s.problems[0].cause, Cause::Permission);
    // A required sysctl that is missing is reported; an optional one
    // (tcp_tw_reuse_delay, before 6.14) is not.
    h.files.remove("/proc/sys/net/ipv4/tcp_fin_timeout");
    let s = take(&h, Via::Auto).unwrap();
    assert_eq!(
        s.problem("net.ipv4.tcp_fin_timeout").unwrap().cause,
        Cause::Missing
    );
    assert!(s.problem("net.ipv4.tcp_tw_reuse_delay").is_none());
}

#[test]
fn kernel_log_keeps_matching_lines_and_reports_a_refusal() {
    let mut h = healthy();
    h.kmsg = Some(Ok(vec![
        b"4,100,5,-;TCP: time wait bucket table overflow\n".to_vec(),
        b"6,101,6,-;eth0: link up\n".to_vec(),
    ]));
    let s = take(&h, Via::Auto).unwrap();
    assert_eq!(s.kernel_log, ["TCP: time wait bucket table overflow"]);
    h.kmsg = Some(Err(io::ErrorKind::PermissionDenied));
    let s = take(&h, Via::Auto).unwrap();
    let p = s.problem("kernel log (/dev/kmsg)").unwrap();
    assert_eq!(p.cause, Cause::Permission);
}

#[test]
fn an_unreadable_port_range_is_kept_raw_for_the_analysis_to_judge() {
    let mut h = healthy();
    h.files.insert(
        "/proc/sys/net/ipv4/ip_local_port_range".into(),
        Ok(b"banana\n".to_vec()),
    );
    let s = take(&h, Via::Auto).unwrap();
    // Collection does not judge values: the raw text goes into the snapshot.
    assert_eq!(s.sysctl("net.ipv4.ip_local_port_range"), Some("banana"));
    assert!(s.problems.is_empty(), "{:?}", s.problems);
}
