//! The tally over scripted event sequences, each the order the kernel
//! was seen to produce (see `timewait trace`'s namespace tests for the same
//! against the real kernel).

use std::net::{IpAddr, Ipv4Addr};

use crate::TraceReport;
use crate::event::tests::{formats, record};
use crate::event::{Comm, Context, Decoder, Event, StateChange, Timed};
use crate::ring::tests::{HEADER_PAGE, PageBuilder};
use crate::ring::{PageLayout, parse_page};
use crate::tally::{GRACE_NS, Lookup, ProcessInfo, Scope, Tally};
use timewait_kernel::TcpState::{self, *};

const NS: u64 = 4026532000;
const OTHER_NS: u64 = 4026531840;
const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Threads 100..199 are process 100 ("app") in NS; 200.. are "srv" in NS;
/// 300.. are "other" in another namespace; 500..599 are zombies (exited,
/// their namespace unreadable); the rest have exited. Every namespace's
/// ephemeral range is the kernel's default.
struct Host;

impl Lookup for Host {
    fn process(&mut self, tid: u32) -> Option<ProcessInfo> {
        if (500..600).contains(&tid) {
            return Some(ProcessInfo {
                pid: tid,
                comm: Some("zombie".into()),
                netns: None,
            });
        }
        let (pid, comm, netns) = match tid {
            100..=199 => (100, "app", NS),
            200..=299 => (200, "srv", NS),
            300..=399 => (300, "other", OTHER_NS),
            _ => return None,
        };
        Some(ProcessInfo {
            pid,
            comm: Some(comm.into()),
            netns: Some(netns),
        })
    }
    fn port_range(&mut self, _tid: u32) -> Option<(u16, u16)> {
        Some((32768, 60999))
    }
}

struct Script {
    events: Vec<Timed>,
}

impl Script {
    fn new() -> Script {
        Script { events: Vec::new() }
    }
    fn push(&mut self, event: Event) -> &mut Script {
        let ts = self.events.len() as u64 * 10;
        self.events.push(Timed { ts, event });
        self
    }
    fn exit(&mut self, tid: u32, ret: i64) -> &mut Script {
        self.push(Event::ConnectExit { tid, ret })
    }
    fn reset(&mut self, sk: u64) -> &mut Script {
        self.push(Event::Reset { sk })
    }
    /// `parent` forked a process `child` named "app".
    fn fork(&mut self, parent: u32, child: u32) -> &mut Script {
        self.push(Event::NewTask {
            parent,
            child,
            thread: false,
            new_netns: false,
            comm: Comm::from_bytes(b"app"),
        })
    }
    #[allow(clippy::too_many_arguments)]
    fn state(
        &mut self,
        context: Context,
        tid: u32,
        sk: u64,
        old: TcpState,
        new: TcpState,
        local: u16,
        remote: u16,
    ) -> &mut Script {
        self.push(Event::State(StateChange {
            context,
            tid,
            sk,
            old,
            new,
            local: (IpAddr::V4(LO), local),
            remote: (IpAddr::V4(LO), remote),
        }))
    }
    fn report(&self, scope: Scope) -> TraceReport {
        self.report_with(scope, true)
    }
    fn report_with(&self, scope: Scope, syscalls: bool) -> TraceReport {
        let mut t = Tally::new(scope).with_syscalls(syscalls);
        for e in &self.events {
            t.push(*e);
        }
        t.finish(&mut Host);
        t.report(1.0, "test", 0, 5, &|ns| format!("net:[{ns}]"))
    }
}

use Context::{Interrupt, Task};

/// A connect toward port 80 that succeeds and is closed first.
fn connect_and_close(s: &mut Script, tid: u32, sk: u64, port: u16) {
    s.state(Task, tid, sk, Close, SynSent, 0, 80).state(
        Task,
        tid,
        sk,
        Established,
        FinWait1,
        port,
        80,
    );
}

/// A connect that finds no free port: connect() says EADDRNOTAVAIL.
fn connect_no_port(s: &mut Script, tid: u32, sk: u64) {
    s.state(Task, tid, sk, Close, SynSent, 0, 80)
        .state(Task, tid, sk, SynSent, Close, 0, 80)
        .exit(tid, -99);
}

