//! Protection domain.

use std::io;
use std::rc::Rc;

use rdma_sys::{ibv_alloc_pd, ibv_dealloc_pd, ibv_pd};

use super::{rc_err, verbs_err, Context};
use crate::error::Result;

/// A protection domain (`ibv_pd`): memory regions, shared receive queues and queue pairs are
/// created in one and can only be used with each other. Keeps its [`Context`] alive.
pub struct ProtectionDomain {
    pd: *mut ibv_pd,
    ctx: Rc<Context>,
}

impl ProtectionDomain {
    pub fn new(ctx: &Rc<Context>) -> Result<Rc<ProtectionDomain>> {
        // SAFETY: `ctx` is an open context (kept alive by the `Rc` stored below for as long
        // as the PD exists); the returned PD is owned by the new value.
        let pd = unsafe { ibv_alloc_pd(ctx.as_ptr()) };
        if pd.is_null() {
            return Err(verbs_err(
                "ibv_alloc_pd",
                io::Error::last_os_error(),
                format!("device {}", ctx.name()),
            ));
        }
        Ok(Rc::new(ProtectionDomain {
            pd,
            ctx: Rc::clone(ctx),
        }))
    }

    pub fn context(&self) -> &Rc<Context> {
        &self.ctx
    }

    pub(crate) fn as_ptr(&self) -> *mut ibv_pd {
        self.pd
    }
}

impl Drop for ProtectionDomain {
    fn drop(&mut self) {
        // SAFETY: `pd` came from `ibv_alloc_pd` and is freed once; MRs, SRQs and QPs in it
        // hold an `Rc<ProtectionDomain>`, so none is left. The context outlives this call
        // (the `ctx` field is dropped after `drop` returns).
        let rc = unsafe { ibv_dealloc_pd(self.pd) };
        if rc != 0 {
            tracing::warn!(dev = %self.ctx.name(), error = %rc_err(rc), "rdma: ibv_dealloc_pd failed");
        }
    }
}
