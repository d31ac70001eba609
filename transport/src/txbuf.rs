//! Send buffers handed out by [`Endpoint::alloc`](crate::Endpoint::alloc): the zero-copy send
//! path.
//!
//! A [`TxBuf`] is a fixed-length, writable buffer. Write the payload into it, [`TxBuf::freeze`]
//! it into [`Bytes`] and send those (alone or inside a larger scatter/gather list, sliced or
//! not). Where the transport has memory the peer can read directly (the shm stack's buffer
//! area, the RDMA stack's registered pool) the buffer lives there, and a send of those bytes
//! passes a reference instead of copying them; elsewhere (TCP, a request too large for the
//! transport's memory, that memory being in use) it is plain heap memory and the send copies
//! as usual. [`TxBuf::is_registered`] tells which. Either way the bytes sent are exactly the
//! bytes written: a registered buffer is not reused until every `Bytes` made from it has been
//! dropped *and* the peer has finished reading it.
//!
//! Registered memory comes from a bounded region: hold buffers briefly (fill, freeze, send)
//! rather than keeping many unsent, or later `alloc` calls fall back to the heap.
//!
//! The contents of a fresh registered buffer are unspecified (older payloads of the same
//! connection); a heap buffer is zeroed.

use std::any::Any;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

use bytes::{Bytes, BytesMut};

/// A send buffer; see the module docs.
pub struct TxBuf {
    repr: Repr,
}

enum Repr {
    Heap(BytesMut),
    Registered(Registered),
}

/// Transport memory: `len` bytes at `ptr`, kept valid by `keep` (dropping `keep` tells the
/// transport the memory is no longer referenced from this process).
struct Registered {
    ptr: NonNull<u8>,
    len: usize,
    /// Only dropped: that is the signal.
    _keep: Box<dyn Any + Send>,
}

// SAFETY: `ptr` points into memory that `keep` keeps mapped and that is not tied to a thread;
// the transport hands the range out to exactly one `TxBuf` at a time (see
// `TxBuf::registered`), so moving the value moves the only access to it.
unsafe impl Send for Registered {}

impl AsRef<[u8]> for Registered {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr + len` is valid for reads while `keep` lives, which it does for as
        // long as `self` (see `TxBuf::registered`).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl TxBuf {
    /// A zeroed heap buffer of `len` bytes (sends of it are copied by the transport).
    pub fn heap(len: usize) -> TxBuf {
        TxBuf {
            repr: Repr::Heap(BytesMut::zeroed(len)),
        }
    }

    /// A buffer over transport memory.
    ///
    /// # Safety
    /// `ptr..ptr + len` must be initialised memory, valid for reads and writes for as long as
    /// `keep` lives, and not accessed through any other Rust reference of this process until
    /// `keep` is dropped (which happens when the `TxBuf`, or the last `Bytes` frozen from it,
    /// is dropped). Another process may read it (it is shared memory or registered with a
    /// NIC); the transport only lets the peer read it after a send.
    pub(crate) unsafe fn registered(
        ptr: NonNull<u8>,
        len: usize,
        keep: Box<dyn Any + Send>,
    ) -> TxBuf {
        TxBuf {
            repr: Repr::Registered(Registered {
                ptr,
                len,
                _keep: keep,
            }),
        }
    }

    /// Whether the buffer is transport memory (a send of it is zero-copy).
    pub fn is_registered(&self) -> bool {
        matches!(self.repr, Repr::Registered(_))
    }

    /// Shortens the buffer to `len` bytes (no effect if it is not longer).
    pub fn truncate(&mut self, len: usize) {
        match &mut self.repr {
            Repr::Heap(b) => b.truncate(len),
            Repr::Registered(r) => r.len = r.len.min(len),
        }
    }

    /// The written buffer as `Bytes`, ready to send (no copy).
    pub fn freeze(self) -> Bytes {
        match self.repr {
            Repr::Heap(b) => b.freeze(),
            Repr::Registered(r) => Bytes::from_owner(r),
        }
    }
}

impl Deref for TxBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.repr {
            Repr::Heap(b) => b,
            Repr::Registered(r) => r.as_ref(),
        }
    }
}

impl DerefMut for TxBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.repr {
            Repr::Heap(b) => b,
            // SAFETY: valid for writes while `keep` lives (constructor contract), and `&mut
            // self` makes this the only access from this process.
            Repr::Registered(r) => unsafe { std::slice::from_raw_parts_mut(r.ptr.as_ptr(), r.len) },
        }
    }
}

impl fmt::Debug for TxBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxBuf")
            .field("len", &self.len())
            .field("registered", &self.is_registered())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    struct Flag(Arc<AtomicBool>, #[allow(dead_code)] Box<[u8]>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn heap_is_zeroed_and_freezes() {
        let mut b = TxBuf::heap(5);
        assert!(!b.is_registered());
        assert_eq!(&b[..], &[0; 5]);
        b.copy_from_slice(b"hello");
        b.truncate(4);
        assert_eq!(b.freeze(), Bytes::from_static(b"hell"));
    }

    #[test]
    fn registered_keeps_memory_until_last_bytes_drop() {
        let dropped = Arc::new(AtomicBool::new(false));
        let mut mem = vec![0u8; 16].into_boxed_slice();
        let ptr = NonNull::new(mem.as_mut_ptr()).unwrap();
        // SAFETY: `mem` is moved into `keep` (a heap allocation does not move with its box),
        // so the range stays valid while `keep` lives, and nothing else references it.
        let mut b = unsafe { TxBuf::registered(ptr, 16, Box::new(Flag(dropped.clone(), mem))) };
        assert!(b.is_registered());
        b[..3].copy_from_slice(b"abc");
        b.truncate(3);
        let frozen = b.freeze();
        let slice = frozen.slice(1..);
        assert_eq!(frozen, Bytes::from_static(b"abc"));
        assert_eq!(frozen.as_ptr(), ptr.as_ptr().cast_const());
        drop(frozen);
        assert!(!dropped.load(Ordering::SeqCst));
        assert_eq!(slice, Bytes::from_static(b"bc"));
        drop(slice);
        assert!(dropped.load(Ordering::SeqCst));
    }
}
