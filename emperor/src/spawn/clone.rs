//! The direct spawn path: `clone(CLONE_VM | CLONE_VFORK | CLONE_FILES)` and `execve`.
//!
//! Everything the child needs (argv, envp, exec candidates, cwd) is built as C strings in the
//! parent. The child shares the emperor's memory until it execs, so no page tables are copied
//! and the cost does not grow with the emperor's size; and its first descriptor syscall,
//! `close_range(.., CLOSE_RANGE_UNSHARE)`, gives it a private fd table holding only the
//! emperor's lowest descriptors (0–2, the first few, and three slots pointed at the child's
//! channel, config socket and stdin), so neither the clone nor the exec does work per
//! descriptor of the emperor (one channel per vassal). Between clone and exec the child only
//! makes raw syscalls (`write` to join its cgroup, `setsid`, signal dispositions, mask,
//! `prctl(PR_SET_PDEATHSIG)`, `dup2`, `close_range`, `fcntl`, `chdir`, `execve`, `_exit`) and
//! reports a failure through shared memory (`Report`), so a missing binary is an error of
//! the spawn call, not a mysterious exit status.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::spawn::isolation::{apply_in_child, is_setup_stage, ChildSetup, SetupError};
use crate::spawn::{Plan, SpawnError, Started};

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

/// Child stages reported back through [`Report`] (the isolation stages are 10 and above).
const STAGE_CHDIR: i32 = 1;
const STAGE_EXEC: i32 = 2;
const STAGE_FILES: i32 = 3;
const STAGE_CGROUP: i32 = 4;
const STAGE_CGROUPNS: i32 = 5;

/// The C strings of one spawn, built in the parent (the child must not allocate).
struct ExecStrings {
    programs: Vec<CString>,
    argv: Vec<CString>,
    env: Vec<CString>,
    cwd: CString,
}

impl ExecStrings {
    /// `plan`'s strings, with `UWSGI_EMPEROR_FD` (and `UWSGI_EMPEROR_FD_CONFIG` when there is
    /// a config socket) naming the descriptors the child finds its sockets at.
    fn new(plan: &Plan, chan_fd: RawFd, cfg_fd: Option<RawFd>) -> Result<ExecStrings, SpawnError> {
        let cstr = |b: &[u8]| CString::new(b).map_err(|_| SpawnError::Nul);
        let programs = plan
            .programs
            .iter()
            .map(|p| cstr(p.as_os_str().as_bytes()))
            .collect::<Result<_, _>>()?;
        let argv = plan
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
        if let Some(cfg_fd) = cfg_fd {
            env.push(cstr(
                format!("UWSGI_EMPEROR_FD_CONFIG={cfg_fd}").as_bytes(),
            )?);
        }
        Ok(ExecStrings {
            programs,
            argv,
            env,
            cwd: cstr(plan.cwd.as_os_str().as_bytes())?,
        })
    }

    /// The pointer arrays `execve` takes (argv and envp NULL-terminated).
    fn pointers(&self) -> ExecPtrs {
        let ptrs =
            |v: &[CString]| -> Vec<*const libc::c_char> { v.iter().map(|c| c.as_ptr()).collect() };
        let mut argv = ptrs(&self.argv);
        argv.push(std::ptr::null());
        let mut env = ptrs(&self.env);
        env.push(std::ptr::null());
        ExecPtrs {
            programs: ptrs(&self.programs),
            argv,
            env,
        }
    }
}

/// Pointers into an [`ExecStrings`], which outlives them.
struct ExecPtrs {
    programs: Vec<*const libc::c_char>,
    argv: Vec<*const libc::c_char>,
    env: Vec<*const libc::c_char>,
}

/// What a failed child leaves for the parent in the memory they share.
#[derive(Default)]
struct Report {
    errno: AtomicI32,
    stage: AtomicI32,
    /// The index of the last program `execve` was tried on.
    prog: AtomicI32,
}

