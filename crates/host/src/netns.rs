//! Entering a network namespace for the duration of one closure.

use std::fs::File;
use std::io::ErrorKind;

use nix::errno::Errno;
use nix::sched::{CloneFlags, setns};

use crate::HostError;

/// Whose sockets to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The namespace timewait runs in.
    Current,
    /// A named namespace, `/var/run/netns/NAME` (as `ip netns add` makes).
    Netns(String),
    /// The namespace of a process, e.g. a container's.
    Pid(u32),
}

impl Target {
    /// A label for reports.
    pub fn label(&self) -> String {
        match self {
            Target::Current => "current".into(),
            Target::Netns(n) => format!("netns {n}"),
            Target::Pid(p) => format!("pid {p}"),
        }
    }

    /// The inode of the target's network namespace (what
    /// `/proc/PID/ns/net` links to, `net:[INODE]`): how processes are
    /// matched to it.
    pub fn netns_inode(&self) -> Result<u64, HostError> {
        use std::os::unix::fs::MetadataExt;
        let path = self.path()?.unwrap_or_else(|| "/proc/self/ns/net".into());
        std::fs::metadata(&path)
            .map(|m| m.ino())
            .map_err(|e| self.open_error(&path, e))
    }

    fn open_error(&self, path: &str, e: std::io::Error) -> HostError {
        match e.kind() {
            ErrorKind::NotFound => match self {
                Target::Pid(p) => HostError::NoSuchPid(*p),
                Target::Netns(n) => HostError::NoSuchNetns(n.clone()),
                Target::Current => HostError::Io {
                    what: path.to_string(),
                    source: e,
                },
            },
            ErrorKind::PermissionDenied => HostError::Permission {
                what: path.to_string(),
            },
            _ => HostError::Io {
                what: path.to_string(),
                source: e,
            },
        }
    }

    fn path(&self) -> Result<Option<String>, HostError> {
        match self {
            Target::Current => Ok(None),
            Target::Netns(n) => {
                if n.is_empty() || n == "." || n == ".." || n.contains('/') || n.contains('\0') {
                    return Err(HostError::BadNetnsName(n.clone()));
                }
                Ok(Some(format!("/var/run/netns/{n}")))
            }
            Target::Pid(p) => Ok(Some(format!("/proc/{p}/ns/net"))),
        }
    }
}

/// Runs `f` in the target's network namespace (on a thread of its own for
/// another namespace; the calling thread is never moved).
pub fn in_namespace<R: Send>(
    target: &Target,
    f: impl FnOnce() -> R + Send,
) -> Result<R, HostError> {
    let Some(path) = target.path()? else {
        return Ok(f());
    };
    let file = File::open(&path).map_err(|e| target.open_error(&path, e))?;

    std::thread::scope(|s| {
        s.spawn(|| {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| match e {
                Errno::EPERM | Errno::EACCES => HostError::Permission {
                    what: format!("setns {path}"),
                },
                other => HostError::Io {
                    what: format!("setns {path}"),
                    source: other.into(),
                },
            })?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}
