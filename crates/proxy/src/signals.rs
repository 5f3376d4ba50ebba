//! SIGTERM and SIGINT stop the proxy gracefully (no new connections; the
//! exchanges in flight finish); with a `-c` file, SIGHUP re-reads it and,
//! if it is valid and keeps the same listener addresses, hands it to the
//! workers. A file that does not parse is reported on stderr and the
//! running configuration stays. Signals are watched on a thread of their own.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Config;

/// New configurations, as SIGHUP brings them.
pub(crate) type Reloads = watch::Receiver<Option<Arc<Config>>>;

/// Installs the handlers (before the caller announces its listeners, so an
/// early SIGTERM finds them) and returns the stop flag and the reloads.
pub(crate) fn watch(
    file: Option<(PathBuf, Vec<SocketAddr>)>,
) -> io::Result<(watch::Receiver<bool>, Reloads)> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = watch::channel(false);
    let (reload_tx, reload_rx) = watch::channel(None);
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut term, mut hup) = signals.block_on(async {
        Ok::<_, io::Error>((
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        ))
    })?;
    std::thread::Builder::new()
        .name("proxy-signals".into())
        .spawn(move || {
            signals.block_on(async move {
                loop {
                    tokio::select! {
                        _ = term.recv() => break,
                        _ = tokio::signal::ctrl_c() => break,
                        _ = hup.recv() => {
                            let Some((path, listening)) = &file else { continue };
                            match reread(path, listening) {
                                Ok(cfg) => {
                                    if reload_tx.send(Some(Arc::new(cfg))).is_ok() {
                                        eprintln!("timewait proxy: reloaded {}", path.display());
                                    }
                                }
                                Err(e) => eprintln!("timewait proxy: reload refused, keeping the running configuration: {e}"),
                            }
                        }
                    }
                }
                // With every worker gone there is nobody left to stop.
                let _ = tx.send(true);
            });
        })?;
    Ok((rx, reload_rx))
}

fn reread(path: &Path, listening: &[SocketAddr]) -> Result<Config, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let cfg =
        crate::config_file::parse(&path.display().to_string(), &text).map_err(|e| e.to_string())?;
    let wanted: Vec<SocketAddr> = cfg.listeners.iter().map(|l| l.listen).collect();
    let same = wanted.len() == listening.len()
        && wanted
            .iter()
            .zip(listening)
            .all(|(w, l)| w == l || (w.port() == 0 && w.ip() == l.ip()));
    if !same {
        return Err("listener addresses changed; that needs a restart".into());
    }
    Ok(cfg)
}
