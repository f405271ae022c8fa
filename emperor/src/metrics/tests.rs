use std::time::{Duration, Instant, SystemTime};

use super::*;
use crate::core::{Action, CoreConfig, Entry, Event, FileStamp};

fn entry(name: &str) -> Entry {
    Entry {
        key: format!("/v/{name}"),
        name: name.into(),
        stamp: FileStamp::default(),
        content: None,
        uid: 0,
        gid: 0,
    }
}

/// Starts every queued spawn with pids from 100 on; returns (inc, pid) of each.
fn start_all(core: &mut Core, now: Instant) -> Vec<(Inc, i32)> {
    let mut started = Vec::new();
    let mut reqs = Vec::new();
    while let Some(a) = core.poll_action() {
        if let Action::Spawn(r) = a {
            reqs.push(r.inc);
        }
    }
    for (i, inc) in reqs.into_iter().enumerate() {
        let pid = 100 + i as i32;
        core.handle(now, Event::Spawned { inc, pid });
        started.push((inc, pid));
    }
    started
}

fn clock(now: Instant) -> Clock {
    Clock {
        now,
        wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
    }
}

fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find(|l| l.starts_with(prefix))
}

#[test]
fn running_vassals_have_their_series() {
    let mut core = Core::new(CoreConfig::default());
    let now = Instant::now();
    core.handle(
        now,
        Event::Scanned {
            monitor: 0,
            entries: vec![entry("a.ini"), entry("b.ini")],
        },
    );
    let started = start_all(&mut core, now);
    assert_eq!(started.len(), 2);
    let a = core.vassal("/v/a.ini").and_then(|v| v.state.inc()).unwrap();
    core.handle(now, Event::Message { inc: a, byte: 5 });
    core.handle(now, Event::Message { inc: a, byte: 17 });
    let mut readings = Readings::default();
    readings.vassals.insert(
        a,
        Usage {
            memory_bytes: Some(4096),
            cpu_seconds: Some(1.5),
        },
    );
    readings.process.open_fds = Some(7);
    let text = render(&core, clock(now), &readings);
    assert_eq!(
        line(&text, "emperor_vassals{state=\"running\"}"),
        Some("emperor_vassals{state=\"running\"} 2")
    );
    assert_eq!(
        line(&text, "emperor_vassals{state=\"exiled\"}"),
        Some("emperor_vassals{state=\"exiled\"} 0")
    );
    assert_eq!(
        line(&text, "emperor_vassal_up{vassal=\"a.ini\"}"),
        Some("emperor_vassal_up{vassal=\"a.ini\"} 1")
    );
    assert_eq!(
        line(&text, "emperor_vassal_up{vassal=\"b.ini\"}"),
        Some("emperor_vassal_up{vassal=\"b.ini\"} 0")
    );
    assert_eq!(
        line(&text, "emperor_vassal_loyal{vassal=\"a.ini\"}"),
        Some("emperor_vassal_loyal{vassal=\"a.ini\"} 1")
    );
    assert_eq!(
        line(&text, "emperor_vassal_start_time_seconds{vassal=\"a.ini\"}"),
        Some("emperor_vassal_start_time_seconds{vassal=\"a.ini\"} 1000000")
    );
    assert_eq!(
        line(&text, "emperor_vassal_memory_bytes{vassal=\"a.ini\"}"),
        Some("emperor_vassal_memory_bytes{vassal=\"a.ini\"} 4096")
    );
    assert_eq!(
        line(&text, "emperor_vassal_cpu_seconds_total{vassal=\"a.ini\"}"),
        Some("emperor_vassal_cpu_seconds_total{vassal=\"a.ini\"} 1.5")
    );
    assert!(line(&text, "emperor_vassal_memory_bytes{vassal=\"b.ini\"}").is_none());
    assert_eq!(
        line(&text, "emperor_spawns_total"),
        Some("emperor_spawns_total 2")
    );
    // Text format 0.0.4: a counter family is named as its samples.
    assert!(text.contains("# HELP emperor_spawns_total Vassal starts requested.\n# TYPE emperor_spawns_total counter\n"), "{text}");
    assert!(!text.contains("# EOF"), "{text}");
    assert_eq!(line(&text, "process_open_fds"), Some("process_open_fds 7"));
    assert!(line(&text, "process_resident_memory_bytes").is_none());
}

