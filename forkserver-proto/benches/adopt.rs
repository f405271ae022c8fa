//! Time from "start a vassal" to the vassal's first channel byte (ready), two ways:
//!
//! * `adopt`: ask a running preloaded base (fork server) to fork one; the base already paid for
//!   its start-up (N MiB touched, a slow import simulated).
//! * `cold`: fork+exec the same program as a plain vassal, which pays the start-up itself.
//!
//! for a base holding 10 MiB and 500 MiB of touched memory. The program is this bench binary
//! itself, in a role selected by an environment variable, running the same code as the
//! `preloaded-base` example (`examples/base_app`). At the end a table of medians and ratios is
//! printed from the same measurements criterion saw.
//!
//! `FORKSERVER_BENCH_IMPORT_MS` sets the simulated import time (default 250 ms, as the example);
//! `FORKSERVER_BENCH_SIZES` the base sizes (default `10,500`); `PRELOADED_BASE_REPLY_EARLY=1`
//! makes the base reply before it is reparented (see `ServerConfig::reply_after_reparent`).

use std::cell::RefCell;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode};
use forkserver_proto::{request_fork, VassalFds};
use nix::sys::wait::waitpid;

#[path = "../examples/base_app/mod.rs"]
mod base_app;

const ROLE: &str = "FORKSERVER_BENCH_ROLE";
const DEADLINE: Duration = Duration::from_secs(30);
const DEFAULT_SIZES_MIB: [usize; 2] = [10, 500];

/// Base sizes in MiB: `FORKSERVER_BENCH_SIZES=10,500` (the default).
fn sizes_mib() -> Vec<usize> {
    std::env::var("FORKSERVER_BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_SIZES_MIB.to_vec())
}

thread_local! {
    static SAMPLES: RefCell<Vec<(String, Duration)>> = const { RefCell::new(Vec::new()) };
}

fn import_ms() -> String {
    std::env::var("FORKSERVER_BENCH_IMPORT_MS").unwrap_or_else(|_| "250".into())
}

/// Starts this binary in the program role with `args`, its channel end as fd 3.
fn spawn_program(args: &[OsString], channel_end: &UnixStream) -> Child {
    let raw = channel_end.as_raw_fd();
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args(args)
        .env(ROLE, "program")
        .env("UWSGI_EMPEROR_FD", "3")
        .env_remove("UWSGI_EMPEROR_FD_CONFIG")
        .stdin(Stdio::null());
    // SAFETY: dup2 is async-signal-safe; it gives the child the channel as fd 3 without CLOEXEC.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().expect("spawn the program")
}

fn first_byte(chan: &UnixStream) -> u8 {
    chan.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut b = [0u8; 1];
    (&*chan).read_exact(&mut b).expect("first channel byte");
    b[0]
}

struct Base {
    child: Child,
    channel: UnixStream,
    socket: PathBuf,
}

impl Base {
    fn start(dir: &Path, mib: usize) -> Base {
        let socket = dir.join(format!("fs-{mib}.sock"));
        let (channel, end) = UnixStream::pair().unwrap();
        let args: Vec<OsString> = vec![
            "--fork-server".into(),
            socket.clone().into(),
            "--ballast-mib".into(),
            mib.to_string().into(),
            "--import-ms".into(),
            import_ms().into(),
        ];
        let child = spawn_program(&args, &end);
        drop(end);
        channel.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut hello = [0u8; 3];
        (&channel).read_exact(&mut hello).expect("base announce");
        assert_eq!(hello, [1, 5, 17]);
        Base {
            child,
            channel,
            socket,
        }
    }
}

impl Drop for Base {
    fn drop(&mut self) {
        let _ = (&self.channel).write_all(&[0]);
        let _ = self.child.wait();
    }
}

fn adopt_once(base: &Base, argv: &[OsString]) -> Duration {
    let (chan, end) = UnixStream::pair().unwrap();
    let t0 = Instant::now();
    let pid = request_fork(
        &base.socket,
        argv,
        &VassalFds::channel(end.as_fd()),
        DEADLINE,
    )
    .expect("fork request");
    drop(end);
    assert_eq!(first_byte(&chan), 1);
    let dt = t0.elapsed();
    drop(chan); // EOF: the vassal exits
    reap(pid);
    dt
}

/// Reaps an adopted vassal (we are its subreaper). With the base's `PRELOADED_BASE_REPLY_EARLY`
/// the reply may beat the reparenting, so ECHILD is retried for a while (outside the timing).
fn reap(pid: nix::unistd::Pid) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match waitpid(pid, None) {
            Ok(_) => return,
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::ECHILD) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("reap adopted vassal {pid}: {e}"),
        }
    }
}

fn cold_once(args: &[OsString]) -> Duration {
    let (chan, end) = UnixStream::pair().unwrap();
    let t0 = Instant::now();
    let mut child = spawn_program(args, &end);
    drop(end);
    assert_eq!(first_byte(&chan), 1);
    let dt = t0.elapsed();
    drop(chan);
    let _ = child.wait();
    dt
}

fn record(name: &str, d: Duration) {
    SAMPLES.with(|s| s.borrow_mut().push((name.to_owned(), d)));
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("app.ini");
    std::fs::write(
        &ini,
        format!(
            "[app]\nsocket = {}\n",
            dir.path().join("echo.sock").display()
        ),
    )
    .unwrap();
    let mut g = c.benchmark_group("request_to_first_byte");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6));
    for mib in sizes_mib() {
        let label = format!("{mib}MiB");
        let base = Base::start(dir.path(), mib);
        let argv: Vec<OsString> = vec!["preloaded-base".into(), "--ini".into(), ini.clone().into()];
        g.bench_with_input(BenchmarkId::new("adopt", &label), &mib, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let d = adopt_once(&base, &argv);
                    record(&format!("adopt/{label}"), d);
                    total += d;
                }
                total
            })
        });
        drop(base);
        let args: Vec<OsString> = vec![
            "--ini".into(),
            ini.clone().into(),
            "--ballast-mib".into(),
            mib.to_string().into(),
            "--import-ms".into(),
            import_ms().into(),
        ];
        g.bench_with_input(BenchmarkId::new("cold", &label), &mib, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let d = cold_once(&args);
                    record(&format!("cold/{label}"), d);
                    total += d;
                }
                total
            })
        });
    }
    g.finish();
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn summary() {
    let all = SAMPLES.with(|s| s.borrow().clone());
    if all.is_empty() {
        return;
    }
    let of = |name: &str| -> Vec<Duration> {
        all.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, d)| *d)
            .collect()
    };
    println!(
        "\nrequest -> first channel byte (median of every iteration, warm-up included; import {} ms)",
        import_ms()
    );
    println!(
        "{:>8} {:>14} {:>14} {:>12}",
        "base", "adopt", "cold", "cold/adopt"
    );
    for mib in sizes_mib() {
        let a = of(&format!("adopt/{mib}MiB"));
        let c = of(&format!("cold/{mib}MiB"));
        if a.is_empty() || c.is_empty() {
            continue;
        }
        let (a, c) = (median(a), median(c));
        println!(
            "{:>8} {:>14?} {:>14?} {:>11.1}x",
            format!("{mib}MiB"),
            a,
            c,
            c.as_secs_f64() / a.as_secs_f64()
        );
    }
}

fn main() {
    if std::env::var_os(ROLE).is_some() {
        let args: Vec<OsString> = std::env::args_os().skip(1).collect();
        std::process::exit(base_app::main_with(&args));
    }
    // Like an emperor: adopted vassals (grandchildren of the base) become our children.
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
    summary();
}
