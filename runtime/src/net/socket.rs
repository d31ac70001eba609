//! Socket operations on io_uring shared by TCP and Unix sockets.
//!
//! Sockets stay in blocking mode: io_uring first tries each operation without blocking and
//! otherwise arms an internal poll, so no io-wq worker thread is used for sockets. Sends
//! first try one direct `sendmsg(MSG_DONTWAIT)` (see [`Socket::sendmsg_all`]); only what does
//! not fit goes through the ring.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use io_uring::{opcode, types};

use crate::buf::{IoBuf, IoBufMut};
use crate::uring::op::Op;

/// The result of an operation that owned a buffer: the outcome and the buffer back.
pub type BufResult<T, B> = (io::Result<T>, B);

/// Most file descriptors accepted in one `recv_with_fds`.
pub const MAX_FDS: usize = 16;

/// The iovecs of `bufs`' initialised bytes, skipping the first `skip` bytes.
fn iovecs<B: IoBuf>(bufs: &[B], mut skip: usize) -> Vec<libc::iovec> {
    let mut iov = Vec::with_capacity(bufs.len());
    for b in bufs {
        let len = b.bytes_init();
        if skip >= len {
            skip -= len;
            continue;
        }
        iov.push(libc::iovec {
            // SAFETY: skip < len, so the pointer is inside the initialised bytes.
            iov_base: unsafe { b.stable_ptr().add(skip) } as *mut libc::c_void,
            iov_len: len - skip,
        });
        skip = 0;
    }
    iov
}

pub(crate) struct Socket {
    pub(crate) fd: OwnedFd,
}

struct SendMsgData<B> {
    bufs: Vec<B>,
    _iov: Box<[libc::iovec]>,
    _cmsg: Box<[u64]>,
    _msg: Box<libc::msghdr>,
}

struct RecvMsgData<B> {
    buf: B,
    _iov: Box<libc::iovec>,
    cmsg: Box<[u64]>,
    msg: Box<libc::msghdr>,
}

fn cmsg_space(nfds: usize) -> usize {
    // SAFETY: CMSG_SPACE is a pure computation.
    unsafe { libc::CMSG_SPACE((nfds * std::mem::size_of::<RawFd>()) as u32) as usize }
}

impl Socket {
    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Receive into `buf`'s spare capacity.
    pub(crate) async fn recv<B: IoBufMut>(&self, mut buf: B) -> BufResult<usize, B> {
        let init = buf.bytes_init();
        let room = buf.bytes_total() - init;
        // SAFETY: `init <= bytes_total`, so the pointer stays inside the buffer's capacity.
        let ptr = unsafe { buf.stable_mut_ptr().add(init) };
        let sqe = opcode::Recv::new(types::Fd(self.raw()), ptr, room as u32).build();
        // SAFETY: the SQE points at `room` bytes of `buf`'s capacity, owned by the op.
        let op = match unsafe { Op::submit(sqe, buf) } {
            Ok(op) => op,
            Err((e, d)) => return (Err(e), d),
        };
        let mut c = op.await;
        match c.result() {
            Ok(n) => {
                // SAFETY: the kernel initialised `n` bytes after `init`.
                unsafe { c.data.set_init(init + n as usize) };
                (Ok(n as usize), c.data)
            }
            Err(e) => (Err(e), c.data),
        }
    }

