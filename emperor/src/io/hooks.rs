//! Commands around a vassal's life: `--vassals-start-hook`, `--vassals-stop-hook`,
//! `--exec-as-emperor` (children of the emperor) and `--exec-as-vassal` (run by the vassal
//! process itself before it becomes uWSGI).
//!
//! Emperor-side commands never block the loop: each is a child whose merged stdout/stderr is a
//! non-blocking pipe registered in the loop (every line is logged with the vassal's name) and
//! which the loop reaps with every other child. A start hook gates its vassal: the spawn
//! happens when the hook has exited (whatever its status, as in uWSGI). The stop hook runs once
//! per vassal process, after that process was reaped; it is tied to the process, not to the
//! stop path, so a shutdown still sends every vassal its stop byte and no hook runs twice
//! (uWSGI's §9.9 bug).
//!
//! `--exec-as-vassal` has to run in the vassal, before exec, and fail the start when it fails.
//! The spawn child (`CLONE_VM|CLONE_VFORK`) suspends the emperor until it execs, so it must not
//! wait for anything. Instead the vassal execs a small `/bin/sh` stage first: it runs each
//! command with `/bin/sh -c`, and on a non-zero status logs why and exits 1 (the vassal then
//! counts as dying before being loyal, and is retried with backoff); otherwise it `exec`s the
//! real program with the same pid, fds and environment.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use tracing::{info, warn};

use crate::core::{ExitKind, Inc, SpawnRequest};

/// First mio token of hook output pipes.
pub const HOOK_BASE: usize = 1 << 36;
const HOOK_SPAN: usize = 1 << 30;

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

/// Which vassal processes were started and not yet released: each started process gets
/// exactly one stop hook, however it ends (stop, crash, shutdown) and however often the core
/// releases it.
#[derive(Debug, Default)]
pub struct Ledger {
    started: HashMap<Inc, (String, PathBuf)>,
}

impl Ledger {
    /// A process for `inc` runs (`name`, its vassals dir).
    pub fn started(&mut self, inc: Inc, name: &str, dir: &Path) {
        self.started
            .insert(inc, (name.to_string(), dir.to_path_buf()));
    }

    /// The incarnation is over: `Some` exactly once per started process.
    pub fn released(&mut self, inc: Inc) -> Option<(String, PathBuf)> {
        self.started.remove(&inc)
    }
}

#[derive(Debug)]
struct Run {
    kind: HookKind,
    vassal: String,
    pipe: Option<(Token, std::fs::File)>,
    buf: Vec<u8>,
    exited: bool,
    cancelled: bool,
    then: Option<SpawnRequest>,
}

/// Emperor-side hook children.
#[derive(Debug)]
pub struct Hooks {
    cfg: HookConfig,
    runs: HashMap<i32, Run>,
    by_token: HashMap<Token, i32>,
    next_token: usize,
    ledger: Ledger,
}

/// What a reaped pid meant to the hooks.
#[derive(Debug)]
pub enum Reaped {
    /// Not a hook.
    NotOurs,
    /// A hook ended; nothing follows.
    Done,
    /// A start hook ended: spawn this now.
    Spawn(SpawnRequest),
}

impl Hooks {
    /// Hooks from the options.
    pub fn new(cfg: HookConfig) -> Hooks {
        Hooks {
            cfg,
            runs: HashMap::new(),
            by_token: HashMap::new(),
            next_token: 0,
            ledger: Ledger::default(),
        }
    }

    /// The options.
    pub fn config(&self) -> &HookConfig {
        &self.cfg
    }

    /// True for tokens of hook output pipes.
    pub fn owns(token: Token) -> bool {
        (HOOK_BASE..HOOK_BASE + HOOK_SPAN).contains(&token.0)
    }

    /// True while a hook process has not been reaped (the emperor waits for them at exit).
    pub fn busy(&self) -> bool {
        self.runs.values().any(|r| !r.exited)
    }

    /// Runs the start hook for `req` (`cwd`: the vassal's working dir, resolved into
    /// `UWSGI_VASSALS_DIR` only when a hook runs); the spawn follows when it exits (see
    /// [`Reaped::Spawn`]).
    /// Without a start hook, or when it cannot be started (logged), `req` comes back to be
    /// spawned now.
    pub fn before_start(
        &mut self,
        registry: &Registry,
        req: SpawnRequest,
        cwd: &Path,
    ) -> Option<SpawnRequest> {
        let Some(cmd) = self.cfg.start.clone() else {
            return Some(req);
        };
        let mut c = Command::new(&cmd);
        c.arg(&req.name).env("UWSGI_VASSALS_DIR", vassals_dir(cwd));
        let name = req.name.clone();
        match self.launch(registry, HookKind::Start, &name, c) {
            Some(pid) => {
                if let Some(r) = self.runs.get_mut(&pid) {
                    r.then = Some(req);
                }
                None
            }
            None => Some(req),
        }
    }

