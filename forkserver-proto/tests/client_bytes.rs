//! Our client against a scripted server that checks the request byte for byte and answers with
//! the reply recorded from uWSGI 2.1-dev (§11.7). No fork happens here, so the normal harness is
//! fine.

use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use forkserver_proto::{request_fork, ClientError, PendingFork, Pid, ReplyError, VassalFds};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

const DEADLINE: Duration = Duration::from_secs(10);

/// Recorded in transcripts/fork-server-bytes.txt, Part C (emperor → fork server).
const RECORDED_REQUEST: &[u8] = b"\x23\x45\x00\x01\
    \x32\x00/work/steering/lab/.build/uwsgi-6cbb2177ae48/uwsgi\
    \x05\x00--ini\x08\x00app2.ini";
const RECORDED_ARGV: [&str; 3] = [
    "/work/steering/lab/.build/uwsgi-6cbb2177ae48/uwsgi",
    "--ini",
    "app2.ini",
];
/// Recorded in §11.7 (fork server → emperor): pid 18204.
const RECORDED_REPLY: &[u8] = b"\x23\x0c\x00\x00\x03\x00\x70\x69\x64\x05\x00\x31\x38\x32\x30\x34";

struct Received {
    bytes: Vec<u8>,
    /// How many bytes the first recvmsg returned together with the fds.
    first_len: usize,
    fds: Vec<OwnedFd>,
}

/// Accepts one connection, reads `expect_len` bytes (fds from the first recvmsg), then writes
/// each chunk of `reply` separately and closes.
fn scripted_server(
    expect_len: usize,
    reply: Vec<Vec<u8>>,
) -> (PathBuf, tempfile::TempDir, JoinHandle<Received>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fs.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let h = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut bytes = vec![0u8; expect_len];
        let mut cmsg = nix::cmsg_space!([RawFd; 8]);
        let (first_len, raw) = {
            let mut iov = [IoSliceMut::new(&mut bytes)];
            let msg = recvmsg::<()>(
                conn.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::empty(),
            )
            .unwrap();
            let mut raw = Vec::new();
            for c in msg.cmsgs().unwrap() {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    raw.extend(fds);
                }
            }
            (msg.bytes, raw)
        };
        // SAFETY: the kernel installed these fds for us with this message.
        let fds = raw
            .into_iter()
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .collect();
        (&conn).read_exact(&mut bytes[first_len..]).unwrap();
        for chunk in reply {
            (&conn).write_all(&chunk).unwrap();
        }
        Received {
            bytes,
            first_len,
            fds,
        }
    });
    (path, dir, h)
}

/// Sends the recorded request (`RECORDED_ARGV` over a fresh channel) to the server at `path`;
/// the client's result and our end of the channel.
fn request_recorded(path: &Path) -> (Result<Pid, ClientError>, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let r = request_fork(
        path,
        &RECORDED_ARGV,
        &VassalFds::channel(theirs.as_fd()),
        DEADLINE,
    );
    (r, ours)
}

#[test]
fn client_request_is_byte_exact_and_reads_the_recorded_reply() {
    let (path, _dir, h) = scripted_server(RECORDED_REQUEST.len(), vec![RECORDED_REPLY.to_vec()]);
    let (pid, ours) = request_recorded(&path);
    let pid = pid.unwrap();
    assert_eq!(pid, Pid::from_raw(18204));
    let got = h.join().unwrap();
    assert_eq!(got.bytes, RECORDED_REQUEST);
    assert!(got.first_len >= 1, "the fds ride on the first byte");
    assert_eq!(got.fds.len(), 1);
    // The fd received is the channel: a byte written on it reaches our end.
    let chan = UnixStream::from(got.fds.into_iter().next().unwrap());
    (&chan).write_all(b"\x01").unwrap();
    ours.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut b = [0u8; 1];
    (&ours).read_exact(&mut b).unwrap();
    assert_eq!(b, [1]);
}

#[test]
fn reply_split_into_pieces_is_reassembled() {
    let chunks = RECORDED_REPLY.iter().map(|b| vec![*b]).collect();
    let (path, _dir, h) = scripted_server(RECORDED_REQUEST.len(), chunks);
    let (pid, _ours) = request_recorded(&path);
    let pid = pid.unwrap();
    assert_eq!(pid.as_raw(), 18204);
    h.join().unwrap();
}

