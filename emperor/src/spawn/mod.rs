//! Starting a vassal: argv (uWSGI's rules), environment, and the process itself.
//!
//! Everything the child needs (argv, envp, exec candidates, cwd) is built as C strings in the
//! parent. The child is created with `clone(CLONE_VM | CLONE_VFORK | CLONE_FILES)`: it shares the
//! emperor's memory until it execs, so no page tables are copied and the cost does not grow with
//! the emperor's size; and its first syscall, `close_range(.., CLOSE_RANGE_UNSHARE)`, gives it a
//! private fd table holding only the emperor's lowest descriptors (0–2, the first few, and three
//! slots pointed at the child's channel, config socket and stdin), so neither the clone nor the
//! exec does work per descriptor of the emperor (one channel per vassal). Between clone and exec
//! it only makes raw syscalls (`write` to join its cgroup, `setsid`, signal dispositions, mask,
//! `prctl(PR_SET_PDEATHSIG)`, `dup2`, `close_range`, `fcntl`, `chdir`, `execve`, `_exit`) and
//! reports an exec failure through
//! shared memory, so a missing binary is an error of the spawn call, not a mysterious exit
//! status.

pub mod cgroup;
pub mod creds;
pub mod isolation;
pub mod launcher;
pub mod plan;
pub mod shim;

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use crate::monitor::config_flag;

/// How to get uWSGI when it is missing.
pub const INSTALL_HINT: &str = "install uWSGI with its Python 3 plugin (Debian/Ubuntu: `apt-get install uwsgi-core uwsgi-plugin-python3`; \
     elsewhere: `pip install uwsgi`), or point --emperor-wrapper at a uwsgi binary";

/// The argv settings shared by every vassal (uWSGI option names in comments).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArgvConfig {
    /// `emperor-wrapper`: `argv[0]`; `uwsgi` when unset.
    pub wrapper: Option<String>,
    /// `emperor-wrapper-override`: tried before `argv[0]`.
    pub overrides: Vec<String>,
    /// `emperor-wrapper-fallback`: tried after `argv[0]`.
    pub fallbacks: Vec<String>,
    /// `emperor-magic-exec`.
    pub magic_exec: bool,
    /// `emperor-extra-extension`.
    pub extra_ext: Vec<String>,
    /// `vassals-inherit-before`.
    pub inherit_before: Vec<String>,
    /// `vassals-include-before`.
    pub include_before: Vec<String>,
    /// `vassals-set` / `vassal-set`.
    pub set: Vec<String>,
    /// `vassals-inherit`.
    pub inherit: Vec<String>,
    /// `vassals-include`.
    pub include: Vec<String>,
}

impl ArgvConfig {
    /// The binary asked for as `argv[0]`.
    pub fn binary(&self) -> &str {
        self.wrapper.as_deref().unwrap_or("uwsgi")
    }
}

/// argv for vassal `name` (uWSGI's order): argv0, inherit/include-before, `--set`s, the config
/// flag and name (`exec://` for executable configs with magic exec, `emperor://` when the
/// config is pushed), inherit/include.
pub fn build_argv(
    cfg: &ArgvConfig,
    argv0: &str,
    name: &str,
    executable: bool,
    pushed: bool,
) -> Vec<String> {
    let mut a = vec![argv0.to_string()];
    for t in &cfg.inherit_before {
        a.extend(["--inherit".to_string(), t.clone()]);
    }
    for t in &cfg.include_before {
        a.extend(["--include".to_string(), t.clone()]);
    }
    for kv in &cfg.set {
        a.extend(["--set".to_string(), kv.clone()]);
    }
    // A zerg (`app.ini:zerg`, broodlord) takes the flag of its base config.
    let base = name.strip_suffix(":zerg").unwrap_or(name);
    let flag = config_flag(base, &cfg.extra_ext).unwrap_or("--inherit");
    a.push(flag.to_string());
    if cfg.magic_exec && executable {
        a.push(format!("exec://{name}"));
    } else if pushed {
        a.push(format!("emperor://{name}"));
    } else {
        a.push(name.to_string());
    }
    for t in &cfg.inherit {
        a.extend(["--inherit".to_string(), t.clone()]);
    }
    for t in &cfg.include {
        a.extend(["--include".to_string(), t.clone()]);
    }
    a
}

