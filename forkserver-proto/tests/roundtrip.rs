//! Real round trips between our client and our server over unix sockets.
//!
//! This test binary runs without libtest's harness: the fork server is forked out of this
//! (single-threaded) process, and its adopted grandchildren keep running this binary's Rust code,
//! which would not be sound from a multi-threaded test runner. The test process makes itself a
//! subreaper, as an emperor would, so adopted vassals become its children.
//!
//! Every wait has a deadline; nothing sleeps.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use forkserver_proto::codec::encode_request;
use forkserver_proto::{
    request_fork, Adoption, ClientError, FdMask, ForkServer, Outcome, ServerConfig, VassalFds,
};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, getpid, ForkResult, Pid};

const DEADLINE: Duration = Duration::from_secs(10);

/// The request recorded from uWSGI 2.1-dev's emperor (transcripts/fork-server-bytes.txt, Part C).
const RECORDED_REQUEST: &[u8] = b"\x23\x45\x00\x01\
    \x32\x00/work/steering/lab/.build/uwsgi-6cbb2177ae48/uwsgi\
    \x05\x00--ini\x08\x00app2.ini";

// ---------------------------------------------------------------------------------------------
// A tiny harness.

type TestFn = fn();

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");

    let tests: &[(&str, TestFn)] = &[
        (
            "round_trip_adopts_a_grandchild",
            round_trip_adopts_a_grandchild,
        ),
        (
            "all_three_fds_arrive_in_order",
            all_three_fds_arrive_in_order,
        ),
        (
            "server_accepts_the_recorded_request",
            server_accepts_the_recorded_request,
        ),
        (
            "slow_client_does_not_stall_others",
            slow_client_does_not_stall_others,
        ),
        ("many_concurrent_requests", many_concurrent_requests),
        ("silent_client_times_out", silent_client_times_out),
        (
            "a_thousand_silent_clients_do_not_delay_a_request",
            a_thousand_silent_clients_do_not_delay_a_request,
        ),
        (
            "malformed_requests_are_dropped",
            malformed_requests_are_dropped,
        ),
        ("other_uid_is_refused", other_uid_is_refused),
        ("allowed_other_uid_is_served", allowed_other_uid_is_served),
        ("sigterm_stops_the_server", sigterm_stops_the_server),
        ("client_errors_are_typed", client_errors_are_typed),
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filter: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in tests {
            println!("{name}: test");
        }
        return;
    }
    let mut failed = Vec::new();
    let mut ran = 0;
    if args.iter().any(|a| a == "--ignored") {
        // None of these is ignored.
        println!(
            "\ntest result: ok. 0 passed; 0 failed; {} filtered out",
            tests.len()
        );
        return;
    }
    for (name, f) in tests {
        if !filter.is_empty() && !filter.iter().any(|p| name.contains(p.as_str())) {
            continue;
        }
        ran += 1;
        let r = std::panic::catch_unwind(AssertUnwindSafe(f));
        // Adopted vassals must never run the rest of the harness.
        assert_eq!(getpid(), *HARNESS_PID.get_or_init(getpid));
        match r {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(*name);
            }
        }
    }
    println!(
        "\ntest result: {}. {} passed; {} failed; {} filtered out",
        if failed.is_empty() { "ok" } else { "FAILED" },
        ran - failed.len(),
        failed.len(),
        tests.len() - ran
    );
    if !failed.is_empty() {
        println!("failures: {failed:?}");
        std::process::exit(101);
    }
}

static HARNESS_PID: std::sync::OnceLock<Pid> = std::sync::OnceLock::new();

// ---------------------------------------------------------------------------------------------
// Helpers.

/// A fork server running in a child process; SIGKILLed and reaped on drop.
struct ServerProc {
    pid: Pid,
    path: PathBuf,
    reaped: bool,
}

