//! Codec throughput: parse and encode a realistic request block (36 nginx-style CGI vars) and a
//! 4 KiB array, next to a plain pass over the same bytes (a checksum) so parse cost can be given
//! as a ratio to touching the memory at all.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use uwsgi_proto::header::Packet;
use uwsgi_proto::{array, vars, ArrayBuilder, VarsBuilder};

/// The vars nginx's `uwsgi_params` plus a browser's headers produce for one request.
fn request_vars() -> Vec<(&'static str, String)> {
    let mut v: Vec<(&'static str, String)> = vec![
        ("QUERY_STRING", "page=2&sort=desc&filter=active".into()),
        ("REQUEST_METHOD", "GET".into()),
        ("CONTENT_TYPE", "".into()),
        ("CONTENT_LENGTH", "".into()),
        ("REQUEST_URI", "/api/v1/orders/12345/items?page=2&sort=desc&filter=active".into()),
        ("PATH_INFO", "/api/v1/orders/12345/items".into()),
        ("DOCUMENT_ROOT", "/usr/share/nginx/html".into()),
        ("SERVER_PROTOCOL", "HTTP/1.1".into()),
        ("REQUEST_SCHEME", "https".into()),
        ("HTTPS", "on".into()),
        ("REMOTE_ADDR", "203.0.113.77".into()),
        ("REMOTE_PORT", "53422".into()),
        ("SERVER_PORT", "443".into()),
        ("SERVER_NAME", "shop.example.com".into()),
        ("SERVER_ADDR", "198.51.100.10".into()),
        ("SCRIPT_NAME", "".into()),
        ("UWSGI_SCHEME", "https".into()),
        ("HTTP_HOST", "shop.example.com".into()),
        ("HTTP_CONNECTION", "keep-alive".into()),
        ("HTTP_CACHE_CONTROL", "max-age=0".into()),
        ("HTTP_SEC_CH_UA", "\"Chromium\";v=\"124\", \"Not-A.Brand\";v=\"99\"".into()),
        ("HTTP_SEC_CH_UA_MOBILE", "?0".into()),
        ("HTTP_SEC_CH_UA_PLATFORM", "\"Linux\"".into()),
        ("HTTP_UPGRADE_INSECURE_REQUESTS", "1".into()),
        ("HTTP_USER_AGENT", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36".into()),
        ("HTTP_ACCEPT", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8".into()),
        ("HTTP_SEC_FETCH_SITE", "same-origin".into()),
        ("HTTP_SEC_FETCH_MODE", "navigate".into()),
        ("HTTP_SEC_FETCH_USER", "?1".into()),
        ("HTTP_SEC_FETCH_DEST", "document".into()),
        ("HTTP_REFERER", "https://shop.example.com/api/v1/orders/12345".into()),
        ("HTTP_ACCEPT_ENCODING", "gzip, deflate, br".into()),
        ("HTTP_ACCEPT_LANGUAGE", "en-GB,en;q=0.9,de;q=0.8".into()),
        ("HTTP_COOKIE", format!("sessionid={}; csrftoken={}", "a1b2c3d4".repeat(4), "z9y8x7w6".repeat(8))),
        ("HTTP_X_FORWARDED_FOR", "203.0.113.77".into()),
        ("HTTP_X_REQUEST_ID", "5f2b6c1e-8d4a-4e7b-9c3d-2a1b0e9f8d7c".into()),
    ];
    v.sort_by_key(|(k, _)| *k == "HTTP_COOKIE");
    v
}

fn encode_vars(pairs: &[(&str, String)]) -> Vec<u8> {
    let mut b = VarsBuilder::with_capacity(2048);
    for (k, v) in pairs {
        b.push(k, v).unwrap();
    }
    b.into_packet(0, 0)
}

fn encode_array(items: &[Vec<u8>]) -> Vec<u8> {
    let mut b = ArrayBuilder::with_capacity(4096);
    for i in items {
        b.push(i).unwrap();
    }
    b.into_packet(35, 1)
}

/// Sum of all bytes: the floor any parser has to beat.
fn checksum(buf: &[u8]) -> u64 {
    buf.iter().fold(0u64, |a, &b| a.wrapping_add(u64::from(b)))
}

fn parse_vars(packet: &[u8]) -> usize {
    let (p, _) = Packet::decode(packet).complete().unwrap();
    let mut n = 0;
    for pair in vars::iter(p.body) {
        let (k, v) = pair.unwrap();
        n += k.len() + v.len();
    }
    n
}

fn parse_array(packet: &[u8]) -> usize {
    let (p, _) = Packet::decode(packet).complete().unwrap();
    array::iter(p.body).map(|i| i.unwrap().len()).sum()
}

fn bench_request(c: &mut Criterion) {
    let pairs = request_vars();
    let packet = encode_vars(&pairs);
    let mut g = c.benchmark_group("request_vars");
    g.throughput(Throughput::Bytes(packet.len() as u64));
    g.bench_function("checksum", |b| b.iter(|| checksum(black_box(&packet))));
    g.bench_function("parse", |b| b.iter(|| parse_vars(black_box(&packet))));
    g.bench_function("encode", |b| b.iter(|| encode_vars(black_box(&pairs))));
    g.finish();
}

fn bench_array(c: &mut Criterion) {
    // 4 KiB of argv-like items of mixed lengths.
    let mut items = Vec::new();
    let mut total = 0;
    let mut i = 0usize;
    while total < 4096 - 64 {
        let item = format!("--option-{i}={}", "v".repeat(i % 40)).into_bytes();
        total += item.len() + 2;
        items.push(item);
        i += 1;
    }
    let packet = encode_array(&items);
    let mut g = c.benchmark_group("array_4k");
    g.throughput(Throughput::Bytes(packet.len() as u64));
    g.bench_function("checksum", |b| b.iter(|| checksum(black_box(&packet))));
    g.bench_function("parse", |b| b.iter(|| parse_array(black_box(&packet))));
    g.bench_function("encode", |b| b.iter(|| encode_array(black_box(&items))));
    g.finish();
}

criterion_group!(benches, bench_request, bench_array);
criterion_main!(benches);
