//! The complete plan of one spawn, decided before anything runs: from the core's
//! [`SpawnRequest`] and the emperor's spawn settings to a [`Job`] (programs, argv, env, cwd,
//! fds, credentials, isolation, which launcher), or why it cannot run. No I/O beyond reading
//! the vassal's config (is it a shim vassal) and looking programs up on `PATH`.

use std::ffi::{OsStr, OsString};
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use crate::core::SpawnRequest;
use crate::spawn::creds::CredsError;
use crate::spawn::isolation::{Creds, Isolation};
use crate::spawn::launcher::{Job, Via};
use crate::spawn::shim::ShimError;
use crate::spawn::{build_argv, resolve, ArgvConfig, Exec, Plan, SpawnError};

/// The emperor-wide inputs of every plan.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// The argv options.
    pub argv: ArgvConfig,
    /// The vassals' base environment (see [`crate::spawn::vassal_env`]).
    pub env: Vec<(OsString, OsString)>,
    /// The emperor's `PATH`.
    pub path: Option<OsString>,
    /// The emperor's own binary (the shim is looked for beside it).
    pub exe: Option<PathBuf>,
    /// `--exec-as-vassal` commands.
    pub exec_as_vassal: Vec<String>,
    /// `--emperor-use-clone` / `--emperor-cap`.
    pub isolation: Isolation,
    /// `--vassal-fork-base` names when a fork server is in use (`None` without one).
    pub fork_bases: Option<Vec<String>>,
}

/// What the plan needs to know about this one vassal beyond the request.
#[derive(Debug)]
pub struct Vassal {
    /// Its working directory (its monitor's directory for dir monitors).
    pub cwd: PathBuf,
    /// Its tyrant credentials (`Ok(None)` outside tyrant mode; from
    /// [`SpawnRequest::creds`] with the user's groups looked up), or why there are none.
    pub creds: Result<Option<Creds>, CredsError>,
}

/// Why a spawn cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A shim vassal whose config or shim binary is unusable (the message says which).
    #[error(transparent)]
    Shim(ShimError),
    /// The groups of a tyrant vassal's user cannot be found (the message says what to do).
    #[error(transparent)]
    Creds(CredsError),
    /// None of the programs could be found.
    #[error(transparent)]
    NotFound(SpawnError),
    /// The fork server cannot apply per-vassal isolation.
    #[error(
        "the fork server cannot apply --emperor-tyrant, --emperor-cap or \
         --emperor-use-clone: list this vassal in --vassal-fork-base or drop them"
    )]
    ForkIsolation,
}

/// True when vassal `name` (config `key`) starts through a fork server with these bases,
/// false for a fork base (matched by instance name, file name or full path).
pub fn forked(bases: &[String], name: &str, key: &str) -> bool {
    let file = Path::new(key).file_name().and_then(|f| f.to_str());
    !bases
        .iter()
        .any(|b| b == name || b == key || Some(b.as_str()) == file)
}

/// A planned spawn: the job and the launcher that runs it.
#[derive(Debug)]
pub struct Planned {
    /// What to start.
    pub job: Job,
    /// Which launcher starts it.
    pub via: Via,
}

/// The job of `req` and its launcher. `stdin` gives the on-demand listener (fd 0); it is asked for only once
/// the programs are known, as it takes the listener out of the loop.
pub fn plan(
    req: SpawnRequest,
    s: &Settings,
    v: Vassal,
    stdin: impl FnOnce() -> Option<RawFd>,
) -> Result<Planned, PlanError> {
    let path = s.path.as_deref();
    let cwd = v.cwd;
    let shim = crate::spawn::shim::plan_for(
        &req.name,
        &req.key,
        req.content.is_some(),
        s.exe.as_deref(),
        path,
        &cwd,
    )
    .transpose()
    .map_err(PlanError::Shim)?;
    let setup = s.isolation.setup(v.creds.map_err(PlanError::Creds)?);
    // A shim vassal runs the shim: uWSGI's programs and argv are not looked for.
    let (programs, argv) = match shim {
        Some(exec) => exec,
        None => uwsgi_command(&s.argv, &req, path, &cwd).map_err(PlanError::NotFound)?,
    };
    let (programs, argv) =
        crate::io::hooks::wrap_exec_as_vassal(&s.exec_as_vassal, &req.name, programs, argv);
    let mut env = s.env.clone();
    // Broodlord: a zerg learns its number (uWSGI's UWSGI_BROODLORD_NUM).
    if let Some(n) = req.zerg {
        env.push(("UWSGI_BROODLORD_NUM".into(), n.to_string().into()));
    }
    let plan = Plan {
        programs,
        argv,
        env,
        cwd,
        with_config: req.content.is_some(),
        stdin: stdin(),
    };
    let via = match &s.fork_bases {
        Some(bases) if forked(bases, &req.name, &req.key) => Via::ForkServer,
        _ => Via::Direct,
    };
    if via == Via::ForkServer && !setup.is_empty() {
        return Err(PlanError::ForkIsolation);
    }
    Ok(Planned {
        job: Job { req, plan, setup },
        via,
    })
}

