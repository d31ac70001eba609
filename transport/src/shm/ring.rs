//! Single-producer single-consumer byte ring for variable-length records in
//! memory shared with an **untrusted** peer process.
//!
//! # Layout (at the ring's base, which must be [`RingLayout::ALIGN`]-aligned)
//!
//! | offset | size | contents | written by |
//! |-------:|-----:|----------|------------|
//! | 0   | 128 | header: `magic: u64`, `version: u32`, `data_offset: u32`, `capacity: u64` | creator (`init`) |
//! | 128 | 128 | `tail: u64` — total bytes ever published | producer only |
//! | 256 | 128 | `head: u64` — total bytes ever released | consumer only |
//! | 384 | 128 | `consumer_waiting: u32` (non-zero = parked) | consumer (producer may clear) |
//! | 512 | `capacity` | data area | producer |
//!
//! Each control word gets 128 bytes (two cache lines) so that neither false
//! sharing nor the adjacent-line prefetcher couples producer and consumer.
//! `capacity` is a power of two in [`MIN_CAPACITY`]`..=`[`MAX_CAPACITY`];
//! [`RingLayout::bytes_needed`] is `512 + capacity`. All values are native
//! endian (both processes run on the same host).
//!
//! # Records
//!
//! A record starts at an 8-byte aligned position with the header word
//! `{ len: u32, kind: u32 }` (`len` = payload bytes) followed by the payload,
//! padded with zeros to a multiple of 8. A record never wraps: if it does not
//! fit before the end of the data area, the producer first writes a
//! [`KIND_PAD`] record covering the rest and continues at offset 0. The largest
//! payload is `capacity / 2 - 8` ([`Producer::max_payload`]); that bound
//! guarantees any record, plus a possible PAD, fits in an empty ring.
//!
//! # Memory ordering
//!
//! The producer writes a record, then `Release`-stores `tail`. The consumer
//! `Acquire`-loads `tail`, reads the records, then `Release`-stores `head`;
//! the producer `Acquire`-loads `head` before reusing space.
//!
//! # Untrusted peer
//!
//! Each side keeps its own index (`tail` for the producer, `head` for the
//! consumer) in private memory and only *writes* it to the shared copy; the
//! peer's index is read from shared memory and validated (alignment, order,
//! distance ≤ capacity) before use, and every record header is bounds-checked
//! against both the end of the data area and the published bytes. Violations
//! yield [`RingError::Corrupt`]; nothing is ever sized or indexed by an
//! unchecked peer value, and every loop is bounded.
//!
//! **Soundness choice:** the peer can modify the shared bytes at any moment,
//! so creating a `&[u8]` to them would be a data race (undefined behaviour)
//! in Rust's memory model. This module therefore accesses shared memory *only*
//! through atomics (`AtomicU64`/`AtomicU32`; data words with `Relaxed`
//! ordering, which compile to ordinary loads/stores). Payloads are handed to
//! the consumer as a [`ShmSlice`], a bounds-checked view over `&[AtomicU64]`
//! that can be copied out ([`ShmSlice::copy_to`], [`ShmSlice::to_vec`],
//! [`ShmSlice::read_at`]). A hostile peer may change the bytes while they are
//! being read, so two reads can disagree: copy once, then parse the copy. The
//! cost is that copies are word-by-word rather than SIMD `memcpy`.
//!
//! # Wake-up protocol (`consumer_waiting`)
//!
//! Both sides busy-poll; a consumer that wants to sleep on another channel
//! (the Unix socket):
//! 1. calls [`Consumer::prepare_park`] (sets the flag, `SeqCst` fence,
//!    re-checks the ring); if it returns `false` data arrived: keep polling;
//! 2. otherwise blocks on the socket, and after waking calls
//!    `set_waiting(false)`.
//!
//! The producer, after publishing, calls [`Producer::take_consumer_waiting`]
//! (`SeqCst` fence, then atomically clears the flag) and sends a wake-up
//! byte when it returns `true`. The fences guarantee that either the consumer
//! sees the new data or the producer sees the flag. A hostile consumer can
//! only cause spurious or missing wake-ups of *itself*.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// Magic number at offset 0 of an initialized ring (`"CWSHMRNG"`).
pub const RING_MAGIC: u64 = u64::from_le_bytes(*b"CWSHMRNG");
/// Layout version.
pub const RING_VERSION: u32 = 1;
/// Smallest data-area capacity.
pub const MIN_CAPACITY: usize = 4096;
/// Largest data-area capacity (512 MiB).
pub const MAX_CAPACITY: usize = 1 << 29;
/// Record kind used for padding; reserved (cannot be pushed).
pub const KIND_PAD: u32 = u32::MAX;
/// Largest `tail` a producer adopts on attach (2^62 bytes; centuries at
/// memory bandwidth), so its own index arithmetic can never overflow.
pub const MAX_INDEX: u64 = 1 << 62;
/// Size of a record header.
pub const RECORD_HEADER: usize = 8;

