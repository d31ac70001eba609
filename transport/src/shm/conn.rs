//! One shm connection's core-local state and its data path: moving queued bytes into the
//! outbound ring and area, and received records into the receive queue.
//!
//! # Records (in each direction's ring)
//! | kind | payload | meaning |
//! |-----:|---------|---------|
//! | 1 `DATA` | the bytes | small payloads, inline; consecutive small buffers are gathered into one record of at most `inline_max` bytes |
//! | 2 `DESC` | `pos: u64`, `len: u64` (LE) | a chunk of a large payload in the sender's buffer area ([`crate::shm::bufarea`]) |
//! | 3 `EOS` | empty | end of stream: the sender shut down its side |
//!
//! Buffers longer than `inline_max` (default 8 KiB) are cut into chunks of at most
//! `chunk_size` (default 64 KiB); each chunk is copied once into the area and announced with
//! a `DESC` record, published on its own, so the receiver copies chunk *n* out while the
//! sender copies chunk *n + 1* in. The receiver copies inline records into receive buffers of
//! up to `recv_buf_size` bytes and each chunk into its own buffer; chunk boundaries are not
//! preserved.
//!
//! # Flow control
//! The poller moves bytes from the [`SendQueue`] only while the ring and area have room; the
//! rest stays queued, so back-pressure reaches `send`/`try_send`. The receiver stops popping
//! records while its receive queue holds `recv_queue_bytes`, which fills the ring and the
//! area and so pushes back on the sender. (A consequence: a reader that never reads stalls
//! the whole direction, as with TCP.)
//!
//! # Failure
//! Any invalid index, record or descriptor from the peer kills the connection: the endpoint
//! reports [`TransportError::Reset`] with the reason, the socket is shut down (the peer sees
//! a hang-up) and the region is unmapped at once (safe: the data path runs synchronously on
//! this core and no view into the mapping outlives a poll). A socket hang-up first drains
//! what the peer published, then reports end of stream ([`TransportError::PeerClosed`]) if
//! the peer had sent `EOS`, else `Reset`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{fence, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};

use crate::addr::Address;
use crate::error::TransportError;
use crate::sendq::SendQueue;
use crate::shm::bufarea::{decode_desc, encode_desc, DESC_LEN};
use crate::shm::layout::Mapped;
use crate::shm::poller::StopSignal;

/// Record kind: inline bytes.
pub const KIND_DATA: u32 = 1;
/// Record kind: a chunk descriptor.
pub const KIND_DESC: u32 = 2;
/// Record kind: end of stream.
pub const KIND_EOS: u32 = 3;

/// Most bytes one connection moves per poll and direction (fairness between connections).
const BUDGET: usize = 1 << 20;
/// Most buffers gathered into one inline record.
const MAX_PARTS: usize = 32;
/// Records popped per ring-head store.
const POP_BATCH: usize = 16;

/// Data-path sizes (see [`crate::shm::stack::ShmOptions`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tunables {
    pub(crate) inline_max: usize,
    pub(crate) chunk_size: usize,
    pub(crate) recv_queue_bytes: usize,
    pub(crate) recv_buf_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxState {
    Open,
    EosWanted,
    EosSent,
}

#[derive(Debug, Clone)]
pub(crate) struct Dead {
    pub(crate) reason: String,
    pub(crate) corrupt: bool,
}

/// Everything a connection carries across cores (see `endpoint::ShmTransfer`).
pub(crate) struct ConnParts {
    pub(crate) peer: Address,
    pub(crate) local: Address,
    pub(crate) tun: Tunables,
    pub(crate) cfg: crate::stack::EndpointConfig,
    pub(crate) sock: OwnedFd,
    pub(crate) mapped: Option<Mapped>,
    pub(crate) recvq: VecDeque<Bytes>,
    pub(crate) tx_state: TxState,
    pub(crate) peer_eos: bool,
    pub(crate) dead: Option<Dead>,
}

/// Receive buffers being filled by one `pump_rx`, appended straight to the receive queue.
struct RxBatch<'a> {
    pool: BytesMut,
    block: usize,
    buf_size: usize,
    out: &'a mut VecDeque<Bytes>,
    out_bytes: usize,
}