impl Report {
    /// In the child: records `stage` and `errno` and exits (atomic stores and `_exit` only).
    ///
    /// # Safety
    /// Only in the spawn child: it ends the calling process.
    unsafe fn fail(&self, stage: i32, errno: i32) -> ! {
        self.errno.store(errno, Ordering::SeqCst);
        self.stage.store(stage, Ordering::SeqCst);
        // SAFETY: `_exit` is async-signal-safe and ends the child without running anything of
        // the parent's (no atexit handlers, no stdio flush).
        unsafe { libc::_exit(127) }
    }
}

/// The calling thread's `errno`.
fn errno() -> i32 {
    // SAFETY: `__errno_location` returns the calling thread's errno slot, always valid.
    unsafe { *libc::__errno_location() }
}

/// Every signal blocked on the calling thread until dropped (then the old mask is back), so no
/// handler runs in the child, which shares the emperor's memory, before it resets dispositions.
struct BlockedSignals {
    old: libc::sigset_t,
}

impl BlockedSignals {
    fn all() -> BlockedSignals {
        // SAFETY: sigset_t is plain data; sigfillset/pthread_sigmask only write the sets we
        // pass, both valid locals.
        unsafe {
            let mut old: libc::sigset_t = std::mem::zeroed();
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            BlockedSignals { old }
        }
    }
}

impl Drop for BlockedSignals {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `all`.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut());
        }
    }
}

/// Everything the child reads between `clone` and `execve`, prepared by the parent and alive
/// until the parent resumes.
struct Child<'a> {
    exec: &'a ExecPtrs,
    cwd: &'a CStr,
    setup: &'a ChildSetup,
    /// The parent's signal mask, which the child takes back once dispositions are reset.
    mask: &'a libc::sigset_t,
    report: &'a Report,
    /// An open `cgroup.procs` to join first, or -1.
    cg_fd: RawFd,
    /// Make the cgroup namespace after joining the cgroup (see [`Spawner::spawn_with`]).
    late_cgroupns: bool,
    /// The child's fd table keeps only the descriptors below this one.
    keep: libc::c_uint,
    chan_fd: RawFd,
    cfg_fd: Option<RawFd>,
    stdin_fd: RawFd,
    /// The emperor's pid (to see whether it died before PDEATHSIG was set).
    parent: libc::pid_t,
    /// The child is in a new pid namespace (its parent is outside it).
    new_pid: bool,
}

