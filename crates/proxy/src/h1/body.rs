//! Copying a message body from one connection to the other through fixed
//! buffers: `Content-Length` bodies are copied, chunked bodies re-framed
//! (chunk extensions dropped; trailer fields forwarded when the receiver
//! gets a chunked body, dropped otherwise), and a chunked body toward an
//! HTTP/1.0 client is de-chunked and ends with the connection.
//!
//! An error says which side failed: [`BodyError::Read`] for the sender
//! (ended early, malformed, stalled past the body timeout),
//! [`BodyError::Write`] for the receiver (gone, or not reading).

use std::io;

use tokio::net::TcpStream;

use crate::h1::head::Framing;
use crate::h1::io::{Deadline, ReadBuf, invalid, send};
use crate::headers::Name;

/// Most trailer bytes accepted after the last chunk.
const TRAILER_LIMIT: usize = 16 * 1024;

/// Which side of a body copy failed.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// The sender.
    Read(io::Error),
    /// The receiver.
    Write(io::Error),
}

/// Copies exactly `n` bytes from `src` (buffered bytes first) to `dst`.
async fn copy_exact(
    rb: &mut ReadBuf,
    src: &mut TcpStream,
    dst: &mut TcpStream,
    n: u64,
    dl: &mut Deadline,
) -> Result<(), BodyError> {
    let mut left = n;
    while left > 0 {
        if rb.filled().is_empty() {
            match rb.fill_body(src, dl).await {
                Ok(0) => return Err(BodyError::Read(io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => {}
                Err(e) => return Err(BodyError::Read(e)),
            }
        }
        let take = rb
            .filled()
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        send(dst, &rb.filled()[..take], dl)
            .await
            .map_err(BodyError::Write)?;
        rb.consume(take);
        left -= take as u64;
    }
    Ok(())
}

/// The size of a chunk from its size line: hex digits only, no sign, no
/// spaces inside (smuggling vectors); an extension after `;` is dropped.
fn chunk_size(line: &[u8]) -> io::Result<u64> {
    let text = std::str::from_utf8(line)
        .map_err(|_| invalid("chunk size"))?
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    if text.is_empty() || text.len() > 15 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid("chunk size"));
    }
    u64::from_str_radix(text, 16).map_err(|_| invalid("chunk size"))
}

/// Whether a trailer line goes on: a well-formed field that may be a
/// trailer (not one that frames or routes the message).
fn forward_trailer(line: &[u8]) -> io::Result<bool> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(|| invalid("trailer field without a colon"))?;
    let name = std::str::from_utf8(&line[..colon]).map_err(|_| invalid("trailer field name"))?;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid("trailer field name"));
    }
    Ok(!Name::of(name).forbidden_in_trailer())
}

