//! The event loop: one thread, one `mio::Poll` over the emperor channel, the config channel,
//! a signalfd (SIGCHLD, TERM, INT, QUIT, HUP), the notify socket, the probe connection and the
//! backlog meter's netlink socket. It performs the core's actions and turns what it sees into
//! core inputs. Nothing in it waits: every descriptor is non-blocking and driven by readiness.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tracing::{debug, error, info, warn};
use vassal_shim::ini::Ini;
use vassal_shim::notify::{self, Notification};
use vassal_shim::{ConfigChannel, Event, Vassal, VassalMsg};

use crate::backlog::{Meter, Progress, Watch};
use vassal_shim::core::{Action, Core, Input, ShimSignal};

use crate::options::{Cli, Settings, CONFIG_ENV};
use crate::probe::{self, Probe};
use crate::sentinel::{self, Sentinel};
use crate::spawn::{self, Program, SpawnSpec};

const EMPEROR: Token = Token(0);
const CONFIG: Token = Token(1);
const SIGNALS: Token = Token(2);
const NOTIFY: Token = Token(3);
const PROBE: Token = Token(4);
const DIAG: Token = Token(5);

/// The largest notification datagram read whole (the rest of a longer one is dropped).
const NOTIFY_BUF: usize = 16 * 1024;

/// Where the settings come from, so a reload can re-read them.
#[derive(Debug, Clone)]
pub enum Source {
    /// Command line only.
    Cli,
    /// An ini file (and the section to read).
    File { path: PathBuf, section: String },
    /// The pushed config (`--ini emperor://NAME`).
    Pushed { section: String },
}

/// The signals the shim handles through its signalfd.
pub fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGHUP,
    ] {
        set.add(s);
    }
    set
}

#[derive(Debug)]
pub struct Runtime {
    poll: Poll,
    core: Core,
    vassal: Option<Vassal>,
    config: Option<ConfigChannel>,
    sigfd: SignalFd,
    notify: UnixDatagram,
    notify_path: PathBuf,
    /// Receive buffer for notification datagrams, made once.
    notify_buf: Box<[u8]>,
    probe: Option<Probe>,
    /// The HTTP probe's request, built at every program start (settings may have changed).
    probe_request: Vec<u8>,
    program: Option<Program>,
    pgid: Option<i32>,
    /// The command line alone, without the ini section merged in.
    cli: Cli,
    source: Source,
    listener: Option<RawFd>,
    /// What the backlog of the on-demand listener is measured with (found once).
    listener_watch: Option<Watch>,
    /// The `sos-backlog` meter (its netlink socket is registered as [`DIAG`]).
    meter: Meter,
    rundir: Option<tempfile::TempDir>,
    config_path: Option<PathBuf>,
    generation: u64,
    backlog_warned: bool,
    tag: String,
    sentinel: Option<Sentinel>,
}

