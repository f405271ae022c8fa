//! Starting the program (fork + execve, own process group, PDEATHSIG, socket activation) and
//! killing what is left of it.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;

/// Everything needed to start one generation of the program.
#[derive(Debug)]
pub struct SpawnSpec {
    /// argv (argv[0] as written by the user).
    pub argv: Vec<String>,
    /// Working directory.
    pub chdir: Option<PathBuf>,
    /// Full environment of the program (before LISTEN_PID is filled in).
    pub env: Vec<(OsString, OsString)>,
    /// The on-demand listener to hand over as fd 3.
    pub listener: Option<RawFd>,
}

/// A started program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Program {
    pub pid: i32,
}

/// Where the child failed before exec.
const STAGE_CHDIR: i32 = 1;
const STAGE_EXEC: i32 = 2;
const STAGE_FDS: i32 = 3;

/// Variables the program must not inherit from the shim's environment.
pub const SCRUBBED_ENV: &[&str] = &[
    "UWSGI_EMPEROR_FD",
    "UWSGI_EMPEROR_FD_CONFIG",
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

/// Finds `prog` like execvp would: a name with a slash is used as is (relative to `chdir`
/// when given), otherwise the first executable file of that name on `path`.
pub fn resolve_program(
    prog: &str,
    path: Option<&OsStr>,
    chdir: Option<&Path>,
) -> io::Result<PathBuf> {
    if prog.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "empty program name",
        ));
    }
    if prog.contains('/') {
        let p = PathBuf::from(prog);
        let check = match chdir {
            Some(d) if p.is_relative() => d.join(&p),
            _ => p.clone(),
        };
        if !check.exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} does not exist", check.display()),
            ));
        }
        return Ok(p);
    }
    let path = path
        .map(OsStr::to_os_string)
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let cand = dir.join(prog);
        if is_executable(&cand) {
            return Ok(cand);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("{prog:?} not found on PATH"),
    ))
}

fn is_executable(p: &Path) -> bool {
    let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access(2) with a valid NUL-terminated path.
    p.is_file() && unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0
}

fn cstring(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "NUL byte in argument or environment",
        )
    })
}

/// Duplicates `fd` to a close-on-exec descriptor numbered at least `min`.
fn dup_at_least(fd: RawFd, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) returns a new descriptor we then own.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: n is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// argv, environment and working directory as the C strings `execve` takes, made before the
/// fork (the child must not allocate).
struct Exec {
    prog: PathBuf,
    prog_c: CString,
    /// Owns the strings `argv_p` points into.
    _argv_c: Vec<CString>,
    argv_p: Vec<*const libc::c_char>,
    /// Owns the `KEY=VALUE\0` buffers `env_p` points into.
    _env_bufs: Vec<Vec<u8>>,
    env_p: Vec<*const libc::c_char>,
    /// Where the child writes its pid into the `LISTEN_PID=` entry (null without a listener).
    listen_pid_ptr: *mut u8,
    chdir_c: Option<CString>,
}

impl Exec {
    fn new(spec: &SpawnSpec) -> io::Result<Exec> {
        let path_var = spec
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_os_str());
        let prog = resolve_program(&spec.argv[0], path_var, spec.chdir.as_deref())?;
        let prog_c = cstring(prog.as_os_str().as_bytes())?;
        let argv_c: Vec<CString> = spec
            .argv
            .iter()
            .map(|a| cstring(a.as_bytes()))
            .collect::<io::Result<_>>()?;
        let mut argv_p: Vec<*const libc::c_char> = argv_c.iter().map(|c| c.as_ptr()).collect();
        argv_p.push(std::ptr::null());

        // The environment as raw NUL-terminated buffers; LISTEN_PID gets room for the pid,
        // which the child writes in after fork (it is only known there).
        let mut env_bufs: Vec<Vec<u8>> = Vec::with_capacity(spec.env.len() + 1);
        for (k, v) in &spec.env {
            let mut b = Vec::with_capacity(k.len() + v.len() + 2);
            b.extend_from_slice(k.as_bytes());
            b.push(b'=');
            b.extend_from_slice(v.as_bytes());
            if b.contains(&0) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "NUL byte in environment",
                ));
            }
            b.push(0);
            env_bufs.push(b);
        }
        let listen_pid_idx = if spec.listener.is_some() {
            let mut b = b"LISTEN_PID=".to_vec();
            b.extend_from_slice(&[0u8; 24]);
            env_bufs.push(b);
            Some(env_bufs.len() - 1)
        } else {
            None
        };
        let mut env_p: Vec<*const libc::c_char> =
            env_bufs.iter().map(|b| b.as_ptr().cast()).collect();
        env_p.push(std::ptr::null());
        let listen_pid_ptr: *mut u8 = match listen_pid_idx {
            Some(i) => env_bufs[i][11..].as_mut_ptr(),
            None => std::ptr::null_mut(),
        };
        let chdir_c = spec
            .chdir
            .as_ref()
            .map(|d| cstring(d.as_os_str().as_bytes()))
            .transpose()?;
        Ok(Exec {
            prog,
            prog_c,
            _argv_c: argv_c,
            argv_p,
            _env_bufs: env_bufs,
            env_p,
            listen_pid_ptr,
            chdir_c,
        })
    }
}

