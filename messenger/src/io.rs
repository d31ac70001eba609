//! The I/O handler of an established session (crimson's `IOHandler`): reads frames with the
//! wire [`FrameDecoder`], writes them with the [`FrameAssembler`] (through the typed frames),
//! keeps the priority out-queue, seqs, acks and keepalives. Everything here is core-local.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::{poll_fn, Future};
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use corewire_runtime::timer;
use corewire_transport::{Address, AnyEndpoint, Endpoint};
use futures_lite::future::or;

use crate::error::{MessengerError, Result};
use crate::fault::{Direction, Faults};
use crate::message::Message;
use crate::messenger::Shared;
use crate::session::Conn;
use crate::throttle::Hold;
use crate::wire::{
    Ack, Banner, ControlFrame, Frame, FrameDecoder, Keepalive2, Keepalive2Ack, MessageFrame, Tag,
    UTime,
};

/// Most payload bytes gathered into one transport send.
const BATCH_BYTES: usize = 1 << 20;

/// A one-waiter, core-local wake-up flag.
#[derive(Default)]
pub(crate) struct LocalNotify {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl LocalNotify {
    pub(crate) fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Forget a pending notification.
    pub(crate) fn clear(&self) {
        self.set.set(false);
    }

    /// Completes once notified (consuming the notification).
    pub(crate) fn wait(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(move |cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}

/// Per-session sequencing and the out-queue: ordered by priority (higher first), FIFO within a
/// priority. A message's seq is assigned when it is written. Lossless sessions keep written
/// messages until the peer acks them (`sent`), ready for replay after a reconnect: a fault
/// moves them to `replay` ([`OutQueue::requeue_sent`]), which is written first, with the same
/// seqs, once the peer said (RECONNECT / RECONNECT_OK `msg_seq`) which ones it already has.
#[derive(Debug, Default)]
pub struct OutQueue {
    by_prio: BTreeMap<u16, VecDeque<Message>>,
    len: usize,
    /// Written before a fault and not acked: written again first, in seq order.
    replay: VecDeque<Message>,
    /// Seq of the last message written.
    pub out_seq: u64,
    /// Seq of the last message received.
    pub in_seq: u64,
    /// The `in_seq` the peer was last told about (ACK frame or header `ack_seq`).
    in_seq_acked: u64,
    /// Written, not yet acked (lossless only).
    sent: VecDeque<Message>,
    keep_sent: bool,
    keepalive: bool,
    keepalive_ack: Option<UTime>,
}

impl OutQueue {
    /// An empty queue; `keep_sent` for lossless policies.
    pub fn new(keep_sent: bool) -> Self {
        OutQueue {
            keep_sent,
            ..Default::default()
        }
    }

    /// Queue a message.
    pub fn push(&mut self, msg: Message) {
        self.by_prio.entry(msg.priority).or_default().push_back(msg);
        self.len += 1;
    }

    /// The next message to write: highest priority, oldest first.
    pub fn pop(&mut self) -> Option<Message> {
        let mut e = self.by_prio.last_entry()?;
        let m = e.get_mut().pop_front();
        if e.get().is_empty() {
            e.remove();
        }
        self.len -= m.is_some() as usize;
        m
    }

    /// Messages waiting to be written (new and replayed).
    pub fn len(&self) -> usize {
        self.len + self.replay.len()
    }

    /// Whether nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Written messages not yet acked by the peer (including those waiting for replay).
    pub fn unacked(&self) -> usize {
        self.sent.len() + self.replay.len()
    }

    /// The peer acked (or, reconnecting, said it has) everything up to `seq`.
    pub fn on_ack(&mut self, seq: u64) {
        while self.sent.front().is_some_and(|m| m.seq <= seq) {
            self.sent.pop_front();
        }
        if let Some(last) = self.replay.back().map(|m| m.seq) {
            while self.replay.front().is_some_and(|m| m.seq <= seq) {
                self.replay.pop_front();
            }
            // Replay restarts from the first seq the peer lacks.
            self.out_seq = self.replay.front().map_or(last, |m| m.seq - 1);
        }
    }

    /// A fault: everything written and not acked is written again on the next transport,
    /// with the same seqs (Ceph's `requeue_sent`).
    pub fn requeue_sent(&mut self) {
        if self.sent.is_empty() {
            return;
        }
        let mut sent = std::mem::take(&mut self.sent);
        sent.append(&mut self.replay);
        self.replay = sent;
        self.out_seq = self.replay.front().map_or(self.out_seq, |m| m.seq - 1);
    }

    /// A new session replaces the old one: seqs restart from 1 both ways. With `discard`
    /// (the peer lost its session: Ceph's `reset_session`), queued and unacked messages are
    /// dropped; otherwise they are sent on the new session, renumbered. Returns how many
    /// messages were dropped.
    pub fn reset_session(&mut self, discard: bool) -> usize {
        self.requeue_sent();
        let dropped = if discard {
            let n = self.len();
            self.by_prio.clear();
            self.replay.clear();
            self.len = 0;
            n
        } else {
            // Renumbered on the new session, in their old order.
            for (i, m) in self.replay.iter_mut().enumerate() {
                m.seq = i as u64 + 1;
            }
            0
        };
        self.out_seq = 0;
        self.in_seq = 0;
        self.in_seq_acked = 0;
        dropped
    }

    /// Record a received message seq. `Ok(true)`: the next one, dispatch it; `Ok(false)`:
    /// a duplicate of one already received (a replay after a reconnect), drop it;
    /// `Err(expected)`: a gap.
    pub fn on_received(&mut self, seq: u64) -> std::result::Result<bool, u64> {
        let expected = self.in_seq + 1;
        if seq == expected {
            self.in_seq = seq;
            Ok(true)
        } else if seq < expected {
            Ok(false)
        } else {
            Err(expected)
        }
    }

    pub(crate) fn set_keep_sent(&mut self, keep: bool) {
        self.keep_sent = keep;
    }

    pub(crate) fn request_keepalive(&mut self) {
        self.keepalive = true;
    }

    pub(crate) fn request_keepalive_ack(&mut self, ts: UTime) {
        self.keepalive_ack = Some(ts);
    }

    /// Whether messages (new or replayed) or a keepalive wait: what makes the server side of
    /// a session in standby reconnect (an owed ACK alone does not).
    pub(crate) fn wants_to_send(&self) -> bool {
        !self.is_empty() || self.keepalive
    }

    /// Whether a frame is waiting to be written.
    pub(crate) fn has_work(&self) -> bool {
        !self.is_empty()
            || self.keepalive
            || self.keepalive_ack.is_some()
            || self.in_seq > self.in_seq_acked
    }

    /// The next frames to write (empty when there is nothing to do): keepalive frames first,
    /// then messages by priority up to about `max_bytes`, then an ACK if no message carried
    /// the current `in_seq`.
    pub(crate) fn next_batch(&mut self, max_bytes: usize) -> crate::wire::WireResult<Vec<Bytes>> {
        let mut out = Vec::new();
        if let Some(ts) = self.keepalive_ack.take() {
            out.extend(Keepalive2Ack { timestamp: ts }.to_wire()?);
        }
        if std::mem::take(&mut self.keepalive) {
            out.extend(
                Keepalive2 {
                    timestamp: UTime::now(),
                }
                .to_wire()?,
            );
        }
        let mut bytes = 0;
        while bytes < max_bytes {
            let Some(mut m) = self.replay.pop_front().or_else(|| self.pop()) else {
                break;
            };
            self.out_seq += 1;
            m.seq = self.out_seq;
            bytes += m.payload_len();
            let frame = MessageFrame {
                header: m.header(self.in_seq),
                front: m.front.clone(),
                middle: m.middle.clone(),
                data: m.data.clone(),
            };
            out.extend(frame.to_wire()?);
            self.in_seq_acked = self.in_seq;
            if self.keep_sent {
                self.sent.push_back(m);
            }
        }
        if self.in_seq > self.in_seq_acked {
            out.extend(Ack { seq: self.in_seq }.to_wire()?);
            self.in_seq_acked = self.in_seq;
        }
        Ok(out)
    }
}

/// The read side of a connection: the frame decoder, the idle timeout and the peer (for
/// errors). Travels with the endpoint when a connection moves to its owning core.
pub(crate) struct FrameReader {
    pub(crate) dec: FrameDecoder,
    pub(crate) idle: Duration,
    pub(crate) peer: Address,
    pub(crate) faults: Faults,
}

impl FrameReader {
    /// A reader for a transport to `peer`, with messenger `m`'s limits and fault injection.
    pub(crate) fn new(m: &Shared, peer: Address) -> Self {
        FrameReader {
            dec: FrameDecoder::with_max_segment_len(m.max_segment_len),
            idle: m.idle_timeout,
            peer,
            faults: m.faults.clone(),
        }
    }

    async fn recv_more(&mut self, ep: &AnyEndpoint, during: &'static str) -> Result<()> {
        match timer::timeout(self.idle, ep.recv()).await {
            Ok(Ok(chunk)) => {
                self.dec.feed(chunk);
                Ok(())
            }
            Ok(Err(e)) => Err(MessengerError::transport(&self.peer, e)),
            Err(_) => Err(MessengerError::IdleTimeout {
                peer: self.peer.clone(),
                during,
                after: self.idle,
            }),
        }
    }

    /// The peer's banner.
    pub(crate) async fn read_banner(&mut self, ep: &AnyEndpoint) -> Result<Banner> {
        loop {
            match self.dec.next_banner() {
                Ok(Some(b)) => return Ok(b),
                Ok(None) => self.recv_more(ep, "reading the banner").await?,
                Err(e) => return Err(MessengerError::wire(&self.peer, "reading the banner", e)),
            }
        }
    }

    /// The next whole frame, decoded by tag.
    pub(crate) async fn read_frame(
        &mut self,
        ep: &AnyEndpoint,
        during: &'static str,
    ) -> Result<Frame> {
        loop {
            match self.dec.next_frame() {
                Ok(Some((tag, segs))) => {
                    if self.faults.active() {
                        self.faults.check(&self.peer, Direction::Rx, tag)?;
                    }
                    return Frame::decode(tag, &segs)
                        .map_err(|e| MessengerError::wire(&self.peer, during, e));
                }
                Ok(None) => self.recv_more(ep, during).await?,
                Err(e) => return Err(MessengerError::wire(&self.peer, during, e)),
            }
        }
    }
}

/// Write `bufs` to `ep`.
pub(crate) async fn write(ep: &AnyEndpoint, peer: &Address, bufs: Vec<Bytes>) -> Result<()> {
    ep.send(bufs)
        .await
        .map_err(|e| MessengerError::transport(peer, e))
}

/// Run an established session until it fails or is marked down.
pub(crate) async fn run_session(
    ep: &AnyEndpoint,
    mut reader: FrameReader,
    conn: &Conn,
    keepalive: Option<Duration>,
) -> Result<()> {
    let peer = reader.peer.clone();
    let faults = reader.faults.clone();
    let read = async {
        loop {
            let frame = reader.read_frame(ep, "reading frames").await?;
            // The dispatch throttle: no more reading until the message has its share.
            let hold = match (&frame, &conn.throttle) {
                (Frame::Message(m), Some(b)) => {
                    let len = m.front.len() + m.middle.len() + m.data.len();
                    b.acquire(len).await
                }
                _ => Hold::default(),
            };
            handle_frame(conn, &peer, frame, hold)?;
        }
    };
    let write_loop = async {
        loop {
            conn.wake.wait().await;
            loop {
                let bufs = conn
                    .out
                    .borrow_mut()
                    .next_batch(BATCH_BYTES)
                    .map_err(|e| MessengerError::wire(&peer, "encoding frames", e))?;
                if bufs.is_empty() {
                    break;
                }
                if faults.active() {
                    faults.check(&peer, Direction::Tx, Tag::Message)?;
                }
                write(ep, &peer, bufs).await?;
            }
        }
    };
    let tick = async {
        match keepalive {
            Some(every) => loop {
                timer::sleep(every).await;
                conn.out.borrow_mut().request_keepalive();
                conn.wake.notify();
            },
            None => std::future::pending::<Result<()>>().await,
        }
    };
    // Whatever was queued before the session was up goes out now.
    if conn.out.borrow().has_work() {
        conn.wake.notify();
    }
    or(read, or(write_loop, tick)).await
}

fn handle_frame(conn: &Conn, peer: &Address, frame: Frame, hold: Hold) -> Result<()> {
    match frame {
        Frame::Message(m) => {
            {
                let mut out = conn.out.borrow_mut();
                out.on_ack(m.header.ack_seq);
                match out.on_received(m.header.seq) {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::debug!(%peer, seq = m.header.seq, in_seq = out.in_seq,
                            "duplicate message dropped (replayed after a reconnect)");
                        return Ok(());
                    }
                    Err(expected) => {
                        return Err(MessengerError::OutOfOrder {
                            peer: peer.clone(),
                            expected,
                            got: m.header.seq,
                        })
                    }
                }
            }
            conn.wake.notify();
            let mut msg = Message::from_wire(&m.header, m.front, m.middle, m.data);
            msg.throttle = hold;
            conn.dispatch(msg);
        }
        Frame::Ack(a) => conn.out.borrow_mut().on_ack(a.seq),
        Frame::Keepalive2(k) => {
            conn.out.borrow_mut().request_keepalive_ack(k.timestamp);
            conn.wake.notify();
        }
        Frame::Keepalive2Ack(k) => conn.last_keepalive_ack.set(Some(k.timestamp)),
        other => {
            return Err(MessengerError::UnexpectedFrame {
                peer: peer.clone(),
                during: "session established",
                expected: "MESSAGE, ACK, KEEPALIVE2 or KEEPALIVE2_ACK",
                got: format!("{:?}", other.tag()),
            })
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_queue_orders_by_priority_then_fifo() {
        let mut q = OutQueue::new(true);
        for (tid, prio) in [(1, 10), (2, 200), (3, 10), (4, 200), (5, 127)] {
            q.push(Message::new(1).with_priority(prio).with_tid(tid));
        }
        let order: Vec<u64> = std::iter::from_fn(|| q.pop()).map(|m| m.tid).collect();
        assert_eq!(order, [2, 4, 5, 1, 3]);
    }

    #[test]
    fn seqs_assigned_on_write_and_trimmed_by_ack() {
        let mut q = OutQueue::new(true);
        for i in 0..3 {
            q.push(Message::new(1).with_tid(i));
        }
        let bufs = q.next_batch(usize::MAX).unwrap();
        assert!(!bufs.is_empty());
        assert_eq!(q.out_seq, 3);
        assert_eq!(q.unacked(), 3);
        q.on_ack(2);
        assert_eq!(q.unacked(), 1);
        assert!(q.next_batch(usize::MAX).unwrap().is_empty());
    }

    fn written(q: &mut OutQueue) -> Vec<u64> {
        let before = q.out_seq;
        q.next_batch(usize::MAX).unwrap();
        (before + 1..=q.out_seq).collect()
    }

    #[test]
    fn replay_after_a_fault_keeps_seqs_and_skips_what_the_peer_has() {
        let mut q = OutQueue::new(true);
        for i in 0..5 {
            q.push(Message::new(1).with_tid(i));
        }
        assert_eq!(written(&mut q), [1, 2, 3, 4, 5]);
        q.on_ack(1);
        q.requeue_sent();
        q.push(Message::new(1).with_tid(5));
        assert_eq!((q.out_seq, q.len(), q.unacked()), (1, 5, 4));
        // The peer says (RECONNECT / RECONNECT_OK) it has up to 3.
        q.on_ack(3);
        assert_eq!(q.out_seq, 3);
        let tids: Vec<u64> = {
            q.next_batch(usize::MAX).unwrap();
            q.sent.iter().map(|m| m.tid).collect()
        };
        assert_eq!(tids, [3, 4, 5]);
        assert_eq!(q.sent.iter().map(|m| m.seq).collect::<Vec<_>>(), [4, 5, 6]);
        // The peer had everything: nothing to replay, seqs go on.
        q.requeue_sent();
        q.on_ack(6);
        assert_eq!((q.out_seq, q.len()), (6, 0));
    }

    #[test]
    fn received_seqs_drop_duplicates_and_refuse_gaps() {
        let mut q = OutQueue::new(true);
        assert_eq!(q.on_received(1), Ok(true));
        assert_eq!(q.on_received(1), Ok(false));
        assert_eq!(q.on_received(3), Err(2));
        assert_eq!(q.on_received(2), Ok(true));
    }

    #[test]
    fn session_reset_renumbers_or_discards() {
        let mut q = OutQueue::new(true);
        for i in 0..3 {
            q.push(Message::new(1).with_tid(i));
        }
        written(&mut q);
        q.push(Message::new(1).with_tid(3));
        assert_eq!(q.reset_session(false), 0);
        assert_eq!(written(&mut q), [1, 2, 3, 4]);
        assert_eq!(
            q.sent.iter().map(|m| m.tid).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        q.push(Message::new(1));
        assert_eq!(q.reset_session(true), 5);
        assert_eq!((q.len(), q.unacked(), q.out_seq), (0, 0, 0));
    }
}
