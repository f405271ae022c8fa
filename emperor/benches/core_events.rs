//! Cost of one event in the sans-IO core as the number of vassals grows: a heartbeat byte (the
//! hot path), an accepting byte (logged), and a single-file update (what one inotify event costs).
//! Flat numbers across sizes mean O(1) per event.
//!
//! `cargo bench -p emperor --bench core_events`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use emperor::core::{Action, Core, CoreConfig, Entry, Event, FileStamp, Inc};

fn setup(n: usize) -> (Core, Vec<Inc>, Instant) {
    let mut core = Core::new(CoreConfig {
        required_heartbeat: Duration::from_secs(3600),
        ..CoreConfig::default()
    });
    let now = Instant::now();
    let entries: Vec<Entry> = (0..n)
        .map(|i| Entry {
            key: format!("/v/app{i}.ini"),
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
    let mut incs = Vec::new();
    let spawns: Vec<Action> = std::iter::from_fn(|| core.poll_action()).collect();
    for (pid, a) in spawns.into_iter().enumerate() {
        if let Action::Spawn(r) = a {
            core.handle(
                now,
                Event::Spawned {
                    inc: r.inc,
                    pid: pid as i32 + 2,
                },
            );
            incs.push(r.inc);
        }
    }
    while core.poll_action().is_some() {}
    (core, incs, now)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("core");
    for n in [100usize, 10_000] {
        let (mut core, incs, now) = setup(n);
        let mut i = 0usize;
        g.bench_with_input(BenchmarkId::new("heartbeat_byte", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 7919) % incs.len();
                core.handle(
                    now,
                    Event::Message {
                        inc: incs[i],
                        byte: 26,
                    },
                );
                black_box(core.poll_action());
            })
        });
        let mut t = 0i128;
        g.bench_with_input(BenchmarkId::new("file_updated_reload", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 7919) % incs.len();
                t += 1;
                let key = format!("/v/app{i}.ini");
                core.handle(
                    now,
                    Event::Updated {
                        monitor: 0,
                        key: key.clone(),
                        entry: Some(Entry {
                            key,
                            name: format!("app{i}.ini"),
                            stamp: FileStamp {
                                mtime_ns: t,
                                size: 1,
                                ino: 1,
                            },
                            content: None,
                            uid: 0,
                            gid: 0,
                        }),
                    },
                );
                black_box(core.poll_action());
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