impl ServerProc {
    fn wait_exit(&mut self) -> WaitStatus {
        let st = wait_deadline(self.pid, DEADLINE);
        self.reaped = true;
        st
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = kill(self.pid, Signal::SIGKILL);
            let _ = waitpid(self.pid, None);
        }
    }
}

/// Forks a fork server bound at `dir/fs.sock`; each adopted grandchild runs `vassal` and exits
/// with its return value.
fn spawn_server(
    dir: &Path,
    config: ServerConfig,
    vassal: impl FnOnce(Adoption) -> i32,
) -> ServerProc {
    spawn_server_logging_to(dir, config, vassal, None)
}

/// Like `spawn_server`, with the server's stderr (its log) redirected to `log`.
fn spawn_server_logging_to(
    dir: &Path,
    config: ServerConfig,
    vassal: impl FnOnce(Adoption) -> i32,
    log: Option<OwnedFd>,
) -> ServerProc {
    HARNESS_PID.get_or_init(getpid);
    let path = dir.join("fs.sock");
    let (ready_r, ready_w) = UnixStream::pair().expect("socketpair");
    // SAFETY: this test process is single-threaded (no libtest harness, no helper threads), so
    // the child may keep running Rust code.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            drop(ready_r);
            if let Some(log) = log {
                nix::unistd::dup2_stderr(log).expect("redirect stderr");
            }
            let code = std::panic::catch_unwind(AssertUnwindSafe(|| {
                let mut server = ForkServer::bind(&path, config).expect("bind");
                (&ready_w).write_all(b"R").expect("announce");
                drop(ready_w);
                match server.serve(&[]) {
                    Ok(Outcome::Adopted(a)) => {
                        drop(server);
                        vassal(a)
                    }
                    Ok(Outcome::Stopped(_)) => 0,
                    Ok(Outcome::Readable(_)) => 3,
                    Err(e) => {
                        eprintln!("fork server failed: {e}");
                        2
                    }
                }
            }))
            .unwrap_or(101);
            // SAFETY: leave without running the harness's destructors or atexit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(ready_w);
            let mut proc = ServerProc {
                pid: child,
                path,
                reaped: false,
            };
            ready_r.set_read_timeout(Some(DEADLINE)).unwrap();
            let mut b = [0u8; 1];
            let n = (&ready_r).read(&mut b).unwrap_or(0);
            if n != 1 {
                let st = proc.wait_exit();
                panic!("fork server did not come up: {st:?}");
            }
            proc
        }
    }
}

/// waitpid with a deadline (polls WNOHANG with a short backoff; there is no pidfd in nix 0.31).
fn wait_deadline(pid: Pid, timeout: Duration) -> WaitStatus {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(st) => return st,
            Err(Errno::EINTR) => {}
            Err(e) => panic!("waitpid({pid}): {e}"),
        }
        assert!(Instant::now() < deadline, "{pid} did not exit in time");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Open fds of this process, without the one used to list them.
fn open_fds() -> BTreeSet<i32> {
    let dir = std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd");
    let mut fds: BTreeSet<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.retain(|fd| {
        std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .map(|t| !t.to_string_lossy().ends_with("/fd"))
            .unwrap_or(false)
    });
    fds
}

fn ppid_of(pid: Pid) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // pid (comm) state ppid ...
    let after = &stat[stat.rfind(')').expect(")") + 2..];
    after.split(' ').nth(1).unwrap().parse().unwrap()
}

fn read_line_deadline(s: &UnixStream) -> String {
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("read line");
    line.trim_end().to_owned()
}

fn read_byte_deadline(s: &UnixStream) -> u8 {
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut b = [0u8; 1];
    let n = (&*s).read(&mut b).expect("read byte");
    assert_eq!(n, 1, "EOF instead of a byte");
    b[0]
}

