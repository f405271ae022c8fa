//! Starting vassals through a fork server: a preloaded *base* process (normally itself a vassal,
//! named in `--vassal-fork-base`) forks the new vassal on request, and the emperor adopts it.
//!
//! [`ForkClient`] is a [`Launcher`] and a source of the loop. The exchange is
//! `forkserver_proto`'s non-blocking [`PendingFork`]: connect and send at once (a unix connect
//! completes or fails immediately), then the reply arrives as a readiness event of the
//! request's own token ([`Owner::Fork`]). Nothing here blocks the loop:
//!
//! ```text
//! launch() ──connect+sendmsg──▶ Request ──reply pid──▶ Verify ──ppid == us──▶ Output::Started
//!   │ Busy (backlog full): retry every 20 ms        │ not yet (in transit): re-check on a timer
//!   ▼ missing/stale socket: Err (that vassal backs off)  ▼ foreign or deadline: Event::SpawnFailed
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
//! are in flight the loop reports every reaped pid ([`ForkClient::note_reaped`]), so such a
//! vassal is still recognised as ours and its exit is passed on
//! ([`Started::reaped`](crate::io::source::Started::reaped)).
//!
//! # Driving it outside the emperor (benchmarks)
//!
//! [`ForkClient`] needs only a mio poll and a token registry, so a benchmark can time
//! "request → adopted child" exactly as the emperor performs it (the emperor also logs it per
//! vassal as `took_us`):
//!
//! ```no_run
//! use std::time::Instant;
//! use emperor::core::{Inc, SpawnRequest, VassalId};
//! use emperor::io::forkserver::ForkClient;
//! use emperor::io::registry::{Owner, Tokens};
//! use emperor::io::source::{Cx, Output};
//! use emperor::spawn::Plan;
//!
//! let mut poll = mio::Poll::new()?;
//! let mut tokens = Tokens::new();
//! let mut out = Vec::new();
//! let mut client = ForkClient::new("/run/fs.sock".into(), vec![], std::process::id() as i32);
//! let req = SpawnRequest {
//!     inc: Inc(1),
//!     vassal: VassalId(1),
//!     key: "/v/app.ini".into(),
//!     name: "app.ini".into(),
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
//! let mut cx = Cx { now: t0, registry: poll.registry(), tokens: &mut tokens, out: &mut out };
//! client.start(&mut cx, &req, &plan)?;
//! let mut events = mio::Events::with_capacity(8);
//! let started = 'outer: loop {
//!     let wait = client.next_deadline().map(|d| d.saturating_duration_since(Instant::now()));
//!     poll.poll(&mut events, wait)?;
//!     let mut cx = Cx { now: Instant::now(), registry: poll.registry(), tokens: &mut tokens, out: &mut out };
//!     for ev in events.iter() {
//!         if let Some(Owner::Fork(inc)) = cx.tokens.owner(ev.token()) {
//!             client.ready(&mut cx, inc);
//!         }
//!     }
//!     client.tick(&mut cx);
//!     for o in out.drain(..) {
//!         match o {
//!             Output::Started(s) => break 'outer s,
//!             other => return Err(format!("{other:?}").into()),
//!         }
//!     }
//! };
//! println!("pid {} adopted in {:?}", started.process.pid, t0.elapsed());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
#[cfg(test)]
mod tests;
mod topology;

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::task::Poll;
use std::time::{Duration, Instant};

use forkserver_proto::{parent_of, ClientError, PendingFork, Pid, VassalFds};
use mio::{Interest, Token};
use tracing::{debug, info, warn};

pub use self::error::ForkError;
pub use self::topology::{adoption_argv, classify, owner_of, Topology};
use super::registry::Owner;
use super::source::{Cx, Output, Started};
use crate::config::options::Options;
use crate::core::{Event, ExitKind, Inc, SpawnFailure, SpawnRequest};
use crate::spawn::launcher::{Job, Launched, Launcher};
use crate::spawn::{Plan, SpawnError};

/// How long one request may take (connect, send, reply): uWSGI's socket timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);
/// How long an adopted pid may take to become our child after the reply.
pub const ADOPTION_TIMEOUT: Duration = Duration::from_secs(3);
/// Retry period while the fork server's listen backlog is full.
const BUSY_RETRY: Duration = Duration::from_millis(20);
/// Re-check period of a pid still in transit (its parent is the base's intermediate child).
const RECHECK: Duration = Duration::from_millis(5);

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
    /// Sent; waiting for the reply (watched as `Token`).
    Request(PendingFork, Token),
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

