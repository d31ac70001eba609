//! One RDMA connection (RC queue pair + TCP side channel) and its endpoint.
//!
//! # Send path
//! `send`/`try_send` queue `Bytes` in the bounded [`SendQueue`] and mark the connection dirty;
//! at the core poller's next turn [`Conn::pump`] copies as much of the queue as credits,
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
//! immediate data of its next message (low 16 bits; bit 31 marks end of stream), or in a
//! credit-only message (zero-length SEND WITH IMM) once [`CREDIT_THRESHOLD`] are owed.
//! Deadlock freedom: data and end-of-stream messages never spend the last credit, which stays
//! reserved for a credit-only message, and a credit-only message is only sent when at least
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
use crate::rdma::core::{CoreRdma, CHUNK};
use crate::rdma::handoff::SideCtl;
use crate::rdma::verbs::{
    MemoryRegion, QueuePair, RecvWr, SendOp, SendWr, Sge, WcStatus, WorkCompletion,
};
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
const SIGNAL_EVERY: u64 = 16;
/// Most bytes one `recv` copies out (several received messages merge into one chunk).
pub(super) const RECV_MERGE: usize = 256 << 10;
/// `wr_id` bit of receives (sends use a sequence number below it).
pub(super) const RECV_BIT: u64 = 1 << 62;
/// Immediate data: end of stream.
pub(super) const IMM_EOS: u32 = 1 << 31;
const IMM_CREDITS: u32 = 0xffff;
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
    next_seq: Cell<u64>,
    /// Posted sends not yet released: sequence number, pool chunk, carries data (or end of
    /// stream) rather than credits only.
    pub(super) inflight: RefCell<VecDeque<(u64, Option<u32>, bool)>>,
    pub(super) eos_wanted: Cell<bool>,
    pub(super) eos_posted: Cell<bool>,
    /// Received messages not yet returned by `recv`: buffer index and length.
    pub(super) ready: RefCell<VecDeque<(u32, u32)>>,
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
}

