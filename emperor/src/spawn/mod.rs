//! Starting a vassal: the argv and environment rules ([`argv`]), the plan of one process
//! ([`Plan`]), the direct clone path ([`clone`]), per-vassal isolation ([`isolation`]), tyrant
//! credentials ([`creds`]), the process tree ([`cgroup`]) and shim vassals ([`shim`]).

pub mod argv;
pub mod cgroup;
pub mod clone;
pub mod creds;
pub mod error;
pub mod isolation;
pub mod launcher;
pub mod plan;
pub mod shim;

use std::ffi::OsString;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

pub use argv::{build_argv, resolve, vassal_env, ArgvConfig};
pub use clone::{Spawner, HANDLED_SIGNALS};
pub use error::{SpawnError, INSTALL_HINT};

/// What to execute: the programs to try in order and the argv they all get.
pub type Exec = (Vec<PathBuf>, Vec<String>);

/// Everything one spawn needs, prepared before the child exists.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Programs to try in order (overrides, `argv[0]`, fallbacks), resolved.
    pub programs: Vec<PathBuf>,
    /// The argv.
    pub argv: Vec<String>,
    /// Environment without the emperor fd variables (added per spawn).
    pub env: Vec<(OsString, OsString)>,
    /// Working directory of the child.
    pub cwd: PathBuf,
    /// Create a config socket too.
    pub with_config: bool,
    /// The vassal's fd 0: an on-demand listener; `/dev/null` when `None`. The fd stays open
    /// (and owned) in the emperor.
    pub stdin: Option<std::os::fd::RawFd>,
}

/// A started vassal: its pid and the emperor ends of its sockets (CLOEXEC, blocking).
#[derive(Debug)]
pub struct Started {
    /// Pid.
    pub pid: i32,
    /// The channel (one-byte messages).
    pub channel: UnixStream,
    /// The config socket, when asked for.
    pub config: Option<UnixStream>,
}

/// The direct launcher: the process runs once `launch` returns.
impl launcher::Launcher for Spawner {
    fn launch(
        &mut self,
        job: &launcher::Job,
        _cx: &mut crate::io::source::Cx<'_>,
    ) -> Result<launcher::Launched, SpawnError> {
        self.spawn_with(&job.plan, &job.setup)
            .map(launcher::Launched::Running)
    }
}
