//! errno names and what each means for ports: one table for `load`,
//! `trace` and `doctor`.

/// The symbolic name of an errno (`EADDRNOTAVAIL` for 99 on Linux), or
/// `errno N` for a number this platform does not define.
pub fn name(code: i32) -> String {
    match nix::errno::Errno::from_raw(code) {
        nix::errno::Errno::UnknownErrno => format!("errno {code}"),
        e => format!("{e:?}"),
    }
}

/// One line on what an error (an errno name, or one of the names `load` and
/// `trace` give to failures that have no errno) means for ports.
pub fn meaning(error: &str) -> &'static str {
    match error {
        "EADDRNOTAVAIL" => {
            "no free 4-tuple toward this destination: every usable ephemeral port is in use or in TIME_WAIT (\"Cannot assign requested address\")"
        }
        "ECONNREFUSED" => "nothing listens there, or its accept queue is full; no port was held",
        "ECONNRESET" => "the peer reset the connection",
        "ETIMEDOUT" | "timeout" => "no answer in time (the handshake or the request timed out)",
        "abandoned" => {
            "the process closed the socket before the handshake completed (its own connect timeout)"
        }
        "ENETUNREACH" | "EHOSTUNREACH" => "no route to the destination; no port was held",
        "EMFILE" | "ENFILE" => {
            "this process (or the system) ran out of file descriptors, not of ports"
        }
        "EPIPE" => "the peer closed the connection while the request was sent",
        "bad_response" => "the answer was not HTTP/1.x, or ended early",
        "http_4xx" => "the server answered with a client error",
        "http_5xx" => "the server (or a proxy in front of it) answered with a server error",
        _ => "see errno(3)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_platform_table() {
        assert_eq!(name(99), "EADDRNOTAVAIL");
        assert_eq!(name(111), "ECONNREFUSED");
        assert_eq!(name(100_000), "errno 100000");
        assert!(meaning("EADDRNOTAVAIL").contains("4-tuple"));
    }
}