impl RxBatch<'_> {
    /// Moves the filled part of the pool out as one received buffer.
    fn emit(&mut self) {
        if !self.pool.is_empty() {
            self.out_bytes += self.pool.len();
            self.out.push_back(self.pool.split().freeze());
        }
    }

    /// Makes room for `need` more bytes (the pool may be emitted first).
    fn room(&mut self, need: usize) {
        if self.pool.capacity() - self.pool.len() >= need {
            return;
        }
        self.emit();
        if !self.pool.try_reclaim(need) {
            self.pool = BytesMut::with_capacity(self.block.max(need));
        }
    }
}

pub(crate) struct Conn {
    pub(crate) id: u64,
    pub(crate) core: usize,
    pub(crate) peer: Address,
    pub(crate) local: Address,
    pub(crate) tun: Tunables,
    pub(crate) cfg: crate::stack::EndpointConfig,
    pub(crate) sendq: SendQueue,
    /// Shared with the watcher task, so its poll never outlives the descriptor.
    pub(crate) sock: Rc<OwnedFd>,
    pub(crate) watch_stop: Rc<StopSignal>,
    mapped: RefCell<Option<Mapped>>,
    /// Receive memory: filled in place and split off into the received `Bytes`; reclaimed
    /// without reallocating once the reader has dropped everything split from it.
    rx_pool: RefCell<BytesMut>,
    recvq: RefCell<VecDeque<Bytes>>,
    recvq_bytes: Cell<usize>,
    recv_waker: RefCell<Option<Waker>>,
    eos_waker: RefCell<Option<Waker>>,
    tx_state: Cell<TxState>,
    peer_eos: Cell<bool>,
    dead: RefCell<Option<Dead>>,
    closed: Cell<bool>,
    /// Blocked for room: the consumer's (ring, area) positions read before the failed attempt.
    tx_blocked: Cell<Option<(u64, u64)>>,
    /// `send` calls on the queued path that have not finished (some may wait for room).
    pub(crate) queued_senders: Cell<usize>,
    /// Wake-up checks owed to the peer: [`PUBLISHED`] and/or [`RELEASED`] (see
    /// [`Conn::settle_wakeups`]).
    owed: Cell<u8>,
}

/// We published records since the last [`Conn::settle_wakeups`]: the peer may be parked
/// waiting for data (`consumer_waiting`).
const PUBLISHED: u8 = 1;
/// We released ring or area room since the last [`Conn::settle_wakeups`]: the peer may be
/// parked waiting for room (`producer_waiting`).
const RELEASED: u8 = 2;

