//! Layout of one connection's shared region, and the mapped view each side keeps of it.
//!
//! # Region layout
//! The accepting side creates one sealed memfd per connection ([`ShmRegion`]); both sides map
//! it whole. Offsets are fixed by two numbers carried in the handshake, the ring capacity `R`
//! and the buffer-area length `A` (every block starts on a 4 KiB page):
//!
//! | offset | size | contents |
//! |-------:|-----:|----------|
//! | 0 | 4096 | control page (below) |
//! | 4096 | `512 + R`, page-rounded | ring 0: acceptor → connector records |
//! | … | `512 + R`, page-rounded | ring 1: connector → acceptor records |
//! | … | `A` | area 0: the acceptor's large payloads (read by the connector) |
//! | … | `A` | area 1: the connector's large payloads (read by the acceptor) |
//!
//! The region may be longer than that (rounded up to 2 MiB for huge pages); the rest is unused.
//!
//! Control page, one 128-byte line per word so that no two writers share a line:
//!
//! | offset | word | written by |
//! |-------:|------|------------|
//! | 0 | `magic: u64`, `version: u32`, `0: u32`, `R: u64`, `A: u64` | creator |
//! | 128 | area 0 released position (`u64`) | connector (consumer of direction 0) |
//! | 256 | direction 0 `producer_waiting` (`u32`) | acceptor sets, connector clears |
//! | 384 | area 1 released position (`u64`) | acceptor |
//! | 512 | direction 1 `producer_waiting` (`u32`) | connector sets, acceptor clears |
//!
//! Everything in the region is read and written only through atomics: the peer may change any
//! byte at any moment, and every value read from it is validated before use (see
//! [`crate::shm::ring`] and [`crate::shm::bufarea`]).

use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::shm::bufarea::{AreaError, AreaReader, AreaWriter};
use crate::shm::region::{ShmRegion, HUGE_PAGE_SIZE, MAX_REGION_LEN};
use crate::shm::ring::{Consumer, Producer, RingLayout, MAX_CAPACITY, MIN_CAPACITY};

/// Magic at offset 0 of a connection region (`"CWSHMRGN"`).
pub const REGION_MAGIC: u64 = u64::from_le_bytes(*b"CWSHMRGN");
/// Version of this layout.
pub const LAYOUT_VERSION: u32 = 1;
/// Size of the control page.
pub const CONTROL_LEN: usize = 4096;
/// Page granularity of every block.
pub const PAGE: usize = 4096;
/// Smallest buffer area.
pub const MIN_AREA_LEN: usize = 64 << 10;

const AREA_HEAD_OFF: [usize; 2] = [128, 384];
const PRODUCER_WAITING_OFF: [usize; 2] = [256, 512];

/// Which side of a connection this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Created the region (the listener's side).
    Acceptor,
    /// Received the region (the connecting side).
    Connector,
}

impl Side {
    /// The direction this side sends on (its ring and area index).
    pub fn tx_dir(self) -> usize {
        match self {
            Side::Acceptor => 0,
            Side::Connector => 1,
        }
    }
    /// The direction this side receives on.
    pub fn rx_dir(self) -> usize {
        1 - self.tx_dir()
    }
}

/// The sizes that fix a region's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Data capacity of each ring (power of two).
    pub ring_capacity: usize,
    /// Length of each buffer area (multiple of 4096).
    pub area_len: usize,
    /// Length of the whole region (at least [`Layout::needed`], multiple of 4096).
    pub region_len: usize,
}

const fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

impl Layout {
    /// A layout for `ring_capacity` and `area_len`, the region rounded up to 2 MiB when `huge`.
    pub fn new(ring_capacity: usize, area_len: usize, huge: bool) -> Result<Layout, String> {
        let mut l = Layout {
            ring_capacity,
            area_len,
            region_len: 0,
        };
        l.check_sizes()?;
        l.region_len = round_up(l.needed(), if huge { HUGE_PAGE_SIZE } else { PAGE });
        if l.region_len > MAX_REGION_LEN {
            return Err(format!(
                "region of {} bytes exceeds {MAX_REGION_LEN}",
                l.region_len
            ));
        }
        Ok(l)
    }

