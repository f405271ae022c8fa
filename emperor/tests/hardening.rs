//! Hostile or unlucky conditions against real uWSGI vassals: dead vassals are not reported as
//! serving, a vassal flooding its channel cannot stop the loop, stats clients cannot exhaust
//! the fd table, and command sockets obey only their owner and root, logging safely.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn ctl_status(stats: &Path) -> String {
    let out: Output = ctl_command(&["--stats", stats.to_str().unwrap(), "status"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The READY/ACC cell of `name`'s row in a `ctl status` table.
fn ready_cell(table: &str, name: &str) -> String {
    let head = table.lines().next().unwrap();
    let col = head.find("READY/ACC").unwrap();
    let row = table.lines().find(|l| l.starts_with(name)).unwrap();
    row[col..].split_whitespace().next().unwrap().to_string()
}

#[test]
fn crashed_and_stopped_vassals_are_not_reported_ready() {
    require_uwsgi();
    let (work, dir) = work_dir();
    let (csock, ssock) = (work.path().join("c.sock"), work.path().join("s.sock"));
    write_vassal(&dir, "crash.ini", &csock, "");
    write_vassal(&dir, "stop.ini", &ssock, "");
    let cmd = work.path().join("cmd.sock");
    let (mut emp, st) = start_emperor(
        work.path(),
        &dir,
        &[
            "--emperor-command-socket",
            cmd.to_str().unwrap(),
            // A crash before loyalty waits a minute: long enough to look at it.
            "--emperor-throttle",
            "60000",
        ],
    );
    let c = wait_vassal(&mut emp, &st, "crash.ini", T, "accepting", |v| {
        v["ready"] == 1 && v["accepting"] == 1
    });
    wait_vassal(&mut emp, &st, "stop.ini", T, "accepting", |v| {
        v["accepting"] == 1
    });
    assert_eq!(ready_cell(&ctl_status(&st), "crash.ini"), "1/1");

    // A crash (no request served, so not loyal): waiting for its backoff, with no process.
    let pid = c["pid"].as_i64().unwrap() as i32;
    signal(pid, libc::SIGKILL);
    let c = wait_vassal(&mut emp, &st, "crash.ini", T, "waiting", |v| {
        v["state"] == "waiting"
    });
    assert_eq!(
        (&c["pid"], &c["ready"], &c["accepting"], &c["loyal"]),
        (&(-1).into(), &0.into(), &0.into(), &0.into()),
        "{c:#}"
    );
    assert_ne!(c["last_ready"], 0, "when it last was ready stays known");

    // Loyal (it served a request), then stopped by a command: suspended, with no process.
    assert_eq!(hello(&ssock).0, 200);
    wait_vassal(&mut emp, &st, "stop.ini", T, "loyal", |v| v["loyal"] == 1);
    send(&cmd, &datagram(&[("cmd", "stop"), ("vassal", "stop.ini")]));
    let s = wait_vassal(&mut emp, &st, "stop.ini", T, "suspended", |v| {
        v["state"] == "suspended"
    });
    assert_eq!(
        (&s["pid"], &s["ready"], &s["accepting"], &s["loyal"]),
        (&(-1).into(), &0.into(), &0.into(), &0.into()),
        "{s:#}"
    );
    let table = ctl_status(&st);
    assert_eq!(ready_cell(&table, "crash.ini"), "-", "{table}");
    assert_eq!(ready_cell(&table, "stop.ini"), "-", "{table}");
}

fn script(path: &Path, body: &str) {
    write_sh(path, body);
}

/// Lines of the emperor's output containing `needle`.
fn count(emp: &mut Proc, needle: &str) -> usize {
    emp.output().lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn a_vassal_flooding_its_channel_cannot_stop_the_loop() {
    let uwsgi = require_uwsgi();
    let (work, dir) = work_dir();
    let sock = work.path().join("app.sock");
    write_vassal(&dir, "app.ini", &sock, "");
    std::fs::write(dir.join("hb.ini"), "[uwsgi]\n").unwrap();
    // hb.ini floods valid heartbeat bytes (26) without pause; flood.ini random bytes; anything
    // else is a real uWSGI vassal.
    let wrap = work.path().join("wrap.sh");
    script(
        &wrap,
        &format!(
            "case \"$2\" in\n\
             hb.ini) exec tr '\\000' '\\032' </dev/zero >&$UWSGI_EMPEROR_FD ;;\n\
             flood.ini) exec cat /dev/urandom >&$UWSGI_EMPEROR_FD ;;\n\
             *) exec {} \"$@\" ;;\n\
             esac",
            uwsgi.display()
        ),
    );
    let (mut emp, st) = start_emperor(
        work.path(),
        &dir,
        &["--emperor-wrapper", wrap.to_str().unwrap()],
    );
    wait_vassal(&mut emp, &st, "hb.ini", T, "running", |v| {
        v["pid"].as_i64().unwrap_or(-1) > 0 && v["last_heartbeat"] != 0
    });
    // While hb.ini floods: stats answer, a request makes app.ini loyal, and once killed its
    // process is reaped (not left a zombie) and a new one serves.
    let v = wait_vassal(&mut emp, &st, "app.ini", T, "accepting", |v| {
        v["accepting"] == 1
    });
    assert_eq!(hello(&sock).0, 200);
    wait_vassal(&mut emp, &st, "app.ini", T, "loyal", |v| v["loyal"] == 1);
    let old = v["pid"].as_i64().unwrap() as i32;
    signal(old, libc::SIGKILL);
    wait_vassal(&mut emp, &st, "app.ini", T, "respawned", |v| {
        v["pid"]
            .as_i64()
            .is_some_and(|p| p > 0 && p != i64::from(old))
            && v["accepting"] == 1
    });
    wait_gone(old, T);
    assert_eq!(hello(&sock).0, 200);

    // Random bytes: killed as broken and retried with backoff; few log lines.
    std::fs::write(dir.join("flood.ini"), "[uwsgi]\n").unwrap();
    emp.wait_for_line("vassal flood.ini sent unknown byte", T);
    emp.wait_for_line("killing it as broken", T);
    let f = wait_vassal(&mut emp, &st, "flood.ini", T, "backing off", |v| {
        v["attempt"].as_u64().unwrap_or(0) >= 1
    });
    assert!(
        f["channel_unknown_bytes"].as_u64().unwrap() >= 4096,
        "{f:#}"
    );
    assert_eq!(hello(&sock).0, 200);
    // Retried after its backoff, and killed again.
    wait_vassal(&mut emp, &st, "flood.ini", T, "retried", |v| {
        v["attempt"].as_u64().unwrap_or(0) >= 2
    });
    let warnings = count(&mut emp, "unknown byte");
    let kills = count(&mut emp, "killing it as broken");
    assert!(kills >= 2, "{kills}");
    // One warning per start (the rest are counted), not one per byte.
    assert!(
        warnings <= 2 * kills + 2,
        "{warnings} warnings for {kills} floods"
    );
    let log = emp.output().len();
    eprintln!("{kills} floods: {warnings} unknown-byte lines, log of {log} bytes");
    // One line per unknown byte (the old behaviour) writes tens of MiB in the time this test
    // runs; a handful of floods with counted warnings write a few tens of KiB. 1 MiB leaves room
    // for a loaded machine's extra uWSGI output while still telling the two apart.
    if log >= 256 * 1024 {
        let out = emp.output();
        let mut lines: Vec<&str> = out.lines().map(|l| l.get(30..).unwrap_or(l)).collect();
        lines.sort();
        lines.dedup();
        eprintln!(
            "{} distinct lines; sample: {:?}",
            lines.len(),
            &lines[..lines.len().min(40)]
        );
    }
    assert!(log < 1024 * 1024, "log of {log} bytes");
    assert!(
        vassal(&stats(&st), "hb.ini").unwrap()["pid"]
            .as_i64()
            .unwrap()
            > 0
    );
}

const NOBODY: u32 = 65534;

/// `emperor ctl ARGS` run as `nobody` (the tests run as root).
fn ctl_as_nobody(args: &[&str]) -> Output {
    use std::os::unix::process::CommandExt;
    let mut c = ctl_command(args);
    // SAFETY: only async-signal-safe syscalls (setgroups, setgid, setuid) run in the child.
    unsafe {
        c.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(NOBODY) != 0
                || libc::setuid(NOBODY) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c.output().unwrap()
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_command_socket_obeys_only_root_and_the_emperors_user_and_logs_safely() {
    require_uwsgi();
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("skipped: needs root to send as another user");
        return;
    }
    // `nobody` must reach the socket's directory (the sockets' own modes are what is tested).
    let (work, dir) = shared_work_dir();
    let sock = work.path().join("w.sock");
    write_vassal(&dir, "w.ini", &sock, "");
    let cmd = work.path().join("cmd.sock");
    let c = cmd.to_str().unwrap();
    let (mut emp, st) = start_emperor(work.path(), &dir, &["--emperor-command-socket", c]);
    let v = wait_vassal(&mut emp, &st, "w.ini", T, "accepting", |v| {
        v["accepting"] == 1
    });
    let pid = v["pid"].clone();
    assert_eq!(mode(&cmd), 0o600, "only its owner may write to it");

    // Another user cannot even send (mode 0600)...
    let out = ctl_as_nobody(&["--command-socket", c, "stop", "w.ini"]);
    assert!(!out.status.success(), "{out:?}");
    // ...and if the socket is opened up by mistake, its datagrams are refused by credentials.
    std::fs::set_permissions(&cmd, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let out = ctl_as_nobody(&["--command-socket", c, "stop", "w.ini"]);
    assert!(out.status.success(), "{out:?}");
    emp.wait_for_line(
        &format!("command socket: refused a datagram from uid {NOBODY}"),
        T,
    );
    // A marker from root, read after nobody's datagram: the stop was not obeyed.
    send(&cmd, &datagram(&[("cmd", "log"), ("msg", "marker one")]));
    emp.wait_for_line("marker one", T);
    let v = vassal(&stats(&st), "w.ini").unwrap();
    assert_eq!((&v["state"], &v["pid"]), (&"running".into(), &pid), "{v:#}");

    // A `log` message cannot forge a line: its newline is escaped.
    send(
        &cmd,
        &datagram(&[
            ("cmd", "log"),
            ("msg", "deploy 42\n2026-01-01T00:00:00Z  INFO FORGED line"),
        ]),
    );
    let line = emp.wait_for_line("deploy 42", T);
    assert!(
        line.contains("deploy 42\\n2026-01-01T00:00:00Z  INFO FORGED line"),
        "{line}"
    );
    assert_eq!(count(&mut emp, "FORGED"), 1);
    assert!(!emp.output().lines().any(|l| l.starts_with("2026-01-01")));

    // A burst of malformed datagrams: a few lines, not one per datagram.
    for _ in 0..500 {
        send(&cmd, b"\0\0");
    }
    send(&cmd, &datagram(&[("cmd", "log"), ("msg", "marker two")]));
    emp.wait_for_line("marker two", T);
    let malformed = count(&mut emp, "ignoring a malformed datagram");
    assert!(
        (1..=10).contains(&malformed),
        "{malformed} lines for 500 datagrams"
    );

    // The emperor's own user (root here) is obeyed.
    send(&cmd, &datagram(&[("cmd", "stop"), ("vassal", "w.ini")]));
    wait_vassal(&mut emp, &st, "w.ini", T, "suspended", |v| {
        v["state"] == "suspended"
    });
}

#[test]
fn a_udp_command_socket_needs_an_explicit_option_and_binds_loopback() {
    let (work, dir) = work_dir();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!(":{port}");
    let mut refused = Proc::spawn({
        let mut c = Command::new(env!("CARGO_BIN_EXE_emperor"));
        c.arg(&dir)
            .args(["--emperor-command-socket", &addr])
            .env("EMPEROR_LOG", "info")
            .current_dir(work.path());
        c
    });
    assert!(!refused.wait_exit(T).success());
    refused.wait_for_line("--emperor-command-allow-udp", T);
    let (mut emp, _st) = start_emperor(
        work.path(),
        &dir,
        &[
            "--emperor-command-socket",
            &addr,
            "--emperor-command-allow-udp",
        ],
    );
    emp.wait_for_line(&format!("command socket 127.0.0.1:{port} is UDP"), T);
    // Only loopback is bound, not every interface.
    let local = format!(":{port:04X} ");
    let udp_table = std::fs::read_to_string("/proc/net/udp").unwrap();
    let bound: Vec<&str> = udp_table
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|a| format!("{a} ").ends_with(&local))
        .collect();
    assert_eq!(bound, [format!("0100007F:{port:04X}")], "{udp_table}");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(
        &datagram(&[("cmd", "log"), ("msg", "over udp")]),
        ("127.0.0.1", port),
    )
    .unwrap();
    emp.wait_for_line("over udp", T);
}

/// One stats document from a `--stats-http` unix socket.
fn http_stats(path: &Path) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path)
        .unwrap_or_else(|e| panic!("stats {path:?}: {e}"));
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out)
        .unwrap_or_else(|e| panic!("stats {path:?} did not answer: {e}"));
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("invalid stats ({e}): {out}"))
}

