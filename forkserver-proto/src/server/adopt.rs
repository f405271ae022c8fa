//! The double fork: the intermediate child, the grandchild that becomes the vassal and sends
//! the reply, and the reaping of intermediate children.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags};
use nix::sys::signal::SigmaskHow;
use nix::sys::socket::MsgFlags;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, getpid, ForkResult, Pid};

use super::conn::{Conn, Ready};
use super::{Adoption, ForkServer, ServerError};
use crate::client::poll_timeout;
use crate::codec::encode_reply;

impl ForkServer {
    /// Double-forks. Returns `Some` in the grandchild only.
    pub(super) fn adopt(
        &mut self,
        conn: Conn,
        req: Ready,
    ) -> Result<Option<Adoption>, ServerError> {
        let threads = thread_count().map_err(|e| self.err("count threads", e))?;
        if threads != 1 {
            return Err(ServerError::NotSingleThreaded { threads });
        }
        tracing::info!(
            peer_pid = conn.peer.pid,
            peer_uid = conn.peer.uid,
            fds = 1 + usize::from(req.config.is_some()) + usize::from(req.on_demand.is_some()),
            argv = ?req.argv,
            "fork server: adoption request"
        );
        // SAFETY: the process has exactly one thread (checked just above), so the child is a
        // complete copy with no lock held by a vanished thread; the child only calls fork() and
        // _exit() before the grandchild takes over.
        match unsafe { fork() } {
            Err(e) => {
                self.stats.fork_failed += 1;
                tracing::error!("fork server: fork failed: {e}");
                Ok(None) // dropping conn and fds closes them: the client sees EOF
            }
            Ok(ForkResult::Parent { child }) => {
                // The intermediate child exits right after its fork, but its exit tears down a
                // copy of our page tables, which takes a while for a big base: rather than
                // blocking on it, poll its pidfd with the other sources and reap it then.
                match pidfd_open(child) {
                    Ok(fd) => self.intermediates.push((child, fd)),
                    Err(_) => self.account_intermediate(child, waitpid_blocking(child)),
                }
                // Our copies of the client's fds and the connection close here; the
                // grandchild holds its own.
                drop((conn, req));
                Ok(None)
            }
            Ok(ForkResult::Child) => {
                // Intermediate child: async-signal-safe calls only.
                let intermediate = getpid();
                // SAFETY: still a single-threaded copy; the grandchild is orphaned at once and
                // reparented to the nearest subreaper (the emperor).
                match unsafe { fork() } {
                    Ok(ForkResult::Child) => {}
                    // SAFETY: _exit is async-signal-safe and skips atexit handlers and
                    // destructors that belong to the server process.
                    Ok(ForkResult::Parent { .. }) => unsafe { libc::_exit(0) },
                    // SAFETY: as above.
                    Err(_) => unsafe { libc::_exit(1) },
                }
                Ok(Some(self.become_vassal(conn, req, intermediate)))
            }
        }
    }

    /// In the grandchild: drop everything of the server, send the reply, hand over.
    fn become_vassal(&mut self, conn: Conn, req: Ready, intermediate: Pid) -> Adoption {
        self.listener = None;
        self.conns.clear();
        self.intermediates.clear();
        self.signals = None;
        if let Some(old) = self.old_mask.take() {
            // Failure is not possible for SIG_SETMASK with a valid set; ignore it anyway.
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
        }
        let pid = getpid();
        // Leave the base's process group: whatever signals the base's group (its supervisor
        // stopping or restarting it, a Ctrl-C in its terminal) must not reach the vassals it
        // handed to the emperor. Failure (EPERM for a session leader) only keeps the group.
        // SAFETY: setpgid(2) on ourselves, no memory involved.
        unsafe {
            libc::setpgid(0, 0);
        }
        // Reply only once the intermediate child is gone and we have been reparented (to the
        // client's subreaper, normally): then the client can waitpid() us, and check our ppid,
        // as soon as it has the pid. The intermediate child exits right after its fork, so this
        // is a short wait; it is bounded by the I/O timeout all the same.
        let deadline = Instant::now() + self.config.io_timeout;
        if self.config.reply_after_reparent {
            // A pidfd of the intermediate child becomes readable when it has exited, and the
            // kernel reparents its children before it signals that.
            if let Ok(fd) = pidfd_open(intermediate) {
                let mut p = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                let _ = nix::poll::poll(&mut p, poll_timeout(self.config.io_timeout));
            }
        }
        // Fallback (no pidfd), and a check in any case.
        let mut pause = Duration::from_micros(50);
        while self.config.reply_after_reparent
            && nix::unistd::getppid() == intermediate
            && Instant::now() < deadline
        {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
        let reply = encode_reply(pid.as_raw());
        if let Err(e) = write_all(&conn.sock, &reply, Instant::now() + self.config.io_timeout) {
            tracing::error!(
                pid = pid.as_raw(),
                "fork server: adopted vassal cannot send its pid to the client ({e}); exiting"
            );
            // SAFETY: _exit ends this orphan without running the server's destructors.
            unsafe { libc::_exit(1) }
        }
        drop(conn.sock);
        tracing::info!(
            pid = pid.as_raw(),
            "fork server: double fork done, vassal adopted"
        );
        Adoption {
            argv: req.argv,
            channel: req.channel,
            config: req.config,
            on_demand: req.on_demand,
            peer: conn.peer,
        }
    }

    pub(super) fn account_intermediate(&mut self, pid: Pid, status: nix::Result<WaitStatus>) {
        match status {
            // ECHILD: SIGCHLD is ignored in this process and the kernel reaped it for us.
            Ok(WaitStatus::Exited(_, 0)) | Err(Errno::ECHILD) => self.stats.forked += 1,
            Ok(WaitStatus::StillAlive) => {
                // Spurious readiness; keep waiting for it the blocking way (it is exiting).
                self.account_intermediate(pid, waitpid_blocking(pid));
            }
            other => {
                self.stats.fork_failed += 1;
                tracing::error!("fork server: intermediate child {pid} ended with {other:?}");
            }
        }
    }
}

pub(super) fn waitpid_blocking(pid: Pid) -> nix::Result<WaitStatus> {
    loop {
        match waitpid(pid, None) {
            Err(Errno::EINTR) => continue,
            r => return r,
        }
    }
}

/// A pidfd (CLOEXEC) that becomes readable when `pid` exits.
fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1; it touches no
    // memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd (with O_CLOEXEC set); nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn write_all(sock: &OwnedFd, mut data: &[u8], deadline: Instant) -> io::Result<()> {
    while !data.is_empty() {
        match nix::sys::socket::send(sock.as_raw_fd(), data, MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                let mut p = [PollFd::new(sock.as_fd(), PollFlags::POLLOUT)];
                match nix::poll::poll(&mut p, poll_timeout(left)) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Threads of this process.
pub fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}
