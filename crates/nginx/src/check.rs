//! The article's nginx pitfalls, found in a parsed configuration. Pure.
//!
//! For every `proxy_pass`, with nginx's inheritance (a level inherits
//! `proxy_http_version` unless it sets it, and inherits the whole
//! `proxy_set_header` list only if it sets none):
//!
//! - `nginx-upstream-no-keepalive`: the target is a named `upstream`
//!   without `keepalive` (before 1.29.7, where 32 became the default), with
//!   `keepalive 0`, or with a balancer directive after `keepalive` (which
//!   silently drops it before 1.29.7); or an implicit upstream (a literal
//!   address), which never has a connection cache.
//! - `nginx-upstream-http10`: the effective `proxy_http_version` is 1.0
//!   (the default before 1.29.7).
//! - `nginx-connection-close-forwarded`: the effective headers do not clear
//!   `Connection` (before 1.29.7 nginx sends `close`), or set it to a value
//!   that can be `close`: a literal, `$http_connection`, or a `map` with a
//!   `close` value (the common WebSocket map sends `close` on every
//!   ordinary request).
//! - `nginx-header-inheritance-lost`: a level sets `proxy_set_header` (or
//!   `add_header`) and so loses every one set above it: the lost names,
//!   and whether the loss brings back a default (`Connection: close`,
//!   `Host $proxy_host`).
//! - `nginx-keepalive-requests-low`: `keepalive_requests` or
//!   `keepalive_time` in an upstream closes connections early (a TIME_WAIT
//!   each time).
//! - `nginx-keepalive-too-small`: `keepalive` far below the connections a
//!   worker serves (`worker_connections`, 64 times or more).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::parse::{Config, Directive};

/// An nginx version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// The release that made HTTP/1.1, no `Connection` header and
    /// `keepalive 32` the upstream defaults.
    pub const NEW_DEFAULTS: Version = Version(1, 29, 7);

    /// `1.22.1` (also with a leading `nginx/`).
    pub fn parse(s: &str) -> Option<Version> {
        let s = s.trim().trim_start_matches("nginx/");
        let mut it = s.split('.').map(|p| p.parse::<u32>().ok());
        let v = Version(it.next()??, it.next()??, it.next().flatten().unwrap_or(0));
        it.next().is_none().then_some(v)
    }

    fn new_defaults(self) -> bool {
        self >= Version::NEW_DEFAULTS
    }

    /// The default of the upstream `keepalive_requests`: after that many
    /// requests nginx closes a kept backend connection. Added in 1.15.3
    /// with 100, 1000 from 1.19.10 (nginx's CHANGES); none before.
    pub fn upstream_keepalive_requests(self) -> Option<u64> {
        if self >= Version(1, 19, 10) {
            Some(1000)
        } else if self >= Version(1, 15, 3) {
            Some(100)
        } else {
            None
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Causes TIME_WAIT churn or a wrong request.
    Warning,
}

/// One finding, at the line where the fix goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable code.
    pub code: &'static str,
    /// How bad.
    pub severity: Severity,
    /// One line.
    pub title: String,
    /// The file (an index into [`Config::files`]).
    #[serde(skip)]
    pub file_index: usize,
    /// The file's path.
    pub file: String,
    /// The line.
    pub line: usize,
    /// The effective values and where each came from.
    pub evidence: String,
    /// The exact snippet to add or change.
    pub fix: String,
    /// For upstream findings: the upstream's name and servers (so that
    /// `doctor` can match them against the sockets it counted).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    /// The fix as lines to insert, where one can be written mechanically
    /// (`nginx check --diff`).
    #[serde(skip)]
    pub edit: Option<Edit>,
}

/// Lines to insert into a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// The file (an index into [`Config::files`]).
    pub file: usize,
    /// Insert after this 1-based line.
    pub after: usize,
    /// Indent the lines like this 1-based line.
    pub indent_like: usize,
    /// The lines, without indentation.
    pub lines: Vec<String>,
}

/// `keepalive` times this below `worker_connections` is "obviously" small.
const SMALL_CACHE_RATIO: u64 = 64;

