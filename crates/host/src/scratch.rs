//! Throw-away network namespaces for `timewait lab`: made with iproute2
//! (`ip netns add`, so a user can look inside with `ip netns exec` while a
//! scenario runs), named `twlab-PID-N`, and deleted when dropped: on
//! success, on error and after Ctrl-C. Namespaces of runs whose process is
//! gone are deleted by the next run.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{HostError, Target, in_namespace};

const PREFIX: &str = "twlab-";

/// A namespace this process made; deleted on drop.
#[derive(Debug)]
pub struct ScratchNetns {
    name: String,
}

fn ip(args: &[&str]) -> Result<(), HostError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| HostError::Io {
            what: "running ip (iproute2)".into(),
            source: e,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if err.contains("Operation not permitted") || err.contains("Permission denied") {
        return Err(HostError::NotRoot("lab (it makes network namespaces)"));
    }
    Err(HostError::Command(format!("ip {}: {err}", args.join(" "))))
}

/// Deletes namespaces left by lab runs that were killed.
fn sweep() {
    let Ok(dir) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let dead = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists());
        if dead {
            let _ = ip(&["netns", "delete", &name]);
        }
    }
}

impl ScratchNetns {
    /// Makes a namespace with `lo` up.
    pub fn create() -> Result<ScratchNetns, HostError> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        if !nix::unistd::geteuid().is_root() {
            return Err(HostError::NotRoot("lab (it makes network namespaces)"));
        }
        sweep();
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        let ns = ScratchNetns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name (`ip netns exec NAME …`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// As a target for [`crate::collect`] and [`in_namespace`].
    pub fn target(&self) -> Target {
        Target::Netns(self.name.clone())
    }

    /// Adds an address to its `lo` (e.g. `198.18.0.1/32`: on loopback, but
    /// not a loopback address, so `tcp_tw_reuse=2` does not apply to it).
    pub fn add_address(&self, cidr: &str) -> Result<(), HostError> {
        ip(&["-n", &self.name, "addr", "add", cidr, "dev", "lo"])
    }

    /// Sets a sysctl (dotted name) in it, and checks the kernel took it.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), HostError> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        in_namespace(&self.target(), || {
            std::fs::write(&path, value).map_err(|e| HostError::Io {
                what: format!("writing {value:?} to {path}"),
                source: e,
            })
        })?
    }
}

impl ScratchNetns {
    /// Runs `f` on a new thread that has entered the namespace (threads it
    /// starts are in it too: a tokio runtime built there, say). The thread
    /// yields `None` only if it could not enter, which this returns as the
    /// error.
    pub fn spawn<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<std::thread::JoinHandle<Option<R>>, HostError> {
        let path = format!("/var/run/netns/{}", self.name);
        let file = std::fs::File::open(&path).map_err(|e| HostError::Io {
            what: path.clone(),
            source: e,
        })?;
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let entered = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET);
            let ok = entered.is_ok();
            let _ = tx.send(entered);
            // Never run f outside the namespace.
            ok.then(f)
        });
        match rx.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(e)) => Err(HostError::Io {
                what: format!("setns {path}"),
                source: e.into(),
            }),
            Err(_) => Err(HostError::Command(format!("setns {path}: the thread died"))),
        }
    }
}

impl Drop for ScratchNetns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "delete", &self.name]);
    }
}
