#![no_main]
//! The HTTP response reader never panics.

use libfuzzer_sys::fuzz_target;
use uwsgi_proto::request::Response;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Response::parse(data) {
        for (k, v) in r.headers() {
            let _ = (k.len(), v.len());
        }
        let _ = r.header("content-type");
    }
});
