//! A Rust program using the `vassal_shim` library directly (examples/native_vassal.rs) as the
//! wrapper of a real uWSGI 2.0.21 emperor. Needs the example built: `cargo test -p vassal-shim`
//! builds it (a lone `--test native_vassal` does not; `cargo build -p vassal-shim --examples`).

mod common;

use common::*;

/// A Rust program using the library directly (examples/native_vassal.rs) is a native vassal:
/// ready, accepting, heartbeats, loyal after its first request, reload by re-exec keeping the
/// channel (the emperor sees no EOF), stop.
#[test]
fn native_rust_vassal_built_on_the_library() {
    let mut e = Emperor::start_with_wrapper(&require_uwsgi(), &native_vassal_example(), |_| {
        vec!["--emperor-required-heartbeat".into(), "10".into()]
    });
    let port = free_port();
    e.add(
        "native.ini",
        &format!("[native-vassal]\nport = {port}\nheartbeat = 1\n"),
    );
    let v = e.wait_vassal("native.ini", "ready, accepting, heartbeat", |v| {
        v["ready"] == 1 && v["accepting"] == 1 && v["last_heartbeat"].as_i64().unwrap_or(0) > 0
    });
    let pid = v["pid"].as_i64().unwrap() as i32;
    assert!(http_get(port, "/").unwrap().contains("reloads=0"));
    e.wait_vassal("native.ini", "loyal after a request", |v| v["loyal"] == 1);
    e.proc.wait_for_line("vassal native.ini is now loyal", SOON);

    e.touch("native.ini");
    e.proc.wait_for_new_line("reloads=1", SOON);
    e.wait_vassal("native.ini", "accepting after the re-exec", |v| {
        v["accepting"] == 1
    });
    let body = http_get(port, "/").unwrap();
    assert!(
        body.contains("reloads=1") && body.contains(&format!("pid={pid}")),
        "{body}"
    );

    e.remove("native.ini");
    e.proc
        .wait_for_line("removed uwsgi instance native.ini", SOON);
    wait_all_gone(&[pid], SOON);
}
