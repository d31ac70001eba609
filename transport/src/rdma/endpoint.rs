//! [`RdmaEndpoint`]: the [`Endpoint`] over one RDMA connection ([`Conn`]).

use std::future::poll_fn;
use std::net::Shutdown;
use std::rc::Rc;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use corewire_runtime::debug_assert_on_core;

use crate::addr::Address;
use crate::error::{Result, TransportError};
use crate::rdma::conn::{Conn, Dead, RECV_MERGE};
use crate::rdma::core::CoreRdma;
use crate::rdma::handoff::RdmaTransfer;
use crate::rdma::pool::RdmaPoolInfo;
use crate::rdma::zerocopy::{RdmaZcStats, Ready};
use crate::stack::Endpoint;
use crate::txbuf::TxBuf;

/// An RDMA connection owned by one core. Dropping it aborts the connection.
pub struct RdmaEndpoint {
    pub(crate) conn: Rc<Conn>,
    pub(crate) core: Rc<CoreRdma>,
}

impl RdmaEndpoint {
    fn check(&self) -> Result<()> {
        debug_assert_on_core(self.conn.core_id);
        match self.conn.error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn closed_err(&self) -> TransportError {
        self.conn.error().unwrap_or(TransportError::Closed {
            peer: self.conn.peer.clone(),
        })
    }

    /// The next chunk of the stream: a written slab as it is (zero-copy), or the received
    /// messages in front of the next slab copied out (up to [`RECV_MERGE`] bytes) with their
    /// buffers reposted.
    fn take_ready(&self) -> Option<Result<Bytes>> {
        let c = &self.conn;
        if let Some(b) = c.carried.borrow_mut().pop_front() {
            return Some(Ok(b));
        }
        let front = c.ready.borrow().front().copied();
        if let Some(Ready::Large(s, len)) = front {
            c.ready.borrow_mut().pop_front();
            let Some(pool) = self.core.zc.as_ref() else {
                // Unreachable: slabs are only advertised from a pool.
                c.fail(Dead::Reset("rdma: written slab without a pool".into()));
                return Some(Err(self.closed_err()));
            };
            // SAFETY: the WRITE into slab `s` completed (its completion was polled, which
            // queued it in `ready`); the slab is re-advertised only when the returned `Bytes`
            // are all dropped (their keep returns it), and `on_write` checked `len <= SLAB`.
            let b = unsafe { pool.rx_bytes(s, len as usize) };
            c.zc.count(|st| st.recv_zero_copy_bytes += u64::from(len));
            return Some(Ok(b));
        }
        let mut out = BytesMut::new();
        let idxs = c.copy_ready(&mut out, RECV_MERGE);
        if idxs.is_empty() {
            return None;
        }
        let had_qp = c.qp.borrow().is_some();
        if let Err(e) = c.post_recvs(&idxs) {
            c.fail(Dead::Reset(e.to_string()));
        } else if had_qp {
            c.owe(&self.core, idxs.len() as u32);
        }
        Some(Ok(out.freeze()))
    }
}

impl Endpoint for RdmaEndpoint {
    type Transfer = RdmaTransfer;

    async fn send(&self, bufs: Vec<Bytes>) -> Result<()> {
        self.check()?;
        match self.conn.sendq.push(bufs).await {
            Ok(()) => {
                self.core.mark_dirty(&self.conn);
                Ok(())
            }
            Err(_) => Err(self.closed_err()),
        }
    }

    fn try_send(&self, bufs: Vec<Bytes>) -> std::result::Result<(), (TransportError, Vec<Bytes>)> {
        if let Err(e) = self.check() {
            return Err((e, bufs));
        }
        let q = &self.conn.sendq;
        match q.try_push(bufs) {
            Ok(()) => {
                self.core.mark_dirty(&self.conn);
                Ok(())
            }
            Err(bufs) => {
                let e = self.conn.error().unwrap_or(TransportError::Full {
                    peer: self.conn.peer.clone(),
                    queued_bytes: q.bytes(),
                    queued_bufs: q.len(),
                });
                Err((e, bufs))
            }
        }
    }

