//! Fake-clock tests of signals, the sub-emperor channel, per-vassal command events,
//! fork-server adoptions, start hooks and what a spawn request carries.

use super::*;

/// Scans one vassal owned by uid 1000 and answers its spawn with `pid`.
fn running_one(h: &mut Harness, name: &str, pid: i32) -> Inc {
    let a = h.scan(vec![owned(name, 1, 1000, 1000)]);
    let req = spawn_of(&a).expect("a spawn");
    h.ev(Event::Spawned { inc: req.inc, pid });
    req.inc
}

#[test]
fn signals_map_to_controls_and_others_are_ignored() {
    for (sig, want) in [
        (libc::SIGINT, Some(Control::Shutdown)),
        (libc::SIGTERM, Some(Control::Shutdown)),
        (libc::SIGQUIT, Some(Control::Shutdown)),
        (libc::SIGHUP, Some(Control::ReloadAll)),
        (libc::SIGUSR1, Some(Control::LogStatus)),
        (libc::SIGURG, Some(Control::ClearBackoff)),
        (libc::SIGWINCH, Some(Control::Rescan)),
        (libc::SIGCHLD, None),
        (libc::SIGUSR2, None),
    ] {
        assert_eq!(Core::signal_control(sig), want, "signal {sig}");
    }
    let mut h = Harness::new(CoreConfig::default());
    let inc = running_one(&mut h, "app.ini", 10);
    assert!(h.ev(Event::Signal(libc::SIGCHLD)).is_empty());
    assert_eq!(h.ev(Event::Signal(libc::SIGWINCH)), vec![Action::Rescan]);
    assert_eq!(
        sent(&h.ev(Event::Signal(libc::SIGHUP))),
        vec![(inc, EmperorMsg::Reload)]
    );
    assert_eq!(
        sent(&h.ev(Event::Signal(libc::SIGTERM))),
        vec![(inc, EmperorMsg::Stop)]
    );
    assert!(h.core.shutting_down());
}

#[test]
fn bytes_from_our_emperor_reload_or_stop_and_unknown_ones_are_ignored() {
    let mut h = Harness::new(CoreConfig::default());
    let inc = running_one(&mut h, "app.ini", 10);
    assert!(h.ev(Event::FromEmperor(99)).is_empty());
    assert!(!h.core.shutting_down());
    assert_eq!(
        sent(&h.ev(Event::FromEmperor(1))),
        vec![(inc, EmperorMsg::Reload)]
    );
    assert_eq!(
        sent(&h.ev(Event::FromEmperor(2))),
        vec![(inc, EmperorMsg::Stop)]
    );
    assert!(h.core.shutting_down());
    let mut h = Harness::new(CoreConfig::default());
    running_one(&mut h, "app.ini", 10);
    h.ev(Event::FromEmperor(0));
    assert!(h.core.shutting_down());
}

#[test]
fn losing_our_emperor_shuts_down() {
    let mut h = Harness::new(CoreConfig::default());
    let inc = running_one(&mut h, "app.ini", 10);
    assert_eq!(
        sent(&h.ev(Event::EmperorGone)),
        vec![(inc, EmperorMsg::Stop)]
    );
    assert!(h.core.shutting_down());
    let a = h.ev(Event::Reaped {
        pid: 10,
        exit: ExitKind::Code(0),
    });
    assert_eq!(a, vec![Action::Release { inc }, Action::Exit]);
}

#[test]
fn command_events_act_and_failures_change_nothing() {
    let mut h = Harness::new(CoreConfig::default());
    let inc = running_one(&mut h, "app.ini", 10);
    let cmd = |cmd, name: &str| Event::Command {
        cmd,
        name: name.to_string(),
    };
    for _ in 0..20 {
        assert!(h.ev(cmd(VassalCommand::Stop, "nope.ini")).is_empty());
    }
    assert_eq!(
        sent(&h.ev(cmd(VassalCommand::Respawn, "app.ini"))),
        vec![(inc, EmperorMsg::Reload)]
    );
    assert_eq!(
        sent(&h.ev(cmd(VassalCommand::Stop, "/v/app.ini"))),
        vec![(inc, EmperorMsg::Stop)]
    );
    let a = h.ev(Event::Reaped {
        pid: 10,
        exit: ExitKind::Code(0),
    });
    assert_eq!(a, vec![Action::Release { inc }]);
    assert_eq!(h.core.vassal("/v/app.ini").unwrap().state, State::Suspended);
    let a = h.ev(cmd(VassalCommand::Spawn, "app.ini"));
    assert!(spawn_of(&a).is_some(), "{a:?}");
    assert_eq!(
        h.cmd(VassalCommand::Reset, "x.ini").0,
        Err(CommandError::NoSuchVassal {
            name: "x.ini".into()
        })
    );
}

