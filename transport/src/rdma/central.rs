//! `dispatch = central` (comparison only): one dispatcher thread polls every core's completion
//! queue and hands each completion to the owning core, as Ceph's `RDMADispatcher::polling`.
//!
//! - **Dispatcher thread** (`rdma-dispatch`, one per process, started with the first
//!   registered CQ, stopped and joined when the last one is unregistered): under one global
//!   mutex it polls one batch of each registered CQ per round and pushes every completion to
//!   the owner's [`Inbox`]. After [`POLLING_IDLE`] without completions it arms every CQ
//!   (`ibv_req_notify_cq`), re-polls, and sleeps in `poll(2)` on the completion channels and a
//!   control eventfd (Ceph: `ms_async_rdma_polling_us`, default 1000 µs); on waking it reads
//!   and acknowledges every event and busy-polls again.
//! - **Hand-over:** a lock-free queue (crossbeam `SegQueue`) per core plus an eventfd. The
//!   core's poller drains the queue where it would have polled its CQ ([`CompletionSource`]:
//!   the same `CompletionQueue::poll`, the same completion handling). Ceph writes the eventfd
//!   for every batch because its workers always sleep in epoll; corewire's cores busy-poll
//!   and park only when idle, so the dispatcher writes the eventfd only to a parked core
//!   (flag + `SeqCst` fences on both sides, no lost wake-up).
//! - **Lifetimes:** the dispatcher holds [`SharedCq`] handles, which do not keep a CQ alive.
//!   Each is owned by a [`Registration`] inside the CQ's completion source, and the CQ drops
//!   its source before `ibv_destroy_cq`; unregistering takes the global mutex, so once it
//!   returns the dispatcher is between rounds and will never touch that CQ again (and has
//!   acknowledged every event it read from it). The last unregistration also stops and joins
//!   the thread.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;

use crate::error::{Result, TransportError};
use crate::rdma::verbs::{CompletionQueue, CompletionSource, SharedCq, WorkCompletion};

/// Busy-polling time without completions before the dispatcher sleeps on the channels.
pub(crate) const POLLING_IDLE: Duration = Duration::from_micros(1000);
/// Completions taken from one CQ per round.
const POLL_BATCH: usize = 32;
/// The dispatcher thread's name (for per-thread CPU accounting).
pub const DISPATCHER_THREAD: &str = "rdma-dispatch";

/// One core's hand-over queue from the dispatcher.
pub(crate) struct Inbox {
    queue: SegQueue<WorkCompletion>,
    /// The core is (about to be) parked: the dispatcher must write `wake`.
    parked: AtomicBool,
    wake: OwnedFd,
}

