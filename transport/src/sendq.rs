//! The bounded send queue of one endpoint (core-local).
//!
//! Senders append scatter/gather lists; the endpoint's writer takes everything queued at once
//! (so many small messages leave in one vectored system call or one doorbell). When the queue
//! holds more than its byte or buffer limit, `send` waits and `try_send` fails; one send larger
//! than the whole limit is still accepted into an empty queue, so no message size deadlocks.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Poll, Waker};

use bytes::Bytes;

use crate::stack::EndpointConfig;

/// See the module docs.
pub struct SendQueue {
    bufs: RefCell<VecDeque<Bytes>>,
    bytes: Cell<usize>,
    max_bytes: usize,
    max_bufs: usize,
    /// Senders waiting for room, woken in order.
    waiting: RefCell<VecDeque<Waker>>,
    /// The writer, waiting for data.
    writer: RefCell<Option<Waker>>,
    /// A batch taken by the writer and not yet fully handed to the kernel/NIC.
    inflight: Cell<bool>,
    /// `flush` callers waiting for the queue to drain.
    flushers: RefCell<Vec<Waker>>,
    closed: Cell<bool>,
}

impl SendQueue {
    pub fn new(cfg: &EndpointConfig) -> SendQueue {
        SendQueue {
            bufs: RefCell::new(VecDeque::new()),
            bytes: Cell::new(0),
            max_bytes: cfg.send_queue_bytes.max(1),
            max_bufs: cfg.send_queue_bufs.max(1),
            waiting: RefCell::new(VecDeque::new()),
            writer: RefCell::new(None),
            inflight: Cell::new(false),
            flushers: RefCell::new(Vec::new()),
            closed: Cell::new(false),
        }
    }

    /// Bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes.get()
    }
    /// Buffers queued.
    pub fn len(&self) -> usize {
        self.bufs.borrow().len()
    }
    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.bufs.borrow().is_empty()
    }

    fn has_room_for(&self, bytes: usize, n: usize) -> bool {
        let q = self.bufs.borrow();
        q.is_empty() || (self.bytes.get() + bytes <= self.max_bytes && q.len() + n <= self.max_bufs)
    }

    /// Append if there is room; otherwise give the buffers back.
    pub fn try_push(&self, bufs: Vec<Bytes>) -> Result<(), Vec<Bytes>> {
        let total: usize = bufs.iter().map(Bytes::len).sum();
        // Later senders queue behind earlier waiters, to keep FIFO order among senders.
        if self.closed.get()
            || !self.waiting.borrow().is_empty()
            || !self.has_room_for(total, bufs.len())
        {
            return Err(bufs);
        }
        self.push_unchecked(bufs, total);
        Ok(())
    }

    fn push_unchecked(&self, bufs: Vec<Bytes>, total: usize) {
        let mut q = self.bufs.borrow_mut();
        q.extend(bufs.into_iter().filter(|b| !b.is_empty()));
        self.bytes.set(self.bytes.get() + total);
        drop(q);
        if let Some(w) = self.writer.borrow_mut().take() {
            w.wake();
        }
    }

    /// Append, waiting for room. Returns the buffers if the queue was closed meanwhile.
    pub async fn push(&self, bufs: Vec<Bytes>) -> Result<(), Vec<Bytes>> {
        let total: usize = bufs.iter().map(Bytes::len).sum();
        let mut bufs = Some(bufs);
        let mut queued = false;
        poll_fn(|cx| {
            if self.closed.get() {
                return Poll::Ready(Err(bufs.take().unwrap_or_default()));
            }
            let first_in_line = {
                let w = self.waiting.borrow();
                w.is_empty() || (queued && w.front().is_some_and(|f| f.will_wake(cx.waker())))
            };
            if first_in_line && self.has_room_for(total, bufs.as_ref().map_or(0, Vec::len)) {
                if queued {
                    self.waiting.borrow_mut().pop_front();
                }
                if let Some(b) = bufs.take() {
                    self.push_unchecked(b, total);
                }
                // Let the next waiter check for room too.
                if let Some(w) = self.waiting.borrow().front() {
                    w.wake_by_ref();
                }
                return Poll::Ready(Ok(()));
            }
            if !queued {
                self.waiting.borrow_mut().push_back(cx.waker().clone());
                queued = true;
            }
            Poll::Pending
        })
        .await
    }

    /// Take everything queued (for the writer), up to `max_bufs` buffers; the batch counts as
    /// in flight until `batch_done`.
    pub fn take_batch(&self, max_bufs: usize) -> Vec<Bytes> {
        self.inflight.set(true);
        let mut q = self.bufs.borrow_mut();
        let n = q.len().min(max_bufs);
        let batch: Vec<Bytes> = q.drain(..n).collect();
        drop(q);
        let taken: usize = batch.iter().map(Bytes::len).sum();
        self.bytes.set(self.bytes.get() - taken);
        if let Some(w) = self.waiting.borrow().front() {
            w.wake_by_ref();
        }
        batch
    }

    /// The writer finished its batch (sent, or failed and closed the queue).
    pub fn batch_done(&self) {
        self.inflight.set(false);
        if self.bufs.borrow().is_empty() {
            for w in self.flushers.borrow_mut().drain(..) {
                w.wake();
            }
        }
    }

    /// Wait until nothing is queued or in flight. Returns false if the queue was closed first.
    pub async fn flushed(&self) -> bool {
        poll_fn(|cx| {
            if self.closed.get() {
                Poll::Ready(false)
            } else if self.bufs.borrow().is_empty() && !self.inflight.get() {
                Poll::Ready(true)
            } else {
                self.flushers.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Whether a batch is being written.
    pub fn is_inflight(&self) -> bool {
        self.inflight.get()
    }

    /// Put back the unsent tail of a batch at the front (after a partial write).
    pub fn unshift(&self, rest: Vec<Bytes>) {
        let mut q = self.bufs.borrow_mut();
        let n: usize = rest.iter().map(Bytes::len).sum();
        for b in rest.into_iter().rev() {
            q.push_front(b);
        }
        self.bytes.set(self.bytes.get() + n);
    }

    /// Wait until something is queued or the queue is closed (for the writer).
    pub async fn wait_for_data(&self) {
        poll_fn(|cx| {
            if !self.bufs.borrow().is_empty() || self.closed.get() {
                Poll::Ready(())
            } else {
                *self.writer.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Close: drop what is queued, fail waiting and future senders, wake the writer.
    pub fn close(&self) {
        self.closed.set(true);
        self.bufs.borrow_mut().clear();
        self.bytes.set(0);
        for w in self.waiting.borrow_mut().drain(..) {
            w.wake();
        }
        if let Some(w) = self.writer.borrow_mut().take() {
            w.wake();
        }
        for w in self.flushers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Whether `close` was called.
    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }
}
