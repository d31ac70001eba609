//! Hand-off of an RDMA endpoint to another core, and the side-channel task.
//!
//! A queue pair is bound to its core's CQ and PD, so a move re-creates the connection's QP on
//! the target core and reconnects both ends over the TCP side channel:
//!
//! 1. [`detach`] (`into_transfer`, old core, sync) refuses with `WrongState` (the endpoint
//!    stays usable) unless the endpoint is locally quiescent: after one poll of the core CQ,
//!    nothing queued, no data or end-of-stream message posted and unacknowledged (credit-only
//!    messages may be: they carry nothing that can be lost), no move in progress. It then
//!    stops the side-channel task (it only waits for readiness, so it consumes no byte meant
//!    for the new core), duplicates the side-channel socket, retires the QP (ERR, drain,
//!    destroy), keeps the data of receives that completed during the drain, and copies every
//!    received but unreturned byte into owned [`Bytes`]. It records the loss-check counters:
//!    data (and end-of-stream) messages sent and received on the old QP.
//! 2. [`RdmaTransfer::attach`] (new core, sync) creates a QP and receive buffers on the
//!    target core, posts the receives and spawns the side-channel task, which sends
//!    **MOVE** ([`MoveMsg`]: new QPN/PSN/GID/MTU, credits, buffer size, the counters). Sends
//!    queue up meanwhile ([`Phase::Moving`]).
//! 3. The peer's side-channel task reads MOVE ([`Phase::PeerMoving`]: it stops posting),
//!    polls its CQ until it has received every data message the mover sent (bounded by
//!    [`MOVE_WAIT`]), retires its old QP, and compares the counters. A mismatch is data loss
//!    (the peer sent on the old QP after the mover tore it down, or a message of the mover
//!    never arrived): it answers **MOVED** with status `LOST` and both sides reset with a
//!    `Reset` naming the counts: never silent loss. Otherwise it creates a new QP on its own
//!    core (reusing its receive buffers: those still holding unreturned data are reposted
//!    when `recv` returns them, as credits, exactly as before), connects it, answers MOVED
//!    with its parameters, and waits for the mover's `READY` byte before posting again.
//! 4. The mover connects its QP, sends `READY` and both sides continue with fresh credits.
//!
//! Zero-copy state (registered memory is per core): a WRITE queued or in flight refuses the
//! move like any send. On the move both sides forget the peer's slab advertisements; the
//! mover copies written but unreturned slabs into the transfer and gives its slabs back to
//! the old core (slabs still held by the user go back there when dropped), reserves slabs on
//! the target core (`attach` fails with `Unavailable` if it has none free: the peer, told at
//! setup that this side advertises, would otherwise wait forever) and advertises them once
//! live; the staying side re-advertises its own on
//! the new QP. See [`crate::rdma::zerocopy`].
//!
//! The peer's old QP may notice the mover's teardown first (a send retried to exhaustion):
//! a failed completion while live therefore holds the connection ([`Phase::Broken`]) for
//! [`MOVE_GRACE`] waiting for a MOVE before it resets. A malformed MOVE or MOVED, unexpected
//! bytes, or both ends moving at once close the connection with a typed error; every step
//! is bounded by the connect timeout.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use corewire_runtime::net::{readable, TcpStream};
use corewire_runtime::{current_core, debug_assert_on_core, spawn_local, timer};

use crate::addr::Address;
use crate::error::{Result, TransportError};
use crate::rdma::conn::{Conn, ConnParts, Dead, Phase, IMM_EOS, QP_CQ_BUDGET, RECV_BIT, RECV_BUFS};
use crate::rdma::core::{core_rdma, CoreRdma, CHUNK};
use crate::rdma::endpoint::RdmaEndpoint;
use crate::rdma::setup::{MoveMsg, MOVED_MAGIC, MOVE_LOST, MOVE_MAGIC, MOVE_OK, READY};
use crate::rdma::stack::{create_qp, create_recv_mr, RxSlabs};
use crate::rdma::verbs::{WcOpcode, WorkCompletion};
use crate::rdma::zerocopy::{Ready, IMM_ADV};
use crate::stack::{EndpointConfig, Transfer};

/// How long the peer of a moved endpoint waits for the data messages the mover sent on the
/// old QP (all acknowledged, so normally already in its CQ).
pub(crate) const MOVE_WAIT: Duration = Duration::from_secs(2);

