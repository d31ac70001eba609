//! The buffer area of one direction: where large payloads go by reference.
//!
//! The sender copies a large payload once into a chunk of its area and pushes a descriptor
//! record `{pos: u64, len: u64}` into its ring; the receiver validates the descriptor, copies
//! the chunk out into private memory, and releases it.
//!
//! # Allocation
//! Because the receiver consumes descriptors in ring order, chunks are released in the order
//! they were allocated, so the area is managed like a byte ring without records: the sender
//! ([`AreaWriter`]) owns a private, monotonically increasing `tail` (absolute position) and
//! hands out contiguous chunks of `round_up(len, 64)` bytes at `tail`; a chunk never wraps
//! (when it does not fit before the end, the rest of the area is skipped and the chunk starts
//! at the next multiple of the area length). The receiver ([`AreaReader`]) publishes the
//! position up to which it has copied out (the *released* position, a word in the control
//! page; see [`crate::shm::layout`]); everything before it is free again. A single store
//! releases any number of chunks, so release needs no record and no reverse-ring space.
//!
//! # Untrusted peer
//! - Writer: the released position read from shared memory must be 64-aligned, never go
//!   backwards and never pass the writer's own tail; otherwise [`AreaError::Corrupt`].
//! - Reader: a descriptor must continue exactly at the expected position, or start at the
//!   next multiple of the area length (a skipped end) less than one area length ahead; its
//!   length must be non-zero and the chunk must lie inside the area. Anything else is
//!   [`AreaError::Corrupt`]. The copy is sized by the validated length only.
//!
//! Shared bytes are accessed only through `AtomicU64` words (`Relaxed`, i.e. plain 8-byte
//! moves), for the same soundness reason as the ring ([`crate::shm::ring`]): a Rust reference
//! to bytes another process writes concurrently would be a data race.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::shm::layout::SharedWords;
use crate::shm::ring::MAX_INDEX;

/// Alignment (and rounding) of chunks.
pub const CHUNK_ALIGN: u64 = 64;
/// Size of a descriptor record's payload.
pub const DESC_LEN: usize = 16;

/// Area errors: the peer broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AreaError {
    /// A value read from shared memory or a descriptor is out of range.
    #[error("corrupt shm buffer area: {what} = {value} (limit {limit})")]
    Corrupt {
        what: &'static str,
        value: u64,
        limit: u64,
    },
}

fn corrupt(what: &'static str, value: u64, limit: u64) -> AreaError {
    AreaError::Corrupt { what, value, limit }
}

const fn round_chunk(n: u64) -> u64 {
    (n + CHUNK_ALIGN - 1) & !(CHUNK_ALIGN - 1)
}

/// Encodes a descriptor record payload.
pub fn encode_desc(pos: u64, len: u64) -> [u8; DESC_LEN] {
    let mut b = [0u8; DESC_LEN];
    b[..8].copy_from_slice(&pos.to_le_bytes());
    b[8..].copy_from_slice(&len.to_le_bytes());
    b
}

/// Decodes a descriptor record payload (unvalidated: see [`AreaReader::take`]).
pub fn decode_desc(b: &[u8; DESC_LEN]) -> (u64, u64) {
    let mut p = [0u8; 8];
    let mut l = [0u8; 8];
    p.copy_from_slice(&b[..8]);
    l.copy_from_slice(&b[8..]);
    (u64::from_le_bytes(p), u64::from_le_bytes(l))
}

/// The sending side's allocator over its own area.
#[derive(Debug)]
pub struct AreaWriter {
    area: SharedWords,
    head: SharedWords,
    cap: u64,
    tail: u64,
    head_cache: u64,
    undo: Option<u64>,
}

impl AreaWriter {
    /// `area` is the whole area; `head` the single released-position word.
    /// Fails if the released position is not 0 (a fresh area).
    pub(crate) fn new(area: SharedWords, head: SharedWords) -> Result<AreaWriter, AreaError> {
        let cap = (area.as_slice().len() * 8) as u64;
        let h = head.word(0).load(Ordering::Acquire);
        if h != 0 {
            return Err(corrupt("initial released position", h, 0));
        }
        Ok(AreaWriter {
            area,
            head,
            cap,
            tail: 0,
            head_cache: 0,
            undo: None,
        })
    }

