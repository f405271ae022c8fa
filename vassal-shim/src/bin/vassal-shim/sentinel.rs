//! The sentinel: a tiny helper that cleans up when the shim is killed with SIGKILL (by an
//! emperor's heartbeat check or curse tolerance, or through its PDEATHSIG when the emperor
//! dies), when the shim itself cannot.
//!
//! The program gets `PR_SET_PDEATHSIG=SIGKILL`, but its own children do not, and once the shim
//! is gone they are no longer re-parented to it. So the shim forks a sentinel, in its own
//! process group (a kill of the emperor's group does not reach it), reading a pipe whose only
//! writer is the shim. The shim tells it the program's process group on every start, and
//! `clear` once it has cleaned up itself. When the pipe reaches EOF without `clear`, the shim
//! died abruptly: the sentinel SIGKILLs the last process group and every process still carrying
//! the shim's instance tag in its environment (which catches descendants that left the group
//! with `setsid`), removes the shim's private directory, then exits.
//!
//! The sentinel is a plain `fork()` of the shim, without an `exec` (which cost more CPU than
//! the rest of a shim start). That is sound only because the shim is single-threaded when it
//! forks (it never starts a thread; [`Sentinel::start`] checks `/proc/self/stat` right before
//! the fork and refuses otherwise): no other thread can hold a lock (malloc's, stdio's) that
//! the child would inherit locked, so the child may run ordinary Rust code. It never returns
//! into the shim's code and leaves with `_exit`, so no destructor or exit handler of the shim
//! runs twice. Before anything else the child drops every descriptor of the shim except
//! stderr (stdin becomes the pipe, stdout `/dev/null`), so it holds neither the emperor
//! channel nor anything else the shim owns, and it renames itself (`comm`, and its command
//! line rewritten in place through `/proc/self/mem`) so it does not look like a second shim.
//!
//! The shim's end of the pipe is non-blocking: a sentinel that stops reading (stopped, hung)
//! must not stall the shim's event loop, so a line that does not fit is dropped with a warning.

use std::io::{self, BufRead, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// Set in the program's environment: marks every descendant of this shim instance.
pub const ENV_INSTANCE: &str = "VASSAL_SHIM_INSTANCE";

/// The sentinel's command line (as `ps` shows it) and its `comm` (at most 15 bytes).
const TITLE: &[u8] = b"vassal-shim-sentinel";
const COMM: &[u8] = b"vassal-sentinel\0";

/// The shim's side: the pipe to the sentinel.
#[derive(Debug)]
pub struct Sentinel {
    tx: std::fs::File,
    pid: i32,
}

/// A byte range of this process's memory, as `/proc/self/stat` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    start: u64,
    len: u64,
}

/// What the shim knows about itself right before forking.
#[derive(Debug, PartialEq, Eq)]
struct SelfStat {
    threads: u64,
    /// The argument strings (`/proc/self/cmdline`); None when the kernel hides them.
    args: Option<Range>,
    /// Where the environment strings start.
    env_start: u64,
}

/// Parses `/proc/PID/stat`: field 20 is `num_threads`, fields 48-50 `arg_start`, `arg_end`,
/// `env_start` (Linux 3.5+). The command name (field 2) may hold spaces and parentheses, so
/// fields are counted after its last `)`.
fn parse_stat(stat: &str) -> Option<SelfStat> {
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let threads = field(20)?;
    let (arg_start, arg_end, env_start) = (
        field(48).unwrap_or(0),
        field(49).unwrap_or(0),
        field(50).unwrap_or(0),
    );
    let args = (arg_start > 0 && arg_end > arg_start).then_some(Range {
        start: arg_start,
        len: arg_end - arg_start,
    });
    Some(SelfStat {
        threads,
        args,
        env_start,
    })
}

