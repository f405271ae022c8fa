//! One test per lifecycle rule, with a fake clock.

use super::*;

fn cfg() -> CoreConfig {
    CoreConfig::default()
}

#[test]
fn new_file_is_spawned_and_bytes_update_flags() {
    let mut h = Harness::new(cfg());
    let a = h.scan(vec![entry("app.ini", 1)]);
    assert_eq!(spawns(&a), 1);
    let (inc, pid) = h.spawn_last(&a).unwrap();
    assert_eq!(h.state("app.ini"), running(inc, pid));
    for b in [1u8, 5, 17] {
        h.ev(Event::Message { inc, byte: b });
    }
    let v = h.core.channel(h.core.vassal("/v/app.ini").unwrap());
    assert!(v.ready && v.accepting && v.loyal);
}

#[test]
fn modified_file_reloads_with_byte_1_and_keeps_the_pid() {
    let mut h = Harness::new(cfg());
    let (inc, pid) = h.start_one("app.ini");
    h.ev(Event::Message { inc, byte: 5 });
    // Same second, different nanoseconds: still a change.
    let a = h.scan(vec![entry("app.ini", 2)]);
    assert_eq!(
        a,
        vec![Action::Send {
            inc,
            msg: EmperorMsg::Reload
        }]
    );
    let v = h.core.vassal("/v/app.ini").unwrap();
    assert_eq!(v.respawns, 1);
    assert!(!h.core.channel(v).accepting);
    assert!(matches!(v.state, State::Running(_)));
    assert_eq!(v.state.process().map(|p| (p.inc, p.pid)), Some((inc, pid)));
    // An unchanged rescan does nothing.
    assert!(h.scan(vec![entry("app.ini", 2)]).is_empty());
}

#[test]
fn counters_count_spawns_reloads_and_exits_by_reason() {
    let mut h = Harness::new(cfg());
    let (inc, pid) = h.start_one("app.ini");
    h.ev(Event::Message { inc, byte: 5 });
    h.scan(vec![entry("app.ini", 2)]);
    h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Signal(9),
    });
    let c = h.core.counters();
    assert_eq!((c.spawns, c.spawn_failures, c.reloads), (1, 0, 1));
    let v = h.core.vassal("/v/app.ini").unwrap();
    assert_eq!(v.exits, vec![(ExitKind::Signal(9), 1)]);
}

#[test]
fn removed_file_is_stopped_then_dropped_when_reaped() {
    let mut h = Harness::new(cfg());
    let (inc, pid) = h.start_one("app.ini");
    let a = h.scan(vec![]);
    assert_eq!(
        a,
        vec![Action::Send {
            inc,
            msg: EmperorMsg::Stop
        }]
    );
    // EOF is only a hint.
    assert!(h.ev(Event::ChannelClosed { inc }).is_empty());
    assert!(h.core.vassal("/v/app.ini").is_some());
    let a = h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Code(0),
    });
    assert_eq!(a, vec![Action::Release { inc }]);
    assert!(h.core.is_empty());
}

#[test]
fn graceful_shutdown_option_stops_with_byte_2() {
    let mut h = Harness::new(CoreConfig {
        graceful_shutdown: true,
        ..cfg()
    });
    let (inc, _) = h.start_one("app.ini");
    assert_eq!(
        h.scan(vec![]),
        vec![Action::Send {
            inc,
            msg: EmperorMsg::GracefulStop
        }]
    );
}

#[test]
fn loyal_vassal_that_dies_is_respawned_at_once() {
    let mut h = Harness::new(cfg());
    let (inc, pid) = h.start_one("app.ini");
    h.ev(Event::Message { inc, byte: 17 });
    let a = h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Signal(9),
    });
    assert_eq!(spawns(&a), 1);
    let v = h.core.vassal("/v/app.ini").unwrap();
    assert_eq!(v.restarts, 1);
    assert_eq!(v.last_exit, Some(ExitKind::Signal(9)));
}

