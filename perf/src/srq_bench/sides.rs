//! The two threads of a run: the receiver (the design under test) and the sender.

use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use corewire_transport::rdma::verbs::{
    Access, CompletionQueue, Context, MemoryRegion, ProtectionDomain, QpEndpoint, QueuePair,
    RecvWr, SendWr, Sge, SharedReceiveQueue, WcOpcode, WcStatus, WorkCompletion,
};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::{
    verr, Counters, Design, Meter, Plan, Shared, SideStats, DRAIN_TIMEOUT, FILL_CHAIN, PARK_MAX,
    PEER_FAILED, POLL_BATCH, SETUP_TIMEOUT, STOP,
};
use crate::runtime_bench::pin;

/// An error for a failed (or unexpected) work completion.
fn check_wc(side: &str, wc: &WorkCompletion, want: WcOpcode, len: Option<u32>) -> io::Result<()> {
    if !wc.is_success() {
        let hint = if wc.status() == WcStatus::RNR_RETRY_EXC_ERR {
            ": a SEND found no receive posted (flow control broken)"
        } else {
            ""
        };
        return Err(io::Error::other(format!(
            "srq-bench {side}: work completion failed: {} (qpn {:#x}, wr_id {}, vendor_err \
             {:#x}){hint}",
            wc.status(),
            wc.qp_num(),
            wc.wr_id(),
            wc.vendor_err()
        )));
    }
    if wc.opcode() != want || len.is_some_and(|l| l != wc.byte_len()) {
        return Err(io::Error::other(format!(
            "srq-bench {side}: unexpected completion {wc:?}, wanted {want:?} of {len:?} bytes"
        )));
    }
    Ok(())
}

/// The peer's QP endpoints, waiting while the peer sets up.
fn recv_endpoints(rx: &Receiver<Vec<QpEndpoint>>, sh: &Shared) -> io::Result<Vec<QpEndpoint>> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(v) => return Ok(v),
            Err(RecvTimeoutError::Disconnected) => return Err(io::Error::other(PEER_FAILED)),
            Err(RecvTimeoutError::Timeout) => {
                sh.check_abort()?;
                if Instant::now() > deadline {
                    return Err(io::Error::other("srq-bench: peer setup timed out"));
                }
            }
        }
    }
}

