//! msgr2 banner and the msgr2.1 (rev1) crc-mode frame format
//! (`msg/async/frames_v2.{h,cc}`, `msg/async/ProtocolV2.cc`).
//!
//! Banner: `"ceph v2\n"`, `u16` payload length, then the payload `u64 supported, u64 required`.
//!
//! Frame, msgr2.1 crc mode:
//!
//! ```text
//! preamble (32 bytes):
//!   u8 tag, u8 num_segments (1..=4), 4 x {u32 length, u16 alignment},
//!   u8 flags, u8 reserved, u32 crc32c of the first 28 bytes (seed 0)
//! segment 0 payload, then u32 crc32c of it (seed -1)  -- both absent if segment 0 is empty
//! only if num_segments > 1:
//!   segments 1.. payloads
//!   epilogue (13 bytes): u8 late_status, 3 x u32 crc32c of segments 1..=3 (seed -1)
//! ```
//!
//! Ceph's `ceph_crc32c(seed, ..)` is the bare CRC-32C register update, without the standard
//! initial and final inversion; see [`ceph_crc32c`].
//!
//! Not implemented: msgr2.0 (rev0) framing, secure mode (AES-GCM) and on-wire compression;
//! a preamble with the compression flag set is rejected.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

use super::crc_cache::payload_crc;
use super::error::{WireError, WireResult};
use super::gather::Gather;

/// `CEPH_BANNER_V2_PREFIX`.
pub const BANNER_PREFIX: &[u8; 8] = b"ceph v2\n";
/// The msgr1 banner, recognised to give a clearer error.
const BANNER_V1: &[u8] = b"ceph v027";
/// Prefix plus the `u16` payload length.
pub const BANNER_PREFIX_LEN: usize = 10;
/// Our banner payload: two `u64`s.
pub const BANNER_PAYLOAD_LEN: usize = 16;

/// `CEPH_MSGR2_FEATURE_REVISION_1`: msgr2.1 framing.
pub const MSGR2_FEATURE_REVISION_1: u64 = 1 << 0;
/// `CEPH_MSGR2_FEATURE_COMPRESSION`: on-wire compression (Quincy and later).
pub const MSGR2_FEATURE_COMPRESSION: u64 = 1 << 1;
/// What we support: msgr2.1 only (what Pacific advertises).
pub const MSGR2_SUPPORTED_FEATURES: u64 = MSGR2_FEATURE_REVISION_1;
/// What we require: msgr2.1, since rev0 framing is not implemented.
pub const MSGR2_REQUIRED_FEATURES: u64 = MSGR2_FEATURE_REVISION_1;

/// Names of the set bits of a msgr2 feature mask, e.g. `REVISION_1|bit5`.
pub fn msgr2_feature_names(mask: u64) -> String {
    let mut names = Vec::new();
    for bit in 0..64 {
        if mask & (1 << bit) != 0 {
            names.push(match bit {
                0 => "REVISION_1".to_owned(),
                1 => "COMPRESSION".to_owned(),
                b => format!("bit{b}"),
            });
        }
    }
    names.join("|")
}

/// The msgr2 banner exchanged first by both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Banner {
    pub supported: u64,
    pub required: u64,
}

impl Default for Banner {
    fn default() -> Self {
        Self {
            supported: MSGR2_SUPPORTED_FEATURES,
            required: MSGR2_REQUIRED_FEATURES,
        }
    }
}

