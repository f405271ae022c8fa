//! Starting vassals through a fork server: a preloaded *base* process (normally itself a vassal,
//! named in `--vassal-fork-base`) forks the new vassal on request, and the emperor adopts it.
//!
//! The exchange is `forkserver_proto`'s non-blocking [`PendingFork`]: connect and send at once
//! (a unix connect completes or fails immediately), then the reply arrives as a readiness event
//! of the request's own mio token ([`token`]). Nothing here blocks the loop:
//!
//! ```text
//! start()  ──connect+sendmsg──▶ Request ──reply pid──▶ Verify ──ppid == us──▶ Done::Adopted
//!   │ Busy (backlog full): retry every 20 ms        │ not yet (in transit): re-check on a timer
//!   ▼ missing/stale socket: Err (that vassal backs off)  ▼ foreign or deadline: Done::Failed
//! ```
//!
//! The adopted vassal is the base's grandchild. Because the emperor is a child subreaper and
//! the base is its descendant, the kernel reparents the vassal to the emperor, which then reaps
//! it with `waitpid(-1)` like any forked vassal. Our own fork server replies only after the
//! reparenting; uWSGI's replies before it, so after a reply the pid's ancestry is checked
//! ([`classify`]): a parent chain that reaches the emperor is "in transit" and re-checked every
//! few milliseconds until a deadline, a chain that reaches init without meeting the emperor means
//! the fork server is not our descendant. That vassal is then refused (its start fails with a
//! clear error and backs off), and its channel is closed so the stray process exits (EOF on the
//! channel means "the emperor is gone" to every vassal). Nothing else is touched: unlike uWSGI,
//! a failing fork server never costs the other vassals.
//!
//! A vassal can die before its reply is read; its pid is then already reaped. While requests
//! are in flight the runtime reports every reaped pid ([`ForkClient::note_reaped`]), so such a
//! vassal is still recognised as ours and its exit is passed on.
//!
//! # Driving it outside the emperor (benchmarks)
//!
//! [`ForkClient`] needs only a mio registry, so a benchmark can time "request → adopted child"
//! exactly as the emperor performs it (the emperor also logs it per vassal as `took_us`):
//!
//! ```no_run
//! use std::time::Instant;
//! use emperor::core::{Inc, SpawnRequest, VassalId};
//! use emperor::forkserver::{inc_of, Done, ForkClient};
//! use emperor::spawn::Plan;
//!
//! let mut poll = mio::Poll::new()?;
//! let mut client = ForkClient::new("/run/fs.sock".into(), vec![], std::process::id() as i32);
//! let req = SpawnRequest {
//!     inc: Inc(1),
//!     vassal: VassalId(1),
//!     key: "/v/app.ini".into(),
//!     name: "app.ini".into(),
//!     monitor: 0,
//!     content: None,
//!     ..SpawnRequest::default()
//! };
//! let plan = Plan {
//!     programs: vec![],
//!     argv: vec!["preloaded-base".into(), "--ini".into(), "app.ini".into()],
//!     env: vec![],
//!     cwd: "/v".into(),
//!     with_config: false,
//!     stdin: None,
//! };
//! let t0 = Instant::now();
//! client.start(poll.registry(), t0, &req, &plan)?;
//! let mut events = mio::Events::with_capacity(8);
//! let started = 'outer: loop {
//!     let wait = client.next_deadline().map(|d| d.saturating_duration_since(Instant::now()));
//!     poll.poll(&mut events, wait)?;
//!     let mut done = client.drive(poll.registry(), None, Instant::now());
//!     for ev in events.iter() {
//!         done.extend(client.drive(poll.registry(), inc_of(ev.token()), Instant::now()));
//!     }
//!     for d in done {
//!         match d {
//!             Done::Adopted { started, .. } => break 'outer started,
//!             Done::Failed { reason, .. } => return Err(reason.into()),
//!         }
//!     }
//! };
//! println!("pid {} adopted in {:?}", started.pid, t0.elapsed());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::task::Poll;
use std::time::{Duration, Instant};

use forkserver_proto::{parent_of, ClientError, PendingFork, Pid, VassalFds};
use mio::{Interest, Registry, Token};
use tracing::{debug, info, warn};

use crate::core::{ExitKind, Inc, SpawnRequest};
use crate::options::Options;
use crate::spawn::{Plan, Started};

/// How long one request may take (connect, send, reply): uWSGI's socket timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);
/// How long an adopted pid may take to become our child after the reply.
pub const ADOPTION_TIMEOUT: Duration = Duration::from_secs(3);
/// Retry period while the fork server's listen backlog is full.
const BUSY_RETRY: Duration = Duration::from_millis(20);
/// Re-check period of a pid still in transit (its parent is the base's intermediate child).
const RECHECK: Duration = Duration::from_millis(5);
/// Longest parent chain walked by [`classify`].
const MAX_DEPTH: usize = 256;

/// Fork-request tokens: `TOKEN_BASE + inc` (an [`Inc`] is below 2^60), below the runtime's
/// channel tokens (from 2^62).
const TOKEN_BASE: usize = 1 << 61;

/// The mio token of the request for `inc`.
pub fn token(inc: Inc) -> Token {
    Token(TOKEN_BASE + inc.0 as usize)
}

/// The incarnation whose request owns `tok`, if `tok` is a fork-server token.
pub fn inc_of(tok: Token) -> Option<Inc> {
    tok.0
        .checked_sub(TOKEN_BASE)
        .filter(|&i| i < TOKEN_BASE)
        .map(|i| Inc(i as u64))
}

