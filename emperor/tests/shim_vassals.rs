//! Shim vassals: an .ini file with a [vassal-shim] section runs through `vassal-shim --ini`
//! (no uWSGI), next to real uWSGI vassals in the same directory.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Pids whose command line contains every one of `words`.
fn pids_with(words: &[&str]) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if words.iter().all(|w| cmd.contains(w)) {
            out.push(pid);
        }
    }
    out
}

fn http_get(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Waits (bounded) until exactly one program process runs, different from `not`.
fn program_pid(words: &[&str], not: Option<i32>) -> i32 {
    let deadline = Instant::now() + T;
    loop {
        let p = pids_with(words);
        if p.len() == 1 && Some(p[0]) != not {
            return p[0];
        }
        assert!(Instant::now() < deadline, "program processes: {p:?}");
        // Poll interval of a deadline-bounded wait.
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_mixed_directory_runs_uwsgi_and_shim_vassals_side_by_side() {
    require_uwsgi();
    let shim = ensure_shim();
    let (work, dir) = work_dir();
    let sock = work.path().join("hello.sock");
    write_vassal(&dir, "hello.ini", &sock, "");
    let port = free_port();
    let port_s = port.to_string();
    std::fs::write(dir.join("page.txt"), "served by a shim vassal\n").unwrap();
    let shim_ini = dir.join("files.ini");
    std::fs::write(
        &shim_ini,
        format!(
            "; no uWSGI here\n[vassal-shim]\nexec = python3 -m http.server {port} --bind 127.0.0.1\n\
             ready = http://127.0.0.1:{port}/\nloyal-after = 0.5\nstop-timeout = 5\n"
        ),
    )
    .unwrap();
    let (mut emp, st) = start_emperor(work.path(), &dir, &[]);
    wait_vassal(&mut emp, &st, "hello.ini", T, "accepting", |v| {
        v["accepting"] == 1
    });
    // uWSGI declares itself loyal after its first request.
    assert_eq!(hello(&sock).0, 200);
    let h = wait_vassal(&mut emp, &st, "hello.ini", T, "loyal", |v| v["loyal"] == 1);
    let f = wait_vassal(&mut emp, &st, "files.ini", T, "loyal", |v| v["loyal"] == 1);
    let (hello_pid, shim_pid) = (
        h["pid"].as_i64().unwrap() as i32,
        f["pid"].as_i64().unwrap() as i32,
    );
    assert_eq!(
        proc_argv(shim_pid),
        [
            shim.display().to_string(),
            "--ini".into(),
            "files.ini".into()
        ]
    );
    assert!(
        proc_argv(hello_pid)[0].contains("uwsgi"),
        "{:?}",
        proc_argv(hello_pid)
    );
    assert_eq!(hello(&sock).0, 200);
    assert!(http_get(port).contains("page.txt"));
    let words = ["http.server", port_s.as_str()];
    let prog = program_pid(&words, None);

    // touch: the emperor reloads it (byte 1); the shim restarts the program.
    touch(&shim_ini);
    emp.wait_for_line("reloading vassal files.ini (config changed)", T);
    let prog2 = program_pid(&words, Some(prog));
    wait_gone(prog, T);
    let f = wait_vassal(&mut emp, &st, "files.ini", T, "accepting again", |v| {
        v["accepting"] == 1
    });
    assert_eq!(
        f["pid"].as_i64().unwrap() as i32,
        shim_pid,
        "same vassal process"
    );
    assert!(http_get(port).contains("page.txt"));

    // rm: stopped, and no program process is left.
    std::fs::remove_file(&shim_ini).unwrap();
    emp.wait_for_line("removed uwsgi instance files.ini", T);
    wait_gone(shim_pid, T);
    wait_gone(prog2, T);
    assert!(pids_with(&words).is_empty());
    // The uWSGI vassal was not disturbed.
    assert_eq!(
        vassal(&stats(&st), "hello.ini").unwrap()["pid"].as_i64(),
        Some(hello_pid as i64)
    );
    assert_eq!(hello(&sock).0, 200);
}

#[test]
fn a_missing_shim_binary_is_reported_with_what_to_do() {
    let (work, dir) = work_dir();
    std::fs::write(dir.join("p.ini"), "[vassal-shim]\nexec = sleep 60\n").unwrap();
    // A copy of the emperor alone in a directory, with a PATH without the shim.
    let bin = work.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let emperor = bin.join("emperor");
    std::fs::copy(env!("CARGO_BIN_EXE_emperor"), &emperor).unwrap();
    let mut cmd = Command::new(&emperor);
    cmd.env("PATH", "/usr/bin:/bin");
    let (mut emp, _st) = start_emperor_with(cmd, work.path(), &dir, &[]);
    let line = emp.wait_for_line("cannot start vassal p.ini", T);
    assert!(
        line.contains("[vassal-shim] section but `vassal-shim` is neither beside the emperor")
            && line.contains("cargo build --release -p vassal-shim"),
        "{line}"
    );
}

#[test]
fn shim_vassals_start_without_uwsgi_on_path() {
    ensure_shim();
    let (work, dir) = work_dir();
    std::fs::write(
        dir.join("p.ini"),
        "[vassal-shim]\nexec = /bin/sleep 60\nready = immediate\n",
    )
    .unwrap();
    std::fs::write(dir.join("u.ini"), "[uwsgi]\nmaster = true\n").unwrap();
    // PATH is an empty directory: no uwsgi, no shim (it is found beside the emperor).
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emperor"));
    cmd.env("PATH", work.path());
    let (mut emp, _st) = start_emperor_with(cmd, work.path(), &dir, &[]);
    emp.wait_for_line("vassal p.ini is ready to accept requests", T);
    // The uWSGI vassal beside it fails, with the reason.
    emp.wait_for_line(
        "cannot start vassal u.ini: `uwsgi` was not found on PATH",
        T,
    );
    let out = emp.output();
    assert!(
        !out.contains("cannot start vassal p.ini"),
        "the shim vassal must not need uwsgi:\n{out}"
    );
}

/// A directory of many new vassals does not hold up the event loop until the last one has
/// started: the stats socket is served between batches of starts.
#[test]
fn the_loop_serves_the_stats_socket_between_batches_of_starts() {
    ensure_shim();
    const N: usize = 200;
    let (work, dir) = work_dir();
    for i in 0..N {
        std::fs::write(
            dir.join(format!("v{i:03}.ini")),
            "[vassal-shim]\nexec = sleep 1000\nready = immediate\n",
        )
        .unwrap();
    }
    // All N are seen by the first scan, so their starts are queued at once.
    let (mut emp, st) = start_emperor(work.path(), &dir, &[]);
    emp.wait_for_line("started vassal", T);
    // Freeze the emperor while it is starting the queued vassals, queue a stats connection,
    // then let it go on: the answer comes at its next turn of the loop.
    let pid = emp.pid() as i32;
    // SAFETY: kill(2) on the emperor we started; no memory is touched.
    unsafe {
        libc::kill(pid, libc::SIGSTOP);
    }
    let conn = std::os::unix::net::UnixStream::connect(&st);
    // SAFETY: as above.
    unsafe {
        libc::kill(pid, libc::SIGCONT);
    }
    let mut conn = conn.expect("connect to the stats socket");
    conn.set_read_timeout(Some(T)).unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let vassals = doc["vassals"].as_array().unwrap();
    let waiting = vassals.iter().filter(|v| v["pid"] == -1).count();
    assert_eq!(vassals.len(), N, "{out}");
    assert!(
        waiting > 0,
        "the stats answer came only after all {N} vassals had started (the emperor may also \
         have finished them before it was stopped, if this test was not scheduled for a long time)"
    );
    // The rest still start.
    for i in 0..N {
        emp.wait_for_line(
            &format!("vassal v{i:03}.ini is ready to accept requests"),
            T,
        );
    }
}
