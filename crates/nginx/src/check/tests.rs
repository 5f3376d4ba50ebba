//! Each code with configurations that fire it and ones that do not, in
//! both version regimes.

use std::path::{Path, PathBuf};

use super::*;
use crate::parse::{Loader, parse_file};

struct One(String);

impl Loader for One {
    fn read(&self, _: &Path) -> std::io::Result<Vec<u8>> {
        Ok(self.0.as_bytes().to_vec())
    }
    fn glob(&self, _: &Path) -> std::io::Result<Vec<PathBuf>> {
        Ok(vec![])
    }
}

const OLD: Option<Version> = Some(Version(1, 22, 1));
const NEW: Option<Version> = Some(Version(1, 29, 7));

fn findings(conf: &str, v: Option<Version>) -> Vec<Finding> {
    let c = parse_file(&One(conf.to_string()), Path::new("/etc/nginx/nginx.conf")).unwrap();
    check(&c, v)
}

fn codes(conf: &str, v: Option<Version>) -> Vec<(&'static str, usize)> {
    findings(conf, v).iter().map(|f| (f.code, f.line)).collect()
}

const FIXED: &str = "http {
    upstream app {
        server 10.0.0.5:8080;
        keepalive 32;
    }
    server {
        location / {
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_pass http://app;
        }
    }
}";

const BROKEN: &str = "http {
    upstream App {
        server 10.0.0.5:8080;
    }
    server {
        location / {
            proxy_pass http://app;
        }
    }
}";

#[test]
fn the_articles_fix_has_no_findings_and_the_default_setup_has_all_three() {
    assert!(codes(FIXED, OLD).is_empty(), "{:?}", findings(FIXED, OLD));
    assert_eq!(
        codes(BROKEN, OLD),
        [
            ("nginx-upstream-no-keepalive", 2),
            ("nginx-connection-close-forwarded", 7),
            ("nginx-upstream-http10", 7)
        ]
    );
    let f = &findings(BROKEN, OLD)[0];
    assert_eq!(f.servers, ["10.0.0.5:8080"]);
    assert!(
        f.evidence.contains("Proxied from: /etc/nginx/nginx.conf:7"),
        "{}",
        f.evidence
    );
    assert!(f.fix.contains("keepalive 32;"));
}

#[test]
fn from_1_29_7_the_defaults_are_the_fix() {
    assert!(codes(BROKEN, NEW).is_empty(), "{:?}", findings(BROKEN, NEW));
    // Unless set back explicitly.
    let back = BROKEN.replace(
        "proxy_pass",
        "proxy_http_version 1.0; proxy_set_header Connection close; proxy_pass",
    );
    assert_eq!(
        codes(&back, NEW).iter().map(|c| c.0).collect::<Vec<_>>(),
        ["nginx-connection-close-forwarded", "nginx-upstream-http10"]
    );
    let zero = BROKEN.replace(
        "server 10.0.0.5:8080;",
        "server 10.0.0.5:8080; keepalive 0;",
    );
    assert_eq!(codes(&zero, NEW)[0].0, "nginx-upstream-no-keepalive");
    // Without a version, the older defaults, said in the evidence.
    let f = findings(BROKEN, None);
    assert!(f[0].evidence.contains("before 1.29.7"), "{}", f[0].evidence);
}

#[test]
fn a_balancer_after_keepalive_drops_it_before_1_29_7() {
    let c = FIXED.replace("keepalive 32;", "keepalive 32;\n        least_conn;");
    let f = findings(&c, OLD);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].code, "nginx-upstream-no-keepalive");
    assert!(f[0].evidence.contains("least_conn"), "{}", f[0].evidence);
    let before = FIXED.replace("keepalive 32;", "least_conn;\n        keepalive 32;");
    assert!(codes(&before, OLD).is_empty());
    assert!(codes(&c, NEW).is_empty());
}

#[test]
fn implicit_upstreams_never_keep_connections_and_variables_are_not_judged() {
    let c = FIXED.replace("http://app", "http://10.0.0.9:80");
    assert_eq!(codes(&c, NEW), [("nginx-upstream-no-keepalive", 10)]);
    let v = FIXED.replace("http://app", "http://$backend");
    assert!(codes(&v, OLD).is_empty());
}

