//! The RDMA transport (`rdma://`, cargo feature `rdma`).
//!
//! [`verbs`] holds every FFI call into libibverbs (rdma-core, through `rdma-sys`) behind RAII
//! wrappers; the layers above it use only its safe (or explicitly `unsafe`-contracted) API.
//!
//! # Phase 1 design
//! - **Per core, shared-nothing.** Each core opens, lazily on its first listener or
//!   connection, one device context, PD, completion queue (sends and receives of every QP of
//!   the core; one completion channel), registered send pool and zero-copy pool ([`pool`],
//!   on huge pages on the NIC's NUMA node where possible: [`hugemem`]), kept in a
//!   thread-local ([`core`]). One [`Poller`](corewire_runtime::Poller) per core
//!   busy-polls the CQ in batches, routes completions by QP number, and posts what dirty
//!   connections have queued, one `ibv_post_send` chain per connection and turn (doorbell
//!   batching, [`pump`]); under load the merge-send policy ([`crate::merge_send`]) lets a
//!   busy QP wait for a fuller batch instead of posting one small message per turn.
//!   Interrupt mode arms the CQ (`ibv_req_notify_cq`) and re-polls afterwards, vetoing the
//!   park if completions raced in; the channel fd is the poller's `interrupt_fd`. No lock,
//!   atomic or eventfd on the data path (returns of zero-copy buffers dropped on other
//!   threads take a lock-free queue and a task wake-up).
//! - **Receive queues: one per QP**, [`conn::RECV_BUFS`] buffers of [`core::CHUNK`] bytes each,
//!   decided by measurement (`corewire-perf srq-bench`, perf/README.md "SRQ per core or
//!   receive queues per QP"): with the SRQ as deep as the credits granted, so that no
//!   receiver runs dry and RNR never happens, an SRQ per core measured the same throughput,
//!   receive CPU and memory (its repost saving is about 1 % of a message's receive cost).
//!   Its real gain, a pool smaller than the credits granted, would trade that guarantee for
//!   credits shared among peers and reclaimed from idle ones. Per-QP queues keep credits
//!   exact per connection with no cross-connection coordination; the cost is 16 × 16 KiB =
//!   256 KiB of receive buffers per QP.
//! - **Setup** over a TCP side channel on the owning core (the runtime's io_uring
//!   `TcpStream`): a versioned, length-checked exchange ([`setup`]) of QPN, PSN, GID, LID, port
//!   MTU, receive credits and buffer size, then a ready byte each way; bounded by the connect
//!   timeout. The side channel stays open: EOF on it means the peer closed or died.
//! - **Data path:** small messages go by SEND WITH IMM, copied from the user's `Bytes` into
//!   registered 16 KiB send chunks (inline, without a chunk, up to `max_inline_data`),
//!   selective signaling; receives land in registered buffers and `recv` copies them out.
//!   **Large payloads are zero-copy** ([`zerocopy`], [`pool`]): `Endpoint::alloc` hands out
//!   buffers in the core's registered pool, and a queued `Bytes` that lies in it goes by RDMA
//!   WRITE WITH IMM straight into a receive slab the peer advertised, which `recv` hands up as
//!   it is: a 4 MiB payload from `alloc` is copied on neither side. Credit-based flow control
//!   (receive credits for SENDs, advertised slabs for WRITEs), see [`conn`] and [`zerocopy`].
//!   The pool's size per core is [`RdmaPoolConfig`] ([`set_pool_config`]); each connection
//!   reserves up to `EndpointConfig::receive_slabs` of the core's receive slabs, and one that
//!   finds none left has its peer's large payloads copied instead. Every slab is its own
//!   memory region whose rkey only its connection's peer learns, re-registered when the slab
//!   changes hands, so a peer can write only into its own connection's slabs.
//! - **Dispatch** ([`Dispatch`], default `sharded`): the above. `central`, for comparison
//!   only, moves CQ polling to one dispatcher thread for the whole process, as Ceph's
//!   `RDMADispatcher` ([`central`]); chosen with [`set_dispatch`] or `CW_RDMA_DISPATCH`.
//! - **Hand-off** between cores re-creates the QP on the target core and reconnects both
//!   ends over the side channel (MOVE / MOVED / READY), with a loss check that turns any
//!   message sent on the old QP and not received into a `Reset` on both sides; see
//!   [`handoff`].

mod budget;
mod central;
mod conn;
mod core;
mod dispatch;
mod endpoint;
mod handoff;
mod hugemem;
mod pool;
mod pump;
mod setup;
mod stack;
pub mod verbs;
mod zerocopy;

pub use budget::{
    pool_config, set_pool_config, RdmaPoolConfig, MAX_RX_SLABS, MAX_TX_CHUNKS, SLAB_BYTES,
    TX_CHUNK_BYTES,
};
pub use central::DISPATCHER_THREAD;
pub use dispatch::{dispatch, set_dispatch, Dispatch};
pub use endpoint::RdmaEndpoint;
pub use handoff::RdmaTransfer;
pub use hugemem::PoolBacking;
#[doc(hidden)]
pub use pool::RdmaPoolInfo;
pub use stack::{RdmaListener, RdmaTransport};
#[doc(hidden)]
pub use zerocopy::RdmaZcStats;
