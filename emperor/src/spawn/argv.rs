//! The pure rules of a vassal's command line and environment: uWSGI's argv order, the
//! environment rewrite (`UWSGI_VASSAL_X` → `UWSGI_X`) and `execvp`-like program lookup.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::monitor::config_flag;

/// The argv settings shared by every vassal (uWSGI option names in comments).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArgvConfig {
    /// `emperor-wrapper`: `argv[0]`; `uwsgi` when unset.
    pub wrapper: Option<String>,
    /// `emperor-wrapper-override`: tried before `argv[0]`.
    pub overrides: Vec<String>,
    /// `emperor-wrapper-fallback`: tried after `argv[0]`.
    pub fallbacks: Vec<String>,
    /// `emperor-magic-exec`.
    pub magic_exec: bool,
    /// `emperor-extra-extension`.
    pub extra_ext: Vec<String>,
    /// `vassals-inherit-before`.
    pub inherit_before: Vec<String>,
    /// `vassals-include-before`.
    pub include_before: Vec<String>,
    /// `vassals-set` / `vassal-set`.
    pub set: Vec<String>,
    /// `vassals-inherit`.
    pub inherit: Vec<String>,
    /// `vassals-include`.
    pub include: Vec<String>,
}

impl ArgvConfig {
    /// The binary asked for as `argv[0]`.
    pub fn binary(&self) -> &str {
        self.wrapper.as_deref().unwrap_or("uwsgi")
    }
}

/// argv for vassal `name` (uWSGI's order): argv0, inherit/include-before, `--set`s, the config
/// flag and name (`exec://` for executable configs with magic exec, `emperor://` when the
/// config is pushed), inherit/include.
pub fn build_argv(
    cfg: &ArgvConfig,
    argv0: &str,
    name: &str,
    executable: bool,
    pushed: bool,
) -> Vec<String> {
    let mut a = vec![argv0.to_string()];
    for t in &cfg.inherit_before {
        a.extend(["--inherit".to_string(), t.clone()]);
    }
    for t in &cfg.include_before {
        a.extend(["--include".to_string(), t.clone()]);
    }
    for kv in &cfg.set {
        a.extend(["--set".to_string(), kv.clone()]);
    }
    // A zerg (`app.ini:zerg`, broodlord) takes the flag of its base config.
    let base = name.strip_suffix(":zerg").unwrap_or(name);
    let flag = config_flag(base, &cfg.extra_ext).unwrap_or("--inherit");
    a.push(flag.to_string());
    if cfg.magic_exec && executable {
        a.push(format!("exec://{name}"));
    } else if pushed {
        a.push(format!("emperor://{name}"));
    } else {
        a.push(name.to_string());
    }
    for t in &cfg.inherit {
        a.extend(["--inherit".to_string(), t.clone()]);
    }
    for t in &cfg.include {
        a.extend(["--include".to_string(), t.clone()]);
    }
    a
}

/// The environment every vassal starts from: the emperor's, without `UWSGI_RELOADS`,
/// `NOTIFY_SOCKET` and any inherited emperor fds, with every `UWSGI_VASSAL_X=v` turned into
/// `UWSGI_X=v` (the rewritten value wins over an existing `UWSGI_X`).
pub fn vassal_env<I>(parent: I) -> Vec<(OsString, OsString)>
where
    I: IntoIterator<Item = (OsString, OsString)>,
{
    const DROP: [&str; 5] = [
        "UWSGI_RELOADS",
        "NOTIFY_SOCKET",
        "UWSGI_EMPEROR_FD",
        "UWSGI_EMPEROR_FD_CONFIG",
        "UWSGI_BROODLORD_NUM",
    ];
    let mut plain: Vec<(OsString, OsString)> = Vec::new();
    let mut rewritten: Vec<(OsString, OsString)> = Vec::new();
    for (k, v) in parent {
        let kb = k.as_bytes();
        if DROP.iter().any(|d| d.as_bytes() == kb) {
            continue;
        }
        if let Some(rest) = kb.strip_prefix(b"UWSGI_VASSAL_") {
            if !rest.is_empty() {
                let mut nk = b"UWSGI_".to_vec();
                nk.extend_from_slice(rest);
                rewritten.push((OsStr::from_bytes(&nk).to_os_string(), v));
            }
            continue;
        }
        plain.push((k, v));
    }
    plain.retain(|(k, _)| !rewritten.iter().any(|(r, _)| r == k));
    plain.extend(rewritten);
    plain
}

/// Resolves a program like `execvp` would: names with a `/` are taken relative to `cwd`,
/// others are searched in `path` (a PATH value). `None` when nothing executable is found.
pub fn resolve(program: &str, path: Option<&OsStr>, cwd: &Path) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(cwd.join(program));
    }
    let path = path?;
    std::env::split_paths(path)
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| cwd.join(d).join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(a: &str, b: &str) -> (OsString, OsString) {
        (a.into(), b.into())
    }

    #[test]
    fn argv_order_matches_uwsgi() {
        let cfg = ArgvConfig {
            inherit_before: vec!["b.ini".into()],
            include_before: vec!["c.ini".into()],
            set: vec!["processes=1".into()],
            inherit: vec!["t.ini".into()],
            include: vec!["i.ini".into()],
            ..Default::default()
        };
        assert_eq!(
            build_argv(&cfg, "/usr/bin/uwsgi", "app.ini", false, false),
            [
                "/usr/bin/uwsgi",
                "--inherit",
                "b.ini",
                "--include",
                "c.ini",
                "--set",
                "processes=1",
                "--ini",
                "app.ini",
                "--inherit",
                "t.ini",
                "--include",
                "i.ini"
            ]
        );
        let magic = ArgvConfig {
            magic_exec: true,
            ..Default::default()
        };
        assert_eq!(
            build_argv(&magic, "u", "gen.ini", true, false),
            ["u", "--ini", "exec://gen.ini"]
        );
        assert_eq!(
            build_argv(&magic, "u", "gen.ini", false, true),
            ["u", "--ini", "emperor://gen.ini"]
        );
        assert_eq!(build_argv(&magic, "u", "x.yml", false, false)[1], "--yaml");
    }

    #[test]
    fn env_rewrite_is_done_right() {
        let env = vassal_env(vec![
            os("PATH", "/bin"),
            os("UWSGI_VASSAL_FOO", "bar"),
            os("UWSGI_ORIGINAL_PROC_NAME", "uwsgi"),
            os("UWSGI_RELOADS", "3"),
            os("NOTIFY_SOCKET", "/run/x"),
            os("UWSGI_EMPEROR_FD", "7"),
            os("UWSGI_FOO", "old"),
            os("UWSGI_VASSAL_", "ignored"),
        ]);
        assert_eq!(
            env,
            vec![
                os("PATH", "/bin"),
                os("UWSGI_ORIGINAL_PROC_NAME", "uwsgi"),
                os("UWSGI_FOO", "bar"),
            ]
        );
    }

    #[test]
    fn resolve_like_execvp() {
        let cwd = Path::new("/");
        assert_eq!(
            resolve("sh", Some(OsStr::new("/nonexistent:/bin:/usr/bin")), cwd)
                .unwrap()
                .file_name()
                .unwrap(),
            "sh"
        );
        assert_eq!(
            resolve("no-such-binary-x", Some(OsStr::new("/bin")), cwd),
            None
        );
        assert_eq!(
            resolve("./w.sh", None, Path::new("/base")),
            Some(PathBuf::from("/base/./w.sh"))
        );
    }
}