impl Inbox {
    fn new() -> io::Result<Inbox> {
        // SAFETY: plain syscall; the returned fd is checked and then owned by `OwnedFd`.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Inbox {
            queue: SegQueue::new(),
            parked: AtomicBool::new(false),
            // SAFETY: `fd` is a fresh eventfd nobody else owns.
            wake: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Dispatcher side, after pushing completions: wakes the core if it parked.
    fn pushed(&self) {
        // Pairs with the fence in `park`: either the core sees the completions or we see it
        // parked.
        fence(Ordering::SeqCst);
        if self.parked.swap(false, Ordering::SeqCst) {
            eventfd_write(self.wake.as_raw_fd());
        }
    }

    /// Core side: about to park; re-check the queue afterwards (it may have been filled
    /// before the flag was visible).
    pub fn park(&self) {
        self.parked.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Core side: not parking (after a veto) or woken up. Clears a pending wake-up.
    pub fn unpark(&self, drain_fd: bool) {
        self.parked.store(false, Ordering::SeqCst);
        if drain_fd {
            let mut v = 0u64;
            // SAFETY: reads 8 bytes into a local u64 from our non-blocking eventfd; EAGAIN
            // (nothing pending) is fine.
            unsafe { libc::read(self.wake.as_raw_fd(), (&raw mut v).cast(), 8) };
        }
    }

    pub fn fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
}

fn eventfd_write(fd: RawFd) {
    let one = 1u64;
    // SAFETY: writes 8 bytes from a local u64 to an eventfd we hold open; a full counter
    // (EAGAIN) means a wake-up is pending anyway.
    unsafe { libc::write(fd, (&raw const one).cast(), 8) };
}

/// A CQ's completions as delivered by the dispatcher. Owns the CQ's registration.
struct Delivered {
    inbox: Arc<Inbox>,
    _reg: Registration,
}

impl CompletionSource for Delivered {
    fn take(&self, out: &mut [WorkCompletion]) -> usize {
        let mut n = 0;
        while n < out.len() {
            let Some(wc) = self.inbox.queue.pop() else {
                break;
            };
            out[n] = wc;
            n += 1;
        }
        n
    }
}

/// Hands `cq` over to the dispatcher thread (started if needed): from now on it polls the CQ
/// and `cq.poll` returns what it delivered. Returns the inbox (its eventfd wakes the parked
/// core). The registration ends when the CQ is dropped.
pub(crate) fn attach(cq: &CompletionQueue) -> Result<Arc<Inbox>> {
    let inbox = Arc::new(Inbox::new().map_err(|e| TransportError::Unavailable {
        what: format!("rdma central dispatch: eventfd: {e}"),
    })?);
    // SAFETY: the handle goes into the registration owned by `Delivered`, which is installed
    // as this CQ's source below and dropped before the CQ is destroyed; dropping the
    // registration removes the handle from the dispatcher under its mutex, after which the
    // dispatcher never uses it again (see the module docs). The handle is not copied anywhere
    // else.
    let shared = unsafe { cq.shared() };
    let reg = register(shared, inbox.clone())?;
    cq.set_source(Box::new(Delivered {
        inbox: inbox.clone(),
        _reg: reg,
    }));
    Ok(inbox)
}

struct Entry {
    id: u64,
    cq: SharedCq,
    inbox: Arc<Inbox>,
}

#[derive(Default)]
struct Registry {
    entries: Vec<Entry>,
    next_id: u64,
    /// The running thread and its stop flag.
    thread: Option<(JoinHandle<()>, Arc<AtomicBool>)>,
}

struct Dispatcher {
    reg: Mutex<Registry>,
    /// Wakes a sleeping dispatcher: registrations changed or stop.
    ctl: OwnedFd,
}

static DISPATCHER: LazyLock<std::result::Result<Dispatcher, String>> = LazyLock::new(|| {
    // SAFETY: plain syscall; the fd is checked and then owned (for the process's lifetime).
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!("eventfd: {}", io::Error::last_os_error()));
    }
    Ok(Dispatcher {
        reg: Mutex::new(Registry::default()),
        // SAFETY: fresh fd, owned only here.
        ctl: unsafe { OwnedFd::from_raw_fd(fd) },
    })
});

fn dispatcher() -> Result<&'static Dispatcher> {
    DISPATCHER
        .as_ref()
        .map_err(|e| TransportError::Unavailable {
            what: format!("rdma central dispatch: {e}"),
        })
}

