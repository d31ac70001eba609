//! A TCP endpoint: bounded send queue drained by a writer task, pooled receives.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use corewire_runtime::net::TcpStream;
use corewire_runtime::{current_core, debug_assert_on_core, spawn_local};

use crate::addr::Address;
use crate::error::{Result, TransportError};
use crate::sendq::SendQueue;
use crate::stack::{Endpoint, EndpointConfig, Transfer};

/// Most buffers in one `sendmsg` (Linux `IOV_MAX`).
const MAX_IOV: usize = 1024;

/// Why the endpoint stopped working (kept to answer later calls).
#[derive(Debug, Clone)]
enum Dead {
    Reset(String),
    Closed,
}

struct Inner {
    core: usize,
    stream: TcpStream,
    peer: Address,
    local: Address,
    cfg: EndpointConfig,
    sendq: SendQueue,
    dead: RefCell<Option<Dead>>,
    /// The peer closed its side (end of stream seen).
    eof: Cell<bool>,
    /// Received chunks not yet returned (carried over by a hand-off).
    pending: RefCell<VecDeque<Bytes>>,
    /// The receive pool buffer (filled part is split off on each read).
    rx_buf: RefCell<BytesMut>,
    recv_busy: Cell<bool>,
    /// The read in flight. It lives here, not in the `recv` future, so a `recv` that is
    /// dropped (e.g. by a timeout) leaves the read running and the next `recv` gets its data:
    /// `recv` is cancel-safe.
    rx_op: RefCell<Option<ReadOp>>,
    /// Given away by `into_transfer`: close our fd only, never shut the connection down.
    transferred: Cell<bool>,
}

impl Inner {
    fn error(&self) -> Option<TransportError> {
        self.dead.borrow().as_ref().map(|d| match d {
            Dead::Reset(reason) => TransportError::Reset {
                peer: self.peer.clone(),
                reason: reason.clone(),
            },
            Dead::Closed => TransportError::Closed {
                peer: self.peer.clone(),
            },
        })
    }

    fn fail(&self, e: &TransportError) {
        if self.dead.borrow().is_none() {
            *self.dead.borrow_mut() = Some(match e {
                TransportError::Closed { .. } => Dead::Closed,
                other => Dead::Reset(other.to_string()),
            });
        }
        self.sendq.close();
    }

    fn kill(&self) {
        self.kill_with(&TransportError::Closed {
            peer: self.peer.clone(),
        });
    }

    fn kill_with(&self, e: &TransportError) {
        self.fail(e);
        if !self.transferred.get() {
            // Completes any in-flight send/recv on this socket with an error or EOF.
            let _ = self.stream.shutdown(Shutdown::Both);
        }
    }

    /// A finished read's bytes, or what to report instead: the local abort that ended it
    /// (our own shutdown shows up as an error or EOF), the end of the stream, or a socket
    /// error, which fails the endpoint.
    fn read_done(&self, r: io::Result<usize>) -> Result<usize> {
        if let Some(e) = self.error() {
            return Err(e);
        }
        match r {
            Ok(0) => {
                self.eof.set(true);
                Err(TransportError::PeerClosed {
                    peer: self.peer.clone(),
                })
            }
            Ok(n) => Ok(n),
            Err(e) => {
                let e = TransportError::from_io(&self.peer, "recv", e);
                self.fail(&e);
                Err(e)
            }
        }
    }
}

type ReadOp = Pin<Box<dyn Future<Output = (io::Result<usize>, BytesMut)>>>;

/// A TCP connection owned by one core. Dropping it aborts the connection.
pub struct TcpEndpoint {
    inner: Rc<Inner>,
}

async fn writer(inner: Rc<Inner>) {
    loop {
        inner.sendq.wait_for_data().await;
        if inner.sendq.is_closed() {
            return;
        }
        let batch = inner.sendq.take_batch(MAX_IOV);
        let (r, _bufs) = inner.stream.writev_all(batch).await;
        if let Err(e) = r {
            let e = TransportError::from_io(&inner.peer, "send", e);
            tracing::debug!(peer = %inner.peer, error = %e, "tcp send failed");
            inner.fail(&e);
        }
        inner.sendq.batch_done();
    }
}

impl TcpEndpoint {
    pub(crate) fn new(
        stream: TcpStream,
        peer: Address,
        cfg: EndpointConfig,
    ) -> Result<TcpEndpoint> {
        Self::with_state(stream, peer, cfg, VecDeque::new(), BytesMut::new())
    }