/// The standard test vassal: sends ready (1) then one report line, then waits for EOF.
fn reporting_vassal(before: BTreeSet<i32>) -> impl FnOnce(Adoption) -> i32 {
    move |a: Adoption| {
        let chan = UnixStream::from(a.channel);
        let mut allowed = before.clone();
        allowed.insert(chan.as_raw_fd());
        allowed.extend(a.config.as_ref().map(|f| f.as_raw_fd()));
        allowed.extend(a.on_demand.as_ref().map(|f| f.as_raw_fd()));
        let leaked: Vec<i32> = open_fds().difference(&allowed).copied().collect();
        let argv: Vec<String> = a
            .argv
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let report = format!(
            "\x01pid={} argv={} leaked={:?}\n",
            getpid(),
            argv.join(","),
            leaked
        );
        if (&chan).write_all(report.as_bytes()).is_err() {
            return 4;
        }
        let mut sink = [0u8; 16];
        loop {
            match (&chan).read(&mut sink) {
                Ok(0) | Err(_) => return 0,
                Ok(_) => {}
            }
        }
    }
}

/// Asks the server at `path` for a vassal running `argv` over a fresh channel; returns the
/// vassal's pid and our end of its channel once the vassal has sent ready (1) on it.
fn fork_ready(path: &Path, argv: &[&str], what: &str) -> (Pid, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let pid = request_fork(path, argv, &VassalFds::channel(theirs.as_fd()), DEADLINE)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    drop(theirs);
    assert_eq!(read_byte_deadline(&ours), 1);
    (pid, ours)
}

/// Closes the channel `ours` of vassal `pid` and asserts the vassal then exits with status 0.
fn exits_once_closed(pid: Pid, ours: UnixStream) {
    drop(ours);
    assert_eq!(wait_deadline(pid, DEADLINE), WaitStatus::Exited(pid, 0));
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("fsp-test.")
        .tempdir()
        .expect("tempdir")
}

// ---------------------------------------------------------------------------------------------
// Tests.

fn round_trip_adopts_a_grandchild() {
    let dir = tempdir();
    let before = open_fds();
    let server = spawn_server(
        dir.path(),
        ServerConfig::default(),
        reporting_vassal(before),
    );

    // The first channel byte is the vassal's ready, written by the adopted process.
    let (pid, ours) = fork_ready(
        &server.path,
        &["my-vassal", "--ini", "app.ini"],
        "fork request",
    );
    let report = read_line_deadline(&ours);
    assert_eq!(
        report,
        format!("pid={pid} argv=my-vassal,--ini,app.ini leaked=[]")
    );
    // Double fork: the grandchild was reparented to us, the subreaper (not to the server).
    assert_eq!(ppid_of(pid), getpid().as_raw());
    assert_eq!(forkserver_proto::parent_of(pid).unwrap(), getpid());
    assert_ne!(pid, server.pid);
    // Its own process group: signals to the base's group do not reach it.
    assert_eq!(nix::unistd::getpgid(Some(pid)).unwrap(), pid);
    assert_ne!(nix::unistd::getpgid(Some(server.pid)).unwrap(), pid);
    assert_eq!(
        waitpid(pid, Some(WaitPidFlag::WNOHANG)).unwrap(),
        WaitStatus::StillAlive
    );
    // EOF on the channel stops it, and we reap it.
    exits_once_closed(pid, ours);

    // The server keeps serving: a second adoption works too.
    let (pid2, ours) = fork_ready(&server.path, &["again"], "fork request");
    assert_ne!(pid, pid2);
    assert!(read_line_deadline(&ours).starts_with(&format!("pid={pid2} argv=again ")));
    exits_once_closed(pid2, ours);
}