    fn check_sizes(&self) -> Result<(), String> {
        let r = self.ring_capacity;
        if !r.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&r) {
            return Err(format!(
                "ring capacity {r} is not a power of two in {MIN_CAPACITY}..={MAX_CAPACITY}"
            ));
        }
        let a = self.area_len;
        if !a.is_multiple_of(PAGE) || !(MIN_AREA_LEN..=MAX_REGION_LEN / 4).contains(&a) {
            return Err(format!(
                "buffer area length {a} is not a multiple of {PAGE} in {MIN_AREA_LEN}..={}",
                MAX_REGION_LEN / 4
            ));
        }
        Ok(())
    }

    /// Checks a layout received from the peer against local limits.
    pub fn validate(
        &self,
        max_ring: usize,
        max_area: usize,
        max_region: usize,
    ) -> Result<(), String> {
        self.check_sizes()?;
        if self.ring_capacity > max_ring {
            return Err(format!(
                "ring capacity {} over the local limit {max_ring}",
                self.ring_capacity
            ));
        }
        if self.area_len > max_area {
            return Err(format!(
                "buffer area {} over the local limit {max_area}",
                self.area_len
            ));
        }
        let need = self.needed();
        if self.region_len < need
            || !self.region_len.is_multiple_of(PAGE)
            || self.region_len > max_region.min(MAX_REGION_LEN)
        {
            return Err(format!(
                "region length {} (layout needs {need}, local limit {max_region})",
                self.region_len
            ));
        }
        Ok(())
    }

    fn ring_block(&self) -> usize {
        round_up(RingLayout::bytes_needed(self.ring_capacity), PAGE)
    }

    /// Bytes the blocks occupy.
    pub fn needed(&self) -> usize {
        CONTROL_LEN + 2 * self.ring_block() + 2 * self.area_len
    }

    /// Offset of direction `dir`'s ring.
    pub fn ring_offset(&self, dir: usize) -> usize {
        CONTROL_LEN + dir * self.ring_block()
    }

    /// Offset of direction `dir`'s buffer area.
    pub fn area_offset(&self, dir: usize) -> usize {
        CONTROL_LEN + 2 * self.ring_block() + dir * self.area_len
    }

    /// Offset of direction `dir`'s area released-position word (in the control page).
    pub fn area_head_offset(dir: usize) -> usize {
        AREA_HEAD_OFF[dir]
    }

    /// Offset of direction `dir`'s `producer_waiting` word (in the control page).
    pub fn producer_waiting_offset(dir: usize) -> usize {
        PRODUCER_WAITING_OFF[dir]
    }
}

/// A bounds-checked window of shared words inside a live mapping.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SharedWords {
    ptr: *const AtomicU64,
    words: usize,
}

impl SharedWords {
    /// # Safety
    /// `ptr..ptr + words * 8` must be 8-aligned, inside a read/write mapping that stays mapped
    /// while this value (or any copy) is used, and accessed by this process only atomically.
    pub(crate) unsafe fn new(ptr: *mut u8, words: usize) -> SharedWords {
        assert_eq!(ptr as usize % 8, 0, "unaligned shared words");
        SharedWords {
            ptr: ptr.cast::<AtomicU64>(),
            words,
        }
    }

    pub(crate) fn as_slice(&self) -> &[AtomicU64] {
        // SAFETY: the constructor's contract: aligned, mapped, atomics only. AtomicU64 has
        // interior mutability, so a shared slice over memory the peer writes is sound.
        unsafe { std::slice::from_raw_parts(self.ptr, self.words) }
    }

    pub(crate) fn word(&self, i: usize) -> &AtomicU64 {
        &self.as_slice()[i]
    }

    pub(crate) fn u32_at(&self, byte_off: usize) -> &AtomicU32 {
        assert!(byte_off.is_multiple_of(4) && byte_off + 4 <= self.words * 8);
        // SAFETY: in bounds and 4-aligned (checked above) within the mapping of the
        // constructor's contract; accessed only atomically.
        unsafe { &*self.ptr.cast::<u8>().add(byte_off).cast::<AtomicU32>() }
    }
}

/// A `producer_waiting` flag: set by a producer that waits for room, cleared by whoever wakes
/// it (the protocol mirrors the ring's `consumer_waiting`).
#[derive(Debug)]
pub(crate) struct WaitFlag {
    ctl: SharedWords,
    off: usize,
}