#[test]
fn n_connects_with_m_eaddrnotavail_give_n_m_and_n_minus_m_first_closes() {
    let mut s = Script::new();
    for i in 0..7 {
        connect_and_close(&mut s, 101, 0x1000 + i, 40000 + i as u16);
    }
    for i in 0..3 {
        connect_no_port(&mut s, 102, 0x2000 + i);
    }
    let r = s.report(Scope::Netns(NS));
    assert_eq!(r.processes.len(), 1);
    let p = &r.processes[0];
    assert_eq!((p.pid, p.comm.as_deref()), (100, Some("app")));
    assert_eq!(p.netns.as_deref(), Some("net:[4026532000]"));
    assert_eq!(p.connects, 10);
    assert_eq!(p.errors.get("EADDRNOTAVAIL"), Some(&3));
    assert_eq!(p.closed_first, 7);
    assert_eq!(p.server_closed_first, 0);
    let d = &p.destinations[0];
    assert_eq!((d.remote_ip.as_str(), d.remote_port), ("127.0.0.1", 80));
    assert_eq!((d.connects, d.closed_first), (10, 7));
    assert_eq!(d.errors.get("EADDRNOTAVAIL"), Some(&3));
    assert_eq!(r.totals.connects, 10);
    assert_eq!(r.unattributed, 0);
}

#[test]
fn a_non_blocking_connect_without_a_port_is_eaddrnotavail_without_its_errno() {
    // tokio's connect(): EADDRNOTAVAIL is returned at once, but even if the
    // exit were missed the port left unchosen says it.
    let mut s = Script::new();
    s.state(Task, 101, 1, Close, SynSent, 0, 80)
        .state(Task, 101, 1, SynSent, Close, 0, 80);
    let p = &s.report(Scope::Netns(NS)).processes[0];
    assert_eq!(p.errors.get("EADDRNOTAVAIL"), Some(&1));
}

#[test]
fn refused_connects_count_once_whichever_way_the_kernel_reports_them() {
    let mut s = Script::new();
    // blocking: reset, SYN_SENT→CLOSE, then connect() returns ECONNREFUSED
    s.state(Task, 101, 1, Close, SynSent, 0, 81)
        .reset(1)
        .state(Task, 101, 1, SynSent, Close, 40001, 81)
        .exit(101, -111);
    // non-blocking on loopback: the reset is processed before connect()
    // returns EINPROGRESS (not traced)
    s.state(Task, 101, 2, Close, SynSent, 0, 81)
        .reset(2)
        .state(Task, 101, 2, SynSent, Close, 40002, 81);
    // non-blocking across a network: the reset comes in a softirq
    s.state(Task, 101, 3, Close, SynSent, 0, 81)
        .reset(3)
        .state(Interrupt, 999, 3, SynSent, Close, 40003, 81);
    let r = s.report(Scope::Netns(NS));
    let p = &r.processes[0];
    assert_eq!(p.connects, 3);
    assert_eq!(p.errors.get("ECONNREFUSED"), Some(&3), "{:?}", p.errors);
    assert_eq!(p.error_count(), 3);
}

#[test]
fn failures_without_a_reset_are_timeouts_or_abandoned_and_connects_errno_wins() {
    let mut s = Script::new();
    s.state(Task, 101, 1, Close, SynSent, 0, 82)
        .state(Interrupt, 0, 1, SynSent, Close, 40001, 82);
    s.state(Task, 101, 2, Close, SynSent, 0, 82)
        .state(Task, 103, 2, SynSent, Close, 40002, 82);
    // an ICMP error ends a blocking connect: the errno says what it was
    s.state(Task, 104, 4, Close, SynSent, 0, 82)
        .state(Interrupt, 0, 4, SynSent, Close, 40004, 82)
        .exit(104, -113);
    // a connect that succeeds and is closed first is no failure
    s.state(Task, 101, 3, Close, SynSent, 0, 82).state(
        Task,
        101,
        3,
        Established,
        FinWait1,
        40003,
        82,
    );
    let p = &s.report(Scope::Netns(NS)).processes[0];
    assert_eq!(p.errors.get("ETIMEDOUT"), Some(&1), "{:?}", p.errors);
    assert_eq!(p.errors.get("abandoned"), Some(&1));
    assert_eq!(p.errors.get("EHOSTUNREACH"), Some(&1));
    assert_eq!(p.error_count(), 3);
    assert_eq!((p.connects, p.closed_first), (4, 1));
}

