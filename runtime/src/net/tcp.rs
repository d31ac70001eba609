//! TCP on io_uring.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use socket2::{Domain, Protocol, SockAddr, Type};

use super::socket::{BufResult, Socket};
use crate::buf::{IoBuf, IoBufMut};

/// Options for [`TcpListener::bind_with`].
#[derive(Debug, Clone)]
pub struct ListenOptions {
    /// `SO_REUSEPORT`, so each core can own a listener on the same port. Default: false.
    pub reuse_port: bool,
    /// `SO_REUSEADDR`. Default: true.
    pub reuse_addr: bool,
    /// Listen backlog. Default: 1024.
    pub backlog: i32,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            reuse_port: false,
            reuse_addr: true,
            backlog: 1024,
        }
    }
}

/// A TCP listener whose accepts complete through the core's io_uring.
pub struct TcpListener {
    sock: Socket,
    local: SocketAddr,
}

impl TcpListener {
    /// Bind and listen with default options.
    pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
        Self::bind_with(addr, &ListenOptions::default())
    }

    /// Bind and listen with `opts`.
    pub fn bind_with(addr: SocketAddr, opts: &ListenOptions) -> io::Result<TcpListener> {
        let s = socket2::Socket::new(
            Domain::for_address(addr),
            Type::STREAM.cloexec(),
            Some(Protocol::TCP),
        )?;
        s.set_reuse_address(opts.reuse_addr)?;
        if opts.reuse_port {
            s.set_reuse_port(true)?;
        }
        s.bind(&addr.into())?;
        s.listen(opts.backlog)?;
        let local = s
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an inet socket"))?;
        Ok(TcpListener {
            sock: Socket { fd: s.into() },
            local,
        })
    }

    /// Accept one connection.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (fd, addr) = self.sock.accept().await?;
        let peer = addr
            .as_socket()
            .ok_or_else(|| io::Error::other("accepted a non-inet address"))?;
        Ok((
            TcpStream {
                sock: Socket { fd },
            },
            peer,
        ))
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl AsRawFd for TcpListener {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.raw()
    }
}

/// A TCP connection whose I/O completes through the io_uring of the core that awaits it.
///
/// The stream is a plain fd: it can be handed to another core with [`TcpStream::into_std`] /
/// [`TcpStream::from_std`] (or moved as is, when no operation is in flight).
pub struct TcpStream {
    sock: Socket,
}

impl TcpStream {
    /// Connect to `addr`.
    pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        let s = socket2::Socket::new(
            Domain::for_address(addr),
            Type::STREAM.cloexec(),
            Some(Protocol::TCP),
        )?;
        let sock = Socket { fd: s.into() };
        sock.connect(&SockAddr::from(addr)).await?;
        Ok(TcpStream { sock })
    }

    /// Adopt a std stream (it is switched to blocking mode, which io_uring wants).
    pub fn from_std(s: std::net::TcpStream) -> io::Result<TcpStream> {
        s.set_nonblocking(false)?;
        Ok(TcpStream {
            sock: Socket { fd: s.into() },
        })
    }

    /// Give up io_uring ownership (e.g. to hand the connection to another core).
    pub fn into_std(self) -> std::net::TcpStream {
        // SAFETY: we own the fd and give that ownership to the std stream.
        unsafe { std::net::TcpStream::from_raw_fd(self.sock.fd.into_raw_fd()) }
    }

    /// A duplicate of the socket as a std stream (the connection stays open until both are
    /// closed), e.g. to hand it to another core while this one winds down.
    pub fn try_clone_std(&self) -> io::Result<std::net::TcpStream> {
        let fd = self.sock.fd.try_clone()?;
        Ok(std::net::TcpStream::from(fd))
    }

    fn sock2(&self) -> socket2::SockRef<'_> {
        socket2::SockRef::from(&self.sock.fd)
    }

    /// Receive into `buf`'s spare capacity; `Ok(0)` is end of stream.
    pub async fn read<B: IoBufMut>(&self, buf: B) -> BufResult<usize, B> {
        self.sock.recv(buf).await
    }
    /// Send once; returns bytes sent.
    pub async fn write<B: IoBuf>(&self, buf: B) -> BufResult<usize, B> {
        self.sock.send(buf, 0).await
    }
    /// Send all of `buf`.
    pub async fn write_all<B: IoBuf>(&self, buf: B) -> BufResult<(), B> {
        self.sock.send_all(buf).await
    }
    /// One vectored send (`sendmsg`); returns bytes sent.
    pub async fn writev<B: IoBuf>(&self, bufs: Vec<B>) -> BufResult<usize, Vec<B>> {
        self.sock.sendmsg(bufs, 0, &[]).await
    }
    /// Send every byte of `bufs`, vectored.
    pub async fn writev_all<B: IoBuf>(&self, bufs: Vec<B>) -> BufResult<(), Vec<B>> {
        self.sock.sendmsg_all(bufs).await
    }
    /// Shut down one or both directions.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.sock2().shutdown(how)
    }
    /// Set TCP_NODELAY.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.sock2().set_tcp_nodelay(on)
    }
    /// TCP_NODELAY.
    pub fn nodelay(&self) -> io::Result<bool> {
        self.sock2().tcp_nodelay()
    }
    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.sock2()
            .peer_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not inet"))
    }
    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock2()
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not inet"))
    }
}

impl AsRawFd for TcpStream {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.raw()
    }
}

impl From<TcpStream> for OwnedFd {
    fn from(s: TcpStream) -> OwnedFd {
        s.sock.fd
    }
}
