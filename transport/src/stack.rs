//! The stack interface every transport implements (Ceph's `NetworkStack`, per core and
//! shared-nothing).
//!
//! A [`Transport`] is instantiated on each core. Its listeners and endpoints live on the core
//! that created them (asserted in debug builds); their futures are `!Send`.
//!
//! # Endpoint semantics
//! An endpoint is an ordered, reliable byte stream in both directions, sent and received as
//! chunks of [`Bytes`]:
//! - [`Endpoint::send`] queues a scatter/gather list of buffers (sent back to back, in order)
//!   in the endpoint's bounded send queue and waits for room when it is full;
//!   [`Endpoint::try_send`] fails at once with [`TransportError::Full`] instead. Memory never
//!   grows without bound. Buffers from [`Endpoint::alloc`] may be registered memory (RDMA,
//!   shared memory), which makes the send zero-copy ([`crate::txbuf`]).
//! - [`Endpoint::recv`] returns the next chunk of the stream, as received (a pool buffer, not
//!   copied). Chunk boundaries are not message boundaries: framing is the user's (the
//!   messenger's msgr2 frames, or [`crate::framed`]).
//! - Errors are typed: [`TransportError::Reset`] (peer died, reset, corrupt shared state),
//!   [`TransportError::PeerClosed`] (orderly half-close by the peer), [`TransportError::Timeout`],
//!   each carrying the peer's address.
//!
//! # Hand-off between cores
//! The messenger shards connections by peer, so an endpoint accepted on one core may have to
//! live on another. [`Endpoint::into_transfer`] turns a quiescent endpoint (no send queued,
//! no receive in flight) into a `Send` [`Endpoint::Transfer`]; moving that to the target core
//! (e.g. inside `Handle::submit_to`) and calling [`Transfer::attach`] there gives an endpoint
//! owned by the target core. Bytes already received but not yet returned by `recv` travel
//! with it. An endpoint that is not quiescent is refused with
//! [`TransportError::WrongState`] and left usable.
//!
//! Per transport: TCP moves its socket; shared memory moves its mapping and wake-up fds; RDMA
//! cannot move a queue pair (it is bound to its core's completion queue), so it retires the
//! old one in `into_transfer` and `attach` re-creates it on the target core and reconnects
//! both ends over the TCP side channel, with a loss check: a message the peer sent on the old
//! queue pair after the move began is never silently lost, both sides get a
//! [`TransportError::Reset`] naming it. The peer should therefore be quiet during a move (as
//! the messenger's client is while it waits for the server's reply to CLIENT_IDENT);
//! transport-internal credit returns are exempt.
//!
//! [`TransportError::Full`]: crate::TransportError::Full
//! [`TransportError::Reset`]: crate::TransportError::Reset
//! [`TransportError::PeerClosed`]: crate::TransportError::PeerClosed
//! [`TransportError::Timeout`]: crate::TransportError::Timeout
//! [`TransportError::WrongState`]: crate::TransportError::WrongState

use std::future::Future;

use bytes::{Bytes, BytesMut};

use crate::addr::{Address, TransportKind};
use crate::error::Result;
use crate::txbuf::TxBuf;

/// A per-core transport stack.
pub trait Transport: 'static {
    /// Its listener type.
    type Listener: Listener<Endpoint = Self::Endpoint>;
    /// Its endpoint type.
    type Endpoint: Endpoint;

    /// Which transport this is.
    fn kind(&self) -> TransportKind;
    /// Listen on `addr`.
    fn listen(&self, addr: &Address) -> impl Future<Output = Result<Self::Listener>>;
    /// Connect to `addr`.
    fn connect(&self, addr: &Address) -> impl Future<Output = Result<Self::Endpoint>>;
}

/// A listening endpoint.
pub trait Listener {
    /// The endpoint type it accepts.
    type Endpoint: Endpoint;
    /// Accept the next connection.
    fn accept(&self) -> impl Future<Output = Result<Self::Endpoint>>;
    /// The address peers connect to (with the real port when bound to port 0).
    fn local_addr(&self) -> Address;
}

/// A connected endpoint: see the module docs.
pub trait Endpoint: Sized {
    /// A `Send` form of a quiescent endpoint, for moving it to another core.
    type Transfer: Transfer<Endpoint = Self> + Send + 'static;