/// Offsets of the ring layout (see module docs).
#[derive(Debug, Clone, Copy)]
pub struct RingLayout;

impl RingLayout {
    /// Required alignment of a ring's base pointer.
    pub const ALIGN: usize = 128;
    /// Offset of the magic/version/capacity header.
    pub const HEADER_OFFSET: usize = 0;
    /// Offset of the producer's `tail: u64`.
    pub const TAIL_OFFSET: usize = 128;
    /// Offset of the consumer's `head: u64`.
    pub const HEAD_OFFSET: usize = 256;
    /// Offset of `consumer_waiting: u32`.
    pub const WAITING_OFFSET: usize = 384;
    /// Offset of the data area.
    pub const DATA_OFFSET: usize = 512;

    /// Bytes a ring of `capacity` occupies (control lines + data area).
    pub const fn bytes_needed(capacity: usize) -> usize {
        Self::DATA_OFFSET.saturating_add(capacity)
    }
}

/// Ring errors. `Corrupt`/`BadHeader` mean the peer broke the protocol; the
/// ring should be abandoned and the connection closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// A value read from shared memory is out of range.
    #[error("corrupt shm ring: {what} = {value} (limit {limit})")]
    Corrupt {
        what: &'static str,
        value: u64,
        limit: u64,
    },
    /// The ring header does not match on attach.
    #[error("bad shm ring header: {what} = {found:#x}, expected {expected:#x}")]
    BadHeader {
        what: &'static str,
        found: u64,
        expected: u64,
    },
    /// Capacity is not a power of two within `MIN_CAPACITY..=MAX_CAPACITY`.
    #[error("invalid ring capacity {0}")]
    BadCapacity(usize),
    /// Base pointer is not `RingLayout::ALIGN`-aligned.
    #[error("ring base {0:#x} is not 128-byte aligned")]
    Misaligned(usize),
    /// Payload larger than `max_payload`; it can never fit.
    #[error("record payload of {len} bytes exceeds maximum {max}")]
    TooLarge { len: usize, max: usize },
    /// `KIND_PAD` cannot be pushed.
    #[error("record kind {0:#x} is reserved")]
    ReservedKind(u32),
}

type Result<T> = std::result::Result<T, RingError>;

fn corrupt(what: &'static str, value: u64, limit: u64) -> RingError {
    RingError::Corrupt { what, value, limit }
}

const fn round8(n: u64) -> u64 {
    (n + 7) & !7
}

/// Pointers into one ring, shared by `Producer` and `Consumer`.
#[derive(Debug)]
struct Raw {
    base: *mut u8,
    capacity: usize,
}

