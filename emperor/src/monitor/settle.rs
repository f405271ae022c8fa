//! The settle rule of directory events: which monitors and names are examined, and when.
//!
//! A file that went away (`IN_DELETE`, `IN_MOVED_FROM`) or a directory that changed as a whole
//! is examined only after [`SETTLE`] of quiet, so an editor that renames the old file away
//! before writing the new one gets one reload instead of a stop and a start. The safety pass
//! makes what it marks due at once. Pure: time is an argument.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::time::{Duration, Instant};

/// Quiet time after an event saying a file went away or a whole directory changed.
pub const SETTLE: Duration = Duration::from_millis(100);

/// Monitor index (as in the loop's list of scanners).
pub type MonitorIdx = usize;

/// Names of single files to re-examine, per monitor.
pub type Names = HashMap<MonitorIdx, HashSet<OsString>>;

/// What is due: monitors to rescan fully, then single names of the others.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Monitors to rescan.
    pub full: Vec<MonitorIdx>,
    /// Single files of monitors not rescanned.
    pub names: Names,
}

/// Pending work and its deadline.
#[derive(Debug, Default)]
pub struct Settle {
    full: HashSet<MonitorIdx>,
    names: Names,
    at: Option<Instant>,
}

impl Settle {
    /// Nothing pending.
    pub fn new() -> Settle {
        Settle::default()
    }

    /// Monitor `m` needs a full rescan.
    pub fn rescan(&mut self, m: MonitorIdx) {
        self.full.insert(m);
    }

    /// File `name` of monitor `m` went away: examine it after the settle.
    pub fn gone(&mut self, m: MonitorIdx, name: OsString) {
        self.names.entry(m).or_default().insert(name);
    }

    /// Whether anything is pending.
    pub fn is_empty(&self) -> bool {
        self.full.is_empty() && self.names.is_empty()
    }

    /// After a batch of events: starts the quiet time unless it already runs.
    pub fn arm(&mut self, now: Instant) {
        if !self.is_empty() && self.at.is_none() {
            self.at = Some(now + SETTLE);
        }
    }

    /// After the safety pass: what it marked is due at once.
    pub fn due_now(&mut self, now: Instant) {
        if !self.full.is_empty() {
            self.at = Some(now);
        }
    }

    /// When [`Settle::take_due`] has work.
    pub fn deadline(&self) -> Option<Instant> {
        self.at
    }

    /// The work due at `now` (a monitor rescanned fully has no single names left).
    pub fn take_due(&mut self, now: Instant) -> Option<Due> {
        if !self.at.is_some_and(|t| t <= now) {
            return None;
        }
        self.at = None;
        let full: Vec<MonitorIdx> = self.full.drain().collect();
        for m in &full {
            self.names.remove(m);
        }
        Some(Due {
            full,
            names: std::mem::take(&mut self.names),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deletion_waits_for_the_quiet_time() {
        let t0 = Instant::now();
        let mut s = Settle::new();
        s.gone(0, "a.ini".into());
        s.arm(t0);
        assert_eq!(s.deadline(), Some(t0 + SETTLE));
        assert_eq!(s.take_due(t0 + SETTLE / 2), None);
        // More events within the quiet time do not push it back.
        s.gone(0, "b.ini".into());
        s.arm(t0 + SETTLE / 2);
        assert_eq!(s.deadline(), Some(t0 + SETTLE));
        let due = s.take_due(t0 + SETTLE).unwrap();
        assert!(due.full.is_empty());
        assert_eq!(due.names[&0].len(), 2);
        assert!(s.is_empty());
        assert_eq!(s.deadline(), None);
        assert_eq!(s.take_due(t0 + SETTLE * 3), None);
    }

    #[test]
    fn a_full_rescan_swallows_the_names_of_its_monitor() {
        let t0 = Instant::now();
        let mut s = Settle::new();
        s.gone(0, "a.ini".into());
        s.gone(1, "b.ini".into());
        s.rescan(0);
        s.arm(t0);
        let due = s.take_due(t0 + SETTLE).unwrap();
        assert_eq!(due.full, vec![0]);
        assert_eq!(due.names.keys().copied().collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn the_safety_pass_makes_its_rescans_due_at_once() {
        let t0 = Instant::now();
        let mut s = Settle::new();
        s.gone(0, "a.ini".into());
        s.arm(t0);
        // Names alone do not hurry the settle.
        s.due_now(t0);
        assert_eq!(s.deadline(), Some(t0 + SETTLE));
        s.rescan(2);
        s.due_now(t0 + Duration::from_millis(10));
        assert_eq!(s.deadline(), Some(t0 + Duration::from_millis(10)));
        assert!(s.take_due(t0 + Duration::from_millis(10)).is_some());
    }

    #[test]
    fn nothing_pending_arms_nothing() {
        let mut s = Settle::new();
        s.arm(Instant::now());
        s.due_now(Instant::now());
        assert_eq!(s.deadline(), None);
    }
}
