//! The emperor process itself, as configured by uWSGI's process keys: `umask`, `chdir`,
//! `env`/`unenv`, `daemonize`, `logto`, `pidfile`/`pidfile2` and `uid`/`gid`.
//!
//! The order matters and is driven by `main`: [`Identity::resolve`] and [`Identity::check`]
//! run first (so a bad user name or a refused combination is reported on the terminal), then
//! [`setup_environment`] and [`daemonize`] (before any thread, socket or pidfile exists, since
//! the pid changes), then [`log_to`] (before logging is initialised), the `pidfile`
//! ([`write_pidfile`]), the runtime (log, sockets and `--emperor-pidfile` are set up as the
//! starting user, normally root), and only then [`Identity::drop_privileges`]: groups first,
//! then the gid, then the uid, each checked afterwards.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::unistd::{Gid, Group, Uid, User};

use crate::config::options::Options;

mod error;

pub use error::{ProcessError, Untaken};

/// Who the emperor becomes once set up (`uid`/`gid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user to switch to (`None`: `gid` alone, the uid is kept).
    pub uid: Option<u32>,
    /// The group to switch to.
    pub gid: u32,
    /// The supplementary groups: the user's (initgroups), or none.
    pub groups: Vec<u32>,
    /// "user www-data (uid 33), group www-data (gid 33)", for messages.
    pub label: String,
}

impl Identity {
    /// Looks up `--uid`/`--gid` (names or numbers). `Ok(None)` when neither is given.
    pub fn resolve(opts: &Options) -> Result<Option<Identity>, ProcessError> {
        if opts.uid.is_none() && opts.gid.is_none() {
            return Ok(None);
        }
        let user = opts.uid.as_deref().map(lookup_user).transpose()?;
        let group = opts.gid.as_deref().map(lookup_group).transpose()?;
        let (gid, group_label) = match (&group, &user) {
            (Some((gid, label)), _) => (*gid, label.clone()),
            (None, Some((_, Some(u)))) => {
                let gid = u.gid.as_raw();
                let name = Group::from_gid(u.gid)
                    .ok()
                    .flatten()
                    .map(|g| g.name)
                    .unwrap_or_else(|| gid.to_string());
                (gid, format!("{name} (gid {gid}, the user's primary group)"))
            }
            (None, Some((uid, None))) => return Err(ProcessError::NoUserForUid { uid: *uid }),
            (None, None) => return Ok(None),
        };
        let groups = match &user {
            Some((_, Some(u))) => {
                let name =
                    CString::new(u.name.clone()).map_err(|_| ProcessError::NulInUserName {
                        name: u.name.clone(),
                    })?;
                nix::unistd::getgrouplist(&name, Gid::from_raw(gid))
                    .map_err(|source| ProcessError::GroupList {
                        user: u.name.clone(),
                        source,
                    })?
                    .into_iter()
                    .map(|g| g.as_raw())
                    .collect()
            }
            _ => Vec::new(),
        };
        let label = match &user {
            Some((uid, u)) => {
                let name = u
                    .as_ref()
                    .map_or_else(|| uid.to_string(), |u| u.name.clone());
                format!("user {name} (uid {uid}), group {group_label}")
            }
            None => format!("group {group_label}"),
        };
        Ok(Some(Identity {
            uid: user.map(|(uid, _)| uid),
            gid,
            groups,
            label,
        }))
    }

    /// Refuses what cannot work: a non-root `uid` with options that need the emperor to stay
    /// root, and a change of identity without root.
    pub fn check(&self, opts: &Options) -> Result<(), ProcessError> {
        if self.uid.is_some_and(|u| u != 0) {
            for (set, name, why) in [
                (
                    opts.tyrant,
                    "--emperor-tyrant",
                    "tyrant mode (each vassal runs as its file's owner)",
                ),
                (
                    opts.emperor_cap.is_some(),
                    "--emperor-cap",
                    "changing the vassals' capability bounding set",
                ),
                (
                    opts.emperor_use_clone.is_some(),
                    "--emperor-use-clone",
                    "creating the vassals' namespaces",
                ),
            ] {
                if set {
                    return Err(ProcessError::NeedsRoot {
                        label: self.label.clone(),
                        option: name,
                        why,
                    });
                }
            }
        }
        let (uid, gid) = (Uid::current().as_raw(), Gid::current().as_raw());
        if !Uid::effective().is_root() && (self.uid.is_some_and(|u| u != uid) || self.gid != gid) {
            return Err(ProcessError::NotRoot {
                label: self.label.clone(),
                uid,
                gid,
            });
        }
        Ok(())
    }