    /// Queue `bufs` for sending, waiting for room in the bounded send queue.
    fn send(&self, bufs: Vec<Bytes>) -> impl Future<Output = Result<()>>;
    /// Queue `bufs` only if there is room now; otherwise `Full`, and the buffers come back.
    fn try_send(
        &self,
        bufs: Vec<Bytes>,
    ) -> std::result::Result<(), (crate::TransportError, Vec<Bytes>)>;
    /// Wait until everything queued so far has been handed to the kernel or the NIC.
    fn flush(&self) -> impl Future<Output = Result<()>>;
    /// The next chunk of the incoming stream.
    fn recv(&self) -> impl Future<Output = Result<Bytes>>;
    /// Whether [`Endpoint::recv_into`] reads into the caller's buffer itself (TCP), so a
    /// caller gains by handing it one for a large read. Where it only appends the transport's
    /// own chunks (shm, rdma: a large payload may already arrive as one chunk of registered
    /// memory, zero-copy), a caller should keep to [`Endpoint::recv`]. Default: false.
    fn reads_in_place(&self) -> bool {
        false
    }
    /// The incoming stream appended to `buf` until it holds at least `fill_to` bytes, as one
    /// chunk: for a large frame segment, which then needs no assembling from chunks. The
    /// default appends [`Endpoint::recv`]'s chunks (a copy each, and possibly bytes past
    /// `fill_to`); a transport that can read into `buf` itself does so, and then reads no
    /// further than `buf`'s capacity. Not cancel-safe: dropped mid-way, the bytes taken so far
    /// are gone, so a caller must then give up on the stream (the messenger fails the
    /// session, and a lossless session replays).
    fn recv_into(&self, mut buf: BytesMut, fill_to: usize) -> impl Future<Output = Result<Bytes>> {
        async move {
            while buf.len() < fill_to {
                let chunk = self.recv().await?;
                buf.extend_from_slice(&chunk);
            }
            Ok(buf.freeze())
        }
    }
    /// Flush, then close the sending side (the peer's `recv` then reports `PeerClosed`).
    fn shutdown(&self) -> impl Future<Output = Result<()>>;
    /// Close at once, dropping anything queued; the peer sees a reset or end of stream.
    fn abort(&self);
    /// A `len`-byte buffer for a zero-copy send ([`TxBuf`]: memory the peer can read directly
    /// where the transport has it and room is free; a zeroed heap buffer otherwise, which a
    /// send then copies).
    fn alloc(&self, len: usize) -> TxBuf {
        TxBuf::heap(len)
    }
    /// The peer's address.
    fn peer_addr(&self) -> &Address;
    /// The local address.
    fn local_addr(&self) -> &Address;
    /// Bytes currently queued for sending.
    fn queued_bytes(&self) -> usize;
    /// Detach a quiescent endpoint for a move to another core.
    fn into_transfer(self) -> std::result::Result<Self::Transfer, (crate::TransportError, Self)>;
}

/// A detached endpoint; see [`Endpoint::into_transfer`].
pub trait Transfer {
    /// The endpoint type it re-creates.
    type Endpoint;
    /// Re-create the endpoint on the current core.
    fn attach(self) -> Result<Self::Endpoint>;
}

/// Limits every endpoint applies. Fields document their defaults.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Most bytes queued for sending before `send` waits. Default: 4 MiB + 64 KiB (one
    /// 4 MiB message always fits).
    pub send_queue_bytes: usize,
    /// Most buffers queued for sending before `send` waits. Default: 4096.
    pub send_queue_bufs: usize,
    /// Size of the receive pool buffers reads land in. Default: 64 KiB.
    pub recv_buf_size: usize,
    /// Connect timeout. Default: 10 s.
    pub connect_timeout: std::time::Duration,
    /// RDMA: most receive slabs (1 MiB each) this connection reserves from its core's budget
    /// (`rdma::RdmaPoolConfig::rx_slabs`) and advertises, so the peer can send large
    /// `Endpoint::alloc` buffers by RDMA WRITE straight into them. Default: 8 (two 4 MiB
    /// payloads in flight). It gets fewer, down to none (its peer's payloads are then
    /// copied), when the core's budget runs low. 0 turns receive zero-copy off: a user whose
    /// peer never sends from `alloc` (the messenger) keeps the budget for those that do.
    /// Other stacks ignore it.
    pub receive_slabs: u32,
    /// RDMA: when a busy queue pair defers posting to merge queued bytes into fewer, fuller
    /// SENDs ([`crate::merge_send`]). Default: [`MergeSend::default`] (from 8 requests in
    /// flight, batches of 8 to 64 KiB); [`MergeSend::OFF`] posts at every turn. Other stacks
    /// ignore it.
    ///
    /// [`MergeSend::default`]: crate::MergeSend::default
    /// [`MergeSend::OFF`]: crate::MergeSend::OFF
    pub merge_send: crate::MergeSend,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            send_queue_bytes: (4 << 20) + (64 << 10),
            send_queue_bufs: 4096,
            recv_buf_size: 64 << 10,
            connect_timeout: std::time::Duration::from_secs(10),
            receive_slabs: 8,
            merge_send: crate::MergeSend::default(),
        }
    }
}
