//! Shared receive queue.

use std::cell::RefCell;
use std::io;
use std::ptr;
use std::rc::Rc;

use rdma_sys::{ibv_create_srq, ibv_destroy_srq, ibv_post_srq_recv, ibv_recv_wr, ibv_srq};

use super::qp::RecvScratch;
use super::{rc_err, verbs_err, ProtectionDomain, RecvWr};
use crate::error::Result;

/// A shared receive queue (`ibv_srq`): one pool of receive buffers for many queue pairs.
/// Keeps its [`ProtectionDomain`] alive; queue pairs using it keep it alive.
///
/// Receives posted here are not flushed when a queue pair using the SRQ fails or is dropped:
/// they stay in the SRQ for the other queue pairs, and are released when the SRQ is dropped.
pub struct SharedReceiveQueue {
    srq: *mut ibv_srq,
    max_wr: u32,
    max_sge: u32,
    scratch: RefCell<RecvScratch>,
    pd: Rc<ProtectionDomain>,
}

impl SharedReceiveQueue {
    /// An SRQ holding up to `max_wr` receives of up to `max_sge` SGEs each.
    pub fn new(pd: &Rc<ProtectionDomain>, max_wr: u32, max_sge: u32) -> Result<Rc<Self>> {
        let ctx = pd.context();
        let caps = ctx.caps();
        if max_wr == 0 || max_wr > caps.max_srq_wr || max_sge == 0 || max_sge > caps.max_srq_sge {
            return Err(verbs_err(
                "ibv_create_srq",
                io::Error::from_raw_os_error(libc::EINVAL),
                format!(
                    "device {}: max_wr {max_wr} (device max {}), max_sge {max_sge} (device max {})",
                    ctx.name(),
                    caps.max_srq_wr,
                    caps.max_srq_sge
                ),
            ));
        }
        let mut init = rdma_sys::ibv_srq_init_attr {
            srq_context: ptr::null_mut(),
            attr: rdma_sys::ibv_srq_attr {
                max_wr,
                max_sge,
                srq_limit: 0,
            },
        };
        // SAFETY: `pd` is live (and kept alive by the stored `Rc`); `init` is a valid
        // attribute struct the call reads and updates with the granted sizes.
        let srq = unsafe { ibv_create_srq(pd.as_ptr(), &mut init) };
        if srq.is_null() {
            return Err(verbs_err(
                "ibv_create_srq",
                io::Error::last_os_error(),
                format!("device {}: max_wr {max_wr}, max_sge {max_sge}", ctx.name()),
            ));
        }
        Ok(Rc::new(SharedReceiveQueue {
            srq,
            max_wr: init.attr.max_wr,
            max_sge: init.attr.max_sge,
            scratch: RefCell::default(),
            pd: Rc::clone(pd),
        }))
    }

    /// Granted depth.
    pub fn max_wr(&self) -> u32 {
        self.max_wr
    }

    /// Granted SGEs per receive.
    pub fn max_sge(&self) -> u32 {
        self.max_sge
    }

    pub fn pd(&self) -> &Rc<ProtectionDomain> {
        &self.pd
    }

    /// Posts receives as one chain (`ibv_post_srq_recv`).
    ///
    /// # Safety
    /// Every [`Sge`](super::Sge) must name memory of a live
    /// [`MemoryRegion`](super::MemoryRegion) in this SRQ's PD registered with `LOCAL_WRITE`,
    /// which must stay allocated and must not be read or written until the receive's work
    /// completion has been polled or the SRQ has been dropped.
    pub unsafe fn post_recv(&self, wrs: &[RecvWr<'_>]) -> Result<()> {
        if wrs.is_empty() {
            return Ok(());
        }
        let what = || format!("device {} SRQ", self.pd.context().name());
        let mut scratch = self.scratch.borrow_mut();
        let head = scratch.build(wrs, self.max_sge, false, &what)?;
        let mut bad: *mut ibv_recv_wr = ptr::null_mut();
        // SAFETY: `srq` is live; `head` is a chain built in `scratch`, untouched until the
        // call returns; the memory the SGEs name is the caller's obligation.
        let rc = unsafe { ibv_post_srq_recv(self.srq, head, &mut bad) };
        if rc != 0 {
            let i = if bad.is_null() {
                0
            } else {
                scratch.index_of(bad)
            };
            return Err(verbs_err(
                "ibv_post_srq_recv",
                rc_err(rc),
                format!(
                    "{}: work request {i} of {} rejected (the {i} before it were posted)",
                    what(),
                    wrs.len()
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn as_ptr(&self) -> *mut ibv_srq {
        self.srq
    }
}

impl Drop for SharedReceiveQueue {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once; QPs using it hold an
        // `Rc<SharedReceiveQueue>`, so none is attached any more. The PD outlives the call.
        let rc = unsafe { ibv_destroy_srq(self.srq) };
        if rc != 0 {
            tracing::warn!(error = %rc_err(rc), "rdma: ibv_destroy_srq failed");
        }
    }
}
