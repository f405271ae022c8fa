//! The one-thread `mio` loop: performs the core's actions and feeds it events.
//!
//! Sources: signals (signal-hook-mio), the inotify fd, the stats listener and its clients, and
//! one channel per running vassal (plus its config socket while a push is pending). Every
//! readable source is drained until `WouldBlock`, except a vassal channel (at most
//! `CHANNEL_BUDGET` bytes per turn) and the stats listener (`ACCEPT_BATCH` connections per
//! turn), whose rest waits for the next turn; timers are the core's deadline heap plus the
//! safety rescan and stats client deadlines. Children are reaped with `waitpid(-1, WNOHANG)` in a
//! loop on SIGCHLD (and on channel EOF, which is only a hint).

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use inotify::{Inotify, WatchDescriptor, WatchMask};
use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use signal_hook::consts::signal::*;
use signal_hook_mio::v1_0::Signals;
use tracing::{debug, error, info, warn};

use crate::core::{Action, Control, Core, CoreConfig, Event, ExitKind, Inc, SpawnRequest};
use crate::monitor::{parse_monitor, Scanner};
use crate::options::Options;
use crate::spawn::{build_argv, resolve, vassal_env, ArgvConfig, Launcher, Plan, Spawner};
use crate::stats::{self, Clock, ProcessInfo};

const SIGNALS: Token = Token(0);
const INOTIFY: Token = Token(1);
const STATS: Token = Token(2);
const PARENT: Token = Token(3);
const CLIENT_BASE: usize = 1 << 20;
const CLIENT_SPAN: usize = 1 << 30;
/// Channel tokens: `CHANNEL_BASE | inc << 1 | is_config` (an [`Inc`] is below 2^60).
const CHANNEL_BASE: usize = 1 << 62;

/// Quiet time after an inotify event saying a file went away (`IN_DELETE`, `IN_MOVED_FROM`) or
/// a whole directory changed, before it is examined (coalesces an editor's rename-away + write
/// into one reload). Events saying a file is there and complete are examined at once.
const SETTLE: Duration = Duration::from_millis(100);
/// Starts performed per turn of the event loop. Each start waits for its child's `execve` (a
/// few ms when hundreds of vassals start at once on a busy machine), so a directory of hundreds
/// of new configs would otherwise keep the loop from channels, signals and the stats socket
/// until the last one has started.
const SPAWN_BATCH: usize = 16;
/// A stats client that has not been served within this is dropped.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most stats clients served at once; a new one evicts the oldest.
const MAX_STATS_CLIENTS: usize = 64;
/// Stats connections accepted per turn of the loop (the rest at the next turn).
const ACCEPT_BATCH: usize = 256;
/// File descriptors kept free for spawns and channels: a stats connection that would leave
/// fewer replaces the oldest client (or is closed, with none to replace).
const FD_RESERVE: u64 = 64;
/// Largest stats request read (`--stats-http`); a client sending more is answered anyway.
const MAX_REQUEST: usize = 4096;
/// Bytes read from one vassal channel per turn of the loop (a well-behaved vassal sends a few
/// bytes a second; a flooding one waits for the next turn, after every other source).
const CHANNEL_BUDGET: usize = 16 * 1024;

fn channel_token(inc: Inc) -> Token {
    Token(CHANNEL_BASE + (inc.0 as usize) * 2)
}

fn config_token(inc: Inc) -> Token {
    Token(CHANNEL_BASE + (inc.0 as usize) * 2 + 1)
}

#[derive(Debug)]
struct Channel {
    stream: UnixStream,
    config: Option<UnixStream>,
    pending: Vec<u8>,
    config_registered: bool,
    open: bool,
}

#[derive(Debug)]
enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

#[derive(Debug)]
enum ClientStream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl ClientStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ClientStream::Unix(s) => s.read(buf),
            ClientStream::Tcp(s) => s.read(buf),
        }
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ClientStream::Unix(s) => s.write(buf),
            ClientStream::Tcp(s) => s.write(buf),
        }
    }
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            ClientStream::Unix(s) => s,
            ClientStream::Tcp(s) => s,
        }
    }
}

#[derive(Debug)]
struct Client {
    stream: ClientStream,
    request: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
    reading: bool,
    deadline: Instant,
}

/// Startup failures.
#[derive(Debug)]
pub struct RunError(pub String);

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RunError {}

fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> RunError + '_ {
    move |e| RunError(format!("{what}: {e}"))
}

/// The running emperor.
pub struct Runtime {
    poll: Poll,
    core: Core,
    scanners: Vec<Scanner>,
    inotify: Inotify,
    watch_monitors: HashMap<WatchDescriptor, Vec<usize>>,
    watched_dirs: HashMap<PathBuf, WatchDescriptor>,
    dirty: HashSet<usize>,
    dirty_names: HashMap<usize, HashSet<OsString>>,
    settle_at: Option<Instant>,
    next_rescan: Instant,
    freq: Duration,
    channels: HashMap<Inc, Channel>,
    launcher: Box<dyn Launcher>,
    argv: ArgvConfig,
    env: Vec<(OsString, OsString)>,
    path_var: Option<OsString>,
    /// The emperor's own binary (read once: the shim is looked for beside it).
    exe: Option<PathBuf>,
    cwd: PathBuf,
    signals: Signals,
    listener: Option<Listener>,
    stats_http: bool,
    clients: HashMap<Token, Client>,
    next_client: usize,
    info: ProcessInfo,
    notify: Option<Notifier>,
    notified_count: Option<usize>,
    pidfile: Option<PathBuf>,
    reap_needed: bool,
    parent: Option<UnixStream>,
    watch_failed: HashSet<PathBuf>,
    hooks: crate::hooks::Hooks,
    isolation: crate::isolation::Isolation,
    tyrant_initgroups: bool,
    exiting: Option<(i32, Instant)>,
    ondemand: crate::ondemand::OnDemand,
    command: Option<crate::command::CommandSocket>,
    fork: Option<crate::forkserver::ForkClient>,
    /// `perform` stopped after a batch of starts with actions still queued.
    actions_left: bool,
    /// Owns each vassal's process tree (cgroup or process group).
    tree: crate::cgroup::Tree,
    /// Channels whose read budget ran out before `WouldBlock` (see [`Runtime::on_channel`]).
    busy_channels: HashSet<Inc>,
    /// The stats listener may still have connections queued (an accept batch ran out).
    accept_pending: bool,
    /// Stats clients by age (oldest first), for eviction.
    client_order: std::collections::VecDeque<Token>,
    /// The soft RLIMIT_NOFILE, read at startup.
    fd_limit: u64,
    /// Stats connections closed for want of fds.
    refused_clients: crate::core::garbage::LogLimit,
}