const BALANCERS: &[&str] = &[
    "hash",
    "ip_hash",
    "least_conn",
    "random",
    "least_time",
    "sticky",
];

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct At {
    file: usize,
    line: usize,
}

#[derive(Debug, Clone)]
struct Header {
    name: String,
    value: String,
    at: At,
}

#[derive(Debug, Default)]
struct Upstream {
    at: Option<At>,
    servers: Vec<String>,
    keepalive: Option<(u64, At)>,
    balancer_after: Option<(String, At)>,
    requests: Option<(u64, At)>,
    time: Option<(String, At)>,
    proxied_from: Vec<At>,
    /// The line of the block's last directive (in the upstream's own file).
    last_line: Option<usize>,
}

/// The inheritable settings at one level.
#[derive(Debug, Clone, Default)]
struct Level {
    headers: Option<(Vec<Header>, At)>,
    add_headers: Option<(Vec<Header>, At)>,
    http_version: Option<(String, At)>,
}

struct Walk<'c> {
    config: &'c Config,
    version: Option<Version>,
    upstreams: BTreeMap<String, Upstream>,
    /// `map` variables (without `$`) and their values.
    maps: BTreeMap<String, Vec<String>>,
    /// `events { worker_connections N; }`, where it is.
    worker_connections: Option<(u64, At)>,
    findings: Vec<Finding>,
}

/// The directives of a block with includes spliced in (each file once per
/// include chain, so cycles end).
fn expand<'c>(
    config: &'c Config,
    ds: &'c [Directive],
    chain: &mut Vec<usize>,
    out: &mut Vec<&'c Directive>,
) {
    for d in ds {
        if d.name == "include" && d.block.is_none() {
            for &i in &d.includes {
                if chain.contains(&i) {
                    continue;
                }
                chain.push(i);
                expand(config, &config.files[i].directives, chain, out);
                chain.pop();
            }
        } else {
            out.push(d);
        }
    }
}

fn children<'c>(config: &'c Config, d: &'c Directive) -> Vec<&'c Directive> {
    let mut out = Vec::new();
    if let Some(b) = &d.block {
        expand(config, b, &mut vec![d.file], &mut out);
    }
    out
}

fn at(d: &Directive) -> At {
    At {
        file: d.file,
        line: d.line,
    }
}

fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

/// The upstream name a `proxy_pass` target names, if it is `http://NAME…`.
fn target_host(target: &str) -> &str {
    let rest = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
        .unwrap_or(target);
    let end = rest.find('/').unwrap_or(rest.len());
    &rest[..end]
}

