//! Our emperor governing real uWSGI 2.0 vassals (python3 plugin, hello app on unix sockets).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn spawn_accept_loyal_reload_and_remove() {
    require_uwsgi();
    let (work, dir) = work_dir();
    let sock = work.path().join("app.sock");
    let ini = write_vassal(&dir, "app.ini", &sock, "");
    let (mut emp, st) = start_emperor(work.path(), &dir, &["--emperor-freq", "1"]);

    emp.wait_for_line("vassal app.ini has been spawned", T);
    emp.wait_for_line("vassal app.ini is ready to accept requests", T);
    let v = wait_vassal(&mut emp, &st, "app.ini", T, "ready+accepting", |v| {
        v["ready"] == 1 && v["accepting"] == 1
    });
    let pid = v["pid"].as_i64().unwrap() as i32;
    assert!(pid > 0);
    assert_eq!(v["loyal"], 0);

    // A request makes it loyal (byte 17).
    let (status, body) = hello(&sock);
    assert_eq!(status, 200);
    assert!(body.starts_with(b"Hello from uWSGI"));
    emp.wait_for_line("vassal app.ini is now loyal", T);
    wait_vassal(&mut emp, &st, "app.ini", T, "loyal", |v| {
        v["loyal"].as_i64().unwrap_or(0) > 0
    });

    // touch -> byte 1 -> graceful reload: same pid, accepting again.
    touch(&ini);
    emp.wait_for_line("reloading vassal app.ini (config changed)", T);
    emp.wait_for_new_line("vassal app.ini is ready to accept requests", T);
    let v = wait_vassal(&mut emp, &st, "app.ini", T, "accepting after reload", |v| {
        v["accepting"] == 1
    });
    assert_eq!(
        v["pid"].as_i64().unwrap() as i32,
        pid,
        "reload keeps the pid"
    );
    assert_eq!(v["respawns"], 1);
    assert_eq!(hello(&sock).0, 200);
    emp.wait_for_new_line("vassal app.ini is now loyal", T);

    // SIGHUP reloads every vassal; SIGUSR1 logs one status line per vassal.
    emp.signal(libc::SIGHUP);
    emp.wait_for_line("reloading vassal app.ini (SIGHUP)", T);
    emp.wait_for_new_line("vassal app.ini is ready to accept requests", T);
    emp.signal(libc::SIGUSR1);
    let line = emp.wait_for_line("vassal app.ini state=running", T);
    assert!(line.contains(&format!("pid={pid}")), "{line}");

    // Atomic rename-into-place with identical content and size: a new inode is a change.
    let tmp = dir.join(".app.ini.tmp");
    std::fs::copy(&ini, &tmp).unwrap();
    std::fs::rename(&tmp, &ini).unwrap();
    emp.wait_for_new_line("reloading vassal app.ini (config changed)", T);
    emp.wait_for_new_line("vassal app.ini is ready to accept requests", T);
    assert_eq!(vassal(&stats(&st), "app.ini").unwrap()["respawns"], 3);

    // rm -> byte 0 -> stopped and reaped.
    std::fs::remove_file(&ini).unwrap();
    emp.wait_for_line("stopping vassal app.ini", T);
    emp.wait_for_line("removed uwsgi instance app.ini", T);
    assert!(!exists(pid), "vassal {pid} was not reaped");
    assert!(vassal(&stats(&st), "app.ini").is_none());
}

