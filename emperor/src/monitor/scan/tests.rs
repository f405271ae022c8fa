//! The scanner against real directories: stamps, skips, the safety pass, globs and symlinked
//! configs.

use std::path::{Path, PathBuf};

use super::*;
use crate::monitor::parse_monitor;

fn names(r: &ScanResult) -> Vec<String> {
    let mut v: Vec<String> = r
        .entries
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| e.name.clone())
        .collect();
    v.sort();
    v
}

#[test]
fn the_literal_prefix_of_a_glob_is_watched() {
    assert_eq!(literal_prefix_dir("/a/b/*/c.ini"), PathBuf::from("/a/b"));
    assert_eq!(literal_prefix_dir("*.ini"), PathBuf::from("."));
}

#[test]
fn dir_scan_stamps_and_skips() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::write(p.join("a.ini"), "[uwsgi]\n").unwrap();
    std::fs::write(p.join("notes.txt"), "x").unwrap();
    std::fs::create_dir(p.join("sub.ini")).unwrap();
    std::os::unix::fs::symlink("loop2.ini", p.join("loop1.ini")).unwrap();
    std::os::unix::fs::symlink("loop1.ini", p.join("loop2.ini")).unwrap();
    let spec = parse_monitor(p.to_str().unwrap(), Path::new("/")).unwrap();
    let mut s = Scanner::new(spec, vec![], false);
    let r = s.scan();
    assert_eq!(names(&r), vec!["a.ini"]);
    assert_eq!(s.reported.len(), 4, "{:?}", s.reported);
    assert!(s.reported["loop1.ini"].contains("loop"));
    let e = &r.entries.unwrap()[0];
    assert_eq!(e.key, p.join("a.ini").display().to_string());
    // Same-size rewrite: the stamp changes (mtime_ns, and usually the inode via rename).
    let before = e.stamp;
    std::fs::write(p.join("tmp"), "[uwsgi]\n").unwrap();
    std::fs::rename(p.join("tmp"), p.join("a.ini")).unwrap();
    let r = s.scan();
    assert_ne!(r.entries.unwrap()[0].stamp, before);
}

#[test]
fn single_names_are_checked_like_a_scan() {
    let d = tempfile::tempdir().unwrap();
    let spec = parse_monitor(d.path().to_str().unwrap(), Path::new("/")).unwrap();
    let mut s = Scanner::new(spec, vec![], false);
    let (key, e) = s.check_name("a.ini").unwrap();
    assert_eq!(key, d.path().join("a.ini").display().to_string());
    assert!(e.is_none());
    std::fs::write(d.path().join("a.ini"), "[uwsgi]\n").unwrap();
    assert_eq!(s.check_name("a.ini").unwrap().1.unwrap().name, "a.ini");
    std::fs::write(d.path().join("b.txt"), "").unwrap();
    assert!(s.check_name("b.txt").unwrap().1.is_none());
    assert!(s.reported.contains_key("b.txt"));
    std::fs::remove_file(d.path().join("b.txt")).unwrap();
    assert!(s.check_name("b.txt").unwrap().1.is_none());
    assert!(!s.reported.contains_key("b.txt"));
}

#[test]
fn filesystems_inotify_does_not_fully_cover() {
    assert_eq!(inotify_sees_all(0xef53), Ok(())); // ext4
    assert_eq!(inotify_sees_all(0x0102_1994), Ok(())); // tmpfs
    assert_eq!(inotify_sees_all(0x5846_5342), Ok(())); // xfs
    assert_eq!(inotify_sees_all(0x6969), Err("nfs"));
    assert_eq!(inotify_sees_all(0xff53_4d42), Err("cifs"));
    assert_eq!(inotify_sees_all(0x6573_5546), Err("fuse"));
    assert_eq!(inotify_sees_all(0x0102_1997), Err("9p"));
    assert_eq!(inotify_sees_all(0x00c3_6400), Err("ceph"));
}