#[test]
fn unloyal_death_backs_off_exponentially_with_jitter_and_a_cap() {
    let mut h = Harness::new(CoreConfig {
        throttle_ms: 100,
        max_throttle_ms: 350,
        ..cfg()
    });
    let (_, mut pid) = h.start_one("bad.ini");
    let mut levels = Vec::new();
    for _ in 0..5 {
        let a = h.ev(Event::Reaped {
            pid,
            exit: ExitKind::Code(1),
        });
        assert_eq!(spawns(&a), 0, "no immediate respawn");
        let v = h.core.vassal("/v/bad.ini").unwrap();
        levels.push(v.backoff.level_ms);
        let State::Waiting(state::Waiting { at, .. }) = v.state else {
            panic!("not waiting: {:?}", v.state)
        };
        let delay = at - h.now;
        let nominal = Duration::from_millis(v.backoff.level_ms);
        assert!(delay >= nominal.mul_f64(0.89) && delay <= nominal.mul_f64(1.11));
        // Nothing happens before the deadline.
        assert_eq!(spawns(&h.advance(delay / 2)), 0);
        let a = h.advance(delay);
        pid = h.spawn_last(&a).expect("respawned after backoff").1;
    }
    assert_eq!(levels, vec![100, 200, 350, 350, 350]);
    assert_eq!(h.core.vassal("/v/bad.ini").unwrap().backoff.attempt, 5);
}

#[test]
fn loyalty_resets_the_backoff() {
    let mut h = Harness::new(cfg());
    let (_, pid) = h.start_one("app.ini");
    h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Code(1),
    });
    let a = h.run_until_deadline(Duration::from_secs(5));
    let (inc, _) = h.spawn_last(&a).unwrap();
    assert_eq!(h.core.vassal("/v/app.ini").unwrap().backoff.attempt, 1);
    h.ev(Event::Message { inc, byte: 17 });
    assert_eq!(
        h.core.vassal("/v/app.ini").unwrap().backoff,
        Backoff::default()
    );
}

#[test]
fn editing_the_file_lifts_the_backoff_at_once() {
    let mut h = Harness::new(CoreConfig {
        throttle_ms: 60_000,
        ..cfg()
    });
    let (_, pid) = h.start_one("app.ini");
    h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Code(1),
    });
    assert!(matches!(h.state("app.ini"), State::Waiting { .. }));
    let a = h.scan(vec![entry("app.ini", 2)]);
    assert_eq!(spawns(&a), 1);
    assert_eq!(h.core.vassal("/v/app.ini").unwrap().backoff.attempt, 0);
}

#[test]
fn no_blacklist_retries_every_freq_without_growing() {
    let mut h = Harness::new(CoreConfig {
        no_blacklist: true,
        ..cfg()
    });
    let (_, pid) = h.start_one("app.ini");
    h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Code(1),
    });
    let v = h.core.vassal("/v/app.ini").unwrap();
    assert_eq!(v.backoff.attempt, 0);
    assert_eq!(spawns(&h.advance(Duration::from_millis(3400))), 1);
}

#[test]
fn spawn_failure_is_retried_with_backoff() {
    let mut h = Harness::new(cfg());
    let a = h.scan(vec![entry("app.ini", 1)]);
    let Action::Spawn(r) = &a[0] else { panic!() };
    let a = h.ev(Event::SpawnFailed {
        inc: r.inc,
        reason: SpawnFailure::executor(std::io::Error::other("uwsgi not found")),
    });
    assert_eq!(a, vec![Action::Release { inc: r.inc }]);
    assert_eq!(h.core.vassal("/v/app.ini").unwrap().backoff.attempt, 1);
    assert_eq!(spawns(&h.run_until_deadline(Duration::from_secs(2))), 1);
}

