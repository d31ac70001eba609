//! The per-core shm poller and each connection's socket watcher.
//!
//! # Polling
//! One [`ShmPoller`] per core (registered with `register_poller` when the core's first shm
//! endpoint appears) polls every live connection of that core on each loop iteration: it
//! drains the inbound ring into the receive queue and moves queued bytes into the outbound
//! ring and area. While both cores spin this is plain memory traffic, no system call.
//!
//! # Wake-ups
//! The poller exposes no interrupt fd. Instead each connection has a *watcher* task with an
//! io_uring poll (`net::readable`) pending on its Unix socket; a pending io_uring operation
//! wakes a parked core by itself. When the core wants to park, the poller's
//! `try_enter_interrupt_mode` sets, per connection, the inbound ring's `consumer_waiting` flag
//! (unless the receive queue is full) and, if sends are waiting for room, the outbound
//! direction's `producer_waiting` flag; then it re-checks both (vetoing the park if data or
//! room raced in). The peer, after publishing records (or releasing room), reads-and-clears
//! the matching flag and only then writes one byte to the socket. The watcher wakes, drains
//! the wake-up bytes (their content is ignored) and the next loop iteration polls the rings.
//! A poll does not consume data, so a watcher cancelled by a hand-off loses nothing.
//!
//! # Liveness
//! The socket carries nothing but wake-up bytes after the handshake, so end of file or an
//! error on it means the peer closed or died: the watcher tells the connection
//! (`Conn::on_hup`), which drains what was published and then reports `PeerClosed` or
//! `Reset`.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};

use corewire_runtime::{register_poller, Poller, PollerRegistration};

use crate::error::TransportError;
use crate::shm::conn::Conn;

/// A one-shot, core-local stop signal that many tasks can wait for.
#[derive(Default)]
pub(crate) struct StopSignal {
    set: Cell<bool>,
    wakers: RefCell<Vec<Waker>>,
}

impl StopSignal {
    pub(crate) fn stop(&self) {
        self.set.set(true);
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    pub(crate) fn is_set(&self) -> bool {
        self.set.get()
    }

    pub(crate) async fn wait(&self) {
        poll_fn(|cx| {
            if self.set.get() {
                return Poll::Ready(());
            }
            let mut w = self.wakers.borrow_mut();
            if !w.iter().any(|x| x.will_wake(cx.waker())) {
                w.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}

/// Polls every shm connection of one core.
#[derive(Default)]
pub(crate) struct ShmPoller {
    conns: RefCell<Vec<Rc<Conn>>>,
}

impl ShmPoller {
    fn get(&self, i: usize) -> Option<Rc<Conn>> {
        self.conns.borrow().get(i).cloned()
    }
}

impl Poller for ShmPoller {
    fn poll(&self) -> bool {
        let mut work = false;
        let mut i = 0;
        while let Some(c) = self.get(i) {
            work |= c.pump();
            if c.is_active() {
                i += 1;
            } else {
                self.conns.borrow_mut().swap_remove(i);
            }
        }
        work
    }

    fn try_enter_interrupt_mode(&self) -> bool {
        let mut i = 0;
        while let Some(c) = self.get(i) {
            if !c.enter_park() {
                self.exit_interrupt_mode();
                return false;
            }
            i += 1;
        }
        true
    }

    fn exit_interrupt_mode(&self) {
        let mut i = 0;
        while let Some(c) = self.get(i) {
            c.exit_park();
            i += 1;
        }
    }

    fn name(&self) -> &str {
        "shm"
    }
}

thread_local! {
    static POLLER: RefCell<Option<(Rc<ShmPoller>, PollerRegistration)>> =
        const { RefCell::new(None) };
}

/// Adds `conn` to this core's poller (registering the poller first if needed) and starts its
/// socket watcher. Must run on `conn.core`.
pub(crate) fn activate(conn: &Rc<Conn>) -> Result<(), TransportError> {
    let poller = POLLER.with(|p| -> Result<Rc<ShmPoller>, TransportError> {
        let mut p = p.borrow_mut();
        if let Some((poller, _)) = p.as_ref() {
            return Ok(poller.clone());
        }
        let poller = Rc::new(ShmPoller::default());
        let reg = register_poller(poller.clone())?;
        *p = Some((poller.clone(), reg));
        Ok(poller)
    })?;
    poller.conns.borrow_mut().push(conn.clone());
    let task = corewire_runtime::try_spawn_local(watch(
        Rc::downgrade(conn),
        conn.sock.clone(),
        conn.watch_stop.clone(),
    ))?;
    task.detach();
    Ok(())
}

/// Removes the connection `id` from this core's poller.
pub(crate) fn deactivate(id: u64) {
    let _ = POLLER.try_with(|p| {
        if let Ok(p) = p.try_borrow() {
            if let Some((poller, _)) = p.as_ref() {
                if let Ok(mut v) = poller.conns.try_borrow_mut() {
                    v.retain(|c| c.id != id);
                }
            }
        }
    });
}

enum Drained {
    Open,
    Eof,
    Failed(std::io::Error),
}

/// Reads and discards pending wake-up bytes without blocking.
fn drain(fd: RawFd) -> Drained {
    let mut buf = [0u8; 256];
    for _ in 0..64 {
        // SAFETY: receives into a live local buffer of the given length; non-blocking.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        match n {
            0 => return Drained::Eof,
            n if n > 0 => continue,
            _ => {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::WouldBlock => return Drained::Open,
                    std::io::ErrorKind::Interrupted => continue,
                    _ => return Drained::Failed(e),
                }
            }
        }
    }
    Drained::Open
}

/// The watcher task of one connection (see the module docs).
async fn watch(conn: Weak<Conn>, sock: Rc<OwnedFd>, stop: Rc<StopSignal>) {
    let fd = sock.as_raw_fd();
    loop {
        let ev = futures_lite::future::or(
            async { Some(corewire_runtime::net::readable(fd).await) },
            async {
                stop.wait().await;
                None
            },
        )
        .await;
        let Some(ev) = ev else { return };
        if stop.is_set() {
            return;
        }
        let Some(c) = conn.upgrade() else { return };
        let outcome = match ev {
            Err(e) => Drained::Failed(e),
            Ok(_) => drain(fd),
        };
        match outcome {
            Drained::Open => {}
            Drained::Eof => {
                c.on_hup("peer closed the shm socket".into());
                return;
            }
            Drained::Failed(e) => {
                c.on_hup(format!("shm socket failed: {e}"));
                return;
            }
        }
    }
}
