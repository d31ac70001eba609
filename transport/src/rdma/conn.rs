//! One RDMA connection (RC queue pair + TCP side channel) and its endpoint.
//!
//! # Send path
//! `send`/`try_send` queue `Bytes` in the bounded [`SendQueue`] and mark the connection dirty;
//! at the core poller's next turn `Conn::pump` ([`crate::rdma::pump`]) sends pieces that lie
//! in the core's registered pool by RDMA WRITE WITH IMM without a copy
//! ([`crate::rdma::zerocopy`]), and copies as much of the rest of the queue as credits,
//! send-queue slots and pool chunks allow into SEND WITH IMM messages of at most the peer's
//! buffer size (many small user buffers merge into one message; a message of at most
//! `max_inline_data` bytes goes inline, without a chunk) and posts them all as one chain: one
//! `ibv_post_send`, one doorbell. Every [`SIGNAL_EVERY`]th request and the last of each chain
//! are signaled; a signaled completion releases its request and every unsignaled one before
//! it (their pool chunks and send-queue slots).
//!
//! # Receive path and flow control
//! The connection posts [`RECV_BUFS`] receive buffers ([`CHUNK`] bytes each, in one memory
//! region of its own) on its own receive queue, and advertises that many credits. The sender
//! spends one credit per message; the receiver reposts a buffer when `recv` has copied its
//! bytes out (or at once, for a message without payload) and returns the credits in the
//! immediate data of its next message (low 16 bits; bit 31 marks end of stream, bit 30 an
//! advertisement, bits 16..30 of a WRITE the slab number), or in a
//! credit-only message (zero-length SEND WITH IMM) once [`CREDIT_THRESHOLD`] are owed.
//! A WRITE WITH IMM consumes a receive too (its buffer untouched, reposted at once) and so
//! spends a credit like a SEND; advertisements of receive slabs are SENDs like data.
//! Deadlock freedom: data, advertisement and end-of-stream messages never spend the last
//! credit, which stays reserved for a credit-only message, and a credit-only message is only sent when at least
//! [`CREDIT_THRESHOLD`] ≥ 2 credits are owed (so credit-only traffic cannot ping-pong). No
//! SEND is ever posted without a credit, so RNR NAKs do not happen in normal operation.
//!
//! # Failures
//! A completion with an error status, end of file or an error on the side channel (after a
//! short grace period in which an end-of-stream message already sent is still honoured) and
//! local aborts kill the connection: the QP moves to ERR, the send queue is closed, and every
//! later call reports `Reset` (or `Closed` after a local abort). A failed completion is held
//! for [`MOVE_GRACE`] first (see [`Phase::Broken`]): the peer may have retired its QP for a
//! hand-off whose MOVE is still on the side channel ([`crate::rdma::handoff`], which also
//! documents the hand-off design). Dropping the endpoint closes
//! the side channel and destroys the QP (the verbs layer drains it), then returns its chunks.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::Shutdown;
use std::rc::Rc;
use std::task::Waker;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use corewire_runtime::net::TcpStream;
use corewire_runtime::timer;

use crate::addr::Address;
use crate::error::{Result, TransportError};
use crate::merge_send::MergeState;
use crate::rdma::core::{CoreRdma, CHUNK};
use crate::rdma::handoff::SideCtl;
use crate::rdma::verbs::{
    MemoryRegion, QueuePair, RecvWr, Sge, WcOpcode, WcStatus, WorkCompletion, RESERVED_WR_ID_MIN,
};
use crate::rdma::zerocopy::{Ready, ZcConn, IMM_ADV};
use crate::sendq::SendQueue;
use crate::stack::EndpointConfig;