impl Walk<'_> {
    fn where_(&self, a: &At) -> String {
        format!("{}:{}", self.config.files[a.file].path.display(), a.line)
    }

    fn finding(
        &mut self,
        code: &'static str,
        severity: Severity,
        a: &At,
        title: String,
        evidence: String,
        fix: String,
    ) {
        self.findings.push(Finding {
            code,
            severity,
            title,
            file_index: a.file,
            file: self.config.files[a.file].path.display().to_string(),
            line: a.line,
            evidence,
            fix,
            servers: vec![],
            edit: None,
        });
    }

    /// Attaches an edit to the last finding.
    fn edit(&mut self, e: Edit) {
        if let Some(f) = self.findings.last_mut() {
            f.edit = Some(e);
        }
    }

    fn version_note(&self) -> String {
        match self.version {
            Some(v) => format!("nginx {v}"),
            None => "nginx before 1.29.7 (no version given or found; give --nginx-version)".into(),
        }
    }

    /// Upstreams and maps, anywhere under `http`.
    fn collect(&mut self, ds: &[&Directive]) {
        for d in ds {
            match d.name.as_str() {
                "upstream" if d.block.is_some() => {
                    let name = lower(d.args.first().map_or("", String::as_str));
                    let mut u = Upstream {
                        at: Some(at(d)),
                        ..Upstream::default()
                    };
                    for c in children(self.config, d) {
                        if c.file == d.file {
                            u.last_line = Some(c.line);
                        }
                        match c.name.as_str() {
                            "server" => u.servers.extend(c.args.first().cloned()),
                            "keepalive" => {
                                let n = c.args.first().and_then(|a| a.parse().ok()).unwrap_or(0);
                                u.keepalive = Some((n, at(c)));
                                u.balancer_after = None;
                            }
                            "keepalive_requests" => {
                                if let Some(n) = c.args.first().and_then(|a| a.parse().ok()) {
                                    u.requests = Some((n, at(c)));
                                }
                            }
                            "keepalive_time" => u.time = c.args.first().map(|a| (a.clone(), at(c))),
                            b if BALANCERS.contains(&b) && u.keepalive.is_some() => {
                                u.balancer_after = Some((b.to_string(), at(c)));
                            }
                            _ => {}
                        }
                    }
                    self.upstreams.insert(name, u);
                }
                "map" if d.args.len() == 2 => {
                    let var = d.args[1].trim_start_matches('$').to_string();
                    let values = children(self.config, d)
                        .iter()
                        .filter(|c| {
                            !matches!(c.name.as_str(), "hostnames" | "volatile" | "include")
                        })
                        .filter_map(|c| c.args.first().cloned())
                        .collect();
                    self.maps.insert(var, values);
                }
                _ => {
                    let inner = children(self.config, d);
                    self.collect(&inner);
                }
            }
        }
    }

    /// Whether a block proxies somewhere at or below it.
    fn proxies(&self, ds: &[&Directive]) -> bool {
        ds.iter().any(|d| {
            d.name == "proxy_pass" || (d.block.is_some() && self.proxies(&children(self.config, d)))
        })
    }

    /// One level (http, server, location, if, limit_except): its own
    /// settings over the inherited ones, then its proxy_pass and children.
    fn level(&mut self, ds: &[&Directive], parent: &Level, kind: &str) {
        let mut own = Level::default();
        for d in ds {
            let list = match d.name.as_str() {
                "proxy_set_header" => &mut own.headers,
                "add_header" => &mut own.add_headers,
                "proxy_http_version" => {
                    own.http_version = d.args.first().map(|v| (v.clone(), at(d)));
                    continue;
                }
                _ => continue,
            };
            if d.args.len() >= 2 {
                let h = Header {
                    name: d.args[0].clone(),
                    value: d.args[1].clone(),
                    at: at(d),
                };
                match list {
                    Some((v, _)) => v.push(h),
                    None => *list = Some((vec![h], at(d))),
                }
            }
        }
        if kind != "http" {
            self.inheritance(&own, parent, ds);
        }
        let effective = Level {
            headers: own.headers.clone().or_else(|| parent.headers.clone()),
            add_headers: own
                .add_headers
                .clone()
                .or_else(|| parent.add_headers.clone()),
            http_version: own
                .http_version
                .clone()
                .or_else(|| parent.http_version.clone()),
        };
        for d in ds {
            if d.name == "proxy_pass" {
                self.proxy_pass(d, &effective, own.headers.is_some());
            }
        }
        for d in ds {
            let k = d.name.as_str();
            if d.block.is_some() && matches!(k, "server" | "location" | "if" | "limit_except") {
                let inner = children(self.config, d);
                self.level(&inner, &effective, k);
            }
        }
    }

    /// `nginx-header-inheritance-lost` for one level.
    fn inheritance(&mut self, own: &Level, parent: &Level, ds: &[&Directive]) {
        for (mine, above, directive) in [
            (&own.headers, &parent.headers, "proxy_set_header"),
            (&own.add_headers, &parent.add_headers, "add_header"),
        ] {
            let (Some((mine, here)), Some((above, _))) = (mine, above) else {
                continue;
            };
            if directive == "proxy_set_header" && !self.proxies(ds) {
                continue;
            }
            let lost: Vec<&Header> = above
                .iter()
                .filter(|h| !mine.iter().any(|m| m.name.eq_ignore_ascii_case(&h.name)))
                .collect();
            if lost.is_empty() {
                continue;
            }
            let names: Vec<String> = lost.iter().map(|h| h.name.clone()).collect();
            let mut evidence = format!(
                "This block sets {directive} ({}), so none of the {} set above it applies here:",
                self.where_(here),
                directive
            );
            for h in &lost {
                evidence.push_str(&format!(
                    "\n  {directive} {} {} ({}) is lost",
                    h.name,
                    show(&h.value),
                    self.where_(&h.at)
                ));
            }
            if directive == "proxy_set_header" {
                let defaults = self.lost_defaults(&lost);
                if !defaults.is_empty() {
                    evidence.push_str(&format!(
                        "\nLosing them brings back nginx's defaults: {}.",
                        defaults.join(", ")
                    ));
                }
            }
            let fix = lost
                .iter()
                .map(|h| format!("{directive} {} {};", h.name, show(&h.value)))
                .collect::<Vec<_>>()
                .join("\n");
            self.finding(
                "nginx-header-inheritance-lost",
                Severity::Warning,
                here,
                format!("{directive} here drops the {} set above: {}", names.len(), names.join(", ")),
                evidence,
                format!("Repeat them in this block (nginx inherits the list only where a block sets none):\n{fix}"),
            );
            let here = here.clone();
            self.edit(Edit {
                file: here.file,
                after: here.line,
                indent_like: here.line,
                lines: lost
                    .iter()
                    .map(|h| format!("{directive} {} {};", h.name, show(&h.value)))
                    .collect(),
            });
        }
    }

    fn lost_defaults(&self, lost: &[&Header]) -> Vec<String> {
        let mut v = Vec::new();
        if lost
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("connection"))
            && !self.version.is_some_and(Version::new_defaults)
        {
            v.push("Connection: close".to_string());
        }
        if lost.iter().any(|h| h.name.eq_ignore_ascii_case("host")) {
            v.push("Host: $proxy_host".to_string());
        }
        v
    }

    fn proxy_pass(&mut self, d: &Directive, eff: &Level, own_headers: bool) {
        let Some(target) = d.args.first() else { return };
        let here = at(d);
        let host = target_host(target);
        let new = self.version.is_some_and(Version::new_defaults);
        let first = self.findings.len();
        // The backends this location talks to (none for a variable target).
        let servers: Vec<String> = if host.contains('$') {
            vec![]
        } else {
            self.upstreams
                .get(&lower(host))
                .map_or_else(|| vec![host.to_string()], |u| u.servers.clone())
        };
        // Which upstream, and can it keep connections?
        if host.contains('$') {
            // Resolved at run time: nothing to say about its keepalive.
        } else if let Some(u) = self.upstreams.get_mut(&lower(host)) {
            u.proxied_from.push(here.clone());
        } else {
            self.finding(
                "nginx-upstream-no-keepalive",
                Severity::Warning,
                &here,
                format!("proxy_pass {target} goes to an address, not an upstream: no connection is ever reused"),
                format!(
                    "proxy_pass {target} ({}) names no upstream block, so nginx makes an implicit upstream, which has no connection cache in any version: every request opens (and closes) a connection to {host}.",
                    self.where_(&here)
                ),
                format!(
                    "upstream backend {{\n    server {host};\n    keepalive 32;\n}}\nand here: proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\";"
                ),
            );
        }
        // HTTP version.
        let (version, from) = match &eff.http_version {
            Some((v, a)) => (v.clone(), format!("set at {}", self.where_(a))),
            None if new => (
                "1.1".into(),
                format!("the default of {}", self.version_note()),
            ),
            None => (
                "1.0".into(),
                format!("the default of {}", self.version_note()),
            ),
        };
        if version == "1.0" {
            self.finding(
                "nginx-upstream-http10",
                Severity::Warning,
                &here,
                format!("proxy_pass {target} speaks HTTP/1.0 to the backend: one connection per request"),
                format!("proxy_http_version is 1.0 here ({from}); HTTP/1.0 closes the connection after each response, so the side that closes first keeps a TIME_WAIT for 60 s per request."),
                "proxy_http_version 1.1;".into(),
            );
            self.edit(Edit {
                file: here.file,
                after: here.line - 1,
                indent_like: here.line,
                lines: vec!["proxy_http_version 1.1;".into()],
            });
        }
        // Connection header.
        let connection = eff.headers.as_ref().and_then(|(hs, _)| {
            hs.iter()
                .rev()
                .find(|h| h.name.eq_ignore_ascii_case("connection"))
        });
        let problem = match connection {
            None if new => None,
            None => Some(format!(
                "No proxy_set_header Connection applies here, so nginx sends its default \"Connection: close\" ({}).",
                self.version_note()
            )),
            Some(h) if h.value.is_empty() => None,
            Some(h) => {
                let var = h.value.strip_prefix('$');
                let closes = match var {
                    Some("http_connection") => Some("the client's own Connection header, which is often close".to_string()),
                    Some(v) => self.maps.get(v).and_then(|vals| {
                        vals.iter()
                            .any(|x| x.eq_ignore_ascii_case("close"))
                            .then(|| format!("the map ${v}, which gives \"close\" for some requests (with the usual WebSocket map: every ordinary request)"))
                    }),
                    None => h
                        .value
                        .to_ascii_lowercase()
                        .contains("close")
                        .then(|| "a literal close".to_string()),
                };
                closes.map(|why| {
                    format!(
                        "proxy_set_header Connection {} ({}) sends {why}.",
                        show(&h.value),
                        self.where_(&h.at)
                    )
                })
            }
        };
        if let Some(evidence) = problem {
            // Only where nothing sets Connection: a level that sets none of
            // its own headers gets the inherited ones too (else adding one
            // would drop them).
            let edit = match (connection, &eff.headers) {
                (Some(_), _) => None,
                (None, Some((hs, from))) if *from != here && !own_headers => {
                    let mut lines: Vec<String> = hs
                        .iter()
                        .map(|h| format!("proxy_set_header {} {};", h.name, show(&h.value)))
                        .collect();
                    lines.push("proxy_set_header Connection \"\";".into());
                    Some(lines)
                }
                (None, _) => Some(vec!["proxy_set_header Connection \"\";".into()]),
            };
            self.finding(
                "nginx-connection-close-forwarded",
                Severity::Warning,
                &here,
                format!("proxy_pass {target} asks the backend to close the connection after each request"),
                format!("{evidence} The backend then closes after every response and keep-alive never starts."),
                "proxy_set_header Connection \"\";\n(for WebSocket: map $http_upgrade $connection_upgrade { default upgrade; '' ''; })".into(),
            );
            if let Some(lines) = edit {
                self.edit(Edit {
                    file: here.file,
                    after: here.line - 1,
                    indent_like: here.line,
                    lines,
                });
            }
        }
        for f in &mut self.findings[first..] {
            f.servers = servers.clone();
        }
    }

    /// Findings on the upstream blocks themselves.
    fn upstream_findings(&mut self) {
        let new = self.version.is_some_and(Version::new_defaults);
        let ups = std::mem::take(&mut self.upstreams);
        for (name, u) in &ups {
            let Some(here) = &u.at else { continue };
            if u.proxied_from.is_empty() {
                continue;
            }
            let from: Vec<String> = u.proxied_from.iter().map(|a| self.where_(a)).collect();
            let problem = match (&u.keepalive, &u.balancer_after) {
                (None, _) if new => None,
                (None, _) => Some(format!(
                    "upstream {name} has no keepalive ({}): nginx keeps no idle connection to it and opens a new one per request.",
                    self.version_note()
                )),
                (Some((0, a)), _) => Some(format!(
                    "keepalive 0 ({}) keeps no idle connection.",
                    self.where_(a)
                )),
                (Some((_, a)), Some((b, ba))) if !new => Some(format!(
                    "{b} ({}) comes after keepalive ({}): before 1.29.7 a balancer directive after keepalive replaces the keepalive balancer, silently dropping the connection cache.",
                    self.where_(ba),
                    self.where_(a)
                )),
                _ => None,
            };
            if let Some(evidence) = problem {
                let mut f = Finding {
                    code: "nginx-upstream-no-keepalive",
                    severity: Severity::Warning,
                    title: format!("upstream {name} keeps no connections alive"),
                    file_index: here.file,
                    file: self.config.files[here.file].path.display().to_string(),
                    line: here.line,
                    evidence: format!("{evidence}\nProxied from: {}.", from.join(", ")),
                    fix: format!(
                        "In upstream {name}, after any balancer directive: keepalive 32;\nWhere it is proxied: proxy_http_version 1.1; proxy_set_header Connection \"\";"
                    ),
                    servers: u.servers.clone(),
                    edit: None,
                };
                // keepalive after the block's last directive (so after any
                // balancer directive); a misplaced keepalive is moved by hand.
                if u.balancer_after.is_none() && u.keepalive.is_none() {
                    let last = u.last_line.unwrap_or(here.line);
                    f.edit = Some(Edit {
                        file: here.file,
                        after: last,
                        indent_like: last,
                        lines: vec!["keepalive 32;".into()],
                    });
                }
                if u.balancer_after.is_some() {
                    f.fix = format!(
                        "Move keepalive after {} in upstream {name}.",
                        u.balancer_after.as_ref().map_or("", |b| b.0.as_str())
                    );
                }
                self.findings.push(f);
            }
            // A cache far smaller than the connections a worker serves: under
            // load, every connection beyond it is closed after its request.
            if let (Some((k, ka)), Some((w, wa))) = (&u.keepalive, &self.worker_connections)
                && *k > 0
                && k * SMALL_CACHE_RATIO < *w
            {
                let (k, w) = (*k, *w);
                self.finding(
                    "nginx-keepalive-too-small",
                    Severity::Info,
                    ka,
                    format!("upstream {name} caches {k} idle connections for up to {w} client connections per worker"),
                    format!(
                        "keepalive {k} ({}) against worker_connections {w} ({}): when more than {k} requests to {name} are in flight, the connections beyond {k} are closed after their request (a TIME_WAIT each) instead of kept.",
                        self.where_(ka),
                        self.where_(wa)
                    ),
                    format!("keepalive {};  # about the requests in flight to {name} per worker", (w / 8).max(32)),
                );
            }
            if let Some((n, a)) = &u.requests
                && *n < 1000
            {
                self.finding(
                    "nginx-keepalive-requests-low",
                    Severity::Info,
                    a,
                    format!("upstream {name} closes each connection after {n} requests"),
                    format!("keepalive_requests {n} ({}): every {n} requests a connection is closed and a new one opened, leaving a TIME_WAIT each time.", self.where_(a)),
                    "keepalive_requests 10000;  # or more; the backend's own limit should be higher still".into(),
                );
            }
            if let Some((t, a)) = &u.time {
                self.finding(
                    "nginx-keepalive-requests-low",
                    Severity::Info,
                    a,
                    format!("upstream {name} closes each connection after {t}"),
                    format!("keepalive_time {t} ({}): connections older than that are closed after their current request (default 1h).", self.where_(a)),
                    "Remove keepalive_time, or raise it, unless the backend needs connections recycled.".into(),
                );
            }
        }
        self.upstreams = ups;
    }
}

