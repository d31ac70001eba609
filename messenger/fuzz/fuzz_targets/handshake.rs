//! Fuzzes the decoding path of the msgr2.1 handshake (`protocol::handshake`) with arbitrary
//! peer bytes, on the server side (the peer is a client) or, with the CLIENT flag, on the
//! client side (the peer is a server).
//!
//! The handshake itself is async and tied to a transport endpoint, so this target replays
//! its decoding steps over the public wire API, in the order and with the checks of
//! `server_accept` / `client`: the banner (`FrameDecoder::next_banner`, cross-checked with
//! `Banner::decode`, then `Banner::check_peer` against `Banner::default()`), then each
//! frame the handshake waits for, decoded with the typed `ControlFrame::from_frame` of the
//! frame(s) expected at that step and cross-checked with `Frame::decode`. A frame with an
//! unexpected tag, a decode error or a failed check ends the handshake, as it does in the
//! messenger. Nothing may panic.
//!
//! Server side: HELLO, AUTH_REQUEST (method none with crc mode, else AUTH_BAD_METHOD is
//! sent), AUTH_SIGNATURE (zero digest), then CLIENT_IDENT or SESSION_RECONNECT.
//! Client side: HELLO, AUTH_DONE (crc mode) or AUTH_BAD_METHOD, AUTH_SIGNATURE, then
//! SERVER_IDENT, IDENT_MISSING_FEATURES, SESSION_RECONNECT_OK, SESSION_RETRY,
//! SESSION_RETRY_GLOBAL, SESSION_RESET or WAIT.
//!
//! Input layout: see `corewire_messenger_fuzz` (flags, chunk sizes, stream).
#![no_main]

use bytes::Bytes;
use corewire_messenger::wire::frames::{AUTH_METHOD_NONE, CON_MODE_CRC};
use corewire_messenger::wire::{
    AuthBadMethod, AuthDone, AuthRequest, AuthSignature, Banner, ClientIdent, ControlFrame,
    Decoder, Frame, FrameDecoder, Hello, IdentMissingFeatures, ServerIdent, Tag, WireError,
};
use corewire_messenger_fuzz::{Input, CLIENT};
use libfuzzer_sys::fuzz_target;

/// `-EOPNOTSUPP`, the result the server puts in AUTH_BAD_METHOD.
const EOPNOTSUPP: i32 = -95;

/// The handshake's view of the peer: a `FrameDecoder` (the messenger's default limits) fed
/// one chunk at a time when it needs more bytes, like `io::FrameReader`.
struct Peer {
    dec: FrameDecoder,
    chunks: std::vec::IntoIter<Bytes>,
    fed: usize,
}

impl Peer {
    /// Feeds the next chunk; false when the peer has nothing more to send.
    fn recv_more(&mut self) -> bool {
        let Some(c) = self.chunks.next() else {
            return false;
        };
        self.fed += c.len();
        self.dec.feed(c);
        true
    }

    fn check_memory(&self) {
        assert!(
            self.dec.buffered() <= self.fed,
            "{} buffered > {} fed",
            self.dec.buffered(),
            self.fed
        );
    }

    /// `FrameReader::read_banner`; `Ok(None)` when the stream ends first.
    fn read_banner(&mut self) -> Result<Option<Banner>, WireError> {
        loop {
            let r = self.dec.next_banner();
            self.check_memory();
            match r {
                Ok(None) if self.recv_more() => {}
                r => return r,
            }
        }
    }

