//! The live NETLINK_SOCK_DIAG socket: send one request, hand each received
//! datagram's bytes to the caller until it has seen the end of the dump.
//! What the bytes mean (messages, `NLMSG_DONE`, errors, sockets) is decided
//! by the private `decode` module, which tests replay recorded datagrams through.
//! The receive buffer is reused: nothing is allocated per socket.

use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto,
    setsockopt, socket, sockopt,
};
use timewait_kernel::inet_diag::{
    AF_UNSPEC, encode_request, encode_request_both_families, with_bytecode,
};
use timewait_kernel::netlink::{self, SOCK_DIAG_BY_FAMILY, TCPDIAG_GETSOCK};

use crate::HostError;
use crate::decode::DumpWalk;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
/// The kernel fills at most 32 KiB per answer; a larger buffer costs nothing.
const RECV_BUFFER: usize = 64 * 1024;

/// Sends a dump request for TCP sockets of `family` in `states` (a bit per
/// state number; `AF_UNSPEC`: both families, in one walk of the kernel's
/// tables), optionally with a kernel-side filter program, and calls
/// `datagram` with each answer until it returns `false` or the socket has
/// nothing more (which the caller judges: a dump must end in `NLMSG_DONE`).
pub(crate) fn receive(
    family: u8,
    states: u32,
    bytecode: Option<&[u8]>,
    datagram: &mut dyn FnMut(&[u8]) -> bool,
) -> Result<(), HostError> {
    let err = |op: &'static str| move |errno: Errno| HostError::Netlink { op, errno };
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .map_err(err("socket"))?;
    // A big socket buffer lets the kernel run ahead of us; without it the
    // dump is only slower, so a refusal is not worth reporting.
    let _ = setsockopt(&fd, sockopt::RcvBuf, &(4 << 20));
    let (kind, request) = if family == AF_UNSPEC {
        (
            TCPDIAG_GETSOCK,
            encode_request_both_families(states).to_vec(),
        )
    } else {
        (SOCK_DIAG_BY_FAMILY, encode_request(family, states).to_vec())
    };
    let request = netlink::encode(
        kind,
        NLM_F_REQUEST | NLM_F_DUMP,
        1,
        &match bytecode {
            Some(b) => with_bytecode(&request, b),
            None => request,
        },
    );
    sendto(
        fd.as_raw_fd(),
        &request,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(err("send"))?;
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                if !datagram(&buf[..n]) {
                    return Ok(());
                }
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(err("recv")(e)),
        }
    }
}

/// Dumps TCP sockets of `family` (`AF_UNSPEC`: both) in `states`, calling
/// `on_message` with each `inet_diag_msg` payload.
pub fn dump(family: u8, states: u32, on_message: impl FnMut(&[u8])) -> Result<(), HostError> {
    dump_filtered(family, states, None, on_message)
}

/// [`dump`] with the kernel running a filter program (see
/// `timewait_kernel::inet_diag::bytecode_local_ports`) on every socket.
pub fn dump_filtered(
    family: u8,
    states: u32,
    bytecode: Option<&[u8]>,
    on_message: impl FnMut(&[u8]),
) -> Result<(), HostError> {
    let mut walk = DumpWalk::new(on_message);
    receive(family, states, bytecode, &mut |d| walk.datagram(d))?;
    walk.finish()
}
