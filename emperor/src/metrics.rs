//! The Prometheus exposition of `GET /metrics`: a pure render of the core's records plus the
//! resource readings taken at scrape time ([`read`]).
//!
//! Rendered with `prometheus-client` (the Prometheus project's Rust client): it writes the
//! HELP/TYPE lines, names counters (`_total`) and formats numbers the way the scrapers parse
//! them, so this file only says which families exist and what their values are.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use prometheus_client::encoding::text::encode_registry;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::core::{Core, ExitKind, Inc, State};
use crate::stats::Clock;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every state name the stats document uses (one `emperor_vassals{state}` series each).
pub const STATES: [&str; 7] = [
    "waiting",
    "starting",
    "running",
    "stopping",
    "exiled",
    "on-demand",
    "suspended",
];

/// Resources of one process tree, when they could be read.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Resident memory in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU time (user + system) in seconds.
    pub cpu_seconds: Option<f64>,
}

/// The emperor process's own resources.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SelfUsage {
    /// Its resources.
    pub usage: Usage,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// Start time in Unix seconds.
    pub start_time: Option<f64>,
}

/// What was read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Readings {
    /// Per running incarnation.
    pub vassals: HashMap<Inc, Usage>,
    /// The emperor.
    pub process: SelfUsage,
}

type Labels = Vec<(&'static str, String)>;
type FGauge = Gauge<f64, AtomicU64>;
type FCounter = Counter<f64, AtomicU64>;

fn vassal(name: &str) -> Labels {
    vec![("vassal", escape(name))]
}

/// A label value in the exposition's escaping (`\\`, `\"`, `\n`): `prometheus-client`
/// writes string label values as they are, and vassal names may hold any of these.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn reason(e: ExitKind) -> String {
    match e {
        ExitKind::Code(c) => format!("exit_{c}"),
        ExitKind::Signal(s) => format!("signal_{s}"),
    }
}

/// The per-vassal families, filled from the records.
fn vassal_families(reg: &mut Registry, core: &Core, clock: Clock, r: &Readings) {
    let up = Family::<Labels, Gauge>::default();
    let restarts = Family::<Labels, Counter>::default();
    let start = Family::<Labels, Gauge>::default();
    let loyal = Family::<Labels, Gauge>::default();
    let heartbeat = Family::<Labels, Gauge>::default();
    let backoff = Family::<Labels, FGauge>::default();
    let exits = Family::<Labels, Counter>::default();
    let memory = Family::<Labels, Gauge>::default();
    let cpu = Family::<Labels, FCounter>::default();
    for v in core.vassals() {
        let l = vassal(&v.name);
        let ch = core.channel(v);
        let running = matches!(v.state, State::Running(_));
        up.get_or_create(&l).set(i64::from(running && ch.accepting));
        restarts.get_or_create(&l).inc_by(v.restarts);
        start.get_or_create(&l).set(clock.unix(v.last_run));
        loyal.get_or_create(&l).set(i64::from(ch.loyal));
        heartbeat
            .get_or_create(&l)
            .set(clock.unix(ch.last_heartbeat));
        let wait = match v.state {
            State::Waiting(w) => w.at.saturating_duration_since(clock.now).as_secs_f64(),
            _ => 0.0,
        };
        backoff.get_or_create(&l).set(wait);
        for (kind, n) in &v.exits {
            let mut el = l.clone();
            el.push(("reason", reason(*kind)));
            exits.get_or_create(&el).inc_by(*n);
        }
        let usage = v.state.inc().and_then(|inc| r.vassals.get(&inc));
        if let Some(m) = usage.and_then(|u| u.memory_bytes) {
            memory
                .get_or_create(&l)
                .set(i64::try_from(m).unwrap_or(i64::MAX));
        }
        if let Some(c) = usage.and_then(|u| u.cpu_seconds) {
            cpu.get_or_create(&l).inc_by(c);
        }
    }
    reg.register(
        "emperor_vassal_up",
        "1 while the vassal runs and accepts requests",
        up,
    );
    reg.register(
        "emperor_vassal_restarts",
        "Processes started after the first one",
        restarts,
    );
    reg.register(
        "emperor_vassal_start_time_seconds",
        "Unix time of the latest start or reload (0 before the first)",
        start,
    );
    reg.register(
        "emperor_vassal_loyal",
        "1 once the process declared itself loyal",
        loyal,
    );
    reg.register(
        "emperor_vassal_last_heartbeat_seconds",
        "Unix time of the latest heartbeat (0 for none)",
        heartbeat,
    );
    reg.register(
        "emperor_vassal_backoff_seconds",
        "Seconds until the next start attempt while backing off (0 otherwise)",
        backoff,
    );
    reg.register(
        "emperor_vassal_exits",
        "Process ends by exit code or signal",
        exits,
    );
    reg.register(
        "emperor_vassal_memory_bytes",
        "Memory of the process tree (cgroup memory.current, else the main process RSS)",
        memory,
    );
    reg.register(
        "emperor_vassal_cpu_seconds",
        "CPU time of the process tree (cgroup cpu.stat, else the main process)",
        cpu,
    );
}

