//! Completion queue with its completion channel, and work completions.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::CStr;
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::ptr;
use std::rc::Rc;

use rdma_sys::{
    ibv_ack_cq_events, ibv_comp_channel, ibv_cq, ibv_create_comp_channel, ibv_create_cq,
    ibv_destroy_comp_channel, ibv_destroy_cq, ibv_get_cq_event, ibv_poll_cq, ibv_req_notify_cq,
    ibv_wc, ibv_wc_flags, ibv_wc_opcode, ibv_wc_status, ibv_wc_status_str,
    imm_data_invalidated_rkey_union_t,
};

use super::cq_shared::CompletionSource;
use super::{rc_err, verbs_err, Context};
use crate::error::Result;

/// Completion events are acknowledged (`ibv_ack_cq_events`, which takes a mutex) in batches of
/// this many; the rest are acknowledged on drop, before the CQ is destroyed.
const ACK_BATCH: u32 = 64;

/// The status of a work completion (`enum ibv_wc_status`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct WcStatus(pub u32);

impl WcStatus {
    pub const SUCCESS: WcStatus = WcStatus(ibv_wc_status::IBV_WC_SUCCESS);
    pub const LOC_LEN_ERR: WcStatus = WcStatus(ibv_wc_status::IBV_WC_LOC_LEN_ERR);
    pub const LOC_QP_OP_ERR: WcStatus = WcStatus(ibv_wc_status::IBV_WC_LOC_QP_OP_ERR);
    pub const LOC_PROT_ERR: WcStatus = WcStatus(ibv_wc_status::IBV_WC_LOC_PROT_ERR);
    /// The queue pair went to the error state before the request was processed.
    pub const WR_FLUSH_ERR: WcStatus = WcStatus(ibv_wc_status::IBV_WC_WR_FLUSH_ERR);
    pub const REM_ACCESS_ERR: WcStatus = WcStatus(ibv_wc_status::IBV_WC_REM_ACCESS_ERR);
    pub const REM_OP_ERR: WcStatus = WcStatus(ibv_wc_status::IBV_WC_REM_OP_ERR);
    /// The peer did not acknowledge within `timeout` x `retry_cnt`.
    pub const RETRY_EXC_ERR: WcStatus = WcStatus(ibv_wc_status::IBV_WC_RETRY_EXC_ERR);
    /// The peer had no receive posted for `rnr_retry` attempts.
    pub const RNR_RETRY_EXC_ERR: WcStatus = WcStatus(ibv_wc_status::IBV_WC_RNR_RETRY_EXC_ERR);
    pub const FATAL_ERR: WcStatus = WcStatus(ibv_wc_status::IBV_WC_FATAL_ERR);
    pub const GENERAL_ERR: WcStatus = WcStatus(ibv_wc_status::IBV_WC_GENERAL_ERR);

    pub fn is_success(self) -> bool {
        self == WcStatus::SUCCESS
    }

    /// libibverbs' description (`ibv_wc_status_str`).
    pub fn as_str(self) -> &'static str {
        // SAFETY: `ibv_wc_status_str` returns a pointer to a static NUL-terminated string for
        // any value ("unknown" for values it does not know).
        let s = unsafe { CStr::from_ptr(ibv_wc_status_str(self.0)) };
        s.to_str().unwrap_or("?")
    }
}

impl fmt::Display for WcStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.as_str(), self.0)
    }
}

impl fmt::Debug for WcStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WcStatus({self})")
    }
}

/// The operation a successful work completion reports (`enum ibv_wc_opcode`). Undefined for
/// completions with an error status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WcOpcode {
    Send,
    RdmaWrite,
    RdmaRead,
    /// A SEND (with or without immediate) arrived.
    Recv,
    /// An RDMA WRITE WITH IMM arrived; the data is in the target buffer, the immediate here.
    RecvRdmaWithImm,
    Other(u32),
}

/// One work completion (`struct ibv_wc`), polled with [`CompletionQueue::poll`].
#[repr(transparent)]
pub struct WorkCompletion(ibv_wc);

impl WorkCompletion {
    pub fn wr_id(&self) -> u64 {
        self.0.wr_id
    }

    pub fn status(&self) -> WcStatus {
        WcStatus(self.0.status)
    }

    pub fn is_success(&self) -> bool {
        self.status().is_success()
    }

