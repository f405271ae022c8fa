#![no_main]
//! Vars decoding: never panics; whatever decodes re-encodes to the same bytes.

use libfuzzer_sys::fuzz_target;
use uwsgi_proto::{vars, VarsBuilder};

fuzz_target!(|data: &[u8]| {
    let _ = vars::get(data, b"PATH_INFO");
    if vars::validate(data).is_ok() {
        let mut b = VarsBuilder::new();
        for pair in vars::iter(data) {
            let (k, v) = pair.expect("validated");
            b.push(k, v).expect("fits");
        }
        assert_eq!(b.body(), data);
    }
});
