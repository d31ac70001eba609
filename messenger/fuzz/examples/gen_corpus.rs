//! Writes the seed corpora `corpus/<target>/seed-*` from the crate's own encoders:
//! valid handshakes both ways, session traffic, every frame type and a few address
//! encodings. Run from `messenger/fuzz`: `cargo run --example gen_corpus`.

use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use corewire_messenger::wire::frames::{AUTH_METHOD_NONE, CON_MODE_CRC, MSG_CONNECT_LOSSY};
use corewire_messenger::wire::*;
use corewire_messenger_fuzz::{Input, CLIENT, FIX_CRCS};

fn addr(s: &str, nonce: u32) -> EntityAddr {
    EntityAddr::msgr2(s.parse::<SocketAddr>().unwrap(), nonce)
}

fn wire<F: ControlFrame>(f: &F) -> Vec<u8> {
    raw(F::TAG, f.to_payload())
}

fn raw(tag: Tag, payload: Bytes) -> Vec<u8> {
    FrameAssembler::encode_contiguous(tag, &[payload])
        .unwrap()
        .to_vec()
}

fn message(seq: u64, front: &[u8], data: &[u8]) -> Vec<u8> {
    let m = MessageFrame {
        header: MsgHeader2 {
            seq,
            tid: seq,
            msg_type: 0x41,
            priority: 127,
            version: 1,
            ack_seq: seq.saturating_sub(1),
            compat_version: 1,
            ..Default::default()
        },
        front: Bytes::copy_from_slice(front),
        middle: Bytes::new(),
        data: Bytes::copy_from_slice(data),
    };
    FrameAssembler::encode_contiguous(Tag::Message, &m.to_segments())
        .unwrap()
        .to_vec()
}

/// The AUTH_REQUEST auth-none payload to a monitor (`AuthNone::request_payload`).
fn auth_none_payload() -> Bytes {
    let mut e = Encoder::new();
    e.put_u8(10).put_u32(8).put_str("admin").put_u64(0);
    e.finish()
}

/// What a client sends, up to SIGNATURE.
fn client_prefix() -> Vec<u8> {
    let mut s = Banner::default().encode().to_vec();
    s.extend(wire(&Hello {
        entity_type: EntityType::Client,
        peer_addr: addr("127.0.0.1:3300", 0),
    }));
    s.extend(wire(&AuthRequest {
        method: AUTH_METHOD_NONE,
        preferred_modes: vec![CON_MODE_CRC],
        auth_payload: auth_none_payload(),
    }));
    s.extend(wire(&AuthSignature::default()));
    s
}

fn client_ident() -> ClientIdent {
    ClientIdent {
        addrs: addr("127.0.0.1:41000", 1234).into(),
        target_addr: addr("127.0.0.1:3300", 0),
        gid: 4100,
        global_seq: 1,
        supported_features: 0x3f01_cfbf_fffd_ffff,
        required_features: 0,
        flags: MSG_CONNECT_LOSSY,
        cookie: 7,
    }
}

/// What a server sends, up to SIGNATURE.
fn server_prefix() -> Vec<u8> {
    let mut s = Banner::default().encode().to_vec();
    s.extend(wire(&Hello {
        entity_type: EntityType::Mon,
        peer_addr: addr("127.0.0.1:41000", 0),
    }));
    s
}

fn server_auth_ok() -> Vec<u8> {
    let mut s = server_prefix();
    s.extend(wire(&AuthDone {
        global_id: 4242,
        con_mode: CON_MODE_CRC,
        auth_payload: Bytes::new(),
    }));
    s.extend(wire(&AuthSignature::default()));
    s
}

fn server_ident() -> ServerIdent {
    ServerIdent {
        addrs: addr("127.0.0.1:3300", 0).into(),
        gid: 0,
        global_seq: 3,
        supported_features: 0x3f01_cfbf_fffd_ffff,
        required_features: 0,
        flags: MSG_CONNECT_LOSSY,
        cookie: 9,
    }
}

