//! uWSGI's blacklist: a start that does not end in loyalty is retried after a delay that
//! doubles up to `--emperor-max-throttle`, with ±10 % jitter.

use super::*;
use serde_json::json;

/// Per-vassal retry state (uWSGI's blacklist entry).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backoff {
    /// Failures since it was last loyal.
    pub attempt: u32,
    /// Current nominal delay in ms (before jitter).
    pub level_ms: u64,
    /// First failure of this streak.
    pub first: Option<Instant>,
    /// Latest failure.
    pub last: Option<Instant>,
}

impl Core {
    pub(super) fn rand_unit(&mut self) -> f64 {
        // xorshift64*: deterministic for a given seed, good enough for jitter.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A start that did not end in loyalty: retry after backoff (or drop the record).
    pub(super) fn failed(&mut self, now: Instant, id: VassalId, spawn_failed: bool) {
        let shutting = self.shutdown.is_some();
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        if shutting || !v.wanted() || v.zerg.is_some() {
            self.remove(id);
            return;
        }
        let delay_ms = if self.cfg.no_blacklist {
            self.cfg.freq.as_millis() as u64
        } else {
            let b = &mut v.backoff;
            b.attempt = b.attempt.saturating_add(1);
            b.level_ms = if b.attempt == 1 {
                self.cfg.throttle_ms
            } else {
                b.level_ms.saturating_mul(2)
            }
            .min(self.cfg.max_throttle_ms)
            .max(1);
            b.first.get_or_insert(now);
            b.last = Some(now);
            b.level_ms
        };
        let (attempt, name) = (v.backoff.attempt, v.name.clone());
        // ±10 % jitter so vassals failing together do not retry together.
        let jitter = 0.9 + 0.2 * self.rand_unit();
        let delay = Duration::from_millis(((delay_ms as f64) * jitter).round() as u64);
        let at = now + delay;
        if let Some(v) = self.vassals.get_mut(&id) {
            // A process stopped by a stop command stays suspended after its backoff.
            let suspend = v.suspended();
            set_state(
                &mut self.lines,
                v,
                State::Waiting(state::Waiting { at, suspend }),
            );
        }
        let details = vec![
            ("delay_ms", json!(delay.as_millis() as u64)),
            ("attempt", json!(attempt)),
        ];
        self.notes.push(now, &name, "backoff", details);
        if self.cfg.no_blacklist {
            info!(vassal = %name, "vassal {name} will be respawned in {} ms", delay.as_millis());
        } else if spawn_failed {
            warn!(
                vassal = %name,
                attempt,
                "retrying vassal {name} in {} ms (attempt {attempt})",
                delay.as_millis()
            );
        } else {
            warn!(
                vassal = %name,
                attempt,
                "unloyal bad behaving vassal {name}: throttling it, next attempt in {} ms (attempt {attempt})",
                delay.as_millis()
            );
        }
        self.timer(at, Timer::Start(id));
    }
}
