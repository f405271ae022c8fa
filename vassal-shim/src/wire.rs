//! Byte-level codecs for what the shim binary exchanges with the kernel (sock_diag netlink
//! requests and answers, `/proc/net/tcp`) and reads from a probed program (an HTTP status
//! line). Public so that they can be fuzzed (`vassal-shim/fuzz`); the parsers borrow, never
//! panic and bound every length by the input's.
//!
//! Hand-written rather than taken from `netlink-packet-sock-diag`: that crate cannot encode the
//! `INET_DIAG_REQ_BYTECODE` port filter the backlog meter sends, and its decoder builds owned
//! values for every attribute of every socket of a dump, where the meter reads two fields in
//! place from one reused buffer.

/// Size of a netlink message header.
pub const NLMSG_HDRLEN: usize = 16;
/// The LISTEN state of TCP sockets (and of listening unix sockets in sock_diag answers).
pub const TCP_LISTEN: u8 = 10;
/// unix_diag attribute: the bound file's inode and device.
pub const UNIX_DIAG_VFS: u16 = 1;
/// unix_diag attribute: receive queue (for a listener, its accept queue).
pub const UNIX_DIAG_RQLEN: u16 = 4;

/// `nlmsg_type` of sock_diag requests and answers.
pub const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// unix_diag request flag: report the bound file (`UNIX_DIAG_VFS`).
pub const UDIAG_SHOW_VFS: u32 = 0x02;
/// unix_diag request flag: report the queue lengths (`UNIX_DIAG_RQLEN`).
pub const UDIAG_SHOW_RQLEN: u32 = 0x10;
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_BC_S_GE: u8 = 2;
const INET_DIAG_BC_S_LE: u8 = 3;
/// The largest request: nlmsghdr (16) + inet_diag_req_v2 (56) + bytecode attribute (20).
pub const REQ_MAX: usize = 92;

/// The outcome of an HTTP status line: `Some(ok)` once the line is complete.
pub fn http_status_ok(buf: &[u8]) -> Option<bool> {
    let end = buf.windows(2).position(|w| w == b"\r\n").or_else(|| {
        // Tolerate bare LF.
        buf.iter().position(|&b| b == b'\n')
    })?;
    let line = String::from_utf8_lossy(&buf[..end]);
    let mut parts = line.split_whitespace();
    let proto = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    Some(
        proto.starts_with("HTTP/")
            && code.len() == 3
            && code.starts_with('2')
            && code.bytes().all(|b| b.is_ascii_digit()),
    )
}

/// The largest `rx_queue` of a LISTEN entry on `port` in the text of /proc/net/tcp{,6}.
/// Never panics on bad input.
pub fn parse_proc_tcp(text: &str, port: u16) -> Option<u32> {
    let mut found: Option<u32> = None;
    for line in text.lines().skip(1) {
        // sl local_address rem_address st tx_queue:rx_queue ...
        let mut cols = line.split_whitespace();
        let (Some(_), Some(local), Some(_), Some(st), Some(queues)) = (
            cols.next(),
            cols.next(),
            cols.next(),
            cols.next(),
            cols.next(),
        ) else {
            continue;
        };
        if st != "0A" {
            continue;
        }
        let p = local.rsplit(':').next().unwrap_or("");
        if u16::from_str_radix(p, 16).ok() != Some(port) {
            continue;
        }
        let rx = queues
            .split(':')
            .nth(1)
            .and_then(|q| u32::from_str_radix(q, 16).ok());
        if let Some(n) = rx {
            found = Some(found.map_or(n, |b| b.max(n)));
        }
    }
    found
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// One netlink message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// `nlmsg_type`.
    pub ty: u16,
    /// `nlmsg_seq`.
    pub seq: u32,
    /// What follows the 16-byte header.
    pub payload: &'a [u8],
}

