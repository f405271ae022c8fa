#![no_main]
//! A command-socket datagram: never panics; a request that parses is encoded back by
//! `emperor ctl`'s encoder into a datagram that parses to the same request.

use emperor::io::command::{encode, parse};
use emperor::core::VassalCommand;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = parse(data) else {
        return;
    };
    let _ = VassalCommand::parse(req.cmd);
    if let Ok(again) = encode(req.cmd, req.vassal, req.msg) {
        assert_eq!(parse(&again), Ok(req));
    }
});