    /// Send `buf[offset..]` once; returns bytes sent.
    pub(crate) async fn send<B: IoBuf>(&self, buf: B, offset: usize) -> BufResult<usize, B> {
        let len = buf.bytes_init().saturating_sub(offset);
        // SAFETY: `offset <= bytes_init` when len > 0; with len == 0 the pointer is not read.
        let ptr = unsafe { buf.stable_ptr().add(offset.min(buf.bytes_init())) };
        let sqe = opcode::Send::new(types::Fd(self.raw()), ptr, len as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        // SAFETY: the SQE points at `len` initialised bytes of `buf`, owned by the op.
        let op = match unsafe { Op::submit(sqe, buf) } {
            Ok(op) => op,
            Err((e, d)) => return (Err(e), d),
        };
        let c = op.await;
        (c.result().map(|n| n as usize), c.data)
    }

    /// Send all of `buf`.
    pub(crate) async fn send_all<B: IoBuf>(&self, mut buf: B) -> BufResult<(), B> {
        let total = buf.bytes_init();
        let mut off = 0;
        while off < total {
            let (r, b) = self.send(buf, off).await;
            buf = b;
            match r {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// One `sendmsg` of the buffers, skipping the first `skip` bytes, with optional fds
    /// (SCM_RIGHTS). Returns bytes sent.
    pub(crate) async fn sendmsg<B: IoBuf>(
        &self,
        bufs: Vec<B>,
        skip: usize,
        fds: &[RawFd],
    ) -> BufResult<usize, Vec<B>> {
        if fds.len() > MAX_FDS {
            return (
                Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("at most {MAX_FDS} fds per message"),
                )),
                bufs,
            );
        }
        let iov = iovecs(&bufs, skip).into_boxed_slice();
        let space = if fds.is_empty() {
            0
        } else {
            cmsg_space(fds.len())
        };
        let mut cmsg = vec![0u64; space.div_ceil(8)].into_boxed_slice();
        // SAFETY: msghdr is plain data; all-zero is a valid empty header.
        let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len() as _;
        if !fds.is_empty() {
            msg.msg_control = cmsg.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            // SAFETY: msg_control points at `space` zeroed, 8-aligned bytes, enough for one
            // cmsghdr carrying `fds.len()` descriptors (CMSG_SPACE), so FIRSTHDR/DATA stay inside.
            unsafe {
                let h = libc::CMSG_FIRSTHDR(&*msg);
                (*h).cmsg_level = libc::SOL_SOCKET;
                (*h).cmsg_type = libc::SCM_RIGHTS;
                (*h).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
                std::ptr::copy_nonoverlapping(
                    fds.as_ptr(),
                    libc::CMSG_DATA(h).cast::<RawFd>(),
                    fds.len(),
                );
            }
        }
        let sqe = opcode::SendMsg::new(types::Fd(self.raw()), &*msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build();
        let data = SendMsgData {
            bufs,
            _iov: iov,
            _cmsg: cmsg,
            _msg: msg,
        };
        // SAFETY: the msghdr, iovecs, control buffer and payload buffers are all heap memory
        // owned by `data` (boxes and the buffers' own storage), which the op keeps alive.
        let op = match unsafe { Op::submit(sqe, data) } {
            Ok(op) => op,
            Err((e, d)) => return (Err(e), d.bufs),
        };
        let c = op.await;
        (c.result().map(|n| n as usize), c.data.bufs)
    }

    /// One `sendmsg(MSG_DONTWAIT)` of `bufs` from byte `skip`, made now by this thread, not
    /// through the ring. Returns bytes sent; `WouldBlock` when the socket buffer is full.
    fn sendmsg_now<B: IoBuf>(&self, bufs: &[B], skip: usize) -> io::Result<usize> {
        let mut iov = iovecs(bufs, skip);
        iov.truncate(libc::UIO_MAXIOV as usize);
        // SAFETY: msghdr is plain data; all-zero is a valid empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len() as _;
        // SAFETY: `msg` points at `iov`, whose entries point into `bufs`' initialised bytes;
        // all of it outlives this synchronous call, and the kernel keeps no reference after it.
        let n = unsafe { libc::sendmsg(self.raw(), &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Send every byte of `bufs` (vectored, as few system calls as the kernel allows).
    ///
    /// The first attempt is a direct non-blocking `sendmsg`: when the socket buffer has room
    /// (the common case) the bytes go out in that one system call, with no ring entry, no
    /// completion to reap and no extra wake-up of the sending task. What does not fit goes
    /// through the ring, which waits for room without blocking the core.
    pub(crate) async fn sendmsg_all<B: IoBuf>(&self, mut bufs: Vec<B>) -> BufResult<(), Vec<B>> {
        let total: usize = bufs.iter().map(|b| b.bytes_init()).sum();
        let mut done = 0;
        if total > 0 {
            match self.sendmsg_now(&bufs, 0) {
                Ok(n) => done = n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return (Err(e), bufs),
            }
        }
        while done < total {
            let (r, b) = self.sendmsg(bufs, done, &[]).await;
            bufs = b;
            match r {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), bufs),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), bufs),
            }
        }
        (Ok(()), bufs)
    }

    /// One `recvmsg` into `buf`'s spare capacity, accepting up to `MAX_FDS` descriptors.
    pub(crate) async fn recvmsg<B: IoBufMut>(
        &self,
        mut buf: B,
    ) -> BufResult<(usize, Vec<OwnedFd>), B> {
        let init = buf.bytes_init();
        let iov = Box::new(libc::iovec {
            // SAFETY: init <= bytes_total.
            iov_base: unsafe { buf.stable_mut_ptr().add(init) }.cast(),
            iov_len: buf.bytes_total() - init,
        });
        let space = cmsg_space(MAX_FDS);
        let mut cmsg = vec![0u64; space.div_ceil(8)].into_boxed_slice();
        // SAFETY: all-zero msghdr is a valid empty header.
        let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        msg.msg_iov = &*iov as *const libc::iovec as *mut libc::iovec;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let sqe = opcode::RecvMsg::new(types::Fd(self.raw()), &mut *msg)
            .flags(libc::MSG_CMSG_CLOEXEC as u32)
            .build();
        let data = RecvMsgData {
            buf,
            _iov: iov,
            cmsg,
            msg,
        };
        // SAFETY: msghdr, iovec, control space and the buffer's capacity are heap memory owned
        // by `data`, kept alive by the op until its completion is reaped.
        let op = match unsafe { Op::submit(sqe, data) } {
            Ok(op) => op,
            Err((e, d)) => return (Err(e), d.buf),
        };
        let c = op.await;
        let mut d = c.data;
        match usize::try_from(c.res) {
            Err(_) => (Err(io::Error::from_raw_os_error(-c.res)), d.buf),
            Ok(n) => {
                // SAFETY: the kernel initialised n bytes after `init`.
                unsafe { d.buf.set_init(init + n) };
                let fds = collect_fds(&d.msg, &d.cmsg);
                if d.msg.msg_flags & libc::MSG_CTRUNC != 0 {
                    return (
                        Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "file descriptors truncated (more than MAX_FDS)",
                        )),
                        d.buf,
                    );
                }
                (Ok((n, fds)), d.buf)
            }
        }
    }