impl Banner {
    /// The 26 banner bytes.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(BANNER_PREFIX_LEN + BANNER_PAYLOAD_LEN);
        b.extend_from_slice(BANNER_PREFIX);
        b.extend_from_slice(&(BANNER_PAYLOAD_LEN as u16).to_le_bytes());
        b.extend_from_slice(&self.supported.to_le_bytes());
        b.extend_from_slice(&self.required.to_le_bytes());
        b.freeze()
    }

    /// Checks the 10-byte prefix and returns the payload length that follows.
    pub fn decode_prefix(prefix: &[u8]) -> WireResult<usize> {
        if prefix.len() < BANNER_PREFIX_LEN {
            return Err(WireError::Truncated {
                what: "banner prefix",
                need: BANNER_PREFIX_LEN,
                have: prefix.len(),
            });
        }
        if &prefix[..8] != BANNER_PREFIX {
            let reason = if prefix.starts_with(BANNER_V1) {
                "peer speaks msgr v1".to_owned()
            } else {
                format!("prefix {:02x?} is not \"ceph v2\\n\"", &prefix[..8])
            };
            return Err(WireError::BadBanner { reason });
        }
        Ok(u16::from_le_bytes([prefix[8], prefix[9]]) as usize)
    }

    /// Decodes the payload (`u64 supported, u64 required`; longer payloads are allowed,
    /// the rest is ignored as Ceph does).
    pub fn decode_payload(payload: &[u8]) -> WireResult<Self> {
        if payload.len() < BANNER_PAYLOAD_LEN {
            return Err(WireError::BadBanner {
                reason: format!("payload of {} bytes, need 16", payload.len()),
            });
        }
        let u = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&payload[i..i + 8]);
            u64::from_le_bytes(a)
        };
        Ok(Self {
            supported: u(0),
            required: u(8),
        })
    }

    /// Decodes a whole banner from the front of `buf`; returns it and the bytes used.
    pub fn decode(buf: &[u8]) -> WireResult<(Self, usize)> {
        let plen = Self::decode_prefix(buf)?;
        let total = BANNER_PREFIX_LEN + plen;
        if buf.len() < total {
            return Err(WireError::Truncated {
                what: "banner payload",
                need: total,
                have: buf.len(),
            });
        }
        Ok((Self::decode_payload(&buf[BANNER_PREFIX_LEN..total])?, total))
    }

    /// Checks `peer` against our banner `self` as `ProtocolV2::_handle_peer_banner_payload`
    /// does; returns the features both support.
    pub fn check_peer(&self, peer: &Banner) -> WireResult<u64> {
        let lacks = self.required & !peer.supported;
        if lacks != 0 {
            return Err(WireError::PeerLacksFeatures {
                missing: lacks,
                names: msgr2_feature_names(lacks),
            });
        }
        let missing = peer.required & !self.supported;
        if missing != 0 {
            return Err(WireError::PeerRequiresFeatures {
                missing,
                names: msgr2_feature_names(missing),
            });
        }
        Ok(self.supported & peer.supported)
    }
}

/// Frame tags (`ceph::msgr::v2::Tag`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Tag {
    Hello = 1,
    AuthRequest = 2,
    AuthBadMethod = 3,
    AuthReplyMore = 4,
    AuthRequestMore = 5,
    AuthDone = 6,
    AuthSignature = 7,
    ClientIdent = 8,
    ServerIdent = 9,
    IdentMissingFeatures = 10,
    SessionReconnect = 11,
    SessionReset = 12,
    SessionRetry = 13,
    SessionRetryGlobal = 14,
    SessionReconnectOk = 15,
    Wait = 16,
    Message = 17,
    Keepalive2 = 18,
    Keepalive2Ack = 19,
    Ack = 20,
    /// Quincy and later.
    CompressionRequest = 21,
    /// Quincy and later.
    CompressionDone = 22,
}

impl Tag {
    pub const ALL: [Tag; 22] = [
        Tag::Hello,
        Tag::AuthRequest,
        Tag::AuthBadMethod,
        Tag::AuthReplyMore,
        Tag::AuthRequestMore,
        Tag::AuthDone,
        Tag::AuthSignature,
        Tag::ClientIdent,
        Tag::ServerIdent,
        Tag::IdentMissingFeatures,
        Tag::SessionReconnect,
        Tag::SessionReset,
        Tag::SessionRetry,
        Tag::SessionRetryGlobal,
        Tag::SessionReconnectOk,
        Tag::Wait,
        Tag::Message,
        Tag::Keepalive2,
        Tag::Keepalive2Ack,
        Tag::Ack,
        Tag::CompressionRequest,
        Tag::CompressionDone,
    ];

    /// Segment alignments Ceph advertises for frames with this tag: control frames have
    /// one segment aligned to `sizeof(void*)`; messages have four, the data one page-aligned.
    pub fn segment_aligns(self) -> [u16; MAX_NUM_SEGMENTS] {
        match self {
            Tag::Message => [
                DEFAULT_ALIGNMENT,
                DEFAULT_ALIGNMENT,
                DEFAULT_ALIGNMENT,
                PAGE_SIZE_ALIGNMENT,
            ],
            _ => [DEFAULT_ALIGNMENT; MAX_NUM_SEGMENTS],
        }
    }
}

impl TryFrom<u8> for Tag {
    type Error = WireError;
    fn try_from(v: u8) -> WireResult<Self> {
        match v {
            1..=22 => Ok(Tag::ALL[v as usize - 1]),
            _ => Err(WireError::BadTag(v)),
        }
    }
}