/// Where `NAME=...` sits among the NUL-separated `environ` strings (offset, length without
/// the NUL).
fn find_env_entry(environ: &[u8], name: &str) -> Option<(u64, u64)> {
    let mut off = 0usize;
    for entry in environ.split(|b| *b == 0) {
        if entry.len() > name.len()
            && entry.starts_with(name.as_bytes())
            && entry[name.len()] == b'='
        {
            return Some((off as u64, entry.len() as u64));
        }
        off += entry.len() + 1;
    }
    None
}

impl Sentinel {
    /// Forks the sentinel for the shim whose private directory is `rundir`. Fails (and forks
    /// nothing) unless the shim is single-threaded.
    pub fn start(rundir: &Path) -> io::Result<Sentinel> {
        let me = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_stat(&s))
            .ok_or_else(|| io::Error::other("cannot read /proc/self/stat"))?;
        if me.threads != 1 {
            return Err(io::Error::other(format!(
                "the shim runs {} threads, and forking a sentinel is only safe with one",
                me.threads
            )));
        }
        // A shim run by another shim carries that one's tag; the sentinel must not (as the
        // exec'd sentinel did not), or the outer sentinel would kill it before it cleans up.
        let tag_entry = match std::env::var_os(ENV_INSTANCE) {
            Some(_) if me.env_start > 0 => std::fs::read("/proc/self/environ")
                .ok()
                .and_then(|env| find_env_entry(&env, ENV_INSTANCE))
                .map(|(off, len)| Range {
                    start: me.env_start + off,
                    len,
                }),
            _ => None,
        };
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two new descriptors into the array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptors from pipe2, owned here.
        let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // The child keeps only fds 0-2: neither end may be one of them already (a shim
        // started with a standard descriptor closed), or the child would keep the write end
        // open (no EOF, ever) or overwrite the read end.
        let rx = dup_above_stdio(rx)?;
        let tx = dup_above_stdio(tx)?;
        set_nonblocking(&tx)?;
        // SAFETY: fork(2). The shim is single-threaded (checked just above; nothing between
        // the check and here starts a thread), so the child may run ordinary code; it never
        // returns (see `child`).
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // A panic must not unwind out of here: the child would go on as a second shim.
            let rx = rx.as_raw_fd();
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                child(rx, me.args, tag_entry, rundir)
            }));
            // SAFETY: _exit(2) ends the process.
            unsafe { libc::_exit(1) }
        }
        // Whichever of parent and child runs first puts the child in its own group.
        // SAFETY: setpgid on our own child.
        unsafe { libc::setpgid(pid, pid) };
        drop(rx);
        Ok(Sentinel {
            tx: std::fs::File::from(tx),
            pid,
        })
    }

    /// The sentinel's pid (the shim must not kill it with the program's leftovers).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The program now runs in process group `pgid`.
    pub fn watch(&mut self, pgid: i32) {
        if let Err(e) = send_line(&self.tx, format_args!("pgid {pgid}")) {
            tracing::warn!("cannot tell the sentinel about process group {pgid} ({e}); if the shim is SIGKILLed, that group may survive it");
        }
    }

    /// The shim has cleaned up: the sentinel can exit without killing anything.
    pub fn clear(self) {
        let _ = send_line(&self.tx, format_args!("clear"));
        drop(self.tx);
        loop {
            let mut status = 0;
            // SAFETY: waitpid(2) on our own child with a valid status pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if r >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return;
            }
        }
    }
}

