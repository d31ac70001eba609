//! Tests of the msgr2.1 wire layer against byte layouts derived from Ceph's sources.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};

use bytes::Bytes;
use corewire_messenger::wire::frame::{
    BANNER_PREFIX_LEN, EPILOGUE_LEN, LATE_STATUS_ABORTED, PREAMBLE_LEN,
};
use corewire_messenger::wire::*;

/// CRC-32C register update, bit by bit, without inversions: an independent model of
/// Ceph's `ceph_crc32c(seed, data)`.
fn crc32c_model(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    crc
}

fn concat(parts: &[Bytes]) -> Vec<u8> {
    parts.iter().flat_map(|p| p.iter().copied()).collect()
}

fn addr_v4() -> EntityAddr {
    EntityAddr::msgr2("127.0.0.1:3300".parse().unwrap(), 0)
}

fn addr_v6() -> EntityAddr {
    let ip: Ipv6Addr = "fe80::1:2".parse().unwrap();
    EntityAddr::new(
        EntityAddrType::Legacy,
        SocketAddr::V6(SocketAddrV6::new(ip, 6789, 0x12345, 3)),
        0xdead_beef,
    )
}

fn encode<T: Encode>(v: &T) -> Vec<u8> {
    let mut e = Encoder::new();
    v.encode(&mut e);
    e.finish().to_vec()
}

fn decode<T: Decode>(b: &[u8]) -> WireResult<T> {
    Decoder::new(b).get()
}

// ---------------------------------------------------------------- crc

#[test]
fn crc_matches_ceph_test_vectors_and_model() {
    // src/test/common/test_crc32c.cc
    assert_eq!(ceph_crc32c(0, b"foo bar baz"), 4119623852);
    assert_eq!(ceph_crc32c(1234, b"foo bar baz"), 881700046);
    assert_eq!(ceph_crc32c(0, b"whiz bang boom"), 2360230088);
    assert_eq!(ceph_crc32c(5678, b"whiz bang boom"), 3743019208);
    assert_eq!(ceph_crc32c(0, &[1u8; 5]), 2715569182);
    assert_eq!(ceph_crc32c(0, &[1u8; 35]), 440531800);
    for seed in [0, 1, u32::MAX, 0x1234_5678] {
        assert_eq!(
            ceph_crc32c(seed, b"foo bar baz"),
            crc32c_model(seed, b"foo bar baz")
        );
    }
    // seed -1 over nothing, as Ceph writes for an empty segment
    assert_eq!(ceph_crc32c(u32::MAX, b""), u32::MAX);
}

