//! `timewait trace`'s contact with the kernel's tracing: a tracefs
//! instance of its own (`instances/timewait-PID-N`), with its tracepoints
//! enabled there and filtered in the kernel, read page by page from
//! `per_cpu/cpuN/trace_pipe_raw`; and, where the kernel allows, the TCP
//! state changes filtered by a BPF program instead ([`crate::bpf`]), which
//! costs the workload less because it drops the unwanted ones before their
//! fields are filled. The instance's `tracing_on` pauses both.
//!
//! Why an instance and not `perf_event_open`: both write to a per-CPU ring
//! in the kernel and cost the workload the same (measured side by side,
//! BENCHMARKS.md), but an instance has its own buffers, filters and enable
//! switches, so the global tracing state (`/sys/kernel/tracing/trace`,
//! `set_event`, other tools' sessions) is never touched, and its pages are
//! read with plain `read(2)` (no `mmap`, no unsafe code). The price: a
//! `SIGKILL`ed run leaves its instance behind, so each run first removes
//! instances of runs whose process is gone.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::time::{ClockId, clock_gettime};
use timewait_trace::{
    Decoder, Format, Formats, PageLayout, SYSCALLS, Scope, TRACEPOINTS, Tally, Timed, TraceReport,
    Tracepoint, event::SET_STATE, parse_page,
};

use crate::bpf::StateFilter;
use crate::{HostError, Target};

/// Where tracefs is mounted, and whether this run mounted it.
#[derive(Debug, Clone)]
pub struct Tracefs {
    /// The mount point.
    pub root: PathBuf,
    /// This run mounted it (it is left mounted: other tools expect it).
    pub mounted_now: bool,
}

const MOUNT_POINT: &str = "/sys/kernel/tracing";
const INSTANCE_PREFIX: &str = "timewait-";
/// Per-CPU buffer: about 27,000 state-change records, 20 ms at over a
/// million events a second per CPU.
const BUFFER_KB: u32 = 2048;
/// How often the buffers are drained.
const POLL: Duration = Duration::from_millis(20);

/// Finds tracefs, mounting it at `/sys/kernel/tracing` if it is not.
pub fn tracefs() -> Result<Tracefs, HostError> {
    if let Some(root) = mounted() {
        return Ok(Tracefs {
            root,
            mounted_now: false,
        });
    }
    let r = nix::mount::mount(
        Some("nodev"),
        MOUNT_POINT,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    );
    match r {
        Ok(()) => Ok(Tracefs {
            root: MOUNT_POINT.into(),
            mounted_now: true,
        }),
        // Another run may have mounted it meanwhile.
        Err(_) if mounted().is_some() => tracefs(),
        Err(nix::errno::Errno::EPERM | nix::errno::Errno::EACCES) => {
            Err(HostError::TracePermission {
                what: format!("mounting tracefs at {MOUNT_POINT}"),
            })
        }
        Err(e) => Err(HostError::Tracefs(format!(
            "tracefs is not mounted and mounting it at {MOUNT_POINT} failed: {}",
            e.desc()
        ))),
    }
}

fn mounted() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, at, kind) = (f.next()?, f.next()?, f.next()?);
            (kind == "tracefs").then(|| PathBuf::from(at))
        })
        .collect();
    found.sort_by_key(|p| p != Path::new(MOUNT_POINT));
    found.into_iter().next()
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HostError {
    let what = what.into();
    move |e| match e.kind() {
        ErrorKind::PermissionDenied => HostError::TracePermission { what },
        _ => HostError::Io { what, source: e },
    }
}

fn write(path: &Path, value: &str) -> Result<(), HostError> {
    fs::write(path, value).map_err(io(format!("writing {value:?} to {}", path.display())))
}

/// Removes instances left by runs that were killed.
fn remove_stale(instances: &Path) {
    let Ok(dir) = fs::read_dir(instances) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(INSTANCE_PREFIX))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir(e.path());
        }
    }
}

