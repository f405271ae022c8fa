//! The emperor as a system service: under a `Type=notify` unit it reports READY=1 to the
//! `NOTIFY_SOCKET` once it serves and STOPPING=1 when it shuts down, without handing that
//! socket to its (real uWSGI) vassals; `--version` and the stats' `version` name the git commit.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// The commit build.rs stamped into the emperor (it sets this for the whole package). It must
/// be a commit of this repository (HEAD may have moved since the build), or "unknown" when
/// there is no git.
fn expected_commit() -> &'static str {
    let commit = env!("EMPEROR_GIT_COMMIT");
    let git = Command::new("git")
        .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    match git {
        Ok(o) if o.status.success() => {}
        _ if commit == "unknown" => {}
        _ => panic!("the emperor was stamped with {commit:?}, not a commit of this repository"),
    }
    commit
}

/// Reads datagrams from `rx` until one has the line `state` (e.g. `READY=1`) and returns it, or
/// panics after `timeout` with what came and the emperor's output.
fn recv_state(rx: &UnixDatagram, emp: &mut Proc, state: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        rx.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match rx.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.lines().any(|l| l == state) {
                    return msg;
                }
                seen.push(msg);
            }
            Err(e) => panic!(
                "no {state} within {timeout:?} ({e}); got {seen:?}; output:\n{}",
                emp.output()
            ),
        }
    }
}

#[test]
fn version_names_the_crate_version_and_the_git_commit() {
    let out = Command::new(env!("CARGO_BIN_EXE_emperor"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let want = format!(
        "emperor {} (git {})\n",
        env!("CARGO_PKG_VERSION"),
        expected_commit()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
}

#[test]
fn notify_socket_gets_ready_and_stopping_and_vassals_do_not_see_it() {
    require_uwsgi();
    let (work, dir) = work_dir();
    let notify = work.path().join("notify.sock");
    let rx = UnixDatagram::bind(&notify).unwrap();
    write_vassal(&dir, "app.ini", &work.path().join("app.sock"), "");

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emperor"));
    cmd.env("NOTIFY_SOCKET", &notify);
    let (mut emp, st) = start_emperor_with(cmd, work.path(), &dir, &[]);
    let ready = recv_state(&rx, &mut emp, "READY=1", T);
    assert!(ready.contains("STATUS=The Emperor is governing"), "{ready}");

    // A uWSGI master stopped while its worker is still starting takes reload-mercy to go.
    emp.wait_for_line("vassal app.ini is ready to accept requests", T);
    let v = wait_vassal(&mut emp, &st, "app.ini", T, "a pid", |v| {
        v["pid"].as_i64().unwrap_or(0) > 0
    });
    let pid = v["pid"].as_i64().unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ.contains("UWSGI_EMPEROR_FD") || environ.contains("EMPEROR"),
        "read the vassal's real environment: {environ}"
    );
    assert!(
        !environ
            .split('\0')
            .any(|kv| kv.starts_with("NOTIFY_SOCKET=")),
        "the vassal must not inherit NOTIFY_SOCKET: {environ}"
    );

    let doc = stats(&st);
    assert_eq!(
        doc["version"],
        format!(
            "{}-emperor-rs (git {})",
            env!("CARGO_PKG_VERSION"),
            expected_commit()
        )
    );

    emp.signal(libc::SIGTERM);
    recv_state(&rx, &mut emp, "STOPPING=1", T);
    let status = emp.wait_exit(T);
    assert!(status.success(), "{status:?}\n{}", emp.output());
}
