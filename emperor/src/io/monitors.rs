//! The config monitors as a loop source: their scanners, the inotify fd (see
//! [`crate::monitor::watch`]), the settle of deletions (see [`crate::monitor::settle`]) and the
//! periodic safety pass every `--emperor-freq` seconds.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::Interest;
use tracing::info;

use super::registry::Owner;
use super::source::Cx;
use crate::core::Event;
use crate::monitor::settle::{Names, Settle};
use crate::monitor::watch::Watcher;
use crate::monitor::Scanner;

/// Every monitor of the emperor.
#[derive(Debug)]
pub struct Monitors {
    scanners: Vec<Scanner>,
    watcher: Watcher,
    settle: Settle,
    freq: Duration,
    next_rescan: Instant,
}

impl Monitors {
    /// Watches the inotify fd of `scanners` (nothing is scanned yet); `freq` is the safety
    /// pass interval.
    pub fn new(
        scanners: Vec<Scanner>,
        freq: Duration,
        cx: &mut Cx<'_>,
    ) -> std::io::Result<Monitors> {
        let watcher = Watcher::new()?;
        cx.register(
            &mut SourceFd(&watcher.fd()),
            Owner::Inotify,
            Interest::READABLE,
        )?;
        Ok(Monitors {
            scanners,
            watcher,
            settle: Settle::new(),
            freq,
            next_rescan: Instant::now(),
        })
    }

    /// The working directory of a vassal of monitor `m` (`cwd`: the emperor's).
    pub fn vassal_cwd(&self, m: usize, cwd: &Path) -> PathBuf {
        self.scanners[m].vassal_cwd(cwd).to_path_buf()
    }

    /// The next safety pass.
    pub fn next_rescan(&self) -> Instant {
        self.next_rescan
    }

    /// When the settled events are due.
    pub fn settle_deadline(&self) -> Option<Instant> {
        self.settle.deadline()
    }

    /// Scans every monitor and starts the safety pass clock.
    pub fn rescan_all(&mut self, cx: &mut Cx<'_>) {
        self.scan_every(cx);
        self.next_rescan = Instant::now() + self.freq;
    }

    /// `Action::Rescan`: scans every monitor.
    pub fn rescan_asked(&mut self, cx: &mut Cx<'_>) {
        info!("rescanning every monitor");
        self.scan_every(cx);
    }

    fn scan_every(&mut self, cx: &mut Cx<'_>) {
        for m in 0..self.scanners.len() {
            self.scan(m, cx);
        }
    }

    fn scan(&mut self, m: usize, cx: &mut Cx<'_>) {
        let result = self.scanners[m].scan();
        for d in self.scanners[m].watch_dirs().to_vec() {
            self.watcher.watch(m, d, self.freq.as_secs());
        }
        if let Some(entries) = result.entries {
            cx.core(Event::Scanned {
                monitor: m,
                entries,
            });
        }
    }

    /// inotify is readable: files complete now are examined at once, the rest after the settle.
    pub fn on_inotify(&mut self, cx: &mut Cx<'_>) {
        let now_names = self.watcher.read(&self.scanners, &mut self.settle);
        self.check_names(now_names, cx);
        self.settle.arm(Instant::now());
    }

    /// The timers: the safety pass when due, then the settled work.
    pub fn tick(&mut self, now: Instant, cx: &mut Cx<'_>) {
        if now >= self.next_rescan {
            self.safety_pass();
            self.next_rescan = now + self.freq;
            self.settle.due_now(now);
        }
        if let Some(due) = self.settle.take_due(now) {
            for &m in &due.full {
                self.scan(m, cx);
            }
            self.check_names(due.names, cx);
        }
    }

    /// Marks for a full rescan every monitor inotify may not fully cover. A dir monitor with a
    /// live watch on a local filesystem costs one `stat` of its directory (see
    /// [`Scanner::needs_rescan`]); the others are rescanned.
    fn safety_pass(&mut self) {
        for m in 0..self.scanners.len() {
            let watched = self.scanners[m]
                .watch_dirs()
                .first()
                .is_some_and(|d| self.watcher.is_watched(d));
            if self.scanners[m].needs_rescan(watched) {
                self.settle.rescan(m);
            }
        }
    }

    /// Re-examines single files of dir monitors (one `Event::Updated` each).
    fn check_names(&mut self, names: Names, cx: &mut Cx<'_>) {
        for (m, names) in names {
            for n in names {
                let Some(name) = n.to_str() else {
                    // The full scan reports (once) why it is skipped.
                    self.scan(m, cx);
                    break;
                };
                for (key, entry) in self.scanners[m].check_event(name) {
                    cx.core(Event::Updated {
                        monitor: m,
                        key,
                        entry,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::source::Output;
    use crate::io::test_loop::TestLoop;
    use crate::monitor::parse_monitor;
    use crate::monitor::settle::SETTLE;

    #[test]
    fn a_new_file_is_seen_at_once_and_a_deletion_after_the_settle() {
        let d = tempfile::tempdir().unwrap();
        let mut lp = TestLoop::new();
        let mut cx = lp.cx();
        let spec = parse_monitor(d.path().to_str().unwrap(), Path::new("/")).unwrap();
        let mut m = Monitors::new(
            vec![Scanner::new(spec, vec![], false)],
            Duration::from_secs(3600),
            &mut cx,
        )
        .unwrap();
        m.rescan_all(&mut cx);
        std::fs::write(d.path().join("a.ini"), "[uwsgi]\n").unwrap();
        m.on_inotify(&mut cx);
        std::fs::remove_file(d.path().join("a.ini")).unwrap();
        m.on_inotify(&mut cx);
        let t = m.settle_deadline().expect("the deletion waits");
        m.tick(t - SETTLE / 2, &mut cx);
        m.tick(t, &mut cx);
        let evs: Vec<String> = lp
            .take()
            .iter()
            .map(|o| match o {
                Output::Core(Event::Scanned { entries, .. }) => {
                    format!("scanned {}", entries.len())
                }
                Output::Core(Event::Updated { entry, .. }) => {
                    format!("updated {}", entry.is_some())
                }
                o => panic!("{o:?}"),
            })
            .collect();
        assert_eq!(evs, vec!["scanned 0", "updated true", "updated false"]);
    }
}
