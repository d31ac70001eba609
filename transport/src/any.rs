//! Type-erased stacks: [`AnyTransport`], [`AnyListener`], [`AnyEndpoint`], picked by address
//! (Ceph's `ms_type`). The messenger uses these so one messenger serves every transport.

use bytes::{Bytes, BytesMut};

use crate::addr::{Address, TransportKind};
use crate::error::{Result, TransportError};
#[cfg(feature = "rdma")]
use crate::rdma::{RdmaEndpoint, RdmaListener, RdmaTransfer, RdmaTransport};
use crate::shm::{ShmEndpoint, ShmListener, ShmTransfer, ShmTransport};
use crate::stack::{Endpoint, EndpointConfig, Listener, Transfer, Transport};
use crate::tcp::{TcpEndpoint, TcpListener, TcpTransfer, TcpTransport};

/// One of the transport stacks.
#[derive(Debug, Clone)]
pub enum AnyTransport {
    Tcp(TcpTransport),
    Shm(ShmTransport),
    #[cfg(feature = "rdma")]
    Rdma(RdmaTransport),
}

impl AnyTransport {
    /// The stack serving `kind`, with endpoint limits `cfg`.
    pub fn for_kind(kind: TransportKind, cfg: EndpointConfig) -> Result<AnyTransport> {
        match kind {
            TransportKind::Tcp => Ok(AnyTransport::Tcp(TcpTransport::new(cfg))),
            TransportKind::Shm => Ok(AnyTransport::Shm(ShmTransport::new(cfg))),
            #[cfg(feature = "rdma")]
            TransportKind::Rdma => Ok(AnyTransport::Rdma(RdmaTransport::new(cfg))),
            #[cfg(not(feature = "rdma"))]
            TransportKind::Rdma => Err(TransportError::Unavailable {
                what: "the rdma stack needs the `rdma` cargo feature (corewire-transport/rdma)"
                    .into(),
            }),
        }
    }
}

/// Connect to `addr` with the matching stack and default limits.
pub async fn connect_any(addr: &Address) -> Result<AnyEndpoint> {
    AnyTransport::for_kind(addr.kind(), EndpointConfig::default())?
        .connect(addr)
        .await
}

/// A listener of any stack.
pub enum AnyListener {
    Tcp(TcpListener),
    Shm(ShmListener),
    #[cfg(feature = "rdma")]
    Rdma(RdmaListener),
}

/// An endpoint of any stack.
pub enum AnyEndpoint {
    Tcp(TcpEndpoint),
    Shm(ShmEndpoint),
    #[cfg(feature = "rdma")]
    Rdma(RdmaEndpoint),
}

/// A transfer of any stack.
pub enum AnyTransfer {
    Tcp(TcpTransfer),
    Shm(Box<ShmTransfer>),
    #[cfg(feature = "rdma")]
    Rdma(RdmaTransfer),
}

impl Transport for AnyTransport {
    type Listener = AnyListener;
    type Endpoint = AnyEndpoint;

    fn kind(&self) -> TransportKind {
        match self {
            AnyTransport::Tcp(t) => t.kind(),
            AnyTransport::Shm(t) => t.kind(),
            #[cfg(feature = "rdma")]
            AnyTransport::Rdma(t) => t.kind(),
        }
    }
    async fn listen(&self, addr: &Address) -> Result<AnyListener> {
        match self {
            AnyTransport::Tcp(t) => t.listen(addr).await.map(AnyListener::Tcp),
            AnyTransport::Shm(t) => t.listen(addr).await.map(AnyListener::Shm),
            #[cfg(feature = "rdma")]
            AnyTransport::Rdma(t) => t.listen(addr).await.map(AnyListener::Rdma),
        }
    }
    async fn connect(&self, addr: &Address) -> Result<AnyEndpoint> {
        match self {
            AnyTransport::Tcp(t) => t.connect(addr).await.map(AnyEndpoint::Tcp),
            AnyTransport::Shm(t) => t.connect(addr).await.map(AnyEndpoint::Shm),
            #[cfg(feature = "rdma")]
            AnyTransport::Rdma(t) => t.connect(addr).await.map(AnyEndpoint::Rdma),
        }
    }
}

