//! Inputs that are not about one config or one channel byte: signals, our own emperor's
//! channel (sub-emperor mode), per-vassal commands, fork-server adoptions and start hooks.

use std::time::Instant;

use tracing::{info, warn};
use uwsgi_proto::EmperorMsg;

use super::garbage::{WARN_BURST, WARN_INTERVAL};
use super::tyrant::is_root_owned;
use super::{spawn_request, Action, Control, Core, Inc, SpawnFailure, State, VassalCommand};

impl Core {
    /// What a signal asks of the core: INT/TERM/QUIT shut down, HUP reloads every vassal,
    /// USR1 logs the status, URG clears every backoff, WINCH rescans; any other (SIGCHLD
    /// included, which the runtime answers by reaping) is `None`.
    pub fn signal_control(sig: i32) -> Option<Control> {
        Some(match sig {
            libc::SIGINT | libc::SIGTERM | libc::SIGQUIT => Control::Shutdown,
            libc::SIGHUP => Control::ReloadAll,
            libc::SIGUSR1 => Control::LogStatus,
            libc::SIGURG => Control::ClearBackoff,
            libc::SIGWINCH => Control::Rescan,
            _ => return None,
        })
    }

    /// Byte `b` from our own emperor.
    pub(super) fn on_from_emperor(&mut self, now: Instant, b: u8) {
        let control = match EmperorMsg::from_byte(b) {
            EmperorMsg::Stop | EmperorMsg::GracefulStop => {
                info!("received message {b} from my emperor: stopping");
                Control::Shutdown
            }
            EmperorMsg::Reload => {
                info!("received message 1 from my emperor: reloading every vassal");
                Control::ReloadAll
            }
            EmperorMsg::Unknown(_) => {
                info!("received message {b} from my emperor: ignored");
                return;
            }
        };
        self.on_control(now, control);
    }

    /// The channel to our own emperor is gone.
    pub(super) fn on_emperor_gone(&mut self, now: Instant) {
        warn!("lost connection with my emperor: stopping");
        self.on_control(now, Control::Shutdown);
    }

    /// A per-vassal command: success is logged by [`Core::run_command`], a failure here, at most
    /// [`WARN_BURST`] lines per [`WARN_INTERVAL`] (the next line counts the rest).
    pub(super) fn on_command(&mut self, now: Instant, cmd: VassalCommand, name: &str) {
        let Err(e) = self.run_command(now, cmd, name) else {
            return;
        };
        if let Some(more) = self.command_warn.hit(now, WARN_INTERVAL, WARN_BURST) {
            let tail = if more == 0 {
                String::new()
            } else {
                format!(
                    " ({more} more like it not logged in the last {} s)",
                    WARN_INTERVAL.as_secs()
                )
            };
            warn!(
                "command socket: {}{tail}",
                crate::sanitize::esc(&format!("{}: {e}", cmd.as_str()))
            );
        }
    }

    /// A fork server started `inc` as `pid`, adopted by the emperor.
    pub(super) fn on_adopted(&mut self, now: Instant, inc: Inc, pid: i32) {
        self.mark_adopted(inc);
        self.on_spawned(now, inc, pid);
    }

    /// The start hook of `inc` exited: start it, unless that is no longer wanted.
    pub(super) fn on_start_hook_done(&mut self, now: Instant, inc: Inc) {
        let Some(id) = self.id_by_inc(inc) else {
            return;
        };
        let shutting = self.shutdown.is_some();
        let tyrant = self.cfg.tyrant;
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        let State::Starting(s) = &mut v.state else {
            return;
        };
        if s.inc != inc || !s.hook_pending {
            return;
        }
        s.hook_pending = false;
        let gone = s.gone;
        let reason = if shutting {
            SpawnFailure::ShuttingDown
        } else if gone {
            SpawnFailure::ConfigGone
        } else if tyrant && is_root_owned(v.uid, v.gid) {
            // Chowned to root while its hook ran.
            SpawnFailure::RootOwned {
                name: v.name.clone(),
                key: v.key.clone(),
                uid: v.uid,
                gid: v.gid,
            }
        } else {
            let req = spawn_request(tyrant, v, inc, false);
            self.actions.push_back(Action::Spawn(req));
            return;
        };
        self.on_spawn_failed(now, inc, &reason);
    }
}
