//! Hostile files behind vassal configs: a FIFO, a device, a huge file. The emperor reads a
//! config only without blocking, only from a regular file and at most 64 KiB of it, so it stays
//! responsive (stats answer, other vassals respawn) and its memory stays flat; a log line names
//! the file and says what to do. Real uWSGI vassals, a real emperor (under a 4 GiB address
//! space limit, so a regression fails instead of eating the machine's memory).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// The emperor over `dir` with `args`, under `prlimit --as=4GiB`.
fn start(work: &Path, dir: &Path, args: &[&str]) -> (Proc, PathBuf) {
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--as={}", 4u64 << 30))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_emperor"));
    start_emperor_with(cmd, work, dir, args)
}

/// Peak resident memory of `pid`, in KiB.
fn vm_hwm(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// Asserts the emperor's peak memory grew by less than 32 MiB since it was `before` KiB.
fn assert_memory_flat(emp: &Proc, before: u64) {
    let after = vm_hwm(emp.pid());
    assert!(
        after < before + 32 * 1024,
        "the emperor's peak memory grew from {before} KiB to {after} KiB"
    );
}

/// A work dir whose vassal directory holds `good.ini`, a real uWSGI vassal on `work/good.sock`.
fn with_good_vassal() -> (tempfile::TempDir, PathBuf) {
    let (work, dir) = work_dir();
    write_vassal(&dir, "good.ini", &work.path().join("good.sock"), "");
    (work, dir)
}

/// A real uWSGI vassal `good.ini`, ready; returns its pid.
fn good_vassal_ready(emp: &mut Proc, stats_path: &Path) -> i32 {
    let v = wait_vassal(emp, stats_path, "good.ini", T, "ready", |v| {
        v["ready"] == 1 && v["pid"].as_i64().unwrap_or(-1) > 0
    });
    v["pid"].as_i64().unwrap() as i32
}

/// The emperor still works: stats answer, and a SIGKILLed sibling is respawned.
fn still_responsive(emp: &mut Proc, stats_path: &Path) {
    let pid = good_vassal_ready(emp, stats_path);
    signal(pid, libc::SIGKILL);
    wait_vassal(emp, stats_path, "good.ini", T, "respawned", |v| {
        let p = v["pid"].as_i64().unwrap_or(-1);
        p > 0 && p != pid as i64 && v["ready"] == 1
    });
}

fn mkfifo(p: &Path) {
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
}

#[test]
fn a_fifo_behind_a_nofollow_config_is_skipped() {
    require_uwsgi();
    let (work, dir) = with_good_vassal();
    let fifo = work.path().join("fifo");
    mkfifo(&fifo);
    std::os::unix::fs::symlink(&fifo, dir.join("x.ini")).unwrap();
    let (mut emp, stats_path) = start(work.path(), &dir, &["--emperor-nofollow"]);
    let line = emp.wait_for_line("skipping x.ini", T);
    assert!(line.contains("it is a FIFO, not a regular file"), "{line}");
    assert!(line.contains("replace it"), "{line}");
    still_responsive(&mut emp, &stats_path);
    assert!(vassal(&stats(&stats_path), "x.ini").is_none());
}

#[test]
fn a_target_swapped_for_a_fifo_does_not_freeze_the_emperor() {
    require_uwsgi();
    let (work, dir, srv) = work_dir_with_srv();
    write_vassal(&dir, "good.ini", &work.path().join("good.sock"), "");
    let target = write_vassal(&srv, "uwsgi.ini", &work.path().join("x.sock"), "");
    std::os::unix::fs::symlink(&target, dir.join("x.ini")).unwrap();
    let (mut emp, stats_path) = start(work.path(), &dir, &[]);
    let v = wait_vassal(&mut emp, &stats_path, "x.ini", T, "ready", |v| {
        v["ready"] == 1
    });
    let pid = v["pid"].as_i64().unwrap() as i32;
    // The owner of the target replaces it with a FIFO, and the vassal dies: its next start
    // must not open the FIFO blocking.
    mkfifo(&srv.join("tmp"));
    std::fs::rename(srv.join("tmp"), &target).unwrap();
    signal(pid, libc::SIGKILL);
    let line = emp.wait_for_line("a FIFO, not a regular file", T);
    assert!(
        line.contains("x.ini") || line.contains("uwsgi.ini"),
        "{line}"
    );
    still_responsive(&mut emp, &stats_path);
}

#[test]
fn a_huge_config_is_read_only_up_to_64_kib() {
    require_uwsgi();
    let (work, dir) = with_good_vassal();
    let (mut emp, stats_path) = start(work.path(), &dir, &[]);
    good_vassal_ready(&mut emp, &stats_path);
    let before = vm_hwm(emp.pid());
    // `truncate -s 1G big.ini`, written elsewhere and moved in (one complete file).
    let f = std::fs::File::create(work.path().join("big.ini")).unwrap();
    f.set_len(1 << 30).unwrap();
    drop(f);
    std::fs::rename(work.path().join("big.ini"), dir.join("big.ini")).unwrap();
    let line = emp.wait_for_line("big.ini: 1073741824 bytes", T);
    assert!(line.contains("only its first 64 KiB"), "{line}");
    // It is started (as uWSGI: it has no [vassal-shim] section in its first 64 KiB).
    wait_vassal(&mut emp, &stats_path, "big.ini", T, "a start", |v| {
        v["respawns"].as_u64().unwrap_or(0) + v["restarts"].as_u64().unwrap_or(0) > 0
            || v["pid"].as_i64().unwrap_or(-1) > 0
            || v["last_exit"].is_string()
    });
    still_responsive(&mut emp, &stats_path);
    assert_memory_flat(&emp, before);
}

#[test]
fn a_nofollow_link_to_dev_zero_is_skipped() {
    require_uwsgi();
    let (work, dir) = with_good_vassal();
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.ini")).unwrap();
    let (mut emp, stats_path) = start(work.path(), &dir, &["--emperor-nofollow"]);
    let line = emp.wait_for_line("skipping zero.ini", T);
    assert!(
        line.contains("it is a character device, not a regular file"),
        "{line}"
    );
    good_vassal_ready(&mut emp, &stats_path);
    let before = vm_hwm(emp.pid());
    still_responsive(&mut emp, &stats_path);
    assert_memory_flat(&emp, before);
}

#[test]
fn control_characters_in_file_names_cannot_forge_log_lines() {
    require_uwsgi();
    let (work, dir) = with_good_vassal();
    let (mut emp, stats_path) = start(work.path(), &dir, &[]);
    good_vassal_ready(&mut emp, &stats_path);
    // `touch $'a\nb.ini'`, with a plausible forged line after the newline, and a terminal
    // escape sequence.
    let evil = "a\n2026-01-01T00:00:00.000000Z  INFO FORGED vassal line.ini";
    std::fs::write(dir.join(evil), "[uwsgi]\n").unwrap();
    std::fs::write(dir.join("b\x1b[2Jc.ini"), "[uwsgi]\n").unwrap();
    let line = emp.wait_for_line("INFO FORGED vassal line.ini: its name contains control", T);
    assert!(
        line.contains("skipping a\\n2026-01-01T00:00:00.000000Z"),
        "{line}"
    );
    assert!(line.contains("rename it"), "{line}");
    let line = emp.wait_for_line("skipping b\\u{1b}[2Jc.ini", T);
    assert!(
        line.contains("its name contains control characters"),
        "{line}"
    );
    // SIGWINCH: a full rescan (no line repeats: one line per skipped file).
    emp.signal(libc::SIGWINCH);
    still_responsive(&mut emp, &stats_path);
    let out = emp.output();
    for l in out.lines() {
        assert!(!l.starts_with("FORGED"), "forged line: {l:?}\n{out}");
        assert!(!l.starts_with("2026-01-01T"), "forged line: {l:?}\n{out}");
        assert!(!l.contains('\x1b'), "raw escape sequence: {l:?}\n{out}");
    }
    let doc = stats(&stats_path);
    assert!(vassal(&doc, evil).is_none(), "{doc:#}");
    assert_eq!(out.matches("skipping b\\u{1b}[2Jc.ini").count(), 1, "{out}");
}