#[test]
fn exit_26_is_exiled_until_the_file_changes() {
    let mut h = Harness::new(cfg());
    let (_, pid) = h.start_one("app.ini");
    let a = h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Code(EXILE_CODE),
    });
    assert_eq!(spawns(&a), 0);
    assert_eq!(h.state("app.ini"), State::Exiled);
    assert_eq!(spawns(&h.advance(Duration::from_secs(600))), 0);
    assert!(h.scan(vec![entry("app.ini", 1)]).is_empty());
    assert_eq!(spawns(&h.scan(vec![entry("app.ini", 5)])), 1);
}

#[test]
fn exit_26_counts_even_when_eof_came_first() {
    let mut h = Harness::new(cfg());
    let (inc, pid) = h.start_one("app.ini");
    h.ev(Event::ChannelClosed { inc });
    h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Code(EXILE_CODE),
    });
    assert_eq!(h.state("app.ini"), State::Exiled);
}

#[test]
fn stop_not_honoured_within_curse_tolerance_is_sigkilled_and_repeated() {
    let mut h = Harness::new(CoreConfig {
        curse_tolerance: Duration::from_secs(5),
        ..cfg()
    });
    let (_, pid) = h.start_one("app.ini");
    h.scan(vec![]);
    assert!(h.advance(Duration::from_secs(4)).is_empty());
    assert_eq!(
        h.advance(Duration::from_secs(1)),
        vec![Action::Kill { pid }]
    );
    assert_eq!(
        h.advance(Duration::from_secs(5)),
        vec![Action::Kill { pid }]
    );
}

#[test]
fn channel_eof_curses_and_kills_after_tolerance_then_respawns_on_reap() {
    let mut h = Harness::new(CoreConfig {
        curse_tolerance: Duration::from_secs(2),
        ..cfg()
    });
    let (inc, pid) = h.start_one("app.ini");
    h.ev(Event::Message { inc, byte: 17 });
    h.ev(Event::ChannelClosed { inc });
    assert!(matches!(
        h.state("app.ini"),
        State::Stopping(state::Stopping {
            requested: false,
            ..
        })
    ));
    assert_eq!(
        h.advance(Duration::from_secs(2)),
        vec![Action::Kill { pid }]
    );
    let a = h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Signal(9),
    });
    assert_eq!(spawns(&a), 1, "still wanted and was loyal: respawned");
}

#[test]
fn heartbeat_silence_is_sigkilled_only_once_heartbeats_started() {
    let mut h = Harness::new(CoreConfig {
        required_heartbeat: Duration::from_secs(4),
        ..cfg()
    });
    let (inc, pid) = h.start_one("app.ini");
    // No heartbeat ever: no supervision.
    assert!(h.advance(Duration::from_secs(60)).is_empty());
    h.ev(Event::Message { inc, byte: 17 });
    h.ev(Event::Message { inc, byte: 26 });
    assert!(h.advance(Duration::from_secs(3)).is_empty());
    h.ev(Event::Message { inc, byte: 26 });
    assert!(h.advance(Duration::from_secs(3)).is_empty());
    assert_eq!(
        h.advance(Duration::from_secs(1)),
        vec![Action::Kill { pid }]
    );
    assert!(h.advance(Duration::from_secs(10)).is_empty(), "killed once");
    let a = h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Signal(9),
    });
    assert_eq!(spawns(&a), 1);
}

#[test]
fn heartbeat_timers_do_not_pile_up() {
    let mut h = Harness::new(cfg());
    let (inc, _) = h.start_one("app.ini");
    for _ in 0..1000 {
        h.ev(Event::Message { inc, byte: 26 });
    }
    assert!(h.core.timers.len() <= 2);
}

