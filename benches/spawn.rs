//! The spawn path against its physical floor.
//!
//! * `floor/posix_spawn`: posix_spawn of a tiny program that writes one byte on an inherited
//!   socketpair end, timed until that byte is read (and the child reaped). Nothing a supervisor
//!   does can start a vassal faster than this.
//! * `emperor`: the emperor's own spawn path for one vassal, through its library API, from
//!   "config observed" (an inotify event names `app.ini`) to "first channel byte received": the
//!   monitor re-examines the file (`Scanner::check_name`), the core turns the update into a spawn
//!   action, the runtime's steps build the `Plan` (`resolve`, `build_argv`, the vassal
//!   environment) and `Spawner` starts the tiny vassal as the `--emperor-wrapper`, then the
//!   channel is made non-blocking, registered with a mio `Poll` and polled until the byte
//!   arrives. Between iterations (untimed) the config is "removed" and the child reaped, so every
//!   iteration is a brand-new vassal.
//! * `fork_exec`: what a `fork()`-based emperor (uWSGI) pays for the same start: fork, execve
//!   in the child, wait for the byte. Context for the ballast runs only.
//!
//! All three give the child the same environment: the emperor's vassal environment (this
//! process's, through `vassal_env`) plus `UWSGI_EMPEROR_FD`. Under `cargo bench` that includes
//! the `LD_LIBRARY_PATH` cargo sets, which makes the dynamic loader of every started program
//! search more directories (~150 µs more per start on the reference machine than with a bare
//! environment); it is the same for every variant, so the ratios stay meaningful.
//!
//! Each runs with the benchmarking process small, then again with a 1 GiB ballast allocated and
//! touched in this process (`.../ballast_1GiB`): a spawn path that copies page tables grows with
//! the emperor's memory, one built on `CLONE_VM|CLONE_VFORK` does not.
//!
//! `cargo bench -p uwsgi-emperor-suite --bench spawn` (`-- --quick` for a fast look).

use std::ffi::{CString, OsString};
use std::hint::black_box;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use emperor::core::{Action, Core, CoreConfig, Event, ExitKind};
use emperor::monitor::{parse_monitor, Scanner};
use emperor::spawn::{build_argv, resolve, vassal_env, ArgvConfig, Plan, Spawner};
use mio::{Events, Interest, Poll, Token};

const TINY: &str = env!("CARGO_BIN_EXE_tiny-vassal");
const BALLAST: usize = 1 << 30;

/// The environment of the directly started children: the emperor's vassal environment plus
/// the channel fd number (3), as NUL-terminated strings and a NULL-terminated pointer array.
struct ChildEnv {
    _strings: Vec<CString>,
    ptrs: Vec<*const libc::c_char>,
}

impl ChildEnv {
    fn new() -> ChildEnv {
        let mut strings: Vec<CString> = vassal_env(std::env::vars_os())
            .into_iter()
            .map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv).unwrap()
            })
            .collect();
        strings.push(CString::new("UWSGI_EMPEROR_FD=3").unwrap());
        let mut ptrs: Vec<*const libc::c_char> = strings.iter().map(|c| c.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        ChildEnv {
            _strings: strings,
            ptrs,
        }
    }
}

/// Starts TINY with posix_spawn, its channel on fd 3, and returns the pid.
fn posix_spawn_tiny(child_end: &OwnedFd, env: &ChildEnv) -> libc::pid_t {
    let path = CString::new(TINY).unwrap();
    let argv = [path.as_ptr(), std::ptr::null()];
    let envp = &env.ptrs;
    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer passed stays valid for the duration of the calls; the file-actions
    // object is initialised before use and destroyed after.
    unsafe {
        let mut fa: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        libc::posix_spawn_file_actions_init(&mut fa);
        libc::posix_spawn_file_actions_adddup2(&mut fa, child_end.as_raw_fd(), 3);
        let rc = libc::posix_spawn(
            &mut pid,
            path.as_ptr(),
            &fa,
            std::ptr::null(),
            argv.as_ptr() as *const *mut libc::c_char,
            envp.as_ptr() as *const *mut libc::c_char,
        );
        libc::posix_spawn_file_actions_destroy(&mut fa);
        assert_eq!(rc, 0, "posix_spawn failed: {rc}");
    }
    pid
}

/// Starts TINY with fork + execve (channel on fd 3), as a fork()-based supervisor does.
fn fork_exec_tiny(child_end: &OwnedFd, env: &ChildEnv) -> libc::pid_t {
    let path = CString::new(TINY).unwrap();
    let argv = [path.as_ptr(), std::ptr::null()];
    let envp = &env.ptrs;
    let fd = child_end.as_raw_fd();
    // SAFETY: fork() is followed in the child only by async-signal-safe calls (dup2, execve,
    // _exit) on pointers built before the fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: as above; the child never returns into Rust code.
        unsafe {
            libc::dup2(fd, 3);
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
    }
    pid
}

fn reap(pid: libc::pid_t) -> ExitKind {
    let mut status = 0;
    // SAFETY: waiting for our own child; status is a valid out pointer.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFSIGNALED(status) {
        ExitKind::Signal(libc::WTERMSIG(status))
    } else {
        ExitKind::Code(libc::WEXITSTATUS(status))
    }
}

/// One start of TINY by `start`, timed until its first byte is read.
fn direct_once(start: fn(&OwnedFd, &ChildEnv) -> libc::pid_t, env: &ChildEnv) -> Duration {
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    let theirs = OwnedFd::from(theirs);
    let t0 = Instant::now();
    let pid = start(&theirs, env);
    let mut b = [0u8; 1];
    ours.read_exact(&mut b).unwrap();
    let took = t0.elapsed();
    assert_eq!(b[0], 1);
    drop(theirs);
    reap(pid);
    took
}

