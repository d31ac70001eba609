//! Per-core RDMA state: one device context, PD, completion queue (with its completion
//! channel) and send-buffer pool per core and device selection, shared by every queue pair of
//! that core; and the core's [`Poller`] that busy-polls the CQ and posts queued sends.
//!
//! With `dispatch = central` ([`Dispatch`]) the dispatcher thread polls the CQ instead and the
//! poller drains what it handed over (through the same `CompletionQueue::poll`), parking on
//! the hand-over eventfd instead of the completion channel.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;

use corewire_runtime::{register_poller, Poller, PollerRegistration};

use crate::addr::RdmaOptions;
use crate::error::{Result, TransportError};
use crate::rdma::budget::pool_config;
use crate::rdma::central::{self, Inbox};
use crate::rdma::conn::{Conn, RECV_BUFS};
use crate::rdma::dispatch::{dispatch, Dispatch};
use crate::rdma::hugemem::nic_numa_node;
use crate::rdma::pool::{returns_task, Pool};
use crate::rdma::verbs::{
    Access, CompletionQueue, Context, MemoryRegion, ProtectionDomain, WorkCompletion,
};

/// Size of one send-pool chunk, and of one receive buffer: the largest SEND.
pub(crate) const CHUNK: usize = 16 << 10;
/// Chunks in a core's send pool (8 MiB).
pub(crate) const POOL_CHUNKS: usize = 512;
/// Completions taken per `ibv_poll_cq` call.
const POLL_BATCH: usize = 32;
/// Completion queue size requested (capped by the device).
const CQ_ENTRIES: u32 = 1 << 16;

/// The registered send pool of one core: fixed-size chunks, a free list.
pub(crate) struct SendPool {
    mr: MemoryRegion,
    free: RefCell<Vec<u32>>,
}

impl SendPool {
    pub fn get(&self) -> Option<u32> {
        self.free.borrow_mut().pop()
    }
    pub fn put(&self, i: u32) {
        self.free.borrow_mut().push(i);
    }
    pub fn lkey(&self) -> u32 {
        self.mr.lkey()
    }
    /// Address of chunk `i`.
    pub fn chunk_ptr(&self, i: u32) -> *mut u8 {
        assert!((i as usize) < POOL_CHUNKS);
        // SAFETY: `i < POOL_CHUNKS` and the region is `POOL_CHUNKS * CHUNK` bytes long, so
        // the offset stays inside the allocation.
        unsafe { self.mr.as_ptr().add(i as usize * CHUNK) }
    }
}

/// One core's RDMA resources for one device selection. Also the core's poller.
pub(crate) struct CoreRdma {
    pub pd: Rc<ProtectionDomain>,
    /// One CQ for sends and receives of every QP of this core.
    pub cq: Rc<CompletionQueue>,
    pub pool: SendPool,
    /// The zero-copy large-buffer pool ([`crate::rdma::pool`]); `None` if it could not be
    /// registered (e.g. the memlock limit), in which case every payload is copied.
    pub zc: Option<Pool>,
    /// Connections by QP number.
    conns: RefCell<HashMap<u32, Rc<Conn>>>,
    /// CQ entries promised to live QPs (so the shared CQ cannot overflow).
    cq_budget: Cell<u32>,
    /// Connections with sends to post (queued data, credits to return, end of stream).
    dirty: RefCell<Vec<Rc<Conn>>>,
    /// Connections that could not post for want of pool chunks.
    starved: RefCell<Vec<Rc<Conn>>>,
    wcs: RefCell<Vec<WorkCompletion>>,
    /// `dispatch = central`: the hand-over queue the dispatcher thread fills.
    inbox: Option<Arc<Inbox>>,
    reg: RefCell<Option<PollerRegistration>>,
}

thread_local! {
    static CORES: RefCell<HashMap<String, Rc<CoreRdma>>> = RefCell::new(HashMap::new());
}

fn key(o: &RdmaOptions) -> String {
    format!("{:?}/{:?}/{:?}", o.dev, o.port, o.gid)
}

