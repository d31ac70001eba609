//! Back-pressure on senders: how a connection's [`OutQueueLimits`] hold senders back.
//!
//! The connection's owning core keeps the authoritative count, in the connection's
//! [`OutQueue`](crate::outq::OutQueue) (messages and payload bytes queued, written and not
//! acked, waiting for replay). Nothing on the per-message path takes a lock or writes a
//! shared atomic:
//!
//! - On the owning core, [`ConnectionRef::try_send`](crate::ConnectionRef::try_send) checks
//!   the count and queues the message or refuses it at once with
//!   [`MessengerError::OutQueueFull`], handing the message back. It also refuses while
//!   senders wait for room ([`ConnectionRef::send_async`](crate::ConnectionRef::send_async)),
//!   so a waiting sender is not overtaken.
//! - From another core or thread, `try_send` reads a per-connection "full" flag the owning
//!   core publishes, written only when the state flips (the queue fills, drains, or senders
//!   start or stop waiting), and refuses at once if it is set. A message that passes is
//!   queued on arrival even if the queue filled meanwhile: the limit is soft by the sends
//!   still in the runtime's cross-core queue when it filled (it can be exceeded by what one
//!   burst of sends queued before the owning core ran).
//! - `send_async` waits for room on the owning core, FIFO among waiters: from another core it
//!   runs there as a task (the runtime's `spawn_on`), and its completion travels back through
//!   the runtime's cross-core queue; the message waits inside that task, never in the queue.
//!   Room is freed when the peer acks (ACK frame, `ack_seq` in a message header, the
//!   `msg_seq` of a resume) or the session drops its queue, and the first waiter is woken.
//!   This path is exact.
//! - A message that could never fit (payload over the byte limit, or a segment over the
//!   maximum segment length) is refused on the caller's thread with
//!   [`MessengerError::MessageTooLarge`], whichever way it is sent, so nothing waits forever.
//! - [`Messenger::send_message`](crate::Messenger::send_message) from another core has no
//!   connection to read the flag of and no caller to refuse: the check runs on arrival, and
//!   a message that does not fit waits for room there as with `send_async` (behind earlier
//!   waiters, so order holds); only one that cannot be sent at all (closed connection,
//!   stopped messenger) is dropped, logged and counted (`MessengerCounters::out_queue_drops`).
//!   On the owning core it fails at once like `try_send`.
//!
//! Control frames never queue (see [`crate::outq`]).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Poll, Waker};

use crate::error::{MessengerError, Result, SendRejected};
use crate::message::Message;
use crate::outq::{OutQueueLimits, QueueStats};
use crate::session::Conn;

/// Senders waiting for room on one connection, FIFO; core-local.
#[derive(Default)]
pub(crate) struct Room {
    waiters: RefCell<VecDeque<Rc<Waiter>>>,
    /// The connection closed: waiters give up.
    closed: Cell<bool>,
    /// What the owning core last published in `ConnShared::full`.
    published_full: Cell<bool>,
}

#[derive(Default)]
struct Waiter {
    waker: RefCell<Option<Waker>>,
}

impl Room {
    fn wake_head(&self) {
        if let Some(w) = self.waiters.borrow().front() {
            if let Some(k) = w.waker.borrow_mut().take() {
                k.wake();
            }
        }
    }

    fn is_head(&self, w: &Rc<Waiter>) -> bool {
        self.waiters
            .borrow()
            .front()
            .is_some_and(|h| Rc::ptr_eq(h, w))
    }
}

/// Takes a cancelled waiter out of the line.
struct Leave<'a> {
    conn: &'a Conn,
    w: Rc<Waiter>,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let room = &self.conn.room;
        let was_head = room.is_head(&self.w);
        room.waiters
            .borrow_mut()
            .retain(|x| !Rc::ptr_eq(x, &self.w));
        if was_head {
            room.wake_head();
        }
        self.conn.publish();
    }
}

impl Conn {
    fn limits(&self) -> OutQueueLimits {
        self.cref.inner.limits
    }

    fn check_size(&self, msg: &Message) -> Result<()> {
        let i = &self.cref.inner;
        i.limits.check_size(&i.peer.addr, msg, i.max_segment_len)
    }

