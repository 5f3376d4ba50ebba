//! Writing sysctls: at runtime in a namespace, and persistently in
//! `/etc/sysctl.d/`. Only the values given are touched. [`apply`] is what
//! `timewait tune --apply` does; the two steps are public for tests.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::HostError;
use crate::netns::{Target, in_namespace};

/// The file `timewait tune --apply` owns.
pub const CONF_NAME: &str = "90-timewait.conf";
/// Where persistent sysctl settings live.
pub const CONF_DIR: &str = "/etc/sysctl.d";

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Each sysctl set, with the value the kernel reports afterwards.
    pub after: Vec<(String, String)>,
    /// The file written to keep them across reboots: only for the host's
    /// own namespace (a namespace's sysctls are not read from
    /// `/etc/sysctl.d`).
    pub persisted_to: Option<PathBuf>,
}

/// Sets each `(name, value)` in the target namespace, then, for the
/// current namespace, writes them to `/etc/sysctl.d/90-timewait.conf`
/// (see [`write_conf`]). Refuses without root before touching anything.
pub fn apply(target: &Target, changes: &[(String, String)]) -> Result<Applied, HostError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(HostError::NotRoot("tune --apply"));
    }
    if changes.is_empty() {
        return Ok(Applied {
            after: vec![],
            persisted_to: None,
        });
    }
    let after = write_runtime(target, changes)?;
    let persisted_to = match target {
        Target::Current => {
            Some(
                write_conf(Path::new(CONF_DIR), changes).map_err(|e| HostError::Io {
                    what: format!("{CONF_DIR}/{CONF_NAME}"),
                    source: e,
                })?,
            )
        }
        Target::Netns(_) | Target::Pid(_) => None,
    };
    Ok(Applied {
        after,
        persisted_to,
    })
}

/// Sets each `(name, value)` in the target namespace and reads it back.
/// Returns the value the kernel reports afterwards for each.
pub fn write_runtime(
    target: &Target,
    changes: &[(String, String)],
) -> Result<Vec<(String, String)>, HostError> {
    in_namespace(target, || {
        changes
            .iter()
            .map(|(name, value)| {
                let path = format!("/proc/sys/{}", name.replace('.', "/"));
                fs::write(&path, value).map_err(|e| match e.kind() {
                    std::io::ErrorKind::PermissionDenied => {
                        HostError::Permission { what: path.clone() }
                    }
                    _ => HostError::Io {
                        what: format!("write {value:?} to {path}"),
                        source: e,
                    },
                })?;
                let now = fs::read_to_string(&path).map_err(|e| HostError::Io {
                    what: path.clone(),
                    source: e,
                })?;
                Ok((
                    name.clone(),
                    now.split_whitespace().collect::<Vec<_>>().join(" "),
                ))
            })
            .collect()
    })?
}

/// Writes `dir/90-timewait.conf` with `changes`, keeping the lines of an
/// existing file for other keys. Atomic: a temporary file in the same
/// directory is synced and renamed over the old one, which is first kept as
/// `90-timewait.conf.bak`. Returns the path written.
pub fn write_conf(dir: &Path, changes: &[(String, String)]) -> std::io::Result<PathBuf> {
    let path = dir.join(CONF_NAME);
    let old = match fs::read_to_string(&path) {
        Ok(s) => Some(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let ours = |line: &str| {
        let key = line.split('=').next().unwrap_or("").trim();
        changes.iter().any(|(n, _)| n == key)
    };
    let mut text =
        String::from("# Written by `timewait tune --apply`; lines for other keys are kept.\n");
    if let Some(old) = &old {
        for line in old
            .lines()
            .filter(|l| !l.starts_with("# Written by `timewait"))
        {
            if !ours(line) {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    for (name, value) in changes {
        text.push_str(&format!("{name} = {value}\n"));
    }
    if old.is_some() {
        fs::copy(&path, dir.join(format!("{CONF_NAME}.bak")))?;
    }
    let tmp = dir.join(format!(".{CONF_NAME}.tmp"));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    fs::rename(&tmp, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_is_written_atomically_keeping_other_keys_and_a_backup() {
        let dir = std::env::temp_dir().join(format!("timewait-conf-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let c = |n: &str, v: &str| (n.to_string(), v.to_string());
        let p = write_conf(&dir, &[c("net.ipv4.tcp_tw_reuse", "1")]).unwrap();
        assert_eq!(
            fs::read_to_string(&p).unwrap().lines().last(),
            Some("net.ipv4.tcp_tw_reuse = 1")
        );
        fs::write(&p, "net.core.somaxconn = 4096\nnet.ipv4.tcp_tw_reuse = 0\n").unwrap();
        write_conf(
            &dir,
            &[
                c("net.ipv4.tcp_tw_reuse", "1"),
                c("net.ipv4.ip_local_port_range", "1024 65535"),
            ],
        )
        .unwrap();
        let text = fs::read_to_string(&p).unwrap();
        assert!(text.contains("net.core.somaxconn = 4096"), "{text}");
        assert!(
            text.contains("net.ipv4.tcp_tw_reuse = 1") && !text.contains("tcp_tw_reuse = 0"),
            "{text}"
        );
        assert!(text.contains("net.ipv4.ip_local_port_range = 1024 65535"));
        let bak = fs::read_to_string(dir.join(format!("{CONF_NAME}.bak"))).unwrap();
        assert!(bak.contains("tcp_tw_reuse = 0"));
        assert!(!dir.join(format!(".{CONF_NAME}.tmp")).exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