/// A tracefs instance with the tracepoints enabled. Dropping it removes it
/// (its buffers, filters and enables go with it).
pub struct Instance {
    dir: PathBuf,
    pipes: Vec<File>,
    page: Vec<u8>,
    layout: PageLayout,
    decoder: Decoder,
    /// The BPF filter of state changes, when it is used.
    filter: Option<StateFilter>,
}

/// Where `trace` reads TCP state changes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateSource {
    /// The BPF filter on the raw tracepoint.
    Bpf,
    /// The instance's `sock:inet_sock_set_state` event; `why` the BPF
    /// filter is not used (`None`: it was not asked for).
    Tracefs {
        /// Why not BPF.
        why: Option<String>,
    },
}

impl Instance {
    /// Creates the instance, sets its buffers, clock and filters, enables
    /// the tracepoints (with `syscalls`, also connect()'s failures) and
    /// opens every CPU's pipe. With `bpf`, state changes come from the BPF
    /// filter if it loads (the source says which).
    pub fn create(
        fs_: &Tracefs,
        syscalls: bool,
        bpf: bool,
    ) -> Result<(Instance, StateSource), HostError> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let instances = fs_.root.join("instances");
        remove_stale(&instances);
        let dir = instances.join(format!(
            "{INSTANCE_PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let layout = PageLayout::parse(&read(&fs_.root.join("events/header_page"))?)
            .map_err(HostError::Trace)?;
        let decoder = Decoder::new(&formats(&fs_.root, syscalls)?).map_err(HostError::Trace)?;
        let (filter, source) = if bpf {
            match StateFilter::load() {
                Ok(f) => (Some(f), StateSource::Bpf),
                Err(why) => (None, StateSource::Tracefs { why: Some(why) }),
            }
        } else {
            (None, StateSource::Tracefs { why: None })
        };
        fs::create_dir(&dir).map_err(io(format!("creating {}", dir.display())))?;
        // From here on, Drop removes it, whatever fails.
        let mut me = Instance {
            dir,
            pipes: Vec::new(),
            page: Vec::new(),
            layout,
            decoder,
            filter,
        };
        me.configure(syscalls)?;
        Ok((me, source))
    }

    fn configure(&mut self, syscalls: bool) -> Result<(), HostError> {
        let d = self.dir.clone();
        write(&d.join("tracing_on"), "0")?;
        write(&d.join("buffer_size_kb"), &BUFFER_KB.to_string())?;
        // Drop new events when full (counted as "dropped events") rather
        // than overwrite unread ones; one clock for every CPU.
        write(&d.join("options/overwrite"), "0")?;
        write(&d.join("trace_clock"), "mono")?;
        let extra = if syscalls { &SYSCALLS[..] } else { &[] };
        let bpf = self.filter.is_some();
        for tp in TRACEPOINTS.iter().chain(extra) {
            if bpf && *tp == SET_STATE {
                continue;
            }
            let ev = d.join("events").join(tp.system).join(tp.name);
            if !tp.filter.is_empty() {
                fs::write(ev.join("filter"), tp.filter).map_err(|e| {
                    HostError::Tracefs(format!(
                        "the kernel refused the filter of {}:{}: {e}",
                        tp.system, tp.name
                    ))
                })?;
            }
            write(&ev.join("enable"), "1")?;
        }
        let page_kb = read_text(&d.join("buffer_subbuf_size_kb"))
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(4);
        self.page = vec![0; page_kb * 1024];
        let mut cpus: Vec<usize> = fs::read_dir(d.join("per_cpu"))
            .map_err(io(format!("listing {}/per_cpu", d.display())))?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("cpu")?.parse().ok())
            .collect();
        cpus.sort_unstable();
        for cpu in cpus {
            let path = d.join(format!("per_cpu/cpu{cpu}/trace_pipe_raw"));
            let f = OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NONBLOCK)
                .open(&path)
                .map_err(io(format!("opening {}", path.display())))?;
            self.pipes.push(f);
        }
        write(&d.join("tracing_on"), "1")?;
        self.follow_switch()
    }

    /// Attaches or detaches the BPF filter as the instance's `tracing_on`
    /// says, so that one switch pauses the whole trace.
    fn follow_switch(&mut self) -> Result<(), HostError> {
        let Some(filter) = &mut self.filter else {
            return Ok(());
        };
        let on = read_text(&self.dir.join("tracing_on"))
            .map_err(io(format!("reading {}/tracing_on", self.dir.display())))?
            .trim()
            != "0";
        if on && !filter.attached() {
            filter.attach().map_err(HostError::Tracefs)?;
        } else if !on {
            filter.detach();
        }
        Ok(())
    }

    /// Reads every CPU's buffer dry into `tally`, then applies what is
    /// ordered.
    pub fn drain(
        &mut self,
        tally: &mut Tally,
        lookup: &mut dyn timewait_trace::Lookup,
    ) -> Result<(), HostError> {
        // Every event stamped before this instant is in a buffer by the time
        // the last one is read.
        let watermark = now_ns();
        self.follow_switch()?;
        if let Some(filter) = &mut self.filter {
            filter.drain(&mut |t| match t {
                Some(t) => tally.push(t),
                None => tally.undecoded(),
            });
        }
        for i in 0..self.pipes.len() {
            loop {
                let n = match self.pipes[i].read(&mut self.page) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io(format!("reading {}", self.dir.display()))(e)),
                };
                let decoder = &self.decoder;
                parse_page(&self.page[..n], &self.layout, |ts, r| {
                    match decoder.decode(r) {
                        Some(event) => tally.push(Timed { ts, event }),
                        None => tally.undecoded(),
                    }
                })
                .map_err(HostError::Trace)?;
            }
        }
        tally.advance(watermark, lookup);
        Ok(())
    }

    /// Stops recording (the buffers keep what they have).
    pub fn stop(&mut self) -> Result<(), HostError> {
        if let Some(f) = &mut self.filter {
            f.detach();
        }
        write(&self.dir.join("tracing_on"), "0")
    }

    /// Events the kernel could not store, summed over CPUs (and the BPF
    /// ring's).
    pub fn lost(&self) -> Result<u64, HostError> {
        let ring = match &self.filter {
            Some(f) => f.lost().map_err(HostError::Tracefs)?,
            None => 0,
        };
        let Ok(dir) = fs::read_dir(self.dir.join("per_cpu")) else {
            return Ok(ring);
        };
        Ok(ring
            + dir
                .flatten()
                .filter_map(|e| read_text(&e.path().join("stats")).ok())
                .map(|s| {
                    s.lines()
                        .filter_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            matches!(k.trim(), "overrun" | "dropped events")
                                .then(|| v.trim().parse::<u64>().ok())?
                        })
                        .sum::<u64>()
                })
                .sum::<u64>())
    }

    /// The instance's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.filter = None;
        let _ = fs::write(self.dir.join("tracing_on"), "0");
        // The instance cannot go while a pipe of it is open.
        self.pipes.clear();
        for _ in 0..50 {
            match fs::remove_dir(&self.dir) {
                Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => return,
            }
        }
    }
}

