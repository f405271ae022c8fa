//! The runtime's sources besides the program: the emperor channel, the config channel, the
//! notify socket, the readiness / health probe and the backlog meter's answers.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Instant;

use mio::unix::SourceFd;
use tracing::{debug, error, info, warn};
use vassal_shim::core::Input;
use vassal_shim::notify::{self, Notification};
use vassal_shim::{Event, Vassal, VassalMsg};

use super::{write_atomic, Runtime, PROBE};
use crate::probe::Probe;

impl Runtime {
    pub(super) fn send(&mut self, now: Instant, m: VassalMsg) {
        let pid = self.program.map(|p| p.pid).unwrap_or(0);
        match m {
            VassalMsg::Ready => info!("program {pid} is ready: sending ready (1)"),
            VassalMsg::Accepting => info!("sending accepting (5)"),
            VassalMsg::Loyal => info!("program {pid} stayed up: sending loyal (17)"),
            VassalMsg::Heartbeat => debug!("sending heartbeat (26)"),
            other => info!("sending {} ({})", other.name(), other.to_byte()),
        }
        let Some(v) = &self.vassal else {
            return;
        };
        match v.try_send(m) {
            Ok(()) => {}
            // The loop never waits for the emperor: a full channel means it stopped reading.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => warn!(
                "the emperor is not reading its channel (it is full): {} ({}) dropped",
                m.name(),
                m.to_byte()
            ),
            Err(e) => {
                warn!("lost the emperor while writing to it: {e}");
                self.drop_emperor();
                self.core.handle(now, Input::Emperor(Event::Eof));
            }
        }
    }

    pub(super) fn drop_emperor(&mut self) {
        if let Some(v) = self.vassal.take() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&v.as_raw_fd()));
        }
    }

    pub(super) fn read_emperor(&mut self, now: Instant) {
        loop {
            // One event at a time (drained until it would block), nothing collected.
            let e = match self.vassal.as_mut().map(Vassal::try_recv) {
                None | Some(Ok(None)) => return,
                Some(Ok(Some(e))) => e,
                Some(Err(err)) => {
                    warn!("emperor channel error: {err}");
                    Event::Eof
                }
            };
            match e {
                Event::Stop => info!("emperor says stop (0)"),
                Event::GracefulStop => info!("emperor says graceful stop (2)"),
                Event::Reload => info!("emperor says reload (1)"),
                Event::Eof => {
                    info!("lost connection with the emperor (EOF): stopping");
                    self.drop_emperor();
                }
                Event::Unknown(b) => info!("ignoring unknown byte {b} from the emperor"),
            }
            self.core.handle(now, Input::Emperor(e));
            if e == Event::Eof {
                break;
            }
        }
    }

    pub(super) fn read_config(&mut self, now: Instant) {
        let Some(c) = self.config.as_mut() else {
            return;
        };
        match c.poll_newest() {
            Ok(Some(text)) => {
                let n = c.received();
                if let Some(path) = &self.config_path {
                    match write_atomic(path, &text) {
                        Ok(()) => info!(
                            "config push #{n} ({} bytes) written to {}",
                            text.len(),
                            path.display()
                        ),
                        Err(e) => {
                            error!("cannot write the pushed config to {}: {e}", path.display())
                        }
                    }
                }
                self.core.handle(now, Input::ConfigPushed);
            }
            Ok(None) => {}
            Err(e) => {
                error!("bad data on the config channel ({e}); ignoring it from now on");
                self.drop_config();
                return;
            }
        }
        if self.config.as_ref().is_some_and(|c| c.is_eof()) {
            debug!("config channel closed by the emperor");
            self.drop_config();
        }
    }

    pub(super) fn drop_config(&mut self) {
        if let Some(c) = &self.config {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&c.as_raw_fd()));
        }
        // Keep the channel (and its latest config) for re-reading settings; just stop polling.
    }

    pub(super) fn read_notify(&mut self, now: Instant) {
        loop {
            match self.notify.recv(&mut self.notify_buf) {
                Ok(n) => {
                    for item in notify::items(&self.notify_buf[..n]) {
                        match &item {
                            Notification::Status(s) => info!("program status: {s}"),
                            Notification::Watchdog => debug!("program: WATCHDOG=1"),
                            Notification::Other(o) => debug!("program sent {o:?} (ignored)"),
                            other => info!("program notification: {other:?}"),
                        }
                        self.core.handle(now, Input::Notify(item));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!("notify socket: {e}");
                    break;
                }
            }
        }
    }

    pub(super) fn start_probe(&mut self, now: Instant) {
        if let Some(p) = self.probe.take() {
            p.close(self.poll.registry());
        }
        let deadline = now + self.core.settings().probe_timeout;
        match Probe::start(
            &self.core.settings().ready,
            self.poll.registry(),
            PROBE,
            deadline,
        ) {
            Ok(p) => self.probe = Some(p),
            Err(e) => {
                debug!(
                    "probe of {:?} failed at once: {e}",
                    self.core.settings().ready
                );
                self.core.handle(now, Input::Probe(false));
            }
        }
    }

    pub(super) fn drive_probe(&mut self, now: Instant) {
        let Some(p) = self.probe.as_mut() else {
            return;
        };
        if let Some(ok) = p.on_event(&self.probe_request) {
            self.finish_probe(now, ok);
        }
    }

    pub(super) fn finish_probe(&mut self, now: Instant, ok: bool) {
        if let Some(p) = self.probe.take() {
            p.close(self.poll.registry());
        }
        let was_ready = self.core.is_ready();
        if was_ready && !ok {
            warn!("health check of {:?} failed", self.core.settings().ready);
        }
        self.core.handle(now, Input::Probe(ok));
    }

    pub(super) fn backlog_measured(&mut self, now: Instant, n: Option<u32>) {
        match n {
            Some(n) => self.core.handle(now, Input::Backlog(n)),
            None if !self.backlog_warned => {
                self.backlog_warned = true;
                match self.meter.watch() {
                    None => warn!("sos-backlog: no listener to measure (needs an on-demand socket or ready = tcp:, unix: or http://)"),
                    Some(w) => warn!("sos-backlog: cannot measure the backlog of {w:?} (not listening yet?); trying again every second"),
                }
            }
            None => {}
        }
    }
}
