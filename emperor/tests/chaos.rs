//! Chaos: random SIGKILLs of vassals (real uWSGI masters and workers, `vassal-shim` processes and
//! the programs under them) while configs are touched, removed and re-added. Once the storm is
//! over and the emperor has converged: exactly one live vassal process per config, no zombie
//! among the emperor's children, its descriptor count and RSS flat compared to after a warm-up,
//! and nothing left behind after SIGTERM.
//!
//! Bounded for CI by default. `scripts/chaos N` runs it with N kills and prints the figures;
//! the knobs are environment variables: `CHAOS_KILLS` (default 150), `CHAOS_UWSGI` (real uWSGI
//! python vassals, default 4), `CHAOS_SHIMS` (shim vassals, default 8), `CHAOS_SEED` (the RNG
//! seed; every run prints the one it used), `CHAOS_LOG` (a file to write the emperor's log to).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Warm-up kills before the baseline figures are taken (allocator pools, maps and tables grown).
const WARMUP_KILLS: usize = 10;
/// How much the emperor's descriptor count may differ from the baseline after convergence
/// (a stats connection the emperor has not closed yet, at most).
const FD_SLACK: usize = 2;
/// How much the emperor's RSS may grow over the baseline after convergence, in KiB.
const RSS_SLACK_KIB: u64 = 4096;

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")),
        Err(_) => default,
    }
}

/// xorshift64*: small, fast and reproducible from its seed.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        if v.is_empty() {
            None
        } else {
            Some(&v[self.below(v.len())])
        }
    }
}

// ---- /proc -------------------------------------------------------------------------------

/// Every pid in /proc.
fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// State letter and parent pid from /proc/PID/stat.
fn stat(pid: i32) -> Option<(char, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything: parse after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((state, ppid))
}

fn is_zombie(pid: i32) -> bool {
    matches!(stat(pid), Some(('Z', _)))
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_default()
}

/// Children of every thread of `pid`.
fn kids(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let p = t.path().join("children");
        if let Ok(s) = std::fs::read_to_string(p) {
            out.extend(s.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
        }
    }
    out
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Processes that belong to this run: their environment carries `marker` (set on the emperor,
/// inherited by every vassal and program), or their command line or working directory points
/// into `dir`. The test process itself is excluded.
fn run_pids(marker: &[u8], dir: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    let dir_s = dir.to_string_lossy().into_owned();
    all_pids()
        .into_iter()
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            let env_hit = std::fs::read(format!("/proc/{pid}/environ"))
                .map(|e| e.split(|b| *b == 0).any(|kv| kv == marker))
                .unwrap_or(false);
            let cwd_hit = std::fs::read_link(format!("/proc/{pid}/cwd"))
                .map(|c| c.starts_with(dir))
                .unwrap_or(false);
            env_hit || cwd_hit || proc_argv(pid).iter().any(|a| a.contains(&dir_s))
        })
        .collect()
}

/// SIGKILLs whatever of the run is still alive when the test ends (also on a failed assertion),
/// so a failure never leaves processes on the machine.
struct Sweeper {
    marker: Vec<u8>,
    dir: PathBuf,
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        for pid in run_pids(&self.marker, &self.dir) {
            signal(pid, libc::SIGKILL);
        }
    }
}

// ---- the fleet ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Uwsgi,
    Shim,
}

#[derive(Debug)]
struct Vassal {
    name: String,
    kind: Kind,
    text: String,
    present: bool,
}

/// The config name a child of the emperor runs (`uwsgi --ini NAME`, `vassal-shim --ini NAME`).
fn config_of(pid: i32) -> Option<String> {
    let a = proc_argv(pid);
    let i = a.iter().position(|x| x == "--ini")?;
    a.get(i + 1).cloned()
}

/// What the chaos did, for the summary.
#[derive(Debug, Default)]
struct Tally {
    kill_vassal: usize,
    kill_program: usize,
    kill_worker: usize,
    touches: usize,
    removes: usize,
    readds: usize,
    waits: usize,
}

impl Tally {
    fn kills(&self) -> usize {
        self.kill_vassal + self.kill_program + self.kill_worker
    }
}

struct Run {
    emp: Proc,
    emp_pid: i32,
    stats: PathBuf,
    dir: PathBuf,
    vassals: Vec<Vassal>,
    rng: Rng,
    seed: u64,
    /// Pids already SIGKILLed: a dead process still listed (not reaped yet) is not a target.
    killed: HashSet<i32>,
    tally: Tally,
}

