//! Tyrant mode end to end, as root: throwaway users and groups own the vassal files; the
//! vassals (shell scripts speaking the channel protocol, run through --emperor-wrapper) are
//! checked in /proc for the uid, gid and groups they run with.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

/// A throwaway user (with its own group, and optionally an extra group), removed on drop.
struct User {
    name: String,
    extra_group: Option<String>,
    uid: u32,
    gid: u32,
}

fn run(cmd: &str, args: &[&str]) {
    let st = Command::new(cmd)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(st.success(), "{cmd} {args:?} failed: {st}");
}

fn group_id(name: &str) -> u32 {
    let out = Command::new("getent")
        .args(["group", name])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    line.split(':').nth(2).unwrap().trim().parse().unwrap()
}

fn id_of(flag: &str, name: &str) -> u32 {
    let out = Command::new("id").args([flag, name]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

impl User {
    fn new(tag: &str, with_extra_group: bool) -> User {
        assert_eq!(
            nix::unistd::geteuid().as_raw(),
            0,
            "tyrant tests create users and must run as root"
        );
        let name = format!("empt{}{tag}", std::process::id());
        let extra_group = with_extra_group.then(|| format!("empg{}{tag}", std::process::id()));
        let mut u = User {
            name: name.clone(),
            extra_group: extra_group.clone(),
            uid: 0,
            gid: 0,
        };
        if let Some(g) = &extra_group {
            run("groupadd", &[g]);
        }
        let mut args = vec!["--no-create-home", "--shell", "/bin/sh", "--user-group"];
        if let Some(g) = &extra_group {
            args.extend(["-G", g.as_str()]);
        }
        args.push(&name);
        run("useradd", &args);
        u.uid = id_of("-u", &name);
        u.gid = id_of("-g", &name);
        u
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let quiet = |cmd: &str, args: &[&str]| {
            let _ = Command::new(cmd)
                .args(args)
                .stderr(std::process::Stdio::null())
                .status();
        };
        quiet("userdel", &["-f", &self.name]);
        // userdel removes the user's own group; this is for when it did not.
        quiet("groupdel", &[&self.name]);
        if let Some(g) = &self.extra_group {
            quiet("groupdel", &[g]);
        }
    }
}

/// (uid, gid, supplementary groups) of a running process.
fn creds(pid: i32) -> (u32, u32, Vec<u32>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect()
    };
    (field("Uid:")[0], field("Gid:")[0], field("Groups:"))
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let (work, dir) = shared_work_dir();
    std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o755)).unwrap();
    let script = write_loyal_script(work.path());
    (work, dir, script)
}

fn running_pid(emp: &mut Proc, st: &Path, id: &str) -> i32 {
    let v = wait_vassal(emp, st, id, T, "loyal", |v| {
        v["loyal"] == 1 && v["pid"].as_i64().unwrap_or(-1) > 0
    });
    v["pid"].as_i64().unwrap() as i32
}

#[test]
fn vassals_run_as_their_file_owner_root_owned_files_are_refused_and_owner_changes_stop() {
    let a = User::new("a", false);
    let b = User::new("b", false);
    let (work, dir, script) = setup();
    let app = dir.join("app.ini");
    std::fs::write(&app, "[uwsgi]\n").unwrap();
    chown(&app, a.uid, a.gid);
    let rooted = dir.join("rooted.ini");
    std::fs::write(&rooted, "[uwsgi]\n").unwrap();
    let (mut emp, st) = start_emperor(
        work.path(),
        &dir,
        &[
            "--emperor-tyrant",
            "--emperor-wrapper",
            script.to_str().unwrap(),
        ],
    );
    let pid = running_pid(&mut emp, &st, "app.ini");
    assert_eq!(creds(pid), (a.uid, a.gid, vec![]));
    let doc = stats(&st);
    assert_eq!(doc["emperor_tyrant"], 1);
    let v = vassal(&doc, "app.ini").unwrap();
    assert_eq!(
        (v["uid"].as_u64(), v["gid"].as_u64()),
        (Some(a.uid.into()), Some(a.gid.into()))
    );

    // Root-owned: refused with the reason and the fix, no record.
    let line = emp.wait_for_line("tyrant mode refuses vassal rooted.ini", T);
    assert!(
        line.contains("user root and group root") && line.contains("chown app:app"),
        "{line}"
    );
    assert!(vassal(&stats(&st), "rooted.ini").is_none());
    // Group root alone is refused too.
    chown(&rooted, b.uid, 0);
    emp.wait_for_line("is owned by group root (uid", T);
    // Chowned to an app user: it starts by itself, as that user.
    chown(&rooted, b.uid, b.gid);
    emp.wait_for_line("is no longer owned by root", T);
    let rpid = running_pid(&mut emp, &st, "rooted.ini");
    assert_eq!(creds(rpid), (b.uid, b.gid, vec![]));

    // An owner change stops the vassal; it comes back as the new owner.
    chown(&app, b.uid, b.gid);
    emp.wait_for_line("owner of vassal app.ini changed", T);
    wait_gone(pid, T);
    let v = wait_vassal(&mut emp, &st, "app.ini", T, "restarted", |v| {
        v["loyal"] == 1 && v["pid"].as_i64().unwrap_or(-1) > 0 && v["pid"] != pid
    });
    let pid2 = v["pid"].as_i64().unwrap() as i32;
    assert_eq!(creds(pid2), (b.uid, b.gid, vec![]));

    // Chowned back to root: stopped and refused.
    chown(&app, 0, 0);
    emp.wait_for_line("tyrant mode refuses vassal app.ini", T);
    wait_gone(pid2, T);
    emp.wait_for_line("removed uwsgi instance app.ini", T);

    emp.signal(libc::SIGTERM);
    emp.wait_for_line("The Emperor is buried.", T);
    wait_gone(rpid, T);
}

