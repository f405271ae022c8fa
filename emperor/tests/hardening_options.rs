//! The command line and emperor.ini accept the same keys, the master/worker keys uWSGI's own
//! tools pass included (Debian's init script runs `--ini emperor.ini --die-on-term --pidfile P
//! --daemonize L`), and every usage error exits 2.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::ArgAction;
use common::*;
use emperor::config::options::{command, IniNoteKind, Options, IGNORED_KEYS};

/// A valid value for every option that takes one (by its long name).
const SAMPLES: &[(&str, &str)] = &[
    ("emperor", "/v"),
    ("ini", ""),
    ("emperor-freq", "7"),
    ("emperor-process-tree", "pgroup"),
    ("emperor-required-heartbeat", "9"),
    ("emperor-curse-tolerance", "11"),
    ("emperor-throttle", "13"),
    ("emperor-max-throttle", "17"),
    ("emperor-extra-extension", ".conf"),
    ("emperor-extra-ext", ".cfg"),
    ("emperor-wrapper", "/usr/bin/uwsgi"),
    ("emperor-wrapper-override", "/o"),
    ("emperor-wrapper-fallback", "/f"),
    ("vassals-inherit", "/i"),
    ("vassals-include", "/j"),
    ("vassals-inherit-before", "/k"),
    ("vassals-include-before", "/l"),
    ("vassals-set", "a=1"),
    ("vassal-set", "b=2"),
    ("vassals-start-hook", "/bin/true"),
    ("vassals-stop-hook", "/bin/false"),
    ("exec-as-vassal", "true"),
    ("exec-as-emperor", "echo hi"),
    ("emperor-cap", "net_bind_service"),
    ("vassals-cap", "chown"),
    ("vassal-cap", "kill"),
    ("emperor-use-clone", "uts"),
    ("reload-mercy", "5"),
    ("emperor-on-demand-extension", ".socket"),
    ("emperor-on-demand-ext", ".sock"),
    ("emperor-on-demand-directory", "/od"),
    ("emperor-on-demand-dir", "/od2"),
    ("emperor-on-demand-exec", "/bin/echo"),
    ("emperor-broodlord", "3"),
    ("emperor-command-socket", "/c.sock"),
    ("emperor-wait-for-command-ignore", "a.ini"),
    ("emperor-stats", "/s.sock"),
    ("emperor-stats-server", "127.0.0.1:9191"),
    ("emperor-pidfile", "/e.pid"),
    ("emperor-procname", "emp"),
    ("emperor-use-fork-server", "/fs.sock"),
    ("vassal-fork-base", "base.ini"),
    ("uid", "nobody"),
    ("gid", "nogroup"),
    ("logto", "/l.log"),
    ("log-date", "%Y"),
    ("logdate", "true"),
    ("pidfile", "/p.pid"),
    ("pidfile2", "/p2.pid"),
    ("daemonize", "/d.log"),
    ("umask", "022"),
    ("chdir", "/srv"),
    ("env", "A=1"),
    ("unenv", "B"),
];

/// Every long name (and alias) of the command line, with whether it is a plain flag.
fn long_names() -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for a in command().get_arguments() {
        let flag = matches!(a.get_action(), ArgAction::SetTrue);
        for name in a
            .get_long()
            .into_iter()
            .chain(a.get_all_aliases().unwrap_or_default())
        {
            out.push((name.to_string(), flag));
        }
    }
    out
}

fn parse_cli(args: &[String]) -> Options {
    let mut all = vec!["emperor".to_string()];
    all.extend(args.iter().cloned());
    Options::parse_from_args(&all).unwrap_or_else(|e| panic!("{all:?} refused: {e}"))
}

fn parse_ini(dir: &Path, body: &str) -> (PathBuf, Options) {
    let ini = dir.join("emperor.ini");
    std::fs::write(&ini, format!("[uwsgi]\nemperor = /v\n{body}")).unwrap();
    let o = Options::parse_from_args(["emperor".as_ref(), "--ini".as_ref(), ini.as_os_str()])
        .unwrap_or_else(|e| panic!("ini {body:?} refused: {e}"));
    (ini, o)
}

/// What an option sets, the bookkeeping fields aside.
fn meaning(mut o: Options) -> Options {
    o.ini.clear();
    o.ini_notes.clear();
    o
}

