//! On-demand (socket-activated) and suspended vassals: the sans-IO side.
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

use super::record::Listener;
use super::{set_state, Action, Core, MonitorId, State, Vassal, VassalId};

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
                if let State::Waiting(w) = &mut v.state {
                    w.suspend = true;
                }
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
        let suspend = match v.state {
            State::Suspended => true,
            State::Waiting(w) => w.suspend,
            _ => false,
        };
        if suspend {
            if v.state != State::Suspended {
                info!(vassal = %v.name, "vassal {} is suspended: waiting for a spawn command", v.name);
            }
            set_state(&mut self.lines, v, State::Suspended);
            return true;
        }
        if !on_demand || v.zerg.is_some() {
            return false;
        }
        match &mut v.listener {
            Listener::Plain => false,
            Listener::Activating(sock) => {
                v.listener = Listener::Bound(std::mem::take(sock));
                false
            }
            Listener::Resolving => {
                set_state(&mut self.lines, v, State::OnDemand);
                true
            }
            Listener::Unresolved => {
                v.listener = Listener::Resolving;
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
            Listener::Bound(sock) => {
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
                if v.listener != Listener::Resolving {
                    return;
                }
                match socket {
                    Some(s) => {
                        info!(vassal = %v.name, socket = %s, "\"on demand\" instance {} detected (socket {s})", v.name);
                        v.listener = Listener::Bound(s);
                    }
                    None => {
                        v.listener = Listener::Plain;
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
                if v.listener != Listener::Resolving {
                    return;
                }
                warn!(vassal = %v.name, "cannot set up the on-demand socket of vassal {}: {reason}", v.name);
                // Looked up again at the next attempt, after the backoff.
                v.listener = Listener::Unresolved;
                if v.state == State::OnDemand {
                    self.failed(now, vassal, true);
                }
            }
            OnDemandEvent::Connection { vassal } => {
                let Some(v) = self.vassals.get_mut(&vassal) else {
                    return;
                };
                let Listener::Bound(sock) = &mut v.listener else {
                    return;
                };
                if v.state != State::OnDemand {
                    return;
                }
                v.listener = Listener::Activating(std::mem::take(sock));
                info!(vassal = %v.name, "connection on the socket of \"on demand\" vassal {}: starting it", v.name);
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
        if v.on_demand().is_some() {
            info!(vassal = %v.name, "bringing back instance {} to on-demand mode", v.name);
        } else {
            info!(vassal = %v.name, "vassal {} asked to be stopped", v.name);
        }
        // A zerg asking to stop is gone for good.
        let gone = v.zerg.is_some();
        self.stop(now, id, gone);
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
        if !matches!(v.listener, Listener::Unresolved | Listener::Plain) {
            self.actions
                .push_back(Action::OnDemand(OnDemandAction::Close { vassal: v.id }));
        }
    }
}
