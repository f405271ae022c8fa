//! On-demand vassals end to end: a real uWSGI vassal activated by its first request and
//! brought back by `idle` + `die-on-idle`; 1,000 activations of a tiny fake vassal without an
//! fd leak; the exec lookup with TCP (IPv4 and IPv6) sockets; a unix path too long for
//! sockaddr_un.

mod common;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Path;

use common::*;

fn script(path: &Path, body: &str) {
    write_executable(path, body);
}

/// A vassal that accepts one connection on fd 0 (the on-demand listener), answers `ok`, sends
/// byte 22 ("idle, stop me") and exits at the stop byte.
const FAKE: &str = r#"#!/usr/bin/perl
open(my $l, "+<&=", 0) or die "fd 0: $!";
accept(my $c, $l) or die "accept: $!";
syswrite($c, "ok\n");
close($c);
open(my $e, "+<&=", $ENV{UWSGI_EMPEROR_FD}) or die "channel: $!";
syswrite($e, chr(22));
sysread($e, my $b, 1);
exit 0;
"#;

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn ask(addr: &str) -> String {
    let mut out = String::new();
    if addr.contains(':') {
        let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
        s.set_read_timeout(Some(T)).unwrap();
        s.read_to_string(&mut out).unwrap();
    } else {
        let mut s = UnixStream::connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
        s.set_read_timeout(Some(T)).unwrap();
        s.read_to_string(&mut out).unwrap();
    }
    out
}

#[test]
fn real_uwsgi_vassal_is_started_by_its_first_request_and_comes_back_after_idle() {
    require_uwsgi();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("vassals");
    let od = work.path().join("od");
    std::fs::create_dir(&dir).unwrap();
    std::fs::create_dir(&od).unwrap();
    write_hello_app(&dir);
    // No `socket` line: uWSGI serves the inherited listener on fd 0.
    std::fs::write(
        dir.join("od1.ini"),
        "[uwsgi]\nplugin = python3\nmaster = true\nprocesses = 1\nwsgi-file = %dhello.py\n\
         idle = 1\ndie-on-idle = true\n",
    )
    .unwrap();
    let (mut emp, st) = start_emperor(
        work.path(),
        &dir,
        &["--emperor-on-demand-directory", od.to_str().unwrap()],
    );
    let sock = od.join("od1.socket");
    let v = wait_vassal(&mut emp, &st, "od1.ini", T, "on demand", |v| {
        v["state"] == "on-demand" && v["on_demand"] != ""
    });
    assert_eq!(v["on_demand"], sock.to_str().unwrap());
    assert_eq!(v["pid"], -1);
    let mode = std::fs::metadata(&sock).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o666
    );
    emp.wait_for_line("\"on demand\" instance od1.ini detected", T);
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&sock).unwrap());

    // The first request starts the vassal, which serves it from the pending connection.
    let (status, body) = hello(&sock);
    assert_eq!(status, 200);
    assert_eq!(body, b"Hello from uWSGI /hi");
    emp.wait_for_line("starting it", T);
    let first = emp.wait_for_line("started vassal od1.ini (pid: ", T);
    // Idle for a second: byte 22, the emperor stops it and re-arms the listener.
    emp.wait_for_line("bringing back instance od1.ini to on-demand mode", T);
    emp.wait_for_line("vassal od1.ini back to \"on demand\" mode", T);
    let v = wait_vassal(&mut emp, &st, "od1.ini", T, "back to on demand", |v| {
        v["state"] == "on-demand" && v["pid"] == -1
    });
    assert_eq!(v["restarts"], 0);
    // The same listener (not a new bind) survives the vassal.
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::ino(&meta), ino);

    // A config change while inactive is only recorded: no process starts.
    touch(&dir.join("od1.ini"));
    emp.wait_for_line("updated configuration for on-demand instance od1.ini", T);
    let v = vassal(&stats(&st), "od1.ini").unwrap();
    assert_eq!(
        (v["state"].as_str(), v["pid"].as_i64()),
        (Some("on-demand"), Some(-1))
    );

    // The next request spawns it again (a new process).
    let (status, body) = hello(&sock);
    assert_eq!(
        (status, body.as_slice()),
        (200, &b"Hello from uWSGI /hi"[..])
    );
    let second = emp.wait_for_new_line("started vassal od1.ini (pid: ", T);
    assert_ne!(first, second);
    wait_vassal(&mut emp, &st, "od1.ini", T, "second activation", |v| {
        v["restarts"] == 1
    });
}

#[test]
fn a_thousand_activations_leak_no_fd() {
    let (work, dir) = work_dir();
    let fake = work.path().join("fake.pl");
    script(&fake, FAKE);
    std::fs::write(dir.join("app.ini"), "[uwsgi]\n").unwrap();
    let sock = work.path().join("app.sock");
    std::fs::write(dir.join("app.ini.sock"), format!("{}\n", sock.display())).unwrap();
    let (mut emp, st) = start_emperor(
        work.path(),
        &dir,
        &[
            "--emperor-wrapper",
            fake.to_str().unwrap(),
            "--emperor-on-demand-extension",
            ".sock",
        ],
    );
    wait_vassal(&mut emp, &st, "app.ini", T, "on demand", |v| {
        v["state"] == "on-demand" && v["on_demand"] != ""
    });
    let before = fd_count(emp.pid());
    const N: usize = 1000;
    for i in 0..N {
        assert_eq!(ask(sock.to_str().unwrap()), "ok\n", "activation {i}");
    }
    let v = wait_vassal(&mut emp, &st, "app.ini", T, "1000 activations", |v| {
        v["state"] == "on-demand" && v["restarts"] == N as u64 - 1
    });
    assert_eq!(v["pid"], -1);
    let after = fd_count(emp.pid());
    assert_eq!(
        before, after,
        "emperor fds before/after {N} activations differ"
    );
    eprintln!("emperor fds before and after {N} activations: {before} / {after}");
}

