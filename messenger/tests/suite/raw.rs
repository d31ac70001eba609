//! A raw msgr2.1 peer for the suite: frames written by hand (a client that never reads, or
//! one that reads the server's answers), for inputs the messenger itself never sends.

use std::time::Duration;

use bytes::Bytes;
use corewire_messenger::messenger::DEFAULT_FEATURES;
use corewire_messenger::wire::frames::{AUTH_METHOD_NONE, CON_MODE_CRC};
use corewire_messenger::wire::{
    AuthRequest, AuthSignature, Banner, ClientIdent, ControlFrame, EntityAddr, EntityAddrType,
    EntityAddrVec, EntityType, Frame, FrameDecoder, Hello, MessageFrame, MsgHeader2,
    SessionReconnect,
};
use corewire_messenger::Messenger;
use corewire_runtime::{timer, Runtime};
use corewire_transport::{
    Address, AnyEndpoint, AnyTransport, Endpoint, EndpointConfig, Transport, TransportKind,
};

use super::{limit, Harness};

/// The `entity_addr_t` messenger `m` advertises (as the messenger's handshake builds it).
pub fn entity_addr_of(m: &Messenger) -> EntityAddr {
    let addr = m.my_addr().expect("bound");
    match addr.socket_addr() {
        Some(sa) => EntityAddr::new(EntityAddrType::Msgr2, sa, m.nonce()),
        None => EntityAddr {
            ty: EntityAddrType::Msgr2,
            nonce: m.nonce(),
            addr: None,
        },
    }
}

/// An `entity_addr_t` that names no messenger: a blank address with `nonce`.
pub fn blank_addr(nonce: u32) -> EntityAddr {
    EntityAddr {
        ty: EntityAddrType::Msgr2,
        nonce,
        addr: None,
    }
}

/// Encode one control frame.
pub fn frame<F: ControlFrame>(f: &F) -> Vec<Bytes> {
    f.to_wire().expect("encodes")
}

/// A client's side of the handshake up to (not including) CLIENT_IDENT / SESSION_RECONNECT,
/// as an OSD with auth none: banner, HELLO, AUTH_REQUEST, AUTH_SIGNATURE. The server's
/// frames need not be read first: it reads ours in order.
pub fn client_preamble() -> Vec<Bytes> {
    let mut out = vec![Banner::default().encode()];
    out.extend(frame(&Hello {
        entity_type: EntityType::Osd,
        peer_addr: EntityAddr::default(),
    }));
    out.extend(frame(&AuthRequest {
        method: AUTH_METHOD_NONE,
        preferred_modes: vec![CON_MODE_CRC],
        auth_payload: Bytes::new(),
    }));
    out.extend(frame(&AuthSignature { signature: [0; 32] }));
    out
}

/// A client's whole handshake as an OSD at `addr`: [`client_preamble`], then a first
/// CLIENT_IDENT (global seq 1) with `cookie`.
pub fn client_hello(addr: EntityAddr, cookie: u64) -> Vec<Bytes> {
    let mut out = client_preamble();
    out.extend(frame(&client_ident(addr, 1, cookie)));
    out
}

/// MESSAGE `seq` of a raw session (type `msg_type`, acking nothing), as a messenger frames it.
pub fn message(seq: u64, tid: u64, msg_type: u16, front: Bytes, data: Bytes) -> MessageFrame {
    MessageFrame {
        header: MsgHeader2 {
            seq,
            tid,
            msg_type,
            priority: 127,
            version: 1,
            data_pre_padding_len: 0,
            data_off: 0,
            ack_seq: 0,
            flags: 0,
            compat_version: 1,
            reserved: 0,
        },
        front,
        middle: Bytes::new(),
        data,
    }
}

/// CLIENT_IDENT of a lossless OSD session from `addr`.
pub fn client_ident(addr: EntityAddr, global_seq: u64, cookie: u64) -> ClientIdent {
    ClientIdent {
        addrs: EntityAddrVec::new(vec![addr]),
        target_addr: EntityAddr::default(),
        gid: 99,
        global_seq,
        supported_features: DEFAULT_FEATURES,
        required_features: 0,
        flags: 0,
        cookie,
    }
}

