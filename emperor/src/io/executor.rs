//! The one executor of spawns: takes the core's `Action::Spawn`, runs the start hook when the
//! request asks for it (its end is `Event::StartHookDone`, after which the core asks again),
//! else asks [`crate::spawn::plan`] for the complete [`Job`] and starts it with
//! the launcher the plan chose (the direct clone path or the fork server). A process that runs
//! is reported as [`Output::Started`]; a spawn that cannot run as `Event::SpawnFailed`.

use super::source::{Cx, Output, Started};
use crate::cgroup::Tree;
use crate::core::{Event, SpawnRequest};
use crate::forkserver::ForkClient;
use crate::hooks::Hooks;
use crate::ondemand::OnDemand;
use crate::spawn::launcher::{Job, Launched, Launcher, Via};
use crate::spawn::plan::{self, Settings};
use crate::spawn::Spawner;
use std::path::PathBuf;

/// The launchers and what they need.
#[derive(Debug)]
pub struct Executor {
    /// The direct clone path.
    pub spawner: Spawner,
    /// The emperor-wide inputs of every plan.
    pub settings: Settings,
    /// `--emperor-tyrant-initgroups`.
    pub initgroups: bool,
    /// The vassals' process trees (cgroups or process groups).
    pub tree: Tree,
    /// The fork-server client, with `--emperor-use-fork-server`.
    pub fork: Option<ForkClient>,
    /// Start hooks (and the other hook processes).
    pub hooks: Hooks,
}

/// What the executor needs besides the request: the on-demand listeners (fd 0), the
/// emperor's own uid/gid and the vassal's working directory.
#[derive(Debug)]
pub struct Ctx<'c> {
    /// The on-demand listeners.
    pub ondemand: &'c mut OnDemand,
    /// The emperor's uid and gid.
    pub me: (u32, u32),
    /// The vassal's working directory.
    pub cwd: PathBuf,
}

impl Executor {
    /// Starts a vassal, or its `--vassals-start-hook` when the request says so (the hook is
    /// run before anything is planned: the plan takes the on-demand listener out of the loop).
    pub fn spawn(&mut self, req: SpawnRequest, x: Ctx<'_>, cx: &mut Cx<'_>) {
        if req.run_start_hook {
            self.hooks.start_hook(cx, &req, &x.cwd);
        } else {
            self.spawn_now(req, x, cx);
        }
    }

    fn spawn_now(&mut self, req: SpawnRequest, x: Ctx<'_>, cx: &mut Cx<'_>) {
        let inc = req.inc;
        if let Err(reason) = self.try_spawn(req, x, cx) {
            cx.core(Event::SpawnFailed { inc, reason });
        }
    }

    /// Plans `req` and starts it (locally, or asynchronously through the fork server); `Err`
    /// is the reason it cannot start, for the core's `SpawnFailed`.
    fn try_spawn(&mut self, req: SpawnRequest, x: Ctx<'_>, cx: &mut Cx<'_>) -> Result<(), String> {
        let vassal = plan::Vassal {
            cwd: x.cwd,
            creds: req
                .creds
                .map(|(uid, gid)| crate::spawn::creds::creds(uid, gid, self.initgroups))
                .transpose(),
        };
        let (ondemand, id) = (x.ondemand, req.vassal);
        let plan::Planned { job, via } = plan::plan(req, &self.settings, vassal, || {
            ondemand.take_for_spawn(id, cx)
        })
        .map_err(|e| e.to_string())?;
        match (via, self.fork.as_mut()) {
            // Asynchronous: answered through the loop (`Output::Started` or `SpawnFailed`).
            (Via::ForkServer, Some(f)) => f.launch(&job, cx).map(|_| ()).map_err(|e| e.to_string()),
            _ => self.direct(job, x.me, cx),
        }
    }

    /// Clones and execs `job` in its process tree.
    fn direct(&mut self, mut job: Job, me: (u32, u32), cx: &mut Cx<'_>) -> Result<(), String> {
        let inc = job.req.inc;
        let placement = self.tree.place(inc, &job.req.name);
        job.setup.cgroup_procs = placement.as_ref().map(|p| p.procs_fd());
        let process = match Launcher::launch(&mut self.spawner, &job, cx) {
            Ok(Launched::Running(s)) => Ok(s),
            // The direct launcher answers at once, never later.
            Ok(Launched::Pending) => Err("the direct launcher did not start the process".into()),
            Err(e) => Err(e.to_string()),
        };
        let process = match process {
            Ok(s) => s,
            Err(e) => {
                if let Some(p) = placement {
                    self.tree.discard(p);
                }
                return Err(e);
            }
        };
        self.tree.started(inc, process.pid, placement);
        let owner = job
            .setup
            .creds
            .as_ref()
            .map(|c| (c.uid, c.gid))
            .unwrap_or(me);
        cx.out.push(Output::Started(Box::new(Started {
            inc,
            name: job.req.name,
            cwd: job.plan.cwd,
            process,
            owner,
            adopted: false,
            reaped: None,
        })));
        Ok(())
    }
}
