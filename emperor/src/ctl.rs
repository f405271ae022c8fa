//! `emperor ctl`: the human front of the stats socket and the command socket.
//!
//! ```text
//! emperor ctl --stats /run/emperor.stats status          # aligned table
//! emperor ctl --stats /run/emperor.stats status --json   # the raw stats document
//! emperor ctl --stats S --command-socket C reload app.ini   # also stop, spawn, reset
//! emperor ctl --stats S events                      # one JSON line per lifecycle event
//! ```

use std::io::{BufRead, Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::Value;

/// Control a running emperor through its stats socket (--emperor-stats) and command socket
/// (--emperor-command-socket).
#[derive(Parser, Debug)]
#[command(
    name = "emperor ctl",
    bin_name = "emperor ctl",
    after_help = "Addresses: a unix socket path, or host:port (TCP for stats, UDP for commands). \
                  They can also come from EMPEROR_STATS and EMPEROR_COMMAND_SOCKET.\n\
                  Commands are one-way datagrams: the emperor logs what it did. With --stats, \
                  the vassal name is checked against the stats first."
)]
pub struct Ctl {
    /// The emperor's stats socket (its --emperor-stats ADDR).
    #[arg(long, value_name = "ADDR", env = "EMPEROR_STATS", global = true)]
    pub stats: Option<String>,

    /// The emperor's command socket (its --emperor-command-socket ADDR).
    #[arg(
        long = "command-socket",
        value_name = "ADDR",
        env = "EMPEROR_COMMAND_SOCKET",
        global = true
    )]
    pub command_socket: Option<String>,

    /// Print the raw stats JSON instead of a table (status).
    #[arg(long, global = true)]
    pub json: bool,

    /// What to do.
    #[command(subcommand)]
    pub cmd: Sub,
}

/// `emperor ctl` subcommands.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Sub {
    /// One line per vassal: name, state, pid, loyal, ready/accepting, restarts, backoff, last
    /// exit (needs --stats).
    Status,
    /// Reload a running vassal (byte 1), like touching its config.
    Reload {
        /// Vassal name (as in status) or config path.
        name: String,
    },
    /// Stop a vassal; it stays suspended (its config stays) until `spawn`.
    Stop {
        /// Vassal name or config path.
        name: String,
    },
    /// Start a suspended (wait-for-command, stopped) or on-demand vassal now.
    Spawn {
        /// Vassal name or config path.
        name: String,
    },
    /// Lift the backoff of a failing vassal: it is retried at once.
    Reset {
        /// Vassal name or config path.
        name: String,
    },
    /// Print the emperor's lifecycle events, one JSON line each, until interrupted (needs
    /// --stats of an emperor run with --stats-http).
    Events,
    /// Write a line into the emperor's log.
    Log {
        /// The message.
        msg: String,
    },
}

/// Runs `emperor ctl` with `args` (`args[0]` is `ctl`); returns the exit code.
pub fn main<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let ctl = match Ctl::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match run(&ctl, &mut std::io::stdout()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("emperor ctl: {e}");
            1
        }
    }
}

