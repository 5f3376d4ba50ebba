//! Whether an HTTP/1.x connection outlives its message (RFC 9112 §9.3):
//! the rule behind every TIME_WAIT an HTTP client or server makes, and the
//! one the proxy, the load generator and the lab's backend share, so they
//! cannot disagree about it.
//!
//! HTTP/1.1 keeps a connection unless a `Connection` field carries the
//! `close` option; HTTP/1.0 closes it unless one carries `keep-alive` (and
//! none carries `close`). Options are comma-separated tokens, compared
//! without regard to case (RFC 9110 §7.6.1), never substrings: a
//! `Connection: x-close-later` closes nothing.
#![deny(missing_docs)]

/// The options of a message's `Connection` fields.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    /// `close`: the sender closes after this message.
    pub close: bool,
    /// `keep-alive`: an HTTP/1.0 peer asks to keep the connection.
    pub keep_alive: bool,
    /// `upgrade`: the `Upgrade` field is hop-by-hop here.
    pub upgrade: bool,
    /// An option other than `keep-alive` and `upgrade` (`close` included):
    /// a field name that is hop-by-hop for this message, for a proxy to
    /// drop.
    pub names_other: bool,
}

impl Connection {
    /// Adds the options of one `Connection` field value (not UTF-8: none).
    pub fn add(&mut self, value: &[u8]) {
        let Ok(v) = std::str::from_utf8(value) else {
            return;
        };
        for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let is = |o: &str| t.eq_ignore_ascii_case(o);
            let (k, u) = (is("keep-alive"), is("upgrade"));
            self.close |= is("close");
            self.keep_alive |= k;
            self.upgrade |= u;
            self.names_other |= !(k || u);
        }
    }

    /// The options of every `Connection` field among `(name, value)`.
    pub fn of<'a>(fields: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Connection {
        let mut c = Connection::default();
        for (name, value) in fields {
            if name.eq_ignore_ascii_case("connection") {
                c.add(value);
            }
        }
        c
    }

    /// Whether the connection persists after a message of this version
    /// with these options.
    pub fn persists(&self, http10: bool) -> bool {
        if http10 {
            self.keep_alive && !self.close
        } else {
            !self.close
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn persists(http10: bool, fields: &[(&str, &str)]) -> bool {
        Connection::of(fields.iter().map(|(n, v)| (*n, v.as_bytes()))).persists(http10)
    }

    #[test]
    fn the_version_decides_unless_an_option_says_otherwise() {
        assert!(persists(false, &[]));
        assert!(!persists(true, &[]));
        assert!(!persists(false, &[("Connection", "close")]));
        assert!(persists(true, &[("connection", "Keep-Alive")]));
        // close wins, in any field, any case, among other options.
        assert!(!persists(
            true,
            &[("Connection", "keep-alive"), ("CONNECTION", "x, CLOSE")]
        ));
        assert!(!persists(false, &[("Connection", " upgrade ,close")]));
        // Tokens, not substrings; other fields do not count.
        assert!(persists(false, &[("Connection", "x-close-later")]));
        assert!(!persists(true, &[("Connection", "keep-alive-ish")]));
        assert!(persists(false, &[("Proxy-Connection", "close")]));
        assert!(!persists(true, &[("Keep-Alive", "timeout=5")]));
    }

    #[test]
    fn options_that_name_fields_are_told_apart_from_keep_alive_and_upgrade() {
        let c = Connection::of([("Connection", b"keep-alive, Upgrade".as_slice())]);
        assert_eq!(
            (c.keep_alive, c.upgrade, c.names_other),
            (true, true, false)
        );
        let c = Connection::of([("Connection", b"close".as_slice())]);
        assert!(c.names_other);
        let c = Connection::of([("Connection", b"\xff close".as_slice())]);
        assert_eq!(c, Connection::default());
    }

    proptest::proptest! {
        /// Whatever the value, 1.1 persists exactly when no token is
        /// `close`, and 1.0 exactly when one is `keep-alive` and none is.
        #[test]
        fn persistence_follows_the_tokens(v in "[a-zA-Z ,-]{0,40}") {
            let tokens: Vec<String> = v.split(',').map(|t| t.trim().to_ascii_lowercase()).collect();
            let close = tokens.iter().any(|t| t == "close");
            let keep = tokens.iter().any(|t| t == "keep-alive");
            let c = Connection::of([("Connection", v.as_bytes())]);
            proptest::prop_assert_eq!(c.persists(false), !close);
            proptest::prop_assert_eq!(c.persists(true), keep && !close);
        }
    }
}