fn dup_above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor we then own.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: n is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// The forked sentinel: cuts itself loose from the shim, then watches the pipe. Never returns.
fn child(rx: RawFd, args: Option<Range>, tag_entry: Option<Range>, rundir: &Path) -> ! {
    // SAFETY: plain syscalls on our own process with integer arguments or NUL-terminated
    // constants; no memory of the shim is touched except through /proc/self/mem below.
    unsafe {
        libc::setpgid(0, 0);
        // Ignore the signals a terminal or a supervisor sends around; only EOF matters.
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGPIPE,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
        // The shim blocks the signals it reads through its signalfd; the sentinel has none.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::dup2(rx, 0);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
        if null >= 0 {
            libc::dup2(null, 1);
        }
        close_from(3);
        libc::prctl(libc::PR_SET_NAME, COMM.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
    retitle(args, tag_entry);
    run(rundir)
}

/// Closes every descriptor from `first` on.
fn close_from(first: u32) {
    // SAFETY: close_range(2) with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
    if r == 0 {
        return;
    }
    // Before Linux 5.9: one close per possible descriptor.
    let mut lim: libc::rlimit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `lim`.
    let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur.min(1 << 20) as i32
    } else {
        1024
    };
    for fd in first as i32..max {
        // SAFETY: close(2) of a descriptor number; EBADF for unused ones is harmless.
        unsafe { libc::close(fd) };
    }
}

/// Rewrites the command line to [`TITLE`] (NUL-padded over the original arguments) and blanks
/// the instance tag inherited from an outer shim, through `/proc/self/mem`: the kernel checks
/// every address, so a wrong range fails instead of corrupting memory. Cosmetic for the
/// title, best effort for both.
fn retitle(args: Option<Range>, tag_entry: Option<Range>) {
    // SAFETY: open(2) with a NUL-terminated constant path.
    let fd = unsafe { libc::open(c"/proc/self/mem".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return;
    }
    if let Some(a) = args {
        // Keep the last byte of the area NUL: the kernel then shows exactly this area.
        let n = (TITLE.len() as u64).min(a.len - 1) as usize;
        pwrite_all(fd, &TITLE[..n], a.start);
        zero(fd, a.start + n as u64, a.len - n as u64);
    }
    if let Some(t) = tag_entry {
        zero(fd, t.start, t.len);
    }
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
}

fn zero(fd: RawFd, mut at: u64, mut len: u64) {
    const ZEROS: [u8; 256] = [0; 256];
    while len > 0 {
        let n = len.min(ZEROS.len() as u64) as usize;
        if !pwrite_all(fd, &ZEROS[..n], at) {
            return;
        }
        at += n as u64;
        len -= n as u64;
    }
}

fn pwrite_all(fd: RawFd, buf: &[u8], at: u64) -> bool {
    // SAFETY: pwrite(2) reads `buf.len()` bytes from a live slice.
    let n = unsafe { libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), at as libc::off_t) };
    n == buf.len() as isize
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: F_GETFL / F_SETFL on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Writes `line` and a newline to the (non-blocking) pipe in one write(2): a pipe write of at
/// most PIPE_BUF bytes is all or nothing, so the sentinel never sees half a line. Formats on
/// the stack; `WouldBlock` when the pipe is full.
fn send_line(mut tx: &std::fs::File, line: std::fmt::Arguments<'_>) -> io::Result<()> {
    let mut buf = [0u8; 64];
    let mut cur = io::Cursor::new(&mut buf[..]);
    cur.write_fmt(line)?;
    cur.write_all(b"\n")?;
    let n = cur.position() as usize;
    match tx.write(&buf[..n])? {
        w if w == n => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short write to the sentinel",
        )),
    }
}

/// Every process (other than this one) whose environment holds `ENV_INSTANCE=tag`.
pub fn tagged_processes(tag: &str) -> Vec<i32> {
    let want = format!("{ENV_INSTANCE}={tag}");
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) {
            if env.split(|b| *b == 0).any(|kv| kv == want.as_bytes()) {
                out.push(pid);
            }
        }
    }
    out
}

/// The instance tag of the shim whose private directory is `rundir`.
pub fn tag_of(rundir: &Path) -> String {
    rundir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| rundir.display().to_string())
}

