//! HTTP/1.1 on both sides of the proxy.
//!
//! - [`head`]: pure head parsing and rewriting, tested with byte fixtures;
//! - [`body`]: streaming a body from one connection to the other;
//! - [`io`]: the read buffer, the per-connection timer, bounded writes;
//! - [`session`]: one client connection's loop and each exchange.

pub(crate) mod body;
pub(crate) mod head;
pub(crate) mod io;
pub(crate) mod session;