    /// Area length.
    pub fn capacity(&self) -> usize {
        self.cap as usize
    }

    fn load_head(&self) -> Result<u64, AreaError> {
        let h = self.head.word(0).load(Ordering::Acquire);
        if h < self.head_cache {
            return Err(corrupt(
                "released position went backwards",
                h,
                self.head_cache,
            ));
        }
        if h > self.tail {
            return Err(corrupt("released position beyond allocated", h, self.tail));
        }
        if h % CHUNK_ALIGN != 0 {
            return Err(corrupt("released position alignment", h, CHUNK_ALIGN));
        }
        Ok(h)
    }

    /// The reader's released position, re-read and validated. Monotonic.
    pub fn released(&mut self) -> Result<u64, AreaError> {
        self.head_cache = self.load_head()?;
        Ok(self.head_cache)
    }

    /// The released position as last read (and validated) by this writer: by
    /// [`AreaWriter::released`], [`AreaWriter::free`], or a [`AreaWriter::reserve`] that found
    /// too little room in its cache (it re-reads before it reports `Ok(None)`).
    pub fn cached_released(&self) -> u64 {
        self.head_cache
    }

    /// Free bytes (re-reads and validates the released position).
    pub fn free(&mut self) -> Result<u64, AreaError> {
        self.head_cache = self.load_head()?;
        Ok(self.cap - (self.tail - self.head_cache))
    }

    /// Reserves a chunk of `len` bytes (`0 < len <= capacity / 2`); `Ok(None)` if there is no
    /// room now. The reservation can be undone with [`AreaWriter::unreserve`] until the next
    /// `reserve`.
    pub fn reserve(&mut self, len: usize) -> Result<Option<u64>, AreaError> {
        let rlen = round_chunk(len as u64);
        assert!(len > 0 && rlen <= self.cap / 2, "chunk of {len} bytes");
        let at = self.tail % self.cap;
        let skip = if at + rlen > self.cap {
            self.cap - at
        } else {
            0
        };
        let need = skip + rlen;
        if self.cap - (self.tail - self.head_cache) < need {
            self.head_cache = self.load_head()?;
            if self.cap - (self.tail - self.head_cache) < need {
                return Ok(None);
            }
        }
        self.undo = Some(self.tail);
        let pos = self.tail + skip;
        self.tail = pos + rlen;
        Ok(Some(pos))
    }

    /// Undoes the last reservation (its descriptor could not be queued).
    pub fn unreserve(&mut self) {
        if let Some(t) = self.undo.take() {
            self.tail = t;
        }
    }

    /// Copies `src` into the chunk reserved at `pos`.
    pub fn write(&self, pos: u64, src: &[u8]) {
        let off = (pos % self.cap) as usize;
        assert!(off % 8 == 0 && off + src.len() <= self.cap as usize);
        let words = &self.area.as_slice()[off / 8..(off + src.len()).div_ceil(8)];
        store_bytes(words, src);
    }
}

/// The receiving side's validator and reader of the peer's area.
#[derive(Debug)]
pub struct AreaReader {
    area: SharedWords,
    head: SharedWords,
    cap: u64,
    expected: u64,
    stored: u64,
}

/// A validated chunk location.
#[derive(Debug, Clone, Copy)]
pub struct AreaSpan {
    off: usize,
    len: usize,
}

impl AreaSpan {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Never empty (validated).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl AreaReader {
    /// `area` is the peer's area; `head` our released-position word (reset to 0 here).
    pub(crate) fn new(area: SharedWords, head: SharedWords) -> Result<AreaReader, AreaError> {
        let cap = (area.as_slice().len() * 8) as u64;
        head.word(0).store(0, Ordering::Release);
        Ok(AreaReader {
            area,
            head,
            cap,
            expected: 0,
            stored: 0,
        })
    }

