//! Fake-clock tests of on-demand vassals, suspended vassals and per-vassal commands
//! (wait-for-command, command socket) and broodlord.

use super::*;

fn on_demand() -> ActivationConfig {
    ActivationConfig {
        on_demand: true,
        ..Default::default()
    }
}

/// Scans `app.ini` and binds its socket; returns its record id.
fn armed(h: &mut Harness) -> VassalId {
    let a = h.scan(vec![entry("app.ini", 1)]);
    assert!(spawn_requests(&a).is_empty(), "{a:?}");
    let [Action::OnDemand(OnDemandAction::Resolve {
        vassal, ref name, ..
    })] = a[..]
    else {
        panic!("{a:?}")
    };
    assert_eq!(name, "app.ini");
    assert_eq!(h.v("/v/app.ini").state, State::OnDemand);
    let a = h.od(OnDemandEvent::Ready {
        vassal,
        socket: Some("/run/app.sock".into()),
    });
    assert!(a.is_empty(), "{a:?}");
    assert_eq!(h.v("/v/app.ini").on_demand(), Some("/run/app.sock"));
    vassal
}

#[test]
fn on_demand_vassal_starts_on_connection_and_byte_22_rearms_it() {
    let mut h = Harness::with_activation(on_demand());
    let id = armed(&mut h);
    // Nothing runs until a connection arrives; rescans change nothing.
    assert!(h.scan(vec![entry("app.ini", 1)]).is_empty());
    assert!(h.advance(Duration::from_secs(60)).is_empty());
    let a = h.od(OnDemandEvent::Connection { vassal: id });
    let s = h.spawn_all(&a);
    assert_eq!(s.len(), 1);
    let (req, pid) = (s[0].0.clone(), s[0].1);
    assert_eq!(req.vassal, id);
    assert!(matches!(h.v("/v/app.ini").state, State::Running { .. }));
    for b in [1u8, 5, 17] {
        h.ev(Event::Message {
            inc: req.inc,
            byte: b,
        });
    }
    // Idle: byte 22 → stop byte, then once reaped the listener is re-armed, not respawned.
    let a = h.ev(Event::Message {
        inc: req.inc,
        byte: 22,
    });
    assert_eq!(
        a,
        vec![Action::Send {
            inc: req.inc,
            msg: EmperorMsg::Stop
        }]
    );
    let a = h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Code(0),
    });
    assert_eq!(
        a,
        vec![
            Action::Release { inc: req.inc },
            Action::OnDemand(OnDemandAction::Arm { vassal: id })
        ]
    );
    let v = h.v("/v/app.ini");
    assert_eq!(
        (
            v.state,
            h.core.channel(v).ready,
            h.core.channel(v).accepting
        ),
        (State::OnDemand, false, false)
    );
    // The next connection starts it again.
    let a = h.od(OnDemandEvent::Connection { vassal: id });
    assert_eq!(h.spawn_all(&a).len(), 1);
    assert_eq!(h.v("/v/app.ini").restarts, 1);
}

#[test]
fn config_change_while_inactive_is_only_recorded() {
    let mut h = Harness::with_activation(on_demand());
    armed(&mut h);
    let a = h.scan(vec![entry("app.ini", 2)]);
    assert!(a.is_empty(), "{a:?}");
    let v = h.v("/v/app.ini");
    assert_eq!(v.state, State::OnDemand);
    assert_eq!(v.stamp.mtime_ns, 2);
    // SIGHUP does not start it either.
    assert!(h.ev(Event::Control(Control::ReloadAll)).is_empty());
}

#[test]
fn a_crash_of_an_on_demand_vassal_rearms_its_listener() {
    let mut h = Harness::with_activation(on_demand());
    let id = armed(&mut h);
    let a = h.od(OnDemandEvent::Connection { vassal: id });
    let (req, pid) = h.spawn_all(&a)[0].clone();
    h.ev(Event::Message {
        inc: req.inc,
        byte: 17,
    });
    let a = h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Signal(9),
    });
    assert!(spawn_requests(&a).is_empty(), "{a:?}");
    assert!(a.contains(&Action::OnDemand(OnDemandAction::Arm { vassal: id })));
}