    /// Becomes this identity for good: supplementary groups, then gid, then uid (real, effective
    /// and saved), then checks that each took and that root cannot be regained. A no-op when
    /// not root (then [`Identity::check`] made sure nothing has to change).
    pub fn drop_privileges(&self) -> Result<(), ProcessError> {
        if !Uid::effective().is_root() {
            return Ok(());
        }
        let fail = |call: &'static str, source: nix::Error| ProcessError::Drop {
            label: self.label.clone(),
            call,
            source,
        };
        let groups: Vec<Gid> = self.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        nix::unistd::setgroups(&groups).map_err(|e| fail("setgroups", e))?;
        let gid = Gid::from_raw(self.gid);
        nix::unistd::setresgid(gid, gid, gid).map_err(|e| fail("setresgid", e))?;
        if let Some(uid) = self.uid {
            let uid = Uid::from_raw(uid);
            nix::unistd::setresuid(uid, uid, uid).map_err(|e| fail("setresuid", e))?;
        }
        self.verify()
    }

    fn verify(&self) -> Result<(), ProcessError> {
        let bad = |found: Untaken| ProcessError::DropDidNotTake {
            label: self.label.clone(),
            found,
        };
        let query = |call: &'static str| move |source| bad(Untaken::Query { call, source });
        let g = nix::unistd::getresgid().map_err(query("getresgid"))?;
        let gids = [g.real, g.effective, g.saved].map(|g| g.as_raw());
        if gids != [self.gid; 3] {
            return Err(bad(Untaken::Gids(gids)));
        }
        let mut have: Vec<u32> = nix::unistd::getgroups()
            .map_err(query("getgroups"))?
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        let mut want = self.groups.clone();
        have.sort_unstable();
        have.dedup();
        want.sort_unstable();
        want.dedup();
        if have != want {
            return Err(bad(Untaken::Groups(have)));
        }
        let Some(uid) = self.uid else {
            return Ok(());
        };
        let u = nix::unistd::getresuid().map_err(query("getresuid"))?;
        let uids = [u.real, u.effective, u.saved].map(|u| u.as_raw());
        if uids != [uid; 3] {
            return Err(bad(Untaken::Uids(uids)));
        }
        if uid != 0 && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
            return Err(bad(Untaken::RootRegainable));
        }
        Ok(())
    }
}

/// A user by name or number, with its passwd entry when there is one.
fn lookup_user(spec: &str) -> Result<(u32, Option<User>), ProcessError> {
    let spec = spec.trim();
    if let Ok(uid) = spec.parse::<u32>() {
        let entry = User::from_uid(Uid::from_raw(uid))
            .map_err(|source| ProcessError::UidLookup { uid, source })?;
        return Ok((uid, entry));
    }
    match User::from_name(spec) {
        Ok(Some(u)) => Ok((u.uid.as_raw(), Some(u))),
        Ok(None) => Err(ProcessError::NoSuchUser {
            name: spec.to_string(),
        }),
        Err(source) => Err(ProcessError::UserLookup {
            name: spec.to_string(),
            source,
        }),
    }
}

/// A group by name or number, with a label for messages.
fn lookup_group(spec: &str) -> Result<(u32, String), ProcessError> {
    let spec = spec.trim();
    if let Ok(gid) = spec.parse::<u32>() {
        let name = Group::from_gid(Gid::from_raw(gid))
            .ok()
            .flatten()
            .map_or_else(|| gid.to_string(), |g| g.name);
        return Ok((gid, format!("{name} (gid {gid})")));
    }
    match Group::from_name(spec) {
        Ok(Some(g)) => Ok((g.gid.as_raw(), format!("{spec} (gid {})", g.gid))),
        Ok(None) => Err(ProcessError::NoSuchGroup {
            name: spec.to_string(),
        }),
        Err(source) => Err(ProcessError::GroupLookup {
            name: spec.to_string(),
            source,
        }),
    }
}

