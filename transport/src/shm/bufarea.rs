//! The buffer area of one direction: where large payloads go by reference.
//!
//! The sender copies a large payload once into a chunk of its area and pushes a descriptor
//! record `{pos: u64, len: u64}` into its ring; the receiver validates the descriptor, copies
//! the chunk out into private memory, and releases it. A payload the user wrote straight into
//! the area ([`AreaWriter::alloc`], behind `Endpoint::alloc`) is not copied on the sending side
//! at all: [`AreaWriter::adopt`] finds it and the descriptor points at it.
//!
//! # Allocation
//! Positions are absolute (monotonic `u64`; the offset in the area is `pos % len`). The
//! receiver ([`AreaReader`]) consumes descriptors in ring order, each at or after the end of
//! the previous one, and publishes the position up to which it has copied out (the *released*
//! position, a word in the control page; see [`crate::shm::layout`]). A single store releases
//! any number of chunks, so release needs no record and no reverse-ring space. The sender
//! ([`AreaWriter`]) knows `sent_to`, the end of its last descriptor: the offsets of
//! `[released, sent_to)` are the reader's, every other offset is the writer's. A new chunk of
//! `round_up(len, 64)` bytes goes at a position in the window `[sent_to, released + len)`, in
//! one stretch (a chunk never wraps: the end of the area is skipped), starting from the
//! writer's cursor `tail` just past the previous chunk, so with nothing held the area is used
//! like a byte ring.
//!
//! # Buffers handed to the user
//! [`AreaWriter::alloc`] places a chunk the same way, records it as *held* and hands out a
//! liveness flag that the user's buffer clears when its last `Bytes` is dropped. Placement
//! skips live held chunks. The user may send held chunks in any order, or not at all, so the
//! reader does not see descriptors back to back: a descriptor only has to lie *at or after*
//! the previous one (gaps are chunks never sent, sent later, or skipped). A held chunk whose
//! position is behind `sent_to` (sent after a later one) cannot go by reference; the sender
//! copies it like any other payload. A chunk is free again once it is neither live nor in
//! the reader's range. At most half the area and [`MAX_HELD`] chunks are held at a time, and
//! a copy takes a shorter stretch when held chunks leave no longer one (down to 64 bytes), so
//! copies always make progress once the reader has released what was sent: holding buffers
//! never blocks the connection.
//!
//! # Untrusted peer
//! - Writer: the released position read from shared memory must be 64-aligned, never go
//!   backwards and never pass `sent_to`; otherwise [`AreaError::Corrupt`].
//! - Reader: a descriptor must start at or after the end of the previous one and less than one
//!   area length ahead of it; its length must be non-zero and at most half the area, and the
//!   chunk must lie inside the area (never wrap). Anything else is [`AreaError::Corrupt`]. The
//!   copy is sized by the validated length only.
//!
//! Shared bytes are accessed only through `AtomicU64` words (`Relaxed`, i.e. plain 8-byte
//! moves), for the same soundness reason as the ring ([`crate::shm::ring`]): a Rust reference
//! to bytes another process writes concurrently would be a data race.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::shm::layout::SharedWords;
use crate::shm::ring::MAX_INDEX;

/// Alignment (and rounding) of chunks.
pub const CHUNK_ALIGN: u64 = 64;
/// Size of a descriptor record's payload.
pub const DESC_LEN: usize = 16;
/// Most chunks held by the user at a time ([`AreaWriter::alloc`]).
pub const MAX_HELD: usize = 64;

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
    /// Where the next descriptor may start (end of the last one, rounded up).
    sent_to: u64,
    /// `(tail, sent_to)` before the last `reserve` or `adopt`.
    undo: Option<(u64, u64)>,
    /// Chunks handed to the user by `alloc`, in position order, until reclaimed.
    held: Vec<Held>,
}

