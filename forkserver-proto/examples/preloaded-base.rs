//! A preloaded base for the fork server: pays an expensive start-up once, then forks ready
//! vassals on request. See `base_app/mod.rs` for what it does and the command line.
//!
//! ```text
//! cargo build --release --examples
//! target/release/examples/preloaded-base --fork-server /run/fs.sock --ballast-mib 500
//! ```

mod base_app;

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    std::process::exit(base_app::main_with(&args));
}