#[test]
fn crashing_vassal_backs_off_with_growing_delays() {
    require_uwsgi();
    let (work, dir) = work_dir();
    // need-app with a missing app: uWSGI exits with 22 right after starting.
    std::fs::write(
        dir.join("crash.ini"),
        "[uwsgi]\nplugin = python3\nmaster = true\nneed-app = true\nwsgi-file = %dmissing.py\n",
    )
    .unwrap();
    let (mut emp, st) = start_emperor(
        work.path(),
        &dir,
        &[
            "--emperor-throttle",
            "200",
            "--emperor-max-throttle",
            "60000",
        ],
    );
    let mut levels = Vec::new();
    for attempt in 1..=3 {
        let v = wait_vassal(&mut emp, &st, "crash.ini", T, "next backoff", |v| {
            v["attempt"].as_i64() == Some(attempt)
        });
        levels.push(v["throttle_level"].as_i64().unwrap());
        let doc = stats(&st);
        let bl = doc["blacklist"].as_array().unwrap();
        assert!(bl.iter().any(|b| b["id"] == "crash.ini"), "{doc:#}");
    }
    assert_eq!(levels, vec![200, 400, 800]);
    // SIGURG clears every backoff: the next failure starts again from the base.
    let before = vassal(&stats(&st), "crash.ini").unwrap()["restarts"]
        .as_i64()
        .unwrap();
    emp.signal(libc::SIGURG);
    emp.wait_for_line("clearing the blacklist", T);
    let v = wait_vassal(
        &mut emp,
        &st,
        "crash.ini",
        T,
        "failed again after URG",
        |v| v["restarts"].as_i64().unwrap() > before && v["attempt"].as_i64() == Some(1),
    );
    assert_eq!(v["throttle_level"], 200);
    emp.wait_for_line("unloyal bad behaving vassal crash.ini", T);
    let v = vassal(&stats(&st), "crash.ini").unwrap();
    // uWSGI exits 22 (no app) standalone, 1 as a vassal: either way an exit, not a signal.
    assert!(
        v["last_exit"].as_str().unwrap().starts_with("exit "),
        "{v:#}"
    );
    assert!(v["restarts"].as_i64().unwrap() >= 2);
}

#[test]
fn heartbeat_silence_kills_and_respawns() {
    require_uwsgi();
    let (work, dir) = work_dir();
    let sock = work.path().join("hb.sock");
    write_vassal(&dir, "hb.ini", &sock, "heartbeat = 1\n");
    let (mut emp, st) = start_emperor(work.path(), &dir, &["--emperor-required-heartbeat", "4"]);
    let v = wait_vassal(&mut emp, &st, "hb.ini", T, "heartbeating", |v| {
        v["accepting"] == 1 && v["last_heartbeat"].as_i64().unwrap_or(0) > 0
    });
    let pid = v["pid"].as_i64().unwrap() as i32;
    assert_eq!(hello(&sock).0, 200);
    wait_vassal(&mut emp, &st, "hb.ini", T, "loyal", |v| {
        v["loyal"].as_i64().unwrap_or(0) > 0
    });
    // Freeze the whole vassal: no worker can send heartbeats.
    let workers = children(pid);
    assert!(!workers.is_empty(), "no worker under {pid}");
    for w in &workers {
        signal(*w, libc::SIGSTOP);
    }
    signal(pid, libc::SIGSTOP);
    emp.wait_for_line(
        "vassal hb.ini sent no heartbeat in the last 4 seconds, brutally respawning it",
        T,
    );
    let v = wait_vassal(&mut emp, &st, "hb.ini", T, "respawned", |v| {
        v["pid"].as_i64().unwrap_or(-1) as i32 != pid && v["accepting"] == 1
    });
    assert_eq!(v["last_exit"], "signal 9");
    wait_gone(pid, T);
    for w in workers {
        signal(w, libc::SIGKILL);
    }
    assert_eq!(hello(&sock).0, 200);
}

#[test]
fn sigint_stops_everything_and_leaves_no_vassal_process() {
    require_uwsgi();
    let (work, dir) = work_dir();
    write_vassal(&dir, "a.ini", &work.path().join("a.sock"), "");
    write_vassal(&dir, "b.ini", &work.path().join("b.sock"), "");
    let pidfile = work.path().join("emperor.pid");
    let (mut emp, st) = start_emperor(
        work.path(),
        &dir,
        &[
            "--emperor-pidfile",
            pidfile.to_str().unwrap(),
            "--emperor-procname",
            "my-emperor",
        ],
    );
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", emp.pid())).unwrap();
    assert_eq!(comm.trim(), "my-emperor");
    let mut pids = Vec::new();
    for id in ["a.ini", "b.ini"] {
        let v = wait_vassal(&mut emp, &st, id, T, "accepting", |v| v["accepting"] == 1);
        let pid = v["pid"].as_i64().unwrap() as i32;
        pids.push(pid);
        pids.extend(children(pid));
    }
    let written: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(written, emp.pid());
    emp.signal(libc::SIGINT);
    let status = emp.wait_exit(T);
    assert_eq!(status.code(), Some(0), "{}", emp.output());
    let out = emp.output();
    assert!(out.contains("RAGNAROK EVOKED"), "{out}");
    assert!(out.contains("The Emperor is buried."), "{out}");
    for pid in pids {
        assert!(!exists(pid), "vassal process {pid} survived the emperor");
    }
    assert!(!pidfile.exists(), "pidfile not removed");
    assert!(!st.exists(), "stats socket not removed");
}