impl Pending {
    /// Stops watching its connection (a request that failed).
    fn abandon(&mut self, cx: &mut Cx<'_>) {
        if let Stage::Request(pf, tok) = &mut self.stage {
            cx.deregister(pf, *tok);
        }
    }
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
    pub fn setup(opts: &Options, cwd: &Path) -> Result<Option<ForkClient>, ForkError> {
        if opts.use_fork_server.is_some() || opts.subreaper {
            nix::sys::prctl::set_child_subreaper(true).map_err(ForkError::Subreaper)?;
            info!("the Emperor is a child subreaper: orphaned descendants are reparented to it");
        }
        let Some(path) = &opts.use_fork_server else {
            if !opts.vassal_fork_base.is_empty() {
                warn!("--vassal-fork-base has no effect without --emperor-use-fork-server");
            }
            return Ok(None);
        };
        let path = super::addr::unix_path(path, cwd);
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
        crate::spawn::plan::forked(&self.bases, name, key)
    }

    /// Starts the request for `req` (argv from `plan`, with an absolute config path; a config
    /// channel when `plan.with_config`; `plan.stdin` as the on-demand listener). `Ok` means the
    /// answer comes later, from [`ready`](Self::ready) or [`tick`](Self::tick), as an
    /// `Output::Started` or an `Event::SpawnFailed`; `Err` is a failed start (no process).
    pub fn start(
        &mut self,
        cx: &mut Cx<'_>,
        req: &SpawnRequest,
        plan: &Plan,
    ) -> Result<(), ForkError> {
        let now = cx.now;
        let (channel, theirs) = UnixStream::pair().map_err(ForkError::Socketpair)?;
        let (config, their_config) = if plan.with_config {
            let (a, b) = UnixStream::pair().map_err(ForkError::Socketpair)?;
            (Some(a), Some(b))
        } else {
            (None, None)
        };
        let on_demand = match plan.stdin {
            Some(raw) => {
                // SAFETY: `Plan::stdin` is a listener the on-demand source owns and keeps open
                // for the whole spawn call; it is only borrowed here to duplicate it (CLOEXEC).
                let fd = unsafe { BorrowedFd::borrow_raw(raw) };
                Some(fd.try_clone_to_owned().map_err(ForkError::DupOnDemand)?)
            }
            None => None,
        };
        let mut p = Pending {
            name: req.name.clone(),
            cwd: plan.cwd.clone(),
            argv: adoption_argv(&plan.argv, &req.name, &req.key),
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
        self.send(cx, req.inc, &mut p)?;
        debug!(vassal = %req.name, "asked the fork server at {} for vassal {}", self.path.display(), req.name);
        self.pending.insert(req.inc, p);
        Ok(())
    }

    /// Connects and sends for a `Busy` request; `Err` when that failed for good.
    fn send(&self, cx: &mut Cx<'_>, inc: Inc, p: &mut Pending) -> Result<(), ForkError> {
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
                let tok = cx
                    .register(
                        &mut pf,
                        Owner::Fork(inc),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .map_err(ForkError::Watch)?;
                // The kernel holds the sent fds now: our copies of the vassal ends go.
                p.stage = Stage::Request(pf, tok);
                Ok(())
            }
            Err(ClientError::Busy { .. }) if cx.now < p.deadline => {
                if let Stage::Busy { retry_at, .. } = &mut p.stage {
                    *retry_at = cx.now + BUSY_RETRY;
                }
                Ok(())
            }
            Err(ClientError::Busy { path }) => Err(ForkError::Busy {
                path,
                ms: self.request_timeout.as_millis(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Tells the client that the loop reaped `pid` (call for every reaped pid).
    pub fn note_reaped(&mut self, pid: i32, exit: ExitKind, now: Instant) {
        if !self.pending.is_empty() {
            self.reaped.insert(pid, (exit, now));
        }
    }

    /// When [`tick`](Self::tick) must run next (a retry, a re-check or a deadline).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|p| match &p.stage {
                Stage::Busy { retry_at, .. } => (*retry_at).min(p.deadline),
                Stage::Request(..) => p.deadline,
                Stage::Verify { next_check, .. } => (*next_check).min(p.deadline),
            })
            .min()
    }

    /// A readiness event of the request of `inc` ([`Owner::Fork`]).
    pub fn ready(&mut self, cx: &mut Cx<'_>, inc: Inc) {
        self.drive(cx, vec![inc]);
    }

    /// Every request whose timer is due makes progress.
    pub fn tick(&mut self, cx: &mut Cx<'_>) {
        let now = cx.now;
        let due: Vec<Inc> = self
            .pending
            .iter()
            .filter(|(_, p)| match &p.stage {
                Stage::Busy { retry_at, .. } => *retry_at <= now || p.deadline <= now,
                Stage::Request(..) => p.deadline <= now,
                Stage::Verify { next_check, .. } => *next_check <= now || p.deadline <= now,
            })
            .map(|(inc, _)| *inc)
            .collect();
        self.drive(cx, due);
    }

    /// Makes progress on the requests `due`; those that are over go out as an adopted
    /// `Output::Started` or an `Event::SpawnFailed`.
    fn drive(&mut self, cx: &mut Cx<'_>, due: Vec<Inc>) {
        for inc in due {
            let Some(mut p) = self.pending.remove(&inc) else {
                continue;
            };
            match self.step(cx, inc, &mut p) {
                Ok(None) => {
                    self.pending.insert(inc, p);
                }
                Ok(Some((pid, reaped))) => {
                    let took_us = cx.now.saturating_duration_since(p.since).as_micros() as u64;
                    info!(
                        vassal = %p.name,
                        pid,
                        took_us,
                        "vassal {} (pid: {pid}) adopted from the fork server at {} in {:.2} ms",
                        p.name,
                        self.path.display(),
                        took_us as f64 / 1000.0
                    );
                    cx.out
                        .push(Output::Started(Box::new(adopted(inc, p, pid, reaped))));
                }
                Err(e) => {
                    p.abandon(cx);
                    cx.core(Event::SpawnFailed {
                        inc,
                        reason: SpawnFailure::executor(e),
                    });
                }
            }
        }
        if self.pending.is_empty() {
            self.reaped.clear();
        }
    }

    /// One request's progress: `Ok(None)` pending, `Ok(Some((pid, reaped)))` adopted, `Err`
    /// failed.
    fn step(
        &self,
        cx: &mut Cx<'_>,
        inc: Inc,
        p: &mut Pending,
    ) -> Result<Option<(i32, Option<ExitKind>)>, ForkError> {
        let now = cx.now;
        if let Stage::Busy { retry_at, .. } = &p.stage {
            if *retry_at > now && p.deadline > now {
                return Ok(None);
            }
            self.send(cx, inc, p)?;
            if matches!(p.stage, Stage::Busy { .. }) {
                return Ok(None);
            }
        }
        if let Stage::Request(pf, tok) = &mut p.stage {
            match pf.poll(now) {
                Poll::Pending => return Ok(None),
                Poll::Ready(Err(e)) => return Err(e.into()),
                Poll::Ready(Ok(pid)) => {
                    cx.deregister(pf, *tok);
                    debug!(vassal = %p.name, pid = pid.as_raw(), "fork server replied");
                    p.stage = Stage::Verify {
                        pid: pid.as_raw(),
                        next_check: now,
                    };
                    p.deadline = now + self.adoption_timeout;
                }
            }
        }
        self.verify(now, p)
    }

    /// The reply named a pid: is it (or was it, if already reaped) our child?
    fn verify(
        &self,
        now: Instant,
        p: &mut Pending,
    ) -> Result<Option<(i32, Option<ExitKind>)>, ForkError> {
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
        let refuse = |why: String| -> ForkError {
            warn!(
                vassal = %p.name,
                pid,
                "refusing adopted process {pid} for vassal {}: {why}; closing its channel so it exits",
                p.name
            );
            ForkError::Foreign {
                path: self.path.clone(),
                why,
            }
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

/// The adopted process of request `p` for `inc`, running as the base's user (the owner of
/// `/proc/<pid>`), or as the emperor's when that cannot be read.
fn adopted(inc: Inc, p: Pending, pid: i32, reaped: Option<ExitKind>) -> Started {
    let owner = owner_of(pid).unwrap_or_else(|| {
        (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    });
    Started {
        inc,
        name: p.name,
        cwd: p.cwd,
        process: crate::spawn::Started {
            pid,
            channel: p.channel,
            config: p.config,
        },
        owner,
        adopted: true,
        reaped,
    }
}

/// A start through the fork server: answered later (see [`ForkClient::start`]). Isolation
/// (tyrant credentials, capabilities, namespaces) cannot be applied by a fork server and fails
/// the start.
impl Launcher for ForkClient {
    fn launch(&mut self, job: &Job, cx: &mut Cx<'_>) -> Result<Launched, SpawnError> {
        let started = if job.setup.is_empty() {
            self.start(cx, &job.req, &job.plan)
        } else {
            Err(ForkError::Isolation)
        };
        match started {
            Ok(()) => Ok(Launched::Pending),
            Err(e) => Err(SpawnError::Launcher(Box::new(e))),
        }
    }
}
