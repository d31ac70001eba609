//! Where dispatchers run: on the connection's core ([`DispatchMode::Sharded`], the default),
//! or on one messenger-wide thread fed by every core ([`DispatchMode::Central`], Ceph's
//! `DispatchQueue`).
//!
//! Central dispatch exists for comparison, as the transport's central RDMA dispatcher does:
//! it is how Ceph's AsyncMessenger hands messages to a daemon that does not fast-dispatch
//! them. Every core's reader pushes each received message, and each connection event, under
//! one lock onto one queue and signals one condition variable; the `ms_dispatch` thread
//! (Ceph's name) pops them one at a time, releasing the lock while the dispatcher chain runs,
//! as `DispatchQueue::entry` does. Replies the dispatchers send go back to the connection's
//! core through its cross-core queue. In this mode fast dispatch does not run on the core
//! either: a message a dispatcher can fast-dispatch is fast-dispatched on the `ms_dispatch`
//! thread, so every message takes the central path.
//!
//! What holds in both modes: per connection, messages and events reach the dispatchers in
//! arrival order (one thread pops the one queue in order), and the dispatch throttle bounds
//! the payload bytes waiting in the queue (a message keeps its share until the application
//! drops it). Dispatcher panics are caught, logged and counted; the thread goes on.
//!
//! The thread stops when the messenger shuts down (after the cores closed their connections
//! and the queue drained) or when the messenger is dropped.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Poll, Waker};

use crate::connection::ConnectionRef;
use crate::dispatcher::{run_message, Dispatcher};
use crate::message::Message;

/// The name of the central dispatch thread (Ceph's `DispatchQueue` thread has the same).
pub const DISPATCH_THREAD_NAME: &str = "ms_dispatch";

/// Where the dispatcher chain runs ([`crate::MessengerBuilder::dispatch_mode`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DispatchMode {
    /// On the connection's core, inline from its reader: fast dispatch straight away, then
    /// `ms_dispatch` (the default; no lock or shared counter on the message path).
    #[default]
    Sharded,
    /// On one `ms_dispatch` thread for the whole messenger, fed by every core through one
    /// locked queue (Ceph's `DispatchQueue`; kept for comparison, see the module docs).
    Central,
}

type Chain = Arc<[Arc<dyn Dispatcher>]>;
/// A connection event, run against the chain.
pub(crate) type Event = Box<dyn FnOnce(&[Arc<dyn Dispatcher>]) + Send>;

/// One unit of work for the dispatch thread.
pub(crate) enum Item {
    /// A received message: fast dispatch if a dispatcher can, else the `ms_dispatch` chain.
    Message(ConnectionRef, Message),
    /// A connection event (connect, accept, reset, ...), run against the chain.
    Event(Event),
}

struct State {
    items: VecDeque<Item>,
    closed: bool,
}

/// The queue and the thread's state (shared by every core's copy of the chain).
pub(crate) struct CentralQueue {
    state: Mutex<State>,
    cv: Condvar,
    tid: AtomicI32,
    exited: AtomicBool,
    exit_waiters: Mutex<Vec<Waker>>,
    dispatched: AtomicU64,
    panics: AtomicU64,
}

impl CentralQueue {
    /// Start the `ms_dispatch` thread over `chain`.
    pub(crate) fn start(chain: Chain) -> std::io::Result<Arc<Self>> {
        let q = Arc::new(CentralQueue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                closed: false,
            }),
            cv: Condvar::new(),
            tid: AtomicI32::new(0),
            exited: AtomicBool::new(false),
            exit_waiters: Mutex::new(Vec::new()),
            dispatched: AtomicU64::new(0),
            panics: AtomicU64::new(0),
        });
        let (q2, (tx, rx)) = (q.clone(), std::sync::mpsc::sync_channel(1));
        std::thread::Builder::new()
            .name(DISPATCH_THREAD_NAME.into())
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                q2.tid.store(unsafe { libc::gettid() }, Ordering::Release);
                let _ = tx.send(());
                q2.run(chain)
            })?;
        // The thread id is known once `start` returns (CPU accounting, `is_current_thread`).
        rx.recv()
            .map_err(|_| std::io::Error::other("the ms_dispatch thread died at start"))?;
        Ok(q)
    }

    /// Queue `item` and wake the thread. After [`CentralQueue::close`] the item is dropped
    /// (the messenger is down; a message dropped here releases its throttle share).
    pub(crate) fn push(&self, item: Item) {
        let mut st = self.state.lock().expect("not poisoned");
        if st.closed {
            return;
        }
        st.items.push_back(item);
        drop(st);
        self.cv.notify_one();
    }

    /// Stop taking items; the thread exits once it dispatched what is queued.
    pub(crate) fn close(&self) {
        self.state.lock().expect("not poisoned").closed = true;
        self.cv.notify_one();
    }

    /// The thread's kernel thread id.
    pub(crate) fn tid(&self) -> i32 {
        self.tid.load(Ordering::Acquire)
    }

    /// Items dispatched, dispatcher panics caught so far, and items queued now.
    pub(crate) fn counts(&self) -> (u64, u64, u64) {
        let queued = self.state.lock().expect("not poisoned").items.len() as u64;
        (
            self.dispatched.load(Ordering::Relaxed),
            self.panics.load(Ordering::Relaxed),
            queued,
        )
    }

    /// Whether the caller runs on this queue's thread.
    pub(crate) fn is_current_thread(&self) -> bool {
        // SAFETY: gettid has no preconditions.
        self.tid() == unsafe { libc::gettid() }
    }

    /// Wait until the thread exited (after [`CentralQueue::close`]).
    pub(crate) async fn exited(&self) {
        std::future::poll_fn(|cx| {
            if self.exited.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            self.exit_waiters
                .lock()
                .expect("not poisoned")
                .push(cx.waker().clone());
            if self.exited.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    fn run(&self, chain: Chain) {
        loop {
            let item = {
                let mut st = self.state.lock().expect("not poisoned");
                loop {
                    if let Some(i) = st.items.pop_front() {
                        break Some(i);
                    }
                    if st.closed {
                        break None;
                    }
                    st = self.cv.wait(st).expect("not poisoned");
                }
            };
            let Some(item) = item else { break };
            let r = catch_unwind(AssertUnwindSafe(|| match item {
                Item::Message(conn, msg) => run_message(&chain, &conn, msg),
                Item::Event(f) => f(&chain),
            }));
            self.dispatched.fetch_add(1, Ordering::Relaxed);
            if r.is_err() {
                self.panics.fetch_add(1, Ordering::Relaxed);
                tracing::error!("a dispatcher panicked on the {DISPATCH_THREAD_NAME} thread");
            }
        }
        self.exited.store(true, Ordering::Release);
        let waiters = std::mem::take(&mut *self.exit_waiters.lock().expect("not poisoned"));
        waiters.into_iter().for_each(Waker::wake);
    }
}
