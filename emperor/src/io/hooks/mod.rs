//! Commands around a vassal's life: `--vassals-start-hook`, `--vassals-stop-hook`,
//! `--exec-as-emperor` (children of the emperor) and `--exec-as-vassal` (run by the vassal
//! process itself before it becomes uWSGI).
//!
//! Emperor-side commands never block the loop: each is a child whose merged stdout/stderr is a
//! non-blocking pipe registered in the loop as [`Owner::Hook`] (every line is logged with the
//! vassal's name) and which the loop reaps with every other child. A start hook gates its
//! vassal: [`Hooks`] is the [`Launcher`] of a start whose `run_start_hook` is set, and when the
//! hook has exited (whatever its status, as in uWSGI) it reports `Event::StartHookDone`; the
//! core then decides whether the spawn follows. The stop hook runs once per vassal process,
//! after that process was reaped; it is tied to the process, not to the stop path, so a
//! shutdown still sends every vassal its stop byte and no hook runs twice (uWSGI's §9.9 bug).
//!
//! `--exec-as-vassal` has to run in the vassal, before exec, and fail the start when it fails.
//! The spawn child (`CLONE_VM|CLONE_VFORK`) suspends the emperor until it execs, so it must not
//! wait for anything. Instead the vassal execs a small `/bin/sh` stage first
//! ([`wrap_exec_as_vassal`]): it runs each command with `/bin/sh -c`, and on a non-zero status
//! logs why and exits 1 (the vassal then counts as dying before being loyal, and is retried
//! with backoff); otherwise it `exec`s the real program with the same pid, fds and environment.

mod exec_as_vassal;
mod ledger;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};

use mio::unix::SourceFd;
use mio::{Interest, Token};
use tracing::{info, warn};

pub use self::exec_as_vassal::{sh_quote, wrap_exec_as_vassal};
pub use self::ledger::Ledger;
use super::registry::Owner;
use super::source::Cx;
use crate::core::{Event, ExitKind, Inc, SpawnRequest};
use crate::spawn::launcher::{Job, Launched, Launcher};
use crate::spawn::SpawnError;

/// Output of one hook kept before it is logged without a newline.
const MAX_LINE: usize = 8192;

/// The hook options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HookConfig {
    /// `--vassals-start-hook CMD`: `CMD NAME` before each start.
    pub start: Option<String>,
    /// `--vassals-stop-hook CMD`: `CMD NAME` after each vassal process is gone.
    pub stop: Option<String>,
    /// `--exec-as-vassal CMD` (repeatable): `/bin/sh -c CMD` in the vassal before exec.
    pub exec_as_vassal: Vec<String>,
    /// `--exec-as-emperor CMD` (repeatable): `/bin/sh -c CMD` by the emperor after a start.
    pub exec_as_emperor: Vec<String>,
}

/// Which command a child runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookKind {
    /// `--vassals-start-hook`.
    Start,
    /// `--vassals-stop-hook`.
    Stop,
    /// `--exec-as-emperor`.
    ExecAsEmperor,
}

impl HookKind {
    fn label(self) -> &'static str {
        match self {
            HookKind::Start => "vassals-start-hook",
            HookKind::Stop => "vassals-stop-hook",
            HookKind::ExecAsEmperor => "exec-as-emperor",
        }
    }
}

/// One hook child, until it is reaped and its output pipe is closed.
#[derive(Debug)]
struct Run {
    kind: HookKind,
    vassal: String,
    pid: i32,
    pipe: Option<(Token, std::fs::File)>,
    buf: Vec<u8>,
    exited: bool,
    cancelled: bool,
    /// The start this start hook gates, until it exits.
    gates: Option<Inc>,
}

/// Emperor-side hook children, a source of the loop.
#[derive(Debug)]
pub struct Hooks {
    cfg: HookConfig,
    /// By the [`Owner::Hook`] key.
    runs: HashMap<u64, Run>,
    /// Pid → key, until the pid is reaped.
    pids: HashMap<i32, u64>,
    next_key: u64,
    ledger: Ledger,
}

impl Hooks {
    /// Hooks from the options.
    pub fn new(cfg: HookConfig) -> Hooks {
        Hooks {
            cfg,
            runs: HashMap::new(),
            pids: HashMap::new(),
            next_key: 0,
            ledger: Ledger::default(),
        }
    }

    /// The options.
    pub fn config(&self) -> &HookConfig {
        &self.cfg
    }