    /// Validates a descriptor (see the module docs) and marks it consumed; copy it out with
    /// [`AreaReader::copy_out`] before the next [`AreaReader::release`].
    pub fn take(&mut self, pos: u64, len: u64) -> Result<AreaSpan, AreaError> {
        if len == 0 || len > self.cap / 2 {
            return Err(corrupt("descriptor length", len, self.cap / 2));
        }
        if pos > MAX_INDEX {
            return Err(corrupt("descriptor position", pos, MAX_INDEX));
        }
        if pos < self.expected {
            return Err(corrupt(
                "descriptor position behind released",
                pos,
                self.expected,
            ));
        }
        if pos != self.expected && (pos % self.cap != 0 || pos - self.expected >= self.cap) {
            return Err(corrupt("descriptor position gap", pos, self.expected));
        }
        let off = pos % self.cap;
        if off + len > self.cap {
            return Err(corrupt("descriptor past end of area", off + len, self.cap));
        }
        self.expected = pos + round_chunk(len);
        Ok(AreaSpan {
            off: off as usize,
            len: len as usize,
        })
    }

    /// Copies a validated chunk into `dst` (exactly `span.len()` bytes, possibly
    /// uninitialised).
    pub fn copy_out(&self, span: AreaSpan, dst: &mut [MaybeUninit<u8>]) {
        let words = &self.area.as_slice()[span.off / 8..(span.off + span.len).div_ceil(8)];
        load_uninit(words, dst);
    }

    /// Publishes the released position (after copying out every taken chunk).
    pub fn release(&mut self) {
        if self.stored != self.expected {
            self.head.word(0).store(self.expected, Ordering::Release);
            self.stored = self.expected;
        }
    }
}

/// Copies `len` bytes between local memory and shared memory the peer may write at any time.
///
/// On x86_64 this is one `rep movsb` in inline assembly (fast-string microcode, near memcpy
/// speed for large copies; measured here at ~1.4x the word-by-word atomic copy). The assembly
/// is opaque to the compiler, so a hostile peer racing with the copy can only make the copied
/// bytes arbitrary, which the caller treats as untrusted data anyway, never cause the undefined
/// behaviour a Rust-level racy read would.
///
/// # Safety
/// `src` is valid for reads and `dst` for writes of `len` bytes, and they do not overlap.
#[cfg(target_arch = "x86_64")]
unsafe fn copy_shared(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: the caller guarantees both ranges are valid and disjoint; `rep movsb` copies
    // exactly rcx bytes from [rsi] to [rdi] with the direction flag clear (Rust's asm contract
    // guarantees DF = 0 on entry), touching no other memory and no stack.
    unsafe {
        std::arch::asm!(
            "rep movsb",
            inout("rcx") len => _,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags)
        );
    }
}

/// Stores `src` into `words` (zero-padding the last word). `words.len() * 8 >= src.len()`.
#[cfg(target_arch = "x86_64")]
pub(crate) fn store_bytes(words: &[AtomicU64], src: &[u8]) {
    assert!(words.len() * 8 >= src.len());
    let whole = src.len() & !7;
    // SAFETY: `words` spans at least `src.len()` bytes of shared memory we may write (atomics
    // have interior mutability); `src` is a local slice, disjoint from it.
    unsafe { copy_shared(words.as_ptr() as *mut u8, src.as_ptr(), whole) };
    let rem = &src[whole..];
    if !rem.is_empty() {
        let mut b = [0u8; 8];
        b[..rem.len()].copy_from_slice(rem);
        words[whole / 8].store(u64::from_ne_bytes(b), Ordering::Relaxed);
    }
}

/// Loads `dst.len()` bytes from the start of `words` into `dst`, initialising all of it.
/// `words.len() * 8 >= dst.len()`.
#[cfg(target_arch = "x86_64")]
pub(crate) fn load_uninit(words: &[AtomicU64], dst: &mut [MaybeUninit<u8>]) {
    assert!(words.len() * 8 >= dst.len());
    // SAFETY: `words` spans at least `dst.len()` readable bytes; `dst` is a local buffer of
    // that length, disjoint from the shared area; after the copy every byte of `dst` is
    // initialised (with whatever the peer left there).
    unsafe {
        copy_shared(
            dst.as_mut_ptr().cast::<u8>(),
            words.as_ptr() as *const u8,
            dst.len(),
        )
    };
}

/// Stores `src` into `words` (zero-padding the last word). `words.len() * 8 >= src.len()`.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn store_bytes(words: &[AtomicU64], src: &[u8]) {
    let mut chunks = src.chunks_exact(8);
    let mut used = 0;
    for (w, c) in words.iter().zip(&mut chunks) {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        w.store(u64::from_ne_bytes(b), Ordering::Relaxed);
        used += 1;
    }
    let rem = chunks.remainder();
    if !rem.is_empty() {
        let mut b = [0u8; 8];
        b[..rem.len()].copy_from_slice(rem);
        words[used].store(u64::from_ne_bytes(b), Ordering::Relaxed);
    }
}

