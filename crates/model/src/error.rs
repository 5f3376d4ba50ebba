//! Errors of the model: each names what was wrong and the form that is allowed,
//! so the binary can put the flag name in front and print one line.

/// Why an input to the model was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A port range that is not `LOW-HIGH` with `1 <= LOW <= HIGH <= 65535`.
    #[error(
        "invalid port range {input:?}: {reason} (expected LOW-HIGH with 1 <= LOW <= HIGH <= 65535, e.g. 32768-60999)"
    )]
    PortRange {
        /// What the user gave.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A reserved-ports list not in `ip_local_reserved_ports` syntax.
    #[error(
        "invalid reserved port list {input:?}: {reason} (expected comma-separated ports and ranges, e.g. 8080,9000-9100)"
    )]
    ReservedPorts {
        /// What the user gave.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `tcp_tw_reuse` value other than 0, 1 or 2.
    #[error("invalid tcp_tw_reuse value {0:?} (expected 0 = off, 1 = on, 2 = loopback only)")]
    TwReuse(String),
    /// A bandwidth that could not be read.
    #[error(
        "invalid bandwidth {input:?}: {reason} (expected a number with a unit, e.g. 56kbit, 1.5Mbit/s, 10Gbps, 125MB/s)"
    )]
    Bandwidth {
        /// What the user gave.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A numeric parameter outside its allowed range.
    #[error("{name} must be {allowed}, got {value}")]
    OutOfRange {
        /// The parameter's name as the user knows it.
        name: &'static str,
        /// The allowed range in words.
        allowed: &'static str,
        /// The value given.
        value: String,
    },
}

impl ModelError {
    /// The flag (without dashes) this error is about, when there is one.
    pub fn parameter(&self) -> Option<&'static str> {
        match self {
            ModelError::PortRange { .. } => Some("port-range"),
            ModelError::ReservedPorts { .. } => Some("reserved"),
            ModelError::TwReuse(_) => Some("tw-reuse"),
            ModelError::Bandwidth { .. } => Some("bandwidth"),
            ModelError::OutOfRange { name, .. } => Some(name),
        }
    }
}