    fn with_state(
        stream: TcpStream,
        peer: Address,
        cfg: EndpointConfig,
        pending: VecDeque<Bytes>,
        rx_buf: BytesMut,
    ) -> Result<TcpEndpoint> {
        let core = current_core().ok_or(corewire_runtime::RuntimeError::NotOnCore(
            "TcpEndpoint::new",
        ))?;
        stream
            .set_nodelay(true)
            .map_err(|e| TransportError::from_io(&peer, "set TCP_NODELAY", e))?;
        let local = stream
            .local_addr()
            .map(Address::Tcp)
            .map_err(|e| TransportError::from_io(&peer, "getsockname", e))?;
        let inner = Rc::new(Inner {
            core,
            stream,
            sendq: SendQueue::new(&cfg),
            peer,
            local,
            cfg,
            dead: RefCell::new(None),
            eof: Cell::new(false),
            pending: RefCell::new(pending),
            rx_buf: RefCell::new(rx_buf),
            recv_busy: Cell::new(false),
            rx_op: RefCell::new(None),
            transferred: Cell::new(false),
        });
        spawn_local(writer(inner.clone())).detach();
        Ok(TcpEndpoint { inner })
    }

    /// A receive may start: the endpoint works, the stream has not ended and no other
    /// receive runs (until the guard drops).
    fn begin_recv(&self) -> Result<RecvGuard<'_>> {
        self.check()?;
        let inner = &self.inner;
        if inner.eof.get() {
            return Err(TransportError::PeerClosed {
                peer: inner.peer.clone(),
            });
        }
        if inner.recv_busy.replace(true) {
            return Err(TransportError::WrongState {
                peer: inner.peer.clone(),
                what: "recv already in progress",
            });
        }
        Ok(RecvGuard(&inner.recv_busy))
    }

    fn check(&self) -> Result<()> {
        debug_assert_on_core(self.inner.core);
        match self.inner.error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Clears `recv_busy` however `recv` ends (completion or cancellation).
struct RecvGuard<'a>(&'a Cell<bool>);
impl Drop for RecvGuard<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// Fails the endpoint when dropped: armed while a read into a caller's buffer is in flight.
struct DropFails<'a>(&'a Inner);
impl Drop for DropFails<'_> {
    fn drop(&mut self) {
        self.0.kill_with(&TransportError::Reset {
            peer: self.0.peer.clone(),
            reason: "a receive into a frame's buffer was dropped mid-way".into(),
        });
    }
}

impl Endpoint for TcpEndpoint {
    type Transfer = TcpTransfer;

    async fn send(&self, bufs: Vec<Bytes>) -> Result<()> {
        self.check()?;
        match self.inner.sendq.push(bufs).await {
            Ok(()) => Ok(()),
            Err(_) => Err(self.inner.error().unwrap_or(TransportError::Closed {
                peer: self.inner.peer.clone(),
            })),
        }
    }

    fn try_send(&self, bufs: Vec<Bytes>) -> std::result::Result<(), (TransportError, Vec<Bytes>)> {
        if let Err(e) = self.check() {
            return Err((e, bufs));
        }
        let q = &self.inner.sendq;
        q.try_push(bufs).map_err(|bufs| {
            let e = self.inner.error().unwrap_or(TransportError::Full {
                peer: self.inner.peer.clone(),
                queued_bytes: q.bytes(),
                queued_bufs: q.len(),
            });
            (e, bufs)
        })
    }

    async fn flush(&self) -> Result<()> {
        self.check()?;
        if self.inner.sendq.flushed().await {
            Ok(())
        } else {
            Err(self.inner.error().unwrap_or(TransportError::Closed {
                peer: self.inner.peer.clone(),
            }))
        }
    }