/// Sleeps until the CQ's channel fd is readable or `timeout` passes; true if readable.
fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `p` is one valid, writable pollfd for the duration of the call; `fd` is the
    // completion channel of a CQ the caller holds, so it stays open meanwhile.
    let rc = unsafe { libc::poll(&mut p, 1, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(rc > 0)
}

/// Pins this thread to `cpu` and opens one side's device context, PD and CQ (of `cqe`
/// entries); the context stays alive through the PD.
fn open_side(
    plan: &Plan,
    cpu: usize,
    cqe: u32,
) -> io::Result<(Rc<ProtectionDomain>, Rc<CompletionQueue>)> {
    pin(cpu);
    let ctx = Context::open_by_name(&plan.dev, 1, None).map_err(verr)?;
    let pd = ProtectionDomain::new(&ctx).map_err(verr)?;
    let cq = CompletionQueue::new(&ctx, cqe).map_err(verr)?;
    Ok((pd, cq))
}

/// One side's channels to the other side and to the coordinator.
pub(super) struct Link {
    pub(super) to_peer: Sender<Vec<QpEndpoint>>,
    pub(super) from_peer: Receiver<Vec<QpEndpoint>>,
    pub(super) ready: Sender<()>,
}

impl Link {
    /// Trades QP endpoints with the peer (each channel holds one message, so neither side
    /// waits for the other to read first), connects each QP to its peer's endpoint in order
    /// (the two sides must have as many), then tells the coordinator this side is ready.
    /// The receiver's buffers are posted before it calls this, so before the sender is ready.
    fn connect(&self, qps: &[QueuePair], sh: &Shared) -> io::Result<()> {
        self.to_peer
            .send(qps.iter().map(|q| q.endpoint()).collect())
            .map_err(|_| io::Error::other(PEER_FAILED))?;
        let peer = recv_endpoints(&self.from_peer, sh)?;
        if peer.len() != qps.len() {
            return Err(io::Error::other("srq-bench: endpoint count mismatch"));
        }
        for (qp, ep) in qps.iter().zip(&peer) {
            qp.connect(ep).map_err(verr)?;
        }
        self.ready
            .send(())
            .map_err(|_| io::Error::other(PEER_FAILED))
    }
}

/// The receiver's verbs objects. Fields drop in order: the QPs (flushing their receives),
/// then the SRQ (releasing its receives), then the memory those receives named.
struct RecvSide {
    qps: Vec<QueuePair>,
    srq: Option<Rc<SharedReceiveQueue>>,
    mr: MemoryRegion,
    cq: Rc<CompletionQueue>,
}

pub(super) fn receiver(plan: &Plan, sh: &Shared, link: Link) -> io::Result<SideStats> {
    let (msg, w) = (plan.msg_size, plan.window as usize);
    let (pd, cq) = open_side(plan, plan.cpus.1, plan.recv_cqe)?;
    let nbufs = plan.recv_bufs as usize;
    let mr = MemoryRegion::new(&pd, nbufs * msg, Access::LOCAL_WRITE).map_err(verr)?;
    let srq = match plan.design {
        Design::Srq => Some(SharedReceiveQueue::new(&pd, plan.recv_bufs, 1).map_err(verr)?),
        Design::PerQp => None,
    };
    let mut side = RecvSide {
        qps: Vec::with_capacity(plan.qps),
        srq,
        mr,
        cq,
    };
    let qcfg = plan.qp_config(1, plan.window);
    for _ in 0..plan.qps {
        let qp = QueuePair::new(&pd, &side.cq, &side.cq, side.srq.as_ref(), qcfg.clone());
        side.qps.push(qp.map_err(verr)?);
    }
    let sges: Vec<Sge> = (0..nbufs)
        .map(|i| side.mr.sge(i * msg..(i + 1) * msg))
        .collect();
    let wr = |i: usize| RecvWr::new(i as u64, std::slice::from_ref(&sges[i]));
    let mut chain: Vec<RecvWr<'_>> = Vec::with_capacity(POLL_BATCH.max(FILL_CHAIN));
    // Fill: buffer i belongs to QP i / window (perqp), or to the SRQ.
    let step = if side.srq.is_some() { FILL_CHAIN } else { w };
    for start in (0..nbufs).step_by(step) {
        chain.clear();
        chain.extend((start..(start + step).min(nbufs)).map(wr));
        post_recvs(&side, &chain, start / w)?;
    }
    link.connect(&side.qps, sh)?;
    sh.wait_start()?;

    let mut wcs = vec![WorkCompletion::default(); POLL_BATCH];
    // The buffers consumed this turn per receive queue, and the queues that have some.
    let mut pending: Vec<Vec<usize>> = vec![Vec::new(); sh.reposted.len()];
    let mut dirty: Vec<usize> = Vec::new();
    let mut c = Counters::default();
    let mut meter = Meter::default();
    let mut idle_since: Option<Instant> = None;
    let mut last_progress = Instant::now();
    let want = Some(msg as u32);
    loop {
        let phase = sh.phase.load(Ordering::Acquire);
        meter.observe(phase, &c)?;
        sh.check_abort()?;
        if phase >= STOP && sh.send_done.load(Ordering::Acquire) {
            let sent = sh.sent_final.load(Ordering::Acquire);
            if c.msgs >= sent {
                break;
            }
            if last_progress.elapsed() > DRAIN_TIMEOUT {
                return Err(io::Error::other(format!(
                    "srq-bench receiver: {} of {sent} SENDs arrived, none for {DRAIN_TIMEOUT:?}",
                    c.msgs
                )));
            }
        }
        let mut n = side.cq.poll(&mut wcs).map_err(verr)?;
        if n == 0 {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() < plan.recv_spin {
                continue;
            }
            // Park without a lost wake-up: arm, poll again, only then sleep.
            side.cq.req_notify(false).map_err(verr)?;
            n = side.cq.poll(&mut wcs).map_err(verr)?;
            if n == 0 {
                if wait_readable(side.cq.channel_fd(), PARK_MAX)? {
                    c.wakeups += 1;
                }
                while side.cq.get_event_and_ack().map_err(verr)? {}
                continue;
            }
        }
        idle_since = None;
        last_progress = Instant::now();
        for wc in &wcs[..n] {
            check_wc("receiver", wc, WcOpcode::Recv, want)?;
            let id = usize::try_from(wc.wr_id()).unwrap_or(usize::MAX);
            if id >= nbufs {
                return Err(io::Error::other(format!(
                    "srq-bench receiver: bad wr_id {id}"
                )));
            }
            // Pending reposts per receive queue: the QP's own (perqp), or the SRQ as 0.
            let q = if side.srq.is_some() { 0 } else { id / w };
            if pending[q].is_empty() {
                dirty.push(q);
            }
            pending[q].push(id);
        }
        c.msgs += n as u64;
        // Repost (chains, post calls, credit returns): one chain per QP with completions in
        // this batch (perqp), or one chain for the SRQ.
        let t = Instant::now();
        for &q in &dirty {
            chain.clear();
            chain.extend(pending[q].drain(..).map(wr));
            post_recvs(&side, &chain, q)?;
            c.calls += 1;
            c.wrs += chain.len() as u64;
            sh.reposted[q].fetch_add(chain.len() as u64, Ordering::Release);
        }
        dirty.clear();
        c.post += t.elapsed();
    }
    sh.recv_done.store(true, Ordering::Release);
    meter.stats()
}

/// Posts `chain` to the SRQ, or else to the receive queue of QP `q`.
fn post_recvs(side: &RecvSide, chain: &[RecvWr<'_>], q: usize) -> io::Result<()> {
    // SAFETY: every SGE names its own `msg_size` slice of `side.mr` (registered with
    // LOCAL_WRITE in this PD), free: never posted yet, or handed back by its completion.
    // Nothing reads or writes that memory while it is posted, and `RecvSide` drops the QPs
    // and the SRQ (flushing or releasing the receives) before the region.
    match &side.srq {
        Some(srq) => unsafe { srq.post_recv(chain) },
        None => unsafe { side.qps[q].post_recv(chain) },
    }
    .map_err(verr)
}

/// The sender's verbs objects: the QPs drop (and drain) before the send buffer.
struct SendSide {
    qps: Vec<QueuePair>,
    mr: MemoryRegion,
    cq: Rc<CompletionQueue>,
}

pub(super) fn sender(plan: &Plan, sh: &Shared, link: Link) -> io::Result<SideStats> {
    let (pd, cq) = open_side(plan, plan.cpus.0, plan.send_cqe)?;
    let mr = MemoryRegion::new(&pd, plan.msg_size, Access::NONE).map_err(verr)?;
    let mut side = SendSide {
        qps: Vec::with_capacity(plan.qps),
        mr,
        cq,
    };
    let qcfg = plan.qp_config(plan.window, 1);
    for _ in 0..plan.qps {
        let qp = QueuePair::new(&pd, &side.cq, &side.cq, None, qcfg.clone());
        side.qps.push(qp.map_err(verr)?);
    }
    link.connect(&side.qps, sh)?;
    sh.wait_start()?;

    let n = side.qps.len();
    let (w, s) = (u64::from(plan.window), u64::from(plan.signal_every));
    let depth = match plan.design {
        Design::PerQp => w,
        Design::Srq => u64::from(plan.recv_bufs),
    };
    let sge = [side.mr.sge(0..plan.msg_size)];
    let mut wcs = vec![WorkCompletion::default(); POLL_BATCH];
    let (mut sent, mut acked, mut credit) = (vec![0u64; n], vec![0u64; n], vec![0u64; n]);
    let (mut sent_total, mut shared_credit, mut cursor) = (0u64, 0u64, 0usize);
    let mut chain: Vec<SendWr<'_>> = Vec::with_capacity(plan.window as usize);
    let mut c = Counters::default();
    let mut meter = Meter::default();
    let mut reap = |acked: &mut [u64]| -> io::Result<()> {
        let k = side.cq.poll(&mut wcs).map_err(verr)?;
        for wc in &wcs[..k] {
            check_wc("sender", wc, WcOpcode::Send, None)?;
            // A signaled completion retires its SEND and the unsignaled ones before it.
            match acked.get_mut(wc.wr_id() as usize) {
                Some(a) => *a += s,
                None => return Err(io::Error::other("srq-bench sender: bad wr_id")),
            }
        }
        Ok(())
    };
    loop {
        reap(&mut acked)?;
        let phase = sh.phase.load(Ordering::Acquire);
        meter.observe(phase, &c)?;
        sh.check_abort()?;
        if phase >= STOP {
            break;
        }
        for i in 0..n {
            let q = (cursor + i) % n;
            let room = w - (sent[q] - acked[q]);
            let avail = match plan.design {
                Design::PerQp => {
                    if credit[q] == 0 {
                        let back = sh.reposted[q].load(Ordering::Acquire);
                        credit[q] = (depth + back).saturating_sub(sent[q]);
                    }
                    credit[q]
                }
                Design::Srq => {
                    if shared_credit == 0 {
                        let back = sh.reposted[0].load(Ordering::Acquire);
                        shared_credit = (depth + back).saturating_sub(sent_total);
                    }
                    if shared_credit == 0 {
                        cursor = q; // the starved QP goes first next turn
                        break;
                    }
                    shared_credit
                }
            };
            let k = room.min(avail);
            if k == 0 {
                continue;
            }
            chain.clear();
            chain.extend(
                (sent[q]..sent[q] + k)
                    .map(|idx| SendWr::send(q as u64, &sge).signaled((idx + 1) % s == 0)),
            );
            // SAFETY: the SGE names the whole of `side.mr`, registered in this QP's PD, never
            // written after registration, and `SendSide` drops the QPs before the region.
            unsafe { side.qps[q].post_send(&chain) }.map_err(verr)?;
            sent[q] += k;
            sent_total += k;
            match plan.design {
                Design::PerQp => credit[q] -= k,
                Design::Srq => shared_credit -= k,
            }
            c.msgs += k;
            c.calls += 1;
            c.wrs += k;
        }
    }
    // Drain: the receiver counts up to `sent_final`; keep reaping until it has them all.
    sh.sent_final.store(sent_total, Ordering::Release);
    sh.send_done.store(true, Ordering::Release);
    let deadline = Instant::now() + SETUP_TIMEOUT;
    while !sh.recv_done.load(Ordering::Acquire) {
        sh.check_abort()?;
        reap(&mut acked)?;
        if Instant::now() > deadline {
            return Err(io::Error::other(
                "srq-bench sender: the receiver did not finish",
            ));
        }
        thread::sleep(Duration::from_micros(200));
    }
    meter.stats()
}
