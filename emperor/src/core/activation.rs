//! On-demand (socket-activated) and suspended vassals, and the per-vassal commands of the
//! command socket: the sans-IO side.
//!
//! Every start of a vassal goes through [`Core::park`] first. A vassal waiting for a `spawn`
//! command is parked as [`State::Suspended`]; with an on-demand option set, a new vassal first
//! has its socket looked up and bound by the runtime ([`OnDemandAction::Resolve`]), then sits in
//! [`State::OnDemand`] until its listener becomes readable ([`OnDemandEvent::Connection`]).
//! Whenever its process ends (byte 22, a crash, a stop) the same path re-arms the listener
//! instead of starting it again; the listener itself lives as long as the record.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use tracing::{info, warn};

use super::{set_state, Action, Backoff, Core, MonitorId, State, Vassal, VassalId};

/// Where a vassal stands with respect to on-demand activation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum OdPhase {
    /// Not looked up yet.
    #[default]
    Unresolved,
    /// No on-demand socket: an ordinary vassal.
    Plain,
    /// The runtime is looking up / binding the socket.
    Resolving,
    /// The listener is bound; starts of the vassal park it instead.
    Bound,
    /// A connection (or a spawn command) asked for the process: the next start goes through.
    Activating,
}

/// Settings of the activation features (uWSGI option names in the field docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActivationConfig {
    /// One of `emperor-on-demand-extension`, `-directory` or `-exec` is set.
    pub on_demand: bool,
    /// `emperor-wait-for-command`: new vassals start suspended.
    pub wait_for_command: bool,
    /// `emperor-wait-for-command-ignore`: instance names that start anyway.
    pub wait_for_command_ignore: HashSet<String>,
    /// `emperor-broodlord`: most zergs at once (0 = off).
    pub broodlord: u32,
}

/// The core's bookkeeping for activation and broodlord.
#[derive(Debug, Default)]
pub(super) struct Ext {
    /// Zergs of each base vassal, by zerg number.
    pub(super) zergs: HashMap<VassalId, BTreeMap<u32, VassalId>>,
    /// Base and number of each zerg.
    pub(super) zerg_base: HashMap<VassalId, (VassalId, u32)>,
}

/// What the runtime does for on-demand vassals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OnDemandAction {
    /// Find the vassal's on-demand socket (extension file, directory or exec command), bind it
    /// and watch it; answer with [`OnDemandEvent::Ready`] or [`OnDemandEvent::Failed`].
    Resolve {
        /// The record.
        vassal: VassalId,
        /// Its key (absolute config path for files).
        key: String,
        /// Its instance name.
        name: String,
        /// Its monitor (decides the working directory of an exec command).
        monitor: MonitorId,
    },
    /// Watch the (already bound) listener again: the vassal is back to on-demand.
    Arm {
        /// The record.
        vassal: VassalId,
    },
    /// The record is gone: close the listener (and abandon a pending lookup).
    Close {
        /// The record.
        vassal: VassalId,
    },
}

/// What the runtime reports about on-demand vassals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OnDemandEvent {
    /// The lookup finished: `Some(socket)` is bound and watched; `None` means the vassal has
    /// no on-demand socket and runs as an ordinary vassal.
    Ready {
        /// The record.
        vassal: VassalId,
        /// The socket name.
        socket: Option<String>,
    },
    /// The socket could not be found or bound (the reason says what to fix).
    Failed {
        /// The record.
        vassal: VassalId,
        /// Why.
        reason: String,
    },
    /// The listener became readable (the runtime stopped watching it).
    Connection {
        /// The record.
        vassal: VassalId,
    },
}

/// A per-vassal command (command socket, `emperor ctl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VassalCommand {
    /// Start a suspended or on-demand vassal now.
    Spawn,
    /// Reload a running vassal (byte 1).
    Respawn,
    /// Stop the process and keep the vassal suspended until a `spawn`.
    Stop,
    /// Lift the vassal's backoff (and exile): it starts at once if it was waiting.
    Reset,
}