fn all_three_fds_arrive_in_order() {
    let dir = tempdir();
    let server = spawn_server(dir.path(), ServerConfig::default(), |a: Adoption| {
        let chan = UnixStream::from(a.channel);
        let config = UnixStream::from(a.config.expect("config fd"));
        let od = UnixListener::from(a.on_demand.expect("on-demand fd"));
        let od_path = od.local_addr().unwrap();
        let od_path = od_path.as_pathname().unwrap().display().to_string();
        let _ = (&config).write_all(b"C");
        let _ = (&chan).write_all(format!("\x01{od_path}\n").as_bytes());
        let mut b = [0u8; 1];
        let _ = (&chan).read(&mut b);
        0
    });
    let (ours, theirs) = UnixStream::pair().unwrap();
    let (cfg_ours, cfg_theirs) = UnixStream::pair().unwrap();
    let od_path = dir.path().join("od.sock");
    let od = UnixListener::bind(&od_path).unwrap();
    let fds = VassalFds {
        channel: theirs.as_fd(),
        config: Some(cfg_theirs.as_fd()),
        on_demand: Some(od.as_fd()),
    };
    assert_eq!(
        fds.mask(),
        FdMask {
            config: true,
            on_demand: true
        }
    );
    let pid = request_fork(&server.path, &["v"], &fds, DEADLINE).unwrap();
    drop((theirs, cfg_theirs));
    assert_eq!(read_byte_deadline(&ours), 1);
    assert_eq!(read_line_deadline(&ours), od_path.display().to_string());
    assert_eq!(read_byte_deadline(&cfg_ours), b'C');
    exits_once_closed(pid, ours);
}