impl WaitFlag {
    fn get(&self) -> &AtomicU32 {
        self.ctl.u32_at(self.off)
    }
    /// Producer side: announce waiting, then fence (the caller re-checks for room after).
    pub(crate) fn set(&self) {
        self.get().store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }
    pub(crate) fn clear(&self) {
        self.get().store(0, Ordering::SeqCst);
    }
    /// Consumer side, after releasing room and then issuing a `SeqCst` fence: read-and-clear
    /// (see `Conn::settle_wakeups`).
    pub(crate) fn take_fenced(&self) -> bool {
        self.get().load(Ordering::SeqCst) != 0 && self.get().swap(0, Ordering::SeqCst) != 0
    }
}

/// Errors setting up the mapped view.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// The region is shorter than the layout or its header does not match.
    #[error("shm region layout mismatch: {0}")]
    Layout(String),
    /// A ring header or index is invalid.
    #[error(transparent)]
    Ring(#[from] crate::shm::ring::RingError),
    /// An area index is invalid.
    #[error(transparent)]
    Area(#[from] crate::shm::bufarea::AreaError),
}

/// One side's view of a mapped region: its producer/consumer ends and areas. Dropping it
/// unmaps the region (the region is the last field, so every pointer user is gone first).
#[derive(Debug)]
pub(crate) struct Mapped {
    pub(crate) tx: Producer,
    pub(crate) rx: Consumer,
    pub(crate) out: AreaWriter,
    pub(crate) inn: AreaReader,
    /// Set by us when our sends wait for room.
    pub(crate) tx_waiting: WaitFlag,
    /// Set by the peer when its sends wait for room; we clear it and wake the peer.
    pub(crate) rx_peer_waiting: WaitFlag,
    /// Shared with the user buffers that point into our area ([`AreaKeep`]): they keep the
    /// mapping alive after the connection is gone.
    region: Arc<ShmRegion>,
}

/// What a user buffer in our area holds ([`crate::TxBuf`]): the mapping, and the flag the
/// area writer reclaims the chunk by (cleared on drop, when the last `Bytes` of the buffer
/// goes).
pub(crate) struct AreaKeep {
    live: Arc<AtomicBool>,
    _region: Arc<ShmRegion>,
}

impl Drop for AreaKeep {
    fn drop(&mut self) {
        self.live.store(false, Ordering::Release);
    }
}

// SAFETY: `Mapped` owns its region; every raw pointer inside points into that mapping, which
// moves with it and is not tied to a thread. The rings and areas are accessed only atomically.
unsafe impl Send for Mapped {}

fn u64_at(ctl: &SharedWords, off: usize) -> &AtomicU64 {
    ctl.word(off / 8)
}

impl Mapped {
    /// Acceptor: initialise the control page, both rings and both areas of a fresh region.
    pub(crate) fn init(region: ShmRegion, layout: Layout) -> Result<Mapped, MapError> {
        Self::build(region, layout, Side::Acceptor)
    }

    /// Connector: attach to a region the peer initialised, validating its headers.
    pub(crate) fn attach(region: ShmRegion, layout: Layout) -> Result<Mapped, MapError> {
        Self::build(region, layout, Side::Connector)
    }

    fn build(region: ShmRegion, layout: Layout, side: Side) -> Result<Mapped, MapError> {
        if region.len() < layout.needed() || region.len() != layout.region_len {
            return Err(MapError::Layout(format!(
                "region is {} bytes, layout {:?} needs {}",
                region.len(),
                layout,
                layout.needed()
            )));
        }
        // SAFETY: the control page is the first 4096 bytes of the region (checked above), page
        // aligned; the region is moved into the returned value and outlives every user.
        let ctl = unsafe { SharedWords::new(region.as_ptr(), CONTROL_LEN / 8) };
        let header = [
            REGION_MAGIC,
            u64::from(LAYOUT_VERSION),
            layout.ring_capacity as u64,
            layout.area_len as u64,
        ];
        match side {
            Side::Acceptor => {
                for off in AREA_HEAD_OFF {
                    u64_at(&ctl, off).store(0, Ordering::Relaxed);
                }
                for off in PRODUCER_WAITING_OFF {
                    ctl.u32_at(off).store(0, Ordering::Relaxed);
                }
                for (i, v) in header.iter().enumerate().skip(1) {
                    ctl.word(i).store(*v, Ordering::Relaxed);
                }
                ctl.word(0).store(REGION_MAGIC, Ordering::Release);
            }
            Side::Connector => {
                for (i, (what, v)) in ["magic", "version", "ring capacity", "area length"]
                    .iter()
                    .zip(header)
                    .enumerate()
                {
                    let found = ctl.word(i).load(Ordering::Acquire);
                    if found != v {
                        return Err(MapError::Layout(format!(
                            "control page {what} is {found:#x}, expected {v:#x}"
                        )));
                    }
                }
            }
        }
        let (txd, rxd) = (side.tx_dir(), side.rx_dir());
        let ring = |dir: usize| {
            region
                .range_ptr(
                    layout.ring_offset(dir),
                    RingLayout::bytes_needed(layout.ring_capacity),
                )
                .ok_or_else(|| MapError::Layout("ring outside the region".into()))
        };
        let (tx_base, rx_base) = (ring(txd)?, ring(rxd)?);
        let area = |dir: usize| {
            region
                .range_ptr(layout.area_offset(dir), layout.area_len)
                .ok_or_else(|| MapError::Layout("area outside the region".into()))
        };
        let (out_base, in_base) = (area(txd)?, area(rxd)?);
        // SAFETY: each ring/area lies inside the region (range_ptr checked it), page aligned,
        // and the region is moved into the returned `Mapped`, dropped after these users. The
        // memory is only accessed through atomics.
        let (tx, rx, out, inn) = unsafe {
            let (tx, rx) = match side {
                Side::Acceptor => (
                    Producer::init(tx_base, layout.ring_capacity)?,
                    Consumer::init(rx_base, layout.ring_capacity)?,
                ),
                Side::Connector => (
                    Producer::attach(tx_base, layout.ring_capacity)?,
                    Consumer::attach(rx_base, layout.ring_capacity)?,
                ),
            };
            let head_word =
                |dir: usize| SharedWords::new(region.as_ptr().add(AREA_HEAD_OFF[dir]), 1);
            let out = AreaWriter::new(
                SharedWords::new(out_base, layout.area_len / 8),
                head_word(txd),
            )?;
            let inn = AreaReader::new(
                SharedWords::new(in_base, layout.area_len / 8),
                head_word(rxd),
            )?;
            (tx, rx, out, inn)
        };
        Ok(Mapped {
            tx,
            rx,
            out,
            inn,
            tx_waiting: WaitFlag {
                ctl,
                off: PRODUCER_WAITING_OFF[txd],
            },
            rx_peer_waiting: WaitFlag {
                ctl,
                off: PRODUCER_WAITING_OFF[rxd],
            },
            region: Arc::new(region),
        })
    }

    /// The region (for its fd and size).
    pub(crate) fn region(&self) -> &ShmRegion {
        &self.region
    }

    /// A `len`-byte send buffer in our area, if the area has room for it (see
    /// [`AreaWriter::alloc`]).
    pub(crate) fn alloc(&mut self, len: usize) -> Result<Option<crate::TxBuf>, AreaError> {
        let Some((pos, live)) = self.out.alloc(len)? else {
            return Ok(None);
        };
        let ptr = std::ptr::NonNull::new(self.out.chunk_ptr(pos)).expect("mapped area");
        let keep = AreaKeep {
            live,
            _region: self.region.clone(),
        };
        // SAFETY: the chunk `pos..pos + len` lies inside our area (`alloc` checked it) and is
        // initialised (the memfd starts zeroed). `keep` holds the mapping, so the memory stays
        // valid while it lives. The writer hands the chunk to nobody else and writes no other
        // payload into it until `keep` has cleared `live` (it reclaims only chunks no longer
        // live, and only past the reader's released position). A well-behaved peer only reads
        // our area, and this chunk only after we send a descriptor for it; a hostile one could
        // write it through its own mapping, which changes what we send it and nothing else.
        Ok(Some(unsafe {
            crate::TxBuf::registered(ptr, len, Box::new(keep))
        }))
    }
}
