//! Reloads and pushed configs.

use super::*;

#[test]
fn reload_restarts_and_readiness_and_loyalty_again() {
    let mut t = T::new(settings(Ready::Immediate));
    t.actions();
    t.input(Input::Spawned { pid: 10 });
    t.advance(Duration::from_secs(3));
    assert_eq!(
        t.input(Input::Emperor(Event::Reload)),
        vec![SignalGroup(Signal::SIGTERM)]
    );
    assert_eq!(t.input(Input::Exited { code: 0 }), vec![KillAll, Spawn]);
    assert_eq!(
        t.input(Input::Spawned { pid: 11 }),
        vec![Send(M::Ready), Send(M::Accepting)]
    );
    assert_eq!(t.advance(Duration::from_secs(3)), vec![Send(M::Loyal)]);
}

#[test]
fn reload_with_config_requests_it_and_waits() {
    let mut t = T::with_config(settings(Ready::Immediate));
    assert_eq!(t.actions(), vec![], "waits for the first push");
    assert_eq!(t.input(Input::ConfigPushed), vec![Spawn]);
    t.input(Input::Spawned { pid: 10 });
    assert_eq!(
        t.input(Input::Emperor(Event::Reload)),
        vec![Send(M::ConfigRequest), SignalGroup(Signal::SIGTERM)]
    );
    assert_eq!(t.input(Input::Exited { code: 0 }), vec![KillAll]);
    assert_eq!(t.input(Input::ConfigPushed), vec![Spawn]);
    // a second (2.0.x double) push changes nothing
    assert_eq!(t.input(Input::ConfigPushed), vec![]);
}

#[test]
fn no_initial_config_is_fatal() {
    let mut t = T::with_config(settings(Ready::Immediate));
    t.actions();
    assert_eq!(t.advance(CONFIG_WAIT), vec![KillAll, Exit(1)]);
}

#[test]
fn reload_by_signal() {
    let mut s = settings(Ready::Notify);
    s.reload = ReloadMode::Signal(Signal::SIGHUP);
    let mut t = T::new(s);
    t.actions();
    t.input(Input::Spawned { pid: 10 });
    t.input(Input::Notify(Notification::Ready));
    assert_eq!(
        t.input(Input::Signal(ShimSignal::Reload)),
        vec![SignalMain(Signal::SIGHUP)],
        "a reload signal goes to the main process, not the group"
    );
    assert_eq!(
        t.input(Input::Notify(Notification::Ready)),
        vec![Send(M::Ready), Send(M::Accepting)]
    );
    assert_eq!(
        t.input(Input::Emperor(Event::Stop)),
        vec![SignalGroup(Signal::SIGTERM)],
        "a stop still goes to the whole group"
    );
}

#[test]
fn restart_that_hangs_is_killed() {
    let mut t = T::new(settings(Ready::Immediate));
    t.actions();
    t.input(Input::Spawned { pid: 10 });
    t.input(Input::Emperor(Event::Reload));
    assert_eq!(t.advance(Duration::from_secs(11)), vec![KillAll]);
    assert_eq!(t.input(Input::Exited { code: 137 }), vec![KillAll, Spawn]);
}
