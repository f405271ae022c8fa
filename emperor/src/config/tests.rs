use std::path::{Path, PathBuf};

use clap::CommandFactory;

use super::options::*;

#[test]
fn defaults_match_uwsgi() {
    let o = Options::parse_from_args(["emperor", "/etc/uwsgi/vassals"]).unwrap();
    assert_eq!(o.freq, 3);
    assert_eq!(o.required_heartbeat, 30);
    assert_eq!(o.curse_tolerance, 30);
    assert_eq!(o.throttle, 1000);
    assert_eq!(o.max_throttle, 180_000);
    assert_eq!(o.reload_mercy, 30);
    assert_eq!(o.all_monitors(), vec!["/etc/uwsgi/vassals"]);
}

#[test]
fn uwsgi_command_line_carries_over() {
    let o = Options::parse_from_args([
        "emperor",
        "--emperor",
        "/a",
        "--emperor",
        "glob:///b/*.ini",
        "--emperor-stats-server",
        "/tmp/s.sock",
        "--vassal-set",
        "processes=2",
        "--emperor-nofollow",
    ])
    .unwrap();
    assert_eq!(o.all_monitors(), vec!["/a", "glob:///b/*.ini"]);
    assert_eq!(o.stats.as_deref(), Some("/tmp/s.sock"));
    assert_eq!(o.vassals_set, vec!["processes=2"]);
    assert!(o.nofollow);
}

#[test]
fn unknown_option_is_named() {
    let e = Options::parse_from_args(["emperor", "--emperor-frek", "2"]).unwrap_err();
    assert!(e.to_string().contains("--emperor-frek"), "{e}");
}

#[test]
fn ini_section_works_and_command_line_wins() {
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("emperor.ini");
    std::fs::write(
        &ini,
        "[uwsgi]\nemperor = %dvassals\nemperor = /other\nemperor-freq = 7\n\
         emperor-no-blacklist = true\nemperor-magic-exec = false\nvassals-set = a=1\n\
         emperor-stats = 127.0.0.1:9191\n",
    )
    .unwrap();
    let o = Options::parse_from_args([
        "emperor".as_ref(),
        "--ini".as_ref(),
        ini.as_os_str(),
        "--emperor-freq".as_ref(),
        "2".as_ref(),
    ])
    .unwrap();
    let abs = std::path::absolute(dir.path()).unwrap();
    assert_eq!(
        o.emperor,
        vec![format!("{}/vassals", abs.display()), "/other".to_string()]
    );
    assert_eq!(o.freq, 2);
    assert!(o.no_blacklist);
    assert!(!o.magic_exec);
    assert_eq!(o.vassals_set, vec!["a=1"]);
    assert_eq!(o.stats.as_deref(), Some("127.0.0.1:9191"));
}

#[test]
fn ini_sections_and_includes() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.ini");
    std::fs::write(&base, "[uwsgi]\nemperor-freq = 9\n[other]\nemperor = /o\n").unwrap();
    let main = dir.path().join("main.ini");
    std::fs::write(&main, "[uwsgi]\nini = %dbase.ini\nemperor = /m\n").unwrap();
    let o =
        Options::parse_from_args(["emperor".as_ref(), "--ini".as_ref(), main.as_os_str()]).unwrap();
    assert_eq!((o.freq, o.emperor.clone()), (9, vec!["/m".to_string()]));
    let sect = format!("{}:other", base.display());
    let o = Options::parse_from_args(["emperor", "--ini", sect.as_str()]).unwrap();
    assert_eq!(o.emperor, vec!["/o"]);
    let selfref = dir.path().join("loop.ini");
    std::fs::write(&selfref, "[uwsgi]\nini = %p\n").unwrap();
    let e = Options::parse_from_args(["emperor".as_ref(), "--ini".as_ref(), selfref.as_os_str()])
        .unwrap_err();
    assert!(e.to_string().contains("too deeply"), "{e}");
}

fn parse_ini(text: &str) -> (tempfile::TempDir, PathBuf, Result<Options, OptionsError>) {
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("emperor.ini");
    std::fs::write(&ini, text).unwrap();
    let r = Options::parse_from_args(["emperor".as_ref(), "--ini".as_ref(), ini.as_os_str()]);
    (dir, ini, r)
}

fn note(path: &Path, key: &str, kind: IniNoteKind) -> IniNote {
    IniNote {
        path: path.to_path_buf(),
        key: key.into(),
        kind,
    }
}

