//! systemd's notification socket (`NOTIFY_SOCKET`): `READY=1` once governing, `STATUS=` when
//! the number of vassals changes, `STOPPING=1` on a stop signal.
//!
//! Hand-written rather than the `sd-notify` crate: that crate connects to the path in
//! `NOTIFY_SOCKET` as given, so an abstract address (`@name`, which systemd and container
//! managers hand out) fails, and it sends on a blocking socket, so a stalled manager could
//! stall the loop. Here the address is parsed once (path or abstract) and every send is
//! non-blocking; a lost notification is only logged at debug level.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;

use tracing::debug;

/// The notification socket, when the emperor runs under a service manager.
#[derive(Debug)]
pub struct Notifier {
    sock: UnixDatagram,
    addr: SocketAddr,
    /// The vassal count last reported in `STATUS=`.
    reported: Option<usize>,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; `None` without it (or with an address that cannot be used).
    pub fn from_env() -> Option<Notifier> {
        Notifier::at(&std::env::var_os("NOTIFY_SOCKET")?)
    }

    /// For the address `path` (a path, or `@name` for an abstract socket).
    pub fn at(path: &std::ffi::OsStr) -> Option<Notifier> {
        let sock = UnixDatagram::unbound().ok()?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path);
        let addr = if let Some(abs) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(abs).ok()?
        } else {
            SocketAddr::from_pathname(Path::new(path)).ok()?
        };
        let _ = sock.set_nonblocking(true);
        Some(Notifier {
            sock,
            addr,
            reported: None,
        })
    }

    /// Sends one notification (lines `KEY=value`).
    pub fn send(&self, msg: &str) {
        if let Err(e) = self.sock.send_to_addr(msg.as_bytes(), &self.addr) {
            debug!("sd_notify failed: {e}");
        }
    }

    /// `READY=1` with the vassal count.
    pub fn ready(&mut self, vassals: usize) {
        self.send(&format!(
            "READY=1\nSTATUS=The Emperor is governing {vassals} vassals"
        ));
        self.reported = Some(vassals);
    }

    /// `STATUS=` when the vassal count changed since the last report.
    pub fn status(&mut self, vassals: usize) {
        if self.reported != Some(vassals) {
            self.send(&format!(
                "STATUS=The Emperor is governing {vassals} vassals"
            ));
            self.reported = Some(vassals);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(rx: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = rx.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn ready_then_status_only_on_change() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("notify");
        let rx = UnixDatagram::bind(&p).unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut n = Notifier::at(p.as_os_str()).unwrap();
        n.ready(2);
        assert_eq!(
            recv(&rx),
            "READY=1\nSTATUS=The Emperor is governing 2 vassals"
        );
        n.status(2);
        n.status(3);
        assert_eq!(recv(&rx), "STATUS=The Emperor is governing 3 vassals");
        n.send("STOPPING=1");
        assert_eq!(recv(&rx), "STOPPING=1");
    }

    #[test]
    fn abstract_addresses_are_understood() {
        let name = format!("emperor-notify-test-{}", std::process::id());
        use std::os::linux::net::SocketAddrExt;
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
            .unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let n = Notifier::at(std::ffi::OsStr::new(&format!("@{name}"))).unwrap();
        n.send("READY=1");
        assert_eq!(recv(&rx), "READY=1");
    }
}