/// Stops a connection's side-channel task, and tells `into_transfer` it is mid-message.
#[derive(Default)]
pub(crate) struct SideCtl {
    stopped: Cell<bool>,
    waker: RefCell<Option<Waker>>,
    /// The task is reading or acting on a message (a peer's MOVE).
    busy: Cell<bool>,
}

impl SideCtl {
    pub(crate) fn stop(&self) {
        self.stopped.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// A detached RDMA endpoint: the side-channel socket, the bytes received but not returned
/// by `recv`, and the loss-check counters of the retired QP. See the module docs.
pub struct RdmaTransfer {
    stream: std::net::TcpStream,
    peer: Address,
    local: Address,
    cfg: EndpointConfig,
    pending: VecDeque<Bytes>,
    eof: bool,
    peer_zc: bool,
    /// This side told the peer it advertises slabs (the target core must have one).
    local_zc: bool,
    data_sent: u64,
    data_recvd: u64,
}

/// `into_transfer`: see the module docs.
pub(crate) fn detach(
    ep: RdmaEndpoint,
) -> std::result::Result<RdmaTransfer, (TransportError, RdmaEndpoint)> {
    debug_assert_on_core(ep.conn.core_id);
    let (c, core) = (&ep.conn, &ep.core);
    while core.poll_cq() > 0 {}
    if let Some(e) = c.error() {
        return Err((e, ep));
    }
    let refuse = |what: &'static str, ep: RdmaEndpoint| {
        let peer = ep.conn.peer.clone();
        Err((TransportError::WrongState { peer, what }, ep))
    };
    if c.phase.get() != Phase::Live || c.side.busy.get() {
        return refuse(
            "a hand-off of this rdma connection is in progress (or its queue pair failed)",
            ep,
        );
    }
    let data_inflight = c.inflight.borrow().iter().any(|f| f.data);
    if !c.sendq.is_empty() || c.sendq.is_inflight() || data_inflight {
        return refuse(
            "cannot move an endpoint with a send queued or in flight",
            ep,
        );
    }
    if c.eos_wanted.get() {
        return refuse("cannot move an endpoint that is shutting down", ep);
    }
    let stream = match c.stream.try_clone_std() {
        Ok(s) => s,
        Err(e) => {
            let e = TransportError::from_io(&c.peer, "dup the rdma side channel", e);
            return Err((e, ep));
        }
    };
    // Point of no return: this core's copy is retired.
    c.phase.set(Phase::Gone);
    c.side.stop();
    for wc in c.retire_qp(core) {
        absorb_drained(c, &wc);
    }
    let mut pending = std::mem::take(&mut *c.carried.borrow_mut());
    let out = copy_all_ready(c, core);
    if !out.is_empty() {
        pending.push_back(out);
    }
    // The old QP is gone: its slabs go back to this core (held ones when the user drops
    // them); the target core advertises its own.
    c.release_slabs(core);
    let t = RdmaTransfer {
        stream,
        peer: c.peer.clone(),
        local: c.local.clone(),
        cfg: c.cfg.clone(),
        pending,
        eof: c.eof.get(),
        peer_zc: c.zc.peer_zc.get(),
        local_zc: c.zc.local_zc.get(),
        data_sent: c.data_sent.get(),
        data_recvd: c.data_recvd.get(),
    };
    tracing::debug!(peer = %c.peer, carried = t.pending.iter().map(Bytes::len).sum::<usize>(),
        sent = t.data_sent, received = t.data_recvd, "rdma: endpoint detached for a hand-off");
    // Dropping `ep` now finds the connection closed: no shutdown of the shared socket.
    c.closed.set(true);
    c.fail(Dead::Closed);
    core.release_cq(QP_CQ_BUDGET);
    Ok(t)
}

/// Copies out everything received and not yet returned, in order (written slabs included:
/// their memory stays on this core).
fn copy_all_ready(c: &Conn, core: &CoreRdma) -> Bytes {
    let mut out = BytesMut::new();
    loop {
        c.copy_ready(&mut out, usize::MAX);
        let front = c.ready.borrow().front().copied();
        let (Some(Ready::Large(s, len)), Some(pool)) = (front, core.zc.as_ref()) else {
            break;
        };
        c.ready.borrow_mut().pop_front();
        // SAFETY: the WRITE into slab `s` completed (drained or polled) and the QP is gone;
        // the slab is released (by `release_slabs`) only after this copy; `len <= SLAB`
        // was checked by `on_write`.
        unsafe { pool.rx_copy(s, len as usize, &mut out) };
        c.zc.count(|st| st.recv_copied_bytes += u64::from(len));
        pool.release_rx([s]);
    }
    out.freeze()
}

/// Keeps the data of a receive that completed while its QP was being retired.
/// Advertisements are ignored: a move resets them.
fn absorb_drained(c: &Conn, wc: &WorkCompletion) {
    if !wc.is_success() || wc.wr_id() & RECV_BIT == 0 {
        return;
    }
    let imm = wc.imm_data().unwrap_or(0);
    if wc.opcode() == WcOpcode::RecvRdmaWithImm {
        match c.on_write(imm, wc.byte_len()) {
            Ok(r) => {
                c.ready.borrow_mut().push_back(r);
                c.data_recvd.set(c.data_recvd.get() + 1);
            }
            // Not counted: the loss check turns it into a reset.
            Err(what) => tracing::debug!(peer = %c.peer, %what, "rdma: bad WRITE while retiring"),
        }
    } else if imm & IMM_ADV != 0 {
        // Dropped: both sides advertise afresh after the move.
    } else if imm & IMM_EOS != 0 {
        c.eof.set(true);
        c.data_recvd.set(c.data_recvd.get() + 1);
    } else if wc.byte_len() > 0 {
        let idx = (wc.wr_id() & 0xffff_ffff) as u32;
        c.ready
            .borrow_mut()
            .push_back(Ready::Small(idx, wc.byte_len()));
        c.data_recvd.set(c.data_recvd.get() + 1);
    }
}

impl Transfer for RdmaTransfer {
    type Endpoint = RdmaEndpoint;