/// Walks the netlink messages of a datagram; stops at the first malformed one.
pub fn messages(buf: &[u8]) -> impl Iterator<Item = Message<'_>> {
    let mut off = 0;
    std::iter::from_fn(move || {
        let len = u32_at(buf, off)? as usize;
        let ty = u16_at(buf, off + 4)?;
        let seq = u32_at(buf, off + 8)?;
        if len < NLMSG_HDRLEN {
            return None;
        }
        let payload = buf.get(off + NLMSG_HDRLEN..off.checked_add(len)?)?;
        off = off.checked_add((len + 3) & !3)?;
        Some(Message { ty, seq, payload })
    })
}

/// Walks the attributes (type, data) that follow a fixed header of `skip` bytes.
fn attributes(p: &[u8], skip: usize) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = skip;
    std::iter::from_fn(move || {
        let len = u16_at(p, off)? as usize;
        let ty = u16_at(p, off + 2)? & 0x3fff;
        if len < 4 {
            return None;
        }
        let data = p.get(off + 4..off + len)?;
        off += (len + 3) & !3;
        Some((ty, data))
    })
}

/// From a unix_diag_msg payload: (state, socket inode, `UNIX_DIAG_RQLEN` rqueue).
pub fn unix_diag_fields(p: &[u8]) -> Option<(u8, u64, Option<u32>)> {
    // unix_diag_msg: family, type, state, pad, ino u32, cookie [u32; 2]; then attributes.
    let state = *p.get(2)?;
    let ino = u64::from(u32_at(p, 4)?);
    let rq = attributes(p, 16)
        .find(|(ty, _)| *ty == UNIX_DIAG_RQLEN)
        .and_then(|(_, d)| u32_at(d, 0));
    Some((state, ino, rq))
}

/// From a unix_diag_msg payload: the bound file's (inode, kernel device), `UNIX_DIAG_VFS`.
pub fn unix_diag_vfs(p: &[u8]) -> Option<(u32, u32)> {
    let (_, d) = attributes(p, 16).find(|(ty, _)| *ty == UNIX_DIAG_VFS)?;
    Some((u32_at(d, 0)?, u32_at(d, 4)?))
}

/// From an inet_diag_msg payload: the accept queue of a listener on local port `port`.
pub fn inet_diag_rqueue(p: &[u8], port: u16) -> Option<u32> {
    // inet_diag_msg: family, state, timer, retrans, id { sport be16, ... } (48 bytes),
    // expires u32, rqueue u32, wqueue u32, uid u32, inode u32.
    let state = *p.get(1)?;
    let sport = u16::from_be_bytes(p.get(4..6)?.try_into().ok()?);
    (state == TCP_LISTEN && sport == port)
        .then(|| u32_at(p, 56))
        .flatten()
}

