//! The per-core registered large-buffer pool: what makes large payloads zero-copy.
//!
//! Each core (per device selection) owns two memory areas, mapped (on huge pages where
//! possible, preferring the NIC's NUMA node: [`crate::rdma::hugemem`]) and registered once,
//! when the core first uses the device:
//! - the **send pool**: fixed chunks in four power-of-four size classes
//!   ([`TX_CHUNK_BYTES`]; by default 64 KiB × 32, 256 KiB × 16, 1 MiB × 8 and 4 MiB × 8,
//!   46 MiB: [`RdmaPoolConfig`]), registered for local access only. [`Pool::alloc`] (behind
//!   `Endpoint::alloc`) hands out a chunk of the smallest class that fits as a [`TxBuf`]; a
//!   request below [`ZC_MIN`] (it would go by SEND, copied, anyway),
//!   above 4 MiB, or whose class has no free chunk gets a heap buffer instead (no search of
//!   larger classes: a small request never takes a 4 MiB chunk);
//! - the **receive region** ([`RdmaPoolConfig::rx_slabs`] slabs of [`SLAB`] bytes, 32 by
//!   default), each slab registered for remote write as its own memory region: each
//!   connection reserves up to `EndpointConfig::receive_slabs` slabs at setup and
//!   advertises them to its peer, which RDMA WRITEs large payloads straight into them
//!   ([`crate::rdma::zerocopy`]). A written slab is handed up from `recv` as [`Bytes`] over the
//!   slab itself and re-advertised once the user has dropped them.
//!
//! # Returning memory
//! A chunk or slab handed to the user is tracked by a [`Keep`] inside its `Bytes` owner. The
//! keep is `Send`: dropping it on any thread pushes the chunk onto a lock-free queue
//! ([`crossbeam_queue::SegQueue`]) and wakes the core's return task, which puts send chunks
//! back on their free list and gives slabs back to their connection (to re-advertise) or, if
//! it is gone, to the free list. `alloc` drains the queue too, so a chunk dropped on the
//! owning core is reusable at once. (Returns on the owning core take the same queue rather
//! than a separate core-local list: one uncontended push, and one code path.)
//!
//! Both areas are owned by an `Arc` ([`Shared`]) that every keep holds: the memory stays
//! mapped until the last chunk is back, even if the core's RDMA state (and with it the memory
//! regions, which are deregistered first) is gone. Nothing reads or writes a chunk through
//! the pool while it is out: the user's `TxBuf`/`Bytes` is its only accessor.
//!
//! # Trust
//! Each slab is its own memory region, and its rkey is only ever advertised to the connection
//! that reserved it. When a slab goes back to the free list (its connection closed or moved
//! away), it is registered afresh and the old region deregistered, so the key its former
//! peer knew is dead before another connection can be given the slab: a WRITE with it fails
//! on the adapter (remote access error, the writer's QP goes to the error state). A peer
//! can therefore only write into slabs of its own connection. Within a connection a peer
//! could still overwrite a slab whose payload the user holds (only memory windows,
//! invalidated per payload, would close that, at a cost per message); the send pool has no
//! remote access, so a peer can never change what this core sends.

use std::cell::RefCell;
use std::future::poll_fn;
use std::ptr::NonNull;
use std::rc::{Rc, Weak};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, Waker};

use bytes::Bytes;
use crossbeam_queue::SegQueue;

use crate::error::{Result, TransportError};
use crate::rdma::budget::{RdmaPoolConfig, SLAB_BYTES, TX_CHUNK_BYTES};
use crate::rdma::conn::Conn;
use crate::rdma::core::CoreRdma;
use crate::rdma::hugemem::{PoolBacking, PoolMem};
use crate::rdma::verbs::{Access, MemoryRegion, ProtectionDomain, RemoteBuf};
use crate::txbuf::TxBuf;

/// Smallest payload piece that goes by RDMA WRITE (and smallest `alloc` from the pool).
pub(crate) const ZC_MIN: usize = 16 << 10;
/// Size of one receive slab (the largest single WRITE this side accepts).
pub(crate) const SLAB: usize = SLAB_BYTES;

/// Where a core's pool lives (a test and benchmark hook: `RdmaEndpoint::pool_info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RdmaPoolInfo {
    /// How the pages were obtained: the weaker of the two areas.
    pub backing: PoolBacking,
    /// The NUMA node both areas prefer (None: no policy, the node of the NIC is unknown).
    pub numa_node: Option<usize>,
    /// Bytes mapped for both areas.
    pub bytes: usize,
    /// Receive slabs of the core (registered ones: a slab whose re-registration failed is
    /// retired).
    pub rx_slabs: u32,
    /// Receive slabs free (neither reserved by a connection nor held by a user).
    pub rx_free: u32,
}

