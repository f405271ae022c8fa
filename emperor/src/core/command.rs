//! Per-vassal commands (the command socket, `emperor ctl`): `spawn`, `respawn`, `stop` and
//! `reset`, applied to the vassal named (or keyed) in the command.

use super::record::Listener;
use super::*;

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

impl Core {
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

    /// Applies a per-vassal command ([`Event::Command`]) to the vassal named (or keyed)
    /// `name`; returns what happened (logged), or why nothing did (not logged: the caller
    /// does).
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
                match &mut v.state {
                    State::Waiting(state::Waiting { suspend, .. })
                    | State::Stopping(state::Stopping { suspend, .. }) => *suspend = false,
                    _ => {}
                }
                match v.state {
                    State::Suspended | State::Exiled => {
                        v.backoff = Backoff::default();
                        set_state(&mut self.lines, v, State::waiting(now));
                        self.start(now, id);
                        format!("starting vassal {vname}")
                    }
                    State::OnDemand if matches!(v.listener, Listener::Bound(_)) => {
                        if let Listener::Bound(sock) = &mut v.listener {
                            v.listener = Listener::Activating(std::mem::take(sock));
                        }
                        self.start(now, id);
                        format!("starting \"on demand\" vassal {vname}")
                    }
                    State::Waiting(_) => {
                        v.backoff = Backoff::default();
                        self.start(now, id);
                        format!("starting vassal {vname} (backoff lifted)")
                    }
                    s => format!("vassal {vname} is already {}", s.name()),
                }
            }
            VassalCommand::Respawn => match v.state {
                State::Running(_) => {
                    self.reload(now, id, "command");
                    format!("reloading vassal {vname}")
                }
                s => format!("vassal {vname} is {}: nothing to reload", s.name()),
            },
            VassalCommand::Stop => {
                match v.state {
                    State::Running(_) | State::Stopping(_) => {
                        self.stop(now, id, false);
                        if let Some(State::Stopping(s)) =
                            self.vassals.get_mut(&id).map(|v| &mut v.state)
                        {
                            s.suspend = true;
                        }
                        format!("stopping vassal {vname}: it stays suspended until a spawn command")
                    }
                    State::Suspended => format!("vassal {vname} is already suspended"),
                    State::Starting(_) => {
                        // Its start is being answered (fork server): never lose that process.
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
                    State::Waiting(_) | State::Exiled => {
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