/// `MAX_NUM_SEGMENTS`.
pub const MAX_NUM_SEGMENTS: usize = 4;
/// `segment_t::DEFAULT_ALIGNMENT` (`sizeof(void*)` on 64-bit hosts).
pub const DEFAULT_ALIGNMENT: u16 = 8;
/// `segment_t::PAGE_SIZE_ALIGNMENT`.
pub const PAGE_SIZE_ALIGNMENT: u16 = 4096;
/// `sizeof(preamble_block_t)`.
pub const PREAMBLE_LEN: usize = 32;
/// `FRAME_CRC_SIZE`.
pub const CRC_LEN: usize = 4;
/// `sizeof(epilogue_crc_rev1_block_t)`.
pub const EPILOGUE_LEN: usize = 1 + 4 * (MAX_NUM_SEGMENTS - 1);
/// `FRAME_EARLY_DATA_COMPRESSED` preamble flag.
pub const FRAME_FLAG_COMPRESSED: u8 = 1 << 0;
/// `FRAME_LATE_STATUS_COMPLETE` / `_ABORTED` and the mask of that nibble.
pub const LATE_STATUS_COMPLETE: u8 = 0x0e;
pub const LATE_STATUS_ABORTED: u8 = 0x01;
const LATE_STATUS_ABORTED_MASK: u8 = 0x0f;
/// Default maximum segment length accepted by [`FrameDecoder`].
pub const DEFAULT_MAX_SEGMENT_LEN: u32 = 64 << 20;
/// Most bytes a control frame (any tag but MESSAGE) may announce over all its segments. The
/// largest ones, AUTH frames carrying cephx tickets, take a few KiB; without this bound a peer
/// that has not authenticated yet could have its HELLO buffered up to the segment limit.
pub const MAX_CONTROL_FRAME_LEN: u32 = 1 << 20;

const SEGMENT_NAMES: [&str; MAX_NUM_SEGMENTS] =
    ["segment 0", "segment 1", "segment 2", "segment 3"];

/// Ceph's `ceph_crc32c(seed, data)`: the CRC-32C (Castagnoli) register update without the
/// standard initial/final inversion. The preamble uses seed 0, segments seed `u32::MAX`.
///
/// crc-fast's CRC-32/ISCSI starts from the raw register given as its initial state and
/// applies the standard final inversion, which is undone here. Its carry-less-multiply
/// folding takes a 4 KiB payload in about a third of the time of the SSE4.2 `crc32`
/// instruction loop where the CPU has AVX-512 (65 vs 212 ns on the machine of sessions 3 to
/// 14), which every message pays on both sides. Without AVX-512 it folds 128 bits at a time
/// and is slower than that loop; CPUs with AVX2 and VPCLMULQDQ then take
/// [`crc32c_fold`](super::crc32c_fold), 256 bits at a time.
///
/// Small inputs (a preamble, a message header, an empty segment: ten of the fourteen crcs a
/// 4 KiB request and its reply cost) go through the `crc32` instruction directly: crc-fast's
/// digest set-up and dispatch cost about 20 ns per call whatever the length, more than the
/// instruction loop takes for under [`SMALL_CRC_LEN`] bytes.
pub fn ceph_crc32c(seed: u32, data: &[u8]) -> u32 {
    if data.is_empty() {
        return seed;
    }
    if data.len() < SMALL_CRC_LEN {
        if let Some(crc) = small::crc32c(seed, data) {
            return crc;
        }
    }
    if let Some(crc) = super::crc32c_fold::crc32c(seed, data) {
        return crc;
    }
    let mut d =
        crc_fast::Digest::new_with_init_state(crc_fast::CrcAlgorithm::Crc32Iscsi, u64::from(seed));
    d.update(data);
    !(d.finalize() as u32)
}

/// Inputs shorter than this take the `crc32` instruction loop (x86-64 with SSE4.2).
pub const SMALL_CRC_LEN: usize = 128;

