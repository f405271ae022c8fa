//! Hostile or unlucky conditions against real uWSGI vassals: dead vassals are not reported as
//! serving, a vassal flooding its channel cannot stop the loop, stats clients cannot exhaust
//! the fd table, and command sockets obey only their owner and root, logging safely.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Output};

use common::*;
use uwsgi_proto::vars::VarsBuilder;

fn datagram(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut b = VarsBuilder::new();
    for (k, v) in pairs {
        b.push(k, v).unwrap();
    }
    b.into_packet(0, 0)
}

fn send(sock: &Path, packet: &[u8]) {
    UnixDatagram::unbound()
        .unwrap()
        .send_to(packet, sock)
        .unwrap_or_else(|e| panic!("command socket {sock:?}: {e}"));
}

fn ctl_status(stats: &Path) -> String {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_emperor"))
        .args(["ctl", "--stats", stats.to_str().unwrap(), "status"])
        .env_remove("EMPEROR_STATS")
        .env_remove("EMPEROR_COMMAND_SOCKET")
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
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("vassals");
    std::fs::create_dir(&dir).unwrap();
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
