//! `cargo run -p xtask -- assets DIR`: writes the man pages (`DIR/man/*.1`) and the bash, zsh
//! and fish completions (`DIR/completions/`) of `emperor`, `emperor ctl` and `vassal-shim`,
//! rendered from the same clap definitions that parse their command lines, so the pages never
//! drift from `--help`. `scripts/package` runs it before building the Debian package.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use clap::{Command, CommandFactory};
use clap_complete::Shell;

/// The shim's command line lives in its binary crate; this is that very file.
#[allow(dead_code, unused_imports)]
#[path = "../../vassal-shim/src/bin/vassal-shim/options.rs"]
mod shim_options;

/// `emperor(1)`.
fn emperor() -> Command {
    emperor::config::options::Options::command()
}

/// `emperor-ctl(1)`: `emperor ctl`, titled as its own page.
fn emperor_ctl() -> Command {
    emperor::ctl::Ctl::command().name("emperor-ctl")
}

/// `vassal-shim(1)`.
fn vassal_shim() -> Command {
    shim_options::Cli::command()
}

/// What the shell completes for `emperor`: its options and monitors, and `ctl` with its own.
fn emperor_completion() -> Command {
    emperor().subcommand(
        emperor::ctl::Ctl::command()
            .name("ctl")
            .bin_name("emperor ctl"),
    )
}

fn man(cmd: Command) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd)
        .source(format!("emperor {}", emperor::VERSION))
        .manual("emperor manual")
}

fn write_man(dir: &Path, file: &str, cmd: Command) -> io::Result<PathBuf> {
    let mut out = Vec::new();
    man(cmd).render(&mut out)?;
    let p = dir.join(file);
    fs::write(&p, out)?;
    Ok(p)
}

/// A page whose subcommands are described in it (usage, what it does, its arguments) rather
/// than pointed to as pages of their own.
fn write_man_with_subcommands(dir: &Path, file: &str, cmd: Command) -> io::Result<PathBuf> {
    let mut cmd = cmd;
    cmd.build();
    let page = man(cmd.clone());
    let mut out = Vec::new();
    page.render_title(&mut out)?;
    page.render_name_section(&mut out)?;
    page.render_synopsis_section(&mut out)?;
    page.render_description_section(&mut out)?;
    page.render_options_section(&mut out)?;
    let mut r = roff::Roff::new();
    r.control("SH", ["COMMANDS"]);
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let mut usage = vec![roff::bold(sub.get_name())];
        for a in sub.get_positionals() {
            usage.push(roff::roman(" "));
            usage.push(roff::italic(a.get_id().as_str().to_uppercase()));
        }
        r.control("TP", []).text(usage);
        let about = sub
            .get_long_about()
            .or(sub.get_about())
            .map(|s| s.to_string())
            .unwrap_or_default();
        r.text([roff::roman(about)]);
        for a in sub.get_positionals() {
            let help = a.get_help().map(|s| s.to_string()).unwrap_or_default();
            r.control("br", []).text([
                roff::italic(a.get_id().as_str().to_uppercase()),
                roff::roman(format!(": {help}")),
            ]);
        }
    }
    r.to_writer(&mut out)?;
    page.render_extra_section(&mut out)?;
    let p = dir.join(file);
    fs::write(&p, out)?;
    Ok(p)
}

fn assets(out: &Path) -> io::Result<Vec<PathBuf>> {
    let man = out.join("man");
    let comp = out.join("completions");
    fs::create_dir_all(&man)?;
    fs::create_dir_all(&comp)?;
    let mut written = vec![
        write_man(&man, "emperor.1", emperor())?,
        write_man_with_subcommands(&man, "emperor-ctl.1", emperor_ctl())?,
        write_man(&man, "vassal-shim.1", vassal_shim())?,
    ];
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        for (name, mut cmd) in [
            ("emperor", emperor_completion()),
            ("vassal-shim", vassal_shim()),
        ] {
            written.push(clap_complete::generate_to(shell, &mut cmd, name, &comp)?);
        }
    }
    Ok(written)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [task, dir] = args.as_slice() else {
        eprintln!("usage: cargo run -p xtask -- assets DIR   (man pages and shell completions)");
        std::process::exit(2);
    };
    if task != "assets" {
        eprintln!("xtask: unknown task {task:?}; the one task is `assets DIR`");
        std::process::exit(2);
    }
    match assets(Path::new(dir)) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
        }
        Err(e) => {
            eprintln!("xtask: cannot write the man pages and completions into {dir}: {e}");
            std::process::exit(1);
        }
    }
}
