#![no_main]
//! What the shim reads from the kernel and from a probed program: netlink sock_diag answers,
//! `/proc/net/tcp` text, an HTTP status line. Never panics; every message the walker yields
//! lies inside the input.

use libfuzzer_sys::fuzz_target;
use vassal_shim::wire;

fuzz_target!(|data: &[u8]| {
    let base = data.as_ptr() as usize;
    for m in wire::messages(data) {
        let at = m.payload.as_ptr() as usize;
        assert!(at >= base && at + m.payload.len() <= base + data.len());
        let _ = wire::unix_diag_fields(m.payload);
        let _ = wire::unix_diag_vfs(m.payload);
        let port = m.ty;
        let _ = wire::inet_diag_rqueue(m.payload, port);
    }
    let _ = wire::parse_proc_tcp(&String::from_utf8_lossy(data), 8080);
    let _ = wire::http_status_ok(data);
});
