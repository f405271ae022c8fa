//! Broodlord end to end with real uWSGI: `echo B > master-fifo` makes the vassal send byte 30,
//! the emperor starts zergs (`--ini app.ini:zerg`, `UWSGI_BROODLORD_NUM`) each with its own
//! identity in stats, at most `--emperor-broodlord` at once; a dead zerg frees its slot and is
//! not re-created by scans; removing the base config stops the zergs.

mod common;

use std::io::Write;
use std::path::Path;

use common::*;

fn sos(fifo: &Path) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(fifo)
        .unwrap_or_else(|e| panic!("master fifo {fifo:?}: {e}"));
    f.write_all(b"B").unwrap();
}

fn environ(pid: i64) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default())
        .replace('\0', "\n")
}

fn cmdline(pid: i64) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
        .replace('\0', " ")
}

#[test]
fn byte_30_from_real_uwsgi_starts_numbered_zergs_up_to_the_limit() {
    require_uwsgi();
    let (work, dir) = work_dir();
    write_hello_app(&dir);
    let w = work.path().display();
    let cfg = dir.join("app.ini");
    // The zergs serve the same app, each on its own socket named after its number.
    std::fs::write(
        &cfg,
        format!(
            "[uwsgi]\nplugin = python3\nmaster = true\nprocesses = 1\nsocket = {w}/app.sock\n\
             wsgi-file = %dhello.py\nmaster-fifo = {w}/app.fifo\n\n\
             [zerg]\nplugin = python3\nmaster = true\nprocesses = 1\n\
             socket = {w}/zerg-$(UWSGI_BROODLORD_NUM).sock\nwsgi-file = %dhello.py\n"
        ),
    )
    .unwrap();
    let (mut emp, st) = start_emperor(work.path(), &dir, &["--emperor-broodlord", "2"]);
    wait_vassal(&mut emp, &st, "app.ini", T, "accepting", |v| {
        v["accepting"] == 1
    });
    let fifo = work.path().join("app.fifo");

    sos(&fifo);
    emp.wait_for_line(
        "vassal app.ini is going in broodlord mode: launching zerg app.ini:zerg:1",
        T,
    );
    let z1 = wait_vassal(
        &mut emp,
        &st,
        "app.ini:zerg:1",
        T,
        "zerg 1 accepting",
        |v| v["accepting"] == 1,
    );
    assert_eq!(z1["zerg"], 1);
    let pid1 = z1["pid"].as_i64().unwrap();
    assert!(environ(pid1).lines().any(|l| l == "UWSGI_BROODLORD_NUM=1"));
    assert!(
        cmdline(pid1).contains("--ini app.ini:zerg"),
        "{}",
        cmdline(pid1)
    );
    let (status, body) = hello(&work.path().join("zerg-1.sock"));
    assert_eq!(
        (status, body.as_slice()),
        (200, &b"Hello from uWSGI /hi"[..])
    );

    sos(&fifo);
    let z2 = wait_vassal(
        &mut emp,
        &st,
        "app.ini:zerg:2",
        T,
        "zerg 2 accepting",
        |v| v["accepting"] == 1,
    );
    assert!(environ(z2["pid"].as_i64().unwrap())
        .lines()
        .any(|l| l == "UWSGI_BROODLORD_NUM=2"));
    assert_eq!(hello(&work.path().join("zerg-2.sock")).0, 200);

    // At the limit: a third SOS is refused.
    sos(&fifo);
    emp.wait_for_line("already 2 zergs (--emperor-broodlord), ignored", T);
    let doc = stats(&st);
    let zergs: Vec<&str> = doc["vassals"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["zerg"] == 1)
        .filter_map(|v| v["id"].as_str())
        .collect();
    assert_eq!(zergs, ["app.ini:zerg:1", "app.ini:zerg:2"]);

    // A dead zerg is gone for good (no respawn, not re-created by a rescan) and frees a slot.
    signal(pid1 as i32, libc::SIGKILL);
    emp.wait_for_line("removed uwsgi instance app.ini:zerg:1", T);
    emp.signal(libc::SIGWINCH);
    emp.wait_for_new_line("rescanning every monitor", T);
    assert!(vassal(&stats(&st), "app.ini:zerg:1").is_none());
    sos(&fifo);
    let z1b = wait_vassal(&mut emp, &st, "app.ini:zerg:1", T, "zerg 1 again", |v| {
        // Accepting: it has read its config, which is removed next.
        v["accepting"] == 1
    });
    assert_ne!(z1b["pid"].as_i64().unwrap(), pid1);

    // The base config goes: base and zergs stop.
    std::fs::remove_file(&cfg).unwrap();
    emp.wait_for_line("base of zerg app.ini:zerg:1 is gone: stopping it", T);
    emp.wait_for_line("base of zerg app.ini:zerg:2 is gone: stopping it", T);
    let deadline = std::time::Instant::now() + T;
    while !stats(&st)["vassals"].as_array().unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "records left: {:#}\n{}",
            stats(&st),
            emp.output()
        );
        // Poll interval of a deadline-bounded wait on the emperor's state.
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
