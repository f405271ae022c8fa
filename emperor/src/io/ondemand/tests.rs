//! The on-demand source: binding, the listener's round trip through the loop, the exec lookup
//! and its deadline.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::io::source::Output;
use crate::io::test_loop::TestLoop;

#[test]
fn first_line_cuts_at_control_bytes() {
    assert_eq!(first_line(b"/tmp/a.sock\nrest"), Some("/tmp/a.sock".into()));
    assert_eq!(
        first_line(b"127.0.0.1:9000\r\n"),
        Some("127.0.0.1:9000".into())
    );
    assert_eq!(first_line(b"\n/tmp/x"), None);
    assert_eq!(first_line(b""), None);
}

#[test]
fn too_long_unix_path_is_an_error_that_says_so() {
    let long = format!("/tmp/{}.sock", "x".repeat(120));
    let e = bind(&long, Path::new("/")).unwrap_err().to_string();
    assert!(e.contains("at most 107"), "{e}");
    assert!(e.contains("shorter path"), "{e}");
    assert!(!Path::new(&long[..107]).exists());
}

#[test]
fn unix_socket_is_0666_and_removed_on_close() {
    let d = tempfile::tempdir().unwrap();
    let s = bind("od.sock", d.path()).unwrap();
    let p = d.path().join("od.sock");
    let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666);
    drop(s);
    assert!(!p.exists());
}

#[test]
fn tcp_v4_and_v6() {
    let s = bind("127.0.0.1:0", Path::new("/")).unwrap();
    assert!(matches!(s, Socket::Tcp(_)));
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        let s = bind("[::1]:0", Path::new("/")).unwrap();
        let Socket::Tcp(l) = &s else { panic!() };
        assert!(l.local_addr().unwrap().is_ipv6());
    }
    assert!(bind("no.such.host.invalid:80", Path::new("/")).is_err());
}

#[test]
fn options_and_ini_keys_reach_the_core_settings() {
    let o = Options::parse_from_args([
        "emperor",
        "/v",
        "--emperor-on-demand-ext",
        ".sock",
        "--emperor-broodlord",
        "3",
        "--emperor-wait-for-command",
        "--emperor-wait-for-command-ignore",
        "a.ini",
        "--emperor-command-socket",
        "/run/cmd.sock",
    ])
    .unwrap();
    let a = activation_config(&o);
    assert!(a.on_demand && a.wait_for_command);
    assert_eq!(a.broodlord, 3);
    assert!(a.wait_for_command_ignore.contains("a.ini"));
    assert_eq!(o.command_socket.as_deref(), Some("/run/cmd.sock"));
    let d = tempfile::tempdir().unwrap();
    let ini = d.path().join("e.ini");
    std::fs::write(
        &ini,
        "[uwsgi]\nemperor = /v\nemperor-on-demand-dir = /run/od\nemperor-broodlord = 2\n",
    )
    .unwrap();
    let o =
        Options::parse_from_args(["emperor".as_ref(), "--ini".as_ref(), ini.as_os_str()]).unwrap();
    assert_eq!(o.on_demand_directory, Some(PathBuf::from("/run/od")));
    assert_eq!(activation_config(&o).broodlord, 2);
    let o = Options::parse_from_args(["emperor", "/v"]).unwrap();
    assert_eq!(activation_config(&o), ActivationConfig::default());
}

fn on_demand_events(out: Vec<Output>) -> Vec<OnDemandEvent> {
    out.into_iter()
        .map(|o| match o {
            Output::Core(Event::OnDemand(e)) => e,
            other => panic!("{other:?}"),
        })
        .collect()
}

fn resolve(vassal: u64, name: &str) -> OnDemandAction {
    OnDemandAction::Resolve {
        vassal: VassalId(vassal),
        key: format!("/v/{name}"),
        name: name.to_string(),
        monitor: 0,
    }
}

