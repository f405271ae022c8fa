//! Helpers shared by the vassal-shim end-to-end tests: the shim and test-app paths, an
//! emperor process (real uWSGI today; any emperor that takes uWSGI's option names and
//! serves uWSGI's stats JSON later), a channel-level fake emperor over a socketpair, /proc
//! checks and a tiny HTTP client. Every wait has a deadline; nothing sleeps blindly.

#![allow(dead_code)]

pub mod scenarios;
pub mod zmtp;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub use uwsgi_emperor_suite::{require_uwsgi, Proc};

/// Generous bound for anything that should happen "soon" on a loaded 2-core machine.
pub const SOON: Duration = Duration::from_secs(30);

/// The shim binary under test.
pub fn shim() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vassal-shim"))
}

/// A binary of another workspace package built into the same target directory as the shim
/// (e.g. `emperor`: build it first with `cargo build -p emperor`).
pub fn sibling_binary(name: &str) -> PathBuf {
    let p = shim().parent().unwrap().join(name);
    assert!(
        p.is_file(),
        "{} is missing: build it first (`cargo build -p {name}` with the same CARGO_TARGET_DIR)",
        p.display()
    );
    p
}

/// The `native_vassal` example (cargo builds examples along with the tests).
pub fn native_vassal_example() -> PathBuf {
    let p = shim()
        .parent()
        .unwrap()
        .join("examples")
        .join("native_vassal");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo test -p vassal-shim` (which builds the examples) or \
         `cargo build -p vassal-shim --examples` first",
        p.display()
    );
    p
}

/// The python3 interpreter for the test app (Debian's, without shims in between, if present).
pub fn python() -> PathBuf {
    let debian = PathBuf::from("/usr/bin/python3");
    if debian.is_file() {
        return debian;
    }
    uwsgi_emperor_suite::find_in_path("python3")
        .expect("the vassal-shim tests need python3 for their test app")
}

/// The test app script.
pub fn testapp() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/apps/testapp.py"
    ))
}

/// `exec = ...` value running the test app with `args`.
pub fn testapp_exec(args: &str) -> String {
    format!("{} {} {args}", python().display(), testapp().display())
}

/// The Unix time in whole seconds as uWSGI reads it (`time(2)`, its default clock). On Linux
/// that is the coarse clock, updated once per tick: in the first milliseconds of a second it
/// still shows the previous one, while `SystemTime::now()` already shows the new one. A value
/// read here is never ahead of what a process calling `time(2)` afterwards gets.
pub fn emperor_clock() -> libc::time_t {
    // SAFETY: time(2) with a null pointer only returns the time; it writes no memory.
    unsafe { libc::time(std::ptr::null_mut()) }
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`. For state that
/// has no event to wait on (stats JSON, /proc), checked every 50 ms.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (up to [`SOON`] each) for `lines` to be logged by `p`, in order.
pub fn wait_lines(p: &mut Proc, lines: &[&str]) {
    for line in lines {
        p.wait_for_line(line, SOON);
    }
}

/// Waits until `needle` has appeared at least `n` times in the process output.
pub fn wait_count(p: &mut Proc, needle: &str, n: usize) {
    let deadline = Instant::now() + SOON;
    while p.output().matches(needle).count() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{needle:?} not seen {n} times:\n{}",
            p.output()
        );
        p.wait_for_new_line(needle, left);
    }
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Every live process whose command line contains `needle`.
pub fn pids_with_cmdline(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(c) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) && alive(pid) {
                out.push(pid);
            }
        }
    }
    out
}

/// Waits until none of `pids` is alive.
pub fn wait_all_gone(pids: &[i32], timeout: Duration) {
    wait_all_gone_or(pids, timeout, String::new);
}

