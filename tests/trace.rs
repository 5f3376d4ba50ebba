//! `timewait trace` against the real kernel: peers in test namespaces
//! whose own counts the tracer's must equal, a process in another
//! namespace left out, server-side first closes charged to the server, and
//! tracefs left as it was found (also after SIGINT).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::harness::netns::Netns;
use crate::harness::peer::{Peer, running_out};

const TRACEFS: &str = "/sys/kernel/tracing";

/// A running `timewait trace`, started and seen to be recording.
struct Tracer {
    child: Child,
}

fn instances() -> Vec<String> {
    std::fs::read_dir(Path::new(TRACEFS).join("instances"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with("timewait-"))
                .collect()
        })
        .unwrap_or_default()
}

/// A trace that runs until it is stopped, its report in JSON.
const TRACE: [&str; 4] = ["trace", "--duration", "120", "--json"];

impl Tracer {
    /// `timewait trace ARGS` until stopped.
    fn start(args: &[&str]) -> Tracer {
        Tracer::spawn(&[&TRACE[..], args].concat())
    }

    /// `timewait ARGS`, once its tracing instance records.
    fn spawn(args: &[&str]) -> Tracer {
        let mut c = Command::new(env!("CARGO_BIN_EXE_timewait"));
        c.args(args);
        Tracer::run(c)
    }

    /// `timewait trace ARGS` without the capabilities BPF needs (as in a
    /// container granted tracefs but not BPF); setpriv execs it, so the
    /// pid is timewait's.
    fn start_without_bpf(args: &[&str]) -> Tracer {
        let mut c = Command::new("setpriv");
        c.args([
            "--bounding-set=-bpf,-perfmon,-sys_admin",
            "--inh-caps=-bpf,-perfmon,-sys_admin",
            "--",
            env!("CARGO_BIN_EXE_timewait"),
        ])
        .args(TRACE)
        .args(args);
        Tracer::run(c)
    }

    fn run(mut c: Command) -> Tracer {
        let child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if recording(child.id()) {
            return Tracer { child };
        }
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        panic!("trace {} did not start recording", child.id());
    }

    /// SIGINT, then the report it prints.
    fn stop(self) -> Value {
        self.stop_saying().0
    }

    /// SIGINT, then the report and what it said on stderr.
    fn stop_saying(self) -> (Value, String) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        self.end(&[0])
    }

    /// The document it prints when it ends by itself, with one of `codes`.
    fn finish(self, codes: &[i32]) -> Value {
        self.end(codes).0
    }

    fn end(self, codes: &[i32]) -> (Value, String) {
        let pid = self.child.id();
        let out = self.child.wait_with_output().unwrap();
        assert!(
            out.status.code().is_some_and(|c| codes.contains(&c)),
            "trace: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !instances()
                .iter()
                .any(|i| i.starts_with(&format!("timewait-{pid}-"))),
            "instance left behind: {:?}",
            instances()
        );
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        (serde_json::from_slice(&out.stdout).unwrap(), said)
    }
}

/// Waits (bounded) until the instance of `timewait` process `pid`
/// records: its events enabled and then tracing switched on (a new
/// instance starts with tracing_on 1, which timewait turns off while it
/// sets the instance up).
fn recording(pid: u32) -> bool {
    let dir = PathBuf::from(format!("{TRACEFS}/instances/timewait-{pid}-0"));
    let is_one = |p: PathBuf| std::fs::read_to_string(p).is_ok_and(|s| s.trim() == "1");
    for _ in 0..1000 {
        let enabled = ["tcp/tcp_receive_reset", "sock/inet_sk_error_report"]
            .iter()
            .all(|e| is_one(dir.join("events").join(e).join("enable")));
        // State changes: the instance's event, or the BPF filter attached
        // (after tracing_on, so last).
        let states =
            is_one(dir.join("events/sock/inet_sock_set_state/enable")) || bpf_attached(pid);
        if enabled && states && is_one(dir.join("tracing_on")) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

/// Whether process `pid` holds a BPF link to the raw tracepoint
/// `inet_sock_set_state` (its fdinfo says so).
fn bpf_attached(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo")).is_ok_and(|d| {
        d.flatten().any(|e| {
            std::fs::read_to_string(e.path()).is_ok_and(|s| {
                s.contains("link_type:\traw_tracepoint") && s.contains("inet_sock_set_state")
            })
        })
    })
}

