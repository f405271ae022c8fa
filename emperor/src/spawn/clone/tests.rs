//! The clone path against real processes: what the child gets (fds, stdin, env, cwd, signal
//! mask) and how failures come back.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use crate::spawn::{resolve, Plan, SpawnError, Spawner};

fn os(a: &str, b: &str) -> (OsString, OsString) {
    (a.into(), b.into())
}

fn plan(script: &str, cwd: &Path) -> Plan {
    Plan {
        programs: vec![PathBuf::from("/bin/sh")],
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: vec![os("PATH", "/usr/bin:/bin")],
        cwd: cwd.to_path_buf(),
        with_config: true,
        stdin: None,
    }
}

#[test]
fn child_gets_only_its_fds_devnull_stdin_env_and_cwd() {
    let d = tempfile::tempdir().unwrap();
    let mut sp = Spawner::new().unwrap();
    let mut p = plan("", d.path());
    p.programs = vec![resolve("sleep", Some(OsStr::new("/usr/bin:/bin")), Path::new("/")).unwrap()];
    p.argv = vec!["sleep".into(), "30".into()];
    let st = sp.spawn(&p).unwrap();
    // The child is killed and reaped even if an assertion below fails.
    struct Reap(i32);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = kill_and_reap(self.0);
        }
    }
    let _reap = Reap(st.pid);
    // CLONE_VFORK resumes us once the kernel swapped the child's memory, before the
    // dynamic loader has finished (it briefly holds fds of its own): look once `sleep` is
    // asleep in nanosleep.
    let proc_ = PathBuf::from(format!("/proc/{}", st.pid));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let wchan = std::fs::read_to_string(proc_.join("wchan")).unwrap_or_default();
        if wchan.contains("nanosleep") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the child did not reach its sleep within 10 s (wchan {wchan:?})"
        );
        std::thread::yield_now();
    }
    let env = std::fs::read(proc_.join("environ")).unwrap();
    let cwd = std::fs::read_link(proc_.join("cwd")).unwrap();
    let fd0 = std::fs::read_link(proc_.join("fd/0")).unwrap();
    let mut fds: Vec<i32> = std::fs::read_dir(proc_.join("fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    fds.sort();
    let status = std::fs::read_to_string(proc_.join("status")).unwrap();
    assert_eq!(cwd, std::fs::canonicalize(d.path()).unwrap());
    assert_eq!(fd0, PathBuf::from("/dev/null"));
    let env = String::from_utf8_lossy(&env).replace('\0', "\n");
    let chan: i32 = env
        .lines()
        .find_map(|l| l.strip_prefix("UWSGI_EMPEROR_FD="))
        .unwrap()
        .parse()
        .unwrap();
    let cfg: i32 = env
        .lines()
        .find_map(|l| l.strip_prefix("UWSGI_EMPEROR_FD_CONFIG="))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(fds, vec![0, 1, 2, chan.min(cfg), chan.max(cfg)], "{env}");
    // Signal dispositions and mask are back to normal in the child.
    let line = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(u64::from_str_radix(&line("SigBlk:"), 16).unwrap(), 0);
}

/// `FDSize:` (slots in the fd table) of `/proc/<pid>/status`.
fn fd_table_size(pid: &str) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("FDSize:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn child_table_is_not_a_copy_of_the_emperor_descriptors() {
    let mut sp = Spawner::new().unwrap();
    // One channel per vassal: an emperor with 1,000 vassals holds ~1,000 descriptors.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let _ = nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_NOFILE,
        hard.min(4096),
        hard,
    );
    let many: Vec<(UnixStream, UnixStream)> =
        (0..600).map(|_| UnixStream::pair().unwrap()).collect();
    assert!(fd_table_size("self") >= 1024);
    let mut p = plan("", Path::new("/"));
    p.programs = vec![resolve("sleep", Some(OsStr::new("/usr/bin:/bin")), Path::new("/")).unwrap()];
    p.argv = vec!["sleep".into(), "30".into()];
    let mut st = sp.spawn(&p).unwrap();
    let pid = st.pid;
    let proc_ = PathBuf::from(format!("/proc/{pid}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(proc_.join("wchan"))
        .unwrap_or_default()
        .contains("nanosleep")
    {
        if std::time::Instant::now() >= deadline {
            let _ = kill_and_reap(pid);
            panic!("the child did not reach its sleep within 10 s");
        }
        std::thread::yield_now();
    }
    let size = fd_table_size(&pid.to_string());
    let fds = std::fs::read_dir(proc_.join("fd")).unwrap().count();
    let _ = kill_and_reap(pid);
    drop(many);
    assert!(size <= 256, "the child's fd table has {size} slots");
    assert_eq!(fds, 5, "0, 1, 2, channel, config");
    // The emperor kept no reference to the child's end: its exit is EOF on the channel.
    st.channel
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut b = [0u8; 1];
    assert_eq!(std::io::Read::read(&mut st.channel, &mut b).unwrap(), 0);
}

#[test]
fn stdin_hands_a_listener_as_fd_0() {
    let dir = tempfile::tempdir().unwrap();
    let listener = std::os::unix::net::UnixListener::bind(dir.path().join("od.sock")).unwrap();
    let mut sp = Spawner::new().unwrap();
    let mut p = plan("", Path::new("/"));
    p.programs = vec![resolve("sleep", Some(OsStr::new("/usr/bin:/bin")), Path::new("/")).unwrap()];
    p.argv = vec!["sleep".into(), "30".into()];
    p.stdin = Some(listener.as_raw_fd());
    let st = sp.spawn(&p).unwrap();
    let fd0 = std::fs::read_link(format!("/proc/{}/fd/0", st.pid)).unwrap();
    let _ = kill_and_reap(st.pid);
    assert!(fd0.to_string_lossy().starts_with("socket:"), "{fd0:?}");
}

fn kill_and_reap(pid: i32) -> nix::Result<nix::sys::wait::WaitStatus> {
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    nix::sys::wait::waitpid(pid, None)
}

#[test]
fn missing_program_and_bad_cwd_are_errors() {
    let mut sp = Spawner::new().unwrap();
    let mut p = plan("true", Path::new("/"));
    p.programs = vec![PathBuf::from("/nonexistent/uwsgi")];
    match sp.spawn(&p) {
        Err(SpawnError::Exec { err, .. }) => {
            assert_eq!(err.kind(), io::ErrorKind::NotFound)
        }
        other => panic!("{other:?}"),
    }
    let p = plan("true", Path::new("/nonexistent-dir"));
    assert!(matches!(sp.spawn(&p), Err(SpawnError::Chdir { .. })));
    let mut p = plan("true", Path::new("/"));
    p.programs.clear();
    assert!(sp
        .spawn(&p)
        .unwrap_err()
        .to_string()
        .contains("not found on PATH"));
}
