//! Lifecycle rules that real uWSGI vassals do not exercise on demand, with shell-script
//! "vassals" run through --emperor-wrapper (no uWSGI needed).

mod common;

use std::path::Path;

use common::*;

/// Ignores INT/TERM/HUP and never reads its channel.
const DEAF: &str = "trap '' INT TERM HUP\nexec sleep 600";

fn script(dir: &Path, name: &str, body: &str) {
    write_sh(&dir.join(name), body);
}

#[test]
fn a_vassal_ignoring_stop_is_killed_after_the_curse_tolerance() {
    let (work, dir) = work_dir();
    // Never reads its channel, ignores INT/TERM.
    script(work.path(), "deaf.sh", DEAF);
    std::fs::write(dir.join("deaf.ini"), "[uwsgi]\n").unwrap();
    let (mut emp, st) = start_wrapped(
        work.path(),
        &dir,
        &work.path().join("deaf.sh"),
        &["--emperor-curse-tolerance", "1"],
    );
    let v = wait_running(&mut emp, &st, "deaf.ini");
    let pid = v["pid"].as_i64().unwrap() as i32;
    std::fs::remove_file(dir.join("deaf.ini")).unwrap();
    emp.wait_for_line("stopping vassal deaf.ini", T);
    let v = wait_vassal(&mut emp, &st, "deaf.ini", T, "cursed", |v| {
        v["state"] == "stopping"
    });
    assert!(v["cursed"].as_i64().unwrap() > 0);
    emp.wait_for_line("did not stop within 1 s: killing it (SIGKILL)", T);
    emp.wait_for_line("removed uwsgi instance deaf.ini", T);
    wait_gone(pid, T);
}

#[test]
fn exit_26_exiles_until_the_file_changes() {
    let (work, dir) = work_dir();
    script(work.path(), "exile.sh", "exit 26");
    let cfg = dir.join("ex.ini");
    std::fs::write(&cfg, "[uwsgi]\n").unwrap();
    let (mut emp, st) = start_wrapped(
        work.path(),
        &dir,
        &work.path().join("exile.sh"),
        &["--emperor-freq", "1"],
    );
    emp.wait_for_line("vassal ex.ini (pid: ", T);
    emp.wait_for_line("exited with status 26 (exile)", T);
    let v = wait_vassal(&mut emp, &st, "ex.ini", T, "exiled", |v| {
        v["state"] == "exiled"
    });
    assert_eq!(v["pid"], -1);
    assert_eq!(v["last_exit"], "exit 26");
    // Two safety rescans later it is still down.
    for _ in 0..2 {
        emp.signal(libc::SIGWINCH);
        emp.wait_for_new_line("rescanning every monitor", T);
    }
    assert_eq!(vassal(&stats(&st), "ex.ini").unwrap()["restarts"], 0);
    touch(&cfg);
    emp.wait_for_line("config of vassal ex.ini changed: ending its exile", T);
    wait_vassal(&mut emp, &st, "ex.ini", T, "restarted", |v| {
        v["restarts"].as_i64().unwrap_or(0) >= 1
    });
}

#[test]
fn channel_eof_is_only_a_hint_death_comes_from_the_reaped_status() {
    let (work, dir) = work_dir();
    // Closes its emperor channel but keeps running.
    script(
        work.path(),
        "closer.sh",
        // dash cannot name fds above 9 in a redirection; perl is everywhere sh is.
        "exec perl -MPOSIX -e 'POSIX::close($ENV{UWSGI_EMPEROR_FD}); sleep 600'",
    );
    std::fs::write(dir.join("c.ini"), "[uwsgi]\n").unwrap();
    let (mut emp, st) = start_wrapped(
        work.path(),
        &dir,
        &work.path().join("closer.sh"),
        &[
            "--emperor-curse-tolerance",
            "1",
            "--emperor-throttle",
            "100",
        ],
    );
    emp.wait_for_line("vassal c.ini closed its channel: cursing it", T);
    emp.wait_for_line("did not stop within 1 s: killing it (SIGKILL)", T);
    emp.wait_for_line("died before being loyal (signal 9)", T);
    // Still wanted: retried after backoff.
    wait_vassal(&mut emp, &st, "c.ini", T, "retried", |v| {
        v["restarts"].as_i64().unwrap_or(0) >= 1
    });
}

#[test]
fn shutdown_kills_what_ignores_stop_after_reload_mercy_and_reaps_everything() {
    let (work, dir) = work_dir();
    script(work.path(), "deaf.sh", DEAF);
    for i in 0..50 {
        std::fs::write(dir.join(format!("v{i:02}.ini")), "[uwsgi]\n").unwrap();
    }
    let (mut emp, st) = start_wrapped(
        work.path(),
        &dir,
        &work.path().join("deaf.sh"),
        &["--reload-mercy", "1"],
    );
    let deadline = std::time::Instant::now() + T;
    let pids: Vec<i32> = loop {
        let doc = stats(&st);
        let pids: Vec<i32> = doc["vassals"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["pid"].as_i64().filter(|p| *p > 0).map(|p| p as i32))
            .collect();
        if pids.len() == 50 {
            break pids;
        }
        assert!(std::time::Instant::now() < deadline, "{doc:#}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    emp.signal(libc::SIGINT);
    assert_eq!(emp.wait_exit(T).code(), Some(0));
    let out = emp.output();
    assert!(out.contains("reload-mercy expired"), "{out}");
    assert!(out.contains("The Emperor is buried."), "{out}");
    for pid in pids {
        assert!(!exists(pid), "{pid} survived");
    }
}

#[test]
fn our_emperor_as_a_vassal_of_our_emperor() {
    let work = tempfile::tempdir().unwrap();
    let outer = work.path().join("outer");
    let inner = work.path().join("inner");
    std::fs::create_dir(&outer).unwrap();
    std::fs::create_dir(&inner).unwrap();
    script(work.path(), "deaf.sh", DEAF);
    std::fs::write(inner.join("leaf.ini"), "[uwsgi]\n").unwrap();
    std::fs::write(
        outer.join("sub.ini"),
        format!(
            "[uwsgi]\nemperor = {}\nemperor-wrapper = {}\nreload-mercy = 1\nemperor-stats = {}\n",
            inner.display(),
            work.path().join("deaf.sh").display(),
            work.path().join("inner-stats.sock").display()
        ),
    )
    .unwrap();
    let (mut emp, st) = start_emperor(
        work.path(),
        &outer,
        &["--emperor-wrapper", env!("CARGO_BIN_EXE_emperor")],
    );
    emp.wait_for_line("has_emperor mode detected", T);
    emp.wait_for_line("vassal sub.ini has been spawned", T);
    emp.wait_for_line("vassal sub.ini is now loyal", T);
    let inner_stats = work.path().join("inner-stats.sock");
    let v = wait_running(&mut emp, &inner_stats, "leaf.ini");
    let leaf = v["pid"].as_i64().unwrap() as i32;
    let sub = vassal(&stats(&st), "sub.ini").unwrap();
    assert_eq!(sub["loyal"], 1);
    let sub_pid = sub["pid"].as_i64().unwrap() as i32;

    std::fs::remove_file(outer.join("sub.ini")).unwrap();
    emp.wait_for_line("received message 0 from my emperor: stopping", T);
    emp.wait_for_line("removed uwsgi instance sub.ini", T);
    wait_gone(sub_pid, T);
    wait_gone(leaf, T);
}
