//! Making TCP states on purpose, inside a test's namespace.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};

/// `n` connections to `to` (accepted on `listener`) that the client closes
/// first, so each leaves a client-side TIME_WAIT socket (or, with the table
/// full, a `TCPTimeWaitOverflow`).
pub fn client_closes_first(listener: &TcpListener, to: SocketAddr, n: usize) {
    for _ in 0..n {
        let c = TcpStream::connect(to).unwrap();
        let (s, _) = listener.accept().unwrap();
        drop(c);
        // Wait for the client's FIN before closing the server side.
        let mut b = [0u8; 1];
        let _ = (&s).read(&mut b);
        drop(s);
    }
}

/// `n` connections to `to` that the server closes first: server-side TIME_WAIT.
pub fn server_closes_first(listener: &TcpListener, to: SocketAddr, n: usize) {
    for _ in 0..n {
        let c = TcpStream::connect(to).unwrap();
        let (s, _) = listener.accept().unwrap();
        drop(s);
        let mut b = [0u8; 1];
        let _ = (&c).read(&mut b);
        drop(c);
    }
}
