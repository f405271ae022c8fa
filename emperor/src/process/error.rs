//! Why setting up the emperor process failed: each message names the option, the user, group
//! or path involved, and what to change.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why `uid`/`gid`, `umask`/`chdir`/`env`/`unenv`, `daemonize`, `logto` or a pidfile failed.
#[derive(Debug)]
pub enum ProcessError {
    /// A numeric `uid` without a passwd entry and no `gid`.
    NoUserForUid {
        /// The uid.
        uid: u32,
    },
    /// The user's name cannot be passed to `getgrouplist`.
    NulInUserName {
        /// The name.
        name: String,
    },
    /// `getgrouplist` failed.
    GroupList {
        /// The user.
        user: String,
        /// The error.
        source: nix::Error,
    },
    /// A non-root `uid` together with an option that needs the emperor to stay root.
    NeedsRoot {
        /// The identity, as in [`Identity::label`](super::Identity::label).
        label: String,
        /// The option (`--emperor-tyrant`).
        option: &'static str,
        /// What the option does that needs root.
        why: &'static str,
    },
    /// A change of identity while not running as root.
    NotRoot {
        /// The identity asked for.
        label: String,
        /// The current uid.
        uid: u32,
        /// The current gid.
        gid: u32,
    },
    /// `setgroups`, `setresgid` or `setresuid` failed.
    Drop {
        /// The identity asked for.
        label: String,
        /// The call that failed.
        call: &'static str,
        /// The error.
        source: nix::Error,
    },
    /// The calls succeeded but the process does not have the identity afterwards.
    DropDidNotTake {
        /// The identity asked for.
        label: String,
        /// What was found.
        found: Untaken,
    },
    /// Looking up a numeric uid failed.
    UidLookup {
        /// The uid.
        uid: u32,
        /// The error.
        source: nix::Error,
    },
    /// No user of that name.
    NoSuchUser {
        /// The name.
        name: String,
    },
    /// Looking up a user name failed.
    UserLookup {
        /// The name.
        name: String,
        /// The error.
        source: nix::Error,
    },
    /// No group of that name.
    NoSuchGroup {
        /// The name.
        name: String,
    },
    /// Looking up a group name failed.
    GroupLookup {
        /// The name.
        name: String,
        /// The error.
        source: nix::Error,
    },
    /// An `env` entry is not `KEY=VALUE`.
    BadEnv {
        /// The entry.
        pair: String,
    },
    /// An `unenv` entry is not a variable name.
    BadUnenv {
        /// The entry.
        key: String,
    },
    /// A `umask` that is not an octal mode.
    BadUmask {
        /// The value.
        value: String,
    },
    /// `chdir` failed.
    Chdir {
        /// The directory.
        dir: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// `fork` or `setsid` failed while daemonizing.
    DaemonizeCall {
        /// The call (`fork`, `setsid`).
        call: &'static str,
        /// The error.
        source: nix::Error,
    },
    /// Putting stdin on `/dev/null` failed while daemonizing.
    DaemonizeStdin {
        /// What was being done.
        step: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The `logto`/`daemonize` file cannot be opened.
    LogOpen {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The log file cannot become stdout/stderr.
    LogDup {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A pidfile cannot be written.
    Pidfile {
        /// The file.
        path: PathBuf,
        /// The option (`pidfile`, `pidfile2`).
        key: String,
        /// The error.
        source: io::Error,
    },
}

/// What [`ProcessError::DropDidNotTake`] found after dropping privileges.
#[derive(Debug)]
pub enum Untaken {
    /// A query (`getresgid`, `getgroups`, `getresuid`) failed.
    Query {
        /// The call.
        call: &'static str,
        /// The error.
        source: nix::Error,
    },
    /// The real, effective and saved gids.
    Gids([u32; 3]),
    /// The supplementary groups.
    Groups(Vec<u32>),
    /// The real, effective and saved uids.
    Uids([u32; 3]),
    /// `setuid(0)` still succeeds.
    RootRegainable,
}

impl fmt::Display for Untaken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Untaken::Query { call, source } => write!(f, "{call}: {source}"),
            Untaken::Gids(gids) => write!(f, "gids are {gids:?}"),
            Untaken::Groups(have) => write!(f, "supplementary groups are {have:?}"),
            Untaken::Uids(uids) => write!(f, "uids are {uids:?}"),
            Untaken::RootRegainable => f.write_str("setuid(0) still succeeds"),
        }
    }
}

impl fmt::Display for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessError::NoUserForUid { uid } => write!(
                f,
                "uid {uid} has no user entry, so the emperor cannot know its group: \
                 add `gid = GROUP` (ini) or --gid GROUP"
            ),
            ProcessError::NulInUserName { name } => {
                write!(f, "user name {name:?} contains a NUL byte")
            }
            ProcessError::GroupList { user, source } => {
                write!(f, "cannot list the groups of user {user}: {source}")
            }
            ProcessError::NeedsRoot { label, option, why } => write!(
                f,
                "uid ({label}) cannot be combined with {option} ({}): {why} needs the emperor \
                 to stay root; remove one of them",
                option.trim_start_matches('-')
            ),
            ProcessError::NotRoot { label, uid, gid } => write!(
                f,
                "uid/gid ({label}) need root, but the emperor runs as uid {uid}, gid {gid}: start \
                 it as root, or remove uid/gid"
            ),
            ProcessError::Drop {
                label,
                call,
                source,
            } => write!(f, "cannot become {label}: {call} failed: {source}"),
            ProcessError::DropDidNotTake { label, found } => {
                write!(f, "dropping privileges to {label} did not take: {found}")
            }
            ProcessError::UidLookup { uid, source } => {
                write!(f, "cannot look up uid {uid}: {source}")
            }
            ProcessError::NoSuchUser { name } => write!(
                f,
                "uid: there is no user named `{name}` (see /etc/passwd or `getent passwd`); give \
                 an existing user name or a number"
            ),
            ProcessError::UserLookup { name, source } => {
                write!(f, "cannot look up user `{name}`: {source}")
            }
            ProcessError::NoSuchGroup { name } => write!(
                f,
                "gid: there is no group named `{name}` (see /etc/group or `getent group`); give \
                 an existing group name or a number"
            ),
            ProcessError::GroupLookup { name, source } => {
                write!(f, "cannot look up group `{name}`: {source}")
            }
            ProcessError::BadEnv { pair } => write!(
                f,
                "env `{pair}`: expected KEY=VALUE (a non-empty name, then `=`)"
            ),
            ProcessError::BadUnenv { key } => {
                write!(f, "unenv `{key}`: expected a variable name")
            }
            ProcessError::BadUmask { value } => write!(
                f,
                "umask `{value}`: expected an octal mode between 000 and 777, such as 022"
            ),
            ProcessError::Chdir { dir, source } => write!(
                f,
                "chdir: cannot change the working directory to {}: {source}",
                dir.display()
            ),
            ProcessError::DaemonizeCall { call, source } => {
                write!(f, "cannot daemonize: {call} failed: {source}")
            }
            ProcessError::DaemonizeStdin { step, source } => {
                write!(f, "cannot daemonize: {step}: {source}")
            }
            ProcessError::LogOpen { path, source } => write!(
                f,
                "cannot open the log file {} (logto/daemonize): {source}; check that its \
                 directory exists and is writable",
                path.display()
            ),
            ProcessError::LogDup { path, source } => {
                write!(f, "cannot log to {}: dup2 failed: {source}", path.display())
            }
            ProcessError::Pidfile { path, key, source } => write!(
                f,
                "cannot write the pidfile {} ({key}): {source}; check that its directory exists \
                 and is writable",
                path.display()
            ),
        }
    }
}

impl std::error::Error for ProcessError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProcessError::GroupList { source, .. }
            | ProcessError::Drop { source, .. }
            | ProcessError::UidLookup { source, .. }
            | ProcessError::UserLookup { source, .. }
            | ProcessError::GroupLookup { source, .. }
            | ProcessError::DaemonizeCall { source, .. } => Some(source),
            ProcessError::Chdir { source, .. }
            | ProcessError::DaemonizeStdin { source, .. }
            | ProcessError::LogOpen { source, .. }
            | ProcessError::LogDup { source, .. }
            | ProcessError::Pidfile { source, .. } => Some(source),
            _ => None,
        }
    }
}
