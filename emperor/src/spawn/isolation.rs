//! Per-vassal isolation applied in the spawn child, between `clone` and `execve`:
//! namespaces (`--emperor-use-clone`), the capability bounding set (`--emperor-cap`) and the
//! credentials of tyrant mode (see [`crate::spawn::creds`]).
//!
//! Everything is decided and allocated in the emperor; [`apply_in_child`] only makes raw
//! syscalls (no libc wrappers that could take locks or broadcast to other threads: glibc's
//! `setuid` would signal every thread of the process it believes it is in, and the spawn child
//! shares the emperor's memory).

use std::io;

/// Linux capability names (without the `cap_` prefix) and numbers.
pub const CAPS: [(&str, u32); 41] = [
    ("chown", 0),
    ("dac_override", 1),
    ("dac_read_search", 2),
    ("fowner", 3),
    ("fsetid", 4),
    ("kill", 5),
    ("setgid", 6),
    ("setuid", 7),
    ("setpcap", 8),
    ("linux_immutable", 9),
    ("net_bind_service", 10),
    ("net_broadcast", 11),
    ("net_admin", 12),
    ("net_raw", 13),
    ("ipc_lock", 14),
    ("ipc_owner", 15),
    ("sys_module", 16),
    ("sys_rawio", 17),
    ("sys_chroot", 18),
    ("sys_ptrace", 19),
    ("sys_pacct", 20),
    ("sys_admin", 21),
    ("sys_boot", 22),
    ("sys_nice", 23),
    ("sys_resource", 24),
    ("sys_time", 25),
    ("sys_tty_config", 26),
    ("mknod", 27),
    ("lease", 28),
    ("audit_write", 29),
    ("audit_control", 30),
    ("setfcap", 31),
    ("mac_override", 32),
    ("mac_admin", 33),
    ("syslog", 34),
    ("wake_alarm", 35),
    ("block_suspend", 36),
    ("audit_read", 37),
    ("perfmon", 38),
    ("bpf", 39),
    ("checkpoint_restore", 40),
];

/// `CAP_SETPCAP`: needed to drop bounding-set capabilities, so it is dropped last.
pub const CAP_SETPCAP: u32 = 8;

/// Parses an `--emperor-cap` list: names with or without `cap_` (any case) or numbers,
/// separated by commas or spaces. Unknown names are an error naming them.
pub fn parse_caps(s: &str) -> Result<Vec<u32>, IsolationError> {
    let mut out = Vec::new();
    for word in s.split([',', ' ']).map(str::trim).filter(|w| !w.is_empty()) {
        let lower = word.to_ascii_lowercase();
        let bare = lower.strip_prefix("cap_").unwrap_or(&lower);
        let cap = match bare.parse::<u32>() {
            Ok(n) if n <= 63 => n,
            _ => CAPS
                .iter()
                .find(|(n, _)| *n == bare)
                .map(|(_, c)| *c)
                .ok_or_else(|| IsolationError::UnknownCap {
                    word: word.to_string(),
                })?,
        };
        if !out.contains(&cap) {
            out.push(cap);
        }
    }
    Ok(out)
}

/// The capabilities to drop from the bounding set so only `keep` remain (`0..=last_cap`),
/// with `CAP_SETPCAP` last (dropping it from the bounding set does not remove it from the
/// effective set, so the drops after it would still work, but last is the obvious order).
pub fn caps_to_drop(keep: &[u32], last_cap: u32) -> Vec<u32> {
    let mut drop: Vec<u32> = (0..=last_cap)
        .filter(|c| !keep.contains(c) && *c != CAP_SETPCAP)
        .collect();
    if !keep.contains(&CAP_SETPCAP) && CAP_SETPCAP <= last_cap {
        drop.push(CAP_SETPCAP);
    }
    drop
}

/// The kernel's highest capability number (`/proc/sys/kernel/cap_last_cap`), 40 if unreadable.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// The bounding-set mask (as in `/proc/PID/status` `CapBnd`) that `keep` leaves.
pub fn mask_of(keep: &[u32]) -> u64 {
    keep.iter().filter(|c| **c < 64).fold(0, |m, c| m | 1 << c)
}

/// `--emperor-use-clone` flags: uWSGI's names and what each adds to `clone(2)`.
const CLONE_NAMES: [(&str, libc::c_int); 9] = [
    ("fs", libc::CLONE_NEWNS),
    ("ns", libc::CLONE_NEWNS),
    ("mount", libc::CLONE_NEWNS),
    ("mnt", libc::CLONE_NEWNS),
    ("net", libc::CLONE_NEWNET),
    ("ipc", libc::CLONE_NEWIPC),
    ("pid", libc::CLONE_NEWPID),
    ("uts", libc::CLONE_NEWUTS),
    ("cgroup", libc::CLONE_NEWCGROUP),
];

