//! Throw-away network namespaces for kernel-facing tests.
//!
//! Each [`Netns`] has a unique name (`twt-<tag>-<pid>-<n>`), so tests run in
//! parallel; its loopback is up; sysctls set in it touch only it; and it is
//! deleted when dropped, also when the test panics. Namespaces left behind by
//! a killed test run (whose pid is gone) are removed the next time one is
//! made. Traffic goes only to addresses inside the namespace.

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::Path;
use std::process::Command;
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{CloneFlags, setns};

static COUNTER: AtomicU32 = AtomicU32::new(0);
static SWEEP: Once = Once::new();

/// Set to skip kernel tests explicitly (they need root and `ip`).
pub const SKIP_ENV: &str = "TIMEWAIT_SKIP_KERNEL_TESTS";

/// A network namespace owned by one test.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Makes a fresh namespace with `lo` up. Returns `None` only when the
    /// kernel tests are explicitly skipped; without root it fails loudly.
    pub fn new(tag: &str) -> Option<Netns> {
        if std::env::var_os(SKIP_ENV).is_some() {
            eprintln!("skipping kernel test: {SKIP_ENV} is set");
            return None;
        }
        assert!(
            nix::unistd::geteuid().is_root(),
            "kernel tests need root to create network namespaces (or set {SKIP_ENV}=1 to skip them)"
        );
        SWEEP.call_once(sweep_stale);
        let name = format!(
            "twt-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        // From here on, Drop deletes it even if the next step fails.
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        Some(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS…`, panicking with its stderr on failure.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// The TIME_WAIT sockets `ss` sees in the namespace, one line each
    /// (`Recv-Q Send-Q Local:Port Peer:Port`).
    pub fn ss_time_wait(&self) -> Vec<String> {
        self.ss_in_state("time-wait")
    }

    /// The TCP sockets `ss` sees in the namespace in `state` (its name
    /// for it: `syn-sent`, `time-wait`, …), one line each.
    pub fn ss_in_state(&self, state: &str) -> Vec<String> {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.name, "ss", "-Htan", "state", state])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ss: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it makes
    /// live there, and `/proc/sys/net` and `/proc/thread-self/net` show it.
    pub fn run<R: Send, F: FnOnce() -> R + Send>(&self, f: F) -> R {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Sets `net.ipv4.KEY` style sysctls (dotted names) in this namespace
    /// only, and checks the kernel took the value.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(|| {
            fs::write(&path, value).unwrap_or_else(|e| panic!("write {value:?} to {path}: {e}"));
            let got = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
            let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
            assert_eq!(norm(&got), norm(value), "{key} did not take the value");
        });
    }

    /// Reads a sysctl in this namespace.
    pub fn read_sysctl(&self, key: &str) -> String {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(|| fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}")))
            .trim()
            .to_string()
    }
}

/// TcpExt counters of the namespace the calling thread is in.
pub fn tcp_ext_here() -> HashMap<String, u64> {
    let text = fs::read_to_string("/proc/thread-self/net/netstat").expect("read netstat");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = HashMap::new();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        if !names.starts_with("TcpExt:") {
            continue;
        }
        for (n, v) in names
            .split_whitespace()
            .zip(values.split_whitespace())
            .skip(1)
        {
            out.insert(n.to_string(), v.parse().unwrap_or(0));
        }
    }
    out
}

/// The `tw` field of `/proc/thread-self/net/sockstat`: TIME_WAIT sockets now.
pub fn time_wait_here() -> u64 {
    let text = fs::read_to_string("/proc/thread-self/net/sockstat").expect("read sockstat");
    let line = text
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .expect("TCP line");
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == "tw" {
            return it.next().and_then(|v| v.parse().ok()).expect("tw value");
        }
    }
    panic!("no tw in {line}")
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: ip netns delete {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("warning: ip netns delete {}: {e}", self.name),
        }
    }
}

/// Deletes `twt-*` namespaces whose creating process is gone.
fn sweep_stale() {
    let Ok(dir) = fs::read_dir("/var/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix("twt-") else {
            continue;
        };
        let pid = rest.rsplit('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = Command::new("ip").args(["netns", "delete", &name]).output();
        }
    }
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd} (is iproute2 installed?): {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

#[test]
fn sysctls_are_per_namespace_and_the_namespace_is_deleted() {
    let Some(ns) = Netns::new("harness") else {
        return;
    };
    let name = ns.name().to_string();
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40127");
    assert_eq!(
        ns.read_sysctl("net.ipv4.ip_local_port_range"),
        "40000\t40127"
    );
    // Another namespace still has the kernel default.
    let Some(other) = Netns::new("harness") else {
        return;
    };
    assert_eq!(
        other.read_sysctl("net.ipv4.ip_local_port_range"),
        "32768\t60999"
    );
    drop(ns);
    assert!(!Path::new(&format!("/var/run/netns/{name}")).exists());
}

#[test]
fn namespace_is_deleted_when_a_test_panics() {
    let mut name = String::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let Some(ns) = Netns::new("panic") else {
            return;
        };
        name = ns.name().to_string();
        panic!("deliberate");
    }));
    if name.is_empty() {
        return; // skipped
    }
    assert!(result.is_err());
    assert!(!Path::new(&format!("/var/run/netns/{name}")).exists());
}
