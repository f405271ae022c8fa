//! Why a start through the fork server fails.

use std::io;
use std::path::PathBuf;

use forkserver_proto::ClientError;

/// Why a start through the fork server failed, or the fork server cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ForkError {
    /// The emperor cannot become a child subreaper.
    #[error(
        "cannot become a child subreaper (prctl PR_SET_CHILD_SUBREAPER): {0}; \
         --emperor-use-fork-server and --emperor-subreaper need Linux 3.4 or later \
         (and no seccomp filter blocking prctl)"
    )]
    Subreaper(nix::Error),
    /// The vassal needs isolation a fork server cannot apply.
    #[error(
        "the fork server cannot apply --emperor-tyrant, --emperor-cap or --emperor-use-clone: \
         list this vassal in --vassal-fork-base or drop them"
    )]
    Isolation,
    /// The vassal's channel or config socket cannot be made.
    #[error("adoption failed: socketpair: {0}")]
    Socketpair(io::Error),
    /// The on-demand listener cannot be duplicated for the request.
    #[error("adoption failed: dup of the on-demand socket: {0}")]
    DupOnDemand(io::Error),
    /// The loop cannot watch the request's connection.
    #[error("adoption failed: cannot watch the fork server connection: {0}")]
    Watch(io::Error),
    /// The server's listen backlog stayed full until the deadline.
    #[error(
        "adoption failed: fork server at {} kept its listen backlog full for {ms} ms",
        path.display()
    )]
    Busy {
        /// The fork-server socket.
        path: PathBuf,
        /// How long it was retried.
        ms: u128,
    },
    /// The exchange failed (missing or stale socket, closed connection, bad reply, timeout).
    #[error("adoption failed: {0}")]
    Exchange(#[from] ClientError),
    /// The adopted process is not the emperor's descendant.
    #[error(
        "the fork server at {} is not a descendant of this Emperor: {why}. Run the fork server \
         as a vassal of this Emperor (listed in --vassal-fork-base) so its adopted vassals are \
         reparented to the Emperor",
        path.display()
    )]
    Foreign {
        /// The fork-server socket.
        path: PathBuf,
        /// What was seen.
        why: String,
    },
}
