#![no_main]
//! An emperor.ini on arbitrary text (includes, `%(name)` placeholders, magic variables): never
//! panics, never hangs, and whatever it yields is bounded.

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use emperor::config::options::{expand_magic, read_ini_files, MAX_VALUE_LEN};
use libfuzzer_sys::fuzz_target;

/// One file per process, rewritten for every input (an `ini = ...` include may name it).
fn file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        std::env::temp_dir().join(format!("emperor-fuzz-{}.ini", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = file();
    let mut f = std::fs::File::create(path).expect("temp file");
    f.write_all(data).expect("write");
    drop(f);
    if let Ok(args) = read_ini_files(std::slice::from_ref(path)) {
        for a in &args.args {
            // `--key=value`: the value is bounded.
            assert!(a.len() <= MAX_VALUE_LEN + 64, "{} bytes", a.len());
        }
    }
    if let Some(v) = expand_magic(&String::from_utf8_lossy(data), path) {
        assert!(v.len() <= MAX_VALUE_LEN);
    }
});