#[test]
fn removing_the_config_closes_the_listener() {
    let mut h = Harness::with_activation(on_demand());
    let id = armed(&mut h);
    let a = h.scan(vec![]);
    assert_eq!(
        a,
        vec![Action::OnDemand(OnDemandAction::Close { vassal: id })]
    );
    assert!(h.core.is_empty());
    // Same while running: closed once the process is reaped and the record goes.
    let id = armed(&mut h);
    let a = h.od(OnDemandEvent::Connection { vassal: id });
    let (req, pid) = h.spawn_all(&a)[0].clone();
    let a = h.scan(vec![]);
    assert_eq!(
        a,
        vec![Action::Send {
            inc: req.inc,
            msg: EmperorMsg::Stop
        }]
    );
    let a = h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Code(0),
    });
    assert!(a.contains(&Action::OnDemand(OnDemandAction::Close { vassal: id })));
    assert!(h.core.is_empty());
}

#[test]
fn no_socket_means_an_ordinary_vassal_and_a_bind_failure_is_retried() {
    let mut h = Harness::with_activation(on_demand());
    let a = h.scan(vec![entry("plain.ini", 1)]);
    let [Action::OnDemand(OnDemandAction::Resolve { vassal, .. })] = a[..] else {
        panic!("{a:?}")
    };
    let a = h.od(OnDemandEvent::Ready {
        vassal,
        socket: None,
    });
    assert_eq!(spawn_requests(&a).len(), 1);
    // A plain vassal is respawned as usual.
    let (req, pid) = h.spawn_all(&a)[0].clone();
    h.ev(Event::Message {
        inc: req.inc,
        byte: 17,
    });
    let a = h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Code(1),
    });
    assert_eq!(spawn_requests(&a).len(), 1);

    let a = h.scan(vec![entry("plain.ini", 1), entry("bad.ini", 1)]);
    let [Action::OnDemand(OnDemandAction::Resolve { vassal, .. })] = a[..] else {
        panic!("{a:?}")
    };
    let a = h.od(OnDemandEvent::Failed {
        vassal,
        reason: "path too long".into(),
    });
    assert!(a.is_empty(), "{a:?}");
    let v = h.v("/v/bad.ini");
    assert!(matches!(v.state, State::Waiting { .. }));
    assert_eq!(v.backoff.attempt, 1);
    // After the backoff the socket is looked up again (no process is started).
    let a = h.advance(Duration::from_secs(2));
    assert!(matches!(
        a[..],
        [Action::OnDemand(OnDemandAction::Resolve { .. })]
    ));
}

#[test]
fn wait_for_command_suspends_new_vassals_except_ignored_ones() {
    let mut h = Harness::with_activation(ActivationConfig {
        wait_for_command: true,
        wait_for_command_ignore: ["free.ini".to_string()].into(),
        ..Default::default()
    });
    let a = h.scan(vec![entry("w.ini", 1), entry("free.ini", 1)]);
    let s = spawn_requests(&a);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].name, "free.ini");
    let v = h.v("/v/w.ini");
    assert_eq!((v.state, v.suspended()), (State::Suspended, true));
    // Rescans and edits do not start it.
    assert!(h
        .scan(vec![entry("w.ini", 2), entry("free.ini", 1)])
        .is_empty());
    let (r, a) = h.cmd(VassalCommand::Spawn, "w.ini");
    assert!(r.unwrap().contains("starting vassal w.ini"));
    assert_eq!(spawn_requests(&a).len(), 1);
    assert!(!h.v("/v/w.ini").suspended());
}

#[test]
fn stop_command_keeps_the_vassal_suspended_until_spawn() {
    let mut h = Harness::with_activation(ActivationConfig::default());
    let a = h.scan(vec![entry("app.ini", 1)]);
    let (req, pid) = h.spawn_all(&a)[0].clone();
    let (r, a) = h.cmd(VassalCommand::Stop, "app.ini");
    assert!(r.is_ok());
    assert_eq!(
        a,
        vec![Action::Send {
            inc: req.inc,
            msg: EmperorMsg::Stop
        }]
    );
    let a = h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Code(0),
    });
    assert!(spawn_requests(&a).is_empty(), "{a:?}");
    assert_eq!(h.v("/v/app.ini").state, State::Suspended);
    assert!(h.scan(vec![entry("app.ini", 1)]).is_empty());
    assert!(h.advance(Duration::from_secs(100)).is_empty());
    let (_, a) = h.cmd(VassalCommand::Spawn, "app.ini");
    assert_eq!(spawn_requests(&a).len(), 1);
    // Config gone while suspended: the record goes.
    let mut h = Harness::with_activation(ActivationConfig::default());
    let a = h.scan(vec![entry("x.ini", 1)]);
    let (_, pid) = h.spawn_all(&a)[0].clone();
    let _ = h.cmd(VassalCommand::Stop, "x.ini");
    h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Code(0),
    });
    h.scan(vec![]);
    assert!(h.core.is_empty());
}