/// Copies a body from `src` (buffered bytes first) to `dst`, turning the
/// `from` framing into the `to` framing.
pub(crate) async fn copy_body(
    rb: &mut ReadBuf,
    src: &mut TcpStream,
    dst: &mut TcpStream,
    from: Framing,
    to: Framing,
    out: &mut Vec<u8>,
    dl: &mut Deadline,
) -> Result<(), BodyError> {
    match from {
        Framing::None => Ok(()),
        Framing::Length(n) => copy_exact(rb, src, dst, n, dl).await,
        Framing::UntilClose => loop {
            if rb.filled().is_empty() {
                match rb.fill_body(src, dl).await {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(BodyError::Read(e)),
                }
            }
            send(dst, rb.filled(), dl).await.map_err(BodyError::Write)?;
            let n = rb.filled().len();
            rb.consume(n);
        },
        Framing::Chunked => {
            let chunked = to == Framing::Chunked;
            loop {
                let line = rb.line(src, dl).await.map_err(BodyError::Read)?;
                let size = chunk_size(&line).map_err(BodyError::Read)?;
                if size == 0 {
                    out.clear();
                    out.extend_from_slice(b"0\r\n");
                    loop {
                        let t = rb.line(src, dl).await.map_err(BodyError::Read)?;
                        if t.is_empty() {
                            break;
                        }
                        if forward_trailer(&t).map_err(BodyError::Read)? {
                            out.extend_from_slice(&t);
                            out.extend_from_slice(b"\r\n");
                        }
                        if out.len() > TRAILER_LIMIT {
                            return Err(BodyError::Read(invalid("trailer fields too large")));
                        }
                    }
                    out.extend_from_slice(b"\r\n");
                    if chunked {
                        send(dst, out, dl).await.map_err(BodyError::Write)?;
                    }
                    return Ok(());
                }
                if chunked {
                    out.clear();
                    out.extend_from_slice(format!("{size:x}\r\n").as_bytes());
                    send(dst, out, dl).await.map_err(BodyError::Write)?;
                }
                copy_exact(rb, src, dst, size, dl).await?;
                let end = rb.line(src, dl).await.map_err(BodyError::Read)?;
                if !end.is_empty() {
                    return Err(BodyError::Read(invalid("chunk data longer than its size")));
                }
                if chunked {
                    send(dst, b"\r\n", dl).await.map_err(BodyError::Write)?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A connected pair on loopback: (the end we write to, the end copy reads).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// Copies `input` framed as `from` into `to`; what the receiver got.
    async fn copy(input: &[u8], from: Framing, to: Framing) -> Result<Vec<u8>, BodyError> {
        let (mut feed, mut src) = pair().await;
        let (mut dst, mut sink) = pair().await;
        feed.write_all(input).await.unwrap();
        drop(feed);
        let mut rb = ReadBuf::new();
        let mut dl = Deadline::new(Duration::from_secs(5));
        let mut out = Vec::new();
        let r = copy_body(&mut rb, &mut src, &mut dst, from, to, &mut out, &mut dl).await;
        drop(dst);
        let mut got = Vec::new();
        sink.read_to_end(&mut got).await.unwrap();
        r.map(|()| got)
    }

    #[tokio::test]
    async fn chunked_bodies_keep_their_trailers_toward_a_chunked_receiver() {
        let body = b"5;ext=1\r\nhello\r\n0\r\nX-Checksum: 42\r\nContent-Length: 9\r\n\r\n";
        let got = copy(body, Framing::Chunked, Framing::Chunked)
            .await
            .unwrap();
        assert_eq!(got, b"5\r\nhello\r\n0\r\nX-Checksum: 42\r\n\r\n");
        let got = copy(body, Framing::Chunked, Framing::UntilClose)
            .await
            .unwrap();
        assert_eq!(got, b"hello", "de-chunked, trailers dropped");
    }

    #[tokio::test]
    async fn malformed_chunks_are_the_senders_failure() {
        for bad in [
            &b"+5\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloEXTRA\r\n0\r\n\r\n",
            b"0\r\nno colon\r\n\r\n",
        ] {
            match copy(bad, Framing::Chunked, Framing::Chunked).await {
                Err(BodyError::Read(e)) => assert_eq!(e.kind(), io::ErrorKind::InvalidData),
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bad)),
            }
        }
        match copy(b"hel", Framing::Length(5), Framing::Length(5)).await {
            Err(BodyError::Read(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            copy(b"hello", Framing::Length(5), Framing::Length(5))
                .await
                .unwrap(),
            b"hello"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_receiver_that_stops_reading_is_the_receivers_failure() {
        let (mut feed, mut src) = pair().await;
        let (mut dst, _sink_never_read) = pair().await;
        let big = 64 << 20;
        let writer = tokio::spawn(async move {
            let chunk = vec![b'x'; 1 << 20];
            for _ in 0..64 {
                if feed.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        });
        let mut rb = ReadBuf::new();
        let mut dl = Deadline::new(Duration::from_secs(1));
        dl.body = Duration::from_secs(1);
        let mut out = Vec::new();
        let r = copy_body(
            &mut rb,
            &mut src,
            &mut dst,
            Framing::Length(big),
            Framing::Length(big),
            &mut out,
            &mut dl,
        )
        .await;
        match r {
            Err(BodyError::Write(e)) => assert_eq!(e.kind(), io::ErrorKind::TimedOut),
            other => panic!("{other:?}"),
        }
        writer.abort();
    }
}
