//! Memory regions and scatter/gather entries.

use std::alloc::{self, Layout};
use std::fmt;
use std::io;
use std::ops::{BitOr, Range};
use std::ptr::NonNull;
use std::rc::Rc;

use rdma_sys::{ibv_access_flags, ibv_dereg_mr, ibv_mr, ibv_reg_mr};

use super::{rc_err, verbs_err, ProtectionDomain};
use crate::error::Result;

/// Access rights of a memory region (`enum ibv_access_flags`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access(u32);

impl Access {
    /// The adapter may write (receive into) it. Required by the remote-write/-atomic flags.
    pub const LOCAL_WRITE: Access = Access(ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0);
    /// The peer may RDMA WRITE into it (with the rkey).
    pub const REMOTE_WRITE: Access = Access(ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0);
    /// The peer may RDMA READ from it.
    pub const REMOTE_READ: Access = Access(ibv_access_flags::IBV_ACCESS_REMOTE_READ.0);
    /// Local use only, read by the adapter (send buffers).
    pub const NONE: Access = Access(0);

    pub fn bits(self) -> u32 {
        self.0
    }
}

impl BitOr for Access {
    type Output = Access;
    fn bitor(self, rhs: Access) -> Access {
        Access(self.0 | rhs.0)
    }
}

/// One scatter/gather element: registered memory by address, length and local key.
/// Built with [`MemoryRegion::sge`] (bounds-checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sge {
    pub addr: u64,
    pub len: u32,
    pub lkey: u32,
}

/// A remote buffer for RDMA WRITE/READ: the peer's virtual address and rkey. Exchanged out of
/// band (see [`MemoryRegion::remote`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteBuf {
    pub addr: u64,
    pub rkey: u32,
    pub len: u64,
}

impl RemoteBuf {
    /// The part of this buffer from `offset` on.
    ///
    /// # Panics
    /// If `offset` is past the end.
    pub fn offset(self, offset: u64) -> RemoteBuf {
        assert!(
            offset <= self.len,
            "offset {offset} past remote buffer of {}",
            self.len
        );
        RemoteBuf {
            addr: self.addr + offset,
            rkey: self.rkey,
            len: self.len - offset,
        }
    }
}

/// The memory under a region.
enum Backing {
    /// Allocated here, page-aligned, zeroed; freed after deregistration.
    Owned { ptr: NonNull<u8>, layout: Layout },
    /// A buffer handed over by the caller (from `Box::into_raw`); dropped after
    /// deregistration.
    Boxed(*mut [u8]),
    /// Memory the caller owns (see [`MemoryRegion::register_raw`]).
    Raw,
}

/// A registered memory region (`ibv_mr`) with its memory. Keeps its [`ProtectionDomain`]
/// alive; deregistered (`ibv_dereg_mr`) on drop, before any memory it owns is freed.
///
/// While a posted work request names part of the region (through an [`Sge`]), or while the
/// peer may RDMA WRITE into it, that part must not be accessed through
/// [`as_slice`](Self::as_slice)/[`as_mut_slice`](Self::as_mut_slice): the adapter reads or
/// writes it behind the compiler's back. The `unsafe` post calls carry that obligation.
pub struct MemoryRegion {
    mr: *mut ibv_mr,
    ptr: *mut u8,
    len: usize,
    backing: Backing,
    pd: Rc<ProtectionDomain>,
}

impl fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRegion")
            .field("addr", &self.ptr)
            .field("len", &self.len)
            .field("lkey", &self.lkey())
            .field("rkey", &self.rkey())
            .finish()
    }
}

const PAGE: usize = 4096;

