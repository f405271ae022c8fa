//! Channel message handling cost per byte with 10 and with 10,000 vassals registered.
//!
//! The vassals are running records of the emperor's core (spawned through the core's own
//! actions, pids made up). Each iteration picks another vassal (a large odd stride, so with
//! 10,000 records the lookups miss the cache as they would in a busy emperor) and handles:
//!
//! * `heartbeat`, `accepting`, `loyal`: one byte of that kind through `Core::handle` (what the
//!   runtime does per byte read), plus draining the action queue;
//! * `read_1B`, `read_64B`: the runtime's channel path, for one byte (what a vassal sends at a
//!   time) and for a burst: one non-blocking `read` of 1 or 64 heartbeat bytes from a socketpair
//!   into the loop's buffer, then `Core::handle` per byte. Reported per byte (throughput in
//!   elements).
//!
//! * `heartbeat_10_active` (10,000 only): all records registered, bytes from 10 of them.
//! * `line_floor`: the memory floor of any O(1) design under this access pattern: read the
//!   next 8-byte id from an n-entry vector with the same stride (as the bytes above read their
//!   `Inc` from `incs`), then read and write one 64-byte line of an n-line table (the core's
//!   channel table is exactly that: one 64-byte line per record). What `heartbeat` gains from
//!   10 to 10,000 beyond what `line_floor` gains is work that depends on n.
//! * `updated_reload`: not a byte but what one inotify event naming a changed config costs the
//!   core: `Event::Updated` with a new stamp (key and name `String`s cloned as the runtime's
//!   `Scanner::check_name` builds them) → a reload byte queued.
//!
//! Flat numbers from 10 to 10,000 mean the cost per byte does not depend on how many vassals
//! the emperor governs. No tracing subscriber is installed, so the log lines of
//! `accepting`/`loyal` cost only their disabled-callsite check here.
//!
//! `cargo bench -p uwsgi-emperor-suite --bench channel`

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use emperor::core::{Core, CoreConfig, Entry, Event, FileStamp, Inc};

mod common;

const SIZES: [usize; 2] = [10, 10_000];

/// One cache line, for `line_floor`.
#[derive(Clone, Copy)]
#[repr(align(64))]
struct FloorLine([u64; 8]);
const BURST: usize = 64;

fn setup(n: usize) -> (Core, Vec<Inc>, Instant) {
    let cfg = CoreConfig {
        required_heartbeat: Duration::from_secs(3600),
        ..CoreConfig::default()
    };
    common::running_core(n, cfg, 1000)
}

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("channel");
    for n in SIZES {
        let (mut core, incs, now) = setup(n);
        g.throughput(Throughput::Elements(1));
        channel_bytes(&mut g, n, &mut core, &incs, now);
        line_floor(&mut g, n);
        updated_reload(&mut g, n, &mut core, now);
        reads(&mut g, n, &mut core, &incs, now);
    }
    g.finish();
}

/// Bytes 26, 5 and 17 through `Core::handle`, each for another vassal (and, with many
/// registered, only 10 of them sending).
fn channel_bytes(g: &mut Group<'_>, n: usize, core: &mut Core, incs: &[Inc], now: Instant) {
    let mut i = 0usize;
    for (what, byte) in [("heartbeat", 26u8), ("accepting", 5), ("loyal", 17)] {
        g.bench_with_input(BenchmarkId::new(what, n), &n, |b, _| {
            b.iter(|| {
                i = (i + 7919) % incs.len();
                core.handle(
                    now,
                    Event::Message {
                        inc: incs[i],
                        byte: black_box(byte),
                    },
                );
                while let Some(a) = core.poll_action() {
                    black_box(a);
                }
            })
        });
    }
    if n > 10 {
        // Diagnostic: the same n records registered, but the bytes come from only 10 of
        // them (a cache-hot working set). Equal to `heartbeat/10` means the growth above is
        // cache misses on the records, not work that depends on how many are registered.
        let mut k = 0usize;
        g.bench_with_input(BenchmarkId::new("heartbeat_10_active", n), &n, |b, _| {
            b.iter(|| {
                k = (k + 7) % 10;
                core.handle(
                    now,
                    Event::Message {
                        inc: incs[k * (n / 10)],
                        byte: black_box(26),
                    },
                );
                while let Some(a) = core.poll_action() {
                    black_box(a);
                }
            })
        });
    }
}

/// The floor: one index read and one 64-byte line written per iteration, same stride.
fn line_floor(g: &mut Group<'_>, n: usize) {
    let mut table = vec![FloorLine([0; 8]); n];
    let ids: Vec<u64> = (0..n as u64).collect();
    let mut j = 0usize;
    g.bench_with_input(BenchmarkId::new("line_floor", n), &n, |b, _| {
        b.iter(|| {
            j = (j + 7919) % n;
            let line = &mut table[black_box(ids[j]) as usize];
            line.0[0] = line.0[0].wrapping_add(1);
            line.0[1] = black_box(line.0[0]);
        })
    });
    black_box(&table);
}

/// `Event::Updated` with a new stamp → the reload byte queued.
fn updated_reload(g: &mut Group<'_>, n: usize, core: &mut Core, now: Instant) {
    let keys: Vec<(String, String)> = (0..n)
        .map(|i| (format!("/vassals/app{i}.ini"), format!("app{i}.ini")))
        .collect();
    let (mut i, mut t) = (0usize, 0i128);
    g.bench_with_input(BenchmarkId::new("updated_reload", n), &n, |b, _| {
        b.iter(|| {
            i = (i + 7919) % n;
            t += 1;
            let (key, name) = &keys[i];
            core.handle(
                now,
                Event::Updated {
                    monitor: 0,
                    key: key.clone(),
                    entry: Some(Entry {
                        key: key.clone(),
                        name: name.clone(),
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
            while let Some(a) = core.poll_action() {
                black_box(a);
            }
        })
    });
}

/// A `read` from a socketpair plus the handling of what it returned (1 byte, a burst).
fn reads(g: &mut Group<'_>, n: usize, core: &mut Core, incs: &[Inc], now: Instant) {
    let (mut vassal_end, mut emperor_end) = UnixStream::pair().unwrap();
    emperor_end.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 512];
    let mut i = 0usize;
    for (what, len) in [("read_1B", 1usize), ("read_64B", BURST)] {
        let burst = vec![26u8; len];
        g.throughput(Throughput::Elements(len as u64));
        g.bench_with_input(BenchmarkId::new(what, n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // Untimed: the vassal writes its bytes.
                    vassal_end.write_all(&burst).unwrap();
                    i = (i + 7919) % incs.len();
                    let inc = incs[i];
                    let t0 = Instant::now();
                    let got = emperor_end.read(&mut buf).unwrap();
                    for &byte in &buf[..got] {
                        core.handle(now, Event::Message { inc, byte });
                    }
                    while let Some(a) = core.poll_action() {
                        black_box(a);
                    }
                    total += t0.elapsed();
                    assert_eq!(got, len);
                }
                total
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