    /// A vassal process started: run `--exec-as-emperor` and remember it for the stop hook.
    #[allow(clippy::too_many_arguments)]
    pub fn after_start(
        &mut self,
        registry: &Registry,
        inc: Inc,
        name: &str,
        cwd: &Path,
        pid: i32,
        uid: u32,
        gid: u32,
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
            self.launch(registry, HookKind::ExecAsEmperor, name, c);
        }
    }

    /// The incarnation is over (its process was reaped, or it never started): the stop hook
    /// runs if a process had started.
    pub fn released(&mut self, registry: &Registry, inc: Inc) {
        let Some((name, dir)) = self.ledger.released(inc) else {
            return;
        };
        if let Some(cmd) = self.cfg.stop.clone() {
            let mut c = Command::new(&cmd);
            c.arg(&name).env("UWSGI_VASSALS_DIR", &dir);
            self.launch(registry, HookKind::Stop, &name, c);
        }
    }

    fn launch(
        &mut self,
        registry: &Registry,
        kind: HookKind,
        vassal: &str,
        mut cmd: Command,
    ) -> Option<i32> {
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
        let pipe = pipe.and_then(|(r, w): (OwnedFd, OwnedFd)| {
            drop(w);
            let f = std::fs::File::from(r);
            if let Err(e) = nix::fcntl::fcntl(
                &f,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            ) {
                warn!("{label}: cannot make its output pipe non-blocking: {e}");
                return None;
            }
            let tok = Token(HOOK_BASE + self.next_token);
            self.next_token = (self.next_token + 1) % HOOK_SPAN;
            registry
                .register(&mut SourceFd(&f.as_raw_fd()), tok, Interest::READABLE)
                .ok()?;
            self.by_token.insert(tok, pid);
            Some((tok, f))
        });
        self.runs.insert(
            pid,
            Run {
                kind,
                vassal: vassal.to_string(),
                pipe,
                buf: Vec::new(),
                exited: false,
                cancelled: false,
                then: None,
            },
        );
        Some(pid)
    }

    /// Output from a hook: logged line by line.
    pub fn on_readable(&mut self, registry: &Registry, token: Token) {
        let Some(&pid) = self.by_token.get(&token) else {
            return;
        };
        let Some(run) = self.runs.get_mut(&pid) else {
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
                let _ = registry.deregister(&mut SourceFd(&f.as_raw_fd()));
                self.by_token.remove(&tok);
            }
            if run.exited {
                self.runs.remove(&pid);
            }
        }
    }

    /// During a shutdown, start hooks still running are killed (SIGKILL, once): the vassals
    /// they gate will not start, and a hung hook must not hold the emperor's exit.
    pub fn cancel_starts(&mut self) {
        for (&pid, run) in self.runs.iter_mut() {
            if run.then.is_some() && !run.exited && !run.cancelled {
                run.cancelled = true;
                warn!(vassal = %run.vassal, pid, "shutting down: killing the start hook of vassal {} (pid: {pid})", run.vassal);
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    /// A reaped child: is it a hook, and does a spawn follow?
    pub fn on_reaped(&mut self, pid: i32, exit: ExitKind) -> Reaped {
        let Some(run) = self.runs.get_mut(&pid) else {
            return Reaped::NotOurs;
        };
        let label = run.kind.label();
        let vassal = run.vassal.clone();
        if exit == ExitKind::Code(0) {
            info!(vassal = %vassal, pid, "{label} for vassal {vassal} (pid: {pid}) exited ({exit})");
        } else {
            warn!(vassal = %vassal, pid, "{label} for vassal {vassal} (pid: {pid}) failed ({exit})");
        }
        run.exited = true;
        let then = run.then.take();
        if run.pipe.is_none() {
            self.runs.remove(&pid);
        }
        match then {
            Some(req) => Reaped::Spawn(req),
            None => Reaped::Done,
        }
    }
}

fn log_lines(run: &mut Run, eof: bool) {
    let label = run.kind.label();
    while let Some(i) = run.buf.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = run.buf.drain(..=i).collect();
        let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
        info!(vassal = %run.vassal, "{label} for vassal {}: {line}", run.vassal);
    }
    if eof && !run.buf.is_empty() || run.buf.len() > 8192 {
        let line = String::from_utf8_lossy(&run.buf).into_owned();
        run.buf.clear();
        info!(vassal = %run.vassal, "{label} for vassal {}: {line}", run.vassal);
    }
}

/// Single-quotes `s` for `/bin/sh`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// With `--exec-as-vassal` commands, the vassal first execs `/bin/sh` running them, then
/// `exec`s the first of `programs` with `argv[1..]` (same pid, fds and environment). A failing
/// command logs a line naming it and the vassal, and exits 1. Without commands, unchanged.
pub fn wrap_exec_as_vassal(
    cmds: &[String],
    name: &str,
    programs: Vec<PathBuf>,
    argv: Vec<String>,
) -> (Vec<PathBuf>, Vec<String>) {
    let Some(first) = programs.first() else {
        return (programs, argv);
    };
    if cmds.is_empty() {
        return (programs, argv);
    }
    let mut script = String::new();
    for cmd in cmds {
        let prefix =
            format!("exec-as-vassal command `{cmd}` failed for vassal {name} (exit status ");
        script.push_str(&format!(
            "/bin/sh -c {} || {{ printf '%s\\n' {}\"$?\"{} >&2; exit 1; }}\n",
            sh_quote(cmd),
            sh_quote(&prefix),
            sh_quote("): not starting it")
        ));
    }
    script.push_str("exec \"$@\"\n");
    let mut out = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        script,
        argv.first().cloned().unwrap_or_default(),
        first.display().to_string(),
    ];
    out.extend(argv.into_iter().skip(1));
    (vec![PathBuf::from("/bin/sh")], out)
}

