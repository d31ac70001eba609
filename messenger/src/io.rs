//! The I/O handler of an established session (crimson's `IOHandler`): reads frames with the
//! wire [`FrameDecoder`], writes them with the [`FrameAssembler`] (through the typed frames),
//! drives the session's [`OutQueue`] (seqs, acks, keepalives; in [`crate::outq`]) and frees
//! room for waiting senders as acks arrive. Everything here is core-local.
//!
//! [`FrameAssembler`]: crate::wire::FrameAssembler

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use corewire_runtime::timer;
use corewire_transport::{Address, AnyEndpoint, Endpoint};
use futures_lite::future::or;

use crate::error::{MessengerError, Result};
use crate::fault::{Direction, Faults};
use crate::message::Message;
use crate::messenger::Shared;
use crate::session::Conn;
use crate::throttle::{Budget, Hold};
use crate::wire::{Banner, Frame, FrameDecoder, Tag};

pub use crate::outq::OutQueue;

/// Most payload bytes gathered into one transport send.
const BATCH_BYTES: usize = 1 << 20;

/// A frame step still missing at least this many bytes (a large segment) is read into one
/// buffer of its own, on a transport that reads into the caller's buffer (TCP): no copy
/// assembling it from receive chunks (Ceph's messenger likewise reads a message's data
/// straight into its buffer). Elsewhere a large payload may arrive as one chunk already.
const LARGE_READ: usize = 16 << 10;

/// Longest step read that way. Its buffer is allocated for bytes only announced, so this
/// bounds what a peer that announces a large frame and stalls has reserved for it (a 4 MiB
/// write with its header fits); a longer step is assembled from receive chunks as its bytes
/// arrive, so the memory it holds is what the peer actually sent.
const LARGE_READ_MAX: usize = 8 << 20;

/// A one-waiter, core-local wake-up flag.
#[derive(Default)]
pub(crate) struct LocalNotify {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
    /// Inside [`Self::deferring`]: notifications only set the flag.
    deferring: Cell<bool>,
}

impl LocalNotify {
    pub(crate) fn notify(&self) {
        self.set.set(true);
        if self.deferring.get() {
            return;
        }
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Run `f` with notifications reduced to setting the flag, for a caller that polls the
    /// waiter itself right after, in the same poll of the same task: the session's reader,
    /// whose frames (and the sends its dispatchers make) notify the writer polled next. A
    /// wake-up there would only poll the running task once more for nothing.
    pub(crate) fn deferring<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Reset<'a>(&'a Cell<bool>, bool);
        impl Drop for Reset<'_> {
            fn drop(&mut self) {
                self.0.set(self.1);
            }
        }
        let _reset = Reset(&self.deferring, self.deferring.replace(true));
        f()
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
                let mut w = self.waker.borrow_mut();
                if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *w = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        })
    }
}

/// The read side of a connection: the frame decoder, the idle timeout and the peer (for
/// errors). Travels with the endpoint when a connection moves to its owning core.
///
/// The idle timeout is enforced two ways. During the handshake each receive is raced with
/// a timer of its own (few receives, simplest). Once the session is up, receives are
/// untimed and stamp a [`RxWatch`]; one watchdog timer per session ([`idle_watch`]) sleeps
/// until the waiting receive's start + idle and re-arms while data keeps arriving: a timer
/// per idle period instead of a timer set and cancelled on every receive of the hot path.
pub(crate) struct FrameReader {
    pub(crate) dec: FrameDecoder,
    pub(crate) idle: Duration,
    pub(crate) peer: Address,
    pub(crate) faults: Faults,
}

