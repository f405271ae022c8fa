#![no_main]
//! Shell-like word splitting of an `exec =` line: never panics; a split without quotes or
//! escapes in its input keeps every non-blank character.

use libfuzzer_sys::fuzz_target;
use vassal_shim::words;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(ws) = words::split(&text) {
        if !text.contains(['\'', '"', '\\', '$', '#']) {
            let joined: String = ws.concat();
            let kept: String = text.chars().filter(|c| !c.is_whitespace()).collect();
            assert_eq!(joined, kept);
        }
    }
});
