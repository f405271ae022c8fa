//! Emperor-independent scenarios: each starts an emperor through `start` (any emperor that
//! takes uWSGI's option names, uses `--emperor-wrapper` and serves uWSGI's stats JSON), drives
//! one situation, and checks it through the stats JSON, the program's own output and the
//! shim's log. Callers add checks of their emperor's log lines on the returned [`Emperor`].

use std::path::Path;

use super::*;

/// Starts an emperor governing `dir/vassals`; the closure gets the temp dir and returns
/// extra options.
pub type Starter = fn(&dyn Fn(&Path) -> Vec<String>) -> Emperor;

/// The log lines, in order, that both emperors (uWSGI's and ours, which keeps uWSGI's text)
/// write for [`ready_accepting_loyal_heartbeat`].
pub const APP_LOYAL_LINES: &[&str] = &[
    "vassal app.ini has been spawned",
    "vassal app.ini is ready to accept requests",
    "vassal app.ini is now loyal",
];

/// The log lines, in order, that both emperors write for [`sd_notify_app`].
pub const NOTIFY_LINES: &[&str] = &[
    "vassal notify.ini is now loyal",
    "removed uwsgi instance notify.ini",
];

/// A real uWSGI emperor.
pub fn uwsgi(extra: &dyn Fn(&Path) -> Vec<String>) -> Emperor {
    Emperor::start(&require_uwsgi(), extra)
}

fn opts(list: &[&str]) -> impl Fn(&Path) -> Vec<String> {
    let v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    move |_| v.clone()
}

fn app_ini(exec: &str, extra: &str) -> String {
    format!("[vassal-shim]\nexec = {exec}\n{extra}")
}

/// A 0/1 flag of the stats (any non-zero number counts as set).
fn flag(v: &serde_json::Value, key: &str) -> bool {
    v[key].as_i64().unwrap_or(0) != 0
}

fn heartbeat_seen(v: &serde_json::Value) -> bool {
    v["last_heartbeat"].as_i64().unwrap_or(0) > 0
}

/// An HTTP program becomes ready, accepting and loyal without any user request, and its
/// heartbeats reach the stats. Vassal `app.ini`.
pub fn ready_accepting_loyal_heartbeat(start: Starter) -> Emperor {
    let e = start(&opts(&["--emperor-required-heartbeat", "10"]));
    let port = free_port();
    e.add(
        "app.ini",
        &app_ini(
            &testapp_exec(&format!("--port {port}")),
            &format!("ready = http://127.0.0.1:{port}/\nheartbeat = 1\nloyal-after = 1\n"),
        ),
    );
    let v = e.wait_vassal("app.ini", "ready, accepting, loyal and a heartbeat", |v| {
        flag(v, "ready") && flag(v, "accepting") && flag(v, "loyal") && heartbeat_seen(v)
    });
    assert!(v["pid"].as_i64().unwrap_or(-1) > 0, "{v}");
    let stats = e.stats().unwrap();
    assert!(
        stats["blacklist"].as_array().map_or(true, |b| b.is_empty()),
        "{stats}"
    );
    assert!(http_get(port, "/").unwrap().starts_with("hello pid="));
    e
}

