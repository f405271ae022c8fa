//! An existing emperor.ini works unchanged: uWSGI master/worker keys are ignored with a warning,
//! unknown keys become `%(key)` placeholders, and the process keys (uid/gid, logto, pidfile,
//! daemonize) do what they do under uWSGI. The real emperor binary, real processes and, for the
//! Debian file, a real uWSGI python3 vassal.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `emperor --ini FILE` started in `work`.
fn emperor_ini(work: &Path, ini: &Path) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emperor"));
    cmd.arg("--ini")
        .arg(ini)
        .env("EMPEROR_LOG", "info")
        .current_dir(work);
    Proc::spawn(cmd)
}

/// A shell-script vassal that says hello on stdout and stderr, then waits.
fn chatty_vassal(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("vassal.sh");
    std::fs::write(
        &p,
        "#!/bin/sh\necho \"vassal $2 says hello on stdout\"\n\
         echo \"vassal $2 says hello on stderr\" >&2\nexec sleep 600\n",
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// The `Uid:` or `Gid:` line of /proc/PID/status, as its four numbers.
fn proc_ids(pid: i32, field: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} line in /proc/{pid}/status"));
    line.split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect()
}

fn nobody() -> (u32, u32) {
    let u = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("this test needs the user `nobody`");
    let g = nix::unistd::Group::from_name("nogroup")
        .unwrap()
        .expect("this test needs the group `nogroup`");
    (u.uid.as_raw(), g.gid.as_raw())
}

#[test]
fn debians_stock_emperor_ini_runs_a_real_vassal_as_the_configured_user() {
    require_uwsgi();
    let (work, dir) = shared_work_dir();
    // Like /run/uwsgi on Debian: the app's user owns the directory of its socket.
    let run = work.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let sock = run.join("app.sock");
    write_vassal(&dir, "app.ini", &sock, "");
    let ini = work.path().join("emperor.ini");
    // /etc/uwsgi-emperor/emperor.ini as Debian ships it, with nobody/nogroup for www-data and
    // the vassal directory (and a stats socket for the test) in the temporary directory.
    std::fs::write(
        &ini,
        debian_emperor_ini(&format!(
            "uid = nobody\ngid = nogroup\nemperor = {}\nemperor-stats = {}\n",
            dir.display(),
            work.path().join("stats.sock").display()
        )),
    )
    .unwrap();
    let mut emp = emperor_ini(work.path(), &ini);
    if !is_root() {
        // Switching users needs root: the emperor must say so, not run as the wrong user.
        let out = emp.wait_for_line("need root", T);
        assert_eq!(emp.wait_exit(T).code(), Some(2));
        panic!(
            "uid/gid could not be tested: this test must run as root (the emperor refused \
             clearly, as it should: {out})"
        );
    }
    let (uid, gid) = nobody();
    std::os::unix::fs::chown(&run, Some(uid), Some(gid)).unwrap();
    for key in ["autoload", "master", "workers", "no-orphans"] {
        let line = emp.wait_for_line(
            &format!("`{key}` has no meaning for the emperor; ignored"),
            T,
        );
        assert!(line.contains(&ini.display().to_string()), "{line}");
    }
    emp.wait_for_line("dropped privileges: now running as user nobody", T);
    emp.wait_for_line("Starting the Emperor", T);
    emp.wait_for_line("vassal app.ini is ready to accept requests", T);
    let (status, body) = hello(&sock);
    assert_eq!(status, 200);
    assert!(body.starts_with(b"Hello from uWSGI"));

    let me = emp.pid() as i32;
    assert_eq!(proc_ids(me, "Uid"), vec![uid; 4]);
    assert_eq!(proc_ids(me, "Gid"), vec![gid; 4]);
    let doc = stats(&work.path().join("stats.sock"));
    assert_eq!(
        (doc["uid"].as_u64(), doc["gid"].as_u64()),
        (Some(uid.into()), Some(gid.into()))
    );
    // (A vassal's own uid/gid in the stats is its file's owner, as in uWSGI.)
    let v = vassal(&doc, "app.ini").expect("app.ini in the stats");
    let vassal_pid = v["pid"].as_i64().unwrap() as i32;
    assert_eq!(proc_ids(vassal_pid, "Uid"), vec![uid; 4]);
    assert_eq!(proc_ids(vassal_pid, "Gid"), vec![gid; 4]);

    emp.signal(libc::SIGTERM);
    emp.wait_exit(T);
    assert!(
        !exists(vassal_pid),
        "vassal {vassal_pid} outlived the emperor"
    );
}

#[test]
fn uid_without_root_is_a_clear_error() {
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ini = work.path().join("emperor.ini");
    std::fs::write(&ini, "[uwsgi]\nemperor = /nonexistent\nuid = daemon\n").unwrap();
    // As root, the emperor is started as nobody; otherwise as whoever runs the tests.
    let mut cmd = if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_emperor"));
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_emperor"))
    };
    cmd.arg("--ini").arg(&ini).current_dir(work.path());
    let mut emp = Proc::spawn(cmd);
    let line = emp.wait_for_line("need root", T);
    assert!(line.contains("user daemon"), "{line}");
    assert_eq!(emp.wait_exit(T).code(), Some(2));
}