    pub fn opcode(&self) -> WcOpcode {
        match self.0.opcode {
            ibv_wc_opcode::IBV_WC_SEND => WcOpcode::Send,
            ibv_wc_opcode::IBV_WC_RDMA_WRITE => WcOpcode::RdmaWrite,
            ibv_wc_opcode::IBV_WC_RDMA_READ => WcOpcode::RdmaRead,
            ibv_wc_opcode::IBV_WC_RECV => WcOpcode::Recv,
            ibv_wc_opcode::IBV_WC_RECV_RDMA_WITH_IMM => WcOpcode::RecvRdmaWithImm,
            v => WcOpcode::Other(v),
        }
    }

    /// Bytes received (receive completions only).
    pub fn byte_len(&self) -> u32 {
        self.0.byte_len
    }

    /// The immediate value, in host order, of a SEND WITH IMM or RDMA WRITE WITH IMM.
    pub fn imm_data(&self) -> Option<u32> {
        if self.0.wc_flags & ibv_wc_flags::IBV_WC_WITH_IMM.0 != 0 {
            // SAFETY: with IBV_WC_WITH_IMM the union holds `imm_data`; both union members are
            // `u32`, so either read is a valid value.
            Some(u32::from_be(unsafe {
                self.0.imm_data_invalidated_rkey_union.imm_data
            }))
        } else {
            None
        }
    }

    /// The local queue pair number the completion belongs to.
    pub fn qp_num(&self) -> u32 {
        self.0.qp_num
    }

    pub fn vendor_err(&self) -> u32 {
        self.0.vendor_err
    }
}

impl Default for WorkCompletion {
    fn default() -> WorkCompletion {
        WorkCompletion(ibv_wc {
            wr_id: 0,
            status: 0,
            opcode: 0,
            vendor_err: 0,
            byte_len: 0,
            imm_data_invalidated_rkey_union: imm_data_invalidated_rkey_union_t { imm_data: 0 },
            qp_num: 0,
            src_qp: 0,
            wc_flags: 0,
            pkey_index: 0,
            slid: 0,
            sl: 0,
            dlid_path_bits: 0,
        })
    }
}

impl Clone for WorkCompletion {
    fn clone(&self) -> WorkCompletion {
        let w = &self.0;
        // SAFETY: both members of the union are `u32`; reading either is valid.
        let imm_data = unsafe { w.imm_data_invalidated_rkey_union.imm_data };
        WorkCompletion(ibv_wc {
            imm_data_invalidated_rkey_union: imm_data_invalidated_rkey_union_t { imm_data },
            ..*w
        })
    }
}

impl fmt::Debug for WorkCompletion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("WorkCompletion");
        d.field("wr_id", &self.wr_id())
            .field("status", &self.status())
            .field("qp_num", &self.qp_num());
        if self.is_success() {
            d.field("opcode", &self.opcode())
                .field("byte_len", &self.byte_len())
                .field("imm_data", &self.imm_data());
        }
        d.finish()
    }
}

/// A completion queue (`ibv_cq`) with its own completion channel (`ibv_comp_channel`, fd set
/// non-blocking). Keeps its [`Context`] alive; queue pairs using it keep it alive.
///
/// Interrupt mode, without lost wake-ups: poll until empty, [`req_notify`](Self::req_notify),
/// poll again (a completion that arrived before arming raises no event), and only then wait
/// for [`channel_fd`](Self::channel_fd) to become readable; then
/// [`get_event_and_ack`](Self::get_event_and_ack) and start over.
pub struct CompletionQueue {
    cq: *mut ibv_cq,
    channel: *mut ibv_comp_channel,
    capacity: u32,
    unacked: Cell<u32>,
    /// Completions of other queue pairs polled while a queue pair drained itself on drop;
    /// returned first by `poll`.
    backlog: RefCell<VecDeque<WorkCompletion>>,
    /// Set when another thread polls this CQ (`dispatch = central`): completions come from
    /// here instead of `ibv_poll_cq`. Dropped first in `drop`, before the CQ is destroyed.
    source: RefCell<Option<Box<dyn CompletionSource>>>,
    ctx: Rc<Context>,
}

