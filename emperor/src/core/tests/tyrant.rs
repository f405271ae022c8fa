//! Fake-clock tests of tyrant mode in the lifecycle.

use super::*;

fn tyrant() -> Harness {
    Harness::new(CoreConfig {
        tyrant: true,
        ..CoreConfig::default()
    })
}

/// Answers the spawn among `a` with `pid`; its incarnation.
fn spawned(h: &mut Harness, a: &[Action], pid: i32) -> Inc {
    let inc = spawn_of(a).expect("a spawn").inc;
    h.ev(Event::Spawned { inc, pid });
    inc
}

#[test]
fn root_owned_files_are_refused_until_chowned() {
    let mut h = tyrant();
    for (uid, gid) in [(0, 0), (1000, 0), (0, 1000)] {
        assert!(h.scan(vec![owned("app.ini", 1, uid, gid)]).is_empty());
        assert!(h.core.is_empty());
    }
    assert_eq!(
        h.core.tyrant_refused().collect::<Vec<_>>(),
        vec!["/v/app.ini"]
    );
    let a = h.scan(vec![owned("app.ini", 1, 1000, 1000)]);
    assert!(matches!(a.as_slice(), [Action::Spawn(_)]), "{a:?}");
    assert_eq!(h.core.tyrant_refused().count(), 0);
    // Without tyrant mode, root-owned files run (as the emperor's user).
    let mut plain = Harness::new(CoreConfig::default());
    assert_eq!(plain.scan(vec![owned("app.ini", 1, 0, 0)]).len(), 1);
}

#[test]
fn an_owner_change_stops_the_vassal_and_it_restarts_as_the_new_owner() {
    let mut h = tyrant();
    let a = h.scan(vec![owned("app.ini", 1, 1000, 1000)]);
    let inc = spawned(&mut h, &a, 10);
    // Same stamp (chown changes only the ctime), new owner.
    let a = h.scan(vec![owned("app.ini", 1, 1001, 1001)]);
    assert_eq!(
        a,
        vec![Action::Send {
            inc,
            msg: EmperorMsg::Stop
        }]
    );
    let a = h.ev(Event::Reaped {
        pid: 10,
        exit: ExitKind::Code(0),
    });
    assert!(a.contains(&Action::Release { inc }));
    assert!(a.iter().any(|a| matches!(a, Action::Spawn(_))), "{a:?}");
    let v = h.core.vassal("/v/app.ini").unwrap();
    assert_eq!((v.uid, v.gid), (1001, 1001));
    // An unchanged rescan does nothing.
    let a = h.scan(vec![owned("app.ini", 1, 1001, 1001)]);
    assert!(a.is_empty(), "{a:?}");
}

#[test]
fn chown_to_root_stops_the_vassal_and_refuses_it() {
    let mut h = tyrant();
    let a = h.scan(vec![owned("app.ini", 1, 1000, 1000)]);
    let inc = spawned(&mut h, &a, 10);
    let a = h.scan(vec![owned("app.ini", 1, 0, 0)]);
    assert_eq!(
        a,
        vec![Action::Send {
            inc,
            msg: EmperorMsg::Stop
        }]
    );
    let a = h.ev(Event::Reaped {
        pid: 10,
        exit: ExitKind::Code(0),
    });
    assert_eq!(a, vec![Action::Release { inc }]);
    assert!(h.core.is_empty());
    assert!(h.scan(vec![owned("app.ini", 1, 0, 0)]).is_empty());
    // The file goes: forgotten.
    h.scan(vec![]);
    assert_eq!(h.core.tyrant_refused().count(), 0);
}

#[test]
fn without_tyrant_an_owner_change_is_only_recorded() {
    let mut h = Harness::new(CoreConfig::default());
    let a = h.scan(vec![owned("app.ini", 1, 1000, 1000)]);
    spawned(&mut h, &a, 10);
    assert!(h.scan(vec![owned("app.ini", 1, 1001, 1001)]).is_empty());
}

#[test]
fn root_owned_means_uid_or_gid_zero() {
    assert!(is_root_owned(0, 1000));
    assert!(is_root_owned(1000, 0));
    assert!(!is_root_owned(1000, 1000));
}

#[test]
fn refusal_names_the_file_and_the_fix() {
    let m = refusal("app.ini", "/v/app.ini", 1000, 0);
    assert!(m.contains("group root"), "{m}");
    assert!(m.contains("chown app:app /v/app.ini"), "{m}");
}
