//! What a finding is.

use serde::Serialize;

/// How bad it is. Ordered: `Info < Warning < Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth knowing; nothing to fix now.
    Info,
    /// Will hurt under more load, or hurts a little now.
    Warning,
    /// Failing now or about to.
    Critical,
}

impl Severity {
    /// The exit status `doctor` uses for this as the worst severity.
    pub fn exit_code(self) -> u8 {
        match self {
            Severity::Info => 0,
            Severity::Warning => 1,
            Severity::Critical => 3,
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// One sysctl to change, with the value now (if known) and the value to set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SysctlChange {
    /// Dotted name, e.g. `net.ipv4.tcp_tw_reuse`.
    pub name: String,
    /// The value read (as the kernel prints it, whitespace folded).
    pub current: Option<String>,
    /// The value to set.
    pub recommended: String,
}

impl SysctlChange {
    /// The `sysctl -w` line.
    pub fn command(&self) -> String {
        if self.recommended.contains(' ') {
            format!("sysctl -w {}=\"{}\"", self.name, self.recommended)
        } else {
            format!("sysctl -w {}={}", self.name, self.recommended)
        }
    }

    /// The `/etc/sysctl.d/` line.
    pub fn conf_line(&self) -> String {
        format!("{} = {}", self.name, self.recommended)
    }
}

/// One thing the doctor found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// Stable kebab-case code.
    pub code: &'static str,
    /// How bad.
    pub severity: Severity,
    /// One line.
    pub title: String,
    /// The values read, who is affected, and the arithmetic done.
    pub evidence: String,
    /// What to do, exactly.
    pub fix: String,
    /// Where to read more.
    pub docs: &'static str,
    /// The sysctl changes `timewait tune` would make for this finding.
    pub sysctl_changes: Vec<SysctlChange>,
    /// For a configuration finding: the file and line where the fix goes.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
}

/// A place in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    /// The file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
}

/// The kernel's sysctl documentation.
pub const SYSCTL_DOCS: &str = "https://docs.kernel.org/networking/ip-sysctl.html";
