//! The emperor's settings: the command line and the `[uwsgi]` section of `--ini`.

pub mod options;
