//! peer.py processes: real TCP peers in a test's namespace whose own
//! counts the tracer's are checked against.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::Value;

use crate::harness::netns::Netns;

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/harness/peer.py");

/// A peer.py process in a namespace, waiting for its go.
pub struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// The python process's pid.
    pub pid: u32,
}

impl Peer {
    /// Starts `peer.py ARGS` in `ns` and waits for its ready line.
    pub fn start(ns: &Netns, args: &[&str]) -> Peer {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "python3", PEER])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python3 peer");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let pid = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("peer {args:?} said {line:?}"));
        Peer {
            child,
            stdin,
            stdout,
            pid,
        }
    }

    /// Tells it to start.
    pub fn go(&mut self) {
        let s = self.stdin.as_mut().unwrap();
        s.write_all(b"go\n").unwrap();
        s.flush().unwrap();
    }

    /// What a client did (its JSON line).
    pub fn result(&mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A namespace with `ports` ephemeral ports and no TIME_WAIT reuse, a
/// server peer on `port` that closes second, and a client peer that will
/// make `n` connects to it: past the ports, they fail with EADDRNOTAVAIL.
pub fn running_out(tag: &str, ports: &str, port: u16, n: u32) -> Option<(Netns, Peer, Peer)> {
    let ns = Netns::new(tag)?;
    ns.sysctl("net.ipv4.ip_local_port_range", ports);
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0");
    let port = port.to_string();
    let server = Peer::start(&ns, &["server", &port, "client-closes"]);
    let client = Peer::start(
        &ns,
        &[
            "client",
            "127.0.0.1",
            &port,
            &n.to_string(),
            "client-closes",
        ],
    );
    Some((ns, server, client))
}
