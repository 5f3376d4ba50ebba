//! Shared test helpers.

pub mod backend;
pub mod netns;
pub mod peer;
pub mod traffic;

/// Held by tests whose timing must not be disturbed (paced connect streams
/// against the kernel) and by the tests that load the machine most (proxy
/// soak, large bodies), so the two kinds never overlap on 2 cores.
pub static QUIET: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`QUIET`], surviving a test that panicked while holding it.
pub fn quiet() -> std::sync::MutexGuard<'static, ()> {
    QUIET.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs timewait as `nobody` (setpriv, from util-linux), to see how it
/// behaves without privileges.
pub fn timewait_as_nobody(args: &[&str]) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_timewait"),
        ])
        .args(args)
        .output()
        .expect("run setpriv")
}