/// The SSE4.2 `crc32` instruction over short inputs, where it is available.
mod small {
    /// `None` where the instruction is not available (another architecture, or an x86-64
    /// without SSE4.2): the caller falls back to crc-fast.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    pub(super) fn crc32c(seed: u32, data: &[u8]) -> Option<u32> {
        if std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU supports SSE4.2, checked just above.
            Some(unsafe { crc32c_sse42(seed, data) })
        } else {
            None
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    #[inline]
    pub(super) fn crc32c(_seed: u32, _data: &[u8]) -> Option<u32> {
        None
    }

    /// The raw CRC-32C register update, 8 bytes per instruction, then the tail byte by byte.
    ///
    /// # Safety
    /// The CPU must support SSE4.2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "sse4.2")]
    unsafe fn crc32c_sse42(seed: u32, data: &[u8]) -> u32 {
        use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
        let mut crc = u64::from(seed);
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            let w: [u8; 8] = w.try_into().expect("chunks_exact yields 8 bytes");
            crc = _mm_crc32_u64(crc, u64::from_le_bytes(w));
        }
        let mut crc = crc as u32;
        for &b in words.remainder() {
            crc = _mm_crc32_u8(crc, b);
        }
        crc
    }
}

/// Ceph's crc over a segment: `bufferlist::crc32c(-1)`.
pub(super) fn segment_crc(data: &[u8]) -> u32 {
    ceph_crc32c(u32::MAX, data)
}

/// The segments of one received frame (one to four), held inline: the decoder's hot path
/// allocates no vector per frame. Dereferences to the slice of the segments present.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Segments {
    segs: [Bytes; MAX_NUM_SEGMENTS],
    len: usize,
}

impl Segments {
    fn one(seg: Bytes) -> Self {
        let mut s = Segments::default();
        s.push(seg);
        s
    }

    fn push(&mut self, seg: Bytes) {
        self.segs[self.len] = seg;
        self.len += 1;
    }

    /// The segments as a vector.
    pub fn into_vec(self) -> Vec<Bytes> {
        self.into_iter().collect()
    }
}

impl std::ops::Deref for Segments {
    type Target = [Bytes];
    fn deref(&self) -> &[Bytes] {
        &self.segs[..self.len]
    }
}

impl IntoIterator for Segments {
    type Item = Bytes;
    type IntoIter = std::iter::Take<std::array::IntoIter<Bytes, MAX_NUM_SEGMENTS>>;
    fn into_iter(self) -> Self::IntoIter {
        self.segs.into_iter().take(self.len)
    }
}

/// One segment descriptor of a preamble.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SegmentDesc {
    pub len: u32,
    pub align: u16,
}

/// `preamble_block_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    pub tag: Tag,
    /// 1..=4
    pub num_segments: u8,
    pub segments: [SegmentDesc; MAX_NUM_SEGMENTS],
    pub flags: u8,
}

