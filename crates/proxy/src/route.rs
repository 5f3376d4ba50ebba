//! Which route a request takes: the routes of its listener whose host
//! matches (exact beats wildcard beats none given) and whose path prefix
//! starts its path compete; the most specific host, then the longest
//! prefix, wins. No match is a 404. Pure.

use std::sync::Arc;

use crate::headers::ForwardingRules;

/// How a route matches the Host header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// Any host.
    Any,
    /// This host exactly (case-insensitive, port ignored).
    Exact(String),
    /// A subdomain of this domain (`*.example.com` matches `a.example.com`).
    Suffix(String),
}

impl HostMatch {
    /// A route's `host`: none, a name, or `*.domain`.
    pub(crate) fn parse(host: Option<&str>) -> Result<HostMatch, String> {
        let Some(h) = host else {
            return Ok(HostMatch::Any);
        };
        match h.strip_prefix("*.") {
            Some(d) if !d.is_empty() && !d.contains('*') => Ok(HostMatch::Suffix(d.to_string())),
            _ if h.contains('*') || h.is_empty() => {
                Err(format!("host {h:?}: expected a name or *.domain"))
            }
            _ => Ok(HostMatch::Exact(h.to_string())),
        }
    }

    fn matches(&self, host: Option<&str>) -> bool {
        let host = host.map(strip_port);
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(e) => host.is_some_and(|h| h.eq_ignore_ascii_case(e)),
            // Bytes, not str slices: a non-ASCII Host must not split a character.
            HostMatch::Suffix(s) => host.is_some_and(|h| {
                let (h, s) = (h.as_bytes(), s.as_bytes());
                h.len() > s.len() + 1
                    && h[h.len() - s.len()..].eq_ignore_ascii_case(s)
                    && h[h.len() - s.len() - 1] == b'.'
            }),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            HostMatch::Exact(_) => 2,
            HostMatch::Suffix(_) => 1,
            HostMatch::Any => 0,
        }
    }
}

/// `name:port` → `name`; `[v6]:port` → `[v6]`; anything else unchanged.
fn strip_port(h: &str) -> &str {
    match h.rsplit_once(':') {
        Some((name, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!name.contains(':') || name.ends_with(']')) =>
        {
            name
        }
        _ => h,
    }
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Host rule.
    pub host: HostMatch,
    /// Path prefix (`/` for all).
    pub path_prefix: String,
    /// Index into [`crate::Config::groups`].
    pub group: usize,
    /// The header rules of requests on this route.
    pub forwarding: Arc<ForwardingRules>,
}

/// The route for a request, if any.
pub(crate) fn route<'r>(routes: &'r [Route], host: Option<&str>, path: &str) -> Option<&'r Route> {
    routes
        .iter()
        .filter(|r| r.host.matches(host) && path.starts_with(r.path_prefix.as_str()))
        .max_by_key(|r| (r.host.rank(), r.path_prefix.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(host: Option<&str>, prefix: &str, group: usize) -> Route {
        Route {
            host: HostMatch::parse(host).unwrap(),
            path_prefix: prefix.into(),
            group,
            forwarding: Arc::default(),
        }
    }

    #[test]
    fn host_beats_path_and_the_longest_prefix_wins() {
        let routes = [
            r(None, "/api/", 1),
            r(None, "/api/v2/", 2),
            r(Some("static.example.com"), "/", 3),
            r(Some("*.example.com"), "/", 4),
            r(None, "/", 5),
        ];
        let g = |host: Option<&str>, path: &str| route(&routes, host, path).map(|r| r.group);
        assert_eq!(g(Some("x"), "/api/users"), Some(1));
        assert_eq!(g(Some("x"), "/api/v2/users"), Some(2));
        assert_eq!(g(Some("static.example.com:8080"), "/api/x"), Some(3));
        assert_eq!(g(Some("img.example.com"), "/"), Some(4));
        assert_eq!(
            g(Some("example.com"), "/"),
            Some(5),
            "*.x is only subdomains"
        );
        assert_eq!(g(None, "/anything"), Some(5));
        assert_eq!(g(Some("ünïcode.éxample.com"), "/"), Some(5), "no panic");
        assert_eq!(g(Some("[::1]:8080"), "/"), Some(5));
        assert_eq!(route(&routes[..2], None, "/other"), None);
    }

    #[test]
    fn host_rules_are_a_name_or_a_wildcard_domain() {
        assert_eq!(HostMatch::parse(None), Ok(HostMatch::Any));
        assert!(HostMatch::parse(Some("a*b.example.com")).is_err());
        assert!(HostMatch::parse(Some("*.")).is_err());
        assert!(HostMatch::parse(Some("")).is_err());
    }
}