/// The converged state: one figure per check.
#[derive(Debug)]
struct Converged {
    zombies: usize,
    census: BTreeMap<String, usize>,
}

impl Run {
    fn stats_doc(&mut self) -> serde_json::Value {
        stats(&self.stats)
    }

    /// `(name, pid)` of present vassals whose stats pid is a live child of the emperor.
    fn live(&mut self, kind: Option<Kind>) -> Vec<(String, i32)> {
        let doc = self.stats_doc();
        let mut out = Vec::new();
        for v in &self.vassals {
            if !v.present || kind.is_some_and(|k| k != v.kind) {
                continue;
            }
            let Some(e) = vassal(&doc, &v.name) else {
                continue;
            };
            let pid = e["pid"].as_i64().unwrap_or(-1) as i32;
            if pid <= 0 || self.killed.contains(&pid) {
                continue;
            }
            if matches!(stat(pid), Some((s, pp)) if s != 'Z' && pp == self.emp_pid) {
                out.push((v.name.clone(), pid));
            }
        }
        out
    }

    /// SIGKILLs `pid` unless it was killed already; true when a live process got the signal.
    /// Through a pidfd, checked to be a live child of `parent` once the pidfd is held, so a pid
    /// reused by another process in the meantime is never signalled.
    fn kill(&mut self, pid: i32, parent: i32) -> bool {
        if pid <= 0 || !self.killed.insert(pid) {
            return false;
        }
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is shared.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
        if fd < 0 {
            return false;
        }
        let ours = matches!(stat(pid), Some((s, pp)) if s != 'Z' && pp == parent);
        // SAFETY: fd is the pidfd opened above; a null siginfo is allowed; no memory is shared.
        let sent = ours
            && unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd,
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            } == 0;
        // SAFETY: fd was returned by pidfd_open above and is closed exactly once.
        unsafe { libc::close(fd) };
        sent
    }

    /// Waits (bounded) until vassal `name` runs a live process other than `old`.
    fn wait_replaced(&mut self, name: &str, old: i32) {
        let deadline = Instant::now() + T;
        loop {
            let doc = self.stats_doc();
            let pid = vassal(&doc, name)
                .and_then(|v| v["pid"].as_i64())
                .unwrap_or(-1) as i32;
            if pid > 0 && pid != old && matches!(stat(pid), Some((s, _)) if s != 'Z') {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "vassal {name}: no new process within {T:?} after SIGKILL of {old} (seed {}); stats: {doc:#}\n{}",
                    self.seed,
                    tail(&mut self.emp)
                );
            }
            // Poll interval of a deadline-bounded wait on the emperor's state.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One random action; returns true when it was a kill that landed.
    fn step(&mut self) -> bool {
        let roll = self.rng.below(100);
        if roll < 35 {
            let live = self.live(None);
            if let Some((name, pid)) = self.rng.pick(&live).cloned() {
                if self.kill(pid, self.emp_pid) {
                    self.tally.kill_vassal += 1;
                    if self.rng.below(2) == 0 {
                        self.tally.waits += 1;
                        self.wait_replaced(&name, pid);
                    }
                    return true;
                }
            }
        } else if roll < 60 {
            let live = self.live(Some(Kind::Shim));
            if let Some((_, shim)) = self.rng.pick(&live).cloned() {
                let progs: Vec<i32> = kids(shim)
                    .into_iter()
                    .filter(|&p| comm(p) == "sleep")
                    .collect();
                if let Some(&p) = self.rng.pick(&progs) {
                    if self.kill(p, shim) {
                        self.tally.kill_program += 1;
                        return true;
                    }
                }
            }
        } else if roll < 70 {
            let live = self.live(Some(Kind::Uwsgi));
            if let Some((_, master)) = self.rng.pick(&live).cloned() {
                let workers = kids(master);
                if let Some(&w) = self.rng.pick(&workers) {
                    if self.kill(w, master) {
                        self.tally.kill_worker += 1;
                        return true;
                    }
                }
            }
        } else if roll < 85 {
            let i = self.rng.below(self.vassals.len());
            if self.vassals[i].present {
                touch(&self.dir.join(&self.vassals[i].name));
                self.tally.touches += 1;
            }
        } else {
            let i = self.rng.below(self.vassals.len());
            let path = self.dir.join(&self.vassals[i].name);
            if self.vassals[i].present {
                std::fs::remove_file(&path).unwrap();
                self.vassals[i].present = false;
                self.tally.removes += 1;
            } else {
                std::fs::write(&path, &self.vassals[i].text).unwrap();
                self.vassals[i].present = true;
                self.tally.readds += 1;
            }
        }
        false
    }

    /// Runs random actions until `kills` kills have landed.
    fn storm(&mut self, kills: usize) {
        let mut landed = 0;
        let mut idle = 0;
        while landed < kills {
            if self.step() {
                landed += 1;
                idle = 0;
            } else {
                idle += 1;
                if idle % 8 == 0 {
                    // Nothing to kill right now (everything is restarting or backing off):
                    // the poll interval of waiting for the next live target.
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// Leaves at least one config removed, so the converged state also proves removals.
    fn remove_one_unless_some_are_gone(&mut self) {
        if self.vassals.iter().all(|v| v.present) {
            let i = self.rng.below(self.vassals.len());
            std::fs::remove_file(self.dir.join(&self.vassals[i].name)).unwrap();
            self.vassals[i].present = false;
            self.tally.removes += 1;
        }
    }

    fn readd_all(&mut self) {
        for v in &mut self.vassals {
            if !v.present {
                std::fs::write(self.dir.join(&v.name), &v.text).unwrap();
                v.present = true;
                self.tally.readds += 1;
            }
        }
    }

    /// Checks the converged state once; the error says what does not hold yet.
    fn check(&mut self) -> Result<Converged, String> {
        let doc = self.stats_doc();
        let present: Vec<&Vassal> = self.vassals.iter().filter(|v| v.present).collect();
        let want: BTreeSet<&str> = present.iter().map(|v| v.name.as_str()).collect();
        let ids: Vec<&str> = doc["vassals"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v["id"].as_str()).collect())
            .unwrap_or_default();
        let id_set: BTreeSet<&str> = ids.iter().copied().collect();
        if ids.len() != id_set.len() || id_set != want {
            return Err(format!("stats list {ids:?}, want {want:?}"));
        }
        let mut stats_pid = BTreeMap::new();
        for v in &present {
            let e = vassal(&doc, &v.name).unwrap();
            let pid = e["pid"].as_i64().unwrap_or(-1) as i32;
            if e["state"] != "running" || pid <= 0 || e["accepting"] != 1 {
                return Err(format!("{} not running and accepting: {e}", v.name));
            }
            stats_pid.insert(v.name.clone(), pid);
        }
        // The emperor's children: exactly one per config, the one in the stats, none a zombie.
        let children = kids(self.emp_pid);
        let zombies = children.iter().filter(|&&p| is_zombie(p)).count();
        if zombies > 0 {
            return Err(format!("{zombies} zombie children of the emperor"));
        }
        let mut per_config: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for &c in &children {
            match config_of(c) {
                Some(n) => per_config.entry(n).or_default().push(c),
                None => {
                    return Err(format!(
                        "emperor child {c} {:?} runs no config",
                        proc_argv(c)
                    ))
                }
            }
        }
        for v in &present {
            let got = per_config.get(&v.name).cloned().unwrap_or_default();
            if got != [stats_pid[&v.name]] {
                return Err(format!(
                    "{}: emperor children {got:?}, stats pid {}",
                    v.name, stats_pid[&v.name]
                ));
            }
            let under: Vec<i32> = kids(stats_pid[&v.name]);
            let live_under: Vec<i32> = under.iter().copied().filter(|&p| !is_zombie(p)).collect();
            match v.kind {
                Kind::Shim => {
                    let progs = live_under.iter().filter(|&&p| comm(p) == "sleep").count();
                    if progs != 1 {
                        return Err(format!("{}: {progs} programs under the shim", v.name));
                    }
                }
                Kind::Uwsgi => {
                    if live_under.len() != 1 {
                        return Err(format!("{}: uWSGI workers {live_under:?}", v.name));
                    }
                }
            }
        }
        if per_config.len() != present.len() {
            return Err(format!("emperor children per config: {per_config:?}"));
        }
        // Nothing else of the run anywhere on the machine: per uWSGI vassal a master and a
        // worker, per shim vassal the shim, its sentinel and the program.
        let mut census: BTreeMap<String, usize> = BTreeMap::new();
        let marker = marker(&self.dir);
        for p in run_pids(&marker, &self.dir) {
            if p == self.emp_pid || is_zombie(p) && stat(p).is_some_and(|s| s.1 == self.emp_pid) {
                continue;
            }
            *census.entry(comm(p)).or_default() += 1;
        }
        let nu = self.count(Kind::Uwsgi);
        let ns = self.count(Kind::Shim);
        let mut expect: BTreeMap<String, usize> = BTreeMap::new();
        if nu > 0 {
            expect.insert("uwsgi".into(), 2 * nu);
        }
        if ns > 0 {
            expect.insert("vassal-shim".into(), ns);
            expect.insert("vassal-sentinel".into(), ns);
            expect.insert("sleep".into(), ns);
        }
        if census != expect {
            return Err(format!(
                "processes of the run by name: {census:?}, want {expect:?}"
            ));
        }
        Ok(Converged { zombies, census })
    }

    fn count(&self, k: Kind) -> usize {
        self.vassals
            .iter()
            .filter(|v| v.present && v.kind == k)
            .count()
    }

    /// Waits (bounded) for the converged state; returns it and how long it took.
    fn converge(&mut self, timeout: Duration) -> (Converged, Duration) {
        let t0 = Instant::now();
        let deadline = t0 + timeout;
        loop {
            match self.check() {
                Ok(c) => return (c, t0.elapsed()),
                Err(why) if Instant::now() > deadline => panic!(
                    "no convergence within {timeout:?} (seed {}): {why}\n{}",
                    self.seed,
                    tail(&mut self.emp)
                ),
                // Poll interval of a deadline-bounded wait on the emperor's state.
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

fn marker(dir: &Path) -> Vec<u8> {
    format!("EMPEROR_CHAOS_RUN={}", dir.display()).into_bytes()
}

/// The last lines the emperor printed.
fn tail(emp: &mut Proc) -> String {
    let all = emp.output();
    let lines: Vec<&str> = all.lines().collect();
    let from = lines.len().saturating_sub(150);
    format!("emperor output (last lines):\n{}", lines[from..].join("\n"))
}

#[test]
fn random_kills_touches_and_removals_converge_to_one_process_per_config_and_leave_nothing() {
    require_uwsgi();
    let shim = ensure_shim();
    let kills = env_usize("CHAOS_KILLS", 150);
    let n_uwsgi = env_usize("CHAOS_UWSGI", 4);
    let n_shims = env_usize("CHAOS_SHIMS", 8);
    let seed = match std::env::var("CHAOS_SEED") {
        Ok(s) => s.parse().expect("CHAOS_SEED is a number"),
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            t.as_nanos() as u64 ^ u64::from(std::process::id()) << 32
        }
    };
    println!("chaos: seed {seed} (rerun with CHAOS_SEED={seed}), {kills} kills, {n_uwsgi} uWSGI + {n_shims} shim vassals");

    let (work, dir) = work_dir();
    let sweeper = Sweeper {
        marker: marker(work.path()),
        dir: work.path().to_owned(),
    };

    let mut vassals = Vec::new();
    for i in 0..n_uwsgi {
        let name = format!("u{i}.ini");
        let sock = work.path().join(format!("u{i}.sock"));
        let p = write_vassal(&dir, &name, &sock, "");
        let text = std::fs::read_to_string(p).unwrap();
        vassals.push(Vassal {
            name,
            kind: Kind::Uwsgi,
            text,
            present: true,
        });
    }
    for i in 0..n_shims {
        let name = format!("s{i}.ini");
        let text = "[vassal-shim]\nexec = sleep 86400\nloyal-after = 0.2\nstop-timeout = 2\n";
        std::fs::write(dir.join(&name), text).unwrap();
        vassals.push(Vassal {
            name,
            kind: Kind::Shim,
            text: text.into(),
            present: true,
        });
    }

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emperor"));
    cmd.env(
        "EMPEROR_CHAOS_RUN",
        std::ffi::OsStr::new(&work.path().display().to_string()),
    )
    .env(
        "PATH",
        format!(
            "{}:{}",
            shim.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    );
    let (emp, stats_path) = start_emperor_with(
        cmd,
        work.path(),
        &dir,
        &[
            "--emperor-throttle",
            "50",
            "--emperor-max-throttle",
            "800",
            "--emperor-curse-tolerance",
            "5",
            "--reload-mercy",
            "10",
        ],
    );
    let emp_pid = emp.pid() as i32;
    let mut run = Run {
        emp,
        emp_pid,
        stats: stats_path,
        dir: dir.clone(),
        vassals,
        rng: Rng::new(seed),
        seed,
        killed: HashSet::new(),
        tally: Tally::default(),
    };
    let settle = T * 2;
    run.converge(settle);

    // Warm-up, then the baseline.
    run.storm(WARMUP_KILLS.min(kills));
    run.readd_all();
    run.converge(settle);
    let fds_before = fd_count(emp_pid);
    let rss_before = rss_kib(emp_pid);
    run.tally = Tally::default();

    let t0 = Instant::now();
    run.storm(kills);
    run.remove_one_unless_some_are_gone();
    let storm_time = t0.elapsed();
    // Converged with the configs the storm left: the removed ones gone, the others running.
    let (conv_partial, converge_time) = run.converge(settle);
    let gone = run.vassals.iter().filter(|v| !v.present).count();
    // And once all are back, the same fleet as the baseline.
    run.readd_all();
    let (conv, converge_readd) = run.converge(settle);
    let fds_after = fd_count(emp_pid);
    let rss_after = rss_kib(emp_pid);
    let doc = run.stats_doc();
    let restarts: i64 = doc["vassals"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["restarts"].as_i64())
        .sum();

    // SIGTERM: the emperor stops everything and exits; nothing of the run may stay behind,
    // also when vassals and programs are SIGKILLed while it shuts down.
    let mut targets: Vec<(i32, i32)> = run
        .live(None)
        .into_iter()
        .map(|(_, p)| (p, emp_pid))
        .collect();
    targets.extend(
        run.live(Some(Kind::Shim))
            .into_iter()
            .flat_map(|(_, shim)| {
                kids(shim)
                    .into_iter()
                    .filter(|&p| comm(p) == "sleep")
                    .map(move |p| (p, shim))
            }),
    );
    run.emp.signal(libc::SIGTERM);
    let mut shutdown_kills = 0;
    for _ in 0..3 {
        let Some(&(p, parent)) = run.rng.pick(&targets) else {
            break;
        };
        if run.kill(p, parent) {
            shutdown_kills += 1;
        }
    }
    let st = run.emp.wait_exit(T * 2);
    let at_exit = run_pids(&sweeper.marker, work.path());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut left = at_exit.clone();
    while !left.is_empty() && Instant::now() < deadline {
        // Poll interval of a deadline-bounded wait for processes to go.
        std::thread::sleep(Duration::from_millis(50));
        left = run_pids(&sweeper.marker, work.path());
    }
    let left_desc: Vec<String> = left
        .iter()
        .map(|&p| format!("{p} {} {:?} ppid {:?}", comm(p), proc_argv(p), stat(p)))
        .collect();

    if let Ok(path) = std::env::var("CHAOS_LOG") {
        std::fs::write(&path, run.emp.output()).unwrap_or_else(|e| panic!("CHAOS_LOG={path}: {e}"));
    }
    let t = &run.tally;
    println!("chaos: summary (seed {seed})");
    println!("chaos:   vassals             {n_uwsgi} uWSGI + {n_shims} shim");
    println!(
        "chaos:   kills               {} (vassal processes {}, programs under shims {}, uWSGI workers {}) + {} warm-up",
        t.kills(),
        t.kill_vassal,
        t.kill_program,
        t.kill_worker,
        WARMUP_KILLS.min(kills)
    );
    println!(
        "chaos:   config changes      {} touches, {} removals, {} re-adds",
        t.touches, t.removes, t.readds
    );
    println!("chaos:   waited for respawn  {} times", t.waits);
    println!("chaos:   restarts (stats)    {restarts}");
    println!(
        "chaos:   storm time          {:.1} s",
        storm_time.as_secs_f64()
    );
    println!(
        "chaos:   converge time       {:.2} s with {gone} configs removed ({:?}), then {:.2} s once all were back",
        converge_time.as_secs_f64(),
        conv_partial.census,
        converge_readd.as_secs_f64()
    );
    println!("chaos:   emperor fds         {fds_before} before, {fds_after} after");
    println!("chaos:   emperor VmRSS       {rss_before} KiB before, {rss_after} KiB after");
    println!("chaos:   processes at end    {:?}", conv.census);
    println!(
        "chaos:   zombies             {} and {}",
        conv_partial.zombies, conv.zombies
    );
    println!(
        "chaos:   leftovers           {} at emperor exit, {} after 10 s",
        at_exit.len(),
        left.len()
    );
    println!("chaos:   emperor exit        {st} ({shutdown_kills} kills during the shutdown)");

    assert!(st.success(), "emperor exit after SIGTERM: {st}");
    assert!(
        fds_after <= fds_before + FD_SLACK,
        "emperor fds grew from {fds_before} to {fds_after} (seed {seed})"
    );
    assert!(
        rss_after <= rss_before + RSS_SLACK_KIB,
        "emperor VmRSS grew from {rss_before} KiB to {rss_after} KiB (seed {seed})"
    );
    assert!(
        left.is_empty(),
        "processes of the run left after SIGTERM (seed {seed}): {left_desc:#?}"
    );
}