/// Why `emperor ctl` failed: each message says which socket or vassal, and what to check.
#[derive(Debug)]
pub enum CtlError {
    /// `status` without `--stats`.
    NeedsStats,
    /// A command without `--command-socket`.
    NeedsCommandSocket,
    /// Writing the output failed.
    Output(std::io::Error),
    /// The stats socket cannot be read.
    StatsRead {
        /// Its address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// The stats socket does not serve `GET /events`.
    NoEvents {
        /// The stats address.
        addr: String,
    },
    /// The stats socket answered something that is not a stats document.
    NotStats {
        /// Its address.
        addr: String,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// The stats have no vassal of that name or config path.
    UnknownVassal {
        /// The name asked for.
        name: String,
        /// The stats address.
        stats: String,
        /// The vassal names the stats list, sorted.
        known: Vec<String>,
    },
    /// The command datagram cannot be built (a field too long).
    Encode(uwsgi_proto::header::EncodeError),
    /// The socket address cannot be resolved.
    Addr(crate::io::addr::AddrError),
    /// The command socket cannot be sent to.
    Send {
        /// Its address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
}

impl std::fmt::Display for CtlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CtlError::NeedsStats => f.write_str(
                "status needs the stats socket: pass --stats ADDR (the emperor's --emperor-stats)",
            ),
            CtlError::NeedsCommandSocket => f.write_str(
                "this needs the command socket: pass --command-socket ADDR (the emperor's \
                 --emperor-command-socket)",
            ),
            CtlError::Output(e) => write!(f, "{e}"),
            CtlError::StatsRead { addr, source } => write!(
                f,
                "cannot read the stats socket {addr}: {source}; check that the emperor is \
                 running with --emperor-stats {addr} (and that you may open it)"
            ),
            CtlError::NoEvents { addr } => write!(
                f,
                "{addr} did not answer GET /events with an event stream; start the emperor \
                 with --emperor-stats {addr} --stats-http"
            ),
            CtlError::NotStats { addr, source } => write!(
                f,
                "{addr} did not answer with a stats document ({source}); is it the emperor's \
                 --emperor-stats socket?"
            ),
            CtlError::UnknownVassal { name, stats, known } => write!(
                f,
                "no vassal named {name} in the stats of {stats} (known: {}); check the name \
                 with `emperor ctl --stats {stats} status`",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
            CtlError::Encode(e) => write!(f, "{e}"),
            CtlError::Addr(e) => write!(f, "{e}"),
            CtlError::Send { addr, source } => write!(
                f,
                "cannot send to the command socket {addr}: {source}; check that the emperor is \
                 running with --emperor-command-socket {addr}"
            ),
        }
    }
}

impl std::error::Error for CtlError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CtlError::Output(e) => Some(e),
            CtlError::StatsRead { source, .. } | CtlError::Send { source, .. } => Some(source),
            CtlError::NotStats { source, .. } => Some(source),
            CtlError::Encode(e) => Some(e),
            CtlError::Addr(e) => Some(e),
            _ => None,
        }
    }
}

impl Sub {
    /// The command datagram's `cmd`, `vassal` and `msg`; `None` for `status`, which reads the
    /// stats socket instead.
    fn datagram(&self) -> Option<(&'static str, Option<&str>, Option<&str>)> {
        match self {
            Sub::Status | Sub::Events => None,
            Sub::Reload { name } => Some(("respawn", Some(name), None)),
            Sub::Stop { name } => Some(("stop", Some(name), None)),
            Sub::Spawn { name } => Some(("spawn", Some(name), None)),
            Sub::Reset { name } => Some(("reset", Some(name), None)),
            Sub::Log { msg } => Some(("log", None, Some(msg))),
        }
    }
}

/// Does what `ctl` says, printing to `out`.
pub fn run(ctl: &Ctl, out: &mut dyn Write) -> Result<(), CtlError> {
    match ctl.cmd.datagram() {
        None if ctl.cmd == Sub::Events => events(ctl, out),
        None => status(ctl, out),
        Some((cmd, name, msg)) => command(ctl, cmd, name, msg, out),
    }
}

/// `status`: the stats as a table, or raw with `--json`.
fn status(ctl: &Ctl, out: &mut dyn Write) -> Result<(), CtlError> {
    let addr = ctl.stats.as_deref().ok_or(CtlError::NeedsStats)?;
    let raw = fetch_stats(addr)?;
    if ctl.json {
        out.write_all(raw.as_bytes()).map_err(CtlError::Output)?;
        if !raw.ends_with('\n') {
            let _ = out.write_all(b"\n");
        }
    } else {
        let doc = parse_stats(addr, &raw)?;
        out.write_all(table(&doc).as_bytes())
            .map_err(CtlError::Output)?;
    }
    Ok(())
}

