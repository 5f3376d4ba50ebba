//! Kernel release strings, for advice that depends on the version.

use std::fmt;

/// `major.minor` of a release like `6.18.44-fc-v669`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
}

impl KernelVersion {
    /// Parses the leading `X.Y` of a release string.
    pub fn parse(release: &str) -> Option<KernelVersion> {
        let mut it = release.split(|c: char| !c.is_ascii_digit());
        let major = it.next()?.parse().ok()?;
        let minor = it.next()?.parse().ok()?;
        Some(KernelVersion { major, minor })
    }

    /// Whether this is at least `major.minor`.
    pub fn at_least(self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_releases() {
        let v = KernelVersion::parse("6.18.44-fc-v669").unwrap();
        assert_eq!((v.major, v.minor), (6, 18));
        assert!(v.at_least(6, 14) && !v.at_least(6, 19) && v.at_least(4, 2));
        assert_eq!(
            KernelVersion::parse("4.19.91-27.al7.x86_64")
                .unwrap()
                .to_string(),
            "4.19"
        );
        assert_eq!(KernelVersion::parse(""), None);
        assert_eq!(KernelVersion::parse("garbage"), None);
    }
}