impl Runtime {
    /// Sets everything up (signals must already be blocked by the caller).
    pub fn new(
        settings: Settings,
        cli: Cli,
        source: Source,
        vassal: Option<Vassal>,
    ) -> io::Result<Runtime> {
        let mut vassal = vassal;
        let poll = Poll::new()?;
        let sigfd = SignalFd::with_flags(
            &handled_signals(),
            SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        poll.registry().register(
            &mut SourceFd(&sigfd.as_raw_fd()),
            SIGNALS,
            Interest::READABLE,
        )?;

        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        if claim_sweep(&base, std::time::SystemTime::now(), SWEEP_EVERY) {
            remove_stale_rundirs(&base);
        }
        let rundir = tempfile::Builder::new()
            .prefix(&format!("{RUNDIR_PREFIX}{}.", std::process::id()))
            .tempdir_in(&base)?;
        let notify_path = rundir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path)?;
        notify.set_nonblocking(true)?;
        poll.registry().register(
            &mut SourceFd(&notify.as_raw_fd()),
            NOTIFY,
            Interest::READABLE,
        )?;

        let mut config = None;
        if let Some(v) = vassal.as_mut() {
            v.set_cloexec(true)?;
            poll.registry()
                .register(&mut SourceFd(&v.as_raw_fd()), EMPEROR, Interest::READABLE)?;
            config = v.take_config();
        }
        let config_path = if config.is_some() {
            Some(
                settings
                    .config_file
                    .clone()
                    .unwrap_or_else(|| rundir.path().join("config")),
            )
        } else {
            None
        };
        if let Some(c) = &config {
            poll.registry()
                .register(&mut SourceFd(&c.as_raw_fd()), CONFIG, Interest::READABLE)?;
        }

        let listener = if spawn::is_listening_socket(0) {
            info!("fd 0 is a listening socket: handing it to the program as LISTEN_FDS=1 (fd 3)");
            // SAFETY: F_SETFD on fd 0, which we own as our stdin; the program gets a dup.
            unsafe {
                libc::fcntl(0, libc::F_SETFD, libc::FD_CLOEXEC);
            }
            Some(0)
        } else {
            None
        };

        let listener_watch = listener.and_then(Watch::held);
        let meter = Meter::new();

        if settings.fork_base {
            // The program's fork server double-forks vassals for the emperor: they must be
            // re-parented to the emperor (the nearest subreaper above us), not to the shim.
            info!(
                "fork-base: not a subreaper, so the vassals the program forks are re-parented to the emperor"
            );
        } else if let Err(e) = spawn::become_subreaper() {
            warn!("cannot become a child subreaper ({e}); orphans of the program may escape");
        }

        let tag = sentinel::tag_of(rundir.path());
        let sentinel = match Sentinel::start(rundir.path()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!("cannot start the sentinel ({e}); if the shim is SIGKILLed, the program's children may survive it");
                None
            }
        };

