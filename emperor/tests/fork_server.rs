//! Our emperor with a fork server: the `preloaded-base` example of `forkserver-proto` runs as a
//! vassal listed in `--vassal-fork-base`, every other vassal is adopted from it.
//!
//! The example binary is built by the first test that needs it, with the same cargo, profile
//! and target directory as this test (`cargo build -p forkserver-proto --example
//! preloaded-base`), so `cargo test -p emperor --test fork_server` works on a clean clone; under
//! `cargo test --workspace` it is already built and the build is a no-op.

mod common;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::fork::*;
use common::*;

/// A vassal directory with the base vassal `base.ini`, run through a wrapper that turns
/// `--ini base.ini` into `preloaded-base --fork-server FS` (any other config would run cold).
struct Setup {
    work: tempfile::TempDir,
    dir: PathBuf,
    fs: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        Setup::with_base_env("")
    }

    /// `env` is shell run before the base starts (e.g. `export VAR=1; `).
    fn with_base_env(env: &str) -> Setup {
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("vassals");
        std::fs::create_dir(&dir).unwrap();
        let fs = work.path().join("fs.sock");
        let wrapper = work.path().join("wrap.sh");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\ncase \"$*\" in\n  *base.ini*) {env}exec {bin} --fork-server {fs} --ballast-mib 4 --import-ms 20 ;;\nesac\nexec {bin} \"$@\"\n",
                bin = preloaded_base().display(),
                fs = fs.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let s = Setup { work, dir, fs };
        s.write_base();
        s
    }

    fn work(&self) -> &Path {
        self.work.path()
    }

    fn write_base(&self) {
        std::fs::write(self.dir.join("base.ini"), "[app]\n").unwrap();
    }

    /// `dir/NAME.ini`, an adopted line-echo vassal on `work/NAME.sock`.
    fn write_app(&self, name: &str) -> (PathBuf, PathBuf) {
        write_echo_app(self.work(), &self.dir, name)
    }

    fn emperor(&self, extra: &[&str]) -> (Proc, PathBuf) {
        let wrapper = self.work().join("wrap.sh");
        let mut args = vec!["--emperor-wrapper", wrapper.to_str().unwrap()];
        args.extend_from_slice(FORK_SERVER_ARGS);
        args.extend_from_slice(&["--emperor-curse-tolerance", "5"]);
        args.extend_from_slice(extra);
        start_emperor(self.work(), &self.dir, &args)
    }
}

