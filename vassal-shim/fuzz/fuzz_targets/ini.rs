#![no_main]
//! The shim's ini reader on arbitrary text: never panics; every key a section yields is found
//! again by `get`.

use libfuzzer_sys::fuzz_target;
use vassal_shim::ini::Ini;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let ini = Ini::parse(&text);
    for name in ["vassal-shim", "uwsgi", ""] {
        let _ = ini.has_section(name);
        if let Some(section) = ini.section(name) {
            for (key, _) in section.entries() {
                assert!(section.get(key).is_some(), "{key:?} listed but not found");
                assert!(section.get_all(key).next().is_some());
            }
        }
    }
});