/// The emperor-wide families.
fn emperor_families(reg: &mut Registry, core: &Core, r: &Readings) {
    let states = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
    for s in STATES {
        states.get_or_create(&vec![("state", s)]).set(0);
    }
    for v in core.vassals() {
        states.get_or_create(&vec![("state", v.state.name())]).inc();
    }
    reg.register("emperor_vassals", "Vassals by lifecycle state", states);
    let c = core.counters();
    for (name, help, n) in [
        ("emperor_spawns", "Vassal starts requested", c.spawns),
        (
            "emperor_spawn_failures",
            "Vassal starts that failed",
            c.spawn_failures,
        ),
        ("emperor_reloads", "Vassal reloads requested", c.reloads),
    ] {
        let counter = Counter::<u64>::default();
        counter.inc_by(n);
        reg.register(name, help, counter);
    }
    let p = r.process;
    if let Some(m) = p.usage.memory_bytes {
        let g = Gauge::<i64>::default();
        g.set(i64::try_from(m).unwrap_or(i64::MAX));
        reg.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            g,
        );
    }
    if let Some(s) = p.usage.cpu_seconds {
        let c = FCounter::default();
        c.inc_by(s);
        reg.register(
            "process_cpu_seconds",
            "Total user and system CPU time in seconds",
            c,
        );
    }
    if let Some(n) = p.open_fds {
        let g = Gauge::<i64>::default();
        g.set(i64::try_from(n).unwrap_or(i64::MAX));
        reg.register("process_open_fds", "Number of open file descriptors", g);
    }
    if let Some(t) = p.start_time {
        let g = FGauge::default();
        g.set(t);
        reg.register(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            g,
        );
    }
}

/// The exposition text of `core` and `readings` at `clock`.
pub fn render(core: &Core, clock: Clock, readings: &Readings) -> String {
    let mut reg = Registry::default();
    emperor_families(&mut reg, core, readings);
    vassal_families(&mut reg, core, clock, readings);
    let mut open = String::new();
    // Writing to a String cannot fail.
    let _ = encode_registry(&mut open, &reg);
    text_format(&open)
}