impl Conn {
    pub(crate) fn new(p: ConnParts) -> Conn {
        let qpn = p.qp.qp_num();
        let max_inline = p.qp.max_inline_data() as usize;
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
        if imm & IMM_EOS != 0 || wc.byte_len() > 0 {
            self.data_recvd.set(self.data_recvd.get() + 1);
        }
        let got = imm & IMM_CREDITS;
        if got > 0 {
            self.credits.set(self.credits.get() + got);
            if !self.sendq.is_empty() || self.eos_wanted.get() {
                core.mark_dirty(self);
            }
        }
        if imm & IMM_EOS != 0 || wc.byte_len() == 0 {
            // End of stream or credit-only: nothing for `recv`, repost at once.
            if imm & IMM_EOS != 0 {
                self.eof.set(true);
            }
            if let Err(e) = self.post_recvs(&[idx]) {
                self.fail(Dead::Reset(e.to_string()));
                return;
            }
            self.owe(core, 1);
        } else {
            self.ready.borrow_mut().push_back((idx, wc.byte_len()));
        }
        if let Some(w) = self.rx_waker.borrow_mut().take() {
            w.wake();
        }
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
            while inflight.front().is_some_and(|&(s, _, _)| s <= seq) {
                let (_, chunk, _) = inflight.pop_front().expect("front");
                if let Some(c) = chunk {
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
        if !self.sendq.is_empty() || (self.eos_wanted.get() && !self.eos_posted.get()) {
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

    /// Posts what can be posted now as one chain; returns whether anything was posted.
    pub(crate) fn pump(self: &Rc<Self>, core: &CoreRdma) -> bool {
        if self.dead.borrow().is_some() || self.phase.get() != Phase::Live {
            return false;
        }
        let qp_ref = self.qp.borrow();
        let Some(qp) = qp_ref.as_ref() else {
            return false;
        };
        // Message plan: (imm, where the payload is, length).
        enum Src {
            None,
            Inline(usize),
            Chunk(u32),
        }
        let mut plan: Vec<(u32, Src, usize)> = Vec::new();
        let mut scratch: Vec<u8> = Vec::new();
        let mut taken: VecDeque<Bytes> = if self.sendq.is_empty() {
            VecDeque::new()
        } else {
            self.sendq.take_batch(usize::MAX).into()
        };
        let mut queued: usize = taken.iter().map(Bytes::len).sum();
        let mut credits = self.credits.get();
        let mut slots = SQ_DEPTH - self.sq_used.get();
        let mut starved = false;
        let take_owed = || {
            let owed = self.owed.replace(0);
            let give = owed.min(IMM_CREDITS);
            self.owed.set(owed - give);
            give
        };
        while slots > 0 {
            if queued > 0 && credits >= 2 {
                let len = queued.min(self.msg_max.get());
                let src = if len <= self.max_inline.get() {
                    let at = scratch.len();
                    copy_out(&mut taken, len, |piece| scratch.extend_from_slice(piece));
                    Src::Inline(at)
                } else {
                    let Some(c) = core.pool.get() else {
                        starved = true;
                        break;
                    };
                    let dst = core.pool.chunk_ptr(c);
                    let mut off = 0;
                    copy_out(&mut taken, len, |piece| {
                        // SAFETY: chunk `c` was just taken from the free list, so no posted
                        // request names it; `off + piece.len() <= len <= CHUNK`, inside it.
                        unsafe {
                            std::ptr::copy_nonoverlapping(piece.as_ptr(), dst.add(off), piece.len())
                        };
                        off += piece.len();
                    });
                    Src::Chunk(c)
                };
                queued -= len;
                plan.push((take_owed(), src, len));
            } else if queued == 0 && self.eos_wanted.get() && !self.eos_posted.get() && credits >= 2
            {
                self.eos_posted.set(true);
                plan.push((IMM_EOS | take_owed(), Src::None, 0));
            } else if self.owed.get() >= CREDIT_THRESHOLD && credits >= 1 {
                plan.push((take_owed(), Src::None, 0));
            } else {
                break;
            }
            credits -= 1;
            slots -= 1;
        }
        // Whatever did not fit goes back to the front of the queue.
        if !taken.is_empty() {
            self.sendq.unshift(taken.into());
        }
        self.sendq.batch_done();
        if starved {
            core.mark_starved(self);
        }
        if plan.is_empty() {
            return false;
        }
        let lkey = core.pool.lkey();
        let sges: Vec<Option<Sge>> = plan
            .iter()
            .map(|(_, src, len)| match *src {
                Src::None => None,
                Src::Inline(at) => Some(Sge {
                    addr: scratch[at..].as_ptr() as u64,
                    len: *len as u32,
                    lkey: 0,
                }),
                Src::Chunk(c) => Some(Sge {
                    addr: core.pool.chunk_ptr(c) as u64,
                    len: *len as u32,
                    lkey,
                }),
            })
            .collect();
        let n = plan.len();
        let first = self.next_seq.get();
        let wrs: Vec<SendWr<'_>> = plan
            .iter()
            .zip(&sges)
            .enumerate()
            .map(|(i, ((imm, _, _), sge))| {
                let seq = first + i as u64;
                SendWr {
                    wr_id: seq,
                    op: SendOp::SendWithImm(*imm),
                    sges: sge.as_slice(),
                    signaled: seq % SIGNAL_EVERY == 0 || i + 1 == n,
                    solicited: false,
                }
            })
            .collect();
        // SAFETY: inline payloads (at most `max_inline_data` bytes) are copied by the post
        // itself out of `scratch`, alive until it returns. Chunk payloads name pool chunks of
        // the core's send pool (registered in this QP's PD), owned by this connection from
        // here until the signaled completion covering them is polled or the QP is destroyed
        // (`inflight` keeps them; `close` returns them only after the QP is gone).
        let r = unsafe { qp.post_send(&wrs) };
        drop(qp_ref);
        {
            let mut inflight = self.inflight.borrow_mut();
            for (i, (imm, src, len)) in plan.iter().enumerate() {
                let chunk = match *src {
                    Src::Chunk(c) => Some(c),
                    _ => None,
                };
                let data = *len > 0 || imm & IMM_EOS != 0;
                if data {
                    self.data_sent.set(self.data_sent.get() + 1);
                }
                inflight.push_back((first + i as u64, chunk, data));
            }
        }
        self.next_seq.set(first + n as u64);
        self.sq_used.set(self.sq_used.get() + n as u32);
        self.credits.set(credits);
        if let Err(e) = r {
            // Some may have been posted: the chunks stay in `inflight` and come back when the
            // QP (moved to ERR now) flushes or is destroyed.
            self.fail(Dead::Reset(e.to_string()));
        }
        true
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
        for (_, chunk, _) in self.inflight.borrow_mut().drain(..) {
            if let Some(c) = chunk {
                core.pool.put(c);
            }
        }
        self.sq_used.set(0);
        core.chunks_freed();
        wcs
    }

    /// Local close: the QP is destroyed (drained), chunks are returned, the side channel is
    /// shut down so the peer notices (unless the endpoint was handed off: then the side
    /// channel lives on, on the new core).
    pub(crate) fn close(self: &Rc<Self>, core: &CoreRdma) {
        if self.closed.replace(true) {
            return;
        }
        self.fail(Dead::Closed);
        self.side.stop();
        let _ = self.stream.shutdown(Shutdown::Both);
        drop(self.retire_qp(core)); // moves to ERR, drains, destroys
        core.release_cq(QP_CQ_BUDGET);
    }
}

/// Takes `len` bytes off the front of `q`, handing them to `f` piece by piece.
fn copy_out(q: &mut VecDeque<Bytes>, mut len: usize, mut f: impl FnMut(&[u8])) {
    while len > 0 {
        let front = q.front_mut().expect("enough bytes queued");
        if front.len() <= len {
            len -= front.len();
            f(front);
            q.pop_front();
        } else {
            let head = front.split_to(len);
            f(&head);
            len = 0;
        }
    }
}

impl Conn {
    /// Copies received messages off the front of `ready` into `out` (at least one, then up
    /// to `max` bytes in all); returns their buffer indices, not yet reposted.
    pub(super) fn copy_ready(&self, out: &mut BytesMut, max: usize) -> Vec<u32> {
        let mut ready = self.ready.borrow_mut();
        let mut idxs = Vec::new();
        while let Some(&(idx, len)) = ready.front() {
            if !out.is_empty() && out.len() + len as usize > max {
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
        idxs
    }
}