impl MemoryRegion {
    /// Allocates `len` zeroed, page-aligned bytes and registers them.
    pub fn new(pd: &Rc<ProtectionDomain>, len: usize, access: Access) -> Result<MemoryRegion> {
        let layout = Layout::from_size_align(len.max(1), PAGE).map_err(|e| {
            verbs_err(
                "ibv_reg_mr",
                io::Error::other(e),
                format!("{len}-byte buffer"),
            )
        })?;
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            alloc::handle_alloc_error(layout);
        };
        let backing = Backing::Owned { ptr, layout };
        // SAFETY: `ptr` is valid for reads and writes of `len` bytes and is freed only in
        // `Drop`, after deregistration.
        unsafe { MemoryRegion::register(pd, ptr.as_ptr(), len, access, backing) }
    }

    /// Registers a buffer the region then owns (it is dropped after deregistration).
    pub fn from_box(
        pd: &Rc<ProtectionDomain>,
        buf: Box<[u8]>,
        access: Access,
    ) -> Result<MemoryRegion> {
        let len = buf.len();
        let raw = Box::into_raw(buf);
        // SAFETY: `raw` is the leaked box's memory, valid for `len` bytes until `Drop`
        // rebuilds and drops the box, after deregistration.
        unsafe { MemoryRegion::register(pd, raw.cast::<u8>(), len, access, Backing::Boxed(raw)) }
    }

    /// Registers memory the caller owns.
    ///
    /// # Safety
    /// `ptr` must be valid for reads and writes of `len` bytes for as long as the region (and
    /// any work request naming it) lives, must not be freed or unmapped before that, and must
    /// not be accessed through other references while a slice from
    /// [`as_slice`](Self::as_slice)/[`as_mut_slice`](Self::as_mut_slice) is alive.
    pub unsafe fn register_raw(
        pd: &Rc<ProtectionDomain>,
        ptr: *mut u8,
        len: usize,
        access: Access,
    ) -> Result<MemoryRegion> {
        // SAFETY: forwarded to the caller's contract above.
        unsafe { MemoryRegion::register(pd, ptr, len, access, Backing::Raw) }
    }

    /// # Safety
    /// `ptr..ptr+len` is valid for reads and writes while `backing` is alive (or, for
    /// `Backing::Raw`, per [`MemoryRegion::register_raw`]).
    unsafe fn register(
        pd: &Rc<ProtectionDomain>,
        ptr: *mut u8,
        len: usize,
        access: Access,
        backing: Backing,
    ) -> Result<MemoryRegion> {
        let access_i = i32::try_from(access.0).expect("access flags fit in c_int");
        // SAFETY: `pd` is a live PD; the caller guarantees the memory range. The kernel pins
        // the pages; the MR is deregistered before the memory is released (see `Drop`).
        let mr = unsafe { ibv_reg_mr(pd.as_ptr(), ptr.cast(), len, access_i) };
        if mr.is_null() {
            let e = io::Error::last_os_error();
            let hint = if e.raw_os_error() == Some(libc::ENOMEM) {
                " (RLIMIT_MEMLOCK too low? see `ulimit -l`)"
            } else {
                ""
            };
            let detail = format!(
                "device {}: {len} bytes at {ptr:p}, access {access:?}{hint}",
                pd.context().name()
            );
            let mr = MemoryRegion {
                mr,
                ptr,
                len,
                backing,
                pd: Rc::clone(pd),
            };
            drop(mr); // frees owned memory; `mr` is NULL so nothing is deregistered
            return Err(verbs_err("ibv_reg_mr", e, detail));
        }
        Ok(MemoryRegion {
            mr,
            ptr,
            len,
            backing,
            pd: Rc::clone(pd),
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub fn lkey(&self) -> u32 {
        // SAFETY: `mr` is a registered region (non-NULL outside of `register`'s error path,
        // which never returns the value).
        unsafe { (*self.mr).lkey }
    }

    pub fn rkey(&self) -> u32 {
        // SAFETY: as in `lkey`.
        unsafe { (*self.mr).rkey }
    }

    pub fn pd(&self) -> &Rc<ProtectionDomain> {
        &self.pd
    }

    /// The whole region as a [`RemoteBuf`] to hand to the peer.
    pub fn remote(&self) -> RemoteBuf {
        RemoteBuf {
            addr: self.ptr as u64,
            rkey: self.rkey(),
            len: self.len as u64,
        }
    }

    /// A scatter/gather entry for `range` of this region.
    ///
    /// # Panics
    /// If `range` is out of bounds or longer than `u32::MAX`.
    pub fn sge(&self, range: Range<usize>) -> Sge {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "sge {range:?} out of a {}-byte region",
            self.len
        );
        Sge {
            addr: self.ptr as u64 + range.start as u64,
            len: u32::try_from(range.end - range.start).expect("sge longer than 4 GiB"),
            lkey: self.lkey(),
        }
    }

    /// The region's bytes. See the type's note on memory the adapter may be accessing.
    pub fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` is valid for `len` bytes while `self` lives (owned backing, or the
        // `register_raw` contract); no `&mut` to it can coexist with `&self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The region's bytes, mutable. See the type's note on memory the adapter may be
    /// accessing.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: as in `as_slice`; `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        if !self.mr.is_null() {
            // SAFETY: `mr` came from `ibv_reg_mr` and is deregistered once, while its PD is
            // alive (the `pd` field is dropped after this) and before the memory is freed.
            let rc = unsafe { ibv_dereg_mr(self.mr) };
            if rc != 0 {
                tracing::warn!(error = %rc_err(rc), "rdma: ibv_dereg_mr failed");
            }
        }
        match self.backing {
            Backing::Owned { ptr, layout } => {
                // SAFETY: allocated in `new` with this layout, freed exactly once, and no
                // longer registered with the adapter.
                unsafe { alloc::dealloc(ptr.as_ptr(), layout) };
            }
            Backing::Boxed(raw) => {
                // SAFETY: `raw` came from `Box::into_raw` in `from_box` and is turned back
                // into a box exactly once, after deregistration.
                drop(unsafe { Box::from_raw(raw) });
            }
            Backing::Raw => {}
        }
    }
}