#[test]
fn an_adopted_vassal_runs_and_a_reload_ends_it_without_backoff() {
    let mut h = Harness::new(CoreConfig::default());
    let req = spawn_of(&h.scan(vec![owned("app.ini", 1, 1000, 1000)])).unwrap();
    h.ev(Event::Adopted {
        inc: req.inc,
        pid: 10,
    });
    let v = h.core.vassal("/v/app.ini").unwrap();
    assert!(v.adopted());
    assert_eq!(
        v.state,
        State::Running(state::Running {
            inc: req.inc,
            pid: 10,
            adopted: true,
            reload_sent: false
        })
    );
    h.ev(Event::Signal(libc::SIGHUP));
    let a = h.ev(Event::Reaped {
        pid: 10,
        exit: ExitKind::Code(0),
    });
    let next = spawn_of(&a).expect("a new start at once");
    assert_ne!(next.inc, req.inc);
    assert_eq!(h.core.vassal("/v/app.ini").unwrap().backoff.attempt, 0);
    // A stale adoption finds nothing.
    h.ev(Event::Adopted {
        inc: req.inc,
        pid: 11,
    });
    assert!(!h.core.vassal("/v/app.ini").unwrap().adopted());
}

fn hooked() -> CoreConfig {
    CoreConfig {
        start_hook: true,
        ..CoreConfig::default()
    }
}

#[test]
fn a_start_hook_runs_first_then_the_same_incarnation_is_spawned_once() {
    let mut h = Harness::new(hooked());
    let first = spawn_of(&h.scan(vec![owned("app.ini", 1, 1000, 1000)])).unwrap();
    assert!(first.run_start_hook);
    let a = h.ev(Event::StartHookDone { inc: first.inc });
    let second = spawn_of(&a).expect("the spawn after the hook");
    assert_eq!(
        second,
        SpawnRequest {
            run_start_hook: false,
            ..first.clone()
        }
    );
    assert!(h.ev(Event::StartHookDone { inc: first.inc }).is_empty());
    h.ev(Event::Spawned {
        inc: first.inc,
        pid: 10,
    });
    assert!(h.ev(Event::StartHookDone { inc: first.inc }).is_empty());
    // Without a hook configured, no request asks for one.
    let mut h = Harness::new(CoreConfig::default());
    let req = spawn_of(&h.scan(vec![owned("app.ini", 1, 1000, 1000)])).unwrap();
    assert!(!req.run_start_hook);
    assert!(h.ev(Event::StartHookDone { inc: req.inc }).is_empty());
}

#[test]
fn a_hook_that_ends_after_its_config_went_or_a_shutdown_began_starts_nothing() {
    let mut h = Harness::new(hooked());
    let req = spawn_of(&h.scan(vec![owned("app.ini", 1, 1000, 1000)])).unwrap();
    assert!(h.scan(vec![]).is_empty());
    let a = h.ev(Event::StartHookDone { inc: req.inc });
    assert_eq!(a, vec![Action::Release { inc: req.inc }]);
    assert!(h.core.is_empty());

    let mut h = Harness::new(hooked());
    let req = spawn_of(&h.scan(vec![owned("app.ini", 1, 1000, 1000)])).unwrap();
    // A shutdown waits for the answer of a start under way.
    assert!(h.ev(Event::Signal(libc::SIGINT)).is_empty());
    let a = h.ev(Event::StartHookDone { inc: req.inc });
    assert_eq!(a, vec![Action::Release { inc: req.inc }, Action::Exit]);
}

fn tyrant() -> CoreConfig {
    CoreConfig {
        tyrant: true,
        start_hook: true,
        ..CoreConfig::default()
    }
}

