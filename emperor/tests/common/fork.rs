//! Helpers for the fork-server tests: the `preloaded-base` example built on first use, and its
//! line-echo application vassals.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::{wait_vassal, Proc, T};

/// The emperor's options of a fork-server set-up in its work dir: fork server `fs.sock`
/// (relative: resolved against the emperor's cwd), base vassal `base.ini`, a 200 ms throttle.
pub const FORK_SERVER_ARGS: &[&str] = &[
    "--emperor-use-fork-server",
    "fs.sock",
    "--vassal-fork-base",
    "base.ini",
    "--emperor-throttle",
    "200",
];

/// Builds `args` (a `cargo build` tail) into this test's target dir and profile; returns
/// `<target>/<profile>/<rel>`.
pub fn built(args: &[&str], rel: &str) -> PathBuf {
    let emperor = Path::new(env!("CARGO_BIN_EXE_emperor"));
    let profile_dir = emperor.parent().unwrap();
    let bin = profile_dir.join(rel);
    let target_dir = profile_dir.parent().unwrap();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(["build", "--quiet"])
        .args(args)
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(workspace);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo ({cmd:?}): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(bin.exists(), "{} missing after the build", bin.display());
    bin
}

/// The `preloaded-base` example of `forkserver-proto`, built on first use.
pub fn preloaded_base() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        built(
            &["-p", "forkserver-proto", "--example", "preloaded-base"],
            "examples/preloaded-base",
        )
    })
    .clone()
}

/// `dir/NAME.ini`: an adopted line-echo vassal on `work/NAME.sock` (written, then renamed in,
/// so the emperor never sees a half-written config).
pub fn write_echo_app(work: &Path, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let sock = work.join(format!("{name}.sock"));
    let ini = dir.join(format!("{name}.ini"));
    let tmp = work.join(format!("{name}.tmp"));
    std::fs::write(
        &tmp,
        format!("[app]\nsocket = {}\nheartbeat = 1\n", sock.display()),
    )
    .unwrap();
    std::fs::rename(&tmp, &ini).unwrap();
    (ini, sock)
}

/// Sends `line` to the echo vassal on `sock` and asserts it comes back.
pub fn echo(sock: &Path, line: &str) {
    let s = UnixStream::connect(sock).unwrap_or_else(|e| panic!("connect {sock:?}: {e}"));
    s.set_read_timeout(Some(T)).unwrap();
    (&s).write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut got = String::new();
    BufReader::new(&s).read_line(&mut got).unwrap();
    assert_eq!(got, format!("{line}\n"), "echo through {sock:?}");
}

/// The `pid` of a stats entry (-1 when it has none).
pub fn pid_of(v: &serde_json::Value) -> i32 {
    v["pid"].as_i64().unwrap_or(-1) as i32
}

/// The parent pid of `pid`, from `/proc/PID/stat`.
pub fn ppid(pid: i32) -> i32 {
    forkserver_proto::parent_of(forkserver_proto::Pid::from_raw(pid))
        .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"))
        .as_raw()
}

/// Waits until vassal `id` is loyal with a pid other than `not`; returns its stats entry.
pub fn wait_loyal(emp: &mut Proc, st: &Path, id: &str, not: i32) -> serde_json::Value {
    wait_vassal(emp, st, id, T, "loyal", |v| {
        v["loyal"] == 1 && pid_of(v) > 0 && pid_of(v) != not
    })
}
