//! The shim's decisions, without I/O: inputs in, actions out, time passed in.
//!
//! The runtime feeds [`Input`]s (program started / exited / stopped, emperor bytes, probe
//! results, notifications, signals, pushed configs) and calls [`Core::on_timeout`] when
//! [`Core::next_deadline`] passes; it performs the [`Action`]s it pulls with
//! [`Core::poll_action`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use vassal_shim::notify::Notification;
use vassal_shim::{Event, VassalMsg};

use crate::options::{ReloadMode, Settings};

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

/// How readiness is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyKind {
    Immediate,
    Probe,
    Notify,
}

/// The part of the settings the core needs.
#[derive(Debug, Clone)]
pub struct CoreSettings {
    pub ready: ReadyKind,
    pub heartbeat: Option<Duration>,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub reload: ReloadMode,
    pub exile_codes: Vec<i32>,
    pub loyal_after: Duration,
    pub ready_timeout: Option<Duration>,
    pub watchdog: Option<Duration>,
    pub sos_backlog: Option<u32>,
    pub has_config: bool,
}

impl CoreSettings {
    pub fn from_settings(s: &Settings, has_config: bool) -> CoreSettings {
        CoreSettings {
            ready: match s.ready {
                _ if s.ready.is_probe() => ReadyKind::Probe,
                crate::options::Ready::Notify => ReadyKind::Notify,
                _ => ReadyKind::Immediate,
            },
            heartbeat: s.heartbeat,
            stop_signal: s.stop_signal,
            stop_timeout: s.stop_timeout,
            reload: s.reload,
            exile_codes: s.exile_codes.clone(),
            loyal_after: s.loyal_after,
            ready_timeout: s.ready_timeout,
            watchdog: s.watchdog,
            sos_backlog: s.sos_backlog,
            has_config,
        }
    }
}

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
    Spawned { pid: i32 },
    /// The program could not be started.
    SpawnFailed,
    /// The program's main process ended; `code` is its exit code or 128 + signal.
    Exited { code: i32 },
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
    s: CoreSettings,
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
    pub fn new(s: CoreSettings) -> Core {
        Core {
            s,
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

    /// New settings (a reload re-read the ini file); applied from the next program start on.
    pub fn update_settings(&mut self, s: CoreSettings) {
        self.s = s;
    }

    /// Begins: waits for the pushed config when there is one, else starts the program.
    pub fn start(&mut self, now: Instant) {
        if self.s.sos_backlog.is_some() {
            self.next_backlog = Some(now + BACKLOG_INTERVAL);
        }
        if self.s.has_config && !self.config_seen {
            self.phase = Phase::WaitConfig {
                then: AfterConfig::Spawn,
                initial: true,
            };
            self.config_deadline = Some(now + CONFIG_WAIT);
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

    fn exit(&mut self, code: i32) {
        self.phase = Phase::Done;
        self.push(Action::KillAll);
        self.push(Action::Exit(code));
    }

    fn reset_generation(&mut self) {
        self.ready_at = None;
        self.loyal_sent = false;
        self.loyal_at = None;
        self.healthy = false;
        self.watchdog_seen = None;
        self.watchdog_tripped = false;
        self.stopping_notified = false;
        self.next_probe = None;
    }

    fn become_ready(&mut self, now: Instant) {
        self.phase = Phase::Running;
        self.ready_deadline = None;
        self.ready_at = Some(now);
        self.healthy = true;
        self.send(VassalMsg::Ready);
        self.send(VassalMsg::Accepting);
        if !self.loyal_sent {
            self.loyal_at = Some(now + self.s.loyal_after);
        }
        if let Some(hb) = self.s.heartbeat {
            self.send(VassalMsg::Heartbeat);
            self.next_heartbeat = Some(now + hb);
        }
        if self.s.ready == ReadyKind::Probe {
            self.next_probe = Some(now + self.health_interval());
        }
    }

    fn health_interval(&self) -> Duration {
        self.s.heartbeat.unwrap_or(HEALTH_INTERVAL)
    }

    fn watchdog_ok(&self, now: Instant) -> bool {
        if self.watchdog_tripped {
            return false;
        }
        let limit = match (self.s.watchdog, self.s.heartbeat) {
            (Some(w), _) => w,
            (None, Some(hb)) if self.watchdog_seen.is_some() => {
                (hb * 3).max(Duration::from_secs(3))
            }
            _ => return true,
        };
        let since = self.watchdog_seen.or(self.ready_at);
        since.is_some_and(|t| now.saturating_duration_since(t) <= limit)
    }

    fn should_heartbeat(&self, now: Instant) -> bool {
        match self.phase {
            Phase::Running => {
                self.alive
                    && !self.stopped
                    && self.healthy
                    && !self.stopping_notified
                    && self.watchdog_ok(now)
            }
            // A reload in progress: the shim itself is in control for a bounded time (the stop
            // timeout, the config wait), so the emperor should not take it for a hang.
            Phase::Stopping(AfterStop::Restart) | Phase::WaitConfig { initial: false, .. } => true,
            _ => false,
        }
    }

    fn begin_stop(&mut self, now: Instant, code: i32) {
        match self.phase {
            Phase::Done => {}
            Phase::Stopping(AfterStop::Exit(_)) => {}
            Phase::Stopping(AfterStop::Restart) => {
                self.phase = Phase::Stopping(AfterStop::Exit(code))
            }
            _ if !self.alive => self.exit(code),
            _ => {
                self.phase = Phase::Stopping(AfterStop::Exit(code));
                self.push(Action::SignalGroup(self.s.stop_signal));
                self.stop_deadline = Some(now + self.s.stop_timeout);
            }
        }
    }

    fn reload(&mut self, now: Instant) {
        match self.phase {
            Phase::Done | Phase::Stopping(_) => return,
            Phase::WaitConfig { .. } | Phase::Init => return,
            Phase::Starting | Phase::Running => {}
        }
        if self.s.has_config {
            self.config_seen = false;
            self.send(VassalMsg::ConfigRequest);
        }
        match self.s.reload {
            ReloadMode::Restart => {
                self.phase = Phase::Stopping(AfterStop::Restart);
                if self.alive {
                    self.push(Action::SignalGroup(self.s.stop_signal));
                    self.stop_deadline = Some(now + self.s.stop_timeout);
                } else {
                    self.after_restart_stop(now);
                }
            }
            ReloadMode::Signal(sig) => {
                if self.s.has_config {
                    self.phase = Phase::WaitConfig {
                        then: AfterConfig::SignalReload(sig),
                        initial: false,
                    };
                    self.config_deadline = Some(now + CONFIG_WAIT);
                } else {
                    self.signal_reload(now, sig);
                }
            }
        }
    }

    fn signal_reload(&mut self, now: Instant, sig: Signal) {
        self.push(Action::SignalMain(sig));
        self.reset_generation();
        self.phase = Phase::Starting;
        self.readiness_start(now);
    }

    fn readiness_start(&mut self, now: Instant) {
        self.ready_deadline = self.s.ready_timeout.map(|t| now + t);
        match self.s.ready {
            ReadyKind::Immediate => self.become_ready(now),
            ReadyKind::Probe => self.next_probe = Some(now),
            ReadyKind::Notify => {}
        }
    }

    fn after_restart_stop(&mut self, now: Instant) {
        self.stop_deadline = None;
        self.push(Action::KillAll);
        if self.s.has_config && !self.config_seen {
            self.phase = Phase::WaitConfig {
                then: AfterConfig::Spawn,
                initial: false,
            };
            self.config_deadline = Some(now + CONFIG_WAIT);
        } else {
            self.spawn();
        }
    }

    /// Feeds one input.
    pub fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::Spawned { .. } => {
                self.alive = true;
                self.stopped = false;
                self.reset_generation();
                if self.phase == Phase::Starting {
                    self.readiness_start(now);
                }
            }
            Input::SpawnFailed => {
                self.alive = false;
                self.exit(127);
            }
            Input::Exited { code } => {
                self.alive = false;
                self.stopped = false;
                self.probe_in_flight = false;
                match self.phase {
                    Phase::Stopping(AfterStop::Exit(c)) => self.exit(c),
                    Phase::Stopping(AfterStop::Restart) => self.after_restart_stop(now),
                    Phase::Done => {}
                    _ => {
                        let out = if self.s.exile_codes.contains(&code) {
                            EXILE_CODE
                        } else {
                            code
                        };
                        self.exit(out);
                    }
                }
            }
            Input::Stopped => self.stopped = true,
            Input::Continued => self.stopped = false,
            Input::Emperor(Event::Stop | Event::GracefulStop) => self.begin_stop(now, 0),
            Input::Emperor(Event::Eof) => self.begin_stop(now, 1),
            Input::Emperor(Event::Reload) => self.reload(now),
            Input::Emperor(Event::Unknown(_)) => {}
            Input::Signal(ShimSignal::Stop) => self.begin_stop(now, 0),
            Input::Signal(ShimSignal::Reload) => self.reload(now),
            Input::ConfigPushed => {
                self.config_seen = true;
                if let Phase::WaitConfig { then, .. } = self.phase {
                    self.config_deadline = None;
                    match then {
                        AfterConfig::Spawn => self.spawn(),
                        AfterConfig::SignalReload(sig) => self.signal_reload(now, sig),
                    }
                }
            }
            Input::Probe(ok) => {
                self.probe_in_flight = false;
                if !self.alive {
                    return;
                }
                match self.phase {
                    Phase::Starting if ok => self.become_ready(now),
                    Phase::Starting => self.next_probe = Some(now + PROBE_RETRY),
                    Phase::Running => {
                        self.healthy = ok;
                        self.next_probe = Some(now + self.health_interval());
                    }
                    _ => {}
                }
            }
            Input::Notify(n) => self.notify(now, n),
            Input::Backlog(n) => {
                if self.s.sos_backlog.is_some_and(|t| n >= t) && self.alive {
                    self.sos(now);
                }
            }
        }
    }

    fn sos(&mut self, now: Instant) {
        let due = match self.last_sos {
            None => true,
            Some(t) => now.saturating_duration_since(t) >= SOS_INTERVAL,
        };
        if due {
            self.last_sos = Some(now);
            self.send(VassalMsg::Sos);
        }
    }

    fn notify(&mut self, now: Instant, n: Notification) {
        if !self.alive {
            return;
        }
        match n {
            Notification::Ready => {
                if self.phase == Phase::Starting {
                    self.become_ready(now);
                }
            }
            Notification::Reloading => {
                if self.phase == Phase::Running {
                    self.reset_generation();
                    self.phase = Phase::Starting;
                    self.ready_deadline = self.s.ready_timeout.map(|t| now + t);
                    if self.s.ready == ReadyKind::Probe {
                        self.next_probe = Some(now + PROBE_RETRY);
                    }
                }
            }
            Notification::Stopping => self.stopping_notified = true,
            Notification::Watchdog => {
                self.watchdog_seen = Some(now);
                self.watchdog_tripped = false;
            }
            Notification::WatchdogTrigger => self.watchdog_tripped = true,
            Notification::Idle => {
                if matches!(self.phase, Phase::Running | Phase::Starting) {
                    self.send(VassalMsg::StopMe);
                }
            }
            Notification::Sos => self.sos(now),
            Notification::Loyal => {
                if self.phase == Phase::Running && !self.loyal_sent {
                    self.loyal_sent = true;
                    self.loyal_at = None;
                    self.send(VassalMsg::Loyal);
                }
            }
            Notification::Status(_)
            | Notification::MainPid(_)
            | Notification::Errno(_)
            | Notification::Other(_) => {}
        }
    }

    /// Handles every deadline that has passed.
    pub fn on_timeout(&mut self, now: Instant) {
        if self.loyal_at.is_some_and(|t| t <= now) {
            self.loyal_at = None;
            if self.alive && self.phase == Phase::Running && !self.loyal_sent {
                self.loyal_sent = true;
                self.send(VassalMsg::Loyal);
            }
        }
        if let Some(hb) = self.s.heartbeat {
            if self.next_heartbeat.is_some_and(|t| t <= now) {
                self.next_heartbeat = Some(now + hb);
                if self.should_heartbeat(now) {
                    self.send(VassalMsg::Heartbeat);
                }
            }
        }
        if self.next_probe.is_some_and(|t| t <= now) && !self.probe_in_flight {
            self.next_probe = None;
            if self.alive && matches!(self.phase, Phase::Starting | Phase::Running) {
                self.probe_in_flight = true;
                self.push(Action::Probe);
            }
        }
        if self.stop_deadline.is_some_and(|t| t <= now) {
            self.stop_deadline = None;
            tracing::warn!(
                "the program did not stop within {:?} of {}: sending SIGKILL",
                self.s.stop_timeout,
                self.s.stop_signal
            );
            match self.phase {
                Phase::Stopping(AfterStop::Exit(c)) => self.exit(c),
                // SIGKILL; the exit of the main process then continues the restart.
                Phase::Stopping(AfterStop::Restart) => self.push(Action::KillAll),
                _ => {}
            }
        }
        if self.config_deadline.is_some_and(|t| t <= now) {
            self.config_deadline = None;
            if let Phase::WaitConfig { then, initial } = self.phase {
                if initial {
                    self.exit(1);
                } else {
                    match then {
                        AfterConfig::Spawn => self.spawn(),
                        AfterConfig::SignalReload(sig) => self.signal_reload(now, sig),
                    }
                }
            }
        }
        if self.ready_deadline.is_some_and(|t| t <= now) {
            self.ready_deadline = None;
            if self.phase == Phase::Starting && self.alive {
                tracing::warn!(
                    "the program is not ready after {:?}: giving up",
                    self.s.ready_timeout.unwrap_or_default()
                );
                self.begin_stop(now, 1);
            }
        }
        if self.next_backlog.is_some_and(|t| t <= now) {
            self.next_backlog = Some(now + BACKLOG_INTERVAL);
            if self.alive && self.phase == Phase::Running {
                self.push(Action::MeasureBacklog);
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(ready: ReadyKind) -> CoreSettings {
        CoreSettings {
            ready,
            heartbeat: None,
            stop_signal: Signal::SIGTERM,
            stop_timeout: Duration::from_secs(10),
            reload: ReloadMode::Restart,
            exile_codes: vec![3],
            loyal_after: Duration::from_secs(2),
            ready_timeout: None,
            watchdog: None,
            sos_backlog: None,
            has_config: false,
        }
    }

    struct T {
        core: Core,
        now: Instant,
    }

    impl T {
        fn new(s: CoreSettings) -> T {
            let now = Instant::now();
            let mut core = Core::new(s);
            core.start(now);
            T { core, now }
        }
        fn actions(&mut self) -> Vec<Action> {
            std::iter::from_fn(|| self.core.poll_action()).collect()
        }
        fn input(&mut self, i: Input) -> Vec<Action> {
            self.core.handle(self.now, i);
            self.actions()
        }
        /// Advances the fake clock by `d`, firing every deadline on the way.
        fn advance(&mut self, d: Duration) -> Vec<Action> {
            let end = self.now + d;
            let mut out = Vec::new();
            while let Some(t) = self.core.next_deadline().filter(|t| *t <= end) {
                self.now = t.max(self.now);
                self.core.on_timeout(self.now);
                out.extend(self.actions());
            }
            self.now = end;
            out
        }
    }

    use Action::*;
    use VassalMsg as M;

    #[test]
    fn immediate_ready_then_loyal_after_grace() {
        let mut t = T::new(settings(ReadyKind::Immediate));
        assert_eq!(t.actions(), vec![Spawn]);
        assert_eq!(
            t.input(Input::Spawned { pid: 10 }),
            vec![Send(M::Ready), Send(M::Accepting)]
        );
        assert_eq!(t.advance(Duration::from_millis(1900)), vec![]);
        assert_eq!(t.advance(Duration::from_millis(200)), vec![Send(M::Loyal)]);
        assert_eq!(t.advance(Duration::from_secs(60)), vec![]);
    }

    #[test]
    fn crash_before_grace_is_never_loyal_and_exit_code_passes_through() {
        let mut t = T::new(settings(ReadyKind::Immediate));
        t.actions();
        t.input(Input::Spawned { pid: 10 });
        t.advance(Duration::from_millis(500));
        assert_eq!(t.input(Input::Exited { code: 1 }), vec![KillAll, Exit(1)]);
        assert_eq!(t.advance(Duration::from_secs(10)), vec![]);
    }

    #[test]
    fn exile_codes_map_to_26() {
        let mut t = T::new(settings(ReadyKind::Immediate));
        t.actions();
        t.input(Input::Spawned { pid: 10 });
        assert_eq!(t.input(Input::Exited { code: 3 }), vec![KillAll, Exit(26)]);
    }

    #[test]
    fn probe_readiness_retries_then_heartbeats_only_while_healthy() {
        let mut s = settings(ReadyKind::Probe);
        s.heartbeat = Some(Duration::from_secs(1));
        let mut t = T::new(s);
        t.actions();
        assert_eq!(t.input(Input::Spawned { pid: 10 }), vec![]);
        assert_eq!(t.advance(Duration::ZERO), vec![Probe]);
        assert_eq!(t.input(Input::Probe(false)), vec![]);
        assert_eq!(t.advance(Duration::from_millis(100)), vec![]);
        assert_eq!(t.advance(Duration::from_millis(100)), vec![Probe]);
        assert_eq!(
            t.input(Input::Probe(true)),
            vec![Send(M::Ready), Send(M::Accepting), Send(M::Heartbeat)]
        );
        // one second later: a heartbeat and a health probe
        let a = t.advance(Duration::from_secs(1));
        assert!(
            a.contains(&Send(M::Heartbeat)) && a.contains(&Probe),
            "{a:?}"
        );
        t.input(Input::Probe(false));
        // the next tick finds it unhealthy (and the loyalty grace is over)
        let a = t.advance(Duration::from_secs(1));
        assert!(
            a.contains(&Send(M::Loyal)) && !a.contains(&Send(M::Heartbeat)),
            "unhealthy: {a:?}"
        );
        t.input(Input::Probe(true));
        let a = t.advance(Duration::from_secs(1));
        assert!(a.contains(&Send(M::Heartbeat)), "{a:?}");
    }

    #[test]
    fn stopped_program_gets_no_heartbeats() {
        let mut s = settings(ReadyKind::Immediate);
        s.heartbeat = Some(Duration::from_secs(1));
        let mut t = T::new(s);
        t.actions();
        t.input(Input::Spawned { pid: 10 });
        t.input(Input::Stopped);
        let a = t.advance(Duration::from_secs(5));
        assert!(!a.contains(&Send(M::Heartbeat)), "{a:?}");
        t.input(Input::Continued);
        assert!(t
            .advance(Duration::from_secs(1))
            .contains(&Send(M::Heartbeat)));
    }

    #[test]
    fn notify_readiness_and_extensions() {
        let mut t = T::new(settings(ReadyKind::Notify));
        t.actions();
        t.input(Input::Spawned { pid: 10 });
        assert_eq!(t.advance(Duration::from_secs(30)), vec![]);
        assert_eq!(
            t.input(Input::Notify(Notification::Ready)),
            vec![Send(M::Ready), Send(M::Accepting)]
        );
        assert_eq!(
            t.input(Input::Notify(Notification::Loyal)),
            vec![Send(M::Loyal)]
        );
        assert_eq!(t.advance(Duration::from_secs(5)), vec![]);
        assert_eq!(
            t.input(Input::Notify(Notification::Sos)),
            vec![Send(M::Sos)]
        );
        assert_eq!(
            t.input(Input::Notify(Notification::Sos)),
            vec![],
            "rate limited"
        );
        assert_eq!(
            t.input(Input::Notify(Notification::Idle)),
            vec![Send(M::StopMe)]
        );
        // RELOADING=1 then READY=1: accepting again, loyalty already given
        assert_eq!(t.input(Input::Notify(Notification::Reloading)), vec![]);
        assert_eq!(
            t.input(Input::Notify(Notification::Ready)),
            vec![Send(M::Ready), Send(M::Accepting)]
        );
        assert_eq!(t.advance(Duration::from_secs(5)), vec![Send(M::Loyal)]);
    }

    #[test]
    fn watchdog_pings_gate_heartbeats() {
        let mut s = settings(ReadyKind::Immediate);
        s.heartbeat = Some(Duration::from_secs(1));
        s.watchdog = Some(Duration::from_secs(2));
        let mut t = T::new(s);
        t.actions();
        t.input(Input::Spawned { pid: 10 });
        t.input(Input::Notify(Notification::Watchdog));
        assert!(t
            .advance(Duration::from_secs(1))
            .contains(&Send(M::Heartbeat)));
        // still within 2 s of the ping
        assert!(t
            .advance(Duration::from_secs(1))
            .contains(&Send(M::Heartbeat)));
        let a = t.advance(Duration::from_secs(2));
        assert!(!a.contains(&Send(M::Heartbeat)), "no pings: {a:?}");
        t.input(Input::Notify(Notification::Watchdog));
        assert!(t
            .advance(Duration::from_secs(1))
            .contains(&Send(M::Heartbeat)));
        t.input(Input::Notify(Notification::WatchdogTrigger));
        assert!(!t
            .advance(Duration::from_secs(1))
            .contains(&Send(M::Heartbeat)));
    }

    #[test]
    fn stop_signal_then_kill_after_timeout() {
        let mut t = T::new(settings(ReadyKind::Immediate));
        t.actions();
        t.input(Input::Spawned { pid: 10 });
        assert_eq!(
            t.input(Input::Emperor(Event::Stop)),
            vec![SignalGroup(Signal::SIGTERM)]
        );
        assert_eq!(t.input(Input::Emperor(Event::Stop)), vec![], "once");
        assert_eq!(t.advance(Duration::from_secs(9)), vec![]);
        assert_eq!(t.advance(Duration::from_secs(2)), vec![KillAll, Exit(0)]);
    }

    #[test]
    fn stop_program_exits_in_time() {
        let mut t = T::new(settings(ReadyKind::Immediate));
        t.actions();
        t.input(Input::Spawned { pid: 10 });
        t.input(Input::Emperor(Event::GracefulStop));
        assert_eq!(t.input(Input::Exited { code: 143 }), vec![KillAll, Exit(0)]);
    }

    #[test]
    fn eof_stops_with_exit_1() {
        let mut t = T::new(settings(ReadyKind::Immediate));
        t.actions();
        t.input(Input::Spawned { pid: 10 });
        t.input(Input::Emperor(Event::Eof));
        assert_eq!(t.input(Input::Exited { code: 0 }), vec![KillAll, Exit(1)]);
    }

    #[test]
    fn reload_restarts_and_readiness_and_loyalty_again() {
        let mut t = T::new(settings(ReadyKind::Immediate));
        t.actions();
        t.input(Input::Spawned { pid: 10 });
        t.advance(Duration::from_secs(3));
        assert_eq!(
            t.input(Input::Emperor(Event::Reload)),
            vec![SignalGroup(Signal::SIGTERM)]
        );
        assert_eq!(t.input(Input::Exited { code: 0 }), vec![KillAll, Spawn]);
        assert_eq!(
            t.input(Input::Spawned { pid: 11 }),
            vec![Send(M::Ready), Send(M::Accepting)]
        );
        assert_eq!(t.advance(Duration::from_secs(3)), vec![Send(M::Loyal)]);
    }

    #[test]
    fn reload_with_config_requests_it_and_waits() {
        let mut s = settings(ReadyKind::Immediate);
        s.has_config = true;
        let mut t = T::new(s);
        assert_eq!(t.actions(), vec![], "waits for the first push");
        assert_eq!(t.input(Input::ConfigPushed), vec![Spawn]);
        t.input(Input::Spawned { pid: 10 });
        assert_eq!(
            t.input(Input::Emperor(Event::Reload)),
            vec![Send(M::ConfigRequest), SignalGroup(Signal::SIGTERM)]
        );
        assert_eq!(t.input(Input::Exited { code: 0 }), vec![KillAll]);
        assert_eq!(t.input(Input::ConfigPushed), vec![Spawn]);
        // a second (2.0.x double) push changes nothing
        assert_eq!(t.input(Input::ConfigPushed), vec![]);
    }

    #[test]
    fn no_initial_config_is_fatal() {
        let mut s = settings(ReadyKind::Immediate);
        s.has_config = true;
        let mut t = T::new(s);
        t.actions();
        assert_eq!(t.advance(CONFIG_WAIT), vec![KillAll, Exit(1)]);
    }

    #[test]
    fn reload_by_signal() {
        let mut s = settings(ReadyKind::Notify);
        s.reload = ReloadMode::Signal(Signal::SIGHUP);
        let mut t = T::new(s);
        t.actions();
        t.input(Input::Spawned { pid: 10 });
        t.input(Input::Notify(Notification::Ready));
        assert_eq!(
            t.input(Input::Signal(ShimSignal::Reload)),
            vec![SignalMain(Signal::SIGHUP)],
            "a reload signal goes to the main process, not the group"
        );
        assert_eq!(
            t.input(Input::Notify(Notification::Ready)),
            vec![Send(M::Ready), Send(M::Accepting)]
        );
        assert_eq!(
            t.input(Input::Emperor(Event::Stop)),
            vec![SignalGroup(Signal::SIGTERM)],
            "a stop still goes to the whole group"
        );
    }

    #[test]
    fn restart_that_hangs_is_killed() {
        let mut t = T::new(settings(ReadyKind::Immediate));
        t.actions();
        t.input(Input::Spawned { pid: 10 });
        t.input(Input::Emperor(Event::Reload));
        assert_eq!(t.advance(Duration::from_secs(11)), vec![KillAll]);
        assert_eq!(t.input(Input::Exited { code: 137 }), vec![KillAll, Spawn]);
    }

    #[test]
    fn heartbeats_continue_while_a_reload_stops_the_old_program_but_not_before_ready() {
        let mut s = settings(ReadyKind::Notify);
        s.heartbeat = Some(Duration::from_secs(1));
        let mut t = T::new(s);
        t.actions();
        t.input(Input::Spawned { pid: 10 });
        t.input(Input::Notify(Notification::Ready));
        t.input(Input::Emperor(Event::Reload));
        let a = t.advance(Duration::from_secs(3));
        assert_eq!(
            a.iter().filter(|x| **x == Send(M::Heartbeat)).count(),
            3,
            "old generation stopping: {a:?}"
        );
        assert_eq!(t.input(Input::Exited { code: 0 }), vec![KillAll, Spawn]);
        t.input(Input::Spawned { pid: 11 });
        let a = t.advance(Duration::from_secs(3));
        assert!(!a.contains(&Send(M::Heartbeat)), "new one not ready: {a:?}");
    }

    #[test]
    fn stop_during_restart_exits() {
        let mut t = T::new(settings(ReadyKind::Immediate));
        t.actions();
        t.input(Input::Spawned { pid: 10 });
        t.input(Input::Emperor(Event::Reload));
        t.input(Input::Emperor(Event::Stop));
        assert_eq!(t.input(Input::Exited { code: 0 }), vec![KillAll, Exit(0)]);
    }

    #[test]
    fn backlog_sos() {
        let mut s = settings(ReadyKind::Immediate);
        s.sos_backlog = Some(10);
        let mut t = T::new(s);
        t.actions();
        t.input(Input::Spawned { pid: 10 });
        t.actions();
        assert!(t.advance(Duration::from_secs(1)).contains(&MeasureBacklog));
        assert_eq!(t.input(Input::Backlog(3)), vec![]);
        assert_eq!(t.input(Input::Backlog(10)), vec![Send(M::Sos)]);
    }

    #[test]
    fn never_ready_gives_up_after_ready_timeout() {
        let mut s = settings(ReadyKind::Notify);
        s.ready_timeout = Some(Duration::from_secs(5));
        let mut t = T::new(s);
        t.actions();
        t.input(Input::Spawned { pid: 10 });
        assert_eq!(t.advance(Duration::from_secs(4)), vec![]);
        assert_eq!(
            t.advance(Duration::from_secs(2)),
            vec![SignalGroup(Signal::SIGTERM)]
        );
        assert_eq!(t.input(Input::Exited { code: 143 }), vec![KillAll, Exit(1)]);
    }

    #[test]
    fn ready_in_time_cancels_the_ready_timeout() {
        let mut s = settings(ReadyKind::Notify);
        s.ready_timeout = Some(Duration::from_secs(5));
        let mut t = T::new(s);
        t.actions();
        t.input(Input::Spawned { pid: 10 });
        t.advance(Duration::from_secs(4));
        t.input(Input::Notify(Notification::Ready));
        let a = t.advance(Duration::from_secs(60));
        assert_eq!(a, vec![Send(M::Loyal)]);
    }

    #[test]
    fn spawn_failure_exits_127() {
        let mut t = T::new(settings(ReadyKind::Immediate));
        t.actions();
        assert_eq!(t.input(Input::SpawnFailed), vec![KillAll, Exit(127)]);
    }
}
