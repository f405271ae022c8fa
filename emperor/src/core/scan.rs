//! Monitor observations: a full listing or one config's update adds, reloads or stops
//! vassals.

use super::*;

impl Core {
    pub(super) fn on_scan(&mut self, now: Instant, monitor: MonitorId, entries: Vec<Entry>) {
        self.tyrant_scanned(monitor, &entries);
        let mut seen: HashSet<VassalId> = HashSet::with_capacity(entries.len());
        for e in entries {
            match self.by_key.get(&e.key).copied() {
                Some(id) => {
                    seen.insert(id);
                    self.on_present(now, id, e);
                }
                None => {
                    if self.shutdown.is_some() || self.tyrant_refuses(monitor, &e) {
                        continue;
                    }
                    if let Some(id) = self.add(now, monitor, e) {
                        seen.insert(id);
                    }
                }
            }
        }
        let gone: Vec<VassalId> = self
            .by_monitor
            .get(&monitor)
            .map(|s| s.difference(&seen).copied().collect())
            .unwrap_or_default();
        for id in gone {
            let Some(v) = self.vassals.get_mut(&id) else {
                continue;
            };
            if v.wanted() {
                info!(vassal = %v.name, "config of vassal {} is gone: stopping it", v.name);
            }
            self.stop(now, id, true);
        }
    }

    pub(super) fn on_update(
        &mut self,
        now: Instant,
        monitor: MonitorId,
        key: &str,
        entry: Option<Entry>,
    ) {
        match (self.by_key.get(key).copied(), entry) {
            (Some(id), Some(e)) => self.on_present(now, id, e),
            (None, Some(e)) => {
                if self.shutdown.is_none() && !self.tyrant_refuses(monitor, &e) {
                    self.add(now, monitor, e);
                }
            }
            (Some(id), None) => {
                let Some(v) = self.vassals.get_mut(&id) else {
                    return;
                };
                if v.monitor != monitor {
                    return;
                }
                if v.wanted() {
                    info!(vassal = %v.name, "config of vassal {} is gone: stopping it", v.name);
                }
                self.stop(now, id, true);
            }
            (None, None) => self.tyrant_gone(key),
        }
    }

    pub(super) fn add(&mut self, now: Instant, monitor: MonitorId, e: Entry) -> Option<VassalId> {
        let id = self.insert_record(now, monitor, e)?;
        self.on_added(id);
        self.start(now, id);
        Some(id)
    }

    pub(super) fn on_present(&mut self, now: Instant, id: VassalId, e: Entry) {
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        v.state.set_gone(false);
        if self.tyrant_owner_changed(now, id, &e) {
            return;
        }
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        if v.stamp == e.stamp && v.content == e.content {
            return;
        }
        v.stamp = e.stamp;
        v.content = e.content;
        v.uid = e.uid;
        v.gid = e.gid;
        match v.state {
            State::Running(_) => self.reload(now, id, "config changed"),
            State::Waiting(_) | State::Exiled => {
                if self.shutdown.is_some() {
                    return;
                }
                if v.backoff.attempt > 0 {
                    info!(vassal = %v.name, "config of vassal {} changed: lifting its backoff", v.name);
                } else if v.state == State::Exiled {
                    info!(vassal = %v.name, "config of vassal {} changed: ending its exile", v.name);
                }
                v.backoff = Backoff::default();
                self.start(now, id);
            }
            // Restarted with the new config once reaped (it is wanted).
            State::Starting(_) | State::Stopping(_) => {}
            // Only recorded: the next activation (or spawn command) uses the new config.
            State::OnDemand | State::Suspended => {
                info!(vassal = %v.name, "updated configuration for {} instance {}", v.state.name(), v.name)
            }
        }
    }
}
