//! Stamps the git commit into the binary: `EMPEROR_GIT_COMMIT` from the environment when set
//! (a packager's override), else `git rev-parse --short HEAD`, else "unknown" (a tarball build).

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=EMPEROR_GIT_COMMIT");
    let commit = std::env::var("EMPEROR_GIT_COMMIT")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| git(&["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    // A new commit moves HEAD (a detached checkout) or the branch it names (a loose ref, or
    // packed-refs after a `git gc`). Only existing files are named: a missing one would make
    // cargo rerun this on every build.
    let mut watched: Vec<String> = vec!["HEAD".into(), "packed-refs".into()];
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(r);
    }
    for w in &watched {
        if let Some(p) = git(&["rev-parse", "--path-format=absolute", "--git-path", w]) {
            if PathBuf::from(&p).exists() {
                println!("cargo:rerun-if-changed={p}");
            }
        }
    }
    println!("cargo:rustc-env=EMPEROR_GIT_COMMIT={commit}");
}
