//! Tyrant mode (`--emperor-tyrant`): every vassal runs as the owner (uid and gid) of its config
//! file. A file owned by root (uid 0 or gid 0) is refused: a vassal never runs as root this
//! way. The lifecycle rules (refusal, an owner change stops the vassal) live in the core; this
//! module has the messages and the credential lookup, which happens in the emperor before the
//! spawn (the child only calls `setresgid`/`setgroups`/`setresuid`, see
//! [`crate::spawn::isolation::apply_in_child`]).

use std::ffi::CString;

use crate::spawn::isolation::Creds;

/// True when tyrant mode must refuse a file with this owner.
pub fn is_root_owned(uid: u32, gid: u32) -> bool {
    uid == 0 || gid == 0
}

/// Why a root-owned file is refused, and what to do.
pub fn refusal(name: &str, key: &str, uid: u32, gid: u32) -> String {
    let whose = match (uid, gid) {
        (0, 0) => "user root and group root".to_string(),
        (0, g) => format!("user root (uid 0, gid {g})"),
        (u, _) => format!("group root (uid {u}, gid 0)"),
    };
    format!(
        "tyrant mode refuses vassal {name}: {key} is owned by {whose}, and a vassal must never run as root; \
         chown it to the app's user and group (e.g. `chown app:app {key}`) and it starts by itself"
    )
}

/// Why the supplementary groups of a tyrant vassal could not be found
/// (`--emperor-tyrant-initgroups`).
#[derive(Debug, thiserror::Error)]
pub enum CredsError {
    /// The user database could not be asked.
    #[error("cannot look up uid {uid} for --emperor-tyrant-initgroups: {err}")]
    Lookup {
        /// The uid.
        uid: u32,
        /// The error.
        err: nix::Error,
    },
    /// The uid has no user entry.
    #[error("uid {uid} has no user entry, so --emperor-tyrant-initgroups cannot find its groups; create the user or drop the option")]
    NoUser {
        /// The uid.
        uid: u32,
    },
    /// The user name has a NUL byte.
    #[error("user name has a NUL")]
    Nul,
    /// `getgrouplist` failed.
    #[error("cannot list the groups of {user}: {err}")]
    Groups {
        /// The user name.
        user: String,
        /// The error.
        err: nix::Error,
    },
}

/// The credentials of a vassal whose file is owned by `uid`:`gid`: no supplementary groups,
/// or with `initgroups` the groups of the user `uid` names (plus `gid`), looked up now, in the
/// emperor (NSS is not async-signal-safe).
pub fn creds(uid: u32, gid: u32, initgroups: bool) -> Result<Creds, CredsError> {
    let groups = if initgroups {
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .map_err(|err| CredsError::Lookup { uid, err })?
            .ok_or(CredsError::NoUser { uid })?;
        let name = CString::new(user.name.clone()).map_err(|_| CredsError::Nul)?;
        nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(gid))
            .map_err(|err| CredsError::Groups {
                user: user.name.clone(),
                err,
            })?
            .into_iter()
            .map(|g| g.as_raw())
            .collect()
    } else {
        Vec::new()
    };
    Ok(Creds { uid, gid, groups })
}

/// The credentials of the vassal of incarnation `inc` when the core is in tyrant mode
/// (`Ok(None)` otherwise).
pub fn creds_for(
    core: &crate::core::Core,
    inc: crate::core::Inc,
    initgroups: bool,
) -> Result<Option<Creds>, String> {
    if !core.tyrant() {
        return Ok(None);
    }
    let v = core
        .vassal_by_inc(inc)
        .ok_or_else(|| "the vassal record is gone".to_string())?;
    if is_root_owned(v.uid, v.gid) {
        return Err(refusal(&v.name, &v.key, v.uid, v.gid));
    }
    creds(v.uid, v.gid, initgroups)
        .map(Some)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_owned_means_uid_or_gid_zero() {
        assert!(is_root_owned(0, 1000));
        assert!(is_root_owned(1000, 0));
        assert!(!is_root_owned(1000, 1000));
    }

    #[test]
    fn refusal_names_the_file_and_the_fix() {
        let m = refusal("app.ini", "/v/app.ini", 1000, 0);
        assert!(m.contains("group root"), "{m}");
        assert!(m.contains("chown app:app /v/app.ini"), "{m}");
    }

    #[test]
    fn creds_without_initgroups_have_no_groups() {
        assert_eq!(
            creds(4242, 4343, false).unwrap(),
            Creds {
                uid: 4242,
                gid: 4343,
                groups: vec![]
            }
        );
        // uid 0 always exists; its group list contains the gid asked for.
        let c = creds(0, 0, true).unwrap();
        assert!(c.groups.contains(&0));
        let e = creds(4_000_000_001, 1, true).unwrap_err();
        assert!(
            matches!(e, CredsError::NoUser { uid: 4_000_000_001 }),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("uid 4000000001 has no user entry"),
            "{e}"
        );
    }
}
