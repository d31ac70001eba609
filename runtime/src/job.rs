//! [`Job`]: a `FnOnce() + Send` closure stored inline when it is small.
//!
//! Cross-core closures are usually a few words (a reply channel, a connection id, a buffer
//! handle). Boxing them costs an allocation on one core and a free on the other, plus a cache
//! line for the captured state apart from the queue slot. A `Job` keeps closures of up to
//! [`INLINE_WORDS`] words inline, so the whole job travels in its queue slot's cache line;
//! larger closures are boxed.

use std::mem::{align_of, size_of, ManuallyDrop, MaybeUninit};

/// Inline capacity in machine words (40 bytes on 64-bit: with two function pointers and the
/// ring's sequence number, a job fills one 64-byte slot).
pub(crate) const INLINE_WORDS: usize = 5;

type Storage = MaybeUninit<[usize; INLINE_WORDS]>;

/// A type-erased `FnOnce() + Send + 'static`.
pub(crate) struct Job {
    call: unsafe fn(*mut Storage),
    drop_fn: unsafe fn(*mut Storage),
    data: Storage,
}

// SAFETY: a Job only ever holds an `F: Send` (inline or boxed).
unsafe impl Send for Job {}

unsafe fn call_inline<F: FnOnce()>(p: *mut Storage) {
    // SAFETY: `p` holds an initialised F (checked to fit and be aligned in `Job::new`), read
    // out exactly once here; the caller forgets the Job so drop_fn never sees it again.
    let f = unsafe { p.cast::<F>().read() };
    f()
}

unsafe fn drop_inline<F>(p: *mut Storage) {
    // SAFETY: `p` holds an initialised F that was never read out (the Job was not run).
    unsafe { p.cast::<F>().drop_in_place() }
}

type Boxed = Box<dyn FnOnce() + Send>;

unsafe fn call_boxed(p: *mut Storage) {
    // SAFETY: `p` holds an initialised Box written by `Job::new`, read out exactly once.
    let f = unsafe { p.cast::<Boxed>().read() };
    f()
}

unsafe fn drop_boxed(p: *mut Storage) {
    // SAFETY: `p` holds an initialised Box that was never read out.
    unsafe { p.cast::<Boxed>().drop_in_place() }
}

impl Job {
    pub(crate) fn new<F: FnOnce() + Send + 'static>(f: F) -> Job {
        let mut data = Storage::uninit();
        if size_of::<F>() <= size_of::<Storage>() && align_of::<F>() <= align_of::<Storage>() {
            // SAFETY: F fits in the storage and its alignment divides the storage's.
            unsafe { data.as_mut_ptr().cast::<F>().write(f) };
            Job {
                call: call_inline::<F>,
                drop_fn: drop_inline::<F>,
                data,
            }
        } else {
            let b: Boxed = Box::new(f);
            // SAFETY: a Box<dyn ..> is two words, which fit in the storage with its alignment.
            unsafe { data.as_mut_ptr().cast::<Boxed>().write(b) };
            Job {
                call: call_boxed,
                drop_fn: drop_boxed,
                data,
            }
        }
    }

    /// Run the closure (consumes the job).
    pub(crate) fn run(self) {
        let mut me = ManuallyDrop::new(self);
        // SAFETY: the storage holds the closure `call` was built for; ManuallyDrop ensures
        // `drop_fn` does not run on the moved-out value afterwards.
        unsafe { (me.call)(&mut me.data) }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // SAFETY: a Job that is dropped (not run) still holds its closure.
        unsafe { (self.drop_fn)(&mut self.data) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn small_and_large_closures_run_once_and_drop_once() {
        let ran = Arc::new(AtomicUsize::new(0));
        let small = {
            let r = ran.clone();
            Job::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
            })
        };
        let big_payload = [7u64; 32];
        let large = {
            let r = ran.clone();
            Job::new(move || {
                r.fetch_add(big_payload.iter().sum::<u64>() as usize, Ordering::SeqCst);
            })
        };
        small.run();
        large.run();
        assert_eq!(ran.load(Ordering::SeqCst), 1 + 7 * 32);
        // Dropped without running: captured state is released.
        let probe = Arc::new(());
        let p = probe.clone();
        drop(Job::new(move || drop(p)));
        let p = probe.clone();
        drop(Job::new(move || {
            let _keep = (&p, big_payload);
        }));
        assert_eq!(Arc::strong_count(&probe), 1);
        assert_eq!(std::mem::size_of::<Job>(), 56);
    }
}