/// Where an adopted pid stands relative to the emperor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// Its parent is the emperor.
    Ours,
    /// Its parent chain reaches the emperor (e.g. the base's intermediate child has not exited
    /// yet), or could not be read completely because an ancestor just exited: check again.
    InTransit {
        /// Its current parent.
        parent: i32,
    },
    /// Its parent chain reaches init without meeting the emperor.
    Foreign {
        /// Its current parent.
        parent: i32,
    },
    /// No such process (and we did not reap it).
    Gone,
}

/// Classifies `pid` for an emperor whose pid is `me`; `parent_of` reads a process's parent.
pub fn classify(pid: i32, me: i32, parent_of: impl Fn(i32) -> io::Result<i32>) -> Topology {
    let parent = match parent_of(pid) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Topology::Gone,
        Err(_) => return Topology::InTransit { parent: 0 },
    };
    let mut x = parent;
    for _ in 0..MAX_DEPTH {
        if x == me {
            return if x == parent {
                Topology::Ours
            } else {
                Topology::InTransit { parent }
            };
        }
        if x <= 1 {
            return Topology::Foreign { parent };
        }
        match parent_of(x) {
            Ok(p) => x = p,
            // An ancestor exited while we walked: the chain is changing, look again later.
            Err(_) => return Topology::InTransit { parent },
        }
    }
    Topology::InTransit { parent }
}

/// The uid and gid a process runs as (the owner of `/proc/<pid>`): an adopted vassal has the
/// base's, not the emperor's.
pub fn owner_of(pid: i32) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(format!("/proc/{pid}")).ok()?;
    Some((m.uid(), m.gid()))
}

/// The argv sent to the fork server: `plan_argv` with the config name made absolute (the
/// adopted vassal runs in the base's cwd, not in its monitor's directory). A pushed config
/// (`emperor://NAME`) and an already absolute name are left alone.
pub fn adoption_argv(plan_argv: &[String], name: &str, key: &str) -> Vec<String> {
    let mut argv = plan_argv.to_vec();
    if Path::new(name).is_absolute() || !Path::new(key).is_absolute() {
        return argv;
    }
    let exec = format!("exec://{name}");
    let pos = (1..argv.len())
        .find(|&i| argv[i - 1].starts_with("--") && (argv[i] == name || argv[i] == exec));
    if let Some(i) = pos {
        argv[i] = if argv[i] == exec {
            format!("exec://{key}")
        } else {
            key.to_string()
        };
    }
    argv
}

/// The answer to one start.
#[derive(Debug)]
pub enum Done {
    /// The vassal runs and is our child.
    Adopted {
        /// The incarnation.
        inc: Inc,
        /// The vassal's name.
        name: String,
        /// Its pid and our ends of its channels.
        started: Started,
        /// Already reaped by the runtime (it died before the reply was read): how it ended.
        reaped: Option<ExitKind>,
        /// The working directory the vassal would have had if forked (for hooks).
        cwd: PathBuf,
    },
    /// No vassal (or a refused one): the start failed.
    Failed {
        /// The incarnation.
        inc: Inc,
        /// Why, naming the socket and what to do.
        reason: String,
    },
}

/// The vassal-side fds, kept until a request has been sent (a full backlog retries later).
#[derive(Debug)]
struct Outgoing {
    channel: UnixStream,
    config: Option<UnixStream>,
    on_demand: Option<OwnedFd>,
}

#[derive(Debug)]
enum Stage {
    /// The server's listen backlog was full: connect again at `retry_at`.
    Busy { retry_at: Instant, out: Outgoing },
    /// Sent; waiting for the reply.
    Request(PendingFork),
    /// The reply named `pid`; waiting for it to become our child.
    Verify { pid: i32, next_check: Instant },
}

#[derive(Debug)]
struct Pending {
    name: String,
    cwd: PathBuf,
    argv: Vec<String>,
    channel: UnixStream,
    config: Option<UnixStream>,
    stage: Stage,
    deadline: Instant,
    since: Instant,
}

/// The emperor's fork-server client: every request in flight, keyed by incarnation.
#[derive(Debug)]
pub struct ForkClient {
    path: PathBuf,
    bases: Vec<String>,
    me: i32,
    pending: HashMap<Inc, Pending>,
    /// Pids reaped while requests were in flight, with when (see the module docs).
    reaped: HashMap<i32, (ExitKind, Instant)>,
    request_timeout: Duration,
    adoption_timeout: Duration,
}

