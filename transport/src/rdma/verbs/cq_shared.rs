//! A completion queue polled by another thread: the thread-safe handle that thread uses
//! ([`SharedCq`]), and the hook through which the CQ's owner then takes its completions
//! ([`CompletionSource`], installed with [`CompletionQueue::set_source`]).
//!
//! Only the `dispatch = central` comparison mode of the RDMA stack uses this (one dispatcher
//! thread polling every core's CQ, as Ceph's `RDMADispatcher` does); the default mode polls
//! each CQ on its own core and never creates a handle.

use std::os::fd::RawFd;

use rdma_sys::{
    ibv_ack_cq_events, ibv_comp_channel, ibv_cq, ibv_poll_cq, ibv_req_notify_cq, ibv_wc,
};

use super::cq::next_cq_event;
use super::{rc_err, verbs_err, CompletionQueue, WorkCompletion};
use crate::error::Result;

/// Where a [`CompletionQueue`] whose hardware queue another thread polls gets its completions
/// from: [`CompletionQueue::poll`] (and the drain of a queue pair being destroyed) take them
/// from here instead of calling `ibv_poll_cq`.
///
/// The source is dropped first when the CQ is dropped, before `ibv_destroy_cq`: a source that
/// owns the other thread's registration of the CQ ends that thread's use of it there.
pub(crate) trait CompletionSource {
    /// Moves up to `out.len()` completions to the front of `out`; returns how many.
    fn take(&self, out: &mut [WorkCompletion]) -> usize;
}

/// A raw, thread-safe handle on a live CQ and its completion channel, for polling, arming
/// and reading events from a thread other than the CQ's owner. It does not keep the CQ alive:
/// see [`CompletionQueue::shared`] for the contract.
pub(crate) struct SharedCq {
    cq: *mut ibv_cq,
    channel: *mut ibv_comp_channel,
    dev: String,
}

// SAFETY: the handle is two pointers into libibverbs objects plus a name. libibverbs verbs are
// thread-safe (rdma-core: "all verbs are thread safe"; providers such as rxe and mlx5 take the
// CQ's own lock in `ibv_poll_cq` and `ibv_req_notify_cq`, and `ibv_get_cq_event` /
// `ibv_ack_cq_events` are a `read` on the channel fd and a mutex-protected counter), so calling
// them from any one thread, or several, while the owner posts to queue pairs on this CQ is
// allowed. Liveness is not the type's business: whoever creates a handle (an `unsafe` call)
// promises it is not used after the CQ is destroyed.
unsafe impl Send for SharedCq {}
// SAFETY: every method takes `&self` and only calls the thread-safe verbs above; the struct
// has no interior state of its own.
unsafe impl Sync for SharedCq {}

impl SharedCq {
    /// `ibv_poll_cq` for up to `out.len()` completions; returns how many were written.
    pub fn poll(&self, out: &mut [WorkCompletion]) -> Result<usize> {
        let max = i32::try_from(out.len()).unwrap_or(i32::MAX);
        // SAFETY: the CQ is live (the `shared` contract); `out` is `max` writable `ibv_wc`s
        // (`WorkCompletion` is `repr(transparent)` over `ibv_wc`).
        let rc = unsafe { ibv_poll_cq(self.cq, max, out.as_mut_ptr().cast::<ibv_wc>()) };
        if rc < 0 {
            return Err(verbs_err(
                "ibv_poll_cq",
                rc_err(-rc),
                format!("device {} (dispatcher)", self.dev),
            ));
        }
        Ok(rc as usize)
    }

    /// Arms the CQ: its next completion makes [`channel_fd`](Self::channel_fd) readable.
    pub fn req_notify(&self) -> Result<()> {
        // SAFETY: the CQ is live and has a completion channel.
        let rc = unsafe { ibv_req_notify_cq(self.cq, 0) };
        if rc != 0 {
            return Err(verbs_err(
                "ibv_req_notify_cq",
                rc_err(rc),
                format!("device {} (dispatcher)", self.dev),
            ));
        }
        Ok(())
    }

    /// Reads every pending event of the (non-blocking) channel and acknowledges each at once,
    /// so no event is left unacknowledged when the handle's user lets go of the CQ (and
    /// `ibv_destroy_cq`, which waits for acknowledgements, cannot hang). Returns how many.
    pub fn take_events(&self) -> Result<u32> {
        let mut n = 0;
        loop {
            // SAFETY: the channel is live and non-blocking (set in `CompletionQueue::new`).
            let next = unsafe {
                next_cq_event(self.channel, || format!("device {} (dispatcher)", self.dev))
            };
            let Some(ev_cq) = next? else {
                return Ok(n);
            };
            // SAFETY: the channel serves this CQ alone, so the event is for `ev_cq == cq`,
            // which is live; one event was received and is acknowledged once.
            unsafe { ibv_ack_cq_events(ev_cq, 1) };
            n += 1;
        }
    }

    /// The completion channel's fd; valid while the CQ lives.
    pub fn channel_fd(&self) -> RawFd {
        // SAFETY: the channel is live (the `shared` contract).
        unsafe { (*self.channel).fd }
    }
}

impl CompletionQueue {
    /// A thread-safe handle on this CQ, for a thread that polls it on the owner's behalf.
    ///
    /// # Safety
    /// Every use of the handle, on every thread, must end before this CQ is dropped. Owning
    /// the handle (or the registration holding it) in the [`CompletionSource`] installed with
    /// [`set_source`](Self::set_source) does that when dropping the source ends the use
    /// synchronously: the source is dropped before the CQ is destroyed.
    pub(crate) unsafe fn shared(&self) -> SharedCq {
        SharedCq {
            cq: self.as_ptr(),
            channel: self.channel_ptr(),
            dev: self.context().name().to_string(),
        }
    }
}
