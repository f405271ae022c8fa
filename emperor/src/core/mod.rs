//! The sans-IO emperor: every lifecycle rule, no syscalls.
//!
//! The runtime feeds [`Event`]s with the current time and drains [`Action`]s with
//! [`Core::poll_action`]; [`Core::next_deadline`] says when to call [`Core::handle_timeout`].
//! Lookups are maps keyed by vassal key, incarnation (the runtime's channel token) and pid, so
//! the work per event does not depend on the number of vassals (scans excepted, which are
//! O(vassals of that monitor)).
//!
//! The rules live one family per file: monitor observations (`scan`), starts (`spawn`),
//! channel bytes (`channel`), deaths (`reap`), backoff, heartbeat, curse, shutdown, per-vassal
//! commands, on-demand and suspended vassals (`activation`), broodlord, tyrant, channel garbage,
//! and the process-wide inputs (`events`: signals, our own emperor, adoptions, start hooks).
//! A record and its lifecycle [`State`] are in `record`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};
use uwsgi_proto::{EmperorMsg, VassalMsg};

/// Index of a monitor (config source) in the emperor's list.
pub type MonitorId = usize;

/// What identifies one version of a config file: a change in any field is a change, so two
/// edits within one second, a same-size rewrite and a rename-into-place all count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FileStamp {
    /// Modification time in nanoseconds since the Unix epoch.
    pub mtime_ns: i128,
    /// Size in bytes.
    pub size: u64,
    /// Inode number.
    pub ino: u64,
}

impl FileStamp {
    /// The modification time in whole Unix seconds (what uWSGI's stats call `last_mod`).
    pub fn mtime_secs(&self) -> i64 {
        i64::try_from(self.mtime_ns.div_euclid(1_000_000_000)).unwrap_or(0)
    }
}

/// One config found by a monitor scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Unique across every monitor (for file monitors: the absolute path).
    pub key: String,
    /// The instance name uWSGI users know (`app.ini` for a dir monitor, the matched path for a
    /// glob monitor); it is what appears in `--ini NAME` and in logs.
    pub name: String,
    /// Change detection stamp.
    pub stamp: FileStamp,
    /// Config content to push over the config socket (content monitors); `None` for files.
    pub content: Option<Arc<[u8]>>,
    /// Owner of the file (tyrant mode runs the vassal as this user).
    pub uid: u32,
    /// Group of the file.
    pub gid: u32,
}

/// A vassal record id; never reused (`VassalId(0)` is no record).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VassalId(pub u64);

/// One start of a vassal (one channel); the runtime uses it as its channel token.
///
/// The core makes them as `sequence << 24 | slot`: the low [`Inc::SLOT_BITS`] bits are the
/// record's slot in the core's channel table (so a channel byte finds its state without a hash
/// lookup), the upper 36 bits a start counter, so a value is not reused before 2^36 starts
/// (decades at hundreds of starts per second). Every value is below 2^60; `Inc(0)` is never
/// live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Inc(pub u64);

impl Inc {
    /// Bits of the slot.
    pub const SLOT_BITS: u32 = 24;
    /// Bits of the start counter.
    pub const SEQ_BITS: u32 = 36;

    fn new(seq: u64, slot: u32) -> Inc {
        Inc((seq & ((1 << Self::SEQ_BITS) - 1)) << Self::SLOT_BITS | u64::from(slot))
    }

    /// The slot part.
    fn slot(self) -> usize {
        (self.0 & ((1 << Self::SLOT_BITS) - 1)) as usize
    }
}

/// Most records the core holds at once (one slot each).
pub const MAX_VASSALS: usize = 1 << Inc::SLOT_BITS;

/// How a reaped child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    /// `exit(code)`.
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
}

impl fmt::Display for ExitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitKind::Code(c) => write!(f, "exit status {c}"),
            ExitKind::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

/// uWSGI's "exile" exit code: not respawned until the config changes.
pub const EXILE_CODE: i32 = 26;

