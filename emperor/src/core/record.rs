//! One vassal record: its lifecycle [`State`], its counters, and the 64-byte [`Line`] of the
//! channel table that the per-byte path reads and writes.

use super::*;
use serde_json::json;

/// The data each [`State`] carries.
pub mod state {
    use std::time::Instant;

    use super::Inc;

    /// Not running; (re)started at `at`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Waiting {
        /// When (backoff, or a pending start).
        pub at: Instant,
        /// It waits for a `spawn` command (wait-for-command, or a stop command): at `at` it is
        /// suspended instead of started.
        pub suspend: bool,
    }

    /// Spawn requested, pid not known yet.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Starting {
        /// Incarnation.
        pub inc: Inc,
        /// Its start hook runs first: the spawn is asked for again once it exits.
        pub hook_pending: bool,
        /// A fork server answers this start: the process is adopted, not forked by us.
        pub adopted: bool,
        /// Its config went away meanwhile: stopped as soon as it runs, never restarted.
        pub gone: bool,
    }

    /// A process runs.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Running {
        /// Incarnation.
        pub inc: Inc,
        /// Pid.
        pub pid: i32,
        /// Adopted from a fork server (not forked by us).
        pub adopted: bool,
        /// A reload byte was sent to it (an adopted process then exits instead of re-exec).
        pub reload_sent: bool,
    }

    /// Asked to stop (or its channel closed); SIGKILLed at `kill_at` if still alive.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Stopping {
        /// The process being stopped.
        pub process: Running,
        /// When it was cursed.
        pub since: Instant,
        /// When it gets SIGKILL.
        pub kill_at: Instant,
        /// True when we asked for it (stop byte), false when the channel closed on its own.
        pub requested: bool,
        /// Its config is gone (or it is a zerg told to go): not restarted once reaped.
        pub gone: bool,
        /// A stop command: suspended once reaped, until a `spawn` command.
        pub suspend: bool,
    }
}

/// Where a vassal is in its life; the variants with a process (or a start under way) carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Not running; started again at a given time (backoff, or a pending start).
    Waiting(state::Waiting),
    /// Spawn requested, pid not known yet.
    Starting(state::Starting),
    /// Running.
    Running(state::Running),
    /// Asked to stop (or its channel closed); SIGKILLed after the curse tolerance.
    Stopping(state::Stopping),
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
            State::Waiting(_) => "waiting",
            State::Starting(_) => "starting",
            State::Running(_) => "running",
            State::Stopping(_) => "stopping",
            State::Exiled => "exiled",
            State::OnDemand => "on-demand",
            State::Suspended => "suspended",
        }
    }

    /// The process, when one exists.
    pub fn process(&self) -> Option<&state::Running> {
        match self {
            State::Running(r) | State::Stopping(state::Stopping { process: r, .. }) => Some(r),
            _ => None,
        }
    }

    /// The pid, when a process exists.
    pub fn pid(&self) -> Option<i32> {
        self.process().map(|p| p.pid)
    }

    /// The incarnation, while a start is under way or a process exists.
    pub fn inc(&self) -> Option<Inc> {
        match self {
            State::Starting(s) => Some(s.inc),
            _ => self.process().map(|p| p.inc),
        }
    }

    /// A new start of incarnation `inc`.
    pub(super) fn starting(inc: Inc, hook_pending: bool) -> State {
        State::Starting(state::Starting {
            inc,
            hook_pending,
            adopted: false,
            gone: false,
        })
    }

    /// Its config is gone (`true`) or back (`false`): decides whether the process under way is
    /// restarted once it ends. Only a start under way or a stopping process can be gone; in any
    /// other state a gone config stops or drops the record at once.
    pub(super) fn set_gone(&mut self, gone: bool) {
        match self {
            State::Starting(state::Starting { gone: g, .. })
            | State::Stopping(state::Stopping { gone: g, .. }) => *g = gone,
            _ => {}
        }
    }

    /// Waiting until `at`.
    pub(super) fn waiting(at: Instant) -> State {
        State::Waiting(state::Waiting { at, suspend: false })
    }
}

