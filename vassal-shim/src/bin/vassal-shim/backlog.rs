//! Listen-backlog measurement for the `sos-backlog` probe: how many connections wait in a
//! listener's accept queue.
//!
//! * TCP listener held by the shim (an on-demand socket): `TCP_INFO`'s `tcpi_unacked`.
//! * TCP listener of the program (`ready = tcp:` / `http://`): `rx_queue` of its LISTEN entry in
//!   `/proc/net/tcp{,6}`.
//! * Unix listener (on-demand socket, or `ready = unix:PATH`): `UNIX_DIAG_RQLEN` from a
//!   `NETLINK_SOCK_DIAG` dump, matched by socket inode.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// The accept-queue length of a listening TCP socket.
pub fn tcp_listener(fd: RawFd) -> Option<u32> {
    // SAFETY: tcp_info is plain old data; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    // TCP_INFO also "works" on a unix socket's fd number? No: it fails with EOPNOTSUPP, and a
    // non-listening TCP socket reports its unacked segments, so check the state (10 = LISTEN).
    (r == 0 && info.tcpi_state == 10).then_some(info.tcpi_unacked)
}

/// The accept-queue length of the TCP listener on `port`, from /proc/net/tcp{,6}.
pub fn tcp_port(port: u16) -> Option<u32> {
    let mut found = None;
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 5 || cols[3] != "0A" {
                continue;
            }
            let Some(p) = cols[1].rsplit(':').next() else {
                continue;
            };
            if u16::from_str_radix(p, 16).ok() != Some(port) {
                continue;
            }
            let rx = cols[4]
                .split(':')
                .nth(1)
                .and_then(|q| u32::from_str_radix(q, 16).ok());
            if let Some(n) = rx {
                found = Some(found.unwrap_or(0).max(n));
            }
        }
    }
    found
}

/// The socket inode of `fd` (when it is a socket).
pub fn socket_inode(fd: RawFd) -> Option<u64> {
    // SAFETY: stat is plain old data; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat(2) on a descriptor with a valid out pointer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    ((st.st_mode & libc::S_IFMT) == libc::S_IFSOCK).then_some(st.st_ino)
}

/// The inode of the listening unix socket bound to `path`, from /proc/net/unix.
pub fn unix_path_inode(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/unix").ok()?;
    let want = path.to_str()?;
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // Num RefCount Protocol Flags Type St Inode Path
        if cols.len() < 8 || cols[7] != want {
            continue;
        }
        let flags = u32::from_str_radix(cols[3], 16).ok()?;
        if flags & 0x10000 != 0 {
            return cols[6].parse().ok();
        }
    }
    None
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_RQLEN: u16 = 4;
const TCP_LISTEN: u32 = 10;

/// The accept-queue length of the listening unix socket with inode `ino`.
pub fn unix_inode(ino: u64) -> Option<u32> {
    let dump = unix_diag_dump().ok()?;
    parse_unix_diag(&dump, ino)
}

fn unix_diag_dump() -> io::Result<Vec<u8>> {
    // SAFETY: socket(2) returns a new descriptor that we own.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh descriptor owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let tv = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: setsockopt reads a timeval of the given size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    // nlmsghdr (16 bytes) + unix_diag_req (24 bytes).
    let mut req = Vec::with_capacity(40);
    req.extend_from_slice(&40u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid
    req.push(libc::AF_UNIX as u8); // sdiag_family
    req.push(0); // sdiag_protocol
    req.extend_from_slice(&0u16.to_ne_bytes()); // pad
    req.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes()); // udiag_states
    req.extend_from_slice(&0u32.to_ne_bytes()); // udiag_ino
    req.extend_from_slice(&UDIAG_SHOW_RQLEN.to_ne_bytes()); // udiag_show
    req.extend_from_slice(&[0xff; 8]); // udiag_cookie: none
                                       // SAFETY: sockaddr_nl is plain old data; zeroed = the kernel as destination.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: sendto(2) with a valid buffer and address of the given sizes.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: recv(2) into a buffer of buf.len() bytes.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let chunk = &buf[..n as usize];
        out.extend_from_slice(chunk);
        if n == 0 || contains_done(chunk) {
            return Ok(out);
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Walks netlink messages: (type, payload).
fn messages(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        let len = u32_at(buf, off)? as usize;
        let ty = u16_at(buf, off + 4)?;
        if len < 16 {
            return None;
        }
        let payload = buf.get(off + 16..off + len)?;
        off += (len + 3) & !3;
        Some((ty, payload))
    })
}

fn contains_done(buf: &[u8]) -> bool {
    messages(buf).any(|(ty, _)| ty == libc::NLMSG_DONE as u16 || ty == libc::NLMSG_ERROR as u16)
}

/// Finds the `UNIX_DIAG_RQLEN` rqueue of inode `ino` in a dump. Never panics on bad input.
pub fn parse_unix_diag(dump: &[u8], ino: u64) -> Option<u32> {
    for (ty, p) in messages(dump) {
        if ty != SOCK_DIAG_BY_FAMILY {
            continue;
        }
        // unix_diag_msg: family, type, state, pad (4 bytes), ino u32, cookie [u32; 2].
        if u64::from(u32_at(p, 4)?) != ino {
            continue;
        }
        let mut off = 16;
        while let (Some(alen), Some(aty)) = (u16_at(p, off), u16_at(p, off + 2)) {
            let alen = alen as usize;
            if alen < 4 {
                break;
            }
            if aty == UNIX_DIAG_RQLEN {
                return u32_at(p, off + 4);
            }
            off += (alen + 3) & !3;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn tcp_accept_queue() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(tcp_listener(l.as_raw_fd()), Some(0));
        let _c: Vec<TcpStream> = (0..3)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        assert_eq!(tcp_listener(l.as_raw_fd()), Some(3));
        assert_eq!(tcp_port(port), Some(3));
    }

    #[test]
    fn unix_accept_queue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sock");
        let l = UnixListener::bind(&path).unwrap();
        let ino = socket_inode(l.as_raw_fd()).unwrap();
        assert_eq!(unix_path_inode(&path), Some(ino));
        assert_eq!(unix_inode(ino), Some(0));
        let _c: Vec<UnixStream> = (0..2)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        assert_eq!(unix_inode(ino), Some(2));
        assert_eq!(tcp_listener(l.as_raw_fd()), None);
    }

    #[test]
    fn garbage_dumps_do_not_panic() {
        assert_eq!(parse_unix_diag(&[], 1), None);
        assert_eq!(parse_unix_diag(&[0xff; 64], 1), None);
        let mut m = vec![0u8; 40];
        m[..4].copy_from_slice(&40u32.to_ne_bytes());
        m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        m[20..24].copy_from_slice(&7u32.to_ne_bytes());
        m[32..34].copy_from_slice(&2u16.to_ne_bytes()); // attr len < 4
        assert_eq!(parse_unix_diag(&m, 7), None);
    }
}
