//! Owned shared-memory mappings backed by a `memfd`.
//!
//! A region is created by one process with [`ShmRegion::create`], its fd is
//! sent to the peer over a Unix socket (`SCM_RIGHTS`), and the peer maps it with
//! [`ShmRegion::from_fd`]. Both sides then place rings
//! ([`crate::shm::ring`]) at offsets inside the region.
//!
//! # Protection against a hostile peer
//!
//! The peer can write anything into the mapped memory; that is the ring's
//! problem. What the region must prevent is the peer *shrinking* the file:
//! touching a page beyond the end of a truncated shared mapping raises
//! `SIGBUS`, which would kill this process. Therefore:
//!
//! * [`ShmRegion::create`] makes the memfd with `MFD_ALLOW_SEALING` and, after
//!   sizing it, adds `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`;
//! * [`ShmRegion::from_fd`] refuses an fd that does not carry `F_SEAL_SHRINK`
//!   (so it only accepts sealed memfds), that is not a regular file, or whose
//!   size is not exactly the expected length.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

/// Largest region that can be created or accepted from a peer (1 GiB).
pub const MAX_REGION_LEN: usize = 1 << 30;

/// Huge page size used for `MFD_HUGETLB` regions (the x86-64 default, 2 MiB).
pub const HUGE_PAGE_SIZE: usize = 2 << 20;

const HUGETLBFS_MAGIC: u64 = 0x9584_58f6;

