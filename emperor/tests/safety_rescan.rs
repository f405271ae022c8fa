//! The periodic safety pass over a watched directory on a local filesystem: one `stat` of the
//! directory, a full rescan only when its stamp changed since the last full scan — and the
//! changes inotify does not report are still caught (by that stamp, or by SIGWINCH). Shell-script
//! vassals through --emperor-wrapper (no uWSGI needed).

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;

use common::*;

/// Our emperor over `dir` with `--emperor-freq 1`, logging the safety pass (trace level).
fn start(work: &Path, dir: &Path) -> Proc {
    let wrapper = work.join("sleeper.sh");
    std::fs::write(&wrapper, "#!/bin/sh\nexec sleep 600\n").unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emperor"));
    cmd.arg(dir)
        .args(["--emperor-freq", "1", "--emperor-wrapper"])
        .arg(&wrapper)
        .env("EMPEROR_LOG", "info,emperor::monitor=trace")
        .current_dir(work);
    let mut p = Proc::spawn(cmd);
    p.wait_for_line("Starting the Emperor", T);
    p
}

/// Waits until a safety pass finds the directory unchanged (its stamp trusted), and returns
/// that line.
fn quiet_pass(emp: &mut Proc) -> String {
    emp.wait_for_new_line("unchanged, no rescan", T)
}

#[test]
fn a_watched_local_directory_is_not_rescanned_while_nothing_changes() {
    let (work, dir) = work_dir();
    for i in 0..20 {
        std::fs::write(dir.join(format!("v{i:02}.ini")), "[uwsgi]\n").unwrap();
    }
    let mut emp = start(work.path(), &dir);
    let mode = emp.wait_for_line("local filesystem, inotify sees every change", T);
    assert!(mode.contains(dir.to_str().unwrap()), "{mode}");
    for i in 0..20 {
        emp.wait_for_line(&format!("started vassal v{i:02}.ini"), T);
    }
    // Three consecutive passes (one a second) with no full rescan in between.
    quiet_pass(&mut emp);
    let before = emp.output().lines().count();
    quiet_pass(&mut emp);
    quiet_pass(&mut emp);
    let out = emp.output();
    let since: Vec<&str> = out.lines().skip(before).collect();
    assert!(
        !since.iter().any(|l| l.contains("full rescan")),
        "{}",
        since.join("\n")
    );
}

#[test]
fn a_file_inotify_does_not_report_is_caught_by_the_directory_stamp() {
    let (work, dir) = work_dir();
    std::fs::write(dir.join("a.ini"), "[uwsgi]\n").unwrap();
    std::fs::write(work.path().join("b.ini"), "[uwsgi]\n").unwrap();
    let mut emp = start(work.path(), &dir);
    emp.wait_for_line("started vassal a.ini", T);
    quiet_pass(&mut emp);
    // A hard link: inotify says IN_CREATE of a regular file, and the emperor waits for an
    // IN_CLOSE_WRITE that never comes. The directory's stamp changed: the next pass rescans.
    std::fs::hard_link(work.path().join("b.ini"), dir.join("b.ini")).unwrap();
    emp.wait_for_new_line("(it changed since the last full scan)", T);
    // Found by that rescan (not earlier, by an event).
    emp.wait_for_new_line("new vassal b.ini detected", T);
    emp.wait_for_line("started vassal b.ini", T);
}

#[test]
fn sigwinch_rescans_what_neither_inotify_nor_the_stamp_shows() {
    let (work, dir) = work_dir();
    let cfg = dir.join("a.ini");
    std::fs::write(&cfg, "[uwsgi]\n").unwrap();
    let mut emp = start(work.path(), &dir);
    emp.wait_for_line("started vassal a.ini", T);
    quiet_pass(&mut emp);
    // Rewritten in place by a writer that keeps the file open: IN_MODIFY only (not watched: a
    // file still being written is not acted on), and the directory does not change.
    let mut f = std::fs::OpenOptions::new().append(true).open(&cfg).unwrap();
    f.write_all(b"# edited\n").unwrap();
    f.flush().unwrap();
    // A pass after the write still finds the directory unchanged.
    quiet_pass(&mut emp);
    quiet_pass(&mut emp);
    assert!(
        !emp.output().contains("reloading vassal a.ini"),
        "{}",
        emp.output()
    );
    emp.signal(libc::SIGWINCH);
    emp.wait_for_line("rescanning every monitor", T);
    emp.wait_for_line("reloading vassal a.ini (config changed)", T);
    drop(f);
}
