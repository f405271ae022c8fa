//! `GET /status` rendered by headless Chromium: the vassal rows are built by the page's script
//! from `/`, so names in the dumped DOM prove the live render; a vassal added later appears in a
//! later dump. Shell-script vassals run through --emperor-wrapper (no uWSGI needed).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const INSTALL_HINT: &str =
    "install Debian's chromium package (`apt-get install chromium`; scripts/test does it)";

/// A vassal that reports ready, accepting and loyal, then exits at the first emperor byte.
const VASSAL: &str = r#"fd=$UWSGI_EMPEROR_FD
printf '\001\005\021' >&$fd
dd bs=1 count=1 <&$fd >/dev/null 2>&1
exit 0"#;

fn chromium() -> PathBuf {
    uwsgi_emperor_suite::find_in_path("chromium").unwrap_or_else(|| {
        panic!("this test needs `chromium`, which is not on PATH: {INSTALL_HINT}")
    })
}

/// A TCP port free at the time of the call.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The DOM of `/status` after its script ran for a few (virtual) seconds.
fn dump(chromium: &Path, port: u16) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--dump-dom",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("http://127.0.0.1:{port}/status"))
        .output()
        .expect("run chromium");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Dumps until `ok` holds for the DOM, up to 60 s; returns the last DOM.
fn dump_until(chromium: &Path, port: u16, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let dom = dump(chromium, port);
        if ok(&dom) {
            return dom;
        }
        assert!(
            Instant::now() < deadline,
            "status page never showed {what}:\n{dom}"
        );
    }
}

#[test]
fn status_page_shows_vassals_and_changes_live() {
    let chromium = chromium();
    let (work, dir) = work_dir();
    let wrapper = work.path().join("vassal.sh");
    write_sh(&wrapper, VASSAL);
    std::fs::write(dir.join("alpha-one.ini"), "[uwsgi]\n").unwrap();
    std::fs::write(dir.join("beta-two.ini"), "[uwsgi]\n").unwrap();
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emperor"));
    cmd.arg(&dir)
        .args([
            "--emperor-stats",
            &format!("127.0.0.1:{port}"),
            "--stats-http",
        ])
        .arg("--emperor-wrapper")
        .arg(&wrapper)
        .env("EMPEROR_LOG", "info")
        .current_dir(work.path());
    let mut emperor = Proc::spawn(cmd);
    emperor.wait_for_line("Starting the Emperor", T);

    let dom = dump_until(&chromium, port, "both vassals", |d| {
        d.contains("alpha-one.ini") && d.contains("beta-two.ini")
    });
    assert!(dom.contains("<tr class=\"vassal\">"), "{dom}");
    assert!(!dom.contains("gamma-three.ini"), "{dom}");

    std::fs::write(dir.join("gamma-three.ini"), "[uwsgi]\n").unwrap();
    dump_until(&chromium, port, "the added vassal", |d| {
        d.contains("gamma-three.ini")
    });
}