/// Thread 101's state change of socket 1 toward port 80, at `ts`.
fn change(ts: u64, old: TcpState, new: TcpState, local: u16) -> Timed {
    Timed {
        ts,
        event: Event::State(StateChange {
            context: Task,
            tid: 101,
            sk: 1,
            old,
            new,
            local: (IpAddr::V4(LO), local),
            remote: (IpAddr::V4(LO), 80),
        }),
    }
}

#[test]
fn an_errno_arriving_after_the_grace_is_not_counted_twice() {
    let mut t = Tally::new(Scope::Netns(NS)).with_syscalls(true);
    t.push(change(10, Close, SynSent, 0));
    t.push(change(20, SynSent, Close, 0));
    t.advance(20 + GRACE_NS, &mut Host);
    let errors =
        |t: &Tally| t.report(1.0, "t", 0, 5, &|_| String::new()).processes[0].error_count();
    assert_eq!(errors(&t), 1, "settled once the grace ran out");
    t.push(Timed {
        ts: 30 + GRACE_NS,
        event: Event::ConnectExit { tid: 101, ret: -99 },
    });
    t.finish(&mut Host);
    assert_eq!(errors(&t), 1);
}

#[test]
fn the_server_that_closes_first_is_charged_server_side_and_the_client_nothing() {
    let mut s = Script::new();
    s.state(Task, 101, 1, Close, SynSent, 0, 8080)
        // the server closes first; the client's socket sees the FIN
        .state(Task, 201, 2, Established, FinWait1, 8080, 40000)
        .state(Interrupt, 201, 1, Established, CloseWait, 40000, 8080);
    let r = s.report(Scope::Netns(NS));
    let srv = r.processes.iter().find(|p| p.pid == 200).unwrap();
    assert_eq!((srv.server_closed_first, srv.closed_first), (1, 0));
    let app = r.processes.iter().find(|p| p.pid == 100).unwrap();
    assert_eq!(
        (app.connects, app.closed_first, app.error_count()),
        (1, 0, 0)
    );
}

#[test]
fn sockets_opened_before_the_trace_are_told_apart_by_their_local_port() {
    let mut s = Script::new();
    // a pooled connection from an ephemeral port, and an accepted one on 8080
    s.state(Task, 101, 7, Established, FinWait1, 45000, 5432)
        .state(Task, 201, 8, Established, FinWait1, 8080, 50000);
    let r = s.report(Scope::Netns(NS));
    let app = r.processes.iter().find(|p| p.pid == 100).unwrap();
    assert_eq!((app.closed_first, app.server_closed_first), (1, 0));
    assert_eq!(app.destinations[0].remote_port, 5432);
    let srv = r.processes.iter().find(|p| p.pid == 200).unwrap();
    assert_eq!((srv.closed_first, srv.server_closed_first), (0, 1));
}

#[test]
fn interrupt_context_is_never_charged_to_the_thread_that_happened_to_run() {
    let mut s = Script::new();
    // softirq work done on app's time: an unknown socket's close
    s.state(Interrupt, 101, 10, Established, FinWait1, 5000, 6000);
    let r = s.report(Scope::Netns(NS));
    assert!(r.processes.is_empty(), "{:?}", r.processes);
    assert_eq!((r.unattributed, r.unplaced), (0, 1));
}