impl Runtime {
    /// Sets everything up (monitors, signals, stats socket, pidfile) without scanning yet.
    pub fn new(opts: &Options) -> Result<Runtime, RunError> {
        let cwd = std::env::current_dir().map_err(err("cannot read the current directory"))?;
        let monitors = opts.all_monitors();
        if monitors.is_empty() {
            return Err(RunError(
                "no monitor given: pass a vassal directory or glob (e.g. `emperor /etc/uwsgi/vassals`)".into(),
            ));
        }
        let mut scanners = Vec::new();
        for m in &monitors {
            let spec = parse_monitor(m, &cwd).map_err(|e| RunError(e.to_string()))?;
            scanners.push(Scanner::new(
                spec,
                opts.extra_extension.clone(),
                opts.nofollow,
            ));
        }
        let freq = Duration::from_secs(opts.freq.max(1));
        let cfg = CoreConfig {
            freq,
            required_heartbeat: Duration::from_secs(opts.required_heartbeat),
            curse_tolerance: Duration::from_secs(opts.curse_tolerance),
            throttle_ms: opts.throttle,
            max_throttle_ms: opts.max_throttle,
            no_blacklist: opts.no_blacklist,
            graceful_shutdown: opts.graceful_shutdown,
            reload_mercy: Duration::from_secs(opts.reload_mercy),
            seed: seed(),
            ..CoreConfig::default()
        };
        let poll = Poll::new().map_err(err("cannot create the event loop"))?;
        let mut signals = Signals::new([
            SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGUSR1, SIGURG, SIGWINCH, SIGCHLD,
        ])
        .map_err(err("cannot install signal handlers"))?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(err("cannot watch signals"))?;
        let inotify = Inotify::init().map_err(err("cannot initialise inotify"))?;
        poll.registry()
            .register(
                &mut SourceFd(&inotify.as_raw_fd()),
                INOTIFY,
                Interest::READABLE,
            )
            .map_err(err("cannot watch inotify"))?;
        let listener = match &opts.stats {
            Some(addr) => {
                let mut l = bind_stats(addr, &cwd)?;
                let src: &mut dyn mio::event::Source = match &mut l {
                    Listener::Unix(u, _) => u,
                    Listener::Tcp(t) => t,
                };
                poll.registry()
                    .register(src, STATS, Interest::READABLE)
                    .map_err(err("cannot watch the stats socket"))?;
                info!("stats server enabled on {addr}");
                Some(l)
            }
            None => None,
        };
        let command = match &opts.command_socket {
            Some(addr) => Some(
                crate::command::CommandSocket::bind(
                    addr,
                    &cwd,
                    poll.registry(),
                    opts.command_allow_udp,
                )
                .map_err(RunError)?,
            ),
            None => None,
        };
        // Relative wrapper and template paths mean what they mean under uWSGI: relative to
        // the vassal's working directory (its monitor directory for dir monitors).
        let argv = ArgvConfig {
            wrapper: opts.wrapper.clone(),
            overrides: opts.wrapper_override.clone(),
            fallbacks: opts.wrapper_fallback.clone(),
            magic_exec: opts.magic_exec,
            extra_ext: opts.extra_extension.clone(),
            inherit_before: opts.vassals_inherit_before.clone(),
            include_before: opts.vassals_include_before.clone(),
            set: opts.vassals_set.clone(),
            inherit: opts.vassals_inherit.clone(),
            include: opts.vassals_include.clone(),
        };
        let isolation = crate::isolation::Isolation::new(
            opts.emperor_use_clone.as_deref(),
            opts.emperor_cap.as_deref(),
        )
        .map_err(|e| RunError(e.to_string()))?;
        if opts.tyrant_nofollow {
            for s in &mut scanners {
                s.set_owner_nofollow(true);
            }
        }
        let mode = opts
            .process_tree
            .parse::<crate::cgroup::Mode>()
            .map_err(|e| RunError(e.to_string()))?;
        // Before anything is spawned: the emperor moves into its own leaf cgroup.
        let tree = crate::cgroup::Tree::setup(mode).map_err(|e| RunError(e.to_string()))?;
        let pid = std::process::id();
        if let Some(p) = &opts.pidfile {
            std::fs::write(p, format!("{pid}\n"))
                .map_err(err(&format!("cannot write pidfile {}", p.display())))?;
        }
        if let Some(name) = &opts.procname {
            set_procname(name);
        }
        let fork = crate::forkserver::ForkClient::setup(opts, &cwd).map_err(RunError)?;
        let info = ProcessInfo {
            pid,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            cwd: cwd.display().to_string(),
            monitors,
            process_tree: tree.label(),
            cgroups: HashMap::new(),
        };
        Ok(Runtime {
            poll,
            core: {
                let mut core = Core::new(cfg);
                core.set_activation(crate::ondemand::activation_config(opts));
                core.set_tyrant(opts.tyrant);
                core
            },
            scanners,
            inotify,
            watch_monitors: HashMap::new(),
            watched_dirs: HashMap::new(),
            dirty: HashSet::new(),
            dirty_names: HashMap::new(),
            settle_at: None,
            next_rescan: Instant::now(),
            freq,
            channels: HashMap::new(),
            launcher: Box::new(Spawner::new().map_err(err("cannot open /dev/null"))?),
            argv,
            env: vassal_env(std::env::vars_os()),
            path_var: std::env::var_os("PATH"),
            exe: std::env::current_exe().ok(),
            cwd,
            signals,
            listener,
            stats_http: opts.stats_http,
            clients: HashMap::new(),
            next_client: 0,
            info,
            notify: Notifier::from_env(),
            notified_count: None,
            pidfile: opts.pidfile.clone(),
            reap_needed: false,
            parent: None,
            watch_failed: HashSet::new(),
            hooks: crate::hooks::Hooks::new(crate::hooks::HookConfig {
                start: opts.vassals_start_hook.clone(),
                stop: opts.vassals_stop_hook.clone(),
                exec_as_vassal: opts.exec_as_vassal.clone(),
                exec_as_emperor: opts.exec_as_emperor.clone(),
            }),
            isolation,
            tyrant_initgroups: opts.tyrant_initgroups,
            exiting: None,
            ondemand: crate::ondemand::OnDemand::new(opts),
            command,
            fork,
            actions_left: false,
            tree,
            busy_channels: HashSet::new(),
            accept_pending: false,
            client_order: std::collections::VecDeque::new(),
            fd_limit: nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(1024),
            refused_clients: crate::core::garbage::LogLimit::default(),
        }
        .with_parent_emperor())
    }