/// The environment value of `UWSGI_VASSALS_DIR` for a vassal whose working dir is `cwd`.
pub fn vassals_dir(cwd: &Path) -> OsString {
    std::fs::canonicalize(cwd)
        .unwrap_or_else(|_| cwd.to_path_buf())
        .into_os_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_stop_hook_per_started_process() {
        let mut l = Ledger::default();
        l.started(Inc(1), "a.ini", Path::new("/v"));
        // A spawn that failed was never started: no stop hook.
        assert_eq!(l.released(Inc(2)), None);
        assert_eq!(
            l.released(Inc(1)),
            Some(("a.ini".to_string(), PathBuf::from("/v")))
        );
        // Released twice (e.g. reaped during a shutdown): still once.
        assert_eq!(l.released(Inc(1)), None);
    }

    /// uWSGI's §9.9 bug, against the real core with a fake clock: a shutdown sends every
    /// vassal its stop byte, and the ledger yields exactly one stop hook per started process,
    /// whatever releases it (reaped after the stop byte, after SIGKILL at mercy, twice).
    #[test]
    fn shutdown_sends_every_stop_byte_and_one_stop_hook_per_process() {
        use crate::core::{Action, Control, Core, CoreConfig, Entry, Event, ExitKind, FileStamp};
        use std::time::{Duration, Instant};
        use uwsgi_proto::EmperorMsg;
        let mut core = Core::new(CoreConfig::default());
        let mut ledger = Ledger::default();
        let now = Instant::now();
        let entries: Vec<Entry> = (0..5)
            .map(|i| Entry {
                key: format!("/v/{i}.ini"),
                name: format!("{i}.ini"),
                stamp: FileStamp::default(),
                content: None,
                uid: 1000,
                gid: 1000,
            })
            .collect();
        core.handle(
            now,
            Event::Scanned {
                monitor: 0,
                entries,
            },
        );
        let spawns: Vec<_> = std::iter::from_fn(|| core.poll_action())
            .filter_map(|a| match a {
                Action::Spawn(r) => Some(r),
                _ => None,
            })
            .collect();
        assert_eq!(spawns.len(), 5);
        for (i, r) in spawns.iter().enumerate() {
            core.handle(
                now,
                Event::Spawned {
                    inc: r.inc,
                    pid: 100 + i as i32,
                },
            );
            ledger.started(r.inc, &r.name, Path::new("/v"));
        }
        std::iter::from_fn(|| core.poll_action()).for_each(drop);
        core.handle(now, Event::Control(Control::Shutdown));
        let stops: Vec<_> = std::iter::from_fn(|| core.poll_action())
            .filter(|a| {
                matches!(
                    a,
                    Action::Send {
                        msg: EmperorMsg::Stop,
                        ..
                    }
                )
            })
            .collect();
        assert_eq!(stops.len(), 5, "every vassal gets its stop byte");
        let mut hooks = Vec::new();
        // Four exit on the stop byte; the fifth ignores it and is killed at reload-mercy.
        for pid in 100..104 {
            core.handle(
                now,
                Event::Reaped {
                    pid,
                    exit: ExitKind::Code(0),
                },
            );
        }
        let later = now + Duration::from_secs(31);
        core.handle_timeout(later);
        core.handle(
            later,
            Event::Reaped {
                pid: 104,
                exit: ExitKind::Signal(9),
            },
        );
        let actions: Vec<_> = std::iter::from_fn(|| core.poll_action()).collect();
        assert!(actions.contains(&Action::Exit));
        for a in &actions {
            if let Action::Release { inc } = a {
                // The core's release, and a second one: still one hook.
                hooks.extend(ledger.released(*inc));
                hooks.extend(ledger.released(*inc));
            }
        }
        let mut names: Vec<String> = hooks.into_iter().map(|(n, _)| n).collect();
        names.sort();
        assert_eq!(names, ["0.ini", "1.ini", "2.ini", "3.ini", "4.ini"]);
    }

    fn run(cmds: &[&str]) -> std::process::Output {
        let cmds: Vec<String> = cmds.iter().map(|s| s.to_string()).collect();
        let (progs, argv) = wrap_exec_as_vassal(
            &cmds,
            "app.ini",
            vec![PathBuf::from("/bin/echo")],
            vec!["/bin/echo".into(), "it's".into(), "exec'd".into()],
        );
        assert_eq!(progs, vec![PathBuf::from("/bin/sh")]);
        Command::new(&progs[0])
            .args(&argv[1..])
            .output()
            .expect("run /bin/sh")
    }

    #[test]
    fn exec_as_vassal_stage_runs_commands_then_execs_the_program() {
        let out = run(&["echo first", "echo 'second one'"]);
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "first\nsecond one\nit's exec'd\n"
        );
        let out = run(&["true", "exit 3", "echo never"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("exec-as-vassal command `exit 3` failed for vassal app.ini (exit status 3): not starting it"),
            "{err}"
        );
    }

    #[test]
    fn options_from_the_command_line_and_ini() {
        let d = tempfile::tempdir().unwrap();
        let ini = d.path().join("e.ini");
        std::fs::write(
            &ini,
            "[uwsgi]\nemperor = /v\nemperor-tyrant = true\nvassals-cap = chown\n\
             exec-as-vassal = true\nexec-as-vassal = echo 2\nemperor-use-clone = net,pid\n",
        )
        .unwrap();
        let o = crate::options::Options::parse_from_args([
            "emperor".as_ref(),
            "--ini".as_ref(),
            ini.as_os_str(),
            "--vassals-start-hook".as_ref(),
            "/bin/s".as_ref(),
            "--exec-as-emperor".as_ref(),
            "echo".as_ref(),
        ])
        .unwrap();
        assert!(o.tyrant && !o.tyrant_nofollow && !o.tyrant_initgroups);
        assert_eq!(o.emperor_cap.as_deref(), Some("chown"));
        assert_eq!(o.exec_as_vassal, ["true", "echo 2"]);
        assert_eq!(o.emperor_use_clone.as_deref(), Some("net,pid"));
        assert_eq!(o.vassals_start_hook.as_deref(), Some("/bin/s"));
        assert_eq!(o.exec_as_emperor, ["echo"]);
        use clap::CommandFactory;
        let help = crate::options::Options::command()
            .render_long_help()
            .to_string();
        for opt in [
            "--emperor-tyrant",
            "--emperor-tyrant-nofollow",
            "--emperor-tyrant-initgroups",
            "--vassals-start-hook",
            "--vassals-stop-hook",
            "--exec-as-vassal",
            "--exec-as-emperor",
            "--emperor-cap",
            "--emperor-use-clone",
        ] {
            assert!(help.contains(opt), "{opt} missing from --help");
        }
    }

    #[test]
    fn without_commands_nothing_changes() {
        let (p, a) = wrap_exec_as_vassal(&[], "x", vec![PathBuf::from("/u")], vec!["u".into()]);
        assert_eq!((p, a), (vec![PathBuf::from("/u")], vec!["u".to_string()]));
    }
}
