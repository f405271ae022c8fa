//! The shim under a real uWSGI 2.0.21 emperor (`uwsgi --emperor DIR --emperor-wrapper
//! vassal-shim --emperor-stats SOCK`): a small HTTP program that knows nothing about uWSGI
//! becomes a well-behaved vassal. The scenarios (tests/common/scenarios.rs) check the stats
//! JSON and the program; here we also check uWSGI's own log lines.

mod common;

use common::scenarios::{self, uwsgi};
use common::*;

#[test]
fn http_app_becomes_ready_accepting_loyal_and_heartbeats() {
    let mut e = scenarios::ready_accepting_loyal_heartbeat(uwsgi);
    wait_lines(&mut e.proc, scenarios::APP_LOYAL_LINES);
}

#[test]
fn touch_reloads_and_rm_leaves_no_process() {
    let mut e = scenarios::touch_reloads_rm_stops(uwsgi);
    e.proc
        .wait_for_line("reload the uwsgi instance app.ini", SOON);
    wait_count(&mut e.proc, "vassal app.ini is ready to accept requests", 2);
    wait_count(&mut e.proc, "vassal app.ini is now loyal", 2);
    e.proc
        .wait_for_line("stop the uwsgi instance app.ini", SOON);
    e.proc.wait_for_line("removed uwsgi instance app.ini", SOON);
}

#[test]
fn crashing_program_is_blacklisted() {
    let mut e = scenarios::crash_is_blacklisted(uwsgi);
    e.proc
        .wait_for_line("unloyal bad behaving vassal found: crash.ini", SOON);
    assert!(!e.proc.output().contains("vassal crash.ini is now loyal"));
}

#[test]
fn hung_program_is_killed_after_required_heartbeat() {
    let mut e = scenarios::hung_program_is_killed(uwsgi);
    e.proc
        .wait_for_line("vassal hang.ini sent no heartbeat", SOON);
    wait_count(&mut e.proc, "vassal hang.ini has been spawned", 2);
}

#[test]
fn sd_notify_app_works_unchanged() {
    let mut e = scenarios::sd_notify_app(uwsgi);
    wait_lines(&mut e.proc, scenarios::NOTIFY_LINES);
}

#[test]
fn socket_activation_with_on_demand_socket() {
    let mut e = scenarios::on_demand_socket_activation(uwsgi);
    e.proc
        .wait_for_line("\"on demand\" instance detected", SOON);
    e.proc.wait_for_line("socket activation", SOON);
    e.proc.wait_for_line("sending stop-me (22)", SOON);
    e.proc.wait_for_line("back to \"on demand\" mode", SOON);
}

/// A config pushed by a content monitor (uWSGI's zeromq monitor) reaches the program as the
/// file named by VASSAL_SHIM_CONFIG, and every reload sees the newest config, although a
/// 2.0.21 emperor pushes twice per reload (which makes uWSGI vassals lag one version behind).
#[test]
fn pushed_config_reaches_the_program_newest_every_time() {
    let zport = free_port();
    let zmq = format!("zmq://tcp://127.0.0.1:{zport}");
    let mut e = Emperor::start(&require_uwsgi(), |_| {
        vec![
            "--plugin".into(),
            "emperor_zeromq".into(),
            "--emperor".into(),
            zmq.clone(),
        ]
    });
    let port = free_port();
    let config = |version: u32| {
        format!(
            "[vassal-shim]\nexec = {}\nready = tcp:127.0.0.1:{port}\nloyal-after = 0.2\n\
             [app]\nversion = {version}\n",
            testapp_exec(&format!("--port {port}"))
        )
    };
    let push = |version: u32| {
        let text = config(version);
        wait_until("the zeromq monitor to accept a push", SOON, || {
            zmtp::push(zport, &[b"touch", b"zz.ini", text.as_bytes()]).ok()
        });
    };
    push(1);
    e.proc.wait_for_line("gen=1", SOON);
    let v = e.wait_vassal("zz.ini", "loyal", |v| v["loyal"] == 1);
    let body = http_get(port, "/").unwrap();
    assert!(body.contains("version = 1"), "{body}");
    let mut last_mod = v["last_mod"].as_i64().unwrap();
    for version in [2, 3, 4] {
        // The monitor reloads only when the push is stamped with a later second than the last
        // one, and it stamps with time(2), which can lag the precise clock by up to a tick: a
        // push sent in the first milliseconds of a second by SystemTime would be ignored.
        wait_until("the emperor's clock to pass last_mod", SOON, || {
            (emperor_clock() > last_mod).then_some(())
        });
        push(version);
        e.proc.wait_for_new_line(&format!("gen={version}"), SOON);
        let body = http_get(port, "/").unwrap();
        assert!(
            body.contains(&format!("version = {version}")),
            "reload {version} got a stale config: {body}"
        );
        last_mod = e.wait_vassal("zz.ini", "ready again", |v| v["ready"] == 1)["last_mod"]
            .as_i64()
            .unwrap();
    }
    e.proc
        .wait_for_line("reload the uwsgi instance zz.ini", SOON);
    assert!(
        !e.proc.output().contains("config channel"),
        "no config channel errors"
    );
}

#[test]
fn sos_from_the_program_starts_a_broodlord_zerg() {
    let mut e = scenarios::broodlord_zerg(uwsgi, "brood.ini:zerg");
    e.proc
        .wait_for_line("vassal brood.ini:zerg is now loyal", SOON);
}

/// Under the real uWSGI emperor (which always runs the wrapper as `WRAPPER --ini NAME`) the
/// `[vassal-shim]` form works, and in the emperor's one shared log every line of each shim
/// names its vassal.
#[test]
fn every_shim_log_line_names_its_vassal() {
    let e = Emperor::uwsgi(&[]);
    for name in ["one.ini", "two.ini"] {
        let port = free_port();
        e.add(
            name,
            &format!(
                "[vassal-shim]\nexec = {}\nready = tcp:127.0.0.1:{port}\nloyal-after = 0.2\n",
                testapp_exec(&format!("--port {port}"))
            ),
        );
    }
    for name in ["one.ini", "two.ini"] {
        e.wait_vassal(name, "loyal", |v| v["loyal"] == 1);
    }
    let mut e = e;
    wait_until("both shims to log their program's start", SOON, || {
        let out = e.proc.output();
        (out.contains("vassal=one.ini") && out.contains("vassal=two.ini")).then_some(())
    });
    let out = e.proc.output();
    let shim_lines: Vec<&str> = out.lines().filter(|l| l.contains("vassal-shim{")).collect();
    for l in &shim_lines {
        assert!(
            l.contains("vassal-shim{vassal=one.ini pid=")
                || l.contains("vassal-shim{vassal=two.ini pid="),
            "a shim line that does not name its vassal: {l}"
        );
    }
    for name in ["one.ini", "two.ini"] {
        assert!(
            shim_lines
                .iter()
                .any(|l| l.contains(&format!("vassal={name} ")) && l.contains("started program")),
            "{name}: no start line in {shim_lines:#?}"
        );
    }
}
