//! Shim vassals: an `.ini` vassal whose file has a `[vassal-shim]` section is started as
//! `vassal-shim --ini NAME` (the `vassal-shim` binary beside the emperor's, else from `PATH`)
//! instead of uWSGI; every other vassal runs as uWSGI. So one directory mixes uWSGI apps and
//! plain programs, and only the uWSGI ones need uWSGI installed.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::spawn::{resolve, Exec};

/// The shim's binary name.
pub const SHIM: &str = "vassal-shim";

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
    // A zerg (`app.ini:zerg`) is a shim vassal when its base file is.
    let base = name.split_once(':').map_or(name, |(b, _)| b);
    if !base.ends_with(".ini") {
        return false;
    }
    std::fs::File::open(path)
        .map(|f| has_shim_section(BufReader::new(f)))
        .unwrap_or(false)
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
pub fn missing(exe: Option<&Path>) -> String {
    format!(
        "the vassal has a [vassal-shim] section but `{SHIM}` is neither beside the emperor ({}) nor on PATH; \
         build it (`cargo build --release -p vassal-shim`) and put it next to the emperor binary or on PATH",
        exe.and_then(Path::parent)
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "?".into())
    )
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
) -> Option<Result<Exec, String>> {
    if pushed || !is_shim_vassal(name, Path::new(key)) {
        return None;
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
        assert!(missing(Some(&exe)).contains("cargo build"));
    }
}