/// This core's resources for `opts`, created (and the poller registered) on first use.
pub(crate) fn core_rdma(opts: &RdmaOptions) -> Result<Rc<CoreRdma>> {
    let k = key(opts);
    if let Some(c) = CORES.with(|m| m.borrow().get(&k).cloned()) {
        return Ok(c);
    }
    let ctx = Context::open(opts)?;
    let pd = ProtectionDomain::new(&ctx)?;
    let cq = CompletionQueue::new(&ctx, CQ_ENTRIES.min(ctx.caps().max_cqe))?;
    let inbox = match dispatch()? {
        Dispatch::Sharded => None,
        Dispatch::Central => Some(central::attach(&cq)?),
    };
    let mr = MemoryRegion::new(&pd, POOL_CHUNKS * CHUNK, Access::LOCAL_WRITE)?;
    let zc = match Pool::new(&pd, nic_numa_node(ctx.name()), &pool_config()) {
        Ok(p) => {
            let i = p.info();
            tracing::debug!(
                device = ctx.name(), backing = ?i.backing, numa_node = ?i.numa_node,
                bytes = i.bytes, "rdma: zero-copy pool registered"
            );
            Some(p)
        }
        Err(e) => {
            tracing::warn!(error = %e, "rdma: no zero-copy pool on this core; payloads are copied");
            None
        }
    };
    let core = Rc::new(CoreRdma {
        pd,
        cq,
        pool: SendPool {
            mr,
            free: RefCell::new((0..POOL_CHUNKS as u32).rev().collect()),
        },
        zc,
        conns: RefCell::new(HashMap::new()),
        cq_budget: Cell::new(0),
        dirty: RefCell::new(Vec::new()),
        starved: RefCell::new(Vec::new()),
        wcs: RefCell::new(vec![WorkCompletion::default(); POLL_BATCH]),
        inbox,
        reg: RefCell::new(None),
    });
    let reg = register_poller(core.clone())?;
    *core.reg.borrow_mut() = Some(reg);
    if core.zc.is_some() {
        // On a core (`register_poller` succeeded), so this spawns.
        if let Ok(t) = corewire_runtime::try_spawn_local(returns_task(Rc::downgrade(&core))) {
            t.detach();
        }
    }
    CORES.with(|m| m.borrow_mut().insert(k, core.clone()));
    Ok(core)
}

impl CoreRdma {
    /// Reserves `entries` CQ entries for a new QP.
    pub fn reserve_cq(&self, entries: u32) -> Result<()> {
        let used = self.cq_budget.get();
        if used + entries > self.cq.capacity() {
            return Err(TransportError::Unavailable {
                what: format!(
                    "rdma: the core's completion queue ({} entries) is fully committed to {} \
                     queue pairs; no room for another",
                    self.cq.capacity(),
                    self.conns.borrow().len()
                ),
            });
        }
        self.cq_budget.set(used + entries);
        Ok(())
    }

    pub fn release_cq(&self, entries: u32) {
        self.cq_budget
            .set(self.cq_budget.get().saturating_sub(entries));
    }

    /// Queue pairs registered (live, or closing and not yet drained).
    pub fn queue_pairs(&self) -> usize {
        self.conns.borrow().len()
    }

    pub fn add(&self, qpn: u32, c: Rc<Conn>) {
        self.conns.borrow_mut().insert(qpn, c);
    }

    /// Registers a new connection's QP with this core and posts all its receive buffers:
    /// from here on its completions are dispatched to it.
    pub fn install(&self, c: &Rc<Conn>) -> Result<()> {
        self.add(c.qpn(), c.clone());
        let idxs: Vec<u32> = (0..RECV_BUFS).collect();
        c.post_recvs(&idxs)
    }

    pub fn remove(&self, qpn: u32) {
        self.conns.borrow_mut().remove(&qpn);
        self.dirty.borrow_mut().retain(|c| c.qpn() != qpn);
        self.starved.borrow_mut().retain(|c| c.qpn() != qpn);
    }

