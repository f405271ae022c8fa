//! `GET /metrics` render cost with 10 and with 10,000 running vassals.
//!
//! The vassals are running records of the emperor's core (spawned through the core's own
//! actions, pids made up), each with a resource reading, as a scrape would have them:
//!
//! * `render`: `emperor::metrics::render` alone (the exposition text from the records and
//!   the readings);
//! * `scrape`: `emperor::metrics::scrape`, the render plus the /proc reads of the made-up
//!   pids (which fail fast: no such process) and of the emperor itself.
//!
//! The target at 10,000 vassals is 10 ms per scrape.
//!
//! `cargo bench -p uwsgi-emperor-suite --bench metrics`

use std::hint::black_box;
use std::time::{Instant, SystemTime};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use emperor::core::{Core, CoreConfig};
use emperor::metrics::{Readings, Usage};
use emperor::stats::Clock;

mod common;

const SIZES: [usize; 2] = [10, 10_000];

fn setup(n: usize) -> (Core, Readings) {
    let (core, incs, _) = common::running_core(n, CoreConfig::default(), 1_000_000);
    let mut readings = Readings::default();
    for inc in incs {
        let usage = Usage {
            memory_bytes: Some(50 << 20),
            cpu_seconds: Some(12.5),
        };
        readings.vassals.insert(inc, usage);
    }
    (core, readings)
}

fn metrics(c: &mut Criterion) {
    let mut g = c.benchmark_group("metrics");
    for n in SIZES {
        let (core, readings) = setup(n);
        g.bench_with_input(BenchmarkId::new("render", n), &n, |b, _| {
            b.iter(|| {
                let clock = Clock {
                    now: Instant::now(),
                    wall: SystemTime::now(),
                };
                black_box(emperor::metrics::render(&core, clock, &readings))
            })
        });
        g.bench_with_input(BenchmarkId::new("scrape", n), &n, |b, _| {
            b.iter(|| black_box(emperor::metrics::scrape(&core, &|_| None)))
        });
    }
    g.finish();
}

criterion_group!(benches, metrics);
criterion_main!(benches);