/// `--emperor-use-clone` flags that are refused, and why.
const REFUSED_CLONE: [(&str, &str); 3] = [
    ("files", "the spawn child would share the emperor's fd table and close its descriptors"),
    ("parent", "the vassal would be the child of the emperor's parent, so the emperor could not reap it"),
    ("user", "a user namespace needs uid/gid maps written by the emperor while the child waits, which this spawn path cannot do; use tyrant mode (--emperor-tyrant) to run vassals unprivileged"),
];

/// A bad `--emperor-cap` or `--emperor-use-clone` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IsolationError {
    /// A capability name that is not known.
    #[error("unknown capability `{word}` in --emperor-cap (known: {})", CAPS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(","))]
    UnknownCap {
        /// The word as given.
        word: String,
    },
    /// A clone flag that is not known.
    #[error("unknown --emperor-use-clone flag `{word}` (known: fs|ns|mount|mnt, net, ipc, pid, uts, cgroup, sysvsem, io)")]
    UnknownClone {
        /// The word as given.
        word: String,
    },
    /// A clone flag this spawn path cannot honour.
    #[error("--emperor-use-clone={flag} is not supported: {why}")]
    CloneRefused {
        /// The flag.
        flag: &'static str,
        /// Why, and what to do instead.
        why: &'static str,
    },
}

/// Parsed `--emperor-use-clone`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CloneSpec {
    /// Extra `clone(2)` flags.
    pub flags: libc::c_int,
    /// The names as given (for error messages).
    pub names: Vec<String>,
}

/// Parses a comma list of `--emperor-use-clone` flags. `sysvsem` and `io` are accepted
/// (harmless); `files`, `parent` and `user` are refused with the reason.
pub fn parse_clone(s: &str) -> Result<CloneSpec, IsolationError> {
    let mut spec = CloneSpec::default();
    for word in s.split([',', ' ']).map(str::trim).filter(|w| !w.is_empty()) {
        let lower = word.to_ascii_lowercase();
        let flag = match lower.as_str() {
            "sysvsem" => libc::CLONE_SYSVSEM,
            "io" => libc::CLONE_IO,
            other => {
                if let Some((flag, why)) = REFUSED_CLONE.iter().find(|(n, _)| *n == other) {
                    return Err(IsolationError::CloneRefused { flag, why });
                }
                CLONE_NAMES
                    .iter()
                    .find(|(n, _)| *n == other)
                    .map(|(_, f)| *f)
                    .ok_or_else(|| IsolationError::UnknownClone {
                        word: word.to_string(),
                    })?
            }
        };
        spec.flags |= flag;
        spec.names.push(lower);
    }
    Ok(spec)
}

/// Credentials a vassal switches to (tyrant mode).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Creds {
    /// Real, effective and saved uid.
    pub uid: u32,
    /// Real, effective and saved gid.
    pub gid: u32,
    /// Supplementary groups (empty: none, i.e. `setgroups(0)`).
    pub groups: Vec<libc::gid_t>,
}

/// What the spawn child does before exec, all prepared in the emperor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChildSetup {
    /// Extra `clone(2)` flags (namespaces).
    pub clone_flags: libc::c_int,
    /// The `--emperor-use-clone` names, for messages.
    pub clone_names: String,
    /// Capabilities to drop from the bounding set, in order.
    pub cap_drop: Vec<u32>,
    /// Switch to these credentials.
    pub creds: Option<Creds>,
    /// An open `cgroup.procs` (CLOEXEC) the child joins first (see [`crate::spawn::cgroup`]). Not
    /// isolation proper: launchers that cannot apply it ignore it and the runtime moves the
    /// process afterwards.
    pub cgroup_procs: Option<std::os::fd::RawFd>,
}

impl ChildSetup {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.clone_flags == 0 && self.cap_drop.is_empty() && self.creds.is_none()
    }
}

/// Child stages reported back to the emperor (the spawn path's own stages are below 10).
pub const STAGE_MOUNT: i32 = 10;
/// Dropping a bounding-set capability failed.
pub const STAGE_CAP: i32 = 11;
/// `setresgid` failed.
pub const STAGE_SETGID: i32 = 12;
/// `setgroups` failed.
pub const STAGE_SETGROUPS: i32 = 13;
/// `setresuid` failed.
pub const STAGE_SETUID: i32 = 14;