/// The emperor's pieces for one dir monitor holding `app.ini`, wired as the runtime wires them.
struct EmperorPath {
    _dir: tempfile::TempDir,
    scanner: Scanner,
    core: Core,
    spawner: Spawner,
    argv: ArgvConfig,
    env: Vec<(OsString, OsString)>,
    path_var: Option<OsString>,
    cwd: PathBuf,
    poll: Poll,
    events: Events,
}

impl EmperorPath {
    fn new() -> EmperorPath {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.ini"), "[uwsgi]\nprocesses = 1\n").unwrap();
        let cwd = std::env::current_dir().unwrap();
        let spec = parse_monitor(dir.path().to_str().unwrap(), &cwd).unwrap();
        EmperorPath {
            scanner: Scanner::new(spec, Vec::new(), false),
            _dir: dir,
            core: Core::new(CoreConfig::default()),
            spawner: Spawner::new().unwrap(),
            argv: ArgvConfig {
                wrapper: Some(TINY.to_string()),
                ..ArgvConfig::default()
            },
            env: vassal_env(std::env::vars_os()),
            path_var: std::env::var_os("PATH"),
            cwd,
            poll: Poll::new().unwrap(),
            events: Events::with_capacity(8),
        }
    }

    /// One vassal from "inotify named app.ini" to its first channel byte.
    fn once(&mut self) -> Duration {
        let t0 = Instant::now();
        // Config observed: the monitor re-examines the file the event named.
        let (key, entry) = self.scanner.check_name("app.ini").unwrap();
        assert!(entry.is_some());
        let now = Instant::now();
        self.core.handle(
            now,
            Event::Updated {
                monitor: 0,
                key: key.clone(),
                entry,
            },
        );
        let Some(Action::Spawn(req)) = self.core.poll_action() else {
            panic!("the core did not ask for a spawn");
        };
        // Runtime::spawn: programs, argv, env, cwd.
        let cwd = self.scanner.vassal_cwd(&self.cwd).to_path_buf();
        let main = resolve(self.argv.binary(), self.path_var.as_deref(), &cwd);
        let programs: Vec<PathBuf> = main.iter().cloned().collect();
        let argv0 = main
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| self.argv.binary().to_string());
        let argv = build_argv(&self.argv, &argv0, &req.name, false, req.content.is_some());
        let plan = Plan {
            programs,
            argv,
            env: self.env.clone(),
            cwd,
            with_config: req.content.is_some(),
            stdin: None,
        };
        let started = self.spawner.spawn(&plan).unwrap();
        started.channel.set_nonblocking(true).unwrap();
        let mut chan = mio::net::UnixStream::from_std(started.channel);
        self.poll
            .registry()
            .register(&mut chan, Token(1), Interest::READABLE)
            .unwrap();
        self.core.handle(
            now,
            Event::Spawned {
                inc: req.inc,
                pid: started.pid,
            },
        );
        // The loop: wait for readability, read the byte.
        let mut b = [0u8; 16];
        let n = loop {
            match chan.read(&mut b) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.poll.poll(&mut self.events, None).unwrap();
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("channel read failed: {e}"),
            }
        };
        let took = t0.elapsed();
        assert!(n >= 1 && b[0] == 1, "unexpected first read: {:?}", &b[..n]);
        // Untimed: feed the byte, "remove" the config, reap, release.
        self.core.handle(
            now,
            Event::Message {
                inc: req.inc,
                byte: b[0],
            },
        );
        self.poll.registry().deregister(&mut chan).unwrap();
        self.core.handle(
            now,
            Event::Updated {
                monitor: 0,
                key,
                entry: None,
            },
        );
        let exit = reap(started.pid);
        self.core.handle(
            now,
            Event::Reaped {
                pid: started.pid,
                exit,
            },
        );
        while self.core.poll_action().is_some() {}
        assert!(self.core.is_empty());
        took
    }
}

/// `bytes` of heap, every page written, so it is resident.
fn ballast(bytes: usize) -> Vec<u8> {
    let mut v = vec![0u8; bytes];
    for i in (0..bytes).step_by(4096) {
        v[i] = 1;
    }
    black_box(&mut v);
    v
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn bench_spawn(c: &mut Criterion) {
    let mut emp = EmperorPath::new();
    let env = ChildEnv::new();
    let mut g = c.benchmark_group("spawn");
    g.sample_size(50);
    let mut run_all = |g: &mut criterion::BenchmarkGroup<'_, _>, suffix: &str| {
        eprintln!(
            "spawn{suffix}: RSS of the benchmarking process {} MiB",
            rss_kib() / 1024
        );
        g.bench_function(format!("floor/posix_spawn{suffix}"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| black_box(direct_once(posix_spawn_tiny, &env)))
                    .sum()
            })
        });
        g.bench_function(format!("emperor{suffix}"), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| black_box(emp.once())).sum())
        });
        g.bench_function(format!("fork_exec{suffix}"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| black_box(direct_once(fork_exec_tiny, &env)))
                    .sum()
            })
        });
    };
    run_all(&mut g, "");
    let weight = ballast(BALLAST);
    run_all(&mut g, "/ballast_1GiB");
    drop(black_box(weight));
    g.finish();
}

criterion_group!(benches, bench_spawn);
criterion_main!(benches);
