//! The one executor of spawns: takes the core's `Action::Spawn`, runs the start hook when the
//! request asks for it (its end is `Event::StartHookDone`, after which the core asks again),
//! else asks [`crate::spawn::plan`] for the complete [`Job`] and starts it with
//! the launcher the plan chose (the direct clone path or the fork server). A process that runs
//! is reported as [`Output::Started`]; a spawn that cannot run as `Event::SpawnFailed`.

use super::source::{Cx, Output, Started};
use crate::core::{Event, SpawnFailure, SpawnRequest};
use crate::io::forkserver::ForkClient;
use crate::io::hooks::Hooks;
use crate::io::ondemand::OnDemand;
use crate::spawn::cgroup::Tree;
use crate::spawn::launcher::{Job, Launched, Launcher, Via};
use crate::spawn::plan::{self, PlanError, Settings};
use crate::spawn::{SpawnError, Spawner};
use std::path::PathBuf;

/// Why the executor could not start a vassal (the reason of its `Event::SpawnFailed`).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// No complete plan could be made (shim, credentials, program, isolation).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The launcher failed.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The direct launcher answered "pending", which it never does.
    #[error("the direct launcher did not start the process")]
    NotStarted,
}

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
        if let Err(e) = self.try_spawn(req, x, cx) {
            cx.core(Event::SpawnFailed {
                inc,
                reason: SpawnFailure::executor(e),
            });
        }
    }

    /// Plans `req` and starts it (locally, or asynchronously through the fork server); `Err`
    /// is the reason it cannot start, for the core's `SpawnFailed`.
    fn try_spawn(
        &mut self,
        req: SpawnRequest,
        x: Ctx<'_>,
        cx: &mut Cx<'_>,
    ) -> Result<(), ExecError> {
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
        })?;
        match (via, self.fork.as_mut()) {
            // Asynchronous: answered through the loop (`Output::Started` or `SpawnFailed`).
            (Via::ForkServer, Some(f)) => Ok(f.launch(&job, cx).map(|_| ())?),
            _ => self.direct(job, x.me, cx),
        }
    }

    /// Clones and execs `job` in its process tree.
    fn direct(&mut self, mut job: Job, me: (u32, u32), cx: &mut Cx<'_>) -> Result<(), ExecError> {
        let inc = job.req.inc;
        let placement = self.tree.place(inc, &job.req.name);
        job.setup.cgroup_procs = placement.as_ref().map(|p| p.procs_fd());
        let process = match Launcher::launch(&mut self.spawner, &job, cx) {
            Ok(Launched::Running(s)) => Ok(s),
            // The direct launcher answers at once, never later.
            Ok(Launched::Pending) => Err(ExecError::NotStarted),
            Err(e) => Err(ExecError::Spawn(e)),
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::*;
    use crate::core::{Inc, VassalId};
    use crate::io::test_loop::TestLoop;

    fn executor(path: &Path) -> Executor {
        Executor {
            spawner: Spawner::new().unwrap(),
            settings: Settings {
                path: Some(path.as_os_str().to_owned()),
                ..Settings::default()
            },
            initgroups: false,
            // Process groups: no cgroup is made for a test.
            tree: Tree::setup(crate::spawn::cgroup::Mode::Pgroup).unwrap(),
            fork: None,
            hooks: Hooks::new(crate::io::hooks::HookConfig::default()),
        }
    }

    fn req(dir: &Path, hook: bool) -> SpawnRequest {
        SpawnRequest {
            inc: Inc(5),
            vassal: VassalId(1),
            key: dir.join("app.ini").display().to_string(),
            name: "app.ini".into(),
            run_start_hook: hook,
            ..SpawnRequest::default()
        }
    }

    fn run(e: &mut Executor, r: SpawnRequest, dir: &Path) -> Vec<Output> {
        let mut lp = TestLoop::new();
        let mut ondemand = OnDemand::default();
        let x = Ctx {
            ondemand: &mut ondemand,
            me: (1000, 1000),
            cwd: dir.to_path_buf(),
        };
        e.spawn(r, x, &mut lp.cx());
        lp.take()
    }

    #[test]
    fn without_a_start_hook_command_the_hook_is_done_at_once() {
        let d = tempfile::tempdir().unwrap();
        let mut e = executor(d.path());
        let out = run(&mut e, req(d.path(), true), d.path());
        assert!(
            matches!(
                &out[..],
                [Output::Core(Event::StartHookDone { inc: Inc(5) })]
            ),
            "{out:?}"
        );
    }

    #[test]
    fn a_spawn_that_cannot_be_planned_fails_with_the_reason() {
        let d = tempfile::tempdir().unwrap();
        let mut e = executor(&d.path().join("empty"));
        let out = run(&mut e, req(d.path(), false), d.path());
        match &out[..] {
            [Output::Core(Event::SpawnFailed {
                inc: Inc(5),
                reason,
            })] => {
                let reason = reason.to_string();
                assert!(reason.contains("`uwsgi` was not found"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_direct_start_is_reported_with_its_process() {
        let d = tempfile::tempdir().unwrap();
        let u = d.path().join("uwsgi");
        std::fs::write(&u, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&u, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut e = executor(d.path());
        let out = run(&mut e, req(d.path(), false), d.path());
        let [Output::Started(s)] = &out[..] else {
            panic!("{out:?}");
        };
        assert_eq!(
            (s.inc, s.name.as_str(), s.owner),
            (Inc(5), "app.ini", (1000, 1000))
        );
        assert!(!s.adopted);
        assert_eq!(s.cwd, d.path());
        // Reap exactly this child (not -1: other tests' children are theirs).
        let st = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(s.process.pid), None).unwrap();
        assert!(
            matches!(st, nix::sys::wait::WaitStatus::Exited(_, 0)),
            "{st:?}"
        );
    }
}
