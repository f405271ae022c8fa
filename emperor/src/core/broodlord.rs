//! Broodlord mode: byte 30 (SOS) from a vassal starts a *zerg*, the `[zerg]` section of the
//! same config, while fewer than `--emperor-broodlord` zergs run.
//!
//! Unlike uWSGI, where every zerg of `app.ini` is called `app.ini:zerg` (so lookups by name
//! only ever find the first), each zerg is its own record `app.ini:zerg:N` (N = the smallest
//! free number for that base); uWSGI still gets `--ini app.ini:zerg`. Zergs are not configs of
//! a monitor: scans never see them, so a dead zerg is not re-created, and they are stopped when
//! their base config goes away.

use std::time::Instant;

use tracing::{info, warn};

use super::{Core, Entry, VassalId};

impl Core {
    /// Number of zerg records (running, starting or stopping).
    pub fn zerg_count(&self) -> usize {
        self.ext.zerg_base.len()
    }

    /// Byte 30 from vassal `id`.
    pub(super) fn on_sos(&mut self, now: Instant, id: VassalId) {
        let max = self.cfg.activation.broodlord;
        let shutting = self.shutdown.is_some();
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        v.sos += 1;
        let name = v.name.clone();
        if max == 0 {
            warn!(vassal = %name, "vassal {name} asks for reinforcements (broodlord is not enabled): ignored");
            return;
        }
        if shutting {
            return;
        }
        // A zerg asking for help speaks for its base.
        let base_id = self.ext.zerg_base.get(&id).map(|&(b, _)| b).unwrap_or(id);
        let Some(base) = self.vassals.get(&base_id) else {
            return;
        };
        if !base.wanted() {
            return;
        }
        if self.ext.zerg_base.len() >= max as usize {
            info!(vassal = %name, "vassal {name} asks for reinforcements: already {max} zergs (--emperor-broodlord), ignored");
            return;
        }
        let used = self.ext.zergs.get(&base_id);
        let n = (1u32..)
            .find(|n| !used.is_some_and(|m| m.contains_key(n)))
            .unwrap_or(u32::MAX);
        let entry = Entry {
            key: format!("{}:zerg:{n}", base.key),
            name: format!("{}:zerg:{n}", base.name),
            stamp: base.stamp,
            content: None,
            uid: base.uid,
            gid: base.gid,
        };
        let monitor = base.monitor;
        if self.by_key.contains_key(&entry.key) {
            return;
        }
        info!(vassal = %name, "vassal {name} is going in broodlord mode: launching zerg {}", entry.name);
        let Some(zid) = self.insert_record(now, monitor, entry) else {
            return;
        };
        // Not a config of the monitor: scans neither stop nor re-create it.
        if let Some(s) = self.by_monitor.get_mut(&monitor) {
            s.remove(&zid);
        }
        if let Some(z) = self.vassals.get_mut(&zid) {
            z.zerg = Some(n);
        }
        self.ext.zergs.entry(base_id).or_default().insert(n, zid);
        self.ext.zerg_base.insert(zid, (base_id, n));
        self.start(now, zid);
    }

    /// Stopping vassal `id` because its config is gone: its zergs go too.
    pub(super) fn stop_zergs(&mut self, now: Instant, id: VassalId) {
        let Some(zergs) = self.ext.zergs.get(&id) else {
            return;
        };
        let ids: Vec<VassalId> = zergs.values().copied().collect();
        for z in ids {
            if let Some(v) = self.vassals.get(&z) {
                if v.wanted() {
                    info!(vassal = %v.name, "base of zerg {} is gone: stopping it", v.name);
                }
            }
            self.stop(now, z, true);
        }
    }
}
