//! Each vassal's process tree is owned by the emperor: what a vassal forks into the background
//! does not survive the vassal's `rm` or the emperor's shutdown — with a cgroup v2 per vassal
//! (also for children that leave the process group with `setsid`) and with the process-group
//! fallback.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// A tag unique to one test of this run, carried by its background children's argv
/// (`sleep 9999.TAG`), so they can be found in /proc whatever their parent or group.
fn tag() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Live processes (zombies have no cmdline) whose argv is `sleep 9999.TAG`.
fn tree(tag: &str) -> Vec<i32> {
    let want = format!("sleep\09999.{tag}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c == want.as_bytes())
                .unwrap_or(false)
        })
        .collect()
}

/// Polls /proc until exactly `n` processes of `tag` are alive.
fn wait_tree(emperor: &mut Proc, tag: &str, n: usize, what: &str) -> Vec<i32> {
    let deadline = Instant::now() + T;
    loop {
        let t = tree(tag);
        if t.len() == n {
            return t;
        }
        if Instant::now() > deadline {
            panic!(
                "{what}: {} processes of the vassal's tree alive, expected {n}; output:\n{}",
                t.len(),
                emperor.output()
            );
        }
        // Poll interval of a deadline-bounded wait on processes appearing or dying.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A uWSGI vassal whose master forks `plain` background children before loading its app,
/// and `escaped` more that leave its session and process group (`setsid`).
fn write_forking_vassal(dir: &Path, work: &Path, tag: &str, plain: u32, escaped: u32) -> PathBuf {
    let p = dir.join("forker.ini");
    let sock = work.join("forker.sock");
    std::fs::write(
        &p,
        format!(
            "[uwsgi]\nplugin = python3\nmaster = true\nprocesses = 1\nsocket = {}\n\
             exec-pre-app = sh -c 'i=0; while [ $i -lt {plain} ]; do sleep 9999.{tag} & i=$((i+1)); done; \
             i=0; while [ $i -lt {escaped} ]; do setsid sleep 9999.{tag} & i=$((i+1)); done'\n",
            sock.display()
        ),
    )
    .unwrap();
    p
}

/// `0::PATH` of `/proc/PID/cgroup`.
fn cgroup_of(pid: i32) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    emperor::spawn::cgroup::v2_path(&s).map(str::to_string)
}

/// The cgroup v2 mount point, when this test may create cgroups (root); `None` (with a note)
/// otherwise.
fn cgroup_mount() -> Option<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let m = emperor::spawn::cgroup::cgroup2_mount(&mi);
    if m.is_none() || !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root and a cgroup v2 file system (found {m:?})");
        return None;
    }
    m
}

fn dir_of(mount: &Path, path: &str) -> PathBuf {
    mount.join(path.trim_start_matches('/'))
}

struct Setup {
    emperor: Proc,
    stats: PathBuf,
    vassal: PathBuf,
    tag: String,
    _d: tempfile::TempDir,
}

/// An emperor in `mode` over one forking vassal, once all `plain + escaped` children run.
fn start(mode: &str, plain: u32, escaped: u32) -> Setup {
    require_uwsgi();
    let d = tempfile::tempdir().unwrap();
    let vassals = d.path().join("vassals");
    std::fs::create_dir(&vassals).unwrap();
    let tag = tag();
    let vassal = write_forking_vassal(&vassals, d.path(), &tag, plain, escaped);
    let (mut emperor, stats) = start_emperor(
        d.path(),
        &vassals,
        &[&format!("--emperor-process-tree={mode}")],
    );
    wait_tree(
        &mut emperor,
        &tag,
        (plain + escaped) as usize,
        "the vassal's background children starting",
    );
    // Stopped only once it serves (a uWSGI master told to stop while its worker is still
    // starting may wait for that worker until it is killed).
    wait_vassal(&mut emperor, &stats, "forker.ini", T, "accepting", |v| {
        v["accepting"] == 1
    });
    Setup {
        emperor,
        stats,
        vassal,
        tag,
        _d: d,
    }
}