/// Why a per-vassal command did nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandError {
    /// No vassal has this instance name or key.
    NoSuchVassal {
        /// The name asked for.
        name: String,
    },
    /// Several vassals have this instance name: the key tells them apart.
    Ambiguous {
        /// The name asked for.
        name: String,
        /// The keys of the vassals so named, sorted.
        keys: Vec<String>,
    },
    /// The vassal is being started (its start is answered asynchronously).
    Starting {
        /// The vassal.
        name: String,
    },
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandError::NoSuchVassal { name } => write!(f, "no vassal named {name}"),
            CommandError::Ambiguous { name, keys } => write!(
                f,
                "{} vassals are named {name}: give the config path instead ({})",
                keys.len(),
                keys.join(", ")
            ),
            CommandError::Starting { name } => {
                write!(f, "vassal {name} is starting: stop it once it runs")
            }
        }
    }
}

impl std::error::Error for CommandError {}

impl VassalCommand {
    /// The command's name (what `emperor ctl` and the command socket call it).
    pub fn as_str(self) -> &'static str {
        match self {
            VassalCommand::Spawn => "spawn",
            VassalCommand::Respawn => "respawn",
            VassalCommand::Stop => "stop",
            VassalCommand::Reset => "reset",
        }
    }

    /// Parses a command name (`spawn`, `respawn`/`reload`, `stop`, `reset`).
    pub fn parse(s: &str) -> Option<VassalCommand> {
        Some(match s {
            "spawn" | "start" => VassalCommand::Spawn,
            "respawn" | "reload" => VassalCommand::Respawn,
            "stop" => VassalCommand::Stop,
            "reset" => VassalCommand::Reset,
            _ => return None,
        })
    }
}

impl Vassal {
    /// The name given to uWSGI: zerg `app.ini:zerg:2` runs as `--ini app.ini:zerg` (the
    /// `[zerg]` section of `app.ini`).
    pub fn spawn_name(&self) -> String {
        match (self.zerg, self.name.rsplit_once(':')) {
            (Some(_), Some((base, _))) => base.to_string(),
            _ => self.name.clone(),
        }
    }
}

impl Core {
    /// Enables on-demand, wait-for-command and broodlord (before the first scan);
    /// [`CoreConfig::activation`](super::CoreConfig::activation) does the same.
    #[doc(hidden)]
    pub fn set_activation(&mut self, cfg: ActivationConfig) {
        self.cfg.activation = cfg;
    }

    /// The activation settings.
    pub fn activation(&self) -> &ActivationConfig {
        &self.cfg.activation
    }

    /// A new record: decide whether it waits for a command.
    pub(super) fn on_added(&mut self, id: VassalId) {
        let cfg = &self.cfg.activation;
        if !cfg.wait_for_command {
            return;
        }
        if let Some(v) = self.vassals.get_mut(&id) {
            if !cfg.wait_for_command_ignore.contains(&v.name) {
                info!(vassal = %v.name, "\"wait-for-command\" instance {} detected", v.name);
                v.suspended = true;
            }
        }
    }

