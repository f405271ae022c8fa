//! The core's fake-clock tests, one file per rule family, over one harness.

use super::*;

mod activation;
mod adoption;
mod events;
mod lifecycle;
mod notes;
mod tyrant;

/// A config stamp that differs for every `n`.
pub(super) fn stamp(n: i128) -> FileStamp {
    FileStamp {
        mtime_ns: n,
        size: 10,
        ino: 1,
    }
}

/// `/v/NAME`, owned by root, version `n`.
pub(super) fn entry(name: &str, n: i128) -> Entry {
    owned(name, n, 0, 0)
}

/// `/v/NAME`, owned by `uid`:`gid`, version `n`.
pub(super) fn owned(name: &str, n: i128, uid: u32, gid: u32) -> Entry {
    Entry {
        key: format!("/v/{name}"),
        name: name.to_string(),
        stamp: stamp(n),
        content: None,
        uid,
        gid,
    }
}

/// A core, a fake clock and the pids the fake runtime hands out.
pub(super) struct Harness {
    pub(super) core: Core,
    pub(super) now: Instant,
    pub(super) next_pid: i32,
}

impl Harness {
    pub(super) fn new(cfg: CoreConfig) -> Harness {
        Harness {
            core: Core::new(cfg),
            now: Instant::now(),
            next_pid: 100,
        }
    }

    /// Default tunables with these activation settings.
    pub(super) fn with_activation(activation: ActivationConfig) -> Harness {
        Harness::new(CoreConfig {
            activation,
            ..CoreConfig::default()
        })
    }

    /// Every queued action.
    pub(super) fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.core.poll_action()).collect()
    }

    /// Feeds `e` now; the actions it queued.
    pub(super) fn ev(&mut self, e: Event) -> Vec<Action> {
        self.core.handle(self.now, e);
        self.actions()
    }

    /// A full listing of monitor 0.
    pub(super) fn scan(&mut self, entries: Vec<Entry>) -> Vec<Action> {
        self.ev(Event::Scanned {
            monitor: 0,
            entries,
        })
    }

    pub(super) fn od(&mut self, e: OnDemandEvent) -> Vec<Action> {
        self.ev(Event::OnDemand(e))
    }

    /// Applies a command as [`Event::Command`] does, returning its outcome too.
    pub(super) fn cmd(
        &mut self,
        c: VassalCommand,
        name: &str,
    ) -> (Result<String, CommandError>, Vec<Action>) {
        let r = self.core.run_command(self.now, c, name);
        (r, self.actions())
    }

    /// Answers every Spawn in `actions` with a new pid; returns (request, pid) of each.
    pub(super) fn spawn_all(&mut self, actions: &[Action]) -> Vec<(SpawnRequest, i32)> {
        let mut out = Vec::new();
        for a in actions {
            if let Action::Spawn(r) = a {
                let pid = self.next_pid;
                self.next_pid += 1;
                self.ev(Event::Spawned { inc: r.inc, pid });
                out.push((r.clone(), pid));
            }
        }
        out
    }

    /// Answers every Spawn in `actions` (none of which may start another); returns (inc, pid)
    /// of the last one.
    pub(super) fn spawn_last(&mut self, actions: &[Action]) -> Option<(Inc, i32)> {
        let mut last = None;
        for a in actions {
            if let Action::Spawn(r) = a {
                let pid = self.next_pid;
                self.next_pid += 1;
                let more = self.ev(Event::Spawned { inc: r.inc, pid });
                assert!(more.iter().all(|a| !matches!(a, Action::Spawn(_))));
                last = Some((r.inc, pid));
            }
        }
        last
    }

    /// Moves the clock by `d` and runs the timers due.
    pub(super) fn advance(&mut self, d: Duration) -> Vec<Action> {
        self.now += d;
        self.core.handle_timeout(self.now);
        self.actions()
    }

    /// Advances the clock to the next deadline (if any, and within `max`).
    pub(super) fn run_until_deadline(&mut self, max: Duration) -> Vec<Action> {
        let limit = self.now + max;
        match self.core.next_deadline() {
            Some(t) if t <= limit => {
                self.now = self.now.max(t);
                self.core.handle_timeout(self.now);
                self.actions()
            }
            _ => Vec::new(),
        }
    }

    /// Scans `/v/NAME` and starts it.
    pub(super) fn start_one(&mut self, name: &str) -> (Inc, i32) {
        let a = self.scan(vec![entry(name, 1)]);
        self.spawn_last(&a).expect("spawned")
    }

    /// The state of `/v/NAME`.
    pub(super) fn state(&self, name: &str) -> State {
        self.core.vassal(&format!("/v/{name}")).unwrap().state
    }

    /// The record of `key`.
    pub(super) fn v(&self, key: &str) -> &Vassal {
        self.core
            .vassal(key)
            .unwrap_or_else(|| panic!("no record {key}"))
    }
}

/// The spawn requests among `a`.
pub(super) fn spawn_requests(a: &[Action]) -> Vec<&SpawnRequest> {
    a.iter()
        .filter_map(|a| match a {
            Action::Spawn(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// How many spawns `a` asks for.
pub(super) fn spawns(a: &[Action]) -> usize {
    spawn_requests(a).len()
}

/// The first spawn request among `a`.
pub(super) fn spawn_of(a: &[Action]) -> Option<SpawnRequest> {
    spawn_requests(a).first().map(|r| (*r).clone())
}

/// The bytes `a` sends, by channel.
pub(super) fn sent(a: &[Action]) -> Vec<(Inc, EmperorMsg)> {
    a.iter()
        .filter_map(|a| match a {
            Action::Send { inc, msg } => Some((*inc, *msg)),
            _ => None,
        })
        .collect()
}

/// A running vassal's state.
pub(super) fn running(inc: Inc, pid: i32) -> State {
    State::Running(state::Running {
        inc,
        pid,
        adopted: false,
        reload_sent: false,
    })
}

/// What `f` logs (at info and above), one line per event, without colours or timestamps.
pub(super) fn logs_of(f: impl FnOnce()) -> String {
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let out = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_writer(move || out.clone())
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    tracing::subscriber::with_default(sub, f);
    let bytes = buf.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}