/// A chunk handed out by [`AreaWriter::alloc`].
#[derive(Debug)]
struct Held {
    pos: u64,
    end: u64,
    /// Cleared when the user's last reference is dropped.
    live: Arc<AtomicBool>,
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
            sent_to: 0,
            undo: None,
            held: Vec::new(),
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
        if h > self.sent_to {
            return Err(corrupt(
                "released position beyond described",
                h,
                self.sent_to,
            ));
        }
        if !h.is_multiple_of(CHUNK_ALIGN) {
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

    /// Free bytes in reach of the next descriptor, ignoring held chunks (re-reads and
    /// validates the released position).
    pub fn free(&mut self) -> Result<u64, AreaError> {
        self.head_cache = self.load_head()?;
        Ok(self.cap - (self.sent_to - self.head_cache))
    }

    /// Forgets held chunks the user no longer references.
    fn reclaim(&mut self) {
        self.held.retain(|h| h.live.load(Ordering::Acquire));
    }

    /// Where `n` bytes (`min <= n <= want`) can go: position and length. Candidates lie in the
    /// window `[sent_to, released + cap)` (every position in it maps to a different offset,
    /// and the offsets outside it are the ones the reader has not released), in one stretch
    /// (never across the end of the area), clear of live held chunks. The search starts at
    /// `tail`, so chunks are laid out one after the other, and wraps to the window's start.
    fn find(&self, want: u64, min: u64) -> Option<(u64, u64)> {
        let (ws, we) = (self.sent_to, self.head_cache + self.cap);
        let start = if (ws..we).contains(&self.tail) {
            self.tail
        } else {
            ws
        };
        self.scan(start, we, want, min)
            .or_else(|| self.scan(ws, start, want, min))
    }

    fn scan(&self, mut p: u64, end: u64, want: u64, min: u64) -> Option<(u64, u64)> {
        while p < end {
            let off = p % self.cap;
            let mut run = (self.cap - off).min(end - p);
            let mut inside = None;
            for h in self.held.iter().filter(|h| h.live.load(Ordering::Acquire)) {
                let (ho, he) = (h.pos % self.cap, h.pos % self.cap + (h.end - h.pos));
                if ho <= off && off < he {
                    inside = Some(he - off);
                    break;
                }
                if ho > off {
                    run = run.min(ho - off);
                }
            }
            if let Some(skip) = inside {
                p += skip;
                continue;
            }
            let n = want.min(run);
            if n >= min {
                return Some((p, n));
            }
            p += run;
        }
        None
    }

    /// [`AreaWriter::find`], re-reading the released position (and forgetting dropped held
    /// chunks) before it reports no room.
    fn room(&mut self, want: u64, min: u64) -> Result<Option<(u64, u64)>, AreaError> {
        if let Some(r) = self.find(want, min) {
            return Ok(Some(r));
        }
        self.reclaim();
        self.head_cache = self.load_head()?;
        Ok(self.find(want, min))
    }

    /// Reserves a chunk for a copy of up to `len` bytes (`0 < len <= capacity / 2`): its
    /// position and length (shorter than `len` when held chunks leave no longer stretch), or
    /// `Ok(None)` if there is no room now. The reservation can be undone with
    /// [`AreaWriter::unreserve`] until the next `reserve`.
    pub fn reserve(&mut self, len: usize) -> Result<Option<(u64, usize)>, AreaError> {
        assert!(
            len > 0 && round_chunk(len as u64) <= self.cap / 2,
            "chunk of {len} bytes"
        );
        let Some((pos, n)) = self.room(len as u64, (len as u64).min(CHUNK_ALIGN))? else {
            return Ok(None);
        };
        self.undo = Some((self.tail, self.sent_to));
        self.tail = pos + round_chunk(n);
        self.sent_to = self.tail;
        Ok(Some((pos, n as usize)))
    }

    /// Undoes the last [`AreaWriter::reserve`] or [`AreaWriter::adopt`] (its descriptor could
    /// not be queued).
    pub fn unreserve(&mut self) {
        if let Some((t, s)) = self.undo.take() {
            self.tail = t;
            self.sent_to = s;
        }
    }

    /// Hands a chunk of `len` bytes to the user (see the module docs): its position and the
    /// flag the user clears when done with it. `Ok(None)` when `len` is 0 or more than half
    /// the area, when held chunks would then exceed half the area or [`MAX_HELD`] chunks, or
    /// when there is no room now.
    pub fn alloc(&mut self, len: usize) -> Result<Option<(u64, Arc<AtomicBool>)>, AreaError> {
        let rlen = round_chunk(len as u64);
        if len == 0 || rlen > self.cap / 2 {
            return Ok(None);
        }
        self.reclaim();
        let held: u64 = self.held.iter().map(|h| h.end - h.pos).sum();
        if held + rlen > self.cap / 2 || self.held.len() >= MAX_HELD {
            return Ok(None);
        }
        let Some((pos, _)) = self.room(rlen, rlen)? else {
            return Ok(None);
        };
        self.undo = None;
        self.tail = pos + rlen;
        let live = Arc::new(AtomicBool::new(true));
        self.held.push(Held {
            pos,
            end: self.tail,
            live: live.clone(),
        });
        Ok(Some((pos, live)))
    }

    /// Address of the chunk at `pos` (from [`AreaWriter::alloc`]).
    pub fn chunk_ptr(&self, pos: u64) -> *mut u8 {
        let off = (pos % self.cap) as usize;
        // SAFETY: `off < cap`, so the result stays inside the area's mapping.
        unsafe { (self.area.as_slice().as_ptr() as *mut u8).add(off) }
    }

    /// If `ptr..ptr + len` lies inside a held chunk and can still be described (it starts at
    /// or after the end of the last descriptor), its position, for a descriptor sent without
    /// a copy; undo with [`AreaWriter::unreserve`] if the descriptor cannot be queued.
    pub fn adopt(&mut self, ptr: *const u8, len: usize) -> Option<u64> {
        let base = self.area.as_slice().as_ptr() as usize;
        let off = (ptr as usize).checked_sub(base)? as u64;
        let len = len as u64;
        if len == 0 || off.checked_add(len)? > self.cap {
            return None;
        }
        let h = self.held.iter().find(|h| {
            let hoff = h.pos % self.cap;
            h.live.load(Ordering::Acquire) && hoff <= off && off + len <= hoff + (h.end - h.pos)
        })?;
        let pos = h.pos + (off - h.pos % self.cap);
        if pos < self.sent_to {
            return None;
        }
        self.undo = Some((self.tail, self.sent_to));
        self.sent_to = round_chunk(pos + len);
        Some(pos)
    }

    /// Copies `src` into the chunk reserved at `pos`.
    pub fn write(&self, pos: u64, src: &[u8]) {
        let off = (pos % self.cap) as usize;
        assert!(off.is_multiple_of(8) && off + src.len() <= self.cap as usize);
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
    /// The `len` bytes at `at` of this span (`at + len <= self.len()`).
    pub fn sub(&self, at: usize, len: usize) -> AreaSpan {
        assert!(at + len <= self.len, "sub-span {at}+{len} of {}", self.len);
        AreaSpan {
            off: self.off + at,
            len,
        }
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
        if pos - self.expected >= self.cap {
            return Err(corrupt("descriptor position gap", pos, self.expected));
        }
        let off = pos % self.cap;
        if off + len > self.cap {
            return Err(corrupt("descriptor past end of area", off + len, self.cap));
        }
        self.expected = round_chunk(pos + len);
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

    fn open(area: &[AtomicU64], head: &[AtomicU64]) -> (AreaWriter, AreaReader) {
        // SAFETY: the callers' vectors outlive the writer and reader and are only used
        // atomically.
        let (a, h) = unsafe {
            (
                SharedWords::new(area.as_ptr() as *mut u8, area.len()),
                SharedWords::new(head.as_ptr() as *mut u8, 1),
            )
        };
        (
            AreaWriter::new(a, h).unwrap(),
            AreaReader::new(a, h).unwrap(),
        )
    }

    /// The reader takes and releases one chunk.
    fn consume(r: &mut AreaReader, (pos, n): (u64, usize)) {
        r.take(pos, n as u64).unwrap();
        r.release();
    }

    #[test]
    fn reserve_release_and_validation() {
        let (area, head) = pair(4096 / 8);
        let (mut w, mut r) = open(&area, &head);
        let (p1, n1) = w.reserve(1000).unwrap().unwrap();
        assert_eq!((p1, n1), (0, 1000));
        w.write(p1, &[7u8; 1000]);
        assert_eq!(w.reserve(2000).unwrap(), Some((1024, 2000)));
        // 1024 bytes left before the end of the area: a copy takes that shorter stretch.
        assert_eq!(w.reserve(2000).unwrap(), Some((3072, 1024)));
        // Nothing left until the reader releases.
        assert_eq!(w.reserve(2000).unwrap(), None);
        let s = r.take(p1, 1000).unwrap();
        let mut dst = vec![MaybeUninit::new(0u8); 1000];
        r.copy_out(s, &mut dst);
        assert!(dst.iter().all(|b| read_init(*b) == 7));
        r.take(1024, 2000).unwrap();
        r.take(3072, 1024).unwrap();
        r.release();
        // Wraps: the next chunk starts at 4096.
        let p4 = w.reserve(2000).unwrap().unwrap().0;
        assert_eq!(p4, 4096);
        r.take(p4, 2000).unwrap();
        // Bad descriptors.
        assert!(r.take(p4, 10).is_err(), "behind");
        assert!(r.take(p4 + 2048, 0).is_err(), "empty");
        assert!(r.take(p4 + 2048, 4000).is_err(), "too long");
        assert!(r.take(3 * 4096, 10).is_err(), "a whole area ahead");
        assert!(r.take(4096 + 4000, 1000).is_err(), "across the end");
        // A gap (a chunk never sent) is fine, as long as it is less than an area.
        assert!(r.take(p4 + 2048 + 64, 10).is_ok(), "gap");
        // A bad released position.
        head[0].store(1 << 40, Ordering::SeqCst);
        assert!(w.free().is_err());
    }

    #[test]
    fn held_chunks_adopt_in_order() {
        let (area, head) = pair(8192 / 8);
        let (mut w, mut r) = open(&area, &head);
        // Too large (over half the area) or empty: no chunk.
        assert!(w.alloc(4097).unwrap().is_none());
        assert!(w.alloc(0).unwrap().is_none());
        let (pa, _la) = w.alloc(1000).unwrap().unwrap();
        let (pb, _lb) = w.alloc(1000).unwrap().unwrap();
        assert_eq!((pa, pb), (0, 1024));
        // Held chunks are capped at half the area.
        assert!(w.alloc(2100).unwrap().is_none());
        // Not area memory, or not a held chunk: not adopted.
        let outside = [0u8; 8];
        assert_eq!(w.adopt(outside.as_ptr(), 8), None);
        assert_eq!(w.adopt(w.chunk_ptr(3000), 8), None);
        // B first (a slice of it), then A is behind the last descriptor: copy, not adopt.
        let b_at = w.adopt(w.chunk_ptr(pb + 100), 500).unwrap();
        assert_eq!(b_at, pb + 100);
        assert_eq!(w.adopt(w.chunk_ptr(pa), 1000), None);
        // The reader steps over the gap (A).
        r.take(b_at, 500).unwrap();
        // An undone reserve leaves no trace; the next copy goes after the held chunks.
        assert_eq!(w.reserve(64).unwrap(), Some((2048, 64)));
        w.unreserve();
        assert_eq!(w.reserve(64).unwrap(), Some((2048, 64)));
    }

    #[test]
    fn copies_skip_live_held_chunks_and_reuse_dropped_ones() {
        let (area, head) = pair(8192 / 8);
        let (mut w, mut r) = open(&area, &head);
        let (px, lx) = w.alloc(1000).unwrap().unwrap();
        assert_eq!(px, 0);
        // Copies fill the rest of the area; the reader keeps up.
        for want in [(1024, 2048), (3072, 2048), (5120, 2048), (7168, 1024)] {
            let got = w.reserve(2048).unwrap().unwrap();
            assert_eq!(got, want);
            consume(&mut r, got);
        }
        // Wrapped: offset 0 is X's (live), so the copy starts after it.
        let got = w.reserve(2048).unwrap().unwrap();
        assert_eq!(got, (8192 + 1024, 2048));
        consume(&mut r, got);
        for _ in 0..3 {
            let got = w.reserve(2048).unwrap().unwrap();
            consume(&mut r, got);
        }
        // X dropped: after the next wrap its memory is used again.
        lx.store(false, Ordering::Release);
        let mut seen = Vec::new();
        for _ in 0..5 {
            let got = w.reserve(2048).unwrap().unwrap();
            seen.push(got.0 % 8192);
            consume(&mut r, got);
        }
        assert!(
            seen.contains(&0),
            "offset 0 reused after X was dropped: {seen:?}"
        );
        // Held chunks never block copies: with half the area held the rest still moves.
        let _held: Vec<_> = (0..4).map(|_| w.alloc(1000).unwrap().unwrap()).collect();
        for _ in 0..20 {
            let got = w.reserve(2048).unwrap().expect("room beside held chunks");
            consume(&mut r, got);
        }
    }
}
