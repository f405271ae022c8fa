//! The Debian package (`scripts/package`): its contents and conffiles, the systemd unit linted
//! by `systemd-analyze verify`, and the package unpacked into a scratch root (`dpkg -x`) whose
//! binaries, man pages and emperor.ini are then used for real.
//!
//! `EMPEROR_DEB=path.deb` tests an already built package (scripts/test builds it once);
//! otherwise this runs `scripts/package` itself (a release build).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use uwsgi_emperor_suite::Proc;

const T: Duration = Duration::from_secs(30);

const TOOLS_HINT: &str = "install them with `apt-get install dpkg systemd man-db` (as root), or \
                          run `scripts/test`, which installs what the tests need";

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}; {TOOLS_HINT}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The .deb under test, built at most once per test run.
fn deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        if let Some(p) = std::env::var_os("EMPEROR_DEB") {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "EMPEROR_DEB={} is not a file", p.display());
            return p;
        }
        let out = run(Command::new(workspace().join("scripts/package")).current_dir(workspace()));
        let stdout = text(&out.stdout);
        let last = stdout.lines().last().unwrap_or_default().trim();
        PathBuf::from(last)
    })
}

/// The package unpacked into a fresh scratch root.
fn unpacked() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    run(Command::new("dpkg").arg("-x").arg(deb()).arg(root.path()));
    root
}

#[test]
fn package_holds_binaries_unit_configs_man_pages_and_completions() {
    let list = text(&run(Command::new("dpkg-deb").arg("-c").arg(deb())).stdout);
    let entry = |path: &str| {
        list.lines()
            .find(|l| l.ends_with(&format!(" ./{path}")))
            .unwrap_or_else(|| panic!("{path} is not in the package:\n{list}"))
            .to_string()
    };
    for bin in ["usr/bin/emperor", "usr/bin/vassal-shim"] {
        assert!(entry(bin).starts_with("-rwxr-xr-x 0/0"), "{}", entry(bin));
    }
    for f in [
        "usr/lib/systemd/system/emperor.service",
        "etc/emperor/emperor.ini",
        "etc/emperor/vassals/example.ini.example",
        "etc/logrotate.d/emperor",
        "usr/share/man/man1/emperor.1.gz",
        "usr/share/man/man1/emperor-ctl.1.gz",
        "usr/share/man/man1/vassal-shim.1.gz",
        "usr/share/bash-completion/completions/emperor",
        "usr/share/bash-completion/completions/vassal-shim",
        "usr/share/zsh/vendor-completions/_emperor",
        "usr/share/zsh/vendor-completions/_vassal-shim",
        "usr/share/fish/vendor_completions.d/emperor.fish",
        "usr/share/fish/vendor_completions.d/vassal-shim.fish",
        "usr/share/doc/emperor/copyright",
    ] {
        assert!(entry(f).starts_with("-rw-r--r-- 0/0"), "{}", entry(f));
    }
    // Nothing of Debian's uwsgi-emperor: its binary, unit, config and log directories.
    for theirs in [
        "usr/bin/uwsgi",
        "uwsgi-emperor.service",
        "etc/uwsgi-emperor",
        "var/log/uwsgi",
    ] {
        assert!(
            !list.contains(theirs),
            "{theirs} belongs to uwsgi-emperor:\n{list}"
        );
    }

    let conffiles = text(
        &run(Command::new("dpkg-deb")
            .arg("-I")
            .arg(deb())
            .arg("conffiles"))
        .stdout,
    );
    for c in [
        "/etc/emperor/emperor.ini",
        "/etc/emperor/vassals/example.ini.example",
        "/etc/logrotate.d/emperor",
    ] {
        assert!(
            conffiles.lines().any(|l| l.trim() == c),
            "{c} is not a conffile:\n{conffiles}"
        );
    }
    let postinst = text(
        &run(Command::new("dpkg-deb")
            .arg("-I")
            .arg(deb())
            .arg("postinst"))
        .stdout,
    );
    assert!(
        postinst.contains("deb-systemd-helper enable emperor.service"),
        "{postinst}"
    );
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let root = unpacked();
    let unit = std::fs::read_to_string(root.path().join("usr/lib/systemd/system/emperor.service"))
        .unwrap();
    for line in [
        "Type=notify",
        "ExecStart=/usr/bin/emperor --ini /etc/emperor/emperor.ini",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillMode=mixed",
        "Restart=on-failure",
        "Delegate=yes",
    ] {
        assert!(unit.lines().any(|l| l == line), "no `{line}` in the unit");
    }
    for absent in [
        "NoNewPrivileges=",
        "PrivateUsers=",
        "ProtectHome=",
        "PrivateTmp=",
    ] {
        assert!(
            !unit.lines().any(|l| l.starts_with(absent)),
            "`{absent}` would break vassals (tyrant mode, setuid helpers, shared sockets)"
        );
    }
    // verify checks that the binaries exist and the Documentation= pages are found by man: point
    // both at the scratch root.
    let checked = root.path().join("emperor.service");
    let bin = root.path().join("usr/bin/emperor");
    std::fs::write(
        &checked,
        unit.replace("/usr/bin/emperor", bin.to_str().unwrap()),
    )
    .unwrap();
    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(&checked)
        .env("MANPATH", root.path().join("usr/share/man"))
        .env("SYSTEMD_LOG_LEVEL", "notice"));
    assert_eq!(
        text(&out.stderr),
        "",
        "systemd-analyze verify has remarks on the unit"
    );
}

