//! The fork-server client against scripted fork servers on a thread, in a real loop.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use forkserver_proto::{parent_of, Pid};

use super::*;
use crate::io::registry::Owner;
use crate::io::source::Output;
use crate::io::test_loop::TestLoop;
use crate::spawn::isolation::ChildSetup;

#[test]
fn fork_bases_are_matched_by_name_file_name_or_path() {
    let c = ForkClient::new("/fs.sock".into(), vec!["base.ini".into()], 1);
    assert!(!c.handles("base.ini", "/v/base.ini"));
    assert!(!c.handles("/g/base.ini", "/g/base.ini"));
    assert!(c.handles("app.ini", "/v/app.ini"));
    let c = ForkClient::new("/fs.sock".into(), vec!["/v/b.ini".into()], 1);
    assert!(!c.handles("b.ini", "/v/b.ini"));
    assert!(c.handles("b.ini", "/w/b.ini"));
}

#[test]
fn options_and_ini_keys() {
    let o = Options::parse_from_args([
        "emperor",
        "/v",
        "--emperor-use-fork-server",
        "fs.sock",
        "--vassal-fork-base",
        "base.ini",
        "--vassal-fork-base",
        "other.ini",
    ])
    .unwrap();
    assert_eq!(o.use_fork_server.as_deref(), Some(Path::new("fs.sock")));
    assert_eq!(o.vassal_fork_base, vec!["base.ini", "other.ini"]);
    assert!(!o.subreaper);
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("e.ini");
    std::fs::write(
        &ini,
        "[uwsgi]\nemperor = /v\nemperor-use-fork-server = %dfs.sock\n\
         vassal-fork-base = base.ini\nemperor-subreaper = true\n",
    )
    .unwrap();
    let o =
        Options::parse_from_args(["emperor".as_ref(), "--ini".as_ref(), ini.as_os_str()]).unwrap();
    let abs = std::path::absolute(dir.path()).unwrap();
    assert_eq!(o.use_fork_server, Some(abs.join("fs.sock")));
    assert_eq!(o.vassal_fork_base, vec!["base.ini"]);
    assert!(o.subreaper);
    let help = <Options as clap::CommandFactory>::command()
        .render_long_help()
        .to_string();
    for needle in [
        "--emperor-use-fork-server",
        "--vassal-fork-base",
        "--emperor-subreaper",
        "[default: off]",
    ] {
        assert!(help.contains(needle), "{needle} missing from --help");
    }
}

fn request(inc: u64, name: &str, key: &str) -> SpawnRequest {
    SpawnRequest {
        inc: Inc(inc),
        vassal: crate::core::VassalId(inc),
        key: key.into(),
        name: name.into(),
        monitor: 0,
        content: None,
        ..SpawnRequest::default()
    }
}

fn plan() -> Plan {
    Plan {
        programs: vec![],
        argv: vec!["uwsgi".into(), "--ini".into(), "a.ini".into()],
        env: vec![],
        cwd: "/v".into(),
        with_config: false,
        stdin: None,
    }
}

/// How a start ended.
#[derive(Debug)]
enum Done {
    Adopted {
        inc: Inc,
        name: String,
        started: crate::spawn::Started,
        reaped: Option<ExitKind>,
        cwd: PathBuf,
    },
    Failed {
        inc: Inc,
        reason: String,
    },
}

