#![no_main]
//! Config-push frames: never panics; the newest frame lies inside the consumed prefix.

use libfuzzer_sys::fuzz_target;
use uwsgi_proto::config;
use uwsgi_proto::header::Status;

fuzz_target!(|data: &[u8]| {
    let _ = config::decode(data);
    if let Ok(Status::Complete((body, used))) = config::newest(data) {
        assert!(used <= data.len());
        assert!(body.len() + 4 <= used);
    }
});
