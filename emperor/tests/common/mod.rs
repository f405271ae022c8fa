//! Helpers for the emperor's end-to-end tests: start our emperor over a vassal directory of
//! real uWSGI vassals, read its stats, talk uwsgi to the vassals.

#![allow(dead_code, unused_imports)]

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub use uwsgi_emperor_suite::{require_uwsgi, roundtrip, write_hello_app, Proc};
use uwsgi_proto::request::{Request, Response};

pub mod fork;

/// Deadline for anything a uWSGI vassal does (start, reload, stop) on a busy 2-core machine.
pub const T: Duration = Duration::from_secs(30);

/// Writes `dir/name`: a python3 hello vassal on the unix socket `sock`, plus `extra` lines.
pub fn write_vassal(dir: &Path, name: &str, sock: &Path, extra: &str) -> PathBuf {
    if !dir.join("hello.py").exists() {
        write_hello_app(dir);
    }
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!(
            "[uwsgi]\nplugin = python3\nmaster = true\nprocesses = 1\nsocket = {}\nwsgi-file = %dhello.py\n{extra}",
            sock.display()
        ),
    )
    .unwrap();
    p
}

/// Our emperor over `monitor` with a stats socket in `work`, plus `args`.
pub fn start_emperor(work: &Path, monitor: &Path, args: &[&str]) -> (Proc, PathBuf) {
    start_emperor_with(
        Command::new(env!("CARGO_BIN_EXE_emperor")),
        work,
        monitor,
        args,
    )
}

/// Same, with a prepared command (e.g. a wrapper like setpriv) whose program runs the emperor.
pub fn start_emperor_with(
    mut cmd: Command,
    work: &Path,
    monitor: &Path,
    args: &[&str],
) -> (Proc, PathBuf) {
    let stats = work.join("stats.sock");
    cmd.arg(monitor)
        .arg("--emperor-stats")
        .arg(&stats)
        .args(args)
        .env("EMPEROR_LOG", "info")
        .current_dir(work);
    let mut p = Proc::spawn(cmd);
    p.wait_for_line("Starting the Emperor", T);
    (p, stats)
}