fn server_accepts_the_recorded_request() {
    let dir = tempdir();
    let before = open_fds();
    let server = spawn_server(
        dir.path(),
        ServerConfig::default(),
        reporting_vassal(before),
    );
    let (ours, theirs) = UnixStream::pair().unwrap();

    // Send exactly the recorded bytes, the fd on the first byte, as uWSGI's emperor does.
    let conn = UnixStream::connect(&server.path).unwrap();
    let fds = [theirs.as_raw_fd()];
    let n = sendmsg::<()>(
        conn.as_raw_fd(),
        &[std::io::IoSlice::new(RECORDED_REQUEST)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .unwrap();
    assert_eq!(n, RECORDED_REQUEST.len());
    drop(theirs);

    // Read the raw reply: [35, len, 0, 0] + 03 00 "pid" <u16 len> <digits>, then EOF.
    conn.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut reply = Vec::new();
    (&conn).read_to_end(&mut reply).unwrap();
    assert_eq!(reply[0], 0x23);
    assert_eq!(reply[3], 0x00);
    let size = u16::from_le_bytes([reply[1], reply[2]]) as usize;
    assert_eq!(reply.len(), 4 + size);
    assert_eq!(&reply[4..9], b"\x03\x00pid");
    let vlen = u16::from_le_bytes([reply[9], reply[10]]) as usize;
    assert_eq!(size, 7 + vlen);
    let pid: i32 = std::str::from_utf8(&reply[11..]).unwrap().parse().unwrap();
    let pid = Pid::from_raw(pid);
    // Byte-exact with what the codec (checked against §11.7) produces for that pid.
    assert_eq!(reply, forkserver_proto::encode_reply(pid.as_raw()));

    assert_eq!(read_byte_deadline(&ours), 1);
    assert_eq!(
        read_line_deadline(&ours),
        format!(
            "pid={pid} argv=/work/steering/lab/.build/uwsgi-6cbb2177ae48/uwsgi,--ini,app2.ini leaked=[]"
        )
    );
    exits_once_closed(pid, ours);

    // The §11.7 request shape (23-byte argv[0], --ini fsv.ini, 45 bytes) is served as well.
    let argv0 = "/usr/sbin/uwsgi-2.1-dev";
    let req = encode_request([argv0, "--ini", "fsv.ini"], FdMask::CHANNEL_ONLY).unwrap();
    assert_eq!(&req[..6], b"\x23\x29\x00\x01\x17\x00");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let conn = UnixStream::connect(&server.path).unwrap();
    let fds = [theirs.as_raw_fd()];
    sendmsg::<()>(
        conn.as_raw_fd(),
        &[std::io::IoSlice::new(&req)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .unwrap();
    drop(theirs);
    conn.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut reply = Vec::new();
    (&conn).read_to_end(&mut reply).unwrap();
    let (pid, _) = forkserver_proto::decode_reply(&reply)
        .unwrap()
        .complete()
        .unwrap();
    assert_eq!(read_byte_deadline(&ours), 1);
    assert!(read_line_deadline(&ours).contains(&format!("argv={argv0},--ini,fsv.ini ")));
    drop(ours);
    let pid = Pid::from_raw(pid);
    assert_eq!(wait_deadline(pid, DEADLINE), WaitStatus::Exited(pid, 0));
}

fn slow_client_does_not_stall_others() {
    let dir = tempdir();
    let config = ServerConfig {
        // Far longer than the test's deadline: only concurrency can make the fast client pass.
        io_timeout: Duration::from_secs(3600),
        ..ServerConfig::default()
    };
    let before = open_fds();
    let server = spawn_server(dir.path(), config, reporting_vassal(before));

    // One client connects and sends nothing; another sends half a header and stalls.
    let silent = UnixStream::connect(&server.path).unwrap();
    let mut partial = UnixStream::connect(&server.path).unwrap();
    partial.write_all(b"\x23\x29").unwrap();

    let (pid, ours) = fork_ready(
        &server.path,
        &["fast"],
        "a fast client is served while slow ones are pending",
    );
    let report = read_line_deadline(&ours);
    // The slow clients' sockets were closed in the vassal too.
    assert_eq!(report, format!("pid={pid} argv=fast leaked=[]"));
    exits_once_closed(pid, ours);
    drop((silent, partial));
}

fn many_concurrent_requests() {
    const N: usize = 24;
    let dir = tempdir();
    let before = open_fds();
    let server = spawn_server(
        dir.path(),
        ServerConfig::default(),
        reporting_vassal(before),
    );
    // Start all requests at once from one mio loop (as an emperor would), then drive them.
    let mut poll = mio::Poll::new().unwrap();
    let mut events = mio::Events::with_capacity(64);
    let mut chans = Vec::new();
    let mut pending = Vec::new();
    for i in 0..N {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut p = forkserver_proto::PendingFork::start(
            &server.path,
            &[format!("v{i}")],
            &VassalFds::channel(theirs.as_fd()),
            Instant::now() + DEADLINE,
        )
        .expect("start");
        drop(theirs);
        poll.registry()
            .register(
                &mut p,
                mio::Token(i),
                mio::Interest::READABLE | mio::Interest::WRITABLE,
            )
            .unwrap();
        chans.push(ours);
        pending.push(Some(p));
    }
    let mut pids = vec![None; N];
    while pids.iter().any(Option::is_none) {
        for (i, slot) in pending.iter_mut().enumerate() {
            if let Some(p) = slot {
                if let std::task::Poll::Ready(r) = p.poll(Instant::now()) {
                    pids[i] = Some(r.unwrap_or_else(|e| panic!("request {i}: {e}")));
                    poll.registry().deregister(p).unwrap();
                    *slot = None;
                }
            }
        }
        if pids.iter().any(Option::is_none) {
            poll.poll(&mut events, Some(DEADLINE)).unwrap();
            assert!(!events.is_empty(), "no progress within the deadline");
        }
    }
    let pids: Vec<Pid> = pids.into_iter().map(Option::unwrap).collect();
    let distinct: BTreeSet<i32> = pids.iter().map(|p| p.as_raw()).collect();
    assert_eq!(distinct.len(), N);
    for (i, (chan, pid)) in chans.iter().zip(&pids).enumerate() {
        assert_eq!(read_byte_deadline(chan), 1);
        assert_eq!(
            read_line_deadline(chan),
            format!("pid={pid} argv=v{i} leaked=[]"),
            "vassal {i} got the right argv and channel, and no other client's fds"
        );
    }
    drop(chans);
    for pid in pids {
        assert_eq!(wait_deadline(pid, DEADLINE), WaitStatus::Exited(pid, 0));
    }
}

fn silent_client_times_out() {
    let dir = tempdir();
    let config = ServerConfig {
        io_timeout: Duration::from_millis(100),
        ..ServerConfig::default()
    };
    let server = spawn_server(dir.path(), config, |_| 0);
    let silent = UnixStream::connect(&server.path).unwrap();
    // The server closes it after its I/O timeout: we see EOF (bounded by our own deadline).
    silent.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut b = [0u8; 1];
    assert_eq!((&silent).read(&mut b).unwrap(), 0);
}

/// A non-blocking unix stream connection to `path`; `None` while the listen backlog is full.
fn connect_nonblocking(path: &Path) -> Option<OwnedFd> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    let addr = UnixAddr::new(path).expect("socket path");
    match connect(fd.as_raw_fd(), &addr) {
        Ok(()) => Some(fd),
        Err(Errno::EAGAIN) => None,
        Err(e) => panic!("connect {}: {e}", path.display()),
    }
}

fn a_thousand_silent_clients_do_not_delay_a_request() {
    // The per-client limit alone (all from this process), and the eviction of the oldest
    // silent connection when every slot is taken alone (as from many processes).
    for max_silent_per_peer in [ServerConfig::default().max_silent_per_peer, usize::MAX] {
        silent_clients_then_a_request(ServerConfig {
            // Far longer than the test's deadline: only making room for new clients can let
            // the real request through, not the silent ones timing out.
            io_timeout: Duration::from_secs(3600),
            handshake_timeout: Duration::from_secs(3600),
            max_silent_per_peer,
            ..ServerConfig::default()
        });
    }
}

fn silent_clients_then_a_request(config: ServerConfig) {
    const SILENT: usize = 1000;
    let dir = tempdir();
    let before = open_fds();
    let server = spawn_server(dir.path(), config, reporting_vassal(before));
    // 1,000 connections that never send a byte, from an allowed uid; a full backlog is fine
    // (the client does not wait for it), the connections that got in are kept open.
    let mut silent = Vec::with_capacity(SILENT);
    let mut refused = 0;
    for _ in 0..SILENT {
        match connect_nonblocking(&server.path) {
            Some(fd) => silent.push(fd),
            None => refused += 1,
        }
    }
    assert!(
        silent.len() > ServerConfig::default().max_connections * 2,
        "only {} silent connections got in ({refused} found the backlog full)",
        silent.len()
    );
    let (pid, ours) = fork_ready(
        &server.path,
        &["after-the-silent-ones"],
        "a real request is served while 1,000 silent clients are connected",
    );
    assert_eq!(
        read_line_deadline(&ours),
        format!("pid={pid} argv=after-the-silent-ones leaked=[]")
    );
    exits_once_closed(pid, ours);
    drop(silent);
}

fn malformed_requests_are_dropped() {
    let dir = tempdir();
    let before = open_fds();
    let server = spawn_server(
        dir.path(),
        ServerConfig::default(),
        reporting_vassal(before),
    );
    let send = |bytes: &[u8], with_fd: bool| -> Vec<u8> {
        let conn = UnixStream::connect(&server.path).unwrap();
        let (_a, b) = UnixStream::pair().unwrap();
        let fds = [b.as_raw_fd()];
        let cmsgs = if with_fd {
            vec![ControlMessage::ScmRights(&fds)]
        } else {
            vec![]
        };
        sendmsg::<()>(
            conn.as_raw_fd(),
            &[std::io::IoSlice::new(bytes)],
            &cmsgs,
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        conn.shutdown(std::net::Shutdown::Write).unwrap();
        conn.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut out = Vec::new();
        match (&conn).read_to_end(&mut out) {
            Ok(_) => out,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => out,
            Err(e) => panic!("{e}"),
        }
    };
    // No fd, wrong modifier1, unknown mask bits, mask announcing 2 fds with 1 sent, empty argv,
    // truncated body followed by EOF, broken array.
    assert!(send(RECORDED_REQUEST, false).is_empty());
    assert!(send(b"\x24\x01\x00\x01\x00", true).is_empty());
    assert!(send(b"\x23\x03\x00\x09\x01\x00x", true).is_empty());
    assert!(send(b"\x23\x03\x00\x03\x01\x00x", true).is_empty());
    assert!(send(b"\x23\x00\x00\x01", true).is_empty());
    assert!(send(&RECORDED_REQUEST[..20], true).is_empty());
    assert!(send(b"\x23\x03\x00\x01\x09\x00x", true).is_empty());
    // And it still serves a good one.
    let (pid, ours) = fork_ready(&server.path, &["ok"], "fork request");
    exits_once_closed(pid, ours);
}

/// Runs `f` in a forked helper that first switches to uid/gid 65534 (nobody); returns its exit
/// code.
fn as_nobody(f: impl FnOnce() -> i32) -> i32 {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root to switch to uid 65534"
    );
    // SAFETY: single-threaded test process; the child runs Rust code and _exits.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let code = std::panic::catch_unwind(AssertUnwindSafe(|| {
                nix::unistd::setgroups(&[]).expect("setgroups");
                nix::unistd::setgid(nix::unistd::Gid::from_raw(65534)).expect("setgid");
                nix::unistd::setuid(nix::unistd::Uid::from_raw(65534)).expect("setuid");
                f()
            }))
            .unwrap_or(101);
            // SAFETY: leave without running the harness's destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => match wait_deadline(child, DEADLINE) {
            WaitStatus::Exited(_, code) => code,
            other => panic!("helper ended with {other:?}"),
        },
    }
}

