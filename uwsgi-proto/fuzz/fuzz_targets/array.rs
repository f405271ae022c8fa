#![no_main]
//! Array decoding: never panics; whatever decodes re-encodes to the same bytes.

use libfuzzer_sys::fuzz_target;
use uwsgi_proto::{array, ArrayBuilder};

fuzz_target!(|data: &[u8]| {
    if array::validate(data).is_ok() {
        let mut b = ArrayBuilder::new();
        for item in array::iter(data) {
            b.push(item.expect("validated")).expect("fits");
        }
        assert_eq!(b.body(), data);
    }
});
