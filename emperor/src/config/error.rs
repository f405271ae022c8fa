//! What reading the options reports: notes worth a warning, and typed errors.

use std::path::PathBuf;

use crate::sanitize::{esc, esc_path};

/// Something worth logging about an ini file, found while reading it (before logging exists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IniNote {
    /// The file.
    pub path: PathBuf,
    /// The key.
    pub key: String,
    /// What happens to it.
    pub kind: IniNoteKind,
}

/// What happens to a key the emperor has no option for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IniNoteKind {
    /// A uWSGI master/worker key ([`IGNORED_KEYS`](super::ignored::IGNORED_KEYS)).
    Ignored,
    /// Any other key: kept as a `%(key)` placeholder.
    Placeholder,
    /// A uWSGI master/worker key given on the command line (`--die-on-term`); `path` is empty.
    IgnoredOption,
}

impl std::fmt::Display for IniNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (p, k) = (esc_path(&self.path), esc(&self.key));
        match self.kind {
            IniNoteKind::IgnoredOption => write!(
                f,
                "command line: `--{k}` only configures a uWSGI master or its workers and has no meaning for the emperor; ignored"
            ),
            IniNoteKind::Ignored => write!(f, "{p}: `{k}` has no meaning for the emperor; ignored"),
            IniNoteKind::Placeholder => write!(
                f,
                "{p}: unknown option `{k}`, kept as a placeholder (usable as %({k}))"
            ),
        }
    }
}

/// Why options could not be read.
#[derive(Debug)]
pub enum OptionsError {
    /// clap's own error (unknown option, bad value, --help, --version).
    Clap(clap::Error),
    /// An ini file could not be read or parsed.
    Ini {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        problem: IniProblem,
    },
}

impl std::fmt::Display for OptionsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OptionsError::Clap(e) => write!(f, "{e}"),
            OptionsError::Ini { path, problem } => write!(
                f,
                "cannot use ini file {}: {}",
                esc_path(path),
                esc(&problem.to_string())
            ),
        }
    }
}

impl std::error::Error for OptionsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OptionsError::Clap(e) => Some(e),
            OptionsError::Ini { problem, .. } => Some(problem),
        }
    }
}

/// What is wrong with one ini file (the file is in [`OptionsError::Ini`]).
#[derive(Debug)]
pub enum IniProblem {
    /// `ini = OTHER` includes nest deeper than 8 levels.
    TooDeep,
    /// The file cannot be read.
    Read(std::io::Error),
    /// The file is not valid ini.
    Parse(ini::ParseError),
    /// The file has no section of that name (`[uwsgi]`, or the one after `FILE:`).
    NoSection {
        /// The section looked for.
        section: String,
    },
    /// A flag key has a value that is not a boolean.
    NotBool {
        /// The key.
        key: String,
        /// Its value.
        value: String,
    },
    /// A value expands beyond the length or reference limits.
    TooLong {
        /// The key.
        key: String,
    },
    /// A value uses `%(name)` and no key `name` exists.
    Undefined {
        /// The key whose value uses it.
        key: String,
        /// The missing name.
        name: String,
    },
    /// A value's `%(name)` leads back to itself.
    Cycle {
        /// The key whose value uses it.
        key: String,
        /// The name that closes the cycle.
        name: String,
        /// The keys being expanded, outermost first.
        chain: Vec<String>,
    },
}

impl std::fmt::Display for IniProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use super::expand::{MAX_LOOKUPS, MAX_VALUE_LEN};
        match self {
            IniProblem::TooDeep => f.write_str("ini files include each other too deeply"),
            IniProblem::Read(e) => write!(f, "{e}"),
            IniProblem::Parse(e) => write!(f, "{e}"),
            IniProblem::NoSection { section } => write!(f, "it has no [{section}] section"),
            IniProblem::NotBool { key, value } => {
                write!(f, "`{key}` expects true or false, not `{value}`")
            }
            IniProblem::TooLong { key } => write!(
                f,
                "`{key}` expands to more than {MAX_VALUE_LEN} bytes or through more than \
                 {MAX_LOOKUPS} %(...) references (keys that use each other several times?); \
                 simplify its placeholders"
            ),
            IniProblem::Undefined { key, name } => write!(
                f,
                "`{key}` uses %({name}), but no key `{name}` is defined in the ini files; \
                 define it (e.g. `{name} = ...`) or write %%({name}) for a literal %({name})"
            ),
            IniProblem::Cycle { key, name, chain } => write!(
                f,
                "`{key}` uses %({name}), whose value refers back to it ({} -> {name}); \
                 break the cycle",
                chain.join(" -> ")
            ),
        }
    }
}

impl std::error::Error for IniProblem {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            IniProblem::Read(e) => Some(e),
            IniProblem::Parse(e) => Some(e),
            _ => None,
        }
    }
}
