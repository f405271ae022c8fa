//! Why the emperor cannot start: each variant says what failed, on which path, and (where the
//! cause is the user's) what to do.

use std::io;
use std::path::PathBuf;

/// Startup failures of [`super::Runtime::new`].
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The emperor's working directory is unreadable.
    #[error("cannot read the current directory: {0}")]
    Cwd(io::Error),
    /// No vassal directory or glob was given.
    #[error(
        "no monitor given: pass a vassal directory or glob (e.g. `emperor /etc/uwsgi/vassals`)"
    )]
    NoMonitor,
    /// A monitor argument is not understood (the message names it and the accepted forms).
    #[error(transparent)]
    Monitor(#[from] crate::monitor::MonitorError),
    /// A kernel facility of the loop (epoll, signal handlers, inotify) is unavailable.
    #[error("cannot {what}: {err}")]
    Loop {
        /// What the loop tried ("create the event loop", "install signal handlers", ...).
        what: &'static str,
        /// Why.
        err: io::Error,
    },
    /// The stats socket cannot be bound.
    #[error(transparent)]
    Stats(#[from] super::stats::BindError),
    /// The command socket cannot be bound (the message names it).
    #[error(transparent)]
    Command(#[from] crate::io::command::CommandSocketError),
    /// `--emperor-use-clone` or `--emperor-cap` is not understood (the message says which).
    #[error(transparent)]
    Isolation(#[from] crate::spawn::isolation::IsolationError),
    /// `--emperor-process-tree` is not understood.
    #[error(transparent)]
    ProcessTree(#[from] crate::spawn::cgroup::ParseModeError),
    /// The process tree (cgroups) cannot be set up (the message says what to do).
    #[error(transparent)]
    Cgroup(#[from] crate::spawn::cgroup::CgroupError),
    /// The pidfile cannot be written.
    #[error("cannot write pidfile {}: {err}", path.display())]
    Pidfile {
        /// The `--pidfile` path.
        path: PathBuf,
        /// Why.
        err: io::Error,
    },
    /// The fork-server options cannot be applied (the message says what to do).
    #[error(transparent)]
    ForkServer(#[from] crate::io::forkserver::ForkError),
}

impl RunError {
    /// A failure of the loop's kernel facility `what`.
    pub fn lp(what: &'static str) -> impl FnOnce(io::Error) -> RunError {
        move |err| RunError::Loop { what, err }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_failed_and_where() {
        let e = RunError::Pidfile {
            path: "/run/e.pid".into(),
            err: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        assert!(
            e.to_string()
                .starts_with("cannot write pidfile /run/e.pid: "),
            "{e}"
        );
        let e = RunError::lp("create the event loop")(io::Error::from(io::ErrorKind::Other));
        assert!(
            e.to_string().starts_with("cannot create the event loop: "),
            "{e}"
        );
        assert!(RunError::NoMonitor
            .to_string()
            .contains("/etc/uwsgi/vassals"));
    }
}