/// Applies `setup` in the spawn child. Returns `(stage, errno)` on failure.
///
/// # Safety
/// Only for the spawn child between `clone` and `execve`: it changes the calling task's
/// mounts, capabilities and credentials. It makes raw syscalls only (async-signal-safe, no
/// allocation) on memory `setup` owns.
pub unsafe fn apply_in_child(setup: &ChildSetup) -> Result<(), (i32, i32)> {
    // SAFETY: reading errno of the calling task.
    let errno = || unsafe { *libc::__errno_location() };
    if setup.clone_flags & libc::CLONE_NEWNS != 0 {
        // A private copy: mounts made by the vassal must not propagate back to the host.
        // SAFETY: raw mount(2) with static NUL-terminated strings and null data.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount,
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null::<libc::c_char>(),
                (libc::MS_REC | libc::MS_PRIVATE) as libc::c_ulong,
                std::ptr::null::<libc::c_void>(),
            )
        };
        if r != 0 {
            return Err((STAGE_MOUNT, errno()));
        }
    }
    for &cap in &setup.cap_drop {
        // SAFETY: raw prctl(2) with integer arguments only.
        let r = unsafe {
            libc::syscall(
                libc::SYS_prctl,
                libc::PR_CAPBSET_DROP as libc::c_ulong,
                cap as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        // EINVAL: the kernel does not know that capability; nothing to drop.
        if r != 0 && errno() != libc::EINVAL {
            return Err((STAGE_CAP, errno()));
        }
    }
    if let Some(c) = &setup.creds {
        // SAFETY: raw setresgid/setgroups/setresuid on the calling task only; the group list
        // is a live slice owned by `setup`.
        unsafe {
            if libc::syscall(libc::SYS_setresgid, c.gid, c.gid, c.gid) != 0 {
                return Err((STAGE_SETGID, errno()));
            }
            if libc::syscall(libc::SYS_setgroups, c.groups.len(), c.groups.as_ptr()) != 0 {
                return Err((STAGE_SETGROUPS, errno()));
            }
            if libc::syscall(libc::SYS_setresuid, c.uid, c.uid, c.uid) != 0 {
                return Err((STAGE_SETUID, errno()));
            }
        }
    }
    Ok(())
}

/// True for the stages of [`apply_in_child`].
pub fn is_setup_stage(stage: i32) -> bool {
    (STAGE_MOUNT..=STAGE_SETUID).contains(&stage)
}

/// A failed stage of [`apply_in_child`], or of `clone(2)` with namespace flags: what failed,
/// why, what to do.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `clone(2)` with `--emperor-use-clone` flags failed.
    #[error("clone() with --emperor-use-clone={names} failed: {err}; creating namespaces needs root (CAP_SYS_ADMIN) in a context that allows them (a container or sandbox may forbid it), or remove the flags")]
    Clone {
        /// The `--emperor-use-clone` names.
        names: String,
        /// The error.
        err: io::Error,
    },
    /// The new mount namespace could not be made private.
    #[error("cannot make the vassal's mount namespace private (--emperor-use-clone={names}): {err}; the emperor needs CAP_SYS_ADMIN")]
    Mount {
        /// The `--emperor-use-clone` names.
        names: String,
        /// The error.
        err: io::Error,
    },
    /// A capability could not be dropped from the bounding set.
    #[error("cannot drop capabilities from the bounding set (--emperor-cap): {err}; the emperor needs CAP_SETPCAP (run it as root) or drop the option")]
    CapDrop {
        /// The error.
        err: io::Error,
    },
    /// The tyrant credentials could not be taken.
    #[error("tyrant mode cannot switch to uid {uid} gid {gid} ({call}: {err}); the emperor must run as root (CAP_SETUID/CAP_SETGID)")]
    Creds {
        /// The syscall that failed (`setresgid`, `setgroups`, `setresuid`).
        call: &'static str,
        /// The uid asked for.
        uid: u32,
        /// The gid asked for.
        gid: u32,
        /// The error.
        err: io::Error,
    },
    /// Another stage failed.
    #[error("vassal setup failed: {err}")]
    Other {
        /// The error.
        err: io::Error,
    },
}

impl SetupError {
    /// The error of a failed stage of [`apply_in_child`] (`stage`, `errno`) for `setup`.
    pub fn of_stage(stage: i32, errno: i32, setup: &ChildSetup) -> SetupError {
        let err = io::Error::from_raw_os_error(errno);
        let names = || setup.clone_names.clone();
        match stage {
            STAGE_MOUNT => SetupError::Mount {
                names: names(),
                err,
            },
            STAGE_CAP => SetupError::CapDrop { err },
            STAGE_SETGID | STAGE_SETGROUPS | STAGE_SETUID => {
                let call = match stage {
                    STAGE_SETGID => "setresgid",
                    STAGE_SETGROUPS => "setgroups",
                    _ => "setresuid",
                };
                let (uid, gid) = setup
                    .creds
                    .as_ref()
                    .map(|c| (c.uid, c.gid))
                    .unwrap_or_default();
                SetupError::Creds {
                    call,
                    uid,
                    gid,
                    err,
                }
            }
            _ => SetupError::Other { err },
        }
    }

