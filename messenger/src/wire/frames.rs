//! Typed msgr2 frame payloads (`msg/async/frames_v2.h`).
//!
//! Control frames have one segment whose payload is the plain concatenation of the
//! fields' Ceph encodings (no versioned header around the payload); `std::vector<uint32_t>`
//! is a `u32` count then the values, `bufferlist` a `u32` length then the bytes,
//! addresses are encoded with `msgr2_frame_assumed` features (see [`super::types`]).
//!
//! MESSAGE frames have four segments: the 41-byte packed `ceph_msg_header2`, then front,
//! middle and data.

use bytes::Bytes;

use super::codec::{Decode, Decoder, Encode, Encoder, UTime};
use super::error::{WireError, WireResult};
use super::frame::{FrameAssembler, Segments, Tag};
use super::gather::Gather;
use super::types::{EntityAddr, EntityAddrVec, EntityType};

/// `CEPH_AUTH_NONE`, `CEPH_AUTH_CEPHX`.
pub const AUTH_METHOD_NONE: u32 = 1;
pub const AUTH_METHOD_CEPHX: u32 = 2;
/// `CEPH_CON_MODE_CRC`, `CEPH_CON_MODE_SECURE`.
pub const CON_MODE_CRC: u32 = 1;
pub const CON_MODE_SECURE: u32 = 2;
/// `CEPH_MSG_CONNECT_LOSSY`, a CLIENT_IDENT / SERVER_IDENT flag.
pub const MSG_CONNECT_LOSSY: u64 = 1;

/// A frame with a single payload segment.
pub trait ControlFrame: Sized {
    const TAG: Tag;

    /// Appends the payload fields.
    fn encode_payload(&self, enc: &mut Encoder);