impl Preamble {
    /// Encodes the 32 bytes, computing the crc.
    pub fn encode(&self) -> [u8; PREAMBLE_LEN] {
        let mut b = [0u8; PREAMBLE_LEN];
        b[0] = self.tag as u8;
        b[1] = self.num_segments;
        for (i, s) in self.segments.iter().enumerate() {
            let at = 2 + i * 6;
            b[at..at + 4].copy_from_slice(&s.len.to_le_bytes());
            b[at + 4..at + 6].copy_from_slice(&s.align.to_le_bytes());
        }
        b[26] = self.flags;
        let crc = ceph_crc32c(0, &b[..28]);
        b[28..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and validates 32 bytes in the order Ceph does: crc, segment count,
    /// empty last segment; then the tag and flags.
    pub fn decode(b: &[u8; PREAMBLE_LEN]) -> WireResult<Self> {
        let expected = u32::from_le_bytes([b[28], b[29], b[30], b[31]]);
        let got = ceph_crc32c(0, &b[..28]);
        if got != expected {
            return Err(WireError::BadCrc {
                what: "preamble",
                expected,
                got,
            });
        }
        let num_segments = b[1];
        if !(1..=MAX_NUM_SEGMENTS as u8).contains(&num_segments) {
            return Err(WireError::TooManySegments {
                count: num_segments as usize,
            });
        }
        let mut segments = [SegmentDesc::default(); MAX_NUM_SEGMENTS];
        for (i, s) in segments.iter_mut().enumerate() {
            let at = 2 + i * 6;
            s.len = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            s.align = u16::from_le_bytes([b[at + 4], b[at + 5]]);
        }
        if num_segments > 1 && segments[num_segments as usize - 1].len == 0 {
            return Err(WireError::EmptyLastSegment {
                count: num_segments,
            });
        }
        let tag = Tag::try_from(b[0])?;
        let flags = b[26];
        if flags & FRAME_FLAG_COMPRESSED != 0 {
            return Err(WireError::Unsupported("compressed frame"));
        }
        Ok(Self {
            tag,
            num_segments,
            segments,
            flags,
        })
    }

    /// The used segment descriptors.
    pub fn used(&self) -> &[SegmentDesc] {
        &self.segments[..self.num_segments as usize]
    }

    /// Bytes after the preamble up to the end of the frame (msgr2.1 crc mode).
    pub fn body_len(&self) -> u64 {
        let d = self.used();
        let mut n = match d[0].len {
            0 => 0,
            l => u64::from(l) + CRC_LEN as u64,
        };
        if d.len() > 1 {
            n += d[1..].iter().map(|s| u64::from(s.len)).sum::<u64>() + EPILOGUE_LEN as u64;
        }
        n
    }
}

/// Builds msgr2.1 crc-mode frames.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameAssembler;

impl FrameAssembler {
    /// Frames `segments` (1..=4; trailing empty ones are dropped as Ceph's
    /// `calc_num_segments` does) under `tag` with the tag's usual alignments.
    ///
    /// Returns the frame as a list of buffers to write in order; segment payloads are the
    /// given `Bytes` (no copy), the rest are small new buffers.
    pub fn encode(tag: Tag, segments: &[Bytes]) -> WireResult<Vec<Bytes>> {
        Self::encode_with_aligns(tag, segments, tag.segment_aligns())
    }

    /// Like [`FrameAssembler::encode`] with explicit segment alignments.
    pub fn encode_with_aligns(
        tag: Tag,
        segments: &[Bytes],
        aligns: [u16; MAX_NUM_SEGMENTS],
    ) -> WireResult<Vec<Bytes>> {
        if segments.is_empty() || segments.len() > MAX_NUM_SEGMENTS {
            return Err(WireError::TooManySegments {
                count: segments.len(),
            });
        }
        let mut lens = [0; MAX_NUM_SEGMENTS];
        for (l, s) in lens.iter_mut().zip(segments) {
            *l = s.len();
        }
        let preamble = Self::preamble(tag, lens, aligns)?;
        let n = usize::from(preamble.num_segments);
        let mut out = Vec::with_capacity(2 + 2 * n);
        out.push(Bytes::copy_from_slice(&preamble.encode()));
        if !segments[0].is_empty() {
            out.push(segments[0].clone());
            out.push(Bytes::copy_from_slice(
                &segment_crc(&segments[0]).to_le_bytes(),
            ));
        }
        if n > 1 {
            let rest = &segments[1..n];
            out.extend(rest.iter().filter(|s| !s.is_empty()).cloned());
            out.push(Bytes::copy_from_slice(&Self::epilogue(rest)));
        }
        Ok(out)
    }

    /// Appends the frame of `first` and `rest` (segments 0 and 1..; trailing empty ones
    /// dropped) under `tag` to `out`, byte for byte what [`FrameAssembler::encode`] returns:
    /// the preamble, segment 0, the crcs and the epilogue go straight into `out`'s open run
    /// (no buffer of their own), the other segments by [`Gather::push`]. The writer's path.
    pub fn encode_into(
        tag: Tag,
        first: &[u8],
        rest: [&Bytes; MAX_NUM_SEGMENTS - 1],
        out: &mut Gather,
    ) -> WireResult<()> {
        let lens = [first.len(), rest[0].len(), rest[1].len(), rest[2].len()];
        let preamble = Self::preamble(tag, lens, tag.segment_aligns())?;
        let n = usize::from(preamble.num_segments);
        out.put_slice(&preamble.encode());
        if !first.is_empty() {
            out.put_slice(first);
            out.put_slice(&segment_crc(first).to_le_bytes());
        }
        if n > 1 {
            let rest = &rest[..n - 1];
            // Whether a payload is shared is read before the gather takes its own reference
            // to a large one: a payload the message holds alone bypasses the crc cache. The
            // crcs come after the copies, which bring the bytes into the cache first.
            let mut shared = [false; MAX_NUM_SEGMENTS - 1];
            for (sh, s) in shared.iter_mut().zip(rest) {
                *sh = !s.is_unique();
            }
            rest.iter().for_each(|s| out.push_ref(s));
            let crcs = rest.iter().zip(shared).map(|(s, sh)| payload_crc(s, sh));
            out.put_slice(&Self::epilogue_of(crcs));
        }
        Ok(())
    }

    /// The preamble of a frame whose segments have `lens` bytes: trailing empty segments
    /// are dropped (as Ceph's `calc_num_segments` does), at least one is kept.
    fn preamble(
        tag: Tag,
        lens: [usize; MAX_NUM_SEGMENTS],
        aligns: [u16; MAX_NUM_SEGMENTS],
    ) -> WireResult<Preamble> {
        let n = lens.iter().rposition(|&l| l > 0).map_or(1, |i| i + 1);
        let mut segments = [SegmentDesc::default(); MAX_NUM_SEGMENTS];
        for (i, (d, &len)) in segments.iter_mut().zip(&lens).take(n).enumerate() {
            *d = SegmentDesc {
                len: u32::try_from(len).map_err(|_| WireError::SegmentTooLarge {
                    index: i,
                    len: len as u64,
                    max: u64::from(u32::MAX),
                })?,
                align: aligns[i],
            };
        }
        Ok(Preamble {
            tag,
            num_segments: n as u8,
            segments,
            flags: 0,
        })
    }

    /// The epilogue after segments 1.. (`rest`): complete, with each one's crc.
    fn epilogue<B: AsRef<[u8]>>(rest: &[B]) -> [u8; EPILOGUE_LEN] {
        Self::epilogue_of(rest.iter().map(|s| segment_crc(s.as_ref())))
    }

    /// The complete epilogue of segments 1.. whose crcs are `crcs`, in order (the writer's
    /// path takes payload crcs through the per-core cache of [`super::crc_cache`]).
    fn epilogue_of(crcs: impl Iterator<Item = u32>) -> [u8; EPILOGUE_LEN] {
        let mut epilogue = [0u8; EPILOGUE_LEN];
        epilogue[0] = LATE_STATUS_COMPLETE;
        for (i, crc) in crcs.enumerate() {
            epilogue[1 + 4 * i..5 + 4 * i].copy_from_slice(&crc.to_le_bytes());
        }
        epilogue
    }

    /// The frame as one contiguous buffer (copies; for tests and small frames).
    pub fn encode_contiguous(tag: Tag, segments: &[Bytes]) -> WireResult<Bytes> {
        let parts = Self::encode(tag, segments)?;
        let mut b = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
        for p in &parts {
            b.extend_from_slice(p);
        }
        Ok(b.freeze())
    }
}

/// Where the decoder is within a frame.
#[derive(Debug)]
enum State {
    Preamble,
    FirstSegment(Preamble),
    Rest(Preamble, Bytes),
    Failed(WireError),
}

/// Incremental decoder of msgr2.1 crc-mode frames from a byte stream.
///
/// Feed it received chunks with [`FrameDecoder::feed`] and pull frames with
/// [`FrameDecoder::next_frame`]. Segment lengths are checked against the maximum as soon as
/// the preamble is read, before any allocation; a segment lying within one fed chunk is
/// returned as a slice of it, otherwise it is gathered into one new buffer.
///
/// After an error the decoder stays failed (the stream is out of sync).
#[derive(Debug)]
pub struct FrameDecoder {
    max_segment_len: u32,
    chunks: VecDeque<Bytes>,
    buffered: usize,
    state: State,
    aborted_frames: u64,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder accepting segments up to [`DEFAULT_MAX_SEGMENT_LEN`].
    pub fn new() -> Self {
        Self::with_max_segment_len(DEFAULT_MAX_SEGMENT_LEN)
    }

    /// A decoder accepting segments up to `max` bytes.
    pub fn with_max_segment_len(max: u32) -> Self {
        Self {
            max_segment_len: max,
            chunks: VecDeque::new(),
            buffered: 0,
            state: State::Preamble,
            aborted_frames: 0,
        }
    }

    /// Appends received bytes.
    pub fn feed(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.buffered += chunk.len();
            self.chunks.push_back(chunk);
        }
    }

    /// Bytes fed but not yet consumed.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Frames dropped because the sender marked them aborted.
    pub fn aborted_frames(&self) -> u64 {
        self.aborted_frames
    }

    /// How many more bytes the current step needs (0 if it can proceed now).
    pub fn bytes_needed(&self) -> usize {
        let need = match &self.state {
            State::Preamble => PREAMBLE_LEN,
            State::FirstSegment(p) => Self::first_len(p),
            State::Rest(p, _) => Self::rest_len(p),
            State::Failed(_) => 0,
        };
        need.saturating_sub(self.buffered)
    }

    /// The frame being read, once its preamble is decoded and until it is complete: its tag
    /// and the bytes its segments after the first announce (a message's front, middle and
    /// data), which a reader may reserve before they arrive.
    pub fn announced(&self) -> Option<(Tag, usize)> {
        match &self.state {
            State::FirstSegment(p) | State::Rest(p, _) => {
                Some((p.tag, p.used()[1..].iter().map(|s| s.len as usize).sum()))
            }
            State::Preamble | State::Failed(_) => None,
        }
    }

    /// When the current step still needs between `min` and `max` bytes (a large segment),
    /// its buffered bytes copied into one buffer with room for the whole step, and the length
    /// that completes it: the caller fills the buffer from the stream and
    /// [feeds](FrameDecoder::feed) it back, so the segment is sliced out of one chunk, not
    /// assembled by copying chunk after chunk. `None` otherwise (nothing is consumed).
    ///
    /// The buffer is allocated for bytes the peer has only announced, so `max` bounds what a
    /// peer that announces a large frame and then stalls has reserved for it: a longer step
    /// is left to grow chunk by chunk as its bytes arrive.
    pub fn large_step_buffer(&mut self, min: usize, max: usize) -> Option<(BytesMut, usize)> {
        let need = self.bytes_needed();
        if need < min.max(1) || need > max {
            return None;
        }
        // The step needs more than is buffered, so every buffered byte belongs to it.
        let total = self.buffered + need;
        let mut buf = BytesMut::with_capacity(total);
        for c in self.chunks.drain(..) {
            buf.extend_from_slice(&c);
        }
        self.buffered = 0;
        Some((buf, total))
    }

    fn first_len(p: &Preamble) -> usize {
        match p.segments[0].len {
            0 => 0,
            l => l as usize + CRC_LEN,
        }
    }

    fn rest_len(p: &Preamble) -> usize {
        let d = p.used();
        if d.len() == 1 {
            return 0;
        }
        d[1..].iter().map(|s| s.len as usize).sum::<usize>() + EPILOGUE_LEN
    }

    /// Takes `n` buffered bytes (`n <= buffered`), zero-copy when within one chunk.
    fn take(&mut self, n: usize) -> Bytes {
        debug_assert!(n <= self.buffered);
        self.buffered -= n;
        if n == 0 {
            return Bytes::new();
        }
        let front = self
            .chunks
            .front_mut()
            .expect("buffered bytes without chunks");
        if front.len() >= n {
            let out = front.split_to(n);
            if front.is_empty() {
                self.chunks.pop_front();
            }
            return out;
        }
        let mut out = BytesMut::with_capacity(n);
        while out.len() < n {
            let front = self
                .chunks
                .front_mut()
                .expect("buffered bytes without chunks");
            let k = front.len().min(n - out.len());
            out.extend_from_slice(&front[..k]);
            let _ = front.split_to(k);
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
        out.freeze()
    }

    /// Copies out and consumes the next `N` buffered bytes (`N <= buffered`): the fixed-size
    /// parts (preamble, crc, epilogue) need no buffer of their own, and advancing a chunk
    /// touches no reference count, where splitting one off does.
    fn take_array<const N: usize>(&mut self) -> [u8; N] {
        debug_assert!(N <= self.buffered);
        self.buffered -= N;
        let mut out = [0u8; N];
        let mut at = 0;
        while at < N {
            let front = self
                .chunks
                .front_mut()
                .expect("buffered bytes without chunks");
            let k = front.len().min(N - at);
            out[at..at + k].copy_from_slice(&front[..k]);
            front.advance(k);
            if front.is_empty() {
                self.chunks.pop_front();
            }
            at += k;
        }
        out
    }

    /// Decodes the peer's banner from the front of the stream, if it has arrived whole.
    /// Call before the first [`FrameDecoder::next_frame`].
    pub fn next_banner(&mut self) -> WireResult<Option<Banner>> {
        if self.buffered < BANNER_PREFIX_LEN {
            return Ok(None);
        }
        let prefix = self.peek(BANNER_PREFIX_LEN);
        let plen = Banner::decode_prefix(&prefix)?;
        if self.buffered < BANNER_PREFIX_LEN + plen {
            return Ok(None);
        }
        let _ = self.take(BANNER_PREFIX_LEN);
        let payload = self.take(plen);
        Banner::decode_payload(&payload).map(Some)
    }

    /// Copies the first `n` buffered bytes without consuming them.
    fn peek(&self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n);
        for c in &self.chunks {
            let k = c.len().min(n - out.len());
            out.extend_from_slice(&c[..k]);
            if out.len() == n {
                break;
            }
        }
        out
    }

    /// The next complete frame as its tag and segments (empty segments included up to the
    /// frame's segment count), `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> WireResult<Option<(Tag, Vec<Bytes>)>> {
        Ok(self
            .next_segments()?
            .map(|(tag, segs)| (tag, segs.into_vec())))
    }

