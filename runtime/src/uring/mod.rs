//! The io_uring driver of one core: a [`Poller`] that flushes submissions and reaps completions,
//! and the core's one blocking wait when it parks.
//!
//! Kernel sockets complete into the ring's completion queue in user memory, so an idle spin
//! makes no system call: `io_uring_enter` is called only when there are submissions to flush,
//! or when the kernel flags deferred task work (`IORING_SETUP_COOP_TASKRUN` +
//! `IORING_SETUP_TASKRUN_FLAG`, so a spinning core is not interrupted by IPIs) or a CQ overflow.
//!
//! io_uring is required: when it cannot be set up, [`Uring::new`] fails with
//! [`RuntimeError::IoUringUnavailable`] naming the cause. There is no epoll fallback (a
//! silent fallback would hide a 2x performance cliff).
//!
//! Every operation owns the memory the kernel touches (buffers, iovecs, socket addresses) until
//! its completion is reaped, even if the future awaiting it is dropped: see [`op`].

pub(crate) mod op;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};
use slab::Slab;

use crate::error::{Result, RuntimeError};
use crate::poller::Poller;
use op::Slot;

/// user_data of cancellation requests (their completions are ignored).
const CANCEL_TAG: u64 = u64::MAX;
/// user_data bit marking park polls (interrupt fds); the low bits are the park key.
const PARK_TAG: u64 = 1 << 63;

pub(crate) struct Uring {
    ring: RefCell<IoUring>,
    pub(crate) slots: RefCell<Slab<Slot>>,
    unsubmitted: Cell<u32>,
    /// Park polls in flight: key -> fd.
    armed: RefCell<HashMap<u64, RawFd>>,
    /// Park keys whose poll completed since the last `park`.
    fired: RefCell<Vec<u64>>,
}

impl Uring {
    pub(crate) fn new(entries: u32) -> Result<Uring> {
        let ring = IoUring::builder()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_single_issuer()
            .setup_cqsize(entries * 8)
            .build(entries)
            .or_else(|e| {
                tracing::warn!(error = %e, "io_uring with COOP_TASKRUN/SINGLE_ISSUER failed; retrying plain");
                IoUring::builder().setup_cqsize(entries * 8).build(entries)
            })
            .map_err(|source| RuntimeError::IoUringUnavailable {
                context: format!("io_uring_setup with {entries} entries"),
                source,
            })?;
        Ok(Uring {
            ring: RefCell::new(ring),
            slots: RefCell::new(Slab::with_capacity(256)),
            unsubmitted: Cell::new(0),
            armed: RefCell::new(HashMap::new()),
            fired: RefCell::new(Vec::new()),
        })
    }

    /// Queue one SQE; it is flushed by the next `poll` (phase 5 of the loop).
    pub(crate) fn push(&self, sqe: &squeue::Entry) {
        let mut ring = self.ring.borrow_mut();
        loop {
            // SAFETY: every SQE pushed through here points only at memory owned by its slot
            // (see `op`), which outlives the operation; cancellation and park SQEs point at
            // nothing.
            if unsafe { ring.submission().push(sqe) }.is_ok() {
                break;
            }
            // SQ full: flush to the kernel and retry.
            if let Err(e) = ring.submit() {
                if e.raw_os_error() == Some(libc::EBUSY) {
                    drop(ring);
                    self.reap();
                    ring = self.ring.borrow_mut();
                } else {
                    tracing::error!(error = %e, "io_uring_enter failed while flushing a full SQ");
                }
            }
            self.unsubmitted.set(0);
        }
        self.unsubmitted.set(self.unsubmitted.get() + 1);
    }