#[test]
fn cgroup_rm_leaves_no_process_and_no_cgroup() {
    let Some(mount) = cgroup_mount() else { return };
    let mut s = start("cgroup", 200, 20);
    let doc = stats(&s.stats);
    let tree_label = doc["process_tree"].as_str().unwrap().to_string();
    let base = tree_label
        .strip_prefix("cgroup2:")
        .unwrap_or_else(|| panic!("process_tree is {tree_label:?}"));
    let v = wait_vassal(&mut s.emperor, &s.stats, "forker.ini", T, "running", |v| {
        v["pid"].as_i64().unwrap_or(-1) > 0
    });
    let cg = v["cgroup"].as_str().unwrap().to_string();
    assert_eq!(cg, format!("{base}/vassals/forker.ini"));
    assert_eq!(
        cgroup_of(v["pid"].as_i64().unwrap() as i32).as_deref(),
        Some(cg.as_str())
    );
    assert_eq!(
        cgroup_of(s.emperor.pid() as i32).as_deref(),
        Some(format!("{base}/emperor").as_str())
    );
    for pid in tree(&s.tag) {
        // A process that exited meanwhile has no cgroup to show; every live one is in it.
        if let Some(c) = cgroup_of(pid) {
            assert_eq!(c, cg, "pid {pid}");
        }
    }
    std::fs::remove_file(&s.vassal).unwrap();
    wait_tree(&mut s.emperor, &s.tag, 0, "after rm of the vassal's config");
    let dir = dir_of(&mount, &cg);
    let deadline = Instant::now() + T;
    while dir.exists() {
        assert!(
            Instant::now() < deadline,
            "{} was not removed",
            dir.display()
        );
        // Poll interval of a deadline-bounded wait on the cgroup's removal.
        std::thread::sleep(Duration::from_millis(20));
    }
    s.emperor.signal(libc::SIGTERM);
    assert!(s.emperor.wait_exit(T).success());
    assert!(
        !dir_of(&mount, base).exists(),
        "{base} is left after shutdown"
    );
}

/// The emperor's cgroup (its stats `process_tree` is `cgroup2:PATH`).
fn cgroup_base(stats_path: &Path) -> String {
    stats(stats_path)["process_tree"]
        .as_str()
        .unwrap()
        .strip_prefix("cgroup2:")
        .unwrap()
        .to_string()
}

#[test]
fn cgroup_shutdown_leaves_no_process_and_no_cgroup() {
    let Some(mount) = cgroup_mount() else { return };
    let mut s = start("cgroup", 200, 20);
    let base = cgroup_base(&s.stats);
    s.emperor.signal(libc::SIGTERM);
    assert!(s.emperor.wait_exit(T).success());
    assert_eq!(tree(&s.tag), Vec::<i32>::new(), "left after SIGTERM");
    assert!(
        !dir_of(&mount, &base).exists(),
        "{base} is left after shutdown"
    );
}

#[test]
fn pgroup_rm_leaves_no_process() {
    let mut s = start("pgroup", 200, 0);
    let doc = stats(&s.stats);
    assert_eq!(doc["process_tree"], "pgroup");
    let v = wait_vassal(&mut s.emperor, &s.stats, "forker.ini", T, "running", |v| {
        v["pid"].as_i64().unwrap_or(-1) > 0
    });
    assert!(v["cgroup"].is_null(), "{v}");
    // The vassal leads its own group, and its children stay in it.
    let pid = v["pid"].as_i64().unwrap() as i32;
    let pgid = |p: i32| nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(p))).ok();
    assert_eq!(pgid(pid).map(|g| g.as_raw()), Some(pid));
    for c in tree(&s.tag) {
        if let Some(g) = pgid(c) {
            assert_eq!(g.as_raw(), pid, "pid {c}");
        }
    }
    std::fs::remove_file(&s.vassal).unwrap();
    wait_tree(&mut s.emperor, &s.tag, 0, "after rm of the vassal's config");
}