/// Errors from creating or mapping a region.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// Length is zero or larger than [`MAX_REGION_LEN`].
    #[error("invalid shm region length {len} (must be 1..={max})")]
    BadLength { len: usize, max: usize },
    /// The name contains a NUL byte.
    #[error("shm region name contains a NUL byte")]
    BadName,
    /// The received fd's size differs from the expected length.
    #[error("shm fd has size {actual}, expected {expected}")]
    SizeMismatch { expected: usize, actual: u64 },
    /// The received fd is not a regular file (memfd).
    #[error("shm fd is not a regular file (st_mode {mode:#o})")]
    NotRegularFile { mode: u32 },
    /// The received fd is not sealed against shrinking.
    #[error("shm fd lacks F_SEAL_SHRINK (seals {seals:#x}); a peer could truncate it")]
    NotSealed { seals: i32 },
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Os {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

fn os_err(op: &'static str) -> RegionError {
    RegionError::Os {
        op,
        source: io::Error::last_os_error(),
    }
}

/// An owned `MAP_SHARED` read/write mapping of a memfd. Unmapped on drop.
#[derive(Debug)]
pub struct ShmRegion {
    ptr: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
    huge: bool,
}

// SAFETY: `ShmRegion` owns its mapping and fd; neither is tied to the creating
// thread. The raw pointer is only handed out, never dereferenced by the region.
unsafe impl Send for ShmRegion {}
// SAFETY: all `&self` methods only read immutable fields (pointer, length,
// fd, flag); access to the mapped bytes goes through raw pointers whose use is
// governed by the callers' own `unsafe` contracts.
unsafe impl Sync for ShmRegion {}

impl ShmRegion {
    /// Creates a sealed memfd of `len` bytes and maps it.
    ///
    /// With `huge` and `len` a multiple of [`HUGE_PAGE_SIZE`], tries
    /// `MFD_HUGETLB` first; if that memfd or its mapping fails (e.g. no huge
    /// pages configured), logs a warning and falls back to normal pages.
    /// [`ShmRegion::is_huge`] tells which one was obtained.
    pub fn create(name: &str, len: usize, huge: bool) -> Result<ShmRegion, RegionError> {
        check_len(len)?;
        let cname = CString::new(name).map_err(|_| RegionError::BadName)?;
        if huge {
            if !len.is_multiple_of(HUGE_PAGE_SIZE) {
                tracing::warn!(
                    len,
                    "shm region {name:?}: length not a multiple of 2 MiB, using normal pages"
                );
            } else {
                match Self::create_with(&cname, len, libc::MFD_HUGETLB) {
                    Ok(region) => return Ok(region),
                    Err(e) => tracing::warn!(
                        "shm region {name:?}: hugetlb memfd failed ({e}), using normal pages"
                    ),
                }
            }
        }
        Self::create_with(&cname, len, 0)
    }

    fn create_with(name: &CString, len: usize, extra: libc::c_uint) -> Result<Self, RegionError> {
        let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING | extra;
        // SAFETY: `name` is a valid NUL-terminated string for the duration of
        // the call; memfd_create does not retain the pointer.
        let raw = unsafe { libc::memfd_create(name.as_ptr(), flags) };
        if raw < 0 {
            return Err(os_err("memfd_create"));
        }
        // SAFETY: `raw` is a freshly created fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let len_off = libc::off_t::try_from(len).map_err(|_| RegionError::BadLength {
            len,
            max: MAX_REGION_LEN,
        })?;
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len_off) } != 0 {
            return Err(os_err("ftruncate"));
        }
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: plain fcntl on an fd we own; F_ADD_SEALS takes an int arg.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(os_err("fcntl(F_ADD_SEALS)"));
        }
        let ptr = map(&fd, len)?;
        Ok(ShmRegion {
            ptr,
            len,
            fd,
            huge: extra & libc::MFD_HUGETLB != 0,
        })
    }

    /// Maps an fd received from the peer.
    ///
    /// Fails unless the fd is a regular file sealed with `F_SEAL_SHRINK` whose
    /// size equals `expected_len` (itself at most [`MAX_REGION_LEN`]).
    pub fn from_fd(fd: OwnedFd, expected_len: usize) -> Result<ShmRegion, RegionError> {
        check_len(expected_len)?;
        // SAFETY: `libc::stat` is plain old data; all-zero is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a valid, writable `stat` buffer; the fd is owned.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(os_err("fstat"));
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(RegionError::NotRegularFile { mode: st.st_mode });
        }
        let actual = st.st_size as u64;
        if st.st_size < 0 || actual != expected_len as u64 {
            return Err(RegionError::SizeMismatch {
                expected: expected_len,
                actual,
            });
        }
        // SAFETY: plain fcntl on an fd we own; F_GET_SEALS takes no argument.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(RegionError::NotSealed { seals });
        }
        // SAFETY: `libc::statfs` is plain old data; all-zero is a valid value.
        let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: `sfs` is a valid, writable buffer; the fd is owned.
        let huge = unsafe { libc::fstatfs(fd.as_raw_fd(), &mut sfs) } == 0
            && (sfs.f_type as u64) & 0xffff_ffff == HUGETLBFS_MAGIC;
        let ptr = map(&fd, expected_len)?;
        Ok(ShmRegion {
            ptr,
            len: expected_len,
            fd,
            huge,
        })
    }

    /// Start of the mapping (page aligned).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length of the mapping in bytes (never zero).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: regions have a non-zero length.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Pointer to `offset..offset + len` inside the mapping, or `None` if that
    /// range does not fit.
    pub fn range_ptr(&self, offset: usize, len: usize) -> Option<*mut u8> {
        let end = offset.checked_add(len)?;
        // `wrapping_add` is fine: offset <= self.len keeps it inside the mapping.
        (end <= self.len).then(|| self.ptr.as_ptr().wrapping_add(offset))
    }

    /// The memfd (to send to the peer, or `try_clone_to_owned` it).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Whether the region is backed by huge pages.
    pub fn is_huge(&self) -> bool {
        self.huge
    }
}

impl Drop for ShmRegion {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe exactly the mapping created in `map`,
        // which is unmapped only here. Users of the memory were required (by
        // the ring's unsafe constructors) not to outlive the region.
        let rc = unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        if rc != 0 {
            tracing::warn!(
                "munmap of shm region failed: {}",
                io::Error::last_os_error()
            );
        }
    }
}

fn check_len(len: usize) -> Result<(), RegionError> {
    if len == 0 || len > MAX_REGION_LEN {
        return Err(RegionError::BadLength {
            len,
            max: MAX_REGION_LEN,
        });
    }
    Ok(())
}

fn map(fd: &OwnedFd, len: usize) -> Result<NonNull<u8>, RegionError> {
    // SAFETY: a fresh mapping at a kernel-chosen address; it aliases no Rust
    // object. Arguments are a valid fd and a non-zero length.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(os_err("mmap"));
    }
    NonNull::new(p.cast::<u8>()).ok_or_else(|| RegionError::Os {
        op: "mmap",
        source: io::Error::other("mmap returned NULL"),
    })
}