#[test]
fn other_namespaces_are_left_out_and_exited_processes_are_counted_as_unplaced() {
    let mut s = Script::new();
    connect_and_close(&mut s, 301, 1, 40000);
    connect_and_close(&mut s, 401, 2, 40001);
    let r = s.report(Scope::Netns(NS));
    assert!(r.processes.is_empty());
    assert_eq!(
        (r.unattributed, r.unplaced),
        (0, 2),
        "the SYN_SENT and the first close of the exited one"
    );
    let all = s.report(Scope::All);
    assert_eq!(all.processes.len(), 2);
    assert_eq!((all.unattributed, all.unplaced), (0, 0));
    let gone = all.processes.iter().find(|p| p.pid == 401).unwrap();
    assert_eq!((gone.comm.as_ref(), gone.netns.as_ref()), (None, None));
    assert_eq!(gone.closed_first, 1);
}

/// Threads 400.. have exited by the time they are looked up: each is
/// placed by its fork, unless it was made in a new network namespace, its
/// parent is not in scope, it was seen to call setns or unshare, or it
/// exec'd where those are not traced.
#[test]
fn an_exited_task_is_placed_by_its_fork_unless_it_may_have_left() {
    let mut s = Script::new();
    let fork = |s: &mut Script, parent, child, thread, new_netns| {
        s.push(Event::NewTask {
            parent,
            child,
            thread,
            new_netns,
            comm: Comm::from_bytes(b"app"),
        });
    };
    fork(&mut s, 101, 401, false, false); // a child process of app
    connect_and_close(&mut s, 401, 1, 40000);
    fork(&mut s, 101, 402, true, false); // a thread of app
    connect_and_close(&mut s, 402, 2, 40001);
    fork(&mut s, 401, 406, false, false); // a child of the child
    connect_and_close(&mut s, 406, 6, 40005);
    fork(&mut s, 101, 403, false, false);
    s.push(Event::Renamed {
        tid: 403,
        comm: Comm::from_bytes(b"curl"),
    }); // it exec'd: `ip netns exec`?
    connect_and_close(&mut s, 403, 3, 40002);
    fork(&mut s, 101, 501, false, false); // exited, not yet reaped
    connect_and_close(&mut s, 501, 7, 40006);
    fork(&mut s, 101, 404, false, true); // clone(CLONE_NEWNET)
    connect_and_close(&mut s, 404, 4, 40003);
    fork(&mut s, 301, 405, false, false); // other's child
    connect_and_close(&mut s, 405, 5, 40004);
    fork(&mut s, 101, 407, false, false);
    s.push(Event::LeavesNetns { tid: 407 }); // `ip netns exec` switching
    connect_and_close(&mut s, 407, 8, 40007);

    let r = s.report_with(Scope::Netns(NS), false);
    let of = |r: &TraceReport, pid: u32| {
        r.processes
            .iter()
            .find(|p| p.pid == pid)
            .map(|p| (p.comm.clone(), p.netns.clone(), p.closed_first))
    };
    let placed = Some((Some("app".to_string()), Some(format!("net:[{NS}]")), 1));
    assert_eq!(of(&r, 401), placed);
    assert_eq!(of(&r, 406), placed);
    assert_eq!(of(&r, 100), placed, "the thread's close is its process's");
    let zombie = Some((Some("zombie".to_string()), Some(format!("net:[{NS}]")), 1));
    assert_eq!(of(&r, 501), zombie, "its namespace from its fork");
    for gone in [402, 403, 404, 405, 407] {
        assert_eq!(of(&r, gone), None, "{gone}");
    }
    assert_eq!(
        r.unplaced, 8,
        "the SYN_SENT and first close of 403, 404, 405, 407"
    );
    // With every namespace in scope the exec'd one is named, its
    // namespace unknown.
    let all = s.report_with(Scope::All, false);
    assert_eq!(of(&all, 401), placed);
    assert_eq!(of(&all, 403), Some((Some("curl".into()), None, 1)));
    // Where setns and unshare are traced, an exec alone keeps the
    // namespace; the one seen calling setns is still unplaced.
    let r = s.report_with(Scope::Netns(NS), true);
    let curl = Some((Some("curl".to_string()), Some(format!("net:[{NS}]")), 1));
    assert_eq!(of(&r, 403), curl);
    assert_eq!(of(&r, 407), None);
    assert_eq!(r.unplaced, 6, "404, 405, 407");
}

/// [`Host`], counting the lookups of each thread.
struct Counting(std::collections::HashMap<u32, u32>);