    /// Reads the payload fields (trailing bytes are ignored, as Ceph does).
    fn decode_payload(dec: &mut Decoder<'_>) -> WireResult<Self>;

    /// The payload segment.
    fn to_payload(&self) -> Bytes {
        let mut enc = Encoder::new();
        self.encode_payload(&mut enc);
        enc.finish()
    }

    /// Decodes a payload segment.
    fn from_payload(payload: &Bytes) -> WireResult<Self> {
        Self::decode_payload(&mut Decoder::from_bytes(payload))
    }

    /// Decodes a received frame, checking its tag and segment count.
    fn from_frame(tag: Tag, segments: &[Bytes]) -> WireResult<Self> {
        if tag != Self::TAG {
            return Err(WireError::UnexpectedTag {
                expected: Self::TAG as u8,
                got: tag as u8,
            });
        }
        match segments {
            [payload] => Self::from_payload(payload),
            _ => Err(WireError::bad(
                "control frame",
                format!("{:?} with {} segments, expected 1", tag, segments.len()),
            )),
        }
    }

    /// The frame on the wire (msgr2.1 crc mode), as buffers to write in order.
    fn to_wire(&self) -> WireResult<Vec<Bytes>> {
        FrameAssembler::encode(Self::TAG, &[self.to_payload()])
    }
}

macro_rules! control_frame {
    (
        $(#[$m:meta])*
        $name:ident = $tag:ident { $($(#[$fm:meta])* $field:ident : $ty:ty),* $(,)? }
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct $name {
            $($(#[$fm])* pub $field: $ty,)*
        }

        impl ControlFrame for $name {
            const TAG: Tag = Tag::$tag;

            #[allow(unused_variables)]
            fn encode_payload(&self, enc: &mut Encoder) {
                $(self.$field.encode(enc);)*
            }

            #[allow(unused_variables)]
            fn decode_payload(dec: &mut Decoder<'_>) -> WireResult<Self> {
                Ok(Self { $($field: <$ty as Decode>::decode(dec)?,)* })
            }
        }
    };
}

/// HELLO: our entity type and the address we see the peer at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub entity_type: EntityType,
    pub peer_addr: EntityAddr,
}

impl ControlFrame for Hello {
    const TAG: Tag = Tag::Hello;
    fn encode_payload(&self, enc: &mut Encoder) {
        enc.put(&self.entity_type).put(&self.peer_addr);
    }
    fn decode_payload(dec: &mut Decoder<'_>) -> WireResult<Self> {
        Ok(Self {
            entity_type: dec.get()?,
            peer_addr: dec.get()?,
        })
    }
}

control_frame! {
    /// AUTH_REQUEST (client): auth method, preferred connection modes, method payload.
    AuthRequest = AuthRequest { method: u32, preferred_modes: Vec<u32>, auth_payload: Bytes }
}

control_frame! {
    /// AUTH_BAD_METHOD (server): the rejected method, an error code and what is allowed.
    AuthBadMethod = AuthBadMethod {
        method: u32,
        result: i32,
        allowed_methods: Vec<u32>,
        allowed_modes: Vec<u32>,
    }
}

control_frame! {
    /// AUTH_REPLY_MORE (server): another round of the auth method.
    AuthReplyMore = AuthReplyMore { auth_payload: Bytes }
}

control_frame! {
    /// AUTH_REQUEST_MORE (client): another round of the auth method.
    AuthRequestMore = AuthRequestMore { auth_payload: Bytes }
}

control_frame! {
    /// AUTH_DONE (server): global id, the chosen connection mode, method payload.
    AuthDone = AuthDone { global_id: u64, con_mode: u32, auth_payload: Bytes }
}

/// AUTH_SIGNATURE: HMAC-SHA256 of the peer's pre-auth bytes (`sha256_digest_t`, 32 raw
/// bytes without a length prefix).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthSignature {
    pub signature: [u8; 32],
}

impl ControlFrame for AuthSignature {
    const TAG: Tag = Tag::AuthSignature;
    fn encode_payload(&self, enc: &mut Encoder) {
        enc.put_raw(&self.signature);
    }
    fn decode_payload(dec: &mut Decoder<'_>) -> WireResult<Self> {
        Ok(Self {
            signature: dec.array("sha256 digest")?,
        })
    }
}

control_frame! {
    /// CLIENT_IDENT (client).
    ClientIdent = ClientIdent {
        addrs: EntityAddrVec,
        target_addr: EntityAddr,
        gid: i64,
        global_seq: u64,
        supported_features: u64,
        required_features: u64,
        flags: u64,
        cookie: u64,
    }
}

control_frame! {
    /// SERVER_IDENT (server).
    ServerIdent = ServerIdent {
        addrs: EntityAddrVec,
        gid: i64,
        global_seq: u64,
        supported_features: u64,
        required_features: u64,
        flags: u64,
        cookie: u64,
    }
}

control_frame! {
    /// IDENT_MISSING_FEATURES (server): features we require that the client lacks.
    IdentMissingFeatures = IdentMissingFeatures { features: u64 }
}

control_frame! {
    /// SESSION_RECONNECT (client).
    SessionReconnect = SessionReconnect {
        addrs: EntityAddrVec,
        client_cookie: u64,
        server_cookie: u64,
        global_seq: u64,
        connect_seq: u64,
        msg_seq: u64,
    }
}

control_frame! {
    /// SESSION_RESET (server): `full` asks for a full reset (drop the message queue).
    SessionReset = SessionReset { full: bool }
}

control_frame! {
    /// SESSION_RETRY (server): retry with a higher connect_seq.
    SessionRetry = SessionRetry { connect_seq: u64 }
}

control_frame! {
    /// SESSION_RETRY_GLOBAL (server): retry with a higher global_seq.
    SessionRetryGlobal = SessionRetryGlobal { global_seq: u64 }
}

control_frame! {
    /// SESSION_RECONNECT_OK (server): last message seq received.
    SessionReconnectOk = SessionReconnectOk { msg_seq: u64 }
}

control_frame! {
    /// WAIT (server): empty payload.
    Wait = Wait {}
}

control_frame! {
    /// KEEPALIVE2: sender's timestamp.
    Keepalive2 = Keepalive2 { timestamp: UTime }
}

control_frame! {
    /// KEEPALIVE2_ACK: the timestamp of the KEEPALIVE2 being answered.
    Keepalive2Ack = Keepalive2Ack { timestamp: UTime }
}

control_frame! {
    /// ACK: last message seq received.
    Ack = Ack { seq: u64 }
}

control_frame! {
    /// COMPRESSION_REQUEST (Quincy+, never sent by Pacific).
    CompressionRequest = CompressionRequest { is_compress: bool, preferred_methods: Vec<u32> }
}

control_frame! {
    /// COMPRESSION_DONE (Quincy+, never sent by Pacific).
    CompressionDone = CompressionDone { is_compress: bool, method: u32 }
}

/// `ceph_msg_header2`, packed little-endian, 41 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsgHeader2 {
    pub seq: u64,
    pub tid: u64,
    pub msg_type: u16,
    pub priority: u16,
    pub version: u16,
    pub data_pre_padding_len: u32,
    pub data_off: u16,
    pub ack_seq: u64,
    pub flags: u8,
    pub compat_version: u16,
    pub reserved: u16,
}

impl MsgHeader2 {
    /// `sizeof(ceph_msg_header2)`.
    pub const LEN: usize = 41;

    /// The packed little-endian encoding.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        let mut at = 0;
        let mut put = |v: &[u8]| {
            b[at..at + v.len()].copy_from_slice(v);
            at += v.len();
        };
        put(&self.seq.to_le_bytes());
        put(&self.tid.to_le_bytes());
        put(&self.msg_type.to_le_bytes());
        put(&self.priority.to_le_bytes());
        put(&self.version.to_le_bytes());
        put(&self.data_pre_padding_len.to_le_bytes());
        put(&self.data_off.to_le_bytes());
        put(&self.ack_seq.to_le_bytes());
        put(&[self.flags]);
        put(&self.compat_version.to_le_bytes());
        put(&self.reserved.to_le_bytes());
        b
    }
}

impl Encode for MsgHeader2 {
    fn encode(&self, enc: &mut Encoder) {
        enc.put_raw(&self.to_bytes());
    }
}

impl Decode for MsgHeader2 {
    const MIN_ENCODED_LEN: usize = Self::LEN;
    fn decode(dec: &mut Decoder<'_>) -> WireResult<Self> {
        Ok(Self {
            seq: dec.u64()?,
            tid: dec.u64()?,
            msg_type: dec.u16()?,
            priority: dec.u16()?,
            version: dec.u16()?,
            data_pre_padding_len: dec.u32()?,
            data_off: dec.u16()?,
            ack_seq: dec.u64()?,
            flags: dec.u8()?,
            compat_version: dec.u16()?,
            reserved: dec.u16()?,
        })
    }
}

/// A MESSAGE frame: header plus the message's front, middle and data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageFrame {
    pub header: MsgHeader2,
    pub front: Bytes,
    pub middle: Bytes,
    pub data: Bytes,
}

impl MessageFrame {
    /// The four segments (payloads are shared, not copied).
    pub fn to_segments(&self) -> [Bytes; 4] {
        [
            Bytes::copy_from_slice(&self.header.to_bytes()),
            self.front.clone(),
            self.middle.clone(),
            self.data.clone(),
        ]
    }

    /// Builds a message from received segments; absent trailing segments are empty.
    pub fn from_segments(segments: &[Bytes]) -> WireResult<Self> {
        Self::from_segment_iter(segments.len(), segments.iter().cloned())
    }

    /// As [`MessageFrame::from_segments`], taking a decoder's inline [`Segments`] (the
    /// reader's path: the payloads move into the message, no reference count touched).
    pub fn from_owned_segments(segments: Segments) -> WireResult<Self> {
        Self::from_segment_iter(segments.len(), segments)
    }

    fn from_segment_iter(
        count: usize,
        segments: impl IntoIterator<Item = Bytes>,
    ) -> WireResult<Self> {
        if count == 0 || count > 4 {
            return Err(WireError::TooManySegments { count });
        }
        let mut it = segments.into_iter();
        let hdr = it.next().unwrap_or_default();
        if hdr.len() != MsgHeader2::LEN {
            return Err(WireError::bad(
                "ceph_msg_header2",
                format!("{} bytes, expected {}", hdr.len(), MsgHeader2::LEN),
            ));
        }
        Ok(Self {
            header: Decoder::new(&hdr).get()?,
            front: it.next().unwrap_or_default(),
            middle: it.next().unwrap_or_default(),
            data: it.next().unwrap_or_default(),
        })
    }

    /// The frame on the wire (msgr2.1 crc mode), as buffers to write in order.
    pub fn to_wire(&self) -> WireResult<Vec<Bytes>> {
        FrameAssembler::encode(Tag::Message, &self.to_segments())
    }

    /// Appends the frame to `out` (the same bytes as [`MessageFrame::to_wire`], with no
    /// allocation of its own: see [`FrameAssembler::encode_into`]).
    pub fn encode_into(&self, out: &mut Gather) -> WireResult<()> {
        Self::encode_parts_into(&self.header, [&self.front, &self.middle, &self.data], out)
    }

    /// As [`MessageFrame::encode_into`] from a header and the payload segments (front,
    /// middle, data) where they are: the writer encodes a queued message without building a
    /// frame of clones first.
    pub fn encode_parts_into(
        header: &MsgHeader2,
        payload: [&Bytes; 3],
        out: &mut Gather,
    ) -> WireResult<()> {
        FrameAssembler::encode_into(Tag::Message, &header.to_bytes(), payload, out)
    }
}

/// Any msgr2 frame, decoded by tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    AuthRequest(AuthRequest),
    AuthBadMethod(AuthBadMethod),
    AuthReplyMore(AuthReplyMore),
    AuthRequestMore(AuthRequestMore),
    AuthDone(AuthDone),
    AuthSignature(AuthSignature),
    ClientIdent(ClientIdent),
    ServerIdent(ServerIdent),
    IdentMissingFeatures(IdentMissingFeatures),
    SessionReconnect(SessionReconnect),
    SessionReset(SessionReset),
    SessionRetry(SessionRetry),
    SessionRetryGlobal(SessionRetryGlobal),
    SessionReconnectOk(SessionReconnectOk),
    Wait(Wait),
    Message(MessageFrame),
    Keepalive2(Keepalive2),
    Keepalive2Ack(Keepalive2Ack),
    Ack(Ack),
    CompressionRequest(CompressionRequest),
    CompressionDone(CompressionDone),
}

macro_rules! frame_dispatch {
    ($($v:ident),*) => {
        impl Frame {
            /// The frame's tag.
            pub fn tag(&self) -> Tag {
                match self {
                    Frame::Message(_) => Tag::Message,
                    $(Frame::$v(_) => Tag::$v,)*
                }
            }

            /// Decodes a frame received as `(tag, segments)`.
            pub fn decode(tag: Tag, segments: &[Bytes]) -> WireResult<Self> {
                Ok(match tag {
                    Tag::Message => Frame::Message(MessageFrame::from_segments(segments)?),
                    $(Tag::$v => Frame::$v($v::from_frame(tag, segments)?),)*
                })
            }

            /// As [`Frame::decode`], taking a decoder's inline [`Segments`] (the reader's
            /// path: a MESSAGE's payloads move, no vector per frame).
            pub fn decode_segments(tag: Tag, segments: Segments) -> WireResult<Self> {
                match tag {
                    Tag::Message => Ok(Frame::Message(MessageFrame::from_owned_segments(segments)?)),
                    _ => Self::decode(tag, &segments),
                }
            }

            /// The frame's segments.
            pub fn to_segments(&self) -> Vec<Bytes> {
                match self {
                    Frame::Message(m) => m.to_segments().to_vec(),
                    $(Frame::$v(f) => vec![f.to_payload()],)*
                }
            }
        }
    };
}

frame_dispatch!(
    Hello,
    AuthRequest,
    AuthBadMethod,
    AuthReplyMore,
    AuthRequestMore,
    AuthDone,
    AuthSignature,
    ClientIdent,
    ServerIdent,
    IdentMissingFeatures,
    SessionReconnect,
    SessionReset,
    SessionRetry,
    SessionRetryGlobal,
    SessionReconnectOk,
    Wait,
    Keepalive2,
    Keepalive2Ack,
    Ack,
    CompressionRequest,
    CompressionDone
);

impl Frame {
    /// The frame on the wire (msgr2.1 crc mode), as buffers to write in order.
    pub fn to_wire(&self) -> WireResult<Vec<Bytes>> {
        FrameAssembler::encode(self.tag(), &self.to_segments())
    }
}
