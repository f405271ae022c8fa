//! Measures what one vassal spawn costs as the emperor's own memory grows: our
//! `clone(CLONE_VM|CLONE_VFORK)` path against `fork()` (std's `Command` with a `pre_exec` hook,
//! which forces a fork) and std's plain `Command` (posix_spawn).
//!
//! `cargo run --release -p emperor --example spawn_cost`

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use emperor::spawn::{Plan, Spawner};

const N: u32 = 200;

fn main() {
    let truth = PathBuf::from("/bin/true");
    let plan = Plan {
        programs: vec![truth.clone()],
        argv: vec!["true".into()],
        env: vec![],
        cwd: PathBuf::from("/"),
        with_config: false,
        stdin: None,
    };
    let mut sp = Spawner::new().expect("spawner");
    println!("| emperor RSS | clone(VM|VFORK) µs/spawn | fork (pre_exec) µs/spawn | posix_spawn (std) µs/spawn |");
    println!("|---|---|---|---|");
    let mut ballast: Vec<Vec<u8>> = Vec::new();
    for mib in [0usize, 256, 1024] {
        while ballast.len() < mib / 64 {
            // Touch every page so it is really resident.
            ballast.push(vec![1u8; 64 << 20]);
        }
        let t = Instant::now();
        for _ in 0..N {
            let st = sp.spawn(&plan).expect("spawn");
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(st.pid), None);
        }
        let ours = t.elapsed().as_secs_f64() * 1e6 / f64::from(N);
        let t = Instant::now();
        for _ in 0..N {
            let mut c = Command::new(&truth);
            // SAFETY: the hook does nothing; it only forces std onto its fork() path.
            unsafe {
                c.pre_exec(|| Ok(()));
            }
            c.status().expect("fork spawn");
        }
        let fork = t.elapsed().as_secs_f64() * 1e6 / f64::from(N);
        let t = Instant::now();
        for _ in 0..N {
            Command::new(&truth).status().expect("posix_spawn");
        }
        let pspawn = t.elapsed().as_secs_f64() * 1e6 / f64::from(N);
        println!("| {mib} MiB | {ours:.0} | {fork:.0} | {pspawn:.0} |");
    }
    std::hint::black_box(&ballast);
}