#[test]
fn a_listener_goes_out_of_the_loop_on_a_connection_and_back_when_armed() {
    let d = tempfile::tempdir().unwrap();
    let mut od = OnDemand::with_sources(Sources {
        directory: Some(d.path().to_path_buf()),
        ..Sources::default()
    });
    let mut lp = TestLoop::new();
    od.perform(resolve(3, "app.ini"), Path::new("/"), &mut lp.cx());
    let sock = d.path().join("app.socket");
    assert_eq!(
        on_demand_events(lp.take()),
        [OnDemandEvent::Ready {
            vassal: VassalId(3),
            socket: Some(sock.display().to_string())
        }]
    );
    assert_eq!((od.listeners(), lp.tokens.len()), (1, 1));
    for round in 0..2 {
        let _client = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        let out = lp.run_until(
            Duration::from_secs(10),
            |owner, cx| {
                if let Some(Owner::Listener(k)) = owner {
                    od.ready(cx, k)
                }
            },
            |out| !out.is_empty(),
        );
        assert_eq!(
            on_demand_events(out),
            [OnDemandEvent::Connection {
                vassal: VassalId(3)
            }],
            "round {round}"
        );
        assert!(lp.tokens.is_empty(), "not watched while its vassal runs");
        let fd = od.take_for_spawn(VassalId(3), &mut lp.cx()).unwrap();
        assert!(fd > 2);
        assert_eq!(od.take_for_spawn(VassalId(4), &mut lp.cx()), None);
        od.perform(
            OnDemandAction::Arm {
                vassal: VassalId(3),
            },
            Path::new("/"),
            &mut lp.cx(),
        );
        assert_eq!(lp.tokens.len(), 1, "watched again");
    }
    od.perform(
        OnDemandAction::Close {
            vassal: VassalId(3),
        },
        Path::new("/"),
        &mut lp.cx(),
    );
    assert!(lp.tokens.is_empty() && od.listeners() == 0);
    assert!(!sock.exists());
}

#[test]
fn without_a_socket_source_the_vassal_is_ready_without_a_socket() {
    let mut od = OnDemand::with_sources(Sources::default());
    let mut lp = TestLoop::new();
    od.perform(resolve(1, "a.ini"), Path::new("/"), &mut lp.cx());
    assert_eq!(
        on_demand_events(lp.take()),
        [OnDemandEvent::Ready {
            vassal: VassalId(1),
            socket: None
        }]
    );
    // A bind that fails says why.
    let mut od = OnDemand::with_sources(Sources {
        directory: Some(PathBuf::from("/nonexistent/dir")),
        ..Sources::default()
    });
    od.perform(resolve(2, "b.ini"), Path::new("/"), &mut lp.cx());
    match &on_demand_events(lp.take())[..] {
        [OnDemandEvent::Failed { vassal, reason }] => {
            assert_eq!(*vassal, VassalId(2));
            assert!(
                reason.contains("cannot bind unix socket /nonexistent/dir/b.socket"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_exec_lookup_binds_what_it_prints_and_is_killed_at_its_deadline() {
    let d = tempfile::tempdir().unwrap();
    let mut od = OnDemand::with_sources(Sources {
        exec: Some("echo od-$1.sock; :".into()),
        ..Sources::default()
    });
    let mut lp = TestLoop::new();
    od.perform(resolve(5, "x.ini"), d.path(), &mut lp.cx());
    assert!(lp.take().is_empty(), "answered by the pipe");
    assert!(od.next_deadline().is_some());
    let out = lp.run_until(
        Duration::from_secs(10),
        |owner, cx| {
            if let Some(Owner::Listener(k)) = owner {
                od.ready(cx, k)
            }
        },
        |out| !out.is_empty(),
    );
    assert_eq!(
        on_demand_events(out),
        [OnDemandEvent::Ready {
            vassal: VassalId(5),
            socket: Some("od-x.ini.sock".into())
        }]
    );
    assert!(
        d.path().join("od-x.ini.sock").exists(),
        "relative to the vassal's cwd"
    );
    assert_eq!(od.next_deadline(), None);

    let mut od = OnDemand::with_sources(Sources {
        exec: Some("sleep 30; :".into()),
        ..Sources::default()
    });
    od.perform(resolve(6, "y.ini"), d.path(), &mut lp.cx());
    let deadline = od.next_deadline().unwrap();
    od.tick(&mut lp.cx_at(deadline - Duration::from_millis(1)));
    assert!(lp.take().is_empty());
    od.tick(&mut lp.cx_at(deadline));
    match &on_demand_events(lp.take())[..] {
        [OnDemandEvent::Failed { vassal, reason }] => {
            assert_eq!(*vassal, VassalId(6));
            assert!(reason.contains("within 30 s (killed)"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(lp.tokens.len(), 1, "the first vassal's listener only");
    assert_eq!(od.next_deadline(), None);
}
