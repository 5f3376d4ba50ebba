//! nginx configuration files from the file system, for the pure parser:
//! reading a file, and expanding an `include` glob as glob(3) does (each
//! wildcard component matched against its directory's entries; sorted;
//! no match is no file).

use std::io;
use std::path::{Component, Path, PathBuf};

use timewait_nginx::Loader;
use timewait_nginx::parse::glob_match;

/// The file system as the nginx parser's [`Loader`].
pub struct NginxFiles;

fn magic(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

impl Loader for NginxFiles {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn glob(&self, pattern: &Path) -> io::Result<Vec<PathBuf>> {
        let mut found = vec![PathBuf::new()];
        for c in pattern.components() {
            let part = c.as_os_str().to_string_lossy();
            if !matches!(c, Component::Normal(_)) || !magic(&part) {
                for p in &mut found {
                    p.push(c.as_os_str());
                }
                continue;
            }
            let mut next = Vec::new();
            for dir in &found {
                // A directory that cannot be listed has no matches.
                let Ok(entries) = std::fs::read_dir(if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                }) else {
                    continue;
                };
                for e in entries.flatten() {
                    let name = e.file_name();
                    if glob_match(part.as_bytes(), name.to_string_lossy().as_bytes()) {
                        next.push(dir.join(name));
                    }
                }
            }
            found = next;
        }
        found.retain(|p| p.is_file());
        found.sort();
        Ok(found)
    }
}

/// The installed nginx's version (`nginx -v` prints `nginx version:
/// nginx/1.22.1` on stderr), if there is an `nginx` on the PATH.
pub fn installed_version() -> Option<String> {
    let o = std::process::Command::new("nginx")
        .arg("-v")
        .output()
        .ok()?;
    version_in(&String::from_utf8_lossy(&o.stderr))
}

/// The version in what `nginx -v` printed.
fn version_in(text: &str) -> Option<String> {
    let v = text.split("nginx/").nth(1)?.split_whitespace().next()?;
    Some(v.to_string())
}

/// A running nginx master process and the configuration it was started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NginxMaster {
    /// Its pid.
    pub pid: u32,
    /// Its main configuration file (`-c`, resolved against `-p`, or the
    /// Debian default).
    pub config: PathBuf,
}

/// The compiled-in prefix of Debian's nginx (`nginx -V`: `--prefix`; its
/// `--conf-path` is [`crate::NGINX_DEFAULT_CONFIG`]).
const DEFAULT_PREFIX: &str = "/usr/share/nginx";

/// The configuration a master's command line names. nginx rewrites its
/// title to `nginx: master process <argv…>`, so the arguments it was
/// started with are still there.
pub fn master_config(cmdline: &[u8]) -> Option<PathBuf> {
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let joined = args.join(" ");
    let rest = joined.strip_prefix("nginx: master process ")?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    let value = |flag: &str| {
        words
            .iter()
            .position(|w| *w == flag)
            .and_then(|i| words.get(i + 1).copied())
    };
    let prefix = value("-p").unwrap_or(DEFAULT_PREFIX);
    Some(match value("-c") {
        Some(c) if Path::new(c).is_absolute() => PathBuf::from(c),
        Some(c) => Path::new(prefix).join(c),
        None => PathBuf::from(crate::NGINX_DEFAULT_CONFIG),
    })
}

/// The nginx masters whose network namespace is `target`'s.
pub fn masters(target: &crate::Target) -> Vec<NginxMaster> {
    let Ok(wanted) = target.netns_inode() else {
        return vec![];
    };
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    let mut out: Vec<NginxMaster> = procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| crate::process_netns(*pid) == Some(wanted))
        .filter_map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            Some(NginxMaster {
                pid,
                config: master_config(&cmd)?,
            })
        })
        .collect();
    out.sort_by_key(|m| m.pid);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_nginx_v_prints() {
        assert_eq!(
            version_in("nginx version: nginx/1.22.1\n").as_deref(),
            Some("1.22.1")
        );
        assert_eq!(
            version_in("nginx version: nginx/1.27.4 (Ubuntu)").as_deref(),
            Some("1.27.4")
        );
        assert_eq!(version_in("nginx version: openresty/1.21"), None);
    }

    #[test]
    fn a_masters_title_names_its_configuration() {
        assert_eq!(
            master_config(
                b"nginx: master process /usr/sbin/nginx -c /tmp/x/nginx.conf -g daemon off;\0"
            ),
            Some(PathBuf::from("/tmp/x/nginx.conf"))
        );
        assert_eq!(
            master_config(b"nginx: master process nginx -p /srv/n -c conf/n.conf\0"),
            Some(PathBuf::from("/srv/n/conf/n.conf"))
        );
        assert_eq!(
            master_config(b"nginx: master process /usr/sbin/nginx\0"),
            Some(PathBuf::from("/etc/nginx/nginx.conf"))
        );
        assert_eq!(master_config(b"nginx: worker process\0"), None);
        assert_eq!(master_config(b"/usr/bin/bash\0-c\0x\0"), None);
    }
}