#[test]
fn tyrant_requests_carry_the_owner_and_a_chown_to_root_during_the_hook_is_refused() {
    let mut h = Harness::new(tyrant());
    let req = spawn_of(&h.scan(vec![owned("app.ini", 1, 1000, 1000)])).unwrap();
    assert_eq!(req.creds, Some((1000, 1000)));
    assert!(h.scan(vec![owned("app.ini", 1, 0, 0)]).is_empty());
    let a = h.ev(Event::StartHookDone { inc: req.inc });
    assert_eq!(a, vec![Action::Release { inc: req.inc }]);
    assert!(!matches!(
        h.core.vassal("/v/app.ini").unwrap().state,
        State::Running { .. } | State::Starting { .. }
    ));
    // Without tyrant mode, no credentials.
    let mut h = Harness::new(CoreConfig::default());
    let req = spawn_of(&h.scan(vec![owned("app.ini", 1, 1000, 1000)])).unwrap();
    assert_eq!(req.creds, None);
}

#[test]
fn a_zerg_request_carries_its_number() {
    let mut h = Harness::new(CoreConfig {
        activation: ActivationConfig {
            broodlord: 2,
            ..ActivationConfig::default()
        },
        ..CoreConfig::default()
    });
    let inc = running_one(&mut h, "app.ini", 10);
    let a = h.ev(Event::Message { inc, byte: 30 });
    let z = spawn_of(&a).expect("a zerg");
    assert_eq!((z.name.as_str(), z.zerg), ("app.ini:zerg", Some(1)));
    let base = spawn_of(&h.scan(vec![owned("b.ini", 1, 1000, 1000)])).unwrap();
    assert_eq!(base.zerg, None);
}

#[test]
fn failed_commands_are_logged_as_the_command_socket_did_at_most_ten_per_interval() {
    let mut h = Harness::new(CoreConfig::default());
    running_one(&mut h, "app.ini", 10);
    let logs = logs_of(|| {
        for _ in 0..12 {
            h.ev(Event::Command {
                cmd: VassalCommand::Stop,
                name: "no\x07pe.ini".to_string(),
            });
        }
        h.now += garbage::WARN_INTERVAL;
        h.ev(Event::Command {
            cmd: VassalCommand::Reset,
            name: "x.ini".to_string(),
        });
        h.ev(Event::Command {
            cmd: VassalCommand::Respawn,
            name: "app.ini".to_string(),
        });
    });
    let failed: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("command socket: "))
        .collect();
    assert_eq!(failed.len(), 11, "{logs}");
    assert!(
        failed[0].ends_with("command socket: stop: no vassal named no\\u{7}pe.ini"),
        "{logs}"
    );
    assert!(
        failed[10].ends_with(
            "command socket: reset: no vassal named x.ini (2 more like it not logged in the last 10 s)"
        ),
        "{logs}"
    );
    assert!(logs.contains("reloading vassal app.ini"), "{logs}");
}

#[test]
fn our_emperors_bytes_and_its_loss_are_logged_as_before() {
    let mut h = Harness::new(CoreConfig::default());
    running_one(&mut h, "app.ini", 10);
    let logs = logs_of(|| {
        h.ev(Event::FromEmperor(7));
        h.ev(Event::FromEmperor(1));
        h.ev(Event::EmperorGone);
    });
    for line in [
        "received message 7 from my emperor: ignored",
        "received message 1 from my emperor: reloading every vassal",
        "lost connection with my emperor: stopping",
    ] {
        assert!(logs.contains(line), "{line}: {logs}");
    }
}

#[test]
fn spawn_failures_display_the_reason_logged() {
    assert_eq!(
        SpawnFailure::ShuttingDown.to_string(),
        "not started after its start hook: the emperor is shutting down"
    );
    assert_eq!(
        SpawnFailure::ConfigGone.to_string(),
        "not started after its start hook: its config is gone"
    );
    let root = SpawnFailure::RootOwned {
        name: "app.ini".into(),
        key: "/v/app.ini".into(),
        uid: 1000,
        gid: 0,
    };
    assert_eq!(root.to_string(), refusal("app.ini", "/v/app.ini", 1000, 0));
    let e = SpawnFailure::executor(std::io::Error::other("`uwsgi` was not found"));
    assert_eq!(e.to_string(), "`uwsgi` was not found");
}
