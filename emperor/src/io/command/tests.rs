//! The command socket as a source: datagrams in, `Event::Command`s out, through a real loop.

use std::time::Duration;

use super::*;
use crate::core::VassalCommand;
use crate::io::source::Output;
use crate::io::test_loop::TestLoop;

fn commands(out: Vec<Output>) -> Vec<(VassalCommand, String)> {
    out.into_iter()
        .map(|o| match o {
            Output::Core(Event::Command { cmd, name }) => (cmd, name),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn vassal_commands_go_to_the_core_and_the_rest_is_handled_here() {
    let d = tempfile::tempdir().unwrap();
    let mut lp = TestLoop::new();
    let mut s = CommandSocket::bind("cmd.sock", d.path(), false, &mut lp.cx()).unwrap();
    let path = d.path().join("cmd.sock");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(lp.tokens.len(), 1);
    let tx = std::os::unix::net::UnixDatagram::unbound().unwrap();
    for d in [
        encode("spawn", Some("w.ini"), None).unwrap(),
        encode("log", None, Some("hello")).unwrap(),
        b"\0\0".to_vec(),
        encode("dance", Some("w.ini"), None).unwrap(),
        encode("stop", None, None).unwrap(),
        encode("reload", Some("x.ini"), None).unwrap(),
    ] {
        tx.send_to(&d, &path).unwrap();
    }
    let out = lp.run_until(
        Duration::from_secs(10),
        |owner, cx| {
            if owner == Some(Owner::Command) {
                s.ready(cx)
            }
        },
        |out| out.len() >= 2,
    );
    assert_eq!(
        commands(out),
        [
            (VassalCommand::Spawn, "w.ini".to_string()),
            (VassalCommand::Respawn, "x.ini".to_string())
        ]
    );
    s.cleanup();
    assert!(!path.exists());
}

#[test]
fn udp_needs_to_be_allowed_and_a_bare_port_is_loopback_only() {
    let mut lp = TestLoop::new();
    let e = CommandSocket::bind(":0", Path::new("/"), false, &mut lp.cx()).unwrap_err();
    assert!(matches!(e, CommandSocketError::UdpRefused { .. }), "{e:?}");
    assert!(e.to_string().contains("--emperor-command-allow-udp"), "{e}");
    assert!(lp.tokens.is_empty());
    let s = CommandSocket::bind(":0", Path::new("/"), true, &mut lp.cx()).unwrap();
    let Sock::Udp(u) = &s.sock else {
        panic!("{s:?}")
    };
    assert!(u.local_addr().unwrap().ip().is_loopback());
    let long = format!("/tmp/{}.sock", "x".repeat(120));
    let e = CommandSocket::bind(&long, Path::new("/"), false, &mut lp.cx()).unwrap_err();
    assert!(e.to_string().contains("use a shorter path"), "{e}");
}