#[test]
fn installed_binaries_run_and_man_pages_match_their_help() {
    let root = unpacked();
    let bin = |name: &str| root.path().join("usr/bin").join(name);
    let help = |args: &[&str], name: &str| text(&run(Command::new(bin(name)).args(args)).stdout);
    let emperor_help = help(&["--help"], "emperor");
    assert!(emperor_help.contains("--emperor-stats"), "{emperor_help}");
    let ctl_help = help(&["ctl", "--help"], "emperor");
    assert!(ctl_help.contains("--command-socket"), "{ctl_help}");
    let shim_help = help(&["--help"], "vassal-shim");
    assert!(shim_help.contains("--ready"), "{shim_help}");
    let version = help(&["--version"], "emperor");
    assert!(
        version.starts_with(&format!("emperor {} (git ", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );

    for (page, help) in [
        ("emperor.1.gz", &emperor_help),
        ("emperor-ctl.1.gz", &ctl_help),
        ("vassal-shim.1.gz", &shim_help),
    ] {
        let path = root.path().join("usr/share/man/man1").join(page);
        let out = run(Command::new("man")
            .arg("--warnings")
            .arg("-l")
            .arg(&path)
            .env("MANWIDTH", "100"));
        let rendered = text(&out.stdout);
        assert_eq!(text(&out.stderr), "", "groff warnings for {page}");
        for section in ["NAME", "SYNOPSIS", "OPTIONS"] {
            assert!(
                rendered.contains(section),
                "{page} has no {section}:\n{rendered}"
            );
        }
        // Every long option of --help is described in the page (roff spells `-` as `\-`).
        let source = text(&run(Command::new("gzip").arg("-dc").arg(&path)).stdout);
        let longs: Vec<&str> = help
            .lines()
            .map(str::trim_start)
            .filter(|l| l.starts_with('-'))
            .filter_map(|l| l.split([' ', ',', '[', '=']).find(|w| w.starts_with("--")))
            .filter(|w| w.len() > 2)
            .collect();
        assert!(longs.len() >= 3, "no options found in the help of {page}");
        for long in longs {
            let roff = format!("\\fB{}\\fR", long.replace('-', "\\-"));
            assert!(source.contains(&roff), "{page} does not describe {long}");
        }
    }
    let ctl_page = text(
        &run(Command::new("man")
            .arg("-l")
            .arg(root.path().join("usr/share/man/man1/emperor-ctl.1.gz"))
            .env("MANWIDTH", "100"))
        .stdout,
    );
    for sub in [
        "status",
        "reload NAME",
        "stop NAME",
        "spawn NAME",
        "reset NAME",
        "log MSG",
    ] {
        assert!(
            ctl_page.contains(sub),
            "emperor-ctl(1) lacks `{sub}`:\n{ctl_page}"
        );
    }
}

#[test]
fn shipped_emperor_ini_starts_the_installed_emperor_and_skips_the_example() {
    let root = unpacked();
    let ini = std::fs::read_to_string(root.path().join("etc/emperor/emperor.ini")).unwrap();
    let vassals = root.path().join("etc/emperor/vassals");
    let stats = root.path().join("stats.sock");
    // The shipped file, with its two paths moved into the scratch root.
    let moved = root.path().join("emperor.ini");
    std::fs::write(
        &moved,
        ini.replace("/etc/emperor/vassals", vassals.to_str().unwrap())
            .replace("/run/emperor/stats.sock", stats.to_str().unwrap()),
    )
    .unwrap();
    let mut cmd = Command::new(root.path().join("usr/bin/emperor"));
    cmd.arg("--ini").arg(&moved).env("EMPEROR_LOG", "info");
    let mut emp = Proc::spawn(cmd);
    emp.wait_for_line("skipping example.ini.example", T);
    emp.wait_for_line("Starting the Emperor", T);
    let status = Command::new(root.path().join("usr/bin/emperor"))
        .args(["ctl", "--stats"])
        .arg(&stats)
        .args(["status", "--json"])
        .output()
        .unwrap();
    let doc = text(&status.stdout);
    assert!(doc.contains("\"vassals\""), "{doc}");
    assert!(!doc.contains("example"), "the example must not run: {doc}");
    emp.signal(libc::SIGTERM);
    assert!(emp.wait_exit(T).success());
    let out = emp.output();
    assert!(
        !out.contains("WARN"),
        "the shipped emperor.ini must start without warnings:\n{out}"
    );
}