#[test]
fn config_is_pushed_once_at_start_and_once_per_request_never_on_reload() {
    let mut h = Harness::new(cfg());
    let content: Arc<[u8]> = Arc::from(&b"[uwsgi]\nmaster = true\n"[..]);
    let mut e = entry("zz.ini", 1);
    e.content = Some(content.clone());
    let a = h.scan(vec![e.clone()]);
    let Action::Spawn(r) = &a[0] else { panic!() };
    assert_eq!(r.content.as_deref(), Some(&*content));
    let inc = r.inc;
    assert_eq!(
        h.ev(Event::Spawned { inc, pid: 7 }),
        vec![Action::PushConfig {
            inc,
            content: content.clone()
        }]
    );
    let new: Arc<[u8]> = Arc::from(&b"[uwsgi]\nmaster = false\n"[..]);
    e.content = Some(new.clone());
    assert_eq!(
        h.scan(vec![e]),
        vec![Action::Send {
            inc,
            msg: EmperorMsg::Reload
        }]
    );
    assert_eq!(
        h.ev(Event::Message { inc, byte: 2 }),
        vec![Action::PushConfig { inc, content: new }]
    );
}

#[test]
fn file_vassal_asking_for_config_gets_nothing() {
    let mut h = Harness::new(cfg());
    let (inc, _) = h.start_one("app.ini");
    assert!(h.ev(Event::Message { inc, byte: 2 }).is_empty());
}

#[test]
fn sos_and_unknown_bytes_are_counted() {
    let mut h = Harness::new(cfg());
    let (inc, _) = h.start_one("app.ini");
    h.ev(Event::Message { inc, byte: 30 });
    h.ev(Event::Message { inc, byte: 99 });
    h.ev(Event::Message { inc, byte: 99 });
    let v = h.core.vassal("/v/app.ini").unwrap();
    assert_eq!((v.sos, v.unknown_bytes), (1, 2));
}

#[test]
fn stop_me_byte_restarts_a_file_vassal() {
    let mut h = Harness::new(cfg());
    let (inc, pid) = h.start_one("app.ini");
    assert_eq!(
        h.ev(Event::Message { inc, byte: 22 }),
        vec![Action::Send {
            inc,
            msg: EmperorMsg::Stop
        }]
    );
    let a = h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Code(0),
    });
    assert_eq!(spawns(&a), 1);
}

#[test]
fn file_recreated_while_stopping_is_started_again_after_reap() {
    let mut h = Harness::new(cfg());
    let (_, pid) = h.start_one("app.ini");
    h.scan(vec![]);
    assert!(h.scan(vec![entry("app.ini", 9)]).is_empty());
    let a = h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Code(0),
    });
    assert_eq!(spawns(&a), 1);
}

#[test]
fn shutdown_stops_all_kills_after_mercy_and_exits_once_reaped() {
    let mut h = Harness::new(CoreConfig {
        reload_mercy: Duration::from_secs(10),
        curse_tolerance: Duration::from_secs(60),
        ..cfg()
    });
    let a = h.scan(vec![
        entry("a.ini", 1),
        entry("b.ini", 1),
        entry("c.ini", 1),
    ]);
    h.spawn_last(&a);
    let pids: Vec<i32> = h.core.vassals().filter_map(|v| v.state.pid()).collect();
    let a = h.ev(Event::Control(Control::Shutdown));
    assert_eq!(
        a.iter()
            .filter(|a| matches!(
                a,
                Action::Send {
                    msg: EmperorMsg::Stop,
                    ..
                }
            ))
            .count(),
        3
    );
    // New files are ignored while shutting down.
    assert!(h
        .scan(vec![entry("d.ini", 1)])
        .iter()
        .all(|a| !matches!(a, Action::Spawn(_))));
    h.ev(Event::Reaped {
        pid: pids[0],
        exit: ExitKind::Code(0),
    });
    let a = h.advance(Duration::from_secs(10));
    let kills: Vec<_> = a
        .iter()
        .filter(|a| matches!(a, Action::Kill { .. }))
        .collect();
    assert_eq!(kills.len(), 2);
    h.ev(Event::Reaped {
        pid: pids[1],
        exit: ExitKind::Signal(9),
    });
    let a = h.ev(Event::Reaped {
        pid: pids[2],
        exit: ExitKind::Signal(9),
    });
    assert!(a.contains(&Action::Exit));
    assert!(h.core.is_empty());
}

