//! The core rules an asynchronous start (fork-server adoption) relies on.

use crate::core::{
    Action, Control, Core, CoreConfig, Entry, Event, ExitKind, FileStamp, Inc, SpawnFailure,
};
use std::time::{Duration, Instant};
use uwsgi_proto::EmperorMsg;

fn entry(n: i128) -> Entry {
    Entry {
        key: "/v/a.ini".into(),
        name: "a.ini".into(),
        stamp: FileStamp {
            mtime_ns: n,
            size: 1,
            ino: 1,
        },
        content: None,
        uid: 0,
        gid: 0,
    }
}

fn drain(core: &mut Core) -> Vec<Action> {
    std::iter::from_fn(|| core.poll_action()).collect()
}

/// A core with `a.ini` asked to start; returns the incarnation.
fn starting(now: Instant) -> (Core, Inc) {
    let mut core = Core::new(CoreConfig::default());
    core.handle(
        now,
        Event::Scanned {
            monitor: 0,
            entries: vec![entry(1)],
        },
    );
    let inc = drain(&mut core)
        .into_iter()
        .find_map(|a| match a {
            Action::Spawn(r) => Some(r.inc),
            _ => None,
        })
        .expect("a spawn");
    (core, inc)
}

#[test]
fn an_answer_after_the_config_is_gone_stops_the_vassal() {
    let now = Instant::now();
    let (mut core, inc) = starting(now);
    core.handle(
        now,
        Event::Scanned {
            monitor: 0,
            entries: vec![],
        },
    );
    assert!(drain(&mut core).is_empty(), "nothing to stop yet");
    core.handle(now, Event::Spawned { inc, pid: 42 });
    assert!(drain(&mut core).contains(&Action::Send {
        inc,
        msg: EmperorMsg::Stop
    }));
    core.handle(
        now,
        Event::Reaped {
            pid: 42,
            exit: ExitKind::Code(0),
        },
    );
    assert!(core.is_empty());
}

#[test]
fn shutdown_waits_for_a_start_in_flight() {
    let now = Instant::now();
    let (mut core, inc) = starting(now);
    core.handle(now, Event::Control(Control::Shutdown));
    assert!(!drain(&mut core).contains(&Action::Exit));
    core.handle(now, Event::Spawned { inc, pid: 42 });
    let a = drain(&mut core);
    assert!(
        a.contains(&Action::Send {
            inc,
            msg: EmperorMsg::Stop
        }) && !a.contains(&Action::Exit),
        "{a:?}"
    );
    core.handle(
        now,
        Event::Reaped {
            pid: 42,
            exit: ExitKind::Code(0),
        },
    );
    assert!(drain(&mut core).contains(&Action::Exit));
    // A failed answer ends the wait too.
    let (mut core, inc) = starting(now);
    core.handle(now, Event::Control(Control::Shutdown));
    core.handle(
        now,
        Event::SpawnFailed {
            inc,
            reason: SpawnFailure::executor(std::io::Error::other("no fork server")),
        },
    );
    assert!(drain(&mut core).contains(&Action::Exit));
}

/// An adopted `a.ini` running as pid 42 (loyal when `loyal`).
fn adopted(now: Instant, loyal: bool) -> (Core, Inc) {
    let (mut core, inc) = starting(now);
    core.handle(now, Event::Adopted { inc, pid: 42 });
    core.handle(now, Event::Message { inc, byte: 1 });
    if loyal {
        core.handle(now, Event::Message { inc, byte: 17 });
    }
    assert!(core.vassal("/v/a.ini").unwrap().adopted());
    drain(&mut core);
    (core, inc)
}

fn spawned_again(a: &[Action], old: Inc) -> bool {
    a.iter()
        .any(|a| matches!(a, Action::Spawn(r) if r.inc != old))
}

#[test]
fn a_reloaded_adopted_vassal_is_adopted_again_at_once() {
    // Loyal or not (uWSGI workers are loyal only after a first request).
    for loyal in [true, false] {
        let now = Instant::now();
        let (mut core, inc) = adopted(now, loyal);
        let later = now + Duration::from_secs(1);
        core.handle(
            later,
            Event::Scanned {
                monitor: 0,
                entries: vec![entry(2)],
            },
        );
        assert!(drain(&mut core).contains(&Action::Send {
            inc,
            msg: EmperorMsg::Reload
        }));
        // It cannot re-exec: it exits 0 and a new adoption starts without backoff.
        core.handle(later, Event::ChannelClosed { inc });
        core.handle(
            later,
            Event::Reaped {
                pid: 42,
                exit: ExitKind::Code(0),
            },
        );
        let a = drain(&mut core);
        assert!(spawned_again(&a, inc), "loyal={loyal}: {a:?}");
        let v = core.vassal("/v/a.ini").unwrap();
        assert_eq!((v.adopted(), v.backoff.attempt), (false, 0));
    }
}

#[test]
fn an_adopted_vassal_dying_on_its_own_follows_the_usual_rules() {
    let now = Instant::now();
    // Loyal: respawned at once.
    let (mut core, _) = adopted(now, true);
    core.handle(
        now,
        Event::Reaped {
            pid: 42,
            exit: ExitKind::Signal(9),
        },
    );
    assert!(drain(&mut core)
        .iter()
        .any(|a| matches!(a, Action::Spawn(_))));
    // Not loyal yet: backs off.
    let (mut core, _) = adopted(now, false);
    core.handle(
        now,
        Event::Reaped {
            pid: 42,
            exit: ExitKind::Code(0),
        },
    );
    assert!(!drain(&mut core)
        .iter()
        .any(|a| matches!(a, Action::Spawn(_))));
    assert_eq!(core.vassal("/v/a.ini").unwrap().backoff.attempt, 1);
}
