//! The sans-IO emperor: every lifecycle rule, no syscalls.
//!
//! The runtime feeds [`Event`]s with the current time and drains [`Action`]s with
//! [`Core::poll_action`]; [`Core::next_deadline`] says when to call [`Core::handle_timeout`].
//! Lookups are maps keyed by vassal key, incarnation (the runtime's channel token) and pid, so
//! the work per event does not depend on the number of vassals (scans excepted, which are
//! O(vassals of that monitor)).
//!
//! Seams for later issues: on-demand vassals (a `Waiting`-like state holding a listener),
//! broodlord (byte 30 is counted in [`Vassal::sos`]), tyrant (uid/gid are carried in
//! [`Entry`]), hooks (around [`Action::Spawn`] and record removal), the command socket (it maps to
//! [`Control`] and per-vassal stop/reload, see [`Core::stop_by_key`] / [`Core::reload_by_key`])
//! and the fork server (an alternative executor of [`Action::Spawn`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
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
    /// Owner of the file (for tyrant mode, a later issue).
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
        /// Human readable reason, including what to do.
        reason: String,
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

/// Where a vassal is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Not running; (re)started at `at` (backoff, or a pending start).
    Waiting {
        /// When.
        at: Instant,
    },
    /// Spawn requested, pid not known yet.
    Starting {
        /// Incarnation.
        inc: Inc,
    },
    /// Running.
    Running {
        /// Incarnation.
        inc: Inc,
        /// Pid.
        pid: i32,
    },
    /// Asked to stop (or its channel closed); SIGKILLed at `kill_at` if still alive.
    Stopping {
        /// Incarnation.
        inc: Inc,
        /// Pid.
        pid: i32,
        /// When it was cursed.
        since: Instant,
        /// When it gets SIGKILL.
        kill_at: Instant,
        /// True when we asked for it (stop byte), false when the channel closed on its own.
        requested: bool,
    },
    /// Exited with 26: not respawned until its config changes.
    Exiled,
    /// On demand: no process; the emperor holds its listener and starts it on the first
    /// connection.
    OnDemand,
    /// Waiting for a `spawn` command (wait-for-command, or stopped by a command).
    Suspended,
}

impl State {
    /// A short name for logs and stats.
    pub fn name(&self) -> &'static str {
        match self {
            State::Waiting { .. } => "waiting",
            State::Starting { .. } => "starting",
            State::Running { .. } => "running",
            State::Stopping { .. } => "stopping",
            State::Exiled => "exiled",
            State::OnDemand => "on-demand",
            State::Suspended => "suspended",
        }
    }

    /// The pid, when a process exists.
    pub fn pid(&self) -> Option<i32> {
        match *self {
            State::Running { pid, .. } | State::Stopping { pid, .. } => Some(pid),
            _ => None,
        }
    }

    fn inc(&self) -> Option<Inc> {
        match *self {
            State::Starting { inc } | State::Running { inc, .. } | State::Stopping { inc, .. } => {
                Some(inc)
            }
            _ => None,
        }
    }
}

/// Per-vassal retry state (uWSGI's blacklist entry).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backoff {
    /// Failures since it was last loyal.
    pub attempt: u32,
    /// Current nominal delay in ms (before jitter).
    pub level_ms: u64,
    /// First failure of this streak.
    pub first: Option<Instant>,
    /// Latest failure.
    pub last: Option<Instant>,
}

/// What a vassal's channel bytes said (its current incarnation, or its last one when it has
/// no process): [`Core::channel`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelState {
    /// Byte 1 seen for this incarnation.
    pub ready: bool,
    /// Byte 5 seen since the latest start/reload.
    pub accepting: bool,
    /// Byte 17 seen for this incarnation.
    pub loyal: bool,
    /// Latest byte 1.
    pub last_ready: Option<Instant>,
    /// Latest byte 5.
    pub last_accepting: Option<Instant>,
    /// Latest byte 17.
    pub last_loyal: Option<Instant>,
    /// Latest byte 26.
    pub last_heartbeat: Option<Instant>,
    /// SIGKILL if no heartbeat before this (armed by the first heartbeat).
    pub heartbeat_deadline: Option<Instant>,
}

/// "No time" in a [`Line`] timestamp.
const NO_TIME: i64 = i64::MIN;