/// Reads a tracefs text file with one large read: some (such as
/// `events/header_page`) end after the first read, however short, so the
/// small first read `read_to_string` makes would cut them off.
fn read_text(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(len * 2, 0);
        }
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))
}

fn read(path: &Path) -> Result<String, HostError> {
    read_text(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => HostError::Tracefs(format!(
            "{} is missing: this kernel lacks a tracepoint trace needs",
            path.display()
        )),
        _ => io(format!("reading {}", path.display()))(e),
    })
}

fn format(root: &Path, tp: Tracepoint) -> Result<Format, HostError> {
    let path = root
        .join("events")
        .join(tp.system)
        .join(tp.name)
        .join("format");
    Format::parse(&path.display().to_string(), &read(&path)?).map_err(HostError::Trace)
}

fn formats(root: &Path, syscalls: bool) -> Result<Formats, HostError> {
    let [set_state, receive_reset, error_report, new_task, rename] = TRACEPOINTS;
    Ok(Formats {
        set_state: format(root, set_state)?,
        receive_reset: format(root, receive_reset)?,
        error_report: format(root, error_report)?,
        new_task: format(root, new_task)?,
        rename: format(root, rename)?,
        syscalls: if syscalls {
            let [exit, setns, unshare] = SYSCALLS.map(|tp| format(root, tp));
            Some([exit?, setns?, unshare?])
        } else {
            None
        },
    })
}