/// The SIMD folding paths (large inputs, unaligned starts) agree with the bitwise model for
/// every seed kind msgr2 uses.
#[test]
fn crc_matches_the_model_at_every_size_class() {
    let data: Vec<u8> = (0..9100u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let sizes = (0..=300).chain([
        511, 512, 513, 1023, 1024, 2047, 2048, 4095, 4096, 4097, 8191, 8192, 9000,
    ]);
    for len in sizes {
        for off in [0, 1, 7] {
            let d = &data[off..off + len];
            for seed in [0, u32::MAX, 0x9e37_79b9] {
                assert_eq!(
                    ceph_crc32c(seed, d),
                    crc32c_model(seed, d),
                    "len {len} off {off} seed {seed:#x}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------- codec

#[test]
fn codec_primitives_round_trip_little_endian() {
    let mut e = Encoder::new();
    e.put_u8(1)
        .put_u16(0x0203)
        .put_u32(0x0405_0607)
        .put_u64(0x0809_0a0b_0c0d_0e0f)
        .put_i32(-2)
        .put_bool(true)
        .put_str("héllo")
        .put_blob(b"\x00\xff");
    let b = e.finish();
    assert_eq!(
        &b[..15],
        &[1, 3, 2, 7, 6, 5, 4, 0xf, 0xe, 0xd, 0xc, 0xb, 0xa, 9, 8]
    );
    let mut d = Decoder::new(&b);
    assert_eq!(d.u8().unwrap(), 1);
    assert_eq!(d.u16().unwrap(), 0x0203);
    assert_eq!(d.u32().unwrap(), 0x0405_0607);
    assert_eq!(d.u64().unwrap(), 0x0809_0a0b_0c0d_0e0f);
    assert_eq!(d.i32().unwrap(), -2);
    assert!(d.bool().unwrap());
    assert_eq!(d.string().unwrap(), "héllo");
    assert_eq!(d.blob().unwrap(), b"\x00\xff");
    assert!(d.is_empty());
    assert!(matches!(
        d.u8(),
        Err(WireError::Truncated {
            what: "u8",
            need: 1,
            have: 0
        })
    ));
}

#[test]
fn codec_collections_and_time() {
    let v: Vec<u32> = vec![1, 2, 3];
    let b = encode(&v);
    assert_eq!(b, [3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0]);
    assert_eq!(decode::<Vec<u32>>(&b).unwrap(), v);

    let mut m = std::collections::BTreeMap::new();
    m.insert("a".to_string(), 7u64);
    m.insert("bc".to_string(), 9u64);
    assert_eq!(
        decode::<std::collections::BTreeMap<String, u64>>(&encode(&m)).unwrap(),
        m
    );

    let t = UTime::new(1_700_000_000, 123_456_789);
    let b = encode(&t);
    assert_eq!(b.len(), 8);
    assert_eq!(&b[..4], &1_700_000_000u32.to_le_bytes());
    assert_eq!(decode::<UTime>(&b).unwrap(), t);
    assert_eq!(t.as_duration().as_nanos(), 1_700_000_000_123_456_789);

    let bl = Bytes::from_static(b"blob!");
    let enc = Bytes::from(encode(&bl));
    let got: Bytes = Decoder::from_bytes(&enc).get().unwrap();
    assert_eq!(got, bl);
    // zero-copy: the blob is a slice of the source
    assert_eq!(got.as_ptr(), enc[4..].as_ptr());
}

#[test]
fn codec_lengths_are_checked_before_allocating() {
    // string claims 1000 bytes, 3 present
    let mut b = 1000u32.to_le_bytes().to_vec();
    b.extend_from_slice(b"abc");
    assert_eq!(
        decode::<String>(&b),
        Err(WireError::Truncated {
            what: "string",
            need: 1000,
            have: 3
        })
    );
    assert!(matches!(
        decode::<Bytes>(&b),
        Err(WireError::Truncated { need: 1000, .. })
    ));
    // vector of u64 claims u32::MAX elements
    let b = u32::MAX.to_le_bytes();
    match decode::<Vec<u64>>(&b) {
        Err(WireError::Truncated {
            what: "vector",
            need,
            have: 0,
        }) => {
            assert_eq!(need, u32::MAX as usize * 8)
        }
        r => panic!("{r:?}"),
    }
    assert!(matches!(
        decode::<std::collections::BTreeMap<u32, u32>>(&u32::MAX.to_le_bytes()),
        Err(WireError::Truncated { what: "map", .. })
    ));
    // invalid UTF-8
    let b = [2, 0, 0, 0, 0xff, 0xfe];
    assert!(matches!(
        decode::<String>(&b),
        Err(WireError::BadEncoding { what: "string", .. })
    ));
}

#[test]
fn versioned_struct_layout_compat_and_skip() {
    let mut e = Encoder::new();
    e.encode_versioned(3, 2, |e| {
        e.put_u32(7).put_u16(9);
    });
    e.put_u8(0xaa);
    let b = e.finish();
    assert_eq!(&b[..], &[3, 2, 6, 0, 0, 0, 7, 0, 0, 0, 9, 0, 0xaa]);

    // an older decoder (understands v2) reads the first field, skips the rest
    let mut d = Decoder::new(&b);
    let (v, x) = d
        .decode_versioned("test", 2, |v, d| Ok((v, d.u32()?)))
        .unwrap();
    assert_eq!((v, x), (3, 7));
    assert_eq!(d.u8().unwrap(), 0xaa);

    // compat newer than understood
    let mut d = Decoder::new(&b);
    assert_eq!(
        d.decode_versioned("test", 1, |_, d| d.u32()),
        Err(WireError::UnsupportedVersion {
            what: "test",
            v: 2,
            max: 1
        })
    );

    // body reads confined to struct_len
    let mut d = Decoder::new(&b);
    let r = d.decode_versioned("test", 3, |_, d| d.u64());
    assert!(matches!(
        r,
        Err(WireError::Truncated {
            what: "u64",
            need: 8,
            have: 6
        })
    ));

    // struct_len larger than the input
    let b = [1, 1, 50, 0, 0, 0, 1, 2];
    assert!(matches!(
        Decoder::new(&b).decode_versioned("test", 1, |_, d| d.u8()),
        Err(WireError::Truncated {
            what: "test",
            need: 50,
            have: 2
        })
    ));
}

// ---------------------------------------------------------------- types

#[test]
fn entity_type_values_and_names() {
    let all = [
        (EntityType::Mon, 1),
        (EntityType::Mds, 2),
        (EntityType::Osd, 4),
        (EntityType::Client, 8),
        (EntityType::Mgr, 0x10),
        (EntityType::Auth, 0x20),
        (EntityType::Any, 0xff),
    ];
    for (t, v) in all {
        assert_eq!(t as u8, v);
        assert_eq!(EntityType::try_from(v).unwrap(), t);
        assert_eq!(decode::<EntityType>(&encode(&t)).unwrap(), t);
    }
    assert!(EntityType::try_from(3).is_err());

    let n: EntityName = "osd.0".parse().unwrap();
    assert_eq!(n, EntityName::new(EntityType::Osd, 0));
    assert_eq!(n.to_string(), "osd.0");
    assert_eq!(
        EntityName::new(EntityType::Client, -1).to_string(),
        "client.?"
    );
    assert_eq!("client.4123".parse::<EntityName>().unwrap().num, 4123);
    assert!("foo.1".parse::<EntityName>().is_err());
    assert!("osd.x".parse::<EntityName>().is_err());
    let b = encode(&EntityName::new(EntityType::Mon, 2));
    assert_eq!(b, [1, 2, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        decode::<EntityName>(&b).unwrap(),
        EntityName::new(EntityType::Mon, 2)
    );
}

#[test]
fn entity_addr_v4_bytes_match_msg_types_layout() {
    let b = encode(&addr_v4());
    #[rustfmt::skip]
    let expected: [u8; 35] = [
        1,                      // marker: MSG_ADDR2 encoding
        1, 1,                   // ENCODE_START(1, 1)
        28, 0, 0, 0,            // struct_len
        2, 0, 0, 0,             // type = TYPE_MSGR2
        0, 0, 0, 0,             // nonce
        16, 0, 0, 0,            // sockaddr len = sizeof(sockaddr_in)
        2, 0,                   // sin_family = AF_INET, host (little-endian) order
        0x0c, 0xe4,             // sin_port = 3300, network order
        127, 0, 0, 1,           // sin_addr
        0, 0, 0, 0, 0, 0, 0, 0, // sin_zero
    ];
    assert_eq!(b, expected);
    assert_eq!(decode::<EntityAddr>(&b).unwrap(), addr_v4());
    assert_eq!(addr_v4().to_string(), "v2:127.0.0.1:3300/0");
}

#[test]
fn entity_addr_v6_blank_legacy_and_parse() {
    let a = addr_v6();
    let b = encode(&a);
    assert_eq!(b.len(), 1 + 6 + 12 + 28);
    assert_eq!(&b[19..21], &[10, 0]); // AF_INET6 little-endian
    assert_eq!(&b[21..23], &6789u16.to_be_bytes());
    assert_eq!(&b[23..27], &0x12345u32.to_be_bytes()); // sin6_flowinfo network order
    assert_eq!(decode::<EntityAddr>(&b).unwrap(), a);

    // blank address: AF_UNSPEC, sizeof(u) = 28 zero bytes
    let blank = EntityAddr::default();
    let b = encode(&blank);
    assert_eq!(
        &b[..19],
        &[1, 1, 1, 40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 28, 0, 0, 0]
    );
    assert!(b[19..].iter().all(|&x| x == 0) && b.len() == 47);
    assert_eq!(decode::<EntityAddr>(&b).unwrap(), blank);
    assert_eq!(blank.to_string(), "-");

    // legacy (marker 0): u32 type 0, nonce, sockaddr_storage with big-endian family
    let mut b = vec![0, 0, 0, 0];
    b.extend_from_slice(&7u32.to_le_bytes());
    let mut ss = [0u8; 128];
    ss[..8].copy_from_slice(&[0, 2, 0x1a, 0x85, 10, 1, 2, 3]);
    b.extend_from_slice(&ss);
    let a = decode::<EntityAddr>(&b).unwrap();
    assert_eq!(a.to_string(), "v1:10.1.2.3:6789/7");

    // short sockaddr: zero-filled like Ceph's bl.copy into a zeroed union
    let mut e = Encoder::new();
    e.put_u8(1).encode_versioned(1, 1, |e| {
        e.put_u32(2)
            .put_u32(5)
            .put_u32(4)
            .put_raw(&[2, 0, 0x0c, 0xe4]);
    });
    assert_eq!(
        decode::<EntityAddr>(&e.finish()).unwrap().to_string(),
        "v2:0.0.0.0:3300/5"
    );

    // errors
    assert!(matches!(
        decode::<EntityAddr>(&[3]),
        Err(WireError::BadEncoding { .. })
    ));
    let mut e = Encoder::new();
    e.put_u8(1).encode_versioned(1, 1, |e| {
        e.put_u32(2)
            .put_u32(0)
            .put_u32(20)
            .put_raw(&[2, 0])
            .put_raw(&[0; 18]);
    });
    assert!(matches!(
        decode::<EntityAddr>(&e.finish()),
        Err(WireError::BadEncoding { .. })
    ));
    let mut e = Encoder::new();
    e.put_u8(1).encode_versioned(2, 2, |_| {});
    assert!(matches!(
        decode::<EntityAddr>(&e.finish()),
        Err(WireError::UnsupportedVersion { v: 2, max: 1, .. })
    ));

    for s in ["v2:127.0.0.1:3300/0", "v1:[::1]:6789/42"] {
        let a: EntityAddr = s.parse().unwrap();
        assert_eq!(a.to_string(), s);
    }
    let any: EntityAddr = "any:10.0.0.1:0/9".parse().unwrap();
    assert_eq!(
        (any.ty, any.to_string().as_str()),
        (EntityAddrType::Any, "10.0.0.1:0/9")
    );
    assert_eq!(
        "10.0.0.1".parse::<EntityAddr>().unwrap().to_string(),
        "v2:10.0.0.1:0/0"
    );
}

#[test]
fn entity_addrvec_layout_and_markers() {
    let v = EntityAddrVec::new(vec![addr_v4(), addr_v6()]);
    let b = encode(&v);
    assert_eq!(&b[..5], &[2, 2, 0, 0, 0]);
    assert_eq!(&b[5..40], &encode(&addr_v4())[..]);
    assert_eq!(decode::<EntityAddrVec>(&b).unwrap(), v);
    assert_eq!(v.msgr2_addr(), Some(&addr_v4()));
    assert_eq!(
        v.to_string(),
        "[v2:127.0.0.1:3300/0,v1:[fe80::1:2%3]:6789/3735928559]"
    );
    // marker 1: a single bare entity_addr_t
    let single = decode::<EntityAddrVec>(&encode(&addr_v4())).unwrap();
    assert_eq!(single, EntityAddrVec::from(addr_v4()));
    assert!(matches!(
        decode::<EntityAddrVec>(&[3]),
        Err(WireError::BadEncoding { .. })
    ));
    // count larger than the input
    assert!(matches!(
        decode::<EntityAddrVec>(&[2, 0xff, 0xff, 0xff, 0x7f, 1]),
        Err(WireError::Truncated { what: "vector", .. })
    ));
}

// ---------------------------------------------------------------- banner

#[test]
fn banner_bytes_and_checks() {
    let ours = Banner::default();
    let b = ours.encode();
    let mut expected = b"ceph v2\n".to_vec();
    expected.extend_from_slice(&[16, 0]);
    expected.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
    expected.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&b[..], &expected[..]);
    assert_eq!(Banner::decode(&b).unwrap(), (ours, 26));

    // Pacific advertises supported = REVISION_1, required = 0
    let pacific = Banner {
        supported: MSGR2_FEATURE_REVISION_1,
        required: 0,
    };
    assert_eq!(ours.check_peer(&pacific).unwrap(), MSGR2_FEATURE_REVISION_1);
    let quincy = Banner {
        supported: MSGR2_FEATURE_REVISION_1 | MSGR2_FEATURE_COMPRESSION,
        required: 0,
    };
    assert_eq!(ours.check_peer(&quincy).unwrap(), MSGR2_FEATURE_REVISION_1);

    let needy = Banner {
        supported: 0b111,
        required: MSGR2_FEATURE_COMPRESSION | (1 << 5),
    };
    match ours.check_peer(&needy) {
        Err(WireError::PeerRequiresFeatures { missing, names }) => {
            assert_eq!(missing, 0b10_0010);
            assert_eq!(names, "COMPRESSION|bit5");
        }
        r => panic!("{r:?}"),
    }
    let old = Banner {
        supported: 0,
        required: 0,
    };
    assert!(matches!(
        ours.check_peer(&old),
        Err(WireError::PeerLacksFeatures { missing: 1, ref names }) if names == "REVISION_1"
    ));

    assert!(matches!(
        Banner::decode(b"ceph v1\n\x10\x00"),
        Err(WireError::BadBanner { .. })
    ));
    match Banner::decode(b"ceph v027 and more") {
        Err(WireError::BadBanner { reason }) => assert!(reason.contains("v1")),
        r => panic!("{r:?}"),
    }
    assert!(matches!(
        Banner::decode(&b[..20]),
        Err(WireError::Truncated {
            what: "banner payload",
            need: 26,
            have: 20
        })
    ));
    assert!(matches!(
        Banner::decode(&b[..5]),
        Err(WireError::Truncated { .. })
    ));
    // short payload is an error, longer is allowed
    assert!(matches!(
        Banner::decode(b"ceph v2\n\x02\x00ab"),
        Err(WireError::BadBanner { .. })
    ));
    let mut long = b"ceph v2\n\x12\x00".to_vec();
    long.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 9]);
    assert_eq!(Banner::decode(&long).unwrap().1, 28);
}

// ---------------------------------------------------------------- frames on the wire

#[test]
fn ack_frame_bytes_with_independent_crcs() {
    let parts = Ack { seq: 5 }.to_wire().unwrap();
    let wire = concat(&parts);
    assert_eq!(
        wire.len(),
        PREAMBLE_LEN + 8 + 4,
        "one segment: inline crc, no epilogue"
    );

    let mut pre = [0u8; 28];
    pre[0] = 20; // Tag::ACK
    pre[1] = 1; // one segment
    pre[2..6].copy_from_slice(&8u32.to_le_bytes());
    pre[6..8].copy_from_slice(&8u16.to_le_bytes()); // DEFAULT_ALIGNMENT
    assert_eq!(&wire[..28], &pre);
    assert_eq!(&wire[28..32], &crc32c_model(0, &pre).to_le_bytes());
    assert_eq!(&wire[32..40], &5u64.to_le_bytes());
    assert_eq!(
        &wire[40..44],
        &crc32c_model(u32::MAX, &5u64.to_le_bytes()).to_le_bytes()
    );
}

#[test]
fn wait_frame_is_a_bare_preamble() {
    let wire = concat(&Wait {}.to_wire().unwrap());
    assert_eq!(wire.len(), PREAMBLE_LEN);
    assert_eq!(&wire[..8], &[16, 1, 0, 0, 0, 0, 8, 0]);
    let mut d = FrameDecoder::new();
    d.feed(Bytes::from(wire));
    let (tag, segs) = d.next_frame().unwrap().unwrap();
    assert_eq!(tag, Tag::Wait);
    assert_eq!(segs, vec![Bytes::new()]);
    assert_eq!(Frame::decode(tag, &segs).unwrap(), Frame::Wait(Wait {}));
}

fn sample_message() -> MessageFrame {
    MessageFrame {
        header: MsgHeader2 {
            seq: 7,
            tid: 99,
            msg_type: 0x29,
            priority: 127,
            version: 3,
            data_pre_padding_len: 0,
            data_off: 0,
            ack_seq: 6,
            flags: 0,
            compat_version: 1,
            reserved: 0,
        },
        front: Bytes::from_static(b"front-bytes"),
        middle: Bytes::new(),
        data: Bytes::from(vec![0x5a; 5000]),
    }
}

#[test]
fn message_frame_layout_epilogue_and_zero_copy() {
    let m = sample_message();
    let parts = m.to_wire().unwrap();
    // the data payload is passed through, not copied
    assert!(parts.iter().any(|p| p.as_ptr() == m.data.as_ptr()));
    let wire = concat(&parts);
    let hdr = &m.to_segments()[0];
    assert_eq!(hdr.len(), 41);
    assert_eq!(&hdr[..8], &7u64.to_le_bytes());
    assert_eq!(&hdr[16..18], &0x29u16.to_le_bytes());
    assert_eq!(hdr[36], 0); // flags after ack_seq
    assert_eq!(&hdr[37..39], &1u16.to_le_bytes()); // compat_version

    assert_eq!(wire[1], 4);
    assert_eq!(&wire[20..26], &[0x88, 0x13, 0, 0, 0x00, 0x10]); // data len 5000, align 4096
    let seg0_end = 32 + 41;
    assert_eq!(&wire[32..seg0_end], &hdr[..]);
    assert_eq!(
        &wire[seg0_end..seg0_end + 4],
        &crc32c_model(u32::MAX, hdr).to_le_bytes()
    );
    let ep = &wire[wire.len() - EPILOGUE_LEN..];
    assert_eq!(ep[0], 0x0e); // FRAME_LATE_STATUS_COMPLETE
    assert_eq!(
        &ep[1..5],
        &crc32c_model(u32::MAX, b"front-bytes").to_le_bytes()
    );
    assert_eq!(&ep[5..9], &u32::MAX.to_le_bytes()); // empty middle
    assert_eq!(&ep[9..13], &crc32c_model(u32::MAX, &m.data).to_le_bytes());
    assert_eq!(wire.len(), 32 + 41 + 4 + 11 + 5000 + 13);

    let mut d = FrameDecoder::new();
    let chunk = Bytes::from(wire);
    d.feed(chunk.clone());
    let (tag, segs) = d.next_frame().unwrap().unwrap();
    assert_eq!(tag, Tag::Message);
    // segments within one chunk are slices of it
    let data_off = 32 + 45 + 11;
    assert_eq!(segs[3].as_ptr(), chunk[data_off..].as_ptr());
    assert_eq!(MessageFrame::from_segments(&segs).unwrap(), m);
    assert_eq!(d.buffered(), 0);
}

/// A large segment that arrives in pieces: the step's buffered bytes move into one buffer
/// sized for the whole step, which the reader fills and feeds back, and the data segment is
/// a slice of that buffer (no assembling copy). Small steps are left alone.
#[test]
fn large_step_buffer_gathers_a_segment_in_one_chunk() {
    let mut m = sample_message();
    m.data = Bytes::from((0..100_000u32).map(|i| i as u8).collect::<Vec<u8>>());
    let wire = Bytes::from(concat(&m.to_wire().unwrap()));
    let mut d = FrameDecoder::new();
    // The preamble alone: the next step (the header segment) is small.
    d.feed(wire.slice(..32));
    assert!(d.next_frame().unwrap().is_none());
    assert!(d.large_step_buffer(16 << 10, 8 << 20).is_none());
    // Header, front and the first 3000 bytes of data: the rest of the frame is a large step.
    let head = 32 + 45 + 11 + 3000;
    d.feed(wire.slice(32..head));
    assert!(d.next_frame().unwrap().is_none());
    let rest = wire.len() - (32 + 45);
    assert!(
        d.large_step_buffer(rest + 1, 8 << 20).is_none(),
        "below the threshold"
    );
    let need = rest - d.buffered();
    assert_eq!(d.bytes_needed(), need);
    assert!(
        d.large_step_buffer(16 << 10, need - 1).is_none(),
        "above the cap: left to grow as bytes arrive"
    );
    assert_eq!(d.buffered(), head - (32 + 45), "nothing consumed");
    let (mut buf, fill_to) = d.large_step_buffer(16 << 10, need).unwrap();
    assert_eq!(fill_to, rest);
    assert_eq!(&buf[..], &wire[32 + 45..head]);
    assert_eq!(d.buffered(), 0);
    buf.extend_from_slice(&wire[head..]);
    let chunk = buf.freeze();
    d.feed(chunk.clone());
    let (tag, segs) = d.next_frame().unwrap().unwrap();
    assert_eq!(tag, Tag::Message);
    assert_eq!(
        segs[3].as_ptr(),
        chunk[11..].as_ptr(),
        "data sliced from the one chunk"
    );
    assert_eq!(MessageFrame::from_segments(&segs).unwrap(), m);
    assert_eq!(d.buffered(), 0);
}

/// What a frame announces, from its preamble until it is complete: the reader takes a
/// message's dispatch-throttle share from it before receiving the segments.
#[test]
fn announced_gives_the_tag_and_payload_length_once_the_preamble_is_read() {
    let m = sample_message();
    let wire = Bytes::from(concat(&m.to_wire().unwrap()));
    let mut d = FrameDecoder::new();
    assert_eq!(d.announced(), None);
    d.feed(wire.slice(..31));
    assert!(d.next_frame().unwrap().is_none());
    assert_eq!(d.announced(), None, "no preamble yet");
    d.feed(wire.slice(31..40));
    assert!(d.next_frame().unwrap().is_none());
    let payload = m.front.len() + m.middle.len() + m.data.len();
    assert_eq!(d.announced(), Some((Tag::Message, payload)));
    d.feed(wire.slice(40..wire.len() - 1));
    assert!(d.next_frame().unwrap().is_none());
    assert_eq!(d.announced(), Some((Tag::Message, payload)), "header read");
    d.feed(wire.slice(wire.len() - 1..));
    assert!(d.next_frame().unwrap().is_some());
    assert_eq!(d.announced(), None, "complete");
    // A control frame announces its segments after the first (none here).
    d.feed(Bytes::from(
        concat(&Ack { seq: 3 }.to_wire().unwrap())[..32].to_vec(),
    ));
    assert!(d.next_frame().unwrap().is_none());
    assert_eq!(d.announced(), Some((Tag::Ack, 0)));
}

#[test]
fn trailing_empty_segments_are_dropped() {
    let mut m = sample_message();
    m.data = Bytes::new();
    m.middle = Bytes::from_static(b"mid");
    let wire = concat(&m.to_wire().unwrap());
    assert_eq!(wire[1], 3);
    let mut d = FrameDecoder::new();
    d.feed(Bytes::from(wire));
    let (tag, segs) = d.next_frame().unwrap().unwrap();
    assert_eq!(segs.len(), 3);
    assert_eq!(
        Frame::decode(tag, &segs).unwrap(),
        Frame::Message(m.clone())
    );

    m.front = Bytes::new();
    m.middle = Bytes::new();
    let wire = concat(&m.to_wire().unwrap());
    assert_eq!(wire[1], 1);
    assert_eq!(wire.len(), 32 + 41 + 4);
    let mut d = FrameDecoder::new();
    d.feed(Bytes::from(wire));
    let (_, segs) = d.next_frame().unwrap().unwrap();
    assert_eq!(MessageFrame::from_segments(&segs).unwrap(), m);
}

fn all_frames() -> Vec<Frame> {
    let addrs = EntityAddrVec::new(vec![addr_v4(), addr_v6()]);
    vec![
        Frame::Hello(Hello {
            entity_type: EntityType::Mon,
            peer_addr: addr_v4(),
        }),
        Frame::AuthRequest(AuthRequest {
            method: AUTH_NONE,
            preferred_modes: vec![1, 2],
            auth_payload: Bytes::from_static(b"\x01\x02\x03"),
        }),
        Frame::AuthBadMethod(AuthBadMethod {
            method: 2,
            result: -95,
            allowed_methods: vec![1],
            allowed_modes: vec![1, 2],
        }),
        Frame::AuthReplyMore(AuthReplyMore {
            auth_payload: Bytes::from_static(b"more"),
        }),
        Frame::AuthRequestMore(AuthRequestMore {
            auth_payload: Bytes::from_static(b"req"),
        }),
        Frame::AuthDone(AuthDone {
            global_id: 4123,
            con_mode: 1,
            auth_payload: Bytes::new(),
        }),
        Frame::AuthSignature(AuthSignature { signature: [7; 32] }),
        Frame::ClientIdent(ClientIdent {
            addrs: addrs.clone(),
            target_addr: addr_v4(),
            gid: -1,
            global_seq: 1,
            supported_features: 0x3f01_cfbf_fffd_ffff,
            required_features: 0x0000_0800_0200_0000,
            flags: 1,
            cookie: 0x1122_3344_5566_7788,
        }),
        Frame::ServerIdent(ServerIdent {
            addrs: addrs.clone(),
            gid: 0,
            global_seq: 2,
            supported_features: u64::MAX,
            required_features: 3,
            flags: 0,
            cookie: 42,
        }),
        Frame::IdentMissingFeatures(IdentMissingFeatures { features: 1 << 59 }),
        Frame::SessionReconnect(SessionReconnect {
            addrs,
            client_cookie: 1,
            server_cookie: 2,
            global_seq: 3,
            connect_seq: 4,
            msg_seq: 5,
        }),
        Frame::SessionReset(SessionReset { full: true }),
        Frame::SessionRetry(SessionRetry { connect_seq: 9 }),
        Frame::SessionRetryGlobal(SessionRetryGlobal { global_seq: 10 }),
        Frame::SessionReconnectOk(SessionReconnectOk { msg_seq: 11 }),
        Frame::Wait(Wait {}),
        Frame::Message(sample_message()),
        Frame::Keepalive2(Keepalive2 {
            timestamp: UTime::new(1, 2),
        }),
        Frame::Keepalive2Ack(Keepalive2Ack {
            timestamp: UTime::new(3, 4),
        }),
        Frame::Ack(Ack { seq: 12 }),
        Frame::CompressionRequest(CompressionRequest {
            is_compress: true,
            preferred_methods: vec![1, 4],
        }),
        Frame::CompressionDone(CompressionDone {
            is_compress: false,
            method: 0,
        }),
    ]
}

const AUTH_NONE: u32 = frames::AUTH_METHOD_NONE;

#[test]
fn tags_have_ceph_values() {
    for (i, t) in Tag::ALL.iter().enumerate() {
        assert_eq!(*t as u8 as usize, i + 1);
        assert_eq!(Tag::try_from(i as u8 + 1).unwrap(), *t);
    }
    assert_eq!(Tag::Message as u8, 17);
    assert_eq!(Tag::CompressionDone as u8, 22);
    assert_eq!(Tag::try_from(0), Err(WireError::BadTag(0)));
    assert_eq!(Tag::try_from(23), Err(WireError::BadTag(23)));
    // every tag is covered by all_frames()
    let tags: Vec<Tag> = all_frames().iter().map(Frame::tag).collect();
    assert_eq!(tags, Tag::ALL.to_vec());
}

#[test]
fn payload_layouts_follow_frames_v2() {
    let p = AuthRequest {
        method: 1,
        preferred_modes: vec![2, 1],
        auth_payload: Bytes::from_static(b"xy"),
    }
    .to_payload();
    assert_eq!(
        &p[..],
        &[1, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, b'x', b'y']
    );

    let p = AuthDone {
        global_id: 5,
        con_mode: 1,
        auth_payload: Bytes::new(),
    }
    .to_payload();
    assert_eq!(&p[..], &[5, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);

    let p = Hello {
        entity_type: EntityType::Client,
        peer_addr: addr_v4(),
    }
    .to_payload();
    assert_eq!(p[0], 8);
    assert_eq!(&p[1..], &encode(&addr_v4())[..]);

    let p = SessionReset { full: true }.to_payload();
    assert_eq!(&p[..], &[1]);

    let p = AuthSignature { signature: [9; 32] }.to_payload();
    assert_eq!(p.len(), 32);

    let ci = ClientIdent {
        addrs: addr_v4().into(),
        gid: -1,
        ..Default::default()
    };
    let p = ci.to_payload();
    assert_eq!(p.len(), 5 + 35 + 47 + 8 * 6);
    assert_eq!(&p[87..95], &(-1i64).to_le_bytes());

    let p = Keepalive2 {
        timestamp: UTime::new(0x0102_0304, 5),
    }
    .to_payload();
    assert_eq!(&p[..], &[4, 3, 2, 1, 5, 0, 0, 0]);
}

#[test]
fn every_frame_round_trips_through_the_wire() {
    for f in all_frames() {
        let segs = f.to_segments();
        assert_eq!(
            Frame::decode(f.tag(), &segs).unwrap(),
            f,
            "direct {:?}",
            f.tag()
        );

        let mut d = FrameDecoder::new();
        for p in f.to_wire().unwrap() {
            d.feed(p);
        }
        let (tag, segs) = d.next_frame().unwrap().unwrap();
        assert_eq!(tag, f.tag());
        assert_eq!(Frame::decode(tag, &segs).unwrap(), f, "wire {:?}", f.tag());
        assert!(d.next_frame().unwrap().is_none());
        assert_eq!(d.buffered(), 0);
    }
}

#[test]
fn control_frame_tag_and_segment_checks() {
    let p = Ack { seq: 1 }.to_payload();
    assert!(matches!(
        Ack::from_frame(Tag::Wait, std::slice::from_ref(&p)),
        Err(WireError::UnexpectedTag {
            expected: 20,
            got: 16
        })
    ));
    assert!(matches!(
        Ack::from_frame(Tag::Ack, &[p.clone(), p.clone()]),
        Err(WireError::BadEncoding { .. })
    ));
    assert!(matches!(
        Ack::from_payload(&p.slice(..5)),
        Err(WireError::Truncated { .. })
    ));
    assert!(matches!(
        MessageFrame::from_segments(&[Bytes::from_static(b"short")]),
        Err(WireError::BadEncoding {
            what: "ceph_msg_header2",
            ..
        })
    ));
}

fn stream() -> (Vec<u8>, Vec<Frame>) {
    let frames = all_frames();
    let mut wire = Banner::default().encode().to_vec();
    for f in &frames {
        wire.extend(concat(&f.to_wire().unwrap()));
    }
    (wire, frames)
}

fn drain(d: &mut FrameDecoder, out: &mut Vec<Frame>) {
    while let Some((tag, segs)) = d.next_frame().unwrap() {
        out.push(Frame::decode(tag, &segs).unwrap());
    }
}

#[test]
fn decoder_handles_every_split_point() {
    let (wire, frames) = stream();
    let wire = Bytes::from(wire);
    for split in 0..=wire.len() {
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        d.feed(wire.slice(..split));
        let banner = d.next_banner().unwrap();
        if split >= 26 {
            assert_eq!(banner, Some(Banner::default()));
            drain(&mut d, &mut got);
        }
        d.feed(wire.slice(split..));
        if split < 26 {
            assert_eq!(d.next_banner().unwrap(), Some(Banner::default()));
        }
        drain(&mut d, &mut got);
        assert_eq!(got, frames, "split at {split}");
        assert_eq!(d.buffered(), 0);
        assert_eq!(d.bytes_needed(), PREAMBLE_LEN);
    }
}

#[test]
fn decoder_handles_byte_by_byte_and_three_way_splits() {
    let (wire, frames) = stream();
    let wire = Bytes::from(wire);
    let mut d = FrameDecoder::new();
    let mut got = Vec::new();
    let mut banner = None;
    for i in 0..wire.len() {
        d.feed(wire.slice(i..i + 1));
        if banner.is_none() {
            banner = d.next_banner().unwrap();
        } else {
            drain(&mut d, &mut got);
        }
    }
    assert_eq!(got, frames);

    let body = wire.slice(26..);
    let n = body.len();
    for a in (0..n).step_by(37) {
        for b in (a..n).step_by(53) {
            let mut d = FrameDecoder::new();
            let mut got = Vec::new();
            for part in [body.slice(..a), body.slice(a..b), body.slice(b..)] {
                d.feed(part);
                drain(&mut d, &mut got);
            }
            assert_eq!(got, frames, "splits {a} {b}");
        }
    }
}

// ---------------------------------------------------------------- decoder errors

/// A preamble with a valid crc from raw fields.
fn raw_preamble(tag: u8, n: u8, lens: [u32; 4], flags: u8) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[0] = tag;
    b[1] = n;
    for (i, l) in lens.iter().enumerate() {
        b[2 + 6 * i..6 + 6 * i].copy_from_slice(&l.to_le_bytes());
        b[6 + 6 * i..8 + 6 * i].copy_from_slice(&8u16.to_le_bytes());
    }
    b[26] = flags;
    let crc = crc32c_model(0, &b[..28]);
    b[28..].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode_err(bytes: &[u8]) -> WireError {
    let mut d = FrameDecoder::new();
    d.feed(Bytes::copy_from_slice(bytes));
    let e = d.next_frame().unwrap_err();
    // the decoder stays failed
    assert!(matches!(d.next_frame(), Err(WireError::Poisoned(_))));
    e
}

#[test]
fn truncated_frames_wait_for_more() {
    let wire = concat(&sample_message().to_wire().unwrap());
    for cut in 0..wire.len() {
        let mut d = FrameDecoder::new();
        d.feed(Bytes::copy_from_slice(&wire[..cut]));
        assert_eq!(d.next_frame().unwrap(), None, "cut {cut}");
        assert!(d.bytes_needed() > 0);
    }
}

#[test]
fn bad_crcs_are_typed_errors() {
    let wire = concat(&sample_message().to_wire().unwrap());
    let mut w = wire.clone();
    w[3] ^= 1;
    assert!(matches!(
        decode_err(&w),
        WireError::BadCrc {
            what: "preamble",
            ..
        }
    ));
    let mut w = wire.clone();
    w[40] ^= 0x80;
    assert!(matches!(
        decode_err(&w),
        WireError::BadCrc {
            what: "segment 0",
            ..
        }
    ));
    let mut w = wire.clone();
    w[32 + 45 + 2] ^= 1; // in front
    assert!(matches!(
        decode_err(&w),
        WireError::BadCrc {
            what: "segment 1",
            ..
        }
    ));
    let mut w = wire.clone();
    let n = w.len();
    w[n - 1] ^= 1; // data crc in the epilogue
    match decode_err(&w) {
        WireError::BadCrc {
            what: "segment 3",
            expected,
            got,
        } => assert_ne!(expected, got),
        e => panic!("{e:?}"),
    }
}

#[test]
fn oversized_segment_is_rejected_from_the_preamble_alone() {
    let p = raw_preamble(17, 4, [41, 0, 0, u32::MAX], 0);
    let mut d = FrameDecoder::new();
    d.feed(Bytes::copy_from_slice(&p)); // nothing else was sent
    assert_eq!(
        d.next_frame(),
        Err(WireError::SegmentTooLarge {
            index: 3,
            len: u32::MAX as u64,
            max: 64 << 20
        })
    );

    let mut d = FrameDecoder::with_max_segment_len(1000);
    d.feed(Bytes::copy_from_slice(&raw_preamble(
        20,
        1,
        [1001, 0, 0, 0],
        0,
    )));
    assert!(matches!(
        d.next_frame(),
        Err(WireError::SegmentTooLarge {
            index: 0,
            len: 1001,
            ..
        })
    ));
}

/// A control frame may announce at most `MAX_CONTROL_FRAME_LEN` bytes over its segments,
/// refused from the preamble alone; a MESSAGE frame only the segment limit.
#[test]
fn oversized_control_frame_is_rejected_from_the_preamble_alone() {
    let max = frame::MAX_CONTROL_FRAME_LEN;
    // HELLO (1): one byte over, spread over two segments.
    let mut d = FrameDecoder::new();
    d.feed(Bytes::copy_from_slice(&raw_preamble(
        1,
        2,
        [max, 1, 0, 0],
        0,
    )));
    assert_eq!(
        d.next_frame(),
        Err(WireError::ControlFrameTooLarge {
            tag: Tag::Hello,
            len: u64::from(max) + 1,
            max: u64::from(max),
        })
    );
    // At the bound it waits for the bytes.
    let mut d = FrameDecoder::new();
    d.feed(Bytes::copy_from_slice(&raw_preamble(
        1,
        1,
        [max, 0, 0, 0],
        0,
    )));
    assert_eq!(d.next_frame(), Ok(None));
    // MESSAGE (17) of 16 MiB: within the segment limit, so it waits too.
    let mut d = FrameDecoder::new();
    d.feed(Bytes::copy_from_slice(&raw_preamble(
        17,
        4,
        [41, 0, 0, 16 << 20],
        0,
    )));
    assert_eq!(d.next_frame(), Ok(None));
}

#[test]
fn bad_preamble_fields_are_typed_errors() {
    assert_eq!(
        decode_err(&raw_preamble(0, 1, [0; 4], 0)),
        WireError::BadTag(0)
    );
    assert_eq!(
        decode_err(&raw_preamble(99, 1, [0; 4], 0)),
        WireError::BadTag(99)
    );
    assert_eq!(
        decode_err(&raw_preamble(17, 5, [1; 4], 0)),
        WireError::TooManySegments { count: 5 }
    );
    assert_eq!(
        decode_err(&raw_preamble(20, 0, [0; 4], 0)),
        WireError::TooManySegments { count: 0 }
    );
    assert_eq!(
        decode_err(&raw_preamble(17, 3, [41, 5, 0, 0], 0)),
        WireError::EmptyLastSegment { count: 3 }
    );
    assert_eq!(
        decode_err(&raw_preamble(20, 1, [8, 0, 0, 0], 1)),
        WireError::Unsupported("compressed frame")
    );
    assert!(matches!(
        FrameAssembler::encode(Tag::Ack, &[]),
        Err(WireError::TooManySegments { count: 0 })
    ));
    assert!(matches!(
        FrameAssembler::encode(Tag::Ack, &vec![Bytes::from_static(b"x"); 5]),
        Err(WireError::TooManySegments { count: 5 })
    ));
}

#[test]
fn late_status_is_checked_and_aborted_frames_are_dropped() {
    let msg = concat(&sample_message().to_wire().unwrap());
    let ack = concat(&Ack { seq: 3 }.to_wire().unwrap());
    let n = msg.len();

    let mut aborted = msg.clone();
    aborted[n - EPILOGUE_LEN] = LATE_STATUS_ABORTED;
    let mut d = FrameDecoder::new();
    d.feed(Bytes::from(aborted));
    d.feed(Bytes::from(ack));
    let (tag, segs) = d.next_frame().unwrap().unwrap();
    assert_eq!(
        Frame::decode(tag, &segs).unwrap(),
        Frame::Ack(Ack { seq: 3 })
    );
    assert_eq!(d.aborted_frames(), 1);

    let mut bad = msg;
    bad[n - EPILOGUE_LEN] = 0x05;
    assert_eq!(decode_err(&bad), WireError::BadLateStatus(0x05));
}

#[test]
fn next_banner_rejects_garbage() {
    let mut d = FrameDecoder::new();
    d.feed(Bytes::from_static(b"GET / HTTP/1.1\r\n"));
    assert!(matches!(d.next_banner(), Err(WireError::BadBanner { .. })));
    let mut d = FrameDecoder::new();
    d.feed(Bytes::from_static(b"ceph v2\n"));
    assert_eq!(d.next_banner().unwrap(), None);
    assert_eq!(BANNER_PREFIX_LEN, 10);
}

/// Mutated streams and random chunking: errors are fine, panics are not.
#[test]
fn mutated_input_never_panics() {
    let (wire, _) = stream();
    let body = &wire[26..];
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for _ in 0..2000 {
        let mut w = body.to_vec();
        for _ in 0..1 + next() % 4 {
            let i = (next() as usize) % w.len();
            w[i] = next() as u8;
        }
        let w = Bytes::from(w);
        let mut d = FrameDecoder::with_max_segment_len(1 << 16);
        let mut at = 0;
        'outer: while at < w.len() {
            let k = 1 + (next() as usize) % 300;
            let end = (at + k).min(w.len());
            d.feed(w.slice(at..end));
            at = end;
            loop {
                match d.next_frame() {
                    Ok(Some((tag, segs))) => {
                        let _ = Frame::decode(tag, &segs);
                    }
                    Ok(None) => break,
                    Err(_) => break 'outer,
                }
            }
        }
    }
    // arbitrary payloads for every tag
    for t in Tag::ALL {
        for len in 0..64 {
            let p: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = Frame::decode(t, &[Bytes::from(p)]);
        }
    }
}