    /// As [`FrameDecoder::next_frame`], the segments held inline (the reader's path).
    pub fn next_segments(&mut self) -> WireResult<Option<(Tag, Segments)>> {
        if let State::Failed(e) = &self.state {
            return Err(WireError::Poisoned(Box::new(e.clone())));
        }
        match self.step() {
            Ok(r) => Ok(r),
            Err(e) => {
                self.state = State::Failed(e.clone());
                Err(e)
            }
        }
    }

    fn step(&mut self) -> WireResult<Option<(Tag, Segments)>> {
        loop {
            match std::mem::replace(&mut self.state, State::Preamble) {
                State::Preamble => {
                    if self.buffered < PREAMBLE_LEN {
                        return Ok(None);
                    }
                    let b = self.take_array::<PREAMBLE_LEN>();
                    let p = Preamble::decode(&b)?;
                    for (index, s) in p.used().iter().enumerate() {
                        if s.len > self.max_segment_len {
                            return Err(WireError::SegmentTooLarge {
                                index,
                                len: u64::from(s.len),
                                max: u64::from(self.max_segment_len),
                            });
                        }
                    }
                    if p.tag != Tag::Message {
                        let len: u64 = p.used().iter().map(|s| u64::from(s.len)).sum();
                        if len > u64::from(MAX_CONTROL_FRAME_LEN) {
                            return Err(WireError::ControlFrameTooLarge {
                                tag: p.tag,
                                len,
                                max: u64::from(MAX_CONTROL_FRAME_LEN),
                            });
                        }
                    }
                    tracing::trace!(tag = ?p.tag, segments = ?p.used(), "msgr2 preamble");
                    self.state = State::FirstSegment(p);
                }
                State::FirstSegment(p) => {
                    let need = Self::first_len(&p);
                    if self.buffered < need {
                        self.state = State::FirstSegment(p);
                        return Ok(None);
                    }
                    let seg0 = if need == 0 {
                        Bytes::new()
                    } else {
                        let seg = self.take(p.segments[0].len as usize);
                        let expected = u32::from_le_bytes(self.take_array::<CRC_LEN>());
                        let got = segment_crc(&seg);
                        if got != expected {
                            return Err(WireError::BadCrc {
                                what: SEGMENT_NAMES[0],
                                expected,
                                got,
                            });
                        }
                        seg
                    };
                    if p.num_segments == 1 {
                        return Ok(Some((p.tag, Segments::one(seg0))));
                    }
                    self.state = State::Rest(p, seg0);
                }
                State::Rest(p, seg0) => {
                    if self.buffered < Self::rest_len(&p) {
                        self.state = State::Rest(p, seg0);
                        return Ok(None);
                    }
                    let mut segs = Segments::one(seg0);
                    for s in &p.used()[1..] {
                        segs.push(self.take(s.len as usize));
                    }
                    let epilogue = self.take_array::<EPILOGUE_LEN>();
                    let late = epilogue[0];
                    match late & LATE_STATUS_ABORTED_MASK {
                        LATE_STATUS_COMPLETE => {}
                        LATE_STATUS_ABORTED => {
                            // The sender gave up on this frame; drop it and go on.
                            self.aborted_frames += 1;
                            tracing::debug!(tag = ?p.tag, "dropping aborted msgr2 frame");
                            continue;
                        }
                        _ => return Err(WireError::BadLateStatus(late)),
                    }
                    for (i, seg) in segs.iter().enumerate().skip(1) {
                        let at = 1 + 4 * (i - 1);
                        let expected = u32::from_le_bytes([
                            epilogue[at],
                            epilogue[at + 1],
                            epilogue[at + 2],
                            epilogue[at + 3],
                        ]);
                        let got = segment_crc(seg);
                        if got != expected {
                            return Err(WireError::BadCrc {
                                what: SEGMENT_NAMES[i],
                                expected,
                                got,
                            });
                        }
                    }
                    return Ok(Some((p.tag, segs)));
                }
                State::Failed(e) => {
                    self.state = State::Failed(e.clone());
                    return Err(WireError::Poisoned(Box::new(e)));
                }
            }
        }
    }
}
