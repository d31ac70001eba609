//! Helpers shared by the fuzz targets in `fuzz_targets/` and by the seed generator
//! (`examples/gen_corpus.rs`).
//!
//! Every fuzz input has the same layout:
//!
//! ```text
//! byte 0      flags: bit 0 FIX_CRCS (recompute every crc of the stream before feeding it),
//!             bit 1 (handshake only) CLIENT: we are the client, the bytes come from a server
//! bytes 1..4  chunk sizes, used in turn to split the stream into the chunks fed to the
//!             decoder as a transport would deliver them (0: all the rest in one chunk)
//! bytes 4..   the peer's byte stream: banner, then msgr2.1 crc-mode frames
//! ```
//!
//! FIX_CRCS lets the fuzzer mutate frame payloads without every mutation dying at a crc
//! check: [`fix_crcs`] walks the stream as the decoder would and rewrites the preamble,
//! segment 0 and epilogue crcs so that they match.

use bytes::Bytes;
use corewire_messenger::wire::ceph_crc32c;

/// Flag: recompute the stream's crcs before feeding it.
pub const FIX_CRCS: u8 = 1 << 0;
/// Flag (handshake target): run the client side, the stream comes from a server.
pub const CLIENT: u8 = 1 << 1;

/// Length of the header in front of the stream.
pub const HEADER_LEN: usize = 4;

const BANNER_PREFIX: &[u8] = b"ceph v2\n";
const PREAMBLE_LEN: usize = 32;
const EPILOGUE_LEN: usize = 13;

/// A fuzz input, split into its header fields and the stream.
#[derive(Debug, Clone)]
pub struct Input {
    pub flags: u8,
    pub chunk_sizes: [u8; 3],
    /// The peer's bytes (with crcs already fixed if [`FIX_CRCS`] was set).
    pub stream: Bytes,
}

impl Input {
    /// Parses raw fuzzer bytes (any length; missing header bytes read as zero).
    pub fn parse(data: &[u8]) -> Self {
        let h = |i: usize| data.get(i).copied().unwrap_or(0);
        let flags = h(0);
        let mut stream = data.get(HEADER_LEN..).unwrap_or_default().to_vec();
        if flags & FIX_CRCS != 0 {
            fix_crcs(&mut stream);
        }
        Self {
            flags,
            chunk_sizes: [h(1), h(2), h(3)],
            stream: Bytes::from(stream),
        }
    }

    /// The stream as the chunks a transport would deliver: slices of one buffer, sized by
    /// `chunk_sizes` in turn.
    pub fn chunks(&self) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut at = 0;
        let mut i = 0;
        while at < self.stream.len() {
            let n = match self.chunk_sizes[i % 3] as usize {
                0 => self.stream.len() - at,
                n => n.min(self.stream.len() - at),
            };
            out.push(self.stream.slice(at..at + n));
            at += n;
            i += 1;
        }
        out
    }

    /// Builds the raw fuzzer bytes for a stream (for seeds).
    pub fn encode(flags: u8, chunk_sizes: [u8; 3], stream: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER_LEN + stream.len());
        v.push(flags);
        v.extend_from_slice(&chunk_sizes);
        v.extend_from_slice(stream);
        v
    }
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Rewrites, in place, the crcs of a banner-prefixed msgr2.1 crc-mode stream so that they
/// match the bytes they cover. Stops at the first point where the stream cannot be walked
/// (no msgr2 banner, a truncated frame, a segment count outside 1..=4).
pub fn fix_crcs(s: &mut [u8]) {
    if s.len() < 10 || &s[..8] != BANNER_PREFIX {
        return;
    }
    let mut at = 10 + usize::from(u16::from_le_bytes([s[8], s[9]]));
    while at + PREAMBLE_LEN <= s.len() {
        let p = &mut s[at..at + PREAMBLE_LEN];
        let crc = ceph_crc32c(0, &p[..28]);
        p[28..].copy_from_slice(&crc.to_le_bytes());
        let n = usize::from(p[1]);
        if !(1..=4).contains(&n) {
            return;
        }
        let lens: Vec<usize> = (0..n).map(|i| le32(&p[2 + 6 * i..]) as usize).collect();
        at += PREAMBLE_LEN;
        if lens[0] > 0 {
            let Some(end) = at.checked_add(lens[0]).filter(|e| e + 4 <= s.len()) else {
                return;
            };
            let crc = ceph_crc32c(u32::MAX, &s[at..end]);
            s[end..end + 4].copy_from_slice(&crc.to_le_bytes());
            at = end + 4;
        }
        if n > 1 {
            let rest: usize = lens[1..].iter().sum();
            if at + rest + EPILOGUE_LEN > s.len() {
                return;
            }
            let mut seg_at = at;
            let epi = at + rest;
            for (i, &len) in lens[1..].iter().enumerate() {
                let crc = ceph_crc32c(u32::MAX, &s[seg_at..seg_at + len]);
                s[epi + 1 + 4 * i..epi + 5 + 4 * i].copy_from_slice(&crc.to_le_bytes());
                seg_at += len;
            }
            at = epi + EPILOGUE_LEN;
        }
    }
}