/// The pid of the `timewait` process below `root` (script(1) runs it
/// under a shell), once there is one.
fn timewait_below(root: u32) -> u32 {
    let parent = |pid: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()
    };
    for _ in 0..1000 {
        let found = std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            if comm.trim() != "timewait" {
                return None;
            }
            let mut up = pid;
            while up > 1 {
                up = parent(up)?;
                if up == root {
                    return Some(pid);
                }
            }
            None
        });
        if let Some(pid) = found {
            return pid;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("no timewait process below {root}");
}

fn process(report: &Value, pid: u32) -> Option<&Value> {
    report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
}

/// What the global tracing state looks like, to see it untouched.
fn global_state() -> Vec<(String, String)> {
    [
        "tracing_on",
        "current_tracer",
        "set_event",
        "buffer_size_kb",
        "trace_clock",
    ]
    .iter()
    .map(|f| {
        let v = std::fs::read_to_string(Path::new(TRACEFS).join(f)).unwrap_or_default();
        (f.to_string(), v)
    })
    .collect()
}

#[test]
fn trace_names_the_process_with_exact_connects_failures_and_first_closes() {
    let (Some(a), Some(b)) = (Netns::new("trace"), Netns::new("trace")) else {
        return;
    };
    // 100 ports and no reuse: past 100 connects toward one destination,
    // connect() fails with EADDRNOTAVAIL.
    a.sysctl("net.ipv4.ip_local_port_range", "40000 40099");
    a.sysctl("net.ipv4.tcp_tw_reuse", "0");
    let mut server_a = Peer::start(&a, &["server", "5000", "client-closes"]);
    let mut client_a = Peer::start(&a, &["client", "127.0.0.1", "5000", "150", "client-closes"]);
    // Nothing listens on 5999: refused, no TIME_WAIT.
    let mut refused = Peer::start(&a, &["client", "127.0.0.1", "5999", "10", "client-closes"]);
    let mut server_b = Peer::start(&b, &["server", "5000", "client-closes"]);
    let mut client_b = Peer::start(&b, &["client", "127.0.0.1", "5000", "20", "client-closes"]);
    let tracer = Tracer::start(&["--netns", a.name()]);
    // Where the kernel has BTF, state changes come from the BPF filter.
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        assert!(
            bpf_attached(tracer.child.id()),
            "the BPF filter is not in use"
        );
    }
    let global = global_state();
    let everywhere = Tracer::start(&["--all"]);
    for p in [
        &mut server_a,
        &mut server_b,
        &mut client_a,
        &mut client_b,
        &mut refused,
    ] {
        p.go();
    }
    assert_eq!(refused.result()["errors"]["ECONNREFUSED"], 10);
    let did_a = client_a.result();
    let did_b = client_b.result();
    let report = tracer.stop();
    let all = everywhere.stop();

    // What the client saw of itself.
    let ok = did_a["ok"].as_u64().unwrap();
    let failed = did_a["errors"]["EADDRNOTAVAIL"].as_u64().unwrap_or(0);
    assert_eq!(ok + failed, 150, "{did_a}");
    assert!(failed > 0, "the port range should have run out: {did_a}");
    assert_eq!(did_b["ok"], 20);

    let p = process(&report, client_a.pid).unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(p["comm"], "python3");
    assert_eq!(p["netns"], a.name());
    assert_eq!(p["connects"], 150);
    assert_eq!(p["errors"], serde_json::json!({"EADDRNOTAVAIL": failed}));
    assert_eq!(p["closed_first"], ok);
    assert_eq!(p["server_closed_first"], 0);
    let d = &p["destinations"][0];
    assert_eq!(
        (d["remote_ip"].as_str(), d["remote_port"].as_u64()),
        (Some("127.0.0.1"), Some(5000))
    );
    assert_eq!(d["errors"]["EADDRNOTAVAIL"], failed);
    assert_eq!(d["closed_first"], ok);
    let r = process(&report, refused.pid).unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(r["connects"], 10);
    assert_eq!(r["errors"], serde_json::json!({"ECONNREFUSED": 10}));
    assert_eq!(r["closed_first"], 0);
    assert_eq!(r["destinations"][0]["remote_port"], 5999);
    // The server closed second: no TIME_WAIT of its making.
    assert!(process(&report, server_a.pid).is_none(), "{report:#}");
    // The other namespace's processes are not counted.
    assert!(process(&report, client_b.pid).is_none(), "{report:#}");
    assert_eq!(report["events_lost"], 0);
    assert_eq!(report["records_undecoded"], 0);
    assert_eq!(report["unattributed"], 0);

    // --all sees both, each in its namespace.
    let pa = process(&all, client_a.pid).unwrap_or_else(|| panic!("{all:#}"));
    let pb = process(&all, client_b.pid).unwrap_or_else(|| panic!("{all:#}"));
    assert_eq!(
        (pa["netns"].as_str(), pa["connects"].as_u64()),
        (Some(a.name()), Some(150))
    );
    assert_eq!(
        (pb["netns"].as_str(), pb["closed_first"].as_u64()),
        (Some(b.name()), Some(20))
    );
    assert_eq!(all["events_lost"], 0);

    assert_eq!(global_state(), global, "the global tracing state changed");
}

