//! [`Message`]: what the messenger carries (Ceph's `Message`): a type, a priority, a tid, the
//! seq the session assigns, encoding versions and the front/middle/data payloads as [`Bytes`].
//! User types implement [`MessagePayload`] to be encoded into and decoded from a message.

use bytes::Bytes;

use crate::error::{MessengerError, Result};
use crate::throttle::Hold;
use crate::wire::{MsgHeader2, WireError};

/// `CEPH_MSG_PRIO_LOW`.
pub const PRIO_LOW: u16 = 64;
/// `CEPH_MSG_PRIO_DEFAULT`.
pub const PRIO_DEFAULT: u16 = 127;
/// `CEPH_MSG_PRIO_HIGH`.
pub const PRIO_HIGH: u16 = 196;
/// `CEPH_MSG_PRIO_HIGHEST`.
pub const PRIO_HIGHEST: u16 = 255;

/// A message. `seq` is assigned by the session when the message is written (it increases by
/// one per message on a session); on received messages it is the sender's seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `CEPH_MSG_*` / `MSG_*` type.
    pub msg_type: u16,
    /// Out-queue priority: higher is sent first, FIFO within a priority.
    pub priority: u16,
    /// Transaction id (the user's).
    pub tid: u64,
    /// Session sequence number (set by the messenger).
    pub seq: u64,
    /// Encoding version of the payload (`header.version`).
    pub version: u16,
    /// Oldest version able to decode it (`header.compat_version`).
    pub compat_version: u16,
    /// Data alignment hint (`header.data_off`).
    pub data_off: u16,
    pub front: Bytes,
    pub middle: Bytes,
    pub data: Bytes,
    /// A received message's share of the dispatch throttle, given back when the message (and
    /// every clone) is dropped. Empty on messages built locally.
    pub throttle: Hold,
}

impl Message {
    /// A message of `msg_type` with default priority, version 1 and empty payloads.
    pub fn new(msg_type: u16) -> Self {
        Message {
            msg_type,
            priority: PRIO_DEFAULT,
            tid: 0,
            seq: 0,
            version: 1,
            compat_version: 1,
            data_off: 0,
            front: Bytes::new(),
            middle: Bytes::new(),
            data: Bytes::new(),
            throttle: Hold::default(),
        }
    }

    /// Sets the priority.
    pub fn with_priority(mut self, priority: u16) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the tid.
    pub fn with_tid(mut self, tid: u64) -> Self {
        self.tid = tid;
        self
    }

    /// Sets front, middle and data.
    pub fn with_payload(mut self, front: Bytes, middle: Bytes, data: Bytes) -> Self {
        self.front = front;
        self.middle = middle;
        self.data = data;
        self
    }

    /// Encodes a user type.
    pub fn encode<T: MessagePayload>(payload: &T) -> Self {
        let mut m = Message::new(T::MSG_TYPE);
        m.priority = T::PRIORITY;
        m.version = T::VERSION;
        m.compat_version = T::COMPAT_VERSION;
        payload.encode_payload(&mut m);
        m
    }

    /// Decodes a user type (checks the type and the compat version first).
    pub fn decode<T: MessagePayload>(&self) -> Result<T> {
        let fail = |source| MessengerError::Payload {
            msg_type: self.msg_type,
            ty: std::any::type_name::<T>(),
            source,
        };
        if self.msg_type != T::MSG_TYPE {
            return Err(fail(WireError::bad(
                "message type",
                format!("is {}, expected {}", self.msg_type, T::MSG_TYPE),
            )));
        }
        if self.compat_version > T::VERSION {
            return Err(fail(WireError::UnsupportedVersion {
                what: "message",
                v: self.compat_version.min(255) as u8,
                max: T::VERSION.min(255) as u8,
            }));
        }
        T::decode_payload(self).map_err(fail)
    }

    /// Total payload bytes.
    pub fn payload_len(&self) -> usize {
        self.front.len() + self.middle.len() + self.data.len()
    }

    /// The `ceph_msg_header2` for this message with `ack_seq` piggy-backed.
    pub(crate) fn header(&self, ack_seq: u64) -> MsgHeader2 {
        MsgHeader2 {
            seq: self.seq,
            tid: self.tid,
            msg_type: self.msg_type,
            priority: self.priority,
            version: self.version,
            data_pre_padding_len: 0,
            data_off: self.data_off,
            ack_seq,
            flags: 0,
            compat_version: self.compat_version,
            reserved: 0,
        }
    }

    /// A received message from its header and segments.
    pub(crate) fn from_wire(h: &MsgHeader2, front: Bytes, middle: Bytes, data: Bytes) -> Self {
        Message {
            msg_type: h.msg_type,
            priority: h.priority,
            tid: h.tid,
            seq: h.seq,
            version: h.version,
            compat_version: h.compat_version,
            data_off: h.data_off,
            front,
            middle,
            data,
            throttle: Hold::default(),
        }
    }
}

/// A user message type: how it maps onto a [`Message`]'s segments.
pub trait MessagePayload: Sized {
    /// The message type on the wire.
    const MSG_TYPE: u16;
    /// Encoding version written (`header.version`).
    const VERSION: u16 = 1;
    /// Oldest decoder version able to read it (`header.compat_version`).
    const COMPAT_VERSION: u16 = 1;
    /// Default priority.
    const PRIORITY: u16 = PRIO_DEFAULT;

    /// Fills `msg.front` (and `middle`, `data` if used).
    fn encode_payload(&self, msg: &mut Message);
    /// Reads the payload back; must not panic on malformed input.
    fn decode_payload(msg: &Message) -> std::result::Result<Self, WireError>;
}
