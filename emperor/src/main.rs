//! `emperor`: supervise uWSGI vassals like `uwsgi --emperor`.

use std::io::IsTerminal;

use emperor::config::options::{Options, OptionsError};
use emperor::io::Runtime;
use emperor::process::{self, Identity};
use emperor::sanitize::esc;

fn main() {
    ensure_std_fds();
    // `emperor ctl ...` is its own clap command (`emperor::ctl`, with subcommands). It is picked
    // out here rather than declared as a subcommand of the emperor's parser because the
    // emperor's command line is uWSGI's: positional monitors and `--ini` files, where a
    // subcommand would change how `emperor DIR` and `emperor --help` parse.
    if std::env::args_os().nth(1).is_some_and(|a| a == "ctl") {
        std::process::exit(emperor::ctl::main(std::env::args_os().skip(1)));
    }
    let opts = parse_options();
    let identity = prepare_process(&opts);
    init_logging();
    for note in &opts.ini_notes {
        tracing::warn!("{note}");
    }
    if opts.log_date.is_some() {
        tracing::debug!("log-date: every log line already starts with a UTC timestamp; ignored");
    }
    mark_inherited_fds_cloexec();
    supervise(&opts, identity.as_ref());
}

/// Before logging exists: prints `emperor: <error>` (escaped: errors name paths and values
/// from the command line and ini files) on stderr and exits with `code`.
fn exit_with(e: &dyn std::fmt::Display, code: i32) -> ! {
    eprintln!("emperor: {}", esc(&e.to_string()));
    std::process::exit(code);
}

/// The command line and `--ini` files; a usage error exits 2 as clap does.
fn parse_options() -> Options {
    let opts = match Options::parse_from_args(std::env::args_os()) {
        Ok(o) => o,
        Err(OptionsError::Clap(e)) => e.exit(),
        Err(e) => exit_with(&e, 2),
    };
    if opts.all_monitors().is_empty() {
        // A usage error like any other: clap's format and exit status (2).
        emperor::config::options::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "no monitor given: pass a vassal directory or glob (e.g. `emperor /etc/uwsgi/vassals`), \
                 or an `emperor = DIR` key in the --ini file",
            )
            .exit();
    }
    opts
}

/// The process keys, in their order (see [`emperor::process`]): everything that can be refused
/// is refused here, on the terminal, before detaching. Returns the identity to drop to.
fn prepare_process(opts: &Options) -> Option<Identity> {
    let identity = match Identity::resolve(opts).and_then(|id| {
        if let Some(id) = &id {
            id.check(opts)?;
        }
        Ok(id)
    }) {
        Ok(id) => id,
        Err(e) => exit_with(&e, 2),
    };
    // Still a single thread: the only safe time to change the environment, and to fork.
    if let Err(e) = process::setup_environment(opts) {
        exit_with(&e, 2);
    }
    if opts.daemonize.is_some() {
        if let Err(e) = process::daemonize() {
            exit_with(&e, 1);
        }
    }
    if let Some(file) = opts.logto.as_ref().or(opts.daemonize.as_ref()) {
        if let Err(e) = process::log_to(file) {
            exit_with(&e, 1);
        }
    }
    identity
}

/// `tracing` on stderr, filtered by `EMPEROR_LOG` (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EMPEROR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// Writes the pidfiles, sets up the runtime, drops privileges and runs the loop, then exits
/// with its code. Every failure is logged and exits 1 (after removing the pidfiles written).
/// The process exits from here, without dropping the runtime.
fn supervise(opts: &Options, identity: Option<&Identity>) -> ! {
    let mut pidfiles = Vec::new();
    let fail = |e: &dyn std::fmt::Display, pidfiles: &[&std::path::PathBuf]| -> ! {
        tracing::error!("{}", esc(&e.to_string()));
        remove_pidfiles(pidfiles);
        std::process::exit(1);
    };
    if let Some(p) = &opts.master_pidfile {
        if let Err(e) = process::write_pidfile(p, "pidfile") {
            fail(&e, &pidfiles);
        }
        pidfiles.push(p);
    }
    let mut rt = match Runtime::new(opts) {
        Ok(rt) => rt,
        Err(e) => fail(&e, &pidfiles),
    };
    if let Some(id) = identity {
        rt.hand_over_to(
            id.uid.unwrap_or_else(|| nix::unistd::getuid().as_raw()),
            id.gid,
        );
        if let Err(e) = id.drop_privileges() {
            fail(&e, &pidfiles);
        }
        tracing::info!("dropped privileges: now running as {}", id.label);
        rt.set_credentials(
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
    }
    if let Some(p) = &opts.master_pidfile2 {
        if let Err(e) = process::write_pidfile(p, "pidfile2") {
            fail(&e, &pidfiles);
        }
        pidfiles.push(p);
    }
    let code = rt.run();
    remove_pidfiles(&pidfiles);
    std::process::exit(code);
}

/// Removes the `pidfile` and `pidfile2` files written, at exit, where the (possibly dropped)
/// user still may; a failure is only worth a debug line.
fn remove_pidfiles(written: &[&std::path::PathBuf]) {
    for p in written {
        if let Err(e) = std::fs::remove_file(p) {
            tracing::debug!("cannot remove the pidfile {}: {e}", p.display());
        }
    }
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