#[test]
fn connection_values_that_can_be_close() {
    let with = |value: &str| FIXED.replace("Connection \"\"", &format!("Connection {value}"));
    for v in ["close", "$http_connection"] {
        assert_eq!(
            codes(&with(v), NEW),
            [("nginx-connection-close-forwarded", 10)],
            "{v}"
        );
    }
    assert!(codes(&with("keep-alive"), NEW).is_empty());
    let ws = with("$connection_upgrade").replace(
        "    upstream app",
        "    map $http_upgrade $connection_upgrade { default upgrade; '' close; }\n    upstream app",
    );
    let f = findings(&ws, NEW);
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].evidence.contains("map $connection_upgrade"),
        "{}",
        f[0].evidence
    );
    let fixed_map = ws.replace("'' close;", "'' '';");
    assert!(codes(&fixed_map, NEW).is_empty());
}

#[test]
fn a_location_setting_one_header_loses_the_others() {
    let c = "http {
    upstream app { server 10.0.0.5:8080; keepalive 32; }
    proxy_http_version 1.1;
    proxy_set_header Connection \"\";
    server {
        proxy_set_header X-Real-IP $remote_addr;
        location / {
            proxy_set_header X-Request-Id $request_id;
            proxy_pass http://app;
        }
        location /ok {
            proxy_pass http://app;
        }
    }
}";
    let f = findings(c, OLD);
    let lost: Vec<&Finding> = f
        .iter()
        .filter(|f| f.code == "nginx-header-inheritance-lost")
        .collect();
    assert_eq!(lost.len(), 2, "{f:?}");
    // The server level loses Connection "" from http; the location loses X-Real-IP.
    assert_eq!(lost[0].line, 6);
    assert!(
        lost[0].evidence.contains("Connection: close"),
        "a default comes back: {}",
        lost[0].evidence
    );
    assert_eq!(lost[1].line, 8);
    assert!(lost[1].title.contains("X-Real-IP"), "{}", lost[1].title);
    assert!(
        lost[1]
            .fix
            .contains("proxy_set_header X-Real-IP $remote_addr;"),
        "{}",
        lost[1].fix
    );
    // And because of it, Connection: close is forwarded in both locations.
    assert_eq!(
        f.iter()
            .filter(|f| f.code == "nginx-connection-close-forwarded")
            .count(),
        2
    );
}

#[test]
fn add_header_inheritance_and_if_blocks() {
    let c = "http {
    add_header X-Frame-Options DENY;
    server {
        location / {
            add_header Cache-Control no-store;
            if ($arg_x) {
                proxy_pass http://10.0.0.1;
            }
        }
    }
}";
    let f = findings(c, NEW);
    assert!(
        f.iter()
            .any(|f| f.code == "nginx-header-inheritance-lost" && f.line == 5),
        "{f:?}"
    );
    assert!(
        f.iter()
            .any(|f| f.code == "nginx-upstream-no-keepalive" && f.line == 7),
        "inside if: {f:?}"
    );
}

#[test]
fn early_closes_in_the_upstream_are_noted() {
    let c = FIXED.replace(
        "keepalive 32;",
        "keepalive 32; keepalive_requests 100; keepalive_time 10s;",
    );
    let f = findings(&c, OLD);
    assert_eq!(
        f.iter()
            .filter(|f| f.code == "nginx-keepalive-requests-low")
            .count(),
        2,
        "{f:?}"
    );
    assert!(
        codes(
            &FIXED.replace("keepalive 32;", "keepalive 32; keepalive_requests 10000;"),
            OLD
        )
        .is_empty()
    );
}

#[test]
fn versions_parse() {
    assert_eq!(Version::parse("nginx/1.29.7"), Some(Version(1, 29, 7)));
    assert_eq!(Version(1, 22, 1).upstream_keepalive_requests(), Some(1000));
    assert_eq!(Version(1, 19, 9).upstream_keepalive_requests(), Some(100));
    assert_eq!(Version(1, 14, 0).upstream_keepalive_requests(), None);
    assert_eq!(Version::parse("1.22"), Some(Version(1, 22, 0)));
    assert_eq!(Version::parse("one"), None);
    assert!(Version(1, 30, 0).new_defaults() && !Version(1, 29, 6).new_defaults());
}

#[test]
fn a_cache_far_smaller_than_the_workers_connections_is_noted() {
    let c = format!(
        "events {{ worker_connections 4096; }}\n{}",
        FIXED.replace("keepalive 32;", "keepalive 2;")
    );
    let f = findings(&c, OLD);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!((f[0].code, f[0].line), ("nginx-keepalive-too-small", 5));
    assert!(f[0].fix.starts_with("keepalive 512;"), "{}", f[0].fix);
    let ok = format!("events {{ worker_connections 1024; }}\n{FIXED}");
    assert!(codes(&ok, OLD).is_empty());
}