        let core = Core::new(settings, config.is_some());
        Ok(Runtime {
            poll,
            core,
            vassal,
            config,
            sigfd,
            notify,
            notify_path,
            notify_buf: vec![0u8; NOTIFY_BUF].into_boxed_slice(),
            probe: None,
            probe_request: Vec::new(),
            program: None,
            pgid: None,
            cli,
            source,
            listener,
            listener_watch,
            meter,
            rundir: Some(rundir),
            config_path,
            generation: 0,
            backlog_warned: false,
            tag,
            sentinel,
        })
    }

    /// Runs until the shim should exit; returns the exit code.
    pub fn run(mut self) -> i32 {
        let mut events = Events::with_capacity(16);
        // A config that arrived before the loop started (it was peeked at) is read at once.
        if self.config.is_some() {
            self.read_config(Instant::now());
        }
        self.core.start(Instant::now());
        loop {
            while let Some(a) = self.core.poll_action() {
                if let Some(code) = self.perform(a) {
                    return self.finish(code);
                }
            }
            let now = Instant::now();
            let deadline = [
                self.core.next_deadline(),
                self.probe.as_ref().map(|p| p.deadline),
            ]
            .into_iter()
            .flatten()
            .min();
            let timeout = deadline.map(|d| d.saturating_duration_since(now));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                error!("poll failed: {e}");
                return self.finish(1);
            }
            for ev in events.iter() {
                let now = Instant::now();
                match ev.token() {
                    EMPEROR => self.read_emperor(now),
                    CONFIG => self.read_config(now),
                    SIGNALS => self.read_signals(now),
                    NOTIFY => self.read_notify(now),
                    PROBE => self.drive_probe(now),
                    DIAG => {
                        if let Some(n) = self.meter.on_readable() {
                            self.backlog_measured(now, n);
                        }
                    }
                    _ => {}
                }
            }
            let now = Instant::now();
            if self.probe.as_ref().is_some_and(|p| p.deadline <= now) {
                debug!("probe timed out");
                self.finish_probe(now, false);
            }
            self.core.on_timeout(now);
        }
    }

    fn perform(&mut self, a: Action) -> Option<i32> {
        let now = Instant::now();
        match a {
            Action::Send(m) => self.send(now, m),
            Action::Spawn => self.spawn(now),
            Action::SignalGroup(sig) => {
                if let Some(g) = self.pgid {
                    info!("sending {sig} to the program's process group {g}");
                    spawn::signal_group(g, sig);
                }
            }
            Action::SignalMain(sig) => {
                if let Some(p) = self.program {
                    info!("sending {sig} to the program's main process {}", p.pid);
                    spawn::signal_process(p.pid, sig);
                }
            }
            Action::KillAll => spawn::kill_all(self.pgid, self.sentinel_pid()),
            Action::Probe => self.start_probe(now),
            Action::MeasureBacklog => {
                if let Progress::Done(n) = self.meter.start() {
                    self.backlog_measured(now, n);
                }
            }
            Action::Exit(code) => return Some(code),
        }
        None
    }

    fn send(&mut self, now: Instant, m: VassalMsg) {
        let pid = self.program.map(|p| p.pid).unwrap_or(0);
        match m {
            VassalMsg::Ready => info!("program {pid} is ready: sending ready (1)"),
            VassalMsg::Accepting => info!("sending accepting (5)"),
            VassalMsg::Loyal => info!("program {pid} stayed up: sending loyal (17)"),
            VassalMsg::Heartbeat => debug!("sending heartbeat (26)"),
            other => info!("sending {} ({})", other.name(), other.to_byte()),
        }
        let Some(v) = &self.vassal else {
            return;
        };
        match v.try_send(m) {
            Ok(()) => {}
            // The loop never waits for the emperor: a full channel means it stopped reading.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => warn!(
                "the emperor is not reading its channel (it is full): {} ({}) dropped",
                m.name(),
                m.to_byte()
            ),
            Err(e) => {
                warn!("lost the emperor while writing to it: {e}");
                self.drop_emperor();
                self.core.handle(now, Input::Emperor(Event::Eof));
            }
        }
    }

    fn drop_emperor(&mut self) {
        if let Some(v) = self.vassal.take() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&v.as_raw_fd()));
        }
    }

    fn reload_settings(&mut self) {
        let text = match &self.source {
            Source::Cli => return,
            Source::File { path, .. } => match crate::read_ini(path) {
                Ok(t) => String::from_utf8_lossy(&t).into_owned(),
                Err(e) => {
                    warn!(
                        "cannot re-read {}: {e}; keeping the previous settings",
                        path.display()
                    );
                    return;
                }
            },
            Source::Pushed { .. } => match self.config.as_ref().and_then(|c| c.latest()) {
                Some(t) => String::from_utf8_lossy(t).into_owned(),
                None => return,
            },
        };
        let section = match &self.source {
            Source::File { section, .. } | Source::Pushed { section } => section.clone(),
            Source::Cli => return,
        };
        let Some(sec) = Ini::parse(&text).section(&section) else {
            warn!("the [{section}] section disappeared; keeping the previous settings");
            return;
        };
        let mut cli = self.cli.clone();
        cli.merge_section(&sec);
        match cli.settings() {
            Ok(s) => self.core.update_settings(s),
            Err(e) => warn!("new settings rejected ({e}); keeping the previous ones"),
        }
    }

    fn spawn(&mut self, now: Instant) {
        if self.generation > 0 {
            self.reload_settings();
        }
        self.generation += 1;
        probe::http_request(&self.core.settings().ready, &mut self.probe_request);
        // The program binds its sockets anew: forget what the meter found about the old ones.
        if self.core.settings().sos_backlog.is_some() {
            let watch = self
                .listener_watch
                .clone()
                .or_else(|| Watch::of_ready(&self.core.settings().ready));
            if let Some(fd) = self.meter.set_watch(watch) {
                if let Err(e) =
                    self.poll
                        .registry()
                        .register(&mut SourceFd(&fd), DIAG, Interest::READABLE)
                {
                    warn!("sos-backlog: cannot watch the netlink socket ({e}); backlogs of unix and tcp: listeners will not be measured");
                }
            }
        }
        // Notifications still queued from an earlier generation mean nothing any more.
        let mut junk = [0u8; 512];
        while self.notify.recv(&mut junk).is_ok() {}

        let mut extra: Vec<(OsString, OsString)> = Vec::new();
        extra.push(("NOTIFY_SOCKET".into(), self.notify_path.clone().into()));
        if let Some(w) = self.core.settings().watchdog {
            extra.push(("WATCHDOG_USEC".into(), w.as_micros().to_string().into()));
        }
        if let Some(p) = &self.config_path {
            extra.push((CONFIG_ENV.into(), p.clone().into()));
        }
        if self.listener.is_some() {
            extra.push(("LISTEN_FDS".into(), "1".into()));
            extra.push(("LISTEN_FDNAMES".into(), "emperor".into()));
        }
        if !self.core.settings().fork_base {
            // A fork base's adopted vassals inherit its environment: with the tag the sentinel
            // would kill them, although they belong to the emperor.
            extra.push((sentinel::ENV_INSTANCE.into(), self.tag.clone().into()));
        }
        extra.push((
            "VASSAL_SHIM_GENERATION".into(),
            self.generation.to_string().into(),
        ));
        for (k, v) in &self.core.settings().env {
            extra.push((k.into(), v.into()));
        }
        let spec = SpawnSpec {
            argv: self.core.settings().exec.clone(),
            chdir: self.core.settings().chdir.clone(),
            env: spawn::build_env(&extra),
            listener: self.listener,
        };
        match spawn::spawn(&spec) {
            Ok(p) => {
                info!(
                    "started program {} (generation {}): {:?}",
                    p.pid, self.generation, spec.argv
                );
                self.program = Some(p);
                self.pgid = Some(p.pid);
                if let Some(s) = self.sentinel.as_mut() {
                    s.watch(p.pid);
                }
                self.core.handle(now, Input::Spawned { pid: p.pid });
            }
            Err(e) => {
                error!("cannot start {:?}: {e}", spec.argv);
                self.core.handle(now, Input::SpawnFailed);
            }
        }
    }

    fn read_emperor(&mut self, now: Instant) {
        loop {
            // One event at a time (drained until it would block), nothing collected.
            let e = match self.vassal.as_mut().map(Vassal::try_recv) {
                None | Some(Ok(None)) => return,
                Some(Ok(Some(e))) => e,
                Some(Err(err)) => {
                    warn!("emperor channel error: {err}");
                    Event::Eof
                }
            };
            match e {
                Event::Stop => info!("emperor says stop (0)"),
                Event::GracefulStop => info!("emperor says graceful stop (2)"),
                Event::Reload => info!("emperor says reload (1)"),
                Event::Eof => {
                    info!("lost connection with the emperor (EOF): stopping");
                    self.drop_emperor();
                }
                Event::Unknown(b) => info!("ignoring unknown byte {b} from the emperor"),
            }
            self.core.handle(now, Input::Emperor(e));
            if e == Event::Eof {
                break;
            }
        }
    }

    fn read_config(&mut self, now: Instant) {
        let Some(c) = self.config.as_mut() else {
            return;
        };
        match c.poll_newest() {
            Ok(Some(text)) => {
                let n = c.received();
                if let Some(path) = &self.config_path {
                    match write_atomic(path, &text) {
                        Ok(()) => info!(
                            "config push #{n} ({} bytes) written to {}",
                            text.len(),
                            path.display()
                        ),
                        Err(e) => {
                            error!("cannot write the pushed config to {}: {e}", path.display())
                        }
                    }
                }
                self.core.handle(now, Input::ConfigPushed);
            }
            Ok(None) => {}
            Err(e) => {
                error!("bad data on the config channel ({e}); ignoring it from now on");
                self.drop_config();
                return;
            }
        }
        if self.config.as_ref().is_some_and(|c| c.is_eof()) {
            debug!("config channel closed by the emperor");
            self.drop_config();
        }
    }

    fn drop_config(&mut self) {
        if let Some(c) = &self.config {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&c.as_raw_fd()));
        }
        // Keep the channel (and its latest config) for re-reading settings; just stop polling.
    }

    fn read_signals(&mut self, now: Instant) {
        loop {
            match self.sigfd.read_signal() {
                Ok(Some(info)) => {
                    let signo = info.ssi_signo as i32;
                    match Signal::try_from(signo) {
                        Ok(Signal::SIGCHLD) => self.reap(now),
                        Ok(Signal::SIGHUP) => {
                            info!("got SIGHUP: reloading");
                            self.core.handle(now, Input::Signal(ShimSignal::Reload));
                        }
                        Ok(s) => {
                            info!("got {s}: stopping");
                            self.core.handle(now, Input::Signal(ShimSignal::Stop));
                        }
                        Err(_) => {}
                    }
                }
                Ok(None) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    warn!("signalfd read failed: {e}");
                    break;
                }
            }
        }
        // SIGCHLD coalesces; reap in any case so no exit is missed.
        self.reap(now);
    }

    fn reap(&mut self, now: Instant) {
        let flags = WaitPidFlag::WNOHANG | WaitPidFlag::WUNTRACED | WaitPidFlag::WCONTINUED;
        loop {
            let st = match waitpid(Pid::from_raw(-1), Some(flags)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(st) => st,
            };
            let main = self.program.map(|p| p.pid);
            match st {
                WaitStatus::Exited(pid, code) if Some(pid.as_raw()) == main => {
                    info!("program {pid} exited with code {code}");
                    self.program_gone(now, code);
                }
                WaitStatus::Signaled(pid, sig, _) if Some(pid.as_raw()) == main => {
                    info!("program {pid} was killed by {sig}");
                    self.program_gone(now, 128 + sig as i32);
                }
                WaitStatus::Stopped(pid, sig) if Some(pid.as_raw()) == main => {
                    warn!("program {pid} was stopped by {sig}: no heartbeats until it continues");
                    self.core.handle(now, Input::Stopped);
                }
                WaitStatus::Continued(pid) if Some(pid.as_raw()) == main => {
                    info!("program {pid} continued");
                    self.core.handle(now, Input::Continued);
                }
                other if other.pid().map(Pid::as_raw) == self.sentinel_pid() => {
                    warn!("the sentinel ended unexpectedly: {other:?}");
                    self.sentinel = None;
                }
                other => debug!("reaped {other:?}"),
            }
        }
    }

    fn program_gone(&mut self, now: Instant, code: i32) {
        self.program = None;
        if let Some(p) = self.probe.take() {
            p.close(self.poll.registry());
        }
        self.core.handle(now, Input::Exited { code });
    }

    fn read_notify(&mut self, now: Instant) {
        loop {
            match self.notify.recv(&mut self.notify_buf) {
                Ok(n) => {
                    for item in notify::items(&self.notify_buf[..n]) {
                        match &item {
                            Notification::Status(s) => info!("program status: {s}"),
                            Notification::Watchdog => debug!("program: WATCHDOG=1"),
                            Notification::Other(o) => debug!("program sent {o:?} (ignored)"),
                            other => info!("program notification: {other:?}"),
                        }
                        self.core.handle(now, Input::Notify(item));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!("notify socket: {e}");
                    break;
                }
            }
        }
    }

    fn start_probe(&mut self, now: Instant) {
        if let Some(p) = self.probe.take() {
            p.close(self.poll.registry());
        }
        let deadline = now + self.core.settings().probe_timeout;
        match Probe::start(
            &self.core.settings().ready,
            self.poll.registry(),
            PROBE,
            deadline,
        ) {
            Ok(p) => self.probe = Some(p),
            Err(e) => {
                debug!(
                    "probe of {:?} failed at once: {e}",
                    self.core.settings().ready
                );
                self.core.handle(now, Input::Probe(false));
            }
        }
    }

    fn drive_probe(&mut self, now: Instant) {
        let Some(p) = self.probe.as_mut() else {
            return;
        };
        if let Some(ok) = p.on_event(&self.probe_request) {
            self.finish_probe(now, ok);
        }
    }

    fn finish_probe(&mut self, now: Instant, ok: bool) {
        if let Some(p) = self.probe.take() {
            p.close(self.poll.registry());
        }
        let was_ready = self.core.is_ready();
        if was_ready && !ok {
            warn!("health check of {:?} failed", self.core.settings().ready);
        }
        self.core.handle(now, Input::Probe(ok));
    }

    fn backlog_measured(&mut self, now: Instant, n: Option<u32>) {
        match n {
            Some(n) => self.core.handle(now, Input::Backlog(n)),
            None if !self.backlog_warned => {
                self.backlog_warned = true;
                match self.meter.watch() {
                    None => warn!("sos-backlog: no listener to measure (needs an on-demand socket or ready = tcp:, unix: or http://)"),
                    Some(w) => warn!("sos-backlog: cannot measure the backlog of {w:?} (not listening yet?); trying again every second"),
                }
            }
            None => {}
        }
    }

    fn sentinel_pid(&self) -> Option<i32> {
        self.sentinel.as_ref().map(Sentinel::pid)
    }

    fn finish(mut self, code: i32) -> i32 {
        spawn::kill_and_reap_everything(self.pgid, self.sentinel_pid());
        if let Some(s) = self.sentinel.take() {
            s.clear();
        }
        spawn::reap_exited();
        if let Some(d) = self.rundir.take() {
            let _ = d.close();
        }
        info!("exiting with code {code}");
        code
    }
}