#[test]
fn adopted_vassals_are_loyal_echo_reload_and_stop() {
    let s = Setup::new();
    let (a1, a1_sock) = s.write_app("a1");
    let (mut emp, st) = s.emperor(&[
        "--exec-as-emperor",
        "echo adopted-hook pid=$UWSGI_VASSAL_PID uid=$UWSGI_VASSAL_UID",
    ]);
    let emperor_pid = emp.pid() as i32;
    emp.wait_for_line("vassals start through the fork server at", T);
    emp.wait_for_line("fork server listening", T);

    let base = wait_loyal(&mut emp, &st, "base.ini", -1);
    assert_eq!(base["adopted"], 0, "the base is forked: {base:#}");
    let v = wait_loyal(&mut emp, &st, "a1.ini", -1);
    assert_eq!(v["adopted"], 1, "{v:#}");
    let pid = pid_of(&v);
    emp.wait_for_line(
        &format!("vassal a1.ini (pid: {pid}) adopted from the fork server"),
        T,
    );
    emp.wait_for_line("vassal a1.ini is now loyal", T);
    assert_ne!(pid, pid_of(&base));
    // The kernel reparented the base's grandchild to us, the subreaper.
    assert_eq!(ppid(pid), emperor_pid);
    echo(&a1_sock, "hello");
    // The emperor-side hooks run for an adopted vassal as after a fork.
    emp.wait_for_line(
        &format!("adopted-hook pid={pid} uid={}", nix::unistd::geteuid()),
        T,
    );
    // Its heartbeats (every second) reach the emperor's records.
    wait_vassal(&mut emp, &st, "a1.ini", T, "a heartbeat", |v| {
        v["last_heartbeat"].as_i64().unwrap_or(0) > 0
    });

    // Reload: an adopted vassal exits and a fresh adoption takes its place.
    touch(&a1);
    emp.wait_for_line("reloading vassal a1.ini (config changed)", T);
    emp.wait_for_line(
        &format!(
            "adopted vassal a1.ini (pid: {pid}) exited after a reload (exit status 0): starting \
             a new one"
        ),
        T,
    );
    let v = wait_loyal(&mut emp, &st, "a1.ini", pid);
    assert_eq!(v["adopted"], 1);
    assert_eq!(v["respawns"], 1);
    let pid2 = pid_of(&v);
    assert_eq!(ppid(pid2), emperor_pid);
    wait_gone(pid, T);
    echo(&a1_sock, "after reload");

    // A second vassal, adopted while the first runs.
    let (_a2, a2_sock) = s.write_app("a2");
    let v = wait_loyal(&mut emp, &st, "a2.ini", -1);
    assert_eq!(v["adopted"], 1);
    echo(&a2_sock, "two");

    // Stop: removing the config stops (byte 0) and reaps it.
    std::fs::remove_file(&a1).unwrap();
    emp.wait_for_line(
        &format!("vassal a1.ini (pid: {pid2}) stopped (exit status 0)"),
        T,
    );
    emp.wait_for_line("removed uwsgi instance a1.ini", T);
    wait_gone(pid2, T);
    assert!(vassal(&stats(&st), "a1.ini").is_none());

    // Shutdown stops adopted vassals and the base alike.
    let a2_pid = pid_of(&vassal(&stats(&st), "a2.ini").unwrap());
    let base_pid = pid_of(&vassal(&stats(&st), "base.ini").unwrap());
    emp.signal(libc::SIGINT);
    emp.wait_for_line("The Emperor is buried.", T);
    assert!(emp.wait_exit(T).success());
    wait_gone(a2_pid, T);
    wait_gone(base_pid, T);
    let out = emp.output();
    assert!(!out.contains("not a descendant"), "{out}");
}

#[test]
fn the_base_dying_is_handled_and_starts_back_off_until_it_returns() {
    let s = Setup::new();
    let (_a1, a1_sock) = s.write_app("a1");
    let (mut emp, st) = s.emperor(&[]);
    let base = wait_loyal(&mut emp, &st, "base.ini", -1);
    let a1 = wait_loyal(&mut emp, &st, "a1.ini", -1);
    let a1_pid = pid_of(&a1);

    // The base is killed: it is respawned like any loyal vassal; the adopted vassal is not
    // its child (it is ours) and keeps being supervised.
    let base_pid = pid_of(&base);
    signal(base_pid, libc::SIGKILL);
    emp.wait_for_line(
        &format!("vassal base.ini (pid: {base_pid}) died unexpectedly (signal 9): respawning it"),
        T,
    );
    wait_loyal(&mut emp, &st, "base.ini", base_pid);
    let v = vassal(&stats(&st), "a1.ini").unwrap();
    assert_eq!((pid_of(&v), v["loyal"].clone()), (a1_pid, 1.into()));
    echo(&a1_sock, "still here");

    // The base goes away for good: new starts fail, naming the vassal and the socket, and
    // back off, while the adopted vassal stays supervised.
    std::fs::remove_file(s.dir.join("base.ini")).unwrap();
    emp.wait_for_line("removed uwsgi instance base.ini", T);
    assert!(!s.fs.exists(), "the stopped base removed its socket");
    let (_a2, a2_sock) = s.write_app("a2");
    let line = emp.wait_for_line("cannot start vassal a2.ini", T);
    assert!(
        line.contains(&s.fs.display().to_string()) && line.contains("does not exist"),
        "{line}"
    );
    emp.wait_for_line("retrying vassal a2.ini in", T);
    emp.wait_for_line("(attempt 2)", T);
    let v = vassal(&stats(&st), "a2.ini").unwrap();
    assert_eq!((pid_of(&v), v["adopted"].clone()), (-1, 0.into()), "{v:#}");
    let doc = stats(&st);
    assert!(
        doc["blacklist"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["id"] == "a2.ini"),
        "{doc:#}"
    );
    let v = vassal(&doc, "a1.ini").unwrap();
    assert_eq!(
        pid_of(&v),
        a1_pid,
        "a failing fork server costs no other vassal"
    );
    echo(&a1_sock, "unaffected");

    // The base returns: the next attempt is adopted.
    s.write_base();
    wait_loyal(&mut emp, &st, "base.ini", -1);
    let v = wait_loyal(&mut emp, &st, "a2.ini", -1);
    assert_eq!(v["adopted"], 1);
    emp.wait_for_line("vassal a2.ini removed from the blacklist", T);
    echo(&a2_sock, "back");
    assert_eq!(pid_of(&vassal(&stats(&st), "a1.ini").unwrap()), a1_pid);
}