#[test]
fn a_server_that_closes_first_is_charged_with_server_side_first_closes() {
    let Some(ns) = Netns::new("trace-srv") else {
        return;
    };
    let mut server = Peer::start(&ns, &["server", "5001", "server-closes"]);
    let mut client = Peer::start(&ns, &["client", "127.0.0.1", "5001", "40", "server-closes"]);
    // With --syscalls too: the same counts; and with the state changes read
    // from the tracefs event instead of the BPF filter: the same again.
    let tracer = Tracer::start(&["--netns", ns.name(), "--syscalls"]);
    let tracefs = Tracer::start(&["--netns", ns.name(), "--no-bpf"]);
    assert!(!bpf_attached(tracefs.child.id()));
    server.go();
    client.go();
    assert_eq!(client.result()["ok"], 40);
    let report = tracer.stop();
    let without_bpf = tracefs.stop();
    for key in ["processes", "totals", "events_lost", "unattributed"] {
        assert_eq!(report[key], without_bpf[key], "{key}");
    }
    let s = process(&report, server.pid).unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(
        (
            s["server_closed_first"].as_u64(),
            s["closed_first"].as_u64()
        ),
        (Some(40), Some(0))
    );
    let c = process(&report, client.pid).unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(
        (c["connects"].as_u64(), c["closed_first"].as_u64()),
        (Some(40), Some(0))
    );
    assert_eq!(c["errors"], serde_json::json!({}));
    // The whole run: nothing the processes in scope did was missed.
    assert_eq!(report["totals"]["server_closed_first"], 40);
    assert_eq!(report["events_lost"], 0);
}

/// A reset is charged to the process whose socket sent it (its own call)
/// and to the one whose socket received it, though on loopback the reset
/// arrives in a softirq while the sender's thread runs: each state change
/// must be known as interrupt context or not.
#[test]
fn resets_are_charged_to_the_sender_and_the_receiver_not_to_who_was_running() {
    let Some(ns) = Netns::new("trace-rst") else {
        return;
    };
    let mut server = Peer::start(&ns, &["server", "5003", "server-resets"]);
    let mut client = Peer::start(&ns, &["client", "127.0.0.1", "5003", "30", "server-resets"]);
    let tracer = Tracer::start(&["--netns", ns.name()]);
    let tracefs = Tracer::start(&["--netns", ns.name(), "--no-bpf"]);
    server.go();
    client.go();
    assert_eq!(client.result()["errors"]["ECONNRESET"], 30);
    let report = tracer.stop();
    let without_bpf = tracefs.stop();
    for r in [&report, &without_bpf] {
        let resets = |pid| process(r, pid).map(|p| p["resets"].clone());
        assert_eq!(
            (resets(server.pid), resets(client.pid)),
            (Some(30.into()), Some(30.into())),
            "{r:#}"
        );
        assert_eq!(r["events_lost"], 0);
    }
}

