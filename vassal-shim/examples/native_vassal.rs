//! A native Rust vassal built on the `vassal_shim` library, no shim in between: run it as an
//! emperor's wrapper (`uwsgi --emperor DIR --emperor-wrapper native_vassal`) with vassal files
//! like
//!
//! ```ini
//! [native-vassal]
//! port = 8080
//! heartbeat = 1
//! ```
//!
//! It answers every HTTP request with `native pid=<pid> reloads=<n>`, sends 1 (first start
//! only, like uWSGI) and 5 once listening, 17 after its first request, 26 every `heartbeat`
//! seconds, stops on 0 / 2 / EOF and reloads on 1 by re-executing itself with the emperor
//! channel kept open (the uWSGI way). Without an emperor it just serves.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use vassal_shim::ini::Ini;
use vassal_shim::{Event, Vassal};

const LISTENER: Token = Token(0);
const EMPEROR: Token = Token(1);
const RELOADS_ENV: &str = "NATIVE_VASSAL_RELOADS";

fn settings() -> (u16, Option<Duration>) {
    let args: Vec<String> = std::env::args().collect();
    let mut port = 8080;
    let mut heartbeat = None;
    if let Some(i) = args.iter().position(|a| a == "--ini") {
        let path = args.get(i + 1).expect("--ini needs a file");
        let text = std::fs::read_to_string(path).expect("cannot read the ini file");
        if let Some(s) = Ini::parse(&text).section("native-vassal") {
            if let Some(p) = s.get("port").and_then(|p| p.parse().ok()) {
                port = p;
            }
            heartbeat = s
                .get("heartbeat")
                .and_then(|h| h.parse::<f64>().ok())
                .filter(|h| *h > 0.0)
                .map(Duration::from_secs_f64);
        }
    } else if let Some(i) = args.iter().position(|a| a == "--port") {
        port = args[i + 1].parse().expect("--port needs a number");
    }
    (port, heartbeat)
}

fn serve(stream: &mut std::net::TcpStream, reloads: u32) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let body = format!("native pid={} reloads={reloads}", std::process::id());
    let _ = write!(
        stream,
        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn main() {
    let (port, heartbeat) = settings();
    let reloads: u32 = std::env::var(RELOADS_ENV)
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let mut vassal = Vassal::from_env().expect("bad UWSGI_EMPEROR_FD");
    let mut poll = Poll::new().expect("poll");
    let mut listener = TcpListener::bind(([127, 0, 0, 1], port).into()).expect("cannot listen");
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .expect("register listener");
    if let Some(v) = vassal.as_mut() {
        poll.registry()
            .register(v, EMPEROR, Interest::READABLE)
            .expect("register emperor channel");
        if reloads == 0 {
            v.ready().expect("emperor gone");
        }
        v.accepting().expect("emperor gone");
    } else {
        eprintln!("native_vassal: no emperor, serving 127.0.0.1:{port} standalone");
    }
    eprintln!(
        "native_vassal pid={} listening on {port} reloads={reloads}",
        std::process::id()
    );
    let mut loyal = false;
    let mut next_beat = heartbeat.map(|h| Instant::now() + h);
    if let (Some(v), Some(_)) = (&vassal, heartbeat) {
        v.heartbeat().expect("emperor gone");
    }
    let mut events = Events::with_capacity(8);
    loop {
        let timeout = next_beat.map(|t| t.saturating_duration_since(Instant::now()));
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            panic!("poll: {e}");
        }
        for ev in events.iter() {
            match ev.token() {
                LISTENER => {
                    while let Ok((stream, _)) = listener.accept() {
                        let fd = std::os::fd::OwnedFd::from(stream);
                        let mut s = std::net::TcpStream::from(fd);
                        let _ = s.set_nonblocking(false);
                        serve(&mut s, reloads);
                        if !loyal {
                            loyal = true;
                            if let Some(v) = &vassal {
                                let _ = v.loyal();
                            }
                        }
                    }
                }
                EMPEROR => {
                    let mut got = Vec::new();
                    if let Some(v) = vassal.as_mut() {
                        if v.recv_all(&mut got).is_err() {
                            got.push(Event::Eof);
                        }
                    }
                    for e in got {
                        match e {
                            Event::Stop | Event::GracefulStop | Event::Eof => {
                                eprintln!("native_vassal: {e:?}, bye");
                                std::process::exit(0);
                            }
                            Event::Reload => {
                                eprintln!("native_vassal: reload, re-executing");
                                let v = vassal.as_ref().expect("reload without emperor");
                                v.set_cloexec(false).expect("fcntl");
                                let err = std::process::Command::new("/proc/self/exe")
                                    .args(std::env::args_os().skip(1))
                                    .env(RELOADS_ENV, (reloads + 1).to_string())
                                    .exec();
                                panic!("cannot re-exec: {err}");
                            }
                            Event::Unknown(_) => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if let (Some(t), Some(h)) = (next_beat, heartbeat) {
            if Instant::now() >= t {
                next_beat = Some(Instant::now() + h);
                if let Some(v) = &vassal {
                    if v.heartbeat().is_err() {
                        std::process::exit(1);
                    }
                }
            }
        }
    }
}