impl Raw {
    /// # Safety
    /// `base..base + bytes_needed(capacity)` must stay mapped read/write for
    /// the lifetime of the returned value.
    unsafe fn new(base: *mut u8, capacity: usize) -> Result<Raw> {
        if !capacity.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
            return Err(RingError::BadCapacity(capacity));
        }
        if base.is_null() || !(base as usize).is_multiple_of(RingLayout::ALIGN) {
            return Err(RingError::Misaligned(base as usize));
        }
        Ok(Raw { base, capacity })
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off.is_multiple_of(8) && off + 8 <= RingLayout::DATA_OFFSET);
        // SAFETY: `off` is one of the fixed control offsets (< DATA_OFFSET,
        // 8-aligned), the base is 128-aligned (checked in `new`) and mapped for
        // our lifetime (contract of `new`). Shared memory is only accessed
        // through atomics, so concurrent writes by the peer are not data races.
        unsafe { &*self.base.add(off).cast::<AtomicU64>() }
    }

    fn magic(&self) -> &AtomicU64 {
        self.u64_at(RingLayout::HEADER_OFFSET)
    }
    fn version_word(&self) -> &AtomicU64 {
        self.u64_at(RingLayout::HEADER_OFFSET + 8)
    }
    fn capacity_word(&self) -> &AtomicU64 {
        self.u64_at(RingLayout::HEADER_OFFSET + 16)
    }
    fn tail(&self) -> &AtomicU64 {
        self.u64_at(RingLayout::TAIL_OFFSET)
    }
    fn head(&self) -> &AtomicU64 {
        self.u64_at(RingLayout::HEAD_OFFSET)
    }
    fn waiting(&self) -> &AtomicU32 {
        // SAFETY: as in `u64_at`: fixed, 4-aligned, in-bounds control offset
        // of a live mapping, accessed only atomically.
        unsafe {
            &*self
                .base
                .add(RingLayout::WAITING_OFFSET)
                .cast::<AtomicU32>()
        }
    }

    /// The data area as words.
    fn data(&self) -> &[AtomicU64] {
        // SAFETY: the data area `base + DATA_OFFSET .. + capacity` is inside
        // the mapping (contract of `new`), 8-aligned (base 128-aligned,
        // DATA_OFFSET 512), and `capacity` is a multiple of 8. AtomicU64 has
        // interior mutability, so a shared slice over memory the peer writes
        // concurrently is sound as long as we only use atomic operations.
        unsafe {
            std::slice::from_raw_parts(
                self.base.add(RingLayout::DATA_OFFSET).cast::<AtomicU64>(),
                self.capacity / 8,
            )
        }
    }

    fn version_value() -> u64 {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&RING_VERSION.to_ne_bytes());
        b[4..].copy_from_slice(&(RingLayout::DATA_OFFSET as u32).to_ne_bytes());
        u64::from_ne_bytes(b)
    }

    fn init(&self) {
        self.magic().store(0, Ordering::Relaxed);
        self.tail().store(0, Ordering::Relaxed);
        self.head().store(0, Ordering::Relaxed);
        self.waiting().store(0, Ordering::Relaxed);
        self.version_word()
            .store(Self::version_value(), Ordering::Relaxed);
        self.capacity_word()
            .store(self.capacity as u64, Ordering::Relaxed);
        self.magic().store(RING_MAGIC, Ordering::Release);
    }

    fn validate_header(&self) -> Result<()> {
        let checks = [
            ("magic", self.magic().load(Ordering::Acquire), RING_MAGIC),
            (
                "version",
                self.version_word().load(Ordering::Relaxed),
                Self::version_value(),
            ),
            (
                "capacity",
                self.capacity_word().load(Ordering::Relaxed),
                self.capacity as u64,
            ),
        ];
        for (what, found, expected) in checks {
            if found != expected {
                return Err(RingError::BadHeader {
                    what,
                    found,
                    expected,
                });
            }
        }
        Ok(())
    }
}

fn header_word(len: u32, kind: u32) -> u64 {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&len.to_ne_bytes());
    b[4..].copy_from_slice(&kind.to_ne_bytes());
    u64::from_ne_bytes(b)
}

fn split_header(w: u64) -> (u32, u32) {
    let b = w.to_ne_bytes();
    (
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
    )
}

/// Writing end of a ring. Owns the authoritative `tail`.
#[derive(Debug)]
pub struct Producer {
    raw: Raw,
    /// Private copy of tail (including staged, unpublished records).
    tail: u64,
    /// Last validated head read from shared memory.
    head_cache: u64,
}

// SAFETY: the producer only holds pointers into a shared mapping that its
// constructor's contract keeps alive for its whole lifetime, independent of
// the thread; all accesses through them are atomic.
unsafe impl Send for Producer {}