    fn full_error(&self) -> MessengerError {
        let (queued_messages, queued_bytes) = self.out.borrow().held();
        MessengerError::OutQueueFull {
            peer: self.cref.peer_addr().clone(),
            queued_messages,
            queued_bytes,
            limits: self.limits(),
        }
    }

    /// Queue `msg` if it fits now and nobody waits for room; else hand it back.
    pub(crate) fn try_queue(&self, msg: Message) -> std::result::Result<(), SendRejected> {
        if self.is_down() {
            return Ok(()); // dropped, as for a connection that closed meanwhile
        }
        if let Err(e) = self.check_size(&msg) {
            return Err(SendRejected::new(e, msg));
        }
        let fits = self.out.borrow().fits(&self.limits(), msg.payload_len());
        if !fits || !self.room.waiters.borrow().is_empty() {
            return Err(SendRejected::new(self.full_error(), msg));
        }
        self.push(msg);
        Ok(())
    }

    /// Queue `msg` that another thread sent after checking the published flag (and its size).
    pub(crate) fn push_admitted(&self, msg: Message) {
        if !self.is_down() {
            self.push(msg);
        }
    }

    fn push(&self, msg: Message) {
        self.out.borrow_mut().push(msg);
        self.wake.notify();
        self.publish();
    }

    /// Room was freed (acks, a dropped queue): wake the first waiting sender.
    pub(crate) fn released(&self) {
        self.publish();
        self.room.wake_head();
    }

    /// The connection closed: waiting senders give up.
    pub(crate) fn close_room(&self) {
        self.room.closed.set(true);
        for w in self.room.waiters.borrow().iter() {
            if let Some(k) = w.waker.borrow_mut().take() {
                k.wake();
            }
        }
    }

    /// Publish "full" to other threads when it changed (never per message otherwise).
    pub(crate) fn publish(&self) {
        let l = self.limits();
        let (msgs, bytes) = self.out.borrow().held();
        let full = msgs >= l.messages || bytes >= l.bytes || !self.room.waiters.borrow().is_empty();
        if full != self.room.published_full.replace(full) {
            let i = &self.cref.inner;
            i.full_held.0.store(msgs, Ordering::Relaxed);
            i.full_held.1.store(bytes, Ordering::Relaxed);
            i.full.store(full, Ordering::Release);
        }
    }

    /// Queue `msg` once it fits, after the senders already waiting.
    pub(crate) async fn send_wait(&self, msg: Message) -> Result<()> {
        self.check_size(&msg)?;
        let msg = match self.try_queue(msg) {
            Ok(()) => return Ok(()),
            Err(r) => match r.into_parts() {
                (MessengerError::OutQueueFull { .. }, Some(m)) => m,
                (e, _) => return Err(e),
            },
        };
        let w = Rc::new(Waiter::default());
        self.room.waiters.borrow_mut().push_back(w.clone());
        self.publish();
        let _leave = Leave {
            conn: self,
            w: w.clone(),
        };
        let len = msg.payload_len();
        let mut msg = Some(msg);
        poll_fn(|cx| {
            if self.room.closed.get() || self.is_down() {
                return Poll::Ready(Err(self.closed_error()));
            }
            if self.room.is_head(&w) && self.out.borrow().fits(&self.limits(), len) {
                self.room.waiters.borrow_mut().pop_front();
                self.push(msg.take().expect("sent once"));
                // The next waiter may fit too.
                self.room.wake_head();
                return Poll::Ready(Ok(()));
            }
            *w.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    fn closed_error(&self) -> MessengerError {
        let peer = self.cref.peer_addr().clone();
        match self.cref.close_reason() {
            None | Some(MessengerError::MarkedDown { .. }) => MessengerError::MarkedDown { peer },
            Some(e) => MessengerError::state("send_async", format!("the connection closed: {e}")),
        }
    }

    /// The out-queue's state now.
    pub(crate) fn queue_stats(&self) -> QueueStats {
        let out = self.out.borrow();
        let (held_messages, held_bytes) = out.held();
        QueueStats {
            held_messages,
            held_bytes,
            queued: out.len(),
            unacked: out.unacked(),
            control_frames: out.pending_control_frames(),
            waiting_senders: self.room.waiters.borrow().len(),
        }
    }
}
