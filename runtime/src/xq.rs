//! The core-to-core queue: a bounded single-producer single-consumer ring of 64-byte slots.
//!
//! Each slot carries a sequence number next to its value. The producer writes the value, then
//! publishes it by storing `seq = pos + 1` (Release); the consumer polls only the sequence of
//! the next slot (Acquire), takes the value and frees the slot for the next lap by storing
//! `seq = pos + capacity`. Producer and consumer positions are private to each side, so a
//! hop costs about two cache-line transfers (the producer's write invalidates the line the
//! consumer polls; the consumer's read fetches it), with no compare-and-swap and no fence;
//! one slot per cache line keeps the two sides off each other's lines.
//!
//! Single producer: only the owning source core pushes (enforced by the runtime, which gives
//! each source core its own ring). Single consumer: only the target core pops while it runs;
//! after the target has stopped, `drain_after_close` may be called by any thread, serialised
//! by a flag that the data path never touches.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

struct Slot<T> {
    seq: AtomicU64,
    val: UnsafeCell<MaybeUninit<T>>,
}

/// A bounded SPSC ring; see the module docs.
pub(crate) struct SpscRing<T> {
    slots: Box<[CachePadded<Slot<T>>]>,
    /// Producer position (written only by the producer).
    tail: CachePadded<AtomicU64>,
    /// Consumer position (written by the consumer, or by the drainer after close).
    head: CachePadded<AtomicU64>,
    draining: AtomicBool,
}

// SAFETY: values move from the producer thread to the consumer thread (T: Send); each slot's
// value is accessed by exactly one side at a time, handed over by the Release/Acquire pair on
// its sequence number.
unsafe impl<T: Send> Send for SpscRing<T> {}
// SAFETY: as above; shared access is limited to the SPSC protocol documented on the methods.
unsafe impl<T: Send> Sync for SpscRing<T> {}

impl<T> SpscRing<T> {
    /// A ring of at least `capacity` slots (rounded up to a power of two).
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1).next_power_of_two();
        SpscRing {
            slots: (0..capacity)
                .map(|i| {
                    CachePadded::new(Slot {
                        seq: AtomicU64::new(i as u64),
                        val: UnsafeCell::new(MaybeUninit::uninit()),
                    })
                })
                .collect(),
            tail: CachePadded::new(AtomicU64::new(0)),
            head: CachePadded::new(AtomicU64::new(0)),
            draining: AtomicBool::new(false),
        }
    }

    /// The slot of `pos`: the capacity is a power of two, so a mask, not a 64-bit division
    /// on every poll.
    fn slot(&self, pos: u64) -> &Slot<T> {
        &self.slots[(pos & (self.slots.len() as u64 - 1)) as usize]
    }

    /// Push; gives the value back when the ring is full. Producer only.
    #[inline]
    pub(crate) fn push(&self, v: T) -> Result<(), T> {
        let pos = self.tail.load(Ordering::Relaxed);
        let slot = self.slot(pos);
        if slot.seq.load(Ordering::Acquire) != pos {
            return Err(v); // the consumer has not freed this slot yet: full
        }
        // SAFETY: seq == pos means the consumer released this slot for lap `pos`; until we
        // publish it below, only this (single) producer touches the value.
        unsafe { (*slot.val.get()).write(v) };
        slot.seq.store(pos + 1, Ordering::Release);
        self.tail.store(pos + 1, Ordering::Relaxed);
        Ok(())
    }

    /// Pop. Consumer only (or the drainer, see `drain_after_close`).
    #[inline]
    pub(crate) fn pop(&self) -> Option<T> {
        let pos = self.head.load(Ordering::Relaxed);
        let slot = self.slot(pos);
        if slot.seq.load(Ordering::Acquire) != pos + 1 {
            return None;
        }
        // SAFETY: seq == pos + 1 was stored (Release) by the producer after it initialised
        // the value; our Acquire load makes that write visible, and until we release the slot
        // only this consumer reads it. The value is read out exactly once.
        let v = unsafe { (*slot.val.get()).assume_init_read() };
        slot.seq
            .store(pos + self.slots.len() as u64, Ordering::Release);
        self.head.store(pos + 1, Ordering::Relaxed);
        Some(v)
    }

    /// Whether a value is waiting (consumer's view; used before parking).
    pub(crate) fn is_empty(&self) -> bool {
        let pos = self.head.load(Ordering::Relaxed);
        self.slot(pos).seq.load(Ordering::Acquire) != pos + 1
    }

    /// Drop every queued value once the consumer core has stopped consuming. Any thread.
    pub(crate) fn drain_after_close(&self) -> bool {
        let mut any = false;
        while self
            .draining
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        while let Some(v) = self.pop() {
            drop(v);
            any = true;
        }
        self.draining.store(false, Ordering::Release);
        any
    }
}

impl<T> Drop for SpscRing<T> {
    fn drop(&mut self) {
        while self.pop().is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn fifo_full_and_wrap() {
        let r = SpscRing::new(4);
        for lap in 0..10u64 {
            for i in 0..4 {
                assert!(r.push(lap * 10 + i).is_ok());
            }
            assert_eq!(r.push(99), Err(99), "full");
            for i in 0..4 {
                assert_eq!(r.pop(), Some(lap * 10 + i));
            }
            assert_eq!(r.pop(), None);
            assert!(r.is_empty());
        }
    }

    #[test]
    fn two_threads_in_order() {
        let r = Arc::new(SpscRing::new(8));
        let r2 = r.clone();
        const N: u64 = 200_000;
        let c = std::thread::spawn(move || {
            let mut next = 0;
            while next < N {
                if let Some(v) = r2.pop() {
                    assert_eq!(v, next);
                    next += 1;
                }
            }
        });
        let mut i = 0;
        while i < N {
            if r.push(i).is_ok() {
                i += 1;
            }
        }
        c.join().unwrap();
    }

    #[test]
    fn drop_releases_queued_values() {
        let v = Arc::new(());
        let r = SpscRing::new(4);
        r.push(v.clone()).unwrap();
        r.push(v.clone()).unwrap();
        assert!(r.drain_after_close());
        assert_eq!(Arc::strong_count(&v), 1);
        r.push(v.clone()).unwrap();
        drop(r);
        assert_eq!(Arc::strong_count(&v), 1);
    }
}