/// One of every frame type.
fn all_frames() -> Vec<u8> {
    let ts = UTime::new(1_700_000_000, 5);
    let frames = vec![
        Frame::Hello(Hello {
            entity_type: EntityType::Osd,
            peer_addr: addr("[fe80::1%2]:6800", 77),
        }),
        Frame::AuthRequest(AuthRequest::default()),
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
            auth_payload: Bytes::from_static(b"more"),
        }),
        Frame::AuthDone(AuthDone::default()),
        Frame::AuthSignature(AuthSignature { signature: [7; 32] }),
        Frame::ClientIdent(client_ident()),
        Frame::ServerIdent(server_ident()),
        Frame::IdentMissingFeatures(IdentMissingFeatures { features: 1 << 58 }),
        Frame::SessionReconnect(SessionReconnect {
            addrs: EntityAddrVec::new(vec![addr("10.0.0.1:6800", 1), EntityAddr::default()]),
            client_cookie: 1,
            server_cookie: 2,
            global_seq: 3,
            connect_seq: 4,
            msg_seq: 5,
        }),
        Frame::SessionReset(SessionReset { full: true }),
        Frame::SessionRetry(SessionRetry { connect_seq: 2 }),
        Frame::SessionRetryGlobal(SessionRetryGlobal { global_seq: 9 }),
        Frame::SessionReconnectOk(SessionReconnectOk { msg_seq: 4 }),
        Frame::Wait(Wait {}),
        Frame::Keepalive2(Keepalive2 { timestamp: ts }),
        Frame::Keepalive2Ack(Keepalive2Ack { timestamp: ts }),
        Frame::Ack(Ack { seq: 12 }),
        Frame::CompressionRequest(CompressionRequest {
            is_compress: true,
            preferred_methods: vec![1, 2],
        }),
        Frame::CompressionDone(CompressionDone {
            is_compress: false,
            method: 0,
        }),
    ];
    let mut s = Banner::default().encode().to_vec();
    for f in &frames {
        s.extend_from_slice(&FrameAssembler::encode_contiguous(f.tag(), &f.to_segments()).unwrap());
    }
    s.extend(message(1, b"front", b"data"));
    s
}

/// HELLOs and a SESSION_RECONNECT with the other address encodings Ceph accepts.
fn address_encodings() -> Vec<u8> {
    let mut s = Banner::default().encode().to_vec();
    // Legacy entity_addr_t (marker 0): type, nonce, sockaddr_storage with big-endian family.
    let mut e = Encoder::new();
    e.put_u8(EntityType::Client as u8)
        .put_u8(0)
        .put_raw(&[0; 3])
        .put_u32(5);
    let mut ss = [0u8; 128];
    ss[..2].copy_from_slice(&2u16.to_be_bytes());
    ss[2..4].copy_from_slice(&6789u16.to_be_bytes());
    ss[4..8].copy_from_slice(&[192, 168, 0, 1]);
    e.put_raw(&ss);
    s.extend(raw(Tag::Hello, e.finish()));
    // entity_addrvec_t with marker 1 (a single address) in SESSION_RECONNECT.
    let mut e = Encoder::new();
    e.put_u8(1);
    let a = addr("[::1]:3300", 3);
    let mut one = Encoder::new();
    one.put(&a);
    e.put_raw(&one.as_slice()[1..]);
    e.put_u64(1).put_u64(2).put_u64(3).put_u64(4).put_u64(5);
    s.extend(raw(Tag::SessionReconnect, e.finish()));
    // Blank address (AF_UNSPEC) with unknown address type.
    let mut e = Encoder::new();
    e.put_u8(EntityType::Mgr as u8).put(&EntityAddr {
        ty: EntityAddrType::Other(9),
        nonce: 1,
        addr: None,
    });
    s.extend(raw(Tag::Hello, e.finish()));
    s
}