/// A command datagram to the command socket, after checking the vassal name against the stats
/// when `--stats` is given.
fn command(
    ctl: &Ctl,
    cmd: &str,
    name: Option<&str>,
    msg: Option<&str>,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let addr = ctl
        .command_socket
        .as_deref()
        .ok_or(CtlError::NeedsCommandSocket)?;
    if let (Some(name), Some(stats)) = (name, ctl.stats.as_deref()) {
        let doc = parse_stats(stats, &fetch_stats(stats)?)?;
        check_vassal(&doc, name, stats)?;
    }
    let packet = crate::io::command::encode(cmd, name, msg).map_err(CtlError::Encode)?;
    send(addr, &packet)?;
    match name {
        Some(n) => writeln!(out, "sent `{cmd}` for vassal {n} to {addr}"),
        None => writeln!(out, "sent `{cmd}` to {addr}"),
    }
    .map_err(CtlError::Output)
}

use crate::io::addr::{is_inet, LOCALHOST};

/// `HOST:PORT`, or a bare `:PORT` on this host.
fn inet_addr(addr: &str) -> Result<std::net::SocketAddr, CtlError> {
    crate::io::addr::inet(addr, LOCALHOST).map_err(CtlError::Addr)
}

/// Reads one stats document from `addr` (unix path or host:port; an HTTP answer from
/// `--stats-http` is unwrapped).
pub fn fetch_stats(addr: &str) -> Result<String, CtlError> {
    let hint = |source| CtlError::StatsRead {
        addr: addr.to_string(),
        source,
    };
    let raw = if is_inet(addr) {
        let s = std::net::TcpStream::connect(inet_addr(addr)?).map_err(hint)?;
        read_doc(s, |s, t| s.set_read_timeout(t)).map_err(hint)?
    } else {
        let s = UnixStream::connect(addr).map_err(hint)?;
        read_doc(s, |s, t| s.set_read_timeout(t)).map_err(hint)?
    };
    let text = String::from_utf8_lossy(&raw).into_owned();
    if text.starts_with("HTTP/") {
        if let Some((_, body)) = text.split_once("\r\n\r\n") {
            return Ok(body.to_string());
        }
    }
    Ok(text)
}

/// `events`: `GET /events` on the stats socket, printing each note's JSON as one line.
fn events(ctl: &Ctl, out: &mut dyn Write) -> Result<(), CtlError> {
    let addr = ctl.stats.as_deref().ok_or(CtlError::NeedsStats)?;
    let hint = |source| CtlError::StatsRead {
        addr: addr.to_string(),
        source,
    };
    let request = b"GET /events HTTP/1.1\r\nHost: emperor\r\nAccept: text/event-stream\r\n\r\n";
    let stream: Box<dyn Read> = if is_inet(addr) {
        let mut s = std::net::TcpStream::connect(inet_addr(addr)?).map_err(hint)?;
        let _ = s.write_all(request);
        Box::new(s)
    } else {
        let mut s = UnixStream::connect(addr).map_err(hint)?;
        let _ = s.write_all(request);
        Box::new(s)
    };
    let mut lines = std::io::BufReader::new(stream).lines();
    // A plain (non-HTTP) stats socket writes its document and closes, which can fail the
    // request's write or reset the read: either is no event stream, reported as such.
    let status = lines.next().and_then(Result::ok).unwrap_or_default();
    let mut event_stream = false;
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        if line.trim_end().is_empty() {
            break;
        }
        event_stream |= line.to_ascii_lowercase().contains("text/event-stream");
    }
    if !status.starts_with("HTTP/") || !status.contains(" 200") || !event_stream {
        return Err(CtlError::NoEvents {
            addr: addr.to_string(),
        });
    }
    for line in lines {
        let line = line.map_err(hint)?;
        if let Some(json) = line.strip_prefix("data: ") {
            writeln!(out, "{json}").map_err(CtlError::Output)?;
            out.flush().map_err(CtlError::Output)?;
        }
    }
    Ok(())
}