#[test]
fn reset_lifts_one_backoff_and_respawn_reloads() {
    let mut h = Harness::with_activation(ActivationConfig::default());
    let a = h.scan(vec![entry("bad.ini", 1), entry("ok.ini", 1)]);
    let s = h.spawn_all(&a);
    let bad = s.iter().find(|(r, _)| r.name == "bad.ini").unwrap().clone();
    let ok = s.iter().find(|(r, _)| r.name == "ok.ini").unwrap().clone();
    h.ev(Event::Reaped {
        pid: bad.1,
        exit: ExitKind::Code(1),
    });
    assert_eq!(h.v("/v/bad.ini").backoff.attempt, 1);
    let (r, a) = h.cmd(VassalCommand::Reset, "bad.ini");
    assert!(r.unwrap().contains("lifted"));
    assert_eq!(spawn_requests(&a).len(), 1);
    assert_eq!(h.v("/v/bad.ini").backoff.attempt, 0);
    let (_, a) = h.cmd(VassalCommand::Respawn, "ok.ini");
    assert_eq!(
        a,
        vec![Action::Send {
            inc: ok.0.inc,
            msg: EmperorMsg::Reload
        }]
    );
    assert_eq!(h.v("/v/ok.ini").respawns, 1);
    let (r, a) = h.cmd(VassalCommand::Stop, "nope.ini");
    assert_eq!(r.unwrap_err().to_string(), "no vassal named nope.ini");
    assert!(a.is_empty());
    // By config path too.
    assert!(h.cmd(VassalCommand::Respawn, "/v/ok.ini").0.is_ok());
}

fn brood(n: u32) -> ActivationConfig {
    ActivationConfig {
        broodlord: n,
        ..Default::default()
    }
}

#[test]
fn byte_30_starts_zergs_with_their_own_identity_up_to_the_limit() {
    let mut h = Harness::with_activation(brood(2));
    let a = h.scan(vec![entry("app.ini", 1)]);
    let (base, _) = h.spawn_all(&a)[0].clone();
    let sos = Event::Message {
        inc: base.inc,
        byte: 30,
    };
    let a = h.ev(sos.clone());
    let z1 = h.spawn_all(&a);
    assert_eq!(z1.len(), 1);
    // uWSGI is asked for the [zerg] section; the record has its own name.
    assert_eq!(z1[0].0.name, "app.ini:zerg");
    let v = h.v("/v/app.ini:zerg:1");
    assert_eq!((v.name.as_str(), v.zerg), ("app.ini:zerg:1", Some(1)));
    let a = h.ev(sos.clone());
    let z2 = h.spawn_all(&a);
    assert_eq!(h.v("/v/app.ini:zerg:2").zerg, Some(2));
    assert_eq!(h.core.zerg_count(), 2);
    // At the limit: ignored, but counted.
    assert!(spawn_requests(&h.ev(sos.clone())).is_empty());
    assert_eq!(h.v("/v/app.ini").sos, 3);
    // A rescan neither stops nor duplicates zergs.
    assert!(h.scan(vec![entry("app.ini", 1)]).is_empty());
    // A dead zerg is gone for good and frees its slot (and its number).
    let a = h.ev(Event::Reaped {
        pid: z1[0].1,
        exit: ExitKind::Code(0),
    });
    assert!(spawn_requests(&a).is_empty(), "{a:?}");
    assert!(h.core.vassal("/v/app.ini:zerg:1").is_none());
    assert_eq!(h.core.zerg_count(), 1);
    assert!(h.scan(vec![entry("app.ini", 1)]).is_empty());
    let a = h.ev(sos);
    assert_eq!(h.spawn_all(&a).len(), 1);
    assert!(h.core.vassal("/v/app.ini:zerg:1").is_some());
    // The base config goes: the base and every zerg get the stop byte.
    let a = h.scan(vec![]);
    let stopped: Vec<Inc> = a
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                inc,
                msg: EmperorMsg::Stop,
            } => Some(*inc),
            _ => None,
        })
        .collect();
    assert_eq!(stopped.len(), 3, "{a:?}");
    assert!(stopped.contains(&z2[0].0.inc));
}