#[test]
fn exits_restarts_and_failures_are_counted() {
    let mut core = Core::new(CoreConfig::default());
    let mut now = Instant::now();
    core.handle(
        now,
        Event::Scanned {
            monitor: 0,
            entries: vec![entry("crash.ini")],
        },
    );
    let (_, pid) = start_all(&mut core, now)[0];
    core.handle(
        now,
        Event::Reaped {
            pid,
            exit: ExitKind::Code(1),
        },
    );
    let text = render(&core, clock(now), &Readings::default());
    assert_eq!(
        line(
            &text,
            "emperor_vassal_exits_total{vassal=\"crash.ini\",reason=\"exit_1\"}"
        ),
        Some("emperor_vassal_exits_total{vassal=\"crash.ini\",reason=\"exit_1\"} 1")
    );
    assert_eq!(
        line(&text, "emperor_vassals{state=\"waiting\"}"),
        Some("emperor_vassals{state=\"waiting\"} 1")
    );
    let backoff = line(
        &text,
        "emperor_vassal_backoff_seconds{vassal=\"crash.ini\"}",
    )
    .unwrap();
    let secs: f64 = backoff.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(secs > 0.0, "{backoff}");
    // The restart comes once the backoff has passed; its start fails.
    now += Duration::from_secs(120);
    core.handle_timeout(now);
    let mut inc = None;
    while let Some(a) = core.poll_action() {
        if let Action::Spawn(r) = a {
            inc = Some(r.inc);
        }
    }
    let inc = inc.expect("a restart");
    core.handle(
        now,
        Event::SpawnFailed {
            inc,
            reason: crate::core::SpawnFailure::executor(std::io::Error::other("no such file")),
        },
    );
    let c = core.counters();
    assert_eq!((c.spawns, c.spawn_failures, c.reloads), (2, 1, 0));
    let text = render(&core, clock(now), &Readings::default());
    assert_eq!(
        line(&text, "emperor_vassal_restarts_total{vassal=\"crash.ini\"}"),
        Some("emperor_vassal_restarts_total{vassal=\"crash.ini\"} 1")
    );
    assert_eq!(
        line(&text, "emperor_spawn_failures_total"),
        Some("emperor_spawn_failures_total 1")
    );
}

#[test]
fn odd_vassal_names_are_escaped() {
    let mut core = Core::new(CoreConfig::default());
    let now = Instant::now();
    core.handle(
        now,
        Event::Scanned {
            monitor: 0,
            entries: vec![entry("we\"ird\\na\nme.ini")],
        },
    );
    start_all(&mut core, now);
    let text = render(&core, clock(now), &Readings::default());
    assert!(
        text.contains("emperor_vassal_up{vassal=\"we\\\"ird\\\\na\\nme.ini\"} 0"),
        "{text}"
    );
    assert!(!text.lines().any(|l| l == "me.ini\"} 0"), "{text}");
}

#[test]
fn the_emperor_reads_its_own_resources() {
    let core = Core::new(CoreConfig::default());
    let r = read(&core, &|_| None);
    assert!(r.process.usage.memory_bytes.unwrap() > 0);
    assert!(r.process.open_fds.unwrap() > 0);
    assert!(r.process.start_time.unwrap() > 1e9);
    let text = scrape(&core, &|_| None);
    assert!(
        line(&text, "process_resident_memory_bytes ").is_some(),
        "{text}"
    );
    assert!(
        line(&text, "process_cpu_seconds_total ").is_some(),
        "{text}"
    );
}

#[test]
fn scrapes_within_the_interval_get_the_previous_exposition() {
    let cache = Cache::default();
    let t0 = std::time::Instant::now();
    let renders = std::cell::Cell::new(0);
    let render = || {
        renders.set(renders.get() + 1);
        format!("render {}", renders.get())
    };
    assert_eq!(cache.get(t0, render), "render 1");
    let soon = t0 + MIN_SCRAPE_INTERVAL / 2;
    assert_eq!(cache.get(soon, render), "render 1");
    assert_eq!(
        renders.get(),
        1,
        "a scrape within the interval renders nothing"
    );
    assert_eq!(cache.get(t0 + MIN_SCRAPE_INTERVAL, render), "render 2");
}