#[test]
fn logto_appends_the_emperor_and_vassal_output_to_a_file() {
    let (work, dir) = work_dir();
    std::fs::write(dir.join("chatty.ini"), "[uwsgi]\n").unwrap();
    let script = chatty_vassal(work.path());
    let log = work.path().join("emperor.log");
    let ini = work.path().join("emperor.ini");
    std::fs::write(
        &ini,
        format!(
            "[uwsgi]\nemperor = %dvassals\nlogto = %demperor.log\nemperor-wrapper = {}\n\
             reload-mercy = 1\nvacuum = true\n",
            script.display()
        ),
    )
    .unwrap();

    let mut emp = emperor_ini(work.path(), &ini);
    let text = wait_file(&log, "vassal chatty.ini says hello on stderr", 1);
    let text = if text.contains("says hello on stdout") {
        text
    } else {
        wait_file(&log, "vassal chatty.ini says hello on stdout", 1)
    };
    assert!(text.contains("Starting the Emperor"), "{text}");
    assert!(
        text.contains("`vacuum` has no meaning for the emperor; ignored"),
        "{text}"
    );
    // The umask is read from /proc: umask(2) cannot read it without changing it.
    let umask = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .map(|m| u32::from_str_radix(m.trim(), 8).unwrap())
        .expect("Umask in /proc/self/status");
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640 & !umask, "log file mode {mode:o}");
    emp.signal(libc::SIGTERM);
    emp.wait_exit(T);
    assert_eq!(
        emp.output(),
        "",
        "nothing should reach the emperor's own stderr"
    );
    let first = std::fs::read_to_string(&log).unwrap();

    // A second run appends.
    let mut emp = emperor_ini(work.path(), &ini);
    let text = wait_file(&log, "vassal chatty.ini says hello on stderr", 2);
    assert!(text.starts_with(&first), "{text}");
    assert_eq!(text.matches("Starting the Emperor").count(), 2, "{text}");
    emp.signal(libc::SIGTERM);
    emp.wait_exit(T);
}

#[test]
fn placeholders_expand_and_an_undefined_one_names_the_file() {
    let (work, dir) = work_dir();
    std::fs::write(dir.join("ph.ini"), "[uwsgi]\n").unwrap();
    let script = chatty_vassal(work.path());
    let ini = work.path().join("emperor.ini");
    // Forward references work too, as in uWSGI.
    std::fs::write(
        &ini,
        "[uwsgi]\nemperor = %(vassal-dir)\nemperor-wrapper = %(base)vassal.sh\nbase = %d\n\
         vassal-dir = %(base)vassals\nreload-mercy = 1\n",
    )
    .unwrap();
    let mut emp = emperor_ini(work.path(), &ini);
    let abs = std::path::absolute(&dir).unwrap();
    let line = emp.wait_for_line("Starting the Emperor", T);
    assert!(
        line.ends_with(&format!("over {} ***", abs.display())),
        "{line}"
    );
    for key in ["base", "vassal-dir"] {
        let line = emp.wait_for_line(&format!("unknown option `{key}`, kept as a placeholder"), T);
        assert!(line.contains(&ini.display().to_string()), "{line}");
    }
    emp.wait_for_line("vassal ph.ini says hello on stdout", T);
    assert!(script.exists());
    emp.signal(libc::SIGTERM);
    emp.wait_exit(T);

    let bad = work.path().join("bad.ini");
    std::fs::write(&bad, "[uwsgi]\nemperor = %(vassals-dir)\n").unwrap();
    let mut emp = emperor_ini(work.path(), &bad);
    let line = emp.wait_for_line("%(vassals-dir)", T);
    assert!(line.contains(&bad.display().to_string()), "{line}");
    assert_eq!(emp.wait_exit(T).code(), Some(2));
}