fn show(v: &str) -> String {
    if v.is_empty() || v.contains([' ', ';', '{', '}', '\'', '"']) {
        format!("\"{}\"", v.replace('"', "\\\""))
    } else {
        v.to_string()
    }
}

/// The findings of a configuration, for nginx `version` (`None`: a version
/// before 1.29.7), most severe first, then by file and line.
pub fn check(config: &Config, version: Option<Version>) -> Vec<Finding> {
    let mut w = Walk {
        config,
        version,
        upstreams: BTreeMap::new(),
        maps: BTreeMap::new(),
        worker_connections: None,
        findings: Vec::new(),
    };
    let mut top = Vec::new();
    expand(
        config,
        config.files.first().map_or(&[][..], |f| &f.directives[..]),
        &mut vec![0],
        &mut top,
    );
    for events in top
        .iter()
        .filter(|d| d.name == "events" && d.block.is_some())
    {
        for c in children(config, events) {
            if c.name == "worker_connections"
                && let Some(n) = c.args.first().and_then(|a| a.parse().ok())
            {
                w.worker_connections = Some((n, at(c)));
            }
        }
    }
    for http in top.iter().filter(|d| d.name == "http" && d.block.is_some()) {
        let inner = children(config, http);
        w.collect(&inner);
        w.level(&inner, &Level::default(), "http");
    }
    w.upstream_findings();
    w.findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(a.file_index.cmp(&b.file_index))
            .then(a.line.cmp(&b.line))
            .then(a.code.cmp(b.code))
    });
    w.findings.dedup();
    w.findings
}

#[cfg(test)]
mod tests;