#[test]
fn every_ini_key_is_an_option_and_every_option_an_ini_key() {
    let d = tempfile::tempdir().unwrap();
    let names = long_names();
    for (name, _) in &names {
        if matches!(name.as_str(), "help" | "version") {
            continue;
        }
        let listed = SAMPLES.iter().any(|(k, _)| k == name)
            || IGNORED_KEYS.contains(&name.as_str())
            || names.iter().any(|(n, f)| n == name && *f);
        assert!(
            listed,
            "--{name} has no sample value in this table: add one"
        );
    }
    let mut checked = 0;
    for (name, flag) in &names {
        let key = name.as_str();
        if matches!(key, "help" | "version" | "ini") || IGNORED_KEYS.contains(&key) {
            continue;
        }
        let (cli, ini) = if *flag {
            (vec![format!("--{key}")], format!("{key} = true\n"))
        } else {
            let v = SAMPLES.iter().find(|(k, _)| *k == key).unwrap().1;
            (vec![format!("--{key}={v}")], format!("{key} = {v}\n"))
        };
        let mut cli = cli;
        cli.extend(["--emperor".to_string(), "/v".to_string()]);
        let from_cli = meaning(parse_cli(&cli));
        let (_, from_ini) = parse_ini(d.path(), &ini);
        assert!(
            from_ini.ini_notes.is_empty(),
            "ini key {key} was not taken as the option: {:?}",
            from_ini.ini_notes
        );
        assert_eq!(
            from_cli,
            meaning(from_ini),
            "--{key} and the ini key {key} differ"
        );
        assert_ne!(
            from_cli,
            meaning(parse_cli(&["--emperor".into(), "/v".into()])),
            "--{key} changed nothing (is its sample value the default?)"
        );
        checked += 1;
    }
    assert!(checked > 50, "only {checked} options checked");

    // The master/worker keys: accepted both ways, named in a warning, and otherwise ignored.
    let baseline = meaning(parse_cli(&["/v".into()]));
    for &key in IGNORED_KEYS {
        let (ini, o) = parse_ini(d.path(), &format!("{key} = 2\n"));
        assert_eq!(o.ini_notes.len(), 1, "{key}: {:?}", o.ini_notes);
        assert_eq!(o.ini_notes[0].kind, IniNoteKind::Ignored, "{key}");
        assert_eq!(o.ini_notes[0].path, ini);
        assert_eq!(
            meaning(o),
            meaning(parse_cli(&["--emperor".into(), "/v".into()]))
        );

        // As a flag (`--master /v`) or with a value (`--workers 2 /v`): the monitor stays one.
        let with_value = command()
            .get_arguments()
            .find(|a| a.get_long() == Some(key))
            .unwrap_or_else(|| panic!("--{key} is not a command-line option"))
            .get_num_args()
            .is_some_and(|n| n.min_values() > 0);
        let cli: Vec<String> = if with_value {
            vec![format!("--{key}"), "2".into(), "/v".into()]
        } else {
            vec![format!("--{key}"), "/v".into()]
        };
        let o = parse_cli(&cli);
        let notes = o.ini_notes.clone();
        assert_eq!(meaning(o), baseline, "{cli:?}");
        assert_eq!(notes.len(), 1, "{cli:?}: {notes:?}");
        assert_eq!(notes[0].kind, IniNoteKind::IgnoredOption);
        assert!(
            notes[0].to_string().contains(&format!("`--{key}`")),
            "{}",
            notes[0]
        );
        let o = parse_cli(&[format!("--{key}=2"), "/v".into()]);
        assert_eq!(meaning(o), baseline, "--{key}=2");
    }
}

/// The emperor's exit status and everything it printed, for `args`.
fn run(args: &[&str], cwd: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_emperor"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn usage_errors_exit_2_with_a_clear_message() {
    let d = tempfile::tempdir().unwrap();
    let (code, text) = run(&[], d.path());
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("no monitor given"), "{text}");
    assert!(text.contains("Usage:"), "{text}");
    std::fs::write(d.path().join("e.ini"), "[uwsgi]\nemperor-freq = 2\n").unwrap();
    let (code, text) = run(&["--ini", "e.ini"], d.path());
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("no monitor given"), "{text}");
    let (code, text) = run(&["--emperor-frek", "2", "/v"], d.path());
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("--emperor-frek"), "{text}");
    let (code, text) = run(&["--ini", "missing.ini"], d.path());
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("missing.ini"), "{text}");
    // A path with a newline cannot forge a second line of the message.
    let (code, text) = run(&["--ini", "no\nINFO forged.ini"], d.path());
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("no\\nINFO forged.ini"), "{text}");
    assert!(
        !text.lines().any(|l| l.starts_with("INFO forged")),
        "{text}"
    );
    let (code, _) = run(&["--help"], d.path());
    assert_eq!(code, Some(0));
}

/// Kills a daemonized emperor (not in the test's process group) if the test fails midway.
struct Daemon(Option<i32>);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            signal(pid, libc::SIGKILL);
        }
    }
}

#[test]
fn debians_init_script_command_line_runs_a_real_vassal() {
    require_uwsgi();
    let (work, dir) = work_dir();
    let sock = work.path().join("app.sock");
    write_vassal(&dir, "app.ini", &sock, "");
    let ini = work.path().join("emperor.ini");
    // /etc/uwsgi-emperor/emperor.ini as Debian ships it (without the uid/gid keys), over the
    // temporary vassal directory.
    std::fs::write(
        &ini,
        debian_emperor_ini(&format!("emperor = {}\n", dir.display())),
    )
    .unwrap();
    let pidfile = work.path().join("emperor.pid");
    let log = work.path().join("emperor.log");
    // What /etc/init.d/uwsgi-emperor runs.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emperor"));
    cmd.arg("--ini")
        .arg(&ini)
        .arg("--die-on-term")
        .arg("--pidfile")
        .arg(&pidfile)
        .arg("--daemonize")
        .arg(&log)
        .env("EMPEROR_LOG", "info")
        .current_dir(work.path());
    let mut launcher = Proc::spawn(cmd);
    assert_eq!(
        launcher.wait_exit(T).code(),
        Some(0),
        "{}",
        launcher.output()
    );
    let text = wait_file(&pidfile, "\n", 1);
    let pid: i32 = text.trim().parse().unwrap();
    let _guard = Daemon(Some(pid));
    let text = wait_file(&log, "vassal app.ini is ready to accept requests", 1);
    assert!(text.contains("`--die-on-term`"), "{text}");
    assert!(
        text.contains("`workers` has no meaning for the emperor"),
        "{text}"
    );
    let (status, body) = hello(&sock);
    assert_eq!(status, 200);
    assert!(body.starts_with(b"Hello from uWSGI"));
    signal(pid, libc::SIGTERM);
    wait_gone(pid, T);
    assert!(!pidfile.exists(), "the pidfile outlived the emperor");
}
