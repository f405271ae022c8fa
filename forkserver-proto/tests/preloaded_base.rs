//! The `preloaded-base` example driven as an emperor would: started as a vassal with a channel,
//! asked for adoptions, its adopted vassals supervised (ready/accepting/loyal/heartbeat, echo,
//! reload, stop), and the base stopped over its channel.
//!
//! Needs the example binary, which `cargo test` builds (or `cargo build --examples`).

mod common;

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use forkserver_proto::{request_fork, Pid, VassalFds};
use nix::sys::wait::{waitpid, WaitStatus};
use uwsgi_emperor_suite::Proc;

use common::example_binary;

const DEADLINE: Duration = Duration::from_secs(20);

/// Asks the fork server at `fs` for a vassal running `argv`; its pid and our end of its channel.
fn adopt(fs: &Path, argv: &[OsString]) -> (Pid, UnixStream) {
    let (chan, vassal_end) = UnixStream::pair().unwrap();
    let pid = request_fork(fs, argv, &VassalFds::channel(vassal_end.as_fd()), DEADLINE).unwrap();
    drop(vassal_end);
    (pid, chan)
}

fn read_bytes(s: &UnixStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut b = vec![0u8; n];
    (&*s).read_exact(&mut b).expect("channel bytes");
    b
}

fn expect_eof(s: &UnixStream) {
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut b = [0u8; 8];
    loop {
        match (&*s).read(&mut b) {
            Ok(0) => return,
            Ok(_) => continue, // heartbeats still in flight
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("waiting for EOF: {e}"),
        }
    }
}

/// waitpid with a deadline, by polling a pidfd-free WNOHANG loop.
fn reap(pid: Pid) -> WaitStatus {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        match waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)).unwrap() {
            WaitStatus::StillAlive => {}
            st => return st,
        }
        assert!(std::time::Instant::now() < deadline, "{pid} did not exit");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn preloaded_base_adopts_supervised_vassals() {
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let bin = example_binary();
    let dir = tempfile::tempdir().unwrap();
    let fs = dir.path().join("fs.sock");
    let echo = dir.path().join("echo.sock");
    let ini = dir.path().join("app.ini");
    std::fs::write(
        &ini,
        format!("[app]\nsocket = {}\nheartbeat = 1\n", echo.display()),
    )
    .unwrap();

    // Start the base as a vassal: its channel end becomes fd 3 in the child.
    let (emperor_end, base_end) = UnixStream::pair().unwrap();
    let raw = base_end.as_raw_fd();
    let mut cmd = Command::new(&bin);
    cmd.args(["--fork-server"])
        .arg(&fs)
        .args(["--ballast-mib", "8", "--import-ms", "10"])
        .env("UWSGI_EMPEROR_FD", "3")
        .env_remove("UWSGI_EMPEROR_FD_CONFIG");
    // SAFETY: dup2 is async-signal-safe; it only clears CLOEXEC on the child's fd 3.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut base = Proc::spawn(cmd);
    drop(base_end);
    assert_eq!(
        read_bytes(&emperor_end, 3),
        [1, 5, 17],
        "base announces itself"
    );
    assert!(fs.exists());

    // Adopt a vassal.
    let argv = [
        OsString::from("preloaded-base"),
        "--ini".into(),
        ini.clone().into_os_string(),
    ];
    let (pid, chan) = adopt(&fs, &argv);
    assert_eq!(read_bytes(&chan, 3), [1, 5, 17], "ready, accepting, loyal");
    assert_ne!(pid.as_raw() as u32, base.pid());
    // It is our child (we are the subreaper), not the base's.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let ppid: i32 = stat[stat.rfind(')').unwrap() + 2..]
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ppid, std::process::id() as i32);

    // The line echo works.
    let client = UnixStream::connect(&echo).unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    (&client).write_all(b"hello\nworld\n").unwrap();
    let mut lines = BufReader::new(&client);
    let mut l = String::new();
    lines.read_line(&mut l).unwrap();
    assert_eq!(l, "hello\n");
    l.clear();
    lines.read_line(&mut l).unwrap();
    assert_eq!(l, "world\n");
    drop(lines);
    drop(client);

    // heartbeat = 1: a 26 arrives.
    assert_eq!(read_bytes(&chan, 1), [26]);

    // Reload (byte 1): an adopted vassal exits 0 so the emperor can start a fresh one.
    (&chan).write_all(&[1]).unwrap();
    expect_eof(&chan);
    assert_eq!(reap(pid), WaitStatus::Exited(pid, 0));
    base.wait_for_line("reload: exiting", DEADLINE);

    // A second adoption, stopped with byte 0; its socket file is removed.
    let (pid, chan) = adopt(&fs, &argv);
    assert_eq!(read_bytes(&chan, 3), [1, 5, 17]);
    (&chan).write_all(&[0]).unwrap();
    expect_eof(&chan);
    assert_eq!(reap(pid), WaitStatus::Exited(pid, 0));
    assert!(!echo.exists(), "the stopped vassal removed its socket");

    // An adoption with all three fds: the config channel is held, the on-demand listener
    // (bound by the "emperor") is served instead of the ini socket.
    let od_path = dir.path().join("od.sock");
    let od = std::os::unix::net::UnixListener::bind(&od_path).unwrap();
    let (chan, vassal_end) = UnixStream::pair().unwrap();
    let (_cfg, cfg_end) = UnixStream::pair().unwrap();
    let fds = VassalFds {
        channel: vassal_end.as_fd(),
        config: Some(cfg_end.as_fd()),
        on_demand: Some(od.as_fd()),
    };
    let pid = request_fork(&fs, &argv, &fds, DEADLINE).unwrap();
    drop((vassal_end, cfg_end, od));
    assert_eq!(read_bytes(&chan, 3), [1, 5, 17]);
    let client = UnixStream::connect(&od_path).unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    (&client).write_all(b"on demand\n").unwrap();
    let mut l = String::new();
    BufReader::new(&client).read_line(&mut l).unwrap();
    assert_eq!(l, "on demand\n");
    assert!(
        !echo.exists(),
        "with an on-demand listener the ini socket is not bound"
    );
    (&chan).write_all(&[2]).unwrap(); // graceful stop
    expect_eof(&chan);
    assert_eq!(reap(pid), WaitStatus::Exited(pid, 0));

    // Stop the base over its own channel.
    (&emperor_end).write_all(&[0]).unwrap();
    assert!(base.wait_exit(DEADLINE).success());
    assert!(!fs.exists(), "the base removed its fork-server socket");
}