    /// The error of `clone(2)` failing with `setup`'s namespace flags.
    pub fn clone_failed(err: io::Error, setup: &ChildSetup) -> SetupError {
        SetupError::Clone {
            names: setup.clone_names.clone(),
            err,
        }
    }

    /// The OS error underneath.
    pub fn os_error(&self) -> &io::Error {
        match self {
            SetupError::Clone { err, .. }
            | SetupError::Mount { err, .. }
            | SetupError::CapDrop { err }
            | SetupError::Creds { err, .. }
            | SetupError::Other { err } => err,
        }
    }
}

/// The process-wide isolation settings (from the options), turned into a [`ChildSetup`] per
/// vassal together with its tyrant credentials.
#[derive(Clone, Debug, Default)]
pub struct Isolation {
    /// `--emperor-use-clone`.
    pub clone: CloneSpec,
    /// Bounding-set drops from `--emperor-cap` (empty without the option).
    pub cap_drop: Vec<u32>,
}

impl Isolation {
    /// From the option values.
    pub fn new(use_clone: Option<&str>, caps: Option<&str>) -> Result<Isolation, IsolationError> {
        let clone = match use_clone {
            Some(s) => parse_clone(s)?,
            None => CloneSpec::default(),
        };
        let cap_drop = match caps {
            Some(s) => caps_to_drop(&parse_caps(s)?, last_cap()),
            None => Vec::new(),
        };
        Ok(Isolation { clone, cap_drop })
    }

    /// The setup of one spawn.
    pub fn setup(&self, creds: Option<Creds>) -> ChildSetup {
        ChildSetup {
            clone_flags: self.clone.flags,
            clone_names: self.clone.names.join(","),
            cap_drop: self.cap_drop.clone(),
            creds,
            cgroup_procs: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_parse_names_numbers_and_reject_unknown() {
        assert_eq!(
            parse_caps("CAP_NET_BIND_SERVICE, setuid 0").unwrap(),
            vec![10, 7, 0]
        );
        let e = parse_caps("net_bind,chown").unwrap_err().to_string();
        assert!(
            e.contains("unknown capability `net_bind` in --emperor-cap (known: chown,"),
            "{e}"
        );
        assert_eq!(mask_of(&[0, 10]), 0x401);
    }

    #[test]
    fn setpcap_is_dropped_last_unless_kept() {
        let d = caps_to_drop(&[10], 40);
        assert_eq!(d.len(), 40);
        assert_eq!(*d.last().unwrap(), CAP_SETPCAP);
        assert!(!d.contains(&10));
        let d = caps_to_drop(&[CAP_SETPCAP], 40);
        assert!(!d.contains(&CAP_SETPCAP));
        assert_eq!(d.len(), 40);
    }

    #[test]
    fn clone_flags_parse_and_unsafe_ones_are_refused_with_the_reason() {
        let s = parse_clone("net,uts,ipc,pid,mount").unwrap();
        assert_eq!(
            s.flags,
            libc::CLONE_NEWNET
                | libc::CLONE_NEWUTS
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWPID
                | libc::CLONE_NEWNS
        );
        assert_eq!(parse_clone("fs").unwrap().flags, libc::CLONE_NEWNS);
        for bad in ["files", "parent", "user"] {
            let e = parse_clone(bad).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("--emperor-use-clone={bad} is not supported: ")),
                "{e}"
            );
        }
        assert!(parse_clone("bogus")
            .unwrap_err()
            .to_string()
            .contains("unknown --emperor-use-clone flag `bogus`"));
        assert!(ChildSetup::default().is_empty());
    }

    #[test]
    fn messages_say_what_to_do() {
        let setup = Isolation::new(Some("net"), None).unwrap().setup(None);
        let m =
            SetupError::clone_failed(io::Error::from_raw_os_error(libc::EPERM), &setup).to_string();
        assert!(
            m.starts_with("clone() with --emperor-use-clone=net failed: Operation not permitted")
                && m.contains("CAP_SYS_ADMIN"),
            "{m}"
        );
        let m = SetupError::of_stage(STAGE_CAP, libc::EPERM, &setup).to_string();
        assert!(m.contains("CAP_SETPCAP"), "{m}");
        let creds = Creds {
            uid: 1000,
            gid: 1001,
            groups: vec![],
        };
        let setup = Isolation::default().setup(Some(creds));
        let m = SetupError::of_stage(STAGE_SETGROUPS, libc::EPERM, &setup).to_string();
        assert!(
            m.starts_with("tyrant mode cannot switch to uid 1000 gid 1001 (setgroups: "),
            "{m}"
        );
    }
}
