#![no_main]
//! A program's notify datagram (`READY=1`, `WATCHDOG=1`, `STATUS=...`): never panics, and the
//! allocation-free item iterator agrees with `parse`.

use libfuzzer_sys::fuzz_target;
use vassal_shim::notify;

fuzz_target!(|data: &[u8]| {
    let all = notify::parse(data);
    let items: Vec<_> = notify::items(data).collect();
    assert_eq!(all, items);
});