fn now_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(u64::MAX)
}

/// What to trace: one namespace, or all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceTarget {
    /// One namespace.
    One(Target),
    /// Every namespace (`--all`).
    All,
}

/// How to trace.
#[derive(Debug, Clone, Copy)]
pub struct TraceOptions {
    /// For how long (unless stopped).
    pub duration: Duration,
    /// Destinations kept per process in the report.
    pub top: usize,
    /// Also trace connect()'s failures (`--syscalls`): those before any
    /// handshake (no route) are seen only so, at the cost of every system
    /// call taking the kernel's slow path while tracing.
    pub syscalls: bool,
    /// Filter state changes with BPF where the kernel allows (cheaper);
    /// `false` reads them from the tracefs event.
    pub bpf: bool,
}

/// A finished trace.
#[derive(Debug, Clone)]
pub struct Traced {
    /// The report.
    pub report: TraceReport,
    /// Where tracefs is, and whether this run mounted it.
    pub tracefs: Tracefs,
    /// Whether Ctrl-C (or SIGTERM) ended it early.
    pub interrupted: bool,
    /// Where the state changes came from.
    pub state_source: StateSource,
}

/// Traces `target` for `duration` (or until `stop` is set), calling
/// `each_second` with the report so far once recording has started and
/// then about once a second.
pub fn trace(
    target: &TraceTarget,
    options: &TraceOptions,
    stop: &AtomicBool,
    each_second: &mut dyn FnMut(&TraceReport),
) -> Result<Traced, HostError> {
    let TraceOptions {
        duration,
        top,
        syscalls,
        bpf,
    } = *options;
    let scope = match target {
        TraceTarget::All => Scope::All,
        TraceTarget::One(t) => Scope::Netns(t.netns_inode()?),
    };
    let fs_ = tracefs()?;
    let (mut instance, state_source) = Instance::create(&fs_, syscalls, bpf)?;
    let names = crate::process::netns_names();
    let name_of = |ino: u64| {
        names
            .get(&ino)
            .cloned()
            .unwrap_or_else(|| format!("net:[{ino}]"))
    };
    let label = match (target, scope) {
        (TraceTarget::One(Target::Pid(p)), Scope::Netns(ns)) => {
            format!("netns {} (of pid {p})", name_of(ns))
        }
        (_, Scope::Netns(ns)) => format!("netns {}", name_of(ns)),
        (_, Scope::All) => "all namespaces".to_string(),
    };
    let mut tally = Tally::new(scope).with_syscalls(syscalls);
    if let Scope::Netns(ns) = scope {
        // Threads already running are placed now: one that exits before its
        // first event is read could no longer be.
        for (tid, info) in crate::process::threads_in(Some(ns)) {
            tally.seed(tid, info);
        }
    }
    let mut lookup = crate::process::HostLookup;
    let start = Instant::now();
    each_second(&tally.report(0.0, &label, 0, top, &name_of));
    let mut next_tick = start + Duration::from_secs(1);
    let mut interrupted = false;
    loop {
        instance.drain(&mut tally, &mut lookup)?;
        let now = Instant::now();
        if now >= start + duration {
            break;
        }
        if stop.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
        if now >= next_tick {
            next_tick += Duration::from_secs(1);
            let so_far = tally.report(
                now.duration_since(start).as_secs_f64(),
                &label,
                instance.lost()?,
                top,
                &name_of,
            );
            each_second(&so_far);
        }
        std::thread::sleep(POLL.min((start + duration).saturating_duration_since(now)));
    }
    let elapsed = start.elapsed().as_secs_f64();
    instance.stop()?;
    instance.drain(&mut tally, &mut lookup)?;
    tally.finish(&mut lookup);
    let lost = instance.lost()?;
    let report = tally.report(elapsed, &label, lost, top, &name_of);
    Ok(Traced {
        report,
        tracefs: fs_,
        interrupted,
        state_source,
    })
}
