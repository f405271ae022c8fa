//! Tyrant mode in the lifecycle: a root-owned config gets no vassal (logged once per owner,
//! picked up by itself once chowned), and a change of owner stops the running vassal, which
//! then starts again as the new owner (or is refused if that is root).

use super::*;
use tracing::error;

/// True when tyrant mode must refuse a file with this owner.
pub fn is_root_owned(uid: u32, gid: u32) -> bool {
    uid == 0 || gid == 0
}

/// Why a root-owned file is refused, and what to do.
pub fn refusal(name: &str, key: &str, uid: u32, gid: u32) -> String {
    let whose = match (uid, gid) {
        (0, 0) => "user root and group root".to_string(),
        (0, g) => format!("user root (uid 0, gid {g})"),
        (u, _) => format!("group root (uid {u}, gid 0)"),
    };
    format!(
        "tyrant mode refuses vassal {name}: {key} is owned by {whose}, and a vassal must never run as root; \
         chown it to the app's user and group (e.g. `chown app:app {key}`) and it starts by itself"
    )
}

/// Tyrant-mode state of the core.
#[derive(Debug, Default)]
pub(super) struct TyrantState {
    /// Refused configs: key → (monitor, uid, gid) they were refused with.
    refused: HashMap<String, (MonitorId, u32, u32)>,
}

impl Core {
    /// True in tyrant mode.
    pub fn tyrant(&self) -> bool {
        self.cfg.tyrant
    }

    /// Configs refused because root owns them (keys).
    pub fn tyrant_refused(&self) -> impl Iterator<Item = &str> {
        self.tyrant.refused.keys().map(String::as_str)
    }

    /// True when `e` must not get a record (root-owned, tyrant mode); logs once per owner.
    pub(super) fn tyrant_refuses(&mut self, monitor: MonitorId, e: &Entry) -> bool {
        if !self.cfg.tyrant {
            return false;
        }
        if !is_root_owned(e.uid, e.gid) {
            if self.tyrant.refused.remove(&e.key).is_some() {
                info!(vassal = %e.name, "{} is no longer owned by root ({}:{}): starting it", e.key, e.uid, e.gid);
            }
            return false;
        }
        let before = self
            .tyrant
            .refused
            .insert(e.key.clone(), (monitor, e.uid, e.gid));
        if before.map(|(_, u, g)| (u, g)) != Some((e.uid, e.gid)) {
            error!(vassal = %e.name, "{}", refusal(&e.name, &e.key, e.uid, e.gid));
        }
        true
    }

    /// A full scan of `monitor`: refused configs it no longer lists are forgotten (a new
    /// root-owned file of the same name is reported again).
    pub(super) fn tyrant_scanned(&mut self, monitor: MonitorId, entries: &[Entry]) {
        if self.tyrant.refused.is_empty() {
            return;
        }
        let listed: HashSet<&str> = entries.iter().map(|e| e.key.as_str()).collect();
        self.tyrant
            .refused
            .retain(|k, (m, _, _)| *m != monitor || listed.contains(k.as_str()));
    }

    /// One config is gone.
    pub(super) fn tyrant_gone(&mut self, key: &str) {
        self.tyrant.refused.remove(key);
    }

    /// In tyrant mode, a new owner of a known config stops its process (it restarts as the new
    /// owner once reaped). Returns true when the owner changed (the entry is then recorded).
    pub(super) fn tyrant_owner_changed(&mut self, now: Instant, id: VassalId, e: &Entry) -> bool {
        if !self.cfg.tyrant {
            return false;
        }
        let Some(v) = self.vassals.get_mut(&id) else {
            return false;
        };
        if (v.uid, v.gid) == (e.uid, e.gid) {
            return false;
        }
        let (old_uid, old_gid) = (v.uid, v.gid);
        v.uid = e.uid;
        v.gid = e.gid;
        v.stamp = e.stamp;
        v.content = e.content.clone();
        let name = v.name.clone();
        if v.state.pid().is_some() {
            info!(
                vassal = %name,
                "owner of vassal {name} changed from {old_uid}:{old_gid} to {}:{}: stopping it (it starts again as the new owner)",
                e.uid, e.gid
            );
            self.stop(now, id, false);
        } else {
            info!(vassal = %name, "owner of vassal {name} changed from {old_uid}:{old_gid} to {}:{}", e.uid, e.gid);
        }
        true
    }

    /// Called before every start: in tyrant mode a root-owned vassal is refused and its record
    /// dropped. True when the start must not happen.
    pub(super) fn tyrant_blocks_start(&mut self, id: VassalId) -> bool {
        if !self.cfg.tyrant {
            return false;
        }
        let Some(v) = self.vassals.get(&id) else {
            return false;
        };
        if !is_root_owned(v.uid, v.gid) {
            return false;
        }
        error!(vassal = %v.name, "{}", refusal(&v.name, &v.key, v.uid, v.gid));
        self.tyrant
            .refused
            .insert(v.key.clone(), (v.monitor, v.uid, v.gid));
        self.remove(id);
        true
    }
}
