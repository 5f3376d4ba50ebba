//! The `doctor --json` and `tune --json` documents, and the plan of sysctl
//! changes `tune` makes from the findings. Building them is pure: the
//! binary renders them, the host crate applies the plan.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;
use timewait_analysis::rates::interval_seconds;
use timewait_snapshot::Snapshot;

use crate::finding::{Finding, Severity, SysctlChange};
use crate::rules::{DoctorInput, diagnose};

/// The census at a glance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Sockets seen.
    pub sockets: u64,
    /// Sockets by state name.
    pub states: BTreeMap<String, u64>,
    /// TIME_WAIT sockets.
    pub time_wait: u64,
    /// Client-side destinations.
    pub destinations: usize,
    /// The destination holding the most ephemeral ports (for the header of
    /// the human report).
    #[serde(skip)]
    pub busiest: Option<Busiest>,
}

/// The destination holding the most ephemeral ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Busiest {
    /// Local address.
    pub local_ip: IpAddr,
    /// Remote address.
    pub remote_ip: IpAddr,
    /// Remote port.
    pub remote_port: u16,
    /// Its sockets whose local port is in the ephemeral range.
    pub ports: u64,
}

/// The whole `doctor` answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DoctorReport {
    /// Host name.
    pub hostname: String,
    /// Kernel release.
    pub kernel_release: String,
    /// Which namespace.
    pub namespace: String,
    /// When the (later) snapshot was taken.
    pub taken_at_unix_ms: u64,
    /// With `--interval`: seconds between the two snapshots.
    pub interval_seconds: Option<f64>,
    /// The census at a glance.
    pub summary: Summary,
    /// What was found of nginx.
    pub nginx: Option<String>,
    /// The worst severity among the findings (none: no findings).
    pub worst_severity: Option<Severity>,
    /// Most severe first.
    pub findings: Vec<Finding>,
    /// With `--trace`: the trace behind the process findings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<timewait_trace::TraceReport>,
}

impl DoctorReport {
    /// Diagnoses `now` (against `earlier`, with `--interval`), with the
    /// nginx configurations in use there (`configs`) and what was found of
    /// nginx (`nginx`, for the header).
    pub fn new(
        now: &Snapshot,
        earlier: Option<&Snapshot>,
        configs: &[crate::nginx::NginxInput],
        nginx: Option<String>,
        trace: Option<timewait_trace::TraceReport>,
    ) -> DoctorReport {
        let findings = diagnose(&DoctorInput {
            now,
            earlier,
            nginx: configs,
            trace: trace.as_ref(),
        });
        let census = &now.census;
        DoctorReport {
            hostname: now.hostname.clone(),
            kernel_release: now.kernel_release.clone(),
            namespace: now.namespace.clone(),
            taken_at_unix_ms: now.taken_at_unix_ms,
            interval_seconds: earlier.and_then(|e| interval_seconds(e, now)),
            summary: Summary {
                sockets: census.sockets,
                states: census.states.clone(),
                time_wait: census.states.get("TIME_WAIT").copied().unwrap_or(0),
                destinations: census.destinations.len(),
                busiest: census
                    .destinations
                    .iter()
                    .max_by_key(|d| d.in_range)
                    .map(|d| Busiest {
                        local_ip: d.local_ip,
                        remote_ip: d.remote_ip,
                        remote_port: d.remote_port,
                        ports: d.in_range,
                    }),
            },
            nginx,
            worst_severity: findings.iter().map(|f| f.severity).max(),
            findings,
            trace,
        }
    }

    /// `doctor`'s exit status: 0 nothing above info, 1 warning, 3 critical.
    pub fn exit_code(&self) -> u8 {
        self.worst_severity.map_or(0, Severity::exit_code)
    }
}

/// One sysctl `tune` would change, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TuneChange {
    /// Dotted name.
    pub name: String,
    /// The value read, if any.
    pub current: Option<String>,
    /// The value to set.
    pub recommended: String,
    /// The findings that recommend it.
    pub because: Vec<&'static str>,
    /// With `--apply`: what the kernel reports afterwards.
    pub after: Option<String>,
}

impl TuneChange {
    /// As a [`SysctlChange`], for its command and conf line.
    pub fn sysctl(&self) -> SysctlChange {
        SysctlChange {
            name: self.name.clone(),
            current: self.current.clone(),
            recommended: self.recommended.clone(),
        }
    }
}

/// The whole `tune` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TuneReport {
    /// Which namespace.
    pub namespace: String,
    /// Whether the changes were applied.
    pub applied: bool,
    /// The changes, one per sysctl.
    pub changes: Vec<TuneChange>,
    /// The persistent file written, if any.
    pub persisted_to: Option<String>,
}

/// The changes all findings recommend, one per sysctl, leaving out those
/// already in effect. For the same sysctl the most severe finding's value
/// wins (findings come sorted by severity).
pub fn plan(findings: &[Finding]) -> Vec<TuneChange> {
    let mut out: Vec<TuneChange> = Vec::new();
    for f in findings {
        for c in &f.sysctl_changes {
            if c.current.as_deref() == Some(c.recommended.as_str()) {
                continue;
            }
            match out.iter_mut().find(|x| x.name == c.name) {
                Some(x) => {
                    if !x.because.contains(&f.code) {
                        x.because.push(f.code);
                    }
                }
                None => out.push(TuneChange {
                    name: c.name.clone(),
                    current: c.current.clone(),
                    recommended: c.recommended.clone(),
                    because: vec![f.code],
                    after: None,
                }),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(
        code: &'static str,
        severity: Severity,
        changes: &[(&str, Option<&str>, &str)],
    ) -> Finding {
        Finding {
            code,
            severity,
            title: String::new(),
            evidence: String::new(),
            fix: String::new(),
            docs: "",
            sysctl_changes: changes
                .iter()
                .map(|(n, c, r)| SysctlChange {
                    name: n.to_string(),
                    current: c.map(str::to_string),
                    recommended: r.to_string(),
                })
                .collect(),
            location: None,
        }
    }

    #[test]
    fn the_plan_has_one_change_per_sysctl_with_every_reason_and_skips_what_is_set() {
        let f = [
            finding(
                "a",
                Severity::Critical,
                &[("x", Some("0"), "1"), ("y", Some("5"), "5")],
            ),
            finding(
                "b",
                Severity::Warning,
                &[("x", Some("0"), "2"), ("z", None, "3")],
            ),
        ];
        let p = plan(&f);
        let got: Vec<(&str, &str, Vec<&str>)> = p
            .iter()
            .map(|c| (c.name.as_str(), c.recommended.as_str(), c.because.clone()))
            .collect();
        assert_eq!(got, [("x", "1", vec!["a", "b"]), ("z", "3", vec!["b"])]);
    }
}
