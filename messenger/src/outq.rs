//! The out-queue of a session ([`OutQueue`]): messages by priority, seqs, the unacked list kept
//! for replay, and the coalesced control frames (ACK, KEEPALIVE2, KEEPALIVE2_ACK); and its
//! limits ([`OutQueueLimits`]).
//!
//! What a connection holds for its peer is bounded: messages queued and not written, written
//! and not acked (kept for replay on lossless sessions), and waiting for replay all count
//! against the connection's [`OutQueueLimits`] (bytes of payload and messages) until the peer
//! acks them or the session drops them. Control frames do not queue at all: one pending ACK
//! carries the latest received seq, one pending KEEPALIVE2_ACK the latest timestamp, one flag
//! asks for a KEEPALIVE2, so a peer flooding keepalives or messages grows nothing here (at most
//! [`OutQueue::pending_control_frames`] = 3). How senders are held back at the limit is in
//! [`crate::backpressure`]. Everything here is core-local.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use corewire_transport::Address;

use crate::error::MessengerError;
use crate::message::Message;
use crate::wire::{Ack, ControlFrame, Gather, Keepalive2, Keepalive2Ack, MessageFrame, UTime};

/// At most this many buffers in one batch ([`OutQueue::next_batch`]): what one `sendmsg`
/// takes (`UIO_MAXIOV`).
pub const MAX_BATCH_BUFS: usize = 1024;

/// At most this many messages in one batch: a replay of thousands of small messages (which
/// [`Gather`] packs into few buffers) starts going out after this many encodings, not after
/// all of them.
pub const MAX_BATCH_MSGS: usize = 256;

/// Per-connection limits on what a sender may hold for its peer: messages queued, written
/// and not yet acked, or waiting for replay (see [`crate::backpressure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutQueueLimits {
    /// Payload bytes (front + middle + data) held at once; also the largest message accepted.
    pub bytes: usize,
    /// Messages held at once.
    pub messages: usize,
}

impl OutQueueLimits {
    /// Whether `msg` can ever be queued: its payload fits the byte limit and each segment fits
    /// `max_segment_len` (the peer would reject a larger one). Checked before any queueing, on
    /// the sender's thread.
    pub(crate) fn check_size(
        &self,
        peer: &Address,
        msg: &Message,
        max_segment_len: u32,
    ) -> Result<(), MessengerError> {
        let len = msg.payload_len();
        let max = max_segment_len as usize;
        let refuse = |limit: usize, what: &'static str| MessengerError::MessageTooLarge {
            peer: peer.clone(),
            msg_type: msg.msg_type,
            bytes: len,
            limit,
            what,
        };
        if len > self.bytes {
            return Err(refuse(self.bytes, "the out-queue byte limit"));
        }
        let seg = [&msg.front, &msg.middle, &msg.data]
            .iter()
            .map(|s| s.len())
            .max()
            .unwrap_or(0);
        if seg > max {
            return Err(refuse(max, "the maximum segment length"));
        }
        Ok(())
    }
}

/// A snapshot of one connection's out-queue ([`crate::ConnectionRef::queue_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Messages held (queued, written and not acked, waiting for replay).
    pub held_messages: usize,
    /// Payload bytes held.
    pub held_bytes: usize,
    /// Messages waiting to be written (new and replayed).
    pub queued: usize,
    /// Messages written and not yet acked (lossless sessions), replay included.
    pub unacked: usize,
    /// Control frames waiting to be written (ACK, KEEPALIVE2, KEEPALIVE2_ACK): at most 3.
    pub control_frames: usize,
    /// Senders waiting for room ([`crate::ConnectionRef::send_async`]).
    pub waiting_senders: usize,
}

/// Per-session sequencing and the out-queue: ordered by priority (higher first), FIFO within a
/// priority. A message's seq is assigned when it is written. Lossless sessions keep written
/// messages until the peer acks them (`sent`), ready for replay after a reconnect: a fault
/// moves them to `replay` ([`OutQueue::requeue_sent`]), which is written first, with the same
/// seqs, once the peer said (RECONNECT / RECONNECT_OK `msg_seq`) which ones it already has.
/// Priorities whose emptied queues [`OutQueue::pop`] keeps for reuse (Ceph uses a handful:
/// `CEPH_MSG_PRIO_LOW` .. `_HIGHEST`).
const KEPT_PRIORITY_QUEUES: usize = 8;

