//! Stopping and exit codes.

use super::*;

#[test]
fn crash_before_grace_is_never_loyal_and_exit_code_passes_through() {
    let mut t = T::new(settings(Ready::Immediate));
    t.actions();
    t.input(Input::Spawned { pid: 10 });
    t.advance(Duration::from_millis(500));
    assert_eq!(t.input(Input::Exited { code: 1 }), vec![KillAll, Exit(1)]);
    assert_eq!(t.advance(Duration::from_secs(10)), vec![]);
}

#[test]
fn exile_codes_map_to_26() {
    let mut t = T::new(settings(Ready::Immediate));
    t.actions();
    t.input(Input::Spawned { pid: 10 });
    assert_eq!(t.input(Input::Exited { code: 3 }), vec![KillAll, Exit(26)]);
}

#[test]
fn stop_signal_then_kill_after_timeout() {
    let mut t = T::new(settings(Ready::Immediate));
    t.actions();
    t.input(Input::Spawned { pid: 10 });
    assert_eq!(
        t.input(Input::Emperor(Event::Stop)),
        vec![SignalGroup(Signal::SIGTERM)]
    );
    assert_eq!(t.input(Input::Emperor(Event::Stop)), vec![], "once");
    assert_eq!(t.advance(Duration::from_secs(9)), vec![]);
    assert_eq!(t.advance(Duration::from_secs(2)), vec![KillAll, Exit(0)]);
}

#[test]
fn stop_program_exits_in_time() {
    let mut t = T::new(settings(Ready::Immediate));
    t.actions();
    t.input(Input::Spawned { pid: 10 });
    t.input(Input::Emperor(Event::GracefulStop));
    assert_eq!(t.input(Input::Exited { code: 143 }), vec![KillAll, Exit(0)]);
}

#[test]
fn eof_stops_with_exit_1() {
    let mut t = T::new(settings(Ready::Immediate));
    t.actions();
    t.input(Input::Spawned { pid: 10 });
    t.input(Input::Emperor(Event::Eof));
    assert_eq!(t.input(Input::Exited { code: 0 }), vec![KillAll, Exit(1)]);
}

#[test]
fn spawn_failure_exits_127() {
    let mut t = T::new(settings(Ready::Immediate));
    t.actions();
    assert_eq!(t.input(Input::SpawnFailed), vec![KillAll, Exit(127)]);
}

#[test]
fn stop_during_restart_exits() {
    let mut t = T::new(settings(Ready::Immediate));
    t.actions();
    t.input(Input::Spawned { pid: 10 });
    t.input(Input::Emperor(Event::Reload));
    t.input(Input::Emperor(Event::Stop));
    assert_eq!(t.input(Input::Exited { code: 0 }), vec![KillAll, Exit(0)]);
}
