//! What every I/O source of the loop gets and gives.
//!
//! A source (channels, stats server, command socket, hooks, on-demand listeners, fork-server
//! client, signals, the parent emperor's channel) is called by the loop with a [`Cx`]: it
//! registers what it watches through [`Cx::register`] (so its tokens come from the one
//! [`Tokens`] registry), does its non-blocking I/O, and reports what happened as [`Output`]s.
//! It never calls the core: the loop feeds [`Output::Core`] events to the core after the source
//! returns, which keeps the data flow one way (sources → core → actions → executor/sources).

use std::io;
use std::path::PathBuf;
use std::time::Instant;

use mio::{Interest, Registry, Token};

use super::registry::{Owner, Tokens};
use crate::core::{Event, ExitKind, Inc};

/// A process of a vassal that now runs: started directly, after its start hook, or adopted
/// from the fork server. The loop watches its channel, places it in the process tree, runs its
/// after-start hooks and tells the core.
#[derive(Debug)]
pub struct Started {
    /// The incarnation it answers.
    pub inc: Inc,
    /// The vassal's instance name (for logs and hooks).
    pub name: String,
    /// Its working directory (for hooks).
    pub cwd: PathBuf,
    /// The pid and the emperor's ends of its channel and config socket.
    pub process: crate::spawn::Started,
    /// The uid and gid it runs as (for `--exec-as-emperor`).
    pub owner: (u32, u32),
    /// It was adopted from a fork server (the core's `Event::Adopted`, not `Spawned`).
    pub adopted: bool,
    /// It was already reaped while its adoption was being answered.
    pub reaped: Option<ExitKind>,
}

/// What a source reports to the loop.
#[derive(Debug)]
pub enum Output {
    /// An input for the core.
    Core(Event),
    /// A vassal process runs (see [`Started`]).
    Started(Box<Started>),
    /// A child may have exited (SIGCHLD, or a channel EOF): reap now.
    Reap,
}

/// The loop's context for one call into a source.
#[derive(Debug)]
pub struct Cx<'a> {
    /// The time of this turn.
    pub now: Instant,
    /// The poll registry.
    pub registry: &'a Registry,
    /// The one token registry.
    pub tokens: &'a mut Tokens,
    /// What the source reports.
    pub out: &'a mut Vec<Output>,
}

impl Cx<'_> {
    /// Reports an event for the core.
    pub fn core(&mut self, ev: Event) {
        self.out.push(Output::Core(ev));
    }

    /// Registers `src` for `owner`; its token comes from the registry (freed again on error).
    pub fn register<S: mio::event::Source + ?Sized>(
        &mut self,
        src: &mut S,
        owner: Owner,
        interest: Interest,
    ) -> io::Result<Token> {
        let tok = self.tokens.insert(owner);
        match self.registry.register(src, tok, interest) {
            Ok(()) => Ok(tok),
            Err(e) => {
                self.tokens.remove(tok);
                Err(e)
            }
        }
    }

    /// Changes what `src` (registered as `tok`) is watched for.
    pub fn reregister<S: mio::event::Source + ?Sized>(
        &mut self,
        src: &mut S,
        tok: Token,
        interest: Interest,
    ) -> io::Result<()> {
        self.registry.reregister(src, tok, interest)
    }

    /// Stops watching `src` and frees its token.
    pub fn deregister<S: mio::event::Source + ?Sized>(&mut self, src: &mut S, tok: Token) {
        let _ = self.registry.deregister(src);
        self.tokens.remove(tok);
    }
}