/// Process-wide requests, usually from signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// INT/TERM/QUIT: stop everything, SIGKILL after reload-mercy, exit once all are reaped.
    Shutdown,
    /// HUP: reload every running vassal.
    ReloadAll,
    /// USR1: one status line per vassal.
    LogStatus,
    /// URG: clear every backoff.
    ClearBackoff,
    /// WINCH: rescan every monitor now.
    Rescan,
}

/// An input to the core.
#[derive(Clone, Debug)]
pub enum Event {
    /// A complete listing of one monitor; anything of that monitor not listed is gone.
    Scanned {
        /// The monitor.
        monitor: MonitorId,
        /// Every valid config it holds.
        entries: Vec<Entry>,
    },
    /// One config of a monitor appeared or changed (`entry: Some`), or is gone or no longer
    /// valid (`None`): what inotify reports for one file, O(1) instead of a whole scan.
    Updated {
        /// The monitor.
        monitor: MonitorId,
        /// The config's key (absolute path).
        key: String,
        /// Its current state.
        entry: Option<Entry>,
    },
    /// The runtime started the process for `inc`.
    Spawned {
        /// The incarnation from [`Action::Spawn`].
        inc: Inc,
        /// Its pid.
        pid: i32,
    },
    /// The runtime could not start the process for `inc` (no child exists).
    SpawnFailed {
        /// The incarnation from [`Action::Spawn`].
        inc: Inc,
        /// Why, including what to do.
        reason: SpawnFailure,
    },
    /// A byte from a vassal channel.
    Message {
        /// Channel.
        inc: Inc,
        /// The byte.
        byte: u8,
    },
    /// EOF or error on a vassal channel: a hint that it is going, not a death.
    ChannelClosed {
        /// Channel.
        inc: Inc,
    },
    /// `waitpid` reaped `pid`.
    Reaped {
        /// The pid.
        pid: i32,
        /// How it ended.
        exit: ExitKind,
    },
    /// A process-wide request.
    Control(Control),
    /// On-demand socket activation (see [`OnDemandEvent`]).
    OnDemand(OnDemandEvent),
    /// A signal was delivered to the emperor; the core maps it (see [`Core::signal_control`]).
    Signal(i32),
    /// A byte from our own emperor (this emperor runs as a sub-emperor).
    FromEmperor(u8),
    /// The channel to our own emperor closed: shut down.
    EmperorGone,
    /// A per-vassal command (command socket, `emperor ctl`); the core logs the outcome.
    Command {
        /// What to do.
        cmd: VassalCommand,
        /// The vassal's instance name or key.
        name: String,
    },
    /// A fork server started the process of `inc` and the emperor adopted it.
    Adopted {
        /// The incarnation from [`Action::Spawn`].
        inc: Inc,
        /// Its pid.
        pid: i32,
    },
    /// The start hook run for `inc` ([`SpawnRequest::run_start_hook`]) exited.
    StartHookDone {
        /// The incarnation from [`Action::Spawn`].
        inc: Inc,
    },
}

/// Everything the runtime needs to start one vassal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpawnRequest {
    /// The incarnation (channel token); answer with [`Event::Spawned`] or [`Event::SpawnFailed`].
    pub inc: Inc,
    /// The record.
    pub vassal: VassalId,
    /// Its key (absolute path for files).
    pub key: String,
    /// Its instance name.
    pub name: String,
    /// Which monitor it came from (decides the child's cwd).
    pub monitor: MonitorId,
    /// Config content to push once the process runs (a config socket is needed).
    pub content: Option<Arc<[u8]>>,
    /// Tyrant mode: the uid and gid the vassal runs as (the owner of its config).
    pub creds: Option<(u32, u32)>,
    /// Broodlord: the zerg number (`UWSGI_BROODLORD_NUM`) of a zerg record.
    pub zerg: Option<u32>,
    /// Run the start hook first and answer with [`Event::StartHookDone`]; the core then asks
    /// for the same incarnation again with this false.
    pub run_start_hook: bool,
}