#[test]
fn shutdown_with_a_backed_off_vassal_exits_at_once() {
    let mut h = Harness::new(cfg());
    let (_, pid) = h.start_one("app.ini");
    h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Code(1),
    });
    let a = h.ev(Event::Control(Control::Shutdown));
    assert_eq!(a, vec![Action::Exit]);
}

#[test]
fn hup_reloads_every_running_vassal() {
    let mut h = Harness::new(cfg());
    let a = h.scan(vec![entry("a.ini", 1), entry("b.ini", 1)]);
    h.spawn_last(&a);
    let a = h.ev(Event::Control(Control::ReloadAll));
    assert_eq!(
        a.iter()
            .filter(|a| matches!(
                a,
                Action::Send {
                    msg: EmperorMsg::Reload,
                    ..
                }
            ))
            .count(),
        2
    );
}

#[test]
fn urg_clears_every_backoff_and_starts_waiting_vassals() {
    let mut h = Harness::new(CoreConfig {
        throttle_ms: 60_000,
        ..cfg()
    });
    let (_, pid) = h.start_one("app.ini");
    h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Code(1),
    });
    let a = h.ev(Event::Control(Control::ClearBackoff));
    assert_eq!(spawns(&a), 1);
    assert_eq!(h.core.vassal("/v/app.ini").unwrap().backoff.attempt, 0);
}

#[test]
fn winch_asks_for_a_rescan() {
    let mut h = Harness::new(cfg());
    assert_eq!(h.ev(Event::Control(Control::Rescan)), vec![Action::Rescan]);
}

#[test]
fn monitors_do_not_remove_each_others_vassals() {
    let mut h = Harness::new(cfg());
    let mut a = entry("app.ini", 1);
    let mut b = entry("app.ini", 1);
    a.key = "/one/app.ini".into();
    b.key = "/two/app.ini".into();
    let x = h.ev(Event::Scanned {
        monitor: 0,
        entries: vec![a],
    });
    h.spawn_last(&x);
    let x = h.ev(Event::Scanned {
        monitor: 1,
        entries: vec![b],
    });
    assert_eq!(spawns(&x), 1);
    h.spawn_last(&x);
    // An empty scan of monitor 1 stops only its own vassal.
    let x = h.ev(Event::Scanned {
        monitor: 1,
        entries: vec![],
    });
    assert_eq!(x.len(), 1);
    assert_eq!(h.core.len(), 2);
    assert!(matches!(
        h.core.vassal("/one/app.ini").unwrap().state,
        State::Running { .. }
    ));
}

#[test]
fn unknown_pid_and_stale_channel_are_ignored() {
    let mut h = Harness::new(cfg());
    let (inc, pid) = h.start_one("app.ini");
    assert!(h
        .ev(Event::Reaped {
            pid: 4242,
            exit: ExitKind::Code(0)
        })
        .is_empty());
    h.ev(Event::Message { inc, byte: 17 });
    h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Code(1),
    });
    // Bytes on the old incarnation's token are dropped.
    assert!(h.ev(Event::Message { inc, byte: 22 }).is_empty());
}

#[test]
fn single_file_updates_add_reload_and_stop() {
    let mut h = Harness::new(cfg());
    let e = entry("app.ini", 1);
    let a = h.ev(Event::Updated {
        monitor: 0,
        key: e.key.clone(),
        entry: Some(e.clone()),
    });
    let (inc, pid) = h.spawn_last(&a).unwrap();
    let a = h.ev(Event::Updated {
        monitor: 0,
        key: e.key.clone(),
        entry: Some(entry("app.ini", 2)),
    });
    assert_eq!(
        a,
        vec![Action::Send {
            inc,
            msg: EmperorMsg::Reload
        }]
    );
    // Another monitor cannot remove it.
    assert!(h
        .ev(Event::Updated {
            monitor: 1,
            key: e.key.clone(),
            entry: None
        })
        .is_empty());
    let a = h.ev(Event::Updated {
        monitor: 0,
        key: e.key.clone(),
        entry: None,
    });
    assert_eq!(
        a,
        vec![Action::Send {
            inc,
            msg: EmperorMsg::Stop
        }]
    );
    h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Code(0),
    });
    assert!(h.core.is_empty());
    // A later full scan agrees with the per-file view.
    assert!(h.scan(vec![]).is_empty());
}

