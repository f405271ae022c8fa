//! Why a spawn failed: each variant says what failed, on which path, and what to do.

use std::io;
use std::path::PathBuf;

use crate::spawn::isolation::SetupError;

/// How to get uWSGI when it is missing.
pub const INSTALL_HINT: &str = "install uWSGI with its Python 3 plugin (Debian/Ubuntu: `apt-get install uwsgi-core uwsgi-plugin-python3`; \
     elsewhere: `pip install uwsgi`), or point --emperor-wrapper at a uwsgi binary";

/// Why a spawn failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// No program could be found.
    #[error("`{program}` was not found on PATH ({}); {INSTALL_HINT}", std::env::var("PATH").unwrap_or_default())]
    NotFound {
        /// What was looked for.
        program: String,
    },
    /// A syscall in the parent failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The child could not chdir into its directory.
    #[error("cannot chdir into {}: {err}", dir.display())]
    Chdir {
        /// The directory.
        dir: PathBuf,
        /// The error.
        err: io::Error,
    },
    /// Every exec attempt failed.
    #[error("cannot execute {}: {err}", program.display())]
    Exec {
        /// The last program tried.
        program: PathBuf,
        /// The error.
        err: io::Error,
    },
    /// A string contained a NUL byte.
    #[error("argv or environment contains a NUL byte")]
    Nul,
    /// The child could not join the cgroup the process tree made for it.
    #[error("cannot join the vassal's cgroup: {0}; pass --emperor-process-tree=pgroup if cgroups cannot be used here")]
    Cgroup(io::Error),
    /// The child could not make its cgroup namespace (after joining its cgroup).
    #[error("cannot create the vassal's cgroup namespace (--emperor-use-clone={names}): {err}; the emperor needs CAP_SYS_ADMIN")]
    CgroupNs {
        /// The `--emperor-use-clone` names.
        names: String,
        /// The error.
        err: io::Error,
    },
    /// The child could not give itself a private fd table.
    #[error("cannot give the child its own file descriptor table: {0}")]
    Files(io::Error),
    /// `clone(2)` with namespace flags, or a step of the child's isolation, failed.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// A launcher's own failure (the fork server's, for one), with its message.
    #[error(transparent)]
    Launcher(Box<dyn std::error::Error + Send + Sync>),
}

impl SpawnError {
    /// The OS error underneath, when there is one.
    pub fn os_error(&self) -> Option<&io::Error> {
        match self {
            SpawnError::Io(err)
            | SpawnError::Chdir { err, .. }
            | SpawnError::Exec { err, .. }
            | SpawnError::Cgroup(err)
            | SpawnError::CgroupNs { err, .. }
            | SpawnError::Files(err) => Some(err),
            SpawnError::Setup(e) => Some(e.os_error()),
            SpawnError::NotFound { .. } | SpawnError::Nul | SpawnError::Launcher(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_what_failed_and_what_to_do() {
        let e = SpawnError::NotFound {
            program: "uwsgi".into(),
        };
        assert!(e.to_string().starts_with("`uwsgi` was not found on PATH ("));
        assert!(e.to_string().ends_with(INSTALL_HINT));
        let eperm = || io::Error::from_raw_os_error(libc::EPERM);
        let e = SpawnError::Cgroup(eperm());
        assert!(
            e.to_string()
                .contains("--emperor-process-tree=pgroup if cgroups cannot be used"),
            "{e}"
        );
        let e = SpawnError::CgroupNs {
            names: "cgroup".into(),
            err: eperm(),
        };
        assert!(
            e.to_string().contains("(--emperor-use-clone=cgroup)"),
            "{e}"
        );
        assert_eq!(e.os_error().unwrap().raw_os_error(), Some(libc::EPERM));
        let e = SpawnError::Launcher(Box::new(io::Error::other("the fork server is busy")));
        assert_eq!(e.to_string(), "the fork server is busy");
        assert!(e.os_error().is_none());
    }
}