/// Reads a whole stats answer. A plain stats socket talks first; one that waits (an
/// `--stats-http` socket) gets a minimal HTTP request after a second of silence.
fn read_doc<S: Read + Write>(
    mut s: S,
    set_timeout: impl Fn(&S, Option<Duration>) -> std::io::Result<()>,
) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    set_timeout(&s, Some(Duration::from_secs(1)))?;
    loop {
        match s.read(&mut buf) {
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            }
            Err(e) => return Err(e),
        }
        break;
    }
    set_timeout(&s, Some(Duration::from_secs(10)))?;
    s.read_to_end(&mut raw)?;
    Ok(raw)
}

fn parse_stats(addr: &str, raw: &str) -> Result<Value, CtlError> {
    serde_json::from_str(raw).map_err(|source| CtlError::NotStats {
        addr: addr.to_string(),
        source,
    })
}

fn check_vassal(doc: &Value, name: &str, stats: &str) -> Result<(), CtlError> {
    let vassals = doc["vassals"].as_array().cloned().unwrap_or_default();
    if vassals
        .iter()
        .any(|v| v["id"] == name || v["config"] == name)
    {
        return Ok(());
    }
    let mut known: Vec<String> = vassals
        .iter()
        .filter_map(|v| v["id"].as_str())
        .map(str::to_string)
        .collect();
    known.sort_unstable();
    Err(CtlError::UnknownVassal {
        name: name.to_string(),
        stats: stats.to_string(),
        known,
    })
}

fn send(addr: &str, packet: &[u8]) -> Result<(), CtlError> {
    let hint = |source| CtlError::Send {
        addr: addr.to_string(),
        source,
    };
    if is_inet(addr) {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").map_err(hint)?;
        s.send_to(packet, inet_addr(addr)?).map_err(hint)?;
    } else {
        let s = UnixDatagram::unbound().map_err(hint)?;
        s.send_to(packet, addr).map_err(hint)?;
    }
    Ok(())
}

