use std::io::{Read, Write};

use super::*;
use crate::io::test_loop::TestLoop;

/// The message bytes the channels reported, in order.
fn bytes(l: &TestLoop) -> Vec<u8> {
    l.out
        .iter()
        .filter_map(|o| match o {
            Output::Core(Event::Message { byte, .. }) => Some(*byte),
            _ => None,
        })
        .collect()
}

fn started(config: bool) -> (crate::spawn::Started, StdStream, Option<StdStream>) {
    let (ours, theirs) = StdStream::pair().unwrap();
    let (cfg, cfg_theirs) = if config {
        let (a, b) = StdStream::pair().unwrap();
        (Some(a), Some(b))
    } else {
        (None, None)
    };
    (
        crate::spawn::Started {
            pid: i32::MAX,
            channel: ours,
            config: cfg,
        },
        theirs,
        cfg_theirs,
    )
}

use std::os::unix::net::UnixStream as StdStream;

#[test]
fn bytes_are_messages_and_eof_closes_and_reaps() {
    let mut l = TestLoop::new();
    let mut ch = Channels::new();
    let (p, mut vassal, _) = started(false);
    ch.attach(Inc(4), "app.ini", p, &mut l.cx());
    assert_eq!(l.tokens.owner(Token(0)), Some(Owner::Channel(Inc(4))));
    vassal.write_all(&[17, 5]).unwrap();
    ch.on_readable(Inc(4), &mut l.cx());
    assert_eq!(bytes(&l), vec![17, 5]);
    ch.send(Inc(4), 1);
    let mut b = [0u8; 1];
    vassal.read_exact(&mut b).unwrap();
    assert_eq!(b, [1]);
    drop(vassal);
    ch.on_readable(Inc(4), &mut l.cx());
    assert!(l
        .out
        .iter()
        .any(|o| matches!(o, Output::Core(Event::ChannelClosed { inc: Inc(4) }))));
    assert!(matches!(l.out.last(), Some(Output::Reap)));
    assert!(l.tokens.is_empty(), "the closed channel's token is freed");
    ch.release(Inc(4), &mut l.cx());
    assert!(ch.is_empty());
}

#[test]
fn a_flooding_channel_is_read_one_budget_per_turn() {
    let mut l = TestLoop::new();
    let mut ch = Channels::new();
    let (p, mut vassal, _) = started(false);
    ch.attach(Inc(1), "flood.ini", p, &mut l.cx());
    vassal.set_nonblocking(true).unwrap();
    let flood = vec![0u8; CHANNEL_BUDGET * 2 + 100];
    let mut sent = 0;
    while sent < flood.len() {
        match vassal.write(&flood[sent..]) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    assert!(
        sent > CHANNEL_BUDGET,
        "the socket buffer holds more than a budget"
    );
    ch.on_readable(Inc(1), &mut l.cx());
    assert_eq!(bytes(&l).len(), CHANNEL_BUDGET);
    assert!(ch.busy());
    assert_eq!(ch.take_busy(), vec![Inc(1)]);
    assert!(!ch.busy());
    ch.on_readable(Inc(1), &mut l.cx());
    assert_eq!(bytes(&l).len(), (2 * CHANNEL_BUDGET).min(sent));
}

#[test]
fn a_pushed_config_is_written_as_one_frame() {
    let mut l = TestLoop::new();
    let mut ch = Channels::new();
    let (p, _vassal, cfg) = started(true);
    let mut cfg = cfg.unwrap();
    ch.attach(Inc(2), "pushed", p, &mut l.cx());
    ch.push_config(Inc(2), b"[uwsgi]\nsocket = :0\n", &mut l.cx());
    let mut want = Vec::new();
    uwsgi_proto::config::encode(b"[uwsgi]\nsocket = :0\n", &mut want).unwrap();
    let mut got = vec![0u8; want.len()];
    cfg.read_exact(&mut got).unwrap();
    assert_eq!(got, want);
    // Written at once: no token is held for the config socket.
    assert_eq!(l.tokens.len(), 1);
    ch.release(Inc(2), &mut l.cx());
    assert!(l.tokens.is_empty());
}
