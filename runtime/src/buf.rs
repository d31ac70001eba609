//! Buffers that can be handed to the kernel for an io_uring operation.
//!
//! The operation takes the buffer by value and gives it back with the result
//! (`(io::Result<T>, B)`), because the kernel may write into it after the awaiting future is
//! gone.

/// A buffer the kernel can read from.
///
/// # Safety
/// `stable_ptr` must point at `bytes_init` initialised bytes that stay at the same address,
/// unchanged, while the value is moved, until it is dropped or mutably accessed.
pub unsafe trait IoBuf: Unpin + 'static {
    /// Pointer to the first byte.
    fn stable_ptr(&self) -> *const u8;
    /// Number of initialised bytes (what a write sends).
    fn bytes_init(&self) -> usize;
}

/// A buffer the kernel can write into, after its initialised part.
///
/// # Safety
/// As [`IoBuf`]; `stable_mut_ptr` points at `bytes_total` bytes of capacity, and `set_init`
/// may only be called with a length the kernel actually initialised.
pub unsafe trait IoBufMut: IoBuf {
    /// Pointer to the first byte of capacity.
    fn stable_mut_ptr(&mut self) -> *mut u8;
    /// Total capacity; reads fill `bytes_init()..bytes_total()`.
    fn bytes_total(&self) -> usize;
    /// Mark `len` bytes initialised.
    ///
    /// # Safety
    /// The first `len` bytes must be initialised.
    unsafe fn set_init(&mut self, len: usize);
}

// SAFETY: a Vec's heap buffer does not move when the Vec value moves.
unsafe impl IoBuf for Vec<u8> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: as above; the capacity is allocated and owned by the Vec.
unsafe impl IoBufMut for Vec<u8> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn bytes_total(&self) -> usize {
        self.capacity()
    }
    unsafe fn set_init(&mut self, len: usize) {
        if len > self.len() {
            // SAFETY: the caller guarantees `len` bytes are initialised and len <= capacity.
            unsafe { self.set_len(len) };
        }
    }
}

// SAFETY: a boxed slice's heap buffer does not move with the Box.
unsafe impl IoBuf for Box<[u8]> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: static data never moves and is never freed.
unsafe impl IoBuf for &'static [u8] {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: `Bytes` points at shared immutable storage (heap or static) that does not move with
// the handle.
unsafe impl IoBuf for bytes::Bytes {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: `BytesMut` owns a heap buffer that does not move with the handle.
unsafe impl IoBuf for bytes::BytesMut {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: as above; capacity belongs to this handle.
unsafe impl IoBufMut for bytes::BytesMut {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn bytes_total(&self) -> usize {
        self.capacity()
    }
    unsafe fn set_init(&mut self, len: usize) {
        if len > self.len() {
            // SAFETY: the caller guarantees `len` bytes are initialised and len <= capacity.
            unsafe { self.set_len(len) };
        }
    }
}