/// The sentinel's watch: waits for EOF on stdin, then cleans up unless told `clear`. Never
/// returns.
fn run(rundir: &Path) -> ! {
    let tag = tag_of(rundir);
    let tag = tag.as_str();
    let mut pgid: Option<i32> = None;
    let mut cleared = false;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line == "clear" {
            cleared = true;
            pgid = None;
        } else if let Some(n) = line.strip_prefix("pgid ").and_then(|n| n.parse().ok()) {
            cleared = false;
            pgid = Some(n);
        }
    }
    if !cleared {
        if let Some(g) = pgid.filter(|g| *g > 1) {
            // SAFETY: kill(2) with integer arguments.
            unsafe {
                libc::kill(-g, libc::SIGKILL);
            }
        }
        // Descendants that left the group; repeat while new ones show up (a dying parent's
        // last fork).
        for _ in 0..10 {
            let found = tagged_processes(tag);
            if found.is_empty() {
                break;
            }
            for p in found {
                // SAFETY: as above.
                unsafe {
                    libc::kill(p, libc::SIGKILL);
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // The private directory (notification socket, pushed config) goes too.
        let _ = std::fs::remove_dir_all(rundir);
        // Through the shim's logger (its span names the vassal); the shim was single-threaded
        // when it forked this process, so no logger lock can be held here.
        tracing::warn!(
            "vassal-shim sentinel: the shim died abruptly; killed what was left of the program"
        );
    }
    // _exit: the shim's exit handlers and buffers are not the sentinel's to run or flush.
    // SAFETY: _exit(2) ends the process.
    unsafe { libc::_exit(0) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with spaces and parentheses; fields 3..=52 numbered by their value.
        let fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        let stat = format!("1234 (a) b (c) {}", fields.join(" "));
        let s = parse_stat(&stat).unwrap();
        assert_eq!(s.threads, 20);
        assert_eq!(s.args, Some(Range { start: 48, len: 1 }));
        assert_eq!(s.env_start, 50);
        // An old kernel (or a hidden mm) without the address fields: no title rewrite.
        let short = format!("1 (x) {}", fields[..20].join(" "));
        assert_eq!(parse_stat(&short).unwrap().args, None);
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) R 1 2"), None);
    }

    #[test]
    fn own_stat_parses() {
        let s = parse_stat(&std::fs::read_to_string("/proc/self/stat").unwrap()).unwrap();
        assert!(s.threads >= 1);
        let a = s.args.expect("argument range");
        let cmdline = std::fs::read("/proc/self/cmdline").unwrap();
        assert_eq!(a.len, cmdline.len() as u64);
    }

    #[test]
    fn env_entry_is_found_by_exact_name() {
        let env = b"A=1\0VASSAL_SHIM_INSTANCEX=no\0VASSAL_SHIM_INSTANCE=vassal-shim.1.x\0B=2\0";
        let (off, len) = find_env_entry(env, ENV_INSTANCE).unwrap();
        let entry = &env[off as usize..(off + len) as usize];
        assert_eq!(entry, b"VASSAL_SHIM_INSTANCE=vassal-shim.1.x");
        assert_eq!(find_env_entry(b"A=1\0B=2\0", ENV_INSTANCE), None);
        assert_eq!(find_env_entry(b"", ENV_INSTANCE), None);
    }

    #[test]
    fn a_full_pipe_does_not_block_and_gets_no_half_line() {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two new descriptors into the array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fresh descriptors from pipe2, owned here.
        let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        set_nonblocking(&tx).unwrap();
        // SAFETY: F_GETFL on a descriptor we own.
        let fl = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&tx), libc::F_GETFL) };
        assert_ne!(
            fl & libc::O_NONBLOCK,
            0,
            "filling a blocking pipe would hang"
        );
        let tx = std::fs::File::from(tx);
        send_line(&tx, format_args!("pgid {}", 42)).unwrap();
        // Fill the pipe up to the last byte.
        let filler = [b'#'; 4096];
        let mut left = true;
        while left {
            match (&tx).write(&filler) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => left = false,
                Err(e) => panic!("{e}"),
            }
        }
        while (&tx).write(b"#").is_ok() {}
        let e = send_line(&tx, format_args!("pgid {}", 43)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        drop(tx);
        let mut all = Vec::new();
        std::fs::File::from(rx).read_to_end(&mut all).unwrap();
        assert!(all.starts_with(b"pgid 42\n#"));
        assert!(
            all[8..].iter().all(|&b| b == b'#'),
            "nothing of pgid 43 got in"
        );
    }
}
