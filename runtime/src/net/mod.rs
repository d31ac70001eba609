//! Kernel sockets on the core's io_uring: TCP, Unix (with fd passing), and readiness of any fd.

mod socket;
mod tcp;
mod unix;

pub use socket::{BufResult, MAX_FDS};
pub use tcp::{ListenOptions, TcpListener, TcpStream};
pub use unix::{UnixListener, UnixStream};

use std::io;
use std::os::fd::RawFd;

/// Wait until `fd` is readable, or reports an error or hang-up. Returns the `poll` mask.
///
/// For file descriptors owned elsewhere, e.g. an RDMA completion channel.
pub async fn readable(fd: RawFd) -> io::Result<i16> {
    socket::Socket::poll(fd, libc::POLLIN).await
}
