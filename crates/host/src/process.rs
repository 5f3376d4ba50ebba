//! Processes as `/proc` shows them: a thread's process, name and network
//! namespace.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

use timewait_trace::ProcessInfo;

/// The network namespace inode of a process or thread, from the
/// `/proc/ID/ns/net` link (`net:[INODE]`).
pub fn process_netns(id: u32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{id}/ns/net")).ok()?;
    parse_ns_link(link.to_str()?)
}

fn parse_ns_link(link: &str) -> Option<u64> {
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// `/proc/PID/comm`, if the process is there.
fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim_end_matches('\n').to_string())
}

/// The process a thread belongs to, or `None` once it has exited.
pub fn thread_process(tid: u32) -> Option<ProcessInfo> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let pid = status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())?;
    Some(ProcessInfo {
        pid,
        comm: comm(pid),
        netns: process_netns(tid),
    })
}

/// The host's answers to the trace tally's questions.
pub struct HostLookup;

impl timewait_trace::Lookup for HostLookup {
    fn process(&mut self, tid: u32) -> Option<ProcessInfo> {
        thread_process(tid)
    }

    fn port_range(&mut self, tid: u32) -> Option<(u16, u16)> {
        let text = crate::in_namespace(&crate::Target::Pid(tid), || {
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()
        })
        .ok()??;
        let range: timewait_model::ports::PortRange = text.parse().ok()?;
        Some((range.low, range.high))
    }
}

/// Every thread now running in the network namespace `netns` (all of them
/// for `None`), with its process.
pub fn threads_in(netns: Option<u64>) -> Vec<(u32, ProcessInfo)> {
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let ns = process_netns(pid);
        if ns.is_none() || (netns.is_some() && ns != netns) {
            continue;
        }
        let comm = comm(pid);
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            if let Some(tid) = t.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                let info = ProcessInfo {
                    pid,
                    comm: comm.clone(),
                    netns: ns,
                };
                out.push((tid, info));
            }
        }
    }
    out
}

/// Names for namespace inodes: those of `ip netns add` (`/var/run/netns`),
/// and `host` for the namespace of process 1.
pub fn netns_names() -> HashMap<u64, String> {
    let mut names = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/var/run/netns") {
        for e in dir.flatten() {
            if let (Ok(m), Some(name)) = (e.metadata(), e.file_name().to_str()) {
                names.insert(m.ino(), name.to_string());
            }
        }
    }
    if let Some(ino) = process_netns(1) {
        names.entry(ino).or_insert_with(|| "host".into());
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_links_parse() {
        assert_eq!(parse_ns_link("net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_ns_link("mnt:[4026531840]"), None);
        assert_eq!(parse_ns_link("net:[x]"), None);
    }

    #[test]
    fn this_thread_is_found_in_its_own_namespace() {
        let me = std::process::id();
        let info = thread_process(me).unwrap();
        assert_eq!(info.pid, me);
        assert_eq!(info.netns, process_netns(me));
        assert!(info.comm.is_some());
    }
}
