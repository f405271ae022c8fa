//! The server's public value types: its configuration, the peer's credentials, the adoption
//! handed to the new vassal, why `serve` returned, and its counters.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::signal::Signal;

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// uids allowed to ask for a fork. Default: the server's effective uid and root.
    pub allowed_uids: Vec<u32>,
    /// How long a client may take to send its whole request (and the reply write). Default 4 s.
    pub io_timeout: Duration,
    /// Connections served at once. When they are all taken, the oldest *silent* one (nothing
    /// received, nothing waiting to be read) is closed to make room for a new client; when none
    /// is silent, further clients wait in the listen backlog. Default 64.
    pub max_connections: usize,
    /// Silent connections one client process (by `SO_PEERCRED` pid) may hold; a new connection
    /// beyond that closes that client's oldest silent one. Default 4.
    pub max_silent_per_peer: usize,
    /// How long a client may stay connected without sending its first byte. Default 1 s
    /// (a client sends its whole request right after connecting).
    pub handshake_timeout: Duration,
    /// Block SIGTERM/SIGINT and return [`Outcome::Stopped`] when one arrives. Default true.
    pub handle_signals: bool,
    /// Permissions for the socket file (e.g. `0o600`); `None` keeps what the umask gives.
    pub socket_mode: Option<u32>,
    /// The grandchild replies only once it has been reparented (the intermediate child has
    /// exited), so the client can `waitpid` it and check its ppid as soon as it has the pid.
    /// Costs the intermediate child's exit (page-table teardown, which grows with the base's
    /// memory) on the request's latency. Default true.
    pub reply_after_reparent: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let me = nix::unistd::geteuid().as_raw();
        let mut allowed_uids = vec![me];
        if me != 0 {
            allowed_uids.push(0);
        }
        ServerConfig {
            allowed_uids,
            io_timeout: Duration::from_secs(4),
            max_connections: 64,
            max_silent_per_peer: 4,
            handshake_timeout: Duration::from_secs(1),
            handle_signals: true,
            socket_mode: None,
            reply_after_reparent: true,
        }
    }
}

/// Credentials of the connected client, from `SO_PEERCRED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// Client pid (as seen at connect time).
    pub pid: i32,
    /// Client uid.
    pub uid: u32,
    /// Client gid.
    pub gid: u32,
}

/// What a new vassal receives: returned by [`ForkServer::serve`](super::ForkServer::serve) in the adopted grandchild.
#[derive(Debug)]
pub struct Adoption {
    /// The vassal's argv, as sent by the emperor (`argv[0]` included).
    pub argv: Vec<OsString>,
    /// The emperor channel.
    pub channel: OwnedFd,
    /// The config channel, when the request carried one (mask 0x02).
    pub config: Option<OwnedFd>,
    /// The on-demand listener, when the request carried one (mask 0x04).
    pub on_demand: Option<OwnedFd>,
    /// Who asked.
    pub peer: PeerCred,
}

impl Adoption {
    /// Sets `UWSGI_EMPEROR_FD` (and `UWSGI_EMPEROR_FD_CONFIG`, or removes it) to the received
    /// fds, for code that finds its channel through the environment. Call it in the adopted
    /// vassal only (the process is single-threaded there).
    pub fn export_env(&self) {
        std::env::set_var("UWSGI_EMPEROR_FD", self.channel.as_raw_fd().to_string());
        match &self.config {
            Some(c) => std::env::set_var("UWSGI_EMPEROR_FD_CONFIG", c.as_raw_fd().to_string()),
            None => std::env::remove_var("UWSGI_EMPEROR_FD_CONFIG"),
        }
    }
}

/// Why [`ForkServer::serve`](super::ForkServer::serve) returned.
#[derive(Debug)]
pub enum Outcome {
    /// We are the adopted grandchild: continue as the new vassal. The server's own fds are
    /// closed; the reply with our pid has been sent.
    Adopted(Adoption),
    /// SIGTERM or SIGINT arrived (only with [`ServerConfig::handle_signals`]).
    Stopped(Signal),
    /// The watched fd at this index is readable or hung up.
    Readable(usize),
}

/// Counters, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted (refused ones included).
    pub accepted: u64,
    /// Connections refused for their uid.
    pub refused: u64,
    /// Requests rejected as malformed (or closed early by the client).
    pub rejected: u64,
    /// Connections dropped for exceeding the I/O or handshake timeout.
    pub timed_out: u64,
    /// Silent connections closed to make room (all slots taken, or over the per-client limit).
    pub evicted: u64,
    /// Adoptions handed off (intermediate child exited 0).
    pub forked: u64,
    /// Forks that failed.
    pub fork_failed: u64,
}
