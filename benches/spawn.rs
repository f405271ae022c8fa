//! The spawn path against its physical floor.
//!
//! `floor/posix_spawn`: posix_spawn of a tiny program that writes one byte on an inherited
//! socketpair end, timed until that byte is read (and the child reaped). Nothing a supervisor
//! does can start a vassal faster than this.

use std::ffi::CString;
use std::hint::black_box;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};

const TINY: &str = env!("CARGO_BIN_EXE_tiny-vassal");

/// Starts TINY with posix_spawn, its channel on fd 3, and returns the pid.
fn posix_spawn_tiny(child_end: &OwnedFd) -> libc::pid_t {
    let path = CString::new(TINY).unwrap();
    let argv = [path.as_ptr(), std::ptr::null()];
    let env = CString::new("UWSGI_EMPEROR_FD=3").unwrap();
    let envp = [env.as_ptr(), std::ptr::null()];
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

fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waiting for our own child; status is a valid out pointer.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

fn floor_once() -> Duration {
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    let theirs = OwnedFd::from(theirs);
    let start = Instant::now();
    let pid = posix_spawn_tiny(&theirs);
    let mut b = [0u8; 1];
    ours.read_exact(&mut b).unwrap();
    let took = start.elapsed();
    assert_eq!(b[0], 1);
    drop(theirs);
    reap(pid);
    took
}

fn bench_floor(c: &mut Criterion) {
    let mut g = c.benchmark_group("spawn");
    g.sample_size(50);
    g.bench_function("floor/posix_spawn", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| black_box(floor_once())).sum())
    });
    g.finish();
}

criterion_group!(benches, bench_floor);
criterion_main!(benches);
