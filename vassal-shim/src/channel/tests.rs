//! The channels over socketpairs.

use super::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

fn pair() -> (Vassal, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    (Vassal::new(OwnedFd::from(a), None), b)
}

fn with_config() -> (Vassal, UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    let (c, d) = UnixStream::pair().unwrap();
    (Vassal::new(OwnedFd::from(a), Some(OwnedFd::from(c))), b, d)
}

/// Sends with `try_send` until it refuses; fails if a call does not return within 10 s.
fn try_send_until_full(v: Vassal) -> (Vassal, usize) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut n = 0;
        let r = loop {
            match v.try_send(VassalMsg::Heartbeat) {
                Ok(()) => n += 1,
                Err(e) => break e,
            }
        };
        let _ = tx.send((v, n, r));
    });
    let (v, n, err) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("try_send waited on a full channel");
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
    (v, n)
}

#[test]
fn try_send_never_waits_on_a_full_channel() {
    let (v, mut emperor) = pair();
    let (v, n) = try_send_until_full(v);
    assert!(n > 0);
    // The emperor reads one byte: there is room again.
    let mut b = [0u8; 1];
    emperor.read_exact(&mut b).unwrap();
    assert_eq!(b[0], 26);
    v.try_send(VassalMsg::Heartbeat).unwrap();

    // A pipe as the channel (some supervisors use one).
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into the array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh descriptors from pipe2, owned here.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let (_v, n) = try_send_until_full(Vassal::new(wr, None));
    assert!(n > 0);
    drop(rd);
}

#[test]
fn sends_the_protocol_bytes() {
    let (v, mut emperor) = pair();
    v.ready().unwrap();
    v.accepting().unwrap();
    v.loyal().unwrap();
    v.heartbeat().unwrap();
    v.sos().unwrap();
    v.stop_me().unwrap();
    v.request_config().unwrap();
    let mut got = [0u8; 7];
    emperor.read_exact(&mut got).unwrap();
    assert_eq!(got, [1, 5, 17, 26, 30, 22, 2]);
}

#[test]
fn receives_events_in_order_then_eof() {
    let (mut v, mut emperor) = pair();
    assert_eq!(v.try_recv().unwrap(), None);
    emperor.write_all(&[1, 2, 0, 9]).unwrap();
    drop(emperor);
    let mut all = Vec::new();
    v.recv_all(&mut all).unwrap();
    assert_eq!(
        all,
        vec![
            Event::Reload,
            Event::GracefulStop,
            Event::Stop,
            Event::Unknown(9),
            Event::Eof
        ]
    );
    assert!(v.is_eof());
    assert_eq!(v.try_recv().unwrap(), Some(Event::Eof));
}

#[test]
fn recv_timeout_times_out_and_wakes() {
    let (mut v, mut emperor) = pair();
    assert_eq!(
        v.recv_timeout(Some(Duration::from_millis(10))).unwrap(),
        None
    );
    emperor.write_all(&[0]).unwrap();
    assert_eq!(v.recv_timeout(None).unwrap(), Some(Event::Stop));
}

#[test]
fn send_after_emperor_gone_is_an_error_not_a_signal() {
    let (v, emperor) = pair();
    drop(emperor);
    assert!(v.heartbeat().is_err());
}

fn frame(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    config::encode(text, &mut out).unwrap();
    out
}

#[test]
fn config_keeps_the_newest_of_queued_frames() {
    let (mut v, _e, mut cfg) = with_config();
    let c = v.config().unwrap();
    assert_eq!(c.poll_newest().unwrap(), None);
    cfg.write_all(&frame(b"v1")).unwrap();
    cfg.write_all(&frame(b"v2")).unwrap();
    assert_eq!(c.poll_newest().unwrap().as_deref(), Some(&b"v2"[..]));
    assert_eq!(c.received(), 2);
    assert_eq!(c.poll_newest().unwrap(), None);
    assert_eq!(c.latest(), Some(&b"v2"[..]));
}

#[test]
fn config_frame_split_across_writes() {
    let (mut v, _e, mut cfg) = with_config();
    let c = v.config().unwrap();
    let f = frame(b"[uwsgi]\nsocket = x\n");
    cfg.write_all(&f[..3]).unwrap();
    assert_eq!(c.poll_newest().unwrap(), None);
    cfg.write_all(&f[3..7]).unwrap();
    assert_eq!(c.poll_newest().unwrap(), None);
    cfg.write_all(&f[7..]).unwrap();
    assert_eq!(
        c.poll_newest().unwrap().as_deref(),
        Some(&b"[uwsgi]\nsocket = x\n"[..])
    );
}

