//! Symlinked vassal configs (`vassals/app.ini -> /srv/app/uwsgi.ini`, the common deploy
//! layout): editing or touching the target, `touch` of the link and deleting the target reload
//! or stop the vassal like uWSGI, which stats through the link. With `--emperor-nofollow` the
//! link itself is what counts. Real uWSGI vassals; the safety pass is pushed out of the way
//! (`--emperor-freq 3600`), so what is seen is seen through inotify on the targets' directory.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// `touch -h`: sets a symlink's own mtime one second ahead.
fn touch_link(p: &Path) {
    let t = nix::sys::time::TimeSpec::from(
        (std::time::SystemTime::now() + Duration::from_secs(1))
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap(),
    );
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

fn respawns(st: &Path) -> u64 {
    vassal(&stats(st), "app.ini").unwrap()["respawns"]
        .as_u64()
        .unwrap()
}

#[test]
fn changes_to_a_symlinked_config_reload_and_stop_the_vassal() {
    require_uwsgi();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("vassals");
    let srv = work.path().join("srv").join("app");
    std::fs::create_dir(&dir).unwrap();
    std::fs::create_dir_all(&srv).unwrap();
    let sock = work.path().join("app.sock");
    let target = write_vassal(&srv, "uwsgi.ini", &sock, "");
    // uWSGI's %d is the directory of the link: the app is found there.
    write_hello_app(&dir);
    // A relative link, as `ln -s ../srv/app/uwsgi.ini vassals/app.ini` makes it.
    std::os::unix::fs::symlink("../srv/app/uwsgi.ini", dir.join("app.ini")).unwrap();
    let (mut emp, st) = start_emperor(work.path(), &dir, &["--emperor-freq", "3600"]);
    emp.wait_for_line("vassal app.ini is ready to accept requests", T);
    assert_eq!(hello(&sock).0, 200);
    let pid = vassal(&stats(&st), "app.ini").unwrap()["pid"]
        .as_i64()
        .unwrap();

    // The target edited in place.
    let text = std::fs::read_to_string(&target).unwrap();
    std::fs::write(&target, format!("{text}# edited\n")).unwrap();
    emp.wait_for_new_line("reloading vassal app.ini (config changed)", T);
    emp.wait_for_new_line("vassal app.ini is ready to accept requests", T);
    assert_eq!(respawns(&st), 1);

    // `touch vassals/app.ini` (touch follows the link: the target's mtime changes).
    touch(&dir.join("app.ini"));
    emp.wait_for_new_line("reloading vassal app.ini (config changed)", T);
    emp.wait_for_new_line("vassal app.ini is ready to accept requests", T);
    assert_eq!(respawns(&st), 2);

    // An editor replacing the target (write a new file, rename it over the old one).
    std::fs::write(srv.join(".uwsgi.ini.swp"), format!("{text}# saved\n")).unwrap();
    std::fs::rename(srv.join(".uwsgi.ini.swp"), &target).unwrap();
    emp.wait_for_new_line("reloading vassal app.ini (config changed)", T);
    emp.wait_for_new_line("vassal app.ini is ready to accept requests", T);
    assert_eq!(respawns(&st), 3);
    let v = vassal(&stats(&st), "app.ini").unwrap();
    assert_eq!(v["pid"].as_i64().unwrap(), pid, "a reload keeps the pid");

    // The target deleted: the link dangles, the vassal stops.
    std::fs::remove_file(&target).unwrap();
    emp.wait_for_line("config of vassal app.ini is gone: stopping it", T);
    emp.wait_for_line("removed uwsgi instance app.ini", T);
    assert!(vassal(&stats(&st), "app.ini").is_none());

    // ... and it comes back with the target.
    std::fs::write(&target, &text).unwrap();
    emp.wait_for_new_line("vassal app.ini is ready to accept requests", T);
    assert_eq!(hello(&sock).0, 200);
}

#[test]
fn with_nofollow_the_link_itself_counts() {
    require_uwsgi();
    let (work, dir, srv) = work_dir_with_srv();
    let sock = work.path().join("app.sock");
    let target = write_vassal(&srv, "uwsgi.ini", &sock, "");
    let link = dir.join("app.ini");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (mut emp, st) = start_emperor(
        work.path(),
        &dir,
        &["--emperor-freq", "3600", "--emperor-nofollow"],
    );
    emp.wait_for_line("vassal app.ini is ready to accept requests", T);
    // The target touched: not a change of the link. Then the link touched (`touch -h`): one
    // reload, for the link.
    touch(&target);
    touch_link(&link);
    emp.wait_for_new_line("reloading vassal app.ini (config changed)", T);
    emp.wait_for_new_line("vassal app.ini is ready to accept requests", T);
    // A full rescan (SIGWINCH) stats the link again, not through it: still one reload.
    emp.signal(libc::SIGWINCH);
    std::os::unix::fs::symlink(&target, dir.join("other.ini")).unwrap();
    emp.wait_for_line("vassal other.ini is ready to accept requests", T);
    assert_eq!(respawns(&st), 1);
    // The target deleted: the link is still there, so the vassal keeps running.
    std::fs::remove_file(&target).unwrap();
    emp.signal(libc::SIGWINCH);
    std::fs::remove_file(dir.join("other.ini")).unwrap();
    emp.wait_for_line("removed uwsgi instance other.ini", T);
    let v = vassal(&stats(&st), "app.ini").expect("app.ini still runs");
    assert_eq!(v["respawns"], 1);
}
