//! State of a core that other threads may touch: the external queues (one bounded ring per
//! source core, plus an unbounded queue for threads that are not cores), the queue of task
//! wake-ups from other threads, the parked flag and wake-up fd, and the counters.
//!
//! Core-to-core closures go through a dedicated single-producer single-consumer ring per
//! (source, target) pair ([`crate::xq`]): about two cache-line transfers per hop, where the
//! crossbeam queues (`SegQueue` shared by all senders, or one `ArrayQueue` per pair) measured
//! 1.2-1.9 µs per round trip here because of their shared indices, CAS and fences. Threads that
//! are not cores use a crossbeam `SegQueue`. When a ring is full the sender keeps the closure in a
//! core-local FIFO and flushes it later, in order (seastar's smp queue design), so a sender
//! never blocks and per-sender order holds.
//!
//! Wake-up protocol (Dekker style, no lost wake-up):
//! - a submitter pushes to a queue, issues a SeqCst fence, then reads `sleeping`; only if it is
//!   set does it clear it (swap) and write the eventfd. A spinning core is never sent a syscall.
//! - a core about to park stores `sleeping = true`, issues a SeqCst fence, then re-checks both
//!   queues; if either is non-empty it does not park.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, Ordering::SeqCst};

use async_task::Runnable;
use crossbeam_queue::SegQueue;
use crossbeam_utils::CachePadded;

use crate::error::{Result, RuntimeError};
use crate::stats::CoreCounters;
use crate::xq::SpscRing;

/// A closure submitted to a core from elsewhere (Ceph's external event).
pub(crate) type ExternalJob = crate::job::Job;

pub(crate) struct CoreShared {
    pub(crate) id: usize,
    pub(crate) cpu: usize,
    /// Closures from threads that are not cores of this runtime.
    pub(crate) external: CachePadded<SegQueue<ExternalJob>>,
    /// Closures from core `i` of this runtime, in `from_cores[i]`.
    pub(crate) from_cores: Box<[SpscRing<ExternalJob>]>,
    pub(crate) remote_runnables: CachePadded<SegQueue<Runnable>>,
    sleeping: CachePadded<AtomicBool>,
    /// Set once the core has stopped draining its queues; late task wake-ups are then leaked
    /// rather than dropped on a foreign thread.
    pub(crate) closed: AtomicBool,
    pub(crate) stop: AtomicBool,
    wake_fd: OwnedFd,
    pub(crate) counters: CachePadded<CoreCounters>,
}

impl CoreShared {
    pub(crate) fn new(id: usize, cpu: usize, cores: usize, depth: usize) -> Result<Self> {
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(RuntimeError::sys("eventfd"));
        }
        Ok(CoreShared {
            id,
            cpu,
            external: CachePadded::new(SegQueue::new()),
            from_cores: (0..cores).map(|_| SpscRing::new(depth)).collect(),
            remote_runnables: CachePadded::new(SegQueue::new()),
            sleeping: CachePadded::new(AtomicBool::new(false)),
            closed: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns.
            wake_fd: unsafe { OwnedFd::from_raw_fd(fd) },
            counters: CachePadded::new(CoreCounters::default()),
        })
    }

    pub(crate) fn wake_fd(&self) -> RawFd {
        self.wake_fd.as_raw_fd()
    }

    /// Called by any thread after pushing work for this core.
    #[inline]
    pub(crate) fn notify(&self) {
        fence(SeqCst);
        if self.sleeping.load(SeqCst) && self.sleeping.swap(false, SeqCst) {
            self.write_wake_fd();
        }
    }

    /// Unconditionally wake the core (used for shutdown).
    pub(crate) fn force_wake(&self) {
        self.sleeping.store(false, SeqCst);
        self.write_wake_fd();
    }

    fn write_wake_fd(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd. EAGAIN (counter saturated)
        // means a wake-up is already pending, which is all we want.
        unsafe {
            libc::write(
                self.wake_fd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// Drain the eventfd counter after a wake-up.
    pub(crate) fn clear_wake_fd(&self) {
        let mut buf: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64; EAGAIN just means nothing was pending.
        unsafe {
            libc::read(
                self.wake_fd.as_raw_fd(),
                (&mut buf as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// Core side: announce the intent to park. Returns false (and un-announces) if work arrived.
    pub(crate) fn prepare_park(&self) -> bool {
        self.sleeping.store(true, SeqCst);
        fence(SeqCst);
        if self.has_pending() {
            self.sleeping.store(false, SeqCst);
            return false;
        }
        true
    }

    /// Core side: done parking.
    pub(crate) fn end_park(&self) {
        self.sleeping.store(false, SeqCst);
    }

    #[inline]
    pub(crate) fn has_pending(&self) -> bool {
        !self.external.is_empty()
            || !self.remote_runnables.is_empty()
            || self.from_cores.iter().any(|q| !q.is_empty())
    }

    /// Drop every queued closure (they are `Send`, so any thread may do it). Only after the
    /// core has stopped consuming (`closed`), or on the core itself.
    pub(crate) fn drop_external(&self) -> bool {
        let mut any = false;
        while let Some(j) = self.external.pop() {
            drop(j);
            any = true;
        }
        for q in self.from_cores.iter() {
            any |= q.drain_after_close();
        }
        any
    }

    /// Push a task wake-up from another thread; see `executor` for the closed case.
    pub(crate) fn push_remote_runnable(&self, r: Runnable) {
        if self.closed.load(SeqCst) {
            // The core is gone: the task cannot be dropped here (it is !Send), so leak it.
            std::mem::forget(r);
            return;
        }
        self.remote_runnables.push(r);
        if self.closed.load(SeqCst) {
            // Raced with the core's final drain: take back whatever is left and leak it.
            while let Some(r) = self.remote_runnables.pop() {
                std::mem::forget(r);
            }
            return;
        }
        self.notify();
    }
}