/// A close-on-exec pipe whose write end is numbered at least 4 (the child overwrites 0 and 3).
fn report_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut pipe_fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(pipe_fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptors from pipe2, owned here.
    let (rd, wr0) = unsafe {
        (
            OwnedFd::from_raw_fd(pipe_fds[0]),
            OwnedFd::from_raw_fd(pipe_fds[1]),
        )
    };
    let wr = dup_at_least(wr0.as_raw_fd(), 4)?;
    Ok((rd, wr))
}

/// Reads the child's failure report (stage, errno) until EOF; `None` when it exec'd.
fn read_report(rd: &OwnedFd) -> io::Result<Option<(i32, i32)>> {
    let mut report = [0u8; 8];
    let mut got = 0;
    while got < report.len() {
        // SAFETY: reading into the unfilled tail of a stack buffer.
        let n = unsafe {
            libc::read(
                rd.as_raw_fd(),
                report[got..].as_mut_ptr().cast(),
                report.len() - got,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        got += n as usize;
    }
    if got == 0 {
        return Ok(None);
    }
    let stage = i32::from_ne_bytes([report[0], report[1], report[2], report[3]]);
    let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
    Ok(Some((stage, errno)))
}

/// Starts the program. Returns once it has exec'd (or failed to).
pub fn spawn(spec: &SpawnSpec) -> io::Result<Program> {
    let exec = Exec::new(spec)?;
    // Descriptors the child uses must not be 0 or 3, which it overwrites.
    let devnull = std::fs::File::open("/dev/null")?;
    let devnull = dup_at_least(devnull.as_raw_fd(), 4)?;
    let (rd, wr) = report_pipe()?;

    let parent = std::process::id() as libc::pid_t;
    let chdir_p = exec.chdir_c.as_ref().map(|c| c.as_ptr());

    // SAFETY: fork(2). The child only calls async-signal-safe functions (setpgid, prctl,
    // getppid, sigprocmask, signal, dup2, fcntl, chdir, getpid, execve, write, _exit) on
    // memory prepared before the fork, and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: we are the child of a fork; see above.
        unsafe {
            child(
                parent,
                spec.listener,
                devnull.as_raw_fd(),
                wr.as_raw_fd(),
                chdir_p,
                exec.listen_pid_ptr,
                exec.prog_c.as_ptr(),
                exec.argv_p.as_ptr(),
                exec.env_p.as_ptr(),
            )
        }
    }
    // Parent: also put the child in its own group (whichever runs first wins; both agree).
    // SAFETY: setpgid on our own child.
    unsafe { libc::setpgid(pid, pid) };
    drop(wr);
    let report = read_report(&rd)?;
    drop(devnull);
    let Some((stage, errno)) = report else {
        return Ok(Program { pid });
    };
    // The child failed and exits 127; it is reaped through SIGCHLD like any other.
    let what = match stage {
        STAGE_CHDIR => format!(
            "cannot chdir to {}",
            spec.chdir.as_deref().unwrap_or(Path::new("?")).display()
        ),
        STAGE_FDS => "cannot set up the inherited socket".to_string(),
        _ => format!("cannot execute {}", exec.prog.display()),
    };
    Err(io::Error::new(
        io::Error::from_raw_os_error(errno).kind(),
        format!("{what}: {}", io::Error::from_raw_os_error(errno)),
    ))
}

/// The forked child. Async-signal-safe calls only.
#[allow(clippy::too_many_arguments)]
unsafe fn child(
    parent: libc::pid_t,
    listener: Option<RawFd>,
    devnull: RawFd,
    report_fd: RawFd,
    chdir: Option<*const libc::c_char>,
    listen_pid: *mut u8,
    prog: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
) -> ! {
    let fail = |stage: i32| -> ! {
        // SAFETY: errno location is thread-local and valid; write/_exit are async-signal-safe.
        unsafe {
            let errno = *libc::__errno_location();
            let mut buf = [0u8; 8];
            buf[..4].copy_from_slice(&stage.to_ne_bytes());
            buf[4..].copy_from_slice(&errno.to_ne_bytes());
            libc::write(report_fd, buf.as_ptr().cast(), 8);
            libc::_exit(127)
        }
    };
    // SAFETY: plain syscalls on our own process; pointers were prepared before fork and stay
    // valid in the child's copy of the address space.
    unsafe {
        libc::setpgid(0, 0);
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        if libc::getppid() != parent {
            // The shim died between fork and prctl.
            libc::_exit(1);
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        if let Some(l) = listener {
            if l == 3 {
                let fl = libc::fcntl(3, libc::F_GETFD);
                if fl < 0 || libc::fcntl(3, libc::F_SETFD, fl & !libc::FD_CLOEXEC) < 0 {
                    fail(STAGE_FDS);
                }
            } else if libc::dup2(l, 3) < 0 {
                fail(STAGE_FDS);
            }
            if libc::dup2(devnull, 0) < 0 {
                fail(STAGE_FDS);
            }
            if !listen_pid.is_null() {
                // Decimal pid, NUL-terminated, into the 24 bytes reserved after "LISTEN_PID=".
                let mut digits = [0u8; 20];
                let mut n = libc::getpid() as u64;
                let mut i = digits.len();
                loop {
                    i -= 1;
                    digits[i] = b'0' + (n % 10) as u8;
                    n /= 10;
                    if n == 0 {
                        break;
                    }
                }
                let len = digits.len() - i;
                std::ptr::copy_nonoverlapping(digits.as_ptr().add(i), listen_pid, len);
                *listen_pid.add(len) = 0;
            }
        }
        if let Some(dir) = chdir {
            if libc::chdir(dir) != 0 {
                fail(STAGE_CHDIR);
            }
        }
        libc::execve(prog, argv, envp);
    }
    fail(STAGE_EXEC)
}

/// Sends `sig` to the process group `pgid`; a group that is already gone is fine.
pub fn signal_group(pgid: i32, sig: Signal) {
    // SAFETY: kill(2) on a process group we created; no memory involved.
    unsafe {
        libc::kill(-pgid, sig as libc::c_int);
    }
}

/// Sends `sig` to the process `pid` alone; a process that is already gone is fine.
pub fn signal_process(pid: i32, sig: Signal) {
    // SAFETY: kill(2) on the program's pid, our own unreaped child; no memory involved.
    unsafe {
        libc::kill(pid, sig as libc::c_int);
    }
}

/// The direct children of this process (adopted orphans included: the shim is a subreaper).
pub fn children() -> Vec<i32> {
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{me}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    out
}

/// SIGKILLs the group `pgid` and every child of the shim except `spare` (the sentinel).
pub fn kill_all(pgid: Option<i32>, spare: Option<i32>) {
    if let Some(g) = pgid {
        signal_group(g, Signal::SIGKILL);
    }
    for c in children() {
        if Some(c) == spare {
            continue;
        }
        // SAFETY: kill(2) on our own child pid; no memory involved.
        unsafe {
            libc::kill(c, libc::SIGKILL);
        }
    }
}

/// Kills and reaps every descendant except `spare`, until no other child is left.
pub fn kill_and_reap_everything(pgid: Option<i32>, spare: Option<i32>) {
    loop {
        kill_all(pgid, spare);
        if children().iter().all(|c| Some(*c) == spare) {
            return;
        }
        let mut status = 0;
        // SAFETY: waitpid(2) with a valid status pointer; blocks until a child changes state
        // (the ones just killed do).
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // ECHILD: nothing left.
            return;
        }
    }
}

/// Reaps whatever has already exited, without blocking.
pub fn reap_exited() {
    loop {
        let mut status = 0;
        // SAFETY: waitpid(2) with a valid status pointer and WNOHANG.
        if unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } <= 0 {
            return;
        }
    }
}