#[test]
fn a_fork_server_outside_the_emperors_tree_is_refused() {
    // The stray adopted process is reparented to the nearest subreaper: make that this test
    // process, so it can be reaped (and seen to exit) here.
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let s = Setup::new();
    std::fs::remove_file(s.dir.join("base.ini")).unwrap();
    // A fork server started beside the emperor, not by it.
    let mut cmd = Command::new(preloaded_base());
    cmd.arg("--fork-server")
        .arg(&s.fs)
        .args(["--ballast-mib", "1", "--import-ms", "0"]);
    let mut outsider = Proc::spawn(cmd);
    outsider.wait_for_line("fork server listening", T);
    s.write_app("a1");
    let (mut emp, st) = s.emperor(&["--emperor-throttle", "500"]);
    let line = emp.wait_for_line("refusing adopted process", T);
    let stray: i32 = line
        .split("refusing adopted process ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"));
    let line = emp.wait_for_line("cannot start vassal a1.ini", T);
    assert!(
        line.contains("is not a descendant of this Emperor")
            && line.contains(&s.fs.display().to_string())
            && line.contains("--vassal-fork-base"),
        "{line}"
    );
    // Its channel was closed: the stray exits (here, its subreaper).
    let deadline = Instant::now() + T;
    loop {
        match nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(stray),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        ) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) => {}
            Ok(st) => {
                assert!(
                    matches!(st, nix::sys::wait::WaitStatus::Exited(_, 1)),
                    "{st:?}"
                );
                break;
            }
            Err(e) => panic!("stray {stray} is not ours to reap either: {e}"),
        }
        assert!(Instant::now() < deadline, "stray {stray} did not exit");
        // Poll interval of a deadline-bounded wait for a process we cannot get events for.
        std::thread::sleep(Duration::from_millis(20));
    }
    // The vassal backs off and is tried again; the emperor and its other duties carry on.
    emp.wait_for_line("retrying vassal a1.ini in", T);
    emp.wait_for_new_line("refusing adopted process", T);
    let v = vassal(&stats(&st), "a1.ini").unwrap();
    assert!(v["attempt"].as_u64().unwrap_or(0) >= 1, "{v:#}");
    assert_eq!(v["adopted"], 0);
    outsider.signal(libc::SIGTERM);
    outsider.wait_exit(T);
}

#[test]
fn a_base_replying_before_reparenting_is_waited_for() {
    // Like uWSGI's fork server: the reply can arrive while the vassal's parent is still the
    // base's intermediate child; the emperor re-checks until the vassal is reparented to it.
    let s = Setup::with_base_env("export PRELOADED_BASE_REPLY_EARLY=1; ");
    let names = ["e1", "e2", "e3"];
    let socks: Vec<PathBuf> = names.iter().map(|n| s.write_app(n).1).collect();
    let (mut emp, st) = s.emperor(&[]);
    for (n, sock) in names.iter().zip(&socks) {
        let v = wait_loyal(&mut emp, &st, &format!("{n}.ini"), -1);
        assert_eq!(v["adopted"], 1);
        assert_eq!(ppid(pid_of(&v)), emp.pid() as i32);
        echo(sock, n);
    }
    let out = emp.output();
    assert!(!out.contains("refusing adopted process"), "{out}");
}

/// uWSGI 2.1-dev, hand-built (see `forkserver-proto/tests/interop_uwsgi21.rs`).
fn uwsgi21() -> PathBuf {
    let p = PathBuf::from(std::env::var_os("UWSGI_21").expect(
        "set UWSGI_21 to a uWSGI 2.1-dev binary (unbit/uwsgi at 6cbb2177, \
         `python3 uwsgiconfig.py --build core`)",
    ));
    assert!(p.is_file(), "UWSGI_21={} does not exist", p.display());
    p
}