impl Listener for AnyListener {
    type Endpoint = AnyEndpoint;
    async fn accept(&self) -> Result<AnyEndpoint> {
        match self {
            AnyListener::Tcp(l) => l.accept().await.map(AnyEndpoint::Tcp),
            AnyListener::Shm(l) => l.accept().await.map(AnyEndpoint::Shm),
            #[cfg(feature = "rdma")]
            AnyListener::Rdma(l) => l.accept().await.map(AnyEndpoint::Rdma),
        }
    }
    fn local_addr(&self) -> Address {
        match self {
            AnyListener::Tcp(l) => l.local_addr(),
            AnyListener::Shm(l) => l.local_addr(),
            #[cfg(feature = "rdma")]
            AnyListener::Rdma(l) => l.local_addr(),
        }
    }
}

macro_rules! each {
    ($self:expr, $e:ident => $body:expr) => {
        match $self {
            AnyEndpoint::Tcp($e) => $body,
            AnyEndpoint::Shm($e) => $body,
            #[cfg(feature = "rdma")]
            AnyEndpoint::Rdma($e) => $body,
        }
    };
}

impl Endpoint for AnyEndpoint {
    type Transfer = AnyTransfer;

    async fn send(&self, bufs: Vec<Bytes>) -> Result<()> {
        each!(self, e => e.send(bufs).await)
    }
    fn try_send(&self, bufs: Vec<Bytes>) -> std::result::Result<(), (TransportError, Vec<Bytes>)> {
        each!(self, e => e.try_send(bufs))
    }
    async fn flush(&self) -> Result<()> {
        each!(self, e => e.flush().await)
    }
    async fn recv(&self) -> Result<Bytes> {
        each!(self, e => e.recv().await)
    }
    fn reads_in_place(&self) -> bool {
        each!(self, e => e.reads_in_place())
    }
    async fn recv_into(&self, buf: BytesMut, fill_to: usize) -> Result<Bytes> {
        each!(self, e => e.recv_into(buf, fill_to).await)
    }
    async fn shutdown(&self) -> Result<()> {
        each!(self, e => e.shutdown().await)
    }
    fn abort(&self) {
        each!(self, e => e.abort())
    }
    fn alloc(&self, len: usize) -> crate::TxBuf {
        each!(self, e => e.alloc(len))
    }
    fn peer_addr(&self) -> &Address {
        each!(self, e => e.peer_addr())
    }
    fn local_addr(&self) -> &Address {
        each!(self, e => e.local_addr())
    }
    fn queued_bytes(&self) -> usize {
        each!(self, e => e.queued_bytes())
    }
    fn into_transfer(self) -> std::result::Result<AnyTransfer, (TransportError, Self)> {
        match self {
            AnyEndpoint::Tcp(e) => e
                .into_transfer()
                .map(AnyTransfer::Tcp)
                .map_err(|(err, e)| (err, AnyEndpoint::Tcp(e))),
            AnyEndpoint::Shm(e) => e
                .into_transfer()
                .map(|t| AnyTransfer::Shm(Box::new(t)))
                .map_err(|(err, e)| (err, AnyEndpoint::Shm(e))),
            #[cfg(feature = "rdma")]
            AnyEndpoint::Rdma(e) => e
                .into_transfer()
                .map(AnyTransfer::Rdma)
                .map_err(|(err, e)| (err, AnyEndpoint::Rdma(e))),
        }
    }
}

impl Transfer for AnyTransfer {
    type Endpoint = AnyEndpoint;
    fn attach(self) -> Result<AnyEndpoint> {
        match self {
            AnyTransfer::Tcp(t) => t.attach().map(AnyEndpoint::Tcp),
            AnyTransfer::Shm(t) => t.attach().map(AnyEndpoint::Shm),
            #[cfg(feature = "rdma")]
            AnyTransfer::Rdma(t) => t.attach().map(AnyEndpoint::Rdma),
        }
    }
}
