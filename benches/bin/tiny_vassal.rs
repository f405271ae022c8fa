//! The smallest possible vassal: writes "ready" (1) on the channel named by UWSGI_EMPEROR_FD
//! and exits. The spawn benchmarks use it as the program whose start they time.

use std::io::Write;
use std::os::fd::FromRawFd;

fn main() {
    let Some(fd) = std::env::var("UWSGI_EMPEROR_FD")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        eprintln!("tiny-vassal: UWSGI_EMPEROR_FD is not set");
        std::process::exit(2);
    };
    // SAFETY: the fd was handed to us by our parent for exactly this use and nothing else in
    // this process owns it.
    let mut chan = unsafe { std::fs::File::from_raw_fd(fd) };
    let _ = chan.write_all(&[1]);
}