impl Producer {
    /// Initializes a ring at `base` (header, zeroed indices) and returns its
    /// producer.
    ///
    /// # Safety
    /// `base..base + RingLayout::bytes_needed(capacity)` must lie inside a
    /// read/write mapping that stays mapped for the lifetime of the returned
    /// value. No other object in this process may treat that memory as
    /// anything but atomics (e.g. no `&[u8]`/`&mut [u8]` to it).
    pub unsafe fn init(base: *mut u8, capacity: usize) -> Result<Producer> {
        // SAFETY: forwarded contract.
        let raw = unsafe { Raw::new(base, capacity)? };
        raw.init();
        Ok(Producer {
            raw,
            tail: 0,
            head_cache: 0,
        })
    }

    /// Attaches to a ring initialized by the peer; validates the header
    /// against `capacity` and adopts the shared `tail` after validating it.
    ///
    /// # Safety
    /// Same contract as [`Producer::init`].
    pub unsafe fn attach(base: *mut u8, capacity: usize) -> Result<Producer> {
        // SAFETY: forwarded contract.
        let raw = unsafe { Raw::new(base, capacity)? };
        raw.validate_header()?;
        let tail = raw.tail().load(Ordering::Relaxed);
        if tail % 8 != 0 {
            return Err(corrupt("tail alignment", tail, 8));
        }
        if tail > MAX_INDEX {
            return Err(corrupt("tail too large", tail, MAX_INDEX));
        }
        let mut p = Producer {
            raw,
            tail,
            head_cache: 0,
        };
        p.head_cache = p.load_head(0)?;
        Ok(p)
    }

    /// Largest payload accepted by [`Producer::try_push`].
    pub fn max_payload(&self) -> usize {
        self.raw.capacity / 2 - RECORD_HEADER
    }

    /// Capacity of the data area.
    pub fn capacity(&self) -> usize {
        self.raw.capacity
    }

    /// Reads and validates the consumer's head (must not go backwards, be
    /// beyond tail, or more than capacity behind it).
    fn load_head(&self, prev: u64) -> Result<u64> {
        let head = self.raw.head().load(Ordering::Acquire);
        if head > self.tail {
            return Err(corrupt("head beyond tail", head, self.tail));
        }
        if self.tail - head > self.raw.capacity as u64 {
            return Err(corrupt(
                "tail - head",
                self.tail - head,
                self.raw.capacity as u64,
            ));
        }
        if head < prev {
            return Err(corrupt("head went backwards", head, prev));
        }
        if !head.is_multiple_of(8) {
            return Err(corrupt("head alignment", head, 8));
        }
        Ok(head)
    }

    /// The consumer's position (bytes it has released), re-read and validated. Monotonic.
    pub fn consumer_position(&mut self) -> Result<u64> {
        self.head_cache = self.load_head(self.head_cache)?;
        Ok(self.head_cache)
    }

    /// The consumer's position as last read (and validated) by this producer: by
    /// [`Producer::consumer_position`], [`Producer::free_space`], or a push that found too little
    /// room in its cache (a push re-reads `head` before it reports `Ok(false)`). No memory access
    /// to the shared line.
    pub fn cached_consumer_position(&self) -> u64 {
        self.head_cache
    }

    /// Free bytes in the data area (re-reads and validates `head`).
    pub fn free_space(&mut self) -> Result<usize> {
        self.head_cache = self.load_head(self.head_cache)?;
        Ok(self.raw.capacity - (self.tail - self.head_cache) as usize)
    }

    /// Gathers `parts` into one record of `kind` and publishes it.
    ///
    /// `Ok(false)`: not enough room now (nothing written); retry later.
    /// Errors: payload over [`Producer::max_payload`], `kind == KIND_PAD`, or a
    /// corrupt `head` in shared memory.
    pub fn try_push(&mut self, kind: u32, parts: &[&[u8]]) -> Result<bool> {
        let pushed = self.try_push_deferred(kind, parts)?;
        if pushed {
            self.publish();
        }
        Ok(pushed)
    }