/// Loads `dst.len()` bytes from the start of `words` into `dst`, initialising all of it.
/// `words.len() * 8 >= dst.len()`.
/// Loads `dst.len()` bytes from the start of `words` into `dst`, initialising all of it.
/// `words.len() * 8 >= dst.len()`.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn load_uninit(words: &[AtomicU64], dst: &mut [MaybeUninit<u8>]) {
    assert!(words.len() * 8 >= dst.len());
    let last = dst.len() / 8;
    let mut chunks = dst.chunks_exact_mut(8);
    for (d, w) in (&mut chunks).zip(words) {
        let b = w.load(Ordering::Relaxed).to_ne_bytes();
        for (x, y) in d.iter_mut().zip(b) {
            x.write(y);
        }
    }
    let rem = chunks.into_remainder();
    if !rem.is_empty() {
        let b = words[last].load(Ordering::Relaxed).to_ne_bytes();
        for (x, y) in rem.iter_mut().zip(b) {
            x.write(y);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a byte initialised with `MaybeUninit::new` in these tests.
    fn read_init(b: MaybeUninit<u8>) -> u8 {
        // SAFETY: every element in these tests starts initialised (`MaybeUninit::new`).
        unsafe { b.assume_init() }
    }

    fn words(n: usize) -> Vec<AtomicU64> {
        (0..n).map(|_| AtomicU64::new(0)).collect()
    }

    #[test]
    fn copy_round_trip() {
        let w = words(64);
        for len in [1usize, 7, 8, 9, 63, 64, 65, 200, 512] {
            let src: Vec<u8> = (0..len).map(|i| (i * 13 + len) as u8).collect();
            store_bytes(&w, &src);
            let mut dst = vec![MaybeUninit::new(0u8); len];
            load_uninit(&w, &mut dst);
            let got: Vec<u8> = dst.iter().map(|b| read_init(*b)).collect();
            assert_eq!(got, src);
        }
    }

    fn pair(cap_words: usize) -> (Vec<AtomicU64>, Vec<AtomicU64>) {
        (words(cap_words), words(1))
    }

    #[test]
    fn alloc_release_and_validation() {
        let (area, head) = pair(4096 / 8);
        // SAFETY: the vectors outlive the writer and reader below and are only used atomically.
        let (a, h) = unsafe {
            (
                SharedWords::new(area.as_ptr() as *mut u8, area.len()),
                SharedWords::new(head.as_ptr() as *mut u8, 1),
            )
        };
        let mut w = AreaWriter::new(a, h).unwrap();
        let mut r = AreaReader::new(a, h).unwrap();
        let p1 = w.reserve(1000).unwrap().unwrap();
        assert_eq!(p1, 0);
        w.write(p1, &[7u8; 1000]);
        let p2 = w.reserve(2000).unwrap().unwrap();
        assert_eq!(p2, 1024);
        // No room for a third 2000-byte chunk until the first two are released.
        assert_eq!(w.reserve(2000).unwrap(), None);
        let s = r.take(p1, 1000).unwrap();
        let mut dst = vec![MaybeUninit::new(0u8); 1000];
        r.copy_out(s, &mut dst);
        assert!(dst.iter().all(|b| read_init(*b) == 7));
        r.take(p2, 2000).unwrap();
        r.release();
        // Skips the end of the area: the chunk starts at 4096.
        let p3 = w.reserve(2000).unwrap().unwrap();
        assert_eq!(p3, 4096);
        r.take(p3, 2000).unwrap();
        // Bad descriptors.
        assert!(r.take(p3, 10).is_err(), "behind");
        assert!(r.take(p3 + 2048 + 64, 10).is_err(), "gap");
        assert!(r.take(p3 + 2048, 0).is_err(), "empty");
        assert!(r.take(p3 + 2048, 4000).is_err(), "too long");
        assert!(r.take(3 * 4096, 10).is_err(), "a whole area ahead");
        // A bad released position.
        head[0].store(1 << 40, Ordering::SeqCst);
        assert!(w.free().is_err());
    }
}
