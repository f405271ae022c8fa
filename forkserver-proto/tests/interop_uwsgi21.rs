//! Interoperability with the real uWSGI 2.1-dev fork server and emperor (the only uWSGI line
//! that has them; Debian's 2.0.x does not).
//!
//! Ignored by default because it needs a hand-built uWSGI 2.1-dev: build the `core` profile of
//! unbit/uwsgi at commit 6cbb2177 (`python3 uwsgiconfig.py --build core`, a few seconds), then
//!
//! ```text
//! UWSGI_21=/path/to/uwsgi cargo test -p forkserver-proto --test interop_uwsgi21 -- --ignored
//! ```
//!
//! * our client → uWSGI's `--fork-server`: the adopted uWSGI vassal becomes our child and talks
//!   the vassal protocol on the channel we passed.
//! * uWSGI's emperor (`--emperor-use-fork-server`) → our `preloaded-base` example: the emperor
//!   reports the adopted vassal loyal, reloads it through the fork server and stops it.

mod common;

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use forkserver_proto::{parent_of, request_fork, Pid, VassalFds};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use uwsgi_emperor_suite::Proc;

use common::example_binary;

const DEADLINE: Duration = Duration::from_secs(30);

fn uwsgi21() -> PathBuf {
    let p = std::env::var_os("UWSGI_21")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "set UWSGI_21 to a uWSGI 2.1-dev binary (build unbit/uwsgi at 6cbb2177 with \
             `python3 uwsgiconfig.py --build core`)"
            )
        });
    assert!(p.is_file(), "UWSGI_21={} does not exist", p.display());
    p
}

fn read_byte(s: &UnixStream) -> Option<u8> {
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut b = [0u8; 1];
    match (&*s).read(&mut b) {
        Ok(1) => Some(b[0]),
        Ok(_) => None,
        Err(e) => panic!("channel read: {e}"),
    }
}

fn reap(pid: Pid) -> WaitStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)).unwrap() {
            WaitStatus::StillAlive => {}
            st => return st,
        }
        assert!(Instant::now() < deadline, "{pid} did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
#[ignore = "needs uWSGI 2.1-dev in UWSGI_21 (see the file's docs)"]
fn our_client_with_the_real_fork_server() {
    let uwsgi = uwsgi21();
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fs = dir.path().join("fs.sock");
    std::fs::write(
        dir.path().join("app.ini"),
        format!(
            "[uwsgi]\nsocket = {}\nneed-app = false\nmaster = true\nworkers = 1\n",
            dir.path().join("app.sock").display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(&uwsgi);
    cmd.arg("--fork-server").arg(&fs).current_dir(dir.path());
    let mut server = Proc::spawn(cmd);
    // uWSGI logs nothing when its fork socket is ready; wait for the file, with a deadline.
    let deadline = Instant::now() + DEADLINE;
    while !fs.exists() {
        assert!(
            Instant::now() < deadline,
            "no fork socket:\n{}",
            server.output()
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    let (chan, theirs) = UnixStream::pair().unwrap();
    let argv = [
        uwsgi.clone().into_os_string(),
        "--ini".into(),
        "app.ini".into(),
    ];
    let pid = request_fork(&fs, &argv, &VassalFds::channel(theirs.as_fd()), DEADLINE)
        .unwrap_or_else(|e| panic!("{e}\n{}", server.output()));
    drop(theirs);
    server.wait_for_line("connection from pid", DEADLINE);
    // uWSGI's grandchild replies without waiting for the intermediate child to exit (ours
    // waits), so right after the reply its parent may still be that intermediate child; it is
    // ours once the intermediate child is gone.
    let deadline = Instant::now() + DEADLINE;
    while parent_of(pid).unwrap() != nix::unistd::getpid() {
        assert!(
            Instant::now() < deadline,
            "the adopted uWSGI never became our child"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // uWSGI's master sends ready (1), its worker accepting (5).
    assert_eq!(read_byte(&chan), Some(1), "{}", server.output());
    assert_eq!(read_byte(&chan), Some(5), "{}", server.output());
    // Stop it (byte 0); it exits and we reap it.
    (&chan).write_all_bytes(&[0]);
    while read_byte(&chan).is_some() {}
    assert!(matches!(reap(pid), WaitStatus::Exited(..)));
}

trait WriteAll {
    fn write_all_bytes(self, b: &[u8]);
}

impl WriteAll for &UnixStream {
    fn write_all_bytes(self, b: &[u8]) {
        use std::io::Write;
        let mut s = self;
        s.write_all(b).unwrap();
    }
}

#[test]
#[ignore = "needs uWSGI 2.1-dev in UWSGI_21 (see the file's docs)"]
fn the_real_emperor_with_our_preloaded_base() {
    let uwsgi = uwsgi21();
    let base = example_binary();
    let dir = tempfile::tempdir().unwrap();
    let vassals = dir.path().join("vassals");
    std::fs::create_dir(&vassals).unwrap();
    let fs = dir.path().join("fs.sock");
    let echo = dir.path().join("echo.sock");
    // The fork-base vassal is spawned by the emperor with plain fork+exec through a wrapper that
    // starts our preloaded base instead of uWSGI.
    let wrapper = dir.path().join("wrap.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {} --fork-server {} --ballast-mib 8 --import-ms 50\n",
            base.display(),
            fs.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(vassals.join("base.ini"), "[uwsgi]\n").unwrap();
    let stats = dir.path().join("stats.sock");
    let mut cmd = Command::new(&uwsgi);
    cmd.arg("--emperor")
        .arg(&vassals)
        .args(["--emperor-freq", "1"])
        .arg("--emperor-use-fork-server")
        .arg(&fs)
        .args(["--vassal-fork-base", "base.ini"])
        .arg("--emperor-wrapper")
        .arg(&wrapper)
        .arg("--emperor-stats")
        .arg(&stats);
    let mut emperor = Proc::spawn(cmd);
    emperor.wait_for_line("fork server listening", DEADLINE);

    // The adopted vassal: our app reads [app]; uWSGI's emperor only needs the file.
    std::fs::write(
        vassals.join("app.ini"),
        format!("[app]\nsocket = {}\n", echo.display()),
    )
    .unwrap();
    emperor.wait_for_line("adoption request", DEADLINE);
    emperor.wait_for_line("vassal app.ini is now loyal", DEADLINE);
    let c = UnixStream::connect(&echo).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    (&c).write_all_bytes(b"ping\n");
    let mut got = [0u8; 5];
    (&c).read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping\n");
    drop(c);

    // Reload: our adopted vassal exits, the emperor starts a new one through our fork server.
    let mtime = std::fs::metadata(vassals.join("app.ini"))
        .unwrap()
        .modified()
        .unwrap();
    let f = std::fs::File::options()
        .write(true)
        .open(vassals.join("app.ini"))
        .unwrap();
    f.set_modified(mtime + Duration::from_secs(5)).unwrap();
    drop(f);
    emperor.wait_for_line("reload: exiting", DEADLINE);
    emperor.wait_for_new_line("vassal app.ini is now loyal", DEADLINE);

    // Stop it: file removed -> byte 0.
    std::fs::remove_file(vassals.join("app.ini")).unwrap();
    emperor.wait_for_line("stop (byte 0)", DEADLINE);
    // Stop the emperor (SIGINT: ragnarok); our base gets byte 0 and exits.
    emperor.signal(libc::SIGINT);
    emperor.wait_for_line("base: message 0 from the emperor", DEADLINE);
    emperor.wait_exit(DEADLINE);
}
