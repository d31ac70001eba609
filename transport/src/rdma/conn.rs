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
//! later call reports `Reset` (or `Closed` after a local abort). Dropping the endpoint closes
//! the side channel and destroys the QP (the verbs layer drains it), then returns its chunks.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::net::Shutdown;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use corewire_runtime::net::TcpStream;
use corewire_runtime::{debug_assert_on_core, timer};

use crate::addr::Address;
use crate::error::{Result, TransportError};
use crate::rdma::core::{CoreRdma, CHUNK};
use crate::rdma::verbs::{
    MemoryRegion, QueuePair, RecvWr, SendOp, SendWr, Sge, WcStatus, WorkCompletion,
};
use crate::sendq::SendQueue;
use crate::stack::{Endpoint, EndpointConfig, Transfer};

/// Receive buffers (and initial credits) per connection.
pub(crate) const RECV_BUFS: u32 = 16;
/// Credits owed before a credit-only message is sent.
pub(crate) const CREDIT_THRESHOLD: u32 = RECV_BUFS / 2;
/// Send work requests outstanding per QP.
pub(crate) const SQ_DEPTH: u32 = 64;
/// Signal at least every this many send requests.
const SIGNAL_EVERY: u64 = 16;
/// Most bytes one `recv` copies out (several received messages merge into one chunk).
const RECV_MERGE: usize = 256 << 10;
/// `wr_id` bit of receives (sends use a sequence number below it).
const RECV_BIT: u64 = 1 << 62;
/// Immediate data: end of stream.
const IMM_EOS: u32 = 1 << 31;
const IMM_CREDITS: u32 = 0xffff;
/// How long a side-channel hang-up waits for an end-of-stream message still in flight.
const HUP_GRACE: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
enum Dead {
    Reset(String),
    Closed,
}