#[test]
fn debians_stock_emperor_ini_is_accepted() {
    let (_d, ini, r) = parse_ini(
        "[uwsgi]\nautoload = true\nmaster = true\nworkers = 2\nno-orphans = true\n\
         log-date = true\nuid = www-data\ngid = www-data\n\
         emperor = /etc/uwsgi-emperor/vassals\n",
    );
    let o = r.unwrap();
    assert_eq!(o.emperor, vec!["/etc/uwsgi-emperor/vassals"]);
    assert_eq!(o.uid.as_deref(), Some("www-data"));
    assert_eq!(o.gid.as_deref(), Some("www-data"));
    assert_eq!(o.log_date.as_deref(), Some("true"));
    let ignored = IniNoteKind::Ignored;
    assert_eq!(
        o.ini_notes,
        vec![
            note(&ini, "autoload", ignored),
            note(&ini, "master", ignored),
            note(&ini, "workers", ignored),
            note(&ini, "no-orphans", ignored),
        ]
    );
    assert_eq!(
        o.ini_notes[2].to_string(),
        format!(
            "{}: `workers` has no meaning for the emperor; ignored",
            ini.display()
        )
    );
}

#[test]
fn unknown_ini_keys_become_placeholders_once_per_file() {
    let (_d, ini, r) = parse_ini(
        "[uwsgi]\nemperor = /x\nbogus-key = 1\nbogus-key = 2\nprocesses = 4\n\
         processes = 8\n",
    );
    let o = r.unwrap();
    assert_eq!(
        o.ini_notes,
        vec![
            note(&ini, "bogus-key", IniNoteKind::Placeholder),
            note(&ini, "processes", IniNoteKind::Ignored),
        ]
    );
    assert!(
        o.ini_notes[0].to_string().ends_with(
            "unknown option `bogus-key`, kept as a placeholder (usable as %(bogus-key))"
        ),
        "{}",
        o.ini_notes[0]
    );
    // On the command line, an unknown option is still refused.
    let e = Options::parse_from_args(["emperor", "--bogus-key", "1", "/x"]).unwrap_err();
    assert!(e.to_string().contains("--bogus-key"), "{e}");
    // A master/worker key is accepted there too, with the same warning.
    let o = Options::parse_from_args(["emperor", "--workers", "2", "/x"]).unwrap();
    assert_eq!(o.all_monitors(), vec!["/x"]);
    assert_eq!(o.ini_notes[0].kind, IniNoteKind::IgnoredOption);
}

#[test]
fn placeholders_expand_from_any_key_first_value_wins() {
    let (d, _ini, r) = parse_ini(
        "[uwsgi]\nemperor = %(root)/%(sub)\nroot = /srv\nroot = /ignored\n\
         sub = apps-%(workers)\nworkers = 2\nlogto = %dlog/%(sub).log\n\
         emperor-procname = 100%%(root)\nvassals-set = open=%(\n",
    );
    let o = r.unwrap();
    assert_eq!(o.emperor, vec!["/srv/apps-2"]);
    let abs = std::path::absolute(d.path()).unwrap();
    assert_eq!(o.logto, Some(abs.join("log/apps-2.log")));
    assert_eq!(o.procname.as_deref(), Some("100%(root)"));
    assert_eq!(o.vassals_set, vec!["open=%("]);
}

#[test]
fn placeholders_cross_includes_and_name_the_file_when_undefined() {
    let dir = tempfile::tempdir().unwrap();
    let inc = dir.path().join("inc.ini");
    std::fs::write(&inc, "[uwsgi]\nemperor = %(top)/v\nlevel = inner\n").unwrap();
    let main = dir.path().join("main.ini");
    std::fs::write(
        &main,
        "[uwsgi]\ntop = /t\nincname = inc\nini = %d%(incname).ini\n\
         emperor-procname = %(level)\n",
    )
    .unwrap();
    let o =
        Options::parse_from_args(["emperor".as_ref(), "--ini".as_ref(), main.as_os_str()]).unwrap();
    assert_eq!(o.emperor, vec!["/t/v"]);
    assert_eq!(o.procname.as_deref(), Some("inner"));

    std::fs::write(&inc, "[uwsgi]\nemperor = %(nowhere)/v\n").unwrap();
    let e = Options::parse_from_args(["emperor".as_ref(), "--ini".as_ref(), main.as_os_str()])
        .unwrap_err()
        .to_string();
    assert!(e.contains(&inc.display().to_string()), "{e}");
    assert!(e.contains("`emperor` uses %(nowhere)"), "{e}");

    // An include path can only use keys defined before it.
    std::fs::write(&main, "[uwsgi]\nini = %d%(incname).ini\nincname = inc\n").unwrap();
    let e = Options::parse_from_args(["emperor".as_ref(), "--ini".as_ref(), main.as_os_str()])
        .unwrap_err()
        .to_string();
    assert!(e.contains(&main.display().to_string()), "{e}");
    assert!(e.contains("%(incname)"), "{e}");
}