#[test]
fn wait_newest_drains_the_double_push() {
    let (mut v, _e, mut cfg) = with_config();
    let c = v.config().unwrap();
    assert_eq!(
        c.wait_newest(Duration::from_millis(10), Duration::ZERO)
            .unwrap(),
        None
    );
    let writer = std::thread::spawn(move || {
        cfg.write_all(&frame(b"old")).unwrap();
        cfg.write_all(&frame(b"new")).unwrap();
        cfg
    });
    let got = c
        .wait_newest(Duration::from_secs(10), Duration::from_millis(200))
        .unwrap();
    let _cfg = writer.join().unwrap();
    // Both frames were written before the writer finished; whatever the interleaving, the
    // newest one wins once everything is drained.
    let newest = c.poll_newest().unwrap().or(got);
    assert_eq!(newest.as_deref(), Some(&b"new"[..]));
}

#[test]
fn peek_does_not_consume() {
    let (mut v, _e, mut cfg) = with_config();
    cfg.write_all(&frame(b"[vassal-shim]\nexec = true\n"))
        .unwrap();
    let c = v.config().unwrap();
    let peeked = c.peek_first(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(peeked, b"[vassal-shim]\nexec = true\n");
    assert_eq!(
        c.poll_newest().unwrap().as_deref(),
        Some(&b"[vassal-shim]\nexec = true\n"[..])
    );
}

#[test]
fn garbage_on_config_channel_is_an_error() {
    let (mut v, _e, mut cfg) = with_config();
    cfg.write_all(&[0, 1, 0, 0, b'x']).unwrap();
    let c = v.config().unwrap();
    assert!(c.poll_newest().is_err());
}

#[test]
fn works_as_a_mio_source() {
    let (mut v, mut emperor, mut cfg) = with_config();
    let mut c = v.take_config().unwrap();
    let mut poll = mio::Poll::new().unwrap();
    poll.registry()
        .register(&mut v, mio::Token(1), mio::Interest::READABLE)
        .unwrap();
    poll.registry()
        .register(&mut c, mio::Token(2), mio::Interest::READABLE)
        .unwrap();
    emperor.write_all(&[1]).unwrap();
    cfg.write_all(&frame(b"cfg")).unwrap();
    let mut events = mio::Events::with_capacity(4);
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 2 {
        poll.poll(&mut events, Some(Duration::from_secs(10)))
            .unwrap();
        seen.extend(events.iter().map(|e| e.token()));
    }
    let mut got = Vec::new();
    v.recv_all(&mut got).unwrap();
    assert_eq!(got, vec![Event::Reload]);
    assert_eq!(c.poll_newest().unwrap().as_deref(), Some(&b"cfg"[..]));
    poll.registry().deregister(&mut v).unwrap();
    poll.registry().deregister(&mut c).unwrap();
}

proptest::proptest! {
    /// However the stream is cut into reads, every frame is counted and the newest wins.
    #[test]
    fn newest_frame_whatever_the_chunking(
        configs in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), 1..6),
        cuts in proptest::collection::vec(1usize..200, 1..40),
    ) {
        let (mut v, _e, mut cfg) = with_config();
        let c = v.config().unwrap();
        let mut stream = Vec::new();
        for body in &configs {
            config::encode(body, &mut stream).unwrap();
        }
        let mut off = 0;
        let mut cut = cuts.iter().cycle();
        while off < stream.len() {
            let n = (*cut.next().unwrap()).min(stream.len() - off);
            cfg.write_all(&stream[off..off + n]).unwrap();
            off += n;
            c.poll_newest().unwrap();
        }
        proptest::prop_assert_eq!(c.received(), configs.len() as u64);
        proptest::prop_assert_eq!(c.latest(), Some(configs.last().unwrap().as_slice()));
    }
}

#[test]
fn config_eof() {
    let (mut v, _e, cfg) = with_config();
    drop(cfg);
    let c = v.config().unwrap();
    assert_eq!(c.poll_newest().unwrap(), None);
    assert!(c.is_eof());
}
