//! Reliable-connected queue pairs: creation, INIT→RTR→RTS, posting, error and drain.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io;
use std::ptr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use rdma_sys::{
    ibv_create_qp, ibv_destroy_qp, ibv_modify_qp, ibv_post_recv, ibv_post_send, ibv_qp,
    ibv_qp_attr, ibv_qp_attr_mask, ibv_qp_init_attr, ibv_qp_state, ibv_qp_type, ibv_query_qp,
    ibv_recv_wr, ibv_send_flags, ibv_send_wr, ibv_sge, ibv_wr_opcode,
};

use super::{
    rc_err, verbs_err, Access, CompletionQueue, Gid, LinkLayer, Mtu, ProtectionDomain, RemoteBuf,
    Sge, SharedReceiveQueue, WorkCompletion, RESERVED_WR_ID_MIN,
};
use crate::error::Result;

/// `wr_id` of the send-queue drain marker.
const DRAIN_SEND_WR_ID: u64 = u64::MAX;
/// `wr_id` of the receive-queue drain marker.
const DRAIN_RECV_WR_ID: u64 = u64::MAX - 1;

/// Queue pair settings. [`Default`] gives the transport's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QpConfig {
    /// Send queue depth. With selective signaling, signal at least one WR in every
    /// `max_send_wr`: send-queue slots are only reclaimed by a signaled completion.
    pub max_send_wr: u32,
    /// Receive queue depth (unused with an SRQ).
    pub max_recv_wr: u32,
    pub max_send_sge: u32,
    pub max_recv_sge: u32,
    /// Inline data requested; the provider may grant more (see [`QpCaps`]). Sends up to the
    /// granted size are posted inline (copied at post time).
    pub max_inline_data: u32,
    /// What the peer may do to this side's memory through this QP.
    pub access: Access,
    /// Local ACK timeout exponent: 4.096 µs × 2^timeout per attempt (14 ≈ 67 ms). 0..=31.
    pub timeout: u8,
    /// Transport retries on a missing ACK (0..=7; 7 is a finite 7 here).
    pub retry_cnt: u8,
    /// Retries on RNR NAK (receiver had no receive posted). 0..=6: 7 would mean *retry
    /// forever*, which turns receive-buffer exhaustion into a silent stall (Ceph runs with 7
    /// and hides exactly that). The transport posts receives ahead under credit-based flow
    /// control, so an RNR is a bug or an overload that must surface as
    /// `IBV_WC_RNR_RETRY_EXC_ERR`, after roughly `rnr_retry` × the peer's `min_rnr_timer`.
    pub rnr_retry: u8,
    /// The RNR NAK delay this side asks senders to wait (IB encoding, 0..=31; 14 = 1.28 ms,
    /// 16 = 2.56 ms).
    pub min_rnr_timer: u8,
    /// Outstanding RDMA READ/atomic as initiator (capped by the device).
    pub max_rd_atomic: u8,
    /// Outstanding RDMA READ/atomic as responder (capped by the device).
    pub max_dest_rd_atomic: u8,
    /// GRH hop limit (RoCE v2 is routable).
    pub hop_limit: u8,
    pub traffic_class: u8,
    pub service_level: u8,
    /// How long dropping (or [`QueuePair::close`]) waits for the flush of outstanding work
    /// requests before destroying the QP anyway.
    pub drain_timeout: Duration,
}

impl Default for QpConfig {
    fn default() -> QpConfig {
        QpConfig {
            max_send_wr: 256,
            max_recv_wr: 256,
            max_send_sge: 4,
            max_recv_sge: 4,
            max_inline_data: 128,
            access: Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_READ,
            timeout: 14,
            retry_cnt: 7,
            rnr_retry: 4,
            min_rnr_timer: 16,
            max_rd_atomic: 1,
            max_dest_rd_atomic: 1,
            hop_limit: 64,
            traffic_class: 0,
            service_level: 0,
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// What the provider granted at creation (`ibv_qp_init_attr.cap` after `ibv_create_qp`), less
/// the one send and one receive slot kept for the drain markers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpCaps {
    pub max_send_wr: u32,
    pub max_recv_wr: u32,
    pub max_send_sge: u32,
    pub max_recv_sge: u32,
    pub max_inline_data: u32,
}

/// A queue pair state (`enum ibv_qp_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QpState {
    Reset,
    Init,
    Rtr,
    Rts,
    Sqd,
    Sqe,
    Err,
    Unknown,
}

impl QpState {
    fn from_raw(v: u32) -> QpState {
        match v {
            ibv_qp_state::IBV_QPS_RESET => QpState::Reset,
            ibv_qp_state::IBV_QPS_INIT => QpState::Init,
            ibv_qp_state::IBV_QPS_RTR => QpState::Rtr,
            ibv_qp_state::IBV_QPS_RTS => QpState::Rts,
            ibv_qp_state::IBV_QPS_SQD => QpState::Sqd,
            ibv_qp_state::IBV_QPS_SQE => QpState::Sqe,
            ibv_qp_state::IBV_QPS_ERR => QpState::Err,
            _ => QpState::Unknown,
        }
    }
}

/// What a peer needs to connect to a queue pair; exchanged out of band (the TCP side channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpEndpoint {
    /// Queue pair number (24 bits).
    pub qpn: u32,
    /// Initial packet sequence number of this side's send queue (24 bits).
    pub psn: u32,
    pub gid: Gid,
    /// LID (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// The local port's active MTU; the path MTU is the smaller of both sides'.
    pub mtu: Mtu,
}

