//! One turn of the loop: actions, the poll, dispatch by token owner, then the timers.

use super::http::Route;
use std::io;
use std::time::Instant;

use mio::{Events, Token};
use tracing::{error, warn};

use super::registry::Owner;
use super::{children, cx, Cx, Runtime};

use crate::core::{Event, Inc};

impl Runtime {
    /// One turn; `Some(code)` when the emperor exits.
    pub(super) fn turn(&mut self, events: &mut Events) -> Option<i32> {
        if let Some(code) = self.perform() {
            // Stop hooks still running are waited for (up to reload-mercy).
            let mercy = self.core.config().reload_mercy;
            self.exiting.get_or_insert((code, Instant::now() + mercy));
        }
        if self.core.shutting_down() {
            self.src.exec.hooks.cancel_starts();
        }
        if let Some((code, until)) = self.exiting {
            if !self.src.exec.hooks.busy() {
                return Some(code);
            }
            if Instant::now() >= until {
                warn!("hooks still running after reload-mercy: exiting without them");
                return Some(code);
            }
        }
        self.publish_notes();
        let now = Instant::now();
        let timeout = self.wake(now).saturating_duration_since(now);
        // Read after this turn's events: every other ready source goes first.
        let busy: Vec<Inc> = self.src.channels.take_busy();
        if let Err(e) = self.poll.poll(events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                error!("event loop failed: {e}");
                return Some(1);
            }
        }
        for ev in events.iter() {
            self.dispatch(ev.token());
            self.route();
        }
        for inc in busy {
            self.src.channels.on_readable(inc, &mut cx!(self));
            self.route();
        }
        if self.src.stats.as_mut().is_some_and(|s| s.take_pending()) {
            self.accept();
        }
        if std::mem::take(&mut self.src.reap_needed) {
            self.reap();
        }
        if let Some(f) = self.src.exec.fork.as_mut() {
            f.tick(&mut cx!(self));
            self.route();
        }
        self.timers(Instant::now());
        None
    }

    /// When the poll must return: at once with work left over, else the earliest deadline.
    fn wake(&self, now: Instant) -> Instant {
        let s = &self.src;
        let hurry = self.actions_left
            || s.channels.busy()
            || s.stats.as_ref().is_some_and(|st| st.pending());
        [
            self.core.next_deadline(),
            s.monitors.settle_deadline(),
            s.stats.as_ref().and_then(|st| st.next_deadline()),
            self.exiting.map(|(_, t)| t),
            s.exec.fork.as_ref().and_then(|f| f.next_deadline()),
            s.exec.tree.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .fold(
            if hurry { now } else { s.monitors.next_rescan() },
            Instant::min,
        )
    }

    /// Hands a readiness event to the source that owns its token.
    fn dispatch(&mut self, tok: Token) {
        // A token freed earlier in this batch has no owner any more.
        let owner = match self.tokens.owner(tok) {
            None => return,
            Some(Owner::Stats) => return self.accept(),
            Some(o) => o,
        };
        let mut cx = cx!(self);
        let src = &mut self.src;
        match owner {
            Owner::Signals => src.signals.on_ready(&mut cx, src.notify.as_ref()),
            Owner::Inotify => src.monitors.on_inotify(&mut cx),
            Owner::StatsClient(key) => {
                if let Some(s) = src.stats.as_mut() {
                    let doc = Documents {
                        core: &self.core,
                        info: &src.info,
                        tree: &src.exec.tree,
                        metrics: &src.metrics,
                    };
                    s.on_client(key, &mut cx, &|r| doc.render(r));
                }
            }
            Owner::Channel(inc) => src.channels.on_readable(inc, &mut cx),
            Owner::ConfigPush(inc) => src.channels.flush_config(inc, &mut cx),
            Owner::Parent => {
                if let Some(p) = src.parent.as_mut() {
                    if !p.on_ready(&mut cx) {
                        src.parent = None;
                    }
                }
            }
            Owner::Command => {
                if let Some(c) = src.command.as_mut() {
                    c.ready(&mut cx);
                }
            }
            Owner::Hook(key) => src.exec.hooks.ready(&mut cx, key),
            Owner::Listener(key) => src.ondemand.ready(&mut cx, key),
            Owner::Fork(inc) => {
                if let Some(f) = src.exec.fork.as_mut() {
                    f.ready(&mut cx, inc);
                }
            }
            Owner::Stats => {}
        }
    }

    /// Drains the core's lifecycle notes to the event subscribers (rendered only when some
    /// subscribe).
    fn publish_notes(&mut self) {
        let mut cx = cx!(self);
        let stats = self.src.stats.as_mut().filter(|s| s.subscribers() > 0);
        let Some(s) = stats else {
            while self.core.poll_note().is_some() {}
            return;
        };
        let wall = std::time::SystemTime::now();
        while let Some(n) = self.core.poll_note() {
            s.publish(&n.to_json(cx.now, wall), &mut cx);
        }
    }

    /// Accepts stats connections.
    fn accept(&mut self) {
        let mut cx = cx!(self);
        let src = &mut self.src;
        if let Some(s) = src.stats.as_mut() {
            let doc = Documents {
                core: &self.core,
                info: &src.info,
                tree: &src.exec.tree,
                metrics: &src.metrics,
            };
            s.on_accept(&mut cx, &|r| doc.render(r));
        }
    }

    /// Reaps every exited child: hooks are theirs (a start hook's end goes to the core), the fork
    /// client learns of deaths it waits for, the rest go to the core.
    fn reap(&mut self) {
        for (pid, exit) in children::reap_all() {
            let now = Instant::now();
            if let Some(f) = self.src.exec.fork.as_mut() {
                f.note_reaped(pid, exit, now);
            }
            // A start hook reports `StartHookDone` for the start it gates.
            if self.src.exec.hooks.reaped(&mut cx!(self), pid, exit) {
                self.route();
            } else {
                self.core.handle(now, Event::Reaped { pid, exit });
            }
        }
    }

    /// The timers of the turn's end, in order: process trees, the core, on-demand lookups,
    /// stats clients, the safety pass and settle, the systemd status.
    fn timers(&mut self, now: Instant) {
        self.src.exec.tree.poll(now);
        self.core.handle_timeout(now);
        let mut cx = cx!(self);
        self.src.ondemand.tick(&mut cx);
        if let Some(s) = self.src.stats.as_mut() {
            s.expire(now, &mut cx);
        }
        self.route();
        self.src.monitors.tick(now, &mut cx!(self));
        self.route();
        if let Some(n) = self.src.notify.as_mut() {
            n.status(self.core.len());
        }
    }
}

/// What the stats server's documents are rendered from.
struct Documents<'a> {
    core: &'a crate::core::Core,
    info: &'a crate::stats::ProcessInfo,
    tree: &'a crate::spawn::cgroup::Tree,
    metrics: &'a crate::metrics::Cache,
}

impl Documents<'_> {
    fn render(&self, route: Route) -> String {
        let now = Instant::now();
        match route {
            Route::Metrics => {
                return self.metrics.get(now, || {
                    let dir = |inc| self.tree.dir_of(inc).map(std::path::Path::to_path_buf);
                    crate::metrics::scrape(self.core, &dir)
                });
            }
            Route::Status => return super::http::STATUS_PAGE.to_owned(),
            Route::Json => {}
        }
        crate::stats::render(
            self.core,
            self.info,
            crate::stats::Clock {
                now,
                wall: std::time::SystemTime::now(),
            },
        )
    }
}
