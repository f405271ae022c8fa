//! Sans-IO codec for the uwsgi wire format and the uWSGI Emperor channel.
//!
//! Nothing in this crate touches a socket, a process or a clock: it turns bytes into typed
//! values and back. Parsers borrow their input, never allocate on the happy path, bound every
//! length and return typed errors instead of panicking.
//!
//! * [`header`]: the 4-byte packet header (modifier1, u16 little-endian size, modifier2).
//! * [`vars`]: the key/value dictionary body (CGI-style request vars, reply vars).
//! * [`array`](mod@array): the array body (a list of byte strings, e.g. a vassal's argv).
//! * [`codec`]: a streaming packet decoder (feed bytes, take whole packets).
//! * [`channel`]: the one-byte messages on the emperor ↔ vassal channel.
//! * [`config`]: the config-push frame sent on the vassal's config channel.
//! * [`modifier`]: well-known modifier1 values.
//! * [`request`]: a helper that builds a CGI request packet for a uWSGI server.

#![forbid(unsafe_code)]

pub mod array;
pub mod channel;
pub mod codec;
pub mod config;
pub mod header;
pub mod modifier;
pub mod request;
pub mod vars;

pub use array::{ArrayBuilder, ArrayError, ArrayIter};
pub use channel::{EmperorMsg, VassalMsg};
pub use codec::{DecodeError, OwnedPacket, PacketDecoder};
pub use header::{EncodeError, Header, Packet, Status, HEADER_LEN, MAX_BODY};
pub use vars::{VarsBuilder, VarsError, VarsIter};
