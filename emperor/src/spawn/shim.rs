//! Shim vassals: an `.ini` vassal whose file has a `[vassal-shim]` section is started as
//! `vassal-shim --ini NAME` (the `vassal-shim` binary beside the emperor's, else from `PATH`)
//! instead of uWSGI; every other vassal runs as uWSGI. So one directory mixes uWSGI apps and
//! plain programs, and only the uWSGI ones need uWSGI installed.

use std::ffi::OsStr;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use crate::monitor::{read_config_head, ConfigError};
use crate::sanitize::esc_path;
use crate::spawn::{resolve, Exec};

/// The shim's binary name.
pub const SHIM: &str = "vassal-shim";

/// Why a shim vassal cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// The vassal file (or what its symlink points to) is not a regular file.
    #[error("{}: {err}", esc_path(path))]
    NotRegular {
        /// The vassal file.
        path: PathBuf,
        /// What it is instead.
        err: ConfigError,
    },
    /// The shim binary is neither beside the emperor nor on `PATH`.
    #[error("the vassal has a [vassal-shim] section but `{SHIM}` is neither beside the emperor ({dir}) nor on PATH; \
             build it (`cargo build --release -p vassal-shim`) and put it next to the emperor binary or on PATH")]
    Missing {
        /// The emperor's directory (`?` when unknown).
        dir: String,
    },
}

/// True when the ini text has a `[vassal-shim]` section (or `[vassal-shim:...]`).
pub fn has_shim_section<R: BufRead>(r: R) -> bool {
    r.lines().map_while(Result::ok).any(|l| {
        let l = l.trim();
        l.strip_prefix('[')
            .and_then(|l| l.strip_suffix(']'))
            .map(|s| {
                let s = s.trim();
                s == SHIM || s.starts_with("vassal-shim:")
            })
            .unwrap_or(false)
    })
}

/// True when the vassal file at `path` (named `name`) is an ini file with a shim section.
pub fn is_shim_vassal(name: &str, path: &Path) -> bool {
    shim_section(name, path).unwrap_or(false)
}

/// Whether the vassal file at `path` (named `name`) is an ini file with a shim section in its
/// first [`MAX_CONFIG`](crate::monitor::MAX_CONFIG) bytes. Read without blocking and bounded ([`read_config_head`]); a file
/// that is not a regular file is an error saying so (a FIFO or a device put behind a config
/// must not freeze the emperor), one that cannot be read is left to uWSGI to report.
pub fn shim_section(name: &str, path: &Path) -> Result<bool, ShimError> {
    // A zerg (`app.ini:zerg`) is a shim vassal when its base file is.
    let base = name.split_once(':').map_or(name, |(b, _)| b);
    if !base.ends_with(".ini") {
        return Ok(false);
    }
    match read_config_head(path) {
        Ok((head, _)) => Ok(has_shim_section(&head[..])),
        Err(err @ ConfigError::NotRegular(_)) => Err(ShimError::NotRegular {
            path: path.to_path_buf(),
            err,
        }),
        Err(_) => Ok(false),
    }
}

/// The shim binary: beside `exe` (the emperor's own binary), else on `path`.
pub fn find_shim(exe: Option<&Path>, path: Option<&OsStr>, cwd: &Path) -> Option<PathBuf> {
    if let Some(dir) = exe.and_then(Path::parent) {
        let p = dir.join(SHIM);
        if std::fs::metadata(&p).map(|m| m.is_file()).unwrap_or(false) {
            return Some(p);
        }
    }
    resolve(SHIM, path, cwd)
}

/// How to get the shim when it is missing.
pub fn missing(exe: Option<&Path>) -> ShimError {
    ShimError::Missing {
        dir: exe
            .and_then(Path::parent)
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "?".into()),
    }
}

/// The shim's argv for vassal `name`.
pub fn argv(shim: &Path, name: &str) -> Vec<String> {
    vec![shim.display().to_string(), "--ini".into(), name.to_string()]
}