/// One stats document.
pub fn stats(path: &Path) -> serde_json::Value {
    let mut s = UnixStream::connect(path).unwrap_or_else(|e| panic!("stats {path:?}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("invalid stats JSON ({e}): {out}"))
}

/// The stats entry of vassal `id`, if present.
pub fn vassal(doc: &serde_json::Value, id: &str) -> Option<serde_json::Value> {
    doc["vassals"]
        .as_array()?
        .iter()
        .find(|v| v["id"] == id)
        .cloned()
}

/// Polls the stats until `pred` holds for vassal `id` (or panics after `timeout`, showing the
/// emperor's output).
pub fn wait_vassal(
    emperor: &mut Proc,
    stats_path: &Path,
    id: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let doc = stats(stats_path);
        if let Some(v) = vassal(&doc, id) {
            if pred(&v) {
                return v;
            }
        }
        if Instant::now() > deadline {
            panic!(
                "vassal {id}: {what} not reached within {timeout:?}; stats: {doc:#}\noutput:\n{}",
                emperor.output()
            );
        }
        // Poll interval of a deadline-bounded wait on the emperor's state.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends a GET through the uwsgi protocol and returns the parsed status and body.
pub fn hello(sock: &Path) -> (u16, Vec<u8>) {
    let packet = Request::get("/hi").encode().unwrap();
    let raw = roundtrip(sock.to_str().unwrap(), &packet, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("request to {sock:?} failed: {e}"));
    let resp = Response::parse(&raw)
        .unwrap_or_else(|e| panic!("bad response ({e}): {:?}", String::from_utf8_lossy(&raw)));
    (resp.status, resp.body.to_vec())
}

/// Pids of the direct children of `pid` (uWSGI workers of a master).
pub fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// True while `/proc/<pid>` exists (a zombie counts: it was not reaped).
pub fn exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Sends `sig` to `pid`.
pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory effects.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Sets a file's mtime one second ahead (what `touch` does, without relying on the clock
/// ticking over).
pub fn touch(p: &Path) {
    let f = std::fs::File::options().write(true).open(p).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(1))
        .unwrap();
}

/// Waits until `pid` is gone from /proc.
pub fn wait_gone(pid: i32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while exists(pid) {
        assert!(Instant::now() < deadline, "pid {pid} still exists");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The vassal-shim binary beside our emperor binary, built into the same target dir (and
/// profile) when it is missing.
pub fn ensure_shim() -> PathBuf {
    let emperor = Path::new(env!("CARGO_BIN_EXE_emperor"));
    let bin_dir = emperor.parent().unwrap();
    let shim = bin_dir.join("vassal-shim");
    if !shim.exists() {
        let target_dir = bin_dir.parent().unwrap();
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "-p", "vassal-shim", "--bin", "vassal-shim"])
            .env("CARGO_TARGET_DIR", target_dir)
            .current_dir(workspace);
        if bin_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("run cargo to build vassal-shim");
        assert!(st.success(), "building vassal-shim failed");
    }
    assert!(shim.exists(), "{} missing after the build", shim.display());
    shim
}

/// A command-socket datagram (a uwsgi vars packet) of `pairs`.
pub fn datagram(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut b = uwsgi_proto::vars::VarsBuilder::new();
    for (k, v) in pairs {
        b.push(k, v).unwrap();
    }
    b.into_packet(0, 0)
}

/// Sends `packet` to the unix datagram socket `sock`.
pub fn send(sock: &Path, packet: &[u8]) {
    std::os::unix::net::UnixDatagram::unbound()
        .unwrap()
        .send_to(packet, sock)
        .unwrap_or_else(|e| panic!("command socket {sock:?}: {e}"));
}

/// A fresh work directory and its `vassals` subdirectory (the monitored one).
pub fn work_dir() -> (tempfile::TempDir, PathBuf) {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("vassals");
    std::fs::create_dir(&dir).unwrap();
    (work, dir)
}

/// Writes `text` to `path`, executable (mode 0755).
pub fn write_executable(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// Writes `path`: a `/bin/sh` script running `body`, executable.
pub fn write_sh(path: &Path, body: &str) {
    write_executable(path, &format!("#!/bin/sh\n{body}\n"));
}

/// `work/vassal.sh`: a vassal that reports ready + loyal, then exits at the first byte from the
/// emperor.
pub fn write_loyal_script(work: &Path) -> PathBuf {
    let p = work.join("vassal.sh");
    write_executable(
        &p,
        "#!/bin/bash\nfd=$UWSGI_EMPEROR_FD\nprintf '\\001\\021' >&$fd\ndd bs=1 count=1 <&$fd >/dev/null 2>&1\nexit 0\n",
    );
    p
}

/// Waits (up to [`T`]) until vassal `id` has a pid; returns its stats entry.
pub fn wait_running(emperor: &mut Proc, stats_path: &Path, id: &str) -> serde_json::Value {
    wait_vassal(emperor, stats_path, id, T, "running", |v| {
        v["pid"].as_i64().unwrap_or(-1) > 0
    })
}

/// [`work_dir`] plus `work/srv`, a directory outside the monitored one (for symlink targets).
pub fn work_dir_with_srv() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (work, dir) = work_dir();
    let srv = work.path().join("srv");
    std::fs::create_dir(&srv).unwrap();
    (work, dir, srv)
}

/// Our emperor over `monitor` with `wrapper` as `--emperor-wrapper` (the program every vassal
/// runs), plus `args`.
pub fn start_wrapped(
    work: &Path,
    monitor: &Path,
    wrapper: &Path,
    args: &[&str],
) -> (Proc, PathBuf) {
    let mut all = vec!["--emperor-wrapper", wrapper.to_str().unwrap()];
    all.extend_from_slice(args);
    start_emperor(work, monitor, &all)
}

/// Waits (up to [`T`]) until the file at `path` contains `needle` at least `count` times;
/// returns its text.
pub fn wait_file(path: &Path, needle: &str, count: usize) -> String {
    let deadline = Instant::now() + T;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.matches(needle).count() >= count {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} does not contain {needle:?} {count} time(s) within {T:?}; it has:\n{text}",
            path.display()
        );
        // Poll interval of a deadline-bounded wait on a file another process writes.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`work_dir`] with the work directory traversable by every user (mode 0755), for vassals
/// and clients running as another user.
pub fn shared_work_dir() -> (tempfile::TempDir, PathBuf) {
    let (work, dir) = work_dir();
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    (work, dir)
}

/// The real uWSGI emperor (`uwsgi --emperor monitor`, run in `work`) with our emperor as the
/// program of every vassal (`--emperor-wrapper`): our emperor as a sub-emperor.
pub fn start_real_emperor_over_ours(uwsgi: &Path, monitor: &Path, work: &Path) -> Proc {
    let mut cmd = Command::new(uwsgi);
    cmd.arg("--emperor")
        .arg(monitor)
        .args(["--emperor-wrapper", env!("CARGO_BIN_EXE_emperor")])
        .env("EMPEROR_LOG", "info")
        .current_dir(work);
    Proc::spawn(cmd)
}

/// The argv of `pid`, from `/proc/PID/cmdline` (empty once it is gone).
pub fn proc_argv(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// `/etc/uwsgi-emperor/emperor.ini` as Debian ships it, followed by `keys` (its `uid`/`gid`
/// and `emperor` lines, as the test needs them).
pub fn debian_emperor_ini(keys: &str) -> String {
    format!(
        "[uwsgi]\nautoload = true\nmaster = true\nworkers = 2\nno-orphans = true\n\
         log-date = true\n{keys}"
    )
}

/// `emperor ctl ARGS`, with no socket taken from the environment (`EMPEROR_STATS`,
/// `EMPEROR_COMMAND_SOCKET`): each test names its own.
pub fn ctl_command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_emperor"));
    c.arg("ctl")
        .args(args)
        .env_remove("EMPEROR_STATS")
        .env_remove("EMPEROR_COMMAND_SOCKET");
    c
}