    /// Called at the top of every start: true when the vassal was parked instead (suspended,
    /// or on demand) and no process must be started.
    pub(super) fn park(&mut self, _now: Instant, id: VassalId) -> bool {
        let on_demand = self.cfg.activation.on_demand;
        let Some(v) = self.vassals.get_mut(&id) else {
            return false;
        };
        if v.suspended {
            if v.state != State::Suspended {
                info!(vassal = %v.name, "vassal {} is suspended: waiting for a spawn command", v.name);
            }
            set_state(&mut self.lines, v, State::Suspended);
            return true;
        }
        if !on_demand || v.zerg.is_some() {
            return false;
        }
        match v.od {
            OdPhase::Plain => false,
            OdPhase::Activating => {
                v.od = OdPhase::Bound;
                false
            }
            OdPhase::Resolving => {
                set_state(&mut self.lines, v, State::OnDemand);
                true
            }
            OdPhase::Unresolved => {
                v.od = OdPhase::Resolving;
                set_state(&mut self.lines, v, State::OnDemand);
                self.actions
                    .push_back(Action::OnDemand(OnDemandAction::Resolve {
                        vassal: id,
                        key: v.key.clone(),
                        name: v.name.clone(),
                        monitor: v.monitor,
                    }));
                true
            }
            OdPhase::Bound => {
                let sock = v.on_demand.as_deref().unwrap_or("");
                info!(vassal = %v.name, "vassal {} back to \"on demand\" mode (socket {sock})", v.name);
                set_state(&mut self.lines, v, State::OnDemand);
                let l = &mut self.lines[v.slot as usize];
                l.ready = false;
                l.accepting = false;
                self.actions
                    .push_back(Action::OnDemand(OnDemandAction::Arm { vassal: id }));
                true
            }
        }
    }

    pub(super) fn on_demand_event(&mut self, now: Instant, ev: super::OnDemandEvent) {
        match ev {
            OnDemandEvent::Ready { vassal, socket } => {
                let Some(v) = self.vassals.get_mut(&vassal) else {
                    return;
                };
                if v.od != OdPhase::Resolving {
                    return;
                }
                match socket {
                    Some(s) => {
                        info!(vassal = %v.name, socket = %s, "\"on demand\" instance {} detected (socket {s})", v.name);
                        v.on_demand = Some(s);
                        v.od = OdPhase::Bound;
                    }
                    None => {
                        v.od = OdPhase::Plain;
                        if v.state == State::OnDemand {
                            self.start(now, vassal);
                        }
                    }
                }
            }
            OnDemandEvent::Failed { vassal, reason } => {
                let Some(v) = self.vassals.get_mut(&vassal) else {
                    return;
                };
                if v.od != OdPhase::Resolving {
                    return;
                }
                warn!(vassal = %v.name, "cannot set up the on-demand socket of vassal {}: {reason}", v.name);
                // Looked up again at the next attempt, after the backoff.
                v.od = OdPhase::Unresolved;
                v.on_demand = None;
                if v.state == State::OnDemand {
                    self.failed(now, vassal, true);
                }
            }
            OnDemandEvent::Connection { vassal } => {
                let Some(v) = self.vassals.get_mut(&vassal) else {
                    return;
                };
                if v.state != State::OnDemand || v.od != OdPhase::Bound {
                    return;
                }
                info!(vassal = %v.name, "connection on the socket of \"on demand\" vassal {}: starting it", v.name);
                v.od = OdPhase::Activating;
                self.start(now, vassal);
            }
        }
    }

    /// Byte 22: an on-demand vassal goes back to on-demand, any other one is stopped (and,
    /// as a file vassal, started again; a zerg is gone for good).
    pub(super) fn stop_me(&mut self, now: Instant, id: VassalId) {
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        if v.on_demand.is_some() {
            info!(vassal = %v.name, "bringing back instance {} to on-demand mode", v.name);
        } else {
            info!(vassal = %v.name, "vassal {} asked to be stopped", v.name);
        }
        if v.zerg.is_some() {
            v.wanted = false;
        }
        self.stop(now, id);
    }

    /// The record is being dropped: close its listener, forget it as a zerg.
    pub(super) fn forget(&mut self, v: &Vassal) {
        if let Some((base, n)) = self.ext.zerg_base.remove(&v.id) {
            if let Some(m) = self.ext.zergs.get_mut(&base) {
                m.remove(&n);
                if m.is_empty() {
                    self.ext.zergs.remove(&base);
                }
            }
        }
        if matches!(
            v.od,
            OdPhase::Resolving | OdPhase::Bound | OdPhase::Activating
        ) {
            self.actions
                .push_back(Action::OnDemand(OnDemandAction::Close { vassal: v.id }));
        }
    }