#[test]
fn initgroups_gives_the_owners_groups_and_nofollow_takes_the_owner_from_the_link() {
    let a = User::new("c", true);
    let (work, dir, script) = setup();
    // The target is root's; the link is the user's.
    let target = work.path().join("target.ini");
    std::fs::write(&target, "[uwsgi]\n").unwrap();
    let link = dir.join("link.ini");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    chown(&link, a.uid, a.gid);

    // Following the link, the owner is root: refused.
    let (mut emp, _st) = start_emperor(
        work.path(),
        &dir,
        &[
            "--emperor-tyrant",
            "--emperor-wrapper",
            script.to_str().unwrap(),
        ],
    );
    emp.wait_for_line("tyrant mode refuses vassal link.ini", T);
    emp.signal(libc::SIGTERM);
    emp.wait_for_line("The Emperor is buried.", T);
    emp.wait_exit(T);
    drop(emp);
    std::fs::remove_file(work.path().join("stats.sock")).ok();

    let (mut emp, st) = start_emperor(
        work.path(),
        &dir,
        &[
            "--emperor-tyrant",
            "--emperor-tyrant-nofollow",
            "--emperor-tyrant-initgroups",
            "--emperor-wrapper",
            script.to_str().unwrap(),
        ],
    );
    let pid = running_pid(&mut emp, &st, "link.ini");
    let (uid, gid, groups) = creds(pid);
    assert_eq!((uid, gid), (a.uid, a.gid));
    let extra_gid = group_id(a.extra_group.as_deref().unwrap());
    assert!(
        groups.contains(&a.gid) && groups.contains(&extra_gid),
        "groups {groups:?}, expected {} and {extra_gid}",
        a.gid
    );
    emp.signal(libc::SIGTERM);
    emp.wait_for_line("The Emperor is buried.", T);
}

#[test]
fn a_real_uwsgi_vassal_runs_as_the_owner_and_exec_as_vassal_runs_as_that_user_too() {
    require_uwsgi();
    let a = User::new("u", false);
    let (work, dir, _script) = setup();
    // A directory the user may create its socket in.
    let run_dir = work.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    chown(&run_dir, a.uid, a.gid);
    let sock = run_dir.join("app.sock");
    let ini = write_vassal(&dir, "app.ini", &sock, "");
    chown(&ini, a.uid, a.gid);
    let whoami = run_dir.join("whoami");
    let cmd = format!("id -u > {}", whoami.display());
    let (mut emp, st) = start_emperor(
        work.path(),
        &dir,
        &["--emperor-tyrant", "--exec-as-vassal", &cmd],
    );
    let v = wait_vassal(&mut emp, &st, "app.ini", T, "accepting", |v| {
        v["accepting"] == 1
    });
    let pid = v["pid"].as_i64().unwrap() as i32;
    assert_eq!(creds(pid), (a.uid, a.gid, vec![]));
    for w in children(pid) {
        assert_eq!(creds(w).0, a.uid, "worker {w}");
    }
    assert_eq!(
        std::fs::read_to_string(&whoami).unwrap().trim(),
        a.uid.to_string()
    );
    assert_eq!(hello(&sock).0, 200);
    emp.wait_for_line("vassal app.ini is now loyal", T);
    emp.signal(libc::SIGTERM);
    emp.wait_for_line("The Emperor is buried.", T);
    wait_gone(pid, T);
}

#[test]
fn an_unprivileged_emperor_reports_that_tyrant_mode_needs_root() {
    let a = User::new("n", false);
    let (work, dir, script) = setup();
    // The unprivileged emperor needs to create its stats socket in the work dir.
    chown(work.path(), 65534, 65534);
    let app = dir.join("app.ini");
    std::fs::write(&app, "[uwsgi]\n").unwrap();
    chown(&app, a.uid, a.gid);
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_emperor"));
    let (mut emp, _st) = start_emperor_with(
        cmd,
        work.path(),
        &dir,
        &[
            "--emperor-tyrant",
            "--emperor-wrapper",
            script.to_str().unwrap(),
        ],
    );
    let line = emp.wait_for_line("cannot start vassal app.ini", T);
    assert!(
        line.contains(&format!(
            "tyrant mode cannot switch to uid {} gid {} (setresgid: Operation not permitted",
            a.uid, a.gid
        )) && line.contains("must run as root"),
        "{line}"
    );
}
