//! [`ShmEndpoint`]: the [`Endpoint`] of the shm stack, and its cross-core [`ShmTransfer`].
//!
//! Sends go into the endpoint's bounded [`crate::sendq::SendQueue`]; the core's shm poller
//! moves them into shared memory (see the private `shm::conn` module for the records and flow
//! control, `shm::poller` for wake-ups). `flush` completes when everything queued is in
//! shared memory (published to the peer). [`Endpoint::alloc`] returns a plain `BytesMut`:
//! user memory is never shared with the untrusted peer; the sender copies it once into the
//! ring or its buffer area and the receiver copies it once out.
//!
//! Dropping an endpoint aborts it: the socket is shut down (the peer sees a hang-up, hence
//! `Reset`, or `PeerClosed` if `shutdown` had completed) and the region is unmapped.
//!
//! # Hand-off
//! [`Endpoint::into_transfer`] requires that nothing is queued or being moved and no
//! end-of-stream is pending; otherwise [`TransportError::WrongState`] and the endpoint stays
//! usable. The transfer carries the mapping (ring ends with their private positions, area
//! allocator and reader state), a duplicate of the socket fd, received-but-unread buffers and
//! the stream state; [`Transfer::attach`] registers it with the target core's poller and
//! starts a new socket watcher there. Data the peer publishes meanwhile waits in the ring.

use std::future::poll_fn;
use std::os::fd::OwnedFd;

use bytes::Bytes;
use corewire_runtime::debug_assert_on_core;

use crate::addr::Address;
use crate::error::{Result, TransportError};
use crate::shm::conn::{Conn, ConnParts, TxState};
use crate::shm::poller;
use crate::stack::{Endpoint, Transfer};

/// A shared-memory endpoint (core-local, `!Send`).
pub struct ShmEndpoint {
    conn: std::rc::Rc<Conn>,
}

impl std::fmt::Debug for ShmEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmEndpoint")
            .field("peer", &self.conn.peer)
            .field("local", &self.conn.local)
            .field("core", &self.conn.core)
            .finish()
    }
}

impl ShmEndpoint {
    /// Builds the endpoint on the current core and starts its data path.
    pub(crate) fn start(parts: ConnParts) -> Result<ShmEndpoint> {
        let core = corewire_runtime::current_core()
            .ok_or(corewire_runtime::RuntimeError::NotOnCore("shm endpoint"))?;
        let live = parts.mapped.is_some();
        let conn = Conn::new(core, parts);
        if live {
            poller::activate(&conn)?;
        }
        Ok(ShmEndpoint { conn })
    }

    /// The core that owns this endpoint.
    pub fn core(&self) -> usize {
        self.conn.core
    }

    fn check(&self) {
        debug_assert_on_core(self.conn.core);
    }
}

impl Endpoint for ShmEndpoint {
    type Transfer = ShmTransfer;

