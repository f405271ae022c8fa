//! The parsers do not touch the heap: a counting allocator watches them work.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use uwsgi_proto::header::Packet;
use uwsgi_proto::request::Request;
use uwsgi_proto::{array, config, vars, ArrayBuilder};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator; only counts allocations.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn parsing_allocates_nothing() {
    let request = Request::get("/a/b?c=d").encode().unwrap();
    let mut arr = ArrayBuilder::new();
    for i in 0..50 {
        arr.push(format!("--arg{i}")).unwrap();
    }
    let arr = arr.into_body();
    let mut cfg = Vec::new();
    config::encode(b"[uwsgi]\nmaster = true\n", &mut cfg).unwrap();
    config::encode(b"[uwsgi]\nmaster = false\n", &mut cfg).unwrap();

    let before = ALLOCS.load(Ordering::SeqCst);
    let (pkt, _) = Packet::decode(&request).complete().unwrap();
    let n = vars::iter(pkt.body).filter(|r| r.is_ok()).count();
    let host = vars::get(pkt.body, b"HTTP_HOST").unwrap();
    let items = array::iter(&arr).filter(|r| r.is_ok()).count();
    let newest = config::newest(&cfg).unwrap().complete().unwrap();
    let after = ALLOCS.load(Ordering::SeqCst);

    assert!(n > 5);
    assert_eq!(host, Some(&b"localhost"[..]));
    assert_eq!(items, 50);
    assert_eq!(newest.0, b"[uwsgi]\nmaster = false\n");
    assert_eq!(after - before, 0, "parsing allocated");
}