/// touch = reload inside the same vassal process (a new program generation, ready and loyal
/// again); rm = stop, and no program process (children and an escaped grandchild included) is
/// left. Vassal `app.ini`.
pub fn touch_reloads_rm_stops(start: Starter) -> Emperor {
    let mut e = start(&opts(&[]));
    let port = free_port();
    e.add(
        "app.ini",
        &app_ini(
            &testapp_exec(&format!("--port {port} --children")),
            &format!("ready = tcp:127.0.0.1:{port}\nloyal-after = 0.5\n"),
        ),
    );
    // The test app prints child=, escaped= and listening, in this order.
    let child1 = pid_in(&e.proc.wait_for_line("child=", SOON), "child=");
    let escaped1 = pid_in(&e.proc.wait_for_line("escaped=", SOON), "escaped=");
    let pid1 = pid_in(&e.proc.wait_for_line("listening on port", SOON), "pid=");
    let v = e.wait_vassal("app.ini", "loyal", |v| flag(v, "loyal"));
    let shim_pid = v["pid"].as_i64().unwrap() as i32;
    wait_count(&mut e.proc, "sending loyal (17)", 1);
    assert!(alive(shim_pid) && alive(pid1) && alive(child1) && alive(escaped1));

    e.touch("app.ini");
    let child2 = pid_in(&e.proc.wait_for_new_line("child=", SOON), "child=");
    let escaped2 = pid_in(&e.proc.wait_for_new_line("escaped=", SOON), "escaped=");
    let second = e.proc.wait_for_new_line("listening on port", SOON);
    assert!(second.contains("gen=2"), "{second}");
    let pid2 = pid_in(&second, "pid=");
    assert_ne!(pid1, pid2);
    wait_count(&mut e.proc, "sending accepting (5)", 2);
    wait_count(&mut e.proc, "sending loyal (17)", 2);
    wait_all_gone(&[pid1, child1, escaped1], SOON);
    let v = e.wait_vassal("app.ini", "ready again", |v| {
        flag(v, "ready") && flag(v, "accepting")
    });
    assert_eq!(
        v["pid"].as_i64().unwrap() as i32,
        shim_pid,
        "reloaded in place: {v}"
    );
    assert!(http_get(port, "/").unwrap().contains("gen=2"));

    e.remove("app.ini");
    wait_until("app.ini gone from the stats", SOON, || {
        e.stats()
            .filter(|s| {
                s["vassals"]
                    .as_array()
                    .is_some_and(|vs| vs.iter().all(|v| v["id"] != "app.ini"))
            })
            .map(|_| ())
    });
    wait_all_gone(&[shim_pid, pid2, child2, escaped2], SOON);
    assert!(
        pids_with_cmdline(&format!("--port {port}")).is_empty(),
        "program processes left behind"
    );
    e
}

/// A program that crashes right after starting is never loyal, so the emperor blacklists it.
/// Vassal `crash.ini`.
pub fn crash_is_blacklisted(start: Starter) -> Emperor {
    let mut e = start(&opts(&["--emperor-freq", "1"]));
    e.add(
        "crash.ini",
        &app_ini(&testapp_exec("--crash"), "ready = immediate\n"),
    );
    let entry = wait_until("crash.ini in the blacklist", SOON, || {
        e.blacklisted("crash.ini")
    });
    assert!(entry["throttle_level"].as_i64().is_some(), "{entry}");
    assert!(!e.proc.output().contains("sending loyal (17)"));
    e
}

/// A hung (SIGSTOPped) program stops the heartbeats; the emperor kills the vassal after the
/// required heartbeat (3 s) and starts it again; the stopped program does not survive.
/// Vassal `hang.ini`.
pub fn hung_program_is_killed(start: Starter) -> Emperor {
    let mut e = start(&opts(&[
        "--emperor-required-heartbeat",
        "3",
        "--emperor-freq",
        "1",
    ]));
    let port = free_port();
    e.add(
        "hang.ini",
        &app_ini(
            &testapp_exec(&format!("--port {port} --children")),
            &format!(
                "ready = http://127.0.0.1:{port}/\nheartbeat = 1\nloyal-after = 0.5\nprobe-timeout = 1\n"
            ),
        ),
    );
    let child1 = pid_in(&e.proc.wait_for_line("child=", SOON), "child=");
    let escaped1 = pid_in(&e.proc.wait_for_line("escaped=", SOON), "escaped=");
    let pid1 = pid_in(&e.proc.wait_for_line("listening on port", SOON), "pid=");
    let v = e.wait_vassal("hang.ini", "loyal with a heartbeat", |v| {
        flag(v, "loyal") && heartbeat_seen(v)
    });
    let shim1 = v["pid"].as_i64().unwrap() as i32;
    // SAFETY: kill(2) on the program's pid, read from its own output.
    unsafe {
        libc::kill(pid1, libc::SIGSTOP);
    }
    e.proc.wait_for_new_line("was stopped by SIGSTOP", SOON);
    // The emperor SIGKILLs the shim: the program dies by its PDEATHSIG, its children (one of
    // them outside its process group) by the shim's sentinel.
    wait_all_gone(&[shim1, pid1, child1, escaped1], SOON);
    let again = e.proc.wait_for_new_line("listening on port", SOON);
    assert_ne!(pid_in(&again, "pid="), pid1);
    e.wait_vassal("hang.ini", "a new vassal process", |v| {
        v["pid"]
            .as_i64()
            .is_some_and(|p| p > 0 && p as i32 != shim1)
    });
    e
}