#[test]
fn placeholder_cycles_are_errors() {
    let (_d, ini, r) = parse_ini("[uwsgi]\na = %(b)\nb = x%(a)\nemperor = %(a)\n");
    let e = r.unwrap_err().to_string();
    assert!(e.contains(&ini.display().to_string()), "{e}");
    assert!(e.contains("cycle"), "{e}");
    let (_d, _ini, r) = parse_ini("[uwsgi]\nemperor = %(emperor)\n");
    assert!(r.unwrap_err().to_string().contains("cycle"));
}

#[test]
fn process_keys_from_ini_and_command_line() {
    let (_d, _ini, r) = parse_ini(
        "[uwsgi]\nemperor = /v\nuid = 33\ngid = 33\nlogto = /var/log/e.log\n\
         pidfile = /run/e.pid\npidfile2 = /run/e2.pid\ndaemonize = /var/log/d.log\n\
         logdate = %%Y-%%m-%%d\n",
    );
    let o = r.unwrap();
    assert_eq!(o.uid.as_deref(), Some("33"));
    assert_eq!(o.gid.as_deref(), Some("33"));
    assert_eq!(o.logto.as_deref(), Some(Path::new("/var/log/e.log")));
    assert_eq!(o.master_pidfile.as_deref(), Some(Path::new("/run/e.pid")));
    assert_eq!(o.master_pidfile2.as_deref(), Some(Path::new("/run/e2.pid")));
    assert_eq!(o.daemonize.as_deref(), Some(Path::new("/var/log/d.log")));
    assert_eq!(o.log_date.as_deref(), Some("%Y-%m-%d"));
    assert!(o.ini_notes.is_empty(), "{:?}", o.ini_notes);
    // --log-date takes its format only after `=`: a following monitor stays a monitor.
    let o = Options::parse_from_args([
        "emperor",
        "--log-date",
        "/v",
        "--uid",
        "nobody",
        "--pidfile",
        "/p",
    ])
    .unwrap();
    assert_eq!(o.log_date.as_deref(), Some("true"));
    assert_eq!(o.all_monitors(), vec!["/v"]);
    assert_eq!(o.uid.as_deref(), Some("nobody"));
    assert_eq!(o.master_pidfile.as_deref(), Some(Path::new("/p")));
    assert_eq!(o.pidfile, None);
}

#[test]
fn environment_keys_from_ini() {
    let (_d, _ini, r) = parse_ini(
        "[uwsgi]\nemperor = v\numask = 027\nchdir = /srv\nenv = A=1\nenv = B=x=y\n\
         unenv = C\n",
    );
    let o = r.unwrap();
    assert_eq!(o.umask.as_deref(), Some("027"));
    assert_eq!(o.chdir.as_deref(), Some(Path::new("/srv")));
    assert_eq!(o.env, vec!["A=1", "B=x=y"]);
    assert_eq!(o.unenv, vec!["C"]);
    assert!(o.ini_notes.is_empty(), "{:?}", o.ini_notes);
}

#[test]
fn magic_alone_keeps_placeholders() {
    let p = Path::new("/etc/e/emperor.ini");
    assert_eq!(
        expand_magic("%d|%n|%s|%%|%(x)|%q|%", p).as_deref(),
        Some("/etc/e/|emperor|emperor.ini|%|%(x)|%q|%")
    );
    assert_eq!(expand_magic(&"%p".repeat(4000), p), None);
}

#[test]
fn placeholder_bombs_are_bounded_errors() {
    // Each level doubles the previous one: 2^40 bytes, or 2^40 empty lookups.
    for first in ["x", ""] {
        let mut text = format!(
            "[uwsgi]
a0 = {first}
"
        );
        for k in 1..=40 {
            text.push_str(&format!(
                "a{k} = %(a{})%(a{})
",
                k - 1,
                k - 1
            ));
        }
        text.push_str(
            "emperor = %(a40)
",
        );
        let (_d, ini, r) = parse_ini(&text);
        let e = r.unwrap_err().to_string();
        assert!(e.contains(&ini.display().to_string()), "{e}");
        assert!(e.contains("simplify its placeholders"), "{e}");
    }
}

#[test]
fn help_documents_defaults() {
    let help = Options::command().render_long_help().to_string();
    for needle in [
        "[default: 3]",
        "[default: 30]",
        "[default: 1000]",
        "[default: 180000]",
        "--emperor-stats",
        "--stats-http",
        "--emperor-pidfile",
    ] {
        assert!(help.contains(needle), "{needle} missing from --help");
    }
}
