//! The msgr2.1 wire layer: Ceph encodings, entity addresses, the banner, frame
//! (dis)assembly in crc mode, and typed frame payloads.
//!
//! Follows Ceph 16.2 (Pacific) `msg/async/frames_v2.{h,cc}`, `msg/msg_types.h` and
//! `include/msgr.h`. Secure mode, msgr2.0 (rev0) framing and on-wire compression are not
//! implemented.

pub mod codec;
pub mod crc32c_fold;
pub mod crc_cache;
pub mod error;
pub mod frame;
pub mod frames;
pub mod gather;
pub mod types;

pub use codec::{CephTimespec, Decode, Decoder, Encode, Encoder, UTime};
pub use error::{WireError, WireResult};
pub use frame::{
    ceph_crc32c, Banner, FrameAssembler, FrameDecoder, Preamble, SegmentDesc, Segments, Tag,
    DEFAULT_MAX_SEGMENT_LEN, MSGR2_FEATURE_COMPRESSION, MSGR2_FEATURE_REVISION_1,
    MSGR2_REQUIRED_FEATURES, MSGR2_SUPPORTED_FEATURES,
};
pub use frames::{
    Ack, AuthBadMethod, AuthDone, AuthReplyMore, AuthRequest, AuthRequestMore, AuthSignature,
    ClientIdent, CompressionDone, CompressionRequest, ControlFrame, Frame, Hello,
    IdentMissingFeatures, Keepalive2, Keepalive2Ack, MessageFrame, MsgHeader2, ServerIdent,
    SessionReconnect, SessionReconnectOk, SessionReset, SessionRetry, SessionRetryGlobal, Wait,
};
pub use gather::Gather;
pub use types::{EntityAddr, EntityAddrType, EntityAddrVec, EntityName, EntityType};