/// Checks `umask`, `env` and `unenv` without applying anything.
pub fn check_environment(opts: &Options) -> Result<(), ProcessError> {
    if let Some(mask) = &opts.umask {
        parse_umask(mask)?;
    }
    for pair in &opts.env {
        match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() && !k.contains('\0') && !v.contains('\0') => {}
            _ => return Err(ProcessError::BadEnv { pair: pair.clone() }),
        }
    }
    for key in &opts.unenv {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(ProcessError::BadUnenv { key: key.clone() });
        }
    }
    Ok(())
}

/// Applies `umask`, `chdir`, `env` and `unenv`, in that order, once [`check_environment`]
/// passes. Must run while the process has a single thread (it changes the environment).
pub fn setup_environment(opts: &Options) -> Result<(), ProcessError> {
    check_environment(opts)?;
    if let Some(mask) = &opts.umask {
        let bits = parse_umask(mask)?;
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(bits));
    }
    if let Some(dir) = &opts.chdir {
        std::env::set_current_dir(dir).map_err(|source| ProcessError::Chdir {
            dir: dir.clone(),
            source,
        })?;
    }
    for (k, v) in opts.env.iter().filter_map(|p| p.split_once('=')) {
        std::env::set_var(k, v);
    }
    for key in &opts.unenv {
        std::env::remove_var(key);
    }
    Ok(())
}

/// An octal umask such as `022` or `0027`.
pub fn parse_umask(s: &str) -> Result<libc::mode_t, ProcessError> {
    match libc::mode_t::from_str_radix(s.trim(), 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(ProcessError::BadUmask {
            value: s.to_string(),
        }),
    }
}

/// Detaches into the background: fork (the parent exits 0), a new session, fork again (so the
/// daemon can never get a controlling terminal), stdin on /dev/null. Must run while the process
/// has a single thread. Under a parent emperor (`UWSGI_EMPEROR_FD` set) it does nothing, as in
/// uWSGI: that emperor supervises this process and must keep it as its child.
pub fn daemonize() -> Result<(), ProcessError> {
    if std::env::var_os("UWSGI_EMPEROR_FD").is_some() {
        return Ok(());
    }
    for round in 0..2 {
        // SAFETY: called from main before any thread exists (the caller's contract); the child
        // continues with a copy of this single-threaded process, the parent only calls _exit.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Parent { .. }) => {
                // SAFETY: _exit ends this process at once, without running atexit handlers or
                // flushing stdio buffers that the child also holds.
                unsafe { libc::_exit(0) }
            }
            Ok(nix::unistd::ForkResult::Child) => {}
            Err(source) => {
                return Err(ProcessError::DaemonizeCall {
                    call: "fork",
                    source,
                })
            }
        }
        if round == 0 {
            nix::unistd::setsid().map_err(|source| ProcessError::DaemonizeCall {
                call: "setsid",
                source,
            })?;
        }
    }
    let null = OpenOptions::new()
        .read(true)
        .open("/dev/null")
        .map_err(|source| ProcessError::DaemonizeStdin {
            step: "cannot open /dev/null",
            source,
        })?;
    redirect(&null, 0).map_err(|source| ProcessError::DaemonizeStdin {
        step: "stdin to /dev/null",
        source,
    })
}

/// Appends stdout and stderr (so the emperor's log, and the output of every vassal, which
/// inherits them) to `path`, created with mode 0640 if missing.
pub fn log_to(path: &Path) -> Result<(), ProcessError> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(|source| ProcessError::LogOpen {
            path: path.to_path_buf(),
            source,
        })?;
    for fd in [1, 2] {
        redirect(&file, fd).map_err(|source| ProcessError::LogDup {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// Makes `fd` (0, 1 or 2) a copy of `file`, inheritable by children.
fn redirect(file: &std::fs::File, fd: i32) -> std::io::Result<()> {
    // SAFETY: dup2 only changes the fd table; both fds are valid. The new fd is not CLOEXEC,
    // on purpose: standard streams are meant for the vassals too.
    if unsafe { libc::dup2(file.as_raw_fd(), fd) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Writes this process's pid to `path` (`pidfile`, `pidfile2`).
pub fn write_pidfile(path: &Path, key: &str) -> Result<(), ProcessError> {
    std::fs::write(path, format!("{}\n", std::process::id())).map_err(|source| {
        ProcessError::Pidfile {
            path: path.to_path_buf(),
            key: key.to_string(),
            source,
        }
    })
}

#[cfg(test)]
mod tests;