    /// Re-creates the connection on this core: a new QP, then MOVE to the peer (see the
    /// module docs). Sends queue up until the peer has answered.
    fn attach(self) -> Result<RdmaEndpoint> {
        let core_id = current_core().ok_or(corewire_runtime::RuntimeError::NotOnCore(
            "RdmaTransfer::attach",
        ))?;
        let Address::Rdma(_, opts) = &self.local else {
            return Err(TransportError::WrongTransport {
                addr: self.local.clone(),
                stack: "rdma",
            });
        };
        let core = core_rdma(opts)?;
        let stream = TcpStream::from_std(self.stream)
            .map_err(|e| TransportError::from_io(&self.peer, "adopt the rdma side channel", e))?;
        // Only a side that told its peer it advertises needs slabs on the new core (it had
        // some, so its `receive_slabs` is at least 1).
        let wanted = if self.local_zc {
            self.cfg.receive_slabs
        } else {
            0
        };
        let slabs = RxSlabs::reserve(&core, wanted);
        if self.local_zc && slabs.0.is_empty() {
            // The peer was told (at setup) that this side advertises receive slabs and waits
            // for them before a large send: without one here it would wait forever.
            return Err(TransportError::Unavailable {
                what: format!(
                    "rdma hand-off to core {core_id}: no free zero-copy receive slab for the \
                     connection to {} (its peer expects advertisements); connection dropped",
                    self.peer
                ),
            });
        }
        core.reserve_cq(QP_CQ_BUDGET)?;
        let made = create_qp(&core).and_then(|qp| Ok((qp, create_recv_mr(&core)?)));
        let (qp, recv_mr) = match made {
            Ok(x) => x,
            Err(e) => {
                core.release_cq(QP_CQ_BUDGET);
                return Err(e);
            }
        };
        let endpoint = qp.endpoint();
        let conn = Rc::new(Conn::new(ConnParts {
            core_id,
            qp,
            recv_mr,
            peer: self.peer,
            local: self.local,
            stream,
            cfg: self.cfg,
            peer_credits: 0,
            peer_buf: CHUNK,
            peer_zc: self.peer_zc,
        }));
        // Advertised to the peer once the move is done (`go_live`).
        slabs.hand_to(&core, &conn);
        conn.phase.set(Phase::Moving);
        *conn.carried.borrow_mut() = self.pending;
        conn.eof.set(self.eof);
        let ep = RdmaEndpoint {
            conn: conn.clone(),
            core: core.clone(),
        };
        // From here on, dropping `ep` closes the connection and releases the budget.
        core.install(&conn)?;
        let mv = MoveMsg {
            answer: false,
            qp: endpoint,
            credits: RECV_BUFS as u16,
            status: MOVE_OK,
            buf_size: CHUNK as u32,
            data_sent: self.data_sent,
            data_received: self.data_recvd,
        };
        let (weak, stream, side) = (Rc::downgrade(&conn), conn.stream(), conn.side.clone());
        tracing::debug!(peer = %conn.peer, core = core_id, qpn = conn.qpn(), "rdma: endpoint attached; MOVE");
        spawn_local(side_channel(weak, core, stream, side, Some(mv))).detach();
        Ok(ep)
    }
}

/// The loss check: `None` when every data message sent on the old QP arrived.
fn loss(stay_sent: u64, move_recvd: u64, move_sent: u64, stay_recvd: u64) -> Option<String> {
    (stay_sent != move_recvd || move_sent != stay_recvd).then(|| {
        format!(
            "rdma hand-off lost data: the staying side sent {stay_sent} data messages on the old \
             queue pair and the moving side received {move_recvd}; the moving side sent \
             {move_sent} and the staying side received {stay_recvd}"
        )
    })
}

/// Why reading a side-channel message failed.
enum ReadErr {
    Io(std::io::Error),
    Malformed(String),
}

/// Reads exactly `n` bytes; `Ok(None)` for end of file before the first byte.
async fn read_n(s: &TcpStream, n: usize) -> std::result::Result<Option<Vec<u8>>, ReadErr> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let (r, buf) = s.read(Vec::<u8>::with_capacity(n - got.len())).await;
        match r {
            Ok(0) if got.is_empty() => return Ok(None),
            Ok(0) => {
                return Err(ReadErr::Malformed(format!(
                    "side channel closed inside a message ({} of {n} bytes)",
                    got.len()
                )))
            }
            Ok(_) => got.extend_from_slice(&buf),
            Err(e) => return Err(ReadErr::Io(e)),
        }
    }
    Ok(Some(got))
}