impl CompletionQueue {
    /// A CQ with room for at least `min_entries` completions.
    pub fn new(ctx: &Rc<Context>, min_entries: u32) -> Result<Rc<CompletionQueue>> {
        let dev = ctx.name();
        let max = ctx.caps().max_cqe;
        if min_entries == 0 || min_entries > max {
            return Err(verbs_err(
                "ibv_create_cq",
                io::Error::from_raw_os_error(libc::EINVAL),
                format!("device {dev}: {min_entries} entries requested, device max_cqe {max}"),
            ));
        }
        // SAFETY: `ctx` is an open context, alive for as long as the CQ (the `Rc` is stored).
        let channel = unsafe { ibv_create_comp_channel(ctx.as_ptr()) };
        if channel.is_null() {
            return Err(verbs_err(
                "ibv_create_comp_channel",
                io::Error::last_os_error(),
                format!("device {dev}"),
            ));
        }
        let destroy_channel = |channel| {
            // SAFETY: `channel` was created above, no CQ uses it, and it is destroyed once.
            unsafe { ibv_destroy_comp_channel(channel) };
        };
        // SAFETY: `channel` is a live completion channel; its fd is owned by libibverbs and we
        // only change its status flags.
        let fd = unsafe { (*channel).fd };
        if let Err(e) = set_nonblocking(fd) {
            destroy_channel(channel);
            return Err(verbs_err(
                "fcntl",
                e,
                format!("O_NONBLOCK on {dev} completion channel"),
            ));
        }
        let cqe = i32::try_from(min_entries).expect("bounded by max_cqe");
        // SAFETY: `ctx` and `channel` are live; no CQ context pointer is used.
        let cq = unsafe { ibv_create_cq(ctx.as_ptr(), cqe, ptr::null_mut(), channel, 0) };
        if cq.is_null() {
            let e = io::Error::last_os_error();
            destroy_channel(channel);
            return Err(verbs_err(
                "ibv_create_cq",
                e,
                format!("device {dev}, {min_entries} entries"),
            ));
        }
        // SAFETY: `cq` is a live CQ; `cqe` holds the actual capacity (>= requested).
        let capacity = u32::try_from(unsafe { (*cq).cqe }).unwrap_or(min_entries);
        Ok(Rc::new(CompletionQueue {
            cq,
            channel,
            capacity,
            unacked: Cell::new(0),
            backlog: RefCell::new(VecDeque::new()),
            source: RefCell::new(None),
            ctx: Rc::clone(ctx),
        }))
    }

    /// The number of completions the CQ holds (at least what was asked for).
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn context(&self) -> &Rc<Context> {
        &self.ctx
    }

    /// Polls up to `out.len()` completions in one `ibv_poll_cq` call; returns how many were
    /// written to the front of `out`.
    pub fn poll(&self, out: &mut [WorkCompletion]) -> Result<usize> {
        let mut n = 0;
        {
            let mut backlog = self.backlog.borrow_mut();
            while n < out.len() {
                let Some(wc) = backlog.pop_front() else { break };
                out[n] = wc;
                n += 1;
            }
        }
        if n < out.len() {
            match self.poll_raw(&mut out[n..]) {
                Ok(k) => n += k,
                Err(e) if n == 0 => return Err(e),
                Err(_) => {} // hand out what the backlog gave; the error recurs on the next poll
            }
        }
        Ok(n)
    }

    /// From now on, completions come from `source` (another thread polls this CQ: see
    /// [`shared`](Self::shared)) instead of `ibv_poll_cq`; the source lives as long as the CQ.
    /// Arming and events ([`req_notify`](Self::req_notify), the channel fd) then belong to the
    /// polling thread too.
    pub(crate) fn set_source(&self, source: Box<dyn CompletionSource>) {
        *self.source.borrow_mut() = Some(source);
    }

    /// `ibv_poll_cq` into `out` (or the installed source), bypassing the backlog.
    pub(crate) fn poll_raw(&self, out: &mut [WorkCompletion]) -> Result<usize> {
        if let Some(src) = self.source.borrow().as_ref() {
            return Ok(src.take(out));
        }
        let max = i32::try_from(out.len()).unwrap_or(i32::MAX);
        // SAFETY: `cq` is live; `out` is `max` writable `ibv_wc`s (`WorkCompletion` is
        // `repr(transparent)` over `ibv_wc`). The provider writes at most `max` entries.
        let rc = unsafe { ibv_poll_cq(self.cq, max, out.as_mut_ptr().cast::<ibv_wc>()) };
        if rc < 0 {
            return Err(verbs_err(
                "ibv_poll_cq",
                rc_err(-rc),
                format!("device {}", self.ctx.name()),
            ));
        }
        Ok(rc as usize)
    }

    /// Keeps a completion polled on someone else's behalf for the next `poll`.
    pub(crate) fn stash(&self, wc: WorkCompletion) {
        self.backlog.borrow_mut().push_back(wc);
    }

    /// Removes and returns the stashed completions of queue pair `qpn`.
    pub(crate) fn take_stashed_of(&self, qpn: u32) -> Vec<WorkCompletion> {
        let mut backlog = self.backlog.borrow_mut();
        let (own, rest): (Vec<_>, Vec<_>) = backlog.drain(..).partition(|wc| wc.qp_num() == qpn);
        backlog.extend(rest);
        own
    }