    /// Wait until the fd is readable (or has an error/hang-up); returns the poll mask.
    pub(crate) async fn poll(fd: RawFd, events: i16) -> io::Result<i16> {
        let sqe = opcode::PollAdd::new(types::Fd(fd), events as u32).build();
        // SAFETY: a poll SQE points at no memory.
        let op = unsafe { Op::submit(sqe, ()) }.map_err(|(e, ())| e)?;
        let c = op.await;
        c.result().map(|m| m as i16)
    }
}

fn collect_fds(msg: &libc::msghdr, _keep: &[u64]) -> Vec<OwnedFd> {
    let mut out = Vec::new();
    // SAFETY: `msg` was filled by the kernel's recvmsg; CMSG_FIRSTHDR/NXTHDR walk only within
    // msg_controllen bytes of the control buffer, which `_keep` keeps alive.
    unsafe {
        let mut h = libc::CMSG_FIRSTHDR(msg);
        while !h.is_null() {
            if (*h).cmsg_level == libc::SOL_SOCKET && (*h).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(h).cast::<RawFd>();
                let bytes = (*h).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.add(i));
                    out.push(OwnedFd::from_raw_fd(fd));
                }
            }
            h = libc::CMSG_NXTHDR(msg, h);
        }
    }
    out
}

struct AddrData {
    storage: Box<(libc::sockaddr_storage, libc::socklen_t)>,
}

impl Socket {
    /// Accept one connection; returns the new fd and the peer's raw address.
    pub(crate) async fn accept(&self) -> io::Result<(OwnedFd, socket2::SockAddr)> {
        // SAFETY: sockaddr_storage is plain data; zeroed is valid.
        let mut storage: Box<(libc::sockaddr_storage, libc::socklen_t)> =
            Box::new((unsafe { std::mem::zeroed() }, 0));
        storage.1 = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let sqe = opcode::Accept::new(
            types::Fd(self.raw()),
            (&mut storage.0 as *mut libc::sockaddr_storage).cast(),
            &mut storage.1,
        )
        .flags(libc::SOCK_CLOEXEC)
        .build();
        // SAFETY: the address buffer and its length live in the boxed `storage` owned by the op.
        let op = unsafe { Op::submit(sqe, AddrData { storage }) }.map_err(|(e, _)| e)?;
        let c = op.await;
        let fd = c.result()? as RawFd;
        // SAFETY: the kernel returned a fresh descriptor that we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let (st, len) = *c.data.storage;
        let mut storage = socket2::SockAddrStorage::zeroed();
        // SAFETY: `sockaddr_storage` is one of this platform's sockaddr types; the kernel wrote
        // a valid address of `len` bytes into `st`.
        let addr = unsafe {
            *storage.view_as::<libc::sockaddr_storage>() = st;
            socket2::SockAddr::new(storage, len)
        };
        Ok((fd, addr))
    }

    /// Connect to `addr`.
    pub(crate) async fn connect(&self, addr: &socket2::SockAddr) -> io::Result<()> {
        let mut storage: Box<(libc::sockaddr_storage, libc::socklen_t)> =
            // SAFETY: zeroed sockaddr_storage is valid plain data.
            Box::new((unsafe { std::mem::zeroed() }, addr.len()));
        // SAFETY: `addr.len()` bytes fit in a sockaddr_storage by construction of SockAddr.
        unsafe {
            std::ptr::copy_nonoverlapping(
                addr.as_ptr().cast::<u8>(),
                (&mut storage.0 as *mut libc::sockaddr_storage).cast::<u8>(),
                addr.len() as usize,
            )
        };
        let sqe = opcode::Connect::new(
            types::Fd(self.raw()),
            (&storage.0 as *const libc::sockaddr_storage).cast(),
            storage.1,
        )
        .build();
        // SAFETY: the address lives in the boxed `storage` owned by the op.
        let op = unsafe { Op::submit(sqe, AddrData { storage }) }.map_err(|(e, _)| e)?;
        op.await.result().map(|_| ())
    }
}
