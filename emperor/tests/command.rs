//! The command socket (uWSGI 2.1's datagrams, built here with uwsgi_proto since Debian's
//! uWSGI 2.0 has no command socket) and `emperor ctl`, driving real uWSGI 2.0 vassals:
//! wait-for-command, spawn, respawn, stop, log, reset, malformed datagrams; ctl's table,
//! JSON, commands and error messages.

mod common;

use std::process::Output;

use common::*;

fn ctl(args: &[&str]) -> Output {
    ctl_command(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn command_socket_and_ctl_drive_real_uwsgi_vassals() {
    require_uwsgi();
    let (work, dir) = work_dir();
    let wsock = work.path().join("w.sock");
    let fsock = work.path().join("free.sock");
    write_vassal(&dir, "w.ini", &wsock, "");
    write_vassal(&dir, "free.ini", &fsock, "");
    // Never loads its app: exits at once, and backs off for a minute.
    write_vassal(
        &dir,
        "bad.ini",
        &work.path().join("bad.sock"),
        "need-app = true\nwsgi-file = /nonexistent/app.py\n",
    );
    let cmd = work.path().join("cmd.sock");
    let (mut emp, st) = start_emperor(
        work.path(),
        &dir,
        &[
            "--emperor-command-socket",
            cmd.to_str().unwrap(),
            "--emperor-wait-for-command",
            "--emperor-wait-for-command-ignore",
            "free.ini",
            "--emperor-wait-for-command-ignore",
            "bad.ini",
            "--emperor-throttle",
            "60000",
        ],
    );
    emp.wait_for_line("\"wait-for-command\" instance w.ini detected", T);
    let v = wait_vassal(&mut emp, &st, "w.ini", T, "suspended", |v| {
        v["state"] == "suspended"
    });
    assert_eq!(
        (v["suspended"].as_u64(), v["pid"].as_i64()),
        (Some(1), Some(-1))
    );
    wait_vassal(&mut emp, &st, "free.ini", T, "accepting", |v| {
        v["accepting"] == 1
    });

    // spawn
    send(&cmd, &datagram(&[("cmd", "spawn"), ("vassal", "w.ini")]));
    let v = wait_vassal(&mut emp, &st, "w.ini", T, "spawned", |v| {
        v["accepting"] == 1
    });
    assert_eq!(v["suspended"], 0);
    let pid = v["pid"].as_i64().unwrap();
    assert_eq!(hello(&wsock).0, 200);

    // respawn (= reload: byte 1, same pid), with the `command` key spelling
    send(
        &cmd,
        &datagram(&[("command", "respawn"), ("vassal", "w.ini")]),
    );
    emp.wait_for_line("reloading vassal w.ini (command)", T);
    let v = wait_vassal(&mut emp, &st, "w.ini", T, "reloaded", |v| {
        v["respawns"] == 1 && v["accepting"] == 1
    });
    assert_eq!(v["pid"].as_i64(), Some(pid));

    // log
    send(
        &cmd,
        &datagram(&[("cmd", "log"), ("msg", "hello from the command socket")]),
    );
    emp.wait_for_line("hello from the command socket", T);

    // Malformed or wrong datagrams are logged, never fatal.
    send(&cmd, b"\0\0");
    emp.wait_for_line("ignoring a malformed datagram (2 bytes)", T);
    send(&cmd, b"\0\0\0\0\x03\0cmd\x40\0stop");
    emp.wait_for_line("malformed vars", T);
    send(&cmd, &datagram(&[("cmd", "dance"), ("vassal", "w.ini")]));
    emp.wait_for_line("unknown command `dance`", T);
    send(&cmd, &datagram(&[("cmd", "stop"), ("vassal", "nope.ini")]));
    emp.wait_for_line("no vassal named nope.ini", T);
    assert!(vassal(&stats(&st), "w.ini").is_some());

    // stop: the process goes, the vassal stays suspended (even across rescans).
    send(&cmd, &datagram(&[("cmd", "stop"), ("vassal", "w.ini")]));
    emp.wait_for_line(&format!("vassal w.ini (pid: {pid}) stopped"), T);
    wait_vassal(&mut emp, &st, "w.ini", T, "suspended again", |v| {
        v["state"] == "suspended" && v["pid"] == -1 && v["suspended"] == 1
    });
    emp.signal(libc::SIGWINCH);
    emp.wait_for_new_line("rescanning every monitor", T);
    assert_eq!(vassal(&stats(&st), "w.ini").unwrap()["state"], "suspended");

    // ctl status: an aligned table, and the raw JSON.
    let s = st.to_str().unwrap();
    let c = cmd.to_str().unwrap();
    let out = ctl(&["--stats", s, "status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{table}");
    for h in [
        "STATE",
        "PID",
        "LOYAL",
        "READY/ACC",
        "RESTARTS",
        "BACKOFF",
        "LAST EXIT",
    ] {
        assert!(lines[0].contains(h), "{h}: {table}");
    }
    let state_col = lines[0].find("STATE").unwrap();
    let w = lines.iter().find(|l| l.starts_with("w.ini")).unwrap();
    assert_eq!(
        &w[state_col..state_col + "suspended".len()],
        "suspended",
        "{table}"
    );
    let f = lines.iter().find(|l| l.starts_with("free.ini")).unwrap();
    assert_eq!(
        &f[state_col..state_col + "running".len()],
        "running",
        "{table}"
    );
    let out = ctl(&["--stats", s, "status", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["vassals"].as_array().unwrap().len(), 3);

    // ctl spawn / reload / reset
    let out = ctl(&["--stats", s, "--command-socket", c, "spawn", "w.ini"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_vassal(&mut emp, &st, "w.ini", T, "spawned by ctl", |v| {
        v["accepting"] == 1
    });
    let out = ctl(&["--stats", s, "--command-socket", c, "reload", "free.ini"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_vassal(&mut emp, &st, "free.ini", T, "reloaded by ctl", |v| {
        v["respawns"] == 1
    });
    // bad.ini waits a minute after its first failure; reset retries it at once.
    wait_vassal(&mut emp, &st, "bad.ini", T, "backing off", |v| {
        v["attempt"] == 1 && v["state"] == "waiting"
    });
    let out = ctl(&["--stats", s, "--command-socket", c, "reset", "bad.ini"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    emp.wait_for_line("backoff of vassal bad.ini lifted", T);
    wait_vassal(&mut emp, &st, "bad.ini", T, "retried at once", |v| {
        v["restarts"].as_u64().unwrap_or(0) >= 1
    });

    // Errors say what to check.
    let out = ctl(&["--stats", s, "--command-socket", c, "stop", "nope.ini"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("no vassal named nope.ini"), "{err}");
    assert!(err.contains("known: bad.ini, free.ini, w.ini"), "{err}");
    assert!(err.contains("status"), "{err}");
    let missing = work.path().join("missing.sock");
    let out = ctl(&["--stats", missing.to_str().unwrap(), "status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("check that the emperor is running with --emperor-stats"),
        "{}",
        text(&out.stderr)
    );
    let out = ctl(&[
        "--command-socket",
        missing.to_str().unwrap(),
        "stop",
        "w.ini",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--emperor-command-socket"),
        "{}",
        text(&out.stderr)
    );
    let out = ctl(&["status"]);
    assert!(text(&out.stderr).contains("pass --stats ADDR"));
}

#[test]
fn udp_command_socket_with_ctl() {
    let (work, dir) = work_dir();
    // A fake vassal: ready, accepting, loyal, then waits for the stop byte.
    let fake = work.path().join("fake.sh");
    std::fs::write(
        &fake,
        "#!/bin/bash\nprintf '\\x01\\x05\\x11' >&\"$UWSGI_EMPEROR_FD\"\nhead -c 1 <&\"$UWSGI_EMPEROR_FD\" >/dev/null\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("a.ini"), "[uwsgi]\n").unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let (mut emp, st) = start_emperor(
        work.path(),
        &dir,
        &[
            "--emperor-wrapper",
            fake.to_str().unwrap(),
            "--emperor-command-socket",
            &addr,
            "--emperor-command-allow-udp",
        ],
    );
    emp.wait_for_line(&format!("command socket enabled on {addr}"), T);
    wait_vassal(&mut emp, &st, "a.ini", T, "loyal", |v| v["loyal"] == 1);
    let out = ctl(&["--command-socket", &addr, "log", "over UDP"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    emp.wait_for_line("over UDP", T);
    let out = ctl(&["--command-socket", &addr, "stop", "a.ini"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_vassal(&mut emp, &st, "a.ini", T, "suspended", |v| {
        v["state"] == "suspended" && v["pid"] == -1
    });
    let out = ctl(&["--command-socket", &addr, "spawn", "a.ini"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_vassal(&mut emp, &st, "a.ini", T, "running again", |v| {
        v["loyal"] == 1 && v["restarts"] == 1
    });
}