/// Where a vassal stands with respect to on-demand activation; the listener lives as long as
/// the record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) enum Listener {
    /// Not looked up yet.
    #[default]
    Unresolved,
    /// No on-demand socket: an ordinary vassal.
    Plain,
    /// The runtime is looking up / binding the socket.
    Resolving,
    /// The listener of this socket is bound; starts of the vassal park it instead.
    Bound(String),
    /// A connection (or a spawn command) asked for the process: the next start goes through.
    Activating(String),
}

impl Listener {
    /// The bound socket's name.
    pub(super) fn socket(&self) -> Option<&str> {
        match self {
            Listener::Bound(s) | Listener::Activating(s) => Some(s),
            _ => None,
        }
    }
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
pub(super) const NO_TIME: i64 = i64::MIN;

/// What channel bytes read and write for one record, in one 64-byte cache line of a dense
/// table indexed by the record's slot (the low bits of its [`Inc`]): a heartbeat, ready,
/// accepting or loyal byte reads and writes this line and nothing else, so with 10,000 vassals a
/// byte costs one cache line, not a hash lookup plus the ~400-byte [`Vassal`] record. Times are
/// nanoseconds from the core's epoch ([`NO_TIME`] for none).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub(super) struct Line {
    /// The live incarnation of the slot's record (`0`: none); a byte for any other is stale.
    pub(super) inc: u64,
    /// The record (`VassalId(0)` for a free slot).
    pub(super) id: VassalId,
    pub(super) last_heartbeat: i64,
    pub(super) heartbeat_deadline: i64,
    pub(super) last_ready: i64,
    pub(super) last_accepting: i64,
    pub(super) last_loyal: i64,
    /// `state` is `Running` (kept by [`set_state`]).
    pub(super) running: bool,
    /// A `Timer::Heartbeat` is queued.
    pub(super) heartbeat_timer: bool,
    pub(super) ready: bool,
    pub(super) accepting: bool,
    pub(super) loyal: bool,
    /// The process was killed as broken ([`garbage`]): its remaining bytes are dropped.
    pub(super) ignored: bool,
}

