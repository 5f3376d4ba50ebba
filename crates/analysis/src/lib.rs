//! What a host snapshot means, with no I/O: the analysis that `status`,
//! `doctor` and the features built on them (exporter, trace, lab) share.
//!
//! - [`settings`]: the sysctls that bear on ports, parsed once into typed
//!   values; a value that is missing or malformed is unknown, with the
//!   reason, and never a default.
//! - [`status`]: headroom, TIME_WAIT timers and the sustainable rate per
//!   destination.
//! - [`rates`]: what changed between two snapshots of one namespace, per
//!   second (`status --watch`, `doctor --interval`).
#![deny(missing_docs)]

pub mod rates;
pub mod settings;
pub mod status;

pub use settings::{Reading, Settings};
pub use status::{GroupBy, StatusReport, analyse};