#[test]
fn three_fds_go_in_order_with_mask_7() {
    let argv = ["a"];
    let len = 4 + 2 + 1;
    let (path, _dir, h) = scripted_server(len, vec![RECORDED_REPLY.to_vec()]);
    let (c_ours, c_theirs) = UnixStream::pair().unwrap();
    let (k_ours, k_theirs) = UnixStream::pair().unwrap();
    let (o_ours, o_theirs) = UnixStream::pair().unwrap();
    let fds = VassalFds {
        channel: c_theirs.as_fd(),
        config: Some(k_theirs.as_fd()),
        on_demand: Some(o_theirs.as_fd()),
    };
    request_fork(&path, &argv, &fds, DEADLINE).unwrap();
    let got = h.join().unwrap();
    assert_eq!(got.bytes, b"\x23\x03\x00\x07\x01\x00a");
    assert_eq!(got.fds.len(), 3);
    for (i, (fd, ours)) in got
        .fds
        .into_iter()
        .zip([c_ours, k_ours, o_ours])
        .enumerate()
    {
        let s = UnixStream::from(fd);
        (&s).write_all(&[i as u8]).unwrap();
        ours.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut b = [9u8; 1];
        (&ours).read_exact(&mut b).unwrap();
        assert_eq!(b[0], i as u8, "fd #{i} is out of order");
    }
}

fn run_with_reply(reply: &[u8]) -> Result<Pid, ClientError> {
    let (path, _dir, h) = scripted_server(RECORDED_REQUEST.len(), vec![reply.to_vec()]);
    let (r, _ours) = request_recorded(&path);
    h.join().unwrap();
    r
}

#[test]
fn bad_replies_are_typed_errors() {
    assert!(matches!(
        run_with_reply(b"\x23\x00\x00\x00"),
        Err(ClientError::NoPid { .. })
    ));
    assert!(matches!(
        run_with_reply(b"\x23\x05\x00\x00\x01\x00x\x00\x00"),
        Err(ClientError::NoPid { .. })
    ));
    assert!(matches!(
        run_with_reply(b"\x05\x0c\x00\x00\x03\x00pid\x05\x0018204"),
        Err(ClientError::BadReply {
            error: ReplyError::WrongModifier1 { modifier1: 5 },
            ..
        })
    ));
    assert!(matches!(
        run_with_reply(b"\x23\x09\x00\x00\x03\x00pid\x02\x00-1"),
        Err(ClientError::BadReply {
            error: ReplyError::BadPid,
            ..
        })
    ));
    assert!(matches!(
        run_with_reply(b"\x23\x0c\x00\x00\x03\x00pid"),
        Err(ClientError::Closed { received: 9, .. })
    ));
    assert!(matches!(
        run_with_reply(b""),
        Err(ClientError::Closed { received: 0, .. })
    ));
}

#[test]
fn pending_fork_drives_from_a_mio_loop() {
    let (path, _dir, h) = scripted_server(RECORDED_REQUEST.len(), vec![RECORDED_REPLY.to_vec()]);
    let (_ours, theirs) = UnixStream::pair().unwrap();
    let mut pending = PendingFork::start(
        &path,
        &RECORDED_ARGV,
        &VassalFds::channel(theirs.as_fd()),
        Instant::now() + DEADLINE,
    )
    .unwrap();
    drop(theirs); // the request is in flight: our copy is no longer needed
    let mut poll = mio::Poll::new().unwrap();
    let mut events = mio::Events::with_capacity(8);
    poll.registry()
        .register(
            &mut pending,
            mio::Token(1),
            mio::Interest::READABLE | mio::Interest::WRITABLE,
        )
        .unwrap();
    let pid = loop {
        if let Poll::Ready(r) = pending.poll(Instant::now()) {
            break r.unwrap();
        }
        let left = pending.deadline().saturating_duration_since(Instant::now());
        poll.poll(&mut events, Some(left)).unwrap();
    };
    assert_eq!(pid.as_raw(), 18204);
    poll.registry().deregister(&mut pending).unwrap();
    assert_eq!(h.join().unwrap().bytes, RECORDED_REQUEST);
}

#[test]
fn pending_fork_times_out_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mute.sock");
    let _listener = UnixListener::bind(&path).unwrap();
    let (_ours, theirs) = UnixStream::pair().unwrap();
    let start = Instant::now();
    let mut pending = PendingFork::start(
        &path,
        &["x"],
        &VassalFds::channel(theirs.as_fd()),
        start + Duration::from_secs(3600),
    )
    .unwrap();
    assert!(pending.poll(start).is_pending());
    // Time is an argument: at the deadline the request gives up, no waiting needed.
    match pending.poll(start + Duration::from_secs(3600)) {
        Poll::Ready(Err(ClientError::Timeout { stage, .. })) => {
            assert_eq!(stage, forkserver_proto::Stage::Reply)
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}
