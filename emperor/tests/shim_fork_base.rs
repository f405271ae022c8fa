//! A fork-server base run by `vassal-shim` (a `[vassal-shim]` vassal with `fork-base = true`,
//! listed in `--vassal-fork-base`): the vassals it forks are reparented to our emperor, not to
//! the shim, so the emperor adopts them; restarting the base through the shim leaves them
//! running; shutdown stops everything.
//!
//! Needs the `vassal-shim` binary beside the emperor's and `forkserver-proto`'s
//! `preloaded-base` example; both are built on first use into this test's target directory.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::fork::*;
use common::*;

fn shim_and_base() -> &'static (PathBuf, PathBuf) {
    static BINS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BINS.get_or_init(|| {
        (
            built(
                &["-p", "vassal-shim", "--bin", "vassal-shim"],
                "vassal-shim",
            ),
            preloaded_base(),
        )
    })
}

#[test]
fn a_shim_run_fork_base_serves_our_emperor() {
    let (shim, base_bin) = shim_and_base();
    // The emperor runs shim vassals with the shim beside its own binary.
    assert_eq!(
        shim.parent(),
        Path::new(env!("CARGO_BIN_EXE_emperor")).parent()
    );
    let (work, dir) = work_dir();
    let fs = work.path().join("fs.sock");
    let base = dir.join("base.ini");
    std::fs::write(
        &base,
        format!(
            "[vassal-shim]\nexec = {} --fork-server {} --ballast-mib 4 --import-ms 20\n\
             ready = unix:{}\nloyal-after = 0.2\nfork-base = true\n",
            base_bin.display(),
            fs.display(),
            fs.display()
        ),
    )
    .unwrap();
    let (_a1, a1_sock) = write_echo_app(work.path(), &dir, "a1");
    let (mut emp, st) = start_emperor(work.path(), &dir, FORK_SERVER_ARGS);
    let emperor_pid = emp.pid() as i32;

    let b = wait_loyal(&mut emp, &st, "base.ini", -1);
    assert_eq!(b["adopted"], 0, "the base is forked: {b:#}");
    let shim_pid = pid_of(&b);
    emp.wait_for_line("vassal-shim{vassal=base.ini", T);
    let v = wait_loyal(&mut emp, &st, "a1.ini", -1);
    assert_eq!(v["adopted"], 1, "{v:#}");
    let a1 = pid_of(&v);
    // The base's grandchild went to the emperor (the nearest subreaper), not to the shim.
    assert_eq!(ppid(a1), emperor_pid);
    echo(&a1_sock, "hello");

    // Restarting the base through the shim (touch = reload = restart the program) stops the
    // base's process group only: the adopted vassal keeps running, and the new base serves.
    let base_prog = pid_in_line(&emp.wait_for_line("started program", T));
    touch(&base);
    let line = emp.wait_for_new_line("started program", T);
    assert_ne!(pid_in_line(&line), base_prog, "{line}");
    let v = wait_loyal(&mut emp, &st, "base.ini", -1);
    assert_eq!(pid_of(&v), shim_pid, "the shim itself stays");
    let (_a2, a2_sock) = write_echo_app(work.path(), &dir, "a2");
    let v2 = wait_loyal(&mut emp, &st, "a2.ini", -1);
    assert_eq!(v2["adopted"], 1, "{v2:#}");
    assert_eq!(ppid(pid_of(&v2)), emperor_pid);
    echo(&a2_sock, "two");
    assert!(exists(a1), "the adopted a1.ini died with the old base");
    echo(&a1_sock, "still here");
    assert_eq!(
        pid_of(&vassal(&stats(&st), "a1.ini").unwrap()),
        a1,
        "a1.ini was not restarted"
    );

    let a2 = pid_of(&v2);
    emp.signal(libc::SIGINT);
    emp.wait_for_line("The Emperor is buried.", T);
    assert!(emp.wait_exit(T).success());
    for pid in [a1, a2, shim_pid] {
        wait_gone(pid, T);
    }
    let out = emp.output();
    assert!(!out.contains("did not become a child"), "{out}");
    assert!(!out.contains("refusing adopted process"), "{out}");
}

/// The program pid of a shim's `started program P (generation N)` line.
fn pid_in_line(line: &str) -> i32 {
    line.split("started program ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no program pid in {line:?}"))
}