/// Waits until none of `pids` is alive; on a timeout the panic names each survivor (state,
/// parent, group, command line) and adds `context()` (e.g. the log of the process under test).
pub fn wait_all_gone_or(pids: &[i32], timeout: Duration, context: impl FnOnce() -> String) {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            let who: Vec<String> = left.iter().map(|p| describe(*p)).collect();
            panic!(
                "timed out after {timeout:?} waiting for processes {pids:?} to be gone; still alive:\n{}\n{}",
                who.join("\n"),
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One line about `pid` for a failure message: state, parent, process group, command line.
pub fn describe(pid: i32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().take(3).collect())
        .unwrap_or_default();
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default();
    format!("  pid {pid} [state, ppid, pgid] {fields:?}: {cmd}")
}

/// Parses `testapp pid=N ...` out of a log line.
pub fn pid_in(line: &str, key: &str) -> i32 {
    let at = line
        .find(key)
        .unwrap_or_else(|| panic!("no {key:?} in {line:?}"));
    line[at + key.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no number after {key:?} in {line:?}"))
}

/// GET `path` from 127.0.0.1:`port`; the response body.
pub fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    http_exchange(&mut s, path)
}

/// GET `path` over a unix socket; the response body.
pub fn http_get_unix(sock: &Path, path: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(SOON))?;
    http_exchange(&mut s, path)
}

fn http_exchange(s: &mut (impl Read + Write), path: &str) -> std::io::Result<String> {
    write!(s, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(out))
}

/// An emperor process (uWSGI's by default) governing `dir/vassals`, with its stats socket.
pub struct Emperor {
    pub proc: Proc,
    pub dir: tempfile::TempDir,
    pub vassals: PathBuf,
    pub stats: PathBuf,
}

impl Emperor {
    /// Starts `uwsgi --emperor DIR/vassals --emperor-wrapper <shim> --emperor-stats
    /// DIR/stats.sock` plus `extra` options.
    pub fn uwsgi(extra: &[&str]) -> Emperor {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Emperor::start(&require_uwsgi(), |_| extra)
    }

    /// Same with another emperor binary that understands uWSGI's option names; `extra` gets
    /// the emperor's temporary directory and returns more options.
    pub fn start(binary: &Path, extra: impl FnOnce(&Path) -> Vec<String>) -> Emperor {
        Emperor::start_with_wrapper(binary, &shim(), extra)
    }

    /// Same with another `--emperor-wrapper`.
    pub fn start_with_wrapper(
        binary: &Path,
        wrapper: &Path,
        extra: impl FnOnce(&Path) -> Vec<String>,
    ) -> Emperor {
        let dir = tempfile::tempdir().unwrap();
        let extra = extra(dir.path());
        let vassals = dir.path().join("vassals");
        std::fs::create_dir(&vassals).unwrap();
        let stats = dir.path().join("stats.sock");
        let mut cmd = Command::new(binary);
        cmd.arg("--emperor")
            .arg(&vassals)
            .arg("--emperor-wrapper")
            .arg(wrapper)
            .arg("--emperor-stats")
            .arg(&stats)
            .args(extra)
            .current_dir(dir.path());
        let mut proc = Proc::spawn(cmd);
        proc.wait_for_line("Emperor", SOON);
        Emperor {
            proc,
            dir,
            vassals,
            stats,
        }
    }

    /// Writes a vassal file.
    pub fn add(&self, name: &str, text: &str) -> PathBuf {
        let p = self.vassals.join(name);
        // Write then rename so the emperor never reads half a file.
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p
    }

    /// Bumps a vassal file's mtime into the future (a reload for any mtime rule).
    pub fn touch(&self, name: &str) {
        let p = self.vassals.join(name);
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        let t = std::time::SystemTime::now() + Duration::from_secs(5);
        f.set_modified(t).unwrap();
    }

    /// Removes a vassal file.
    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.vassals.join(name)).unwrap();
    }

    /// The stats JSON, or None while the stats socket is not answering.
    pub fn stats(&self) -> Option<serde_json::Value> {
        let mut s = UnixStream::connect(&self.stats).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The stats entry of vassal `id`.
    pub fn vassal(&self, id: &str) -> Option<serde_json::Value> {
        self.stats()?["vassals"]
            .as_array()?
            .iter()
            .find(|v| v["id"] == id)
            .cloned()
    }

    /// The blacklist entry of `id`.
    pub fn blacklisted(&self, id: &str) -> Option<serde_json::Value> {
        self.stats()?["blacklist"]
            .as_array()?
            .iter()
            .find(|v| v["id"] == id)
            .cloned()
    }

    /// Waits until the vassal's stats entry satisfies `pred`; returns it.
    pub fn wait_vassal(
        &self,
        id: &str,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_until(&format!("{id}: {what}"), SOON, || {
            self.vassal(id).filter(|v| pred(v))
        })
    }
}