impl ForkClient {
    /// Applies `--emperor-use-fork-server`, `--vassal-fork-base` and `--emperor-subreaper`:
    /// becomes a child subreaper when asked to (or when a fork server is used) and returns the
    /// client when a fork server is configured. Relative socket paths are taken from `cwd`.
    pub fn setup(opts: &Options, cwd: &Path) -> Result<Option<ForkClient>, String> {
        if opts.use_fork_server.is_some() || opts.subreaper {
            nix::sys::prctl::set_child_subreaper(true).map_err(|e| {
                format!(
                    "cannot become a child subreaper (prctl PR_SET_CHILD_SUBREAPER): {e}; \
                     --emperor-use-fork-server and --emperor-subreaper need Linux 3.4 or later \
                     (and no seccomp filter blocking prctl)"
                )
            })?;
            info!("the Emperor is a child subreaper: orphaned descendants are reparented to it");
        }
        let Some(path) = &opts.use_fork_server else {
            if !opts.vassal_fork_base.is_empty() {
                warn!("--vassal-fork-base has no effect without --emperor-use-fork-server");
            }
            return Ok(None);
        };
        let path = cwd.join(path);
        if opts.vassal_fork_base.is_empty() {
            warn!(
                "--emperor-use-fork-server {} without --vassal-fork-base: every vassal is \
                 adopted, so the fork server must be started elsewhere as a descendant of the \
                 Emperor",
                path.display()
            );
        }
        info!(
            "vassals start through the fork server at {} (fork+exec for: {})",
            path.display(),
            if opts.vassal_fork_base.is_empty() {
                "none".to_string()
            } else {
                opts.vassal_fork_base.join(", ")
            }
        );
        Ok(Some(ForkClient::new(
            path,
            opts.vassal_fork_base.clone(),
            std::process::id() as i32,
        )))
    }

    /// A client for the socket `path`; `bases` are started locally; `me` is the emperor's pid.
    pub fn new(path: PathBuf, bases: Vec<String>, me: i32) -> ForkClient {
        ForkClient {
            path,
            bases,
            me,
            pending: HashMap::new(),
            reaped: HashMap::new(),
            request_timeout: REQUEST_TIMEOUT,
            adoption_timeout: ADOPTION_TIMEOUT,
        }
    }