/// Reads one hand-off message (MOVE or MOVED); `Ok(None)` for end of file.
async fn read_msg(s: &TcpStream) -> std::result::Result<Option<Vec<u8>>, ReadErr> {
    let Some(mut b) = read_n(s, MoveMsg::HDR_LEN).await? else {
        return Ok(None);
    };
    if b[..4] != MOVE_MAGIC && b[..4] != MOVED_MAGIC {
        return Err(ReadErr::Malformed(format!(
            "peer sent unexpected bytes {:02x?} on the rdma side channel",
            &b[..]
        )));
    }
    match read_n(s, MoveMsg::WIRE_LEN - MoveMsg::HDR_LEN).await? {
        Some(rest) => b.extend_from_slice(&rest),
        None => {
            return Err(ReadErr::Malformed(
                "side channel closed inside a message".into(),
            ))
        }
    }
    Ok(Some(b))
}

fn read_dead(r: ReadErr) -> Dead {
    match r {
        ReadErr::Io(e) => Dead::Reset(format!("rdma side channel failed: {e}")),
        ReadErr::Malformed(what) => Dead::Malformed(what),
    }
}

async fn write(s: &TcpStream, b: Vec<u8>) -> std::result::Result<(), Dead> {
    let (r, _) = s.write_all(b).await;
    r.map_err(|e| Dead::Reset(format!("rdma side channel write failed: {e}")))
}

/// Fails the connection and closes the side channel so the peer notices too.
fn fail_closing(c: &Conn, d: Dead) {
    c.fail(d);
    let _ = c.stream.shutdown(Shutdown::Both);
}