    /// Records that the process now runs as `uid`:`gid` (after `uid`/`gid` dropped
    /// privileges), for the stats and the vassals that inherit it.
    pub fn set_credentials(&mut self, uid: u32, gid: u32) {
        self.info.uid = uid;
        self.info.gid = gid;
    }

    /// About to run as `uid`:`gid`: hands it what the emperor keeps using as that user, the
    /// vassal cgroups (see [`crate::cgroup::Tree::hand_over`]) and the command socket file.
    pub fn hand_over_to(&self, uid: u32, gid: u32) {
        self.tree.hand_over(uid, gid);
        if let Some(c) = &self.command {
            c.hand_over(uid, gid);
        }
    }

    /// Replaces the local spawner (seam for the fork server).
    pub fn set_launcher(&mut self, launcher: Box<dyn Launcher>) {
        self.launcher = launcher;
    }

    /// Runs until a shutdown completes; returns the exit code.
    pub fn run(mut self) -> i32 {
        info!(
            "*** Starting the Emperor (pid: {}) over {} ***",
            self.info.pid,
            self.info.monitors.join(" ")
        );
        let binary = self.argv.binary().to_string();
        if resolve(&binary, self.path_var.as_deref(), &self.cwd).is_none() {
            warn!(
                "`{binary}` was not found on PATH: vassals cannot start until it is installed ({})",
                crate::spawn::INSTALL_HINT
            );
        }
        self.rescan_all();
        if let Some(p) = self.parent.as_mut() {
            // As a uWSGI sub-emperor: "ready" (1) once initialised, "loyal" (17) once governing.
            let _ = p.write_all(&[1, 17]);
        }
        if let Some(n) = &self.notify {
            n.send(&format!(
                "READY=1\nSTATUS=The Emperor is governing {} vassals",
                self.core.len()
            ));
            self.notified_count = Some(self.core.len());
        }
        let mut events = Events::with_capacity(256);
        let code = loop {
            if let Some(code) = self.perform() {
                // Stop hooks still running are waited for (up to reload-mercy).
                let mercy = self.core.config().reload_mercy;
                self.exiting.get_or_insert((code, Instant::now() + mercy));
            }
            if self.core.shutting_down() {
                self.hooks.cancel_starts();
            }
            if let Some((code, until)) = self.exiting {
                if !self.hooks.busy() {
                    break code;
                }
                if Instant::now() >= until {
                    warn!("hooks still running after reload-mercy: exiting without them");
                    break code;
                }
            }
            let now = Instant::now();
            let mut wake =
                if self.actions_left || !self.busy_channels.is_empty() || self.accept_pending {
                    now
                } else {
                    self.next_rescan
                };
            if let Some(t) = self.core.next_deadline() {
                wake = wake.min(t);
            }
            if let Some(t) = self.settle_at {
                wake = wake.min(t);
            }
            if let Some(t) = self.clients.values().map(|c| c.deadline).min() {
                wake = wake.min(t);
            }
            if let Some((_, t)) = self.exiting {
                wake = wake.min(t);
            }
            if let Some(t) = self.fork.as_ref().and_then(|f| f.next_deadline()) {
                wake = wake.min(t);
            }
            if let Some(t) = self.tree.next_deadline() {
                wake = wake.min(t);
            }
            let timeout = wake.saturating_duration_since(now);
            // Read after this turn's events: every other ready source goes first.
            let busy: Vec<Inc> = self.busy_channels.drain().collect();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    error!("event loop failed: {e}");
                    break 1;
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    SIGNALS => self.on_signals(),
                    INOTIFY => self.on_inotify(),
                    STATS => self.on_accept(),
                    PARENT => self.on_parent(),
                    tok if crate::forkserver::inc_of(tok).is_some() => {
                        self.drive_forks(crate::forkserver::inc_of(tok))
                    }
                    tok if crate::hooks::Hooks::owns(tok) => {
                        self.hooks.on_readable(self.poll.registry(), tok)
                    }
                    Token(t) if t >= CHANNEL_BASE => {
                        let inc = Inc(((t - CHANNEL_BASE) / 2) as u64);
                        if (t - CHANNEL_BASE) % 2 == 0 {
                            self.on_channel(inc);
                        } else {
                            self.flush_config(inc);
                        }
                    }
                    crate::command::TOKEN => {
                        if let Some(c) = self.command.as_mut() {
                            c.drain(&mut self.core);
                        }
                    }
                    tok if crate::ondemand::owns(tok) => {
                        let evs = self.ondemand.on_ready(tok, self.poll.registry());
                        self.on_demand_events(evs);
                    }
                    tok => self.on_client(tok),
                }
            }
            for inc in busy {
                self.on_channel(inc);
            }
            if std::mem::take(&mut self.accept_pending) {
                self.on_accept();
            }
            if self.reap_needed {
                self.reap();
            }
            if self.fork.is_some() {
                self.drive_forks(None);
            }
            let now = Instant::now();
            self.tree.poll(now);
            self.core.handle_timeout(now);
            let evs = self.ondemand.expire(now, self.poll.registry());
            self.on_demand_events(evs);
            self.expire_clients(now);
            if now >= self.next_rescan {
                self.safety_pass();
                self.next_rescan = now + self.freq;
                if !self.dirty.is_empty() {
                    self.settle_at = Some(now);
                }
            }
            if self.settle_at.is_some_and(|t| t <= now) {
                self.settle_at = None;
                self.process_dirty();
            }
            self.update_status();
        };
        self.cleanup();
        code
    }

    /// The periodic safety net: marks for a full rescan every monitor inotify may not fully
    /// cover. A dir monitor with a live watch on a local filesystem costs one `stat` of its
    /// directory (see [`Scanner::needs_rescan`]); the others are rescanned.
    fn safety_pass(&mut self) {
        for m in 0..self.scanners.len() {
            let watched = self.scanners[m]
                .watch_dirs()
                .first()
                .is_some_and(|d| self.watched_dirs.contains_key(d));
            if self.scanners[m].needs_rescan(watched) {
                self.dirty.insert(m);
            }
        }
    }

    fn rescan_all(&mut self) {
        for m in 0..self.scanners.len() {
            self.scan(m);
        }
        self.next_rescan = Instant::now() + self.freq;
    }

    fn scan(&mut self, m: usize) {
        let result = self.scanners[m].scan();
        let dirs: Vec<PathBuf> = self.scanners[m].watch_dirs().to_vec();
        for d in dirs {
            self.watch(m, d);
        }
        if let Some(entries) = result.entries {
            self.core.handle(
                Instant::now(),
                Event::Scanned {
                    monitor: m,
                    entries,
                },
            );
        }
    }

    /// Full rescans of dirty monitors, then single-file checks for the rest.
    fn process_dirty(&mut self) {
        let full: Vec<usize> = self.dirty.drain().collect();
        for &m in &full {
            self.dirty_names.remove(&m);
            self.scan(m);
        }
        let names = std::mem::take(&mut self.dirty_names);
        self.check_names(names);
    }

    /// Re-examines single files of dir monitors (one `Event::Updated` each).
    fn check_names(&mut self, names: HashMap<usize, HashSet<OsString>>) {
        for (m, names) in names {
            for n in names {
                let Some(name) = n.to_str() else {
                    // The full scan reports (once) why it is skipped.
                    self.scan(m);
                    break;
                };
                for (key, entry) in self.scanners[m].check_event(name) {
                    self.core.handle(
                        Instant::now(),
                        Event::Updated {
                            monitor: m,
                            key,
                            entry,
                        },
                    );
                }
            }
        }
    }

    fn watch(&mut self, m: usize, dir: PathBuf) {
        if let Some(wd) = self.watched_dirs.get(&dir) {
            let ms = self.watch_monitors.entry(wd.clone()).or_default();
            if !ms.contains(&m) {
                ms.push(m);
            }
            return;
        }
        let mask = WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::CLOSE_WRITE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::ATTRIB
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF
            | WatchMask::ONLYDIR;
        match self.inotify.watches().add(&dir, mask) {
            Ok(wd) => {
                debug!("watching {}", dir.display());
                self.watch_failed.remove(&dir);
                let ms = self.watch_monitors.entry(wd.clone()).or_default();
                if !ms.contains(&m) {
                    ms.push(m);
                }
                self.watched_dirs.insert(dir, wd);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                debug!("cannot watch {} yet: {e}", dir.display())
            }
            Err(e) => {
                if self.watch_failed.insert(dir.clone()) {
                    warn!(
                        "cannot watch {} with inotify ({e}): changes there are seen by the rescan every {} s (raise fs.inotify.max_user_watches if it says \"No space left on device\")",
                        dir.display(),
                        self.freq.as_secs()
                    );
                }
            }
        }
    }

    fn on_inotify(&mut self) {
        let mut buf = [0u8; 8192];
        let mut now_names: HashMap<usize, HashSet<OsString>> = HashMap::new();
        loop {
            let events = match self.inotify.read_events(&mut buf) {
                Ok(ev) => ev,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    warn!("inotify read failed: {e}");
                    break;
                }
            };
            let mut any = false;
            let mut gone: Vec<(WatchDescriptor, bool)> = Vec::new();
            for ev in events {
                any = true;
                let whole = ev.name.is_none()
                    || ev.mask.intersects(
                        inotify::EventMask::IGNORED
                            | inotify::EventMask::MOVE_SELF
                            | inotify::EventMask::DELETE_SELF
                            | inotify::EventMask::Q_OVERFLOW,
                    );
                if let Some(ms) = self.watch_monitors.get(&ev.wd) {
                    for &m in ms {
                        match ev.name {
                            // One file of a dir monitor: re-examine just that file.
                            Some(name) if !whole && self.scanners[m].is_dir() => {
                                if ev.mask == inotify::EventMask::CREATE
                                    && self.scanners[m].is_regular_file(name)
                                {
                                    // A new regular file is being written: its IN_CLOSE_WRITE
                                    // follows, so a half-written config is never started.
                                    continue;
                                }
                                // A disappearance waits for the settle: an editor that
                                // renames the old file away before writing the new one gets a
                                // reload, not a stop and a start. Anything saying the file is
                                // there and complete is examined at the end of this read.
                                let later = ev.mask.intersects(
                                    inotify::EventMask::DELETE | inotify::EventMask::MOVED_FROM,
                                );
                                let set = if later {
                                    &mut self.dirty_names
                                } else {
                                    &mut now_names
                                };
                                set.entry(m).or_default().insert(name.to_os_string());
                            }
                            _ => {
                                self.dirty.insert(m);
                            }
                        }
                    }
                } else {
                    // Queue overflow or an unknown watch: rescan everything.
                    self.dirty.extend(0..self.scanners.len());
                }
                if ev.mask.contains(inotify::EventMask::IGNORED) {
                    gone.push((ev.wd.clone(), false));
                } else if ev.mask.contains(inotify::EventMask::MOVE_SELF)
                    || ev.mask.contains(inotify::EventMask::DELETE_SELF)
                {
                    gone.push((ev.wd.clone(), true));
                }
            }
            for (wd, remove) in gone {
                if remove {
                    let _ = self.inotify.watches().remove(wd.clone());
                }
                self.watch_monitors.remove(&wd);
                self.watched_dirs.retain(|_, w| *w != wd);
            }
            if !any {
                break;
            }
        }
        self.check_names(now_names);
        if (!self.dirty.is_empty() || !self.dirty_names.is_empty()) && self.settle_at.is_none() {
            self.settle_at = Some(Instant::now() + SETTLE);
        }
    }

    /// When started as a vassal (`UWSGI_EMPEROR_FD` set), this emperor speaks the vassal side
    /// of the channel to its own emperor, like a uWSGI sub-emperor.
    fn with_parent_emperor(mut self) -> Self {
        let Some(fd) = std::env::var("UWSGI_EMPEROR_FD")
            .ok()
            .and_then(|v| v.trim().parse::<i32>().ok())
        else {
            return self;
        };
        let is_socket = nix::sys::stat::fstat(
            // SAFETY: the fd number comes from our emperor; borrowing it for fstat only.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
        )
        .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK)
        .unwrap_or(false);
        if !is_socket {
            warn!("UWSGI_EMPEROR_FD={fd} is not a socket: ignoring it");
            return self;
        }
        // SAFETY: per the emperor protocol this fd is the vassal end of our emperor's channel,
        // handed to this process to own; nothing else in the process uses it.
        let std_stream =
            unsafe { <std::os::unix::net::UnixStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let _ = nix::fcntl::fcntl(
            &std_stream,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        if std_stream.set_nonblocking(true).is_err() {
            return self;
        }
        let mut stream = UnixStream::from_std(std_stream);
        if self
            .poll
            .registry()
            .register(&mut stream, PARENT, Interest::READABLE)
            .is_ok()
        {
            info!("has_emperor mode detected (fd: {fd}): governing vassals for my own emperor");
            self.parent = Some(stream);
        }
        self
    }

    fn on_parent(&mut self) {
        let mut buf = [0u8; 64];
        let now = Instant::now();
        loop {
            let Some(p) = self.parent.as_mut() else {
                return;
            };
            let n = match p.read(&mut buf) {
                Ok(0) => 0,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            if n == 0 {
                warn!("lost connection with my emperor: stopping");
                if let Some(mut p) = self.parent.take() {
                    let _ = self.poll.registry().deregister(&mut p);
                }
                self.core.handle(now, Event::Control(Control::Shutdown));
                return;
            }
            for &b in &buf[..n] {
                let control = match uwsgi_proto::EmperorMsg::from_byte(b) {
                    uwsgi_proto::EmperorMsg::Stop | uwsgi_proto::EmperorMsg::GracefulStop => {
                        info!("received message {b} from my emperor: stopping");
                        Control::Shutdown
                    }
                    uwsgi_proto::EmperorMsg::Reload => {
                        info!("received message 1 from my emperor: reloading every vassal");
                        Control::ReloadAll
                    }
                    uwsgi_proto::EmperorMsg::Unknown(_) => {
                        info!("received message {b} from my emperor: ignored");
                        continue;
                    }
                };
                self.core.handle(now, Event::Control(control));
            }
        }
    }

    fn on_signals(&mut self) {
        let sigs: Vec<i32> = self.signals.pending().collect();
        let now = Instant::now();
        for s in sigs {
            let control = match s {
                SIGCHLD => {
                    self.reap_needed = true;
                    continue;
                }
                SIGINT | SIGTERM | SIGQUIT => {
                    if let Some(n) = &self.notify {
                        n.send("STOPPING=1");
                    }
                    Control::Shutdown
                }
                SIGHUP => Control::ReloadAll,
                SIGUSR1 => Control::LogStatus,
                SIGURG => Control::ClearBackoff,
                SIGWINCH => Control::Rescan,
                _ => continue,
            };
            self.core.handle(now, Event::Control(control));
        }
    }

    fn reap(&mut self) {
        self.reap_needed = false;
        loop {
            let (pid, exit) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitKind::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ExitKind::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            };
            if let Some(f) = self.fork.as_mut() {
                f.note_reaped(pid.as_raw(), exit, Instant::now());
            }
            match self.hooks.on_reaped(pid.as_raw(), exit) {
                crate::hooks::Reaped::NotOurs => {}
                crate::hooks::Reaped::Done => continue,
                crate::hooks::Reaped::Spawn(req) => {
                    self.spawn_after_hook(req);
                    continue;
                }
            }
            self.core.handle(
                Instant::now(),
                Event::Reaped {
                    pid: pid.as_raw(),
                    exit,
                },
            );
        }
    }

    /// Reads at most [`CHANNEL_BUDGET`] bytes of `inc`'s channel: a vassal writing without
    /// pause cannot keep the loop from the other sources. A channel left unread (the budget
    /// ran out before `WouldBlock`) is noted in `busy_channels` and read again at the next turn,
    /// which then does not sleep: mio reports a source again only once it has new data.
    fn on_channel(&mut self, inc: Inc) {
        let mut buf = [0u8; 512];
        let now = Instant::now();
        let mut budget = CHANNEL_BUDGET;
        loop {
            let Some(ch) = self.channels.get_mut(&inc) else {
                return;
            };
            if !ch.open {
                return;
            }
            if budget == 0 {
                self.busy_channels.insert(inc);
                return;
            }
            let want = budget.min(buf.len());
            match ch.stream.read(&mut buf[..want]) {
                Ok(0) => {
                    ch.open = false;
                    let _ = self.poll.registry().deregister(&mut ch.stream);
                    self.core.handle(now, Event::ChannelClosed { inc });
                    // EOF usually means the process is exiting: look for it now too.
                    self.reap_needed = true;
                    return;
                }
                Ok(n) => {
                    budget -= n;
                    for &byte in &buf[..n] {
                        self.core.handle(now, Event::Message { inc, byte });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    ch.open = false;
                    let _ = self.poll.registry().deregister(&mut ch.stream);
                    self.core.handle(now, Event::ChannelClosed { inc });
                    self.reap_needed = true;
                    return;
                }
            }
        }
    }

    fn flush_config(&mut self, inc: Inc) {
        let Some(ch) = self.channels.get_mut(&inc) else {
            return;
        };
        let Some(cfg) = ch.config.as_mut() else {
            return;
        };
        while !ch.pending.is_empty() {
            match cfg.write(&ch.pending) {
                Ok(0) => break,
                Ok(n) => {
                    ch.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!("config socket write failed: {e}");
                    ch.pending.clear();
                }
            }
        }
        let want = !ch.pending.is_empty();
        if want && !ch.config_registered {
            let _ = self
                .poll
                .registry()
                .register(cfg, config_token(inc), Interest::WRITABLE);
            ch.config_registered = true;
        } else if !want && ch.config_registered {
            let _ = self.poll.registry().deregister(cfg);
            ch.config_registered = false;
        }
    }

    /// Performs queued actions until none is left, or until [`SPAWN_BATCH`] starts (the rest
    /// waits for the next turn of the loop, which then does not sleep); `Some(code)` to exit.
    fn perform(&mut self) -> Option<i32> {
        self.actions_left = false;
        let mut spawns = 0;
        while let Some(a) = self.core.poll_action() {
            match a {
                Action::Spawn(req) => {
                    self.spawn(req);
                    spawns += 1;
                    if spawns == SPAWN_BATCH {
                        self.actions_left = true;
                        return None;
                    }
                }
                Action::Send { inc, msg } => {
                    if let Some(ch) = self.channels.get_mut(&inc) {
                        match ch.stream.write(&[msg.to_byte()]) {
                            Ok(1) => {}
                            Ok(_) => warn!("channel {inc:?}: short write"),
                            Err(e) => debug!("cannot write to channel {inc:?}: {e}"),
                        }
                    }
                }
                Action::PushConfig { inc, content } => {
                    if let Some(ch) = self.channels.get_mut(&inc) {
                        if let Err(e) = uwsgi_proto::config::encode(&content, &mut ch.pending) {
                            warn!("cannot push config: {e}");
                        }
                    }
                    self.flush_config(inc);
                }
                Action::Kill { pid } => {
                    if let Err(e) = kill(Pid::from_raw(pid), Signal::SIGKILL) {
                        debug!(pid, "kill failed: {e}");
                    }
                }
                Action::Release { inc } => {
                    // The incarnation is over: whatever it left behind goes with it.
                    self.tree.sweep(inc);
                    self.info.cgroups.remove(&inc);
                    self.hooks.released(self.poll.registry(), inc);
                    if let Some(mut ch) = self.channels.remove(&inc) {
                        if ch.open {
                            let _ = self.poll.registry().deregister(&mut ch.stream);
                        }
                        if let (Some(c), true) = (ch.config.as_mut(), ch.config_registered) {
                            let _ = self.poll.registry().deregister(c);
                        }
                    }
                }
                Action::Rescan => {
                    info!("rescanning every monitor");
                    for m in 0..self.scanners.len() {
                        self.scan(m);
                    }
                }
                Action::Exit => return Some(0),
                Action::OnDemand(a) => {
                    let cwd = match &a {
                        crate::core::OnDemandAction::Resolve { monitor, .. } => {
                            self.scanners[*monitor].vassal_cwd(&self.cwd).to_path_buf()
                        }
                        _ => self.cwd.clone(),
                    };
                    let evs = self.ondemand.perform(a, &cwd, self.poll.registry());
                    self.on_demand_events(evs);
                }
            }
        }
        None
    }

    /// Starts a vassal, after its `--vassals-start-hook` when there is one.
    fn spawn(&mut self, req: SpawnRequest) {
        let cwd = self.scanners[req.monitor].vassal_cwd(&self.cwd);
        if let Some(req) = self.hooks.before_start(self.poll.registry(), req, cwd) {
            self.spawn_now(req);
        }
    }

    /// The start hook of `req` exited: start it, unless that is no longer wanted.
    fn spawn_after_hook(&mut self, req: SpawnRequest) {
        let now = Instant::now();
        let reason = match self.core.vassal_by_inc(req.inc) {
            None => return,
            Some(_) if self.core.shutting_down() => "the emperor is shutting down",
            Some(v) if !v.wanted() => "its config is gone",
            Some(_) => return self.spawn_now(req),
        };
        let reason = format!("not started after its start hook: {reason}");
        self.core.handle(
            now,
            Event::SpawnFailed {
                inc: req.inc,
                reason,
            },
        );
    }

    /// The programs to try and the argv of a uWSGI vassal (overrides, `argv[0]`, fallbacks,
    /// each resolved on `path` from `cwd`), or why none can run.
    fn uwsgi_command(
        &self,
        req: &SpawnRequest,
        path: Option<&std::ffi::OsStr>,
        cwd: &Path,
    ) -> Result<crate::spawn::Exec, String> {
        let binary = self.argv.binary();
        let main = resolve(binary, path, cwd);
        let mut programs: Vec<PathBuf> = self
            .argv
            .overrides
            .iter()
            .filter_map(|p| resolve(p, path, cwd))
            .collect();
        programs.extend(main.clone());
        programs.extend(
            self.argv
                .fallbacks
                .iter()
                .filter_map(|p| resolve(p, path, cwd)),
        );
        if programs.is_empty() {
            return Err(crate::spawn::SpawnError::NotFound {
                program: binary.to_string(),
            }
            .to_string());
        }
        let argv0 = main
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| binary.to_string());
        let executable = self.argv.magic_exec
            && nix::unistd::access(
                Path::new(&req.key),
                nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::X_OK,
            )
            .is_ok();
        let argv = build_argv(
            &self.argv,
            &argv0,
            &req.name,
            executable,
            req.content.is_some(),
        );
        Ok((programs, argv))
    }

    fn spawn_now(&mut self, req: SpawnRequest) {
        let now = Instant::now();
        if let Err(reason) = self.try_spawn(now, &req) {
            self.core.handle(
                now,
                Event::SpawnFailed {
                    inc: req.inc,
                    reason,
                },
            );
        }
    }

    /// Starts `req` (locally, or asynchronously through the fork server); `Err` is the reason
    /// it cannot start, for the core's `SpawnFailed`.
    fn try_spawn(&mut self, now: Instant, req: &SpawnRequest) -> Result<(), String> {
        let cwd = self.scanners[req.monitor]
            .vassal_cwd(&self.cwd)
            .to_path_buf();
        let path = self.path_var.as_deref();
        let shim = crate::shim::plan_for(
            &req.name,
            &req.key,
            req.content.is_some(),
            self.exe.as_deref(),
            path,
            &cwd,
        )
        .transpose()
        .map_err(|e| e.to_string())?;
        let creds = crate::tyrant::creds_for(&self.core, req.inc, self.tyrant_initgroups)?;
        let mut setup = self.isolation.setup(creds);
        // A shim vassal runs the shim: uWSGI's programs and argv are not looked for.
        let (programs, argv) = match shim {
            Some(plan) => plan,
            None => self.uwsgi_command(req, path, &cwd)?,
        };
        let (programs, argv) = crate::hooks::wrap_exec_as_vassal(
            &self.hooks.config().exec_as_vassal,
            &req.name,
            programs,
            argv,
        );
        let plan = Plan {
            programs,
            argv,
            env: {
                let mut env = self.env.clone();
                // Broodlord: a zerg learns its number (uWSGI's UWSGI_BROODLORD_NUM).
                if let Some(n) = self.core.vassal(&req.key).and_then(|v| v.zerg) {
                    env.push(("UWSGI_BROODLORD_NUM".into(), n.to_string().into()));
                }
                env
            },
            cwd,
            with_config: req.content.is_some(),
            stdin: self
                .ondemand
                .take_for_spawn(req.vassal, self.poll.registry()),
        };
        if let Some(f) = self
            .fork
            .as_mut()
            .filter(|f| f.handles(&req.name, &req.key))
        {
            if !setup.is_empty() {
                return Err("the fork server cannot apply --emperor-tyrant, --emperor-cap or \
                            --emperor-use-clone: list this vassal in --vassal-fork-base or drop them"
                    .to_string());
            }
            // Asynchronous: answered by `drive_forks` (adopted or failed).
            return f.start(self.poll.registry(), now, req, &plan);
        }
        let placement = self.tree.place(req.inc, &req.name);
        setup.cgroup_procs = placement.as_ref().map(|p| p.procs_fd());
        let started = match self.launcher.launch_isolated(&plan, &setup) {
            Ok(s) => s,
            Err(e) => {
                if let Some(p) = placement {
                    self.tree.discard(p);
                }
                return Err(e.to_string());
            }
        };
        let pid = started.pid;
        self.tree.started(req.inc, pid, placement);
        if let Some(c) = self.tree.cgroup_of(req.inc) {
            self.info.cgroups.insert(req.inc, c.to_string());
        }
        self.attach(now, req.inc, &req.name, started);
        let (uid, gid) = setup
            .creds
            .as_ref()
            .map(|c| (c.uid, c.gid))
            .unwrap_or((self.info.uid, self.info.gid));
        self.hooks.after_start(
            self.poll.registry(),
            req.inc,
            &req.name,
            &plan.cwd,
            pid,
            uid,
            gid,
        );
        Ok(())
    }

    /// Watches the channel of a started process and tells the core (local spawns and fork-server
    /// adoptions alike).
    fn attach(&mut self, now: Instant, inc: Inc, name: &str, started: crate::spawn::Started) {
        let mk = |s: std::os::unix::net::UnixStream| -> io::Result<UnixStream> {
            s.set_nonblocking(true)?;
            Ok(UnixStream::from_std(s))
        };
        let (stream, config) = match (mk(started.channel), started.config.map(mk).transpose()) {
            (Ok(s), Ok(c)) => (s, c),
            (Err(e), _) | (_, Err(e)) => {
                warn!("cannot set up the channel of {name}: {e}");
                let _ = kill(Pid::from_raw(started.pid), Signal::SIGKILL);
                self.core.handle(
                    now,
                    Event::Spawned {
                        inc,
                        pid: started.pid,
                    },
                );
                return;
            }
        };
        let mut ch = Channel {
            stream,
            config,
            pending: Vec::new(),
            config_registered: false,
            open: true,
        };
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut ch.stream, channel_token(inc), Interest::READABLE)
        {
            warn!("cannot watch the channel of {name}: {e}");
        }
        self.channels.insert(inc, ch);
        self.core.handle(
            now,
            Event::Spawned {
                inc,
                pid: started.pid,
            },
        );
    }

    /// Fork-server progress ([`crate::forkserver`]): a readiness event of `ready`'s request, or
    /// the timers of every request; feeds the answers to the core.
    fn drive_forks(&mut self, ready: Option<Inc>) {
        let now = Instant::now();
        let Some(f) = self.fork.as_mut() else {
            return;
        };
        for done in f.drive(self.poll.registry(), ready, now) {
            match done {
                crate::forkserver::Done::Adopted {
                    inc,
                    name,
                    started,
                    reaped,
                    cwd,
                } => {
                    let pid = started.pid;
                    self.tree.adopted(inc, &name, pid);
                    if let Some(c) = self.tree.cgroup_of(inc) {
                        self.info.cgroups.insert(inc, c.to_string());
                    }
                    self.core.mark_adopted(inc);
                    self.attach(now, inc, &name, started);
                    // As after a fork: --exec-as-emperor and the stop hook's ledger.
                    let (uid, gid) =
                        crate::forkserver::owner_of(pid).unwrap_or((self.info.uid, self.info.gid));
                    self.hooks
                        .after_start(self.poll.registry(), inc, &name, &cwd, pid, uid, gid);
                    if let Some(exit) = reaped {
                        self.core.handle(now, Event::Reaped { pid, exit });
                    }
                }
                crate::forkserver::Done::Failed { inc, reason } => {
                    self.core.handle(now, Event::SpawnFailed { inc, reason })
                }
            }
        }
    }

    /// Accepts stats connections, at most [`ACCEPT_BATCH`] per turn (then `accept_pending`
    /// brings the loop back: the listener is edge-triggered). At most [`MAX_STATS_CLIENTS`] are
    /// served at once, a new one evicting the oldest, and none that would leave fewer than
    /// [`FD_RESERVE`] descriptors for spawns.
    fn on_accept(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            let stream = match &self.listener {
                Some(Listener::Unix(l, _)) => l.accept().map(|(s, _)| ClientStream::Unix(s)),
                Some(Listener::Tcp(l)) => l.accept().map(|(s, _)| ClientStream::Tcp(s)),
                None => return,
            };
            let stream = match stream {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE/ENFILE included: the connection stays queued; the next one (or
                    // the next turn) tries again once descriptors are free.
                    debug!("stats accept failed: {e}");
                    return;
                }
            };
            // Descriptors are allocated lowest first, so every one below this is in use.
            let fd = match &stream {
                ClientStream::Unix(s) => s.as_raw_fd(),
                ClientStream::Tcp(s) => s.as_raw_fd(),
            };
            let short = u64::try_from(fd).unwrap_or(u64::MAX) + FD_RESERVE >= self.fd_limit;
            if short {
                if let Some(more) =
                    self.refused_clients
                        .hit(Instant::now(), crate::core::garbage::WARN_INTERVAL, 1)
                {
                    warn!(
                        "stats: fewer than {FD_RESERVE} of {} file descriptors would be left for vassals: dropping the {} stats client (raise RLIMIT_NOFILE, `ulimit -n`){}",
                        self.fd_limit,
                        if self.clients.is_empty() { "new" } else { "oldest" },
                        if more > 0 {
                            format!("; {more} more dropped since the last line")
                        } else {
                            String::new()
                        }
                    );
                }
                if self.clients.is_empty() {
                    continue;
                }
            }
            // Short of descriptors, the new client takes the place of the oldest.
            let cap = if short {
                self.clients.len()
            } else {
                MAX_STATS_CLIENTS
            };
            while self.clients.len() >= cap {
                let Some(old) = self.client_order.pop_front() else {
                    break;
                };
                if let Some(mut c) = self.clients.remove(&old) {
                    debug!("stats clients: dropping the oldest");
                    let _ = self.poll.registry().deregister(c.stream.source());
                }
            }
            let tok = Token(CLIENT_BASE + self.next_client);
            self.next_client = (self.next_client + 1) % CLIENT_SPAN;
            let mut c = Client {
                stream,
                request: Vec::new(),
                out: Vec::new(),
                sent: 0,
                reading: self.stats_http,
                deadline: Instant::now() + CLIENT_TIMEOUT,
            };
            if !c.reading {
                c.out = self.render().into_bytes();
            }
            let interest = if c.reading {
                Interest::READABLE
            } else {
                Interest::WRITABLE
            };
            if self
                .poll
                .registry()
                .register(c.stream.source(), tok, interest)
                .is_ok()
            {
                self.clients.insert(tok, c);
                self.client_order.push_back(tok);
                self.on_client(tok);
            }
        }
        self.accept_pending = true;
    }

    fn render(&self) -> String {
        stats::render(
            &self.core,
            &self.info,
            Clock {
                now: Instant::now(),
                wall: SystemTime::now(),
            },
        )
    }

    fn on_client(&mut self, tok: Token) {
        let Some(mut c) = self.clients.remove(&tok) else {
            return;
        };
        let mut done = false;
        if c.reading {
            let mut buf = [0u8; 1024];
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        c.reading = false;
                        break;
                    }
                    Ok(n) => {
                        c.request.extend_from_slice(&buf[..n]);
                        if c.request.len() >= MAX_REQUEST
                            || c.request.windows(4).any(|w| w == b"\r\n\r\n")
                        {
                            c.reading = false;
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        done = true;
                        break;
                    }
                }
            }
            if !c.reading && !done {
                c.out = stats::http_response(&self.render()).into_bytes();
                let _ = self
                    .poll
                    .registry()
                    .reregister(c.stream.source(), tok, Interest::WRITABLE);
            }
        }
        if !c.reading && !done {
            while c.sent < c.out.len() {
                match c.stream.write(&c.out[c.sent..]) {
                    Ok(0) => {
                        done = true;
                        break;
                    }
                    Ok(n) => c.sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        done = true;
                        break;
                    }
                }
            }
            if c.sent >= c.out.len() {
                done = true;
            }
        }
        if done {
            let _ = self.poll.registry().deregister(c.stream.source());
            self.client_order.retain(|t| *t != tok);
        } else {
            self.clients.insert(tok, c);
        }
    }

    fn expire_clients(&mut self, now: Instant) {
        let expired: Vec<Token> = self
            .clients
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for t in expired {
            if let Some(mut c) = self.clients.remove(&t) {
                debug!("dropping a slow stats client");
                let _ = self.poll.registry().deregister(c.stream.source());
            }
        }
        if self.client_order.len() != self.clients.len() {
            self.client_order.retain(|t| self.clients.contains_key(t));
        }
    }

    fn update_status(&mut self) {
        let n = self.core.len();
        if let Some(notify) = &self.notify {
            if self.notified_count != Some(n) {
                notify.send(&format!("STATUS=The Emperor is governing {n} vassals"));
                self.notified_count = Some(n);
            }
        }
    }

    fn on_demand_events(&mut self, evs: Vec<crate::core::OnDemandEvent>) {
        let now = Instant::now();
        for e in evs {
            self.core.handle(now, Event::OnDemand(e));
        }
    }

    fn cleanup(&mut self) {
        // Every vassal is reaped by now: kill what they left and remove the cgroups.
        self.tree.shutdown();
        self.ondemand.cleanup();
        if let Some(c) = &self.command {
            c.cleanup();
        }
        if let Some(Listener::Unix(_, path)) = &self.listener {
            let _ = std::fs::remove_file(path);
        }
        if let Some(p) = &self.pidfile {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("core", &self.core)
            .field("monitors", &self.info.monitors)
            .field("channels", &self.channels.len())
            .finish_non_exhaustive()
    }
}