/// Where the BPF filter cannot be loaded (here: the capabilities it needs
/// taken away), state changes come from the tracefs event, one line says
/// why, and nothing is missed.
#[test]
fn without_bpf_capabilities_trace_reads_the_tracefs_event_and_says_why() {
    let Some(ns) = Netns::new("trace-nocap") else {
        return;
    };
    let mut server = Peer::start(&ns, &["server", "5004", "client-closes"]);
    let mut client = Peer::start(&ns, &["client", "127.0.0.1", "5004", "25", "client-closes"]);
    // Without CAP_SYS_ADMIN it could not mount tracefs: mounted here if
    // need be, as timewait does (and leaves it).
    timewait_host::tracefs::tracefs().unwrap();
    let tracer = Tracer::start_without_bpf(&["--netns", ns.name()]);
    assert!(!bpf_attached(tracer.child.id()));
    server.go();
    client.go();
    assert_eq!(client.result()["ok"], 25);
    let (report, said) = tracer.stop_saying();
    let note: Vec<_> = said.lines().filter(|l| l.contains("BPF")).collect();
    assert_eq!(note.len(), 1, "{said}");
    assert!(
        note[0].contains("the BPF filter could not be used: "),
        "{said}"
    );
    // Without BTF the reason is that; with it, the permission.
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        assert!(note[0].contains("Operation not permitted"), "{said}");
    }
    let c = process(&report, client.pid).unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(
        (c["connects"].as_u64(), c["closed_first"].as_u64()),
        (Some(25), Some(25))
    );
    assert_eq!(report["events_lost"], 0);
}

#[test]
fn doctor_trace_names_the_process_behind_the_eaddrnotavail_and_the_time_wait() {
    let Some((ns, mut server, mut client)) = running_out("trace-doc", "40000 40049", 5002, 80)
    else {
        return;
    };
    let doctor = Tracer::spawn(&["doctor", "--netns", ns.name(), "--trace", "3", "--json"]);
    server.go();
    client.go();
    let did = client.result();
    let failed = did["errors"]["EADDRNOTAVAIL"].as_u64().unwrap();
    let v = doctor.finish(&[3]);
    let findings = v["findings"].as_array().unwrap();
    let named = |code: &str| {
        findings
            .iter()
            .find(|f| f["code"] == code)
            .unwrap_or_else(|| panic!("no {code}: {v:#}"))
    };
    let errors = named("process-connect-errors");
    assert_eq!(errors["severity"], "critical");
    let title = errors["title"].as_str().unwrap();
    let who = format!(
        "pid {} (python3) failed {failed} connects toward 127.0.0.1:5002",
        client.pid
    );
    assert!(title.starts_with(&who), "{title}");
    let closes = named("process-closes-first");
    let title = closes["title"].as_str().unwrap();
    let ok = did["ok"].as_u64().unwrap();
    assert!(
        title.starts_with(&format!(
            "pid {} (python3) closed first {ok} times toward 127.0.0.1:5002",
            client.pid
        )),
        "{title}"
    );
    assert_eq!(v["trace"]["processes"][0]["pid"], client.pid);
}

