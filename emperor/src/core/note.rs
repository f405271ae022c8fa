//! Lifecycle notes: one value per transition of a vassal (detected, spawned, ready, reload,
//! exit, ...), queued by the core for the event stream (`GET /events`) and drained by the
//! runtime with [`super::Core::poll_note`]. Heartbeats are not notes.

use std::collections::VecDeque;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Most notes kept undrained; older ones are dropped first (a core driven without a runtime
/// draining it, as in tests, stays bounded).
pub const MAX_NOTES: usize = 4096;

/// One lifecycle transition of one vassal.
#[derive(Clone, Debug, PartialEq)]
pub struct Note {
    /// When it happened (the `now` of the event that caused it).
    pub at: Instant,
    /// The vassal's instance name.
    pub vassal: String,
    /// What happened: `detected`, `spawned`, `ready`, `accepting`, `loyal`, `reload`, `stop`,
    /// `exit`, `backoff`, `exile`, `curse`, `kill`, `spawn_failed`, `config_error`.
    pub event: &'static str,
    /// Event-specific details (`pid`, `status`, `delay_ms`, `why`, `reason`).
    pub details: Vec<(&'static str, Value)>,
}

impl Note {
    /// The note as one JSON object: `{"time": unix seconds, "vassal", "event", "details"}`;
    /// `now`/`wall` are one reading of the monotonic and the wall clock.
    pub fn to_json(&self, now: Instant, wall: SystemTime) -> String {
        let wall_at = wall
            .checked_sub(now.saturating_duration_since(self.at))
            .unwrap_or(wall);
        let time = wall_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let details: serde_json::Map<String, Value> = self
            .details
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect();
        serde_json::json!({
            "time": time,
            "vassal": self.vassal,
            "event": self.event,
            "details": details,
        })
        .to_string()
    }
}

/// The queue of undrained notes.
#[derive(Debug, Default)]
pub(super) struct Notes {
    queue: VecDeque<Note>,
}

impl Notes {
    /// Queues one note.
    pub(super) fn push(
        &mut self,
        at: Instant,
        vassal: &str,
        event: &'static str,
        details: Vec<(&'static str, Value)>,
    ) {
        if self.queue.len() >= MAX_NOTES {
            self.queue.pop_front();
        }
        self.queue.push_back(Note {
            at,
            vassal: vassal.to_string(),
            event,
            details,
        });
    }

    pub(super) fn pop(&mut self) -> Option<Note> {
        self.queue.pop_front()
    }
}

impl super::Core {
    /// Queues a note for record `id` (no-op once it is gone).
    pub(super) fn note_of(
        &mut self,
        now: Instant,
        id: super::VassalId,
        event: &'static str,
        details: Vec<(&'static str, Value)>,
    ) {
        if let Some(v) = self.vassals.get(&id) {
            self.notes.push(now, &v.name, event, details);
        }
    }
}