/// Receive buffers (and initial credits) per connection.
pub(crate) const RECV_BUFS: u32 = 16;
/// Credits owed before a credit-only message is sent.
pub(crate) const CREDIT_THRESHOLD: u32 = RECV_BUFS / 2;
/// Send work requests outstanding per QP.
pub(crate) const SQ_DEPTH: u32 = 64;
/// CQ entries one connection's QP may produce (its send and receive queues, drain markers).
pub(crate) const QP_CQ_BUDGET: u32 = SQ_DEPTH + RECV_BUFS + 2;
/// Signal at least every this many send requests.
pub(super) const SIGNAL_EVERY: u64 = 16;
/// Most bytes one `recv` copies out (several received messages merge into one chunk).
pub(super) const RECV_MERGE: usize = 256 << 10;
/// `wr_id` bit of receives (sends use a sequence number below it).
pub(super) const RECV_BIT: u64 = 1 << 62;
/// Immediate data: end of stream.
pub(super) const IMM_EOS: u32 = 1 << 31;
pub(super) const IMM_CREDITS: u32 = 0xffff;
/// How long a side-channel hang-up waits for an end-of-stream message still in flight.
const HUP_GRACE: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub(super) enum Dead {
    Reset(String),
    /// The peer broke the side-channel protocol (e.g. a malformed MOVE).
    Malformed(String),
    Closed,
}

/// Where a connection stands with respect to hand-off (see [`crate::rdma::handoff`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Connected; sends are posted.
    Live,
    /// Re-created on a new core by `attach`: waiting for the peer's MOVED; sends queue up.
    Moving,
    /// The peer announced a move: the old QP is retired and a new one set up; sends queue up.
    PeerMoving,
    /// A work completion failed while live: maybe the peer tore its QP down for a move whose
    /// MOVE is still on its way. Sends queue up; without a MOVE within [`MOVE_GRACE`] the
    /// connection resets with the completion's error.
    Broken,
    /// Handed off by `into_transfer`: this core's copy is dead.
    Gone,
}

/// How long a failed completion waits for the peer's MOVE before it resets the connection.
pub(super) const MOVE_GRACE: Duration = Duration::from_secs(5);

/// See the module docs.
pub(crate) struct Conn {
    pub(super) core_id: usize,
    pub(crate) dirty: Cell<bool>,
    // `qp` before `recv_mr`: the QP (and its posted receives) goes first.
    pub(super) qp: RefCell<Option<QueuePair>>,
    pub(super) recv_mr: MemoryRegion,
    /// The current QP's number (a move replaces the QP).
    pub(super) qpn: Cell<u32>,
    pub(super) max_inline: Cell<usize>,
    pub(super) peer: Address,
    pub(super) local: Address,
    pub(super) cfg: EndpointConfig,
    pub(super) stream: Rc<TcpStream>,
    pub(super) side: Rc<SideCtl>,
    pub(super) sendq: SendQueue,
    /// Largest message the peer accepts (its buffer size, capped by our chunk size).
    pub(super) msg_max: Cell<usize>,
    pub(super) credits: Cell<u32>,
    pub(super) sq_used: Cell<u32>,
    pub(super) next_seq: Cell<u64>,
    /// Posted sends not yet released.
    pub(super) inflight: RefCell<VecDeque<InFlight>>,
    pub(super) eos_wanted: Cell<bool>,
    pub(super) eos_posted: Cell<bool>,
    /// Received messages not yet returned by `recv`, in stream order.
    pub(super) ready: RefCell<VecDeque<Ready>>,
    /// Bytes received before a move to this core, returned by `recv` before anything else.
    pub(super) carried: RefCell<VecDeque<Bytes>>,
    /// Buffers copied out while there was no QP to post them on (during a move).
    pub(super) unposted: RefCell<Vec<u32>>,
    /// Buffers reposted whose credits are not yet returned to the peer.
    pub(super) owed: Cell<u32>,
    pub(super) eof: Cell<bool>,
    pub(super) phase: Cell<Phase>,
    /// Data and end-of-stream messages posted / received on the current QP (the loss check
    /// of a move; credit-only messages do not count).
    pub(super) data_sent: Cell<u64>,
    pub(super) data_recvd: Cell<u64>,
    pub(super) dead: RefCell<Option<Dead>>,
    pub(super) rx_waker: RefCell<Option<Waker>>,
    pub(super) sent_wakers: RefCell<Vec<Waker>>,
    pub(super) closed: Cell<bool>,
    /// Zero-copy large payloads ([`crate::rdma::zerocopy`]).
    pub(super) zc: ZcConn,
    /// The merge-send policy's batch target ([`crate::merge_send`]).
    pub(super) merge: Cell<MergeState>,
}