/// The side-channel task of one connection. After setup the channel carries only hand-off
/// messages: it waits for readability (never reading ahead, so a hand-off can stop it
/// without losing a byte), then handles a MOVE from the peer; end of file or an error means
/// the peer closed or died. With `announce`, it first runs this side's move (MOVE, MOVED,
/// READY).
pub(crate) async fn side_channel(
    conn: Weak<Conn>,
    core: Rc<CoreRdma>,
    stream: Rc<TcpStream>,
    side: Rc<SideCtl>,
    announce: Option<MoveMsg>,
) {
    if let Some(m) = announce {
        let Some(c) = conn.upgrade() else { return };
        let limit = c.cfg.connect_timeout;
        let r = timer::timeout(limit, announce_move(&c, &core, &stream, m)).await;
        tracing::debug!(peer = %c.peer, ok = ?r.as_ref().map(|r| r.is_ok()), "rdma: hand-off done");
        let r = r.unwrap_or_else(|_| {
            Err(Dead::Reset(format!(
                "rdma hand-off: no answer to MOVE within {limit:?}"
            )))
        });
        if let Err(d) = r {
            fail_closing(&c, d);
            return;
        }
    }
    loop {
        let stopped = poll_fn(|cx| {
            if side.stopped.get() {
                Poll::Ready(None)
            } else {
                *side.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        });
        let fd = stream.as_raw_fd();
        let r = futures_lite::future::or(async { Some(readable(fd).await) }, stopped).await;
        let Some(r) = r else { return };
        let Some(c) = conn.upgrade() else { return };
        if side.stopped.get() || c.closed.get() {
            return;
        }
        if let Err(e) = r {
            c.on_hup(&core, format!("side channel failed: {e}")).await;
            return;
        }
        side.busy.set(true);
        let limit = c.cfg.connect_timeout;
        let r = timer::timeout(limit, async {
            match read_msg(&stream).await {
                Ok(None) => Side::Hup("side channel closed (peer closed or died)".into()),
                Err(ReadErr::Io(e)) => Side::Hup(format!("side channel failed: {e}")),
                Err(e) => Side::Fail(read_dead(e)),
                Ok(Some(b)) => match MoveMsg::decode(&b, false) {
                    Err(what) => Side::Fail(Dead::Malformed(format!("malformed MOVE: {what}"))),
                    Ok(m) => match on_peer_move(&c, &core, &stream, m).await {
                        Ok(()) => Side::Moved,
                        Err(d) => Side::Fail(d),
                    },
                },
            }
        })
        .await;
        side.busy.set(false);
        match r {
            Ok(Side::Moved) => continue,
            Ok(Side::Hup(why)) => c.on_hup(&core, why).await,
            Ok(Side::Fail(d)) => fail_closing(&c, d),
            Err(_) => fail_closing(
                &c,
                Dead::Reset(format!(
                    "rdma side channel: a message or the peer's move did not finish within \
                     {limit:?}"
                )),
            ),
        }
        return;
    }
}

/// What one side-channel message came to.
enum Side {
    Moved,
    Hup(String),
    Fail(Dead),
}

/// This side moved: announce the new QP and connect it to the peer's answer.
async fn announce_move(
    c: &Rc<Conn>,
    core: &CoreRdma,
    s: &TcpStream,
    m: MoveMsg,
) -> std::result::Result<(), Dead> {
    write(s, m.encode().to_vec()).await?;
    let b = match read_msg(s).await {
        Ok(Some(b)) => b,
        Ok(None) => {
            return Err(Dead::Reset(
                "side channel closed during the rdma hand-off (peer closed or died)".into(),
            ))
        }
        Err(e) => return Err(read_dead(e)),
    };
    if b[..4] == MOVE_MAGIC {
        return Err(Dead::Reset(
            "rdma hand-off: both ends of the connection moved at once (not supported)".into(),
        ));
    }
    let a =
        MoveMsg::decode(&b, true).map_err(|w| Dead::Malformed(format!("malformed MOVED: {w}")))?;
    if a.status == MOVE_LOST {
        let why = loss(a.data_sent, m.data_received, m.data_sent, a.data_received);
        return Err(Dead::Reset(why.unwrap_or_else(|| {
            "rdma hand-off: the peer reported data loss".to_string()
        })));
    }
    if c.closed.get() {
        return Ok(());
    }
    {
        let qp = c.qp.borrow();
        let qp = qp.as_ref().ok_or(Dead::Closed)?;
        qp.connect(&a.qp).map_err(|e| Dead::Reset(e.to_string()))?;
    }
    c.credits.set(u32::from(a.credits));
    c.msg_max.set((a.buf_size as usize).min(CHUNK));
    write(s, vec![READY]).await?;
    go_live(c, core);
    Ok(())
}

fn go_live(c: &Rc<Conn>, core: &CoreRdma) {
    if c.dead.borrow().is_none() {
        c.phase.set(Phase::Live);
        core.mark_dirty(c);
        c.wake_all();
    }
}

/// The peer moved (its MOVE is `m`): check for loss, replace our QP, answer MOVED.
async fn on_peer_move(
    c: &Rc<Conn>,
    core: &CoreRdma,
    s: &TcpStream,
    m: MoveMsg,
) -> std::result::Result<(), Dead> {
    match c.phase.get() {
        Phase::Moving => {
            return Err(Dead::Reset(
                "rdma hand-off: both ends of the connection moved at once (not supported)".into(),
            ))
        }
        Phase::Gone => return Ok(()),
        Phase::Live | Phase::Broken | Phase::PeerMoving => {}
    }
    c.phase.set(Phase::PeerMoving);
    // Everything the mover sent was acknowledged before it moved: collect it.
    let deadline = Instant::now() + MOVE_WAIT;
    loop {
        while core.poll_cq() > 0 {}
        if c.closed.get() || c.dead.borrow().is_some() {
            return Ok(());
        }
        if c.data_recvd.get() >= m.data_sent || Instant::now() >= deadline {
            break;
        }
        timer::sleep(Duration::from_millis(1)).await;
    }
    for wc in c.retire_qp(core) {
        if wc.is_success() && wc.wr_id() & RECV_BIT != 0 {
            absorb_drained(c, &wc);
        }
    }
    // The peer's advertisements were for its old core; ours are made again on the new QP.
    c.zc_reset_for_move();
    let (sent, recvd) = (c.data_sent.get(), c.data_recvd.get());
    if let Some(why) = loss(sent, m.data_received, m.data_sent, recvd) {
        let answer = MoveMsg {
            answer: true,
            qp: m.qp,
            credits: 0,
            status: MOVE_LOST,
            buf_size: CHUNK as u32,
            data_sent: sent,
            data_received: recvd,
        };
        let _ = write(s, answer.encode().to_vec()).await;
        return Err(Dead::Reset(why));
    }
    let qp = create_qp(core).map_err(|e| Dead::Reset(format!("rdma hand-off: {e}")))?;
    let endpoint = qp.endpoint();
    c.qpn.set(qp.qp_num());
    c.max_inline.set(qp.max_inline_data() as usize);
    *c.qp.borrow_mut() = Some(qp);
    core.add(c.qpn(), c.clone());
    // Buffers holding unreturned data are reposted (and credited) when `recv` returns them.
    let free: Vec<u32> = {
        let ready = c.ready.borrow();
        (0..RECV_BUFS)
            .filter(|i| {
                !ready
                    .iter()
                    .any(|r| matches!(r, Ready::Small(j, _) if j == i))
            })
            .collect()
    };
    c.unposted.borrow_mut().clear();
    c.post_recvs(&free)
        .map_err(|e| Dead::Reset(e.to_string()))?;
    {
        let qp = c.qp.borrow();
        let qp = qp.as_ref().ok_or(Dead::Closed)?;
        qp.connect(&m.qp).map_err(|e| Dead::Reset(e.to_string()))?;
    }
    c.owed.set(0);
    c.credits.set(u32::from(m.credits));
    c.msg_max.set((m.buf_size as usize).min(CHUNK));
    c.data_sent.set(0);
    c.data_recvd.set(0);
    let answer = MoveMsg {
        answer: true,
        qp: endpoint,
        credits: free.len() as u16,
        status: MOVE_OK,
        buf_size: CHUNK as u32,
        data_sent: sent,
        data_received: recvd,
    };
    write(s, answer.encode().to_vec()).await?;
    match read_n(s, 1).await {
        Ok(Some(b)) if b[0] == READY => {}
        Ok(Some(b)) => {
            return Err(Dead::Malformed(format!(
                "rdma hand-off: expected the ready byte, got {:#04x}",
                b[0]
            )))
        }
        Ok(None) => {
            return Err(Dead::Reset(
                "side channel closed during the rdma hand-off (peer closed or died)".into(),
            ))
        }
        Err(e) => return Err(read_dead(e)),
    }
    go_live(c, core);
    Ok(())
}