    /// True while a hook process has not been reaped (the emperor waits for them at exit).
    pub fn busy(&self) -> bool {
        self.runs.values().any(|r| !r.exited)
    }

    /// Runs the start hook of `req` (`cwd`: the vassal's working dir, resolved into
    /// `UWSGI_VASSALS_DIR`); `Event::StartHookDone` follows when it exits. Without a start
    /// hook, or when it cannot be started (logged), `Event::StartHookDone` is reported at once.
    pub fn start_hook(&mut self, cx: &mut Cx<'_>, req: &SpawnRequest, cwd: &Path) {
        let done = Event::StartHookDone { inc: req.inc };
        let Some(cmd) = self.cfg.start.as_deref() else {
            return cx.core(done);
        };
        let mut c = Command::new(cmd);
        c.arg(&req.name).env("UWSGI_VASSALS_DIR", vassals_dir(cwd));
        match self.spawn_hook(cx, HookKind::Start, &req.name, c) {
            Some(key) => {
                if let Some(r) = self.runs.get_mut(&key) {
                    r.gates = Some(req.inc);
                }
            }
            None => cx.core(done),
        }
    }

    /// The process `pid` of incarnation `inc` started (forked or adopted; `cwd` is the
    /// vassal's working directory, `owner` the uid and gid it runs as): runs
    /// `--exec-as-emperor` and remembers it for the stop hook.
    pub fn after_start(
        &mut self,
        cx: &mut Cx<'_>,
        inc: Inc,
        name: &str,
        cwd: &Path,
        pid: i32,
        (uid, gid): (u32, u32),
    ) {
        if self.cfg.stop.is_some() {
            self.ledger.started(inc, name, Path::new(&vassals_dir(cwd)));
        }
        for cmd in self.cfg.exec_as_emperor.clone() {
            let mut c = Command::new("/bin/sh");
            c.arg("-c")
                .arg(&cmd)
                .env("UWSGI_VASSAL_CONFIG", name)
                .env("UWSGI_VASSAL_PID", pid.to_string())
                .env("UWSGI_VASSAL_UID", uid.to_string())
                .env("UWSGI_VASSAL_GID", gid.to_string());
            self.spawn_hook(cx, HookKind::ExecAsEmperor, name, c);
        }
    }

    /// The incarnation is over (its process was reaped, or it never started): the stop hook
    /// runs if a process had started.
    pub fn released(&mut self, cx: &mut Cx<'_>, inc: Inc) {
        let Some((name, dir)) = self.ledger.released(inc) else {
            return;
        };
        if let Some(cmd) = &self.cfg.stop {
            let mut c = Command::new(cmd);
            c.arg(&name).env("UWSGI_VASSALS_DIR", &dir);
            self.spawn_hook(cx, HookKind::Stop, &name, c);
        }
    }

