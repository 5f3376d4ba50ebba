//! The proxies a scenario puts between the client and the backend:
//! `timewait proxy` (the binary itself) and nginx, each a child process
//! inside the scenario's namespace, stopped (SIGTERM, then waited for)
//! when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use timewait_host::nginx_files::installed_version;
use timewait_host::scratch::ScratchNetns;
use timewait_nginx::check::Version;

use crate::LabError;
use crate::scenario::{BACKEND_IP, BACKEND_PORT, NGINX_KEEPALIVE, NGINX_PORT, PROXY_PORT};

/// A proxy process in the namespace.
pub struct Service {
    child: Child,
    /// Its files (nginx's configuration and logs), removed with it.
    dir: Option<PathBuf>,
}

impl Service {
    /// `timewait proxy` from `exe`, one worker, in front of the backend.
    pub fn timewait_proxy(ns: &ScratchNetns, exe: &Path) -> Result<Service, LabError> {
        let mut cmd = Command::new(exe);
        cmd.args([
            "proxy",
            "--listen",
            &format!("127.0.0.1:{PROXY_PORT}"),
            "--upstream",
            &format!("{BACKEND_IP}:{BACKEND_PORT}"),
            "--workers",
            "1",
        ]);
        Service::start(ns, cmd, None, PROXY_PORT, "timewait proxy")
    }

    /// nginx, one worker, in front of the backend: its defaults toward the
    /// upstream, or with the article's keep-alive lines.
    pub fn nginx(ns: &ScratchNetns, keepalive: bool) -> Result<Service, LabError> {
        let fail = |why: String| LabError::Service { what: "nginx", why };
        let dir = std::env::temp_dir().join(format!("{}-nginx", ns.name()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| fail(format!("creating {}: {e}", dir.display())))?;
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(&dir, keepalive))
            .map_err(|e| fail(format!("writing {}: {e}", conf.display())))?;
        let mut cmd = Command::new("nginx");
        cmd.arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"));
        Service::start(ns, cmd, Some(dir), NGINX_PORT, "nginx")
    }

    fn start(
        ns: &ScratchNetns,
        cmd: Command,
        dir: Option<PathBuf>,
        port: u16,
        what: &'static str,
    ) -> Result<Service, LabError> {
        let program = cmd.get_program().to_string_lossy().to_string();
        let mut exec = Command::new("ip");
        exec.args(["netns", "exec", ns.name()])
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = exec.spawn().map_err(|e| LabError::Service {
            what,
            why: format!("starting {program}: {e}"),
        })?;
        let mut service = Service { child, dir };
        // Ready when it accepts (bounded).
        let up = ns.spawn(move || {
            (0..500).any(|_| {
                let ok = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
                if !ok {
                    std::thread::sleep(Duration::from_millis(10));
                }
                ok
            })
        })?;
        match up.join() {
            Ok(Some(true)) => Ok(service),
            _ => {
                let exited = match service.child.try_wait() {
                    Ok(Some(status)) => format!(" ({status})"),
                    _ => String::new(),
                };
                Err(LabError::Service {
                    what,
                    why: format!(
                        "it did not start listening on 127.0.0.1:{port}{exited}{}",
                        service.last_error()
                    ),
                })
            }
        }
    }

    /// The last line of its error log, if it has one (": …").
    fn last_error(&self) -> String {
        self.dir
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.join("error.log")).ok())
            .and_then(|t| t.lines().last().map(|l| format!(": {l}")))
            .unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // `ip netns exec` execs the program: this pid is the proxy's (nginx's
        // master, which stops its worker on SIGTERM).
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// The installed nginx's version (`nginx -v`), `None` where there is no
/// nginx to run (scenarios `nginx*` are skipped then).
pub fn nginx_version() -> Option<Version> {
    installed_version().and_then(|v| Version::parse(&v))
}

/// nginx's configuration: one worker, files in `dir`, proxying everything
/// to the backend; with `keepalive`, the article's three lines.
pub fn nginx_conf(dir: &Path, keepalive: bool) -> String {
    let d = dir.display();
    let (pool, location) = if keepalive {
        (
            format!("\n        keepalive {NGINX_KEEPALIVE};"),
            "\n            proxy_http_version 1.1;\n            proxy_set_header Connection \"\";",
        )
    } else {
        (String::new(), "")
    };
    format!(
        "worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    keepalive_requests 1000000;
    upstream backend {{
        server {BACKEND_IP}:{BACKEND_PORT};{pool}
    }}
    server {{
        listen 127.0.0.1:{NGINX_PORT};
        location / {{
            proxy_pass http://backend;{location}
        }}
    }}
}}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keepalive_configuration_adds_exactly_the_articles_lines() {
        let dir = Path::new("/tmp/x");
        let without = nginx_conf(dir, false);
        let with = nginx_conf(dir, true);
        let added: Vec<&str> = with
            .lines()
            .filter(|l| !without.lines().any(|w| w == *l))
            .map(str::trim)
            .collect();
        assert_eq!(
            added,
            [
                "keepalive 32;",
                "proxy_http_version 1.1;",
                "proxy_set_header Connection \"\";"
            ]
        );
        assert!(without.contains("proxy_pass http://backend;"));
    }
}
