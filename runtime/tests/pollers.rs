//! Registered pollers: polled every iteration without starving I/O, and able to wake a parked
//! core through their interrupt fd.

mod common;

use std::cell::Cell;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corewire_runtime::net::{TcpListener, TcpStream};
use corewire_runtime::{register_poller, spawn_local, timer, Poller};

/// A poller that always reports work (a busy RDMA CQ, say).
struct AlwaysBusy(Rc<Cell<u64>>);
impl Poller for AlwaysBusy {
    fn poll(&self) -> bool {
        self.0.set(self.0.get() + 1);
        true
    }
    fn name(&self) -> &str {
        "always-busy"
    }
}

#[test]
fn busy_poller_does_not_starve_socket_io() {
    let rt = common::rt();
    let rounds = rt.block_on(rt.spawn_on(0, || async {
        let polls = Rc::new(Cell::new(0));
        let reg = register_poller(Rc::new(AlwaysBusy(polls.clone()))).unwrap();
        let l = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr();
        let server = spawn_local(async move {
            let (s, _) = l.accept().await.unwrap();
            loop {
                let (r, b) = s.read(Vec::with_capacity(64)).await;
                if r.unwrap() == 0 {
                    break;
                }
                let (w, _) = s.write_all(b).await;
                w.unwrap();
            }
        });
        let c = TcpStream::connect(addr).await.unwrap();
        let t0 = Instant::now();
        let mut n = 0;
        while n < 2000 {
            let (w, _) = c.write_all(vec![7u8; 64]).await;
            w.unwrap();
            let mut got = 0;
            while got < 64 {
                let (r, _) = c.read(Vec::with_capacity(64)).await;
                got += r.unwrap();
            }
            n += 1;
        }
        let took = t0.elapsed();
        drop(c);
        server.await.unwrap();
        assert!(polls.get() >= n, "poller polled every iteration");
        drop(reg);
        (n, took)
    }));
    let (n, took) = rounds.unwrap();
    assert_eq!(n, 2000);
    // Behaviour, not a benchmark: with starvation (glommio) this took >2 s; allow a lot.
    assert!(
        took < Duration::from_secs(20),
        "{n} round trips took {took:?}"
    );
    rt.shutdown().unwrap();
}

/// A poller fed by an eventfd from another thread; parks the core with the fd armed.
struct EventFdPoller {
    fd: OwnedFd,
    seen: Arc<AtomicU64>,
    armed: Cell<bool>,
}
impl Poller for EventFdPoller {
    fn poll(&self) -> bool {
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into a live u64 from our own nonblocking eventfd.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        if n == 8 {
            self.seen.fetch_add(v, Ordering::SeqCst);
            true
        } else {
            false
        }
    }
    fn try_enter_interrupt_mode(&self) -> bool {
        self.armed.set(true);
        // Re-check after arming.
        !self.poll()
    }
    fn exit_interrupt_mode(&self) {
        self.armed.set(false);
    }
    fn interrupt_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }
    fn name(&self) -> &str {
        "eventfd"
    }
}

#[test]
fn poller_interrupt_fd_wakes_a_parked_core() {
    let rt = common::rt();
    let seen = Arc::new(AtomicU64::new(0));
    // SAFETY: plain eventfd creation; checked below.
    let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(raw >= 0);
    // Keep a dup to write from this thread.
    // SAFETY: raw is valid; dup returns a new fd or -1.
    let writer = unsafe { libc::dup(raw) };
    assert!(writer >= 0);
    // SAFETY: both descriptors are fresh and owned here.
    let (fd, writer) = unsafe { (OwnedFd::from_raw_fd(raw), OwnedFd::from_raw_fd(writer)) };
    let s2 = seen.clone();
    rt.block_on(rt.submit_to(0, move || {
        let reg = register_poller(Rc::new(EventFdPoller {
            fd,
            seen: s2,
            armed: Cell::new(false),
        }))
        .unwrap();
        // Keep the registration alive for the core's lifetime.
        std::mem::forget(reg);
    }))
    .unwrap();
    let before = rt.stats(0).unwrap();
    std::thread::sleep(Duration::from_millis(100)); // the core parks
    for i in 1..=3u64 {
        let v = 1u64;
        // SAFETY: writes 8 bytes from a live u64.
        assert_eq!(
            unsafe { libc::write(writer.as_raw_fd(), (&v as *const u64).cast(), 8) },
            8
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen.load(Ordering::SeqCst) < i && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            seen.load(Ordering::SeqCst),
            i,
            "poller not woken for event {i}"
        );
        std::thread::sleep(Duration::from_millis(50)); // parks again
    }
    let s = rt.stats(0).unwrap().since(&before);
    assert!(s.parks >= 3, "{s:?}");
    // The core was woken by the poller's fd, not its own wake fd.
    assert_eq!(s.wakeups, 0, "{s:?}");
    let _ = rt.block_on(rt.spawn_on(0, || timer::sleep(Duration::from_millis(1))));
    rt.shutdown().unwrap();
}

/// Records, at core stop, whether its task was already gone and the I/O ring still worked.
struct StopWatcher {
    task_alive: Rc<Cell<bool>>,
    seen: Arc<AtomicU64>,
}
impl Poller for StopWatcher {
    fn poll(&self) -> bool {
        false
    }
    fn name(&self) -> &str {
        "stop-watcher"
    }
    fn on_core_stop(&self) {
        // 1: called; 2: after the core's tasks were dropped; 3: and a socket still opens.
        let mut v = 1;
        if !self.task_alive.get() {
            v = 2;
            if TcpListener::bind("127.0.0.1:0".parse().unwrap()).is_ok() {
                v = 3;
            }
        }
        self.seen.store(v, Ordering::SeqCst);
    }
}

/// Clears the flag when the task holding it is dropped.
struct AliveWhileHeld(Rc<Cell<bool>>);
impl Drop for AliveWhileHeld {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

#[test]
fn pollers_hear_of_core_stop_after_tasks_are_dropped() {
    let rt = common::rt();
    let seen = Arc::new(AtomicU64::new(0));
    let s2 = seen.clone();
    rt.block_on(rt.spawn_on(0, move || async move {
        let alive = Rc::new(Cell::new(true));
        let reg = register_poller(Rc::new(StopWatcher {
            task_alive: alive.clone(),
            seen: s2,
        }))
        .unwrap();
        std::mem::forget(reg); // stays registered until the core stops
        let held = AliveWhileHeld(alive);
        spawn_local(async move {
            let _held = held;
            std::future::pending::<()>().await;
        })
        .detach();
    }))
    .unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 0, "not before the stop");
    rt.shutdown().unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 3);
}