/// The environment every vassal starts from: the emperor's, without `UWSGI_RELOADS`,
/// `NOTIFY_SOCKET` and any inherited emperor fds, with every `UWSGI_VASSAL_X=v` turned into
/// `UWSGI_X=v` (the rewritten value wins over an existing `UWSGI_X`).
pub fn vassal_env<I>(parent: I) -> Vec<(OsString, OsString)>
where
    I: IntoIterator<Item = (OsString, OsString)>,
{
    const DROP: [&str; 5] = [
        "UWSGI_RELOADS",
        "NOTIFY_SOCKET",
        "UWSGI_EMPEROR_FD",
        "UWSGI_EMPEROR_FD_CONFIG",
        "UWSGI_BROODLORD_NUM",
    ];
    let mut plain: Vec<(OsString, OsString)> = Vec::new();
    let mut rewritten: Vec<(OsString, OsString)> = Vec::new();
    for (k, v) in parent {
        let kb = k.as_bytes();
        if DROP.iter().any(|d| d.as_bytes() == kb) {
            continue;
        }
        if let Some(rest) = kb.strip_prefix(b"UWSGI_VASSAL_") {
            if !rest.is_empty() {
                let mut nk = b"UWSGI_".to_vec();
                nk.extend_from_slice(rest);
                rewritten.push((OsStr::from_bytes(&nk).to_os_string(), v));
            }
            continue;
        }
        plain.push((k, v));
    }
    plain.retain(|(k, _)| !rewritten.iter().any(|(r, _)| r == k));
    plain.extend(rewritten);
    plain
}

/// Resolves a program like `execvp` would: names with a `/` are taken relative to `cwd`,
/// others are searched in `path` (a PATH value). `None` when nothing executable is found.
pub fn resolve(program: &str, path: Option<&OsStr>, cwd: &Path) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(cwd.join(program));
    }
    let path = path?;
    std::env::split_paths(path)
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| cwd.join(d).join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

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
    /// The vassal's fd 0: an on-demand listener (seam for socket activation); `/dev/null`
    /// when `None`. The fd stays open (and owned) in the emperor.
    pub stdin: Option<std::os::fd::RawFd>,
}

/// What starts a vassal process. [`Spawner`] is the local one; a fork-server client is another
/// (it would send the same [`Plan`]: argv, env, fds).
pub trait Launcher: std::fmt::Debug {
    /// Starts `plan`.
    fn launch(&mut self, plan: &Plan) -> Result<Started, SpawnError>;

    /// Starts `plan` with per-vassal isolation (namespaces, capabilities, tyrant credentials);
    /// a launcher that cannot apply a non-empty `setup` refuses instead of ignoring it.
    fn launch_isolated(
        &mut self,
        plan: &Plan,
        setup: &crate::isolation::ChildSetup,
    ) -> Result<Started, SpawnError> {
        if setup.is_empty() {
            self.launch(plan)
        } else {
            Err(SpawnError::Io(io::Error::new(
                io::ErrorKind::Unsupported,
                "this launcher cannot apply --emperor-tyrant, --emperor-cap or --emperor-use-clone; start the emperor without the fork server to use them",
            )))
        }
    }
}

impl Launcher for Spawner {
    fn launch(&mut self, plan: &Plan) -> Result<Started, SpawnError> {
        self.spawn(plan)
    }

    fn launch_isolated(
        &mut self,
        plan: &Plan,
        setup: &crate::isolation::ChildSetup,
    ) -> Result<Started, SpawnError> {
        self.spawn_with(plan, setup)
    }
}

