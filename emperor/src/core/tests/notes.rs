//! Lifecycle notes: a touch, a crash and an rm each queue their notes, in order.

use super::*;

/// The `(vassal, event)` of every note queued so far.
fn notes(h: &mut Harness) -> Vec<(String, &'static str)> {
    std::iter::from_fn(|| h.core.poll_note())
        .map(|n| (n.vassal, n.event))
        .collect()
}

fn names(v: &[(String, &'static str)]) -> Vec<&'static str> {
    v.iter().map(|(_, e)| *e).collect()
}

#[test]
fn a_start_notes_detected_spawned_ready_accepting_loyal_once() {
    let mut h = Harness::new(CoreConfig::default());
    let (inc, _) = h.start_one("app.ini");
    for b in [1u8, 5, 17, 17, 26] {
        h.ev(Event::Message { inc, byte: b });
    }
    let n = notes(&mut h);
    assert!(n.iter().all(|(v, _)| v == "app.ini"), "{n:?}");
    assert_eq!(
        names(&n),
        ["detected", "spawned", "ready", "accepting", "loyal"]
    );
}

#[test]
fn a_touch_notes_a_reload_with_its_reason() {
    let mut h = Harness::new(CoreConfig::default());
    let (inc, pid) = h.start_one("app.ini");
    h.ev(Event::Message { inc, byte: 17 });
    notes(&mut h);
    h.scan(vec![entry("app.ini", 2)]);
    let n: Vec<Note> = std::iter::from_fn(|| h.core.poll_note()).collect();
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!(n[0].event, "reload");
    assert_eq!(n[0].at, h.now);
    assert!(n[0].details.contains(&("pid", serde_json::json!(pid))));
}

#[test]
fn a_crash_notes_the_exit_then_the_new_spawn() {
    let mut h = Harness::new(CoreConfig::default());
    let (inc, pid) = h.start_one("app.ini");
    h.ev(Event::Message { inc, byte: 17 });
    notes(&mut h);
    let a = h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Signal(9),
    });
    h.spawn_all(&a);
    let n: Vec<Note> = std::iter::from_fn(|| h.core.poll_note()).collect();
    let events: Vec<&str> = n.iter().map(|n| n.event).collect();
    assert_eq!(events, ["exit", "spawned"]);
    assert!(n[0]
        .details
        .contains(&("status", serde_json::json!("signal 9"))));
}

#[test]
fn an_unloyal_crash_notes_a_backoff_with_its_delay() {
    let mut h = Harness::new(CoreConfig {
        throttle_ms: 100,
        ..CoreConfig::default()
    });
    let (_, pid) = h.start_one("app.ini");
    notes(&mut h);
    h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Code(1),
    });
    let n: Vec<Note> = std::iter::from_fn(|| h.core.poll_note()).collect();
    let events: Vec<&str> = n.iter().map(|n| n.event).collect();
    assert_eq!(events, ["exit", "backoff"]);
    assert!(n[1].details.iter().any(|(k, _)| *k == "delay_ms"));
}

#[test]
fn an_rm_notes_stop_then_exit() {
    let mut h = Harness::new(CoreConfig::default());
    let (inc, pid) = h.start_one("app.ini");
    h.ev(Event::Message { inc, byte: 17 });
    notes(&mut h);
    h.scan(vec![]);
    h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Code(0),
    });
    assert_eq!(names(&notes(&mut h)), ["stop", "exit"]);
}

#[test]
fn an_exile_is_noted() {
    let mut h = Harness::new(CoreConfig::default());
    let (_, pid) = h.start_one("app.ini");
    notes(&mut h);
    h.ev(Event::Reaped {
        pid,
        exit: ExitKind::Code(EXILE_CODE),
    });
    assert_eq!(names(&notes(&mut h)), ["exit", "exile"]);
}

#[test]
fn undrained_notes_stay_bounded() {
    let mut h = Harness::new(CoreConfig::default());
    let (inc, _) = h.start_one("app.ini");
    for i in 0..MAX_NOTES as i128 {
        h.ev(Event::Message { inc, byte: 17 });
        h.scan(vec![entry("app.ini", i + 2)]);
    }
    assert_eq!(notes(&mut h).len(), MAX_NOTES);
}

#[test]
fn a_note_renders_as_one_json_object() {
    let mut h = Harness::new(CoreConfig::default());
    h.start_one("app.ini");
    let n = h.core.poll_note().unwrap();
    let wall = std::time::UNIX_EPOCH + Duration::from_secs(1000);
    let v: serde_json::Value = serde_json::from_str(&n.to_json(h.now, wall)).unwrap();
    assert_eq!(v["time"], serde_json::json!(1000.0));
    assert_eq!(v["vassal"], "app.ini");
    assert_eq!(v["event"], "detected");
    assert_eq!(v["details"]["key"], "/v/app.ini");
}

#[test]
fn a_vassal_that_does_not_stop_in_time_notes_a_kill() {
    let mut h = Harness::new(CoreConfig {
        curse_tolerance: Duration::from_secs(1),
        ..CoreConfig::default()
    });
    let (inc, pid) = h.start_one("app.ini");
    h.ev(Event::Message { inc, byte: 17 });
    notes(&mut h);
    h.scan(vec![]);
    let a = h.advance(Duration::from_secs(2));
    assert!(a.contains(&Action::Kill { pid }), "{a:?}");
    assert_eq!(names(&notes(&mut h)), ["stop", "kill"]);
}