impl Lookup for Counting {
    fn process(&mut self, tid: u32) -> Option<ProcessInfo> {
        *self.0.entry(tid).or_default() += 1;
        Host.process(tid)
    }
    fn port_range(&mut self, tid: u32) -> Option<(u16, u16)> {
        Host.port_range(tid)
    }
}

#[test]
fn a_parent_that_only_forks_is_looked_up_once_until_it_execs() {
    for scope in [Scope::Netns(NS), Scope::All] {
        let mut s = Script::new();
        for child in 1_000..1_100 {
            s.fork(150, child);
            connect_and_close(&mut s, child, u64::from(child), 40000);
        }
        s.push(Event::Renamed {
            tid: 150,
            comm: Comm::from_bytes(b"app2"),
        });
        s.fork(150, 2_000);
        // Its id given to a new task: looked up again.
        s.fork(101, 150);
        s.fork(150, 2_001);
        let mut t = Tally::new(scope);
        let mut lookup = Counting(Default::default());
        for e in &s.events {
            t.push(*e);
        }
        t.finish(&mut lookup);
        assert_eq!(lookup.0.get(&150), Some(&3), "{scope:?}");
        let r = t.report(1.0, "t", 0, 5, &|ns| format!("net:[{ns}]"));
        assert_eq!(r.totals.closed_first, 100, "{scope:?}");
    }
}

#[test]
fn the_forks_remembered_are_bounded_and_the_oldest_go_first() {
    let mut s = Script::new();
    for child in 1_000..1_000 + 65_537 {
        s.fork(101, child);
    }
    connect_and_close(&mut s, 1_000, 1, 40000); // the oldest: forgotten
    connect_and_close(&mut s, 1_000 + 65_536, 2, 40001); // the newest
    let r = s.report(Scope::Netns(NS));
    let pids: Vec<u32> = r.processes.iter().map(|p| p.pid).collect();
    assert_eq!(pids, [1_000 + 65_536]);
    assert_eq!(r.unplaced, 2);

    // An id used again: the old entry's eviction leaves the new one.
    let mut s = Script::new();
    s.fork(101, 7_000);
    for child in 10_000..10_000 + 65_534 {
        s.fork(101, child);
    }
    s.fork(101, 7_000); // the same id, a new task: now the newest
    s.fork(101, 90_000); // one over: the first entry for 7000 goes
    connect_and_close(&mut s, 7_000, 1, 40000);
    let r = s.report(Scope::Netns(NS));
    let pids: Vec<u32> = r.processes.iter().map(|p| p.pid).collect();
    assert_eq!((pids.as_slice(), r.unplaced), ([7_000].as_slice(), 0));
}

#[test]
fn resets_are_counted_and_leave_no_first_close() {
    let mut s = Script::new();
    s.state(Task, 101, 1, Close, SynSent, 0, 80)
        .state(Task, 101, 1, Established, Close, 40000, 80); // SO_LINGER 0
    s.state(Task, 101, 2, Close, SynSent, 0, 80).state(
        Interrupt,
        7,
        2,
        Established,
        Close,
        40001,
        80,
    ); // reset received
    let p = &s.report(Scope::Netns(NS)).processes[0];
    assert_eq!((p.resets, p.closed_first), (2, 0));
}

#[test]
fn processes_sort_by_errors_then_first_closes() {
    let mut s = Script::new();
    for i in 0..5 {
        connect_and_close(&mut s, 201, 0x100 + i, 41000 + i as u16);
    }
    connect_no_port(&mut s, 101, 0x300);
    let r = s.report(Scope::Netns(NS));
    assert_eq!(
        r.processes.iter().map(|p| p.pid).collect::<Vec<_>>(),
        [100, 200]
    );
}