/// Why a spawn failed.
#[derive(Debug)]
pub enum SpawnError {
    /// No program could be found.
    NotFound {
        /// What was looked for.
        program: String,
    },
    /// A syscall in the parent failed.
    Io(io::Error),
    /// The child could not chdir into its directory.
    Chdir {
        /// The directory.
        dir: PathBuf,
        /// The error.
        err: io::Error,
    },
    /// Every exec attempt failed.
    Exec {
        /// The last program tried.
        program: PathBuf,
        /// The error.
        err: io::Error,
    },
    /// A string contained a NUL byte.
    Nul,
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpawnError::NotFound { program } => write!(
                f,
                "`{program}` was not found on PATH ({}); {INSTALL_HINT}",
                std::env::var("PATH").unwrap_or_default()
            ),
            SpawnError::Io(e) => write!(f, "{e}"),
            SpawnError::Chdir { dir, err } => {
                write!(f, "cannot chdir into {}: {err}", dir.display())
            }
            SpawnError::Exec { program, err } => {
                write!(f, "cannot execute {}: {err}", program.display())
            }
            SpawnError::Nul => write!(f, "argv or environment contains a NUL byte"),
        }
    }
}

impl std::error::Error for SpawnError {}

impl From<io::Error> for SpawnError {
    fn from(e: io::Error) -> Self {
        SpawnError::Io(e)
    }
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

/// Signals whose handlers the emperor installs; the child resets them to the default.
pub const HANDLED_SIGNALS: [i32; 9] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGQUIT,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGURG,
    libc::SIGWINCH,
    libc::SIGCHLD,
    libc::SIGPIPE,
];

/// Spawns vassals; owns the child stack and `/dev/null`.
#[derive(Debug)]
pub struct Spawner {
    stack: Vec<u8>,
    devnull: OwnedFd,
    /// Three descriptors on `/dev/null` (CLOEXEC) at the lowest numbers free when the spawner
    /// was made. For each spawn they are pointed at the child's channel, config socket and
    /// stdin, so the child can take a private fd table holding only the descriptors below them
    /// instead of a copy of the emperor's (one channel per vassal); then pointed back.
    slots: [OwnedFd; 3],
}

const STAGE_CHDIR: i32 = 1;
const STAGE_EXEC: i32 = 2;
const STAGE_FILES: i32 = 3;
const STAGE_CGROUP: i32 = 4;
const STAGE_CGROUPNS: i32 = 5;

