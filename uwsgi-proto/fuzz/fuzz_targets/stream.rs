#![no_main]
//! The streaming decoder fed in arbitrary chunks never panics and never exceeds its limit.

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use uwsgi_proto::PacketDecoder;

fuzz_target!(|data: &[u8]| {
    let Some((&limit, rest)) = data.split_first() else {
        return;
    };
    let mut dec = PacketDecoder::new(usize::from(limit) * 16);
    let mut buf = BytesMut::new();
    for chunk in rest.chunks(usize::from(limit % 7) + 1) {
        buf.extend_from_slice(chunk);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(p)) => assert!(p.body.len() <= dec.max_body()),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = dec.decode_eof(&mut buf);
});
