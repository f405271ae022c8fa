//! `--emperor-on-demand-exec`: one running lookup command, whose stdout pipe is watched by the
//! loop until it prints a line, closes, or its deadline passes.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Interest, Token};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tracing::debug;

use super::{first_line, key, LOOKUP_TIMEOUT};
use crate::core::VassalId;
use crate::io::registry::Owner;
use crate::io::source::Cx;

/// Most output read from a lookup command.
const MAX_LOOKUP_OUTPUT: usize = 4096;

/// Why a lookup command cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The command cannot be run.
    #[error("cannot run --emperor-on-demand-exec `{cmd}`: {source}")]
    Spawn {
        /// The command.
        cmd: String,
        /// Why.
        source: io::Error,
    },
    /// Its stdout pipe is missing.
    #[error("the on-demand exec command has no stdout")]
    NoStdout,
    /// Its stdout pipe cannot be made non-blocking.
    #[error("cannot set up the on-demand exec pipe: {0}")]
    Pipe(nix::Error),
    /// The loop cannot watch its stdout pipe.
    #[error("cannot watch the on-demand exec pipe: {0}")]
    Watch(io::Error),
}

/// A running lookup command.
#[derive(Debug)]
pub(super) struct Lookup {
    child: Child,
    out: ChildStdout,
    token: Token,
    buf: Vec<u8>,
    cwd: PathBuf,
    pub(super) deadline: Instant,
}

impl Lookup {
    /// Runs `CMD "NAME"` in `cwd` with its stdout watched for vassal `vassal`.
    pub(super) fn start(
        vassal: VassalId,
        cmd: &str,
        name: &str,
        cwd: &Path,
        cx: &mut Cx<'_>,
    ) -> Result<Lookup, LookupError> {
        // `CMD "NAME"` as uWSGI runs it, with the name passed as $1 so no quoting can break.
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("{cmd} \"$1\""))
            .arg("sh")
            .arg(name)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|source| LookupError::Spawn {
                cmd: cmd.to_string(),
                source,
            })?;
        let watched = child
            .stdout
            .take()
            .ok_or(LookupError::NoStdout)
            .and_then(|out| {
                let flags = fcntl(&out, FcntlArg::F_GETFL).map_err(LookupError::Pipe)?;
                let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
                fcntl(&out, FcntlArg::F_SETFL(flags)).map_err(LookupError::Pipe)?;
                let owner = Owner::Listener(key(vassal, true));
                let token = cx
                    .register(&mut SourceFd(&out.as_raw_fd()), owner, Interest::READABLE)
                    .map_err(LookupError::Watch)?;
                Ok((out, token))
            });
        let (out, token) = match watched {
            Ok(w) => w,
            Err(e) => {
                let _ = child.kill();
                return Err(e);
            }
        };
        debug!(pid = child.id(), "on-demand exec for {name} started");
        Ok(Lookup {
            child,
            out,
            token,
            buf: Vec::new(),
            cwd: cwd.to_path_buf(),
            deadline: cx.now + LOOKUP_TIMEOUT,
        })
    }

    /// Reads what is there; true once the answer is complete (a line, EOF, an error, or the
    /// output cap).
    pub(super) fn read(&mut self) -> bool {
        let mut chunk = [0u8; 512];
        loop {
            match self.out.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    if self.buf.len() >= MAX_LOOKUP_OUTPUT || self.buf.contains(&b'\n') {
                        return true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return true,
            }
        }
    }

    /// Stops watching it; the socket name it printed (if any) and the vassal's cwd. The
    /// command is reaped by the loop's `waitpid(-1)` whenever it exits.
    pub(super) fn finish(self, cx: &mut Cx<'_>) -> (Option<String>, PathBuf) {
        cx.deregister(&mut SourceFd(&self.out.as_raw_fd()), self.token);
        (first_line(&self.buf), self.cwd)
    }

    /// Stops watching it and kills the command.
    pub(super) fn abandon(self, cx: &mut Cx<'_>) {
        cx.deregister(&mut SourceFd(&self.out.as_raw_fd()), self.token);
        self.kill();
    }

    /// Kills the command (it is reaped by the loop).
    pub(super) fn kill(mut self) {
        let _ = self.child.kill();
    }
}
