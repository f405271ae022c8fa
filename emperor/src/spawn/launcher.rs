//! How a planned spawn is started: one trait, three launchers (the direct clone path in
//! [`crate::spawn`], the start-hook wrapper in [`crate::io::hooks`], the fork-server client in
//! [`crate::io::forkserver`]), chosen by the plan and run by the one executor.

use crate::core::SpawnRequest;
use crate::io::source::Cx;
use crate::spawn::isolation::ChildSetup;
use crate::spawn::{Plan, SpawnError, Started};

/// Which launcher runs a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The emperor clones and execs the vassal itself.
    Direct,
    /// The fork server forks it from a preloaded base.
    ForkServer,
}

/// One spawn, completely decided: the core's request, the process plan (programs, argv, env,
/// cwd, fds) and the per-child isolation (credentials, namespaces, capabilities, cgroup).
#[derive(Debug)]
pub struct Job {
    /// What the core asked for.
    pub req: SpawnRequest,
    /// The process to start.
    pub plan: Plan,
    /// Isolation applied in the child before `execve`.
    pub setup: ChildSetup,
}

/// How a launch went.
#[derive(Debug)]
pub enum Launched {
    /// The process runs now.
    Running(Started),
    /// The answer comes later through the loop: an `Output::Started` of the job's incarnation,
    /// or an `Event::SpawnFailed` for it.
    Pending,
}

/// Something that starts vassal processes.
pub trait Launcher: std::fmt::Debug {
    /// Starts `job`, at once or later (see [`Launched`]); `Err` when it cannot start at all.
    fn launch(&mut self, job: &Job, cx: &mut Cx<'_>) -> Result<Launched, SpawnError>;
}