    fn flush(&self) {
        let mut ring = self.ring.borrow_mut();
        let need = self.unsubmitted.get() > 0 || {
            let sq = ring.submission();
            sq.taskrun() || sq.cq_overflow()
        };
        if need {
            match ring.submit() {
                Ok(_) => self.unsubmitted.set(0),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EBUSY | libc::EAGAIN | libc::EINTR)
                    ) => {}
                Err(e) => tracing::error!(error = %e, "io_uring_enter failed"),
            }
        }
    }

    /// Reap completions; returns how many.
    fn reap(&self) -> usize {
        let mut ring = self.ring.borrow_mut();
        let mut slots = self.slots.borrow_mut();
        let mut n = 0;
        for cqe in ring.completion() {
            n += 1;
            let ud = cqe.user_data();
            if ud == CANCEL_TAG {
                continue;
            }
            if ud & PARK_TAG != 0 {
                let key = ud & !PARK_TAG;
                self.armed.borrow_mut().remove(&key);
                self.fired.borrow_mut().push(key);
                continue;
            }
            op::complete(&mut slots, ud as usize, cqe.result(), cqe.flags());
        }
        n
    }

    /// Ask the kernel to cancel the operation in `key` (its completion still arrives).
    pub(crate) fn cancel(&self, key: usize) {
        self.push(
            &opcode::AsyncCancel::new(key as u64)
                .build()
                .user_data(CANCEL_TAG),
        );
    }

    pub(crate) fn disarm_park_fd(&self, key: u64) {
        if self.armed.borrow().contains_key(&key) {
            self.push(
                &opcode::AsyncCancel::new(key | PARK_TAG)
                    .build()
                    .user_data(CANCEL_TAG),
            );
        }
    }

    /// Arm a poll on each park fd not armed yet, then block until a completion arrives or the
    /// timeout passes. Returns the park keys whose fds fired.
    pub(crate) fn park(
        &self,
        fds: &[(u64, RawFd)],
        timeout: Option<Duration>,
    ) -> io::Result<Vec<u64>> {
        for &(key, fd) in fds {
            let newly = self.armed.borrow_mut().insert(key, fd).is_none();
            if newly {
                let sqe = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
                    .build()
                    .user_data(key | PARK_TAG);
                self.push(&sqe);
            }
        }
        let ready = { !self.ring.borrow_mut().completion().is_empty() };
        if !ready {
            let ring = self.ring.borrow();
            let res = match timeout {
                Some(t) => {
                    let ts = types::Timespec::new()
                        .sec(t.as_secs())
                        .nsec(t.subsec_nanos());
                    let args = types::SubmitArgs::new().timespec(&ts);
                    ring.submitter().submit_with_args(1, &args)
                }
                None => ring.submitter().submit_and_wait(1),
            };
            self.unsubmitted.set(0);
            match res {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        self.reap();
        Ok(std::mem::take(&mut *self.fired.borrow_mut()))
    }

    /// Cancel everything in flight and wait (bounded) for the kernel to let go of the memory.
    pub(crate) fn shutdown(&self, limit: Duration) {
        let keys: Vec<usize> = self.slots.borrow().iter().map(|(k, _)| k).collect();
        for k in keys {
            self.cancel(k);
        }
        let armed: Vec<u64> = self.armed.borrow().keys().copied().collect();
        for key in armed {
            self.disarm_park_fd(key);
        }
        let deadline = Instant::now() + limit;
        loop {
            self.flush();
            self.reap();
            if self.slots.borrow().is_empty() && self.armed.borrow().is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                let left = self.slots.borrow().len();
                tracing::error!(
                    left,
                    "io_uring ops still in flight at shutdown; leaking their buffers"
                );
                // The kernel may still write into these buffers: never free them.
                std::mem::forget(std::mem::take(&mut *self.slots.borrow_mut()));
                return;
            }
            let ring = self.ring.borrow();
            let ts = types::Timespec::new().nsec(10_000_000);
            let _ = ring
                .submitter()
                .submit_with_args(1, &types::SubmitArgs::new().timespec(&ts));
        }
    }
}

impl Poller for Uring {
    #[inline]
    fn poll(&self) -> bool {
        self.flush();
        self.reap() > 0
    }

    fn try_enter_interrupt_mode(&self) -> bool {
        // Flush what phases 1-4 queued; veto if completions are already waiting.
        self.flush();
        self.ring.borrow_mut().completion().is_empty()
    }

    fn name(&self) -> &str {
        "io_uring"
    }
}