fn pool_err(area: &str, len: usize, e: std::io::Error) -> TransportError {
    TransportError::Unavailable {
        what: format!("rdma: cannot map the {len}-byte {area} area of the core's pool: {e}"),
    }
}

/// What a dropped [`Keep`] gives back.
#[derive(Debug, Clone, Copy)]
enum Ret {
    Tx(u32),
    Rx(u32),
}

/// The memory of both areas and the return queue; shared with every [`Keep`].
pub(crate) struct Shared {
    tx: PoolMem,
    rx: PoolMem,
    returns: SegQueue<Ret>,
    waker: Mutex<Option<Waker>>,
}

impl Shared {
    fn give_back(&self, r: Ret) {
        self.returns.push(r);
        let w = self
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(w) = w {
            w.wake();
        }
    }
}

/// Returns its chunk to the pool when dropped (on any thread); keeps the memory mapped.
struct Keep {
    shared: Arc<Shared>,
    ret: Ret,
}

impl Drop for Keep {
    fn drop(&mut self) {
        self.shared.give_back(self.ret);
    }
}

/// The `Bytes` owner of a received slab.
struct RxOwner {
    ptr: NonNull<u8>,
    len: usize,
    _keep: Keep,
}

// SAFETY: `ptr` points into the receive area kept mapped by `_keep`; the slab was written by
// the adapter, its completion polled, and it is not advertised again until `_keep` is
// dropped, so nothing writes it while this owner (shared read-only by `Bytes`) lives.
unsafe impl Send for RxOwner {}
impl AsRef<[u8]> for RxOwner {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr + len` lies in one slab of the mapped receive area (checked when
        // the owner was made) and is not written while the owner lives (see `Send`).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

/// The pool of one core; see the module docs.
pub(crate) struct Pool {
    // The regions before `shared`: deregistered before the memory can be freed.
    tx_mr: MemoryRegion,
    /// One region per receive slab (None: retired, its re-registration failed).
    rx_mrs: RefCell<Vec<Option<MemoryRegion>>>,
    shared: Arc<Shared>,
    pd: Rc<ProtectionDomain>,
    /// Offset and class of every send chunk, by index.
    chunks: Vec<(usize, usize)>,
    /// Free send chunks, per class.
    free: RefCell<Vec<Vec<u32>>>,
    rx_free: RefCell<Vec<u32>>,
    /// The connection each slab is reserved by (dangling: none).
    rx_owner: RefCell<Vec<Weak<Conn>>>,
}

impl Pool {
    /// Allocates both areas of `cfg`'s sizes (huge pages where possible, preferring NUMA
    /// node `node`: the NIC's, see [`crate::rdma::hugemem`]) and registers them in `pd`.
    /// `cfg` is within its bounds: [`crate::rdma::budget::pool_config`] only hands out
    /// configurations `set_pool_config` validated.
    pub fn new(
        pd: &Rc<ProtectionDomain>,
        node: Option<usize>,
        cfg: &RdmaPoolConfig,
    ) -> Result<Pool> {
        let mut chunks = Vec::new();
        let mut free = Vec::new();
        let mut off = 0;
        for (class, (&size, n)) in TX_CHUNK_BYTES.iter().zip(cfg.tx_chunks).enumerate() {
            let mut list = Vec::new();
            for _ in 0..n {
                list.push(chunks.len() as u32);
                chunks.push((off, class));
                off += size;
            }
            list.reverse();
            free.push(list);
        }
        let rx_len = cfg.rx_bytes();
        let shared = Arc::new(Shared {
            // An empty area (a size of 0) still maps one page: never handed out.
            tx: PoolMem::map(off.max(1), node).map_err(|e| pool_err("send", off, e))?,
            rx: PoolMem::map(rx_len.max(1), node).map_err(|e| pool_err("receive", rx_len, e))?,
            returns: SegQueue::new(),
            waker: Mutex::new(None),
        });
        // SAFETY: both areas are valid for reads and writes of their length and stay
        // allocated while `shared` lives, which outlives the regions (field order of `Pool`,
        // and `Keep`s hold it too). Chunks are accessed through Rust references only while
        // handed out (never while a work request names them: sends keep a clone of the
        // `Bytes` until completion; slabs are handed out only after their WRITE completed).
        let tx_mr = unsafe {
            MemoryRegion::register_raw(
                pd,
                shared.tx.ptr().as_ptr(),
                shared.tx.len(),
                Access::LOCAL_WRITE,
            )?
        };
        let pool = Pool {
            tx_mr,
            rx_mrs: RefCell::new(Vec::new()),
            shared,
            pd: Rc::clone(pd),
            chunks,
            free: RefCell::new(free),
            rx_free: RefCell::new((0..cfg.rx_slabs).rev().collect()),
            rx_owner: RefCell::new((0..cfg.rx_slabs).map(|_| Weak::new()).collect()),
        };
        let mrs = (0..cfg.rx_slabs)
            .map(|s| pool.register_slab(s).map(Some))
            .collect::<Result<_>>()?;
        *pool.rx_mrs.borrow_mut() = mrs;
        Ok(pool)
    }

    /// A fresh memory region over slab `s` (remote write), with keys of its own.
    fn register_slab(&self, s: u32) -> Result<MemoryRegion> {
        debug_assert!((s as usize + 1) * SLAB <= self.shared.rx.len());
        // SAFETY: slab `s` lies inside the receive area (`s` < the slab count, which sized
        // the area), valid for reads and writes while `shared` lives, which outlives every
        // region (field order of `Pool`). The slab is accessed through Rust references only
        // while handed out as `Bytes` after its WRITE completed, never while advertised.
        unsafe {
            MemoryRegion::register_raw(
                &self.pd,
                self.shared.rx.ptr().as_ptr().add(s as usize * SLAB),
                SLAB,
                Access::LOCAL_WRITE | Access::REMOTE_WRITE,
            )
        }
    }

    /// The number of receive slabs (registered or retired).
    fn rx_slabs(&self) -> u32 {
        self.rx_owner.borrow().len() as u32
    }

    /// Where the pool's memory lives.
    pub fn info(&self) -> RdmaPoolInfo {
        let (tx, rx) = (&self.shared.tx, &self.shared.rx);
        RdmaPoolInfo {
            backing: tx.backing().min(rx.backing()),
            numa_node: tx.node().and(rx.node()),
            bytes: tx.len() + rx.len(),
            rx_slabs: self.rx_mrs.borrow().iter().flatten().count() as u32,
            rx_free: self.rx_free.borrow().len() as u32,
        }
    }

    /// A `len`-byte send buffer in the pool, or on the heap (see the module docs).
    pub fn alloc(&self, core: &CoreRdma, len: usize) -> TxBuf {
        self.drain_returns(core);
        let Some(class) = TX_CHUNK_BYTES.iter().position(|&size| len <= size) else {
            return TxBuf::heap(len);
        };
        if len < ZC_MIN {
            return TxBuf::heap(len);
        }
        let Some(i) = self.free.borrow_mut()[class].pop() else {
            return TxBuf::heap(len);
        };
        let (off, _) = self.chunks[i as usize];
        // SAFETY: `off` plus the class size lies inside the send area (built in `new`).
        let ptr = unsafe { NonNull::new_unchecked(self.shared.tx.ptr().as_ptr().add(off)) };
        let keep = Keep {
            shared: self.shared.clone(),
            ret: Ret::Tx(i),
        };
        // SAFETY: chunk `i` (at least `len` bytes at `ptr`, zeroed or holding older payloads:
        // initialised) was just taken off the free list, so nothing else accesses it: no
        // posted work request names it (a send keeps its `Bytes`, and so the keep, until the
        // completion) and the pool hands it out again only after `keep` has been dropped.
        // `keep` holds the area mapped. The adapter only reads it after a send.
        unsafe { TxBuf::registered(ptr, len, Box::new(keep)) }
    }

    /// The local key under which the adapter may read `b`, if `b` lies in this pool (either
    /// area) and is long enough to go by RDMA WRITE.
    pub fn lkey_of(&self, b: &Bytes) -> Option<u32> {
        if b.len() < ZC_MIN {
            return None;
        }
        if self.shared.tx.contains(b.as_ptr(), b.len()) {
            Some(self.tx_mr.lkey())
        } else if self.shared.rx.contains(b.as_ptr(), b.len()) {
            // A slab's own region covers it only if the bytes do not cross into the next.
            let off = b.as_ptr() as usize - self.shared.rx.ptr().as_ptr() as usize;
            let s = off / SLAB;
            if (off + b.len() - 1) / SLAB != s {
                return None;
            }
            self.rx_mrs
                .borrow()
                .get(s)?
                .as_ref()
                .map(MemoryRegion::lkey)
        } else {
            None
        }
    }

    /// Reserves up to `n` receive slabs (for a connection being set up; owner set later).
    pub fn reserve_rx(&self, n: u32) -> Vec<u32> {
        let mut free = self.rx_free.borrow_mut();
        let k = free.len().saturating_sub(n as usize);
        free.split_off(k)
    }

    /// Records `conn` as the owner of `slabs` (their returns go to it).
    pub fn adopt_rx(&self, slabs: &[u32], conn: &Rc<Conn>) {
        let mut owner = self.rx_owner.borrow_mut();
        for &s in slabs {
            owner[s as usize] = Rc::downgrade(conn);
        }
    }

    /// Puts slabs no posted or advertised use can touch any more back on the free list,
    /// each under a fresh memory region: the rkey its last connection's peer knew dies here
    /// (see the module docs). A slab whose re-registration fails is retired (logged), never
    /// handed out under its old key.
    pub fn release_rx(&self, slabs: impl IntoIterator<Item = u32>) {
        for s in slabs {
            self.rx_owner.borrow_mut()[s as usize] = Weak::new();
            // Register the new region before the old one goes: both live at once, so the
            // adapter cannot give the new one the old keys.
            let fresh = match self.register_slab(s) {
                Ok(mr) => Some(mr),
                Err(e) => {
                    tracing::warn!(slab = s, error = %e, "rdma: receive slab retired: cannot re-register it");
                    None
                }
            };
            let usable = fresh.is_some();
            self.rx_mrs.borrow_mut()[s as usize] = fresh; // the old region goes here
            if usable {
                self.rx_free.borrow_mut().push(s);
            }
        }
    }

    /// Slab `s` as a buffer the peer may write: the slab's own region and rkey.
    ///
    /// # Panics
    /// If `s` is retired: only reserved slabs, taken from the free list, are advertised.
    pub fn remote(&self, s: u32) -> RemoteBuf {
        let mrs = self.rx_mrs.borrow();
        let mr = mrs[s as usize]
            .as_ref()
            .expect("a reserved receive slab is registered");
        RemoteBuf {
            addr: mr.as_ptr() as u64,
            rkey: mr.rkey(),
            len: SLAB as u64,
        }
    }

    /// The first `len` bytes of slab `s`, handed out without a copy.
    ///
    /// # Safety
    /// The WRITE into the slab has completed (its completion was polled), the slab is not
    /// advertised again until the returned `Bytes` (and its clones) are all dropped, and
    /// `len <= SLAB`.
    pub unsafe fn rx_bytes(&self, s: u32, len: usize) -> Bytes {
        assert!(s < self.rx_slabs() && len <= SLAB);
        // SAFETY: slab `s` lies inside the receive area (`s` < the slab count).
        let ptr =
            unsafe { NonNull::new_unchecked(self.shared.rx.ptr().as_ptr().add(s as usize * SLAB)) };
        Bytes::from_owner(RxOwner {
            ptr,
            len,
            _keep: Keep {
                shared: self.shared.clone(),
                ret: Ret::Rx(s),
            },
        })
    }

    /// Copies the first `len` bytes of slab `s` out (a hand-off carries them).
    ///
    /// # Safety
    /// As [`Pool::rx_bytes`]; the slab is released by the caller afterwards.
    pub unsafe fn rx_copy(&self, s: u32, len: usize, out: &mut bytes::BytesMut) {
        assert!(s < self.rx_slabs() && len <= SLAB);
        // SAFETY: inside the receive area; written and completed, not posted (contract).
        let src = unsafe {
            std::slice::from_raw_parts(self.shared.rx.ptr().as_ptr().add(s as usize * SLAB), len)
        };
        out.extend_from_slice(src);
    }

    /// Takes back what dropped keeps returned.
    pub fn drain_returns(&self, core: &CoreRdma) {
        while let Some(r) = self.shared.returns.pop() {
            match r {
                Ret::Tx(i) => {
                    let (_, class) = self.chunks[i as usize];
                    self.free.borrow_mut()[class].push(i);
                }
                Ret::Rx(s) => {
                    let owner = self.rx_owner.borrow()[s as usize].upgrade();
                    if !owner.is_some_and(|c| c.slab_returned(core, s)) {
                        self.release_rx([s]);
                    }
                }
            }
        }
    }

    fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }
}

/// The core's return task: drains the return queue whenever a keep is dropped (on any
/// thread), until the core's RDMA state is gone.
pub(crate) async fn returns_task(core: Weak<CoreRdma>) {
    let Some(shared) = core.upgrade().and_then(|c| c.zc.as_ref().map(Pool::shared)) else {
        return;
    };
    poll_fn(|cx| loop {
        let Some(core) = core.upgrade() else {
            return Poll::Ready(());
        };
        if let Some(p) = &core.zc {
            p.drain_returns(&core);
        }
        *shared.waker.lock().unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
        if shared.returns.is_empty() {
            return Poll::Pending;
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rdma::hugemem::HUGE_PAGE;

    #[test]
    fn keep_returns_on_any_thread() {
        let shared = Arc::new(Shared {
            tx: PoolMem::map(HUGE_PAGE, None).unwrap(),
            rx: PoolMem::map(HUGE_PAGE, None).unwrap(),
            returns: SegQueue::new(),
            waker: Mutex::new(None),
        });
        let k = Keep {
            shared: shared.clone(),
            ret: Ret::Tx(7),
        };
        std::thread::spawn(move || drop(k)).join().unwrap();
        assert!(matches!(shared.returns.pop(), Some(Ret::Tx(7))));
        assert!(shared.returns.pop().is_none());
    }
}
