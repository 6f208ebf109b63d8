//! The listen queue, as the kernel counts it: how many connections wait for
//! a worker to `accept()` them, and how many may wait (the backlog). Read,
//! never guessed: `TCP_INFO` for TCP listeners, `sock_diag` (netlink) for
//! unix sockets.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Waiting connections and the backlog they may fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Queue {
    pub waiting: u32,
    pub backlog: u32,
}

/// Reads the queue of the listening socket `fd`.
pub fn read(fd: BorrowedFd<'_>) -> io::Result<Queue> {
    let addr = nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(fd.as_raw_fd())?;
    if addr.as_unix_addr().is_some() {
        unix_queue(fd)
    } else {
        tcp_queue(fd)
    }
}

/// For a listening TCP socket the kernel reports the accept queue in
/// `tcpi_unacked` and its limit in `tcpi_sacked`.
fn tcp_queue(fd: BorrowedFd<'_>) -> io::Result<Queue> {
    // SAFETY: tcp_info is plain old data; getsockopt fills at most `len`.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Queue {
        waiting: info.tcpi_unacked,
        backlog: info.tcpi_sacked,
    })
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_RQLEN: u16 = 4;
const TCP_LISTEN: u32 = 10;
const NLMSG_ERROR: u16 = 2;
const NLMSG_HDRLEN: usize = 16;
/// unix_diag_msg: family, type, state, pad, ino, cookie[2].
const UNIX_DIAG_MSG_LEN: usize = 16;

/// Asks `sock_diag` about the unix socket with our inode; for a listening
/// socket `UNIX_DIAG_RQLEN` holds the queue and its limit.
fn unix_queue(fd: BorrowedFd<'_>) -> io::Result<Queue> {
    let inode = nix::sys::stat::fstat(fd.as_raw_fd())?.st_ino as u32;
    let nl = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Netlink,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        nix::sys::socket::SockProtocol::NetlinkSockDiag,
    )?;
    // nlmsghdr + unix_diag_req (family, protocol, pad, states, ino, show, cookie[2]).
    let mut req = Vec::with_capacity(NLMSG_HDRLEN + 24);
    req.extend_from_slice(&((NLMSG_HDRLEN + 24) as u32).to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    req.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    req.push(libc::AF_UNIX as u8);
    req.push(0);
    req.extend_from_slice(&0u16.to_ne_bytes());
    req.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    req.extend_from_slice(&inode.to_ne_bytes());
    req.extend_from_slice(&UDIAG_SHOW_RQLEN.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // no cookie
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    let kernel = nix::sys::socket::NetlinkAddr::new(0, 0);
    nix::sys::socket::sendto(
        nl.as_raw_fd(),
        &req,
        &kernel,
        nix::sys::socket::MsgFlags::empty(),
    )?;
    let mut buf = [0u8; 8192];
    let n = nix::sys::socket::recv(
        nl.as_raw_fd(),
        &mut buf,
        nix::sys::socket::MsgFlags::empty(),
    )?;
    parse_unix_reply(&buf[..n])
}

fn parse_unix_reply(msg: &[u8]) -> io::Result<Queue> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {why}"));
    if msg.len() < NLMSG_HDRLEN {
        return Err(bad("short reply"));
    }
    let kind = u16::from_ne_bytes([msg[4], msg[5]]);
    if kind == NLMSG_ERROR {
        let errno = i32::from_ne_bytes(msg[16..20].try_into().map_err(|_| bad("short error"))?);
        return Err(io::Error::from_raw_os_error(-errno));
    }
    let total =
        (u32::from_ne_bytes(msg[0..4].try_into().expect("4 bytes")) as usize).min(msg.len());
    let mut at = NLMSG_HDRLEN + UNIX_DIAG_MSG_LEN;
    while at + 4 <= total {
        let len = u16::from_ne_bytes([msg[at], msg[at + 1]]) as usize;
        let kind = u16::from_ne_bytes([msg[at + 2], msg[at + 3]]);
        if len < 4 || at + len > total {
            break;
        }
        if kind == UNIX_DIAG_RQLEN && len >= 12 {
            let word = |i: usize| u32::from_ne_bytes(msg[i..i + 4].try_into().expect("4 bytes"));
            return Ok(Queue {
                waiting: word(at + 4),
                backlog: word(at + 8),
            });
        }
        at += (len + 3) & !3;
    }
    Err(bad("no UNIX_DIAG_RQLEN in the reply"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn counts_waiting_connections_on_unix_and_tcp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.sock");
        let unix = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert_eq!(read(unix.as_fd()).unwrap().waiting, 0);
        let _a = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let _b = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let q = read(unix.as_fd()).unwrap();
        assert_eq!(q.waiting, 2);
        assert!(q.backlog >= 2);

        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = std::net::TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let q = read(tcp.as_fd()).unwrap();
        assert_eq!(q.waiting, 1);
        assert!(q.backlog >= 1);
    }
}
