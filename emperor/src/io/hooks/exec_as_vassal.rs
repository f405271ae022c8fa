//! `--exec-as-vassal`: the `/bin/sh` stage a vassal execs first, which runs each command and
//! then `exec`s the real program with the same pid, fds and environment.

use std::path::PathBuf;

/// Single-quotes `s` for `/bin/sh` (POSIX single quotes, each `'` as `'\''`). Written here
/// rather than taken from `shlex`: it is one line, and `shlex::try_quote` refuses strings with
/// NUL and picks a quoting style per string, where the stage wants one predictable form.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// With `--exec-as-vassal` commands, the vassal first execs `/bin/sh` running them, then
/// `exec`s the first of `programs` with `argv[1..]` (same pid, fds and environment). A failing
/// command logs a line naming it and the vassal, and exits 1. Without commands, unchanged.
pub fn wrap_exec_as_vassal(
    cmds: &[String],
    name: &str,
    programs: Vec<PathBuf>,
    argv: Vec<String>,
) -> (Vec<PathBuf>, Vec<String>) {
    let Some(first) = programs.first() else {
        return (programs, argv);
    };
    if cmds.is_empty() {
        return (programs, argv);
    }
    let mut script = String::new();
    for cmd in cmds {
        let prefix =
            format!("exec-as-vassal command `{cmd}` failed for vassal {name} (exit status ");
        script.push_str(&format!(
            "/bin/sh -c {} || {{ printf '%s\\n' {}\"$?\"{} >&2; exit 1; }}\n",
            sh_quote(cmd),
            sh_quote(&prefix),
            sh_quote("): not starting it")
        ));
    }
    script.push_str("exec \"$@\"\n");
    let mut out = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        script,
        argv.first().cloned().unwrap_or_default(),
        first.display().to_string(),
    ];
    out.extend(argv.into_iter().skip(1));
    (vec![PathBuf::from("/bin/sh")], out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn run(cmds: &[&str]) -> std::process::Output {
        let cmds: Vec<String> = cmds.iter().map(|s| s.to_string()).collect();
        let (progs, argv) = wrap_exec_as_vassal(
            &cmds,
            "app.ini",
            vec![PathBuf::from("/bin/echo")],
            vec!["/bin/echo".into(), "it's".into(), "exec'd".into()],
        );
        assert_eq!(progs, vec![PathBuf::from("/bin/sh")]);
        Command::new(&progs[0])
            .args(&argv[1..])
            .output()
            .expect("run /bin/sh")
    }

    #[test]
    fn exec_as_vassal_stage_runs_commands_then_execs_the_program() {
        let out = run(&["echo first", "echo 'second one'"]);
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "first\nsecond one\nit's exec'd\n"
        );
        let out = run(&["true", "exit 3", "echo never"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("exec-as-vassal command `exit 3` failed for vassal app.ini (exit status 3): not starting it"),
            "{err}"
        );
    }

    #[test]
    fn without_commands_nothing_changes() {
        let (p, a) = wrap_exec_as_vassal(&[], "x", vec![PathBuf::from("/u")], vec!["u".into()]);
        assert_eq!((p, a), (vec![PathBuf::from("/u")], vec!["u".to_string()]));
    }

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("printf %s {}", sh_quote("it's $HOME `x`")))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "it's $HOME `x`");
    }
}