/// SESSION_RECONNECT from `addr`.
pub fn reconnect(
    addr: EntityAddr,
    cookies: (u64, u64),
    global_seq: u64,
    msg_seq: u64,
) -> SessionReconnect {
    SessionReconnect {
        addrs: EntityAddrVec::new(vec![addr]),
        client_cookie: cookies.0,
        server_cookie: cookies.1,
        global_seq,
        connect_seq: 0,
        msg_seq,
    }
}

/// What a raw client saw after its frames: the server's frames past the handshake, then
/// whether the server closed the connection (rather than the wait running out).
#[derive(Debug)]
pub struct Seen {
    pub frames: Vec<Frame>,
    pub closed: bool,
}

/// Reads a peer's banner, then its frames, across calls.
#[derive(Default)]
pub struct Reader {
    dec: FrameDecoder,
    banner: bool,
}

impl Reader {
    /// Read frames until the peer closes, `stop` holds for a frame past the handshake
    /// (HELLO, AUTH_DONE and AUTH_SIGNATURE are skipped), or `limit()` passes.
    pub async fn read(&mut self, ep: &AnyEndpoint, stop: impl Fn(&Frame) -> bool) -> Seen {
        let mut seen = Seen {
            frames: Vec::new(),
            closed: false,
        };
        let r = timer::timeout(limit(), async {
            loop {
                if !self.banner {
                    match self.dec.next_banner() {
                        Ok(Some(_)) => self.banner = true,
                        Ok(None) => {}
                        Err(_) => return true,
                    }
                }
                if self.banner {
                    loop {
                        match self.dec.next_frame() {
                            Ok(Some((tag, segs))) => {
                                let f =
                                    Frame::decode(tag, &segs).expect("the peer's frames decode");
                                let handshake = matches!(
                                    f,
                                    Frame::Hello(_) | Frame::AuthDone(_) | Frame::AuthSignature(_)
                                );
                                if !handshake {
                                    let done = stop(&f);
                                    seen.frames.push(f);
                                    if done {
                                        return false;
                                    }
                                }
                            }
                            Ok(None) => break,
                            Err(_) => return true,
                        }
                    }
                }
                match ep.recv().await {
                    Ok(chunk) => self.dec.feed(chunk),
                    Err(_) => return true,
                }
            }
        })
        .await;
        seen.closed = r.unwrap_or(false);
        seen
    }
}

/// Connect a raw client to `addr` (on core 0), write `bytes` (in chunks of at most 4096
/// buffers), then read the server's answers until `stop` or the server closes; the
/// connection is then dropped (the peer vanishes).
pub fn exchange<H: Harness>(
    rt: &Runtime,
    h: &H,
    addr: &Address,
    bytes: Vec<Bytes>,
    stop: fn(&Frame) -> bool,
) -> Seen {
    let (kind, addr) = (h.kind(), addr.clone());
    rt.block_on(rt.handle().spawn_on(0, move || async move {
        let t = AnyTransport::for_kind(kind, EndpointConfig::default()).unwrap();
        let ep = t.connect(&addr).await.unwrap();
        let mut bytes = bytes;
        while !bytes.is_empty() {
            let rest = bytes.split_off(bytes.len().min(4096));
            if ep.send(bytes).await.is_err() {
                break;
            }
            bytes = rest;
        }
        let seen = Reader::default().read(&ep, stop).await;
        ep.abort();
        seen
    }))
    .unwrap()
}

/// Connects over `kind`, sends `hello` (a client's banner and handshake frames) and waits for
/// SERVER_IDENT, as a msgr2 client does before it sends messages: the server may move the
/// connection to its owning core meanwhile, which over RDMA needs a quiet peer (a peer that
/// pipelines more than the old queue pair's receive queue gets its connection reset).
pub async fn connect_identified(
    kind: TransportKind,
    addr: &Address,
    hello: Vec<Bytes>,
) -> AnyEndpoint {
    let t = AnyTransport::for_kind(kind, EndpointConfig::default()).unwrap();
    let ep = t.connect(addr).await.unwrap();
    ep.send(hello).await.unwrap();
    let seen = Reader::default()
        .read(&ep, |f| matches!(f, Frame::ServerIdent(_)))
        .await;
    assert!(
        matches!(seen.frames.last(), Some(Frame::ServerIdent(_))),
        "no SERVER_IDENT: {:?}",
        seen.frames
    );
    ep
}

/// Stop reading at the first frame past the handshake.
pub fn first(_: &Frame) -> bool {
    true
}

/// Wait (plain thread, polling every millisecond) until `f` holds, at most `limit()`.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit();
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}