#[test]
fn a_stale_incarnation_never_touches_the_next_one_in_its_slot() {
    let mut h = Harness::new(cfg());
    let (old, pid) = h.start_one("app.ini");
    h.ev(Event::Message { inc: old, byte: 17 });
    let a = h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Signal(9),
    });
    let (new, _) = h.spawn_last(&a).expect("respawned");
    assert_ne!(new, old);
    assert_eq!(new.slot(), old.slot());
    // A byte still buffered from the dead process.
    h.ev(Event::Message { inc: old, byte: 5 });
    let v = h.core.vassal("/v/app.ini").unwrap();
    assert!(!h.core.channel(v).accepting && !h.core.channel(v).loyal);
    assert_eq!(h.core.vassal_by_inc(old).map(|v| v.id), None);
    h.ev(Event::Message { inc: new, byte: 5 });
    let v = h.core.vassal("/v/app.ini").unwrap();
    assert!(h.core.channel(v).accepting);
    assert_eq!(h.core.vassal_by_inc(new).map(|v| v.id), Some(v.id));
}

#[test]
fn a_reused_slot_ignores_the_previous_records_incarnation() {
    let mut h = Harness::new(cfg());
    let a = h.scan(vec![entry("a.ini", 1), entry("b.ini", 1)]);
    h.spawn_last(&a);
    let State::Running(state::Running {
        inc: a_inc,
        pid: a_pid,
        ..
    }) = h.state("a.ini")
    else {
        panic!("a.ini not running");
    };
    h.scan(vec![entry("b.ini", 1)]);
    h.ev(Event::Reaped {
        pid: a_pid,
        exit: ExitKind::Code(0),
    });
    assert!(h.core.vassal("/v/a.ini").is_none());
    let a = h.scan(vec![entry("b.ini", 1), entry("c.ini", 1)]);
    let (c_inc, _) = h.spawn_last(&a).expect("c.ini spawned");
    assert_eq!(c_inc.slot(), a_inc.slot(), "the freed slot is reused");
    for byte in [1u8, 5, 17, 26] {
        h.ev(Event::Message { inc: a_inc, byte });
    }
    let c = h.core.channel(h.core.vassal("/v/c.ini").unwrap());
    assert_eq!(c, ChannelState::default());
}

#[test]
fn incarnations_are_distinct_below_2_60_and_the_counter_wraps_past_0() {
    let mut h = Harness::new(cfg());
    let mut seen = HashSet::new();
    let names: Vec<String> = (0..50).map(|i| format!("v{i}.ini")).collect();
    let a = h.scan(names.iter().map(|n| entry(n, 1)).collect());
    for a in &a {
        if let Action::Spawn(r) = a {
            assert!(r.inc.0 < 1 << 60 && r.inc.0 != 0);
            assert!(seen.insert(r.inc));
        }
    }
    assert_eq!(seen.len(), 50);
    h.core.next_inc = (1 << Inc::SEQ_BITS) - 1;
    let a = h.scan(vec![entry("w.ini", 1), entry("x.ini", 1)]);
    let incs: Vec<Inc> = a
        .iter()
        .filter_map(|a| match a {
            Action::Spawn(r) => Some(r.inc),
            _ => None,
        })
        .collect();
    assert_eq!(incs.len(), 2);
    assert_eq!(incs[0].0 >> Inc::SLOT_BITS, (1 << Inc::SEQ_BITS) - 1);
    assert_eq!(incs[1].0 >> Inc::SLOT_BITS, 1);
    assert!(incs.iter().all(|i| i.0 < 1 << 60));
}

