//! The shim's decisions, without I/O: inputs in, actions out, time passed in.
//!
//! The runtime feeds [`Input`]s (program started / exited / stopped, emperor bytes, probe
//! results, notifications, signals, pushed configs) and calls [`Core::on_timeout`] when
//! [`Core::next_deadline`] passes; it performs the [`Action`]s it pulls with
//! [`Core::poll_action`]. The rules live one family per file: readiness and loyalty
//! (`readiness.rs`), heartbeats and health (`heartbeat.rs`), stopping and exit codes
//! (`stop.rs`), reloads and pushed configs (`reload.rs`), SOS (`sos.rs`).

mod heartbeat;
mod readiness;
mod reload;
pub mod settings;
mod sos;
mod stop;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use uwsgi_proto::VassalMsg;

use crate::channel::Event;
use crate::notify::Notification;
pub use settings::{Ready, ReloadMode, Settings};

/// How long to wait for a pushed config before giving up.
pub const CONFIG_WAIT: Duration = Duration::from_secs(5);
/// Delay between readiness probe attempts.
pub const PROBE_RETRY: Duration = Duration::from_millis(200);
/// Interval between health probes when no heartbeat is configured.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// Minimum interval between two SOS bytes.
pub const SOS_INTERVAL: Duration = Duration::from_secs(1);
/// Interval between backlog measurements.
pub const BACKLOG_INTERVAL: Duration = Duration::from_secs(1);
/// Exit code that tells a uWSGI emperor not to respawn.
pub const EXILE_CODE: i32 = 26;

/// What a signal to the shim asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShimSignal {
    /// TERM, INT, QUIT.
    Stop,
    /// HUP.
    Reload,
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The program was started.
    Spawned {
        /// Its pid.
        pid: i32,
    },
    /// The program could not be started.
    SpawnFailed,
    /// The program's main process ended.
    Exited {
        /// Its exit code, or 128 + the signal that killed it.
        code: i32,
    },
    /// The main process was stopped (SIGSTOP / SIGTSTP).
    Stopped,
    /// The main process was continued.
    Continued,
    /// A message (or EOF) from the emperor.
    Emperor(Event),
    /// A config frame arrived (and has been written out).
    ConfigPushed,
    /// A readiness / health probe finished.
    Probe(bool),
    /// A notification from the program.
    Notify(Notification),
    /// A signal to the shim.
    Signal(ShimSignal),
    /// The current listen backlog.
    Backlog(u32),
}

/// Something to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Write a byte to the emperor.
    Send(VassalMsg),
    /// Start the program.
    Spawn,
    /// Send a signal to the program's process group (stopping it).
    SignalGroup(Signal),
    /// Send a signal to the program's main process only (a `signal:NAME` reload: workers that
    /// keep the default action for that signal must not die of it).
    SignalMain(Signal),
    /// SIGKILL the program's group and every other descendant.
    KillAll,
    /// Start a readiness / health probe (answer with [`Input::Probe`]).
    Probe,
    /// Measure the listen backlog (answer with [`Input::Backlog`]).
    MeasureBacklog,
    /// Clean up and exit with this code.
    Exit(i32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterConfig {
    Spawn,
    SignalReload(Signal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterStop {
    Exit(i32),
    Restart,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Init,
    WaitConfig { then: AfterConfig, initial: bool },
    Starting,
    Running,
    Stopping(AfterStop),
    Done,
}

/// The shim's state.
#[derive(Debug)]
pub struct Core {
    s: Settings,
    has_config: bool,
    phase: Phase,
    alive: bool,
    stopped: bool,
    ready_at: Option<Instant>,
    loyal_sent: bool,
    loyal_at: Option<Instant>,
    healthy: bool,
    watchdog_seen: Option<Instant>,
    watchdog_tripped: bool,
    stopping_notified: bool,
    next_heartbeat: Option<Instant>,
    next_probe: Option<Instant>,
    probe_in_flight: bool,
    stop_deadline: Option<Instant>,
    config_deadline: Option<Instant>,
    config_seen: bool,
    last_sos: Option<Instant>,
    next_backlog: Option<Instant>,
    ready_deadline: Option<Instant>,
    actions: VecDeque<Action>,
}

impl Core {
    /// A core deciding with `s`; `has_config` says whether the emperor pushes configs.
    pub fn new(s: Settings, has_config: bool) -> Core {
        Core {
            s,
            has_config,
            phase: Phase::Init,
            alive: false,
            stopped: false,
            ready_at: None,
            loyal_sent: false,
            loyal_at: None,
            healthy: false,
            watchdog_seen: None,
            watchdog_tripped: false,
            stopping_notified: false,
            next_heartbeat: None,
            next_probe: None,
            probe_in_flight: false,
            stop_deadline: None,
            config_deadline: None,
            config_seen: false,
            last_sos: None,
            next_backlog: None,
            ready_deadline: None,
            actions: VecDeque::new(),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.s
    }

    /// New settings (a reload re-read the ini file); applied from the next program start on.
    pub fn update_settings(&mut self, s: Settings) {
        self.s = s;
    }

    /// Begins: waits for the pushed config when there is one, else starts the program.
    pub fn start(&mut self, now: Instant) {
        if self.s.sos_backlog.is_some() {
            self.next_backlog = Some(now + BACKLOG_INTERVAL);
        }
        if self.has_config && !self.config_seen {
            self.wait_config(now, AfterConfig::Spawn, true);
        } else {
            self.spawn();
        }
    }

    /// The next action to perform.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Whether the program counts as ready right now.
    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Running
    }

    fn push(&mut self, a: Action) {
        self.actions.push_back(a);
    }

    fn send(&mut self, m: VassalMsg) {
        self.push(Action::Send(m));
    }

    fn spawn(&mut self) {
        self.phase = Phase::Starting;
        self.config_deadline = None;
        self.push(Action::Spawn);
    }

    /// Feeds one input.
    pub fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::Spawned { .. } => self.on_spawned(now),
            Input::SpawnFailed => {
                self.alive = false;
                self.exit(127);
            }
            Input::Exited { code } => self.on_exited(now, code),
            Input::Stopped => self.stopped = true,
            Input::Continued => self.stopped = false,
            Input::Emperor(Event::Stop | Event::GracefulStop) => self.begin_stop(now, 0),
            Input::Emperor(Event::Eof) => self.begin_stop(now, 1),
            Input::Emperor(Event::Reload) => self.reload(now),
            Input::Emperor(Event::Unknown(_)) => {}
            Input::Signal(ShimSignal::Stop) => self.begin_stop(now, 0),
            Input::Signal(ShimSignal::Reload) => self.reload(now),
            Input::ConfigPushed => self.on_config_pushed(now),
            Input::Probe(ok) => self.on_probe(now, ok),
            Input::Notify(n) => self.notify(now, n),
            Input::Backlog(n) => self.on_backlog(now, n),
        }
    }

    /// Handles every deadline that has passed.
    pub fn on_timeout(&mut self, now: Instant) {
        self.loyal_timeout(now);
        self.heartbeat_timeout(now);
        self.probe_timeout(now);
        self.stop_timeout(now);
        self.config_timeout(now);
        self.ready_timeout(now);
        self.backlog_timeout(now);
    }

    /// When [`Core::on_timeout`] should be called next.
    pub fn next_deadline(&self) -> Option<Instant> {
        let probe = if self.probe_in_flight {
            None
        } else {
            self.next_probe
        };
        [
            self.loyal_at,
            self.next_heartbeat.filter(|_| self.s.heartbeat.is_some()),
            probe,
            self.stop_deadline,
            self.config_deadline,
            self.next_backlog,
            self.ready_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}