/// For a shim vassal (file `key`, named `name`, not a pushed config): the programs to try (the
/// shim) and the argv to run instead of uWSGI, or why it cannot run. `None` for uWSGI vassals.
/// `exe` is the emperor's own binary (the shim is looked for beside it first).
pub fn plan_for(
    name: &str,
    key: &str,
    pushed: bool,
    exe: Option<&Path>,
    path: Option<&OsStr>,
    cwd: &Path,
) -> Option<Result<Exec, ShimError>> {
    if pushed {
        return None;
    }
    match shim_section(name, Path::new(key)) {
        Ok(false) => return None,
        Ok(true) => {}
        Err(e) => return Some(Err(e)),
    }
    Some(match find_shim(exe, path, cwd) {
        Some(shim) => {
            let argv = argv(&shim, name);
            Ok((vec![shim], argv))
        }
        None => Err(missing(exe)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::MAX_CONFIG;

    #[test]
    fn section_detection() {
        assert!(has_shim_section(&b"; c\n[vassal-shim]\nexec = x\n"[..]));
        assert!(has_shim_section(&b"[uwsgi]\n[ vassal-shim:zerg ]\n"[..]));
        assert!(!has_shim_section(&b"[uwsgi]\nvassal-shim = 1\n"[..]));
        assert!(!has_shim_section(&b"[vassal-shimmy]\n"[..]));
        assert!(!has_shim_section(&b"\xff\xfe[\n"[..]));
    }

    #[test]
    fn only_ini_files_are_shim_vassals() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.yml");
        std::fs::write(&p, "[vassal-shim]\n").unwrap();
        assert!(!is_shim_vassal("a.yml", &p));
        let p = d.path().join("a.ini");
        std::fs::write(&p, "[vassal-shim]\nexec = sleep 1\n").unwrap();
        assert!(is_shim_vassal("a.ini", &p));
        assert!(is_shim_vassal("a.ini:zerg", &p));
        assert!(!is_shim_vassal("b.ini", &d.path().join("b.ini")));
    }

    /// Runs `f` on another thread and fails (instead of hanging) if it blocks.
    fn within_10s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("reading the config blocked")
    }

    #[test]
    fn a_fifo_or_device_behind_a_config_is_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let link = d.path().join("x.ini");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        let l = link.clone();
        let r = within_10s(move || {
            plan_for(
                "x.ini",
                l.to_str().unwrap(),
                false,
                None,
                None,
                Path::new("/"),
            )
        });
        let e = r.unwrap().unwrap_err().to_string();
        assert!(e.contains("a FIFO, not a regular file"), "{e}");
        assert!(e.contains("x.ini"), "{e}");
        let zero = d.path().join("zero.ini");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let e = within_10s(move || shim_section("zero.ini", &zero))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a character device"), "{e}");
        // A directory named like a config, too.
        std::fs::create_dir(d.path().join("dir.ini")).unwrap();
        assert!(shim_section("dir.ini", &d.path().join("dir.ini"))
            .unwrap_err()
            .to_string()
            .contains("a directory"));
    }

    #[test]
    fn a_huge_config_is_read_only_up_to_the_limit() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("big.ini");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(1 << 30).unwrap();
        let (head, longer) = read_config_head(&p).unwrap();
        assert_eq!((head.len(), longer), (MAX_CONFIG, true));
        assert_eq!(head.capacity(), MAX_CONFIG + 1);
        assert!(!shim_section("big.ini", &p).unwrap());
        // A shim section within the limit is found; one after it is not.
        let mut text = b"[vassal-shim]\nexec = sleep 1\n".to_vec();
        text.resize(MAX_CONFIG * 2, b'#');
        std::fs::write(&p, &text).unwrap();
        assert!(shim_section("big.ini", &p).unwrap());
        let mut text = vec![b'#'; MAX_CONFIG];
        text.extend_from_slice(b"\n[vassal-shim]\n");
        std::fs::write(&p, &text).unwrap();
        assert!(!shim_section("big.ini", &p).unwrap());
        // Missing: uWSGI reports it.
        assert!(!shim_section("nope.ini", &d.path().join("nope.ini")).unwrap());
    }

    #[test]
    fn shim_beside_the_emperor_wins() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(SHIM), "").unwrap();
        let exe = d.path().join("emperor");
        assert_eq!(
            find_shim(Some(&exe), None, d.path()),
            Some(d.path().join(SHIM))
        );
        assert_eq!(find_shim(None, None, d.path()), None);
        let m = missing(Some(&exe)).to_string();
        assert!(
            m.contains(&format!(
                "neither beside the emperor ({}) nor on PATH; build it (`cargo build",
                d.path().display()
            )),
            "{m}"
        );
    }
}