impl Spawner {
    /// A spawner (opens `/dev/null` and three low descriptors on it, all CLOEXEC).
    pub fn new() -> io::Result<Spawner> {
        let devnull: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .open("/dev/null")?
            .into();
        let slot = || -> io::Result<OwnedFd> {
            // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own returns a new one (lowest free
            // number >= 3) or -1.
            let fd = unsafe { libc::fcntl(devnull.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` was just created and is owned by nobody else.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        };
        let slots = [slot()?, slot()?, slot()?];
        Ok(Spawner {
            stack: vec![0u8; 256 * 1024],
            devnull,
            slots,
        })
    }

    /// Points slot `i` at `fd` (or back at `/dev/null` when `fd` is `None`), CLOEXEC.
    fn point_slot(&self, i: usize, fd: Option<RawFd>) -> io::Result<()> {
        let src = fd.unwrap_or(self.devnull.as_raw_fd());
        // SAFETY: dup3 onto a slot we own; it atomically replaces what the slot referred to.
        if unsafe { libc::dup3(src, self.slots[i].as_raw_fd(), libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Points the slots in `used` back at `/dev/null` (the others still are), so the emperor
    /// keeps no reference to a child's ends. Nothing to do on failure: the next spawn repoints
    /// the slots anyway.
    fn reset_slots(&self, used: [bool; 3]) {
        for (i, _) in used.iter().enumerate().filter(|(_, u)| **u) {
            let _ = self.point_slot(i, None);
        }
    }

    /// Starts `plan`; on success the child runs (exec succeeded).
    pub fn spawn(&mut self, plan: &Plan) -> Result<Started, SpawnError> {
        self.spawn_with(plan, &crate::isolation::ChildSetup::default())
    }

    /// Starts `plan`, applying `setup` in the child before exec (see [`crate::isolation`]).
    pub fn spawn_with(
        &mut self,
        plan: &Plan,
        setup: &crate::isolation::ChildSetup,
    ) -> Result<Started, SpawnError> {
        if plan.programs.is_empty() {
            return Err(SpawnError::NotFound {
                program: plan.argv.first().cloned().unwrap_or_default(),
            });
        }
        let (channel, child_chan) = UnixStream::pair()?;
        let config_pair = if plan.with_config {
            Some(UnixStream::pair()?)
        } else {
            None
        };
        // The child finds its channel, config socket and stdin at the slots' numbers.
        let [chan_fd, slot_cfg, stdin_fd] = [0, 1, 2].map(|i| self.slots[i].as_raw_fd());
        let cfg_fd = if config_pair.is_some() { slot_cfg } else { -1 };
        // The child keeps the descriptors below this one (and closes the ones it does not
        // want at exec); everything above is not even copied into its table.
        let keep = chan_fd.max(slot_cfg).max(stdin_fd) as libc::c_uint + 1;

        let cstr = |b: &[u8]| CString::new(b).map_err(|_| SpawnError::Nul);
        let programs: Vec<CString> = plan
            .programs
            .iter()
            .map(|p| cstr(p.as_os_str().as_bytes()))
            .collect::<Result<_, _>>()?;
        let argv: Vec<CString> = plan
            .argv
            .iter()
            .map(|a| cstr(a.as_bytes()))
            .collect::<Result<_, _>>()?;
        let mut env: Vec<CString> = Vec::with_capacity(plan.env.len() + 2);
        for (k, v) in &plan.env {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            env.push(cstr(&kv)?);
        }
        env.push(cstr(format!("UWSGI_EMPEROR_FD={chan_fd}").as_bytes())?);
        if cfg_fd >= 0 {
            env.push(cstr(
                format!("UWSGI_EMPEROR_FD_CONFIG={cfg_fd}").as_bytes(),
            )?);
        }
        let cwd = cstr(plan.cwd.as_os_str().as_bytes())?;
        let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
        argv_p.push(std::ptr::null());
        let mut env_p: Vec<*const libc::c_char> = env.iter().map(|c| c.as_ptr()).collect();
        env_p.push(std::ptr::null());
        let prog_p: Vec<*const libc::c_char> = programs.iter().map(|c| c.as_ptr()).collect();

        let pointed = self
            .point_slot(0, Some(child_chan.as_raw_fd()))
            .and_then(|_| match &config_pair {
                Some((_, c)) => self.point_slot(1, Some(c.as_raw_fd())),
                None => Ok(()),
            })
            .and_then(|_| match plan.stdin {
                Some(fd) => self.point_slot(2, Some(fd)),
                None => Ok(()),
            });
        // Slots left on /dev/null need no repointing afterwards.
        let used = [true, config_pair.is_some(), plan.stdin.is_some()];
        if let Err(e) = pointed {
            self.reset_slots(used);
            return Err(e.into());
        }
        let err_no = AtomicI32::new(0);
        let err_stage = AtomicI32::new(0);
        let err_prog = AtomicI32::new(0);

        // SAFETY: sigset_t is plain data; sigfillset/pthread_sigmask only write the sets we pass.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers to local sigsets; blocks every signal so no handler can run in
        // the child (which shares our memory) before it resets dispositions.
        unsafe {
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        }
        let cg_fd = setup.cgroup_procs.unwrap_or(-1);
        // A new cgroup namespace (--emperor-use-clone=cgroup) is made after joining the
        // vassal's cgroup, so it is rooted there (and the join is not refused as a move out of
        // the namespace, as with `nsdelegate`).
        let late_cgroupns = cg_fd >= 0 && setup.clone_flags & libc::CLONE_NEWCGROUP != 0;
        let clone_flags = if late_cgroupns {
            setup.clone_flags & !libc::CLONE_NEWCGROUP
        } else {
            setup.clone_flags
        };
        let parent = std::process::id() as libc::pid_t;
        let new_pid = setup.clone_flags & libc::CLONE_NEWPID != 0;
        let old_ref = &old;
        let child = Box::new(|| -> isize {
            // Runs in the child, sharing the parent's memory, until execve: raw syscalls only,
            // no allocation, no locks.
            // SAFETY: every call below is a raw, async-signal-safe syscall wrapper on valid
            // pointers (C strings and arrays built above, alive until the parent resumes).
            unsafe {
                // First, before anything can fork: join the vassal's cgroup (writing "0" to
                // its cgroup.procs moves the writer), while the fd table is still the
                // emperor's and the credentials still allow it.
                if cg_fd >= 0 && libc::write(cg_fd, c"0".as_ptr().cast(), 1) != 1 {
                    err_no.store(*libc::__errno_location(), Ordering::SeqCst);
                    err_stage.store(STAGE_CGROUP, Ordering::SeqCst);
                    libc::_exit(127);
                }
                if late_cgroupns && libc::unshare(libc::CLONE_NEWCGROUP) != 0 {
                    err_no.store(*libc::__errno_location(), Ordering::SeqCst);
                    err_stage.store(STAGE_CGROUPNS, Ordering::SeqCst);
                    libc::_exit(127);
                }
                // Its own session and process group: what it leaves behind can be found (and
                // killed) by group, and a terminal's Ctrl-C reaches only the emperor.
                libc::setsid();
                // Then, before any descriptor is touched: a private fd table holding only
                // the descriptors below `keep` (CLOSE_RANGE_UNSHARE, Linux 5.9); the shared one
                // (CLONE_FILES) is the emperor's. Older kernels: a full private copy.
                if libc::syscall(
                    libc::SYS_close_range,
                    keep,
                    u32::MAX,
                    libc::CLOSE_RANGE_UNSHARE as libc::c_uint,
                ) != 0
                    && libc::unshare(libc::CLONE_FILES) != 0
                {
                    err_no.store(*libc::__errno_location(), Ordering::SeqCst);
                    err_stage.store(STAGE_FILES, Ordering::SeqCst);
                    libc::_exit(127);
                }
                for s in HANDLED_SIGNALS {
                    libc::signal(s, libc::SIG_DFL);
                }
                libc::pthread_sigmask(libc::SIG_SETMASK, old_ref, std::ptr::null_mut());
                // Before PDEATHSIG: a credential change clears it.
                if let Err((stage, e)) = crate::isolation::apply_in_child(setup) {
                    err_no.store(e, Ordering::SeqCst);
                    err_stage.store(stage, Ordering::SeqCst);
                    libc::_exit(127);
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                // In a new pid namespace the parent is outside it: getppid() is 0.
                if libc::getppid() != parent && !new_pid {
                    libc::_exit(1);
                }
                libc::dup2(stdin_fd, 0);
                // Whatever the emperor inherited or opened without CLOEXEC stays here; only
                // the channel fds below are meant for the vassal.
                libc::syscall(
                    libc::SYS_close_range,
                    3u32,
                    u32::MAX,
                    libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
                );
                libc::fcntl(chan_fd, libc::F_SETFD, 0);
                if cfg_fd >= 0 {
                    libc::fcntl(cfg_fd, libc::F_SETFD, 0);
                }
                if libc::chdir(cwd.as_ptr()) != 0 {
                    err_no.store(*libc::__errno_location(), Ordering::SeqCst);
                    err_stage.store(STAGE_CHDIR, Ordering::SeqCst);
                    libc::_exit(127);
                }
                for (i, p) in prog_p.iter().enumerate() {
                    libc::execve(*p, argv_p.as_ptr(), env_p.as_ptr());
                    err_no.store(*libc::__errno_location(), Ordering::SeqCst);
                    err_prog.store(i as i32, Ordering::SeqCst);
                }
                err_stage.store(STAGE_EXEC, Ordering::SeqCst);
                libc::_exit(127);
            }
        });
        // SAFETY: CLONE_VM|CLONE_VFORK suspends this thread until the child execs or exits, so
        // the closure's borrows (all locals of this frame) stay valid; the child runs on its own
        // stack (`self.stack`) and only does async-signal-safe work. With CLONE_FILES it shares
        // our fd table only until its first syscall gives it its own.
        let res = unsafe {
            nix::sched::clone(
                child,
                &mut self.stack,
                nix::sched::CloneFlags::CLONE_VM
                    | nix::sched::CloneFlags::CLONE_VFORK
                    | nix::sched::CloneFlags::CLONE_FILES
                    | nix::sched::CloneFlags::from_bits_retain(clone_flags),
                Some(libc::SIGCHLD),
            )
        };
        // SAFETY: restores the mask saved above.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        }
        // The child has exec'd or exited: the emperor keeps no reference to its ends (EOF on
        // the channel must mean the child is gone).
        self.reset_slots(used);
        let pid = res.map_err(|e| {
            let err = io::Error::from_raw_os_error(e as i32);
            if setup.clone_flags != 0 {
                SpawnError::Io(io::Error::new(
                    err.kind(),
                    crate::isolation::describe_clone_failure(&err, setup),
                ))
            } else {
                SpawnError::Io(err)
            }
        })?;
        drop(child_chan);
        let stage = err_stage.load(Ordering::SeqCst);
        if stage != 0 {
            // The child has exited: reap it now so the loop never sees it.
            let _ = nix::sys::wait::waitpid(pid, None);
            let errno = err_no.load(Ordering::SeqCst);
            let err = io::Error::from_raw_os_error(errno);
            if crate::isolation::is_setup_stage(stage) {
                return Err(SpawnError::Io(io::Error::new(
                    err.kind(),
                    crate::isolation::describe(stage, errno, setup),
                )));
            }
            if stage == STAGE_CGROUP {
                return Err(SpawnError::Io(io::Error::new(
                    err.kind(),
                    format!("cannot join the vassal's cgroup: {err}; pass --emperor-process-tree=pgroup if cgroups cannot be used here"),
                )));
            }
            if stage == STAGE_CGROUPNS {
                return Err(SpawnError::Io(io::Error::new(
                    err.kind(),
                    format!("cannot create the vassal's cgroup namespace (--emperor-use-clone={}): {err}; the emperor needs CAP_SYS_ADMIN", setup.clone_names),
                )));
            }
            if stage == STAGE_FILES {
                return Err(SpawnError::Io(io::Error::new(
                    err.kind(),
                    format!("cannot give the child its own file descriptor table: {err}"),
                )));
            }
            return Err(if stage == STAGE_CHDIR {
                SpawnError::Chdir {
                    dir: plan.cwd.clone(),
                    err,
                }
            } else {
                let i = err_prog.load(Ordering::SeqCst) as usize;
                SpawnError::Exec {
                    program: plan.programs.get(i).cloned().unwrap_or_default(),
                    err,
                }
            });
        }
        let config = config_pair.map(|(ours, theirs)| {
            drop(theirs);
            ours
        });
        Ok(Started {
            pid: pid.as_raw(),
            channel,
            config,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(a: &str, b: &str) -> (OsString, OsString) {
        (a.into(), b.into())
    }

    #[test]
    fn argv_order_matches_uwsgi() {
        let cfg = ArgvConfig {
            inherit_before: vec!["b.ini".into()],
            include_before: vec!["c.ini".into()],
            set: vec!["processes=1".into()],
            inherit: vec!["t.ini".into()],
            include: vec!["i.ini".into()],
            ..Default::default()
        };
        assert_eq!(
            build_argv(&cfg, "/usr/bin/uwsgi", "app.ini", false, false),
            [
                "/usr/bin/uwsgi",
                "--inherit",
                "b.ini",
                "--include",
                "c.ini",
                "--set",
                "processes=1",
                "--ini",
                "app.ini",
                "--inherit",
                "t.ini",
                "--include",
                "i.ini"
            ]
        );
        let magic = ArgvConfig {
            magic_exec: true,
            ..Default::default()
        };
        assert_eq!(
            build_argv(&magic, "u", "gen.ini", true, false),
            ["u", "--ini", "exec://gen.ini"]
        );
        assert_eq!(
            build_argv(&magic, "u", "gen.ini", false, true),
            ["u", "--ini", "emperor://gen.ini"]
        );
        assert_eq!(build_argv(&magic, "u", "x.yml", false, false)[1], "--yaml");
    }

    #[test]
    fn env_rewrite_is_done_right() {
        let env = vassal_env(vec![
            os("PATH", "/bin"),
            os("UWSGI_VASSAL_FOO", "bar"),
            os("UWSGI_ORIGINAL_PROC_NAME", "uwsgi"),
            os("UWSGI_RELOADS", "3"),
            os("NOTIFY_SOCKET", "/run/x"),
            os("UWSGI_EMPEROR_FD", "7"),
            os("UWSGI_FOO", "old"),
            os("UWSGI_VASSAL_", "ignored"),
        ]);
        assert_eq!(
            env,
            vec![
                os("PATH", "/bin"),
                os("UWSGI_ORIGINAL_PROC_NAME", "uwsgi"),
                os("UWSGI_FOO", "bar"),
            ]
        );
    }

    #[test]
    fn resolve_like_execvp() {
        let cwd = Path::new("/");
        assert_eq!(
            resolve("sh", Some(OsStr::new("/nonexistent:/bin:/usr/bin")), cwd)
                .unwrap()
                .file_name()
                .unwrap(),
            "sh"
        );
        assert_eq!(
            resolve("no-such-binary-x", Some(OsStr::new("/bin")), cwd),
            None
        );
        assert_eq!(
            resolve("./w.sh", None, Path::new("/base")),
            Some(PathBuf::from("/base/./w.sh"))
        );
    }

    fn plan(script: &str, cwd: &Path) -> Plan {
        Plan {
            programs: vec![PathBuf::from("/bin/sh")],
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env: vec![os("PATH", "/usr/bin:/bin")],
            cwd: cwd.to_path_buf(),
            with_config: true,
            stdin: None,
        }
    }

    #[test]
    fn child_gets_only_its_fds_devnull_stdin_env_and_cwd() {
        let d = tempfile::tempdir().unwrap();
        let mut sp = Spawner::new().unwrap();
        let mut p = plan("", d.path());
        p.programs =
            vec![resolve("sleep", Some(OsStr::new("/usr/bin:/bin")), Path::new("/")).unwrap()];
        p.argv = vec!["sleep".into(), "30".into()];
        let st = sp.spawn(&p).unwrap();
        // The child is killed and reaped even if an assertion below fails.
        struct Reap(i32);
        impl Drop for Reap {
            fn drop(&mut self) {
                let _ = kill_and_reap(self.0);
            }
        }
        let _reap = Reap(st.pid);
        // CLONE_VFORK resumes us once the kernel swapped the child's memory, before the
        // dynamic loader has finished (it briefly holds fds of its own): look once `sleep` is
        // asleep in nanosleep.
        let proc_ = PathBuf::from(format!("/proc/{}", st.pid));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let wchan = std::fs::read_to_string(proc_.join("wchan")).unwrap_or_default();
            if wchan.contains("nanosleep") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the child did not reach its sleep within 10 s (wchan {wchan:?})"
            );
            std::thread::yield_now();
        }
        let env = std::fs::read(proc_.join("environ")).unwrap();
        let cwd = std::fs::read_link(proc_.join("cwd")).unwrap();
        let fd0 = std::fs::read_link(proc_.join("fd/0")).unwrap();
        let mut fds: Vec<i32> = std::fs::read_dir(proc_.join("fd"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
            .collect();
        fds.sort();
        let status = std::fs::read_to_string(proc_.join("status")).unwrap();
        assert_eq!(cwd, std::fs::canonicalize(d.path()).unwrap());
        assert_eq!(fd0, PathBuf::from("/dev/null"));
        let env = String::from_utf8_lossy(&env).replace('\0', "\n");
        let chan: i32 = env
            .lines()
            .find_map(|l| l.strip_prefix("UWSGI_EMPEROR_FD="))
            .unwrap()
            .parse()
            .unwrap();
        let cfg: i32 = env
            .lines()
            .find_map(|l| l.strip_prefix("UWSGI_EMPEROR_FD_CONFIG="))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(fds, vec![0, 1, 2, chan.min(cfg), chan.max(cfg)], "{env}");
        // Signal dispositions and mask are back to normal in the child.
        let line = |k: &str| {
            status
                .lines()
                .find(|l| l.starts_with(k))
                .unwrap()
                .split_whitespace()
                .nth(1)
                .unwrap()
                .to_string()
        };
        assert_eq!(u64::from_str_radix(&line("SigBlk:"), 16).unwrap(), 0);
    }

    /// `FDSize:` (slots in the fd table) of `/proc/<pid>/status`.
    fn fd_table_size(pid: &str) -> usize {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("FDSize:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn child_table_is_not_a_copy_of_the_emperor_descriptors() {
        let mut sp = Spawner::new().unwrap();
        // One channel per vassal: an emperor with 1,000 vassals holds ~1,000 descriptors.
        let (_, hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        let _ = nix::sys::resource::setrlimit(
            nix::sys::resource::Resource::RLIMIT_NOFILE,
            hard.min(4096),
            hard,
        );
        let many: Vec<(UnixStream, UnixStream)> =
            (0..600).map(|_| UnixStream::pair().unwrap()).collect();
        assert!(fd_table_size("self") >= 1024);
        let mut p = plan("", Path::new("/"));
        p.programs =
            vec![resolve("sleep", Some(OsStr::new("/usr/bin:/bin")), Path::new("/")).unwrap()];
        p.argv = vec!["sleep".into(), "30".into()];
        let mut st = sp.spawn(&p).unwrap();
        let pid = st.pid;
        let proc_ = PathBuf::from(format!("/proc/{pid}"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !std::fs::read_to_string(proc_.join("wchan"))
            .unwrap_or_default()
            .contains("nanosleep")
        {
            if std::time::Instant::now() >= deadline {
                let _ = kill_and_reap(pid);
                panic!("the child did not reach its sleep within 10 s");
            }
            std::thread::yield_now();
        }
        let size = fd_table_size(&pid.to_string());
        let fds = std::fs::read_dir(proc_.join("fd")).unwrap().count();
        let _ = kill_and_reap(pid);
        drop(many);
        assert!(size <= 256, "the child's fd table has {size} slots");
        assert_eq!(fds, 5, "0, 1, 2, channel, config");
        // The emperor kept no reference to the child's end: its exit is EOF on the channel.
        st.channel
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut b = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut st.channel, &mut b).unwrap(), 0);
    }

    #[test]
    fn stdin_seam_hands_a_listener_as_fd_0() {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("od.sock")).unwrap();
        let mut sp = Spawner::new().unwrap();
        let mut p = plan("", Path::new("/"));
        p.programs =
            vec![resolve("sleep", Some(OsStr::new("/usr/bin:/bin")), Path::new("/")).unwrap()];
        p.argv = vec!["sleep".into(), "30".into()];
        p.stdin = Some(listener.as_raw_fd());
        let st = sp.spawn(&p).unwrap();
        let fd0 = std::fs::read_link(format!("/proc/{}/fd/0", st.pid)).unwrap();
        let _ = kill_and_reap(st.pid);
        assert!(fd0.to_string_lossy().starts_with("socket:"), "{fd0:?}");
    }

    fn kill_and_reap(pid: i32) -> nix::Result<nix::sys::wait::WaitStatus> {
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        nix::sys::wait::waitpid(pid, None)
    }

    #[test]
    fn missing_program_and_bad_cwd_are_errors() {
        let mut sp = Spawner::new().unwrap();
        let mut p = plan("true", Path::new("/"));
        p.programs = vec![PathBuf::from("/nonexistent/uwsgi")];
        match sp.spawn(&p) {
            Err(SpawnError::Exec { err, .. }) => {
                assert_eq!(err.kind(), io::ErrorKind::NotFound)
            }
            other => panic!("{other:?}"),
        }
        let p = plan("true", Path::new("/nonexistent-dir"));
        assert!(matches!(sp.spawn(&p), Err(SpawnError::Chdir { .. })));
        let mut p = plan("true", Path::new("/"));
        p.programs.clear();
        assert!(sp
            .spawn(&p)
            .unwrap_err()
            .to_string()
            .contains("not found on PATH"));
    }
}
