//! The diagnosis: pure rules over a [`timewait_snapshot::Snapshot`] (and, with
//! `--interval`, an earlier one), each returning findings with a stable code, a severity, the
//! evidence with its arithmetic, the exact fix, and the sysctl changes that
//! `timewait tune` may apply; and the `doctor`/`tune` documents built from
//! them. No I/O, no clock.
#![deny(missing_docs)]

mod finding;
mod kernel_version;
pub mod nginx;
pub mod report;
mod rules;
mod trace;

pub use finding::{Finding, Location, Severity, SysctlChange};
pub use kernel_version::KernelVersion;
pub use nginx::NginxInput;
pub use report::{DoctorReport, TuneChange, TuneReport, plan};
pub use rules::{DoctorInput, diagnose};