#[test]
fn pgroup_shutdown_leaves_no_process() {
    let mut s = start("pgroup", 200, 0);
    s.emperor.signal(libc::SIGTERM);
    assert!(s.emperor.wait_exit(T).success());
    assert_eq!(tree(&s.tag), Vec::<i32>::new(), "left after SIGTERM");
}

/// The emperor as `nobody`, which may not create cgroups where the test runs.
fn as_nobody(work: &Path, mode: &str) -> std::process::Command {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_emperor"))
        .arg(work)
        .arg(format!("--emperor-process-tree={mode}"))
        .env("EMPEROR_LOG", "info")
        .current_dir(work);
    cmd
}

#[test]
fn where_cgroups_are_unusable_auto_falls_back_and_cgroup_is_refused() {
    if cgroup_mount().is_none() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let out = as_nobody(d.path(), "cgroup").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("Delegate=yes") && err.contains("--emperor-process-tree=pgroup"),
        "{err}"
    );
    let mut emperor = Proc::spawn(as_nobody(d.path(), "auto"));
    let line = emperor.wait_for_line("process tree:", T);
    assert!(line.contains("process tree: pgroup"), "{line}");
}

#[test]
fn cgroups_of_a_sigkilled_emperor_are_cleaned_up_by_the_next_one() {
    let Some(mount) = cgroup_mount() else { return };
    let mut s = start("cgroup", 50, 5);
    let base = cgroup_base(&s.stats);
    let pid = s.emperor.pid() as i32;
    signal(pid, libc::SIGKILL);
    s.emperor.wait_exit(T);
    // Its vassal dies with it (PDEATHSIG); what the vassal forked is left in its cgroup.
    assert!(dir_of(&mount, &base).exists());
    assert!(!tree(&s.tag).is_empty());
    let d = tempfile::tempdir().unwrap();
    let (mut next, _) = start_emperor(d.path(), d.path(), &["--emperor-process-tree=cgroup"]);
    next.wait_for_line(&format!("left by an emperor that is gone (pid {pid})"), T);
    assert!(!dir_of(&mount, &base).exists(), "{base} is left");
    wait_tree(&mut next, &s.tag, 0, "after the next emperor started");
    next.signal(libc::SIGTERM);
    assert!(next.wait_exit(T).success());
}

/// A plain program as the vassal (through `--emperor-wrapper`): its first run forks `n`
/// background children and exits 1; later runs wait for the emperor's stop byte and exit 0.
fn write_exiting_wrapper(work: &Path, tag: &str, n: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let w = work.join("wrapper.sh");
    std::fs::write(
        &w,
        format!(
            "#!/bin/sh\nif [ ! -e {once} ]; then\n  : > {once}\n  \
             i=0; while [ $i -lt {n} ]; do sleep 9999.{tag} & i=$((i+1)); done\n  exit 1\nfi\n\
             eval \"head -c 1 <&$UWSGI_EMPEROR_FD\" > /dev/null\nexit 0\n",
            once = work.join("once").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755)).unwrap();
    w
}

/// The case: a vassal forks many children and exits. They go with its exit (before
/// it is started again), not only at `rm`.
fn exiting_vassal_takes_its_children_with_it(mode: &str, n: u32) {
    let d = tempfile::tempdir().unwrap();
    let vassals = d.path().join("vassals");
    std::fs::create_dir(&vassals).unwrap();
    let tag = tag();
    let w = write_exiting_wrapper(d.path(), &tag, n);
    std::fs::write(vassals.join("forker.ini"), "[uwsgi]\n").unwrap();
    let (mut emperor, _stats) = start_emperor(
        d.path(),
        &vassals,
        &[
            &format!("--emperor-process-tree={mode}"),
            "--emperor-wrapper",
            w.to_str().unwrap(),
            "--emperor-throttle",
            "100",
        ],
    );
    emperor.wait_for_line("started vassal forker.ini", T);
    emperor.wait_for_new_line("started vassal forker.ini", T);
    wait_tree(&mut emperor, &tag, 0, "after the vassal exited");
    std::fs::remove_file(vassals.join("forker.ini")).unwrap();
    emperor.wait_for_line("removed uwsgi instance forker.ini", T);
    emperor.signal(libc::SIGTERM);
    assert!(emperor.wait_exit(T).success());
}