#[test]
fn beyond_the_vassal_limit_a_config_is_refused_until_a_slot_frees() {
    let mut h = Harness::new(cfg());
    h.core.max_vassals = 2;
    let a = h.scan(vec![
        entry("a.ini", 1),
        entry("b.ini", 1),
        entry("c.ini", 1),
    ]);
    assert_eq!(spawns(&a), 2);
    assert_eq!(h.core.len(), 2);
    let refused = ["a.ini", "b.ini", "c.ini"]
        .into_iter()
        .find(|n| h.core.vassal(&format!("/v/{n}")).is_none())
        .expect("one refused");
    h.spawn_last(&a);
    let kept = ["a.ini", "b.ini", "c.ini"]
        .into_iter()
        .find(|n| *n != refused)
        .unwrap();
    let State::Running(state::Running { pid, .. }) = h.state(kept) else {
        panic!("{kept} not running");
    };
    let others: Vec<Entry> = ["a.ini", "b.ini", "c.ini"]
        .into_iter()
        .filter(|n| *n != kept)
        .map(|n| entry(n, 1))
        .collect();
    h.scan(others.clone());
    h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Code(0),
    });
    let a = h.scan(others);
    assert_eq!(spawns(&a), 1, "the refused config gets the freed slot");
    assert!(h.core.vassal(&format!("/v/{refused}")).is_some());
}

#[test]
fn ready_accepting_and_loyal_are_cleared_when_the_process_is_gone() {
    let mut h = Harness::new(cfg());
    let serving = |h: &Harness| {
        let ch = h.core.channel(h.core.vassal("/v/app.ini").unwrap());
        (ch.ready, ch.accepting, ch.loyal)
    };
    // A crash before loyalty: waiting for its backoff, with no process.
    let (inc, pid) = h.start_one("app.ini");
    h.ev(Event::Message { inc, byte: 1 });
    h.ev(Event::Message { inc, byte: 5 });
    assert_eq!(serving(&h), (true, true, false));
    h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Signal(9),
    });
    assert!(matches!(h.state("app.ini"), State::Waiting { .. }));
    assert_eq!(serving(&h), (false, false, false));
    // A loyal one stopped by a command: suspended, with no process.
    let a = h.run_until_deadline(Duration::from_secs(10));
    let (inc, pid) = h.spawn_last(&a).expect("respawned after its backoff");
    for b in [1u8, 5, 17] {
        h.ev(Event::Message { inc, byte: b });
    }
    assert_eq!(serving(&h), (true, true, true));
    h.ev(Event::Command {
        cmd: VassalCommand::Stop,
        name: "app.ini".into(),
    });
    // Still the running process until it is reaped.
    assert_eq!(serving(&h), (true, true, true));
    h.actions();
    h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Code(0),
    });
    assert_eq!(h.state("app.ini"), State::Suspended);
    assert_eq!(serving(&h), (false, false, false));
    // The times of the last process stay (they say when it last served).
    let ch = h.core.channel(h.core.vassal("/v/app.ini").unwrap());
    assert!(ch.last_ready.is_some() && ch.last_loyal.is_some());
}

/// `n` bytes from `inc`, cycling through `bytes`, `step` apart; the actions they caused.
fn flood(h: &mut Harness, inc: Inc, bytes: &[u8], n: usize, step: Duration) -> Vec<Action> {
    let mut out = Vec::new();
    for k in 0..n {
        out.extend(h.ev(Event::Message {
            inc,
            byte: bytes[k % bytes.len()],
        }));
        h.now += step;
    }
    out
}

fn kills(a: &[Action]) -> usize {
    a.iter()
        .filter(|a| matches!(a, Action::Kill { .. }))
        .count()
}

