#![no_main]
//! Request decoding (the server's parser of untrusted client bytes): never panics; every prefix
//! of a decodable request is partial or an error; a decoded request re-encodes to the same
//! bytes; the fd mask splits exactly its own fd count.

use forkserver_proto::codec::{encode_request, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Request::decode(data) {
        Ok(status) => {
            if let Some((req, used)) = status.complete() {
                assert!(used <= data.len());
                let argv = req.argv();
                assert_eq!(argv.len(), req.argc);
                let again = encode_request(&argv, req.mask).expect("decoded argv re-encodes");
                assert_eq!(&again[..], &data[..used]);
                let fds: Vec<usize> = (0..req.mask.fd_count()).collect();
                assert!(req.mask.split(fds).is_ok());
                for cut in 0..used {
                    match Request::decode(&data[..cut]) {
                        Ok(s) => assert!(s.is_partial()),
                        Err(_) => {}
                    }
                }
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