/// A posted send not yet released by a completion.
pub(super) struct InFlight {
    pub seq: u64,
    /// The send-pool chunk its payload was copied into.
    pub chunk: Option<u32>,
    /// Carries data or end of stream, rather than credits or advertisements only.
    pub data: bool,
    /// A WRITE's source, kept until the adapter has read it.
    pub _pin: Option<Bytes>,
}

pub(crate) struct ConnParts {
    pub core_id: usize,
    pub qp: QueuePair,
    pub recv_mr: MemoryRegion,
    pub peer: Address,
    pub local: Address,
    pub stream: TcpStream,
    pub cfg: EndpointConfig,
    pub peer_credits: u32,
    pub peer_buf: usize,
    /// The peer advertises zero-copy receive buffers.
    pub peer_zc: bool,
}

impl Conn {
    pub(crate) fn new(p: ConnParts) -> Conn {
        let qpn = p.qp.qp_num();
        let max_inline = p.qp.max_inline_data() as usize;
        let merge = MergeState::new(&p.cfg.merge_send);
        Conn {
            core_id: p.core_id,
            dirty: Cell::new(false),
            qp: RefCell::new(Some(p.qp)),
            recv_mr: p.recv_mr,
            qpn: Cell::new(qpn),
            max_inline: Cell::new(max_inline),
            peer: p.peer,
            local: p.local,
            stream: Rc::new(p.stream),
            side: Rc::new(SideCtl::default()),
            sendq: SendQueue::new(&p.cfg),
            cfg: p.cfg,
            msg_max: Cell::new(p.peer_buf.min(CHUNK)),
            credits: Cell::new(p.peer_credits),
            sq_used: Cell::new(0),
            next_seq: Cell::new(0),
            inflight: RefCell::new(VecDeque::new()),
            eos_wanted: Cell::new(false),
            eos_posted: Cell::new(false),
            ready: RefCell::new(VecDeque::new()),
            carried: RefCell::new(VecDeque::new()),
            unposted: RefCell::new(Vec::new()),
            owed: Cell::new(0),
            eof: Cell::new(false),
            phase: Cell::new(Phase::Live),
            data_sent: Cell::new(0),
            data_recvd: Cell::new(0),
            dead: RefCell::new(None),
            rx_waker: RefCell::new(None),
            sent_wakers: RefCell::new(Vec::new()),
            closed: Cell::new(false),
            zc: ZcConn {
                peer_zc: Cell::new(p.peer_zc),
                ..ZcConn::default()
            },
            merge: Cell::new(merge),
        }
    }

    pub(crate) fn qpn(&self) -> u32 {
        self.qpn.get()
    }

    pub(crate) fn stream(&self) -> Rc<TcpStream> {
        self.stream.clone()
    }

    /// Posts the receive buffers `idxs` (or, while a move has taken the QP away, keeps them
    /// for the next one).
    pub(crate) fn post_recvs(&self, idxs: &[u32]) -> Result<()> {
        let qp = self.qp.borrow();
        let Some(qp) = qp.as_ref() else {
            self.unposted.borrow_mut().extend_from_slice(idxs);
            return Ok(());
        };
        let sges: Vec<Sge> = idxs
            .iter()
            .map(|&i| {
                let at = i as usize * CHUNK;
                self.recv_mr.sge(at..at + CHUNK)
            })
            .collect();
        let wrs: Vec<RecvWr<'_>> = idxs
            .iter()
            .zip(&sges)
            .map(|(&i, s)| RecvWr::new(RECV_BIT | u64::from(i), std::slice::from_ref(s)))
            .collect();
        // SAFETY: each SGE names one whole buffer of `recv_mr` (registered with LOCAL_WRITE in
        // the QP's PD), which is not posted yet and is not read until its completion has been
        // polled (`ready`) or the QP is gone: `recv_mr` is dropped after `qp` (field order,
        // and `close` drops the QP first).
        unsafe { qp.post_recv(&wrs) }
    }