impl Dispatcher {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic in a round leaves the registry consistent (entries are only added or removed
        // whole): keep going.
        self.reg.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A CQ registered with the dispatcher; dropping it unregisters the CQ synchronously.
struct Registration {
    id: u64,
}

fn register(cq: SharedCq, inbox: Arc<Inbox>) -> Result<Registration> {
    let d = dispatcher()?;
    let mut reg = d.lock();
    let id = reg.next_id;
    reg.next_id += 1;
    reg.entries.push(Entry { id, cq, inbox });
    if reg.thread.is_none() {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let spawned = std::thread::Builder::new()
            .name(DISPATCHER_THREAD.into())
            .spawn(move || run(d, &stop2));
        match spawned {
            Ok(h) => reg.thread = Some((h, stop)),
            Err(e) => {
                reg.entries.retain(|e| e.id != id);
                return Err(TransportError::Unavailable {
                    what: format!("rdma central dispatch: spawning {DISPATCHER_THREAD}: {e}"),
                });
            }
        }
    }
    drop(reg);
    eventfd_write(d.ctl.as_raw_fd());
    Ok(Registration { id })
}

impl Drop for Registration {
    fn drop(&mut self) {
        let Ok(d) = dispatcher() else { return };
        let mut reg = d.lock();
        reg.entries.retain(|e| e.id != self.id);
        let stopping = if reg.entries.is_empty() {
            reg.thread.take()
        } else {
            None
        };
        if let Some((_, stop)) = &stopping {
            stop.store(true, Ordering::Relaxed);
        }
        drop(reg);
        eventfd_write(d.ctl.as_raw_fd());
        if let Some((h, _)) = stopping {
            if h.join().is_err() {
                tracing::error!("rdma: the {DISPATCHER_THREAD} thread panicked");
            }
        }
    }
}

/// One batch from each CQ, handed to its owner; returns how many completions.
fn round(entries: &[Entry], wcs: &mut [WorkCompletion]) -> usize {
    let mut total = 0;
    for e in entries {
        match e.cq.poll(wcs) {
            Ok(0) => {}
            Ok(n) => {
                for wc in &wcs[..n] {
                    e.inbox.queue.push(wc.clone());
                }
                e.inbox.pushed();
                total += n;
            }
            Err(err) => tracing::error!(error = %err, "rdma: dispatcher poll failed"),
        }
    }
    total
}

/// The dispatcher thread.
fn run(d: &Dispatcher, stop: &AtomicBool) {
    let mut wcs = vec![WorkCompletion::default(); POLL_BATCH];
    let mut idle_since: Option<Instant> = None;
    loop {
        let fds = {
            let reg = d.lock();
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if round(&reg.entries, &mut wcs) > 0 {
                idle_since = None;
                continue;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() < POLLING_IDLE {
                drop(reg);
                std::hint::spin_loop();
                continue;
            }
            // Arm, then poll once more: a completion that arrived before arming raises no
            // event.
            for e in &reg.entries {
                if let Err(err) = e.cq.req_notify() {
                    tracing::error!(error = %err, "rdma: dispatcher arming a CQ failed");
                }
            }
            if round(&reg.entries, &mut wcs) > 0 {
                idle_since = None;
                continue;
            }
            let mut fds: Vec<libc::pollfd> = reg
                .entries
                .iter()
                .map(|e| e.cq.channel_fd())
                .chain([d.ctl.as_raw_fd()])
                .map(|fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            fds.dedup_by_key(|p| p.fd);
            fds
        };
        sleep(d, fds);
        idle_since = None;
    }
}

/// Sleeps until a channel or the control fd is readable, then reads and acknowledges every
/// event.
fn sleep(d: &Dispatcher, mut fds: Vec<libc::pollfd>) {
    // A channel fd closed meanwhile (its CQ unregistered and destroyed after the list was
    // built) at worst wakes us spuriously (POLLNVAL, or a reused fd number): unregistering
    // also writes the control fd, and the next round rebuilds the list.
    // SAFETY: `fds` is a valid array of `fds.len()` pollfds.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            tracing::error!(error = %e, "rdma: dispatcher poll(2) failed");
        }
    }
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into a local from our non-blocking eventfd; EAGAIN is fine.
    unsafe { libc::read(d.ctl.as_raw_fd(), (&raw mut v).cast(), 8) };
    let reg = d.lock();
    for e in &reg.entries {
        if let Err(err) = e.cq.take_events() {
            tracing::error!(error = %err, "rdma: dispatcher reading CQ events failed");
        }
    }
}