fn num(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

/// The status table of a stats document (one line per vassal, columns aligned).
pub fn table(doc: &Value) -> String {
    let mut rows: Vec<[String; 8]> = vec![[
        "NAME".into(),
        "STATE".into(),
        "PID".into(),
        "LOYAL".into(),
        "READY/ACC".into(),
        "RESTARTS".into(),
        "BACKOFF".into(),
        "LAST EXIT".into(),
    ]];
    let mut vassals = doc["vassals"].as_array().cloned().unwrap_or_default();
    vassals.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    for v in &vassals {
        let pid = num(&v["pid"]);
        let state = match v["state"].as_str() {
            Some(s) => s.to_string(),
            None if pid > 0 => "running".into(),
            None => "-".into(),
        };
        let mut state = state;
        if let Some(sock) = v["on_demand"].as_str().filter(|s| !s.is_empty()) {
            state.push_str(&format!(" ({sock})"));
        }
        let attempt = num(&v["attempt"]);
        let backoff = if attempt > 0 {
            let mut b = format!("{} ms, attempt {attempt}", num(&v["throttle_level"]));
            if let Some(n) = v["next_attempt_in_ms"].as_i64() {
                b.push_str(&format!(", retry in {n} ms"));
            }
            b
        } else {
            "-".into()
        };
        rows.push([
            v["id"].as_str().unwrap_or("?").to_string(),
            state,
            if pid > 0 { pid.to_string() } else { "-".into() },
            if num(&v["loyal"]) != 0 { "yes" } else { "no" }.into(),
            // Ready and accepting describe a process: none runs, none serves (whatever an
            // emperor that keeps the last process's flags says).
            if pid > 0 {
                format!("{}/{}", num(&v["ready"]), num(&v["accepting"]))
            } else {
                "-".into()
            },
            num(&v["restarts"]).to_string(),
            backoff,
            v["last_exit"].as_str().unwrap_or("-").to_string(),
        ]);
    }
    let mut widths = [0usize; 8];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(widths).enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if vassals.is_empty() {
        out.push_str("(no vassals)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_aligned() {
        let doc: Value = serde_json::from_str(
            r#"{"vassals":[
              {"id":"b.ini","pid":-1,"state":"waiting","loyal":0,"ready":0,"accepting":0,
               "restarts":3,"attempt":2,"throttle_level":2000,"next_attempt_in_ms":1500,
               "last_exit":"exit 1","on_demand":""},
              {"id":"a-long-name.ini","pid":4242,"state":"running","loyal":1,"ready":1,
               "accepting":1,"restarts":0,"attempt":0,"throttle_level":0,"last_exit":null,
               "on_demand":"/tmp/a.sock"}]}"#,
        )
        .unwrap();
        let t = table(&doc);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("NAME"));
        assert!(lines[1].starts_with("a-long-name.ini"), "{t}");
        let col = |l: &str, needle: &str| l.find(needle).unwrap();
        // Columns line up: STATE, PID and RESTARTS start at the same offsets on every line.
        assert_eq!(col(lines[0], "STATE"), col(lines[1], "running"));
        assert_eq!(col(lines[0], "STATE"), col(lines[2], "waiting"));
        assert_eq!(col(lines[0], "PID"), col(lines[1], "4242"));
        assert!(lines[1].contains("running (/tmp/a.sock)"));
        assert!(lines[2].contains("2000 ms, attempt 2, retry in 1500 ms"));
        assert!(lines[2].ends_with("exit 1"));
        assert!(table(&serde_json::json!({"vassals": []})).contains("(no vassals)"));
    }

    #[test]
    fn stats_are_read_from_plain_and_http_sockets() {
        let d = tempfile::tempdir().unwrap();
        let plain = d.path().join("plain.sock");
        let http = d.path().join("http.sock");
        let lp = std::os::unix::net::UnixListener::bind(&plain).unwrap();
        let lh = std::os::unix::net::UnixListener::bind(&http).unwrap();
        let t1 = std::thread::spawn(move || {
            let (mut c, _) = lp.accept().unwrap();
            c.write_all(b"{\"vassals\": []}\n").unwrap();
        });
        let t2 = std::thread::spawn(move || {
            // Like --stats-http: nothing is sent before the request arrives.
            let (mut c, _) = lh.accept().unwrap();
            let mut req = [0u8; 64];
            let n = c.read(&mut req).unwrap();
            assert!(req[..n].starts_with(b"GET / HTTP/1.0"));
            c.write_all(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"vassals\": [{\"id\": \"a.ini\"}]}")
                .unwrap();
        });
        let doc = parse_stats("p", &fetch_stats(plain.to_str().unwrap()).unwrap()).unwrap();
        assert_eq!(doc["vassals"], serde_json::json!([]));
        let doc = parse_stats("h", &fetch_stats(http.to_str().unwrap()).unwrap()).unwrap();
        assert_eq!(doc["vassals"][0]["id"], "a.ini");
        t1.join().unwrap();
        t2.join().unwrap();
        assert!(parse_stats("x", "not json")
            .unwrap_err()
            .to_string()
            .contains("--emperor-stats"));
    }

    #[test]
    fn unknown_vassal_and_missing_sockets_say_what_to_check() {
        let doc = serde_json::json!({"vassals": [{"id": "a.ini", "config": "/v/a.ini"}]});
        assert!(check_vassal(&doc, "a.ini", "s").is_ok());
        assert!(check_vassal(&doc, "/v/a.ini", "s").is_ok());
        let e = check_vassal(&doc, "b.ini", "s").unwrap_err().to_string();
        assert!(
            e.contains("known: a.ini") && e.contains("ctl --stats s status"),
            "{e}"
        );
        let e = fetch_stats("/nonexistent/stats.sock")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--emperor-stats /nonexistent/stats.sock"), "{e}");
        let e = send("/nonexistent/cmd.sock", b"x").unwrap_err().to_string();
        assert!(
            e.contains("--emperor-command-socket /nonexistent/cmd.sock"),
            "{e}"
        );
    }
}