    /// The vassal whose instance name (or key) is `name`.
    fn find(&self, name: &str) -> Result<VassalId, CommandError> {
        if let Some(&id) = self.by_key.get(name) {
            return Ok(id);
        }
        let mut found: Vec<&Vassal> = self.vassals.values().filter(|v| v.name == name).collect();
        match found.len() {
            0 => Err(CommandError::NoSuchVassal {
                name: name.to_string(),
            }),
            1 => Ok(found[0].id),
            _ => {
                found.sort_by(|a, b| a.key.cmp(&b.key));
                Err(CommandError::Ambiguous {
                    name: name.to_string(),
                    keys: found.iter().map(|v| v.key.clone()).collect(),
                })
            }
        }
    }

    /// Applies a per-vassal command to the vassal named (or keyed) `name`; returns what
    /// happened (logged), or why nothing did (not logged: the caller does).
    #[doc(hidden)]
    pub fn command(
        &mut self,
        now: Instant,
        cmd: VassalCommand,
        name: &str,
    ) -> Result<String, String> {
        self.run_command(now, cmd, name).map_err(|e| e.to_string())
    }

    /// [`Core::command`] with a typed error.
    pub(super) fn run_command(
        &mut self,
        now: Instant,
        cmd: VassalCommand,
        name: &str,
    ) -> Result<String, CommandError> {
        let id = self.find(name)?;
        let Some(v) = self.vassals.get_mut(&id) else {
            return Err(CommandError::NoSuchVassal {
                name: name.to_string(),
            });
        };
        let vname = v.name.clone();
        let out = match cmd {
            VassalCommand::Spawn => {
                v.suspended = false;
                match v.state {
                    State::Suspended | State::Exiled => {
                        v.backoff = Backoff::default();
                        self.start(now, id);
                        format!("starting vassal {vname}")
                    }
                    State::OnDemand if v.od == OdPhase::Bound => {
                        v.od = OdPhase::Activating;
                        self.start(now, id);
                        format!("starting \"on demand\" vassal {vname}")
                    }
                    State::Waiting { .. } => {
                        v.backoff = Backoff::default();
                        self.start(now, id);
                        format!("starting vassal {vname} (backoff lifted)")
                    }
                    s => format!("vassal {vname} is already {}", s.name()),
                }
            }
            VassalCommand::Respawn => match v.state {
                State::Running { .. } => {
                    self.reload(now, id, "command");
                    format!("reloading vassal {vname}")
                }
                s => format!("vassal {vname} is {}: nothing to reload", s.name()),
            },
            VassalCommand::Stop => {
                v.suspended = true;
                match v.state {
                    State::Running { .. } | State::Stopping { .. } => {
                        self.stop(now, id);
                        format!("stopping vassal {vname}: it stays suspended until a spawn command")
                    }
                    State::Suspended => format!("vassal {vname} is already suspended"),
                    State::Starting { .. } => {
                        // Its start is being answered (fork server): never lose that process.
                        v.suspended = false;
                        return Err(CommandError::Starting { name: vname });
                    }
                    _ => {
                        set_state(&mut self.lines, v, State::Suspended);
                        format!("vassal {vname} suspended until a spawn command")
                    }
                }
            }
            VassalCommand::Reset => {
                let had = v.backoff.attempt;
                v.backoff = Backoff::default();
                match v.state {
                    State::Waiting { .. } | State::Exiled => {
                        self.start(now, id);
                        format!("backoff of vassal {vname} lifted (was attempt {had}): starting it")
                    }
                    _ => format!("backoff of vassal {vname} lifted (was attempt {had})"),
                }
            }
        };
        info!(vassal = %vname, "{out}");
        self.check_done();
        Ok(out)
    }
}
