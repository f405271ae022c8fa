//! The event loop: one thread, one `mio::Poll` over the emperor channel, the config channel,
//! a signalfd (SIGCHLD, TERM, INT, QUIT, HUP), the notify socket, the probe connection and the
//! backlog meter's netlink socket. It performs the core's actions and turns what it sees into
//! core inputs. Nothing in it waits: every descriptor is non-blocking and driven by readiness.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tracing::{debug, error, info, warn};
use vassal_shim::{ConfigChannel, Vassal};

use crate::backlog::{Meter, Progress, Watch};
use vassal_shim::core::{Action, Core};

use crate::options::{Cli, Settings};
use crate::probe::Probe;
use crate::rundir;

mod program;
mod sources;
use crate::sentinel::{self, Sentinel};
use crate::spawn::{self, Program};

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

/// What the shim could not set up before starting the program.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The poll or the signalfd.
    #[error("cannot create the event loop: {0}")]
    Loop(#[source] io::Error),
    /// The private directory.
    #[error(
        "cannot create a private directory in $XDG_RUNTIME_DIR or the temporary directory: {0} \
         (check that it exists and is writable)"
    )]
    RunDir(#[source] io::Error),
    /// The notification socket.
    #[error("cannot bind the notification socket {}: {source}", path.display())]
    Notify {
        /// Where it was to be bound.
        path: PathBuf,
        /// Why not.
        source: io::Error,
    },
    /// The emperor's channels.
    #[error("cannot watch the emperor's channel: {0}")]
    Channel(#[source] io::Error),
}

impl Source {
    /// Where a bad setting is to be fixed.
    pub fn origin(&self) -> String {
        match self {
            Source::Cli => "the command line".to_string(),
            Source::File { path, section } => {
                format!("[{section}] of {} or the command line", path.display())
            }
            Source::Pushed { section } => {
                format!("[{section}] of the pushed config or the command line")
            }
        }
    }
}

/// The notification socket, non-blocking and registered with the poll.
fn bind_notify(poll: &Poll, path: &std::path::Path) -> io::Result<UnixDatagram> {
    let notify = UnixDatagram::bind(path)?;
    notify.set_nonblocking(true)?;
    poll.registry().register(
        &mut SourceFd(&notify.as_raw_fd()),
        NOTIFY,
        Interest::READABLE,
    )?;
    Ok(notify)
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
    ) -> Result<Runtime, SetupError> {
        let mut vassal = vassal;
        let poll = Poll::new().map_err(SetupError::Loop)?;
        let sigfd = SignalFd::with_flags(
            &handled_signals(),
            SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
        )
        .map_err(|e| SetupError::Loop(e.into()))?;
        poll.registry()
            .register(
                &mut SourceFd(&sigfd.as_raw_fd()),
                SIGNALS,
                Interest::READABLE,
            )
            .map_err(SetupError::Loop)?;

        let rundir = rundir::create().map_err(SetupError::RunDir)?;
        let notify_path = rundir.path().join("notify.sock");
        let notify = bind_notify(&poll, &notify_path).map_err(|source| SetupError::Notify {
            path: notify_path.clone(),
            source,
        })?;

        let mut config = None;
        if let Some(v) = vassal.as_mut() {
            v.set_cloexec(true).map_err(SetupError::Channel)?;
            poll.registry()
                .register(&mut SourceFd(&v.as_raw_fd()), EMPEROR, Interest::READABLE)
                .map_err(SetupError::Channel)?;
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
                .register(&mut SourceFd(&c.as_raw_fd()), CONFIG, Interest::READABLE)
                .map_err(SetupError::Channel)?;
        }

        let listener = take_on_demand_listener();
        let listener_watch = listener.and_then(Watch::held);
        let meter = Meter::new();

        reparent_orphans_here(settings.fork_base);
        let tag = sentinel::tag_of(rundir.path());
        let sentinel = start_sentinel(&rundir);

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

/// The on-demand listener when fd 0 is a listening socket (made close-on-exec: the program
/// gets a dup as fd 3).
fn take_on_demand_listener() -> Option<RawFd> {
    if !spawn::is_listening_socket(0) {
        return None;
    }
    info!("fd 0 is a listening socket: handing it to the program as LISTEN_FDS=1 (fd 3)");
    // SAFETY: F_SETFD on fd 0, which we own as our stdin; the program gets a dup.
    unsafe {
        libc::fcntl(0, libc::F_SETFD, libc::FD_CLOEXEC);
    }
    Some(0)
}

/// Makes the shim a subreaper, except for a fork-server base: the vassals its fork server
/// double-forks for the emperor must be re-parented to the emperor (the nearest subreaper
/// above us), not to the shim.
fn reparent_orphans_here(fork_base: bool) {
    if fork_base {
        info!(
            "fork-base: not a subreaper, so the vassals the program forks are re-parented to the emperor"
        );
    } else if let Err(e) = spawn::become_subreaper() {
        warn!("cannot become a child subreaper ({e}); orphans of the program may escape");
    }
}

fn start_sentinel(rundir: &tempfile::TempDir) -> Option<Sentinel> {
    match Sentinel::start(rundir.path()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!("cannot start the sentinel ({e}); if the shim is SIGKILLed, the program's children may survive it");
            None
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
