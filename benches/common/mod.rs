//! Set-up shared by the benches: a core governing `n` running vassals.

use std::time::Instant;

use emperor::core::{Action, Core, CoreConfig, Entry, Event, FileStamp, Inc};

/// A core with `n` vassals (`app{i}.ini`), each started and answered with a pid from
/// `first_pid` on; returns the incarnations in start order and the time used.
pub fn running_core(n: usize, cfg: CoreConfig, first_pid: i32) -> (Core, Vec<Inc>, Instant) {
    let mut core = Core::new(cfg);
    let now = Instant::now();
    let entries: Vec<Entry> = (0..n)
        .map(|i| Entry {
            key: format!("/vassals/app{i}.ini"),
            name: format!("app{i}.ini"),
            stamp: FileStamp::default(),
            content: None,
            uid: 0,
            gid: 0,
        })
        .collect();
    core.handle(
        now,
        Event::Scanned {
            monitor: 0,
            entries,
        },
    );
    let spawns: Vec<Action> = std::iter::from_fn(|| core.poll_action()).collect();
    let mut incs = Vec::with_capacity(n);
    for (i, a) in spawns.into_iter().enumerate() {
        if let Action::Spawn(r) = a {
            let pid = first_pid + i32::try_from(i).unwrap_or(i32::MAX - first_pid);
            core.handle(now, Event::Spawned { inc: r.inc, pid });
            incs.push(r.inc);
        }
    }
    while core.poll_action().is_some() {}
    assert_eq!(incs.len(), n);
    (core, incs, now)
}
