//! SOS.

use super::*;

#[test]
fn backlog_sos() {
    let mut s = settings(Ready::Immediate);
    s.sos_backlog = Some(10);
    let mut t = T::new(s);
    t.actions();
    t.input(Input::Spawned { pid: 10 });
    t.actions();
    assert!(t.advance(Duration::from_secs(1)).contains(&MeasureBacklog));
    assert_eq!(t.input(Input::Backlog(3)), vec![]);
    assert_eq!(t.input(Input::Backlog(10)), vec![Send(M::Sos)]);
}
