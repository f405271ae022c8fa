//! Channel garbage: what the core does with bytes that are not the emperor protocol.
//!
//! A real vassal never sends an unknown byte, so a few are logged and counted, and a vassal that
//! keeps sending them (more than [`GARBAGE_LIMIT`] within [`GARBAGE_WINDOW`], e.g. `cat
//! /dev/urandom >&$UWSGI_EMPEROR_FD`) is killed as broken and retried with backoff like a
//! vassal that failed to start. Warnings are rate-limited ([`LogLimit`]): one line per
//! [`WARN_INTERVAL`] per vassal, saying how many were not logged.

use serde_json::json;
use std::time::{Duration, Instant};

use tracing::{error, warn};

use super::{Backoff, Core, ExitKind, State, VassalId};
use crate::core::Action;

/// Unknown bytes within [`GARBAGE_WINDOW`] after which a vassal is killed as broken.
pub const GARBAGE_LIMIT: u32 = 4096;
/// The window [`GARBAGE_LIMIT`] counts in.
pub const GARBAGE_WINDOW: Duration = Duration::from_secs(10);
/// At most one warning line per vassal (or per command socket) per interval.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);
/// Warnings about failed commands written per [`WARN_INTERVAL`] (the command socket's burst).
pub const WARN_BURST: u32 = 10;

/// A rate limit for one kind of log line: at most `burst` lines per interval, the rest counted
/// and reported by the next line written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogLimit {
    /// End of the current interval (`None`: none started).
    window_end: Option<Instant>,
    /// Lines written in it.
    written: u32,
    /// Occurrences not logged since the last line.
    suppressed: u64,
}

impl LogLimit {
    /// One more occurrence at `now`: `Some(n)` when it is to be logged (`n` occurrences were
    /// not logged before it), `None` when it is only counted.
    pub fn hit(&mut self, now: Instant, interval: Duration, burst: u32) -> Option<u64> {
        match self.window_end {
            Some(end) if now < end => {
                if self.written < burst {
                    self.written += 1;
                    Some(0)
                } else {
                    self.suppressed = self.suppressed.saturating_add(1);
                    None
                }
            }
            _ => {
                self.window_end = Some(now + interval);
                self.written = 1;
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Per-vassal garbage accounting (reset by each start).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Garbage {
    window_start: Option<Instant>,
    in_window: u32,
    warn: LogLimit,
    /// The current process was killed for sending garbage.
    pub(crate) broken: bool,
    /// The backoff when the current process started: garbage can contain the loyal byte, which
    /// must not earn a broken vassal a clean slate.
    pub(crate) backoff_at_start: Backoff,
}

impl Garbage {
    /// A new process starts with `backoff`.
    pub(crate) fn begin(&mut self, backoff: Backoff) {
        *self = Garbage {
            warn: self.warn,
            backoff_at_start: backoff,
            ..Garbage::default()
        };
    }
}

impl Core {
    /// Vassal `id` sent the unknown byte `b`.
    pub(super) fn on_unknown_byte(&mut self, now: Instant, id: VassalId, b: u8) {
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        v.unknown_bytes = v.unknown_bytes.saturating_add(1);
        let g = &mut v.garbage;
        if let Some(more) = g.warn.hit(now, WARN_INTERVAL, 1) {
            if more == 0 {
                warn!(vassal = %v.name, byte = b, "vassal {} sent unknown byte {b}: ignored", v.name);
            } else {
                warn!(
                    vassal = %v.name,
                    byte = b,
                    "vassal {} sent unknown byte {b}, and {more} more not logged in the last {} s: ignored ({} in all)",
                    v.name,
                    WARN_INTERVAL.as_secs(),
                    v.unknown_bytes
                );
            }
        }
        match g.window_start {
            Some(s) if now.saturating_duration_since(s) < GARBAGE_WINDOW => {
                g.in_window = g.in_window.saturating_add(1)
            }
            _ => {
                g.window_start = Some(now);
                g.in_window = 1;
            }
        }
        if g.in_window < GARBAGE_LIMIT || g.broken {
            return;
        }
        let Some(&process) = v.state.process() else {
            return;
        };
        let pid = process.pid;
        g.broken = true;
        // What it still has in flight is garbage too: not even counted.
        self.lines[v.slot as usize].ignored = true;
        error!(
            vassal = %v.name,
            pid,
            "vassal {} (pid: {pid}) sent {} unknown bytes within {} s: its channel is not the emperor protocol, killing it as broken (SIGKILL; retried with backoff)",
            v.name,
            g.in_window,
            GARBAGE_WINDOW.as_secs()
        );
        let running = matches!(v.state, State::Running(_));
        let why = json!("garbage on its channel");
        self.notes.push(
            now,
            &v.name,
            "kill",
            vec![("pid", json!(pid)), ("why", why)],
        );
        self.actions.push_back(Action::Kill { pid });
        if running {
            self.enter_stopping(now, id, process, false, false);
        }
    }

    /// The process of `id`, killed as broken, was reaped: it failed (backoff), whatever its
    /// channel said about loyalty. False when it was not broken.
    pub(super) fn reaped_broken(
        &mut self,
        now: Instant,
        id: VassalId,
        pid: i32,
        exit: ExitKind,
    ) -> bool {
        let Some(v) = self.vassals.get_mut(&id) else {
            return false;
        };
        if !v.garbage.broken {
            return false;
        }
        warn!(vassal = %v.name, pid, "vassal {} (pid: {pid}), killed as broken, is gone ({exit})", v.name);
        v.garbage.broken = false;
        if v.garbage.backoff_at_start.attempt > v.backoff.attempt {
            v.backoff = v.garbage.backoff_at_start;
        }
        self.failed(now, id, false);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_interval_then_one_line_with_the_count_of_the_rest() {
        let t0 = Instant::now();
        let i = Duration::from_secs(10);
        let mut l = LogLimit::default();
        assert_eq!(l.hit(t0, i, 1), Some(0));
        for k in 1..1000 {
            assert_eq!(l.hit(t0 + Duration::from_millis(k), i, 1), None);
        }
        assert_eq!(l.hit(t0 + i, i, 1), Some(999));
        assert_eq!(l.hit(t0 + i, i, 1), None);
        assert_eq!(l.hit(t0 + i * 3, i, 1), Some(1));
        let mut l = LogLimit::default();
        let logged = (0..100).filter(|_| l.hit(t0, i, 10).is_some()).count();
        assert_eq!(logged, 10);
        assert_eq!(l.hit(t0 + i, i, 10), Some(90));
    }
}
