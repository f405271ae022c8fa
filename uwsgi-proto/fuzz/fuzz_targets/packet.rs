#![no_main]
//! Header and whole-packet decoding, and the channel byte mapping.

use libfuzzer_sys::fuzz_target;
use uwsgi_proto::header::{Header, Packet, Status, HEADER_LEN};
use uwsgi_proto::{EmperorMsg, VassalMsg};

fuzz_target!(|data: &[u8]| {
    if let Status::Complete(h) = Header::decode(data) {
        assert_eq!(Header::decode(&h.encode()), Status::Complete(h));
    }
    if let Status::Complete((p, used)) = Packet::decode(data) {
        assert_eq!(used, HEADER_LEN + p.body.len());
        assert!(used <= data.len());
    }
    for &b in data.iter().take(16) {
        assert_eq!(EmperorMsg::from_byte(b).to_byte(), b);
        assert_eq!(VassalMsg::from_byte(b).to_byte(), b);
    }
});