#[test]
fn bad_files_are_skipped_once_while_good_vassals_run() {
    require_uwsgi();
    let (work, dir) = work_dir();
    let sock = work.path().join("good.sock");
    write_vassal(&dir, "good.ini", &sock, "");
    std::fs::write(dir.join("notes.txt"), "not a config").unwrap();
    let secret = write_vassal(&dir, "secret.ini", &work.path().join("s.sock"), "");
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    std::os::unix::fs::symlink("loop2.ini", dir.join("loop1.ini")).unwrap();
    std::os::unix::fs::symlink("loop1.ini", dir.join("loop2.ini")).unwrap();

    // root reads anything: take away the capabilities that bypass file permissions.
    // SAFETY: geteuid has no side effects.
    let root = unsafe { libc::geteuid() } == 0;
    let cmd = if root {
        let mut c = Command::new("setpriv");
        c.args([
            "--inh-caps=-dac_override,-dac_read_search",
            "--bounding-set=-dac_override,-dac_read_search",
            "--",
            env!("CARGO_BIN_EXE_emperor"),
        ]);
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_emperor"))
    };
    let (mut emp, st) = start_emperor_with(cmd, work.path(), &dir, &["--emperor-freq", "1"]);
    emp.wait_for_line("skipping notes.txt: not a vassal config name", T);
    emp.wait_for_line("skipping secret.ini: cannot read it", T);
    emp.wait_for_line("skipping loop1.ini: symlink loop", T);
    emp.wait_for_line("skipping loop2.ini: symlink loop", T);
    wait_vassal(&mut emp, &st, "good.ini", T, "accepting", |v| {
        v["accepting"] == 1
    });
    assert_eq!(hello(&sock).0, 200);
    emp.wait_for_line("vassal good.ini is now loyal", T);
    // Several rescans later (freq 1 s, plus two forced ones) each file was reported once.
    for _ in 0..2 {
        emp.signal(libc::SIGWINCH);
        emp.wait_for_new_line("rescanning every monitor", T);
    }
    let doc = stats(&st);
    let ids: Vec<&str> = doc["vassals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["good.ini"]);
    let out = emp.output();
    for needle in [
        "skipping notes.txt",
        "skipping secret.ini",
        "skipping loop1.ini",
        "skipping loop2.ini",
    ] {
        assert_eq!(
            out.matches(needle).count(),
            1,
            "{needle} logged more than once:\n{out}"
        );
    }
}

#[test]
fn missing_uwsgi_is_reported_and_retried_without_crashing() {
    let work = tempfile::tempdir().unwrap();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/vassals");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emperor"));
    cmd.env("PATH", work.path());
    let (mut emp, st) =
        start_emperor_with(cmd, work.path(), &examples, &["--emperor-throttle", "100"]);
    emp.wait_for_line("`uwsgi` was not found on PATH", T);
    emp.wait_for_line(
        "cannot start vassal hello.ini: `uwsgi` was not found on PATH",
        T,
    );
    emp.wait_for_line("apt-get install uwsgi-core uwsgi-plugin-python3", T);
    wait_vassal(&mut emp, &st, "hello.ini", T, "retried", |v| {
        v["attempt"].as_i64().unwrap_or(0) >= 2
    });
    emp.signal(libc::SIGTERM);
    assert_eq!(emp.wait_exit(T).code(), Some(0));
}

