//! The shim's checked settings: what the command line and the `[vassal-shim]` section say,
//! parsed. The core decides with them; the binary's runtime starts and probes the program
//! with them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

/// How readiness is detected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ready {
    /// As soon as the program has been started.
    Immediate,
    /// A TCP connect succeeds.
    Tcp(SocketAddr),
    /// A unix-socket connect succeeds.
    Unix(PathBuf),
    /// An HTTP GET answers 2xx.
    Http {
        /// Where to connect.
        addr: SocketAddr,
        /// The Host header.
        host: String,
        /// The request path.
        path: String,
    },
    /// The program sends READY=1 on NOTIFY_SOCKET.
    Notify,
}

impl Ready {
    /// Whether readiness (and health) is checked by connecting to something.
    pub fn is_probe(&self) -> bool {
        matches!(self, Ready::Tcp(_) | Ready::Unix(_) | Ready::Http { .. })
    }
}

/// What a reload does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadMode {
    /// Stop the program and start it again.
    Restart,
    /// Send this signal to the program's main process.
    Signal(Signal),
}

/// Checked settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The program and its arguments.
    pub exec: Vec<String>,
    /// Working directory of the program.
    pub chdir: Option<PathBuf>,
    /// Extra environment for the program, in order (later wins).
    pub env: Vec<(String, String)>,
    /// How readiness is detected.
    pub ready: Ready,
    /// Heartbeat period (`None`: no heartbeats).
    pub heartbeat: Option<Duration>,
    /// Signal that asks the program's group to stop.
    pub stop_signal: Signal,
    /// How long to wait after `stop_signal` before SIGKILL.
    pub stop_timeout: Duration,
    /// What a reload does.
    pub reload: ReloadMode,
    /// Exit codes of the program that mean "do not respawn".
    pub exile_codes: Vec<i32>,
    /// How long the program must stay up after readiness before it is loyal.
    pub loyal_after: Duration,
    /// Give up when the program is not ready this long after a start or reload.
    pub ready_timeout: Option<Duration>,
    /// `WATCHDOG_USEC` given to the program.
    pub watchdog: Option<Duration>,
    /// Send SOS while at least this many connections wait in the backlog.
    pub sos_backlog: Option<u32>,
    /// Where to write the pushed config.
    pub config_file: Option<PathBuf>,
    /// How long a readiness or health probe may take.
    pub probe_timeout: Duration,
    /// The program is a fork-server base.
    pub fork_base: bool,
}

impl Settings {
    /// Settings running `exec` with every other option at its default.
    pub fn new(exec: Vec<String>) -> Settings {
        Settings {
            exec,
            chdir: None,
            env: Vec::new(),
            ready: Ready::Immediate,
            heartbeat: None,
            stop_signal: Signal::SIGTERM,
            stop_timeout: Duration::from_secs(10),
            reload: ReloadMode::Restart,
            exile_codes: Vec::new(),
            loyal_after: Duration::from_secs(2),
            ready_timeout: None,
            watchdog: None,
            sos_backlog: None,
            config_file: None,
            probe_timeout: Duration::from_secs(2),
            fork_base: false,
        }
    }
}