/// Prefix of the shim's private directories: `vassal-shim.<pid>.<random>`.
const RUNDIR_PREFIX: &str = "vassal-shim.";

/// How often, at most, a starting shim sweeps the base directory for the private directories
/// of dead shims (per user and base directory). The sentinel already removes the directory of
/// a `SIGKILL`ed shim; the sweep only catches what is left when both were killed. Sweeping on
/// every start would cost each shim a `stat` per live shim, O(N²) for N shims started at once.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The directory whose mtime records the last sweep of `base` by this user: a directory, since
/// `mkdir` and the no-follow `utimensat` below never follow a symlink someone planted there.
fn sweep_marker(base: &std::path::Path) -> PathBuf {
    base.join(format!("vassal-shim-sweep.{}", nix::unistd::getuid()))
}

/// Whether this shim sweeps `base` now: yes when the marker is missing (it is created), older
/// than `every` or in the future (it is set to now); no when another shim swept less than
/// `every` ago. A marker that is not a directory of ours is ignored: every start sweeps.
fn claim_sweep(
    base: &std::path::Path,
    now: std::time::SystemTime,
    every: std::time::Duration,
) -> bool {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let marker = sweep_marker(base);
    match std::fs::symlink_metadata(&marker) {
        Ok(m) if m.is_dir() && m.uid() == nix::unistd::getuid().as_raw() => {
            let recent = m
                .modified()
                .ok()
                .is_some_and(|t| match now.duration_since(t) {
                    Ok(age) => age < every,
                    // Slightly ahead of `now` (the file system stamps with a coarser clock, a
                    // small clock step) is recent; far ahead (the clock was set back) must not
                    // stop sweeps for good.
                    Err(ahead) => ahead.duration() < every,
                });
            if recent {
                return false;
            }
            let _ = nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &marker,
                &nix::sys::time::TimeSpec::UTIME_NOW,
                &nix::sys::time::TimeSpec::UTIME_NOW,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            );
            true
        }
        Ok(_) => true,
        Err(_) => {
            let _ = std::fs::DirBuilder::new().mode(0o700).create(&marker);
            true
        }
    }
}

