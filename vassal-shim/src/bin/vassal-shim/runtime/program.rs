//! The program's life as the runtime sees it: starting a generation (with settings re-read
//! from their source), reaping, signals to the shim.

use std::ffi::OsString;
use std::time::Instant;

use mio::unix::SourceFd;
use mio::Interest;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tracing::{debug, error, info, warn};
use vassal_shim::core::{Input, ShimSignal};
use vassal_shim::ini::Ini;

use super::{Runtime, Source, DIAG};
use crate::backlog::Watch;
use crate::options::CONFIG_ENV;
use crate::probe;
use crate::sentinel;
use crate::spawn::{self, SpawnSpec};

impl Runtime {
    pub(super) fn reload_settings(&mut self) {
        let text = match &self.source {
            Source::Cli => return,
            Source::File { path, .. } => match crate::read_ini(path) {
                Ok(t) => String::from_utf8_lossy(&t).into_owned(),
                Err(e) => {
                    warn!(
                        "cannot re-read {}: {e}; keeping the previous settings",
                        path.display()
                    );
                    return;
                }
            },
            Source::Pushed { .. } => match self.config.as_ref().and_then(|c| c.latest()) {
                Some(t) => String::from_utf8_lossy(t).into_owned(),
                None => return,
            },
        };
        let section = match &self.source {
            Source::File { section, .. } | Source::Pushed { section } => section.clone(),
            Source::Cli => return,
        };
        let Some(sec) = Ini::parse(&text).section(&section) else {
            warn!("the [{section}] section disappeared; keeping the previous settings");
            return;
        };
        let mut cli = self.cli.clone();
        cli.merge_section(&sec);
        match cli.settings() {
            Ok(s) => self.core.update_settings(s),
            Err(e) => warn!("new settings rejected ({e}); keeping the previous ones"),
        }
    }

    pub(super) fn spawn(&mut self, now: Instant) {
        if self.generation > 0 {
            self.reload_settings();
        }
        self.generation += 1;
        probe::http_request(&self.core.settings().ready, &mut self.probe_request);
        // The program binds its sockets anew: forget what the meter found about the old ones.
        if self.core.settings().sos_backlog.is_some() {
            let watch = self
                .listener_watch
                .clone()
                .or_else(|| Watch::of_ready(&self.core.settings().ready));
            if let Some(fd) = self.meter.set_watch(watch) {
                if let Err(e) =
                    self.poll
                        .registry()
                        .register(&mut SourceFd(&fd), DIAG, Interest::READABLE)
                {
                    warn!("sos-backlog: cannot watch the netlink socket ({e}); backlogs of unix and tcp: listeners will not be measured");
                }
            }
        }
        // Notifications still queued from an earlier generation mean nothing any more.
        let mut junk = [0u8; 512];
        while self.notify.recv(&mut junk).is_ok() {}

        let mut extra: Vec<(OsString, OsString)> = Vec::new();
        extra.push(("NOTIFY_SOCKET".into(), self.notify_path.clone().into()));
        if let Some(w) = self.core.settings().watchdog {
            extra.push(("WATCHDOG_USEC".into(), w.as_micros().to_string().into()));
        }
        if let Some(p) = &self.config_path {
            extra.push((CONFIG_ENV.into(), p.clone().into()));
        }
        if self.listener.is_some() {
            extra.push(("LISTEN_FDS".into(), "1".into()));
            extra.push(("LISTEN_FDNAMES".into(), "emperor".into()));
        }
        if !self.core.settings().fork_base {
            // A fork base's adopted vassals inherit its environment: with the tag the sentinel
            // would kill them, although they belong to the emperor.
            extra.push((sentinel::ENV_INSTANCE.into(), self.tag.clone().into()));
        }
        extra.push((
            "VASSAL_SHIM_GENERATION".into(),
            self.generation.to_string().into(),
        ));
        for (k, v) in &self.core.settings().env {
            extra.push((k.into(), v.into()));
        }
        let spec = SpawnSpec {
            argv: self.core.settings().exec.clone(),
            chdir: self.core.settings().chdir.clone(),
            env: spawn::build_env(&extra),
            listener: self.listener,
        };
        match spawn::spawn(&spec) {
            Ok(p) => {
                info!(
                    "started program {} (generation {}): {:?}",
                    p.pid, self.generation, spec.argv
                );
                self.program = Some(p);
                self.pgid = Some(p.pid);
                if let Some(s) = self.sentinel.as_mut() {
                    s.watch(p.pid);
                }
                self.core.handle(now, Input::Spawned { pid: p.pid });
            }
            Err(e) => {
                error!("cannot start {:?}: {e}", spec.argv);
                self.core.handle(now, Input::SpawnFailed);
            }
        }
    }

    pub(super) fn read_signals(&mut self, now: Instant) {
        loop {
            match self.sigfd.read_signal() {
                Ok(Some(info)) => {
                    let signo = info.ssi_signo as i32;
                    match Signal::try_from(signo) {
                        Ok(Signal::SIGCHLD) => self.reap(now),
                        Ok(Signal::SIGHUP) => {
                            info!("got SIGHUP: reloading");
                            self.core.handle(now, Input::Signal(ShimSignal::Reload));
                        }
                        Ok(s) => {
                            info!("got {s}: stopping");
                            self.core.handle(now, Input::Signal(ShimSignal::Stop));
                        }
                        Err(_) => {}
                    }
                }
                Ok(None) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    warn!("signalfd read failed: {e}");
                    break;
                }
            }
        }
        // SIGCHLD coalesces; reap in any case so no exit is missed.
        self.reap(now);
    }

    pub(super) fn reap(&mut self, now: Instant) {
        let flags = WaitPidFlag::WNOHANG | WaitPidFlag::WUNTRACED | WaitPidFlag::WCONTINUED;
        loop {
            let st = match waitpid(Pid::from_raw(-1), Some(flags)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(st) => st,
            };
            let main = self.program.map(|p| p.pid);
            match st {
                WaitStatus::Exited(pid, code) if Some(pid.as_raw()) == main => {
                    info!("program {pid} exited with code {code}");
                    self.program_gone(now, code);
                }
                WaitStatus::Signaled(pid, sig, _) if Some(pid.as_raw()) == main => {
                    info!("program {pid} was killed by {sig}");
                    self.program_gone(now, 128 + sig as i32);
                }
                WaitStatus::Stopped(pid, sig) if Some(pid.as_raw()) == main => {
                    warn!("program {pid} was stopped by {sig}: no heartbeats until it continues");
                    self.core.handle(now, Input::Stopped);
                }
                WaitStatus::Continued(pid) if Some(pid.as_raw()) == main => {
                    info!("program {pid} continued");
                    self.core.handle(now, Input::Continued);
                }
                other if other.pid().map(Pid::as_raw) == self.sentinel_pid() => {
                    warn!("the sentinel ended unexpectedly: {other:?}");
                    self.sentinel = None;
                }
                other => debug!("reaped {other:?}"),
            }
        }
    }

    pub(super) fn program_gone(&mut self, now: Instant, code: i32) {
        self.program = None;
        if let Some(p) = self.probe.take() {
            p.close(self.poll.registry());
        }
        self.core.handle(now, Input::Exited { code });
    }
}