/// See the module docs.
pub(crate) struct Conn {
    core_id: usize,
    pub(crate) dirty: Cell<bool>,
    // `qp` before `recv_mr`: the QP (and its posted receives) goes first.
    qp: RefCell<Option<QueuePair>>,
    recv_mr: MemoryRegion,
    qpn: u32,
    max_inline: usize,
    peer: Address,
    local: Address,
    stream: Rc<TcpStream>,
    sendq: SendQueue,
    /// Largest message the peer accepts (its buffer size, capped by our chunk size).
    msg_max: usize,
    credits: Cell<u32>,
    sq_used: Cell<u32>,
    next_seq: Cell<u64>,
    /// Posted sends not yet released: sequence number and pool chunk.
    inflight: RefCell<VecDeque<(u64, Option<u32>)>>,
    eos_wanted: Cell<bool>,
    eos_posted: Cell<bool>,
    /// Received messages not yet returned by `recv`: buffer index and length.
    ready: RefCell<VecDeque<(u32, u32)>>,
    /// Buffers reposted whose credits are not yet returned to the peer.
    owed: Cell<u32>,
    eof: Cell<bool>,
    dead: RefCell<Option<Dead>>,
    rx_waker: RefCell<Option<Waker>>,
    sent_wakers: RefCell<Vec<Waker>>,
    closed: Cell<bool>,
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
            qpn,
            max_inline,
            peer: p.peer,
            local: p.local,
            stream: Rc::new(p.stream),
            sendq: SendQueue::new(&p.cfg),
            msg_max: p.peer_buf.min(CHUNK),
            credits: Cell::new(p.peer_credits),
            sq_used: Cell::new(0),
            next_seq: Cell::new(0),
            inflight: RefCell::new(VecDeque::new()),
            eos_wanted: Cell::new(false),
            eos_posted: Cell::new(false),
            ready: RefCell::new(VecDeque::new()),
            owed: Cell::new(0),
            eof: Cell::new(false),
            dead: RefCell::new(None),
            rx_waker: RefCell::new(None),
            sent_wakers: RefCell::new(Vec::new()),
            closed: Cell::new(false),
        }
    }

    pub(crate) fn qpn(&self) -> u32 {
        self.qpn
    }

    pub(crate) fn stream(&self) -> Rc<TcpStream> {
        self.stream.clone()
    }

    /// Posts the receive buffers `idxs`.
    pub(crate) fn post_recvs(&self, idxs: &[u32]) -> Result<()> {
        let qp = self.qp.borrow();
        let Some(qp) = qp.as_ref() else {
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

    fn error(&self) -> Option<TransportError> {
        self.dead.borrow().as_ref().map(|d| match d {
            Dead::Reset(reason) => TransportError::Reset {
                peer: self.peer.clone(),
                reason: reason.clone(),
            },
            Dead::Closed => TransportError::Closed {
                peer: self.peer.clone(),
            },
        })
    }

    fn wake_all(&self) {
        if let Some(w) = self.rx_waker.borrow_mut().take() {
            w.wake();
        }
        for w in self.sent_wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Kills the connection with `e` (the first reason sticks).
    fn fail(&self, e: Dead) {
        if self.dead.borrow().is_none() {
            if let Dead::Reset(r) = &e {
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
            if self.dead.borrow().is_none() {
                self.fail(Dead::Reset(format!(
                    "receive completion failed: {} (vendor error {:#x})",
                    wc.status(),
                    wc.vendor_err()
                )));
            }
            return;
        }
        let idx = (wc.wr_id() & 0xffff_ffff) as u32;
        let imm = wc.imm_data().unwrap_or(0);
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

    fn owe(self: &Rc<Self>, core: &CoreRdma, n: u32) {
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
            while inflight.front().is_some_and(|&(s, _)| s <= seq) {
                let (_, chunk) = inflight.pop_front().expect("front");
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
                self.fail(Dead::Reset(format!(
                    "send completion failed: {} (vendor error {:#x})",
                    wc.status(),
                    wc.vendor_err()
                )));
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

    /// Posts what can be posted now as one chain; returns whether anything was posted.
    pub(crate) fn pump(self: &Rc<Self>, core: &CoreRdma) -> bool {
        if self.dead.borrow().is_some() {
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
                let len = queued.min(self.msg_max);
                let src = if len <= self.max_inline {
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
            for (i, (_, src, _)) in plan.iter().enumerate() {
                let chunk = match *src {
                    Src::Chunk(c) => Some(c),
                    _ => None,
                };
                inflight.push_back((first + i as u64, chunk));
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

    /// Local close: the QP is destroyed (drained), chunks are returned, the side channel is
    /// shut down so the peer notices.
    pub(crate) fn close(self: &Rc<Self>, core: &CoreRdma) {
        if self.closed.replace(true) {
            return;
        }
        self.fail(Dead::Closed);
        let _ = self.stream.shutdown(Shutdown::Both);
        core.remove(self.qpn);
        let qp = self.qp.borrow_mut().take();
        drop(qp); // moves to ERR, drains, destroys
        for (_, chunk) in self.inflight.borrow_mut().drain(..) {
            if let Some(c) = chunk {
                core.pool.put(c);
            }
        }
        core.chunks_freed();
        core.release_cq(SQ_DEPTH + RECV_BUFS + 2);
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

/// The side-channel watcher: the channel carries nothing after setup, so end of file or an
/// error means the peer closed or died.
pub(crate) async fn watch(conn: Weak<Conn>, core: Rc<CoreRdma>, stream: Rc<TcpStream>) {
    let (r, _buf) = stream.read(Vec::<u8>::with_capacity(16)).await;
    let Some(c) = conn.upgrade() else { return };
    let why = match r {
        Ok(0) => "side channel closed (peer closed or died)".to_string(),
        Ok(n) => format!("peer sent {n} unexpected bytes on the side channel"),
        Err(e) => format!("side channel failed: {e}"),
    };
    c.on_hup(&core, why).await;
}

/// An RDMA connection owned by one core. Dropping it aborts the connection.
pub struct RdmaEndpoint {
    pub(crate) conn: Rc<Conn>,
    pub(crate) core: Rc<CoreRdma>,
}

impl RdmaEndpoint {
    fn check(&self) -> Result<()> {
        debug_assert_on_core(self.conn.core_id);
        match self.conn.error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn closed_err(&self) -> TransportError {
        self.conn.error().unwrap_or(TransportError::Closed {
            peer: self.conn.peer.clone(),
        })
    }

    /// Copies out the received messages (up to [`RECV_MERGE`] bytes) and reposts their
    /// buffers.
    fn take_ready(&self) -> Option<Result<Bytes>> {
        let c = &self.conn;
        let mut ready = c.ready.borrow_mut();
        if ready.is_empty() {
            return None;
        }
        let mut out = BytesMut::new();
        let mut idxs = Vec::new();
        while let Some(&(idx, len)) = ready.front() {
            if !out.is_empty() && out.len() + len as usize > RECV_MERGE {
                break;
            }
            ready.pop_front();
            let at = idx as usize * CHUNK;
            assert!(len as usize <= CHUNK && at + CHUNK <= c.recv_mr.len());
            // SAFETY: buffer `idx` completed (its completion was polled) and is not posted
            // again until after this copy; `len` bytes of it were written by the adapter and
            // lie inside the region (checked above).
            let src =
                unsafe { std::slice::from_raw_parts(c.recv_mr.as_ptr().add(at), len as usize) };
            out.extend_from_slice(src);
            idxs.push(idx);
        }
        drop(ready);
        if let Err(e) = c.post_recvs(&idxs) {
            c.fail(Dead::Reset(e.to_string()));
        } else {
            c.owe(&self.core, idxs.len() as u32);
        }
        Some(Ok(out.freeze()))
    }
}

impl Endpoint for RdmaEndpoint {
    type Transfer = RdmaTransfer;

    async fn send(&self, bufs: Vec<Bytes>) -> Result<()> {
        self.check()?;
        match self.conn.sendq.push(bufs).await {
            Ok(()) => {
                self.core.mark_dirty(&self.conn);
                Ok(())
            }
            Err(_) => Err(self.closed_err()),
        }
    }

    fn try_send(&self, bufs: Vec<Bytes>) -> std::result::Result<(), (TransportError, Vec<Bytes>)> {
        if let Err(e) = self.check() {
            return Err((e, bufs));
        }
        let q = &self.conn.sendq;
        match q.try_push(bufs) {
            Ok(()) => {
                self.core.mark_dirty(&self.conn);
                Ok(())
            }
            Err(bufs) => {
                let e = self.conn.error().unwrap_or(TransportError::Full {
                    peer: self.conn.peer.clone(),
                    queued_bytes: q.bytes(),
                    queued_bufs: q.len(),
                });
                Err((e, bufs))
            }
        }
    }

    async fn flush(&self) -> Result<()> {
        self.check()?;
        if self.conn.sendq.flushed().await {
            Ok(())
        } else {
            Err(self.closed_err())
        }
    }

    async fn recv(&self) -> Result<Bytes> {
        debug_assert_on_core(self.conn.core_id);
        let c = &self.conn;
        poll_fn(|cx| {
            if matches!(*c.dead.borrow(), Some(Dead::Closed)) {
                return Poll::Ready(Err(self.closed_err()));
            }
            if let Some(r) = self.take_ready() {
                return Poll::Ready(r);
            }
            if c.eof.get() {
                return Poll::Ready(Err(TransportError::PeerClosed {
                    peer: c.peer.clone(),
                }));
            }
            if let Some(e) = c.error() {
                return Poll::Ready(Err(e));
            }
            *c.rx_waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    async fn shutdown(&self) -> Result<()> {
        self.flush().await?;
        let c = &self.conn;
        c.eos_wanted.set(true);
        self.core.mark_dirty(c);
        // Wait until the end-of-stream message and everything before it were acknowledged.
        poll_fn(|cx| {
            if let Some(e) = c.error() {
                return Poll::Ready(Err(e));
            }
            if c.eos_posted.get() && c.inflight.borrow().is_empty() {
                return Poll::Ready(Ok(()));
            }
            c.sent_wakers.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    fn abort(&self) {
        self.conn.fail(Dead::Closed);
        let _ = self.conn.stream.shutdown(Shutdown::Both);
    }

    fn peer_addr(&self) -> &Address {
        &self.conn.peer
    }

    fn local_addr(&self) -> &Address {
        &self.conn.local
    }

    fn queued_bytes(&self) -> usize {
        self.conn.sendq.bytes()
    }

    fn into_transfer(self) -> std::result::Result<RdmaTransfer, (TransportError, Self)> {
        let e = TransportError::WrongState {
            peer: self.conn.peer.clone(),
            what: "rdma endpoints are bound to their core's CQ; hand-off needs \
                   re-registration, not implemented",
        };
        Err((e, self))
    }
}

impl RdmaEndpoint {
    /// Test hook, not API: moves the queue pair to ERR behind the connection's back, as a
    /// fatal adapter or link error would. The connection finds out as in that case: from its
    /// flushed work requests (and the peer from its unacknowledged sends).
    #[doc(hidden)]
    pub fn inject_qp_error(&self) -> Result<()> {
        match self.conn.qp.borrow().as_ref() {
            Some(qp) => qp.to_error(),
            None => Ok(()),
        }
    }
}

impl Drop for RdmaEndpoint {
    fn drop(&mut self) {
        self.conn.close(&self.core);
    }
}

/// Never produced: RDMA endpoints cannot move between cores yet (see
/// [`RdmaEndpoint::into_transfer`]).
pub struct RdmaTransfer {
    never: std::convert::Infallible,
}

impl Transfer for RdmaTransfer {
    type Endpoint = RdmaEndpoint;
    fn attach(self) -> Result<RdmaEndpoint> {
        match self.never {}
    }
}
