//! `emperor`: a drop-in replacement for `uwsgi --emperor` that supervises real uWSGI vassals.
//!
//! Data flows one way (`docs/architecture.md` walks through it):
//!
//! * [`monitor`]: config sources (`dir://`, `glob://`): name validity, (mtime_ns, size, inode)
//!   stamps, bounded config reads, the inotify plumbing and the settle rule; it produces
//!   observations.
//! * [`core`]: the only home of lifecycle policy (spawn, reload, stop, backoff, curse tolerance,
//!   heartbeat watchdog, shutdown, on-demand, broodlord, tyrant, commands, signals) as a plain
//!   struct. Time is passed in, [`core::Event`]s go in and [`core::Action`]s come out; nothing in
//!   it touches the OS, so every rule is unit tested with a fake clock.
//! * [`io`]: the thin `mio` loop over one source per file (channels, stats server, command
//!   socket, signals, our own emperor's channel, hooks, on-demand listeners, fork-server client),
//!   one token registry, and the executor that performs the core's actions.
//! * [`spawn`]: a spawn request planned into a complete job (argv, env, fds, credentials,
//!   isolation, launcher), the uWSGI argv/env rules, the clone path whose cost does not grow
//!   with the emperor's memory, process trees (cgroups), and the launchers' one trait.
//! * [`config`]: the command line and `--ini` `[uwsgi]` section, with uWSGI's option names.
//! * [`stats`]: the stats JSON document; [`ctl`]: the `emperor ctl` client.
//! * [`process`]: the emperor process itself (`daemonize`, `logto`, `pidfile`, `uid`/`gid`).
//! * [`sanitize`]: control characters of outside strings escaped before they are logged.

pub mod config;
pub mod core;
pub mod ctl;
pub mod io;
pub mod metrics;
pub mod monitor;
pub mod process;
pub mod sanitize;
pub mod spawn;
pub mod stats;

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
