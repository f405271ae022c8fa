//! The rules an asynchronous start (fork-server adoption) relies on.

use super::*;

/// A harness with `a.ini` asked to start; returns the incarnation.
fn starting() -> (Harness, Inc) {
    let mut h = Harness::new(CoreConfig::default());
    let a = h.scan(vec![entry("a.ini", 1)]);
    let inc = spawn_of(&a).expect("a spawn").inc;
    (h, inc)
}

fn reaped(pid: i32, exit: ExitKind) -> Event {
    Event::Reaped { pid, exit }
}

#[test]
fn an_answer_after_the_config_is_gone_stops_the_vassal() {
    let (mut h, inc) = starting();
    assert!(h.scan(vec![]).is_empty(), "nothing to stop yet");
    let a = h.ev(Event::Spawned { inc, pid: 42 });
    assert!(a.contains(&Action::Send {
        inc,
        msg: EmperorMsg::Stop
    }));
    h.ev(reaped(42, ExitKind::Code(0)));
    assert!(h.core.is_empty());
}

#[test]
fn shutdown_waits_for_a_start_in_flight() {
    let (mut h, inc) = starting();
    assert!(!h
        .ev(Event::Control(Control::Shutdown))
        .contains(&Action::Exit));
    let a = h.ev(Event::Spawned { inc, pid: 42 });
    assert!(
        a.contains(&Action::Send {
            inc,
            msg: EmperorMsg::Stop
        }) && !a.contains(&Action::Exit),
        "{a:?}"
    );
    assert!(h.ev(reaped(42, ExitKind::Code(0))).contains(&Action::Exit));
    // A failed answer ends the wait too.
    let (mut h, inc) = starting();
    h.ev(Event::Control(Control::Shutdown));
    let a = h.ev(Event::SpawnFailed {
        inc,
        reason: SpawnFailure::executor(std::io::Error::other("no fork server")),
    });
    assert!(a.contains(&Action::Exit), "{a:?}");
}

/// An adopted `a.ini` running as pid 42 (loyal when `loyal`).
fn adopted(loyal: bool) -> (Harness, Inc) {
    let (mut h, inc) = starting();
    h.ev(Event::Adopted { inc, pid: 42 });
    h.ev(Event::Message { inc, byte: 1 });
    if loyal {
        h.ev(Event::Message { inc, byte: 17 });
    }
    assert!(h.v("/v/a.ini").adopted());
    (h, inc)
}

fn spawned_again(a: &[Action], old: Inc) -> bool {
    spawn_requests(a).iter().any(|r| r.inc != old)
}

#[test]
fn a_reloaded_adopted_vassal_is_adopted_again_at_once() {
    // Loyal or not (uWSGI workers are loyal only after a first request).
    for loyal in [true, false] {
        let (mut h, inc) = adopted(loyal);
        h.now += Duration::from_secs(1);
        let a = h.scan(vec![entry("a.ini", 2)]);
        assert!(a.contains(&Action::Send {
            inc,
            msg: EmperorMsg::Reload
        }));
        // It cannot re-exec: it exits 0 and a new adoption starts without backoff.
        h.ev(Event::ChannelClosed { inc });
        let a = h.ev(reaped(42, ExitKind::Code(0)));
        assert!(spawned_again(&a, inc), "loyal={loyal}: {a:?}");
        let v = h.v("/v/a.ini");
        assert_eq!((v.adopted(), v.backoff.attempt), (false, 0));
    }
}

#[test]
fn an_adopted_vassal_dying_on_its_own_follows_the_usual_rules() {
    // Loyal: respawned at once.
    let (mut h, _) = adopted(true);
    assert_eq!(spawns(&h.ev(reaped(42, ExitKind::Signal(9)))), 1);
    // Not loyal yet: backs off.
    let (mut h, _) = adopted(false);
    assert_eq!(spawns(&h.ev(reaped(42, ExitKind::Code(0)))), 0);
    assert_eq!(h.v("/v/a.ini").backoff.attempt, 1);
}