/// The programs to try and the argv of a uWSGI vassal (overrides, `argv[0]`, fallbacks,
/// each resolved on `path` from `cwd`), or why none can run.
fn uwsgi_command(
    cfg: &ArgvConfig,
    req: &SpawnRequest,
    path: Option<&OsStr>,
    cwd: &Path,
) -> Result<Exec, SpawnError> {
    let binary = cfg.binary();
    let main = resolve(binary, path, cwd);
    let mut programs: Vec<PathBuf> = cfg
        .overrides
        .iter()
        .filter_map(|p| resolve(p, path, cwd))
        .collect();
    programs.extend(main.clone());
    programs.extend(cfg.fallbacks.iter().filter_map(|p| resolve(p, path, cwd)));
    if programs.is_empty() {
        return Err(SpawnError::NotFound {
            program: binary.to_string(),
        });
    }
    let argv0 = main
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| binary.to_string());
    let executable = cfg.magic_exec
        && nix::unistd::access(
            Path::new(&req.key),
            nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::X_OK,
        )
        .is_ok();
    let argv = build_argv(cfg, &argv0, &req.name, executable, req.content.is_some());
    Ok((programs, argv))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Inc, VassalId};

    use std::os::unix::fs::PermissionsExt;

    fn req(dir: &Path, name: &str) -> SpawnRequest {
        SpawnRequest {
            inc: Inc(1),
            vassal: VassalId(0),
            key: dir.join(name).display().to_string(),
            name: name.to_string(),
            monitor: 0,
            ..SpawnRequest::default()
        }
    }

    fn fake_uwsgi(dir: &Path) -> Settings {
        let bin = dir.join("bin");
        std::fs::create_dir(&bin).unwrap();
        let u = bin.join("uwsgi");
        std::fs::write(&u, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&u, std::fs::Permissions::from_mode(0o755)).unwrap();
        Settings {
            path: Some(bin.into_os_string()),
            env: vec![("A".into(), "1".into())],
            ..Settings::default()
        }
    }

    fn vassal(dir: &Path) -> Vassal {
        Vassal {
            cwd: dir.to_path_buf(),
            creds: Ok(None),
        }
    }

    #[test]
    fn a_uwsgi_vassal_gets_the_resolved_binary_and_uwsgi_argv() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("app.ini"), "[uwsgi]\n").unwrap();
        let s = fake_uwsgi(d.path());
        let p = plan(req(d.path(), "app.ini"), &s, vassal(d.path()), || Some(7)).unwrap();
        let u = d.path().join("bin/uwsgi");
        assert_eq!(p.job.plan.programs, vec![u.clone()]);
        assert_eq!(
            p.job.plan.argv,
            vec![u.display().to_string(), "--ini".into(), "app.ini".into()]
        );
        assert_eq!(p.job.plan.stdin, Some(7));
        assert_eq!(p.job.plan.env, s.env);
        assert_eq!(p.via, Via::Direct);
        assert!(p.job.setup.is_empty());
    }

    #[test]
    fn a_zerg_learns_its_number_and_a_fork_server_takes_non_bases() {
        let d = tempfile::tempdir().unwrap();
        let mut s = fake_uwsgi(d.path());
        s.fork_bases = Some(vec!["base.ini".into()]);
        let mut r = req(d.path(), "app.ini");
        r.zerg = Some(3);
        let p = plan(r, &s, vassal(d.path()), || None).unwrap();
        assert!(p
            .job
            .plan
            .env
            .contains(&("UWSGI_BROODLORD_NUM".into(), "3".into())));
        assert_eq!(p.via, Via::ForkServer);
        let p = plan(req(d.path(), "base.ini"), &s, vassal(d.path()), || None).unwrap();
        assert_eq!(p.via, Via::Direct);
    }

    #[test]
    fn errors_say_what_failed_and_the_listener_is_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let s = Settings {
            path: Some(d.path().join("empty").into_os_string()),
            ..Settings::default()
        };
        let mut asked = false;
        let e = plan(req(d.path(), "app.ini"), &s, vassal(d.path()), || {
            asked = true;
            None
        })
        .unwrap_err();
        assert!(matches!(e, PlanError::NotFound(_)), "{e}");
        assert!(e.to_string().contains("`uwsgi` was not found"), "{e}");
        assert!(!asked);
        let mut v = vassal(d.path());
        v.creds = Err(CredsError::NoUser { uid: 4242 });
        let e = plan(req(d.path(), "app.ini"), &s, v, || None).unwrap_err();
        assert!(matches!(e, PlanError::Creds(_)), "{e}");
        assert!(e.to_string().contains("uid 4242"), "{e}");
    }

    #[test]
    fn the_fork_server_refuses_isolation() {
        let d = tempfile::tempdir().unwrap();
        let mut s = fake_uwsgi(d.path());
        s.fork_bases = Some(vec![]);
        let mut v = vassal(d.path());
        v.creds = Ok(Some(Creds {
            uid: 1000,
            gid: 1000,
            groups: vec![],
        }));
        let e = plan(req(d.path(), "app.ini"), &s, v, || None).unwrap_err();
        assert!(matches!(e, PlanError::ForkIsolation));
        assert!(e.to_string().contains("--vassal-fork-base"), "{e}");
    }

    #[test]
    fn fork_bases_match_name_file_or_path() {
        let b = vec!["base.ini".to_string(), "/v/full.ini".to_string()];
        assert!(!forked(&b, "base.ini", "/v/base.ini"));
        assert!(!forked(&b, "x", "/w/base.ini"));
        assert!(!forked(&b, "full.ini", "/v/full.ini"));
        assert!(forked(&b, "app.ini", "/v/app.ini"));
    }
}
