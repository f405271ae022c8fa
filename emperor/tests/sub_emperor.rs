//! Our emperor as a vassal (sub-emperor): it obeys reload (byte 1: reload every vassal of its
//! own) from our emperor and from the real uWSGI emperor, without being restarted. (Loyalty and
//! stop are covered in fake_vassals.rs and real_uwsgi.rs.) The outer emperor starts ours
//! through `--emperor-wrapper`, so the vassal's [uwsgi] section is read by our --ini.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;

/// A leaf vassal that reports ready + loyal and logs every byte the emperor sends it.
fn leaf_script(work: &Path) -> std::path::PathBuf {
    let p = work.join("leaf.sh");
    std::fs::write(
        &p,
        "#!/bin/bash\nfd=$UWSGI_EMPEROR_FD\nprintf '\\001\\021' >&$fd\n\
         while b=$(dd bs=1 count=1 <&$fd 2>/dev/null | od -An -tu1 | tr -d ' '); [ -n \"$b\" ]; do\n\
         echo \"leaf $2 received byte $b\" >&2\n[ \"$b\" = 0 ] && exit 0\ndone\n",
    )
    .unwrap();
    std::fs::set_permissions(&p, PermissionsExt::from_mode(0o755)).unwrap();
    p
}

fn layout(work: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let outer = work.join("outer");
    let inner = work.join("inner");
    std::fs::create_dir(&outer).unwrap();
    std::fs::create_dir(&inner).unwrap();
    std::fs::write(inner.join("leaf.ini"), "[uwsgi]\n").unwrap();
    let sub = outer.join("sub.ini");
    std::fs::write(
        &sub,
        format!(
            "[uwsgi]\nemperor = {}\nemperor-wrapper = {}\nemperor-stats = {}\nreload-mercy = 5\n",
            inner.display(),
            leaf_script(work).display(),
            work.join("inner-stats.sock").display()
        ),
    )
    .unwrap();
    (outer, sub)
}

/// Touches sub.ini and checks the sub-emperor reloads its leaf (same sub-emperor pid).
fn reload_reaches_the_leaf(outer_emp: &mut Proc, work: &Path, sub: &Path) {
    let inner_stats = work.join("inner-stats.sock");
    let leaf = wait_vassal(outer_emp, &inner_stats, "leaf.ini", T, "loyal", |v| {
        v["loyal"] == 1
    });
    let leaf_pid = leaf["pid"].as_i64().unwrap();
    let sub_pid = stats(&inner_stats)["pid"].as_i64().unwrap();
    touch(sub);
    outer_emp.wait_for_line(
        "received message 1 from my emperor: reloading every vassal",
        T,
    );
    outer_emp.wait_for_line("reloading vassal leaf.ini (SIGHUP)", T);
    outer_emp.wait_for_line("leaf leaf.ini received byte 1", T);
    let leaf = vassal(&stats(&inner_stats), "leaf.ini").unwrap();
    assert_eq!(
        leaf["pid"].as_i64().unwrap(),
        leaf_pid,
        "leaf not restarted"
    );
    assert_eq!(leaf["respawns"], 1, "{leaf}");
    assert_eq!(
        stats(&inner_stats)["pid"].as_i64().unwrap(),
        sub_pid,
        "the sub-emperor itself kept running"
    );
}

#[test]
fn sub_emperor_obeys_reload_from_our_emperor() {
    let work = tempfile::tempdir().unwrap();
    let (outer, sub) = layout(work.path());
    let (mut emp, st) = start_emperor(
        work.path(),
        &outer,
        &["--emperor-wrapper", env!("CARGO_BIN_EXE_emperor")],
    );
    emp.wait_for_line("vassal sub.ini is now loyal", T);
    reload_reaches_the_leaf(&mut emp, work.path(), &sub);
    let v = vassal(&stats(&st), "sub.ini").unwrap();
    assert_eq!(v["respawns"], 1);
    // Stop still works after a reload: the leaf gets byte 0, nothing is left.
    std::fs::remove_file(&sub).unwrap();
    emp.wait_for_line("leaf leaf.ini received byte 0", T);
    emp.wait_for_line("removed uwsgi instance sub.ini", T);
}

#[test]
fn sub_emperor_obeys_reload_from_the_real_uwsgi_emperor() {
    let uwsgi = require_uwsgi();
    let work = tempfile::tempdir().unwrap();
    let (outer, sub) = layout(work.path());
    let mut real = start_real_emperor_over_ours(&uwsgi, &outer, work.path());
    real.wait_for_line("[emperor] vassal sub.ini is now loyal", T);
    reload_reaches_the_leaf(&mut real, work.path(), &sub);
    real.wait_for_line("[emperor] reload the uwsgi instance sub.ini", T);
    std::fs::remove_file(&sub).unwrap();
    real.wait_for_line("leaf leaf.ini received byte 0", T);
    real.wait_for_line("removed uwsgi instance sub.ini", T);
}