#[test]
fn two_monitors_with_the_same_file_name_do_not_mix_up() {
    require_uwsgi();
    let work = tempfile::tempdir().unwrap();
    let one = work.path().join("one");
    let two = work.path().join("two");
    std::fs::create_dir(&one).unwrap();
    std::fs::create_dir(&two).unwrap();
    let s1 = work.path().join("one.sock");
    let s2 = work.path().join("two.sock");
    write_vassal(&one, "app.ini", &s1, "");
    write_vassal(&two, "app.ini", &s2, "");
    let (mut emp, st) = start_emperor(work.path(), &one, &["--emperor", two.to_str().unwrap()]);
    let deadline = std::time::Instant::now() + T;
    loop {
        let doc = stats(&st);
        let accepting = doc["vassals"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["accepting"] == 1)
            .count();
        if accepting == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{doc:#}\n{}",
            emp.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(hello(&s1).0, 200);
    assert_eq!(hello(&s2).0, 200);
}

#[test]
fn watched_directory_disappearing_and_coming_back() {
    require_uwsgi();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("vassals");
    let away = work.path().join("vassals.off");
    std::fs::create_dir(&dir).unwrap();
    let sock = work.path().join("d.sock");
    write_vassal(&dir, "d.ini", &sock, "");
    let (mut emp, st) = start_emperor(work.path(), &dir, &["--emperor-freq", "1"]);
    let v = wait_vassal(&mut emp, &st, "d.ini", T, "accepting", |v| {
        v["accepting"] == 1
    });
    let pid = v["pid"].as_i64().unwrap() as i32;
    std::fs::rename(&dir, &away).unwrap();
    emp.wait_for_line("cannot read monitor directory", T);
    emp.wait_for_line("removed uwsgi instance d.ini", T);
    wait_gone(pid, T);
    std::fs::rename(&away, &dir).unwrap();
    emp.wait_for_line("is back", T);
    let v = wait_vassal(&mut emp, &st, "d.ini", T, "accepting again", |v| {
        v["accepting"] == 1
    });
    assert_ne!(v["pid"].as_i64().unwrap() as i32, pid);
    // And the watch is re-established: an edit is seen without waiting for a rescan.
    touch(&dir.join("d.ini"));
    emp.wait_for_line("reloading vassal d.ini (config changed)", T);
}

#[test]
fn ini_file_systemd_notify_stats_http_and_vassal_environment() {
    use std::os::unix::net::UnixDatagram;
    require_uwsgi();
    let (work, dir) = work_dir();
    write_vassal(&dir, "env.ini", &work.path().join("env.sock"), "");
    let notify_path = work.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let ini = work.path().join("emperor.ini");
    std::fs::write(
        &ini,
        format!(
            "[uwsgi]\nemperor = %dvassals\nemperor-stats-server = 127.0.0.1:{port}\nstats-http = true\nemperor-freq = 1\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emperor"));
    cmd.arg("--ini")
        .arg(&ini)
        .env("EMPEROR_LOG", "info")
        .env("NOTIFY_SOCKET", &notify_path)
        .env("UWSGI_VASSAL_FOO", "bar")
        .env("UWSGI_RELOADS", "7")
        .current_dir(work.path());
    let mut emp = Proc::spawn(cmd);
    let mut got = String::new();
    let mut buf = [0u8; 512];
    while !got.contains("READY=1") {
        let n = notify.recv(&mut buf).expect("no READY=1 from the emperor");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
        got.push('\n');
    }
    assert!(
        got.contains("STATUS=The Emperor is governing 1 vassals"),
        "{got}"
    );
    emp.wait_for_line("vassal env.ini is ready to accept requests", T);

    // --stats-http over TCP.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.0 200 OK\r\n"), "{resp}");
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("Content-Type: application/json"), "{head}");
    let doc: serde_json::Value = serde_json::from_str(body).unwrap();
    let v = vassal(&doc, "env.ini").unwrap();
    let pid = v["pid"].as_i64().unwrap();

    // The vassal's environment follows the uWSGI rules, done right.
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let env: Vec<String> = env
        .split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    assert!(env.iter().any(|e| e == "UWSGI_FOO=bar"), "{env:?}");
    assert!(
        !env.iter().any(|e| e.starts_with("UWSGI_VASSAL_")),
        "{env:?}"
    );
    assert!(
        !env.iter().any(|e| e.starts_with("NOTIFY_SOCKET=")),
        "{env:?}"
    );
    assert!(
        !env.iter().any(|e| e.starts_with("UWSGI_RELOADS=7")),
        "{env:?}"
    );
    assert!(
        env.iter().any(|e| e.starts_with("UWSGI_EMPEROR_FD=")),
        "{env:?}"
    );
    assert!(
        !env.iter()
            .any(|e| e.starts_with("UWSGI_EMPEROR_FD_CONFIG=")),
        "{env:?}"
    );
    // fd 0 is /dev/null; the vassal runs in the vassal directory.
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap(),
        std::path::PathBuf::from("/dev/null")
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        std::fs::canonicalize(&dir).unwrap()
    );
    emp.signal(libc::SIGTERM);
    assert_eq!(emp.wait_exit(T).code(), Some(0));
}

