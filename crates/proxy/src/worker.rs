//! Workers: each is a thread with a single-threaded tokio runtime, its own
//! socket for every listener (`SO_REUSEPORT`, so the kernel spreads
//! connections), its own pools and health state (the request path takes no
//! lock and moves nothing between threads, like nginx's workers). Each
//! worker sweeps its pools, flushes its access log, takes reloads, and on
//! shutdown stops accepting and waits for its connections to finish.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use timewait_pool::SharedPool;

use crate::accept::accept_until_stopped;
use crate::access_log::AccessLog;
use crate::clients::Clients;
use crate::config::Config;
use crate::h1::io::now;
use crate::h1::session::{GroupRt, Router};
use crate::metrics::Metrics;
use crate::pool::{Shared, limits};
use crate::signals::{self, Reloads};
use crate::{admin, limits as fds};

/// How long a shutdown waits for open connections to finish.
const DRAIN_ON_SHUTDOWN: Duration = Duration::from_secs(30);
/// How often idle pooled connections are checked.
const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// How often the access log is written out.
const LOG_EVERY: Duration = Duration::from_millis(200);
/// The kernel's accept queue per listening socket.
const BACKLOG: i32 = 4096;

/// The addresses a started proxy really listens on, and its limits.
#[derive(Debug, Clone)]
pub struct Bound {
    /// Every client listener.
    pub listeners: Vec<SocketAddr>,
    /// The admin listener.
    pub admin: Option<SocketAddr>,
    /// Client connections each worker serves at once.
    pub max_connections: usize,
    /// The open-files limit in force.
    pub nofile: u64,
}

fn listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

/// Validates `cfg`, raises the open-files limit, binds every listener (so
/// address errors surface here), installs the signal handlers, calls
/// `ready` with what was bound, then runs the workers until SIGTERM (or
/// until one fails). With `reload_from`, SIGHUP re-reads that file.
pub fn run(cfg: Config, reload_from: Option<PathBuf>, ready: impl FnOnce(Bound)) -> io::Result<()> {
    cfg.validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let nofile = fds::raise_nofile()?;
    let max_connections = cfg
        .max_connections
        .unwrap_or_else(|| fds::max_connections(&cfg, nofile));
    let workers = cfg.workers;
    // sockets[w][l]: worker w's socket for listener l.
    let mut sockets: Vec<Vec<std::net::TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for spec in &cfg.listeners {
        let first = listener(spec.listen)?;
        let addr = first.local_addr()?;
        bound.push(addr);
        sockets[0].push(first);
        for w in sockets.iter_mut().skip(1) {
            w.push(listener(addr)?);
        }
    }
    let admin = cfg.admin.map(std::net::TcpListener::bind).transpose()?;
    if let Some(a) = &admin {
        a.set_nonblocking(true)?;
    }
    let (stop, reloads) = signals::watch(reload_from.map(|p| (p, bound.clone())))?;
    ready(Bound {
        listeners: bound,
        admin: admin.as_ref().map(|a| a.local_addr()).transpose()?,
        max_connections,
        nofile,
    });
    let all: Arc<[Arc<Metrics>]> = (0..workers).map(|_| Arc::default()).collect();
    let shared = Arc::new(shared_pools(&cfg));
    let cfg = Arc::new(cfg);
    let mut admin = admin.map(|a| (a, all.clone()));
    let handles: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, ls)| {
            let w = Worker {
                cfg: cfg.clone(),
                metrics: all[i].clone(),
                shared: shared.clone(),
                max_connections,
            };
            let (admin, stop, reloads) = (admin.take(), stop.clone(), reloads.clone());
            std::thread::Builder::new()
                .name(format!("proxy-worker-{i}"))
                .spawn(move || w.run(ls, admin, stop, reloads))
        })
        .collect::<io::Result<_>>()?;
    for h in handles {
        h.join()
            .map_err(|_| io::Error::other("a worker panicked"))??;
    }
    Ok(())
}

/// One shared pool per group that asks for it (`None` for the others).
fn shared_pools(cfg: &Config) -> Vec<Option<Shared>> {
    cfg.groups
        .iter()
        .map(|g| {
            g.pool
                .shared
                .then(|| Arc::new(SharedPool::new(limits(&g.pool))))
        })
        .collect()
}

