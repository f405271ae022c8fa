//! The emperor's settings: the command line and the `[uwsgi]` section of `--ini`.
//!
//! * [`options`]: the one flat [`Options`](options::Options) struct (clap), with uWSGI's option
//!   names, and the parse entry point; every item of this module is reachable there.
//! * `ini`: `--ini` files (sections, includes) turned into command-line arguments.
//! * `expand`: magic variables and `%(name)` placeholders in ini values.
//! * `ignored`: uWSGI master/worker keys accepted and ignored.
//! * `error`: the notes worth a warning and the typed errors.

mod error;
mod expand;
mod ignored;
mod ini;
pub mod options;

#[cfg(test)]
mod tests;