/// Runs safety passes (full scans when asked for) until one says no rescan is needed: the
/// stamp of a directory changed less than a second ago is not trusted yet.
fn settle(s: &mut Scanner) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.needs_rescan(true) {
        s.scan();
        assert!(
            std::time::Instant::now() < deadline,
            "the stamp never settled"
        );
        // Poll interval of a deadline-bounded wait.
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn the_safety_pass_of_a_watched_local_dir_stats_only_the_directory() {
    let d = tempfile::tempdir().unwrap();
    for i in 0..50 {
        std::fs::write(d.path().join(format!("app{i}.ini")), "[uwsgi]\n").unwrap();
    }
    let spec = parse_monitor(d.path().to_str().unwrap(), Path::new("/")).unwrap();
    let mut s = Scanner::new(spec, vec![], false);
    assert_eq!(s.scan().entries.unwrap().len(), 50);
    let f_type: i64 = nix::sys::statfs::statfs(d.path())
        .unwrap()
        .filesystem_type()
        .0 as _;
    if inotify_sees_all(f_type).is_err() {
        // A temp dir on a network filesystem: every pass is a full rescan.
        assert!(s.needs_rescan(true));
        return;
    }
    // Without a live watch (or for a glob monitor) every pass is a full rescan.
    assert!(s.needs_rescan(false));
    settle(&mut s);
    let (scans, stats) = (s.full_scans(), s.file_stats());
    for _ in 0..20 {
        assert!(!s.needs_rescan(true));
    }
    assert_eq!((s.full_scans(), s.file_stats()), (scans, stats));
    // An in-place rewrite does not touch the directory: inotify's IN_CLOSE_WRITE reports
    // it, the safety pass does not.
    std::fs::write(d.path().join("app1.ini"), "[uwsgi]\n# edited\n").unwrap();
    assert!(!s.needs_rescan(true));
    assert_eq!(s.file_stats(), stats);
}

#[test]
fn the_safety_pass_rescans_when_the_directory_changed() {
    let d = tempfile::tempdir().unwrap();
    let v = d.path().join("v");
    std::fs::create_dir(&v).unwrap();
    std::fs::write(v.join("a.ini"), "[uwsgi]\n").unwrap();
    std::fs::write(d.path().join("b.ini"), "[uwsgi]\n").unwrap();
    let spec = parse_monitor(v.to_str().unwrap(), Path::new("/")).unwrap();
    let mut s = Scanner::new(spec, vec![], false);
    s.scan();
    settle(&mut s);
    // A hard link gives inotify an IN_CREATE but never the IN_CLOSE_WRITE the runtime
    // waits for: the directory's stamp changed, so the safety pass rescans.
    std::fs::hard_link(d.path().join("b.ini"), v.join("b.ini")).unwrap();
    assert!(s.needs_rescan(true));
    assert_eq!(names(&s.scan()), vec!["a.ini", "b.ini"]);
    // The directory replaced by another one (new inode): rescan.
    settle(&mut s);
    std::fs::rename(&v, d.path().join("old")).unwrap();
    std::fs::create_dir(&v).unwrap();
    assert!(s.needs_rescan(true));
    assert_eq!(s.scan().entries, Some(vec![]));
    // Gone: rescan (it holds no configs).
    settle(&mut s);
    std::fs::remove_dir(&v).unwrap();
    assert!(s.needs_rescan(true));
}

#[test]
fn missing_dir_is_empty_and_comes_back() {
    let d = tempfile::tempdir().unwrap();
    let v = d.path().join("v");
    let spec = parse_monitor(v.to_str().unwrap(), Path::new("/")).unwrap();
    let mut s = Scanner::new(spec, vec![], false);
    assert_eq!(s.scan().entries, Some(vec![]));
    std::fs::create_dir(&v).unwrap();
    std::fs::write(v.join("a.ini"), "[uwsgi]\n").unwrap();
    assert_eq!(names(&s.scan()), vec!["a.ini"]);
}

#[test]
fn glob_scan_uses_matched_paths() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("a.ini"), "").unwrap();
    std::fs::write(d.path().join("b.xml"), "").unwrap();
    let pat = format!("{}/*.ini", d.path().display());
    let spec = parse_monitor(&pat, Path::new("/")).unwrap();
    let mut s = Scanner::new(spec, vec![], false);
    let r = s.scan();
    assert_eq!(names(&r), vec![format!("{}/a.ini", d.path().display())]);
    assert_eq!(s.watch_dirs(), &[d.path().to_path_buf()]);
}

