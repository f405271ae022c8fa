//! The loop's one token space: every registered `mio` source gets its token here, and the loop
//! asks here who owns a token that fired.
//!
//! Tokens are slab indices, so they are dense, reused after removal and never collide between
//! sources (no source carves a range of its own out of `usize`). A token is removed when
//! its source is deregistered; an event that arrives for a removed token in the same poll batch
//! finds no owner (or, if the index was reused within the batch, an owner whose source is then
//! read and reports `WouldBlock`), which every source tolerates.

use mio::Token;
use slab::Slab;

use crate::core::Inc;

/// Who a token belongs to. The payload is the source's own key for the registered object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    /// The signal pipe.
    Signals,
    /// The inotify fd of the monitors.
    Inotify,
    /// The stats listener.
    Stats,
    /// One stats client (the stats server's key).
    StatsClient(u64),
    /// A vassal's channel.
    Channel(Inc),
    /// A vassal's config socket while a push is pending.
    ConfigPush(Inc),
    /// The command socket.
    Command,
    /// The channel to our own emperor (sub-emperor mode).
    Parent,
    /// The output pipe of a hook process (the hooks' key).
    Hook(u64),
    /// An on-demand listener or lookup (the on-demand source's key).
    Listener(u64),
    /// A fork-server request in flight.
    Fork(Inc),
}

/// Token → owner, one slab for the whole loop.
#[derive(Debug, Default)]
pub struct Tokens {
    slab: Slab<Owner>,
}

impl Tokens {
    /// An empty registry.
    pub fn new() -> Tokens {
        Tokens::default()
    }

    /// A new token for `owner`.
    pub fn insert(&mut self, owner: Owner) -> Token {
        Token(self.slab.insert(owner))
    }

    /// Who owns `tok`, if it is still registered.
    pub fn owner(&self, tok: Token) -> Option<Owner> {
        self.slab.get(tok.0).copied()
    }

    /// Frees `tok` (its source was deregistered); returns who owned it.
    pub fn remove(&mut self, tok: Token) -> Option<Owner> {
        self.slab.try_remove(tok.0)
    }

    /// Tokens in use.
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// No token in use.
    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct_and_reused_after_removal() {
        let mut t = Tokens::new();
        let a = t.insert(Owner::Signals);
        let b = t.insert(Owner::Channel(Inc(7)));
        assert_ne!(a, b);
        assert_eq!(t.owner(b), Some(Owner::Channel(Inc(7))));
        assert_eq!(t.remove(b), Some(Owner::Channel(Inc(7))));
        assert_eq!(t.owner(b), None);
        assert_eq!(t.remove(b), None);
        let c = t.insert(Owner::Fork(Inc(9)));
        assert_eq!(c, b, "a freed token is reused");
        assert_eq!(t.owner(c), Some(Owner::Fork(Inc(9))));
        assert_eq!(t.len(), 2);
    }
}
