//! The sentinel: a tiny helper that cleans up when the shim is killed with SIGKILL (by an
//! emperor's heartbeat check or curse tolerance, or through its PDEATHSIG when the emperor
//! dies), when the shim itself cannot.
//!
//! The program gets `PR_SET_PDEATHSIG=SIGKILL`, but its own children do not, and once the shim
//! is gone they are no longer re-parented to it. So the shim starts a re-executed copy of
//! itself in sentinel mode, in its own process group (a kill of the emperor's group does not
//! reach it), reading a pipe whose only writer is the shim. The shim tells it the program's
//! process group on every start, and `clear` once it has cleaned up itself. When the pipe
//! reaches EOF without `clear`, the shim died abruptly: the sentinel SIGKILLs the last process
//! group and every process still carrying the shim's instance tag in its environment (which
//! catches descendants that left the group with `setsid`), then exits.
//!
//! The shim's end of the pipe is non-blocking: a sentinel that stops reading (stopped, hung)
//! must not stall the shim's event loop, so a line that does not fit is dropped with a warning.

use std::io::{self, BufRead, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

/// Set (to the shim's private directory, whose name is the instance tag) in the sentinel's
/// environment: run as the sentinel.
pub const ENV_SENTINEL: &str = "VASSAL_SHIM_SENTINEL";
/// Set in the program's environment: marks every descendant of this shim instance.
pub const ENV_INSTANCE: &str = "VASSAL_SHIM_INSTANCE";

/// The shim's side: the pipe to the sentinel.
#[derive(Debug)]
pub struct Sentinel {
    tx: std::fs::File,
    child: Child,
}

impl Sentinel {
    /// Starts the sentinel for the shim whose private directory is `rundir`.
    pub fn start(rundir: &std::path::Path) -> std::io::Result<Sentinel> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two new descriptors into the array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fresh descriptors from pipe2, owned here.
        let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        set_nonblocking(&tx)?;
        let child = Command::new("/proc/self/exe")
            .arg0("vassal-shim-sentinel")
            .env(ENV_SENTINEL, rundir)
            .env_remove(ENV_INSTANCE)
            .stdin(Stdio::from(rx))
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()?;
        Ok(Sentinel {
            tx: std::fs::File::from(tx),
            child,
        })
    }

    /// The sentinel's pid (the shim must not kill it with the program's leftovers).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The program now runs in process group `pgid`.
    pub fn watch(&mut self, pgid: i32) {
        if let Err(e) = send_line(&self.tx, format_args!("pgid {pgid}")) {
            tracing::warn!("cannot tell the sentinel about process group {pgid} ({e}); if the shim is SIGKILLed, that group may survive it");
        }
    }

    /// The shim has cleaned up: the sentinel can exit without killing anything.
    pub fn clear(mut self) {
        let _ = send_line(&self.tx, format_args!("clear"));
        drop(self.tx);
        let _ = self.child.wait();
    }
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    use std::os::fd::AsRawFd;
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
pub fn tag_of(rundir: &std::path::Path) -> String {
    rundir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| rundir.display().to_string())
}

/// Sentinel mode: waits for EOF on stdin, then cleans up unless told `clear`. Never returns.
pub fn run(rundir: &std::path::Path) -> ! {
    let tag = tag_of(rundir);
    let tag = tag.as_str();
    // Ignore the signals a terminal or a supervisor sends around; only EOF matters.
    for sig in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGPIPE,
    ] {
        // SAFETY: SIG_IGN installs no handler code.
        unsafe {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
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
        eprintln!(
            "vassal-shim sentinel: the shim died abruptly; killed what was left of the program"
        );
    }
    std::process::exit(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

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
