//! RDMA verbs: RAII wrappers over libibverbs (rdma-core) through the `rdma-sys` bindings.
//!
//! All FFI of the RDMA transport lives in this module tree. The object graph is the verbs one,
//! and every object holds its parent alive with an [`Rc`](std::rc::Rc), so destruction order
//! is correct by construction, whatever order the handles are dropped in:
//!
//! ```text
//! Context ── ProtectionDomain ── MemoryRegion
//!    │               ├────────── SharedReceiveQueue ─┐
//!    └── CompletionQueue (+ completion channel)      │
//!                     └──────── QueuePair (RC) ──────┘   (QP holds PD, CQs, SRQ)
//! ```
//!
//! A [`QueuePair`] is destroyed before its CQs, SRQ and PD; a [`MemoryRegion`] before its PD;
//! everything before the [`Context`]. All objects are `!Send` and `!Sync` (raw pointers and
//! `Rc`): they live on the core that created them, as the rest of the thread-per-core runtime.
//! The one exception is opt-in: a CQ can hand a thread-safe handle to another thread that polls
//! it on the owner's behalf (`cq_shared`, for the `dispatch = central` comparison mode).
//!
//! Posting work requests is `unsafe` ([`QueuePair::post_send`], [`QueuePair::post_recv`],
//! [`SharedReceiveQueue::post_recv`]): the adapter reads or writes the memory a request names
//! until its work completion is polled (or the queue pair is dropped, which flushes and drains
//! it), and that lifetime is not visible to the borrow checker.
//!
//! Device selection: [`Context::open`] takes the [`RdmaOptions`](crate::RdmaOptions) of an
//! `rdma://` address (device name, port, GID index) and picks a RoCE v2 GID automatically when
//! no index is given. On a kernel without RDMA (`ibv_get_device_list` fails with `ENOSYS`) the
//! error says so; `scripts/rxe-vm` runs a command in a guest with a Soft-RoCE device `rxe0`.

mod cq;
mod cq_shared;
mod device;
mod mr;
mod pd;
mod qp;
mod srq;

use std::io;

pub use cq::{CompletionQueue, WcOpcode, WcStatus, WorkCompletion};
pub(crate) use cq_shared::{CompletionSource, SharedCq};
pub use device::{
    device_names, Context, DeviceCaps, Gid, GidEntry, GidType, LinkLayer, Mtu, PortInfo, PortState,
};
pub use mr::{Access, MemoryRegion, RemoteBuf, Sge};
pub use pd::ProtectionDomain;
pub use qp::{QpCaps, QpConfig, QpEndpoint, QpState, QueuePair, RecvWr, SendOp, SendWr};
pub use srq::SharedReceiveQueue;

use crate::error::TransportError;

/// `wr_id`s at or above this value are reserved for the drain markers a [`QueuePair`] posts
/// when it is closed; posting one is rejected with `EINVAL`.
pub const RESERVED_WR_ID_MIN: u64 = u64::MAX - 1;

/// A [`TransportError::Verbs`] for `op`, from an `errno`-style return value or `errno`.
pub(crate) fn verbs_err(op: &'static str, source: io::Error, detail: String) -> TransportError {
    TransportError::Verbs { op, source, detail }
}

/// The error of a verbs call that returns an errno value (`ibv_modify_qp`, `ibv_post_*`, ...).
/// Some providers return -1 and set `errno` instead; both are handled.
pub(crate) fn rc_err(rc: i32) -> io::Error {
    if rc > 0 {
        io::Error::from_raw_os_error(rc)
    } else {
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(0) | None => io::Error::other(format!("verbs call returned {rc}")),
            _ => e,
        }
    }
}

// The `rdma-sys` types hand-written over unions must match rdma-core's C layout (x86-64 and
// aarch64: LP64). Checked at compile time so a binding change cannot silently corrupt posts.
const _: () = {
    use std::mem::size_of;
    assert!(size_of::<rdma_sys::ibv_wc>() == 48);
    assert!(size_of::<rdma_sys::ibv_send_wr>() == 128);
    assert!(size_of::<rdma_sys::ibv_recv_wr>() == 32);
    assert!(size_of::<rdma_sys::ibv_sge>() == 16);
    assert!(size_of::<rdma_sys::ibv_gid>() == 16);
    assert!(size_of::<rdma_sys::ibv_ah_attr>() == 32);
};