#[test]
fn without_root_trace_says_so_in_one_line_and_exits_1() {
    if std::env::var_os(crate::harness::netns::SKIP_ENV).is_some() {
        return;
    }
    let out = crate::harness::timewait_as_nobody(&["trace", "--duration", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("needs root"), "{err}");
}

#[test]
fn bad_trace_flags_exit_2_naming_the_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_timewait"))
        .args(["trace", "--duration", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--duration"));
    let out = Command::new(env!("CARGO_BIN_EXE_timewait"))
        .args(["trace", "--all", "--netns", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `--watch` on a terminal (script(1) gives it one): the table redrawn
/// every second with what happened so far, until Ctrl-C, then the report;
/// off a terminal, a note and the report at the end only.
#[test]
fn watch_redraws_the_table_on_a_terminal_and_only_there() {
    let Some(ns) = Netns::new("trace-watch") else {
        return;
    };
    const CLEAR: &str = "\x1b[H\x1b[2J";
    let bin = env!("CARGO_BIN_EXE_timewait");
    let line = format!("{bin} trace --netns {} --watch --duration 120", ns.name());
    let mut script = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut tty = script.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut tty, &mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let pid = timewait_below(script.id());
    assert!(recording(pid), "trace did not start recording");
    let mut server = Peer::start(&ns, &["server", "5002", "client-closes"]);
    let mut client = Peer::start(&ns, &["client", "127.0.0.1", "5002", "30", "client-closes"]);
    server.go();
    client.go();
    assert_eq!(client.result()["ok"], 30);
    // A frame drawn after the connects shows the client's row.
    let row = |text: &str| {
        text.lines()
            .any(|l| l.trim_start().starts_with(&format!("{} ", client.pid)) && l.contains(" 30 "))
    };
    let mut seen = String::new();
    while !seen.rsplit(CLEAR).next().is_some_and(row) {
        let chunk = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no frame with the client's row: {seen}"));
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert!(script.wait().unwrap().success());
    reader.join().unwrap();
    seen.extend(
        rx.try_iter()
            .map(|c| String::from_utf8_lossy(&c).into_owned()),
    );
    assert!(seen.matches(CLEAR).count() >= 2, "redrawn: {seen}");
    let last = seen.rsplit(CLEAR).next().unwrap();
    assert!(last.contains("interrupted: the numbers so far"), "{last}");
    assert!(row(last), "{last}");
    assert!(
        !instances()
            .iter()
            .any(|i| i.starts_with(&format!("timewait-{pid}-"))),
        "instance left behind"
    );

    let out = Command::new(bin)
        .args(["trace", "--netns", ns.name(), "--watch", "--duration", "1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--watch redraws only on a terminal"), "{err}");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        !report.contains(CLEAR) && report.contains("timewait trace of"),
        "{report}"
    );
}

/// Runs `script` with bash in `ns` and waits until it has printed "done";
/// the shell then waits for its stdin to close, so that it is still there
/// to be looked up as its children's parent.
fn shell_in(ns: &Netns, script: &str) -> std::process::Child {
    let mut shell = Command::new("ip")
        .args(["netns", "exec", ns.name(), "bash", "-c"])
        .arg(format!("{script}; echo done; read || true"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(shell.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "done\n");
    shell
}

/// Ends a [`shell_in`].
fn end(mut shell: std::process::Child) {
    drop(shell.stdin.take());
    assert!(shell.wait().unwrap().success());
}

/// The sums of `keys` over the processes named `comm`.
fn sums(report: &Value, comm: &str, keys: [&str; 2]) -> [u64; 2] {
    let of = |k: &str| -> u64 {
        report["processes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["comm"] == comm)
            .map(|p| p[k].as_u64().unwrap())
            .sum()
    };
    keys.map(of)
}

/// bash connects to port `port` and closes first, through /dev/tcp.
fn connect_close(port: u16) -> String {
    format!("exec 3<>/dev/tcp/127.0.0.1/{port}; exec 3>&-")
}

/// Short-lived processes: a shell in the namespace forks 20 subshells that
/// each connect (bash's /dev/tcp), close first and exit at once, most of
/// them before the tracer could look them up in /proc. Each is placed by
/// its fork: all 20 connects and first closes are counted, none unplaced.
#[test]
fn processes_that_exit_at_once_are_placed_by_their_fork() {
    let Some(ns) = Netns::new("trace-fork") else {
        return;
    };
    let mut server = Peer::start(&ns, &["server", "5004", "client-closes"]);
    server.go();
    let tracer = Tracer::start(&["--netns", ns.name()]);
    let shell = shell_in(
        &ns,
        &format!("for i in $(seq 20); do ({}); done", connect_close(5004)),
    );
    let report = tracer.stop();
    end(shell);
    let placed = sums(&report, "bash", ["connects", "closed_first"]);
    assert_eq!(placed, [20, 20], "{report:#}");
    let subshells = report["processes"].as_array().unwrap().iter();
    assert!(
        subshells
            .filter(|p| p["comm"] == "bash")
            .all(|p| p["netns"] == ns.name()),
        "{report:#}"
    );
    assert_eq!(report["unplaced"], 0, "{report:#}");
}

/// With --syscalls, setns and unshare are traced too, so an exec no longer
/// hides where a process is: 10 `bash -c` children (fork, exec) that
/// connect and exit at once are all counted; 5 more that connect in
/// another namespace through `ip netns exec` are not.
#[test]
fn with_syscalls_exec_d_processes_are_placed_and_those_that_switch_are_not() {
    let (Some(ns), Some(other)) = (Netns::new("trace-exec"), Netns::new("trace-exec")) else {
        return;
    };
    let mut here = Peer::start(&ns, &["server", "5005", "client-closes"]);
    let mut there = Peer::start(&other, &["server", "5005", "client-closes"]);
    here.go();
    there.go();
    let tracer = Tracer::start(&["--netns", ns.name(), "--syscalls"]);
    let cc = connect_close(5005);
    let shell = shell_in(
        &ns,
        &format!(
            "for i in $(seq 10); do bash -c '{cc}'; done; \
             for i in $(seq 5); do ip netns exec {} bash -c '{cc}'; done",
            other.name()
        ),
    );
    let report = tracer.stop();
    end(shell);
    let placed = sums(&report, "bash", ["connects", "closed_first"]);
    assert_eq!(placed, [10, 10], "{report:#}");
}