#[test]
fn exec_lookup_binds_tcp_v4_and_v6_sockets() {
    let (work, dir) = work_dir();
    let fake = work.path().join("fake.pl");
    script(&fake, FAKE);
    let free = |a: &str| {
        std::net::TcpListener::bind(a)
            .ok()
            .map(|l| l.local_addr().unwrap().port())
    };
    let p4 = free("127.0.0.1:0").unwrap();
    // IPv6 is part of what this test proves: no silent skip when the loopback lacks it.
    let p6 = free("[::1]:0").expect(
        "this test needs the IPv6 loopback [::1] (enable it: sysctl net.ipv6.conf.lo.disable_ipv6=0)",
    );
    // The lookup of v4.ini blocks until the test creates `go` (at most ~30 s): meanwhile the
    // emperor keeps serving stats, so the command does not block its loop.
    let go = work.path().join("go");
    let lookup = work.path().join("lookup.sh");
    script(
        &lookup,
        &format!(
            "#!/bin/sh\ncase \"$1\" in\n  v4.ini) i=0; while [ ! -e {go} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done\n    echo 127.0.0.1:{p4} ;;\n  v6.ini) echo '[::1]:{}' ;;\nesac\n",
            p6,
            go = go.display()
        ),
    );
    std::fs::write(dir.join("v4.ini"), "[uwsgi]\n").unwrap();
    std::fs::write(dir.join("v6.ini"), "[uwsgi]\n").unwrap();
    std::fs::write(dir.join("plain.ini"), "[uwsgi]\n").unwrap();
    let (mut emp, st) = start_emperor(
        work.path(),
        &dir,
        &[
            "--emperor-wrapper",
            fake.to_str().unwrap(),
            "--emperor-on-demand-exec",
            lookup.to_str().unwrap(),
        ],
    );
    let addr4 = format!("127.0.0.1:{p4}");
    let v = wait_vassal(&mut emp, &st, "v4.ini", T, "looking up", |v| {
        v["state"] == "on-demand"
    });
    assert_eq!(v["on_demand"], "", "still looking up");
    // Another vassal's lookup finishes while v4.ini's is still running.
    wait_vassal(&mut emp, &st, "v6.ini", T, "bound", |v| {
        v["on_demand"] != ""
    });
    assert_eq!(vassal(&stats(&st), "v4.ini").unwrap()["on_demand"], "");
    std::fs::write(&go, "").unwrap();
    wait_vassal(&mut emp, &st, "v4.ini", T, "bound", |v| {
        v["on_demand"] == addr4.as_str()
    });
    assert_eq!(ask(&addr4), "ok\n");
    emp.wait_for_line("vassal v4.ini back to \"on demand\" mode", T);
    let addr6 = format!("[::1]:{p6}");
    wait_vassal(&mut emp, &st, "v6.ini", T, "bound", |v| {
        v["on_demand"] == addr6.as_str()
    });
    assert_eq!(ask(&addr6), "ok\n");
    emp.wait_for_line("vassal v6.ini back to \"on demand\" mode", T);
    // Every lookup child was reaped by the emperor's loop: no zombie is left.
    let deadline = std::time::Instant::now() + T;
    loop {
        let zombies: Vec<i32> = children(emp.pid() as i32)
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .map(|s| {
                        s.rsplit_once(')')
                            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
                    })
                    .unwrap_or(false)
            })
            .collect();
        if zombies.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "unreaped children {zombies:?}"
        );
        // Poll interval of a deadline-bounded wait.
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The command printed nothing for plain.ini: an ordinary vassal (the fake has no
    // listener, so it dies and is retried).
    wait_vassal(
        &mut emp,
        &st,
        "plain.ini",
        T,
        "started as a plain vassal",
        |v| v["on_demand"] == "" && v["state"] != "on-demand",
    );
}

#[test]
fn a_unix_path_too_long_for_sockaddr_un_is_refused_with_a_message() {
    let (work, dir) = work_dir();
    let long = work.path().join("x".repeat(120)).join("app.sock");
    std::fs::write(dir.join("app.ini"), "[uwsgi]\n").unwrap();
    std::fs::write(dir.join("app.ini.od"), long.to_str().unwrap()).unwrap();
    let (mut emp, st) = start_emperor(
        work.path(),
        &dir,
        &[
            "--emperor-wrapper",
            "/bin/true",
            "--emperor-on-demand-ext",
            ".od",
        ],
    );
    let line = emp.wait_for_line("cannot set up the on-demand socket of vassal app.ini", T);
    assert!(line.contains("at most 107"), "{line}");
    assert!(line.contains("use a shorter path"), "{line}");
    let v = wait_vassal(&mut emp, &st, "app.ini", T, "backing off", |v| {
        v["attempt"].as_u64().unwrap_or(0) >= 1
    });
    assert_eq!(v["pid"], -1);
    assert_eq!(v["restarts"], 0, "never started without its socket");
}
