//! The socket side of HTTP/1: a connection's read buffer, its one timer,
//! and writes that give up on a receiver that stops reading.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// Largest request or response head accepted.
pub(crate) const HEAD_LIMIT: usize = 64 * 1024;
/// Read buffer per connection side.
const BUF: usize = 16 * 1024;
/// Longest chunk-size or trailer line accepted.
pub(crate) const LINE_LIMIT: usize = 4096;

/// Now, on tokio's clock (which tests can pause), as a std `Instant`: the
/// one clock every timeout and pool decision of the proxy reads.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Bytes read from a socket and not yet used.
pub(crate) struct ReadBuf {
    data: Vec<u8>,
    pos: usize,
    len: usize,
}

impl ReadBuf {
    pub(crate) fn new() -> ReadBuf {
        ReadBuf {
            data: vec![0; BUF],
            pos: 0,
            len: 0,
        }
    }

    pub(crate) fn filled(&self) -> &[u8] {
        &self.data[self.pos..self.len]
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos >= self.len {
            self.pos = 0;
            self.len = 0;
        }
    }

    /// Reads more; 0 means the peer closed. Grows up to `HEAD_LIMIT` when full.
    pub(crate) async fn fill(&mut self, s: &mut TcpStream) -> io::Result<usize> {
        if self.pos > 0 && self.len == self.data.len() {
            self.data.copy_within(self.pos..self.len, 0);
            self.len -= self.pos;
            self.pos = 0;
        }
        if self.len == self.data.len() {
            if self.data.len() >= HEAD_LIMIT {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
            }
            self.data.resize((self.data.len() * 2).min(HEAD_LIMIT), 0);
        }
        let n = s.read(&mut self.data[self.len..]).await?;
        self.len += n;
        Ok(n)
    }

    /// [`ReadBuf::fill`] for body bytes: a sender silent for the body
    /// timeout is cut off.
    pub(crate) async fn fill_body(
        &mut self,
        s: &mut TcpStream,
        dl: &mut Deadline,
    ) -> io::Result<usize> {
        dl.set(now() + dl.body);
        match dl.within(self.fill(s)).await {
            Some(r) => r,
            None => Err(io::Error::new(io::ErrorKind::TimedOut, "body stalled")),
        }
    }

    /// One CRLF-terminated line (without the CRLF), reading as needed.
    pub(crate) async fn line(
        &mut self,
        s: &mut TcpStream,
        dl: &mut Deadline,
    ) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.filled().windows(2).position(|w| w == b"\r\n") {
                let line = self.filled()[..i].to_vec();
                self.consume(i + 2);
                return Ok(line);
            }
            if self.filled().len() > LINE_LIMIT {
                return Err(invalid("chunk or trailer line too long"));
            }
            if self.fill_body(s, dl).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

/// A client connection's one timer, shared by all its waits (idle, request
/// head, response head, body). Setting a later deadline is a plain store:
/// the armed sleep is never later than any deadline set after it was armed
/// (it is armed at most `step`, the shortest timeout in use, ahead), so it
/// never has to move on the request path. When it fires before the deadline
/// it is re-armed. A busy connection thus costs one timer event per `step`
/// instead of two timer-wheel insertions and removals per request.
pub(crate) struct Deadline {
    sleep: Pin<Box<Sleep>>,
    at: Instant,
    step: Duration,
    /// The body timeout of the exchange under way.
    pub(crate) body: Duration,
}

impl Deadline {
    pub(crate) fn new(step: Duration) -> Deadline {
        let now = now();
        Deadline {
            sleep: Box::pin(tokio::time::sleep_until((now + step).into())),
            at: now + step,
            step,
            body: step,
        }
    }

    /// The current wait ends at `at`.
    pub(crate) fn set(&mut self, at: Instant) {
        if at < self.sleep.deadline().into_std() {
            self.sleep.as_mut().reset(at.into());
        }
        self.at = at;
    }

    /// Runs `fut` until it finishes (`Some`) or the deadline passes (`None`).
    pub(crate) async fn within<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        loop {
            tokio::select! {
                biased;
                r = &mut fut => return Some(r),
                () = self.sleep.as_mut() => {
                    let now = now();
                    if now >= self.at {
                        return None;
                    }
                    self.sleep.as_mut().reset(self.at.min(now + self.step).into());
                }
            }
        }
    }
}

/// `write_all`, cut off when the receiver takes no byte for the body timeout
/// (like nginx's `send_timeout`): a receiver that stops reading cannot hold
/// a connection. A write the socket buffer takes at once, the common case,
/// arms nothing.
pub(crate) async fn send(s: &mut TcpStream, buf: &[u8], dl: &mut Deadline) -> io::Result<()> {
    send_counting(s, buf, dl, &mut 0).await
}

/// [`send`], adding to `written` the bytes the socket took (so a failure
/// tells whether any of the message left).
pub(crate) async fn send_counting(
    s: &mut TcpStream,
    mut buf: &[u8],
    dl: &mut Deadline,
    written: &mut usize,
) -> io::Result<()> {
    while !buf.is_empty() {
        match s.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                *written += n;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        dl.set(now() + dl.body);
        match dl.within(s.writable()).await {
            Some(r) => r?,
            None => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "receiver stalled"));
            }
        }
    }
    Ok(())
}

pub(crate) fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paused time: the deadline's arithmetic, not the machine's speed.
    #[tokio::test(start_paused = true)]
    async fn the_deadline_fires_at_the_latest_deadline_set_not_before() {
        let mut dl = Deadline::new(Duration::from_millis(50));
        let start = now();
        // Later than the armed sleep: no reset; the sleep re-arms itself.
        dl.set(start + Duration::from_millis(175));
        let early = dl
            .within(tokio::time::sleep(Duration::from_millis(174)))
            .await;
        assert_eq!(early, Some(()), "a wait that ends before the deadline wins");
        dl.set(start + Duration::from_millis(175));
        assert_eq!(dl.within(std::future::pending::<()>()).await, None);
        assert!(tokio::time::Instant::now() >= (start + Duration::from_millis(175)).into());
        // Earlier than the armed sleep: the sleep moves.
        let mut dl = Deadline::new(Duration::from_secs(30));
        let start = tokio::time::Instant::now();
        dl.set(now() + Duration::from_millis(20));
        assert_eq!(dl.within(std::future::pending::<()>()).await, None);
        assert_eq!(start.elapsed(), Duration::from_millis(20));
        // A future that finishes first wins.
        dl.set(now() + Duration::from_secs(5));
        assert_eq!(dl.within(async { 7 }).await, Some(7));
    }
}
