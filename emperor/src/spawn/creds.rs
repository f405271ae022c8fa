//! Tyrant mode (`--emperor-tyrant`): every vassal runs as the owner (uid and gid) of its config
//! file. A file owned by root (uid 0 or gid 0) is refused: a vassal never runs as root this
//! way. The lifecycle rules (refusal and its message, an owner change stops the vassal) live in
//! [`crate::core`]; this module has the credential lookup, which happens in the emperor before
//! the spawn (the child only calls `setresgid`/`setgroups`/`setresuid`, see
//! [`crate::spawn::isolation::apply_in_child`]).

use std::ffi::CString;

use crate::spawn::isolation::Creds;

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

#[cfg(test)]
mod tests {
    use super::*;

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