/// What channel bytes read and write for one record, in one 64-byte cache line of a dense
/// table indexed by the record's slot (the low bits of its [`Inc`]): a heartbeat, ready,
/// accepting or loyal byte reads and writes this line and nothing else, so with 10,000 vassals a
/// byte costs one cache line, not a hash lookup plus the ~400-byte [`Vassal`] record. Times are
/// nanoseconds from the core's epoch ([`NO_TIME`] for none).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Line {
    /// The live incarnation of the slot's record (`0`: none); a byte for any other is stale.
    inc: u64,
    /// The record (`VassalId(0)` for a free slot).
    id: VassalId,
    last_heartbeat: i64,
    heartbeat_deadline: i64,
    last_ready: i64,
    last_accepting: i64,
    last_loyal: i64,
    /// `state` is `Running` (kept by [`set_state`]).
    running: bool,
    /// A `Timer::Heartbeat` is queued.
    heartbeat_timer: bool,
    ready: bool,
    accepting: bool,
    loyal: bool,
    /// The process was killed as broken ([`garbage`]): its remaining bytes are dropped.
    ignored: bool,
}

impl Line {
    const fn new(id: VassalId) -> Line {
        Line {
            inc: 0,
            id,
            last_heartbeat: NO_TIME,
            heartbeat_deadline: NO_TIME,
            last_ready: NO_TIME,
            last_accepting: NO_TIME,
            last_loyal: NO_TIME,
            running: false,
            heartbeat_timer: false,
            ready: false,
            accepting: false,
            loyal: false,
            ignored: false,
        }
    }
}

const _: () = assert!(std::mem::size_of::<Line>() == 64);

