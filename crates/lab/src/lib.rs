//! `timewait lab`: the article reproduced on this machine's kernel. Each
//! scenario runs in a throw-away network namespace with its own sysctls, a
//! built-in backend (and, for the fix, `timewait proxy`), and a paced
//! stream of short connections from the load generator; what the kernel
//! did is printed beside what the model predicts for the same stream.
//!
//! - [`scenario`]: the scenarios and the scaled-down settings.
//! - `backend` (private): the built-in backend.
//! - `service` (private): the proxies in front of it (`timewait proxy`,
//!   nginx), as child processes in the namespace.
//! - [`run`]: one scenario, measured and predicted.
//! - [`report`]: the JSON document.
//! - [`html`]: the self-contained HTML report with an SVG chart per scenario.
#![deny(missing_docs)]

mod backend;
pub mod html;
pub mod report;
pub mod run;
pub mod scenario;
mod service;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

pub use report::{LabReport, ScenarioReport, Skipped};
pub use scenario::Scenario;

/// Why the lab could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// Not root.
    #[error("lab needs root: it makes network namespaces and sets their sysctls")]
    NotRoot,
    /// The host refused (not root, no `ip`, a sysctl).
    #[error(transparent)]
    Host(#[from] timewait_host::HostError),
    /// The built-in backend could not start.
    #[error("the lab's backend: {0}")]
    Backend(String),
    /// A proxy in front of the backend (`timewait proxy`, nginx) could not
    /// start.
    #[error("{what}: {why}")]
    Service {
        /// Which.
        what: &'static str,
        /// Why.
        why: String,
    },
    /// The load generator failed.
    #[error("the load generator: {0}")]
    Load(String),
    /// The model refused the scenario's settings.
    #[error("the model: {0}")]
    Model(String),
}

/// Whether this process may run the lab.
pub fn check_root() -> Result<(), LabError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(LabError::NotRoot)
    }
}

/// Runs `scenarios` in order (stopping early if `stop` is set), calling
/// `each` after each one.
pub fn run_all(
    scenarios: &[Scenario],
    exe: &Path,
    stop: &Arc<AtomicBool>,
    each: &mut dyn FnMut(&ScenarioReport),
) -> Result<LabReport, LabError> {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    // Once per run: which scenarios can run, and what nginx will do.
    let nginx = service::nginx_version();
    for s in scenarios {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if matches!(s.traffic, scenario::Traffic::Nginx { .. }) && nginx.is_none() {
            skipped.push(report::Skipped {
                name: s.name.into(),
                why: "nginx is not installed (Debian: apt-get install nginx-light)".into(),
            });
            continue;
        }
        let r = run::run_scenario(s, exe, nginx, stop)?;
        each(&r);
        out.push(r);
    }
    Ok(LabReport {
        kernel_release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into()),
        duration_seconds: start.elapsed().as_secs_f64(),
        scenarios: out,
        skipped,
        interrupted: stop.load(Ordering::Relaxed),
    })
}
