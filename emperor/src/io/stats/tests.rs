use std::io::{Read, Write};
use std::os::unix::net::UnixStream as StdStream;

use super::*;
use crate::io::test_loop::TestLoop;

fn doc() -> String {
    "{\"vassals\":[]}".to_string()
}

fn server(http: bool) -> (TestLoop, StatsServer, tempfile::TempDir) {
    let d = tempfile::tempdir().unwrap();
    let mut l = TestLoop::new();
    let s = StatsServer::bind("stats.sock", d.path(), http, &mut l.cx()).unwrap();
    (l, s, d)
}

#[test]
fn a_raw_client_gets_the_document_and_is_closed() {
    let (mut l, mut s, d) = server(false);
    let mut c = StdStream::connect(d.path().join("stats.sock")).unwrap();
    s.on_accept(&mut l.cx(), &|_| doc());
    let mut got = String::new();
    c.read_to_string(&mut got).unwrap();
    assert_eq!(got, doc());
    assert_eq!(s.clients(), 0);
    assert!(s.take_pending() || !s.pending());
    assert_eq!(l.tokens.len(), 1, "only the listener keeps a token");
    s.cleanup();
    assert!(!d.path().join("stats.sock").exists());
}

#[test]
fn an_http_client_is_answered_after_its_request() {
    let (mut l, mut s, d) = server(true);
    let mut c = StdStream::connect(d.path().join("stats.sock")).unwrap();
    s.on_accept(&mut l.cx(), &|_| doc());
    assert_eq!(s.clients(), 1);
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let key = match l.tokens.owner(mio::Token(1)) {
        Some(Owner::StatsClient(k)) => k,
        o => panic!("{o:?}"),
    };
    s.on_client(key, &mut l.cx(), &|_| doc());
    let mut got = String::new();
    c.read_to_string(&mut got).unwrap();
    assert!(got.starts_with("HTTP/1.0 200 OK\r\n"), "{got}");
    assert!(got.ends_with(&doc()), "{got}");
    assert_eq!(s.clients(), 0);
}

#[test]
fn the_oldest_client_is_evicted_and_slow_ones_expire() {
    let (mut l, mut s, d) = server(true);
    let mut conns = Vec::new();
    for _ in 0..MAX_STATS_CLIENTS + 1 {
        conns.push(StdStream::connect(d.path().join("stats.sock")).unwrap());
    }
    s.on_accept(&mut l.cx(), &|_| doc());
    assert_eq!(s.clients(), MAX_STATS_CLIENTS);
    // The first connection was dropped: it reads EOF.
    let mut buf = [0u8; 8];
    assert_eq!(conns[0].read(&mut buf).unwrap(), 0);
    let deadline = s.next_deadline().unwrap();
    s.expire(deadline + CLIENT_TIMEOUT, &mut l.cx());
    assert_eq!(s.clients(), 0);
    assert_eq!(l.tokens.len(), 1);
}

#[test]
fn bad_addresses_say_which() {
    let mut l = TestLoop::new();
    let e =
        StatsServer::bind("localhost:notaport", Path::new("/"), false, &mut l.cx()).unwrap_err();
    assert!(e.to_string().contains("localhost:notaport"), "{e}");
    let e = StatsServer::bind(
        "/nonexistent/dir/s.sock",
        Path::new("/"),
        false,
        &mut l.cx(),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot bind stats on /nonexistent"),
        "{e}"
    );
}

#[test]
fn only_get_events_subscribes() {
    assert!(is_events(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert!(is_events(b"GET /events?since=0 HTTP/1.1\r\n\r\n"));
    assert!(!is_events(b"GET / HTTP/1.0\r\n\r\n"));
    assert!(!is_events(b"GET /eventsx HTTP/1.0\r\n\r\n"));
    assert!(!is_events(b"POST /events HTTP/1.0\r\n\r\n"));
}

#[test]
fn a_subscriber_streams_notes_and_outlives_the_client_timeout() {
    let (mut l, mut s, d) = server(true);
    let mut c = StdStream::connect(d.path().join("stats.sock")).unwrap();
    c.write_all(b"GET /events HTTP/1.1\r\n\r\n").unwrap();
    s.on_accept(&mut l.cx(), &|_| doc());
    assert_eq!((s.clients(), s.subscribers()), (0, 1));
    s.expire(Instant::now() + CLIENT_TIMEOUT * 2, &mut l.cx());
    s.publish("{\"event\":\"a\"}", &mut l.cx());
    s.publish("{\"event\":\"b\"}", &mut l.cx());
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"{\"event\":\"b\"}\n\n") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8(got).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"));
    assert!(text.ends_with("\r\n\r\ndata: {\"event\":\"a\"}\n\ndata: {\"event\":\"b\"}\n\n"));
    assert_eq!(s.subscribers(), 1);
}