    /// Like [`Producer::try_push`] but does not publish: the record becomes
    /// visible to the consumer at the next [`Producer::publish`] (or
    /// `try_push`). Lets a batch be published with one store.
    pub fn try_push_deferred(&mut self, kind: u32, parts: &[&[u8]]) -> Result<bool> {
        if kind == KIND_PAD {
            return Err(RingError::ReservedKind(kind));
        }
        let max = self.max_payload();
        let mut len = 0usize;
        for p in parts {
            len = len.saturating_add(p.len());
        }
        if len > max {
            return Err(RingError::TooLarge { len, max });
        }
        let cap = self.raw.capacity as u64;
        let rec = RECORD_HEADER as u64 + round8(len as u64);
        let pos = self.tail & (cap - 1);
        let to_end = cap - pos;
        let need = if rec <= to_end { rec } else { to_end + rec };
        if cap - (self.tail - self.head_cache) < need {
            self.head_cache = self.load_head(self.head_cache)?;
            if cap - (self.tail - self.head_cache) < need {
                return Ok(false);
            }
        }
        let data = self.raw.data();
        let mut pos = pos as usize;
        if rec > to_end {
            // PAD covering the rest; to_end >= 8 since positions are 8-aligned.
            data[pos / 8].store(
                header_word((to_end - 8) as u32, KIND_PAD),
                Ordering::Relaxed,
            );
            self.tail += to_end;
            pos = 0;
        }
        let words = &data[pos / 8..pos / 8 + rec as usize / 8];
        words[0].store(header_word(len as u32, kind), Ordering::Relaxed);
        write_gather(&words[1..], parts);
        self.tail += rec;
        Ok(true)
    }

    /// Publishes all records pushed so far (`Release` store of `tail`).
    pub fn publish(&mut self) {
        self.raw.tail().store(self.tail, Ordering::Release);
    }

    /// Whether the consumer's `consumer_waiting` flag is set (plain load, no
    /// fence; see [`Producer::take_consumer_waiting`] for the protocol).
    pub fn consumer_waiting(&self) -> bool {
        self.raw.waiting().load(Ordering::SeqCst) != 0
    }

    /// After publishing: `SeqCst` fence, then atomically read-and-clear the
    /// flag. Returns `true` if the consumer is (about to be) parked and a
    /// wake-up must be sent through the socket.
    pub fn take_consumer_waiting(&self) -> bool {
        fence(Ordering::SeqCst);
        self.take_consumer_waiting_fenced()
    }

    /// [`Producer::take_consumer_waiting`] without its fence, for a caller that has issued a
    /// `SeqCst` fence itself after its last publish (e.g. one fence for several rings). The
    /// protocol only needs publish → fence → read of the flag, in that order; other work may
    /// come between them, which only delays the wake-up.
    pub fn take_consumer_waiting_fenced(&self) -> bool {
        self.raw.waiting().load(Ordering::SeqCst) != 0
            && self.raw.waiting().swap(0, Ordering::SeqCst) != 0
    }
}

/// Writes the concatenation of `parts` into `words`, zero-padding the last
/// word. Caller guarantees `words.len() * 8 >= total len`.
fn write_gather(words: &[AtomicU64], parts: &[&[u8]]) {
    let mut w = 0usize;
    let mut acc = [0u8; 8];
    let mut fill = 0usize;
    for part in parts {
        let mut p: &[u8] = part;
        if fill > 0 {
            let n = (8 - fill).min(p.len());
            acc[fill..fill + n].copy_from_slice(&p[..n]);
            fill += n;
            p = &p[n..];
            if fill < 8 {
                continue;
            }
            words[w].store(u64::from_ne_bytes(acc), Ordering::Relaxed);
            w += 1;
        }
        let mut chunks = p.chunks_exact(8);
        for c in &mut chunks {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            words[w].store(u64::from_ne_bytes(b), Ordering::Relaxed);
            w += 1;
        }
        let rem = chunks.remainder();
        acc[..rem.len()].copy_from_slice(rem);
        fill = rem.len();
    }
    if fill > 0 {
        acc[fill..].fill(0);
        words[w].store(u64::from_ne_bytes(acc), Ordering::Relaxed);
    }
}

/// Read-only view of a payload in shared memory. The peer may change the
/// bytes at any time, so copy them out once and parse the copy.
#[derive(Debug, Clone, Copy)]
pub struct ShmSlice<'a> {
    words: &'a [AtomicU64],
    start: usize,
    len: usize,
}

