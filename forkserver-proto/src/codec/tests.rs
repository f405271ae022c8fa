use super::*;

/// A request recorded in full (transcripts/fork-server-bytes.txt, Part C, strace of the
/// emperor's `sendmsg`): argv `[<50-byte path>/uwsgi, --ini, app2.ini]`, mask 0x01.
pub(crate) const RECORDED_REQUEST: &[u8] = b"\x23\x45\x00\x01\
    \x32\x00/work/steering/lab/.build/uwsgi-6cbb2177ae48/uwsgi\
    \x05\x00--ini\x08\x00app2.ini";
pub(crate) const RECORDED_ARGV: [&str; 3] = [
    "/work/steering/lab/.build/uwsgi-6cbb2177ae48/uwsgi",
    "--ini",
    "app2.ini",
];
/// The reply recorded in §11.7: pid 18204.
const RECORDED_REPLY: &[u8] = b"\x23\x0c\x00\x00\x03\x00pid\x05\x00\x31\x38\x32\x30\x34";

#[test]
fn request_is_byte_exact_with_the_recording() {
    let enc = encode_request(RECORDED_ARGV, FdMask::CHANNEL_ONLY).unwrap();
    assert_eq!(enc, RECORDED_REQUEST);
    assert_eq!(enc.len(), 73);
}

#[test]
fn request_matches_section_11_7() {
    // §11.7 shows `23 29 00 01 | 17 00 "uwsgi-2.1-dev" | 05 00 "--ini" | 07 00 "fsv.ini"`
    // (45 bytes): argv[0] is a 23-byte path displayed by its basename. Any 23-byte argv[0]
    // reproduces every other byte.
    let argv0 = "/usr/sbin/uwsgi-2.1-dev";
    assert_eq!(argv0.len(), 0x17);
    let enc = encode_request([argv0, "--ini", "fsv.ini"], FdMask::CHANNEL_ONLY).unwrap();
    assert_eq!(enc.len(), 45);
    assert_eq!(&enc[..6], b"\x23\x29\x00\x01\x17\x00");
    assert_eq!(&enc[6..29], argv0.as_bytes());
    assert_eq!(&enc[29..], b"\x05\x00--ini\x07\x00fsv.ini");
}

#[test]
fn recorded_request_decodes() {
    let (req, used) = Request::decode(RECORDED_REQUEST)
        .unwrap()
        .complete()
        .unwrap();
    assert_eq!(used, 73);
    assert_eq!(req.mask, FdMask::CHANNEL_ONLY);
    assert_eq!(req.argc, 3);
    assert_eq!(req.argv(), RECORDED_ARGV);
}

#[test]
fn reply_is_byte_exact_with_the_recording() {
    assert_eq!(encode_reply(18204), RECORDED_REPLY);
    assert_eq!(
        decode_reply(RECORDED_REPLY).unwrap(),
        Status::Complete((18204, 16))
    );
}

#[test]
fn transcript_part_c_reply_decodes() {
    // 15-byte reply written by the adopted app2.ini (pid 6749).
    let r = b"\x23\x0b\x00\x00\x03\x00\x70\x69\x64\x04\x00\x36\x37\x34\x39";
    assert_eq!(decode_reply(r).unwrap(), Status::Complete((6749, 15)));
}

#[test]
fn partial_inputs() {
    for n in 0..RECORDED_REQUEST.len() {
        assert!(Request::decode(&RECORDED_REQUEST[..n])
            .unwrap()
            .is_partial());
    }
    for n in 0..RECORDED_REPLY.len() {
        assert!(decode_reply(&RECORDED_REPLY[..n]).unwrap().is_partial());
    }
}

#[test]
fn mask_bits() {
    for bits in 0..=255u8 {
        match FdMask::from_bits(bits) {
            Ok(m) => {
                assert_eq!(m.bits(), bits);
                assert!((1..=3).contains(&m.fd_count()));
            }
            Err(RequestError::NoChannelBit { .. }) => assert_eq!(bits & 1, 0),
            Err(RequestError::UnknownMaskBits { .. }) => assert_ne!(bits & !7, 0),
            Err(e) => panic!("unexpected {e}"),
        }
    }
    let m = FdMask {
        config: true,
        on_demand: true,
    };
    assert_eq!(m.bits(), 7);
    assert_eq!(m.split(vec![10, 11, 12]).unwrap(), (10, Some(11), Some(12)));
    let m = FdMask {
        config: false,
        on_demand: true,
    };
    assert_eq!(m.split(vec![10, 12]).unwrap(), (10, None, Some(12)));
    assert_eq!(
        m.split(vec![10]).unwrap_err(),
        RequestError::FdCount {
            expected: 2,
            got: 1
        }
    );
}