/// The 0.0.4 text format of an OpenMetrics exposition without its `# EOF`. The two differ
/// here only in counters: OpenMetrics names a counter family without the `_total` its
/// samples carry (`# TYPE x counter`, `x_total 1`), the text format names the family as its
/// samples, so the HELP and TYPE lines of each counter gain the suffix.
fn text_format(open: &str) -> String {
    let mut out = String::with_capacity(open.len() + 256);
    let mut lines = open.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let counter = lines
                .peek()
                .is_some_and(|t| *t == format!("# TYPE {name} counter"));
            if counter {
                lines.next();
                let _ = writeln!(out, "# HELP {name}_total {help}");
                let _ = writeln!(out, "# TYPE {name}_total counter");
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Reads the resources of every running vassal and of the emperor (small /proc and cgroupfs
/// files, which never block). `cgroup_dir` gives an incarnation's cgroup directory (the
/// process tree's own record of it, [`crate::spawn::cgroup::Tree::dir_of`]); without one the
/// main process's /proc figures are used.
pub fn read(core: &Core, cgroup_dir: &dyn Fn(Inc) -> Option<PathBuf>) -> Readings {
    let units = Units::get();
    let mut vassals = HashMap::new();
    for v in core.vassals() {
        let Some(p) = v.state.process() else { continue };
        // A cgroup without the memory or cpu controller (a hybrid hierarchy) has no such
        // file: the main process's figures stand in for the missing one.
        let tree = cgroup_dir(p.inc)
            .map(|d| cgroup_usage(&d))
            .unwrap_or_default();
        let usage = if tree.memory_bytes.is_some() && tree.cpu_seconds.is_some() {
            tree
        } else {
            let main = proc_usage(&p.pid.to_string(), units);
            Usage {
                memory_bytes: tree.memory_bytes.or(main.memory_bytes),
                cpu_seconds: tree.cpu_seconds.or(main.cpu_seconds),
            }
        };
        vassals.insert(p.inc, usage);
    }
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64);
    Readings {
        vassals,
        process: SelfUsage {
            usage: proc_usage("self", units),
            open_fds,
            start_time: start_time(units),
        },
    }
}

/// Reads and renders, for the HTTP stats server.
pub fn scrape(core: &Core, cgroup_dir: &dyn Fn(Inc) -> Option<PathBuf>) -> String {
    let readings = read(core, cgroup_dir);
    let clock = Clock {
        now: std::time::Instant::now(),
        wall: std::time::SystemTime::now(),
    };
    render(core, clock, &readings)
}

/// Scrapes closer together than this get the previous exposition: however many clients ask,
/// the loop renders (and reads every vassal's /proc or cgroup files) at most once per interval.
pub const MIN_SCRAPE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The last exposition and when it was rendered (see [`MIN_SCRAPE_INTERVAL`]). Interior
/// mutability because the stats server calls its render callback through a shared reference,
/// once per client, within one turn of the loop.
#[derive(Debug, Default)]
pub struct Cache(RefCell<Option<(Instant, String)>>);

impl Cache {
    /// The exposition: the cached one if it is recent, else `render()`'s (then cached).
    pub fn get(&self, now: Instant, render: impl FnOnce() -> String) -> String {
        let mut last = self.0.borrow_mut();
        if let Some((at, text)) = last.as_ref() {
            if now.saturating_duration_since(*at) < MIN_SCRAPE_INTERVAL {
                return text.clone();
            }
        }
        let text = render();
        *last = Some((now, text.clone()));
        text
    }
}

/// Page size and clock ticks, asked once per scrape.
#[derive(Clone, Copy)]
struct Units {
    page: u64,
    tck: f64,
}

impl Units {
    fn get() -> Units {
        let conf = |var, default| nix::unistd::sysconf(var).ok().flatten().unwrap_or(default);
        Units {
            page: u64::try_from(conf(nix::unistd::SysconfVar::PAGE_SIZE, 4096)).unwrap_or(4096),
            tck: conf(nix::unistd::SysconfVar::CLK_TCK, 100) as f64,
        }
    }
}

/// `/proc/PID/statm` RSS and `/proc/PID/stat` utime + stime.
fn proc_usage(pid: &str, u: Units) -> Usage {
    let memory_bytes = std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * u.page);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
    let cpu_seconds = stat.as_deref().and_then(|s| {
        let mut f = stat_fields(s)?.skip(11);
        let utime: f64 = f.next()?.parse().ok()?;
        let stime: f64 = f.next()?.parse().ok()?;
        Some((utime + stime) / u.tck)
    });
    Usage {
        memory_bytes,
        cpu_seconds,
    }
}

/// The fields of a `/proc/PID/stat` line after the command name (field 3 onwards), borrowed.
fn stat_fields(s: &str) -> Option<impl Iterator<Item = &str>> {
    // The command name is in parentheses and may contain spaces and parentheses.
    Some(s[s.rfind(')')? + 1..].split_whitespace())
}

/// The emperor's start time: boot time plus its `starttime` ticks.
fn start_time(u: Units) -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let ticks: f64 = stat_fields(&stat)?.nth(19)?.parse().ok()?;
    let btime: f64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(btime + ticks / u.tck)
}

/// `memory.current` and `cpu.stat` `usage_usec` of the cgroup directory `dir`.
fn cgroup_usage(dir: &Path) -> Usage {
    let memory_bytes = std::fs::read_to_string(dir.join("memory.current"))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let cpu_seconds = std::fs::read_to_string(dir.join("cpu.stat"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("usage_usec "))?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map(|us| us / 1e6);
    Usage {
        memory_bytes,
        cpu_seconds,
    }
}

/// The HTTP answer carrying `body` as the exposition.
pub fn http_response(body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 128);
    let _ = write!(
        out,
        "HTTP/1.0 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    out
}

#[cfg(test)]
mod tests;