impl Child<'_> {
    /// The child's life until `execve`: raw, async-signal-safe syscalls only, no allocation,
    /// no locks.
    ///
    /// # Safety
    /// Only in the child of `clone(CLONE_VM | CLONE_VFORK | CLONE_FILES)`, on its own stack,
    /// while the parent is suspended.
    unsafe fn run(&self) -> ! {
        // SAFETY: the caller's contract, passed on to each step.
        unsafe {
            self.enter_tree();
            self.take_own_fd_table();
            self.reset_and_isolate();
            self.exec()
        }
    }

    /// First, before anything can fork: join the vassal's cgroup (writing "0" to its
    /// `cgroup.procs` moves the writer) while the fd table is still the emperor's and the
    /// credentials still allow it; then its own session and process group, so what it leaves
    /// behind can be found (and killed) by group and a terminal's Ctrl-C reaches only the
    /// emperor.
    ///
    /// # Safety
    /// As [`Child::run`].
    unsafe fn enter_tree(&self) {
        // SAFETY: raw write/unshare/setsid on the calling task with a static C string.
        unsafe {
            if self.cg_fd >= 0 && libc::write(self.cg_fd, c"0".as_ptr().cast(), 1) != 1 {
                self.report.fail(STAGE_CGROUP, errno());
            }
            if self.late_cgroupns && libc::unshare(libc::CLONE_NEWCGROUP) != 0 {
                self.report.fail(STAGE_CGROUPNS, errno());
            }
            libc::setsid();
        }
    }

    /// Before any descriptor is touched: a private fd table holding only the descriptors below
    /// `keep` (`CLOSE_RANGE_UNSHARE`, Linux 5.9); the shared one (`CLONE_FILES`) is the
    /// emperor's. Older kernels: a full private copy.
    ///
    /// # Safety
    /// As [`Child::run`].
    unsafe fn take_own_fd_table(&self) {
        // SAFETY: raw close_range/unshare with integer arguments.
        unsafe {
            if libc::syscall(
                libc::SYS_close_range,
                self.keep,
                u32::MAX,
                libc::CLOSE_RANGE_UNSHARE as libc::c_uint,
            ) != 0
                && libc::unshare(libc::CLONE_FILES) != 0
            {
                self.report.fail(STAGE_FILES, errno());
            }
        }
    }

    /// Default signal dispositions and the parent's mask; the isolation of `setup` (before
    /// PDEATHSIG: a credential change clears it); PDEATHSIG, and an exit if the emperor is
    /// already gone.
    ///
    /// # Safety
    /// As [`Child::run`].
    unsafe fn reset_and_isolate(&self) {
        // SAFETY: signal/pthread_sigmask/prctl/getppid are async-signal-safe; `apply_in_child`
        // is made for exactly this place (its own contract).
        unsafe {
            for s in HANDLED_SIGNALS {
                libc::signal(s, libc::SIG_DFL);
            }
            libc::pthread_sigmask(libc::SIG_SETMASK, self.mask, std::ptr::null_mut());
            if let Err((stage, e)) = apply_in_child(self.setup) {
                self.report.fail(stage, e);
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            // In a new pid namespace the parent is outside it: getppid() is 0.
            if libc::getppid() != self.parent && !self.new_pid {
                libc::_exit(1);
            }
        }
    }

    /// stdin on fd 0, every other descriptor CLOEXEC but the channel and config socket, the
    /// working directory, then `execve` of each program in turn.
    ///
    /// # Safety
    /// As [`Child::run`].
    unsafe fn exec(&self) -> ! {
        // SAFETY: raw dup2/close_range/fcntl/chdir/execve on descriptors of the child's own
        // table and on C strings and NULL-terminated arrays alive until the parent resumes.
        unsafe {
            libc::dup2(self.stdin_fd, 0);
            // Whatever the emperor inherited or opened without CLOEXEC stays here; only the
            // channel fds below are meant for the vassal.
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
            );
            libc::fcntl(self.chan_fd, libc::F_SETFD, 0);
            if let Some(cfg_fd) = self.cfg_fd {
                libc::fcntl(cfg_fd, libc::F_SETFD, 0);
            }
            if libc::chdir(self.cwd.as_ptr()) != 0 {
                self.report.fail(STAGE_CHDIR, errno());
            }
            for (i, p) in self.exec.programs.iter().enumerate() {
                libc::execve(*p, self.exec.argv.as_ptr(), self.exec.env.as_ptr());
                self.report.errno.store(errno(), Ordering::SeqCst);
                self.report.prog.store(i as i32, Ordering::SeqCst);
            }
            self.report
                .fail(STAGE_EXEC, self.report.errno.load(Ordering::SeqCst))
        }
    }
}

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

    /// Points the slots at the child's channel, config socket and stdin; returns which slots
    /// were pointed (the others stay on `/dev/null` and need no repointing afterwards). On
    /// failure every slot is back on `/dev/null`.
    fn point_slots(
        &self,
        chan: RawFd,
        config: Option<RawFd>,
        stdin: Option<RawFd>,
    ) -> io::Result<[bool; 3]> {
        let used = [true, config.is_some(), stdin.is_some()];
        let pointed = self
            .point_slot(0, Some(chan))
            .and_then(|_| config.map_or(Ok(()), |c| self.point_slot(1, Some(c))))
            .and_then(|_| stdin.map_or(Ok(()), |fd| self.point_slot(2, Some(fd))));
        if let Err(e) = pointed {
            self.reset_slots(used);
            return Err(e);
        }
        Ok(used)
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
        self.spawn_with(plan, &ChildSetup::default())
    }

    /// Starts `plan`, applying `setup` in the child before exec (see
    /// [`crate::spawn::isolation`]).
    pub fn spawn_with(&mut self, plan: &Plan, setup: &ChildSetup) -> Result<Started, SpawnError> {
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
        let cfg_fd = config_pair.is_some().then_some(slot_cfg);
        let strings = ExecStrings::new(plan, chan_fd, cfg_fd)?;
        let exec = strings.pointers();
        let used = self.point_slots(
            child_chan.as_raw_fd(),
            config_pair.as_ref().map(|(_, c)| c.as_raw_fd()),
            plan.stdin,
        )?;
        let report = Report::default();
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
        let blocked = BlockedSignals::all();
        let child = Child {
            exec: &exec,
            cwd: &strings.cwd,
            setup,
            mask: &blocked.old,
            report: &report,
            cg_fd,
            late_cgroupns,
            // The child keeps the descriptors below this one (and closes the ones it does
            // not want at exec); everything above is not even copied into its table.
            keep: chan_fd.max(slot_cfg).max(stdin_fd) as libc::c_uint + 1,
            chan_fd,
            cfg_fd,
            stdin_fd,
            parent: std::process::id() as libc::pid_t,
            new_pid: setup.clone_flags & libc::CLONE_NEWPID != 0,
        };
        let res = self.clone_child(&child, clone_flags);
        drop(blocked);
        // The child has exec'd or exited: the emperor keeps no reference to its ends (EOF on
        // the channel must mean the child is gone).
        self.reset_slots(used);
        let pid = res.map_err(|e| {
            let err = io::Error::from_raw_os_error(e as i32);
            if setup.clone_flags != 0 {
                SetupError::clone_failed(err, setup).into()
            } else {
                SpawnError::Io(err)
            }
        })?;
        drop(child_chan);
        if report.stage.load(Ordering::SeqCst) != 0 {
            // The child has exited: reap it now so the loop never sees it.
            let _ = nix::sys::wait::waitpid(pid, None);
            return Err(child_failure(&report, plan, setup));
        }
        Ok(Started {
            pid: pid.as_raw(),
            channel,
            config: config_pair.map(|(ours, _theirs)| ours),
        })
    }

    /// Runs `child` in a `clone(2)` child with `flags` (namespaces) on top of
    /// `CLONE_VM | CLONE_VFORK | CLONE_FILES`; returns once it has exec'd or exited.
    fn clone_child(
        &mut self,
        child: &Child<'_>,
        flags: libc::c_int,
    ) -> nix::Result<nix::unistd::Pid> {
        // SAFETY: the closure runs only in the clone child, as `Child::run` requires.
        let cb = Box::new(|| -> isize { unsafe { child.run() } });
        // SAFETY: CLONE_VM|CLONE_VFORK suspends this thread until the child execs or exits, so
        // the closure's borrows (`child` and what it points to, all alive in the caller) stay
        // valid; the child runs on its own stack (`self.stack`) and only does async-signal-safe
        // work. With CLONE_FILES it shares our fd table only until it takes its own.
        unsafe {
            nix::sched::clone(
                cb,
                &mut self.stack,
                nix::sched::CloneFlags::CLONE_VM
                    | nix::sched::CloneFlags::CLONE_VFORK
                    | nix::sched::CloneFlags::CLONE_FILES
                    | nix::sched::CloneFlags::from_bits_retain(flags),
                Some(libc::SIGCHLD),
            )
        }
    }
}

/// The error a child that failed before or at `execve` reported.
fn child_failure(report: &Report, plan: &Plan, setup: &ChildSetup) -> SpawnError {
    let stage = report.stage.load(Ordering::SeqCst);
    let errno = report.errno.load(Ordering::SeqCst);
    let err = io::Error::from_raw_os_error(errno);
    match stage {
        s if is_setup_stage(s) => SetupError::of_stage(s, errno, setup).into(),
        STAGE_CGROUP => SpawnError::Cgroup(err),
        STAGE_CGROUPNS => SpawnError::CgroupNs {
            names: setup.clone_names.clone(),
            err,
        },
        STAGE_FILES => SpawnError::Files(err),
        STAGE_CHDIR => SpawnError::Chdir {
            dir: plan.cwd.clone(),
            err,
        },
        _ => {
            let i = report.prog.load(Ordering::SeqCst) as usize;
            SpawnError::Exec {
                program: plan.programs.get(i).cloned().unwrap_or_default(),
                err,
            }
        }
    }
}

#[cfg(test)]
mod tests;