fn open_dir_for_nobody(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn other_uid_is_refused() {
    let dir = tempdir();
    open_dir_for_nobody(dir.path());
    let config = ServerConfig {
        socket_mode: Some(0o777), // the filesystem lets nobody in; only the uid check refuses
        ..ServerConfig::default()
    };
    assert!(config.allowed_uids.contains(&0));
    assert!(!config.allowed_uids.contains(&65534));
    let before = open_fds();
    let (log_r, log_w) = UnixStream::pair().unwrap();
    let server = spawn_server_logging_to(
        dir.path(),
        config,
        reporting_vassal(before),
        Some(log_w.into()),
    );
    let path = server.path.clone();
    let code = as_nobody(|| {
        let (_ours, theirs) = UnixStream::pair().unwrap();
        match request_fork(&path, &["x"], &VassalFds::channel(theirs.as_fd()), DEADLINE) {
            Err(ClientError::Closed { received: 0, .. }) => 0,
            Ok(_) => 1,
            Err(e) => {
                eprintln!("unexpected error: {e}");
                2
            }
        }
    });
    assert_eq!(code, 0, "nobody must be refused with a closed connection");
    // ... and the server says so in its log.
    log_r.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut log = BufReader::new(&log_r);
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = log.read_line(&mut line).expect("server log line");
        assert!(n > 0, "server log ended; seen:\n{seen}");
        seen.push_str(&line);
        if line.contains("refused connection from pid") && line.contains("uid 65534") {
            break;
        }
    }
    // Root is still served by the same server.
    let (pid, ours) = fork_ready(&server.path, &["root"], "fork request");
    exits_once_closed(pid, ours);
}