    /// Schedules `c` for posting at the poller's next turn.
    pub fn mark_dirty(&self, c: &Rc<Conn>) {
        if !c.dirty.replace(true) {
            self.dirty.borrow_mut().push(c.clone());
        }
    }

    pub fn mark_starved(&self, c: &Rc<Conn>) {
        self.starved.borrow_mut().push(c.clone());
    }

    /// Chunks came back: connections waiting for them may post again.
    pub fn chunks_freed(&self) {
        let starved = std::mem::take(&mut *self.starved.borrow_mut());
        for c in starved {
            self.mark_dirty(&c);
        }
    }

    /// Polls the CQ once and routes completions; returns how many there were.
    pub fn poll_cq(&self) -> usize {
        let mut wcs = self.wcs.borrow_mut();
        let n = match self.cq.poll(&mut wcs) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "rdma: polling the completion queue failed");
                return 0;
            }
        };
        let batch: Vec<WorkCompletion> = wcs[..n].to_vec();
        drop(wcs);
        for wc in &batch {
            let c = self.conns.borrow().get(&wc.qp_num()).cloned();
            match c {
                Some(c) => c.on_completion(self, wc),
                None => tracing::debug!(?wc, "rdma: completion for an unknown QP"),
            }
        }
        n
    }

    /// Posts what every dirty connection has to send; returns whether any did.
    fn post_dirty(&self) -> bool {
        // One pass: a connection marked again meanwhile waits for the next turn.
        let batch = std::mem::take(&mut *self.dirty.borrow_mut());
        let mut work = false;
        for c in batch {
            c.dirty.set(false);
            work |= c.pump(self);
        }
        work
    }
}

impl Poller for CoreRdma {
    fn poll(&self) -> bool {
        let mut work = false;
        while self.poll_cq() > 0 {
            work = true;
        }
        work | self.post_dirty()
    }

    fn try_enter_interrupt_mode(&self) -> bool {
        if let Some(inbox) = &self.inbox {
            if !self.dirty.borrow().is_empty() || self.poll_cq() > 0 {
                return false;
            }
            inbox.park();
            // Completions handed over before the flag was visible raise no wake-up.
            if self.poll_cq() > 0 || !self.dirty.borrow().is_empty() {
                inbox.unpark(false);
                return false;
            }
            return true;
        }
        // Clear stale events (a notification armed before a veto may have fired since).
        while let Ok(true) = self.cq.get_event_and_ack() {}
        if !self.dirty.borrow().is_empty() || self.poll_cq() > 0 {
            return false;
        }
        if let Err(e) = self.cq.req_notify(false) {
            tracing::error!(error = %e, "rdma: arming the completion queue failed");
            return false;
        }
        // A completion that arrived before arming raises no event: re-check after arming.
        self.poll_cq() == 0 && self.dirty.borrow().is_empty()
    }

    fn exit_interrupt_mode(&self) {
        if let Some(inbox) = &self.inbox {
            inbox.unpark(true);
            return;
        }
        while let Ok(true) = self.cq.get_event_and_ack() {}
    }

    fn interrupt_fd(&self) -> Option<RawFd> {
        Some(match &self.inbox {
            Some(inbox) => inbox.fd(),
            None => self.cq.channel_fd(),
        })
    }

    fn name(&self) -> &str {
        "rdma"
    }

    /// Connections closed while their QP drains without blocking (`Conn::close`) are
    /// finished here, draining what is left (bounded by the QP's drain timeout): the loop
    /// whose polls would have finished them is ending, and they must not outlive it (their
    /// side-channel sockets belong to the core's I/O ring).
    fn on_core_stop(&self) {
        let closing: Vec<Rc<Conn>> = self
            .conns
            .borrow()
            .values()
            .filter(|c| c.closed.get())
            .cloned()
            .collect();
        for c in closing {
            c.finish_close(self);
        }
    }
}
