//! Walking a buffer of netlink messages, as one `recv()` returns them.

use crate::DecodeError;

/// `NLMSG_ERROR`.
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the end of a dump.
pub const NLMSG_DONE: u16 = 3;
/// `SOCK_DIAG_BY_FAMILY`: a sock_diag request or answer.
pub const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `TCPDIAG_GETSOCK`: the request sock_diag replaced, still answered (see
/// [`crate::inet_diag::encode_request_both_families`]), and its answers.
pub const TCPDIAG_GETSOCK: u16 = 18;
/// Size of `struct nlmsghdr`.
pub const HEADER_LEN: usize = 16;

/// One netlink message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// `nlmsg_type`.
    pub kind: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nlmsg_seq`.
    pub seq: u32,
    /// `nlmsg_pid`.
    pub port_id: u32,
    /// The bytes after the header, up to `nlmsg_len`.
    pub payload: &'a [u8],
}

impl Message<'_> {
    /// For `NLMSG_ERROR`: the (negative) errno, 0 for an acknowledgement.
    pub fn error_code(&self) -> Option<i32> {
        if self.kind != NLMSG_ERROR {
            return None;
        }
        let b: [u8; 4] = self.payload.get(..4)?.try_into().ok()?;
        Some(i32::from_ne_bytes(b))
    }
}

/// Iterates the messages in `buf`; a truncated or malformed header ends the
/// walk with an error instead of reading past the buffer.
pub fn messages(buf: &[u8]) -> Messages<'_> {
    Messages {
        rest: buf,
        failed: false,
    }
}

/// Iterator returned by [`messages`].
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Message<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        let err = |d: String| Some(Err(DecodeError::new("netlink", None, d)));
        if self.rest.len() < HEADER_LEN {
            self.failed = true;
            return err(format!(
                "{} trailing bytes, shorter than a header",
                self.rest.len()
            ));
        }
        let u32_at = |i: usize| {
            u32::from_ne_bytes([
                self.rest[i],
                self.rest[i + 1],
                self.rest[i + 2],
                self.rest[i + 3],
            ])
        };
        let u16_at = |i: usize| u16::from_ne_bytes([self.rest[i], self.rest[i + 1]]);
        let len = u32_at(0) as usize;
        if len < HEADER_LEN || len > self.rest.len() {
            self.failed = true;
            return err(format!(
                "message length {len} outside 16..={}",
                self.rest.len()
            ));
        }
        let msg = Message {
            kind: u16_at(4),
            flags: u16_at(6),
            seq: u32_at(8),
            port_id: u32_at(12),
            payload: &self.rest[HEADER_LEN..len],
        };
        // Messages are padded to 4 bytes (NLMSG_ALIGN).
        let advance = len.next_multiple_of(4).min(self.rest.len());
        self.rest = &self.rest[advance..];
        Some(Ok(msg))
    }
}

/// Builds one message (for requests and test fixtures).
pub fn encode(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = HEADER_LEN + payload.len();
    let mut out = Vec::with_capacity(len.next_multiple_of(4));
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(len.next_multiple_of(4), 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn walks_padded_messages_and_reads_errors() {
        let mut buf = encode(SOCK_DIAG_BY_FAMILY, 2, 7, &[1, 2, 3]);
        buf.extend(encode(NLMSG_ERROR, 0, 7, &(-16i32).to_ne_bytes()));
        buf.extend(encode(NLMSG_DONE, 2, 7, &0i32.to_ne_bytes()));
        let msgs: Vec<_> = messages(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[0].payload, &[1, 2, 3]);
        assert_eq!(msgs[1].error_code(), Some(-16));
        assert_eq!(msgs[2].kind, NLMSG_DONE);
    }

    #[test]
    fn truncated_buffers_are_errors_not_panics() {
        let buf = encode(SOCK_DIAG_BY_FAMILY, 0, 1, &[0; 40]);
        for cut in 1..buf.len() {
            let r: Vec<_> = messages(&buf[..cut]).collect();
            assert!(r.iter().any(Result::is_err), "cut at {cut}");
        }
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..256)) {
            for m in messages(&buf).flatten() {
                let _ = m.error_code();
            }
        }
    }
}