fn allowed_other_uid_is_served() {
    let dir = tempdir();
    open_dir_for_nobody(dir.path());
    let config = ServerConfig {
        allowed_uids: vec![0, 65534],
        socket_mode: Some(0o777),
        ..ServerConfig::default()
    };
    let server = spawn_server(dir.path(), config, |a: Adoption| {
        let chan = UnixStream::from(a.channel);
        let _ = (&chan).write_all(format!("{}\n", a.peer.uid).as_bytes());
        0
    });
    let path = server.path.clone();
    // The helper tells us the vassal's pid: the vassal is reparented to us once the helper
    // exits, and we reap it by pid.
    let (pid_rx, pid_tx) = UnixStream::pair().unwrap();
    let code = as_nobody(|| {
        let (ours, theirs) = UnixStream::pair().unwrap();
        match request_fork(&path, &["x"], &VassalFds::channel(theirs.as_fd()), DEADLINE) {
            Ok(pid) => {
                let _ = (&pid_tx).write_all(&pid.as_raw().to_le_bytes());
                drop(theirs);
                if read_line_deadline(&ours) == "65534" {
                    0
                } else {
                    3
                }
            }
            Err(e) => {
                eprintln!("unexpected error: {e}");
                2
            }
        }
    });
    assert_eq!(code, 0);
    drop(pid_tx);
    let mut raw = [0u8; 4];
    (&pid_rx)
        .read_exact(&mut raw)
        .expect("the helper reports the vassal's pid");
    let pid = Pid::from_raw(i32::from_le_bytes(raw));
    // Its channel closed when the helper exited: it ends, and we reap it.
    assert_eq!(wait_deadline(pid, DEADLINE), WaitStatus::Exited(pid, 0));
    drop(server);
}

