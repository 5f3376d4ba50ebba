//! One NETLINK_SOCK_DIAG dump: send an `inet_diag_req_v2`, receive answers
//! until `NLMSG_DONE`, hand each message's raw payload to the caller.
//! The receive buffer is reused: nothing is allocated per socket.

use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto,
    setsockopt, socket, sockopt,
};
use timewait_kernel::inet_diag::{encode_request, encode_request_with_bytecode};
use timewait_kernel::netlink::{self, NLMSG_DONE, NLMSG_ERROR, SOCK_DIAG_BY_FAMILY};

use crate::HostError;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
/// The kernel fills at most 32 KiB per answer; a larger buffer costs nothing.
const RECV_BUFFER: usize = 64 * 1024;

/// Dumps TCP sockets of `family` in `states` (a bit per state number),
/// calling `on_message` with each `inet_diag_msg` payload.
pub fn dump(family: u8, states: u32, on_message: impl FnMut(&[u8])) -> Result<(), HostError> {
    dump_filtered(family, states, None, on_message)
}

/// [`dump`] with the kernel running a filter program (see
/// `timewait_kernel::inet_diag::bytecode_local_ports`) on every socket.
pub fn dump_filtered(
    family: u8,
    states: u32,
    bytecode: Option<&[u8]>,
    mut on_message: impl FnMut(&[u8]),
) -> Result<(), HostError> {
    let err = |what: &str, e: Errno| HostError::Netlink(format!("{what}: {}", e.desc()));
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .map_err(|e| err("socket", e))?;
    // A big socket buffer lets the kernel run ahead of us; failure is harmless.
    let _ = setsockopt(&fd, sockopt::RcvBuf, &(4 << 20));
    let request = netlink::encode(
        SOCK_DIAG_BY_FAMILY,
        NLM_F_REQUEST | NLM_F_DUMP,
        1,
        &match bytecode {
            Some(b) => encode_request_with_bytecode(family, states, b),
            None => encode_request(family, states).to_vec(),
        },
    );
    sendto(
        fd.as_raw_fd(),
        &request,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(|e| err("send", e))?;
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        let n = match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(0) => {
                return Err(HostError::Netlink(
                    "the kernel closed the dump early".into(),
                ));
            }
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(err("recv", e)),
        };
        for m in netlink::messages(&buf[..n]) {
            let m = m.map_err(|e| HostError::Netlink(e.to_string()))?;
            match m.kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => match m.error_code() {
                    Some(0) => {}
                    Some(code) => return Err(err("dump", Errno::from_raw(-code))),
                    None => return Err(HostError::Netlink("truncated error message".into())),
                },
                SOCK_DIAG_BY_FAMILY => on_message(m.payload),
                _ => {}
            }
        }
    }
}
