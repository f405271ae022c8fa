//! `emperor`: a drop-in replacement for `uwsgi --emperor` that supervises real uWSGI vassals.
//!
//! The crate is split the sans-IO way:
//!
//! * [`core`]: the vassal lifecycle (spawn, reload, stop, backoff, curse tolerance, heartbeat
//!   watchdog, shutdown) as a plain struct. Time is passed in, [`core::Event`]s go in and
//!   [`core::Action`]s come out; nothing in it touches the OS, so every rule is unit tested with a
//!   fake clock.
//! * [`monitor`]: config sources (`dir://`, `glob://`): name validity, (mtime_ns, size, inode)
//!   stamps, one log line per skipped file.
//! * [`spawn`]: the uWSGI argv/env rules and a spawn path whose cost does not grow with the
//!   emperor's memory (`clone(CLONE_VM|CLONE_VFORK)` + `execve`).
//! * [`stats`]: the stats JSON document.
//! * [`runtime`]: the one-thread `mio` loop that performs actions and feeds events back (and,
//!   when started by another emperor, speaks the vassal side of the channel to it).
//! * [`forkserver`]: starting vassals through a fork server (adoption from a preloaded base),
//!   without blocking the loop, and checking the adopted process really became our child.
//! * [`ondemand`], [`command`], [`ctl`]: on-demand listeners, the command socket and the
//!   `emperor ctl` front (the lifecycle rules for them, and broodlord, are in [`core`]).
//! * [`options`]: the command line and `--ini` `[uwsgi]` section, with uWSGI's option names.
//! * [`process`]: the emperor process itself (`daemonize`, `logto`, `pidfile`, `uid`/`gid`).
//! * [`sanitize`]: control characters of outside strings escaped before they are logged.

pub mod config;
pub mod core;
pub mod ctl;
pub mod io;
pub mod monitor;
pub mod process;
pub mod sanitize;
pub mod spawn;
pub mod stats;

// Old paths of modules that moved into the new layout (removed once every caller uses the
// new path).
pub use config::options;
pub use io as runtime;
pub use io::{command, forkserver, hooks, ondemand};
pub use spawn::creds as tyrant;
pub use spawn::{cgroup, isolation, shim};

/// `emperor --version`: the crate version and the git commit it was built from ("unknown" in a
/// build outside a git checkout).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("EMPEROR_GIT_COMMIT"),
    ")"
);

/// The stats document's `version`: like uWSGI's, then ours and the commit.
pub const STATS_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "-emperor-rs (git ",
    env!("EMPEROR_GIT_COMMIT"),
    ")"
);
