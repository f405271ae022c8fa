//! Shared helpers for the end-to-end tests: finding the real uWSGI, owning child processes so
//! none outlive a test, waiting on log lines with deadlines, and talking uwsgi to a socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub use uwsgi_proto;

/// How to get uWSGI on a fresh Debian machine.
pub const INSTALL_HINT: &str = "install it with `apt-get install uwsgi-core uwsgi-plugin-python3 \
     uwsgi-plugin-psgi` (as root), or run `scripts/test`, which installs what the tests need";

/// The real `uwsgi` binary with the python3 plugin. Panics (never skips) when it is missing.
pub fn require_uwsgi() -> PathBuf {
    let path = find_in_path("uwsgi").unwrap_or_else(|| {
        panic!("this test needs the real uWSGI but `uwsgi` is not on PATH: {INSTALL_HINT}")
    });
    let ok = Command::new(&path)
        .args(["--plugin", "python3", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "`{}` cannot load the python3 plugin: {INSTALL_HINT}",
        path.display()
    );
    path
}

/// The first executable named `name` on PATH.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A WSGI app answering every request with `200 OK`, header `X-Hello: world` and body
/// `Hello from uWSGI` (plus the PATH_INFO it saw).
pub fn write_hello_app(dir: &Path) -> PathBuf {
    let app = dir.join("hello.py");
    std::fs::write(
        &app,
        "def application(environ, start_response):\n    \
         start_response('200 OK', [('Content-Type', 'text/plain'), ('X-Hello', 'world')])\n    \
         return [b'Hello from uWSGI ' + environ.get('PATH_INFO', '').encode()]\n",
    )
    .expect("write hello.py");
    app
}

/// A child process running in its own process group, with its stdout and stderr merged into a
/// line channel. Dropping it SIGKILLs the whole group and reaps the child.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    /// Starts `cmd` in a new process group with piped output.
    pub fn spawn(mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let tx2 = tx.clone();
        std::thread::spawn(move || pump(out, tx));
        std::thread::spawn(move || pump(err, tx2));
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a line containing `needle` appears (lines seen earlier count), or panics
    /// with everything seen so far once `timeout` passes.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        self.wait_for_new_line(needle, timeout)
    }

    /// Waits for a line containing `needle` that has not been seen yet.
    pub fn wait_for_new_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "no line containing {needle:?} within {timeout:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "process exited before printing {needle:?}; output:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Everything printed so far (drains pending lines without waiting).
    pub fn output(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with a pid we own and a valid signal number has no memory effects.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for the process to exit within `timeout`; returns its exit status. The wait is
    /// an event (a pidfd becoming readable), bounded by the deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        if let Some(st) = self.child.try_wait().expect("try_wait") {
            return st;
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is shared.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
        assert!(
            fd >= 0,
            "pidfd_open({pid}): {}",
            std::io::Error::last_os_error()
        );
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: pfd is a valid pollfd that outlives the call; nfds is 1.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        // SAFETY: fd was returned by pidfd_open above and is closed exactly once.
        unsafe { libc::close(fd) };
        assert!(
            n > 0,
            "process {pid} did not exit within {timeout:?}\n{}",
            self.output()
        );
        self.child.wait().expect("wait")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pgid = self.child.id() as i32;
        // SAFETY: kill(2) on our own process group; no memory is touched.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

fn pump(src: impl Read, tx: mpsc::Sender<String>) {
    for line in BufReader::new(src).lines() {
        match line {
            Ok(l) => {
                if tx.send(l).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// A real uWSGI serving the hello app on a unix socket in `dir`; returns the process (ready:
/// the app has been loaded) and the socket path.
pub fn start_uwsgi_hello(dir: &Path) -> (Proc, PathBuf) {
    let uwsgi = require_uwsgi();
    let app = write_hello_app(dir);
    let sock = dir.join("hello.sock");
    let mut cmd = Command::new(uwsgi);
    cmd.args([
        "--plugin",
        "python3",
        "--master",
        "--processes",
        "1",
        "--socket",
    ])
    .arg(&sock)
    .arg("--wsgi-file")
    .arg(&app)
    .current_dir(dir);
    let mut p = Proc::spawn(cmd);
    p.wait_for_line("WSGI app 0 (mountpoint='') ready", Duration::from_secs(30));
    p.wait_for_line("spawned uWSGI worker 1", Duration::from_secs(30));
    (p, sock)
}

/// Sends one uwsgi packet to `addr` (a unix socket path, or `host:port`) and reads the whole
/// answer until the server closes the connection.
pub fn roundtrip(addr: &str, packet: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    if addr.contains(':') && !addr.starts_with('/') && !addr.starts_with('.') {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.write_all(packet)?;
        s.read_to_end(&mut out)?;
    } else {
        let mut s = UnixStream::connect(addr)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.write_all(packet)?;
        s.read_to_end(&mut out)?;
    }
    Ok(out)
}
