//! Readiness and loyalty.

use super::*;

#[test]
fn immediate_ready_then_loyal_after_grace() {
    let mut t = T::new(settings(Ready::Immediate));
    assert_eq!(t.actions(), vec![Spawn]);
    assert_eq!(
        t.input(Input::Spawned { pid: 10 }),
        vec![Send(M::Ready), Send(M::Accepting)]
    );
    assert_eq!(t.advance(Duration::from_millis(1900)), vec![]);
    assert_eq!(t.advance(Duration::from_millis(200)), vec![Send(M::Loyal)]);
    assert_eq!(t.advance(Duration::from_secs(60)), vec![]);
}

#[test]
fn notify_readiness_and_extensions() {
    let mut t = T::new(settings(Ready::Notify));
    t.actions();
    t.input(Input::Spawned { pid: 10 });
    assert_eq!(t.advance(Duration::from_secs(30)), vec![]);
    assert_eq!(
        t.input(Input::Notify(Notification::Ready)),
        vec![Send(M::Ready), Send(M::Accepting)]
    );
    assert_eq!(
        t.input(Input::Notify(Notification::Loyal)),
        vec![Send(M::Loyal)]
    );
    assert_eq!(t.advance(Duration::from_secs(5)), vec![]);
    assert_eq!(
        t.input(Input::Notify(Notification::Sos)),
        vec![Send(M::Sos)]
    );
    assert_eq!(
        t.input(Input::Notify(Notification::Sos)),
        vec![],
        "rate limited"
    );
    assert_eq!(
        t.input(Input::Notify(Notification::Idle)),
        vec![Send(M::StopMe)]
    );
    // RELOADING=1 then READY=1: accepting again, loyalty already given
    assert_eq!(t.input(Input::Notify(Notification::Reloading)), vec![]);
    assert_eq!(
        t.input(Input::Notify(Notification::Ready)),
        vec![Send(M::Ready), Send(M::Accepting)]
    );
    assert_eq!(t.advance(Duration::from_secs(5)), vec![Send(M::Loyal)]);
}

#[test]
fn never_ready_gives_up_after_ready_timeout() {
    let mut s = settings(Ready::Notify);
    s.ready_timeout = Some(Duration::from_secs(5));
    let mut t = T::new(s);
    t.actions();
    t.input(Input::Spawned { pid: 10 });
    assert_eq!(t.advance(Duration::from_secs(4)), vec![]);
    assert_eq!(
        t.advance(Duration::from_secs(2)),
        vec![SignalGroup(Signal::SIGTERM)]
    );
    assert_eq!(t.input(Input::Exited { code: 143 }), vec![KillAll, Exit(1)]);
}

#[test]
fn ready_in_time_cancels_the_ready_timeout() {
    let mut s = settings(Ready::Notify);
    s.ready_timeout = Some(Duration::from_secs(5));
    let mut t = T::new(s);
    t.actions();
    t.input(Input::Spawned { pid: 10 });
    t.advance(Duration::from_secs(4));
    t.input(Input::Notify(Notification::Ready));
    let a = t.advance(Duration::from_secs(60));
    assert_eq!(a, vec![Send(M::Loyal)]);
}