    /// Arms the CQ (`ibv_req_notify_cq`): the next completion (or next solicited one) makes
    /// the channel fd readable. One event per arming.
    pub fn req_notify(&self, solicited_only: bool) -> Result<()> {
        // SAFETY: `cq` is a live CQ with a completion channel.
        let rc = unsafe { ibv_req_notify_cq(self.cq, i32::from(solicited_only)) };
        if rc != 0 {
            return Err(verbs_err(
                "ibv_req_notify_cq",
                rc_err(rc),
                format!("device {}", self.ctx.name()),
            ));
        }
        Ok(())
    }

    /// The completion channel's fd (non-blocking): readable when an armed CQ got a completion.
    /// Owned by the CQ; valid while it lives.
    pub fn channel_fd(&self) -> RawFd {
        // SAFETY: `channel` is live while `self` is.
        unsafe { (*self.channel).fd }
    }

    /// Reads one completion event from the channel (`ibv_get_cq_event`), if there is one, and
    /// acknowledges it (batched: `ibv_ack_cq_events` every 64 events and on drop). Returns
    /// `false` when no event was pending. The CQ is disarmed afterwards: call
    /// [`req_notify`](Self::req_notify) before polling again.
    pub fn get_event_and_ack(&self) -> Result<bool> {
        // SAFETY: `channel` is live and non-blocking (set in `new`).
        let next = unsafe {
            next_cq_event(self.channel, || {
                format!(
                    "device {} channel fd {}",
                    self.ctx.name(),
                    self.channel_fd()
                )
            })
        };
        let Some(ev_cq) = next? else {
            return Ok(false);
        };
        // The channel belongs to this CQ alone.
        debug_assert_eq!(ev_cq, self.cq);
        let n = self.unacked.get() + 1;
        if n >= ACK_BATCH {
            // SAFETY: `cq` is live and `n` events were received on it and not yet acked.
            unsafe { ibv_ack_cq_events(self.cq, n) };
            self.unacked.set(0);
        } else {
            self.unacked.set(n);
        }
        Ok(true)
    }

    /// Events received but not yet acknowledged (acked in batches).
    pub fn unacked_events(&self) -> u32 {
        self.unacked.get()
    }

    pub(crate) fn as_ptr(&self) -> *mut ibv_cq {
        self.cq
    }

    pub(crate) fn channel_ptr(&self) -> *mut ibv_comp_channel {
        self.channel
    }
}

impl Drop for CompletionQueue {
    fn drop(&mut self) {
        // First: a source ends another thread's use of the CQ (see `set_source`).
        drop(self.source.get_mut().take());
        let n = self.unacked.get();
        if n > 0 {
            // SAFETY: `cq` is live and `n` received events are unacknowledged;
            // ibv_destroy_cq waits for every event to be acked.
            unsafe { ibv_ack_cq_events(self.cq, n) };
        }
        // SAFETY: created in `new`, destroyed once; every QP using it holds an
        // `Rc<CompletionQueue>`, so none is left.
        let rc = unsafe { ibv_destroy_cq(self.cq) };
        if rc != 0 {
            tracing::warn!(error = %rc_err(rc), "rdma: ibv_destroy_cq failed");
        }
        // SAFETY: the only CQ on this channel is destroyed; destroyed once.
        let rc = unsafe { ibv_destroy_comp_channel(self.channel) };
        if rc != 0 {
            tracing::warn!(error = %rc_err(rc), "rdma: ibv_destroy_comp_channel failed");
        }
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we hold; F_GETFL/F_SETFL take and return plain ints.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One event from a non-blocking completion channel (`ibv_get_cq_event`): the CQ it is for,
/// or `None` when there is none. The caller acknowledges it (`ibv_ack_cq_events`). A failure
/// names the call and `context()`.
///
/// # Safety
/// `channel` is a live completion channel whose fd is non-blocking.
pub(super) unsafe fn next_cq_event(
    channel: *mut ibv_comp_channel,
    context: impl FnOnce() -> String,
) -> Result<Option<*mut ibv_cq>> {
    let mut ev_cq: *mut ibv_cq = ptr::null_mut();
    let mut ev_ctx: *mut libc::c_void = ptr::null_mut();
    // SAFETY: `channel` is live (the caller's contract); the out-pointers are valid locals.
    let rc = unsafe { ibv_get_cq_event(channel, &mut ev_cq, &mut ev_ctx) };
    if rc == 0 {
        return Ok(Some(ev_cq));
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock {
        Ok(None)
    } else {
        Err(verbs_err("ibv_get_cq_event", e, context()))
    }
}
