//! `emperor`: supervise uWSGI vassals like `uwsgi --emperor`.

use std::io::IsTerminal;

use emperor::options::{Options, OptionsError};
use emperor::runtime::Runtime;

fn main() {
    ensure_std_fds();
    if std::env::args_os().nth(1).is_some_and(|a| a == "ctl") {
        std::process::exit(emperor::ctl::main(std::env::args_os().skip(1)));
    }
    let opts = match Options::parse_from_args(std::env::args_os()) {
        Ok(o) => o,
        Err(OptionsError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("emperor: {e}");
            std::process::exit(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("EMPEROR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    mark_inherited_fds_cloexec();
    let rt = match Runtime::new(&opts) {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("{e}");
            std::process::exit(1);
        }
    };
    std::process::exit(rt.run());
}

/// Whatever fds the emperor inherited beyond 0-2 must not reach vassals: one syscall marks
/// them all close-on-exec (where the kernel has close_range).
fn mark_inherited_fds_cloexec() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes fd flags; no memory is touched.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
        );
    }
}

/// fds 0-2 must be open before anything else is opened, or a socket could land on 1 or 2 and a
/// vassal's stdout would be the emperor's stats socket. Closed ones get `/dev/null`.
fn ensure_std_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the fd table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            // SAFETY: open(2) on a static NUL-terminated path; it takes the lowest free fd,
            // which is `fd` since every lower one is open. Deliberately not CLOEXEC.
            unsafe {
                libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            }
        }
    }
}