/// An output of the core, performed by the runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start a vassal process.
    Spawn(SpawnRequest),
    /// Write one byte on a vassal channel.
    Send {
        /// Channel.
        inc: Inc,
        /// The message.
        msg: EmperorMsg,
    },
    /// Write one config frame on the vassal's config socket.
    PushConfig {
        /// Channel.
        inc: Inc,
        /// The config text.
        content: Arc<[u8]>,
    },
    /// SIGKILL a process.
    Kill {
        /// The pid.
        pid: i32,
    },
    /// The incarnation is over (reaped): close its channels.
    Release {
        /// Channel.
        inc: Inc,
    },
    /// Rescan every monitor now.
    Rescan,
    /// Every vassal is reaped after a shutdown: exit 0.
    Exit,
    /// Set up, re-arm or close an on-demand listener (see [`OnDemandAction`]).
    OnDemand(OnDemandAction),
}

/// Tunables of the lifecycle (all from the uWSGI options of the same names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreConfig {
    /// `emperor-freq`: the safety rescan period; also the retry delay with no-blacklist.
    pub freq: Duration,
    /// `emperor-required-heartbeat`.
    pub required_heartbeat: Duration,
    /// `emperor-curse-tolerance`.
    pub curse_tolerance: Duration,
    /// `emperor-throttle` (ms): first backoff delay.
    pub throttle_ms: u64,
    /// `emperor-max-throttle` (ms): backoff cap.
    pub max_throttle_ms: u64,
    /// `emperor-no-blacklist`.
    pub no_blacklist: bool,
    /// `emperor-graceful-shutdown`: stop with byte 2 instead of 0.
    pub graceful_shutdown: bool,
    /// `reload-mercy`: how long a shutdown waits before SIGKILL.
    pub reload_mercy: Duration,
    /// Jitter seed (fixed in tests).
    pub seed: u64,
    /// `emperor-tyrant`: every vassal runs as the owner of its config; root-owned ones are
    /// refused.
    pub tyrant: bool,
    /// On-demand, wait-for-command and broodlord settings.
    pub activation: ActivationConfig,
    /// `vassals-start-hook` is set: every start runs it first.
    pub start_hook: bool,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            freq: Duration::from_secs(3),
            required_heartbeat: Duration::from_secs(30),
            curse_tolerance: Duration::from_secs(30),
            throttle_ms: 1000,
            max_throttle_ms: 180_000,
            no_blacklist: false,
            graceful_shutdown: false,
            reload_mercy: Duration::from_secs(30),
            seed: 0x9e37_79b9_7f4a_7c15,
            tyrant: false,
            activation: ActivationConfig::default(),
            start_hook: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Start(VassalId),
    Curse(VassalId),
    Heartbeat(VassalId),
    Mercy,
}

/// The core's integer-keyed maps (FxHash): record ids and incarnations are ours and pids come
/// from the kernel, none attacker-chosen, so SipHash's flooding resistance buys nothing on the
/// per-byte path and costs ~10 ns per lookup.
type IdMap<K, V> = rustc_hash::FxHashMap<K, V>;

/// The emperor's state machine.
#[derive(Debug)]
pub struct Core {
    cfg: CoreConfig,
    vassals: IdMap<VassalId, Vassal>,
    by_key: HashMap<String, VassalId>,
    /// Channel state by slot (the low bits of an [`Inc`]; see [`Line`]).
    lines: Vec<Line>,
    free_slots: Vec<u32>,
    /// [`MAX_VASSALS`] (lower in tests).
    max_vassals: usize,
    /// `cfg.required_heartbeat` in nanoseconds.
    required_ns: i64,
    /// Origin of the channel table's times: the first `now` a record was created with.
    epoch: Option<Instant>,
    by_pid: IdMap<i32, VassalId>,
    by_monitor: HashMap<MonitorId, HashSet<VassalId>>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    actions: VecDeque<Action>,
    next_id: u64,
    next_inc: u64,
    rng: u64,
    shutdown: Option<Instant>,
    exit_sent: bool,
    ext: activation::Ext,
    tyrant: tyrant::TyrantState,
    /// Rate limit of the warnings about failed commands.
    command_warn: garbage::LogLimit,
    notes: note::Notes,
    counters: record::Counters,
}