#[test]
#[ignore = "needs uWSGI 2.1-dev in UWSGI_21 (see forkserver-proto/tests/interop_uwsgi21.rs)"]
fn real_uwsgi_21_fork_server_as_the_base_vassal() {
    let uwsgi = uwsgi21();
    let (work, dir) = work_dir();
    let fs = work.path().join("fs.sock");
    let app_sock = work.path().join("app.sock");
    std::fs::write(
        dir.join("fs.ini"),
        format!("[uwsgi]\nfork-server = {}\n", fs.display()),
    )
    .unwrap();
    let app = dir.join("app.ini");
    std::fs::write(
        &app,
        format!(
            "[uwsgi]\nmaster = true\nsocket = {}\nneed-app = false\nheartbeat = 1\n",
            app_sock.display()
        ),
    )
    .unwrap();
    let (mut emp, st) = start_emperor(
        work.path(),
        &dir,
        &[
            "--emperor-wrapper",
            uwsgi.to_str().unwrap(),
            "--emperor-use-fork-server",
            fs.to_str().unwrap(),
            "--vassal-fork-base",
            "fs.ini",
            "--emperor-throttle",
            "200",
        ],
    );
    // uWSGI workers are loyal only after a first request: wait for accepting.
    let v = wait_vassal(&mut emp, &st, "app.ini", T, "accepting", |v| {
        v["accepting"] == 1 && pid_of(v) > 0
    });
    assert_eq!(v["adopted"], 1);
    let pid = pid_of(&v);
    assert_eq!(ppid(pid), emp.pid() as i32);
    assert_eq!(vassal(&stats(&st), "fs.ini").unwrap()["adopted"], 0);
    UnixStream::connect(&app_sock).expect("the adopted uWSGI listens");
    wait_vassal(&mut emp, &st, "app.ini", T, "a heartbeat", |v| {
        v["last_heartbeat"].as_i64().unwrap_or(0) > 0
    });
    // Reload: uWSGI's adopted vassal exits ("GAME OVER"), a new one is adopted at once.
    touch(&app);
    emp.wait_for_line(
        &format!("adopted vassal app.ini (pid: {pid}) exited after a reload"),
        T,
    );
    let v = wait_vassal(&mut emp, &st, "app.ini", T, "re-adopted", |v| {
        v["accepting"] == 1 && pid_of(v) > 0 && pid_of(v) != pid
    });
    assert_eq!(v["adopted"], 1);
    let pid2 = pid_of(&v);
    std::fs::remove_file(&app).unwrap();
    emp.wait_for_line(&format!("vassal app.ini (pid: {pid2}) stopped"), T);
    wait_gone(pid2, T);
    emp.signal(libc::SIGINT);
    emp.wait_for_line("The Emperor is buried.", T);
    assert!(emp.wait_exit(T).success());
    let out = emp.output();
    assert!(!out.contains("refusing adopted process"), "{out}");
}

#[test]
fn an_adopted_vassal_silent_on_heartbeats_is_killed_and_adopted_again() {
    let s = Setup::new();
    let (_a1, a1_sock) = s.write_app("a1");
    let (mut emp, st) = s.emperor(&["--emperor-required-heartbeat", "2"]);
    wait_vassal(&mut emp, &st, "a1.ini", T, "heartbeating", |v| {
        v["loyal"] == 1 && v["last_heartbeat"].as_i64().unwrap_or(0) > 0
    });
    let pid = pid_of(&vassal(&stats(&st), "a1.ini").unwrap());
    // Frozen: no more heartbeats (every 1 s); the watchdog kills it after 2 s of silence.
    signal(pid, libc::SIGSTOP);
    emp.wait_for_line(
        "vassal a1.ini sent no heartbeat in the last 2 seconds, brutally respawning it",
        T,
    );
    emp.wait_for_line(
        &format!("vassal a1.ini (pid: {pid}) died unexpectedly (signal 9): respawning it"),
        T,
    );
    let v = wait_loyal(&mut emp, &st, "a1.ini", pid);
    assert_eq!(v["adopted"], 1);
    wait_gone(pid, T);
    echo(&a1_sock, "thawed");
}
