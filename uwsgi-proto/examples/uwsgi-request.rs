//! Sends one request to a uWSGI server and prints the HTTP response it returns.
//!
//! ```text
//! cargo run -p uwsgi-proto --example uwsgi-request -- SOCKET PATH
//! ```
//! SOCKET is a unix socket path or `host:port`; PATH is the request URI (e.g. `/hello?x=1`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use uwsgi_proto::request::{Request, Response};

const TIMEOUT: Duration = Duration::from_secs(10);

fn exchange<S: Read + Write>(mut s: S, packet: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(packet)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

fn is_tcp(addr: &str) -> bool {
    !addr.starts_with('/')
        && !addr.starts_with('.')
        && addr
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, path] = args.as_slice() else {
        eprintln!("usage: uwsgi-request SOCKET PATH   (SOCKET: unix socket path or host:port)");
        return ExitCode::from(2);
    };
    let (host, port) = match socket.rsplit_once(':') {
        Some((h, p)) if is_tcp(socket) => (h, p.parse().unwrap_or(80)),
        _ => ("localhost", 80),
    };
    let packet = match (Request {
        host,
        port,
        ..Request::get(path)
    })
    .encode()
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("uwsgi-request: cannot encode the request for {path:?}: {e}");
            return ExitCode::from(2);
        }
    };
    let result = if is_tcp(socket) {
        TcpStream::connect(socket.as_str()).and_then(|s| {
            s.set_read_timeout(Some(TIMEOUT))?;
            exchange(s, &packet)
        })
    } else {
        UnixStream::connect(socket).and_then(|s| {
            s.set_read_timeout(Some(TIMEOUT))?;
            exchange(s, &packet)
        })
    };
    let raw = match result {
        Ok(raw) => raw,
        Err(e) => {
            eprintln!("uwsgi-request: {socket}: {e} (is a uWSGI server listening there with `--socket {socket}`?)");
            return ExitCode::FAILURE;
        }
    };
    let _ = std::io::stdout().write_all(&raw);
    match Response::parse(&raw) {
        Ok(r) if (200..400).contains(&r.status) => ExitCode::SUCCESS,
        Ok(r) => {
            eprintln!("\nuwsgi-request: server answered status {}", r.status);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("\nuwsgi-request: the answer is not an HTTP response: {e}");
            ExitCode::FAILURE
        }
    }
}
