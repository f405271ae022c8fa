//! Reaping: `waitpid(-1, WNOHANG)` until nothing is left, on SIGCHLD and on a channel EOF (the
//! emperor may be a subreaper and adopt grandchildren from a fork server, so any pid may come).

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::core::ExitKind;

/// Reaps every exited child, in order.
pub fn reap_all() -> Vec<(i32, ExitKind)> {
    drain(|| waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)))
}

/// The exits `wait` reports until it says nothing more has exited (or fails); stops and
/// continues are skipped.
pub fn drain(mut wait: impl FnMut() -> nix::Result<WaitStatus>) -> Vec<(i32, ExitKind)> {
    let mut out = Vec::new();
    loop {
        let (pid, exit) = match wait() {
            Ok(WaitStatus::Exited(pid, code)) => (pid, ExitKind::Code(code)),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ExitKind::Signal(sig as i32)),
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(_) => continue,
        };
        out.push((pid.as_raw(), exit));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    // `waitpid(-1)` in a test would reap the children of other tests running beside it: the
    // drain is tested with a scripted wait.
    #[test]
    fn exits_are_collected_until_none_is_left() {
        let mut script = vec![
            Ok(WaitStatus::Exited(Pid::from_raw(10), 3)),
            Ok(WaitStatus::Stopped(Pid::from_raw(11), Signal::SIGSTOP)),
            Ok(WaitStatus::Signaled(
                Pid::from_raw(12),
                Signal::SIGKILL,
                false,
            )),
            Ok(WaitStatus::StillAlive),
            Ok(WaitStatus::Exited(Pid::from_raw(13), 0)),
        ]
        .into_iter();
        let got = drain(|| script.next().unwrap());
        assert_eq!(
            got,
            vec![(10, ExitKind::Code(3)), (12, ExitKind::Signal(9))]
        );
        let got = drain(|| Err(nix::errno::Errno::ECHILD));
        assert!(got.is_empty());
    }
}
