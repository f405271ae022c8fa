//! Property tests: no decoder panics on arbitrary bytes; encode → decode round-trips.

use bytes::BytesMut;
use proptest::prelude::*;
use uwsgi_proto::header::{Header, Packet, Status};
use uwsgi_proto::request::Response;
use uwsgi_proto::{array, config, vars, ArrayBuilder, PacketDecoder, VarsBuilder};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Header::decode(&data);
        let _ = Packet::decode(&data);
        let _ = vars::iter(&data).count();
        let _ = vars::get(&data, b"pid");
        let _ = array::iter(&data).count();
        let _ = config::decode(&data);
        let _ = config::newest(&data);
        let _ = Response::parse(&data);
        let mut dec = PacketDecoder::new(300);
        let mut buf = BytesMut::from(&data[..]);
        while let Ok(Some(_)) = dec.decode(&mut buf) {}
    }

    #[test]
    fn vars_round_trip(pairs in proptest::collection::vec(
        (proptest::collection::vec(any::<u8>(), 1..40), proptest::collection::vec(any::<u8>(), 0..80)),
        0..40)) {
        let mut b = VarsBuilder::new();
        for (k, v) in &pairs {
            b.push(k, v).unwrap();
        }
        let packet = b.into_packet(0, 0);
        let Status::Complete((p, used)) = Packet::decode(&packet) else { panic!("partial") };
        prop_assert_eq!(used, packet.len());
        let back: Vec<(Vec<u8>, Vec<u8>)> = vars::iter(p.body)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()
            .unwrap();
        prop_assert_eq!(back, pairs);
    }

    #[test]
    fn arrays_round_trip(items in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..60), 0..60)) {
        let mut b = ArrayBuilder::new();
        for i in &items {
            b.push(i).unwrap();
        }
        let body = b.into_body();
        let back: Vec<Vec<u8>> = array::iter(&body).map(|r| r.map(<[u8]>::to_vec)).collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(back, items);
    }

    #[test]
    fn stream_decoder_reassembles_any_split(
        bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 1..8),
        cuts in proptest::collection::vec(1usize..50, 1..20),
    ) {
        let mut wire = Vec::new();
        for (i, b) in bodies.iter().enumerate() {
            Packet::encode_into(i as u8, 7, b, &mut wire).unwrap();
        }
        let mut dec = PacketDecoder::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut pos = 0;
        let mut cut = cuts.iter().cycle();
        while pos < wire.len() {
            let n = (*cut.next().unwrap()).min(wire.len() - pos);
            buf.extend_from_slice(&wire[pos..pos + n]);
            pos += n;
            while let Some(p) = dec.decode(&mut buf).unwrap() {
                got.push(p);
            }
        }
        prop_assert_eq!(got.len(), bodies.len());
        for (i, (p, b)) in got.iter().zip(&bodies).enumerate() {
            prop_assert_eq!(p.header.modifier1, i as u8);
            prop_assert_eq!(&p.body[..], &b[..]);
        }
    }

    #[test]
    fn config_newest_is_last(blobs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..6)) {
        let mut wire = Vec::new();
        for b in &blobs {
            config::encode(b, &mut wire).unwrap();
        }
        let (newest, used) = config::newest(&wire).unwrap().complete().unwrap();
        prop_assert_eq!(newest, &blobs.last().unwrap()[..]);
        prop_assert_eq!(used, wire.len());
    }
}
