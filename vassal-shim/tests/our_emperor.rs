//! The shim under OUR emperor (the `emperor` binary of this workspace, run with uWSGI's option
//! names and `--emperor-wrapper vassal-shim`): the same scenarios as under the real uWSGI
//! emperor (tests/real_emperor.rs), checked through the stats JSON, the program and /proc, plus
//! our emperor's own log lines.
//!
//! The emperor binary is found next to the shim in the target directory; `cargo test
//! --workspace` builds it (with `-p vassal-shim` alone, build it first: `cargo build -p emperor`).

mod common;

use std::path::Path;

use common::scenarios;
use common::*;

fn ours(extra: &dyn Fn(&Path) -> Vec<String>) -> Emperor {
    Emperor::start(&sibling_binary("emperor"), extra)
}

#[test]
fn http_app_becomes_ready_accepting_loyal_and_heartbeats() {
    let mut e = scenarios::ready_accepting_loyal_heartbeat(ours);
    wait_lines(&mut e.proc, scenarios::APP_LOYAL_LINES);
}

#[test]
fn touch_reloads_and_rm_leaves_no_process() {
    let mut e = scenarios::touch_reloads_rm_stops(ours);
    e.proc.wait_for_line("reloading vassal app.ini", SOON);
    wait_count(&mut e.proc, "vassal app.ini is ready to accept requests", 2);
    e.proc.wait_for_line("stopping vassal app.ini", SOON);
    e.proc.wait_for_line("removed uwsgi instance app.ini", SOON);
}

/// The delay announced in "... throttling it, next attempt in N ms (attempt K)".
fn next_attempt_ms(line: &str) -> u64 {
    let tail = line.split("next attempt in ").nth(1).unwrap_or_default();
    let ms = tail.split(' ').next().unwrap_or_default();
    ms.parse()
        .unwrap_or_else(|_| panic!("no delay in {line:?}"))
}

#[test]
fn crashing_program_is_backed_off() {
    let mut e = scenarios::crash_is_blacklisted(ours);
    let first = e.proc.wait_for_line("(attempt 1)", SOON);
    let second = e.proc.wait_for_line("(attempt 2)", SOON);
    assert!(
        first.contains("unloyal bad behaving vassal crash.ini"),
        "{first}"
    );
    assert!(
        next_attempt_ms(&second) > next_attempt_ms(&first),
        "the backoff does not grow: {first} / {second}"
    );
    assert!(!e.proc.output().contains("vassal crash.ini is now loyal"));
}

#[test]
fn hung_program_is_killed_after_required_heartbeat() {
    let mut e = scenarios::hung_program_is_killed(ours);
    e.proc.wait_for_line(
        "vassal hang.ini sent no heartbeat in the last 3 seconds",
        SOON,
    );
    wait_count(&mut e.proc, "vassal hang.ini has been spawned", 2);
}

#[test]
fn sd_notify_app_works_unchanged() {
    let mut e = scenarios::sd_notify_app(ours);
    wait_lines(&mut e.proc, scenarios::NOTIFY_LINES);
}

#[test]
fn socket_activation_with_on_demand_socket() {
    let mut e = scenarios::on_demand_socket_activation(ours);
    e.proc.wait_for_line("socket activation", SOON);
    e.proc.wait_for_line("sending stop-me (22)", SOON);
    e.proc
        .wait_for_line("\"on demand\" instance lazy.ini detected", SOON);
    e.proc
        .wait_for_line("bringing back instance lazy.ini to on-demand mode", SOON);
    wait_count(
        &mut e.proc,
        "connection on the socket of \"on demand\" vassal lazy.ini",
        2,
    );
}

#[test]
fn sos_starts_a_broodlord_zerg() {
    let mut e = scenarios::broodlord_zerg(ours, "brood.ini:zerg:1");
    e.proc
        .wait_for_line("vassal brood.ini:zerg:1 is now loyal", SOON);
}