/// When the session's current receive started, and whether it is still waiting for the peer
/// (the watchdog counts only time spent waiting, as the per-receive timer does).
pub(crate) type RxWatch = Cell<(Instant, bool)>;

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

    async fn recv_more(
        &mut self,
        ep: &AnyEndpoint,
        during: &'static str,
        watch: Option<&RxWatch>,
    ) -> Result<()> {
        let large = if ep.reads_in_place() {
            self.dec.large_step_buffer(LARGE_READ, LARGE_READ_MAX)
        } else {
            None
        };
        let recv = || async {
            match large {
                Some((buf, fill_to)) => ep.recv_into(buf, fill_to).await,
                None => ep.recv().await,
            }
        };
        let received = match watch {
            Some(w) => {
                w.set((Instant::now(), true));
                let r = recv().await;
                w.set((w.get().0, false));
                r
            }
            None => timer::timeout(self.idle, recv()).await.map_err(|_| {
                MessengerError::IdleTimeout {
                    peer: self.peer.clone(),
                    during,
                    after: self.idle,
                }
            })?,
        };
        let chunk = received.map_err(|e| MessengerError::transport(&self.peer, e))?;
        self.dec.feed(chunk);
        Ok(())
    }

    /// The peer's banner.
    pub(crate) async fn read_banner(&mut self, ep: &AnyEndpoint) -> Result<Banner> {
        loop {
            match self.dec.next_banner() {
                Ok(Some(b)) => return Ok(b),
                Ok(None) => self.recv_more(ep, "reading the banner", None).await?,
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
        Ok(self.read_frame_held(ep, during, None, None).await?.0)
    }

    /// As [`Self::read_frame`]; with `watch`, receives are untimed and stamp it instead.
    ///
    /// With `budget`, a message comes with its dispatch-throttle share, taken as soon as the
    /// frame's preamble announces its length, before its segments are received (Ceph takes
    /// its throttles before reading a message's front, middle and data). While the budget is
    /// spent nothing more is read, so what peers have only announced is held to the budget
    /// too, however many of them announce large messages at once.
    async fn read_frame_held(
        &mut self,
        ep: &AnyEndpoint,
        during: &'static str,
        watch: Option<&RxWatch>,
        budget: Option<&Arc<Budget>>,
    ) -> Result<(Frame, Hold)> {
        // A share taken for the frame in progress, with the decoder's count of aborted
        // frames then: a frame the sender aborts is dropped unseen, and its share with it.
        let mut early: Option<(Hold, u64)> = None;
        loop {
            match self.dec.next_segments() {
                Ok(Some((tag, segs))) => {
                    if self.faults.active() {
                        self.faults.check(&self.peer, Direction::Rx, tag)?;
                    }
                    let frame = Frame::decode_segments(tag, segs)
                        .map_err(|e| MessengerError::wire(&self.peer, during, e))?;
                    let hold = match (&frame, budget) {
                        (Frame::Message(m), Some(b)) => match early.take() {
                            Some((h, aborted)) if aborted == self.dec.aborted_frames() => h,
                            stale => {
                                drop(stale); // before waiting for room: it may be what fills it
                                b.acquire(m.front.len() + m.middle.len() + m.data.len())
                                    .await
                            }
                        },
                        _ => Hold::default(),
                    };
                    return Ok((frame, hold));
                }
                Ok(None) => {
                    // The share of a frame the sender aborted goes back before the next
                    // frame's is taken (it could be what keeps that one from fitting).
                    if early
                        .as_ref()
                        .is_some_and(|(_, a)| *a != self.dec.aborted_frames())
                    {
                        early = None;
                    }
                    if let (None, Some(b), Some((Tag::Message, len))) =
                        (&early, budget, self.dec.announced())
                    {
                        early = Some((b.acquire(len).await, self.dec.aborted_frames()));
                    }
                    self.recv_more(ep, during, watch).await?
                }
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

/// Fails with [`MessengerError::IdleTimeout`] once one receive has waited `idle` for the
/// peer (`last_rx`: when it started, and whether it still waits); one timer per idle period.
async fn idle_watch(last_rx: &RxWatch, idle: Duration, peer: Address) -> Result<()> {
    loop {
        let now = Instant::now();
        let deadline = match last_rx.get() {
            (since, true) if now >= since + idle => {
                return Err(MessengerError::IdleTimeout {
                    peer,
                    during: "reading frames",
                    after: idle,
                })
            }
            (since, true) => since + idle,
            // Not waiting on the peer (e.g. held by the dispatch throttle): look again later.
            (_, false) => now + idle,
        };
        timer::sleep_until(deadline).await;
    }
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
    let watch = RxWatch::new((Instant::now(), false));
    let idle = idle_watch(&watch, reader.idle, peer.clone());
    let read = async {
        loop {
            // The dispatch throttle: no more reading until the message has its share.
            let (frame, hold) = reader
                .read_frame_held(ep, "reading frames", Some(&watch), conn.throttle.as_ref())
                .await?;
            // The writer is polled right after this reader, in the same poll of this task
            // (`or` below): what the frame queues needs no wake-up of the task.
            conn.wake
                .deferring(|| handle_frame(conn, &peer, frame, hold))?;
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
    // Order matters: the writer is polled after the reader in every poll (`or` polls its
    // first future first), which is what lets the reader defer its wake-ups of the writer.
    or(read, or(write_loop, or(tick, idle))).await
}

fn handle_frame(conn: &Conn, peer: &Address, frame: Frame, hold: Hold) -> Result<()> {
    match frame {
        Frame::Message(m) => {
            let received = {
                let mut out = conn.out.borrow_mut();
                out.on_ack(m.header.ack_seq);
                out.on_received(m.header.seq)
            };
            conn.released();
            match received {
                Ok(true) => {}
                Ok(false) => {
                    tracing::debug!(%peer, seq = m.header.seq,
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
            conn.wake.notify();
            let mut msg = Message::from_wire(&m.header, m.front, m.middle, m.data);
            msg.throttle = hold;
            conn.dispatch(msg);
        }
        Frame::Ack(a) => {
            conn.out.borrow_mut().on_ack(a.seq);
            conn.released();
        }
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
