//! The shim under a real uWSGI 2.0.21 emperor (`uwsgi --emperor DIR --emperor-wrapper
//! vassal-shim`): a small HTTP program that knows nothing about uWSGI becomes a well-behaved
//! vassal.

mod common;

use common::*;

fn app_ini(exec: &str, extra: &str) -> String {
    format!("[vassal-shim]\nexec = {exec}\n{extra}")
}

/// Ready, accepting and loyal without any user request; heartbeats reach the stats.
#[test]
fn http_app_becomes_ready_accepting_loyal_and_heartbeats() {
    let mut e = Emperor::uwsgi(&["--emperor-required-heartbeat", "10"]);
    let port = free_port();
    e.add(
        "app.ini",
        &app_ini(
            &testapp_exec(&format!("--port {port}")),
            &format!("ready = http://127.0.0.1:{port}/\nheartbeat = 1\nloyal-after = 1\n"),
        ),
    );
    e.proc
        .wait_for_line("vassal app.ini has been spawned", SOON);
    e.proc
        .wait_for_line("vassal app.ini is ready to accept requests", SOON);
    e.proc.wait_for_line("vassal app.ini is now loyal", SOON);
    let v = e.wait_vassal("app.ini", "heartbeat in stats", |v| {
        v["last_heartbeat"].as_i64().unwrap_or(0) > 0
    });
    assert_eq!(v["loyal"], 1, "{v}");
    assert_eq!(v["ready"], 1, "{v}");
    assert_eq!(v["accepting"], 1, "{v}");
    let stats = e.stats().unwrap();
    assert!(stats["blacklist"].as_array().unwrap().is_empty(), "{stats}");
    // The program really serves.
    assert!(http_get(port, "/").unwrap().starts_with("hello pid="));
}

/// touch = reload (a new program generation, ready and loyal again); rm = stop, and no
/// program process (including children and an escaped grandchild) is left.
#[test]
fn touch_reloads_and_rm_leaves_no_process() {
    let mut e = Emperor::uwsgi(&[]);
    let port = free_port();
    e.add(
        "app.ini",
        &app_ini(
            &testapp_exec(&format!("--port {port} --children")),
            &format!("ready = tcp:127.0.0.1:{port}\nloyal-after = 0.5\n"),
        ),
    );
    let first = e.proc.wait_for_line("listening on port", SOON);
    let pid1 = pid_in(&first, "pid=");
    let child1 = pid_in(&e.proc.wait_for_line("child=", SOON), "child=");
    let escaped1 = pid_in(&e.proc.wait_for_line("escaped=", SOON), "escaped=");
    e.proc.wait_for_line("vassal app.ini is now loyal", SOON);
    let shim_pid = e.vassal("app.ini").unwrap()["pid"].as_i64().unwrap() as i32;
    assert!(alive(shim_pid) && alive(pid1) && alive(child1) && alive(escaped1));

    e.touch("app.ini");
    e.proc
        .wait_for_new_line("reload the uwsgi instance app.ini", SOON);
    // The test app prints these three lines in this order.
    let child2 = pid_in(&e.proc.wait_for_new_line("child=", SOON), "child=");
    let escaped2 = pid_in(&e.proc.wait_for_new_line("escaped=", SOON), "escaped=");
    let second = e.proc.wait_for_new_line("listening on port", SOON);
    assert!(second.contains("gen=2"), "{second}");
    let pid2 = pid_in(&second, "pid=");
    assert_ne!(pid1, pid2);
    e.proc
        .wait_for_new_line("vassal app.ini is ready to accept requests", SOON);
    e.proc
        .wait_for_new_line("vassal app.ini is now loyal", SOON);
    wait_all_gone(&[pid1, child1, escaped1], SOON);
    // Same vassal process: the reload happened inside the shim.
    assert_eq!(
        e.vassal("app.ini").unwrap()["pid"].as_i64().unwrap() as i32,
        shim_pid
    );
    assert!(http_get(port, "/").unwrap().contains("gen=2"));

    e.remove("app.ini");
    e.proc
        .wait_for_new_line("removed uwsgi instance app.ini", SOON);
    wait_all_gone(&[shim_pid, pid2, child2, escaped2], SOON);
    assert!(
        pids_with_cmdline(&format!("--port {port}")).is_empty(),
        "program processes left behind"
    );
}

/// A program that crashes right after starting is never loyal, so the emperor throttles it.
#[test]
fn crashing_program_is_blacklisted() {
    let mut e = Emperor::uwsgi(&["--emperor-freq", "1"]);
    e.add(
        "crash.ini",
        &app_ini(&testapp_exec("--crash"), "ready = immediate\n"),
    );
    let entry = wait_until("crash.ini in the blacklist", SOON, || {
        e.blacklisted("crash.ini")
    });
    assert!(entry["throttle_level"].as_i64().is_some(), "{entry}");
    e.proc
        .wait_for_line("unloyal bad behaving vassal found: crash.ini", SOON);
    assert!(!e.proc.output().contains("vassal crash.ini is now loyal"));
}