fn bind_stats(addr: &str, cwd: &Path) -> Result<Listener, RunError> {
    let is_tcp = addr.contains(':') && !addr.starts_with('/') && !addr.starts_with('.');
    if is_tcp {
        let a = if let Some(port) = addr.strip_prefix(':') {
            format!("0.0.0.0:{port}")
        } else {
            addr.to_string()
        };
        let sa = std::net::ToSocketAddrs::to_socket_addrs(&a)
            .map_err(err(&format!("bad stats address {addr}")))?
            .next()
            .ok_or_else(|| RunError(format!("bad stats address {addr}")))?;
        let l = TcpListener::bind(sa).map_err(err(&format!("cannot bind stats on {addr}")))?;
        Ok(Listener::Tcp(l))
    } else {
        let path = cwd.join(addr);
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path)
            .map_err(err(&format!("cannot bind stats on {}", path.display())))?;
        Ok(Listener::Unix(l, path))
    }
}

fn seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    t ^ (u64::from(std::process::id()) << 32)
}

fn set_procname(name: &str) {
    let mut bytes: Vec<u8> = name.bytes().filter(|b| *b != 0).take(15).collect();
    bytes.push(0);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes from a valid pointer.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, bytes.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
}

/// systemd's notification socket (`NOTIFY_SOCKET`, path or `@abstract`).
#[derive(Debug)]
struct Notifier {
    sock: UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
}

impl Notifier {
    fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let sock = UnixDatagram::unbound().ok()?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let addr = if let Some(abs) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(abs).ok()?
        } else {
            std::os::unix::net::SocketAddr::from_pathname(Path::new(&path)).ok()?
        };
        let _ = sock.set_nonblocking(true);
        Some(Notifier { sock, addr })
    }

    fn send(&self, msg: &str) {
        if let Err(e) = self.sock.send_to_addr(msg.as_bytes(), &self.addr) {
            debug!("sd_notify failed: {e}");
        }
    }
}

pub mod command;
pub mod forkserver;
pub mod hooks;
pub mod ondemand;
pub mod registry;
pub mod source;