/// Runs the client in a loop until a start is over (or panics after 10 s).
fn drive_until_done(lp: &mut TestLoop, c: &mut ForkClient) -> Vec<Done> {
    let out = lp.run_until(
        Duration::from_secs(10),
        |owner, cx| match owner {
            Some(Owner::Fork(inc)) => c.ready(cx, inc),
            None => c.tick(cx),
            Some(other) => panic!("{other:?}"),
        },
        |out| !out.is_empty(),
    );
    out.into_iter()
        .map(|o| match o {
            Output::Started(s) => {
                assert!(s.adopted);
                Done::Adopted {
                    inc: s.inc,
                    name: s.name,
                    started: s.process,
                    reaped: s.reaped,
                    cwd: s.cwd,
                }
            }
            Output::Core(Event::SpawnFailed { inc, reason }) => Done::Failed {
                inc,
                reason: reason.to_string(),
            },
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn a_missing_or_stale_socket_fails_that_start_at_once_naming_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fs.sock");
    let mut lp = TestLoop::new();
    let mut c = ForkClient::new(path.clone(), vec![], std::process::id() as i32);
    let e = c
        .start(&mut lp.cx(), &request(1, "a.ini", "/v/a.ini"), &plan())
        .unwrap_err()
        .to_string();
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(e.contains("does not exist"), "{e}");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let e = c
        .start(&mut lp.cx(), &request(2, "a.ini", "/v/a.ini"), &plan())
        .unwrap_err()
        .to_string();
    assert!(e.contains("stale socket"), "{e}");
    assert_eq!(c.in_flight(), 0);
}

/// A scripted fork server on a thread: accepts one connection, reads the request, answers
/// with `reply` (or closes), and hands back the request bytes.
fn scripted(path: &Path, reply: Option<Vec<u8>>) -> std::thread::JoinHandle<Vec<u8>> {
    let l = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut head = [0u8; 4];
        s.read_exact(&mut head).unwrap();
        let mut body = vec![0u8; u16::from_le_bytes([head[1], head[2]]) as usize];
        s.read_exact(&mut body).unwrap();
        if let Some(r) = reply {
            s.write_all(&r).unwrap();
        }
        let mut req = head.to_vec();
        req.extend(body);
        req
    })
}