/// Checks that a seed is a valid stream: a banner, then frames that all decode, to the end.
/// Returns the number of frames.
fn check(data: &[u8]) -> usize {
    let input = Input::parse(data);
    let mut dec = FrameDecoder::new();
    dec.feed(input.stream.clone());
    dec.next_banner().unwrap().expect("a whole banner");
    let mut n = 0;
    while let Some((tag, segs)) = dec.next_frame().unwrap() {
        Frame::decode(tag, &segs).unwrap();
        n += 1;
    }
    assert_eq!(dec.buffered(), 0, "trailing bytes");
    n + dec.aborted_frames() as usize
}

fn write(dir: &Path, name: &str, flags: u8, chunks: [u8; 3], stream: &[u8]) {
    let data = Input::encode(flags, chunks, stream);
    let frames = check(&data);
    let path = dir.join(format!("seed-{name}"));
    std::fs::write(&path, &data).unwrap();
    println!("{} ({} bytes, {frames} frames)", path.display(), data.len());
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let fd = root.join("frame_decoder");
    let hs = root.join("handshake");
    std::fs::create_dir_all(&fd).unwrap();
    std::fs::create_dir_all(&hs).unwrap();

    // handshake, server side (the stream is a client's).
    let mut s = client_prefix();
    s.extend(wire(&client_ident()));
    write(&hs, "server-ident", 0, [0; 3], &s);
    write(&hs, "server-ident-chunked", FIX_CRCS, [5, 1, 64], &s);
    let mut s = client_prefix();
    s.extend(wire(&SessionReconnect {
        addrs: addr("127.0.0.1:41000", 1234).into(),
        client_cookie: 7,
        server_cookie: 9,
        global_seq: 2,
        connect_seq: 1,
        msg_seq: 10,
    }));
    write(&hs, "server-reconnect", FIX_CRCS, [0; 3], &s);

    // handshake, client side (the stream is a server's).
    let mut s = server_auth_ok();
    s.extend(wire(&server_ident()));
    write(&hs, "client-ident", CLIENT | FIX_CRCS, [0; 3], &s);
    let mut s = server_prefix();
    s.extend(wire(&AuthBadMethod {
        method: AUTH_METHOD_NONE,
        result: -95,
        allowed_methods: vec![2],
        allowed_modes: vec![1, 2],
    }));
    write(&hs, "client-bad-method", CLIENT | FIX_CRCS, [0; 3], &s);
    let mut s = server_auth_ok();
    s.extend(wire(&SessionRetryGlobal { global_seq: 40 }));
    write(&hs, "client-retry-global", CLIENT | FIX_CRCS, [9, 0, 0], &s);

    // frame_decoder: whole sessions, every frame type, address encodings.
    let mut s = client_prefix();
    s.extend(wire(&client_ident()));
    s.extend(message(1, b"front", b"some data"));
    s.extend(wire(&Keepalive2 {
        timestamp: UTime::new(1, 2),
    }));
    s.extend(wire(&Ack { seq: 1 }));
    write(&fd, "client-session", 0, [0; 3], &s);
    let mut s = server_auth_ok();
    s.extend(wire(&server_ident()));
    s.extend(message(1, b"reply", b""));
    let mut aborted = message(2, b"aborted", b"data");
    let n = aborted.len();
    aborted[n - 13] = 0x01; // late_status: FRAME_LATE_STATUS_ABORTED
    s.extend(aborted);
    s.extend(wire(&Keepalive2Ack {
        timestamp: UTime::new(1, 2),
    }));
    write(&fd, "server-session-chunked", FIX_CRCS, [7, 1, 33], &s);
    write(&fd, "all-frames", FIX_CRCS, [0; 3], &all_frames());
    write(
        &fd,
        "address-encodings",
        FIX_CRCS,
        [0; 3],
        &address_encodings(),
    );
}
