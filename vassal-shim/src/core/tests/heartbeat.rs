//! Heartbeats and health.

use super::*;

#[test]
fn probe_readiness_retries_then_heartbeats_only_while_healthy() {
    let mut s = settings(probe());
    s.heartbeat = Some(Duration::from_secs(1));
    let mut t = T::new(s);
    t.actions();
    assert_eq!(t.input(Input::Spawned { pid: 10 }), vec![]);
    assert_eq!(t.advance(Duration::ZERO), vec![Probe]);
    assert_eq!(t.input(Input::Probe(false)), vec![]);
    assert_eq!(t.advance(Duration::from_millis(100)), vec![]);
    assert_eq!(t.advance(Duration::from_millis(100)), vec![Probe]);
    assert_eq!(
        t.input(Input::Probe(true)),
        vec![Send(M::Ready), Send(M::Accepting), Send(M::Heartbeat)]
    );
    // one second later: a heartbeat and a health probe
    let a = t.advance(Duration::from_secs(1));
    assert!(
        a.contains(&Send(M::Heartbeat)) && a.contains(&Probe),
        "{a:?}"
    );
    t.input(Input::Probe(false));
    // the next tick finds it unhealthy (and the loyalty grace is over)
    let a = t.advance(Duration::from_secs(1));
    assert!(
        a.contains(&Send(M::Loyal)) && !a.contains(&Send(M::Heartbeat)),
        "unhealthy: {a:?}"
    );
    t.input(Input::Probe(true));
    let a = t.advance(Duration::from_secs(1));
    assert!(a.contains(&Send(M::Heartbeat)), "{a:?}");
}

#[test]
fn stopped_program_gets_no_heartbeats() {
    let mut s = settings(Ready::Immediate);
    s.heartbeat = Some(Duration::from_secs(1));
    let mut t = T::new(s);
    t.actions();
    t.input(Input::Spawned { pid: 10 });
    t.input(Input::Stopped);
    let a = t.advance(Duration::from_secs(5));
    assert!(!a.contains(&Send(M::Heartbeat)), "{a:?}");
    t.input(Input::Continued);
    assert!(t
        .advance(Duration::from_secs(1))
        .contains(&Send(M::Heartbeat)));
}

#[test]
fn watchdog_pings_gate_heartbeats() {
    let mut s = settings(Ready::Immediate);
    s.heartbeat = Some(Duration::from_secs(1));
    s.watchdog = Some(Duration::from_secs(2));
    let mut t = T::new(s);
    t.actions();
    t.input(Input::Spawned { pid: 10 });
    t.input(Input::Notify(Notification::Watchdog));
    assert!(t
        .advance(Duration::from_secs(1))
        .contains(&Send(M::Heartbeat)));
    // still within 2 s of the ping
    assert!(t
        .advance(Duration::from_secs(1))
        .contains(&Send(M::Heartbeat)));
    let a = t.advance(Duration::from_secs(2));
    assert!(!a.contains(&Send(M::Heartbeat)), "no pings: {a:?}");
    t.input(Input::Notify(Notification::Watchdog));
    assert!(t
        .advance(Duration::from_secs(1))
        .contains(&Send(M::Heartbeat)));
    t.input(Input::Notify(Notification::WatchdogTrigger));
    assert!(!t
        .advance(Duration::from_secs(1))
        .contains(&Send(M::Heartbeat)));
}

#[test]
fn heartbeats_continue_while_a_reload_stops_the_old_program_but_not_before_ready() {
    let mut s = settings(Ready::Notify);
    s.heartbeat = Some(Duration::from_secs(1));
    let mut t = T::new(s);
    t.actions();
    t.input(Input::Spawned { pid: 10 });
    t.input(Input::Notify(Notification::Ready));
    t.input(Input::Emperor(Event::Reload));
    let a = t.advance(Duration::from_secs(3));
    assert_eq!(
        a.iter().filter(|x| **x == Send(M::Heartbeat)).count(),
        3,
        "old generation stopping: {a:?}"
    );
    assert_eq!(t.input(Input::Exited { code: 0 }), vec![KillAll, Spawn]);
    t.input(Input::Spawned { pid: 11 });
    let a = t.advance(Duration::from_secs(3));
    assert!(!a.contains(&Send(M::Heartbeat)), "new one not ready: {a:?}");
}
