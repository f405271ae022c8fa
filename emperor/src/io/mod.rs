//! The one-thread `mio` loop: performs the core's actions and feeds it events.
//!
//! Every source (see [`sources::Sources`]) owns its tokens through the one registry
//! ([`registry::Tokens`]); a readiness event goes to the source that owns its token, which
//! reports [`Output`]s, and the loop routes them: events to the core, started processes to the
//! channels, process tree and hooks, reaps to the reaper. Per turn: the core's actions (at most
//! [`SPAWN_BATCH`] starts), the poll, the channels whose read budget ran out last turn, the
//! stats connections left queued, reaping, the fork server, then the timers.

pub mod addr;
pub mod channels;
pub mod children;
pub mod command;
pub mod error;
pub mod executor;
pub mod forkserver;
pub mod hooks;
pub mod http;
pub mod monitors;
pub mod notify;
pub mod ondemand;
pub mod parent;
pub mod registry;
pub mod signals;
pub mod source;
pub mod sources;
pub mod stats;

mod act;
#[cfg(test)]
pub(crate) mod test_loop;
mod turn;

use std::time::Instant;

use mio::Poll;
use tracing::{info, warn};

pub use error::RunError;
use registry::Tokens;
use source::{Cx, Output};
use sources::Sources;

use crate::config::options::Options;
use crate::core::Core;

/// Starts performed per turn of the event loop. Each start waits for its child's `execve` (a
/// few ms when hundreds of vassals start at once on a busy machine), so a directory of hundreds
/// of new configs would otherwise keep the loop from channels, signals and the stats socket
/// until the last one has started.
pub const SPAWN_BATCH: usize = 16;

/// A [`Cx`] over the loop's poll, tokens and output buffer.
macro_rules! cx {
    ($rt:expr) => {
        Cx {
            now: Instant::now(),
            registry: $rt.poll.registry(),
            tokens: &mut $rt.tokens,
            out: &mut $rt.out,
        }
    };
}
use cx;

/// The running emperor.
#[derive(Debug)]
pub struct Runtime {
    poll: Poll,
    tokens: Tokens,
    core: Core,
    src: Sources,
    out: Vec<Output>,
    /// Exiting with this code once hooks are done, or at the deadline regardless.
    exiting: Option<(i32, Instant)>,
    /// `perform` stopped after a batch of starts with actions still queued.
    actions_left: bool,
}

impl Runtime {
    /// Sets everything up (monitors, signals, stats socket, pidfile) without scanning yet.
    pub fn new(opts: &Options) -> Result<Runtime, RunError> {
        let poll = Poll::new().map_err(RunError::lp("create the event loop"))?;
        let mut tokens = Tokens::new();
        let mut out = Vec::new();
        let mut cx = Cx {
            now: Instant::now(),
            registry: poll.registry(),
            tokens: &mut tokens,
            out: &mut out,
        };
        let mut src = Sources::new(opts, &mut cx)?;
        src.parent = parent::Parent::from_env(&mut cx);
        Ok(Runtime {
            poll,
            tokens,
            core: Core::new(sources::core_config(opts)),
            src,
            out,
            exiting: None,
            actions_left: false,
        })
    }

    /// Records that the process now runs as `uid`:`gid` (after `uid`/`gid` dropped
    /// privileges), for the stats and the vassals that inherit it.
    pub fn set_credentials(&mut self, uid: u32, gid: u32) {
        self.src.info.uid = uid;
        self.src.info.gid = gid;
    }

    /// About to run as `uid`:`gid`: hands it what the emperor keeps using as that user, the
    /// vassal cgroups (see [`crate::spawn::cgroup::Tree::hand_over`]) and the command socket file.
    pub fn hand_over_to(&self, uid: u32, gid: u32) {
        self.src.exec.tree.hand_over(uid, gid);
        if let Some(c) = &self.src.command {
            c.hand_over(uid, gid);
        }
    }

    /// Runs until a shutdown completes; returns the exit code.
    pub fn run(mut self) -> i32 {
        info!(
            "*** Starting the Emperor (pid: {}) over {} ***",
            self.src.info.pid,
            self.src.info.monitors.join(" ")
        );
        let s = &self.src.exec.settings;
        let binary = s.argv.binary().to_string();
        if crate::spawn::resolve(&binary, s.path.as_deref(), &self.src.cwd).is_none() {
            warn!(
                "`{binary}` was not found on PATH: vassals cannot start until it is installed ({})",
                crate::spawn::INSTALL_HINT
            );
        }
        self.src.monitors.rescan_all(&mut cx!(self));
        self.route();
        if let Some(p) = self.src.parent.as_mut() {
            // As a uWSGI sub-emperor: "ready" (1) once initialised, "loyal" (17) once governing.
            p.announce();
        }
        if let Some(n) = self.src.notify.as_mut() {
            n.ready(self.core.len());
        }
        let mut events = mio::Events::with_capacity(256);
        let code = loop {
            if let Some(code) = self.turn(&mut events) {
                break code;
            }
        };
        self.src.cleanup();
        code
    }

    /// Feeds what the sources reported to the core and the other sources.
    fn route(&mut self) {
        let now = Instant::now();
        while !self.out.is_empty() {
            for o in std::mem::take(&mut self.out) {
                match o {
                    Output::Core(ev) => self.core.handle(now, ev),
                    Output::Reap => self.src.reap_needed = true,
                    Output::Started(s) => self.started(now, *s),
                }
            }
        }
    }
}