    pub(super) fn error(&self) -> Option<TransportError> {
        self.dead.borrow().as_ref().map(|d| match d {
            Dead::Reset(reason) => TransportError::Reset {
                peer: self.peer.clone(),
                reason: reason.clone(),
            },
            Dead::Malformed(what) => TransportError::Malformed {
                peer: self.peer.clone(),
                what: what.clone(),
            },
            Dead::Closed => TransportError::Closed {
                peer: self.peer.clone(),
            },
        })
    }

    pub(super) fn wake_all(&self) {
        if let Some(w) = self.rx_waker.borrow_mut().take() {
            w.wake();
        }
        for w in self.sent_wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Kills the connection with `e` (the first reason sticks).
    pub(super) fn fail(&self, e: Dead) {
        if self.dead.borrow().is_none() {
            if let Dead::Reset(r) | Dead::Malformed(r) = &e {
                tracing::debug!(peer = %self.peer, reason = %r, "rdma: connection reset");
            }
            *self.dead.borrow_mut() = Some(e);
            if let Some(qp) = self.qp.borrow().as_ref() {
                let _ = qp.to_error();
            }
        }
        self.sendq.close();
        self.wake_all();
    }

    /// Routes one completion of this QP.
    pub(crate) fn on_completion(self: &Rc<Self>, core: &CoreRdma, wc: &WorkCompletion) {
        if wc.wr_id() >= RESERVED_WR_ID_MIN {
            return self.on_drain_marker(core, wc);
        }
        if wc.wr_id() & RECV_BIT != 0 {
            self.on_recv(core, wc);
        } else {
            self.on_send(core, wc);
        }
    }

    fn on_recv(self: &Rc<Self>, core: &CoreRdma, wc: &WorkCompletion) {
        if !wc.is_success() {
            self.completion_failed(format!(
                "receive completion failed: {} (vendor error {:#x})",
                wc.status(),
                wc.vendor_err()
            ));
            return;
        }
        let idx = (wc.wr_id() & 0xffff_ffff) as u32;
        let imm = wc.imm_data().unwrap_or(0);
        let len = wc.byte_len();
        let got = imm & IMM_CREDITS;
        if got > 0 {
            self.credits.set(self.credits.get() + got);
            let waiting = !self.sendq.is_empty()
                || self.eos_wanted.get()
                || !self.zc.to_advertise.borrow().is_empty();
            if waiting {
                core.mark_dirty(self);
            }
        }
        let entry = if wc.opcode() == WcOpcode::RecvRdmaWithImm {
            match self.on_write(imm, len) {
                Ok(r) => Some(r),
                Err(what) => return self.fail(Dead::Malformed(what)),
            }
        } else if imm & IMM_ADV != 0 {
            match self.recv_payload(idx, len) {
                Some(p) => self.on_adv(core, &p),
                None => {
                    return self.fail(Dead::Malformed(format!(
                        "rdma ADV of {len} bytes, over the {CHUNK}-byte buffer"
                    )))
                }
            }
            if self.dead.borrow().is_some() {
                return;
            }
            None
        } else if imm & IMM_EOS != 0 {
            self.eof.set(true);
            self.data_recvd.set(self.data_recvd.get() + 1);
            None
        } else if len == 0 {
            None // credit-only
        } else {
            Some(Ready::Small(idx, len))
        };
        if let Some(r) = entry {
            self.data_recvd.set(self.data_recvd.get() + 1);
            self.ready.borrow_mut().push_back(r);
        }
        if !matches!(entry, Some(Ready::Small(..))) {
            // Nothing of the buffer for `recv`: repost it at once.
            if let Err(e) = self.post_recvs(&[idx]) {
                self.fail(Dead::Reset(e.to_string()));
                return;
            }
            self.owe(core, 1);
        }
        if let Some(w) = self.rx_waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// A copy of the `len` bytes received into buffer `idx`, if they fit in it.
    fn recv_payload(&self, idx: u32, len: u32) -> Option<Vec<u8>> {
        let at = idx as usize * CHUNK;
        if len as usize > CHUNK || at + CHUNK > self.recv_mr.len() {
            return None;
        }
        // SAFETY: buffer `idx` completed (its completion is being handled) and is reposted
        // only after this copy; `len` bytes of it were written by the adapter and lie inside
        // the region (checked above).
        let src =
            unsafe { std::slice::from_raw_parts(self.recv_mr.as_ptr().add(at), len as usize) };
        Some(src.to_vec())
    }

    pub(super) fn owe(self: &Rc<Self>, core: &CoreRdma, n: u32) {
        self.owed.set(self.owed.get() + n);
        if self.owed.get() >= CREDIT_THRESHOLD {
            core.mark_dirty(self);
        }
    }

    fn on_send(self: &Rc<Self>, core: &CoreRdma, wc: &WorkCompletion) {
        let seq = wc.wr_id();
        let mut freed = false;
        {
            let mut inflight = self.inflight.borrow_mut();
            while inflight.front().is_some_and(|f| f.seq <= seq) {
                let f = inflight.pop_front().expect("front");
                if let Some(c) = f.chunk {
                    core.pool.put(c);
                    freed = true;
                }
                self.sq_used.set(self.sq_used.get() - 1);
            }
        }
        if freed {
            core.chunks_freed();
        }
        if !wc.is_success() {
            if self.dead.borrow().is_none() || wc.status() != WcStatus::WR_FLUSH_ERR {
                self.completion_failed(format!(
                    "send completion failed: {} (vendor error {:#x})",
                    wc.status(),
                    wc.vendor_err()
                ));
            }
            return;
        }
        if !self.sendq.is_empty()
            || (self.eos_wanted.get() && !self.eos_posted.get())
            || !self.zc.to_advertise.borrow().is_empty()
        {
            core.mark_dirty(self);
        }
        if self.inflight.borrow().is_empty() {
            for w in self.sent_wakers.borrow_mut().drain(..) {
                w.wake();
            }
        }
    }

    /// A work completion failed. While live this may be the peer tearing down its QP for a
    /// move (its MOVE may still be on the side channel): stop posting and give the MOVE
    /// [`MOVE_GRACE`] to arrive before resetting. During a move, failures of the retired QP
    /// are expected (flushes) and ignored.
    fn completion_failed(self: &Rc<Self>, why: String) {
        if self.dead.borrow().is_some() {
            return;
        }
        match self.phase.get() {
            Phase::Live => {
                tracing::debug!(peer = %self.peer, reason = %why,
                    "rdma: completion failed; waiting for a possible MOVE");
                self.phase.set(Phase::Broken);
                let weak = Rc::downgrade(self);
                corewire_runtime::spawn_local(async move {
                    timer::sleep(MOVE_GRACE).await;
                    if let Some(c) = weak.upgrade() {
                        if c.phase.get() == Phase::Broken {
                            c.fail(Dead::Reset(why));
                        }
                    }
                })
                .detach();
            }
            Phase::Moving => self.fail(Dead::Reset(why)),
            Phase::Broken | Phase::PeerMoving | Phase::Gone => {}
        }
    }

    /// The side channel hung up (EOF or error).
    pub(crate) async fn on_hup(self: &Rc<Self>, core: &CoreRdma, why: String) {
        if self.closed.get() || self.dead.borrow().is_some() {
            return;
        }
        if self.phase.get() != Phase::Live {
            // Mid-move or with a failed QP: nothing more can arrive.
            self.fail(Dead::Reset(why));
            return;
        }
        // An end-of-stream message sent before the close may still be in the CQ, or on the
        // wire: give it a moment.
        while core.poll_cq() > 0 {}
        if !self.eof.get() {
            timer::sleep(HUP_GRACE).await;
            while core.poll_cq() > 0 {}
        }
        if !self.eof.get() {
            self.fail(Dead::Reset(why));
        }
    }

    /// Retires the current QP: unregisters it, moves it to ERR and drains it (returning the
    /// completions not polled yet), and releases its send slots and pool chunks.
    pub(super) fn retire_qp(&self, core: &CoreRdma) -> Vec<WorkCompletion> {
        core.remove(self.qpn.get());
        let qp = self.qp.borrow_mut().take();
        let wcs = qp.map(QueuePair::close).unwrap_or_default();
        for f in self.inflight.borrow_mut().drain(..) {
            if let Some(c) = f.chunk {
                core.pool.put(c);
            }
        }
        self.sq_used.set(0);
        core.chunks_freed();
        wcs
    }

    /// Local close: the side channel is shut down so the peer notices (unless the endpoint
    /// was handed off: then the side channel lives on, on the new core), and the QP is
    /// drained without blocking the core: it goes to ERR with a marker on each queue and
    /// stays registered, so its flushed completions (returning send chunks) and the markers
    /// come through the core's poller like any others; the second marker destroys it
    /// ([`Conn::finish_close`]). Should the markers not come within the QP's
    /// `drain_timeout`, it is destroyed anyway (logged).
    pub(crate) fn close(self: &Rc<Self>, core: &Rc<CoreRdma>) {
        if self.closed.replace(true) {
            return;
        }
        self.fail(Dead::Closed);
        self.side.stop();
        let _ = self.stream.shutdown(Shutdown::Both);
        let limit = {
            let mut qp = self.qp.borrow_mut();
            qp.as_mut().map(|qp| {
                qp.start_drain();
                (qp.is_drained(), qp.config().drain_timeout)
            })
        };
        let Some((false, limit)) = limit else {
            return self.retire_all(core); // no QP, or nothing to wait for
        };
        let (conn, weak_core) = (Rc::downgrade(self), Rc::downgrade(core));
        let watchdog = corewire_runtime::try_spawn_local(async move {
            timer::sleep(limit).await;
            if let (Some(c), Some(core)) = (conn.upgrade(), weak_core.upgrade()) {
                if let Some(qp) = c.qp.borrow().as_ref() {
                    qp.abandon_drain();
                }
                c.finish_close(&core);
            }
        });
        match watchdog {
            Ok(t) => t.detach(),
            // Not on a core (shutting down): drain here, blocking (bounded).
            Err(_) => self.finish_close(core),
        }
    }

    /// A drain marker of a closing QP completed: the last one retires it.
    fn on_drain_marker(self: &Rc<Self>, core: &CoreRdma, wc: &WorkCompletion) {
        let drained = self
            .qp
            .borrow()
            .as_ref()
            .is_some_and(|qp| qp.drain_marker(wc) && qp.is_drained());
        if drained {
            self.finish_close(core);
        }
    }

    /// The end of a close: unregisters and destroys the (drained, or given up on) QP, gives
    /// back its chunks, slabs and CQ entries. Once only.
    pub(crate) fn finish_close(&self, core: &CoreRdma) {
        if self.qp.borrow().is_some() {
            self.retire_all(core);
        }
    }

    fn retire_all(&self, core: &CoreRdma) {
        drop(self.retire_qp(core)); // drained: destroyed at once
        self.release_slabs(core); // the peer can no longer write them
        core.release_cq(QP_CQ_BUDGET);
    }
}

impl Conn {
    /// Copies received messages in receive buffers off the front of `ready` into `out` (at
    /// least one, then up to `max` bytes in all; stops at a written slab); returns their
    /// buffer indices, not yet reposted.
    pub(super) fn copy_ready(&self, out: &mut BytesMut, max: usize) -> Vec<u32> {
        let mut ready = self.ready.borrow_mut();
        let mut idxs = Vec::new();
        let before = out.len();
        while let Some(&Ready::Small(idx, len)) = ready.front() {
            if out.len() > before && out.len() + len as usize > max {
                break;
            }
            ready.pop_front();
            let at = idx as usize * CHUNK;
            assert!(len as usize <= CHUNK && at + CHUNK <= self.recv_mr.len());
            // SAFETY: buffer `idx` completed (its completion was polled) and is not posted
            // again until after this copy; `len` bytes of it were written by the adapter and
            // lie inside the region (checked above).
            let src =
                unsafe { std::slice::from_raw_parts(self.recv_mr.as_ptr().add(at), len as usize) };
            out.extend_from_slice(src);
            idxs.push(idx);
        }
        let n = (out.len() - before) as u64;
        self.zc.count(|s| s.recv_copied_bytes += n);
        idxs
    }
}