/// `held_*` count every message in `by_prio`, `replay` and `sent`.
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
    held_bytes: usize,
    held_msgs: usize,
}

impl OutQueue {
    /// An empty queue; `keep_sent` for lossless policies.
    pub fn new(keep_sent: bool) -> Self {
        OutQueue {
            keep_sent,
            ..Default::default()
        }
    }

    /// Queue a message (the caller checked the limits).
    pub fn push(&mut self, msg: Message) {
        self.held_bytes += msg.payload_len();
        self.held_msgs += 1;
        self.by_prio.entry(msg.priority).or_default().push_back(msg);
        self.len += 1;
    }

    /// Whether a message of `bytes` fits under `limits` now.
    pub fn fits(&self, limits: &OutQueueLimits, bytes: usize) -> bool {
        self.held_msgs < limits.messages && self.held_bytes + bytes <= limits.bytes
    }

    /// Messages and payload bytes held (queued, unacked, waiting for replay).
    pub fn held(&self) -> (usize, usize) {
        (self.held_msgs, self.held_bytes)
    }

    fn release(&mut self, m: &Message) {
        self.held_msgs -= 1;
        self.held_bytes -= m.payload_len();
    }

    /// The next message to write: highest priority, oldest first.
    ///
    /// A priority's queue that empties stays in the map, so the next burst at that priority
    /// reuses its storage instead of allocating a map node and a queue again (and growing it)
    /// per batch; once more than [`KEPT_PRIORITY_QUEUES`] priorities have queues, emptied
    /// ones are removed, so many distinct priorities cost neither memory nor scans.
    pub fn pop(&mut self) -> Option<Message> {
        if self.len == 0 {
            return None;
        }
        let many = self.by_prio.len() > KEPT_PRIORITY_QUEUES;
        let (&prio, q) = self.by_prio.iter_mut().rev().find(|(_, q)| !q.is_empty())?;
        let m = q.pop_front();
        if many && q.is_empty() {
            self.by_prio.remove(&prio);
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

    /// The highest seq written on this session (replayed messages keep theirs): a peer
    /// cannot have received more.
    pub fn highest_sent_seq(&self) -> u64 {
        let last = |q: &VecDeque<Message>| q.back().map_or(0, |m| m.seq);
        self.out_seq.max(last(&self.sent)).max(last(&self.replay))
    }

    /// Control frames waiting to be written: each kind is coalesced into one (at most 3).
    pub fn pending_control_frames(&self) -> usize {
        usize::from(self.keepalive)
            + usize::from(self.keepalive_ack.is_some())
            + usize::from(self.in_seq > self.in_seq_acked)
    }

    /// The peer acked (or, reconnecting, said it has) everything up to `seq`.
    pub fn on_ack(&mut self, seq: u64) {
        while self.sent.front().is_some_and(|m| m.seq <= seq) {
            let m = self.sent.pop_front().expect("checked");
            self.release(&m);
        }
        if let Some(last) = self.replay.back().map(|m| m.seq) {
            while self.replay.front().is_some_and(|m| m.seq <= seq) {
                let m = self.replay.pop_front().expect("checked");
                self.release(&m);
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
            self.held_msgs = 0;
            self.held_bytes = 0;
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

    /// Ask for a KEEPALIVE2 (one pending at most).
    pub fn request_keepalive(&mut self) {
        self.keepalive = true;
    }

    /// Answer a KEEPALIVE2: one pending KEEPALIVE2_ACK at most, carrying the latest
    /// timestamp (as Ceph's `append_keepalive_ack` overwrites the pending one).
    pub fn request_keepalive_ack(&mut self, ts: UTime) {
        self.keepalive_ack = Some(ts);
    }

    /// Whether messages (new or replayed) or a keepalive wait: what makes the server side of
    /// a session in standby reconnect (an owed ACK alone does not).
    pub(crate) fn wants_to_send(&self) -> bool {
        !self.is_empty() || self.keepalive
    }

    /// Whether a frame is waiting to be written.
    pub(crate) fn has_work(&self) -> bool {
        !self.is_empty() || self.pending_control_frames() > 0
    }

    /// The next frames to write (empty when there is nothing to do): keepalive frames first,
    /// then messages by priority (a replay first) up to about `max_bytes` of frames on the
    /// wire, [`MAX_BATCH_BUFS`] buffers and [`MAX_BATCH_MSGS`] messages, then an ACK if no
    /// message carried the current `in_seq`. The byte bound counts the frames' own bytes, not
    /// only payloads: a replay of many small messages goes out in batches the writer can
    /// start on at once, not as one encoding of everything unacked. Buffers of up to a page
    /// are copied into contiguous runs ([`Gather`]), larger payloads go by reference.
    pub fn next_batch(&mut self, max_bytes: usize) -> crate::wire::WireResult<Vec<Bytes>> {
        let mut out = Gather::default();
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
        let mut msgs = 0;
        while out.len() < max_bytes && out.buf_count() < MAX_BATCH_BUFS && msgs < MAX_BATCH_MSGS {
            let Some(mut m) = self.replay.pop_front().or_else(|| self.pop()) else {
                break;
            };
            msgs += 1;
            self.out_seq += 1;
            m.seq = self.out_seq;
            let header = m.header(self.in_seq);
            MessageFrame::encode_parts_into(&header, [&m.front, &m.middle, &m.data], &mut out)?;
            self.in_seq_acked = self.in_seq;
            if self.keep_sent {
                self.sent.push_back(m);
            } else {
                self.release(&m);
            }
        }
        if self.in_seq > self.in_seq_acked {
            out.extend(Ack { seq: self.in_seq }.to_wire()?);
            self.in_seq_acked = self.in_seq;
        }
        Ok(out.finish())
    }
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
        // Emptied queues stay for reuse and do not disturb the order of later bursts.
        for (tid, prio) in [(6, 10), (7, 127), (8, 10), (9, 300)] {
            q.push(Message::new(1).with_priority(prio).with_tid(tid));
        }
        let order: Vec<u64> = std::iter::from_fn(|| q.pop()).map(|m| m.tid).collect();
        assert_eq!(order, [9, 7, 6, 8]);
        assert!(q.pop().is_none() && q.is_empty());
    }

    /// Many distinct priorities: emptied queues beyond the kept few are removed.
    #[test]
    fn many_priorities_leave_few_queues_behind() {
        let mut q = OutQueue::new(true);
        for p in 0..1000u16 {
            q.push(Message::new(1).with_priority(p).with_tid(u64::from(p)));
        }
        let order: Vec<u64> = std::iter::from_fn(|| q.pop()).map(|m| m.tid).collect();
        assert_eq!(order, (0..1000u64).rev().collect::<Vec<_>>());
        assert!(
            q.by_prio.len() <= KEPT_PRIORITY_QUEUES + 1,
            "{}",
            q.by_prio.len()
        );
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
    fn a_large_replay_goes_out_in_bounded_batches() {
        let mut q = OutQueue::new(true);
        const N: u64 = 5_000;
        for i in 0..N {
            q.push(Message::new(1).with_tid(i).with_payload(
                Bytes::from_static(&[7; 32]),
                Bytes::new(),
                Bytes::new(),
            ));
        }
        // Writes everything, batch by batch: (messages, batches).
        let drain = |q: &mut OutQueue, max_bytes: usize| {
            let (start, mut batches) = (q.out_seq, 0);
            loop {
                let bufs = q.next_batch(max_bytes).unwrap();
                if bufs.is_empty() {
                    break;
                }
                batches += 1;
                assert!(bufs.len() <= MAX_BATCH_BUFS + 8, "{} buffers", bufs.len());
                let wire: usize = bufs.iter().map(Bytes::len).sum();
                // One message past the byte bound at most (plus a trailing ACK).
                assert!(wire <= max_bytes.saturating_add(256), "{wire} bytes");
            }
            (q.out_seq - start, batches)
        };
        let (n, batches) = drain(&mut q, usize::MAX);
        assert_eq!(n, N);
        assert!(batches >= N as usize / MAX_BATCH_MSGS, "{batches}");
        // A fault: the peer has the first 100; the other 4900 are replayed in seq order,
        // 16 KiB of frames at most per batch.
        q.requeue_sent();
        q.on_ack(100);
        let (n, batches) = drain(&mut q, 16 << 10);
        assert_eq!(n, N - 100);
        assert!(batches >= 30, "{batches}");
        let seqs: Vec<u64> = q.sent.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (101..=N).collect::<Vec<_>>());
        assert_eq!(q.sent.front().map(|m| m.tid), Some(100));
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

    fn sized(tid: u64, len: usize) -> Message {
        Message::new(1).with_tid(tid).with_payload(
            Bytes::from(vec![0u8; len]),
            Bytes::new(),
            Bytes::new(),
        )
    }

    #[test]
    fn held_counts_queued_unacked_and_replay_until_acked() {
        let limits = OutQueueLimits {
            bytes: 300,
            messages: 3,
        };
        let mut q = OutQueue::new(true);
        for i in 0..3 {
            assert!(q.fits(&limits, 100));
            q.push(sized(i, 100));
        }
        assert!(!q.fits(&limits, 0), "message limit");
        assert_eq!(q.held(), (3, 300));
        // Written but not acked: still held (kept for replay).
        written(&mut q);
        assert_eq!(q.held(), (3, 300));
        q.on_ack(1);
        assert_eq!(q.held(), (2, 200));
        assert!(q.fits(&limits, 100) && !q.fits(&limits, 101));
        // A fault moves them to replay: still held, until the peer says it has them.
        q.requeue_sent();
        assert_eq!(q.held(), (2, 200));
        q.on_ack(2);
        assert_eq!(q.held(), (1, 100));
        assert_eq!(q.highest_sent_seq(), 3, "seq 3 waits for replay");
        assert_eq!(q.reset_session(true), 1);
        assert_eq!(q.held(), (0, 0));
        // Lossy: a written message is gone.
        let mut lossy = OutQueue::new(false);
        lossy.push(sized(0, 50));
        written(&mut lossy);
        assert_eq!(lossy.held(), (0, 0));
    }

    #[test]
    fn a_keepalive_flood_stays_one_pending_frame_each() {
        let mut q = OutQueue::new(true);
        for i in 0..100_000u32 {
            q.request_keepalive_ack(UTime { sec: i, nsec: 0 });
            q.request_keepalive();
            if i % 7 == 0 {
                assert_eq!(q.on_received(u64::from(i / 7) + 1), Ok(true));
            }
            assert!(q.pending_control_frames() <= 3);
        }
        assert_eq!(q.pending_control_frames(), 3);
        let bufs = q.next_batch(usize::MAX).unwrap();
        let mut dec = crate::wire::FrameDecoder::new();
        bufs.into_iter().for_each(|b| dec.feed(b));
        let mut frames = Vec::new();
        while let Some((tag, segs)) = dec.next_frame().unwrap() {
            frames.push(crate::wire::Frame::decode(tag, &segs).unwrap());
        }
        use crate::wire::Frame;
        assert_eq!(frames.len(), 3, "{frames:?}");
        assert!(matches!(&frames[0],
            Frame::Keepalive2Ack(k) if k.timestamp == UTime { sec: 99_999, nsec: 0 }));
        assert!(matches!(&frames[1], Frame::Keepalive2(_)));
        assert!(matches!(&frames[2], Frame::Ack(a) if a.seq == q.in_seq));
        assert_eq!(q.pending_control_frames(), 0);
    }

    #[test]
    fn size_checks_name_the_limit() {
        let limits = OutQueueLimits {
            bytes: 100,
            messages: 4,
        };
        let peer: Address = "tcp://127.0.0.1:1".parse().unwrap();
        assert!(limits.check_size(&peer, &sized(0, 100), 1000).is_ok());
        let e = limits.check_size(&peer, &sized(0, 101), 1000).unwrap_err();
        assert!(
            matches!(
                e,
                MessengerError::MessageTooLarge {
                    bytes: 101,
                    limit: 100,
                    ..
                }
            ),
            "{e}"
        );
        let e = limits.check_size(&peer, &sized(0, 60), 50).unwrap_err();
        assert!(e.to_string().contains("segment"), "{e}");
    }
}
