//! The TCP stack ("async+posix"): kernel sockets through the core's io_uring.
//!
//! - Connections use `TCP_NODELAY`.
//! - Each endpoint has a writer task that takes everything queued in its send queue and sends
//!   it with one vectored `sendmsg`, so many small queued messages leave in one system call.
//! - Receives land in carved pool buffers: a 64 KiB (configurable) buffer is read into, the
//!   filled part is split off and handed up as `Bytes` without a copy, and the rest of the
//!   buffer serves the next read.
//! - Listeners may use `SO_REUSEPORT` (one per core on the same port, the kernel spreading
//!   connections by 4-tuple), or one listener whose accepted endpoints the messenger hands to
//!   their owning core once the peer has identified itself (see `Endpoint::into_transfer`).

mod endpoint;

pub use endpoint::{TcpEndpoint, TcpTransfer};

use corewire_runtime::net::{ListenOptions, TcpListener as RawListener, TcpStream};
use corewire_runtime::timer;

use crate::addr::{Address, TransportKind};
use crate::error::{Result, TransportError};
use crate::stack::{EndpointConfig, Listener, Transport};

/// The per-core TCP stack.
#[derive(Debug, Clone, Default)]
pub struct TcpTransport {
    cfg: EndpointConfig,
    reuse_port: bool,
}

impl TcpTransport {
    /// A TCP stack with these endpoint limits.
    pub fn new(cfg: EndpointConfig) -> TcpTransport {
        TcpTransport {
            cfg,
            reuse_port: false,
        }
    }

    /// Bind listeners with `SO_REUSEPORT` (one listener per core on one port).
    pub fn with_reuse_port(mut self, on: bool) -> TcpTransport {
        self.reuse_port = on;
        self
    }

    fn sockaddr(addr: &Address) -> Result<std::net::SocketAddr> {
        match addr {
            Address::Tcp(sa) => Ok(*sa),
            other => Err(TransportError::WrongTransport {
                addr: other.clone(),
                stack: "tcp",
            }),
        }
    }
}

impl Transport for TcpTransport {
    type Listener = TcpListener;
    type Endpoint = TcpEndpoint;

    fn kind(&self) -> TransportKind {
        TransportKind::Tcp
    }

    async fn listen(&self, addr: &Address) -> Result<TcpListener> {
        let sa = Self::sockaddr(addr)?;
        let opts = ListenOptions {
            reuse_port: self.reuse_port,
            ..ListenOptions::default()
        };
        let l = RawListener::bind_with(sa, &opts).map_err(|source| TransportError::Io {
            addr: addr.clone(),
            op: "listen",
            source,
        })?;
        Ok(TcpListener {
            local: Address::Tcp(l.local_addr()),
            inner: l,
            cfg: self.cfg.clone(),
        })
    }

    async fn connect(&self, addr: &Address) -> Result<TcpEndpoint> {
        let sa = Self::sockaddr(addr)?;
        let limit = self.cfg.connect_timeout;
        let s = match timer::timeout(limit, TcpStream::connect(sa)).await {
            Err(_) => {
                return Err(TransportError::Timeout {
                    peer: addr.clone(),
                    op: "connect",
                    after_ms: limit.as_millis() as u64,
                })
            }
            Ok(r) => r.map_err(|e| TransportError::from_io(addr, "connect", e))?,
        };
        TcpEndpoint::new(s, addr.clone(), self.cfg.clone())
    }
}

/// A TCP listener on one core.
pub struct TcpListener {
    inner: RawListener,
    local: Address,
    cfg: EndpointConfig,
}

impl Listener for TcpListener {
    type Endpoint = TcpEndpoint;

    async fn accept(&self) -> Result<TcpEndpoint> {
        let (s, peer) = self
            .inner
            .accept()
            .await
            .map_err(|source| TransportError::Io {
                addr: self.local.clone(),
                op: "accept",
                source,
            })?;
        TcpEndpoint::new(s, Address::Tcp(peer), self.cfg.clone())
    }

    fn local_addr(&self) -> Address {
        self.local.clone()
    }
}