impl QpEndpoint {
    /// Encoded size: qpn, psn (u32 BE), gid (16), lid (u16 BE), mtu (u8 `ibv_mtu`), 0.
    pub const WIRE_LEN: usize = 28;

    pub fn encode(&self) -> [u8; Self::WIRE_LEN] {
        let mut b = [0u8; Self::WIRE_LEN];
        b[0..4].copy_from_slice(&self.qpn.to_be_bytes());
        b[4..8].copy_from_slice(&self.psn.to_be_bytes());
        b[8..24].copy_from_slice(&self.gid.0);
        b[24..26].copy_from_slice(&self.lid.to_be_bytes());
        b[26] = self.mtu.to_raw() as u8;
        b
    }

    /// `None` if `b` is not [`Self::WIRE_LEN`] bytes or the MTU code is invalid.
    pub fn decode(b: &[u8]) -> Option<QpEndpoint> {
        if b.len() != Self::WIRE_LEN {
            return None;
        }
        let u32_at = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        Some(QpEndpoint {
            qpn: u32_at(0),
            psn: u32_at(4),
            gid: Gid(b[8..24].try_into().expect("16 bytes")),
            lid: u16::from_be_bytes([b[24], b[25]]),
            mtu: Mtu::from_raw(u32::from(b[26]))?,
        })
    }
}

/// The operation of a [`SendWr`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOp {
    /// SEND: consumes a receive on the peer.
    Send,
    /// SEND WITH IMM: consumes a receive; the 32-bit immediate arrives in its completion.
    SendWithImm(u32),
    /// RDMA WRITE into the peer's buffer; the peer sees nothing.
    Write(RemoteBuf),
    /// RDMA WRITE WITH IMM: writes, then consumes a receive on the peer whose completion
    /// (`RecvRdmaWithImm`) carries the immediate.
    WriteWithImm(RemoteBuf, u32),
}

/// One send work request. The scatter/gather list is copied at post time.
#[derive(Debug, Clone, Copy)]
pub struct SendWr<'a> {
    pub wr_id: u64,
    pub op: SendOp,
    pub sges: &'a [Sge],
    /// Generate a work completion on success (selective signaling; errors always complete).
    pub signaled: bool,
    /// Set the solicited-event bit (wakes a peer armed with `req_notify(true)`).
    pub solicited: bool,
}

