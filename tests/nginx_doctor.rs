//! `doctor` with a real nginx in a namespace: nginx proxies to a backend
//! (itself, on another port) without keepalive, as the article's broken
//! setup does. doctor names the config file and the upstream's line, ties
//! it to the backend's TIME_WAIT and ranks it first; after applying
//! `nginx check --diff` with `patch -p0` and a reload, the same traffic
//! leaves no new TIME_WAIT and the nginx findings are gone.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::harness::netns::Netns;

const BROKEN: &str = "upstream app {
        server 127.0.0.1:8080;
    }";

fn config(dir: &Path, upstream: &str) -> String {
    let d = dir.display();
    format!(
        "user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    {upstream}
    server {{
        listen 127.0.0.1:8080;
        location / {{ return 200 \"ok\\n\"; }}
    }}
    server {{
        listen 127.0.0.1:8000;
        location / {{
            proxy_pass http://app;
        }}
    }}
}}
"
    )
}

/// `n` requests through the proxy, each on its own client connection.
fn traffic(ns: &Netns, n: usize) {
    ns.run(|| {
        for _ in 0..n {
            let mut s = TcpStream::connect("127.0.0.1:8000").unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut r = String::new();
            s.read_to_string(&mut r).unwrap();
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        }
    });
}

/// TIME_WAIT sockets on the backend's port 8080.
fn backend_time_wait(ns: &Netns) -> usize {
    ns.ss_time_wait()
        .iter()
        .filter(|l| {
            l.split_whitespace()
                .nth(2)
                .is_some_and(|a| a.ends_with(":8080"))
        })
        .count()
}

fn doctor(ns: &Netns) -> Value {
    let o = Command::new(env!("CARGO_BIN_EXE_timewait"))
        .args(["doctor", "--netns", ns.name(), "--json"])
        .output()
        .unwrap();
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)))
}

fn nginx(ns: &Netns, conf: &Path, extra: &[&str]) {
    let o = Command::new("ip")
        .args(["netns", "exec", ns.name(), "nginx", "-c"])
        .arg(conf)
        .args(extra)
        .output()
        .expect("nginx (Debian nginx-light; .ci/run installs it)");
    assert!(
        o.status.success(),
        "nginx {extra:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Stops the namespace's nginx however the test ends.
struct Running<'a>(&'a Netns, std::path::PathBuf);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "exec", self.0.name(), "nginx", "-c"])
            .arg(&self.1)
            .args(["-s", "stop"])
            .output();
    }
}

#[test]
fn doctor_names_the_nginx_line_behind_the_backends_time_wait_and_the_fix_ends_it() {
    let Some(ns) = Netns::new("ngxdoc") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("timewait-ngxdoc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, config(&dir, BROKEN)).unwrap();
    nginx(&ns, &conf, &[]);
    let _running = Running(&ns, conf.clone());
    // Wait for the workers to listen (bounded).
    for _ in 0..100 {
        if ns.run(|| TcpStream::connect("127.0.0.1:8000").is_ok()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    traffic(&ns, 200);
    let tw = backend_time_wait(&ns);
    assert!(tw >= 190, "the backend closed first each time: {tw}");

    let v = doctor(&ns);
    let first = &v["findings"][0];
    assert_eq!(first["code"], "nginx-upstream-no-keepalive", "{v}");
    assert_eq!(first["file"], conf.display().to_string());
    let upstream_line = config(&dir, BROKEN)
        .lines()
        .position(|l| l.contains("upstream app"))
        .unwrap()
        + 1;
    assert_eq!(first["line"], upstream_line, "the upstream's line");
    assert!(
        first["evidence"]
            .as_str()
            .unwrap()
            .contains("TIME_WAIT on port 8080"),
        "{first}"
    );
    let codes: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert!(
        codes.contains(&"nginx-upstream-http10")
            && codes.contains(&"nginx-connection-close-forwarded"),
        "{codes:?}"
    );
    assert!(codes.contains(&"server-side-time-wait"), "{codes:?}");
    assert!(
        v["nginx"].as_str().unwrap().contains("master pid"),
        "{}",
        v["nginx"]
    );

    // The article's fix, as `nginx check --diff` writes it, applied with
    // patch -p0, and a reload.
    let diff = Command::new(env!("CARGO_BIN_EXE_timewait"))
        .args(["nginx", "check", "nginx.conf", "--diff"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let diff = String::from_utf8(diff.stdout).unwrap();
    assert!(diff.contains("+        keepalive 32;"), "{diff}");
    let mut patch = Command::new("patch")
        .args(["-p0", "--batch"])
        .current_dir(&dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("patch");
    patch
        .stdin
        .take()
        .unwrap()
        .write_all(diff.as_bytes())
        .unwrap();
    let patched = patch.wait_with_output().unwrap();
    assert!(
        patched.status.success(),
        "{}",
        String::from_utf8_lossy(&patched.stderr)
    );
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(
        text.contains("proxy_set_header Connection \"\";")
            && text.contains("proxy_http_version 1.1;"),
        "{text}"
    );
    // The reload is done when the master has one worker, a new one: the
    // old one (still serving with the old configuration) has exited.
    let master = std::fs::read_to_string(dir.join("nginx.pid"))
        .unwrap()
        .trim()
        .to_string();
    let workers = || -> Vec<String> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
                let ppid = stat
                    .rsplit(')')
                    .next()?
                    .split_whitespace()
                    .nth(1)?
                    .to_string();
                let cmd = std::fs::read_to_string(e.path().join("cmdline")).unwrap_or_default();
                (ppid == master).then(|| format!("{} {cmd}", e.file_name().to_string_lossy()))
            })
            .collect()
    };
    let old = workers();
    nginx(&ns, &conf, &["-s", "reload"]);
    let mut settled = false;
    for _ in 0..200 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let now = workers();
        if now.len() == 1 && !now[0].contains("shutting down") && !old.contains(&now[0]) {
            settled = true;
            break;
        }
    }
    assert!(
        settled,
        "nginx never took the fixed configuration: {:?}",
        workers()
    );
    traffic(&ns, 5); // the new worker opens its kept-alive connection
    let before = backend_time_wait(&ns);
    traffic(&ns, 200);
    let after = backend_time_wait(&ns);
    assert!(
        after <= before,
        "no new TIME_WAIT on the backend: {before} then {after}: {:?}",
        ns.ss_time_wait()
            .iter()
            .filter(|l| l.contains(":8080"))
            .take(5)
            .collect::<Vec<_>>()
    );
    let v = doctor(&ns);
    let nginx_codes: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .filter(|c| c.starts_with("nginx-"))
        .collect();
    assert!(nginx_codes.is_empty(), "{nginx_codes:?}");
    drop(_running);
    let _ = std::fs::remove_dir_all(&dir);
}