impl<'a> ShmSlice<'a> {
    /// Payload length in bytes (validated: ≤ max payload).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `dst.len()` bytes starting at `offset`; `false` (nothing
    /// copied) if the range is outside the payload.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> bool {
        match offset.checked_add(dst.len()) {
            Some(end) if end <= self.len => {
                load_bytes(self.words, self.start + offset, dst);
                true
            }
            _ => false,
        }
    }

    /// Copies `min(len, dst.len())` bytes from the start; returns the count.
    pub fn copy_to(&self, dst: &mut [u8]) -> usize {
        let n = self.len.min(dst.len());
        load_bytes(self.words, self.start, &mut dst[..n]);
        n
    }

    /// Copies the payload into a new vector (size bounded by the ring's max
    /// payload, never by an unchecked peer value).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len];
        load_bytes(self.words, self.start, &mut v);
        v
    }

    /// Sub-view of `offset..offset + len`, or `None` if out of range.
    pub fn slice(&self, offset: usize, len: usize) -> Option<ShmSlice<'a>> {
        let end = offset.checked_add(len)?;
        (end <= self.len).then_some(ShmSlice {
            start: self.start + offset,
            len,
            ..*self
        })
    }
}

/// Copies bytes `start..start + dst.len()` of `words` into `dst`. Caller
/// guarantees the range is within `words`.
fn load_bytes(words: &[AtomicU64], start: usize, dst: &mut [u8]) {
    let mut pos = start;
    let mut out = 0usize;
    while out < dst.len() {
        let within = pos % 8;
        let bytes = words[pos / 8].load(Ordering::Relaxed).to_ne_bytes();
        let n = (8 - within).min(dst.len() - out);
        dst[out..out + n].copy_from_slice(&bytes[within..within + n]);
        out += n;
        pos += n;
    }
}

/// Reading end of a ring. Owns the authoritative `head`.
#[derive(Debug)]
pub struct Consumer {
    raw: Raw,
    /// Private copy of head.
    head: u64,
    /// Last validated tail read from shared memory.
    tail_cache: u64,
}

// SAFETY: as for `Producer`: pointers into a mapping kept alive by the
// constructor's contract, accessed only atomically, not tied to a thread.
unsafe impl Send for Consumer {}

/// A validated record location.
struct Rec {
    kind: u32,
    /// Byte position of the payload in the data area.
    payload: usize,
    len: usize,
    /// Head after releasing this record.
    next_head: u64,
}

impl Consumer {
    /// Initializes a ring at `base` and returns its consumer.
    ///
    /// # Safety
    /// Same contract as [`Producer::init`].
    pub unsafe fn init(base: *mut u8, capacity: usize) -> Result<Consumer> {
        // SAFETY: forwarded contract.
        let raw = unsafe { Raw::new(base, capacity)? };
        raw.init();
        Ok(Consumer {
            raw,
            head: 0,
            tail_cache: 0,
        })
    }

    /// Attaches to a ring initialized by the peer; validates the header
    /// against `capacity` and adopts the shared `head` (alignment-checked).
    ///
    /// # Safety
    /// Same contract as [`Producer::init`].
    pub unsafe fn attach(base: *mut u8, capacity: usize) -> Result<Consumer> {
        // SAFETY: forwarded contract.
        let raw = unsafe { Raw::new(base, capacity)? };
        raw.validate_header()?;
        let head = raw.head().load(Ordering::Relaxed);
        if head % 8 != 0 {
            return Err(corrupt("head alignment", head, 8));
        }
        Ok(Consumer {
            raw,
            head,
            tail_cache: head,
        })
    }

    /// Capacity of the data area.
    pub fn capacity(&self) -> usize {
        self.raw.capacity
    }

    /// Whether no published record is pending (a corrupt tail reads as
    /// non-empty; the next pop reports it).
    pub fn is_empty(&self) -> bool {
        self.raw.tail().load(Ordering::Acquire) == self.head
    }

    /// Sets or clears `consumer_waiting`. Prefer [`Consumer::prepare_park`]
    /// for setting it.
    pub fn set_waiting(&self, waiting: bool) {
        self.raw
            .waiting()
            .store(u32::from(waiting), Ordering::SeqCst);
        if waiting {
            fence(Ordering::SeqCst);
        }
    }