#[test]
fn broodlord_off_only_counts_and_a_zerg_asking_to_stop_is_not_restarted() {
    let mut h = Harness::with_activation(ActivationConfig::default());
    let a = h.scan(vec![entry("app.ini", 1)]);
    let (base, _) = h.spawn_all(&a)[0].clone();
    let a = h.ev(Event::Message {
        inc: base.inc,
        byte: 30,
    });
    assert!(spawn_requests(&a).is_empty());
    assert_eq!(h.v("/v/app.ini").sos, 1);

    let mut h = Harness::with_activation(brood(1));
    let a = h.scan(vec![entry("app.ini", 1)]);
    let (base, _) = h.spawn_all(&a)[0].clone();
    let a = h.ev(Event::Message {
        inc: base.inc,
        byte: 30,
    });
    let (z, zpid) = h.spawn_all(&a)[0].clone();
    h.ev(Event::Message {
        inc: z.inc,
        byte: 17,
    });
    h.ev(Event::Message {
        inc: z.inc,
        byte: 22,
    });
    let a = h.ev(Event::Reaped {
        pid: zpid,
        exit: ExitKind::Code(0),
    });
    assert!(spawn_requests(&a).is_empty(), "{a:?}");
    assert_eq!(h.core.zerg_count(), 0);
    assert_eq!(h.core.len(), 1);
}

#[test]
fn stop_command_during_an_asynchronous_start_keeps_the_process_tracked() {
    let mut h = Harness::with_activation(ActivationConfig::default());
    let a = h.scan(vec![entry("app.ini", 1)]);
    let req = spawn_requests(&a)[0].clone();
    let (r, a) = h.cmd(VassalCommand::Stop, "app.ini");
    assert!(matches!(r, Err(CommandError::Starting { .. })), "{r:?}");
    assert!(a.is_empty());
    h.ev(Event::Spawned {
        inc: req.inc,
        pid: 42,
    });
    let v = h.v("/v/app.ini");
    assert_eq!((v.state, v.suspended()), (running(req.inc, 42), false));
}

#[test]
fn spawn_command_activates_an_on_demand_vassal_and_wait_for_command_comes_first() {
    let mut h = Harness::with_activation(on_demand());
    let id = armed(&mut h);
    let (r, a) = h.cmd(VassalCommand::Spawn, "app.ini");
    assert!(r.unwrap().contains("on demand"));
    let s = spawn_requests(&a);
    assert_eq!((s.len(), s[0].vassal), (1, id));

    let mut h = Harness::with_activation(ActivationConfig {
        on_demand: true,
        wait_for_command: true,
        ..Default::default()
    });
    // Suspended first: no socket lookup until a spawn command.
    assert!(h.scan(vec![entry("w.ini", 1)]).is_empty());
    assert_eq!(h.v("/v/w.ini").state, State::Suspended);
    let (_, a) = h.cmd(VassalCommand::Spawn, "w.ini");
    assert!(
        matches!(a[..], [Action::OnDemand(OnDemandAction::Resolve { .. })]),
        "{a:?}"
    );
    assert_eq!(h.v("/v/w.ini").state, State::OnDemand);
}

#[test]
fn a_stopping_vassal_is_suspended_until_a_spawn_command_which_restarts_it_once_reaped() {
    let mut h = Harness::with_activation(ActivationConfig::default());
    let a = h.scan(vec![entry("app.ini", 1)]);
    let (_, pid) = h.spawn_all(&a)[0].clone();
    assert!(h.cmd(VassalCommand::Stop, "app.ini").0.is_ok());
    let v = h.v("/v/app.ini");
    assert!(matches!(v.state, State::Stopping(_)) && v.suspended());
    let (r, _) = h.cmd(VassalCommand::Spawn, "app.ini");
    assert_eq!(r.as_deref(), Ok("vassal app.ini is already stopping"));
    assert!(!h.v("/v/app.ini").suspended());
    let a = h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Code(0),
    });
    assert_eq!(spawn_requests(&a).len(), 1, "{a:?}");
}