    /// Overrides the request and adoption deadlines (tests).
    pub fn with_timeouts(mut self, request: Duration, adoption: Duration) -> ForkClient {
        self.request_timeout = request;
        self.adoption_timeout = adoption;
        self
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// True when the vassal `name` (config `key`) starts through the fork server, false for a
    /// fork base (matched by instance name, file name or full path).
    pub fn handles(&self, name: &str, key: &str) -> bool {
        let file = Path::new(key).file_name().and_then(|f| f.to_str());
        !self
            .bases
            .iter()
            .any(|b| b == name || b == key || Some(b.as_str()) == file)
    }

    /// Starts the request for `req` (argv from `plan`, with an absolute config path; a config
    /// channel when `plan.with_config`; `plan.stdin` as the on-demand listener). `Ok` means the
    /// answer comes later from [`drive`](Self::drive); `Err` is a failed start (no process).
    pub fn start(
        &mut self,
        registry: &Registry,
        now: Instant,
        req: &SpawnRequest,
        plan: &Plan,
    ) -> Result<(), String> {
        let argv = adoption_argv(&plan.argv, &req.name, &req.key);
        let io_err = |what: &str, e: io::Error| format!("adoption failed: {what}: {e}");
        let (channel, theirs) = UnixStream::pair().map_err(|e| io_err("socketpair", e))?;
        let (config, their_config) = if plan.with_config {
            let (a, b) = UnixStream::pair().map_err(|e| io_err("socketpair", e))?;
            (Some(a), Some(b))
        } else {
            (None, None)
        };
        let on_demand = match plan.stdin {
            Some(raw) => {
                // SAFETY: `Plan::stdin` is a listener the runtime owns and keeps open for the
                // whole spawn call; it is only borrowed here to duplicate it (CLOEXEC).
                let fd = unsafe { BorrowedFd::borrow_raw(raw) };
                Some(
                    fd.try_clone_to_owned()
                        .map_err(|e| io_err("dup of the on-demand socket", e))?,
                )
            }
            None => None,
        };
        let mut p = Pending {
            name: req.name.clone(),
            cwd: plan.cwd.clone(),
            argv,
            channel,
            config,
            stage: Stage::Busy {
                retry_at: now,
                out: Outgoing {
                    channel: theirs,
                    config: their_config,
                    on_demand,
                },
            },
            deadline: now + self.request_timeout,
            since: now,
        };
        match self.send(registry, req.inc, &mut p, now) {
            Ok(()) => {
                debug!(vassal = %req.name, "asked the fork server at {} for vassal {}", self.path.display(), req.name);
                self.pending.insert(req.inc, p);
                Ok(())
            }
            Err(reason) => Err(reason),
        }
    }

    /// Connects and sends for a `Busy` request; `Err` when that failed for good.
    fn send(
        &self,
        registry: &Registry,
        inc: Inc,
        p: &mut Pending,
        now: Instant,
    ) -> Result<(), String> {
        let Stage::Busy { out, .. } = &p.stage else {
            return Ok(());
        };
        let fds = VassalFds {
            channel: out.channel.as_fd(),
            config: out.config.as_ref().map(|c| c.as_fd()),
            on_demand: out.on_demand.as_ref().map(|c| c.as_fd()),
        };
        match PendingFork::start(&self.path, &p.argv, &fds, p.deadline) {
            Ok(mut pf) => {
                registry
                    .register(&mut pf, token(inc), Interest::READABLE | Interest::WRITABLE)
                    .map_err(|e| {
                        format!("adoption failed: cannot watch the fork server connection: {e}")
                    })?;
                // The kernel holds the sent fds now: our copies of the vassal ends go.
                p.stage = Stage::Request(pf);
                Ok(())
            }
            Err(ClientError::Busy { .. }) if now < p.deadline => {
                if let Stage::Busy { retry_at, .. } = &mut p.stage {
                    *retry_at = now + BUSY_RETRY;
                }
                Ok(())
            }
            Err(ClientError::Busy { path }) => Err(format!(
                "adoption failed: fork server at {} kept its listen backlog full for {} ms",
                path.display(),
                self.request_timeout.as_millis()
            )),
            Err(e) => Err(format!("adoption failed: {e}")),
        }
    }

    /// Tells the client that the runtime reaped `pid` (call for every reaped pid).
    pub fn note_reaped(&mut self, pid: i32, exit: ExitKind, now: Instant) {
        if !self.pending.is_empty() {
            self.reaped.insert(pid, (exit, now));
        }
    }

    /// When [`drive`](Self::drive) must run next (a retry, a re-check or a deadline).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|p| match &p.stage {
                Stage::Busy { retry_at, .. } => (*retry_at).min(p.deadline),
                Stage::Request(_) => p.deadline,
                Stage::Verify { next_check, .. } => (*next_check).min(p.deadline),
            })
            .min()
    }

    /// Makes progress: on a readiness event of `ready`'s request, or (with `None`) on every
    /// request whose timer is due. Returns the starts that are over.
    pub fn drive(&mut self, registry: &Registry, ready: Option<Inc>, now: Instant) -> Vec<Done> {
        let due: Vec<Inc> = match ready {
            Some(inc) => vec![inc],
            None => self
                .pending
                .iter()
                .filter(|(_, p)| match &p.stage {
                    Stage::Busy { retry_at, .. } => *retry_at <= now || p.deadline <= now,
                    Stage::Request(_) => p.deadline <= now,
                    Stage::Verify { next_check, .. } => *next_check <= now || p.deadline <= now,
                })
                .map(|(inc, _)| *inc)
                .collect(),
        };
        let mut done = Vec::new();
        for inc in due {
            let Some(mut p) = self.pending.remove(&inc) else {
                continue;
            };
            match self.step(registry, inc, &mut p, now) {
                Ok(None) => {
                    self.pending.insert(inc, p);
                }
                Ok(Some((pid, reaped))) => {
                    let took_us = now.saturating_duration_since(p.since).as_micros() as u64;
                    info!(
                        vassal = %p.name,
                        pid,
                        took_us,
                        "vassal {} (pid: {pid}) adopted from the fork server at {} in {:.2} ms",
                        p.name,
                        self.path.display(),
                        took_us as f64 / 1000.0
                    );
                    done.push(Done::Adopted {
                        inc,
                        name: p.name,
                        started: Started {
                            pid,
                            channel: p.channel,
                            config: p.config,
                        },
                        reaped,
                        cwd: p.cwd,
                    });
                }
                Err(reason) => {
                    if let Stage::Request(pf) = &mut p.stage {
                        let _ = registry.deregister(pf);
                    }
                    done.push(Done::Failed { inc, reason });
                }
            }
        }
        if self.pending.is_empty() {
            self.reaped.clear();
        }
        done
    }

    /// One request's progress: `Ok(None)` pending, `Ok(Some((pid, reaped)))` adopted, `Err`
    /// failed.
    fn step(
        &self,
        registry: &Registry,
        inc: Inc,
        p: &mut Pending,
        now: Instant,
    ) -> Result<Option<(i32, Option<ExitKind>)>, String> {
        if let Stage::Busy { retry_at, .. } = &p.stage {
            if *retry_at > now && p.deadline > now {
                return Ok(None);
            }
            self.send(registry, inc, p, now)?;
            if matches!(p.stage, Stage::Busy { .. }) {
                return Ok(None);
            }
        }
        if let Stage::Request(pf) = &mut p.stage {
            match pf.poll(now) {
                Poll::Pending => return Ok(None),
                Poll::Ready(Err(e)) => return Err(format!("adoption failed: {e}")),
                Poll::Ready(Ok(pid)) => {
                    let _ = registry.deregister(pf);
                    debug!(vassal = %p.name, pid = pid.as_raw(), "fork server replied");
                    p.stage = Stage::Verify {
                        pid: pid.as_raw(),
                        next_check: now,
                    };
                    p.deadline = now + self.adoption_timeout;
                }
            }
        }
        let Stage::Verify {
            pid,
            ref mut next_check,
        } = p.stage
        else {
            return Ok(None);
        };
        // Reaped by us after the request started: it was our child.
        if let Some(&(exit, at)) = self.reaped.get(&pid) {
            if at >= p.since {
                return Ok(Some((pid, Some(exit))));
            }
        }
        let topology = classify(pid, self.me, |x| {
            parent_of(Pid::from_raw(x)).map(|p| p.as_raw())
        });
        let refuse = |why: String| -> String {
            warn!(
                vassal = %p.name,
                pid,
                "refusing adopted process {pid} for vassal {}: {why}; closing its channel so it exits",
                p.name
            );
            format!(
                "the fork server at {} is not a descendant of this Emperor: {why}. Run the \
                 fork server as a vassal of this Emperor (listed in --vassal-fork-base) so its \
                 adopted vassals are reparented to the Emperor",
                self.path.display()
            )
        };
        match topology {
            Topology::Ours => Ok(Some((pid, None))),
            Topology::Foreign { parent } => Err(refuse(format!(
                "its adopted process {pid} has parent {parent}, outside the Emperor's tree"
            ))),
            Topology::Gone => Err(refuse(format!(
                "its adopted process {pid} vanished without being reaped by the Emperor"
            ))),
            Topology::InTransit { parent } if now >= p.deadline => Err(refuse(format!(
                "its adopted process {pid} did not become a child of the Emperor within {} ms \
                 (its parent is {parent})",
                self.adoption_timeout.as_millis()
            ))),
            Topology::InTransit { parent } => {
                debug!(vassal = %p.name, pid, parent, "adopted process not reparented yet");
                *next_check = now + RECHECK;
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn tokens_round_trip_and_stay_clear_of_other_ranges() {
        for inc in [0u64, 1, 7, 1 << 40] {
            assert_eq!(inc_of(token(Inc(inc))), Some(Inc(inc)));
        }
        for other in [
            0usize,
            3,
            1 << 20,
            (1 << 40) + 5,
            (1 << 40) + (1 << 41),
            1 << 53,
        ] {
            assert_eq!(inc_of(Token(other)), None, "{other}");
        }
    }

    #[test]
    fn argv_gets_the_absolute_config_path() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            adoption_argv(&a(&["uwsgi", "--ini", "app.ini"]), "app.ini", "/v/app.ini"),
            a(&["uwsgi", "--ini", "/v/app.ini"])
        );
        // Templates that happen to carry the same text are left alone; only the config slot.
        assert_eq!(
            adoption_argv(
                &a(&[
                    "uwsgi",
                    "--set",
                    "x=1",
                    "--ini",
                    "app.ini",
                    "--inherit",
                    "t.ini"
                ]),
                "app.ini",
                "/v/app.ini"
            ),
            a(&[
                "uwsgi",
                "--set",
                "x=1",
                "--ini",
                "/v/app.ini",
                "--inherit",
                "t.ini"
            ])
        );
        assert_eq!(
            adoption_argv(&a(&["u", "--ini", "exec://g.ini"]), "g.ini", "/v/g.ini"),
            a(&["u", "--ini", "exec:///v/g.ini"])
        );
        // Pushed configs and glob names (already absolute) are unchanged.
        let pushed = a(&["u", "--ini", "emperor://p.ini"]);
        assert_eq!(adoption_argv(&pushed, "p.ini", "/v/p.ini"), pushed);
        let glob = a(&["u", "--ini", "/g/x.ini"]);
        assert_eq!(adoption_argv(&glob, "/g/x.ini", "/g/x.ini"), glob);
    }

    #[test]
    fn owner_of_a_process_is_its_uid_and_gid() {
        let me = std::process::id() as i32;
        assert_eq!(
            owner_of(me),
            Some((
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw()
            ))
        );
        assert_eq!(owner_of(i32::MAX), None);
    }

    #[test]
    fn fork_bases_are_matched_by_name_file_name_or_path() {
        let c = ForkClient::new("/fs.sock".into(), vec!["base.ini".into()], 1);
        assert!(!c.handles("base.ini", "/v/base.ini"));
        assert!(!c.handles("/g/base.ini", "/g/base.ini"));
        assert!(c.handles("app.ini", "/v/app.ini"));
        let c = ForkClient::new("/fs.sock".into(), vec!["/v/b.ini".into()], 1);
        assert!(!c.handles("b.ini", "/v/b.ini"));
        assert!(c.handles("b.ini", "/w/b.ini"));
    }

    fn tree(edges: &[(i32, i32)]) -> impl Fn(i32) -> io::Result<i32> + '_ {
        move |pid| {
            edges
                .iter()
                .find(|(c, _)| *c == pid)
                .map(|(_, p)| *p)
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        }
    }

    #[test]
    fn topology_of_an_adopted_pid() {
        // 100 = emperor (child of 50, child of 1); 200 = base; 300 = intermediate; 400 = vassal.
        let us = [(100, 50), (50, 1), (200, 100), (300, 200)];
        let with = |extra: (i32, i32)| {
            let mut v = us.to_vec();
            v.push(extra);
            v
        };
        let reparented = with((400, 100));
        assert_eq!(classify(400, 100, tree(&reparented)), Topology::Ours);
        let in_transit = with((400, 300));
        assert_eq!(
            classify(400, 100, tree(&in_transit)),
            Topology::InTransit { parent: 300 }
        );
        // A stand-alone fork server (child of 50): its orphans go to init (or another
        // subreaper that is not below us).
        let foreign = with((400, 1));
        assert_eq!(
            classify(400, 100, tree(&foreign)),
            Topology::Foreign { parent: 1 }
        );
        let elsewhere = [(100, 50), (50, 1), (400, 60), (60, 50)];
        assert_eq!(
            classify(400, 100, tree(&elsewhere)),
            Topology::Foreign { parent: 60 }
        );
        assert_eq!(classify(400, 100, tree(&us)), Topology::Gone);
        // The intermediate child exits while we walk: look again later.
        let racing = [(400, 300)];
        assert_eq!(
            classify(400, 100, tree(&racing)),
            Topology::InTransit { parent: 300 }
        );
        // An emperor running as pid 1 owns everything.
        assert_eq!(classify(400, 1, tree(&[(400, 1)])), Topology::Ours);
        // A cycle (never on Linux) does not loop forever.
        assert_eq!(
            classify(400, 100, tree(&[(400, 7), (7, 8), (8, 7)])),
            Topology::InTransit { parent: 7 }
        );
    }

    #[test]
    fn options_and_ini_keys() {
        let o = Options::parse_from_args([
            "emperor",
            "/v",
            "--emperor-use-fork-server",
            "fs.sock",
            "--vassal-fork-base",
            "base.ini",
            "--vassal-fork-base",
            "other.ini",
        ])
        .unwrap();
        assert_eq!(o.use_fork_server.as_deref(), Some(Path::new("fs.sock")));
        assert_eq!(o.vassal_fork_base, vec!["base.ini", "other.ini"]);
        assert!(!o.subreaper);
        let dir = tempfile::tempdir().unwrap();
        let ini = dir.path().join("e.ini");
        std::fs::write(
            &ini,
            "[uwsgi]\nemperor = /v\nemperor-use-fork-server = %dfs.sock\n\
             vassal-fork-base = base.ini\nemperor-subreaper = true\n",
        )
        .unwrap();
        let o = Options::parse_from_args(["emperor".as_ref(), "--ini".as_ref(), ini.as_os_str()])
            .unwrap();
        let abs = std::path::absolute(dir.path()).unwrap();
        assert_eq!(o.use_fork_server, Some(abs.join("fs.sock")));
        assert_eq!(o.vassal_fork_base, vec!["base.ini"]);
        assert!(o.subreaper);
        let help = <Options as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        for needle in [
            "--emperor-use-fork-server",
            "--vassal-fork-base",
            "--emperor-subreaper",
            "[default: off]",
        ] {
            assert!(help.contains(needle), "{needle} missing from --help");
        }
    }

    fn request(inc: u64, name: &str, key: &str) -> SpawnRequest {
        SpawnRequest {
            inc: Inc(inc),
            vassal: crate::core::VassalId(inc),
            key: key.into(),
            name: name.into(),
            monitor: 0,
            content: None,
            ..SpawnRequest::default()
        }
    }

    fn plan() -> Plan {
        Plan {
            programs: vec![],
            argv: vec!["uwsgi".into(), "--ini".into(), "a.ini".into()],
            env: vec![],
            cwd: "/v".into(),
            with_config: false,
            stdin: None,
        }
    }

    /// Runs `drive` from a mio loop until something is done (or panics after 10 s).
    fn drive_until_done(poll: &mut mio::Poll, c: &mut ForkClient) -> Vec<Done> {
        let mut events = mio::Events::with_capacity(8);
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let now = Instant::now();
            assert!(now < end, "no answer");
            let wake = c.next_deadline().unwrap_or(end).min(end);
            match poll.poll(&mut events, Some(wake.saturating_duration_since(now))) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => events.clear(),
                r => r.unwrap(),
            }
            let mut done = Vec::new();
            for ev in events.iter() {
                done.extend(c.drive(poll.registry(), inc_of(ev.token()), Instant::now()));
            }
            done.extend(c.drive(poll.registry(), None, Instant::now()));
            if !done.is_empty() {
                return done;
            }
        }
    }

    #[test]
    fn a_missing_or_stale_socket_fails_that_start_at_once_naming_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs.sock");
        let poll = mio::Poll::new().unwrap();
        let mut c = ForkClient::new(path.clone(), vec![], std::process::id() as i32);
        let e = c
            .start(
                poll.registry(),
                Instant::now(),
                &request(1, "a.ini", "/v/a.ini"),
                &plan(),
            )
            .unwrap_err();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("does not exist"), "{e}");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let e = c
            .start(
                poll.registry(),
                Instant::now(),
                &request(2, "a.ini", "/v/a.ini"),
                &plan(),
            )
            .unwrap_err();
        assert!(e.contains("stale socket"), "{e}");
        assert_eq!(c.in_flight(), 0);
    }

    /// A scripted fork server on a thread: accepts one connection, reads the request, answers
    /// with `reply` (or closes), and hands back the request bytes.
    fn scripted(path: &Path, reply: Option<Vec<u8>>) -> std::thread::JoinHandle<Vec<u8>> {
        let l = std::os::unix::net::UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut head = [0u8; 4];
            s.read_exact(&mut head).unwrap();
            let mut body = vec![0u8; u16::from_le_bytes([head[1], head[2]]) as usize];
            s.read_exact(&mut body).unwrap();
            if let Some(r) = reply {
                s.write_all(&r).unwrap();
            }
            let mut req = head.to_vec();
            req.extend(body);
            req
        })
    }

    #[test]
    fn a_reply_naming_our_child_is_adopted_with_the_absolute_config_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs.sock");
        // Stands for the adopted vassal: a child of this process.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let server = scripted(
            &path,
            Some(forkserver_proto::encode_reply(child.id() as i32)),
        );
        let mut poll = mio::Poll::new().unwrap();
        let mut c = ForkClient::new(path, vec![], std::process::id() as i32);
        c.start(
            poll.registry(),
            Instant::now(),
            &request(3, "a.ini", "/v/a.ini"),
            &plan(),
        )
        .unwrap();
        let done = drive_until_done(&mut poll, &mut c);
        let _ = child.kill();
        let _ = child.wait();
        let req = server.join().unwrap();
        assert_eq!(&req[..4], &[35, req[1], req[2], 1]);
        assert!(req.ends_with(b"\x08\x00/v/a.ini"), "{req:?}");
        match &done[..] {
            [Done::Adopted {
                inc,
                name,
                started,
                reaped: None,
                cwd,
            }] => {
                assert_eq!((*inc, name.as_str()), (Inc(3), "a.ini"));
                assert_eq!(cwd, Path::new("/v"));
                assert_eq!(started.pid, child.id() as i32);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn a_pid_still_in_transit_is_re_checked_until_it_is_ours() {
        // Like uWSGI's fork server: the reply names a grandchild whose parent (our child)
        // exits later (here: when we close its stdin); then the kernel reparents it to us,
        // the subreaper.
        nix::sys::prctl::set_child_subreaper(true).unwrap();
        let mut mid = std::process::Command::new("sh")
            .args([
                "-c",
                "sleep 30 </dev/null >/dev/null 2>&1 & echo $!; exec cat >/dev/null",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(mid.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let grandchild: i32 = line.trim().parse().unwrap();
        let me = std::process::id() as i32;
        assert!(matches!(
            classify(grandchild, me, |x| parent_of(Pid::from_raw(x))
                .map(|p| p.as_raw())),
            Topology::InTransit { .. }
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs.sock");
        let server = scripted(&path, Some(forkserver_proto::encode_reply(grandchild)));
        let mut poll = mio::Poll::new().unwrap();
        let mut c = ForkClient::new(path, vec![], me);
        c.start(
            poll.registry(),
            Instant::now(),
            &request(8, "a.ini", "/v/a.ini"),
            &plan(),
        )
        .unwrap();
        server.join().unwrap();
        // The middle process exits now: the grandchild moves to us while the client re-checks.
        drop(mid.stdin.take());
        let done = drive_until_done(&mut poll, &mut c);
        let _ = mid.wait();
        let g = Pid::from_raw(grandchild);
        let _ = nix::sys::signal::kill(g, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(g, None);
        match &done[..] {
            [Done::Adopted { started, .. }] => assert_eq!(started.pid, grandchild),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_pid_outside_our_tree_is_refused_naming_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs.sock");
        // pid 1 is nobody's descendant (and is never signalled: refusing only closes the
        // channel).
        let server = scripted(&path, Some(forkserver_proto::encode_reply(1)));
        let mut poll = mio::Poll::new().unwrap();
        let mut c = ForkClient::new(path.clone(), vec![], std::process::id() as i32);
        c.start(
            poll.registry(),
            Instant::now(),
            &request(9, "a.ini", "/v/a.ini"),
            &plan(),
        )
        .unwrap();
        server.join().unwrap();
        match &drive_until_done(&mut poll, &mut c)[..] {
            [Done::Failed { reason, .. }] => {
                assert!(
                    reason.contains("is not a descendant of this Emperor"),
                    "{reason}"
                );
                assert!(reason.contains(&path.display().to_string()), "{reason}");
                assert!(reason.contains("--vassal-fork-base"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_closed_connection_or_bad_reply_fails_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs.sock");
        let server = scripted(&path, None);
        let mut poll = mio::Poll::new().unwrap();
        let mut c = ForkClient::new(path.clone(), vec![], std::process::id() as i32);
        c.start(
            poll.registry(),
            Instant::now(),
            &request(4, "a.ini", "/v/a.ini"),
            &plan(),
        )
        .unwrap();
        server.join().unwrap();
        match &drive_until_done(&mut poll, &mut c)[..] {
            [Done::Failed { inc, reason }] => {
                assert_eq!(*inc, Inc(4));
                assert!(reason.contains("closed the connection"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_file(&path).unwrap();
        let server = scripted(&path, Some(vec![35, 2, 0, 0, 1, 2]));
        c.start(
            poll.registry(),
            Instant::now(),
            &request(5, "a.ini", "/v/a.ini"),
            &plan(),
        )
        .unwrap();
        server.join().unwrap();
        assert!(matches!(
            &drive_until_done(&mut poll, &mut c)[..],
            [Done::Failed { inc: Inc(5), .. }]
        ));
    }

    #[test]
    fn a_silent_server_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs.sock");
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut poll = mio::Poll::new().unwrap();
        let mut c = ForkClient::new(path, vec![], std::process::id() as i32)
            .with_timeouts(Duration::from_millis(100), ADOPTION_TIMEOUT);
        c.start(
            poll.registry(),
            Instant::now(),
            &request(6, "a.ini", "/v/a.ini"),
            &plan(),
        )
        .unwrap();
        match &drive_until_done(&mut poll, &mut c)[..] {
            [Done::Failed { reason, .. }] => assert!(reason.contains("timed out"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_pid_reaped_before_the_reply_is_still_adopted_with_its_exit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs.sock");
        let pid = 999_999;
        let server = scripted(&path, Some(forkserver_proto::encode_reply(pid)));
        let mut poll = mio::Poll::new().unwrap();
        let mut c = ForkClient::new(path, vec![], std::process::id() as i32);
        c.start(
            poll.registry(),
            Instant::now(),
            &request(7, "a.ini", "/v/a.ini"),
            &plan(),
        )
        .unwrap();
        c.note_reaped(pid, ExitKind::Code(3), Instant::now());
        server.join().unwrap();
        match &drive_until_done(&mut poll, &mut c)[..] {
            [Done::Adopted {
                started, reaped, ..
            }] => {
                assert_eq!(started.pid, pid);
                assert_eq!(*reaped, Some(ExitKind::Code(3)));
            }
            other => panic!("{other:?}"),
        }
        // Nothing in flight: reaped pids are no longer remembered.
        c.note_reaped(5, ExitKind::Code(0), Instant::now());
        assert!(c.reaped.is_empty());
    }

    /// The core rules an asynchronous start relies on.
    mod core_rules {
        use crate::core::{
            Action, Control, Core, CoreConfig, Entry, Event, ExitKind, FileStamp, Inc,
        };
        use std::time::{Duration, Instant};
        use uwsgi_proto::EmperorMsg;

        fn entry(n: i128) -> Entry {
            Entry {
                key: "/v/a.ini".into(),
                name: "a.ini".into(),
                stamp: FileStamp {
                    mtime_ns: n,
                    size: 1,
                    ino: 1,
                },
                content: None,
                uid: 0,
                gid: 0,
            }
        }

        fn drain(core: &mut Core) -> Vec<Action> {
            std::iter::from_fn(|| core.poll_action()).collect()
        }

        /// A core with `a.ini` asked to start; returns the incarnation.
        fn starting(now: Instant) -> (Core, Inc) {
            let mut core = Core::new(CoreConfig::default());
            core.handle(
                now,
                Event::Scanned {
                    monitor: 0,
                    entries: vec![entry(1)],
                },
            );
            let inc = drain(&mut core)
                .into_iter()
                .find_map(|a| match a {
                    Action::Spawn(r) => Some(r.inc),
                    _ => None,
                })
                .expect("a spawn");
            (core, inc)
        }

        #[test]
        fn an_answer_after_the_config_is_gone_stops_the_vassal() {
            let now = Instant::now();
            let (mut core, inc) = starting(now);
            core.handle(
                now,
                Event::Scanned {
                    monitor: 0,
                    entries: vec![],
                },
            );
            assert!(drain(&mut core).is_empty(), "nothing to stop yet");
            core.handle(now, Event::Spawned { inc, pid: 42 });
            assert!(drain(&mut core).contains(&Action::Send {
                inc,
                msg: EmperorMsg::Stop
            }));
            core.handle(
                now,
                Event::Reaped {
                    pid: 42,
                    exit: ExitKind::Code(0),
                },
            );
            assert!(core.is_empty());
        }

        #[test]
        fn shutdown_waits_for_a_start_in_flight() {
            let now = Instant::now();
            let (mut core, inc) = starting(now);
            core.handle(now, Event::Control(Control::Shutdown));
            assert!(!drain(&mut core).contains(&Action::Exit));
            core.handle(now, Event::Spawned { inc, pid: 42 });
            let a = drain(&mut core);
            assert!(
                a.contains(&Action::Send {
                    inc,
                    msg: EmperorMsg::Stop
                }) && !a.contains(&Action::Exit),
                "{a:?}"
            );
            core.handle(
                now,
                Event::Reaped {
                    pid: 42,
                    exit: ExitKind::Code(0),
                },
            );
            assert!(drain(&mut core).contains(&Action::Exit));
            // A failed answer ends the wait too.
            let (mut core, inc) = starting(now);
            core.handle(now, Event::Control(Control::Shutdown));
            core.handle(
                now,
                Event::SpawnFailed {
                    inc,
                    reason: "no fork server".into(),
                },
            );
            assert!(drain(&mut core).contains(&Action::Exit));
        }

        /// An adopted `a.ini` running as pid 42 (loyal when `loyal`).
        fn adopted(now: Instant, loyal: bool) -> (Core, Inc) {
            let (mut core, inc) = starting(now);
            core.mark_adopted(inc);
            core.handle(now, Event::Spawned { inc, pid: 42 });
            core.handle(now, Event::Message { inc, byte: 1 });
            if loyal {
                core.handle(now, Event::Message { inc, byte: 17 });
            }
            assert!(core.vassal("/v/a.ini").unwrap().adopted());
            drain(&mut core);
            (core, inc)
        }

        fn spawned_again(a: &[Action], old: Inc) -> bool {
            a.iter()
                .any(|a| matches!(a, Action::Spawn(r) if r.inc != old))
        }

        #[test]
        fn a_reloaded_adopted_vassal_is_adopted_again_at_once() {
            // Loyal or not (uWSGI workers are loyal only after a first request).
            for loyal in [true, false] {
                let now = Instant::now();
                let (mut core, inc) = adopted(now, loyal);
                let later = now + Duration::from_secs(1);
                core.handle(
                    later,
                    Event::Scanned {
                        monitor: 0,
                        entries: vec![entry(2)],
                    },
                );
                assert!(drain(&mut core).contains(&Action::Send {
                    inc,
                    msg: EmperorMsg::Reload
                }));
                // It cannot re-exec: it exits 0 and a new adoption starts without backoff.
                core.handle(later, Event::ChannelClosed { inc });
                core.handle(
                    later,
                    Event::Reaped {
                        pid: 42,
                        exit: ExitKind::Code(0),
                    },
                );
                let a = drain(&mut core);
                assert!(spawned_again(&a, inc), "loyal={loyal}: {a:?}");
                let v = core.vassal("/v/a.ini").unwrap();
                assert_eq!((v.adopted(), v.backoff.attempt), (false, 0));
            }
        }

        #[test]
        fn an_adopted_vassal_dying_on_its_own_follows_the_usual_rules() {
            let now = Instant::now();
            // Loyal: respawned at once.
            let (mut core, _) = adopted(now, true);
            core.handle(
                now,
                Event::Reaped {
                    pid: 42,
                    exit: ExitKind::Signal(9),
                },
            );
            assert!(drain(&mut core)
                .iter()
                .any(|a| matches!(a, Action::Spawn(_))));
            // Not loyal yet: backs off.
            let (mut core, _) = adopted(now, false);
            core.handle(
                now,
                Event::Reaped {
                    pid: 42,
                    exit: ExitKind::Code(0),
                },
            );
            assert!(!drain(&mut core)
                .iter()
                .any(|a| matches!(a, Action::Spawn(_))));
            assert_eq!(core.vassal("/v/a.ini").unwrap().backoff.attempt, 1);
        }
    }
}