/// What one worker thread is given.
struct Worker {
    cfg: Arc<Config>,
    metrics: Arc<Metrics>,
    shared: Arc<Vec<Option<Shared>>>,
    max_connections: usize,
}

impl Worker {
    /// The routers of this worker, one per listener, over one set of groups
    /// (so routes naming the same group share its pool and health).
    fn routers(
        &self,
        cfg: &Config,
        shared: &[Option<Shared>],
        log: &Option<Rc<AccessLog>>,
    ) -> Vec<Rc<Router>> {
        let groups: Rc<[Rc<GroupRt>]> = cfg
            .groups
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let shared = shared.get(i).cloned().flatten();
                Rc::new(GroupRt::new(
                    Arc::new(g.clone()),
                    self.metrics.clone(),
                    shared,
                ))
            })
            .collect();
        cfg.listeners
            .iter()
            .map(|l| {
                Rc::new(Router {
                    groups: groups.clone(),
                    listener: Arc::new(l.clone()),
                    metrics: self.metrics.clone(),
                    log: log.clone(),
                })
            })
            .collect()
    }

    fn run(
        self,
        sockets: Vec<std::net::TcpListener>,
        admin: Option<(std::net::TcpListener, Arc<[Arc<Metrics>]>)>,
        stop: tokio::sync::watch::Receiver<bool>,
        mut reloads: Reloads,
    ) -> io::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            if let Some((l, all)) = admin {
                tokio::task::spawn_local(admin::serve(tokio::net::TcpListener::from_std(l)?, all));
            }
            let log = self.cfg.access_log.then(|| Rc::new(AccessLog::default()));
            if let Some(log) = log.clone() {
                tokio::task::spawn_local(async move {
                    let mut tick = tokio::time::interval(LOG_EVERY);
                    loop {
                        tick.tick().await;
                        log.flush();
                    }
                });
            }
            let clients = Clients::new(self.max_connections);
            // The routers new connections get; a reload replaces them, while
            // connections already open keep the ones they started with.
            let routers = Rc::new(RefCell::new(self.routers(&self.cfg, &self.shared, &log)));
            {
                let routers = routers.clone();
                tokio::task::spawn_local(async move {
                    let mut tick = tokio::time::interval(SWEEP_EVERY);
                    loop {
                        tick.tick().await;
                        let at = now();
                        if let Some(r) = routers.borrow().first() {
                            for g in r.groups.iter() {
                                g.pool.sweep(at);
                            }
                        }
                    }
                });
            }
            let this = Rc::new(self);
            {
                let (routers, log, this) = (routers.clone(), log.clone(), this.clone());
                tokio::task::spawn_local(async move {
                    while reloads.changed().await.is_ok() {
                        let next = reloads.borrow_and_update().clone();
                        if let Some(next) = next {
                            // A reload's groups get their own pools; a group
                            // that asks for a shared pool gets a new one.
                            let shared = shared_pools(&next);
                            *routers.borrow_mut() = this.routers(&next, &shared, &log);
                        }
                    }
                });
            }
            let mut accepting = Vec::new();
            for (index, l) in sockets.into_iter().enumerate() {
                let listener = tokio::net::TcpListener::from_std(l)?;
                let (routers, clients, this) = (routers.clone(), clients.clone(), this.clone());
                let stop = stop.clone();
                accepting.push(tokio::task::spawn_local(async move {
                    accept_until_stopped(
                        listener,
                        stop,
                        clients,
                        &this.metrics,
                        move |stream, peer, stop, open| {
                            let router = routers.borrow().get(index).cloned()?;
                            Some(router.serve(stream, peer, stop, open))
                        },
                    )
                    .await;
                }));
            }
            for a in accepting {
                // An accept loop that panicked is reported by join below.
                a.await.map_err(io::Error::other)?;
            }
            drain(&clients).await;
            if let Some(log) = &log {
                log.flush();
            }
            Ok(())
        })
    }
}

/// After the listeners stop: waits for the open connections to finish, at
/// most `DRAIN_ON_SHUTDOWN`.
async fn drain(clients: &Clients) {
    let drained = tokio::time::timeout(DRAIN_ON_SHUTDOWN, async {
        while clients.open() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if drained.is_err() {
        eprintln!(
            "timewait proxy: shutdown: {} connections still open after {DRAIN_ON_SHUTDOWN:?}; closing them",
            clients.open()
        );
    }
}
