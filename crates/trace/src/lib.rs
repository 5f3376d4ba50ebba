//! Who burns the ports. `timewait trace` reads kernel tracepoints —
//! `sock:inet_sock_set_state`, `tcp:tcp_receive_reset`,
//! `sock:inet_sk_error_report` and, with `--syscalls`,
//! `syscalls:sys_exit_connect` (failures only) — from a tracefs
//! instance of its own (the state changes, where the kernel allows, through
//! a BPF filter instead), and this crate turns what it reads into a report:
//! per process, connects, failed connects by errno (with their
//! destinations), first closes (each one a TIME_WAIT socket on this host)
//! and server-side first closes.
//!
//! Pure: bytes in, a report out. The host crate creates the instance and
//! reads the pages; every decision about what the bytes mean is here and
//! tested on recorded bytes.
//!
//! - [`bpf`]: the state-change filter as a BPF program for the raw
//!   tracepoint (assembled here: no compiler at build or run time), and its
//!   records; [`btf`]: the kernel's type information, for the offsets the
//!   programs read at; [`mod@tuple`]: a socket's 4-tuple as they read it.
//! - [`live`]: a live count of sockets by state and destination, kept by
//!   programs on the state and timer tracepoints, and its exact seeding from a dump
//!   (for the census, not for `trace`: it lives here with the other
//!   programs).
//! - [`mod@format`]: tracefs `format` files (ids and field offsets).
//! - [`ring`]: ring-buffer pages (`trace_pipe_raw`).
//! - [`event`]: the tracepoints, their kernel-side filters, and records
//!   decoded into [`Event`]s.
//! - [`tally`]: the per-process state machine.
//! - [`report`]: the JSON document.
#![deny(missing_docs)]

mod asm;
pub mod bpf;
pub mod btf;
pub mod event;
pub mod format;
pub mod live;
pub mod report;
pub mod ring;
pub mod tally;
pub mod tuple;

pub use event::{Comm, Decoder, Event, Formats, SYSCALLS, TRACEPOINTS, Timed, Tracepoint};
pub use format::Format;
pub use report::{DestinationReport, ProcessReport, Totals, TraceReport};
pub use ring::{PageLayout, parse_page};
pub use tally::{Lookup, ProcessInfo, Scope, Tally};

/// Why tracefs text or a ring-buffer page could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    /// A `format` file line that does not parse.
    #[error("{what}:{line}: {detail}")]
    Format {
        /// Which file.
        what: String,
        /// 1-based line (0: the file as a whole).
        line: usize,
        /// What was wrong.
        detail: String,
    },
    /// A field this kernel's event lacks.
    #[error("tracepoint {event} has no field {field} on this kernel")]
    MissingField {
        /// The event.
        event: String,
        /// The field.
        field: String,
    },
    /// Kernel type information (BTF) that does not parse.
    #[error("BTF, byte {offset}: {detail}")]
    Btf {
        /// Where.
        offset: usize,
        /// What was wrong.
        detail: String,
    },
    /// A page that contradicts itself.
    #[error("ring-buffer page, byte {offset}: {detail}")]
    Page {
        /// Where.
        offset: usize,
        /// What was wrong.
        detail: String,
    },
}

#[cfg(test)]
mod tests;