/// Removes the private directories of shims that are gone (killed with SIGKILL together with
/// their sentinel, they cannot clean up after themselves).
fn remove_stale_rundirs(base: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(RUNDIR_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        // Any live process with that pid counts (the shim may run under another name); a
        // reused pid only delays the cleanup.
        let owner_alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !owner_alive && e.file_type().is_ok_and(|t| t.is_dir()) {
            debug!("removing {} left by a dead shim", e.path().display());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Writes `data` to `path` through a temporary file and a rename, so readers never see a
/// half-written config.
pub fn write_atomic(path: &std::path::Path, data: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

/// Blocks the handled signals (so the signalfd sees them) and ignores SIGPIPE.
pub fn setup_signals() -> io::Result<()> {
    handled_signals().thread_block().map_err(io::Error::from)?;
    // SAFETY: setting SIGPIPE to SIG_IGN installs no handler code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn one_sweep_per_interval() {
        let base = tempfile::tempdir().unwrap();
        let t = SystemTime::now();
        assert!(claim_sweep(base.path(), t, MIN), "no marker yet: sweep");
        assert!(
            sweep_marker(base.path()).is_dir(),
            "the first sweep leaves a marker"
        );
        assert!(!claim_sweep(base.path(), t, MIN), "swept just now");
        // `t` was read before the marker was stamped: the marker may be a little ahead of it.
        assert!(
            !claim_sweep(base.path(), t - Duration::from_millis(20), MIN),
            "a marker slightly ahead of now is recent"
        );
        assert!(
            !claim_sweep(base.path(), t + MIN / 2, MIN),
            "within the interval"
        );
        assert!(claim_sweep(base.path(), t + MIN * 2, MIN), "interval over");
        // The claim set the marker to now (the real clock), so the next call is recent again.
        assert!(!claim_sweep(base.path(), SystemTime::now(), MIN));
        // A marker from the future (clock set back) does not stop sweeps for good.
        assert!(claim_sweep(base.path(), t - MIN * 10, MIN));
    }

    #[test]
    fn a_marker_that_is_not_our_directory_means_sweep_every_time() {
        let base = tempfile::tempdir().unwrap();
        let target = base.path().join("target");
        std::fs::create_dir(&target).unwrap();
        std::os::unix::fs::symlink(&target, sweep_marker(base.path())).unwrap();
        let before = std::fs::metadata(&target).unwrap().modified().unwrap();
        let t = SystemTime::now();
        assert!(claim_sweep(base.path(), t, MIN));
        assert!(claim_sweep(base.path(), t, MIN));
        let after = std::fs::metadata(&target).unwrap().modified().unwrap();
        assert_eq!(before, after, "the symlink's target is never touched");
        std::fs::remove_file(sweep_marker(base.path())).unwrap();
        std::fs::write(sweep_marker(base.path()), "").unwrap();
        assert!(claim_sweep(base.path(), t, MIN));
        assert!(claim_sweep(base.path(), t, MIN));
    }

    #[test]
    fn sweep_removes_only_directories_of_dead_shims() {
        let base = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let gone = base.path().join(format!("{RUNDIR_PREFIX}{dead}.abc"));
        let live = base
            .path()
            .join(format!("{RUNDIR_PREFIX}{}.abc", std::process::id()));
        let other = base.path().join("unrelated.1");
        for d in [&gone, &live, &other] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("notify.sock"), "").unwrap();
        }
        std::fs::create_dir(sweep_marker(base.path())).unwrap();
        remove_stale_rundirs(base.path());
        assert!(!gone.exists(), "the dead shim's directory is removed");
        assert!(live.exists() && other.exists());
        assert!(
            sweep_marker(base.path()).is_dir(),
            "the marker is not a shim's directory"
        );
    }
}
