//! The live event stream: `GET /events` on the HTTP stats server and `emperor ctl events`,
//! with shell-script vassals run through --emperor-wrapper (no uWSGI needed).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Opens `GET /events` on the stats socket `st`; each note's JSON arrives on the receiver.
fn subscribe(st: &Path) -> Receiver<Value> {
    let mut s = UnixStream::connect(st).unwrap_or_else(|e| panic!("stats {st:?}: {e}"));
    s.write_all(b"GET /events HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let mut header = String::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        if l.trim().is_empty() {
            break;
        }
        header.push_str(&l);
    }
    assert!(header.contains("text/event-stream"), "{header}");
    lines(r)
}

/// Every `data: ` line read from `r`, parsed, on a channel.
fn lines(r: impl BufRead + Send + 'static) -> Receiver<Value> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in r.lines() {
            let Ok(l) = l else { return };
            let json = l.strip_prefix("data: ").unwrap_or(&l);
            if json.is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {l}"));
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    rx
}

/// Reads notes until one of vassal `id` is `event` (within [`T`]); returns it.
fn expect(rx: &Receiver<Value>, emp: &mut Proc, id: &str, event: &str) -> Value {
    let deadline = Instant::now() + T;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(v) if v["vassal"] == id && v["event"] == event => return v,
            Ok(v) => seen.push(v),
            Err(_) => break,
        }
    }
    panic!(
        "no {event} note for {id} within {T:?}; seen: {seen:?}\noutput:\n{}",
        emp.output()
    );
}

