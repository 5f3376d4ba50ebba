//! nginx's findings inside the diagnosis, tied to what the census counted.
//!
//! An nginx finding names the backends it concerns (an upstream's servers,
//! or a `proxy_pass` address). Where this host holds TIME_WAIT toward one
//! of them (client side), or on its service port when the backend is local
//! (server side), the finding carries the counts, is raised to the
//! severity of what it explains, and is ranked first: keep-alive is the
//! article's real fix, the sysctls the fallback.

use std::net::SocketAddr;

use timewait_analysis::StatusReport;
use timewait_model::text::thousands as int;
use timewait_nginx::Config;
use timewait_nginx::check::{self, Version};

use crate::finding::{Finding, Location, Severity};

/// A configuration to check, and the nginx version whose defaults apply.
#[derive(Debug, Clone)]
pub struct NginxInput {
    /// The parsed configuration.
    pub config: Config,
    /// `None`: a version before 1.29.7.
    pub version: Option<Version>,
}

const KEEPALIVE_DOCS: &str =
    "https://nginx.org/en/docs/http/ngx_http_upstream_module.html#keepalive";
const PROXY_DOCS: &str =
    "https://nginx.org/en/docs/http/ngx_http_proxy_module.html#proxy_set_header";

/// TIME_WAIT this host holds toward `addr` (client side) and on its port
/// as a local service (server side).
fn counted(report: &StatusReport, addr: SocketAddr) -> (u64, u64) {
    let tw = &report.time_wait;
    let client: u64 = tw
        .by_destination
        .iter()
        .filter(|d| d.remote_ip == addr.ip() && d.remote_port == addr.port())
        .map(|d| d.time_wait)
        .sum();
    let local = addr.ip().is_loopback()
        || addr.ip().is_unspecified()
        || tw.by_destination.iter().any(|d| d.local_ip == addr.ip());
    let server = if local {
        tw.server_side
            .iter()
            .filter(|s| s.local_port == addr.port())
            .map(|s| s.time_wait)
            .sum()
    } else {
        0
    };
    (client, server)
}

/// The findings of the configurations, correlated with the census, and
/// the severity each explained finding had (to raise the nginx finding).
pub(crate) fn findings(
    inputs: &[NginxInput],
    report: &StatusReport,
    others: &[Finding],
) -> Vec<(Finding, bool)> {
    let mut out = Vec::new();
    for input in inputs {
        for f in check::check(&input.config, input.version) {
            let mut severity = match f.severity {
                check::Severity::Warning => Severity::Warning,
                check::Severity::Info => Severity::Info,
            };
            let mut evidence = f.evidence.clone();
            let mut matched = false;
            let mut unresolved = Vec::new();
            for s in &f.servers {
                let Ok(addr) = s.parse::<SocketAddr>() else {
                    unresolved.push(s.clone());
                    continue;
                };
                let (client, server) = counted(report, addr);
                if client > 0 {
                    matched = true;
                    evidence.push_str(&format!(
                        "\nThis host holds {} TIME_WAIT toward {addr} now: they come from here.",
                        int(client)
                    ));
                }
                if server > 0 {
                    matched = true;
                    evidence.push_str(&format!(
                        "\nThe backend {addr} is local and holds {} TIME_WAIT on port {} (it closes first after each request it is asked to close).",
                        int(server),
                        addr.port()
                    ));
                }
            }
            if !unresolved.is_empty() {
                evidence.push_str(&format!(
                    "\nNot matched against the census (names are not resolved): {}.",
                    unresolved.join(", ")
                ));
            }
            if matched {
                // As severe as the port or TIME_WAIT trouble it explains.
                let explained = others
                    .iter()
                    .filter(|o| {
                        matches!(
                            o.code,
                            "port-exhaustion-risk"
                                | "server-side-time-wait"
                                | "tw-bucket-overflow"
                                | "tw-buckets-near-limit"
                        )
                    })
                    .map(|o| o.severity)
                    .max()
                    .unwrap_or(Severity::Warning);
                severity = severity.max(explained).max(Severity::Warning);
            }
            let docs = if f.code == "nginx-header-inheritance-lost" {
                PROXY_DOCS
            } else {
                KEEPALIVE_DOCS
            };
            out.push((
                Finding {
                    code: f.code,
                    severity,
                    title: f.title,
                    evidence,
                    fix: f.fix,
                    docs,
                    sysctl_changes: vec![],
                    location: Some(Location {
                        file: f.file,
                        line: f.line,
                    }),
                },
                matched,
            ));
        }
    }
    out
}
