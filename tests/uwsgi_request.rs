//! The uwsgi-proto request path against a real uWSGI server.

use std::time::Duration;

use uwsgi_emperor_suite::{roundtrip, start_uwsgi_hello};
use uwsgi_proto::request::{Request, Response};

#[test]
fn real_uwsgi_answers_a_request_built_by_uwsgi_proto() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, sock) = start_uwsgi_hello(dir.path());
    let headers = [("User-Agent", "uwsgi-proto-test")];
    let packet = Request {
        headers: &headers,
        ..Request::get("/greet?who=me")
    }
    .encode()
    .unwrap();
    let raw = roundtrip(sock.to_str().unwrap(), &packet, Duration::from_secs(10)).unwrap();
    let resp = Response::parse(&raw).unwrap_or_else(|e| {
        panic!(
            "bad response ({e}): {:?}\n{}",
            String::from_utf8_lossy(&raw),
            server.output()
        )
    });
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("X-Hello"), Some(&b"world"[..]));
    assert_eq!(resp.body, b"Hello from uWSGI /greet");
    drop(server);
}
