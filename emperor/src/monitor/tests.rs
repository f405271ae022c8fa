//! Monitor arguments, config names and the bounded config reading.

use std::path::Path;

use super::*;

#[test]
fn flags_by_extension() {
    assert_eq!(config_flag("a.ini", &[]), Some("--ini"));
    assert_eq!(config_flag("a.yaml", &[]), Some("--yaml"));
    assert_eq!(config_flag("a.yml", &[]), Some("--yaml"));
    assert_eq!(config_flag("a.js", &[]), Some("--json"));
    assert_eq!(config_flag("a.json", &[]), Some("--json"));
    assert_eq!(config_flag("a.xml", &[]), Some("--xml"));
    assert_eq!(config_flag("a.txt", &[]), None);
    assert_eq!(config_flag(".ini", &[]), None);
    assert_eq!(config_flag("a.conf", &[".conf".into()]), Some("--config"));
    assert_eq!(config_flag(&"x".repeat(5000), &[]), None);
}

#[test]
fn monitor_arguments() {
    let cwd = Path::new("/base");
    assert_eq!(
        parse_monitor("dir://v", cwd).unwrap().kind,
        MonitorKind::Dir("/base/v".into())
    );
    assert_eq!(
        parse_monitor("glob:///e/*.ini", cwd).unwrap().kind,
        MonitorKind::Glob("/e/*.ini".into())
    );
    assert_eq!(
        parse_monitor("/e/*.ini", cwd).unwrap().kind,
        MonitorKind::Glob("/e/*.ini".into())
    );
    assert_eq!(
        parse_monitor("/nonexistent/dir", cwd).unwrap().kind,
        MonitorKind::Dir("/nonexistent/dir".into())
    );
    let e = parse_monitor("pg://x", cwd).unwrap_err();
    assert_eq!(
        e.to_string(),
        "monitor `pg://x`: the `pg://` monitor is not supported (use a directory, a glob, dir:// or glob://)"
    );
}

#[test]
fn configs_are_read_only_from_regular_files() {
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("fifo.ini");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // A FIFO is refused from its stat: it is never opened (which would block).
    let e = open_config(&fifo).unwrap_err();
    assert!(matches!(e, ConfigError::NotRegular("a FIFO")), "{e}");
    assert!(
        e.to_string()
            .starts_with("it is a FIFO, not a regular file: the emperor reads vassal configs only from regular files"),
        "{e}"
    );
    let e = read_config_head(&d.path().join("missing.ini")).unwrap_err();
    assert!(matches!(e, ConfigError::Open(_)), "{e}");
    assert!(e.to_string().starts_with("cannot read it: "), "{e}");
    let p = d.path().join("a.ini");
    std::fs::write(&p, "[uwsgi]\n").unwrap();
    assert_eq!(
        read_config_head(&p).unwrap(),
        (b"[uwsgi]\n".to_vec(), false)
    );
}