/// Makes the shim a subreaper: orphans of the program are re-parented to it, so it can kill
/// them on the way out.
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl(2) with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `fd` is a listening socket (an on-demand listener handed over as fd 0).
pub fn is_listening_socket(fd: RawFd) -> bool {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    r == 0 && v != 0
}

/// The environment for the program: the shim's own minus [`SCRUBBED_ENV`], then `extra`
/// (later entries win).
pub fn build_env(extra: &[(OsString, OsString)]) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !SCRUBBED_ENV.iter().any(|s| k == s))
        .collect();
    for (k, v) in extra {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_like_execvp() {
        let p =
            resolve_program("sh", Some(OsStr::new("/nonexistent:/bin:/usr/bin")), None).unwrap();
        assert!(p.ends_with("sh"));
        assert!(resolve_program(
            "definitely-not-a-program-xyz",
            Some(OsStr::new("/bin")),
            None
        )
        .is_err());
        assert_eq!(
            resolve_program("./x", None, None).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert!(resolve_program("", None, None).is_err());
    }

    #[test]
    fn env_scrubs_and_overrides() {
        let env = build_env(&[
            ("A_TEST_VAR".into(), "1".into()),
            ("NOTIFY_SOCKET".into(), "/x".into()),
        ]);
        assert!(env.iter().any(|(k, v)| k == "A_TEST_VAR" && v == "1"));
        assert_eq!(env.iter().filter(|(k, _)| k == "NOTIFY_SOCKET").count(), 1);
        assert!(!env.iter().any(|(k, _)| k == "UWSGI_EMPEROR_FD"));
    }
}
