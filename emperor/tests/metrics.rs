//! `GET /metrics` on the HTTP stats server, checked by Prometheus' own tools: `promtool check
//! metrics` on a real scrape, and a real Prometheus server scraping the emperor every second.
//! Shell-script vassals run through --emperor-wrapper (no uWSGI needed).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const INSTALL_HINT: &str =
    "install Debian's prometheus package (`apt-get install prometheus`; scripts/test does it)";

/// A vassal that reports ready, accepting and loyal, then exits at the first emperor byte;
/// one whose config name holds "crash" exits 1 at once.
const VASSAL: &str = r#"case "$*" in *crash*) exit 1;; esac
fd=$UWSGI_EMPEROR_FD
printf '\001\005\021' >&$fd
dd bs=1 count=1 <&$fd >/dev/null 2>&1
exit 0"#;

fn require(tool: &str) -> PathBuf {
    uwsgi_emperor_suite::find_in_path(tool)
        .unwrap_or_else(|| panic!("this test needs `{tool}`, which is not on PATH: {INSTALL_HINT}"))
}

/// A TCP port free at the time of the call.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on 127.0.0.1:`port`: (head, body).
fn get(port: u16, path: &str) -> std::io::Result<(String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    Ok((head.to_string(), body.to_string()))
}

/// Our emperor over `dir` (vassals: [`VASSAL`]) with an HTTP stats server on a TCP port.
fn start(work: &Path, dir: &Path) -> (Proc, u16) {
    let wrapper = work.join("vassal.sh");
    write_sh(&wrapper, VASSAL);
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emperor"));
    cmd.arg(dir)
        .args([
            "--emperor-stats",
            &format!("127.0.0.1:{port}"),
            "--stats-http",
        ])
        .arg("--emperor-wrapper")
        .arg(&wrapper)
        .args(["--emperor-throttle", "100", "--emperor-max-throttle", "300"])
        .env("EMPEROR_LOG", "info")
        .current_dir(work);
    let mut p = Proc::spawn(cmd);
    p.wait_for_line("Starting the Emperor", T);
    (p, port)
}

/// Scrapes `/metrics` until `until` holds for the body (deadline [`T`]).
fn scrape_until(port: u16, what: &str, until: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + T;
    loop {
        let (head, body) = get(port, "/metrics").unwrap();
        assert!(
            head.contains("Content-Type: text/plain; version=0.0.4"),
            "{head}"
        );
        if until(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "no {what} within {T:?}:\n{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of the series line starting with `series` (name and labels).
fn value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

#[test]
fn a_real_scrape_passes_promtool_check_metrics() {
    let promtool = require("promtool");
    let (work, dir) = work_dir();
    std::fs::write(dir.join("app.ini"), "[uwsgi]\n").unwrap();
    std::fs::write(dir.join("crash.ini"), "[uwsgi]\n").unwrap();
    let (_emp, port) = start(work.path(), &dir);
    let body = scrape_until(port, "running app.ini and a crash", |b| {
        value(b, "emperor_vassal_up{vassal=\"app.ini\"}") == Some(1.0)
            && value(
                b,
                "emperor_vassal_exits_total{vassal=\"crash.ini\",reason=\"exit_1\"}",
            )
            .is_some()
    });
    for family in [
        "emperor_vassals{state=\"running\"}",
        "emperor_vassal_restarts_total{vassal=\"app.ini\"}",
        "emperor_vassal_start_time_seconds{vassal=\"app.ini\"}",
        "emperor_vassal_loyal{vassal=\"app.ini\"}",
        "emperor_vassal_last_heartbeat_seconds{vassal=\"app.ini\"}",
        "emperor_vassal_backoff_seconds{vassal=\"crash.ini\"}",
        "emperor_vassal_memory_bytes{vassal=\"app.ini\"}",
        "emperor_vassal_cpu_seconds_total{vassal=\"app.ini\"}",
        "emperor_spawns_total",
        "emperor_spawn_failures_total",
        "emperor_reloads_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(value(&body, family).is_some(), "no {family}:\n{body}");
    }
    // The JSON document stays at `/`.
    let (head, json) = get(port, "/").unwrap();
    assert!(head.contains("application/json"), "{head}");
    assert!(json.contains("\"vassals\""), "{json}");
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}\n{body}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `emperor_vassal_restarts_total` by vassal, as Prometheus' HTTP API returns it.
fn query_restarts(port: u16) -> Vec<(String, f64)> {
    let Ok((_, body)) = get(port, "/api/v1/query?query=emperor_vassal_restarts_total") else {
        return Vec::new();
    };
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(&body) else {
        return Vec::new();
    };
    doc["data"]["result"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .filter_map(|r| {
                    let v = r["metric"]["vassal"].as_str()?.to_string();
                    let n = r["value"][1].as_str()?.parse().ok()?;
                    Some((v, n))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_real_prometheus_scrapes_the_restarts_of_each_vassal() {
    let prometheus = require("prometheus");
    let (work, dir) = work_dir();
    std::fs::write(dir.join("app.ini"), "[uwsgi]\n").unwrap();
    std::fs::write(dir.join("crash.ini"), "[uwsgi]\n").unwrap();
    let (_emp, port) = start(work.path(), &dir);
    let prom_port = free_port();
    let config = work.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: emperor\n    scrape_interval: 1s\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .unwrap();
    let data = work.path().join("prometheus-data");
    let mut cmd = Command::new(prometheus);
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .current_dir(work.path());
    let mut prom = Proc::spawn(cmd);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut first_crash = None;
    let seen = loop {
        let rs = query_restarts(prom_port);
        let crash = rs.iter().find(|(v, _)| v == "crash.ini").map(|(_, n)| *n);
        let app = rs.iter().find(|(v, _)| v == "app.ini").map(|(_, n)| *n);
        if let (Some(c), Some(_)) = (crash, app) {
            match first_crash {
                None => first_crash = Some(c),
                Some(f) if c > f => break rs,
                Some(_) => {}
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not report growing restarts of crash.ini within 60 s: {rs:?}\n{}",
            prom.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        seen.iter().any(|(v, n)| v == "app.ini" && *n == 0.0),
        "{seen:?}"
    );
    prom.signal(libc::SIGTERM);
    assert!(prom.wait_exit(T).success(), "{}", prom.output());
}