impl Line {
    pub(super) const fn new(id: VassalId) -> Line {
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
pub(super) fn enc_time(epoch: Instant, t: Instant) -> i64 {
    match t.checked_duration_since(epoch) {
        Some(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        None => {
            let back = epoch.duration_since(t).as_nanos();
            -i64::try_from(back).unwrap_or(i64::MAX)
        }
    }
}

/// The inverse of [`enc_time`]; [`NO_TIME`] is `None`.
pub(super) fn dec_time(epoch: Instant, n: i64) -> Option<Instant> {
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
pub(super) fn set_state(lines: &mut [Line], v: &mut Vassal, state: State) {
    v.state = state;
    let h = &mut lines[v.slot as usize];
    h.running = matches!(state, State::Running(_));
    if !h.running {
        h.heartbeat_deadline = NO_TIME;
    }
}

/// The plan of one start of `v` as incarnation `inc`.
pub(super) fn spawn_request(
    tyrant: bool,
    v: &Vassal,
    inc: Inc,
    run_start_hook: bool,
) -> SpawnRequest {
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
    pub(super) slot: u32,
    /// Reloads requested (uWSGI's `respawns`).
    pub respawns: u64,
    /// Processes started after the first one.
    pub restarts: u64,
    /// How the previous process ended.
    pub last_exit: Option<ExitKind>,
    /// Process ends by how they ended (exit code or signal), in first-seen order.
    pub exits: Vec<(ExitKind, u64)>,
    /// Retry state.
    pub backoff: Backoff,
    /// Byte-30 (SOS) requests received.
    pub sos: u64,
    /// Unknown bytes received.
    pub unknown_bytes: u64,
    /// Garbage accounting of the current process ([`garbage`]).
    pub(super) garbage: garbage::Garbage,
    /// Broodlord: `Some(n)` for the zerg record `NAME:zerg:n`.
    pub zerg: Option<u32>,
    /// On-demand activation and its listener.
    pub(super) listener: Listener,
}

impl Vassal {
    /// Waiting for a `spawn` command (stats `suspended`): suspended, or on its way there.
    pub fn suspended(&self) -> bool {
        match self.state {
            State::Suspended => true,
            State::Waiting(state::Waiting { suspend, .. })
            | State::Stopping(state::Stopping { suspend, .. }) => suspend,
            _ => false,
        }
    }

    /// Its config is present (it is restarted when its process ends).
    pub fn wanted(&self) -> bool {
        match self.state {
            State::Starting(state::Starting { gone, .. })
            | State::Stopping(state::Stopping { gone, .. }) => !gone,
            _ => true,
        }
    }

    /// The current process (or the start under way) is adopted from a fork server.
    pub fn adopted(&self) -> bool {
        match &self.state {
            State::Starting(s) => s.adopted,
            s => s.process().is_some_and(|p| p.adopted),
        }
    }

    /// The on-demand socket (uWSGI's `socket_name`), once bound.
    pub fn on_demand(&self) -> Option<&str> {
        self.listener.socket()
    }
}

/// Emperor-wide event counts since the emperor started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Starts requested (an [`Action::Spawn`] each).
    pub spawns: u64,
    /// Starts that failed ([`Event::SpawnFailed`]).
    pub spawn_failures: u64,
    /// Reloads requested (byte 1 sent).
    pub reloads: u64,
}

impl Vassal {
    /// Counts one more process end of this kind.
    pub(super) fn count_exit(&mut self, exit: ExitKind) {
        match self.exits.iter_mut().find(|(k, _)| *k == exit) {
            Some((_, n)) => *n += 1,
            None => self.exits.push((exit, 1)),
        }
    }
}

impl Core {
    /// The emperor-wide counters.
    pub fn counters(&self) -> Counters {
        self.counters
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
    pub(super) fn live_slot(&self, inc: Inc) -> Option<usize> {
        let slot = inc.slot();
        self.lines
            .get(slot)
            .is_some_and(|l| l.inc == inc.0 && inc.0 != 0)
            .then_some(slot)
    }

    /// Ends `inc` as its record's live incarnation; its slot, if it was live.
    pub(super) fn end_inc(&mut self, inc: Inc) -> Option<usize> {
        let slot = self.live_slot(inc)?;
        self.lines[slot].inc = 0;
        Some(slot)
    }

    /// The id of the record whose live incarnation is `inc`.
    pub(super) fn id_by_inc(&self, inc: Inc) -> Option<VassalId> {
        self.live_slot(inc).map(|slot| self.lines[slot].id)
    }

    /// The name of a record, for log lines ("" if gone).
    pub(super) fn name_of(&self, id: VassalId) -> &str {
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

    /// Creates the record of a new vassal (no process yet); `None` (logged) when the core
    /// already holds [`MAX_VASSALS`] records.
    pub(super) fn insert_record(
        &mut self,
        now: Instant,
        monitor: MonitorId,
        e: Entry,
    ) -> Option<VassalId> {
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
                let reason = json!(format!("vassal limit {} reached", self.max_vassals));
                self.notes
                    .push(now, &e.name, "config_error", vec![("reason", reason)]);
                return None;
            }
        };
        self.next_id += 1;
        info!(vassal = %e.name, "new vassal {} detected", e.name);
        self.notes
            .push(now, &e.name, "detected", vec![("key", json!(e.key))]);
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
            state: State::waiting(now),
            born: now,
            first_run: None,
            last_run: None,
            slot,
            respawns: 0,
            restarts: 0,
            last_exit: None,
            exits: Vec::new(),
            backoff: Backoff::default(),
            sos: 0,
            unknown_bytes: 0,
            garbage: garbage::Garbage::default(),
            zerg: None,
            listener: Listener::default(),
        };
        self.vassals.insert(id, v);
        self.by_key.insert(e.key, id);
        self.by_monitor.entry(monitor).or_default().insert(id);
        Some(id)
    }

    pub(super) fn remove(&mut self, id: VassalId) {
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
}