#[test]
fn a_reply_naming_our_child_is_adopted_with_the_absolute_config_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fs.sock");
    // Stands for the adopted vassal: a child of this process.
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let server = scripted(
        &path,
        Some(forkserver_proto::encode_reply(child.id() as i32)),
    );
    let mut lp = TestLoop::new();
    let mut c = ForkClient::new(path, vec![], std::process::id() as i32);
    c.start(&mut lp.cx(), &request(3, "a.ini", "/v/a.ini"), &plan())
        .unwrap();
    let done = drive_until_done(&mut lp, &mut c);
    let _ = child.kill();
    let _ = child.wait();
    let req = server.join().unwrap();
    assert_eq!(&req[..4], &[35, req[1], req[2], 1]);
    assert!(req.ends_with(b"\x08\x00/v/a.ini"), "{req:?}");
    match &done[..] {
        [Done::Adopted {
            inc,
            name,
            started,
            reaped: None,
            cwd,
        }] => {
            assert_eq!((*inc, name.as_str()), (Inc(3), "a.ini"));
            assert_eq!(cwd, Path::new("/v"));
            assert_eq!(started.pid, child.id() as i32);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn a_pid_still_in_transit_is_re_checked_until_it_is_ours() {
    // Like uWSGI's fork server: the reply names a grandchild whose parent (our child)
    // exits later (here: when we close its stdin); then the kernel reparents it to us,
    // the subreaper.
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let mut mid = std::process::Command::new("sh")
        .args([
            "-c",
            "sleep 30 </dev/null >/dev/null 2>&1 & echo $!; exec cat >/dev/null",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(mid.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let grandchild: i32 = line.trim().parse().unwrap();
    let me = std::process::id() as i32;
    assert!(matches!(
        classify(grandchild, me, |x| parent_of(Pid::from_raw(x))
            .map(|p| p.as_raw())),
        Topology::InTransit { .. }
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fs.sock");
    let server = scripted(&path, Some(forkserver_proto::encode_reply(grandchild)));
    let mut lp = TestLoop::new();
    let mut c = ForkClient::new(path, vec![], me);
    c.start(&mut lp.cx(), &request(8, "a.ini", "/v/a.ini"), &plan())
        .unwrap();
    server.join().unwrap();
    // The middle process exits now: the grandchild moves to us while the client re-checks.
    drop(mid.stdin.take());
    let done = drive_until_done(&mut lp, &mut c);
    let _ = mid.wait();
    let g = Pid::from_raw(grandchild);
    let _ = nix::sys::signal::kill(g, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(g, None);
    match &done[..] {
        [Done::Adopted { started, .. }] => assert_eq!(started.pid, grandchild),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_pid_outside_our_tree_is_refused_naming_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fs.sock");
    // pid 1 is nobody's descendant (and is never signalled: refusing only closes the
    // channel).
    let server = scripted(&path, Some(forkserver_proto::encode_reply(1)));
    let mut lp = TestLoop::new();
    let mut c = ForkClient::new(path.clone(), vec![], std::process::id() as i32);
    c.start(&mut lp.cx(), &request(9, "a.ini", "/v/a.ini"), &plan())
        .unwrap();
    server.join().unwrap();
    match &drive_until_done(&mut lp, &mut c)[..] {
        [Done::Failed { reason, .. }] => {
            assert!(
                reason.contains("is not a descendant of this Emperor"),
                "{reason}"
            );
            assert!(reason.contains(&path.display().to_string()), "{reason}");
            assert!(reason.contains("--vassal-fork-base"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_closed_connection_or_bad_reply_fails_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fs.sock");
    let server = scripted(&path, None);
    let mut lp = TestLoop::new();
    let mut c = ForkClient::new(path.clone(), vec![], std::process::id() as i32);
    c.start(&mut lp.cx(), &request(4, "a.ini", "/v/a.ini"), &plan())
        .unwrap();
    server.join().unwrap();
    match &drive_until_done(&mut lp, &mut c)[..] {
        [Done::Failed { inc, reason }] => {
            assert_eq!(*inc, Inc(4));
            assert!(reason.contains("closed the connection"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    std::fs::remove_file(&path).unwrap();
    let server = scripted(&path, Some(vec![35, 2, 0, 0, 1, 2]));
    c.start(&mut lp.cx(), &request(5, "a.ini", "/v/a.ini"), &plan())
        .unwrap();
    server.join().unwrap();
    assert!(matches!(
        &drive_until_done(&mut lp, &mut c)[..],
        [Done::Failed { inc: Inc(5), .. }]
    ));
}

#[test]
fn a_silent_server_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fs.sock");
    let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let mut lp = TestLoop::new();
    let mut c = ForkClient::new(path, vec![], std::process::id() as i32)
        .with_timeouts(Duration::from_millis(100), ADOPTION_TIMEOUT);
    c.start(&mut lp.cx(), &request(6, "a.ini", "/v/a.ini"), &plan())
        .unwrap();
    match &drive_until_done(&mut lp, &mut c)[..] {
        [Done::Failed { reason, .. }] => assert!(reason.contains("timed out"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_pid_reaped_before_the_reply_is_still_adopted_with_its_exit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fs.sock");
    let pid = 999_999;
    let server = scripted(&path, Some(forkserver_proto::encode_reply(pid)));
    let mut lp = TestLoop::new();
    let mut c = ForkClient::new(path, vec![], std::process::id() as i32);
    c.start(&mut lp.cx(), &request(7, "a.ini", "/v/a.ini"), &plan())
        .unwrap();
    c.note_reaped(pid, ExitKind::Code(3), Instant::now());
    server.join().unwrap();
    match &drive_until_done(&mut lp, &mut c)[..] {
        [Done::Adopted {
            started, reaped, ..
        }] => {
            assert_eq!(started.pid, pid);
            assert_eq!(*reaped, Some(ExitKind::Code(3)));
        }
        other => panic!("{other:?}"),
    }
    // Nothing in flight: reaped pids are no longer remembered.
    c.note_reaped(5, ExitKind::Code(0), Instant::now());
    assert!(c.reaped.is_empty());
}

#[test]
fn as_a_launcher_it_answers_later_and_refuses_isolation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fs.sock");
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let server = scripted(
        &path,
        Some(forkserver_proto::encode_reply(child.id() as i32)),
    );
    let mut lp = TestLoop::new();
    let mut c = ForkClient::new(path, vec![], std::process::id() as i32);
    let job = |inc, setup| Job {
        req: request(inc, "a.ini", "/v/a.ini"),
        plan: plan(),
        setup,
    };
    let isolated = ChildSetup {
        creds: Some(crate::spawn::isolation::Creds {
            uid: 1000,
            gid: 1000,
            groups: vec![],
        }),
        ..ChildSetup::default()
    };
    let e = c.launch(&job(1, isolated), &mut lp.cx()).unwrap_err();
    assert!(e.to_string().contains("--vassal-fork-base"), "{e}");
    assert!(matches!(
        c.launch(&job(2, ChildSetup::default()), &mut lp.cx()),
        Ok(Launched::Pending)
    ));
    assert_eq!(lp.tokens.len(), 1, "the request's connection is watched");
    let done = drive_until_done(&mut lp, &mut c);
    let _ = child.kill();
    let _ = child.wait();
    server.join().unwrap();
    assert!(
        matches!(&done[..], [Done::Adopted { inc: Inc(2), .. }]),
        "{done:?}"
    );
    assert!(lp.tokens.is_empty(), "its token is freed");
}