/// A program that speaks sd_notify (READY=1, STATUS=, WATCHDOG=1, STOPPING=1) works unchanged.
/// Vassal `notify.ini`.
pub fn sd_notify_app(start: Starter) -> Emperor {
    let mut e = start(&opts(&["--emperor-required-heartbeat", "10"]));
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
    let v = e.wait_vassal("notify.ini", "ready, loyal, heartbeats", |v| {
        flag(v, "ready") && flag(v, "accepting") && flag(v, "loyal") && heartbeat_seen(v)
    });
    let pid = v["pid"].as_i64().unwrap() as i32;
    e.remove("notify.ini");
    e.proc.wait_for_new_line("Stopping", SOON);
    wait_all_gone(&[pid], SOON);
    e
}

/// The emperor's on-demand socket reaches the program as systemd socket activation; the
/// program's idle notification sends it back to on-demand mode; the next connection starts it
/// again. Vassal `lazy.ini`, socket `DIR/od/lazy.socket`.
pub fn on_demand_socket_activation(start: Starter) -> Emperor {
    let e = start(&|dir: &Path| {
        let od = dir.join("od");
        std::fs::create_dir(&od).unwrap();
        vec![
            "--emperor-on-demand-directory".to_string(),
            od.display().to_string(),
        ]
    });
    e.add(
        "lazy.ini",
        &app_ini(
            &testapp_exec("--idle-after-request"),
            "ready = immediate\nloyal-after = 0.2\n",
        ),
    );
    let sock = e.dir.path().join("od").join("lazy.socket");
    wait_until("the on-demand socket", SOON, || sock.exists().then_some(()));
    let v = e.wait_vassal("lazy.ini", "registered", |_| true);
    assert_eq!(v["pid"], -1, "started before a connection: {v}");

    let body = http_get_unix(&sock, "/").unwrap();
    assert!(body.contains("listen_fds=1"), "{body}");
    let pid1 = pid_in(&body, "pid=");
    wait_all_gone(&[pid1], SOON);
    e.wait_vassal("lazy.ini", "back to on-demand (pid -1)", |v| v["pid"] == -1);
    let body = http_get_unix(&sock, "/").unwrap();
    assert!(body.contains("listen_fds=1"), "{body}");
    assert_ne!(pid_in(&body, "pid="), pid1);
    e
}

/// The program's SOS notification reaches a broodlord emperor, which starts a zerg: the same
/// file as `brood.ini:zerg`, for which the shim runs section `[vassal-shim:zerg]`. `zerg_id`
/// is the zerg's id in the emperor's stats (uWSGI: `brood.ini:zerg`; ours numbers them).
pub fn broodlord_zerg(start: Starter, zerg_id: &str) -> Emperor {
    let mut e = start(&opts(&["--emperor-broodlord", "1"]));
    let port = free_port();
    let zport = free_port();
    e.add(
        "brood.ini",
        &format!(
            "[vassal-shim]\nexec = {}\nready = tcp:127.0.0.1:{port}\nloyal-after = 0.2\n\
             [vassal-shim:zerg]\nexec = {}\nready = tcp:127.0.0.1:{zport}\nloyal-after = 0.2\n",
            testapp_exec(&format!("--port {port} --sos")),
            testapp_exec(&format!("--port {zport}")),
        ),
    );
    e.proc.wait_for_line("sending sos (30)", SOON);
    e.proc
        .wait_for_line(&format!("listening on port {zport}"), SOON);
    let z = e.wait_vassal(zerg_id, "a loyal zerg", |v| flag(v, "loyal"));
    assert_eq!(z["zerg"], 1, "{z}");
    assert!(http_get(zport, "/").unwrap().starts_with("hello"));
    e
}
