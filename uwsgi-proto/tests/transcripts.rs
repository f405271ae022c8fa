//! Decoding the bytes recorded between real uWSGI processes (spec §11, transcripts/).

use uwsgi_proto::header::{Header, Packet, Status};
use uwsgi_proto::{array, config, vars, EmperorMsg, VassalMsg};

fn unhex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex"))
        .collect()
}

/// The fork-server request the 2.1-dev emperor sent (transcripts/fork-server-bytes.txt, the
/// strace of `sendmsg`), 73 bytes: header `23 45 00 01` then the argv array.
const FORK_REQUEST: &str = "23 45 00 01 32 00 2f 77 6f 72 6b 2f 73 74 65 65 72 69 6e 67 2f 6c 61 62 \
    2f 2e 62 75 69 6c 64 2f 75 77 73 67 69 2d 36 63 62 62 32 31 37 37 61 65 34 38 2f 75 77 73 67 69 \
    05 00 2d 2d 69 6e 69 08 00 61 70 70 32 2e 69 6e 69";

#[test]
fn fork_server_request_from_transcript() {
    let wire = unhex(FORK_REQUEST);
    assert_eq!(wire.len(), 73);
    let Status::Complete((pkt, used)) = Packet::decode(&wire) else {
        panic!("incomplete")
    };
    assert_eq!(used, 73);
    assert_eq!(pkt.header, Header::new(35, 0x45, 0x01));
    let argv: Vec<&[u8]> = array::iter(pkt.body).collect::<Result<_, _>>().unwrap();
    assert_eq!(
        argv,
        [
            &b"/work/steering/lab/.build/uwsgi-6cbb2177ae48/uwsgi"[..],
            b"--ini",
            b"app2.ini"
        ]
    );
    // Re-encoding the argv gives the same bytes.
    let mut b = array::ArrayBuilder::new();
    for a in &argv {
        b.push(a).unwrap();
    }
    assert_eq!(b.into_packet(35, 0x01), wire);
}

#[test]
fn fork_server_request_shape_from_spec() {
    // §11.7: `23 29 00 01 | 17 00 <23-byte argv0> | 05 00 "--ini" | 07 00 "fsv.ini"`.
    let argv0 = b"/opt/uwsgi/uwsgi-2.1-dev";
    let argv0 = &argv0[..23];
    let mut b = array::ArrayBuilder::new();
    b.push(argv0)
        .unwrap()
        .push("--ini")
        .unwrap()
        .push("fsv.ini")
        .unwrap();
    let wire = b.into_packet(35, 1);
    assert_eq!(&wire[..6], &[0x23, 0x29, 0x00, 0x01, 0x17, 0x00]);
    assert_eq!(wire.len(), 45);
}

#[test]
fn fork_server_replies() {
    for (hex, pid) in [
        // transcripts/fork-server-bytes.txt: the grandchild's write
        ("23 0b 00 00 03 00 70 69 64 04 00 36 37 34 39", &b"6749"[..]),
        ("23 0b 00 00 03 00 70 69 64 04 00 37 31 30 37", b"7107"),
        // spec §11.7
        ("23 0c 00 00 03 00 70 69 64 05 00 31 38 32 30 34", b"18204"),
    ] {
        let wire = unhex(hex);
        let (pkt, used) = Packet::decode(&wire).complete().unwrap();
        assert_eq!(used, wire.len());
        assert_eq!((pkt.header.modifier1, pkt.header.modifier2), (35, 0));
        assert_eq!(vars::get(pkt.body, b"pid").unwrap(), Some(pid));
        let mut b = vars::VarsBuilder::new();
        b.push("pid", pid).unwrap();
        assert_eq!(b.into_packet(35, 0), wire);
    }
}

#[test]
fn config_frame_from_spec() {
    // §11.5: header `73 2f 00 00` then a 47-byte body.
    let body = b"[uwsgi]\nmaster = true\nsocket = /tmp/ab/zz.sock\n";
    assert_eq!(body.len(), 47);
    let mut wire = vec![0x73, 0x2f, 0x00, 0x00];
    wire.extend_from_slice(body);
    let (cfg, used) = config::decode(&wire).unwrap().complete().unwrap();
    assert_eq!(cfg, body);
    assert_eq!(used, 51);
    let mut enc = Vec::new();
    config::encode(body, &mut enc).unwrap();
    assert_eq!(enc, wire);
}

#[test]
fn config_double_push_keeps_the_newest() {
    // transcripts/emperor-bytes.txt: a 2.0.21 emperor pushes a 193-byte blob after byte 1 and
    // again after the vassal's byte 2; version 3 may already be queued behind them.
    let v = |n: u8| {
        format!(
            "[uwsgi]\nplugin = python3\nsocket = /tmp/uwsgi-lab-run-0/cfg.sock\nmaster = true\n\
             processes = 1\nwsgi-file = /tmp/uwsgi-lab-run-0/hello.py\nprint = lab-config-version={n}\n"
        )
    };
    let mut wire = Vec::new();
    config::encode(v(2).as_bytes(), &mut wire).unwrap();
    assert_eq!(&wire[..2], &[0x73, v(2).len() as u8]);
    config::encode(v(2).as_bytes(), &mut wire).unwrap();
    config::encode(v(3).as_bytes(), &mut wire).unwrap();
    let (newest, used) = config::newest(&wire).unwrap().complete().unwrap();
    assert_eq!(newest, v(3).as_bytes());
    assert_eq!(used, wire.len());
}

#[test]
fn channel_bytes_from_transcript() {
    // vassal -> emperor bytes seen in transcripts/emperor-bytes.txt
    let seen = unhex("01 05 1a 11 1a 05 02 16 1e");
    let msgs: Vec<VassalMsg> = seen.iter().map(|&b| VassalMsg::from_byte(b)).collect();
    assert_eq!(
        msgs,
        [
            VassalMsg::Ready,
            VassalMsg::Accepting,
            VassalMsg::Heartbeat,
            VassalMsg::Loyal,
            VassalMsg::Heartbeat,
            VassalMsg::Accepting,
            VassalMsg::ConfigRequest,
            VassalMsg::StopMe,
            VassalMsg::Sos
        ]
    );
    assert_eq!(EmperorMsg::from_byte(0x01), EmperorMsg::Reload);
    assert_eq!(EmperorMsg::from_byte(0x00), EmperorMsg::Stop);
}