    /// Sets the waiting flag, fences, and re-checks the ring. Returns `true`
    /// if the ring is still empty and the caller may block on the wake-up
    /// channel; otherwise clears the flag and returns `false`.
    pub fn prepare_park(&self) -> bool {
        self.set_waiting(true);
        if self.is_empty() {
            true
        } else {
            self.set_waiting(false);
            false
        }
    }

    /// Loads and validates tail when everything cached has been consumed.
    fn refresh_tail(&mut self) -> Result<()> {
        if self.head != self.tail_cache {
            return Ok(());
        }
        let tail = self.raw.tail().load(Ordering::Acquire);
        let cap = self.raw.capacity as u64;
        if tail < self.head {
            return Err(corrupt("tail behind head", tail, self.head));
        }
        if tail - self.head > cap {
            return Err(corrupt("tail - head", tail - self.head, cap));
        }
        if !tail.is_multiple_of(8) {
            return Err(corrupt("tail alignment", tail, 8));
        }
        self.tail_cache = tail;
        Ok(())
    }

    /// Next non-PAD record starting at `head`, without releasing it. PAD
    /// records are skipped by advancing `self.head` (the shared head is
    /// stored by the caller). Bounded: each PAD advances head by ≥ 8 bytes
    /// and head never passes the validated tail.
    fn next(&mut self) -> Result<Option<Rec>> {
        let cap = self.raw.capacity as u64;
        loop {
            self.refresh_tail()?;
            if self.head == self.tail_cache {
                return Ok(None);
            }
            let pos = self.head & (cap - 1);
            let avail = self.tail_cache - self.head; // >= 8, 8-aligned
            let to_end = cap - pos;
            let (len, kind) =
                split_header(self.raw.data()[pos as usize / 8].load(Ordering::Relaxed));
            let rec = RECORD_HEADER as u64 + round8(u64::from(len));
            if rec > to_end {
                return Err(corrupt(
                    "record len past end of ring",
                    len.into(),
                    to_end - 8,
                ));
            }
            if rec > avail {
                return Err(corrupt(
                    "record len beyond published data",
                    len.into(),
                    avail - 8,
                ));
            }
            if kind == KIND_PAD {
                self.head += rec;
                continue;
            }
            let max = (self.raw.capacity / 2 - RECORD_HEADER) as u64;
            if u64::from(len) > max {
                return Err(corrupt("record len over max payload", len.into(), max));
            }
            return Ok(Some(Rec {
                kind,
                payload: pos as usize + RECORD_HEADER,
                len: len as usize,
                next_head: self.head + rec,
            }));
        }
    }

    fn view(&self, rec: &Rec) -> ShmSlice<'_> {
        ShmSlice {
            words: self.raw.data(),
            start: rec.payload,
            len: rec.len,
        }
    }

    fn store_head(&self) {
        self.raw.head().store(self.head, Ordering::Release);
    }

    /// Pops one record: calls `f(kind, payload)` and then releases it.
    /// `Ok(None)` if the ring is empty. Unknown kinds are passed through.
    /// If `f` panics the record is not released.
    pub fn try_pop<R>(&mut self, f: impl FnOnce(u32, ShmSlice<'_>) -> R) -> Result<Option<R>> {
        let start = self.head;
        let rec = match self.next() {
            Ok(Some(rec)) => rec,
            other => {
                if self.head != start {
                    self.store_head(); // release skipped PADs
                }
                return other.map(|_| None);
            }
        };
        let r = f(rec.kind, self.view(&rec));
        self.head = rec.next_head;
        self.store_head();
        Ok(Some(r))
    }

    /// Pops up to `max` records, calling `f` for each, and releases them all
    /// with a single `head` store. Returns the number of records delivered.
    /// On error, records already delivered are still released.
    pub fn pop_batch(&mut self, max: usize, mut f: impl FnMut(u32, ShmSlice<'_>)) -> Result<usize> {
        let start = self.head;
        let mut n = 0;
        let mut res = Ok(());
        while n < max {
            match self.next() {
                Ok(Some(rec)) => {
                    f(rec.kind, self.view(&rec));
                    self.head = rec.next_head;
                    n += 1;
                }
                Ok(None) => break,
                Err(e) => {
                    res = Err(e);
                    break;
                }
            }
        }
        if self.head != start {
            self.store_head();
        }
        res.map(|()| n)
    }
}
