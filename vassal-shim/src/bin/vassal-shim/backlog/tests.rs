//! The meter against real kernel sockets.

use super::*;
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

/// Runs one measurement to its end, waiting for the netlink answer with poll(2) and a
/// deadline (the meter itself never waits).
fn measure(m: &mut Meter) -> Option<u32> {
    match m.start() {
        Progress::Done(r) => return r,
        Progress::Pending => {}
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(r) = m.on_readable() {
            return r;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no netlink answer within 10 s");
        let mut pfd = libc::pollfd {
            fd: m.raw_fd().unwrap(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, left.as_millis() as libc::c_int) };
    }
}

#[test]
fn netlink_socket_is_opened_when_needed_nonblocking_and_cloexec() {
    let mut m = Meter::new();
    assert_eq!(m.set_watch(None), None);
    let t = TcpListener::bind("127.0.0.1:0").unwrap();
    assert_eq!(
        m.set_watch(Watch::held(t.as_raw_fd())),
        None,
        "TCP_INFO needs none"
    );
    assert_eq!(m.raw_fd(), None);
    let dir = tempfile::tempdir().unwrap();
    let l = UnixListener::bind(dir.path().join("x")).unwrap();
    let fd = m
        .set_watch(Watch::held(l.as_raw_fd()))
        .expect("NETLINK_SOCK_DIAG is available here");
    assert_eq!(m.raw_fd(), Some(fd));
    assert_eq!(m.set_watch(Watch::held(l.as_raw_fd())), None, "opened once");
    // SAFETY: F_GETFL / F_GETFD read flags of our own descriptor.
    let (fl, fdfl) = unsafe {
        (
            libc::fcntl(fd, libc::F_GETFL),
            libc::fcntl(fd, libc::F_GETFD),
        )
    };
    assert_ne!(fl & libc::O_NONBLOCK, 0);
    assert_ne!(fdfl & libc::FD_CLOEXEC, 0);
    // Nothing asked, nothing queued: returns at once without a result.
    assert_eq!(m.on_readable(), None);
    // A request returns before its answer is read.
    assert_eq!(m.start(), Progress::Pending);
    assert_eq!(measure(&mut m), Some(0));
}

#[test]
fn held_tcp_listener() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let mut m = Meter::new();
    let _ = m.set_watch(Watch::held(l.as_raw_fd()));
    assert_eq!(m.watch(), Some(&Watch::HeldTcp(l.as_raw_fd())));
    assert_eq!(measure(&mut m), Some(0));
    let _c: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    assert_eq!(measure(&mut m), Some(3));
}

#[test]
fn tcp_port_through_netlink_and_proc() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    // Another listener: the kernel filter must leave it out.
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let other_port = other.local_addr().unwrap().port();
    let _o: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(("127.0.0.1", other_port)).unwrap())
        .collect();
    let mut m = Meter::new();
    let _ = m.set_watch(Some(Watch::TcpPort(port)));
    assert_eq!(measure(&mut m), Some(0));
    let _c: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    assert_eq!(measure(&mut m), Some(3));
    assert!(m.inet_diag, "answered by netlink, not /proc");
    // The fallback gives the same answer.
    m.inet_diag = false;
    assert_eq!(measure(&mut m), Some(3));
    assert!(m.proc_text.len() as u64 <= PROC_CAP);
    // No listener on the port: nothing measured.
    drop(l);
    m.inet_diag = true;
    assert_eq!(measure(&mut m), None);
}

#[test]
fn tcp_port_sees_ipv6_listeners() {
    let Ok(l) = TcpListener::bind("[::1]:0") else {
        return; // no IPv6 loopback on this machine
    };
    let port = l.local_addr().unwrap().port();
    let mut m = Meter::new();
    let _ = m.set_watch(Some(Watch::TcpPort(port)));
    let _c: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(("::1", port)).unwrap())
        .collect();
    assert_eq!(measure(&mut m), Some(2));
}

#[test]
fn held_unix_listener() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.sock");
    let l = UnixListener::bind(&path).unwrap();
    let mut m = Meter::new();
    let _ = m.set_watch(Watch::held(l.as_raw_fd()));
    assert_eq!(
        m.watch(),
        Some(&Watch::UnixInode(socket_inode(l.as_raw_fd()).unwrap()))
    );
    assert_eq!(measure(&mut m), Some(0));
    let _c: Vec<UnixStream> = (0..2)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    assert_eq!(measure(&mut m), Some(2));
    assert_eq!(tcp_listener(l.as_raw_fd()), None);
}

#[test]
fn unix_path_is_found_once_then_cached_and_found_again_after_a_rebind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sock");
    // Another listener whose queue must not be mistaken for the watched one.
    let other_path = dir.path().join("other.sock");
    let _other = UnixListener::bind(&other_path).unwrap();
    let _o: Vec<UnixStream> = (0..4)
        .map(|_| UnixStream::connect(&other_path).unwrap())
        .collect();
    let mut m = Meter::new();
    let _ = m.set_watch(Some(Watch::UnixPath(path.clone())));
    assert_eq!(measure(&mut m), None, "nothing bound yet");
    assert_eq!(m.found_inode(), None);

    let l = UnixListener::bind(&path).unwrap();
    let ino = socket_inode(l.as_raw_fd()).unwrap();
    let c1: Vec<UnixStream> = (0..3)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    assert_eq!(measure(&mut m), Some(3));
    assert_eq!(m.found_inode(), Some(ino));
    // Cached: the next measurement is the exact lookup of that inode.
    assert!(matches!(m.start(), Progress::Pending));
    assert!(matches!(m.query, Some(Query::UnixInode { .. })));
    assert_eq!(measure(&mut m), Some(3));

    // The program re-binds the path (same process, no restart seen by the meter).
    drop(c1);
    drop(l);
    std::fs::remove_file(&path).unwrap();
    let l2 = UnixListener::bind(&path).unwrap();
    let _c2: Vec<UnixStream> = (0..2)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    // The old inode is gone: one miss, then the new socket is found.
    assert_eq!(measure(&mut m), None);
    assert_eq!(m.found_inode(), None);
    assert_eq!(measure(&mut m), Some(2));
    assert_eq!(m.found_inode(), socket_inode(l2.as_raw_fd()));
    // A program start forgets the cache.
    let _ = m.set_watch(Some(Watch::UnixPath(path.clone())));
    assert_eq!(m.found_inode(), None);
}

#[test]
fn an_unanswered_request_is_dropped_and_its_late_answer_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.sock");
    let l = UnixListener::bind(&path).unwrap();
    let mut m = Meter::new();
    let _ = m.set_watch(Watch::held(l.as_raw_fd()));
    assert_eq!(m.start(), Progress::Pending);
    // Its answer stays queued while the next measurement starts (the backlog changes).
    let _c = UnixStream::connect(&path).unwrap();
    assert_eq!(measure(&mut m), Some(1), "the stale answer said 0");
}