/// A channel-level emperor: a socketpair (and optionally a config socketpair) handed to a
/// shim process, so a test can read every byte the shim sends and send any byte to it.
pub struct FakeEmperor {
    pub proc: Proc,
    pub chan: UnixStream,
    pub config: Option<UnixStream>,
    pub dir: tempfile::TempDir,
}

fn inheritable_pair() -> (UnixStream, OwnedFd) {
    let (a, b) = UnixStream::pair().unwrap();
    (a, OwnedFd::from(b))
}

impl FakeEmperor {
    /// Starts the shim with `args`, an emperor channel, and a config channel when
    /// `with_config`. `prepare` may adjust the command (env, cwd, stdin).
    pub fn start(
        args: &[&str],
        with_config: bool,
        prepare: impl FnOnce(&mut Command),
    ) -> FakeEmperor {
        let dir = tempfile::tempdir().unwrap();
        let (chan, child_chan) = inheritable_pair();
        let (config, child_cfg) = if with_config {
            let (a, b) = inheritable_pair();
            (Some(a), Some(b))
        } else {
            (None, None)
        };
        let mut cmd = Command::new(shim());
        cmd.args(args)
            .current_dir(dir.path())
            .env("UWSGI_EMPEROR_FD", child_chan.as_raw_fd().to_string())
            .env_remove("UWSGI_EMPEROR_FD_CONFIG")
            .env_remove("NOTIFY_SOCKET");
        if let Some(c) = &child_cfg {
            cmd.env("UWSGI_EMPEROR_FD_CONFIG", c.as_raw_fd().to_string());
        }
        let keep: Vec<i32> = [
            Some(child_chan.as_raw_fd()),
            child_cfg.as_ref().map(|c| c.as_raw_fd()),
        ]
        .into_iter()
        .flatten()
        .collect();
        // SAFETY: the closure only calls fcntl(2) on descriptors that exist in the child.
        unsafe {
            cmd.pre_exec(move || {
                for fd in &keep {
                    let fl = libc::fcntl(*fd, libc::F_GETFD);
                    libc::fcntl(*fd, libc::F_SETFD, fl & !libc::FD_CLOEXEC);
                }
                Ok(())
            });
        }
        prepare(&mut cmd);
        let proc = Proc::spawn(cmd);
        drop(child_chan);
        drop(child_cfg);
        FakeEmperor {
            proc,
            chan,
            config,
            dir,
        }
    }

    /// The next byte from the shim within `timeout`; None on EOF.
    pub fn read_byte(&mut self, timeout: Duration) -> Option<u8> {
        self.chan.set_read_timeout(Some(timeout)).unwrap();
        let mut b = [0u8; 1];
        match self.chan.read(&mut b) {
            Ok(0) => None,
            Ok(_) => Some(b[0]),
            Err(e) => panic!(
                "no byte from the shim within {timeout:?} ({e}); output:\n{}",
                self.proc.output()
            ),
        }
    }

    /// Reads bytes until `want` arrives, skipping heartbeats (26); panics on anything else.
    pub fn expect(&mut self, want: u8) {
        loop {
            match self.read_byte(SOON) {
                Some(b) if b == want => return,
                Some(26) if want != 26 => continue,
                other => panic!(
                    "expected byte {want}, got {other:?}; output:\n{}",
                    self.proc.output()
                ),
            }
        }
    }

    /// Sends one byte to the shim.
    pub fn send(&mut self, b: u8) {
        self.chan.write_all(&[b]).unwrap();
    }

    /// Expects each byte of `want` in order (heartbeats between them skipped, as in
    /// [`FakeEmperor::expect`]).
    pub fn expect_all(&mut self, want: &[u8]) {
        for b in want {
            self.expect(*b);
        }
    }

    /// Sends the stop byte (0) and asserts the shim exits with status 0.
    pub fn stop_cleanly(&mut self) {
        self.send(0);
        assert_eq!(self.proc.wait_exit(SOON).code(), Some(0));
    }

    /// Pushes a config frame.
    pub fn push_config(&mut self, text: &str) {
        let mut frame = Vec::new();
        uwsgi_emperor_suite::uwsgi_proto::config::encode(text.as_bytes(), &mut frame).unwrap();
        self.config
            .as_mut()
            .expect("started without a config channel")
            .write_all(&frame)
            .unwrap();
    }
}