/// A hung program (SIGSTOP) stops the heartbeats, so the emperor kills the vassal after
/// --emperor-required-heartbeat and starts it again; the stopped program does not survive.
#[test]
fn hung_program_is_killed_after_required_heartbeat() {
    let mut e = Emperor::uwsgi(&["--emperor-required-heartbeat", "3", "--emperor-freq", "1"]);
    let port = free_port();
    e.add(
        "hang.ini",
        &app_ini(
            &testapp_exec(&format!("--port {port}")),
            &format!("ready = http://127.0.0.1:{port}/\nheartbeat = 1\nloyal-after = 0.5\nprobe-timeout = 1\n"),
        ),
    );
    let pid1 = pid_in(&e.proc.wait_for_line("listening on port", SOON), "pid=");
    e.proc.wait_for_line("vassal hang.ini is now loyal", SOON);
    e.wait_vassal("hang.ini", "a heartbeat", |v| {
        v["last_heartbeat"].as_i64().unwrap_or(0) > 0
    });
    // SAFETY: kill(2) on the program's pid, read from its own output.
    unsafe {
        libc::kill(pid1, libc::SIGSTOP);
    }
    e.proc
        .wait_for_new_line("vassal hang.ini sent no heartbeat", SOON);
    wait_all_gone(&[pid1], SOON);
    let again = e.proc.wait_for_new_line("listening on port", SOON);
    assert_ne!(pid_in(&again, "pid="), pid1);
    e.proc
        .wait_for_new_line("vassal hang.ini is now loyal", SOON);
}

/// A program that speaks sd_notify (READY=1, STATUS=, WATCHDOG=1, STOPPING=1) works unchanged.
#[test]
fn sd_notify_app_works_unchanged() {
    let mut e = Emperor::uwsgi(&["--emperor-required-heartbeat", "10"]);
    let port = free_port();
    e.add(
        "notify.ini",
        &app_ini(
            &testapp_exec(&format!("--port {port} --notify --startup-delay 0.3")),
            "ready = notify\nheartbeat = 1\nwatchdog = 2\nloyal-after = 0.5\n",
        ),
    );
    e.proc
        .wait_for_line("program status: serving on port", SOON);
    e.proc
        .wait_for_line("vassal notify.ini is ready to accept requests", SOON);
    e.proc.wait_for_line("vassal notify.ini is now loyal", SOON);
    e.wait_vassal("notify.ini", "heartbeats", |v| {
        v["last_heartbeat"].as_i64().unwrap_or(0) > 0
    });
    let pid = e.vassal("notify.ini").unwrap()["pid"].as_i64().unwrap() as i32;
    e.remove("notify.ini");
    e.proc.wait_for_new_line("Stopping", SOON);
    e.proc
        .wait_for_new_line("removed uwsgi instance notify.ini", SOON);
    wait_all_gone(&[pid], SOON);
}

/// The emperor's on-demand socket reaches the program as systemd socket activation; the
/// program's idle notification sends it back to on-demand mode, and the next connection
/// starts it again.
#[test]
fn socket_activation_with_on_demand_socket() {
    let mut e = Emperor::start(&require_uwsgi(), |dir| {
        let od = dir.join("od");
        std::fs::create_dir(&od).unwrap();
        vec![
            "--emperor-on-demand-directory".to_string(),
            od.display().to_string(),
        ]
    });
    let od = e.dir.path().join("od");
    e.add(
        "lazy.ini",
        &app_ini(
            &testapp_exec("--idle-after-request"),
            "ready = immediate\nloyal-after = 0.2\n",
        ),
    );
    let sock = od.join("lazy.socket");
    e.proc
        .wait_for_line("\"on demand\" instance detected", SOON);
    wait_until("the on-demand socket", SOON, || sock.exists().then_some(()));
    assert_eq!(
        e.vassal("lazy.ini").unwrap()["pid"],
        -1,
        "not started before a connection"
    );

    let body = http_get_unix(&sock, "/").unwrap();
    assert!(body.contains("listen_fds=1"), "{body}");
    let pid1 = pid_in(&body, "pid=");
    e.proc.wait_for_line("socket activation", SOON);
    // The idle notification (byte 22) brings it back to on-demand mode.
    e.proc.wait_for_line("sending stop-me (22)", SOON);
    wait_all_gone(&[pid1], SOON);
    e.wait_vassal("lazy.ini", "back to on-demand (pid -1)", |v| v["pid"] == -1);
    let body = http_get_unix(&sock, "/").unwrap();
    assert!(body.contains("listen_fds=1"), "{body}");
    assert_ne!(pid_in(&body, "pid="), pid1);
}