#[test]
fn a_vassal_flooding_its_channel_with_garbage_is_killed_once_and_backs_off() {
    use super::garbage::{GARBAGE_LIMIT, GARBAGE_WINDOW};
    let mut h = Harness::new(CoreConfig {
        throttle_ms: 1000,
        ..cfg()
    });
    let (inc, pid) = h.start_one("app.ini");
    // Garbage with the loyal, ready and accepting bytes mixed in (as /dev/urandom has).
    let garbage = [99u8, 17, 200, 1, 5, 255, 42, 7];
    let unknown_per_cycle = 5;
    let n = (GARBAGE_LIMIT as usize / unknown_per_cycle + 1) * garbage.len();
    let a = flood(&mut h, inc, &garbage, n, Duration::from_micros(10));
    assert_eq!(kills(&a), 1, "killed once, not once per byte: {a:?}");
    assert!(a.contains(&Action::Kill { pid }));
    assert!(matches!(
        h.state("app.ini"),
        State::Stopping(state::Stopping {
            requested: false,
            ..
        })
    ));
    // More garbage while it dies: ignored (no second kill, not even counted).
    let before = h.core.vassal("/v/app.ini").unwrap().unknown_bytes;
    let a = flood(&mut h, inc, &garbage, 10_000, Duration::from_micros(10));
    assert_eq!(kills(&a), 0);
    assert_eq!(h.core.vassal("/v/app.ini").unwrap().unknown_bytes, before);
    // Reaped: a failure with backoff, although its garbage said "loyal".
    let a = h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Signal(9),
    });
    assert_eq!(spawns(&a), 0, "not respawned at once: {a:?}");
    assert!(matches!(h.state("app.ini"), State::Waiting { .. }));
    assert_eq!(h.core.vassal("/v/app.ini").unwrap().backoff.attempt, 1);
    // The next flood doubles the backoff: the garbage's loyal byte earns no clean slate.
    let a = h.run_until_deadline(Duration::from_secs(2));
    let (inc, pid) = h.spawn_last(&a).expect("retried after its backoff");
    let a = flood(&mut h, inc, &garbage, n, Duration::from_micros(10));
    assert_eq!(kills(&a), 1);
    h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Signal(9),
    });
    let v = h.core.vassal("/v/app.ini").unwrap();
    assert_eq!((v.backoff.attempt, v.backoff.level_ms), (2, 2000));
    assert_eq!(v.unknown_bytes, u64::from(GARBAGE_LIMIT) * 2);
    // A few stray bytes per window are only counted, for ever.
    let mut h = Harness::new(cfg());
    let (inc, _) = h.start_one("app.ini");
    let step = GARBAGE_WINDOW / (GARBAGE_LIMIT / 2);
    let a = flood(&mut h, inc, &[99], GARBAGE_LIMIT as usize * 10, step);
    assert_eq!(kills(&a), 0);
    assert!(matches!(h.state("app.ini"), State::Running { .. }));
}

#[test]
fn a_config_gone_during_an_asynchronous_start_is_stopped_once_running_and_dropped_when_reaped() {
    let mut h = Harness::new(cfg());
    let a = h.scan(vec![entry("app.ini", 1)]);
    let req = spawn_of(&a).expect("a spawn");
    assert!(h.scan(vec![]).is_empty());
    assert!(!h.v("/v/app.ini").wanted());
    let a = h.ev(Event::Spawned {
        inc: req.inc,
        pid: 42,
    });
    assert_eq!(sent(&a), vec![(req.inc, EmperorMsg::Stop)]);
    assert!(!h.v("/v/app.ini").wanted());
    let a = h.ev(Event::Reaped {
        pid: 42,
        exit: ExitKind::Code(0),
    });
    assert_eq!(a, vec![Action::Release { inc: req.inc }]);
    assert!(h.core.is_empty());
    // Back while its start is under way: it runs and stays.
    let a = h.scan(vec![entry("app.ini", 1)]);
    let req = spawn_of(&a).expect("a spawn");
    h.scan(vec![]);
    h.scan(vec![entry("app.ini", 2)]);
    assert!(h.v("/v/app.ini").wanted());
    let a = h.ev(Event::Spawned {
        inc: req.inc,
        pid: 43,
    });
    assert!(sent(&a).is_empty(), "{a:?}");
}
