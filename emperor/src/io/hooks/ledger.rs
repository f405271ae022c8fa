//! Which vassal processes owe a stop hook.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::core::Inc;

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