#[test]
fn wrapper_set_and_templates_build_the_uwsgi_argv() {
    let uwsgi = require_uwsgi();
    let (work, dir) = work_dir();
    let sock = work.path().join("w.sock");
    write_vassal(&dir, "w.ini", &sock, "");
    let tmpl = work.path().join("tmpl.ini");
    std::fs::write(&tmpl, "[uwsgi]\nvacuum = true\n").unwrap();
    let args = work.path().join("args.txt");
    let wrap = dir.join("wrap.sh");
    std::fs::write(
        &wrap,
        format!(
            "#!/bin/sh\necho \"$0 $*\" > {}\nexec {} \"$@\"\n",
            args.display(),
            uwsgi.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrap, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // A relative wrapper is relative to the vassal directory, as under uWSGI.
    let (mut emp, st) = start_emperor(
        work.path(),
        &dir,
        &[
            "--emperor-wrapper",
            "./wrap.sh",
            "--vassals-set",
            "processes=1",
            "--vassals-inherit",
            tmpl.to_str().unwrap(),
        ],
    );
    wait_vassal(&mut emp, &st, "w.ini", T, "accepting", |v| {
        v["accepting"] == 1
    });
    let line = std::fs::read_to_string(&args).unwrap();
    let line = line.trim();
    assert!(
        line.ends_with(&format!(
            "wrap.sh --set processes=1 --ini w.ini --inherit {}",
            tmpl.display()
        )),
        "{line}"
    );
    assert_eq!(hello(&sock).0, 200);
}

#[test]
fn our_emperor_as_a_vassal_of_the_real_uwsgi_emperor() {
    let uwsgi = require_uwsgi();
    let work = tempfile::tempdir().unwrap();
    let outer = work.path().join("outer");
    let inner = work.path().join("inner");
    std::fs::create_dir(&outer).unwrap();
    std::fs::create_dir(&inner).unwrap();
    let sock = work.path().join("leaf.sock");
    write_vassal(&inner, "leaf.ini", &sock, "");
    let inner_stats = work.path().join("inner-stats.sock");
    std::fs::write(
        outer.join("sub.ini"),
        format!(
            "[uwsgi]\nemperor = {}\nemperor-stats = {}\n",
            inner.display(),
            inner_stats.display()
        ),
    )
    .unwrap();
    let mut real = start_real_emperor_over_ours(&uwsgi, &outer, work.path());
    real.wait_for_line("[emperor] vassal sub.ini has been spawned", T);
    real.wait_for_line("[emperor] vassal sub.ini is now loyal", T);
    let v = wait_vassal(&mut real, &inner_stats, "leaf.ini", T, "accepting", |v| {
        v["accepting"] == 1
    });
    let leaf = v["pid"].as_i64().unwrap() as i32;
    assert_eq!(hello(&sock).0, 200);
    std::fs::remove_file(outer.join("sub.ini")).unwrap();
    real.wait_for_line("received message 0 from my emperor: stopping", T);
    real.wait_for_line("removed uwsgi instance sub.ini", T);
    wait_gone(leaf, T);
}