    /// Starts `cmd` with its output on a watched pipe; its key, or `None` if it cannot run
    /// (logged).
    fn spawn_hook(
        &mut self,
        cx: &mut Cx<'_>,
        kind: HookKind,
        vassal: &str,
        mut cmd: Command,
    ) -> Option<u64> {
        let label = kind.label();
        let pipe = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(p) => Some(p),
            Err(e) => {
                warn!(vassal = %vassal, "{label} for vassal {vassal}: cannot create its output pipe ({e}); output goes to the emperor's stderr");
                None
            }
        };
        cmd.stdin(Stdio::null());
        if let Some((_, w)) = &pipe {
            if let Ok(w2) = w.try_clone() {
                cmd.stdout(Stdio::from(w2));
            }
            if let Ok(w3) = w.try_clone() {
                cmd.stderr(Stdio::from(w3));
            }
        }
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                warn!(vassal = %vassal, "{label} for vassal {vassal}: cannot run {:?}: {e}; check the command and its PATH", cmd.get_program());
                return None;
            }
        };
        drop(cmd);
        let pid = child.id() as i32;
        // The loop reaps it with waitpid(-1) like every other child.
        drop(child);
        info!(vassal = %vassal, pid, "{label} for vassal {vassal} started (pid: {pid})");
        let key = self.next_key;
        self.next_key += 1;
        let pipe = pipe.and_then(|(r, w)| watch_pipe(cx, label, key, r, w));
        self.runs.insert(
            key,
            Run {
                kind,
                vassal: vassal.to_string(),
                pid,
                pipe,
                buf: Vec::new(),
                exited: false,
                cancelled: false,
                gates: None,
            },
        );
        self.pids.insert(pid, key);
        Some(key)
    }

    /// Output from the hook with [`Owner::Hook`] key `key`: logged line by line.
    pub fn ready(&mut self, cx: &mut Cx<'_>, key: u64) {
        let Some(run) = self.runs.get_mut(&key) else {
            return;
        };
        let mut eof = false;
        if let Some((_, f)) = run.pipe.as_mut() {
            let mut buf = [0u8; 4096];
            loop {
                match f.read(&mut buf) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => run.buf.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        eof = true;
                        break;
                    }
                }
            }
        }
        log_lines(run, eof);
        if eof {
            if let Some((tok, f)) = run.pipe.take() {
                cx.deregister(&mut SourceFd(&f.as_raw_fd()), tok);
            }
            if run.exited {
                self.runs.remove(&key);
            }
        }
    }

    /// During a shutdown, start hooks still running are killed (SIGKILL, once): the vassals
    /// they gate will not start, and a hung hook must not hold the emperor's exit.
    pub fn cancel_starts(&mut self) {
        for run in self.runs.values_mut() {
            if run.gates.is_some() && !run.exited && !run.cancelled {
                run.cancelled = true;
                let pid = run.pid;
                warn!(vassal = %run.vassal, pid, "shutting down: killing the start hook of vassal {} (pid: {pid})", run.vassal);
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    /// A reaped child: true if it was a hook (then it is not a vassal's). A start hook reports
    /// `Event::StartHookDone` for the start it gates.
    pub fn reaped(&mut self, cx: &mut Cx<'_>, pid: i32, exit: ExitKind) -> bool {
        let Some(key) = self.pids.remove(&pid) else {
            return false;
        };
        let Some(run) = self.runs.get_mut(&key) else {
            return true;
        };
        let label = run.kind.label();
        let vassal = &run.vassal;
        if exit == ExitKind::Code(0) {
            info!(vassal = %vassal, pid, "{label} for vassal {vassal} (pid: {pid}) exited ({exit})");
        } else {
            warn!(vassal = %vassal, pid, "{label} for vassal {vassal} (pid: {pid}) failed ({exit})");
        }
        run.exited = true;
        if let Some(inc) = run.gates.take() {
            cx.core(Event::StartHookDone { inc });
        }
        if run.pipe.is_none() {
            self.runs.remove(&key);
        }
        true
    }
}

/// A start whose `run_start_hook` is set: runs the start hook, answered later by
/// `Event::StartHookDone` (see [`Hooks::start_hook`]).
impl Launcher for Hooks {
    fn launch(&mut self, job: &Job, cx: &mut Cx<'_>) -> Result<Launched, SpawnError> {
        self.start_hook(cx, &job.req, &job.plan.cwd);
        Ok(Launched::Pending)
    }
}

/// The read end `r` of a hook's output pipe, non-blocking and watched as [`Owner::Hook`]
/// `key` (the write end `w` is the child's and is closed here); `None` if that fails.
fn watch_pipe(
    cx: &mut Cx<'_>,
    label: &str,
    key: u64,
    r: OwnedFd,
    w: OwnedFd,
) -> Option<(Token, std::fs::File)> {
    drop(w);
    let f = std::fs::File::from(r);
    if let Err(e) = nix::fcntl::fcntl(
        &f,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    ) {
        warn!("{label}: cannot make its output pipe non-blocking: {e}");
        return None;
    }
    let tok = cx
        .register(
            &mut SourceFd(&f.as_raw_fd()),
            Owner::Hook(key),
            Interest::READABLE,
        )
        .ok()?;
    Some((tok, f))
}

fn log_lines(run: &mut Run, eof: bool) {
    let label = run.kind.label();
    while let Some(i) = run.buf.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = run.buf.drain(..=i).collect();
        let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
        info!(vassal = %run.vassal, "{label} for vassal {}: {line}", run.vassal);
    }
    if eof && !run.buf.is_empty() || run.buf.len() > MAX_LINE {
        let line = String::from_utf8_lossy(&run.buf).into_owned();
        run.buf.clear();
        info!(vassal = %run.vassal, "{label} for vassal {}: {line}", run.vassal);
    }
}

/// The environment value of `UWSGI_VASSALS_DIR` for a vassal whose working dir is `cwd`.
pub fn vassals_dir(cwd: &Path) -> OsString {
    std::fs::canonicalize(cwd)
        .unwrap_or_else(|_| cwd.to_path_buf())
        .into_os_string()
}
