//! The diagnosis: pure rules over a [`timewait_census::Snapshot`] (and, with `--interval`, an
//! earlier one), each returning findings with a stable code, a severity, the
//! evidence with its arithmetic, the exact fix, and the sysctl changes that
//! `timewait tune` may apply. No I/O, no clock.
#![deny(missing_docs)]

mod finding;
mod kernel_version;
mod rules;

pub use finding::{Finding, Severity, SysctlChange};
pub use kernel_version::KernelVersion;
pub use rules::{DoctorInput, diagnose};
