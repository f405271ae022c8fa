//! The shim's private directory (`vassal-shim.<pid>.<random>` in `$XDG_RUNTIME_DIR` or
//! `/tmp`, mode 0700: the notification socket and the pushed config) and the sweep of the
//! directories that dead shims left behind.

use std::path::PathBuf;

use tracing::debug;

/// Creates this shim's private directory, first sweeping the base directory when no other
/// shim did so within [`SWEEP_EVERY`].
pub fn create() -> std::io::Result<tempfile::TempDir> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    if claim_sweep(&base, std::time::SystemTime::now(), SWEEP_EVERY) {
        remove_stale_rundirs(&base);
    }
    tempfile::Builder::new()
        .prefix(&format!("{RUNDIR_PREFIX}{}.", std::process::id()))
        .tempdir_in(&base)
}

/// Prefix of the shim's private directories: `vassal-shim.<pid>.<random>`.
const RUNDIR_PREFIX: &str = "vassal-shim.";

/// How often, at most, a starting shim sweeps the base directory for the private directories
/// of dead shims (per user and base directory). The sentinel already removes the directory of
/// a `SIGKILL`ed shim; the sweep only catches what is left when both were killed. Sweeping on
/// every start would cost each shim a `stat` per live shim, O(N²) for N shims started at once.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The directory whose mtime records the last sweep of `base` by this user: a directory, since
/// `mkdir` and the no-follow `utimensat` below never follow a symlink someone planted there.
fn sweep_marker(base: &std::path::Path) -> PathBuf {
    base.join(format!("vassal-shim-sweep.{}", nix::unistd::getuid()))
}

/// Whether this shim sweeps `base` now: yes when the marker is missing (it is created), older
/// than `every` or in the future (it is set to now); no when another shim swept less than
/// `every` ago. A marker that is not a directory of ours is ignored: every start sweeps.
fn claim_sweep(
    base: &std::path::Path,
    now: std::time::SystemTime,
    every: std::time::Duration,
) -> bool {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let marker = sweep_marker(base);
    match std::fs::symlink_metadata(&marker) {
        Ok(m) if m.is_dir() && m.uid() == nix::unistd::getuid().as_raw() => {
            let recent = m
                .modified()
                .ok()
                .is_some_and(|t| match now.duration_since(t) {
                    Ok(age) => age < every,
                    // Slightly ahead of `now` (the file system stamps with a coarser clock, a
                    // small clock step) is recent; far ahead (the clock was set back) must not
                    // stop sweeps for good.
                    Err(ahead) => ahead.duration() < every,
                });
            if recent {
                return false;
            }
            let _ = nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &marker,
                &nix::sys::time::TimeSpec::UTIME_NOW,
                &nix::sys::time::TimeSpec::UTIME_NOW,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            );
            true
        }
        Ok(_) => true,
        Err(_) => {
            let _ = std::fs::DirBuilder::new().mode(0o700).create(&marker);
            true
        }
    }
}

/// Removes the private directories of shims that are gone (killed with SIGKILL together with
/// their sentinel, they cannot clean up after themselves).
fn remove_stale_rundirs(base: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(RUNDIR_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        // Any live process with that pid counts (the shim may run under another name); a
        // reused pid only delays the cleanup.
        let owner_alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !owner_alive && e.file_type().is_ok_and(|t| t.is_dir()) {
            debug!("removing {} left by a dead shim", e.path().display());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn one_sweep_per_interval() {
        let base = tempfile::tempdir().unwrap();
        let t = SystemTime::now();
        assert!(claim_sweep(base.path(), t, MIN), "no marker yet: sweep");
        assert!(
            sweep_marker(base.path()).is_dir(),
            "the first sweep leaves a marker"
        );
        assert!(!claim_sweep(base.path(), t, MIN), "swept just now");
        // `t` was read before the marker was stamped: the marker may be a little ahead of it.
        assert!(
            !claim_sweep(base.path(), t - Duration::from_millis(20), MIN),
            "a marker slightly ahead of now is recent"
        );
        assert!(
            !claim_sweep(base.path(), t + MIN / 2, MIN),
            "within the interval"
        );
        assert!(claim_sweep(base.path(), t + MIN * 2, MIN), "interval over");
        // The claim set the marker to now (the real clock), so the next call is recent again.
        assert!(!claim_sweep(base.path(), SystemTime::now(), MIN));
        // A marker from the future (clock set back) does not stop sweeps for good.
        assert!(claim_sweep(base.path(), t - MIN * 10, MIN));
    }

    #[test]
    fn a_marker_that_is_not_our_directory_means_sweep_every_time() {
        let base = tempfile::tempdir().unwrap();
        let target = base.path().join("target");
        std::fs::create_dir(&target).unwrap();
        std::os::unix::fs::symlink(&target, sweep_marker(base.path())).unwrap();
        let before = std::fs::metadata(&target).unwrap().modified().unwrap();
        let t = SystemTime::now();
        assert!(claim_sweep(base.path(), t, MIN));
        assert!(claim_sweep(base.path(), t, MIN));
        let after = std::fs::metadata(&target).unwrap().modified().unwrap();
        assert_eq!(before, after, "the symlink's target is never touched");
        std::fs::remove_file(sweep_marker(base.path())).unwrap();
        std::fs::write(sweep_marker(base.path()), "").unwrap();
        assert!(claim_sweep(base.path(), t, MIN));
        assert!(claim_sweep(base.path(), t, MIN));
    }

    #[test]
    fn sweep_removes_only_directories_of_dead_shims() {
        let base = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let gone = base.path().join(format!("{RUNDIR_PREFIX}{dead}.abc"));
        let live = base
            .path()
            .join(format!("{RUNDIR_PREFIX}{}.abc", std::process::id()));
        let other = base.path().join("unrelated.1");
        for d in [&gone, &live, &other] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("notify.sock"), "").unwrap();
        }
        std::fs::create_dir(sweep_marker(base.path())).unwrap();
        remove_stale_rundirs(base.path());
        assert!(!gone.exists(), "the dead shim's directory is removed");
        assert!(live.exists() && other.exists());
        assert!(
            sweep_marker(base.path()).is_dir(),
            "the marker is not a shim's directory"
        );
    }
}