#[test]
fn symlinked_configs_are_tracked_through_their_targets() {
    let d = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(d.path()).unwrap();
    let (v, srv) = (root.join("v"), root.join("srv"));
    std::fs::create_dir(&v).unwrap();
    std::fs::create_dir(&srv).unwrap();
    let target = srv.join("uwsgi.ini");
    std::fs::write(&target, "[uwsgi]\n").unwrap();
    std::os::unix::fs::symlink("../srv/uwsgi.ini", v.join("app.ini")).unwrap();
    std::fs::write(v.join("plain.ini"), "[uwsgi]\n").unwrap();
    let spec = parse_monitor(v.to_str().unwrap(), Path::new("/")).unwrap();
    let mut s = Scanner::new(spec, vec![], false);
    assert_eq!(names(&s.scan()), vec!["app.ini", "plain.ini"]);
    assert_eq!(s.watch_dirs(), &[v.clone(), srv.clone()]);
    // An event in the target's directory names the target: the link is checked.
    let key = v.join("app.ini").display().to_string();
    let got = s.check_event("uwsgi.ini");
    assert!(got.iter().any(|(k, e)| *k == key && e.is_some()), "{got:?}");
    // The safety pass stats through the link.
    settle(&mut s);
    assert!(!s.needs_rescan(true));
    let f = std::fs::File::options().write(true).open(&target).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(1))
        .unwrap();
    assert!(s.needs_rescan(true));
    let before = s.scan().entries.unwrap();
    // Deleted target: the link dangles and is no config any more.
    std::fs::remove_file(&target).unwrap();
    let got = s.check_event("uwsgi.ini");
    assert!(got.iter().any(|(k, e)| *k == key && e.is_none()), "{got:?}");
    assert_eq!(names(&s.scan()), vec!["plain.ini"]);
    std::fs::write(&target, "[uwsgi]\n").unwrap();
    let got = s.check_event("uwsgi.ini");
    let e = got
        .iter()
        .find(|(k, _)| *k == key)
        .unwrap()
        .1
        .clone()
        .unwrap();
    assert_ne!(
        Some(e.stamp),
        before.iter().find(|b| b.key == key).map(|b| b.stamp)
    );
    // A link created outside a full scan: its directory is watched after the next one.
    let other = root.join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("x.ini"), "[uwsgi]\n").unwrap();
    std::os::unix::fs::symlink(other.join("x.ini"), v.join("x.ini")).unwrap();
    assert!(s.check_name("x.ini").unwrap().1.is_some());
    assert!(s.needs_rescan(true));
    s.scan();
    assert!(s.watch_dirs().contains(&other));
}

#[test]
fn target_directories_watched_are_capped() {
    let d = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(d.path()).unwrap();
    let v = root.join("v");
    std::fs::create_dir(&v).unwrap();
    for i in 0..MAX_TARGET_DIRS + 3 {
        let t = root.join(format!("t{i}"));
        std::fs::create_dir(&t).unwrap();
        std::fs::write(t.join("uwsgi.ini"), "[uwsgi]\n").unwrap();
        std::os::unix::fs::symlink(t.join("uwsgi.ini"), v.join(format!("a{i}.ini"))).unwrap();
    }
    let spec = parse_monitor(v.to_str().unwrap(), Path::new("/")).unwrap();
    let mut s = Scanner::new(spec, vec![], false);
    assert_eq!(s.scan().entries.unwrap().len(), MAX_TARGET_DIRS + 3);
    assert_eq!(s.watch_dirs().len(), 1 + MAX_TARGET_DIRS);
    // Beyond the cap the safety pass still stats through every link.
    settle(&mut s);
    let last = root
        .join(format!("t{}", MAX_TARGET_DIRS + 2))
        .join("uwsgi.ini");
    std::fs::write(&last, "[uwsgi]\n# changed\n").unwrap();
    assert!(s.needs_rescan(true));
    // With --emperor-nofollow no target is watched.
    let spec = parse_monitor(v.to_str().unwrap(), Path::new("/")).unwrap();
    let mut s = Scanner::new(spec, vec![], true);
    s.scan();
    assert_eq!(s.watch_dirs(), &[v]);
}

#[test]
fn nofollow_accepts_symlinks_and_tracks_the_link() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("real.conf"), "[uwsgi]\n").unwrap();
    std::os::unix::fs::symlink("real.conf", d.path().join("l.ini")).unwrap();
    let spec = parse_monitor(d.path().to_str().unwrap(), Path::new("/")).unwrap();
    let mut s = Scanner::new(spec, vec![], true);
    assert_eq!(names(&s.scan()), vec!["l.ini"]);
}