#[test]
fn cgroup_a_vassal_that_forks_1000_children_and_exits_leaves_none() {
    if cgroup_mount().is_none() {
        return;
    }
    exiting_vassal_takes_its_children_with_it("cgroup", 1000);
}

#[test]
fn pgroup_a_vassal_that_forks_children_and_exits_leaves_none() {
    exiting_vassal_takes_its_children_with_it("pgroup", 200);
}

#[test]
fn a_cgroup_namespace_of_a_vassal_is_rooted_at_its_own_cgroup() {
    use std::os::unix::fs::PermissionsExt;
    if cgroup_mount().is_none() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let vassals = d.path().join("vassals");
    std::fs::create_dir(&vassals).unwrap();
    let out = d.path().join("seen");
    let w = d.path().join("wrapper.sh");
    std::fs::write(
        &w,
        format!(
            "#!/bin/sh\ngrep ^0:: /proc/self/cgroup > {out}.tmp && mv {out}.tmp {out}\n\
             eval \"head -c 1 <&$UWSGI_EMPEROR_FD\" > /dev/null\n",
            out = out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(vassals.join("ns.ini"), "[uwsgi]\n").unwrap();
    let (mut emperor, st) = start_emperor(
        d.path(),
        &vassals,
        &[
            "--emperor-process-tree=cgroup",
            "--emperor-wrapper",
            w.to_str().unwrap(),
            "--emperor-use-clone",
            "cgroup",
        ],
    );
    let v = wait_running(&mut emperor, &st, "ns.ini");
    let deadline = Instant::now() + T;
    while !out.exists() {
        assert!(Instant::now() < deadline, "{}", emperor.output());
        // Poll interval of a deadline-bounded wait on the vassal writing its file.
        std::thread::sleep(Duration::from_millis(20));
    }
    // Inside: its own cgroup is the root of its namespace; outside: vassals/ns.ini.
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "0::/\n");
    assert!(
        v["cgroup"].as_str().unwrap().ends_with("/vassals/ns.ini"),
        "{v}"
    );
    assert_eq!(
        cgroup_of(v["pid"].as_i64().unwrap() as i32).as_deref(),
        v["cgroup"].as_str()
    );
    emperor.signal(libc::SIGTERM);
    assert!(emperor.wait_exit(T).success());
}

#[test]
fn an_emperor_that_drops_privileges_keeps_its_vassal_cgroups() {
    use std::os::unix::fs::PermissionsExt;
    if cgroup_mount().is_none() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let vassals = d.path().join("vassals");
    std::fs::create_dir(&vassals).unwrap();
    let tag = tag();
    let w = write_exiting_wrapper(d.path(), &tag, 100);
    std::fs::write(vassals.join("forker.ini"), "[uwsgi]\n").unwrap();
    let (mut emperor, st) = start_emperor(
        d.path(),
        &vassals,
        &[
            "--emperor-process-tree=cgroup",
            "--uid",
            "65534",
            "--gid",
            "65534",
            "--emperor-wrapper",
            w.to_str().unwrap(),
            "--emperor-throttle",
            "100",
        ],
    );
    emperor.wait_for_line("dropped privileges", T);
    emperor.wait_for_line("started vassal forker.ini", T);
    emperor.wait_for_new_line("started vassal forker.ini", T);
    wait_tree(&mut emperor, &tag, 0, "after the vassal exited");
    let v = wait_running(&mut emperor, &st, "forker.ini");
    let cg = v["cgroup"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}\n{}", emperor.output()));
    assert_eq!(
        cgroup_of(v["pid"].as_i64().unwrap() as i32).as_deref(),
        Some(cg)
    );
    let out = emperor.output();
    assert!(!out.contains("cannot create a cgroup"), "{out}");
    emperor.signal(libc::SIGTERM);
    assert!(emperor.wait_exit(T).success());
}
