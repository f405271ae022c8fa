//! The vassal side of the uWSGI Emperor channel, for Rust programs, plus the pieces the
//! `vassal-shim` binary is built from.
//!
//! * [`channel`]: [`Vassal`], the emperor channel (`UWSGI_EMPEROR_FD`) and the config channel
//!   (`UWSGI_EMPEROR_FD_CONFIG`): send ready / accepting / loyal / heartbeat / SOS / stop-me,
//!   receive stop, graceful stop, reload and EOF as [`Event`]s, read pushed configs keeping the
//!   newest queued frame.
//! * [`core`]: the shim's decisions without I/O (readiness, loyalty, heartbeats, stop,
//!   reload, SOS) as a state machine with time passed in, and its [`crate::core::Settings`].
//! * [`notify`]: a parser for systemd-style notification datagrams (`READY=1`, `WATCHDOG=1`, ...)
//!   and the shim's extension keys.
//! * [`words`]: shell-style word splitting for the `exec` option.
//! * [`ini`]: a small, forgiving ini reader with repeated keys (uWSGI style).
//!
//! A native vassal in a few lines:
//!
//! ```no_run
//! use vassal_shim::{Event, Vassal};
//!
//! let mut vassal = Vassal::from_env().expect("bad UWSGI_EMPEROR_FD").expect("no emperor");
//! // ... bind sockets, load the app ...
//! vassal.ready().unwrap();
//! vassal.accepting().unwrap();
//! vassal.loyal().unwrap();
//! loop {
//!     match vassal.recv_timeout(Some(std::time::Duration::from_secs(1))).unwrap() {
//!         Some(Event::Stop | Event::GracefulStop | Event::Eof) => break,
//!         Some(Event::Reload) => { /* reload */ }
//!         _ => vassal.heartbeat().unwrap(),
//!     }
//! }
//! ```

pub mod channel;
pub mod core;
pub mod ini;
pub mod notify;
pub mod wire;
pub mod words;

pub use channel::{ConfigChannel, Error, Event, Vassal, ENV_EMPEROR_FD, ENV_EMPEROR_FD_CONFIG};
pub use uwsgi_proto::{EmperorMsg, VassalMsg};
