#![no_main]
//! Reply decoding (the client's parser of the server's bytes): never panics; a decoded pid is
//! positive and re-encodes to a reply that decodes to the same pid.

use forkserver_proto::codec::{decode_reply, encode_reply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode_reply(data) {
        Ok(status) => {
            if let Some((pid, used)) = status.complete() {
                assert!(pid > 0);
                assert!(used <= data.len());
                let again = encode_reply(pid);
                let (pid2, used2) = decode_reply(&again).unwrap().complete().unwrap();
                assert_eq!((pid, again.len()), (pid2, used2));
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