/// `t` as signed nanoseconds from `epoch` (exact within ±292 years).
fn enc_time(epoch: Instant, t: Instant) -> i64 {
    match t.checked_duration_since(epoch) {
        Some(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        None => {
            let back = epoch.duration_since(t).as_nanos();
            -i64::try_from(back).unwrap_or(i64::MAX)
        }
    }
}

/// The inverse of [`enc_time`]; [`NO_TIME`] is `None`.
fn dec_time(epoch: Instant, n: i64) -> Option<Instant> {
    if n == NO_TIME {
        None
    } else if n >= 0 {
        epoch.checked_add(Duration::from_nanos(n as u64))
    } else {
        epoch.checked_sub(Duration::from_nanos(n.unsigned_abs()))
    }
}

/// Sets a vassal's state and keeps its hot `running` flag in step; leaving `Running` disarms
/// the heartbeat watchdog (the next generation re-arms it with its first heartbeat).
fn set_state(lines: &mut [Line], v: &mut Vassal, state: State) {
    v.state = state;
    let h = &mut lines[v.slot as usize];
    h.running = matches!(state, State::Running { .. });
    if !h.running {
        h.heartbeat_deadline = NO_TIME;
    }
}

/// The plan of one start of `v` as incarnation `inc`.
fn spawn_request(tyrant: bool, v: &Vassal, inc: Inc, run_start_hook: bool) -> SpawnRequest {
    SpawnRequest {
        inc,
        vassal: v.id,
        key: v.key.clone(),
        name: v.spawn_name(),
        monitor: v.monitor,
        content: v.content.clone(),
        creds: tyrant.then_some((v.uid, v.gid)),
        zerg: v.zerg,
        run_start_hook,
    }
}

/// One vassal record.
#[derive(Clone, Debug)]
pub struct Vassal {
    /// Record id.
    pub id: VassalId,
    /// Unique key (absolute path for files).
    pub key: String,
    /// Instance name.
    pub name: String,
    /// Monitor it came from.
    pub monitor: MonitorId,
    /// Stamp of the config last acted on.
    pub stamp: FileStamp,
    /// Content for the config socket, if any.
    pub content: Option<Arc<[u8]>>,
    /// File owner.
    pub uid: u32,
    /// File group.
    pub gid: u32,
    /// Present in the latest scan of its monitor.
    pub wanted: bool,
    /// Lifecycle state.
    pub state: State,
    /// Record creation.
    pub born: Instant,
    /// First start.
    pub first_run: Option<Instant>,
    /// Latest start or reload.
    pub last_run: Option<Instant>,
    /// Its slot in the core's channel table (what channel bytes read and write, see
    /// [`Core::channel`]).
    slot: u32,
    /// Reloads requested (uWSGI's `respawns`).
    pub respawns: u64,
    /// Processes started after the first one.
    pub restarts: u64,
    /// How the previous process ended.
    pub last_exit: Option<ExitKind>,
    /// Retry state.
    pub backoff: Backoff,
    /// Byte-30 (SOS) requests received.
    pub sos: u64,
    /// Unknown bytes received.
    pub unknown_bytes: u64,
    /// Garbage accounting of the current process ([`garbage`]).
    garbage: garbage::Garbage,
    /// The current process was adopted from a fork server (not forked by us).
    pub adopted: bool,
    /// A reload byte was sent to the current process (an adopted one then exits).
    reload_sent: bool,
    /// The on-demand socket (uWSGI's `socket_name`), once bound.
    pub on_demand: Option<String>,
    /// Broodlord: `Some(n)` for the zerg record `NAME:zerg:n`.
    pub zerg: Option<u32>,
    /// Waiting for a `spawn` command (stats `suspended`).
    pub suspended: bool,
    od: activation::OdPhase,
    /// The start hook of the current incarnation is running (its `Spawn` comes after it).
    hook_pending: bool,
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

/// A multiply-rotate hasher (FxHash's) for the core's integer keys: record ids and incarnations
/// are ours and pids come from the kernel, none attacker-chosen, so SipHash's flooding resistance
/// buys nothing on the per-byte path and costs ~10 ns per lookup.
#[derive(Clone, Copy, Debug, Default)]
struct IdHasher(u64);

const ID_HASH_K: u64 = 0x517c_c1b7_2722_0a95;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(ID_HASH_K);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_i32(&mut self, n: i32) {
        self.write_u64(u64::from(n as u32));
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

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
        }
    }

    /// The configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// Every vassal record (unordered).
    pub fn vassals(&self) -> impl Iterator<Item = &Vassal> {
        self.vassals.values()
    }

    /// A vassal by key.
    pub fn vassal(&self, key: &str) -> Option<&Vassal> {
        self.by_key.get(key).and_then(|id| self.vassals.get(id))
    }

    /// A vassal by incarnation.
    pub fn vassal_by_inc(&self, inc: Inc) -> Option<&Vassal> {
        self.id_by_inc(inc).and_then(|id| self.vassals.get(&id))
    }

    /// What the channel bytes of `v` said (a record of this core).
    pub fn channel(&self, v: &Vassal) -> ChannelState {
        let (Some(h), Some(epoch)) = (self.lines.get(v.slot as usize), self.epoch) else {
            return ChannelState::default();
        };
        ChannelState {
            ready: h.ready,
            accepting: h.accepting,
            loyal: h.loyal,
            last_ready: dec_time(epoch, h.last_ready),
            last_accepting: dec_time(epoch, h.last_accepting),
            last_loyal: dec_time(epoch, h.last_loyal),
            last_heartbeat: dec_time(epoch, h.last_heartbeat),
            heartbeat_deadline: dec_time(epoch, h.heartbeat_deadline),
        }
    }

    /// The slot of `inc` while it is its record's live incarnation.
    fn live_slot(&self, inc: Inc) -> Option<usize> {
        let slot = inc.slot();
        self.lines
            .get(slot)
            .is_some_and(|l| l.inc == inc.0 && inc.0 != 0)
            .then_some(slot)
    }

    /// Ends `inc` as its record's live incarnation; its slot, if it was live.
    fn end_inc(&mut self, inc: Inc) -> Option<usize> {
        let slot = self.live_slot(inc)?;
        self.lines[slot].inc = 0;
        Some(slot)
    }

    /// The id of the record whose live incarnation is `inc`.
    fn id_by_inc(&self, inc: Inc) -> Option<VassalId> {
        self.live_slot(inc).map(|slot| self.lines[slot].id)
    }

    /// The name of a record, for log lines ("" if gone).
    fn name_of(&self, id: VassalId) -> &str {
        self.vassals.get(&id).map_or("", |v| v.name.as_str())
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.vassals.len()
    }

    /// True with no records.
    pub fn is_empty(&self) -> bool {
        self.vassals.is_empty()
    }

    /// True once a shutdown started.
    pub fn shutting_down(&self) -> bool {
        self.shutdown.is_some()
    }

    /// The next action to perform.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
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
                Timer::Mercy => self.timer_mercy(),
            }
        }
        self.check_done();
    }

    fn timer(&mut self, at: Instant, t: Timer) {
        self.timers.push(Reverse((at, t)));
    }

    fn rand_unit(&mut self) -> f64 {
        // xorshift64*: deterministic for a given seed, good enough for jitter.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn on_scan(&mut self, now: Instant, monitor: MonitorId, entries: Vec<Entry>) {
        self.tyrant_scanned(monitor, &entries);
        let mut seen: HashSet<VassalId> = HashSet::with_capacity(entries.len());
        for e in entries {
            match self.by_key.get(&e.key).copied() {
                Some(id) => {
                    seen.insert(id);
                    self.on_present(now, id, e);
                }
                None => {
                    if self.shutdown.is_some() || self.tyrant_refuses(monitor, &e) {
                        continue;
                    }
                    if let Some(id) = self.add(now, monitor, e) {
                        seen.insert(id);
                    }
                }
            }
        }
        let gone: Vec<VassalId> = self
            .by_monitor
            .get(&monitor)
            .map(|s| s.difference(&seen).copied().collect())
            .unwrap_or_default();
        for id in gone {
            let Some(v) = self.vassals.get_mut(&id) else {
                continue;
            };
            if v.wanted {
                info!(vassal = %v.name, "config of vassal {} is gone: stopping it", v.name);
            }
            v.wanted = false;
            self.stop(now, id);
        }
    }

    fn on_update(&mut self, now: Instant, monitor: MonitorId, key: &str, entry: Option<Entry>) {
        match (self.by_key.get(key).copied(), entry) {
            (Some(id), Some(e)) => self.on_present(now, id, e),
            (None, Some(e)) => {
                if self.shutdown.is_none() && !self.tyrant_refuses(monitor, &e) {
                    self.add(now, monitor, e);
                }
            }
            (Some(id), None) => {
                let Some(v) = self.vassals.get_mut(&id) else {
                    return;
                };
                if v.monitor != monitor {
                    return;
                }
                if v.wanted {
                    info!(vassal = %v.name, "config of vassal {} is gone: stopping it", v.name);
                }
                v.wanted = false;
                self.stop(now, id);
            }
            (None, None) => self.tyrant_gone(key),
        }
    }

    fn add(&mut self, now: Instant, monitor: MonitorId, e: Entry) -> Option<VassalId> {
        let id = self.insert_record(now, monitor, e)?;
        self.on_added(id);
        self.start(now, id);
        Some(id)
    }

    /// Creates the record of a new vassal (no process yet); `None` (logged) when the core
    /// already holds [`MAX_VASSALS`] records.
    fn insert_record(&mut self, now: Instant, monitor: MonitorId, e: Entry) -> Option<VassalId> {
        let id = VassalId(self.next_id);
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.lines[slot as usize] = Line::new(id);
                slot
            }
            None if self.lines.len() < self.max_vassals => {
                self.lines.push(Line::new(id));
                (self.lines.len() - 1) as u32
            }
            None => {
                error!(vassal = %e.name, "cannot govern vassal {}: the emperor already governs {} vassals, its limit", e.name, self.max_vassals);
                return None;
            }
        };
        self.next_id += 1;
        info!(vassal = %e.name, "new vassal {} detected", e.name);
        self.epoch.get_or_insert(now);
        let v = Vassal {
            id,
            key: e.key.clone(),
            name: e.name,
            monitor,
            stamp: e.stamp,
            content: e.content,
            uid: e.uid,
            gid: e.gid,
            wanted: true,
            state: State::Waiting { at: now },
            born: now,
            first_run: None,
            last_run: None,
            slot,
            respawns: 0,
            restarts: 0,
            last_exit: None,
            backoff: Backoff::default(),
            sos: 0,
            unknown_bytes: 0,
            garbage: garbage::Garbage::default(),
            adopted: false,
            reload_sent: false,
            on_demand: None,
            zerg: None,
            suspended: false,
            od: activation::OdPhase::default(),
            hook_pending: false,
        };
        self.vassals.insert(id, v);
        self.by_key.insert(e.key, id);
        self.by_monitor.entry(monitor).or_default().insert(id);
        Some(id)
    }

    fn on_present(&mut self, now: Instant, id: VassalId, e: Entry) {
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        v.wanted = true;
        if self.tyrant_owner_changed(now, id, &e) {
            return;
        }
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        if v.stamp == e.stamp && v.content == e.content {
            return;
        }
        v.stamp = e.stamp;
        v.content = e.content;
        v.uid = e.uid;
        v.gid = e.gid;
        match v.state {
            State::Running { .. } => self.reload(now, id, "config changed"),
            State::Waiting { .. } | State::Exiled => {
                if self.shutdown.is_some() {
                    return;
                }
                if v.backoff.attempt > 0 {
                    info!(vassal = %v.name, "config of vassal {} changed: lifting its backoff", v.name);
                } else if v.state == State::Exiled {
                    info!(vassal = %v.name, "config of vassal {} changed: ending its exile", v.name);
                }
                v.backoff = Backoff::default();
                self.start(now, id);
            }
            // Restarted with the new config once reaped (it is wanted).
            State::Starting { .. } | State::Stopping { .. } => {}
            // Only recorded: the next activation (or spawn command) uses the new config.
            State::OnDemand | State::Suspended => {
                info!(vassal = %v.name, "updated configuration for {} instance {}", v.state.name(), v.name)
            }
        }
    }

    fn start(&mut self, now: Instant, id: VassalId) {
        if self.shutdown.is_some() {
            return;
        }
        if self.park(now, id) || self.tyrant_blocks_start(id) {
            return;
        }
        let Some(slot) = self.vassals.get(&id).map(|v| v.slot) else {
            return;
        };
        let inc = Inc::new(self.next_inc, slot);
        // Wraps after 2^36 starts, skipping 0 (never a live incarnation).
        self.next_inc = (self.next_inc + 1) & ((1 << Inc::SEQ_BITS) - 1);
        if self.next_inc == 0 {
            self.next_inc = 1;
        }
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        if v.first_run.is_some() {
            v.restarts += 1;
        }
        v.first_run.get_or_insert(now);
        v.last_run = Some(now);
        set_state(&mut self.lines, v, State::Starting { inc });
        let l = &mut self.lines[slot as usize];
        l.ready = false;
        l.accepting = false;
        l.loyal = false;
        l.ignored = false;
        l.inc = inc.0;
        v.adopted = false;
        v.reload_sent = false;
        v.garbage.begin(v.backoff);
        let run_start_hook = self.cfg.start_hook;
        v.hook_pending = run_start_hook;
        let req = spawn_request(self.cfg.tyrant, v, inc, run_start_hook);
        self.actions.push_back(Action::Spawn(req));
    }

    fn on_spawned(&mut self, now: Instant, inc: Inc, pid: i32) {
        let Some(id) = self.id_by_inc(inc) else {
            return;
        };
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        if v.state != (State::Starting { inc }) {
            return;
        }
        set_state(&mut self.lines, v, State::Running { inc, pid });
        self.by_pid.insert(pid, id);
        info!(vassal = %v.name, pid, "started vassal {} (pid: {pid})", v.name);
        if let Some(content) = v.content.clone() {
            self.actions.push_back(Action::PushConfig { inc, content });
        }
        // A start answered asynchronously (fork server) may find its config gone or a shutdown
        // under way.
        if !v.wanted || self.shutdown.is_some() {
            self.stop(now, id);
        }
    }

    /// Marks the process of `inc` as adopted from a fork server (stats `adopted`);
    /// [`Event::Adopted`] does this and [`Event::Spawned`] in one.
    #[doc(hidden)]
    pub fn mark_adopted(&mut self, inc: Inc) {
        if let Some(id) = self.id_by_inc(inc) {
            if let Some(v) = self.vassals.get_mut(&id) {
                v.adopted = true;
            }
        }
    }

    fn on_spawn_failed(&mut self, now: Instant, inc: Inc, reason: &str) {
        let Some(slot) = self.end_inc(inc) else {
            return;
        };
        let id = self.lines[slot].id;
        self.actions.push_back(Action::Release { inc });
        if let Some(v) = self.vassals.get(&id) {
            warn!(vassal = %v.name, "cannot start vassal {}: {reason}", v.name);
        }
        self.failed(now, id, true);
    }

    /// A start that did not end in loyalty: retry after backoff (or drop the record).
    fn failed(&mut self, now: Instant, id: VassalId, spawn_failed: bool) {
        let shutting = self.shutdown.is_some();
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        if shutting || !v.wanted || v.zerg.is_some() {
            self.remove(id);
            return;
        }
        let delay_ms = if self.cfg.no_blacklist {
            self.cfg.freq.as_millis() as u64
        } else {
            let b = &mut v.backoff;
            b.attempt = b.attempt.saturating_add(1);
            b.level_ms = if b.attempt == 1 {
                self.cfg.throttle_ms
            } else {
                b.level_ms.saturating_mul(2)
            }
            .min(self.cfg.max_throttle_ms)
            .max(1);
            b.first.get_or_insert(now);
            b.last = Some(now);
            b.level_ms
        };
        let (attempt, name) = (v.backoff.attempt, v.name.clone());
        // ±10 % jitter so vassals failing together do not retry together.
        let jitter = 0.9 + 0.2 * self.rand_unit();
        let delay = Duration::from_millis(((delay_ms as f64) * jitter).round() as u64);
        let at = now + delay;
        if let Some(v) = self.vassals.get_mut(&id) {
            set_state(&mut self.lines, v, State::Waiting { at });
        }
        if self.cfg.no_blacklist {
            info!(vassal = %name, "vassal {name} will be respawned in {} ms", delay.as_millis());
        } else if spawn_failed {
            warn!(
                vassal = %name,
                attempt,
                "retrying vassal {name} in {} ms (attempt {attempt})",
                delay.as_millis()
            );
        } else {
            warn!(
                vassal = %name,
                attempt,
                "unloyal bad behaving vassal {name}: throttling it, next attempt in {} ms (attempt {attempt})",
                delay.as_millis()
            );
        }
        self.timer(at, Timer::Start(id));
    }

    fn on_message(&mut self, now: Instant, inc: Inc, byte: u8) {
        // The hot path (every worker, every few seconds): heartbeat, ready, accepting and a
        // repeated loyal byte read and write one cache line, the record's `Line` (no hashing,
        // no allocation; the record itself only when a log line is enabled).
        let Some(slot) = self.live_slot(inc) else {
            return;
        };
        let Some(epoch) = self.epoch else {
            return;
        };
        let l = &mut self.lines[slot];
        if l.ignored {
            return;
        }
        let t = enc_time(epoch, now);
        let msg = VassalMsg::from_byte(byte);
        match msg {
            VassalMsg::Heartbeat => {
                l.last_heartbeat = t;
                if l.running {
                    // The same as encoding `now + required` (no overflow in ±292 years).
                    l.heartbeat_deadline = t.saturating_add(self.required_ns);
                    if !l.heartbeat_timer {
                        l.heartbeat_timer = true;
                        let id = l.id;
                        self.timer(now + self.cfg.required_heartbeat, Timer::Heartbeat(id));
                    }
                }
                return;
            }
            VassalMsg::Ready => {
                l.ready = true;
                l.last_ready = t;
                let id = l.id;
                info!(vassal = %self.name_of(id), "vassal {} has been spawned", self.name_of(id));
                return;
            }
            VassalMsg::Accepting => {
                l.accepting = true;
                l.last_accepting = t;
                let id = l.id;
                info!(vassal = %self.name_of(id), "vassal {} is ready to accept requests", self.name_of(id));
                return;
            }
            VassalMsg::Loyal => {
                let first = !l.loyal;
                l.loyal = true;
                l.last_loyal = t;
                let id = l.id;
                // Only the first loyal byte of an incarnation can find a backoff to clear: a
                // backoff is set only by a start that failed, after which the next start clears
                // `loyal`.
                if first {
                    if let Some(v) = self.vassals.get_mut(&id) {
                        if v.backoff.attempt > 0 {
                            info!(vassal = %v.name, "vassal {} removed from the blacklist", v.name);
                        }
                        v.backoff = Backoff::default();
                    }
                }
                info!(vassal = %self.name_of(id), "vassal {} is now loyal", self.name_of(id));
                return;
            }
            _ => {}
        }
        // The rest are rare, but still borrow the name for their log lines: no allocation.
        let id = self.lines[slot].id;
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        match msg {
            VassalMsg::Ready | VassalMsg::Accepting | VassalMsg::Loyal | VassalMsg::Heartbeat => {}
            VassalMsg::ConfigRequest => match &v.content {
                Some(content) => {
                    debug!(vassal = %v.name, "vassal {} asked for its config", v.name);
                    let content = content.clone();
                    self.actions.push_back(Action::PushConfig { inc, content });
                }
                None => {
                    debug!(vassal = %v.name, "vassal {} asked for a config it does not have", v.name)
                }
            },
            VassalMsg::StopMe => self.stop_me(now, id),
            VassalMsg::Sos => self.on_sos(now, id),
            VassalMsg::Unknown(b) => self.on_unknown_byte(now, id, b),
        }
    }

    fn on_channel_closed(&mut self, now: Instant, inc: Inc) {
        let Some(id) = self.id_by_inc(inc) else {
            return;
        };
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        if let State::Running { inc: i, pid } = v.state {
            if i == inc {
                info!(vassal = %v.name, pid, "vassal {} closed its channel: cursing it", v.name);
                self.enter_stopping(now, id, inc, pid, false);
            }
        }
    }

    fn on_reaped(&mut self, now: Instant, pid: i32, exit: ExitKind) {
        let Some(id) = self.by_pid.remove(&pid) else {
            debug!(pid, "reaped pid {pid} ({exit}), not a vassal");
            return;
        };
        let shutting = self.shutdown.is_some();
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        v.last_exit = Some(exit);
        self.lines[v.slot as usize].heartbeat_deadline = NO_TIME;
        if v.zerg.is_some() {
            // A zerg whose process ended is gone for good.
            v.wanted = false;
        }
        let state = v.state;
        if let Some(inc) = state.inc() {
            self.lines[v.slot as usize].inc = 0;
            self.actions.push_back(Action::Release { inc });
        }
        // Ready, accepting and loyal describe the current process: with it gone, nothing
        // serves (the stats and `ctl status` must not say otherwise). Loyalty still decides
        // below whether this death earns a backoff.
        let l = &mut self.lines[v.slot as usize];
        let loyal = l.loyal;
        (l.ready, l.accepting, l.loyal) = (false, false, false);
        let name = v.name.clone();
        let shutting_or_unwanted = shutting || !v.wanted;
        if !shutting_or_unwanted
            && state.pid().is_some()
            && exit != ExitKind::Code(EXILE_CODE)
            && self.reaped_broken(now, id, pid, exit)
        {
            return;
        }
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        match state {
            State::Stopping {
                requested: true, ..
            } => {
                info!(vassal = %name, pid, "vassal {name} (pid: {pid}) stopped ({exit})");
                if shutting || !v.wanted {
                    self.remove(id);
                } else {
                    set_state(&mut self.lines, v, State::Waiting { at: now });
                    self.start(now, id);
                }
            }
            State::Running { .. } | State::Stopping { .. } => {
                if exit == ExitKind::Code(EXILE_CODE) && !shutting && v.wanted {
                    warn!(vassal = %name, pid, "vassal {name} (pid: {pid}) exited with status 26 (exile): it stays down until its config changes");
                    set_state(&mut self.lines, v, State::Exiled);
                } else if shutting || !v.wanted {
                    info!(vassal = %name, pid, "vassal {name} (pid: {pid}) died ({exit})");
                    self.remove(id);
                } else if v.adopted && v.reload_sent {
                    // Adopted vassals cannot re-exec themselves: a reload ends them, and a new
                    // adoption is the reloaded vassal (loyal or not, no backoff).
                    info!(vassal = %name, pid, "adopted vassal {name} (pid: {pid}) exited after a reload ({exit}): starting a new one");
                    self.start(now, id);
                } else if loyal {
                    warn!(vassal = %name, pid, "vassal {name} (pid: {pid}) died unexpectedly ({exit}): respawning it");
                    v.backoff = Backoff::default();
                    self.start(now, id);
                } else {
                    warn!(vassal = %name, pid, "vassal {name} (pid: {pid}) died before being loyal ({exit})");
                    self.failed(now, id, false);
                }
            }
            State::Waiting { .. }
            | State::Starting { .. }
            | State::Exiled
            | State::OnDemand
            | State::Suspended => {}
        }
    }

    fn stop(&mut self, now: Instant, id: VassalId) {
        self.stop_zergs(now, id);
        let msg = if self.cfg.graceful_shutdown {
            EmperorMsg::GracefulStop
        } else {
            EmperorMsg::Stop
        };
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        match v.state {
            State::Running { inc, pid } => {
                info!(vassal = %v.name, pid, "stopping vassal {} (pid: {pid})", v.name);
                self.actions.push_back(Action::Send { inc, msg });
                self.enter_stopping(now, id, inc, pid, true);
            }
            State::Stopping {
                ref mut requested, ..
            } => *requested = true,
            State::Waiting { .. } | State::Exiled | State::OnDemand | State::Suspended => {
                self.remove(id)
            }
            // The runtime answers a spawn before anything else happens.
            State::Starting { .. } => {}
        }
    }

    fn reload(&mut self, now: Instant, id: VassalId, why: &str) {
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        if let State::Running { inc, pid } = v.state {
            info!(vassal = %v.name, pid, "reloading vassal {} ({why})", v.name);
            self.actions.push_back(Action::Send {
                inc,
                msg: EmperorMsg::Reload,
            });
            v.respawns += 1;
            v.reload_sent = true;
            v.last_run = Some(now);
            let l = &mut self.lines[v.slot as usize];
            l.ready = false;
            l.accepting = false;
            // Re-armed by the next heartbeat: a reload legitimately pauses them.
            l.heartbeat_deadline = NO_TIME;
        }
    }

    fn remove(&mut self, id: VassalId) {
        if let Some(v) = self.vassals.remove(&id) {
            info!(vassal = %v.name, "removed uwsgi instance {}", v.name);
            self.forget(&v);
            self.by_key.remove(&v.key);
            if let Some(s) = self.by_monitor.get_mut(&v.monitor) {
                s.remove(&id);
            }
            if let Some(pid) = v.state.pid() {
                self.by_pid.remove(&pid);
            }
            // Queued heartbeat timers find the record gone (ids are never reused); a byte of
            // its last incarnation finds `inc` 0.
            self.lines[v.slot as usize] = Line::new(VassalId(0));
            self.free_slots.push(v.slot);
        }
    }

    fn on_control(&mut self, now: Instant, c: Control) {
        match c {
            Control::Shutdown => {
                if self.shutdown.is_some() {
                    info!("already shutting down");
                    return;
                }
                let deadline = now + self.cfg.reload_mercy;
                self.shutdown = Some(deadline);
                info!(
                    vassals = self.vassals.len(),
                    "RAGNAROK EVOKED: stopping {} vassals",
                    self.vassals.len()
                );
                let ids: Vec<VassalId> = self.vassals.keys().copied().collect();
                for id in ids {
                    self.stop(now, id);
                }
                self.timer(deadline, Timer::Mercy);
            }
            Control::ReloadAll => {
                let ids: Vec<VassalId> = self.vassals.keys().copied().collect();
                for id in ids {
                    self.reload(now, id, "SIGHUP");
                }
            }
            Control::LogStatus => {
                let mut vs: Vec<&Vassal> = self.vassals.values().collect();
                vs.sort_by(|a, b| a.name.cmp(&b.name));
                info!("the Emperor is governing {} vassals", vs.len());
                for v in vs {
                    let ch = self.channel(v);
                    info!(
                        vassal = %v.name,
                        "vassal {} state={} pid={} loyal={} ready={} accepting={} respawns={} restarts={} backoff_attempt={} throttle_ms={}",
                        v.name,
                        v.state.name(),
                        v.state.pid().unwrap_or(-1),
                        ch.loyal,
                        ch.ready,
                        ch.accepting,
                        v.respawns,
                        v.restarts,
                        v.backoff.attempt,
                        v.backoff.level_ms
                    );
                }
            }
            Control::ClearBackoff => {
                info!("clearing the blacklist");
                let ids: Vec<VassalId> = self.vassals.keys().copied().collect();
                for id in ids {
                    let Some(v) = self.vassals.get_mut(&id) else {
                        continue;
                    };
                    v.backoff = Backoff::default();
                    if matches!(v.state, State::Waiting { .. }) {
                        self.start(now, id);
                    }
                }
            }
            Control::Rescan => self.actions.push_back(Action::Rescan),
        }
    }

    fn timer_start(&mut self, now: Instant, id: VassalId) {
        if let Some(v) = self.vassals.get(&id) {
            if let State::Waiting { at } = v.state {
                if at <= now {
                    self.start(now, id);
                }
            }
        }
    }

    /// A running vassal was asked to stop (`requested`) or cursed: SIGKILL after the curse
    /// tolerance unless it is reaped first.
    fn enter_stopping(&mut self, now: Instant, id: VassalId, inc: Inc, pid: i32, requested: bool) {
        let tolerance = self.cfg.curse_tolerance;
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        set_state(
            &mut self.lines,
            v,
            State::Stopping {
                inc,
                pid,
                since: now,
                kill_at: now + tolerance,
                requested,
            },
        );
        self.timer(now + tolerance, Timer::Curse(id));
    }

    fn timer_curse(&mut self, now: Instant, id: VassalId) {
        let tolerance = self.cfg.curse_tolerance;
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        if let State::Stopping {
            pid,
            ref mut kill_at,
            since,
            ..
        } = v.state
        {
            if *kill_at <= now {
                warn!(
                    vassal = %v.name,
                    pid,
                    "vassal {} (pid: {pid}) did not stop within {} s: killing it (SIGKILL)",
                    v.name,
                    now.duration_since(since).as_secs()
                );
                *kill_at = now + tolerance;
                self.actions.push_back(Action::Kill { pid });
                self.timer(now + tolerance, Timer::Curse(id));
            }
        }
    }

    fn timer_heartbeat(&mut self, now: Instant, id: VassalId) {
        let required = self.cfg.required_heartbeat;
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        let (Some(h), Some(epoch)) = (self.lines.get_mut(v.slot as usize), self.epoch) else {
            return;
        };
        h.heartbeat_timer = false;
        let (State::Running { pid, .. }, Some(deadline)) =
            (v.state, dec_time(epoch, h.heartbeat_deadline))
        else {
            return;
        };
        if deadline <= now {
            warn!(
                vassal = %v.name,
                pid,
                "vassal {} sent no heartbeat in the last {} seconds, brutally respawning it",
                v.name,
                required.as_secs()
            );
            h.heartbeat_deadline = NO_TIME;
            self.actions.push_back(Action::Kill { pid });
        } else {
            h.heartbeat_timer = true;
            self.timer(deadline, Timer::Heartbeat(id));
        }
    }

    fn timer_mercy(&mut self) {
        let pids: Vec<(i32, String)> = self
            .vassals
            .values()
            .filter_map(|v| v.state.pid().map(|p| (p, v.name.clone())))
            .collect();
        for (pid, name) in pids {
            warn!(vassal = %name, pid, "reload-mercy expired: killing vassal {name} (pid: {pid})");
            self.actions.push_back(Action::Kill { pid });
        }
    }

    fn check_done(&mut self) {
        if self.shutdown.is_some()
            && !self.exit_sent
            && self.by_pid.is_empty()
            // An asynchronous start (fork server) is answered before the emperor leaves.
            && !self
                .vassals
                .values()
                .any(|v| matches!(v.state, State::Starting { .. }))
        {
            // Nothing left with a process: drop remaining records and leave.
            let ids: Vec<VassalId> = self.vassals.keys().copied().collect();
            for id in ids {
                self.remove(id);
            }
            self.exit_sent = true;
            info!("The Emperor is buried.");
            self.actions.push_back(Action::Exit);
        }
    }
}

mod activation;
mod broodlord;
mod events;
pub mod garbage;
mod tyrant;
pub use activation::{
    ActivationConfig, CommandError, OnDemandAction, OnDemandEvent, VassalCommand,
};
pub use tyrant::{is_root_owned, refusal};

#[cfg(test)]
mod event_tests;
#[cfg(test)]
mod ext_tests;
#[cfg(test)]
mod tests;