/// One stats document from the `--stats-http` unix socket `st`.
fn http_stats(st: &Path) -> Value {
    let mut s = UnixStream::connect(st).unwrap_or_else(|e| panic!("stats {st:?}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("invalid stats ({e}): {out}"))
}

fn pid_of(st: &Path, id: &str) -> Option<i32> {
    let p = vassal(&http_stats(st), id)?["pid"].as_i64()?;
    (p > 0).then_some(p as i32)
}

#[test]
fn a_subscriber_sees_a_touch_a_crash_and_an_rm_in_order() {
    let (work, dir) = work_dir();
    // Loyal, then sleeps until the emperor's first byte (a reload or a stop) ends it.
    write_sh(
        &work.path().join("v.sh"),
        "printf '\\001\\021' >&$UWSGI_EMPEROR_FD\ndd bs=1 count=1 <&$UWSGI_EMPEROR_FD >/dev/null 2>&1\nexit 0",
    );
    let (mut emp, st) = start_wrapped(
        work.path(),
        &dir,
        &work.path().join("v.sh"),
        &["--stats-http"],
    );
    let rx = subscribe(&st);
    let cfg = dir.join("app.ini");
    std::fs::write(&cfg, "[uwsgi]\n").unwrap();
    let d = expect(&rx, &mut emp, "app.ini", "detected");
    assert!(d["time"].as_f64().unwrap() > 1.0e9, "{d}");
    let s = expect(&rx, &mut emp, "app.ini", "spawned");
    let pid = s["details"]["pid"].as_i64().unwrap();
    expect(&rx, &mut emp, "app.ini", "loyal");

    touch(&cfg);
    let r = expect(&rx, &mut emp, "app.ini", "reload");
    assert_eq!(r["details"]["pid"].as_i64(), Some(pid), "{r}");
    expect(&rx, &mut emp, "app.ini", "exit");
    let s = expect(&rx, &mut emp, "app.ini", "spawned");
    let pid = s["details"]["pid"].as_i64().unwrap() as i32;
    expect(&rx, &mut emp, "app.ini", "loyal");

    signal(pid, libc::SIGKILL);
    let e = expect(&rx, &mut emp, "app.ini", "exit");
    assert_eq!(e["details"]["status"], "signal 9", "{e}");
    let s = expect(&rx, &mut emp, "app.ini", "spawned");
    let pid = s["details"]["pid"].as_i64().unwrap();
    expect(&rx, &mut emp, "app.ini", "loyal");

    std::fs::remove_file(&cfg).unwrap();
    let st_note = expect(&rx, &mut emp, "app.ini", "stop");
    assert_eq!(st_note["details"]["pid"].as_i64(), Some(pid));
    expect(&rx, &mut emp, "app.ini", "exit");
}

#[test]
fn a_subscriber_that_never_reads_is_dropped_and_does_not_slow_the_stats() {
    let (work, dir) = work_dir();
    // Loyal, then dies at once: respawned without backoff, three notes per round.
    write_sh(
        &work.path().join("v.sh"),
        "printf '\\021' >&$UWSGI_EMPEROR_FD\nexit 0",
    );
    let (mut emp, st) = start_wrapped(
        work.path(),
        &dir,
        &work.path().join("v.sh"),
        &["--stats-http"],
    );
    // Never read: the emperor's buffer for it fills.
    let mut lagging = UnixStream::connect(&st).unwrap();
    lagging
        .write_all(b"GET /events HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    // Long names make long notes: the buffer fills in fewer rounds.
    for i in 0..8 {
        let name = format!("{}{i}.ini", "x".repeat(200));
        std::fs::write(dir.join(name), "[uwsgi]\n").unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        // Every poll is answered while the subscriber lags (a stats read that hung would fail
        // on `http_stats`' read deadline); how fast is for the benchmarks, not for a test.
        let doc = http_stats(&st);
        assert!(doc["vassals"].is_array());
        if emp.output().contains("an event subscriber fell") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lagging subscriber was not dropped; output:\n{}",
            emp.output()
        );
        // Poll interval of a deadline-bounded wait.
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = emp.output();
    assert_eq!(out.matches("an event subscriber fell").count(), 1, "{out}");
    // Dropped: the emperor closed its end, after what was buffered.
    lagging
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut sink = Vec::new();
    lagging.read_to_end(&mut sink).unwrap();
    assert!(sink.starts_with(b"HTTP/1.1 200"));
    drop(work);
}

#[test]
fn ctl_events_prints_one_json_line_per_note() {
    let (work, dir) = work_dir();
    write_sh(
        &work.path().join("v.sh"),
        "printf '\\001\\021' >&$UWSGI_EMPEROR_FD\ndd bs=1 count=1 <&$UWSGI_EMPEROR_FD >/dev/null 2>&1\nexit 0",
    );
    let (mut emp, st) = start_wrapped(
        work.path(),
        &dir,
        &work.path().join("v.sh"),
        &["--stats-http"],
    );
    let mut ctl = ctl_command(&["--stats", st.to_str().unwrap(), "events"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines(BufReader::new(ctl.stdout.take().unwrap()));
    // The subscription is live once the stats count it: retouch until its first note comes.
    let cfg = dir.join("app.ini");
    std::fs::write(&cfg, "[uwsgi]\n").unwrap();
    let deadline = Instant::now() + T;
    let first = loop {
        if let Ok(v) = rx.recv_timeout(Duration::from_millis(500)) {
            break v;
        }
        assert!(Instant::now() < deadline, "no line; {}", emp.output());
        touch(&cfg);
    };
    assert_eq!(first["vassal"], "app.ini", "{first}");
    assert!(first["event"].is_string() && first["details"].is_object());
    let pid = pid_of(&st, "app.ini");
    std::fs::remove_file(&cfg).unwrap();
    expect(&rx, &mut emp, "app.ini", "stop");
    expect(&rx, &mut emp, "app.ini", "exit");
    assert!(pid.is_some());
    let _ = ctl.kill();
    let _ = ctl.wait();
}

#[test]
fn ctl_events_on_a_plain_stats_socket_says_what_to_do() {
    let (work, dir) = work_dir();
    let (_emp, st) = start_emperor(work.path(), &dir, &[]);
    let out = ctl_command(&["--stats", st.to_str().unwrap(), "events"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--stats-http"), "{err}");
}

#[test]
fn ctl_events_works_over_a_tcp_stats_address() {
    let (work, dir) = work_dir();
    write_sh(
        &work.path().join("v.sh"),
        "printf '\\021' >&$UWSGI_EMPEROR_FD\nexec sleep 600",
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_emperor"));
    cmd.arg(&dir)
        .args([
            "--emperor-stats",
            &addr,
            "--stats-http",
            "--emperor-wrapper",
        ])
        .arg(work.path().join("v.sh"))
        .env("EMPEROR_LOG", "info")
        .current_dir(work.path());
    let mut emp = Proc::spawn(cmd);
    emp.wait_for_line("Starting the Emperor", T);
    let mut ctl = ctl_command(&["--stats", &addr, "events"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines(BufReader::new(ctl.stdout.take().unwrap()));
    let cfg = dir.join("tcp.ini");
    std::fs::write(&cfg, "[uwsgi]\n").unwrap();
    let deadline = Instant::now() + T;
    // The subscription may start after the first notes: each touch makes a new one.
    while rx.recv_timeout(Duration::from_millis(500)).is_err() {
        assert!(Instant::now() < deadline, "no line; {}", emp.output());
        touch(&cfg);
    }
    std::fs::remove_file(&cfg).unwrap();
    expect(&rx, &mut emp, "tcp.ini", "stop");
    let _ = ctl.kill();
    let _ = ctl.wait();
}