#[test]
fn idle_stats_clients_cannot_exhaust_the_fd_table() {
    // The client cap: 64 clients at most, whatever the limit.
    idle_clients_against(256);
    // The reserve: with 100 descriptors, clients stop well before the cap.
    idle_clients_against(100);
}

/// 400 idle `--stats-http` clients (replaced as the emperor closes them) against an emperor
/// with RLIMIT_NOFILE `limit`: stats answer, a killed vassal is respawned.
fn idle_clients_against(limit: u64) {
    use std::os::unix::process::CommandExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const IDLE: usize = 400;
    require_uwsgi();
    let (work, dir) = work_dir();
    let sock = work.path().join("app.sock");
    write_vassal(&dir, "app.ini", &sock, "");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emperor"));
    // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            let l = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (mut emp, st) = start_emperor_with(cmd, work.path(), &dir, &["--stats-http"]);
    let app = |st: &Path| vassal(&http_stats(st), "app.ini").unwrap();
    let deadline = std::time::Instant::now() + T;
    let old = loop {
        let v = app(&st);
        if v["accepting"] == 1 {
            break v["pid"].as_i64().unwrap() as i32;
        }
        assert!(std::time::Instant::now() < deadline, "{v:#}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    // More idle clients than the emperor has descriptors, kept connected: each one closed by
    // the emperor is replaced.
    let stop = Arc::new(AtomicBool::new(false));
    let connects = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hammer = {
        let (st, stop, connects) = (st.clone(), stop.clone(), connects.clone());
        std::thread::spawn(move || {
            let mut conns: Vec<Option<std::os::unix::net::UnixStream>> =
                (0..IDLE).map(|_| None).collect();
            while !stop.load(Ordering::Relaxed) {
                for c in conns.iter_mut() {
                    let closed = match c {
                        None => true,
                        Some(s) => {
                            use std::io::Read;
                            // Idle clients send nothing, so the emperor only ever closes them.
                            let mut b = [0u8; 64];
                            match s.read(&mut b) {
                                Ok(0) => true,
                                Ok(_) => false,
                                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                            }
                        }
                    };
                    if closed {
                        *c = std::os::unix::net::UnixStream::connect(&st).ok();
                        if let Some(s) = c {
                            s.set_nonblocking(true).unwrap();
                            connects.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                // Pacing of the load generator (not a synchronisation).
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    // Every idle client connected once, and as many again replaced after the emperor closed
    // them.
    let deadline = std::time::Instant::now() + T;
    while connects.load(Ordering::Relaxed) < 2 * IDLE {
        assert!(std::time::Instant::now() < deadline, "{}", emp.output());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Stats still answer, and a killed vassal is reaped and respawned.
    signal(old, libc::SIGKILL);
    let deadline = std::time::Instant::now() + T;
    loop {
        let v = app(&st);
        let pid = v["pid"].as_i64().unwrap_or(-1);
        if pid > 0 && pid != i64::from(old) && v["accepting"] == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not respawned: {v:#}\n{}",
            emp.output()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    wait_gone(old, T);
    assert_eq!(hello(&sock).0, 200);
    let fds = std::fs::read_dir(format!("/proc/{}/fd", emp.pid()))
        .unwrap()
        .count();
    assert!(fds <= 64 + 32 && (fds as u64) < limit, "{fds} fds open");
    if limit < 64 * 2 {
        emp.wait_for_line(
            "stats: fewer than 64 of 100 file descriptors would be left",
            T,
        );
    }
    stop.store(true, Ordering::Relaxed);
    drop(emp);
    let _ = hammer.join();
}

#[test]
fn after_dropping_privileges_the_emperors_new_user_may_command() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("skipped: needs root to drop privileges");
        return;
    }
    let (work, dir) = shared_work_dir();
    let cmd = work.path().join("cmd.sock");
    let c = cmd.to_str().unwrap();
    let (mut emp, _st) = start_emperor(
        work.path(),
        &dir,
        &[
            "--emperor-command-socket",
            c,
            "--uid",
            "nobody",
            "--gid",
            "nogroup",
        ],
    );
    emp.wait_for_line("dropped privileges", T);
    assert_eq!(mode(&cmd), 0o600, "still private");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&cmd).unwrap().uid(),
        NOBODY,
        "handed to the new user"
    );
    // The user the emperor now runs as can send it commands (it could not when the file
    // stayed root's).
    let out = ctl_as_nobody(&["--command-socket", c, "log", "marker from nobody"]);
    assert!(out.status.success(), "{out:?}");
    emp.wait_for_line("marker from nobody", T);
}