    async fn send(&self, bufs: Vec<Bytes>) -> Result<()> {
        self.check();
        if !self.conn.can_send() {
            return Err(self.conn.send_error());
        }
        match self.conn.try_send_inline(&bufs) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(()) => return Err(self.conn.send_error()),
        }
        // Counted while queueing (and waiting for room), so no later send takes the fast path
        // ahead of it; the guard also uncounts a send whose future is dropped while waiting.
        struct Queued<'a>(&'a std::cell::Cell<usize>);
        impl Drop for Queued<'_> {
            fn drop(&mut self) {
                self.0.set(self.0.get() - 1);
            }
        }
        self.conn
            .queued_senders
            .set(self.conn.queued_senders.get() + 1);
        let queued = Queued(&self.conn.queued_senders);
        let r = self.conn.sendq.push(bufs).await;
        drop(queued);
        r.map_err(|_| self.conn.send_error())?;
        // Move the data into the ring now rather than at the poller's next turn.
        self.conn.pump_tx();
        Ok(())
    }

    fn try_send(&self, bufs: Vec<Bytes>) -> std::result::Result<(), (TransportError, Vec<Bytes>)> {
        self.check();
        if !self.conn.can_send() {
            return Err((self.conn.send_error(), bufs));
        }
        match self.conn.try_send_inline(&bufs) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(()) => return Err((self.conn.send_error(), bufs)),
        }
        let q = &self.conn.sendq;
        let r = q.try_push(bufs).map_err(|bufs| {
            let e = if q.is_closed() {
                self.conn.send_error()
            } else {
                TransportError::Full {
                    peer: self.conn.peer.clone(),
                    queued_bytes: q.bytes(),
                    queued_bufs: q.len(),
                }
            };
            (e, bufs)
        });
        if r.is_ok() {
            self.conn.pump_tx();
        }
        r
    }

    async fn flush(&self) -> Result<()> {
        self.check();
        if self.conn.sendq.flushed().await {
            Ok(())
        } else {
            Err(self.conn.send_error())
        }
    }

    async fn recv(&self) -> Result<Bytes> {
        self.check();
        poll_fn(|cx| self.conn.poll_recv(cx)).await
    }

    async fn shutdown(&self) -> Result<()> {
        self.check();
        match self.conn.tx_state() {
            TxState::EosSent => return Ok(()),
            TxState::EosWanted => {}
            TxState::Open => {
                if !self.conn.can_send() {
                    return Err(self.conn.send_error());
                }
                self.flush().await?;
                self.conn.request_eos();
                // No more sends; the queue is empty after the flush.
                self.conn.sendq.close();
            }
        }
        poll_fn(|cx| self.conn.poll_eos_sent(cx)).await
    }

    fn abort(&self) {
        self.check();
        poller::deactivate(self.conn.id);
        self.conn.abort();
    }

    fn alloc(&self, len: usize) -> crate::TxBuf {
        self.check();
        self.conn
            .alloc(len)
            .unwrap_or_else(|| crate::TxBuf::heap(len))
    }
    fn peer_addr(&self) -> &Address {
        &self.conn.peer
    }

    fn local_addr(&self) -> &Address {
        &self.conn.local
    }

    fn queued_bytes(&self) -> usize {
        self.check();
        self.conn.sendq.bytes()
    }

    fn into_transfer(self) -> std::result::Result<ShmTransfer, (TransportError, Self)> {
        self.check();
        let c = &self.conn;
        if c.is_closed() {
            return Err((
                TransportError::Closed {
                    peer: c.peer.clone(),
                },
                self,
            ));
        }
        if !c.sendq.is_empty() || c.sendq.is_inflight() || c.tx_state() == TxState::EosWanted {
            return Err((
                TransportError::WrongState {
                    peer: c.peer.clone(),
                    what: "sends are queued; flush before a hand-off",
                },
                self,
            ));
        }
        // A duplicate: the watcher's pending poll keeps using the old descriptor until it is
        // cancelled, so the original is closed only when the watcher is gone.
        let sock: OwnedFd = match c.sock.try_clone() {
            Ok(fd) => fd,
            Err(e) => {
                let e = TransportError::Io {
                    addr: c.peer.clone(),
                    op: "dup shm socket for hand-off",
                    source: e,
                };
                return Err((e, self));
            }
        };
        poller::deactivate(c.id);
        let parts = c.take_parts(sock);
        Ok(ShmTransfer { parts })
        // `self` drops here: the connection is already closed, so its Drop does nothing.
    }
}

impl Drop for ShmEndpoint {
    fn drop(&mut self) {
        poller::deactivate(self.conn.id);
        self.conn.abort();
    }
}

/// A detached [`ShmEndpoint`] on its way to another core.
pub struct ShmTransfer {
    parts: ConnParts,
}

impl std::fmt::Debug for ShmTransfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmTransfer")
            .field("peer", &self.parts.peer)
            .finish_non_exhaustive()
    }
}

// `ConnParts` holds owned fds, `Bytes`, addresses and a `Mapped` (which is `Send`).
const _: fn() = || {
    fn is_send<T: Send>() {}
    is_send::<ShmTransfer>();
};

impl Transfer for ShmTransfer {
    type Endpoint = ShmEndpoint;

    fn attach(self) -> Result<ShmEndpoint> {
        ShmEndpoint::start(self.parts)
    }
}
