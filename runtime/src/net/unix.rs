//! Unix stream sockets on io_uring, with file-descriptor passing (SCM_RIGHTS).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Type};

use super::socket::{BufResult, Socket};
use crate::buf::{IoBuf, IoBufMut};

/// A Unix stream listener.
pub struct UnixListener {
    sock: Socket,
    path: PathBuf,
}

impl UnixListener {
    /// Bind and listen at `path` (which must not exist).
    pub fn bind(path: impl AsRef<Path>) -> io::Result<UnixListener> {
        let path = path.as_ref().to_path_buf();
        let s = socket2::Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None)?;
        s.bind(&SockAddr::unix(&path)?)?;
        s.listen(1024)?;
        Ok(UnixListener {
            sock: Socket { fd: s.into() },
            path,
        })
    }

    /// Accept one connection.
    pub async fn accept(&self) -> io::Result<UnixStream> {
        let (fd, _addr) = self.sock.accept().await?;
        Ok(UnixStream {
            sock: Socket { fd },
        })
    }

    /// The bound path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AsRawFd for UnixListener {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.raw()
    }
}

/// A Unix stream connection.
pub struct UnixStream {
    sock: Socket,
}

impl UnixStream {
    /// Connect to the listener at `path`.
    pub async fn connect(path: impl AsRef<Path>) -> io::Result<UnixStream> {
        let s = socket2::Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None)?;
        let sock = Socket { fd: s.into() };
        sock.connect(&SockAddr::unix(path)?).await?;
        Ok(UnixStream { sock })
    }

    /// A connected pair.
    pub fn pair() -> io::Result<(UnixStream, UnixStream)> {
        let (a, b) = socket2::Socket::pair(Domain::UNIX, Type::STREAM.cloexec(), None)?;
        Ok((
            UnixStream {
                sock: Socket { fd: a.into() },
            },
            UnixStream {
                sock: Socket { fd: b.into() },
            },
        ))
    }

    /// Adopt an owned fd of a connected Unix stream socket.
    pub fn from_fd(fd: OwnedFd) -> UnixStream {
        UnixStream {
            sock: Socket { fd },
        }
    }

    /// Receive into `buf`'s spare capacity; `Ok(0)` is end of stream.
    pub async fn read<B: IoBufMut>(&self, buf: B) -> BufResult<usize, B> {
        self.sock.recv(buf).await
    }
    /// Send all of `buf`.
    pub async fn write_all<B: IoBuf>(&self, buf: B) -> BufResult<(), B> {
        self.sock.send_all(buf).await
    }
    /// Send `buf` (one `sendmsg`) together with `fds`; returns bytes sent. The fds ride with
    /// the first byte, so send at least one byte.
    pub async fn send_with_fds<B: IoBuf>(&self, buf: B, fds: &[RawFd]) -> BufResult<usize, B> {
        let (r, mut v) = self.sock.sendmsg(vec![buf], 0, fds).await;
        match v.pop() {
            Some(b) => (r, b),
            None => unreachable!("sendmsg returns the buffers it was given"),
        }
    }
    /// Receive into `buf` together with any passed fds (at most [`super::MAX_FDS`]).
    pub async fn recv_with_fds<B: IoBufMut>(&self, buf: B) -> BufResult<(usize, Vec<OwnedFd>), B> {
        self.sock.recvmsg(buf).await
    }
    /// Shut down one or both directions.
    pub fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        socket2::SockRef::from(&self.sock.fd).shutdown(how)
    }
}

impl AsRawFd for UnixStream {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.raw()
    }
}