#[test]
fn request_header_errors_come_early() {
    assert_eq!(
        Request::decode(b"\x24\x29\x00\x01").unwrap_err(),
        RequestError::WrongModifier1 { modifier1: 0x24 }
    );
    assert_eq!(
        Request::decode(b"\x23\x29\x00\x08").unwrap_err(),
        RequestError::UnknownMaskBits { mask: 8 }
    );
    assert_eq!(
        Request::decode(b"\x23\x29\x00\x02").unwrap_err(),
        RequestError::NoChannelBit { mask: 2 }
    );
}

#[test]
fn argv_errors() {
    assert_eq!(
        Request::decode(b"\x23\x00\x00\x01").unwrap_err(),
        RequestError::EmptyArgv
    );
    assert!(matches!(
        Request::decode(b"\x23\x03\x00\x01\x05\x00a").unwrap_err(),
        RequestError::Array(ArrayError::Overrun { .. })
    ));
    assert_eq!(
        Request::decode(b"\x23\x03\x00\x01\x01\x00\x00").unwrap_err(),
        RequestError::NulInArg { index: 0 }
    );
    let many = vec!["x"; MAX_ARGS + 1];
    assert!(matches!(
        encode_request(&many, FdMask::CHANNEL_ONLY),
        Err(RequestError::TooManyArgs { .. })
    ));
    let empty: [&str; 0] = [];
    assert_eq!(
        encode_request(empty, FdMask::CHANNEL_ONLY),
        Err(RequestError::EmptyArgv)
    );
    let big = "y".repeat(70_000);
    assert!(matches!(
        encode_request([big.as_str()], FdMask::CHANNEL_ONLY),
        Err(RequestError::Encode(_))
    ));
    // Empty items are kept, as uWSGI's array parser delivers them.
    let enc = encode_request(["a", "", "b"], FdMask::CHANNEL_ONLY).unwrap();
    let (req, _) = Request::decode(&enc).unwrap().complete().unwrap();
    assert_eq!(req.argv(), ["a", "", "b"]);
}

#[test]
fn reply_errors() {
    assert_eq!(
        decode_reply(b"\x00\x00\x00\x00").unwrap_err(),
        ReplyError::WrongModifier1 { modifier1: 0 }
    );
    assert_eq!(
        decode_reply(b"\x23\x00\x00\x00").unwrap_err(),
        ReplyError::NoPid
    );
    assert_eq!(
        decode_reply(b"\x23\x08\x00\x00\x01\x00x\x03\x00abc").unwrap_err(),
        ReplyError::NoPid
    );
    for bad in [&b""[..], b"-1", b"0", b"12a", b"99999999999", b"2147483648"] {
        assert_eq!(parse_pid(bad), Err(ReplyError::BadPid), "{bad:?}");
    }
    assert_eq!(parse_pid(b"2147483647"), Ok(i32::MAX));
    assert!(matches!(
        decode_reply(b"\x23\x02\x00\x00\x00\x00").unwrap_err(),
        ReplyError::Vars(_)
    ));
}

mod props {
    use super::super::*;
    use proptest::prelude::*;

    fn arg() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(1u8..=255, 0..40)
    }

    proptest! {
        #[test]
        fn request_round_trips(
            argv in proptest::collection::vec(arg(), 1..20),
            config: bool,
            on_demand: bool,
        ) {
            let mask = FdMask { config, on_demand };
            let argv: Vec<OsString> = argv.into_iter().map(OsString::from_vec).collect();
            let enc = encode_request(&argv, mask).unwrap();
            let (req, used) = Request::decode(&enc).unwrap().complete().unwrap();
            prop_assert_eq!(used, enc.len());
            prop_assert_eq!(req.mask, mask);
            prop_assert_eq!(req.argv(), argv);
        }

        #[test]
        fn reply_round_trips(pid in 1i32..=i32::MAX) {
            let enc = encode_reply(pid);
            prop_assert_eq!(decode_reply(&enc).unwrap(), Status::Complete((pid, enc.len())));
        }

        #[test]
        fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Request::decode(&data);
            let _ = decode_reply(&data);
        }
    }
}