    async fn flush(&self) -> Result<()> {
        self.check()?;
        if self.conn.sendq.flushed().await {
            Ok(())
        } else {
            Err(self.closed_err())
        }
    }

    async fn recv(&self) -> Result<Bytes> {
        debug_assert_on_core(self.conn.core_id);
        let c = &self.conn;
        poll_fn(|cx| {
            if matches!(*c.dead.borrow(), Some(Dead::Closed)) {
                return Poll::Ready(Err(self.closed_err()));
            }
            if let Some(r) = self.take_ready() {
                return Poll::Ready(r);
            }
            if c.eof.get() {
                return Poll::Ready(Err(TransportError::PeerClosed {
                    peer: c.peer.clone(),
                }));
            }
            if let Some(e) = c.error() {
                return Poll::Ready(Err(e));
            }
            *c.rx_waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    async fn shutdown(&self) -> Result<()> {
        self.flush().await?;
        let c = &self.conn;
        c.eos_wanted.set(true);
        self.core.mark_dirty(c);
        // Wait until the end-of-stream message and everything before it were acknowledged.
        poll_fn(|cx| {
            if let Some(e) = c.error() {
                return Poll::Ready(Err(e));
            }
            if c.eos_posted.get() && c.inflight.borrow().is_empty() {
                return Poll::Ready(Ok(()));
            }
            c.sent_wakers.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    fn abort(&self) {
        self.conn.fail(Dead::Closed);
        let _ = self.conn.stream.shutdown(Shutdown::Both);
    }

    /// A buffer in the core's registered pool (zero-copy by RDMA WRITE when sent on this
    /// core), or on the heap: see [`crate::rdma::pool`] for the size classes and fallback.
    fn alloc(&self, len: usize) -> TxBuf {
        match &self.core.zc {
            Some(p) => p.alloc(&self.core, len),
            None => TxBuf::heap(len),
        }
    }

    fn peer_addr(&self) -> &Address {
        &self.conn.peer
    }

    fn local_addr(&self) -> &Address {
        &self.conn.local
    }

    fn queued_bytes(&self) -> usize {
        self.conn.sendq.bytes()
    }

    fn into_transfer(self) -> std::result::Result<RdmaTransfer, (TransportError, Self)> {
        crate::rdma::handoff::detach(self)
    }
}

impl RdmaEndpoint {
    /// Test hook, not API: moves the queue pair to ERR behind the connection's back, as a
    /// fatal adapter or link error would. The connection finds out as in that case: from its
    /// flushed work requests (and the peer from its unacknowledged sends).
    #[doc(hidden)]
    pub fn inject_qp_error(&self) -> Result<()> {
        match self.conn.qp.borrow().as_ref() {
            Some(qp) => qp.to_error(),
            None => Ok(()),
        }
    }
}

impl RdmaEndpoint {
    /// Test and benchmark hook, not API: the zero-copy counters of this endpoint (since it
    /// was created or attached).
    #[doc(hidden)]
    pub fn zc_stats(&self) -> RdmaZcStats {
        self.conn.zc.stats.get()
    }

    /// Test and benchmark hook, not API: where the zero-copy pool of this endpoint's core
    /// lives (None: the core has no pool and copies every payload).
    #[doc(hidden)]
    pub fn pool_info(&self) -> Option<RdmaPoolInfo> {
        self.core.zc.as_ref().map(|p| p.info())
    }

    /// Test hook, not API: queue pairs registered on this endpoint's core (live ones, and
    /// closed ones still draining).
    #[doc(hidden)]
    pub fn core_queue_pairs(&self) -> usize {
        self.core.queue_pairs()
    }

    /// Test hook, not API: the receive slabs this side holds for the connection (advertised
    /// to the peer or about to be; not those handed up to the user), as the peer sees them.
    #[doc(hidden)]
    pub fn zc_slabs(&self) -> Vec<crate::rdma::verbs::RemoteBuf> {
        self.conn.zc_slabs(&self.core)
    }
}

impl Drop for RdmaEndpoint {
    fn drop(&mut self) {
        self.conn.close(&self.core);
    }
}