fn sigterm_stops_the_server() {
    let dir = tempdir();
    let mut server = spawn_server(dir.path(), ServerConfig::default(), |_| 0);
    // A pending client does not keep it from stopping.
    let _pending = UnixStream::connect(&server.path).unwrap();
    assert!(server.path.exists());
    kill(server.pid, Signal::SIGTERM).unwrap();
    assert_eq!(server.wait_exit(), WaitStatus::Exited(server.pid, 0));
    assert!(!server.path.exists(), "the socket file is removed on stop");
    match request_fork(
        &server.path,
        &["late"],
        &VassalFds::channel(_pending.as_fd()),
        DEADLINE,
    ) {
        Err(ClientError::MissingSocket { .. }) => {}
        other => panic!("expected MissingSocket, got {other:?}"),
    }
}

fn client_errors_are_typed() {
    let dir = tempdir();
    let (_ours, theirs) = UnixStream::pair().unwrap();
    let fds = VassalFds::channel(theirs.as_fd());

    let missing = dir.path().join("missing.sock");
    assert!(matches!(
        request_fork(&missing, &["x"], &fds, DEADLINE),
        Err(ClientError::MissingSocket { .. })
    ));

    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    assert!(matches!(
        request_fork(&stale, &["x"], &fds, DEADLINE),
        Err(ClientError::ConnectRefused { .. })
    ));

    // A listener that never answers: the request is queued, the reply never comes.
    let mute = dir.path().join("mute.sock");
    let _mute = UnixListener::bind(&mute).unwrap();
    assert!(matches!(
        request_fork(&mute, &["x"], &fds, Duration::from_millis(50)),
        Err(ClientError::Timeout {
            stage: forkserver_proto::Stage::Reply,
            ..
        })
    ));

    let empty: [&str; 0] = [];
    assert!(matches!(
        request_fork(&mute, &empty, &fds, DEADLINE),
        Err(ClientError::BadRequest(_))
    ));

    // A stale socket at the server's path is replaced; a live one is not.
    let fs = dir.path().join("fs.sock");
    drop(UnixListener::bind(&fs).unwrap());
    let mut server = spawn_server(dir.path(), ServerConfig::default(), |_| 0);
    match ForkServer::bind(&fs, ServerConfig::default()) {
        Err(forkserver_proto::ServerError::InUse { .. }) => {}
        other => panic!("expected InUse, got {other:?}"),
    }
    kill(server.pid, Signal::SIGTERM).unwrap();
    assert_eq!(server.wait_exit(), WaitStatus::Exited(server.pid, 0));
    let _ = OwnedFd::from(theirs);
}