    /// `FrameReader::read_frame`, without the decoding; `None` when the stream ends or the
    /// framing fails.
    fn read_frame(&mut self) -> Option<(Tag, Vec<Bytes>)> {
        loop {
            let r = self.dec.next_frame();
            self.check_memory();
            match r {
                Ok(Some(f)) => return Some(f),
                Ok(None) if self.recv_more() => {}
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

/// Decodes `(tag, segs)` as the control frame `F`, checking that `Frame::decode` agrees.
fn typed<F: ControlFrame + Clone + std::fmt::Debug>(
    tag: Tag,
    segs: &[Bytes],
    wrap: fn(F) -> Frame,
) -> Option<F> {
    let typed = F::from_frame(tag, segs);
    match &typed {
        Ok(f) => assert_eq!(Frame::decode(tag, segs).as_ref(), Ok(&wrap(f.clone()))),
        Err(WireError::UnexpectedTag { expected, got }) => {
            assert_eq!((*expected, *got), (F::TAG as u8, tag as u8));
            assert_ne!(tag, F::TAG);
        }
        Err(e) => {
            assert_eq!(tag, F::TAG);
            assert_eq!(Frame::decode(tag, segs).as_ref(), Err(e));
        }
    }
    typed.ok()
}

/// Reads the next frame and decodes it as the one frame the handshake waits for.
fn expect<F: ControlFrame + Clone + std::fmt::Debug>(
    peer: &mut Peer,
    wrap: fn(F) -> Frame,
) -> Option<F> {
    let (tag, segs) = peer.read_frame()?;
    typed(tag, &segs, wrap)
}

/// Encodes a frame we would send in reply (the encoders must accept any decoded values).
fn reply<F: ControlFrame>(f: &F) {
    let parts = f.to_wire().expect("encoding a handshake reply");
    assert!(!parts.is_empty());
}

/// `AuthNone::global_id`: the global id claimed by an auth-none request payload.
fn auth_none_global_id(payload: &Bytes) -> u64 {
    let mut d = Decoder::from_bytes(payload);
    (|| {
        d.u8()?;
        d.u32()?;
        d.string()?;
        d.u64()
    })()
    .unwrap_or(0)
}

/// The banner exchange, checked against `Banner::decode` over the whole stream.
fn banner(peer: &mut Peer, stream: &[u8]) -> Option<()> {
    let read = peer.read_banner();
    match (&read, Banner::decode(stream)) {
        (Ok(Some(b)), Ok((whole, _))) => assert_eq!(*b, whole),
        (Ok(None), Err(WireError::Truncated { .. })) => {}
        (Err(e), Err(whole)) => assert_eq!(*e, whole),
        (r, whole) => panic!("next_banner gave {r:?}, Banner::decode {whole:?}"),
    }
    let theirs = read.ok()??;
    Banner::default().check_peer(&theirs).ok()?;
    Some(())
}

fn auth_signature(peer: &mut Peer) -> Option<()> {
    reply(&AuthSignature::default());
    let sig = expect(peer, Frame::AuthSignature)?;
    (sig.signature == [0; 32]).then_some(())
}

/// `handshake::server_accept` (and `server_finish`'s reply).
fn server(peer: &mut Peer, stream: &[u8]) -> Option<()> {
    banner(peer, stream)?;
    let _hello = expect(peer, Frame::Hello)?;
    let req = expect(peer, Frame::AuthRequest)?;
    if req.method != AUTH_METHOD_NONE || !req.preferred_modes.contains(&CON_MODE_CRC) {
        reply(&AuthBadMethod {
            method: req.method,
            result: EOPNOTSUPP,
            allowed_methods: vec![AUTH_METHOD_NONE],
            allowed_modes: vec![CON_MODE_CRC],
        });
        return None;
    }
    reply(&AuthDone {
        global_id: auth_none_global_id(&req.auth_payload),
        con_mode: CON_MODE_CRC,
        auth_payload: Bytes::new(),
    });
    auth_signature(peer)?;
    let (tag, segs) = peer.read_frame()?;
    match tag {
        Tag::SessionReconnect => {
            typed(tag, &segs, Frame::SessionReconnect)?;
        }
        _ => {
            let ident: ClientIdent = typed(tag, &segs, Frame::ClientIdent)?;
            reply(&IdentMissingFeatures {
                features: !ident.supported_features,
            });
            reply(&ServerIdent {
                addrs: ident.addrs.clone(),
                gid: ident.gid,
                global_seq: ident.global_seq,
                supported_features: ident.supported_features,
                required_features: ident.required_features,
                flags: ident.flags,
                cookie: ident.cookie,
            });
        }
    }
    Some(())
}

/// `handshake::client`, plus the session replies a server may send to CLIENT_IDENT or
/// SESSION_RECONNECT.
fn client(peer: &mut Peer, stream: &[u8]) -> Option<()> {
    banner(peer, stream)?;
    let hello: Hello = expect(peer, Frame::Hello)?;
    reply(&AuthRequest {
        method: AUTH_METHOD_NONE,
        preferred_modes: vec![CON_MODE_CRC],
        auth_payload: Bytes::new(),
    });
    let (tag, segs) = peer.read_frame()?;
    match tag {
        Tag::AuthBadMethod => {
            typed(tag, &segs, Frame::AuthBadMethod)?;
            return None;
        }
        _ => {
            let done = typed(tag, &segs, Frame::AuthDone)?;
            if done.con_mode != CON_MODE_CRC {
                return None;
            }
        }
    }
    auth_signature(peer)?;
    reply(&ClientIdent {
        addrs: hello.peer_addr.into(),
        target_addr: hello.peer_addr,
        ..Default::default()
    });
    let (tag, segs) = peer.read_frame()?;
    let decoded = match tag {
        Tag::IdentMissingFeatures => typed(tag, &segs, Frame::IdentMissingFeatures).is_some(),
        Tag::SessionReconnectOk => typed(tag, &segs, Frame::SessionReconnectOk).is_some(),
        Tag::SessionRetry => typed(tag, &segs, Frame::SessionRetry).is_some(),
        Tag::SessionRetryGlobal => typed(tag, &segs, Frame::SessionRetryGlobal).is_some(),
        Tag::SessionReset => typed(tag, &segs, Frame::SessionReset).is_some(),
        Tag::Wait => typed(tag, &segs, Frame::Wait).is_some(),
        _ => typed(tag, &segs, Frame::ServerIdent).is_some(),
    };
    decoded.then_some(())
}

fuzz_target!(|data: &[u8]| {
    let input = Input::parse(data);
    let mut peer = Peer {
        dec: FrameDecoder::new(),
        chunks: input.chunks().into_iter(),
        fed: 0,
    };
    if input.flags & CLIENT != 0 {
        let _ = client(&mut peer, &input.stream);
    } else {
        let _ = server(&mut peer, &input.stream);
    }
});