impl Core {
    /// A core with no vassals.
    pub fn new(cfg: CoreConfig) -> Core {
        Core {
            required_ns: i64::try_from(cfg.required_heartbeat.as_nanos()).unwrap_or(i64::MAX),
            rng: cfg.seed | 1,
            cfg,
            vassals: IdMap::default(),
            by_key: HashMap::new(),
            lines: Vec::new(),
            free_slots: Vec::new(),
            max_vassals: MAX_VASSALS,
            epoch: None,
            by_pid: IdMap::default(),
            by_monitor: HashMap::new(),
            timers: BinaryHeap::new(),
            actions: VecDeque::new(),
            next_id: 1,
            next_inc: 1,
            shutdown: None,
            exit_sent: false,
            ext: activation::Ext::default(),
            tyrant: tyrant::TyrantState::default(),
            command_warn: garbage::LogLimit::default(),
            notes: note::Notes::default(),
            counters: record::Counters::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// True once a shutdown started.
    pub fn shutting_down(&self) -> bool {
        self.shutdown.is_some()
    }

    /// The next action to perform.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next lifecycle note (see [`Note`]).
    pub fn poll_note(&mut self) -> Option<Note> {
        self.notes.pop()
    }

    /// When [`Core::handle_timeout`] must be called next (may be early, never late).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    /// Feeds one event.
    pub fn handle(&mut self, now: Instant, ev: Event) {
        match ev {
            Event::Scanned { monitor, entries } => self.on_scan(now, monitor, entries),
            Event::Updated {
                monitor,
                key,
                entry,
            } => self.on_update(now, monitor, &key, entry),
            Event::Spawned { inc, pid } => self.on_spawned(now, inc, pid),
            Event::SpawnFailed { inc, reason } => self.on_spawn_failed(now, inc, &reason),
            Event::Message { inc, byte } => self.on_message(now, inc, byte),
            Event::ChannelClosed { inc } => self.on_channel_closed(now, inc),
            Event::Reaped { pid, exit } => self.on_reaped(now, pid, exit),
            Event::Control(c) => self.on_control(now, c),
            Event::OnDemand(e) => self.on_demand_event(now, e),
            Event::Signal(sig) => {
                if let Some(c) = Core::signal_control(sig) {
                    self.on_control(now, c);
                }
            }
            Event::FromEmperor(b) => self.on_from_emperor(now, b),
            Event::EmperorGone => self.on_emperor_gone(now),
            Event::Command { cmd, name } => self.on_command(now, cmd, &name),
            Event::Adopted { inc, pid } => self.on_adopted(now, inc, pid),
            Event::StartHookDone { inc } => self.on_start_hook_done(now, inc),
        }
        self.check_done();
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, timer))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Start(id) => self.timer_start(now, id),
                Timer::Curse(id) => self.timer_curse(now, id),
                Timer::Heartbeat(id) => self.timer_heartbeat(now, id),
                Timer::Mercy => self.timer_mercy(now),
            }
        }
        self.check_done();
    }

    fn timer(&mut self, at: Instant, t: Timer) {
        self.timers.push(Reverse((at, t)));
    }
}

mod activation;
mod backoff;
mod broodlord;
mod channel;
mod command;
mod curse;
mod events;
pub mod garbage;
mod heartbeat;
mod note;
mod reap;
mod record;
mod scan;
mod shutdown;
mod spawn;
mod tyrant;

pub use activation::{ActivationConfig, OnDemandAction, OnDemandEvent};
pub use backoff::Backoff;
pub use command::{CommandError, VassalCommand};
pub use note::{Note, MAX_NOTES};
use record::{dec_time, enc_time, set_state, spawn_request, Line, NO_TIME};
pub use record::{state, ChannelState, Counters, State, Vassal};
pub use spawn::SpawnFailure;
pub use tyrant::{is_root_owned, refusal};

#[cfg(test)]
mod tests;