impl<'a> SendWr<'a> {
    /// A signaled SEND.
    pub fn send(wr_id: u64, sges: &'a [Sge]) -> SendWr<'a> {
        SendWr {
            wr_id,
            op: SendOp::Send,
            sges,
            signaled: true,
            solicited: false,
        }
    }

    /// A signaled RDMA WRITE.
    pub fn write(wr_id: u64, sges: &'a [Sge], remote: RemoteBuf) -> SendWr<'a> {
        SendWr {
            op: SendOp::Write(remote),
            ..SendWr::send(wr_id, sges)
        }
    }

    /// A signaled RDMA WRITE WITH IMM.
    pub fn write_with_imm(wr_id: u64, sges: &'a [Sge], remote: RemoteBuf, imm: u32) -> SendWr<'a> {
        SendWr {
            op: SendOp::WriteWithImm(remote, imm),
            ..SendWr::send(wr_id, sges)
        }
    }

    /// Sets the signaled flag.
    pub fn signaled(mut self, signaled: bool) -> SendWr<'a> {
        self.signaled = signaled;
        self
    }

    /// Total bytes of the scatter/gather list.
    pub fn len(&self) -> u64 {
        self.sges.iter().map(|s| u64::from(s.len)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One receive work request.
#[derive(Debug, Clone, Copy)]
pub struct RecvWr<'a> {
    pub wr_id: u64,
    pub sges: &'a [Sge],
}

impl<'a> RecvWr<'a> {
    pub fn new(wr_id: u64, sges: &'a [Sge]) -> RecvWr<'a> {
        RecvWr { wr_id, sges }
    }
}

/// Scratch arrays for building a receive chain (reused across posts).
#[derive(Default)]
pub(super) struct RecvScratch {
    wrs: Vec<ibv_recv_wr>,
    sges: Vec<ibv_sge>,
}

impl RecvScratch {
    /// Builds `wrs` as one linked `ibv_recv_wr` chain; returns its head (valid until the next
    /// call or until `self` is dropped).
    pub(super) fn build(
        &mut self,
        wrs: &[RecvWr<'_>],
        max_sge: u32,
        allow_reserved: bool,
        what: &dyn Fn() -> String,
    ) -> Result<*mut ibv_recv_wr> {
        self.wrs.clear();
        self.sges.clear();
        for (i, wr) in wrs.iter().enumerate() {
            check_wr(
                wr.wr_id,
                wr.sges.len(),
                max_sge,
                allow_reserved,
                i,
                "ibv_post_recv",
                what,
            )?;
            self.wrs.push(ibv_recv_wr {
                wr_id: wr.wr_id,
                next: ptr::null_mut(),
                sg_list: ptr::null_mut(),
                num_sge: wr.sges.len() as i32,
            });
            self.sges.extend(wr.sges.iter().map(to_ibv_sge));
        }
        Ok(link_chain(&mut self.wrs, &mut self.sges))
    }

    /// The index of `bad` in the last built chain.
    pub(super) fn index_of(&self, bad: *const ibv_recv_wr) -> usize {
        index_in(&self.wrs, bad)
    }
}

/// A work request type that can be chained.
trait ChainWr {
    fn num_sge(&self) -> usize;
    fn link(&mut self, next: *mut Self, sg_list: *mut ibv_sge);
}

impl ChainWr for ibv_recv_wr {
    fn num_sge(&self) -> usize {
        self.num_sge as usize
    }
    fn link(&mut self, next: *mut Self, sg_list: *mut ibv_sge) {
        self.next = next;
        self.sg_list = sg_list;
    }
}

impl ChainWr for ibv_send_wr {
    fn num_sge(&self) -> usize {
        self.num_sge as usize
    }
    fn link(&mut self, next: *mut Self, sg_list: *mut ibv_sge) {
        self.next = next;
        self.sg_list = sg_list;
    }
}

/// Links `wrs` into one chain (`next`), pointing each at its run of `sges` (pushed in WR
/// order); returns the head. Pointers are derived from the slices' base pointers only, so they
/// stay valid until the vectors are next touched.
fn link_chain<W: ChainWr>(wrs: &mut [W], sges: &mut [ibv_sge]) -> *mut W {
    let n = wrs.len();
    let base = wrs.as_mut_ptr();
    let sbase = sges.as_mut_ptr();
    let mut at = 0;
    for i in 0..n {
        // SAFETY: `i < n`, so `base.add(i)` is in bounds; the reference is dropped before the
        // next iteration derives another one.
        let w = unsafe { &mut *base.add(i) };
        let k = w.num_sge();
        assert!(
            at + k <= sges.len(),
            "SGE runs out of step with work requests"
        );
        let sg = if k > 0 {
            // SAFETY: `at + k <= sges.len()` (checked above), so `at` is in bounds.
            unsafe { sbase.add(at) }
        } else {
            ptr::null_mut()
        };
        let next = if i + 1 < n {
            // SAFETY: `i + 1 < n`, in bounds.
            unsafe { base.add(i + 1) }
        } else {
            ptr::null_mut()
        };
        w.link(next, sg);
        at += k;
    }
    base
}

fn index_in<T>(v: &[T], p: *const T) -> usize {
    let start = v.as_ptr() as usize;
    (p as usize).wrapping_sub(start) / std::mem::size_of::<T>().max(1)
}

fn to_ibv_sge(s: &Sge) -> ibv_sge {
    ibv_sge {
        addr: s.addr,
        length: s.len,
        lkey: s.lkey,
    }
}

fn check_wr(
    wr_id: u64,
    nsge: usize,
    max_sge: u32,
    allow_reserved: bool,
    i: usize,
    op: &'static str,
    what: &dyn Fn() -> String,
) -> Result<()> {
    if !allow_reserved && wr_id >= RESERVED_WR_ID_MIN {
        return Err(verbs_err(
            op,
            io::Error::from_raw_os_error(libc::EINVAL),
            format!(
                "{}: work request {i} uses reserved wr_id {wr_id:#x}; nothing posted",
                what()
            ),
        ));
    }
    if nsge > max_sge as usize {
        return Err(verbs_err(
            op,
            io::Error::from_raw_os_error(libc::EINVAL),
            format!(
                "{}: work request {i} (wr_id {wr_id:#x}) has {nsge} SGEs, max {max_sge}; \
                 nothing posted",
                what()
            ),
        ));
    }
    Ok(())
}

#[derive(Default)]
struct SendScratch {
    wrs: Vec<ibv_send_wr>,
    sges: Vec<ibv_sge>,
}

/// A reliable-connected queue pair (`ibv_qp`, `IBV_QPT_RC`).
///
/// Created in INIT (receives can be posted before connecting), connected with
/// [`connect`](Self::connect) (RTR, RTS). Keeps its PD, CQs and SRQ alive. On drop it moves to
/// ERR, waits (up to [`QpConfig::drain_timeout`]) until every outstanding work request has been
/// flushed to its CQs, discards its own flush completions (completions of other QPs sharing a
/// CQ are kept for that CQ's next `poll`), then destroys the QP. [`close`](Self::close) does
/// the same and returns its completions, so buffers can be reclaimed by `wr_id`.
///
/// `wr_id`s at or above [`RESERVED_WR_ID_MIN`] are reserved for the drain markers.
pub struct QueuePair {
    qp: *mut ibv_qp,
    qpn: u32,
    psn: u32,
    caps: QpCaps,
    cfg: QpConfig,
    state: Cell<QpState>,
    /// The drain started (markers posted, ERR): nothing more to post.
    drained: bool,
    /// Drain markers posted and not yet seen completing: (send, receive).
    markers: Cell<(bool, bool)>,
    send_scratch: RefCell<SendScratch>,
    recv_scratch: RefCell<RecvScratch>,
    srq: Option<Rc<SharedReceiveQueue>>,
    send_cq: Rc<CompletionQueue>,
    recv_cq: Rc<CompletionQueue>,
    pd: Rc<ProtectionDomain>,
}

impl fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueuePair")
            .field("qpn", &self.qpn)
            .field("state", &self.state.get())
            .field("caps", &self.caps)
            .finish()
    }
}

impl QueuePair {
    /// Creates an RC queue pair and moves it to INIT. `srq`: receives come from the shared
    /// receive queue instead of this QP's own receive queue.
    pub fn new(
        pd: &Rc<ProtectionDomain>,
        send_cq: &Rc<CompletionQueue>,
        recv_cq: &Rc<CompletionQueue>,
        srq: Option<&Rc<SharedReceiveQueue>>,
        cfg: QpConfig,
    ) -> Result<QueuePair> {
        let ctx = pd.context();
        let dev = ctx.name().to_string();
        let invalid = |detail: String| {
            verbs_err(
                "ibv_create_qp",
                io::Error::from_raw_os_error(libc::EINVAL),
                detail,
            )
        };
        let same_ctx = Rc::ptr_eq(send_cq.context(), ctx)
            && Rc::ptr_eq(recv_cq.context(), ctx)
            && srq.is_none_or(|s| Rc::ptr_eq(s.pd(), pd));
        if !same_ctx {
            return Err(invalid(format!(
                "device {dev}: CQs and SRQ must come from the PD's context (and the SRQ from \
                 the same PD)"
            )));
        }
        if cfg.rnr_retry >= 7 {
            return Err(invalid(format!(
                "rnr_retry {} means retry forever (hides receive-buffer exhaustion); use 0..=6",
                cfg.rnr_retry
            )));
        }
        if cfg.retry_cnt > 7 || cfg.timeout > 31 || cfg.min_rnr_timer > 31 {
            return Err(invalid(format!(
                "retry_cnt {} (max 7), timeout {} (max 31), min_rnr_timer {} (max 31)",
                cfg.retry_cnt, cfg.timeout, cfg.min_rnr_timer
            )));
        }
        let caps = ctx.caps();
        if cfg.max_send_wr >= caps.max_qp_wr || cfg.max_recv_wr >= caps.max_qp_wr {
            return Err(invalid(format!(
                "device {dev}: max_send_wr {} / max_recv_wr {} must be below device max_qp_wr {} \
                 (one slot is kept for the drain marker)",
                cfg.max_send_wr, cfg.max_recv_wr, caps.max_qp_wr
            )));
        }
        // SAFETY: `ibv_qp_init_attr` is a C struct of pointers and integers; all-zero is a
        // valid (empty) value.
        let mut init: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        init.send_cq = send_cq.as_ptr();
        init.recv_cq = recv_cq.as_ptr();
        init.srq = srq.map_or(ptr::null_mut(), |s| s.as_ptr());
        // One extra slot in each queue for the drain markers (see `drain`).
        init.cap.max_send_wr = cfg.max_send_wr + 1;
        init.cap.max_recv_wr = if srq.is_some() {
            0
        } else {
            cfg.max_recv_wr + 1
        };
        init.cap.max_send_sge = cfg.max_send_sge;
        init.cap.max_recv_sge = if srq.is_some() { 0 } else { cfg.max_recv_sge };
        init.cap.max_inline_data = cfg.max_inline_data;
        init.qp_type = ibv_qp_type::IBV_QPT_RC;
        init.sq_sig_all = 0;
        // SAFETY: `pd`, the CQs and the SRQ are live objects of one context (checked above);
        // `init` is a valid, initialized attribute struct the call reads and updates.
        let qp = unsafe { ibv_create_qp(pd.as_ptr(), &mut init) };
        if qp.is_null() {
            return Err(verbs_err(
                "ibv_create_qp",
                io::Error::last_os_error(),
                format!(
                    "device {dev}: RC, send {}x{} sge, recv {}x{} sge, inline {}",
                    cfg.max_send_wr,
                    cfg.max_send_sge,
                    init.cap.max_recv_wr,
                    init.cap.max_recv_sge,
                    cfg.max_inline_data
                ),
            ));
        }
        // SAFETY: `qp` is a live QP; `qp_num` is set at creation.
        let qpn = unsafe { (*qp).qp_num };
        let granted = QpCaps {
            max_send_wr: init.cap.max_send_wr.saturating_sub(1),
            max_recv_wr: init.cap.max_recv_wr.saturating_sub(1),
            max_send_sge: init.cap.max_send_sge,
            max_recv_sge: init.cap.max_recv_sge,
            max_inline_data: init.cap.max_inline_data,
        };
        let qp = QueuePair {
            qp,
            qpn,
            psn: random_psn(),
            caps: granted,
            cfg,
            state: Cell::new(QpState::Reset),
            drained: false,
            markers: Cell::new((false, false)),
            send_scratch: RefCell::default(),
            recv_scratch: RefCell::default(),
            srq: srq.cloned(),
            send_cq: Rc::clone(send_cq),
            recv_cq: Rc::clone(recv_cq),
            pd: Rc::clone(pd),
        };
        qp.to_init()?; // on error, `Drop` destroys the QP (still RESET: no drain)
        tracing::debug!(dev = %dev, qpn, caps = ?granted, "rdma: created RC queue pair");
        Ok(qp)
    }

    pub fn qp_num(&self) -> u32 {
        self.qpn
    }

    /// The granted capacities (send/recv depth, SGEs, inline size).
    pub fn caps(&self) -> QpCaps {
        self.caps
    }

    /// The largest send posted inline (`max_inline_data` from QP creation).
    pub fn max_inline_data(&self) -> u32 {
        self.caps.max_inline_data
    }

    pub fn config(&self) -> &QpConfig {
        &self.cfg
    }

    /// The state as this wrapper last set it.
    pub fn state(&self) -> QpState {
        self.state.get()
    }

    /// The state as the device reports it (`ibv_query_qp`); a QP can enter ERR on its own.
    pub fn query_state(&self) -> Result<QpState> {
        // SAFETY: zeroed C structs of integers/pointers are valid values.
        let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut init: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        let mask = ibv_qp_attr_mask::IBV_QP_STATE.0 as i32;
        // SAFETY: `qp` is live; both out-structs are valid and writable.
        let rc = unsafe { ibv_query_qp(self.qp, &mut attr, mask, &mut init) };
        if rc != 0 {
            return Err(verbs_err("ibv_query_qp", rc_err(rc), self.describe()));
        }
        Ok(QpState::from_raw(attr.qp_state))
    }

    pub fn send_cq(&self) -> &Rc<CompletionQueue> {
        &self.send_cq
    }

    pub fn recv_cq(&self) -> &Rc<CompletionQueue> {
        &self.recv_cq
    }

    pub fn pd(&self) -> &Rc<ProtectionDomain> {
        &self.pd
    }

    pub fn srq(&self) -> Option<&Rc<SharedReceiveQueue>> {
        self.srq.as_ref()
    }

    /// This side's connection parameters, for the peer's [`connect`](Self::connect).
    pub fn endpoint(&self) -> QpEndpoint {
        let ctx = self.pd.context();
        QpEndpoint {
            qpn: self.qpn,
            psn: self.psn,
            gid: ctx.gid(),
            lid: ctx.port_info().lid,
            mtu: ctx.port_info().active_mtu,
        }
    }

    fn describe(&self) -> String {
        format!("device {} qpn {:#x}", self.pd.context().name(), self.qpn)
    }

    fn modify(&self, attr: &mut ibv_qp_attr, mask: ibv_qp_attr_mask, to: QpState) -> Result<()> {
        // SAFETY: `qp` is live; `attr` is an initialized attribute struct and `mask` names the
        // fields set in it.
        let rc = unsafe { ibv_modify_qp(self.qp, attr, mask.0 as i32) };
        if rc != 0 {
            return Err(verbs_err(
                "ibv_modify_qp",
                rc_err(rc),
                format!("{}: {:?} -> {to:?}", self.describe(), self.state.get()),
            ));
        }
        self.state.set(to);
        Ok(())
    }

    fn to_init(&self) -> Result<()> {
        // SAFETY: zeroed C struct of integers/unions of integers is a valid value.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ibv_qp_state::IBV_QPS_INIT;
        a.pkey_index = 0;
        a.port_num = self.pd.context().port();
        a.qp_access_flags = self.cfg.access.bits();
        use ibv_qp_attr_mask as M;
        let mask = M::IBV_QP_STATE | M::IBV_QP_PKEY_INDEX | M::IBV_QP_PORT | M::IBV_QP_ACCESS_FLAGS;
        self.modify(&mut a, mask, QpState::Init)
    }

    /// Connects to `remote`: INIT → RTR (path MTU = min(local port's active MTU, remote's),
    /// remote QPN/PSN, GRH with the remote GID and this context's GID index) → RTS (ACK
    /// timeout, bounded retry counts, this side's PSN).
    pub fn connect(&self, remote: &QpEndpoint) -> Result<()> {
        if self.state.get() != QpState::Init {
            return Err(verbs_err(
                "ibv_modify_qp",
                io::Error::from_raw_os_error(libc::EINVAL),
                format!(
                    "{}: connect needs INIT, QP is {:?}",
                    self.describe(),
                    self.state.get()
                ),
            ));
        }
        let ctx = Rc::clone(self.pd.context());
        let port = ctx.port_info();
        let roce = port.link_layer == LinkLayer::Ethernet;
        if roce && remote.gid.is_zero() {
            return Err(verbs_err(
                "ibv_modify_qp",
                io::Error::from_raw_os_error(libc::EINVAL),
                format!("{}: RoCE needs the remote GID, got ::", self.describe()),
            ));
        }
        let path_mtu = port.active_mtu.min(remote.mtu);
        let caps = ctx.caps();
        let clamp = |want: u8, max: u32| u8::try_from(max).unwrap_or(u8::MAX).min(want).max(1);

        // SAFETY: zeroed C struct of integers/unions of integers is a valid value.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ibv_qp_state::IBV_QPS_RTR;
        a.path_mtu = path_mtu.to_raw();
        a.dest_qp_num = remote.qpn & 0xff_ffff;
        a.rq_psn = remote.psn & 0xff_ffff;
        a.max_dest_rd_atomic = clamp(self.cfg.max_dest_rd_atomic, caps.max_qp_rd_atom);
        a.min_rnr_timer = self.cfg.min_rnr_timer;
        a.ah_attr.is_global = u8::from(roce || !remote.gid.is_zero());
        a.ah_attr.grh.dgid = remote.gid.to_raw();
        a.ah_attr.grh.sgid_index = ctx.gid_index();
        a.ah_attr.grh.hop_limit = self.cfg.hop_limit;
        a.ah_attr.grh.traffic_class = self.cfg.traffic_class;
        a.ah_attr.grh.flow_label = 0;
        a.ah_attr.dlid = remote.lid;
        a.ah_attr.sl = self.cfg.service_level;
        a.ah_attr.src_path_bits = 0;
        a.ah_attr.port_num = ctx.port();
        use ibv_qp_attr_mask as M;
        let mask = M::IBV_QP_STATE
            | M::IBV_QP_AV
            | M::IBV_QP_PATH_MTU
            | M::IBV_QP_DEST_QPN
            | M::IBV_QP_RQ_PSN
            | M::IBV_QP_MAX_DEST_RD_ATOMIC
            | M::IBV_QP_MIN_RNR_TIMER;
        self.modify(&mut a, mask, QpState::Rtr)?;

        // SAFETY: as above.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ibv_qp_state::IBV_QPS_RTS;
        a.timeout = self.cfg.timeout;
        a.retry_cnt = self.cfg.retry_cnt;
        a.rnr_retry = self.cfg.rnr_retry;
        a.sq_psn = self.psn;
        a.max_rd_atomic = clamp(self.cfg.max_rd_atomic, caps.max_qp_init_rd_atom);
        let mask = M::IBV_QP_STATE
            | M::IBV_QP_TIMEOUT
            | M::IBV_QP_RETRY_CNT
            | M::IBV_QP_RNR_RETRY
            | M::IBV_QP_SQ_PSN
            | M::IBV_QP_MAX_QP_RD_ATOMIC;
        self.modify(&mut a, mask, QpState::Rts)?;
        tracing::debug!(
            qpn = self.qpn,
            remote_qpn = remote.qpn,
            path_mtu = path_mtu.bytes(),
            "rdma: queue pair connected"
        );
        Ok(())
    }

    /// Moves the QP to ERR: outstanding and later-posted work requests complete with
    /// `WR_FLUSH_ERR`.
    pub fn to_error(&self) -> Result<()> {
        // SAFETY: zeroed C struct of integers/unions of integers is a valid value.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ibv_qp_state::IBV_QPS_ERR;
        self.modify(&mut a, ibv_qp_attr_mask::IBV_QP_STATE, QpState::Err)
    }

    /// Posts `wrs` as one chain in a single `ibv_post_send` call (one doorbell). A SEND, SEND
    /// WITH IMM, WRITE or WRITE WITH IMM of 1..=[`max_inline_data`](Self::max_inline_data)
    /// bytes is posted inline: its data is copied now and its memory is free on return.
    ///
    /// On error nothing after the failing request was posted; the requests before it were
    /// (the error's detail names the index).
    ///
    /// # Safety
    /// Every non-inline [`Sge`] must name memory of a live [`MemoryRegion`](super::MemoryRegion)
    /// registered in this QP's PD, which must stay allocated and unmodified until the request's
    /// work completion has been polled, or (unsignaled) until a later signaled request on this
    /// QP has completed, or until the QP has been dropped/closed. For RDMA WRITEs the
    /// [`RemoteBuf`] is checked only against its own recorded length.
    pub unsafe fn post_send(&self, wrs: &[SendWr<'_>]) -> Result<()> {
        // SAFETY: forwarded to the caller's contract.
        unsafe { self.post_send_inner(wrs, false) }
    }

    /// # Safety
    /// As [`QueuePair::post_send`].
    unsafe fn post_send_inner(&self, wrs: &[SendWr<'_>], allow_reserved: bool) -> Result<()> {
        if wrs.is_empty() {
            return Ok(());
        }
        let what = || self.describe();
        let mut scratch = self.send_scratch.borrow_mut();
        let SendScratch { wrs: raw, sges } = &mut *scratch;
        raw.clear();
        sges.clear();
        for (i, wr) in wrs.iter().enumerate() {
            check_wr(
                wr.wr_id,
                wr.sges.len(),
                self.caps.max_send_sge,
                allow_reserved,
                i,
                "ibv_post_send",
                &what,
            )?;
            let len = wr.len();
            let mut flags = 0u32;
            if wr.signaled {
                flags |= ibv_send_flags::IBV_SEND_SIGNALED.0;
            }
            if wr.solicited {
                flags |= ibv_send_flags::IBV_SEND_SOLICITED.0;
            }
            if len > 0 && len <= u64::from(self.caps.max_inline_data) {
                flags |= ibv_send_flags::IBV_SEND_INLINE.0;
            }
            // SAFETY: `ibv_send_wr` is a C struct of integers, pointers and unions of those;
            // all-zero is a valid value.
            let mut w: ibv_send_wr = unsafe { std::mem::zeroed() };
            w.wr_id = wr.wr_id;
            w.num_sge = wr.sges.len() as i32;
            w.send_flags = flags;
            let remote = match wr.op {
                SendOp::Send => {
                    w.opcode = ibv_wr_opcode::IBV_WR_SEND;
                    None
                }
                SendOp::SendWithImm(imm) => {
                    w.opcode = ibv_wr_opcode::IBV_WR_SEND_WITH_IMM;
                    w.imm_data_invalidated_rkey_union.imm_data = imm.to_be();
                    None
                }
                SendOp::Write(r) => {
                    w.opcode = ibv_wr_opcode::IBV_WR_RDMA_WRITE;
                    Some(r)
                }
                SendOp::WriteWithImm(r, imm) => {
                    w.opcode = ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM;
                    w.imm_data_invalidated_rkey_union.imm_data = imm.to_be();
                    Some(r)
                }
            };
            if let Some(r) = remote {
                if len > r.len {
                    return Err(verbs_err(
                        "ibv_post_send",
                        io::Error::from_raw_os_error(libc::EINVAL),
                        format!(
                            "{}: work request {i} (wr_id {:#x}) writes {len} bytes into a \
                             {}-byte remote buffer; nothing posted",
                            what(),
                            wr.wr_id,
                            r.len
                        ),
                    ));
                }
                w.wr.rdma = rdma_sys::rdma_t {
                    remote_addr: r.addr,
                    rkey: r.rkey,
                };
            }
            raw.push(w);
            sges.extend(wr.sges.iter().map(to_ibv_sge));
        }
        let n = raw.len();
        let base = link_chain(raw, sges);
        let mut bad: *mut ibv_send_wr = ptr::null_mut();
        // SAFETY: `qp` is live; `base` heads a chain of `n` initialized WRs whose `next` and
        // `sg_list` pointers point into `raw`/`sges`, which are not touched until the call
        // returns. The provider copies the chain (and inline data) before returning; the
        // memory the SGEs name is the caller's obligation.
        let rc = unsafe { ibv_post_send(self.qp, base, &mut bad) };
        if rc != 0 {
            let i = if bad.is_null() { 0 } else { index_in(raw, bad) };
            return Err(verbs_err(
                "ibv_post_send",
                rc_err(rc),
                format!(
                    "{} in {:?}: work request {i} of {n} rejected (the {i} before it were \
                     posted)",
                    what(),
                    self.state.get()
                ),
            ));
        }
        Ok(())
    }

    /// Posts receives as one chain (`ibv_post_recv`). Fails with `EINVAL` on a QP that uses
    /// an SRQ (post to the [`SharedReceiveQueue`] instead).
    ///
    /// # Safety
    /// Every [`Sge`] must name memory of a live [`MemoryRegion`](super::MemoryRegion) in this
    /// QP's PD registered with `LOCAL_WRITE`, which must stay allocated and must not be read
    /// or written until the receive's work completion has been polled or the QP has been
    /// dropped/closed.
    pub unsafe fn post_recv(&self, wrs: &[RecvWr<'_>]) -> Result<()> {
        // SAFETY: forwarded to the caller's contract.
        unsafe { self.post_recv_inner(wrs, false) }
    }

    /// # Safety
    /// As [`QueuePair::post_recv`].
    unsafe fn post_recv_inner(&self, wrs: &[RecvWr<'_>], allow_reserved: bool) -> Result<()> {
        if self.srq.is_some() {
            return Err(verbs_err(
                "ibv_post_recv",
                io::Error::from_raw_os_error(libc::EINVAL),
                format!("{}: the QP takes receives from its SRQ", self.describe()),
            ));
        }
        if wrs.is_empty() {
            return Ok(());
        }
        let what = || self.describe();
        let mut scratch = self.recv_scratch.borrow_mut();
        let head = scratch.build(wrs, self.caps.max_recv_sge, allow_reserved, &what)?;
        let mut bad: *mut ibv_recv_wr = ptr::null_mut();
        // SAFETY: `qp` is live; `head` is a chain built in `scratch`, untouched until the call
        // returns; the memory the SGEs name is the caller's obligation.
        let rc = unsafe { ibv_post_recv(self.qp, head, &mut bad) };
        if rc != 0 {
            let i = if bad.is_null() {
                0
            } else {
                scratch.index_of(bad)
            };
            return Err(verbs_err(
                "ibv_post_recv",
                rc_err(rc),
                format!(
                    "{} in {:?}: work request {i} of {} rejected (the {i} before it were \
                     posted)",
                    what(),
                    self.state.get(),
                    wrs.len()
                ),
            ));
        }
        Ok(())
    }

    /// Moves the QP to ERR, waits for every outstanding work request to be flushed, and
    /// returns this QP's completions polled meanwhile (flush errors, and any successful ones
    /// not yet polled), then destroys the QP. Completions of other QPs sharing the CQs stay
    /// queued for the CQs' next `poll`.
    pub fn close(mut self) -> Vec<WorkCompletion> {
        self.drain()
    }

    /// Starts a drain without waiting: moves the QP to ERR with a marker on each queue
    /// (receive marker first: see below). Every request posted before completes (flushed, in
    /// order) before its queue's marker, so once [`drain_marker`](Self::drain_marker) has
    /// seen both ([`is_drained`](Self::is_drained)) the QP is empty and dropping it destroys
    /// it at once. For a user that keeps polling the CQs through its own loop (the transport's
    /// core poller) instead of blocking in [`close`](Self::close) or `Drop`. Idempotent.
    pub fn start_drain(&mut self) {
        if self.drained || self.state.get() == QpState::Reset {
            self.drained = true;
            return;
        }
        self.drained = true;
        // The receive marker goes in *before* the move to ERR: the transition flushes the
        // receive queue, whereas a receive posted to a QP already in ERR may sit there
        // (Soft-RoCE on Linux 6.1 flushes only on the transition; user-space receive posts do
        // not enter the kernel). Moving to ERR again (ERR -> ERR is legal) flushes receives
        // posted after an earlier `to_error`. Should a message consume the marker first, its
        // completion (success or length error) still ends the wait.
        let recv_pending = self.srq.is_none() && {
            let marker = RecvWr::new(DRAIN_RECV_WR_ID, &[]);
            // SAFETY: a zero-length receive names no memory.
            match unsafe { self.post_recv_inner(&[marker], true) } {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "rdma: posting the receive drain marker failed");
                    false
                }
            }
        };
        if let Err(e) = self.to_error() {
            tracing::warn!(error = %e, "rdma: moving the QP to ERR for drain failed");
        }
        // The send marker only after ERR: posted to a connected QP it would be transmitted.
        let marker = SendWr::send(DRAIN_SEND_WR_ID, &[]);
        // SAFETY: a zero-length SEND names no memory.
        let send_pending = match unsafe { self.post_send_inner(&[marker], true) } {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "rdma: posting the send drain marker failed");
                false
            }
        };
        self.markers.set((send_pending, recv_pending));
    }

    /// Whether `wc` (a completion of this QP) is one of its drain markers; notes it if so.
    pub fn drain_marker(&self, wc: &WorkCompletion) -> bool {
        let (send, recv) = self.markers.get();
        match wc.wr_id() {
            DRAIN_SEND_WR_ID => self.markers.set((false, recv)),
            DRAIN_RECV_WR_ID => self.markers.set((send, false)),
            _ => return false,
        }
        true
    }

    /// A drain was started and both markers have completed: the QP is empty.
    pub fn is_drained(&self) -> bool {
        self.drained && self.markers.get() == (false, false)
    }

    /// Gives up waiting for the markers of a started drain (they did not come in time): the
    /// QP is destroyed with requests possibly unflushed when dropped.
    pub fn abandon_drain(&self) {
        if self.markers.get() != (false, false) {
            tracing::warn!(
                qpn = self.qpn, markers = ?self.markers.get(),
                "rdma: QP drain abandoned; destroying it with requests unflushed"
            );
            self.markers.set((false, false));
        }
    }

    fn drain(&mut self) -> Vec<WorkCompletion> {
        // Completions another QP's blocking drain polled and set aside for this one; after a
        // `start_drain` they may include this QP's markers.
        let mut own = self.send_cq.take_stashed_of(self.qpn);
        if !Rc::ptr_eq(&self.send_cq, &self.recv_cq) {
            own.extend(self.recv_cq.take_stashed_of(self.qpn));
        }
        own.retain(|wc| !self.drain_marker(wc));
        self.start_drain();
        let deadline = Instant::now() + self.cfg.drain_timeout;
        let mut batch: Vec<WorkCompletion> = vec![WorkCompletion::default(); 32];
        let same_cq = Rc::ptr_eq(&self.send_cq, &self.recv_cq);
        while !self.is_drained() {
            let mut got = 0;
            let cqs: &[&Rc<CompletionQueue>] = if same_cq {
                &[&self.send_cq]
            } else {
                &[&self.send_cq, &self.recv_cq]
            };
            for cq in cqs {
                let n = match cq.poll_raw(&mut batch) {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(error = %e, "rdma: polling during QP drain failed");
                        self.markers.set((false, false));
                        break;
                    }
                };
                got += n;
                for wc in &batch[..n] {
                    if wc.qp_num() != self.qpn {
                        cq.stash(wc.clone());
                    } else if !self.drain_marker(wc) {
                        own.push(wc.clone());
                    }
                }
            }
            if got == 0 && !self.is_drained() {
                if Instant::now() >= deadline {
                    tracing::warn!(
                        qpn = self.qpn, markers = ?self.markers.get(),
                        timeout = ?self.cfg.drain_timeout,
                        "rdma: QP drain timed out; destroying it with requests unflushed"
                    );
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        self.markers.set((false, false)); // seen, or given up on
        own
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        let flushed = self.drain();
        if !flushed.is_empty() {
            tracing::debug!(
                qpn = self.qpn,
                n = flushed.len(),
                "rdma: QP dropped; completions discarded"
            );
        }
        // SAFETY: `qp` came from `ibv_create_qp` and is destroyed once, after the drain; its
        // PD, CQs and SRQ are alive (the `Rc` fields are dropped after this returns).
        let rc = unsafe { ibv_destroy_qp(self.qp) };
        if rc != 0 {
            tracing::warn!(qpn = self.qpn, error = %rc_err(rc), "rdma: ibv_destroy_qp failed");
        }
    }
}

/// A random 24-bit initial PSN (so a stale packet of an earlier connection between the same
/// QP numbers is out of sequence).
fn random_psn() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() as u32) & 0xff_ffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_round_trips() {
        let e = QpEndpoint {
            qpn: 0x12_3456,
            psn: 0xab_cdef,
            gid: Gid("::ffff:10.99.0.1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()),
            lid: 7,
            mtu: Mtu::M1024,
        };
        assert_eq!(QpEndpoint::decode(&e.encode()), Some(e));
        assert_eq!(QpEndpoint::decode(&e.encode()[..27]), None);
        let mut bad = e.encode();
        bad[26] = 9;
        assert_eq!(QpEndpoint::decode(&bad), None);
    }

    #[test]
    fn default_config_bounds_rnr_retry() {
        let c = QpConfig::default();
        assert!(c.rnr_retry < 7, "rnr_retry 7 is infinite");
        assert!(c.retry_cnt <= 7);
    }
}