#[test]
fn events_from_several_buffers_apply_in_time_order_up_to_the_watermark() {
    let mut t = Tally::new(Scope::Netns(NS));
    // CPU 1's buffer, read first, holds the later event
    t.push(change(30, Established, FinWait1, 40000));
    // CPU 0's, read second
    t.push(change(20, Close, SynSent, 0));
    t.advance(25, &mut Host);
    let r = t.report(1.0, "t", 0, 5, &|_| String::new());
    assert_eq!(
        (r.processes[0].connects, r.processes[0].closed_first),
        (1, 0)
    );
    t.advance(100, &mut Host);
    let r = t.report(1.0, "t", 0, 5, &|_| String::new());
    assert_eq!(r.processes[0].closed_first, 1);
    assert_eq!(r.processes[0].destinations[0].connects, 1);
}

#[test]
fn pages_of_real_record_layouts_decode_into_the_tally() {
    let d = Decoder::new(&formats()).unwrap();
    let layout = PageLayout::parse(HEADER_PAGE).unwrap();
    let page = PageBuilder::new(1_000)
        .record(1, &record::state(false, 101, 5, 7, 2, (LO, 0), (LO, 80)))
        .record(1, &record::state(false, 101, 5, 2, 7, (LO, 0), (LO, 80)))
        .record(1, &record::exit(101, -99))
        .record(1, &record::state(false, 101, 6, 7, 2, (LO, 0), (LO, 80)))
        .record(
            1,
            &record::state(false, 101, 6, 1, 4, (LO, 40000), (LO, 80)),
        )
        // a state change cut short: counted, never guessed at
        .record(
            1,
            &record::state(false, 101, 7, 1, 4, (LO, 40000), (LO, 80))[..16],
        )
        .finish(false);
    let mut t = Tally::new(Scope::Netns(NS));
    let info = parse_page(&page, &layout, |ts, r| match d.decode(r) {
        Some(event) => t.push(Timed { ts, event }),
        None => t.undecoded(),
    })
    .unwrap();
    assert_eq!(info.records, 6);
    t.finish(&mut Host);
    let r = t.report(1.0, "t", 0, 5, &|_| String::new());
    let p = &r.processes[0];
    assert_eq!((p.connects, p.closed_first), (2, 1));
    assert_eq!(p.errors.get("EADDRNOTAVAIL"), Some(&1));
    assert_eq!((r.events, r.records_undecoded), (5, 1));
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["processes"][0]["errors"]["EADDRNOTAVAIL"], 1);
    assert_eq!(json["events_lost"], 0);
}

#[test]
fn the_error_the_kernel_set_on_the_socket_names_an_async_failure() {
    let mut s = Script::new();
    // ICMP host unreachable during a non-blocking handshake
    s.state(Task, 101, 1, Close, SynSent, 0, 82)
        .push(Event::Error {
            errno: 113,
            local: (IpAddr::V4(LO), 40001),
            remote: (IpAddr::V4(LO), 82),
        })
        .state(Interrupt, 0, 1, SynSent, Close, 40001, 82);
    // its retries ran out
    s.state(Task, 101, 2, Close, SynSent, 0, 82)
        .push(Event::Error {
            errno: 110,
            local: (IpAddr::V4(LO), 40002),
            remote: (IpAddr::V4(LO), 82),
        })
        .state(Interrupt, 0, 2, SynSent, Close, 40002, 82);
    let p = &s.report(Scope::Netns(NS)).processes[0];
    assert_eq!(p.errors.get("EHOSTUNREACH"), Some(&1), "{:?}", p.errors);
    assert_eq!(p.errors.get("ETIMEDOUT"), Some(&1));
}

#[test]
fn a_failed_socket_whose_address_is_reused_at_once_is_still_counted() {
    // Without --syscalls, and with it: the next socket gets the same
    // kernel address before the first one's failure is settled.
    for syscalls in [false, true] {
        let mut t = Tally::new(Scope::Netns(NS)).with_syscalls(syscalls);
        for i in 0..5u64 {
            for (k, (old, new)) in [(Close, SynSent), (SynSent, Close)].into_iter().enumerate() {
                t.push(change(i * 10 + k as u64, old, new, 0));
            }
        }
        t.finish(&mut Host);
        let r = t.report(1.0, "t", 0, 5, &|_| String::new());
        assert_eq!(
            r.processes[0].errors.get("EADDRNOTAVAIL"),
            Some(&5),
            "syscalls {syscalls}"
        );
    }
}
