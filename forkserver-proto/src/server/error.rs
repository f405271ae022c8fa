//! Why the server failed.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why the server failed.
#[derive(Debug)]
pub enum ServerError {
    /// Something else listens on the socket path.
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The path exists and is not a socket.
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The process has more than one thread, so forking it would not be sound.
    NotSingleThreaded {
        /// Threads found in `/proc/self/task`.
        threads: usize,
    },
    /// A watched fd is invalid (`POLLNVAL`).
    InvalidWatchedFd {
        /// Its index in the slice passed to `serve`.
        index: usize,
    },
    /// `serve` was called on a server whose listener is closed (in an adopted grandchild).
    Closed {
        /// The socket path.
        path: PathBuf,
    },
    /// A syscall failed.
    Io {
        /// What was being done.
        op: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::InUse { path } => write!(
                f,
                "fork server socket {} is in use by a live server",
                path.display()
            ),
            ServerError::NotASocket { path } => write!(
                f,
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ),
            ServerError::NotSingleThreaded { threads } => write!(
                f,
                "the fork server process has {threads} threads; it must be single-threaded \
                 because adopted vassals keep running its code after fork()"
            ),
            ServerError::InvalidWatchedFd { index } => {
                write!(f, "watched fd #{index} is not open")
            }
            ServerError::Closed { path } => {
                write!(
                    f,
                    "fork server {}: serve: server already closed",
                    path.display()
                )
            }
            ServerError::Io { op, path, source } => {
                write!(f, "fork server {}: {op}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServerError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