/// Waits until `pid` has exited: gone, or a zombie (a daemon is not our child, and whoever
/// adopted it may reap it late).
fn wait_dead(pid: i32) {
    let deadline = Instant::now() + T;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the parenthesised command name.
        let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
        if matches!(state, None | Some("Z") | Some("X")) {
            return;
        }
        assert!(Instant::now() < deadline, "pid {pid} still runs: {stat}");
        // Poll interval of a deadline-bounded wait on a process that is not our child.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills a daemonized emperor (and its process group) if a test fails before stopping it.
struct Daemon(i32);

impl Drop for Daemon {
    fn drop(&mut self) {
        if !exists(self.0) {
            return;
        }
        // SAFETY: getpgid and kill have no memory effects.
        unsafe {
            let pgid = libc::getpgid(self.0);
            if pgid > 0 && pgid != libc::getpgid(0) {
                libc::kill(-pgid, libc::SIGKILL);
            }
            libc::kill(self.0, libc::SIGKILL);
        }
    }
}

#[test]
fn daemonize_detaches_logs_to_the_file_and_writes_the_pidfile() {
    let (work, dir) = work_dir();
    std::fs::write(dir.join("bg.ini"), "[uwsgi]\n").unwrap();
    let script = chatty_vassal(work.path());
    let log = work.path().join("daemon.log");
    let pidfile = work.path().join("emperor.pid");
    let ini = work.path().join("emperor.ini");
    std::fs::write(
        &ini,
        format!(
            "[uwsgi]\nemperor = %dvassals\ndaemonize = %ddaemon.log\npidfile = %demperor.pid\n\
             emperor-wrapper = {}\nreload-mercy = 1\n",
            script.display()
        ),
    )
    .unwrap();
    let mut launcher = emperor_ini(work.path(), &ini);
    // The process we started returns at once; the emperor lives on in the background.
    let status = launcher.wait_exit(T);
    assert!(status.success(), "{status:?}: {}", launcher.output());
    let text = wait_file(&log, "vassal bg.ini says hello on stdout", 1);
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _guard = Daemon(pid);
    assert!(
        text.contains(&format!("Starting the Emperor (pid: {pid})")),
        "{text}"
    );
    assert_ne!(pid, launcher.pid() as i32);
    // A new session, of which it is not the leader (so it can never get a terminal).
    // SAFETY: getsid has no memory effects.
    let (sid, ours) = unsafe { (libc::getsid(pid), libc::getsid(0)) };
    assert!(
        sid > 0 && sid != ours && sid != pid,
        "sid {sid}, ours {ours}, pid {pid}"
    );
    signal(pid, libc::SIGTERM);
    wait_dead(pid);
    assert!(!pidfile.exists(), "the pidfile is removed at exit");
    assert!(wait_file(&log, "vassal bg.ini", 1).contains("says hello on stderr"));
}

#[test]
fn umask_chdir_env_and_unenv_reach_the_vassals() {
    let work = tempfile::tempdir().unwrap();
    let sub = work.path().join("sub");
    let dir = sub.join("vassals");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("env.ini"), "[uwsgi]\n").unwrap();
    let script = work.path().join("env.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"vassal $2 GREETING=$GREETING DROPME=${DROPME-unset} \
         umask=$(umask)\"\nexec sleep 600\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ini = work.path().join("emperor.ini");
    // After chdir, `vassals` and `emperor.log` are relative to sub/.
    std::fs::write(
        &ini,
        format!(
            "[uwsgi]\nchdir = %dsub\nemperor = vassals\nlogto = emperor.log\n\
             env = GREETING=hello there\nunenv = DROPME\numask = 027\n\
             emperor-wrapper = {}\nreload-mercy = 1\n",
            script.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emperor"));
    cmd.arg("--ini")
        .arg(&ini)
        .env("DROPME", "1")
        .env("EMPEROR_LOG", "info")
        .current_dir(work.path());
    let mut emp = Proc::spawn(cmd);
    let log = sub.join("emperor.log");
    let text = wait_file(&log, "vassal env.ini GREETING=", 1);
    assert!(
        text.contains("vassal env.ini GREETING=hello there DROPME=unset umask=0027"),
        "{text}"
    );
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "log file mode {mode:o} (umask 027)");
    emp.signal(libc::SIGTERM);
    emp.wait_exit(T);
}
