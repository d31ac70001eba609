//! Typed errors of the msgr2 wire layer.
//!
//! Every variant carries enough context to say what was being decoded and why it
//! failed; nothing in the wire layer panics on malformed input.

/// An error while encoding or decoding msgr2 wire data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The input ended before `what` could be read.
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },

    /// The peer's banner is not a msgr2 banner.
    #[error("bad banner: {reason}")]
    BadBanner { reason: String },

    /// The peer requires msgr2 protocol features that we do not support.
    #[error("peer requires msgr2 features we lack: {names} ({missing:#x})")]
    PeerRequiresFeatures { missing: u64, names: String },

    /// The peer lacks msgr2 protocol features that we require.
    #[error("peer lacks msgr2 features we require: {names} ({missing:#x})")]
    PeerLacksFeatures { missing: u64, names: String },

    /// A crc32c check failed.
    #[error("bad crc for {what}: expected {expected:#010x}, got {got:#010x}")]
    BadCrc {
        what: &'static str,
        expected: u32,
        got: u32,
    },

    /// A segment is longer than the configured maximum (checked before allocating).
    #[error("segment {index} length {len} exceeds maximum {max}")]
    SegmentTooLarge { index: usize, len: u64, max: u64 },

    /// A control frame (any tag but MESSAGE) announcing more bytes than any control frame
    /// carries (checked before allocating; a message's size is bounded by the segment limit
    /// and the dispatch throttle instead).
    #[error("{tag:?} frame announces {len} bytes, more than the {max} a control frame may carry")]
    ControlFrameTooLarge {
        tag: super::frame::Tag,
        len: u64,
        max: u64,
    },

    /// An unknown frame tag.
    #[error("unknown frame tag {0}")]
    BadTag(u8),

    /// A frame whose tag is valid but not the one expected by the caller.
    #[error("unexpected frame tag: expected {expected}, got {got}")]
    UnexpectedTag { expected: u8, got: u8 },

    /// A frame claims a segment count outside 1..=4.
    #[error("bad segment count {count} (must be 1..=4)")]
    TooManySegments { count: usize },

    /// The last declared segment of a multi-segment frame is empty.
    #[error("last segment of a {count}-segment frame is empty")]
    EmptyLastSegment { count: u8 },

    /// The msgr2.1 epilogue late_status is neither COMPLETE nor ABORTED.
    #[error("bad epilogue late_status {0:#04x}")]
    BadLateStatus(u8),

    /// A structurally invalid value.
    #[error("bad encoding of {what}: {detail}")]
    BadEncoding { what: &'static str, detail: String },

    /// A versioned struct whose compat version is newer than we understand.
    #[error("unsupported {what} encoding: struct_compat {v} > understood {max}")]
    UnsupportedVersion { what: &'static str, v: u8, max: u8 },

    /// A feature of the protocol this implementation does not provide.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),

    /// An earlier error left the stream decoder unusable.
    #[error("frame decoder failed earlier: {0}")]
    Poisoned(Box<WireError>),
}

impl WireError {
    /// Shorthand for [`WireError::BadEncoding`].
    pub fn bad(what: &'static str, detail: impl Into<String>) -> Self {
        WireError::BadEncoding {
            what,
            detail: detail.into(),
        }
    }
}

/// Result alias of the wire layer.
pub type WireResult<T> = Result<T, WireError>;