/// Writes a nlmsghdr for a `len`-byte SOCK_DIAG_BY_FAMILY request into `req[..16]`.
pub fn nl_header(req: &mut [u8], len: usize, dump: bool, seq: u32) {
    let flags = libc::NLM_F_REQUEST | if dump { libc::NLM_F_DUMP } else { 0 };
    req[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&(flags as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    req[12..16].copy_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
}

/// A unix_diag request: a dump of listening sockets, or the socket with inode `ino`.
pub fn unix_request(req: &mut [u8; REQ_MAX], seq: u32, dump: bool, ino: u32, show: u32) -> usize {
    const LEN: usize = NLMSG_HDRLEN + 24;
    nl_header(req, LEN, dump, seq);
    let b = &mut req[NLMSG_HDRLEN..LEN];
    b[0] = libc::AF_UNIX as u8; // sdiag_family
    b[1] = 0; // sdiag_protocol
    b[2..4].copy_from_slice(&0u16.to_ne_bytes()); // pad
    b[4..8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes()); // udiag_states
    b[8..12].copy_from_slice(&ino.to_ne_bytes()); // udiag_ino
    b[12..16].copy_from_slice(&show.to_ne_bytes()); // udiag_show
    b[16..24].copy_from_slice(&[0xff; 8]); // udiag_cookie: none
    LEN
}

/// An inet_diag dump of listening TCP sockets of `family`, filtered in the kernel to local
/// port `port` (bytecode: sport >= port && sport <= port).
pub fn inet_request(req: &mut [u8; REQ_MAX], seq: u32, family: u8, port: u16) -> usize {
    nl_header(req, REQ_MAX, true, seq);
    let b = &mut req[NLMSG_HDRLEN..];
    b.fill(0);
    b[0] = family; // sdiag_family
    b[1] = libc::IPPROTO_TCP as u8; // sdiag_protocol
    b[4..8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes()); // idiag_states
                                                                  // id (48 bytes) stays zero except the cookie: none.
    b[48..56].copy_from_slice(&[0xff; 8]);
    // Attribute INET_DIAG_REQ_BYTECODE: 4-byte header, two port comparisons of 8 bytes.
    let a = &mut b[56..76];
    a[0..2].copy_from_slice(&20u16.to_ne_bytes());
    a[2..4].copy_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
    // op {code, yes, no}: "yes" steps to the next op, "no" jumps past the end (reject).
    a[4] = INET_DIAG_BC_S_GE;
    a[5] = 8;
    a[6..8].copy_from_slice(&20u16.to_ne_bytes());
    a[10..12].copy_from_slice(&port.to_ne_bytes());
    a[12] = INET_DIAG_BC_S_LE;
    a[13] = 8;
    a[14..16].copy_from_slice(&12u16.to_ne_bytes());
    a[18..20].copy_from_slice(&port.to_ne_bytes());
    REQ_MAX
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    proptest::proptest! {
        #[test]
        fn status_parser_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = http_status_ok(&data);
        }
    }

    #[test]
    fn status_lines() {
        assert_eq!(http_status_ok(b"HTTP/1.0 200 OK\r\n"), Some(true));
        assert_eq!(
            http_status_ok(b"HTTP/1.1 204 No Content\r\nX: y"),
            Some(true)
        );
        assert_eq!(http_status_ok(b"HTTP/1.1 503 Busy\r\n"), Some(false));
        assert_eq!(http_status_ok(b"HTTP/1.1 2000 x\r\n"), Some(false));
        assert_eq!(http_status_ok(b"garbage\n"), Some(false));
        assert_eq!(http_status_ok(b"HTTP/1.1 200"), None);
    }

    #[test]
    fn proc_text_parser() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let _c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let text = std::fs::read_to_string("/proc/net/tcp").unwrap();
        assert_eq!(parse_proc_tcp(&text, port), Some(1));
        assert_eq!(parse_proc_tcp("", port), None);
        assert_eq!(
            parse_proc_tcp("hdr\n 0: x y 0A\n1: a:zz b 0A 0:1\n", 0),
            None
        );
    }

    #[test]
    fn garbage_messages_do_not_panic() {
        assert_eq!(messages(&[]).count(), 0);
        assert_eq!(messages(&[0xff; 64]).count(), 0);
        let mut m = vec![0u8; 40];
        m[..4].copy_from_slice(&40u32.to_ne_bytes());
        m[4..6].copy_from_slice(&20u16.to_ne_bytes());
        m[20..24].copy_from_slice(&7u32.to_ne_bytes());
        m[32..34].copy_from_slice(&2u16.to_ne_bytes()); // attribute length < 4
        let msg = messages(&m).next().unwrap();
        assert_eq!(unix_diag_fields(msg.payload), Some((0, 7, None)));
        assert_eq!(unix_diag_vfs(msg.payload), None);
        assert_eq!(inet_diag_rqueue(msg.payload, 0), None);
        assert_eq!(unix_diag_fields(&[1]), None);
        assert_eq!(inet_diag_rqueue(&[0; 8], 0), None);
    }
}