fn next_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Conn {
    pub(crate) fn new(core: usize, p: ConnParts) -> Rc<Conn> {
        let bytes = p.recvq.iter().map(Bytes::len).sum();
        let sendq = SendQueue::new(&p.cfg);
        let c = Conn {
            id: next_id(),
            core,
            peer: p.peer,
            local: p.local,
            tun: p.tun,
            sendq,
            cfg: p.cfg,
            sock: Rc::new(p.sock),
            watch_stop: Rc::new(StopSignal::default()),
            mapped: RefCell::new(p.mapped),
            rx_pool: RefCell::new(BytesMut::new()),
            recvq: RefCell::new(p.recvq),
            recvq_bytes: Cell::new(bytes),
            recv_waker: RefCell::new(None),
            eos_waker: RefCell::new(None),
            tx_state: Cell::new(p.tx_state),
            peer_eos: Cell::new(p.peer_eos),
            dead: RefCell::new(None),
            closed: Cell::new(false),
            tx_blocked: Cell::new(None),
            queued_senders: Cell::new(0),
            owed: Cell::new(0),
        };
        if let Some(d) = p.dead {
            *c.dead.borrow_mut() = Some(d);
            c.teardown();
        }
        Rc::new(c)
    }

    /// Whether the data path is live (the poller drops inactive connections).
    pub(crate) fn is_active(&self) -> bool {
        self.mapped.borrow().is_some()
    }

    /// One poll: receive, then send. Returns whether anything moved.
    pub(crate) fn pump(&self) -> bool {
        self.settle_wakeups();
        let rx = self.pump_rx(false);
        let tx = self.pump_tx();
        rx | tx
    }

    /// Sends the wake-ups owed since the last call: one `SeqCst` fence, then read-and-clear the
    /// peer's `consumer_waiting` (if we published) and `producer_waiting` (if we released), and
    /// one wake-up byte if either was set.
    ///
    /// # Why deferring is safe
    /// Each flag is a Dekker handshake: the peer stores its flag, fences, then re-checks our
    /// index; we store our index (publish or release), fence, then read its flag. Whatever runs
    /// between our store and our fence does not matter: once both sides have fenced, either
    /// the peer's re-check saw our index (it does not park) or our read sees its flag (we wake
    /// it). Deferring only delays the wake-up, and it is bounded: this runs at the start of
    /// every poll of the connection (once per loop iteration), at the end of
    /// [`Conn::enter_park`] (before this core parks) and in [`Conn::take_parts`] (before a
    /// hand-off takes the connection off this core's poller). A connection that dies owes
    /// nothing: the peer sees the socket hang up. Doing it here rather than right after each
    /// publish or release takes the fence (which waits for our stores to reach the peer's
    /// cache) off the path from one message to the next, and pays one fence for both
    /// directions.
    fn settle_wakeups(&self) {
        let owed = self.owed.replace(0);
        if owed == 0 {
            return;
        }
        let guard = self.mapped.borrow();
        let Some(m) = guard.as_ref() else {
            return;
        };
        fence(Ordering::SeqCst);
        let mut wake = false;
        if owed & PUBLISHED != 0 {
            wake |= m.tx.take_consumer_waiting_fenced();
        }
        if owed & RELEASED != 0 {
            wake |= m.rx_peer_waiting.take_fenced();
        }
        drop(guard);
        if wake {
            self.wake_peer();
        }
    }

    fn owe(&self, what: u8) {
        self.owed.set(self.owed.get() | what);
    }

    /// Writes one wake-up byte to the peer (it is parked, or waits for room).
    fn wake_peer(&self) {
        let b = 1u8;
        // SAFETY: sends one byte from a live local onto our own socket; non-blocking.
        let n = unsafe {
            libc::send(
                self.sock.as_raw_fd(),
                (&b as *const u8).cast(),
                1,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            // EAGAIN: the peer has unread wake-up bytes anyway. Anything else: the watcher
            // sees the hang-up.
            tracing::trace!(peer = %self.peer, err = %std::io::Error::last_os_error(), "wake-up byte not sent");
        }
    }

    /// Moves published records into the receive queue. `drain_all` ignores the receive-queue
    /// limit and the budget (final drain after a hang-up). Either way one call takes at most a
    /// ring's worth of records.
    fn pump_rx(&self, drain_all: bool) -> bool {
        let mut guard = self.mapped.borrow_mut();
        let Some(m) = guard.as_mut() else {
            return false;
        };
        let limit = self.tun.recv_queue_bytes;
        let queued = self.recvq_bytes.get();
        if !drain_all && (queued >= limit || m.rx.is_empty()) {
            return false;
        }
        // Bounds the work even if a hostile peer keeps publishing (empty) records: one poll
        // takes at most a ring's worth of records.
        let max_records = m.rx.capacity() / 8;
        // No user code runs while the queue is borrowed: only copies out of the mapping.
        let mut recvq = self.recvq.borrow_mut();
        let mut rx = RxBatch {
            pool: std::mem::take(&mut *self.rx_pool.borrow_mut()),
            block: self.tun.recv_buf_size.max(4 * self.tun.chunk_size),
            buf_size: self.tun.recv_buf_size.max(1),
            out: &mut recvq,
            out_bytes: 0,
        };
        let mut eos = self.peer_eos.get();
        let mut err: Option<String> = None;
        let mut records = 0usize;
        loop {
            if records >= max_records
                || !drain_all
                    && (queued + rx.out_bytes + rx.pool.len() >= limit || rx.out_bytes >= BUDGET)
            {
                break;
            }
            let inn = &mut m.inn;
            let r = m.rx.pop_batch(POP_BATCH, |kind, s| {
                if err.is_some() {
                    return;
                }
                if eos {
                    err = Some(format!("record of kind {kind} after end of stream"));
                    return;
                }
                match kind {
                    KIND_DATA => {
                        if rx.pool.len() + s.len() > rx.buf_size {
                            rx.emit();
                        }
                        rx.room(s.len());
                        let start = rx.pool.len();
                        rx.pool.resize(start + s.len(), 0);
                        s.copy_to(&mut rx.pool[start..]);
                    }
                    KIND_DESC => {
                        let mut d = [0u8; DESC_LEN];
                        if s.len() != DESC_LEN || !s.read_at(0, &mut d) {
                            err = Some(format!("descriptor record of {} bytes", s.len()));
                            return;
                        }
                        let (pos, len) = decode_desc(&d);
                        match inn.take(pos, len) {
                            Ok(span) => {
                                // In pieces of at most a pool block, so a large chunk lands in
                                // recycled receive memory rather than a fresh allocation (whose
                                // first touch would cost a page fault per page).
                                rx.emit();
                                let mut at = 0;
                                while at < span.len() {
                                    let n = (span.len() - at).min(rx.block);
                                    rx.room(n);
                                    let dst = &mut rx.pool.spare_capacity_mut()[..n];
                                    inn.copy_out(span.sub(at, n), dst);
                                    // SAFETY: `copy_out` initialised the first `n` bytes of
                                    // the spare capacity (`room` made it at least that long).
                                    unsafe { rx.pool.set_len(n) };
                                    rx.emit();
                                    at += n;
                                }
                                // Return the chunk as soon as it is copied out.
                                inn.release();
                            }
                            Err(e) => err = Some(e.to_string()),
                        }
                    }
                    KIND_EOS => eos = true,
                    other => err = Some(format!("unknown record kind {other}")),
                }
            });
            let full = matches!(r, Ok(n) if n == POP_BATCH);
            match r {
                Ok(n) => records += n,
                Err(e) => {
                    err.get_or_insert(e.to_string());
                    break;
                }
            }
            // A short batch found the ring empty: do not ask again in this poll.
            if err.is_some() || !full {
                break;
            }
        }
        rx.emit();
        if err.is_none() && records > 0 {
            self.owe(RELEASED);
        }
        drop(guard);
        let (pool, out_bytes) = (rx.pool, rx.out_bytes);
        drop(recvq);
        *self.rx_pool.borrow_mut() = pool;
        if out_bytes > 0 {
            self.recvq_bytes.set(queued + out_bytes);
        }
        if eos && !self.peer_eos.get() {
            self.peer_eos.set(true);
        }
        if let Some(reason) = err {
            self.fail(format!("peer corrupted shared memory: {reason}"), true);
        }
        if records > 0 {
            if let Some(w) = self.recv_waker.borrow_mut().take() {
                w.wake();
            }
        }
        records > 0
    }

    /// The fast path of a send: with nothing queued, being moved or waiting to be queued, a send
    /// that fits one inline record goes straight into the ring when it has room now, and is
    /// published at once (as the poller would have done with it: same record, same wake-up
    /// check). Order is kept: nothing of earlier sends is still queued, and no other send is
    /// waiting for room. `Ok(false)`: not taken (the caller queues the buffers). `Err(())`: the
    /// shared state is corrupt and the connection was reset.
    pub(crate) fn try_send_inline(&self, bufs: &[Bytes]) -> Result<bool, ()> {
        if bufs.len() > MAX_PARTS
            || self.queued_senders.get() != 0
            || self.tx_blocked.get().is_some()
            || !self.sendq.is_empty()
            || self.sendq.is_inflight()
        {
            return Ok(false);
        }
        let mut guard = self.mapped.borrow_mut();
        let Some(m) = guard.as_mut() else {
            return Ok(false);
        };
        let inline_max = self.tun.inline_max.min(m.tx.max_payload());
        let mut parts: [&[u8]; MAX_PARTS] = [&[]; MAX_PARTS];
        let mut total = 0usize;
        for (p, b) in parts.iter_mut().zip(bufs) {
            total += b.len();
            *p = b;
        }
        if total == 0 {
            return Ok(true);
        }
        if total > inline_max {
            return Ok(false);
        }
        match m.tx.try_push(KIND_DATA, &parts[..bufs.len()]) {
            Ok(true) => {
                self.owe(PUBLISHED);
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) => {
                drop(guard);
                self.fail(format!("peer corrupted shared memory: {e}"), true);
                Err(())
            }
        }
    }

    /// Moves queued bytes into the ring and area while they have room. Called by the poller
    /// every iteration and, to save a loop phase of latency, straight after a send queues data.
    pub(crate) fn pump_tx(&self) -> bool {
        if self.closed.get() {
            return false;
        }
        let want_eos = self.tx_state.get() == TxState::EosWanted;
        if self.sendq.is_empty() && !want_eos {
            return false;
        }
        let mut guard = self.mapped.borrow_mut();
        let Some(m) = guard.as_mut() else {
            return false;
        };
        let res = (|| -> Result<(bool, bool), String> {
            // A blocked producer retries only once the consumer has moved past the positions
            // (ring, area) it saw when it found no room. Those are the producer's cached
            // positions after the failed attempt: a push or reserve re-reads the shared position
            // before it reports no room, and a cache only ever holds values read before the
            // failure was decided. So a consumer that releases room right after the failure
            // moves past them (no lost wake-up), and with both positions unchanged the same
            // attempt would fail again. (A snapshot read after the failure could already include
            // that release and never change again.) On the unblocked path nothing is read from
            // the consumer's lines: re-reading `head` on every send would pull the line the
            // consumer just wrote across cores, on the critical path of every message.
            if let Some(at) = self.tx_blocked.get() {
                let now = (
                    m.tx.consumer_position().map_err(|e| e.to_string())?,
                    m.out.released().map_err(|e| e.to_string())?,
                );
                if now == at {
                    return Ok((false, true));
                }
                self.tx_blocked.set(None);
            }
            let (mut progress, mut blocked) = self.push_out(m)?;
            if !blocked && want_eos && self.sendq.is_empty() {
                if m.tx.try_push(KIND_EOS, &[]).map_err(|e| e.to_string())? {
                    self.tx_state.set(TxState::EosSent);
                    progress = true;
                } else {
                    blocked = true;
                }
            }
            if blocked {
                self.tx_blocked.set(Some((
                    m.tx.cached_consumer_position(),
                    m.out.cached_released(),
                )));
            }
            if progress {
                self.owe(PUBLISHED);
            }
            Ok((progress, blocked))
        })();
        drop(guard);
        match res {
            Ok((progress, _)) => {
                if progress && self.tx_state.get() == TxState::EosSent {
                    if let Some(w) = self.eos_waker.borrow_mut().take() {
                        w.wake();
                    }
                }
                progress
            }
            Err(reason) => {
                self.fail(format!("peer corrupted shared memory: {reason}"), true);
                true
            }
        }
    }

    /// Returns (progress, blocked).
    fn push_out(&self, m: &mut Mapped) -> Result<(bool, bool), String> {
        // The region's sizes are the acceptor's: clamp the local policy to them.
        let inline_max = self.tun.inline_max.min(m.tx.max_payload());
        let chunk = self.tun.chunk_size.min(m.out.capacity() / 2);
        let mut progress = false;
        let mut budget = BUDGET;
        while budget > 0 && !self.sendq.is_empty() {
            let mut batch: VecDeque<Bytes> = self.sendq.take_batch(64).into();
            let mut blocked = false;
            let mut unpublished = false;
            let mut res = Ok(());
            while budget > 0 && !batch.is_empty() {
                match push_front(m, &mut batch, inline_max, chunk) {
                    Ok(Pushed::Blocked) => {
                        blocked = true;
                        break;
                    }
                    Ok(Pushed::Sent { bytes, published }) => {
                        budget = budget.saturating_sub(bytes);
                        unpublished = !published;
                        progress = true;
                    }
                    Err(e) => {
                        res = Err(e);
                        break;
                    }
                }
            }
            if unpublished {
                m.tx.publish();
            }
            if !batch.is_empty() {
                self.sendq.unshift(batch.into());
            }
            self.sendq.batch_done();
            res?;
            if blocked {
                return Ok((progress, true));
            }
        }
        Ok((progress, false))
    }

    /// A send buffer in our area when it has room (see [`crate::txbuf`]); `None`: the caller
    /// falls back to the heap. Payloads that go inline are not worth it.
    pub(crate) fn alloc(&self, len: usize) -> Option<crate::TxBuf> {
        let mut guard = self.mapped.borrow_mut();
        let m = guard.as_mut()?;
        if len <= self.tun.inline_max.min(m.tx.max_payload()) {
            return None;
        }
        // A corrupt released position is reported by the next pump; here it just means no
        // area buffer.
        m.alloc(len).ok().flatten()
    }

    /// The poller wants to park: arm wake-ups, re-check. `false` vetoes the park.
    pub(crate) fn enter_park(&self) -> bool {
        // Before this core may park, the peer gets every wake-up it is owed.
        self.settle_wakeups();
        {
            let guard = self.mapped.borrow();
            let Some(m) = guard.as_ref() else {
                return true;
            };
            // With a full receive queue we do not want data: the reader's `recv` resumes us.
            if self.recvq_bytes.get() < self.tun.recv_queue_bytes && !m.rx.prepare_park() {
                return false;
            }
            if self.sendq.is_empty() && self.tx_state.get() != TxState::EosWanted {
                return true;
            }
            m.tx_waiting.set();
        }
        // Re-check for room after announcing that we wait for it.
        let park = !self.pump_tx();
        self.settle_wakeups();
        park
    }

    /// After a park (or a vetoed one): disarm the wake-up flags.
    pub(crate) fn exit_park(&self) {
        if let Some(m) = self.mapped.borrow().as_ref() {
            m.rx.set_waiting(false);
            m.tx_waiting.clear();
        }
    }

    /// Unmaps the region and fails every waiter.
    fn teardown(&self) {
        let m = self.mapped.borrow_mut().take();
        drop(m);
        self.sendq.close();
        self.watch_stop.stop();
        if let Some(w) = self.recv_waker.borrow_mut().take() {
            w.wake();
        }
        if let Some(w) = self.eos_waker.borrow_mut().take() {
            w.wake();
        }
    }

    fn shutdown_socket(&self) {
        // SAFETY: plain syscall on our own socket.
        unsafe { libc::shutdown(self.sock.as_raw_fd(), libc::SHUT_RDWR) };
    }

    /// The peer broke the protocol (or the data path failed): reset the connection.
    pub(crate) fn fail(&self, reason: String, corrupt: bool) {
        if self.closed.get() || self.dead.borrow().is_some() {
            return;
        }
        tracing::warn!(peer = %self.peer, %reason, "shm connection reset");
        *self.dead.borrow_mut() = Some(Dead { reason, corrupt });
        self.shutdown_socket();
        self.teardown();
    }

    /// The socket hung up: take what the peer published, then end the connection.
    pub(crate) fn on_hup(&self, reason: String) {
        if self.closed.get() || self.dead.borrow().is_some() {
            return;
        }
        self.pump_rx(true);
        if self.dead.borrow().is_some() {
            return; // the drain found corruption
        }
        tracing::debug!(peer = %self.peer, %reason, eos = self.peer_eos.get(), "shm peer hung up");
        *self.dead.borrow_mut() = Some(Dead {
            reason,
            corrupt: false,
        });
        self.teardown();
    }

    /// Close at once (abort / drop).
    pub(crate) fn abort(&self) {
        if self.closed.get() {
            return;
        }
        self.closed.set(true);
        self.shutdown_socket();
        self.recvq.borrow_mut().clear();
        self.recvq_bytes.set(0);
        self.teardown();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// The error for a send that cannot proceed.
    pub(crate) fn send_error(&self) -> TransportError {
        let peer = self.peer.clone();
        if self.closed.get() {
            return TransportError::Closed { peer };
        }
        if let Some(d) = self.dead.borrow().as_ref() {
            return TransportError::Reset {
                peer,
                reason: d.reason.clone(),
            };
        }
        // Closed locally, or our sending side was shut down.
        TransportError::Closed { peer }
    }

    /// Whether sending is possible at all.
    pub(crate) fn can_send(&self) -> bool {
        !self.closed.get() && self.dead.borrow().is_none() && self.tx_state.get() == TxState::Open
    }

    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Result<Bytes, TransportError>> {
        if let Some(b) = self.recvq.borrow_mut().pop_front() {
            self.recvq_bytes.set(self.recvq_bytes.get() - b.len());
            return Poll::Ready(Ok(b));
        }
        if !self.closed.get() && !self.peer_eos.get() && self.dead.borrow().is_none() {
            // Nothing yet (the usual case: no error to build, no address to clone).
            let mut w = self.recv_waker.borrow_mut();
            if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *w = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        let peer = self.peer.clone();
        if self.closed.get() {
            return Poll::Ready(Err(TransportError::Closed { peer }));
        }
        let dead = self.dead.borrow();
        match dead.as_ref() {
            Some(d) if d.corrupt => {
                return Poll::Ready(Err(TransportError::Reset {
                    peer,
                    reason: d.reason.clone(),
                }))
            }
            _ if self.peer_eos.get() => {
                return Poll::Ready(Err(TransportError::PeerClosed { peer }))
            }
            Some(d) => {
                return Poll::Ready(Err(TransportError::Reset {
                    peer,
                    reason: d.reason.clone(),
                }))
            }
            None => {}
        }
        *self.recv_waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Ask for end of stream (after a flush); the poller pushes `EOS` when there is room.
    pub(crate) fn request_eos(&self) {
        if self.tx_state.get() == TxState::Open {
            self.tx_state.set(TxState::EosWanted);
            self.tx_blocked.set(None);
        }
    }

    pub(crate) fn poll_eos_sent(&self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        if self.tx_state.get() == TxState::EosSent {
            return Poll::Ready(Ok(()));
        }
        if self.closed.get() || self.dead.borrow().is_some() {
            return Poll::Ready(Err(self.send_error()));
        }
        *self.eos_waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }

    pub(crate) fn tx_state(&self) -> TxState {
        self.tx_state.get()
    }

    /// Takes the movable state out (for a transfer); the connection is left inactive.
    pub(crate) fn take_parts(&self, sock: OwnedFd) -> ConnParts {
        // This core's poller no longer settles for this connection.
        self.settle_wakeups();
        self.watch_stop.stop();
        let mapped = self.mapped.borrow_mut().take();
        let recvq = std::mem::take(&mut *self.recvq.borrow_mut());
        self.recvq_bytes.set(0);
        self.closed.set(true);
        ConnParts {
            peer: self.peer.clone(),
            local: self.local.clone(),
            tun: self.tun,
            cfg: self.cfg.clone(),
            sock,
            mapped,
            recvq,
            tx_state: self.tx_state.get(),
            peer_eos: self.peer_eos.get(),
            dead: self.dead.borrow().clone(),
        }
    }
}

/// What [`push_front`] did with the front of a send batch.
enum Pushed {
    /// The ring or the area is full (or the batch empty): nothing was taken.
    Blocked,
    /// `bytes` of the batch went out; `published`: the ring's tail is published (a copied
    /// chunk is published at once, inline and adopted entries wait for the batch's end).
    Sent { bytes: usize, published: bool },
}

/// Push the front of `batch` to the ring, the cheapest way its size allows: small buffers
/// (several at once) inline in the ring entry; a buffer the user wrote straight into our area
/// by reference; anything else copied into the area, one chunk of at most `chunk` bytes.
/// Consumes what went out from `batch`.
fn push_front(
    m: &mut Mapped,
    batch: &mut VecDeque<Bytes>,
    inline_max: usize,
    chunk: usize,
) -> Result<Pushed, String> {
    let push = |m: &mut Mapped, kind, parts: &[&[u8]]| {
        m.tx.try_push_deferred(kind, parts)
            .map_err(|e| e.to_string())
    };
    // The caller passes a non-empty batch; an empty one has nothing to take.
    let Some(front) = batch.front() else {
        return Ok(Pushed::Blocked);
    };
    if front.len() <= inline_max {
        let mut parts: [&[u8]; MAX_PARTS] = [&[]; MAX_PARTS];
        let (mut n, mut total) = (0, 0);
        for b in batch.iter().take(MAX_PARTS) {
            if b.len() > inline_max || total + b.len() > inline_max {
                break;
            }
            parts[n] = b;
            total += b.len();
            n += 1;
        }
        if !push(m, KIND_DATA, &parts[..n])? {
            return Ok(Pushed::Blocked);
        }
        batch.drain(..n);
        return Ok(Pushed::Sent {
            bytes: total,
            published: false,
        });
    }
    if let Some(pos) = m.out.adopt(front.as_ptr(), front.len()) {
        // Written by the user straight into our area (`Endpoint::alloc`): send the
        // reference, no copy.
        let len = front.len();
        if !push(m, KIND_DESC, &[&encode_desc(pos, len as u64)])? {
            m.out.unreserve();
            return Ok(Pushed::Blocked);
        }
        batch.pop_front();
        return Ok(Pushed::Sent {
            bytes: len,
            published: false,
        });
    }
    let Some((pos, n)) = m
        .out
        .reserve(front.len().min(chunk))
        .map_err(|e| e.to_string())?
    else {
        return Ok(Pushed::Blocked);
    };
    if !push(m, KIND_DESC, &[&encode_desc(pos, n as u64)])? {
        m.out.unreserve();
        return Ok(Pushed::Blocked);
    }
    m.out.write(pos, &front[..n]);
    // Publish each chunk at once: the receiver copies it out meanwhile.
    m.tx.publish();
    if let Some(f) = batch.front_mut() {
        f.advance(n);
        if f.is_empty() {
            batch.pop_front();
        }
    }
    Ok(Pushed::Sent {
        bytes: n,
        published: true,
    })
}
