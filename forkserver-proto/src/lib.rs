//! The fork-server handshake: an emperor asks an already running, preloaded "base" process to
//! fork a new vassal, instead of fork()+exec() of a cold program.
//!
//! Wire format (compatible with uWSGI 2.1-dev's `--fork-server` / `--emperor-use-fork-server`):
//!
//! ```text
//! client -> server   one sendmsg: [35, size_lo, size_hi, mask] + argv array
//!                    SCM_RIGHTS on the first byte: channel[, config][, on-demand]
//!                    mask: 0x01 channel (always) | 0x02 config | 0x04 on-demand
//! server -> client   from the adopted grandchild: [35, size_lo, size_hi, 0] + vars pid=<N>
//! ```
//!
//! * [`codec`]: sans-IO encoder/decoder of the request and the reply (no sockets), built on
//!   `uwsgi_proto`'s header, array and vars codecs.
//! * [`client`]: the emperor side. [`PendingFork`] is a non-blocking state machine for a mio
//!   loop; [`request_fork`] is the same exchange blocking with a deadline.
//! * [`server`]: the base side. [`ForkServer`] binds, checks `SO_PEERCRED` against allowed uids,
//!   serves many clients at once, double-forks and returns an [`Adoption`] in the grandchild, so
//!   the program continues as the new vassal (Zygote style).
//!
//! # Calling the client from an event loop (emperor integration)
//!
//! ```no_run
//! # use std::time::{Duration, Instant};
//! # use std::os::fd::AsFd;
//! use forkserver_proto::{PendingFork, VassalFds};
//! # fn demo(poll: &mut mio::Poll, vassal_end: std::os::unix::net::UnixStream)
//! #     -> Result<(), Box<dyn std::error::Error>> {
//! let argv = ["uwsgi", "--ini", "/etc/vassals/app.ini"];
//! let fds = VassalFds::channel(vassal_end.as_fd());
//! // connect + one sendmsg, never blocks (a full backlog is `ClientError::Busy`: retry later)
//! let mut pending = PendingFork::start(
//!     "/run/fs.sock".as_ref(), &argv, &fds, Instant::now() + Duration::from_secs(4))?;
//! drop(vassal_end); // the fds were duplicated into the server by the kernel
//! poll.registry().register(&mut pending, mio::Token(7),
//!     mio::Interest::READABLE | mio::Interest::WRITABLE)?;
//! // on every event for token 7, and when pending.deadline() passes:
//! match pending.poll(Instant::now()) {
//!     std::task::Poll::Pending => { /* keep waiting */ }
//!     std::task::Poll::Ready(Ok(pid)) => { /* supervise `pid` as an adopted vassal */ }
//!     std::task::Poll::Ready(Err(e)) => { /* log `e`, back off, retry the start */ }
//! }
//! poll.registry().deregister(&mut pending)?;
//! # Ok(()) }
//! ```
//!
//! Once the client sent the request the fds may be closed by the caller (the kernel holds
//! references in flight). The adopted vassal is a grandchild of the base, so the emperor must be
//! a subreaper (`PR_SET_CHILD_SUBREAPER`) and an ancestor of the base to reap it. Our server
//! replies only after the grandchild has been reparented, so by the time the pid arrives the
//! emperor can `waitpid` it and can detect a base that is not its descendant by checking the
//! vassal's ppid (`/proc/<pid>/stat`). See `docs/fork-server.md` for the full integration notes.
//!
//! # Running a server
//!
//! ```no_run
//! use forkserver_proto::{ForkServer, Outcome, ServerConfig};
//! # fn run_vassal(_: forkserver_proto::Adoption) {}
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // ... expensive initialisation here, once ...
//! let mut server = ForkServer::bind("/run/fs.sock", ServerConfig::default())?;
//! loop {
//!     match server.serve(&[])? {
//!         Outcome::Adopted(adoption) => {
//!             drop(server); // in the grandchild this only forgets the (closed) server state
//!             return Ok(run_vassal(adoption));
//!         }
//!         Outcome::Stopped(_) => return Ok(()),
//!         Outcome::Readable(_) => {}
//!     }
//! }
//! # }
//! ```
//!
//! The server process must be single-threaded: see [`server`].

pub mod client;
pub mod codec;
pub mod server;

pub use client::{parent_of, request_fork, ClientError, PendingFork, Stage, VassalFds};
pub use codec::{
    decode_reply, encode_reply, encode_request, FdMask, ReplyError, Request, RequestError,
};
pub use nix::unistd::Pid;
pub use server::{Adoption, ForkServer, Outcome, PeerCred, ServerConfig, ServerError, ServerStats};