    async fn recv(&self) -> Result<Bytes> {
        debug_assert_on_core(self.inner.core);
        let inner = &self.inner;
        if let Some(b) = inner.pending.borrow_mut().pop_front() {
            return Ok(b);
        }
        let _guard = self.begin_recv()?;
        if inner.rx_op.borrow().is_none() {
            let mut buf = std::mem::take(&mut *inner.rx_buf.borrow_mut());
            let min_room = (inner.cfg.recv_buf_size / 16).max(512);
            if buf.capacity() - buf.len() < min_room {
                buf = BytesMut::with_capacity(inner.cfg.recv_buf_size.max(min_room));
            }
            let me = self.inner.clone();
            *inner.rx_op.borrow_mut() = Some(Box::pin(async move { me.stream.read(buf).await }));
        }
        let (r, mut buf) = poll_fn(|cx| {
            let mut slot = inner.rx_op.borrow_mut();
            let Some(op) = slot.as_mut() else {
                return Poll::Ready((Err(io::ErrorKind::NotConnected.into()), BytesMut::new()));
            };
            match op.as_mut().poll(cx) {
                Poll::Ready(v) => {
                    *slot = None;
                    Poll::Ready(v)
                }
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        inner.read_done(r)?;
        let chunk = buf.split().freeze();
        *inner.rx_buf.borrow_mut() = buf;
        Ok(chunk)
    }

    fn reads_in_place(&self) -> bool {
        true
    }

    /// Reads straight into `buf` (no chunk to copy from), after whatever an earlier receive
    /// left behind (a hand-off's chunks, a read still in flight).
    async fn recv_into(&self, mut buf: BytesMut, fill_to: usize) -> Result<Bytes> {
        debug_assert_on_core(self.inner.core);
        let inner = &self.inner;
        while buf.len() < fill_to
            && (!inner.pending.borrow().is_empty() || inner.rx_op.borrow().is_some())
        {
            let chunk = self.recv().await?;
            buf.extend_from_slice(&chunk);
        }
        if buf.len() >= fill_to {
            return Ok(buf.freeze());
        }
        let _guard = self.begin_recv()?;
        buf.reserve(fill_to - buf.len());
        // Bytes read into `buf` exist nowhere else: dropped before the end, the stream has a
        // hole, so the endpoint is failed rather than read on.
        let unfinished = DropFails(inner);
        let r = loop {
            if buf.len() >= fill_to {
                break Ok(());
            }
            let (r, b) = inner.stream.read(buf).await;
            buf = b;
            if let Err(e) = inner.read_done(r) {
                break Err(e);
            }
        };
        // Finished, one way or the other: only a drop mid-read fails the endpoint.
        std::mem::forget(unfinished);
        r?;
        Ok(buf.freeze())
    }

    async fn shutdown(&self) -> Result<()> {
        self.flush().await?;
        self.inner
            .stream
            .shutdown(Shutdown::Write)
            .map_err(|e| TransportError::from_io(&self.inner.peer, "shutdown", e))
    }

    fn abort(&self) {
        self.inner.kill();
    }

    fn peer_addr(&self) -> &Address {
        &self.inner.peer
    }

    fn local_addr(&self) -> &Address {
        &self.inner.local
    }

    fn queued_bytes(&self) -> usize {
        self.inner.sendq.bytes()
    }

    fn into_transfer(self) -> std::result::Result<TcpTransfer, (TransportError, Self)> {
        debug_assert_on_core(self.inner.core);
        let inner = &self.inner;
        let busy = !inner.sendq.is_empty()
            || inner.sendq.is_inflight()
            || inner.recv_busy.get()
            || inner.rx_op.borrow().is_some();
        if busy || inner.error().is_some() {
            let e = inner.error().unwrap_or(TransportError::WrongState {
                peer: inner.peer.clone(),
                what: "cannot move an endpoint with a send queued or a receive in flight",
            });
            return Err((e, self));
        }
        let fd = match inner.stream.try_clone_std() {
            Ok(fd) => fd,
            Err(e) => {
                let e = TransportError::from_io(&inner.peer, "dup", e);
                return Err((e, self));
            }
        };
        inner.transferred.set(true);
        inner.sendq.close(); // the writer exits; our copy of the fd closes with Inner
        Ok(TcpTransfer {
            stream: fd,
            peer: inner.peer.clone(),
            cfg: inner.cfg.clone(),
            pending: std::mem::take(&mut *inner.pending.borrow_mut()),
            rx_buf: std::mem::take(&mut *inner.rx_buf.borrow_mut()),
        })
    }
}

impl Drop for TcpEndpoint {
    fn drop(&mut self) {
        self.inner.kill();
        // The stored read holds an Rc to `inner`: drop it to break the cycle (its io_uring op
        // is cancelled and its buffer kept until the kernel lets go).
        self.inner.rx_op.borrow_mut().take();
    }
}

/// A TCP endpoint in transit between cores.
pub struct TcpTransfer {
    stream: std::net::TcpStream,
    peer: Address,
    cfg: EndpointConfig,
    pending: VecDeque<Bytes>,
    rx_buf: BytesMut,
}

impl Transfer for TcpTransfer {
    type Endpoint = TcpEndpoint;

    fn attach(self) -> Result<TcpEndpoint> {
        let s = TcpStream::from_std(self.stream)
            .map_err(|e| TransportError::from_io(&self.peer, "adopt socket", e))?;
        TcpEndpoint::with_state(s, self.peer, self.cfg, self.pending, self.rx_buf)
    }
}
